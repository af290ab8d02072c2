//! From command-line options to a registry, a resolved config and an ordered graph: what
//! every plinthd command needs before it does anything.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use plinth_core::config::{ConfigLoader, ResolvedConfig};
use plinth_core::{PluginGraph, Registration, Registry};

use crate::paths::Defaults;

/// Options shared by every plinthd command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// Config file [default: /etc/plinth/config.toml as root, else $XDG_CONFIG_HOME/plinth/config.toml, when it exists]
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Option<PathBuf>,
    /// gRPC socket path (overrides grpc.address)
    #[arg(short = 'a', long = "address", global = true)]
    pub address: Option<String>,
    /// Root directory for persistent data (overrides root)
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// State directory for run-time data (overrides state)
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error (overrides debug.level)
    #[arg(short = 'l', long = "log-level", global = true)]
    pub log_level: Option<String>,
    /// Treat every config report (unknown keys, unknown plugins) as an error
    #[arg(long, global = true)]
    pub strict: bool,
    /// Threads that serve calls (the async runtime's workers) [default: 2 per CPU]
    #[arg(long, global = true, value_name = "N")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// Most threads for blocking work at once (file I/O, database transactions); more
    /// queue [default: 3 per CPU]
    #[arg(long, global = true, value_name = "N")]
    pub blocking_threads: Option<std::num::NonZeroUsize>,
    /// Threads for lists and walks longer than --list-inline, apart from the blocking pool's
    /// writes; 0 runs them on the blocking pool [default: 1 per CPU]
    #[arg(long, global = true, value_name = "N")]
    pub read_threads: Option<usize>,
    /// Threads that write and hash the data of content ingests, apart from the blocking
    /// pool's commits; 0 runs that on the blocking pool [default: 1 per CPU]
    #[arg(long, global = true, value_name = "N")]
    pub ingest_threads: Option<usize>,
    /// How many records a list may walk on the thread serving its call before it moves to
    /// the read pool; 0 sends every list there [default: 128]
    #[arg(long, global = true, value_name = "N")]
    pub list_inline: Option<usize>,
    /// How much lower the threads of bulk work (the blocking pool: commits, deletes,
    /// collections) run than the threads that serve calls, lists and ingest writes, as a
    /// nice value from 0 to 19 [default: 10]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=19))]
    pub blocking_nice: Option<i32>,
}

impl Options {
    /// The size of the runtime's blocking pool: `--blocking-threads`, or three per CPU.
    ///
    /// Bounded, unlike tokio's default of 512: every blocking thread is scheduled by the
    /// kernel as an equal of the two or so runtime threads that serve calls, so a hundred
    /// threads of bulk work (ingest writes, commits) starve the cheap calls that run on the
    /// runtime threads (BENCHMARKS.md, "Load"). Three per CPU keep the CPUs busy while some
    /// of them wait for the disk.
    #[must_use]
    pub fn blocking_threads(&self) -> usize {
        self.blocking_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) * 3,
            std::num::NonZeroUsize::get,
        )
    }

    /// The number of the runtime's worker threads, which serve every call:
    /// `--worker-threads`, or two per CPU.
    ///
    /// More than one per CPU: a worker the kernel preempts (for a pool thread, or another
    /// process) holds up every call queued on it until it runs again, and so does one busy
    /// with a cached read or a large message; with two per CPU the kernel shares the CPUs
    /// among twice as many queues (BENCHMARKS.md, "Load").
    #[must_use]
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) * 2,
            std::num::NonZeroUsize::get,
        )
    }

    /// The nice value the threads of blocking work add to the serving threads':
    /// `--blocking-nice`, or 10.
    ///
    /// The runtime's few threads serve every call, the cheap ones (a point read, a cached
    /// read, a short list) on the spot; the blocking pool's threads do the bulk (commits and
    /// their syncs, deletes, collections). At equal priority the kernel shares the CPUs among
    /// all of them alike, and a point read waits behind bulk work it does not need
    /// (BENCHMARKS.md, "Load"). Lower, the pool still gets every CPU the serving threads
    /// leave idle. The read and ingest pools stay at the serving priority: their work (a
    /// long list, an ingest's write) is a call a client waits for.
    #[must_use]
    pub fn blocking_nice(&self) -> i32 {
        self.blocking_nice.unwrap_or(10)
    }
}

/// Everything resolved before anything is started.
#[derive(Debug)]
pub struct Prepared {
    /// The command-line options it was prepared from (a reload prepares again from them).
    pub options: Options,
    /// All registrations.
    pub registry: Registry,
    /// The config, checked against the registry.
    pub config: ResolvedConfig,
    /// The registrations in merge order (what `graph` indexes).
    pub registrations: Vec<Registration>,
    /// The init order.
    pub graph: PluginGraph,
}

/// The registry of this binary, checked so that no compiled-in plugin went missing.
///
/// # Errors
/// Invalid or duplicate registrations; a plugin feature that is on but registered nothing.
pub fn registry() -> anyhow::Result<Registry> {
    plinth_builtin_plugins::link();
    let registry = Registry::from_link_time().map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!(
            "invalid plugin registrations in this build:\n{}",
            lines.join("\n")
        )
    })?;
    for (feature, enabled) in plinth_builtin_plugins::FEATURES {
        if !enabled {
            continue;
        }
        for (f, uri) in plinth_builtin_plugins::FEATURE_PLUGINS {
            if f == feature && registry.get(uri).is_none() {
                bail!(
                    "feature `{feature}` is compiled in but plugin {uri} registered nothing: \
                     the plugin crate was not linked (call plinth_builtin_plugins::link() from main)"
                );
            }
        }
    }
    Ok(registry)
}

/// Registrations that come from outside this binary: shared-library plugins found in
/// `plugin_dir` and `[proxy_plugins]` from the config.
#[derive(Debug, Default)]
pub struct ExtraSources {
    /// (library file, registration), from the dynamic loader.
    pub dynamic: Vec<(PathBuf, Registration)>,
    /// (section name, registration), from `[proxy_plugins.<name>]`.
    pub proxies: Vec<(String, Registration)>,
}

/// The registrations of `config` beyond this binary's own.
///
/// # Errors
/// A `[proxy_plugins]` section that cannot become a plugin.
pub fn extra_sources(config: &plinth_core::config::Config) -> anyhow::Result<ExtraSources> {
    #[cfg_attr(
        not(any(feature = "proxy", feature = "dynamic-loader")),
        allow(unused_mut)
    )]
    let mut extra = ExtraSources::default();

    // --- Proxy plugins: `[proxy_plugins.<name>]` → `<type>.<name>` (feature `proxy`). ---
    // A name clashing with another plugin's URI is reported by `full_registry`, naming both.
    #[cfg(feature = "proxy")]
    {
        extra.proxies = plinth_builtin_plugins::proxy::registrations(&config.proxy_plugins)
            .map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
                anyhow::anyhow!("invalid proxy plugins:\n{}", lines.join("\n"))
            })?;
    }
    #[cfg(not(feature = "proxy"))]
    if let Some(name) = config.proxy_plugins.keys().next() {
        bail!("[proxy_plugins.{name}]: this plinthd was built without the `proxy` feature");
    }
    // --- End of proxy plugins. ---

    // --- Dynamic plugins: libraries in `plugin_dir` (feature `dynamic-loader`). ---
    // Never an error here: a refused directory or a bad library becomes a failed plugin
    // `io.plinth.dynamic.v1.<file stem>` carrying its path and reason. Libraries are checked
    // against this binary's own registrations here, before `full_registry`, so a clash fails
    // the library instead of stopping start-up.
    #[cfg(feature = "dynamic-loader")]
    {
        let plugin_dir = config
            .plugin_dir
            .clone()
            .unwrap_or_else(|| config.root.join("plugins"));
        let own: Vec<Registration> = plinth_core::registry::link_time_registrations()
            .copied()
            .collect();
        let report = plinth_dynamic_loader::load_dir(&plugin_dir, &own);
        extra.dynamic.extend(report.registrations());
    }
    // --- End of dynamic plugins. ---

    Ok(extra)
}

/// The link-time registry plus `extra`.
///
/// # Errors
/// Invalid or duplicate registrations, each with its source.
pub fn full_registry(link_time: &Registry, extra: ExtraSources) -> anyhow::Result<Registry> {
    let mut builder = Registry::builder();
    for entry in link_time.entries() {
        builder = builder.add_static(entry.registration);
    }
    for (library, registration) in extra.dynamic {
        builder = builder.add_dynamic(library, registration);
    }
    for (name, registration) in extra.proxies {
        builder = builder.add_proxy(name, registration);
    }
    builder.build().map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow::anyhow!("invalid plugin registrations:\n{}", lines.join("\n"))
    })
}

/// The built-in plugins this build does not carry, each with the feature that adds it.
pub fn left_out_plugins(registry: &Registry) -> Vec<(String, String)> {
    plinth_builtin_plugins::FEATURE_PLUGINS
        .iter()
        .filter(|(_, uri)| registry.get(uri).is_none())
        .map(|(feature, uri)| {
            (
                uri.to_string(),
                format!("enable feature `{feature}` of plinthd"),
            )
        })
        .collect()
}

/// Loads the config named by the options (or the default file if it exists, or the embedded
/// defaults), applies the command-line overrides, runs `before_plugins` on the result (the
/// daemon starts logging there, so that the plugin loader's lines are not lost), adds the
/// registrations the config brings (proxies, plugin libraries) and checks the config against
/// them all.
///
/// # Errors
/// Any config error, with file, line and column.
pub fn load_config(
    options: &Options,
    link_time: &Registry,
    before_plugins: impl FnOnce(&plinth_core::config::Config),
) -> anyhow::Result<(Registry, ResolvedConfig)> {
    let registry = link_time;
    let defaults = Defaults::for_current_user();
    let loader = ConfigLoader::new(registry).with_base(defaults.config());
    let path = match &options.config {
        Some(path) => Some(path.clone()),
        None => Some(defaults.config_file.clone()).filter(|p| p.exists()),
    };
    let mut loaded = match &path {
        Some(path) => loader.load(path)?,
        None => loader.defaults(),
    };
    let config = loaded.config_mut();
    if let Some(address) = &options.address {
        config.grpc.address = address.clone();
    }
    if let Some(root) = &options.root {
        config.root = root.clone();
    }
    if let Some(state) = &options.state {
        config.state = state.clone();
    }
    if let Some(level) = &options.log_level {
        // Checked here, so that a bad flag is not blamed on the file's `[debug]` line.
        let levels = plinth_core::config::DebugConfig::LEVELS;
        if !levels.contains(&level.to_ascii_lowercase().as_str()) {
            bail!(
                "--log-level {level:?} is not a log level: use {}",
                levels.join(", ")
            );
        }
        config.debug.level = level.clone();
    }
    before_plugins(loaded.config());
    let full = full_registry(registry, extra_sources(loaded.config())?)?;
    let resolved = loaded
        .with_left_out(left_out_plugins(&full))
        .with_not_provided(plinth_builtin_plugins::containerd::not_provided())
        .resolve(&full, options.strict)?;
    if resolved.config.root.is_relative() || resolved.config.state.is_relative() {
        bail!(
            "root ({}) and state ({}) must be absolute paths",
            resolved.config.root.display(),
            resolved.config.state.display()
        );
    }
    Ok((full, resolved))
}

/// Registry, config and graph.
///
/// # Errors
/// As [`registry`] and [`load_config`], and dependency cycles.
pub fn prepare(options: &Options) -> anyhow::Result<Prepared> {
    prepare_then(options, |_| {})
}

/// As [`prepare`], with `before_plugins` run as [`load_config`] runs it.
///
/// # Errors
/// As [`prepare`].
pub fn prepare_then(
    options: &Options,
    before_plugins: impl FnOnce(&plinth_core::config::Config),
) -> anyhow::Result<Prepared> {
    let (registry, config) = load_config(options, &registry()?, before_plugins)?;
    let registrations: Vec<Registration> = registry.registrations().copied().collect();
    let graph =
        PluginGraph::build(&registrations, &config.disable_filter()).context("ordering plugins")?;
    Ok(Prepared {
        options: options.clone(),
        registry,
        config,
        registrations,
        graph,
    })
}

/// The longest path a unix socket address can hold (`sun_path` is 108 bytes on Linux, one of
/// them the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Every check a start makes before it creates anything or initialises a plugin, so that
/// `config check` refuses exactly what a start would refuse this early: required plugins
/// registered and enabled, root and state apart and usable as directories, socket paths
/// (the daemon's and each proxy target's) short enough for a unix socket and not taken by
/// something that is not a socket. (Whether another daemon holds the socket or the root is
/// left to the start: a running daemon is no reason to call its config wrong.)
///
/// # Errors
/// The first check that fails, saying what to change.
pub fn check_startable(prepared: &Prepared) -> anyhow::Result<()> {
    let config = &prepared.config.config;
    plinth_core::check_required(
        &prepared.registry,
        &prepared.graph,
        &config.required_plugins,
    )?;
    let (root, state) = (&config.root, &config.state);
    if root == state {
        bail!(
            "root and state are the same directory ({}): give each its own, as containerd requires",
            root.display()
        );
    }
    for (inner, inner_name, outer, outer_name) in [
        (root, "root", state, "state"),
        (state, "state", root, "root"),
    ] {
        if inner.starts_with(outer) {
            bail!(
                "{inner_name} ({}) is inside {outer_name} ({}): give each a directory of its own",
                inner.display(),
                outer.display()
            );
        }
    }
    for (path, key) in [(root, "root"), (state, "state")] {
        check_directory(path, key)?;
    }
    let mut sockets = vec![(
        crate::paths::socket_path(&config.grpc.address),
        "grpc.address (or --address)".to_string(),
    )];
    sockets.extend(
        proxy_target_sockets(prepared)
            .into_iter()
            .map(|(uri, path)| (path, format!("the socket of {uri}"))),
    );
    for (path, what) in sockets {
        check_socket_path(&path, &what)?;
    }
    Ok(())
}

/// `path` is a directory, or can become one: its nearest existing ancestor is a directory.
fn check_directory(path: &std::path::Path, key: &str) -> anyhow::Result<()> {
    let mut existing = Some(path);
    while let Some(candidate) = existing {
        match std::fs::metadata(candidate) {
            Ok(metadata) if metadata.is_dir() => return Ok(()),
            Ok(_) if candidate == path => bail!(
                "{key} {} exists and is not a directory: remove it or choose another {key}",
                path.display()
            ),
            Ok(_) => bail!(
                "{key} {} cannot be created: {} is not a directory",
                path.display(),
                candidate.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => existing = candidate.parent(),
            Err(e) => {
                return Err(e).with_context(|| format!("checking {key} {}", path.display()));
            }
        }
    }
    Ok(())
}

/// `path` fits in a unix socket address and is free or a socket.
fn check_socket_path(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::FileTypeExt as _;
    let length = path.as_os_str().as_bytes().len();
    if length > MAX_SOCKET_PATH {
        bail!(
            "{what} {} is {length} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH}: choose a shorter one",
            path.display()
        );
    }
    if path.is_relative() {
        bail!(
            "{what} {} is relative: give an absolute path",
            path.display()
        );
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            bail!(
                "{what} {} exists and is not a socket: remove it or choose another path",
                path.display()
            );
        }
    }
    Ok(())
}

/// The sockets the enabled proxy-target plugins will serve on, by URI.
fn proxy_target_sockets(prepared: &Prepared) -> Vec<(String, PathBuf)> {
    #[cfg(feature = "proxy")]
    {
        prepared
            .graph
            .order()
            .iter()
            .filter_map(|&index| {
                let uri = prepared.registry.entries()[index].uri();
                let config = prepared.config.plugin_configs.get(&uri)?;
                plinth_builtin_plugins::proxy::target::socket_of(config.as_ref())
                    .map(|path| (uri, path))
            })
            .collect()
    }
    #[cfg(not(feature = "proxy"))]
    {
        let _ = prepared;
        Vec::new()
    }
}
