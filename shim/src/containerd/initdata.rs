//! A pod's initdata document from Kata's annotation
//! `io.katacontainers.config.hypervisor.cc_init_data`: standard base64 of
//! the gzip of the TOML document. The exact decompressed bytes are what the
//! launch measures (HOST_DATA / MRCONFIGID) and what the agent receives, so
//! they are never re-serialized.
//!
//! Checked here so a bad document fails `Create` with a clear error before
//! a VM boots; the agent checks it again, since it trusts nothing the host
//! says.

use std::io::Read;

use base64::Engine;

use super::error::{Result, ShimError};
use super::request::KATA_INITDATA;

/// Largest initdata document accepted (decompressed).
pub const MAX_DOCUMENT: usize = cocoon_protocol::initdata::MAX_DOCUMENT;
/// Largest annotation value accepted (base64 text).
const MAX_ANNOTATION: usize = 128 * 1024;

fn invalid(problem: impl Into<String>) -> ShimError {
    ShimError::Invalid {
        field: format!("annotation {KATA_INITDATA}"),
        problem: problem.into(),
    }
}

/// Decodes the annotation value into the document's exact bytes.
pub fn from_annotation(value: &str) -> Result<Vec<u8>> {
    let value = value.trim();
    if value.len() > MAX_ANNOTATION {
        return Err(invalid(format!(
            "is {} bytes; the encoded document may be at most {MAX_ANNOTATION}",
            value.len()
        )));
    }
    let gz = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| {
            invalid(format!(
                "is not standard base64 ({e}); it must be base64 of the gzip of the initdata TOML"
            ))
        })?;
    // Read one byte past the limit: a document (or a gzip bomb) larger
    // than that is refused without inflating the rest.
    let mut doc = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .take(MAX_DOCUMENT as u64 + 1)
        .read_to_end(&mut doc)
        .map_err(|e| {
            invalid(format!(
                "is not gzip data ({e}); it must be base64 of the gzip of the initdata TOML"
            ))
        })?;
    if doc.len() > MAX_DOCUMENT {
        return Err(invalid(format!(
            "holds a document larger than {MAX_DOCUMENT} bytes"
        )));
    }
    check_document(&doc)?;
    Ok(doc)
}

/// Checks the document's shape (see [`cocoon_protocol::initdata`]).
pub fn check_document(doc: &[u8]) -> Result<()> {
    cocoon_protocol::initdata::parse(doc)
        .map(drop)
        .map_err(|e| invalid(format!("holds a document that {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://10.0.2.2:8080\"\n'''\n";

    fn encode(doc: &[u8]) -> String {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(doc).unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
    }

    fn err(value: &str) -> String {
        from_annotation(value).unwrap_err().to_string()
    }

    #[test]
    fn the_exact_bytes_come_back() {
        assert_eq!(
            from_annotation(&encode(DOC.as_bytes())).unwrap(),
            DOC.as_bytes()
        );
        // Surrounding whitespace in the annotation is not part of it.
        assert_eq!(
            from_annotation(&format!(" {}\n", encode(DOC.as_bytes()))).unwrap(),
            DOC.as_bytes()
        );
    }

    #[test]
    fn bad_annotations_get_one_clear_error() {
        let cases: Vec<(String, &str)> = vec![
            ("not base64!".into(), "is not standard base64"),
            (
                base64::engine::general_purpose::STANDARD.encode(b"plain text"),
                "is not gzip data",
            ),
            (encode(&[0xff, 0xfe, 0x00]), "not UTF-8"),
            (encode(b"just words"), "is not an initdata document"),
            (
                encode(DOC.replace("0.1.0", "0.2.0").as_bytes()),
                "has version \"0.2.0\"",
            ),
            (
                encode(DOC.replace("sha384", "md5").as_bytes()),
                "has algorithm \"md5\"",
            ),
            (
                encode(DOC.replace("sha384", "sha-384").as_bytes()),
                "has algorithm \"sha-384\"",
            ),
            (
                encode(format!("{DOC}\"policy.rego\" = \"package agent_policy\"\n").as_bytes()),
                "carries `policy.rego`",
            ),
            (
                encode(format!("{DOC}x = 1\n").as_bytes()),
                "is not an initdata document",
            ),
            ("A".repeat(MAX_ANNOTATION + 4), "may be at most"),
        ];
        for (value, needle) in cases {
            let e = err(&value);
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
            assert!(
                e.starts_with(&format!("annotation {KATA_INITDATA}: ")),
                "{e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn gzip_bombs_and_large_documents_are_refused() {
        // 10 MiB of zeros compress to ~10 KiB.
        let mut big = DOC.as_bytes().to_vec();
        big.extend(std::iter::repeat_n(b'#', 10 << 20));
        let value = encode(&big);
        assert!(value.len() < MAX_ANNOTATION, "{}", value.len());
        assert!(err(&value).contains("larger than 65536 bytes"));
        // Just at the limit is fine.
        let mut fits = DOC.as_bytes().to_vec();
        fits.resize(MAX_DOCUMENT, b'\n');
        assert_eq!(from_annotation(&encode(&fits)).unwrap().len(), MAX_DOCUMENT);
    }
}
