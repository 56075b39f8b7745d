//! The Task verbs without a guest: what each refuses, with which code, and
//! that a Create which stops before the VM boots leaves nothing behind
//! (real bind mount, real launch plan, `dry_run`).

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::*;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use ttrpc::Code;

use super::*;
use crate::containerd::publisher::Publisher;

fn service() -> Service {
    let log = Logger::root(slog::Discard, slog::o!());
    Service::new(Publisher::start(None, "default".into(), log.clone()), log)
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.full_message())
}

/// A bundle with `config.json` (annotations and a process) and a rootfs.
fn bundle(dir: &Path, annotations: &[(&str, &str)]) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs/bin")).unwrap();
    let ann: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": ann,
    });
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    b
}

fn create_req(id: &str, bundle: &Path, config: Option<&Path>) -> CreateTaskRequest {
    let mut r = CreateTaskRequest::new();
    r.id = id.into();
    r.bundle = bundle.display().to_string();
    if let Some(c) = config {
        let path = c.display().to_string();
        let mut v = vec![0x12, u8::try_from(path.len()).unwrap()];
        v.extend_from_slice(path.as_bytes());
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = v;
        r.options = Some(any).into();
    }
    r
}

#[tokio::test]
async fn verbs_on_unknown_tasks_are_not_found() {
    let svc = service();
    let mut s = StateRequest::new();
    s.id = "nope".into();
    assert_eq!(code(query::state(&svc, &s).await).0, Code::NOT_FOUND);
    let mut st = StartRequest::new();
    st.id = "nope".into();
    assert_eq!(code(lifecycle::start(&svc, &st).await).0, Code::NOT_FOUND);
    let mut k = KillRequest::new();
    k.id = "nope".into();
    assert_eq!(code(kill::kill(&svc, &k).await).0, Code::NOT_FOUND);
    let mut d = DeleteRequest::new();
    d.id = "nope".into();
    assert_eq!(code(delete::delete(&svc, &d).await).0, Code::NOT_FOUND);
    let mut p = PidsRequest::new();
    p.id = "nope".into();
    assert_eq!(code(query::pids(&svc, &p).await).0, Code::NOT_FOUND);
    let mut r = ResizePtyRequest::new();
    r.id = "nope".into();
    assert_eq!(code(stdio::resize_pty(&svc, &r).await).0, Code::NOT_FOUND);
    let mut e = ExecProcessRequest::new();
    e.id = "nope".into();
    e.exec_id = "e1".into();
    assert_eq!(code(exec::exec(&svc, &e).await).0, Code::NOT_FOUND);
    let mut w = WaitRequest::new();
    w.id = "nope".into();
    assert_eq!(code(lifecycle::wait(&svc, &w).await).0, Code::NOT_FOUND);
    let mut pa = PauseRequest::new();
    pa.id = "nope".into();
    assert_eq!(code(lifecycle::pause(&svc, &pa).await).0, Code::NOT_FOUND);
}

#[tokio::test]
async fn bad_create_requests_are_invalid_arguments() {
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let (c, msg) = code(create::create(&svc, &create_req("", &dir.path().join("b"), None)).await);
    assert_eq!((c, msg.as_str()), (Code::INVALID_ARGUMENT, "id: is empty"));
    let (c, msg) = code(create::create(&svc, &create_req("t1", dir.path(), None)).await);
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

#[tokio::test]
async fn a_pod_container_without_its_sandbox_is_a_failed_precondition() {
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let b = bundle(
        dir.path(),
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", "pod1"),
        ],
    );
    let (c, msg) = code(create::create(&svc, &create_req("c1", &b, None)).await);
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("pod sandbox \"pod1\" has no VM"), "{msg}");
}

/// A node config whose launch stops after planning (`dry_run`), with
/// fixture kernel and initrd files.
fn dry_run_config(dir: &Path, state: &Path, extra: &str) -> PathBuf {
    // Enough of a bzImage for the config check: the boot protocol magic.
    let mut kernel = vec![0u8; 0x400];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.join("vmlinuz"), kernel).unwrap();
    std::fs::write(dir.join("initrd.img"), b"i").unwrap();
    let d = dir.display();
    let text = format!(
        "[hypervisor.qemu]\npath = \"/bin/true\"\nkernel = \"{d}/vmlinuz\"\ninitrd = \"{d}/initrd.img\"\nvirtio_fs_daemon = \"/bin/true\"\nvhost_user_vsock_daemon = \"/bin/true\"\naccel = \"tcg\"\ndry_run = true\n[runtime]\nstate_dir = \"{}\"\n{extra}",
        state.display()
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn create_stops_at_dry_run_and_leaves_nothing_behind() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP create_stops_at_dry_run: needs root to bind-mount the rootfs");
        return;
    }
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dry_run_config(dir.path(), &state, "");
    let b = bundle(dir.path(), &[]);
    let (c, msg) = code(create::create(&svc, &create_req("t1", &b, Some(&config))).await);
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("dry run") && msg.contains("qemu: /bin/true -name cocoon-t1"),
        "{msg}"
    );
    // The pod directory (and the rootfs bind mounted in it) is gone.
    let left: Vec<_> = std::fs::read_dir(&state)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&state.display().to_string()),
        "a mount is left"
    );
    assert!(svc.pod.lock().await.is_none());
    assert!(!b.join(crate::containerd::record::FILE).exists());
}

#[tokio::test]
async fn disallowed_annotations_are_refused_before_anything_is_created() {
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dry_run_config(dir.path(), &state, "");
    let b = bundle(dir.path(), &[("io.cocoon.secret.x", "kbs:///a/b/c")]);
    let (c, msg) = code(create::create(&svc, &create_req("t1", &b, Some(&config))).await);
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("\"io.cocoon.secret.x\" is not allowed"),
        "{msg}"
    );
    assert!(!state.join("t1").exists());
    // A missing node config is the node's problem, not the request's.
    let (c, msg) = code(
        create::create(
            &svc,
            &create_req("t1", &b, Some(&dir.path().join("none.toml"))),
        )
        .await,
    );
    assert_eq!(c, Code::FAILED_PRECONDITION, "{msg}");
}

#[tokio::test]
async fn shutdown_without_containers_ends_the_shim() {
    let svc = service();
    lifecycle::shutdown(&svc, &ShutdownRequest::new())
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), svc.exited())
        .await
        .expect("the shim was not asked to exit");
}
