//! Live reloads of a running plinthd, with the stock `ctr` driving load across each one
//! (content ingests and reads, snapshot prepares and commits, in loops on two threads): every
//! call must succeed, and everything written must still be there afterwards.

use std::path::Path;
use std::time::Duration;

use plinth_tests::load::Load;
use plinth_tests::{Daemon, Start, signal, start};

/// How long one reload may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Writes the daemon's config file anew.
fn write_config(daemon: &Daemon, text: &str) {
    // With the scheduler's section the harness started the daemon with.
    let text = plinth_tests::with_manual_gc(text);
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

/// `ctr snapshots mounts` on the proxy-target socket for a new snapshot over a committed
/// parent, made through `snapshotter`: `overlay` from overlayfs, `bind` from native.
fn raw_mount_type(socket: &Path, snapshotter: &str, tag: &str) -> String {
    let ctr = |args: &[&str]| {
        let mut all = vec![
            "--address",
            socket.to_str().unwrap(),
            "snapshots",
            "--snapshotter",
            snapshotter,
        ];
        all.extend_from_slice(args);
        plinth_tests::run(&plinth_tests::ctr(), &all)
            .ok()
            .to_string()
    };
    ctr(&["prepare", &format!("{tag}-base-active")]);
    ctr(&[
        "commit",
        &format!("{tag}-base"),
        &format!("{tag}-base-active"),
    ]);
    ctr(&["prepare", &format!("{tag}-child"), &format!("{tag}-base")]);
    let mounts = ctr(&["mounts", "/mnt", &format!("{tag}-child")]);
    mounts
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_restarted_proxy_target_serves_its_new_instances_on_the_same_socket() {
    let sockets = socket_dir();
    let target_socket = sockets.path().join("target.sock");
    let section = format!(
        "[plugins.\"io.containerd.internal.v1.proxy-target\"]\naddress = {:?}\ndefault_snapshotter = \"native\"\n",
        target_socket.display().to_string()
    );
    let daemon = start(Start {
        config: format!(
            "version = 3\ndisabled_plugins = [\"io.containerd.snapshotter.v1.overlayfs\"]\n{section}"
        ),
        ..Start::default()
    });
    // overlayfs is off: the target maps the name to its default, native.
    assert_eq!(
        raw_mount_type(&target_socket, "overlayfs", "before"),
        "bind"
    );
    Load::around(&daemon, "native", |_| {
        write_config(&daemon, &format!("version = 3\n{section}"));
        let applied = reload(&daemon, &[]);
        assert!(
            applied.contains("restart io.containerd.internal.v1.proxy-target: requires io.containerd.snapshotter.v1")
                && !applied.contains("warning"),
            "{applied}"
        );
    });
    // The same socket, the new target: overlayfs is served.
    assert_eq!(
        raw_mount_type(&target_socket, "overlayfs", "after"),
        "overlay"
    );
}
