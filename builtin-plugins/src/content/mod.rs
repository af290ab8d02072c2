//! The content-store interface (containerd's `content.Store`): content-addressable blobs,
//! ingests by ref, labels. Implemented by the local store, the metadata layer (per
//! namespace) and, later, proxy stores; every implementation runs the conformance suite in
//! `testsuite` (feature `testsuite`).

use std::fmt;
use std::time::SystemTime;

use crate::error::Error;
use crate::namespaces::Labels;
use crate::removal::Freeing;

#[cfg(feature = "content-local")]
pub mod local;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// The longest ingest ref a client may use.
pub const MAX_REF_LENGTH: usize = 256;

/// The longest ref a store underneath the metadata layer accepts: a client's ref with its
/// namespace and a `/` in front.
pub const MAX_STORED_REF_LENGTH: usize =
    MAX_REF_LENGTH + 1 + crate::namespaces::MAX_IDENTIFIER_LENGTH;

/// A validated digest: `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest.
    ///
    /// # Errors
    /// Invalid argument for anything but `sha256:<64 lowercase hex>` (other algorithms are
    /// refused with a message saying so).
    pub fn parse(text: &str) -> Result<Digest, Error> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(Error::invalid(format!(
                "digest {text:?} has no algorithm: write sha256:<64 hex digits>"
            )));
        };
        if algorithm != "sha256" {
            return Err(Error::invalid(format!(
                "digest {text:?}: unsupported algorithm {algorithm:?}, only sha256"
            )));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::invalid(format!(
                "digest {text:?}: expected 64 lowercase hex digits after sha256:"
            )));
        }
        Ok(Digest(text.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_hasher(sha2::Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher holds.
    pub fn from_hasher(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        let hash = hasher.finalize();
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Digest(format!("sha256:{hex}"))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an ingest ref: not empty, at most [`MAX_REF_LENGTH`] bytes, no NUL, no control
/// characters. Refs never become paths directly (stores hash them), so `/` and `..` are
/// allowed as containerd allows them.
///
/// # Errors
/// Invalid argument naming the rule.
pub fn validate_ref(reference: &str) -> Result<(), Error> {
    validate_ref_up_to(reference, MAX_REF_LENGTH)
}

/// As [`validate_ref`], for stores under the metadata layer: up to
/// [`MAX_STORED_REF_LENGTH`] bytes.
///
/// # Errors
/// Invalid argument naming the rule.
pub fn validate_stored_ref(reference: &str) -> Result<(), Error> {
    validate_ref_up_to(reference, MAX_STORED_REF_LENGTH)
}

fn validate_ref_up_to(reference: &str, limit: usize) -> Result<(), Error> {
    if reference.is_empty() {
        return Err(Error::invalid("ref must not be empty"));
    }
    if reference.len() > limit {
        return Err(Error::invalid(format!(
            "ref is {} bytes long: at most {limit}",
            reference.len()
        )));
    }
    if reference.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "ref {reference:?} contains a control character"
        )));
    }
    Ok(())
}

/// What the store knows of a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: i64,
    /// When it was committed (in this namespace, for the metadata layer).
    pub created_at: SystemTime,
    /// When its labels last changed.
    pub updated_at: SystemTime,
    /// Its labels.
    pub labels: Labels,
}

/// An ingest in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The ref that names it.
    pub reference: String,
    /// Bytes written so far.
    pub offset: i64,
    /// The expected total, 0 when unknown.
    pub total: i64,
    /// The expected digest, if given.
    pub expected: Option<Digest>,
    /// When it started.
    pub started_at: SystemTime,
    /// When it was last written.
    pub updated_at: SystemTime,
}

/// A content store (containerd's content.Store).
#[tonic::async_trait]
pub trait ContentStore: Send + Sync {
    /// The info of a blob.
    ///
    /// # Errors
    /// Not found.
    async fn info(&self, digest: &Digest) -> Result<Info, Error>;

    /// Changes labels. `fieldpaths` are `labels` (replace all) or `labels.<key>` (one label;
    /// an empty value removes it); empty `fieldpaths` replaces all labels.
    ///
    /// # Errors
    /// Not found; invalid argument for another field path or a label over the size limit.
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error>;

    /// Every blob matching any of the filters (containerd's syntax over `digest`, `size`,
    /// `labels.<key>`), sorted by digest.
    ///
    /// # Errors
    /// Invalid argument for a filter that does not parse.
    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error>;

    /// Deletes a blob.
    ///
    /// # Errors
    /// Not found.
    async fn delete(&self, digest: &Digest) -> Result<(), Error>;

    /// The digest of every blob, sorted: what [`ContentStore::walk`] without filters lists,
    /// without the rest of each blob's info (a garbage collection needs no more). The default
    /// takes them from `walk`; a store that can list names alone does so.
    ///
    /// # Errors
    /// As [`ContentStore::walk`].
    async fn digests(&self) -> Result<Vec<Digest>, Error> {
        Ok(self
            .walk(&[])
            .await?
            .into_iter()
            .map(|info| info.digest)
            .collect())
    }

    /// Deletes several blobs, one result per digest, each as [`ContentStore::delete`]
    /// would. The default deletes them one at a time; a local store does them in one trip
    /// to its I/O thread.
    async fn delete_many(&self, digests: &[Digest]) -> Vec<Result<(), Error>> {
        let mut results = Vec::with_capacity(digests.len());
        for digest in digests {
            results.push(self.delete(digest).await);
        }
        results
    }

    /// [`ContentStore::delete_many`], answering as soon as the blobs are gone from the
    /// store's view (a commit of the same digest after it answers makes a new blob), with
    /// the [`Freeing`] of their space, which goes on behind the answer. A garbage collection
    /// deletes its next batch while the last one's blocks are being freed. The default
    /// deletes them all before answering.
    async fn detach_many(&self, digests: &[Digest]) -> (Vec<Result<(), Error>>, Freeing) {
        (self.delete_many(digests).await, Freeing::done())
    }

    /// Up to `length` bytes of a blob from `offset` (fewer at the end; none past it).
    ///
    /// # Errors
    /// Not found; invalid argument for an offset past the end.
    async fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error>;

    /// [`ContentStore::read_at`] for a reader that has had the blob's [`Info`] from this
    /// store in the same call and now reads it part by part (a Read stream): the store may
    /// skip the checks [`ContentStore::info`] made, as containerd checks a reader once,
    /// when it is opened. The blob itself may be gone by now (not found). The default is
    /// `read_at`.
    ///
    /// # Errors
    /// As [`ContentStore::read_at`].
    async fn read_opened_at(
        &self,
        digest: &Digest,
        offset: u64,
        length: usize,
    ) -> Result<Vec<u8>, Error> {
        self.read_at(digest, offset, length).await
    }

    /// The CRC-32 of the blob's bytes as the store recorded it at commit, if it did: a reader
    /// of the whole blob (the Content service's `Read`) checks the bytes against it, which
    /// costs a fraction of hashing them to the digest, and hashes them only when the two
    /// disagree. `None`, the default, when the store records none, has none for this blob or
    /// cannot tell without waiting for the disk: the reader then hashes.
    async fn recorded_crc32(&self, digest: &Digest) -> Option<u32> {
        let _ = digest;
        None
    }

    /// The status of an ingest.
    ///
    /// # Errors
    /// Not found.
    async fn status(&self, reference: &str) -> Result<Status, Error>;

    /// Every ingest whose ref matches any of the filters (`ref` field), sorted by ref.
    ///
    /// # Errors
    /// Invalid argument for a filter that does not parse.
    async fn list_statuses(&self, filters: &[String]) -> Result<Vec<Status>, Error>;

    /// Removes an ingest and its data.
    ///
    /// # Errors
    /// Not found; unavailable while a writer holds it.
    async fn abort(&self, reference: &str) -> Result<(), Error>;

    /// Opens (or resumes) the ingest `reference`. `total` (0: unknown) and `expected` are
    /// checked at commit. Only one writer may hold a ref: a second one waits about a second
    /// for the first to close, then gets Unavailable.
    ///
    /// A namespaced store under the shared policy, asked for an `expected` blob that only
    /// other namespaces hold (with its size as `total`, or 0), answers as containerd does: a
    /// writer that holds the blob whole already (offset and total its size, digest
    /// `expected`), without an ingest or a lock; its commit records the blob in this
    /// namespace without an upload, and a write appends to a copy of it.
    ///
    /// # Errors
    /// Invalid ref; unavailable when locked; already exists when `expected` is committed
    /// already (for a namespaced store: in this namespace).
    async fn writer(
        &self,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Box<dyn ContentWriter>, Error>;
}

/// A writer holding the lock on one ingest (containerd's content.Writer).
#[tonic::async_trait]
pub trait ContentWriter: Send + Sync {
    /// The ingest's status.
    ///
    /// # Errors
    /// The ingest vanished.
    async fn status(&self) -> Result<Status, Error>;

    /// The digest of the bytes written so far.
    fn digest(&self) -> Digest;

    /// Appends bytes at the current offset.
    ///
    /// # Errors
    /// Storage failure.
    async fn write(&mut self, data: &[u8]) -> Result<(), Error>;

    /// As [`ContentWriter::write`], taking the bytes by value: the Write stream hands over
    /// each chunk it received, and a store that moves its I/O to another thread can then
    /// skip copying it.
    ///
    /// # Errors
    /// Storage failure.
    async fn write_owned(&mut self, data: Vec<u8>) -> Result<(), Error> {
        self.write(&data).await
    }

    /// Cuts the ingest back to `size` bytes (containerd supports only 0).
    ///
    /// # Errors
    /// Invalid argument for another size.
    async fn truncate(&mut self, size: i64) -> Result<(), Error>;

    /// Commits the ingest as a blob: the size (if `size > 0`) and the digest (if `expected`)
    /// must match. Atomic: the blob is either complete and verifiable or absent. On failure
    /// the ingest is kept (and can be resumed).
    ///
    /// # Errors
    /// Failed precondition on a size or digest mismatch; already exists when the blob is
    /// there (the ingest is then removed, as containerd does).
    async fn commit(
        &mut self,
        size: i64,
        expected: Option<Digest>,
        labels: Labels,
    ) -> Result<Digest, Error>;

    /// Releases the lock; the ingest stays for a later writer.
    ///
    /// # Errors
    /// Storage failure.
    async fn close(self: Box<Self>) -> Result<(), Error>;
}
