//! Confidential Containers sealed secrets in environment values.
//!
//! A value `sealed.<header>.<payload>.<signature>` (each part base64url
//! without padding) is a JWS over `<header>.<payload>`: the header is
//! `{"alg":"ES256","kid":"kbs:///<repo>/<type>/<tag>"}`, the kid naming the
//! KBS resource that holds the signer's public key (a P-256 JWK), and the
//! payload says where the secret is:
//! `{"version":"0.1.0","type":"vault","name":"kbs:///…","provider":"kbs",
//! "provider_settings":{},"annotations":{}}`. The agent checks both URIs
//! against the pod's policy, fetches the key and the secret in one attested
//! KBS session, verifies the signature, and puts the plaintext in the
//! process's environment before it starts. The host only ever sees the
//! sealed string.
//!
//! Refused, each with the variable's name: unsigned secrets (the old
//! `fakejwsheader` form), a kid that is not a KBS resource URI (a file in
//! the guest), `envelope` secrets and providers other than `kbs`, versions
//! other than 0.1.0, bad base64 or JSON, a bad signature, a plaintext that
//! is not UTF-8 or holds a NUL byte.

use base64::Engine;
use cocoon_protocol::resource::ResourceUri;
use p256::ecdsa::signature::Verifier;

use crate::error::{Error, Result};
use crate::policy::PodPolicy;

/// The prefix that marks a sealed value.
pub const PREFIX: &str = "sealed.";

/// A parsed sealed secret, its signature not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The environment variable it came from.
    pub var: String,
    /// Where the signer's public key is (the header's kid).
    pub key: ResourceUri,
    /// Where the secret is (the payload's name).
    pub secret: ResourceUri,
    /// `<header>.<payload>`, what the signature covers.
    signing_input: String,
    /// The ES256 signature (r ‖ s).
    signature: Vec<u8>,
}

fn bad(var: &str, problem: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        field: "process.env",
        problem: format!("{var}: sealed secret: {problem}"),
    }
}

fn b64url(var: &str, part: &str, what: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| {
            bad(
                var,
                format!("the {what} is not base64url without padding ({e})"),
            )
        })
}

/// Parses the sealed value of `var`; `Ok(None)` when the value is not
/// sealed.
pub fn parse(var: &str, value: &str) -> Result<Option<Sealed>> {
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
        kid: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Payload {
        version: String,
        #[serde(rename = "type")]
        kind: String,
        name: Option<String>,
        provider: Option<String>,
    }
    let Some(rest) = value.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(bad(
            var,
            format!(
                "has {} dot-separated parts after `sealed.`, not 3 (header, payload, signature)",
                parts.len()
            ),
        ));
    };
    if header == "fakejwsheader" || signature == "fakesignature" {
        return Err(bad(
            var,
            "is unsigned (the old `fakejwsheader` form); seal it again with a signing key",
        ));
    }
    let h: Header = serde_json::from_slice(&b64url(var, header, "header")?)
        .map_err(|e| bad(var, format!("the header is not JSON {{alg, kid}}: {e}")))?;
    if h.alg != "ES256" {
        return Err(bad(
            var,
            format!("the header's alg is {:?}; only ES256 is accepted", h.alg),
        ));
    }
    let kid = h
        .kid
        .ok_or_else(|| bad(var, "the header has no kid (the signer's key)"))?;
    let key: ResourceUri = kid.parse().map_err(|e| {
        bad(
            var,
            format!("the header's kid {kid:?} must be a KBS resource URI holding the signer's public key: {e}"),
        )
    })?;
    let p: Payload = serde_json::from_slice(&b64url(var, payload, "payload")?)
        .map_err(|e| bad(var, format!("the payload is not a sealed-secret JSON: {e}")))?;
    if p.version != "0.1.0" {
        return Err(bad(
            var,
            format!("version {:?} is not supported (0.1.0 is)", p.version),
        ));
    }
    if p.kind != "vault" {
        return Err(bad(
            var,
            format!("type {:?} is not supported (vault is)", p.kind),
        ));
    }
    if p.provider.as_deref() != Some("kbs") {
        return Err(bad(
            var,
            format!(
                "provider {:?} is not supported (kbs, the pod's attested KBS, is)",
                p.provider.unwrap_or_default()
            ),
        ));
    }
    let name = p
        .name
        .ok_or_else(|| bad(var, "the vault payload has no name (the secret's URI)"))?;
    let secret: ResourceUri = name
        .parse()
        .map_err(|e| bad(var, format!("the payload's name {name:?}: {e}")))?;
    let signature = b64url(var, signature, "signature")?;
    Ok(Some(Sealed {
        var: var.to_string(),
        key,
        secret,
        signing_input: format!("{header}.{payload}"),
        signature,
    }))
}

impl Sealed {
    /// Refuses a secret whose key or secret URI the policy does not allow.
    pub fn check(&self, policy: &PodPolicy) -> Result<()> {
        for (what, uri) in [("key (kid)", &self.key), ("secret (name)", &self.secret)] {
            if !policy.allows(uri) {
                return Err(Error::PermissionDenied(format!(
                    "{}: the sealed secret's {what} {uri} is not in the initdata's allowed_resources {:?}",
                    self.var, policy.allowed_resources
                )));
            }
        }
        Ok(())
    }

    /// Verifies the signature with `jwk` (the kid resource: a P-256 public
    /// JWK) and returns `plaintext` as the variable's value.
    pub fn open(&self, jwk: &[u8], plaintext: Vec<u8>) -> Result<String> {
        let var = &self.var;
        let jwk = std::str::from_utf8(jwk).map_err(|_| {
            bad(
                var,
                format!("the key {} is not a JWK (not UTF-8)", self.key),
            )
        })?;
        let key = p256::PublicKey::from_jwk_str(jwk).map_err(|_| {
            bad(
                var,
                format!("the key {} is not a P-256 public JWK", self.key),
            )
        })?;
        let sig = p256::ecdsa::Signature::from_slice(&self.signature).map_err(|_| {
            bad(
                var,
                format!(
                    "the signature is {} bytes, not an ES256 r ‖ s of 64",
                    self.signature.len()
                ),
            )
        })?;
        p256::ecdsa::VerifyingKey::from(&key)
            .verify(self.signing_input.as_bytes(), &sig)
            .map_err(|_| {
                Error::PermissionDenied(format!(
                    "{var}: the sealed secret's signature does not verify with the key {}",
                    self.key
                ))
            })?;
        let text = String::from_utf8(plaintext).map_err(|_| {
            bad(
                var,
                format!(
                    "the secret {} is not UTF-8, so it cannot be an environment value",
                    self.secret
                ),
            )
        })?;
        if text.contains('\0') {
            return Err(bad(
                var,
                format!("the secret {} holds a NUL byte", self.secret),
            ));
        }
        Ok(text)
    }
}

/// The sealed values of `env` (`NAME=VALUE` entries), parsed.
pub fn find(env: &[String]) -> Result<Vec<(usize, Sealed)>> {
    let mut out = Vec::new();
    for (i, entry) in env.iter().enumerate() {
        let Some((var, value)) = entry.split_once('=') else {
            continue;
        };
        if let Some(s) = parse(var, value)? {
            out.push((i, s));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by tests/fixtures/sealed_secret.py (Python `cryptography`, an
    /// independent ES256 implementation): the signer's public JWK and a
    /// secret sealed with it.
    const JWK: &str = include_str!("../testdata/sealed-secret-key.jwk");
    const SEALED: &str = include_str!("../testdata/sealed-secret.txt");

    fn open_policy() -> PodPolicy {
        PodPolicy {
            allowed_resources: vec!["kbs:///default/*".into()],
            ..PodPolicy::default()
        }
    }

    #[test]
    fn an_independently_sealed_secret_verifies() {
        let env = vec![
            "PATH=/bin".to_string(),
            format!("TOKEN={}", SEALED.trim()),
            "NOEQUALS".to_string(),
        ];
        let found = find(&env).unwrap();
        assert_eq!(found.len(), 1);
        let (i, s) = &found[0];
        assert_eq!(*i, 1);
        assert_eq!(s.key.to_string(), "kbs:///default/sealing/key");
        assert_eq!(s.secret.to_string(), "kbs:///default/secret/token");
        s.check(&open_policy()).unwrap();
        assert_eq!(s.open(JWK.as_bytes(), b"plain".to_vec()).unwrap(), "plain");
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let s = parse("T", SEALED.trim()).unwrap().unwrap();
        // Another payload under the same signature.
        let mut forged = s.clone();
        forged.signing_input.push('x');
        let e = forged.open(JWK.as_bytes(), b"p".to_vec()).unwrap_err();
        assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
        assert!(e.to_string().contains("does not verify"), "{e}");
        // Another key.
        let other = r#"{"kty":"EC","crv":"P-256","x":"41uDKeVVX0BfIEUZ37TIgIAH3684LLHfjPTcWdmSqgs","y":"VyVAKJI8Wjlgu38f_hYOk9moqPO-hxzfBWzSASnjnH4"}"#;
        let e = s.open(other.as_bytes(), b"p".to_vec()).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        for (jwk, needle) in [
            (&b"not json"[..], "not a P-256 public JWK"),
            (&[0xff, 0xfe][..], "not UTF-8"),
        ] {
            let e = s.open(jwk, b"p".to_vec()).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        for (plain, needle) in [(vec![0xff], "not UTF-8"), (b"a\0b".to_vec(), "NUL byte")] {
            let e = s.open(JWK.as_bytes(), plain).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let strict = PodPolicy {
            allowed_resources: vec!["kbs:///default/secret/*".into()],
            ..PodPolicy::default()
        };
        let e = s.check(&strict).unwrap_err().to_string();
        assert!(e.contains("key (kid) kbs:///default/sealing/key"), "{e}");
    }

    fn seal(header: &str, payload: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("sealed.{}.{}.{}", b(header), b(payload), b("sig"))
    }

    #[test]
    fn malformed_values_get_one_clear_error() {
        let h = r#"{"alg":"ES256","kid":"kbs:///default/sealing/key"}"#;
        let p = r#"{"version":"0.1.0","type":"vault","name":"kbs:///default/secret/x","provider":"kbs","provider_settings":{},"annotations":{}}"#;
        assert!(parse("V", &seal(h, p)).unwrap().is_some());
        assert!(parse("V", "plain value").unwrap().is_none());
        for (value, needle) in [
            ("sealed.a.b".to_string(), "not 3"),
            (
                "sealed.fakejwsheader.e30.fakesignature".to_string(),
                "unsigned",
            ),
            ("sealed.%%.e30.c2ln".to_string(), "header is not base64url"),
            (seal("[1]", p), "header is not JSON"),
            (
                seal(r#"{"alg":"none","kid":"kbs:///a/b/c"}"#, p),
                "only ES256",
            ),
            (seal(r#"{"alg":"ES256"}"#, p), "no kid"),
            (
                seal(r#"{"alg":"ES256","kid":"my-key"}"#, p),
                "must be a KBS resource URI",
            ),
            (seal(h, "{}"), "not a sealed-secret JSON"),
            (seal(h, &p.replace("0.1.0", "0.2.0")), "version \"0.2.0\""),
            (
                seal(h, &p.replace("vault", "envelope")),
                "type \"envelope\"",
            ),
            (
                seal(h, &p.replace("\"kbs\"", "\"aliyun\"")),
                "provider \"aliyun\"",
            ),
            (
                seal(h, &p.replace("kbs:///default/secret/x", "kbs:///x/../y")),
                "payload's name",
            ),
            (
                seal(h, r#"{"version":"0.1.0","type":"vault","provider":"kbs"}"#),
                "no name",
            ),
        ] {
            let e = parse("MY_VAR", &value).unwrap_err().to_string();
            assert!(e.contains("MY_VAR") && e.contains(needle), "{value}: {e}");
        }
    }
}
