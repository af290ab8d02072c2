//! The exchange's behaviour: filters, order, topic and namespace checks, subscribers that
//! fall behind, closing, no subscriber left behind, and its config.

use std::time::Duration;

use plinth_api::containerd::events::ImageCreate;
use plinth_core::Category;

use super::*;
use crate::events::any_of;

fn image(name: &str, labels: &[(&str, &str)]) -> prost_types::Any {
    any_of(&ImageCreate {
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

fn exchange(queue: usize) -> MemoryExchange {
    MemoryExchange::new(queue, known_field_readers()).unwrap()
}

fn strings(filters: &[&str]) -> Vec<String> {
    filters.iter().map(|f| f.to_string()).collect()
}

/// Every event a subscription holds, once the exchange is closed or has dropped it: what it
/// read, and how it ended. A subscription that stays open fails the test instead of hanging
/// it.
async fn read_to_end(subscription: &mut Subscription) -> (Vec<Arc<Envelope>>, Option<Error>) {
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), subscription.recv())
            .await
            .expect("the subscription ended (it is still open after its last event)");
        let Some(next) = next else { break };
        match next {
            Ok(envelope) => events.push(envelope),
            Err(error) => {
                assert!(
                    subscription.recv().await.is_none(),
                    "the end after the error"
                );
                return (events, Some(error));
            }
        }
    }
    (events, None)
}

#[tokio::test]
async fn filter_table() {
    let exchange = exchange(64);
    // (filters, indices of the events below that match)
    let cases: &[(&[&str], &[usize])] = &[
        (&[], &[0, 1, 2, 3]),
        (&[""], &[0, 1, 2, 3]),
        (&["topic==/images/create"], &[0]),
        (&["topic~=^/images/"], &[0, 1]),
        (&["topic!=/images/create"], &[1, 2, 3]),
        (&["namespace==default"], &[0, 2]),
        (&["namespace~=^k8s"], &[1]),
        (&["namespace==default,topic~=^/images/"], &[0]),
        // Several filters: any may match (containerd has no `or` inside a filter).
        (&["namespace==k8s.io", "topic==/tasks/exit"], &[1, 2]),
        (&["event.name==alpine"], &[0]),
        (&["event.name"], &[0, 1]),
        (&["event.name!=alpine"], &[1, 2, 3]),
        (&["event.labels.\"a.b\"==x"], &[0]),
        (&["event.labels.a.b==x"], &[0]),
        (&["event.labels.a.b"], &[0]),
        (&["event.nope"], &[]),
        (&["event"], &[]),
        // As containerd: the timestamp is no filter field; `topic` and `namespace` ignore
        // what follows them in the path.
        (&["timestamp"], &[]),
        (&["topic.rest==/images/create"], &[0]),
        (&["namespace,topic"], &[0, 1, 2, 3]),
    ];
    let mut subscriptions = Vec::new();
    for (filters, _) in cases {
        subscriptions.push(exchange.subscribe(&strings(filters)).unwrap());
    }
    let events = [
        (
            "default",
            "/images/create",
            image("alpine", &[("a.b", "x")]),
        ),
        ("k8s.io", "/images/delete", image("busybox", &[])),
        (
            "default",
            "/tasks/exit",
            prost_types::Any {
                type_url: "containerd.events.TaskExit".into(),
                value: vec![1, 2, 3],
            },
        ),
        (
            "other",
            "/x/y",
            // An ImageCreate that does not decode: its fields are absent.
            prost_types::Any {
                type_url: "containerd.services.images.v1.ImageCreate".into(),
                value: vec![0xff, 0xff],
            },
        ),
    ];
    for (namespace, topic, event) in &events {
        exchange.publish(namespace, topic, event.clone()).unwrap();
    }
    exchange.close();
    for ((filters, expected), mut subscription) in cases.iter().zip(subscriptions) {
        let (got, _) = read_to_end(&mut subscription).await;
        let got: Vec<usize> = got
            .iter()
            .map(|envelope| {
                events
                    .iter()
                    .position(|(_, topic, _)| *topic == envelope.topic)
                    .unwrap()
            })
            .collect();
        assert_eq!(got, *expected, "{filters:?}");
    }
}

#[test]
fn a_filter_that_does_not_parse_is_invalid_and_subscribes_nothing() {
    let exchange = exchange(4);
    let error = exchange
        .subscribe(&strings(&["topic==/a", "topic=/b"]))
        .unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument);
    assert!(
        error
            .message
            .starts_with("subscription filter \"topic=/b\" at position 5: unsupported operator"),
        "{error}"
    );
    assert_eq!(exchange.n_subscribers(), 0);
}

#[test]
fn bad_namespaces_and_topics_are_refused_on_publish_and_forward() {
    let exchange = exchange(4);
    let _subscription = exchange.subscribe(&[]).unwrap();
    // (namespace, topic, the start of the error)
    let cases: &[(&str, &str, &str)] = &[
        ("", "/a", "event namespace must not be empty"),
        ("a/b", "/a", "event namespace \"a/b\" is invalid"),
        ("default", "", "event must not be empty"),
        ("default", "a", "event topic \"a\" must start with '/'"),
        ("default", "/", "event topic \"/\" has no component"),
        (
            "default",
            "/a//b",
            "event topic \"/a//b\": event topic component must",
        ),
        (
            "default",
            "/a/b.",
            "event topic \"/a/b.\": event topic component \"b.\"",
        ),
    ];
    for (namespace, topic, start) in cases {
        let published = exchange.publish(namespace, topic, image("x", &[]));
        let forwarded = exchange.forward(Envelope {
            timestamp: SystemTime::now(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: image("x", &[]),
        });
        for result in [published, forwarded] {
            let error = result.unwrap_err();
            assert_eq!(error.category, Category::InvalidArgument, "{error}");
            assert!(error.message.starts_with(start), "{error} vs {start}");
        }
    }
}

#[tokio::test]
async fn publish_stamps_the_time_and_forward_keeps_the_envelope() {
    let exchange = exchange(4);
    let mut subscription = exchange.subscribe(&[]).unwrap();
    let before = SystemTime::now();
    exchange
        .publish("default", "/images/create", image("a", &[]))
        .unwrap();
    let after = SystemTime::now();
    let forwarded = Envelope {
        timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000),
        namespace: "k8s.io".into(),
        topic: "/tasks/exit".into(),
        event: image("b", &[]),
    };
    exchange.forward(forwarded.clone()).unwrap();
    let published = subscription.recv().await.unwrap().unwrap();
    assert!(before <= published.timestamp && published.timestamp <= after);
    assert_eq!(published.namespace, "default");
    assert_eq!(published.topic, "/images/create");
    assert_eq!(published.event, image("a", &[]));
    assert_eq!(*subscription.recv().await.unwrap().unwrap(), forwarded);
}

/// Publishers on several threads, each in a namespace of its own: every subscriber sees each
/// namespace's events in publish order, and all subscribers see the same order.
#[tokio::test]
async fn order_is_publish_order() {
    const PUBLISHERS: usize = 4;
    const EVENTS: usize = 500;
    let exchange = Arc::new(exchange(PUBLISHERS * EVENTS));
    let mut subscriptions = vec![
        exchange.subscribe(&[]).unwrap(),
        exchange.subscribe(&[]).unwrap(),
    ];
    let threads: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let exchange = exchange.clone();
            std::thread::spawn(move || {
                for n in 0..EVENTS {
                    exchange
                        .publish(&format!("ns{p}"), "/seq", image(&n.to_string(), &[]))
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    exchange.close();
    let mut orders = Vec::new();
    for subscription in &mut subscriptions {
        let (events, end) = read_to_end(subscription).await;
        assert_eq!(end.unwrap().category, Category::Unavailable);
        let order: Vec<(String, usize)> = events
            .iter()
            .map(|envelope| {
                let name = <ImageCreate as prost::Message>::decode(envelope.event.value.as_slice())
                    .unwrap()
                    .name;
                (envelope.namespace.clone(), name.parse().unwrap())
            })
            .collect();
        for p in 0..PUBLISHERS {
            let namespace = format!("ns{p}");
            let sequence: Vec<usize> = order
                .iter()
                .filter(|(ns, _)| *ns == namespace)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(sequence, (0..EVENTS).collect::<Vec<_>>(), "{namespace}");
        }
        let stamps: Vec<SystemTime> = events.iter().map(|e| e.timestamp).collect();
        assert!(
            stamps.windows(2).all(|w| w[0] <= w[1]),
            "timestamps in order"
        );
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "both subscribers saw the same order");
}

/// A subscriber that never reads is dropped once its queue is full: its stream holds the
/// events that fit, then ResourceExhausted saying what to do. Publishers never wait, and a
/// subscriber that reads gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_while_publishers_and_readers_go_on() {
    const QUEUE: usize = 8;
    const EVENTS: usize = 1000;
    let exchange = Arc::new(exchange(QUEUE));
    let mut stalled = exchange.subscribe(&[]).unwrap();
    let mut stalled_images = exchange
        .subscribe(&strings(&["topic==/images/create"]))
        .unwrap();
    // The reader's queue holds every event, so that it never falls behind however the
    // threads are scheduled.
    exchange.set_queue(EVENTS).unwrap();
    let mut reader = exchange.subscribe(&[]).unwrap();
    let reading = tokio::spawn(async move {
        let mut names = Vec::new();
        while let Some(Ok(envelope)) = reader.recv().await {
            let event = <ImageCreate as prost::Message>::decode(envelope.event.value.as_slice());
            names.push(event.unwrap().name);
        }
        names
    });
    let publisher = {
        let exchange = exchange.clone();
        tokio::task::spawn_blocking(move || {
            for n in 0..EVENTS {
                exchange
                    .publish("default", "/tasks/exit", image(&n.to_string(), &[]))
                    .unwrap();
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("publishers never wait for a stalled subscriber")
        .unwrap();
    // The stalled subscriber got the first QUEUE events, then the error, then the end.
    let (events, end) = read_to_end(&mut stalled).await;
    let names: Vec<String> = events
        .iter()
        .map(|e| {
            <ImageCreate as prost::Message>::decode(e.event.value.as_slice())
                .unwrap()
                .name
        })
        .collect();
    assert_eq!(names, (0..QUEUE).map(|n| n.to_string()).collect::<Vec<_>>());
    let error = end.expect("an error after the events");
    assert_eq!(error.category, Category::ResourceExhausted);
    assert!(
        error.message.contains("fell behind by 8 events")
            && error
                .message
                .contains("raise `queue` in [plugins.\"io.containerd.event.v1.exchange\"]"),
        "{error}"
    );
    // A stalled subscriber whose filters matched nothing was not behind.
    assert_eq!(exchange.n_subscribers(), 2);
    exchange.close();
    let names = reading.await.unwrap();
    assert_eq!(
        names,
        (0..EVENTS).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    let (events, end) = read_to_end(&mut stalled_images).await;
    assert!(events.is_empty());
    assert_eq!(end.unwrap().category, Category::Unavailable);
}

#[test]
fn dropped_subscriptions_leave_nothing_behind() {
    let exchange = exchange(2);
    let subscriptions: Vec<_> = (0..100)
        .map(|_| exchange.subscribe(&strings(&["topic==/a"])).unwrap())
        .collect();
    assert_eq!(exchange.n_subscribers(), 100);
    drop(subscriptions);
    assert_eq!(exchange.n_subscribers(), 0, "dropping unsubscribes");
    // Subscribers dropped for falling behind are gone too.
    let behind: Vec<_> = (0..10).map(|_| exchange.subscribe(&[]).unwrap()).collect();
    for _ in 0..3 {
        exchange.publish("default", "/a", image("x", &[])).unwrap();
    }
    assert_eq!(exchange.n_subscribers(), 0, "dropped when behind");
    drop(behind);
    assert_eq!(exchange.n_subscribers(), 0);
}

#[tokio::test]
async fn a_closed_or_dropped_exchange_ends_its_subscriptions() {
    let exchange = exchange(4);
    let mut subscription = exchange.subscribe(&[]).unwrap();
    exchange.publish("default", "/a", image("x", &[])).unwrap();
    exchange.close();
    let (events, end) = read_to_end(&mut subscription).await;
    assert_eq!(events.len(), 1, "what was queued is still read");
    let end = end.unwrap();
    assert_eq!(end.category, Category::Unavailable);
    assert!(end.message.contains("subscribe again"), "{end}");
    for error in [
        exchange
            .publish("default", "/a", image("x", &[]))
            .unwrap_err(),
        exchange.subscribe(&[]).unwrap_err(),
    ] {
        assert_eq!(error.category, Category::Unavailable);
    }

    let exchange = self::exchange(4);
    let mut subscription = exchange.subscribe(&[]).unwrap();
    drop(exchange);
    let (_, end) = read_to_end(&mut subscription).await;
    assert_eq!(end.unwrap().category, Category::Unavailable);
}

fn registration() -> &'static Registration {
    plinth_core::registry::link_time_registrations()
        .find(|r| r.uri() == URI)
        .expect("the exchange is registered")
}

#[test]
fn config_queue_is_checked() {
    let spec = registration().config_spec().expect("a config");
    assert_eq!(
        spec.defaults().unwrap()["queue"].as_integer(),
        Some(DEFAULT_QUEUE as i64)
    );
    // (section, the violation's message; None when valid)
    let max = MAX_QUEUE.to_string();
    let over = (MAX_QUEUE + 1).to_string();
    let cases: &[(&str, Option<&str>)] = &[
        ("", None),
        ("queue = 1", None),
        (&format!("queue = {max}"), None),
        (
            "queue = 0",
            Some("event queue size 0 is out of range: use 1 to 16777216 (default 1024)"),
        ),
        (&format!("queue = {over}"), Some("is out of range")),
    ];
    for (section, expected) in cases {
        let decoded = spec.decode(toml::from_str(section).unwrap()).unwrap();
        let result = spec.validate(decoded.value.as_ref());
        match (result, expected) {
            (Ok(()), None) => {}
            (Err(violation), Some(message)) => {
                assert_eq!(violation.key, ["queue"]);
                assert!(
                    violation.message.contains(message),
                    "{section}: {violation:?}"
                );
            }
            (result, _) => panic!("{section}: {result:?}"),
        }
    }
    assert!(spec.decode(toml::from_str("queue = -1").unwrap()).is_err());
    assert!(MemoryExchange::new(0, FieldReaders::new()).is_err());
}

#[tokio::test]
async fn reconfigure_sets_the_queue_of_later_subscriptions() {
    let exchange = Arc::new(exchange(1));
    let instance = instance_of(exchange.clone());
    let mut before = exchange.subscribe(&[]).unwrap();
    let spec = registration().config_spec().unwrap();
    let decoded = spec.decode(toml::from_str("queue = 3").unwrap()).unwrap();
    reconfigure(&instance, &decoded.value).unwrap();
    let mut after = exchange.subscribe(&[]).unwrap();
    for _ in 0..3 {
        exchange.publish("default", "/a", image("x", &[])).unwrap();
    }
    exchange.close();
    let (events, end) = read_to_end(&mut before).await;
    assert_eq!(
        (events.len(), end.unwrap().category),
        (1, Category::ResourceExhausted)
    );
    let (events, end) = read_to_end(&mut after).await;
    assert_eq!(
        (events.len(), end.unwrap().category),
        (3, Category::Unavailable)
    );
}

#[test]
fn the_instance_is_a_publisher_and_an_exchange() {
    let instance = instance_of(Arc::new(exchange(1)));
    assert!(instance.get::<dyn Publisher>().is_some());
    assert!(instance.get::<dyn Exchange>().is_some());
    assert!(instance.get::<MemoryExchange>().is_some());
}
