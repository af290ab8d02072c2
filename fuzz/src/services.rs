//! The gRPC services, on whatever bytes a client sends: an in-process plinthd (every default
//! plugin, root and state in a directory of this process's own) serves its socket, and the
//! input is a sequence of calls sent to it as raw protobuf through the real transport, so
//! that the bytes meet the same decoding and the same handlers as a client's.
//!
//! Input: records of `[method][flags][length: u16 LE][payload]`, at most 32. `method` picks
//! from [`METHODS`] (modulo its length); `flags` bits 0–1 pick the namespace header
//! (`fuzz`, `default`, none, or an invalid one), bit 2 adds a `containerd-lease` header. A
//! streaming request's payload is a sequence of `[length: u8][message]`.
//!
//! Properties: no panic anywhere in the daemon (a panic hook records them; AFL's aborts the
//! process), and the daemon still answers `Version` after every input.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// How a method is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One request, one answer.
    Unary,
    /// One request, a stream of answers.
    ServerStream,
    /// A stream each way.
    Bidi,
}

/// Every method the input can call (`Events.Subscribe` waits for events that may never
/// come, and `Config.Reload` starts plugins again: both are left out).
pub const METHODS: &[(&str, Kind)] = &[
    (
        "/containerd.services.version.v1.Version/Version",
        Kind::Unary,
    ),
    (
        "/containerd.services.introspection.v1.Introspection/Plugins",
        Kind::Unary,
    ),
    (
        "/containerd.services.introspection.v1.Introspection/Server",
        Kind::Unary,
    ),
    (
        "/containerd.services.introspection.v1.Introspection/PluginInfo",
        Kind::Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/Get",
        Kind::Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/List",
        Kind::Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/Create",
        Kind::Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/Update",
        Kind::Unary,
    ),
    (
        "/containerd.services.namespaces.v1.Namespaces/Delete",
        Kind::Unary,
    ),
    ("/containerd.services.content.v1.Content/Info", Kind::Unary),
    (
        "/containerd.services.content.v1.Content/Update",
        Kind::Unary,
    ),
    (
        "/containerd.services.content.v1.Content/List",
        Kind::ServerStream,
    ),
    (
        "/containerd.services.content.v1.Content/Delete",
        Kind::Unary,
    ),
    (
        "/containerd.services.content.v1.Content/Read",
        Kind::ServerStream,
    ),
    (
        "/containerd.services.content.v1.Content/Status",
        Kind::Unary,
    ),
    (
        "/containerd.services.content.v1.Content/ListStatuses",
        Kind::Unary,
    ),
    ("/containerd.services.content.v1.Content/Write", Kind::Bidi),
    ("/containerd.services.content.v1.Content/Abort", Kind::Unary),
    (
        "/containerd.services.snapshots.v1.Snapshots/Prepare",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/View",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Mounts",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Commit",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Remove",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Stat",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Update",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/List",
        Kind::ServerStream,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Usage",
        Kind::Unary,
    ),
    (
        "/containerd.services.snapshots.v1.Snapshots/Cleanup",
        Kind::Unary,
    ),
    ("/containerd.services.images.v1.Images/Get", Kind::Unary),
    ("/containerd.services.images.v1.Images/List", Kind::Unary),
    ("/containerd.services.images.v1.Images/Create", Kind::Unary),
    ("/containerd.services.images.v1.Images/Update", Kind::Unary),
    ("/containerd.services.images.v1.Images/Delete", Kind::Unary),
    (
        "/containerd.services.containers.v1.Containers/Get",
        Kind::Unary,
    ),
    (
        "/containerd.services.containers.v1.Containers/List",
        Kind::Unary,
    ),
    (
        "/containerd.services.containers.v1.Containers/ListStream",
        Kind::ServerStream,
    ),
    (
        "/containerd.services.containers.v1.Containers/Create",
        Kind::Unary,
    ),
    (
        "/containerd.services.containers.v1.Containers/Update",
        Kind::Unary,
    ),
    (
        "/containerd.services.containers.v1.Containers/Delete",
        Kind::Unary,
    ),
    ("/containerd.services.leases.v1.Leases/Create", Kind::Unary),
    ("/containerd.services.leases.v1.Leases/Delete", Kind::Unary),
    ("/containerd.services.leases.v1.Leases/List", Kind::Unary),
    (
        "/containerd.services.leases.v1.Leases/AddResource",
        Kind::Unary,
    ),
    (
        "/containerd.services.leases.v1.Leases/DeleteResource",
        Kind::Unary,
    ),
    (
        "/containerd.services.leases.v1.Leases/ListResources",
        Kind::Unary,
    ),
    ("/containerd.services.events.v1.Events/Publish", Kind::Unary),
    ("/containerd.services.events.v1.Events/Forward", Kind::Unary),
    ("/containerd.services.diff.v1.Diff/Apply", Kind::Unary),
    ("/containerd.services.diff.v1.Diff/Diff", Kind::Unary),
    ("/plinth.services.gc.v1.GC/Collect", Kind::Unary),
    ("/plinth.services.config.v1.Config/Generation", Kind::Unary),
];

/// The most calls one input makes.
const MAX_CALLS: usize = 32;
/// The most answers read from one stream.
const MAX_ANSWERS: usize = 64;
/// How long one call may take before it is given up (a write that waits for a ref another
/// call of the same input holds, say); not a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Panics seen anywhere in the process since the daemon started.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Daemon {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

static DAEMON: OnceLock<Daemon> = OnceLock::new();

/// Runs one input.
pub fn run(data: &[u8]) {
    let daemon = DAEMON.get_or_init(start);
    daemon.runtime.block_on(async {
        for (index, call) in calls(data).into_iter().enumerate() {
            let (path, kind) = METHODS[call.method % METHODS.len()];
            let _ =
                tokio::time::timeout(CALL_TIMEOUT, send(&daemon.channel, &call, path, kind)).await;
            let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
            assert!(
                panics.is_empty(),
                "the daemon panicked on call {index} ({path}): {panics:?}"
            );
        }
        let version = tokio::time::timeout(
            CALL_TIMEOUT,
            unary(&daemon.channel, request(Vec::new(), 1), METHODS[0].0),
        )
        .await;
        assert!(
            matches!(version, Ok(Ok(_))),
            "the daemon no longer answers Version: {version:?}"
        );
    });
}

/// One call the input asks for.
struct Call<'a> {
    method: usize,
    flags: u8,
    payload: &'a [u8],
}

fn calls(mut data: &[u8]) -> Vec<Call<'_>> {
    let mut calls = Vec::new();
    while data.len() >= 4 && calls.len() < MAX_CALLS {
        let length = usize::from(u16::from_le_bytes([data[2], data[3]]));
        let end = (4 + length).min(data.len());
        calls.push(Call {
            method: usize::from(data[0]),
            flags: data[1],
            payload: &data[4..end],
        });
        data = &data[end..];
    }
    calls
}

/// The messages of a streaming call's payload.
fn messages(mut payload: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while let Some((&length, rest)) = payload.split_first() {
        let end = usize::from(length).min(rest.len());
        messages.push(rest[..end].to_vec());
        payload = &rest[end..];
    }
    messages
}

fn request<T>(message: T, flags: u8) -> Request<T> {
    let mut request = Request::new(message);
    let namespace = match flags & 3 {
        0 => Some("fuzz"),
        1 => Some("default"),
        2 => None,
        _ => Some("not a namespace!"),
    };
    if let Some(namespace) = namespace {
        request.metadata_mut().insert(
            "containerd-namespace",
            MetadataValue::from_static(namespace),
        );
    }
    if flags & 4 != 0 {
        request
            .metadata_mut()
            .insert("containerd-lease", MetadataValue::from_static("fuzz-lease"));
    }
    request
}

/// Whether to say on stderr what each call answered (`PLINTH_FUZZ_VERBOSE=1`), for triage.
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PLINTH_FUZZ_VERBOSE").is_some())
}

fn report(path: &str, outcome: Result<usize, &Status>) {
    if verbose() {
        match outcome {
            Ok(answers) => eprintln!("{path}: ok, {answers} answer(s)"),
            Err(status) => eprintln!("{path}: {:?} {}", status.code(), status.message()),
        }
    }
}

async fn send(channel: &Channel, call: &Call<'_>, path: &'static str, kind: Kind) {
    match kind {
        Kind::Unary => {
            let answer = unary(channel, request(call.payload.to_vec(), call.flags), path).await;
            report(path, answer.as_ref().map(|_| 1));
        }
        Kind::ServerStream => {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            if grpc.ready().await.is_err() {
                return;
            }
            let request = request(call.payload.to_vec(), call.flags);
            match grpc
                .server_streaming(request, path.parse().expect("a method path"), Raw)
                .await
            {
                Ok(answer) => report(path, drain(answer.into_inner()).await.as_ref().copied()),
                Err(status) => report(path, Err(&status)),
            }
        }
        Kind::Bidi => {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            if grpc.ready().await.is_err() {
                return;
            }
            let outgoing = tokio_stream(messages(call.payload));
            let request = request(outgoing, call.flags);
            match grpc
                .streaming(request, path.parse().expect("a method path"), Raw)
                .await
            {
                Ok(answer) => report(path, drain(answer.into_inner()).await.as_ref().copied()),
                Err(status) => report(path, Err(&status)),
            }
        }
    }
}

async fn unary(
    channel: &Channel,
    request: Request<Vec<u8>>,
    path: &'static str,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(request, path.parse().expect("a method path"), Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// Reads up to [`MAX_ANSWERS`] answers: how many came before the end, or the error.
async fn drain(mut answers: tonic::Streaming<Vec<u8>>) -> Result<usize, Status> {
    for read in 0..MAX_ANSWERS {
        if answers.message().await?.is_none() {
            return Ok(read);
        }
    }
    Ok(MAX_ANSWERS)
}

/// The messages as a stream that ends after the last.
fn tokio_stream(messages: Vec<Vec<u8>>) -> impl tokio_stream::Stream<Item = Vec<u8>> {
    tokio_stream::iter(messages)
}

/// Starts the daemon on a directory of this process's own (removing those of processes
/// that are gone: a fuzzer starts many), and connects to it.
fn start() -> Daemon {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(info.to_string());
        previous(info);
    }));
    let base = std::env::temp_dir().join("plinth-fuzz-services");
    remove_stale(&base);
    let dir = base.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the daemon's directory");
    let config = dir.join("config.toml");
    std::fs::write(&config, "version = 3\n").expect("the daemon's config");
    let socket = dir.join("plinthd.sock");
    let options = plinthd::setup::Options {
        config: Some(config),
        address: Some(socket.display().to_string()),
        root: Some(dir.join("root")),
        state: Some(dir.join("state")),
        log_level: None,
        strict: true,
        blocking_threads: None,
        read_threads: None,
        ingest_threads: None,
        list_inline: None,
        worker_threads: None,
        blocking_nice: None,
    };
    let prepared = plinthd::setup::prepare(&options).expect("preparing the daemon");
    std::thread::Builder::new()
        .name("fuzz-plinthd".into())
        .spawn(move || {
            if let Err(error) = plinthd::server::serve(prepared) {
                PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("the daemon stopped: {error:#}"));
            }
        })
        .expect("a thread for the daemon");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let channel = runtime.block_on(connect(&socket));
    Daemon { runtime, channel }
}

/// Connects once the daemon answers `Version` (it binds the socket only after its plugins
/// are up).
async fn connect(socket: &Path) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = socket.display().to_string();
    loop {
        if let Ok(client) = plinthd::client::Client::connect(&address, "default").await {
            let channel = client.channel();
            if unary(&channel, request(Vec::new(), 1), METHODS[0].0)
                .await
                .is_ok()
            {
                return channel;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the in-process daemon did not answer on {address} within a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Removes the directories of fuzzing processes that no longer run.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let alive = name
            .to_str()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| PathBuf::from(format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Messages as their bytes: the input's protobuf goes out as it is.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, destination: &mut EncodeBuf<'_>) -> Result<(), Status> {
        destination.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0; source.remaining()];
        source.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}
