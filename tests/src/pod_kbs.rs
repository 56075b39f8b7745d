//! What pod tests need around the KBS harness ([`crate::kbs`], which the
//! agent's own tests include by path and so must stay free of pod
//! helpers): finding the binary or skipping, and a node config that
//! attests to it.

use std::path::{Path, PathBuf};

use crate::kbs::kbs_binary;

/// The KBS binary for pod test `test`, or `None` after printing why it is
/// skipped.
pub fn kbs_or_skip(test: &str) -> Option<PathBuf> {
    let bin = kbs_binary(Path::new(env!("CARGO_MANIFEST_DIR")));
    if bin.is_none() {
        eprintln!("SKIP {test}: no trustee KBS (set COCOON_KBS_BIN, or `make deps` unpacks it into build/kbs)");
    }
    bin
}

/// Makes a test node config attest to the KBS at `kbs_addr` (host:port): `[attestation]` with its URL
/// and the `allowed` resources, and `annotations` allow-listed.
pub fn attest_to(t: &mut toml::Table, kbs_addr: &str, allowed: &[&str], annotations: &[&str]) {
    attest_to_url(t, &format!("http://{kbs_addr}"), allowed, annotations);
}

/// [`attest_to`] with the whole KBS URL (`https://` needs `kbs_cert`
/// added to the `[attestation]` table).
pub fn attest_to_url(t: &mut toml::Table, kbs_url: &str, allowed: &[&str], annotations: &[&str]) {
    let mut a = toml::Table::new();
    a.insert("kbs_url".into(), kbs_url.into());
    a.insert(
        "allowed_resources".into(),
        allowed
            .iter()
            .map(|r| toml::Value::from(*r))
            .collect::<Vec<_>>()
            .into(),
    );
    t.insert("attestation".into(), toml::Value::Table(a));
    if !annotations.is_empty() {
        t["runtime"].as_table_mut().unwrap().insert(
            "allowed_annotations".into(),
            annotations
                .iter()
                .map(|r| toml::Value::from(*r))
                .collect::<Vec<_>>()
                .into(),
        );
    }
}
