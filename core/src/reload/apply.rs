//! Applying a [`Plan`]: the next generation is built beside the live one ([`stage`]), put in
//! its place in one step ([`Staged::commit`]), and what it replaced is closed once the calls
//! holding it have finished ([`Retired::close`]).
//!
//! All or nothing: [`stage`] touches nothing the live set holds until every step has
//! succeeded. A replacement or a newly started plugin that fails, a required plugin that is
//! not ok, or a reconfigure hook that refuses makes it close what it built, put back the
//! configs of the hooks that had already taken the new one, and report every failure.
//!
//! ```
//! use plinth_core::config::Config;
//! use plinth_core::reload::{Generation, plan, stage};
//! use plinth_core::{InitContext, InitError, InitOptions, Instance, PluginGraph, Registration, Registry, init_plugins};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! fn init(_: &mut InitContext) -> Result<Instance, InitError> { Ok(Instance::new(Arc::new(7_u32))) }
//! let registry = Registry::builder()
//!     .add_static(Registration::new("io.example.store.v1", "disk", init))
//!     .build()
//!     .unwrap();
//! let regs: Vec<Registration> = registry.entries().iter().map(|e| e.registration).collect();
//! let graph = PluginGraph::build(&regs, &Default::default()).unwrap();
//! let live = init_plugins(&registry, &graph, InitOptions::default()).unwrap();
//!
//! let mut next = Config::default();
//! next.disabled_plugins.push("io.example.store.v1.disk".into());
//! let plan = plan(&Generation::new(&registry, &Config::default()), &Generation::new(&registry, &next)).unwrap();
//! let retired = stage(&live, &plan, InitOptions::default()).unwrap().commit();
//! assert_eq!(live.generation(), 2);
//! assert!(live.get_single::<u32>("io.example.store.v1").is_err());
//! assert!(retired.close(Duration::from_secs(1)).failures.is_empty());
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Action, Plan};
use crate::init::{BoxError, InitOptions, Initialiser, Plugin, Set, Status, close_plugin};
use crate::registration::AnyConfig;

/// One step of a plan that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// The plugin.
    pub uri: String,
    /// What the step was to do.
    pub action: Action,
    /// Why it failed, with its causes.
    pub cause: String,
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.action, self.uri, self.cause)
    }
}

/// A reload that was not applied; the running set is exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the reload changed nothing, as {} of its steps failed: {}; fix the config and reload again",
    .failures.len(),
    .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
)]
pub struct ApplyError {
    /// Every step that failed, in plan order.
    pub failures: Vec<StepFailure>,
}

/// A next generation, built and ready to replace the live one.
#[must_use = "a staged generation changes nothing until it is committed"]
pub struct Staged {
    live: Set,
    next: Set,
    built: Vec<Arc<Plugin>>,
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged")
            .field("generation", &self.next.generation())
            .field(
                "built",
                &self.built.iter().map(|p| p.uri()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a committed reload replaced: the old instances, to be closed once nothing holds
/// them.
#[must_use = "retired instances are closed by `Retired::close`"]
pub struct Retired {
    plugins: Vec<Arc<Plugin>>,
}

impl fmt::Debug for Retired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.plugins.iter().map(|p| p.uri()))
            .finish()
    }
}

/// How closing the retired instances went.
#[derive(Debug, Default)]
pub struct Closed {
    /// The plugins closed, in the order they were.
    pub closed: Vec<String>,
    /// Plugins still held (by a call that outlived the wait) when they were closed anyway.
    pub still_in_use: Vec<String>,
    /// Close hooks that failed, with their errors.
    pub failures: Vec<(String, BoxError)>,
}

/// Builds the generation `plan` leads to beside `live`, with `options` as the new config's
/// init settings: carries every untouched plugin over (the same instance), initialises what
/// restarts or starts (in the new init order, so each replacement's lookups see the
/// replacements before it), and runs the reconfigure hooks once every init has succeeded.
/// Nothing the live set holds changes until [`Staged::commit`].
///
/// # Errors
/// Every step that failed: an init that failed, a replacement that skipped where the running
/// instance is ok, a required plugin (`options.required`) that is not ok, a reconfigure hook
/// that refused. What was built is closed, and hooks that took the new config are given the
/// running one back, before it returns.
pub fn stage(live: &Set, plan: &Plan, options: InitOptions) -> Result<Staged, ApplyError> {
    let running: HashMap<String, Arc<Plugin>> = live
        .plugins()
        .into_iter()
        .map(|p| (p.uri().to_string(), p))
        .collect();
    let actions: HashMap<&str, Action> = plan
        .steps
        .iter()
        .map(|s| (s.uri.as_str(), s.action))
        .collect();
    let required: BTreeSet<String> = options.required.iter().cloned().collect();
    let next = live.next_generation();
    let mut initialiser = Initialiser::new(options);
    let mut built: Vec<Arc<Plugin>> = Vec::new();
    let mut failures: Vec<StepFailure> = Vec::new();
    // (running record, new config, running config) of each plugin to reconfigure.
    let mut hooks: Vec<(Arc<Plugin>, AnyConfig, Option<AnyConfig>)> = Vec::new();

    for &index in &plan.next_disabled {
        let (registration, source) = &plan.next[index];
        match running.get(&registration.uri()) {
            Some(plugin) if matches!(plugin.status(), Status::Disabled) => {
                next.push_shared(plugin.clone());
            }
            _ => next.push_shared(Arc::new(Plugin::disabled(*registration, source.clone()))),
        }
    }
    for &index in &plan.next_order {
        let (registration, source) = &plan.next[index];
        let uri = registration.uri();
        let current = running
            .get(&uri)
            .filter(|p| !matches!(p.status(), Status::Disabled));
        match (actions.get(uri.as_str()).copied(), current) {
            (None, Some(plugin)) => next.push_shared(plugin.clone()),
            (Some(Action::Reconfigure), Some(plugin)) if plugin.status().is_ok() => {
                match initialiser.config_for(registration) {
                    Ok(Some(config)) => {
                        let old = match plugin.config() {
                            Some(old) => Some(old.clone()),
                            None => initialiser.defaults_for(registration),
                        };
                        hooks.push((plugin.clone(), config, old));
                        next.push_shared(Arc::new(plugin.with_config(initialiser.given(&uri))));
                    }
                    Ok(None) => next.push_shared(plugin.clone()),
                    Err(error) => failures.push(StepFailure {
                        uri,
                        action: Action::Reconfigure,
                        cause: error.to_string(),
                    }),
                }
            }
            (action, current) => {
                let action = action.unwrap_or(Action::Start);
                let plugin = Arc::new(initialiser.init(*registration, source, &next, live));
                let was_ok = current.is_some_and(|p| p.status().is_ok());
                let cause = match plugin.status() {
                    Status::Failed(failure) => Some(failure.to_string()),
                    Status::Skipped(reason) if was_ok => Some(format!(
                        "the replacement skipped itself ({reason}) where the running instance is ok"
                    )),
                    status if !status.is_ok() && required.contains(&uri) => {
                        Some(format!("it is in required_plugins and ended {status}"))
                    }
                    _ => None,
                };
                if let Some(cause) = cause {
                    failures.push(StepFailure { uri, action, cause });
                }
                built.push(plugin.clone());
                next.push_shared(plugin);
            }
        }
    }

    if failures.is_empty() {
        for (done, (plugin, config, _)) in hooks.iter().enumerate() {
            let Some(hook) = plugin.registration().reconfigure_hook() else {
                continue;
            };
            let Some(instance) = plugin.shared_instance() else {
                continue;
            };
            if let Err(error) = hook(instance, config) {
                failures.push(StepFailure {
                    uri: plugin.uri().to_string(),
                    action: Action::Reconfigure,
                    cause: error.to_string(),
                });
                revert(&hooks[..done]);
                break;
            }
        }
    }
    if !failures.is_empty() {
        for plugin in built.into_iter().rev() {
            for (uri, error) in close_plugin(plugin) {
                tracing::warn!(uri, %error, "closing a replacement of a refused reload failed");
            }
        }
        return Err(ApplyError { failures });
    }
    Ok(Staged {
        live: live.clone(),
        next,
        built,
    })
}

/// Gives hooks that took a new config their running one back (a reload that is refused
/// after they ran). A hook that refuses its old config is logged: nothing else can be done.
fn revert(applied: &[(Arc<Plugin>, AnyConfig, Option<AnyConfig>)]) {
    for (plugin, _, old) in applied.iter().rev() {
        let (Some(hook), Some(instance), Some(old)) = (
            plugin.registration().reconfigure_hook(),
            plugin.shared_instance(),
            old,
        ) else {
            continue;
        };
        if let Err(error) = hook(instance, old) {
            tracing::error!(uri = plugin.uri(), %error, "putting the running config back failed");
        }
    }
}

impl Staged {
    /// The plugins this reload initialised (restarted or started), in init order.
    pub fn built(&self) -> &[Arc<Plugin>] {
        &self.built
    }

    /// The generation the commit will make live.
    pub fn generation(&self) -> u64 {
        self.next.generation()
    }

    /// Makes the staged generation live: every holder of the live set sees it at once. Returns
    /// the instances it replaced, to be closed with [`Retired::close`] once the host has
    /// stopped handing them out (e.g. swapped its gRPC services).
    pub fn commit(self) -> Retired {
        let old = self.live.replace(&self.next);
        let kept: HashSet<*const crate::init::Instance> = self
            .live
            .plugins()
            .iter()
            .filter_map(|p| p.shared_instance().map(Arc::as_ptr))
            .collect();
        let plugins = old
            .plugins
            .into_iter()
            .filter(|p| {
                p.shared_instance()
                    .is_some_and(|i| !kept.contains(&Arc::as_ptr(i)))
            })
            .collect();
        tracing::info!(
            generation = self.live.generation(),
            "config generation applied"
        );
        Retired { plugins }
    }
}

/// Retired instances that were never closed (a host that dropped them, a panic) are closed
/// here, at once, so that their close hooks still run.
impl Drop for Retired {
    fn drop(&mut self) {
        for plugin in std::mem::take(&mut self.plugins).into_iter().rev() {
            for (uri, error) in close_plugin(plugin) {
                tracing::warn!(uri, %error, "closing a retired plugin failed");
            }
        }
    }
}

impl Retired {
    /// The plugins whose old instances are retired, in their init order.
    pub fn uris(&self) -> Vec<&str> {
        self.plugins.iter().map(|p| p.uri()).collect()
    }

    /// Closes the retired instances, last initialised first. Each is closed once nothing but
    /// itself holds it (see [`Instance::in_use`](crate::Instance::in_use)): the calls that
    /// hold it have finished, and so have the retired dependents closed before it. `drain`
    /// bounds the whole wait; what is still held then is closed anyway, and named.
    pub fn close(mut self, drain: Duration) -> Closed {
        let deadline = Instant::now() + drain;
        let mut closed = Closed::default();
        for plugin in std::mem::take(&mut self.plugins).into_iter().rev() {
            let uri = plugin.uri().to_string();
            let held = plugin.shared_instance().is_some_and(|instance| {
                let mut pause = Duration::from_micros(100);
                while instance.in_use() {
                    if Instant::now() >= deadline {
                        return true;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                false
            });
            if held {
                tracing::warn!(
                    uri,
                    ?drain,
                    "still in use after the drain time-out; closing it anyway"
                );
                closed.still_in_use.push(uri.clone());
            }
            closed.failures.extend(close_plugin(plugin));
            closed.closed.push(uri);
        }
        closed
    }
}
