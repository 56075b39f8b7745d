//! `tests/deps.sh` takes the Debian mirror from the host's own apt
//! configuration, so nodes behind a local mirror or proxy keep using it.

use std::path::Path;
use std::process::Command;

use cocoon_tests::repo_root;

fn mirror(apt_etc: &Path) -> String {
    let o = Command::new(repo_root().join("tests/deps.sh"))
        .arg("--print-mirror")
        .env("COCOON_APT_ETC", apt_etc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn the_mirror_comes_from_the_hosts_apt_sources() {
    let d = tempfile::tempdir().unwrap();
    let etc = d.path();
    std::fs::create_dir_all(etc.join("sources.list.d")).unwrap();
    // Nothing configured: Debian's CDN.
    assert_eq!(mirror(etc), "http://deb.debian.org/debian");
    // deb822: the stanza for bookworm, not the security one before it.
    std::fs::write(
        etc.join("sources.list.d/debian.sources"),
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
         Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n",
    )
    .unwrap();
    assert_eq!(mirror(etc), "http://mirror.example/debian");
    // A one-line sources.list with options wins over sources.list.d.
    std::fs::write(
        etc.join("sources.list"),
        "# deb http://commented.example/debian bookworm main\n\
         deb-src http://src.example/debian bookworm main\n\
         deb [arch=amd64 signed-by=/k.gpg] http://proxy.example:3142/debian bookworm main contrib\n",
    )
    .unwrap();
    assert_eq!(mirror(etc), "http://proxy.example:3142/debian");
}
