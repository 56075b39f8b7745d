//! The kubelet's PodResources API (`v1.PodResourcesLister/List` on
//! `/var/lib/kubelet/pod-resources/kubelet.sock`): which devices the
//! kubelet's device plugins allocated to a pod's containers.
//!
//! A confidential VM cannot hot-plug PCI devices, so when a pod sandbox
//! starts the shim asks the kubelet for every device allocated to any
//! container of the pod and cold-plugs them all. Each allocation becomes
//! the CDI name `<resource_name>=<device_id>` (e.g. `nvidia.com/pgpu=12`,
//! as NVIDIA's sandbox device plugin publishes its CDI specs), resolved with
//! the node's CDI specs like `cdi.k8s.io/*` annotations.
//!
//! The messages follow `k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`
//! (only the fields Cocoon reads).

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Endpoint, Uri};

/// `ListPodResourcesRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

/// `ListPodResourcesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    /// Every pod of the node.
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

/// `PodResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Pod namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Its containers.
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

/// `ContainerResources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    /// Container name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Devices allocated by device plugins.
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
}

/// `ContainerDevices`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    /// Extended resource name, e.g. `nvidia.com/pgpu`.
    #[prost(string, tag = "1")]
    pub resource_name: String,
    /// Device IDs the plugin reported.
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
}

/// The gRPC method path.
pub const LIST_PATH: &str = "/v1.PodResourcesLister/List";

/// CDI names of every device allocated to any container of the pod,
/// sorted, without duplicates.
pub fn cdi_names(list: &ListPodResourcesResponse, namespace: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = list
        .pod_resources
        .iter()
        .filter(|p| p.namespace == namespace && p.name == name)
        .flat_map(|p| &p.containers)
        .flat_map(|c| &c.devices)
        .flat_map(|d| {
            d.device_ids
                .iter()
                .map(move |id| format!("{}={id}", d.resource_name))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Asks the kubelet for the devices of pod `namespace/name`.
pub async fn pod_devices(
    socket: &Path,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let sock = socket.to_path_buf();
    let call = async {
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| e.to_string())?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| e.to_string())?;
        let codec =
            tonic_prost::ProstCodec::<ListPodResourcesRequest, ListPodResourcesResponse>::default();
        let resp = grpc
            .unary(
                tonic::Request::new(ListPodResourcesRequest {}),
                PathAndQuery::from_static(LIST_PATH),
                codec,
            )
            .await
            .map_err(|s| format!("List failed: {}", s.message()))?;
        Ok(cdi_names(&resp.into_inner(), namespace, name))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_become_cdi_names_of_the_pod_only() {
        let dev = |r: &str, ids: &[&str]| ContainerDevices {
            resource_name: r.into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let list = ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "train".into(),
                    namespace: "ml".into(),
                    containers: vec![
                        ContainerResources {
                            name: "a".into(),
                            devices: vec![dev("nvidia.com/pgpu", &["12", "13"])],
                        },
                        ContainerResources {
                            name: "b".into(),
                            devices: vec![
                                dev("nvidia.com/pgpu", &["12"]),
                                dev("nvidia.com/nvswitch", &["20"]),
                            ],
                        },
                    ],
                },
                PodResources {
                    name: "train".into(),
                    namespace: "other".into(),
                    containers: vec![ContainerResources {
                        name: "a".into(),
                        devices: vec![dev("nvidia.com/pgpu", &["14"])],
                    }],
                },
            ],
        };
        assert_eq!(
            cdi_names(&list, "ml", "train"),
            [
                "nvidia.com/nvswitch=20",
                "nvidia.com/pgpu=12",
                "nvidia.com/pgpu=13"
            ]
        );
        assert!(cdi_names(&list, "ml", "nope").is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_kubelet_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let not_a_socket = d.path().join("kubelet.sock");
        std::fs::write(&not_a_socket, "").unwrap();
        let e = pod_devices(&not_a_socket, "ns", "p", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.starts_with("cannot connect"), "{e}");
        // A listener that never answers: bounded by the timeout.
        let silent = d.path().join("silent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&silent).unwrap();
        let e = pod_devices(&silent, "ns", "p", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            e.contains("within 1 s") || e.starts_with("cannot connect"),
            "{e}"
        );
    }
}
