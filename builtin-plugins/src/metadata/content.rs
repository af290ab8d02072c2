//! A namespace's view of the content store: records per namespace over the shared blobs,
//! ingest refs prefixed with the namespace, and the sharing policy.

use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};

use super::schema::{CONTENT, CONTENT_LABELS};
use super::{Metadata, SharingPolicy, blocking, from_nanos, now_nanos, storage};
use crate::content::{ContentStore, ContentWriter, Digest, Info, Status, validate_ref};
use crate::error::Error;
use crate::filters::FilterSet;
use crate::namespaces::{Labels, apply_label_paths, validate_label};

/// The content store as one namespace sees it.
pub(crate) struct NamespacedContent {
    metadata: Arc<Metadata>,
    namespace: String,
}

impl NamespacedContent {
    pub(crate) fn new(metadata: Arc<Metadata>, namespace: &str) -> Self {
        NamespacedContent {
            metadata,
            namespace: namespace.to_string(),
        }
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

fn write_labels(
    txn: &WriteTransaction,
    namespace: &str,
    digest: &str,
    labels: &Labels,
) -> Result<(), Error> {
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

/// Records a committed blob in a namespace. Already exists when it is there.
fn add_record(
    metadata: &Metadata,
    namespace: &str,
    digest: &Digest,
    size: i64,
    labels: &Labels,
) -> Result<(), Error> {
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
    write_labels(&txn, namespace, digest.as_str(), labels)?;
    txn.commit()
}

#[tonic::async_trait]
impl ContentStore for NamespacedContent {
    async fn info(&self, digest: &Digest) -> Result<Info, Error> {
        let (metadata, namespace, digest) = (
            self.metadata.clone(),
            self.namespace.clone(),
            digest.clone(),
        );
        blocking(move || {
            NamespacedContent::record(&metadata, &namespace, &digest)?
                .ok_or_else(|| Error::not_found(format!("content digest {digest}: not found")))
        })
        .await
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
            write_labels(&txn, &namespace, digest.as_str(), &current.labels)?;
            txn.commit()?;
            NamespacedContent::record(&metadata, &namespace, &digest)?
                .ok_or_else(|| Error::not_found(format!("content digest {digest}: not found")))
        })
        .await
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let filters = FilterSet::parse_all(filters).map_err(|e| Error::invalid(e.to_string()))?;
        let (metadata, namespace) = (self.metadata.clone(), self.namespace.clone());
        blocking(move || {
            let txn = metadata.db.begin_read()?;
            let table = txn.open_table(CONTENT).map_err(storage)?;
            let labels_table = txn.open_table(CONTENT_LABELS).map_err(storage)?;
            let mut out = Vec::new();
            for item in table.range((namespace.as_str(), "")..).map_err(storage)? {
                let (key, value) = item.map_err(storage)?;
                let (ns, digest) = key.value();
                if ns != namespace {
                    break;
                }
                let (size, created, updated) = value.value();
                let info = Info {
                    digest: Digest::parse(digest)?,
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    created_at: from_nanos(created),
                    updated_at: from_nanos(updated),
                    labels: labels_of(&labels_table, &namespace, digest)?,
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
        let still_used = blocking(move || {
            let txn = metadata.db.begin_write()?;
            let still_used = {
                let mut table = txn.open_table(CONTENT).map_err(storage)?;
                if table
                    .remove((namespace.as_str(), d.as_str()))
                    .map_err(storage)?
                    .is_none()
                {
                    return Err(Error::not_found(format!("content digest {d}: not found")));
                }
                // Another namespace still holding the blob keeps it in the store.
                let mut used = false;
                for item in table.iter().map_err(storage)? {
                    let (key, _) = item.map_err(storage)?;
                    if key.value().1 == d.as_str() {
                        used = true;
                        break;
                    }
                }
                used
            };
            write_labels(&txn, &namespace, d.as_str(), &Labels::new())?;
            txn.commit()?;
            Ok(still_used)
        })
        .await?;
        if !still_used {
            match self.backend()?.delete(digest).await {
                Err(e) if e.category != plinth_core::Category::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    async fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        // Both policies: reading needs the blob in this namespace.
        self.info(digest).await?;
        self.backend()?.read_at(digest, offset, length).await
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
                return Err(Error::already_exists(format!(
                    "content {expected}: already exists"
                )));
            }
            if self.metadata.policy == SharingPolicy::Shared {
                if let Ok(existing) = self.backend()?.info(expected).await {
                    if total == 0 || total == existing.size {
                        // Shared: the bytes are there; record them here without an upload.
                        let (metadata, namespace, digest) = (
                            self.metadata.clone(),
                            self.namespace.clone(),
                            expected.clone(),
                        );
                        blocking(move || {
                            add_record(
                                &metadata,
                                &namespace,
                                &digest,
                                existing.size,
                                &Labels::new(),
                            )
                        })
                        .await?;
                        return Err(Error::already_exists(format!(
                            "content {expected}: already exists"
                        )));
                    }
                }
            }
        }
        let backend = self.backend()?;
        let backend_ref = self.backend_ref(reference);
        let inner = match backend.writer(&backend_ref, total, expected.clone()).await {
            // The store holds the blob, but this namespace may not (isolated policy): it
            // uploads the bytes, which the commit verifies against `expected`.
            Err(e) if e.category == plinth_core::Category::AlreadyExists => {
                backend.writer(&backend_ref, total, None).await?
            }
            other => other?,
        };
        Ok(Box::new(NamespacedWriter {
            inner: Some(inner),
            metadata: self.metadata.clone(),
            namespace: self.namespace.clone(),
            reference: reference.to_string(),
            expected,
        }))
    }
}

/// A writer whose commit also records the blob in the namespace.
struct NamespacedWriter {
    inner: Option<Box<dyn ContentWriter>>,
    metadata: Arc<Metadata>,
    namespace: String,
    reference: String,
    expected: Option<Digest>,
}

impl NamespacedWriter {
    fn inner(&mut self) -> Result<&mut Box<dyn ContentWriter>, Error> {
        self.inner
            .as_mut()
            .ok_or_else(|| Error::failed_precondition("writer is closed"))
    }
}

#[tonic::async_trait]
impl ContentWriter for NamespacedWriter {
    async fn status(&self) -> Result<Status, Error> {
        let inner = self
            .inner
            .as_ref()
            .ok_or_else(|| Error::failed_precondition("writer is closed"))?;
        let mut status = inner.status().await?;
        status.reference = self.reference.clone();
        if status.expected.is_none() {
            status.expected = self.expected.clone();
        }
        Ok(status)
    }

    fn digest(&self) -> Digest {
        self.inner
            .as_ref()
            .map_or_else(|| Digest::of(b""), |w| w.digest())
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.inner()?.write(data).await
    }

    async fn write_owned(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.inner()?.write_owned(data).await
    }

    async fn truncate(&mut self, size: i64) -> Result<(), Error> {
        self.inner()?.truncate(size).await
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
        let written = self.digest();
        let digest = match self
            .inner()?
            .commit(size, expected.clone(), Labels::new())
            .await
        {
            Ok(digest) => digest,
            // The bytes were verified and the blob is in the store already.
            Err(e) if e.category == plinth_core::Category::AlreadyExists => {
                expected.unwrap_or(written)
            }
            Err(e) => return Err(e),
        };
        let backend = self
            .metadata
            .content
            .clone()
            .ok_or_else(|| Error::unavailable("no content store is loaded"))?;
        let size = if size > 0 {
            size
        } else {
            backend.info(&digest).await?.size
        };
        let (metadata, namespace, d) = (
            self.metadata.clone(),
            self.namespace.clone(),
            digest.clone(),
        );
        blocking(move || add_record(&metadata, &namespace, &d, size, &labels)).await?;
        Ok(digest)
    }

    async fn close(mut self: Box<Self>) -> Result<(), Error> {
        match self.inner.take() {
            Some(inner) => inner.close().await,
            None => Ok(()),
        }
    }
}
