//! End-to-end tests of shared-library plugins: a plinthd built with the `dynamic-loader`
//! feature, the example plugin library and a set of bad ones, driven with the stock `ctr`.
//!
//! `cargo test --workspace` builds plinthd without the feature, so this test builds what it
//! needs itself, once per run, in one `cargo build` (so that plinthd and the libraries share
//! every crate, as the fingerprint demands) into its own target directory under
//! `CARGO_TARGET_TMPDIR` (so it never replaces the `plinthd` the other tests run, and never
//! waits on the outer build's lock). A cold run compiles plinthd's dependencies once more;
//! later runs only rebuild what changed.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use plinth_tests::{Daemon, Start, start_program_in};

/// What the builds produced.
struct Built {
    plinthd: PathBuf,
    /// `hello-plugin` and its bad siblings (`examples/`), by name.
    libraries: Vec<(&'static str, PathBuf)>,
}

impl Built {
    fn library(&self, name: &str) -> &Path {
        &self
            .libraries
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no library {name}"))
            .1
    }
}

fn cargo(target_dir: &Path, args: &[&str]) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .arg("build")
        .arg("--target-dir")
        .arg(target_dir)
        .args(args)
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dynamic-loader-build");
        let started = std::time::Instant::now();
        // plinthd with the loader and the built-in plugins the tests use (the content store
        // and the native snapshotter, with the metadata plugin and the services over them for
        // the reload test's `ctr` load), and the libraries, in one build.
        cargo(
            &target,
            &[
                "-p",
                "plinthd",
                "-p",
                "hello-plugin",
                "--no-default-features",
                "--features",
                "plinthd/dynamic-loader,plinthd/introspection,plinthd/version,plinthd/content-local,\
                 plinthd/snapshotter-native,plinthd/metadata-redb,plinthd/content-service,\
                 plinthd/snapshots-service,hello-plugin/bad-libraries",
                "--bin",
                "plinthd",
                "--lib",
                "--examples",
            ],
        );
        // A library with another build fingerprint: the loading bench's minimal plugin,
        // built with plinth-core's `linkme` backend (plinthd uses inventory).
        cargo(
            &target,
            &[
                "-p",
                "plinth-dynamic-loader",
                "--example",
                "bench_plugin",
                "--features",
                "plinth-core/linkme",
            ],
        );
        eprintln!("dynamic-loader test builds took {:.1?}", started.elapsed());
        let debug = target.join("debug");
        let so = |dir: &Path, name: &str| {
            let path = dir.join(format!(
                "{}{name}{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            ));
            assert!(path.exists(), "{} was not built", path.display());
            path
        };
        let examples = debug.join("examples");
        Built {
            plinthd: debug.join("plinthd"),
            libraries: vec![
                ("hello", so(&debug, "hello_plugin")),
                (
                    "panic_in_registration",
                    so(&examples, "panic_in_registration"),
                ),
                ("panic_in_init", so(&examples, "panic_in_init")),
                ("duplicate_builtin", so(&examples, "duplicate_builtin")),
                ("no_entry", so(&examples, "no_entry")),
                ("linkme_fingerprint", so(&examples, "bench_plugin")),
            ]
            .into_iter()
            .chain(HAND_MADE.iter().map(|name| (*name, so(&examples, name))))
            .collect(),
        }
    })
}

/// The bad libraries with a hand-made entry symbol (`examples/hand_made/`), one per refusal
/// of the header or the handover.
const HAND_MADE: &[&str] = &[
    "null_header",
    "misaligned_header",
    "bad_magic",
    "abi_version",
    "unreadable_fingerprint",
    "fingerprint_rustc",
    "fingerprint_target",
    "fingerprint_plinth_core",
    "fingerprint_panic",
    "fingerprint_debug_assertions",
    "handover_unknown_code",
    "handover_null_registrations",
];

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The file name a library called `stem` gets in the plugin directory.
fn file_name(stem: &str) -> String {
    format!(
        "{stem}-{}-{}.{}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        std::env::consts::DLL_EXTENSION
    )
}

/// A temporary daemon directory with an empty `plugins/` (mode 0755).
fn daemon_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    chmod(&plugins, 0o755);
    (dir, plugins)
}

/// Copies `library` into `plugins` as `<stem>-<os>-<arch>.<ext>`, mode 0644.
fn install(library: &Path, plugins: &Path, stem: &str) -> PathBuf {
    let path = plugins.join(file_name(stem));
    std::fs::copy(library, &path).unwrap();
    chmod(&path, 0o644);
    path
}

fn config(plugins: &Path, extra: &str) -> String {
    format!(
        "version = 3\nplugin_dir = {:?}\n{extra}",
        plugins.display().to_string()
    )
}

fn start(dir: tempfile::TempDir, plugins: &Path, extra_config: &str) -> Daemon {
    let options = Start {
        config: config(plugins, extra_config),
        ..Start::default()
    };
    start_program_in(&built().plinthd, dir, options)
        .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"))
}

/// `ctr plugins ls` as (type, id, status) rows, in the order listed.
fn plugin_rows(daemon: &Daemon) -> Vec<(String, String, String)> {
    let out = daemon.ctr(&["plugins", "ls"]);
    out.ok()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3).then(|| {
                (
                    fields[0].to_string(),
                    fields[1].to_string(),
                    fields[fields.len() - 1].to_string(),
                )
            })
        })
        .collect()
}

/// The `ctr plugins ls -d` block of the plugin with this type and id.
fn detail(daemon: &Daemon, plugin_type: &str, id: &str) -> String {
    let out = daemon.ctr(&["plugins", "ls", "-d"]);
    let text = out.ok().to_string();
    // Blocks start at a `Type:` line.
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("Type:") || blocks.is_empty() {
            blocks.push(String::new());
        }
        let block = blocks.last_mut().unwrap();
        block.push_str(line);
        block.push('\n');
    }
    blocks
        .into_iter()
        .find(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_string()
            };
            field("Type:") == plugin_type && field("ID:") == id
        })
        .unwrap_or_else(|| panic!("no {plugin_type}.{id} in `ctr plugins ls -d`:\n{text}"))
}

fn stop(mut daemon: Daemon) {
    let status = daemon.stop(Duration::from_secs(10));
    assert!(
        status.success(),
        "plinthd exited {status}:\n{}",
        daemon.log()
    );
}

#[test]
fn hello_plugin_loads_after_the_content_store_and_uses_it() {
    let (dir, plugins) = daemon_dir();
    install(built().library("hello"), &plugins, "hello");
    let root = dir.path().join("root");
    let daemon = start(
        dir,
        &plugins,
        "[plugins.\"io.plinth.example.v1.hello\"]\ngreeting = \"hi from the test\"\n",
    );

    let rows = plugin_rows(&daemon);
    let position = |t: &str, id: &str| {
        rows.iter()
            .position(|(rt, rid, _)| rt == t && rid == id)
            .unwrap_or_else(|| panic!("{t}.{id} not listed: {rows:?}"))
    };
    let hello = position("io.plinth.example.v1", "hello");
    let content = position("io.containerd.content.v1", "content");
    assert_eq!(rows[hello].2, "ok", "{rows:?}\n{}", daemon.log());
    assert!(
        content < hello,
        "hello is listed before what it requires: {rows:?}"
    );
    // The built-in registrations the library carries (it links plinth-builtin-plugins) are
    // recognised as copies: no duplicate, no error entry.
    assert!(rows.iter().all(|(_, _, status)| status == "ok"), "{rows:?}");
    assert_eq!(
        rows.iter()
            .filter(|(t, id, _)| t == "io.containerd.content.v1" && id == "content")
            .count(),
        1
    );

    let block = detail(&daemon, "io.plinth.example.v1", "hello");
    assert!(
        block.contains("greeting") && block.contains("hi from the test"),
        "{block}"
    );
    let content_root = root.join("io.containerd.content.v1.content");
    assert!(
        block.contains("content_root") && block.contains(&content_root.display().to_string()),
        "{block}"
    );
    stop(daemon);
}

/// How a case puts its library (or directory) in place.
enum Setup {
    /// Install the named build.
    Library(&'static str),
    /// Bytes that are no library at all.
    RandomBytes,
    /// The hello library cut inside its loadable segments (`dlopen` of it would die of
    /// SIGBUS: the loader checks the ELF program headers first).
    Truncated,
    /// A copy of a system library that is not a Plinth plugin (zlib).
    SystemLibrary,
    /// The hello library with mode 0664.
    GroupWritableFile,
    /// The hello library in a plugin directory with mode 0775.
    GroupWritableDir,
    /// The hello library through a symlink into a directory anyone can write.
    SymlinkIntoWorldWritableDir,
}

fn system_library() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib64/libz.so.1",
        "/usr/lib/libz.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("no zlib found at {candidates:?} (zlib1g is essential on Debian)")
        })
}

/// (case, setup, failed plugin (type, id), fragments its error must contain).
type Case = (
    &'static str,
    Setup,
    (&'static str, &'static str),
    &'static [&'static str],
);

#[test]
fn bad_libraries_fail_alone_and_plinthd_keeps_serving() {
    // For `io.plinth.dynamic.v1` entries the id is the library's file stem: `<stem>-<os>-<arch>`,
    // the table gives `<stem>`.
    let cases: &[Case] = &[
        (
            "random bytes",
            Setup::RandomBytes,
            ("io.plinth.dynamic.v1", "random"),
            &[
                "is not a loadable shared library: not an ELF file",
                "random-",
            ],
        ),
        (
            "truncated library",
            Setup::Truncated,
            ("io.plinth.dynamic.v1", "truncated"),
            &[
                "is not a loadable shared library: truncated: loadable segment",
                "truncated-",
            ],
        ),
        (
            "no entry symbol",
            Setup::Library("no_entry"),
            ("io.plinth.dynamic.v1", "case"),
            &[
                "has no entry symbol `plinth_plugin_entry_v1`",
                "export_plugins!()",
            ],
        ),
        (
            "a system library",
            Setup::SystemLibrary,
            ("io.plinth.dynamic.v1", "zlib"),
            &["has no entry symbol `plinth_plugin_entry_v1`"],
        ),
        (
            "fingerprint mismatch",
            Setup::Library("linkme_fingerprint"),
            ("io.plinth.dynamic.v1", "case"),
            &[
                "build fingerprint mismatch",
                "plinth-core backend: expected `inventory`, found `linkme`",
                "plinth-core identity: expected `TypeId(",
            ],
        ),
        (
            "the entry returns no header",
            Setup::Library("null_header"),
            ("io.plinth.dynamic.v1", "case"),
            &["entry symbol returned no header (it failed inside the library)"],
        ),
        (
            "a misaligned header",
            Setup::Library("misaligned_header"),
            ("io.plinth.dynamic.v1", "case"),
            &["handing over its registrations failed: the header pointer is misaligned"],
        ),
        (
            "bad magic",
            Setup::Library("bad_magic"),
            ("io.plinth.dynamic.v1", "case"),
            &[r#"bad magic in the plugin header: expected "PLINTHDL", found "NOTPLINT""#],
        ),
        (
            "another ABI version",
            Setup::Library("abi_version"),
            ("io.plinth.dynamic.v1", "case"),
            &["plugin ABI version mismatch: expected 1, found 2"],
        ),
        (
            "a fingerprint that is not UTF-8",
            Setup::Library("unreadable_fingerprint"),
            ("io.plinth.dynamic.v1", "case"),
            &["unreadable build fingerprint: not UTF-8: invalid utf-8 sequence"],
        ),
        (
            "fingerprint mismatch: rustc",
            Setup::Library("fingerprint_rustc"),
            ("io.plinth.dynamic.v1", "case"),
            &[
                "build fingerprint mismatch",
                "as this plinthd): rustc: expected `rustc 1.",
                "found `rustc 0.0.0 (hand-made)`\n",
            ],
        ),
        (
            "fingerprint mismatch: target",
            Setup::Library("fingerprint_target"),
            ("io.plinth.dynamic.v1", "case"),
            &[
                "as this plinthd): target: expected `",
                "found `hand-made-target`\n",
            ],
        ),
        (
            "fingerprint mismatch: plinth-core version",
            Setup::Library("fingerprint_plinth_core"),
            ("io.plinth.dynamic.v1", "case"),
            &[concat!(
                "as this plinthd): plinth-core: expected `",
                env!("CARGO_PKG_VERSION"),
                "`, found `0.0.0-hand-made`\n"
            )],
        ),
        (
            "fingerprint mismatch: panic strategy",
            Setup::Library("fingerprint_panic"),
            ("io.plinth.dynamic.v1", "case"),
            &["as this plinthd): panic: expected `unwind`, found `abort`\n"],
        ),
        (
            "fingerprint mismatch: debug assertions",
            Setup::Library("fingerprint_debug_assertions"),
            ("io.plinth.dynamic.v1", "case"),
            &["as this plinthd): debug-assertions: expected `on`, found `hand-made`\n"],
        ),
        (
            "handover returns an unknown code",
            Setup::Library("handover_unknown_code"),
            ("io.plinth.dynamic.v1", "case"),
            &["handing over its registrations failed: unknown return code 7"],
        ),
        (
            "handover reports registrations at a null address",
            Setup::Library("handover_null_registrations"),
            ("io.plinth.dynamic.v1", "case"),
            &["handing over its registrations failed: null or misaligned registrations"],
        ),
        (
            "panic while handing over registrations",
            Setup::Library("panic_in_registration"),
            ("io.plinth.dynamic.v1", "case"),
            &[
                "panicked while handing over its registrations",
                "the default config of io.plinth.example.v1.panicky cannot be built",
            ],
        ),
        (
            "panic in a plugin's init",
            Setup::Library("panic_in_init"),
            ("io.plinth.example.v1", "panics-in-init"),
            &["panicked (in the plugin library)", "panics-in-init gave up"],
        ),
        (
            "duplicate URI with a built-in",
            Setup::Library("duplicate_builtin"),
            ("io.plinth.dynamic.v1", "case"),
            &["plugin io.containerd.content.v1.content is already registered by this binary"],
        ),
        (
            "group-writable library",
            Setup::GroupWritableFile,
            ("io.plinth.dynamic.v1", "case"),
            &["refused", "is writable by group (mode 0664)"],
        ),
        (
            "group-writable plugin directory",
            Setup::GroupWritableDir,
            ("io.plinth.dynamic.v1", "plugin_dir"),
            &["plugin directory", "is writable by group (mode 0775)"],
        ),
        (
            "symlink into a world-writable directory",
            Setup::SymlinkIntoWorldWritableDir,
            ("io.plinth.dynamic.v1", "case"),
            &[
                "resolved to",
                "directory of the symlink target",
                "is writable by group and others (mode 0777)",
            ],
        ),
    ];
    for (case, setup, (plugin_type, id), fragments) in cases {
        let id = &if *plugin_type == "io.plinth.dynamic.v1" && *id != "plugin_dir" {
            file_name(id)
                .trim_end_matches(&format!(".{}", std::env::consts::DLL_EXTENSION))
                .to_string()
        } else {
            id.to_string()
        };
        let (dir, plugins) = daemon_dir();
        let hello = built().library("hello");
        match setup {
            Setup::Library(name) => {
                install(built().library(name), &plugins, "case");
            }
            Setup::RandomBytes => {
                let path = plugins.join(file_name("random"));
                plinth_tests::random_file(&path, 64 * 1024, 6);
                chmod(&path, 0o644);
            }
            Setup::Truncated => {
                let bytes = std::fs::read(hello).unwrap();
                let path = plugins.join(file_name("truncated"));
                // A debug build is mostly debug info, past the loadable segments: cut at a
                // sixteenth so that the cut lands in code.
                std::fs::write(&path, &bytes[..bytes.len() / 16]).unwrap();
                chmod(&path, 0o644);
            }
            Setup::SystemLibrary => {
                install(&system_library(), &plugins, "zlib");
            }
            Setup::GroupWritableFile => {
                let path = install(hello, &plugins, "case");
                chmod(&path, 0o664);
            }
            Setup::GroupWritableDir => {
                install(hello, &plugins, "case");
                chmod(&plugins, 0o775);
            }
            Setup::SymlinkIntoWorldWritableDir => {
                let elsewhere = dir.path().join("elsewhere");
                std::fs::create_dir(&elsewhere).unwrap();
                chmod(&elsewhere, 0o777);
                let target = install(hello, &elsewhere, "real");
                std::os::unix::fs::symlink(&target, plugins.join(file_name("case"))).unwrap();
            }
        }
        let daemon = start(dir, &plugins, "");
        let rows = plugin_rows(&daemon);
        let row = rows
            .iter()
            .find(|(t, i, _)| t == plugin_type && i == id)
            .unwrap_or_else(|| panic!("{case}: {plugin_type}.{id} not listed: {rows:?}"));
        assert_eq!(row.2, "error", "{case}: {rows:?}");
        // Nothing else suffered: the built-ins are ok.
        for (t, i, status) in &rows {
            if t.starts_with("io.containerd.") {
                assert_eq!(status, "ok", "{case}: {t}.{i} is {status}");
            }
        }
        let block = detail(&daemon, plugin_type, id);
        for fragment in *fragments {
            assert!(
                block.contains(fragment),
                "{case}: {fragment:?} missing in\n{block}"
            );
        }
        // And the daemon still serves.
        daemon.ctr(&["version"]).ok();
        stop(daemon);
    }
}

#[test]
fn all_libraries_together_each_report_alone() {
    let (dir, plugins) = daemon_dir();
    install(built().library("hello"), &plugins, "a-hello");
    let failing = [
        "panic_in_registration",
        "duplicate_builtin",
        "no_entry",
        "linkme_fingerprint",
    ]
    .into_iter()
    .chain(HAND_MADE.iter().copied());
    for name in failing.clone().chain(["panic_in_init"]) {
        install(built().library(name), &plugins, name);
    }
    std::fs::write(plugins.join("README"), "not a library").unwrap();
    std::fs::write(plugins.join("x-plan9-mips.so"), "another platform").unwrap();
    let daemon = start(dir, &plugins, "");
    let rows = plugin_rows(&daemon);
    let status = |t: &str, id: &str| {
        rows.iter()
            .find(|(rt, rid, _)| rt == t && rid == id)
            .map(|r| r.2.as_str())
            .unwrap_or_else(|| panic!("{t}.{id} not listed: {rows:?}"))
    };
    assert_eq!(status("io.plinth.example.v1", "hello"), "ok");
    assert_eq!(status("io.containerd.content.v1", "content"), "ok");
    assert_eq!(status("io.plinth.example.v1", "panics-in-init"), "error");
    for name in failing {
        let id = file_name(name);
        let id = id.trim_end_matches(&format!(".{}", std::env::consts::DLL_EXTENSION));
        assert_eq!(status("io.plinth.dynamic.v1", id), "error", "{name}");
    }
    // Ignored files are not plugins.
    assert!(
        !rows
            .iter()
            .any(|(_, id, _)| id.contains("README") || id.contains("plan9"))
    );
    stop(daemon);
}

#[test]
fn a_required_library_that_fails_stops_start_up() {
    let (dir, plugins) = daemon_dir();
    let path = plugins.join(file_name("random"));
    plinth_tests::random_file(&path, 4096, 7);
    chmod(&path, 0o644);
    let options = Start {
        config: config(
            &plugins,
            &format!(
                "required_plugins = [\"io.plinth.dynamic.v1.random-{}-{}\"]\n",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
        ),
        ..Start::default()
    };
    match start_program_in(&built().plinthd, dir, options) {
        Ok(daemon) => panic!("plinthd started:\n{}", daemon.log()),
        Err((log, status)) => {
            assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
            assert!(
                log.contains("io.plinth.dynamic.v1.random-") && log.contains("not an ELF file"),
                "{log}"
            );
        }
    }
}

#[test]
fn the_loaders_debug_lines_reach_the_log() {
    // Libraries were loaded before logging started, so `-l debug` showed none of this.
    let (dir, plugins) = daemon_dir();
    install(built().library("hello"), &plugins, "hello");
    std::fs::write(plugins.join("README"), "not a library").unwrap();
    let options = Start {
        config: config(&plugins, ""),
        args: vec!["--log-level".into(), "debug".into()],
        ..Start::default()
    };
    let daemon = start_program_in(&built().plinthd, dir, options)
        .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"));
    let log = daemon.log();
    let readme = plugins.join("README").display().to_string();
    assert!(
        log.lines().any(|line| line.contains("DEBUG")
            && line.contains("ignored: not a plugin library name")
            && line.contains(&readme)),
        "no debug line for the ignored README:\n{log}"
    );
    assert!(
        log.lines().any(|line| line.contains("DEBUG")
            && line.contains("plugin library loaded")
            && line.contains(&file_name("hello"))),
        "no debug line for the loaded library:\n{log}"
    );
    stop(daemon);
}

#[test]
fn config_default_names_the_plugin_dir() {
    let output = plinth_tests::run(&built().plinthd, &["config", "default"]);
    let text = output.ok();
    let table: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("plugin_dir = "))
        .collect();
    assert_eq!(table.len(), 1, "plugin_dir missing from:\n{text}");
    let root = text
        .lines()
        .find_map(|line| line.strip_prefix("root = "))
        .unwrap_or_else(|| panic!("no root in:\n{text}"));
    let root = root.trim_matches('"');
    assert_eq!(table[0], format!("plugin_dir = \"{root}/plugins\""));
}

/// A library put in the plugin directory of a running daemon is loaded by a reload (SIGHUP)
/// while `ctr` ingests, reads, prepares and commits; one that disappears stays loaded, and
/// the reload says so.
#[test]
fn a_library_added_while_running_is_loaded_by_a_reload_under_load() {
    let (dir, plugins) = daemon_dir();
    let daemon = start(dir, &plugins, "");
    let listed = |daemon: &Daemon| {
        plugin_rows(daemon)
            .into_iter()
            .any(|(t, id, status)| t == "io.plinth.example.v1" && id == "hello" && status == "ok")
    };
    assert!(!listed(&daemon));
    plinth_tests::load::Load::around(&daemon, "native", |load| {
        let library = install(built().library("hello"), &plugins, "hello");
        plinth_tests::signal(daemon.pid(), "HUP");
        let line =
            daemon.wait_for_log_line("config reloaded generation=2", Duration::from_secs(60));
        assert!(line.contains("steps=1"), "{line}");
        assert!(listed(&daemon), "{}", daemon.log());
        load.wait_for_rounds(4);
        std::fs::remove_file(&library).unwrap();
        plinth_tests::signal(daemon.pid(), "HUP");
        let line = daemon.wait_for_log_line("nothing to apply", Duration::from_secs(60));
        assert!(
            line.contains("stays loaded (libraries are never unloaded)"),
            "{line}"
        );
        assert!(listed(&daemon));
    });
    stop(daemon);
}
