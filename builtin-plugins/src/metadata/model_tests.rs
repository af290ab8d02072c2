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

fn category<T>(result: &Result<T, crate::Error>) -> Option<Category> {
    result.as_ref().err().map(|e| e.category)
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
                // Ingest with the expected digest.
                let reference = format!("ref-{b}");
                match store.writer(&reference, 0, Some(digest.clone())).await {
                    Ok(mut writer) => {
                        assert!(
                            !have.contains_key(&b),
                            "{context}: writer opened for a blob the namespace has"
                        );
                        writer.write(&bytes).await.unwrap();
                        let committed = writer
                            .commit(
                                i64::try_from(bytes.len()).unwrap(),
                                Some(digest.clone()),
                                Labels::new(),
                            )
                            .await;
                        writer.close().await.unwrap();
                        committed.unwrap_or_else(|e| panic!("{context}: commit: {e}"));
                        have.insert(b, Labels::new());
                    }
                    Err(e) => {
                        assert_eq!(e.category, Category::AlreadyExists, "{context}: {e}");
                        let elsewhere = model_content
                            .iter()
                            .any(|(n, m)| *n != ns && m.contains_key(&b));
                        let have = model_content.entry(ns).or_default();
                        let expected =
                            have.contains_key(&b) || (policy == SharingPolicy::Shared && elsewhere);
                        assert!(
                            expected,
                            "{context}: already exists for a blob it should upload"
                        );
                        have.entry(b).or_default();
                    }
                }
            }
            2 => {
                let result = store.delete(&digest).await;
                match have.remove(&b) {
                    Some(_) => result.unwrap_or_else(|e| panic!("{context}: delete: {e}")),
                    None => assert_eq!(category(&result), Some(Category::NotFound), "{context}"),
                }
            }
            3 => {
                let result = store.read_at(&digest, 0, bytes.len()).await;
                if have.contains_key(&b) {
                    assert_eq!(
                        result.unwrap_or_else(|e| panic!("{context}: read: {e}")),
                        bytes,
                        "{context}"
                    );
                } else {
                    assert_eq!(
                        category(&result),
                        Some(Category::NotFound),
                        "{context}: read of a blob not in the namespace"
                    );
                }
            }
            4 => {
                let key = format!("l{}", rng.below(3));
                let value = if rng.below(4) == 0 {
                    String::new()
                } else {
                    format!("v{}", rng.below(10))
                };
                let Ok(mut info) = store.info(&digest).await else {
                    assert!(!have.contains_key(&b), "{context}: info missing");
                    continue;
                };
                info.labels = Labels::from([(key.clone(), value.clone())]);
                store
                    .update(info, &[format!("labels.{key}")])
                    .await
                    .unwrap();
                let labels = have.get_mut(&b).expect("model has the blob");
                if value.is_empty() {
                    labels.remove(&key);
                } else {
                    labels.insert(key, value);
                }
            }
            5 => {
                let key = KEYS[rng.below(KEYS.len())].to_string();
                let committed: Vec<String> = snaps
                    .iter()
                    .filter(|(_, s)| s.kind == Kind::Committed)
                    .map(|(k, _)| k.clone())
                    .collect();
                let parent = if committed.is_empty() || rng.below(2) == 0 {
                    String::new()
                } else {
                    committed[rng.below(committed.len())].clone()
                };
                let view = rng.below(4) == 0 && !parent.is_empty();
                let result = if view {
                    snapshotter.view(&key, &parent, Labels::new()).await
                } else {
                    snapshotter.prepare(&key, &parent, Labels::new()).await
                };
                match snaps.entry(key) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert_eq!(
                            category(&result),
                            Some(Category::AlreadyExists),
                            "{context}"
                        );
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        result.unwrap_or_else(|e| {
                            panic!("{context}: prepare {} on {parent:?}: {e}", slot.key())
                        });
                        slot.insert(ModelSnapshot {
                            kind: if view { Kind::View } else { Kind::Active },
                            parent,
                        });
                    }
                }
            }
            6 => {
                let key = KEYS[rng.below(KEYS.len())].to_string();
                let name = format!("c-{}", KEYS[rng.below(KEYS.len())]);
                let result = snapshotter.commit(&name, &key, Labels::new()).await;
                match snaps.get(&key).cloned() {
                    None => assert_eq!(category(&result), Some(Category::NotFound), "{context}"),
                    Some(s) if s.kind != Kind::Active => {
                        assert_eq!(
                            category(&result),
                            Some(Category::FailedPrecondition),
                            "{context}"
                        );
                    }
                    Some(_) if snaps.contains_key(&name) => {
                        assert_eq!(
                            category(&result),
                            Some(Category::AlreadyExists),
                            "{context}"
                        );
                    }
                    Some(s) => {
                        result.unwrap_or_else(|e| panic!("{context}: commit {key} as {name}: {e}"));
                        snaps.remove(&key);
                        snaps.insert(
                            name,
                            ModelSnapshot {
                                kind: Kind::Committed,
                                parent: s.parent,
                            },
                        );
                    }
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
                let has_children = snaps.values().any(|s| s.parent == key);
                if !snaps.contains_key(&key) {
                    assert_eq!(category(&result), Some(Category::NotFound), "{context}");
                } else if has_children {
                    assert_eq!(
                        category(&result),
                        Some(Category::FailedPrecondition),
                        "{context}"
                    );
                } else {
                    result.unwrap_or_else(|e| panic!("{context}: remove {key}: {e}"));
                    snaps.remove(&key);
                }
            }
            _ => {}
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_matches_the_model_under_the_shared_policy() {
    for seed in [1, 2, 3] {
        run(seed, SharingPolicy::Shared, 150).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_matches_the_model_under_the_isolated_policy() {
    for seed in [4, 5, 6] {
        run(seed, SharingPolicy::Isolated, 150).await;
    }
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
