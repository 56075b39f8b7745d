//! `cocoon measure`: launch measurements.
//!
//! - `cocoon measure [--config FILE] [--initdata FILE]`: the reference
//!   values of a launch of the node configuration, as the shim computes
//!   them before every launch.
//! - `cocoon measure snp ...`: the SEV-SNP launch digest, with the flags of
//!   sev-snp-measure 0.0.13 (same output for the same input).
//! - `cocoon measure tdx ...`: TDX MRTD, RTMR[1], RTMR[2].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use cocoon_vmm::config::Tee;
use cocoon_vmm::host::HostRoots;
use cocoon_vmm::measure::{self, snp, tdx, Kind, MeasureError};

use super::Cli;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct MeasureArgs {
    #[command(subcommand)]
    command: Option<MeasureCommand>,
    /// Initdata document (TOML) whose digest becomes HOST_DATA (SEV-SNP) or
    /// MRCONFIGID (TDX).
    #[arg(long, value_name = "FILE")]
    initdata: Option<PathBuf>,
    /// Print the reference values a running sandbox (a pod's id, or the id
    /// of `cocoon run`) was launched with, from its state directory.
    #[arg(long, value_name = "ID", conflicts_with = "initdata")]
    sandbox: Option<String>,
}

#[derive(Debug, Subcommand)]
enum MeasureCommand {
    /// SEV-SNP launch digest of OVMF direct boot (flags and output as
    /// sev-snp-measure 0.0.13).
    Snp(SnpArgs),
    /// TDX MRTD, RTMR[1] and RTMR[2] of TDVF direct boot.
    Tdx(TdxArgs),
}

fn auto_int(s: &str) -> Result<u64, String> {
    let (digits, radix) = match s.get(..2) {
        Some("0x" | "0X") => (&s[2..], 16),
        Some("0o" | "0O") => (&s[2..], 8),
        Some("0b" | "0B") => (&s[2..], 2),
        _ => (s, 10),
    };
    u64::from_str_radix(&digits.replace('_', ""), radix)
        .map_err(|_| format!("{s:?} is not an integer (decimal, or 0x/0o/0b prefixed)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SnpMode {
    /// The launch digest.
    Snp,
    /// Only the digest of the firmware pages, to pass later as
    /// --snp-ovmf-hash.
    #[value(name = "snp:ovmf-hash")]
    SnpOvmfHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Hex,
    Base64,
}

#[derive(Debug, Args)]
struct SnpArgs {
    /// Guest mode.
    #[arg(long, value_enum, default_value = "snp")]
    mode: SnpMode,
    /// Number of guest vCPUs (one VMSA each).
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// QEMU CPU model of the guest vCPUs (EPYC, EPYC-v1..v4, EPYC-IBPB,
    /// EPYC-Rome[-v1..v3], EPYC-Milan[-v1,-v2], EPYC-Genoa[-v1],
    /// EPYC-Turin).
    #[arg(long, value_name = "CPUTYPE")]
    vcpu_type: Option<String>,
    /// Guest vCPU signature (CPUID Fn0000_0001_EAX).
    #[arg(long, value_name = "VALUE", value_parser = auto_int)]
    vcpu_sig: Option<u64>,
    /// Guest vCPU family (with --vcpu-model and --vcpu-stepping).
    #[arg(long, value_name = "FAMILY")]
    vcpu_family: Option<u32>,
    /// Guest vCPU model.
    #[arg(long, value_name = "MODEL")]
    vcpu_model: Option<u32>,
    /// Guest vCPU stepping.
    #[arg(long, value_name = "STEPPING")]
    vcpu_stepping: Option<u32>,
    /// VMM: QEMU, ec2 or gce.
    #[arg(long, value_name = "VMMTYPE", default_value = "QEMU")]
    vmm_type: String,
    /// Firmware image (OVMF).
    #[arg(long, value_name = "PATH")]
    ovmf: PathBuf,
    /// Kernel booted directly (QEMU -kernel with kernel-hashes=on).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initrd (with --kernel).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line, exactly as passed to QEMU -append (with
    /// --kernel).
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    append: Option<String>,
    /// VMSA SEV_FEATURES (0x1: SNPActive, KVM's default; 0x21 adds
    /// DebugSwap).
    #[arg(long, value_name = "VALUE", value_parser = auto_int, default_value = "0x1")]
    guest_features: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "hex")]
    output_format: OutputFormat,
    /// Precomputed firmware digest (from --mode snp:ovmf-hash), used
    /// instead of hashing the firmware pages.
    #[arg(long, value_name = "HASH")]
    snp_ovmf_hash: Option<String>,
    /// Print JSON with the inputs.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MrtdOrderArg {
    /// One PAGE.ADD then its 16 MR.EXTENDs, page by page: upstream KVM
    /// (Linux 6.16+) with QEMU 10.1+, GCE, td-shim and tdx-measure tools.
    PerPage,
    /// All PAGE.ADDs of a section, then its MR.EXTENDs: the QEMU 8.x TDX
    /// trees (Canonical's tdx 8.2, Intel's staging qemu-tdx).
    TwoPass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LoadOptionsArg {
    /// "initrd=initrd <cmdline>": edk2 with PR #11115 (mid-2025 and later,
    /// e.g. Debian ovmf-inteltdx 2026.08).
    InitrdFirst,
    /// "<cmdline> initrd=initrd": older edk2 (2024.x and before).
    CmdlineFirst,
}

#[derive(Debug, Args)]
struct TdxArgs {
    /// TDVF firmware image.
    #[arg(long, value_name = "PATH")]
    firmware: PathBuf,
    /// Kernel booted directly (an EFI-stub bzImage); gives RTMR[1].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initrd; part of RTMR[2].
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line as passed to QEMU -append; part of RTMR[2].
    #[arg(
        long,
        value_name = "CMDLINE",
        allow_hyphen_values = true,
        default_value = ""
    )]
    append: String,
    /// MRTD page order of the host stack.
    #[arg(long, value_enum, default_value = "per-page")]
    mrtd_order: MrtdOrderArg,
    /// How the firmware lays out the kernel's LoadOptions (RTMR[2]).
    #[arg(long, value_enum, default_value = "initrd-first")]
    load_options: LoadOptionsArg,
    /// Replay QEMU's Linux setup-header patch before hashing the kernel:
    /// QEMU up to 10.1 patches TDX guests' kernels; 10.2+ (commit
    /// a7542a38f399) does not.
    #[arg(long)]
    kernel_setup_patch: bool,
    /// Guest memory in MiB (the setup-header patch places the initrd by it).
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    memory: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cli: &Cli, args: &MeasureArgs) -> anyhow::Result<i32> {
    match &args.command {
        Some(MeasureCommand::Snp(a)) => run_snp(a),
        Some(MeasureCommand::Tdx(a)) => run_tdx(a),
        None if args.sandbox.is_some() => run_sandbox(cli, args.sandbox.as_deref().unwrap_or("")),
        None => run_config(cli, args),
    }
}

fn run_sandbox(cli: &Cli, id: &str) -> anyhow::Result<i32> {
    if !cocoon_protocol::resource::is_container_id(id) {
        bail!("--sandbox {id:?} is not a sandbox id (A-Z a-z 0-9 . _ -, starting with a letter or digit, at most 76)");
    }
    let config = crate::node::NodeConfig::load(cli.config.as_deref())?.vm;
    let state = &config.runtime.state_dir;
    // A pod's VM lives in `<pod dir>/vm`; `cocoon run` uses `<id>`.
    let candidates = [
        state.join(crate::containerd::pod::dir_name(id)).join("vm"),
        state.join(id),
    ];
    for dir in &candidates {
        let file = dir.join(cocoon_vmm::vm::MEASUREMENT_FILE);
        if let Ok(text) = std::fs::read_to_string(&file) {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            return Ok(0);
        }
    }
    bail!(
        "no running sandbox {id:?} under `runtime.state_dir` = {} of {} (looked for {})",
        state.display(),
        config.origin,
        candidates
            .iter()
            .map(|d| d
                .join(cocoon_vmm::vm::MEASUREMENT_FILE)
                .display()
                .to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn run_config(cli: &Cli, args: &MeasureArgs) -> anyhow::Result<i32> {
    let config = crate::node::NodeConfig::load(cli.config.as_deref())?.vm;
    let kind = match config.qemu.tee {
        Tee::None => Kind::None,
        Tee::Snp => Kind::Snp,
        Tee::Tdx => Kind::Tdx,
        Tee::Auto => {
            let host = cocoon_vmm::tee::HostTee::detect(
                &HostRoots::default(),
                &cocoon_vmm::tee::host_cpuid,
            );
            match cocoon_vmm::tee::resolve(&config.qemu, &host)
                .context("`hypervisor.qemu.tee` = \"auto\" is resolved against this host; set it to \"snp\" or \"tdx\" to measure for another machine")?
            {
                cocoon_vmm::tee::LaunchTee::Snp { .. } => Kind::Snp,
                cocoon_vmm::tee::LaunchTee::Tdx { .. } => Kind::Tdx,
                cocoon_vmm::tee::LaunchTee::None => Kind::None,
            }
        }
    };
    // A pod without initdata of its own gets the node's (with a KBS).
    let initdata = match &args.initdata {
        Some(p) => Some((p.as_path(), measure::read_input("--initdata", p)?)),
        None => config
            .attestation
            .node_initdata()
            .map(|d| (Path::new("initdata"), d)),
    };
    let r = measure::for_launch(
        &config,
        kind,
        initdata.as_ref().map(|(p, d)| (*p, d.as_slice())),
        &cocoon_vmm::tee::host_cpuid,
    )?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(0)
}

fn input(what: &str, p: &Path) -> Result<Vec<u8>, MeasureError> {
    measure::read_input(what, p)
}

/// Kernel, initrd and firmware pages hashed in parallel; the firmware
/// digest then seeds the launch digest (unless `--snp-ovmf-hash` gives it).
fn snp_hashes(
    a: &SnpArgs,
    fw: &[u8],
    name: &str,
) -> Result<(Option<snp::SevHashes>, Option<[u8; snp::LD_BYTES]>), MeasureError> {
    std::thread::scope(|s| {
        let fw_hash = (a.snp_ovmf_hash.is_none()).then(|| s.spawn(|| snp::ovmf_hash(fw, name)));
        let initrd = a
            .initrd
            .as_ref()
            .map(|i| s.spawn(|| measure::sha256_file("--initrd", i)));
        let kernel = a
            .kernel
            .as_ref()
            .map(|k| measure::sha256_file("--kernel", k));
        let initrd = initrd.map(join).transpose()?;
        let fw_hash = fw_hash.map(join).transpose()?;
        let hashes = match kernel.transpose()? {
            Some((k, _)) => {
                let mut h = snp::SevHashes::new(&[], None, a.append.as_deref());
                h.kernel = k;
                if let Some((i, _)) = initrd {
                    h.initrd = i;
                }
                Some(h)
            }
            None => None,
        };
        Ok((hashes, fw_hash))
    })
}

/// The `--snp-ovmf-hash` seed, if given.
fn snp_seed(a: &SnpArgs) -> Result<Option<[u8; snp::LD_BYTES]>, MeasureError> {
    let Some(h) = &a.snp_ovmf_hash else {
        return Ok(None);
    };
    let mut s = [0u8; snp::LD_BYTES];
    hex::decode_to_slice(h, &mut s).map_err(|_| MeasureError::Input {
        what: "--snp-ovmf-hash".into(),
        problem: format!("{h:?} is not 96 hex digits (a 48-byte digest from --mode snp:ovmf-hash)"),
    })?;
    Ok(Some(s))
}

/// `--mode snp`: the launch digest; prints it as JSON with `--json`
/// (returns `None` then).
fn snp_launch_digest(
    a: &SnpArgs,
    fw: &[u8],
    name: &str,
) -> anyhow::Result<Option<[u8; snp::LD_BYTES]>> {
    if a.initrd.is_some() && a.kernel.is_none() {
        bail!("--initrd needs --kernel");
    }
    if a.append.as_deref().is_some_and(|s| !s.is_empty()) && a.kernel.is_none() {
        bail!("--append needs --kernel");
    }
    let Some(vcpus) = a.vcpus else {
        bail!("--vcpus N is required in mode snp");
    };
    let vmm: snp::Vmm = a.vmm_type.parse()?;
    let sig = vcpu_sig(a, vmm)?;
    let info = measure::firmware_info(&a.ovmf, fw)?;
    let (hashes, fw_hash) = snp_hashes(a, fw, name)?;
    let seed = snp_seed(a)?.or(fw_hash);
    let ld = snp::launch_digest(&snp::SnpInputs {
        firmware: fw,
        info: &info,
        firmware_name: name,
        vcpus,
        vcpu_sig: sig,
        vmm,
        hashes,
        guest_features: a.guest_features,
        ovmf_hash: seed,
    })?;
    if !a.json {
        return Ok(Some(ld));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "mode": "snp",
            "launch_digest": hex::encode(ld),
            "vcpus": vcpus,
            "vcpu_sig": format!("{sig:#x}"),
            "vmm_type": vmm,
            "guest_features": format!("{:#x}", a.guest_features),
            "ovmf": a.ovmf,
            "kernel": a.kernel,
            "initrd": a.initrd,
            "append": a.append,
        }))?
    );
    Ok(None)
}

fn run_snp(a: &SnpArgs) -> anyhow::Result<i32> {
    let fw = input("--ovmf", &a.ovmf)?;
    let name = a.ovmf.display().to_string();
    let ld = match a.mode {
        SnpMode::SnpOvmfHash => snp::ovmf_hash(&fw, &name)?,
        SnpMode::Snp => match snp_launch_digest(a, &fw, &name)? {
            Some(ld) => ld,
            None => return Ok(0),
        },
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "mode": "snp:ovmf-hash", "ovmf_hash": hex::encode(ld), "ovmf": a.ovmf })
        );
        return Ok(0);
    }
    match a.output_format {
        OutputFormat::Hex => println!("{}", hex::encode(ld)),
        OutputFormat::Base64 => {
            println!("{}", base64::engine::general_purpose::STANDARD.encode(ld))
        }
    }
    Ok(0)
}

fn join<T>(
    h: std::thread::ScopedJoinHandle<'_, Result<T, MeasureError>>,
) -> Result<T, MeasureError> {
    h.join().unwrap_or_else(|_| {
        Err(MeasureError::Input {
            what: "hashing".into(),
            problem: "a hashing thread panicked".into(),
        })
    })
}

/// The vCPU signature, chosen as sev-snp-measure does: family/model/
/// stepping, then an explicit signature, then the CPU type (zero values
/// count as not given).
fn vcpu_sig(a: &SnpArgs, vmm: snp::Vmm) -> anyhow::Result<u32> {
    if let Some(f) = a.vcpu_family.filter(|&f| f != 0) {
        let (Some(m), Some(s)) = (a.vcpu_model, a.vcpu_stepping) else {
            bail!("--vcpu-family needs --vcpu-model and --vcpu-stepping");
        };
        return Ok(snp::cpu_sig(f, m, s));
    }
    if let Some(s) = a.vcpu_sig.filter(|&s| s != 0) {
        return u32::try_from(s).map_err(|_| {
            MeasureError::Input {
                what: "--vcpu-sig".into(),
                problem: format!("{s:#x} does not fit CPUID Fn0000_0001_EAX (32 bits)"),
            }
            .into()
        });
    }
    if let Some(t) = &a.vcpu_type {
        return snp::cpu_type_sig(t).ok_or_else(|| {
            MeasureError::Input {
                what: "--vcpu-type".into(),
                problem: format!(
                    "unknown CPU type {t:?}; use one of {}",
                    snp::cpu_type_names()
                ),
            }
            .into()
        });
    }
    if vmm == snp::Vmm::Qemu {
        bail!("missing --vcpu-type, --vcpu-sig or --vcpu-family in mode snp with --vmm-type QEMU");
    }
    Ok(0)
}

fn run_tdx(a: &TdxArgs) -> anyhow::Result<i32> {
    let fw = input("--firmware", &a.firmware)?;
    let name = a.firmware.display().to_string();
    let info = measure::firmware_info(&a.firmware, &fw)?;
    let order = match a.mrtd_order {
        MrtdOrderArg::PerPage => tdx::MrtdOrder::PerPage,
        MrtdOrderArg::TwoPass => tdx::MrtdOrder::TwoPass,
    };
    let style = match a.load_options {
        LoadOptionsArg::InitrdFirst => tdx::LoadOptions::InitrdFirst,
        LoadOptionsArg::CmdlineFirst => tdx::LoadOptions::CmdlineFirst,
    };
    let mrtd = tdx::mrtd(&fw, &info, &name, order)?;
    let initrd = match &a.initrd {
        Some(p) => Some(input("--initrd", p)?),
        None => None,
    };
    let mut rtmr1 = None;
    let mut rtmr2 = None;
    if let Some(k) = &a.kernel {
        let mut kernel = input("--kernel", k)?;
        let kname = k.display().to_string();
        if a.kernel_setup_patch {
            tdx::qemu_patch_setup_header(
                &mut kernel,
                initrd.as_ref().map(|i| i.len() as u64),
                u64::from(a.memory) << 20,
            )
            .map_err(|p| MeasureError::File {
                path: kname.clone(),
                problem: p.into(),
            })?;
        }
        let digest = tdx::authenticode_sha384(&kernel, &kname)?;
        rtmr1 = Some(tdx::replay(&tdx::rtmr1_events(digest)));
        let opts = tdx::load_options(&a.append, initrd.is_some(), style);
        rtmr2 = Some(tdx::replay(&tdx::rtmr2_events(
            opts.as_deref(),
            initrd.as_deref(),
        )));
    } else if a.initrd.is_some() || !a.append.is_empty() {
        bail!(
            "--initrd and --append need --kernel (RTMR[1] and RTMR[2] describe direct kernel boot)"
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "mrtd": hex::encode(mrtd),
                "rtmr0": "not computed: depends on QEMU's ACPI tables, the TD HOB and the firmware's variable store",
                "rtmr1": rtmr1.map(hex::encode),
                "rtmr2": rtmr2.map(hex::encode),
                "mrtd_order": order,
                "load_options": style,
                "kernel_setup_patch": a.kernel_setup_patch,
            }))?
        );
    } else {
        println!("mrtd  {}", hex::encode(mrtd));
        if let (Some(r1), Some(r2)) = (rtmr1, rtmr2) {
            println!("rtmr1 {}", hex::encode(r1));
            println!("rtmr2 {}", hex::encode(r2));
        }
    }
    Ok(0)
}
