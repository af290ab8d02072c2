//! `io.containerd.event.v1.exchange`: the events exchange, in memory. Publishers never wait:
//! each subscriber has a bounded queue, and one whose queue is full when an event for it
//! arrives is dropped (its stream ends with ResourceExhausted) instead of holding up the
//! publisher or the other subscribers.
//!
//! Every event is delivered under one lock, so all subscribers see events in the same order,
//! which is publish order (in each namespace and across them). Filters are containerd's
//! ([`crate::filters`]), over `topic`, `namespace` and `event.<field>` (for payload types
//! with a [`FieldReader`](crate::events::FieldReader)); `timestamp` is not a filter field, as in containerd.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::SystemTime;

use plinth_core::registration::{ConfigViolation, ValidateConfig};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use crate::error::Error;
use crate::events::{
    DecodedEvent, Envelope, Exchange, Feed, FieldReaders, Offer, Publisher, Subscription,
    known_field_readers, subscription_queue, validate_topic,
};
use crate::filters::FilterSet;
use crate::namespaces::validate_identifier;

/// The plugin's URI, named in the advice to raise the queue size.
const URI: &str = "io.containerd.event.v1.exchange";

/// A subscriber's queue size when none is configured.
pub const DEFAULT_QUEUE: usize = 1024;

/// The largest queue size accepted (a queue takes memory only for the events it holds, but
/// a subscriber 16 million events behind is not catching up).
pub const MAX_QUEUE: usize = 1 << 24;

/// The plugin's config section, `[plugins."io.containerd.event.v1.exchange"]` (plinthd's
/// own key: containerd's exchange has no config, and its queues have no bound).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct ExchangeConfig {
    /// How many events may wait for one subscriber; a subscriber with this many unread
    /// events is dropped when the next one for it arrives. A live reload applies a new
    /// value to the subscriptions made after it.
    pub(crate) queue: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            queue: DEFAULT_QUEUE,
        }
    }
}

impl ValidateConfig for ExchangeConfig {
    fn validate(&self) -> Result<(), ConfigViolation> {
        check_queue(self.queue).map_err(|e| ConfigViolation::new("queue", e.message))
    }
}

fn check_queue(queue: usize) -> Result<(), Error> {
    if (1..=MAX_QUEUE).contains(&queue) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "event queue size {queue} is out of range: use 1 to {MAX_QUEUE} (default {DEFAULT_QUEUE})"
        )))
    }
}

/// The in-memory event exchange (the plugin's instance; also usable on its own).
#[derive(Debug)]
pub struct MemoryExchange {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The queue size of the next subscription.
    queue: AtomicUsize,
    readers: FieldReaders,
}

#[derive(Debug, Default)]
struct State {
    subscribers: BTreeMap<u64, Subscriber>,
    next_id: u64,
    closed: bool,
}

#[derive(Debug)]
struct Subscriber {
    filters: FilterSet,
    /// The filters as given, for the log line when it is dropped.
    filter_text: Vec<String>,
    feed: Feed,
    queue: usize,
}

impl MemoryExchange {
    /// An exchange whose subscribers each get a queue of `queue` events, reading
    /// `event.<field>` filters with `readers`.
    ///
    /// # Errors
    /// Invalid argument when `queue` is not in `1..=`[`MAX_QUEUE`].
    pub fn new(queue: usize, readers: FieldReaders) -> Result<MemoryExchange, Error> {
        check_queue(queue)?;
        Ok(MemoryExchange {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                queue: AtomicUsize::new(queue),
                readers,
            }),
        })
    }

    /// Sets the queue size of the subscriptions made from now on.
    ///
    /// # Errors
    /// Invalid argument when `queue` is not in `1..=`[`MAX_QUEUE`].
    pub fn set_queue(&self, queue: usize) -> Result<(), Error> {
        check_queue(queue)?;
        self.shared.queue.store(queue, Ordering::Relaxed);
        Ok(())
    }

    /// How many subscribers the exchange holds.
    pub fn n_subscribers(&self) -> usize {
        self.shared.lock().subscribers.len()
    }

    /// Closes the exchange: every subscription ends with Unavailable after the events
    /// queued for it, and later calls are refused with Unavailable.
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        let subscribers = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.subscribers)
        };
        for subscriber in subscribers.into_values() {
            subscriber.feed.end(closed());
        }
    }

    /// Delivers an envelope to every subscriber whose filters match it; `stamp` sets its
    /// timestamp under the lock, so that timestamps follow delivery order.
    fn deliver(&self, mut envelope: Envelope, stamp: bool) -> Result<(), Error> {
        let mut state = self.lock();
        if state.closed {
            return Err(closed());
        }
        if stamp {
            envelope.timestamp = SystemTime::now();
        }
        let envelope = Arc::new(envelope);
        let payload: OnceCell<Option<Box<dyn DecodedEvent>>> = OnceCell::new();
        // Borrowed where it can be: this runs for every event and every subscriber, under the
        // exchange's lock.
        let field = |path: &[String]| -> Option<Cow<'_, str>> {
            let (first, rest) = path.split_first()?;
            match first.as_str() {
                "topic" => non_empty(&envelope.topic),
                "namespace" => non_empty(&envelope.namespace),
                "event" if !rest.is_empty() => payload
                    .get_or_init(|| {
                        let reader = self.readers.get(&envelope.event.type_url)?;
                        reader.decode(&envelope.event.value)
                    })
                    .as_ref()?
                    .field(rest)
                    .map(Cow::Owned),
                _ => None,
            }
        };
        let mut behind = Vec::new();
        let mut gone = Vec::new();
        for (id, subscriber) in &state.subscribers {
            if !subscriber.filters.matches(field) {
                continue;
            }
            match subscriber.feed.offer(&envelope) {
                Offer::Queued => {}
                Offer::Full => behind.push(*id),
                Offer::Gone => gone.push(*id),
            }
        }
        for id in gone {
            state.subscribers.remove(&id);
        }
        for id in behind {
            let Some(subscriber) = state.subscribers.remove(&id) else {
                continue;
            };
            tracing::warn!(
                subscriber = id,
                queue = subscriber.queue,
                filters = ?subscriber.filter_text,
                namespace = %envelope.namespace,
                topic = %envelope.topic,
                "event subscriber dropped: it fell behind by a full queue of events; \
                 it must read faster, or raise `queue` in [plugins.\"{URI}\"]"
            );
            subscriber.feed.end(fell_behind(subscriber.queue));
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
    }
}

fn non_empty(value: &str) -> Option<Cow<'_, str>> {
    (!value.is_empty()).then_some(Cow::Borrowed(value))
}

/// The error a subscription dropped for falling behind ends with.
fn fell_behind(queue: usize) -> Error {
    Error::resource_exhausted(format!(
        "event subscription dropped: the subscriber fell behind by {queue} events (its queue \
         was full when the next event arrived); read events faster, or raise `queue` in \
         [plugins.\"{URI}\"] (now {queue}), then subscribe again"
    ))
}

fn closed() -> Error {
    Error::unavailable(
        "the event exchange is closed (the daemon is stopping, or a reload is replacing it): \
         subscribe again once it serves",
    )
}

impl Publisher for MemoryExchange {
    fn publish(&self, namespace: &str, topic: &str, event: prost_types::Any) -> Result<(), Error> {
        validate_identifier("event namespace", namespace)?;
        validate_topic(topic)?;
        let envelope = Envelope {
            timestamp: SystemTime::UNIX_EPOCH,
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event,
        };
        self.shared.deliver(envelope, true)
    }
}

impl Exchange for MemoryExchange {
    fn forward(&self, envelope: Envelope) -> Result<(), Error> {
        envelope.validate()?;
        self.shared.deliver(envelope, false)
    }

    fn subscribe(&self, filters: &[String]) -> Result<Subscription, Error> {
        let parsed = FilterSet::parse_all(filters).map_err(|e| {
            Error::invalid(format!(
                "subscription {e}: filters are containerd's, e.g. topic~=\"^/images/\",namespace==default"
            ))
        })?;
        let mut state = self.shared.lock();
        if state.closed {
            return Err(closed());
        }
        let id = state.next_id;
        state.next_id += 1;
        let queue = self.shared.queue.load(Ordering::Relaxed);
        let (feed, subscription) = subscription_queue(queue);
        state.subscribers.insert(
            id,
            Subscriber {
                filters: parsed,
                filter_text: filters.to_vec(),
                feed,
                queue,
            },
        );
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        Ok(subscription.on_drop(move || {
            if let Some(shared) = shared.upgrade() {
                shared.lock().subscribers.remove(&id);
            }
        }))
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<ExchangeConfig>()?;
    let exchange = Arc::new(
        MemoryExchange::new(config.queue, known_field_readers())
            .map_err(|e| InitError::msg(e.message))?,
    );
    Ok(instance_of(exchange))
}

/// The plugin's instance: the exchange as a [`Publisher`], an [`Exchange`] and itself (for
/// the reconfigure hook), closed when the plugin is.
fn instance_of(exchange: Arc<MemoryExchange>) -> Instance {
    let closing = exchange.clone();
    Instance::new(exchange.clone() as Arc<dyn Publisher>)
        .with(exchange.clone() as Arc<dyn Exchange>)
        .with(exchange)
        .on_close(move || {
            closing.close();
            Ok(())
        })
}

/// Takes a new `queue` in place: subscriptions made from then on get it.
fn reconfigure(
    instance: &Instance,
    config: &plinth_core::registration::AnyConfig,
) -> Result<(), plinth_core::init::BoxError> {
    let config = config
        .downcast_ref::<ExchangeConfig>()
        .ok_or("the event exchange was given another plugin's config")?;
    let exchange = instance
        .get::<MemoryExchange>()
        .ok_or("the instance is not the memory exchange")?;
    exchange.set_queue(config.queue)?;
    Ok(())
}

register!(
    Registration::new(types::EVENT, "exchange", init)
        .validated_config::<ExchangeConfig>()
        .reconfigure(reconfigure)
);

#[cfg(test)]
mod tests;
