//! Images, containers, leases and events with the stock `ctr` against plinthd: the records
//! the second wave added to the metadata plugin, seen through containerd's own client.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use plinth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use plinth_api::containerd::services::containers::v1::{
    Container, CreateContainerRequest, container::Runtime,
};
use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::images::v1::{CreateImageRequest, Image};
use plinth_api::containerd::types::Descriptor;
use plinth_tests::{Daemon, Start, sha256_file, start};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SPEC_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Writes `bytes` into the namespace's content store with `ctr content ingest`; returns the
/// digest and size.
fn ingest(daemon: &Daemon, namespace: &str, name: &str, bytes: &[u8]) -> (String, i64) {
    let path = daemon.dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    let digest = sha256_file(&path);
    daemon
        .ctr_files(
            &[
                "-n",
                namespace,
                "content",
                "ingest",
                "--expected-digest",
                &digest,
                name,
            ],
            Some(&path),
            None,
        )
        .ok();
    (digest, i64::try_from(bytes.len()).unwrap())
}

/// A small OCI image in `namespace`: a config, one layer and a manifest, ingested with ctr;
/// returns the manifest's digest and size and the layer's digest.
fn image_blobs(daemon: &Daemon, namespace: &str) -> (String, i64, String) {
    let (layer, layer_size) = ingest(
        daemon,
        namespace,
        "layer",
        b"not really a tar, never unpacked",
    );
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#
    );
    let (config, config_size) = ingest(daemon, namespace, "config", config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{layer_size}}}]}}"#
    );
    let (manifest, size) = ingest(daemon, namespace, "manifest", manifest.as_bytes());
    (manifest, size, layer)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates an image record through the Images API (ctr has no command that makes one
/// without unpacking).
fn create_image(daemon: &Daemon, namespace: &str, name: &str, digest: &str, size: i64) {
    runtime().block_on(async {
        let client = plinthd::client::Client::connect(&daemon.address(), namespace)
            .await
            .unwrap();
        let image = Image {
            name: name.into(),
            target: Some(Descriptor {
                media_type: MANIFEST.into(),
                digest: digest.into(),
                size,
                ..Descriptor::default()
            }),
            ..Image::default()
        };
        ImagesClient::new(client.channel())
            .create(
                client
                    .request(CreateImageRequest { image: Some(image) })
                    .unwrap(),
            )
            .await
            .unwrap();
    });
}

/// Creates a container record through the Containers API (`ctr containers create` needs
/// an unpacked image).
fn create_container(daemon: &Daemon, namespace: &str, id: &str, snapshot: &str) {
    runtime().block_on(async {
        let client = plinthd::client::Client::connect(&daemon.address(), namespace)
            .await
            .unwrap();
        let container = Container {
            id: id.into(),
            image: "example.com/app:1".into(),
            runtime: Some(Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_URL.into(),
                value: br#"{"ociVersion":"1.0.2","hostname":"made-by-the-test"}"#.to_vec(),
            }),
            snapshotter: "native".into(),
            snapshot_key: snapshot.into(),
            ..Container::default()
        };
        ContainersClient::new(client.channel())
            .create(
                client
                    .request(CreateContainerRequest {
                        container: Some(container),
                    })
                    .unwrap(),
            )
            .await
            .unwrap();
    });
}

/// Rows of a ctr table, split on whitespace, header dropped.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn ctr_lists_checks_labels_and_removes_images() {
    let daemon = start(Start::default());
    let (manifest, size, layer) = image_blobs(&daemon, "imgs");
    create_image(&daemon, "imgs", "example.com/app:1", &manifest, size);
    create_image(&daemon, "imgs", "example.com/app:2", &manifest, size);

    let listed = rows(daemon.ctr(&["-n", "imgs", "images", "ls"]).ok());
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0][0], "example.com/app:1");
    assert_eq!(listed[0][1], MANIFEST);
    assert_eq!(listed[0][2], manifest);
    assert_eq!(
        daemon.ctr(&["-n", "imgs", "images", "ls", "-q"]).ok(),
        "example.com/app:1\nexample.com/app:2\n"
    );
    assert_eq!(
        daemon
            .ctr(&[
                "-n",
                "imgs",
                "images",
                "ls",
                "-q",
                "name==example.com/app:2"
            ])
            .ok(),
        "example.com/app:2\n"
    );
    assert_eq!(daemon.ctr(&["-n", "other", "images", "ls", "-q"]).ok(), "");

    // check walks the manifest, the config and the layer in the content store.
    let checked = daemon.ctr(&["-n", "imgs", "images", "check", "name==example.com/app:1"]);
    let row = &rows(checked.ok())[0];
    assert_eq!(row[0], "example.com/app:1", "{}", checked.stdout);
    assert_eq!(row[3..5], ["complete", "(2/2)"], "{}", checked.stdout);

    let labelled = daemon.ctr(&[
        "-n",
        "imgs",
        "images",
        "label",
        "example.com/app:1",
        "tier=gold",
    ]);
    assert!(labelled.ok().contains("tier=gold"), "{}", labelled.stdout);
    let listed = rows(daemon.ctr(&["-n", "imgs", "images", "ls"]).ok());
    assert_eq!(listed[0].last().unwrap(), "tier=gold", "{listed:?}");
    assert_eq!(
        daemon
            .ctr(&["-n", "imgs", "images", "ls", "-q", "labels.tier==gold"])
            .ok(),
        "example.com/app:1\n"
    );
    daemon
        .ctr(&[
            "-n",
            "imgs",
            "images",
            "label",
            "example.com/app:1",
            "tier=",
        ])
        .ok();
    assert_eq!(
        daemon
            .ctr(&["-n", "imgs", "images", "ls", "-q", "labels.tier"])
            .ok(),
        ""
    );

    // A namespace that holds images is not removed, and says why.
    let refused = daemon.ctr(&["namespaces", "rm", "imgs"]);
    assert!(!refused.status.success(), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("must be empty") && refused.stderr.contains("images"),
        "{}",
        refused.stderr
    );

    // Without the layer, the image is incomplete.
    daemon.ctr(&["-n", "imgs", "content", "rm", &layer]).ok();
    let checked = daemon.ctr(&["-n", "imgs", "images", "check", "name==example.com/app:1"]);
    assert_eq!(
        rows(checked.ok())[0][3..5],
        ["incomplete", "(1/2)"],
        "{}",
        checked.stdout
    );

    let removed = daemon.ctr(&[
        "-n",
        "imgs",
        "images",
        "rm",
        "example.com/app:1",
        "example.com/app:2",
    ]);
    assert_eq!(removed.ok(), "example.com/app:1\nexample.com/app:2\n");
    assert_eq!(daemon.ctr(&["-n", "imgs", "images", "ls", "-q"]).ok(), "");
    let again = daemon.ctr(&["-n", "imgs", "images", "rm", "example.com/app:1"]);
    assert!(again.stderr.contains("not found"), "{}", again.stderr);
}

#[test]
fn ctr_creates_lists_and_removes_leases() {
    let daemon = start(Start::default());
    let created = daemon.ctr(&[
        "-n",
        "ls",
        "leases",
        "create",
        "--id",
        "held",
        "--expires",
        "1h",
    ]);
    assert_eq!(created.ok().trim(), "held");
    let random = daemon.ctr(&["-n", "ls", "leases", "create", "--expires", "0"]);
    let random = random.ok().trim().to_string();
    assert!(!random.is_empty() && random != "held");
    let listed = rows(daemon.ctr(&["-n", "ls", "leases", "ls"]).ok());
    let ids: Vec<&str> = listed.iter().map(|r| r[0].as_str()).collect();
    assert!(
        ids.contains(&"held") && ids.contains(&random.as_str()),
        "{listed:?}"
    );
    // ctr writes the expiry as containerd's label; a lease without one has no labels.
    let held = listed.iter().find(|r| r[0] == "held").unwrap();
    assert!(
        held.last()
            .unwrap()
            .starts_with("containerd.io/gc.expire=20"),
        "{held:?}"
    );
    let unlabelled = listed.iter().find(|r| r[0] == random).unwrap();
    assert!(!unlabelled.last().unwrap().contains('='), "{unlabelled:?}");
    assert_eq!(
        rows(daemon.ctr(&["-n", "ls", "leases", "ls", "id==held"]).ok()).len(),
        1
    );
    let duplicate = daemon.ctr(&["-n", "ls", "leases", "create", "--id", "held"]);
    assert!(
        duplicate.stderr.contains("already exists"),
        "{}",
        duplicate.stderr
    );

    let refused = daemon.ctr(&["namespaces", "rm", "ls"]);
    assert!(refused.stderr.contains("leases"), "{}", refused.stderr);

    daemon
        .ctr(&["-n", "ls", "leases", "rm", "held", &random])
        .ok();
    assert!(rows(daemon.ctr(&["-n", "ls", "leases", "ls"]).ok()).is_empty());
    let missing = daemon.ctr(&["-n", "ls", "leases", "rm", "held"]);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    daemon.ctr(&["namespaces", "rm", "ls"]).ok();
}

#[test]
fn ctr_lists_shows_labels_and_removes_containers() {
    let daemon = start(Start::default());
    daemon
        .ctr(&[
            "-n",
            "box",
            "snapshots",
            "--snapshotter",
            "native",
            "prepare",
            "c1-rootfs",
            "",
        ])
        .ok();
    create_container(&daemon, "box", "c1", "c1-rootfs");
    create_container(&daemon, "box", "c2", "");

    let listed = rows(daemon.ctr(&["-n", "box", "containers", "ls"]).ok());
    assert_eq!(
        listed,
        [
            ["c1", "example.com/app:1", "io.containerd.runc.v2"],
            ["c2", "example.com/app:1", "io.containerd.runc.v2"]
        ]
    );
    assert_eq!(
        daemon
            .ctr(&["-n", "box", "containers", "ls", "-q", "id==c2"])
            .ok(),
        "c2\n"
    );
    let info = daemon.ctr(&["-n", "box", "containers", "info", "c1"]);
    let text = info.ok();
    for expected in [
        "\"ID\": \"c1\"",
        "\"Name\": \"io.containerd.runc.v2\"",
        "\"SnapshotKey\": \"c1-rootfs\"",
        "\"Snapshotter\": \"native\"",
        "made-by-the-test",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let spec = daemon.ctr(&["-n", "box", "containers", "info", "--spec", "c1"]);
    assert!(
        spec.ok().contains("\"hostname\": \"made-by-the-test\""),
        "{}",
        spec.stdout
    );

    daemon
        .ctr(&["-n", "box", "containers", "label", "c1", "app=web"])
        .ok();
    let info = daemon.ctr(&["-n", "box", "containers", "info", "c1"]);
    assert!(info.ok().contains("\"app\": \"web\""), "{}", info.stdout);
    assert_eq!(
        daemon
            .ctr(&["-n", "box", "containers", "ls", "-q", "labels.app==web"])
            .ok(),
        "c1\n"
    );

    let refused = daemon.ctr(&["namespaces", "rm", "box"]);
    assert!(refused.stderr.contains("containers"), "{}", refused.stderr);

    // rm deletes the record and, as ctr asks, the container's snapshot.
    daemon
        .ctr(&["-n", "box", "containers", "rm", "c1", "c2"])
        .ok();
    assert_eq!(
        daemon.ctr(&["-n", "box", "containers", "ls", "-q"]).ok(),
        ""
    );
    let snapshots = daemon.ctr(&["-n", "box", "snapshots", "--snapshotter", "native", "ls"]);
    assert!(
        !snapshots.ok().contains("c1-rootfs"),
        "{}",
        snapshots.stdout
    );
    let missing = daemon.ctr(&["-n", "box", "containers", "info", "c1"]);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    daemon.ctr(&["namespaces", "rm", "box"]).ok();
}

/// `ctr events` as a process: its output lines, as they come.
struct EventsWatcher {
    child: Child,
    lines: Receiver<String>,
}

impl EventsWatcher {
    fn start(daemon: &Daemon) -> EventsWatcher {
        let mut child = Command::new(plinth_tests::ctr())
            .args(["--address", daemon.socket().to_str().unwrap(), "events"])
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ctr events");
        let (sender, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        EventsWatcher { child, lines }
    }

    /// The next line that contains `text`, within `timeout`; the lines skipped on the way.
    fn wait_for(&self, text: &str, timeout: Duration) -> Option<(String, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some((line, skipped)),
                Ok(line) => skipped.push(line),
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for EventsWatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ctr_events_prints_each_change_decoded_in_commit_order() {
    let daemon = start(Start::default());
    let watcher = EventsWatcher::start(&daemon);
    // ctr subscribes some time after it starts: publish probes until one is seen, so that
    // everything after it is published to a live subscription.
    let mut round = 0;
    loop {
        round += 1;
        assert!(round < 200, "ctr events never printed a probe");
        let name = format!("probe-{round}");
        daemon
            .ctr(&["-n", "probe", "namespaces", "create", &name])
            .ok();
        if watcher
            .wait_for(&name, Duration::from_millis(100))
            .is_some()
        {
            break;
        }
    }
    let (manifest, size, _) = image_blobs(&daemon, "ev");
    create_image(&daemon, "ev", "example.com/ev:1", &manifest, size);
    daemon
        .ctr(&["-n", "ev", "images", "label", "example.com/ev:1", "k=v"])
        .ok();
    daemon
        .ctr(&["-n", "ev", "images", "rm", "example.com/ev:1"])
        .ok();
    daemon
        .ctr(&[
            "-n",
            "ev",
            "snapshots",
            "--snapshotter",
            "native",
            "prepare",
            "s-active",
            "",
        ])
        .ok();
    daemon
        .ctr(&[
            "-n",
            "ev",
            "snapshots",
            "--snapshotter",
            "native",
            "commit",
            "s",
            "s-active",
        ])
        .ok();
    daemon
        .ctr(&[
            "-n",
            "ev",
            "snapshots",
            "--snapshotter",
            "native",
            "view",
            "s-view",
            "s",
        ])
        .ok();
    daemon
        .ctr(&[
            "-n",
            "ev",
            "snapshots",
            "--snapshotter",
            "native",
            "rm",
            "s-view",
        ])
        .ok();
    create_container(&daemon, "ev", "c-ev", "");
    daemon.ctr(&["-n", "ev", "containers", "rm", "c-ev"]).ok();
    daemon.ctr(&["-n", "ev", "content", "rm", &manifest]).ok();

    // In order, each decoded by ctr (it skips what it cannot decode).
    let expected = [
        "ev /images/create {\"name\":\"example.com/ev:1\"}",
        "ev /images/update {\"name\":\"example.com/ev:1\",\"labels\":{\"k\":\"v\"}}",
        "ev /images/delete {\"name\":\"example.com/ev:1\"}",
        "ev /snapshot/prepare {\"key\":\"s-active\"}",
        "ev /snapshot/commit {\"key\":\"s-active\",\"name\":\"s\"}",
        "ev /snapshot/remove {\"key\":\"s-view\"}",
        "ev /containers/create {\"id\":\"c-ev\",\"image\":\"example.com/app:1\",\"runtime\":{\"name\":\"io.containerd.runc.v2\"}}",
        "ev /containers/delete {\"id\":\"c-ev\"}",
        &format!("ev /content/delete {{\"digest\":\"{manifest}\"}}"),
    ];
    let mut between = Vec::new();
    for line in expected {
        let (_, skipped) = watcher
            .wait_for(line, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no event line ending {line:?}; before it: {between:?}"));
        // Nothing of ours came out of order.
        for other in &skipped {
            assert!(
                !expected.iter().any(|e| other.ends_with(e)),
                "{other} came before {line}"
            );
        }
        between.extend(skipped);
    }
    // A view publishes nothing, as in containerd: no line names it but its removal.
    assert!(!between.iter().any(|l| l.contains("s-view")), "{between:?}");
}
