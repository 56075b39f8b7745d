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

fn process(args: &[&str]) -> cocoon_protocol::agent::Process {
    let mut p = cocoon_protocol::agent::Process::new();
    p.args = args.iter().map(|s| s.to_string()).collect();
    p.env = vec!["PATH=/bin".into()];
    p.cwd = "/".into();
    p
}

async fn create(a: &Agent, id: &str, args: &[&str]) -> ttrpc::Result<CreateContainerResponse> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.rootfs = "rootfs".into();
    req.hostname = "box".into();
    req.process = Some(process(args)).into();
    a.client.create_container(ctx(), &req).await
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
    e.process = Some(process(&[
        "sh",
        "-c",
        "ls /proc | grep -c '^[0-9]'; hostname",
    ]))
    .into();
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
    req.process = Some(process(&["true"])).into();
    let e = status_message(a.client.create_container(ctx(), &req).await.unwrap_err());
    assert!(e.contains("rootfs"), "{e}");
    // The agent still works afterwards.
    create(&a, "c5", &["true"]).await.unwrap();
    start(&a, "c5", "").await.unwrap();
    assert_eq!(wait(&a, "c5", "").await, 0);
}
