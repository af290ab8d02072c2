//! `io.containerd.lease.v1.manager` (the metadata plugin's leases, offered to other plugins)
//! and `io.containerd.grpc.v1.leases` (containerd's Leases service over it). A lease deleted
//! with `sync` is answered once a garbage collection that includes the delete has finished
//! (the GC scheduler, `io.containerd.gc.v1.scheduler`, when one is loaded; without one it is
//! refused).

#[cfg(feature = "lease-manager")]
mod manager {
    use std::sync::Arc;

    use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

    use crate::leases::LeaseManager;

    fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
        let manager: Arc<dyn LeaseManager> = ctx.get_single(types::METADATA)?;
        Ok(Instance::new(manager))
    }

    register!(Registration::new(types::LEASE, "manager", init).requires(&[types::METADATA]));
}

#[cfg(all(test, feature = "leases-service"))]
pub(crate) use service::server;

#[cfg(feature = "leases-service")]
mod service {
    use std::sync::Arc;

    use plinth_api::containerd::services::leases::v1::leases_server::{Leases, LeasesServer};
    use plinth_api::containerd::services::leases::v1::{
        AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest,
        Lease as LeaseMessage, ListRequest, ListResourcesRequest, ListResourcesResponse,
        ListResponse, Resource as ResourceMessage,
    };
    use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

    use crate::Pool;
    use crate::convert::{labels, timestamp};
    use crate::error::Error;
    use crate::gc::Scheduler;
    use crate::grpc::{GrpcService, MessageLimits};
    use crate::leases::{Lease, LeaseManager, Resource};
    use crate::namespaces;

    #[derive(Clone)]
    struct Service {
        manager: Arc<dyn LeaseManager>,
        /// What a synchronous delete waits for, when a GC scheduler is loaded.
        gc: Option<Arc<dyn Scheduler>>,
    }

    type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

    /// The service over `manager`, its synchronous deletes waiting for `gc`: for in-process
    /// tests.
    #[cfg(test)]
    pub(crate) fn server(
        manager: Arc<dyn LeaseManager>,
        gc: Option<Arc<dyn Scheduler>>,
    ) -> LeasesServer<impl Leases> {
        LeasesServer::new(Service { manager, gc })
    }

    fn message(lease: &Lease) -> LeaseMessage {
        LeaseMessage {
            id: lease.id.clone(),
            created_at: Some(timestamp(lease.created)),
            labels: lease.labels.clone().into_iter().collect(),
        }
    }

    fn resource(message: Option<ResourceMessage>) -> Result<Resource, Error> {
        // None is a resource of no kind, which containerd answers with Unimplemented.
        let message = message.unwrap_or_default();
        Ok(Resource {
            kind: message.r#type,
            id: message.id,
        })
    }

    impl Service {
        /// Runs `f` with the request's namespace on `pool` (leases live in a database; a
        /// list starts on the serving thread, [`crate::list`]).
        async fn run<R, T: Send + 'static>(
            &self,
            pool: Pool,
            request: &tonic::Request<R>,
            f: impl FnOnce(&dyn LeaseManager, &str) -> Result<T, Error> + Clone + Send + 'static,
        ) -> Reply<T> {
            let namespace = namespaces::from_request(request)?;
            let manager = Arc::clone(&self.manager);
            crate::blocking_in(pool, "leases service worker", move || {
                f(manager.as_ref(), &namespace)
            })
            .await
            .map(tonic::Response::new)
            .map_err(Into::into)
        }
    }

    #[tonic::async_trait]
    impl Leases for Service {
        async fn create(&self, request: tonic::Request<CreateRequest>) -> Reply<CreateResponse> {
            let body = request.get_ref().clone();
            self.run(Pool::Writes, &request, move |m, ns| {
                let lease = m.create(ns, &body.id, labels(&body.labels))?;
                Ok(CreateResponse {
                    lease: Some(message(&lease)),
                })
            })
            .await
        }

        async fn delete(&self, request: tonic::Request<DeleteRequest>) -> Reply<()> {
            let DeleteRequest { id, sync } = request.get_ref().clone();
            let what = format!("lease {id:?}");
            // `sync` asks for a collection that includes the delete (the lease's resources
            // that nothing else holds go) before the answer, as containerd's does.
            let gc = if sync {
                Some(crate::gc::scheduler_for_sync(self.gc.as_ref(), &what)?)
            } else {
                None
            };
            let reply = self
                .run(Pool::Writes, &request, move |m, ns| m.delete(ns, &id))
                .await?;
            if let Some(gc) = gc {
                crate::gc::wait_after_delete(gc.as_ref(), &what).await?;
            }
            Ok(reply)
        }

        async fn list(&self, request: tonic::Request<ListRequest>) -> Reply<ListResponse> {
            let filters = request.get_ref().filters.clone();
            self.run(Pool::Reads, &request, move |m, ns| {
                Ok(ListResponse {
                    leases: m.list(ns, &filters)?.iter().map(message).collect(),
                })
            })
            .await
        }

        async fn add_resource(&self, request: tonic::Request<AddResourceRequest>) -> Reply<()> {
            let body = request.get_ref().clone();
            self.run(Pool::Writes, &request, move |m, ns| {
                m.add_resource(ns, &body.id, &resource(body.resource)?)
            })
            .await
        }

        async fn delete_resource(
            &self,
            request: tonic::Request<DeleteResourceRequest>,
        ) -> Reply<()> {
            let body = request.get_ref().clone();
            self.run(Pool::Writes, &request, move |m, ns| {
                m.delete_resource(ns, &body.id, &resource(body.resource)?)
            })
            .await
        }

        async fn list_resources(
            &self,
            request: tonic::Request<ListResourcesRequest>,
        ) -> Reply<ListResourcesResponse> {
            let id = request.get_ref().id.clone();
            self.run(Pool::Reads, &request, move |m, ns| {
                Ok(ListResourcesResponse {
                    resources: m
                        .list_resources(ns, &id)?
                        .into_iter()
                        .map(|r| ResourceMessage {
                            id: r.id,
                            r#type: r.kind,
                        })
                        .collect(),
                })
            })
            .await
        }
    }

    impl GrpcService for Service {
        fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
            crate::add_limited!(routes, LeasesServer::new(self.clone()), limits);
        }
    }

    fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
        let manager: Arc<dyn LeaseManager> = ctx.get_single(types::LEASE)?;
        // Optional: a build or a config may leave the scheduler out.
        let gc = ctx.get_single::<dyn Scheduler>(types::GC).ok();
        Ok(Instance::new(
            Arc::new(Service { manager, gc }) as Arc<dyn GrpcService>
        ))
    }

    register!(Registration::new(types::GRPC, "leases", init).requires(&[types::LEASE, types::GC]));
}
