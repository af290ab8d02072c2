//! The event exchange's publish rate, and what a stalled subscriber costs the publisher.
//!
//! Each sample publishes `iters` small events (an `ImageCreate` with a name, as the metadata
//! plugin will) from the bench thread into a fresh `MemoryExchange`:
//! - `none`: no subscriber;
//! - `reader`: one subscriber, drained by a thread of its own as fast as it can (its queue
//!   holds the whole sample, so it is never dropped, however the threads are scheduled);
//! - `reader+stalled`: the reader and a subscriber that never reads, with the default queue
//!   (1024): it is dropped at the 1025th event, and the rest of the sample runs without it;
//! - `reader+stalled-undropped`: the reader and a subscriber that never reads, with a queue
//!   holding the whole sample: the cost of a stalled subscriber before it is dropped.
//!
//! Run: `cargo bench -p plinth-builtin-plugins --bench events`.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plinth_api::containerd::events::ImageCreate;
use plinth_builtin_plugins::event_exchange::{DEFAULT_QUEUE, MemoryExchange};
use plinth_builtin_plugins::events::{Exchange as _, Publisher as _, any_of, known_field_readers};

/// What stalls next to the reader, if anything.
#[derive(Clone, Copy)]
enum Stalled {
    None,
    Dropped,
    Undropped,
}

/// Publishes `iters` events with `readers` draining subscribers and a `stalled` one; returns
/// the publisher's time.
fn sample(iters: u64, readers: usize, stalled: Stalled) -> Duration {
    let whole_sample = usize::try_from(iters)
        .unwrap_or(usize::MAX)
        .clamp(1, 1 << 24);
    let exchange = Arc::new(MemoryExchange::new(whole_sample, known_field_readers()).unwrap());
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let mut subscription = exchange.subscribe(&[]).unwrap();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async { while let Some(Ok(_)) = subscription.recv().await {} });
            })
        })
        .collect();
    let _stalled = match stalled {
        Stalled::None => None,
        Stalled::Undropped => Some(exchange.subscribe(&[]).unwrap()),
        Stalled::Dropped => {
            exchange.set_queue(DEFAULT_QUEUE).unwrap();
            Some(exchange.subscribe(&[]).unwrap())
        }
    };
    let event = any_of(&ImageCreate {
        name: "docker.io/library/alpine:latest".into(),
        ..ImageCreate::default()
    });
    let start = Instant::now();
    for _ in 0..iters {
        exchange
            .publish("default", "/images/create", event.clone())
            .unwrap();
    }
    let elapsed = start.elapsed();
    exchange.close();
    for thread in threads {
        thread.join().unwrap();
    }
    elapsed
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let cases = [
        ("none", 0, Stalled::None),
        ("reader", 1, Stalled::None),
        ("reader+stalled", 1, Stalled::Dropped),
        ("reader+stalled-undropped", 1, Stalled::Undropped),
    ];
    for (name, readers, stalled) in cases {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| sample(iters, readers, stalled))
        });
    }
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
