//! [`ProxyContentStore`]: a [`ContentStore`] served by another process over containerd's
//! content API (containerd's `content/proxy`). Its writer drives the bidirectional `Write`
//! stream as containerd's remote writer does: a stat names the ref and takes the lock, each
//! write carries the offset it expects, and the commit carries total, expected digest and
//! labels. Beyond containerd, a writer whose stream ended on an error (a refused commit, say)
//! opens a new one on its next call and checks that the ingest is where it left it. A proxy
//! sends no namespace (a raw remote ignores it); [`ProxyContentStore::in_namespace`] gives
//! one, for a remote that serves containerd's namespaced Content service.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use plinth_api::containerd::services::content::v1 as api;
use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::prost_types::FieldMask;
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::Check;
use super::remote::{CONTENT_SERVICE, MAX_MESSAGE_SIZE, Remote};
use crate::content::{ContentStore, ContentWriter, Digest, Info, Status, validate_stored_ref};
use crate::convert;
use crate::error::Error;
use crate::live::LiveStatus;
use crate::namespaces::{Labels, NAMESPACE_HEADER, validate_identifier};

/// The most bytes sent in one write message.
const WRITE_CHUNK: usize = 1 << 20;
/// How long closing a writer waits for the remote to release the ref.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The ref the init check asks about; any answer but Unimplemented proves the service.
const PROBE_REF: &str = "plinth-proxy-probe";

/// A content store in another process.
#[derive(Debug, Clone)]
pub struct ProxyContentStore {
    remote: Arc<Remote>,
    namespace: NamespaceHeader,
}

/// Puts the `containerd-namespace` header on every call, when there is a namespace.
#[derive(Debug, Clone, Default)]
struct NamespaceHeader(Option<MetadataValue<Ascii>>);

impl Interceptor for NamespaceHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(namespace) = &self.0 {
            request
                .metadata_mut()
                .insert(NAMESPACE_HEADER, namespace.clone());
        }
        Ok(request)
    }
}

impl ProxyContentStore {
    /// A proxy to the content store of the process listening on the socket `address`.
    /// Connects lazily; must be called inside a tokio runtime.
    ///
    /// # Errors
    /// Internal outside a tokio runtime.
    pub fn connect(address: &Path) -> Result<ProxyContentStore, Error> {
        Ok(ProxyContentStore::new(Remote::shared(address)?))
    }

    /// A proxy over an existing remote.
    pub fn new(remote: Arc<Remote>) -> ProxyContentStore {
        ProxyContentStore {
            remote,
            namespace: NamespaceHeader::default(),
        }
    }

    /// This proxy with every call made in `namespace` (the `containerd-namespace` header):
    /// for a remote that serves containerd's namespaced Content service (containerd's or
    /// plinthd's main socket) rather than a raw one.
    ///
    /// # Errors
    /// Invalid argument for a name that breaks containerd's naming rules.
    pub fn in_namespace(mut self, namespace: &str) -> Result<ProxyContentStore, Error> {
        validate_identifier("namespace", namespace)?;
        let value = namespace.parse().map_err(|_| {
            Error::invalid(format!(
                "namespace {namespace:?} cannot be sent as a gRPC header"
            ))
        })?;
        self.namespace = NamespaceHeader(Some(value));
        Ok(self)
    }

    /// The remote.
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    fn client(&self) -> ContentClient<InterceptedService<Channel, NamespaceHeader>> {
        ContentClient::with_interceptor(self.remote.channel(), self.namespace.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    fn fail(&self, what: &str, status: tonic::Status) -> Error {
        self.remote.error(&format!("content proxy: {what}"), status)
    }

    /// Checks that the remote answers and serves the content API.
    pub async fn check(&self) -> Check {
        let mut client = self.client();
        let call = client.status(api::StatusRequest {
            r#ref: PROBE_REF.to_string(),
        });
        self.remote
            .check_call("content proxy: check", CONTENT_SERVICE, call)
            .await
    }
}

fn status_from(status: &api::Status) -> Result<Status, Error> {
    Ok(Status {
        reference: status.r#ref.clone(),
        offset: status.offset,
        total: status.total,
        expected: convert::optional_digest(&status.expected)?,
        started_at: convert::time(status.started_at.as_ref()),
        updated_at: convert::time(status.updated_at.as_ref()),
    })
}

fn info_from(info: Option<api::Info>) -> Result<Info, Error> {
    let info = info.ok_or_else(|| Error::internal("remote content store answered without info"))?;
    convert::content_info_from(&info)
}

#[tonic::async_trait]
impl ContentStore for ProxyContentStore {
    async fn info(&self, digest: &Digest) -> Result<Info, Error> {
        let reply = self
            .client()
            .info(api::InfoRequest {
                digest: digest.to_string(),
            })
            .await
            .map_err(|s| self.fail("info", s))?;
        info_from(self.remote.ok(reply.into_inner()).info)
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let reply = self
            .client()
            .update(api::UpdateRequest {
                info: Some(convert::content_info(&info)),
                update_mask: Some(FieldMask {
                    paths: fieldpaths.to_vec(),
                }),
            })
            .await
            .map_err(|s| self.fail("update", s))?;
        info_from(self.remote.ok(reply.into_inner()).info)
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let mut stream = self
            .client()
            .list(api::ListContentRequest {
                filters: filters.to_vec(),
            })
            .await
            .map_err(|s| self.fail("walk", s))?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(batch) = stream.message().await.map_err(|s| self.fail("walk", s))? {
            for info in &batch.info {
                infos.push(convert::content_info_from(info)?);
            }
        }
        infos.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(self.remote.ok(infos))
    }

    async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        self.client()
            .delete(api::DeleteContentRequest {
                digest: digest.to_string(),
            })
            .await
            .map_err(|s| self.fail("delete", s))?;
        self.remote.ok(());
        Ok(())
    }

    async fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        let start = i64::try_from(offset)
            .map_err(|_| Error::invalid(format!("read offset {offset} out of range")))?;
        if length == 0 {
            // On the wire, size 0 means "to the end": check the range, read nothing.
            let info = self.info(digest).await?;
            if start > info.size {
                return Err(Error::invalid(format!(
                    "read offset {start} out of range 0..={}",
                    info.size
                )));
            }
            return Ok(Vec::new());
        }
        // A length past what an i64 can end at reads to the end.
        let size = i64::try_from(length)
            .ok()
            .filter(|size| start.checked_add(*size).is_some())
            .unwrap_or(0);
        let mut stream = self
            .client()
            .read(api::ReadContentRequest {
                digest: digest.to_string(),
                offset: start,
                size,
            })
            .await
            .map_err(|s| self.fail("read", s))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(part) = stream.message().await.map_err(|s| self.fail("read", s))? {
            let expected = start + i64::try_from(data.len()).unwrap_or(i64::MAX);
            if part.offset != expected {
                return Err(Error::internal(format!(
                    "remote content store sent bytes at offset {}, expected {expected}",
                    part.offset
                )));
            }
            data.extend_from_slice(&part.data);
        }
        data.truncate(length);
        Ok(self.remote.ok(data))
    }

    async fn status(&self, reference: &str) -> Result<Status, Error> {
        validate_stored_ref(reference)?;
        let reply = self
            .client()
            .status(api::StatusRequest {
                r#ref: reference.to_string(),
            })
            .await
            .map_err(|s| self.fail("status", s))?;
        let status = self
            .remote
            .ok(reply.into_inner())
            .status
            .ok_or_else(|| Error::internal("remote content store answered without status"))?;
        status_from(&status)
    }

    async fn list_statuses(&self, filters: &[String]) -> Result<Vec<Status>, Error> {
        let reply = self
            .client()
            .list_statuses(api::ListStatusesRequest {
                filters: filters.to_vec(),
            })
            .await
            .map_err(|s| self.fail("list statuses", s))?;
        let mut statuses = self
            .remote
            .ok(reply.into_inner())
            .statuses
            .iter()
            .map(status_from)
            .collect::<Result<Vec<_>, _>>()?;
        statuses.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(statuses)
    }

    async fn abort(&self, reference: &str) -> Result<(), Error> {
        validate_stored_ref(reference)?;
        self.client()
            .abort(api::AbortRequest {
                r#ref: reference.to_string(),
            })
            .await
            .map_err(|s| self.fail("abort", s))?;
        self.remote.ok(());
        Ok(())
    }

    async fn writer(
        &self,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Box<dyn ContentWriter>, Error> {
        validate_stored_ref(reference)?;
        let writer = ProxyWriter {
            store: self.clone(),
            reference: reference.to_string(),
            expected,
            digest: Mutex::new(Digest::of(b"")),
            state: tokio::sync::Mutex::new(WriterState {
                stream: None,
                offset: 0,
                total,
                started_at: SystemTime::UNIX_EPOCH,
                updated_at: SystemTime::UNIX_EPOCH,
                committed: false,
            }),
        };
        writer.open_stream().await?;
        Ok(Box::new(writer))
    }
}

impl LiveStatus for ProxyContentStore {
    fn exports(&self) -> BTreeMap<String, String> {
        super::snapshotter::live_exports(&self.remote)
    }

    fn unavailable(&self) -> Option<String> {
        self.remote.health().down()
    }
}

/// One open `Write` stream.
struct WriteStream {
    requests: mpsc::Sender<api::WriteContentRequest>,
    responses: tonic::Streaming<api::WriteContentResponse>,
}

struct WriterState {
    /// The open stream; `None` before the first call and after an error ended it.
    stream: Option<WriteStream>,
    /// Bytes written, as the remote confirmed.
    offset: i64,
    total: i64,
    started_at: SystemTime,
    updated_at: SystemTime,
    committed: bool,
}

/// A writer on a remote ingest: holds the remote's lock while its stream is open.
struct ProxyWriter {
    store: ProxyContentStore,
    reference: String,
    expected: Option<Digest>,
    /// The digest of the bytes written, as the remote last reported it.
    digest: Mutex<Digest>,
    state: tokio::sync::Mutex<WriterState>,
}

impl ProxyWriter {
    fn fail(&self, status: tonic::Status) -> Error {
        self.store
            .fail(&format!("writing {:?}", self.reference), status)
    }

    /// Takes in what a reply says.
    fn observe(
        &self,
        state: &mut WriterState,
        reply: &api::WriteContentResponse,
    ) -> Result<(), Error> {
        state.offset = reply.offset;
        state.started_at = convert::time(reply.started_at.as_ref());
        state.updated_at = convert::time(reply.updated_at.as_ref());
        if !reply.digest.is_empty() {
            let digest = Digest::parse(&reply.digest)?;
            *self.digest.lock().unwrap_or_else(PoisonError::into_inner) = digest;
        }
        Ok(())
    }

    /// Opens a stream with a stat naming the ref (which takes the remote's lock).
    async fn open_stream(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        let first = self.stat_request(state.total);
        let (stream, reply) = self.start(first).await?;
        self.observe(&mut state, &reply)?;
        state.stream = Some(stream);
        Ok(())
    }

    /// The first message of a stream: a stat naming the ref, with total and expected digest.
    fn stat_request(&self, total: i64) -> api::WriteContentRequest {
        api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: self.reference.clone(),
            total,
            expected: self
                .expected
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    async fn start(
        &self,
        first: api::WriteContentRequest,
    ) -> Result<(WriteStream, api::WriteContentResponse), Error> {
        let (requests, receiver) = mpsc::channel(2);
        // Queued before the call: a server may send its headers only with the first reply.
        requests
            .send(first)
            .await
            .map_err(|_| Error::internal("write stream closed before it opened"))?;
        let response = self
            .store
            .client()
            .write(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .map_err(|s| self.fail(s))?;
        let mut stream = WriteStream {
            requests,
            responses: response.into_inner(),
        };
        let reply = self.next_reply(&mut stream).await?;
        Ok((stream, reply))
    }

    async fn next_reply(
        &self,
        stream: &mut WriteStream,
    ) -> Result<api::WriteContentResponse, Error> {
        match stream.responses.message().await {
            Ok(Some(reply)) => Ok(self.store.remote.ok(reply)),
            Ok(None) => Err(Error::unavailable(format!(
                "content proxy: writing {:?}: the remote ended the write stream without an answer",
                self.reference
            ))),
            Err(status) => Err(self.fail(status)),
        }
    }

    /// Sends one request and waits for its reply, opening a new stream first if the last
    /// one ended. A new stream must find the ingest at the offset this writer reached.
    async fn round_trip(
        &self,
        state: &mut WriterState,
        request: api::WriteContentRequest,
    ) -> Result<api::WriteContentResponse, Error> {
        if state.stream.is_none() {
            let (stream, reply) = self.start(self.stat_request(state.total)).await?;
            if reply.offset != state.offset {
                return Err(Error::failed_precondition(format!(
                    "content proxy: ingest {:?} is at offset {} on the remote, but this writer reached {}: open a new writer",
                    self.reference, reply.offset, state.offset
                )));
            }
            self.observe(state, &reply)?;
            state.stream = Some(stream);
        }
        let Some(stream) = state.stream.as_mut() else {
            return Err(Error::internal("write stream missing"));
        };
        let sent = stream.requests.send(request).await;
        let result = match sent {
            Ok(()) => self.next_reply(stream).await,
            // The request side is gone: the stream ended; its status says why.
            Err(_) => match self.next_reply(stream).await {
                Err(error) => Err(error),
                Ok(_) => Err(Error::unavailable(format!(
                    "content proxy: writing {:?}: the write stream ended",
                    self.reference
                ))),
            },
        };
        match result {
            Ok(reply) => {
                self.observe(state, &reply)?;
                Ok(reply)
            }
            Err(error) => {
                // An error ends a gRPC stream; the next call opens a new one.
                state.stream = None;
                Err(error)
            }
        }
    }

    fn refuse_after_commit(&self, state: &WriterState, what: &str) -> Result<(), Error> {
        if state.committed {
            return Err(Error::failed_precondition(format!(
                "cannot {what} ingest {:?}: it is committed",
                self.reference
            )));
        }
        Ok(())
    }

    /// Ends the stream and waits until the remote has released the ref.
    async fn finish(stream: Option<WriteStream>) {
        let Some(WriteStream {
            requests,
            mut responses,
        }) = stream
        else {
            return;
        };
        drop(requests);
        let drain = async { while let Ok(Some(_)) = responses.message().await {} };
        if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
            tracing::warn!(
                "content proxy: the remote did not end a write stream within {CLOSE_TIMEOUT:?}"
            );
        }
    }
}

#[tonic::async_trait]
impl ContentWriter for ProxyWriter {
    async fn status(&self) -> Result<Status, Error> {
        let mut state = self.state.lock().await;
        self.refuse_after_commit(&state, "stat")?;
        let reply = self
            .round_trip(
                &mut state,
                api::WriteContentRequest {
                    action: api::WriteAction::Stat as i32,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Status {
            reference: self.reference.clone(),
            offset: reply.offset,
            total: reply.total,
            expected: self.expected.clone(),
            started_at: state.started_at,
            updated_at: state.updated_at,
        })
    }

    fn digest(&self) -> Digest {
        self.digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        self.write_all(&mut state, data).await
    }

    async fn truncate(&mut self, size: i64) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        self.refuse_after_commit(&state, "truncate")?;
        if size != 0 {
            return Err(Error::invalid(format!(
                "truncate to {size}: only truncating to 0 is supported"
            )));
        }
        // Offset 0 on a non-empty ingest truncates it (containerd's service).
        self.round_trip(
            &mut state,
            api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                offset: 0,
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }

    async fn commit(
        &mut self,
        size: i64,
        expected: Option<Digest>,
        labels: Labels,
    ) -> Result<Digest, Error> {
        let mut state = self.state.lock().await;
        self.refuse_after_commit(&state, "commit")?;
        let offset = state.offset;
        let reply = self
            .round_trip(
                &mut state,
                api::WriteContentRequest {
                    action: api::WriteAction::Commit as i32,
                    total: size,
                    offset,
                    expected: expected
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    labels: labels.into_iter().collect(),
                    ..Default::default()
                },
            )
            .await?;
        let digest = Digest::parse(&reply.digest)?;
        if let Some(wanted) = &expected {
            if &digest != wanted {
                return Err(Error::failed_precondition(format!(
                    "remote committed {digest}, expected {wanted}"
                )));
            }
        }
        state.committed = true;
        // The remote releases the ref when the stream ends.
        ProxyWriter::finish(state.stream.take()).await;
        Ok(digest)
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        let stream = self.state.into_inner().stream;
        ProxyWriter::finish(stream).await;
        Ok(())
    }
}

impl ProxyWriter {
    async fn write_all(&self, state: &mut WriterState, data: &[u8]) -> Result<(), Error> {
        self.refuse_after_commit(state, "write to")?;
        for chunk in data.chunks(WRITE_CHUNK) {
            let offset = state.offset;
            let reply = self
                .round_trip(
                    state,
                    api::WriteContentRequest {
                        action: api::WriteAction::Write as i32,
                        offset,
                        data: chunk.to_vec(),
                        ..Default::default()
                    },
                )
                .await?;
            let wanted = offset + i64::try_from(chunk.len()).unwrap_or(i64::MAX);
            if reply.offset != wanted {
                return Err(Error::internal(format!(
                    "content proxy: writing {:?}: the remote is at offset {} after a write, expected {wanted}",
                    self.reference, reply.offset
                )));
            }
        }
        Ok(())
    }
}
