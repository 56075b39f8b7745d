//! The guest image is bit-reproducible: two builds from the same kernel and
//! agent give byte-identical initrds.

use std::process::Command;

use cocoon_tests::repo_root;

#[test]
fn initrd_is_reproducible() {
    let root = repo_root();
    let kernel = root.join("build/kernel");
    let Some(agent) = std::env::var_os("COCOON_AGENT_BIN") else {
        eprintln!("SKIP initrd_is_reproducible: needs COCOON_AGENT_BIN (run `make test`)");
        return;
    };
    let builder = std::env::var_os("COCOON_BIN_DIR")
        .map(|d| std::path::Path::new(&d).join("cocoon-guest-build"));
    let Some(builder) = builder.filter(|b| b.exists()) else {
        eprintln!("SKIP initrd_is_reproducible: cocoon-guest-build not built (run `make test`)");
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let build = |dir: &str| {
        let st = Command::new(&builder)
            .arg("--kernel-dir")
            .arg(&kernel)
            .arg("--agent")
            .arg(&agent)
            .arg("--out")
            .arg(out.path().join(dir))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::read(out.path().join(dir).join("initrd.img")).unwrap()
    };
    let (a, b) = (build("a"), build("b"));
    assert!(
        a.len() > 1024 * 1024,
        "initrd suspiciously small: {}",
        a.len()
    );
    assert!(a == b, "two builds differ");
    let ma = std::fs::read_to_string(out.path().join("a/manifest.json")).unwrap();
    let mb = std::fs::read_to_string(out.path().join("b/manifest.json")).unwrap();
    assert_eq!(ma, mb);
    assert!(ma.contains("vmw_vsock_virtio_transport.ko"), "{ma}");
}
