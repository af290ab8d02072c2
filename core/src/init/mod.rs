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
pub use set::{LookupError, Set};

use std::collections::{BTreeSet, HashMap};
use std::error::Error as StdError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{StartupError, hint};
use crate::graph::PluginGraph;
use crate::registration::AnyConfig;
use crate::registry::Registry;
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
    let required: BTreeSet<&str> = options.required.iter().map(String::as_str).collect();

    let set = Set::default();
    for &index in graph.disabled() {
        tracing::info!(uri = %uris[index], "plugin disabled");
        set.push(Plugin {
            registration: entries[index].registration,
            source: entries[index].source.clone(),
            uri: uris[index].clone(),
            status: Status::Disabled,
            instance: None,
            meta: Meta::default(),
            config: None,
            init_time: Duration::ZERO,
        });
    }
    let extensions = Arc::new(options.extensions);
    let mut worker = InitWorker::default();
    for &index in graph.order() {
        let entry = &entries[index];
        let uri = &uris[index];
        let registration = entry.registration;
        let config = match (options.configs.get(uri), registration.config_spec()) {
            (Some(config), _) => Ok(Some(config.clone())),
            (None, Some(spec)) => spec
                .decode(toml::Table::new())
                .map(|d| Some(d.value))
                .map_err(|e| DefaultConfig(e.message)),
            (None, None) => Ok(None),
        };
        let ctx = InitContext {
            registration,
            uri: uri.clone(),
            config: config.as_ref().ok().cloned().flatten(),
            root: options.root.join(uri),
            state: options.state.join(uri),
            grpc_address: options.grpc_address.clone(),
            meta: Meta::default(),
            set: set.clone(),
            visible: set.len(),
            extensions: extensions.clone(),
        };
        let timeout = options
            .timeouts
            .get(uri)
            .copied()
            .or(options.default_timeout);
        let started = Instant::now();
        let (result, meta) = match config {
            Err(error) => (Err(InitError::from(error)), Meta::default()),
            Ok(_) => worker.run(ctx, options.watchdog, timeout),
        };
        let init_time = started.elapsed();
        let (status, instance) = match result {
            Ok(instance) => (Status::Ok, Some(instance)),
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
        let outcome = (!status.is_ok()).then(|| status.to_string());
        set.push(Plugin {
            registration,
            source: entry.source.clone(),
            uri: uri.clone(),
            status,
            instance,
            meta,
            config: options.configs.get(uri).cloned(),
            init_time,
        });
        if let Some(outcome) = outcome.filter(|_| required.contains(uri.as_str())) {
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
