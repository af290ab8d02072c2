//! `io.containerd.metadata.v1.redb`: the metadata store in a redb database under the plugin
//! root. It holds namespaces and their labels, each namespace's content records (over the
//! content store) and snapshot records (over each snapshotter), and hands out namespaced
//! views of the content store and snapshotters ([`NamespacedStores`]).
//!
//! `content_sharing_policy` (config) is containerd's: under `shared`, a namespace that
//! writes a blob another namespace already has gets it without uploading it again; under
//! `isolated`, a namespace sees and reads only blobs it committed itself, and must upload the
//! bytes (which are verified) to commit a blob the store already holds.

mod batch;
mod content;
mod gc;
#[cfg(all(test, feature = "content-local", feature = "snapshotter-native"))]
mod gc_tests;
#[cfg(all(test, feature = "content-local", feature = "snapshotter-native"))]
mod model_tests;
mod objects;
mod order;
mod records;
mod schema;
mod snapshots;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use plinth_api::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use redb::ReadableTable;

use self::schema::{
    CONTAINERS, CONTENT, CONTENT_LABELS, IMAGES, LEASE_RESOURCES, LEASES, NAMESPACE_LABELS,
    NAMESPACES, SCHEMA_VERSION, SEQUENCES, SNAPSHOT_LABELS, SNAPSHOTS,
};
use crate::content::ContentStore;
use crate::error::Error;
use crate::namespaces::{
    Labels, NamespaceStore, NamespacedStores, validate_identifier, validate_label,
};
use crate::snapshots::Snapshotter;

/// How namespaces share blobs (containerd's `content_sharing_policy`): `"shared"` or
/// `"isolated"` in the config. Any other value is refused when the config is loaded, naming
/// the file, line, key and the values allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharingPolicy {
    /// A blob in the store is available to every namespace that asks for it by digest.
    #[default]
    Shared,
    /// A namespace sees only what it committed itself.
    Isolated,
}

impl SharingPolicy {
    /// The policy's name in the config: `shared` or `isolated`.
    pub fn as_str(self) -> &'static str {
        match self {
            SharingPolicy::Shared => "shared",
            SharingPolicy::Isolated => "isolated",
        }
    }
}

/// The plugin's config section.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MetadataConfig {
    /// `shared` (default) or `isolated`.
    pub content_sharing_policy: SharingPolicy,
}

/// What runs as a slot is taken (`Metadata`'s `on_slot`): the namespace, and the key of the
/// object for a change made on another caller's behalf.
type OnSlot = dyn Fn(&str, Option<&str>) + Send + Sync;

/// The metadata database and the stores it namespaces.
pub struct Metadata {
    db: Arc<Db>,
    content: Option<Arc<dyn ContentStore>>,
    snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
    policy: SharingPolicy,
    gc: gc::GcState,
    /// Slots that put each namespace's events in commit order.
    order: Arc<order::Order>,
    /// Where events go (none without an exchange).
    events: std::sync::RwLock<Option<Arc<dyn crate::events::Publisher>>>,
    /// Runs as each slot is taken, under the writer lock, with the namespace and, for a
    /// change made on another caller's behalf, the key of the object: nothing, except in
    /// tests.
    on_slot: Arc<OnSlot>,
    /// Image and container creates waiting to share a transaction (see `batch`).
    batches: batch::Batches,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("policy", &self.policy)
            .field(
                "snapshotters",
                &self.snapshotters.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

use crate::redb_store::{Db, storage, with_db_views};

impl Metadata {
    /// Publishes the events of later changes through `publisher` (the plugin does this at
    /// init with the loaded exchange, if any).
    pub fn set_publisher(&self, publisher: Option<Arc<dyn crate::events::Publisher>>) {
        *self
            .events
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = publisher;
    }

    /// A slot in `namespace`'s event order: take it while holding the writer lock, just
    /// before the commit (see `order`).
    fn slot(&self, namespace: &str) -> order::Slot {
        self.slot_for(namespace, None)
    }

    /// [`slot`](Self::slot) for a change to the object `key` made on another caller's
    /// behalf (a batch's create: see `batch`).
    fn slot_for(&self, namespace: &str, key: Option<&str>) -> order::Slot {
        (self.on_slot)(namespace, key);
        self.order.take(namespace)
    }

    /// The publication of `event` on `topic` in `namespace`, to fill a slot with.
    fn publication<M: crate::events::Event>(
        &self,
        namespace: &str,
        topic: &'static str,
        event: M,
    ) -> impl FnOnce() + Send + 'static {
        let publisher = self
            .events
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let namespace = namespace.to_string();
        move || crate::events::publish(publisher.as_deref(), &namespace, topic, &event)
    }

    /// Held across every snapshot change in `namespace`: it touches the backend and the
    /// records, and one at a time per namespace keeps them in step (a parent and its children
    /// are always in one namespace; the running instance and its replacement share the
    /// database and so these locks; see `redb_store`). Namespaces change side by side.
    async fn snapshot_lock(&self, namespace: &str) -> crate::redb_store::ScopeGuard<'_> {
        self.db.serial().scope(namespace).await
    }

    /// Held across a change that spans every namespace (a snapshotter's cleanup, which
    /// removes what no record of any namespace refers to).
    async fn snapshot_lock_all(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.db.serial().all().await
    }
}

fn now_nanos() -> u64 {
    to_nanos(SystemTime::now())
}

fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn from_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
}

/// Runs blocking database work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    crate::blocking("metadata worker", work).await
}

impl Metadata {
    /// The metadata over the database at `path`: an existing file opens on a thread of its
    /// own, a missing one is created by the first call (creating missing tables and checking
    /// the schema version either way); a failed open (a newer schema, say) is every call's
    /// error until an open succeeds.
    ///
    /// # Errors
    /// The file exists but cannot be opened, or another process holds it.
    pub fn open(path: &Path) -> Result<Metadata, Error> {
        Metadata::open_with(path, None, BTreeMap::new(), SharingPolicy::Shared)
    }

    /// As [`Metadata::open`], over a content store and snapshotters (by name).
    ///
    /// # Errors
    /// As [`Metadata::open`].
    pub fn open_with(
        path: &Path,
        content: Option<Arc<dyn ContentStore>>,
        snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
        policy: SharingPolicy,
    ) -> Result<Metadata, Error> {
        let db = Db::open(path, SCHEMA_VERSION, |txn| {
            txn.open_table(NAMESPACES).map_err(storage)?;
            txn.open_table(NAMESPACE_LABELS).map_err(storage)?;
            txn.open_table(SEQUENCES).map_err(storage)?;
            txn.open_table(CONTENT).map_err(storage)?;
            txn.open_table(CONTENT_LABELS).map_err(storage)?;
            txn.open_table(SNAPSHOTS).map_err(storage)?;
            txn.open_table(SNAPSHOT_LABELS).map_err(storage)?;
            txn.open_table(IMAGES).map_err(storage)?;
            txn.open_table(CONTAINERS).map_err(storage)?;
            txn.open_table(LEASES).map_err(storage)?;
            txn.open_table(LEASE_RESOURCES).map_err(storage)?;
            Ok(())
        })?;
        Ok(Metadata {
            db: Arc::new(db),
            content,
            snapshotters,
            policy,
            gc: gc::GcState::default(),
            order: Arc::default(),
            events: std::sync::RwLock::default(),
            on_slot: Arc::new(|_, _| {}),
            batches: batch::Batches::default(),
        })
    }

    fn labels_in(
        table: &impl ReadableTable<(&'static str, &'static str), &'static str>,
        name: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut labels = BTreeMap::new();
        for item in table.range((name, "")..).map_err(storage)? {
            let (key, value) = item.map_err(storage)?;
            let (namespace, label) = key.value();
            if namespace != name {
                break;
            }
            labels.insert(label.to_string(), value.value().to_string());
        }
        Ok(labels)
    }
}

/// The label rows of a run of records visited in key order (a list's walk), read by one pass
/// over the labels table beside the records: the labels table is keyed by the record's key
/// and then the label, so the rows of each record follow those of the record before it.
/// A range per record (a search from the root of the table each) was most of a list's time.
struct LabelRows<'t, K: redb::Key + 'static> {
    rows: redb::Range<'t, K, &'static str>,
    /// The next row, not yet handed out.
    next: Option<(
        redb::AccessGuard<'t, K>,
        redb::AccessGuard<'t, &'static str>,
    )>,
}

impl<'t, K: redb::Key + 'static> LabelRows<'t, K> {
    /// The rows of `rows`, a range that starts at the first record the walk visits.
    fn new(mut rows: redb::Range<'t, K, &'static str>) -> Result<LabelRows<'t, K>, Error> {
        let next = rows.next().transpose().map_err(storage)?;
        Ok(LabelRows { rows, next })
    }

    /// The labels of the record the walk is at, the next in key order: `place` compares a
    /// row's record with it, `name` is a row's label. Rows of records before it (the walk
    /// skipped them) are passed over.
    fn labels(
        &mut self,
        place: impl Fn(&redb::AccessGuard<'t, K>) -> std::cmp::Ordering,
        name: impl Fn(&redb::AccessGuard<'t, K>) -> String,
    ) -> Result<Labels, Error> {
        let mut labels = Labels::new();
        while let Some((key, value)) = &self.next {
            match place(key) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    labels.insert(name(key), value.value().to_string());
                }
                std::cmp::Ordering::Greater => break,
            }
            self.next = self.rows.next().transpose().map_err(storage)?;
        }
        Ok(labels)
    }
}

/// Whether a table keyed by (namespace, name) has a record in `namespace`.
fn holds<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str), V>,
    namespace: &str,
) -> Result<bool, Error> {
    Ok(table
        .range((namespace, "")..)
        .map_err(storage)?
        .next()
        .transpose()
        .map_err(storage)?
        .is_some_and(|(k, _)| k.value().0 == namespace))
}

impl Metadata {
    /// Creates namespace `name`, publishing its event in `events_in` if given.
    fn create_namespace(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        events_in: Option<&str>,
    ) -> Result<(), Error> {
        validate_identifier("namespace", name)?;
        for (key, value) in labels {
            validate_label(key, value)?;
        }
        let txn = self.db.begin_write()?;
        {
            let mut namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
            if namespaces.get(name).map_err(storage)?.is_some() {
                return Err(Error::already_exists(format!(
                    "namespace {name:?}: already exists"
                )));
            }
            namespaces.insert(name, now_nanos()).map_err(storage)?;
            let mut table = txn.open_table(NAMESPACE_LABELS).map_err(storage)?;
            for (key, value) in labels {
                table
                    .insert((name, key.as_str()), value.as_str())
                    .map_err(storage)?;
            }
        }
        let slot = events_in.map(|ns| self.slot(ns));
        txn.commit()?;
        if let (Some(slot), Some(ns)) = (slot, events_in) {
            let event = NamespaceCreate {
                name: name.to_string(),
                labels: labels.clone().into_iter().collect(),
            };
            slot.publish(self.publication(ns, "/namespaces/create", event));
        }
        Ok(())
    }

    /// Applies label `changes` to namespace `name`, publishing its event in `events_in`.
    fn update_namespace(
        &self,
        name: &str,
        changes: &[(String, Option<String>)],
        events_in: Option<&str>,
    ) -> Result<(), Error> {
        for (key, value) in changes {
            validate_label(key, value.as_deref().unwrap_or(""))?;
        }
        let txn = self.db.begin_write()?;
        let labels = {
            let namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
            if namespaces.get(name).map_err(storage)?.is_none() {
                return Err(Error::not_found(format!("namespace {name:?}: not found")));
            }
            let mut table = txn.open_table(NAMESPACE_LABELS).map_err(storage)?;
            for (key, value) in changes {
                match value {
                    Some(value) => {
                        table
                            .insert((name, key.as_str()), value.as_str())
                            .map_err(storage)?;
                    }
                    None => {
                        table.remove((name, key.as_str())).map_err(storage)?;
                    }
                }
            }
            Metadata::labels_in(&table, name)?
        };
        let slot = events_in.map(|ns| self.slot(ns));
        txn.commit()?;
        if let (Some(slot), Some(ns)) = (slot, events_in) {
            let event = NamespaceUpdate {
                name: name.to_string(),
                labels: labels.into_iter().collect(),
            };
            slot.publish(self.publication(ns, "/namespaces/update", event));
        }
        Ok(())
    }
}

impl NamespaceStore for Metadata {
    fn create(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), Error> {
        self.create_namespace(name, labels, None)
    }

    fn create_publishing(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        events_in: &str,
    ) -> Result<(), Error> {
        self.create_namespace(name, labels, Some(events_in))
    }

    fn update_labels_publishing(
        &self,
        name: &str,
        changes: &[(String, Option<String>)],
        events_in: &str,
    ) -> Result<(), Error> {
        self.update_namespace(name, changes, Some(events_in))
    }

    fn delete_publishing(&self, name: &str, events_in: &str) -> Result<(), Error> {
        self.delete_namespace(name, Some(events_in))
    }

    fn ensure(&self, name: &str) -> Result<(), Error> {
        validate_identifier("namespace", name)?;
        let exists = {
            let txn = self.db.begin_read()?;
            let namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
            namespaces.get(name).map_err(storage)?.is_some()
        };
        if exists {
            return Ok(());
        }
        match self.create(name, &BTreeMap::new()) {
            Err(e) if e.category == plinth_core::Category::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn labels(&self, name: &str) -> Result<BTreeMap<String, String>, Error> {
        let txn = self.db.begin_read()?;
        let namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
        if namespaces.get(name).map_err(storage)?.is_none() {
            return Err(Error::not_found(format!("namespace {name:?}: not found")));
        }
        let table = txn.open_table(NAMESPACE_LABELS).map_err(storage)?;
        Metadata::labels_in(&table, name)
    }

    fn update_labels(&self, name: &str, changes: &[(String, Option<String>)]) -> Result<(), Error> {
        self.update_namespace(name, changes, None)
    }

    fn list(&self) -> Result<Vec<(String, Labels)>, Error> {
        let txn = self.db.begin_read()?;
        let namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
        let labels = txn.open_table(NAMESPACE_LABELS).map_err(storage)?;
        let mut out = Vec::new();
        for item in namespaces.iter().map_err(storage)? {
            let (name, _) = item.map_err(storage)?;
            crate::walk_record()?;
            let name = name.value().to_string();
            let l = Metadata::labels_in(&labels, &name)?;
            out.push((name, l));
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        self.delete_namespace(name, None)
    }
}

impl Metadata {
    /// Deletes namespace `name` if it is empty, publishing its event in `events_in`.
    fn delete_namespace(&self, name: &str, events_in: Option<&str>) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
            if namespaces.get(name).map_err(storage)?.is_none() {
                return Err(Error::not_found(format!("namespace {name:?}: not found")));
            }
            let mut holding = Vec::new();
            let content = txn.open_table(CONTENT).map_err(storage)?;
            if holds(&content, name)? {
                holding.push("content");
            }
            if holds(&txn.open_table(IMAGES).map_err(storage)?, name)? {
                holding.push("images");
            }
            if holds(&txn.open_table(CONTAINERS).map_err(storage)?, name)? {
                holding.push("containers");
            }
            if holds(&txn.open_table(LEASES).map_err(storage)?, name)? {
                holding.push("leases");
            }
            let snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
            if snapshots
                .range((name, "", "")..)
                .map_err(storage)?
                .next()
                .transpose()
                .map_err(storage)?
                .is_some_and(|(k, _)| k.value().0 == name)
            {
                holding.push("snapshots");
            }
            if !holding.is_empty() {
                return Err(Error::failed_precondition(format!(
                    "namespace {name:?} must be empty, but it still has {}: remove them first",
                    holding.join(", ")
                )));
            }
            namespaces.remove(name).map_err(storage)?;
            let mut labels = txn.open_table(NAMESPACE_LABELS).map_err(storage)?;
            let keys: Vec<String> = Metadata::labels_in(&labels, name)?.into_keys().collect();
            for key in keys {
                labels.remove((name, key.as_str())).map_err(storage)?;
            }
        }
        let slot = events_in.map(|ns| self.slot(ns));
        txn.commit()?;
        if let (Some(slot), Some(ns)) = (slot, events_in) {
            let event = NamespaceDelete {
                name: name.to_string(),
            };
            slot.publish(self.publication(ns, "/namespaces/delete", event));
        }
        Ok(())
    }
}

impl NamespacedStores for Metadata {
    fn content(self: Arc<Self>, namespace: &str) -> Result<Arc<dyn ContentStore>, Error> {
        validate_identifier("namespace", namespace)?;
        if self.content.is_none() {
            return Err(Error::unavailable(
                "no content store is loaded: enable a content plugin",
            ));
        }
        Ok(Arc::new(content::NamespacedContent::new(self, namespace)))
    }

    fn snapshotter(
        self: Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<dyn Snapshotter>, Error> {
        validate_identifier("namespace", namespace)?;
        if !self.snapshotters.contains_key(name) {
            let loaded: Vec<&str> = self.snapshotters.keys().map(String::as_str).collect();
            return Err(Error::invalid(format!(
                "snapshotter not loaded: {name} (loaded: {})",
                if loaded.is_empty() {
                    "none".to_string()
                } else {
                    loaded.join(", ")
                }
            )));
        }
        Ok(Arc::new(snapshots::NamespacedSnapshotter::new(
            self, namespace, name,
        )))
    }

    fn leased_content(
        self: Arc<Self>,
        namespace: &str,
        lease: Option<&str>,
    ) -> Result<Arc<dyn ContentStore>, Error> {
        validate_identifier("namespace", namespace)?;
        if self.content.is_none() {
            return self.content(namespace);
        }
        Ok(Arc::new(
            content::NamespacedContent::new(self, namespace).leased(lease),
        ))
    }

    fn leased_snapshotter(
        self: Arc<Self>,
        namespace: &str,
        name: &str,
        lease: Option<&str>,
    ) -> Result<Arc<dyn Snapshotter>, Error> {
        // Checked here as well as by `snapshotter`, before the view is built.
        validate_identifier("namespace", namespace)?;
        if !self.snapshotters.contains_key(name) {
            return self.snapshotter(namespace, name);
        }
        Ok(Arc::new(
            snapshots::NamespacedSnapshotter::new(self, namespace, name).leased(lease),
        ))
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<MetadataConfig>()?;
    let policy = config.content_sharing_policy;
    let content: Arc<dyn ContentStore> = ctx.get_single(types::CONTENT)?;
    // Containerd's metadata needs its snapshotters; say which failed when none is usable.
    let snapshotters: BTreeMap<String, Arc<dyn Snapshotter>> = ctx
        .get_by_type::<dyn Snapshotter>(types::SNAPSHOTTER)?
        .into_iter()
        .map(|(id, s)| (id.to_string(), s))
        .collect();
    std::fs::create_dir_all(ctx.root())
        .map_err(|e| InitError::msg(format!("creating {}: {e}", ctx.root().display())))?;
    let path = ctx.root().join("meta.db");
    let metadata = Arc::new(Metadata::open_with(
        &path,
        Some(content),
        snapshotters,
        policy,
    )?);
    // The metadata publishes the events of its changes itself: only it knows their commit
    // order (see `order`).
    metadata.set_publisher(crate::events::publisher(ctx));
    let exports = &mut ctx.meta_mut().exports;
    exports.insert("path".to_string(), path.display().to_string());
    exports.insert(
        "content_sharing_policy".to_string(),
        policy.as_str().to_string(),
    );
    let instance = Instance::new(metadata.clone() as Arc<dyn NamespaceStore>)
        .with(metadata.clone() as Arc<dyn NamespacedStores>)
        .with(metadata.clone() as Arc<dyn crate::images::ImageStore>)
        .with(metadata.clone() as Arc<dyn crate::containers::ContainerStore>)
        .with(metadata.clone() as Arc<dyn crate::leases::LeaseManager>)
        .with(metadata.clone() as Arc<dyn crate::gc::Collector>);
    Ok(with_db_views(instance, &metadata.db).with(metadata))
}

register!(
    Registration::new(types::METADATA, "redb", init)
        .requires(&[types::CONTENT, types::SNAPSHOTTER, types::EVENT])
        .config::<MetadataConfig>()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharing_policy_reads_and_writes_the_names_containerd_uses() {
        // (config text, the policy, or the error)
        let cases: &[(&str, Result<SharingPolicy, &str>)] = &[
            ("", Ok(SharingPolicy::Shared)),
            (
                "content_sharing_policy = \"shared\"",
                Ok(SharingPolicy::Shared),
            ),
            (
                "content_sharing_policy = \"isolated\"",
                Ok(SharingPolicy::Isolated),
            ),
            (
                "content_sharing_policy = \"sometimes\"",
                Err("unknown variant `sometimes`, expected `shared` or `isolated`"),
            ),
            (
                "content_sharing_policy = \"Isolated\"",
                Err("unknown variant `Isolated`, expected `shared` or `isolated`"),
            ),
        ];
        for (text, expected) in cases {
            let decoded = toml::from_str::<MetadataConfig>(text)
                .map(|c| c.content_sharing_policy)
                .map_err(|e| e.message().to_string());
            match (decoded, expected) {
                (Ok(policy), Ok(want)) => assert_eq!(policy, *want, "{text}"),
                (Err(message), Err(want)) => assert!(message.contains(want), "{text}: {message}"),
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
        for policy in [SharingPolicy::Shared, SharingPolicy::Isolated] {
            let config = MetadataConfig {
                content_sharing_policy: policy,
            };
            let table = toml::Table::try_from(&config).unwrap();
            assert_eq!(
                table["content_sharing_policy"].as_str(),
                Some(policy.as_str())
            );
        }
    }

    fn store() -> (tempfile::TempDir, Metadata) {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        (dir, metadata)
    }

    #[test]
    fn namespace_lifecycle_against_a_model() {
        let (_dir, db) = store();
        let mut model: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        db.create("default", &BTreeMap::new()).unwrap();
        model.insert("default".into(), BTreeMap::new());
        db.create("k8s.io", &labels(&[("a", "1"), ("b", "2")]))
            .unwrap();
        model.insert("k8s.io".into(), labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(
            db.create("k8s.io", &BTreeMap::new()).unwrap_err().category,
            plinth_core::Category::AlreadyExists
        );
        db.update_labels(
            "k8s.io",
            &[("a".into(), None), ("c".into(), Some("3".into()))],
        )
        .unwrap();
        model.get_mut("k8s.io").unwrap().remove("a");
        model
            .get_mut("k8s.io")
            .unwrap()
            .insert("c".into(), "3".into());
        db.ensure("default").unwrap();
        db.ensure("fresh").unwrap();
        model.insert("fresh".into(), BTreeMap::new());
        assert_eq!(
            db.list().unwrap(),
            model.clone().into_iter().collect::<Vec<_>>()
        );
        db.delete("fresh").unwrap();
        model.remove("fresh");
        assert_eq!(
            db.delete("fresh").unwrap_err().category,
            plinth_core::Category::NotFound
        );
        assert_eq!(db.labels("k8s.io").unwrap(), model["k8s.io"]);
        assert_eq!(db.list().unwrap(), model.into_iter().collect::<Vec<_>>());
        assert_eq!(
            db.create("bad/name", &BTreeMap::new())
                .unwrap_err()
                .category,
            plinth_core::Category::InvalidArgument
        );
    }

    #[test]
    fn non_empty_namespace_cannot_be_deleted() {
        let (_dir, db) = store();
        db.create("busy", &BTreeMap::new()).unwrap();
        let txn = db.db.begin_write().unwrap();
        txn.open_table(CONTENT)
            .unwrap()
            .insert(("busy", "sha256:00"), (0, 0, 0))
            .unwrap();
        txn.commit().unwrap();
        let error = db.delete("busy").unwrap_err();
        assert_eq!(error.category, plinth_core::Category::FailedPrecondition);
        assert_eq!(
            error.message,
            "namespace \"busy\" must be empty, but it still has content: remove them first"
        );
        assert!(db.labels("busy").is_ok(), "nothing changed");
    }

    #[test]
    fn database_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        Metadata::open(&path)
            .unwrap()
            .create("kept", &BTreeMap::new())
            .unwrap();
        let reopened = Metadata::open(&path).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 1);
    }
}

#[cfg(all(test, feature = "event-exchange"))]
mod event_order {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::Metadata;
    use crate::event_exchange::MemoryExchange;
    use crate::events::{Exchange, known_field_readers};
    use crate::images::{Descriptor, Image, ImageStore};

    thread_local! {
        /// The image this thread is creating, for the commit log.
        static CREATING: RefCell<String> = const { RefCell::new(String::new()) };
    }

    /// Writers in one namespace, side by side: the events come out in the order the
    /// changes committed (the commit log is written under the writer lock, as each change
    /// takes its slot), though each writer publishes on its own thread after its commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_publish_in_commit_order() {
        const WRITERS: usize = 6;
        const EACH: usize = 150;
        let dir = tempfile::tempdir().unwrap();
        let committed: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&committed);
        let mut metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        metadata.on_slot = Arc::new(move |namespace, key| {
            if namespace == "a" {
                // A create is written by whichever caller leads its batch, and names its
                // image; a delete is written by its own caller.
                let name =
                    key.map_or_else(|| CREATING.with(|c| c.borrow().clone()), str::to_string);
                log.lock().unwrap().push(name);
            }
        });
        let metadata = Arc::new(metadata);
        let exchange =
            Arc::new(MemoryExchange::new(WRITERS * EACH * 2, known_field_readers()).unwrap());
        metadata.set_publisher(Some(exchange.clone()));
        let mut subscription = exchange.subscribe(&["namespace==a".to_string()]).unwrap();
        let threads: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let metadata = Arc::clone(&metadata);
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        let name = format!("w{writer}-{n}");
                        CREATING.with(|c| *c.borrow_mut() = name.clone());
                        let target = Descriptor {
                            media_type: "m".to_string(),
                            digest: format!("sha256:{:064x}", writer * EACH + n),
                            size: 1,
                            annotations: BTreeMap::new(),
                        };
                        ImageStore::create(metadata.as_ref(), "a", Image::new(name, target))
                            .unwrap();
                        // Deletes interleave with the creates.
                        if n % 10 == 0 {
                            ImageStore::delete(metadata.as_ref(), "a", &format!("w{writer}-{n}"))
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let expected = committed.lock().unwrap().clone();
        let mut published = Vec::new();
        while published.len() < expected.len() {
            let envelope = subscription.recv().await.unwrap().unwrap();
            let name = match envelope.topic.as_str() {
                "/images/create" => {
                    let event: plinth_api::containerd::events::ImageCreate =
                        prost::Message::decode(envelope.event.value.as_slice()).unwrap();
                    event.name
                }
                "/images/delete" => {
                    let event: plinth_api::containerd::events::ImageDelete =
                        prost::Message::decode(envelope.event.value.as_slice()).unwrap();
                    event.name
                }
                other => panic!("unexpected topic {other}"),
            };
            published.push(name);
        }
        assert_eq!(expected.len(), WRITERS * (EACH + EACH / 10));
        assert_eq!(published, expected, "events out of commit order");
    }
}

#[cfg(all(test, feature = "content-local", feature = "snapshotter-native"))]
mod snapshot_suite {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use plinth_core::Category;

    use super::{Metadata, SharingPolicy};
    use crate::error::Error;
    use crate::namespaces::{Labels, NamespacedStores};
    use crate::snapshots::native::NativeSnapshotter;
    use crate::snapshots::{Info, Mount, Snapshotter, Usage};

    /// A native snapshotter in `dir`.
    fn native_in(dir: &std::path::Path) -> Arc<dyn Snapshotter> {
        Arc::new(NativeSnapshotter::open(&dir.join("native")).unwrap())
    }

    /// Metadata in `dir` over one snapshotter, `backend`, called `name`.
    fn metadata_over(
        dir: &std::path::Path,
        name: &str,
        backend: Arc<dyn Snapshotter>,
    ) -> Arc<Metadata> {
        Arc::new(
            Metadata::open_with(
                &dir.join("meta.db"),
                None,
                BTreeMap::from([(name.to_string(), backend)]),
                SharingPolicy::Shared,
            )
            .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn namespaced_snapshotter_passes_the_snapshot_conformance_suite() {
        crate::snapshots::testsuite::run(|dir: std::path::PathBuf| async move {
            let native: Arc<dyn Snapshotter> =
                Arc::new(NativeSnapshotter::open(&dir.join("native"))?);
            let metadata = Arc::new(Metadata::open_with(
                &dir.join("meta.db"),
                None,
                BTreeMap::from([("native".to_string(), native)]),
                SharingPolicy::Shared,
            )?);
            metadata.snapshotter("suite", "native")
        })
        .await;
    }

    /// The backend name of the record `key` (`<namespace>/<n>/<key>`).
    async fn backend_name(backend: &dyn Snapshotter, key: &str) -> String {
        let suffix = format!("/{key}");
        backend
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.name)
            .find(|name| name.ends_with(&suffix))
            .unwrap_or_else(|| panic!("no backend snapshot for {key}"))
    }

    /// Remove refuses only for a child in the same namespace and snapshotter, naming it;
    /// a snapshot the backend lost is removed from the records; a backend that refuses keeps
    /// the record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remove_looks_for_children_in_its_own_snapshotter_and_heeds_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let one: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(&dir.path().join("one")).unwrap());
        let two: Arc<dyn Snapshotter> =
            Arc::new(NativeSnapshotter::open(&dir.path().join("two")).unwrap());
        let metadata = Arc::new(
            Metadata::open_with(
                &dir.path().join("meta.db"),
                None,
                BTreeMap::from([
                    ("one".to_string(), Arc::clone(&one)),
                    ("two".to_string(), Arc::clone(&two)),
                ]),
                SharingPolicy::Shared,
            )
            .unwrap(),
        );
        let in_one = Arc::clone(&metadata).snapshotter("a", "one").unwrap();
        let in_two = Arc::clone(&metadata).snapshotter("a", "two").unwrap();
        for snapshotter in [&in_one, &in_two] {
            snapshotter
                .prepare("p-active", "", Labels::new())
                .await
                .unwrap();
            snapshotter
                .commit("p", "p-active", Labels::new())
                .await
                .unwrap();
        }
        in_two.prepare("child", "p", Labels::new()).await.unwrap();
        in_one
            .remove("p")
            .await
            .expect("a child in another snapshotter is not a child");
        let error = in_two.remove("p").await.unwrap_err();
        assert_eq!(error.category, Category::FailedPrecondition, "{error}");
        assert!(
            error.message.contains("snapshot \"child\" is its child"),
            "{error}"
        );

        in_one.prepare("lost", "", Labels::new()).await.unwrap();
        one.remove(&backend_name(one.as_ref(), "lost").await)
            .await
            .unwrap();
        in_one
            .remove("lost")
            .await
            .expect("the backend lost it: the record goes");
        let error = in_one.stat("lost").await.unwrap_err();
        assert_eq!(error.category, Category::NotFound, "{error}");

        in_one
            .prepare("held-active", "", Labels::new())
            .await
            .unwrap();
        in_one
            .commit("held", "held-active", Labels::new())
            .await
            .unwrap();
        let held = backend_name(one.as_ref(), "held").await;
        one.prepare("orphan", &held, Labels::new()).await.unwrap();
        let error = in_one.remove("held").await.unwrap_err();
        assert_eq!(error.category, Category::FailedPrecondition, "{error}");
        in_one
            .stat("held")
            .await
            .expect("the backend refused: the record stays");
    }

    /// Cleanup removes backend snapshots no record refers to (a crash between the backend
    /// call and the record), children first, and keeps every one a record refers to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleanup_removes_only_what_no_record_refers_to() {
        let dir = tempfile::tempdir().unwrap();
        let native = native_in(dir.path());
        let metadata = metadata_over(dir.path(), "native", Arc::clone(&native));
        let namespaced = Arc::clone(&metadata).snapshotter("a", "native").unwrap();
        namespaced
            .prepare("base-active", "", Labels::new())
            .await
            .unwrap();
        namespaced
            .commit("base", "base-active", Labels::new())
            .await
            .unwrap();
        namespaced
            .prepare("live", "base", Labels::new())
            .await
            .unwrap();
        let kept = native.walk(&[]).await.unwrap().len();
        native
            .prepare("orphan-parent-active", "", Labels::new())
            .await
            .unwrap();
        native
            .commit("orphan-parent", "orphan-parent-active", Labels::new())
            .await
            .unwrap();
        native
            .prepare("orphan-child", "orphan-parent", Labels::new())
            .await
            .unwrap();
        namespaced.cleanup().await.unwrap();
        let left: Vec<String> = native
            .walk(&[])
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.name)
            .collect();
        assert_eq!(left.len(), kept, "{left:?}");
        assert!(left.iter().all(|name| name.starts_with("a/")), "{left:?}");
        namespaced.stat("live").await.unwrap();
    }

    /// A backend whose `remove` says it removed without removing anything.
    struct Forgetful(Arc<dyn Snapshotter>);

    #[tonic::async_trait]
    impl Snapshotter for Forgetful {
        async fn stat(&self, key: &str) -> Result<Info, Error> {
            self.0.stat(key).await
        }
        async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
            self.0.update(info, fieldpaths).await
        }
        async fn usage(&self, key: &str) -> Result<Usage, Error> {
            self.0.usage(key).await
        }
        async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
            self.0.mounts(key).await
        }
        async fn prepare(
            &self,
            key: &str,
            parent: &str,
            labels: Labels,
        ) -> Result<Vec<Mount>, Error> {
            self.0.prepare(key, parent, labels).await
        }
        async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
            self.0.view(key, parent, labels).await
        }
        async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
            self.0.commit(name, key, labels).await
        }
        async fn remove(&self, _key: &str) -> Result<(), Error> {
            Ok(())
        }
        async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
            self.0.walk(filters).await
        }
        async fn cleanup(&self) -> Result<(), Error> {
            self.0.cleanup().await
        }
    }

    /// Cleanup over a backend that says it removed an orphan but still lists it ends with
    /// an error naming the snapshotter and the key, instead of walking again for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cleanup_names_a_backend_that_keeps_what_it_removed() {
        let dir = tempfile::tempdir().unwrap();
        let native = native_in(dir.path());
        let forgetful: Arc<dyn Snapshotter> = Arc::new(Forgetful(Arc::clone(&native)));
        let metadata = metadata_over(dir.path(), "forgetful", forgetful);
        let namespaced = Arc::clone(&metadata).snapshotter("a", "forgetful").unwrap();
        namespaced
            .cleanup()
            .await
            .expect("nothing to remove: nothing to check");
        native.prepare("orphan", "", Labels::new()).await.unwrap();
        let error = namespaced.cleanup().await.unwrap_err();
        assert_eq!(error.category, Category::Internal, "{error}");
        assert!(
            error.message.contains(
                "snapshotter `forgetful` still lists snapshot `orphan` after removing it"
            ),
            "{error}"
        );
    }

    /// The same key in two snapshotters and two namespaces: each record has exactly its own
    /// labels (a scan of one record's labels must stop at the next record, even when only
    /// the snapshotter or the namespace differs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn labels_never_leak_between_namespaces_or_snapshotters() {
        let dir = tempfile::tempdir().unwrap();
        let mut backends = BTreeMap::new();
        for name in ["one", "two"] {
            let native: Arc<dyn Snapshotter> =
                Arc::new(NativeSnapshotter::open(&dir.path().join(name)).unwrap());
            backends.insert(name.to_string(), native);
        }
        let metadata = Arc::new(
            Metadata::open_with(
                &dir.path().join("meta.db"),
                None,
                backends,
                SharingPolicy::Shared,
            )
            .unwrap(),
        );
        let places = [("a", "one"), ("a", "two"), ("b", "one")];
        for (namespace, snapshotter) in places {
            let labels = Labels::from([("x".to_string(), format!("{namespace}-{snapshotter}"))]);
            Arc::clone(&metadata)
                .snapshotter(namespace, snapshotter)
                .unwrap()
                .prepare("k", "", labels)
                .await
                .unwrap();
        }
        for (namespace, snapshotter) in places {
            let info = Arc::clone(&metadata)
                .snapshotter(namespace, snapshotter)
                .unwrap()
                .stat("k")
                .await
                .unwrap();
            let expected = Labels::from([("x".to_string(), format!("{namespace}-{snapshotter}"))]);
            assert_eq!(info.labels, expected, "{namespace}/{snapshotter}");
        }
    }

    /// What a publisher was given: namespace, topic and the event's `key`.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<(String, String, String)>>);

    impl crate::events::Publisher for Recorder {
        fn publish(
            &self,
            namespace: &str,
            topic: &str,
            event: prost_types::Any,
        ) -> Result<(), Error> {
            use plinth_api::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
            use prost::Message;
            let bytes = event.value.as_slice();
            let key = match topic {
                "/snapshot/prepare" => {
                    let event = SnapshotPrepare::decode(bytes).unwrap();
                    format!("{} on {:?}", event.key, event.parent)
                }
                "/snapshot/commit" => {
                    let event = SnapshotCommit::decode(bytes).unwrap();
                    format!("{} as {}", event.key, event.name)
                }
                "/snapshot/remove" => SnapshotRemove::decode(bytes).unwrap().key,
                other => panic!("unexpected topic {other}"),
            };
            let mut seen = self.0.lock().unwrap();
            seen.push((namespace.to_string(), topic.to_string(), key));
            Ok(())
        }
    }

    /// A prepare, a commit and a remove publish containerd's snapshot events in the
    /// snapshot's namespace; a view publishes nothing (as in containerd).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_changes_publish_their_events_and_a_view_none() {
        let dir = tempfile::tempdir().unwrap();
        let native = native_in(dir.path());
        let metadata = metadata_over(dir.path(), "native", native);
        let recorder = Arc::new(Recorder::default());
        metadata.set_publisher(Some(
            Arc::clone(&recorder) as Arc<dyn crate::events::Publisher>
        ));
        let snapshotter = Arc::clone(&metadata).snapshotter("a", "native").unwrap();
        snapshotter.prepare("p1", "", Labels::new()).await.unwrap();
        snapshotter.commit("c1", "p1", Labels::new()).await.unwrap();
        snapshotter.view("v", "c1", Labels::new()).await.unwrap();
        snapshotter
            .prepare("p2", "c1", Labels::new())
            .await
            .unwrap();
        snapshotter.remove("v").await.unwrap();
        let seen = recorder.0.lock().unwrap().clone();
        let expected = [
            ("/snapshot/prepare", "p1 on \"\""),
            ("/snapshot/commit", "p1 as c1"),
            ("/snapshot/prepare", "p2 on \"c1\""),
            ("/snapshot/remove", "v"),
        ]
        .map(|(topic, key)| ("a".to_string(), topic.to_string(), key.to_string()));
        assert_eq!(seen, expected);
    }
}
