//! Crash consistency: plinthd is killed with SIGKILL in the middle of many concurrent
//! ingests, again and again; after each restart every committed blob verifies, every record
//! has its blob, no half-written blob is visible, and open ingests resume.
//!
//! The kill must land while uploads are in flight, whatever the machine's speed: in each
//! round most clients get only a prefix of their input (their standard input is then held
//! open), and the kill comes once the daemon reports bytes received for each of them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use plinth_tests::{Daemon, Start, binary, random_file, sha256_file, start, start_in};

const ROUNDS: u64 = 6;
const CLIENTS: u64 = 6;
/// plinthctl's chunk: it sends a chunk once it has read the next one, so a client must be
/// given more than two for the daemon to receive anything before the end of the input.
const CHUNK: usize = 1 << 20;

fn blobs_dir(root: &Path) -> PathBuf {
    root.join("io.containerd.content.v1.content/blobs/sha256")
}

/// Every file under the blob directory hashes to its name: no blob is half-visible.
///
/// # Panics
/// When the directory is missing (the content store creates it at start) or a file is not
/// what its name says. Returns the digests of the blob files.
fn check_blob_files(root: &Path) -> BTreeSet<String> {
    let dir = blobs_dir(root);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut blobs = BTreeSet::new();
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            sha256_file(&path),
            format!("sha256:{name}"),
            "blob file {} is not what its name says",
            path.display()
        );
        blobs.insert(format!("sha256:{name}"));
    }
    blobs
}

/// The active ingests as (ref, whether bytes were received), from `plinthctl content active`
/// (`REF  SIZE  AGE`, SIZE as `0 B` or `1.0 MiB/5.0 MiB`).
fn active(daemon: &Daemon) -> BTreeMap<String, bool> {
    let listing = daemon.plinthctl(&["content", "active"]);
    listing
        .ok()
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 2, "unexpected line {line:?}");
            (fields[0].to_string(), fields[1] != "0")
        })
        .collect()
}

/// An ingest client of one round, with its standard input still open when it was given only
/// a prefix.
struct Client {
    reference: String,
    child: Child,
    held: Option<ChildStdin>,
}

/// Starts `plinthctl content ingest` of `path` and feeds it `prefix` bytes of the file (all of
/// it when `prefix` is `None`, then closes its input).
fn start_client(
    daemon: &Daemon,
    reference: &str,
    path: &Path,
    digest: &str,
    prefix: Option<usize>,
) -> Client {
    let mut child = Command::new(binary("plinthctl"))
        .args([
            "--address",
            &daemon.address(),
            "content",
            "ingest",
            "--progress",
            "never",
            "--expected-digest",
            digest,
            reference,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(path).unwrap();
    let n = prefix.unwrap_or(bytes.len());
    stdin
        .write_all(&bytes[..n])
        .unwrap_or_else(|e| panic!("feeding {reference}: {e}"));
    Client {
        reference: reference.to_string(),
        child,
        held: prefix.map(|_| stdin),
    }
}

#[test]
fn sigkill_during_concurrent_ingests_never_loses_or_corrupts_data() {
    let mut daemon = start(Start::default());
    // 2.25 to 3.5 MiB and some bytes: every input is more than two chunks.
    let inputs: BTreeMap<String, (PathBuf, String)> = (0..ROUNDS * CLIENTS)
        .map(|i| {
            let path = daemon.dir().join(format!("input-{i}.bin"));
            let size = 2 * CHUNK + ((i as usize % 6) + 1) * (CHUNK / 4) + 4096 * i as usize;
            random_file(&path, size, 100 + i);
            let digest = sha256_file(&path);
            (format!("ref-{i}"), (path, digest))
        })
        .collect();
    let refs: Vec<&String> = inputs.keys().collect();
    for round in 0..ROUNDS {
        let mut clients = Vec::new();
        for client in 0..CLIENTS {
            let reference = refs[(round * CLIENTS + client) as usize];
            let (path, digest) = &inputs[reference];
            // Two of six send everything (and may finish or not); the others send a prefix
            // that ends from early to late in the input as the rounds go.
            let size = std::fs::metadata(path).unwrap().len() as usize;
            let prefix = ((client + round) % 3 != 0).then(|| {
                let past_two_chunks = size - 2 * CHUNK - 1;
                2 * CHUNK + 1 + past_two_chunks * round as usize / ROUNDS as usize
            });
            clients.push(start_client(&daemon, reference, path, digest, prefix));
        }
        let held: BTreeSet<String> = clients
            .iter()
            .filter(|c| c.held.is_some())
            .map(|c| c.reference.clone())
            .collect();
        assert_eq!(held.len(), 4, "round {round}: clients held mid-upload");
        // Kill once the daemon has bytes of every held upload: they are in flight.
        plinth_tests::wait_for(
            "bytes of every held upload to reach the daemon",
            Duration::from_secs(30),
            || {
                let active = active(&daemon);
                held.iter()
                    .all(|r| active.get(r) == Some(&true))
                    .then_some(())
            },
        );
        let dir = daemon.into_dir();
        for mut client in clients {
            drop(client.held.take());
            let _ = client.child.kill();
            let _ = client.child.wait();
        }
        let restarted = start_in(dir, Start::default())
            .unwrap_or_else(|(log, _)| panic!("restart {round} failed:\n{log}"));
        daemon = restarted;
        let blobs = check_blob_files(&daemon.root());
        // Every record has its blob, and the blob verifies. (A blob without a record is
        // allowed: the kill can fall between the store's commit and the record's.)
        let listed = daemon.ctr(&["content", "ls", "-q"]);
        let listed: Vec<String> = listed.ok().lines().map(str::to_string).collect();
        for digest in &listed {
            assert!(
                blobs.contains(digest),
                "round {round}: record {digest} has no blob file"
            );
            let copy = daemon.dir().join("check.bin");
            daemon
                .ctr_files(&["content", "get", digest], None, Some(&copy))
                .ok();
            assert_eq!(
                &sha256_file(&copy),
                digest,
                "round {round}: record {digest} does not match its blob"
            );
        }
        // The work was interrupted: no held upload committed, each is still open.
        let open = active(&daemon);
        for reference in &held {
            let digest = &inputs[reference].1;
            assert!(
                !listed.contains(digest),
                "round {round}: {reference} committed from a prefix"
            );
            assert!(
                open.contains_key(reference),
                "round {round}: interrupted ingest {reference} is not open after the restart: {open:?}"
            );
        }
        // Open ingests resume (the client restarts or continues them) and commit correctly.
        for reference in open.keys() {
            let (path, digest) = &inputs[reference];
            let resumed = daemon.plinthctl_files(
                &[
                    "content",
                    "ingest",
                    "--progress",
                    "never",
                    "--expected-digest",
                    digest,
                    reference,
                ],
                Some(path),
                None,
            );
            assert_eq!(
                resumed.ok(),
                format!("{digest}\n"),
                "round {round}: resuming {reference}"
            );
        }
        assert_eq!(
            daemon.plinthctl(&["content", "active"]).ok(),
            "REF    SIZE    AGE\n",
            "round {round}: ingests left open"
        );
    }
    // In the end every input can be committed and read back.
    for (reference, (path, digest)) in &inputs {
        let output = daemon.plinthctl_files(
            &[
                "content",
                "ingest",
                "--progress",
                "never",
                "--expected-digest",
                digest,
                reference,
            ],
            Some(path),
            None,
        );
        assert!(
            output.status.success() || output.stdout.contains("already exists"),
            "{reference}: {}",
            output.stderr
        );
    }
    let listed = daemon.ctr(&["content", "ls", "-q"]);
    assert_eq!(listed.ok().lines().count(), inputs.len());
    assert_eq!(check_blob_files(&daemon.root()).len(), inputs.len());
}

/// Kill rounds of the storm under load.
const STORM_ROUNDS: u64 = 20;

/// plinth-load's successful operations so far, from a progress line
/// (`plinth-load: 1.0 s: 1234 ops (1234/s), …`).
fn progress_ops(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(" s: ")?;
    rest.split_once(" ops ")?.0.parse().ok()
}

/// plinthd is killed with SIGKILL twenty times while plinth-load's clients drive every
/// operation (ingests small and large, resumed ones, label updates, deletes, snapshot
/// chains on both snapshotters, namespaces). After each restart, `plinth-load check` reads
/// what the clients journaled: every acknowledged write is there and verifies, and nothing
/// that was never acknowledged is visible as committed; every blob file is what its name
/// says. Earlier rounds' journals are checked again at the end.
#[test]
fn sigkill_storm_under_load_keeps_every_acknowledged_write_and_shows_nothing_else() {
    use std::io::BufRead as _;
    let mut daemon = start(Start::default());
    let mut journals: Vec<PathBuf> = Vec::new();
    for round in 0..STORM_ROUNDS {
        let journal = daemon.dir().join(format!("journal-{round}.json"));
        let snapshotter = if round % 2 == 0 {
            "native"
        } else {
            "overlayfs"
        };
        let mut load = Command::new(binary("plinth-load"))
            .args([
                "run",
                "--address",
                &daemon.address(),
                "--clients",
                "8",
                "--duration",
                "120s",
                "--snapshotter",
                snapshotter,
                "--prefix",
                &format!("storm{round}"),
                "--until-gone",
                "--journal",
                journal.to_str().unwrap(),
                "--progress",
                "50ms",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The kill lands after a number of operations that moves from round to round.
        let wanted = 40 + 29 * round;
        // Its stderr is read to the end on a thread of its own (the progress lines keep
        // coming after the kill); the lines reach the test as they come.
        let (lines, seen_lines) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(load.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut seen = Vec::new();
        while let Ok(line) = seen_lines.recv() {
            let ops = progress_ops(&line);
            seen.push(line);
            if ops.is_some_and(|n| n >= wanted) {
                break;
            }
        }
        assert!(
            seen.last()
                .and_then(|l| progress_ops(l))
                .is_some_and(|n| n >= wanted),
            "round {round}: plinth-load stopped before {wanted} operations:\n{}",
            seen.join("\n")
        );
        let dir = daemon.into_dir();
        let output = load.wait_with_output().unwrap();
        reader.join().unwrap();
        seen.extend(seen_lines.try_iter());
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "round {round}: plinth-load failed ({}) before or at the kill:\n{report}\n{}",
            output.status,
            seen.join("\n")
        );
        assert!(report.contains("(the daemon went away)"), "{report}");
        daemon = start_in(dir, Start::default())
            .unwrap_or_else(|(log, _)| panic!("restart {round} failed:\n{log}"));
        check_blob_files(&daemon.root());
        journals.push(journal);
        // This round's and the previous one's (which has now survived two kills).
        let recent = &journals[journals.len().saturating_sub(2)..];
        check_journals(&daemon, round, recent);
    }
    check_journals(&daemon, STORM_ROUNDS, &journals);
}

fn check_journals(daemon: &Daemon, round: u64, journals: &[PathBuf]) {
    let mut args = vec![
        "check".to_string(),
        "--address".to_string(),
        daemon.address(),
    ];
    args.extend(journals.iter().map(|j| j.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let check = plinth_tests::run(&binary("plinth-load"), &args);
    assert!(
        check.status.success() && check.stdout.contains("; 0 problems"),
        "round {round}: after the restart:\n{}{}",
        check.stdout,
        check.stderr
    );
}
