//! A Kubernetes-style pod through containerd's CRI with the `cocoon`
//! runtime handler: one VM and one shim for the pod, two containers, exec,
//! logs, stop and remove. Driven by a Rust CRI client (k8s-cri).

use std::time::{Duration, Instant};

use cocoon_tests::containerd::{Containerd, Flavor};
use cocoon_tests::cri::{connect, container_config, exec_out, sandbox_config};
use cocoon_tests::{env_or_skip, GpuHost, Sandbox};
use k8s_cri::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_two_containers_in_one_vm() {
    let test = "pod_with_two_containers_in_one_vm";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let ctd = tokio::task::block_in_place(|| Containerd::start(&env, &sb, flavor, &["k8s.io"]));
    let mut cri = connect(ctd.cri_socket().to_path_buf()).await;
    let logs = ctd.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();

    // shareProcessNamespace: the pod's containers share one PID namespace
    // (as they always share IPC and UTS).
    let mut sandbox_config = PodSandboxConfig {
        hostname: "pod-one".into(),
        log_directory: logs.display().to_string(),
        ..sandbox_config("p1", "default")
    };
    if let Some(ns) = sandbox_config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = NamespaceMode::Pod as i32;
    }
    let pod_id = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "cocoon".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log()))
        .into_inner()
        .pod_sandbox_id;

    let mut ids = Vec::new();
    for (name, cmd) in [
        (
            "c1",
            "echo from-c1 > /dev/shm/c1; echo hello-from-c1; sleep 1000",
        ),
        ("c2", "echo hello-from-c2; hostname; sleep 1000"),
    ] {
        // c1 has a terminal, in its own devpts.
        let config = ContainerConfig {
            tty: name == "c1",
            ..container_config(name, cmd)
        };
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    for id in &ids {
        let s = cri
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(s.state, ContainerState::ContainerRunning as i32, "{id}");
    }
    // One pod, one VM, one shim.
    let qemus = sb
        .leftover_processes()
        .iter()
        .filter(|p| p.contains("qemu-system"))
        .count();
    assert_eq!(qemus, 1, "exactly one QEMU for the pod");
    assert_eq!(ctd.shims().len(), 1, "exactly one shim for the pod");

    let r = cri
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo exec-ok; exit 2".into()],
            timeout: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "exec-ok\n");
    assert_eq!(r.exit_code, 2);

    // Container output reaches the CRI log files.
    let start = Instant::now();
    loop {
        let c1 = std::fs::read_to_string(logs.join("c1.log")).unwrap_or_default();
        let c2 = std::fs::read_to_string(logs.join("c2.log")).unwrap_or_default();
        if c1.contains("stdout F hello-from-c1")
            && c2.contains("stdout F hello-from-c2")
            && c2.contains("stdout F pod-one")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "logs: c1={c1:?} c2={c2:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The pod's namespaces and shared memory: both containers (and their
    // execs) are in the sandbox's IPC, UTS and PID namespaces, and c2 sees
    // what c1 wrote to /dev/shm and c1's processes.
    let ns = "for n in ipc uts pid; do readlink /proc/self/ns/$n; done";
    let ns1 = exec_out(&mut cri, &ids[0], ns).await;
    let ns2 = exec_out(&mut cri, &ids[1], ns).await;
    assert_eq!(ns1, ns2, "c1 and c2 share IPC, UTS and PID namespaces");
    assert_eq!(ns1.lines().count(), 3, "{ns1}");
    assert_eq!(
        exec_out(&mut cri, &ids[1], "cat /dev/shm/c1").await,
        "from-c1\n"
    );
    let ps = exec_out(&mut cri, &ids[1], "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await;
    assert_eq!(
        ps.matches("sleep 1000").count(),
        2,
        "c2 sees its own and c1's processes: {ps}"
    );
    // Each container has its own devpts: c1's terminal is not in c2's.
    assert_eq!(
        exec_out(&mut cri, &ids[0], "ls /dev/pts").await,
        "0\nptmx\n"
    );
    assert_eq!(exec_out(&mut cri, &ids[1], "ls /dev/pts").await, "ptmx\n");
    let pid1 = exec_out(
        &mut cri,
        &ids[1],
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
    )
    .await;
    assert!(
        !pid1.contains("sleep 1000"),
        "PID 1 is the sandbox's, not a container's: {pid1}"
    );

    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    tokio::task::block_in_place(|| {
        ctd.assert_no_shims();
        sb.assert_clean();
    });
}

/// A stand-in kubelet serving `v1.PodResourcesLister/List` on a unix
/// socket with a fixed answer.
mod fake_kubelet {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use cocoon_shim::containerd::podresources::{
        ListPodResourcesRequest, ListPodResourcesResponse, LIST_PATH,
    };
    use tonic::body::Body;
    use tonic::codegen::http;

    type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

    #[derive(Clone)]
    pub struct Kubelet(pub Arc<ListPodResourcesResponse>);

    struct List(Arc<ListPodResourcesResponse>);

    impl tonic::server::UnaryService<ListPodResourcesRequest> for List {
        type Response = ListPodResourcesResponse;
        type Future = BoxFuture<tonic::Response<Self::Response>, tonic::Status>;
        fn call(&mut self, _: tonic::Request<ListPodResourcesRequest>) -> Self::Future {
            let r = (*self.0).clone();
            Box::pin(async move { Ok(tonic::Response::new(r)) })
        }
    }

    impl tower::Service<http::Request<Body>> for Kubelet {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let answer = self.0.clone();
            if req.uri().path() == LIST_PATH {
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.unary(List(answer), req).await)
                })
            } else {
                Box::pin(async { Ok(tonic::Status::unimplemented("not served").into_http()) })
            }
        }
    }

    impl tonic::server::NamedService for Kubelet {
        const NAME: &'static str = "v1.PodResourcesLister";
    }

    /// Serves until the runtime stops.
    pub fn serve(socket: &std::path::Path, answer: ListPodResourcesResponse) {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Kubelet(Arc::new(answer)))
                .serve_with_incoming(incoming),
        );
    }
}

/// A GPU pod the Kubernetes way: the device plugin's allocation is only
/// known to the kubelet, so the shim asks its PodResources API when the pod
/// sandbox starts, resolves `nvidia.com/pgpu=<id>` with the CDI specs and
/// checks the CC mode on a recorded host. CC on: the launch reaches the
/// QEMU argv (`dry_run`); CC off: RunPodSandbox fails naming the GPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_pod_devices_come_from_the_kubelet() {
    use cocoon_shim::containerd::podresources::*;
    let test = "gpu_pod_devices_come_from_the_kubelet";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let gpus = GpuHost::new();
    let kubelet_sock = gpus.dir.path().join("kubelet.sock");
    let pod = |name: &str, id: &str| PodResources {
        name: name.into(),
        namespace: "ml".into(),
        containers: vec![ContainerResources {
            name: "train".into(),
            devices: vec![ContainerDevices {
                resource_name: "nvidia.com/pgpu".into(),
                device_ids: vec![id.into()],
            }],
        }],
    };
    fake_kubelet::serve(
        &kubelet_sock,
        ListPodResourcesResponse {
            pod_resources: vec![pod("gpu-on", "12"), pod("gpu-off", "13")],
        },
    );
    let k = kubelet_sock.display().to_string();
    let sb = Sandbox::new(&env, |t| {
        gpus.configure(t);
        t["runtime"]
            .as_table_mut()
            .unwrap()
            .insert("pod_resources_socket".into(), k.clone().into());
    });
    let ctd = tokio::task::block_in_place(|| Containerd::start(&env, &sb, flavor, &["k8s.io"]));
    let mut cri = connect(ctd.cri_socket().to_path_buf()).await;
    let run = |name: &str| RunPodSandboxRequest {
        config: Some(sandbox_config(name, "ml")),
        runtime_handler: "cocoon".into(),
    };
    let err = cri.run_pod_sandbox(run("gpu-on")).await.unwrap_err();
    let msg = err.message().replace("\\\"", "\"");
    assert!(
        msg.contains("dry run")
            && msg.contains("-device vfio-pci,host=0000:41:00.0,bus=rp0,id=vfio0"),
        "{msg}\n{}",
        ctd.log()
    );
    let err = cri.run_pod_sandbox(run("gpu-off")).await.unwrap_err();
    let msg = err.message().replace("\\\"", "\"");
    assert!(
        msg.contains("GPU 0000:42:00.0 (nvidia.com/pgpu=13 (/dev/vfio/13)) is in CC mode off"),
        "{msg}"
    );
    tokio::task::block_in_place(|| {
        ctd.assert_no_shims();
        sb.assert_clean();
    });
}

/// Writes a volume the way the kubelet's atomic writer does: the files are
/// symlinks through `..data`, which is swapped to a new directory.
fn atomic_write(dir: &std::path::Path, version: &str, value: &str) {
    let ts = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("key"), value).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if std::fs::symlink_metadata(dir.join("key")).is_err() {
        std::os::unix::fs::symlink("..data/key", dir.join("key")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_volumes_limits_updates_and_oom_through_cri() {
    let test = "pod_volumes_limits_updates_and_oom_through_cri";
    let Some(env) = env_or_skip(test) else { return };
    let Some(flavor) = Flavor::system() else {
        eprintln!("SKIP {test}: containerd is not installed (make deps)");
        return;
    };
    let sb = Sandbox::new(&env, |_| {});
    let ctd = tokio::task::block_in_place(|| Containerd::start(&env, &sb, flavor, &["k8s.io"]));
    let mut cri = connect(ctd.cri_socket().to_path_buf()).await;
    let sandbox_config = PodSandboxConfig {
        hostname: "pod-vol".into(),
        ..sandbox_config("p2", "default")
    };
    let pod_id = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "cocoon".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log()))
        .into_inner()
        .pod_sandbox_id;

    // An emptyDir shared by two containers, a secret-like volume updated
    // while the pod runs, a 64 MiB limit.
    let dir = tempfile::tempdir().unwrap();
    let (empty, secret) = (dir.path().join("empty"), dir.path().join("secret"));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    atomic_write(&secret, "v1", "first");
    let mounts = vec![
        Mount {
            container_path: "/shared".into(),
            host_path: empty.display().to_string(),
            ..Default::default()
        },
        Mount {
            container_path: "/etc/secret".into(),
            host_path: secret.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let resources = |mib: i64| LinuxContainerResources {
        memory_limit_in_bytes: mib << 20,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    let mut ids = Vec::new();
    for (name, cmd) in [
        ("writer", "echo from-writer > /shared/note; sleep 1000"),
        ("reader", "sleep 1000"),
    ] {
        let config = ContainerConfig {
            mounts: mounts.clone(),
            linux: Some(LinuxContainerConfig {
                resources: Some(resources(64)),
                ..Default::default()
            }),
            ..container_config(name, cmd)
        };
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", ctd.log()))
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let reader = ids[1].clone();
    // The kubelet-style files CRI adds, the emptyDir seen by both, the limits.
    let out = exec_out(
        &mut cri,
        &reader,
        "sleep 1; cat /shared/note; cat /etc/hostname; grep -c . /etc/hosts; \
         cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; cat /etc/secret/key; echo; \
         (echo x > /etc/secret/new) 2>/dev/null && echo secret-writable || echo secret-readonly",
    )
    .await;
    for want in [
        "from-writer",
        "pod-vol",
        "67108864",
        "50000 100000",
        "first",
        "secret-readonly",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert_eq!(
        std::fs::read_to_string(empty.join("note")).unwrap(),
        "from-writer\n"
    );

    // The volume is updated on the host; the guest sees the new value.
    atomic_write(&secret, "v2", "second");
    let start = Instant::now();
    loop {
        let v = exec_out(&mut cri, &reader, "cat /etc/secret/key").await;
        if v == "second" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still {v:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // UpdateContainerResources reaches the container's cgroup.
    cri.update_container_resources(UpdateContainerResourcesRequest {
        container_id: reader.clone(),
        linux: Some(resources(96)),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", ctd.log()));
    let out = exec_out(&mut cri, &reader, "cat /sys/fs/cgroup/memory.max").await;
    assert_eq!(out.trim(), (96u64 << 20).to_string());

    // A container that outgrows its limit is OOMKilled, as the kubelet sees it.
    let config = ContainerConfig {
        linux: Some(LinuxContainerConfig {
            resources: Some(resources(32)),
            ..Default::default()
        }),
        ..container_config("hog", "tail /dev/zero")
    };
    let hog = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest {
        container_id: hog.clone(),
    })
    .await
    .unwrap();
    let start = Instant::now();
    let status = loop {
        let s = cri
            .container_status(ContainerStatusRequest {
                container_id: hog.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "hog still {s:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(status.exit_code, 137, "{status:?}");
    assert_eq!(status.reason, "OOMKilled", "{status:?}");

    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    tokio::task::block_in_place(|| {
        ctd.assert_no_shims();
        sb.assert_clean();
    });
    assert_eq!(
        std::fs::read_to_string(empty.join("note")).unwrap(),
        "from-writer\n",
        "volumes survive"
    );
}
