//! Load for tests that change a running daemon (live reloads): the stock `ctr` in loops on
//! two threads — content ingests and reads, snapshot prepares and commits — while the test
//! does its work; afterwards no call may have failed and everything written must be there.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::{Daemon, Output, sha256_file};

/// How long the load may take for the rounds a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(60);

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
pub struct Load<'a> {
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

    fn check(&self, what: String, output: &Output) -> bool {
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
    pub fn wait_for_rounds(&self, more: usize) {
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
    pub fn around(daemon: &Daemon, snapshotter: &str, body: impl FnOnce(&Load<'_>)) {
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
