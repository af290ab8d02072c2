//! Leases: containerd's leases (named holds on content and snapshots, for the collector),
//! the `containerd-lease` request header, and the [`LeaseManager`] interface the metadata
//! plugin implements.

use std::time::SystemTime;

use crate::error::Error;
use crate::namespaces::{Labels, validate_label};

/// The gRPC metadata key that carries the lease a call's new objects are bound to.
pub const LEASE_HEADER: &str = "containerd-lease";

/// The label holding a lease's expiry time (RFC 3339): the collector ignores an expired
/// lease.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The id: containerd's identifier rules.
    pub id: String,
    /// When it was created.
    pub created: SystemTime,
    /// The labels (`containerd.io/gc.expire`, `containerd.io/gc.flat`, ...).
    pub labels: Labels,
}

/// What a lease holds: `kind` is `content` (id a digest), `ingests` (id an ingest ref) or
/// `snapshots/<snapshotter>` (id a snapshot key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    /// `content`, `ingests` or `snapshots/<snapshotter>`.
    pub kind: String,
    /// The resource's id in its kind.
    pub id: String,
}

impl Resource {
    /// Checks the kind and the id as containerd does.
    ///
    /// # Errors
    /// Unimplemented for a kind containerd does not know; invalid argument for a bad
    /// snapshot kind, a bad digest or an empty id.
    pub fn validate(&self) -> Result<(), Error> {
        match self.kind.as_str() {
            "content" => {
                crate::content::Digest::parse(&self.id)
                    .map_err(|e| Error::invalid(format!("content resource {:?}: {e}", self.id)))?;
            }
            "ingests" => {
                if self.id.is_empty() {
                    return Err(Error::invalid("an ingests resource needs a ref as its id"));
                }
            }
            kind => match kind.strip_prefix("snapshots/") {
                // One snapshotter name: `snapshots/a/b` is no type containerd knows.
                Some(snapshotter) if !snapshotter.is_empty() && !snapshotter.contains('/') => {
                    if self.id.is_empty() {
                        return Err(Error::invalid(format!(
                            "a {kind} resource needs a snapshot key as its id"
                        )));
                    }
                }
                Some(_) => {
                    return Err(Error::invalid(format!(
                        "invalid snapshot resource type {kind:?}: use snapshots/<snapshotter>"
                    )));
                }
                // `content/…`, `ingests/…` and `snapshots` are kinds containerd knows,
                // spelled wrong.
                None if kind.starts_with("content/")
                    || kind.starts_with("ingests/")
                    || kind == "snapshots" =>
                {
                    return Err(Error::invalid(format!(
                        "invalid resource type {kind:?}: use content, ingests or snapshots/<snapshotter>"
                    )));
                }
                // containerd answers a kind it does not know with Unimplemented.
                None => {
                    return Err(Error::new(
                        plinth_core::Category::Unimplemented,
                        format!(
                            "unsupported resource type {kind:?}: use content, ingests or snapshots/<snapshotter>"
                        ),
                    ));
                }
            },
        }
        Ok(())
    }
}

/// Checks a new lease's id and labels.
///
/// # Errors
/// Invalid argument naming what is wrong.
pub fn validate_lease(id: &str, labels: &Labels) -> Result<(), Error> {
    validate_lease_id(id)?;
    for (key, value) in labels {
        validate_label(key, value).map_err(|e| Error::invalid(format!("lease {id:?}: {e}")))?;
    }
    Ok(())
}

/// The longest lease id accepted, in bytes (a path, at most, in practice).
pub const MAX_LEASE_ID: usize = 4096;

/// A lease id is any non-empty text, as in containerd 1.6 (which checks nothing else):
/// `ctr images mount IMAGE /abs/target` names its lease by the target path. plinthd also
/// bounds its length.
fn validate_lease_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid("lease id must be provided"));
    }
    if id.len() > MAX_LEASE_ID {
        return Err(Error::invalid(format!(
            "lease id of {} bytes is too long: use at most {MAX_LEASE_ID}",
            id.len()
        )));
    }
    Ok(())
}

/// The lease a request names in its `containerd-lease` header, if any.
///
/// # Errors
/// Invalid argument when the header is not text or not a valid id.
pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Option<String>, Error> {
    let Some(value) = request.metadata().get(LEASE_HEADER) else {
        return Ok(None);
    };
    let id = value
        .to_str()
        .map_err(|_| Error::invalid(format!("{LEASE_HEADER} header is not valid text")))?;
    validate_lease_id(id)?;
    Ok(Some(id.to_string()))
}

/// Manages leases per namespace. Implemented by the metadata plugin (in its database), and
/// offered by `io.containerd.lease.v1.manager`.
pub trait LeaseManager: Send + Sync {
    /// Creates a lease; `id` empty picks a random one.
    ///
    /// # Errors
    /// Invalid id or labels; already exists; storage failure.
    fn create(&self, namespace: &str, id: &str, labels: Labels) -> Result<Lease, Error>;

    /// Deletes a lease and drops its hold on its resources.
    ///
    /// # Errors
    /// Not found; storage failure.
    fn delete(&self, namespace: &str, id: &str) -> Result<(), Error>;

    /// The leases of a namespace that match any of `filters` (`id`, `labels.<key>`).
    ///
    /// # Errors
    /// A filter that does not parse; storage failure.
    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>, Error>;

    /// Adds a resource to a lease (adding one it holds already changes nothing).
    ///
    /// # Errors
    /// The lease is not found; an invalid resource; storage failure.
    fn add_resource(&self, namespace: &str, lease: &str, resource: &Resource) -> Result<(), Error>;

    /// Removes a resource from a lease (one it does not hold changes nothing).
    ///
    /// # Errors
    /// The lease is not found; an invalid resource; storage failure.
    fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: &Resource,
    ) -> Result<(), Error>;

    /// The resources a lease holds, sorted by kind and id.
    ///
    /// # Errors
    /// The lease is not found; storage failure.
    fn list_resources(&self, namespace: &str, lease: &str) -> Result<Vec<Resource>, Error>;
}
