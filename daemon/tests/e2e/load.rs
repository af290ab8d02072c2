//! plinth-load against plinthd: the short load run CI holds plinthd to (16 clients for 20 s,
//! with connections dropped mid-call: no unexpected error, no wrong answer, no fd leak), and
//! the crash journal's check catching what a daemon lost or made up.

use plinth_tests::{Daemon, Output, Start, binary, random_file, run, start};

fn load(args: &[&str]) -> Output {
    run(&binary("plinth-load"), args)
}

#[test]
fn sixteen_clients_for_twenty_seconds_meet_no_error_no_wrong_answer_and_leak_nothing() {
    let daemon = start(Start::default());
    let address = daemon.address();
    let output = load(&[
        "run",
        "--address",
        &address,
        "--clients",
        "16",
        "--duration",
        "20s",
        "--disconnects",
        "--check-leaks",
        "--progress",
        "5s",
    ]);
    let stdout = output.ok();
    assert!(
        stdout.contains(", 0 unexpected errors, 0 verification failures"),
        "{stdout}"
    );
    // Every kind of operation ran and succeeded at least once.
    for op in [
        "ingest ",
        "ingest-write",
        "ingest-reopen",
        "read ",
        "info ",
        "list ",
        "update ",
        "delete ",
        "snapshot-prepare",
        "snapshot-mounts",
        "snapshot-commit",
        "snapshot-view",
        "snapshot-remove",
        "snapshot-list",
        "namespace-delete",
        "shared-read",
        "disconnect-write",
        "disconnect-read",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(op))
            .unwrap_or_else(|| panic!("no {op:?} row:\n{stdout}"));
        let ok: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(ok > 0, "{line}");
    }
    // The clients removed what they wrote, their namespaces too.
    assert_eq!(daemon.plinthctl(&["namespaces", "ls", "-q"]).ok(), "");
}

/// The journal of a short run; `check` of it must pass on the untouched daemon.
fn journaled_run(daemon: &Daemon) -> std::path::PathBuf {
    let journal = daemon.dir().join("journal.json");
    let address = daemon.address();
    load(&[
        "run",
        "--address",
        &address,
        "--clients",
        "2",
        "--duration",
        "2s",
        "--prefix",
        "j",
        "--journal",
        journal.to_str().unwrap(),
    ])
    .ok();
    let check = load(&["check", "--address", &address, journal.to_str().unwrap()]);
    assert!(check.ok().contains("; 0 problems"), "{}", check.stdout);
    journal
}

#[test]
fn the_journal_check_finds_a_lost_blob_and_one_never_acknowledged() {
    let daemon = start(Start::default());
    let journal = journaled_run(&daemon);
    let text = std::fs::read_to_string(&journal).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let blobs = parsed["models"][0]["blobs"].as_object().unwrap();
    let lost = blobs
        .keys()
        .next()
        .expect("the run committed a blob")
        .clone();
    let files = |args: &[&str]| daemon.plinthctl(&[&["--namespace", "j-0"], args].concat());
    files(&["content", "rm", &lost]).ok();
    let extra = daemon.dir().join("extra.bin");
    random_file(&extra, 1000, 7);
    let made_up = daemon
        .plinthctl_files(
            &[
                "--namespace",
                "j-1",
                "content",
                "ingest",
                "--progress",
                "never",
                "made-up",
            ],
            Some(&extra),
            None,
        )
        .ok()
        .trim()
        .to_string();
    let check = load(&[
        "check",
        "--address",
        &daemon.address(),
        journal.to_str().unwrap(),
    ]);
    assert!(!check.status.success(), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains(&format!("j-0: acknowledged blob {lost} is missing")),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains(&format!(
            "j-1: blob {made_up} is visible but its commit was never acknowledged"
        )),
        "{}",
        check.stdout
    );
    assert!(check.stdout.contains("; 2 problems"), "{}", check.stdout);
}

/// A reader of plinth-load's progress that stops reading (closes the pipe) does not fail the
/// run: the progress lines are dropped, the report still comes.
#[test]
fn a_closed_stderr_does_not_fail_the_run() {
    let daemon = start(Start::default());
    let mut child = std::process::Command::new(binary("plinth-load"))
        .args([
            "run",
            "--address",
            &daemon.address(),
            "--clients",
            "2",
            "--duration",
            "2s",
            "--progress",
            "10ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}: {stdout}", output.status);
    assert!(
        stdout.contains(", 0 unexpected errors, 0 verification failures"),
        "{stdout}"
    );
}
