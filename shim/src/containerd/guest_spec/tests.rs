use super::*;

fn bind(dest: &str, src: &Path, opts: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into());
    m.set_typ(Some("bind".into()));
    m.set_source(Some(src.to_path_buf()));
    m.set_options(Some(opts.iter().map(|o| o.to_string()).collect()));
    m
}

fn with_mounts(extra: Vec<Mount>) -> Spec {
    let mut s = Spec::default();
    let mut mounts = s.mounts().clone().unwrap();
    mounts.extend(extra);
    s.set_mounts(Some(mounts));
    s
}

#[test]
fn host_binds_move_into_the_share_and_the_rest_passes_through() {
    let d = tempfile::tempdir().unwrap();
    let hosts = d.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let spec = with_mounts(vec![
        bind("/etc/hosts", &hosts, &["rbind", "ro"]),
        bind("/data", d.path(), &["rbind", "rw"]),
        bind("/dev/shm", Path::new("/run/sandbox/shm"), &["rbind", "ro"]),
    ]);
    let g = prepare(&spec, "c1", true).unwrap();
    let n = Spec::default().mounts().as_ref().unwrap().len();
    assert_eq!(
        g.binds,
        vec![
            HostBind {
                source: hosts,
                readonly: true,
                rel: format!("mounts/{n}")
            },
            HostBind {
                source: d.path().to_path_buf(),
                readonly: false,
                rel: format!("mounts/{}", n + 1)
            },
        ]
    );
    let mounts = g.spec.mounts().clone().unwrap();
    assert_eq!(mounts[..n], Spec::default().mounts().clone().unwrap()[..]);
    assert_eq!(
        mounts[n].source().as_deref(),
        Some(Path::new(&format!("c1/mounts/{n}")))
    );
    // The sandbox's shm directory becomes the pod's guest tmpfs.
    assert_eq!(mounts[n + 2].typ().as_deref(), Some("tmpfs"));
    assert_eq!(
        mounts[n + 2].source().as_deref(),
        Some(Path::new(POD_SHM_SOURCE))
    );
    assert!(
        g.notes.iter().any(|n| n.contains("/dev/shm")),
        "{:?}",
        g.notes
    );
    assert_eq!(g.spec.process().as_ref().unwrap().terminal(), Some(true));
    // Host namespace paths are dropped; their meaning is the guest's.
    let json = String::from_utf8(g.to_json().unwrap()).unwrap();
    assert!(json.contains("c1/mounts/"), "{json}");
}

fn with_namespace_paths(paths: &[(LinuxNamespaceType, &str)]) -> Spec {
    let mut spec = Spec::default();
    let mut linux = spec.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    for n in ns.iter_mut() {
        if let Some((_, p)) = paths.iter().find(|(t, _)| *t == n.typ()) {
            n.set_path(Some(PathBuf::from(p)));
        }
    }
    linux.set_namespaces(Some(ns));
    spec.set_linux(Some(linux));
    spec
}

fn ns_path(g: &GuestSpec, typ: LinuxNamespaceType) -> Option<PathBuf> {
    g.spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .find(|n| n.typ() == typ)
        .and_then(|n| n.path().clone())
}

#[test]
fn the_pods_namespaces_are_joined_in_the_guest_and_others_dropped() {
    use LinuxNamespaceType as T;
    // What CRI writes for a pod container (shareProcessNamespace on):
    // the sandbox task's PID, which for Cocoon is the VM's.
    let spec = with_namespace_paths(&[
        (T::Ipc, "/proc/4242/ns/ipc"),
        (T::Uts, "/proc/4242/ns/uts"),
        (T::Pid, "/proc/4242/ns/pid"),
        (T::Network, "/var/run/netns/cni-1"),
    ]);
    let mut g = prepare(&spec, "c1", false).unwrap();
    assert_eq!(ns_path(&g, T::Ipc), None, "no host path until mapped");
    let mut pod = g.clone();
    pod.share_pod_namespaces(Some(("sb1", 4242)));
    for t in [T::Ipc, T::Uts, T::Pid] {
        assert_eq!(
            ns_path(&pod, t),
            Some(PathBuf::from("container:sb1")),
            "{t:?}"
        );
    }
    assert_eq!(ns_path(&pod, T::Network), None, "the network is the VM's");
    assert!(
        pod.notes.iter().all(|n| !n.contains("not its pod's")),
        "{:?}",
        pod.notes
    );
    // Another process's namespace, or no pod: own namespaces, logged.
    let mut other = g.clone();
    other.share_pod_namespaces(Some(("sb1", 7)));
    assert_eq!(ns_path(&other, T::Ipc), None);
    assert!(
        other
            .notes
            .iter()
            .any(|n| n.contains("/proc/4242/ns/ipc") && n.contains("its own")),
        "{:?}",
        other.notes
    );
    g.share_pod_namespaces(None);
    assert_eq!(ns_path(&g, T::Pid), None);
    let json = String::from_utf8(g.to_json().unwrap()).unwrap();
    assert!(
        !json.contains("/proc/4242"),
        "no host path reaches the guest: {json}"
    );
}

#[test]
fn bad_mounts_and_namespaces_are_refused_with_the_field() {
    let e = prepare(
        &with_mounts(vec![bind(
            "/data",
            Path::new("/nonexistent/volume"),
            &["rbind"],
        )]),
        "c",
        false,
    )
    .unwrap_err()
    .to_string();
    let n = Spec::default().mounts().as_ref().unwrap().len();
    assert!(
        e.contains(&format!("mounts[{n}].source")) && e.contains("/nonexistent/volume"),
        "{e}"
    );
    let e = prepare(
        &with_mounts(vec![bind("/../etc", Path::new("/tmp"), &["rbind"])]),
        "c",
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("mounts[{n}].destination")), "{e}");
    let e = prepare(
        &with_mounts(vec![bind("/x", Path::new("relative"), &["rbind"])]),
        "c",
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not an absolute host path"), "{e}");

    let mut s = Spec::default();
    let mut linux = s.linux().clone().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    let mut user = oci_spec::runtime::LinuxNamespace::default();
    user.set_typ(LinuxNamespaceType::User);
    ns.push(user);
    linux.set_namespaces(Some(ns));
    s.set_linux(Some(linux));
    let e = prepare(&s, "c", false).unwrap_err().to_string();
    assert!(
        e.contains("linux.namespaces") && e.contains("user namespace"),
        "{e}"
    );
}

#[test]
fn host_namespaces_and_hooks_are_logged_not_dropped_silently() {
    let mut s = Spec::default();
    let mut linux = s.linux().clone().unwrap();
    let mut ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Pid && n.typ() != LinuxNamespaceType::Network)
        .collect();
    let mut ipc = oci_spec::runtime::LinuxNamespace::default();
    ipc.set_typ(LinuxNamespaceType::Ipc);
    ipc.set_path(Some("/proc/42/ns/ipc".into()));
    ns.retain(|n| n.typ() != LinuxNamespaceType::Ipc);
    ns.push(ipc);
    linux.set_namespaces(Some(ns));
    s.set_linux(Some(linux));
    s.set_hooks(Some(oci_spec::runtime::Hooks::default()));
    let mut g = prepare(&s, "c", false).unwrap();
    // Not a container of a pod: the path is nobody's in the guest.
    g.share_pod_namespaces(None);
    let notes = g.notes.join("\n");
    for want in [
        "host's PID",
        "joins IPC namespace /proc/42/ns/ipc",
        "host's network",
        "hooks",
    ] {
        assert!(notes.contains(want), "{want}: {notes}");
    }
    let paths: Vec<_> = g
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|n| n.path().clone())
        .collect();
    assert!(paths.is_empty(), "{paths:?}");
}

#[test]
fn a_seccomp_typo_is_refused_with_its_position() {
    let mut s = Spec::default();
    let mut linux = s.linux().clone().unwrap();
    linux.set_seccomp(Some(
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "cachestat", "_llseek"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["write", "mkdri"], "action": "SCMP_ACT_ALLOW"}
            ]
        }))
        .unwrap(),
    ));
    s.set_linux(Some(linux));
    let e = prepare(&s, "c", false).unwrap_err().to_string();
    assert!(
        e.contains("linux.seccomp.syscalls[1].names[1]") && e.contains("mkdri"),
        "{e}"
    );
}

#[test]
fn read_only_volumes_are_read_only_in_the_share() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: binding volumes needs root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let vol = d.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "x").unwrap();
    let container = d.path().join("shared/c1");
    let binds = vec![
        HostBind {
            source: vol.clone(),
            readonly: true,
            rel: "mounts/0".into(),
        },
        HostBind {
            source: vol.join("f"),
            readonly: false,
            rel: "mounts/1".into(),
        },
    ];
    let staging = d.path().join("staging/c1");
    mount_binds(&binds, &container, &staging).unwrap();
    assert_eq!(
        std::fs::read_to_string(container.join("mounts/0/f")).unwrap(),
        "x"
    );
    let e = std::fs::write(container.join("mounts/0/g"), "y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    std::fs::write(container.join("mounts/1"), "z").unwrap();
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "z");
    assert!(!staging.exists(), "the staging mount point is gone");
    // Removal unmounts first: the volume's files survive.
    super::super::rootfs::remove_unmounted(&container).unwrap();
    assert!(!container.exists());
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "z");
}
