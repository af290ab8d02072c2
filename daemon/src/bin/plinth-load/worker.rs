//! One client of a run: its connection, what it knows is in its namespace (the model), and
//! the operations, each checked against the model.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use plinth_api::containerd::services::events::v1::events_client::EventsClient;
use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use plinth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use plinth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest,
    Namespace,
};
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use plinth_api::prost_types::FieldMask;
use plinth_builtin_plugins::namespaces::NAMESPACE_HEADER;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::report::Stats;
use crate::rng::Rng;

mod records;

pub(crate) use records::ImageRecord;
use records::{MAX_IMAGES, Subscription};

/// Blobs a client keeps at most; past that an ingest becomes a delete.
const MAX_BLOBS: usize = 32;
/// Snapshot chains a client keeps at most, and their longest length.
const MAX_CHAINS: usize = 4;
const MAX_CHAIN: usize = 5;
/// The large blobs' message size.
const CHUNK: usize = 256 << 10;
/// Blobs every client ingests, reads and deletes in the shared namespace.
const SHARED_BLOBS: usize = 8;
/// containerd's label that keeps an object from its garbage collector.
const GC_ROOT: &str = "containerd.io/gc.root";
/// How long the daemon has to answer the call that tells an error from its death.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a resumed ingest waits for the daemon to release the dropped writer's lock.
const UNLOCK_WAIT: Duration = Duration::from_secs(10);

/// The operations of the mix (see [`MIX`]); `--begin-with` names them in kebab case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Op {
    Ingest,
    IngestLarge,
    Read,
    Info,
    List,
    Update,
    Delete,
    Snapshot,
    View,
    RemoveChain,
    ListSnapshots,
    Namespace,
    SharedIngest,
    SharedRead,
    SharedDelete,
    ImageCreate,
    ImageGet,
    ImageList,
    ImageUpdate,
    ImageDelete,
    Lease,
    Publish,
    Disconnect,
}

/// Each operation's weight in the mix; `Disconnect` last (only with `--disconnects`).
const MIX: &[(Op, usize)] = &[
    (Op::Ingest, 16),
    (Op::IngestLarge, 4),
    (Op::Read, 14),
    (Op::Info, 8),
    (Op::List, 5),
    (Op::Update, 7),
    (Op::Delete, 7),
    (Op::Snapshot, 14),
    (Op::View, 4),
    (Op::RemoveChain, 3),
    (Op::ListSnapshots, 4),
    (Op::Namespace, 4),
    (Op::SharedIngest, 4),
    (Op::SharedRead, 4),
    (Op::SharedDelete, 2),
    (Op::ImageCreate, 4),
    (Op::ImageGet, 4),
    (Op::ImageList, 2),
    (Op::ImageUpdate, 2),
    (Op::ImageDelete, 3),
    (Op::Lease, 2),
    (Op::Publish, 2),
    (Op::Disconnect, 3),
];

/// A committed blob as its client knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blob {
    /// Its size.
    pub(crate) size: u64,
    /// Its labels.
    pub(crate) labels: BTreeMap<String, String>,
}

/// What must be, and what may be, in one client's namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Model {
    /// The namespace.
    pub(crate) namespace: String,
    /// The snapshotter its snapshots are in.
    pub(crate) snapshotter: String,
    /// Blobs acknowledged as committed and not deleted.
    pub(crate) blobs: BTreeMap<String, Blob>,
    /// Blobs whose commit or delete was not answered: either way is right.
    pub(crate) uncertain_blobs: BTreeSet<String>,
    /// Blobs whose label update was not answered.
    pub(crate) uncertain_labels: BTreeSet<String>,
    /// Committed snapshots, each chain from its root.
    pub(crate) chains: Vec<Vec<String>>,
    /// Snapshots (active, view or committed) whose creation or removal was not answered.
    pub(crate) uncertain_snapshots: BTreeSet<String>,
    /// Images acknowledged as created (as last updated) and not deleted.
    #[serde(default)]
    pub(crate) images: BTreeMap<String, ImageRecord>,
    /// Images whose creation, update or deletion was not answered.
    #[serde(default)]
    pub(crate) uncertain_images: BTreeSet<String>,
}

/// Counters every client adds to, for the progress line.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Successful operations.
    pub(crate) ops: AtomicU64,
    /// Unexpected errors and wrong answers.
    pub(crate) bad: AtomicU64,
}

/// How a client behaves.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The daemon's socket.
    pub(crate) socket: PathBuf,
    /// Snapshotter of the snapshot operations.
    pub(crate) snapshotter: String,
    /// The shared namespace.
    pub(crate) shared: String,
    /// Whether to drop connections in the middle of calls.
    pub(crate) disconnects: bool,
    /// The time between a client's calls (`--rate`); none: at once.
    pub(crate) pace: Option<Duration>,
    /// How many clients share the rate: client `i` of `n` calls at `i / n` of the pace
    /// after the others' start, so that their calls do not arrive at the same moment.
    pub(crate) clients: usize,
}

/// One client.
pub(crate) struct Worker {
    index: usize,
    settings: Arc<Settings>,
    rng: Rng,
    own: AsciiMetadataValue,
    shared: AsciiMetadataValue,
    content: ContentClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    namespaces: NamespacesClient<Channel>,
    images: ImagesClient<Channel>,
    leases: LeasesClient<Channel>,
    events: EventsClient<Channel>,
    /// The client's subscription to its image creations ([`Worker::subscribe`]).
    subscription: Option<Subscription>,
    shared_blobs: Vec<(String, Vec<u8>)>,
    counter: u64,
    counters: Arc<Counters>,
    /// When the next call may start (`Settings::pace`).
    next_call: Instant,
    /// When the last call started (after its pacing wait).
    last_call: Instant,
    /// What must be in the client's namespace.
    pub(crate) model: Model,
    /// What the client counted.
    pub(crate) stats: Stats,
    /// The daemon went away (its socket refuses connections).
    pub(crate) gone: bool,
}

/// When client `index` of `clients` makes its first call if they all begin at `start` and
/// each calls every `pace`: its share of the pace later, so that together they call evenly
/// spaced (unpaced: at `start`).
fn phase(start: Instant, pace: Option<Duration>, index: usize, clients: usize) -> Instant {
    pace.map_or(start, |pace| {
        start + pace.mul_f64(index as f64 / clients.max(1) as f64)
    })
}

/// Client `index`'s generator in a run seeded with `seed`. Not `seed + index`: two runs
/// against one daemon with nearby seeds would then give some of their clients the same
/// blobs, which the daemon rightly shares between their namespaces (a resumed ingest then
/// reports the whole blob), and the clients would take that for a wrong answer. Two runs
/// with the same seed still draw the same blobs: give concurrent runs different seeds.
fn client_rng(seed: u64, index: usize) -> Rng {
    Rng::new(Rng::new(seed).next().wrapping_add(index as u64))
}

/// The digest of `data`, as containerd writes it.
pub(crate) fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// A header value for a namespace name the client made up (always ASCII).
fn header(namespace: &str) -> AsciiMetadataValue {
    MetadataValue::try_from(namespace).unwrap_or_else(|_| MetadataValue::from_static("default"))
}

/// The bytes of shared blob `k`.
fn shared_blob(k: usize) -> Vec<u8> {
    format!("plinth-load shared blob {k}\n")
        .repeat(64 * (k + 1))
        .into_bytes()
}

/// Sends `messages` on a Write stream and returns the answer to the last one.
async fn write_all(
    mut api: ContentClient<Channel>,
    request: Request<tokio_stream::Iter<std::vec::IntoIter<WriteContentRequest>>>,
) -> Result<WriteContentResponse, Status> {
    let mut replies = api.write(request).await?.into_inner();
    let mut last = None;
    while let Some(reply) = replies.message().await? {
        last = Some(reply);
    }
    last.ok_or_else(|| Status::internal("the write stream closed without an answer"))
}

/// Reads blob `digest` whole: its bytes as the replies brought them, in order (hashed by
/// [`hashed`] after the call is timed; not copied into one buffer, which cost the client
/// more CPU than anything but the hashing).
async fn read_whole(
    mut api: ContentClient<Channel>,
    request: Request<ReadContentRequest>,
) -> Result<Vec<Vec<u8>>, Status> {
    let mut stream = api.read(request).await?.into_inner();
    let mut parts = Vec::new();
    while let Some(chunk) = stream.message().await? {
        parts.push(chunk.data);
    }
    Ok(parts)
}

/// The digest and size of the bytes of `parts`, one after the other, computed off the async
/// threads: a client hashing a large blob must not hold up the other clients' calls (their
/// latencies would include it).
async fn hashed(parts: Vec<Vec<u8>>) -> (String, u64) {
    let size = parts.iter().map(|part| part.len() as u64).sum();
    let digest = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        for part in &parts {
            hasher.update(part);
        }
        format!("sha256:{:x}", hasher.finalize())
    })
    .await
    .unwrap_or_default();
    (digest, size)
}

/// `size` bytes from `seed` and their digest, made off the async threads (see [`hashed`]).
async fn random_blob(seed: u64, size: usize) -> (Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let data = Rng::new(seed).bytes(size);
        let digest = digest(&data);
        (data, digest)
    })
    .await
    .unwrap_or_default()
}

/// Every `Info` a content List answers.
async fn list_content(
    mut api: ContentClient<Channel>,
    request: Request<ListContentRequest>,
) -> Result<Vec<Info>, Status> {
    let mut stream = api.list(request).await?.into_inner();
    let mut all = Vec::new();
    while let Some(page) = stream.message().await? {
        all.extend(page.info);
    }
    Ok(all)
}

/// An open Write stream: the sender of its messages and its answers.
struct Writer {
    sender: tokio::sync::mpsc::Sender<WriteContentRequest>,
    replies: tonic::Streaming<WriteContentResponse>,
}

impl Writer {
    /// Opens a Write stream with `first` as its first message; its answer.
    async fn open(
        mut api: ContentClient<Channel>,
        namespace: AsciiMetadataValue,
        first: WriteContentRequest,
    ) -> Result<(Writer, WriteContentResponse), Status> {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let mut request = Request::new(ReceiverStream::new(receiver));
        request.metadata_mut().insert(NAMESPACE_HEADER, namespace);
        // The first message goes before the call: a server sends its headers only with its
        // first answer.
        sender
            .send(first)
            .await
            .map_err(|_| Status::internal("the write stream's sender closed"))?;
        let replies = api.write(request).await?.into_inner();
        let mut writer = Writer { sender, replies };
        let reply = writer.answer().await?;
        Ok((writer, reply))
    }

    /// Sends `message` and waits for its answer.
    async fn send(&mut self, message: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        self.sender
            .send(message)
            .await
            .map_err(|_| Status::unavailable("the write stream closed"))?;
        self.answer().await
    }

    async fn answer(&mut self) -> Result<WriteContentResponse, Status> {
        self.replies
            .message()
            .await?
            .ok_or_else(|| Status::internal("the write stream closed without an answer"))
    }
}

impl Worker {
    /// A client on its own connection, working in namespace `<prefix>-<index>`.
    ///
    /// # Errors
    /// The daemon cannot be reached.
    pub(crate) async fn connect(
        index: usize,
        prefix: &str,
        seed: u64,
        settings: Arc<Settings>,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Worker> {
        let namespace = format!("{prefix}-{index}");
        let client =
            plinthd::client::Client::connect(&settings.socket.display().to_string(), &namespace)
                .await?;
        let channel = client.channel();
        let shared_blobs = (0..SHARED_BLOBS)
            .map(|k| {
                let data = shared_blob(k);
                (digest(&data), data)
            })
            .collect();
        Ok(Worker {
            index,
            rng: client_rng(seed, index),
            own: header(&namespace),
            shared: header(&settings.shared),
            content: ContentClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            snapshots: SnapshotsClient::new(channel.clone()),
            namespaces: NamespacesClient::new(channel.clone()),
            images: ImagesClient::new(channel.clone()),
            leases: LeasesClient::new(channel.clone()),
            events: EventsClient::new(channel),
            subscription: None,
            shared_blobs,
            counter: 0,
            counters,
            next_call: Instant::now(),
            last_call: Instant::now(),
            model: Model {
                namespace,
                snapshotter: settings.snapshotter.clone(),
                ..Model::default()
            },
            settings,
            stats: Stats::default(),
            gone: false,
        })
    }

    fn request<T>(&self, shared: bool, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let namespace = if shared { &self.shared } else { &self.own };
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, namespace.clone());
        request
    }

    fn next_name(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{}-{kind}{}", self.model.namespace, self.counter)
    }

    /// A wrong answer.
    fn wrong(&mut self, what: String) {
        self.counters.bad.fetch_add(1, Ordering::Relaxed);
        self.stats
            .failure(format!("{}: {what}", self.model.namespace));
    }

    /// Runs `call` as operation `op`: its latency on success, its error counted as expected
    /// when its code is in `expected`. `Err(Some(code))` for an expected error, `Err(None)`
    /// for any other (counted, unless the daemon is gone).
    async fn call<T>(
        &mut self,
        op: &'static str,
        expected: &[Code],
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Option<Code>> {
        if let Some(pace) = self.settings.pace {
            // Evenly spaced; a client that fell behind does not make up in a burst.
            let now = Instant::now();
            if self.next_call > now {
                tokio::time::sleep_until(self.next_call.into()).await;
            }
            self.next_call = self.next_call.max(now) + pace;
        }
        let start = Instant::now();
        self.last_call = start;
        match call.await {
            Ok(value) => {
                self.stats.ok(op, start.elapsed());
                self.counters.ops.fetch_add(1, Ordering::Relaxed);
                Ok(value)
            }
            Err(status) if expected.contains(&status.code()) => {
                self.stats.expected(op, status.code());
                Err(Some(status.code()))
            }
            Err(status) => {
                if !self.daemon_answers().await {
                    self.gone = true;
                } else {
                    self.counters.bad.fetch_add(1, Ordering::Relaxed);
                    self.stats.unexpected(op, &status);
                }
                Err(None)
            }
        }
    }

    /// Whether the daemon still answers a call on a new connection. A connection alone
    /// proves nothing: a dying daemon's socket can still accept one for a moment.
    async fn daemon_answers(&self) -> bool {
        let socket = self.settings.socket.display().to_string();
        let probe = async {
            let client = plinthd::client::Client::connect(&socket, &self.model.namespace)
                .await
                .ok()?;
            let request = self.request(false, ListNamespacesRequest::default());
            NamespacesClient::new(client.channel())
                .list(request)
                .await
                .ok()
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
            .is_some()
    }

    /// Creates the client's namespace (and the shared one; either may exist).
    pub(crate) async fn setup(&mut self) {
        for name in [self.model.namespace.clone(), self.settings.shared.clone()] {
            let mut api = self.namespaces.clone();
            // containerd's namespace calls need a namespace header too (their events carry it).
            let request = self.request(
                false,
                CreateNamespaceRequest {
                    namespace: Some(Namespace {
                        name,
                        labels: [("plinth-load".to_string(), "yes".to_string())].into(),
                    }),
                },
            );
            let _ = self
                .call("namespace-create", &[Code::AlreadyExists], async move {
                    api.create(request).await
                })
                .await;
        }
    }

    /// Runs one operation of each kind and removes what they wrote, so that the daemon has
    /// opened what it opens on first use (databases, directories) before it is measured; the
    /// counts start again afterwards.
    pub(crate) async fn warm_up(&mut self) {
        self.ingest_small().await;
        self.ingest_large().await;
        self.read().await;
        self.list().await;
        self.snapshot_step().await;
        self.view().await;
        self.list_snapshots().await;
        self.namespace_cycle().await;
        self.shared_ingest().await;
        self.image_create().await;
        self.image_get().await;
        self.image_list().await;
        self.image_update().await;
        self.image_delete().await;
        // A collection: the daemon opens what it opens for one (every snapshotter's files).
        self.lease_life(true).await;
        self.clean_up().await;
        self.model = Model {
            namespace: std::mem::take(&mut self.model.namespace),
            snapshotter: std::mem::take(&mut self.model.snapshotter),
            ..Model::default()
        };
        self.stats = Stats::default();
        self.setup().await;
    }

    /// Runs `first` in order, whatever the deadline, then the mix until `deadline` (or
    /// until the daemon is gone). Paced, its first call is at `start` plus its share of the
    /// pace ([`Settings::clients`]): the clients' calls are spread evenly over time instead
    /// of arriving all together every pace.
    pub(crate) async fn run_until(&mut self, first: &[Op], start: Instant, deadline: Instant) {
        self.next_call = phase(start, self.settings.pace, self.index, self.settings.clients);
        for &op in first {
            if self.gone {
                return;
            }
            self.perform(op).await;
        }
        while !self.gone && Instant::now() < deadline {
            self.step().await;
        }
    }

    /// An operation of the mix, by its weight (`--disconnects` adds the last one).
    fn pick(&mut self) -> Op {
        let mix = if self.settings.disconnects {
            MIX
        } else {
            &MIX[..MIX.len() - 1]
        };
        let mut n = self.rng.below(mix.iter().map(|(_, w)| w).sum());
        for &(op, weight) in mix {
            if n < weight {
                return op;
            }
            n -= weight;
        }
        Op::Ingest
    }

    /// One operation of the mix.
    async fn step(&mut self) {
        let op = self.pick();
        self.perform(op).await;
    }

    /// Runs `op`; a blob operation on an empty namespace ingests instead, and an ingest into
    /// a full one deletes.
    async fn perform(&mut self, op: Op) {
        self.take_deliveries();
        let full = self.model.blobs.len() >= MAX_BLOBS;
        let empty = self.model.blobs.is_empty();
        let images_full = self.model.images.len() >= MAX_IMAGES;
        let op = match op {
            Op::Ingest | Op::IngestLarge if full => Op::Delete,
            Op::Read | Op::Info | Op::Update | Op::Delete if empty => Op::Ingest,
            Op::ImageCreate if images_full => Op::ImageDelete,
            op => op,
        };
        match op {
            Op::Ingest => self.ingest_small().await,
            Op::IngestLarge => self.ingest_large().await,
            Op::Read => self.read().await,
            Op::Info => self.info().await,
            Op::List => self.list().await,
            Op::Update => self.update().await,
            Op::Delete => self.delete().await,
            Op::Snapshot => self.snapshot_step().await,
            Op::View => self.view().await,
            Op::RemoveChain => self.remove_chain().await,
            Op::ListSnapshots => self.list_snapshots().await,
            Op::Namespace => self.namespace_cycle().await,
            Op::SharedIngest => self.shared_ingest().await,
            Op::SharedRead => self.shared_read().await,
            Op::SharedDelete => self.shared_delete().await,
            Op::ImageCreate => self.image_create().await,
            Op::ImageGet => self.image_get().await,
            Op::ImageList => self.image_list().await,
            Op::ImageUpdate => self.image_update().await,
            Op::ImageDelete => self.image_delete().await,
            Op::Lease => self.lease_cycle().await,
            Op::Publish => {
                self.publish_probe().await;
            }
            Op::Disconnect if self.rng.below(2) == 0 => self.disconnect_write().await,
            Op::Disconnect => self.disconnect_read().await,
        }
    }

    fn pick_blob(&mut self) -> Option<(String, Blob)> {
        let n = self.model.blobs.len();
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n);
        self.model
            .blobs
            .iter()
            .nth(i)
            .map(|(d, b)| (d.clone(), b.clone()))
    }

    /// The labels of what the client creates: its kind, the client, and containerd's
    /// `gc.root`, so that containerd's collector (which runs on a schedule there) leaves it.
    fn labels(&self, kind: &str) -> BTreeMap<String, String> {
        [
            ("load.kind".to_string(), kind.to_string()),
            ("load.client".to_string(), self.index.to_string()),
            (GC_ROOT.to_string(), "plinth-load".to_string()),
        ]
        .into()
    }

    /// Records a commit the daemon answered with `reply` (expected `expected`).
    fn committed(&mut self, expected: &str, reply: &str, blob: Blob) {
        if reply != expected {
            self.wrong(format!("commit of {expected} answered digest {reply:?}"));
            return;
        }
        self.model.uncertain_blobs.remove(expected);
        self.model.blobs.insert(expected.to_string(), blob);
    }

    /// A blob of up to 64 KiB in one message (commit with data and labels).
    async fn ingest_small(&mut self) {
        let size = self.rng.between(1, 64 << 10);
        let (data, expected) = random_blob(self.rng.next(), size).await;
        let labels = self.labels("small");
        let message = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.next_name("i"),
            total: size as i64,
            expected: expected.clone(),
            offset: 0,
            data,
            labels: labels.clone().into_iter().collect(),
        };
        self.model.uncertain_blobs.insert(expected.clone());
        let request = self.request(false, tokio_stream::iter(vec![message]));
        let api = self.content.clone();
        if let Ok(reply) = self.call("ingest", &[], write_all(api, request)).await {
            let blob = Blob {
                size: size as u64,
                labels,
            };
            self.committed(&expected, &reply.digest, blob);
        }
    }

    /// A blob of 256 KiB to 2 MiB in 256 KiB messages; one in three is dropped halfway and
    /// resumed on a new stream from the offset the daemon reports.
    async fn ingest_large(&mut self) {
        let size = self.rng.between(CHUNK, 8 * CHUNK);
        let (data, expected) = random_blob(self.rng.next(), size).await;
        let reference = self.next_name("l");
        let resume = self.rng.below(3) == 0;
        let labels = self.labels("large");
        self.model.uncertain_blobs.insert(expected.clone());
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total: size as i64,
            expected: expected.clone(),
            ..WriteContentRequest::default()
        };
        let Ok((mut writer, _)) = self
            .call(
                "ingest-open",
                &[],
                Writer::open(self.content.clone(), self.own.clone(), stat.clone()),
            )
            .await
        else {
            return;
        };
        let mut offset = 0usize;
        if resume {
            let half = size / 2;
            while offset < half {
                let end = (offset + CHUNK).min(half);
                let message = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference.clone(),
                    offset: offset as i64,
                    data: data[offset..end].to_vec(),
                    ..WriteContentRequest::default()
                };
                match self.call("ingest-write", &[], writer.send(message)).await {
                    Ok(reply) if reply.offset == end as i64 => offset = end,
                    Ok(reply) => {
                        self.wrong(format!(
                            "write of {reference} to {end} answered offset {}",
                            reply.offset
                        ));
                        return;
                    }
                    Err(_) => return,
                }
            }
            // The client goes away from the stream; its bytes must stay and its lock go.
            drop(writer);
            let Some(reopened) = self.reopen(&stat, offset).await else {
                return;
            };
            writer = reopened;
        }
        while offset < size {
            let end = (offset + CHUNK).min(size);
            let last = end == size;
            let message = WriteContentRequest {
                action: if last {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                r#ref: reference.clone(),
                total: size as i64,
                expected: if last {
                    expected.clone()
                } else {
                    String::new()
                },
                offset: offset as i64,
                data: data[offset..end].to_vec(),
                labels: if last {
                    labels.clone().into_iter().collect()
                } else {
                    Default::default()
                },
            };
            let op = if last {
                "ingest-commit"
            } else {
                "ingest-write"
            };
            let Ok(reply) = self.call(op, &[], writer.send(message)).await else {
                return;
            };
            if last {
                let blob = Blob {
                    size: size as u64,
                    labels: labels.clone(),
                };
                self.committed(&expected, &reply.digest, blob);
            }
            offset = end;
        }
    }

    /// Opens the ingest `stat` names again after its writer went away with `acked` bytes
    /// written, waiting (bounded) while the daemon still holds its lock; the offset it
    /// reports must be `acked`.
    async fn reopen(&mut self, stat: &WriteContentRequest, acked: usize) -> Option<Writer> {
        let give_up = Instant::now() + UNLOCK_WAIT;
        loop {
            let open = Writer::open(self.content.clone(), self.own.clone(), stat.clone());
            match self.call("ingest-reopen", &[Code::Unavailable], open).await {
                Ok((writer, reply)) => {
                    if reply.offset != acked as i64 {
                        self.wrong(format!(
                            "ingest {} reopened at offset {} after {acked} bytes were acknowledged",
                            stat.r#ref, reply.offset
                        ));
                        return None;
                    }
                    return Some(writer);
                }
                Err(Some(_)) if Instant::now() < give_up => {
                    // The daemon has not yet seen the old stream end; its lock is released
                    // when it does.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(Some(_)) => {
                    self.wrong(format!(
                        "ingest {} still locked {UNLOCK_WAIT:?} after its writer went away",
                        stat.r#ref
                    ));
                    return None;
                }
                Err(None) => return None,
            }
        }
    }

    async fn read(&mut self) {
        let Some((expected, blob)) = self.pick_blob() else {
            return;
        };
        let request = self.request(
            false,
            ReadContentRequest {
                digest: expected.clone(),
                offset: 0,
                size: 0,
            },
        );
        let api = self.content.clone();
        let Ok(data) = self.call("read", &[], read_whole(api, request)).await else {
            return;
        };
        let (actual, size) = hashed(data).await;
        if actual != expected || size != blob.size {
            self.wrong(format!(
                "read of {expected} ({} bytes) returned {size} bytes hashing to {actual}",
                blob.size
            ));
        }
    }

    async fn info(&mut self) {
        let Some((expected, blob)) = self.pick_blob() else {
            return;
        };
        let request = self.request(
            false,
            InfoRequest {
                digest: expected.clone(),
            },
        );
        let mut api = self.content.clone();
        let Ok(reply) = self
            .call("info", &[], async move { api.info(request).await })
            .await
        else {
            return;
        };
        let info = reply.into_inner().info.unwrap_or_default();
        let labels: BTreeMap<String, String> = info.labels.into_iter().collect();
        if info.digest != expected
            || info.size as u64 != blob.size
            || (labels != blob.labels && !self.model.uncertain_labels.contains(&expected))
        {
            self.wrong(format!(
                "info of {expected} (size {}, labels {:?}) answered {} size {} labels {labels:?}",
                blob.size, blob.labels, info.digest, info.size
            ));
        }
    }

    /// A filtered list: exactly the small blobs committed and not deleted.
    async fn list(&mut self) {
        let request = self.request(
            false,
            ListContentRequest {
                filters: vec![r#"labels."load.kind"==small"#.to_string()],
            },
        );
        let api = self.content.clone();
        let Ok(infos) = self.call("list", &[], list_content(api, request)).await else {
            return;
        };
        let listed: BTreeMap<String, u64> = infos
            .into_iter()
            .map(|i| (i.digest, i.size as u64))
            .collect();
        let mut problems = Vec::new();
        for (d, blob) in &self.model.blobs {
            let small = blob.labels.get("load.kind").map(String::as_str) == Some("small");
            match listed.get(d) {
                None if small => problems.push(format!("{d} missing")),
                Some(_) if !small && !self.model.uncertain_labels.contains(d) => {
                    problems.push(format!("{d} is not small"));
                }
                Some(&size) if size != blob.size => {
                    problems.push(format!("{d} of {} bytes listed as {size}", blob.size));
                }
                _ => {}
            }
        }
        for d in listed.keys() {
            if !self.model.blobs.contains_key(d) && !self.model.uncertain_blobs.contains(d) {
                problems.push(format!("{d} listed but never committed or deleted"));
            }
        }
        if !problems.is_empty() {
            self.wrong(format!("content list: {}", problems.join(", ")));
        }
    }

    async fn update(&mut self) {
        let Some((target, blob)) = self.pick_blob() else {
            return;
        };
        let value = self.rng.below(1000).to_string();
        let mut labels = blob.labels.clone();
        labels.insert("load.n".to_string(), value.clone());
        let request = self.request(
            false,
            UpdateRequest {
                info: Some(Info {
                    digest: target.clone(),
                    labels: [("load.n".to_string(), value)].into(),
                    ..Info::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["labels.load.n".to_string()],
                }),
            },
        );
        self.model.uncertain_labels.insert(target.clone());
        let mut api = self.content.clone();
        let Ok(reply) = self
            .call("update", &[], async move { api.update(request).await })
            .await
        else {
            return;
        };
        let answered: BTreeMap<String, String> = reply
            .into_inner()
            .info
            .unwrap_or_default()
            .labels
            .into_iter()
            .collect();
        if answered != labels {
            self.wrong(format!(
                "update of {target} answered labels {answered:?}, not {labels:?}"
            ));
            return;
        }
        self.model.uncertain_labels.remove(&target);
        if let Some(b) = self.model.blobs.get_mut(&target) {
            b.labels = labels;
        }
    }

    async fn delete(&mut self) {
        let Some((target, _)) = self.pick_blob() else {
            return;
        };
        self.model.blobs.remove(&target);
        self.model.uncertain_blobs.insert(target.clone());
        let request = self.request(
            false,
            DeleteContentRequest {
                digest: target.clone(),
            },
        );
        let mut api = self.content.clone();
        if self
            .call("delete", &[], async move { api.delete(request).await })
            .await
            .is_ok()
        {
            self.model.uncertain_blobs.remove(&target);
        }
    }

    /// Prepares a snapshot on the tip of a chain (or a new chain), checks its mounts,
    /// commits it and checks the committed snapshot's kind and parent.
    async fn snapshot_step(&mut self) {
        let open: Vec<usize> = (0..self.model.chains.len())
            .filter(|&i| self.model.chains[i].len() < MAX_CHAIN)
            .collect();
        let new_chain =
            self.model.chains.len() < MAX_CHAINS && (open.is_empty() || self.rng.below(3) == 0);
        let chain = if new_chain {
            self.model.chains.push(Vec::new());
            self.model.chains.len() - 1
        } else if let Some(&i) = open.get(self.rng.below(open.len().max(1))) {
            i
        } else {
            return self.remove_chain().await;
        };
        let parent = self.model.chains[chain].last().cloned().unwrap_or_default();
        let name = self.next_name("s");
        let key = format!("{name}-active");
        let snapshotter = self.settings.snapshotter.clone();
        self.model.uncertain_snapshots.insert(key.clone());
        let request = self.request(
            false,
            PrepareSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
                parent: parent.clone(),
                labels: self.labels("snapshot").into_iter().collect(),
            },
        );
        let mut api = self.snapshots.clone();
        let Ok(prepared) = self
            .call("snapshot-prepare", &[], async move {
                api.prepare(request).await
            })
            .await
        else {
            return self.drop_empty(chain);
        };
        let prepared = prepared.into_inner().mounts;
        if prepared.is_empty() {
            self.wrong(format!("prepare of {key} answered no mounts"));
        }
        let request = self.request(
            false,
            MountsRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
            },
        );
        let mut api = self.snapshots.clone();
        let Ok(mounts) = self
            .call(
                "snapshot-mounts",
                &[],
                async move { api.mounts(request).await },
            )
            .await
        else {
            return self.drop_empty(chain);
        };
        if mounts.into_inner().mounts != prepared {
            self.wrong(format!("mounts of {key} differ from what prepare answered"));
        }
        self.model.uncertain_snapshots.insert(name.clone());
        let request = self.request(
            false,
            CommitSnapshotRequest {
                snapshotter: snapshotter.clone(),
                name: name.clone(),
                key: key.clone(),
                labels: self.labels("snapshot").into_iter().collect(),
                ..CommitSnapshotRequest::default()
            },
        );
        let mut api = self.snapshots.clone();
        if self
            .call(
                "snapshot-commit",
                &[],
                async move { api.commit(request).await },
            )
            .await
            .is_err()
        {
            return self.drop_empty(chain);
        }
        self.model.uncertain_snapshots.remove(&name);
        self.model.uncertain_snapshots.remove(&key);
        self.model.chains[chain].push(name.clone());
        self.stat(&name, Kind::Committed, &parent).await;
    }

    /// Forgets chain `i` if it was started for a prepare that failed.
    fn drop_empty(&mut self, i: usize) {
        if self.model.chains.get(i).is_some_and(Vec::is_empty) {
            self.model.chains.remove(i);
        }
    }

    /// Stats `key`: it must be of `kind` on `parent`.
    async fn stat(&mut self, key: &str, kind: Kind, parent: &str) {
        let request = self.request(
            false,
            StatSnapshotRequest {
                snapshotter: self.settings.snapshotter.clone(),
                key: key.to_string(),
            },
        );
        let mut api = self.snapshots.clone();
        let Ok(reply) = self
            .call("snapshot-stat", &[], async move { api.stat(request).await })
            .await
        else {
            return;
        };
        let info = reply.into_inner().info.unwrap_or_default();
        if info.name != key || info.kind != kind as i32 || info.parent != parent {
            self.wrong(format!(
                "stat of {key} ({kind:?} on {parent:?}) answered {:?} kind {} on {:?}",
                info.name, info.kind, info.parent
            ));
        }
    }

    /// A view of a chain's tip: stat it, remove it.
    async fn view(&mut self) {
        let tips: Vec<String> = self
            .model
            .chains
            .iter()
            .filter_map(|c| c.last().cloned())
            .collect();
        if tips.is_empty() {
            return self.snapshot_step().await;
        }
        let tip = tips[self.rng.below(tips.len())].clone();
        let key = format!("{}-view", self.next_name("v"));
        let snapshotter = self.settings.snapshotter.clone();
        self.model.uncertain_snapshots.insert(key.clone());
        let request = self.request(
            false,
            ViewSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
                parent: tip.clone(),
                labels: self.labels("view").into_iter().collect(),
            },
        );
        let mut api = self.snapshots.clone();
        if self
            .call("snapshot-view", &[], async move { api.view(request).await })
            .await
            .is_err()
        {
            return;
        }
        self.stat(&key, Kind::View, &tip).await;
        if self.remove_snapshot(&key).await {
            self.model.uncertain_snapshots.remove(&key);
        }
    }

    async fn remove_snapshot(&mut self, key: &str) -> bool {
        let request = self.request(
            false,
            RemoveSnapshotRequest {
                snapshotter: self.settings.snapshotter.clone(),
                key: key.to_string(),
            },
        );
        let mut api = self.snapshots.clone();
        self.call(
            "snapshot-remove",
            &[],
            async move { api.remove(request).await },
        )
        .await
        .is_ok()
    }

    /// Removes a chain from its tip down.
    async fn remove_chain(&mut self) {
        if self.model.chains.is_empty() {
            return;
        }
        let i = self.rng.below(self.model.chains.len());
        while let Some(name) = self.model.chains[i].pop() {
            self.model.uncertain_snapshots.insert(name.clone());
            if !self.remove_snapshot(&name).await {
                return;
            }
            self.model.uncertain_snapshots.remove(&name);
        }
        self.model.chains.remove(i);
    }

    /// Lists the snapshots: exactly the committed chains (and perhaps what was in doubt).
    async fn list_snapshots(&mut self) {
        let request = self.request(
            false,
            ListSnapshotsRequest {
                snapshotter: self.settings.snapshotter.clone(),
                filters: Vec::new(),
            },
        );
        let mut api = self.snapshots.clone();
        let Ok(listed) = self
            .call("snapshot-list", &[], async move {
                let mut stream = api.list(request).await?.into_inner();
                let mut all = BTreeMap::new();
                while let Some(page) = stream.message().await? {
                    all.extend(page.info.into_iter().map(|i| (i.name, i.parent)));
                }
                Ok(all)
            })
            .await
        else {
            return;
        };
        let mut problems = Vec::new();
        for chain in &self.model.chains {
            let mut parent = String::new();
            for name in chain {
                match listed.get(name) {
                    None => problems.push(format!("{name} missing")),
                    Some(p) if *p != parent => {
                        problems.push(format!("{name} listed on {p:?}, not {parent:?}"));
                    }
                    Some(_) => {}
                }
                parent.clone_from(name);
            }
        }
        let known: BTreeSet<&String> = self.model.chains.iter().flatten().collect();
        for name in listed.keys() {
            if !known.contains(name) && !self.model.uncertain_snapshots.contains(name) {
                problems.push(format!("{name} listed but never made or removed"));
            }
        }
        if !problems.is_empty() {
            self.wrong(format!("snapshot list: {}", problems.join(", ")));
        }
    }

    /// Creates a namespace with a label, gets it, deletes it, and gets NotFound.
    async fn namespace_cycle(&mut self) {
        let name = self.next_name("t");
        let labels: std::collections::HashMap<String, String> =
            [("load.client".to_string(), self.index.to_string())].into();
        let request = self.request(
            false,
            CreateNamespaceRequest {
                namespace: Some(Namespace {
                    name: name.clone(),
                    labels: labels.clone(),
                }),
            },
        );
        let mut api = self.namespaces.clone();
        if self
            .call(
                "namespace-create",
                &[],
                async move { api.create(request).await },
            )
            .await
            .is_err()
        {
            return;
        }
        let mut api = self.namespaces.clone();
        let get = self.request(false, GetNamespaceRequest { name: name.clone() });
        let Ok(got) = self
            .call("namespace-get", &[], async move { api.get(get).await })
            .await
        else {
            return;
        };
        let got = got.into_inner().namespace.unwrap_or_default();
        if got.name != name || got.labels != labels {
            self.wrong(format!("namespace {name} answered as {got:?}"));
        }
        let mut api = self.namespaces.clone();
        let delete = self.request(false, DeleteNamespaceRequest { name: name.clone() });
        if self
            .call(
                "namespace-delete",
                &[],
                async move { api.delete(delete).await },
            )
            .await
            .is_err()
        {
            return;
        }
        let mut api = self.namespaces.clone();
        let get = self.request(false, GetNamespaceRequest { name: name.clone() });
        // A deleted namespace is NotFound on plinthd; containerd 1.6 answers any name with the
        // labels it holds, none once deleted. Either says it is gone; its labels may not stay.
        if let Ok(got) = self
            .call("namespace-get", &[Code::NotFound], async move {
                api.get(get).await
            })
            .await
            && got
                .get_ref()
                .namespace
                .as_ref()
                .is_none_or(|n| !n.labels.is_empty())
        {
            self.wrong(format!(
                "deleted namespace {name} answered as {:?}",
                got.into_inner()
            ));
        }
    }

    /// Ingests one of the shared blobs: AlreadyExists when another client has it.
    async fn shared_ingest(&mut self) {
        let (expected, data) = self.shared_blobs[self.rng.below(SHARED_BLOBS)].clone();
        let message = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.next_name("sh"),
            total: data.len() as i64,
            expected: expected.clone(),
            data,
            labels: [(GC_ROOT.to_string(), "plinth-load".to_string())].into(),
            ..WriteContentRequest::default()
        };
        let request = self.request(true, tokio_stream::iter(vec![message]));
        let api = self.content.clone();
        if let Ok(reply) = self
            .call(
                "shared-ingest",
                &[Code::AlreadyExists],
                write_all(api, request),
            )
            .await
            && reply.digest != expected
        {
            self.wrong(format!(
                "shared commit of {expected} answered {:?}",
                reply.digest
            ));
        }
    }

    /// Reads one of the shared blobs: NotFound when another client deleted it.
    async fn shared_read(&mut self) {
        let (expected, data) = self.shared_blobs[self.rng.below(SHARED_BLOBS)].clone();
        let request = self.request(
            true,
            ReadContentRequest {
                digest: expected.clone(),
                ..ReadContentRequest::default()
            },
        );
        let api = self.content.clone();
        let Ok(read) = self
            .call("shared-read", &[Code::NotFound], read_whole(api, request))
            .await
        else {
            return;
        };
        let (actual, size) = hashed(read).await;
        if actual != expected || size != data.len() as u64 {
            self.wrong(format!(
                "shared read of {expected} returned {size} bytes hashing to {actual}"
            ));
        }
    }

    /// Deletes one of the shared blobs: NotFound when another client deleted it first.
    async fn shared_delete(&mut self) {
        let (target, _) = self.shared_blobs[self.rng.below(SHARED_BLOBS)].clone();
        let request = self.request(true, DeleteContentRequest { digest: target });
        let mut api = self.content.clone();
        let _ = self
            .call("shared-delete", &[Code::NotFound], async move {
                api.delete(request).await
            })
            .await;
    }

    /// A connection of its own writes half a blob and is dropped; on the client's own
    /// connection the ingest must then resume at that offset (its lock released) and commit.
    async fn disconnect_write(&mut self) {
        let size = 2 * CHUNK;
        let (data, expected) = random_blob(self.rng.next(), size).await;
        let reference = self.next_name("d");
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total: size as i64,
            expected: expected.clone(),
            ..WriteContentRequest::default()
        };
        let socket = self.settings.socket.display().to_string();
        let namespace = self.model.namespace.clone();
        let first = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.clone(),
            total: size as i64,
            expected: expected.clone(),
            data: data[..CHUNK].to_vec(),
            ..WriteContentRequest::default()
        };
        let own = self.own.clone();
        let written = self
            .call("disconnect-write", &[], async move {
                let client = plinthd::client::Client::connect(&socket, &namespace)
                    .await
                    .map_err(|e| Status::unavailable(format!("{e:#}")))?;
                let (_writer, reply) =
                    Writer::open(ContentClient::new(client.channel()), own, first).await?;
                // `_writer` and the connection are dropped here, mid-stream.
                Ok(reply.offset)
            })
            .await;
        match written {
            Ok(offset) if offset == CHUNK as i64 => {}
            Ok(offset) => {
                return self.wrong(format!(
                    "write of {reference} to {CHUNK} answered offset {offset}"
                ));
            }
            Err(_) => return,
        }
        self.model.uncertain_blobs.insert(expected.clone());
        let Some(mut writer) = self.reopen(&stat, CHUNK).await else {
            return;
        };
        let labels = self.labels("resumed");
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total: size as i64,
            expected: expected.clone(),
            offset: CHUNK as i64,
            data: data[CHUNK..].to_vec(),
            labels: labels.clone().into_iter().collect(),
        };
        if let Ok(reply) = self.call("ingest-commit", &[], writer.send(commit)).await {
            self.committed(
                &expected,
                &reply.digest,
                Blob {
                    size: size as u64,
                    labels,
                },
            );
        }
    }

    /// A connection of its own starts reading a blob and is dropped after the first message.
    async fn disconnect_read(&mut self) {
        let Some((target, _)) = self.pick_blob() else {
            return self.ingest_large().await;
        };
        let socket = self.settings.socket.display().to_string();
        let namespace = self.model.namespace.clone();
        let _ = self
            .call("disconnect-read", &[], async move {
                let client = plinthd::client::Client::connect(&socket, &namespace)
                    .await
                    .map_err(|e| Status::unavailable(format!("{e:#}")))?;
                let request = client
                    .request(ReadContentRequest {
                        digest: target,
                        offset: 0,
                        size: 0,
                    })
                    .map_err(|e| Status::internal(format!("{e:#}")))?;
                let mut stream = ContentClient::new(client.channel())
                    .read(request)
                    .await?
                    .into_inner();
                stream.message().await?;
                Ok(())
            })
            .await;
    }

    /// Removes what the client wrote and its namespace (not timed). Problems are printed, not
    /// counted.
    pub(crate) async fn clean_up(&mut self) {
        self.clean_up_records().await;
        let snapshotter = self.settings.snapshotter.clone();
        let mut keys: Vec<String> = self.model.uncertain_snapshots.iter().cloned().collect();
        for chain in &self.model.chains {
            keys.extend(chain.iter().rev().cloned());
        }
        // Views and actives first (uncertain ones may be anything), then the chains tip first.
        keys.sort_by_key(|k| !(k.ends_with("-view") || k.ends_with("-active")));
        for key in keys {
            let request = self.request(
                false,
                RemoveSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key,
                },
            );
            let _ = self.snapshots.remove(request).await;
        }
        let blobs: Vec<String> = self
            .model
            .blobs
            .keys()
            .chain(&self.model.uncertain_blobs)
            .cloned()
            .collect();
        for digest in blobs {
            let request = self.request(false, DeleteContentRequest { digest });
            let _ = self.content.delete(request).await;
        }
        abort_ingests(&mut self.content, &self.own).await;
        let name = self.model.namespace.clone();
        let request = self.request(true, DeleteNamespaceRequest { name: name.clone() });
        if let Err(e) = self.namespaces.delete(request).await {
            say!("plinth-load: removing namespace {name}: {}", e.message());
        }
    }

    /// Removes the shared namespace's blobs, ingests and the namespace (once every client is
    /// done).
    pub(crate) async fn clean_up_shared(&mut self) {
        for (digest, _) in self.shared_blobs.clone() {
            let request = self.request(true, DeleteContentRequest { digest });
            let _ = self.content.delete(request).await;
        }
        abort_ingests(&mut self.content, &self.shared).await;
        let name = self.settings.shared.clone();
        let request = self.request(false, DeleteNamespaceRequest { name: name.clone() });
        if let Err(e) = self.namespaces.delete(request).await {
            say!("plinth-load: removing namespace {name}: {}", e.message());
        }
    }
}

/// Aborts every ingest in `namespace`.
async fn abort_ingests(api: &mut ContentClient<Channel>, namespace: &AsciiMetadataValue) {
    let mut request = Request::new(ListStatusesRequest::default());
    request
        .metadata_mut()
        .insert(NAMESPACE_HEADER, namespace.clone());
    let Ok(statuses) = api.list_statuses(request).await else {
        return;
    };
    for status in statuses.into_inner().statuses {
        let mut request = Request::new(AbortRequest {
            r#ref: status.r#ref,
        });
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, namespace.clone());
        let _ = api.abort(request).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_in_parts_hashes_as_the_whole_blob_in_their_order() {
        let whole: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let parts = vec![whole[..10].to_vec(), Vec::new(), whole[10..].to_vec()];
        assert_eq!(hashed(parts).await, (digest(&whole), 1000));
        let swapped = vec![whole[10..].to_vec(), whole[..10].to_vec()];
        assert_ne!(hashed(swapped).await.0, digest(&whole));
    }

    #[test]
    fn paced_clients_begin_spread_evenly_over_one_pace() {
        let start = Instant::now();
        let pace = Duration::from_millis(64);
        let firsts: Vec<Duration> = (0..4)
            .map(|i| phase(start, Some(pace), i, 4) - start)
            .collect();
        assert_eq!(
            firsts,
            [0, 16, 32, 48].map(Duration::from_millis),
            "four clients every 64 ms call 16 ms apart"
        );
        assert_eq!(
            phase(start, None, 3, 4),
            start,
            "unpaced, every client at once"
        );
        assert_eq!(
            phase(start, Some(pace), 0, 0),
            start,
            "no clients: no division by zero"
        );
    }

    #[test]
    fn runs_with_nearby_seeds_give_their_clients_different_blobs() {
        let firsts = |seed| -> std::collections::BTreeSet<u64> {
            (0..64).map(|i| client_rng(seed, i).next()).collect()
        };
        let (one, two) = (firsts(1), firsts(2));
        assert_eq!(one.len(), 64, "every client of a run draws its own blobs");
        assert!(
            one.is_disjoint(&two),
            "a client of seed 2 draws what a client of seed 1 draws"
        );
        assert_eq!(firsts(1), one, "the same seed draws the same blobs again");
    }
}
