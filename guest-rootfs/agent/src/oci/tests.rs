use super::*;

fn spec_json(v: serde_json::Value) -> Vec<u8> {
    let mut base = serde_json::to_value(Spec::default()).unwrap();
    if let (Some(b), Some(o)) = (base.as_object_mut(), v.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&base).unwrap()
}

#[test]
fn the_default_spec_decodes_to_runc_confinement() {
    let c = ContainerSpec::from_json(&spec_json(serde_json::json!({}))).unwrap();
    let s = &c.process.security;
    let three = (1u64 << 29) | (1 << 5) | (1 << 10);
    assert_eq!(s.caps.bounding, three);
    assert_eq!(s.caps.effective, three);
    assert!(s.no_new_privileges);
    assert_eq!(s.rlimits, vec![(libc::RLIMIT_NOFILE, 1024, 1024)]);
    assert!(c.masked_paths.contains(&"/proc/kcore".to_string()));
    assert!(c.readonly_paths.contains(&"/proc/sys".to_string()));
    // In order, with their options; cgroup (v1 in the spec) is cgroup2.
    let dests: Vec<&str> = c.mounts.iter().map(|m| m.destination.as_str()).collect();
    assert_eq!(
        dests,
        [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup"
        ]
    );
    assert_eq!(
        c.mounts[6].kind,
        MountKind::Fs {
            fstype: "cgroup2".into(),
            source: "cgroup".into()
        }
    );
    let shm = &c.mounts[3];
    assert_eq!(shm.data, "mode=1777,size=65536k");
    assert_eq!(
        shm.flags,
        libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV
    );
    assert_eq!(c.mounts[2].kind, MountKind::Devpts);
    assert!(
        c.mounts[2].data.contains("newinstance"),
        "{}",
        c.mounts[2].data
    );
    assert!(
        c.mounts[2].data.contains("ptmxmode=0666"),
        "{}",
        c.mounts[2].data
    );
    assert!(c.own_devpts);
}

#[test]
fn mount_options_map_to_flags_propagation_and_data() {
    let opts: Vec<String> = ["rbind", "ro", "nosuid", "rslave", "size=1m", "suid"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (flags, prop, bind, data) = parse_mount_options(&opts);
    assert!(bind);
    assert_eq!(flags, libc::MS_REC | libc::MS_RDONLY, "suid clears nosuid");
    assert_eq!(prop, libc::MS_SLAVE | libc::MS_REC);
    assert_eq!(data, vec!["size=1m"]);
    let m = decode_mount("/data", "none", "c1/mounts/0", &opts).unwrap();
    assert_eq!(
        m.kind,
        MountKind::Bind {
            source: "c1/mounts/0".into(),
            recursive: true
        }
    );
    assert_eq!(
        m.flags,
        libc::MS_RDONLY,
        "MS_REC belongs to the bind, not the remount"
    );
    assert!(m.data.is_empty());
}

#[test]
fn bad_mounts_name_the_field() {
    let e = decode_mount("relative", "tmpfs", "t", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mounts.destination"), "{e}");
    let e = decode_mount("/a/../..", "tmpfs", "t", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mounts.destination"), "{e}");
    let e = decode_mount("/", "tmpfs", "t", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mounts.destination"), "{e}");
    let e = decode_mount("/x", "bind", "/etc", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mounts.source"), "{e}");
    let e = decode_mount("/x", "ext4", "/dev/vda", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mounts.type") && e.contains("ext4"), "{e}");
}

#[test]
fn only_namespaced_sysctls_are_accepted() {
    assert_eq!(
        sysctl_path("net.ipv4.ip_forward").unwrap(),
        "/proc/sys/net/ipv4/ip_forward"
    );
    assert_eq!(
        sysctl_path("kernel.shmmax").unwrap(),
        "/proc/sys/kernel/shmmax"
    );
    assert_eq!(
        sysctl_path("fs.mqueue.msg_max").unwrap(),
        "/proc/sys/fs/mqueue/msg_max"
    );
    for bad in [
        "kernel.panic",
        "vm.overcommit_memory",
        "net..x",
        "net./x",
        "",
    ] {
        let e = sysctl_path(bad).unwrap_err().to_string();
        assert!(e.contains("linux.sysctl"), "{bad}: {e}");
    }
}

#[test]
fn seccomp_compiles_and_refuses_what_a_vm_cannot_do() {
    let s: LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    }))
    .unwrap();
    let f = compile_seccomp(&s).unwrap();
    assert!(f.program.len() > 10, "a real program: {}", f.program.len());
    // The first instruction loads the architecture (offset 4 of seccomp_data).
    assert_eq!(f.program[0].k, 4);

    let notify: LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
    }))
    .unwrap();
    let e = compile_seccomp(&notify).unwrap_err().to_string();
    assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
}

#[test]
fn exec_processes_decode_and_bad_json_is_named() {
    let p = Process::default();
    let d = ProcessSpec::from_json(&serde_json::to_vec(&p).unwrap()).unwrap();
    assert_eq!(d.args, vec!["sh"]);
    assert!(d.security.no_new_privileges);
    let e = ProcessSpec::from_json(b"[]").unwrap_err().to_string();
    assert!(e.contains("oci_process"), "{e}");
    let e = ProcessSpec::from_json(b"").unwrap_err().to_string();
    assert!(e.contains("oci_process") && e.contains("empty"), "{e}");
    let e = ContainerSpec::from_json(&spec_json(serde_json::json!({"process": null})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no process"), "{e}");
}

#[test]
fn resources_become_limits_and_bad_ones_name_the_field() {
    let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
        "memory": {"limit": 67108864, "reservation": 33554432, "swap": 134217728},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000},
        "pids": {"limit": 64},
        "unified": {"memory.high": "60000000"}
    }))
    .unwrap();
    let l = limits(&r).unwrap();
    assert_eq!(l.memory_max, Some(64 << 20));
    assert_eq!(l.memory_low, Some(32 << 20));
    assert_eq!(l.swap_max, Some(64 << 20), "swap counts memory + swap");
    assert_eq!(l.cpu_max, Some((Some(20_000), 100_000)));
    assert_eq!(l.cpu_weight, Some(crate::cgroup::shares_to_weight(512)));
    assert_eq!(l.pids_max, Some(64));
    assert_eq!(
        l.unified.get("memory.high").map(String::as_str),
        Some("60000000")
    );

    let bad = |v: serde_json::Value, field: &str| {
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(v).unwrap();
        let e = limits(&r).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    };
    bad(
        serde_json::json!({"memory": {"limit": 4096}}),
        "linux.resources.memory.limit",
    );
    bad(
        serde_json::json!({"memory": {"limit": 67108864, "swap": 1048576}}),
        "linux.resources.memory.swap",
    );
    bad(
        serde_json::json!({"cpu": {"period": 10}}),
        "linux.resources.cpu.period",
    );
    bad(
        serde_json::json!({"unified": {"cgroup.procs": "1"}}),
        "linux.resources.unified",
    );
    bad(
        serde_json::json!({"unified": {"memory.max/../x": "1"}}),
        "linux.resources.unified",
    );
    let e = limits_from_json(b"nope").unwrap_err().to_string();
    assert!(e.contains("oci_resources"), "{e}");
}
