//! The reload planner, as a table: (running registrations and config, next registrations and
//! config) → the plan's lines, or the refusal.

use plinth_core::config::Config;
use plinth_core::reload::{Generation, plan};
use plinth_core::{InitContext, InitError, Instance, Registration, Registry};
use serde::{Deserialize, Serialize};

use crate::common::{leak, leak_list};

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

fn take_in_place(
    _: &Instance,
    _: &plinth_core::registration::AnyConfig,
) -> Result<(), plinth_core::init::BoxError> {
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(default)]
struct Tunable {
    level: String,
    limit: u32,
}

impl Default for Tunable {
    fn default() -> Self {
        Tunable {
            level: "info".to_string(),
            limit: 10,
        }
    }
}

/// How a test registration is made and where it comes from.
#[derive(Clone, Copy)]
enum Kind {
    Static,
    /// With a reconfigure hook.
    Hook,
    /// With a typed config (`Tunable`).
    Typed,
    /// From a library file.
    Library(&'static str),
    /// From `[proxy_plugins.<name>]`.
    Proxy(&'static str),
}

/// (type, id, requires, kind)
type Reg = (&'static str, &'static str, &'static [&'static str], Kind);

fn registry(regs: &[Reg]) -> Registry {
    let mut builder = Registry::builder();
    for &(plugin_type, id, requires, kind) in regs {
        let registration =
            Registration::new(leak(plugin_type), leak(id), init).requires(leak_list(requires));
        builder = match kind {
            Kind::Static => builder.add_static(registration),
            Kind::Hook => builder.add_static(registration.reconfigure(take_in_place)),
            Kind::Typed => builder.add_static(registration.config::<Tunable>()),
            Kind::Library(file) => builder.add_dynamic(file, registration),
            Kind::Proxy(name) => builder.add_proxy(name, registration),
        };
    }
    builder.build().expect("test registrations are valid")
}

const STORE: Reg = ("io.t.store.v1", "disk", &[], Kind::Static);
const STORE_HOOK: Reg = ("io.t.store.v1", "disk", &[], Kind::Hook);
const API: Reg = ("io.t.api.v1", "web", &["io.t.store.v1"], Kind::Static);
const UI: Reg = ("io.t.ui.v1", "page", &["io.t.api.v1"], Kind::Static);
const LOG: Reg = ("io.t.log.v1", "file", &[], Kind::Typed);
const ALL: Reg = ("io.t.introspection.v1", "all", &["*"], Kind::Static);
const CACHE: Reg = ("io.t.cache.v1", "mem", &["io.t.store.v1"], Kind::Static);
const CACHE_USER: Reg = ("io.t.report.v1", "daily", &["io.t.cache.v1"], Kind::Static);
const REMOTE: Reg = ("io.t.store.v1", "remote", &[], Kind::Proxy("remote"));
const LIB: Reg = (
    "io.t.ext.v1",
    "hello",
    &["io.t.store.v1"],
    Kind::Library("/p/hello-linux-x86_64.so"),
);
const CYCLE_A: Reg = (
    "io.t.a.v1",
    "x",
    &["io.t.b.v1"],
    Kind::Library("/p/cycle-linux-x86_64.so"),
);
const CYCLE_B: Reg = (
    "io.t.b.v1",
    "y",
    &["io.t.a.v1"],
    Kind::Library("/p/cycle-linux-x86_64.so"),
);

const REMOTE_AT_A: &str =
    "[proxy_plugins.remote]\ntype = \"io.t.store.v1\"\naddress = \"/run/a.sock\"\n";
const REMOTE_AT_B: &str =
    "[proxy_plugins.remote]\ntype = \"io.t.store.v1\"\naddress = \"/run/b.sock\"\n";

struct Case {
    name: &'static str,
    running: (&'static [Reg], &'static str),
    next: (&'static [Reg], &'static str),
    /// The plan's lines, or a fragment of the refusal.
    expected: Result<&'static [&'static str], &'static [&'static str]>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "the same config changes nothing",
            running: (
                &[STORE, API, LOG],
                "[plugins.\"io.t.log.v1.file\"]\nlevel = \"debug\"\n",
            ),
            next: (
                &[STORE, API, LOG],
                "[plugins.\"io.t.log.v1.file\"]\nlevel = \"debug\"\n",
            ),
            expected: Ok(&["nothing changes"]),
        },
        Case {
            name: "writing out a default value is no change",
            running: (&[LOG], ""),
            next: (
                &[LOG],
                "[plugins.\"io.t.log.v1.file\"]\nlevel = \"info\"\nlimit = 10\n",
            ),
            expected: Ok(&["nothing changes"]),
        },
        Case {
            name: "a changed section restarts the plugin and, transitively, what requires it",
            running: (&[STORE, API, UI, LOG], ""),
            next: (
                &[STORE, API, UI, LOG],
                "[plugins.\"io.t.store.v1.disk\"]\nsize = 2\n",
            ),
            expected: Ok(&[
                "restart io.t.store.v1.disk: config section changed",
                "restart io.t.api.v1.web: requires io.t.store.v1, and io.t.store.v1.disk restarts",
                "restart io.t.ui.v1.page: requires io.t.api.v1, and io.t.api.v1.web restarts",
            ]),
        },
        Case {
            name: "a reconfigure hook takes the change in place; nothing else moves",
            running: (&[STORE_HOOK, API, ALL], ""),
            next: (
                &[STORE_HOOK, API, ALL],
                "[plugins.\"io.t.store.v1.disk\"]\nsize = 2\n",
            ),
            expected: Ok(&["reconfigure io.t.store.v1.disk: config section changed"]),
        },
        Case {
            name: "a \"*\" requirer restarts when any plugin does",
            running: (&[STORE, LOG, ALL], ""),
            next: (
                &[STORE, LOG, ALL],
                "[plugins.\"io.t.log.v1.file\"]\nlimit = 3\n",
            ),
            expected: Ok(&[
                "restart io.t.log.v1.file: config section changed",
                "restart io.t.introspection.v1.all: requires *, and io.t.log.v1.file restarts",
            ]),
        },
        Case {
            name: "disabled, then enabled again: started, and its requirers restart",
            running: (
                &[STORE, CACHE, CACHE_USER],
                "disabled_plugins = [\"io.t.cache.v1.mem\"]\n",
            ),
            next: (&[STORE, CACHE, CACHE_USER], ""),
            expected: Ok(&[
                "start io.t.cache.v1.mem: enabled",
                "restart io.t.report.v1.daily: requires io.t.cache.v1, and io.t.cache.v1.mem starts",
            ]),
        },
        Case {
            name: "disabled: stopped, and its requirers restart",
            running: (&[STORE, CACHE, CACHE_USER], ""),
            next: (
                &[STORE, CACHE, CACHE_USER],
                "disabled_plugins = [\"io.t.cache.v1.mem\"]\n",
            ),
            expected: Ok(&[
                "stop io.t.cache.v1.mem: disabled",
                "restart io.t.report.v1.daily: requires io.t.cache.v1, and io.t.cache.v1.mem stops",
            ]),
        },
        Case {
            name: "a proxy added starts, and the requirers of its type restart",
            running: (&[STORE, API], ""),
            next: (&[STORE, API, REMOTE], REMOTE_AT_A),
            expected: Ok(&[
                "start io.t.store.v1.remote: [proxy_plugins.remote] was added",
                "restart io.t.api.v1.web: requires io.t.store.v1, and io.t.store.v1.remote starts",
            ]),
        },
        Case {
            name: "a proxy re-addressed restarts",
            running: (&[REMOTE], REMOTE_AT_A),
            next: (&[REMOTE], REMOTE_AT_B),
            expected: Ok(&[
                "restart io.t.store.v1.remote: [proxy_plugins.remote] address changed from /run/a.sock to /run/b.sock",
            ]),
        },
        Case {
            name: "a proxy removed stops",
            running: (&[STORE, REMOTE], REMOTE_AT_A),
            next: (&[STORE], ""),
            expected: Ok(&["stop io.t.store.v1.remote: [proxy_plugins.remote] was removed"]),
        },
        Case {
            name: "a library newly in the plugin directory starts",
            running: (&[STORE], ""),
            next: (&[STORE, LIB], ""),
            expected: Ok(&["start io.t.ext.v1.hello: loaded from /p/hello-linux-x86_64.so"]),
        },
        Case {
            name: "a library gone from the plugin directory stays loaded, with a note",
            running: (&[STORE, LIB], ""),
            next: (&[STORE], ""),
            expected: Ok(&[
                "nothing changes",
                "note: io.t.ext.v1.hello came from /p/hello-linux-x86_64.so, which is gone from the plugin directory; it stays loaded (libraries are never unloaded): restart the daemon to drop it",
            ]),
        },
        Case {
            name: "a cycle brought by a new library is refused",
            running: (&[STORE], ""),
            next: (&[STORE, CYCLE_A, CYCLE_B], ""),
            expected: Err(&[
                "plugin dependency cycle: io.t.a.v1.x",
                "nothing was applied",
            ]),
        },
        Case {
            name: "root, state and the address need a restart; every one is named and nothing else is planned",
            running: (&[STORE], ""),
            next: (
                &[STORE],
                "root = \"/elsewhere\"\nstate = \"/run/elsewhere\"\n[grpc]\naddress = \"/run/other.sock\"\n[plugins.\"io.t.store.v1.disk\"]\nsize = 2\n",
            ),
            expected: Err(&[
                "`root` cannot change without a restart",
                "`state` cannot change without a restart",
                "`grpc.address` cannot change without a restart (running: \"/run/plinth/plinthd.sock\", new config: \"/run/other.sock\")",
                "nothing was applied",
            ]),
        },
    ]
}

#[test]
fn plans_from_the_table() {
    let mut failures = Vec::new();
    for case in cases() {
        let running_registry = registry(case.running.0);
        let next_registry = registry(case.next.0);
        let running: Config = toml::from_str(case.running.1).expect(case.name);
        let next: Config = toml::from_str(case.next.1).expect(case.name);
        let outcome = plan(
            &Generation::new(&running_registry, &running),
            &Generation::new(&next_registry, &next),
        );
        match (outcome, case.expected) {
            (Ok(plan), Ok(lines)) => {
                let text = plan.to_string();
                let got: Vec<&str> = text.lines().collect();
                if got != lines {
                    failures.push(format!(
                        "{}:\n  got      {got:#?}\n  expected {lines:#?}",
                        case.name
                    ));
                }
                // The accessors agree with the text.
                let listed: Vec<String> = plan
                    .steps()
                    .iter()
                    .map(ToString::to_string)
                    .chain(plan.notes().iter().map(|note| format!("note: {note}")))
                    .collect();
                let unchanged = lines.first() == Some(&"nothing changes");
                let wanted: Vec<&str> = lines
                    .iter()
                    .copied()
                    .filter(|line| *line != "nothing changes")
                    .collect();
                if listed != wanted || plan.is_empty() != unchanged {
                    failures.push(format!(
                        "{}: steps and notes {listed:#?}, empty {}",
                        case.name,
                        plan.is_empty()
                    ));
                }
            }
            (Err(error), Err(fragments)) => {
                let text = error.to_string();
                for fragment in fragments {
                    if !text.contains(fragment) {
                        failures.push(format!("{}: {text:?} lacks {fragment:?}", case.name));
                    }
                }
            }
            (Ok(plan), Err(_)) => {
                failures.push(format!("{}: planned, not refused:\n{plan}", case.name))
            }
            (Err(error), Ok(_)) => failures.push(format!("{}: refused: {error}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
