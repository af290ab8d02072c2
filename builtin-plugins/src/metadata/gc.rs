//! The collector: containerd's mark and sweep over the metadata database (the rules are in
//! [`crate::gc`]).
//!
//! A collection runs in three steps:
//!
//! 1. **Mark**, in one read transaction: every record is loaded into a graph (only the
//!    `containerd.io/gc.*` labels are kept), and everything reachable from the roots is
//!    marked. Writers go on meanwhile.
//! 2. **Sweep**, in one write transaction: the unmarked blob and snapshot records and the
//!    expired leases (with their resources) are removed. If any write committed between the
//!    mark's snapshot and the sweep's transaction (the database's commit count says so), it
//!    may have made an unmarked record reachable: the sweep first walks, inside its
//!    transaction, from what those writes noted in the [`Barrier`] and keeps what it
//!    reaches. Writers wait for this transaction only.
//! 3. **Backend removal**, outside any transaction: blobs of the content store that no
//!    record of any namespace holds are deleted, and backend snapshots that no record refers
//!    to are removed, children first. Each is checked again under the lock that the writes
//!    creating it hold (content commits hold the blob lock from the store's commit to the
//!    record's; snapshot changes hold their namespace's lock from the record to the
//!    backend), so a blob or snapshot whose record is about to be written is never removed.
//!    This step finds its work by listing the backends, not from the sweep, so a crash
//!    after the sweep leaves nothing the next collection does not remove.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use redb::ReadableTable;

use super::records::{ContainerRecord, ImageRecord, LeaseRecord};
use super::schema::{
    CONTAINERS, CONTENT, CONTENT_LABELS, IMAGES, LEASE_RESOURCES, LEASES, LeaseResourceKey,
    NAMESPACES, SNAPSHOT_LABELS, SNAPSHOTS, SnapshotKey, SnapshotLabelKey, SnapshotValue,
};
use super::{Metadata, blocking, storage};
use crate::content::Digest;
use crate::error::Error;
use crate::gc::{
    Collector, LABEL_EXPIRE, LABEL_FLAT, LABEL_REF_CONTENT, LABEL_REF_SNAPSHOT, LABEL_ROOT,
    Mutation, MutationCallback, Stats,
};
use crate::redb_store::Db;
use crate::removal::Freeing;
use crate::snapshots::Info;

/// Blobs deleted per hold of the blob lock: content commits wait at most one batch.
const BLOB_BATCH: usize = 1024;

/// Batches whose space is still being freed, at most, before the next one is detached: the
/// disk has the next batch queued while the database commits or the lock is taken, and the
/// threads freeing stay bounded (`crate::removal`).
const FREEING: usize = 3;

/// The [`Freeing`]s of the batches a collection has detached, at most [`FREEING`] of them.
#[derive(Default)]
struct Freeings(std::collections::VecDeque<Freeing>);

impl Freeings {
    /// Adds a batch's, first waiting for the oldest when [`FREEING`] are pending.
    ///
    /// # Errors
    /// The oldest's failure.
    async fn push(&mut self, freeing: Freeing) -> Result<(), Error> {
        let oldest = if self.0.len() >= FREEING {
            self.0.pop_front()
        } else {
            None
        };
        self.0.push_back(freeing);
        match oldest {
            Some(oldest) => oldest.wait().await,
            None => Ok(()),
        }
    }

    /// Waits for every pending batch.
    ///
    /// # Errors
    /// The first failure (after waiting for all of them).
    async fn wait(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        while let Some(oldest) = self.0.pop_front() {
            if let Err(e) = oldest.wait().await
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}

/// Backend snapshots removed per [`crate::snapshots::Snapshotter::remove_many`] call (one
/// transaction of a backend with its own records), children before parents.
const SNAPSHOT_BATCH: usize = 256;

/// How many locks the blobs are spread over ([`GcState::committing`]).
const BLOB_STRIPES: usize = 64;

/// The stripe of `digest`'s blob lock: an FNV-1a hash of its text (any algorithm's).
fn blob_stripe(digest: &Digest) -> usize {
    let hash = digest
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    // The remainder is below BLOB_STRIPES.
    #[allow(clippy::cast_possible_truncation)]
    let stripe = (hash % BLOB_STRIPES as u64) as usize;
    stripe
}

/// The collector's state in [`Metadata`].
pub(crate) struct GcState {
    callbacks: RwLock<Vec<MutationCallback>>,
    /// Held for a whole collection: collections never overlap.
    running: tokio::sync::Mutex<()>,
    /// Shared by every content commit from the store's commit to the record's; exclusive
    /// while blobs no record holds are deleted. One lock per stripe of digests
    /// ([`blob_stripe`]): a client's delete of one blob holds up only the commits of its
    /// stripe, not every commit in the daemon.
    blobs: Vec<tokio::sync::RwLock<()>>,
    /// Runs between the mark and the sweep: nothing, except in tests.
    between: Arc<dyn Fn() + Send + Sync>,
    /// What writes touched between a collection's mark and its sweep.
    pub(crate) barrier: Arc<Barrier>,
    /// The content store may hold a blob that no record holds and that no sweep will name
    /// (containerd's dirty flag for content): left by a crash (so it starts set), or by a
    /// commit or a delete that failed or was dropped between the store and the records. A
    /// collection scans the whole store only while it is set; otherwise it deletes only the
    /// blobs of the records its sweep removed, and takes no lock when there are none.
    content_dirty: std::sync::atomic::AtomicBool,
    /// The removal of stale lease resource rows that the last collection started, if any
    /// ([`Metadata::remove_stale_resources_behind`]).
    stale_cleanup: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Set while a content change is between the store and the records: dropped before
/// [`Leftover::done`] (an error, or a call dropped mid-way), it marks the store as maybe
/// holding a blob no record holds ([`GcState::content_dirty`]).
pub(crate) struct Leftover<'a>(Option<&'a GcState>);

impl Leftover<'_> {
    /// The change reached the records (or left nothing behind).
    pub(crate) fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Leftover<'_> {
    fn drop(&mut self) {
        if let Some(gc) = self.0 {
            gc.content_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Default for GcState {
    fn default() -> Self {
        GcState {
            callbacks: RwLock::default(),
            running: tokio::sync::Mutex::default(),
            blobs: (0..BLOB_STRIPES)
                .map(|_| tokio::sync::RwLock::default())
                .collect(),
            between: Arc::new(|| {}),
            barrier: Arc::default(),
            content_dirty: std::sync::atomic::AtomicBool::new(true),
            stale_cleanup: std::sync::Mutex::default(),
        }
    }
}

impl GcState {
    /// Held by a content commit of `digest` from the content store's commit to the record's.
    pub(crate) async fn committing(&self, digest: &Digest) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.blobs[blob_stripe(digest)].read().await
    }

    /// The blob locks of `digests`' stripes, exclusive, taken in stripe order (a commit
    /// holds one stripe, so no two takers wait for each other).
    async fn deleting(&self, digests: &[Digest]) -> Vec<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let stripes: BTreeSet<usize> = digests.iter().map(blob_stripe).collect();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.blobs[stripe].write().await);
        }
        guards
    }

    /// Taken before a content change that touches the store and the records separately;
    /// see [`Leftover`].
    pub(crate) fn leftover(&self) -> Leftover<'_> {
        Leftover(Some(self))
    }

    pub(crate) fn notify(&self, mutation: Mutation) {
        let callbacks = self
            .callbacks
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for callback in callbacks.iter() {
            callback(mutation);
        }
    }
}

/// A `containerd.io/gc.*` label's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Root,
    Content(String),
    Snapshot(String, String),
}

fn parse_label(key: &str, value: &str) -> Option<Label> {
    if key == LABEL_ROOT {
        return Some(Label::Root);
    }
    if let Some(rest) = key.strip_prefix(LABEL_REF_SNAPSHOT) {
        let snapshotter = rest.split('/').next().unwrap_or(rest);
        return Some(Label::Snapshot(snapshotter.to_string(), value.to_string()));
    }
    if let Some(rest) = key.strip_prefix(LABEL_REF_CONTENT)
        && (rest.is_empty() || rest.starts_with('.') || rest.starts_with('/'))
    {
        return Some(Label::Content(value.to_string()));
    }
    None
}

/// What an object's labels refer to, and whether they make it a root.
#[derive(Debug, Default, Clone)]
struct Refs {
    root: bool,
    content: Vec<String>,
    snapshots: Vec<(String, String)>,
}

impl Refs {
    fn add(&mut self, key: &str, value: &str) {
        match parse_label(key, value) {
            Some(Label::Root) => self.root = true,
            Some(Label::Content(digest)) => self.content.push(digest),
            Some(Label::Snapshot(snapshotter, key)) => self.snapshots.push((snapshotter, key)),
            None => {}
        }
    }

    fn of<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Refs {
        let mut refs = Refs::default();
        for (key, value) in labels {
            refs.add(key, value);
        }
        refs
    }
}

type ContentId = (String, String);
type SnapshotId = (String, String, String);

#[derive(Debug)]
struct SnapshotNode {
    parent: String,
    /// The backend snapshot's name.
    backend: String,
    refs: Refs,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Content(ContentId),
    Snapshot(SnapshotId),
}

/// A record of the graph, by its place in [`Graph::content`] or [`Graph::snapshots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    Content(usize),
    Snapshot(usize),
}

/// A reference as a record's labels or parent name it, borrowed from the graph; it may name
/// something without a record.
#[derive(Debug, Clone, Copy)]
enum Ref<'a> {
    Content(&'a str, &'a str),
    Snapshot(&'a str, &'a str, &'a str),
}

impl<'a> Ref<'a> {
    fn of(node: &'a Node) -> Self {
        match node {
            Node::Content((ns, digest)) => Ref::Content(ns, digest),
            Node::Snapshot((ns, sn, key)) => Ref::Snapshot(ns, sn, key),
        }
    }

    #[cfg(test)]
    fn owned(self) -> Node {
        match self {
            Ref::Content(ns, digest) => Node::Content((ns.to_string(), digest.to_string())),
            Ref::Snapshot(ns, sn, key) => {
                Node::Snapshot((ns.to_string(), sn.to_string(), key.to_string()))
            }
        }
    }
}

/// Every record of the database, as far as collection cares.
///
/// Records are held in the tables' key order, so a reference is found by binary search and
/// the mark keeps one byte per record instead of sets of keys: no key is hashed, copied or
/// compared more than a search's twenty-odd times.
#[derive(Debug, Default)]
struct Graph {
    content: Vec<(ContentId, Refs)>,
    snapshots: Vec<(SnapshotId, SnapshotNode)>,
    /// (node, flat) pairs the marking starts from.
    roots: Vec<(Node, bool)>,
    /// Leases to remove: (namespace, id).
    expired: Vec<(String, String)>,
    next_expiry: Option<SystemTime>,
    /// Some lease resource row belongs to no live lease (see [`remove_stale_resources`]).
    stale_resources: bool,
}

/// The write barrier: while a collection is between its mark's snapshot and its sweep, every
/// write transaction notes here, before it commits, the blobs and snapshots it may have made
/// reachable (see [`Barrier::content`] and its siblings for what each kind of write notes).
/// The sweep then checks again only what is reachable from them, not the whole database.
///
/// Why that is enough: if a record left unmarked by the mark is reachable when the sweep
/// runs, some reference on its path (a label, a parent, an image's target, a container's
/// snapshot, a lease's resource) or some root was written after the mark's snapshot. The
/// last one written on the path points at an object every write of such a reference notes;
/// from there to the record, every reference is older than the mark and so leads only
/// through objects that were unmarked too. So the sweep walks from the noted objects through
/// unmarked ones only, in its own write transaction, and keeps what it reaches.
///
/// Arming and taking happen under the database's writer lock, as every note does (a note is
/// written inside a write transaction), so a write is noted exactly when it commits after
/// the mark's snapshot and before the sweep.
#[derive(Default)]
pub(crate) struct Barrier {
    touched: std::sync::Mutex<Option<Touched>>,
}

/// What the writes since the mark noted.
#[derive(Debug, Default)]
struct Touched {
    nodes: Vec<Node>,
    /// Leases created since the mark (an expired lease deleted and created again under its
    /// old id must not be swept as the old one).
    leases: HashSet<(String, String)>,
    /// More was noted than [`BARRIER_LIMIT`]: the sweep marks everything again instead.
    overflow: bool,
}

/// Objects the barrier notes before the sweep marks everything again instead.
const BARRIER_LIMIT: usize = 1 << 16;

impl Barrier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Touched>> {
        self.touched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts noting (a collection took its mark's snapshot).
    fn arm(&self) {
        *self.lock() = Some(Touched::default());
    }

    /// Stops noting and returns what was noted since [`Barrier::arm`].
    fn take(&self) -> Option<Touched> {
        self.lock().take()
    }

    /// Notes the nodes `nodes` makes, only while armed: unarmed (no collection between its
    /// mark and its sweep, nearly always) a write pays one uncontended lock and nothing else.
    fn note<I: IntoIterator<Item = Node>>(&self, nodes: impl FnOnce() -> I) {
        if let Some(touched) = self.lock().as_mut() {
            for node in nodes() {
                if touched.nodes.len() >= BARRIER_LIMIT {
                    touched.overflow = true;
                    return;
                }
                touched.nodes.push(node);
            }
        }
    }

    /// A blob record written (created, or its labels changed) in `namespace`.
    pub(crate) fn content(&self, namespace: &str, digest: &str) {
        self.note(|| [Node::Content((namespace.to_string(), digest.to_string()))]);
    }

    /// A snapshot record written (created, committed, or its labels changed): its parent and
    /// labels are read again from it.
    pub(crate) fn snapshot(&self, namespace: &str, snapshotter: &str, key: &str) {
        self.note(|| {
            [Node::Snapshot((
                namespace.to_string(),
                snapshotter.to_string(),
                key.to_string(),
            ))]
        });
    }

    /// A resource added to a lease: `kind` as in the lease's resources table (`content`,
    /// `snapshots/<snapshotter>`; ingests are never collected).
    pub(crate) fn resource(&self, namespace: &str, kind: &str, id: &str) {
        if kind == "content" {
            self.content(namespace, id);
        } else if let Some(snapshotter) = kind.strip_prefix("snapshots/") {
            self.snapshot(namespace, snapshotter, id);
        }
    }

    /// An image, container or lease written with these labels: what their
    /// `containerd.io/gc.ref.*` labels name.
    pub(crate) fn labels(
        &self,
        namespace: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) {
        self.note(|| {
            let mut nodes = Vec::new();
            push_refs(&mut nodes, namespace, &Refs::of(labels));
            nodes.into_iter().map(|(node, _)| node)
        });
    }

    /// A lease created: it is not the expired lease of the same id the mark may have found.
    pub(crate) fn lease(&self, namespace: &str, id: &str) {
        if let Some(touched) = self.lock().as_mut() {
            touched
                .leases
                .insert((namespace.to_string(), id.to_string()));
        }
    }
}

/// A lease's expiry: `None` when it has none or it does not parse (then it never expires,
/// as in containerd).
pub(crate) fn expiry(labels: &std::collections::BTreeMap<String, String>) -> Option<SystemTime> {
    let value = labels.get(LABEL_EXPIRE)?;
    if !go_rfc3339(value) {
        return None;
    }
    let time: jiff::Timestamp = value.parse().ok()?;
    Some(SystemTime::from(time))
}

/// Whether Go's `time.Parse(time.RFC3339, value)` (containerd's reading of
/// `containerd.io/gc.expire`) takes `value`: `YYYY-MM-DDTHH:MM:SS`, optional fractional
/// seconds, then `Z` or `±HH:MM`. jiff takes more (a space or `t` for the `T`, no seconds,
/// `z`, the basic format, an `[annotation]`), which containerd ignores, and so must we: a
/// lease containerd never expires must not lose what it holds here.
fn go_rfc3339(value: &str) -> bool {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    rest == b"Z"
        || (rest.len() == 6
            && matches!(rest[0], b'+' | b'-')
            && rest[1..3].iter().all(u8::is_ascii_digit)
            && rest[3] == b':'
            && rest[4..6].iter().all(u8::is_ascii_digit))
}

fn decode<M: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<M, Error> {
    M::decode(bytes).map_err(|e| {
        Error::data_loss(format!(
            "the metadata record of {what} does not decode: {e}; the database is damaged"
        ))
    })
}

/// The tables a graph is loaded from (of a read or a write transaction).
struct Tables<C, CL, S, SL, I, K, L, R> {
    content: C,
    content_labels: CL,
    snapshots: S,
    snapshot_labels: SL,
    images: I,
    containers: K,
    leases: L,
    resources: R,
}

type Bytes = &'static [u8];
type Pair = (&'static str, &'static str);

impl<C, CL, S, SL, I, K, L, R> Tables<C, CL, S, SL, I, K, L, R>
where
    C: ReadableTable<Pair, (u64, u64, u64)>,
    CL: ReadableTable<(&'static str, &'static str, &'static str), &'static str>,
    S: ReadableTable<SnapshotKey, SnapshotValue>,
    SL: ReadableTable<SnapshotLabelKey, &'static str>,
    I: ReadableTable<Pair, Bytes>,
    K: ReadableTable<Pair, Bytes>,
    L: ReadableTable<Pair, Bytes>,
    R: ReadableTable<LeaseResourceKey, ()>,
{
    fn graph(&self, now: SystemTime) -> Result<Graph, Error> {
        let mut graph = Graph::default();
        // Records and their labels are read side by side: both tables are sorted by the
        // record's key, so each record's labels follow the ones before it, and no label
        // needs a lookup of its record (a label without a record is passed over).
        let mut labels = self.content_labels.iter().map_err(storage)?;
        let mut label = labels.next().transpose().map_err(storage)?;
        for item in self.content.iter().map_err(storage)? {
            let (key, _) = item.map_err(storage)?;
            let (ns, digest) = key.value();
            let mut refs = Refs::default();
            while let Some((label_key, value)) = &label {
                let (n, d, name) = label_key.value();
                match (n, d).cmp(&(ns, digest)) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        if name.starts_with(GC_LABELS) {
                            refs.add(name, value.value());
                        }
                    }
                    Ordering::Greater => break,
                }
                label = labels.next().transpose().map_err(storage)?;
            }
            graph
                .content
                .push(((ns.to_string(), digest.to_string()), refs));
        }
        let mut labels = self.snapshot_labels.iter().map_err(storage)?;
        let mut label = labels.next().transpose().map_err(storage)?;
        for item in self.snapshots.iter().map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let (ns, sn, name) = key.value();
            let (_, parent, backend, _, _) = value.value();
            let mut refs = Refs::default();
            while let Some((label_key, value)) = &label {
                let (n, s, k, label_name) = label_key.value();
                match (n, s, k).cmp(&(ns, sn, name)) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        if label_name.starts_with(GC_LABELS) {
                            refs.add(label_name, value.value());
                        }
                    }
                    Ordering::Greater => break,
                }
                label = labels.next().transpose().map_err(storage)?;
            }
            graph.snapshots.push((
                (ns.to_string(), sn.to_string(), name.to_string()),
                SnapshotNode {
                    parent: parent.to_string(),
                    backend: backend.to_string(),
                    refs,
                },
            ));
        }
        // The tables' order is the keys' (a tuple of strings compares as Rust's does), and
        // searches rely on it: sorting makes sure of it at the cost of one pass, since the
        // standard sort finds a sorted input in linear time.
        graph.content.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        graph.snapshots.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut roots = Vec::new();
        for (id, refs) in &graph.content {
            if refs.root {
                roots.push((Node::Content(id.clone()), false));
            }
        }
        for (id, node) in &graph.snapshots {
            if node.refs.root {
                roots.push((Node::Snapshot(id.clone()), false));
            }
        }
        for item in self.images.iter().map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let (ns, name) = key.value();
            let image: ImageRecord = decode(&format!("image {name:?}"), value.value())?;
            roots.push((Node::Content((ns.to_string(), image.digest)), false));
            push_refs(&mut roots, ns, &Refs::of(&image.labels));
        }
        for item in self.containers.iter().map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let (ns, id) = key.value();
            let container: ContainerRecord = decode(&format!("container {id:?}"), value.value())?;
            if !container.snapshotter.is_empty() {
                roots.push((
                    Node::Snapshot((
                        ns.to_string(),
                        container.snapshotter.clone(),
                        container.snapshot_key.clone(),
                    )),
                    false,
                ));
            }
            push_refs(&mut roots, ns, &Refs::of(&container.labels));
        }
        let mut live: HashMap<(String, String), bool> = HashMap::new();
        for item in self.leases.iter().map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let (ns, id) = key.value();
            let lease: LeaseRecord = decode(&format!("lease {id:?}"), value.value())?;
            match expiry(&lease.labels) {
                Some(at) if at < now => {
                    graph.expired.push((ns.to_string(), id.to_string()));
                    continue;
                }
                Some(at) => {
                    graph.next_expiry = Some(graph.next_expiry.map_or(at, |next| next.min(at)));
                }
                None => {}
            }
            let flat = lease.labels.contains_key(LABEL_FLAT);
            if !flat {
                push_refs(&mut roots, ns, &Refs::of(&lease.labels));
            }
            live.insert((ns.to_string(), id.to_string()), flat);
        }
        // Rows come sorted by lease: one lookup per lease, not per row.
        let mut last: Option<((String, String), Option<bool>)> = None;
        let mut rows = self.resources.iter().map_err(storage)?;
        while let Some(item) = rows.next() {
            let (key, _) = item.map_err(storage)?;
            let (ns, lease, kind, id) = key.value();
            let held = match &last {
                Some(((n, l), held)) if n == ns && l == lease => *held,
                _ => {
                    let id = (ns.to_string(), lease.to_string());
                    let held = live.get(&id).copied();
                    last = Some((id, held));
                    held
                }
            };
            let Some(flat) = held else {
                // A deleted or expired lease's rows: removed after the collection. One seek
                // passes them all: the lease's id followed by NUL is the least id after it.
                graph.stale_resources = true;
                let past = format!("{lease}\0");
                rows = self
                    .resources
                    .range((ns, past.as_str(), "", "")..)
                    .map_err(storage)?;
                continue;
            };
            if kind == "content" {
                roots.push((Node::Content((ns.to_string(), id.to_string())), flat));
            } else if let Some(snapshotter) = kind.strip_prefix("snapshots/") {
                roots.push((
                    Node::Snapshot((ns.to_string(), snapshotter.to_string(), id.to_string())),
                    flat,
                ));
            }
            // Ingests are roots of their own: collection never touches one.
        }
        graph.roots = roots;
        Ok(graph)
    }
}

fn push_refs(out: &mut Vec<(Node, bool)>, ns: &str, refs: &Refs) {
    for digest in &refs.content {
        out.push((Node::Content((ns.to_string(), digest.clone())), false));
    }
    for (snapshotter, key) in &refs.snapshots {
        out.push((
            Node::Snapshot((ns.to_string(), snapshotter.clone(), key.clone())),
            false,
        ));
    }
}

/// What the mark left unmarked: to be removed. Blobs and snapshots are in key order, which
/// [`sweep`]'s one pass over the labels tables ([`labels_of`]) relies on.
#[derive(Debug, Default)]
struct Garbage {
    content: Vec<ContentId>,
    /// Each with its backend snapshot's name.
    snapshots: Vec<(SnapshotId, String)>,
    leases: Vec<(String, String)>,
    next_expiry: Option<SystemTime>,
    /// Lease resource rows of leases that are gone (or expired) are left to remove.
    stale_resources: bool,
}

impl Graph {
    /// The record `node` names, if there is one.
    fn find(&self, node: Ref<'_>) -> Option<Index> {
        match node {
            Ref::Content(ns, digest) => self
                .content
                .binary_search_by(|((n, d), _)| (n.as_str(), d.as_str()).cmp(&(ns, digest)))
                .ok()
                .map(Index::Content),
            Ref::Snapshot(ns, sn, key) => self
                .snapshots
                .binary_search_by(|((n, s, k), _)| {
                    (n.as_str(), s.as_str(), k.as_str()).cmp(&(ns, sn, key))
                })
                .ok()
                .map(Index::Snapshot),
        }
    }

    /// Marks from the roots and returns what is left.
    fn mark(mut self) -> Garbage {
        /// A record's state in the mark: not reached, reached flat only, references followed.
        const UNMARKED: u8 = 0;
        const FLAT: u8 = 1;
        const FULL: u8 = 2;
        let mut content = vec![UNMARKED; self.content.len()];
        let mut snapshots = vec![UNMARKED; self.snapshots.len()];
        let roots = std::mem::take(&mut self.roots);
        let mut stack: Vec<(Index, bool)> = Vec::with_capacity(roots.len());
        for (node, flat) in &roots {
            stack.extend(self.find(Ref::of(node)).map(|index| (index, *flat)));
        }
        drop(roots);
        while let Some((index, flat)) = stack.pop() {
            let state = match index {
                Index::Content(i) => &mut content[i],
                Index::Snapshot(i) => &mut snapshots[i],
            };
            // A blob reached flat follows nothing; a snapshot reached flat follows its
            // parent, flat, once.
            let expand = match (index, flat) {
                (Index::Content(_), true) => false,
                (_, true) => *state == UNMARKED,
                (_, false) => *state != FULL,
            };
            *state = if flat { (*state).max(FLAT) } else { FULL };
            if expand {
                self.references(index, flat, |node, flat| {
                    stack.extend(self.find(node).map(|index| (index, flat)));
                });
            }
        }
        let Graph {
            content: content_records,
            snapshots: snapshot_records,
            expired,
            next_expiry,
            stale_resources,
            ..
        } = self;
        // In key order (the graph's): the sweep then removes neighbours one after the
        // other, and each B-tree page it changes is copied once and stays in cache.
        Garbage {
            content: content_records
                .into_iter()
                .zip(content)
                .filter(|(_, state)| *state == UNMARKED)
                .map(|((id, _), _)| id)
                .collect(),
            snapshots: snapshot_records
                .into_iter()
                .zip(snapshots)
                .filter(|(_, state)| *state == UNMARKED)
                .map(|((id, node), _)| (id, node.backend))
                .collect(),
            leases: expired,
            next_expiry,
            stale_resources,
        }
    }

    /// Calls `each` with what the record at `index` refers to, and whether it is reached
    /// flat: a blob, what its labels name (unless reached flat); a snapshot, its parent
    /// (reached as it was) and what its labels name (unless flat). A reference may name
    /// something without a record.
    fn references<'a>(&'a self, index: Index, flat: bool, mut each: impl FnMut(Ref<'a>, bool)) {
        let (ns, refs) = match index {
            Index::Content(i) => {
                let ((ns, _), refs) = &self.content[i];
                (ns, refs)
            }
            Index::Snapshot(i) => {
                let ((ns, sn, _), snapshot) = &self.snapshots[i];
                if !snapshot.parent.is_empty() {
                    each(Ref::Snapshot(ns, sn, &snapshot.parent), flat);
                }
                (ns, &snapshot.refs)
            }
        };
        if flat {
            return;
        }
        for digest in &refs.content {
            each(Ref::Content(ns, digest), false);
        }
        for (snapshotter, key) in &refs.snapshots {
            each(Ref::Snapshot(ns, snapshotter, key), false);
        }
    }
}

impl Garbage {
    /// The backend snapshots of the swept snapshot records: (snapshotter, name).
    fn backend(&self) -> HashSet<(String, String)> {
        self.snapshots
            .iter()
            .map(|((_, sn, _), backend)| (sn.clone(), backend.clone()))
            .collect()
    }

    /// Keeps what the writes noted in `touched` made reachable since the mark: walks, in
    /// `txn`, from each noted object through unmarked ones (see [`Barrier`] for why that is
    /// enough). Returns how many objects it visited.
    fn recheck(&mut self, txn: &redb::WriteTransaction, touched: Touched) -> Result<u64, Error> {
        let content_labels = txn.open_table(CONTENT_LABELS).map_err(storage)?;
        let snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let snapshot_labels = txn.open_table(SNAPSHOT_LABELS).map_err(storage)?;
        let (kept, visited) = {
            let unmarked_content: HashSet<&ContentId> = self.content.iter().collect();
            let unmarked_snapshots: HashSet<&SnapshotId> =
                self.snapshots.iter().map(|(id, _)| id).collect();
            let mut kept_content: HashSet<ContentId> = HashSet::new();
            let mut kept_snapshots: HashSet<SnapshotId> = HashSet::new();
            let mut expanded: HashSet<Node> = HashSet::new();
            let mut stack: Vec<(Node, bool)> =
                touched.nodes.into_iter().map(|node| (node, true)).collect();
            while let Some((node, noted)) = stack.pop() {
                let unmarked = match &node {
                    Node::Content(id) => unmarked_content.contains(id),
                    Node::Snapshot(id) => unmarked_snapshots.contains(id),
                };
                if !(noted || unmarked) || expanded.contains(&node) {
                    continue;
                }
                let mut next = Vec::new();
                match &node {
                    Node::Content((ns, digest)) => {
                        let mut refs = Refs::default();
                        for item in content_labels
                            .range((ns.as_str(), digest.as_str(), GC_LABELS)..)
                            .map_err(storage)?
                        {
                            let (key, value) = item.map_err(storage)?;
                            let (n, d, label) = key.value();
                            if n != ns || d != digest || !label.starts_with(GC_LABELS) {
                                break;
                            }
                            refs.add(label, value.value());
                        }
                        push_refs(&mut next, ns, &refs);
                    }
                    Node::Snapshot((ns, sn, name)) => {
                        let key = (ns.as_str(), sn.as_str(), name.as_str());
                        if let Some(value) = snapshots.get(key).map_err(storage)? {
                            let (_, parent, _, _, _) = value.value();
                            if !parent.is_empty() {
                                next.push((
                                    Node::Snapshot((ns.clone(), sn.clone(), parent.to_string())),
                                    false,
                                ));
                            }
                        }
                        let mut refs = Refs::default();
                        for item in snapshot_labels
                            .range((ns.as_str(), sn.as_str(), name.as_str(), GC_LABELS)..)
                            .map_err(storage)?
                        {
                            let (key, value) = item.map_err(storage)?;
                            let (n, s, k, label) = key.value();
                            if n != ns || s != sn || k != name || !label.starts_with(GC_LABELS) {
                                break;
                            }
                            refs.add(label, value.value());
                        }
                        push_refs(&mut next, ns, &refs);
                    }
                }
                if unmarked {
                    match &node {
                        Node::Content(id) => kept_content.insert(id.clone()),
                        Node::Snapshot(id) => kept_snapshots.insert(id.clone()),
                    };
                }
                expanded.insert(node);
                stack.extend(next.into_iter().map(|(node, _)| (node, false)));
            }
            ((kept_content, kept_snapshots), expanded.len() as u64)
        };
        let (kept_content, kept_snapshots) = kept;
        self.content.retain(|id| !kept_content.contains(id));
        self.snapshots
            .retain(|(id, _)| !kept_snapshots.contains(id));
        self.leases.retain(|lease| !touched.leases.contains(lease));
        Ok(visited)
    }
}

/// The prefix of the labels collection reads.
const GC_LABELS: &str = "containerd.io/gc.";

/// The collector's tables of a read or a write transaction (whose `open_table`s return
/// different types, hence a macro rather than a function).
macro_rules! tables_of {
    ($txn:expr) => {
        Tables {
            content: $txn.open_table(CONTENT).map_err(storage)?,
            content_labels: $txn.open_table(CONTENT_LABELS).map_err(storage)?,
            snapshots: $txn.open_table(SNAPSHOTS).map_err(storage)?,
            snapshot_labels: $txn.open_table(SNAPSHOT_LABELS).map_err(storage)?,
            images: $txn.open_table(IMAGES).map_err(storage)?,
            containers: $txn.open_table(CONTAINERS).map_err(storage)?,
            leases: $txn.open_table(LEASES).map_err(storage)?,
            resources: $txn.open_table(LEASE_RESOURCES).map_err(storage)?,
        }
    };
}

fn mark_read(txn: &redb::ReadTransaction, now: SystemTime) -> Result<Garbage, Error> {
    Ok(tables_of!(txn).graph(now)?.mark())
}

fn mark_write(txn: &redb::WriteTransaction, now: SystemTime) -> Result<Garbage, Error> {
    Ok(tables_of!(txn).graph(now)?.mark())
}

/// How many rows of other records in a row [`labels_of`] reads before it seeks instead.
const SEEK_AFTER: usize = 16;

/// The label rows of `records` (sorted, as the labels table is) by one pass over the table:
/// each row's record is compared with the next record wanted, and after [`SEEK_AFTER`] rows
/// of other records the pass seeks to that record instead (`seek` opens the table from a
/// record on). Many records beside the table cost a scan, few cost a search each.
/// Returns (index in `records`, label name) pairs.
fn labels_of<G, R, I>(
    records: &[G],
    mut seek: impl FnMut(&G) -> Result<I, Error>,
    mut cmp: impl FnMut(&R, &G) -> Ordering,
    name: impl Fn(&R) -> String,
) -> Result<Vec<(usize, String)>, Error>
where
    I: Iterator<Item = Result<R, Error>>,
{
    let mut found = Vec::new();
    let mut next = 0;
    'seek: while let Some(record) = records.get(next) {
        let mut passed = 0;
        for row in seek(record)? {
            let row = row?;
            loop {
                let Some(record) = records.get(next) else {
                    break 'seek;
                };
                match cmp(&row, record) {
                    Ordering::Less => {
                        passed += 1;
                        if passed > SEEK_AFTER {
                            continue 'seek;
                        }
                    }
                    Ordering::Equal => {
                        passed = 0;
                        found.push((next, name(&row)));
                    }
                    Ordering::Greater => {
                        next += 1;
                        continue;
                    }
                }
                break;
            }
        }
        break;
    }
    Ok(found)
}

/// Removes what `garbage` names in `txn`.
fn sweep(txn: &redb::WriteTransaction, garbage: &Garbage) -> Result<(), Error> {
    {
        let mut content = txn.open_table(CONTENT).map_err(storage)?;
        let mut labels = txn.open_table(CONTENT_LABELS).map_err(storage)?;
        for (ns, digest) in &garbage.content {
            content
                .remove((ns.as_str(), digest.as_str()))
                .map_err(storage)?;
        }
        let rows = labels_of(
            &garbage.content,
            |(ns, digest)| {
                Ok(labels
                    .range((ns.as_str(), digest.as_str(), "")..)
                    .map_err(storage)?
                    .map(|row| row.map_err(storage)))
            },
            |(key, _), (ns, digest)| {
                let (n, d, _) = key.value();
                (n, d).cmp(&(ns, digest))
            },
            |(key, _)| key.value().2.to_string(),
        )?;
        for (i, label) in &rows {
            let (ns, digest) = &garbage.content[*i];
            labels
                .remove((ns.as_str(), digest.as_str(), label.as_str()))
                .map_err(storage)?;
        }
    }
    {
        let mut snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let mut labels = txn.open_table(SNAPSHOT_LABELS).map_err(storage)?;
        for ((ns, sn, key), _) in &garbage.snapshots {
            snapshots
                .remove((ns.as_str(), sn.as_str(), key.as_str()))
                .map_err(storage)?;
        }
        let rows = labels_of(
            &garbage.snapshots,
            |((ns, sn, name), _)| {
                Ok(labels
                    .range((ns.as_str(), sn.as_str(), name.as_str(), "")..)
                    .map_err(storage)?
                    .map(|row| row.map_err(storage)))
            },
            |(key, _), ((ns, sn, name), _)| {
                let (n, s, k, _) = key.value();
                (n, s, k).cmp(&(ns, sn, name))
            },
            |(key, _)| key.value().3.to_string(),
        )?;
        for (i, label) in &rows {
            let ((ns, sn, key), _) = &garbage.snapshots[*i];
            labels
                .remove((ns.as_str(), sn.as_str(), key.as_str(), label.as_str()))
                .map_err(storage)?;
        }
    }
    {
        // The expired leases' records only: their resource rows are removed after the
        // collection has answered, outside the writers' wait ([`remove_stale_resources`]).
        let mut leases = txn.open_table(LEASES).map_err(storage)?;
        for (ns, id) in &garbage.leases {
            leases.remove((ns.as_str(), id.as_str())).map_err(storage)?;
        }
    }
    Ok(())
}

/// A lease resource row's key, owned: (namespace, lease, kind, id).
type ResourceRow = (String, String, String, String);

/// Resource rows removed per write transaction by [`remove_stale_resources`]: the writers
/// wait for one batch at most (a few tens of milliseconds).
const STALE_BATCH: usize = 4096;

/// Removes up to [`STALE_BATCH`] lease resource rows whose lease no longer exists (a deleted
/// lease leaves its rows: see `LeaseManager::delete` in `objects.rs`), from `from` on, in one
/// write transaction. Returns how many it removed and where the next batch starts (`None`
/// when it reached the end of the table).
///
/// Rows of a lease that exists are never removed: the check and the removal are in one
/// write transaction, and a lease created under a deleted one's id removes the old rows in
/// its own (so they are never taken for its resources). Nothing reads the rows of a lease
/// that does not exist, so removing them changes no answer and no collection.
///
/// # Errors
/// Storage failure (nothing removed).
pub(crate) fn remove_stale_resources(
    db: &Db,
    from: Option<ResourceRow>,
) -> Result<(u64, Option<ResourceRow>), Error> {
    let txn = db.begin_write()?;
    let (stale, next) = {
        let leases = txn.open_table(LEASES).map_err(storage)?;
        let resources = txn.open_table(LEASE_RESOURCES).map_err(storage)?;
        let start = from.as_ref().map_or(("", "", "", ""), |(n, l, k, i)| {
            (n.as_str(), l.as_str(), k.as_str(), i.as_str())
        });
        let mut stale = Vec::new();
        let mut next = None;
        // Whether the lease of the rows just read exists: rows come sorted by lease.
        let mut last: Option<((String, String), bool)> = None;
        for item in resources.range(start..).map_err(storage)? {
            let (key, ()) = item.map(|(k, _)| (k, ())).map_err(storage)?;
            let (ns, lease, kind, id) = key.value();
            let owned = || {
                (
                    ns.to_string(),
                    lease.to_string(),
                    kind.to_string(),
                    id.to_string(),
                )
            };
            if stale.len() == STALE_BATCH {
                next = Some(owned());
                break;
            }
            let exists = match &last {
                Some(((n, l), exists)) if n == ns && l == lease => *exists,
                _ => {
                    let exists = leases.get((ns, lease)).map_err(storage)?.is_some();
                    last = Some(((ns.to_string(), lease.to_string()), exists));
                    exists
                }
            };
            if !exists {
                stale.push(owned());
            }
        }
        (stale, next)
    };
    {
        let mut resources = txn.open_table(LEASE_RESOURCES).map_err(storage)?;
        for (ns, lease, kind, id) in &stale {
            resources
                .remove((ns.as_str(), lease.as_str(), kind.as_str(), id.as_str()))
                .map_err(storage)?;
        }
    }
    txn.commit()?;
    Ok((stale.len() as u64, next))
}

/// The outcome of the mark and the sweep.
struct Swept {
    garbage: Garbage,
    mark: Duration,
    sweep: Duration,
    /// Writes landed between the mark and the sweep, which checked again what they touched.
    remarked: bool,
    /// They touched more than the barrier holds: the sweep marked everything again.
    full_remark: bool,
    /// Objects the sweep's check of the touched ones visited.
    rechecked: u64,
}

/// Whether any namespace holds `digest`, in `txn`.
fn held(
    namespaces: &[String],
    content: &impl ReadableTable<Pair, (u64, u64, u64)>,
    digest: &str,
) -> Result<bool, Error> {
    for ns in namespaces {
        if content
            .get((ns.as_str(), digest))
            .map_err(storage)?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn namespaces_in(txn: &redb::ReadTransaction) -> Result<Vec<String>, Error> {
    let table = txn.open_table(NAMESPACES).map_err(storage)?;
    let mut out = Vec::new();
    for item in table.iter().map_err(storage)? {
        let (key, _) = item.map_err(storage)?;
        out.push(key.value().to_string());
    }
    Ok(out)
}

/// Stops the barrier from noting when a collection ends before its sweep took the notes.
struct Disarm<'b>(&'b Barrier);

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// Steps 1 and 2: mark over a read snapshot, sweep in a write transaction (checking again,
/// inside it, what writes in between touched: see [`Barrier`]). `between` runs between the
/// two (tests race writes there).
fn mark_and_sweep(
    db: &Db,
    barrier: &Barrier,
    between: &(dyn Fn() + Send + Sync),
) -> Result<Swept, Error> {
    let start = Instant::now();
    let now = SystemTime::now();
    // The count, the snapshot and the barrier's arming together under the writer lock: a
    // commit is counted before it is visible, so only there is every counted commit in the
    // snapshot, and every write not in it noted by the barrier (and counted later, which
    // makes the sweep check). Writers wait only while the read transaction opens.
    let (seen, read, disarm) = {
        let writer = db.begin_write()?;
        let seen = db.commits();
        let read = db.begin_read()?;
        barrier.arm();
        let disarm = Disarm(barrier);
        drop(writer);
        (seen, read, disarm)
    };
    let mut garbage = mark_read(&read, now)?;
    drop(read);
    let mark = start.elapsed();
    between();
    let start = Instant::now();
    let txn = db.begin_write()?;
    // Holding the writer lock: nothing is noted or counted until this transaction ends.
    let touched = barrier.take();
    drop(disarm);
    let remarked = db.commits() != seen;
    let mut full_remark = false;
    let mut rechecked = 0;
    if remarked {
        match touched {
            Some(touched) if !touched.overflow => rechecked = garbage.recheck(&txn, touched)?,
            _ => {
                full_remark = true;
                garbage = mark_write(&txn, now)?;
            }
        }
    }
    sweep(&txn, &garbage)?;
    txn.commit()?;
    Ok(Swept {
        garbage,
        mark,
        sweep: start.elapsed(),
        remarked,
        full_remark,
        rechecked,
    })
}

impl Metadata {
    /// Tells the registered callbacks (see [`Collector::on_mutation`]) of a committed change.
    pub(crate) fn notify(&self, mutation: Mutation) {
        self.gc.notify(mutation);
    }

    /// [`Metadata::notify`] of a change that removed something (`dirty`) or not.
    pub(crate) fn mutated(&self, dirty: bool) {
        self.notify(Mutation {
            dirty,
            expiry: None,
        });
    }

    /// Deletes from the content store those of `digests` no namespace holds, checked again
    /// under the blob lock (content commits hold it shared), in batches so that a commit
    /// waits for one batch at most. With `detach` (a collection's many), each batch is
    /// detached under the lock ([`crate::content::ContentStore::detach_many`]) and its space
    /// freed behind it, up to [`FREEING`] batches at a time; without it (one client's
    /// delete), each is deleted whole under the lock, whose failures name the blob's own
    /// path. Returns, with how many were deleted, once all their space is freed.
    pub(crate) async fn delete_unheld_blobs(
        &self,
        digests: Vec<Digest>,
        detach: bool,
    ) -> Result<u64, Error> {
        let Some(store) = self.content.clone() else {
            return Ok(0);
        };
        let mut deleted = 0;
        let mut freeing = Freeings::default();
        let mut failed = None;
        for batch in digests.chunks(BLOB_BATCH) {
            let _exclusive = self.gc.deleting(batch).await;
            let db = Arc::clone(&self.db);
            let batch_owned = batch.to_vec();
            let unheld: Vec<Digest> = blocking(move || {
                let txn = db.begin_read()?;
                let namespaces = namespaces_in(&txn)?;
                let content = txn.open_table(CONTENT).map_err(storage)?;
                let mut out = Vec::new();
                for digest in batch_owned {
                    if !held(&namespaces, &content, digest.as_str())? {
                        out.push(digest);
                    }
                }
                Ok(out)
            })
            .await?;
            // One trip to the store's I/O thread for the batch.
            let results = if detach {
                let (results, space) = store.detach_many(&unheld).await;
                drop(_exclusive);
                if let Err(e) = freeing.push(space).await {
                    failed.get_or_insert(e);
                }
                results
            } else {
                store.delete_many(&unheld).await
            };
            for result in results {
                match result {
                    Ok(()) => deleted += 1,
                    Err(e) if e.category == plinth_core::Category::NotFound => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if failed.is_some() {
                break;
            }
        }
        if let Err(e) = freeing.wait().await {
            failed.get_or_insert(e);
        }
        match failed {
            Some(e) => {
                // Some of them may still be in the store: the next collection looks.
                self.gc
                    .content_dirty
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Err(e)
            }
            None => Ok(deleted),
        }
    }

    /// Step 3 for content: every blob of the store that no record holds (only `swept`,
    /// the blobs whose records this collection removed, when the stores are also served raw
    /// to other daemons: see [`crate::gc::served_raw`]).
    async fn collect_blobs(&self, swept: &[ContentId], only_swept: bool) -> Result<u64, Error> {
        let Some(store) = self.content.clone() else {
            return Ok(0);
        };
        // Taken before the listing: anything that sets it again after this is looked for
        // by the next collection.
        let dirty = !only_swept
            && self
                .gc
                .content_dirty
                .swap(false, std::sync::atomic::Ordering::SeqCst);
        if !dirty {
            let digests: BTreeSet<&str> = swept.iter().map(|(_, d)| d.as_str()).collect();
            let digests = digests
                .into_iter()
                .filter_map(|d| Digest::parse(d).ok())
                .collect();
            return self.delete_unheld_blobs(digests, true).await;
        }
        let scanned = self.collect_unheld_blobs(store).await;
        if scanned.is_err() {
            self.gc
                .content_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        scanned
    }

    /// Every blob of the store that no record holds, deleted.
    async fn collect_unheld_blobs(
        &self,
        store: Arc<dyn crate::content::ContentStore>,
    ) -> Result<u64, Error> {
        let listed = store.digests().await?;
        let db = Arc::clone(&self.db);
        let held: HashSet<String> = blocking(move || {
            let txn = db.begin_read()?;
            let content = txn.open_table(CONTENT).map_err(storage)?;
            let mut out = HashSet::new();
            for item in content.iter().map_err(storage)? {
                let (key, _) = item.map_err(storage)?;
                out.insert(key.value().1.to_string());
            }
            Ok(out)
        })
        .await?;
        let unheld: Vec<Digest> = listed
            .into_iter()
            .filter(|digest| !held.contains(digest.as_str()))
            .collect();
        self.delete_unheld_blobs(unheld, true).await
    }

    /// Step 3 for snapshots: every backend snapshot of every snapshotter that no record
    /// refers to, children first, each namespace's under that namespace's lock (only
    /// `swept`, those whose records this collection removed, when the stores are served raw).
    async fn collect_snapshots(
        &self,
        swept: &HashSet<(String, String)>,
        only_swept: bool,
    ) -> Result<u64, Error> {
        let mut removed = 0;
        let mut failures = Vec::new();
        let mut freeing = Freeings::default();
        for (name, backend) in &self.snapshotters {
            let listed = backend.walk(&[]).await?;
            let referenced = self.referenced_backend_keys(name, None).await?;
            // The namespaces with orphans (a backend key's first component).
            let mut namespaces: BTreeSet<String> = BTreeSet::new();
            for info in listed {
                if referenced.contains(&info.name)
                    || (only_swept && !swept.contains(&(name.clone(), info.name.clone())))
                {
                    continue;
                }
                namespaces.insert(info.name.split('/').next().unwrap_or_default().to_string());
            }
            for ns in namespaces {
                // Listed and checked again under the namespace's lock: a record written since
                // the first listing keeps its snapshot, and a snapshot its change created
                // meanwhile (whose record a sweep took) goes with its parent.
                let ordered = {
                    let _guard = self.snapshot_lock(&ns).await;
                    let referenced = self.referenced_backend_keys(name, Some(&ns)).await?;
                    let prefix = format!("{ns}/");
                    let orphans: Vec<Info> = backend
                        .walk(&[])
                        .await?
                        .into_iter()
                        .filter(|info| {
                            (info.name.starts_with(&prefix) || info.name == ns)
                                && !referenced.contains(&info.name)
                                && (!only_swept
                                    || swept.contains(&(name.clone(), info.name.clone())))
                        })
                        .collect();
                    children_first(orphans)
                };
                // Then a batch at a time, each under the lock again (so a snapshot change
                // waits for one batch at most): a backend that commits its own records
                // durably removes a batch in one transaction. What was an orphan under the
                // lock stays one: backend keys are never reused, and a change needs its
                // parent's record, which the sweep took.
                for keys in ordered.chunks(SNAPSHOT_BATCH) {
                    let (results, space) = {
                        let _guard = self.snapshot_lock(&ns).await;
                        backend.detach_many(keys).await
                    };
                    if let Err(e) = freeing.push(space).await {
                        failures.push(format!("{name}: {e}"));
                    }
                    for (key, result) in keys.iter().zip(results) {
                        match result {
                            Ok(()) => removed += 1,
                            Err(e) if e.category == plinth_core::Category::NotFound => {}
                            Err(e) => {
                                tracing::warn!(snapshotter = %name, key = %key, error = %e, "collection could not remove a snapshot no record refers to");
                                failures.push(format!("{name}: {key}: {e}"));
                            }
                        }
                    }
                }
            }
            // Every directory freed before the cleanup (which would race to remove them)
            // and before the collection answers.
            if let Err(e) = freeing.wait().await {
                failures.push(format!("{name}: {e}"));
            }
            if !only_swept {
                // What the backend itself left half made or half removed (a crash inside
                // its own remove), as containerd's collection ends with the snapshotter's
                // cleanup; under every namespace's lock, as `Snapshotter::cleanup` is.
                let _all = self.snapshot_lock_all().await;
                match backend.cleanup().await {
                    Ok(()) => {}
                    Err(e) if e.category == plinth_core::Category::Unimplemented => {}
                    Err(e) => failures.push(format!("{name}: cleanup: {e}")),
                }
            }
        }
        if let Some(first) = failures.first() {
            return Err(Error::internal(format!(
                "collection removed the records, but {} backend snapshot(s) could not be removed (the next collection tries again); first: {first}",
                failures.len()
            )));
        }
        Ok(removed)
    }

    /// The backend keys the records of snapshotter `name` refer to (in `namespace` only, if
    /// given).
    async fn referenced_backend_keys(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<HashSet<String>, Error> {
        let db = Arc::clone(&self.db);
        let (name, namespace) = (name.to_string(), namespace.map(str::to_string));
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let mut out = HashSet::new();
            for item in table.iter().map_err(storage)? {
                let (key, value) = item.map_err(storage)?;
                let (ns, sn, _) = key.value();
                if sn == name && namespace.as_deref().is_none_or(|wanted| wanted == ns) {
                    out.insert(value.value().2.to_string());
                }
            }
            Ok(out)
        })
        .await
    }
}

/// What `work` gives, and the time from `start` until it finished.
async fn timed<T>(start: Instant, work: impl std::future::Future<Output = T>) -> (T, Duration) {
    let result = work.await;
    (result, start.elapsed())
}

/// The keys of `orphans`, each child before its parent (a cycle, which a backend cannot
/// hold, would be left out).
fn children_first(mut orphans: Vec<Info>) -> Vec<String> {
    let mut ordered = Vec::with_capacity(orphans.len());
    while !orphans.is_empty() {
        let parents: BTreeSet<String> = orphans.iter().map(|i| i.parent.clone()).collect();
        let (leaves, rest): (Vec<Info>, Vec<Info>) = orphans
            .into_iter()
            .partition(|i| !parents.contains(&i.name));
        if leaves.is_empty() {
            break;
        }
        ordered.extend(leaves.into_iter().map(|i| i.name));
        orphans = rest;
    }
    ordered
}

impl Metadata {
    /// One collection; `only_swept`: remove from the backends only what the sweep removed
    /// records of (see [`crate::gc::set_served_raw`]).
    pub(crate) async fn collect_now(&self, only_swept: bool) -> Result<Stats, Error> {
        let _running = self.gc.running.lock().await;
        let swept = {
            let db = Arc::clone(&self.db);
            let between = Arc::clone(&self.gc.between);
            let barrier = Arc::clone(&self.gc.barrier);
            blocking(move || mark_and_sweep(&db, &barrier, between.as_ref())).await?
        };
        let start = Instant::now();
        let swept_backend = swept.garbage.backend();
        // Blobs and snapshots side by side: different files, different locks.
        let ((blobs, blob_removal), (backend_snapshots, snapshot_removal)) = tokio::join!(
            timed(
                start,
                self.collect_blobs(&swept.garbage.content, only_swept)
            ),
            timed(start, self.collect_snapshots(&swept_backend, only_swept)),
        );
        let stats = Stats {
            content: swept.garbage.content.len() as u64,
            snapshots: swept.garbage.snapshots.len() as u64,
            leases: swept.garbage.leases.len() as u64,
            blobs: blobs.as_ref().map_or(0, |n| *n),
            backend_snapshots: backend_snapshots.as_ref().map_or(0, |n| *n),
            mark: swept.mark,
            sweep: swept.sweep,
            backend: start.elapsed(),
            blob_removal,
            snapshot_removal,
            remarked: swept.remarked,
            next_expiry: swept.garbage.next_expiry,
        };
        tracing::debug!(
            content = stats.content,
            snapshots = stats.snapshots,
            leases = stats.leases,
            blobs = stats.blobs,
            backend_snapshots = stats.backend_snapshots,
            mark_ms = stats.mark.as_secs_f64() * 1e3,
            sweep_ms = stats.sweep.as_secs_f64() * 1e3,
            backend_ms = stats.backend.as_secs_f64() * 1e3,
            blob_removal_ms = stats.blob_removal.as_secs_f64() * 1e3,
            snapshot_removal_ms = stats.snapshot_removal.as_secs_f64() * 1e3,
            remarked = stats.remarked,
            full_remark = swept.full_remark,
            rechecked = swept.rechecked,
            "collected"
        );
        // Expired leases swept here had their rows counted as stale by the graph already.
        if swept.garbage.stale_resources {
            self.remove_stale_resources_behind();
        }
        blobs?;
        backend_snapshots?;
        Ok(stats)
    }

    /// Starts removing, behind the collection's answer, the resource rows of leases that no
    /// longer exist, a batch per write transaction ([`remove_stale_resources`]); nothing
    /// when the removal a collection started earlier is still running (the next collection
    /// finds what it leaves).
    fn remove_stale_resources_behind(&self) {
        let mut running = self
            .gc
            .stale_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if running.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let db = Arc::clone(&self.db);
        *running = Some(tokio::spawn(async move {
            let start = Instant::now();
            let mut removed = 0;
            let mut from = None;
            loop {
                let db = Arc::clone(&db);
                match blocking(move || remove_stale_resources(&db, from)).await {
                    Ok((n, next)) => {
                        removed += n;
                        match next {
                            Some(next) => from = Some(next),
                            None => break,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not remove the resource rows of deleted leases; the next collection tries again");
                        return;
                    }
                }
            }
            tracing::debug!(
                removed,
                ms = start.elapsed().as_secs_f64() * 1e3,
                "removed the resource rows of deleted leases"
            );
        }));
    }

    /// Waits for the removal of stale lease resource rows the last collection started.
    #[cfg(all(test, feature = "content-local", feature = "snapshotter-native"))]
    pub(crate) async fn stale_resources_removed(&self) {
        let task = self
            .gc
            .stale_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.await.unwrap();
        }
    }
}

#[tonic::async_trait]
impl Collector for Metadata {
    async fn collect(&self) -> Result<Stats, Error> {
        self.collect_now(crate::gc::served_raw()).await
    }

    fn on_mutation(&self, callback: MutationCallback) {
        self.gc
            .callbacks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(callback);
    }
}

#[cfg(all(test, feature = "content-local", feature = "snapshotter-native"))]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::containers::ContainerStore;
    use crate::content::ContentStore;
    use crate::content::local::LocalStore;
    use crate::images::{Descriptor, Image, ImageStore};
    use crate::leases::{LeaseManager, Resource};
    use crate::metadata::SharingPolicy;
    use crate::namespaces::{Labels, NamespacedStores};
    use crate::snapshots::Snapshotter;
    use crate::snapshots::native::NativeSnapshotter;

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// A collection keeps up to `FREEING` batches being freed behind it and waits for the
    /// oldest only when one more comes: fewer would leave the disk idle while the database
    /// commits; more would start threads without bound.
    #[test]
    fn up_to_freeing_batches_are_freed_behind_the_collection() {
        let mut freeings = Freeings::default();
        let mut senders = std::collections::VecDeque::new();
        for n in 0..FREEING {
            let (sender, freeing) = Freeing::pending();
            senders.push_back(sender);
            let push = std::pin::pin!(freeings.push(freeing));
            assert!(
                matches!(poll_once(push), std::task::Poll::Ready(Ok(()))),
                "batch {n} waited although only {n} were being freed"
            );
        }
        for round in 0..2 {
            let (sender, freeing) = Freeing::pending();
            let mut push = std::pin::pin!(freeings.push(freeing));
            assert!(
                poll_once(push.as_mut()).is_pending(),
                "round {round}: a batch was added while {FREEING} were being freed"
            );
            let oldest = senders.pop_front().unwrap();
            oldest.send(Ok(())).unwrap();
            assert!(matches!(
                poll_once(push.as_mut()),
                std::task::Poll::Ready(Ok(()))
            ));
            senders.push_back(sender);
        }
        assert_eq!(freeings.0.len(), FREEING);
        // The failure of a batch reaches whoever waits for it.
        {
            let mut pushed = std::pin::pin!(freeings.push(Freeing::done()));
            assert!(poll_once(pushed.as_mut()).is_pending());
            senders
                .pop_front()
                .unwrap()
                .send(Err(Error::internal("freeing failed")))
                .unwrap();
            assert!(matches!(poll_once(pushed), std::task::Poll::Ready(Err(_))));
        }
        for sender in senders {
            sender.send(Ok(())).unwrap();
        }
        let wait = std::pin::pin!(freeings.wait());
        assert!(matches!(poll_once(wait), std::task::Poll::Ready(Ok(()))));
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        metadata: Arc<Metadata>,
        local: Arc<dyn ContentStore>,
        native: Arc<dyn Snapshotter>,
    }

    fn fixture(policy: SharingPolicy, between: Option<Arc<dyn Fn() + Send + Sync>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ContentStore> =
            Arc::new(LocalStore::open(&dir.path().join("content")).unwrap());
        let native: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(&dir.path().join("native")).unwrap());
        let mut metadata = Metadata::open_with(
            &dir.path().join("meta.db"),
            Some(Arc::clone(&local)),
            BTreeMap::from([("native".to_string(), Arc::clone(&native))]),
            policy,
        )
        .unwrap();
        if let Some(between) = between {
            metadata.gc.between = between;
        }
        Fixture {
            _dir: dir,
            metadata: Arc::new(metadata),
            local,
            native,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    async fn blob(f: &Fixture, ns: &str, data: &str, with: Labels) -> Digest {
        let store = Arc::clone(&f.metadata).content(ns).unwrap();
        let mut writer = store.writer(data, 0, None).await.unwrap();
        writer.write(data.as_bytes()).await.unwrap();
        let digest = writer.commit(0, None, with).await.unwrap();
        writer.close().await.unwrap();
        digest
    }

    /// Puts `data` in the content store with no record (a crash's leftover, or another
    /// daemon's blob in a store served raw).
    async fn raw_blob(f: &Fixture, data: &[u8]) -> Digest {
        let mut writer = f.local.writer("raw", 0, None).await.unwrap();
        writer.write(data).await.unwrap();
        let digest = writer.commit(0, None, Labels::new()).await.unwrap();
        writer.close().await.unwrap();
        digest
    }

    /// Prepares `key` on `parent` and commits it as `name`.
    async fn committed(f: &Fixture, ns: &str, name: &str, parent: &str) {
        let snapshotter = Arc::clone(&f.metadata).snapshotter(ns, "native").unwrap();
        let key = format!("{name}-active");
        snapshotter
            .prepare(&key, parent, Labels::new())
            .await
            .unwrap();
        snapshotter.commit(name, &key, Labels::new()).await.unwrap();
    }

    fn image(name: &str, digest: &Digest) -> Image {
        Image::new(
            name,
            Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
                digest: digest.as_str().to_string(),
                size: 1,
                annotations: Labels::new(),
            },
        )
    }

    async fn has_blob(f: &Fixture, ns: &str, digest: &Digest) -> bool {
        Arc::clone(&f.metadata)
            .content(ns)
            .unwrap()
            .info(digest)
            .await
            .is_ok()
    }

    async fn in_store(f: &Fixture, digest: &Digest) -> bool {
        f.local.info(digest).await.is_ok()
    }

    async fn snapshots(f: &Fixture, ns: &str) -> BTreeSet<String> {
        Arc::clone(&f.metadata)
            .snapshotter(ns, "native")
            .unwrap()
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.name)
            .collect()
    }

    /// An image keeps its target, what the target's labels refer to (content and a snapshot
    /// chain), and nothing else; a gc.root blob stays on its own; the rest goes from the
    /// records and from the store and the snapshotter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_image_keeps_its_graph_and_the_rest_is_collected() {
        let f = fixture(SharingPolicy::Shared, None);
        committed(&f, "a", "base", "").await;
        committed(&f, "a", "top", "base").await;
        committed(&f, "a", "stray", "").await;
        let layer = blob(&f, "a", "layer", Labels::new()).await;
        let config = blob(
            &f,
            "a",
            "config",
            labels(&[("containerd.io/gc.ref.snapshot.native/x", "top")]),
        )
        .await;
        let manifest = blob(
            &f,
            "a",
            "manifest",
            labels(&[
                ("containerd.io/gc.ref.content.config", config.as_str()),
                ("containerd.io/gc.ref.content.l.0", layer.as_str()),
            ]),
        )
        .await;
        let rooted = blob(&f, "a", "rooted", labels(&[(crate::gc::LABEL_ROOT, "x")])).await;
        let stray = blob(&f, "a", "stray", Labels::new()).await;
        // Not a reference: the key must be gc.ref.content alone or followed by . or /.
        let misnamed = blob(
            &f,
            "a",
            "misnamed",
            labels(&[("containerd.io/gc.ref.contentx", stray.as_str())]),
        )
        .await;
        ImageStore::create(f.metadata.as_ref(), "a", image("img", &manifest)).unwrap();

        let stats = f.metadata.collect().await.unwrap();
        assert_eq!(
            (stats.content, stats.snapshots, stats.leases),
            (2, 1, 0),
            "{stats:?}"
        );
        assert_eq!((stats.blobs, stats.backend_snapshots), (2, 1), "{stats:?}");
        assert!(!stats.remarked);
        for kept in [&layer, &config, &manifest, &rooted] {
            assert!(has_blob(&f, "a", kept).await, "{kept}");
            assert!(in_store(&f, kept).await, "{kept}");
        }
        for gone in [&stray, &misnamed] {
            assert!(!has_blob(&f, "a", gone).await, "{gone}");
            assert!(!in_store(&f, gone).await, "{gone}");
        }
        assert_eq!(
            snapshots(&f, "a").await,
            BTreeSet::from(["base".to_string(), "top".to_string()])
        );
        assert_eq!(f.native.walk(&[]).await.unwrap().len(), 2);

        // Removing the image leaves nothing but the root.
        ImageStore::delete(f.metadata.as_ref(), "a", "img").unwrap();
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!((stats.content, stats.snapshots), (3, 2), "{stats:?}");
        assert!(has_blob(&f, "a", &rooted).await);
        assert!(snapshots(&f, "a").await.is_empty());
        assert!(f.native.walk(&[]).await.unwrap().is_empty());
        assert_eq!(f.local.walk(&[]).await.unwrap().len(), 1);
    }

    /// Under the shared policy a blob leaves the store only when no namespace holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_another_namespace_holds_stays_in_the_store() {
        let f = fixture(SharingPolicy::Shared, None);
        let kept = blob(&f, "b", "both", Labels::new()).await;
        ImageStore::create(f.metadata.as_ref(), "b", image("img", &kept)).unwrap();
        assert_eq!(blob(&f, "a", "both", Labels::new()).await, kept);
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!((stats.content, stats.blobs), (1, 0), "{stats:?}");
        assert!(!has_blob(&f, "a", &kept).await);
        assert!(has_blob(&f, "b", &kept).await);
        assert!(in_store(&f, &kept).await);
    }

    /// A live lease keeps its resources (and, unless flat, what they refer to); an expired
    /// one is removed with its resources, and reported as the next expiry before that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_keep_their_resources_until_they_expire() {
        let f = fixture(SharingPolicy::Shared, None);
        let referred = blob(&f, "a", "referred", Labels::new()).await;
        let held = blob(
            &f,
            "a",
            "held",
            labels(&[("containerd.io/gc.ref.content", referred.as_str())]),
        )
        .await;
        let flat_referred = blob(&f, "a", "flat-referred", Labels::new()).await;
        let flat_held = blob(
            &f,
            "a",
            "flat-held",
            labels(&[("containerd.io/gc.ref.content", flat_referred.as_str())]),
        )
        .await;
        committed(&f, "a", "parent", "").await;
        committed(&f, "a", "child", "parent").await;
        let leases: &dyn LeaseManager = f.metadata.as_ref();
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        leases
            .create(
                "a",
                "live",
                labels(&[(crate::gc::LABEL_EXPIRE, &later.to_string())]),
            )
            .unwrap();
        leases
            .create("a", "flat", labels(&[(crate::gc::LABEL_FLAT, "")]))
            .unwrap();
        leases
            .create(
                "a",
                "old",
                labels(&[(crate::gc::LABEL_EXPIRE, "2020-01-01T00:00:00Z")]),
            )
            .unwrap();
        let resource = |kind: &str, id: &str| Resource {
            kind: kind.to_string(),
            id: id.to_string(),
        };
        leases
            .add_resource("a", "live", &resource("content", held.as_str()))
            .unwrap();
        leases
            .add_resource("a", "flat", &resource("content", flat_held.as_str()))
            .unwrap();
        // A flat lease still keeps a snapshot's parents: a snapshot cannot exist without.
        leases
            .add_resource("a", "flat", &resource("snapshots/native", "child"))
            .unwrap();
        let old_blob = blob(&f, "a", "old", Labels::new()).await;
        leases
            .add_resource("a", "old", &resource("content", old_blob.as_str()))
            .unwrap();

        let stats = f.metadata.collect().await.unwrap();
        assert_eq!(
            (stats.content, stats.snapshots, stats.leases),
            (2, 0, 1),
            "{stats:?}"
        );
        let next = stats.next_expiry.expect("the live lease expires");
        assert_eq!(
            jiff::Timestamp::try_from(next).unwrap().as_second(),
            later.as_second()
        );
        for kept in [&held, &referred, &flat_held] {
            assert!(has_blob(&f, "a", kept).await, "{kept}");
        }
        for gone in [&flat_referred, &old_blob] {
            assert!(!has_blob(&f, "a", gone).await, "{gone}");
            assert!(!in_store(&f, gone).await, "{gone}");
        }
        assert_eq!(
            snapshots(&f, "a").await,
            BTreeSet::from(["child".to_string(), "parent".to_string()])
        );
        let ids: Vec<String> = leases
            .list("a", &[])
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        assert_eq!(ids, ["flat", "live"]);
    }

    /// The lease resource rows of namespace `ns`, as (lease, kind, id).
    fn resource_rows(f: &Fixture, ns: &str) -> Vec<(String, String, String)> {
        let txn = f.metadata.db.begin_read().unwrap();
        let table = txn.open_table(LEASE_RESOURCES).unwrap();
        table
            .iter()
            .unwrap()
            .map(|item| {
                let (key, ()) = item.map(|(k, _)| (k, ())).unwrap();
                let (n, l, k, i) = key.value();
                (n.to_string(), (l.to_string(), k.to_string(), i.to_string()))
            })
            .filter(|(n, _)| n == ns)
            .map(|(_, row)| row)
            .collect()
    }

    /// A lease created under the id of a deleted one starts empty: the rows the old one left
    /// (removed only after a collection) are not its resources, and keep nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_created_again_does_not_hold_what_the_deleted_one_held() {
        let f = fixture(SharingPolicy::Shared, None);
        let leases: &dyn LeaseManager = f.metadata.as_ref();
        leases.create("a", "l", Labels::new()).unwrap();
        let digest = blob(&f, "a", "held by the old lease", Labels::new()).await;
        let resource = Resource {
            kind: "content".to_string(),
            id: digest.as_str().to_string(),
        };
        leases.add_resource("a", "l", &resource).unwrap();
        leases.delete("a", "l").unwrap();
        assert_eq!(
            resource_rows(&f, "a").len(),
            1,
            "the delete leaves the row for after a collection"
        );
        leases.create("a", "l", Labels::new()).unwrap();
        assert_eq!(leases.list_resources("a", "l").unwrap(), []);
        assert_eq!(resource_rows(&f, "a"), []);
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!(stats.content, 1, "{stats:?}");
        assert!(!has_blob(&f, "a", &digest).await);
    }

    /// Every committed change reaches every callback registered with `on_mutation` (the
    /// scheduler's deletion and mutation thresholds and its lease timer hear of changes
    /// only this way), once per change: whether it removed something, and a lease's expiry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_changes_reach_every_registered_callback() {
        let f = fixture(SharingPolicy::Shared, None);
        let heard: [Arc<std::sync::Mutex<Vec<Mutation>>>; 2] = Default::default();
        for log in &heard {
            let log = Arc::clone(log);
            f.metadata
                .on_mutation(Arc::new(move |mutation| log.lock().unwrap().push(mutation)));
        }
        let take = || {
            heard
                .each_ref()
                .map(|log| std::mem::take(&mut *log.lock().unwrap()))
        };
        let created = Mutation {
            dirty: false,
            expiry: None,
        };
        let removed = Mutation {
            dirty: true,
            expiry: None,
        };
        let leases: &dyn LeaseManager = f.metadata.as_ref();
        let expires = "2100-01-01T00:00:00Z";
        leases
            .create("a", "l", labels(&[(LABEL_EXPIRE, expires)]))
            .unwrap();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(4_102_444_800);
        let expiring = Mutation {
            dirty: false,
            expiry: Some(at),
        };
        assert_eq!(take(), [vec![expiring], vec![expiring]]);
        leases.delete("a", "l").unwrap();
        assert_eq!(take(), [vec![removed], vec![removed]]);
        let digest = blob(&f, "a", "heard", Labels::new()).await;
        assert_eq!(take(), [vec![created], vec![created]]);
        Arc::clone(&f.metadata)
            .content("a")
            .unwrap()
            .delete(&digest)
            .await
            .unwrap();
        assert_eq!(take(), [vec![removed], vec![removed]]);
    }

    /// Lease ids are per namespace: a deleted lease's rows are neither held by a live lease
    /// of the same id in the namespace just before it nor taken for the live one's just
    /// after it (their rows are neighbours in key order), in the mark and in the rows'
    /// removal after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_id_in_one_namespace_says_nothing_of_another() {
        let f = fixture(SharingPolicy::Shared, None);
        let leases: &dyn LeaseManager = f.metadata.as_ref();
        let mut held = Vec::new();
        for ns in ["a", "b", "c"] {
            leases.create(ns, "l", Labels::new()).unwrap();
            let digest = blob(&f, ns, &format!("held in {ns}"), Labels::new()).await;
            let resource = Resource {
                kind: "content".to_string(),
                id: digest.as_str().to_string(),
            };
            leases.add_resource(ns, "l", &resource).unwrap();
            held.push(digest);
        }
        leases.delete("b", "l").unwrap();
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!((stats.content, stats.leases), (1, 0), "{stats:?}");
        assert!(has_blob(&f, "a", &held[0]).await);
        assert!(!has_blob(&f, "b", &held[1]).await);
        assert!(has_blob(&f, "c", &held[2]).await);
        f.metadata.stale_resources_removed().await;
        let rows = |ns: &str| resource_rows(&f, ns).len();
        assert_eq!((rows("a"), rows("b"), rows("c")), (1, 0, 1));
    }

    /// The rows of deleted and expired leases go after a collection, batch after batch
    /// (more than one batch here, on both sides of a live lease's rows), and a live lease's
    /// rows stay; what they held is collected with the collection, not after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rows_of_deleted_and_expired_leases_are_removed_after_a_collection() {
        let f = fixture(SharingPolicy::Shared, None);
        let leases: &dyn LeaseManager = f.metadata.as_ref();
        // "m" is deleted and its id begins the live lease's: passing its rows must not pass
        // the live one's.
        for id in ["a-gone", "m", "m-live", "z-gone"] {
            leases.create("a", id, Labels::new()).unwrap();
        }
        leases
            .create(
                "a",
                "e-expired",
                labels(&[(crate::gc::LABEL_EXPIRE, "2020-01-01T00:00:00Z")]),
            )
            .unwrap();
        let held = blob(&f, "a", "held by a deleted lease", Labels::new()).await;
        let kept = blob(&f, "a", "held by the live lease", Labels::new()).await;
        let rows = |lease: &str, n: usize| -> Vec<(String, String, String)> {
            (0..n)
                .map(|i| {
                    (
                        lease.to_string(),
                        "content".to_string(),
                        format!("sha256:{i:064x}"),
                    )
                })
                .collect()
        };
        let mut written = rows("a-gone", STALE_BATCH + 10);
        written.extend(rows("e-expired", 20));
        written.extend(rows("m", 5));
        written.extend(rows("m-live", 30));
        written.extend(rows("z-gone", STALE_BATCH));
        written.push((
            "a-gone".to_string(),
            "content".to_string(),
            held.as_str().to_string(),
        ));
        written.push((
            "m-live".to_string(),
            "content".to_string(),
            kept.as_str().to_string(),
        ));
        {
            let txn = f.metadata.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(LEASE_RESOURCES).unwrap();
                for (lease, kind, id) in &written {
                    table
                        .insert(("a", lease.as_str(), kind.as_str(), id.as_str()), ())
                        .unwrap();
                }
            }
            txn.commit().unwrap();
        }
        leases.delete("a", "a-gone").unwrap();
        leases.delete("a", "m").unwrap();
        leases.delete("a", "z-gone").unwrap();
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!((stats.content, stats.leases), (1, 1), "{stats:?}");
        assert!(!has_blob(&f, "a", &held).await);
        assert!(has_blob(&f, "a", &kept).await);
        f.metadata.stale_resources_removed().await;
        let live: Vec<_> = written
            .iter()
            .filter(|(l, _, _)| l == "m-live")
            .cloned()
            .collect();
        let mut left = resource_rows(&f, "a");
        left.sort();
        let mut want = live.clone();
        want.sort();
        assert_eq!(left, want);
        assert_eq!(
            leases.list_resources("a", "m-live").unwrap().len(),
            live.len()
        );
        // A deleted lease alone (no expired one in the collection) has its rows removed too.
        leases.delete("a", "m-live").unwrap();
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!(stats.content, 1, "{stats:?}");
        f.metadata.stale_resources_removed().await;
        assert_eq!(resource_rows(&f, "a"), []);
        // A cleanup that has finished does not stop the next collection's from starting.
        for id in ["n", "o"] {
            leases.create("a", id, Labels::new()).unwrap();
            let resource = Resource {
                kind: "content".to_string(),
                id: format!("sha256:{:064x}", 1),
            };
            leases.add_resource("a", id, &resource).unwrap();
            leases.delete("a", id).unwrap();
            f.metadata.collect().await.unwrap();
            if id == "n" {
                let finished = || {
                    f.metadata
                        .gc
                        .stale_cleanup
                        .lock()
                        .unwrap()
                        .as_ref()
                        .is_some_and(|task| task.is_finished())
                };
                while !finished() {
                    tokio::task::yield_now().await;
                }
            }
        }
        f.metadata.stale_resources_removed().await;
        assert_eq!(resource_rows(&f, "a"), []);
    }

    /// A write that lands between the mark and the sweep and makes an unmarked blob
    /// reachable keeps it: the sweep checks what the write touched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reference_written_after_the_mark_keeps_its_blob() {
        type Late = Option<(Arc<Metadata>, Digest)>;
        let slot: Arc<std::sync::Mutex<Late>> = Arc::default();
        let hook = Arc::clone(&slot);
        let between: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some((metadata, digest)) = hook.lock().unwrap().take() {
                ImageStore::create(metadata.as_ref(), "a", image("late", &digest)).unwrap();
            }
        });
        let f = fixture(SharingPolicy::Shared, Some(between));
        let late = blob(&f, "a", "late", Labels::new()).await;
        let stray = blob(&f, "a", "stray", Labels::new()).await;
        *slot.lock().unwrap() = Some((Arc::clone(&f.metadata), late.clone()));
        let stats = f.metadata.collect().await.unwrap();
        assert!(stats.remarked, "{stats:?}");
        assert_eq!(stats.content, 1, "{stats:?}");
        assert!(has_blob(&f, "a", &late).await);
        assert!(in_store(&f, &late).await);
        assert!(!has_blob(&f, "a", &stray).await);
    }

    /// One write raced between the mark and the sweep: it makes an unmarked object reachable
    /// (and with it what that object refers to, itself unmarked), and the sweep, checking
    /// only what the barrier noted, keeps exactly that and still removes the rest.
    struct Raced {
        case: &'static str,
        /// The write, run between the mark and the sweep.
        write: fn(&Arc<Metadata>, &Population),
        /// Whether it makes the blob pair (`target` → `leaf`) reachable; otherwise it makes
        /// the snapshot pair (`s2` on `s1`) reachable.
        keeps_blobs: bool,
    }

    /// What every case starts from: `target` (whose label refers to `leaf`) and the chain
    /// `s1` ← `s2` unreachable; `root` (gc.root), the image `img` on it, the container `ctr`,
    /// the lease `held` reachable or harmless; the lease `old` expired; `stray` unreachable.
    struct Population {
        target: Digest,
        root: Digest,
    }

    fn container(id: &str) -> crate::containers::Container {
        crate::containers::Container::new(
            id,
            "io.containerd.runc.v2",
            prost_types::Any {
                type_url: "types.test/spec".to_string(),
                value: Vec::new(),
            },
        )
    }

    fn on_runtime(work: impl std::future::Future<Output = ()>) {
        tokio::runtime::Handle::current().block_on(work);
    }

    fn raced_writes() -> Vec<Raced> {
        fn ref_target(p: &Population) -> Labels {
            labels(&[("containerd.io/gc.ref.content.x", p.target.as_str())])
        }
        vec![
            Raced {
                case: "image created on the target",
                write: |m, p| {
                    ImageStore::create(m.as_ref(), "a", image("late", &p.target)).unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "image updated to the target",
                write: |m, p| {
                    ImageStore::update(
                        m.as_ref(),
                        "a",
                        image("img", &p.target),
                        &["target".into()],
                    )
                    .unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "image created with a label naming the target",
                write: |m, p| {
                    let mut late = image("late", &p.root);
                    late.labels = ref_target(p);
                    ImageStore::create(m.as_ref(), "a", late).unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "container created on s2",
                write: |m, _| {
                    let mut late = container("late");
                    late.snapshotter = "native".into();
                    late.snapshot_key = "s2".into();
                    ContainerStore::create(m.as_ref(), "a", late).unwrap();
                },
                keeps_blobs: false,
            },
            Raced {
                case: "container updated with a label naming the target",
                write: |m, p| {
                    let mut ctr = container("ctr");
                    ctr.labels = ref_target(p);
                    ContainerStore::update(m.as_ref(), "a", ctr, &["labels".into()]).unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "lease created with a label naming the target",
                write: |m, p| {
                    LeaseManager::create(m.as_ref(), "a", "late", ref_target(p)).unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "target added to a lease",
                write: |m, p| {
                    let resource = Resource {
                        kind: "content".into(),
                        id: p.target.as_str().into(),
                    };
                    LeaseManager::add_resource(m.as_ref(), "a", "held", &resource).unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "s2 added to a lease",
                write: |m, _| {
                    let resource = Resource {
                        kind: "snapshots/native".into(),
                        id: "s2".into(),
                    };
                    LeaseManager::add_resource(m.as_ref(), "a", "held", &resource).unwrap();
                },
                keeps_blobs: false,
            },
            Raced {
                case: "expired lease deleted and created again holding the target",
                write: |m, p| {
                    LeaseManager::delete(m.as_ref(), "a", "old").unwrap();
                    LeaseManager::create(m.as_ref(), "a", "old", Labels::new()).unwrap();
                    let resource = Resource {
                        kind: "content".into(),
                        id: p.target.as_str().into(),
                    };
                    LeaseManager::add_resource(m.as_ref(), "a", "old", &resource).unwrap();
                },
                keeps_blobs: true,
            },
            Raced {
                case: "gc.root label set on the target",
                write: |m, p| {
                    let target = p.target.clone();
                    on_runtime(async move {
                        let store = Arc::clone(m).content("a").unwrap();
                        let mut info = store.info(&target).await.unwrap();
                        info.labels
                            .insert("containerd.io/gc.root".into(), "yes".into());
                        store
                            .update(info, &["labels.containerd.io/gc.root".into()])
                            .await
                            .unwrap();
                    });
                },
                keeps_blobs: true,
            },
            Raced {
                case: "label naming the target set on a reachable blob",
                write: |m, p| {
                    let (root, label) = (p.root.clone(), ref_target(p));
                    on_runtime(async move {
                        let store = Arc::clone(m).content("a").unwrap();
                        let mut info = store.info(&root).await.unwrap();
                        info.labels.extend(label);
                        store
                            .update(info, &["labels.containerd.io/gc.ref.content.x".into()])
                            .await
                            .unwrap();
                    });
                },
                keeps_blobs: true,
            },
            Raced {
                case: "blob committed with gc.root and a label naming the target",
                write: |m, p| {
                    let mut with = ref_target(p);
                    with.insert("containerd.io/gc.root".into(), "yes".into());
                    on_runtime(async move {
                        let store = Arc::clone(m).content("a").unwrap();
                        let mut writer = store.writer("late", 0, None).await.unwrap();
                        writer.write(b"late").await.unwrap();
                        writer.commit(0, None, with).await.unwrap();
                        writer.close().await.unwrap();
                    });
                },
                keeps_blobs: true,
            },
            Raced {
                case: "snapshot prepared on s2 with gc.root",
                write: |m, _| {
                    on_runtime(async move {
                        let sn = Arc::clone(m).snapshotter("a", "native").unwrap();
                        sn.prepare("late", "s2", labels(&[("containerd.io/gc.root", "yes")]))
                            .await
                            .unwrap();
                    });
                },
                keeps_blobs: false,
            },
            Raced {
                case: "gc.root label set on s2",
                write: |m, _| {
                    on_runtime(async move {
                        let sn = Arc::clone(m).snapshotter("a", "native").unwrap();
                        let mut info = sn.stat("s2").await.unwrap();
                        info.labels
                            .insert("containerd.io/gc.root".into(), "yes".into());
                        sn.update(info, &["labels.containerd.io/gc.root".into()])
                            .await
                            .unwrap();
                    });
                },
                keeps_blobs: false,
            },
            Raced {
                case: "active snapshot on s2 committed with gc.root",
                write: |m, _| {
                    on_runtime(async move {
                        let sn = Arc::clone(m).snapshotter("a", "native").unwrap();
                        sn.commit("done", "act", labels(&[("containerd.io/gc.root", "yes")]))
                            .await
                            .unwrap();
                    });
                },
                keeps_blobs: false,
            },
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_between_mark_and_sweep_keep_what_they_reach_and_nothing_more() {
        let cases = raced_writes();
        assert_eq!(cases.len(), 15, "every kind of raced write is a case");
        for raced in cases {
            type Slot = Option<(Arc<Metadata>, Population, fn(&Arc<Metadata>, &Population))>;
            let slot: Arc<std::sync::Mutex<Slot>> = Arc::default();
            let hook = Arc::clone(&slot);
            let between: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                if let Some((metadata, population, write)) = hook.lock().unwrap().take() {
                    write(&metadata, &population);
                }
            });
            let f = fixture(SharingPolicy::Shared, Some(between));
            let leaf = blob(&f, "a", "leaf", Labels::new()).await;
            let target = blob(
                &f,
                "a",
                "target",
                labels(&[("containerd.io/gc.ref.content.l", leaf.as_str())]),
            )
            .await;
            let root = blob(&f, "a", "root", labels(&[("containerd.io/gc.root", "x")])).await;
            let stray = blob(&f, "a", "stray", Labels::new()).await;
            committed(&f, "a", "s1", "").await;
            committed(&f, "a", "s2", "s1").await;
            Arc::clone(&f.metadata)
                .snapshotter("a", "native")
                .unwrap()
                .prepare("act", "s2", Labels::new())
                .await
                .unwrap();
            let m = f.metadata.as_ref();
            ImageStore::create(m, "a", image("img", &root)).unwrap();
            ContainerStore::create(m, "a", container("ctr")).unwrap();
            LeaseManager::create(m, "a", "held", Labels::new()).unwrap();
            LeaseManager::create(
                m,
                "a",
                "old",
                labels(&[("containerd.io/gc.expire", "2000-01-01T00:00:00Z")]),
            )
            .unwrap();
            let population = Population {
                target: target.clone(),
                root: root.clone(),
            };
            *slot.lock().unwrap() = Some((Arc::clone(&f.metadata), population, raced.write));
            let stats = f.metadata.collect().await.unwrap();
            let case = raced.case;
            assert!(
                slot.lock().unwrap().is_none(),
                "{case}: the write did not run"
            );
            assert!(stats.remarked, "{case}: {stats:?}");
            for (digest, what) in [(&target, "target"), (&leaf, "leaf")] {
                assert_eq!(
                    has_blob(&f, "a", digest).await,
                    raced.keeps_blobs,
                    "{case}: {what}"
                );
                assert_eq!(
                    in_store(&f, digest).await,
                    raced.keeps_blobs,
                    "{case}: {what} in the store"
                );
            }
            let left = snapshots(&f, "a").await;
            for key in ["s1", "s2"] {
                assert_eq!(
                    left.contains(key),
                    !raced.keeps_blobs,
                    "{case}: {key} (left: {left:?})"
                );
            }
            assert!(has_blob(&f, "a", &root).await, "{case}");
            // The expired lease goes, unless the write made a new one of its id.
            let leases: BTreeSet<String> = LeaseManager::list(m, "a", &[])
                .unwrap()
                .into_iter()
                .map(|lease| lease.id)
                .collect();
            assert!(leases.contains("held"), "{case}: {leases:?}");
            assert_eq!(
                leases.contains("old"),
                case.starts_with("expired lease"),
                "{case}: {leases:?}"
            );
            assert!(!has_blob(&f, "a", &stray).await, "{case}: stray kept");
            assert!(
                !in_store(&f, &stray).await,
                "{case}: stray kept in the store"
            );
        }
    }

    /// Metadata in `dir` over `snapshotters` and no content store.
    fn snapshots_only<const N: usize>(
        dir: &std::path::Path,
        snapshotters: [(&str, Arc<dyn Snapshotter>); N],
    ) -> Arc<Metadata> {
        let snapshotters = snapshotters
            .into_iter()
            .map(|(name, backend)| (name.to_string(), backend))
            .collect();
        let metadata = Metadata::open_with(
            &dir.join("meta.db"),
            None,
            snapshotters,
            SharingPolicy::Shared,
        );
        Arc::new(metadata.unwrap())
    }

    /// A backend that fails what it is told to: one key's removal, or its cleanup.
    #[derive(Default)]
    struct Faults {
        detach: Option<(String, plinth_core::Category)>,
        cleanup: Option<plinth_core::Category>,
    }

    struct Faulty(Arc<dyn Snapshotter>, std::sync::Mutex<Faults>);

    #[tonic::async_trait]
    impl Snapshotter for Faulty {
        async fn stat(&self, key: &str) -> Result<Info, Error> {
            self.0.stat(key).await
        }
        async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
            self.0.update(info, fieldpaths).await
        }
        async fn usage(&self, key: &str) -> Result<crate::snapshots::Usage, Error> {
            self.0.usage(key).await
        }
        async fn mounts(&self, key: &str) -> Result<Vec<crate::snapshots::Mount>, Error> {
            self.0.mounts(key).await
        }
        async fn prepare(
            &self,
            key: &str,
            parent: &str,
            labels: Labels,
        ) -> Result<Vec<crate::snapshots::Mount>, Error> {
            self.0.prepare(key, parent, labels).await
        }
        async fn view(
            &self,
            key: &str,
            parent: &str,
            labels: Labels,
        ) -> Result<Vec<crate::snapshots::Mount>, Error> {
            self.0.view(key, parent, labels).await
        }
        async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
            self.0.commit(name, key, labels).await
        }
        async fn remove(&self, key: &str) -> Result<(), Error> {
            self.0.remove(key).await
        }
        async fn detach_many(&self, keys: &[String]) -> (Vec<Result<(), Error>>, Freeing) {
            let fault = self.1.lock().unwrap().detach.clone();
            match fault {
                Some((key, category)) if keys.contains(&key) => {
                    let rest: Vec<String> = keys.iter().filter(|k| **k != key).cloned().collect();
                    let (mut results, freeing) = self.0.detach_many(&rest).await;
                    let at = keys.iter().position(|k| *k == key).unwrap();
                    results.insert(at, Err(Error::new(category, format!("{key}: injected"))));
                    (results, freeing)
                }
                _ => self.0.detach_many(keys).await,
            }
        }
        async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
            self.0.walk(filters).await
        }
        async fn cleanup(&self) -> Result<(), Error> {
            let fault = self.1.lock().unwrap().cleanup;
            match fault {
                Some(category) => Err(Error::new(category, "cleanup: injected")),
                None => self.0.cleanup().await,
            }
        }
    }

    /// A backend's answers to the collection's removals: a snapshot already gone
    /// (NotFound) and a backend without a cleanup (Unimplemented) are no failure; any
    /// other error fails the collection, naming the snapshot or the cleanup, after the
    /// records are gone (the next collection tries the backend again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backend_failures_fail_the_collection_but_gone_and_unimplemented_do_not() {
        use plinth_core::Category;
        let dir = tempfile::tempdir().unwrap();
        let native: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(&dir.path().join("native")).unwrap());
        let faulty = Arc::new(Faulty(Arc::clone(&native), std::sync::Mutex::default()));
        let metadata = snapshots_only(
            dir.path(),
            [("native", Arc::clone(&faulty) as Arc<dyn Snapshotter>)],
        );
        let sn = Arc::clone(&metadata).snapshotter("a", "native").unwrap();
        let names = async || -> BTreeSet<String> {
            let infos = native.walk(&[]).await.unwrap();
            infos.into_iter().map(|info| info.name).collect()
        };
        // A snapshot nothing holds: the collection sweeps its record and then removes its
        // backend snapshot.
        let orphan = async |key: &str| {
            let before = names().await;
            sn.prepare(key, "", Labels::new()).await.unwrap();
            names().await.difference(&before).next().unwrap().clone()
        };
        let cases = [
            (Some(Category::NotFound), None, None),
            (Some(Category::Internal), None, Some("injected")),
            (None, Some(Category::Unimplemented), None),
            (None, Some(Category::Internal), Some("cleanup: injected")),
        ];
        for (i, (detach, cleanup, fails)) in cases.into_iter().enumerate() {
            let name = orphan(&format!("k{i}")).await;
            *faulty.1.lock().unwrap() = Faults {
                detach: detach.map(|category| (name.clone(), category)),
                cleanup,
            };
            let result = metadata.collect().await;
            match fails {
                None => {
                    result.unwrap_or_else(|e| panic!("case {i}: {e}"));
                }
                Some(what) => {
                    let error = result.expect_err(&format!("case {i} did not fail"));
                    assert!(error.message.contains(what), "case {i}: {error}");
                    if detach.is_some() {
                        assert!(error.message.contains(&name), "case {i}: {error}");
                    }
                }
            }
            *faulty.1.lock().unwrap() = Faults::default();
        }
        // What the faults kept is taken by the next collection.
        metadata.collect().await.unwrap();
        assert_eq!(names().await, BTreeSet::new());
    }

    /// A backend snapshot no record of its own snapshotter refers to goes, even when a record
    /// of another snapshotter names the same key (backend keys come from one counter, so
    /// that happens only when the database started again beside old backends).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_snapshotters_own_records_keep_its_backend_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| -> Arc<dyn Snapshotter> {
            Arc::new(NativeSnapshotter::open(&dir.path().join(name)).unwrap())
        };
        let (one, two) = (open("one"), open("two"));
        let metadata = snapshots_only(
            dir.path(),
            [("one", Arc::clone(&one)), ("two", Arc::clone(&two))],
        );
        Arc::clone(&metadata)
            .snapshotter("a", "two")
            .unwrap()
            .prepare("x", "", labels(&[("containerd.io/gc.root", "x")]))
            .await
            .unwrap();
        let kept: Vec<String> = two
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(kept.len(), 1);
        one.prepare(&kept[0], "", Labels::new()).await.unwrap();
        let stats = metadata.collect().await.unwrap();
        assert_eq!(stats.backend_snapshots, 1, "{stats:?}");
        assert_eq!(one.walk(&[]).await.unwrap(), []);
        assert_eq!(two.walk(&[]).await.unwrap().len(), 1);
    }

    /// What a barrier that noted `nodes` (and did not overflow) hands the sweep.
    fn noting(nodes: Vec<Node>) -> Touched {
        Touched {
            nodes,
            leases: HashSet::new(),
            overflow: false,
        }
    }

    /// The sweep's walk from what raced the mark goes through what the mark left unmarked
    /// and nowhere else: a noted object that is already live is looked at, its live
    /// references are not (the mark walked them), and a cycle of garbage is walked once
    /// and kept whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_walk_from_raced_writes_stays_inside_the_garbage() {
        let f = fixture(SharingPolicy::Shared, None);
        let child = blob(&f, "a", "child", Labels::new()).await;
        let live = blob(
            &f,
            "a",
            "live",
            labels(&[
                ("containerd.io/gc.root", "x"),
                ("containerd.io/gc.ref.content.c", child.as_str()),
            ]),
        )
        .await;
        let first = blob(&f, "a", "first", Labels::new()).await;
        let second = blob(
            &f,
            "a",
            "second",
            labels(&[("containerd.io/gc.ref.content.f", first.as_str())]),
        )
        .await;
        let store = Arc::clone(&f.metadata).content("a").unwrap();
        let mut info = store.info(&first).await.unwrap();
        info.labels.insert(
            "containerd.io/gc.ref.content.s".into(),
            second.as_str().into(),
        );
        store
            .update(info, &["labels.containerd.io/gc.ref.content.s".into()])
            .await
            .unwrap();
        let id = |d: &Digest| ("a".to_string(), d.as_str().to_string());
        let node = |d: &Digest| Node::Content(id(d));
        let db = &f.metadata.db;
        let txn = db.begin_write().unwrap();
        let garbage = || mark_write(&txn, SystemTime::now()).unwrap();
        let mut cycle = vec![id(&first), id(&second)];
        cycle.sort();
        assert_eq!(garbage().content, cycle);

        let mut after = garbage();
        let visited = after.recheck(&txn, noting(vec![node(&live)])).unwrap();
        assert_eq!(
            visited, 1,
            "only the noted object: its child is live already"
        );
        assert_eq!(after.content, cycle);

        let mut after = garbage();
        let visited = after.recheck(&txn, noting(vec![node(&first)])).unwrap();
        assert_eq!(visited, 2, "the cycle, each once");
        assert_eq!(after.content, []);
    }

    /// The walk from raced writes reads a noted object's own gc labels and stops at the next
    /// object's: a blob or snapshot with none does not take on the references of the one
    /// after it in key order, in its namespace or the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_walk_from_raced_writes_reads_each_objects_own_labels() {
        let f = fixture(SharingPolicy::Shared, None);
        let far = blob(&f, "a", "far", Labels::new()).await;
        let refers = |to: &Digest| labels(&[("containerd.io/gc.ref.content.r", to.as_str())]);
        let mut pair = [
            blob(&f, "a", "p", Labels::new()).await,
            blob(&f, "a", "q", Labels::new()).await,
        ];
        pair.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let [before, after] = pair;
        let store = Arc::clone(&f.metadata).content("a").unwrap();
        let mut info = store.info(&after).await.unwrap();
        info.labels = refers(&far);
        store
            .update(info, &["labels.containerd.io/gc.ref.content.r".into()])
            .await
            .unwrap();
        let refer_to_far = async |ns: &str, key: &str| {
            let sn = Arc::clone(&f.metadata).snapshotter(ns, "native").unwrap();
            let mut info = sn.stat(key).await.unwrap();
            info.labels = refers(&far);
            sn.update(info, &["labels.containerd.io/gc.ref.content.r".into()])
                .await
                .unwrap();
        };
        committed(&f, "a", "sa", "").await;
        committed(&f, "a", "sb", "").await;
        refer_to_far("a", "sb").await;
        // The last snapshot of namespace a, and the same key in b, next in key order.
        committed(&f, "a", "sz", "").await;
        committed(&f, "b", "sz", "").await;
        refer_to_far("b", "sz").await;
        let id = |d: &Digest| ("a".to_string(), d.as_str().to_string());
        let snapshot = |k: &str| ("a".to_string(), "native".to_string(), k.to_string());
        let db = &f.metadata.db;
        let txn = db.begin_write().unwrap();
        // Whether `far` is still garbage after a walk from `noted`.
        let far_left_after = |noted: &Node| {
            let mut garbage = mark_write(&txn, SystemTime::now()).unwrap();
            assert!(garbage.content.contains(&id(&far)));
            garbage.recheck(&txn, noting(vec![noted.clone()])).unwrap();
            garbage.content.contains(&id(&far))
        };
        for noted in [
            Node::Content(id(&before)),
            Node::Snapshot(snapshot("sa")),
            Node::Snapshot(snapshot("sz")),
        ] {
            assert!(
                far_left_after(&noted),
                "{noted:?} took on the next object's reference"
            );
        }
        // And one with the label keeps what it names.
        for noted in [Node::Content(id(&after)), Node::Snapshot(snapshot("sb"))] {
            assert!(
                !far_left_after(&noted),
                "{noted:?}'s own reference was not followed"
            );
        }
    }

    /// The sweep walks from what the writes between mark and sweep noted when the barrier
    /// held them all, and marks everything again when it overflowed: then the notes it
    /// kept are not all there were, and a walk from them would lose what a later one
    /// reached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sweep_walks_from_the_notes_unless_the_barrier_overflowed() {
        let f = fixture(SharingPolicy::Shared, None);
        let (db, barrier) = (&f.metadata.db, f.metadata.gc.barrier.as_ref());
        let id = |d: &Digest| ("a".to_string(), d.as_str().to_string());
        for overflow in [false, true] {
            let target = blob(&f, "a", &format!("target {overflow}"), Labels::new()).await;
            let stray = blob(&f, "a", &format!("stray {overflow}"), Labels::new()).await;
            let metadata = Arc::clone(&f.metadata);
            let late = target.clone();
            let between = move || {
                if overflow {
                    for i in 0..BARRIER_LIMIT {
                        barrier.content("a", &format!("noted-{i}"));
                    }
                }
                // Noted last: past the limit when the barrier overflowed.
                let name = format!("late {overflow}");
                ImageStore::create(metadata.as_ref(), "a", image(&name, &late)).unwrap();
            };
            let swept = mark_and_sweep(db, barrier, &between).unwrap();
            assert!(swept.remarked);
            assert_eq!(swept.full_remark, overflow);
            assert_eq!(swept.rechecked > 0, !overflow, "{}", swept.rechecked);
            assert_eq!(swept.garbage.content, [id(&stray)], "overflow: {overflow}");
            assert!(has_blob(&f, "a", &target).await);
        }
    }

    /// A collection that fails (here its mark: a record that does not decode) leaves the
    /// barrier unarmed: writes after it note nothing and cost nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_collection_leaves_the_barrier_unarmed() {
        let f = fixture(SharingPolicy::Shared, None);
        let txn = f.metadata.db.begin_write().unwrap();
        txn.open_table(IMAGES)
            .unwrap()
            .insert(("a", "garbled"), &b"\xff"[..])
            .unwrap();
        txn.commit().unwrap();
        let barrier = f.metadata.gc.barrier.as_ref();
        let error = mark_and_sweep(&f.metadata.db, barrier, &|| {})
            .err()
            .expect("a garbled record fails the mark");
        assert!(error.to_string().contains("garbled"), "{error}");
        barrier.content("a", "after");
        assert!(barrier.take().is_none(), "the barrier is still armed");
    }

    /// When the writes between mark and sweep overflow the barrier, the sweep marks
    /// everything again in its write transaction: what a raced write reached stays, the
    /// rest goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_overflowing_barrier_makes_the_sweep_mark_everything_again() {
        type Slot = Option<(Arc<Metadata>, Digest)>;
        let slot: Arc<std::sync::Mutex<Slot>> = Arc::default();
        let hook = Arc::clone(&slot);
        let between: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some((metadata, target)) = hook.lock().unwrap().take() {
                ImageStore::create(metadata.as_ref(), "a", image("late", &target)).unwrap();
                for i in 0..=BARRIER_LIMIT {
                    metadata.gc.barrier.content("a", &format!("noted-{i}"));
                }
            }
        });
        let f = fixture(SharingPolicy::Shared, Some(between));
        let target = blob(&f, "a", "target", Labels::new()).await;
        let stray = blob(&f, "a", "stray", Labels::new()).await;
        *slot.lock().unwrap() = Some((Arc::clone(&f.metadata), target.clone()));
        let stats = f.metadata.collect().await.unwrap();
        assert!(slot.lock().unwrap().is_none(), "the write did not run");
        assert!(stats.remarked, "{stats:?}");
        assert_eq!(stats.content, 1, "{stats:?}");
        assert!(
            has_blob(&f, "a", &target).await,
            "the late image's target went"
        );
        assert!(!has_blob(&f, "a", &stray).await, "the stray stayed");
    }

    #[test]
    fn the_barrier_notes_only_while_armed_and_overflows_to_a_full_mark() {
        let barrier = Barrier::default();
        barrier.content("a", "d");
        barrier.arm();
        barrier.content("a", "d1");
        barrier.snapshot("a", "native", "k");
        barrier.resource("a", "snapshots/native", "k2");
        barrier.resource("a", "ingests", "ref");
        barrier.labels(
            "a",
            &labels(&[
                ("containerd.io/gc.ref.content.x", "d2"),
                ("containerd.io/gc.ref.snapshot.native", "k3"),
                ("other", "d3"),
            ]),
        );
        barrier.lease("a", "l");
        let touched = barrier.take().unwrap();
        let c = |d: &str| Node::Content(("a".into(), d.into()));
        let sn = |k: &str| Node::Snapshot(("a".into(), "native".into(), k.into()));
        assert_eq!(
            touched.nodes,
            [c("d1"), sn("k"), sn("k2"), c("d2"), sn("k3")]
        );
        assert!(touched.leases.contains(&("a".to_string(), "l".to_string())));
        assert!(!touched.overflow);
        assert!(barrier.take().is_none(), "taking disarms");
        barrier.content("a", "after");
        assert!(barrier.take().is_none(), "nothing is noted unarmed");
        barrier.arm();
        for i in 0..=BARRIER_LIMIT {
            barrier.content("a", &i.to_string());
        }
        let touched = barrier.take().unwrap();
        assert!(touched.overflow);
        assert_eq!(touched.nodes.len(), BARRIER_LIMIT);
    }

    /// Blobs and backend snapshots no record refers to (a crash between a store's commit and
    /// the record, or after a sweep) are removed by the next collection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leftovers_without_records_are_removed() {
        let f = fixture(SharingPolicy::Shared, None);
        let orphan = raw_blob(&f, b"no record").await;
        f.native
            .prepare("x/1/p-active", "", Labels::new())
            .await
            .unwrap();
        f.native
            .commit("x/2/p", "x/1/p-active", Labels::new())
            .await
            .unwrap();
        f.native
            .prepare("x/3/c", "x/2/p", Labels::new())
            .await
            .unwrap();
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!(
            (stats.records(), stats.blobs, stats.backend_snapshots),
            (0, 1, 2)
        );
        assert!(!in_store(&f, &orphan).await);
        assert!(f.native.walk(&[]).await.unwrap().is_empty());
    }

    /// A collection scans the whole store only while something may have left a blob no
    /// record holds (containerd's dirty flag): at first (a crash may have), and after a
    /// content change that ended between the store and the records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_is_scanned_only_after_something_may_have_left_a_blob() {
        let f = fixture(SharingPolicy::Shared, None);
        let crashed = raw_blob(&f, b"left by a crash").await;
        assert_eq!(f.metadata.collect().await.unwrap().blobs, 1);
        assert!(!in_store(&f, &crashed).await);
        // Put in the store behind the records' back: not looked for while nothing says so.
        let unnoticed = raw_blob(&f, b"unnoticed").await;
        assert_eq!(f.metadata.collect().await.unwrap().blobs, 0);
        f.metadata.gc.leftover().done();
        assert_eq!(f.metadata.collect().await.unwrap().blobs, 0);
        assert!(in_store(&f, &unnoticed).await);
        // Neither do a delete of a blob the namespace does not have, nor a commit whose
        // record is there already (both leave nothing behind).
        let store = Arc::clone(&f.metadata).content("a").unwrap();
        let error = store.delete(&unnoticed).await.unwrap_err();
        assert_eq!(error.category, plinth_core::Category::NotFound, "{error}");
        let root = Labels::from([(crate::gc::LABEL_ROOT.to_string(), "t".to_string())]);
        let kept = blob(&f, "a", "kept", root.clone()).await;
        let mut writer = store.writer("again", 0, None).await.unwrap();
        writer.write(b"kept").await.unwrap();
        let error = writer.commit(0, None, root).await.unwrap_err();
        assert_eq!(
            error.category,
            plinth_core::Category::AlreadyExists,
            "{error}"
        );
        assert_eq!(f.metadata.collect().await.unwrap().blobs, 0);
        assert!(in_store(&f, &unnoticed).await && in_store(&f, &kept).await);
        // A change that ended half-way makes the next collection look, and only the next.
        drop(f.metadata.gc.leftover());
        assert_eq!(f.metadata.collect().await.unwrap().blobs, 1);
        assert!(!in_store(&f, &unnoticed).await);
        let again = raw_blob(&f, b"unnoticed again").await;
        assert_eq!(f.metadata.collect().await.unwrap().blobs, 0);
        assert!(in_store(&f, &again).await);
    }

    /// A commit that reaches the store but not the records (its lease was deleted while it
    /// wrote) leaves a blob without a record, and the next collection removes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_fails_after_the_store_has_its_blob_collected() {
        let f = fixture(SharingPolicy::Shared, None);
        f.metadata.collect().await.unwrap();
        let leases: &dyn LeaseManager = f.metadata.as_ref();
        leases.create("a", "short", Labels::new()).unwrap();
        let store = Arc::clone(&f.metadata)
            .leased_content("a", Some("short"))
            .unwrap();
        let mut writer = store.writer("w", 0, None).await.unwrap();
        writer.write(b"outlived its lease").await.unwrap();
        leases.delete("a", "short").unwrap();
        let error = writer.commit(0, None, Labels::new()).await.unwrap_err();
        assert_eq!(error.category, plinth_core::Category::NotFound, "{error}");
        let digest = writer.digest();
        assert!(in_store(&f, &digest).await);
        let stats = f.metadata.collect().await.unwrap();
        assert_eq!(stats.blobs, 1, "{stats:?}");
        assert!(!in_store(&f, &digest).await);
    }

    /// Every blob lock a deletion of a batch needs, whatever the stripes, and a commit of a
    /// blob of another stripe does not wait for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deletion_locks_the_stripes_of_its_blobs_only() {
        let f = fixture(SharingPolicy::Shared, None);
        let digests: Vec<Digest> = (0..200)
            .map(|n: u64| Digest::parse(&format!("sha256:{:064x}", n * 7919)).unwrap())
            .collect();
        let stripes: BTreeSet<usize> = digests.iter().map(blob_stripe).collect();
        assert!(stripes.len() > BLOB_STRIPES / 2, "{stripes:?}");
        let held = f.metadata.gc.deleting(&digests[..1]).await;
        assert_eq!(held.len(), 1);
        let other = digests
            .iter()
            .find(|d| blob_stripe(d) != blob_stripe(&digests[0]))
            .unwrap();
        // Another stripe's commit goes ahead; the same stripe's waits.
        drop(f.metadata.gc.committing(other).await);
        assert!(
            f.metadata.gc.blobs[blob_stripe(&digests[0])]
                .try_read()
                .is_err()
        );
        drop(held);
        let all = f.metadata.gc.deleting(&digests).await;
        assert_eq!(all.len(), stripes.len());
        for stripe in &stripes {
            assert!(f.metadata.gc.blobs[*stripe].try_read().is_err());
        }
    }

    /// When the stores are served raw to other daemons, what has no record may be theirs: a
    /// collection removes only what its own sweep removed the records of.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_served_raw_lose_only_what_the_sweep_removed() {
        let f = fixture(SharingPolicy::Shared, None);
        let theirs = raw_blob(&f, b"another daemon's").await;
        f.native.prepare("theirs", "", Labels::new()).await.unwrap();
        let ours = blob(&f, "a", "ours", Labels::new()).await;
        committed(&f, "a", "mine", "").await;
        let stats = f.metadata.collect_now(true).await.unwrap();
        assert_eq!((stats.content, stats.snapshots), (1, 1), "{stats:?}");
        assert_eq!((stats.blobs, stats.backend_snapshots), (1, 1), "{stats:?}");
        assert!(!in_store(&f, &ours).await);
        assert!(in_store(&f, &theirs).await);
        let left: Vec<String> = f
            .native
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(left, ["theirs"]);
    }

    #[test]
    fn labels_are_read_as_containerd_reads_them() {
        let cases = [
            ("containerd.io/gc.root", "", Some(Label::Root)),
            (
                "containerd.io/gc.ref.content",
                "d",
                Some(Label::Content("d".into())),
            ),
            (
                "containerd.io/gc.ref.content.m",
                "d",
                Some(Label::Content("d".into())),
            ),
            (
                "containerd.io/gc.ref.content/m",
                "d",
                Some(Label::Content("d".into())),
            ),
            ("containerd.io/gc.ref.contents", "d", None),
            (
                "containerd.io/gc.ref.snapshot.overlayfs",
                "k",
                Some(Label::Snapshot("overlayfs".into(), "k".into())),
            ),
            (
                "containerd.io/gc.ref.snapshot.overlayfs/layer",
                "k",
                Some(Label::Snapshot("overlayfs".into(), "k".into())),
            ),
            ("containerd.io/gc.expire", "2020-01-01T00:00:00Z", None),
            ("other", "x", None),
        ];
        for (key, value, expected) in cases {
            assert_eq!(parse_label(key, value), expected, "{key}");
        }
        let expiring = |v: &str| BTreeMap::from([(LABEL_EXPIRE.to_string(), v.to_string())]);
        assert!(expiry(&expiring("2020-01-01T00:00:00Z")).is_some());
        assert!(expiry(&expiring("2020-01-01T01:00:00+01:00")).is_some());
        assert_eq!(
            expiry(&expiring("tomorrow")),
            None,
            "ignored, as containerd does"
        );
    }

    /// `containerd.io/gc.expire` is read as Go's `time.Parse(time.RFC3339, …)` reads it:
    /// a value Go refuses leaves the lease without an expiry (it never expires), so each
    /// part of the format is checked, and a short value is refused without a panic.
    #[test]
    fn an_expiry_is_read_as_go_reads_rfc3339() {
        let taken = [
            "2100-01-01T00:00:00Z",
            "2100-01-01T00:00:00.5Z",
            "2100-01-01T00:00:00.123456789Z",
            "2100-01-01T00:00:00+01:00",
            "2100-01-01T00:00:00-05:30",
            "2100-01-01T00:00:00.25+14:00",
        ];
        for value in taken {
            assert!(go_rfc3339(value), "{value} refused");
        }
        let refused = [
            "",
            "2100",
            "2100-01-01",
            "2100-01-01T00:00:00",
            "2100-01-01T00:00Z",
            "2100-01-01 00:00:00Z",
            "2100-01-01t00:00:00Z",
            "2100/01-01T00:00:00Z",
            "2100-0a-01T00:00:00Z",
            "2100-01-01T00-00:00Z",
            "2100-01-01T00:00:00z",
            "2100-01-01T00:00:00.Z",
            "2100-01-01T00:00:00.5",
            "2100-01-01T00:00:00Z[UTC]",
            "2100-01-01T00:00:00+0100",
            "2100-01-01T00:00:00+1:00",
            "2100-01-01T00:00:00+01:00:00",
            "2100-01-01T00:00:00*01:00",
            "2100-01-01T00:00:00+0a:00",
            "2100-01-01T00:00:00+a0:00",
            "2100-01-01T00:00:00+01-00",
            "2100-01-01T00:00:00+01:0a",
            "2100-01-01T00:00:00+01:a0",
        ];
        for value in refused {
            assert!(!go_rfc3339(value), "{value} taken");
        }
    }
}

/// [`labels_of`], the sweep's one pass over a labels table, against a filter.
#[cfg(test)]
mod label_pass {
    use proptest::prelude::*;

    use super::*;

    /// [`labels_of`] over `rows` (record, label) for `records`: what it found, how many
    /// times it sought and how many rows it read.
    fn pass(rows: &[(u16, u8)], records: &[u16]) -> (Vec<(usize, String)>, usize, usize) {
        let mut seeks = 0;
        let read = std::cell::Cell::new(0);
        let found = labels_of(
            records,
            |from| {
                seeks += 1;
                let from = *from;
                let read = &read;
                Ok(rows
                    .iter()
                    .filter(move |(r, _)| *r >= from)
                    .inspect(move |_| read.set(read.get() + 1))
                    .map(|row| Ok(*row)))
            },
            |(r, _), record| r.cmp(record),
            |(_, label)| label.to_string(),
        )
        .unwrap();
        (found, seeks, read.get())
    }

    /// A run of exactly [`SEEK_AFTER`] other records' rows is read through; one more, and
    /// the pass seeks.
    #[test]
    fn the_pass_seeks_after_seek_after_rows_of_other_records() {
        let rows: Vec<(u16, u8)> = (0..100).map(|r| (r, 0)).collect();
        let gap = SEEK_AFTER as u16;
        let (found, seeks, read) = pass(&rows, &[0, gap + 1]);
        assert_eq!(found, [(0, "0".to_string()), (1, "0".to_string())]);
        assert_eq!((seeks, read), (1, SEEK_AFTER + 3));
        let (found, seeks, _) = pass(&rows, &[0, gap + 2]);
        assert_eq!(found.len(), 2);
        assert_eq!(seeks, 2);
        // Sparse records cost a seek each, not a scan of the table between them.
        let (found, seeks, read) = pass(&rows, &[0, 50, 99]);
        assert_eq!(found.len(), 3);
        assert_eq!(seeks, 3);
        assert!(read <= 3 * (SEEK_AFTER + 2), "{read} rows read");
    }

    proptest! {
        /// The one pass finds exactly the rows a filter of the whole table finds, whether
        /// the records are dense (a scan) or sparse (seeks) beside the table.
        #[test]
        fn labels_of_finds_the_rows_a_filter_finds(
            table in proptest::collection::btree_set((0u16..400, 0u8..4), 0..600),
            wanted in proptest::collection::btree_set(0u16..400, 0..80),
        ) {
            let rows: Vec<(u16, u8)> = table.into_iter().collect();
            let records: Vec<u16> = wanted.into_iter().collect();
            let (found, seeks, read) = pass(&rows, &records);
            let expected: Vec<(usize, String)> = rows
                .iter()
                .filter_map(|(r, label)| {
                    let i = records.binary_search(r).ok()?;
                    Some((i, label.to_string()))
                })
                .collect();
            // One seek per record at most, and no more than SEEK_AFTER other rows read
            // between two found ones or after a seek.
            prop_assert!(seeks <= records.len().max(1));
            prop_assert!(
                read <= found.len() + (SEEK_AFTER + 1) * (found.len() + seeks) + 1,
                "{} rows read, {} found, {} seeks", read, found.len(), seeks
            );
            prop_assert_eq!(found, expected);
            // One seek in all when no run of other records' rows between the first record
            // and the last is longer than SEEK_AFTER.
            if let (Some(first), Some(last)) = (records.first(), records.last()) {
                let mut run = 0;
                let mut longest = 0;
                for (r, _) in rows.iter().filter(|(r, _)| r >= first && r <= last) {
                    run = if records.binary_search(r).is_ok() { 0 } else { run + 1 };
                    longest = longest.max(run);
                }
                if longest <= SEEK_AFTER {
                    prop_assert_eq!(seeks, 1);
                }
            }
        }
    }
}

/// containerd 1.6's `TestGCRoots` and `TestGCRefs` (metadata/gc_test.go), case for case, over
/// records written straight into the tables. Ingests are left out: plinthd keeps no ingest
/// records and never collects an ingest (see [`crate::gc`]).
#[cfg(test)]
mod containerd_cases {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, SystemTime};

    use prost::Message as _;

    use super::*;
    use crate::metadata::records::{ContainerRecord, ImageRecord, LeaseRecord};

    fn dgst(i: u64) -> String {
        format!("sha256:{i:064x}")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rfc3339(time: SystemTime) -> String {
        jiff::Timestamp::try_from(time)
            .unwrap()
            .round(jiff::Unit::Second)
            .unwrap()
            .to_string()
    }

    enum Alter {
        Image(&'static str, &'static str, String, BTreeMap<String, String>),
        Container(
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            BTreeMap<String, String>,
        ),
        Content(&'static str, String, BTreeMap<String, String>),
        Snapshot(
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            BTreeMap<String, String>,
        ),
        Lease(&'static str, &'static str, BTreeMap<String, String>),
        LeaseContent(&'static str, &'static str, String),
        LeaseSnapshot(&'static str, &'static str, &'static str, &'static str),
    }
    use Alter::*;

    fn populate(alters: &[Alter]) -> (tempfile::TempDir, Metadata) {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        let txn = metadata.db.begin_write().unwrap();
        {
            let mut content = txn.open_table(CONTENT).unwrap();
            let mut content_labels = txn.open_table(CONTENT_LABELS).unwrap();
            let mut snapshots = txn.open_table(SNAPSHOTS).unwrap();
            let mut snapshot_labels = txn.open_table(SNAPSHOT_LABELS).unwrap();
            let mut images = txn.open_table(IMAGES).unwrap();
            let mut containers = txn.open_table(CONTAINERS).unwrap();
            let mut leases = txn.open_table(LEASES).unwrap();
            let mut resources = txn.open_table(LEASE_RESOURCES).unwrap();
            let mut lease = |ns: &str, id: &str, with: &BTreeMap<String, String>, replace: bool| {
                if replace || leases.get((ns, id)).unwrap().is_none() {
                    let record = LeaseRecord {
                        created: 0,
                        labels: with.clone(),
                    };
                    leases
                        .insert((ns, id), record.encode_to_vec().as_slice())
                        .unwrap();
                }
            };
            for alter in alters {
                match alter {
                    Image(ns, name, digest, with) => {
                        let record = ImageRecord {
                            digest: digest.clone(),
                            labels: with.clone(),
                            ..ImageRecord::default()
                        };
                        images
                            .insert((*ns, *name), record.encode_to_vec().as_slice())
                            .unwrap();
                    }
                    Container(ns, id, snapshotter, key, with) => {
                        let record = ContainerRecord {
                            snapshotter: snapshotter.to_string(),
                            snapshot_key: key.to_string(),
                            labels: with.clone(),
                            ..ContainerRecord::default()
                        };
                        containers
                            .insert((*ns, *id), record.encode_to_vec().as_slice())
                            .unwrap();
                    }
                    Content(ns, digest, with) => {
                        content.insert((*ns, digest.as_str()), (0, 0, 0)).unwrap();
                        for (k, v) in with {
                            content_labels
                                .insert((*ns, digest.as_str(), k.as_str()), v.as_str())
                                .unwrap();
                        }
                    }
                    Snapshot(ns, sn, key, parent, with) => {
                        let backend = format!("{ns}/1/{key}");
                        snapshots
                            .insert((*ns, *sn, *key), (3, *parent, backend.as_str(), 0, 0))
                            .unwrap();
                        for (k, v) in with {
                            snapshot_labels
                                .insert((*ns, *sn, *key, k.as_str()), v.as_str())
                                .unwrap();
                        }
                    }
                    Lease(ns, id, with) => lease(ns, id, with, true),
                    LeaseContent(ns, id, digest) => {
                        lease(ns, id, &BTreeMap::new(), false);
                        resources
                            .insert((*ns, *id, "content", digest.as_str()), ())
                            .unwrap();
                    }
                    LeaseSnapshot(ns, id, sn, key) => {
                        lease(ns, id, &BTreeMap::new(), false);
                        let kind = format!("snapshots/{sn}");
                        resources
                            .insert((*ns, *id, kind.as_str(), *key), ())
                            .unwrap();
                    }
                }
            }
        }
        txn.commit().unwrap();
        (dir, metadata)
    }

    fn graph(metadata: &Metadata) -> Graph {
        graph_at(metadata, SystemTime::now())
    }

    /// The graph as a collection at `now` reads it.
    fn graph_at(metadata: &Metadata, now: SystemTime) -> Graph {
        let txn = metadata.db.begin_read().unwrap();
        let tables = Tables {
            content: txn.open_table(CONTENT).unwrap(),
            content_labels: txn.open_table(CONTENT_LABELS).unwrap(),
            snapshots: txn.open_table(SNAPSHOTS).unwrap(),
            snapshot_labels: txn.open_table(SNAPSHOT_LABELS).unwrap(),
            images: txn.open_table(IMAGES).unwrap(),
            containers: txn.open_table(CONTAINERS).unwrap(),
            leases: txn.open_table(LEASES).unwrap(),
            resources: txn.open_table(LEASE_RESOURCES).unwrap(),
        };
        tables.graph(now).unwrap()
    }

    /// containerd expires a lease once the time is after its `containerd.io/gc.expire`:
    /// at that very instant the lease is still live (and holds what it holds).
    #[test]
    fn a_lease_expires_after_its_instant_not_at_it() {
        let (_dir, metadata) = populate(&[Lease(
            "ns1",
            "l1",
            labels(&[(LABEL_EXPIRE, "2100-01-01T00:00:00.000000001Z")]),
        )]);
        let at = std::time::UNIX_EPOCH + Duration::new(4_102_444_800, 1);
        let live = graph_at(&metadata, at);
        assert!(live.expired.is_empty(), "{:?}", live.expired);
        assert_eq!(live.next_expiry, Some(at));
        let after = graph_at(&metadata, at + Duration::from_nanos(1));
        assert_eq!(after.expired, [("ns1".to_string(), "l1".to_string())]);
        assert_eq!(after.next_expiry, None);
    }

    /// containerd's notation: `content ns1 <digest>`, `snapshot-flat ns3 overlay/sn1`.
    fn name(node: &Node, flat: bool) -> String {
        let suffix = if flat { "-flat" } else { "" };
        match node {
            Node::Content((ns, digest)) => format!("content{suffix} {ns} {digest}"),
            Node::Snapshot((ns, sn, key)) => format!("snapshot{suffix} {ns} {sn}/{key}"),
        }
    }

    fn c(ns: &str, i: u64) -> String {
        format!("content {ns} {}", dgst(i))
    }

    fn sn(ns: &str, key: &str) -> String {
        format!("snapshot {ns} {key}")
    }

    #[test]
    fn roots_are_containerds() {
        let soon = rfc3339(SystemTime::now() + Duration::from_secs(3600));
        let now = rfc3339(SystemTime::now() - Duration::from_secs(1));
        let snap_ref = |suffix: &str| format!("{LABEL_REF_SNAPSHOT}{suffix}");
        let (_dir, metadata) = populate(&[
            Image("ns1", "image1", dgst(1), labels(&[])),
            Image(
                "ns1",
                "image2",
                dgst(2),
                labels(&[(&snap_ref("overlay"), "sn2")]),
            ),
            Image(
                "ns2",
                "image3",
                dgst(10),
                labels(&[(LABEL_REF_CONTENT, &dgst(11))]),
            ),
            Container("ns1", "container1", "overlay", "sn4", labels(&[])),
            Container(
                "ns1",
                "container2",
                "overlay",
                "sn5",
                labels(&[(&snap_ref("overlay"), "sn6")]),
            ),
            Container(
                "ns1",
                "container3",
                "overlay",
                "sn7",
                labels(&[
                    (&snap_ref("overlay/anything-1"), "sn8"),
                    (&snap_ref("overlay/anything-2"), "sn9"),
                    (LABEL_REF_CONTENT, &dgst(7)),
                ]),
            ),
            Container(
                "ns1",
                "container4",
                "",
                "",
                labels(&[
                    (&format!("{LABEL_REF_CONTENT}.0"), &dgst(8)),
                    (&format!("{LABEL_REF_CONTENT}.1"), &dgst(9)),
                ]),
            ),
            Content("ns1", dgst(1), labels(&[])),
            Content("ns1", dgst(2), labels(&[])),
            Content("ns1", dgst(3), labels(&[])),
            Content("ns2", dgst(1), labels(&[])),
            Content("ns2", dgst(2), labels(&[(LABEL_ROOT, "always")])),
            Content("ns2", dgst(8), labels(&[])),
            Content("ns2", dgst(9), labels(&[])),
            Snapshot("ns1", "overlay", "sn1", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn2", "", labels(&[])),
            Snapshot(
                "ns1",
                "overlay",
                "sn3",
                "",
                labels(&[(LABEL_ROOT, "always")]),
            ),
            Snapshot("ns1", "overlay", "sn4", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn5", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn6", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn7", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn8", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn9", "", labels(&[])),
            LeaseSnapshot("ns2", "l1", "overlay", "sn5"),
            LeaseSnapshot("ns2", "l2", "overlay", "sn6"),
            LeaseContent("ns2", "l1", dgst(4)),
            LeaseContent("ns2", "l2", dgst(5)),
            Lease("ns2", "l3", labels(&[(LABEL_EXPIRE, &soon)])),
            LeaseContent("ns2", "l3", dgst(6)),
            LeaseSnapshot("ns2", "l3", "overlay", "sn7"),
            Lease("ns2", "l4", labels(&[(LABEL_EXPIRE, &now)])),
            LeaseContent("ns2", "l4", dgst(7)),
            LeaseSnapshot("ns2", "l4", "overlay", "sn8"),
            Lease("ns3", "l1", labels(&[(LABEL_FLAT, &soon)])),
            LeaseContent("ns3", "l1", dgst(1)),
            LeaseSnapshot("ns3", "l1", "overlay", "sn1"),
        ]);
        let graph = graph(&metadata);
        let roots: BTreeSet<String> = graph.roots.iter().map(|(n, flat)| name(n, *flat)).collect();
        let expected: BTreeSet<String> = [
            c("ns1", 1),
            c("ns1", 2),
            c("ns1", 7),
            c("ns1", 8),
            c("ns1", 9),
            c("ns2", 2),
            c("ns2", 4),
            c("ns2", 5),
            c("ns2", 6),
            c("ns2", 10),
            c("ns2", 11),
            sn("ns1", "overlay/sn2"),
            sn("ns1", "overlay/sn3"),
            sn("ns1", "overlay/sn4"),
            sn("ns1", "overlay/sn5"),
            sn("ns1", "overlay/sn6"),
            sn("ns1", "overlay/sn7"),
            sn("ns1", "overlay/sn8"),
            sn("ns1", "overlay/sn9"),
            sn("ns2", "overlay/sn5"),
            sn("ns2", "overlay/sn6"),
            sn("ns2", "overlay/sn7"),
            format!("content-flat ns3 {}", dgst(1)),
            "snapshot-flat ns3 overlay/sn1".to_string(),
        ]
        .into_iter()
        .collect();
        assert_eq!(roots, expected);
        // Leases: l4 has expired and is collected; l1, l2, l3 (ns2) and l1 (ns3) are live.
        assert_eq!(graph.expired, [("ns2".to_string(), "l4".to_string())]);
    }

    #[test]
    fn references_are_containerds() {
        let snap_ref = |suffix: &str| format!("{LABEL_REF_SNAPSHOT}{suffix}");
        let content_ref = |suffix: &str| format!("{LABEL_REF_CONTENT}{suffix}");
        let (_dir, metadata) = populate(&[
            Content("ns1", dgst(1), labels(&[])),
            Content("ns1", dgst(2), labels(&[])),
            Content("ns1", dgst(3), labels(&[])),
            Content("ns1", dgst(4), labels(&[(LABEL_REF_CONTENT, &dgst(1))])),
            Content(
                "ns1",
                dgst(5),
                labels(&[
                    (&content_ref(".anything-1"), &dgst(2)),
                    (&content_ref(".anything-2"), &dgst(3)),
                ]),
            ),
            Content("ns1", dgst(6), labels(&[(&content_ref("bad"), &dgst(1))])),
            Content(
                "ns1",
                dgst(7),
                labels(&[
                    (&content_ref("/anything-1"), &dgst(2)),
                    (&content_ref("/anything-2"), &dgst(3)),
                ]),
            ),
            Content("ns2", dgst(1), labels(&[])),
            Content("ns2", dgst(2), labels(&[])),
            Snapshot("ns1", "overlay", "sn1", "", labels(&[])),
            Snapshot("ns1", "overlay", "sn2", "sn1", labels(&[])),
            Snapshot("ns1", "overlay", "sn3", "sn2", labels(&[])),
            Snapshot(
                "ns1",
                "overlay",
                "sn4",
                "",
                labels(&[(&snap_ref("btrfs"), "sn1"), (&snap_ref("overlay"), "sn1")]),
            ),
            Snapshot(
                "ns1",
                "overlay",
                "sn5",
                "",
                labels(&[
                    (&snap_ref("overlay/anything-1"), "sn1"),
                    (&snap_ref("overlay/anything-2"), "sn2"),
                ]),
            ),
            Snapshot("ns1", "btrfs", "sn1", "", labels(&[])),
            Snapshot("ns2", "overlay", "sn1", "", labels(&[])),
            Snapshot("ns2", "overlay", "sn2", "sn1", labels(&[])),
            Snapshot(
                "ns2",
                "overlay",
                "sn3",
                "",
                labels(&[
                    (LABEL_REF_CONTENT, &dgst(1)),
                    (&content_ref(".keep-me"), &dgst(6)),
                ]),
            ),
            Content("ns3", dgst(1), labels(&[])),
            Content("ns3", dgst(2), labels(&[(&content_ref(".0"), &dgst(1))])),
            Snapshot("ns3", "overlay", "sn1", "", labels(&[])),
            Snapshot("ns3", "overlay", "sn2", "sn1", labels(&[])),
            Snapshot(
                "ns3",
                "overlay",
                "sn3",
                "",
                labels(&[(&snap_ref("btrfs"), "sn1"), (&snap_ref("overlay"), "sn1")]),
            ),
        ]);
        let graph = graph(&metadata);
        let content = |ns: &str, i: u64| Node::Content((ns.to_string(), dgst(i)));
        let snapshot = |ns: &str, s: &str, key: &str| {
            Node::Snapshot((ns.to_string(), s.to_string(), key.to_string()))
        };
        let cases: Vec<(Node, bool, Vec<String>)> = vec![
            (content("ns1", 1), false, vec![]),
            (content("ns1", 2), false, vec![]),
            (content("ns1", 3), false, vec![]),
            (content("ns1", 4), false, vec![c("ns1", 1)]),
            (content("ns1", 5), false, vec![c("ns1", 2), c("ns1", 3)]),
            (content("ns1", 6), false, vec![]),
            (content("ns1", 7), false, vec![c("ns1", 2), c("ns1", 3)]),
            (content("ns2", 1), false, vec![]),
            (content("ns2", 2), false, vec![]),
            (snapshot("ns1", "overlay", "sn1"), false, vec![]),
            (
                snapshot("ns1", "overlay", "sn2"),
                false,
                vec![sn("ns1", "overlay/sn1")],
            ),
            (
                snapshot("ns1", "overlay", "sn3"),
                false,
                vec![sn("ns1", "overlay/sn2")],
            ),
            (
                snapshot("ns1", "overlay", "sn4"),
                false,
                vec![sn("ns1", "btrfs/sn1"), sn("ns1", "overlay/sn1")],
            ),
            (
                snapshot("ns1", "overlay", "sn5"),
                false,
                vec![sn("ns1", "overlay/sn1"), sn("ns1", "overlay/sn2")],
            ),
            (snapshot("ns1", "btrfs", "sn1"), false, vec![]),
            (snapshot("ns2", "overlay", "sn1"), false, vec![]),
            (
                snapshot("ns2", "overlay", "sn2"),
                false,
                vec![sn("ns2", "overlay/sn1")],
            ),
            (
                snapshot("ns2", "overlay", "sn3"),
                false,
                vec![c("ns2", 1), c("ns2", 6)],
            ),
            (
                snapshot("ns3", "overlay", "sn2"),
                true,
                vec!["snapshot-flat ns3 overlay/sn1".to_string()],
            ),
            (
                snapshot("ns3", "overlay", "sn2"),
                false,
                vec![sn("ns3", "overlay/sn1")],
            ),
            (snapshot("ns3", "overlay", "sn1"), true, vec![]),
            (snapshot("ns3", "overlay", "sn3"), true, vec![]),
            (
                snapshot("ns3", "overlay", "sn3"),
                false,
                vec![sn("ns3", "btrfs/sn1"), sn("ns3", "overlay/sn1")],
            ),
            // Flat content follows nothing either (containerd has no references for it).
            (content("ns3", 2), true, vec![]),
            (content("ns3", 2), false, vec![c("ns3", 1)]),
        ];
        for (node, flat, expected) in cases {
            let index = graph
                .find(Ref::of(&node))
                .unwrap_or_else(|| panic!("no record for {}", name(&node, flat)));
            let mut found = BTreeSet::new();
            graph.references(index, flat, |r, f| {
                found.insert(name(&r.owned(), f));
            });
            let expected: BTreeSet<String> = expected.into_iter().collect();
            assert_eq!(found, expected, "{}", name(&node, flat));
        }
    }
}
