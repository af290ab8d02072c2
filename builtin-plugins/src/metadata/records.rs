//! How images, containers and leases are stored: one protobuf-encoded record per object
//! (prost), so that a record is read or written whole in one table lookup and new fields can
//! be added without a table change (an old record decodes with them empty).
//!
//! Tags are part of the file format: never renumber or reuse one.

use std::collections::BTreeMap;

use prost_types::Any;

/// An image record: [`crate::images::Image`] without its name (the key).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ImageRecord {
    /// Labels.
    #[prost(btree_map = "string, string", tag = "1")]
    pub(crate) labels: BTreeMap<String, String>,
    /// Target media type.
    #[prost(string, tag = "2")]
    pub(crate) media_type: String,
    /// Target digest.
    #[prost(string, tag = "3")]
    pub(crate) digest: String,
    /// Target size.
    #[prost(int64, tag = "4")]
    pub(crate) size: i64,
    /// Target annotations.
    #[prost(btree_map = "string, string", tag = "5")]
    pub(crate) annotations: BTreeMap<String, String>,
    /// Created, nanoseconds since the epoch.
    #[prost(uint64, tag = "6")]
    pub(crate) created: u64,
    /// Updated, nanoseconds since the epoch.
    #[prost(uint64, tag = "7")]
    pub(crate) updated: u64,
}

/// A container record: [`crate::containers::Container`] without its id (the key).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ContainerRecord {
    /// Labels.
    #[prost(btree_map = "string, string", tag = "1")]
    pub(crate) labels: BTreeMap<String, String>,
    /// Image name.
    #[prost(string, tag = "2")]
    pub(crate) image: String,
    /// Runtime name.
    #[prost(string, tag = "3")]
    pub(crate) runtime_name: String,
    /// Runtime options.
    #[prost(message, optional, tag = "4")]
    pub(crate) runtime_options: Option<Any>,
    /// Spec.
    #[prost(message, optional, tag = "5")]
    pub(crate) spec: Option<Any>,
    /// Snapshotter.
    #[prost(string, tag = "6")]
    pub(crate) snapshotter: String,
    /// Snapshot key.
    #[prost(string, tag = "7")]
    pub(crate) snapshot_key: String,
    /// Created, nanoseconds since the epoch.
    #[prost(uint64, tag = "8")]
    pub(crate) created: u64,
    /// Updated, nanoseconds since the epoch.
    #[prost(uint64, tag = "9")]
    pub(crate) updated: u64,
    /// Extensions.
    #[prost(btree_map = "string, message", tag = "10")]
    pub(crate) extensions: BTreeMap<String, Any>,
    /// Sandbox id.
    #[prost(string, tag = "11")]
    pub(crate) sandbox: String,
}

/// A lease record: [`crate::leases::Lease`] without its id (the key).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaseRecord {
    /// Created, nanoseconds since the epoch.
    #[prost(uint64, tag = "1")]
    pub(crate) created: u64,
    /// Labels.
    #[prost(btree_map = "string, string", tag = "2")]
    pub(crate) labels: BTreeMap<String, String>,
}
