//! Events: the [`Envelope`] an event travels in, the [`Publisher`] and [`Exchange`]
//! interfaces that plugins publish to and subscribe through, a [`Subscription`] with its
//! bounded queue, containerd's topic rules, and the `Any` an event payload is packed into.
//!
//! Plugins that publish look the exchange up at init ([`publisher`]) and publish in one line
//! with [`publish`], which does nothing when no exchange is loaded:
//!
//! ```
//! # use std::sync::Arc;
//! use plinth_api::containerd::events::ImageCreate;
//! use plinth_builtin_plugins::events::{self, Publisher};
//!
//! # let publisher: Option<Arc<dyn Publisher>> = None;
//! let event = ImageCreate { name: "docker.io/library/alpine:latest".into(), ..Default::default() };
//! events::publish(publisher.as_deref(), "default", "/images/create", &event);
//! ```
//!
//! containerd's event payloads (`plinth_api::containerd::events`) implement [`Event`]: their
//! proto name, from which their type URL is made, and the fields filters read.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use plinth_core::{InitContext, types};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::namespaces::validate_identifier;

mod payloads;

/// An event as the exchange carries it: when and where it happened, its topic, and its
/// payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// When the event was published (set by the exchange on publish, kept on forward).
    pub timestamp: SystemTime,
    /// The namespace the event belongs to.
    pub namespace: String,
    /// The topic, a path such as `/images/create` (see [`validate_topic`]).
    pub topic: String,
    /// The payload, packed with its type URL (see [`any_of`]).
    pub event: prost_types::Any,
}

impl Envelope {
    /// Checks the namespace and the topic, as the exchange does before it forwards an
    /// envelope.
    ///
    /// # Errors
    /// Invalid argument naming the namespace or topic rule broken.
    pub fn validate(&self) -> Result<(), Error> {
        validate_identifier("event namespace", &self.namespace)?;
        validate_topic(&self.topic)
    }
}

/// Publishes events. Implemented by the event exchange; plugins that emit events hold an
/// `Option<Arc<dyn Publisher>>` (see [`publisher`] and [`publish`]).
pub trait Publisher: Send + Sync {
    /// Publishes `event` on `topic` in `namespace`, stamped with the current time. Never
    /// waits for subscribers: a subscriber that cannot keep up is dropped instead.
    ///
    /// # Errors
    /// Invalid argument for a bad namespace or topic; unavailable once the exchange is
    /// closed.
    fn publish(&self, namespace: &str, topic: &str, event: prost_types::Any) -> Result<(), Error>;
}

/// The event exchange: publish, forward envelopes published elsewhere, and subscribe.
pub trait Exchange: Publisher {
    /// Passes on an envelope published elsewhere (by another process, or on behalf of
    /// another namespace) as it is, timestamp included.
    ///
    /// # Errors
    /// Invalid argument for a bad namespace or topic; unavailable once the exchange is
    /// closed.
    fn forward(&self, envelope: Envelope) -> Result<(), Error>;

    /// Subscribes to the events that match any of `filters` (containerd's filter syntax over
    /// `topic`, `namespace` and `event.<field>`; no filter matches every event), from now
    /// on, in every namespace.
    ///
    /// # Errors
    /// Invalid argument for a filter that does not parse; unavailable once the exchange is
    /// closed.
    fn subscribe(&self, filters: &[String]) -> Result<Subscription, Error>;
}

/// The exchange's [`Publisher`], when one is loaded and was initialised before the caller;
/// a plugin that publishes lists [`types::EVENT`] in its `requires` so that it is.
pub fn publisher(ctx: &InitContext) -> Option<Arc<dyn Publisher>> {
    ctx.get_single::<dyn Publisher>(types::EVENT).ok()
}

/// Publishes `event` through `publisher`, when there is one: the one-line call of a plugin
/// that publishes after its change is done. A failure (a bad topic, a closed exchange) does
/// not undo that change, so it is logged as a warning rather than returned.
pub fn publish<M: Event>(
    publisher: Option<&dyn Publisher>,
    namespace: &str,
    topic: &str,
    event: &M,
) {
    let Some(publisher) = publisher else { return };
    if let Err(error) = publisher.publish(namespace, topic, any_of(event)) {
        tracing::warn!(namespace, topic, %error, "event not published");
    }
}

/// An event payload: a protobuf message with its full proto name, from which its type URL
/// is made ([`type_url`]), and what filters can read of it as `event.<field>`. containerd's
/// payloads in `plinth_api::containerd::events` implement it.
pub trait Event: prost::Message + Default + 'static {
    /// The message's full proto name, e.g. `containerd.events.ContainerCreate`.
    const FULL_NAME: &'static str;

    /// The value at `path` (the part after `event.`), or `None` when it is absent. As in
    /// containerd's generated accessors, an unset field (an empty string, an empty map, a
    /// missing message) is absent, and a label is `labels.<key>` (the rest of the path
    /// joined with `.`).
    fn field(&self, path: &[String]) -> Option<String>;
}

/// The type URL an event payload carries: containerd 1.6's, the message's full proto name
/// alone (the one place that spells it is [`plinth_api::event_type_url`]).
pub fn type_url<M: Event>() -> String {
    plinth_api::event_type_url(M::FULL_NAME)
}

/// Packs `message` into an `Any` with the type URL containerd uses ([`type_url`]).
pub fn any_of<M: Event>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url::<M>(),
        value: message.encode_to_vec(),
    }
}

/// Checks a topic with containerd's rules: it starts with `/` and each `/`-separated
/// component is an identifier (letters and digits, single `.`, `_` or `-` between them).
///
/// # Errors
/// Invalid argument saying which rule is broken and what a topic looks like.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    const EXAMPLE: &str = "a path of identifiers such as /images/create";
    let Some(rest) = topic.strip_prefix('/') else {
        let problem = if topic.is_empty() {
            "must not be empty".to_string()
        } else {
            format!("topic {topic:?} must start with '/'")
        };
        return Err(Error::invalid(format!("event {problem}: use {EXAMPLE}")));
    };
    if rest.is_empty() {
        return Err(Error::invalid(format!(
            "event topic \"/\" has no component: use {EXAMPLE}"
        )));
    }
    for component in rest.split('/') {
        validate_identifier("event topic component", component)
            .map_err(|error| Error::invalid(format!("event topic {topic:?}: {}", error.message)))?;
    }
    Ok(())
}

/// Reads `event.<field>` of one payload type, for the exchange's filters: a table of these,
/// one per event type, is what lets a subscriber filter on a payload.
#[derive(Clone, Copy)]
pub struct FieldReader {
    type_url: fn() -> String,
    decode: fn(&[u8]) -> Option<Box<dyn DecodedEvent>>,
}

impl std::fmt::Debug for FieldReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldReader")
            .field("type_url", &(self.type_url)())
            .finish()
    }
}

/// A decoded payload, seen through its [`Event::field`].
pub trait DecodedEvent {
    /// The value at `path` (after `event.`), or `None` when it is absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl<M: Event> DecodedEvent for M {
    fn field(&self, path: &[String]) -> Option<String> {
        Event::field(self, path)
    }
}

impl FieldReader {
    /// The reader of payloads of type `M`.
    pub fn of<M: Event>() -> Self {
        FieldReader {
            type_url: type_url::<M>,
            decode: |bytes| {
                M::decode(bytes)
                    .ok()
                    .map(|m| Box::new(m) as Box<dyn DecodedEvent>)
            },
        }
    }

    /// The type URL of the payloads this reader reads.
    pub fn type_url(&self) -> String {
        (self.type_url)()
    }

    /// Decodes a payload of this reader's type; `None` when it does not decode (then every
    /// `event.<field>` of it is absent, as in containerd).
    pub fn decode(&self, bytes: &[u8]) -> Option<Box<dyn DecodedEvent>> {
        (self.decode)(bytes)
    }
}

/// Field readers by type URL.
pub type FieldReaders = BTreeMap<String, FieldReader>;

/// Readers of every containerd event payload in `plinth_api::containerd::events`: what the
/// exchange plugin reads `event.<field>` filters with.
pub fn known_field_readers() -> FieldReaders {
    payloads::readers()
}

/// A subscription's stream of events: the envelopes that matched its filters, in publish
/// order, each once. It ends (`None`) when the subscriber unsubscribes, and with an error
/// first when the exchange dropped the subscriber (it fell behind: ResourceExhausted) or was
/// closed (Unavailable). Dropping it unsubscribes.
///
/// Read it with [`Subscription::recv`] or as a [`Stream`](tokio_stream::Stream).
pub struct Subscription {
    receiver: mpsc::Receiver<Arc<Envelope>>,
    ending: Arc<Mutex<Option<Error>>>,
    ended: bool,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("queued", &self.receiver.len())
            .field("ended", &self.ended)
            .finish()
    }
}

/// The exchange's end of a [`Subscription`]: a bounded queue that never waits.
#[derive(Debug)]
pub struct Feed {
    sender: mpsc::Sender<Arc<Envelope>>,
    ending: Arc<Mutex<Option<Error>>>,
}

/// What became of an envelope offered to a [`Feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the subscriber.
    Queued,
    /// The queue is full: the subscriber is behind.
    Full,
    /// The subscriber is gone (its [`Subscription`] was dropped).
    Gone,
}

/// A subscription queue holding at most `capacity` envelopes: the exchange's end and the
/// subscriber's.
///
/// # Panics
/// When `capacity` is 0 or above tokio's semaphore limit (`usize::MAX >> 3`); configs are
/// validated to stay far inside that.
pub fn subscription_queue(capacity: usize) -> (Feed, Subscription) {
    let (sender, receiver) = mpsc::channel(capacity);
    let ending = Arc::new(Mutex::new(None));
    (
        Feed {
            sender,
            ending: ending.clone(),
        },
        Subscription {
            receiver,
            ending,
            ended: false,
            on_drop: None,
        },
    )
}

impl Feed {
    /// Queues `envelope` if there is room; never waits.
    pub fn offer(&self, envelope: &Arc<Envelope>) -> Offer {
        match self.sender.try_send(envelope.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
    }

    /// Ends the subscription with `error`: the subscriber reads what is queued, then the
    /// error, then the end.
    pub fn end(self, error: Error) {
        *self.ending.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

impl Subscription {
    /// Runs `hook` when the subscription is dropped (an exchange forgets its subscriber).
    #[must_use]
    pub fn on_drop(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(hook));
        self
    }

    /// The next event; `Some(Err(_))` once when the exchange dropped the subscriber, `None`
    /// at the end.
    pub async fn recv(&mut self) -> Option<Result<Arc<Envelope>, Error>> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Arc<Envelope>, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(envelope)) => Poll::Ready(Some(Ok(envelope))),
            Poll::Ready(None) => {
                self.ended = true;
                let error = self
                    .ending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                Poll::Ready(error.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio_stream::Stream for Subscription {
    type Item = Result<Arc<Envelope>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.take() {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        // (topic, the start of the error; None when valid)
        let long = format!("/{}", "a".repeat(77));
        let cases: &[(&str, Option<&str>)] = &[
            ("/images/create", None),
            ("/tasks/oom", None),
            ("/a", None),
            ("/snapshot.prepare/x-y_z", None),
            (&long[..77], None),
            (&long, Some("event topic \"/aaaa")),
            ("", Some("event must not be empty")),
            (
                "images/create",
                Some("event topic \"images/create\" must start with '/'"),
            ),
            ("/", Some("event topic \"/\" has no component")),
            (
                "//x",
                Some("event topic \"//x\": event topic component must not be empty"),
            ),
            (
                "/x/",
                Some("event topic \"/x/\": event topic component must not be empty"),
            ),
            (
                "/x/-y",
                Some("event topic \"/x/-y\": event topic component \"-y\" is invalid"),
            ),
            (
                "/x y",
                Some("event topic \"/x y\": event topic component \"x y\" is invalid"),
            ),
            ("/ü", Some("event topic \"/ü\"")),
        ];
        for (topic, expected) in cases {
            let result = validate_topic(topic);
            match (expected, &result) {
                (None, Ok(())) => {}
                (Some(start), Err(error)) => {
                    assert!(
                        error.message.starts_with(start),
                        "{topic:?}: {:?} does not start with {start:?}",
                        error.message
                    );
                    assert_eq!(error.category, plinth_core::Category::InvalidArgument);
                }
                _ => panic!("{topic:?}: expected {expected:?}, got {result:?}"),
            }
        }
    }

    #[test]
    fn envelope_namespace_is_checked() {
        let envelope = Envelope {
            timestamp: SystemTime::now(),
            namespace: "a/b".into(),
            topic: "/x".into(),
            event: prost_types::Any::default(),
        };
        let error = envelope.validate().unwrap_err();
        assert!(
            error
                .message
                .starts_with("event namespace \"a/b\" is invalid"),
            "{error}"
        );
    }

    /// containerd 1.6's typeurl names a proto message by its full name alone.
    #[test]
    fn type_url_is_containerds() {
        use plinth_api::containerd::events::{ContainerCreate, ImageCreate};
        use prost::Message as _;
        let image = ImageCreate {
            name: "x".into(),
            ..ImageCreate::default()
        };
        let any = any_of(&image);
        assert_eq!(any.type_url, "containerd.services.images.v1.ImageCreate");
        assert_eq!(ImageCreate::decode(any.value.as_slice()).unwrap(), image);
        assert_eq!(
            type_url::<ContainerCreate>(),
            "containerd.events.ContainerCreate"
        );
    }

    #[tokio::test]
    async fn a_subscription_reads_what_is_queued_then_the_error_then_the_end() {
        let (feed, mut subscription) = subscription_queue(2);
        let envelope = Arc::new(Envelope {
            timestamp: SystemTime::now(),
            namespace: "default".into(),
            topic: "/x".into(),
            event: prost_types::Any::default(),
        });
        assert_eq!(feed.offer(&envelope), Offer::Queued);
        assert_eq!(feed.offer(&envelope), Offer::Queued);
        assert_eq!(feed.offer(&envelope), Offer::Full);
        feed.end(Error::resource_exhausted("behind"));
        assert!(subscription.recv().await.unwrap().is_ok());
        assert!(subscription.recv().await.unwrap().is_ok());
        assert_eq!(
            subscription.recv().await.unwrap().unwrap_err().message,
            "behind"
        );
        assert!(subscription.recv().await.is_none());
        assert!(subscription.recv().await.is_none());
    }

    #[test]
    fn a_dropped_subscription_is_gone_and_runs_its_hook() {
        let (feed, subscription) = subscription_queue(1);
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dropped.clone();
        let subscription =
            subscription.on_drop(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        drop(subscription);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        let envelope = Arc::new(Envelope {
            timestamp: SystemTime::now(),
            namespace: "default".into(),
            topic: "/x".into(),
            event: prost_types::Any::default(),
        });
        assert_eq!(feed.offer(&envelope), Offer::Gone);
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Envelope>();
        send_sync::<Subscription>();
        send_sync::<Feed>();
        send_sync::<FieldReader>();
        send_sync::<Arc<dyn Exchange>>();
    }
}
