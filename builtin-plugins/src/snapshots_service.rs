//! `io.containerd.grpc.v1.snapshots`: containerd's Snapshots service over the metadata
//! plugin's namespaced snapshotters, the snapshotter chosen by name in each request.

use std::pin::Pin;
use std::sync::Arc;

use plinth_api::containerd::services::snapshots::v1::snapshots_server::{
    Snapshots, SnapshotsServer,
};
use plinth_api::containerd::services::snapshots::v1::{
    CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
#[cfg(feature = "snapshots-service")]
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use tokio_stream::Stream;

use crate::convert;
use crate::error::Error;
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces::{self, NamespacedStores};
use crate::snapshots::Snapshotter;

/// Infos per `List` reply.
const LIST_BATCH: usize = 100;

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

#[derive(Clone)]
struct Service {
    stores: Arc<dyn NamespacedStores>,
    /// Serving raw (plinthd as a proxy target): the namespace header is ignored, the stores
    /// are asked with an empty namespace, and they resolve any snapshotter name themselves.
    raw: bool,
}

/// containerd's Snapshots service over `stores` without namespaces: every request, whatever
/// its `containerd-namespace` header, reaches `stores.snapshotter("", name)`. For serving
/// snapshotters raw.
#[cfg(feature = "proxy")]
pub(crate) fn raw_server(stores: Arc<dyn NamespacedStores>) -> SnapshotsServer<impl Snapshots> {
    SnapshotsServer::new(Service { stores, raw: true })
}

/// containerd's Snapshots service over `stores`, namespaced and leased by the request
/// headers: for in-process tests.
#[cfg(test)]
pub(crate) fn server(stores: Arc<dyn NamespacedStores>) -> SnapshotsServer<impl Snapshots> {
    SnapshotsServer::new(Service { stores, raw: false })
}

impl Service {
    fn snapshotter<T>(
        &self,
        request: &tonic::Request<T>,
        name: &str,
    ) -> Result<Arc<dyn Snapshotter>, Error> {
        if self.raw {
            return self.stores.clone().snapshotter("", name);
        }
        let namespace = namespaces::from_request(request)?;
        if name.is_empty() {
            return Err(Error::invalid("snapshotter name is required"));
        }
        let lease = crate::leases::from_request(request)?;
        self.stores
            .clone()
            .leased_snapshotter(&namespace, name, lease.as_deref())
    }
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        request: tonic::Request<PrepareSnapshotRequest>,
    ) -> Reply<PrepareSnapshotResponse> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let r = request.get_ref();
        let mounts = snapshotter
            .prepare(&r.key, &r.parent, convert::labels(&r.labels))
            .await?;
        Ok(tonic::Response::new(PrepareSnapshotResponse {
            mounts: convert::mounts(&mounts),
        }))
    }

    async fn view(
        &self,
        request: tonic::Request<ViewSnapshotRequest>,
    ) -> Reply<ViewSnapshotResponse> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let r = request.into_inner();
        let mounts = snapshotter
            .view(&r.key, &r.parent, convert::labels(&r.labels))
            .await?;
        Ok(tonic::Response::new(ViewSnapshotResponse {
            mounts: convert::mounts(&mounts),
        }))
    }

    async fn mounts(&self, request: tonic::Request<MountsRequest>) -> Reply<MountsResponse> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let mounts = snapshotter.mounts(&request.get_ref().key).await?;
        Ok(tonic::Response::new(MountsResponse {
            mounts: convert::mounts(&mounts),
        }))
    }

    async fn commit(&self, request: tonic::Request<CommitSnapshotRequest>) -> Reply<()> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let r = request.get_ref();
        snapshotter
            .commit(&r.name, &r.key, convert::labels(&r.labels))
            .await?;
        Ok(tonic::Response::new(()))
    }

    async fn remove(&self, request: tonic::Request<RemoveSnapshotRequest>) -> Reply<()> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        snapshotter.remove(&request.get_ref().key).await?;
        Ok(tonic::Response::new(()))
    }

    async fn stat(
        &self,
        request: tonic::Request<StatSnapshotRequest>,
    ) -> Reply<StatSnapshotResponse> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let info = snapshotter.stat(&request.get_ref().key).await?;
        Ok(tonic::Response::new(StatSnapshotResponse {
            info: Some(convert::snapshot_info(&info)),
        }))
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateSnapshotRequest>,
    ) -> Reply<UpdateSnapshotResponse> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let r = request.into_inner();
        let info = r.info.ok_or_else(|| Error::invalid("update needs info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = snapshotter
            .update(convert::snapshot_info_from(&info), &paths)
            .await?;
        Ok(tonic::Response::new(UpdateSnapshotResponse {
            info: Some(convert::snapshot_info(&updated)),
        }))
    }

    type ListStream =
        Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, tonic::Status>> + Send>>;

    async fn list(&self, request: tonic::Request<ListSnapshotsRequest>) -> Reply<Self::ListStream> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let infos = snapshotter.walk(&request.get_ref().filters).await?;
        let batches: Vec<Result<ListSnapshotsResponse, tonic::Status>> = infos
            .chunks(LIST_BATCH)
            .map(|chunk| {
                Ok(ListSnapshotsResponse {
                    info: chunk.iter().map(convert::snapshot_info).collect(),
                })
            })
            .collect();
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, request: tonic::Request<UsageRequest>) -> Reply<UsageResponse> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        let usage = snapshotter.usage(&request.get_ref().key).await?;
        Ok(tonic::Response::new(UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }))
    }

    async fn cleanup(&self, request: tonic::Request<CleanupRequest>) -> Reply<()> {
        let snapshotter = self.snapshotter(&request, &request.get_ref().snapshotter)?;
        snapshotter.cleanup().await?;
        Ok(tonic::Response::new(()))
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, SnapshotsServer::new(self.clone()), limits);
    }
}

#[cfg(feature = "snapshots-service")]
fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let stores: Arc<dyn NamespacedStores> = ctx.get_single(types::METADATA)?;
    Ok(Instance::new(
        Arc::new(Service { stores, raw: false }) as Arc<dyn GrpcService>
    ))
}

#[cfg(feature = "snapshots-service")]
register!(
    Registration::new(types::GRPC, "snapshots", init).requires(&[types::METADATA, types::EVENT])
);
