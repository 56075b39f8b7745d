//! Binding the KBS challenge and the guest's ephemeral key into the TEE
//! evidence (KBS protocol 0.4.0), and the evidence of each TEE.
//!
//! The report data is SHA-384 over the canonical JSON (RFC 8785: keys
//! sorted at every level, no whitespace) of
//! `{"additional-evidence": "", "nonce": <challenge nonce>, "tee-pubkey": <JWK as sent>}`;
//! the KBS recomputes it from the attest request and compares.

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha384};

use crate::initdata::GuestTee;

/// Writes `v` canonically: object keys sorted (by UTF-16 code units, which
/// for the ASCII keys of this protocol is byte order), no whitespace.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            let fields: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String((*k).clone()),
                        canonical_json(&m[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// The 48-byte report data binding `nonce` and `tee_pubkey` (a JWK).
pub fn report_data(nonce: &str, tee_pubkey: &Value, additional_evidence: &str) -> [u8; 48] {
    let p = serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    Sha384::digest(canonical_json(&p).as_bytes()).into()
}

/// The `tee` of the auth request for this guest.
pub fn tee_name(tee: &GuestTee) -> &'static str {
    match tee {
        GuestTee::None => "sample",
        GuestTee::Snp => "snp",
        GuestTee::Tdx => "tdx",
    }
}

/// The sample TEE's evidence: the report data in standard base64 and an
/// SVN. Only a KBS policy that trusts the sample TEE (development) accepts
/// it.
pub fn sample(report_data: &[u8; 48]) -> Value {
    serde_json::json!({
        "report_data": base64::engine::general_purpose::STANDARD.encode(report_data),
        "svn": "1",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"d": [true, null], "c": "x"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x","d":[true,null]},"b":1}"#
        );
        // trustee's attestation-service test vector.
        let v = serde_json::json!({"c": {"d": "e"}, "b": 1, "a": "test"});
        assert_eq!(
            hex::encode(Sha384::digest(canonical_json(&v).as_bytes())),
            "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
        );
    }

    /// The first exchange of the recorded transcript between trustee's
    /// kbs-client and the KBS (vendor/trustee-kbs/protocol-transcript.txt).
    #[test]
    fn report_data_matches_the_recorded_exchange() {
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
            "x": "41uDKeVVX0BfIEUZ37TIgIAH3684LLHfjPTcWdmSqgs",
            "y": "VyVAKJI8Wjlgu38f_hYOk9moqPO-hxzfBWzSASnjnH4",
        });
        let rd = report_data("FFhUfE7oj0boUp0mlxiCrFy3Ua4/NOGmdlgKfUZcT/w=", &jwk, "");
        assert_eq!(
            sample(&rd)["report_data"],
            "Iy+N/rOAco5wxfiwbVfyQthH46yU8P+KK/umHMIVaHgidT2GoL+MmABN+ygNz+ic"
        );
    }
}
