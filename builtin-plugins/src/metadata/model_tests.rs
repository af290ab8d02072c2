//! The metadata layer against an in-memory model: random operations on content and
//! snapshots in several namespaces, each checked against what a `BTreeMap` says should
//! happen, with the real local content store and native snapshotter underneath.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use plinth_core::Category;

use super::{Metadata, SharingPolicy};
use crate::content::local::LocalStore;
use crate::content::{ContentStore, Digest};
use crate::namespaces::{Labels, NamespacedStores};
use crate::snapshots::native::NativeSnapshotter;
use crate::snapshots::{Kind, Snapshotter};

const NAMESPACES: [&str; 3] = ["alpha", "beta", "gamma"];
const BLOBS: usize = 5;
const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];

/// xorshift64*: seeded, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn blob(i: usize) -> Vec<u8> {
    (0..(i * 997 + 13))
        .map(|j| u8::try_from((j * 31 + i * 7) % 251).unwrap_or(0))
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
struct ModelSnapshot {
    kind: Kind,
    parent: String,
}

/// Checks that `result` is what the model predicted: success (`None`) or an error of the
/// predicted category.
#[track_caller]
fn check_outcome<T: std::fmt::Debug, E: std::borrow::Borrow<crate::Error> + std::fmt::Debug>(
    context: &str,
    what: &str,
    result: &Result<T, E>,
    predicted: Option<Category>,
) {
    assert_eq!(
        result.as_ref().err().map(|e| e.borrow().category),
        predicted,
        "{context}: {what}: the model predicted {}, got {result:?}",
        predicted.map_or("success".to_string(), |c| format!("{c:?}"))
    );
}

/// What a namespace's snapshot `key` is, for the model: the category an operation that needs
/// `parent` committed gets, if any.
fn parent_problem(snaps: &BTreeMap<String, ModelSnapshot>, parent: &str) -> Option<Category> {
    match snaps.get(parent) {
        _ if parent.is_empty() => None,
        None => Some(Category::NotFound),
        Some(s) if s.kind != Kind::Committed => Some(Category::FailedPrecondition),
        Some(_) => None,
    }
}

async fn run(seed: u64, policy: SharingPolicy, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let content: Arc<dyn ContentStore> =
        Arc::new(LocalStore::open(&dir.path().join("content")).unwrap());
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&dir.path().join("native")).unwrap());
    let metadata = Arc::new(
        Metadata::open_with(
            &dir.path().join("meta.db"),
            Some(content),
            BTreeMap::from([("native".to_string(), native)]),
            policy,
        )
        .unwrap(),
    );
    let mut rng = Rng(seed | 1);
    let mut model_content: BTreeMap<&str, BTreeMap<usize, Labels>> = BTreeMap::new();
    let mut model_snapshots: BTreeMap<&str, BTreeMap<String, ModelSnapshot>> = BTreeMap::new();
    for step in 0..steps {
        let ns = NAMESPACES[rng.below(NAMESPACES.len())];
        let store = metadata.clone().content(ns).unwrap();
        let snapshotter = metadata.clone().snapshotter(ns, "native").unwrap();
        let have = model_content.entry(ns).or_default();
        let snaps = model_snapshots.entry(ns).or_default();
        let b = rng.below(BLOBS);
        let bytes = blob(b);
        let digest = Digest::of(&bytes);
        let context = format!("seed {seed} step {step} ns {ns}");
        match rng.below(9) {
            0 | 1 => {
                // Ingest with the expected digest: a namespace that has the blob makes it
                // AlreadyExists; under the shared policy, one that another namespace has is
                // offered written whole, and the commit alone records it. Either way the
                // namespace has it then.
                let reference = format!("ref-{b}");
                let elsewhere = model_content
                    .iter()
                    .any(|(n, m)| *n != ns && m.contains_key(&b));
                let have = model_content.entry(ns).or_default();
                let predicted = have.contains_key(&b).then_some(Category::AlreadyExists);
                let shared = predicted.is_none() && policy == SharingPolicy::Shared && elsewhere;
                let result = store.writer(&reference, 0, Some(digest.clone())).await;
                check_outcome(&context, "writer", &result.as_ref().map(|_| ()), predicted);
                if let Ok(mut writer) = result {
                    let offset = writer.status().await.unwrap().offset;
                    let predicted_offset = if shared {
                        i64::try_from(bytes.len()).unwrap()
                    } else {
                        0
                    };
                    assert_eq!(offset, predicted_offset, "{context}: writer offset");
                    if !shared {
                        writer.write(&bytes).await.unwrap();
                    }
                    let committed = writer
                        .commit(
                            i64::try_from(bytes.len()).unwrap(),
                            Some(digest.clone()),
                            Labels::new(),
                        )
                        .await;
                    writer.close().await.unwrap();
                    committed.unwrap_or_else(|e| panic!("{context}: commit: {e}"));
                }
                have.entry(b).or_default();
            }
            2 => {
                let result = store.delete(&digest).await;
                let predicted = (!have.contains_key(&b)).then_some(Category::NotFound);
                check_outcome(&context, "delete", &result, predicted);
                have.remove(&b);
            }
            3 => {
                let result = store.read_at(&digest, 0, bytes.len()).await;
                let predicted = (!have.contains_key(&b)).then_some(Category::NotFound);
                check_outcome(&context, "read", &result.as_ref().map(Vec::len), predicted);
                if let Ok(read) = result {
                    assert_eq!(read, bytes, "{context}: read");
                }
            }
            4 => {
                let key = format!("l{}", rng.below(3));
                let value = if rng.below(4) == 0 {
                    String::new()
                } else {
                    format!("v{}", rng.below(10))
                };
                let predicted = (!have.contains_key(&b)).then_some(Category::NotFound);
                let info = store.info(&digest).await;
                check_outcome(&context, "info", &info, predicted);
                let mut info = info.unwrap_or_else(|_| crate::content::Info {
                    digest: digest.clone(),
                    size: i64::try_from(bytes.len()).unwrap(),
                    created_at: std::time::SystemTime::UNIX_EPOCH,
                    updated_at: std::time::SystemTime::UNIX_EPOCH,
                    labels: Labels::new(),
                });
                if let Some(labels) = have.get(&b) {
                    assert_eq!(&info.labels, labels, "{context}: labels from info");
                }
                info.labels = Labels::from([(key.clone(), value.clone())]);
                let result = store.update(info, &[format!("labels.{key}")]).await;
                check_outcome(&context, "update", &result, predicted);
                if let Some(labels) = have.get_mut(&b) {
                    if value.is_empty() {
                        labels.remove(&key);
                    } else {
                        labels.insert(key, value);
                    }
                    let updated = result.unwrap().labels;
                    assert_eq!(&updated, labels, "{context}: labels from update");
                }
            }
            5 => {
                let key = KEYS[rng.below(KEYS.len())].to_string();
                let committed: Vec<String> = snaps
                    .iter()
                    .filter(|(_, s)| s.kind == Kind::Committed)
                    .map(|(k, _)| k.clone())
                    .collect();
                let uncommitted: Vec<String> = snaps
                    .iter()
                    .filter(|(_, s)| s.kind != Kind::Committed)
                    .map(|(k, _)| k.clone())
                    .collect();
                // Mostly none or a committed parent; sometimes a missing or uncommitted one.
                let parent = match rng.below(8) {
                    0 => "missing".to_string(),
                    1 if !uncommitted.is_empty() => {
                        uncommitted[rng.below(uncommitted.len())].clone()
                    }
                    2..=4 if !committed.is_empty() => committed[rng.below(committed.len())].clone(),
                    _ => String::new(),
                };
                let view = rng.below(4) == 0 && !parent.is_empty();
                let predicted = if snaps.contains_key(&key) {
                    Some(Category::AlreadyExists)
                } else {
                    parent_problem(snaps, &parent)
                };
                let result = if view {
                    snapshotter.view(&key, &parent, Labels::new()).await
                } else {
                    snapshotter.prepare(&key, &parent, Labels::new()).await
                };
                let what = format!(
                    "{} {key} on {parent:?}",
                    if view { "view" } else { "prepare" }
                );
                check_outcome(&context, &what, &result, predicted);
                if predicted.is_none() {
                    snaps.insert(
                        key,
                        ModelSnapshot {
                            kind: if view { Kind::View } else { Kind::Active },
                            parent,
                        },
                    );
                }
            }
            6 => {
                let key = KEYS[rng.below(KEYS.len())].to_string();
                let name = format!("c-{}", KEYS[rng.below(KEYS.len())]);
                let result = snapshotter.commit(&name, &key, Labels::new()).await;
                let predicted = match snaps.get(&key) {
                    None => Some(Category::NotFound),
                    Some(s) if s.kind != Kind::Active => Some(Category::FailedPrecondition),
                    Some(_) if snaps.contains_key(&name) => Some(Category::AlreadyExists),
                    Some(_) => None,
                };
                check_outcome(
                    &context,
                    &format!("commit {key} as {name}"),
                    &result,
                    predicted,
                );
                if predicted.is_none() {
                    let s = snaps.remove(&key).expect("the model has the key");
                    snaps.insert(
                        name,
                        ModelSnapshot {
                            kind: Kind::Committed,
                            parent: s.parent,
                        },
                    );
                }
            }
            7 => {
                let all: Vec<String> = snaps.keys().cloned().collect();
                let key = if all.is_empty() || rng.below(5) == 0 {
                    "missing".to_string()
                } else {
                    all[rng.below(all.len())].clone()
                };
                let result = snapshotter.remove(&key).await;
                let predicted = if !snaps.contains_key(&key) {
                    Some(Category::NotFound)
                } else if snaps.values().any(|s| s.parent == key) {
                    Some(Category::FailedPrecondition)
                } else {
                    None
                };
                check_outcome(&context, &format!("remove {key}"), &result, predicted);
                if predicted.is_none() {
                    snaps.remove(&key);
                }
            }
            _ => {
                // Stat: what the model says, or NotFound.
                let key = if rng.below(4) == 0 || snaps.is_empty() {
                    "missing".to_string()
                } else {
                    let all: Vec<&String> = snaps.keys().collect();
                    all[rng.below(all.len())].clone()
                };
                let result = snapshotter.stat(&key).await;
                let expected = snaps.get(&key);
                check_outcome(
                    &context,
                    &format!("stat {key}"),
                    &result,
                    expected.is_none().then_some(Category::NotFound),
                );
                if let (Ok(info), Some(expected)) = (result, expected) {
                    assert_eq!(
                        (&info.kind, &info.parent),
                        (&expected.kind, &expected.parent),
                        "{context}: stat {key}"
                    );
                }
            }
        }
        // After every step, the whole visible state matches the model.
        for ns in NAMESPACES {
            let store = metadata.clone().content(ns).unwrap();
            let listed: BTreeMap<String, Labels> = store
                .walk(&[])
                .await
                .unwrap()
                .into_iter()
                .map(|i| (i.digest.to_string(), i.labels))
                .collect();
            let expected: BTreeMap<String, Labels> = model_content
                .get(ns)
                .map(|m| {
                    m.iter()
                        .map(|(b, l)| (Digest::of(&blob(*b)).to_string(), l.clone()))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(listed, expected, "seed {seed} step {step}: content of {ns}");
            let snapshotter = metadata.clone().snapshotter(ns, "native").unwrap();
            let listed: BTreeMap<String, ModelSnapshot> = snapshotter
                .walk(&[])
                .await
                .unwrap()
                .into_iter()
                .map(|i| {
                    (
                        i.name,
                        ModelSnapshot {
                            kind: i.kind,
                            parent: i.parent,
                        },
                    )
                })
                .collect();
            let expected = model_snapshots.get(ns).cloned().unwrap_or_default();
            assert_eq!(
                listed, expected,
                "seed {seed} step {step}: snapshots of {ns}"
            );
        }
    }
    // Nothing is kept in the store that no namespace holds.
    let held: BTreeSet<String> = model_content
        .values()
        .flat_map(|m| m.keys())
        .map(|b| Digest::of(&blob(*b)).to_string())
        .collect();
    let backend = metadata.content.clone().unwrap();
    let stored: BTreeSet<String> = backend
        .walk(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest.to_string())
        .collect();
    assert_eq!(
        stored, held,
        "seed {seed}: blobs in the store vs blobs some namespace holds"
    );
}

/// The seeds to run: `PLINTH_MODEL_SEEDS` of them (default [`DEFAULT_SEEDS`], sized for
/// CI), from `PLINTH_MODEL_SEED` or else from the clock, so that each run tries new ones.
/// A failure names its seed and how to run it again.
const DEFAULT_SEEDS: u64 = 8;
const STEPS: usize = 150;

fn seeds() -> Vec<u64> {
    let from_env = |name: &str| {
        std::env::var(name).ok().map(|value| {
            value
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{name}={value:?}: {e}"))
        })
    };
    let count = from_env("PLINTH_MODEL_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = from_env("PLINTH_MODEL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()))
    });
    (0..count).map(|i| first.wrapping_add(i)).collect()
}

async fn run_seeds(policy: SharingPolicy) {
    for seed in seeds() {
        if let Err(error) = tokio::spawn(run(seed, policy, STEPS)).await {
            let message = error.into_panic();
            let message = message
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| message.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            panic!(
                "{policy:?} policy, seed {seed} failed (run it alone with PLINTH_MODEL_SEED={seed} PLINTH_MODEL_SEEDS=1): {message}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_matches_the_model_under_the_shared_policy() {
    run_seeds(SharingPolicy::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_matches_the_model_under_the_isolated_policy() {
    run_seeds(SharingPolicy::Isolated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_content_passes_the_content_conformance_suite() {
    crate::content::testsuite::run(|dir: std::path::PathBuf| async move {
        let content: Arc<dyn ContentStore> = Arc::new(LocalStore::open(&dir.join("content"))?);
        let metadata = Arc::new(Metadata::open_with(
            &dir.join("meta.db"),
            Some(content),
            BTreeMap::new(),
            SharingPolicy::Shared,
        )?);
        metadata.content("suite")
    })
    .await;
}

/// The namespaced views of one metadata database over a local store in `dir`, under
/// `policy`, for the suite's cross-namespace cases.
fn namespace_views(
    dir: &std::path::Path,
    policy: SharingPolicy,
) -> Result<crate::content::testsuite::NamespaceViews, crate::Error> {
    let content: Arc<dyn ContentStore> = Arc::new(LocalStore::open(&dir.join("content"))?);
    let metadata = Arc::new(Metadata::open_with(
        &dir.join("meta.db"),
        Some(content),
        BTreeMap::new(),
        policy,
    )?);
    Ok(Arc::new(move |namespace: &str| {
        Arc::clone(&metadata).content(namespace)
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_content_passes_the_shared_policy_cross_namespace_cases() {
    crate::content::testsuite::run_shared_policy(|dir: std::path::PathBuf| async move {
        namespace_views(&dir, SharingPolicy::Shared)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_content_passes_the_isolated_policy_cross_namespace_cases() {
    crate::content::testsuite::run_isolated_policy(|dir: std::path::PathBuf| async move {
        namespace_views(&dir, SharingPolicy::Isolated)
    })
    .await;
}

/// Deleting a blob passes on what the store says: a blob the store no longer has is gone
/// either way (the delete succeeds and the record goes); a store that cannot delete it for
/// another reason is an error naming the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_passes_on_the_stores_failures_but_not_its_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(LocalStore::open(&dir.path().join("content")).unwrap());
    let metadata = Arc::new(
        Metadata::open_with(
            &dir.path().join("meta.db"),
            Some(Arc::clone(&local) as Arc<dyn ContentStore>),
            BTreeMap::new(),
            SharingPolicy::Shared,
        )
        .unwrap(),
    );
    let ns = metadata.content("a").unwrap();
    let mut digests = Vec::new();
    for data in [&b"gone from the store"[..], b"stuck in the store"] {
        let mut writer = ns.writer("w", 0, None).await.unwrap();
        writer.write(data).await.unwrap();
        digests.push(writer.commit(0, None, Labels::new()).await.unwrap());
        writer.close().await.unwrap();
    }
    let (gone, stuck) = (&digests[0], &digests[1]);

    local.delete(gone).await.unwrap();
    ns.delete(gone).await.unwrap();
    let error = ns.info(gone).await.unwrap_err();
    assert_eq!(error.category, Category::NotFound, "{error}");

    let blob = dir.path().join("content/blobs/sha256").join(stuck.hex());
    std::fs::remove_file(&blob).unwrap();
    std::fs::create_dir(&blob).unwrap();
    let error = ns.delete(stuck).await.unwrap_err();
    assert_eq!(error.category, Category::Internal, "{error}");
    assert!(
        error.message.contains(&blob.display().to_string()),
        "{error}"
    );
}

/// Under the shared policy a writer that names a blob the store already has, with its size
/// or no size, holds it whole without an upload, and its commit (not the writer) records it
/// in the namespace; with another size it is an upload like any other, which the commit
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_blob_is_recorded_without_upload_only_when_its_size_matches() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ContentStore> =
        Arc::new(LocalStore::open(&dir.path().join("content")).unwrap());
    let metadata = Arc::new(
        Metadata::open_with(
            &dir.path().join("meta.db"),
            Some(local),
            BTreeMap::new(),
            SharingPolicy::Shared,
        )
        .unwrap(),
    );
    let blob = b"shared between namespaces";
    let size = blob.len() as i64;
    let a = Arc::clone(&metadata).content("a").unwrap();
    let mut writer = a.writer("w", 0, None).await.unwrap();
    writer.write(blob).await.unwrap();
    let digest = writer.commit(0, None, Labels::new()).await.unwrap();
    writer.close().await.unwrap();

    for (namespace, total) in [("b", size), ("c", 0)] {
        let ns = Arc::clone(&metadata).content(namespace).unwrap();
        let mut writer = ns.writer("w", total, Some(digest.clone())).await.unwrap();
        let status = writer.status().await.unwrap();
        assert_eq!((status.offset, status.total), (size, size), "{namespace}");
        assert_eq!(writer.digest(), digest, "{namespace}");
        let error = ns.info(&digest).await.unwrap_err();
        assert_eq!(
            error.category,
            Category::NotFound,
            "{namespace}: not recorded before the commit: {error}"
        );
        let committed = writer.commit(0, None, Labels::new()).await.unwrap();
        writer.close().await.unwrap();
        assert_eq!(committed, digest, "{namespace}");
        assert_eq!(ns.info(&digest).await.unwrap().size, size, "{namespace}");
    }
    let d = Arc::clone(&metadata).content("d").unwrap();
    let writer = d.writer("w", size + 1, Some(digest.clone())).await.unwrap();
    writer.close().await.unwrap();
    let error = d.info(&digest).await.unwrap_err();
    assert_eq!(
        error.category,
        Category::NotFound,
        "not recorded in d: {error}"
    );
}
