//! Crash consistency: plinthd is killed with SIGKILL in the middle of many concurrent
//! ingests, again and again; after each restart every committed blob verifies, every record
//! has its blob, no half-written blob is visible, and open ingests resume. And garbage
//! collections are killed in the middle, again and again: nothing reachable is lost, and
//! the next collection finishes what the killed one began.
//!
//! The kill must land while uploads are in flight, whatever the machine's speed: in each
//! round most clients get only a prefix of their input (their standard input is then held
//! open), and the kill comes once the daemon reports bytes received for each of them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use plinth_tests::{Daemon, Start, binary, random_file, sha256_file, start, start_in};

const ROUNDS: u64 = 6;
const CLIENTS: u64 = 6;
/// plinthctl's chunk: it sends a chunk once it has read the next one, so a client must be
/// given more than two for the daemon to receive anything before the end of the input.
const CHUNK: usize = 1 << 20;

fn blobs_dir(root: &Path) -> PathBuf {
    root.join("io.containerd.content.v1.content/blobs/sha256")
}

/// Every file under the blob directory hashes to its name: no blob is half-visible.
///
/// # Panics
/// When the directory is missing (the content store creates it at start) or a file is not
/// what its name says. Returns the digests of the blob files.
fn check_blob_files(root: &Path) -> BTreeSet<String> {
    let dir = blobs_dir(root);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut blobs = BTreeSet::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            sha256_file(&path),
            format!("sha256:{name}"),
            "blob file {} is not what its name says",
            path.display()
        );
        blobs.insert(format!("sha256:{name}"));
    }
    blobs
}

/// The active ingests as (ref, whether bytes were received), from `plinthctl content active`
/// (`REF  SIZE  AGE`, SIZE as `0 B` or `1.0 MiB/5.0 MiB`).
fn active(daemon: &Daemon) -> BTreeMap<String, bool> {
    let listing = daemon.plinthctl(&["content", "active"]);
    listing
        .ok()
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 2, "unexpected line {line:?}");
            (fields[0].to_string(), fields[1] != "0")
        })
        .collect()
}

/// An ingest client of one round, with its standard input still open when it was given only
/// a prefix.
struct Client {
    reference: String,
    child: Child,
    held: Option<ChildStdin>,
}

/// Starts `plinthctl content ingest` of `path` and feeds it `prefix` bytes of the file (all of
/// it when `prefix` is `None`, then closes its input).
fn start_client(
    daemon: &Daemon,
    reference: &str,
    path: &Path,
    digest: &str,
    prefix: Option<usize>,
) -> Client {
    let mut child = Command::new(binary("plinthctl"))
        .args([
            "--address",
            &daemon.address(),
            "content",
            "ingest",
            "--progress",
            "never",
            "--expected-digest",
            digest,
            reference,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let n = prefix.unwrap_or(bytes.len());
    stdin
        .write_all(&bytes[..n])
        .unwrap_or_else(|e| panic!("feeding {reference}: {e}"));
    Client {
        reference: reference.to_string(),
        child,
        held: prefix.map(|_| stdin),
    }
}

#[test]
fn sigkill_during_concurrent_ingests_never_loses_or_corrupts_data() {
    let mut daemon = start(Start::default());
    // 2.25 to 3.5 MiB and some bytes: every input is more than two chunks.
    let inputs: BTreeMap<String, (PathBuf, String)> = (0..ROUNDS * CLIENTS)
        .map(|i| {
            let path = daemon.dir().join(format!("input-{i}.bin"));
            let size = 2 * CHUNK + ((i as usize % 6) + 1) * (CHUNK / 4) + 4096 * i as usize;
            random_file(&path, size, 100 + i);
            let digest = sha256_file(&path);
            (format!("ref-{i}"), (path, digest))
        })
        .collect();
    let refs: Vec<&String> = inputs.keys().collect();
    for round in 0..ROUNDS {
        let mut clients = Vec::new();
        for client in 0..CLIENTS {
            let reference = refs[(round * CLIENTS + client) as usize];
            let (path, digest) = &inputs[reference];
            // Two of six send everything (and may finish or not); the others send a prefix
            // that ends from early to late in the input as the rounds go.
            let size = std::fs::metadata(path).unwrap().len() as usize;
            let prefix = ((client + round) % 3 != 0).then(|| {
                let past_two_chunks = size - 2 * CHUNK - 1;
                2 * CHUNK + 1 + past_two_chunks * round as usize / ROUNDS as usize
            });
            clients.push(start_client(&daemon, reference, path, digest, prefix));
        }
        let held: BTreeSet<String> = clients
            .iter()
            .filter(|c| c.held.is_some())
            .map(|c| c.reference.clone())
            .collect();
        assert_eq!(held.len(), 4, "round {round}: clients held mid-upload");
        // Kill once the daemon has bytes of every held upload: they are in flight.
        plinth_tests::wait_for(
            "bytes of every held upload to reach the daemon",
            Duration::from_secs(30),
            || {
                let active = active(&daemon);
                held.iter()
                    .all(|r| active.get(r) == Some(&true))
                    .then_some(())
            },
        );
        let dir = daemon.into_dir();
        for mut client in clients {
            drop(client.held.take());
            let _ = client.child.kill();
            let _ = client.child.wait();
        }
        let restarted = start_in(dir, Start::default())
            .unwrap_or_else(|(log, _)| panic!("restart {round} failed:\n{log}"));
        daemon = restarted;
        let blobs = check_blob_files(&daemon.root());
        // Every record has its blob, and the blob verifies. (A blob without a record is
        // allowed: the kill can fall between the store's commit and the record's.)
        let listed = daemon.ctr(&["content", "ls", "-q"]);
        let listed: Vec<String> = listed.ok().lines().map(str::to_string).collect();
        for digest in &listed {
            assert!(
                blobs.contains(digest),
                "round {round}: record {digest} has no blob file"
            );
            let copy = daemon.dir().join("check.bin");
            daemon
                .ctr_files(&["content", "get", digest], None, Some(&copy))
                .ok();
            assert_eq!(
                &sha256_file(&copy),
                digest,
                "round {round}: record {digest} does not match its blob"
            );
        }
        // The work was interrupted: no held upload committed, each is still open.
        let open = active(&daemon);
        for reference in &held {
            let digest = &inputs[reference].1;
            assert!(
                !listed.contains(digest),
                "round {round}: {reference} committed from a prefix"
            );
            assert!(
                open.contains_key(reference),
                "round {round}: interrupted ingest {reference} is not open after the restart: {open:?}"
            );
        }
        // Open ingests resume (the client restarts or continues them) and commit correctly.
        for reference in open.keys() {
            let (path, digest) = &inputs[reference];
            let resumed = daemon.plinthctl_files(
                &[
                    "content",
                    "ingest",
                    "--progress",
                    "never",
                    "--expected-digest",
                    digest,
                    reference,
                ],
                Some(path),
                None,
            );
            assert_eq!(
                resumed.ok(),
                format!("{digest}\n"),
                "round {round}: resuming {reference}"
            );
        }
        assert_eq!(
            daemon.plinthctl(&["content", "active"]).ok(),
            "REF    SIZE    AGE\n",
            "round {round}: ingests left open"
        );
    }
    // In the end every input can be committed and read back.
    for (reference, (path, digest)) in &inputs {
        let output = daemon.plinthctl_files(
            &[
                "content",
                "ingest",
                "--progress",
                "never",
                "--expected-digest",
                digest,
                reference,
            ],
            Some(path),
            None,
        );
        assert!(
            output.status.success() || output.stdout.contains("already exists"),
            "{reference}: {}",
            output.stderr
        );
    }
    let listed = daemon.ctr(&["content", "ls", "-q"]);
    assert_eq!(listed.ok().lines().count(), inputs.len());
    assert_eq!(check_blob_files(&daemon.root()).len(), inputs.len());
}

/// Kill rounds of the storm under load.
const STORM_ROUNDS: u64 = 20;

/// plinth-load's successful operations so far, from a progress line
/// (`plinth-load: 1.0 s: 1234 ops (1234/s), …`).
fn progress_ops(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" s: ")?;
    rest.split_once(" ops ")?.0.parse().ok()
}

/// plinthd is killed with SIGKILL twenty times while plinth-load's clients drive every
/// operation (ingests small and large, resumed ones, label updates, deletes, snapshot
/// chains on both snapshotters, namespaces). After each restart, `plinth-load check` reads
/// what the clients journaled: every acknowledged write is there and verifies, and nothing
/// that was never acknowledged is visible as committed; every blob file is what its name
/// says. Earlier rounds' journals are checked again at the end.
#[test]
fn sigkill_storm_under_load_keeps_every_acknowledged_write_and_shows_nothing_else() {
    use std::io::BufRead as _;
    let mut daemon = start(Start::default());
    let mut journals: Vec<PathBuf> = Vec::new();
    for round in 0..STORM_ROUNDS {
        let journal = daemon.dir().join(format!("journal-{round}.json"));
        let snapshotter = if round % 2 == 0 {
            "native"
        } else {
            "overlayfs"
        };
        let mut load = Command::new(binary("plinth-load"))
            .args([
                "run",
                "--address",
                &daemon.address(),
                "--clients",
                "8",
                "--duration",
                "120s",
                "--snapshotter",
                snapshotter,
                "--prefix",
                &format!("storm{round}"),
                "--until-gone",
                "--journal",
                journal.to_str().unwrap(),
                "--progress",
                "50ms",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The kill lands after a number of operations that moves from round to round.
        let wanted = 40 + 29 * round;
        // Its stderr is read to the end on a thread of its own (the progress lines keep
        // coming after the kill); the lines reach the test as they come.
        let (lines, seen_lines) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(load.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut seen = Vec::new();
        while let Ok(line) = seen_lines.recv() {
            let ops = progress_ops(&line);
            seen.push(line);
            if ops.is_some_and(|n| n >= wanted) {
                break;
            }
        }
        assert!(
            seen.last()
                .and_then(|l| progress_ops(l))
                .is_some_and(|n| n >= wanted),
            "round {round}: plinth-load stopped before {wanted} operations:\n{}",
            seen.join("\n")
        );
        let dir = daemon.into_dir();
        let output = load.wait_with_output().unwrap();
        reader.join().unwrap();
        seen.extend(seen_lines.try_iter());
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "round {round}: plinth-load failed ({}) before or at the kill:\n{report}\n{}",
            output.status,
            seen.join("\n")
        );
        assert!(report.contains("(the daemon went away)"), "{report}");
        daemon = start_in(dir, Start::default())
            .unwrap_or_else(|(log, _)| panic!("restart {round} failed:\n{log}"));
        check_blob_files(&daemon.root());
        journals.push(journal);
        // This round's and the previous one's (which has now survived two kills).
        let recent = &journals[journals.len().saturating_sub(2)..];
        check_journals(&daemon, round, recent);
    }
    check_journals(&daemon, STORM_ROUNDS, &journals);
}

fn check_journals(daemon: &Daemon, round: u64, journals: &[PathBuf]) {
    let mut args = vec![
        "check".to_string(),
        "--address".to_string(),
        daemon.address(),
    ];
    args.extend(journals.iter().map(|j| j.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let check = plinth_tests::run(&binary("plinth-load"), &args);
    assert!(
        check.status.success() && check.stdout.contains("; 0 problems"),
        "round {round}: after the restart:\n{}{}",
        check.stdout,
        check.stderr
    );
}

// ---------------------------------------------------------------------------------------
// SIGKILL during garbage collections

/// Set in the child process of the collection crash test: the root it collects in.
const GC_CHILD: &str = "PLINTH_GC_CRASH_CHILD";
/// Replays a run of the collection crash test (its seed is printed).
const GC_SEED: &str = "PLINTH_GC_CRASH_SEED";
const GC_ROUNDS: u64 = 20;
const GC_NAMESPACES: [&str; 2] = ["crash-a", "crash-b"];
/// Images each namespace starts with; each round deletes about half and adds this many.
const GC_IMAGES: usize = 48;
/// Shared layers and base snapshots per namespace.
const GC_POOL: usize = 4;

mod gc_crash {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::sync::Arc;

    use plinth_builtin_plugins::content::local::LocalStore;
    use plinth_builtin_plugins::content::{ContentStore, Digest};
    use plinth_builtin_plugins::gc::Collector;
    use plinth_builtin_plugins::images::{Descriptor, Image, ImageStore};
    use plinth_builtin_plugins::leases::LeaseManager;
    use plinth_builtin_plugins::metadata::{Metadata, SharingPolicy};
    use plinth_builtin_plugins::namespaces::{Labels, NamespacedStores};
    use plinth_builtin_plugins::snapshots::Snapshotter;
    use plinth_builtin_plugins::snapshots::native::NativeSnapshotter;

    /// The metadata database over a local content store and a native snapshotter, as
    /// plinthd lays them out under one root.
    pub(super) struct Stores {
        pub(super) metadata: Arc<Metadata>,
        pub(super) local: Arc<dyn ContentStore>,
        pub(super) native: Arc<dyn Snapshotter>,
    }

    pub(super) fn open(root: &Path) -> Stores {
        let local: Arc<dyn ContentStore> =
            Arc::new(LocalStore::open(&root.join("content")).expect("the content store"));
        let native: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(&root.join("native")).expect("the snapshotter"));
        let metadata = Metadata::open_with(
            &root.join("meta.db"),
            Some(Arc::clone(&local)),
            BTreeMap::from([("native".to_string(), Arc::clone(&native))]),
            SharingPolicy::Shared,
        )
        .expect("the metadata database");
        Stores {
            metadata: Arc::new(metadata),
            local,
            native,
        }
    }

    pub(super) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// The child: collects in a loop, saying when each collection starts and ends, until it
    /// is killed (or its parent is gone: its standard input closes).
    pub(super) fn child(root: &Path) -> ! {
        use std::io::{Read as _, Write as _};
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            std::process::exit(0);
        });
        let runtime = runtime();
        runtime.block_on(async {
            let stores = open(root);
            let mut out = std::io::stdout();
            for n in 0u64.. {
                writeln!(out, "gc: collecting {n}").expect("stdout");
                out.flush().expect("stdout");
                let start = std::time::Instant::now();
                match stores.metadata.collect().await {
                    Ok(stats) => writeln!(
                        out,
                        "gc: collected {n} in {} µs: {stats:?}",
                        start.elapsed().as_micros()
                    ),
                    Err(e) => writeln!(out, "gc: failed {n}: {e}"),
                }
                .expect("stdout");
                out.flush().expect("stdout");
            }
        });
        std::process::exit(0)
    }

    /// What a live image or lease keeps in its namespace.
    #[derive(Debug, Clone, Default)]
    pub(super) struct Held {
        pub(super) content: BTreeSet<String>,
        pub(super) snapshots: BTreeSet<String>,
    }

    /// The population as the test made it: every root and what it keeps.
    #[derive(Debug, Default)]
    pub(super) struct Model {
        /// (namespace, image) → what it keeps.
        pub(super) images: BTreeMap<(String, String), Held>,
        /// (namespace, lease) → what it keeps.
        pub(super) leases: BTreeMap<(String, String), Held>,
        /// Base snapshots that exist: (namespace, index).
        pub(super) bases: BTreeSet<(String, usize)>,
    }

    impl Model {
        /// (namespace, digest) and (namespace, key) of everything some root keeps.
        pub(super) fn reachable(&self) -> (BTreeSet<(String, String)>, BTreeSet<(String, String)>) {
            let (mut content, mut snapshots) = (BTreeSet::new(), BTreeSet::new());
            for ((ns, _), held) in self.images.iter().chain(self.leases.iter()) {
                content.extend(held.content.iter().map(|d| (ns.clone(), d.clone())));
                snapshots.extend(held.snapshots.iter().map(|k| (ns.clone(), k.clone())));
            }
            (content, snapshots)
        }
    }

    pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Commits `data` in `ns` under ingest ref `reference` (a blob the namespace holds
    /// already, or that another writer commits first, is fine).
    pub(super) async fn commit(
        metadata: &Arc<Metadata>,
        ns: &str,
        lease: Option<&str>,
        reference: &str,
        data: &[u8],
        with: Labels,
    ) -> String {
        let store = Arc::clone(metadata)
            .leased_content(ns, lease)
            .expect("a view");
        let digest = Digest::of(data);
        let size = i64::try_from(data.len()).expect("small");
        match store.writer(reference, size, Some(digest.clone())).await {
            Ok(mut writer) => {
                let offset = usize::try_from(writer.status().await.expect("status").offset)
                    .expect("an offset");
                if offset < data.len() {
                    writer.write(&data[offset..]).await.expect("write");
                }
                match writer.commit(size, Some(digest.clone()), with).await {
                    Ok(_) => {}
                    Err(e) if e.category == plinth_core::Category::AlreadyExists => {}
                    Err(e) => panic!("{ns}: committing {digest}: {e}"),
                }
                writer.close().await.expect("close");
            }
            Err(e) if e.category == plinth_core::Category::AlreadyExists => {}
            Err(e) => panic!("{ns}: opening a writer for {digest}: {e}"),
        }
        digest.as_str().to_string()
    }

    /// Prepares `key` on `parent` and commits it as `key`.
    pub(super) async fn committed(
        metadata: &Arc<Metadata>,
        ns: &str,
        lease: Option<&str>,
        key: &str,
        parent: &str,
    ) {
        let snapshotter = Arc::clone(metadata)
            .leased_snapshotter(ns, "native", lease)
            .expect("a view");
        let active = format!("{key}-active");
        snapshotter
            .prepare(&active, parent, Labels::new())
            .await
            .unwrap_or_else(|e| panic!("{ns}: preparing {active} on {parent:?}: {e}"));
        snapshotter
            .commit(key, &active, Labels::new())
            .await
            .unwrap_or_else(|e| panic!("{ns}: committing {key}: {e}"));
    }

    /// An image `name` in `ns`: a manifest referring to a config (which refers to a chain
    /// of two snapshots on base `base`) and to two layers (its own, and shared layer
    /// `pool`). Returns what it keeps.
    pub(super) async fn image(
        metadata: Arc<Metadata>,
        ns: &'static str,
        name: String,
        base: usize,
        pool: usize,
    ) -> ((String, String), Held) {
        let own = commit(
            &metadata,
            ns,
            None,
            &format!("{name}-layer"),
            format!("{name} layer").as_bytes(),
            Labels::new(),
        )
        .await;
        let shared = commit(
            &metadata,
            ns,
            None,
            &format!("{name}-pool"),
            format!("pool {pool}").as_bytes(),
            Labels::new(),
        )
        .await;
        let (lower, top) = (format!("{name}-lower"), format!("{name}-top"));
        committed(&metadata, ns, None, &lower, &format!("base-{base}")).await;
        committed(&metadata, ns, None, &top, &lower).await;
        let config = commit(
            &metadata,
            ns,
            None,
            &format!("{name}-config"),
            format!("{name} config").as_bytes(),
            labels(&[("containerd.io/gc.ref.snapshot.native/rootfs", &top)]),
        )
        .await;
        let manifest_bytes = format!("{name} manifest").into_bytes();
        let manifest = commit(
            &metadata,
            ns,
            None,
            &format!("{name}-manifest"),
            &manifest_bytes,
            labels(&[
                ("containerd.io/gc.ref.content.config", &config),
                ("containerd.io/gc.ref.content.l.0", &own),
                ("containerd.io/gc.ref.content.l.1", &shared),
            ]),
        )
        .await;
        let target = Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".to_string(),
            digest: manifest.clone(),
            size: i64::try_from(manifest_bytes.len()).expect("small"),
            annotations: Labels::new(),
        };
        ImageStore::create(metadata.as_ref(), ns, Image::new(name.clone(), target))
            .unwrap_or_else(|e| panic!("{ns}: creating image {name}: {e}"));
        let held = Held {
            content: BTreeSet::from([own, shared, config, manifest]),
            snapshots: BTreeSet::from([lower, top, format!("base-{base}")]),
        };
        ((ns.to_string(), name), held)
    }

    /// A lease `id` in `ns` holding a blob and a snapshot on base `base`, made through
    /// views leased to it; with `expired`, the lease has expired already.
    pub(super) async fn lease(
        metadata: &Arc<Metadata>,
        ns: &str,
        id: &str,
        base: usize,
        expired: bool,
    ) -> Held {
        let with = if expired {
            labels(&[("containerd.io/gc.expire", "2020-01-01T00:00:00Z")])
        } else {
            Labels::new()
        };
        LeaseManager::create(metadata.as_ref(), ns, id, with).expect("a lease");
        let blob = commit(
            metadata,
            ns,
            Some(id),
            &format!("{id}-blob"),
            format!("{id} blob").as_bytes(),
            Labels::new(),
        )
        .await;
        let key = format!("{id}-snapshot");
        committed(metadata, ns, Some(id), &key, &format!("base-{base}")).await;
        Held {
            content: BTreeSet::from([blob]),
            snapshots: BTreeSet::from([key, format!("base-{base}")]),
        }
    }

    /// (namespace, key) of each snapshot in the backend (keys `<namespace>/<n>/<key>`).
    pub(super) async fn backend(stores: &Stores) -> BTreeSet<(String, String)> {
        let all = stores.native.walk(&[]).await.expect("backend walk");
        let keys: BTreeSet<(String, String)> = all
            .iter()
            .map(|info| {
                let mut parts = info.name.splitn(3, '/');
                let ns = parts.next().unwrap_or_default().to_string();
                let _ = parts.next();
                (ns, parts.next().unwrap_or_default().to_string())
            })
            .collect();
        assert_eq!(keys.len(), all.len(), "two backend snapshots for one key");
        keys
    }

    /// Every record: (namespace, digest) of blobs, (namespace, key) → parent of snapshots,
    /// (namespace, id) of leases.
    pub(super) async fn records(
        stores: &Stores,
    ) -> (
        BTreeSet<(String, String)>,
        BTreeMap<(String, String), String>,
        BTreeSet<(String, String)>,
    ) {
        let (mut content, mut snapshots, mut leases) =
            (BTreeSet::new(), BTreeMap::new(), BTreeSet::new());
        for ns in super::GC_NAMESPACES {
            let view = Arc::clone(&stores.metadata).content(ns).expect("a view");
            for info in view.walk(&[]).await.expect("content walk") {
                content.insert((ns.to_string(), info.digest.as_str().to_string()));
            }
            let view = Arc::clone(&stores.metadata)
                .snapshotter(ns, "native")
                .expect("a view");
            for info in view.walk(&[]).await.expect("snapshot walk") {
                snapshots.insert((ns.to_string(), info.name), info.parent);
            }
            for lease in LeaseManager::list(stores.metadata.as_ref(), ns, &[]).expect("leases") {
                leases.insert((ns.to_string(), lease.id));
            }
        }
        (content, snapshots, leases)
    }

    /// After a restart: every record's blob is in the store and verifies, every snapshot
    /// record has its parent's record and its backend snapshot, and everything a root keeps
    /// has its record. Returns whether records of unreachable objects were left (the kill
    /// came before the sweep committed) and whether blobs or backend snapshots without
    /// records were (it came during the backend removal).
    pub(super) async fn check_after_restart(
        stores: &Stores,
        model: &Model,
        round: u64,
    ) -> (bool, bool) {
        let (content, snapshots, leases) = records(stores).await;
        for (ns, digest) in &content {
            let view = Arc::clone(&stores.metadata).content(ns).expect("a view");
            let parsed = Digest::parse(digest).expect("a digest");
            let size =
                usize::try_from(view.info(&parsed).await.expect("info").size).expect("a size");
            let bytes = stores
                .local
                .read_at(&parsed, 0, size)
                .await
                .unwrap_or_else(|e| {
                    panic!("round {round}: {ns} holds {digest}, the store cannot read it: {e}")
                });
            assert_eq!(
                &Digest::of(&bytes),
                &parsed,
                "round {round}: {ns}: blob {digest} does not verify"
            );
        }
        let backend = backend(stores).await;
        for ((ns, key), parent) in &snapshots {
            assert!(
                backend.contains(&(ns.clone(), key.clone())),
                "round {round}: {ns}: snapshot {key} has a record but is not in the backend"
            );
            assert!(
                parent.is_empty() || snapshots.contains_key(&(ns.clone(), parent.clone())),
                "round {round}: {ns}: snapshot {key} has a record, its parent {parent} none"
            );
        }
        let (reachable_content, reachable_snapshots) = model.reachable();
        let lost: Vec<_> = reachable_content.difference(&content).collect();
        assert!(
            lost.is_empty(),
            "round {round}: reachable blobs lost: {lost:?}"
        );
        let lost: Vec<_> = reachable_snapshots
            .iter()
            .filter(|key| !snapshots.contains_key(key))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: reachable snapshots lost: {lost:?}"
        );
        for key in model.leases.keys() {
            assert!(leases.contains(key), "round {round}: lease {key:?} lost");
        }
        let unreachable_records = content.len() > reachable_content.len()
            || snapshots.len() > reachable_snapshots.len()
            || leases.len() > model.leases.len();
        let held: BTreeSet<&String> = content.iter().map(|(_, d)| d).collect();
        let orphans = stores
            .local
            .walk(&[])
            .await
            .expect("store walk")
            .iter()
            .any(|info| !held.contains(&info.digest.as_str().to_string()))
            || backend.len() > snapshots.len();
        (unreachable_records, orphans)
    }

    /// After a collection with nothing else running: exactly what the roots keep is left,
    /// in the records, the store, the backend and its directory.
    pub(super) async fn check_exact(stores: &Stores, model: &Model, root: &Path, round: u64) {
        let (content, snapshots, leases) = records(stores).await;
        let (reachable_content, reachable_snapshots) = model.reachable();
        assert_eq!(content, reachable_content, "round {round}: blob records");
        let keys: BTreeSet<(String, String)> = snapshots.keys().cloned().collect();
        assert_eq!(keys, reachable_snapshots, "round {round}: snapshot records");
        let live: BTreeSet<(String, String)> = model.leases.keys().cloned().collect();
        assert_eq!(leases, live, "round {round}: leases");
        let blobs: BTreeSet<String> = stores
            .local
            .walk(&[])
            .await
            .expect("store walk")
            .into_iter()
            .map(|info| info.digest.as_str().to_string())
            .collect();
        let held: BTreeSet<String> = content.into_iter().map(|(_, d)| d).collect();
        assert_eq!(blobs, held, "round {round}: blobs in the store");
        assert_eq!(
            backend(stores).await,
            keys,
            "round {round}: backend snapshots"
        );
        let dirs = std::fs::read_dir(root.join("native/snapshots"))
            .expect("the snapshot directories")
            .count();
        assert_eq!(
            dirs,
            keys.len(),
            "round {round}: directories in the snapshotter vs snapshots it lists"
        );
    }
}

/// xorshift64*, seeded from `PLINTH_GC_CRASH_SEED` or the clock (printed).
struct GcRng(u64);

impl GcRng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Collections are killed with SIGKILL at random moments, twenty times, over a population
/// of images (manifests, configs, layers shared between images and namespaces, snapshot
/// chains on shared bases) and leases (live and expired), of which each round makes about
/// half unreachable. The collections run in a child process (this test binary again,
/// opening the root as plinthd lays it out, collecting in a loop); the kill comes a random
/// time after its first collection starts. After each restart everything reachable is
/// there and verifies, every record has its blob (which verifies) or its backend snapshot
/// and its parent's record; the next collection then leaves exactly what the roots keep,
/// in the records, the store, the snapshotter and its directory.
#[test]
fn sigkill_during_collections_loses_nothing_reachable_and_the_next_collection_finishes() {
    use std::io::BufRead as _;
    use std::sync::Arc;

    use plinth_builtin_plugins::gc::Collector as _;
    use plinth_builtin_plugins::images::ImageStore;
    use plinth_builtin_plugins::leases::LeaseManager;
    use plinth_builtin_plugins::namespaces::{Labels, NamespacedStores as _};

    if let Some(root) = std::env::var_os(GC_CHILD) {
        gc_crash::child(Path::new(&root));
    }
    let seed = std::env::var(GC_SEED).map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()))
                | 1
        },
        |v| v.parse().expect("a seed"),
    );
    eprintln!("seed {seed} (replay with {GC_SEED}={seed})");
    let mut rng = GcRng(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let runtime = gc_crash::runtime();
    let mut model = gc_crash::Model::default();
    let mut next_image = 0u64;
    // Microseconds the kill may wait after a collection starts: about as long as a whole
    // collection takes (the last one seen to finish in the child, or the last one after a
    // restart that had a whole collection's work left).
    let mut window: u64 = 400_000;
    let mut landed = BTreeMap::from([
        ("before the sweep committed", 0),
        ("during backend removal", 0),
        ("after the collection", 0),
    ]);
    for round in 0..=GC_ROUNDS {
        let stores = gc_crash::open(&root);
        runtime.block_on(async {
            if round > 0 {
                let (records_left, orphans) =
                    gc_crash::check_after_restart(&stores, &model, round).await;
                let when = match (records_left, orphans) {
                    (true, _) => "before the sweep committed",
                    (false, true) => "during backend removal",
                    (false, false) => "after the collection",
                };
                *landed.get_mut(when).unwrap() += 1;
                let stats = stores.metadata.collect().await.unwrap_or_else(|e| {
                    panic!("round {round}: the collection after the restart: {e}")
                });
                gc_crash::check_exact(&stores, &model, &root, round).await;
                if stats.records() > 0 {
                    window = u64::try_from(stats.elapsed().as_micros() * 5 / 4).unwrap();
                }
                eprintln!("round {round}: killed {when}; then {stats:?}");
                model.bases = model
                    .reachable()
                    .1
                    .iter()
                    .filter_map(|(ns, key)| {
                        Some((ns.clone(), key.strip_prefix("base-")?.parse().ok()?))
                    })
                    .collect();
            }
            if round == GC_ROUNDS {
                return;
            }
            // About half the images and the leases go; new ones come, and garbage.
            let images: Vec<(String, String)> = model.images.keys().cloned().collect();
            for key in images {
                if rng.below(2) == 0 {
                    ImageStore::delete(stores.metadata.as_ref(), &key.0, &key.1).unwrap();
                    model.images.remove(&key);
                }
            }
            let leases: Vec<(String, String)> = model.leases.keys().cloned().collect();
            for key in leases {
                if rng.below(2) == 0 {
                    LeaseManager::delete(stores.metadata.as_ref(), &key.0, &key.1).unwrap();
                    model.leases.remove(&key);
                }
            }
            for ns in GC_NAMESPACES {
                for base in 0..GC_POOL {
                    if model.bases.insert((ns.to_string(), base)) {
                        gc_crash::committed(
                            &stores.metadata,
                            ns,
                            None,
                            &format!("base-{base}"),
                            "",
                        )
                        .await;
                    }
                }
            }
            let wanted = if round == 0 { GC_IMAGES } else { GC_IMAGES / 2 };
            let mut tasks = tokio::task::JoinSet::new();
            for ns in GC_NAMESPACES {
                for _ in 0..wanted {
                    let name = format!("img{next_image}");
                    next_image += 1;
                    let base = usize::try_from(rng.below(GC_POOL as u64)).unwrap();
                    let pool = usize::try_from(rng.below(GC_POOL as u64)).unwrap();
                    tasks.spawn(gc_crash::image(
                        Arc::clone(&stores.metadata),
                        ns,
                        name,
                        base,
                        pool,
                    ));
                }
            }
            while let Some(done) = tasks.join_next().await {
                let (key, held) = done.unwrap();
                model.images.insert(key, held);
            }
            for ns in GC_NAMESPACES {
                for (i, expired) in [(0, false), (1, true)] {
                    let id = format!("r{round}-l{i}");
                    let base = usize::try_from(rng.below(GC_POOL as u64)).unwrap();
                    let held = gc_crash::lease(&stores.metadata, ns, &id, base, expired).await;
                    if !expired {
                        model.leases.insert((ns.to_string(), id), held);
                    }
                }
                // Garbage nothing ever held: a blob, a snapshot, an active one on a base.
                gc_crash::commit(
                    &stores.metadata,
                    ns,
                    None,
                    &format!("junk-{round}"),
                    format!("junk {round}").as_bytes(),
                    Labels::new(),
                )
                .await;
                let junk = format!("junk-{round}");
                gc_crash::committed(&stores.metadata, ns, None, &junk, "").await;
                Arc::clone(&stores.metadata)
                    .snapshotter(ns, "native")
                    .unwrap()
                    .prepare(&format!("{junk}-open"), "base-0", Labels::new())
                    .await
                    .unwrap();
            }
        });
        drop(stores);
        if round == GC_ROUNDS {
            break;
        }
        // The child collects; the kill comes a random time after its first collection
        // starts.
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "crash::sigkill_during_collections_loses_nothing_reachable_and_the_next_collection_finishes",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(GC_CHILD, &root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (lines, seen_lines) = std::sync::mpsc::channel();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // The child's lines (libtest may print the test's name before the first one, on
        // the same line).
        let reader = std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(at) = line.find("gc: ") {
                    let _ = lines.send(line[at..].to_string());
                }
            }
        });
        let mut seen = Vec::new();
        while let Ok(line) = seen_lines.recv_timeout(Duration::from_secs(60)) {
            let started = line == "gc: collecting 0";
            seen.push(line);
            if started {
                break;
            }
        }
        if seen.last().is_none_or(|l| l != "gc: collecting 0") {
            let _ = child.kill();
            panic!(
                "round {round}: the child never started collecting:\n{}",
                seen.join("\n")
            );
        }
        // A random moment, not a synchronisation: where the kill lands is the input.
        std::thread::sleep(Duration::from_micros(rng.below(window)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        seen.extend(seen_lines.try_iter());
        for line in &seen {
            assert!(
                !line.starts_with("gc: failed"),
                "round {round}: a collection failed:\n{}",
                seen.join("\n")
            );
            if let Some(rest) = line.strip_prefix("gc: collected 0 in ") {
                let micros: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                window = micros.max(1_000);
            }
        }
    }
    eprintln!("kills: {landed:?}");
    assert!(
        landed["during backend removal"] + landed["before the sweep committed"] > 0,
        "no kill landed inside a collection in {GC_ROUNDS} rounds: {landed:?}"
    );
}
