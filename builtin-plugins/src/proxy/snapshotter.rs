//! [`ProxySnapshotter`]: a [`Snapshotter`] served by another process over containerd's
//! snapshots API (containerd's `snapshots/proxy`), naming itself in every request as
//! containerd's proxy does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use plinth_api::containerd::services::snapshots::v1 as api;
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::prost_types::FieldMask;
use tonic::transport::Channel;

use super::Check;
use super::remote::{MAX_MESSAGE_SIZE, Remote, SNAPSHOTS_SERVICE};
use crate::convert;
use crate::error::Error;
use crate::live::LiveStatus;
use crate::namespaces::Labels;
use crate::snapshots::{Info, Mount, Snapshotter, Usage};

/// The key the init check stats; any answer but Unimplemented proves the service is there.
const PROBE_KEY: &str = "plinth-proxy-probe";

/// A snapshotter in another process.
#[derive(Debug, Clone)]
pub struct ProxySnapshotter {
    remote: Arc<Remote>,
    name: String,
}

impl ProxySnapshotter {
    /// A proxy to the snapshotter `name` of the process listening on the socket `address`.
    /// Connects lazily; must be called inside a tokio runtime.
    ///
    /// # Errors
    /// Internal outside a tokio runtime.
    pub fn connect(address: &Path, name: &str) -> Result<ProxySnapshotter, Error> {
        Ok(ProxySnapshotter::new(Remote::shared(address)?, name))
    }

    /// A proxy over an existing remote.
    pub fn new(remote: Arc<Remote>, name: &str) -> ProxySnapshotter {
        ProxySnapshotter {
            remote,
            name: name.to_string(),
        }
    }

    /// The remote.
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    fn client(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.remote.channel())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    fn fail(&self, what: &str, status: tonic::Status) -> Error {
        self.remote
            .error(&format!("snapshotter proxy {}: {what}", self.name), status)
    }

    /// Checks that the remote answers and serves the snapshots API.
    pub async fn check(&self) -> Check {
        let mut client = self.client();
        let call = client.stat(api::StatSnapshotRequest {
            snapshotter: self.name.clone(),
            key: PROBE_KEY.to_string(),
        });
        self.remote
            .check_call(
                &format!("snapshotter proxy {}: check", self.name),
                SNAPSHOTS_SERVICE,
                call,
            )
            .await
    }
}

fn wire_labels(labels: Labels) -> std::collections::HashMap<String, String> {
    labels.into_iter().collect()
}

fn info_from(info: Option<api::Info>) -> Result<Info, Error> {
    info.map(|i| convert::snapshot_info_from(&i))
        .ok_or_else(|| Error::internal("remote snapshotter answered without info"))
}

#[tonic::async_trait]
impl Snapshotter for ProxySnapshotter {
    async fn stat(&self, key: &str) -> Result<Info, Error> {
        let reply = self
            .client()
            .stat(api::StatSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_string(),
            })
            .await
            .map_err(|s| self.fail("stat", s))?;
        info_from(self.remote.ok(reply.into_inner()).info)
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        let reply = self
            .client()
            .update(api::UpdateSnapshotRequest {
                snapshotter: self.name.clone(),
                info: Some(convert::snapshot_info(&info)),
                update_mask: Some(FieldMask {
                    paths: fieldpaths.to_vec(),
                }),
            })
            .await
            .map_err(|s| self.fail("update", s))?;
        info_from(self.remote.ok(reply.into_inner()).info)
    }

    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        let reply = self
            .client()
            .usage(api::UsageRequest {
                snapshotter: self.name.clone(),
                key: key.to_string(),
            })
            .await
            .map_err(|s| self.fail("usage", s))?;
        let reply = self.remote.ok(reply.into_inner());
        Ok(Usage {
            size: reply.size,
            inodes: reply.inodes,
        })
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        let reply = self
            .client()
            .mounts(api::MountsRequest {
                snapshotter: self.name.clone(),
                key: key.to_string(),
            })
            .await
            .map_err(|s| self.fail("mounts", s))?;
        Ok(convert::mounts_from(
            self.remote.ok(reply.into_inner()).mounts,
        ))
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        let reply = self
            .client()
            .prepare(api::PrepareSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: wire_labels(labels),
            })
            .await
            .map_err(|s| self.fail("prepare", s))?;
        Ok(convert::mounts_from(
            self.remote.ok(reply.into_inner()).mounts,
        ))
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        let reply = self
            .client()
            .view(api::ViewSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels: wire_labels(labels),
            })
            .await
            .map_err(|s| self.fail("view", s))?;
        Ok(convert::mounts_from(
            self.remote.ok(reply.into_inner()).mounts,
        ))
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
        self.client()
            .commit(api::CommitSnapshotRequest {
                snapshotter: self.name.clone(),
                name: name.to_string(),
                key: key.to_string(),
                labels: wire_labels(labels),
                parent: String::new(),
            })
            .await
            .map_err(|s| self.fail("commit", s))?;
        self.remote.ok(());
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), Error> {
        self.client()
            .remove(api::RemoveSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_string(),
            })
            .await
            .map_err(|s| self.fail("remove", s))?;
        self.remote.ok(());
        Ok(())
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        let mut stream = self
            .client()
            .list(api::ListSnapshotsRequest {
                snapshotter: self.name.clone(),
                filters: filters.to_vec(),
            })
            .await
            .map_err(|s| self.fail("walk", s))?
            .into_inner();
        let mut infos = Vec::new();
        while let Some(batch) = stream.message().await.map_err(|s| self.fail("walk", s))? {
            infos.extend(batch.info.iter().map(convert::snapshot_info_from));
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(self.remote.ok(infos))
    }

    async fn cleanup(&self) -> Result<(), Error> {
        self.client()
            .cleanup(api::CleanupRequest {
                snapshotter: self.name.clone(),
            })
            .await
            .map_err(|s| self.fail("cleanup", s))?;
        self.remote.ok(());
        Ok(())
    }
}

/// The live exports of a proxy: its address and the last connection error.
pub(crate) fn live_exports(remote: &Remote) -> BTreeMap<String, String> {
    let health = remote.health();
    let mut exports = BTreeMap::from([(
        "address".to_string(),
        health.address().display().to_string(),
    )]);
    if let Some(error) = health.last_error() {
        exports.insert("last_error".to_string(), error);
    }
    exports.insert(
        "connection".to_string(),
        if health.down().is_some() {
            "down"
        } else {
            "up"
        }
        .to_string(),
    );
    exports
}

impl LiveStatus for ProxySnapshotter {
    fn exports(&self) -> BTreeMap<String, String> {
        live_exports(&self.remote)
    }

    fn unavailable(&self) -> Option<String> {
        self.remote.health().down()
    }
}
