//! Config loading, imports, migration, typed sections, strict mode and serialising back,
//! all on real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use plinth_core::config::{ConfigError, ConfigLoader, ResolvedConfig, default_toml};
use plinth_core::registration::{ConfigViolation, ValidateConfig};
use plinth_core::{InitContext, InitError, Instance, Registration, Registry};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct StoreConfig {
    path: String,
    max_size: u64,
    labels: Vec<String>,
    gc: Gc,
}

/// No `#[serde(default)]`: the defaults come from merging over `StoreConfig::default()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Gc {
    enabled: bool,
    interval: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "blobs".to_string(),
            max_size: 1024,
            labels: vec!["a".to_string()],
            gc: Gc {
                enabled: true,
                interval: "1h".to_string(),
            },
        }
    }
}

/// Without `#[serde(default)]`: missing keys must still come from the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StrictShape {
    name: String,
    count: u32,
}

impl Default for StrictShape {
    fn default() -> Self {
        StrictShape {
            name: "n".to_string(),
            count: 7,
        }
    }
}

fn nothing(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

static MIGRATIONS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// The steps the hook ran on this thread: tests run in parallel, each on its own thread,
    /// and config loading runs on the caller's thread.
    static MIGRATION_STEPS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Version 2 → 3: `old_name` became `path`.
fn migrate_store(from_version: u32, plugins: &mut toml::Table) -> Result<(), String> {
    MIGRATIONS.fetch_add(1, Ordering::SeqCst);
    MIGRATION_STEPS.with(|steps| steps.borrow_mut().push(from_version));
    if from_version == 2 {
        if let Some(toml::Value::Table(section)) = plugins.get_mut("io.test.store.v1.local") {
            if let Some(old) = section.remove("old_name") {
                section.insert("path".to_string(), old);
            }
            if section.get("refuse").is_some() {
                return Err("refuse is not supported any more: remove it".to_string());
            }
        }
    }
    Ok(())
}

fn registry() -> Registry {
    Registry::builder()
        .add_static(
            Registration::new("io.test.store.v1", "local", nothing)
                .config::<StoreConfig>()
                .migrate(migrate_store),
        )
        .add_static(Registration::new("io.test.shape.v1", "shape", nothing).config::<StrictShape>())
        .add_static(Registration::new("io.test.plain.v1", "plain", nothing))
        .add_static(Registration::new(
            "io.containerd.grpc.v1",
            "version",
            nothing,
        ))
        .build()
        .unwrap()
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn resolve(path: &Path, strict: bool) -> Result<ResolvedConfig, ConfigError> {
    let registry = registry();
    ConfigLoader::new(&registry)
        .load(path)?
        .resolve(&registry, strict)
}

fn store(resolved: &ResolvedConfig) -> StoreConfig {
    let value = resolved.plugin_configs["io.test.store.v1.local"].clone();
    value.downcast_ref::<StoreConfig>().unwrap().clone()
}

/// The error text with the temporary directory replaced by `DIR`.
fn error_text(dir: &Dir, error: impl ToString) -> String {
    error
        .to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

#[test]
fn plugin_section_decodes_over_defaults_in_every_version() {
    let cases = [
        (
            "v3",
            "version = 3\n[plugins.\"io.test.store.v1.local\"]\nmax_size = 5\n[plugins.\"io.test.store.v1.local\".gc]\nenabled = false\n",
        ),
        (
            "v2",
            "version = 2\n[plugins.\"io.test.store.v1.local\"]\nmax_size = 5\n[plugins.\"io.test.store.v1.local\".gc]\nenabled = false\n",
        ),
        (
            "v1 by id",
            "version = 1\n[plugins.local]\nmax_size = 5\n[plugins.local.gc]\nenabled = false\n",
        ),
        (
            "no version is v1",
            "[plugins.local]\nmax_size = 5\ngc = { enabled = false }\n",
        ),
    ];
    for (name, text) in cases {
        let dir = Dir::new();
        let resolved = resolve(&dir.write("config.toml", text), true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = StoreConfig {
            max_size: 5,
            gc: Gc {
                enabled: false,
                interval: "1h".to_string(),
            },
            ..StoreConfig::default()
        };
        assert_eq!(store(&resolved), expected, "{name}");
        assert_eq!(resolved.config.version, 3, "{name}");
        assert!(
            resolved.diagnostics.is_empty(),
            "{name}: {:?}",
            resolved.diagnostics
        );
    }
}

#[test]
fn defaults_apply_even_without_serde_default() {
    let dir = Dir::new();
    let path = dir.write(
        "c.toml",
        "version = 3\n[plugins.\"io.test.shape.v1.shape\"]\ncount = 3\n",
    );
    let resolved = resolve(&path, true).unwrap();
    let shape = resolved.plugin_configs["io.test.shape.v1.shape"]
        .downcast_ref::<StrictShape>()
        .unwrap()
        .clone();
    assert_eq!(
        shape,
        StrictShape {
            name: "n".to_string(),
            count: 3
        }
    );
}

#[test]
fn version_1_ids_in_lists_become_uris() {
    let dir = Dir::new();
    let path = dir.write(
        "c.toml",
        "version = 1\ndisabled_plugins = [\"plain\"]\nrequired_plugins = [\"version\"]\n",
    );
    let resolved = resolve(&path, true).unwrap();
    assert_eq!(resolved.config.disabled_plugins, ["io.test.plain.v1.plain"]);
    assert_eq!(
        resolved.config.required_plugins,
        ["io.containerd.grpc.v1.version"]
    );
    assert!(
        resolved
            .disable_filter()
            .uris
            .contains("io.test.plain.v1.plain")
    );
}

#[test]
fn errors_name_file_line_column_and_plugin() {
    // (name, file text, strict, expected error with the directory as DIR)
    let cases: &[(&str, &str, bool, &str)] = &[
        (
            "syntax",
            "version = 3\nroot = \"/x\nstate = 1\n",
            false,
            "DIR/c.toml:2:11: invalid basic string",
        ),
        (
            "bad version",
            "version = 7\n",
            false,
            "DIR/c.toml:1:11: unsupported config version 7: use 1, 2 or 3",
        ),
        (
            "version type",
            "version = \"3\"\n",
            false,
            "DIR/c.toml:1:11: version: expected an integer, found string",
        ),
        (
            "top-level type",
            "version = 3\nroot = 5\n",
            false,
            "DIR/c.toml:2:8: root: invalid type: integer `5`, expected path string",
        ),
        (
            "nested top-level type",
            "version = 3\n[grpc]\nuid = \"root\"\n",
            false,
            "DIR/c.toml:3:7: grpc.uid: invalid type: string \"root\", expected u32",
        ),
        (
            "plugin type",
            "version = 3\n[plugins.\"io.test.store.v1.local\"]\nmax_size = \"big\"\n",
            false,
            "DIR/c.toml:3:12: plugin io.test.store.v1.local: max_size: invalid type: string \"big\", expected u64",
        ),
        (
            "plugin nested type",
            "version = 3\n[plugins.\"io.test.store.v1.local\".gc]\nenabled = 1\n",
            false,
            "DIR/c.toml:3:11: plugin io.test.store.v1.local: gc.enabled: invalid type: integer `1`, expected a boolean",
        ),
        (
            "plugin section not a table",
            "version = 3\n[plugins]\n\"io.test.store.v1.local\" = 3\n",
            false,
            "DIR/c.toml:3:28: plugin io.test.store.v1.local: expected a table, found integer",
        ),
        (
            "bad duration",
            "version = 3\n[timeouts]\n\"plinth.init\" = \"5 parsecs\"\n",
            false,
            "DIR/c.toml:3:17: timeouts.\"plinth.init\" = \"5 parsecs\" is not a duration:",
        ),
        (
            "bad import glob",
            "version = 3\nimports = [\"[\"]\n",
            false,
            "DIR/c.toml:2:12: import \"[\" is not a valid glob:",
        ),
        (
            "import of a file that is not there",
            "version = 3\nimports = [\"conf.d/missing.toml\"]\n",
            false,
            "DIR/c.toml:2:12: import \"conf.d/missing.toml\" names DIR/conf.d/missing.toml, which is not a file: fix the path, or remove the import (only a pattern with *, ? or [ may match nothing)",
        ),
        (
            "import of a directory",
            "version = 3\nimports = [\".\"]\n",
            false,
            "DIR/c.toml:2:12: import \".\" names DIR/., which is not a file:",
        ),
        (
            "migration refused",
            "version = 2\n[plugins.\"io.test.store.v1.local\"]\nrefuse = true\n",
            false,
            "DIR/c.toml: migrating plugin io.test.store.v1.local from version 2: refuse is not supported any more: remove it",
        ),
    ];
    for (name, text, strict, expected) in cases {
        let dir = Dir::new();
        let path = dir.write("c.toml", text);
        let error = resolve(&path, *strict).expect_err(name);
        let text = error_text(&dir, &error);
        assert!(
            text.starts_with(expected),
            "{name}: got {text:?}, expected it to start with {expected:?}"
        );
    }
}

/// The error and its causes, as `main` prints them (anyhow's `{:#}`): each joined by ": ".
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn missing_file_names_the_path_and_the_os_error_once() {
    let dir = Dir::new();
    let error = resolve(&dir.path().join("absent.toml"), false).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    let chain = error_text(&dir, chain_text(&error));
    assert!(
        chain.starts_with("reading config DIR/absent.toml: "),
        "{chain}"
    );
    assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
}

#[test]
fn errors_with_a_source_do_not_repeat_it_in_their_message() {
    let io = || std::io::Error::from_raw_os_error(2);
    // Every error of plinth-core that carries an OS error as its source.
    let errors: Vec<(&str, Box<dyn std::error::Error>)> = vec![
        (
            "ConfigError::Read",
            Box::new(ConfigError::Read {
                path: PathBuf::from("/x.toml"),
                source: io(),
            }),
        ),
        (
            "StartupError::Directory",
            Box::new(plinth_core::StartupError::Directory {
                uri: "io.test.v1.x".to_string(),
                path: PathBuf::from("/root/io.test.v1.x"),
                source: io(),
            }),
        ),
    ];
    for (name, error) in errors {
        let source = error.source().expect(name).to_string();
        assert!(
            !error.to_string().contains(&source),
            "{name}: {error} repeats its source"
        );
        assert_eq!(
            chain_text(error.as_ref()).matches(&source).count(),
            1,
            "{name}"
        );
    }
}

#[test]
fn reports_become_errors_in_strict_mode_with_hints_in_line_order() {
    let text = "version = 3\nrooot = \"/x\"\ndisabled_plugins = [\"io.test.plain.v1.plian\"]\nrequired_plugins = [\"io.nothing.v1.at-all\"]\n\
[grpc]\nadress = \"/s\"\n\
[plugins.\"io.test.store.v1.local\"]\nmax_sise = 3\n\
[plugins.\"io.test.stor.v1.local\"]\nx = 1\n\
[plugins.\"io.test.plain.v1.plain\"]\ny = 2\n";
    // In file and line order, not in the order the checks run.
    let expected = [
        "DIR/c.toml:2:1: unknown key rooot (did you mean \"root\"?): it is ignored; remove it",
        "DIR/c.toml:3:21: disabled_plugins names unknown plugin io.test.plain.v1.plian (did you mean \"io.test.plain.v1.plain\"?)",
        "DIR/c.toml:4:21: required_plugins names unknown plugin io.nothing.v1.at-all",
        "DIR/c.toml:6:1: unknown key grpc.adress (did you mean \"address\"?): it is ignored; remove it",
        "DIR/c.toml:8:1: plugin io.test.store.v1.local has no config key max_sise (did you mean \"max_size\"?); remove it",
        "DIR/c.toml:9:10: section for unknown plugin io.test.stor.v1.local (did you mean \"io.test.store.v1.local\"?): this build has no such plugin",
        "DIR/c.toml:11:10: plugin io.test.plain.v1.plain has no config; remove its section",
    ];
    let dir = Dir::new();
    let path = dir.write("c.toml", text);
    // Lenient: the same reports, as diagnostics, and the config loads.
    let resolved = resolve(&path, false).unwrap();
    let got: Vec<String> = resolved
        .diagnostics
        .iter()
        .map(|d| error_text(&dir, d))
        .collect();
    assert_eq!(got, expected);
    // Strict from the caller (the command-line flag) and from the file: every report is an
    // error, in the same order.
    for strict_path in [
        path.clone(),
        dir.write("s.toml", &format!("strict = true\n{text}")),
    ] {
        let from_flag = strict_path == path;
        let error = resolve(&strict_path, from_flag).unwrap_err();
        let ConfigError::Strict(reports) = &error else {
            panic!("not strict: {error}")
        };
        let lines: Vec<usize> = reports
            .iter()
            .map(|r| r.location.as_ref().unwrap().line)
            .collect();
        let offset = usize::from(!from_flag);
        let want: Vec<usize> = [2, 3, 4, 6, 8, 9, 11].iter().map(|l| l + offset).collect();
        assert_eq!(lines, want);
        assert!(error.to_string().contains("did you mean \"max_size\"?"));
    }
}

#[test]
fn reports_from_several_files_come_main_file_first_then_imports_by_line() {
    let dir = Dir::new();
    let main = dir.write(
        "main.toml",
        "version = 3\nimports = [\"b.toml\", \"a.toml\"]\nzzz = 1\n\n\naaa = 2\n",
    );
    dir.write("a.toml", "version = 3\nbbb = 1\n");
    dir.write("b.toml", "version = 3\n[grpc]\nccc = 1\n");
    let resolved = resolve(&main, false).unwrap();
    let got: Vec<String> = resolved
        .diagnostics
        .iter()
        .map(|d| {
            error_text(&dir, d)
                .split(": unknown")
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    // Imports are read in the order they are listed; each file's reports by line.
    assert_eq!(
        got,
        [
            "DIR/main.toml:3:1",
            "DIR/main.toml:6:1",
            "DIR/b.toml:3:1",
            "DIR/a.toml:2:1"
        ]
    );
}

#[test]
fn unknown_top_level_keys_get_a_hint_from_the_config_structs() {
    // (file text after `version = 3`, the expected report)
    let cases: &[(&str, &str)] = &[
        (
            "rooot = \"/x\"",
            "unknown key rooot (did you mean \"root\"?)",
        ),
        (
            "disabled_plugin = []",
            "unknown key disabled_plugin (did you mean \"disabled_plugins\"?)",
        ),
        ("debgu = 1", "unknown key debgu (did you mean \"debug\"?)"),
        // Skipped when serialising (None), still a known key.
        (
            "plugin_dri = \"/p\"",
            "unknown key plugin_dri (did you mean \"plugin_dir\"?)",
        ),
        (
            "[grpc]\nadress = \"/s\"",
            "unknown key grpc.adress (did you mean \"address\"?)",
        ),
        (
            "[debug]\nlevle = \"info\"",
            "unknown key debug.levle (did you mean \"level\"?)",
        ),
        (
            "[proxy_plugins.p]\ntype = \"snapshot\"\naddress = \"/s\"\nplatfrom = \"linux\"",
            "unknown key proxy_plugins.p.platfrom (did you mean \"platform\"?)",
        ),
        ("oom_score = 5", "unknown key oom_score: it is ignored"),
        (
            "[grpc]\ntcp_address = \"x\"",
            "unknown key grpc.tcp_address: it is ignored",
        ),
    ];
    for (text, expected) in cases {
        let dir = Dir::new();
        let path = dir.write("c.toml", &format!("version = 3\n{text}\n"));
        let resolved = resolve(&path, false).unwrap();
        let messages: Vec<&str> = resolved
            .diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert!(
            messages.len() == 1 && messages[0].starts_with(expected),
            "{text}: {messages:?}"
        );
    }
}

#[test]
fn imports_merge_like_containerd_and_follow_globs_and_cycles() {
    let dir = Dir::new();
    let main = dir.write(
        "main.toml",
        "version = 3\nroot = \"/main\"\nstate = \"/state\"\nimports = [\"conf.d/*.toml\"]\ndisabled_plugins = [\"io.test.plain.v1.plain\"]\n\
[plugins.\"io.test.store.v1.local\"]\npath = \"main-path\"\nlabels = [\"x\", \"y\"]\n[plugins.\"io.test.store.v1.local\".gc]\ninterval = \"2h\"\n",
    );
    // Imported files, read in sorted order; 20 imports main back (a cycle) and 10 again.
    dir.write(
        "conf.d/10-first.toml",
        "version = 2\nroot = \"/first\"\ndisabled_plugins = [\"io.test.plain.v1.plain\", \"io.containerd.grpc.v1.version\"]\n\
[plugins.\"io.test.store.v1.local\"]\nlabels = [\"z\"]\n[plugins.\"io.test.store.v1.local\".gc]\nenabled = false\n",
    );
    dir.write(
        "conf.d/20-second.toml",
        "version = 3\nimports = [\"../main.toml\", \"10-first.toml\"]\n[plugins.\"io.test.store.v1.local\"]\nmax_size = 99\n",
    );
    dir.write("conf.d/ignored.txt", "not toml at all [[[");
    let resolved = resolve(&main, true).unwrap();
    assert_eq!(
        resolved.config.root,
        PathBuf::from("/first"),
        "imports override scalars"
    );
    assert_eq!(resolved.config.state, PathBuf::from("/state"));
    assert_eq!(
        resolved.config.disabled_plugins,
        ["io.test.plain.v1.plain", "io.containerd.grpc.v1.version"],
        "top-level lists append without duplicates"
    );
    let expected = StoreConfig {
        path: "main-path".to_string(),
        max_size: 99,
        labels: vec!["z".to_string()],
        gc: Gc {
            enabled: false,
            interval: "2h".to_string(),
        },
    };
    assert_eq!(
        store(&resolved),
        expected,
        "plugin tables merge deeply; lists inside are replaced"
    );
    let files: Vec<String> = resolved
        .files
        .iter()
        .map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        files,
        ["main.toml", "conf.d/10-first.toml", "conf.d/20-second.toml"]
    );
    assert_eq!(resolved.config.imports, ["conf.d/*.toml"]);
}

#[test]
fn errors_in_imported_files_name_the_imported_file() {
    let dir = Dir::new();
    let main = dir.write("main.toml", "version = 3\nimports = [\"more.toml\"]\n");
    dir.write(
        "more.toml",
        "version = 3\n\n[plugins.\"io.test.store.v1.local\"]\nmax_size = -1\n",
    );
    let error = resolve(&main, false).unwrap_err();
    assert_eq!(
        error_text(&dir, &error),
        "DIR/more.toml:4:12: plugin io.test.store.v1.local: max_size: invalid value: integer `-1`, expected u64"
    );
}

#[test]
fn migration_hooks_run_once_per_version_step() {
    let cases: &[(&str, &[u32])] = &[
        ("version = 1\n", &[1, 2]),
        ("version = 2\n", &[2]),
        ("version = 3\n", &[]),
    ];
    for (text, steps) in cases {
        let dir = Dir::new();
        let path = dir.write("c.toml", text);
        MIGRATION_STEPS.with(|steps| steps.borrow_mut().clear());
        let registry = registry();
        ConfigLoader::new(&registry).load(&path).unwrap();
        let ran = MIGRATION_STEPS.with(|steps| steps.borrow().clone());
        assert_eq!(ran, *steps, "{text}");
    }
    assert!(MIGRATIONS.load(Ordering::SeqCst) >= 3);
}

#[test]
fn migrated_file_holds_only_the_keys_the_user_set() {
    let dir = Dir::new();
    let path = dir.write(
        "old.toml",
        "version = 2\nroot = \"/r\"\nimports = [\"x/*.toml\"]\n[plugins.\"io.test.store.v1.local\"]\nold_name = \"renamed\"\n",
    );
    let registry = registry();
    let migrated = ConfigLoader::new(&registry).migrate_file(&path).unwrap();
    let table: toml::Table = migrated.parse().unwrap();
    let expected: toml::Table = "version = 3\nroot = \"/r\"\nimports = [\"x/*.toml\"]\n[plugins.\"io.test.store.v1.local\"]\npath = \"renamed\"\n"
        .parse()
        .unwrap();
    assert_eq!(table, expected, "{migrated}");
}

#[test]
fn default_config_lists_every_plugin_and_loads_back_to_the_same() {
    let registry = registry();
    let text = default_toml(&registry);
    let table: toml::Table = text.parse().unwrap();
    let plugins = table["plugins"].as_table().unwrap();
    let keys: Vec<&str> = plugins.keys().map(String::as_str).collect();
    assert_eq!(keys, ["io.test.shape.v1.shape", "io.test.store.v1.local"]);
    assert_eq!(
        plugins["io.test.store.v1.local"]["max_size"].as_integer(),
        Some(1024)
    );
    assert_eq!(table["version"].as_integer(), Some(3));
    assert_eq!(
        table["grpc"]["address"].as_str(),
        Some("/run/plinth/plinthd.sock")
    );

    let dir = Dir::new();
    let resolved = resolve(&dir.write("d.toml", &text), true).unwrap();
    assert_eq!(store(&resolved), StoreConfig::default());
    assert_eq!(
        resolved.effective_toml(&registry),
        text,
        "effective config of the defaults is the defaults"
    );
}

#[test]
fn effective_config_fills_in_defaults_and_keeps_unknown_sections() {
    let dir = Dir::new();
    let path = dir.write(
        "c.toml",
        "version = 3\n[plugins.\"io.test.store.v1.local\"]\nmax_size = 5\n[plugins.\"io.elsewhere.v1.x\"]\nkept = true\n",
    );
    let registry = registry();
    let resolved = resolve(&path, false).unwrap();
    let table: toml::Table = resolved.effective_toml(&registry).parse().unwrap();
    let store = &table["plugins"]["io.test.store.v1.local"];
    assert_eq!(store["max_size"].as_integer(), Some(5));
    assert_eq!(store["path"].as_str(), Some("blobs"));
    assert_eq!(
        table["plugins"]["io.elsewhere.v1.x"]["kept"].as_bool(),
        Some(true)
    );
}

#[test]
fn init_timeouts_and_watchdog_come_from_timeouts_section() {
    let dir = Dir::new();
    let path = dir.write(
        "c.toml",
        "version = 3\n[timeouts]\n\"plinth.init\" = \"30s\"\n\"plinth.init.io.test.plain.v1.plain\" = \"1m30s\"\n\"plinth.init-watchdog\" = \"250ms\"\n\"io.containerd.timeout.other\" = \"1s\"\n",
    );
    let resolved = resolve(&path, true).unwrap();
    let (per_plugin, default) = resolved.init_timeouts();
    assert_eq!(default, Some(std::time::Duration::from_secs(30)));
    assert_eq!(
        per_plugin["io.test.plain.v1.plain"],
        std::time::Duration::from_secs(90)
    );
    assert_eq!(per_plugin.len(), 1);
    assert_eq!(
        resolved.init_watchdog(),
        std::time::Duration::from_millis(250)
    );
}

#[test]
fn embedded_defaults_resolve_cleanly() {
    let registry = registry();
    let resolved = ConfigLoader::new(&registry)
        .defaults()
        .resolve(&registry, true)
        .unwrap();
    assert_eq!(store(&resolved), StoreConfig::default());
    assert!(resolved.files.is_empty());
    assert_eq!(resolved.config.root, PathBuf::from("/var/lib/plinth"));
}

#[test]
fn plugins_left_out_of_the_build_say_how_to_get_them() {
    let dir = Dir::new();
    let left_out = vec![(
        "io.test.gone.v1.gone".to_string(),
        "enable feature `gone`".to_string(),
    )];
    let registry = registry();
    let path = dir.write(
        "c.toml",
        "version = 3\ndisabled_plugins = [\"io.test.gone.v1.gone\"]\n[plugins.\"io.test.gone.v1.gone\"]\nx = 1\n",
    );
    let resolved = ConfigLoader::new(&registry)
        .load(&path)
        .unwrap()
        .with_left_out(left_out.clone())
        .resolve(&registry, false)
        .unwrap();
    let messages: Vec<String> = resolved
        .diagnostics
        .iter()
        .map(|d| error_text(&dir, d))
        .collect();
    assert_eq!(
        messages,
        [
            "DIR/c.toml:2:21: disabled_plugins names plugin io.test.gone.v1.gone, which is not compiled into this build; enable feature `gone`",
            "DIR/c.toml:3:10: section for plugin io.test.gone.v1.gone, which is not compiled into this build; enable feature `gone`",
        ]
    );
    let required = dir.write(
        "r.toml",
        "version = 3\nrequired_plugins = [\"io.test.gone.v1.gone\"]\n",
    );
    let error = ConfigLoader::new(&registry)
        .load(&required)
        .unwrap()
        .with_left_out(left_out)
        .resolve(&registry, false)
        .unwrap_err();
    assert_eq!(
        error_text(&dir, &error),
        "DIR/r.toml:2:21: required plugin io.test.gone.v1.gone is not compiled into this build; enable feature `gone`"
    );
}

/// What a host says of the plugins it knows of but no build of it provides.
const NOT_HERE: &str = "a containerd plugin this host does not provide";

fn not_provided() -> Vec<(String, String)> {
    [
        "io.containerd.grpc.v1.cri",
        "io.containerd.snapshotter.v1.aufs",
    ]
    .iter()
    .map(|uri| (uri.to_string(), NOT_HERE.to_string()))
    .collect()
}

#[test]
fn plugins_no_build_provides_say_so_without_a_hint() {
    let registry = registry();
    // (file text, the expected reports)
    let cases: &[(&str, &[&str])] = &[
        (
            "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"x\"\n",
            &[
                "DIR/c.toml:2:10: section for plugin io.containerd.grpc.v1.cri, a containerd plugin this host does not provide; remove it",
            ],
        ),
        (
            "version = 3\ndisabled_plugins = [\"io.containerd.snapshotter.v1.aufs\", \"io.containerd.grpc.v1.cri\"]\n",
            &[
                "DIR/c.toml:2:21: disabled_plugins names plugin io.containerd.snapshotter.v1.aufs, a containerd plugin this host does not provide; remove it",
                "DIR/c.toml:2:58: disabled_plugins names plugin io.containerd.grpc.v1.cri, a containerd plugin this host does not provide; remove it",
            ],
        ),
        // Not on the list: unknown, with a hint only when a registered name is close.
        (
            "version = 3\ndisabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.grpc.v1.versoin\"]\n",
            &[
                "DIR/c.toml:2:21: disabled_plugins names unknown plugin io.containerd.snapshotter.v1.btrfs",
                "DIR/c.toml:2:59: disabled_plugins names unknown plugin io.containerd.grpc.v1.versoin (did you mean \"io.containerd.grpc.v1.version\"?)",
            ],
        ),
        // A registered plugin of the same URI wins over the list.
        (
            "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.version\"]\n",
            &[],
        ),
    ];
    for (text, expected) in cases {
        let dir = Dir::new();
        let path = dir.write("c.toml", text);
        let mut not_provided = not_provided();
        not_provided.push((
            "io.containerd.grpc.v1.version".to_string(),
            NOT_HERE.to_string(),
        ));
        let resolved = ConfigLoader::new(&registry)
            .load(&path)
            .unwrap()
            .with_not_provided(not_provided)
            .resolve(&registry, false)
            .unwrap();
        let messages: Vec<String> = resolved
            .diagnostics
            .iter()
            .map(|d| error_text(&dir, d))
            .collect();
        assert_eq!(messages, *expected, "{text}");
    }
}

#[test]
fn a_required_plugin_no_build_provides_is_an_error_saying_so() {
    let registry = registry();
    let dir = Dir::new();
    let path = dir.write(
        "c.toml",
        "version = 3\nrequired_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    );
    let error = ConfigLoader::new(&registry)
        .load(&path)
        .unwrap()
        .with_not_provided(not_provided())
        .resolve(&registry, false)
        .unwrap_err();
    assert_eq!(
        error_text(&dir, &error),
        "DIR/c.toml:2:21: required plugin io.containerd.grpc.v1.cri is a containerd plugin this host does not provide: remove it from required_plugins"
    );
}

/// A closed set, decoded as an enum: a bad value fails decoding, naming the values allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Shared,
    Isolated,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct PoolConfig {
    mode: Mode,
    workers: u32,
    limits: Limits,
    /// Not in the defaults' table (skipped when `None`), still a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
struct Limits {
    low: u32,
    high: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: Mode::Shared,
            workers: 1,
            limits: Limits { low: 0, high: 10 },
            owner: None,
        }
    }
}

/// Rules the types cannot say.
impl ValidateConfig for PoolConfig {
    fn validate(&self) -> Result<(), ConfigViolation> {
        if self.workers == 0 {
            return Err(ConfigViolation::new("workers", "must be at least 1"));
        }
        if self.limits.low > self.limits.high {
            return Err(ConfigViolation::new(
                "limits.low",
                format!(
                    "{} is above limits.high ({})",
                    self.limits.low, self.limits.high
                ),
            ));
        }
        Ok(())
    }
}

fn pool_registry() -> Registry {
    Registry::builder()
        .add_static(
            Registration::new("io.test.pool.v1", "pool", nothing).validated_config::<PoolConfig>(),
        )
        .build()
        .unwrap()
}

#[test]
fn unknown_plugin_keys_get_a_hint_from_the_keys_beside_them() {
    let registry = pool_registry();
    // (section body, the expected report)
    let cases: &[(&str, &str)] = &[
        (
            "workres = 2",
            "has no config key workres (did you mean \"workers\"?)",
        ),
        // A field the defaults do not serialise.
        (
            "ownr = \"me\"",
            "has no config key ownr (did you mean \"owner\"?)",
        ),
        // Nested: compared with the keys of its own table, not the top level's.
        (
            "[plugins.\"io.test.pool.v1.pool\".limits]\nhihg = 3",
            "has no config key limits.hihg (did you mean \"high\"?)",
        ),
        (
            "[plugins.\"io.test.pool.v1.pool\".limits]\nmode = 3",
            "has no config key limits.mode; remove it",
        ),
    ];
    for (body, expected) in cases {
        let dir = Dir::new();
        let path = dir.write(
            "c.toml",
            &format!("version = 3\n[plugins.\"io.test.pool.v1.pool\"]\n{body}\n"),
        );
        let resolved = ConfigLoader::new(&registry)
            .load(&path)
            .unwrap()
            .resolve(&registry, false)
            .unwrap();
        let messages: Vec<&str> = resolved
            .diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect();
        assert!(
            messages.len() == 1 && messages[0].contains(expected),
            "{body}: {messages:?}"
        );
    }
}

#[test]
fn values_a_plugin_does_not_allow_are_errors_with_place_plugin_and_key() {
    let registry = pool_registry();
    let section = "version = 3\n[plugins.\"io.test.pool.v1.pool\"]\n";
    // (section body, strict, expected error or None when the config is good)
    let cases: &[(&str, bool, Option<&str>)] = &[
        ("mode = \"isolated\"\nworkers = 4\n", false, None),
        ("", true, None),
        (
            "mode = \"sometimes\"\n",
            false,
            Some(
                "DIR/c.toml:3:8: plugin io.test.pool.v1.pool: mode: unknown variant `sometimes`, expected `shared` or `isolated`",
            ),
        ),
        (
            "workers = 0\n",
            false,
            Some("DIR/c.toml:3:11: plugin io.test.pool.v1.pool: workers: must be at least 1"),
        ),
        (
            "[plugins.\"io.test.pool.v1.pool\".limits]\nlow = 11\n",
            false,
            Some(
                "DIR/c.toml:4:7: plugin io.test.pool.v1.pool: limits.low: 11 is above limits.high (10)",
            ),
        ),
    ];
    for (body, strict, expected) in cases {
        let dir = Dir::new();
        let path = dir.write("c.toml", &format!("{section}{body}"));
        let result = ConfigLoader::new(&registry)
            .load(&path)
            .unwrap()
            .resolve(&registry, *strict);
        match (result, expected) {
            (Ok(_), None) => {}
            (Err(error), Some(expected)) => assert_eq!(error_text(&dir, &error), *expected),
            (Ok(_), Some(expected)) => panic!("{body}: accepted, expected {expected}"),
            (Err(error), None) => panic!("{body}: {error}"),
        }
    }
}

#[test]
fn debug_values_outside_their_sets_are_errors() {
    // (file text, expected error or None)
    let cases: &[(&str, Option<&str>)] = &[
        ("[debug]\nlevel = \"debug\"\nformat = \"json\"\n", None),
        ("[debug]\nlevel = \"WARN\"\n", None),
        (
            "[debug]\nlevel = \"verbose\"\n",
            Some(
                "DIR/c.toml:3:9: debug.level: \"verbose\" is not a log level: use \"trace\", \"debug\", \"info\", \"warn\" or \"error\"",
            ),
        ),
        (
            "[debug]\nformat = \"xml\"\n",
            Some(
                "DIR/c.toml:3:10: debug.format: \"xml\" is not a log format: use \"text\" or \"json\"",
            ),
        ),
    ];
    for (text, expected) in cases {
        let dir = Dir::new();
        let path = dir.write("c.toml", &format!("version = 3\n{text}"));
        match (resolve(&path, false), expected) {
            (Ok(_), None) => {}
            (Err(error), Some(expected)) => assert_eq!(error_text(&dir, &error), *expected),
            (Ok(_), Some(expected)) => panic!("{text}: accepted, expected {expected}"),
            (Err(error), None) => panic!("{text}: {error}"),
        }
    }
}

#[test]
fn a_bad_value_set_outside_the_file_has_no_place_in_it() {
    // As `plinthd --log-level verbose` sets it: after loading, before resolving.
    let dir = Dir::new();
    let path = dir.write("c.toml", "version = 3\n");
    let registry = registry();
    let mut loaded = ConfigLoader::new(&registry).load(&path).unwrap();
    loaded.config_mut().debug.level = "verbose".to_string();
    let error = loaded.resolve(&registry, false).unwrap_err();
    assert_eq!(
        error.to_string(),
        "config: debug.level: \"verbose\" is not a log level: use \"trace\", \"debug\", \"info\", \"warn\" or \"error\""
    );
}

/// containerd's rule: a pattern with glob characters may match nothing; a plain path must
/// name a file (the refusal is in the table of errors above).
#[test]
fn an_import_pattern_may_match_nothing() {
    let dir = Dir::new();
    let path = dir.write(
        "c.toml",
        "version = 3\nimports = [\"conf.d/*.toml\", \"none-?.toml\", \"x[0-9].toml\"]\n",
    );
    let resolved = resolve(&path, true).expect("patterns that match nothing are fine");
    assert_eq!(resolved.files.len(), 1, "{:?}", resolved.files);
}
