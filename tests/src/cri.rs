//! A CRI client for the tests (k8s-cri over containerd's unix socket) and
//! the pod and container configs they start from.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::IMAGE;

/// The CRI runtime service on containerd's socket `sock`.
pub async fn connect(sock: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// A pod in the node's network namespace (`hostNetwork: true`).
pub fn sandbox_config(name: &str, namespace: &str) -> PodSandboxConfig {
    let mut c = pod_network_sandbox_config(name, namespace);
    if let Some(ns) = c
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.network = NamespaceMode::Node as i32;
    }
    c
}

/// A pod with a network namespace of its own, set up by CNI.
pub fn pod_network_sandbox_config(name: &str, namespace: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: namespace.into(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container running `sh -c cmd`.
pub fn container_config(name: &str, cmd: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// What `cmd` prints in the container (ExecSync), stdout then stderr.
pub async fn exec_out(cri: &mut RuntimeServiceClient<Channel>, id: &str, cmd: &str) -> String {
    let r = cri
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            timeout: 60,
        })
        .await
        .unwrap()
        .into_inner();
    String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr)
}
