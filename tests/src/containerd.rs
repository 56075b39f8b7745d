//! A private containerd for one test: its own root, state and sockets under
//! a temp dir, Cocoon's shim on its PATH, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{busybox_rootfs, repo_root, Env, Sandbox};

/// Image used by the tests.
pub const IMAGE: &str = "cocoon.test/busybox:1";
/// Pause image for CRI sandboxes.
pub const PAUSE_IMAGE: &str = "cocoon.test/pause:1";
/// The runtime name.
pub const RUNTIME: &str = "io.containerd.cocoon.v2";

/// The OCI archives of the test images (built once).
pub fn image_archives() -> &'static (PathBuf, PathBuf) {
    static ARCHIVES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ARCHIVES.get_or_init(|| {
        let dir = repo_root().join("build/test-fixtures");
        let script = repo_root().join("tests/fixtures/make-oci-image.sh");
        let make = |name: &str, file: &str, cmd: &[&str]| {
            let out = dir.join(file);
            if !out.exists() {
                let tmp = dir.join(format!("{file}.{}", std::process::id()));
                let st = Command::new(&script)
                    .arg(busybox_rootfs())
                    .arg(name)
                    .arg(&tmp)
                    .args(cmd)
                    .status()
                    .unwrap();
                assert!(st.success(), "make-oci-image.sh failed");
                std::fs::rename(&tmp, &out).unwrap();
            }
            out
        };
        (
            make(IMAGE, "busybox-image.tar", &["/bin/sh"]),
            make(
                PAUSE_IMAGE,
                "pause-image.tar",
                &["/bin/sleep", "2147483647"],
            ),
        )
    })
}

/// A containerd binary to test against, with its major version.
#[derive(Debug, Clone)]
pub struct Flavor {
    /// `containerd`.
    pub containerd: PathBuf,
    /// `ctr`.
    pub ctr: PathBuf,
    /// Config file version (2 for 1.x, 3 for 2.x).
    pub config_version: u32,
    /// Extra PATH entries (its own runc shim).
    pub path: Option<PathBuf>,
}

impl Flavor {
    /// Debian bookworm's containerd 1.6.
    pub fn system() -> Option<Self> {
        Path::new("/usr/bin/containerd").exists().then(|| Self {
            containerd: "/usr/bin/containerd".into(),
            ctr: "/usr/bin/ctr".into(),
            config_version: 2,
            path: None,
        })
    }

    /// containerd 2.x unpacked by `make deps` into build/containerd2.
    pub fn v2() -> Option<Self> {
        let dir = repo_root().join("build/containerd2/usr/bin");
        dir.join("containerd").exists().then(|| Self {
            containerd: dir.join("containerd"),
            ctr: dir.join("ctr"),
            config_version: 3,
            path: Some(dir),
        })
    }
}

/// The usual start of a containerd test: the VM environment (else a printed
/// SKIP), a sandbox with the default node config, and the system
/// containerd with the test images in `namespaces`.
pub fn setup(test: &str, namespaces: &[&str]) -> Option<(Env, Sandbox, Containerd)> {
    let env = crate::env_or_skip(test)?;
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return None;
    };
    let sb = Sandbox::new(&env, |_| {});
    let ctd = Containerd::start(&env, &sb, flavor, namespaces);
    Some((env, sb, ctd))
}

/// The node's network for CRI pods: containerd (and so the CNI plugins it
/// runs) lives in a network namespace the test made, with a `bridge` CNI
/// network (host-local IPAM) in it, so pod traffic never reaches the
/// machine's own namespace. The namespace is deleted with the containerd.
#[derive(Debug)]
pub struct CniNode {
    /// `ip netns` name of the node's namespace.
    pub netns: String,
    /// The pods' subnet (`10.124.<n>.0/24`).
    pub subnet: String,
    /// The bridge's address, the pods' default gateway (`10.124.<n>.1`).
    pub gateway: String,
    /// The CNI network's name.
    pub network: String,
    /// host-local's lease directory.
    pub ipam_dir: PathBuf,
}

impl CniNode {
    /// Runs `sh -c cmd` in the node's namespace.
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns, "sh", "-c", cmd])
            .output()
            .unwrap()
    }

    /// The addresses host-local has leased (one file per address).
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir.join(&self.network))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    child: Child,
    /// Its temp dir.
    pub dir: tempfile::TempDir,
    /// gRPC socket.
    pub sock: PathBuf,
    /// The flavor.
    pub flavor: Flavor,
    path_env: String,
    cocoon_config: PathBuf,
    /// The node network, for [`Containerd::start_with_cni`].
    pub node: Option<CniNode>,
}

/// Starts containerd on the config in `dir`, appending to its log; in the
/// node's network namespace when there is one.
fn spawn(
    flavor: &Flavor,
    dir: &Path,
    path: &str,
    cocoon_config: &Path,
    node: Option<&CniNode>,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .unwrap();
    let mut cmd = match node {
        Some(n) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{}", n.netns))
                .arg("--")
                .arg(&flavor.containerd);
            c
        }
        None => Command::new(&flavor.containerd),
    };
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .env("COCOON_CONFIG", cocoon_config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Containerd {
    /// Starts containerd with the Cocoon runtime and the sandbox's node
    /// config, and imports the test images into `namespaces`.
    pub fn start(env: &Env, sb: &Sandbox, flavor: Flavor, namespaces: &[&str]) -> Self {
        Self::start_inner(env, sb, flavor, namespaces, None)
    }

    /// As [`Containerd::start`], in a node network namespace of its own
    /// with a bridge CNI network `10.124.<n>.0/24` for CRI pods (Debian's
    /// containernetworking-plugins). `None` (after printing why) when the
    /// plugins or iproute2 are missing.
    pub fn start_with_cni(
        env: &Env,
        sb: &Sandbox,
        flavor: Flavor,
        namespaces: &[&str],
        n: u8,
    ) -> Option<Self> {
        for need in [
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
            "/usr/lib/cni/loopback",
        ] {
            if !Path::new(need).exists() {
                eprintln!("SKIP: {need} is missing (containernetworking-plugins, make deps)");
                return None;
            }
        }
        let netns = format!("cocoon-node-{}-{n}", std::process::id());
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ip netns add {netns} && ip -n {netns} link set lo up"
            ))
            .output()
            .unwrap();
        if !o.status.success() {
            eprintln!("SKIP: cannot make a network namespace: {}", out(&o));
            return None;
        }
        let node = CniNode {
            netns,
            subnet: format!("10.124.{n}.0/24"),
            gateway: format!("10.124.{n}.1"),
            network: format!("cocoon-test-{n}"),
            ipam_dir: PathBuf::new(),
        };
        Some(Self::start_inner(env, sb, flavor, namespaces, Some(node)))
    }

    fn start_inner(
        env: &Env,
        sb: &Sandbox,
        flavor: Flavor,
        namespaces: &[&str],
        mut node: Option<CniNode>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cocoon-ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let sock = d.join("c.sock");
        let cri = if flavor.config_version >= 3 {
            "io.containerd.cri.v1.runtime"
        } else {
            "io.containerd.grpc.v1.cri"
        };
        let runtimes = format!("[plugins.\"{cri}\".containerd.runtimes");
        // Where the tests run without CAP_SYS_RESOURCE (some CI
        // containers), runc cannot give a sandbox the -998 OOM score CRI
        // asks for; containerd's documented switch for that case clamps it.
        let restrict_oom = if lacks_cap_sys_resource() {
            "  restrict_oom_score_adj = true\n"
        } else {
            ""
        };
        let sandbox_image = if flavor.config_version >= 3 {
            format!("[plugins.\"io.containerd.cri.v1.images\".pinned_images]\n  sandbox = \"{PAUSE_IMAGE}\"\n[plugins.\"{cri}\"]\n{restrict_oom}")
        } else {
            format!("[plugins.\"{cri}\"]\n  sandbox_image = \"{PAUSE_IMAGE}\"\n{restrict_oom}")
        };
        let config = format!(
            "version = {v}\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n\
             {sandbox_image}\
             [plugins.\"{cri}\".containerd]\n  default_runtime_name = \"runc\"\n\
             {runtimes}.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             {runtimes}.cocoon]\n  runtime_type = \"{RUNTIME}\"\n  pod_annotations = [\"io.cocoon.*\", \"io.katacontainers.config.hypervisor.cc_init_data\"]\n\
             {runtimes}.cocoon.options]\n  ConfigPath = \"{cfg}\"\n",
            v = flavor.config_version,
            d = d.display(),
            s = sock.display(),
            cfg = sb.config.display(),
        );
        let mut config = config;
        if let Some(node) = node.as_mut() {
            node.ipam_dir = d.join("cni-ipam");
            let conf_dir = d.join("cni");
            std::fs::create_dir_all(&conf_dir).unwrap();
            let bin = if flavor.config_version >= 3 {
                "bin_dirs = [\"/usr/lib/cni\"]"
            } else {
                "bin_dir = \"/usr/lib/cni\""
            };
            config += &format!(
                "[plugins.\"{cri}\".cni]\n  {bin}\n  conf_dir = \"{}\"\n",
                conf_dir.display()
            );
            let conflist = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": node.network,
                "plugins": [{
                    "type": "bridge",
                    "bridge": "cbr0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": node.subnet, "gateway": node.gateway }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": node.ipam_dir,
                    },
                }],
            });
            std::fs::write(
                conf_dir.join("10-cocoon-test.conflist"),
                serde_json::to_string_pretty(&conflist).unwrap(),
            )
            .unwrap();
        }
        std::fs::write(d.join("config.toml"), config).unwrap();
        let mut path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            env.bin_dir.display()
        );
        if let Some(p) = &flavor.path {
            path = format!("{}:{path}", p.display());
        }
        let child = spawn(&flavor, d, &path, &sb.config, node.as_ref());
        let c = Self {
            child,
            dir,
            sock,
            flavor,
            path_env: path,
            cocoon_config: sb.config.clone(),
            node,
        };
        c.wait_up();
        let (busybox, pause) = image_archives();
        for ns in namespaces {
            for archive in [busybox, pause] {
                let o = c
                    .ctr_ns(ns, &["images", "import"])
                    .arg(archive)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "import: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        c
    }

    fn wait_up(&self) {
        let start = Instant::now();
        while self
            .ctr(&["version"])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM: shims and their tasks keep running) and
    /// starts it again on the same state, as a service restart does.
    pub fn restart(&mut self) {
        let _ = nix_kill(self.child.id(), libc_sigterm());
        let _ = self.child.wait();
        self.child = spawn(
            &self.flavor,
            self.dir.path(),
            &self.path_env,
            &self.cocoon_config,
            self.node.as_ref(),
        );
        self.wait_up();
    }

    /// `ctr -a <sock> -n <ns> args...`.
    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.flavor.ctr);
        c.arg("-a").arg(&self.sock).arg("-n").arg(ns).args(args);
        c
    }

    /// Runs `ctr` in the default namespace with a timeout.
    pub fn ctr(&self, args: &[&str]) -> std::io::Result<Output> {
        output_with_timeout(self.ctr_ns("default", args), Duration::from_secs(120))
    }

    /// Waits up to 60 s until task `id` is RUNNING.
    pub fn wait_running(&self, id: &str) {
        let start = Instant::now();
        loop {
            let o = self.ctr(&["task", "ls"]).unwrap();
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
            {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{id} never ran");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills task `id`, removes it once it stopped, and removes the
    /// container.
    pub fn kill_and_remove(&self, id: &str) {
        let o = self.ctr(&["task", "kill", "-s", "KILL", id]).unwrap();
        assert!(o.status.success(), "{}", out(&o));
        let start = Instant::now();
        while !self.ctr(&["task", "rm", id]).unwrap().status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} never stopped"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(self.ctr(&["c", "rm", id]).unwrap().status.success());
    }

    /// The CRI socket (same as the gRPC socket).
    pub fn cri_socket(&self) -> &Path {
        &self.sock
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Live shim processes of this containerd.
    pub fn shims(&self) -> Vec<u32> {
        let needle = self.sock.display().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
                .replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (cmd.contains("containerd-shim-cocoon-v2")
                && cmd.contains(&needle)
                && !stat.contains(") Z"))
            .then_some(pid)
        })
        .collect()
    }

    /// Asserts no shim of this containerd is left.
    pub fn assert_no_shims(&self) {
        let start = Instant::now();
        while !self.shims().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "shims left: {:?}",
                self.shims()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A test that failed half-way leaves tasks behind: remove them
        // through containerd, so their shims stop the VMs and unmount.
        let run = |ns: &str, args: &[&str]| {
            output_with_timeout(self.ctr_ns(ns, args), Duration::from_secs(60))
        };
        let list = |ns: &str, args: &[&str]| -> Vec<String> {
            run(ns, args)
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        for ns in list("default", &["namespaces", "ls", "-q"]) {
            for task in list(&ns, &["task", "ls", "-q"]) {
                let _ = run(&ns, &["task", "rm", "-f", &task]);
            }
            for c in list(&ns, &["containers", "ls", "-q"]) {
                let _ = run(&ns, &["containers", "rm", &c]);
            }
        }
        for pid in self.shims() {
            let _ = nix_kill(pid, 9);
        }
        let _ = nix_kill(self.child.id(), libc_sigterm());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // containerd's own mounts (snapshots) under the temp dir.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.dir.path().display()
            ))
            .status();
        // The node namespace, with the bridge; the pods' namespaces
        // (containerd's cni-* ones) are gone with their pods.
        if let Some(node) = &self.node {
            let _ = Command::new("ip")
                .args(["netns", "del", &node.netns])
                .status();
        }
    }
}

/// A command's stdout and stderr, for assertion messages.
pub fn out(o: &Output) -> String {
    format!(
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether this process lacks CAP_SYS_RESOURCE (capability 24).
fn lacks_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) == 0)
}

fn libc_sigterm() -> i32 {
    15
}

fn nix_kill(pid: u32, sig: i32) -> std::io::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// Runs a command, killing it after `timeout`.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let o = child.wait_with_output()?;
            return Err(std::io::Error::other(format!(
                "timed out after {timeout:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
