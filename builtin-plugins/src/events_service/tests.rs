//! The Events service end to end in one process: a tonic server on a real unix socket over
//! the memory exchange, and containerd's generated client.

use std::time::Duration;

use plinth_api::containerd::events::ImageCreate;
use plinth_api::containerd::services::events::v1::events_client::EventsClient;
use plinth_api::containerd::services::events::v1::{
    ForwardRequest, PublishRequest, SubscribeRequest,
};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::*;
use crate::event_exchange::MemoryExchange;
use crate::events::{Publisher as _, any_of, known_field_readers};

/// A server of the service on a unix socket in a temporary directory; stops when dropped.
struct Server {
    exchange: Arc<MemoryExchange>,
    client: EventsClient<Channel>,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn serve(queue: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("events.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let exchange = Arc::new(MemoryExchange::new(queue, known_field_readers()).unwrap());
    let service = Service {
        exchange: exchange.clone(),
    };
    let mut routes = tonic::service::RoutesBuilder::default();
    GrpcService::register(&service, &mut routes, MessageLimits::default());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(socket).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://plinth-events-test")
        .connect_with_connector(connector)
        .await
        .unwrap();
    Server {
        exchange,
        client: EventsClient::new(channel),
        _stop: stop,
        _dir: dir,
    }
}

fn in_namespace<T>(namespace: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(namespaces::NAMESPACE_HEADER, namespace.parse().unwrap());
    request
}

fn image(name: &str) -> prost_types::Any {
    any_of(&ImageCreate {
        name: name.to_string(),
        ..ImageCreate::default()
    })
}

async fn subscribe(server: &Server, filters: &[&str]) -> tonic::Streaming<api::Envelope> {
    let request = SubscribeRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    // The subscription exists once the call is answered: its headers come after it.
    server
        .client
        .clone()
        .subscribe(request)
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn publish_forward_and_subscribe_over_a_socket() {
    let server = serve(16).await;
    let mut client = server.client.clone();
    let mut all = subscribe(&server, &[]).await;
    let mut images = subscribe(&server, &["event.name==alpine", "namespace==k8s.io"]).await;
    assert_eq!(server.exchange.n_subscribers(), 2);

    let before = SystemTime::now();
    client
        .publish(in_namespace(
            "default",
            PublishRequest {
                topic: "/images/create".into(),
                event: Some(image("alpine")),
            },
        ))
        .await
        .unwrap();
    client
        .publish(in_namespace(
            "default",
            PublishRequest {
                topic: "/images/create".into(),
                event: Some(image("busybox")),
            },
        ))
        .await
        .unwrap();
    let forwarded = api::Envelope {
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_000_000_000,
            nanos: 5,
        }),
        namespace: "k8s.io".into(),
        topic: "/tasks/exit".into(),
        event: Some(prost_types::Any {
            type_url: "containerd.events.TaskExit".into(),
            value: vec![1, 2],
        }),
    };
    // Forward takes no namespace header: the envelope says where the event happened.
    client
        .forward(ForwardRequest {
            envelope: Some(forwarded.clone()),
        })
        .await
        .unwrap();

    let first = all.message().await.unwrap().unwrap();
    assert_eq!(
        (first.namespace.as_str(), first.topic.as_str()),
        ("default", "/images/create")
    );
    assert_eq!(first.event, Some(image("alpine")));
    let stamped = SystemTime::try_from(first.timestamp.unwrap()).unwrap();
    assert!(before <= stamped && stamped <= SystemTime::now());
    assert_eq!(
        all.message().await.unwrap().unwrap().event,
        Some(image("busybox"))
    );
    assert_eq!(all.message().await.unwrap().unwrap(), forwarded);

    assert_eq!(
        images.message().await.unwrap().unwrap().event,
        Some(image("alpine"))
    );
    assert_eq!(images.message().await.unwrap().unwrap(), forwarded);

    // A closed exchange ends every stream with Unavailable.
    server.exchange.close();
    let status = images.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");

    // A client that goes away unsubscribes.
    drop(all);
    drop(images);
}

#[tokio::test]
async fn bad_requests_are_invalid_and_say_what_to_do() {
    let server = serve(16).await;
    let mut client = server.client.clone();
    let publish = |namespace: Option<&str>, topic: &str, event: Option<prost_types::Any>| {
        let message = PublishRequest {
            topic: topic.into(),
            event,
        };
        match namespace {
            Some(namespace) => in_namespace(namespace, message),
            None => tonic::Request::new(message),
        }
    };
    let forward = |timestamp: Option<prost_types::Timestamp>,
                   namespace: &str,
                   topic: &str,
                   event: Option<prost_types::Any>| ForwardRequest {
        envelope: Some(api::Envelope {
            timestamp,
            namespace: namespace.into(),
            topic: topic.into(),
            event,
        }),
    };
    let now = Some(prost_types::Timestamp::from(SystemTime::now()));
    let go_zero = Some(prost_types::Timestamp {
        seconds: GO_ZERO_TIME_SECONDS,
        nanos: 0,
    });
    let any = Some(image("x"));
    // (the call's error message, the start expected)
    let cases: Vec<(tonic::Status, &str)> = vec![
        (
            client
                .publish(publish(None, "/a", any.clone()))
                .await
                .unwrap_err(),
            "namespace is required: set the containerd-namespace header",
        ),
        (
            client
                .publish(publish(Some("default"), "a", any.clone()))
                .await
                .unwrap_err(),
            "event topic \"a\" must start with '/'",
        ),
        (
            client
                .publish(publish(Some("default"), "/a", None))
                .await
                .unwrap_err(),
            "publish needs an event",
        ),
        (
            client
                .forward(ForwardRequest { envelope: None })
                .await
                .unwrap_err(),
            "forward needs an envelope",
        ),
        (
            client
                .forward(forward(None, "default", "/a", any.clone()))
                .await
                .unwrap_err(),
            "the forwarded envelope has no timestamp",
        ),
        (
            client
                .forward(forward(go_zero, "default", "/a", any.clone()))
                .await
                .unwrap_err(),
            "the forwarded envelope has no timestamp",
        ),
        (
            client
                .forward(forward(now, "default", "/a", None))
                .await
                .unwrap_err(),
            "the forwarded envelope has no event",
        ),
        (
            client
                .forward(forward(now, "", "/a", any.clone()))
                .await
                .unwrap_err(),
            "event namespace must not be empty",
        ),
        (
            client
                .forward(forward(now, "default", "/a/", any.clone()))
                .await
                .unwrap_err(),
            "event topic \"/a/\"",
        ),
        (
            client
                .subscribe(SubscribeRequest {
                    filters: vec!["topic=/a".into()],
                })
                .await
                .unwrap_err(),
            "subscription filter \"topic=/a\" at position 5",
        ),
    ];
    for (status, start) in cases {
        // containerd answers a call without a namespace with FailedPrecondition.
        let code = if start.starts_with("namespace is required") {
            Code::FailedPrecondition
        } else {
            Code::InvalidArgument
        };
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().starts_with(start), "{status:?} vs {start}");
    }
    assert_eq!(server.exchange.n_subscribers(), 0);
}

/// A client that stops reading is dropped once the socket's buffers and its queue are full:
/// its stream then ends with ResourceExhausted, while the publisher never waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_with_resource_exhausted() {
    const QUEUE: usize = 4;
    let server = serve(QUEUE).await;
    let mut stalled = subscribe(&server, &[]).await;
    // 64 KiB events: the HTTP/2 windows and socket buffers fill after a few dozen.
    let big = any_of(&ImageCreate {
        name: "x".repeat(64 << 10),
        ..ImageCreate::default()
    });
    let exchange = server.exchange.clone();
    let publisher = tokio::task::spawn_blocking(move || {
        let mut published = 0;
        while exchange.n_subscribers() > 0 && published < 10_000 {
            exchange.publish("default", "/big", big.clone()).unwrap();
            published += 1;
            if published % 16 == 0 {
                // Let the server move events into the socket as a live one would.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        published
    });
    let published = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("the publisher never waits")
        .unwrap();
    assert_eq!(
        server.exchange.n_subscribers(),
        0,
        "dropped after {published}"
    );
    let mut received = 0;
    let status = loop {
        match stalled.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended without an error after {received} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fell behind by 4 events"),
        "{status:?}"
    );
    assert!(received < published, "{received} of {published}");
}
