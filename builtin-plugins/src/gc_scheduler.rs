//! `io.containerd.gc.v1.scheduler`: decides when the metadata plugin's [`Collector`] runs, as
//! containerd 1.6's scheduler decides it, and collects expired leases on time.
//!
//! What starts a collection (containerd's rules, its config keys):
//! - start-up: one collection `startup_delay` after the plugin starts (none when it is 0);
//! - a manual trigger ([`Scheduler::schedule_and_wait`]: synchronous deletes, `plinthctl gc`):
//!   a collection `schedule_delay` from now, unless one is planned sooner;
//! - deletions (a [`Mutation`] that is `dirty`): with `deletion_threshold` N > 0, the N-th
//!   deletion since the last collection plans one `schedule_delay` from now; with 0 they wait
//!   for the next interval tick (below) — except before anything was ever planned, when the
//!   first one plans a collection at once;
//! - changes of any kind: `mutation_threshold` of them since the last collection make the
//!   next interval tick collect (before anything was planned, they plan one at once);
//! - the interval tick: after each collection the next tick is one interval later, the
//!   interval being what keeps collections to `pause_threshold` of the time (the average
//!   collection time divided by the threshold, minus that average; 1 s while the threshold is
//!   0). A tick collects only when something above asked for it; otherwise the next tick is
//!   one interval later.
//! - beyond containerd, lease expiry: after each collection the next one is planned no later
//!   than [`Stats::next_expiry`], and a change that creates or relabels a lease expiring at
//!   `t` ([`Mutation::expiry`]) plans one at `t` if nothing is planned sooner. Expired
//!   leases are so collected without any other trigger.
//!
//! Waiters of [`Scheduler::schedule_and_wait`] get the outcome of the first collection that
//! starts after they asked. A collection that fails gives its waiters the error and is tried
//! again after the time since the previous collection plus a second (containerd's back-off);
//! what asked for it still asks.
//!
//! Unlike containerd's loop, which wakes at every interval tick to find nothing to do, the
//! task here sleeps until something asks for a collection and then runs it at the tick
//! containerd would have run it at: the same collections at the same times, without idle
//! wake-ups (with a fast collector containerd's interval is a few milliseconds).
//!
//! The scheduler is a tokio task, started at init on the host's runtime; closing the plugin
//! stops it (a collection in flight is finished first, waited for a bounded time) and fails
//! the waiters still queued. Its config is taken in place by a live reload. `plugins ls -d`
//! shows containerd's exports of the config (`PauseThreshold`, `DeletionThreshold`,
//! `MutationThreshold`, `ScheduleDelay`; plus `StartupDelay`) and, once collections ran,
//! `collections`, `failures`, `last_run`, `last_run_duration`, `last_run_phases`,
//! `last_run_removed`, `last_error` and `next_run`, through the plugin's
//! [`LiveStatus`] view. Each collection is logged at debug level: what it removed and how
//! long mark, sweep and backend removal took.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use plinth_core::registration::{ConfigViolation, ValidateConfig};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::error::Error;
use crate::gc::{Collector, Mutation, Run, Scheduler, Stats};
use crate::live::LiveStatus;

/// The plugin's URI.
pub const URI: &str = crate::gc::SCHEDULER_URI;

/// The longest any delay is taken to be: longer ones (a huge `startup_delay`, the interval
/// of a tiny `pause_threshold`) mean "in a year" rather than a clock overflow.
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The interval while `pause_threshold` is 0, and before the first collection (containerd's).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What a failed collection adds to its retry delay (containerd's).
const RETRY_STEP: Duration = Duration::from_secs(1);

/// How soon a collector that reports, as the next expiry, a lease that had expired before
/// the collection began (and should have been removed by it) is asked again, at the least:
/// a guard against collecting in a loop.
const STALE_EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// How long closing the plugin waits for a collection in flight to finish.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// When the scheduler collects: its config, decoded and checked. containerd's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The largest share of time collections may take, from 0 to 0.5: it sets the interval
    /// between collections that are not asked for at once (0: a fixed interval of 1 s).
    pub pause_threshold: f64,
    /// Deletions since the last collection that make one run `schedule_delay` later
    /// (0: deletions wait for the next interval tick).
    pub deletion_threshold: u64,
    /// Changes since the last collection that make the next interval tick collect (0: changes
    /// alone never do).
    pub mutation_threshold: u64,
    /// How long after a manual trigger or a reached threshold the collection runs.
    pub schedule_delay: Duration,
    /// How long after start-up the first collection runs (0: none until something asks).
    pub startup_delay: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: Duration::ZERO,
            startup_delay: Duration::from_millis(100),
        }
    }
}

/// The plugin's config section, `[plugins."io.containerd.gc.v1.scheduler"]`: containerd's
/// keys, values and defaults. Durations are Go-style strings (`"100ms"`, `"1s"`, `"1m"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct SchedulerConfig {
    /// See [`Policy::pause_threshold`]; values outside 0 to 0.5 are taken as the nearest
    /// end, as containerd takes them.
    pub(crate) pause_threshold: f64,
    /// See [`Policy::deletion_threshold`].
    pub(crate) deletion_threshold: i64,
    /// See [`Policy::mutation_threshold`].
    pub(crate) mutation_threshold: i64,
    /// See [`Policy::schedule_delay`]. containerd's `config default` writes its default,
    /// zero, as `"0s"`.
    pub(crate) schedule_delay: String,
    /// See [`Policy::startup_delay`].
    pub(crate) startup_delay: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let policy = Policy::default();
        SchedulerConfig {
            pause_threshold: policy.pause_threshold,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: "0s".to_string(),
            startup_delay: "100ms".to_string(),
        }
    }
}

impl SchedulerConfig {
    /// The policy the section sets.
    ///
    /// # Errors
    /// The first key whose value is not allowed, with what is.
    pub(crate) fn policy(&self) -> Result<Policy, ConfigViolation> {
        if self.pause_threshold.is_nan() {
            return Err(ConfigViolation::new(
                "pause_threshold",
                "nan is not a share of time: use a number from 0 to 0.5 (default 0.02)",
            ));
        }
        let count = |key: &str, value: i64, zero: &str, what: &str, default: u64| {
            u64::try_from(value).map_err(|_| {
                ConfigViolation::new(
                    key,
                    format!(
                        "{value} is negative: use 0 ({zero}) or a number of {what} (default {default})"
                    ),
                )
            })
        };
        let duration = |key: &str, text: &str, default: &str| {
            plinth_core::config::parse_duration(text).map_err(|why| {
                ConfigViolation::new(
                    key,
                    format!("{text:?} is not a duration: {why} (default {default:?})"),
                )
            })
        };
        Ok(Policy {
            pause_threshold: self.pause_threshold.clamp(0.0, 0.5),
            deletion_threshold: count(
                "deletion_threshold",
                self.deletion_threshold,
                "deletions wait for the next interval tick",
                "deletions",
                0,
            )?,
            mutation_threshold: count(
                "mutation_threshold",
                self.mutation_threshold,
                "changes alone never start a collection",
                "changes",
                100,
            )?,
            schedule_delay: duration("schedule_delay", &self.schedule_delay, "0s")?,
            startup_delay: duration("startup_delay", &self.startup_delay, "100ms")?,
        })
    }
}

impl ValidateConfig for SchedulerConfig {
    fn validate(&self) -> Result<(), ConfigViolation> {
        self.policy().map(|_| ())
    }
}

/// `now + delay`, with delays past [`MAX_DELAY`] taken as that.
fn later(now: Instant, delay: Duration) -> Instant {
    now + delay.min(MAX_DELAY)
}

/// The monotonic instant of the wall-clock time `time`, given that `now` is `wall_now`; a
/// time already past is `now`.
fn instant_of(time: SystemTime, now: Instant, wall_now: SystemTime) -> Instant {
    later(now, time.duration_since(wall_now).unwrap_or_default())
}

/// The interval that keeps collections to `pause_threshold` of the time, given that
/// `collections` of them took `gc_time` in all: the average divided by the threshold, minus
/// the average (containerd's rule). With a threshold of 0 the interval stays `current`.
fn pause_interval(
    gc_time: Duration,
    collections: u64,
    pause_threshold: f64,
    current: Duration,
) -> Duration {
    if pause_threshold <= 0.0 || collections == 0 {
        return current;
    }
    // In nanoseconds, rounded: a pacing figure, where 20 ms at 2 % is 980 ms, not a
    // nanosecond less.
    #[allow(clippy::cast_precision_loss)]
    let average = gc_time.as_nanos() as f64 / collections as f64;
    let interval = (average / pause_threshold - average).round();
    #[allow(clippy::cast_precision_loss)]
    let max = MAX_DELAY.as_nanos() as f64;
    if interval >= max {
        MAX_DELAY
    } else {
        // Below a year in nanoseconds, and not negative (the threshold is at most 0.5).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Duration::from_nanos(interval.max(0.0) as u64)
    }
}

/// What arrived for the scheduler since it last looked: mutations, manual triggers, a new
/// policy.
#[derive(Debug, Default)]
struct Events {
    /// A manual trigger ([`Scheduler::schedule_and_wait`]).
    triggered: bool,
    /// Dirty mutations.
    deletions: u64,
    /// Mutations of any kind.
    mutations: u64,
    /// The earliest lease expiry the mutations named.
    expiry: Option<SystemTime>,
    /// A policy a live reload set.
    policy: Option<Policy>,
}

/// The scheduler's state between wake-ups: the variables of containerd's `run` loop, and the
/// earliest lease expiry. Every method takes the time, so the rules are tested without a
/// clock.
#[derive(Debug)]
struct Plan {
    policy: Policy,
    /// containerd's `nextCollection`: the interval tick (or the time a trigger asked for);
    /// `None` until anything is planned.
    next: Option<Instant>,
    /// Whether the task wakes at `next`. While nothing asks for a collection it does not:
    /// containerd's loop would wake at each tick and find nothing to do, so `next` stands
    /// for the tick grid (rolled forward by whole intervals when something asks).
    armed: bool,
    /// When the task started: stands in for the previous collection in the first retry.
    started: Instant,
    /// containerd's `lastCollection`: when the last collection (ok or failed) finished.
    last_finished: Option<Instant>,
    /// The interval between ticks.
    interval: Duration,
    /// The time successful collections took, in all, and how many there were.
    gc_time: Duration,
    collections: u64,
    /// What asked for a collection since the last successful one.
    triggered: bool,
    deletions: u64,
    mutations: u64,
    /// When the earliest live lease expires: a collection runs then.
    expiry: Option<Instant>,
}

impl Plan {
    fn new(policy: Policy, now: Instant) -> Plan {
        let startup =
            (policy.startup_delay > Duration::ZERO).then(|| later(now, policy.startup_delay));
        Plan {
            policy,
            next: startup,
            armed: startup.is_some(),
            started: now,
            last_finished: None,
            interval: DEFAULT_INTERVAL,
            gc_time: Duration::ZERO,
            collections: 0,
            triggered: false,
            deletions: 0,
            mutations: 0,
            expiry: None,
        }
    }

    /// When the task must wake next, if ever.
    fn wake_at(&self) -> Option<Instant> {
        let tick = self.next.filter(|_| self.armed);
        match (tick, self.expiry) {
            (Some(tick), Some(expiry)) => Some(tick.min(expiry)),
            (tick, expiry) => tick.or(expiry),
        }
    }

    /// Whether the next tick must collect: containerd's skip check, negated.
    fn needed(&self) -> bool {
        self.triggered
            || self.last_finished.is_none()
            || self.deletions > 0
            || (self.policy.mutation_threshold > 0
                && self.mutations >= self.policy.mutation_threshold)
    }

    /// Moves an unarmed tick forward by whole intervals to the first one not before `now`:
    /// where containerd's ticks, re-armed one interval apart, would be.
    fn roll(&mut self, now: Instant) {
        let Some(next) = self.next else { return };
        if self.armed || next >= now {
            return;
        }
        let behind = now - next;
        self.next = Some(if self.interval.is_zero() {
            now
        } else {
            let steps = behind.as_nanos().div_ceil(self.interval.as_nanos());
            let step = u32::try_from(steps)
                .ok()
                .and_then(|steps| self.interval.checked_mul(steps))
                .unwrap_or(MAX_DELAY);
            later(next, step)
        });
    }

    /// Takes in what arrived at `now` (`wall_now` on the wall clock) and plans accordingly:
    /// containerd's handling of each event, and the expiry rule.
    fn absorb(&mut self, events: Events, now: Instant, wall_now: SystemTime) {
        if let Some(policy) = events.policy {
            self.policy = policy;
            self.interval = if policy.pause_threshold > 0.0 {
                pause_interval(
                    self.gc_time,
                    self.collections,
                    policy.pause_threshold,
                    self.interval,
                )
            } else {
                DEFAULT_INTERVAL
            };
        }
        if let Some(expiry) = events.expiry {
            let at = instant_of(expiry, now, wall_now);
            self.expiry = Some(self.expiry.map_or(at, |planned| planned.min(at)));
        }
        self.deletions = self.deletions.saturating_add(events.deletions);
        self.mutations = self.mutations.saturating_add(events.mutations);
        self.triggered |= events.triggered;
        if !(events.triggered || events.deletions > 0 || events.mutations > 0) {
            return;
        }
        self.roll(now);
        let deletion_threshold = self.policy.deletion_threshold;
        let mutation_threshold = self.policy.mutation_threshold;
        let at_once = self.triggered
            || (deletion_threshold > 0 && self.deletions >= deletion_threshold)
            || (self.next.is_none()
                && ((deletion_threshold == 0 && self.deletions > 0)
                    || (mutation_threshold > 0 && self.mutations >= mutation_threshold)));
        if at_once {
            let at = later(now, self.policy.schedule_delay);
            if self.next.is_none_or(|next| next > at) {
                self.next = Some(at);
                self.armed = true;
            }
        }
        if self.next.is_some() && !self.armed && self.needed() {
            self.armed = true;
        }
    }

    /// Whether a collection is due at `now`. A tick that finds nothing asked for moves to
    /// the next one (and the task sleeps until something asks).
    fn due(&mut self, now: Instant) -> bool {
        if self.expiry.is_some_and(|expiry| expiry <= now) {
            return true;
        }
        if self.armed && self.next.is_some_and(|next| next <= now) {
            if self.needed() {
                return true;
            }
            self.next = Some(later(now, self.interval));
            self.armed = false;
        }
        false
    }

    /// A collection that started at `started` (`wall_started` on the wall clock) succeeded
    /// at `now` with `stats`.
    fn collected(
        &mut self,
        stats: &Stats,
        now: Instant,
        wall_started: SystemTime,
        wall_now: SystemTime,
    ) {
        self.gc_time = self.gc_time.saturating_add(stats.elapsed());
        self.collections += 1;
        self.triggered = false;
        self.deletions = 0;
        self.mutations = 0;
        self.interval = pause_interval(
            self.gc_time,
            self.collections,
            self.policy.pause_threshold,
            self.interval,
        );
        self.last_finished = Some(now);
        self.next = Some(later(now, self.interval));
        self.armed = false;
        self.expiry = stats.next_expiry.map(|expiry| {
            if expiry <= wall_started {
                let retry = self.interval.max(STALE_EXPIRY_RETRY);
                tracing::warn!(
                    expiry = %rfc3339(expiry),
                    ?retry,
                    "the collector reports a lease that expired before the collection began as live; asking again later"
                );
                later(now, retry)
            } else {
                instant_of(expiry, now, wall_now)
            }
        });
    }

    /// A collection that started at `started` failed at `now`: it is tried again after the
    /// time since the previous collection plus a second (containerd's back-off), and what
    /// asked for it (counts, trigger, a due expiry) still asks. Returns the delay.
    fn failed(&mut self, started: Instant, now: Instant) -> Duration {
        let since = self.last_finished.unwrap_or(self.started);
        let retry = started
            .saturating_duration_since(since)
            .saturating_add(RETRY_STEP)
            .min(MAX_DELAY);
        let at = later(now, retry);
        self.next = Some(at);
        self.armed = true;
        self.last_finished = Some(now);
        if self.expiry.is_some_and(|expiry| expiry <= now) {
            self.expiry = Some(at);
        }
        retry
    }
}

/// A waiter of [`Scheduler::schedule_and_wait`].
type Waiter = oneshot::Sender<Result<Stats, Error>>;

/// What the scheduler's callers leave for its task.
#[derive(Default)]
struct Inbox {
    events: Events,
    /// Waiters for the next collection that starts.
    waiters: Vec<Waiter>,
    /// The plugin is closing: nothing more is taken.
    closed: bool,
}

/// What the scheduler shows about itself ([`Scheduler::last`], the exports).
#[derive(Debug, Default)]
struct Report {
    policy: Policy,
    last: Option<Run>,
    /// Collections that succeeded and failed.
    collections: u64,
    failures: u64,
    /// The next wake-up, on the wall clock.
    next: Option<SystemTime>,
}

/// The wall clock: `SystemTime::now`, or a test's clock that follows tokio's paused one.
type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The state the scheduler's handle, its task and the mutation callback share.
struct Shared {
    inbox: Mutex<Inbox>,
    /// Wakes the task: something is in the inbox.
    wake: Notify,
    report: Mutex<Report>,
    /// Lease expiries and the times shown are read against it.
    clock: WallClock,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error of a waiter the scheduler can no longer answer.
fn closed_error() -> Error {
    Error::unavailable(format!(
        "the GC scheduler ({URI}) is closing (plinthd is stopping or reloading it); retry"
    ))
}

impl Shared {
    /// Records a committed change (the mutation callback).
    fn record(&self, mutation: Mutation) {
        {
            let mut inbox = lock(&self.inbox);
            if inbox.closed {
                return;
            }
            let events = &mut inbox.events;
            events.mutations = events.mutations.saturating_add(1);
            if mutation.dirty {
                events.deletions = events.deletions.saturating_add(1);
            }
            if let Some(expiry) = mutation.expiry {
                events.expiry = Some(events.expiry.map_or(expiry, |e| e.min(expiry)));
            }
        }
        self.wake.notify_one();
    }

    /// Stops taking work and fails the waiters still queued.
    fn shut(&self) {
        let waiters = {
            let mut inbox = lock(&self.inbox);
            inbox.closed = true;
            std::mem::take(&mut inbox.waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(Err(closed_error()));
        }
        self.wake.notify_one();
    }
}

/// containerd's GC scheduler over a [`Collector`]: the plugin's instance, also usable on its
/// own ([`GcScheduler::start`]). Dropping it stops its task (without waiting); the plugin
/// closes it with [`GcScheduler::close`].
pub struct GcScheduler {
    shared: Arc<Shared>,
    /// Disconnected once the task has ended.
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl std::fmt::Debug for GcScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcScheduler")
            .field("report", &*lock(&self.shared.report))
            .finish_non_exhaustive()
    }
}

impl GcScheduler {
    /// Registers for `collector`'s mutations and starts the scheduling task on `runtime`.
    pub fn start(
        collector: Arc<dyn Collector>,
        policy: Policy,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<GcScheduler> {
        GcScheduler::start_with_clock(collector, policy, runtime, Arc::new(SystemTime::now))
    }

    /// [`GcScheduler::start`] with `clock` as the wall clock.
    fn start_with_clock(
        collector: Arc<dyn Collector>,
        policy: Policy,
        runtime: &tokio::runtime::Handle,
        clock: WallClock,
    ) -> Arc<GcScheduler> {
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Notify::new(),
            report: Mutex::new(Report {
                policy,
                ..Report::default()
            }),
            clock,
        });
        // Held weakly: the collector keeps its callbacks for ever, the scheduler may go.
        let weak = Arc::downgrade(&shared);
        collector.on_mutation(Arc::new(move |mutation| {
            if let Some(shared) = weak.upgrade() {
                shared.record(mutation);
            }
        }));
        let (done_sender, done) = std::sync::mpsc::channel();
        runtime.spawn(run(shared.clone(), collector, policy, done_sender));
        Arc::new(GcScheduler {
            shared,
            done: Mutex::new(Some(done)),
        })
    }

    /// Takes a new policy (a live reload): the thresholds and delays apply from the next
    /// event on; a changed `startup_delay` has no effect once started.
    pub fn set_policy(&self, policy: Policy) {
        lock(&self.shared.inbox).events.policy = Some(policy);
        lock(&self.shared.report).policy = policy;
        self.shared.wake.notify_one();
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        lock(&self.shared.report).policy
    }

    /// Stops the scheduler: the waiters still queued get an Unavailable error, a collection
    /// in flight is finished (its waiters get its outcome), and this waits up to `wait` for
    /// the task to end. Blocks: call it from a blocking context.
    ///
    /// # Errors
    /// The task was still running a collection after `wait` (it ends once that is done).
    pub fn close(&self, wait: Duration) -> Result<(), String> {
        self.shared.shut();
        let Some(done) = lock(&self.done).take() else {
            return Ok(());
        };
        match done.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "a garbage collection was still running after {wait:?}; it ends once done"
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for GcScheduler {
    fn drop(&mut self) {
        self.shared.shut();
    }
}

#[tonic::async_trait]
impl Scheduler for GcScheduler {
    async fn schedule_and_wait(&self) -> Result<Stats, Error> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut inbox = lock(&self.shared.inbox);
            if inbox.closed {
                return Err(closed_error());
            }
            inbox.events.triggered = true;
            inbox.waiters.push(sender);
        }
        self.shared.wake.notify_one();
        receiver.await.unwrap_or_else(|_| Err(closed_error()))
    }

    fn last(&self) -> Option<Run> {
        lock(&self.shared.report).last.clone()
    }
}

/// `time` as RFC 3339 (UTC).
fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(|_| "unknown".to_string(), |t| t.to_string())
}

/// `value / unit` with its fraction, trailing zeros dropped (`1.5`, `2`).
fn decimal(value: u128, unit: u128) -> String {
    let (whole, rest) = (value / unit, value % unit);
    if rest == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let fraction = format!("{rest:0width$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A duration as Go prints one (`0s`, `500ns`, `1.5µs`, `100ms`, `2s`, `1m30s`, `1h0m0s`):
/// how containerd shows its delays.
pub fn go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    match nanos {
        0 => "0s".to_string(),
        1..1_000 => format!("{nanos}ns"),
        1_000..1_000_000 => format!("{}µs", decimal(nanos, 1_000)),
        1_000_000..1_000_000_000 => format!("{}ms", decimal(nanos, 1_000_000)),
        _ => {
            let seconds = duration.as_secs();
            let (hours, minutes) = (seconds / 3600, seconds % 3600 / 60);
            let rest =
                u128::from(seconds % 60) * 1_000_000_000 + u128::from(duration.subsec_nanos());
            let seconds = decimal(rest, 1_000_000_000);
            if hours > 0 {
                format!("{hours}h{minutes}m{seconds}s")
            } else if minutes > 0 {
                format!("{minutes}m{seconds}s")
            } else {
                format!("{seconds}s")
            }
        }
    }
}

/// What a collection removed, in words.
pub fn removed_text(stats: &Stats) -> String {
    format!(
        "{} content, {} snapshot, {} lease records; {} blobs, {} backend snapshots",
        stats.content, stats.snapshots, stats.leases, stats.blobs, stats.backend_snapshots
    )
}

/// How long a collection's phases took, in words.
pub fn phases_text(stats: &Stats) -> String {
    format!(
        "mark {}, sweep {}, backend {} (blobs {}, snapshots {}){}",
        go_duration(stats.mark),
        go_duration(stats.sweep),
        go_duration(stats.backend),
        go_duration(stats.blob_removal),
        go_duration(stats.snapshot_removal),
        if stats.remarked {
            " (writes raced the mark: the sweep checked what they touched)"
        } else {
            ""
        }
    )
}

/// containerd's exports of a policy (its keys and Go's formatting), and `StartupDelay`.
fn policy_exports(policy: &Policy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "PauseThreshold".to_string(),
            policy.pause_threshold.to_string(),
        ),
        (
            "DeletionThreshold".to_string(),
            policy.deletion_threshold.to_string(),
        ),
        (
            "MutationThreshold".to_string(),
            policy.mutation_threshold.to_string(),
        ),
        (
            "ScheduleDelay".to_string(),
            go_duration(policy.schedule_delay),
        ),
        (
            "StartupDelay".to_string(),
            go_duration(policy.startup_delay),
        ),
    ])
}

impl LiveStatus for GcScheduler {
    fn exports(&self) -> BTreeMap<String, String> {
        let report = lock(&self.shared.report);
        let mut exports = policy_exports(&report.policy);
        exports.insert("collections".to_string(), report.collections.to_string());
        exports.insert("failures".to_string(), report.failures.to_string());
        if let Some(next) = report.next {
            exports.insert("next_run".to_string(), rfc3339(next));
        }
        if let Some(run) = &report.last {
            exports.insert("last_run".to_string(), rfc3339(run.finished));
            match &run.result {
                Ok(stats) => {
                    exports.insert(
                        "last_run_duration".to_string(),
                        go_duration(stats.elapsed()),
                    );
                    exports.insert("last_run_phases".to_string(), phases_text(stats));
                    exports.insert("last_run_removed".to_string(), removed_text(stats));
                }
                Err(error) => {
                    exports.insert("last_error".to_string(), error.clone());
                }
            }
        }
        exports
    }

    fn unavailable(&self) -> Option<String> {
        // A failed collection is retried; the scheduler itself still serves.
        None
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The scheduler's task: wakes when something arrives or something is due, collects when
/// the plan says so, answers the waiters, and ends when the plugin closes.
async fn run(
    shared: Arc<Shared>,
    collector: Arc<dyn Collector>,
    policy: Policy,
    // Dropped when the task ends, which is what `close` waits for.
    _done: std::sync::mpsc::Sender<()>,
) {
    let clock = shared.clock.clone();
    let mut plan = Plan::new(policy, Instant::now());
    loop {
        let wake_at = plan.wake_at();
        lock(&shared.report).next =
            wake_at.map(|at| clock() + at.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep_until(wake_at) => {}
        }
        let events = {
            let mut inbox = lock(&shared.inbox);
            if inbox.closed {
                break;
            }
            std::mem::take(&mut inbox.events)
        };
        let now = Instant::now();
        plan.absorb(events, now, clock());
        if !plan.due(now) {
            continue;
        }
        // The waiters so far asked before this collection starts: it answers them.
        let waiters = std::mem::take(&mut lock(&shared.inbox).waiters);
        let (started, wall_started) = (Instant::now(), clock());
        // In a task of its own: a collector that panics fails this collection, not the
        // scheduler (whose waiters would then wait for ever).
        let collecting = collector.clone();
        let result = tokio::spawn(async move { collecting.collect().await })
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("the collector panicked: {e}"))));
        let (now, wall_now) = (Instant::now(), clock());
        let result = match result {
            Ok(stats) => {
                plan.collected(&stats, now, wall_started, wall_now);
                tracing::debug!(
                    content = stats.content,
                    snapshots = stats.snapshots,
                    leases = stats.leases,
                    blobs = stats.blobs,
                    backend_snapshots = stats.backend_snapshots,
                    mark = ?stats.mark,
                    sweep = ?stats.sweep,
                    backend = ?stats.backend,
                    remarked = stats.remarked,
                    next_expiry = stats.next_expiry.map(rfc3339),
                    "garbage collected in {}: removed {}; {}",
                    go_duration(stats.elapsed()),
                    removed_text(&stats),
                    phases_text(&stats)
                );
                Ok(stats)
            }
            Err(error) => {
                let retry = plan.failed(started, now);
                tracing::error!(%error, retry_in = ?retry, "garbage collection failed");
                Err(Error::new(
                    error.category,
                    format!("garbage collection failed: {}", error.message),
                ))
            }
        };
        {
            let mut report = lock(&shared.report);
            match &result {
                Ok(_) => report.collections += 1,
                Err(_) => report.failures += 1,
            }
            report.last = Some(Run {
                finished: wall_now,
                result: result.clone().map_err(|e| e.message),
            });
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// The plugin's config as a policy, for init and reloads.
fn policy_of(config: &SchedulerConfig) -> Result<Policy, String> {
    config
        .policy()
        .map_err(|v| format!("{}: {}", v.key.join("."), v.message))
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<SchedulerConfig>()?;
    let policy = policy_of(&config).map_err(InitError::msg)?;
    warn_if_clamped(&config, &policy);
    let collector: Arc<dyn Collector> = ctx.get_single(types::METADATA)?;
    let runtime = ctx
        .extension::<tokio::runtime::Handle>()
        .cloned()
        .or_else(|| tokio::runtime::Handle::try_current().ok())
        .ok_or_else(|| {
            InitError::msg(
                "the GC scheduler needs the host's tokio runtime handle as an init extension",
            )
        })?;
    ctx.meta_mut().exports.extend(policy_exports(&policy));
    Ok(instance_of(GcScheduler::start(collector, policy, &runtime)))
}

/// Says so when `pause_threshold` was outside 0 to 0.5 and is taken as the nearest end.
fn warn_if_clamped(config: &SchedulerConfig, policy: &Policy) {
    if config.pause_threshold != policy.pause_threshold {
        tracing::warn!(
            configured = config.pause_threshold,
            used = policy.pause_threshold,
            "pause_threshold is outside 0 to 0.5; using the nearest end, as containerd does"
        );
    }
}

/// The plugin's instance: the scheduler as a [`Scheduler`], a [`LiveStatus`] and itself (for
/// the reconfigure hook), closed when the plugin is.
fn instance_of(scheduler: Arc<GcScheduler>) -> Instance {
    let closing = scheduler.clone();
    Instance::new(scheduler.clone() as Arc<dyn Scheduler>)
        .with(scheduler.clone() as Arc<dyn LiveStatus>)
        .with(scheduler)
        .on_close(move || closing.close(CLOSE_WAIT).map_err(Into::into))
}

/// Takes a new config in place.
fn reconfigure(
    instance: &Instance,
    config: &plinth_core::registration::AnyConfig,
) -> Result<(), plinth_core::init::BoxError> {
    let config = config
        .downcast_ref::<SchedulerConfig>()
        .ok_or("the GC scheduler was given another plugin's config")?;
    let scheduler = instance
        .get::<GcScheduler>()
        .ok_or("the instance is not the GC scheduler")?;
    let policy = policy_of(config)?;
    warn_if_clamped(config, &policy);
    scheduler.set_policy(policy);
    Ok(())
}

register!(
    Registration::new(types::GC, "scheduler", init)
        .requires(&[types::METADATA])
        .validated_config::<SchedulerConfig>()
        .reconfigure(reconfigure)
);

#[cfg(test)]
mod tests;
