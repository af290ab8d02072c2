//! `plinth-load metadata`: the Images and Containers services measured over many records.
//!
//! In a namespace of its own, it times the Version call (the round trip with no store
//! behind it: the floor under every other row), creates `--images` images through `Images.Create` (the first
//! `--sequential` one at a time, the rest over `--clients` connections), lists them all and
//! by a label filter `--repeat` times each, gets `--gets` of them, creates `--containers`
//! containers the same way, lists those, then deletes every container and image over
//! `--clients` connections and the namespace last. Every call is timed and every answer
//! checked: a created record comes back as sent, a list holds exactly the expected names,
//! each once, with their fields. The report has one row per kind of call, with its rate and
//! latency percentiles; `plinth-load table` renders reports of two daemons side by side.
//!
//! Rates: a row run by one client is its calls per second of time spent in them (the checks
//! between calls are not counted); a row run by several clients is their calls per second of
//! wall-clock time. A list is timed until its answer's last byte has arrived: decoding it (as
//! much work for the client whichever daemon sent it) belongs to the check. Each row also has the daemon's CPU time per call (user and system, from
//! /proc, when the daemon runs on this machine), which the client's own cost does not blur.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_api::containerd::services::containers::v1::container::Runtime;
use plinth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use plinth_api::containerd::services::containers::v1::{
    Container, CreateContainerRequest, CreateContainerResponse, DeleteContainerRequest,
    ListContainersRequest, ListContainersResponse,
};
use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::images::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse,
    Image, ListImagesRequest, ListImagesResponse,
};
use plinth_api::containerd::services::namespaces::v1::DeleteNamespaceRequest;
use plinth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use plinth_api::containerd::services::version::v1::VersionResponse;
use plinth_api::containerd::services::version::v1::version_client::VersionClient;
use plinth_api::containerd::types::Descriptor;
use plinth_api::prost_types::Any;
use plinth_builtin_plugins::namespaces::NAMESPACE_HEADER;
use plinthd::commands::table as text_table;
use serde::{Deserialize, Serialize};
use tonic::codegen::Bytes;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::procstat;
use crate::raw;
use crate::report::{OpRow, Stats, millis};
use crate::rng::Rng;
use crate::worker::digest;

/// The label every record carries with one of [`GROUPS`] values; the filtered lists select
/// one value, a tenth of the records.
const GROUP_LABEL: &str = "group";
/// How many values [`GROUP_LABEL`] takes.
const GROUPS: usize = 10;
/// The group the filtered lists select.
const LISTED_GROUP: usize = 3;
/// The media type of every image's target.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The runtime every container names.
const RUNTIME: &str = "io.containerd.runc.v2";
/// The snapshotter every container names (nothing is prepared in it: records only).
const SNAPSHOTTER: &str = "overlayfs";
/// The type URL of a runtime spec, as containerd's clients pack it.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// A runtime spec of the usual shape and size (about 1 KiB), the same for every container.
const SPEC: &str = r#"{"ociVersion":"1.0.2-dev","process":{"user":{"uid":0,"gid":0},"args":["/bin/sh","-c","sleep infinity"],"env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","HOSTNAME=plinth-load"],"cwd":"/","capabilities":{"bounding":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"],"permitted":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"]},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],"noNewPrivileges":true},"root":{"path":"rootfs"},"hostname":"plinth-load","mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},{"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]}],"linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"network"}],"maskedPaths":["/proc/kcore","/proc/keys","/proc/timer_list","/sys/firmware"],"readonlyPaths":["/proc/bus","/proc/fs","/proc/irq","/proc/sys"]}}"#;

/// The methods the lists call, their answers timed undecoded (see `raw`).
const IMAGES_LIST: &str = "/containerd.services.images.v1.Images/List";
const CONTAINERS_LIST: &str = "/containerd.services.containers.v1.Containers/List";

/// What `metadata` does.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MetadataArgs {
    /// Socket of the daemon (plinthd's or containerd's)
    #[arg(short, long, env = "PLINTH_ADDRESS")]
    pub(crate) address: String,
    /// Images to create (and list, get and delete)
    #[arg(long, default_value_t = 10_000)]
    pub(crate) images: usize,
    /// Containers to create (and list and delete)
    #[arg(long, default_value_t = 2_000)]
    pub(crate) containers: usize,
    /// How many of the images, and of the containers, are created one at a time before the
    /// rest are created over --clients connections
    #[arg(long, default_value_t = 1_000)]
    pub(crate) sequential: usize,
    /// Concurrent clients (each on a connection of its own) of the concurrent creates and of
    /// the deletes
    #[arg(short, long, default_value_t = 4)]
    pub(crate) clients: usize,
    /// How many times each list (all, and filtered) is called
    #[arg(long, default_value_t = 20)]
    pub(crate) repeat: usize,
    /// How many Images.Get calls, of images picked at random (and Version calls, the
    /// round-trip floor)
    #[arg(long, default_value_t = 1_000)]
    pub(crate) gets: usize,
    /// The namespace to work in, which must hold no images or containers (default:
    /// `plinth-meta-<pid>`); it is deleted at the end
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// Seed of the images Images.Get asks for
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Write the results as JSON to FILE (for `table`)
    #[arg(long)]
    pub(crate) report: Option<std::path::PathBuf>,
    /// A name for the report's column (default: the socket)
    #[arg(long)]
    pub(crate) label: Option<String>,
}

/// A run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MetadataReport {
    /// The daemon's name in tables.
    pub(crate) label: String,
    /// Images created.
    pub(crate) images: usize,
    /// Containers created.
    pub(crate) containers: usize,
    /// Clients of the concurrent rows.
    pub(crate) clients: usize,
    /// One per kind of call, in the order they ran.
    pub(crate) rows: Vec<Row>,
    /// Unexpected errors.
    pub(crate) unexpected: u64,
    /// Wrong answers.
    pub(crate) failure_count: u64,
    /// The first wrong answers.
    pub(crate) failures: Vec<String>,
    /// The first unexpected errors.
    pub(crate) examples: Vec<String>,
}

/// One kind of call's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    /// Calls, rate and latencies.
    #[serde(flatten)]
    pub(crate) calls: OpRow,
    /// The daemon's CPU time per successful call, µs (none when it could not be read).
    pub(crate) daemon_cpu_us: Option<f64>,
}

/// A CPU time per call for a table: whole µs, or "–" when unknown.
fn cpu_text(daemon_cpu_us: Option<f64>) -> String {
    daemon_cpu_us.map_or_else(|| "–".to_string(), |us| format!("{us:.0}"))
}

impl MetadataReport {
    /// Whether every call succeeded and every answer was right.
    pub(crate) fn passed(&self) -> bool {
        self.unexpected == 0 && self.failure_count == 0
    }

    /// The report for people.
    pub(crate) fn text(&self) -> String {
        let rows: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.calls.name.clone(),
                    r.calls.count.to_string(),
                    rate(r.calls.per_sec),
                    millis(r.calls.p50_us),
                    millis(r.calls.p99_us),
                    cpu_text(r.daemon_cpu_us),
                ]
            })
            .collect();
        let mut out = format!(
            "{}: {} images, {} containers, {} clients\n",
            self.label, self.images, self.containers, self.clients
        );
        out.push_str(&text_table(
            &["CALL", "OK", "OPS/S", "P50", "P99", "DAEMON CPU µs/CALL"],
            &rows,
        ));
        let _ = writeln!(
            out,
            "total: {} unexpected errors, {} verification failures",
            self.unexpected, self.failure_count
        );
        for example in &self.examples {
            let _ = writeln!(out, "  unexpected: {example}");
        }
        for failure in &self.failures {
            let _ = writeln!(out, "  wrong: {failure}");
        }
        out
    }
}

/// A rate for a table: whole calls per second, or tenths below 100.
fn rate(per_sec: f64) -> String {
    if per_sec < 100.0 {
        format!("{per_sec:.1}")
    } else {
        format!("{per_sec:.0}")
    }
}

/// The round with the median rate of `rows` (the lower middle one of an even count), and the
/// lowest and highest rate of them all.
fn median_round(mut rows: Vec<&Row>) -> Option<(&Row, f64, f64)> {
    rows.sort_by(|a, b| a.calls.per_sec.total_cmp(&b.calls.per_sec));
    let low = rows.first()?.calls.per_sec;
    let high = rows.last()?.calls.per_sec;
    Some((rows[(rows.len() - 1) / 2], low, high))
}

/// Reports side by side in Markdown: per call, each daemon's rate, p50 / p99 latency and CPU
/// time per call, and with two daemons the first's rate over the second's. Several reports
/// of one label are rounds: each cell is then the round with the median rate for that call,
/// its rate followed by the range over the rounds.
pub(crate) fn table(reports: &[MetadataReport]) -> String {
    let mut labels: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for r in reports {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
        for row in &r.rows {
            if !names.contains(&row.calls.name.as_str()) {
                names.push(&row.calls.name);
            }
        }
    }
    let rounds = |label: &str| -> Vec<&MetadataReport> {
        reports.iter().filter(|r| r.label == label).collect()
    };
    let most_rounds = labels.iter().map(|l| rounds(l).len()).max().unwrap_or(0);
    let mut out = String::new();
    if most_rounds > 1 {
        let _ = writeln!(
            out,
            "Each cell is the round (of {most_rounds}) with the median rate for that call; the range of the rates over the rounds follows it.\n"
        );
    }
    out.push_str("| call | calls |");
    for l in &labels {
        let _ = write!(out, " {l} ops/s | {l} p50 / p99 ms | {l} CPU µs/call |");
    }
    if let [a, b] = labels[..] {
        let _ = write!(out, " {a} ÷ {b} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(2 + 3 * labels.len() + usize::from(labels.len() == 2)));
    out.push_str("|\n");
    for name in names {
        let found: Vec<Option<(&Row, f64, f64)>> = labels
            .iter()
            .map(|l| {
                median_round(
                    rounds(l)
                        .into_iter()
                        .filter_map(|r| r.rows.iter().find(|row| row.calls.name == name))
                        .collect(),
                )
            })
            .collect();
        let calls = found
            .iter()
            .flatten()
            .map(|(r, ..)| r.calls.count)
            .max()
            .unwrap_or(0);
        let _ = write!(out, "| {name} | {calls} |");
        for cell in &found {
            match cell {
                Some((r, low, high)) => {
                    let range = if most_rounds > 1 {
                        format!(" ({}–{})", rate(*low), rate(*high))
                    } else {
                        String::new()
                    };
                    let _ = write!(
                        out,
                        " {}{range} | {:.2} / {:.2} | {} |",
                        rate(r.calls.per_sec),
                        f64::from(r.calls.p50_us) / 1000.0,
                        f64::from(r.calls.p99_us) / 1000.0,
                        cpu_text(r.daemon_cpu_us)
                    );
                }
                None => out.push_str(" – | – | – |"),
            }
        }
        match found[..] {
            [Some((a, ..)), Some((b, ..))] if b.calls.per_sec > 0.0 => {
                let _ = write!(out, " {:.2}× |", a.calls.per_sec / b.calls.per_sec);
            }
            [_, _] => out.push_str(" – |"),
            _ => {}
        }
        out.push('\n');
    }
    out.push('\n');
    let answers: Vec<String> = labels
        .iter()
        .map(|l| {
            let (unexpected, wrong) = rounds(l)
                .iter()
                .fold((0, 0), |(u, w), r| (u + r.unexpected, w + r.failure_count));
            format!("{l}: {unexpected} unexpected errors, {wrong} wrong answers")
        })
        .collect();
    let _ = writeln!(out, "Answers checked: {}.", answers.join("; "));
    out
}

/// One connection and the namespace its requests carry.
#[derive(Clone)]
struct Conn {
    images: ImagesClient<Channel>,
    containers: ContainersClient<Channel>,
    namespaces: NamespacesClient<Channel>,
    version: VersionClient<Channel>,
    /// For the lists, whose answers are timed undecoded (see `raw`).
    channel: Channel,
    namespace: AsciiMetadataValue,
}

impl Conn {
    async fn connect(address: &str, namespace: &str) -> anyhow::Result<Conn> {
        let channel = plinthd::client::Client::connect(address, namespace)
            .await?
            .channel();
        Ok(Conn {
            images: ImagesClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            containers: ContainersClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX),
            namespaces: NamespacesClient::new(channel.clone()),
            version: VersionClient::new(channel.clone()),
            channel,
            namespace: namespace
                .parse()
                .with_context(|| format!("namespace {namespace:?} is not valid header text"))?,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        request
    }
}

/// The name of image `i`.
fn image_name(i: usize) -> String {
    format!("registry.example/plinth-load/app-{i:05}:v1")
}

/// The id of container `i`.
fn container_id(i: usize) -> String {
    format!("plinth-load-{i:05}")
}

/// Every record's labels: its group and its index.
fn record_labels(i: usize) -> HashMap<String, String> {
    HashMap::from([
        (GROUP_LABEL.to_string(), format!("g{}", i % GROUPS)),
        ("plinth-load/index".to_string(), i.to_string()),
    ])
}

/// Image `i` as it is created.
fn image(i: usize) -> Image {
    let name = image_name(i);
    Image {
        target: Some(Descriptor {
            media_type: MANIFEST.to_string(),
            digest: digest(name.as_bytes()),
            size: 1000 + i64::try_from(i % 1000).unwrap_or(0),
            annotations: HashMap::new(),
        }),
        name,
        labels: record_labels(i),
        created_at: None,
        updated_at: None,
    }
}

/// Container `i` (of `images` images) as it is created.
fn container(i: usize, images: usize) -> Container {
    let id = container_id(i);
    Container {
        labels: record_labels(i),
        image: image_name(i % images.max(1)),
        runtime: Some(Runtime {
            name: RUNTIME.to_string(),
            options: None,
        }),
        spec: Some(Any {
            type_url: SPEC_TYPE.to_string(),
            value: SPEC.as_bytes().to_vec(),
        }),
        snapshotter: SNAPSHOTTER.to_string(),
        snapshot_key: id.clone(),
        created_at: None,
        updated_at: None,
        extensions: HashMap::new(),
        sandbox: String::new(),
        id,
    }
}

fn sorted(labels: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Whether `got` is image `i` as created, with its times set.
fn check_image(i: usize, got: &Image) -> Result<(), String> {
    let want = image(i);
    if got.name != want.name
        || got.target != want.target
        || sorted(&got.labels) != sorted(&want.labels)
    {
        return Err(format!("image {}: got {got:?}", want.name));
    }
    if got.created_at.is_none() || got.updated_at.is_none() {
        return Err(format!("image {}: no created or updated time", want.name));
    }
    Ok(())
}

/// Whether `got` is container `i` as created, with its times set.
fn check_container(i: usize, images: usize, got: &Container) -> Result<(), String> {
    let want = container(i, images);
    let runtime = |c: &Container| c.runtime.as_ref().map(|r| r.name.clone());
    if got.id != want.id
        || got.image != want.image
        || runtime(got) != runtime(&want)
        || got.spec != want.spec
        || got.snapshotter != want.snapshotter
        || got.snapshot_key != want.snapshot_key
        || sorted(&got.labels) != sorted(&want.labels)
    {
        return Err(format!("container {}: got {got:?}", want.id));
    }
    if got.created_at.is_none() || got.updated_at.is_none() {
        return Err(format!("container {}: no created or updated time", want.id));
    }
    Ok(())
}

/// Whether `got` (a list's records, by name) is exactly the records `expected` (their
/// indices), each once and as created (`check`).
fn check_list<'a, R: 'a>(
    what: &str,
    got: impl ExactSizeIterator<Item = (&'a str, &'a R)>,
    expected: &[usize],
    index: &HashMap<String, usize>,
    check: impl Fn(usize, &R) -> Result<(), String>,
) -> Result<(), String> {
    let count = got.len();
    if count != expected.len() {
        return Err(format!(
            "{what}: {count} records, {} expected",
            expected.len()
        ));
    }
    let wanted: HashSet<usize> = expected.iter().copied().collect();
    let mut seen = HashSet::with_capacity(count);
    for (name, record) in got {
        let Some(&i) = index.get(name) else {
            return Err(format!("{what}: {name:?} was never created"));
        };
        if !wanted.contains(&i) {
            return Err(format!("{what}: {name:?} does not match the filter"));
        }
        if !seen.insert(i) {
            return Err(format!("{what}: {name:?} twice"));
        }
        check(i, record).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// The calls of one row: the client's statistics and how long they took.
struct Measured {
    row: Row,
    stats: Stats,
}

/// Where a phase runs: the connections, and the daemon's pid for its CPU time.
struct Target<'a> {
    conns: &'a [Conn],
    pid: Option<u32>,
}

/// Runs `call` for each of `items` (indices), shared round-robin over the target's
/// connections, and `check`s each answer after its call's time is taken. `op` names the call
/// in error examples, `what` is the row.
async fn phase<T, F, Fut, K>(
    op: &'static str,
    what: String,
    target: Target<'_>,
    items: Vec<usize>,
    call: F,
    check: K,
) -> anyhow::Result<Measured>
where
    T: Send + 'static,
    F: Fn(Conn, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
    K: Fn(usize, T) -> Result<(), String> + Clone + Send + 'static,
{
    let conns = target.conns;
    let n_clients = conns.len().max(1);
    let mut shares: Vec<Vec<usize>> = vec![Vec::new(); n_clients];
    for (k, item) in items.into_iter().enumerate() {
        shares[k % n_clients].push(item);
    }
    let cpu_before = target.pid.and_then(|pid| procstat::cpu_time(pid).ok());
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .iter()
        .cloned()
        .zip(shares)
        .map(|(conn, share)| {
            let call = call.clone();
            let check = check.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                let mut busy = Duration::ZERO;
                for item in share {
                    let began = Instant::now();
                    let reply = call(conn.clone(), item).await;
                    let elapsed = began.elapsed();
                    busy += elapsed;
                    match reply {
                        Ok(reply) => {
                            stats.ok(op, elapsed);
                            if let Err(wrong) = check(item, reply) {
                                stats.failure(wrong);
                            }
                        }
                        Err(status) => stats.unexpected(op, &status),
                    }
                }
                (stats, busy)
            })
        })
        .collect();
    let mut stats = Stats::default();
    let mut busy = Duration::ZERO;
    for task in tasks {
        let (client, client_busy) = task.await.context("a client panicked")?;
        stats.merge(client);
        busy += client_busy;
    }
    let seconds = if n_clients == 1 {
        busy.as_secs_f64()
    } else {
        started.elapsed().as_secs_f64()
    };
    let cpu_after = target.pid.and_then(|pid| procstat::cpu_time(pid).ok());
    let calls = OpRow::new(what, stats.ops.entry(op).or_default(), seconds);
    let daemon_cpu_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if calls.count > 0 => {
            Some(after.saturating_sub(before).as_secs_f64() * 1e6 / calls.count as f64)
        }
        _ => None,
    };
    let row = Row {
        calls,
        daemon_cpu_us,
    };
    say!(
        "plinth-load: {}: {} calls, {} per second, p50 {}, p99 {}, daemon CPU {} µs per call{}",
        row.calls.name,
        row.calls.count,
        rate(row.calls.per_sec),
        millis(row.calls.p50_us),
        millis(row.calls.p99_us),
        cpu_text(row.daemon_cpu_us),
        if stats.total_unexpected() + stats.failure_count > 0 {
            format!(
                ", {} unexpected, {} wrong",
                stats.total_unexpected(),
                stats.failure_count
            )
        } else {
            String::new()
        }
    );
    Ok(Measured { row, stats })
}

/// "1 client" or "4 clients".
fn clients_text(n: usize) -> String {
    if n == 1 {
        "1 client".to_string()
    } else {
        format!("{n} clients")
    }
}

/// Runs the workload; whether every call succeeded and every answer was right.
///
/// # Errors
/// The daemon cannot be reached, the namespace already holds records, or the report cannot
/// be written.
pub(crate) async fn metadata(args: MetadataArgs) -> anyhow::Result<bool> {
    let socket = plinthd::paths::socket_path(&args.address);
    let address = socket.display().to_string();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| format!("plinth-meta-{}", std::process::id()));
    let label = args.label.clone().unwrap_or_else(|| address.clone());
    let n_clients = args.clients.max(1);
    let (n_images, n_containers) = (args.images, args.containers);
    say!(
        "plinth-load: {n_images} images and {n_containers} containers in namespace {namespace} of {address}, {n_clients} clients"
    );
    let mut conns = Vec::with_capacity(n_clients);
    for _ in 0..n_clients {
        conns.push(Conn::connect(&address, &namespace).await?);
    }
    // The daemon's CPU time is read from /proc: none when it runs elsewhere.
    let pid = procstat::peer_pid(&socket).await.ok();
    let one = || Target {
        conns: &conns[..1],
        pid,
    };
    let all = || Target { conns: &conns, pid };
    let first = conns[0].clone();
    let held_images = first
        .images
        .clone()
        .list(first.request(ListImagesRequest::default()))
        .await
        .map_err(plinthd::client::status_error)
        .context("listing the namespace's images")?
        .into_inner()
        .images
        .len();
    let held_containers = first
        .containers
        .clone()
        .list(first.request(ListContainersRequest::default()))
        .await
        .map_err(plinthd::client::status_error)
        .context("listing the namespace's containers")?
        .into_inner()
        .containers
        .len();
    if held_images + held_containers > 0 {
        anyhow::bail!(
            "namespace {namespace} already holds {held_images} images and {held_containers} containers: remove them or pass another --namespace"
        );
    }

    let mut measured = Vec::new();
    let images_index: Arc<HashMap<String, usize>> =
        Arc::new((0..n_images).map(|i| (image_name(i), i)).collect());
    let containers_index: Arc<HashMap<String, usize>> =
        Arc::new((0..n_containers).map(|i| (container_id(i), i)).collect());
    let all_images: Arc<Vec<usize>> = Arc::new((0..n_images).collect());
    let group_images: Arc<Vec<usize>> = Arc::new(
        (0..n_images)
            .filter(|i| i % GROUPS == LISTED_GROUP)
            .collect(),
    );
    let all_containers: Arc<Vec<usize>> = Arc::new((0..n_containers).collect());
    let group_containers: Arc<Vec<usize>> = Arc::new(
        (0..n_containers)
            .filter(|i| i % GROUPS == LISTED_GROUP)
            .collect(),
    );
    let group_filter = format!("labels.{GROUP_LABEL}==g{LISTED_GROUP}");

    // The round trip of the smallest call there is, which no store is behind: the floor
    // under every row (the client's own cost and the transport's included).
    if args.gets > 0 {
        measured.push(
            phase(
                "version",
                "Version (the round-trip floor)".into(),
                one(),
                (0..args.gets).collect(),
                |conn: Conn, _| async move { conn.version.clone().version(()).await },
                |_, reply: Response<VersionResponse>| {
                    if reply.into_inner().version.is_empty() {
                        Err("Version: an empty version".to_string())
                    } else {
                        Ok(())
                    }
                },
            )
            .await?,
        );
    }

    // Images.Create: one client, then the rest over every connection.
    let create_image = |conn: Conn, i: usize| async move {
        let request = conn.request(CreateImageRequest {
            image: Some(image(i)),
        });
        conn.images.clone().create(request).await
    };
    let check_created_image = |i: usize, reply: Response<CreateImageResponse>| {
        let reply = reply.into_inner();
        match reply.image {
            Some(got) => check_image(i, &got),
            None => Err(format!(
                "image {}: created without an answer",
                image_name(i)
            )),
        }
    };
    let sequential_images = args.sequential.min(n_images);
    if sequential_images > 0 {
        measured.push(
            phase(
                "image-create",
                "Images.Create, 1 client".into(),
                one(),
                (0..sequential_images).collect(),
                create_image,
                check_created_image,
            )
            .await?,
        );
    }
    if n_images > sequential_images {
        measured.push(
            phase(
                "image-create",
                format!("Images.Create, {}", clients_text(n_clients)),
                all(),
                (sequential_images..n_images).collect(),
                create_image,
                check_created_image,
            )
            .await?,
        );
    }

    // Images.List, all and filtered; Images.Get.
    for (filters, expected, what) in [
        (
            Vec::new(),
            all_images.clone(),
            format!("Images.List, all ({n_images})"),
        ),
        (
            vec![group_filter.clone()],
            group_images.clone(),
            format!("Images.List, `{group_filter}` ({})", group_images.len()),
        ),
    ] {
        let index = images_index.clone();
        measured.push(
            phase(
                "image-list",
                what,
                one(),
                (0..args.repeat).collect(),
                move |conn: Conn, _| {
                    let filters = filters.clone();
                    async move {
                        let request = conn.request(ListImagesRequest { filters });
                        raw::unary(conn.channel, IMAGES_LIST, request).await
                    }
                },
                move |_, reply: Response<Bytes>| {
                    let reply: ListImagesResponse = raw::decode(reply.into_inner())?;
                    check_list(
                        "Images.List",
                        reply.images.iter().map(|i| (i.name.as_str(), i)),
                        &expected,
                        &index,
                        check_image,
                    )
                },
            )
            .await?,
        );
    }
    if n_images > 0 && args.gets > 0 {
        let mut rng = Rng::new(args.seed);
        measured.push(
            phase(
                "image-get",
                "Images.Get".into(),
                one(),
                (0..args.gets).map(|_| rng.below(n_images)).collect(),
                |conn: Conn, i: usize| async move {
                    let request = conn.request(GetImageRequest {
                        name: image_name(i),
                    });
                    conn.images.clone().get(request).await
                },
                |i: usize, reply: Response<GetImageResponse>| {
                    let reply = reply.into_inner();
                    match reply.image {
                        Some(got) => check_image(i, &got),
                        None => Err(format!("image {}: got no image", image_name(i))),
                    }
                },
            )
            .await?,
        );
    }

    // Containers.Create: one client, then the rest over every connection.
    let create_container = move |conn: Conn, i: usize| async move {
        let request = conn.request(CreateContainerRequest {
            container: Some(container(i, n_images)),
        });
        conn.containers.clone().create(request).await
    };
    let check_created_container = move |i: usize, reply: Response<CreateContainerResponse>| {
        let reply = reply.into_inner();
        match reply.container {
            Some(got) => check_container(i, n_images, &got),
            None => Err(format!(
                "container {}: created without an answer",
                container_id(i)
            )),
        }
    };
    let sequential_containers = args.sequential.min(n_containers);
    if sequential_containers > 0 {
        measured.push(
            phase(
                "container-create",
                "Containers.Create, 1 client".into(),
                one(),
                (0..sequential_containers).collect(),
                create_container,
                check_created_container,
            )
            .await?,
        );
    }
    if n_containers > sequential_containers {
        measured.push(
            phase(
                "container-create",
                format!("Containers.Create, {}", clients_text(n_clients)),
                all(),
                (sequential_containers..n_containers).collect(),
                create_container,
                check_created_container,
            )
            .await?,
        );
    }

    // Containers.List, all and filtered.
    for (filters, expected, what) in [
        (
            Vec::new(),
            all_containers.clone(),
            format!("Containers.List, all ({n_containers})"),
        ),
        (
            vec![group_filter.clone()],
            group_containers.clone(),
            format!(
                "Containers.List, `{group_filter}` ({})",
                group_containers.len()
            ),
        ),
    ] {
        let index = containers_index.clone();
        measured.push(
            phase(
                "container-list",
                what,
                one(),
                (0..args.repeat).collect(),
                move |conn: Conn, _| {
                    let filters = filters.clone();
                    async move {
                        let request = conn.request(ListContainersRequest { filters });
                        raw::unary(conn.channel, CONTAINERS_LIST, request).await
                    }
                },
                move |_, reply: Response<Bytes>| {
                    let reply: ListContainersResponse = raw::decode(reply.into_inner())?;
                    check_list(
                        "Containers.List",
                        reply.containers.iter().map(|c| (c.id.as_str(), c)),
                        &expected,
                        &index,
                        |i, c| check_container(i, n_images, c),
                    )
                },
            )
            .await?,
        );
    }

    // Deletes, over every connection: containers first (they name the images).
    let no_check = |_: usize, _: Response<()>| Ok(());
    if n_containers > 0 {
        measured.push(
            phase(
                "container-delete",
                format!("Containers.Delete, {}", clients_text(n_clients)),
                all(),
                (0..n_containers).collect(),
                |conn: Conn, i: usize| async move {
                    let request = conn.request(DeleteContainerRequest {
                        id: container_id(i),
                    });
                    conn.containers.clone().delete(request).await
                },
                no_check,
            )
            .await?,
        );
    }
    if n_images > 0 {
        measured.push(
            phase(
                "image-delete",
                format!("Images.Delete, {}", clients_text(n_clients)),
                all(),
                (0..n_images).collect(),
                |conn: Conn, i: usize| async move {
                    let request = conn.request(DeleteImageRequest {
                        name: image_name(i),
                        sync: false,
                    });
                    conn.images.clone().delete(request).await
                },
                no_check,
            )
            .await?,
        );
    }

    let mut stats = Stats::default();
    let mut rows = Vec::with_capacity(measured.len());
    for m in measured {
        rows.push(m.row);
        stats.merge(m.stats);
    }
    // Nothing is left, and the namespace goes (untimed).
    let left_images = first
        .images
        .clone()
        .list(first.request(ListImagesRequest::default()))
        .await
        .map(|r| r.into_inner().images.len());
    let left_containers = first
        .containers
        .clone()
        .list(first.request(ListContainersRequest::default()))
        .await
        .map(|r| r.into_inner().containers.len());
    match (left_images, left_containers) {
        (Ok(0), Ok(0)) => {
            let request = first.request(DeleteNamespaceRequest {
                name: namespace.clone(),
            });
            if let Err(status) = first.namespaces.clone().delete(request).await {
                stats.unexpected("namespace-delete", &status);
            }
        }
        (Ok(images), Ok(containers)) => stats.failure(format!(
            "{images} images and {containers} containers left after every delete succeeded or failed"
        )),
        (Err(status), _) | (_, Err(status)) => stats.unexpected("final-list", &status),
    }

    let report = MetadataReport {
        label,
        images: n_images,
        containers: n_containers,
        clients: n_clients,
        rows,
        unexpected: stats.total_unexpected(),
        failure_count: stats.failure_count,
        failures: stats.failures,
        examples: stats.examples,
    };
    crate::out(&report.text());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(report.passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, count: u64, per_sec: f64, latency_us: (u32, u32), cpu: f64) -> Row {
        Row {
            calls: OpRow {
                name: name.into(),
                count,
                per_sec,
                p50_us: latency_us.0,
                p99_us: latency_us.1,
                p999_us: latency_us.1,
                expected: BTreeMap::new(),
                unexpected: BTreeMap::new(),
            },
            daemon_cpu_us: Some(cpu).filter(|us| *us > 0.0),
        }
    }

    fn report(label: &str, rows: Vec<Row>) -> MetadataReport {
        MetadataReport {
            label: label.into(),
            images: 10,
            containers: 4,
            clients: 2,
            rows,
            unexpected: 0,
            failure_count: 0,
            failures: Vec::new(),
            examples: Vec::new(),
        }
    }

    #[test]
    fn markdown_side_by_side_with_the_ratio() {
        let a = report(
            "plinthd",
            vec![
                row("Images.Create, 1 client", 10, 500.0, (2000, 4000), 120.4),
                row("Images.List, all (10)", 3, 40.0, (25_000, 30_000), 0.0),
            ],
        );
        let b = report(
            "containerd",
            vec![row(
                "Images.Create, 1 client",
                10,
                250.0,
                (4000, 9000),
                310.0,
            )],
        );
        let md = table(&[a, b]);
        let expected_rows = [
            "| call | calls | plinthd ops/s | plinthd p50 / p99 ms | plinthd CPU µs/call | containerd ops/s | containerd p50 / p99 ms | containerd CPU µs/call | plinthd ÷ containerd |",
            "|---|---|---|---|---|---|---|---|---|",
            "| Images.Create, 1 client | 10 | 500 | 2.00 / 4.00 | 120 | 250 | 4.00 / 9.00 | 310 | 2.00× |",
            "| Images.List, all (10) | 3 | 40.0 | 25.00 / 30.00 | – | – | – | – | – |",
            "Answers checked: plinthd: 0 unexpected errors, 0 wrong answers; containerd: 0 unexpected errors, 0 wrong answers.",
        ];
        for line in expected_rows {
            assert!(md.lines().any(|l| l == line), "no line {line:?} in\n{md}");
        }
    }

    #[test]
    fn rounds_show_the_median_round_and_the_range() {
        let round = |label: &str, per_sec: f64, p50_us: u32| {
            report(
                label,
                vec![row("Images.Get", 10, per_sec, (p50_us, p50_us), 50.0)],
            )
        };
        let md = table(&[
            round("plinthd", 900.0, 1100),
            round("containerd", 400.0, 2500),
            round("plinthd", 1000.0, 1000),
            round("containerd", 500.0, 2000),
            round("plinthd", 1200.0, 800),
            round("containerd", 450.0, 2200),
        ]);
        let line = "| Images.Get | 10 | 1000 (900–1200) | 1.00 / 1.00 | 50 | 450 (400–500) | 2.20 / 2.20 | 50 | 2.22× |";
        assert!(md.lines().any(|l| l == line), "no line {line:?} in\n{md}");
        assert!(md.starts_with("Each cell is the round (of 3)"), "{md}");
    }

    #[test]
    fn lists_are_checked_for_exactly_the_expected_records() {
        let index: HashMap<String, usize> = (0..4).map(|i| (image_name(i), i)).collect();
        let images: Vec<Image> = (0..4)
            .map(|i| Image {
                created_at: Some(Default::default()),
                updated_at: Some(Default::default()),
                ..image(i)
            })
            .collect();
        let list = |picked: &[usize]| {
            let got: Vec<&Image> = picked.iter().map(|&i| &images[i]).collect();
            check_list(
                "list",
                got.iter().map(|i| (i.name.as_str(), *i)),
                &[0, 2],
                &index,
                check_image,
            )
        };
        let cases: &[(&[usize], Result<(), &str>)] = &[
            (&[0, 2], Ok(())),
            (&[2, 0], Ok(())),
            (&[0], Err("list: 1 records, 2 expected")),
            (&[0, 0], Err("twice")),
            (&[0, 1], Err("does not match the filter")),
        ];
        for (picked, expected) in cases {
            match (list(picked), expected) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(want)) => assert!(got.contains(want), "{picked:?}: {got}"),
                (got, want) => panic!("{picked:?}: {got:?}, expected {want:?}"),
            }
        }
        let mut changed = images[2].clone();
        changed.labels.insert("extra".into(), "x".into());
        let error = check_list(
            "list",
            [
                (images[0].name.as_str(), &images[0]),
                (changed.name.as_str(), &changed),
            ]
            .into_iter(),
            &[0, 2],
            &index,
            check_image,
        )
        .unwrap_err();
        assert!(error.starts_with("list: image registry.example"), "{error}");
        let unknown = Image {
            name: "elsewhere".into(),
            ..images[0].clone()
        };
        let error = check_list(
            "list",
            [(unknown.name.as_str(), &unknown)].into_iter(),
            &[0],
            &index,
            check_image,
        )
        .unwrap_err();
        assert!(error.contains("was never created"), "{error}");
    }
}
