//! A namespace's view of the content store: records per namespace over the shared blobs,
//! ingest refs prefixed with the namespace, and the sharing policy.

use std::sync::Arc;
use std::time::SystemTime;

use plinth_api::containerd::events::ContentDelete;
use redb::{ReadableTable, WriteTransaction};

use super::gc::Barrier;
use super::schema::{CONTENT, CONTENT_LABELS};
use super::{LabelRows, Metadata, SharingPolicy, blocking, from_nanos, now_nanos, storage};
use crate::content::{ContentStore, ContentWriter, Digest, Info, Status, validate_ref};
use crate::error::Error;
use crate::filters::FilterSet;
use crate::namespaces::{Labels, apply_label_paths, validate_label};

/// The content store as one namespace sees it.
pub(crate) struct NamespacedContent {
    metadata: Arc<Metadata>,
    namespace: String,
    /// The lease that holds what this view ingests and commits (the `containerd-lease`
    /// header).
    lease: Option<String>,
}

impl NamespacedContent {
    pub(crate) fn new(metadata: Arc<Metadata>, namespace: &str) -> Self {
        NamespacedContent {
            metadata,
            namespace: namespace.to_string(),
            lease: None,
        }
    }

    /// The same view, binding what it ingests and commits to `lease`.
    pub(crate) fn leased(mut self, lease: Option<&str>) -> Self {
        self.lease = lease.map(str::to_string);
        self
    }

    /// Adds `(kind, id)` to this view's lease, if it has one: NotFound when the lease does
    /// not exist in the namespace.
    async fn hold(&self, kind: &'static str, id: &str) -> Result<(), Error> {
        let Some(lease) = self.lease.clone() else {
            return Ok(());
        };
        let (metadata, namespace, id) = (
            self.metadata.clone(),
            self.namespace.clone(),
            id.to_string(),
        );
        blocking(move || {
            let txn = metadata.db.begin_write()?;
            super::objects::ensure_namespace(&txn, &namespace)?;
            super::objects::bind(
                &txn,
                &metadata.gc.barrier,
                &namespace,
                Some(&lease),
                kind,
                &id,
            )?;
            txn.commit()
        })
        .await
    }

    fn backend(&self) -> Result<&Arc<dyn ContentStore>, Error> {
        self.metadata
            .content
            .as_ref()
            .ok_or_else(|| Error::unavailable("no content store is loaded"))
    }

    /// The ref the backend sees: namespaces cannot contain `/`, so this is unambiguous.
    fn backend_ref(&self, reference: &str) -> String {
        format!("{}/{reference}", self.namespace)
    }

    fn strip(&self, mut status: Status) -> Status {
        if let Some(rest) = status
            .reference
            .strip_prefix(&format!("{}/", self.namespace))
        {
            status.reference = rest.to_string();
        }
        status
    }

    /// The record of a blob in this namespace.
    fn record(
        metadata: &Metadata,
        namespace: &str,
        digest: &Digest,
    ) -> Result<Option<Info>, Error> {
        let txn = metadata.db.begin_read()?;
        let table = txn.open_table(CONTENT).map_err(storage)?;
        let Some(value) = table.get((namespace, digest.as_str())).map_err(storage)? else {
            return Ok(None);
        };
        let (size, created, updated) = value.value();
        let labels_table = txn.open_table(CONTENT_LABELS).map_err(storage)?;
        let labels = labels_of(&labels_table, namespace, digest.as_str())?;
        Ok(Some(Info {
            digest: digest.clone(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            created_at: from_nanos(created),
            updated_at: from_nanos(updated),
            labels,
        }))
    }
}

fn labels_of(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static str>,
    namespace: &str,
    digest: &str,
) -> Result<Labels, Error> {
    let mut labels = Labels::new();
    for item in table.range((namespace, digest, "")..).map_err(storage)? {
        let (key, value) = item.map_err(storage)?;
        let (ns, d, label) = key.value();
        if ns != namespace || d != digest {
            break;
        }
        labels.insert(label.to_string(), value.value().to_string());
    }
    Ok(labels)
}

/// Replaces the labels of a blob record (noted by the collector's barrier: they may refer to
/// what a running collection found unreachable).
fn write_labels(
    txn: &WriteTransaction,
    barrier: &Barrier,
    namespace: &str,
    digest: &str,
    labels: &Labels,
) -> Result<(), Error> {
    barrier.content(namespace, digest);
    let mut table = txn.open_table(CONTENT_LABELS).map_err(storage)?;
    let old: Vec<String> = labels_of(&table, namespace, digest)?.into_keys().collect();
    for key in old {
        table
            .remove((namespace, digest, key.as_str()))
            .map_err(storage)?;
    }
    for (key, value) in labels {
        table
            .insert((namespace, digest, key.as_str()), value.as_str())
            .map_err(storage)?;
    }
    Ok(())
}

/// Where a commit's record goes: the namespace, and the lease (with the ref of the ingest
/// it held) that holds the blob from then on.
struct Place<'a> {
    namespace: &'a str,
    lease: Option<&'a str>,
    reference: &'a str,
}

/// Records a committed blob in a namespace, moving the lease's hold from the ingest to the
/// blob in the same transaction. Already exists when it is there.
fn add_record(
    metadata: &Metadata,
    place: &Place<'_>,
    digest: &Digest,
    size: i64,
    labels: &Labels,
) -> Result<(), Error> {
    let namespace = place.namespace;
    for (key, value) in labels {
        validate_label(key, value)?;
    }
    let txn = metadata.db.begin_write()?;
    super::objects::ensure_namespace(&txn, namespace)?;
    {
        let mut table = txn.open_table(CONTENT).map_err(storage)?;
        if table
            .get((namespace, digest.as_str()))
            .map_err(storage)?
            .is_some()
        {
            return Err(Error::already_exists(format!(
                "content {digest}: already exists"
            )));
        }
        let now = now_nanos();
        table
            .insert(
                (namespace, digest.as_str()),
                (u64::try_from(size).unwrap_or(0), now, now),
            )
            .map_err(storage)?;
    }
    write_labels(
        &txn,
        &metadata.gc.barrier,
        namespace,
        digest.as_str(),
        labels,
    )?;
    if let Some(lease) = place.lease {
        super::objects::bind(
            &txn,
            &metadata.gc.barrier,
            namespace,
            Some(lease),
            "content",
            digest.as_str(),
        )?;
        txn.open_table(super::schema::LEASE_RESOURCES)
            .map_err(storage)?
            .remove((namespace, lease, "ingests", place.reference))
            .map_err(storage)?;
    }
    txn.commit()
}

#[tonic::async_trait]
impl ContentStore for NamespacedContent {
    async fn info(&self, digest: &Digest) -> Result<Info, Error> {
        // A point read of cached pages, on the thread that serves the call (see
        // ARCHITECTURE.md, "Point reads"): the blocking pool's hand-off costs more.
        NamespacedContent::record(&self.metadata, &self.namespace, digest)?
            .ok_or_else(|| Error::not_found(format!("content digest {digest}: not found")))
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let (metadata, namespace, paths) = (
            self.metadata.clone(),
            self.namespace.clone(),
            fieldpaths.to_vec(),
        );
        blocking(move || {
            let digest = info.digest.clone();
            let mut current = NamespacedContent::record(&metadata, &namespace, &digest)?
                .ok_or_else(|| Error::not_found(format!("content digest {digest}: not found")))?;
            apply_label_paths(&mut current.labels, &info.labels, &paths)?;
            let txn = metadata.db.begin_write()?;
            {
                let mut table = txn.open_table(CONTENT).map_err(storage)?;
                let (size, created, _) = table
                    .get((namespace.as_str(), digest.as_str()))
                    .map_err(storage)?
                    .map(|v| v.value())
                    .ok_or_else(|| {
                        Error::not_found(format!("content digest {digest}: not found"))
                    })?;
                table
                    .insert(
                        (namespace.as_str(), digest.as_str()),
                        (size, created, now_nanos()),
                    )
                    .map_err(storage)?;
            }
            write_labels(
                &txn,
                &metadata.gc.barrier,
                &namespace,
                digest.as_str(),
                &current.labels,
            )?;
            txn.commit()?;
            NamespacedContent::record(&metadata, &namespace, &digest)?
                .ok_or_else(|| Error::not_found(format!("content digest {digest}: not found")))
        })
        .await
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filters = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let (metadata, namespace) = (self.metadata.clone(), self.namespace.clone());
        crate::list("metadata content list", move || {
            let txn = metadata.db.begin_read()?;
            let table = txn.open_table(CONTENT).map_err(storage)?;
            let labels_table = txn.open_table(CONTENT_LABELS).map_err(storage)?;
            let mut label_rows = LabelRows::new(
                labels_table
                    .range((namespace.as_str(), "", "")..)
                    .map_err(storage)?,
            )?;
            let mut out = Vec::new();
            for item in table.range((namespace.as_str(), "")..).map_err(storage)? {
                let (key, value) = item.map_err(storage)?;
                let (ns, digest) = key.value();
                if ns != namespace {
                    break;
                }
                crate::walk_record()?;
                let (size, created, updated) = value.value();
                let info = Info {
                    digest: Digest::parse(digest)?,
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    created_at: from_nanos(created),
                    updated_at: from_nanos(updated),
                    labels: label_rows.labels(
                        |row| {
                            let (ns, d, _) = row.value();
                            (ns, d).cmp(&(namespace.as_str(), digest))
                        },
                        |row| row.value().2.to_string(),
                    )?,
                };
                let matched = filters.matches(|path| match path {
                    [f] if f == "digest" => Some(info.digest.to_string()),
                    [f] if f == "size" => Some(info.size.to_string()),
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

    async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        let (metadata, namespace, d) = (
            self.metadata.clone(),
            self.namespace.clone(),
            digest.clone(),
        );
        // A blob no record holds, if this ends between the record and the store.
        let leftover = self.metadata.gc.leftover();
        let removed = blocking(move || {
            let txn = metadata.db.begin_write()?;
            {
                let mut table = txn.open_table(CONTENT).map_err(storage)?;
                if table
                    .remove((namespace.as_str(), d.as_str()))
                    .map_err(storage)?
                    .is_none()
                {
                    return Err(Error::not_found(format!("content digest {d}: not found")));
                }
            }
            write_labels(
                &txn,
                &metadata.gc.barrier,
                &namespace,
                d.as_str(),
                &Labels::new(),
            )?;
            let slot = metadata.slot(&namespace);
            txn.commit()?;
            let event = ContentDelete {
                digest: d.to_string(),
            };
            slot.publish(metadata.publication(&namespace, "/content/delete", event));
            Ok(())
        })
        .await;
        if let Err(e) = removed {
            if e.category == plinth_core::Category::NotFound {
                leftover.done();
            }
            return Err(e);
        }
        self.metadata.mutated(true);
        // The blob leaves the store once no namespace holds it (checked again under the
        // lock content commits hold, so a commit of it in another namespace keeps it).
        self.metadata
            .delete_unheld_blobs(vec![digest.clone()], false)
            .await?;
        leftover.done();
        Ok(())
    }

    async fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        // Both policies: reading needs the blob in this namespace.
        self.info(digest).await?;
        self.backend()?.read_at(digest, offset, length).await
    }

    async fn read_opened_at(
        &self,
        digest: &Digest,
        offset: u64,
        length: usize,
    ) -> Result<Vec<u8>, Error> {
        // The namespace's record was read when the reader opened (a database read per part
        // of a 2 MiB blob was 16 of them, and each can wait for the writers' lock).
        self.backend()?.read_at(digest, offset, length).await
    }

    async fn recorded_crc32(&self, digest: &Digest) -> Option<u32> {
        self.backend().ok()?.recorded_crc32(digest).await
    }

    async fn status(&self, reference: &str) -> Result<Status, Error> {
        validate_ref(reference)?;
        self.backend()?
            .status(&self.backend_ref(reference))
            .await
            .map(|s| self.strip(s))
    }

    async fn list_statuses(&self, filters: &[String]) -> Result<Vec<Status>, Error> {
        let filters = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let prefix = format!("{}/", self.namespace);
        let all = self.backend()?.list_statuses(&[]).await?;
        Ok(all
            .into_iter()
            .filter(|s| s.reference.starts_with(&prefix))
            .map(|s| self.strip(s))
            .filter(|s| {
                filters.matches(|path| match path {
                    [f] if f == "ref" => Some(s.reference.clone()),
                    _ => None,
                })
            })
            .collect())
    }

    async fn abort(&self, reference: &str) -> Result<(), Error> {
        validate_ref(reference)?;
        self.backend()?.abort(&self.backend_ref(reference)).await
    }

    async fn writer(
        &self,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Box<dyn ContentWriter>, Error> {
        validate_ref(reference)?;
        if let Some(expected) = &expected {
            if self.info(expected).await.is_ok() {
                // The lease holds it from now on, as containerd's does, though nothing is
                // written.
                self.hold("content", expected.as_str()).await?;
                return Err(Error::already_exists(format!(
                    "content {expected}: already exists"
                )));
            }
            if self.metadata.policy == SharingPolicy::Shared {
                if let Ok(existing) = self.backend()?.info(expected).await {
                    if total == 0 || total == existing.size {
                        // Shared: another namespace holds the blob. The writer offers it
                        // whole, without an ingest; its commit records it here.
                        return Ok(Box::new(NamespacedWriter {
                            ingest: Ingest::Shared {
                                digest: expected.clone(),
                                size: existing.size,
                                started_at: SystemTime::now(),
                                committed: false,
                            },
                            metadata: self.metadata.clone(),
                            namespace: self.namespace.clone(),
                            reference: reference.to_string(),
                            expected: Some(expected.clone()),
                            lease: self.lease.clone(),
                        }));
                    }
                }
            }
        }
        // The ingest is held before it exists, so that a missing lease opens nothing.
        self.hold("ingests", reference).await?;
        let backend = self.backend()?;
        let backend_ref = self.backend_ref(reference);
        let inner = match backend.writer(&backend_ref, total, expected.clone()).await {
            // The store holds the blob, but this namespace may not (isolated policy, or a
            // size that does not match): it uploads the bytes, which the commit verifies.
            Err(e) if e.category == plinth_core::Category::AlreadyExists => {
                backend.writer(&backend_ref, total, None).await?
            }
            other => other?,
        };
        Ok(Box::new(NamespacedWriter {
            ingest: Ingest::Writing(inner),
            metadata: self.metadata.clone(),
            namespace: self.namespace.clone(),
            reference: reference.to_string(),
            expected,
            lease: self.lease.clone(),
        }))
    }
}

/// Bytes copied at a time when a shared blob becomes an ingest of its own.
const COPY_CHUNK: usize = 1 << 20;

/// Where a namespaced writer's bytes are.
enum Ingest {
    /// In an ingest of the store underneath, under the namespaced ref.
    Writing(Box<dyn ContentWriter>),
    /// Shared policy: a blob another namespace holds, offered whole with no ingest behind
    /// it (containerd's writer without a backend writer). Its status shows every byte
    /// written; a commit records it in this namespace; a write or truncate first copies it
    /// into an ingest of its own.
    Shared {
        digest: Digest,
        size: i64,
        started_at: SystemTime,
        committed: bool,
    },
}

/// A writer whose commit also records the blob in the namespace.
struct NamespacedWriter {
    ingest: Ingest,
    metadata: Arc<Metadata>,
    namespace: String,
    reference: String,
    expected: Option<Digest>,
    /// The lease that holds the ingest and, once committed, the blob.
    lease: Option<String>,
}

impl NamespacedWriter {
    fn backend(&self) -> Result<Arc<dyn ContentStore>, Error> {
        self.metadata
            .content
            .clone()
            .ok_or_else(|| Error::unavailable("no content store is loaded"))
    }

    /// The ingest to write to: a shared blob is first copied, its first `keep` bytes, into an
    /// ingest of this namespace's own (containerd's `createAndCopy`). From then on the digest
    /// expected at open, which named the shared blob, no longer applies: the commit checks
    /// what it is given.
    async fn unshared(&mut self, keep: i64) -> Result<&mut Box<dyn ContentWriter>, Error> {
        if let Ingest::Shared {
            digest,
            size,
            committed,
            ..
        } = &self.ingest
        {
            if *committed {
                return Err(self.committed_error());
            }
            let (digest, size) = (digest.clone(), *size);
            let backend = self.backend()?;
            let backend_ref = format!("{}/{}", self.namespace, self.reference);
            let mut inner = backend.writer(&backend_ref, keep, None).await?;
            if let Err(error) = copy_blob(&*backend, &mut *inner, &digest, size, keep).await {
                if let Err(e) = inner.close().await {
                    tracing::debug!(error = %e, "closing the ingest of a failed copy");
                }
                return Err(error);
            }
            self.ingest = Ingest::Writing(inner);
            self.expected = None;
        }
        match &mut self.ingest {
            Ingest::Writing(inner) => Ok(inner),
            Ingest::Shared { .. } => Err(Error::internal("shared writer was not unshared")),
        }
    }

    fn committed_error(&self) -> Error {
        Error::failed_precondition(format!(
            "ingest {:?} is committed: open a new writer to write more",
            self.reference
        ))
    }
}

/// Writes the first `keep` bytes of the blob `digest` (of `size` bytes) into `inner`, after
/// emptying it (a leftover ingest of the same ref would otherwise come first).
async fn copy_blob(
    backend: &dyn ContentStore,
    inner: &mut dyn ContentWriter,
    digest: &Digest,
    size: i64,
    keep: i64,
) -> Result<(), Error> {
    if inner.status().await?.offset > 0 {
        inner.truncate(0).await?;
    }
    let keep = u64::try_from(keep.min(size)).unwrap_or(0);
    let mut offset = 0u64;
    while offset < keep {
        let length = usize::try_from(keep - offset)
            .unwrap_or(COPY_CHUNK)
            .min(COPY_CHUNK);
        let data = backend.read_at(digest, offset, length).await?;
        if data.is_empty() {
            return Err(Error::data_loss(format!(
                "blob {digest} ends after {offset} of its {size} bytes; remove it and fetch it again"
            )));
        }
        offset += data.len() as u64;
        inner.write_owned(data).await?;
    }
    Ok(())
}

#[tonic::async_trait]
impl ContentWriter for NamespacedWriter {
    async fn status(&self) -> Result<Status, Error> {
        match &self.ingest {
            Ingest::Writing(inner) => {
                let mut status = inner.status().await?;
                status.reference = self.reference.clone();
                if status.expected.is_none() {
                    status.expected = self.expected.clone();
                }
                Ok(status)
            }
            Ingest::Shared {
                digest,
                size,
                started_at,
                ..
            } => Ok(Status {
                reference: self.reference.clone(),
                offset: *size,
                total: *size,
                expected: Some(digest.clone()),
                started_at: *started_at,
                updated_at: *started_at,
            }),
        }
    }

    fn digest(&self) -> Digest {
        match &self.ingest {
            Ingest::Writing(inner) => inner.digest(),
            Ingest::Shared { digest, .. } => digest.clone(),
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_owned(data.to_vec()).await
    }

    async fn write_owned(&mut self, data: Vec<u8>) -> Result<(), Error> {
        let keep = match &self.ingest {
            // Nothing to append: the writer stays shared (as containerd's).
            Ingest::Shared { .. } if data.is_empty() => return Ok(()),
            // Appending: the blob's bytes come first.
            Ingest::Shared { size, .. } => *size,
            Ingest::Writing(_) => 0,
        };
        self.unshared(keep).await?.write_owned(data).await
    }

    async fn truncate(&mut self, size: i64) -> Result<(), Error> {
        if matches!(self.ingest, Ingest::Shared { .. }) && size != 0 {
            return Err(Error::invalid(format!(
                "cannot truncate to {size} bytes: only 0 is supported"
            )));
        }
        match &mut self.ingest {
            Ingest::Writing(inner) => inner.truncate(size).await,
            // A fresh, empty ingest is the shared blob cut to nothing.
            Ingest::Shared { .. } => self.unshared(0).await.map(drop),
        }
    }

    async fn commit(
        &mut self,
        size: i64,
        expected: Option<Digest>,
        labels: Labels,
    ) -> Result<Digest, Error> {
        for (key, value) in &labels {
            validate_label(key, value)?;
        }
        let expected = expected.or_else(|| self.expected.clone());
        let backend = self.backend()?;
        // From the store's commit (or the check that the shared blob is still there) to the
        // record's: a collection deletes no blob meanwhile (see `metadata::gc`).
        let metadata = Arc::clone(&self.metadata);
        let committed_digest = match &self.ingest {
            Ingest::Shared { digest, .. } => digest.clone(),
            Ingest::Writing(inner) => expected.clone().unwrap_or_else(|| inner.digest()),
        };
        let _committing = metadata.gc.committing(&committed_digest).await;
        // A blob the store commits below and no record holds, if this ends early.
        let leftover = matches!(self.ingest, Ingest::Writing(_)).then(|| metadata.gc.leftover());
        if let Ingest::Shared {
            digest,
            size: shared_size,
            committed,
            ..
        } = &self.ingest
        {
            if *committed {
                return Err(self.committed_error());
            }
            if size != 0 && size != *shared_size {
                return Err(Error::failed_precondition(format!(
                    "commit of {:?}: size {size} does not match the {shared_size} bytes of {digest}, which the writer holds; commit with size {shared_size} or 0",
                    self.reference
                )));
            }
            if let Some(wanted) = expected.as_ref().filter(|wanted| *wanted != digest) {
                return Err(Error::failed_precondition(format!(
                    "commit of {:?}: expected digest {wanted}, but the writer holds {digest}; commit with {digest} or none",
                    self.reference
                )));
            }
            // Another namespace may have deleted it, and with it the bytes, meanwhile.
            if let Err(e) = backend.info(digest).await {
                return Err(if e.category == plinth_core::Category::NotFound {
                    Error::failed_precondition(format!(
                        "commit of {:?}: blob {digest} left the store after the writer opened; truncate and write its bytes to commit it",
                        self.reference
                    ))
                } else {
                    e
                });
            }
        }
        let (digest, size) = match &mut self.ingest {
            Ingest::Writing(inner) => {
                let written = inner.digest();
                let digest = match inner.commit(size, expected.clone(), Labels::new()).await {
                    Ok(digest) => digest,
                    // The bytes were verified and the blob is in the store already.
                    Err(e) if e.category == plinth_core::Category::AlreadyExists => {
                        expected.unwrap_or(written)
                    }
                    Err(e) => return Err(e),
                };
                let size = if size > 0 {
                    size
                } else {
                    backend.info(&digest).await?.size
                };
                (digest, size)
            }
            Ingest::Shared { digest, size, .. } => (digest.clone(), *size),
        };
        let (metadata, namespace, d) = (
            self.metadata.clone(),
            self.namespace.clone(),
            digest.clone(),
        );
        let (lease, reference) = (self.lease.clone(), self.reference.clone());
        let recorded = blocking(move || {
            let place = Place {
                namespace: &namespace,
                lease: lease.as_deref(),
                reference: &reference,
            };
            add_record(&metadata, &place, &d, size, &labels)
        })
        .await;
        if let Some(leftover) = leftover {
            // A record of the blob already there holds it as well as ours would.
            match &recorded {
                Err(e) if e.category != plinth_core::Category::AlreadyExists => {}
                _ => leftover.done(),
            }
        }
        recorded?;
        self.metadata.mutated(false);
        if let Ingest::Shared { committed, .. } = &mut self.ingest {
            *committed = true;
        }
        Ok(digest)
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        match self.ingest {
            Ingest::Writing(inner) => inner.close().await,
            Ingest::Shared { .. } => Ok(()),
        }
    }
}
