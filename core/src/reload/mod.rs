//! Live reconfiguration: planning what a new config would change in a running set of
//! plugins, before anything is changed, and applying the plan (see [`stage`]).
//!
//! [`plan`] compares the running generation (its registry and config) with the next one
//! and says, for each plugin, whether it keeps running untouched, takes its new config in
//! place (its registration has a [`reconfigure`](crate::Registration::reconfigure) hook),
//! restarts, starts or stops, and why. A plugin restarts when its config section changes
//! (and it has no hook), when its proxy's address or type changes, and when anything it
//! requires restarts, starts or stops: a running instance holds the handles its init looked
//! up, so it is re-initialised to see the new ones (`"*"` requirers whenever any other plugin
//! changes). Settings that only a restart of the whole process can change (root, state, the
//! gRPC address) refuse the plan; so does a cycle in the new graph.
//!
//! ```
//! use plinth_core::config::Config;
//! use plinth_core::reload::{Action, Generation, plan};
//! use plinth_core::{InitContext, InitError, Instance, Registration, Registry};
//!
//! fn init(_: &mut InitContext) -> Result<Instance, InitError> { Ok(Instance::none()) }
//! let registry = Registry::builder()
//!     .add_static(Registration::new("io.example.store.v1", "disk", init))
//!     .add_static(Registration::new("io.example.api.v1", "web", init).requires(&["io.example.store.v1"]))
//!     .build()
//!     .unwrap();
//! let running = Config::default();
//! let mut next = Config::default();
//! next.plugins.insert("io.example.store.v1.disk".into(), toml::toml! { cache = 10 }.into());
//! let plan = plan(&Generation::new(&registry, &running), &Generation::new(&registry, &next)).unwrap();
//! let actions: Vec<_> = plan.steps().iter().map(|s| (s.uri.as_str(), s.action)).collect();
//! assert_eq!(actions, [("io.example.store.v1.disk", Action::Restart), ("io.example.api.v1.web", Action::Restart)]);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::config::Config;
use crate::error::CycleError;
use crate::graph::{DisableFilter, PluginGraph};
use crate::registration::{REQUIRES_ALL, Registration};
use crate::registry::{Registry, Source};

mod apply;

pub use apply::{ApplyError, Closed, Retired, Staged, StepFailure, stage};

/// One generation of a host's plugins: the registry it was built from and its config (as
/// loaded and resolved).
#[derive(Debug, Clone, Copy)]
pub struct Generation<'a> {
    registry: &'a Registry,
    config: &'a Config,
}

impl<'a> Generation<'a> {
    /// A generation of `registry` under `config`.
    pub fn new(registry: &'a Registry, config: &'a Config) -> Self {
        Generation { registry, config }
    }
}

/// What a reload does to one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Its reconfigure hook takes the new config section; the instance stays.
    Reconfigure,
    /// A replacement is initialised; the old instance is closed once it is live.
    Restart,
    /// Newly enabled, added or loaded: initialised.
    Start,
    /// Disabled or removed: closed.
    Stop,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Reconfigure => "reconfigure",
            Action::Restart => "restart",
            Action::Start => "start",
            Action::Stop => "stop",
        })
    }
}

/// One plugin's part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The plugin.
    pub uri: String,
    /// What happens to it.
    pub action: Action,
    /// Why, one reason per cause, e.g. `config section changed`.
    pub reasons: Vec<String>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.action,
            self.uri,
            self.reasons.join("; ")
        )
    }
}

/// What a reload would do: its steps in the order they are applied (stops first, last
/// started first; then the rest in the new init order), and notes on what it leaves alone.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    steps: Vec<Step>,
    notes: Vec<String>,
    /// The next generation's registrations (with what libraries that disappeared had
    /// loaded), and its disabled plugins and init order as indices into them.
    next: Vec<(Registration, Source)>,
    next_disabled: Vec<usize>,
    next_order: Vec<usize>,
}

impl Plan {
    /// The steps, in the order they are applied.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// What the reload leaves as it is and the user may not expect, e.g. a plugin library
    /// that is gone from the plugin directory but stays loaded.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Adds a note (a host's own, e.g. a setting it applies only at the next start).
    pub fn add_note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Whether the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            writeln!(f, "nothing changes")?;
        }
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}

/// A setting that only a restart of the process can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly {
    /// The setting, e.g. `root` or `grpc.address`.
    pub setting: &'static str,
    /// Its running value.
    pub running: String,
    /// The value the new config asks for.
    pub wanted: String,
}

impl fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` cannot change without a restart (running: {:?}, new config: {:?})",
            self.setting, self.running, self.wanted
        )
    }
}

/// Why a reload cannot be planned; a refused reload changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Settings that need a restart of the process changed.
    #[error(
        "{}; nothing was applied: put the running values back to reload, or restart the daemon to apply them",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    RestartOnly(Vec<RestartOnly>),
    /// The new set of plugins has a cycle of requirements.
    #[error("the new config's plugins {0}; nothing was applied")]
    Cycle(#[from] CycleError),
}

/// The plan that takes the `running` generation to the `next`.
///
/// # Errors
/// [`PlanError::RestartOnly`] naming every changed setting that needs a restart;
/// [`PlanError::Cycle`] when the new plugins require each other in a cycle.
pub fn plan(running: &Generation<'_>, next: &Generation<'_>) -> Result<Plan, PlanError> {
    let restart_only = restart_only_changes(running.config, next.config);
    if !restart_only.is_empty() {
        return Err(PlanError::RestartOnly(restart_only));
    }
    let mut notes = Vec::new();

    let running_regs: Vec<Registration> = running
        .registry
        .entries()
        .iter()
        .map(|e| e.registration)
        .collect();
    let running_graph = PluginGraph::build(&running_regs, &filter(running.config))?;
    let running_sources: HashMap<String, &Source> = running
        .registry
        .entries()
        .iter()
        .map(|e| (e.uri(), &e.source))
        .collect();

    // The next set: the new registry, plus what libraries that disappeared had loaded
    // (a library is never unloaded, so its plugins stay as they are).
    let mut next_entries: Vec<(Registration, Source)> = next
        .registry
        .entries()
        .iter()
        .map(|e| (e.registration, e.source.clone()))
        .collect();
    let next_uris: BTreeSet<String> = next_entries.iter().map(|(r, _)| r.uri()).collect();
    for entry in running.registry.entries() {
        if let Source::Dynamic { library } = &entry.source
            && !next_uris.contains(&entry.uri())
        {
            notes.push(format!(
                "{} came from {}, which is gone from the plugin directory; it stays loaded \
                 (libraries are never unloaded): restart the daemon to drop it",
                entry.uri(),
                library.display()
            ));
            next_entries.push((entry.registration, entry.source.clone()));
        }
    }
    let next_regs: Vec<Registration> = next_entries.iter().map(|(r, _)| *r).collect();
    let next_graph = PluginGraph::build(&next_regs, &filter(next.config))?;

    let running_enabled: BTreeMap<String, usize> = running_graph
        .order()
        .iter()
        .map(|&i| (running_regs[i].uri(), i))
        .collect();
    let next_enabled: BTreeSet<String> = next_graph
        .order()
        .iter()
        .map(|&i| next_regs[i].uri())
        .collect();

    let mut steps = Vec::new();
    // What changes, by type: a plugin requiring one of these types is re-initialised.
    let mut changed_types: BTreeMap<&str, String> = BTreeMap::new();
    let mut any_changed: Option<String> = None;

    for &index in running_graph.order().iter().rev() {
        let registration = &running_regs[index];
        let uri = registration.uri();
        if next_enabled.contains(&uri) {
            continue;
        }
        let reason = if !next_uris.contains(&uri) {
            match running_sources.get(&uri) {
                Some(Source::Proxy { name }) => format!("[proxy_plugins.{name}] was removed"),
                _ => "no longer registered".to_string(),
            }
        } else {
            "disabled".to_string()
        };
        changed_types
            .entry(registration.plugin_type())
            .or_insert_with(|| format!("{uri} stops"));
        any_changed.get_or_insert_with(|| format!("{uri} stops"));
        steps.push(Step {
            uri,
            action: Action::Stop,
            reasons: vec![reason],
        });
    }

    for &index in next_graph.order() {
        let registration = &next_regs[index];
        let source = &next_entries[index].1;
        let uri = registration.uri();
        let mut reasons = Vec::new();
        let mut action = None;
        if let Some(&old_index) = running_enabled.get(&uri) {
            let old = &running_regs[old_index];
            if section(old, running.config) != section(registration, next.config) {
                if registration.reconfigure_hook().is_some() {
                    action = Some(Action::Reconfigure);
                } else {
                    action = Some(Action::Restart);
                }
                reasons.push("config section changed".to_string());
            }
            if let Source::Proxy { name } = source {
                let before = running.config.proxy_plugins.get(name);
                let after = next.config.proxy_plugins.get(name);
                if let (Some(before), Some(after)) = (before, after)
                    && before != after
                {
                    action = Some(Action::Restart);
                    reasons.push(if before.address == after.address {
                        format!("[proxy_plugins.{name}] changed")
                    } else {
                        format!(
                            "[proxy_plugins.{name}] address changed from {} to {}",
                            before.address, after.address
                        )
                    });
                }
            }
            for required in registration.required_types() {
                let cause = if *required == REQUIRES_ALL {
                    any_changed.clone()
                } else {
                    changed_types.get(required).cloned()
                };
                if let Some(cause) = cause {
                    action = Some(Action::Restart);
                    reasons.push(format!("requires {required}, and {cause}"));
                }
            }
        } else {
            action = Some(Action::Start);
            reasons.push(if running_sources.contains_key(&uri) {
                "enabled".to_string()
            } else {
                match source {
                    Source::Static => "newly registered".to_string(),
                    Source::Dynamic { library } => format!("loaded from {}", library.display()),
                    Source::Proxy { name } => format!("[proxy_plugins.{name}] was added"),
                }
            });
        }
        let Some(action) = action else { continue };
        if matches!(action, Action::Restart | Action::Start) {
            let verb = if action == Action::Start {
                "starts"
            } else {
                "restarts"
            };
            changed_types
                .entry(registration.plugin_type())
                .or_insert_with(|| format!("{uri} {verb}"));
            any_changed.get_or_insert_with(|| format!("{uri} {verb}"));
        }
        steps.push(Step {
            uri,
            action,
            reasons,
        });
    }
    Ok(Plan {
        steps,
        notes,
        next_disabled: next_graph.disabled().to_vec(),
        next_order: next_graph.order().to_vec(),
        next: next_entries,
    })
}

fn filter(config: &Config) -> DisableFilter {
    DisableFilter::by_uri(config.disabled_plugins.iter().cloned())
}

/// A plugin's effective config section: its defaults with the config's section over them,
/// so that writing out a default value is no change.
fn section(registration: &Registration, config: &Config) -> Option<toml::Table> {
    let given = config
        .plugins
        .get(&registration.uri())
        .and_then(toml::Value::as_table)
        .cloned();
    let Some(spec) = registration.config_spec() else {
        return given;
    };
    let mut effective = spec.defaults().unwrap_or_default();
    for (key, value) in given.unwrap_or_default() {
        effective.insert(key, value);
    }
    Some(effective)
}

fn restart_only_changes(running: &Config, next: &Config) -> Vec<RestartOnly> {
    let mut out = Vec::new();
    let mut check = |setting: &'static str, running: String, wanted: String| {
        if running != wanted {
            out.push(RestartOnly {
                setting,
                running,
                wanted,
            });
        }
    };
    check(
        "root",
        running.root.display().to_string(),
        next.root.display().to_string(),
    );
    check(
        "state",
        running.state.display().to_string(),
        next.state.display().to_string(),
    );
    check(
        "grpc.address",
        running.grpc.address.clone(),
        next.grpc.address.clone(),
    );
    out
}
