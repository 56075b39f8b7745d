//! `cocoon gpu` and the GPU part of `cocoon check` on a recorded host: a
//! sysfs tree with H100s in each CC mode, a Blackwell GPU, an NVSwitch, a
//! GPU whose group holds a function on another driver, and an iommufd cdev.

use cocoon_tests::{env_or_skip, text, Sandbox};
use cocoon_vmm::fixtures::gpu::{h100, write, Func};
use cocoon_vmm::gpu::{BLACKWELL_CC_REG, HOPPER_CC_REG};

fn recorded_host(root: &std::path::Path) {
    write(
        root,
        &[
            h100("0000:41:00.0", 12, 1),
            h100("0000:42:00.0", 13, 0),
            h100("0000:43:00.0", 14, 3),
            Func {
                bdf: "0000:44:00.0",
                device: 0x2901,
                bar0: Some((BLACKWELL_CC_REG, 0x5)),
                cdev: Some("vfio2"),
                ..h100("", 15, 0)
            },
            Func {
                bdf: "0000:05:00.0",
                device: 0x22a3,
                class: 0x068000,
                bar0: None,
                ..h100("", 20, 0)
            },
            Func {
                bdf: "0000:46:00.0",
                driver: Some("nvidia"),
                ..h100("", 16, 1)
            },
        ],
    );
}

#[test]
fn gpu_list_cc_mode_and_check_on_a_recorded_host() {
    let test = "gpu_list_cc_mode_and_check_on_a_recorded_host";
    let Some(env) = env_or_skip(test) else {
        return;
    };
    let fixture = tempfile::tempdir().unwrap();
    recorded_host(fixture.path());
    let root = fixture.path().display().to_string();
    let bar = fixture
        .path()
        .join("sys/bus/pci/devices/0000:42:00.0/resource0");
    // A stand-in for NVIDIA's tool: sets mode bits 01 in the register.
    let tool = fixture.path().join("set-cc-mode.sh");
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\n[ \"$2\" = on ] || {{ echo unsupported mode >&2; exit 3; }}\nprintf '\\001' | dd of={} bs=1 seek={} conv=notrunc status=none\n",
            bar.display(),
            HOPPER_CC_REG
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t = tool.display().to_string();
    let sb = Sandbox::new(&env, |tbl| {
        let mut g = toml::Table::new();
        g.insert(
            "set_cc_mode_command".into(),
            vec![
                toml::Value::from(t.clone()),
                "{bdf}".into(),
                "{mode}".into(),
            ]
            .into(),
        );
        tbl.insert("gpu".into(), g.into());
    });
    let cocoon = |args: &[&str]| sb.cocoon().args(args).output().unwrap();

    let o = cocoon(&["gpu", "list", "--host-root", &root]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out} {err}");
    let line = |bdf: &str| {
        out.lines()
            .find(|l| l.starts_with(bdf))
            .unwrap_or_else(|| panic!("{bdf} missing: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("0000:41:00.0"),
        [
            "0000:41:00.0",
            "10de:2330",
            "gpu",
            "hopper",
            "vfio-pci",
            "12",
            "yes",
            "on"
        ]
    );
    assert_eq!(line("0000:42:00.0").last(), Some(&"off"));
    assert_eq!(line("0000:43:00.0").last(), Some(&"devtools"));
    assert_eq!(
        line("0000:44:00.0")[..4],
        ["0000:44:00.0", "10de:2901", "gpu", "blackwell"]
    );
    assert_eq!(line("0000:44:00.0").last(), Some(&"on"));
    assert_eq!(line("0000:05:00.0")[2], "nvswitch");
    assert_eq!(line("0000:46:00.0")[4], "nvidia");

    let o = cocoon(&["gpu", "list", "--json", "--host-root", &root]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 6, "{v}");
    assert_eq!(v[0]["bdf"], "0000:05:00.0");
    assert_eq!(v[1]["cc_mode"], "on");
    assert_eq!(v[1]["iommu_group"], 12);

    // Query, then switch one GPU through the configured command.
    let o = cocoon(&["gpu", "cc-mode", "--host-root", &root, "0000:42:00.0"]);
    assert_eq!(text(&o).0, "0000:42:00.0 off\n");
    let set = |mode: &str| {
        cocoon(&[
            "gpu",
            "cc-mode",
            "--host-root",
            &root,
            "--set",
            mode,
            "0000:42:00.0",
        ])
    };
    let o = set("on");
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "0000:42:00.0 on\n");
    let o = cocoon(&["gpu", "cc-mode", "--host-root", &root, "0000:42:00.0"]);
    assert_eq!(text(&o).0, "0000:42:00.0 on\n");
    // The tool failing, and an address without a GPU.
    let o = set("devtools");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("setting CC mode devtools failed")
            && text(&o).1.contains("unsupported mode"),
        "{:?}",
        text(&o)
    );
    let o = cocoon(&["gpu", "cc-mode", "--host-root", &root, "0000:99:00.0"]);
    assert!(
        text(&o)
            .1
            .contains("0000:99:00.0: no NVIDIA GPU at this address"),
        "{:?}",
        text(&o)
    );

    // cocoon check reports every GPU; the dev config wants CC off.
    let o = cocoon(&["check", "--json", "--host-root", &root]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gpus: Vec<&serde_json::Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "gpu")
        .collect();
    assert_eq!(gpus.len(), 6, "{v}");
    let f41 = gpus
        .iter()
        .find(|f| f["detail"].as_str().unwrap().starts_with("0000:41:00.0"))
        .unwrap();
    assert_eq!(f41["severity"], "warn", "{f41}");
    assert!(
        f41["detail"]
            .as_str()
            .unwrap()
            .contains("CC mode on but `gpu.cc_mode` requires off"),
        "{f41}"
    );
    let f46 = gpus
        .iter()
        .find(|f| f["detail"].as_str().unwrap().starts_with("0000:46:00.0"))
        .unwrap();
    assert!(
        f46["detail"]
            .as_str()
            .unwrap()
            .contains("not bound to vfio-pci"),
        "{f46}"
    );
}
