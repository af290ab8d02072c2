//! Proxy plugins, both directions, with real processes: plinthd A proxying snapshots and
//! content to plinthd B (served raw on a second socket), the stock containerd using plinthd
//! as its `[proxy_plugins]`, and the faults (remote absent at start-up, killed mid-write,
//! answering garbage, bad `[proxy_plugins]` sections).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::{
    Containerd, Daemon, Start, binary, ctr, random_file, run, sha256_file, start, start_in,
    wait_for,
};

/// How long a proxy may take to notice that its remote came up.
const RECOVERY: Duration = Duration::from_secs(15);

/// Rows of a table printed by ctr, split on whitespace, header dropped.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The STATUS column of `plugins ls` for one plugin.
fn plugin_status(listing: &str, plugin_type: &str, id: &str) -> Option<String> {
    rows(listing)
        .into_iter()
        .find(|r| r.len() >= 4 && r[0] == plugin_type && r[1] == id)
        .map(|r| r[3].clone())
}

/// Text with each run of spaces made one, so that checks of `plugins ls -d` do not depend on
/// how wide its columns are.
fn squeezed(text: &str) -> String {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config that makes plinthd serve its stores raw on `socket`.
fn target_config(socket: &Path) -> String {
    format!(
        "version = 3\n[plugins.\"io.containerd.internal.v1.proxy-target\"]\n  address = {:?}\n  default_snapshotter = \"native\"\n",
        socket.display().to_string()
    )
}

/// A config with a snapshot proxy `remote` and a content proxy `remote-content` to `socket`,
/// the local content store disabled so that the metadata plugin sits on the proxy.
fn host_config(socket: &Path) -> String {
    format!(
        "version = 3\ndisabled_plugins = [\"io.containerd.content.v1.content\"]\n\
         [proxy_plugins.remote]\n  type = \"snapshot\"\n  address = \"unix://{}\"\n  platform = \"linux/amd64\"\n  exports = {{ note = \"plinthd B\" }}\n\
         [proxy_plugins.remote-content]\n  type = \"io.containerd.content.v1\"\n  address = {:?}\n",
        socket.display(),
        socket.display().to_string()
    )
}

/// A short temporary directory for sockets shared between processes.
fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("px")
        .tempdir()
        .expect("temporary directory")
}

/// `ctr --address <socket> <args>` against any socket.
fn ctr_at(socket: &Path, args: &[&str]) -> plinth_tests::Output {
    let mut all = vec!["--address", socket.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    run(&ctr(), &all)
}

fn ingest_file(daemon: &Daemon, reference: &str, file: &Path) -> String {
    let digest = sha256_file(file);
    daemon
        .ctr_files(
            &["content", "ingest", "--expected-digest", &digest, reference],
            Some(file),
            None,
        )
        .ok();
    digest
}

#[test]
fn plinthd_proxies_snapshots_and_content_to_another_plinthd_served_raw() {
    let sockets = socket_dir();
    let raw = sockets.path().join("raw.sock");
    let b = start(Start {
        config: target_config(&raw),
        ..Start::default()
    });
    assert!(
        b.log().contains(&format!(
            "plinthd serving proxy target on {}",
            raw.display()
        )),
        "{}",
        b.log()
    );
    let a = start(Start {
        config: host_config(&raw),
        ..Start::default()
    });

    let listing = a.ctr(&["plugins", "ls"]);
    for (plugin_type, id) in [
        ("io.containerd.snapshotter.v1", "remote"),
        ("io.containerd.content.v1", "remote-content"),
        ("io.containerd.metadata.v1", "redb"),
    ] {
        assert_eq!(
            plugin_status(listing.ok(), plugin_type, id).as_deref(),
            Some("ok"),
            "{plugin_type}.{id}:\n{}",
            listing.stdout
        );
    }
    let detail = a.plinthctl(&["plugins", "ls", "-d", "id==remote"]);
    for needle in [
        format!("address {}", raw.display()),
        "connection up".to_string(),
        "note plinthd B".to_string(),
        "Platforms: linux/amd64".to_string(),
    ] {
        assert!(
            squeezed(detail.ok()).contains(&needle),
            "{needle}:\n{}",
            detail.stdout
        );
    }

    // Snapshots through A's metadata and the proxy, stored by B's native snapshotter.
    let snapshots = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "remote"];
        all.extend_from_slice(args);
        a.ctr(&all)
    };
    snapshots(&["prepare", "work", ""]).ok();
    snapshots(&["commit", "layer-1", "work"]).ok();
    snapshots(&["prepare", "work-2", "layer-1"]).ok();
    let listed = snapshots(&["ls"]);
    assert_eq!(
        rows(listed.ok()),
        vec![
            vec!["layer-1".to_string(), "Committed".to_string()],
            vec![
                "work-2".to_string(),
                "layer-1".to_string(),
                "Active".to_string()
            ],
        ],
        "{}",
        listed.stdout
    );
    let mounts = snapshots(&["mounts", "/mnt", "work-2"]);
    assert!(
        mounts.ok().contains(&b.root().display().to_string()),
        "mounts point into B's root:\n{}",
        mounts.stdout
    );
    let in_b = ctr_at(&raw, &["snapshots", "--snapshotter", "any-name", "ls"]);
    assert_eq!(rows(in_b.ok()).len(), 2, "B holds both:\n{}", in_b.stdout);
    snapshots(&["rm", "work-2"]).ok();
    assert_eq!(rows(snapshots(&["ls"]).ok()).len(), 1);

    // Content ingested through A lands in B.
    let input = a.dir().join("input.bin");
    random_file(&input, 3 << 20, 7);
    let digest = ingest_file(&a, "through-a", &input);
    let in_a = a.ctr(&["content", "ls", "-q"]);
    assert_eq!(in_a.ok(), format!("{digest}\n"));
    let in_b = ctr_at(&raw, &["content", "ls", "-q"]);
    assert_eq!(in_b.ok(), format!("{digest}\n"), "the blob is in B's store");
    let blob = b
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    assert!(blob.is_file(), "{} is missing", blob.display());
    let copy = a.dir().join("copy.bin");
    a.ctr_files(&["content", "get", &digest], None, Some(&copy))
        .ok();
    assert_eq!(sha256_file(&copy), digest, "read back through the proxy");
    // B's own (namespaced) API never saw it: it went in raw.
    assert_eq!(b.ctr(&["content", "ls", "-q"]).ok(), "");
}

#[test]
fn containerd_uses_plinthd_as_its_snapshot_and_content_proxy() {
    let sockets = socket_dir();
    let raw = sockets.path().join("raw.sock");
    let plinthd = start(Start {
        config: target_config(&raw),
        ..Start::default()
    });
    let containerd = Containerd::start(
        // Its own content store would compete with the proxy for the metadata plugin.
        &["io.containerd.content.v1.content"],
        &format!(
            "[proxy_plugins.plinth]\n  type = \"snapshot\"\n  address = {:?}\n\
             [proxy_plugins.plinth-content]\n  type = \"content\"\n  address = {:?}\n\
             [debug]\n  level = \"debug\"\n",
            raw.display().to_string(),
            raw.display().to_string()
        ),
    );
    let listing = containerd.ctr(&["plugins", "ls"]);
    for (plugin_type, id) in [
        ("io.containerd.snapshotter.v1", "plinth"),
        ("io.containerd.content.v1", "plinth-content"),
    ] {
        assert_eq!(
            plugin_status(listing.ok(), plugin_type, id).as_deref(),
            Some("ok"),
            "{plugin_type}.{id}:\n{}",
            listing.stdout
        );
    }
    let snapshots = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "plinth"];
        all.extend_from_slice(args);
        containerd.ctr(&all)
    };
    snapshots(&["prepare", "base-work", ""]).ok();
    snapshots(&["commit", "base", "base-work"]).ok();
    snapshots(&["prepare", "top", "base"]).ok();
    let listed = snapshots(&["ls"]);
    assert_eq!(
        rows(listed.ok()),
        vec![
            vec!["base".to_string(), "Committed".to_string()],
            vec!["top".to_string(), "base".to_string(), "Active".to_string()],
        ],
        "{}\n{}",
        listed.stdout,
        containerd.log()
    );
    snapshots(&["rm", "top"]).ok();
    snapshots(&["rm", "base"]).ok();
    assert!(rows(snapshots(&["ls"]).ok()).is_empty());
    // containerd's garbage collector removes them from the backend shortly after: its
    // scheduler is set to run after every deletion. But it drops a deletion that commits
    // while the previous collection is still cleaning the backend (the event is older than
    // that collection's end) — here `rm base` while the collection `rm top` started still
    // walks plinthd, which a loaded machine makes likely — and then waits for the next
    // deletion. So every few seconds one more deletion in the snapshotter asks again, as
    // any later deletion would in real use.
    let started = Instant::now();
    let mut nudge_at = started + Duration::from_secs(3);
    loop {
        let in_plinthd = ctr_at(&raw, &["snapshots", "--snapshotter", "plinth", "ls"]);
        if rows(in_plinthd.ok()).is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let log = containerd.log();
            let collector: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("garbage") || l.contains("snapshot"))
                .collect();
            panic!(
                "containerd did not remove the snapshots from plinthd within 60 s; plinthd \
                 holds:\n{}\ncontainerd's collector said:\n{}",
                in_plinthd.stdout,
                collector.join("\n")
            );
        }
        if Instant::now() >= nudge_at {
            snapshots(&["prepare", "nudge", ""]).ok();
            snapshots(&["rm", "nudge"]).ok();
            nudge_at = Instant::now() + Duration::from_secs(3);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Content ingested through containerd lands in plinthd's store.
    let input = plinthd.dir().join("input.bin");
    random_file(&input, 1 << 20, 11);
    let digest = sha256_file(&input);
    let mut args = vec!["--address", containerd.socket().to_str().unwrap()];
    args.extend([
        "content",
        "ingest",
        "--expected-digest",
        &digest,
        "via-containerd",
    ]);
    plinth_tests::run_files(&ctr(), &args, Some(&input), None).ok();
    assert_eq!(
        ctr_at(&raw, &["content", "ls", "-q"]).ok(),
        format!("{digest}\n")
    );
    assert_eq!(
        containerd.ctr(&["content", "ls", "-q"]).ok(),
        format!("{digest}\n")
    );
}

#[test]
fn remote_absent_at_start_up_is_explained_then_recovers_by_itself() {
    let sockets = socket_dir();
    let raw = sockets.path().join("raw.sock");
    let a = start(Start {
        config: host_config(&raw),
        ..Start::default()
    });
    let listing = a.ctr(&["plugins", "ls"]);
    assert_eq!(
        plugin_status(listing.ok(), "io.containerd.snapshotter.v1", "remote").as_deref(),
        Some("error"),
        "{}",
        listing.stdout
    );
    assert_eq!(
        plugin_status(listing.ok(), "io.containerd.metadata.v1", "redb").as_deref(),
        Some("ok"),
        "the metadata plugin sits on the absent proxy anyway:\n{}",
        listing.stdout
    );
    let reason = format!("no listener at {}", raw.display());
    let detail = a.plinthctl(&["plugins", "ls", "-d", "id==remote"]);
    for needle in [
        reason.as_str(),
        "Code: Unavailable",
        "connection down",
        &format!("address {}", raw.display()),
    ] {
        assert!(
            squeezed(detail.ok()).contains(needle),
            "{needle}:\n{}",
            detail.stdout
        );
    }
    assert!(
        a.log().contains("proxy remote does not answer"),
        "{}",
        a.log()
    );
    // Listing reads A's metadata; preparing needs the remote.
    let refused = a.ctr(&["snapshots", "--snapshotter", "remote", "prepare", "k", ""]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains(&reason), "{}", refused.stderr);

    let _b = start(Start {
        config: target_config(&raw),
        ..Start::default()
    });
    wait_for("the proxy to recover", RECOVERY, || {
        let listing = a.ctr(&["plugins", "ls"]);
        (plugin_status(listing.ok(), "io.containerd.snapshotter.v1", "remote").as_deref()
            == Some("ok"))
        .then_some(())
    });
    let detail = a.plinthctl(&["plugins", "ls", "-d", "id==remote"]);
    assert!(
        squeezed(detail.ok()).contains("connection up"),
        "{}",
        detail.stdout
    );
    assert!(
        squeezed(detail.ok()).contains(&format!("last_error {reason}")),
        "the last error is kept:\n{}",
        detail.stdout
    );
    a.ctr(&["snapshots", "--snapshotter", "remote", "prepare", "k", ""])
        .ok();
    assert_eq!(
        rows(a.ctr(&["snapshots", "--snapshotter", "remote", "ls"]).ok()).len(),
        1
    );
}

#[test]
fn remote_killed_mid_write_fails_unavailable_and_commits_nothing() {
    let sockets = socket_dir();
    let raw = sockets.path().join("raw.sock");
    let b = start(Start {
        config: target_config(&raw),
        ..Start::default()
    });
    let a = start(Start {
        config: host_config(&raw),
        ..Start::default()
    });
    let input = a.dir().join("input.bin");
    random_file(&input, 8 << 20, 3);
    let digest = sha256_file(&input);
    let bytes = std::fs::read(&input).unwrap();
    let mut ingest = Command::new(ctr())
        .args([
            "--address",
            &a.address(),
            "content",
            "ingest",
            "--expected-digest",
            &digest,
            "killed",
        ])
        .env_remove("CONTAINERD_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ctr");
    let mut stdin = ingest.stdin.take().unwrap();
    stdin.write_all(&bytes[..2 << 20]).unwrap();
    stdin.flush().unwrap();
    // The ingest is under way in B when B dies.
    wait_for("the ingest to reach B", Duration::from_secs(10), || {
        let active = ctr_at(&raw, &["content", "active"]);
        active.stdout.contains("killed").then_some(())
    });
    let b_dir = b.into_dir();
    let _ = stdin.write_all(&bytes[2 << 20..]);
    drop(stdin);
    let status = ingest.wait().unwrap();
    let mut stderr = String::new();
    ingest
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "the ingest must fail");
    // ctr appends the category of the gRPC code: Unavailable.
    assert!(
        stderr.trim_end().ends_with(": unavailable")
            && stderr.contains(&format!("connection to {} lost", raw.display())),
        "ctr reports Unavailable and why: {stderr}"
    );
    assert_eq!(
        a.ctr(&["content", "ls", "-q"]).ok(),
        "",
        "nothing committed"
    );

    // B again, on the same directories: no blob, A agrees once it reconnects.
    let _b = start_in(
        b_dir,
        Start {
            config: target_config(&raw),
            ..Start::default()
        },
    )
    .unwrap_or_else(|(log, status)| panic!("B did not restart ({status:?}):\n{log}"));
    assert_eq!(ctr_at(&raw, &["content", "ls", "-q"]).ok(), "");
    wait_for("A to reconnect", RECOVERY, || {
        a.ctr(&["content", "ls", "-q"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(a.ctr(&["content", "ls", "-q"]).ok(), "");
}

/// A listener that answers every connection with bytes that are not HTTP/2.
fn garbage_listener(path: &Path) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("binding");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.flush();
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn remote_answering_garbage_gets_a_clear_error() {
    let sockets = socket_dir();
    let raw = sockets.path().join("garbage.sock");
    let _listener = garbage_listener(&raw);
    let a = start(Start {
        config: host_config(&raw),
        ..Start::default()
    });
    let expected = format!(
        "the listener at {} does not answer as a gRPC server",
        raw.display()
    );
    let detail = a.plinthctl(&["plugins", "ls", "-d", "id==remote"]);
    assert!(
        detail.ok().contains(&expected),
        "{expected}:\n{}",
        detail.stdout
    );
    let failed = a.ctr(&["snapshots", "--snapshotter", "remote", "prepare", "k", ""]);
    assert!(!failed.status.success());
    assert!(failed.stderr.contains(&expected), "{}", failed.stderr);
}

#[test]
fn bad_proxy_sections_are_config_errors_naming_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    // (section, expected message parts)
    let table: &[(&str, &[&str])] = &[
        (
            "[proxy_plugins.native]\ntype = \"snapshot\"\naddress = \"/run/x.sock\"\n",
            &[
                "io.containerd.snapshotter.v1.native is registered twice",
                "[proxy_plugins.native]",
            ],
        ),
        (
            "[proxy_plugins.differ]\ntype = \"diff\"\naddress = \"/run/x.sock\"\n",
            &[
                "[proxy_plugins.differ]",
                "type \"diff\" is not a proxy plugin type",
            ],
        ),
        (
            "[proxy_plugins.nowhere]\ntype = \"content\"\n",
            &["[proxy_plugins.nowhere]", "address is empty"],
        ),
    ];
    for (i, (section, needles)) in table.iter().enumerate() {
        let config: PathBuf = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&config, format!("version = 3\n{section}")).unwrap();
        let output = run(
            &binary("plinthd"),
            &["-c", config.to_str().unwrap(), "config", "check"],
        );
        assert!(!output.status.success(), "{section}: accepted");
        for needle in *needles {
            assert!(
                output.stderr.contains(needle),
                "{section}: {needle:?} missing from:\n{}",
                output.stderr
            );
        }
    }
}

/// The conformance suites through the proxies to a real plinthd serving raw: each case gets
/// a fresh plinthd B (a case made again on the same root — the snapshot suite's reopen —
/// restarts B on the same directories, after a SIGKILL).
mod suites {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, PoisonError};

    use plinth_builtin_plugins::Error;
    use plinth_builtin_plugins::content::{ContentStore, ContentWriter, Digest, Info, Status};
    use plinth_builtin_plugins::namespaces::Labels;
    use plinth_builtin_plugins::proxy::{ProxyContentStore, ProxySnapshotter};
    use plinth_builtin_plugins::snapshots::{self, Mount, Snapshotter, Usage};

    use super::*;

    /// B's directories by the suite's root, kept while B is down between two makes. A static
    /// is never dropped, so the directories themselves live *inside* the suite's root (see
    /// [`Remote::start`]): the suite removes them with the case's own directory.
    static STOPPED: Mutex<Option<HashMap<PathBuf, tempfile::TempDir>>> = Mutex::new(None);

    /// A plinthd B serving raw, started for (or restarted on) the suite's `root`.
    struct Remote {
        daemon: Option<Daemon>,
        root: PathBuf,
    }

    impl Remote {
        fn start(root: &Path) -> (Remote, PathBuf) {
            let kept = STOPPED
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(HashMap::new)
                .remove(root);
            // Inside the suite's root, which the suite removes after the case: a directory
            // of its own in /tmp would outlive the test through STOPPED (37 MB each, ~100
            // per run).
            let dir = kept.unwrap_or_else(|| {
                tempfile::Builder::new()
                    .prefix("b")
                    .tempdir_in(root)
                    .expect("temporary directory in the suite's root")
            });
            let raw = dir.path().join("raw.sock");
            let daemon = start_in(
                dir,
                Start {
                    config: target_config(&raw),
                    ..Start::default()
                },
            )
            .unwrap_or_else(|(log, status)| panic!("B did not start ({status:?}):\n{log}"));
            let remote = Remote {
                daemon: Some(daemon),
                root: root.to_path_buf(),
            };
            (remote, raw)
        }
    }

    impl Drop for Remote {
        fn drop(&mut self) {
            if let Some(daemon) = self.daemon.take() {
                STOPPED
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(HashMap::new)
                    .insert(self.root.clone(), daemon.into_dir());
            }
        }
    }

    /// Fails if a directory B ran in, for a suite root whose path contains `suite`, is still
    /// on disk after that suite has finished: each must go with its case's directory.
    fn assert_no_remote_directory_outlives(suite: &str) {
        let stopped = STOPPED.lock().unwrap_or_else(PoisonError::into_inner);
        let left: Vec<_> = stopped
            .iter()
            .flatten()
            .filter(|(root, dir)| root.to_string_lossy().contains(suite) && dir.path().exists())
            .map(|(_, dir)| dir.path().display().to_string())
            .collect();
        assert!(
            left.is_empty(),
            "B's directories outlived the suite: {left:?}"
        );
    }

    struct Content {
        proxy: ProxyContentStore,
        _remote: Remote,
    }

    #[tonic::async_trait]
    impl ContentStore for Content {
        async fn info(&self, digest: &Digest) -> Result<Info, Error> {
            self.proxy.info(digest).await
        }
        async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
            self.proxy.update(info, fieldpaths).await
        }
        async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
            self.proxy.walk(filters).await
        }
        async fn delete(&self, digest: &Digest) -> Result<(), Error> {
            self.proxy.delete(digest).await
        }
        async fn read_at(
            &self,
            digest: &Digest,
            offset: u64,
            length: usize,
        ) -> Result<Vec<u8>, Error> {
            self.proxy.read_at(digest, offset, length).await
        }
        async fn status(&self, reference: &str) -> Result<Status, Error> {
            self.proxy.status(reference).await
        }
        async fn list_statuses(&self, filters: &[String]) -> Result<Vec<Status>, Error> {
            self.proxy.list_statuses(filters).await
        }
        async fn abort(&self, reference: &str) -> Result<(), Error> {
            self.proxy.abort(reference).await
        }
        async fn writer(
            &self,
            reference: &str,
            total: i64,
            expected: Option<Digest>,
        ) -> Result<Box<dyn ContentWriter>, Error> {
            self.proxy.writer(reference, total, expected).await
        }
    }

    struct Snapshots {
        proxy: ProxySnapshotter,
        _remote: Remote,
    }

    #[tonic::async_trait]
    impl Snapshotter for Snapshots {
        async fn stat(&self, key: &str) -> Result<snapshots::Info, Error> {
            self.proxy.stat(key).await
        }
        async fn update(
            &self,
            info: snapshots::Info,
            fieldpaths: &[String],
        ) -> Result<snapshots::Info, Error> {
            self.proxy.update(info, fieldpaths).await
        }
        async fn usage(&self, key: &str) -> Result<Usage, Error> {
            self.proxy.usage(key).await
        }
        async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
            self.proxy.mounts(key).await
        }
        async fn prepare(
            &self,
            key: &str,
            parent: &str,
            labels: Labels,
        ) -> Result<Vec<Mount>, Error> {
            self.proxy.prepare(key, parent, labels).await
        }
        async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
            self.proxy.view(key, parent, labels).await
        }
        async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
            self.proxy.commit(name, key, labels).await
        }
        async fn remove(&self, key: &str) -> Result<(), Error> {
            self.proxy.remove(key).await
        }
        async fn walk(&self, filters: &[String]) -> Result<Vec<snapshots::Info>, Error> {
            self.proxy.walk(filters).await
        }
        async fn cleanup(&self) -> Result<(), Error> {
            self.proxy.cleanup().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn content_suite_passes_through_the_proxy_to_plinthd() {
        plinth_builtin_plugins::content::testsuite::run(|root: PathBuf| async move {
            let (remote, raw) = tokio::task::spawn_blocking(move || Remote::start(&root))
                .await
                .expect("starting B");
            Ok(Arc::new(Content {
                proxy: ProxyContentStore::connect(&raw)?,
                _remote: remote,
            }) as Arc<dyn ContentStore>)
        })
        .await;
        assert_no_remote_directory_outlives("plinth-content-suite-");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_suite_passes_through_the_proxy_to_plinthd() {
        plinth_builtin_plugins::snapshots::testsuite::run(|root: PathBuf| async move {
            let (remote, raw) = tokio::task::spawn_blocking(move || Remote::start(&root))
                .await
                .expect("starting B");
            Ok(Arc::new(Snapshots {
                proxy: ProxySnapshotter::connect(&raw, "remote")?,
                _remote: remote,
            }) as Arc<dyn Snapshotter>)
        })
        .await;
        assert_no_remote_directory_outlives("snapshot-suite-");
    }
}
