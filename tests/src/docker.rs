//! A private dockerd (Debian's docker.io 28, unpacked by `make deps` into
//! build/docker) on top of a test's private containerd, in its own network
//! namespace (`--iptables=false`: no iptables on the host).

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::containerd::{output_with_timeout, Containerd};
use crate::{busybox_rootfs, repo_root};

/// A running dockerd.
#[derive(Debug)]
pub struct Docker {
    child: Child,
    /// Its temp dir (data root, exec root, socket).
    pub dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The busybox image, imported by [`Docker::start`].
pub const DOCKER_IMAGE: &str = "cocoon-test/busybox:1";

impl Docker {
    /// Starts dockerd against `ctd` and imports the busybox image; `None`
    /// (with the reason printed) when Docker is not unpacked.
    pub fn start(ctd: &Containerd, test: &str) -> Option<Self> {
        let root = repo_root().join("build/docker/usr");
        if !root.join("sbin/dockerd").exists() {
            eprintln!("SKIP {test}: Docker is not unpacked in build/docker (make deps)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("cocoon-docker-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let path = format!(
            "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
            root.join("bin").display(),
            root.join("sbin").display()
        );
        let child = Command::new("unshare")
            .arg("-n")
            .arg(root.join("sbin/dockerd"))
            .args(["--iptables=false", "--ip6tables=false", "--containerd"])
            .arg(&ctd.sock)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .env("PATH", path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let docker = Self {
            child,
            dir,
            bin: root.join("bin/docker"),
        };
        let start = Instant::now();
        while !docker.run(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not start: {}",
                docker.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let tar = docker.dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(busybox_rootfs())
            .args(["--exclude=./data", "-cf"])
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let o = docker.run(&[
            "import",
            "-c",
            "CMD [\"/bin/sh\"]",
            tar.to_str().unwrap(),
            DOCKER_IMAGE,
        ]);
        assert!(
            o.status.success(),
            "docker import: {}",
            crate::containerd::out(&o)
        );
        Some(docker)
    }

    /// `docker -H <sock> args...`, with a timeout.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.bin);
        c.arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args);
        output_with_timeout(c, Duration::from_secs(180)).unwrap()
    }

    /// dockerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever dockerd left mounted under its roots.
        let prefix = self.dir.path().display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
