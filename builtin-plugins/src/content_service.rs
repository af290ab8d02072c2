//! `io.containerd.grpc.v1.content`: containerd's Content service over the metadata plugin's
//! namespaced content store, including the bidirectional Write stream.

use std::pin::Pin;
use std::sync::Arc;

use plinth_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use plinth_api::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, InfoRequest, InfoResponse, ListContentRequest,
    ListContentResponse, ListStatusesRequest, ListStatusesResponse, ReadContentRequest,
    ReadContentResponse, StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use plinth_core::registration::{ConfigViolation, ValidateConfig};
#[cfg(feature = "content-service")]
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_stream::Stream;

use crate::content::{ContentStore, ContentWriter};
use crate::convert;
use crate::error::Error;
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces::{self, NamespacedStores};

/// Bytes per `Read` reply: small enough that the client takes in the first replies while
/// the next are read and hashed, and that the last one, held until the whole blob has
/// hashed to its digest, goes out soon after; 1 MiB replies (containerd's size) had the
/// whole reads' p99 40 % higher under load (BENCHMARKS.md, "Load").
const READ_CHUNK: usize = 128 << 10;

/// The error for a blob whose bytes hash to `actual`, not to its digest.
fn corrupt_blob(digest: &crate::content::Digest, actual: &str) -> Error {
    Error::data_loss(format!(
        "blob {digest} is corrupt: its bytes hash to {actual}; remove it (ctr content rm {digest}) and fetch it again"
    ))
}

/// The error for a blob whose file ended at `offset`, before its recorded size `size`.
fn short_blob(digest: &crate::content::Digest, offset: i64, size: i64) -> Error {
    Error::data_loss(format!(
        "blob {digest} is corrupt: its file ends after {offset} of its {size} bytes; remove it (ctr content rm {digest}) and fetch it again"
    ))
}
/// Infos per `List` reply.
const LIST_BATCH: usize = 100;

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[derive(Clone)]
struct Service {
    stores: Arc<dyn NamespacedStores>,
    /// Serving raw (plinthd as a proxy target): the namespace header is ignored and the
    /// stores are asked with an empty namespace.
    raw: bool,
    /// `write_idle_timeout` in milliseconds (0: none); a reload changes it in place.
    idle_ms: Arc<AtomicU64>,
}

/// The plugin's config section, `[plugins."io.containerd.grpc.v1.content"]` (plinthd's own
/// key; containerd's content service has none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct ContentServiceConfig {
    /// How long a Write stream may stay silent (no message from its client) before the
    /// daemon ends it with DeadlineExceeded: its ref's lock is released and what was written
    /// is kept, so the same ref resumes it. A Go-style duration; `"0"` waits for ever. A
    /// live reload changes it in place.
    pub(crate) write_idle_timeout: String,
}

/// The idle time-out of a Write stream when none is configured.
const DEFAULT_WRITE_IDLE_TIMEOUT: &str = "10m";

impl Default for ContentServiceConfig {
    fn default() -> Self {
        ContentServiceConfig {
            write_idle_timeout: DEFAULT_WRITE_IDLE_TIMEOUT.to_string(),
        }
    }
}

impl ContentServiceConfig {
    /// The time-out in milliseconds, 0 for none.
    fn idle_ms(&self) -> Result<u64, String> {
        let limit = plinth_core::config::parse_duration(&self.write_idle_timeout)?;
        Ok(u64::try_from(limit.as_millis()).unwrap_or(u64::MAX))
    }
}

impl ValidateConfig for ContentServiceConfig {
    fn validate(&self) -> Result<(), ConfigViolation> {
        self.idle_ms()
            .map(|_| ())
            .map_err(|message| ConfigViolation::new("write_idle_timeout", message))
    }
}

/// The time-out of a raw server's Write streams (the proxy target has no config section).
#[cfg(feature = "proxy")]
fn default_idle_ms() -> Arc<AtomicU64> {
    let ms = ContentServiceConfig::default().idle_ms().unwrap_or(0);
    Arc::new(AtomicU64::new(ms))
}

impl Service {
    fn store<T>(&self, request: &tonic::Request<T>) -> Result<Arc<dyn ContentStore>, Error> {
        if self.raw {
            return self.stores.clone().content("");
        }
        let namespace = namespaces::from_request(request)?;
        let lease = crate::leases::from_request(request)?;
        self.stores
            .clone()
            .leased_content(&namespace, lease.as_deref())
    }
}

/// containerd's Content service over `stores` without namespaces: every request, whatever
/// its `containerd-namespace` header, reaches `stores.content("")`. For serving a store raw.
#[cfg(feature = "proxy")]
pub(crate) fn raw_server(stores: Arc<dyn NamespacedStores>) -> ContentServer<impl Content> {
    ContentServer::new(Service {
        stores,
        raw: true,
        idle_ms: default_idle_ms(),
    })
}

/// Reads the part of a `Read` that starts at `offset` (at most [`READ_CHUNK`] bytes, never
/// past `end`); a blob whose file ends early is corrupt.
async fn read_part(
    store: &dyn ContentStore,
    digest: &crate::content::Digest,
    offset: i64,
    end: i64,
) -> Result<Vec<u8>, Error> {
    let length = usize::try_from(end - offset)
        .unwrap_or(READ_CHUNK)
        .min(READ_CHUNK);
    let data = store
        .read_opened_at(digest, u64::try_from(offset).unwrap_or(0), length)
        .await?;
    if data.is_empty() {
        return Err(short_blob(digest, offset, end));
    }
    Ok(data)
}

/// How a `Read` of a whole blob checks the bytes it sends.
enum Check {
    /// A partial read: not checked.
    None,
    /// Against the CRC-32 the store recorded at commit (the second field).
    Crc32(crc32fast::Hasher, u32),
    /// Hashed to the digest: the store recorded no CRC-32.
    Digest(Sha256),
}

impl Check {
    fn update(&mut self, data: &[u8]) {
        match self {
            Check::None => {}
            Check::Crc32(hasher, _) => hasher.update(data),
            Check::Digest(hasher) => hasher.update(data),
        }
    }

    /// Whether the bytes read (`end` of them) were the blob's. When their CRC-32 is not the
    /// recorded one, the bytes or the record changed since the commit, and the digest
    /// decides: the blob is read again and hashed, and it is good only if it hashes to its
    /// digest and its bytes are still the ones sent (the same CRC-32 as the first time).
    async fn finish(
        self,
        store: &dyn ContentStore,
        digest: &crate::content::Digest,
        end: i64,
    ) -> Result<(), Error> {
        let actual = match self {
            Check::None => return Ok(()),
            Check::Crc32(hasher, recorded) => {
                let sent = hasher.finalize();
                if sent == recorded {
                    return Ok(());
                }
                let mut again = (crc32fast::Hasher::new(), Sha256::new());
                let mut offset = 0;
                while offset < end {
                    let data = read_part(store, digest, offset, end).await?;
                    again.0.update(&data);
                    again.1.update(&data);
                    offset += i64::try_from(data.len()).unwrap_or(0);
                }
                let actual = format!("sha256:{:x}", again.1.finalize());
                if again.0.finalize() != sent {
                    return Err(Error::data_loss(format!(
                        "blob {digest} changed while it was read; read it again, and if it fails again run plinthctl content verify {digest}"
                    )));
                }
                if actual == digest.as_str() {
                    tracing::warn!(%digest, "the blob's recorded CRC-32 is not its bytes'; the blob hashes to its digest and is served");
                }
                actual
            }
            Check::Digest(hasher) => format!("sha256:{:x}", hasher.finalize()),
        };
        if actual == digest.as_str() {
            Ok(())
        } else {
            Err(corrupt_blob(digest, &actual))
        }
    }
}

/// Sends items through a channel-backed stream.
fn channel_stream<T: Send + 'static>() -> (
    tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    BoxStream<T>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    (
        sender,
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)),
    )
}

#[tonic::async_trait]
impl Content for Service {
    async fn info(&self, request: tonic::Request<InfoRequest>) -> Reply<InfoResponse> {
        let store = self.store(&request)?;
        let digest = convert::digest(&request.get_ref().digest)?;
        let info = store.info(&digest).await?;
        Ok(tonic::Response::new(InfoResponse {
            info: Some(convert::content_info(&info)),
        }))
    }

    async fn update(&self, request: tonic::Request<UpdateRequest>) -> Reply<UpdateResponse> {
        let store = self.store(&request)?;
        let request = request.into_inner();
        let info = request
            .info
            .ok_or_else(|| Error::invalid("update needs info"))?;
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = store
            .update(convert::content_info_from(&info)?, &paths)
            .await?;
        Ok(tonic::Response::new(UpdateResponse {
            info: Some(convert::content_info(&updated)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(&self, request: tonic::Request<ListContentRequest>) -> Reply<Self::ListStream> {
        let store = self.store(&request)?;
        let infos = store.walk(&request.get_ref().filters).await?;
        let batches: Vec<Result<ListContentResponse, tonic::Status>> = infos
            .chunks(LIST_BATCH)
            .map(|chunk| {
                Ok(ListContentResponse {
                    info: chunk.iter().map(convert::content_info).collect(),
                })
            })
            .collect();
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, request: tonic::Request<DeleteContentRequest>) -> Reply<()> {
        let store = self.store(&request)?;
        let digest = convert::digest(&request.get_ref().digest)?;
        // The metadata store publishes /content/delete (in commit order); a raw store none.
        store.delete(&digest).await?;
        Ok(tonic::Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(&self, request: tonic::Request<ReadContentRequest>) -> Reply<Self::ReadStream> {
        let store = self.store(&request)?;
        let request = request.into_inner();
        let digest = convert::digest(&request.digest)?;
        let info = store.info(&digest).await?;
        if request.offset < 0 || request.offset > info.size {
            return Err(Error::invalid(format!(
                "read offset {} out of range 0..={}",
                request.offset, info.size
            ))
            .into());
        }
        if request.size < 0 {
            return Err(Error::invalid(format!("read size {} is negative", request.size)).into());
        }
        let end = if request.size == 0 {
            info.size
        } else {
            (request.offset + request.size).min(info.size)
        };
        let (sender, stream) = channel_stream();
        // A read of the whole blob is verified: its last part is sent only once every byte
        // checked out, so a client never receives a corrupt blob whole (it gets DataLoss
        // instead). A partial read cannot be checked and is served as stored.
        let mut check = if request.offset == 0 && end == info.size {
            match store.recorded_crc32(&digest).await {
                Some(recorded) => Check::Crc32(crc32fast::Hasher::new(), recorded),
                None => Check::Digest(Sha256::new()),
            }
        } else {
            Check::None
        };
        tokio::spawn(async move {
            let mut offset = request.offset;
            let mut held: Option<ReadContentResponse> = None;
            let send = async |message: Result<ReadContentResponse, tonic::Status>| {
                sender.send(message).await.is_ok()
            };
            while offset < end {
                let data = match read_part(&*store, &digest, offset, end).await {
                    Ok(data) => data,
                    Err(e) => {
                        let _ = send(Err(e.into())).await;
                        return;
                    }
                };
                check.update(&data);
                let n = i64::try_from(data.len()).unwrap_or(0);
                if let Some(previous) = held.take()
                    && !send(Ok(previous)).await
                {
                    return;
                }
                held = Some(ReadContentResponse { offset, data });
                offset += n;
            }
            if let Err(e) = check.finish(&*store, &digest, end).await {
                let _ = send(Err(e.into())).await;
                return;
            }
            if let Some(last) = held {
                let _ = send(Ok(last)).await;
            }
        });
        Ok(tonic::Response::new(stream))
    }

    async fn status(&self, request: tonic::Request<StatusRequest>) -> Reply<StatusResponse> {
        let store = self.store(&request)?;
        let status = store.status(&request.get_ref().r#ref).await?;
        Ok(tonic::Response::new(StatusResponse {
            status: Some(convert::content_status(&status)),
        }))
    }

    async fn list_statuses(
        &self,
        request: tonic::Request<ListStatusesRequest>,
    ) -> Reply<ListStatusesResponse> {
        let store = self.store(&request)?;
        let statuses = store.list_statuses(&request.get_ref().filters).await?;
        Ok(tonic::Response::new(ListStatusesResponse {
            statuses: statuses.iter().map(convert::content_status).collect(),
        }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        request: tonic::Request<tonic::Streaming<WriteContentRequest>>,
    ) -> Reply<Self::WriteStream> {
        let store = self.store(&request)?;
        let mut incoming = Incoming {
            stream: request.into_inner(),
            idle_ms: self.idle_ms.load(Ordering::Relaxed),
        };
        let (sender, stream) = channel_stream();
        tokio::spawn(async move {
            if let Err(status) = write_session(store, &mut incoming, &sender).await {
                if status.code() != tonic::Code::AlreadyExists {
                    tracing::debug!(error = %status.message(), "content write failed");
                }
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(tonic::Response::new(stream))
    }

    async fn abort(&self, request: tonic::Request<AbortRequest>) -> Reply<()> {
        let store = self.store(&request)?;
        store.abort(&request.get_ref().r#ref).await?;
        Ok(tonic::Response::new(()))
    }
}

/// A Write stream's messages, each awaited at most the idle time-out.
struct Incoming {
    stream: tonic::Streaming<WriteContentRequest>,
    /// 0: no time-out.
    idle_ms: u64,
}

impl Incoming {
    /// The next message; DeadlineExceeded when the client stays silent past the time-out.
    async fn message(
        &mut self,
        reference: &str,
    ) -> Result<Option<WriteContentRequest>, tonic::Status> {
        if self.idle_ms == 0 {
            return self.stream.message().await.map_err(too_large);
        }
        let limit = std::time::Duration::from_millis(self.idle_ms);
        match tokio::time::timeout(limit, self.stream.message()).await {
            Ok(next) => next.map_err(too_large),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "write of {reference:?}: no message for {limit:?} (write_idle_timeout of \
                 [plugins.\"io.containerd.grpc.v1.content\"]); what was written is kept: \
                 write again with the same ref to resume"
            ))),
        }
    }
}

/// tonic's refusal of a message over the size limit (OutOfRange) as grpc-go's, which
/// containerd's clients know: ResourceExhausted.
fn too_large(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        tonic::Status::resource_exhausted(format!(
            "{}: raise [grpc] max_recv_message_size, or send smaller messages",
            status.message()
        ))
    } else {
        status
    }
}

/// One Write stream, as containerd's service runs it: the first message names the ref and
/// takes the lock; each message may stat, write at the current offset (offset 0 on a
/// non-empty ingest truncates it) or commit; every reply carries offset, total, times and the
/// digest so far. The lock is released when the stream ends, whatever happened.
async fn write_session(
    store: Arc<dyn ContentStore>,
    incoming: &mut Incoming,
    sender: &tokio::sync::mpsc::Sender<Result<WriteContentResponse, tonic::Status>>,
) -> Result<(), tonic::Status> {
    let Some(mut request) = incoming.message("").await? else {
        return Ok(());
    };
    if request.r#ref.is_empty() {
        return Err(Error::invalid("first message must have a reference").into());
    }
    let reference = request.r#ref.clone();
    let mut total = request.total;
    let mut expected = convert::optional_digest(&request.expected)?;
    let mut writer: Box<dyn ContentWriter> =
        store.writer(&reference, total, expected.clone()).await?;
    let mut abort_after_close = false;
    let result = async {
        loop {
            let action = WriteAction::try_from(request.action)
                .map_err(|_| Error::invalid(format!("unknown write action {}", request.action)))?;
            if let Some(wanted) = convert::optional_digest(&request.expected)? {
                if store.info(&wanted).await.is_ok() {
                    // As containerd: the ingest is removed, once the writer is closed.
                    abort_after_close = true;
                    return Err(Error::already_exists(format!(
                        "blob with expected digest {wanted} exists"
                    ))
                    .into());
                }
                expected = Some(wanted);
            }
            if request.total > 0 {
                total = request.total;
            }
            let mut status = writer.status().await?;
            if matches!(action, WriteAction::Write | WriteAction::Commit) {
                if request.offset > 0 && request.offset != status.offset {
                    return Err(tonic::Status::out_of_range(format!(
                        "write @{} must occur at current offset {}",
                        request.offset, status.offset
                    )));
                }
                if request.offset == 0 && status.offset > 0 {
                    writer.truncate(0).await?;
                }
                let written = i64::try_from(request.data.len()).unwrap_or(0);
                if written > 0 {
                    writer
                        .write_owned(std::mem::take(&mut request.data))
                        .await?;
                }
                if action == WriteAction::Commit {
                    writer
                        .commit(total, expected.clone(), convert::labels(&request.labels))
                        .await?;
                }
                status = match writer.status().await {
                    Ok(status) => status,
                    // After a commit the ingest is gone; report what was committed.
                    Err(_) if action == WriteAction::Commit => {
                        let size = total.max(status.offset + written);
                        crate::content::Status {
                            offset: size,
                            ..status
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
            }
            let reply = WriteContentResponse {
                action: action as i32,
                started_at: Some(convert::timestamp(status.started_at)),
                updated_at: Some(convert::timestamp(status.updated_at)),
                offset: status.offset,
                total,
                digest: writer.digest().to_string(),
            };
            if sender.send(Ok(reply)).await.is_err() {
                return Ok(());
            }
            match incoming.message(&reference).await? {
                Some(next) => request = next,
                None => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = writer.close().await {
        tracing::debug!(error = %e, "closing content writer");
    }
    if abort_after_close {
        if let Err(e) = store.abort(&reference).await {
            tracing::debug!(error = %e, "removing the ingest of an existing blob");
        }
    }
    result
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, ContentServer::new(self.clone()), limits);
    }
}

#[cfg(feature = "content-service")]
fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<ContentServiceConfig>()?;
    let stores: Arc<dyn NamespacedStores> = ctx.get_single(types::METADATA)?;
    let idle_ms = Arc::new(AtomicU64::new(config.idle_ms().map_err(InitError::msg)?));
    let service = Arc::new(Service {
        stores,
        raw: false,
        idle_ms: idle_ms.clone(),
    });
    Ok(Instance::new(service as Arc<dyn GrpcService>).with(idle_ms))
}

/// Takes a new `write_idle_timeout` in place: Write streams opened from then on get it.
#[cfg(feature = "content-service")]
fn reconfigure(
    instance: &Instance,
    config: &plinth_core::registration::AnyConfig,
) -> Result<(), plinth_core::init::BoxError> {
    let config = config
        .downcast_ref::<ContentServiceConfig>()
        .ok_or("the content service was given another plugin's config")?;
    let idle_ms = instance
        .get::<AtomicU64>()
        .ok_or("the instance has no idle time-out")?;
    idle_ms.store(config.idle_ms()?, Ordering::Relaxed);
    Ok(())
}

#[cfg(feature = "content-service")]
register!(
    Registration::new(types::GRPC, "content", init)
        .requires(&[types::METADATA, types::EVENT])
        .validated_config::<ContentServiceConfig>()
        .reconfigure(reconfigure)
);

/// containerd's cross-namespace content cases through this service: the namespaced Content
/// service over the metadata plugin (on a local store) served on a unix socket, each
/// namespace's store a gRPC client sending the `containerd-namespace` header.
#[cfg(all(
    test,
    feature = "proxy",
    feature = "metadata-redb",
    feature = "content-local"
))]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use tokio::sync::oneshot;

    use super::*;
    use crate::content::local::LocalStore;
    use crate::content::testsuite::{self, NamespaceViews};
    use crate::metadata::{Metadata, SharingPolicy};
    use crate::proxy::ProxyContentStore;

    /// Stops its server when dropped.
    struct ServerGuard(Option<oneshot::Sender<()>>);

    impl Drop for ServerGuard {
        fn drop(&mut self) {
            if let Some(stop) = self.0.take() {
                let _ = stop.send(());
            }
        }
    }

    /// Serves the Content service over a metadata database and a local store in `root`, on
    /// `<root>/content.sock`.
    fn serve(root: &Path, policy: SharingPolicy) -> Result<(PathBuf, ServerGuard), Error> {
        let local: Arc<dyn ContentStore> = Arc::new(LocalStore::open(&root.join("content"))?);
        let metadata =
            Metadata::open_with(&root.join("meta.db"), Some(local), BTreeMap::new(), policy)?;
        let idle_ms = ContentServiceConfig::default()
            .idle_ms()
            .map_err(Error::internal)?;
        let service = Service {
            stores: Arc::new(metadata),
            raw: false,
            idle_ms: Arc::new(AtomicU64::new(idle_ms)),
        };
        let mut routes = tonic::service::RoutesBuilder::default();
        service.register(&mut routes, MessageLimits::default());
        let socket = root.join("content.sock");
        let listener = tokio::net::UnixListener::bind(&socket)
            .map_err(|e| Error::internal(format!("binding {}: {e}", socket.display())))?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let result = tonic::transport::Server::builder()
                .add_routes(routes.routes())
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = result {
                panic!("content service: {error}");
            }
        });
        Ok((socket, ServerGuard(Some(stop))))
    }

    /// Each namespace's store: a client of the served service in that namespace. The server
    /// runs while the views live.
    fn served_views(root: &Path, policy: SharingPolicy) -> Result<NamespaceViews, Error> {
        let (socket, server) = serve(root, policy)?;
        Ok(Arc::new(move |namespace: &str| {
            let _running = &server;
            let client = ProxyContentStore::connect(&socket)?.in_namespace(namespace)?;
            Ok(Arc::new(client) as Arc<dyn ContentStore>)
        }))
    }

    /// A Read stream checks that its namespace holds the blob once, when it opens, as
    /// containerd checks a reader: a delete in the namespace while the stream is being read
    /// (the blob kept for another namespace) does not cut the stream short.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_checks_its_namespace_once_when_it_opens() {
        let root = tempfile::tempdir().unwrap();
        let (socket, _server) = serve(root.path(), SharingPolicy::Shared).unwrap();
        let in_namespace = |namespace: &str| {
            ProxyContentStore::connect(&socket)
                .unwrap()
                .in_namespace(namespace)
                .unwrap()
        };
        let (a, b) = (in_namespace("a"), in_namespace("b"));
        // Far more parts than the stream's window and queue hold before the client reads.
        let blob: Vec<u8> = (0..64 * READ_CHUNK).map(|i| (i % 251) as u8).collect();
        // (The proxy sends a blob in messages of 1 MiB.)
        let digest = testsuite::write_blob(&a, "blob-a", &blob, None).await;
        assert_eq!(
            testsuite::write_blob(&b, "blob-b", &blob, None).await,
            digest
        );

        let mut stream = open_read(&socket, "a", &digest, 0, 0).await;
        let mut read = stream.message().await.unwrap().expect("a first part").data;

        a.delete(&digest).await.unwrap();
        let gone = a.info(&digest).await.expect_err("deleted in namespace a");
        assert_eq!(gone.category, plinth_core::Category::NotFound);
        while let Some(part) = stream.message().await.expect("the rest of the blob") {
            read.extend_from_slice(&part.data);
        }
        assert!(read == blob, "read {} bytes, not the blob", read.len());
    }

    /// A `Read` stream of the served service, as a gRPC client such as `ctr` opens it.
    async fn open_read(
        socket: &Path,
        namespace: &str,
        digest: &crate::content::Digest,
        offset: i64,
        size: i64,
    ) -> tonic::Streaming<ReadContentResponse> {
        let remote = crate::proxy::remote::Remote::shared(socket).unwrap();
        let mut client =
            plinth_api::containerd::services::content::v1::content_client::ContentClient::new(
                remote.channel(),
            );
        let mut request = tonic::Request::new(ReadContentRequest {
            digest: digest.to_string(),
            offset,
            size,
        });
        request.metadata_mut().insert(
            crate::namespaces::NAMESPACE_HEADER,
            namespace.parse().unwrap(),
        );
        client.read(request).await.unwrap().into_inner()
    }

    /// The service served in `root`, a client of it in namespace `a`, and a blob of three
    /// and a bit `Read` parts written through that client.
    async fn served_blob(
        root: &Path,
    ) -> (
        PathBuf,
        ServerGuard,
        ProxyContentStore,
        Vec<u8>,
        crate::content::Digest,
    ) {
        let (socket, server) = serve(root, SharingPolicy::Shared).unwrap();
        let a = ProxyContentStore::connect(&socket)
            .unwrap()
            .in_namespace("a")
            .unwrap();
        let blob: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| (i % 253) as u8).collect();
        let digest = testsuite::write_blob(&a, "blob", &blob, None).await;
        (socket, server, a, blob, digest)
    }

    /// A `Read` of a range sends exactly its bytes, each part at the offset it says, and no
    /// byte past the range: a raw client sees every byte the service sends (the proxy's
    /// reader would cut an overlong answer to the length it asked for).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_of_a_range_sends_exactly_its_bytes() {
        let root = tempfile::tempdir().unwrap();
        let (socket, _server, _a, blob, digest) = served_blob(root.path()).await;
        let chunk = i64::try_from(READ_CHUNK).unwrap();
        let len = i64::try_from(blob.len()).unwrap();
        // Within a part, across parts, to the end, and a size past the end.
        for (offset, size) in [
            (10, 5),
            (chunk + 5, chunk),
            (chunk + 7, 0),
            (2 * chunk, 2 * chunk),
        ] {
            let mut stream = open_read(&socket, "a", &digest, offset, size).await;
            let mut read = Vec::new();
            while let Some(part) = stream.message().await.unwrap() {
                assert_eq!(part.offset, offset + i64::try_from(read.len()).unwrap());
                read.extend_from_slice(&part.data);
            }
            let end = if size == 0 {
                len
            } else {
                (offset + size).min(len)
            };
            let range = usize::try_from(offset).unwrap()..usize::try_from(end).unwrap();
            assert!(
                read == blob[range.clone()],
                "Read at {offset} of {size}: {} bytes, expected {range:?}",
                read.len()
            );
        }
    }

    use crate::content::local::CRC32_XATTR;

    fn set_crc32(path: &Path, crc32: u32) {
        rustix::fs::setxattr(
            path,
            CRC32_XATTR,
            &crc32.to_le_bytes(),
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }

    /// Rewrites the file in place (same inode, so its attributes stay).
    fn rewrite(path: &Path, bytes: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// A whole read is checked against the CRC-32 recorded at commit, and the digest decides
    /// when they disagree: a stale record over good bytes still serves the blob whole; a
    /// changed byte under a good record, or under none, is DataLoss naming what the bytes
    /// hash to, and never the whole blob.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_read_is_checked_by_the_recorded_crc32_and_the_digest_decides() {
        let root = tempfile::tempdir().unwrap();
        let (_socket, _server, a, blob, digest) = served_blob(root.path()).await;
        let path = root.path().join("content/blobs/sha256").join(digest.hex());
        let crc32 = crc32fast::hash(&blob);
        let whole = async || a.read_at(&digest, 0, blob.len()).await;
        assert!(whole().await.unwrap() == blob);
        // A store that keeps no record (here the client end of the proxy) says so, by the
        // trait's default: a made-up record would send every read of it through two passes.
        assert_eq!(a.recorded_crc32(&digest).await, None);

        set_crc32(&path, crc32 ^ 1);
        let mut raw = [0u8; 4];
        assert_eq!(
            rustix::fs::getxattr(&path, CRC32_XATTR, &mut raw).unwrap(),
            4
        );
        assert_eq!(u32::from_le_bytes(raw), crc32 ^ 1, "the record is stale");
        assert!(
            whole().await.expect("a stale record over good bytes") == blob,
            "a stale record changed the bytes served"
        );

        let mut flipped = blob.clone();
        flipped[2 * READ_CHUNK + 5] ^= 0x10;
        rewrite(&path, &flipped);
        let corrupt = format!(
            "blob {digest} is corrupt: its bytes hash to {}",
            crate::content::Digest::of(&flipped)
        );
        for record in [Some(crc32), None] {
            match record {
                Some(crc32) => set_crc32(&path, crc32),
                None => rustix::fs::removexattr(&path, CRC32_XATTR).unwrap(),
            }
            let error = whole()
                .await
                .expect_err("a changed byte is never served whole");
            assert_eq!(error.category, plinth_core::Category::DataLoss, "{error}");
            assert!(error.message.contains(&corrupt), "{error}");
        }
    }

    /// The metadata view passes its backend's record on, so that whole reads through the
    /// served service check the CRC-32 rather than hash every blob.
    #[tokio::test]
    async fn the_metadata_view_passes_the_recorded_crc32_on() {
        let root = tempfile::tempdir().unwrap();
        let local: Arc<dyn ContentStore> =
            Arc::new(LocalStore::open(&root.path().join("content")).unwrap());
        let metadata = Metadata::open_with(
            &root.path().join("meta.db"),
            Some(local),
            BTreeMap::new(),
            SharingPolicy::Shared,
        )
        .unwrap();
        let view = Arc::new(metadata).content("a").unwrap();
        let blob = b"recorded through the view".to_vec();
        let digest = testsuite::write_blob(view.as_ref(), "blob", &blob, None).await;
        assert_eq!(
            view.recorded_crc32(&digest).await,
            Some(crc32fast::hash(&blob))
        );
    }

    /// When the CRC-32 disagrees with the record, the blob is read again and hashed; if the
    /// bytes changed between the two reads, what was sent cannot be vouched for: DataLoss,
    /// even though the blob now hashes to its digest.
    #[tokio::test]
    async fn bytes_that_change_between_the_two_reads_are_data_loss() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(root.path()).unwrap();
        let blob = vec![7u8; READ_CHUNK + 3];
        let digest = testsuite::write_blob(&store, "blob", &blob, None).await;
        let path = root.path().join("blobs/sha256").join(digest.hex());
        let end = i64::try_from(blob.len()).unwrap();

        let mut sent = blob.clone();
        sent[1] = 8;
        let mut check = Check::Crc32(crc32fast::Hasher::new(), crc32fast::hash(&blob) ^ 1);
        check.update(&sent);
        let error = check
            .finish(&store, &digest, end)
            .await
            .expect_err("the bytes sent are not the blob's");
        assert_eq!(error.category, plinth_core::Category::DataLoss);
        assert!(
            error.message.contains("changed while it was read"),
            "{error}"
        );

        // The same bytes both times, and they hash to the digest: a stale record.
        let mut check = Check::Crc32(crc32fast::Hasher::new(), crc32fast::hash(&blob) ^ 1);
        check.update(&blob);
        check.finish(&store, &digest, end).await.unwrap();
        // The same bytes both times, and they do not: corrupt.
        let mut flipped = blob.clone();
        flipped[READ_CHUNK] = 9;
        rewrite(&path, &flipped);
        let mut check = Check::Crc32(crc32fast::Hasher::new(), crc32fast::hash(&blob));
        check.update(&flipped);
        let error = check.finish(&store, &digest, end).await.unwrap_err();
        assert!(error.message.contains("its bytes hash to"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shared_policy_cross_namespace_cases_pass_through_the_service() {
        testsuite::run_shared_policy(|root: PathBuf| async move {
            served_views(&root, SharingPolicy::Shared)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_isolated_policy_cross_namespace_cases_pass_through_the_service() {
        testsuite::run_isolated_policy(|root: PathBuf| async move {
            served_views(&root, SharingPolicy::Isolated)
        })
        .await;
    }
}
