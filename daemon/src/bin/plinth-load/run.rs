//! `plinth-load run`: the clients, the daemon's resources around them, the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::runtime::Handle;

use crate::RunArgs;
use crate::check::Journal;
use crate::procstat::{self, Sample};
use crate::report::{Report, Resources, Stats};
use crate::worker::{Counters, Op, Settings, Worker};

/// How often the daemon's resources are read while the clients run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long the daemon is given to close the connections of clients that left.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs the clients; whether the run passed.
///
/// # Errors
/// The daemon cannot be reached, or a file cannot be written.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let socket = plinthd::paths::socket_path(&args.address);
    let pid = match args.pid {
        Some(pid) => pid,
        None => procstat::peer_pid(&socket).await?,
    };
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("load-{}", std::process::id()));
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| socket.display().to_string());
    say!(
        "plinth-load: {} clients for {:.1} s against {} (pid {pid}), namespaces {prefix}-*, seed {seed}",
        args.clients,
        args.duration.as_secs_f64(),
        socket.display()
    );
    let settings = Arc::new(Settings {
        socket: socket.clone(),
        snapshotter: args.snapshotter.clone(),
        shared: format!("{prefix}-shared"),
        disconnects: args.disconnects,
        // Each client's share of the rate, as the time between its calls.
        pace: args
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(args.clients as f64 / r)),
        clients: args.clients,
    });
    let counters = Arc::new(Counters::default());
    let threads = if args.shared_runtime {
        Vec::new()
    } else {
        (0..args.clients)
            .map(ClientThread::start)
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let runtimes: Arc<[Handle]> = if args.shared_runtime {
        vec![Handle::current(); args.clients].into()
    } else {
        threads.iter().map(|t| t.handle.clone()).collect()
    };
    let mut workers = Vec::with_capacity(args.clients);
    for (index, runtime) in runtimes.iter().enumerate() {
        let (prefix, settings, counters) = (prefix.clone(), settings.clone(), counters.clone());
        // Connected on the client's own runtime, so that its connection's tasks run there.
        let worker = runtime
            .spawn(async move {
                let mut worker = Worker::connect(index, &prefix, seed, settings, counters).await?;
                worker.setup().await;
                worker.subscribe().await;
                anyhow::Ok(worker)
            })
            .await
            .context("a client panicked while connecting")??;
        workers.push(worker);
    }
    if let Some(first) = workers.first_mut() {
        first.warm_up().await;
    }
    let cold = procstat::sample(pid)?;
    if let Some(warm_up) = args.warm_up {
        say!(
            "plinth-load: warming up for {:.1} s (not counted)",
            warm_up.as_secs_f64()
        );
        let deadline = Instant::now() + warm_up;
        workers = run_all(workers, &runtimes, &[], deadline).await?;
        for w in &mut workers {
            w.stats = Stats::default();
        }
    }
    counters.ops.store(0, Ordering::Relaxed);
    counters.bad.store(0, Ordering::Relaxed);
    let start = procstat::sample(pid)?;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(watch(
        pid,
        start,
        stop.clone(),
        counters.clone(),
        args.progress,
    ));
    let started = Instant::now();
    let deadline = started + args.duration;
    let workers = run_all(workers, &runtimes, &args.begin_with, deadline).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.await.context("the sampler panicked")?;
    let mut workers = settle_all(workers, &runtimes).await?;
    let gone = workers.iter().any(|w| w.gone);

    let mut stats = Stats::default();
    for w in &mut workers {
        stats.merge(std::mem::take(&mut w.stats));
    }
    if gone && !args.until_gone {
        stats.failure("the daemon went away during the run".to_string());
    }
    if let Some(path) = &args.journal {
        let journal = Journal {
            shared: settings.shared.clone(),
            models: workers.iter().map(|w| w.model.clone()).collect(),
        };
        std::fs::write(path, serde_json::to_vec_pretty(&journal)?)
            .with_context(|| format!("writing the journal {}", path.display()))?;
    } else if !args.keep && !gone {
        say!("plinth-load: removing what the clients wrote");
        workers = on_each(workers, &runtimes, "cleaning up", |mut w| async move {
            w.clean_up().await;
            w
        })
        .await?;
        if let Some(first) = workers.first_mut() {
            first.clean_up_shared().await;
        }
    }

    let mut report = Report::new(label, args.clients, elapsed, stats);
    report.gone = gone;
    if !gone {
        let end = procstat::sample(pid)?;
        drop(workers);
        let after = settle(pid, start, end, args.clients).await?;
        let resources = Resources {
            cold,
            start,
            peak: peak.max(end),
            end,
            after,
        };
        if args.check_leaks {
            if end.fds > start.fds {
                report.leaks.push(format!(
                    "the daemon held {} fds when the clients started and {} when they stopped (having removed what they wrote)",
                    start.fds, end.fds
                ));
            }
            if after.fds + clients(args.clients) > start.fds {
                report.leaks.push(format!(
                    "the daemon held {} fds with the {} clients connected and {} after they left (one per connection fewer expected)",
                    start.fds, args.clients, after.fds
                ));
            }
            if after.threads > end.threads {
                report.leaks.push(format!(
                    "the daemon had {} threads when the clients stopped and {} after they left",
                    end.threads, after.threads
                ));
            }
        }
        report.resources = Some(resources);
    }
    // The connections closed on the clients' threads (settled above); now the threads end.
    tokio::task::spawn_blocking(move || threads.into_iter().for_each(ClientThread::stop))
        .await
        .context("stopping the clients' threads")?;
    crate::out(&report.text());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(report.passed())
}

/// Runs every client, each on a task of its own on its runtime: `first`, then the mix until
/// `deadline`.
async fn run_all(
    workers: Vec<Worker>,
    runtimes: &[Handle],
    first: &[Op],
    deadline: Instant,
) -> anyhow::Result<Vec<Worker>> {
    let first: Arc<[Op]> = first.into();
    let start = Instant::now();
    on_each(workers, runtimes, "running", move |mut w| {
        let first = first.clone();
        async move {
            w.run_until(&first, start, deadline).await;
            w
        }
    })
    .await
}

/// Waits for the events every client is owed (not timed: the run is over).
async fn settle_all(workers: Vec<Worker>, runtimes: &[Handle]) -> anyhow::Result<Vec<Worker>> {
    on_each(
        workers,
        runtimes,
        "waiting for its events",
        |mut w| async move {
            w.settle_events().await;
            w
        },
    )
    .await
}

/// Runs `work` on every client at once, each on a task of its own on the client's runtime
/// (`runtimes`, in the clients' order); the clients, in order, once all are done. `doing`
/// names the work in the error a panic becomes.
async fn on_each<F, Fut>(
    workers: Vec<Worker>,
    runtimes: &[Handle],
    doing: &str,
    work: F,
) -> anyhow::Result<Vec<Worker>>
where
    F: Fn(Worker) -> Fut,
    Fut: std::future::Future<Output = Worker> + Send + 'static,
{
    let tasks: Vec<_> = workers
        .into_iter()
        .zip(runtimes)
        .map(|(w, runtime)| runtime.spawn(work(w)))
        .collect();
    let mut workers = Vec::with_capacity(tasks.len());
    for task in tasks {
        workers.push(
            task.await
                .with_context(|| format!("a client panicked while {doing}"))?,
        );
    }
    Ok(workers)
}

/// Reads the daemon's resources until `stop`, printing progress; the peak.
async fn watch(
    pid: u32,
    start: Sample,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    progress: Duration,
) -> Sample {
    let began = Instant::now();
    let mut peak = start;
    let mut next_progress = began + progress;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(sample) = procstat::sample(pid) {
            peak = peak.max(sample);
        }
        if Instant::now() >= next_progress {
            let ops = counters.ops.load(Ordering::Relaxed);
            let seconds = began.elapsed().as_secs_f64();
            say!(
                "plinth-load: {seconds:.1} s: {ops} ops ({:.0}/s), {} unexpected or wrong, daemon RSS {:.1} MiB, {} fds, {} threads",
                ops as f64 / seconds,
                counters.bad.load(Ordering::Relaxed),
                peak.rss_kib as f64 / 1024.0,
                peak.fds,
                peak.threads
            );
            next_progress += progress;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(progress)).await;
    }
    peak
}

/// A client's thread of its own, as a client program of its own would have: a
/// single-threaded runtime that runs the client's calls and its connection, so that one
/// client's answers never wait for a thread that another client's answers keep busy (with
/// all clients on one runtime of two threads, a burst of answers, as from a group commit,
/// queued the cheap calls behind them inside this process: `info` measured 2.9 ms at the
/// median where a separate process measured 0.66 ms against the same daemon at once).
struct ClientThread {
    handle: Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ClientThread {
    /// Starts client `index`'s thread and its runtime.
    fn start(index: usize) -> anyhow::Result<ClientThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a client's runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("client-{index}"))
            .spawn(move || {
                // Runs the tasks spawned on `handle` until told to stop.
                let _ = runtime.block_on(stopped);
            })
            .context("starting a client's thread")?;
        Ok(ClientThread {
            handle,
            stop,
            thread,
        })
    }

    /// Ends the thread once the tasks it runs are at a point where they can be dropped.
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

fn clients(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The daemon's resources once it has closed the connections of the `n` clients that left
/// (one fd each): read until its fds are down by that much from `start` and its threads no
/// more than at `end`, or for [`SETTLE`] at most (a leak).
async fn settle(pid: u32, start: Sample, end: Sample, n: usize) -> anyhow::Result<Sample> {
    let give_up = Instant::now() + SETTLE;
    loop {
        let now = procstat::sample(pid)?;
        let closed = now.fds + clients(n) <= start.fds;
        if (closed && now.threads <= end.threads) || Instant::now() >= give_up {
            return Ok(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    /// A client's tasks, and the tasks they spawn (a connection's), run on the client's own
    /// thread, not on the runtime that spawned them; stopping one waits for its thread to
    /// end, after which its runtime takes no more work, and leaves the others running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_runs_on_a_thread_of_its_own_until_stopped() {
        let (three, four) = (
            ClientThread::start(3).unwrap(),
            ClientThread::start(4).unwrap(),
        );
        let (own, spawned) = three
            .handle
            .spawn(async {
                let spawned = tokio::spawn(async { thread_name() }).await.unwrap();
                (thread_name(), spawned)
            })
            .await
            .unwrap();
        assert_eq!((own.as_str(), spawned.as_str()), ("client-3", "client-3"));
        assert_eq!(
            four.handle.spawn(async { thread_name() }).await.unwrap(),
            "client-4"
        );
        assert_ne!(thread_name(), "client-3");

        // Stopping waits for the thread, and so for the work its runtime still holds.
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        drop(three.handle.spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::SeqCst);
        }));
        let handle = three.handle.clone();
        tokio::task::spawn_blocking(move || three.stop())
            .await
            .unwrap();
        assert!(
            done.load(Ordering::SeqCst),
            "stop returned before the thread ended"
        );
        assert!(
            handle.spawn(async { thread_name() }).await.is_err(),
            "a stopped client's runtime still ran a task"
        );
        assert_eq!(
            four.handle.spawn(async { thread_name() }).await.unwrap(),
            "client-4"
        );
        tokio::task::spawn_blocking(move || four.stop())
            .await
            .unwrap();
    }
}
