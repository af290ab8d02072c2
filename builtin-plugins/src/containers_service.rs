//! `io.containerd.grpc.v1.containers`: containerd's Containers service over the metadata
//! plugin's container records (records only: no tasks). Each change is published on the
//! event exchange (when one is loaded) after it has committed: `/containers/create`,
//! `/containers/update`, `/containers/delete`.

use std::pin::Pin;
use std::sync::Arc;

use plinth_api::containerd::services::containers::v1::container::Runtime as RuntimeMessage;
use plinth_api::containerd::services::containers::v1::containers_server::{
    Containers, ContainersServer,
};
use plinth_api::containerd::services::containers::v1::{
    Container as ContainerMessage, CreateContainerRequest, CreateContainerResponse,
    DeleteContainerRequest, GetContainerRequest, GetContainerResponse, ListContainerMessage,
    ListContainersRequest, ListContainersResponse, UpdateContainerRequest, UpdateContainerResponse,
};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use tokio_stream::Stream;

use crate::Pool;
use crate::containers::{Container, ContainerStore, Runtime};
use crate::convert::{labels, time, timestamp};
use crate::error::Error;
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces;

#[derive(Clone)]
struct Service {
    store: Arc<dyn ContainerStore>,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// The service over `store`, for in-process tests.
#[cfg(test)]
pub(crate) fn server(store: Arc<dyn ContainerStore>) -> ContainersServer<impl Containers> {
    ContainersServer::new(Service { store })
}

/// A container on the wire, moved field by field (no copy of its spec).
fn message(container: Container) -> ContainerMessage {
    ContainerMessage {
        id: container.id,
        labels: container.labels.into_iter().collect(),
        image: container.image,
        runtime: Some(RuntimeMessage {
            name: container.runtime.name,
            options: container.runtime.options,
        }),
        spec: container.spec,
        snapshotter: container.snapshotter,
        snapshot_key: container.snapshot_key,
        created_at: Some(timestamp(container.created)),
        updated_at: Some(timestamp(container.updated)),
        extensions: container.extensions.into_iter().collect(),
        sandbox: container.sandbox,
    }
}

/// A container from the wire.
fn container(message: ContainerMessage) -> Container {
    let runtime = message.runtime.unwrap_or_default();
    Container {
        id: message.id,
        labels: labels(&message.labels),
        image: message.image,
        runtime: Runtime {
            name: runtime.name,
            options: runtime.options,
        },
        spec: message.spec,
        snapshotter: message.snapshotter,
        snapshot_key: message.snapshot_key,
        created: time(message.created_at.as_ref()),
        updated: time(message.updated_at.as_ref()),
        extensions: message.extensions.into_iter().collect(),
        sandbox: message.sandbox,
    }
}

impl Service {
    /// Runs `f` with the request's namespace on `pool` (the store is a database; a list
    /// starts on the serving thread, [`crate::list`]).
    async fn run<R, T: Send + 'static>(
        &self,
        pool: Pool,
        request: &tonic::Request<R>,
        f: impl FnOnce(&Service, &str) -> Result<T, Error> + Clone + Send + 'static,
    ) -> Result<T, tonic::Status> {
        let namespace = namespaces::from_request(request)?;
        let service = self.clone();
        crate::blocking_in(pool, "containers service worker", move || {
            f(&service, &namespace)
        })
        .await
        .map_err(Into::into)
    }
}

/// Runs a point read (one record by its key) on the runtime's own thread: a lookup in pages
/// redb caches takes microseconds, while handing it to the blocking pool and back costs two
/// thread wake-ups, and on a busy machine a wait for a core at each (BENCHMARKS.md,
/// "Metadata: images and containers"). Only the first use of a database file, which opens
/// or creates it, blocks longer (once, milliseconds).
fn read_here<R, T>(
    service: &Service,
    request: &tonic::Request<R>,
    f: impl FnOnce(&Service, &str) -> Result<T, Error>,
) -> Result<T, tonic::Status> {
    let namespace = namespaces::from_request(request)?;
    f(service, &namespace).map_err(Into::into)
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Containers for Service {
    async fn get(
        &self,
        request: tonic::Request<GetContainerRequest>,
    ) -> Reply<GetContainerResponse> {
        let id = &request.get_ref().id;
        read_here(self, &request, |s, ns| {
            Ok(GetContainerResponse {
                container: Some(message(s.store.get(ns, id)?)),
            })
        })
        .map(tonic::Response::new)
    }

    async fn list(
        &self,
        request: tonic::Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        let filters = request.get_ref().filters.clone();
        self.run(Pool::Reads, &request, move |s, ns| {
            Ok(ListContainersResponse {
                containers: s
                    .store
                    .list(ns, &filters)?
                    .into_iter()
                    .map(message)
                    .collect(),
            })
        })
        .await
        .map(tonic::Response::new)
    }

    type ListStreamStream = ListStream;

    async fn list_stream(
        &self,
        request: tonic::Request<ListContainersRequest>,
    ) -> Reply<Self::ListStreamStream> {
        let filters = request.get_ref().filters.clone();
        let containers = self
            .run(Pool::Reads, &request, move |s, ns| {
                s.store.list(ns, &filters)
            })
            .await?;
        // One message per container, so that no answer passes the message size limit
        // however many containers there are.
        let stream = tokio_stream::iter(containers.into_iter().map(|c| {
            Ok(ListContainerMessage {
                container: Some(message(c)),
            })
        }));
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn create(
        &self,
        request: tonic::Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        let wire = request.get_ref().container.clone();
        self.run(Pool::Writes, &request, move |s, ns| {
            let wire = wire.ok_or_else(|| Error::invalid("container is required"))?;
            let created = s.store.create(ns, container(wire))?;
            Ok(CreateContainerResponse {
                container: Some(message(created)),
            })
        })
        .await
        .map(tonic::Response::new)
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateContainerRequest>,
    ) -> Reply<UpdateContainerResponse> {
        let body = request.get_ref().clone();
        self.run(Pool::Writes, &request, move |s, ns| {
            let wire = body
                .container
                .ok_or_else(|| Error::invalid("container is required"))?;
            if wire.id.is_empty() {
                return Err(Error::invalid("container id is required"));
            }
            let paths = body.update_mask.map(|m| m.paths).unwrap_or_default();
            let updated = s.store.update(ns, container(wire), &paths)?;
            Ok(UpdateContainerResponse {
                container: Some(message(updated)),
            })
        })
        .await
        .map(tonic::Response::new)
    }

    async fn delete(&self, request: tonic::Request<DeleteContainerRequest>) -> Reply<()> {
        let id = request.get_ref().id.clone();
        self.run(Pool::Writes, &request, move |s, ns| {
            s.store.delete(ns, &id)?;
            Ok(())
        })
        .await
        .map(tonic::Response::new)
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, ContainersServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let store: Arc<dyn ContainerStore> = ctx.get_single(types::METADATA)?;
    Ok(Instance::new(
        Arc::new(Service { store }) as Arc<dyn GrpcService>
    ))
}

register!(
    Registration::new(types::GRPC, "containers", init).requires(&[types::METADATA, types::EVENT])
);
