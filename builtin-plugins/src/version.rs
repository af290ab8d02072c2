//! `io.containerd.grpc.v1.version`: the daemon's version, as containerd's Version service.

use std::sync::Arc;

use plinth_api::containerd::services::version::v1::VersionResponse;
use plinth_api::containerd::services::version::v1::version_server::{Version, VersionServer};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use crate::grpc::{GrpcService, MessageLimits};

pub use crate::{REVISION, VERSION};

#[derive(Debug, Clone, Copy)]
struct Service;

#[tonic::async_trait]
impl Version for Service {
    async fn version(
        &self,
        _: tonic::Request<()>,
    ) -> Result<tonic::Response<VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: REVISION.to_string(),
        }))
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, VersionServer::new(*self), limits);
    }
}

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::new(Arc::new(Service) as Arc<dyn GrpcService>))
}

register!(Registration::new(types::GRPC, "version", init));
