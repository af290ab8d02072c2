//! The init driver: runs each plugin's init in graph order with an [`InitContext`], records
//! its outcome in the plugin [`Set`], and closes what was opened in reverse order.
//!
//! The parts: [`InitError`] (`error`), [`Instance`] and the plugin records (`instance`), the
//! plugin [`Set`] and its lookups (`set`), the [`InitContext`] a plugin sees (`context`), the
//! driver ([`init_plugins`], here) and the thread it runs inits on (`worker`).

mod context;
mod error;
mod instance;
mod set;
mod worker;

pub use context::{Extensions, InitContext};
pub use error::{BoxError, InitError};
pub use instance::{Failure, Instance, Meta, Plugin, Status};
pub(crate) use set::close_plugin;
pub use set::{LookupError, Set};

use std::collections::{BTreeSet, HashMap};
use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{StartupError, hint};
use crate::graph::PluginGraph;
use crate::registration::AnyConfig;
use crate::registry::{Registry, Source};
use worker::InitWorker;

/// Settings of one init run.
#[derive(Debug)]
pub struct InitOptions {
    /// The daemon's root directory; each plugin gets `<root>/<uri>`.
    pub root: PathBuf,
    /// The daemon's state directory; each plugin gets `<state>/<uri>`.
    pub state: PathBuf,
    /// The gRPC address the daemon listens on.
    pub grpc_address: String,
    /// URIs that must end ok, or start-up fails.
    pub required: Vec<String>,
    /// Decoded configs by URI; plugins with a config type that have no entry get defaults.
    pub configs: HashMap<String, AnyConfig>,
    /// How long a plugin may initialise before a warning is logged (and again each period).
    pub watchdog: Duration,
    /// Init time-outs by URI: a plugin still initialising then fails, and start-up goes on.
    pub timeouts: HashMap<String, Duration>,
    /// A time-out for every plugin without its own entry in `timeouts`.
    pub default_timeout: Option<Duration>,
    /// Values handed to every plugin.
    pub extensions: Extensions,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            root: PathBuf::from("/var/lib/plinth"),
            state: PathBuf::from("/run/plinth"),
            grpc_address: String::new(),
            required: Vec::new(),
            configs: HashMap::new(),
            watchdog: Duration::from_secs(5),
            timeouts: HashMap::new(),
            default_timeout: None,
            extensions: Extensions::new(),
        }
    }
}

/// The init timed out.
#[derive(Debug, thiserror::Error)]
#[error("init did not finish within {0:?}; raise or remove its time-out under [timeouts]")]
struct TimedOut(Duration);

/// The init panicked.
#[derive(Debug, thiserror::Error)]
#[error("init panicked: {0}")]
struct Panicked(String);

/// A config type whose defaults could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("decoding default config: {0}")]
struct DefaultConfig(String);

/// Checks `required` (the config's `required_plugins`) against `registry` and `graph` before
/// anything is initialised: every entry must be registered and enabled. [`init_plugins`]
/// runs it first; a host runs it on its own to validate a config without starting (plinthd's
/// `config check`).
///
/// # Errors
/// The first entry that is not registered ([`StartupError::RequiredMissing`], with a "did you
/// mean" hint) or that the config disables ([`StartupError::RequiredDisabled`]).
pub fn check_required(
    registry: &Registry,
    graph: &PluginGraph,
    required: &[String],
) -> Result<(), StartupError> {
    let entries = registry.entries();
    let uris: Vec<String> = entries.iter().map(|e| e.uri()).collect();
    let disabled: BTreeSet<&str> = graph.disabled().iter().map(|&i| uris[i].as_str()).collect();
    let required: BTreeSet<&str> = required.iter().map(String::as_str).collect();
    for uri in required {
        if disabled.contains(uri) {
            return Err(StartupError::RequiredDisabled {
                uri: uri.to_string(),
            });
        }
        if !uris.iter().any(|u| u == uri) {
            return Err(StartupError::RequiredMissing {
                uri: uri.to_string(),
                hint: hint(uri, uris.iter().map(String::as_str)),
            });
        }
    }
    Ok(())
}

/// Initialises every enabled plugin of `registry` in `graph` order.
///
/// Each init runs off the caller's thread (one init thread serves them all, in turn) so that
/// a hang can be reported (after `options.watchdog`) or cut off (after its time-out: the
/// hung thread is left behind and the next init gets a new one), and a panic becomes a
/// failure. Thread-local state set by one init is seen by the next.
/// Disabled plugins are added to the set first, with status disabled.
///
/// # Errors
/// A required plugin that is missing, disabled, or ends other than ok. Plugins initialised
/// before the error are closed (in reverse order) before it is returned.
pub fn init_plugins(
    registry: &Registry,
    graph: &PluginGraph,
    options: InitOptions,
) -> Result<Set, StartupError> {
    check_required(registry, graph, &options.required)?;
    let entries = registry.entries();
    let uris: Vec<String> = entries.iter().map(|e| e.uri()).collect();
    let required: BTreeSet<String> = options.required.iter().cloned().collect();

    let set = Set::default();
    for &index in graph.disabled() {
        tracing::info!(uri = %uris[index], "plugin disabled");
        set.push(Plugin::disabled(
            entries[index].registration,
            entries[index].source.clone(),
        ));
    }
    let mut initialiser = Initialiser::new(options);
    for &index in graph.order() {
        let entry = &entries[index];
        let uri = &uris[index];
        let plugin = initialiser.init(entry.registration, &entry.source, &set, &set);
        let outcome = (!plugin.status.is_ok()).then(|| plugin.status.to_string());
        set.push(plugin);
        if let Some(outcome) = outcome.filter(|_| required.contains(uri)) {
            for (uri, error) in set.close() {
                tracing::warn!(uri = %uri, %error, "closing plugin failed");
            }
            return Err(StartupError::RequiredNotOk {
                uri: uri.clone(),
                outcome,
            });
        }
    }
    Ok(set)
}

impl Plugin {
    /// The record of a plugin the config disables.
    pub(crate) fn disabled(registration: crate::Registration, source: Source) -> Plugin {
        Plugin {
            registration,
            source,
            uri: registration.uri(),
            status: Status::Disabled,
            instance: None,
            meta: Meta::default(),
            config: None,
            init_time: Duration::ZERO,
            started_at: SystemTime::now(),
        }
    }

    /// The same plugin, instance and all, with another config (a reload's reconfigure step).
    pub(crate) fn with_config(&self, config: Option<AnyConfig>) -> Plugin {
        Plugin {
            registration: self.registration,
            source: self.source.clone(),
            uri: self.uri.clone(),
            status: self.status.clone(),
            instance: self.instance.clone(),
            meta: self.meta.clone(),
            config,
            init_time: self.init_time,
            started_at: self.started_at,
        }
    }

    /// The instance, shared (for a reload that must tell what it carried over).
    pub(crate) fn shared_instance(&self) -> Option<&Arc<Instance>> {
        self.instance.as_ref()
    }
}

/// Runs inits: what the inits of one start-up (or one reload) share, and the thread they
/// run on.
pub(crate) struct Initialiser {
    worker: InitWorker,
    root: PathBuf,
    state: PathBuf,
    grpc_address: String,
    configs: HashMap<String, AnyConfig>,
    watchdog: Duration,
    timeouts: HashMap<String, Duration>,
    default_timeout: Option<Duration>,
    extensions: Arc<Extensions>,
}

impl Initialiser {
    pub(crate) fn new(options: InitOptions) -> Initialiser {
        Initialiser {
            worker: InitWorker::default(),
            root: options.root,
            state: options.state,
            grpc_address: options.grpc_address,
            configs: options.configs,
            watchdog: options.watchdog,
            timeouts: options.timeouts,
            default_timeout: options.default_timeout,
            extensions: Arc::new(options.extensions),
        }
    }

    /// The decoded config for `registration`: the given one, else its defaults (`None` for
    /// a plugin without a config type).
    pub(crate) fn config_for(
        &self,
        registration: &crate::Registration,
    ) -> Result<Option<AnyConfig>, BoxError> {
        match (
            self.configs.get(&registration.uri()),
            registration.config_spec(),
        ) {
            (Some(config), _) => Ok(Some(config.clone())),
            (None, Some(spec)) => spec
                .decode(toml::Table::new())
                .map(|d| Some(d.value))
                .map_err(|e| DefaultConfig(e.message).into()),
            (None, None) => Ok(None),
        }
    }

    /// The config given for `uri` (none when it runs on its defaults).
    pub(crate) fn given(&self, uri: &str) -> Option<AnyConfig> {
        self.configs.get(uri).cloned()
    }

    /// The defaults of `registration`'s config type, decoded (`None` without one, or when
    /// they do not decode).
    pub(crate) fn defaults_for(&self, registration: &crate::Registration) -> Option<AnyConfig> {
        let spec = registration.config_spec()?;
        spec.decode(toml::Table::new()).ok().map(|d| d.value)
    }

    /// Initialises one plugin, whose lookups see what `set` holds so far; `live` is the set
    /// it is shown as the whole set (see [`InitContext::plugin_set`]).
    pub(crate) fn init(
        &mut self,
        registration: crate::Registration,
        source: &Source,
        set: &Set,
        live: &Set,
    ) -> Plugin {
        let uri = registration.uri();
        let config = self.config_for(&registration);
        let ctx = InitContext {
            registration,
            uri: uri.clone(),
            config: config.as_ref().ok().cloned().flatten(),
            root: self.root.join(&uri),
            state: self.state.join(&uri),
            grpc_address: self.grpc_address.clone(),
            meta: Meta::default(),
            set: set.clone(),
            live: live.clone(),
            visible: set.len(),
            extensions: self.extensions.clone(),
        };
        let timeout = self.timeouts.get(&uri).copied().or(self.default_timeout);
        let started_at = SystemTime::now();
        let started = Instant::now();
        let (result, meta) = match config {
            Err(error) => (Err(InitError::Failed(error)), Meta::default()),
            Ok(_) => self.worker.run(ctx, self.watchdog, timeout),
        };
        let init_time = started.elapsed();
        let (status, instance) = match result {
            Ok(instance) => {
                instance.mark_baseline();
                (Status::Ok, Some(Arc::new(instance)))
            }
            Err(InitError::Skip(reason)) => (Status::Skipped(reason), None),
            Err(InitError::Failed(error)) => {
                let caused_by = culprit_of(error.as_ref());
                (
                    Status::Failed(Failure {
                        error: Arc::from(error),
                        caused_by,
                    }),
                    None,
                )
            }
        };
        match &status {
            Status::Ok => tracing::info!(uri = %uri, ?init_time, "plugin ok"),
            Status::Skipped(reason) => tracing::info!(uri = %uri, %reason, "plugin skipped"),
            Status::Failed(failure) => {
                tracing::warn!(uri = %uri, error = %failure, "plugin failed")
            }
            Status::Disabled => {}
        }
        Plugin {
            registration,
            source: source.clone(),
            config: self.configs.get(&uri).cloned(),
            uri,
            status,
            instance,
            meta,
            init_time,
            started_at,
        }
    }
}

/// The plugin whose failure made a lookup fail, found anywhere in the error chain.
fn culprit_of(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(lookup) = e.downcast_ref::<LookupError>() {
            return lookup.culprit().map(str::to_string);
        }
        current = e.source();
    }
    None
}
