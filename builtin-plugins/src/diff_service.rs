//! `io.containerd.grpc.v1.diff`: containerd's Diff service (Apply, Diff) over the differ
//! plugin (`io.containerd.differ.v1.walking`), in the request's namespace; Diff binds the
//! layer it writes to the request's lease (the `containerd-lease` header), as containerd's
//! does. This is what `ctr images import` and `pull` unpack with, and what `ctr snapshots
//! diff` calls.
//!
//! containerd lets Apply take `payloads` for stream processors (decryption, mostly);
//! plinthd has none, so a request with payloads is refused naming them rather than applied
//! without them.

use std::sync::Arc;

use plinth_api::containerd::services::diff::v1::diff_server::{Diff, DiffServer};
use plinth_api::containerd::services::diff::v1::{
    ApplyRequest, ApplyResponse, DiffRequest, DiffResponse,
};
use plinth_api::containerd::types::Descriptor as DescriptorMessage;
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use crate::convert::{self, labels};
use crate::diff::{CompareRequest, Descriptor, Differ, WriteDiffOptions};
use crate::error::Error;
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces;

#[derive(Clone)]
struct Service {
    differ: Arc<dyn Differ>,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

/// The service over `differ`: for in-process tests.
#[cfg(test)]
pub(crate) fn server(differ: Arc<dyn Differ>) -> DiffServer<impl Diff> {
    DiffServer::new(Service { differ })
}

fn descriptor_message(descriptor: Descriptor) -> DescriptorMessage {
    DescriptorMessage {
        media_type: descriptor.media_type,
        digest: descriptor.digest.to_string(),
        size: descriptor.size,
        annotations: Default::default(),
    }
}

#[tonic::async_trait]
impl Diff for Service {
    async fn apply(&self, request: tonic::Request<ApplyRequest>) -> Reply<ApplyResponse> {
        let namespace = namespaces::from_request(&request)?;
        let body = request.into_inner();
        if !body.payloads.is_empty() {
            let names: Vec<&String> = body.payloads.keys().collect();
            return Err(Error::unimplemented(format!(
                "apply payloads {names:?}: plinthd's differ has no stream processors (such as \
                 decryption); apply the layer without them"
            ))
            .into());
        }
        let wire = body
            .diff
            .ok_or_else(|| Error::invalid("diff (the layer's descriptor) is required"))?;
        let layer = Descriptor {
            media_type: wire.media_type,
            digest: convert::digest(&wire.digest)?,
            size: wire.size,
        };
        let applied = self
            .differ
            .apply(
                &namespace,
                &layer,
                convert::mounts_from(body.mounts),
                body.sync_fs,
            )
            .await?;
        Ok(tonic::Response::new(ApplyResponse {
            applied: Some(descriptor_message(applied)),
        }))
    }

    async fn diff(&self, request: tonic::Request<DiffRequest>) -> Reply<DiffResponse> {
        let namespace = namespaces::from_request(&request)?;
        let lease = crate::leases::from_request(&request)?;
        let body = request.into_inner();
        let compare = CompareRequest {
            media_type: body.media_type,
            reference: body.r#ref,
            labels: labels(&body.labels),
            options: WriteDiffOptions {
                source_date_epoch: body
                    .source_date_epoch
                    .as_ref()
                    .map(|t| convert::time(Some(t))),
                ..WriteDiffOptions::default()
            },
        };
        let written = self
            .differ
            .compare(
                &namespace,
                lease.as_deref(),
                convert::mounts_from(body.left),
                convert::mounts_from(body.right),
                compare,
            )
            .await?;
        Ok(tonic::Response::new(DiffResponse {
            diff: Some(descriptor_message(written)),
        }))
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, DiffServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let differ: Arc<dyn Differ> = ctx.get_single(types::DIFF)?;
    Ok(Instance::new(
        Arc::new(Service { differ }) as Arc<dyn GrpcService>
    ))
}

register!(Registration::new(types::GRPC, "diff", init).requires(&[types::DIFF]));
