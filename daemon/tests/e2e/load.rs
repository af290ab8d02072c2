//! plinth-load against plinthd: the short load run CI holds plinthd to (16 clients for 20 s,
//! with connections dropped mid-call: no unexpected error, no wrong answer, no fd leak), and
//! the crash journal's check catching what a daemon lost or made up.

use plinth_tests::{Daemon, Output, Start, binary, random_file, run, start};

/// Every kind of operation of the mix, for `--begin-with`: those that choose a variant at
/// random (a resumed large ingest one in three, a synchronous lease delete one in four, a
/// dropped write or read) more than once.
const EVERY_OPERATION: &str = "ingest,ingest-large,ingest-large,read,info,list,update,delete,\
    snapshot,view,remove-chain,list-snapshots,namespace,shared-ingest,shared-read,shared-delete,\
    image-create,image-get,image-list,image-update,image-delete,lease,lease,lease,disconnect,\
    disconnect";

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
        // Every kind of operation first, so that each row below has run whatever the mix
        // picks afterwards; those that choose a variant at random (a resumed large ingest
        // one in three, a synchronous lease delete one in four, a dropped write or read)
        // more than once, which over 16 clients leaves a chance below 1e-5 of missing one.
        "--begin-with",
        EVERY_OPERATION,
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
        "image-create",
        "image-get",
        "image-list",
        "image-update",
        "image-delete",
        "lease-create",
        "lease-list-resources",
        "lease-delete-sync",
        "event-delivery",
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

/// The blocking pool bounded to one thread (`--blocking-threads 1`): every kind of
/// operation still completes, concurrently over 8 clients, with the right answers. A task on
/// the pool that waited for another task on it would hang here (ARCHITECTURE.md, "Blocking
/// work").
#[test]
fn one_blocking_thread_serves_every_kind_of_operation() {
    let daemon = start(Start {
        args: vec!["--blocking-threads".into(), "1".into()],
        ..Start::default()
    });
    // Bounded: a hang fails the test (exit 124) instead of holding CI.
    let plinth_load = binary("plinth-load");
    let output = run(
        std::path::Path::new("timeout"),
        &[
            "300",
            plinth_load.to_str().unwrap(),
            "run",
            "--address",
            &daemon.address(),
            "--clients",
            "8",
            "--duration",
            "0s",
            "--disconnects",
            "--begin-with",
            EVERY_OPERATION,
        ],
    );
    let stdout = output.ok();
    assert!(
        stdout.contains(", 0 unexpected errors, 0 verification failures"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ingest-commit"))
        .unwrap_or_else(|| panic!("no ingest-commit row:\n{stdout}"));
    let ok: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ok >= 8, "{line}");
    let zero = run(&binary("plinthd"), &["--blocking-threads", "0"]);
    assert!(
        !zero.status.success() && zero.stderr.contains("--blocking-threads"),
        "zero threads is refused, naming the flag: {zero:?}"
    );
}

/// Short lists answer on the thread serving the call, so no read pool thread
/// (`plinth-read`) starts; with `--list-inline 0` every list runs on the read pool, apart
/// from the blocking pool; with `--read-threads 0` as well, on the blocking pool, and no
/// such thread exists.
#[test]
fn lists_run_where_the_flags_say() {
    for (args, pool) in [
        (vec![], false),
        (vec!["--list-inline", "0"], true),
        (vec!["--list-inline", "0", "--read-threads", "0"], false),
    ] {
        let daemon = start(Start {
            args: args.iter().map(ToString::to_string).collect(),
            ..Start::default()
        });
        daemon.ctr(&["namespaces", "create", "lists"]).ok();
        daemon.ctr(&["-n", "lists", "images", "ls"]).ok();
        daemon.ctr(&["-n", "lists", "leases", "ls"]).ok();
        // An idle pool thread lives for 10 s: long after the list has answered.
        let names: Vec<String> = thread_priorities(daemon.pid())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names.iter().any(|n| n == "plinth-read"),
            pool,
            "{args:?}: threads {names:?}"
        );
    }
}

/// Each thread of the daemon with its name and nice value (`/proc/<pid>/task/*/stat`).
fn thread_priorities(pid: u32) -> Vec<(String, i32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let task = task.unwrap().path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap();
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // After the name in parentheses: state is field 3, nice field 19.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            (comm.trim().to_string(), fields[16].parse().unwrap())
        })
        .collect()
}

/// The pool of bulk work runs below the threads that serve calls: with `--blocking-nice 6`
/// the blocking threads a commit used are at nice 6, the runtime's own threads and the read
/// and ingest pools' (a list and an ingest's write are calls a client waits for) at 0; with
/// the default, at 10; with 0, every thread at 0. The runtime has two workers per CPU, or
/// as many as `--worker-threads` says.
#[test]
fn pool_threads_run_below_the_threads_that_serve_calls() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    // More workers than the default's threads at nice 0 could be even with every blocking
    // thread (3 per CPU) among them.
    let more = (5 * cpus + 4).to_string();
    for (args, nice, workers) in [
        (vec!["--blocking-nice", "6"], 6, 2 * cpus),
        (vec![], 10, 2 * cpus),
        (vec!["--blocking-nice", "0"], 0, 2 * cpus),
        (vec!["--worker-threads", &more], 10, 5 * cpus + 4),
    ] {
        // Every list on the read pool (a short one is otherwise answered on the spot), so
        // that the `images ls` below starts a read pool thread.
        let args = [args, vec!["--list-inline", "0"]].concat();
        let daemon = start(Start {
            args: args.iter().map(ToString::to_string).collect(),
            ..Start::default()
        });
        daemon.ctr(&["namespaces", "create", "pools"]).ok();
        daemon.ctr(&["-n", "pools", "images", "ls"]).ok();
        let blob = daemon.dir().join("blob");
        std::fs::write(&blob, vec![5u8; 100_000]).unwrap();
        daemon
            .ctr_files(
                &["-n", "pools", "content", "ingest", "b"],
                Some(&blob),
                None,
            )
            .ok();
        // An idle pool thread lives for 10 s: long after the calls have answered.
        let threads = thread_priorities(daemon.pid());
        let of = |name: &str| -> Vec<i32> {
            threads
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .collect()
        };
        for pool in ["plinth-read", "plinth-ingest"] {
            assert!(
                !of(pool).is_empty(),
                "{args:?}: no {pool} thread in {threads:?}"
            );
            assert!(of(pool).iter().all(|&p| p == 0), "{args:?}: {threads:?}");
        }
        // The runtime's workers and the blocking pool's threads share the name plinthd
        // with the main thread: the workers serve calls at 0, the commit ran at the pool's
        // priority.
        let plinthd = of("plinthd");
        let serving = plinthd.iter().filter(|&&p| p == 0).count();
        assert!(serving > workers, "{args:?}: {threads:?}");
        assert!(plinthd.contains(&nice), "{args:?}: {threads:?}");
        assert!(
            plinthd.iter().all(|&p| p == 0 || p == nice),
            "{args:?}: {threads:?}"
        );
    }
}

/// The journal of a run in which each of two clients ingests a blob and creates an image on
/// it, nothing else (a random mix of any length may leave a client with neither); `check`
/// of it must pass on the untouched daemon.
fn journaled_run(daemon: &Daemon) -> std::path::PathBuf {
    let journal = daemon.dir().join("journal.json");
    let address = daemon.address();
    load(&[
        "run",
        "--address",
        &address,
        "--clients",
        "2",
        "--begin-with",
        "ingest,image-create",
        "--duration",
        "0s",
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
fn the_journal_check_finds_a_lost_blob_and_image_and_ones_never_acknowledged() {
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
    // An acknowledged image removed behind the journal's back, and one made by tagging it
    // in another client's namespace, which no client acknowledged.
    let images = parsed["models"][0]["images"].as_object().unwrap();
    let lost_image = images
        .keys()
        .next()
        .expect("the run created an image")
        .clone();
    let source = parsed["models"][1]["images"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .expect("the run created an image")
        .clone();
    daemon
        .ctr(&["--namespace", "j-0", "images", "rm", &lost_image])
        .ok();
    daemon
        .ctr(&[
            "--namespace",
            "j-1",
            "images",
            "tag",
            &source,
            "made-up-image",
        ])
        .ok();
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
            .contains(&format!("j-0: acknowledged image {lost_image} is missing")),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("j-1: image made-up-image exists but its creation was never acknowledged"),
        "{}",
        check.stdout
    );
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
    assert!(check.stdout.contains("; 4 problems"), "{}", check.stdout);
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

/// `metadata` against plinthd with a few records: every kind of call ran as often as asked,
/// every answer was right, and nothing is left behind, its namespace included.
#[test]
fn metadata_runs_every_call_checks_every_answer_and_leaves_nothing() {
    let daemon = start(Start::default());
    let report = daemon.dir().join("metadata.json");
    let output = load(&[
        "metadata",
        "--address",
        &daemon.address(),
        "--images",
        "30",
        "--containers",
        "12",
        "--sequential",
        "10",
        "--clients",
        "3",
        "--repeat",
        "3",
        "--gets",
        "20",
        "--namespace",
        "meta",
        "--label",
        "plinthd",
        "--report",
        report.to_str().unwrap(),
    ]);
    let stdout = output.ok();
    assert!(
        stdout.contains("total: 0 unexpected errors, 0 verification failures"),
        "{stdout}"
    );
    // (row, calls): 30 images, 10 of them by one client; a tenth of each in group g3.
    let rows = [
        ("Images.Create, 1 client", 10),
        ("Images.Create, 3 clients", 20),
        ("Images.List, all (30)", 3),
        ("Images.List, `labels.group==g3` (3)", 3),
        ("Images.Get", 20),
        ("Containers.Create, 1 client", 10),
        ("Containers.Create, 3 clients", 2),
        ("Containers.List, all (12)", 3),
        ("Containers.List, `labels.group==g3` (1)", 3),
        ("Containers.Delete, 3 clients", 12),
        ("Images.Delete, 3 clients", 30),
    ];
    for (row, calls) in rows {
        let count = stdout
            .lines()
            .find_map(|l| l.strip_prefix(row))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {row:?} row:\n{stdout}"));
        assert_eq!(count, calls.to_string(), "{row}:\n{stdout}");
    }
    assert_eq!(daemon.plinthctl(&["namespaces", "ls", "-q"]).ok(), "");
    let table = load(&["table", report.to_str().unwrap()]);
    assert!(
        table.ok().contains("| Images.Get | 20 | "),
        "{}",
        table.stdout
    );
}
