//! A start that plinthd refuses leaves nothing behind — no directory, lock file or mount it
//! created — and `config check` refuses every config that a start refuses before it
//! initialises plugins, with the same message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_tests::{Output, Start, binary, run, start_in};

/// Every entry under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The mount points under `dir` that this machine has (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<String> {
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| {
            Path::new(point).starts_with(dir) || Path::new(point).starts_with(&canonical)
        })
        .map(str::to_string)
        .collect()
}

/// `plinthd` with the config in `<dir>/config.toml` and the given paths.
fn plinthd(dir: &Path, root: &Path, state: &Path, address: &Path, command: &[&str]) -> Output {
    let config = dir.join("config.toml");
    let mut args = vec![
        "-c".to_string(),
        config.display().to_string(),
        "--root".to_string(),
        root.display().to_string(),
        "--state".to_string(),
        state.display().to_string(),
        "--address".to_string(),
        address.display().to_string(),
    ];
    args.extend(command.iter().map(|s| s.to_string()));
    // A start that is wrongly accepted serves until stopped: end it after a while (exit 124)
    // so that the test fails instead of hanging.
    let plinthd = binary("plinthd");
    let mut with_timeout = vec!["30", plinthd.to_str().unwrap()];
    with_timeout.extend(args.iter().map(String::as_str));
    run(Path::new("timeout"), &with_timeout)
}

/// How a case lays out its temporary directory before the run.
#[derive(Clone, Copy)]
enum Layout {
    /// `root/` and `state/` side by side, nothing there yet.
    Apart,
    /// State is the root.
    SameDirectory,
    /// State is `root/state`.
    StateInsideRoot,
    /// `root` exists as a regular file.
    RootIsAFile,
    /// The socket path exists as a regular file.
    SocketIsAFile,
    /// The socket path is 200 bytes long.
    LongSocket,
}

#[test]
fn config_check_refuses_what_a_start_refuses_and_neither_creates_anything() {
    let long_target = format!(
        "[plugins.\"io.containerd.internal.v1.proxy-target\"]\naddress = \"/tmp/{}.sock\"\n",
        "t".repeat(120)
    );
    // (name, config, layout, expected message)
    let cases: &[(&str, &str, Layout, &str)] = &[
        (
            "required plugin disabled",
            "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.version\"]\nrequired_plugins = [\"io.containerd.grpc.v1.version\"]\n",
            Layout::Apart,
            "required plugin io.containerd.grpc.v1.version is disabled: remove it from disabled_plugins or from required_plugins",
        ),
        (
            "required plugin unknown",
            "version = 3\nrequired_plugins = [\"io.plinth.test.v1.nothing\"]\n",
            Layout::Apart,
            "required plugin io.plinth.test.v1.nothing is not registered",
        ),
        (
            "root and state the same directory",
            "version = 3\n",
            Layout::SameDirectory,
            "root and state are the same directory",
        ),
        (
            "state inside root",
            "version = 3\n",
            Layout::StateInsideRoot,
            "state (",
        ),
        (
            "root is a file",
            "version = 3\n",
            Layout::RootIsAFile,
            "exists and is not a directory: remove it or choose another root",
        ),
        (
            "socket path taken by a file",
            "version = 3\n",
            Layout::SocketIsAFile,
            "exists and is not a socket: remove it or choose another path",
        ),
        (
            "socket path too long",
            "version = 3\n",
            Layout::LongSocket,
            "bytes long; a unix socket path holds at most 107: choose a shorter one",
        ),
        (
            "proxy target socket path too long",
            &long_target,
            Layout::Apart,
            "the socket of io.containerd.internal.v1.proxy-target /tmp/ttt",
        ),
    ];
    for &(name, config, layout, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::write(base.join("config.toml"), config).unwrap();
        let mut root = base.join("root");
        let mut state = base.join("state");
        let mut socket = base.join("plinthd.sock");
        match layout {
            Layout::Apart => {}
            Layout::SameDirectory => state = root.clone(),
            Layout::StateInsideRoot => state = root.join("state"),
            Layout::RootIsAFile => std::fs::write(&root, "").unwrap(),
            Layout::SocketIsAFile => std::fs::write(&socket, "").unwrap(),
            Layout::LongSocket => {
                socket = base.join(format!("{}.sock", "s".repeat(200)));
                root = base.join("root");
            }
        }
        let before = tree(base);
        let check = plinthd(base, &root, &state, &socket, &["config", "check"]);
        assert!(
            !check.status.success(),
            "{name}: config check passed:\n{}",
            check.stdout
        );
        assert!(
            check.stderr.contains(expected),
            "{name}: config check did not say {expected:?}:\n{}",
            check.stderr
        );
        let start = plinthd(base, &root, &state, &socket, &[]);
        assert!(!start.status.success(), "{name}: plinthd started");
        assert!(
            start.stderr.contains(expected),
            "{name}: the start did not say {expected:?}:\n{}",
            start.stderr
        );
        assert_eq!(tree(base), before, "{name}: files were left behind");
    }
}

/// Starts plinthd on a root that already holds a file where the metadata plugin wants its
/// directory, with that plugin required: it fails after the content store and both
/// snapshotters have initialised (overlayfs having mounted its support check), and the start
/// is refused.
fn refused_after_init(dir: &Path) -> (String, PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("io.containerd.metadata.v1.redb"), "in the way").unwrap();
    let config = "version = 3\nrequired_plugins = [\"io.containerd.metadata.v1.redb\"]\n";
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let output = plinthd(
        dir,
        &root,
        &dir.join("state"),
        &dir.join("plinthd.sock"),
        &[],
    );
    assert!(
        !output.status.success(),
        "plinthd started:\n{}",
        output.stderr
    );
    (output.stderr, root)
}

#[test]
fn a_start_refused_after_init_leaves_nothing_behind_mounts_included() {
    // The overlay check's unmount ran on a thread the exiting process did not wait for: the
    // mount stayed in about half of the runs. Several rounds make a regression show.
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (log, root) = refused_after_init(dir.path());
        assert!(
            log.contains("required plugin io.containerd.metadata.v1.redb failed: creating"),
            "round {round}: not refused for the metadata plugin:\n{log}"
        );
        assert!(
            log.contains("plugin ok uri=io.containerd.snapshotter.v1.overlayfs"),
            "round {round}: this test needs overlay to work under {} (run as root, with the \
             temporary directory not itself on overlay), so that the refused start has an \
             overlay check mounted:\n{log}",
            dir.path().display()
        );
        assert_eq!(
            mounts_under(dir.path()),
            Vec::<String>::new(),
            "round {round}: mounts left behind"
        );
        assert_eq!(
            tree(dir.path()),
            ["config.toml", "root", "root/io.containerd.metadata.v1.redb"],
            "round {round}: the refused start left files behind (the root held only the file \
             in the way before it)"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("io.containerd.metadata.v1.redb")).unwrap(),
            "in the way",
            "round {round}: a file that was there before was touched"
        );
    }
}

#[test]
fn no_mount_outlives_a_daemon_stopped_with_sigterm() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut daemon = start_in(dir, Start::default())
            .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"));
        assert!(
            daemon
                .log()
                .contains("plugin ok uri=io.containerd.snapshotter.v1.overlayfs"),
            "this test needs overlay to work under {}:\n{}",
            path.display(),
            daemon.log()
        );
        let status = daemon.stop(Duration::from_secs(10));
        assert!(status.success(), "round {round}: {status}");
        assert_eq!(
            mounts_under(&path),
            Vec::<String>::new(),
            "round {round}: mounts left behind"
        );
        let overlay_root = path.join("root/io.containerd.snapshotter.v1.overlayfs");
        let checks: Vec<String> = tree(&overlay_root)
            .into_iter()
            .filter(|entry| entry.starts_with("overlay-check-"))
            .collect();
        assert_eq!(
            checks,
            Vec::<String>::new(),
            "round {round}: check directories left"
        );
    }
}
