//! Live reloads of a running plinthd, with the stock `ctr` driving load across each one
//! (content ingests and reads, snapshot prepares and commits, in loops on two threads): every
//! call must succeed, and everything written must still be there afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use plinth_tests::{Daemon, Start, sha256_file, signal, start};

/// How long one reload (or the load's next round) may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the load did so far.
#[derive(Default)]
struct Progress {
    /// Rounds finished (both threads together).
    rounds: usize,
    /// Every call that failed: the command and what it printed.
    failures: Vec<String>,
    /// Digests ingested and read back.
    digests: Vec<String>,
    /// Snapshots committed, by name.
    committed: Vec<String>,
}

/// `ctr` calls in loops on two threads until told to stop.
struct Load<'a> {
    daemon: &'a Daemon,
    snapshotter: &'a str,
    dir: PathBuf,
    stop: AtomicBool,
    progress: Mutex<Progress>,
    advanced: Condvar,
}

impl<'a> Load<'a> {
    fn new(daemon: &'a Daemon, snapshotter: &'a str) -> Load<'a> {
        let dir = daemon.dir().join("load");
        std::fs::create_dir_all(&dir).unwrap();
        Load {
            daemon,
            snapshotter,
            dir,
            stop: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
            advanced: Condvar::new(),
        }
    }

    fn record(&self, update: impl FnOnce(&mut Progress)) {
        let mut progress = self.progress.lock().unwrap();
        update(&mut progress);
        progress.rounds += 1;
        self.advanced.notify_all();
    }

    fn check(&self, what: String, output: &plinth_tests::Output) -> bool {
        if output.status.success() {
            return true;
        }
        self.record(|p| {
            p.failures
                .push(format!("{what}: {} {}", output.stderr, output.stdout))
        });
        false
    }

    /// Ingests a new blob and reads it back, until stopped.
    fn content_loop(&self) {
        for round in 0.. {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let blob = self.dir.join(format!("blob-{round}"));
            std::fs::write(
                &blob,
                format!("blob {round} of the reload load\n").repeat(50),
            )
            .unwrap();
            let digest = sha256_file(&blob);
            let ingest = self.daemon.ctr_files(
                &["content", "ingest", &format!("load-{round}")],
                Some(&blob),
                None,
            );
            if !self.check(format!("ingest {digest}"), &ingest) {
                continue;
            }
            let back = self.dir.join(format!("back-{round}"));
            let get = self
                .daemon
                .ctr_files(&["content", "get", &digest], None, Some(&back));
            if !self.check(format!("get {digest}"), &get) {
                continue;
            }
            if std::fs::read(&back).unwrap() != std::fs::read(&blob).unwrap() {
                self.record(|p| p.failures.push(format!("get {digest}: other bytes")));
                continue;
            }
            self.record(|p| p.digests.push(digest));
        }
    }

    /// Prepares and commits a new snapshot, until stopped.
    fn snapshot_loop(&self) {
        for round in 0.. {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let (active, name) = (format!("active-{round}"), format!("committed-{round}"));
            let snapshots = ["snapshots", "--snapshotter", self.snapshotter];
            let prepare = self
                .daemon
                .ctr(&[&snapshots[..], &["prepare", &active]].concat());
            if !self.check(format!("prepare {active}"), &prepare) {
                continue;
            }
            let commit = self
                .daemon
                .ctr(&[&snapshots[..], &["commit", &name, &active]].concat());
            if !self.check(format!("commit {name}"), &commit) {
                continue;
            }
            self.record(|p| p.committed.push(name));
        }
    }

    /// Waits until the load has done `more` rounds beyond what it has done now.
    fn wait_for_rounds(&self, more: usize) {
        let progress = self.progress.lock().unwrap();
        let target = progress.rounds + more;
        let (progress, timeout) = self
            .advanced
            .wait_timeout_while(progress, TIMEOUT, |p| p.rounds < target)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the load did only {} rounds of {target} within {TIMEOUT:?}",
            progress.rounds
        );
    }

    /// Runs `body` with the load going on two threads, then stops it and checks that no call
    /// failed and that every blob and snapshot written is still there.
    fn around(daemon: &Daemon, snapshotter: &str, body: impl FnOnce(&Load<'_>)) {
        /// Stops the load however the body ends (a failed assertion too), so that the scope
        /// can join its threads and the failure is reported.
        struct StopOnExit<'a>(&'a AtomicBool);
        impl Drop for StopOnExit<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let load = Load::new(daemon, snapshotter);
        std::thread::scope(|scope| {
            let _stop = StopOnExit(&load.stop);
            scope.spawn(|| load.content_loop());
            scope.spawn(|| load.snapshot_loop());
            load.wait_for_rounds(4);
            body(&load);
            load.wait_for_rounds(4);
        });
        let progress = load.progress.into_inner().unwrap();
        assert!(
            progress.failures.is_empty(),
            "calls failed across the reloads:\n{}\nlog:\n{}",
            progress.failures.join("\n"),
            daemon.log()
        );
        let listed = daemon.ctr(&["content", "ls", "-q"]);
        for digest in &progress.digests {
            assert!(listed.ok().contains(digest.as_str()), "{digest} lost");
        }
        let snapshots = daemon.ctr(&["snapshots", "--snapshotter", snapshotter, "ls"]);
        for name in &progress.committed {
            assert!(snapshots.ok().contains(name.as_str()), "{name} lost");
        }
        assert!(progress.digests.len() >= 2 && progress.committed.len() >= 2);
    }
}

/// Writes the daemon's config file anew.
fn write_config(daemon: &Daemon, text: &str) {
    std::fs::write(daemon.dir().join("config.toml"), text).unwrap();
}

/// `plinthctl config reload`, which must succeed; its output.
fn reload(daemon: &Daemon, args: &[&str]) -> String {
    daemon
        .plinthctl(&[&["config", "reload"], args].concat())
        .ok()
        .to_string()
}

/// `plinthctl config reload`, which must fail; what it printed on standard error.
fn refused(daemon: &Daemon) -> String {
    let out = daemon.plinthctl(&["config", "reload"]);
    assert!(!out.status.success(), "reload applied:\n{}", out.stdout);
    out.stderr
}

fn generation(daemon: &Daemon) -> String {
    daemon
        .plinthctl(&["config", "generation"])
        .ok()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// The value of export `key` of plugin `type.id` in `ctr plugins ls -d`.
fn export(daemon: &Daemon, plugin_type: &str, id: &str, key: &str) -> String {
    let text = daemon.ctr(&["plugins", "ls", "-d"]).ok().to_string();
    // Each plugin's block begins at its `Type:` line.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if line.starts_with("Type:") || blocks.is_empty() {
            blocks.push(Vec::new());
        }
        blocks.last_mut().unwrap().push(line);
    }
    let field = |block: &[&str], name: &str| {
        block
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let block = blocks
        .iter()
        .find(|block| field(block, "Type:") == plugin_type && field(block, "ID:") == id)
        .unwrap_or_else(|| panic!("no {plugin_type}.{id}:\n{text}"));
    block
        .iter()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(key)).then(|| words.next().unwrap_or_default().to_string())
        })
        .unwrap_or_default()
}

/// Whether `ctr plugins ls` shows the plugin as ok.
fn plugin_ok(daemon: &Daemon, plugin_type: &str, id: &str) -> bool {
    daemon.ctr(&["plugins", "ls"]).ok().lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.first() == Some(&plugin_type)
            && fields.get(1) == Some(&id)
            && fields.last() == Some(&"ok")
    })
}

const METADATA: (&str, &str) = ("io.containerd.metadata.v1", "redb");
const CONTENT: (&str, &str) = ("io.containerd.content.v1", "content");

#[test]
fn changing_the_sharing_policy_restarts_metadata_and_its_services_under_load() {
    let daemon = start(Start::default());
    let metadata_started = export(&daemon, METADATA.0, METADATA.1, "init_started");
    let content_started = export(&daemon, CONTENT.0, CONTENT.1, "init_started");
    Load::around(&daemon, "native", |load| {
        write_config(
            &daemon,
            "version = 3\n[plugins.\"io.containerd.metadata.v1.redb\"]\ncontent_sharing_policy = \"isolated\"\n",
        );
        let plan = reload(&daemon, &["--dry-run"]);
        assert!(
            plan.contains("dry run: nothing applied; generation 1"),
            "{plan}"
        );
        assert_eq!(generation(&daemon), "1");
        let applied = reload(&daemon, &[]);
        for line in [
            "restart io.containerd.metadata.v1.redb: config section changed",
            "restart io.containerd.grpc.v1.content: requires io.containerd.metadata.v1",
            "restart io.containerd.grpc.v1.snapshots: requires io.containerd.metadata.v1",
            "restart io.containerd.grpc.v1.namespaces: requires io.containerd.metadata.v1",
            "applied: generation 2 serving after",
        ] {
            assert!(applied.contains(line), "no {line:?} in:\n{applied}");
        }
        assert!(
            !applied.contains("io.containerd.content.v1.content"),
            "{applied}"
        );
        load.wait_for_rounds(4);
        // Back again, by SIGHUP this time.
        write_config(&daemon, "version = 3\n");
        signal(daemon.pid(), "HUP");
        daemon.wait_for_log_line("config reloaded generation=3", TIMEOUT);
    });
    assert_eq!(
        export(
            &daemon,
            "io.containerd.grpc.v1",
            "introspection",
            "config_generation"
        ),
        "3"
    );
    assert_ne!(
        export(&daemon, METADATA.0, METADATA.1, "init_started"),
        metadata_started,
        "a restarted plugin reports its new init time"
    );
    assert_eq!(
        export(&daemon, CONTENT.0, CONTENT.1, "init_started"),
        content_started
    );
    assert!(daemon.log().contains("SIGHUP: reloading the config"));
}

#[test]
fn a_snapshotter_disabled_and_enabled_again_under_load() {
    let daemon = start(Start::default());
    let overlay = ["snapshots", "--snapshotter", "overlayfs"];
    assert!(
        plugin_ok(&daemon, "io.containerd.snapshotter.v1", "overlayfs"),
        "overlayfs must work here for this test:\n{}",
        daemon.log()
    );
    daemon
        .ctr(&[&overlay[..], &["prepare", "kept-active"]].concat())
        .ok();
    daemon
        .ctr(&[&overlay[..], &["commit", "kept", "kept-active"]].concat())
        .ok();
    Load::around(&daemon, "native", |load| {
        write_config(
            &daemon,
            "version = 3\ndisabled_plugins = [\"io.containerd.snapshotter.v1.overlayfs\"]\n",
        );
        let applied = reload(&daemon, &[]);
        assert!(
            applied.contains("stop io.containerd.snapshotter.v1.overlayfs: disabled")
                && applied.contains(
                    "restart io.containerd.metadata.v1.redb: requires io.containerd.snapshotter.v1"
                ),
            "{applied}"
        );
        let gone = daemon.ctr(&[&overlay[..], &["ls"]].concat());
        assert!(
            !gone.status.success(),
            "overlayfs still serves:\n{}",
            gone.stdout
        );
        load.wait_for_rounds(4);
        write_config(&daemon, "version = 3\n");
        let applied = reload(&daemon, &[]);
        assert!(
            applied.contains("start io.containerd.snapshotter.v1.overlayfs: enabled"),
            "{applied}"
        );
    });
    let listed = daemon.ctr(&[&overlay[..], &["ls"]].concat());
    assert!(listed.ok().contains("kept"), "{}", listed.stdout);
    assert_eq!(generation(&daemon), "3");
}

/// A short temporary directory for sockets shared between processes.
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rl").tempdir().unwrap()
}

#[test]
fn a_proxy_snapshotter_added_and_removed_under_load() {
    let sockets = socket_dir();
    let target_socket = sockets.path().join("target.sock");
    let target = start(Start {
        config: format!(
            "version = 3\n[plugins.\"io.containerd.internal.v1.proxy-target\"]\naddress = {:?}\ndefault_snapshotter = \"native\"\n",
            target_socket.display().to_string()
        ),
        ..Start::default()
    });
    let daemon = start(Start::default());
    let remote = ["snapshots", "--snapshotter", "remote"];
    Load::around(&daemon, "native", |load| {
        write_config(
            &daemon,
            &format!(
                "version = 3\n[proxy_plugins.remote]\ntype = \"snapshot\"\naddress = {:?}\n",
                target_socket.display().to_string()
            ),
        );
        let applied = reload(&daemon, &[]);
        assert!(
            applied.contains(
                "start io.containerd.snapshotter.v1.remote: [proxy_plugins.remote] was added"
            ),
            "{applied}"
        );
        daemon
            .ctr(&[&remote[..], &["prepare", "over-there"]].concat())
            .ok();
        let listed = daemon.ctr(&[&remote[..], &["ls"]].concat());
        assert!(listed.ok().contains("over-there"), "{}", listed.stdout);
        let native = target
            .root()
            .join("io.containerd.snapshotter.v1.native/snapshots");
        assert_eq!(
            std::fs::read_dir(&native).unwrap().count(),
            1,
            "the snapshot is in the target's native snapshotter"
        );
        load.wait_for_rounds(4);
        write_config(&daemon, "version = 3\n");
        let applied = reload(&daemon, &[]);
        assert!(
            applied.contains(
                "stop io.containerd.snapshotter.v1.remote: [proxy_plugins.remote] was removed"
            ),
            "{applied}"
        );
        let gone = daemon.ctr(&[&remote[..], &["ls"]].concat());
        assert!(!gone.status.success(), "{}", gone.stdout);
    });
    drop(target);
}

/// The options of `ctr snapshots mounts` for an overlayfs snapshot with a parent.
fn overlay_options(daemon: &Daemon, key: &str) -> String {
    daemon
        .ctr(&[
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "mounts",
            "/mnt",
            key,
        ])
        .ok()
        .to_string()
}

#[test]
fn a_reconfigure_in_place_keeps_the_instance_under_load() {
    let daemon = start(Start::default());
    let overlay = ["snapshots", "--snapshotter", "overlayfs"];
    daemon
        .ctr(&[&overlay[..], &["prepare", "base-active"]].concat())
        .ok();
    daemon
        .ctr(&[&overlay[..], &["commit", "base", "base-active"]].concat())
        .ok();
    daemon
        .ctr(&[&overlay[..], &["prepare", "upper", "base"]].concat())
        .ok();
    assert!(!overlay_options(&daemon, "upper").contains("volatile"));
    let started = export(
        &daemon,
        "io.containerd.snapshotter.v1",
        "overlayfs",
        "init_started",
    );
    Load::around(&daemon, "overlayfs", |_| {
        write_config(
            &daemon,
            "version = 3\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nmount_options = [\"volatile\"]\n",
        );
        let applied = reload(&daemon, &[]);
        assert!(
            applied.starts_with(
                "reconfigure io.containerd.snapshotter.v1.overlayfs: config section changed\n"
            ) && applied.lines().filter(|l| l.contains("restart")).count() == 0,
            "{applied}"
        );
        assert!(overlay_options(&daemon, "upper").contains("volatile"));
    });
    assert_eq!(
        export(
            &daemon,
            "io.containerd.snapshotter.v1",
            "overlayfs",
            "init_started"
        ),
        started,
        "reconfigured in place, not restarted"
    );
    assert_eq!(generation(&daemon), "2");
}

#[test]
fn a_broken_config_changes_nothing_and_says_why_under_load() {
    let mut daemon = start(Start {
        config: "version = 3\ndisabled_plugins = [\"io.containerd.snapshotter.v1.overlayfs\"]\n"
            .to_string(),
        args: vec!["--strict".to_string()],
        paths_in_config: true,
        ..Start::default()
    });
    let paths = plinth_tests::paths_config(daemon.dir());
    let running = &format!(
        "version = 3\n{paths}disabled_plugins = [\"io.containerd.snapshotter.v1.overlayfs\"]\n"
    );
    let plugins_before = daemon.ctr(&["plugins", "ls"]).ok().to_string();
    let config_path = daemon.dir().join("config.toml").display().to_string();
    let new_root = daemon.dir().join("elsewhere").display().to_string();
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "bad TOML",
            format!("{running}[plugins\n"),
            vec![format!("{config_path}:6:"), "nothing changed".to_string()],
        ),
        (
            "an unknown key in strict mode",
            format!(
                "{running}[plugins.\"io.containerd.metadata.v1.redb\"]\nsharing = \"isolated\"\n"
            ),
            vec![format!("{config_path}:7:"), "sharing".to_string()],
        ),
        (
            "a plugin whose new config fails its init",
            format!(
                "version = 3\n{paths}[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nmount_options = [\"upperdir=/tmp\"]\n"
            ),
            vec![
                "start io.containerd.snapshotter.v1.overlayfs".to_string(),
                "upperdir=/tmp".to_string(),
                "changed nothing".to_string(),
            ],
        ),
        (
            "a change of root",
            running.replace(
                &format!("root = {:?}", daemon.root().display().to_string()),
                &format!("root = {new_root:?}"),
            ),
            vec![
                "`root` cannot change without a restart".to_string(),
                "nothing was applied".to_string(),
            ],
        ),
    ];
    Load::around(&daemon, "native", |_| {
        for (name, text, expected) in &cases {
            write_config(&daemon, text);
            let error = refused(&daemon);
            for fragment in expected {
                assert!(
                    error.contains(fragment.as_str()),
                    "{name}: no {fragment:?} in {error}"
                );
            }
            assert_eq!(generation(&daemon), "1", "{name}");
            assert_eq!(
                daemon.ctr(&["plugins", "ls"]).ok(),
                plugins_before,
                "{name}"
            );
        }
        write_config(&daemon, running);
    });
    assert!(!Path::new(&new_root).exists());
    let status = daemon.stop(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", daemon.log());
}
