//! The GC scheduler against a fake collector, on tokio's paused clock: time moves only when
//! every task waits, straight to the next timer, so a collection's time is exact and a
//! test never sleeps. Each test asks "when does the next collection start?" and gets the
//! virtual time since the scheduler started.

use std::collections::VecDeque;
use std::sync::Mutex;

use plinth_core::Category;
use tokio::sync::{Semaphore, mpsc};

use super::*;
use crate::gc::MutationCallback;

/// How far the tests look for a collection that must not come.
const HOUR: Duration = Duration::from_secs(3600);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// The wall-clock time the test clock shows at the scheduler's start.
fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + secs(2_000_000_000)
}

/// What one collection of the fake does.
#[derive(Debug, Clone)]
struct Step {
    /// How long it takes on the (paused) clock.
    takes: Duration,
    /// Whether it waits for the test to open the gate before it ends.
    gated: bool,
    /// Whether it panics instead of answering.
    panics: bool,
    outcome: Result<Stats, Error>,
}

impl Step {
    fn ok(stats: Stats) -> Step {
        Step {
            takes: Duration::ZERO,
            gated: false,
            panics: false,
            outcome: Ok(stats),
        }
    }

    fn failing(message: &str) -> Step {
        Step {
            outcome: Err(Error::unavailable(message)),
            ..Step::ok(Stats::default())
        }
    }

    fn panicking() -> Step {
        Step {
            panics: true,
            ..Step::ok(Stats::default())
        }
    }

    fn gated(self) -> Step {
        Step {
            gated: true,
            ..self
        }
    }

    fn taking(self, takes: Duration) -> Step {
        Step { takes, ..self }
    }
}

/// Stats whose phases add up to `elapsed` (what the pause threshold counts), having removed
/// `content` records.
fn stats(elapsed: Duration, content: u64) -> Stats {
    Stats {
        content,
        mark: elapsed,
        ..Stats::default()
    }
}

/// Stats that say the next lease expires `at` after the start.
fn expiring(at: Duration) -> Stats {
    Stats {
        next_expiry: Some(epoch() + at),
        ..stats(ms(20), 0)
    }
}

/// A collector that runs its script (then empty collections of 20 ms) and reports when
/// each collection starts.
struct FakeCollector {
    callbacks: Mutex<Vec<MutationCallback>>,
    script: Mutex<VecDeque<Step>>,
    started: mpsc::UnboundedSender<Instant>,
    gate: Semaphore,
}

#[tonic::async_trait]
impl Collector for FakeCollector {
    async fn collect(&self) -> Result<Stats, Error> {
        let step = lock(&self.script)
            .pop_front()
            .unwrap_or_else(|| Step::ok(stats(ms(20), 0)));
        let _ = self.started.send(Instant::now());
        tokio::time::sleep(step.takes).await;
        if step.gated {
            self.gate.acquire().await.expect("the gate stays").forget();
        }
        assert!(!step.panics, "the collector's bug");
        step.outcome
    }

    fn on_mutation(&self, callback: MutationCallback) {
        lock(&self.callbacks).push(callback);
    }
}

/// A scheduler over a fake collector, and what the test watches.
struct Harness {
    scheduler: Arc<GcScheduler>,
    collector: Arc<FakeCollector>,
    started: mpsc::UnboundedReceiver<Instant>,
    origin: Instant,
}

impl Harness {
    /// Starts the scheduler with `policy`; the collector runs `script` first.
    fn start(policy: Policy, script: Vec<Step>) -> Harness {
        let (started_sender, started) = mpsc::unbounded_channel();
        let collector = Arc::new(FakeCollector {
            callbacks: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
            started: started_sender,
            gate: Semaphore::new(0),
        });
        let origin = Instant::now();
        // The wall clock follows the paused one, from `epoch()`.
        let clock: WallClock = Arc::new(move || epoch() + (Instant::now() - origin));
        let scheduler = GcScheduler::start_with_clock(
            collector.clone(),
            policy,
            &tokio::runtime::Handle::current(),
            clock,
        );
        Harness {
            scheduler,
            collector,
            started,
            origin,
        }
    }

    /// The time since the start.
    fn elapsed(&self) -> Duration {
        Instant::now() - self.origin
    }

    /// Reports a committed change, as the metadata plugin does.
    fn mutate(&self, dirty: bool, expiry: Option<Duration>) {
        let mutation = Mutation {
            dirty,
            expiry: expiry.map(|at| epoch() + at),
        };
        for callback in lock(&self.collector.callbacks).iter() {
            callback(mutation);
        }
    }

    /// Lets a gated collection end.
    fn release(&self) {
        self.collector.gate.add_permits(1);
    }

    /// When the next collection starts, since the start of the scheduler; `None` when none
    /// starts within an hour from now.
    async fn next_collection(&mut self) -> Option<Duration> {
        tokio::time::timeout(HOUR, self.started.recv())
            .await
            .ok()
            .flatten()
            .map(|at| at - self.origin)
    }

    /// Lets the clock run to `at` since the start; asserts that no collection starts
    /// before.
    async fn idle_until(&mut self, at: Duration) {
        let left = at.saturating_sub(self.elapsed());
        let early = tokio::time::timeout(left, self.started.recv()).await;
        assert!(
            early.is_err(),
            "a collection started at {:?}, before {at:?}",
            self.elapsed()
        );
    }

    /// Registers a waiter now (its first poll) and returns the rest of its wait.
    fn wait(&self) -> tokio::task::JoinHandle<Result<Stats, Error>> {
        let scheduler = self.scheduler.clone();
        let mut waiter = Box::pin(async move { scheduler.schedule_and_wait().await });
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        assert!(
            waiter.as_mut().poll(&mut context).is_pending(),
            "answered before any collection"
        );
        tokio::spawn(waiter)
    }
}

/// containerd's defaults with the given changes: no start-up collection unless asked.
fn policy(change: impl FnOnce(&mut Policy)) -> Policy {
    let mut policy = Policy {
        startup_delay: Duration::ZERO,
        ..Policy::default()
    };
    change(&mut policy);
    policy
}

#[tokio::test(start_paused = true)]
async fn startup_delay_plans_the_first_collection_and_nothing_follows_unasked() {
    // (startup_delay, when the first collection starts)
    let cases = [
        (ms(100), Some(ms(100))),
        (secs(5), Some(secs(5))),
        (Duration::ZERO, None),
    ];
    for (startup_delay, expected) in cases {
        let mut harness = Harness::start(policy(|p| p.startup_delay = startup_delay), vec![]);
        assert_eq!(
            harness.next_collection().await,
            expected,
            "{startup_delay:?}"
        );
        assert_eq!(
            harness.next_collection().await,
            None,
            "{startup_delay:?}: then"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_manual_trigger_collects_after_schedule_delay_unless_one_is_planned_sooner() {
    // (startup_delay, schedule_delay, when the triggered collection starts)
    let cases = [
        (Duration::ZERO, Duration::ZERO, ms(0)),
        (Duration::ZERO, ms(250), ms(250)),
        // Planned later: the trigger brings it forward.
        (secs(10), ms(250), ms(250)),
        // Planned sooner: the trigger does not put it off.
        (secs(1), secs(5), secs(1)),
    ];
    for (startup_delay, schedule_delay, expected) in cases {
        let case = format!("startup {startup_delay:?}, delay {schedule_delay:?}");
        let mut harness = Harness::start(
            policy(|p| {
                p.startup_delay = startup_delay;
                p.schedule_delay = schedule_delay;
            }),
            vec![Step::ok(stats(ms(3), 7))],
        );
        let waiter = harness.wait();
        assert_eq!(harness.next_collection().await, Some(expected), "{case}");
        let answer = waiter.await.unwrap();
        assert_eq!(answer, Ok(stats(ms(3), 7)), "{case}");
        assert_eq!(
            harness.scheduler.last().map(|run| run.result),
            Some(Ok(stats(ms(3), 7))),
            "{case}"
        );
        // The trigger was answered: a change below every threshold collects nothing.
        harness.mutate(false, None);
        assert_eq!(harness.next_collection().await, None, "{case}: then");
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_get_the_first_collection_that_starts_after_they_asked() {
    let first = stats(ms(1), 1);
    let second = stats(ms(1), 2);
    let mut harness = Harness::start(
        policy(|_| {}),
        vec![Step::ok(first.clone()).gated(), Step::ok(second.clone())],
    );
    let early = [harness.wait(), harness.wait()];
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    // Asked while the first collection runs: it waits for the next.
    let late = harness.wait();
    harness.release();
    for waiter in early {
        assert_eq!(waiter.await.unwrap(), Ok(first.clone()));
    }
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    assert_eq!(late.await.unwrap(), Ok(second));
    assert_eq!(harness.next_collection().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_failed_collection_fails_its_waiters_and_is_tried_again_later() {
    let mut harness = Harness::start(
        policy(|_| {}),
        vec![
            Step::failing("disk gone"),
            Step::failing("disk still gone"),
            Step::ok(stats(ms(20), 3)).gated(),
        ],
    );
    let waiter = harness.wait();
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    let error = waiter.await.unwrap().unwrap_err();
    assert_eq!(
        (error.category, error.message.as_str()),
        (
            Category::Unavailable,
            "garbage collection failed: disk gone"
        )
    );
    // Retried after the time since the previous collection (here the start) plus 1 s, then
    // after 1 s + 1 s: containerd's back-off. What asked for it still asks.
    assert_eq!(harness.next_collection().await, Some(secs(1)));
    assert_eq!(harness.next_collection().await, Some(secs(3)));
    // The third is held: the second failure is the last run.
    let exports = harness.scheduler.exports();
    assert_eq!(exports["failures"], "2");
    assert_eq!(
        exports["last_error"],
        "garbage collection failed: disk still gone"
    );
    harness.release();
    assert_eq!(harness.next_collection().await, None);
    let exports = harness.scheduler.exports();
    assert_eq!(exports["collections"], "1");
    assert!(!exports.contains_key("last_error"), "{exports:?}");
    assert_eq!(exports["last_run_removed"], removed_text(&stats(ms(20), 3)));
}

#[tokio::test(start_paused = true)]
async fn a_collector_that_panics_fails_the_collection_not_the_scheduler() {
    let mut harness = Harness::start(
        policy(|_| {}),
        vec![Step::panicking(), Step::ok(stats(ms(20), 4))],
    );
    let waiter = harness.wait();
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    let error = waiter.await.unwrap().unwrap_err();
    assert_eq!(error.category, Category::Internal);
    assert!(
        error.message.contains("the collector panicked"),
        "{error:?}"
    );
    // Still scheduling: the next waiter is answered.
    let waiter = harness.wait();
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    assert_eq!(waiter.await.unwrap(), Ok(stats(ms(20), 4)));
}

#[tokio::test(start_paused = true)]
async fn deletions_collect_at_the_threshold_or_at_the_next_tick() {
    // Three deletions start one; fewer never do.
    let mut harness = Harness::start(policy(|p| p.deletion_threshold = 3), vec![]);
    harness.mutate(true, None);
    harness.mutate(true, None);
    harness.idle_until(HOUR).await;
    harness.mutate(false, None);
    harness.idle_until(2 * HOUR).await;
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(2 * HOUR));

    // With no threshold, the first deletion starts one while nothing was ever planned...
    let mut harness = Harness::start(policy(|_| {}), vec![]);
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    // ...and later ones wait for the next interval tick: 20 ms collections at a pause
    // threshold of 2 % are 980 ms apart, from the end of the last one.
    harness.idle_until(ms(2500)).await;
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(ms(2940)));
    // A tick with nothing to do does not collect.
    assert_eq!(harness.next_collection().await, None);
}

#[tokio::test(start_paused = true)]
async fn mutations_make_the_next_tick_collect_once_the_threshold_is_reached() {
    let mut harness = Harness::start(policy(|p| p.mutation_threshold = 3), vec![]);
    // Nothing planned yet: reaching the threshold starts one.
    for _ in 0..3 {
        harness.mutate(false, None);
    }
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    // Then: below it, ticks pass; at it, the next tick (980 ms apart) collects.
    harness.mutate(false, None);
    harness.mutate(false, None);
    harness.idle_until(ms(2500)).await;
    harness.mutate(false, None);
    assert_eq!(harness.next_collection().await, Some(ms(2940)));

    // With a threshold of 0, changes alone never collect.
    let mut harness = Harness::start(policy(|p| p.mutation_threshold = 0), vec![]);
    for _ in 0..1000 {
        harness.mutate(false, None);
    }
    assert_eq!(harness.next_collection().await, None);
}

#[test]
fn pause_threshold_sets_the_interval_between_ticks() {
    // (time all collections took, how many, pause_threshold, interval before, interval)
    let cases = [
        (ms(20), 1, 0.02, secs(1), ms(980)),
        (ms(30), 3, 0.01, secs(1), ms(990)),
        (secs(1), 1, 0.5, secs(7), secs(1)),
        (Duration::ZERO, 4, 0.02, secs(1), Duration::ZERO),
        // A threshold of 0 keeps the interval; so does having no collection yet.
        (secs(9), 1, 0.0, secs(1), secs(1)),
        (secs(9), 0, 0.02, secs(1), secs(1)),
        // Far too long is a year.
        (secs(1000), 1, 1e-12, secs(1), MAX_DELAY),
    ];
    for (gc_time, collections, threshold, current, expected) in cases {
        assert_eq!(
            pause_interval(gc_time, collections, threshold, current),
            expected,
            "{gc_time:?} over {collections} at {threshold}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_interval_follows_the_average_collection_time() {
    let mut harness = Harness::start(
        policy(|p| p.pause_threshold = 0.5),
        vec![Step::ok(stats(secs(1), 0)), Step::ok(stats(secs(3), 0))],
    );
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    // Average 1 s at 50 %: the next tick 1 s later.
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(secs(1)));
    // Average 2 s: 2 s later.
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(secs(3)));
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_plans_a_collection_without_any_other_trigger() {
    let mut harness = Harness::start(
        policy(|p| p.startup_delay = secs(5)),
        vec![Step::ok(expiring(secs(8))), Step::ok(expiring(secs(30)))],
    );
    // A lease expiring after the planned collection does not put it off.
    harness.mutate(false, Some(secs(8)));
    assert_eq!(harness.next_collection().await, Some(secs(5)));
    // The collector's next expiry is the next collection, then the one after.
    assert_eq!(harness.next_collection().await, Some(secs(8)));
    assert_eq!(harness.next_collection().await, Some(secs(30)));
    assert_eq!(harness.next_collection().await, None);

    // A lease made later, expiring sooner than anything planned, brings a collection
    // forward; an expiry already past collects at once.
    let mut harness = Harness::start(
        policy(|p| p.startup_delay = secs(60)),
        vec![Step::ok(expiring(secs(60))), Step::ok(stats(ms(20), 0))],
    );
    harness.idle_until(secs(2)).await;
    harness.mutate(false, Some(secs(12)));
    assert_eq!(harness.next_collection().await, Some(secs(12)));
    assert_eq!(harness.next_collection().await, Some(secs(60)));
    harness.mutate(false, Some(secs(1)));
    assert_eq!(harness.next_collection().await, Some(secs(60)));
}

#[tokio::test(start_paused = true)]
async fn an_expiry_that_passes_during_a_collection_collects_again_and_a_stale_one_does_not_loop() {
    // The collection takes 2 s; a lease it saw live expired at 1 s: collected at once after.
    let mut harness = Harness::start(
        policy(|_| {}),
        vec![
            Step::ok(expiring(secs(1))).taking(secs(2)),
            // A collector that reports a lease expired before it began (at 1 s, this one
            // starting at 2 s) as the next expiry: asked again in a second, not in a loop.
            Step::ok(expiring(secs(1))),
            Step::ok(stats(ms(20), 0)),
        ],
    );
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    assert_eq!(harness.next_collection().await, Some(secs(2)));
    assert_eq!(harness.next_collection().await, Some(secs(3)));
    assert_eq!(harness.next_collection().await, None);
}

#[tokio::test(start_paused = true)]
async fn a_failed_expiry_collection_is_retried_with_the_back_off() {
    let mut harness = Harness::start(
        policy(|_| {}),
        vec![Step::failing("disk gone"), Step::ok(stats(ms(20), 0))],
    );
    harness.mutate(false, Some(secs(4)));
    assert_eq!(harness.next_collection().await, Some(secs(4)));
    // 4 s since the start, plus 1 s.
    assert_eq!(harness.next_collection().await, Some(secs(9)));
    assert_eq!(harness.next_collection().await, None);
}

#[tokio::test(start_paused = true)]
async fn closing_fails_queued_waiters_and_finishes_the_collection_in_flight() {
    let mut harness = Harness::start(policy(|_| {}), vec![Step::ok(stats(ms(1), 5)).gated()]);
    let in_flight = harness.wait();
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    let queued = harness.wait();
    let scheduler = harness.scheduler.clone();
    let closing = tokio::task::spawn_blocking(move || scheduler.close(secs(30)));
    let answered = tokio::time::timeout(HOUR, queued).await;
    let error = answered
        .expect("the queued waiter is answered")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.category, Category::Unavailable);
    assert!(error.message.contains("closing"), "{error:?}");
    harness.release();
    assert_eq!(in_flight.await.unwrap(), Ok(stats(ms(1), 5)));
    assert_eq!(closing.await.unwrap(), Ok(()));
    // Closed: refused at once, and the collector's callbacks do nothing.
    let refused = harness.scheduler.schedule_and_wait().await.unwrap_err();
    assert_eq!(refused.category, Category::Unavailable);
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, None);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_scheduler_stops_its_task() {
    let harness = Harness::start(policy(|_| {}), vec![]);
    let Harness {
        scheduler,
        collector,
        mut started,
        ..
    } = harness;
    let done = lock(&scheduler.done).take().unwrap();
    drop(scheduler);
    for callback in lock(&collector.callbacks).iter() {
        callback(Mutation {
            dirty: true,
            expiry: None,
        });
    }
    assert!(tokio::time::timeout(HOUR, started.recv()).await.is_err());
    assert_eq!(
        done.try_recv(),
        Err(std::sync::mpsc::TryRecvError::Disconnected)
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_policy_applies_from_the_next_event_and_shows_in_the_exports() {
    let mut harness = Harness::start(policy(|_| {}), vec![]);
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(ms(0)));
    harness.scheduler.set_policy(policy(|p| {
        p.deletion_threshold = 1;
        p.schedule_delay = ms(300);
    }));
    harness.idle_until(ms(100)).await;
    // Now one deletion plans a collection 300 ms later, before the next tick.
    harness.mutate(true, None);
    assert_eq!(harness.next_collection().await, Some(ms(400)));
    let exports = harness.scheduler.exports();
    assert_eq!(exports["DeletionThreshold"], "1");
    assert_eq!(exports["ScheduleDelay"], "300ms");
}

#[tokio::test(start_paused = true)]
async fn exports_show_the_policy_and_the_last_collection() {
    let removed = Stats {
        content: 1,
        snapshots: 2,
        leases: 3,
        blobs: 4,
        backend_snapshots: 5,
        mark: ms(1),
        sweep: Duration::from_micros(1500),
        backend: secs(2),
        blob_removal: ms(1500),
        snapshot_removal: ms(500),
        remarked: false,
        next_expiry: None,
    };
    let mut harness = Harness::start(policy(|_| {}), vec![Step::ok(removed)]);
    let exports = harness.scheduler.exports();
    let expected_policy = [
        ("PauseThreshold", "0.02"),
        ("DeletionThreshold", "0"),
        ("MutationThreshold", "100"),
        ("ScheduleDelay", "0s"),
        ("StartupDelay", "0s"),
        ("collections", "0"),
        ("failures", "0"),
    ];
    let expected: BTreeMap<String, String> = expected_policy
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(exports, expected);
    harness.idle_until(secs(10)).await;
    let waiter = harness.wait();
    assert_eq!(harness.next_collection().await, Some(secs(10)));
    waiter.await.unwrap().unwrap();
    let exports = harness.scheduler.exports();
    assert_eq!(exports["collections"], "1");
    assert_eq!(exports["last_run"], "2033-05-18T03:33:30Z");
    assert_eq!(exports["last_run_duration"], "2.0025s");
    assert_eq!(
        exports["last_run_phases"],
        "mark 1ms, sweep 1.5ms, backend 2s (blobs 1.5s, snapshots 500ms)"
    );
    assert_eq!(
        exports["last_run_removed"],
        "1 content, 2 snapshot, 3 lease records; 4 blobs, 5 backend snapshots"
    );
    assert!(!exports.contains_key("next_run"), "{exports:?}");
    assert_eq!(harness.next_collection().await, None);
}

#[test]
fn durations_print_as_go_prints_them() {
    let cases = [
        (Duration::ZERO, "0s"),
        (Duration::from_nanos(500), "500ns"),
        (Duration::from_nanos(1500), "1.5µs"),
        (ms(100), "100ms"),
        (Duration::from_micros(1250), "1.25ms"),
        (secs(1), "1s"),
        (ms(1500), "1.5s"),
        (secs(60), "1m0s"),
        (secs(90), "1m30s"),
        (secs(3600), "1h0m0s"),
        (secs(3723) + ms(500), "1h2m3.5s"),
    ];
    for (duration, expected) in cases {
        assert_eq!(go_duration(duration), expected, "{duration:?}");
    }
}

fn registration() -> &'static Registration {
    plinth_core::registry::link_time_registrations()
        .find(|r| r.uri() == URI)
        .expect("the scheduler is registered")
}

#[test]
fn the_plugin_is_containerds_scheduler_requiring_the_metadata_plugin() {
    let registration = registration();
    assert_eq!(
        (registration.plugin_type(), registration.id()),
        (types::GC, "scheduler")
    );
    assert_eq!(registration.required_types(), [types::METADATA]);
    assert!(registration.reconfigure_hook().is_some());
    let defaults = registration.config_spec().unwrap().defaults().unwrap();
    let expected: toml::Table = toml::from_str(
        "pause_threshold = 0.02\ndeletion_threshold = 0\nmutation_threshold = 100\n\
         schedule_delay = \"0s\"\nstartup_delay = \"100ms\"\n",
    )
    .unwrap();
    assert_eq!(defaults, expected);
}

/// A config section and what it gives: a policy, or the key refused and part of what is
/// said about it.
type ConfigCase<'a> = (&'a str, Result<Policy, (&'a str, &'a str)>);

#[test]
fn config_values_are_checked_at_load() {
    let spec = registration().config_spec().expect("a config");
    let defaults = Policy::default();
    let cases: &[ConfigCase<'_>] = &[
        ("", Ok(defaults)),
        (
            "pause_threshold = 0.1\ndeletion_threshold = 5\nmutation_threshold = 0\n\
             schedule_delay = \"1s\"\nstartup_delay = \"1m\"",
            Ok(Policy {
                pause_threshold: 0.1,
                deletion_threshold: 5,
                mutation_threshold: 0,
                schedule_delay: secs(1),
                startup_delay: secs(60),
            }),
        ),
        // containerd takes thresholds outside 0 to 0.5 as the nearest end.
        (
            "pause_threshold = 0.9",
            Ok(Policy {
                pause_threshold: 0.5,
                ..defaults
            }),
        ),
        (
            "pause_threshold = -1.0",
            Ok(Policy {
                pause_threshold: 0.0,
                ..defaults
            }),
        ),
        (
            "schedule_delay = \"0\"\nstartup_delay = \"0ms\"",
            Ok(Policy {
                schedule_delay: Duration::ZERO,
                startup_delay: Duration::ZERO,
                ..defaults
            }),
        ),
        (
            "pause_threshold = nan",
            Err(("pause_threshold", "use a number from 0 to 0.5")),
        ),
        (
            "deletion_threshold = -1",
            Err((
                "deletion_threshold",
                "-1 is negative: use 0 (deletions wait",
            )),
        ),
        (
            "mutation_threshold = -5",
            Err(("mutation_threshold", "-5 is negative: use 0 (changes alone")),
        ),
        (
            "schedule_delay = \"soon\"",
            Err(("schedule_delay", "\"soon\" is not a duration")),
        ),
        (
            "startup_delay = \"100\"",
            Err(("startup_delay", "missing unit after 100")),
        ),
        (
            "startup_delay = \"-1s\"",
            Err((
                "startup_delay",
                "\"-1s\" is not a duration: expected a number",
            )),
        ),
    ];
    for (section, expected) in cases {
        let decoded = spec.decode(toml::from_str(section).unwrap()).unwrap();
        let config = decoded
            .value
            .downcast_ref::<SchedulerConfig>()
            .expect("the scheduler's config");
        let checked = spec.validate(decoded.value.as_ref());
        match expected {
            Ok(policy) => {
                assert_eq!(checked, Ok(()), "{section}");
                assert_eq!(config.policy().as_ref(), Ok(policy), "{section}");
            }
            Err((key, said)) => {
                let violation = checked.unwrap_err();
                assert_eq!(violation.key, [*key], "{section}");
                assert!(violation.message.contains(said), "{section}: {violation:?}");
            }
        }
    }
    // Wrong types are refused by the decoder, naming the key.
    for section in ["schedule_delay = 5", "deletion_threshold = \"many\""] {
        let failure = spec.decode(toml::from_str(section).unwrap()).unwrap_err();
        let key = section.split(' ').next().unwrap();
        assert!(
            format!("{failure:?}").contains(key),
            "{section}: {failure:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_instance_is_a_scheduler_with_live_exports_and_takes_a_reload_in_place() {
    let harness = Harness::start(policy(|_| {}), vec![]);
    let instance = instance_of(harness.scheduler.clone());
    assert!(instance.get::<dyn Scheduler>().is_some());
    assert!(instance.get::<dyn LiveStatus>().is_some());
    let spec = registration().config_spec().unwrap();
    let decoded = spec
        .decode(toml::from_str("mutation_threshold = 7").unwrap())
        .unwrap();
    reconfigure(&instance, &decoded.value).unwrap();
    assert_eq!(harness.scheduler.policy().mutation_threshold, 7);
    let live = instance.get::<dyn LiveStatus>().unwrap();
    assert_eq!(live.exports()["MutationThreshold"], "7");
    assert_eq!(live.unavailable(), None);
}

#[test]
fn the_scheduler_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GcScheduler>();
    assert_send_sync::<Policy>();
}
