//! The daemon proper: initialise plugins, serve every gRPC plugin on a unix socket, stop
//! gracefully on SIGTERM or SIGINT.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use plinth_builtin_plugins::live::AfterStart;
use plinth_core::init_plugins;
use tokio::net::UnixListener;

use crate::linger::Connections;
use crate::paths::socket_path;
use crate::setup::Prepared;

/// How long in-flight calls may run after a stop signal before the server stops anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that the socket path is free: absent, or a stale socket nobody listens on (which
/// is removed). A live socket is never taken over.
///
/// # Errors
/// Another process listens there, or the path is not a socket.
pub fn claim_socket(path: &Path) -> anyhow::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking socket {}", path.display())),
    };
    if !metadata.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: remove it or choose another address",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another daemon is serving on {}: stop it first, or start this one with another --address",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale socket left by a previous run");
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("checking socket {}", path.display())),
    }
}

/// The file under the root that the running daemon holds locked.
const ROOT_LOCK: &str = "plinthd.lock";

/// Takes `<root>/plinthd.lock` (an exclusive `flock`, with this process's pid written in it)
/// for as long as the returned file is kept: one daemon per root. The kernel drops the lock
/// when the process ends, however it ends, so a crash never leaves the root locked.
///
/// # Errors
/// Another process holds the lock (named by its pid), or the file cannot be written.
fn lock_root(root: &Path) -> anyhow::Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    use std::io::{Read as _, Seek as _, Write as _};

    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let path = root.join(ROOT_LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            bail!(
                "{} is in use by another plinthd{holder}: stop it, or give this one its own --root",
                root.display()
            );
        }
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

fn bind(path: &Path, uid: u32, gid: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    claim_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    if uid != 0 || gid != 0 || crate::paths::is_root() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
            format!(
                "giving {} to uid {uid} gid {gid} ([grpc] uid/gid)",
                path.display()
            )
        })?;
    }
    Ok(listener)
}

/// Removes the socket file when dropped, on every exit path after a successful bind.
struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(socket = %self.0.display(), error = %e, "removing socket");
            }
        }
    }
}

/// The stop signals, registered before the daemon says it is ready, so that a SIGTERM sent
/// right after readiness is never handled by the default action (which would leave the
/// socket behind).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs the daemon until a stop signal: refuses a live socket and takes the root's lock
/// before anything is created, starts the async runtime, initialises the plugins, serves,
/// and lets go of the root only once the runtime (and every blocking task still touching the
/// root) has shut down.
///
/// # Errors
/// The socket or the root is taken, the runtime cannot start, a required plugin failed, or
/// the server could not start.
pub fn serve(prepared: Prepared) -> anyhow::Result<()> {
    crate::setup::check_startable(&prepared)?;
    let socket = socket_path(&prepared.config.config.grpc.address);
    claim_socket(&socket)?;
    let config = &prepared.config.config;
    // What a start creates directly in the root and the state: one directory per plugin
    // and the root's lock (the socket is removed by its own guard).
    let mut names: BTreeSet<OsString> = prepared
        .registry
        .entries()
        .iter()
        .map(|entry| OsString::from(entry.uri()))
        .collect();
    names.insert(OsString::from(ROOT_LOCK));
    let leftovers = Leftovers::record(
        &[config.root.clone(), config.state.clone()],
        &names,
        socket.parent(),
    );
    // Another daemon holding the root refuses this start here, before anything is touched
    // (and nothing of its is ever removed below). Declared before the runtime, so dropped
    // after it.
    let root_lock = lock_root(&config.root)?;
    let serving = std::sync::atomic::AtomicBool::new(false);
    if let Some(threads) = prepared.options.read_threads {
        plinth_builtin_plugins::set_read_threads(threads);
    }
    if let Some(threads) = prepared.options.ingest_threads {
        plinth_builtin_plugins::set_ingest_threads(threads);
    }
    if let Some(records) = prepared.options.list_inline {
        plinth_builtin_plugins::set_inline_list_records(records);
    }
    plinth_builtin_plugins::set_blocking_nice(prepared.options.blocking_nice());
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(prepared.options.worker_threads())
        .max_blocking_threads(prepared.options.blocking_threads())
        .enable_all()
        .thread_name("plinthd")
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(prepared, &serving)));
    // The runtime is down here: no blocking task touches the root any more. Nothing the
    // plugins started may outlive the daemon either (the overlay check's mount).
    plinth_builtin_plugins::finish_background_work();
    if result.is_err() && !serving.load(std::sync::atomic::Ordering::SeqCst) {
        // A refused start takes back what it created; a daemon that served keeps its data.
        leftovers.remove();
    }
    drop(root_lock);
    result
}

/// What a refused start may take back, recorded before it creates anything: in the root and
/// the state, the entries it creates there (plugin directories, the lock) that were not
/// there before; then every directory the start created on the way to them (and to the
/// socket), if it is empty. Nothing else is ever removed, so neither a shared parent such as
/// `/run` nor a file someone else put beside ours loses anything.
struct Leftovers {
    /// Root and state, each with the names (of `names`) it held before.
    dirs: Vec<(PathBuf, BTreeSet<OsString>)>,
    /// What a start creates in them.
    names: BTreeSet<OsString>,
    /// Directories that did not exist, deepest first.
    created: Vec<PathBuf>,
}

impl Leftovers {
    fn record(
        dirs: &[PathBuf],
        names: &BTreeSet<OsString>,
        socket_dir: Option<&Path>,
    ) -> Leftovers {
        let mut created: Vec<PathBuf> = Vec::new();
        for dir in dirs.iter().map(PathBuf::as_path).chain(socket_dir) {
            for missing in dir
                .ancestors()
                .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            {
                if !created.iter().any(|c| c == missing) {
                    created.push(missing.to_path_buf());
                }
            }
        }
        // Deepest first, so that each is empty by the time it is removed.
        created.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let dirs = dirs
            .iter()
            .map(|dir| {
                let before = names
                    .iter()
                    .filter(|name| std::fs::symlink_metadata(dir.join(name)).is_ok())
                    .cloned()
                    .collect();
                (dir.clone(), before)
            })
            .collect();
        Leftovers {
            dirs,
            names: names.clone(),
            created,
        }
    }

    fn remove(&self) {
        for (dir, before) in &self.dirs {
            for name in self.names.difference(before) {
                if let Err(error) = remove_tree(&dir.join(name)) {
                    tracing::warn!(path = %dir.join(name).display(), %error, "removing what the refused start created");
                }
            }
        }
        for dir in &self.created {
            // Not empty: something that is not ours is in it; leave it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes a file or a whole directory; absent is fine. Never follows a symlink.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Runs the daemon until a stop signal, inside what `serve` sets up: the socket checked and
/// the root's lock held across this and the runtime's shutdown, so that the next daemon on
/// the root starts only once nothing here touches it any more.
///
/// # Errors
/// The socket is taken, a required plugin failed, or the server could not start.
async fn run(prepared: Prepared, serving: &std::sync::atomic::AtomicBool) -> anyhow::Result<()> {
    for diagnostic in &prepared.config.diagnostics {
        tracing::warn!("config: {diagnostic}");
    }
    let config = &prepared.config;
    // `serve` refused a live socket before anything was created; `bind` checks again.
    let socket = socket_path(&config.config.grpc.address);
    for dir in [&config.config.root, &config.config.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let options = crate::reload::init_options(config, &socket.display().to_string());
    let limits = crate::reload::limits(config);
    let (registry, graph) = (prepared.registry.clone(), prepared.graph.clone());
    let plugins = tokio::task::spawn_blocking(move || init_plugins(&registry, &graph, options))
        .await
        .context("plugin init thread")??;
    let counts = |wanted: &str| {
        plugins
            .plugins()
            .iter()
            .filter(|p| p.status().as_str() == wanted)
            .count()
    };
    tracing::info!(
        ok = counts("ok"),
        skipped = counts("skip"),
        failed = counts("error"),
        disabled = counts("disabled"),
        "plugins initialised"
    );

    let (uid, gid) = (
        prepared.config.config.grpc.uid,
        prepared.config.config.grpc.gid,
    );
    let table = crate::reload::RouteTable::new(tonic::service::Routes::default());
    let reloader = crate::reload::Reloader::new(
        prepared,
        socket.display().to_string(),
        plugins.clone(),
        table.clone(),
        DRAIN_TIMEOUT,
    );
    let (routes, served) = crate::reload::build_routes(&plugins, limits, Some(&reloader));
    table.swap(routes);
    let signals = StopSignals::register()?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let listener = bind(&socket, uid, gid)?;
    let _guard = SocketGuard(socket.clone());
    #[cfg(feature = "proxy")]
    let proxy_targets = proxy_targets::start(&plugins, uid, gid, limits)?;
    serving.store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!(services = ?served, "serving gRPC");
    let program = crate::program_name();
    eprintln!("{program} listening on {}", socket.display());
    if let Err(e) = crate::notify::notify("READY=1") {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    // What the plugins left until now (opening their databases, say), off the start-up path.
    // (`instance` finds nothing in a plugin that is not ok.)
    for plugin in plugins.plugins() {
        if let Ok(work) = plugin.instance::<dyn AfterStart>() {
            work.after_start();
        }
    }
    // A reload that restarts a proxy target swaps its services behind its socket too.
    #[cfg(feature = "proxy")]
    {
        let targets = proxy_targets.clone();
        reloader.after_commit(Box::new(move |plugins, limits| {
            targets.refresh(plugins, limits)
        }));
    }
    // SIGHUP reloads the config (and never stops the daemon), from now until it stops.
    let reloads = tokio::spawn(reloader.clone().on_sighup(hangup));

    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<&'static str>();
    let shutdown = async move {
        let signal = signals.recv().await;
        tracing::info!(
            signal,
            "stopping: no new connections, finishing calls in flight"
        );
        let _ = stopped_tx.send(signal);
    };
    #[cfg(feature = "proxy")]
    let shutdown = {
        let stop = proxy_targets.stopper();
        async move {
            shutdown.await;
            stop.stop();
        }
    };
    let connections = Connections::new(DRAIN_TIMEOUT);
    let server = tonic::transport::Server::builder()
        .layer(crate::too_large::layer())
        .layer(crate::namespace_check::NamespaceCheckLayer)
        .add_routes(table.routes())
        .serve_with_incoming_shutdown(connections.incoming(listener), shutdown);
    // Boxed rather than pinned on the stack, so that it can be dropped before the plugins
    // close: its routes hold the services, which hold the stores.
    let mut server = Box::pin(server);
    let served = tokio::select! {
        result = async {
            let result = (&mut server).await;
            // The last replies may still be on their way to clients (see `linger`).
            connections.closed().await;
            result
        } => result,
        _ = async {
            let _ = stopped_rx.await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "calls or connections still open after the drain time-out; stopping anyway");
            Ok(())
        }
    };
    let _ = crate::notify::notify("STOPPING=1");
    #[cfg(feature = "proxy")]
    proxy_targets.wait().await;
    drop(server);
    // The routes hold the services (and the config service the reloader, which holds the
    // routes): let go of them all, so that the plugins' instances are dropped as they close.
    reloader.stop().await;
    reloads.abort();
    table.swap(tonic::service::Routes::default());
    drop(reloader);
    let closing = Arc::new(plugins);
    for (uri, error) in tokio::task::spawn_blocking(move || closing.close())
        .await
        .unwrap_or_default()
    {
        tracing::warn!(uri, %error, "closing plugin failed");
    }
    served.context("gRPC server")?;
    tracing::info!("stopped");
    Ok(())
}

/// plinthd as a proxy target: each ok plugin with a
/// [`ProxyTarget`](plinth_builtin_plugins::proxy::target::ProxyTarget) view gets its own
/// socket (claimed, mode and owner as the main one, removed at exit) on which its raw
/// services are served — without the namespace check, as namespaces are ignored there —
/// until the daemon stops. Each socket dispatches through a [`RouteTable`], so that a reload
/// that restarts a target (or what it serves) swaps its services behind the live socket;
/// a target the reload adds gets its socket then, and one it removes serves nothing more
/// (its socket stays until the daemon stops).
#[cfg(feature = "proxy")]
mod proxy_targets {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex, PoisonError};

    use anyhow::Context as _;
    use plinth_builtin_plugins::grpc::MessageLimits;
    use plinth_builtin_plugins::proxy::target::ProxyTarget;
    use plinth_core::{Set, Status, types};
    use tokio::sync::watch;
    use tokio::task::JoinHandle;

    use super::{DRAIN_TIMEOUT, SocketGuard, bind};
    use crate::linger::Connections;
    use crate::reload::RouteTable;

    /// The proxy-target servers of a daemon.
    pub(super) struct Served {
        stop: Arc<watch::Sender<bool>>,
        uid: u32,
        gid: u32,
        servers: Mutex<Servers>,
    }

    #[derive(Default)]
    struct Servers {
        tasks: Vec<(String, JoinHandle<Result<(), tonic::transport::Error>>)>,
        tables: BTreeMap<PathBuf, RouteTable>,
        guards: Vec<SocketGuard>,
    }

    /// Tells the servers to stop.
    pub(super) struct Stopper(Arc<watch::Sender<bool>>);

    impl Stopper {
        pub(super) fn stop(&self) {
            let _ = self.0.send(true);
        }
    }

    /// Binds and serves every proxy target of `plugins`.
    pub(super) fn start(
        plugins: &Set,
        uid: u32,
        gid: u32,
        limits: MessageLimits,
    ) -> anyhow::Result<Arc<Served>> {
        let (stop, _) = watch::channel(false);
        let served = Arc::new(Served {
            stop: Arc::new(stop),
            uid,
            gid,
            servers: Mutex::new(Servers::default()),
        });
        served.refresh(plugins, limits)?;
        Ok(served)
    }

    impl Served {
        pub(super) fn stopper(&self) -> Stopper {
            Stopper(self.stop.clone())
        }

        /// Serves the proxy targets `plugins` holds now: a socket already served gets the
        /// target's services swapped in, a new one is bound, and one no target names any
        /// more serves nothing (Unimplemented).
        ///
        /// # Errors
        /// A new target's socket cannot be bound.
        pub(super) fn refresh(&self, plugins: &Set, limits: MessageLimits) -> anyhow::Result<()> {
            let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
            let mut named = Vec::new();
            for plugin in plugins.plugins() {
                if plugin.plugin_type() != types::INTERNAL || !matches!(plugin.status(), Status::Ok)
                {
                    continue;
                }
                let Ok(target) = plugin.instance::<dyn ProxyTarget>() else {
                    continue;
                };
                let address = target.address().to_path_buf();
                let mut routes = tonic::service::RoutesBuilder::default();
                target.add_routes(&mut routes, limits);
                named.push(address.clone());
                if let Some(table) = servers.tables.get(&address) {
                    tracing::debug!(uri = plugin.uri(), socket = %address.display(), "proxy target's services swapped");
                    table.swap(routes.routes());
                    continue;
                }
                let listener = bind(&address, self.uid, self.gid)
                    .with_context(|| format!("serving {} as a proxy target", plugin.uri()))?;
                servers.guards.push(SocketGuard(address.clone()));
                let table = RouteTable::new(routes.routes());
                let mut stopped = self.stop.subscribe();
                let connections = Connections::new(DRAIN_TIMEOUT);
                let server = tonic::transport::Server::builder()
                    .add_routes(table.routes())
                    .serve_with_incoming_shutdown(connections.incoming(listener), async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                let server = async move {
                    let result = server.await;
                    connections.closed().await;
                    result
                };
                tracing::info!(uri = plugin.uri(), socket = %address.display(), "serving content store and snapshotters raw (proxy target)");
                eprintln!("plinthd serving proxy target on {}", address.display());
                servers.tables.insert(address, table);
                servers
                    .tasks
                    .push((plugin.uri().to_string(), tokio::spawn(server)));
            }
            for (address, table) in &servers.tables {
                if !named.contains(address) {
                    table.swap(tonic::service::Routes::default());
                    tracing::info!(socket = %address.display(), "no proxy target serves here any more; the socket stays until the daemon stops");
                }
            }
            Ok(())
        }

        /// Stops the servers (if not yet told to) and waits for them, at most the drain
        /// time-out each; then lets go of the services they served.
        pub(super) async fn wait(&self) {
            let _ = self.stop.send(true);
            let tasks = std::mem::take(
                &mut self
                    .servers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .tasks,
            );
            for (uri, mut task) in tasks {
                match tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(error))) => tracing::warn!(uri, %error, "proxy target server"),
                    Ok(Err(error)) => tracing::warn!(uri, %error, "proxy target server task"),
                    Err(_) => {
                        task.abort();
                        tracing::warn!(
                            uri,
                            "proxy target calls still in flight after the drain time-out; stopping anyway"
                        );
                    }
                }
            }
            let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
            for table in servers.tables.values() {
                table.swap(tonic::service::Routes::default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(next) = stack.pop() {
            for entry in std::fs::read_dir(&next).unwrap().flatten() {
                let path = entry.path();
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    /// A refused start takes back what it created and nothing else: not what was there
    /// before, not what another process put beside it meanwhile (a shared socket directory,
    /// a file in a directory the start created).
    #[test]
    fn a_refused_start_takes_back_only_what_it_created() {
        let base = tempfile::tempdir().unwrap();
        let base = base.path();
        let (root, state, shared) = (
            base.join("root"),
            base.join("run/state"),
            base.join("shared"),
        );
        std::fs::create_dir_all(root.join("io.plinth.test.v1.kept")).unwrap();
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(root.join("mine-before"), "").unwrap();
        let names: BTreeSet<OsString> =
            ["io.plinth.test.v1.kept", "io.plinth.test.v1.new", ROOT_LOCK]
                .into_iter()
                .map(OsString::from)
                .collect();
        let leftovers = Leftovers::record(
            &[root.clone(), state.clone()],
            &names,
            Some(&base.join("sock/dir")),
        );

        // The start creates its things; someone else adds theirs meanwhile.
        for dir in [&root, &state] {
            std::fs::create_dir_all(dir.join("io.plinth.test.v1.new/deep")).unwrap();
        }
        std::fs::write(root.join(ROOT_LOCK), "1").unwrap();
        std::fs::create_dir_all(base.join("sock/dir")).unwrap();
        std::fs::write(root.join("theirs"), "").unwrap();
        std::fs::write(shared.join("theirs"), "").unwrap();
        std::fs::write(base.join("run/theirs"), "").unwrap();

        leftovers.remove();
        assert_eq!(
            tree(base),
            [
                "root",
                "root/io.plinth.test.v1.kept",
                "root/mine-before",
                "root/theirs",
                "run",
                "run/theirs",
                "shared",
                "shared/theirs",
            ]
        );
    }
}
