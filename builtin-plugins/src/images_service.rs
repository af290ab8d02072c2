//! `io.containerd.grpc.v1.images`: containerd's Images service over the metadata plugin's
//! image records. Each change is published on the event exchange (when one is loaded) after
//! it has committed: `/images/create`, `/images/update`, `/images/delete`. A delete with
//! `sync` answers once a garbage collection that includes it has finished (the GC scheduler,
//! `io.containerd.gc.v1.scheduler`, when one is loaded; without one it is refused).

use std::sync::Arc;

use plinth_api::containerd::services::images::v1::images_server::{Images, ImagesServer};
use plinth_api::containerd::services::images::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse,
    Image as ImageMessage, ListImagesRequest, ListImagesResponse, UpdateImageRequest,
    UpdateImageResponse,
};
use plinth_api::containerd::types::Descriptor as DescriptorMessage;
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use crate::Pool;
use crate::convert::{labels, time, timestamp};
use crate::error::Error;
use crate::gc::Scheduler;
use crate::grpc::{GrpcService, MessageLimits};
use crate::images::{Descriptor, Image, ImageStore};
use crate::namespaces;

#[derive(Clone)]
struct Service {
    store: Arc<dyn ImageStore>,
    /// What a synchronous delete waits for, when a GC scheduler is loaded.
    gc: Option<Arc<dyn Scheduler>>,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// The service over `store`, its synchronous deletes waiting for `gc`: for in-process tests.
#[cfg(test)]
pub(crate) fn server(
    store: Arc<dyn ImageStore>,
    gc: Option<Arc<dyn Scheduler>>,
) -> ImagesServer<impl Images> {
    ImagesServer::new(Service { store, gc })
}

/// An image on the wire, moved field by field (a list of ten thousand images is built with no
/// copy of its strings).
fn message(image: Image) -> ImageMessage {
    ImageMessage {
        name: image.name,
        labels: image.labels.into_iter().collect(),
        target: Some(DescriptorMessage {
            media_type: image.target.media_type,
            digest: image.target.digest,
            size: image.target.size,
            annotations: image.target.annotations.into_iter().collect(),
        }),
        created_at: Some(timestamp(image.created)),
        updated_at: Some(timestamp(image.updated)),
    }
}

/// An image from the wire.
fn image(message: ImageMessage) -> Image {
    let target = message.target.unwrap_or_default();
    Image {
        name: message.name,
        labels: labels(&message.labels),
        target: Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            annotations: labels(&target.annotations),
        },
        created: time(message.created_at.as_ref()),
        updated: time(message.updated_at.as_ref()),
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
    ) -> Reply<T> {
        let namespace = namespaces::from_request(request)?;
        let service = self.clone();
        crate::blocking_in(pool, "images service worker", move || {
            f(&service, &namespace)
        })
        .await
        .map(tonic::Response::new)
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

#[tonic::async_trait]
impl Images for Service {
    async fn get(&self, request: tonic::Request<GetImageRequest>) -> Reply<GetImageResponse> {
        let name = &request.get_ref().name;
        read_here(self, &request, |s, ns| {
            Ok(GetImageResponse {
                image: Some(message(s.store.get(ns, name)?)),
            })
        })
        .map(tonic::Response::new)
    }

    async fn list(&self, request: tonic::Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        let filters = request.get_ref().filters.clone();
        self.run(Pool::Reads, &request, move |s, ns| {
            Ok(ListImagesResponse {
                images: s
                    .store
                    .list(ns, &filters)?
                    .into_iter()
                    .map(message)
                    .collect(),
            })
        })
        .await
    }

    async fn create(
        &self,
        request: tonic::Request<CreateImageRequest>,
    ) -> Reply<CreateImageResponse> {
        let wire = request.get_ref().image.clone();
        self.run(Pool::Writes, &request, move |s, ns| {
            let wire = wire.ok_or_else(|| Error::invalid("image is required"))?;
            if wire.name.is_empty() {
                return Err(Error::invalid("image name is required"));
            }
            let created = s.store.create(ns, image(wire))?;
            Ok(CreateImageResponse {
                image: Some(message(created)),
            })
        })
        .await
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateImageRequest>,
    ) -> Reply<UpdateImageResponse> {
        let body = request.get_ref().clone();
        self.run(Pool::Writes, &request, move |s, ns| {
            let wire = body
                .image
                .ok_or_else(|| Error::invalid("image is required"))?;
            if wire.name.is_empty() {
                return Err(Error::invalid("image name is required"));
            }
            let paths = body.update_mask.map(|m| m.paths).unwrap_or_default();
            let updated = s.store.update(ns, image(wire), &paths)?;
            Ok(UpdateImageResponse {
                image: Some(message(updated)),
            })
        })
        .await
    }

    async fn delete(&self, request: tonic::Request<DeleteImageRequest>) -> Reply<()> {
        let DeleteImageRequest { name, sync } = request.get_ref().clone();
        let what = format!("image {name:?}");
        // `sync` asks for a collection that includes the delete before the answer, as
        // containerd's does.
        let gc = if sync {
            Some(crate::gc::scheduler_for_sync(self.gc.as_ref(), &what)?)
        } else {
            None
        };
        let reply = self
            .run(Pool::Writes, &request, move |s, ns| {
                s.store.delete(ns, &name)
            })
            .await?;
        if let Some(gc) = gc {
            crate::gc::wait_after_delete(gc.as_ref(), &what).await?;
        }
        Ok(reply)
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, ImagesServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let store: Arc<dyn ImageStore> = ctx.get_single(types::METADATA)?;
    // Optional: a build or a config may leave the scheduler out.
    let gc = ctx.get_single::<dyn Scheduler>(types::GC).ok();
    Ok(Instance::new(
        Arc::new(Service { store, gc }) as Arc<dyn GrpcService>
    ))
}

register!(Registration::new(types::GRPC, "images", init).requires(&[
    types::METADATA,
    types::EVENT,
    types::GC
]));
