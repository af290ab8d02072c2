//! Content and snapshots through the stock `ctr` and plinthctl: data goes in, stays safe,
//! and comes out the same.

use plinth_tests::{Daemon, Start, random_file, sha256_file, start};

fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn ingest(
    daemon: &Daemon,
    namespace: &str,
    reference: &str,
    file: &std::path::Path,
    digest: &str,
) -> plinth_tests::Output {
    daemon.ctr_files(
        &[
            "--namespace",
            namespace,
            "content",
            "ingest",
            "--expected-digest",
            digest,
            reference,
        ],
        Some(file),
        None,
    )
}

#[test]
fn ctr_content_ingest_ls_get_label_rm_of_a_256_mib_blob() {
    let daemon = start(Start::default());
    let input = daemon.dir().join("input.bin");
    random_file(&input, 256 << 20, 1);
    let digest = sha256_file(&input);
    let size = (256u64 << 20).to_string();
    let output = daemon.ctr_files(
        &[
            "content",
            "ingest",
            "--expected-digest",
            &digest,
            "--expected-size",
            &size,
            "big-blob",
        ],
        Some(&input),
        None,
    );
    output.ok();
    let listing = daemon.ctr(&["content", "ls"]);
    let found = rows(listing.ok());
    assert_eq!(found.len(), 1, "{}", listing.stdout);
    assert_eq!(found[0][0], digest);
    assert_eq!(
        daemon.ctr(&["content", "ls", "-q"]).ok(),
        format!("{digest}\n")
    );
    let copy = daemon.dir().join("copy.bin");
    daemon
        .ctr_files(&["content", "get", &digest], None, Some(&copy))
        .ok();
    assert_eq!(
        sha256_file(&copy),
        digest,
        "content get returns the same bytes"
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 256 << 20);
    daemon
        .ctr(&["content", "label", &digest, "app=test", "tier=1"])
        .ok();
    let labelled = daemon.ctr(&["content", "ls"]);
    // ctr prints labels in Go's map order, which varies.
    let labels_column = labelled
        .ok()
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_default();
    let mut labels: Vec<&str> = labels_column.split(',').collect();
    labels.sort_unstable();
    assert_eq!(labels, ["app=test", "tier=1"], "{}", labelled.stdout);
    let filtered = daemon.ctr(&["content", "ls", "-q", "labels.app==test"]);
    assert_eq!(filtered.ok(), format!("{digest}\n"));
    assert_eq!(
        daemon
            .ctr(&["content", "ls", "-q", "labels.app==other"])
            .ok(),
        ""
    );
    daemon.ctr(&["content", "rm", &digest]).ok();
    assert_eq!(daemon.ctr(&["content", "ls", "-q"]).ok(), "");
    let gone = daemon.ctr_files(&["content", "get", &digest], None, Some(&copy));
    assert!(!gone.status.success());
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
}

#[test]
fn a_wrong_expected_digest_is_refused_and_nothing_is_committed() {
    let daemon = start(Start::default());
    let input = daemon.dir().join("input.bin");
    random_file(&input, 1 << 20, 2);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let output = ingest(&daemon, "default", "wrong", &input, &wrong);
    assert!(!output.status.success());
    // The digest of what was sent and the one expected, both named.
    let sent = sha256_file(&input);
    assert_eq!(
        output.stderr,
        format!(
            "ctr: failed commit on ref \"wrong\": commit failed: unexpected commit digest \
             {sent}, expected {wrong}: failed precondition\n"
        )
    );
    assert_eq!(daemon.ctr(&["content", "ls", "-q"]).ok(), "");
    let bad = daemon.ctr(&["content", "get", "sha256:../../etc/passwd"]);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("invalid"), "{}", bad.stderr);
}

/// A Write call that opens `reference` for a blob of `total` bytes with digest `expected`
/// and commits it at offset 0 without sending a byte; the server's answer to the commit.
fn commit_without_bytes(
    daemon: &Daemon,
    namespace: &str,
    reference: &str,
    total: i64,
    expected: &str,
) -> Result<String, String> {
    use plinth_api::containerd::services::content::v1::content_client::ContentClient;
    use plinth_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = plinthd::client::Client::connect(&daemon.address(), namespace)
            .await
            .unwrap();
        let mut api = ContentClient::new(client.channel());
        let stat_and_commit =
            [WriteAction::Stat, WriteAction::Commit].map(|action| WriteContentRequest {
                action: action as i32,
                r#ref: reference.to_string(),
                total,
                expected: expected.to_string(),
                offset: 0,
                ..WriteContentRequest::default()
            });
        let request = client.request(tokio_stream::iter(stat_and_commit)).unwrap();
        let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        let mut replies = api.write(request).await.map_err(status)?.into_inner();
        let mut last = String::new();
        while let Some(reply) = replies.message().await.map_err(status)? {
            last = format!("{:?} {}", reply.action(), reply.digest);
        }
        Ok(last)
    })
}

#[test]
fn isolated_namespaces_cannot_see_each_others_blobs() {
    let config = "version = 3\n[plugins.\"io.containerd.metadata.v1.redb\"]\ncontent_sharing_policy = \"isolated\"\n";
    let daemon = start(Start {
        config: config.into(),
        ..Start::default()
    });
    let input = daemon.dir().join("input.bin");
    random_file(&input, 3 << 20, 3);
    let digest = sha256_file(&input);
    let empty_digest = format!(
        "sha256:{}",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    ingest(&daemon, "team-a", "blob", &input, &digest).ok();
    assert_eq!(
        daemon
            .ctr(&["--namespace", "team-a", "content", "ls", "-q"])
            .ok(),
        format!("{digest}\n")
    );
    assert_eq!(
        daemon
            .ctr(&["--namespace", "team-b", "content", "ls", "-q"])
            .ok(),
        ""
    );
    let copy = daemon.dir().join("copy.bin");
    let denied = daemon.ctr_files(
        &["--namespace", "team-b", "content", "get", &digest],
        None,
        Some(&copy),
    );
    assert!(!denied.status.success(), "team-b read team-a's blob");
    // Knowing the digest (and size) of team-a's blob is not enough: team-b must upload the
    // bytes. A commit that sends none — with or without the size — records nothing.
    let size = 3i64 << 20;
    // (total announced, the server's refusal of the commit)
    let cases: &[(i64, String)] = &[
        (
            size,
            format!("FailedPrecondition: unexpected commit size 0, expected {size}"),
        ),
        (
            0,
            format!(
                "FailedPrecondition: unexpected commit digest {empty_digest}, expected {digest}"
            ),
        ),
    ];
    for (total, refusal) in cases {
        let reference = format!("no-bytes-{total}");
        assert_eq!(
            commit_without_bytes(&daemon, "team-b", &reference, *total, &digest),
            Err(refusal.clone()),
            "a commit of no bytes with total {total}"
        );
    }
    // The same through ctr, with an empty standard input.
    let empty = daemon.dir().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let refused = ingest(&daemon, "team-b", "empty", &empty, &digest);
    assert_eq!(
        refused.stderr,
        format!(
            "ctr: failed commit on ref \"empty\": commit failed: unexpected commit digest \
             {empty_digest}, expected {digest}: failed precondition\n"
        )
    );
    // Half the bytes: refused as well.
    let half = daemon.dir().join("half.bin");
    std::fs::write(&half, &std::fs::read(&input).unwrap()[..3 << 19]).unwrap();
    let half_digest = sha256_file(&half);
    let refused = ingest(&daemon, "team-b", "half", &half, &digest);
    assert_eq!(
        refused.stderr,
        format!(
            "ctr: failed commit on ref \"half\": commit failed: unexpected commit digest \
             {half_digest}, expected {digest}: failed precondition\n"
        )
    );
    assert_eq!(
        daemon
            .ctr(&["--namespace", "team-b", "content", "ls", "-q"])
            .ok(),
        "",
        "team-b recorded the blob without uploading it"
    );
    // Every byte: then team-b has the blob too.
    ingest(&daemon, "team-b", "blob", &input, &digest).ok();
    daemon
        .ctr_files(
            &["--namespace", "team-b", "content", "get", &digest],
            None,
            Some(&copy),
        )
        .ok();
    assert_eq!(sha256_file(&copy), digest);
    // Removing it from team-a leaves team-b's copy readable.
    daemon
        .ctr(&["--namespace", "team-a", "content", "rm", &digest])
        .ok();
    daemon
        .ctr_files(
            &["--namespace", "team-b", "content", "get", &digest],
            None,
            Some(&copy),
        )
        .ok();
    assert_eq!(sha256_file(&copy), digest);
}

#[test]
fn shared_namespaces_commit_a_known_blob_without_upload() {
    let daemon = start(Start::default());
    let input = daemon.dir().join("input.bin");
    random_file(&input, 2 << 20, 4);
    let digest = sha256_file(&input);
    ingest(&daemon, "first", "blob", &input, &digest).ok();
    // An empty standard input: the bytes are not sent again, yet the commit completes.
    let empty = daemon.dir().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let size = (2u64 << 20).to_string();
    daemon
        .ctr_files(
            &[
                "--namespace",
                "second",
                "content",
                "ingest",
                "--expected-digest",
                &digest,
                "--expected-size",
                &size,
                "blob",
            ],
            Some(&empty),
            None,
        )
        .ok();
    assert_eq!(
        daemon
            .ctr(&["--namespace", "second", "content", "ls", "-q"])
            .ok(),
        format!("{digest}\n")
    );
}

#[test]
fn a_namespace_with_content_cannot_be_removed() {
    let daemon = start(Start::default());
    let input = daemon.dir().join("input.bin");
    random_file(&input, 4096, 5);
    let digest = sha256_file(&input);
    ingest(&daemon, "busy", "blob", &input, &digest).ok();
    let refused = daemon.plinthctl(&["namespaces", "rm", "busy"]);
    assert!(!refused.status.success());
    assert!(
        refused
            .stderr
            .contains("must be empty, but it still has content"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("FailedPrecondition"),
        "{}",
        refused.stderr
    );
    daemon
        .ctr(&["--namespace", "busy", "content", "rm", &digest])
        .ok();
    daemon.plinthctl(&["namespaces", "rm", "busy"]).ok();
}

#[test]
fn plinthctl_content_round_trip_with_progress() {
    let daemon = start(Start::default());
    let input = daemon.dir().join("input.bin");
    random_file(&input, 5 << 20, 6);
    let digest = sha256_file(&input);
    let output = daemon.plinthctl_files(
        &[
            "content",
            "ingest",
            "--progress",
            "always",
            "--expected-digest",
            &digest,
            "pc-blob",
        ],
        Some(&input),
        None,
    );
    assert_eq!(output.ok(), format!("{digest}\n"));
    assert!(
        output.stderr.contains("pc-blob [") && output.stderr.contains("5.00 MiB/5.00 MiB"),
        "progress shows a bar: {}",
        output.stderr
    );
    assert!(
        output.stderr.contains("/s"),
        "progress shows a rate: {}",
        output.stderr
    );
    let copy = daemon.dir().join("copy.bin");
    daemon
        .plinthctl_files(&["content", "get", &digest], None, Some(&copy))
        .ok();
    assert_eq!(sha256_file(&copy), digest);
    daemon.plinthctl(&["content", "label", &digest, "k=v"]).ok();
    assert!(daemon.plinthctl(&["content", "ls"]).ok().contains("k=v"));
    assert_eq!(
        daemon.plinthctl(&["content", "active"]).ok(),
        "REF    SIZE    AGE\n"
    );
    daemon.plinthctl(&["content", "rm", &digest]).ok();
    assert_eq!(daemon.plinthctl(&["content", "ls", "-q"]).ok(), "");
}

/// The snapshot steps on the native snapshotter, through either client.
fn snapshot_steps(daemon: &Daemon, client: &dyn Fn(&[&str]) -> plinth_tests::Output) {
    let sn = ["snapshots", "--snapshotter", "native"];
    let with =
        |rest: &[&str]| -> Vec<String> { sn.iter().chain(rest).map(|s| s.to_string()).collect() };
    let call = |rest: &[&str]| {
        let args = with(rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        client(&args)
    };
    call(&["prepare", "base-active"]).ok();
    let mounts = call(&["mounts", "/mnt/x", "base-active"]);
    let text = mounts.ok();
    assert!(text.starts_with("mount -t bind "), "{text}");
    assert!(text.contains(" /mnt/x -o rbind,rw"), "{text}");
    let source = text.split_whitespace().nth(3).unwrap().to_string();
    std::fs::write(std::path::Path::new(&source).join("hello.txt"), b"hi").unwrap();
    call(&["commit", "base", "base-active"]).ok();
    call(&["prepare", "child", "base"]).ok();
    call(&["view", "look", "base"]).ok();
    let listing = rows(call(&["ls"]).ok());
    let mut got: Vec<(String, String, String)> = listing
        .into_iter()
        .map(|r| {
            if r.len() == 3 {
                (r[0].clone(), r[1].clone(), r[2].clone())
            } else {
                (r[0].clone(), String::new(), r[1].clone())
            }
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("base".to_string(), String::new(), "Committed".to_string()),
            (
                "child".to_string(),
                "base".to_string(),
                "Active".to_string()
            ),
            ("look".to_string(), "base".to_string(), "View".to_string()),
        ]
    );
    let tree = call(&["tree"]);
    assert!(tree.ok().contains("base\n"), "{}", tree.stdout);
    assert!(tree.stdout.contains("\\_ child"), "{}", tree.stdout);
    let usage = call(&["usage", "base"]);
    assert!(rows(usage.ok())[0][0] == "base", "{}", usage.stdout);
    let info = call(&["info", "child"]);
    assert!(
        info.ok().contains("child") && info.stdout.contains("base"),
        "{}",
        info.stdout
    );
    call(&["label", "child", "role=test"]).ok();
    let refused = call(&["rm", "base"]);
    assert!(
        !refused.status.success(),
        "a parent with children was removed"
    );
    call(&["rm", "child", "look"]).ok();
    call(&["rm", "base"]).ok();
    assert_eq!(rows(call(&["ls"]).ok()).len(), 0);
    let _ = daemon;
}

#[test]
fn ctr_snapshots_on_the_native_snapshotter() {
    let daemon = start(Start::default());
    snapshot_steps(&daemon, &|args| daemon.ctr(args));
    let info = daemon.ctr(&["snapshots", "--snapshotter", "native", "prepare", "timed"]);
    info.ok();
    let json = daemon.ctr(&["snapshots", "--snapshotter", "native", "info", "timed"]);
    let text = json.ok();
    let created = text
        .lines()
        .find(|l| l.contains("\"Created\""))
        .expect("created")
        .split('"')
        .nth(3)
        .unwrap()
        .to_string();
    let updated = text
        .lines()
        .find(|l| l.contains("\"Updated\""))
        .expect("updated")
        .split('"')
        .nth(3)
        .unwrap()
        .to_string();
    assert_eq!(
        created, updated,
        "a new snapshot's created and updated times are equal:\n{text}"
    );
    assert!(created.contains('.'), "nanosecond precision: {created}");
}

#[test]
fn plinthctl_snapshots_on_the_native_snapshotter() {
    let daemon = start(Start::default());
    snapshot_steps(&daemon, &|args| daemon.plinthctl(args));
}

#[test]
fn an_unknown_snapshotter_is_invalid_argument() {
    let daemon = start(Start::default());
    let output = daemon.ctr(&["snapshots", "--snapshotter", "zfs", "ls"]);
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("snapshotter not loaded: zfs"),
        "{}",
        output.stderr
    );
}

/// A blob whose bytes changed on disk (a flipped byte, a cut file) is never served whole:
/// a whole read fails with DataLoss naming the blob, and `plinthctl content verify --all`
/// lists every bad blob and fails, while good blobs read and verify as before.
#[test]
fn corrupt_blobs_are_refused_whole_and_found_by_verify() {
    let daemon = start(Start::default());
    let dir = daemon.dir().join("blobs-in");
    std::fs::create_dir_all(&dir).unwrap();
    // (name, size): one chunk, several chunks (the read service sends 1 MiB at a time).
    let blobs: Vec<(String, std::path::PathBuf)> =
        [("good", 4096), ("flipped", 3 << 20), ("cut", 1 << 20)]
            .iter()
            .enumerate()
            .map(|(i, (name, size))| {
                let path = dir.join(name);
                random_file(&path, *size, 40 + i as u64);
                let digest = sha256_file(&path);
                ingest(&daemon, "default", name, &path, &digest).ok();
                (digest, path)
            })
            .collect();
    let on_disk = |digest: &str| {
        daemon
            .root()
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let (good, flipped, cut) = (&blobs[0].0, &blobs[1].0, &blobs[2].0);
    let mut bytes = std::fs::read(on_disk(flipped)).unwrap();
    bytes[(2 << 20) + 17] ^= 0x40;
    std::fs::write(on_disk(flipped), &bytes).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(on_disk(cut))
        .unwrap();
    file.set_len(1000).unwrap();
    drop(file);

    let out = dir.join("out");
    daemon
        .ctr_files(&["content", "get", good], None, Some(&out))
        .ok();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&blobs[0].1).unwrap()
    );
    // A whole read (plinthctl's; ctr reads in 32 KiB pieces, which cannot be checked one
    // by one, but a piece past the end of a cut file fails the same way).
    let cut_by_ctr = daemon.ctr_files(&["content", "get", cut], None, Some(&out));
    assert!(
        !cut_by_ctr.status.success()
            && cut_by_ctr
                .stderr
                .contains("is corrupt: its file ends after 1000"),
        "{}",
        cut_by_ctr.stderr
    );
    for (digest, what) in [
        (flipped, "its bytes hash to sha256:"),
        (cut, "its file ends after 1000 of its 1048576 bytes"),
    ] {
        let get = daemon.plinthctl_files(&["content", "get", digest], None, Some(&out));
        assert!(!get.status.success(), "a corrupt blob was served whole");
        assert!(
            get.stderr
                .contains(&format!("blob {digest} is corrupt: {what}")),
            "{}",
            get.stderr
        );
        let served = std::fs::metadata(&out).unwrap().len();
        let full = std::fs::metadata(on_disk(digest))
            .unwrap()
            .len()
            .max(1 << 20);
        assert!(served < full, "{served} bytes of {full} served");
    }

    let verify = daemon.plinthctl(&["content", "verify", "--all"]);
    assert!(!verify.status.success(), "{}", verify.stdout);
    let text = format!("{}{}", verify.stdout, verify.stderr);
    assert!(text.contains(&format!("ok {good} (4096 bytes)")), "{text}");
    for digest in [flipped, cut] {
        assert!(
            text.contains(&format!("BAD {digest}: blob {digest} is corrupt"))
                && text.contains("(DataLoss)"),
            "{text}"
        );
    }
    assert!(
        text.contains("2 of 3 blobs are corrupt or unreadable"),
        "{text}"
    );
    let one = daemon.plinthctl(&["content", "verify", good]);
    assert_eq!(
        one.ok(),
        format!("ok {good} (4096 bytes)\n1 blobs verified\n")
    );
    let none = daemon.plinthctl(&["content", "verify"]);
    assert!(
        !none.status.success() && none.stderr.contains("--all"),
        "{}",
        none.stderr
    );
}

/// A client that opens a Write stream and goes silent holds its ref only until the idle
/// time-out: the daemon ends the stream with DeadlineExceeded, the lock is released and what
/// was written is kept, so the same ref resumes and commits. The time-out is set by a
/// reload, in place, and a value that is no duration is refused.
#[test]
fn a_silent_writer_loses_its_lock_after_the_idle_timeout_and_its_ingest_is_resumed() {
    use plinth_api::containerd::services::content::v1::content_client::ContentClient;
    use plinth_api::containerd::services::content::v1::{
        InfoRequest, WriteAction, WriteContentRequest,
    };

    let section = "[plugins.\"io.containerd.grpc.v1.content\"]\nwrite_idle_timeout = ";
    let daemon = start(Start {
        config: format!("version = 3\n{section}\"1h\"\n"),
        ..Start::default()
    });
    // Down to 300 ms by a reload, in place: the content service is not restarted, and the
    // streams opened from then on get the new time-out.
    std::fs::write(
        daemon.dir().join("config.toml"),
        plinth_tests::with_manual_gc(&format!("version = 3\n{section}\"300ms\"\n")),
    )
    .unwrap();
    let applied = daemon.plinthctl(&["config", "reload"]);
    assert!(
        applied
            .ok()
            .starts_with("reconfigure io.containerd.grpc.v1.content: config section changed\n"),
        "{}",
        applied.stdout
    );
    let input = daemon.dir().join("blob");
    random_file(&input, 200_000, 77);
    let bytes = std::fs::read(&input).unwrap();
    let digest = sha256_file(&input);
    let (first, rest) = bytes.split_at(120_000);
    let message = |action: WriteAction, offset: usize, data: &[u8]| WriteContentRequest {
        action: action as i32,
        r#ref: "silent".to_string(),
        total: bytes.len() as i64,
        expected: digest.clone(),
        offset: offset as i64,
        data: data.to_vec(),
        ..WriteContentRequest::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = plinthd::client::Client::connect(&daemon.address(), "default")
            .await
            .unwrap();
        let mut api = ContentClient::new(client.channel());
        // Write the first part, then say nothing more (the sender stays open).
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        sender
            .send(message(WriteAction::Write, 0, first))
            .await
            .unwrap();
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let mut replies = api
            .write(client.request(stream).unwrap())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(replies.message().await.unwrap().unwrap().offset, 120_000);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(30), replies.message())
            .await
            .expect("the silent stream was not ended within 30 s: the reloaded time-out is not in force")
            .unwrap_err();
        assert_eq!(ended.code(), tonic::Code::DeadlineExceeded, "{ended}");
        assert!(
            ended
                .message()
                .contains("no message for 300ms (write_idle_timeout")
                && ended.message().contains("resume"),
            "{ended}"
        );
        // The same ref resumes where it stopped, and commits.
        let resumed = vec![
            message(WriteAction::Stat, 0, &[]),
            message(WriteAction::Commit, first.len(), rest),
        ];
        let mut replies = api
            .write(client.request(tokio_stream::iter(resumed)).unwrap())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(replies.message().await.unwrap().unwrap().offset, 120_000);
        let committed = replies.message().await.unwrap().unwrap();
        assert_eq!(committed.digest, digest);
        drop(sender);
        let info = api
            .info(
                client
                    .request(InfoRequest {
                        digest: digest.clone(),
                    })
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(info.into_inner().info.unwrap().size, bytes.len() as i64);
    });
    let bad = daemon.dir().join("config.toml");
    std::fs::write(&bad, format!("version = 3\n{section}\"soon\"\n")).unwrap();
    let refused = daemon.plinthctl(&["config", "reload"]);
    assert!(
        !refused.status.success() && refused.stderr.contains("write_idle_timeout"),
        "{}",
        refused.stderr
    );
}

/// A request over `[grpc] max_recv_message_size` is refused with ResourceExhausted, as
/// containerd (grpc-go) refuses it — a streamed write and a unary call alike, on both
/// daemons side by side — and the daemon goes on serving.
#[test]
fn a_message_over_the_size_limit_is_resource_exhausted_as_on_containerd() {
    let plinthd = start(Start {
        config: "version = 3\n[grpc]\nmax_recv_message_size = 4096\n".to_string(),
        ..Start::default()
    });
    let containerd =
        plinth_tests::Containerd::start_with_grpc(&[], "  max_recv_message_size = 4096", "");
    let input = plinthd.dir().join("blob");
    random_file(&input, 100_000, 78);
    let label = format!("big={}", "a".repeat(6000));
    for (name, socket) in [
        ("plinthd", plinthd.address()),
        ("containerd", containerd.socket().display().to_string()),
    ] {
        let plinthctl = |args: &[&str]| {
            let mut all = vec!["--address", socket.as_str()];
            all.extend_from_slice(args);
            plinth_tests::run(&plinth_tests::binary("plinthctl"), &all)
        };
        let input = input.to_str().unwrap();
        for args in [
            &["content", "ingest", "big", input, "--progress", "never"][..],
            &["namespaces", "create", "labelled", &label][..],
        ] {
            let refused = plinthctl(args);
            // The same code; the words are each stack's own (plinthd names both sizes).
            let words = if name == "plinthd" {
                "the limit is: 4096 bytes"
            } else {
                "larger than max"
            };
            assert!(
                !refused.status.success()
                    && refused.stderr.contains(words)
                    && refused.stderr.contains("(ResourceExhausted)"),
                "{name} {args:?}: {}",
                refused.stderr
            );
        }
        plinthctl(&["namespaces", "create", "small"]).ok();
    }
}

/// A size-limited tmpfs, mounted for the test and unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}

/// On a full disk an ingest fails with ResourceExhausted naming the file and what to do, no
/// half blob is visible, what was committed before still reads, and once space is freed the
/// same ingest succeeds.
#[test]
fn a_full_disk_refuses_an_ingest_cleanly_and_it_succeeds_once_space_is_freed() {
    // The daemon's root is the small disk.
    let home = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&home.path().join("root"), "6m");
    let mut daemon = plinth_tests::start_in(home, Start::default())
        .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"));
    let dir = daemon.dir().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let (small, big) = (dir.join("small"), dir.join("big"));
    random_file(&small, 10_000, 80);
    random_file(&big, 3 << 20, 81);
    let (small_digest, big_digest) = (sha256_file(&small), sha256_file(&big));
    ingest(&daemon, "default", "small", &small, &small_digest).ok();
    // Leave about 1 MiB free.
    let filler = disk.path().join("filler");
    random_file(&filler, 4 << 20, 82);

    let refused = daemon.plinthctl(&[
        "content",
        "ingest",
        "big",
        big.to_str().unwrap(),
        "--progress",
        "never",
    ]);
    assert!(
        !refused.status.success()
            && refused.stderr.contains("(ResourceExhausted)")
            && refused.stderr.contains("free space on that filesystem"),
        "{}",
        refused.stderr
    );
    let listed = daemon.ctr(&["content", "ls", "-q"]);
    assert_eq!(listed.ok().trim(), small_digest, "no half blob is visible");
    let out = dir.join("out");
    daemon
        .ctr_files(&["content", "get", &small_digest], None, Some(&out))
        .ok();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&small).unwrap());

    std::fs::remove_file(&filler).unwrap();
    daemon
        .plinthctl(&[
            "content",
            "ingest",
            "big",
            big.to_str().unwrap(),
            "--progress",
            "never",
        ])
        .ok();
    let verified = daemon.plinthctl(&["content", "verify", "--all"]);
    assert!(
        verified.ok().contains(&format!("ok {big_digest}")),
        "{}",
        verified.stdout
    );
    daemon.stop(std::time::Duration::from_secs(15));
    drop(disk);
}

/// Fills the filesystem of `path`'s directory: writes `path` until the disk refuses.
fn fill(path: &std::path::Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0x5au8; 64 << 10];
    loop {
        match file.write_all(&block).and_then(|()| file.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// Snapshot writes on a full disk: a prepare that must copy its parent's files fails with
/// ResourceExhausted naming the directory and what to do; no half snapshot is listed or left
/// in the snapshotter's directory; what exists still stats and mounts; once space is freed,
/// the same prepare succeeds with the parent's files.
#[test]
fn a_full_disk_refuses_a_snapshot_cleanly_and_it_succeeds_once_space_is_freed() {
    let home = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&home.path().join("root"), "8m");
    let daemon = plinth_tests::start_in(home, Start::default())
        .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"));
    let sn = |rest: &[&str]| {
        daemon.plinthctl(&[&["snapshots", "--snapshotter", "native"], rest].concat())
    };
    sn(&["prepare", "base-active"]).ok();
    let mounts = daemon.ctr(&[
        "snapshots",
        "--snapshotter",
        "native",
        "mounts",
        "/mnt/x",
        "base-active",
    ]);
    let source = mounts.ok().split_whitespace().nth(3).unwrap().to_string();
    let payload = std::path::Path::new(&source).join("payload.bin");
    random_file(&payload, 1 << 20, 90);
    sn(&["commit", "base", "base-active"]).ok();
    let filler = disk.path().join("filler");
    fill(&filler);

    // A refusal: ResourceExhausted, saying `says`; its stderr.
    let exhausted = |args: &[&str], says: &str| {
        let refused = sn(args);
        assert!(
            !refused.status.success()
                && refused.stderr.contains("(ResourceExhausted)")
                && refused.stderr.contains(says),
            "{}",
            refused.stderr
        );
        refused.stderr
    };
    let names = || {
        let listed = daemon.ctr(&["snapshots", "--snapshotter", "native", "ls"]);
        let mut names: Vec<String> = rows(listed.ok())
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        names.sort();
        names
    };
    let snapshots_dir = disk
        .path()
        .join("io.containerd.snapshotter.v1.native/snapshots");
    let dirs = || std::fs::read_dir(&snapshots_dir).unwrap().count();

    let refused = exhausted(
        &["prepare", "child", "base"],
        "free space on that filesystem",
    );
    assert!(
        refused.contains(&disk.path().display().to_string()),
        "the error names where: {refused}"
    );
    assert_eq!(names(), ["base"], "no half snapshot is listed");
    assert_eq!(dirs(), 1, "only base's directory is left");
    // Reads keep serving.
    assert!(sn(&["info", "base"]).ok().contains("\"base\""));

    std::fs::remove_file(&filler).unwrap();
    sn(&["prepare", "child", "base"]).ok();
    let child = daemon.ctr(&[
        "snapshots",
        "--snapshotter",
        "native",
        "mounts",
        "/mnt/y",
        "child",
    ]);
    let child_source = child.ok().split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(
        sha256_file(&std::path::Path::new(&child_source).join("payload.bin")),
        sha256_file(&payload),
        "the child has its parent's files"
    );

    // Room for the records but not for the copy: the copy fails, named, and is undone.
    let reserve = disk.path().join("reserve");
    random_file(&reserve, 512 << 10, 91);
    fill(&filler);
    std::fs::remove_file(&reserve).unwrap();
    exhausted(
        &["prepare", "second", "base"],
        "copying the parent's files from",
    );
    assert_eq!(names(), ["base", "child"], "no half snapshot is listed");
    assert_eq!(dirs(), 2, "the copy's directory was removed");
    std::fs::remove_file(&filler).unwrap();
    sn(&["prepare", "second", "base"]).ok();
    drop(daemon);
    drop(disk);
}

/// A damaged database file fails its own plugin with an error naming the file and what to
/// do, and every call that needs it says so; the plugins that do not need it keep serving.
#[test]
fn a_damaged_database_fails_its_plugin_and_the_rest_keep_serving() {
    let mut daemon = start(Start::default());
    daemon
        .ctr(&["snapshots", "--snapshotter", "native", "prepare", "a"])
        .ok();
    daemon.stop(std::time::Duration::from_secs(15));
    let home = daemon.into_dir();
    let file = home
        .path()
        .join("root/io.containerd.snapshotter.v1.native/metadata.db");
    let mut bytes = std::fs::read(&file).unwrap();
    for byte in bytes.iter_mut().step_by(7) {
        *byte ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    let daemon = plinth_tests::start_in(home, Start::default())
        .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"));
    // (Listing reads the metadata plugin's records; a new snapshot needs the backend.)
    let native = daemon.ctr(&["snapshots", "--snapshotter", "native", "prepare", "c"]);
    let expected = format!("opening {}", file.display());
    assert!(
        !native.status.success()
            && native.stderr.contains(&expected)
            && native
                .stderr
                .contains("the file is damaged; restore it from a backup"),
        "{}",
        native.stderr
    );
    let detail = daemon.plinthctl(&["plugins", "ls", "-d", "id==native"]);
    assert!(
        detail.ok().contains("database unusable") && detail.stdout.contains(&expected),
        "{}",
        detail.stdout
    );
    // What does not need that file serves as before.
    daemon
        .ctr(&["snapshots", "--snapshotter", "overlayfs", "prepare", "b"])
        .ok();
    daemon.ctr(&["version"]).ok();
    let input = daemon.dir().join("blob");
    random_file(&input, 1000, 90);
    ingest(&daemon, "default", "blob", &input, &sha256_file(&input)).ok();
}

/// The daemon's open file descriptors.
fn open_fds(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count()
}

/// A client that disconnects in the middle of a Write stream leaks nothing: the ref's lock
/// is released at once (the next writer of the ref is not kept waiting), what was written
/// is kept for a resume, and the daemon's file descriptors come back to what they were.
#[test]
fn a_client_gone_mid_write_leaks_no_lock_and_no_file() {
    use plinth_api::containerd::services::content::v1::content_client::ContentClient;
    use plinth_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};

    let daemon = start(Start::default());
    let message = |action: WriteAction, data: Vec<u8>| WriteContentRequest {
        action: action as i32,
        r#ref: "gone".to_string(),
        total: 1 << 20,
        data,
        ..WriteContentRequest::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A first ingest, so that the files a served daemon keeps open (its databases, opened
    // at their first use) are counted in the baseline.
    let warm = daemon.dir().join("warm");
    random_file(&warm, 1000, 91);
    ingest(&daemon, "default", "warm", &warm, &sha256_file(&warm)).ok();
    let before = open_fds(&daemon);
    runtime.block_on(async {
        for round in 0..5 {
            let client = plinthd::client::Client::connect(&daemon.address(), "default")
                .await
                .unwrap();
            let mut api = ContentClient::new(client.channel());
            let (sender, receiver) = tokio::sync::mpsc::channel(4);
            sender
                .send(message(WriteAction::Write, vec![round; 1000]))
                .await
                .unwrap();
            let mut replies = api
                .write(
                    client
                        .request(tokio_stream::wrappers::ReceiverStream::new(receiver))
                        .unwrap(),
                )
                .await
                .unwrap()
                .into_inner();
            // Round 0 wrote 1000 bytes; each later one resumed at offset 0 (a write at 0
            // starts the ingest over), so the lock was free and the ingest was there.
            assert_eq!(replies.message().await.unwrap().unwrap().offset, 1000);
            // Gone without a word: the stream, the call and the connection.
            drop((sender, replies, api, client));
        }
    });
    // The connection tasks are the runtime's: dropping it closes the sockets for good.
    drop(runtime);
    let fds = |daemon: &Daemon| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .collect()
    };
    let came_back = std::time::Instant::now();
    while open_fds(&daemon) > before {
        assert!(
            came_back.elapsed() < std::time::Duration::from_secs(30),
            "{} file descriptors open, {before} before: {:?}",
            open_fds(&daemon),
            fds(&daemon)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let active = daemon.ctr(&["content", "active"]);
    assert!(
        active.ok().contains("gone"),
        "the ingest is kept: {}",
        active.stdout
    );
}
