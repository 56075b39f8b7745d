//! The KBS's resource answers: RFC 7516 JWE in flattened JSON, key
//! agreement ECDH-ES+A256KW on P-256 (RFC 7518 §4.6: Concat KDF with
//! SHA-256, then AES key wrap), content AES-256-GCM with the protected
//! header's base64url text as additional data. The key is the guest's
//! ephemeral key from the attest request; it never leaves the guest.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdh::diffie_hellman;
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::{EncodedPoint, PublicKey, SecretKey};
use serde_json::Value;

/// Why a JWE could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    /// The JSON is not a flattened JWE.
    #[error("the resource answer is not a JWE: {0}")]
    Format(String),
    /// An algorithm other than the ones this guest offered.
    #[error("the resource answer uses {field} {value:?}; this guest accepts only ECDH-ES+A256KW with A256GCM")]
    Algorithm {
        /// `alg` or `enc`.
        field: &'static str,
        /// What it says.
        value: String,
    },
    /// Unwrapping or authenticated decryption failed.
    #[error("the resource answer does not decrypt ({0}): it was not made for this guest's key, or was altered")]
    Decrypt(&'static str),
}

fn field<'a>(jwe: &'a Value, name: &str) -> Result<&'a str, JweError> {
    jwe.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| JweError::Format(format!("member {name:?} is missing or not a string")))
}

fn b64(jwe: &Value, name: &str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD
        .decode(field(jwe, name)?)
        .map_err(|e| JweError::Format(format!("member {name:?} is not base64url: {e}")))
}

/// The ephemeral public key from the header's `epk` JWK.
fn epk(header: &Value) -> Result<PublicKey, JweError> {
    let epk = header
        .get("epk")
        .ok_or_else(|| JweError::Format("the protected header has no epk".into()))?;
    if epk.get("kty").and_then(Value::as_str) != Some("EC")
        || epk.get("crv").and_then(Value::as_str) != Some("P-256")
    {
        return Err(JweError::Format("epk is not an EC P-256 key".into()));
    }
    let coord = |n: &str| -> Result<Vec<u8>, JweError> {
        let v = b64(epk, n)?;
        (v.len() == 32)
            .then_some(v)
            .ok_or_else(|| JweError::Format(format!("epk.{n} is not 32 bytes")))
    };
    let point = EncodedPoint::from_affine_coordinates(
        coord("x")?.as_slice().into(),
        coord("y")?.as_slice().into(),
        false,
    );
    Option::from(PublicKey::from_encoded_point(&point))
        .ok_or_else(|| JweError::Format("epk is not a point on P-256".into()))
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for a 256-bit key
/// encryption key with algorithm id `ECDH-ES+A256KW` and empty apu/apv.
fn kek(shared: &[u8]) -> Result<[u8; 32], JweError> {
    let alg = b"ECDH-ES+A256KW";
    let mut other = Vec::new();
    other.extend_from_slice(&u32::try_from(alg.len()).unwrap_or(0).to_be_bytes());
    other.extend_from_slice(alg);
    other.extend_from_slice(&0u32.to_be_bytes()); // PartyUInfo
    other.extend_from_slice(&0u32.to_be_bytes()); // PartyVInfo
    other.extend_from_slice(&256u32.to_be_bytes()); // SuppPubInfo: key bits
    let mut out = [0u8; 32];
    concat_kdf::derive_key_into::<sha2::Sha256>(shared, &other, &mut out)
        .map_err(|_| JweError::Decrypt("key derivation"))?;
    Ok(out)
}

/// Decrypts a flattened JSON JWE made for `key`.
pub fn decrypt(jwe: &Value, key: &SecretKey) -> Result<Vec<u8>, JweError> {
    let protected = field(jwe, "protected")?;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(protected)
            .map_err(|e| JweError::Format(format!("protected is not base64url: {e}")))?,
    )
    .map_err(|e| JweError::Format(format!("protected is not JSON: {e}")))?;
    for (name, want) in [("alg", "ECDH-ES+A256KW"), ("enc", "A256GCM")] {
        let got = header.get(name).and_then(Value::as_str).unwrap_or("");
        if got != want {
            return Err(JweError::Algorithm {
                field: name,
                value: got.to_string(),
            });
        }
    }
    let shared = diffie_hellman(key.to_nonzero_scalar(), epk(&header)?.as_affine());
    let kek = kek(shared.raw_secret_bytes())?;
    let wrapped = b64(jwe, "encrypted_key")?;
    let mut cek = [0u8; 32];
    aes_kw::KekAes256::from(kek)
        .unwrap(&wrapped, &mut cek)
        .map_err(|_| JweError::Decrypt("key unwrap"))?;
    let iv = b64(jwe, "iv")?;
    if iv.len() != 12 {
        return Err(JweError::Format("iv is not 96 bits".into()));
    }
    let mut msg = b64(jwe, "ciphertext")?;
    msg.extend(b64(jwe, "tag")?);
    // RFC 7516 §5.2: the AAD is the ASCII of the protected header as sent.
    Aes256Gcm::new(&cek.into())
        .decrypt(
            iv.as_slice().into(),
            Payload {
                msg: &msg,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Decrypt("AES-256-GCM"))
}

/// The public JWK of `key` as the attest request sends it.
pub fn public_jwk(key: &SecretKey) -> Value {
    let point = key.public_key().to_encoded_point(false);
    let coord =
        |c: Option<&p256::FieldBytes>| c.map(|b| URL_SAFE_NO_PAD.encode(b)).unwrap_or_default();
    serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "alg": "ECDH-ES+A256KW",
        "x": coord(point.x()),
        "y": coord(point.y()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JWEs made by a separate implementation (tests/fixtures/jwe_encrypt.py,
    /// Python `cryptography`) for this guest's key decrypt to the same
    /// bytes; one altered in any member does not.
    #[test]
    fn jwes_of_an_independent_implementation_decrypt() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join("build/measure-venv/bin/python3");
        if !python.exists() {
            eprintln!("SKIP jwes_of_an_independent_implementation_decrypt: build/measure-venv with `cryptography` missing (make deps)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::random(&mut rand_core::OsRng);
        let jwk = dir.path().join("key.jwk");
        std::fs::write(&jwk, public_jwk(&key).to_string()).unwrap();
        for plaintext in [&b""[..], b"s3cret", &[0xffu8; 70_000][..]] {
            let input = dir.path().join("plain");
            std::fs::write(&input, plaintext).unwrap();
            let o = std::process::Command::new(&python)
                .arg(root.join("tests/fixtures/jwe_encrypt.py"))
                .arg(&jwk)
                .arg(&input)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let jwe: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(decrypt(&jwe, &key).unwrap(), plaintext);
            // Any member altered: refused.
            for member in ["encrypted_key", "iv", "ciphertext", "tag", "protected"] {
                let mut bad = jwe.clone();
                let mut bytes = URL_SAFE_NO_PAD
                    .decode(bad[member].as_str().unwrap())
                    .unwrap();
                if bytes.is_empty() {
                    continue;
                }
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                bad[member] = URL_SAFE_NO_PAD.encode(&bytes).into();
                assert!(decrypt(&bad, &key).is_err(), "{member} altered");
            }
            // Another guest's key: refused.
            let other = SecretKey::random(&mut rand_core::OsRng);
            assert_eq!(decrypt(&jwe, &other), Err(JweError::Decrypt("key unwrap")));
        }
    }
}
