//! The init driver: outcomes, lookups, panics, time-outs, required plugins, close order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_core::{
    DisableFilter, InitContext, InitError, InitOptions, Instance, LookupError, PluginGraph,
    Registration, Registry, Set, StartupError, Status, init_plugins,
};

use crate::common::{leak, leak_list};

/// What happened, in order: closes and lookups made from inside init functions.
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(event: String) {
    EVENTS.lock().unwrap().push(event);
}

/// A count that tests and init functions wait on, instead of sleeping for long enough.
struct Gate {
    count: Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Gate {
    const fn new() -> Gate {
        Gate {
            count: Mutex::new(0),
            changed: std::sync::Condvar::new(),
        }
    }

    fn advance(&self) {
        *self.count.lock().unwrap() += 1;
        self.changed.notify_all();
    }

    /// Waits until the count reaches `n`; false if a minute passes first (a test that would
    /// otherwise hang fails instead).
    fn wait_for(&self, n: usize) -> bool {
        let count = self.count.lock().unwrap();
        let (count, _) = self
            .changed
            .wait_timeout_while(count, Duration::from_secs(60), |count| *count < n)
            .unwrap();
        *count >= n
    }
}

/// Opened by the test that starts a `block…` plugin, once start-up has returned without it.
static BLOCKED_INIT: Gate = Gate::new();
/// Advanced by each watchdog warning about `wd.watch-w`, which waits for three.
static WATCHDOG_WARNINGS: Gate = Gate::new();

fn events_with(tag: &str) -> Vec<String> {
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.contains(tag))
        .cloned()
        .collect()
}

/// One init function for every test plugin; the id says what it does:
/// `ok…` returns `Arc<String>` holding its URI (and records its close), `skip…` skips,
/// `fail…` fails, `panic…` panics, `sleep…` sleeps two seconds, `block…` waits for
/// [`BLOCKED_INIT`] to open, `watch…` for three watchdog warnings, `needs…` asks for the
/// single instance of each type it requires and fails with that lookup's error.
fn behave(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let id = ctx.registration().id();
    let uri = ctx.uri().to_string();
    if id.starts_with("skip") {
        return Err(InitError::skip(format!("{id} does not apply here")));
    }
    if id.starts_with("fail") {
        return Err(InitError::msg("other error"));
    }
    if id.starts_with("panic") {
        panic!("{id} blew up");
    }
    if id.starts_with("sleep") {
        std::thread::sleep(Duration::from_secs(2));
    }
    if id.starts_with("block") && !BLOCKED_INIT.wait_for(1) {
        return Err(InitError::msg("the test never let the blocked init go"));
    }
    if id.starts_with("watch") && !WATCHDOG_WARNINGS.wait_for(3) {
        return Err(InitError::msg("no three watchdog warnings within a minute"));
    }
    if id.starts_with("needs") {
        for required in ctx.registration().required_types() {
            let found: Arc<String> = ctx.get_single(required)?;
            record(format!("{uri} got {found}"));
        }
    }
    let root = ctx.root().display().to_string();
    ctx.meta_mut().exports.insert("root".to_string(), root);
    let closing = uri.clone();
    Ok(Instance::new(Arc::new(uri)).on_close(move || {
        record(format!("closed {closing}"));
        if closing.contains("badclose") {
            Err("disk on fire".into())
        } else {
            Ok(())
        }
    }))
}

fn reg(plugin_type: &str, id: &str, requires: &[&str]) -> Registration {
    Registration::new(leak(plugin_type), leak(id), behave).requires(leak_list(requires))
}

fn run(registrations: Vec<Registration>, options: InitOptions) -> Result<Set, StartupError> {
    run_disabled(registrations, &[], options)
}

fn run_disabled(
    registrations: Vec<Registration>,
    disabled: &[&str],
    options: InitOptions,
) -> Result<Set, StartupError> {
    let registry = registrations
        .into_iter()
        .fold(Registry::builder(), |b, r| b.add_static(r))
        .build()
        .unwrap();
    let list: Vec<Registration> = registry.registrations().copied().collect();
    let graph = PluginGraph::build(&list, &DisableFilter::by_uri(disabled.iter().copied()))?;
    init_plugins(&registry, &graph, options)
}

/// containerd's lookup set: type1/id1 ok, type1/id2 skip, type2/id3 skip, type3/id4 ok,
/// type4/id5 ok, type4/id6 ok, type5/id7 fails.
fn containerd_lookup_set() -> Set {
    run(
        vec![
            reg("type1", "ok-id1", &[]),
            reg("type1", "skip-id2", &[]),
            reg("type2", "skip-id3", &[]),
            reg("type3", "ok-id4", &[]),
            reg("type4", "ok-id5", &[]),
            reg("type4", "ok-id6", &[]),
            reg("type5", "fail-id7", &[]),
        ],
        InitOptions::default(),
    )
    .unwrap()
}

fn text(result: Result<Arc<String>, LookupError>) -> String {
    match result {
        Ok(value) => format!("ok {value}"),
        Err(error) => format!("err {error}"),
    }
}

#[test]
fn lookups_follow_containerd_cases_deterministically() {
    let set = containerd_lookup_set();
    let single: &[(&str, &str)] = &[
        ("type1", "ok type1.ok-id1"),
        (
            "type2",
            "err no plugin of type type2 is initialised (type2.skip-id3 skipped: skip-id3 does not apply here)",
        ),
        ("type3", "ok type3.ok-id4"),
        (
            "type4",
            "err several plugins of type type4 are initialised (type4.ok-id5, type4.ok-id6): ask for one by id or disable the others",
        ),
        ("type5", "err type5.fail-id7 failed: other error"),
        ("type9", "err no plugin of type type9 is initialised"),
    ];
    for (plugin_type, expected) in single {
        assert_eq!(
            text(set.get_single::<String>(plugin_type)),
            *expected,
            "single {plugin_type}"
        );
    }
    let by_type: &[(&str, Result<&[&str], &str>)] = &[
        ("type1", Ok(&["ok-id1"])),
        (
            "type2",
            Err(
                "no plugin of type type2 is initialised (type2.skip-id3 skipped: skip-id3 does not apply here)",
            ),
        ),
        ("type3", Ok(&["ok-id4"])),
        ("type4", Ok(&["ok-id5", "ok-id6"])),
        ("type5", Err("type5.fail-id7 failed: other error")),
    ];
    for (plugin_type, expected) in by_type {
        let got = set
            .get_by_type::<String>(plugin_type)
            .map(|all| all.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        let expected = expected.map(<[&str]>::to_vec).map_err(str::to_string);
        assert_eq!(got, expected, "by type {plugin_type}");
    }
    let by_id: &[(&str, &str, &str)] = &[
        ("type1", "ok-id1", "ok type1.ok-id1"),
        (
            "type1",
            "skip-id2",
            "err type1.skip-id2 skipped: skip-id2 does not apply here",
        ),
        (
            "type2",
            "skip-id3",
            "err type2.skip-id3 skipped: skip-id3 does not apply here",
        ),
        ("type4", "ok-id6", "ok type4.ok-id6"),
        (
            "type5",
            "fail-id7",
            "err type5.fail-id7 failed: other error",
        ),
        (
            "type5",
            "nope",
            "err no plugin of type type5.nope is initialised",
        ),
    ];
    for (plugin_type, id, expected) in by_id {
        assert_eq!(
            text(set.get_by_id::<String>(plugin_type, id)),
            *expected,
            "by id {plugin_type}.{id}"
        );
    }
    let statuses: Vec<(String, &str)> = set
        .plugins()
        .iter()
        .map(|p| (p.uri().to_string(), p.status().as_str()))
        .collect();
    assert_eq!(statuses.iter().filter(|(_, s)| *s == "ok").count(), 4);
    assert_eq!(statuses.iter().filter(|(_, s)| *s == "skip").count(), 2);
    assert_eq!(statuses.iter().filter(|(_, s)| *s == "error").count(), 1);
}

#[test]
fn one_ok_and_one_skipped_of_a_type_gives_the_ok_one_and_one_failed_does_not_hide_it() {
    let set = run(
        vec![
            reg("t", "ok-a", &[]),
            reg("t", "skip-b", &[]),
            reg("u", "fail-c", &[]),
            reg("u", "ok-d", &[]),
        ],
        InitOptions::default(),
    )
    .unwrap();
    assert_eq!(text(set.get_single::<String>("t")), "ok t.ok-a");
    assert_eq!(text(set.get_single::<String>("u")), "ok u.ok-d");
}

#[test]
fn typed_instances_report_a_mismatch() {
    trait Store: Send + Sync {}
    let set = run(vec![reg("t", "ok-typed", &[])], InitOptions::default()).unwrap();
    let error = set.get_single::<dyn Store>("t").err().unwrap();
    assert!(
        error
            .to_string()
            .starts_with("t.ok-typed does not provide alloc::sync::Arc<dyn "),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("(it provides: alloc::sync::Arc<alloc::string::String>)"),
        "{error}"
    );
}

#[test]
fn failure_of_a_requirement_is_named_in_the_dependents_error() {
    let set = run(
        vec![
            reg("io.containerd.content.v1", "fail-content", &[]),
            reg(
                "io.containerd.metadata.v1",
                "needs-redb",
                &["io.containerd.content.v1"],
            ),
            reg(
                "io.containerd.grpc.v1",
                "needs-api",
                &["io.containerd.metadata.v1"],
            ),
        ],
        InitOptions::default(),
    )
    .unwrap();
    let cases = [
        (
            "io.containerd.metadata.v1.needs-redb",
            "requires io.containerd.content.v1: io.containerd.content.v1.fail-content failed: other error",
            "io.containerd.content.v1.fail-content",
        ),
        (
            "io.containerd.grpc.v1.needs-api",
            "requires io.containerd.metadata.v1: io.containerd.metadata.v1.needs-redb failed: requires io.containerd.content.v1: io.containerd.content.v1.fail-content failed: other error",
            "io.containerd.metadata.v1.needs-redb",
        ),
    ];
    for (uri, message, culprit) in cases {
        let plugin = set.get(uri).unwrap();
        let Status::Failed(failure) = plugin.status() else {
            panic!("{uri} did not fail")
        };
        assert_eq!(failure.to_string(), message);
        assert_eq!(failure.caused_by.as_deref(), Some(culprit));
    }
}

#[test]
fn lookups_see_only_plugins_initialised_before() {
    // `needs-early` requires type `late` but nothing orders `late` first: it is not visible.
    let set = run(
        vec![reg("a", "needs-early", &["late"]), reg("late", "ok-x", &[])],
        InitOptions::default(),
    )
    .unwrap();
    // The graph orders `late` first, because it is required: lookups then succeed.
    assert_eq!(set.get("a.needs-early").unwrap().status().as_str(), "ok");
    assert_eq!(
        events_with("a.needs-early got"),
        ["a.needs-early got late.ok-x"]
    );
}

#[test]
fn panic_in_init_becomes_a_failure_and_startup_goes_on() {
    let set = run(
        vec![reg("p", "panic-now", &[]), reg("p2", "ok-after", &[])],
        InitOptions::default(),
    )
    .unwrap();
    let Status::Failed(failure) = set.get("p.panic-now").unwrap().status().clone() else {
        panic!()
    };
    assert_eq!(failure.to_string(), "init panicked: panic-now blew up");
    assert!(set.get("p2.ok-after").unwrap().status().is_ok());
}

#[test]
fn init_timeout_fails_the_plugin_without_hanging_startup() {
    let options = InitOptions {
        timeouts: [("slow.block-a".to_string(), Duration::from_millis(100))].into(),
        ..InitOptions::default()
    };
    // fast comes after slow (it requires its type), so it runs on a new init thread while
    // slow's is still blocked. Start-up must return while slow's init has not: it stays
    // blocked until the test has seen start-up end.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let set = run(
            vec![reg("slow", "block-a", &[]), reg("fast", "ok-b", &["slow"])],
            options,
        );
        let _ = done_tx.send(set);
    });
    let set = done_rx.recv_timeout(Duration::from_secs(60));
    BLOCKED_INIT.advance();
    let set = set
        .expect("start-up waited for an init past its time-out")
        .unwrap();
    let status = set.get("slow.block-a").unwrap().status().to_string();
    assert_eq!(
        status,
        "failed: init did not finish within 100ms; raise or remove its time-out under [timeouts]"
    );
    assert!(set.get("fast.ok-b").unwrap().status().is_ok());
}

#[test]
fn default_timeout_applies_to_plugins_without_their_own() {
    let options = InitOptions {
        default_timeout: Some(Duration::from_millis(50)),
        ..InitOptions::default()
    };
    let set = run(vec![reg("slow2", "sleep-c", &[])], options).unwrap();
    assert_eq!(set.get("slow2.sleep-c").unwrap().status().as_str(), "error");
}

#[test]
fn required_plugins_stop_startup_with_the_cause() {
    // (registrations, disabled, required, expected error)
    let cases: Vec<(Vec<Registration>, &[&str], &[&str], &str)> = vec![
        (
            vec![reg("r1", "ok-a", &[])],
            &[],
            &["r1.ok-b"],
            "required plugin r1.ok-b is not registered (did you mean \"r1.ok-a\"?): remove it from required_plugins or build with the plugin",
        ),
        (
            vec![reg("r2", "ok-a", &[])],
            &["r2.ok-a"],
            &["r2.ok-a"],
            "required plugin r2.ok-a is disabled: remove it from disabled_plugins or from required_plugins",
        ),
        (
            vec![reg("r3", "fail-a", &[])],
            &[],
            &["r3.fail-a"],
            "required plugin r3.fail-a failed: other error",
        ),
        (
            vec![reg("r4", "skip-a", &[])],
            &[],
            &["r4.skip-a"],
            "required plugin r4.skip-a skipped: skip-a does not apply here",
        ),
    ];
    for (registrations, disabled, required, expected) in cases {
        let options = InitOptions {
            required: required.iter().map(|s| s.to_string()).collect(),
            ..InitOptions::default()
        };
        let error = run_disabled(registrations, disabled, options).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }
}

#[test]
fn a_failed_required_plugin_closes_what_was_opened_in_reverse() {
    let options = InitOptions {
        required: vec!["rq.fail-z".to_string()],
        ..InitOptions::default()
    };
    let registrations = vec![
        reg("rq", "fail-z", &["rq0", "rq1"]),
        reg("rq0", "ok-first", &[]),
        reg("rq1", "ok-second", &[]),
    ];
    let error = run(registrations, options).unwrap_err();
    assert!(matches!(error, StartupError::RequiredNotOk { .. }));
    assert_eq!(
        events_with("closed rq"),
        ["closed rq1.ok-second", "closed rq0.ok-first"]
    );
}

#[test]
fn close_runs_in_reverse_init_order_once_and_reports_failures() {
    let set = run(
        vec![
            reg("c3", "ok-last", &["c2"]),
            reg("c2", "ok-badclose", &["c1"]),
            reg("c1", "ok-first", &[]),
        ],
        InitOptions::default(),
    )
    .unwrap();
    let failures = set.close();
    assert_eq!(
        events_with("closed c"),
        [
            "closed c3.ok-last",
            "closed c2.ok-badclose",
            "closed c1.ok-first"
        ]
    );
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "c2.ok-badclose");
    assert_eq!(failures[0].1.to_string(), "disk on fire");
    assert!(set.close().is_empty(), "a second close does nothing");
    assert_eq!(events_with("closed c").len(), 3);
}

/// Records its drop; a stand-in for a database that must flush when the daemon stops.
struct DropProbe {
    uri: String,
    /// An instance holding the set it is in, as introspection does: a reference cycle.
    _set: Set,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        record(format!("dropped {}", self.uri));
    }
}

#[test]
fn close_drops_instances_in_reverse_order_even_when_they_hold_the_set() {
    fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
        let probe = DropProbe {
            uri: ctx.uri().to_string(),
            _set: ctx.plugin_set(),
        };
        Ok(Instance::new(Arc::new(probe)))
    }
    let reg = |plugin_type: &str, requires: &[&str]| {
        Registration::new(leak(plugin_type), "p", init).requires(leak_list(requires))
    };
    let set = run(
        vec![
            reg("dr.c", &["dr.b"]),
            reg("dr.b", &["dr.a"]),
            reg("dr.a", &[]),
        ],
        InitOptions::default(),
    )
    .unwrap();
    let kept: Arc<DropProbe> = set.get_single("dr.c").unwrap();
    assert!(events_with("dropped dr.").is_empty(), "nothing dropped yet");
    assert!(set.close().is_empty());
    assert_eq!(
        events_with("dropped dr."),
        ["dropped dr.b.p", "dropped dr.a.p"],
        "the set let go of all three, last first; dr.c is still held here"
    );
    assert!(set.is_empty(), "a closed set is empty");
    drop(kept);
    assert_eq!(
        events_with("dropped dr."),
        ["dropped dr.b.p", "dropped dr.a.p", "dropped dr.c.p"]
    );
}

#[test]
fn context_gives_paths_meta_and_extensions_and_disabled_plugins_are_listed() {
    fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
        let greeting = ctx.extension::<&'static str>().copied().unwrap_or("none");
        ctx.meta_mut()
            .exports
            .insert("greeting".to_string(), greeting.to_string());
        let state = ctx.state().display().to_string();
        let address = ctx.grpc_address().to_string();
        ctx.meta_mut().exports.insert("state".to_string(), state);
        ctx.meta_mut()
            .exports
            .insert("address".to_string(), address);
        ctx.meta_mut().platforms.push("linux/amd64".to_string());
        Ok(Instance::none())
    }
    let mut extensions = plinth_core::init::Extensions::new();
    extensions.insert("hello");
    let options = InitOptions {
        root: "/r".into(),
        state: "/s".into(),
        grpc_address: "/s/sock".to_string(),
        extensions,
        ..InitOptions::default()
    };
    let set = run_disabled(
        vec![
            Registration::new("ctx", "probe", init),
            reg("ctx", "ok-off", &[]),
        ],
        &["ctx.ok-off"],
        options,
    )
    .unwrap();
    let probe = set.get("ctx.probe").unwrap();
    let exports = &probe.meta().exports;
    assert_eq!(exports["greeting"], "hello");
    assert_eq!(exports["state"], "/s/ctx.probe");
    assert_eq!(exports["address"], "/s/sock");
    assert_eq!(probe.meta().platforms, ["linux/amd64"]);
    let off = set.get("ctx.ok-off").unwrap();
    assert_eq!(off.status().as_str(), "disabled");
    assert_eq!(
        set.plugins()[0].uri(),
        "ctx.ok-off",
        "disabled plugins come first"
    );
    assert!(matches!(
        set.get_by_id::<String>("ctx", "ok-off"),
        Err(LookupError::Disabled { .. })
    ));
}

#[test]
fn watchdog_logs_a_plugin_still_initialising() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing::field::{Field, Visit};

    /// Counts warnings that say a plugin is still initialising, with when each came.
    struct Count(
        Arc<AtomicUsize>,
        Arc<Mutex<Vec<Duration>>>,
        std::time::Instant,
    );
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            use std::fmt::Write;
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }
    impl tracing::Subscriber for Count {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            if message.0.contains("still initialising") && message.0.contains("wd.watch-w") {
                self.1.lock().unwrap().push(self.2.elapsed());
                self.0.fetch_add(1, Ordering::SeqCst);
                WATCHDOG_WARNINGS.advance();
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
    let count = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let period = Duration::from_millis(300);
    let options = InitOptions {
        watchdog: period,
        ..InitOptions::default()
    };
    // The plugin initialises until the watchdog has warned three times about it.
    let subscriber = Count(count.clone(), times.clone(), std::time::Instant::now());
    let set = tracing::subscriber::with_default(subscriber, || {
        run(vec![reg("wd", "watch-w", &[])], options).unwrap()
    });
    assert!(set.get("wd.watch-w").unwrap().status().is_ok());
    assert!(count.load(Ordering::SeqCst) >= 3);
    // A loaded machine only delays a warning: the n-th comes n periods after the start at
    // the earliest, never sooner (the watchdog does not warn faster than its period).
    let times = times.lock().unwrap().clone();
    for (n, time) in times.iter().enumerate() {
        let earliest = period * u32::try_from(n + 1).unwrap();
        assert!(
            *time >= earliest,
            "warning {} came {time:?} after the start, before {earliest:?}: {times:?}",
            n + 1
        );
    }
}
