//! The image of a container, from containerd's own API (gRPC on the socket
//! the shim was started with, `-address`): `Containers/Get` names the
//! image, `Images/Get` gives its target, and `Content/Read` the manifest
//! (through an index, the linux/amd64 one) and the layer blobs.
//!
//! The messages follow containerd's `api/services/{containers,images,
//! content}/v1` and `api/types/descriptor.proto` (only the fields Cocoon
//! reads); the namespace travels as the `containerd-namespace` header.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

/// `GetContainerRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    /// Container id.
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `GetContainerResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    /// The container.
    #[prost(message, optional, tag = "1")]
    pub container: Option<ContainerRecord>,
}

/// `Container` (id and image only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerRecord {
    /// Container id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The image's name in containerd's image store ("" without one).
    #[prost(string, tag = "3")]
    pub image: String,
}

/// `GetImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageRequest {
    /// Image name.
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `GetImageResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageResponse {
    /// The image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageRecord>,
}

/// `Image` (name and target).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageRecord {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its manifest or index.
    #[prost(message, optional, tag = "3")]
    pub target: Option<DescriptorRecord>,
}

/// `containerd.types.Descriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorRecord {
    /// Media type.
    #[prost(string, tag = "1")]
    pub media_type: String,
    /// Digest.
    #[prost(string, tag = "2")]
    pub digest: String,
    /// Size in bytes.
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `ReadContentRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadContentRequest {
    /// Blob digest.
    #[prost(string, tag = "1")]
    pub digest: String,
    /// Offset.
    #[prost(int64, tag = "2")]
    pub offset: i64,
    /// Bytes (0: to the end).
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `ReadContentResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadContentResponse {
    /// Offset of `data`.
    #[prost(int64, tag = "1")]
    pub offset: i64,
    /// Bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

const GET_CONTAINER: &str = "/containerd.services.containers.v1.Containers/Get";
const GET_IMAGE: &str = "/containerd.services.images.v1.Images/Get";
const READ_CONTENT: &str = "/containerd.services.content.v1.Content/Read";
/// The gRPC header carrying containerd's namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Largest manifest or index read.
const MAX_DOCUMENT: i64 = 4 << 20;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Blob digest (`sha256:...`).
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Media type.
    pub media_type: String,
}

/// A client of containerd's API in one namespace.
#[derive(Debug, Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
}

impl Containerd {
    /// Connects to containerd's socket `address` (lazily: the first call
    /// dials).
    pub fn connect(address: &str, namespace: &str) -> Result<Self, String> {
        let sock = address
            .strip_prefix("unix://")
            .unwrap_or(address)
            .to_string();
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }));
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
        })
    }

    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, String> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            NAMESPACE_HEADER,
            self.namespace
                .parse()
                .map_err(|_| format!("namespace {:?} is not a header value", self.namespace))?,
        );
        Ok(req)
    }

    async fn unary<Q, R>(&self, path: &'static str, msg: Q) -> Result<R, String>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| format!("cannot reach containerd: {e}"))?;
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        let resp = grpc
            .unary(self.request(msg)?, PathAndQuery::from_static(path), codec)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable => format!("cannot reach containerd: {}", s.message()),
                _ => s.message().to_string(),
            })?;
        Ok(resp.into_inner())
    }

    /// Streams blob `digest` (`size` bytes expected) into `tx`, chunk by
    /// chunk as containerd sends them; returns the byte count.
    pub async fn read_blob(
        &self,
        digest: &str,
        size: i64,
        tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>, String>>,
    ) -> Result<u64, String> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| format!("cannot reach containerd: {e}"))?;
        let codec = tonic_prost::ProstCodec::<ReadContentRequest, ReadContentResponse>::default();
        let req = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = grpc
            .server_streaming(
                self.request(req)?,
                PathAndQuery::from_static(READ_CONTENT),
                codec,
            )
            .await
            .map_err(|s| format!("read {digest}: {}", s.message()))?
            .into_inner();
        let mut got: u64 = 0;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| format!("read {digest}: {}", s.message()))?
        {
            if u64::try_from(chunk.offset).ok() != Some(got) {
                return Err(format!(
                    "read {digest}: chunk at {} after {got} bytes",
                    chunk.offset
                ));
            }
            got += chunk.data.len() as u64;
            if got > u64::try_from(size).unwrap_or(0) {
                return Err(format!(
                    "{digest} is larger than its descriptor's {size} bytes"
                ));
            }
            tx.send(Ok(chunk.data))
                .await
                .map_err(|_| format!("read {digest}: the reader stopped"))?;
        }
        Ok(got)
    }

    async fn document(&self, digest: &str, size: i64) -> Result<Vec<u8>, String> {
        if !(0..=MAX_DOCUMENT).contains(&size) {
            return Err(format!("{digest}: a manifest of {size} bytes"));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let collect = async move {
            let mut buf = Vec::new();
            while let Some(chunk) = rx.recv().await {
                buf.extend(chunk?);
            }
            Ok::<_, String>(buf)
        };
        let fetch = async move { self.read_blob(digest, size, &tx).await };
        let (fetched, buf) = tokio::join!(fetch, collect);
        fetched?;
        buf
    }

    /// The layers (bottom first) of the image container `id` was created
    /// from, and the image's name.
    pub async fn container_layers(&self, id: &str) -> Result<(String, Vec<Layer>), String> {
        let c: GetContainerResponse = self
            .unary(GET_CONTAINER, GetContainerRequest { id: id.to_string() })
            .await
            .map_err(|e| format!("container {id:?}: {e}"))?;
        let image = c.container.map(|c| c.image).unwrap_or_default();
        if image.is_empty() {
            return Err(format!("container {id:?} was not created from an image (e.g. `ctr run --rootfs`), so there are no layers to verify"));
        }
        let i: GetImageResponse = self
            .unary(
                GET_IMAGE,
                GetImageRequest {
                    name: image.clone(),
                },
            )
            .await
            .map_err(|e| format!("image {image:?}: {e}"))?;
        let mut target = i
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| format!("image {image:?} has no target"))?;
        for _ in 0..3 {
            let bytes = self.document(&target.digest, target.size).await?;
            if is_index(&target.media_type) {
                let index = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| format!("{}: {e}", target.digest))?;
                let d = cocoon_image::oci::pick_manifest(&index)
                    .map_err(|e| format!("image {image:?}: {e}"))?;
                target = DescriptorRecord {
                    media_type: d.media_type().to_string(),
                    digest: d.digest().to_string(),
                    size: i64::try_from(d.size()).unwrap_or(i64::MAX),
                };
                continue;
            }
            let m = ImageManifest::from_reader(&bytes[..])
                .map_err(|e| format!("{}: {e}", target.digest))?;
            let layers = m
                .layers()
                .iter()
                .map(|l| Layer {
                    digest: l.digest().to_string(),
                    size: l.size(),
                    media_type: l.media_type().to_string(),
                })
                .collect();
            return Ok((image, layers));
        }
        Err(format!("image {image:?}: indexes nested too deep"))
    }
}

/// Whether a media type is an index (OCI or Docker manifest list).
fn is_index(media_type: &str) -> bool {
    media_type == MediaType::ImageIndex.to_string()
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// A blocking reader of blob `layer`, streamed from containerd on
/// `handle`'s runtime while the reader consumes it (at most 16 chunks
/// buffered): the node converts a layer without a copy of its blob. A
/// transfer error, or a blob of another size than its descriptor's, is
/// the reader's error; the converter checks the digest.
pub fn stream_blob(
    api: &Containerd,
    layer: &Layer,
    handle: &tokio::runtime::Handle,
) -> impl std::io::Read + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let (api, layer) = (api.clone(), layer.clone());
    handle.spawn(async move {
        let size = i64::try_from(layer.size).unwrap_or(i64::MAX);
        let result = match api.read_blob(&layer.digest, size, &tx).await {
            Ok(got) if got == layer.size => return,
            Ok(got) => format!(
                "{} has {got} bytes; its descriptor says {}",
                layer.digest, layer.size
            ),
            Err(e) => e,
        };
        let _ = tx.send(Err(result)).await;
    });
    ChunkReader {
        rx,
        chunk: Vec::new(),
        at: 0,
    }
}

/// Reads the chunks of a channel as one stream (on a blocking thread).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => (self.chunk, self.at) = (chunk, 0),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_told_from_manifests() {
        assert!(is_index("application/vnd.oci.image.index.v1+json"));
        assert!(is_index(
            "application/vnd.docker.distribution.manifest.list.v2+json"
        ));
        assert!(!is_index("application/vnd.oci.image.manifest.v1+json"));
    }

    #[test]
    fn chunks_read_as_one_stream_and_an_error_ends_it() {
        use std::io::Read;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(Ok(b"hello ".to_vec())).unwrap();
        tx.blocking_send(Ok(Vec::new())).unwrap();
        tx.blocking_send(Ok(b"world".to_vec())).unwrap();
        drop(tx);
        let mut r = ChunkReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        let mut all = String::new();
        r.read_to_string(&mut all).unwrap();
        assert_eq!(all, "hello world");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(Ok(b"part".to_vec())).unwrap();
        tx.blocking_send(Err("sha256:ab has 4 bytes".into()))
            .unwrap();
        let mut r = ChunkReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("has 4 bytes"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_containerd_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let api = Containerd::connect(&d.path().join("none.sock").display().to_string(), "default")
            .unwrap();
        let e = api.container_layers("c1").await.unwrap_err();
        assert!(
            e.contains("c1") && e.contains("cannot reach containerd"),
            "{e}"
        );
    }
}
