//! `io.containerd.grpc.v1.events`: containerd's Events service over the event exchange:
//! Publish (in the caller's namespace), Forward (an envelope as given) and Subscribe (a
//! stream of envelopes, in every namespace, as containerd's).

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use plinth_api::containerd::services::events::v1 as api;
use plinth_api::containerd::services::events::v1::events_server::{Events, EventsServer};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use tokio_stream::{Stream, StreamExt as _};

use crate::error::Error;
use crate::events::{Envelope, Exchange};
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces;

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;
type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<api::Envelope, tonic::Status>> + Send>>;

/// Go's zero time (0001-01-01T00:00:00Z) in Unix seconds: what a Go client sends for a
/// timestamp it never set, which containerd refuses on Forward.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

#[derive(Clone)]
struct Service {
    exchange: Arc<dyn Exchange>,
}

/// The wire form of an envelope.
fn to_wire(envelope: &Envelope) -> api::Envelope {
    api::Envelope {
        timestamp: Some(envelope.timestamp.into()),
        namespace: envelope.namespace.clone(),
        topic: envelope.topic.clone(),
        event: Some(envelope.event.clone()),
    }
}

/// An envelope from the wire, with the checks containerd's Forward makes (its timestamp must
/// be set) and the ones it leaves out (the event must be there).
fn from_wire(envelope: Option<api::Envelope>) -> Result<Envelope, Error> {
    let envelope = envelope
        .ok_or_else(|| Error::invalid("forward needs an envelope: set ForwardRequest.envelope"))?;
    let timestamp = envelope
        .timestamp
        .filter(|t| !(t.seconds == GO_ZERO_TIME_SECONDS && t.nanos == 0))
        .ok_or_else(|| {
            Error::invalid(
                "the forwarded envelope has no timestamp: set it to when the event was published",
            )
        })?;
    let timestamp = SystemTime::try_from(timestamp).map_err(|e| {
        Error::invalid(format!(
            "the forwarded envelope's timestamp is not a valid time ({e}): set it to when the event was published"
        ))
    })?;
    let event = envelope.event.ok_or_else(|| {
        Error::invalid("the forwarded envelope has no event: set Envelope.event to the payload")
    })?;
    Ok(Envelope {
        timestamp,
        namespace: envelope.namespace,
        topic: envelope.topic,
        event,
    })
}

#[tonic::async_trait]
impl Events for Service {
    async fn publish(&self, request: tonic::Request<api::PublishRequest>) -> Reply<()> {
        let namespace = namespaces::from_request(&request)?;
        let request = request.into_inner();
        let event = request.event.ok_or_else(|| {
            Error::invalid("publish needs an event: set PublishRequest.event to the payload")
        })?;
        self.exchange.publish(&namespace, &request.topic, event)?;
        Ok(tonic::Response::new(()))
    }

    async fn forward(&self, request: tonic::Request<api::ForwardRequest>) -> Reply<()> {
        let envelope = from_wire(request.into_inner().envelope)?;
        self.exchange.forward(envelope)?;
        Ok(tonic::Response::new(()))
    }

    type SubscribeStream = EnvelopeStream;

    async fn subscribe(
        &self,
        request: tonic::Request<api::SubscribeRequest>,
    ) -> Reply<Self::SubscribeStream> {
        let subscription = self.exchange.subscribe(&request.into_inner().filters)?;
        let stream = subscription.map(|next| match next {
            Ok(envelope) => Ok(to_wire(&envelope)),
            Err(error) => Err(tonic::Status::from(error)),
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, EventsServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let exchange: Arc<dyn Exchange> = ctx.get_single(types::EVENT)?;
    Ok(Instance::new(
        Arc::new(Service { exchange }) as Arc<dyn GrpcService>
    ))
}

register!(Registration::new(types::GRPC, "events", init).requires(&[types::EVENT]));

#[cfg(all(test, feature = "event-exchange"))]
mod tests;
