//! Runs the real `cocoon-agent` binary as an ordinary (root) process on the
//! host, serving on a unix socket, and drives it with the generated client:
//! the process-spawning code path without a VM. Needs root for namespaces
//! and mounts; skipped with a printed reason otherwise.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use cocoon_protocol::agent::*;
use cocoon_protocol::agent_ttrpc::AgentClient;
use ttrpc::context;

struct Agent {
    child: Child,
    client: AgentClient,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> context::Context {
    context::with_timeout(20_000_000_000)
}

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP: agent_on_host needs root (namespaces, mounts)");
    false
}

async fn agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("shared/rootfs");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/make-busybox-rootfs.sh");
    let st = Command::new(script).arg(&rootfs).status().unwrap();
    assert!(st.success(), "building the busybox rootfs failed");
    let sock = dir.path().join("agent.sock");
    // COCOON_AGENT_BIN tests another build, e.g. the static one in the initrd.
    let bin = std::env::var_os("COCOON_AGENT_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_cocoon-agent").into());
    let child = Command::new(bin)
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--shared-dir")
        .arg(dir.path().join("shared"))
        .spawn()
        .unwrap();
    let addr = format!("unix://{}", sock.display());
    let mut client = None;
    for _ in 0..200 {
        if let Ok(c) = ttrpc::r#async::Client::connect(&addr).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = AgentClient::new(client.expect("agent socket never appeared"));
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb".into();
    client.create_sandbox(ctx(), &req).await.unwrap();
    Agent {
        child,
        client,
        _dir: dir,
    }
}

/// An OCI process running `args` (oci-spec's default: runc's).
fn process(args: &[&str]) -> oci_spec::runtime::Process {
    let mut p = oci_spec::runtime::Process::default();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p.set_env(Some(vec!["PATH=/bin".into()]));
    p.set_cwd("/".into());
    p
}

/// A spec for `args` as containerd would send it, rewritten by the shim.
fn spec(args: &[&str]) -> oci_spec::runtime::Spec {
    let mut s = oci_spec::runtime::Spec::default();
    s.set_process(Some(process(args)));
    s.set_hostname(Some("box".into()));
    let mut root = s.root().clone().unwrap();
    root.set_readonly(Some(false));
    s.set_root(Some(root));
    s
}

async fn create_spec(
    a: &Agent,
    id: &str,
    s: &oci_spec::runtime::Spec,
) -> ttrpc::Result<CreateContainerResponse> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.rootfs = "rootfs".into();
    req.oci_spec = serde_json::to_vec(s).unwrap();
    a.client.create_container(ctx(), &req).await
}

async fn create(a: &Agent, id: &str, args: &[&str]) -> ttrpc::Result<CreateContainerResponse> {
    create_spec(a, id, &spec(args)).await
}

async fn start(a: &Agent, id: &str, exec_id: &str) -> ttrpc::Result<StartProcessResponse> {
    let mut req = StartProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    a.client.start_process(ctx(), &req).await
}

async fn read_all(a: &Agent, id: &str, exec_id: &str, stream: StdioStream) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.stream = stream.into();
        let r = a.client.read_stream(ctx(), &req).await.unwrap();
        if r.eof {
            return out;
        }
        out.extend_from_slice(&r.data);
    }
}

async fn wait(a: &Agent, id: &str, exec_id: &str) -> i32 {
    let mut req = WaitProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    a.client
        .wait_process(ctx(), &req)
        .await
        .unwrap()
        .exit_status
}

fn status_message(e: ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn runs_a_container_with_stdio_and_exit_code() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    create(
        &a,
        "c1",
        &[
            "sh",
            "-c",
            "echo hi; echo oops >&2; hostname; echo $$; exit 3",
        ],
    )
    .await
    .unwrap();
    start(&a, "c1", "").await.unwrap();
    let out = String::from_utf8(read_all(&a, "c1", "", StdioStream::STDOUT).await).unwrap();
    let err = String::from_utf8(read_all(&a, "c1", "", StdioStream::STDERR).await).unwrap();
    assert_eq!(
        out, "hi\nbox\n1\n",
        "stdout; the shell must be PID 1 of its own namespace"
    );
    assert_eq!(err, "oops\n");
    assert_eq!(wait(&a, "c1", "").await, 3);
}

#[tokio::test]
async fn stdin_exec_and_signals() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    create(&a, "c2", &["sh", "-c", "cat; sleep 600"])
        .await
        .unwrap();
    start(&a, "c2", "").await.unwrap();
    let mut w = WriteStdinRequest::new();
    w.container_id = "c2".into();
    w.data = b"piped\n".to_vec();
    a.client.write_stdin(ctx(), &w).await.unwrap();
    let mut c = CloseStdinRequest::new();
    c.container_id = "c2".into();
    a.client.close_stdin(ctx(), &c).await.unwrap();
    // `cat` echoes its input before anything else happens to the container
    // (on a loaded host it may not have run yet when the SIGKILL below
    // comes).
    let mut r = ReadStreamRequest::new();
    r.container_id = "c2".into();
    r.stream = StdioStream::STDOUT.into();
    let first = a.client.read_stream(ctx(), &r).await.unwrap();
    assert_eq!(first.data, b"piped\n");

    // An exec sees the same PID namespace and root.
    let mut e = ExecProcessRequest::new();
    e.container_id = "c2".into();
    e.exec_id = "e1".into();
    e.oci_process = serde_json::to_vec(&process(&[
        "sh",
        "-c",
        "ls /proc | grep -c '^[0-9]'; hostname",
    ]))
    .unwrap();
    a.client.exec_process(ctx(), &e).await.unwrap();
    start(&a, "c2", "e1").await.unwrap();
    let out = String::from_utf8(read_all(&a, "c2", "e1", StdioStream::STDOUT).await).unwrap();
    let mut lines = out.lines();
    let nprocs: u32 = lines.next().unwrap().trim().parse().unwrap();
    assert!(
        (2..=4).contains(&nprocs),
        "exec should see only the container's processes: {out}"
    );
    assert_eq!(lines.next(), Some("box"));
    assert_eq!(wait(&a, "c2", "e1").await, 0);

    let mut s = SignalProcessRequest::new();
    s.container_id = "c2".into();
    s.signal = 9;
    a.client.signal_process(ctx(), &s).await.unwrap();
    assert_eq!(wait(&a, "c2", "").await, 137);
    let out = read_all(&a, "c2", "", StdioStream::STDOUT).await;
    assert_eq!(out, b"", "nothing after the echoed input");
    let mut r = RemoveContainerRequest::new();
    r.container_id = "c2".into();
    a.client.remove_container(ctx(), &r).await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    let e = status_message(create(&a, "c3", &["no-such-program"]).await.unwrap_err());
    assert!(e.contains("\"no-such-program\" not found"), "{e}");
    let e = status_message(start(&a, "nope", "").await.unwrap_err());
    assert!(e.contains("container \"nope\" not found"), "{e}");
    let mut req = CreateContainerRequest::new();
    req.container_id = "c4".into();
    req.rootfs = "../../etc".into();
    req.oci_spec = serde_json::to_vec(&spec(&["true"])).unwrap();
    let e = status_message(a.client.create_container(ctx(), &req).await.unwrap_err());
    assert!(e.contains("rootfs"), "{e}");
    // (uid_t)-1 would leave the process root; a NUL in an argument is
    // named as such.
    let mut s = spec(&["id"]);
    let mut p = s.process().clone().unwrap();
    let mut user = p.user().clone();
    user.set_uid(u32::MAX);
    p.set_user(user);
    s.set_process(Some(p));
    let e = status_message(create_spec(&a, "c6", &s).await.unwrap_err());
    assert!(
        e.contains("process.user.uid") && e.contains("no change"),
        "{e}"
    );
    let e = status_message(create(&a, "c6", &["sh", "-c", "a\0b"]).await.unwrap_err());
    assert!(e.contains("process.args") && e.contains("NUL"), "{e}");
    // The agent still works afterwards.
    create(&a, "c5", &["true"]).await.unwrap();
    start(&a, "c5", "").await.unwrap();
    assert_eq!(wait(&a, "c5", "").await, 0);
}

/// Runs `script` in a container made from `s` and returns (stdout, exit).
async fn run_spec(
    a: &Agent,
    id: &str,
    mut s: oci_spec::runtime::Spec,
    script: &str,
) -> (String, i32) {
    let mut p = s.process().clone().unwrap();
    p.set_args(Some(vec!["sh".into(), "-c".into(), script.into()]));
    s.set_process(Some(p));
    create_spec(a, id, &s).await.unwrap();
    start(a, id, "").await.unwrap();
    let out = String::from_utf8(read_all(a, id, "", StdioStream::STDOUT).await).unwrap();
    let code = wait(a, id, "").await;
    (out, code)
}

fn status_field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{key} missing in {out}"))
}

#[tokio::test]
async fn capabilities_rlimits_no_new_privs_and_paths_follow_the_spec() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    // oci-spec's default is runc's: CAP_AUDIT_WRITE, CAP_KILL and
    // CAP_NET_BIND_SERVICE (bits 29, 5, 10), noNewPrivileges, NOFILE 1024,
    // masked paths, /proc/sys read-only.
    let (out, code) = run_spec(
        &a,
        "caps",
        spec(&[]),
        "grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs):' /proc/self/status; \
         echo nofile $(ulimit -n); \
         echo keys $(wc -c < /proc/keys); echo firmware $(ls /sys/firmware | wc -l); \
         (echo 1 > /proc/sys/kernel/shmmni) 2>/dev/null && echo sys-writable || echo sys-readonly; \
         mount -t tmpfs t /mnt 2>/dev/null && echo mounted || echo mount-refused",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let want = format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10));
    assert_eq!(status_field(&out, "CapEff:"), want, "{out}");
    assert_eq!(status_field(&out, "CapBnd:"), want, "{out}");
    assert_eq!(status_field(&out, "CapPrm:"), want, "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs:"), "1", "{out}");
    assert!(out.contains("nofile 1024\n"), "{out}");
    // (/proc/kcore is not in every kernel; /proc/keys and /sys/firmware are.)
    assert!(out.contains("keys 0\n"), "/proc/keys must be masked: {out}");
    assert!(
        out.contains("firmware 0\n"),
        "/sys/firmware must be masked: {out}"
    );
    assert!(out.contains("sys-readonly"), "{out}");
    assert!(out.contains("mount-refused"), "no CAP_SYS_ADMIN: {out}");

    // A non-root user with an added capability keeps it only as asked:
    // ambient CAP_NET_BIND_SERVICE survives exec, nothing else does.
    let mut s = spec(&[]);
    let mut p = s.process().clone().unwrap();
    let mut user = p.user().clone();
    user.set_uid(65534);
    user.set_gid(65534);
    user.set_umask(Some(0o077));
    p.set_user(user);
    p.set_oom_score_adj(Some(500));
    let caps: oci_spec::runtime::Capabilities = [oci_spec::runtime::Capability::NetBindService]
        .into_iter()
        .collect();
    let mut c = p.capabilities().clone().unwrap();
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps.clone()));
    c.set_inheritable(Some(caps.clone()));
    c.set_ambient(Some(caps));
    p.set_capabilities(Some(c));
    s.set_process(Some(p));
    let (out, code) = run_spec(
        &a,
        "nobody",
        s,
        "id -u; grep -E '^(CapEff|CapAmb):' /proc/self/status; cat /proc/self/oom_score_adj; umask",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("65534\n"), "{out}");
    assert_eq!(
        status_field(&out, "CapEff:"),
        format!("{:016x}", 1u64 << 10)
    );
    assert_eq!(
        status_field(&out, "CapAmb:"),
        format!("{:016x}", 1u64 << 10)
    );
    assert!(out.contains("\n500\n"), "{out}");
    assert!(out.trim_end().ends_with("0077"), "{out}");
}

#[tokio::test]
async fn seccomp_mounts_and_sysctls_follow_the_spec() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    // A volume the shim put in the share, bound read-only and read-write.
    let vol = a._dir.path().join("shared/c/mounts/0");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("data"), "from the host\n").unwrap();
    let mut s = spec(&[]);
    let mut mounts = s.mounts().clone().unwrap();
    let bind = |dest: &str, opts: &[&str]| {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some("c/mounts/0".into()));
        m.set_options(Some(opts.iter().map(|o| o.to_string()).collect()));
        m
    };
    mounts.push(bind("/ro/vol", &["rbind", "ro", "rprivate"]));
    mounts.push(bind("/rw", &["rbind", "rw"]));
    let mut tmp = oci_spec::runtime::Mount::default();
    tmp.set_destination("/run".into());
    tmp.set_typ(Some("tmpfs".into()));
    tmp.set_source(Some("tmpfs".into()));
    tmp.set_options(Some(vec!["nosuid".into(), "size=1m".into()]));
    mounts.push(tmp);
    s.set_mounts(Some(mounts));
    // Deny mkdir with EACCES (13), allow everything else.
    let seccomp: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "no_such_call_in_this_libseccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    }))
    .unwrap();
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(seccomp));
    linux.set_sysctl(Some(
        [("kernel.shmmni".to_string(), "1234".to_string())]
            .into_iter()
            .collect(),
    ));
    s.set_linux(Some(linux));
    let (out, code) = run_spec(
        &a,
        "sec",
        s,
        "grep '^Seccomp:' /proc/self/status; \
         mkdir /tmp/x 2>&1 | grep -o 'Permission denied'; \
         cat /ro/vol/data; \
         (echo no > /ro/vol/data) 2>/dev/null && echo ro-writable || echo ro-refused; \
         echo from-guest > /rw/out; \
         df -k /run | tail -1 | awk '{print \"run\", $2}'; \
         cat /proc/sys/kernel/shmmni",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(status_field(&out, "Seccomp:"), "2", "{out}");
    assert!(
        out.contains("Permission denied"),
        "mkdir is denied with EACCES: {out}"
    );
    assert!(out.contains("from the host\n"), "{out}");
    assert!(out.contains("ro-refused"), "{out}");
    assert!(
        out.contains("run 1024\n"),
        "tmpfs size from the options: {out}"
    );
    assert!(
        out.contains("1234\n"),
        "IPC sysctl in the container's namespace: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from-guest\n",
        "a rw bind writes through to the share"
    );
}

#[tokio::test]
async fn specs_the_guest_cannot_honour_are_refused_with_the_field() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    let refused = |s: oci_spec::runtime::Spec| {
        let a = &a;
        async move { status_message(create_spec(a, "bad", &s).await.unwrap_err()) }
    };
    let mut s = spec(&["true"]);
    let mut mounts = s.mounts().clone().unwrap();
    let mut m = oci_spec::runtime::Mount::default();
    m.set_destination("/data".into());
    m.set_typ(Some("nfs".into()));
    mounts.push(m);
    s.set_mounts(Some(mounts));
    let e = refused(s).await;
    assert!(e.contains("mounts.type") && e.contains("nfs"), "{e}");

    let mut s = spec(&["true"]);
    let mut mounts = s.mounts().clone().unwrap();
    let mut m = oci_spec::runtime::Mount::default();
    m.set_destination("/etc/x".into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some("../../..".into()));
    mounts.push(m);
    s.set_mounts(Some(mounts));
    let e = refused(s).await;
    assert!(e.contains("mounts.source"), "{e}");

    let mut s = spec(&["true"]);
    let mut linux = s.linux().clone().unwrap();
    linux.set_sysctl(Some(
        [("kernel.panic".to_string(), "1".to_string())]
            .into_iter()
            .collect(),
    ));
    s.set_linux(Some(linux));
    let e = refused(s).await;
    assert!(
        e.contains("linux.sysctl") && e.contains("kernel.panic"),
        "{e}"
    );

    let mut s = spec(&["true"]);
    let mut p = s.process().clone().unwrap();
    p.set_rlimits(Some(vec![serde_json::from_value(
        serde_json::json!({"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}),
    )
    .unwrap()]));
    s.set_process(Some(p));
    let e = refused(s).await;
    assert!(e.contains("process.rlimits"), "{e}");

    let e = status_message({
        let mut req = CreateContainerRequest::new();
        req.container_id = "bad".into();
        req.rootfs = "rootfs".into();
        req.oci_spec = b"{".to_vec();
        a.client.create_container(ctx(), &req).await.unwrap_err()
    });
    assert!(e.contains("oci_spec"), "{e}");
    // Nothing of the refused containers remains.
    create(&a, "bad", &["true"]).await.unwrap();
}

#[tokio::test]
async fn created_containers_do_not_outlive_a_dead_agent() {
    if !root_or_skip() {
        return;
    }
    let mut a = agent().await;
    let pid = create(&a, "orphan", &["sleep", "1000"]).await.unwrap().pid;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // The never-started child sees its start pipe close and exits.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true)
    };
    let start = std::time::Instant::now();
    while !gone() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "container process {pid} outlived its agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A hostile-but-valid cycle: output nobody reads, an exec, requests that
/// fail, a kill and a remove.
async fn rough_cycle(a: &Agent, id: &str) {
    create(a, id, &["sh", "-c", "head -c 300000 /dev/zero; sleep 100"])
        .await
        .unwrap();
    start(a, id, "").await.unwrap();
    let mut req = ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = "x".into();
    req.oci_process = serde_json::to_vec(&process(&["sh", "-c", "echo exec"])).unwrap();
    a.client.exec_process(ctx(), &req).await.unwrap();
    start(a, id, "x").await.unwrap();
    assert_eq!(wait(a, id, "x").await, 0);
    // Failing requests: a duplicate, an unknown exec, a bad spec.
    assert!(create(a, id, &["true"]).await.is_err());
    assert!(start(a, id, "nope").await.is_err());
    let mut bad = CreateContainerRequest::new();
    bad.container_id = format!("{id}-bad");
    bad.rootfs = "rootfs".into();
    bad.oci_spec = b"{not json".to_vec();
    assert!(a.client.create_container(ctx(), &bad).await.is_err());
    let mut kill = SignalProcessRequest::new();
    kill.container_id = id.into();
    kill.signal = 9;
    kill.all = true;
    a.client.signal_process(ctx(), &kill).await.unwrap();
    wait(a, id, "").await;
    let mut req = RemoveContainerRequest::new();
    req.container_id = id.into();
    a.client.remove_container(ctx(), &req).await.unwrap();
}

async fn cycle(a: &Agent, id: &str) {
    create(a, id, &["sh", "-c", "echo out; echo err >&2; exec true"])
        .await
        .unwrap();
    start(a, id, "").await.unwrap();
    assert_eq!(read_all(a, id, "", StdioStream::STDOUT).await, b"out\n");
    assert_eq!(read_all(a, id, "", StdioStream::STDERR).await, b"err\n");
    assert_eq!(wait(a, id, "").await, 0);
    let mut req = RemoveContainerRequest::new();
    req.container_id = id.into();
    a.client.remove_container(ctx(), &req).await.unwrap();
}

#[tokio::test]
async fn memory_stays_bounded_over_many_containers() {
    if !root_or_skip() {
        return;
    }
    let a = agent().await;
    let pid = a.child.id();
    // Warm up (allocator pools, the runtime's threads), then measure.
    for i in 0..40 {
        cycle(&a, &format!("w{i}")).await;
    }
    let before = rss_kib(pid);
    let n = 400;
    for i in 0..n {
        cycle(&a, &format!("c{i}")).await;
    }
    let after = rss_kib(pid);
    eprintln!("agent RSS: {before} KiB after warm-up, {after} KiB after {n} more create/start/wait/remove cycles");
    assert!(
        after <= before + 4096,
        "the agent's memory grew by {} KiB over {n} containers (from {before} KiB)",
        after.saturating_sub(before)
    );
    for i in 0..20 {
        rough_cycle(&a, &format!("rw{i}")).await;
    }
    let before = rss_kib(pid);
    for i in 0..200 {
        rough_cycle(&a, &format!("r{i}")).await;
    }
    let after = rss_kib(pid);
    eprintln!("agent RSS: {before} KiB, {after} KiB after 200 cycles with unread output, execs, failures and kills");
    assert!(
        after <= before + 4096,
        "the agent's memory grew by {} KiB over 200 rough cycles (from {before} KiB)",
        after.saturating_sub(before)
    );
}
