//! Plinth's built-in plugins: the interfaces plugins share and one module (and one Cargo
//! feature) per plugin. A binary carries a plugin by enabling its feature and calling
//! [`link`], which makes sure this crate is linked so that its registrations are found.
//!
//! # Feature flags
//!
//! | feature | default | plugin |
//! |---|---|---|
//! | `introspection` | yes | `io.containerd.grpc.v1.introspection`: plugin list, server identity |
//! | `version` | yes | `io.containerd.grpc.v1.version` |
//! | `namespaces` | yes | `io.containerd.grpc.v1.namespaces` (needs a metadata plugin) |
//! | `metadata-redb` | yes | `io.containerd.metadata.v1.redb`: namespaces, content and snapshot records in a redb database |
//! | `content-local` | yes | `io.containerd.content.v1.content`: the local content store |
//! | `snapshotter-native` | yes | `io.containerd.snapshotter.v1.native`: directory copies, bind mounts |
//! | `snapshotter-overlayfs` | yes | `io.containerd.snapshotter.v1.overlayfs`: overlay mounts (skips itself without overlay) |
//! | `content-service` | yes | `io.containerd.grpc.v1.content`: containerd's Content service |
//! | `snapshots-service` | yes | `io.containerd.grpc.v1.snapshots`: containerd's Snapshots service |
//! | `proxy` | yes | `[proxy_plugins]` of type `snapshot` or `content` (gRPC clients of another process), and `io.containerd.internal.v1.proxy-target`: this daemon's stores served raw on a second socket |
//! | `event-exchange` | yes | `io.containerd.event.v1.exchange`: the events exchange: publish, forward, subscribe with filters; a bounded queue per subscriber |
//! | `events-service` | yes | `io.containerd.grpc.v1.events`: containerd's Events service (needs an event exchange) |
//! | `lease-manager` | yes | `io.containerd.lease.v1.manager`: leases and their resources, in the metadata database (needs a metadata plugin) |
//! | `leases-service` | yes | `io.containerd.grpc.v1.leases`: containerd's Leases service (needs a lease manager) |
//! | `images-service` | yes | `io.containerd.grpc.v1.images`: containerd's Images service (needs a metadata plugin) |
//! | `containers-service` | yes | `io.containerd.grpc.v1.containers`: containerd's Containers service, records only (needs a metadata plugin) |
//! | `gc-scheduler` | yes | `io.containerd.gc.v1.scheduler`: containerd's garbage collection scheduler over the metadata plugin's collector; expired leases are collected on time; synchronous deletes wait for it |
//! | `gc-service` | yes | `io.containerd.grpc.v1.gc`: plinthd's own GC service, a collection on demand (`plinthctl gc`; needs a GC scheduler) |
//! | `differ-walking` | yes | `io.containerd.differ.v1.walking`: layers applied onto snapshot mounts (tar, +gzip, +zstd; whiteouts in overlay's form on overlay mounts; nothing written outside the snapshot) and mounts compared into layers (needs a metadata plugin) |
//! | `diff-service` | yes | `io.containerd.grpc.v1.diff`: containerd's Diff service, Apply and Diff (needs a differ) |
//! | `testsuite` | no | the conformance suites `content::testsuite` and `snapshots::testsuite` |

pub mod containerd;
pub mod containers;
pub mod content;
// The services are also compiled for `proxy`, which serves them raw (without registering them).
#[cfg(any(feature = "content-service", feature = "proxy"))]
mod content_service;
#[cfg(any(
    feature = "content-service",
    feature = "snapshots-service",
    feature = "proxy",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service",
    feature = "diff-service"
))]
pub mod convert;
pub mod diff;
#[cfg(feature = "differ-walking")]
pub mod differ;
pub mod error;
#[cfg(feature = "event-exchange")]
pub mod event_exchange;
pub mod events;
pub mod filters;
pub mod gc;
#[cfg(feature = "gc-scheduler")]
pub mod gc_scheduler;
#[cfg(feature = "gc-service")]
mod gc_service;
pub mod grpc;
pub mod images;
pub mod leases;
pub mod live;
pub mod namespaces;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(any(
    feature = "metadata-redb",
    feature = "snapshotter-native",
    feature = "snapshotter-overlayfs"
))]
mod redb_store;
pub mod removal;
pub mod snapshots;
#[cfg(any(feature = "snapshots-service", feature = "proxy"))]
mod snapshots_service;

#[cfg(feature = "containers-service")]
mod containers_service;
#[cfg(feature = "diff-service")]
mod diff_service;
#[cfg(feature = "events-service")]
mod events_service;
#[cfg(feature = "images-service")]
mod images_service;
#[cfg(feature = "introspection")]
pub mod introspection;
#[cfg(any(feature = "lease-manager", feature = "leases-service"))]
mod leases_service;
#[cfg(feature = "metadata-redb")]
pub mod metadata;
#[cfg(feature = "namespaces")]
mod namespaces_service;
#[cfg(feature = "version")]
pub mod version;

#[cfg(all(
    test,
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service",
    feature = "snapshots-service",
    feature = "metadata-redb",
    feature = "content-local",
    feature = "snapshotter-native"
))]
mod service_tests;

pub use crate::error::Error;

/// Runs blocking work (file or database I/O) on tokio's blocking pool, off the async worker
/// threads that serve every call; `what` names the work in the internal error that a panic in
/// it becomes.
#[cfg(any(
    feature = "content-local",
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(|| {
        lower_this_threads_priority();
        work()
    })
    .await
    .map_err(|e| Error::internal(format!("{what}: {e}")))?
}

static BLOCKING_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Sets how much lower than the threads that serve calls the threads of bulk work (the
/// blocking pool: commits and their syncs, deletes, collections) run: a nice value added to
/// theirs, 0 to 19. The read and ingest pools' threads are not lowered: a list and an
/// ingest's write are calls a client waits for, short and bounded to one thread per CPU, and
/// at a lower priority they waited for a CPU behind the clients' own threads (BENCHMARKS.md,
/// "Load"). A host calls it once, before any plugin starts (plinthd: `--blocking-nice`); a
/// thread lowers itself on its first task and never rises again. Unset, 0.
pub fn set_blocking_nice(nice: i32) {
    BLOCKING_NICE.store(nice.clamp(0, 19), std::sync::atomic::Ordering::Relaxed);
}

/// Lowers the calling pool thread's priority by the nice value set with
/// [`set_blocking_nice`], once per thread.
#[cfg(any(
    feature = "content-local",
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
fn lower_this_threads_priority() {
    thread_local!(static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let nice = BLOCKING_NICE.load(std::sync::atomic::Ordering::Relaxed);
    if nice == 0 || LOWERED.get() {
        return;
    }
    LOWERED.set(true);
    // On Linux the "process" of setpriority(PRIO_PROCESS, 0) is the calling thread.
    let current = rustix::process::getpriority_process(None).unwrap_or(0);
    if let Err(error) = rustix::process::setpriority_process(None, current + nice) {
        tracing::debug!(%error, "could not lower a blocking thread's priority");
    }
}

/// Which pool a service's database work runs on: [`blocking`] or, for lists, [`list`].
#[cfg(any(
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pool {
    /// Writes, and reads that precede a write: the bounded blocking pool.
    Writes,
    /// Lists: on the serving thread while short, else the read pool ([`list`]).
    Reads,
}

/// `work` on `pool`.
#[cfg(any(
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
pub(crate) async fn blocking_in<T: Send + 'static>(
    pool: Pool,
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Clone + Send + 'static,
) -> Result<T, Error> {
    match pool {
        Pool::Writes => blocking(what, work).await,
        Pool::Reads => list(what, work).await,
    }
}

/// Runs read-only database work that can be long (a list, a walk) on the read pool: a few
/// threads of its own, so that a list never queues behind the writes on the bounded blocking
/// pool (ARCHITECTURE.md, "Blocking work"), and never holds a thread the writes need. With
/// the pool switched off ([`set_read_threads`] of 0) it runs as [`blocking`] does. `what`
/// names the work in the internal error that a panic in it becomes. The work must not wait
/// for other work on the read pool. Its threads run at the priority of the threads that
/// serve calls (see [`set_blocking_nice`]).
#[cfg(any(
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
pub(crate) async fn blocking_read<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    static POOL: SidePool = SidePool::new("plinth-read", &READ_THREADS);
    POOL.run(what, work).await
}

/// How many records a list walks on the thread serving its call, unset
/// ([`set_inline_list_records`]).
pub const DEFAULT_INLINE_LIST_RECORDS: usize = 128;

pub(crate) static INLINE_LIST_RECORDS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_INLINE_LIST_RECORDS);

/// Sets how many records a list (Images, Containers, Leases and their resources, Namespaces,
/// the metadata's content and snapshot walks) may visit on the thread that serves its call
/// before it stops there and runs again, from the start, on the read pool: a short list is
/// answered without two thread hand-overs, each a wait for a CPU on a busy machine, and a
/// long one holds a serving thread only for that many records (BENCHMARKS.md, "Load").
/// 0 sends every list to the read pool. A host calls it before serving (plinthd:
/// `--list-inline`). Unset, [`DEFAULT_INLINE_LIST_RECORDS`].
pub fn set_inline_list_records(records: usize) {
    INLINE_LIST_RECORDS.store(records, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(any(
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
mod lists;
#[cfg(any(
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
pub(crate) use lists::list;
#[cfg(feature = "metadata-redb")]
pub(crate) use lists::walk_record;

/// Runs an ingest's data write (a file write and its hashing, no sync) on the ingest pool: a
/// few threads of its own, so that a client streaming a blob never queues behind the
/// commits' syncs on the bounded blocking pool (ARCHITECTURE.md, "Blocking work"). With the
/// pool switched off ([`set_ingest_threads`] of 0) it runs as [`blocking`] does. The work
/// must not wait for other work on the ingest pool.
#[cfg(feature = "content-local")]
pub(crate) async fn blocking_ingest<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    static POOL: SidePool = SidePool::new("plinth-ingest", &INGEST_THREADS);
    POOL.run(what, work).await
}

/// A pool of blocking threads apart from tokio's main one, started on first use with as many
/// threads at most as its setting says (one per CPU unset; none at all for 0, when its work
/// runs on the main blocking pool instead), its threads at the serving threads' priority.
#[cfg(any(
    feature = "content-local",
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
struct SidePool {
    name: &'static str,
    threads: &'static std::sync::OnceLock<usize>,
    runtime: std::sync::OnceLock<Option<tokio::runtime::Runtime>>,
}

#[cfg(any(
    feature = "content-local",
    feature = "metadata-redb",
    feature = "namespaces",
    feature = "images-service",
    feature = "containers-service",
    feature = "leases-service"
))]
impl SidePool {
    const fn new(name: &'static str, threads: &'static std::sync::OnceLock<usize>) -> Self {
        Self {
            name,
            threads,
            runtime: std::sync::OnceLock::new(),
        }
    }

    async fn run<T: Send + 'static>(
        &'static self,
        what: &'static str,
        work: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        // A runtime that is never driven: only its blocking pool is used, which starts and
        // retires its threads on demand like the main one.
        let runtime = self.runtime.get_or_init(|| {
            let threads = *self.threads.get_or_init(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            if threads == 0 {
                return None;
            }
            tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(threads)
                .thread_name(self.name)
                .build()
                .inspect_err(|error| {
                    let pool = self.name;
                    tracing::warn!(%error, pool, "no pool of its own; its work runs on the blocking pool");
                })
                .ok()
        });
        match runtime {
            Some(runtime) => runtime
                .spawn_blocking(work)
                .await
                .map_err(|e| Error::internal(format!("{what}: {e}")))?,
            None => blocking(what, work).await,
        }
    }
}

static READ_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets how many threads the read pool, which runs lists and walks apart from the writes,
/// may use at once: `0` runs them on tokio's blocking pool with everything else. A host
/// calls it once, before any plugin starts (plinthd: `--read-threads`); later calls change
/// nothing. Unset, the pool has one thread per CPU.
pub fn set_read_threads(threads: usize) {
    let _ = READ_THREADS.set(threads);
}

static INGEST_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Sets how many threads the ingest pool, which writes and hashes the data of content
/// ingests apart from the commits, may use at once: `0` runs that work on tokio's blocking
/// pool with everything else. A host calls it once, before any plugin starts (plinthd:
/// `--ingest-threads`); later calls change nothing. Unset, the pool has one thread per CPU.
pub fn set_ingest_threads(threads: usize) {
    let _ = INGEST_THREADS.set(threads);
}

/// Runs `work` on a thread of its own and awaits it: for work that blocks on other async
/// work (a differ streaming a layer through a channel or reading a blob with `block_on`),
/// which must not take one of the runtime's bounded blocking threads while it waits for
/// another (see ARCHITECTURE.md, "Blocking work"), and for plugins that do not depend on
/// tokio. The work runs to completion even if the caller stops waiting, so an operation is
/// never cut off half way. A panic in `work` becomes an internal error naming `what`.
///
/// # Errors
/// What `work` returns; internal when the thread cannot start or `work` panics.
#[cfg(any(
    feature = "snapshotter-native",
    feature = "snapshotter-overlayfs",
    feature = "differ-walking"
))]
pub(crate) async fn on_own_thread<T, F>(what: &'static str, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::task::{Poll, Waker};
    struct Slot<T> {
        result: Option<Result<T, Error>>,
        waker: Option<Waker>,
    }
    let slot = Arc::new(Mutex::new(Slot {
        result: None,
        waker: None,
    }));
    let writer = Arc::clone(&slot);
    std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err(Error::internal(format!("{what}: panicked"))));
            let mut slot = writer.lock().unwrap_or_else(PoisonError::into_inner);
            slot.result = Some(result);
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        })
        .map_err(|e| Error::internal(format!("{what}: starting a thread: {e}")))?;
    std::future::poll_fn(|cx| {
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// The version this build reports: the crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The revision this build reports: `PLINTH_REVISION` at build time, or `unknown`.
pub const REVISION: &str = match option_env!("PLINTH_REVISION") {
    Some(revision) => revision,
    None => "unknown",
};

/// The plugin features this build of the crate was compiled with, by name.
pub const FEATURES: &[(&str, bool)] = &[
    ("introspection", cfg!(feature = "introspection")),
    ("version", cfg!(feature = "version")),
    ("namespaces", cfg!(feature = "namespaces")),
    ("metadata-redb", cfg!(feature = "metadata-redb")),
    ("content-local", cfg!(feature = "content-local")),
    ("snapshotter-native", cfg!(feature = "snapshotter-native")),
    (
        "snapshotter-overlayfs",
        cfg!(feature = "snapshotter-overlayfs"),
    ),
    ("content-service", cfg!(feature = "content-service")),
    ("snapshots-service", cfg!(feature = "snapshots-service")),
    ("proxy", cfg!(feature = "proxy")),
    ("event-exchange", cfg!(feature = "event-exchange")),
    ("events-service", cfg!(feature = "events-service")),
    ("lease-manager", cfg!(feature = "lease-manager")),
    ("leases-service", cfg!(feature = "leases-service")),
    ("images-service", cfg!(feature = "images-service")),
    ("containers-service", cfg!(feature = "containers-service")),
    ("gc-scheduler", cfg!(feature = "gc-scheduler")),
    ("gc-service", cfg!(feature = "gc-service")),
    ("differ-walking", cfg!(feature = "differ-walking")),
    ("diff-service", cfg!(feature = "diff-service")),
];

/// The URIs of the plugins each feature contributes, to tell a user which feature to enable
/// and to check that nothing was lost at link time.
pub const FEATURE_PLUGINS: &[(&str, &str)] = &[
    ("introspection", "io.containerd.grpc.v1.introspection"),
    ("version", "io.containerd.grpc.v1.version"),
    ("namespaces", "io.containerd.grpc.v1.namespaces"),
    ("metadata-redb", "io.containerd.metadata.v1.redb"),
    ("content-local", "io.containerd.content.v1.content"),
    ("snapshotter-native", "io.containerd.snapshotter.v1.native"),
    (
        "snapshotter-overlayfs",
        "io.containerd.snapshotter.v1.overlayfs",
    ),
    ("content-service", "io.containerd.grpc.v1.content"),
    ("snapshots-service", "io.containerd.grpc.v1.snapshots"),
    ("proxy", "io.containerd.internal.v1.proxy-target"),
    ("event-exchange", "io.containerd.event.v1.exchange"),
    ("events-service", "io.containerd.grpc.v1.events"),
    ("lease-manager", "io.containerd.lease.v1.manager"),
    ("leases-service", "io.containerd.grpc.v1.leases"),
    ("images-service", "io.containerd.grpc.v1.images"),
    ("containers-service", "io.containerd.grpc.v1.containers"),
    ("gc-scheduler", "io.containerd.gc.v1.scheduler"),
    ("gc-service", "io.containerd.grpc.v1.gc"),
    ("differ-walking", "io.containerd.differ.v1.walking"),
    ("diff-service", "io.containerd.grpc.v1.diff"),
];

/// Call this from the binary so the linker keeps this crate and its registrations.
#[inline(never)]
pub fn link() {
    std::hint::black_box(FEATURES);
}

/// Waits for the work the plugins of this crate left running in the background that must
/// finish before the process exits: today the overlayfs support check's unmount. A host
/// calls it once, after its plugins are closed or its start was refused, on every exit path,
/// so that nothing it mounted outlives it.
pub fn finish_background_work() {
    #[cfg(feature = "snapshotter-overlayfs")]
    snapshots::overlayfs::finish_check_cleanups();
}

/// For tests of work that must not wait for tokio's blocking pool.
#[cfg(all(test, any(feature = "content-local", feature = "metadata-redb")))]
pub(crate) mod test_support {
    use std::future::Future;
    use std::time::Duration;

    /// A runtime with a single blocking thread.
    pub(crate) fn one_blocking_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// `work`, run while the runtime's only blocking thread is held (on a
    /// [`one_blocking_thread`] runtime): its output, or `None` when it did not finish in
    /// 20 s, i.e. it waited for the blocking pool.
    pub(crate) async fn with_the_blocking_pool_held<T>(work: impl Future<Output = T>) -> Option<T> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let occupied = tokio::task::spawn_blocking(move || {
            let _ = started.send(());
            held.recv().unwrap();
        });
        running.await.unwrap();
        let done = tokio::time::timeout(Duration::from_secs(20), work).await;
        release.send(()).unwrap();
        occupied.await.unwrap();
        done.ok()
    }
}

#[cfg(all(test, feature = "metadata-redb"))]
mod pool_tests {
    use super::*;
    use crate::test_support::{one_blocking_thread, with_the_blocking_pool_held};

    /// Lists run apart from the blocking pool: with the runtime's only blocking thread held
    /// until the list has answered, it still answers; a panic in one is an internal error
    /// naming the work, and the pool goes on serving.
    #[test]
    fn the_read_pool_serves_while_the_blocking_pool_is_full() {
        one_blocking_thread().block_on(async {
            let thread = with_the_blocking_pool_held(blocking_read("a list", || {
                Ok(std::thread::current().name().map(str::to_owned))
            }))
            .await
            .expect("the list waited for the blocking pool")
            .unwrap();
            assert_eq!(thread.as_deref(), Some("plinth-read"));

            let panicked = blocking_read::<()>("a broken list", || panic!("broken"))
                .await
                .unwrap_err();
            assert_eq!(panicked.category, plinth_core::Category::Internal);
            assert!(
                panicked.message.contains("a broken list"),
                "{}",
                panicked.message
            );
            assert_eq!(blocking_read("again", || Ok(7)).await.unwrap(), 7);
        });
    }

    /// A list that visits no more records than its budget answers on the calling thread,
    /// whole; one that would visit one more starts again on the read pool and answers whole
    /// there (its first attempt's error never reaches the caller); with the budget set to 0
    /// every list runs on the read pool; outside [`list`] nothing is counted.
    #[test]
    fn a_list_runs_on_the_calling_thread_within_its_budget_and_on_the_read_pool_past_it() {
        /// A walk of `records` records: how many it visited and where it ended.
        fn walk(records: usize) -> impl FnOnce() -> Result<(usize, String), Error> + Clone {
            move || {
                for _ in 0..records {
                    walk_record()?;
                }
                let thread = std::thread::current();
                Ok((records, thread.name().unwrap_or("unnamed").to_string()))
            }
        }
        std::thread::Builder::new()
            .name("serving".into())
            .spawn(|| {
                one_blocking_thread().block_on(async {
                    let budget = DEFAULT_INLINE_LIST_RECORDS;
                    for (records, thread) in [
                        (0, "serving"),
                        (budget, "serving"),
                        (budget + 1, "plinth-read"),
                        (10 * budget, "plinth-read"),
                    ] {
                        let (visited, on) = list("a list", walk(records)).await.unwrap();
                        assert_eq!(
                            (visited, on.as_str()),
                            (records, thread),
                            "{records} records"
                        );
                    }
                    // Off the first attempt, no budget: a walk of any length succeeds.
                    assert_eq!(walk(10 * budget)().unwrap().0, 10 * budget);
                    let (_, on) = lists::list_within(0, "a list", walk(0)).await.unwrap();
                    assert_eq!(on, "plinth-read");
                    // A real error of the first attempt is the list's answer.
                    let failed = list("a list", || -> Result<(), Error> {
                        Err(Error::not_found("gone"))
                    })
                    .await
                    .unwrap_err();
                    assert_eq!(failed.category, plinth_core::Category::NotFound);
                });
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// The blocking pool's threads run below the threads that serve calls by the nice value
    /// set, each lowered once however much work it runs, while the read and ingest pools'
    /// and the thread that awaits them keep their own.
    #[test]
    fn blocking_work_runs_at_the_lower_priority_set() {
        fn nice() -> i32 {
            rustix::process::getpriority_process(None).unwrap()
        }
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let serving = nice();
                set_blocking_nice(3);
                for _ in 0..3 {
                    assert_eq!(blocking("work", || Ok(nice())).await.unwrap(), serving + 3);
                    assert_eq!(
                        blocking_read("a list", || Ok(nice())).await.unwrap(),
                        serving
                    );
                    #[cfg(feature = "content-local")]
                    assert_eq!(
                        blocking_ingest("a write", || Ok(nice())).await.unwrap(),
                        serving
                    );
                }
                assert_eq!(nice(), serving);
                set_blocking_nice(0);
            });
        })
        .join()
        .unwrap();
    }
}
