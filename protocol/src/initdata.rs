//! The initdata document of Kata and Confidential Containers: TOML with
//! `version = "0.1.0"`, `algorithm` (`sha256`, `sha384`, `sha512`) and a
//! `[data]` table of strings (`aa.toml`, `cdh.toml`, Cocoon's
//! `cocoon-policy.toml`). One parser for the shim (early errors), the
//! launch measurement and the agent (which decides); the digest is the
//! document's algorithm over its exact bytes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The only initdata version.
pub const VERSION: &str = "0.1.0";
/// Largest document accepted.
pub const MAX_DOCUMENT: usize = 64 * 1024;

/// Why bytes are not an initdata document Cocoon accepts. Each message is
/// a predicate; callers say what the subject is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitdataError {
    /// Over [`MAX_DOCUMENT`].
    #[error("is {0} bytes; an initdata document may have at most 65536")]
    TooLarge(usize),
    /// Not UTF-8.
    #[error("is not UTF-8")]
    NotUtf8,
    /// Not TOML of the right shape.
    #[error(
        "is not an initdata document (TOML with version, algorithm and [data] of strings): {0}"
    )]
    Shape(String),
    /// Another version.
    #[error("has version {0:?}; initdata version \"0.1.0\" is supported")]
    Version(String),
    /// An unknown digest algorithm.
    #[error("has algorithm {0:?}; use \"sha256\", \"sha384\" or \"sha512\"")]
    Algorithm(String),
    /// Kata's Rego agent policy.
    #[error("carries `policy.rego`, a Kata agent policy in Rego, which Cocoon does not evaluate; remove it (Cocoon's policy is `cocoon-policy.toml`)")]
    Rego,
}

/// A parsed initdata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initdata {
    /// `algorithm`.
    pub algorithm: String,
    /// `[data]`.
    pub data: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Parses and checks a document.
pub fn parse(doc: &[u8]) -> Result<Initdata, InitdataError> {
    if doc.len() > MAX_DOCUMENT {
        return Err(InitdataError::TooLarge(doc.len()));
    }
    let text = std::str::from_utf8(doc).map_err(|_| InitdataError::NotUtf8)?;
    let raw: Raw =
        toml::from_str(text).map_err(|e| InitdataError::Shape(e.message().to_string()))?;
    if raw.version != VERSION {
        return Err(InitdataError::Version(raw.version));
    }
    if !matches!(raw.algorithm.as_str(), "sha256" | "sha384" | "sha512") {
        return Err(InitdataError::Algorithm(raw.algorithm));
    }
    if raw.data.contains_key("policy.rego") {
        return Err(InitdataError::Rego);
    }
    Ok(Initdata {
        algorithm: raw.algorithm,
        data: raw.data,
    })
}

/// The document's digest: its own algorithm over its exact bytes.
pub fn digest(doc: &[u8]) -> Result<Vec<u8>, InitdataError> {
    Ok(match parse(doc)?.algorithm.as_str() {
        "sha256" => Sha256::digest(doc).to_vec(),
        "sha384" => Sha384::digest(doc).to_vec(),
        _ => Sha512::digest(doc).to_vec(),
    })
}

/// `digest` truncated or zero-padded to a TEE field of `len` bytes
/// (HOST_DATA 32, MRCONFIGID 48).
pub fn fit(digest: &[u8], len: usize) -> Vec<u8> {
    let mut v = digest.to_vec();
    v.resize(len, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &[u8] = b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\nk = \"v\"\n";

    #[test]
    fn documents_and_their_digests() {
        assert_eq!(digest(DOC).unwrap(), Sha384::digest(DOC).to_vec());
        let d = parse(DOC).unwrap();
        assert_eq!(d.data["k"], "v");
        let d512 = b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n";
        assert_eq!(digest(d512).unwrap(), Sha512::digest(d512).to_vec());
        assert_eq!(fit(&[1, 2], 4), vec![1, 2, 0, 0]);
        assert_eq!(fit(&[1, 2, 3], 2), vec![1, 2]);
        for (bad, want) in [
            (&b"\xff"[..], InitdataError::NotUtf8),
            (
                b"version = \"0.2.0\"\nalgorithm = \"sha384\"\n",
                InitdataError::Version("0.2.0".into()),
            ),
            (
                b"version = \"0.1.0\"\nalgorithm = \"sha-384\"\n",
                InitdataError::Algorithm("sha-384".into()),
            ),
            (
                b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = \"x\"\n",
                InitdataError::Rego,
            ),
        ] {
            assert_eq!(parse(bad).unwrap_err(), want);
        }
        assert!(matches!(parse(b"x = 1"), Err(InitdataError::Shape(_))));
        assert!(matches!(
            parse(b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\nk = 1\n"),
            Err(InitdataError::Shape(_))
        ));
        assert_eq!(
            parse(&vec![b'#'; MAX_DOCUMENT + 1]).unwrap_err(),
            InitdataError::TooLarge(MAX_DOCUMENT + 1)
        );
    }
}
