//! Images, containers and leases in the metadata database: one encoded record per object
//! (see `records`), keyed by (namespace, name). Every change is one write transaction, and
//! creating an object in a namespace creates the namespace in the same transaction, as
//! containerd does on first use.

use std::time::SystemTime;

use prost::Message as _;
use redb::{ReadableTable, Table, WriteTransaction};

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
    namespace: &str,
    lease: Option<&str>,
    kind: &str,
    id: &str,
) -> Result<(), Error> {
    let Some(lease) = lease else {
        return Ok(());
    };
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

/// Every (key, record) of `namespace` in a table keyed by (namespace, name).
fn scan<M: prost::Message + Default>(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    namespace: &str,
) -> Result<Vec<(String, M)>, Error> {
    let mut out = Vec::new();
    for item in table.range((namespace, "")..).map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (ns, name) = key.value();
        if ns != namespace {
            break;
        }
        out.push((name.to_string(), decode(name, value.value())?));
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

fn image_of(name: &str, record: ImageRecord) -> Image {
    Image {
        name: name.to_string(),
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

fn image_record(image: &Image) -> ImageRecord {
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

fn image_not_found(name: &str) -> Error {
    Error::not_found(format!("image {name:?}: not found"))
}

impl ImageStore for Metadata {
    fn get(&self, namespace: &str, name: &str) -> Result<Image, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES).map_err(storage)?;
        let value = table
            .get((namespace, name))
            .map_err(storage)?
            .ok_or_else(|| image_not_found(name))?;
        Ok(image_of(name, decode(name, value.value())?))
    }

    fn list(&self, namespace: &str, filter: &[String]) -> Result<Vec<Image>, Error> {
        let filter = filters(filter)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES).map_err(storage)?;
        Ok(scan(&table, namespace)?
            .into_iter()
            .map(|(name, record)| image_of(&name, record))
            .filter(|image| filter.matches(|path| image.field(path)))
            .collect())
    }

    fn create(&self, namespace: &str, mut image: Image) -> Result<Image, Error> {
        image.validate()?;
        let now = SystemTime::now();
        image.created = now;
        image.updated = now;
        let txn = self.db.begin_write()?;
        ensure_namespace(&txn, namespace)?;
        {
            let mut table = txn.open_table(IMAGES).map_err(storage)?;
            if table
                .get((namespace, image.name.as_str()))
                .map_err(storage)?
                .is_some()
            {
                return Err(Error::already_exists(format!(
                    "image {:?}: already exists",
                    image.name
                )));
            }
            let bytes = image_record(&image).encode_to_vec();
            table
                .insert((namespace, image.name.as_str()), bytes.as_slice())
                .map_err(storage)?;
        }
        txn.commit()?;
        Ok(image)
    }

    fn update(&self, namespace: &str, image: Image, fieldpaths: &[String]) -> Result<Image, Error> {
        if image.name.is_empty() {
            return Err(Error::invalid("image name is required for an update"));
        }
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(IMAGES).map_err(storage)?;
            let mut updated = match table.get((namespace, image.name.as_str())).map_err(storage)? {
                Some(value) => image_of(&image.name, decode(&image.name, value.value())?),
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
            updated
        };
        txn.commit()?;
        Ok(updated)
    }

    fn delete(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let txn = self.db.begin_write()?;
        if txn
            .open_table(IMAGES)
            .map_err(storage)?
            .remove((namespace, name))
            .map_err(storage)?
            .is_none()
        {
            return Err(image_not_found(name));
        }
        txn.commit()
    }
}

fn container_of(id: &str, record: ContainerRecord) -> Container {
    Container {
        id: id.to_string(),
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

fn container_record(container: &Container) -> ContainerRecord {
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
        validate_identifier("container id", id)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTAINERS).map_err(storage)?;
        let value = table
            .get((namespace, id))
            .map_err(storage)?
            .ok_or_else(|| container_not_found(id))?;
        Ok(container_of(id, decode(id, value.value())?))
    }

    fn list(&self, namespace: &str, filter: &[String]) -> Result<Vec<Container>, Error> {
        let filter = filters(filter)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONTAINERS).map_err(storage)?;
        Ok(scan(&table, namespace)?
            .into_iter()
            .map(|(id, record)| container_of(&id, record))
            .filter(|container| filter.matches(|path| container.field(path)))
            .collect())
    }

    fn create(&self, namespace: &str, mut container: Container) -> Result<Container, Error> {
        container.validate()?;
        let now = SystemTime::now();
        container.created = now;
        container.updated = now;
        let txn = self.db.begin_write()?;
        ensure_namespace(&txn, namespace)?;
        {
            let mut table = txn.open_table(CONTAINERS).map_err(storage)?;
            let id = container.id.as_str();
            if table.get((namespace, id)).map_err(storage)?.is_some() {
                return Err(Error::already_exists(format!(
                    "container {id:?}: already exists"
                )));
            }
            let bytes = container_record(&container).encode_to_vec();
            table
                .insert((namespace, id), bytes.as_slice())
                .map_err(storage)?;
        }
        txn.commit()?;
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
                Some(value) => container_of(id, decode(id, value.value())?),
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
                    apply_map(&mut updated.labels, &container.labels, key, String::is_empty);
                } else if let Some(key) = path.strip_prefix("extensions.") {
                    apply_map(&mut updated.extensions, &container.extensions, key, |_| false);
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
            updated
        };
        txn.commit()?;
        Ok(updated)
    }

    fn delete(&self, namespace: &str, id: &str) -> Result<(), Error> {
        validate_identifier("container id", id)?;
        let txn = self.db.begin_write()?;
        if txn
            .open_table(CONTAINERS)
            .map_err(storage)?
            .remove((namespace, id))
            .map_err(storage)?
            .is_none()
        {
            return Err(container_not_found(id));
        }
        txn.commit()
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
            .remove((namespace, lease, resource.kind.as_str(), resource.id.as_str()))
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
                return Err(Error::already_exists(format!("lease {id:?}: already exists")));
            }
            let bytes = record.encode_to_vec();
            table
                .insert((namespace, id.as_str()), bytes.as_slice())
                .map_err(storage)?;
        }
        txn.commit()?;
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
            let mut resources = txn.open_table(LEASE_RESOURCES).map_err(storage)?;
            remove_resources(&mut resources, namespace, id)?;
        }
        txn.commit()
    }

    fn list(&self, namespace: &str, filter: &[String]) -> Result<Vec<Lease>, Error> {
        let filter = filters(filter)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEASES).map_err(storage)?;
        Ok(scan::<LeaseRecord>(&table, namespace)?
            .into_iter()
            .map(|(id, record)| Lease {
                id,
                created: from_nanos(record.created),
                labels: record.labels,
            })
            .filter(|lease| {
                filter.matches(|path| match path {
                    [f] if f == "id" => Some(lease.id.clone()),
                    [f, ..] if f == "labels" => crate::filters::label_field(path, &lease.labels),
                    _ => None,
                })
            })
            .collect())
    }

    fn add_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: &Resource,
    ) -> Result<(), Error> {
        resource.validate()?;
        let txn = self.db.begin_write()?;
        bind(
            &txn,
            namespace,
            Some(lease),
            &resource.kind,
            &resource.id,
        )?;
        txn.commit()
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
                .remove((namespace, lease, resource.kind.as_str(), resource.id.as_str()))
                .map_err(storage)?;
        }
        txn.commit()
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

