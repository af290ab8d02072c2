//! plinthctl's words where the words are the point: errors, help, `plugins ls -d`, ingest
//! output and `snapshots info` — each beside what the stock `ctr` prints where it has an
//! equivalent.

use std::process::Command;

use plinth_tests::{Start, binary, random_file, run, sha256_file, start};

/// Regression: `plinthctl -a /nonexistent.sock plugins ls` printed the OS error twice.
#[test]
fn an_os_error_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let output = run(
        &binary("plinthctl"),
        &["-a", missing.to_str().unwrap(), "plugins", "ls"],
    );
    assert!(!output.status.success());
    let os_error = "No such file or directory (os error 2)";
    assert_eq!(
        output.stderr.matches(os_error).count(),
        1,
        "{}",
        output.stderr
    );
    assert!(
        output
            .stderr
            .starts_with(&format!("plinthctl: connecting to {}", missing.display())),
        "{}",
        output.stderr
    );
}

/// Regression: both binaries printed the crate's description, naming both.
#[test]
fn each_help_starts_with_its_own_words() {
    let cases = [
        (
            "plinthd",
            "Plinth's reference daemon: containerd's content, snapshots and metadata services \
             over gRPC",
        ),
        (
            "plinthctl",
            "Plinth's client for a running plinthd (or containerd): plugins, namespaces, \
             content, snapshots, gc",
        ),
    ];
    for (name, first_line) in cases {
        let help = run(&binary(name), &["--help"]);
        assert_eq!(help.ok().lines().next(), Some(first_line), "{name}");
    }
}

/// Lines of `plugins ls -d` without trailing blanks (ctr pads its separator lines), each
/// plugin's lines sorted (ctr prints exports in Go's random map order).
fn plugin_blocks(text: &str) -> Vec<Vec<String>> {
    let trimmed: Vec<&str> = text.lines().map(str::trim_end).collect();
    trimmed
        .split(|line| line.is_empty())
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut lines: Vec<String> = block.iter().map(|l| l.to_string()).collect();
            lines.sort();
            lines
        })
        .collect()
}

/// Regression: `plugins ls -d` ran export keys into their values
/// (`content_sharing_policyshared`); the columns now fall where ctr's do.
#[test]
fn plugins_ls_detailed_lines_up_as_ctr_does() {
    let daemon = start(Start::default());
    let ctr = daemon.ctr(&["plugins", "ls", "-d"]);
    let ours = daemon.plinthctl(&["plugins", "ls", "-d"]);
    assert!(
        ours.ok().contains("content_sharing_policy      shared\n"),
        "{}",
        ours.stdout
    );
    assert_eq!(
        plugin_blocks(ours.ok()),
        plugin_blocks(ctr.ok()),
        "plinthctl:\n{}\nctr:\n{}",
        ours.stdout,
        ctr.stdout
    );
}

/// Regression: ingesting a blob the store has, without `--expected-digest`, printed
/// ` already exists` with no digest.
#[test]
fn ingest_of_an_existing_blob_names_its_digest() {
    let daemon = start(Start::default());
    let input = daemon.dir().join("input.bin");
    // Over one write message, so that the store notices only at the commit.
    random_file(&input, (1 << 20) + 7, 17);
    let digest = sha256_file(&input);
    let ingest = |args: &[&str]| {
        let mut all = vec!["content", "ingest"];
        all.extend_from_slice(args);
        daemon.plinthctl_files(&all, Some(&input), None)
    };
    assert_eq!(ingest(&["first"]).ok(), format!("{digest}\n"));
    let exists = format!("{digest} already exists\n");
    let cases: &[&[&str]] = &[
        &["again"],
        &["again", "--expected-digest", &digest],
        &["again", input.to_str().unwrap()],
    ];
    for args in cases {
        assert_eq!(ingest(args).ok(), exists, "{args:?}");
    }
}

/// Where standard error is not a terminal, an ingest prints no progress unless asked to;
/// asked to, it shows a bar when the size is known (a regular file) and the rate otherwise.
#[test]
fn ingest_progress_follows_terminal_and_size() {
    let daemon = start(Start::default());
    // Each ingest its own bytes: a blob the store has would end the ingest early.
    let fresh = |reference: &str| {
        let input = daemon.dir().join(reference);
        let seed = reference.bytes().map(u64::from).sum();
        random_file(&input, 3 << 20, seed);
        let digest = sha256_file(&input);
        (input, digest)
    };
    let from_pipe = |reference: &str, progress: &str| {
        let (input, digest) = fresh(reference);
        let script = format!(
            "cat {} | {} --address {} content ingest --progress {progress} {reference}",
            input.display(),
            binary("plinthctl").display(),
            daemon.address()
        );
        let output = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{digest}\n")
        );
        String::from_utf8(output.stderr).unwrap()
    };
    let from_file = |reference: &str, progress: &str| {
        let (input, digest) = fresh(reference);
        let args = ["content", "ingest", "--progress", progress, reference];
        let output = daemon.plinthctl_files(&args, Some(&input), None);
        assert_eq!(output.ok(), format!("{digest}\n"));
        output.stderr
    };
    assert_eq!(from_file("auto-file", "auto"), "");
    assert_eq!(from_pipe("auto-pipe", "auto"), "");
    let bar = from_file("bar", "always");
    assert!(
        bar.contains("100%") && bar.contains("3.00 MiB/3.00 MiB") && bar.contains("/s"),
        "{bar}"
    );
    let rate = from_pipe("rate", "always");
    assert!(
        !rate.contains('%') && rate.contains("3.00 MiB") && rate.contains("/s"),
        "{rate}"
    );
}

/// Regression: `snapshots info` printed `Created: 1795997128.371332055`; it now prints what
/// ctr prints: the info as JSON, times in RFC 3339 with nanoseconds.
#[test]
fn snapshots_info_prints_as_ctr_does() {
    let daemon = start(Start::default());
    let snapshots = |client: &str, args: &[&str]| {
        let mut command = Command::new(if client == "ctr" {
            plinth_tests::ctr()
        } else {
            binary(client)
        });
        let output = command
            .args(["--address", &daemon.address()])
            .args(["snapshots", "--snapshotter", "native"])
            .args(args)
            // Go prints local times; plinthctl prints UTC.
            .env("TZ", "UTC")
            .env_remove("CONTAINERD_NAMESPACE")
            .output()
            .unwrap();
        assert!(output.status.success(), "{client} {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    snapshots("ctr", &["prepare", "active", ""]);
    snapshots("ctr", &["commit", "base", "active"]);
    snapshots("ctr", &["prepare", "child", "base"]);
    snapshots("plinthctl", &["label", "child", "role=test"]);
    for key in ["base", "child"] {
        let ours = snapshots("plinthctl", &["info", key]);
        assert_eq!(ours, snapshots("ctr", &["info", key]), "{key}");
        assert!(ours.contains("\"Created\": \"20"), "{ours}");
    }
}
