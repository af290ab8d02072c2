//! `plinth-load`: a load generator for plinthd (or containerd) through its socket.
//!
//! `run` starts N clients, each on a connection of its own, for a bounded time. Each works
//! in a namespace of its own, where it knows exactly what must be there, and in one shared
//! namespace, where the clients race each other (a NotFound after a racing delete is
//! expected there and counted apart). Every answer is checked: a read returns the bytes
//! written, a list holds what was committed and not deleted, a stat names the right parent.
//! At the end it prints ops/s and latency percentiles per operation, errors by code, and the
//! daemon's RSS, open file descriptors and threads at the start, at the peak, at the end and
//! after the clients disconnected.
//!
//! `check` verifies, against a daemon restarted after a crash, what a run recorded with
//! `--journal`: every acknowledged write is present and verifies, nothing unacknowledged is
//! visible as committed.
//!
//! `metadata` measures the Images and Containers services over many records (10 000 images
//! by default): create rates, one client and several, list and get latencies, deletes, every
//! answer checked (see `metadata.rs`).
//!
//! `gc` measures one garbage collection over a large population (100 000 blobs by default,
//! half of them unreachable) and how long it holds up writers beside it (see `gc.rs`).
//!
//! `image-archive` writes a generated OCI image layout archive (10 gzip layers, 1 GiB of
//! small and large files by default), the same bytes for the same seed, for the import
//! benchmark (see `image_archive.rs`).
//!
//! `table` renders `--report` files of `run`, of `metadata` or of `gc` side by side in
//! Markdown.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use plinthd::client::error_text;

/// A line on standard error. A closed stderr (a reader that stopped reading, as a crash
/// test does once it has seen enough progress) is no reason to fail the run, as `eprintln!`
/// would: it panics.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod check;
mod gc;
mod image_archive;
mod metadata;
mod procstat;
mod raw;
mod report;
mod rng;
mod run;
mod worker;

/// Load for plinthd or containerd: concurrent clients, every answer verified.
#[derive(Debug, Parser)]
#[command(name = "plinth-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run N clients for a bounded time and report throughput, latency, errors and the
    /// daemon's resources
    Run(RunArgs),
    /// Verify what runs recorded with --journal against the daemon (after a restart)
    Check {
        /// Socket of the daemon
        #[arg(short, long, env = "PLINTH_ADDRESS")]
        address: String,
        /// Journal files written by `run --journal`
        #[arg(required = true)]
        journals: Vec<PathBuf>,
    },
    /// Create many images and containers, time the Images and Containers calls over them,
    /// verify every answer, and remove them
    Metadata(metadata::MetadataArgs),
    /// Write a large population under a lease, half of it reachable from images, delete the
    /// lease and time the collection that follows, with writers beside it; check what stayed
    Gc(gc::GcArgs),
    /// Write a generated OCI image layout archive (gzip layers of many small files and a
    /// few large ones), the same bytes for the same arguments, and print its digests as JSON
    ImageArchive(image_archive::ImageArchiveArgs),
    /// Render --report files side by side as a Markdown table
    Table {
        /// Report files written by `run --report` (or all by `metadata --report`, or all by
        /// `gc --report`), one column group each
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

/// What `run` does.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RunArgs {
    /// Socket of the daemon (plinthd's or containerd's)
    #[arg(short, long, env = "PLINTH_ADDRESS")]
    pub(crate) address: String,
    /// Concurrent clients, each on a connection of its own
    #[arg(short, long, default_value_t = 16)]
    pub(crate) clients: usize,
    /// How long the clients run: `20s`, `500ms`, `10m`
    #[arg(short, long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Snapshotter the snapshot operations use
    #[arg(long, default_value = "native")]
    pub(crate) snapshotter: String,
    /// Prefix of the namespaces the clients create (default: `load-<pid>`)
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Seed of the operation mix and the data (default: from the clock); two runs against
    /// one daemon at once need different seeds, or their clients write the same blobs
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Also open connections that are dropped in the middle of a write or a read, and check
    /// that the ingest's lock is released and its bytes kept
    #[arg(long)]
    pub(crate) disconnects: bool,
    /// Offer at most this many calls per second in all (each client its share, evenly
    /// spaced, the clients' first calls spread over one client's interval so that all the
    /// calls arrive evenly spaced), so that two daemons can be compared at the same load; a
    /// daemon that cannot keep up makes the clients fall behind (default: each client calls
    /// again at once)
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Run every client on one shared runtime of two threads instead of each on a thread of
    /// its own: the clients' answers then queue behind one another's in this process, which
    /// adds to the latency measured (the model before 2026-12-02, kept to compare)
    #[arg(long)]
    pub(crate) shared_runtime: bool,
    /// The daemon's pid, for its RSS, fds and threads (default: the peer of the socket)
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Fail when the daemon holds more fds after the clients disconnected than before they
    /// connected, or more threads than at the end of the run
    #[arg(long)]
    pub(crate) check_leaks: bool,
    /// Stop (without failing) when the daemon goes away, and leave what was written: for
    /// crash tests, with --journal
    #[arg(long)]
    pub(crate) until_gone: bool,
    /// Write what each client knows must be (and may be) there to FILE, for `check`; the
    /// written objects are then kept
    #[arg(long)]
    pub(crate) journal: Option<PathBuf>,
    /// Keep what the clients wrote (default: removed after the run, untimed)
    #[arg(long)]
    pub(crate) keep: bool,
    /// Write the results as JSON to FILE (for `table`)
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
    /// A name for the report's column (default: the socket)
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Run the whole mix this long before the measured run (not counted), so that "start"
    /// is a daemon already warmed at this concurrency (its allocator's arenas, its threads):
    /// what grows during the measured run is then growth, not first use
    #[arg(long, value_parser = parse_duration)]
    pub warm_up: Option<Duration>,
    /// Operations every client runs first, in order, before the random mix and whatever
    /// --duration says (`ingest,image-create`; `--duration 0s` runs only these): a journal
    /// that is sure to hold what a test needs
    #[arg(long, value_delimiter = ',')]
    pub(crate) begin_with: Vec<crate::worker::Op>,
    /// How often to print progress to stderr
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) progress: Duration,
}

/// `20s`, `500ms`, `10m`, `1h` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (write e.g. 20s, 500ms, 10m)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// A report of `run`, of `metadata` or of `gc`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnyReport {
    Gc(gc::GcReport),
    Metadata(metadata::MetadataReport),
    Load(report::Report),
}

/// The Markdown table of reports all of one kind.
///
/// # Errors
/// Reports of more than one kind mixed.
fn any_table(reports: Vec<AnyReport>) -> anyhow::Result<String> {
    let mut load = Vec::new();
    let mut metadata = Vec::new();
    let mut gc = Vec::new();
    for r in reports {
        match r {
            AnyReport::Load(r) => load.push(r),
            AnyReport::Metadata(r) => metadata.push(r),
            AnyReport::Gc(r) => gc.push(r),
        }
    }
    match (load.is_empty(), metadata.is_empty(), gc.is_empty()) {
        (true, false, true) => Ok(metadata::table(&metadata)),
        (true, true, false) => Ok(gc::table(&gc)),
        (_, true, true) => Ok(report::table(&load)),
        _ => anyhow::bail!(
            "reports of `run`, of `metadata` and of `gc` cannot share a table: give one kind at a time"
        ),
    }
}

/// Writes `text` to standard output (a closed pipe is not an error worth a panic).
fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plinth-load: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Check { address, journals } => check::check(&address, &journals).await,
            Command::Metadata(args) => metadata::metadata(args).await,
            Command::Gc(args) => gc::gc(args).await,
            Command::ImageArchive(args) => image_archive::image_archive(args),
            Command::Table { reports } => {
                let mut loaded = Vec::new();
                for path in &reports {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    loaded.push(serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a plinth-load report", path.display())
                    })?);
                }
                out(&any_table(loaded)?);
                Ok(true)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("plinth-load: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }
}
