//! Docker 28 on a private containerd: `docker run --runtime
//! io.containerd.cocoon.v2` gives Docker's already mounted root (`root.path`,
//! no rootfs mounts), its `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`,
//! volumes, default capabilities and seccomp profile — compared with runc on
//! the same dockerd.

use cocoon_tests::containerd::out;
use cocoon_tests::docker::{Docker, DOCKER_IMAGE};

const PROBE: &str = "\
grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t ' ' '; \
echo hostname $(cat /etc/hostname); \
grep -c localhost /etc/hosts; \
test -f /etc/resolv.conf && echo resolv-conf; \
cat /data/in; echo from-$RUNTIME > /data/out && echo data-written; \
(echo x > /ro/in) 2>/dev/null && echo ro-writable || echo ro-refused; \
echo nofile $(ulimit -n); \
echo lo-up $(( $(cat /sys/class/net/lo/flags) & 1 ))";

#[test]
fn docker_run_with_the_cocoon_runtime_behaves_like_runc() {
    let test = "docker_run_with_the_cocoon_runtime_behaves_like_runc";
    let Some((_env, sb, ctd)) = cocoon_tests::containerd::setup(test, &[]) else {
        return;
    };
    let Some(docker) = Docker::start(&ctd, test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in"), "host-file\n").unwrap();
    let vol = format!("{}:/data", dir.path().display());
    let ro = format!("{}:/ro:ro", dir.path().display());
    let run = |runtime: &str, name: &str| {
        let env = format!("RUNTIME={name}");
        let o = docker.run(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--hostname",
            "docker-box",
            "--runtime",
            runtime,
            "-e",
            &env,
            "-v",
            &vol,
            "-v",
            &ro,
            DOCKER_IMAGE,
            "sh",
            "-c",
            PROBE,
        ]);
        assert!(
            o.status.success(),
            "{runtime}: {}\n{}",
            out(&o),
            docker.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Docker sets no RLIMIT_NOFILE: the container inherits its runtime's,
    // which differs by host (dockerd's here, 1048576 in the guest, as under
    // containerd's and dockerd's service units).
    let facts = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("nofile"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let runc = run("io.containerd.runc.v2", "runc");
    let cocoon = run("io.containerd.cocoon.v2", "cocoon");
    assert_eq!(
        facts(&cocoon),
        facts(&runc),
        "runc:\n{runc}\ncocoon:\n{cocoon}"
    );
    assert!(cocoon.contains("nofile 1048576"), "{cocoon}");
    for want in [
        "Seccomp: 2",
        "hostname docker-box",
        "resolv-conf",
        "host-file",
        "data-written",
        "ro-refused",
        "lo-up 1",
    ] {
        assert!(cocoon.lines().any(|l| l == want), "{want}:\n{cocoon}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "from-cocoon\n"
    );
    // Exit codes and exec, the Docker way.
    let o = docker.run(&[
        "run",
        "-d",
        "--network",
        "none",
        "--runtime",
        "io.containerd.cocoon.v2",
        "--name",
        "long",
        DOCKER_IMAGE,
        "sleep",
        "1000",
    ]);
    assert!(o.status.success(), "{}\n{}", out(&o), docker.log());
    let o = docker.run(&["exec", "long", "sh", "-c", "echo in-exec; exit 4"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "in-exec\n",
        "{}",
        out(&o)
    );
    assert_eq!(o.status.code(), Some(4));
    let o = docker.run(&["rm", "-f", "long"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = docker.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--runtime",
        "io.containerd.cocoon.v2",
        DOCKER_IMAGE,
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", out(&o));
    drop(docker);
    ctd.assert_no_shims();
    sb.assert_clean();
}
