//! `cocoon measure` against independent implementations, on real inputs:
//! Debian's OVMF.amdsev.fd / OVMF.inteltdx.ms.fd / OVMF.fd, the guest
//! kernel and initrd from `make guest`.
//!
//! - SEV-SNP: sev-snp-measure 0.0.13 (PyPI, installed by `make deps` into
//!   build/measure-venv), output compared byte for byte.
//! - TDX: tests/fixtures/tdx_measure.py, written separately from the specs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cocoon_tests::{env_or_skip, repo_root, snp_firmware, tdx_firmware, text, Env};

fn sev_snp_measure(test: &str) -> Option<PathBuf> {
    let p = repo_root().join("build/measure-venv/bin/sev-snp-measure");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP {test}: {} missing (make deps installs sev-snp-measure 0.0.13 from PyPI)",
            p.display()
        );
        None
    }
}

fn guest() -> (PathBuf, PathBuf) {
    let g = repo_root().join("build/guest");
    (g.join("vmlinuz"), g.join("initrd.img"))
}

fn cocoon(env: &Env, args: &[&str]) -> Output {
    Command::new(env.bin_dir.join("cocoon"))
        .arg("measure")
        .args(args)
        .output()
        .unwrap()
}

fn ok_stdout(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {:?}", text(o));
    text(o).0
}

#[test]
fn snp_is_bit_identical_to_sev_snp_measure() {
    let test = "snp_is_bit_identical_to_sev_snp_measure";
    let (Some(env), Some(reference), Some(fw)) =
        (env_or_skip(test), sev_snp_measure(test), snp_firmware(test))
    else {
        return;
    };
    let (kernel, initrd) = guest();
    let fw = fw.display().to_string();
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    let empty = tempfile::NamedTempFile::new().unwrap();
    let e = empty.path().display().to_string();
    let cmdlines = [
        "",
        "console=hvc0 quiet",
        " leading and trailing blanks ",
        "tab\tand  double  spaces",
        "unicode=gr\u{fc}n \u{2713}",
        "panic=1 cocoon.x=y -- arg",
    ];
    let vcpu = [
        vec!["--vcpu-type", "EPYC-v4"],
        vec!["--vcpu-type", "EPYC-Rome"],
        vec!["--vcpu-type", "EPYC-Milan-v2"],
        vec!["--vcpu-type", "EPYC-Genoa"],
        vec!["--vcpu-type", "EPYC-Turin"],
        vec!["--vcpu-sig", "0xa10f11"],
        vec![
            "--vcpu-family",
            "25",
            "--vcpu-model",
            "17",
            "--vcpu-stepping",
            "1",
        ],
    ];
    let mut cases: Vec<Vec<String>> = Vec::new();
    for (n, cmdline) in cmdlines.iter().enumerate() {
        let vcpus = ["1", "2", "4", "16", "64", "3"][n % 6];
        let features = ["0x1", "0x21", "0x1", "0x31", "0x1", "0x21"][n % 6];
        for (m, v) in vcpu.iter().enumerate() {
            let mut c: Vec<String> = ["--mode", "snp", "--vcpus", vcpus, "--ovmf", &fw]
                .iter()
                .map(|s| s.to_string())
                .collect();
            c.extend(v.iter().map(|s| s.to_string()));
            c.extend(["--guest-features".into(), features.into()]);
            c.extend(["--kernel".into(), k.clone()]);
            if m % 3 != 2 {
                c.extend(["--initrd".into(), i.clone()]);
            }
            c.push(format!("--append={cmdline}"));
            cases.push(c);
        }
    }
    // No kernel; empty kernel and initrd; cloud VMMs; base64; the firmware
    // hash alone and fed back as a seed.
    let base = |extra: &[&str]| -> Vec<String> {
        let mut c: Vec<String> = ["--mode", "snp", "--vcpus", "2", "--ovmf", &fw]
            .iter()
            .map(|s| s.to_string())
            .collect();
        c.extend(extra.iter().map(|s| s.to_string()));
        c
    };
    cases.push(base(&["--vcpu-type", "EPYC-v4"]));
    cases.push(base(&[
        "--vcpu-type",
        "EPYC-v4",
        "--kernel",
        &e,
        "--initrd",
        &e,
    ]));
    cases.push(base(&["--vmm-type", "ec2", "--kernel", &k, "--initrd", &i]));
    cases.push(base(&["--vmm-type", "ec2", "--guest-features", "0x21"]));
    cases.push(base(&[
        "--vmm-type",
        "gce",
        "--kernel",
        &k,
        "--append",
        "x",
    ]));
    cases.push(base(&[
        "--vcpu-type",
        "EPYC",
        "--output-format",
        "base64",
        "--kernel",
        &k,
    ]));
    cases.push(vec![
        "--mode".into(),
        "snp:ovmf-hash".into(),
        "--ovmf".into(),
        fw.clone(),
    ]);
    let seed_out = Command::new(&reference)
        .args(["--mode", "snp:ovmf-hash", "--ovmf", &fw])
        .output()
        .unwrap();
    let seed = ok_stdout(&seed_out, "ovmf hash").trim().to_string();
    cases.push(base(&[
        "--vcpu-type",
        "EPYC-Milan",
        "--snp-ovmf-hash",
        &seed,
        "--kernel",
        &k,
    ]));

    for c in &cases {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        let theirs = Command::new(&reference).args(&args).output().unwrap();
        let theirs = ok_stdout(&theirs, "sev-snp-measure");
        let mut ours_args = vec!["snp"];
        ours_args.extend(&args);
        let ours = ok_stdout(&cocoon(&env, &ours_args), "cocoon measure snp");
        assert_eq!(ours, theirs, "differs for {args:?}");
    }
    eprintln!("{} cases identical to sev-snp-measure 0.0.13", cases.len());
}

fn tdx_reference(fw: &Path, extra: &[&str]) -> serde_json::Value {
    let o = Command::new("python3")
        .arg(repo_root().join("tests/fixtures/tdx_measure.py"))
        .arg(fw)
        .args(extra)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&o)))
}

#[test]
fn tdx_matches_an_independent_implementation() {
    let test = "tdx_matches_an_independent_implementation";
    let (Some(env), Some(tdx_fw)) = (env_or_skip(test), tdx_firmware(test)) else {
        return;
    };
    let (kernel, initrd) = guest();
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    let mut checked = 0;
    for fw in [tdx_fw, PathBuf::from("/usr/share/ovmf/OVMF.fd")] {
        let f = fw.display().to_string();
        for (ours, theirs) in [
            (vec!["--mrtd-order", "per-page"], vec![]),
            (vec!["--mrtd-order", "two-pass"], vec!["--two-pass"]),
            (
                vec!["--load-options", "cmdline-first"],
                vec!["--cmdline-first"],
            ),
            (
                vec!["--kernel-setup-patch", "--memory", "2048"],
                vec!["--setup-patch", "--memory", "2048"],
            ),
            (
                vec!["--kernel-setup-patch", "--memory", "16384"],
                vec!["--setup-patch", "--memory", "16384"],
            ),
        ] {
            for append in ["", "console=hvc0 quiet", "x=\u{e9}t\u{e9}"] {
                let mut a = vec![
                    "tdx",
                    "--json",
                    "--firmware",
                    &f,
                    "--kernel",
                    &k,
                    "--initrd",
                    &i,
                ];
                let app = format!("--append={append}");
                a.push(&app);
                a.extend(&ours);
                let got: serde_json::Value =
                    serde_json::from_str(&ok_stdout(&cocoon(&env, &a), "cocoon measure tdx"))
                        .unwrap();
                let mut r = vec!["--kernel", &k, "--initrd", &i, "--append", append];
                r.extend(&theirs);
                let want = tdx_reference(&fw, &r);
                for reg in ["mrtd", "rtmr1", "rtmr2"] {
                    assert_eq!(got[reg], want[reg], "{reg} for {a:?}");
                }
                checked += 1;
            }
        }
        // Without an initrd.
        let got = ok_stdout(
            &cocoon(
                &env,
                &[
                    "tdx",
                    "--json",
                    "--firmware",
                    &f,
                    "--kernel",
                    &k,
                    "--append",
                    "a",
                ],
            ),
            "no initrd",
        );
        let got: serde_json::Value = serde_json::from_str(&got).unwrap();
        let want = tdx_reference(&fw, &["--kernel", &k, "--append", "a"]);
        assert_eq!(got["rtmr2"], want["rtmr2"]);
        assert_eq!(got["rtmr1"], want["rtmr1"]);
    }
    eprintln!("{checked} TDX cases identical to the independent implementation");
}

#[test]
fn node_config_reference_values_use_the_launch_inputs() {
    let test = "node_config_reference_values_use_the_launch_inputs";
    let (Some(env), Some(reference), Some(snp_fw), Some(tdx_fw)) = (
        env_or_skip(test),
        sev_snp_measure(test),
        snp_firmware(test),
        tdx_firmware(test),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (kernel, initrd) = guest();
    let config = |tee: &str, fw: &Path, extra: &str| {
        let p = dir.path().join(format!("{tee}.toml"));
        std::fs::write(
            &p,
            format!(
                "[hypervisor.qemu]\nkernel = {kernel:?}\ninitrd = {initrd:?}\nfirmware = {fw:?}\ntee = {tee:?}\naccel = \"auto\"\ncpu_model = \"EPYC-Milan\"\ndefault_vcpus = 3\ndebug_console = false\nkernel_params = \"cocoon.test=1\"\n{extra}"
            ),
        )
        .unwrap();
        p
    };
    let initdata = dir.path().join("initdata.toml");
    std::fs::write(
        &initdata,
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://kbs:8080\"\n'''\n",
    )
    .unwrap();
    let snp = config("snp", &snp_fw, "");
    let measure_config = |config: &Path| -> serde_json::Value {
        let o = Command::new(env.bin_dir.join("cocoon"))
            .arg("--config")
            .arg(config)
            .args(["measure", "--initdata"])
            .arg(&initdata)
            .output()
            .unwrap();
        serde_json::from_str(&ok_stdout(&o, "measure --config")).unwrap()
    };
    let v = measure_config(&snp);
    assert_eq!(v["tee"], "snp");
    let cmdline = v["inputs"]["cmdline"].as_str().unwrap();
    assert!(cmdline.ends_with("cocoon.test=1"), "{cmdline}");
    assert_eq!(v["inputs"]["vcpus"], 3);
    assert_eq!(v["inputs"]["vcpu_sig"], "0xa00f11");
    let theirs = Command::new(&reference)
        .args([
            "--mode",
            "snp",
            "--vcpus",
            "3",
            "--vcpu-type",
            "EPYC-Milan",
            "--ovmf",
        ])
        .arg(&snp_fw)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .arg(format!("--append={cmdline}"))
        .output()
        .unwrap();
    assert_eq!(
        v["launch_digest"].as_str().unwrap(),
        ok_stdout(&theirs, "sev-snp-measure").trim()
    );
    // `cocoon check` shows the same value, then that it matches a pin.
    let ld = v["launch_digest"].as_str().unwrap().to_string();
    let check = |config: &Path| -> serde_json::Value {
        let o = Command::new(env.bin_dir.join("cocoon"))
            .arg("--config")
            .arg(config)
            .args(["check", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == "measurement")
            .cloned()
            .unwrap_or_else(|| panic!("no measurement finding: {v}"))
    };
    let f = check(&snp);
    assert_eq!(f["severity"], "info", "{f}");
    assert!(f["detail"].as_str().unwrap().contains(&ld), "{f}");
    let pinned = config(
        "snp",
        &snp_fw,
        &format!("\n[measurement]\nexpected = [\"{ld}\"]\n"),
    );
    let f = check(&pinned);
    assert_eq!(f["severity"], "ok", "{f}");
    assert!(
        f["detail"]
            .as_str()
            .unwrap()
            .ends_with("matches `measurement.expected`"),
        "{f}"
    );

    use sha2::Digest;
    let doc = std::fs::read(&initdata).unwrap();
    assert_eq!(
        v["host_data"].as_str().unwrap(),
        hex::encode(&sha2::Sha384::digest(&doc)[..32])
    );
    let kernel_sha = hex::encode(sha2::Sha256::digest(std::fs::read(&kernel).unwrap()));
    assert_eq!(v["inputs"]["kernel"]["sha256"], kernel_sha);

    // TDX, with the setup-header patch chosen explicitly.
    let tdx = config(
        "tdx",
        &tdx_fw,
        "\n[measurement]\ntdx_kernel_setup_patch = \"off\"\n",
    );
    let v = measure_config(&tdx);
    let cmdline = v["inputs"]["cmdline"].as_str().unwrap();
    let want = tdx_reference(
        &tdx_fw,
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--append",
            cmdline,
        ],
    );
    for reg in ["mrtd", "rtmr1", "rtmr2"] {
        assert_eq!(v[reg], want[reg], "{reg}");
    }
    assert!(v["rtmr0"].as_str().unwrap().starts_with("not computed"));
    assert_eq!(
        v["mrconfigid"].as_str().unwrap(),
        hex::encode(sha2::Sha384::digest(&doc))
    );
}

#[test]
fn bad_input_gets_one_clear_error() {
    let test = "bad_input_gets_one_clear_error";
    let Some(env) = env_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.fd");
    std::fs::write(&plain, vec![0u8; 65536]).unwrap();
    let p = plain.display().to_string();
    let (kernel, initrd) = guest();
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    let bad_initdata = dir.path().join("bad.toml");
    std::fs::write(&bad_initdata, "version = \"0.1.0\"\nalgorithm = \"md5\"\n").unwrap();
    let bi = bad_initdata.display().to_string();
    let cfg = env.config.display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec![
                "snp",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC",
                "--ovmf",
                "/nonexistent/OVMF.fd",
            ],
            "cannot read --ovmf /nonexistent/OVMF.fd".into(),
        ),
        (
            vec!["snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", &p],
            format!("{p} has no SEV metadata"),
        ),
        (
            vec![
                "snp",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC-Zen9",
                "--ovmf",
                &p,
            ],
            "--vcpu-type: unknown CPU type \"EPYC-Zen9\"".into(),
        ),
        (
            vec!["snp", "--vcpu-type", "EPYC", "--ovmf", &p],
            "--vcpus N is required".into(),
        ),
        (
            vec!["snp", "--vcpus", "1", "--ovmf", &p],
            "missing --vcpu-type, --vcpu-sig or --vcpu-family".into(),
        ),
        (
            vec![
                "snp",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC",
                "--ovmf",
                &p,
                "--initrd",
                &i,
            ],
            "--initrd needs --kernel".into(),
        ),
        (
            vec![
                "snp",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC",
                "--ovmf",
                &p,
                "--snp-ovmf-hash",
                "xyz",
            ],
            "--snp-ovmf-hash: \"xyz\" is not 96 hex digits".into(),
        ),
        (
            vec!["tdx", "--firmware", &p],
            format!("{p} has no TDVF descriptor"),
        ),
        (
            vec![
                "tdx",
                "--firmware",
                "/usr/share/ovmf/OVMF.fd",
                "--kernel",
                &i,
            ],
            format!("{i} is not a PE/COFF (EFI) image"),
        ),
        (
            vec![
                "tdx",
                "--firmware",
                "/usr/share/ovmf/OVMF.fd",
                "--kernel",
                &k,
                "--initrd",
                "/nonexistent/initrd",
            ],
            "cannot read --initrd /nonexistent/initrd".into(),
        ),
        (
            vec!["--config", &cfg, "--initdata", &bi],
            format!("{bi} has algorithm \"md5\""),
        ),
    ];
    for (args, needle) in cases {
        let o = cocoon(&env, &args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {out} {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert!(err.contains(&needle), "{args:?}: {err}");
        assert_eq!(err.matches("cocoon: error").count(), 1, "{err}");
    }
}
