//! `cocoon run --rootfs DIR -- CMD...`: the node smoke test. Boots a VM from
//! the node configuration, shares DIR over virtio-fs as the container root,
//! runs CMD, streams its stdio and exits with its exit status.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use cocoon_protocol::agent::{CreateContainerRequest, StdioStream};
use cocoon_protocol::client::{GuestClient, ProcessRef};
use cocoon_vmm::launch::{HostView, LaunchPlan, LaunchRequest, PlannedDisk, Share};
use cocoon_vmm::vm::Vm;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Cli;

const CONTAINER_ID: &str = "run";
const SHARE_TAG: &str = "cocoon-rootfs";
const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    /// Attach FILE to the VM as a read-only virtio-blk disk (repeatable:
    /// vda, vdb, ...; serials disk0, disk1, ...).
    #[arg(long = "disk", value_name = "FILE")]
    disks: Vec<PathBuf>,
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
    let (u, g) = (parse(u)?, parse(g)?);
    if u == u32::MAX || g == u32::MAX {
        bail!("--user {s:?}: 4294967295 is (uid_t)-1, which set*id(2) reads as \"no change\"; use a real id");
    }
    Ok((u, g))
}

async fn pump(
    guest: GuestClient,
    stream: StdioStream,
    mut out: impl AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    let target = ProcessRef::init(CONTAINER_ID);
    while let Some(data) = guest
        .read(&target, stream)
        .await
        .context("reading the command's output")?
    {
        out.write_all(&data).await?;
        out.flush().await?;
    }
    out.flush().await?;
    Ok(())
}

async fn feed_stdin(guest: GuestClient) -> anyhow::Result<()> {
    let target = ProcessRef::init(CONTAINER_ID);
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stdin.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if guest.write_stdin(&target, buf[..n].to_vec()).await.is_err() {
            // The command closed its stdin or exited.
            return Ok(());
        }
    }
    let _ = guest.close_stdin(&target).await;
    Ok(())
}

/// The container's spec: oci-spec's default (runc's: a few capabilities,
/// noNewPrivileges, the usual pseudo file systems, masked paths) with the
/// command, user and hostname of the arguments.
fn container_spec(args: &RunArgs) -> anyhow::Result<oci_spec::runtime::Spec> {
    let (uid, gid) = parse_user(&args.user)?;
    let mut spec = oci_spec::runtime::Spec::default();
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.command.clone()));
    let mut env = args.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH_ENV.into());
    }
    p.set_env(Some(env));
    p.set_cwd(args.cwd.clone().into());
    p.set_terminal(Some(false));
    let mut user = p.user().clone();
    user.set_uid(uid);
    user.set_gid(gid);
    p.set_user(user);
    spec.set_process(Some(p));
    spec.set_hostname(Some(args.hostname.clone()));
    // The root is the caller's directory, writable as given.
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    Ok(spec)
}

fn container_request(args: &RunArgs) -> anyhow::Result<CreateContainerRequest> {
    let mut req = CreateContainerRequest::new();
    req.container_id = CONTAINER_ID.into();
    req.rootfs = ".".into();
    req.oci_spec = serde_json::to_vec(&container_spec(args)?)?;
    Ok(req)
}

/// Creates, starts and waits for the command; returns its exit status.
async fn run_command(guest: GuestClient, args: &RunArgs) -> anyhow::Result<i32> {
    let mut sb = cocoon_protocol::agent::CreateSandboxRequest::new();
    sb.sandbox_id = CONTAINER_ID.into();
    sb.shared_fs_tag = SHARE_TAG.into();
    guest
        .create_sandbox(sb)
        .await
        .context("creating the sandbox in the guest")?;
    let req = container_request(args)?;
    if let Err(e) = guest.create_container(&req).await {
        let exit = if e.code == Some(ttrpc::Code::NOT_FOUND) {
            127
        } else {
            126
        };
        return Err(ExitWith(
            exit,
            format!(
                "cannot run {:?} in {}: {}",
                args.command[0],
                args.rootfs.display(),
                e.message
            ),
        )
        .into());
    }
    let out = tokio::spawn(pump(
        guest.clone(),
        StdioStream::STDOUT,
        tokio::io::stdout(),
    ));
    let err = tokio::spawn(pump(
        guest.clone(),
        StdioStream::STDERR,
        tokio::io::stderr(),
    ));
    let target = ProcessRef::init(CONTAINER_ID);
    if let Err(e) = guest.start(&target).await {
        return Err(ExitWith(
            126,
            format!("cannot start {:?}: {}", args.command[0], e.message),
        )
        .into());
    }
    let stdin_task = if args.interactive {
        Some(tokio::spawn(feed_stdin(guest.clone())))
    } else {
        let _ = guest.close_stdin(&target).await;
        None
    };
    let status = guest
        .wait(&target)
        .await
        .context("waiting for the command")?;
    out.await??;
    err.await??;
    if let Some(t) = stdin_task {
        t.abort();
    }
    Ok(status)
}

/// Removes `run-*` directories of `cocoon run`s that died without cleaning
/// up (kill -9): a directory whose recorded processes are all gone. One
/// whose processes live (a running `cocoon run`) is never touched.
fn sweep_stale_runs(state_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let is_run = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("run-"));
        let records = dir.join(cocoon_vmm::vm::PROCESSES_FILE);
        if !is_run || !records.exists() {
            continue;
        }
        if cocoon_vmm::vm::recorded_alive(&dir) == 0 {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The agent takes one message of at most this size (ttrpc's limit).
const MAX_MESSAGE: usize = 4 << 20;

/// Everything about the command that the guest would refuse, checked
/// before a VM boots.
fn check_args(args: &RunArgs) -> anyhow::Result<()> {
    parse_user(&args.user)?;
    if args.command.first().is_none_or(String::is_empty) {
        bail!("the command is empty: give it after `--`");
    }
    if let Some(a) = args.command.iter().find(|a| a.contains('\0')) {
        bail!("command argument {a:?} contains a NUL byte");
    }
    for e in &args.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !e.contains('\0') => {}
            _ => bail!("--env {e:?}: expected KEY=VALUE with a non-empty KEY"),
        }
    }
    if !args.cwd.starts_with('/') {
        bail!("--cwd {:?}: not an absolute path", args.cwd);
    }
    if args.hostname.len() > 64 || args.hostname.is_empty() {
        bail!("--hostname {:?}: must be 1 to 64 characters", args.hostname);
    }
    let size = serde_json::to_vec(&container_spec(args)?)?.len();
    if size > MAX_MESSAGE - 64 * 1024 {
        bail!("the command and environment take {size} bytes; the guest accepts at most about {MAX_MESSAGE}");
    }
    Ok(())
}

pub(crate) async fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<i32> {
    let log = crate::logging::stderr(cli.log_level());
    check_args(args)?;
    let config = crate::node::NodeConfig::load(cli.config.as_deref())?.vm;
    if !args.rootfs.is_dir() {
        bail!("--rootfs {}: not a directory; give a directory holding the container's root filesystem", args.rootfs.display());
    }
    let rootfs = args
        .rootfs
        .canonicalize()
        .with_context(|| format!("--rootfs {}", args.rootfs.display()))?;
    sweep_stale_runs(&config.runtime.state_dir);
    let mut rnd = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut rnd)?;
    let req = LaunchRequest {
        id: format!("run-{}", hex::encode(rnd)),
        shares: vec![Share {
            tag: SHARE_TAG.into(),
            dir: rootfs,
        }],
        disks: args
            .disks
            .iter()
            .enumerate()
            .map(|(i, path)| PlannedDisk {
                path: path.clone(),
                serial: format!("disk{i}"),
            })
            .collect(),
        ..LaunchRequest::default()
    };
    let plan = LaunchPlan::build_blocking(&config, &HostView::detect(), &req).await?;
    let vm = Vm::launch(plan, &log).await?;
    if args.timing {
        eprintln!(
            "cocoon: agent ready after {} ms",
            vm.boot_time().as_millis()
        );
    }
    let guest = vm.guest().clone();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run_command(guest, args) => r,
        s = vm.stopped() => Err(anyhow::anyhow!(
            "the VM stopped unexpectedly: {} exited ({})",
            s.who,
            s.status.map_or_else(|| "unknown status".into(), |s| s.to_string())
        )),
        _ = sigint.recv() => Ok(130),
        _ = sigterm.recv() => Ok(143),
    };
    vm.shutdown().await;
    result
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
