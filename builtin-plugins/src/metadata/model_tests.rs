//! The metadata layer against an in-memory model: random operations on content, snapshots
//! (some under a lease), images, containers, leases and namespaces in several namespaces,
//! each answer checked against what `BTreeMap`s say should happen, with the real local
//! content store and native snapshotter underneath, under both content sharing policies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use plinth_core::Category;
use prost_types::Any;

use super::{Metadata, SharingPolicy};
use crate::containers::{Container, ContainerStore, Runtime};
use crate::content::local::LocalStore;
use crate::content::{ContentStore, Digest};
use crate::images::{Descriptor, Image, ImageStore};
use crate::leases::{LeaseManager, Resource};
use crate::namespaces::{Labels, NamespaceStore, NamespacedStores};
use crate::snapshots::native::NativeSnapshotter;
use crate::snapshots::{Kind, Snapshotter};

const NAMESPACES: [&str; 3] = ["alpha", "beta", "gamma"];
const BLOBS: usize = 5;
const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];
const SNAPSHOTTER: &str = "native";
const LABEL_KEYS: [&str; 3] = ["k0", "k1", "app.tier"];
const LABEL_VALUES: [&str; 3] = ["v0", "v1", "v2"];
const ANNOTATION_KEYS: [&str; 2] = ["a0", "a1"];
const IMAGE_NAMES: [&str; 6] = [
    "registry.test/app:1",
    "registry.test/app:2",
    "registry.test/db:1",
    "registry.test/db:2",
    "other.test/web:latest",
    "other.test/cache:7",
];
const MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
];
const CONTAINER_IDS: [&str; 6] = ["c0", "c1", "c2", "c3", "web.1", "web.2"];
const RUNTIMES: [&str; 2] = ["io.containerd.runc.v2", "io.containerd.kata.v2"];
const EXTENSIONS: [&str; 2] = ["e0", "e1"];
const LEASE_IDS: [&str; 3] = ["l0", "l1", "l2"];
/// Not an identifier: refused wherever one is checked.
const BAD_ID: &str = "bad/id";
/// Not a lease id (too long; any other non-empty text is one, as in containerd).
fn bad_lease_id() -> String {
    "l".repeat(crate::leases::MAX_LEASE_ID + 1)
}
/// Regular expressions for `~=` filters: plain words, so that they match as substrings.
const SUBSTRINGS: [&str; 7] = ["app", "index", "1", "v0", "runc", "l1", "c"];

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
    /// True one time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A name out of `pool`, or two times in three (when there is one) a name the model holds,
/// so that operations on existing objects are not rare.
fn choose<'a>(rng: &mut Rng, pool: &[&str], held: impl Iterator<Item = &'a String>) -> String {
    let held: Vec<&String> = held.collect();
    if !held.is_empty() && !rng.one_in(3) {
        (*rng.pick(&held)).clone()
    } else {
        rng.pick(pool).to_string()
    }
}

fn blob(i: usize) -> Vec<u8> {
    (0..(i * 997 + 13))
        .map(|j| u8::try_from((j * 31 + i * 7) % 251).unwrap_or(0))
        .collect()
}

fn blob_digest(i: usize) -> String {
    Digest::of(&blob(i)).to_string()
}

#[derive(Debug, Clone, PartialEq)]
struct ModelSnapshot {
    kind: Kind,
    parent: String,
}

#[derive(Debug, Clone, PartialEq)]
struct ModelLease {
    labels: Labels,
    /// As the lease's creation answered.
    created: SystemTime,
    /// (kind, id), in the order the lease lists them.
    resources: BTreeSet<(String, String)>,
}

/// One namespace as the model sees it. Images and containers are kept with `updated` at the
/// epoch (only its order against `created` is checked) and `created` as their creation
/// answered.
#[derive(Debug, Default)]
struct ModelNamespace {
    exists: bool,
    content: BTreeMap<usize, Labels>,
    snapshots: BTreeMap<String, ModelSnapshot>,
    images: BTreeMap<String, Image>,
    containers: BTreeMap<String, Container>,
    leases: BTreeMap<String, ModelLease>,
}

impl ModelNamespace {
    /// What keeps the namespace from being deleted, as the refusal names it.
    fn held(&self) -> Vec<&'static str> {
        [
            ("content", !self.content.is_empty()),
            ("images", !self.images.is_empty()),
            ("containers", !self.containers.is_empty()),
            ("leases", !self.leases.is_empty()),
            ("snapshots", !self.snapshots.is_empty()),
        ]
        .into_iter()
        .filter_map(|(what, held)| held.then_some(what))
        .collect()
    }

    /// The lease an operation names: one of the usual ids, or one this namespace holds (which
    /// may have a random id).
    fn lease_id(&self, rng: &mut Rng) -> String {
        choose(rng, &LEASE_IDS, self.leases.keys())
    }
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

/// How a `~=`, `==` or `!=` selector compares, or whether the field is there.
#[derive(Debug, Clone)]
enum Compare {
    Present,
    Equal(String),
    NotEqual(String),
    Contains(String),
}

/// A request's filters: the object matches when all selectors of any filter match (a
/// filter without selectors matches everything, and so do no filters at all). A missing
/// field is the empty string to `!=` and `~=`. Fields are dotted paths.
#[derive(Debug, Clone, Default)]
struct Filters {
    any: Vec<Vec<(String, Compare)>>,
    /// A filter that does not parse, added to the others: the request is refused.
    malformed: bool,
}

impl Filters {
    /// Mostly one or two filters of one or two selectors (sometimes none of either), over
    /// `fields` (a path, and values worth comparing it with).
    fn random(rng: &mut Rng, fields: &[(String, Vec<String>)]) -> Filters {
        let how_many = |rng: &mut Rng| if rng.one_in(6) { 0 } else { 1 + rng.below(2) };
        let any = (0..how_many(rng))
            .map(|_| {
                (0..how_many(rng))
                    .map(|_| {
                        let (path, values) = rng.pick(fields);
                        let compare = match rng.below(4) {
                            0 => Compare::Present,
                            1 => Compare::NotEqual(rng.pick(values).clone()),
                            2 => Compare::Contains(rng.pick(&SUBSTRINGS).to_string()),
                            _ => Compare::Equal(rng.pick(values).clone()),
                        };
                        (path.clone(), compare)
                    })
                    .collect()
            })
            .collect();
        Filters {
            any,
            malformed: rng.one_in(15),
        }
    }

    fn render(&self) -> Vec<String> {
        let mut filters: Vec<String> = self
            .any
            .iter()
            .map(|selectors| {
                selectors
                    .iter()
                    .map(|(path, compare)| match compare {
                        Compare::Present => path.clone(),
                        Compare::Equal(v) => format!("{path}=={v}"),
                        Compare::NotEqual(v) => format!("{path}!={v}"),
                        Compare::Contains(v) => format!("{path}~={v}"),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        if self.malformed {
            filters.push("name=app".to_string());
        }
        filters
    }

    fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.any.is_empty()
            || self.any.iter().any(|selectors| {
                selectors.iter().all(|(path, compare)| {
                    let value = field(path);
                    match compare {
                        Compare::Present => value.is_some(),
                        Compare::Equal(v) => value.as_ref() == Some(v),
                        Compare::NotEqual(v) => value.unwrap_or_default() != *v,
                        Compare::Contains(v) => value.unwrap_or_default().contains(v.as_str()),
                    }
                })
            })
    }
}

/// `labels.<key>` paths over [`LABEL_KEYS`] and their values, for filters.
fn label_fields() -> Vec<(String, Vec<String>)> {
    LABEL_KEYS
        .iter()
        .map(|k| {
            (
                format!("labels.{k}"),
                LABEL_VALUES.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

/// Each of `keys` with a value from [`LABEL_VALUES`], one time in two.
fn random_map(rng: &mut Rng, keys: &[&str]) -> Labels {
    let mut map = Labels::new();
    for key in keys {
        if rng.one_in(2) {
            map.insert(key.to_string(), rng.pick(&LABEL_VALUES).to_string());
        }
    }
    map
}

fn random_labels(rng: &mut Rng) -> Labels {
    random_map(rng, &LABEL_KEYS)
}

fn random_any(rng: &mut Rng, type_url: &str) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: vec![u8::try_from(rng.below(4)).unwrap_or(0)],
    }
}

/// Up to three distinct update paths out of `valid` in any order (they apply in order),
/// and one out of `invalid` one time in ten.
fn random_paths(rng: &mut Rng, valid: &[&str], invalid: &[&str]) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for _ in 0..rng.below(4) {
        let path = rng.pick(valid).to_string();
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    if rng.one_in(10) {
        let at = rng.below(paths.len() + 1);
        paths.insert(at, rng.pick(invalid).to_string());
    }
    paths
}

/// Sets `key` in `current` to its value in `requested`, or removes it when `requested` has
/// none or an empty one (`labels.<key>`, `annotations.<key>`).
fn set_or_remove(current: &mut Labels, requested: &Labels, key: &str) {
    match requested.get(key).filter(|v| !v.is_empty()) {
        Some(v) => current.insert(key.to_string(), v.clone()),
        None => current.remove(key),
    };
}

// Images, as the model sees them.

fn random_image(rng: &mut Rng, name: &str) -> Image {
    let b = rng.below(3);
    Image {
        name: name.to_string(),
        labels: random_labels(rng),
        target: Descriptor {
            media_type: rng.pick(&MEDIA_TYPES).to_string(),
            digest: blob_digest(b),
            size: i64::try_from(blob(b).len()).unwrap_or(1),
            annotations: random_map(rng, &ANNOTATION_KEYS),
        },
        created: SystemTime::UNIX_EPOCH,
        updated: SystemTime::UNIX_EPOCH,
    }
}

/// Gives `image` one defect that makes it invalid.
fn spoil_image(rng: &mut Rng, image: &mut Image) {
    match rng.below(4) {
        0 => image.target.size = 0,
        1 => image.target.media_type.clear(),
        2 => image.target.digest = "sha256:not-hex".to_string(),
        _ => {
            image.labels.insert(String::new(), "v0".to_string());
        }
    }
}

/// Whether the model accepts `image` as a record.
fn image_problem(image: &Image) -> Option<Category> {
    let valid_digest = (0..BLOBS).any(|b| image.target.digest == blob_digest(b));
    (image.name.is_empty()
        || image.labels.contains_key("")
        || !valid_digest
        || image.target.size <= 0
        || image.target.media_type.is_empty())
    .then_some(Category::InvalidArgument)
}

fn image_field(image: &Image, path: &str) -> Option<String> {
    match path {
        "name" => Some(image.name.clone()).filter(|n| !n.is_empty()),
        "target.digest" => Some(image.target.digest.clone()),
        "target.mediatype" => Some(image.target.media_type.clone()),
        _ => {
            if let Some(key) = path.strip_prefix("labels.") {
                image.labels.get(key).cloned()
            } else if let Some(key) = path.strip_prefix("annotations.") {
                image.target.annotations.get(key).cloned()
            } else {
                None
            }
        }
    }
}

fn image_fields() -> Vec<(String, Vec<String>)> {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut fields = vec![
        ("name".to_string(), strings(&IMAGE_NAMES)),
        (
            "target.digest".to_string(),
            (0..3).map(blob_digest).collect(),
        ),
        ("target.mediatype".to_string(), strings(&MEDIA_TYPES)),
        ("annotations.a0".to_string(), strings(&LABEL_VALUES)),
        ("unknown".to_string(), strings(&["x"])),
    ];
    fields.extend(label_fields());
    fields
}

/// The image an update makes of `current`, or the category of its refusal.
fn update_image(current: &Image, requested: &Image, paths: &[String]) -> Result<Image, Category> {
    let mut updated = current.clone();
    if paths.is_empty() {
        updated.labels = requested.labels.clone();
        updated.target = requested.target.clone();
    }
    for path in paths {
        if let Some(key) = path.strip_prefix("labels.") {
            set_or_remove(&mut updated.labels, &requested.labels, key);
        } else if let Some(key) = path.strip_prefix("annotations.") {
            set_or_remove(
                &mut updated.target.annotations,
                &requested.target.annotations,
                key,
            );
        } else {
            match path.as_str() {
                "labels" => updated.labels = requested.labels.clone(),
                "target" => updated.target = requested.target.clone(),
                "annotations" => updated.target.annotations = requested.target.annotations.clone(),
                _ => return Err(Category::InvalidArgument),
            }
        }
    }
    match image_problem(&updated) {
        Some(category) => Err(category),
        None => Ok(updated),
    }
}

// Containers, as the model sees them.

fn random_container(rng: &mut Rng, id: &str) -> Container {
    let (snapshotter, snapshot_key) = if rng.one_in(3) {
        (String::new(), String::new())
    } else if rng.one_in(4) {
        (SNAPSHOTTER.to_string(), String::new())
    } else {
        (SNAPSHOTTER.to_string(), rng.pick(&KEYS).to_string())
    };
    let mut extensions = BTreeMap::new();
    for name in EXTENSIONS {
        if rng.one_in(2) {
            extensions.insert(name.to_string(), random_any(rng, "types.test/extension"));
        }
    }
    Container {
        id: id.to_string(),
        labels: random_labels(rng),
        image: if rng.one_in(3) {
            String::new()
        } else {
            rng.pick(&IMAGE_NAMES).to_string()
        },
        runtime: Runtime {
            name: rng.pick(&RUNTIMES).to_string(),
            options: rng.one_in(2).then(|| random_any(rng, "types.test/options")),
        },
        spec: Some(random_any(rng, "types.test/spec")),
        snapshotter,
        snapshot_key,
        created: SystemTime::UNIX_EPOCH,
        updated: SystemTime::UNIX_EPOCH,
        extensions,
        sandbox: if rng.one_in(3) {
            "sandbox-1".to_string()
        } else {
            String::new()
        },
    }
}

/// Gives `container` one defect that makes it invalid.
fn spoil_container(rng: &mut Rng, container: &mut Container) {
    match rng.below(6) {
        0 => container.id = BAD_ID.to_string(),
        1 => {
            container.labels.insert(String::new(), "v0".to_string());
        }
        2 => {
            let any = random_any(rng, "types.test/extension");
            container.extensions.insert(String::new(), any);
        }
        3 => container.runtime.name.clear(),
        4 => container.spec = None,
        _ => {
            container.snapshotter.clear();
            container.snapshot_key = KEYS[0].to_string();
        }
    }
}

/// Whether the model accepts `container` as a record.
fn container_problem(container: &Container) -> Option<Category> {
    (container.id.is_empty()
        || container.id == BAD_ID
        || container.labels.contains_key("")
        || container.extensions.contains_key("")
        || container.runtime.name.is_empty()
        || container.spec.is_none()
        || (!container.snapshot_key.is_empty() && container.snapshotter.is_empty()))
    .then_some(Category::InvalidArgument)
}

fn container_field(container: &Container, path: &str) -> Option<String> {
    let value = match path {
        "id" => container.id.clone(),
        "image" => container.image.clone(),
        "runtime.name" => container.runtime.name.clone(),
        "snapshotter" => container.snapshotter.clone(),
        _ => {
            return path
                .strip_prefix("labels.")
                .and_then(|key| container.labels.get(key).cloned());
        }
    };
    Some(value).filter(|v| !v.is_empty())
}

fn container_fields() -> Vec<(String, Vec<String>)> {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut fields = vec![
        ("id".to_string(), strings(&CONTAINER_IDS)),
        ("image".to_string(), strings(&IMAGE_NAMES)),
        ("runtime.name".to_string(), strings(&RUNTIMES)),
        ("snapshotter".to_string(), strings(&[SNAPSHOTTER, "other"])),
    ];
    fields.extend(label_fields());
    fields
}

/// The container an update makes of `current`, or the category of its refusal. Without
/// paths every changeable field is replaced, and the snapshotter and runtime name must be
/// the ones it has.
fn update_container(
    current: &Container,
    requested: &Container,
    paths: &[String],
) -> Result<Container, Category> {
    let every = ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from);
    let paths = if paths.is_empty() {
        if requested.snapshotter != current.snapshotter
            || requested.runtime.name != current.runtime.name
        {
            return Err(Category::InvalidArgument);
        }
        &every[..]
    } else {
        paths
    };
    let mut updated = current.clone();
    for path in paths {
        if let Some(key) = path.strip_prefix("labels.") {
            set_or_remove(&mut updated.labels, &requested.labels, key);
        } else if let Some(name) = path.strip_prefix("extensions.") {
            match requested.extensions.get(name) {
                Some(any) => updated.extensions.insert(name.to_string(), any.clone()),
                None => updated.extensions.remove(name),
            };
        } else {
            match path.as_str() {
                "labels" => updated.labels = requested.labels.clone(),
                "spec" => updated.spec = requested.spec.clone(),
                "extensions" => updated.extensions = requested.extensions.clone(),
                "image" => updated.image = requested.image.clone(),
                "snapshotkey" => updated.snapshot_key = requested.snapshot_key.clone(),
                _ => return Err(Category::InvalidArgument),
            }
        }
    }
    match container_problem(&updated) {
        Some(category) => Err(category),
        None => Ok(updated),
    }
}

// Leases, as the model sees them.

/// A resource to add or remove, and the category of its refusal when the model refuses it:
/// InvalidArgument for a known kind written wrong, Unimplemented for a kind containerd does
/// not know.
fn random_resource(rng: &mut Rng) -> (Resource, Option<Category>) {
    let (valid, invalid) = (None, Some(Category::InvalidArgument));
    let resource = |kind: &str, id: String| Resource {
        kind: kind.to_string(),
        id,
    };
    match rng.below(12) {
        0..=2 => (resource("content", blob_digest(rng.below(BLOBS))), valid),
        3 => (resource("content", "sha256:0".to_string()), invalid),
        4 | 5 => (resource("ingests", format!("ref-{}", rng.below(3))), valid),
        6 => (resource("ingests", String::new()), invalid),
        7..=9 => {
            let key = rng.pick(&KEYS).to_string();
            let id = if rng.one_in(2) {
                format!("c-{key}")
            } else {
                key
            };
            (resource(&format!("snapshots/{SNAPSHOTTER}"), id), valid)
        }
        10 => (resource("snapshots/", "k0".to_string()), invalid),
        _ => (
            resource("images", IMAGE_NAMES[0].to_string()),
            Some(Category::Unimplemented),
        ),
    }
}

fn lease_fields() -> Vec<(String, Vec<String>)> {
    let mut fields = vec![(
        "id".to_string(),
        LEASE_IDS.iter().map(|s| s.to_string()).collect(),
    )];
    fields.extend(label_fields());
    fields
}

/// The lease a snapshot operation runs under: mostly none, else one the namespace may or
/// may not hold.
fn snapshot_lease(rng: &mut Rng, namespace: &ModelNamespace) -> Option<String> {
    if rng.one_in(3) {
        Some(namespace.lease_id(rng))
    } else {
        None
    }
}

/// One run: the metadata over a fresh directory, `steps` random operations, each checked,
/// and after each the whole visible state compared with the model.
struct Run {
    seed: u64,
    policy: SharingPolicy,
    metadata: Arc<Metadata>,
    rng: Rng,
    model: BTreeMap<&'static str, ModelNamespace>,
}

impl Run {
    fn namespace(&mut self, ns: &str) -> &mut ModelNamespace {
        self.model
            .get_mut(ns)
            .expect("the model has every namespace")
    }

    async fn content_step(&mut self, ns: &'static str, context: &str) {
        let policy = self.policy;
        let store = self.metadata.clone().content(ns).unwrap();
        let b = self.rng.below(BLOBS);
        let bytes = blob(b);
        let digest = Digest::of(&bytes);
        match self.rng.below(5) {
            0 | 1 => {
                // Ingest with the expected digest: a namespace that has the blob makes it
                // AlreadyExists; under the shared policy, one that another namespace has is
                // offered written whole, and the commit alone records it. Either way the
                // namespace has it then.
                let reference = format!("ref-{b}");
                let elsewhere = self
                    .model
                    .iter()
                    .any(|(n, m)| *n != ns && m.content.contains_key(&b));
                let have = &mut self.namespace(ns).content;
                let predicted = have.contains_key(&b).then_some(Category::AlreadyExists);
                let shared = predicted.is_none() && policy == SharingPolicy::Shared && elsewhere;
                let result = store.writer(&reference, 0, Some(digest.clone())).await;
                check_outcome(context, "writer", &result.as_ref().map(|_| ()), predicted);
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
                self.namespace(ns).exists = true;
            }
            2 => {
                let have = &mut self.namespace(ns).content;
                let result = store.delete(&digest).await;
                let predicted = (!have.contains_key(&b)).then_some(Category::NotFound);
                check_outcome(context, "delete", &result, predicted);
                have.remove(&b);
            }
            3 => {
                let have = &self.namespace(ns).content;
                let predicted = (!have.contains_key(&b)).then_some(Category::NotFound);
                let result = store.read_at(&digest, 0, bytes.len()).await;
                check_outcome(context, "read", &result.as_ref().map(Vec::len), predicted);
                if let Ok(read) = result {
                    assert_eq!(read, bytes, "{context}: read");
                }
            }
            _ => {
                let key = format!("l{}", self.rng.below(3));
                let value = if self.rng.one_in(4) {
                    String::new()
                } else {
                    format!("v{}", self.rng.below(10))
                };
                let have = &mut self.namespace(ns).content;
                let predicted = (!have.contains_key(&b)).then_some(Category::NotFound);
                let info = store.info(&digest).await;
                check_outcome(context, "info", &info, predicted);
                let mut info = info.unwrap_or_else(|_| crate::content::Info {
                    digest: digest.clone(),
                    size: i64::try_from(bytes.len()).unwrap(),
                    created_at: SystemTime::UNIX_EPOCH,
                    updated_at: SystemTime::UNIX_EPOCH,
                    labels: Labels::new(),
                });
                if let Some(labels) = have.get(&b) {
                    assert_eq!(&info.labels, labels, "{context}: labels from info");
                }
                info.labels = Labels::from([(key.clone(), value.clone())]);
                let result = store.update(info, &[format!("labels.{key}")]).await;
                check_outcome(context, "update", &result, predicted);
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
        }
    }

    async fn snapshot_step(&mut self, ns: &'static str, context: &str) {
        let rng = &mut self.rng;
        let model = self
            .model
            .get_mut(ns)
            .expect("the model has every namespace");
        let lease = snapshot_lease(rng, model);
        let lease_problem = lease
            .as_ref()
            .is_some_and(|l| !model.leases.contains_key(l))
            .then_some(Category::NotFound);
        let snapshotter = self
            .metadata
            .clone()
            .leased_snapshotter(ns, SNAPSHOTTER, lease.as_deref())
            .unwrap();
        let under = lease
            .as_ref()
            .map_or(String::new(), |l| format!(" under lease {l}"));
        let snaps = &mut model.snapshots;
        match rng.below(5) {
            0 | 1 => {
                let key = rng.pick(&KEYS).to_string();
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
                    1 if !uncommitted.is_empty() => rng.pick(&uncommitted).clone(),
                    2..=4 if !committed.is_empty() => rng.pick(&committed).clone(),
                    _ => String::new(),
                };
                let view = rng.one_in(4) && !parent.is_empty();
                // A missing lease first, then the key, then the parent; a refusal creates
                // nothing, not even the namespace.
                let predicted = lease_problem.or_else(|| {
                    if snaps.contains_key(&key) {
                        Some(Category::AlreadyExists)
                    } else {
                        parent_problem(snaps, &parent)
                    }
                });
                let result = if view {
                    snapshotter.view(&key, &parent, Labels::new()).await
                } else {
                    snapshotter.prepare(&key, &parent, Labels::new()).await
                };
                let what = format!(
                    "{} {key} on {parent:?}{under}",
                    if view { "view" } else { "prepare" }
                );
                check_outcome(context, &what, &result, predicted);
                // As in containerd, the lease holds a snapshot that exists already.
                if let (Some(Category::AlreadyExists), Some(lease)) = (predicted, &lease) {
                    let held = &mut model.leases.get_mut(lease).expect("checked").resources;
                    held.insert((format!("snapshots/{SNAPSHOTTER}"), key.clone()));
                }
                if predicted.is_none() {
                    snaps.insert(
                        key.clone(),
                        ModelSnapshot {
                            kind: if view { Kind::View } else { Kind::Active },
                            parent,
                        },
                    );
                    model.exists = true;
                    if let Some(lease) = &lease {
                        let held = &mut model.leases.get_mut(lease).expect("checked").resources;
                        held.insert((format!("snapshots/{SNAPSHOTTER}"), key));
                    }
                }
            }
            2 => {
                let active = snaps.iter().filter(|(_, s)| s.kind == Kind::Active);
                let key = choose(rng, &KEYS, active.map(|(k, _)| k));
                let name = format!("c-{}", rng.pick(&KEYS));
                let result = snapshotter.commit(&name, &key, Labels::new()).await;
                let predicted = match snaps.get(&key) {
                    None => Some(Category::NotFound),
                    Some(s) if s.kind != Kind::Active => Some(Category::FailedPrecondition),
                    Some(_) if lease_problem.is_some() => lease_problem,
                    Some(_) if snaps.contains_key(&name) => Some(Category::AlreadyExists),
                    Some(_) => None,
                };
                check_outcome(
                    context,
                    &format!("commit {key} as {name}{under}"),
                    &result,
                    predicted,
                );
                if predicted.is_none() {
                    let s = snaps.remove(&key).expect("the model has the key");
                    snaps.insert(
                        name.clone(),
                        ModelSnapshot {
                            kind: Kind::Committed,
                            parent: s.parent,
                        },
                    );
                    // The lease's hold moves from the active snapshot to the committed one.
                    if let Some(lease) = &lease {
                        let held = &mut model.leases.get_mut(lease).expect("checked").resources;
                        held.remove(&(format!("snapshots/{SNAPSHOTTER}"), key));
                        held.insert((format!("snapshots/{SNAPSHOTTER}"), name));
                    }
                } else if let (Some(Category::AlreadyExists), Some(lease)) = (predicted, &lease) {
                    let held = &mut model.leases.get_mut(lease).expect("checked").resources;
                    held.insert((format!("snapshots/{SNAPSHOTTER}"), name));
                }
            }
            3 => {
                let all: Vec<String> = snaps.keys().cloned().collect();
                let key = if all.is_empty() || rng.one_in(5) {
                    "missing".to_string()
                } else {
                    rng.pick(&all).clone()
                };
                let result = snapshotter.remove(&key).await;
                let predicted = if !snaps.contains_key(&key) {
                    Some(Category::NotFound)
                } else if snaps.values().any(|s| s.parent == key) {
                    Some(Category::FailedPrecondition)
                } else {
                    None
                };
                check_outcome(context, &format!("remove {key}"), &result, predicted);
                if predicted.is_none() {
                    // The lease the call names lets go of it; other leases keep naming it
                    // until they go.
                    snaps.remove(&key);
                    if let Some(held) = lease.as_ref().and_then(|l| model.leases.get_mut(l)) {
                        held.resources
                            .remove(&(format!("snapshots/{SNAPSHOTTER}"), key));
                    }
                }
            }
            _ => {
                // Stat: what the model says, or NotFound.
                let key = if rng.one_in(4) || snaps.is_empty() {
                    "missing".to_string()
                } else {
                    let all: Vec<&String> = snaps.keys().collect();
                    (*rng.pick(&all)).clone()
                };
                let result = snapshotter.stat(&key).await;
                let expected = snaps.get(&key);
                check_outcome(
                    context,
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
    }

    fn image_step(&mut self, ns: &'static str, context: &str) {
        let metadata = self.metadata.clone();
        let store: &dyn ImageStore = &*metadata;
        let rng = &mut self.rng;
        let model = self
            .model
            .get_mut(ns)
            .expect("the model has every namespace");
        let name = choose(rng, &IMAGE_NAMES, model.images.keys());
        match rng.below(10) {
            0..=2 => {
                let name = rng.pick(&IMAGE_NAMES).to_string();
                let mut image = random_image(rng, &name);
                if rng.one_in(6) {
                    spoil_image(rng, &mut image);
                }
                let predicted = image_problem(&image).or_else(|| {
                    model
                        .images
                        .contains_key(&name)
                        .then_some(Category::AlreadyExists)
                });
                let result = store.create(ns, image.clone());
                check_outcome(
                    context,
                    &format!("create image {image:?}"),
                    &result,
                    predicted,
                );
                if let Ok(created) = result {
                    assert_eq!(created.created, created.updated, "{context}: create {name}");
                    image.created = created.created;
                    let created = Image {
                        updated: SystemTime::UNIX_EPOCH,
                        ..created
                    };
                    assert_eq!(created, image, "{context}: create {name}");
                    model.images.insert(name, image);
                    model.exists = true;
                }
            }
            3 => {
                let result = store.get(ns, &name);
                let expected = model.images.get(&name);
                let predicted = expected.is_none().then_some(Category::NotFound);
                check_outcome(context, &format!("get image {name}"), &result, predicted);
                if let (Ok(mut got), Some(expected)) = (result, expected) {
                    assert!(got.updated >= got.created, "{context}: get {name}: {got:?}");
                    got.updated = SystemTime::UNIX_EPOCH;
                    assert_eq!(&got, expected, "{context}: get {name}");
                }
            }
            4 | 5 => {
                let filters = Filters::random(rng, &image_fields());
                let rendered = filters.render();
                let result = store.list(ns, &rendered);
                let predicted = filters.malformed.then_some(Category::InvalidArgument);
                let what = format!("list images {rendered:?}");
                check_outcome(context, &what, &result, predicted);
                if let Ok(listed) = result {
                    let listed: Vec<Image> = listed
                        .into_iter()
                        .map(|i| Image {
                            updated: SystemTime::UNIX_EPOCH,
                            ..i
                        })
                        .collect();
                    let expected: Vec<Image> = model
                        .images
                        .values()
                        .filter(|i| filters.matches(|path| image_field(i, path)))
                        .cloned()
                        .collect();
                    assert_eq!(listed, expected, "{context}: {what}");
                }
            }
            6..=8 => {
                let name = if rng.one_in(15) { String::new() } else { name };
                let mut requested = random_image(rng, &name);
                if rng.one_in(5) {
                    spoil_image(rng, &mut requested);
                }
                let paths = random_paths(
                    rng,
                    &[
                        "labels",
                        "labels.k0",
                        "labels.app.tier",
                        "target",
                        "annotations",
                        "annotations.a0",
                    ],
                    &["name", "created"],
                );
                let expected = match model.images.get(&name) {
                    _ if name.is_empty() => Err(Category::InvalidArgument),
                    None => Err(Category::NotFound),
                    Some(current) => update_image(current, &requested, &paths),
                };
                let result = store.update(ns, requested.clone(), &paths);
                let what = format!("update image {requested:?} paths {paths:?}");
                check_outcome(context, &what, &result, expected.as_ref().err().copied());
                if let (Ok(mut updated), Ok(expected)) = (result, expected) {
                    assert!(updated.updated >= updated.created, "{context}: {what}");
                    updated.updated = SystemTime::UNIX_EPOCH;
                    assert_eq!(updated, expected, "{context}: {what}");
                    model.images.insert(name, expected);
                }
            }
            _ => {
                let result = store.delete(ns, &name);
                let predicted = model
                    .images
                    .remove(&name)
                    .is_none()
                    .then_some(Category::NotFound);
                check_outcome(context, &format!("delete image {name}"), &result, predicted);
            }
        }
    }

    fn container_step(&mut self, ns: &'static str, context: &str) {
        let metadata = self.metadata.clone();
        let store: &dyn ContainerStore = &*metadata;
        let rng = &mut self.rng;
        let model = self
            .model
            .get_mut(ns)
            .expect("the model has every namespace");
        let id = choose(rng, &CONTAINER_IDS, model.containers.keys());
        // Reads and deletes check the id: one that cannot be an id is refused.
        let checked_id = if rng.one_in(12) {
            BAD_ID.to_string()
        } else {
            id.clone()
        };
        // An id no container can have is simply not there (NotFound), as in containerd.
        let missing = |model: &ModelNamespace, id: &str| {
            (!model.containers.contains_key(id)).then_some(Category::NotFound)
        };
        match rng.below(10) {
            0..=2 => {
                let id = rng.pick(&CONTAINER_IDS).to_string();
                let mut container = random_container(rng, &id);
                if rng.one_in(6) {
                    spoil_container(rng, &mut container);
                }
                let predicted = container_problem(&container).or_else(|| {
                    model
                        .containers
                        .contains_key(&id)
                        .then_some(Category::AlreadyExists)
                });
                let result = store.create(ns, container.clone());
                let what = format!("create container {container:?}");
                check_outcome(context, &what, &result, predicted);
                if let Ok(created) = result {
                    assert_eq!(created.created, created.updated, "{context}: {what}");
                    container.created = created.created;
                    let created = Container {
                        updated: SystemTime::UNIX_EPOCH,
                        ..created
                    };
                    assert_eq!(created, container, "{context}: {what}");
                    model.containers.insert(id, container);
                    model.exists = true;
                }
            }
            3 => {
                let result = store.get(ns, &checked_id);
                let predicted = missing(model, &checked_id);
                check_outcome(
                    context,
                    &format!("get container {checked_id}"),
                    &result,
                    predicted,
                );
                if let (Ok(mut got), Some(expected)) = (result, model.containers.get(&checked_id)) {
                    assert!(got.updated >= got.created, "{context}: get {checked_id}");
                    got.updated = SystemTime::UNIX_EPOCH;
                    assert_eq!(&got, expected, "{context}: get container {checked_id}");
                }
            }
            4 | 5 => {
                let filters = Filters::random(rng, &container_fields());
                let rendered = filters.render();
                let result = store.list(ns, &rendered);
                let predicted = filters.malformed.then_some(Category::InvalidArgument);
                let what = format!("list containers {rendered:?}");
                check_outcome(context, &what, &result, predicted);
                if let Ok(listed) = result {
                    let listed: Vec<Container> = listed
                        .into_iter()
                        .map(|c| Container {
                            updated: SystemTime::UNIX_EPOCH,
                            ..c
                        })
                        .collect();
                    let expected: Vec<Container> = model
                        .containers
                        .values()
                        .filter(|c| filters.matches(|path| container_field(c, path)))
                        .cloned()
                        .collect();
                    assert_eq!(listed, expected, "{context}: {what}");
                }
            }
            6..=8 => {
                let id = if rng.one_in(15) { String::new() } else { id };
                // Mostly a change of the container as it is, so that an update without
                // paths (which may not change the snapshotter or runtime) can succeed.
                let mut requested = match model.containers.get(&id) {
                    Some(current) if !rng.one_in(5) => {
                        let mut requested = current.clone();
                        let fresh = random_container(rng, &id);
                        requested.labels = fresh.labels;
                        requested.image = fresh.image;
                        requested.extensions = fresh.extensions;
                        requested.sandbox = fresh.sandbox;
                        if rng.one_in(2) {
                            requested.spec = fresh.spec;
                            requested.snapshot_key = fresh.snapshot_key;
                        }
                        if rng.one_in(8) {
                            requested.snapshotter = fresh.snapshotter;
                        }
                        if rng.one_in(8) {
                            requested.runtime = fresh.runtime;
                        }
                        requested
                    }
                    _ => random_container(rng, &id),
                };
                if rng.one_in(6) {
                    match rng.below(3) {
                        0 => requested.spec = None,
                        1 => requested.snapshot_key = KEYS[1].to_string(),
                        _ => {
                            requested.labels.insert(String::new(), "v0".to_string());
                        }
                    }
                }
                let paths = random_paths(
                    rng,
                    &[
                        "labels",
                        "labels.k0",
                        "labels.app.tier",
                        "spec",
                        "extensions",
                        "extensions.e0",
                        "image",
                        "snapshotkey",
                    ],
                    &["runtime", "snapshotter", "id"],
                );
                let expected = match model.containers.get(&id) {
                    _ if id.is_empty() => Err(Category::InvalidArgument),
                    None => Err(Category::NotFound),
                    Some(current) => update_container(current, &requested, &paths),
                };
                let result = store.update(ns, requested.clone(), &paths);
                let what = format!("update container {requested:?} paths {paths:?}");
                check_outcome(context, &what, &result, expected.as_ref().err().copied());
                if let (Ok(mut updated), Ok(expected)) = (result, expected) {
                    assert!(updated.updated >= updated.created, "{context}: {what}");
                    updated.updated = SystemTime::UNIX_EPOCH;
                    assert_eq!(updated, expected, "{context}: {what}");
                    model.containers.insert(id, expected);
                }
            }
            _ => {
                let result = store.delete(ns, &checked_id);
                let predicted = missing(model, &checked_id);
                let what = format!("delete container {checked_id}");
                check_outcome(context, &what, &result, predicted);
                model.containers.remove(&checked_id);
            }
        }
    }

    fn lease_step(&mut self, ns: &'static str, context: &str) {
        let metadata = self.metadata.clone();
        let leases: &dyn LeaseManager = &*metadata;
        let rng = &mut self.rng;
        let model = self
            .model
            .get_mut(ns)
            .expect("the model has every namespace");
        let id = model.lease_id(rng);
        let missing = (!model.leases.contains_key(&id)).then_some(Category::NotFound);
        let op = rng.below(10);
        match op {
            0..=1 => {
                // Mostly a known id; sometimes none (the store picks one) or a bad one.
                let id = match rng.below(12) {
                    0 => String::new(),
                    1 => bad_lease_id(),
                    _ => rng.pick(&LEASE_IDS).to_string(),
                };
                let mut labels = random_labels(rng);
                if rng.one_in(10) {
                    labels.insert(String::new(), "v0".to_string());
                }
                let predicted = if id == bad_lease_id() || labels.contains_key("") {
                    Some(Category::InvalidArgument)
                } else {
                    model
                        .leases
                        .contains_key(&id)
                        .then_some(Category::AlreadyExists)
                };
                let result = leases.create(ns, &id, labels.clone());
                let what = format!("create lease {id:?} {labels:?}");
                check_outcome(context, &what, &result, predicted);
                if let Ok(lease) = result {
                    if id.is_empty() {
                        assert!(
                            !lease.id.is_empty() && !model.leases.contains_key(&lease.id),
                            "{context}: {what}: a new id, not {:?}",
                            lease.id
                        );
                    } else {
                        assert_eq!(lease.id, id, "{context}: {what}");
                    }
                    assert_eq!(lease.labels, labels, "{context}: {what}");
                    model.leases.insert(
                        lease.id,
                        ModelLease {
                            labels,
                            created: lease.created,
                            resources: BTreeSet::new(),
                        },
                    );
                    model.exists = true;
                }
            }
            2 => {
                let result = leases.delete(ns, &id);
                check_outcome(context, &format!("delete lease {id}"), &result, missing);
                model.leases.remove(&id);
            }
            3 | 4 => {
                let filters = Filters::random(rng, &lease_fields());
                let rendered = filters.render();
                let result = leases.list(ns, &rendered);
                let predicted = filters.malformed.then_some(Category::InvalidArgument);
                let what = format!("list leases {rendered:?}");
                check_outcome(context, &what, &result, predicted);
                if let Ok(listed) = result {
                    let listed: Vec<(String, Labels, SystemTime)> = listed
                        .into_iter()
                        .map(|l| (l.id, l.labels, l.created))
                        .collect();
                    let expected: Vec<(String, Labels, SystemTime)> = model
                        .leases
                        .iter()
                        .filter(|(id, l)| {
                            filters.matches(|path| match path {
                                "id" => Some((*id).clone()),
                                _ => path
                                    .strip_prefix("labels.")
                                    .and_then(|key| l.labels.get(key).cloned()),
                            })
                        })
                        .map(|(id, l)| (id.clone(), l.labels.clone(), l.created))
                        .collect();
                    assert_eq!(listed, expected, "{context}: {what}");
                }
            }
            5..=8 => {
                let (resource, refusal) = random_resource(rng);
                let predicted = refusal.or(missing);
                let add = op != 8;
                let result = if add {
                    leases.add_resource(ns, &id, &resource)
                } else {
                    leases.delete_resource(ns, &id, &resource)
                };
                let what = format!(
                    "{} {resource:?} in lease {id}",
                    if add { "add" } else { "delete" }
                );
                check_outcome(context, &what, &result, predicted);
                if predicted.is_none() {
                    let held = &mut model.leases.get_mut(&id).expect("checked").resources;
                    let key = (resource.kind, resource.id);
                    if add {
                        held.insert(key);
                    } else {
                        held.remove(&key);
                    }
                }
            }
            _ => {
                let result = leases.list_resources(ns, &id);
                let what = format!("list resources of lease {id}");
                check_outcome(context, &what, &result, missing);
                if let (Ok(listed), Some(lease)) = (result, model.leases.get(&id)) {
                    let listed: Vec<(String, String)> =
                        listed.into_iter().map(|r| (r.kind, r.id)).collect();
                    let expected: Vec<(String, String)> = lease.resources.iter().cloned().collect();
                    assert_eq!(listed, expected, "{context}: {what}");
                }
            }
        }
    }

    /// Creates or deletes the namespace.
    fn namespace_step(&mut self, ns: &'static str, create: bool, context: &str) {
        let metadata = self.metadata.clone();
        let namespaces: &dyn NamespaceStore = &*metadata;
        let model = self.namespace(ns);
        if create {
            let result = namespaces.create(ns, &Labels::new());
            let predicted = model.exists.then_some(Category::AlreadyExists);
            check_outcome(context, "create namespace", &result, predicted);
            model.exists = true;
            return;
        }
        let held = model.held();
        let predicted = if !model.exists {
            Some(Category::NotFound)
        } else if !held.is_empty() {
            Some(Category::FailedPrecondition)
        } else {
            None
        };
        let result = namespaces.delete(ns);
        check_outcome(context, "delete namespace", &result, predicted);
        if let Err(error) = &result {
            for what in held {
                assert!(
                    error.message.contains(what),
                    "{context}: delete namespace: the refusal names {what}: {error}"
                );
            }
        }
        if predicted.is_none() {
            model.exists = false;
        }
    }

    /// Empties a namespace of some kinds of what it holds (each kind seven times in eight),
    /// each delete checked, and then deletes the namespace: refused, naming what is left,
    /// unless nothing is.
    async fn drain_step(&mut self, ns: &'static str, context: &str) {
        let metadata = self.metadata.clone();
        let rng = &mut self.rng;
        let model = self
            .model
            .get_mut(ns)
            .expect("the model has every namespace");
        if !rng.one_in(8) {
            let store = metadata.clone().content(ns).unwrap();
            for b in std::mem::take(&mut model.content).into_keys() {
                let result = store.delete(&Digest::of(&blob(b))).await;
                check_outcome(context, &format!("drain: delete blob {b}"), &result, None);
            }
        }
        if !rng.one_in(8) {
            for name in std::mem::take(&mut model.images).into_keys() {
                let result = ImageStore::delete(&*metadata, ns, &name);
                check_outcome(
                    context,
                    &format!("drain: delete image {name}"),
                    &result,
                    None,
                );
            }
        }
        if !rng.one_in(8) {
            for id in std::mem::take(&mut model.containers).into_keys() {
                let result = ContainerStore::delete(&*metadata, ns, &id);
                let what = format!("drain: delete container {id}");
                check_outcome(context, &what, &result, None);
            }
        }
        if !rng.one_in(8) {
            for id in std::mem::take(&mut model.leases).into_keys() {
                let result = LeaseManager::delete(&*metadata, ns, &id);
                check_outcome(context, &format!("drain: delete lease {id}"), &result, None);
            }
        }
        if !rng.one_in(8) {
            let snapshotter = metadata.clone().snapshotter(ns, SNAPSHOTTER).unwrap();
            // Children before parents: each round removes the snapshots nothing is on.
            while !model.snapshots.is_empty() {
                let leaves: Vec<String> = model
                    .snapshots
                    .keys()
                    .filter(|k| !model.snapshots.values().any(|s| &s.parent == *k))
                    .cloned()
                    .collect();
                for key in leaves {
                    let result = snapshotter.remove(&key).await;
                    let what = format!("drain: remove snapshot {key}");
                    check_outcome(context, &what, &result, None);
                    model.snapshots.remove(&key);
                }
            }
        }
        self.namespace_step(ns, false, context);
    }

    /// Everything the metadata shows, namespace by namespace, against the model.
    async fn check_state(&self, context: &str) {
        let namespaces: &dyn NamespaceStore = &*self.metadata;
        let listed: Vec<(String, Labels)> = namespaces.list().unwrap();
        let expected: Vec<(String, Labels)> = self
            .model
            .iter()
            .filter(|(_, m)| m.exists)
            .map(|(ns, _)| (ns.to_string(), Labels::new()))
            .collect();
        assert_eq!(listed, expected, "{context}: namespaces");
        for (ns, model) in &self.model {
            let store = self.metadata.clone().content(ns).unwrap();
            let listed: BTreeMap<String, Labels> = store
                .walk(&[])
                .await
                .unwrap()
                .into_iter()
                .map(|i| (i.digest.to_string(), i.labels))
                .collect();
            let expected: BTreeMap<String, Labels> = model
                .content
                .iter()
                .map(|(b, l)| (blob_digest(*b), l.clone()))
                .collect();
            assert_eq!(listed, expected, "{context}: content of {ns}");
            let snapshotter = self.metadata.clone().snapshotter(ns, SNAPSHOTTER).unwrap();
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
            assert_eq!(listed, model.snapshots, "{context}: snapshots of {ns}");
            let images: Vec<Image> = ImageStore::list(&*self.metadata, ns, &[])
                .unwrap()
                .into_iter()
                .map(|i| Image {
                    updated: SystemTime::UNIX_EPOCH,
                    ..i
                })
                .collect();
            let expected: Vec<Image> = model.images.values().cloned().collect();
            assert_eq!(images, expected, "{context}: images of {ns}");
            let containers: Vec<Container> = ContainerStore::list(&*self.metadata, ns, &[])
                .unwrap()
                .into_iter()
                .map(|c| Container {
                    updated: SystemTime::UNIX_EPOCH,
                    ..c
                })
                .collect();
            let expected: Vec<Container> = model.containers.values().cloned().collect();
            assert_eq!(containers, expected, "{context}: containers of {ns}");
            let leases: &dyn LeaseManager = &*self.metadata;
            let mut listed = BTreeMap::new();
            for lease in leases.list(ns, &[]).unwrap() {
                let resources = leases
                    .list_resources(ns, &lease.id)
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.kind, r.id))
                    .collect();
                let lease_model = ModelLease {
                    labels: lease.labels,
                    created: lease.created,
                    resources,
                };
                listed.insert(lease.id, lease_model);
            }
            assert_eq!(listed, model.leases, "{context}: leases of {ns}");
        }
    }
}

/// Metadata in `dir` over a local content store and a native snapshotter (`SNAPSHOTTER`).
fn metadata_in(dir: &std::path::Path, policy: SharingPolicy) -> Arc<Metadata> {
    let content: Arc<dyn ContentStore> = Arc::new(LocalStore::open(&dir.join("content")).unwrap());
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&dir.join("native")).unwrap());
    Arc::new(
        Metadata::open_with(
            &dir.join("meta.db"),
            Some(content),
            BTreeMap::from([(SNAPSHOTTER.to_string(), native)]),
            policy,
        )
        .unwrap(),
    )
}

async fn run(seed: u64, policy: SharingPolicy, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let metadata = metadata_in(dir.path(), policy);
    let mut run = Run {
        seed,
        policy,
        metadata,
        // Odd (xorshift needs a state other than zero) and one state per seed.
        rng: Rng(seed.wrapping_mul(2) | 1),
        model: NAMESPACES
            .iter()
            .map(|ns| (*ns, ModelNamespace::default()))
            .collect(),
    };
    for step in 0..steps {
        // Alpha busiest, gamma quietest: one namespace holds enough for filters to pick
        // some of it, another is often empty enough to be deleted.
        let ns = NAMESPACES[*run.rng.pick(&[0, 0, 0, 1, 1, 2])];
        let context = format!("seed {} step {step} ns {ns}", run.seed);
        // Content, snapshots, images, containers and leases about equally often; a
        // namespace created, deleted or drained now and then.
        match run.rng.below(104) {
            0..=19 => run.content_step(ns, &context).await,
            20..=39 => run.snapshot_step(ns, &context).await,
            40..=59 => run.image_step(ns, &context),
            60..=79 => run.container_step(ns, &context),
            80..=100 => run.lease_step(ns, &context),
            101 | 102 => {
                let create = run.rng.one_in(3);
                run.namespace_step(ns, create, &context);
            }
            _ => run.drain_step(ns, &context).await,
        }
        // After every step, the whole visible state matches the model.
        run.check_state(&context).await;
    }
    // Nothing is kept in the store that no namespace holds.
    let held: BTreeSet<String> = run
        .model
        .values()
        .flat_map(|m| m.content.keys())
        .map(|b| blob_digest(*b))
        .collect();
    let backend = run.metadata.content.clone().unwrap();
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
const DEFAULT_SEEDS: u64 = 4;
const STEPS: usize = 300;

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
    let ns = Arc::clone(&metadata).content("a").unwrap();
    let mut digests = Vec::new();
    for data in [&b"gone from the store"[..], b"stuck in the store"] {
        let mut writer = ns.writer("w", 0, None).await.unwrap();
        writer.write(data).await.unwrap();
        // Roots, which the collection below keeps.
        let root = Labels::from([("containerd.io/gc.root".to_string(), "t".to_string())]);
        digests.push(writer.commit(0, None, root).await.unwrap());
        writer.close().await.unwrap();
    }
    let (gone, stuck) = (&digests[0], &digests[1]);

    local.delete(gone).await.unwrap();
    ns.delete(gone).await.unwrap();
    let error = ns.info(gone).await.unwrap_err();
    assert_eq!(error.category, Category::NotFound, "{error}");

    // A collection now looks at no blob but those its sweep names (nothing is dirty)...
    metadata.collect_now(false).await.unwrap();
    let blob = dir.path().join("content/blobs/sha256").join(stuck.hex());
    std::fs::remove_file(&blob).unwrap();
    std::fs::create_dir(&blob).unwrap();
    let error = ns.delete(stuck).await.unwrap_err();
    assert_eq!(error.category, Category::Internal, "{error}");
    assert!(
        error.message.contains(&blob.display().to_string()),
        "{error}"
    );
    // ... but the failed delete left a blob without a record, and the next one removes it.
    std::fs::remove_dir(&blob).unwrap();
    std::fs::write(&blob, b"stuck in the store").unwrap();
    let stats = metadata.collect_now(false).await.unwrap();
    assert_eq!(stats.blobs, 1, "{stats:?}");
    assert!(!blob.exists());
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

/// A shared writer (one that holds another namespace's blob whole, with no ingest behind it)
/// becomes an ingest of its own only when it must, as containerd's does: an empty write
/// leaves it shared; a truncate to 0 empties it and one to any other size is refused; an
/// append copies the blob first, after emptying what an ingest of the same ref left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_writer_copies_the_blob_only_when_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let views = namespace_views(dir.path(), SharingPolicy::Shared).unwrap();
    // Over a chunk of the copy (1 MiB), so that the copy takes two reads.
    let blob: Vec<u8> = (0..(3 << 19) + 17).map(|i: u32| (i % 251) as u8).collect();
    let (size, digest) = (blob.len() as i64, Digest::of(&blob));
    let a = views("a").unwrap();
    let mut writer = a.writer("w", 0, None).await.unwrap();
    writer.write(&blob).await.unwrap();
    assert_eq!(writer.commit(0, None, Labels::new()).await.unwrap(), digest);
    writer.close().await.unwrap();
    let no_ingest = |ns: &str, error: crate::Error| {
        assert_eq!(
            error.category,
            Category::NotFound,
            "{ns}: the writer is still shared, with no ingest under its ref: {error}"
        );
    };

    let b = views("b").unwrap();
    let mut writer = b.writer("w", 0, Some(digest.clone())).await.unwrap();
    writer.write(&[]).await.unwrap();
    no_ingest("b", b.status("w").await.unwrap_err());
    assert_eq!(writer.status().await.unwrap().offset, size);
    assert_eq!(writer.commit(0, None, Labels::new()).await.unwrap(), digest);
    writer.close().await.unwrap();

    let c = views("c").unwrap();
    let mut writer = c.writer("w", size, Some(digest.clone())).await.unwrap();
    let error = writer.truncate(5).await.unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument, "{error}");
    assert!(error.message.contains("only 0"), "{error}");
    no_ingest("c", c.status("w").await.unwrap_err());
    writer.truncate(0).await.unwrap();
    assert_eq!(writer.status().await.unwrap().offset, 0);
    assert_eq!(c.status("w").await.unwrap().offset, 0);
    writer.write(b"other bytes").await.unwrap();
    let other = writer.commit(0, None, Labels::new()).await.unwrap();
    writer.close().await.unwrap();
    assert_eq!(other, Digest::of(b"other bytes"));
    assert_eq!(c.read_at(&other, 0, 64).await.unwrap(), b"other bytes");

    let d = views("d").unwrap();
    let mut dropped = d.writer("w", 0, None).await.unwrap();
    dropped.write(b"left behind").await.unwrap();
    dropped.close().await.unwrap();
    assert_eq!(d.status("w").await.unwrap().offset, 11);
    let mut writer = d.writer("w", 0, Some(digest.clone())).await.unwrap();
    assert_eq!(writer.status().await.unwrap().offset, size);
    writer.write(b"appended").await.unwrap();
    let mut whole = blob.clone();
    whole.extend_from_slice(b"appended");
    let appended = writer.commit(0, None, Labels::new()).await.unwrap();
    writer.close().await.unwrap();
    assert_eq!(appended, Digest::of(&whole));
    let read = d.read_at(&appended, 0, whole.len() + 1).await.unwrap();
    assert!(
        read == whole,
        "d reads back the blob and the appended bytes"
    );
}

/// A prepare refused for a missing lease or a missing parent leaves no namespace behind (the
/// namespace used to be created before those checks, outside their transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_prepare_creates_no_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&dir.path().join("native")).unwrap());
    let metadata = Arc::new(
        Metadata::open_with(
            &dir.path().join("meta.db"),
            None,
            BTreeMap::from([(SNAPSHOTTER.to_string(), native)]),
            SharingPolicy::Shared,
        )
        .unwrap(),
    );
    // (lease, parent)
    let refused = [(Some("no-such-lease"), ""), (None, "no-such-parent")];
    for (lease, parent) in refused {
        let snapshotter = Arc::clone(&metadata)
            .leased_snapshotter("fresh", SNAPSHOTTER, lease)
            .unwrap();
        let error = snapshotter
            .prepare("k", parent, Labels::new())
            .await
            .unwrap_err();
        assert_eq!(error.category, Category::NotFound, "{lease:?} {parent:?}");
        let namespaces = NamespaceStore::list(metadata.as_ref()).unwrap();
        assert_eq!(namespaces, Vec::new(), "{lease:?} {parent:?}");
    }
}

/// Content and snapshot lists longer than a serving thread may walk
/// ([`crate::DEFAULT_INLINE_LIST_RECORDS`]) answer whole, filters applied: their first
/// attempt stops at the budget and the walk runs again on the read pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_and_snapshot_lists_longer_than_the_inline_budget_answer_whole() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = metadata_in(dir.path(), SharingPolicy::Shared);
    let n = crate::DEFAULT_INLINE_LIST_RECORDS + 3;
    let store = Arc::clone(&metadata).content("long").unwrap();
    let snapshotter = Arc::clone(&metadata)
        .snapshotter("long", SNAPSHOTTER)
        .unwrap();
    for i in 0..n {
        let bytes = format!("blob {i}").into_bytes();
        let digest = Digest::of(&bytes);
        let mut writer = store.writer(&format!("ref-{i}"), 0, None).await.unwrap();
        writer.write(&bytes).await.unwrap();
        let labels = Labels::from([("odd".to_string(), (i % 2).to_string())]);
        let size = i64::try_from(bytes.len()).unwrap();
        writer
            .commit(size, Some(digest), labels.clone())
            .await
            .unwrap();
        writer.close().await.unwrap();
        snapshotter
            .prepare(&format!("key-{i}"), "", labels)
            .await
            .unwrap();
    }
    // Each walk first counted one record past the budget on this thread.
    let past = crate::DEFAULT_INLINE_LIST_RECORDS + 1;
    crate::lists::records_counted_here();
    assert_eq!(store.walk(&[]).await.unwrap().len(), n);
    assert_eq!(crate::lists::records_counted_here(), past);
    let odd = ["labels.odd==1".to_string()];
    assert_eq!(store.walk(&odd).await.unwrap().len(), n / 2);
    assert_eq!(crate::lists::records_counted_here(), past);
    assert_eq!(snapshotter.walk(&[]).await.unwrap().len(), n);
    assert_eq!(crate::lists::records_counted_here(), past);
    assert_eq!(snapshotter.walk(&odd).await.unwrap().len(), n / 2);
    assert_eq!(crate::lists::records_counted_here(), past);
}
