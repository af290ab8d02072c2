//! `plinth-load run`: the clients, the daemon's resources around them, the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

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
    });
    let counters = Arc::new(Counters::default());
    let mut workers = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        let mut worker =
            Worker::connect(index, &prefix, seed, settings.clone(), counters.clone()).await?;
        worker.setup().await;
        worker.subscribe().await;
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
        workers = run_all(workers, &[], deadline).await?;
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
    let workers = run_all(workers, &args.begin_with, deadline).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.await.context("the sampler panicked")?;
    let mut workers = settle_all(workers).await?;
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
        workers = on_each(workers, "cleaning up", |mut w| async move {
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
    crate::out(&report.text());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(report.passed())
}

/// Runs every client, each on a task of its own: `first`, then the mix until `deadline`.
async fn run_all(
    workers: Vec<Worker>,
    first: &[Op],
    deadline: Instant,
) -> anyhow::Result<Vec<Worker>> {
    let first: Arc<[Op]> = first.into();
    on_each(workers, "running", move |mut w| {
        let first = first.clone();
        async move {
            w.run_until(&first, deadline).await;
            w
        }
    })
    .await
}

/// Waits for the events every client is owed (not timed: the run is over).
async fn settle_all(workers: Vec<Worker>) -> anyhow::Result<Vec<Worker>> {
    on_each(workers, "waiting for its events", |mut w| async move {
        w.settle_events().await;
        w
    })
    .await
}

/// Runs `work` on every client at once, each on a task of its own; the clients, in order,
/// once all are done. `doing` names the work in the error a panic becomes.
async fn on_each<F, Fut>(workers: Vec<Worker>, doing: &str, work: F) -> anyhow::Result<Vec<Worker>>
where
    F: Fn(Worker) -> Fut,
    Fut: std::future::Future<Output = Worker> + Send + 'static,
{
    let tasks: Vec<_> = workers.into_iter().map(|w| tokio::spawn(work(w))).collect();
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
