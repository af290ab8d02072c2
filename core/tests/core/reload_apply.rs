//! Applying reload plans to a running set: what is replaced, what is carried over, when the
//! old instances are closed, and that a refused reload changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_core::config::Config;
use plinth_core::init::BoxError;
use plinth_core::registration::AnyConfig;
use plinth_core::reload::{Action, Generation, Plan, plan, stage};
use plinth_core::{
    InitContext, InitError, InitOptions, Instance, PluginGraph, Registration, Registry, Set,
    Status, init_plugins,
};
use serde::{Deserialize, Serialize};

/// What the plugins of a test did, in order ("close io.t.store.v1.disk 1", …).
#[derive(Default)]
struct Journal(Mutex<Vec<String>>);

impl Journal {
    fn add(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Every test plugin's config.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Knob {
    value: u32,
    fail: bool,
    skip: bool,
}

/// Every test plugin's value: its config's `value` at init (or as reconfigured), and the
/// cell of the plugin it requires, if any.
struct Cell {
    value: AtomicU32,
    below: Option<Arc<Cell>>,
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let knob = ctx.config::<Knob>()?;
    if knob.fail {
        return Err(InitError::msg("the knob says fail"));
    }
    if knob.skip {
        return Err(InitError::skip("the knob says skip"));
    }
    let below = match ctx.registration().required_types().first() {
        Some(&"*") | None => None,
        Some(required) => Some(ctx.get_single::<Cell>(required)?),
    };
    let journal = ctx.extension::<Arc<Journal>>().unwrap().clone();
    let uri = ctx.uri().to_string();
    let cell = Arc::new(Cell {
        value: AtomicU32::new(knob.value),
        below,
    });
    let closing = cell.clone();
    Ok(Instance::new(cell)
        .with(Arc::new(ctx.plugin_set()))
        .on_close(move || {
            journal.add(format!(
                "close {uri} {}",
                closing.value.load(Ordering::SeqCst)
            ));
            Ok(())
        }))
}

fn take_in_place(instance: &Instance, config: &AnyConfig) -> Result<(), BoxError> {
    let knob = config.downcast_ref::<Knob>().unwrap();
    if knob.fail {
        return Err("the knob refuses in place".into());
    }
    let cell = instance.get::<Cell>().unwrap();
    cell.value.store(knob.value, Ordering::SeqCst);
    Ok(())
}

const STORE: &str = "io.t.store.v1.disk";
const API: &str = "io.t.api.v1.web";
const LOG: &str = "io.t.level.v1.log";
const AUDIT: &str = "io.t.level.v1.audit";
const EXTRA: &str = "io.t.extra.v1.more";
const ALL: &str = "io.t.all.v1.list";

fn registry() -> Registry {
    let reg = |t: &'static str, id: &'static str| Registration::new(t, id, init).config::<Knob>();
    Registry::builder()
        .add_static(reg("io.t.store.v1", "disk"))
        .add_static(reg("io.t.api.v1", "web").requires(&["io.t.store.v1"]))
        .add_static(reg("io.t.level.v1", "log").reconfigure(take_in_place))
        .add_static(reg("io.t.level.v1", "audit").reconfigure(take_in_place))
        .add_static(reg("io.t.extra.v1", "more"))
        .add_static(reg("io.t.all.v1", "list").requires(&["*"]))
        .build()
        .unwrap()
}

/// The config from TOML; `disabled_plugins` as given.
fn config(text: &str) -> Config {
    toml::from_str(text).unwrap()
}

/// Init options for `config`, with the journal as an extension.
fn options(registry: &Registry, config: &Config, journal: &Arc<Journal>) -> InitOptions {
    let mut configs: HashMap<String, AnyConfig> = HashMap::new();
    for entry in registry.entries() {
        let uri = entry.uri();
        if let (Some(section), Some(spec)) = (
            config.plugins.get(&uri).and_then(toml::Value::as_table),
            entry.registration.config_spec(),
        ) {
            configs.insert(uri, spec.decode(section.clone()).unwrap().value);
        }
    }
    let mut extensions = plinth_core::init::Extensions::new();
    extensions.insert(journal.clone());
    InitOptions {
        configs,
        required: config.required_plugins.clone(),
        extensions,
        ..InitOptions::default()
    }
}

/// A running set of `registry` under `text`, and its journal.
fn start(registry: &Registry, text: &str) -> (Set, Config, Arc<Journal>) {
    let running = config(text);
    let journal = Arc::new(Journal::default());
    let regs: Vec<Registration> = registry.entries().iter().map(|e| e.registration).collect();
    let filter =
        plinth_core::graph::DisableFilter::by_uri(running.disabled_plugins.iter().cloned());
    let graph = PluginGraph::build(&regs, &filter).unwrap();
    let set = init_plugins(registry, &graph, options(registry, &running, &journal)).unwrap();
    (set, running, journal)
}

fn plan_for(registry: &Registry, running: &Config, next: &Config) -> Plan {
    plan(
        &Generation::new(registry, running),
        &Generation::new(registry, next),
    )
    .unwrap()
}

/// Applies the running config with the store's value set to 2: the store, the API over it
/// and the `"*"` requirer restart. The new config, and what the reload retired.
fn restart_store(
    registry: &Registry,
    live: &Set,
    running: &Config,
    journal: &Arc<Journal>,
) -> (Config, plinth_core::reload::Retired) {
    let next = config(&RUNNING.replacen("value = 1", "value = 2", 1));
    let plan = plan_for(registry, running, &next);
    let retired = stage(live, &plan, options(registry, &next, journal))
        .unwrap()
        .commit();
    (next, retired)
}

fn value(set: &Set, uri: &str) -> u32 {
    let (plugin_type, id) = uri.rsplit_once('.').unwrap();
    let cell = set.get_by_id::<Cell>(plugin_type, id).unwrap();
    cell.value.load(Ordering::SeqCst)
}

fn cell(set: &Set, uri: &str) -> Arc<Cell> {
    let (plugin_type, id) = uri.rsplit_once('.').unwrap();
    set.get_by_id::<Cell>(plugin_type, id).unwrap()
}

const RUNNING: &str = r#"
[plugins."io.t.store.v1.disk"]
value = 1
[plugins."io.t.level.v1.log"]
value = 1
[plugins."io.t.level.v1.audit"]
value = 1
"#;

#[test]
fn a_restart_replaces_the_plugin_and_its_dependents_and_keeps_the_rest() {
    let registry = registry();
    let (live, running, journal) = start(&registry, RUNNING);
    let old_store = cell(&live, STORE);
    let old_log = cell(&live, LOG);
    let next = config(&RUNNING.replacen("value = 1", "value = 2", 1));
    let plan = plan_for(&registry, &running, &next);
    let staged = stage(&live, &plan, options(&registry, &next, &journal)).unwrap();
    let built: Vec<&str> = staged.built().iter().map(|p| p.uri()).collect();
    assert_eq!(built, [STORE, API, ALL]);
    assert_eq!(staged.generation(), 2);
    // Nothing is live before the commit.
    assert_eq!((live.generation(), value(&live, STORE)), (1, 1));
    let retired = staged.commit();
    assert_eq!(retired.uris(), [STORE, API, ALL]);
    assert_eq!((live.generation(), value(&live, STORE)), (2, 2));
    // The new API holds the new store; the untouched plugin is the same instance.
    let new_store = cell(&live, STORE);
    assert!(Arc::ptr_eq(
        cell(&live, API).below.as_ref().unwrap(),
        &new_store
    ));
    assert!(Arc::ptr_eq(&cell(&live, LOG), &old_log));
    // The restarted "*" requirer sees the live set, now and after later reloads.
    let seen = live.get_by_id::<Set>("io.t.all.v1", "list").unwrap();
    assert_eq!(seen.generation(), 2);
    // Old instances are closed last first; none of the new ones is.
    drop(old_store);
    let closed = retired.close(Duration::from_secs(60));
    assert_eq!(closed.closed, [ALL, API, STORE]);
    assert!(closed.still_in_use.is_empty() && closed.failures.is_empty());
    assert_eq!(
        journal.lines(),
        [
            format!("close {ALL} 0"),
            format!("close {API} 0"),
            format!("close {STORE} 1")
        ]
    );
    let restarted = live.get(STORE).unwrap();
    assert!(restarted.started_at() >= live.get(LOG).unwrap().started_at());
}

#[test]
fn an_old_instance_is_closed_only_after_its_last_holder_lets_go() {
    let registry = registry();
    let (live, running, journal) = start(&registry, RUNNING);
    let (next, retired) = restart_store(&registry, &live, &running, &journal);

    let _ = retired.close(Duration::from_secs(60));

    // A call in flight on another thread: the close waits for it to finish.
    let next2 = config(&RUNNING.replacen("value = 1", "value = 3", 1));
    let plan = plan_for(&registry, &next, &next2);
    let in_flight = cell(&live, STORE);
    let retired = stage(&live, &plan, options(&registry, &next2, &journal))
        .unwrap()
        .commit();
    let (finish, finished) = std::sync::mpsc::channel::<()>();
    let call_journal = journal.clone();
    let call = std::thread::spawn(move || {
        finished.recv().unwrap();
        call_journal.add("call finished".to_string());
        drop(in_flight);
    });
    let closer = std::thread::spawn(move || retired.close(Duration::from_secs(60)));
    finish.send(()).unwrap();
    call.join().unwrap();
    let closed = closer.join().unwrap();
    assert!(closed.still_in_use.is_empty());
    let lines = journal.lines();
    let call_at = lines.iter().position(|l| l == "call finished").unwrap();
    let close_at = lines
        .iter()
        .position(|l| l == &format!("close {STORE} 2"))
        .unwrap();
    assert!(call_at < close_at, "{lines:?}");

    // A holder that never lets go within the wait: closed anyway, and named.
    let next3 = config(&RUNNING.replacen("value = 1", "value = 4", 1));
    let plan = plan_for(&registry, &next2, &next3);
    let stuck = cell(&live, STORE);
    let retired = stage(&live, &plan, options(&registry, &next3, &journal))
        .unwrap()
        .commit();
    let waited = std::time::Instant::now();
    let closed = retired.close(Duration::from_millis(20));
    assert!(
        waited.elapsed() >= Duration::from_millis(20),
        "it waited the drain time"
    );
    assert_eq!(closed.still_in_use, [STORE]);
    assert!(journal.lines().contains(&format!("close {STORE} 3")));
    drop(stuck);
}

#[test]
fn a_failed_step_changes_nothing_and_closes_what_was_built() {
    let registry = registry();
    let (live, running, journal) = start(&registry, RUNNING);
    let before: Vec<_> = live.plugins();
    // The store restarts fine (value 2); the extra plugin's new config fails its init.
    let next = config(&format!(
        "{}\n[plugins.\"{EXTRA}\"]\nfail = true\n",
        RUNNING.replacen("value = 1", "value = 2", 1)
    ));
    let plan = plan_for(&registry, &running, &next);
    let error = stage(&live, &plan, options(&registry, &next, &journal)).unwrap_err();
    let failed: Vec<(&str, Action)> = error
        .failures
        .iter()
        .map(|f| (f.uri.as_str(), f.action))
        .collect();
    assert_eq!(failed, [(EXTRA, Action::Restart)]);
    assert!(error.to_string().contains("the knob says fail"), "{error}");
    assert!(error.to_string().contains("changed nothing"), "{error}");
    // The live set is as it was: same generation, same records, same values.
    assert_eq!(live.generation(), 1);
    let after = live.plugins();
    assert_eq!(before.len(), after.len());
    assert!(before.iter().zip(&after).all(|(a, b)| Arc::ptr_eq(a, b)));
    assert_eq!(value(&live, STORE), 1);
    // The replacements built (store 2, the API and the "*" requirer over it) were closed;
    // no running instance was.
    let lines = journal.lines();
    assert!(lines.contains(&format!("close {STORE} 2")), "{lines:?}");
    assert!(!lines.contains(&format!("close {STORE} 1")), "{lines:?}");
}

#[test]
fn reconfigure_hooks_change_in_place_and_are_put_back_when_the_reload_is_refused() {
    let registry = registry();
    let (live, running, journal) = start(&registry, RUNNING);
    let log = cell(&live, LOG);

    let next = config(&RUNNING.replace(
        "[plugins.\"io.t.level.v1.log\"]\nvalue = 1",
        "[plugins.\"io.t.level.v1.log\"]\nvalue = 5",
    ));
    let plan = plan_for(&registry, &running, &next);
    let actions: Vec<(&str, Action)> = plan
        .steps()
        .iter()
        .map(|s| (s.uri.as_str(), s.action))
        .collect();
    assert_eq!(actions, [(LOG, Action::Reconfigure)]);
    let staged = stage(&live, &plan, options(&registry, &next, &journal)).unwrap();
    assert!(staged.built().is_empty());
    let retired = staged.commit();
    assert!(retired.uris().is_empty());
    assert!(Arc::ptr_eq(&cell(&live, LOG), &log));
    assert_eq!((live.generation(), value(&live, LOG)), (2, 5));
    let config = live.get(LOG).unwrap().config().cloned().unwrap();
    assert_eq!(config.downcast_ref::<Knob>().unwrap().value, 5);
    assert!(retired.close(Duration::from_secs(1)).closed.is_empty());

    // Both hooks run in init order (audit, then log); log refuses, so audit gets its
    // running value (1) back after it took 9.
    let refused = config_with(&next, &[(AUDIT, "value = 9"), (LOG, "fail = true")]);
    let plan = plan_for(&registry, &next, &refused);
    let error = stage(&live, &plan, options(&registry, &refused, &journal)).unwrap_err();
    assert_eq!(error.failures.len(), 1);
    assert_eq!(error.failures[0].uri, LOG);
    assert!(error.failures[0].cause.contains("refuses in place"));
    assert_eq!(live.generation(), 2);
    assert_eq!((value(&live, AUDIT), value(&live, LOG)), (1, 5));
    assert!(journal.lines().is_empty());
}

fn config_with(base: &Config, sections: &[(&str, &str)]) -> Config {
    let mut config = base.clone();
    for (uri, text) in sections {
        let table: toml::Table = toml::from_str(text).unwrap();
        config
            .plugins
            .insert(uri.to_string(), toml::Value::Table(table));
    }
    config
}

#[test]
fn a_replacement_may_not_skip_where_the_running_one_is_ok_but_a_start_may() {
    let registry = registry();
    let (live, running, journal) = start(
        &registry,
        &format!("disabled_plugins = [\"{EXTRA}\"]\n{RUNNING}"),
    );
    let skip_store = config_with(&running, &[(STORE, "skip = true")]);
    let plan = plan_for(&registry, &running, &skip_store);
    let error = stage(&live, &plan, options(&registry, &skip_store, &journal)).unwrap_err();
    assert!(
        error.failures.iter().any(|f| f.uri == STORE
            && f.cause.contains("skipped itself")
            && f.cause.contains("the knob says skip")),
        "{error}"
    );
    assert_eq!(live.generation(), 1);

    // Enabling a plugin that then skips itself is as at start-up: it shows as skipped.
    let mut enable = config_with(&running, &[(EXTRA, "skip = true")]);
    enable.disabled_plugins.clear();
    let plan = plan_for(&registry, &running, &enable);
    let retired = stage(&live, &plan, options(&registry, &enable, &journal))
        .unwrap()
        .commit();
    assert!(matches!(
        live.get(EXTRA).unwrap().status(),
        Status::Skipped(_)
    ));
    let _ = retired.close(Duration::from_secs(60));

    // Unless the new config requires it.
    let mut required = enable.clone();
    required.required_plugins.push(EXTRA.to_string());
    let restart = config_with(&required, &[(EXTRA, "skip = true\nvalue = 3")]);
    let plan = plan_for(&registry, &enable, &restart);
    let error = stage(&live, &plan, options(&registry, &restart, &journal)).unwrap_err();
    assert!(
        error
            .failures
            .iter()
            .any(|f| f.uri == EXTRA && f.cause.contains("required_plugins")),
        "{error}"
    );
}

#[test]
fn a_disabled_plugin_stops_and_its_dependents_restart_without_it() {
    let registry = registry();
    let (live, running, journal) = start(&registry, RUNNING);
    let mut next = running.clone();
    next.disabled_plugins.push(API.to_string());
    let plan = plan_for(&registry, &running, &next);
    let retired = stage(&live, &plan, options(&registry, &next, &journal))
        .unwrap()
        .commit();
    assert!(matches!(live.get(API).unwrap().status(), Status::Disabled));
    let closed = retired.close(Duration::from_secs(60));
    assert_eq!(closed.closed, [ALL, API]);
    // Enabled again: started anew over the running store.
    let plan = plan_for(&registry, &next, &running);
    let retired = stage(&live, &plan, options(&registry, &running, &journal))
        .unwrap()
        .commit();
    assert!(Arc::ptr_eq(
        cell(&live, API).below.as_ref().unwrap(),
        &cell(&live, STORE)
    ));
    assert_eq!(live.generation(), 3);
    let _ = retired.close(Duration::from_secs(60));
}

#[test]
fn retired_instances_dropped_unclosed_are_closed_all_the_same() {
    let registry = registry();
    let (live, running, journal) = start(&registry, RUNNING);
    let (_, retired) = restart_store(&registry, &live, &running, &journal);
    assert!(journal.lines().is_empty());
    drop(retired);
    assert_eq!(
        journal.lines(),
        [
            format!("close {ALL} 0"),
            format!("close {API} 0"),
            format!("close {STORE} 1")
        ]
    );
}

#[test]
fn a_host_note_is_part_of_the_plan_and_its_text() {
    let registry = registry();
    let (_, running, _) = start(&registry, RUNNING);
    let mut plan = plan_for(&registry, &running, &running);
    assert!(plan.is_empty());
    plan.add_note("[debug] takes effect at the next start".to_string());
    assert_eq!(plan.notes(), ["[debug] takes effect at the next start"]);
    assert_eq!(
        plan.to_string(),
        "nothing changes\nnote: [debug] takes effect at the next start\n"
    );
}

#[test]
fn an_instance_is_in_use_while_something_beyond_its_own_views_holds_its_value() {
    let value = Arc::new(Cell {
        value: AtomicU32::new(0),
        below: None,
    });
    // Two views of the value, one of another value.
    let instance = Instance::new(value.clone())
        .with(value.clone() as Arc<dyn std::any::Any + Send + Sync>)
        .with(Arc::new(String::from("other")));
    assert_eq!(instance.view_names().len(), 3);
    assert!(
        instance.view_names()[0].contains("Cell"),
        "{:?}",
        instance.view_names()
    );
    assert!(instance.in_use(), "the test holds the value");
    drop(value);
    assert!(!instance.in_use(), "only its own views hold it");
    let held = instance.get::<Cell>().unwrap();
    assert!(instance.in_use());
    drop(held);
    assert!(!instance.in_use());
    assert!(!Instance::none().in_use(), "no views: never in use");
}

#[test]
fn a_plugin_with_a_hook_that_failed_at_start_is_initialised_again_not_reconfigured() {
    let registry = registry();
    let (live, running, journal) = start(
        &registry,
        &format!("{RUNNING}[plugins.\"io.t.level.v1.audit\"]\nfail = true\n")
            .replace("[plugins.\"io.t.level.v1.audit\"]\nvalue = 1\n", ""),
    );
    assert!(matches!(
        live.get(AUDIT).unwrap().status(),
        Status::Failed(_)
    ));
    let next = config_with(&running, &[(AUDIT, "value = 3")]);
    let plan = plan_for(&registry, &running, &next);
    let retired = stage(&live, &plan, options(&registry, &next, &journal))
        .unwrap()
        .commit();
    assert_eq!(value(&live, AUDIT), 3);
    let _ = retired.close(Duration::from_secs(60));
}
