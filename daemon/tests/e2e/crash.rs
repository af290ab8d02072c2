//! Crash consistency: plinthd is killed with SIGKILL in the middle of many concurrent
//! ingests, again and again; after each restart every committed blob verifies, every record
//! has its blob, no half-written blob is visible, and open ingests resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use plinth_tests::{Start, binary, random_file, sha256_file, start, start_in};

const ROUNDS: u64 = 6;
const CLIENTS: u64 = 6;

fn blobs_dir(root: &Path) -> PathBuf {
    root.join("io.containerd.content.v1.content/blobs/sha256")
}

/// Every file under the blob directory hashes to its name: no blob is half-visible.
fn check_blob_files(root: &Path) {
    let Ok(entries) = std::fs::read_dir(blobs_dir(root)) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            sha256_file(&path),
            format!("sha256:{name}"),
            "blob file {} is not what its name says",
            path.display()
        );
    }
}

#[test]
fn sigkill_during_concurrent_ingests_never_loses_or_corrupts_data() {
    let mut daemon = start(Start::default());
    let inputs: BTreeMap<String, (PathBuf, String)> = (0..ROUNDS * CLIENTS)
        .map(|i| {
            let path = daemon.dir().join(format!("input-{i}.bin"));
            random_file(&path, ((i as usize % 7) + 1) << 20, 100 + i);
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
            let child = Command::new(binary("plinthctl"))
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
                .stdin(std::fs::File::open(path).unwrap())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            clients.push(child);
        }
        // Kill at a different moment each round: from early in the uploads to near the end.
        std::thread::sleep(Duration::from_millis(40 + round * 70));
        let dir = daemon.into_dir();
        for mut child in clients {
            let _ = child.kill();
            let _ = child.wait();
        }
        let restarted = start_in(dir, Start::default())
            .unwrap_or_else(|(log, _)| panic!("restart {round} failed:\n{log}"));
        daemon = restarted;
        check_blob_files(&daemon.root());
        // Every record has its blob, and the blob verifies.
        let listed = daemon.ctr(&["content", "ls", "-q"]);
        for digest in listed.ok().lines() {
            let copy = daemon.dir().join("check.bin");
            daemon
                .ctr_files(&["content", "get", digest], None, Some(&copy))
                .ok();
            assert_eq!(
                sha256_file(&copy),
                digest,
                "round {round}: record {digest} does not match its blob"
            );
        }
        // Open ingests resume (the client restarts or continues them) and commit correctly.
        let active = daemon.plinthctl(&["content", "active"]);
        for line in active.ok().lines().skip(1) {
            let reference = line.split_whitespace().next().unwrap().to_string();
            let (path, digest) = &inputs[&reference];
            let resumed = daemon.plinthctl_files(
                &[
                    "content",
                    "ingest",
                    "--progress",
                    "never",
                    "--expected-digest",
                    digest,
                    &reference,
                ],
                Some(path),
                None,
            );
            assert!(
                resumed.status.success() || resumed.stdout.contains("already exists"),
                "round {round}: resuming {reference}: {}",
                resumed.stderr
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
    check_blob_files(&daemon.root());
}
