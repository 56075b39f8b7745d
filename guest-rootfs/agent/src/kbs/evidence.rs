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

use super::KbsError;
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

/// The 64 bytes a TEE report carries for `report_data` (the 48-byte
/// digest, then zeros), as trustee's SNP and TDX verifiers expect.
pub fn tee_report_data(report_data: &[u8; 48]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(report_data);
    out
}

/// SEV-SNP evidence for trustee's verifier: the 1184-byte attestation
/// report in the `sev` crate's serde form (the form trustee deserializes)
/// and no certificate chain (the verifier then takes the VCEK from AMD's
/// key server or its own store).
pub fn snp(report: &[u8]) -> Result<Value, KbsError> {
    use sev::parser::ByteParser;
    let parsed = sev::firmware::guest::AttestationReport::from_bytes(report).map_err(|e| {
        KbsError::Evidence(format!(
            "the SEV-SNP attestation report ({} bytes) does not parse: {e}",
            report.len()
        ))
    })?;
    let report = serde_json::to_value(parsed)
        .map_err(|e| KbsError::Evidence(format!("SEV-SNP report as JSON: {e}")))?;
    Ok(serde_json::json!({ "attestation_report": report, "cert_chain": null }))
}

/// TDX evidence for trustee's verifier: the quote (from configfs-tsm) and,
/// when the firmware published one, the CC event log (ACPI CCEL), both in
/// standard base64.
pub fn tdx(quote: &[u8], cc_eventlog: Option<&[u8]>) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    serde_json::json!({
        "cc_eventlog": cc_eventlog.map(b64),
        "quote": b64(quote),
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

    /// The sev crate's recorded Milan report, as trustee receives it: the
    /// JSON deserializes back into the same report (the type trustee's
    /// verifier reads), report data and HOST_DATA in place.
    #[test]
    fn snp_evidence_carries_the_report_as_trustee_reads_it() {
        let Some(report) = crate::initdata::tests::milan_report() else {
            eprintln!("SKIP: the sev crate's report_milan.hex is not in the cargo registry");
            return;
        };
        let e = snp(&report).unwrap();
        assert!(e["cert_chain"].is_null());
        let back: sev::firmware::guest::AttestationReport =
            serde_json::from_value(e["attestation_report"].clone()).unwrap();
        use sev::parser::ByteParser;
        assert_eq!(
            back,
            sev::firmware::guest::AttestationReport::from_bytes(&report).unwrap()
        );
        assert_eq!(back.report_data[..], report[0x50..0x90]);
        assert_eq!(back.host_data[..], report[0xc0..0xe0]);
        let a = &e["attestation_report"];
        for field in [
            "version",
            "policy",
            "measurement",
            "host_data",
            "report_data",
            "signature",
            "current_tcb",
        ] {
            assert!(!a[field].is_null(), "no {field} in {a}");
        }
        let err = snp(&report[..100]).unwrap_err().to_string();
        assert!(err.contains("100 bytes"), "{err}");
        let rd = tee_report_data(&[9u8; 48]);
        assert_eq!((&rd[..48], &rd[48..]), (&[9u8; 48][..], &[0u8; 16][..]));
    }

    #[test]
    fn tdx_evidence_is_the_quote_and_the_event_log_in_base64() {
        let e = tdx(b"quote bytes", Some(b"CCEL"));
        assert_eq!(e["quote"], "cXVvdGUgYnl0ZXM=");
        assert_eq!(e["cc_eventlog"], "Q0NFTA==");
        assert!(tdx(b"q", None)["cc_eventlog"].is_null());
    }
}
