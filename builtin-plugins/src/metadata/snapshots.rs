//! A namespace's view of one snapshotter: records per namespace, backend keys
//! `<namespace>/<sequence>/<key>` so namespaces never collide, and a clean-up that removes
//! backend snapshots no record refers to (left by crashes).

use std::collections::BTreeSet;
use std::sync::Arc;

use plinth_api::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use redb::{ReadableTable, WriteTransaction};

use super::gc::Barrier;
use super::schema::{
    SEQUENCES, SNAPSHOT_LABELS, SNAPSHOTS, SnapshotKey, SnapshotLabelKey, SnapshotValue,
};
use super::{LabelRows, Metadata, blocking, from_nanos, now_nanos, storage};
use crate::error::Error;
use crate::filters::FilterSet;
use crate::namespaces::{Labels, apply_label_paths, validate_label};
use crate::snapshots::{Info, Kind, Mount, Snapshotter, Usage, validate_key};

/// A snapshot record.
#[derive(Debug, Clone)]
struct Record {
    kind: Kind,
    parent: String,
    backend: String,
    created: u64,
    updated: u64,
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::View => 1,
        Kind::Active => 2,
        Kind::Committed => 3,
    }
}

fn kind_of(code: u8) -> Kind {
    match code {
        1 => Kind::View,
        2 => Kind::Active,
        _ => Kind::Committed,
    }
}

/// The snapshotter `name` as one namespace sees it.
pub(crate) struct NamespacedSnapshotter {
    metadata: Arc<Metadata>,
    namespace: String,
    name: String,
    /// The lease that holds what this view creates (the `containerd-lease` header).
    lease: Option<String>,
}

fn get_record(
    table: &impl ReadableTable<SnapshotKey, SnapshotValue>,
    namespace: &str,
    snapshotter: &str,
    key: &str,
) -> Result<Option<Record>, Error> {
    Ok(table
        .get((namespace, snapshotter, key))
        .map_err(storage)?
        .map(|v| {
            let (kind, parent, backend, created, updated) = v.value();
            Record {
                kind: kind_of(kind),
                parent: parent.to_string(),
                backend: backend.to_string(),
                created,
                updated,
            }
        }))
}

fn labels_of(
    table: &impl ReadableTable<SnapshotLabelKey, &'static str>,
    namespace: &str,
    snapshotter: &str,
    key: &str,
) -> Result<Labels, Error> {
    let mut labels = Labels::new();
    for item in table
        .range((namespace, snapshotter, key, "")..)
        .map_err(storage)?
    {
        let (k, value) = item.map_err(storage)?;
        let (ns, sn, name, label) = k.value();
        if ns != namespace || sn != snapshotter || name != key {
            break;
        }
        labels.insert(label.to_string(), value.value().to_string());
    }
    Ok(labels)
}

fn write_labels(
    txn: &WriteTransaction,
    namespace: &str,
    snapshotter: &str,
    key: &str,
    labels: &Labels,
) -> Result<(), Error> {
    let mut table = txn.open_table(SNAPSHOT_LABELS).map_err(storage)?;
    let old: Vec<String> = labels_of(&table, namespace, snapshotter, key)?
        .into_keys()
        .collect();
    for label in old {
        table
            .remove((namespace, snapshotter, key, label.as_str()))
            .map_err(storage)?;
    }
    for (label, value) in labels {
        table
            .insert(
                (namespace, snapshotter, key, label.as_str()),
                value.as_str(),
            )
            .map_err(storage)?;
    }
    Ok(())
}

/// Writes a snapshot record (noted by the collector's barrier: its parent and labels may
/// refer to what a running collection found unreachable).
fn insert_record(
    txn: &WriteTransaction,
    barrier: &Barrier,
    namespace: &str,
    snapshotter: &str,
    key: &str,
    record: &Record,
) -> Result<(), Error> {
    barrier.snapshot(namespace, snapshotter, key);
    let mut table = txn.open_table(SNAPSHOTS).map_err(storage)?;
    table
        .insert(
            (namespace, snapshotter, key),
            (
                kind_code(record.kind),
                record.parent.as_str(),
                record.backend.as_str(),
                record.created,
                record.updated,
            ),
        )
        .map_err(storage)?;
    Ok(())
}

/// The next backend key for `key` in `namespace`: `<namespace>/<n>/<key>`, `n` from the
/// shared counter, so namespaces never collide in the backend.
fn backend_key(txn: &WriteTransaction, namespace: &str, key: &str) -> Result<String, Error> {
    let mut sequences = txn.open_table(SEQUENCES).map_err(storage)?;
    let next = sequences
        .get("snapshot")
        .map_err(storage)?
        .map_or(0, |v| v.value())
        + 1;
    sequences.insert("snapshot", next).map_err(storage)?;
    Ok(format!("{namespace}/{next}/{key}"))
}

/// Removes a snapshot record and its labels.
fn remove_record(
    txn: &WriteTransaction,
    namespace: &str,
    snapshotter: &str,
    key: &str,
) -> Result<(), Error> {
    txn.open_table(SNAPSHOTS)
        .map_err(storage)?
        .remove((namespace, snapshotter, key))
        .map_err(storage)?;
    write_labels(txn, namespace, snapshotter, key, &Labels::new())
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("snapshot {key:?}: not found"))
}

impl NamespacedSnapshotter {
    pub(crate) fn new(metadata: Arc<Metadata>, namespace: &str, name: &str) -> Self {
        NamespacedSnapshotter {
            metadata,
            namespace: namespace.to_string(),
            name: name.to_string(),
            lease: None,
        }
    }

    /// The same view, binding what it creates to `lease`.
    pub(crate) fn leased(mut self, lease: Option<&str>) -> Self {
        self.lease = lease.map(str::to_string);
        self
    }

    /// The kind of lease resource a snapshot of this snapshotter is.
    fn resource_kind(&self) -> String {
        format!("snapshots/{}", self.name)
    }

    fn backend(&self) -> Result<Arc<dyn Snapshotter>, Error> {
        self.metadata
            .snapshotters
            .get(&self.name)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("snapshotter not loaded: {}", self.name)))
    }

    /// The record of `key` and its labels: a point read of cached pages, on the thread that
    /// serves the call (see ARCHITECTURE.md, "Point reads").
    fn record(&self, key: &str) -> Result<(Record, Labels), Error> {
        let (ns, sn) = (self.namespace.as_str(), self.name.as_str());
        let txn = self.metadata.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
        let record = get_record(&table, ns, sn, key)?.ok_or_else(|| not_found(key))?;
        let labels = labels_of(
            &txn.open_table(SNAPSHOT_LABELS).map_err(storage)?,
            ns,
            sn,
            key,
        )?;
        Ok((record, labels))
    }

    fn info(key: &str, record: &Record, labels: Labels) -> Info {
        Info {
            kind: record.kind,
            name: key.to_string(),
            parent: record.parent.clone(),
            labels,
            created_at: from_nanos(record.created),
            updated_at: from_nanos(record.updated),
        }
    }

    /// Reserves the key and allocates a backend key, checking the parent. Returns the
    /// backend key, the parent's backend key and the change's slot in the namespace's event
    /// order.
    async fn reserve(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: &Labels,
    ) -> Result<(String, String, super::order::Slot), Error> {
        validate_key("key", key)?;
        if !parent.is_empty() {
            validate_key("parent", parent)?;
        }
        for (k, v) in labels {
            validate_label(k, v)?;
        }
        let (metadata, ns, sn) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
        );
        let (key, parent, labels) = (key.to_string(), parent.to_string(), labels.clone());
        let (lease, kind_name) = (self.lease.clone(), self.resource_kind());
        blocking(move || {
            // The namespace is created in the same transaction, so that a refused
            // snapshot (a missing lease or parent) creates nothing.
            let txn = metadata.db.begin_write()?;
            super::objects::ensure_namespace(&txn, &ns)?;
            super::objects::bind(
                &txn,
                &metadata.gc.barrier,
                &ns,
                lease.as_deref(),
                &kind_name,
                &key,
            )?;
            let result = {
                let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
                if get_record(&table, &ns, &sn, &key)?.is_some() {
                    // As in containerd, the lease holds the existing snapshot all the same:
                    // a client that finds its snapshot made already goes on to use it.
                    drop(table);
                    txn.commit()?;
                    return Err(Error::already_exists(format!(
                        "snapshot {key:?}: already exists"
                    )));
                }
                let parent_backend = if parent.is_empty() {
                    String::new()
                } else {
                    let parent_record =
                        get_record(&table, &ns, &sn, &parent)?.ok_or_else(|| {
                            Error::not_found(format!("parent snapshot {parent:?} does not exist"))
                        })?;
                    if parent_record.kind != Kind::Committed {
                        return Err(Error::failed_precondition(format!(
                            "parent snapshot {parent:?} is {}, not committed: commit it first",
                            parent_record.kind.as_str()
                        )));
                    }
                    parent_record.backend
                };
                drop(table);
                let backend = backend_key(&txn, &ns, &key)?;
                let now = now_nanos();
                let record = Record {
                    kind,
                    parent: parent.clone(),
                    backend: backend.clone(),
                    created: now,
                    updated: now,
                };
                insert_record(&txn, &metadata.gc.barrier, &ns, &sn, &key, &record)?;
                write_labels(&txn, &ns, &sn, &key, &labels)?;
                (backend, parent_backend)
            };
            let slot = metadata.slot(&ns);
            txn.commit()?;
            Ok((result.0, result.1, slot))
        })
        .await
    }

    /// Removes the record of `key`, and the hold of this view's lease on it; returns the
    /// change's slot in the namespace's event order.
    async fn drop_record(&self, key: &str) -> Result<super::order::Slot, Error> {
        let (metadata, ns, sn, key) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
            key.to_string(),
        );
        let (lease, kind_name) = (self.lease.clone(), self.resource_kind());
        blocking(move || {
            let txn = metadata.db.begin_write()?;
            remove_record(&txn, &ns, &sn, &key)?;
            super::objects::unbind(&txn, &ns, lease.as_deref(), &kind_name, &key)?;
            let slot = metadata.slot(&ns);
            txn.commit()?;
            Ok(slot)
        })
        .await
    }

    async fn create(
        &self,
        key: &str,
        parent: &str,
        labels: Labels,
        kind: Kind,
    ) -> Result<Vec<Mount>, Error> {
        let backend = self.backend()?;
        let _guard = self.metadata.snapshot_lock(&self.namespace).await;
        let (backend_key, backend_parent, slot) = self.reserve(key, parent, kind, &labels).await?;
        let result = match kind {
            Kind::View => {
                backend
                    .view(&backend_key, &backend_parent, Labels::new())
                    .await
            }
            _ => {
                backend
                    .prepare(&backend_key, &backend_parent, Labels::new())
                    .await
            }
        };
        if result.is_err() {
            drop(slot);
            let _ = self.drop_record(key).await;
        } else {
            self.metadata.mutated(false);
            // A view publishes nothing, as in containerd.
            if kind == Kind::Active {
                let event = SnapshotPrepare {
                    key: key.to_string(),
                    parent: parent.to_string(),
                };
                let publication =
                    self.metadata
                        .publication(&self.namespace, "/snapshot/prepare", event);
                slot.publish(publication);
            }
        }
        result
    }
}

#[tonic::async_trait]
impl Snapshotter for NamespacedSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info, Error> {
        validate_key("key", key)?;
        let (record, labels) = self.record(key)?;
        Ok(Self::info(key, &record, labels))
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        validate_key("key", &info.name)?;
        let _guard = self.metadata.snapshot_lock(&self.namespace).await;
        let (mut record, mut labels) = self.record(&info.name)?;
        apply_label_paths(&mut labels, &info.labels, fieldpaths)?;
        record.updated = now_nanos();
        let (metadata, ns, sn, key) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
            info.name.clone(),
        );
        let (r, l) = (record.clone(), labels.clone());
        blocking(move || {
            let txn = metadata.db.begin_write()?;
            insert_record(&txn, &metadata.gc.barrier, &ns, &sn, &key, &r)?;
            write_labels(&txn, &ns, &sn, &key, &l)?;
            txn.commit()
        })
        .await?;
        Ok(Self::info(&info.name, &record, labels))
    }

    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        validate_key("key", key)?;
        let (record, _) = self.record(key)?;
        self.backend()?.usage(&record.backend).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        validate_key("key", key)?;
        let (record, _) = self.record(key)?;
        if record.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {key:?} is committed: mount a view or an active snapshot of it"
            )));
        }
        self.backend()?.mounts(&record.backend).await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        self.create(key, parent, labels, Kind::Active).await
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        self.create(key, parent, labels, Kind::View).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
        validate_key("name", name)?;
        validate_key("key", key)?;
        for (k, v) in &labels {
            validate_label(k, v)?;
        }
        let backend = self.backend()?;
        let _guard = self.metadata.snapshot_lock(&self.namespace).await;
        let (record, _) = self.record(key)?;
        if record.kind != Kind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key:?} is {}: only active snapshots can be committed",
                record.kind.as_str()
            )));
        }
        let (metadata, ns, sn) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
        );
        let name_owned = name.to_string();
        let (lease, kind_name) = (self.lease.clone(), self.resource_kind());
        let backend_name = blocking(move || {
            let txn = metadata.db.begin_write()?;
            super::objects::bind(
                &txn,
                &metadata.gc.barrier,
                &ns,
                lease.as_deref(),
                &kind_name,
                &name_owned,
            )?;
            let backend_name = {
                let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
                if get_record(&table, &ns, &sn, &name_owned)?.is_some() {
                    // The lease holds the existing snapshot all the same, as on prepare.
                    drop(table);
                    txn.commit()?;
                    return Err(Error::already_exists(format!(
                        "snapshot {name_owned:?}: already exists"
                    )));
                }
                drop(table);
                backend_key(&txn, &ns, &name_owned)?
            };
            txn.commit()?;
            Ok(backend_name)
        })
        .await?;
        backend
            .commit(&backend_name, &record.backend, Labels::new())
            .await?;
        let (metadata, ns, sn, key, name) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
            key.to_string(),
            name.to_string(),
        );
        let (key_owned, name_event) = (key.clone(), name.clone());
        let (lease, kind_name) = (self.lease.clone(), self.resource_kind());
        let slot = blocking(move || {
            let txn = metadata.db.begin_write()?;
            // A collection may have removed the active snapshot since it was read (nothing
            // held it), and its parent with it: then there is nothing to commit, and the
            // backend's committed snapshot is left for the next collection to remove.
            if get_record(&txn.open_table(SNAPSHOTS).map_err(storage)?, &ns, &sn, &key)?.is_none() {
                return Err(not_found(&key));
            }
            remove_record(&txn, &ns, &sn, &key)?;
            // The active snapshot is gone: the lease now holds the committed one instead.
            super::objects::unbind(&txn, &ns, lease.as_deref(), &kind_name, &key)?;
            let now = now_nanos();
            let committed = Record {
                kind: Kind::Committed,
                parent: record.parent,
                backend: backend_name,
                created: now,
                updated: now,
            };
            insert_record(&txn, &metadata.gc.barrier, &ns, &sn, &name, &committed)?;
            write_labels(&txn, &ns, &sn, &name, &labels)?;
            let slot = metadata.slot(&ns);
            txn.commit()?;
            Ok(slot)
        })
        .await?;
        self.metadata.mutated(false);
        let event = SnapshotCommit {
            key: key_owned,
            name: name_event,
        };
        slot.publish(
            self.metadata
                .publication(&self.namespace, "/snapshot/commit", event),
        );
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), Error> {
        validate_key("key", key)?;
        let backend = self.backend()?;
        let _guard = self.metadata.snapshot_lock(&self.namespace).await;
        let (record, _) = self.record(key)?;
        let (metadata, ns, sn, k) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
            key.to_string(),
        );
        let child = blocking(move || {
            let txn = metadata.db.begin_read()?;
            let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            for item in table
                .range((ns.as_str(), sn.as_str(), "")..)
                .map_err(storage)?
            {
                let (key, value) = item.map_err(storage)?;
                let (n, s, name) = key.value();
                if n != ns || s != sn {
                    break;
                }
                crate::walk_record()?;
                if value.value().1 == k {
                    return Ok(Some(name.to_string()));
                }
            }
            Ok(None)
        })
        .await?;
        if let Some(child) = child {
            return Err(Error::failed_precondition(format!(
                "cannot remove snapshot {key:?}: snapshot {child:?} is its child; remove the children first"
            )));
        }
        match backend.remove(&record.backend).await {
            Err(e) if e.category != plinth_core::Category::NotFound => return Err(e),
            _ => {}
        }
        let slot = self.drop_record(key).await?;
        self.metadata.mutated(true);
        let event = SnapshotRemove {
            key: key.to_string(),
        };
        slot.publish(
            self.metadata
                .publication(&self.namespace, "/snapshot/remove", event),
        );
        Ok(())
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filters = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let (metadata, ns, sn) = (
            self.metadata.clone(),
            self.namespace.clone(),
            self.name.clone(),
        );
        crate::list("metadata snapshot list", move || {
            let txn = metadata.db.begin_read()?;
            let table = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let labels_table = txn.open_table(SNAPSHOT_LABELS).map_err(storage)?;
            let mut label_rows = LabelRows::new(
                labels_table
                    .range((ns.as_str(), sn.as_str(), "", "")..)
                    .map_err(storage)?,
            )?;
            let mut out = Vec::new();
            for item in table
                .range((ns.as_str(), sn.as_str(), "")..)
                .map_err(storage)?
            {
                let (key, value) = item.map_err(storage)?;
                let (n, s, name) = key.value();
                if n != ns || s != sn {
                    break;
                }
                crate::walk_record()?;
                let (kind, parent, backend, created, updated) = value.value();
                let record = Record {
                    kind: kind_of(kind),
                    parent: parent.to_string(),
                    backend: backend.to_string(),
                    created,
                    updated,
                };
                let info = NamespacedSnapshotter::info(
                    name,
                    &record,
                    label_rows.labels(
                        |row| {
                            let (n, s, k, _) = row.value();
                            (n, s, k).cmp(&(ns.as_str(), sn.as_str(), name))
                        },
                        |row| row.value().3.to_string(),
                    )?,
                );
                let matched = filters.matches(|path| match path {
                    [f] if f == "kind" => Some(info.kind.as_str().to_string()),
                    [f] if f == "name" => Some(info.name.clone()),
                    [f] if f == "parent" => Some(info.parent.clone()).filter(|p| !p.is_empty()),
                    [f, ..] if f == "labels" => crate::filters::label_field(path, &info.labels),
                    _ => None,
                });
                if matched {
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn cleanup(&self) -> Result<(), Error> {
        let backend = self.backend()?;
        let _guard = self.metadata.snapshot_lock_all().await;
        let (metadata, sn) = (self.metadata.clone(), self.name.clone());
        let referenced: BTreeSet<String> = blocking(move || {
            let txn = metadata.db.begin_read()?;
            let table: redb::ReadOnlyTable<_, _> = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let mut out = BTreeSet::new();
            for item in table.iter().map_err(storage)? {
                let (key, value) = item.map_err(storage)?;
                if key.value().1 == sn {
                    out.insert(value.value().2.to_string());
                }
            }
            Ok(out)
        })
        .await?;
        // Backend snapshots no record refers to (a crash between the backend call and the
        // record) are removed, children before parents, in an order planned from one walk: a
        // backend that says it removed a snapshot but still lists it is an error, not a
        // reason to walk again forever.
        let mut orphans: Vec<Info> = backend
            .walk(&[])
            .await?
            .into_iter()
            .filter(|i| !referenced.contains(&i.name))
            .collect();
        let mut removed = BTreeSet::new();
        while !orphans.is_empty() {
            let parents: BTreeSet<String> = orphans.iter().map(|i| i.parent.clone()).collect();
            let (leaves, rest): (Vec<Info>, Vec<Info>) = orphans
                .into_iter()
                .partition(|i| !parents.contains(&i.name));
            if leaves.is_empty() {
                // Only a cycle of parents leaves no leaf; a walk never reports one.
                break;
            }
            for leaf in leaves {
                tracing::info!(snapshotter = %self.name, key = %leaf.name, "removing a snapshot no namespace refers to");
                backend.remove(&leaf.name).await?;
                removed.insert(leaf.name);
            }
            orphans = rest;
        }
        if !removed.is_empty()
            && let Some(left) = backend
                .walk(&[])
                .await?
                .into_iter()
                .find(|i| removed.contains(&i.name))
        {
            return Err(Error::internal(format!(
                "snapshotter `{}` still lists snapshot `{}` after removing it without error; \
                 its remove is broken: check its logs and its root directory",
                self.name, left.name
            )));
        }
        backend.cleanup().await
    }
}
