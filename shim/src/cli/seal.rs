//! `cocoon seal`: encrypt a model for a pod (on the model owner's machine),
//! check a sealed model, show its header, or open it with its key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use cocoon_seal::format::{DEFAULT_CHUNK_SIZE, KEY_LEN};
use cocoon_seal::open::{self, OpenOptions};
use cocoon_seal::seal::{self, SealOptions};
use cocoon_seal::ModelKey;

use super::Cli;

#[derive(Debug, Subcommand)]
pub(crate) enum SealCommand {
    /// Encrypt a model file or directory with a fresh 256-bit key; write
    /// the key (the KBS resource) to --key-out and print how to upload it.
    Model(ModelArgs),
    /// Check that a sealed model opens with a key: header, every chunk,
    /// length. Writes nothing.
    Verify(VerifyArgs),
    /// Print a sealed model's header (files, sizes, key URI); no key needed.
    Inspect(InspectArgs),
    /// Decrypt a sealed model with its key (the owner's own check; in a
    /// pod, the guest does this).
    Open(OpenArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ModelArgs {
    /// The model: a file, or a directory of regular files.
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    /// The sealed model to write (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The KBS resource that will hold the key: kbs:///<repo>/<type>/<tag>.
    #[arg(long, value_name = "URI")]
    key_uri: String,
    /// Where to write the key (created with mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    key_out: PathBuf,
    /// Plaintext bytes per chunk (4096 to 64 MiB).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The key file (32 bytes).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The sealed model.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The sealed model.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct OpenArgs {
    /// The key file (32 bytes).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The sealed model.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Where to write the plaintext (must not exist).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Worker threads (default: all CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

fn read_key(path: &Path) -> anyhow::Result<ModelKey> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading the key {}", path.display()))?;
    ModelKey::from_bytes(&bytes).with_context(|| format!("--key {}", path.display()))
}

fn mib_s(bytes: u64, secs: f64) -> String {
    format!("{:.0} MiB/s", bytes as f64 / 1048576.0 / secs.max(1e-9))
}

/// Writes the key file: created 0600, never over an existing file.
fn write_key(path: &Path, key: &ModelKey) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "--key-out {}: cannot create it (it must not exist; a key file is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(key.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn model(args: &ModelArgs) -> anyhow::Result<i32> {
    let uri: cocoon_protocol::resource::ResourceUri = args.key_uri.parse().context("--key-uri")?;
    if args.key_out.symlink_metadata().is_ok() {
        anyhow::bail!(
            "--key-out {} exists; choose another path (a key file is never overwritten)",
            args.key_out.display()
        );
    }
    let key = ModelKey::generate()?;
    let start = Instant::now();
    let opts = SealOptions {
        key_uri: args.key_uri.clone(),
        chunk_size: args.chunk_size,
        threads: args.threads.unwrap_or_else(cocoon_seal::default_threads),
        salt: None,
    };
    let sealed = seal::seal(&args.input, &args.out, &key, &opts)
        .with_context(|| format!("sealing {}", args.input.display()))?;
    if let Err(e) = write_key(&args.key_out, &key) {
        // A sealed model without its key is useless: leave neither.
        let _ = std::fs::remove_file(&args.out);
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    let plain = sealed.header.plaintext_len();
    let path = format!("{}/{}/{}", uri.repository, uri.kind, uri.tag);
    println!(
        "sealed {} ({} file{}, {} bytes) into {} ({} bytes) in {:.2} s ({})",
        args.input.display(),
        sealed.header.files.len(),
        if sealed.header.files.len() == 1 {
            ""
        } else {
            "s"
        },
        plain,
        args.out.display(),
        sealed.sealed_len,
        secs,
        mib_s(plain, secs)
    );
    println!(
        "key: {} ({KEY_LEN} bytes, mode 0600) for {}",
        args.key_out.display(),
        args.key_uri
    );
    println!();
    println!("Store the key in the KBS as resource {path}, with trustee's kbs-client:");
    println!(
        "  kbs-client --url http://<kbs>:8080 config --auth-private-key admin.key set-resource --path {path} --resource-file {}",
        args.key_out.display()
    );
    println!("or with its admin API (a bearer token signed by the KBS admin key):");
    println!(
        "  curl -X POST http://<kbs>:8080/kbs/v0/resource/{path} -H \"Authorization: Bearer $(cat admin-token)\" -H 'Content-Type: application/octet-stream' --data-binary @{}",
        args.key_out.display()
    );
    println!(
        "Then keep {} offline or delete it; the pod's initdata must allow {}.",
        args.key_out.display(),
        args.key_uri
    );
    Ok(0)
}

fn verify(args: &VerifyArgs) -> anyhow::Result<i32> {
    let key = read_key(&args.key)?;
    let start = Instant::now();
    let opts = OpenOptions {
        threads: args.threads.unwrap_or_else(cocoon_seal::default_threads),
        progress: None,
    };
    let header = open::open(&args.input, &key, None, opts)
        .with_context(|| format!("verifying {}", args.input.display()))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ok: {} opens with {}: {} file(s), {} bytes, key {} ({:.2} s, {})",
        args.input.display(),
        args.key.display(),
        header.files.len(),
        header.plaintext_len(),
        header.key_uri,
        secs,
        mib_s(header.plaintext_len(), secs)
    );
    Ok(0)
}

fn inspect(args: &InspectArgs) -> anyhow::Result<i32> {
    let header = open::read_header_file(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    println!("{}", serde_json::to_string_pretty(&header)?);
    Ok(0)
}

fn open_cmd(args: &OpenArgs) -> anyhow::Result<i32> {
    let key = read_key(&args.key)?;
    let opts = OpenOptions {
        threads: args.threads.unwrap_or_else(cocoon_seal::default_threads),
        progress: None,
    };
    let header = open::open(&args.input, &key, Some(&args.out), opts)
        .with_context(|| format!("opening {}", args.input.display()))?;
    println!(
        "opened {} into {} ({} file(s), {} bytes)",
        args.input.display(),
        args.out.display(),
        header.files.len(),
        header.plaintext_len()
    );
    Ok(0)
}

pub(crate) fn run(_cli: &Cli, cmd: &SealCommand) -> anyhow::Result<i32> {
    match cmd {
        SealCommand::Model(a) => model(a),
        SealCommand::Verify(a) => verify(a),
        SealCommand::Inspect(a) => inspect(a),
        SealCommand::Open(a) => open_cmd(a),
    }
}
