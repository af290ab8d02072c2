//! Live reloads under load: how long from SIGHUP to the new generation serving, and the
//! longest any call in flight waited, for a no-op reload, a one-plugin reconfigure and the
//! metadata plugin's restart; beside it, what a restart of the whole daemon costs instead
//! (plinthd and containerd, which cannot reload: SIGHUP does not reload it).
//!
//! Load: four client tasks over one connection each, in loops: content `Info` and a full
//! `Read` of a 64 KiB blob, a one-message `Write` of a new 4 KiB blob, and native snapshot
//! `Prepare` + `Commit` + `Remove`. Every call's start and duration is recorded; a call that
//! fails counts as failed.
//!
//! Run by `scripts/bench-reload.sh` (release build; `REPS` reloads per scenario, default 30).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::containerd::services::content::v1::{
    InfoRequest, ReadContentRequest, WriteAction, WriteContentRequest,
};
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use plinth_api::containerd::services::version::v1::version_client::VersionClient;
use plinth_api::plinth::services::config::v1::GenerationRequest;
use plinth_api::plinth::services::config::v1::config_client::ConfigClient;
use plinthd::client::Client;
use sha2::{Digest as _, Sha256};

/// A line of the tables, on standard output (the sheet collects it).
macro_rules! out {
    ($($arg:tt)*) => {
        let _ = writeln!(std::io::stdout(), $($arg)*);
    };
}

/// One call: when it began (since the bench started), how long it took, whether it failed.
#[derive(Clone, Copy)]
struct Call {
    start: Duration,
    took: Duration,
    ok: bool,
}

struct Bench {
    epoch: Instant,
    calls: Mutex<Vec<Call>>,
    stop: AtomicBool,
}

impl Bench {
    /// A record starting now.
    fn new() -> Arc<Bench> {
        Arc::new(Bench {
            epoch: Instant::now(),
            calls: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn record(&self, start: Instant, ok: bool) {
        let call = Call {
            start: start - self.epoch,
            took: start.elapsed(),
            ok,
        };
        self.calls.lock().unwrap().push(call);
    }

    /// Calls that overlapped `[from, to]`: their longest duration and how many failed.
    fn during(&self, from: Instant, to: Instant) -> (Duration, usize, usize) {
        let (from, to) = (from - self.epoch, to - self.epoch);
        let calls = self.calls.lock().unwrap();
        let overlapping = calls
            .iter()
            .filter(|c| c.start <= to && c.start + c.took >= from);
        let (mut longest, mut failed, mut n) = (Duration::ZERO, 0, 0);
        for call in overlapping {
            longest = longest.max(call.took);
            failed += usize::from(!call.ok);
            n += 1;
        }
        (longest, failed, n)
    }
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes `data` in one message (write and commit).
async fn write_blob(client: &Client, reference: String, data: Vec<u8>) -> anyhow::Result<()> {
    let mut api = ContentClient::new(client.channel());
    let message = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference,
        total: i64::try_from(data.len())?,
        expected: digest_of(&data),
        offset: 0,
        data,
        ..WriteContentRequest::default()
    };
    let request = client.request(tokio_stream::iter([message]))?;
    let mut replies = api.write(request).await?.into_inner();
    while replies.message().await?.is_some() {}
    Ok(())
}

/// One client task's loop, until the bench stops.
async fn load(bench: Arc<Bench>, socket: PathBuf, kind: usize, blob: String) {
    let mut client = None;
    let mut round = 0u64;
    while !bench.stop.load(Ordering::SeqCst) {
        round += 1;
        let start = Instant::now();
        if client.is_none() {
            client = Client::connect(&socket.display().to_string(), "default")
                .await
                .ok();
        }
        let Some(c) = client.clone() else {
            bench.record(start, false);
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let result: anyhow::Result<()> = async {
            match kind {
                0 => {
                    let mut api = ContentClient::new(c.channel());
                    api.info(c.request(InfoRequest {
                        digest: blob.clone(),
                    })?)
                    .await?;
                    let mut stream = api
                        .read(c.request(ReadContentRequest {
                            digest: blob.clone(),
                            offset: 0,
                            size: 0,
                        })?)
                        .await?
                        .into_inner();
                    while stream.message().await?.is_some() {}
                }
                1 => {
                    let data = format!("blob {round} {:?}\n", start)
                        .repeat(100)
                        .into_bytes();
                    write_blob(&c, format!("bench-{round}"), data).await?;
                }
                _ => {
                    let mut api = SnapshotsClient::new(c.channel());
                    let (key, name) = (format!("a-{kind}-{round}"), format!("c-{kind}-{round}"));
                    let snapshotter = "native".to_string();
                    api.prepare(c.request(PrepareSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                        parent: String::new(),
                        labels: Default::default(),
                    })?)
                    .await?;
                    api.commit(c.request(CommitSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        name: name.clone(),
                        key,
                        labels: Default::default(),
                        ..Default::default()
                    })?)
                    .await?;
                    api.remove(c.request(RemoveSnapshotRequest {
                        snapshotter,
                        key: name,
                    })?)
                    .await?;
                }
            }
            Ok(())
        }
        .await;
        bench.record(start, result.is_ok());
        if result.is_err() {
            // A daemon that is down answers at once; do not spin on it.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Starts `program` with `args` and root and state in `dir`, its log in `dir/log`.
fn spawn(program: &Path, dir: &Path, args: &[&std::ffi::OsStr]) -> Child {
    Command::new(program)
        .args(args)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
}

fn start_plinthd(program: &Path, dir: &Path) -> Child {
    let (config, socket) = (dir.join("config.toml"), dir.join("d.sock"));
    spawn(
        program,
        dir,
        &[
            "-c".as_ref(),
            config.as_os_str(),
            "--address".as_ref(),
            socket.as_os_str(),
        ],
    )
}

fn start_containerd(program: &Path, dir: &Path) -> Child {
    let config = dir.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\"]\n\
             [grpc]\naddress = {:?}\n[plugins.\"io.containerd.internal.v1.opt\"]\npath = {:?}\n",
            dir.join("d.sock").display().to_string(),
            dir.join("opt").display().to_string()
        ),
    )
    .unwrap();
    spawn(program, dir, &["--config".as_ref(), config.as_os_str()])
}

/// Waits until the daemon answers a Version call; the client.
async fn serving(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = Client::connect(&socket.display().to_string(), "default").await {
            let mut api = VersionClient::new(client.channel());
            if api.version(()).await.is_ok() {
                return client;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not serve on {}",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Starts the load on `socket` (four tasks), with a 64 KiB blob to read.
async fn start_load(
    bench: &Arc<Bench>,
    client: &Client,
    socket: &Path,
) -> Vec<tokio::task::JoinHandle<()>> {
    let blob: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let digest = digest_of(&blob);
    write_blob(client, "bench-blob".to_string(), blob)
        .await
        .expect("writing the blob");
    (0..4)
        .map(|kind| {
            tokio::spawn(load(
                bench.clone(),
                socket.to_path_buf(),
                kind,
                digest.clone(),
            ))
        })
        .collect()
}

/// Restarts the daemon `restarts` times under the load `tasks` drive (SIGTERM, wait for the
/// exit, `start` again, until it serves on `socket`), then stops the load and the daemon and
/// prints the daemon's row: time to serving again, and the failed calls during each restart.
async fn restart_row(
    name: &str,
    restarts: usize,
    bench: Arc<Bench>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    mut child: Child,
    socket: &Path,
    start: impl Fn() -> Child,
) {
    let (mut took, mut failed) = (Vec::new(), Vec::new());
    for _ in 0..restarts {
        let sent = Instant::now();
        signal(&child, rustix::process::Signal::TERM);
        child.wait().unwrap();
        child = start();
        let _ = serving(socket).await;
        let done = Instant::now();
        // Calls that failed while it was down land in the record just after.
        tokio::time::sleep(Duration::from_millis(50)).await;
        took.push(done - sent);
        failed.push(bench.during(sent, done).1);
    }
    bench.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
    signal(&child, rustix::process::Signal::TERM);
    child.wait().unwrap();
    failed.sort_unstable();
    out!(
        "| {name} | {restarts} | {} | {} | {} |",
        ms(median(&mut took)),
        ms(*took.iter().max().unwrap()),
        failed[restarts / 2]
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let plinthd = std::env::var_os("PLINTHD").map_or_else(|| target.join("plinthd"), PathBuf::from);
    let containerd = std::env::var_os("CONTAINERD")
        .map_or_else(|| PathBuf::from("/usr/bin/containerd"), PathBuf::from);
    assert!(
        plinthd.exists(),
        "{} is missing: cargo build --release -p plinthd",
        plinthd.display()
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("plinthd");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("d.sock");
    let config = dir.join("config.toml");
    std::fs::write(&config, "version = 3\n").unwrap();
    let child = start_plinthd(&plinthd, &dir);
    let client = serving(&socket).await;
    let bench = Bench::new();
    let tasks = start_load(&bench, &client, &socket).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut config_api = ConfigClient::new(client.channel());

    // Without any reload: the longest call in windows as long as the reloads' windows.
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (quiet_longest, quiet_failed, quiet_calls) = bench.during(quiet_from, Instant::now());

    let scenarios: [(&str, [&str; 2]); 3] = [
        (
            "no-op reload (config unchanged)",
            ["version = 3\n", "version = 3\n"],
        ),
        (
            "one plugin reconfigured in place (overlayfs mount_options)",
            [
                "version = 3\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nmount_options = [\"volatile\"]\n",
                "version = 3\n",
            ],
        ),
        (
            "metadata restart (content_sharing_policy) and the 3 services over it",
            [
                "version = 3\n[plugins.\"io.containerd.metadata.v1.redb\"]\ncontent_sharing_policy = \"isolated\"\n",
                "version = 3\n",
            ],
        ),
    ];
    out!(
        "| reload | reloads | SIGHUP → new generation serving (median) | max | longest call in flight (max over reloads) | calls overlapping reloads | failed |"
    );
    out!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, configs) in scenarios {
        let mut serving_after = Vec::new();
        let (mut longest, mut failed, mut overlapping) = (Duration::ZERO, 0, 0);
        for rep in 0..reps {
            std::fs::write(&config, configs[rep % 2]).unwrap();
            let before = config_api
                .generation(GenerationRequest {})
                .await
                .unwrap()
                .into_inner();
            let sent = Instant::now();
            signal(&child, rustix::process::Signal::HUP);
            let mut served = None;
            loop {
                let now = config_api
                    .generation(GenerationRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                if served.is_none()
                    && (now.generation > before.generation || now.reloads > before.reloads)
                {
                    served = Some(sent.elapsed());
                }
                if now.reloads > before.reloads {
                    break;
                }
            }
            let done = Instant::now();
            serving_after.push(served.unwrap());
            // Calls still running at `done` finish within the next moment; let them land.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let (l, f, n) = bench.during(sent, done);
            longest = longest.max(l);
            failed += f;
            overlapping += n;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let max = *serving_after.iter().max().unwrap();
        out!(
            "| {name} | {reps} | {} | {} | {} | {overlapping} | {failed} |",
            ms(median(&mut serving_after)),
            ms(max),
            ms(longest)
        );
    }
    out!(
        "| (no reload: a {} s window of the same load) | – | – | – | {} | {quiet_calls} | {quiet_failed} |",
        2,
        ms(quiet_longest)
    );

    // A restart instead of a reload: SIGTERM, wait for the exit, start again, serve.
    out!();
    out!(
        "| restart instead (the only way with containerd) | restarts | SIGTERM → serving again (median) | max | failed calls during it (median) |"
    );
    out!("|---|---:|---:|---:|---:|");
    let restarts = reps.min(5);
    restart_row("plinthd", restarts, bench, tasks, child, &socket, || {
        start_plinthd(&plinthd, &dir)
    })
    .await;

    if !containerd.exists() {
        out!(
            "| containerd | – | not installed ({}) | | |",
            containerd.display()
        );
        return;
    }
    let dir = work.path().join("containerd");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("d.sock");
    let child = start_containerd(&containerd, &dir);
    let client = serving(&socket).await;
    let bench = Bench::new();
    let tasks = start_load(&bench, &client, &socket).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    restart_row("containerd", restarts, bench, tasks, child, &socket, || {
        start_containerd(&containerd, &dir)
    })
    .await;
}
