//! Images, containers and leases in the metadata database: one encoded record per object
//! (see `records`), keyed by (namespace, name). Every change is one write transaction, and
//! creating an object in a namespace creates the namespace in the same transaction, as
//! containerd does on first use.

use std::time::SystemTime;

use plinth_api::containerd::events::container_create::Runtime as RuntimeEvent;
use plinth_api::containerd::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, ImageCreate, ImageDelete, ImageUpdate,
};
use prost::Message as _;
use redb::{ReadableTable, Table, WriteTransaction};

use super::batch::Create;
use super::gc::Barrier;
use super::records::{ContainerRecord, ImageRecord, LeaseRecord};
use super::schema::{CONTAINERS, IMAGES, LEASE_RESOURCES, LEASES, NAMESPACES};
use super::{Metadata, from_nanos, now_nanos, storage, to_nanos};
use crate::containers::{Container, ContainerStore, Runtime};
use crate::error::Error;
use crate::filters::FilterSet;
use crate::images::{Descriptor, Image, ImageStore};
use crate::leases::{Lease, LeaseManager, Resource, validate_lease};
use crate::namespaces::{Labels, validate_identifier};

/// Creates `namespace` in `txn` when it does not exist yet.
pub(crate) fn ensure_namespace(txn: &WriteTransaction, namespace: &str) -> Result<(), Error> {
    validate_identifier("namespace", namespace)?;
    let mut namespaces = txn.open_table(NAMESPACES).map_err(storage)?;
    if namespaces.get(namespace).map_err(storage)?.is_none() {
        namespaces.insert(namespace, now_nanos()).map_err(storage)?;
    }
    Ok(())
}

/// Binds a new object to `lease` in `txn`: the lease must exist in `namespace`.
pub(crate) fn bind(
    txn: &WriteTransaction,
    barrier: &Barrier,
    namespace: &str,
    lease: Option<&str>,
    kind: &str,
    id: &str,
) -> Result<(), Error> {
    let Some(lease) = lease else {
        return Ok(());
    };
    barrier.resource(namespace, kind, id);
    let leases = txn.open_table(LEASES).map_err(storage)?;
    if leases.get((namespace, lease)).map_err(storage)?.is_none() {
        return Err(lease_not_found(namespace, lease));
    }
    txn.open_table(LEASE_RESOURCES)
        .map_err(storage)?
        .insert((namespace, lease, kind, id), ())
        .map_err(storage)?;
    Ok(())
}

/// Drops `lease`'s hold on an object in `txn` (an object removed or replaced through a
/// request naming the lease, as containerd does); nothing when the lease does not exist or
/// does not hold it.
pub(crate) fn unbind(
    txn: &WriteTransaction,
    namespace: &str,
    lease: Option<&str>,
    kind: &str,
    id: &str,
) -> Result<(), Error> {
    let Some(lease) = lease else {
        return Ok(());
    };
    txn.open_table(LEASE_RESOURCES)
        .map_err(storage)?
        .remove((namespace, lease, kind, id))
        .map_err(storage)?;
    Ok(())
}

impl Metadata {
    /// The publication of `create`'s event, once committed: `/images/create` or
    /// `/containers/create`, with containerd's payload.
    pub(super) fn created(&self, create: Create) -> impl FnOnce() + Send + 'static {
        let publish: Box<dyn FnOnce() + Send> = match create {
            Create::Image(namespace, image) => Box::new(self.publication(
                &namespace,
                "/images/create",
                ImageCreate {
                    name: image.name,
                    labels: image.labels.into_iter().collect(),
                },
            )),
            Create::Container(namespace, container) => Box::new(self.publication(
                &namespace,
                "/containers/create",
                ContainerCreate {
                    id: container.id,
                    image: container.image,
                    runtime: Some(RuntimeEvent {
                        name: container.runtime.name,
                        options: container.runtime.options,
                    }),
                },
            )),
        };
        publish
    }
}

/// Notes for the collector's barrier what an image written in `txn` refers to.
pub(super) fn note_image(barrier: &Barrier, namespace: &str, image: &Image) {
    barrier.content(namespace, &image.target.digest);
    barrier.labels(namespace, &image.labels);
}

/// Notes for the collector's barrier what a container written in `txn` refers to.
pub(super) fn note_container(barrier: &Barrier, namespace: &str, container: &Container) {
    if !container.snapshotter.is_empty() {
        barrier.snapshot(namespace, &container.snapshotter, &container.snapshot_key);
    }
    barrier.labels(namespace, &container.labels);
}

fn lease_not_found(namespace: &str, lease: &str) -> Error {
    Error::not_found(format!(
        "lease {lease:?}: not found in namespace {namespace:?}: create it first (ctr leases create)"
    ))
}

fn decode<M: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<M, Error> {
    M::decode(bytes).map_err(|e| {
        Error::data_loss(format!(
            "the metadata record of {what} does not decode: {e}; the database is damaged"
        ))
    })
}

/// The objects of `namespace` in a table keyed by (namespace, name) that `keep` keeps: each
/// record is decoded, made an object and kept or dropped as it is read, so that a list
/// holds one vector of what it returns and nothing more (ten thousand images are a few MB).
fn scan<M: prost::Message + Default, T>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    namespace: &str,
    mut keep: impl FnMut(String, M) -> Option<T>,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    for item in table.range((namespace, "")..).map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (ns, name) = key.value();
        if ns != namespace {
            break;
        }
        crate::walk_record()?;
        let record = decode(name, value.value())?;
        out.extend(keep(name.to_string(), record));
    }
    Ok(out)
}

fn filters(filters: &[String]) -> Result<FilterSet, Error> {
    FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))
}

/// Applies containerd's `labels` / `labels.<key>` paths (and the same for another map, with
/// `prefix`) from `requested` into `current`: a missing or empty value removes the key.
fn apply_map<V: Clone>(
    current: &mut std::collections::BTreeMap<String, V>,
    requested: &std::collections::BTreeMap<String, V>,
    key: &str,
    empty: impl Fn(&V) -> bool,
) {
    match requested.get(key).filter(|v| !empty(v)) {
        Some(value) => {
            current.insert(key.to_string(), value.clone());
        }
        None => {
            current.remove(key);
        }
    }
}

fn image_of(name: String, record: ImageRecord) -> Image {
    Image {
        name,
        labels: record.labels,
        target: Descriptor {
            media_type: record.media_type,
            digest: record.digest,
            size: record.size,
            annotations: record.annotations,
        },
        created: from_nanos(record.created),
        updated: from_nanos(record.updated),
    }
}

pub(super) fn image_record(image: &Image) -> ImageRecord {
    ImageRecord {
        labels: image.labels.clone(),
        media_type: image.target.media_type.clone(),
        digest: image.target.digest.clone(),
        size: image.target.size,
        annotations: image.target.annotations.clone(),
        created: to_nanos(image.created),
        updated: to_nanos(image.updated),
    }
}

/// Table of records keyed by (namespace, name).
type Records = redb::TableDefinition<'static, (&'static str, &'static str), &'static [u8]>;

/// The decoded record `name` of `namespace` in `table`, or `missing(name)`.
fn read_record<M: prost::Message + Default>(
    metadata: &Metadata,
    table: Records,
    namespace: &str,
    name: &str,
    missing: fn(&str) -> Error,
) -> Result<M, Error> {
    let txn = metadata.db.begin_read()?;
    let table = txn.open_table(table).map_err(storage)?;
    let value = table
        .get((namespace, name))
        .map_err(storage)?
        .ok_or_else(|| missing(name))?;
    decode(name, value.value())
}

/// Removes the record `name` of `namespace` from `table` in one transaction, or
/// `missing(name)`; returns the change's slot in the namespace's event order.
fn remove_record(
    metadata: &Metadata,
    table: Records,
    namespace: &str,
    name: &str,
    missing: fn(&str) -> Error,
) -> Result<super::order::Slot, Error> {
    let txn = metadata.db.begin_write()?;
    if txn
        .open_table(table)
        .map_err(storage)?
        .remove((namespace, name))
        .map_err(storage)?
        .is_none()
    {
        return Err(missing(name));
    }
    let slot = metadata.slot(namespace);
    txn.commit()?;
    Ok(slot)
}

fn image_not_found(name: &str) -> Error {
    Error::not_found(format!("image {name:?}: not found"))
}

impl ImageStore for Metadata {
    fn get(&self, namespace: &str, name: &str) -> Result<Image, Error> {
        let record = read_record(self, IMAGES, namespace, name, image_not_found)?;
        Ok(image_of(name.to_string(), record))
    }

    fn list(&self, namespace: &str, filter: &[String]) -> Result<Vec<Image>, Error> {
        let filter = filters(filter)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES).map_err(storage)?;
        scan(&table, namespace, |name, record| {
            let image = image_of(name, record);
            filter.matches(|path| image.field(path)).then_some(image)
        })
    }

    fn create(&self, namespace: &str, mut image: Image) -> Result<Image, Error> {
        image.validate()?;
        let now = SystemTime::now();
        image.created = now;
        image.updated = now;
        self.create_in_batch(Create::Image(namespace.to_string(), image.clone()))?;
        Ok(image)
    }

    fn update(&self, namespace: &str, image: Image, fieldpaths: &[String]) -> Result<Image, Error> {
        if image.name.is_empty() {
            return Err(Error::invalid("image name is required for an update"));
        }
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(IMAGES).map_err(storage)?;
            let mut updated = match table
                .get((namespace, image.name.as_str()))
                .map_err(storage)?
            {
                Some(value) => image_of(image.name.clone(), decode(&image.name, value.value())?),
                None => return Err(image_not_found(&image.name)),
            };
            if fieldpaths.is_empty() {
                updated.labels = image.labels.clone();
                updated.target = image.target.clone();
            }
            for path in fieldpaths {
                if let Some(key) = path.strip_prefix("labels.") {
                    apply_map(&mut updated.labels, &image.labels, key, String::is_empty);
                } else if let Some(key) = path.strip_prefix("annotations.") {
                    apply_map(
                        &mut updated.target.annotations,
                        &image.target.annotations,
                        key,
                        String::is_empty,
                    );
                } else {
                    match path.as_str() {
                        "labels" => updated.labels = image.labels.clone(),
                        "target" => updated.target = image.target.clone(),
                        "annotations" => {
                            updated.target.annotations = image.target.annotations.clone();
                        }
                        _ => {
                            return Err(Error::invalid(format!(
                                "cannot update {path:?} field on image {:?}: use labels, labels.<key>, target, annotations or annotations.<key>",
                                image.name
                            )));
                        }
                    }
                }
            }
            updated.validate()?;
            updated.updated = SystemTime::now();
            let bytes = image_record(&updated).encode_to_vec();
            table
                .insert((namespace, image.name.as_str()), bytes.as_slice())
                .map_err(storage)?;
            note_image(&self.gc.barrier, namespace, &updated);
            updated
        };
        let slot = self.slot(namespace);
        txn.commit()?;
        self.mutated(false);
        slot.publish(self.publication(
            namespace,
            "/images/update",
            ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone().into_iter().collect(),
            },
        ));
        Ok(updated)
    }

    fn delete(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let slot = remove_record(self, IMAGES, namespace, name, image_not_found)?;
        self.mutated(true);
        let event = ImageDelete {
            name: name.to_string(),
        };
        slot.publish(self.publication(namespace, "/images/delete", event));
        Ok(())
    }
}

fn container_of(id: String, record: ContainerRecord) -> Container {
    Container {
        id,
        labels: record.labels,
        image: record.image,
        runtime: Runtime {
            name: record.runtime_name,
            options: record.runtime_options,
        },
        spec: record.spec,
        snapshotter: record.snapshotter,
        snapshot_key: record.snapshot_key,
        created: from_nanos(record.created),
        updated: from_nanos(record.updated),
        extensions: record.extensions,
        sandbox: record.sandbox,
    }
}

pub(super) fn container_record(container: &Container) -> ContainerRecord {
    ContainerRecord {
        labels: container.labels.clone(),
        image: container.image.clone(),
        runtime_name: container.runtime.name.clone(),
        runtime_options: container.runtime.options.clone(),
        spec: container.spec.clone(),
        snapshotter: container.snapshotter.clone(),
        snapshot_key: container.snapshot_key.clone(),
        created: to_nanos(container.created),
        updated: to_nanos(container.updated),
        extensions: container.extensions.clone(),
        sandbox: container.sandbox.clone(),
    }
}

fn container_not_found(id: &str) -> Error {
    Error::not_found(format!("container {id:?}: not found"))
}

impl ContainerStore for Metadata {
    fn get(&self, namespace: &str, id: &str) -> Result<Container, Error> {
        // No id check: an id no container can have is simply not found, as in containerd.
        let record = read_record(self, CONTAINERS, namespace, id, container_not_found)?;
        Ok(container_of(id.to_string(), record))
    }

    fn list(&self, namespace: &str, filter: &[String]) -> Result<Vec<Container>, Error> {
        let filter = filters(filter)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTAINERS).map_err(storage)?;
        scan(&table, namespace, |id, record| {
            let container = container_of(id, record);
            filter
                .matches(|path| container.field(path))
                .then_some(container)
        })
    }

    fn create(&self, namespace: &str, mut container: Container) -> Result<Container, Error> {
        container.validate()?;
        let now = SystemTime::now();
        container.created = now;
        container.updated = now;
        self.create_in_batch(Create::Container(namespace.to_string(), container.clone()))?;
        Ok(container)
    }

    fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: &[String],
    ) -> Result<Container, Error> {
        if container.id.is_empty() {
            return Err(Error::invalid("a container id is required for an update"));
        }
        let id = container.id.as_str();
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(CONTAINERS).map_err(storage)?;
            let mut updated = match table.get((namespace, id)).map_err(storage)? {
                Some(value) => container_of(id.to_string(), decode(id, value.value())?),
                None => return Err(container_not_found(id)),
            };
            let all = ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from);
            let fieldpaths = if fieldpaths.is_empty() {
                // A whole replacement may not change what cannot change.
                if updated.snapshotter != container.snapshotter {
                    return Err(Error::invalid(format!(
                        "container {id:?}: the snapshotter cannot be changed (it is {:?})",
                        updated.snapshotter
                    )));
                }
                if updated.runtime.name != container.runtime.name {
                    return Err(Error::invalid(format!(
                        "container {id:?}: the runtime name cannot be changed (it is {:?})",
                        updated.runtime.name
                    )));
                }
                &all[..]
            } else {
                fieldpaths
            };
            for path in fieldpaths {
                if let Some(key) = path.strip_prefix("labels.") {
                    apply_map(
                        &mut updated.labels,
                        &container.labels,
                        key,
                        String::is_empty,
                    );
                } else if let Some(key) = path.strip_prefix("extensions.") {
                    apply_map(&mut updated.extensions, &container.extensions, key, |_| {
                        false
                    });
                } else {
                    match path.as_str() {
                        "labels" => updated.labels = container.labels.clone(),
                        "spec" => updated.spec = container.spec.clone(),
                        "extensions" => updated.extensions = container.extensions.clone(),
                        "image" => updated.image = container.image.clone(),
                        "snapshotkey" => updated.snapshot_key = container.snapshot_key.clone(),
                        _ => {
                            return Err(Error::invalid(format!(
                                "cannot update {path:?} field on container {id:?}: use labels, labels.<key>, spec, extensions, extensions.<name>, image or snapshotkey"
                            )));
                        }
                    }
                }
            }
            updated.validate()?;
            updated.updated = SystemTime::now();
            let bytes = container_record(&updated).encode_to_vec();
            table
                .insert((namespace, id), bytes.as_slice())
                .map_err(storage)?;
            note_container(&self.gc.barrier, namespace, &updated);
            updated
        };
        let slot = self.slot(namespace);
        txn.commit()?;
        self.mutated(false);
        slot.publish(self.publication(
            namespace,
            "/containers/update",
            ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone().into_iter().collect(),
                snapshot_key: updated.snapshot_key.clone(),
            },
        ));
        Ok(updated)
    }

    fn delete(&self, namespace: &str, id: &str) -> Result<(), Error> {
        let slot = remove_record(self, CONTAINERS, namespace, id, container_not_found)?;
        self.mutated(true);
        let event = ContainerDelete { id: id.to_string() };
        slot.publish(self.publication(namespace, "/containers/delete", event));
        Ok(())
    }
}

/// A random lease id, as `ctr leases create` without an id makes one: the time and random
/// bits, so that ids sort by creation.
fn random_lease_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_nanos());
    format!("{}-{:016x}", now_nanos() / 1_000, hasher.finish())
}

fn lease_resources(
    table: &impl ReadableTable<super::schema::LeaseResourceKey, ()>,
    namespace: &str,
    lease: &str,
) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::new();
    for item in table.range((namespace, lease, "", "")..).map_err(storage)? {
        let (key, ()) = item.map(|(k, _)| (k, ())).map_err(storage)?;
        let (ns, l, kind, id) = key.value();
        if ns != namespace || l != lease {
            break;
        }
        crate::walk_record()?;
        out.push(Resource {
            kind: kind.to_string(),
            id: id.to_string(),
        });
    }
    Ok(out)
}

fn require_lease(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    namespace: &str,
    lease: &str,
) -> Result<(), Error> {
    if table.get((namespace, lease)).map_err(storage)?.is_none() {
        return Err(lease_not_found(namespace, lease));
    }
    Ok(())
}

fn remove_resources(
    table: &mut Table<'_, super::schema::LeaseResourceKey, ()>,
    namespace: &str,
    lease: &str,
) -> Result<(), Error> {
    for resource in lease_resources(table, namespace, lease)? {
        table
            .remove((
                namespace,
                lease,
                resource.kind.as_str(),
                resource.id.as_str(),
            ))
            .map_err(storage)?;
    }
    Ok(())
}

impl LeaseManager for Metadata {
    fn create(&self, namespace: &str, id: &str, labels: Labels) -> Result<Lease, Error> {
        let id = if id.is_empty() {
            random_lease_id()
        } else {
            id.to_string()
        };
        validate_lease(&id, &labels)?;
        let record = LeaseRecord {
            created: now_nanos(),
            labels,
        };
        let txn = self.db.begin_write()?;
        ensure_namespace(&txn, namespace)?;
        {
            let mut table = txn.open_table(LEASES).map_err(storage)?;
            if table
                .get((namespace, id.as_str()))
                .map_err(storage)?
                .is_some()
            {
                return Err(Error::already_exists(format!(
                    "lease {id:?}: already exists"
                )));
            }
            let bytes = record.encode_to_vec();
            table
                .insert((namespace, id.as_str()), bytes.as_slice())
                .map_err(storage)?;
            // A lease of this id deleted before may have left its resource rows (see
            // `delete`): the new lease starts with none.
            let mut resources = txn.open_table(LEASE_RESOURCES).map_err(storage)?;
            remove_resources(&mut resources, namespace, &id)?;
            self.gc.barrier.lease(namespace, &id);
            self.gc.barrier.labels(namespace, &record.labels);
        }
        txn.commit()?;
        self.notify(crate::gc::Mutation {
            dirty: false,
            expiry: super::gc::expiry(&record.labels),
        });
        Ok(Lease {
            id,
            created: from_nanos(record.created),
            labels: record.labels,
        })
    }

    fn delete(&self, namespace: &str, id: &str) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LEASES).map_err(storage)?;
            if table.remove((namespace, id)).map_err(storage)?.is_none() {
                return Err(lease_not_found(namespace, id));
            }
            // Its resource rows stay behind, inert (nothing reads the resources of a lease
            // that does not exist), and are removed after the next collection: deleting
            // them here costs a B-tree removal each, which made deleting a lease of 120 000
            // resources take seconds. See `super::gc::remove_stale_resources`.
        }
        txn.commit()?;
        self.mutated(true);
        Ok(())
    }

    fn list(&self, namespace: &str, filter: &[String]) -> Result<Vec<Lease>, Error> {
        let filter = filters(filter)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEASES).map_err(storage)?;
        scan(&table, namespace, |id, record: LeaseRecord| {
            let lease = Lease {
                id,
                created: from_nanos(record.created),
                labels: record.labels,
            };
            filter
                .matches(|path| match path {
                    [f] if f == "id" => Some(lease.id.clone()),
                    [f, ..] if f == "labels" => crate::filters::label_field(path, &lease.labels),
                    _ => None,
                })
                .then_some(lease)
        })
    }

    fn add_resource(&self, namespace: &str, lease: &str, resource: &Resource) -> Result<(), Error> {
        resource.validate()?;
        let txn = self.db.begin_write()?;
        bind(
            &txn,
            &self.gc.barrier,
            namespace,
            Some(lease),
            &resource.kind,
            &resource.id,
        )?;
        txn.commit()?;
        self.mutated(false);
        Ok(())
    }

    fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: &Resource,
    ) -> Result<(), Error> {
        resource.validate()?;
        let txn = self.db.begin_write()?;
        {
            require_lease(&txn.open_table(LEASES).map_err(storage)?, namespace, lease)?;
            txn.open_table(LEASE_RESOURCES)
                .map_err(storage)?
                .remove((
                    namespace,
                    lease,
                    resource.kind.as_str(),
                    resource.id.as_str(),
                ))
                .map_err(storage)?;
        }
        txn.commit()?;
        self.mutated(true);
        Ok(())
    }

    fn list_resources(&self, namespace: &str, lease: &str) -> Result<Vec<Resource>, Error> {
        let txn = self.db.begin_read()?;
        require_lease(&txn.open_table(LEASES).map_err(storage)?, namespace, lease)?;
        lease_resources(
            &txn.open_table(LEASE_RESOURCES).map_err(storage)?,
            namespace,
            lease,
        )
    }
}

#[cfg(test)]
mod tests {
    use plinth_core::Category;

    use super::*;
    use crate::namespaces::NamespaceStore;

    fn store() -> (tempfile::TempDir, Metadata) {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        (dir, metadata)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(name: &str) -> Image {
        Image::new(
            name,
            Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: DIGEST.into(),
                size: 10,
                annotations: Labels::new(),
            },
        )
    }

    fn category<T: std::fmt::Debug>(result: Result<T, Error>) -> Category {
        result.unwrap_err().category
    }

    #[test]
    fn images_create_get_list_update_delete_with_containerds_errors() {
        let (_dir, db) = store();
        let mut first = image("docker.io/library/a:1");
        first.labels = labels(&[("kind", "base")]);
        let created = ImageStore::create(&db, "ns", first.clone()).unwrap();
        assert!(created.created > SystemTime::UNIX_EPOCH);
        assert_eq!(created.created, created.updated);
        assert_eq!(ImageStore::get(&db, "ns", &first.name).unwrap(), created);
        assert_eq!(
            category(ImageStore::create(&db, "ns", first.clone())),
            Category::AlreadyExists
        );
        assert_eq!(
            category(ImageStore::get(&db, "other", &first.name)),
            Category::NotFound
        );
        let mut second = image("docker.io/library/b:2");
        second.target.media_type = "application/vnd.oci.image.manifest.v1+json".into();
        ImageStore::create(&db, "ns", second.clone()).unwrap();
        ImageStore::create(&db, "other", image("docker.io/library/c:3")).unwrap();

        let names = |filters: &[&str]| -> Vec<String> {
            let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
            ImageStore::list(&db, "ns", &filters)
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect()
        };
        assert_eq!(
            names(&[]),
            ["docker.io/library/a:1", "docker.io/library/b:2"]
        );
        assert_eq!(names(&["labels.kind==base"]), ["docker.io/library/a:1"]);
        assert_eq!(
            names(&["target.mediatype~=manifest"]),
            ["docker.io/library/b:2"]
        );
        assert_eq!(
            names(&["name==docker.io/library/b:2", "labels.kind"]),
            ["docker.io/library/a:1", "docker.io/library/b:2"]
        );
        assert_eq!(
            names(&[&format!("target.digest=={DIGEST},name~=a:1$")]),
            ["docker.io/library/a:1"]
        );
        assert_eq!(
            category(ImageStore::list(&db, "ns", &["name==\"open".to_string()])),
            Category::InvalidArgument
        );

        // Field paths: one label set, one removed; the target untouched.
        let mut change = image(&first.name);
        change.labels = labels(&[("new", "1")]);
        change.target.digest = "sha256:00".into();
        let updated = ImageStore::update(
            &db,
            "ns",
            change.clone(),
            &["labels.new".to_string(), "labels.kind".to_string()],
        )
        .unwrap();
        assert_eq!(updated.labels, labels(&[("new", "1")]));
        assert_eq!(updated.target.digest, DIGEST);
        assert_eq!(updated.created, created.created);
        assert!(updated.updated >= created.updated);
        // The whole target is replaced, and validated.
        assert_eq!(
            category(ImageStore::update(
                &db,
                "ns",
                change.clone(),
                &["target".to_string()]
            )),
            Category::InvalidArgument
        );
        let error =
            ImageStore::update(&db, "ns", change.clone(), &["name".to_string()]).unwrap_err();
        assert_eq!(error.category, Category::InvalidArgument);
        assert!(
            error.message.contains("cannot update \"name\" field"),
            "{error}"
        );
        assert_eq!(
            category(ImageStore::update(&db, "ns", image("missing"), &[])),
            Category::NotFound
        );
        // No paths: labels and target replaced.
        let mut whole = image(&first.name);
        whole.target.size = 99;
        whole.target.annotations = labels(&[("a", "b")]);
        let replaced = ImageStore::update(&db, "ns", whole, &[]).unwrap();
        assert_eq!(replaced.labels, Labels::new());
        assert_eq!(replaced.target.size, 99);
        assert_eq!(names(&["annotations.a==b"]), [first.name.clone()]);
        assert_eq!(ImageStore::get(&db, "ns", &first.name).unwrap(), replaced);

        ImageStore::delete(&db, "ns", &first.name).unwrap();
        assert_eq!(
            category(ImageStore::delete(&db, "ns", &first.name)),
            Category::NotFound
        );
        assert_eq!(names(&[]), ["docker.io/library/b:2"]);
    }

    #[test]
    fn images_are_validated_as_containerd_validates_them() {
        let (_dir, db) = store();
        let mut cases: Vec<(Image, &str)> = Vec::new();
        cases.push((image(""), "image name must not be empty"));
        let mut bad = image("x");
        bad.target.digest = "sha256:zz".into();
        cases.push((bad, "target digest"));
        let mut bad = image("x");
        bad.target.size = 0;
        cases.push((bad, "target size must be greater than zero"));
        let mut bad = image("x");
        bad.target.media_type.clear();
        cases.push((bad, "target media type must be set"));
        let mut bad = image("x");
        bad.labels = labels(&[("k", &"v".repeat(5000))]);
        cases.push((bad, "greater than maximum size"));
        for (image, expected) in cases {
            let error = ImageStore::create(&db, "ns", image).unwrap_err();
            assert_eq!(error.category, Category::InvalidArgument, "{error}");
            assert!(error.message.contains(expected), "{error}");
        }
        assert!(ImageStore::list(&db, "ns", &[]).unwrap().is_empty());
    }

    fn container(id: &str) -> Container {
        let spec = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        };
        let mut container = Container::new(id, "io.containerd.runc.v2", spec);
        container.image = "docker.io/library/a:1".into();
        container.snapshotter = "native".into();
        container.snapshot_key = id.into();
        container
    }

    #[test]
    fn containers_create_get_list_update_delete_with_containerds_errors() {
        let (_dir, db) = store();
        let mut first = container("one");
        first.labels = labels(&[("app", "web")]);
        first.extensions.insert(
            "ext".into(),
            prost_types::Any {
                type_url: "x".into(),
                value: vec![1, 2],
            },
        );
        let created = ContainerStore::create(&db, "ns", first.clone()).unwrap();
        assert_eq!(ContainerStore::get(&db, "ns", "one").unwrap(), created);
        assert_eq!(created.extensions, first.extensions);
        assert_eq!(
            category(ContainerStore::create(&db, "ns", first.clone())),
            Category::AlreadyExists
        );
        let mut second = container("two");
        second.runtime.name = "io.containerd.other.v1".into();
        ContainerStore::create(&db, "ns", second).unwrap();
        let ids = |filters: &[&str]| -> Vec<String> {
            let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
            ContainerStore::list(&db, "ns", &filters)
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(ids(&[]), ["one", "two"]);
        assert_eq!(ids(&["labels.app==web"]), ["one"]);
        assert_eq!(ids(&["runtime.name~=other"]), ["two"]);
        assert_eq!(ids(&["id==two", "image==nothing"]), ["two"]);
        assert_eq!(ids(&["snapshotter==native,id==one"]), ["one"]);

        let mut change = first.clone();
        change.labels = labels(&[("tier", "1")]);
        change.image = "changed".into();
        change.snapshotter = "overlayfs".into();
        let updated = ContainerStore::update(
            &db,
            "ns",
            change.clone(),
            &["labels.tier".into(), "labels.app".into(), "image".into()],
        )
        .unwrap();
        assert_eq!(updated.labels, labels(&[("tier", "1")]));
        assert_eq!(updated.image, "changed");
        assert_eq!(updated.snapshotter, "native", "not in the paths: kept");
        assert_eq!(updated.created, created.created);
        let error = ContainerStore::update(&db, "ns", change.clone(), &[]).unwrap_err();
        assert_eq!(error.category, Category::InvalidArgument);
        assert!(
            error.message.contains("the snapshotter cannot be changed"),
            "{error}"
        );
        let mut runtime = first.clone();
        runtime.runtime.name = "other".into();
        let error = ContainerStore::update(&db, "ns", runtime, &[]).unwrap_err();
        assert!(
            error.message.contains("the runtime name cannot be changed"),
            "{error}"
        );
        let error =
            ContainerStore::update(&db, "ns", change.clone(), &["runtime".into()]).unwrap_err();
        assert_eq!(error.category, Category::InvalidArgument);
        assert!(
            error.message.contains("cannot update \"runtime\" field"),
            "{error}"
        );
        let mut extensions = first.clone();
        extensions.extensions.clear();
        let cleared =
            ContainerStore::update(&db, "ns", extensions, &["extensions.ext".into()]).unwrap();
        assert!(cleared.extensions.is_empty());
        assert_eq!(
            category(ContainerStore::update(&db, "ns", container("nope"), &[])),
            Category::NotFound
        );

        let invalid: Vec<(Container, &str)> = vec![
            (container("bad/id"), "container id"),
            (
                Container {
                    spec: None,
                    ..container("c")
                },
                "the spec must be set",
            ),
            (
                Container {
                    runtime: Runtime::default(),
                    ..container("c")
                },
                "the runtime name must be set",
            ),
            (
                Container {
                    snapshotter: String::new(),
                    ..container("c")
                },
                "the snapshotter must be set with a snapshot key",
            ),
        ];
        for (container, expected) in invalid {
            let error = ContainerStore::create(&db, "ns", container).unwrap_err();
            assert_eq!(error.category, Category::InvalidArgument, "{error}");
            assert!(error.message.contains(expected), "{error}");
        }
        ContainerStore::delete(&db, "ns", "one").unwrap();
        assert_eq!(
            category(ContainerStore::delete(&db, "ns", "one")),
            Category::NotFound
        );
        assert_eq!(ids(&[]), ["two"]);
    }

    #[test]
    fn leases_hold_resources_until_deleted() {
        let (_dir, db) = store();
        let lease = LeaseManager::create(&db, "ns", "l1", labels(&[("k", "v")])).unwrap();
        assert_eq!(lease.id, "l1");
        assert_eq!(
            category(LeaseManager::create(&db, "ns", "l1", Labels::new())),
            Category::AlreadyExists
        );
        let random = LeaseManager::create(&db, "ns", "", Labels::new()).unwrap();
        assert!(
            validate_identifier("lease", &random.id).is_ok(),
            "{}",
            random.id
        );
        let other = LeaseManager::create(&db, "ns", "", Labels::new()).unwrap();
        assert_ne!(random.id, other.id);
        assert_eq!(
            category(LeaseManager::create(
                &db,
                "ns",
                &"l".repeat(crate::leases::MAX_LEASE_ID + 1),
                Labels::new()
            )),
            Category::InvalidArgument
        );
        // Any other non-empty id, as containerd 1.6 (ctr images mount uses a path).
        LeaseManager::create(&db, "ns", "/mnt/a path", Labels::new()).unwrap();
        let list = |filters: &[&str]| -> Vec<String> {
            let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
            LeaseManager::list(&db, "ns", &filters)
                .unwrap()
                .into_iter()
                .map(|l| l.id)
                .collect()
        };
        assert_eq!(list(&["labels.k==v"]), ["l1"]);
        assert_eq!(list(&["id==l1"]), ["l1"]);
        assert_eq!(list(&[]).len(), 4, "l1, two random ids and the path");

        let resource = |kind: &str, id: &str| Resource {
            kind: kind.into(),
            id: id.into(),
        };
        let held = [
            resource("content", DIGEST),
            resource("ingests", "ref-1"),
            resource("snapshots/native", "key"),
        ];
        for r in &held {
            db.add_resource("ns", "l1", r).unwrap();
            db.add_resource("ns", "l1", r).unwrap();
        }
        db.add_resource("ns", &random.id, &held[0]).unwrap();
        let mut sorted = held.to_vec();
        sorted.sort();
        assert_eq!(db.list_resources("ns", "l1").unwrap(), sorted);
        for (bad, expected) in [
            (
                resource("snapshots/", "x"),
                "invalid snapshot resource type",
            ),
            (resource("content", "sha256:0"), "content resource"),
            (resource("ingests", ""), "needs a ref"),
        ] {
            let error = db.add_resource("ns", "l1", &bad).unwrap_err();
            assert_eq!(error.category, Category::InvalidArgument, "{error}");
            assert!(error.message.contains(expected), "{error}");
        }
        let unknown = db
            .add_resource("ns", "l1", &resource("images", "x"))
            .unwrap_err();
        assert_eq!(unknown.category, Category::Unimplemented, "{unknown}");
        for missing in [
            db.add_resource("ns", "nope", &held[0]),
            db.delete_resource("ns", "nope", &held[0]),
            db.list_resources("other", "l1").map(|_| ()),
            LeaseManager::delete(&db, "other", "l1"),
        ] {
            let error = missing.unwrap_err();
            assert_eq!(error.category, Category::NotFound, "{error}");
            assert!(error.message.contains("lease"), "{error}");
        }
        db.delete_resource("ns", "l1", &held[1]).unwrap();
        db.delete_resource("ns", "l1", &held[1]).unwrap();
        assert_eq!(db.list_resources("ns", "l1").unwrap().len(), 2);

        LeaseManager::delete(&db, "ns", "l1").unwrap();
        assert_eq!(category(db.list_resources("ns", "l1")), Category::NotFound);
        // Re-created, it holds nothing: the old resources went with it.
        LeaseManager::create(&db, "ns", "l1", Labels::new()).unwrap();
        assert!(db.list_resources("ns", "l1").unwrap().is_empty());
        assert_eq!(
            db.list_resources("ns", &random.id).unwrap(),
            [held[0].clone()]
        );
    }

    #[test]
    fn a_namespace_holding_images_containers_or_leases_is_not_deleted() {
        let (_dir, db) = store();
        ImageStore::create(&db, "busy", image("i")).unwrap();
        ContainerStore::create(&db, "busy", container("c")).unwrap();
        LeaseManager::create(&db, "busy", "l", Labels::new()).unwrap();
        let error = NamespaceStore::delete(&db, "busy").unwrap_err();
        assert_eq!(error.category, Category::FailedPrecondition);
        assert_eq!(
            error.message,
            "namespace \"busy\" must be empty, but it still has images, containers, leases: remove them first"
        );
        ImageStore::delete(&db, "busy", "i").unwrap();
        ContainerStore::delete(&db, "busy", "c").unwrap();
        let error = NamespaceStore::delete(&db, "busy").unwrap_err();
        assert!(error.message.contains("still has leases:"), "{error}");
        LeaseManager::delete(&db, "busy", "l").unwrap();
        NamespaceStore::delete(&db, "busy").unwrap();
        assert_eq!(NamespaceStore::list(&db).unwrap(), Vec::new());
    }

    /// `meta-v1.db` was written by plinthd at schema version 1 (before images, containers
    /// and leases): namespaces `fixture-a` (label team=infra) and `fixture-b` (tier=gold);
    /// blobs "first blob\n" (labels containerd.io/gc.root=yes, purpose=fixture) and "second
    /// blob, shared\n" in fixture-a, the second also in fixture-b; native snapshots `base`
    /// (committed) and `child` (active on base, label owner=fixture) in fixture-a and
    /// `b-active` in fixture-b.
    #[test]
    fn a_version_1_database_is_upgraded_in_place_with_every_record() {
        use super::super::schema::{CONTENT, CONTENT_LABELS, SNAPSHOT_LABELS, SNAPSHOTS};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/metadata/meta-v1.db"),
            &path,
        )
        .unwrap();
        let version = |path: &std::path::Path| {
            let db = redb::Database::open(path).unwrap();
            let txn = db.begin_read().unwrap();
            let meta = txn.open_table(crate::redb_store::META).unwrap();
            meta.get("schema_version").unwrap().unwrap().value()
        };
        assert_eq!(version(&path), 1);
        {
            let db = Metadata::open(&path).unwrap();
            assert_eq!(
                NamespaceStore::list(&db).unwrap(),
                vec![
                    ("fixture-a".to_string(), labels(&[("team", "infra")])),
                    ("fixture-b".to_string(), labels(&[("tier", "gold")])),
                ]
            );
            let txn = db.db.begin_read().unwrap();
            let content = txn.open_table(CONTENT).unwrap();
            let blobs: Vec<(String, String, u64)> = content
                .iter()
                .unwrap()
                .map(|item| {
                    let (key, value) = item.unwrap();
                    let (ns, digest) = key.value();
                    (ns.to_string(), digest.to_string(), value.value().0)
                })
                .collect();
            let first = "sha256:498872c16eef677ef47dd126036dbab692e7dddecd2969b9836ba746020ab33e";
            let second = "sha256:28984f16d6d6235592a53bbf14d454165e82cba9826dd0bfe8ce3e0022dd5db4";
            let mut expected = vec![
                ("fixture-a".to_string(), first.to_string(), 11),
                ("fixture-a".to_string(), second.to_string(), 20),
                ("fixture-b".to_string(), second.to_string(), 20),
            ];
            expected.sort();
            assert_eq!(blobs, expected);
            let content_labels: Vec<(String, String)> = txn
                .open_table(CONTENT_LABELS)
                .unwrap()
                .iter()
                .unwrap()
                .map(|item| {
                    let (key, value) = item.unwrap();
                    (key.value().2.to_string(), value.value().to_string())
                })
                .collect();
            assert_eq!(
                content_labels,
                [
                    ("containerd.io/gc.root".to_string(), "yes".to_string()),
                    ("purpose".to_string(), "fixture".to_string())
                ]
            );
            let snapshots: Vec<(String, String, u8, String)> = txn
                .open_table(SNAPSHOTS)
                .unwrap()
                .iter()
                .unwrap()
                .map(|item| {
                    let (key, value) = item.unwrap();
                    let (ns, sn, k) = key.value();
                    let (kind, parent, ..) = value.value();
                    (
                        format!("{ns}/{sn}"),
                        k.to_string(),
                        kind,
                        parent.to_string(),
                    )
                })
                .collect();
            assert_eq!(
                snapshots,
                [
                    ("fixture-a/native".into(), "base".into(), 3, String::new()),
                    ("fixture-a/native".into(), "child".into(), 2, "base".into()),
                    (
                        "fixture-b/native".into(),
                        "b-active".into(),
                        2,
                        String::new()
                    ),
                ]
            );
            let owner: Vec<String> = txn
                .open_table(SNAPSHOT_LABELS)
                .unwrap()
                .iter()
                .unwrap()
                .map(|item| {
                    let (key, value) = item.unwrap();
                    format!("{}={}", key.value().3, value.value())
                })
                .collect();
            assert!(owner.contains(&"owner=fixture".to_string()), "{owner:?}");
            drop(txn);
            // The new tables work on the upgraded file.
            ImageStore::create(&db, "fixture-a", image("new")).unwrap();
            LeaseManager::create(&db, "fixture-b", "l", Labels::new()).unwrap();
        }
        assert_eq!(version(&path), SCHEMA_VERSION_NOW);
        let reopened = Metadata::open(&path).unwrap();
        assert_eq!(
            ImageStore::list(&reopened, "fixture-a", &[]).unwrap().len(),
            1
        );
        assert_eq!(
            LeaseManager::list(&reopened, "fixture-b", &[])
                .unwrap()
                .len(),
            1
        );
    }

    const SCHEMA_VERSION_NOW: u64 = super::super::schema::SCHEMA_VERSION;

    /// The `containerd-lease` header's effect on content: an ingest is held from its first
    /// byte, the blob instead once committed, a blob the namespace has is held even though
    /// nothing is written, and a lease that does not exist opens nothing.
    #[cfg(feature = "content-local")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_holds_the_ingest_then_the_blob() {
        use std::sync::Arc;

        use crate::content::ContentStore;
        use crate::namespaces::NamespacedStores as _;

        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ContentStore> =
            Arc::new(crate::content::local::LocalStore::open(&dir.path().join("content")).unwrap());
        let db = Arc::new(
            Metadata::open_with(
                &dir.path().join("meta.db"),
                Some(local),
                std::collections::BTreeMap::new(),
                super::super::SharingPolicy::Shared,
            )
            .unwrap(),
        );
        LeaseManager::create(db.as_ref(), "ns", "l", Labels::new()).unwrap();
        let leased = Arc::clone(&db).leased_content("ns", Some("l")).unwrap();
        let resource = |kind: &str, id: &str| Resource {
            kind: kind.into(),
            id: id.into(),
        };

        let mut writer = leased.writer("ref-1", 0, None).await.unwrap();
        writer.write(b"leased bytes").await.unwrap();
        assert_eq!(
            db.list_resources("ns", "l").unwrap(),
            [resource("ingests", "ref-1")]
        );
        let digest = writer.commit(0, None, Labels::new()).await.unwrap();
        assert_eq!(
            db.list_resources("ns", "l").unwrap(),
            [resource("content", digest.as_str())]
        );

        LeaseManager::create(db.as_ref(), "ns", "second", Labels::new()).unwrap();
        let second = Arc::clone(&db)
            .leased_content("ns", Some("second"))
            .unwrap();
        let error = second
            .writer("ref-2", 0, Some(digest.clone()))
            .await
            .err()
            .expect("the namespace has the blob");
        assert_eq!(error.category, Category::AlreadyExists);
        assert_eq!(
            db.list_resources("ns", "second").unwrap(),
            [resource("content", digest.as_str())]
        );

        let missing = Arc::clone(&db).leased_content("ns", Some("nope")).unwrap();
        let error = missing
            .writer("ref-3", 0, None)
            .await
            .err()
            .expect("no lease");
        assert_eq!(error.category, Category::NotFound, "{error}");
        assert!(error.message.contains("lease \"nope\""), "{error}");
        let plain = Arc::clone(&db).content("ns").unwrap();
        let statuses = plain.list_statuses(&[]).await.unwrap();
        assert!(statuses.is_empty(), "nothing was opened: {statuses:?}");
    }

    /// Lists longer than a serving thread may walk ([`crate::list`]'s budget) answer whole:
    /// each first attempt stops at the budget and the list is walked again on the read pool.
    #[test]
    fn lists_longer_than_the_inline_budget_answer_whole() {
        use std::sync::Arc;
        let (_dir, db) = store();
        let db = Arc::new(db);
        let n = crate::DEFAULT_INLINE_LIST_RECORDS + 3;
        LeaseManager::create(db.as_ref(), "ns", "held", Labels::new()).unwrap();
        for i in 0..n {
            ImageStore::create(db.as_ref(), "ns", image(&format!("image-{i}"))).unwrap();
            ContainerStore::create(db.as_ref(), "ns", container(&format!("c-{i}"))).unwrap();
            LeaseManager::create(db.as_ref(), "ns", &format!("l-{i}"), Labels::new()).unwrap();
            let blob = Resource {
                kind: "content".into(),
                id: format!("sha256:{i:064x}"),
            };
            db.add_resource("ns", "held", &blob).unwrap();
            NamespaceStore::create(db.as_ref(), &format!("ns-{i}"), &Labels::new()).unwrap();
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // How many a list returned, having first counted one record past the budget on the
        // calling thread: each store counts what it walks.
        let listed = |work: fn(&Metadata) -> Result<usize, Error>| {
            let db = Arc::clone(&db);
            crate::lists::records_counted_here();
            let listed = runtime
                .block_on(crate::list("a long list", move || work(db.as_ref())))
                .unwrap();
            let counted = crate::lists::records_counted_here();
            assert_eq!(counted, crate::DEFAULT_INLINE_LIST_RECORDS + 1);
            listed
        };
        assert_eq!(listed(|db| Ok(ImageStore::list(db, "ns", &[])?.len())), n);
        assert_eq!(
            listed(|db| Ok(ContainerStore::list(db, "ns", &[])?.len())),
            n
        );
        assert_eq!(
            listed(|db| Ok(LeaseManager::list(db, "ns", &[])?.len())),
            n + 1
        );
        assert_eq!(listed(|db| Ok(db.list_resources("ns", "held")?.len())), n);
        // The n namespaces made here and "ns", made by the first record in it.
        assert_eq!(listed(|db| Ok(NamespaceStore::list(db)?.len())), n + 1);
    }
}
