//! `cocoon run --rootfs DIR -- CMD...`: the node smoke test. Boots a VM from
//! the node configuration, shares DIR over virtio-fs as the container root,
//! runs CMD, streams its stdio and exits with its exit status.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use cocoon_protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest, Process, ReadStreamRequest,
    StartProcessRequest, StdioStream, User, WaitProcessRequest, WriteStdinRequest,
};
use cocoon_protocol::agent_ttrpc::AgentClient;
use cocoon_vmm::agent::ctx;
use cocoon_vmm::config::Config;
use cocoon_vmm::host::HostRoots;
use cocoon_vmm::vm::{Share, Vm, VmRequest};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Cli;

const CONTAINER_ID: &str = "run";
const SHARE_TAG: &str = "cocoon-rootfs";
const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Timeout of control RPCs (not of reads, which block until data).
const RPC_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Host directory used as the container's root filesystem.
    #[arg(long, value_name = "DIR")]
    rootfs: PathBuf,
    /// Forward this process's stdin to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Environment variable KEY=VALUE (repeatable); PATH has a default.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long, default_value = "/")]
    cwd: String,
    /// UID[:GID] to run as.
    #[arg(short, long, default_value = "0:0")]
    user: String,
    /// Hostname of the container.
    #[arg(long, default_value = "cocoon")]
    hostname: String,
    /// Print the boot time (launch to agent ready) on stderr.
    #[arg(long)]
    timing: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// An error that carries the exit code `cocoon` should end with.
#[derive(Debug, thiserror::Error)]
#[error("{1}")]
pub struct ExitWith(pub i32, pub String);

fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let parse = |v: &str| {
        v.parse::<u32>()
            .with_context(|| format!("--user {s:?}: expected UID[:GID] as numbers"))
    };
    Ok((parse(u)?, parse(g)?))
}

fn status_message(e: &ttrpc::Error) -> (Option<ttrpc::Code>, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (Some(s.code()), s.message().to_string()),
        other => (None, other.to_string()),
    }
}

async fn pump(
    agent: AgentClient,
    stream: StdioStream,
    mut out: impl AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = CONTAINER_ID.into();
        req.stream = stream.into();
        // No timeout: a read blocks until the command writes or exits.
        let r = agent
            .read_stream(ttrpc::context::Context::default(), &req)
            .await
            .context("reading the command's output")?;
        if r.eof {
            out.flush().await?;
            return Ok(());
        }
        out.write_all(&r.data).await?;
        out.flush().await?;
    }
}

async fn feed_stdin(agent: AgentClient) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let mut req = WriteStdinRequest::new();
        req.container_id = CONTAINER_ID.into();
        req.data = buf[..n].to_vec();
        if agent.write_stdin(ctx(RPC_TIMEOUT), &req).await.is_err() {
            // The command closed its stdin or exited.
            return Ok(());
        }
    }
    close_stdin(&agent).await;
    Ok(())
}

async fn close_stdin(agent: &AgentClient) {
    let mut req = CloseStdinRequest::new();
    req.container_id = CONTAINER_ID.into();
    let _ = agent.close_stdin(ctx(RPC_TIMEOUT), &req).await;
}

/// Creates, starts and waits for the command; returns its exit status.
async fn run_command(agent: AgentClient, args: &RunArgs) -> anyhow::Result<i32> {
    let mut sb = CreateSandboxRequest::new();
    sb.sandbox_id = CONTAINER_ID.into();
    sb.shared_fs_tag = SHARE_TAG.into();
    agent
        .create_sandbox(ctx(RPC_TIMEOUT), &sb)
        .await
        .context("creating the sandbox in the guest")?;

    let (uid, gid) = parse_user(&args.user)?;
    let mut p = Process::new();
    p.args = args.command.clone();
    p.env = args.env.clone();
    if !p.env.iter().any(|e| e.starts_with("PATH=")) {
        p.env.insert(0, DEFAULT_PATH_ENV.into());
    }
    p.cwd = args.cwd.clone();
    let mut user = User::new();
    user.uid = uid;
    user.gid = gid;
    p.user = Some(user).into();
    let mut req = CreateContainerRequest::new();
    req.container_id = CONTAINER_ID.into();
    req.rootfs = ".".into();
    req.hostname = args.hostname.clone();
    req.process = Some(p).into();
    if let Err(e) = agent.create_container(ctx(RPC_TIMEOUT), &req).await {
        let (code, msg) = status_message(&e);
        let exit = if code == Some(ttrpc::Code::NOT_FOUND) {
            127
        } else {
            126
        };
        return Err(ExitWith(
            exit,
            format!(
                "cannot run {:?} in {}: {msg}",
                args.command[0],
                args.rootfs.display()
            ),
        )
        .into());
    }
    let out = tokio::spawn(pump(
        agent.clone(),
        StdioStream::STDOUT,
        tokio::io::stdout(),
    ));
    let err = tokio::spawn(pump(
        agent.clone(),
        StdioStream::STDERR,
        tokio::io::stderr(),
    ));
    let mut start = StartProcessRequest::new();
    start.container_id = CONTAINER_ID.into();
    if let Err(e) = agent.start_process(ctx(RPC_TIMEOUT), &start).await {
        return Err(ExitWith(
            126,
            format!(
                "cannot start {:?}: {}",
                args.command[0],
                status_message(&e).1
            ),
        )
        .into());
    }
    let stdin_task = if args.interactive {
        Some(tokio::spawn(feed_stdin(agent.clone())))
    } else {
        close_stdin(&agent).await;
        None
    };
    let mut wait = WaitProcessRequest::new();
    wait.container_id = CONTAINER_ID.into();
    let status = agent
        .wait_process(ttrpc::context::Context::default(), &wait)
        .await
        .context("waiting for the command")?
        .exit_status;
    out.await??;
    err.await??;
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(status)
}

pub(crate) async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<i32> {
    let log = crate::logging::stderr(cli.log_level());
    let config = Config::load(cli.config.as_deref())?;
    if !args.rootfs.is_dir() {
        bail!("--rootfs {}: not a directory; give a directory holding the container's root filesystem", args.rootfs.display());
    }
    let rootfs = args
        .rootfs
        .canonicalize()
        .with_context(|| format!("--rootfs {}", args.rootfs.display()))?;
    let mut rnd = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut rnd)?;
    let req = VmRequest {
        id: format!("run-{}", hex::encode(rnd)),
        dir: None,
        shares: vec![Share {
            tag: SHARE_TAG.into(),
            dir: rootfs,
        }],
        devices: Vec::new(),
        cdi_devices: Vec::new(),
    };
    let mut vm = Vm::launch(&config, &HostRoots::default(), &req, &log).await?;
    if args.timing {
        eprintln!(
            "cocoon: agent ready after {} ms",
            vm.boot_time().as_millis()
        );
    }
    let agent = vm.agent().clone();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run_command(agent, args) => r,
        status = vm_exit(&mut vm) => Err(anyhow::anyhow!("the VM stopped unexpectedly ({status})")),
        _ = sigint.recv() => Ok(130),
        _ = sigterm.recv() => Ok(143),
    };
    vm.shutdown().await;
    result
}

async fn vm_exit(vm: &mut Vm) -> String {
    // Polls instead of awaiting, so `vm` stays usable by the other branch.
    loop {
        if let Some(s) = vm.exited() {
            return s.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("0:0").unwrap(), (0, 0));
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert!(parse_user("root")
            .unwrap_err()
            .to_string()
            .contains("--user"));
    }
}
