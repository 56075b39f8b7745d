//! `[attestation]`: the KBS pods attest to, and the initdata document the
//! node gives pods that bring none.
//!
//! The guest has no network of its own yet: it reaches the KBS through a
//! byte relay on a vsock port, which connects only to this address. The KBS
//! URL and the resources a pod may fetch reach the agent inside measured
//! initdata, never through an unmeasured request.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Problem};

/// `[attestation]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // keys are documented in configs/cocoon-dev.toml
pub struct RawAttestation {
    pub kbs_url: String,
    pub allowed_resources: Vec<String>,
}

/// Where the KBS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsAddress {
    /// The URL as configured (what the guest is told).
    pub url: String,
    /// `host:port` the relay connects to.
    pub authority: String,
}

/// Validated `[attestation]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestationConfig {
    /// The KBS, if pods on this node attest.
    pub kbs: Option<KbsAddress>,
    /// Resource URI patterns (`kbs:///repo/type/tag`, a trailing `*`
    /// matches any rest) a pod may fetch when the node writes its initdata.
    pub allowed_resources: Vec<String>,
}

fn kbs_address(url: &str) -> Result<KbsAddress, Problem> {
    let problem = |p: &str| Problem::quoted("attestation.kbs_url", url, p.to_string());
    if url.starts_with("https://") {
        return Err(problem(
            "https is not supported yet (TLS would end in the guest); use an http:// KBS reached over the node's relay",
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| problem("must be an http:// URL, e.g. \"http://10.0.0.5:8080\""))?;
    let authority = rest.trim_end_matches('/');
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if authority.contains('/') || !port_ok {
        return Err(problem("must be http://HOST:PORT with no path"));
    }
    Ok(KbsAddress {
        url: format!("http://{authority}"),
        authority: authority.to_string(),
    })
}

impl RawAttestation {
    /// Validates the section.
    pub(super) fn validate(&self, invalid: &Invalid<'_>) -> Result<AttestationConfig, ConfigError> {
        let kbs = if self.kbs_url.is_empty() {
            None
        } else {
            Some(kbs_address(&self.kbs_url).map_err(|p| invalid.of(p))?)
        };
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
        })
    }
}

impl AttestationConfig {
    /// The initdata document the node gives a pod that brings none (when a
    /// KBS is configured): the KBS URL in Confidential Containers' `aa.toml`
    /// and the allowed resources in Cocoon's `cocoon-policy.toml`. Its
    /// bytes depend only on the configuration, so `cocoon measure` predicts
    /// the measurement of every such pod.
    pub fn node_initdata(&self) -> Option<Vec<u8>> {
        let kbs = self.kbs.as_ref()?;
        let allowed: Vec<String> = self
            .allowed_resources
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        Some(
            format!(
                "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"{}\"\n'''\n\"cocoon-policy.toml\" = '''\nallowed_resources = [{}]\n'''\n",
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
        for (text, needle) in [
            (
                "kbs_url = \"https://kbs:443\"",
                "https is not supported yet",
            ),
            ("kbs_url = \"kbs:8080\"", "must be an http:// URL"),
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
