//! The content-store conformance suite (containerd's `core/content/testsuite`, plus cases of
//! our own): every [`ContentStore`] implementation runs it.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use plinth_builtin_plugins::content::{ContentStore, testsuite};
//! # use plinth_builtin_plugins::Error;
//! # fn make_my_store(root: &std::path::Path) -> Result<Arc<dyn ContentStore>, Error> {
//! #     Ok(Arc::new(plinth_builtin_plugins::content::local::LocalStore::open(root)?))
//! # }
//! # async fn example() {
//! testsuite::run(|root| async move { make_my_store(&root) }).await;
//! # }
//! ```
//!
//! Each case is also a public function taking a fresh, empty store, so that an
//! implementation can run a subset; [`CASES`] lists them by name.
//!
//! containerd's cross-namespace cases need one backend seen by two namespaces, which a
//! single [`ContentStore`] cannot give: they take [`NamespaceViews`] instead, and run by
//! sharing policy ([`run_shared_policy`] with [`SHARED_POLICY_CASES`], [`run_isolated_policy`]
//! with [`ISOLATED_POLICY_CASES`]), for stores that have namespaces (the metadata layer, in
//! process or through the Content service).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use plinth_core::Category;

use super::{ContentStore, ContentWriter, Digest, Info, MAX_REF_LENGTH, Status};
use crate::error::Error;
use crate::namespaces::{Labels, MAX_LABEL_SIZE};

/// The future a case returns.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A case of any kind: takes what it runs on (made fresh for it) and panics on failure.
pub type CaseOn<S> = fn(S) -> CaseFuture;

/// A case: takes a fresh, empty store and panics on failure.
pub type Case = CaseOn<Arc<dyn ContentStore>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case of the suite, by name, in the order [`run`] runs them.
        pub const CASES: &[(&str, Case)] = &[$((stringify!($name), |store| Box::pin($name(store)))),*];
    };
}

cases![
    writer,
    update_status,
    commit_exists,
    resume,
    resume_truncate,
    resume_discard,
    resume_copy,
    resume_copy_seeker,
    resume_copy_reader_at,
    small_blob,
    labels,
    commit_error_state,
    empty_blob,
    locked_ref_is_unavailable_after_a_second,
    locked_ref_is_handed_over_when_closed_in_time,
    dropped_writer_releases_its_ref,
    invalid_refs_and_digests,
    mismatched_commit_keeps_the_ingest,
    commit_checks_the_expected_digest_given_at_open,
    writer_for_committed_digest_already_exists,
    truncate_only_to_zero,
    writer_after_commit_refuses_work,
    read_at_ranges,
    walk_filters,
    list_statuses_filter,
    status_of_ingests,
    delete_then_info,
    abort_rules,
    update_rules,
    write_owned_writes_like_write,
];

/// Runs every case of [`CASES`], each on a fresh store that `make` creates in a fresh
/// temporary directory (passed as its argument). A failing case does not stop the others:
/// every case runs, and the failures are reported together at the end.
///
/// # Panics
/// When any case fails, or `make` does for it, listing every failed case with its name and
/// message.
pub async fn run<F, Fut>(make: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn ContentStore>, Error>>,
{
    run_all(CASES, &make).await;
}

/// The content store as each namespace sees it, all over one backend: called with a
/// namespace's name, it returns that namespace's store (containerd's suite gets the same
/// from its context wrapper, which hands out a new namespace). What a cross-namespace case
/// takes.
pub type NamespaceViews = Arc<dyn Fn(&str) -> Result<Arc<dyn ContentStore>, Error> + Send + Sync>;

/// A cross-namespace case: takes the views of a fresh, empty backend and panics on failure.
pub type CrossNamespaceCase = CaseOn<NamespaceViews>;

/// containerd's cross-namespace cases for the shared policy, by name, in the order
/// [`run_shared_policy`] runs them.
pub const SHARED_POLICY_CASES: &[(&str, CrossNamespaceCase)] = &[
    ("cross_namespace_append", |views| {
        Box::pin(cross_namespace_append(views))
    }),
    ("cross_namespace_share", |views| {
        Box::pin(cross_namespace_share(views))
    }),
];

/// containerd's cross-namespace cases for the isolated policy, by name, in the order
/// [`run_isolated_policy`] runs them.
pub const ISOLATED_POLICY_CASES: &[(&str, CrossNamespaceCase)] =
    &[("cross_namespace_isolate", |views| {
        Box::pin(cross_namespace_isolate(views))
    })];

/// Runs every case of [`SHARED_POLICY_CASES`] as [`run`] does, each on fresh views that
/// `make` creates in a fresh temporary directory; their store must share blobs between
/// namespaces (containerd's `shared` content sharing policy).
///
/// # Panics
/// As [`run`].
pub async fn run_shared_policy<F, Fut>(make: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<NamespaceViews, Error>>,
{
    run_all(SHARED_POLICY_CASES, &make).await;
}

/// Runs every case of [`ISOLATED_POLICY_CASES`] as [`run`] does, each on fresh views that
/// `make` creates in a fresh temporary directory; their store must keep namespaces apart
/// (containerd's `isolated` content sharing policy).
///
/// # Panics
/// As [`run`].
pub async fn run_isolated_policy<F, Fut>(make: F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<NamespaceViews, Error>>,
{
    run_all(ISOLATED_POLICY_CASES, &make).await;
}

/// Runs every case of `cases` and panics with the report of the failures, if any.
async fn run_all<S, F, Fut>(cases: &[(&str, CaseOn<S>)], make: &F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<S, Error>>,
{
    let failures = run_cases(cases, make).await;
    if !failures.is_empty() {
        panic!("{}", failure_report(&failures, cases.len()));
    }
}

/// Runs each case of `cases` on what `make` creates fresh for it (a store for [`CASES`],
/// namespace views for the cross-namespace cases), as [`run`] does; returns the failures, by
/// case name, in the order the cases ran.
pub async fn run_cases<S, F, Fut>(cases: &[(&str, CaseOn<S>)], make: &F) -> Vec<(String, String)>
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<S, Error>>,
{
    let mut failures = Vec::new();
    for (name, case) in cases {
        if let Err(message) = try_case(*case, make).await {
            failures.push((name.to_string(), message));
        }
    }
    failures
}

/// What [`run`] panics with: how many cases failed of how many, then each one.
fn failure_report(failures: &[(String, String)], n_cases: usize) -> String {
    let names: Vec<&str> = failures.iter().map(|(name, _)| name.as_str()).collect();
    let mut report = format!(
        "content suite: {} of {n_cases} cases failed: {}",
        failures.len(),
        names.join(", ")
    );
    for (name, message) in failures {
        report.push_str(&format!("\n- case {name} failed: {message}"));
    }
    report
}

/// Runs one case on a fresh store, as [`run`] does.
///
/// # Panics
/// When the case fails, or `make` does, with its name and the message, or when no temporary
/// directory can be created.
pub async fn run_case<F, Fut>(name: &str, case: Case, make: &F)
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<Arc<dyn ContentStore>, Error>>,
{
    if let Err(message) = try_case(case, make).await {
        panic!("content suite case {name} failed: {message}");
    }
}

/// Runs one case on what `make` creates fresh; its panic (or `make`'s error) becomes the
/// message.
async fn try_case<S, F, Fut>(case: CaseOn<S>, make: &F) -> Result<(), String>
where
    F: Fn(PathBuf) -> Fut,
    Fut: Future<Output = Result<S, Error>>,
{
    let dir = tempfile::Builder::new()
        .prefix("plinth-content-suite-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let store = make(dir.path().to_path_buf())
        .await
        .map_err(|e| format!("making the store: {e:?}"))?;
    tokio::spawn(case(store)).await.map_err(|error| {
        if error.is_panic() {
            let payload = error.into_panic();
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "(panic without a message)".to_string())
        } else {
            error.to_string()
        }
    })
}

// ---------------------------------------------------------------------------------------
// Helpers

static CONTENT_SEED: AtomicU64 = AtomicU64::new(1);

/// `size` pseudo-random bytes, different on each call (as containerd's `createContent`).
fn create_content(size: usize) -> (Vec<u8>, Digest) {
    let bytes = pseudo_random_bytes(size, CONTENT_SEED.fetch_add(1, Ordering::Relaxed));
    let digest = Digest::of(&bytes);
    (bytes, digest)
}

/// `size` bytes from xorshift64* seeded with `seed`: the same for the same seed, and what no
/// filesystem compresses or deduplicates. The snapshot suite uses them too.
pub(crate) fn pseudo_random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn size_of(bytes: &[u8]) -> i64 {
    i64::try_from(bytes.len()).expect("test content fits i64")
}

/// Asserts that `result` failed with `category`.
#[track_caller]
fn assert_category<T: std::fmt::Debug>(result: Result<T, Error>, category: Category, what: &str) {
    match result {
        Ok(value) => panic!("{what}: expected a {category:?} error, got Ok({value:?})"),
        Err(error) => assert_eq!(
            error.category, category,
            "{what}: expected {category:?}, got {error:?}"
        ),
    }
}

#[track_caller]
fn assert_between(what: &str, time: SystemTime, from: SystemTime, to: SystemTime) {
    assert!(
        from <= time && time <= to,
        "{what}: {time:?} is not between {from:?} and {to:?}"
    );
}

async fn open(
    store: &dyn ContentStore,
    reference: &str,
    total: i64,
    expected: Option<Digest>,
) -> Box<dyn ContentWriter> {
    store
        .writer(reference, total, expected)
        .await
        .unwrap_or_else(|e| panic!("opening writer {reference:?}: {e:?}"))
}

async fn write_chunks(writer: &mut dyn ContentWriter, bytes: &[u8], chunk: usize) {
    for part in bytes.chunks(chunk.max(1)) {
        writer.write(part).await.expect("write");
    }
}

/// Writes and commits a whole blob (containerd's `content.WriteBlob`).
pub(crate) async fn write_blob(
    store: &dyn ContentStore,
    reference: &str,
    bytes: &[u8],
    expected: Option<Digest>,
) -> Digest {
    let mut writer = open(store, reference, size_of(bytes), expected.clone()).await;
    writer.write(bytes).await.expect("write blob");
    let digest = writer
        .commit(size_of(bytes), expected, Labels::new())
        .await
        .unwrap_or_else(|e| panic!("committing {reference:?}: {e:?}"));
    writer.close().await.expect("close after commit");
    digest
}

/// What a writer's status should say; times are checked against windows.
struct Expect<'a> {
    reference: &'a str,
    offset: i64,
    total: i64,
    digest: &'a Digest,
    started: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
}

#[track_caller]
fn check_status(status: &Status, digest: &Digest, expect: &Expect<'_>) {
    assert_eq!(status.reference, expect.reference, "status ref");
    assert_eq!(
        status.offset, expect.offset,
        "status offset of {}",
        expect.reference
    );
    assert_eq!(
        status.total, expect.total,
        "status total of {}",
        expect.reference
    );
    assert_eq!(
        digest, expect.digest,
        "writer digest of {}",
        expect.reference
    );
    assert_between(
        "started at",
        status.started_at,
        expect.started.0,
        expect.started.1,
    );
    assert_between(
        "updated at",
        status.updated_at,
        expect.updated.0,
        expect.updated.1,
    );
}

async fn check_writer(writer: &dyn ContentWriter, expect: &Expect<'_>) {
    let status = writer.status().await.expect("writer status");
    check_status(&status, &writer.digest(), expect);
}

/// containerd's `checkInfo`: digest, size, labels, and time windows.
async fn check_info(
    store: &dyn ContentStore,
    digest: &Digest,
    size: i64,
    labels: &Labels,
    created: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) -> Info {
    let info = store
        .info(digest)
        .await
        .unwrap_or_else(|e| panic!("info of {digest}: {e:?}"));
    assert_eq!(&info.digest, digest, "info digest");
    assert_eq!(info.size, size, "info size of {digest}");
    assert_eq!(&info.labels, labels, "info labels of {digest}");
    assert_between("created at", info.created_at, created.0, created.1);
    assert_between("updated at", info.updated_at, updated.0, updated.1);
    info
}

/// containerd's `checkContent`: the info and the bytes.
async fn check_content(store: &dyn ContentStore, digest: &Digest, bytes: &[u8]) {
    let read = store
        .read_at(digest, 0, bytes.len() + 1)
        .await
        .expect("read blob");
    assert_eq!(read.len(), bytes.len(), "blob size of {digest}");
    assert_eq!(&Digest::of(&read), digest, "blob digest");
}

/// A second writer on a held ref is refused: Unavailable (after the wait).
async fn check_ref_not_available(store: &dyn ContentStore, reference: &str) {
    let result = store.writer(reference, 0, None).await.map(|_| ());
    assert_category(result, Category::Unavailable, "second writer on a held ref");
}

// ---------------------------------------------------------------------------------------
// containerd's cases

/// containerd `Writer`: five writers open at once, with and without size and digest, small
/// writes; commit with labels; the info is right.
pub async fn writer(store: Arc<dyn ContentStore>) {
    let labels = labels_of(&[("containerd.io/gc.root", "2024-01-01T00:00:00Z")]);
    // (ref, size, give size at open, give digest at open, write chunk)
    let table: &[(&str, usize, bool, bool, usize)] = &[
        ("c1", 256, false, false, 32),
        ("c2", 256, true, false, 32),
        ("c3", 256, false, true, 32),
        ("c4", 256, true, true, 32),
        ("c5", 8 << 20, true, true, 64 << 10),
    ];
    let mut open_writers = Vec::new();
    for &(reference, size, with_size, with_digest, chunk) in table {
        let (bytes, digest) = create_content(size);
        let total = if with_size { size_of(&bytes) } else { 0 };
        let expected = with_digest.then(|| digest.clone());
        let writer = open(&*store, reference, total, expected).await;
        open_writers.push((writer, bytes, digest, chunk));
    }
    for (mut writer, bytes, digest, chunk) in open_writers {
        write_chunks(&mut *writer, &bytes, chunk).await;
        let before = SystemTime::now();
        let committed = writer
            .commit(0, None, labels.clone())
            .await
            .expect("commit");
        let after = SystemTime::now();
        assert_eq!(committed, digest, "commit digest");
        assert_eq!(writer.digest(), digest, "writer digest after commit");
        writer.close().await.expect("close after commit");
        check_info(
            &*store,
            &digest,
            size_of(&bytes),
            &labels,
            (before, after),
            (before, after),
        )
        .await;
    }
}

/// containerd `UpdateStatus`: the writer's status follows each write.
pub async fn update_status(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(256);
    let before_start = SystemTime::now();
    let mut writer = open(&*store, "c1", 256, Some(digest.clone())).await;
    let after_start = SystemTime::now();
    let started = (before_start, after_start);
    check_writer(
        &*writer,
        &Expect {
            reference: "c1",
            offset: 0,
            total: 256,
            digest: &Digest::of(b""),
            started,
            updated: started,
        },
    )
    .await;
    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let before = SystemTime::now();
        writer.write(&bytes[from..to]).await.expect("write");
        let after = SystemTime::now();
        check_writer(
            &*writer,
            &Expect {
                reference: "c1",
                offset: size_of(&bytes[..to]),
                total: 256,
                digest: &Digest::of(&bytes[..to]),
                started,
                updated: (before, after),
            },
        )
        .await;
    }
    let labels = labels_of(&[("containerd.io/gc.root", "now")]);
    let before = SystemTime::now();
    writer
        .commit(0, None, labels.clone())
        .await
        .expect("commit");
    let after = SystemTime::now();
    writer.close().await.expect("close");
    check_info(
        &*store,
        &digest,
        256,
        &labels,
        (before, after),
        (before, after),
    )
    .await;
}

/// containerd `CommitExists`: committing content that is already there is AlreadyExists,
/// with or without the expected digest.
pub async fn commit_exists(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(256);
    write_blob(&*store, "c1", &bytes, Some(digest.clone())).await;
    for (i, expected) in [Some(digest.clone()), None].into_iter().enumerate() {
        let mut writer = open(&*store, &format!("c1-commitexists-{i}"), 0, None).await;
        writer.write(&bytes).await.expect("write");
        let result = writer
            .commit(size_of(&bytes), expected, Labels::new())
            .await;
        assert_category(
            result,
            Category::AlreadyExists,
            "commit of existing content",
        );
        writer.close().await.expect("close");
    }
}

/// Ours: `write_owned` (what the gRPC server hands its buffers to) writes exactly what
/// `write` does, mixed in one ingest.
pub async fn write_owned_writes_like_write(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(3000);
    let mut writer = open(&*store, "owned", size_of(&bytes), Some(digest.clone())).await;
    writer
        .write_owned(bytes[..1000].to_vec())
        .await
        .expect("write_owned");
    writer.write(&bytes[1000..2000]).await.expect("write");
    writer
        .write_owned(bytes[2000..].to_vec())
        .await
        .expect("write_owned");
    assert_eq!(writer.status().await.expect("status").offset, 3000);
    let committed = writer
        .commit(size_of(&bytes), None, Labels::new())
        .await
        .expect("commit");
    assert_eq!(committed, digest);
    writer.close().await.expect("close");
    let read = store
        .read_at(&digest, 0, bytes.len())
        .await
        .expect("read_at");
    assert!(read == bytes, "the blob reads back as written");
}

/// containerd `Resume`: close half way, reopen, the status is as before; finish.
pub async fn resume(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(256);
    let (first, second) = bytes.split_at(128);
    let before_start = SystemTime::now();
    let mut writer = open(&*store, "cb", 256, Some(digest.clone())).await;
    let after_start = SystemTime::now();
    writer.write(first).await.expect("write first half");
    let after_update = SystemTime::now();
    let first_digest = Digest::of(first);
    let expect = Expect {
        reference: "cb",
        offset: 128,
        total: 256,
        digest: &first_digest,
        started: (before_start, after_start),
        updated: (after_start, after_update),
    };
    check_writer(&*writer, &expect).await;
    writer.close().await.expect("close first writer");

    let mut writer = open(&*store, "cb", 256, Some(digest.clone())).await;
    check_writer(&*writer, &expect).await;
    let before_update = SystemTime::now();
    writer.write(second).await.expect("write second half");
    let after_update = SystemTime::now();
    check_writer(
        &*writer,
        &Expect {
            offset: 256,
            digest: &digest,
            updated: (before_update, after_update),
            ..expect
        },
    )
    .await;
    let before = SystemTime::now();
    writer.commit(0, None, Labels::new()).await.expect("commit");
    let after = SystemTime::now();
    writer.close().await.expect("close second writer");
    check_info(
        &*store,
        &digest,
        256,
        &Labels::new(),
        (before, after),
        (before, after),
    )
    .await;
}

/// How a resumed ingest is finished (containerd's `resumeTruncate`, `resumeDiscard`,
/// `resumeCopy`, `resumeCopySeeker`, `resumeCopyReaderAt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Truncate to 0 and write everything again, in 1 KiB pieces.
    Truncate,
    /// Write the rest, from the offset written before, in 1 KiB pieces.
    Discard,
    /// containerd's `content.Copy` from the whole blob, given `Source` as reader.
    Copy(Source),
}

/// What the reader handed to containerd's `content.Copy` can do besides reading; it decides
/// how `Copy` resumes at the writer's offset (containerd's `seekReader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A plain `io.Reader`: `Copy` reads and discards up to the offset.
    Reader,
    /// An `io.ReadSeeker`: `Copy` seeks to the offset.
    Seeker,
    /// An `io.Reader` and `io.ReaderAt`: `Copy` reads a section from the offset when there is
    /// something left to read, and otherwise reads and discards as from a plain reader.
    ReaderAt,
}

/// One access `content.Copy` made to its source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// A read at the current position: (position, bytes returned).
    Read(usize, usize),
    /// A seek to an absolute position.
    Seek(usize),
    /// A positioned read: (position, bytes returned).
    ReadAt(usize, usize),
}

/// The blob as a reader with the abilities of `source`, recording each access.
struct RecordedSource<'a> {
    bytes: &'a [u8],
    source: Source,
    position: usize,
    accesses: Vec<Access>,
}

impl RecordedSource<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> usize {
        let n = buffer.len().min(self.bytes.len() - self.position);
        buffer[..n].copy_from_slice(&self.bytes[self.position..self.position + n]);
        self.accesses.push(Access::Read(self.position, n));
        self.position += n;
        n
    }

    /// `None` unless the source is a seeker.
    fn seek(&mut self, to: usize) -> Option<usize> {
        (self.source == Source::Seeker).then(|| {
            self.accesses.push(Access::Seek(to));
            self.position = to;
            to
        })
    }

    /// `None` unless the source is a reader-at. Does not move the position.
    fn read_at(&mut self, buffer: &mut [u8], at: usize) -> Option<usize> {
        (self.source == Source::ReaderAt).then(|| {
            let n = buffer.len().min(self.bytes.len().saturating_sub(at));
            buffer[..n].copy_from_slice(&self.bytes[at..at + n]);
            self.accesses.push(Access::ReadAt(at, n));
            n
        })
    }
}

/// containerd's copy buffer (its pool hands out 1 MiB buffers, filled before each write).
const COPY_BUFFER: usize = 1 << 20;

/// containerd's `content.Copy` (without its retry on a reset): resume at the writer's offset
/// from `source` (seek, section from the offset, or discard up to it), copy the rest in full
/// buffers, check that enough was read, commit with size and digest; content that already
/// exists is success.
async fn content_copy(
    writer: &mut dyn ContentWriter,
    source: &mut RecordedSource<'_>,
    size: i64,
    expected: &Digest,
) -> Result<(), String> {
    let offset = writer
        .status()
        .await
        .map_err(|e| format!("status: {e:?}"))?
        .offset;
    let offset_bytes = usize::try_from(offset).map_err(|e| format!("offset {offset}: {e}"))?;
    let size_bytes = usize::try_from(size).map_err(|e| format!("size {size}: {e}"))?;
    let mut buffer = vec![0u8; COPY_BUFFER];
    // Where positioned reads go next, when resuming through a section of a reader-at.
    let mut section: Option<usize> = None;
    if offset > 0 {
        if source.seek(offset_bytes).is_some() {
        } else if source.source == Source::ReaderAt && size_bytes > offset_bytes {
            section = Some(offset_bytes);
        } else {
            let mut discarded = 0;
            while discarded < offset_bytes {
                let want = (offset_bytes - discarded).min(buffer.len());
                let n = source.read(&mut buffer[..want]);
                if n == 0 {
                    break;
                }
                discarded += n;
            }
            if discarded != offset_bytes {
                return Err("unable to discard to offset".to_string());
            }
        }
    }
    let mut copied = 0usize;
    let mut at_end = false;
    while !at_end {
        // io.ReadAtLeast: fill the buffer, or stop at the end (a read that returns nothing).
        let mut filled = 0;
        while filled < buffer.len() {
            let n = match section.as_mut() {
                Some(at) => {
                    // The section ends at offset + size (past the blob: its end is first).
                    let end = offset_bytes + size_bytes;
                    let want = (buffer.len() - filled).min(end - *at);
                    let n = source
                        .read_at(&mut buffer[filled..filled + want], *at)
                        .unwrap_or(0);
                    *at += n;
                    n
                }
                None => source.read(&mut buffer[filled..]),
            };
            if n == 0 {
                at_end = true;
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        writer
            .write(&buffer[..filled])
            .await
            .map_err(|e| format!("failed to copy: {e:?}"))?;
        copied += filled;
    }
    if size != 0 && copied < size_bytes - offset_bytes {
        return Err(format!(
            "short read: expected {} bytes but got {copied}",
            size_bytes - offset_bytes
        ));
    }
    match writer
        .commit(size, Some(expected.clone()), Labels::new())
        .await
    {
        Err(error) if error.category != Category::AlreadyExists => {
            Err(format!("failed commit: {error:?}"))
        }
        _ => Ok(()),
    }
}

/// The accesses `content.Copy` makes to a `source` over `size` bytes when the writer is at
/// `offset` (all reads fit one buffer here): how each kind of reader resumes.
fn expected_accesses(source: Source, offset: usize, size: usize) -> Vec<Access> {
    // A read loop ends with the read that returns nothing.
    let reads_from = |at: usize| {
        let mut reads = vec![Access::Read(at, size - at)];
        if at < size {
            reads.push(Access::Read(size, 0));
        }
        reads
    };
    let (mut accesses, then) = match source {
        _ if offset == 0 => (vec![], reads_from(0)),
        Source::Seeker => (vec![Access::Seek(offset)], reads_from(offset)),
        Source::ReaderAt if size > offset => (
            vec![],
            vec![
                Access::ReadAt(offset, size - offset),
                Access::ReadAt(size, 0),
            ],
        ),
        Source::Reader | Source::ReaderAt => (vec![Access::Read(0, offset)], reads_from(offset)),
    };
    accesses.extend(then);
    accesses
}

/// containerd `checkResume`: for sizes 500, 5000, 50000 and 0–100 % written before a close,
/// reopen, find the offset, finish with `finish`.
async fn check_resume(store: &dyn ContentStore, finish: Finish) {
    let sizes = [500usize, 5000, 50000];
    let fractions = [0.0, 0.1, 0.5, 0.9, 1.0];
    for (i, &size) in sizes.iter().enumerate() {
        for (j, &fraction) in fractions.iter().enumerate() {
            let (bytes, digest) = create_content(size);
            let written = (size as f64 * fraction) as usize;
            let reference = format!("ref-{i}-{j}");
            let mut writer = open(store, &reference, size_of(&bytes), Some(digest.clone())).await;
            writer.write(&bytes[..written]).await.expect("write");
            writer.close().await.expect("close");

            let mut writer = open(store, &reference, size_of(&bytes), Some(digest.clone())).await;
            let offset = writer.status().await.expect("status").offset;
            assert_eq!(
                offset,
                size_of(&bytes[..written]),
                "resumed offset of {reference}"
            );
            let before = SystemTime::now();
            match finish {
                Finish::Truncate | Finish::Discard => {
                    if finish == Finish::Truncate {
                        writer.truncate(0).await.expect("truncate");
                        write_chunks(&mut *writer, &bytes, 1024).await;
                    } else {
                        write_chunks(&mut *writer, &bytes[written..], 1024).await;
                    }
                    let committed = writer
                        .commit(size_of(&bytes), Some(digest.clone()), Labels::new())
                        .await
                        .unwrap_or_else(|e| panic!("commit of {reference} ({finish:?}): {e:?}"));
                    assert_eq!(committed, digest);
                }
                Finish::Copy(source) => {
                    let mut recorded = RecordedSource {
                        bytes: &bytes,
                        source,
                        position: 0,
                        accesses: Vec::new(),
                    };
                    content_copy(&mut *writer, &mut recorded, size_of(&bytes), &digest)
                        .await
                        .unwrap_or_else(|e| panic!("copy to {reference} ({finish:?}): {e}"));
                    assert_eq!(
                        recorded.accesses,
                        expected_accesses(source, written, size),
                        "how content.Copy from a {source:?} resumed {reference} at {written}"
                    );
                }
            }
            let after = SystemTime::now();
            writer.close().await.expect("close");
            check_info(
                store,
                &digest,
                size_of(&bytes),
                &Labels::new(),
                (before, after),
                (before, after),
            )
            .await;
        }
    }
}

/// containerd `ResumeTruncate`.
pub async fn resume_truncate(store: Arc<dyn ContentStore>) {
    check_resume(&*store, Finish::Truncate).await;
}

/// containerd `ResumeDiscard`.
pub async fn resume_discard(store: Arc<dyn ContentStore>) {
    check_resume(&*store, Finish::Discard).await;
}

/// containerd `ResumeCopy`: `content.Copy` from a plain reader, which discards up to the
/// offset.
pub async fn resume_copy(store: Arc<dyn ContentStore>) {
    check_resume(&*store, Finish::Copy(Source::Reader)).await;
}

/// containerd `ResumeCopySeeker`: `content.Copy` from a reader that seeks to the offset.
pub async fn resume_copy_seeker(store: Arc<dyn ContentStore>) {
    check_resume(&*store, Finish::Copy(Source::Seeker)).await;
}

/// containerd `ResumeCopyReaderAt`: `content.Copy` from a reader-at, read as a section from
/// the offset.
pub async fn resume_copy_reader_at(store: Arc<dyn ContentStore>) {
    check_resume(&*store, Finish::Copy(Source::ReaderAt)).await;
}

/// containerd `SmallBlob`: reading more than a small blob holds returns the blob.
pub async fn small_blob(store: Arc<dyn ContentStore>) {
    let blob = b"foobar";
    let digest = Digest::of(blob);
    let mut writer = open(&*store, "small_blob", size_of(blob), Some(digest.clone())).await;
    writer.write(blob).await.expect("write");
    writer
        .commit(size_of(blob), Some(digest.clone()), Labels::new())
        .await
        .expect("commit");
    writer.close().await.expect("close");
    let read = store
        .read_at(&digest, 0, blob.len() + 1)
        .await
        .expect("read");
    assert_eq!(read, blob, "small blob read back");
}

/// containerd `Labels`: commit with labels, replace them all, then change two by field path.
pub async fn labels(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(256);
    let mut writer = open(&*store, "c1-checklabels", 256, Some(digest.clone())).await;
    writer.write(&bytes).await.expect("write");
    let root_time = "2024-01-01T00:00:00Z";
    let mut labels = labels_of(&[
        ("k1", "v1"),
        ("k2", "v2"),
        ("containerd.io/gc.root", root_time),
    ]);
    let before_commit = SystemTime::now();
    writer
        .commit(0, None, labels.clone())
        .await
        .expect("commit");
    let after_commit = SystemTime::now();
    writer.close().await.expect("close");
    let committed = (before_commit, after_commit);
    let info = check_info(&*store, &digest, 256, &labels, committed, committed).await;

    labels.insert("k1".into(), "newvalue".into());
    labels.remove("k2");
    labels.insert("k3".into(), "v3".into());
    let before = SystemTime::now();
    let updated = store
        .update(
            Info {
                labels: labels.clone(),
                ..info.clone()
            },
            &[],
        )
        .await
        .expect("update all labels");
    let after = SystemTime::now();
    assert_eq!(updated.labels, labels, "update returns the new labels");
    check_info(&*store, &digest, 256, &labels, committed, (before, after)).await;

    // labels.k3 is absent from the request: removed; labels.k1 is set.
    let requested = labels_of(&[("k1", "v1"), ("containerd.io/gc.root", root_time)]);
    let before = SystemTime::now();
    store
        .update(
            Info {
                labels: requested.clone(),
                ..info
            },
            &["labels.k3".into(), "labels.k1".into()],
        )
        .await
        .expect("update by field path");
    let after = SystemTime::now();
    check_info(
        &*store,
        &digest,
        256,
        &requested,
        committed,
        (before, after),
    )
    .await;
}

/// containerd `CommitErrorState`: after every failed commit the ref can be opened again and
/// the ingest holds what was written; wrong digest and wrong size are FailedPrecondition.
pub async fn commit_error_state(store: Arc<dyn ContentStore>) {
    let (c1, d1) = create_content(256);
    let (_, d2) = create_content(256);
    write_blob(&*store, "c1", &c1, Some(d1.clone())).await;
    let reference = "c1-commiterror-state";
    let mut more = c1.clone();
    more.extend_from_slice(b"more");
    let more_size = size_of(&more);

    // Exists, with and without the digest: the ingest is removed, the ref free again.
    for expected in [Some(d1.clone()), None] {
        let mut writer = open(&*store, reference, 0, None).await;
        check_ref_not_available(&*store, reference).await;
        writer.write(&c1).await.expect("write");
        let result = writer.commit(size_of(&c1), expected, Labels::new()).await;
        assert_category(
            result,
            Category::AlreadyExists,
            "commit of existing content",
        );
        writer.close().await.expect("close");
    }

    let mut writer = open(&*store, reference, 0, None).await;
    check_ref_not_available(&*store, reference).await;
    assert_eq!(
        writer.status().await.expect("status").offset,
        0,
        "ingest removed by AlreadyExists"
    );
    writer.write(&more).await.expect("write");
    let result = writer
        .commit(more_size, Some(d2.clone()), Labels::new())
        .await;
    assert_category(
        result,
        Category::FailedPrecondition,
        "commit with the wrong digest",
    );
    writer.close().await.expect("close");

    let mut writer = open(&*store, reference, 0, None).await;
    check_ref_not_available(&*store, reference).await;
    let result = writer.commit(size_of(&c1), None, Labels::new()).await;
    assert_category(
        result,
        Category::FailedPrecondition,
        "commit with the wrong size",
    );
    writer.close().await.expect("close");

    let mut writer = open(&*store, reference, 0, None).await;
    check_ref_not_available(&*store, reference).await;
    let committed = writer
        .commit(more_size, None, Labels::new())
        .await
        .expect("commit of what was written before the failures");
    assert_eq!(committed, Digest::of(&more));
    writer.close().await.expect("close");

    let mut writer = open(&*store, reference, 0, None).await;
    writer.write(&c1).await.expect("write");
    check_ref_not_available(&*store, reference).await;
    let result = writer
        .commit(size_of(&c1), Some(d1.clone()), Labels::new())
        .await;
    assert_category(
        result,
        Category::AlreadyExists,
        "commit of existing content",
    );
    writer.close().await.expect("close");

    let mut writer = open(&*store, reference, 0, None).await;
    check_ref_not_available(&*store, reference).await;
    writer.truncate(0).await.expect("truncate");
    writer.close().await.expect("close");

    let mut writer = open(&*store, reference, 0, None).await;
    writer.truncate(0).await.expect("truncate");
    writer.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------
// containerd's cross-namespace cases

/// The two namespaces of a cross-namespace case: the one that writes first, and the other.
const FIRST_NAMESPACE: &str = "suite-first";
const SECOND_NAMESPACE: &str = "suite-second";

/// The store as `namespace` sees it.
#[track_caller]
fn view(views: &NamespaceViews, namespace: &str) -> Arc<dyn ContentStore> {
    views(namespace).unwrap_or_else(|e| panic!("the store as namespace {namespace} sees it: {e:?}"))
}

/// containerd `CrossNamespaceShare` (shared policy): the first namespace writes a blob; a
/// writer for it in the second namespace, with its size and digest, shows it written whole
/// (offset and total its size, its digest) and commits it without a byte sent; both
/// namespaces then hold it.
pub async fn cross_namespace_share(views: NamespaceViews) {
    let first = view(&views, FIRST_NAMESPACE);
    let (bytes, digest) = create_content(1000);
    let size = size_of(&bytes);
    let reference = "ref-1000";
    let before_first = SystemTime::now();
    write_blob(&*first, reference, &bytes, Some(digest.clone())).await;

    let second = view(&views, SECOND_NAMESPACE);
    let mut writer = open(&*second, reference, size, Some(digest.clone())).await;
    let after_open = SystemTime::now();
    check_writer(
        &*writer,
        &Expect {
            reference,
            offset: size,
            total: size,
            digest: &digest,
            started: (before_first, after_open),
            updated: (before_first, after_open),
        },
    )
    .await;
    writer
        .commit(size, Some(digest.clone()), Labels::new())
        .await
        .unwrap_or_else(|e| panic!("commit in the second namespace: {e:?}"));
    let after_commit = SystemTime::now();
    writer.close().await.expect("close after commit");

    for store in [&first, &second] {
        let window = (before_first, after_commit);
        check_info(&**store, &digest, size, &Labels::new(), window, window).await;
        check_content(&**store, &digest, &bytes).await;
    }
}

/// containerd `CrossNamespaceAppend` (shared policy): as `CrossNamespaceShare`, but the
/// second namespace writes more bytes after the shared ones and commits the longer blob: the
/// first namespace keeps the blob it wrote, the second holds the new one.
pub async fn cross_namespace_append(views: NamespaceViews) {
    let first = view(&views, FIRST_NAMESPACE);
    let (bytes, digest) = create_content(1000);
    let size = size_of(&bytes);
    let reference = "ref-1000";
    let before_first = SystemTime::now();
    write_blob(&*first, reference, &bytes, Some(digest.clone())).await;

    let second = view(&views, SECOND_NAMESPACE);
    let extra = b"appended bytes";
    let longer = [&bytes[..], &extra[..]].concat();
    let longer_size = size_of(&longer);
    let longer_digest = Digest::of(&longer);
    let mut writer = open(&*second, reference, size, Some(digest.clone())).await;
    let after_open = SystemTime::now();
    check_writer(
        &*writer,
        &Expect {
            reference,
            offset: size,
            total: size,
            digest: &digest,
            started: (before_first, after_open),
            updated: (before_first, after_open),
        },
    )
    .await;
    writer
        .write(extra)
        .await
        .unwrap_or_else(|e| panic!("appending to the shared blob: {e:?}"));
    writer
        .commit(longer_size, Some(longer_digest.clone()), Labels::new())
        .await
        .unwrap_or_else(|e| panic!("commit of the longer blob: {e:?}"));
    let after_commit = SystemTime::now();
    writer.close().await.expect("close after commit");

    let window = (before_first, after_commit);
    check_info(&*first, &digest, size, &Labels::new(), window, window).await;
    check_content(&*first, &digest, &bytes).await;
    check_info(
        &*second,
        &longer_digest,
        longer_size,
        &Labels::new(),
        window,
        window,
    )
    .await;
    check_content(&*second, &longer_digest, &longer).await;
}

/// containerd `CrossNamespaceIsolate` (isolated policy): a writer in the second namespace
/// for a blob only the first one holds is a new, empty ingest (offset 0, the digest of no
/// bytes), started after the first namespace's write: the bytes must be uploaded.
pub async fn cross_namespace_isolate(views: NamespaceViews) {
    let first = view(&views, FIRST_NAMESPACE);
    let (bytes, digest) = create_content(1000);
    let size = size_of(&bytes);
    let reference = "ref-1000";
    write_blob(&*first, reference, &bytes, Some(digest.clone())).await;
    let after_first = SystemTime::now();

    let second = view(&views, SECOND_NAMESPACE);
    let writer = open(&*second, reference, size, Some(digest)).await;
    let after_open = SystemTime::now();
    let status = writer.status().await.expect("writer status");
    assert_eq!(writer.digest(), Digest::of(b""), "digest of a new ingest");
    assert_eq!(status.offset, 0, "offset of a new ingest");
    assert_between(
        "started at of a new ingest",
        status.started_at,
        after_first,
        after_open,
    );
    writer.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------
// Plinth's cases

/// An empty blob commits (the sha256 of nothing) and reads back empty.
pub async fn empty_blob(store: Arc<dyn ContentStore>) {
    let digest = Digest::of(b"");
    let mut writer = open(&*store, "empty", 0, Some(digest.clone())).await;
    let committed = writer
        .commit(0, Some(digest.clone()), Labels::new())
        .await
        .expect("commit empty");
    assert_eq!(committed, digest);
    writer.close().await.expect("close");
    assert_eq!(store.info(&digest).await.expect("info").size, 0);
    assert_eq!(
        store.read_at(&digest, 0, 10).await.expect("read"),
        Vec::<u8>::new()
    );
}

/// A second writer on a held ref waits about a second, then gets Unavailable; the holder
/// is not disturbed. (A loaded machine only lengthens the wait, so its lower bound is
/// exact; the upper bound only says that it gives up, with room for any scheduling delay.)
pub async fn locked_ref_is_unavailable_after_a_second(store: Arc<dyn ContentStore>) {
    let mut first = open(&*store, "held", 0, None).await;
    first.write(b"first").await.expect("write");
    let start = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), store.writer("held", 0, None))
        .await
        .expect("the second writer never gave up on the held ref")
        .map(|_| ());
    let waited = start.elapsed();
    assert_category(result, Category::Unavailable, "second writer");
    assert!(
        waited >= Duration::from_millis(800),
        "second writer gave up after {waited:?}, expected about a second"
    );
    first
        .write(b" still works")
        .await
        .expect("holder keeps writing");
    assert_eq!(first.digest(), Digest::of(b"first still works"));
    first.close().await.expect("close");
}

/// A second writer that waits gets the ref when the first closes within the wait, and
/// resumes where it stopped. The first closes as soon as the second is waiting; an attempt
/// whose close itself took most of the wait (a loaded machine) proves nothing and is made
/// again, on a new ref.
pub async fn locked_ref_is_handed_over_when_closed_in_time(store: Arc<dyn ContentStore>) {
    const ATTEMPTS: usize = 5;
    for attempt in 0..ATTEMPTS {
        let reference = format!("handover-{attempt}");
        let mut first = open(&*store, &reference, 0, None).await;
        first.write(b"0123").await.expect("write");
        let started = Instant::now();
        // join! polls the second writer first: it finds the ref held and waits; then the
        // first closes.
        let closer = async move {
            first.close().await.expect("close first");
            started.elapsed()
        };
        let (second, closed_after) = tokio::join!(store.writer(&reference, 0, None), closer);
        match second {
            Ok(second) => {
                assert_eq!(second.status().await.expect("status").offset, 4);
                assert_eq!(second.digest(), Digest::of(b"0123"));
                second.close().await.expect("close second");
                return;
            }
            Err(_) if closed_after >= Duration::from_millis(800) => continue,
            Err(error) => panic!(
                "second writer did not get the ref closed {closed_after:?} into its wait: {error:?}"
            ),
        }
    }
    panic!("in {ATTEMPTS} attempts, closing a writer never took less than 800 ms");
}

/// Dropping a writer without close releases its ref; the ingest stays. (Were the ref still
/// held, the new writer would wait and get Unavailable.)
pub async fn dropped_writer_releases_its_ref(store: Arc<dyn ContentStore>) {
    let mut writer = open(&*store, "dropped", 0, None).await;
    writer.write(b"abc").await.expect("write");
    drop(writer);
    let writer = open(&*store, "dropped", 0, None).await;
    assert_eq!(writer.status().await.expect("status").offset, 3);
    writer.close().await.expect("close");
}

/// Bad refs are InvalidArgument everywhere a ref is taken; bad digests do not parse.
pub async fn invalid_refs_and_digests(store: Arc<dyn ContentStore>) {
    // Longer than any store accepts (the metadata layer's limit, or the limit of the store
    // under it, which leaves room for the namespace).
    let long = "r".repeat(super::MAX_STORED_REF_LENGTH + 1);
    for reference in ["", "a\nb", "nul\0", "tab\there", long.as_str()] {
        assert_category(
            store.writer(reference, 0, None).await.map(|_| ()),
            Category::InvalidArgument,
            "writer",
        );
        assert_category(
            store.status(reference).await,
            Category::InvalidArgument,
            "status",
        );
        assert_category(
            store.abort(reference).await,
            Category::InvalidArgument,
            "abort",
        );
    }
    assert!(
        store.list_statuses(&[]).await.expect("list").is_empty(),
        "nothing was created"
    );
    let max = "r".repeat(MAX_REF_LENGTH);
    open(&*store, &max, 0, None)
        .await
        .close()
        .await
        .expect("a ref of the maximum length");

    let good = "0123456789abcdef".repeat(4);
    for text in [
        String::new(),
        good.clone(),
        format!("sha512:{good}"),
        format!("sha256:{}", good.to_uppercase()),
        format!("sha256:{}", &good[1..]),
        format!("sha256:{good}0"),
        format!("sha256:../{}", &good[3..]),
        "sha256:".to_string(),
    ] {
        assert_category(
            Digest::parse(&text),
            Category::InvalidArgument,
            &format!("digest {text:?}"),
        );
    }
    assert_eq!(
        Digest::parse(&format!("sha256:{good}"))
            .expect("valid")
            .hex(),
        good
    );
}

/// A commit refused for its size or digest keeps the ingest: the same writer can still be
/// closed, and the next one resumes at the same offset and digest.
pub async fn mismatched_commit_keeps_the_ingest(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(1000);
    let (_, other) = create_content(1000);
    // (commit size, commit digest)
    let table: &[(i64, Option<&Digest>)] = &[
        (999, None),
        (1001, None),
        (1000, Some(&other)),
        (0, Some(&other)),
        (999, Some(&digest)),
    ];
    let mut writer = open(&*store, "mismatch", 0, None).await;
    writer.write(&bytes).await.expect("write");
    writer.close().await.expect("close");
    for &(size, expected) in table {
        let mut writer = open(&*store, "mismatch", 0, None).await;
        let result = writer.commit(size, expected.cloned(), Labels::new()).await;
        assert_category(
            result,
            Category::FailedPrecondition,
            &format!("commit({size}, {expected:?})"),
        );
        writer.close().await.expect("close");
        let status = store.status("mismatch").await.expect("ingest kept");
        assert_eq!(
            status.offset, 1000,
            "offset kept after commit({size}, {expected:?})"
        );
    }
    let mut writer = open(&*store, "mismatch", 0, None).await;
    assert_eq!(writer.digest(), digest, "digest restored on resume");
    assert_eq!(
        writer
            .commit(1000, Some(digest.clone()), Labels::new())
            .await
            .expect("commit"),
        digest
    );
    writer.close().await.expect("close");
    assert_category(
        store.status("mismatch").await,
        Category::NotFound,
        "ingest after commit",
    );
}

/// Without an expected digest at commit, the one given at open is checked.
pub async fn commit_checks_the_expected_digest_given_at_open(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(100);
    let mut writer = open(&*store, "expected", 0, Some(digest.clone())).await;
    writer.write(&bytes[..99]).await.expect("write");
    let result = writer.commit(0, None, Labels::new()).await;
    assert_category(
        result,
        Category::FailedPrecondition,
        "commit of other bytes than expected",
    );
    writer.write(&bytes[99..]).await.expect("write the rest");
    assert_eq!(
        writer.commit(0, None, Labels::new()).await.expect("commit"),
        digest
    );
    writer.close().await.expect("close");
}

/// A writer for a digest that is committed already is AlreadyExists.
pub async fn writer_for_committed_digest_already_exists(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(64);
    write_blob(&*store, "first", &bytes, Some(digest.clone())).await;
    let result = store.writer("second", 64, Some(digest)).await.map(|_| ());
    assert_category(
        result,
        Category::AlreadyExists,
        "writer for committed content",
    );
    // The ref is not left locked.
    open(&*store, "second", 0, None)
        .await
        .close()
        .await
        .expect("close");
}

/// Truncate accepts only 0, which resets data and digest.
pub async fn truncate_only_to_zero(store: Arc<dyn ContentStore>) {
    let mut writer = open(&*store, "truncate", 0, None).await;
    writer.write(b"0123456789").await.expect("write");
    for size in [1, 5, 10, 11, -1] {
        assert_category(
            writer.truncate(size).await,
            Category::InvalidArgument,
            &format!("truncate({size})"),
        );
    }
    assert_eq!(
        writer.status().await.expect("status").offset,
        10,
        "a refused truncate changes nothing"
    );
    writer.truncate(0).await.expect("truncate(0)");
    assert_eq!(writer.digest(), Digest::of(b""));
    assert_eq!(writer.status().await.expect("status").offset, 0);
    writer.write(b"abc").await.expect("write after truncate");
    assert_eq!(writer.digest(), Digest::of(b"abc"));
    writer.close().await.expect("close");
    assert_eq!(store.status("truncate").await.expect("status").offset, 3);
}

/// After a commit, the writer keeps its digest but refuses writes; the ref is free.
pub async fn writer_after_commit_refuses_work(store: Arc<dyn ContentStore>) {
    let mut writer = open(&*store, "done", 0, None).await;
    writer.write(b"done").await.expect("write");
    let digest = writer.commit(0, None, Labels::new()).await.expect("commit");
    assert_eq!(writer.digest(), digest);
    assert!(writer.write(b"more").await.is_err(), "write after commit");
    assert!(
        writer.commit(0, None, Labels::new()).await.is_err(),
        "second commit"
    );
    let again = store
        .writer("done", 0, None)
        .await
        .expect("the ref is free after commit");
    assert_eq!(
        again.status().await.expect("status").offset,
        0,
        "a new ingest"
    );
    again.close().await.expect("close");
    writer.close().await.expect("close after commit");
}

/// `read_at` ranges: short at the end, empty exactly at the end, InvalidArgument past it.
pub async fn read_at_ranges(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(1000);
    write_blob(&*store, "ranges", &bytes, None).await;
    // (offset, length, expected range of the blob, or None for InvalidArgument)
    type ReadCase = (u64, usize, Option<(usize, usize)>);
    let table: &[ReadCase] = &[
        (0, 1000, Some((0, 1000))),
        (0, 10, Some((0, 10))),
        (10, 20, Some((10, 30))),
        (990, 100, Some((990, 1000))),
        (999, 1, Some((999, 1000))),
        (1000, 1, Some((1000, 1000))),
        (0, 0, Some((0, 0))),
        (500, usize::MAX, Some((500, 1000))),
        (1001, 1, None),
        (u64::MAX, 1, None),
    ];
    for &(offset, length, expected) in table {
        let result = store.read_at(&digest, offset, length).await;
        match expected {
            Some((from, to)) => assert_eq!(
                result.expect("read_at"),
                &bytes[from..to],
                "read_at({offset}, {length})"
            ),
            None => assert_category(
                result,
                Category::InvalidArgument,
                &format!("read_at({offset}, {length})"),
            ),
        }
    }
    let (_, missing) = create_content(10);
    assert_category(
        store.read_at(&missing, 0, 1).await,
        Category::NotFound,
        "read_at of missing content",
    );
}

/// Walk filters over `digest`, `size` and `labels.<key>` (any other field matches nothing);
/// any filter of the list may match; results are sorted by digest.
pub async fn walk_filters(store: Arc<dyn ContentStore>) {
    let specs: [(&str, usize, Labels); 3] = [
        (
            "a",
            10,
            labels_of(&[("kind", "layer"), ("dotted.key", "x")]),
        ),
        ("b", 20, labels_of(&[("kind", "config")])),
        ("c", 30, Labels::new()),
    ];
    let mut digests = Vec::new();
    for (reference, size, labels) in &specs {
        let (bytes, _) = create_content(*size);
        let mut writer = open(&*store, reference, 0, None).await;
        writer.write(&bytes).await.expect("write");
        digests.push(
            writer
                .commit(0, None, labels.clone())
                .await
                .expect("commit"),
        );
        writer.close().await.expect("close");
    }
    let (a, b, c) = (&digests[0], &digests[1], &digests[2]);
    let by_digest_a = format!("digest=={a}");
    let mut all = vec![a, b, c];
    all.sort();
    // (filters, expected digests; None for InvalidArgument)
    let table: Vec<(Vec<&str>, Option<Vec<&Digest>>)> = vec![
        (vec![], Some(all.clone())),
        (vec![""], Some(all.clone())),
        (vec!["labels.kind==layer"], Some(vec![a])),
        (vec!["labels.kind"], Some(sorted(vec![a, b]))),
        (vec!["labels.kind!=layer"], Some(sorted(vec![b, c]))),
        (vec!["labels.kind~=^con"], Some(vec![b])),
        (vec!["labels.\"dotted.key\"==x"], Some(vec![a])),
        (vec!["labels.dotted.key==x"], Some(vec![a])),
        (
            vec!["labels.kind==layer", "labels.kind==config"],
            Some(sorted(vec![a, b])),
        ),
        (vec!["labels.kind==layer,size==20"], Some(vec![])),
        (vec!["size==30"], Some(vec![c])),
        (vec![by_digest_a.as_str()], Some(vec![a])),
        (vec!["labels.nothing==x"], Some(vec![])),
        // A field blobs do not have matches nothing, whatever its value.
        (vec!["unknown==20"], Some(vec![])),
        (vec!["unknown"], Some(vec![])),
        (vec!["unknown.kind==layer"], Some(vec![])),
        (vec!["labels.kind=layer"], None),
        (vec!["labels.kind~=("], None),
    ];
    for (filters, expected) in table {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        let result = store.walk(&filters).await;
        match expected {
            Some(expected) => {
                let found: Vec<Digest> = result
                    .expect("walk")
                    .into_iter()
                    .map(|info| info.digest)
                    .collect();
                let expected: Vec<Digest> = expected.into_iter().cloned().collect();
                assert_eq!(found, expected, "walk {filters:?}");
            }
            None => assert_category(
                result,
                Category::InvalidArgument,
                &format!("walk {filters:?}"),
            ),
        }
    }
}

fn sorted(mut digests: Vec<&Digest>) -> Vec<&Digest> {
    digests.sort();
    digests
}

/// `list_statuses` filters on `ref` and sorts by ref.
pub async fn list_statuses_filter(store: Arc<dyn ContentStore>) {
    for reference in ["layer-2", "config", "layer-1"] {
        let mut writer = open(&*store, reference, 0, None).await;
        writer.write(reference.as_bytes()).await.expect("write");
        writer.close().await.expect("close");
    }
    // (filters, expected refs; None for InvalidArgument)
    let table: &[(&[&str], Option<&[&str]>)] = &[
        (&[], Some(&["config", "layer-1", "layer-2"])),
        (&["ref==config"], Some(&["config"])),
        (&["ref~=^layer-"], Some(&["layer-1", "layer-2"])),
        (&["ref!=config"], Some(&["layer-1", "layer-2"])),
        (
            &["ref==config", "ref==layer-2"],
            Some(&["config", "layer-2"]),
        ),
        (&["ref==nothing"], Some(&[])),
        (&["other==config"], Some(&[])),
        (&["ref=config"], None),
    ];
    for (filters, expected) in table {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        let result = store.list_statuses(&filters).await;
        match expected {
            Some(expected) => {
                let refs: Vec<String> = result
                    .expect("list_statuses")
                    .into_iter()
                    .map(|s| s.reference)
                    .collect();
                assert_eq!(refs, *expected, "list_statuses {filters:?}");
            }
            None => assert_category(
                result,
                Category::InvalidArgument,
                &format!("list_statuses {filters:?}"),
            ),
        }
    }
}

/// The store's status of an ingest: offset, total, expected, times; NotFound when none.
pub async fn status_of_ingests(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(100);
    let before = SystemTime::now();
    let mut writer = open(&*store, "status", 100, Some(digest.clone())).await;
    writer.write(&bytes[..40]).await.expect("write");
    let after = SystemTime::now();
    let status = store.status("status").await.expect("status while writing");
    assert_eq!((status.offset, status.total), (40, 100));
    assert_eq!(status.expected.as_ref(), Some(&digest));
    assert_between("started at", status.started_at, before, after);
    assert_between("updated at", status.updated_at, before, after);
    writer.close().await.expect("close");
    let closed = store.status("status").await.expect("status after close");
    assert_eq!(
        (closed.offset, closed.total, closed.started_at),
        (40, 100, status.started_at)
    );
    assert_category(
        store.status("missing").await,
        Category::NotFound,
        "status of unknown ref",
    );
}

/// Delete: then info, read and delete are NotFound and walk no longer lists it.
pub async fn delete_then_info(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(128);
    let mut writer = open(&*store, "delete", 0, None).await;
    writer.write(&bytes).await.expect("write");
    writer
        .commit(0, None, labels_of(&[("a", "b")]))
        .await
        .expect("commit");
    writer.close().await.expect("close");
    check_content(&*store, &digest, &bytes).await;
    store.delete(&digest).await.expect("delete");
    assert_category(
        store.info(&digest).await,
        Category::NotFound,
        "info after delete",
    );
    assert_category(
        store.read_at(&digest, 0, 1).await,
        Category::NotFound,
        "read after delete",
    );
    assert_category(
        store.delete(&digest).await,
        Category::NotFound,
        "second delete",
    );
    assert!(
        store.walk(&[]).await.expect("walk").is_empty(),
        "walk after delete"
    );
    // Committing it again starts afresh: no labels from before.
    let again = write_blob(&*store, "delete-again", &bytes, None).await;
    assert_eq!(
        store.info(&again).await.expect("info").labels,
        Labels::new()
    );
}

/// Abort: NotFound for an unknown ref, Unavailable while a writer holds it, and it removes
/// the ingest.
pub async fn abort_rules(store: Arc<dyn ContentStore>) {
    assert_category(
        store.abort("unknown").await,
        Category::NotFound,
        "abort of unknown ref",
    );
    let mut writer = open(&*store, "abort", 0, None).await;
    writer.write(b"data").await.expect("write");
    assert_category(
        store.abort("abort").await,
        Category::Unavailable,
        "abort while writing",
    );
    writer.close().await.expect("close");
    store.abort("abort").await.expect("abort");
    assert_category(
        store.status("abort").await,
        Category::NotFound,
        "status after abort",
    );
    assert_category(
        store.abort("abort").await,
        Category::NotFound,
        "second abort",
    );
    let writer = open(&*store, "abort", 0, None).await;
    assert_eq!(
        writer.status().await.expect("status").offset,
        0,
        "a new ingest after abort"
    );
    writer.close().await.expect("close");
}

/// Update: NotFound for missing content, InvalidArgument for other field paths and for
/// labels over the size limit (changing nothing); an empty value removes a label.
pub async fn update_rules(store: Arc<dyn ContentStore>) {
    let (bytes, digest) = create_content(32);
    let mut writer = open(&*store, "update", 0, None).await;
    writer.write(&bytes).await.expect("write");
    writer
        .commit(0, None, labels_of(&[("keep", "1"), ("drop", "2")]))
        .await
        .expect("commit");
    writer.close().await.expect("close");
    let info = store.info(&digest).await.expect("info");

    let (_, missing) = create_content(32);
    let result = store
        .update(
            Info {
                digest: missing,
                ..info.clone()
            },
            &[],
        )
        .await;
    assert_category(result, Category::NotFound, "update of missing content");
    let huge = "v".repeat(MAX_LABEL_SIZE);
    // (labels requested, field paths, expected labels after; None for InvalidArgument)
    let table: Vec<(Labels, Vec<&str>, Option<Labels>)> = vec![
        (labels_of(&[("x", "1")]), vec!["size"], None),
        (labels_of(&[("x", "1")]), vec!["labels", "digest"], None),
        (labels_of(&[("huge", &huge)]), vec!["labels.huge"], None),
        (
            labels_of(&[("drop", "")]),
            vec!["labels.drop"],
            Some(labels_of(&[("keep", "1")])),
        ),
        (
            labels_of(&[("new", "3")]),
            vec!["labels.new"],
            Some(labels_of(&[("keep", "1"), ("new", "3")])),
        ),
        (
            labels_of(&[("only", "4")]),
            vec!["labels"],
            Some(labels_of(&[("only", "4")])),
        ),
        (Labels::new(), vec![], Some(Labels::new())),
    ];
    let mut current = store.info(&digest).await.expect("info").labels;
    for (labels, paths, expected) in table {
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        let result = store
            .update(
                Info {
                    labels,
                    ..info.clone()
                },
                &paths,
            )
            .await;
        match expected {
            Some(expected) => {
                assert_eq!(result.expect("update").labels, expected, "update {paths:?}");
                current = expected;
            }
            None => assert_category(
                result,
                Category::InvalidArgument,
                &format!("update {paths:?}"),
            ),
        }
        assert_eq!(
            store.info(&digest).await.expect("info").labels,
            current,
            "labels after update {paths:?}"
        );
    }
    assert_eq!(
        store.info(&digest).await.expect("info").created_at,
        info.created_at,
        "created at is stable"
    );
}

#[cfg(all(test, feature = "content-local"))]
mod tests {
    use super::*;
    use crate::content::local::LocalStore;

    fn passes(_: Arc<dyn ContentStore>) -> CaseFuture {
        Box::pin(async {})
    }

    fn fails(_: Arc<dyn ContentStore>) -> CaseFuture {
        Box::pin(async { panic!("this case is broken") })
    }

    async fn make(root: PathBuf) -> Result<Arc<dyn ContentStore>, Error> {
        Ok(Arc::new(LocalStore::open(&root)?) as Arc<dyn ContentStore>)
    }

    /// The regression: `run` stopped at the first failing case and hid the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_case_runs_and_every_failure_is_reported() {
        let cases: &[(&str, Case)] = &[("first", fails), ("second", passes), ("third", fails)];
        let failures = run_cases(cases, &make).await;
        let expected = [
            ("first".to_string(), "this case is broken".to_string()),
            ("third".to_string(), "this case is broken".to_string()),
        ];
        assert_eq!(failures, expected);
        let report = failure_report(&failures, CASES.len());
        assert!(
            report.starts_with(&format!(
                "content suite: 2 of {} cases failed: first, third\n",
                CASES.len()
            )),
            "{report}"
        );
        assert!(
            report.contains("- case third failed: this case is broken"),
            "{report}"
        );
    }
}
