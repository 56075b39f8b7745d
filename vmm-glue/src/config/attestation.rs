//! `[attestation]`: the KBS pods attest to, and the initdata document the
//! node gives pods that bring none.
//!
//! The guest reaches the KBS either through a byte relay on a vsock port,
//! which connects only to the node's KBS address (`kbs_via = "relay"`, the
//! default, for pods with or without a network), or over the pod's own
//! network to the URL its initdata names (`kbs_via = "pod-network"`, for a
//! KBS that is not on this node). The KBS URL and the resources a pod may
//! fetch reach the agent inside measured initdata, never through an
//! unmeasured request; either path carries the same TLS and attestation.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Problem};

/// `[attestation]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawAttestation {
    pub kbs_url: String,
    pub kbs_cert: String,
    pub allowed_resources: Vec<String>,
    pub kbs_via: KbsRoute,
}

/// How pods reach the KBS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KbsRoute {
    /// Through the shim's vsock relay to `attestation.kbs_url` only.
    #[default]
    Relay,
    /// Over the pod's network, to the URL in the pod's initdata.
    PodNetwork,
}

/// Where the KBS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsAddress {
    /// The URL as configured (what the guest is told).
    pub url: String,
    /// `host:port` the relay connects to.
    pub authority: String,
    /// For https: the PEM of the CA certificate(s) the guest trusts for it
    /// (read from `attestation.kbs_cert`).
    pub ca_pem: Option<String>,
}

/// The largest `attestation.kbs_cert` file read.
const MAX_CERT_BYTES: u64 = 64 << 10;

/// Reads the PEM file of `attestation.kbs_cert`.
fn read_cert(path: &str) -> Result<String, Problem> {
    use std::io::Read;
    let problem = |p: String| Problem::quoted("attestation.kbs_cert", path, p);
    if !path.starts_with('/') {
        return Err(problem("must be an absolute path to a PEM file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| problem(format!("cannot be read: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_CERT_BYTES {
        return Err(problem(format!(
            "must be a regular file of at most {MAX_CERT_BYTES} bytes"
        )));
    }
    let mut text = String::new();
    file.take(MAX_CERT_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| problem(format!("is not a PEM text file: {e}")))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(problem(
            "holds no PEM CERTIFICATE block (the CA that signed the KBS's TLS certificate)".into(),
        ));
    }
    if text.contains("\"\"\"") || text.contains("'''") || text.contains('\\') {
        return Err(problem("is not a plain PEM file".into()));
    }
    Ok(text)
}

/// Validated `[attestation]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationConfig {
    /// The KBS, if pods on this node attest.
    pub kbs: Option<KbsAddress>,
    /// Resource URI patterns (`kbs:///repo/type/tag`, a trailing `*`
    /// matches any rest) a pod may fetch when the node writes its initdata.
    pub allowed_resources: Vec<String>,
    /// How pods reach the KBS.
    pub route: KbsRoute,
}

fn kbs_address(url: &str, cert: &str) -> Result<KbsAddress, Problem> {
    let problem = |p: &str| Problem::quoted("attestation.kbs_url", url, p.to_string());
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = url.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err(problem(
            "must be an http:// or https:// URL, e.g. \"https://kbs.example:8080\"",
        ));
    };
    let authority = rest.trim_end_matches('/');
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if authority.contains('/') || !port_ok {
        return Err(problem("must be SCHEME://HOST:PORT with no path"));
    }
    let ca_pem = match (scheme, cert.is_empty()) {
        ("https", false) => Some(read_cert(cert)?),
        ("https", true) => {
            return Err(Problem::new(
                "attestation.kbs_cert",
                "\"\"",
                "an https KBS needs the PEM file of the CA that signed its certificate: TLS ends in the guest, which trusts nothing else",
            ))
        }
        (_, false) => {
            return Err(Problem::quoted(
                "attestation.kbs_cert",
                cert,
                "is for an https:// kbs_url only",
            ))
        }
        (_, true) => None,
    };
    Ok(KbsAddress {
        url: format!("{scheme}://{authority}"),
        authority: authority.to_string(),
        ca_pem,
    })
}

impl RawAttestation {
    /// Validates the section.
    pub(super) fn validate(&self, invalid: &Invalid<'_>) -> Result<AttestationConfig, ConfigError> {
        let kbs = if self.kbs_url.is_empty() {
            None
        } else {
            Some(kbs_address(&self.kbs_url, &self.kbs_cert).map_err(|p| invalid.of(p))?)
        };
        if kbs.is_none() && !self.kbs_cert.is_empty() {
            return Err(invalid.of(Problem::quoted(
                "attestation.kbs_cert",
                &self.kbs_cert,
                "needs `attestation.kbs_url`",
            )));
        }
        for p in &self.allowed_resources {
            let concrete = p.trim_end_matches('*');
            let ok = concrete.starts_with("kbs:///") && !p[..p.len() - 1].contains('*');
            if !ok {
                return Err(invalid.of(Problem::quoted(
                    "attestation.allowed_resources",
                    p,
                    "entries are resource URIs kbs:///<repository>/<type>/<tag>, optionally ending in `*`",
                )));
            }
        }
        if kbs.is_none() && !self.allowed_resources.is_empty() {
            return Err(invalid.of(Problem::new(
                "attestation.allowed_resources",
                format!("{} entries", self.allowed_resources.len()),
                "needs `attestation.kbs_url`: resources come from a KBS",
            )));
        }
        Ok(AttestationConfig {
            kbs,
            allowed_resources: self.allowed_resources.clone(),
            route: self.kbs_via,
        })
    }
}

impl AttestationConfig {
    /// The initdata document the node gives a pod that brings none (when a
    /// KBS is configured): the KBS URL (and, for https, its CA as `cert`)
    /// in Confidential Containers' `aa.toml` and the allowed resources in
    /// Cocoon's `cocoon-policy.toml`. Its
    /// bytes depend only on the configuration, so `cocoon measure` predicts
    /// the measurement of every such pod.
    pub fn node_initdata(&self) -> Option<Vec<u8>> {
        let kbs = self.kbs.as_ref()?;
        let allowed: Vec<String> = self
            .allowed_resources
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        // The PEM goes in a TOML basic multi-line string inside the literal
        // one holding aa.toml (read_cert refuses quotes and backslashes, so
        // it needs no escaping).
        let cert = kbs
            .ca_pem
            .as_ref()
            .map(|pem| format!("cert = \"\"\"\n{}\n\"\"\"\n", pem.trim_end()))
            .unwrap_or_default();
        Some(
            format!(
                "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"{}\"\n{cert}'''\n\"cocoon-policy.toml\" = '''\nallowed_resources = [{}]\n'''\n",
                kbs.url,
                allowed.join(", ")
            )
            .into_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// An https KBS: its CA reaches the guest in the node's initdata, as
    /// `cert` in aa.toml (where Confidential Containers puts it).
    #[test]
    fn an_https_kbs_brings_its_ca_into_the_node_initdata() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).unwrap();
        let c = Config::from_toml(
            &format!(
                "[attestation]\nkbs_url = \"https://kbs.example:8443\"\nkbs_cert = \"{}\"\nallowed_resources = [\"kbs:///default/key/*\"]",
                path.display()
            ),
            "t",
        )
        .unwrap();
        let kbs = c.attestation.kbs.clone().unwrap();
        assert_eq!(kbs.authority, "kbs.example:8443");
        assert_eq!(kbs.url, "https://kbs.example:8443");
        let doc = String::from_utf8(c.attestation.node_initdata().unwrap()).unwrap();
        let parsed: toml::Table = toml::from_str(&doc).unwrap();
        let aa: toml::Table = toml::from_str(parsed["data"]["aa.toml"].as_str().unwrap()).unwrap();
        assert_eq!(
            aa["token_configs"]["kbs"]["url"].as_str(),
            Some("https://kbs.example:8443")
        );
        assert_eq!(aa["token_configs"]["kbs"]["cert"].as_str(), Some(pem));
        // A PEM that would break out of the document is refused.
        std::fs::write(&path, format!("{pem}'''\n")).unwrap();
        let e = Config::from_toml(
            &format!(
                "[attestation]\nkbs_url = \"https://kbs.example:8443\"\nkbs_cert = \"{}\"",
                path.display()
            ),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a plain PEM file"), "{e}");
    }

    #[test]
    fn kbs_urls_and_patterns() {
        let c = Config::from_toml(
            "[attestation]\nkbs_url = \"http://10.0.0.5:8080/\"\nallowed_resources = [\"kbs:///default/key/*\", \"kbs:///a/b/c\"]",
            "t",
        )
        .unwrap();
        let kbs = c.attestation.kbs.clone().unwrap();
        assert_eq!(kbs.authority, "10.0.0.5:8080");
        assert_eq!(kbs.url, "http://10.0.0.5:8080");
        let doc = c.attestation.node_initdata().unwrap();
        let text = String::from_utf8(doc.clone()).unwrap();
        assert!(text.contains("url = \"http://10.0.0.5:8080\""), "{text}");
        assert!(
            text.contains("allowed_resources = [\"kbs:///default/key/*\", \"kbs:///a/b/c\"]"),
            "{text}"
        );
        // A valid initdata document, digested like any other.
        assert_eq!(
            crate::measure::initdata_digest(&doc, "node").unwrap().len(),
            48
        );
        assert!(Config::dev_defaults()
            .unwrap()
            .attestation
            .node_initdata()
            .is_none());
        // The route to the KBS: the relay unless the pod network is asked
        // for; anything else is refused naming the key.
        assert_eq!(c.attestation.route, super::KbsRoute::Relay);
        let c = Config::from_toml("[attestation]\nkbs_via = \"pod-network\"", "t").unwrap();
        assert_eq!(c.attestation.route, super::KbsRoute::PodNetwork);
        let e = Config::from_toml("[attestation]\nkbs_via = \"vsock\"", "t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("attestation.kbs_via") && e.contains("pod-network"),
            "{e}"
        );
        for (text, needle) in [
            (
                "kbs_url = \"https://kbs:443\"",
                "an https KBS needs the PEM file of the CA",
            ),
            (
                "kbs_url = \"http://kbs:443\"\nkbs_cert = \"/etc/hostname\"",
                "is for an https:// kbs_url only",
            ),
            (
                "kbs_cert = \"/etc/hostname\"",
                "needs `attestation.kbs_url`",
            ),
            (
                "kbs_url = \"https://kbs:443\"\nkbs_cert = \"/etc/hostname\"",
                "holds no PEM CERTIFICATE block",
            ),
            (
                "kbs_url = \"https://kbs:443\"\nkbs_cert = \"/dev/zero\"",
                "regular file",
            ),
            (
                "kbs_url = \"https://kbs:443\"\nkbs_cert = \"ca.pem\"",
                "absolute path",
            ),
            (
                "kbs_url = \"kbs:8080\"",
                "must be an http:// or https:// URL",
            ),
            ("kbs_url = \"http://kbs\"", "HOST:PORT"),
            ("kbs_url = \"http://kbs:8080/x\"", "HOST:PORT"),
            (
                "kbs_url = \"http://kbs:8080\"\nallowed_resources = [\"default/key\"]",
                "resource URIs",
            ),
            (
                "kbs_url = \"http://kbs:8080\"\nallowed_resources = [\"kbs:///*/key/x\"]",
                "resource URIs",
            ),
            (
                "allowed_resources = [\"kbs:///a/b/c\"]",
                "needs `attestation.kbs_url`",
            ),
        ] {
            let e = Config::from_toml(&format!("[attestation]\n{text}"), "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
