//! Garbage collection against a real plinthd: `plinthctl gc`, and the stock `ctr`'s
//! synchronous deletes (`images rm --sync`, `leases rm --sync`), scheduled collections after
//! a plain delete, and an expired lease collected with nothing else to trigger it. What is
//! removed is checked where ctr sees it and on disk (the content store's blobs, the native
//! snapshotter's directories).
//!
//! The daemons here run the scheduler with no start-up collection and no mutation
//! threshold, so that only deletes, lease expiry and the tests' own triggers collect: what a
//! test builds is never collected half-built.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::images::v1::{CreateImageRequest, Image};
use plinth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use plinth_api::containerd::services::leases::v1::{AddResourceRequest, Resource};
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest,
};
use plinth_api::containerd::types::Descriptor;
use plinth_tests::{Daemon, Start, sha256_file, start, wait_for};

const NS: &str = "gc";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// How long a scheduled collection may take to come.
const SCHEDULED: Duration = Duration::from_secs(20);

/// The scheduler's section for these tests, with `extra` lines.
fn scheduler_config(extra: &str) -> String {
    format!(
        "version = 3\n[plugins.\"io.containerd.gc.v1.scheduler\"]\nstartup_delay = \"0s\"\nmutation_threshold = 0\n{extra}"
    )
}

fn start_gc(extra: &str) -> Daemon {
    start(Start {
        config: scheduler_config(extra),
        ..Start::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `work` with a client of the daemon in [`NS`].
fn with_client<T>(daemon: &Daemon, work: impl AsyncFnOnce(plinthd::client::Client) -> T) -> T {
    runtime().block_on(async {
        let client = plinthd::client::Client::connect(&daemon.address(), NS)
            .await
            .unwrap();
        work(client).await
    })
}

/// `message` in [`NS`], bound to `lease`.
fn leased<T>(client: &plinthd::client::Client, lease: &str, message: T) -> tonic::Request<T> {
    let mut request = client.request(message).unwrap();
    request.metadata_mut().insert(
        plinth_builtin_plugins::leases::LEASE_HEADER,
        lease.parse().unwrap(),
    );
    request
}

/// Writes `bytes` with `ctr content ingest`; returns the digest and size.
fn ingest(daemon: &Daemon, name: &str, bytes: &[u8]) -> (String, i64) {
    // Beside the daemon's own `root` and `state`.
    let path = daemon.dir().join(format!("input-{name}"));
    std::fs::write(&path, bytes).unwrap();
    let digest = sha256_file(&path);
    let args = [
        "-n",
        NS,
        "content",
        "ingest",
        "--expected-digest",
        &digest,
        name,
    ];
    daemon.ctr_files(&args, Some(&path), None).ok();
    (digest, i64::try_from(bytes.len()).unwrap())
}

/// `ctr content label DIGEST LABELS...`.
fn label(daemon: &Daemon, digest: &str, labels: &[String]) {
    let mut args = vec!["-n", NS, "content", "label", digest];
    args.extend(labels.iter().map(String::as_str));
    daemon.ctr(&args).ok();
}

/// Adds a resource to a lease through the Leases API (ctr has no command for it).
fn add_resource(daemon: &Daemon, lease: &str, kind: &str, id: &str) {
    with_client(daemon, async |client| {
        let request = client
            .request(AddResourceRequest {
                id: lease.into(),
                resource: Some(Resource {
                    id: id.into(),
                    r#type: kind.into(),
                }),
            })
            .unwrap();
        LeasesClient::new(client.channel())
            .add_resource(request)
            .await
            .unwrap();
    });
}

/// Unpacks a chain of layers as containerd's unpacker does, under `lease`: for each name,
/// a snapshot prepared on the previous one and committed as that name. With `commit` false
/// the last one stays active under its key.
fn snapshot_chain(daemon: &Daemon, lease: &str, names: &[&str], commit: bool) {
    with_client(daemon, async |client| {
        let mut api = SnapshotsClient::new(client.channel());
        let mut parent = String::new();
        for (i, name) in names.iter().enumerate() {
            let last = i + 1 == names.len();
            let key = if last && !commit {
                (*name).to_string()
            } else {
                format!("extract-{name}")
            };
            let prepare = PrepareSnapshotRequest {
                snapshotter: "native".into(),
                key: key.clone(),
                parent: parent.clone(),
                labels: Default::default(),
            };
            api.prepare(leased(&client, lease, prepare)).await.unwrap();
            if last && !commit {
                break;
            }
            let commit = CommitSnapshotRequest {
                snapshotter: "native".into(),
                name: (*name).to_string(),
                key,
                labels: Default::default(),
                ..CommitSnapshotRequest::default()
            };
            api.commit(leased(&client, lease, commit)).await.unwrap();
            parent = (*name).to_string();
        }
    });
}

/// Creates an image record through the Images API (ctr has no command that makes one
/// without pulling).
fn create_image(daemon: &Daemon, name: &str, digest: &str, size: i64) {
    with_client(daemon, async |client| {
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
        let request = client
            .request(CreateImageRequest { image: Some(image) })
            .unwrap();
        ImagesClient::new(client.channel())
            .create(request)
            .await
            .unwrap();
    });
}

/// The digests `ctr content ls` lists.
fn listed_blobs(daemon: &Daemon) -> BTreeSet<String> {
    let output = daemon.ctr(&["-n", NS, "content", "ls", "-q"]);
    output.ok().lines().map(str::to_string).collect()
}

/// The keys `ctr snapshots ls` lists for the native snapshotter.
fn listed_snapshots(daemon: &Daemon) -> BTreeSet<String> {
    let output = daemon.ctr(&["-n", NS, "snapshots", "--snapshotter", "native", "ls"]);
    output
        .ok()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Where the content store keeps the blob `digest`.
fn blob_file(daemon: &Daemon, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    daemon
        .root()
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(hex)
}

/// How many snapshot directories the native snapshotter holds.
fn native_dirs(daemon: &Daemon) -> usize {
    let dir = daemon
        .root()
        .join("io.containerd.snapshotter.v1.native/snapshots");
    std::fs::read_dir(&dir).map_or(0, Iterator::count)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// `plinthctl gc`'s output.
fn plinthctl_gc(daemon: &Daemon) -> String {
    daemon.plinthctl(&["gc"]).ok().to_string()
}

/// The scheduler's exports, from `plinthctl plugins ls -d`.
fn scheduler_exports(daemon: &Daemon) -> String {
    daemon
        .plinthctl(&["plugins", "ls", "-d", "id==scheduler"])
        .ok()
        .to_string()
}

#[test]
fn plinthctl_gc_removes_unreferenced_blobs_and_keeps_gc_roots() {
    let daemon = start_gc("");
    let (loose, _) = ingest(&daemon, "loose", b"nothing refers to this blob");
    let (root, _) = ingest(&daemon, "root", b"a blob labelled as a gc root");
    label(&daemon, &root, &["containerd.io/gc.root=yes".to_string()]);
    assert_eq!(listed_blobs(&daemon), set(&[&loose, &root]));

    let output = plinthctl_gc(&daemon);
    assert!(output.starts_with("garbage collected in "), "{output}");
    assert!(
        output.contains(
            "removed records: 1 blob record, 0 snapshot records, 0 expired leases\nremoved from disk: 1 blob, 0 snapshots\n"
        ),
        "{output}"
    );
    assert!(output.contains("phases: mark "), "{output}");
    assert_eq!(listed_blobs(&daemon), set(&[&root]));
    assert!(
        !blob_file(&daemon, &loose).exists(),
        "the loose blob's file"
    );
    assert!(blob_file(&daemon, &root).exists(), "the root's file");

    let again = plinthctl_gc(&daemon);
    assert!(again.contains("removed: nothing"), "{again}");
    let exports = scheduler_exports(&daemon);
    for expected in [
        "PauseThreshold",
        "collections",
        "last_run_removed",
        "last_run_phases",
    ] {
        assert!(exports.contains(expected), "{expected}:\n{exports}");
    }
}

#[test]
fn ctr_images_rm_sync_removes_the_image_blobs_and_unpacked_snapshots() {
    let daemon = start_gc("");
    daemon
        .ctr(&["-n", NS, "leases", "create", "--id", "pull"])
        .ok();
    let blob = |name: &str, bytes: &[u8]| {
        let (digest, size) = ingest(&daemon, name, bytes);
        add_resource(&daemon, "pull", "content", &digest);
        (digest, size)
    };
    let (layer1, size1) = blob("layer1", b"first layer, never really a tar");
    let (layer2, size2) = blob("layer2", b"second layer, never really a tar");
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer1}","{layer2}"]}}}}"#
    );
    let (config, config_size) = blob("config", config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"{CONFIG}","digest":"{config}","size":{config_size}}},"layers":[{{"mediaType":"{LAYER}","digest":"{layer1}","size":{size1}}},{{"mediaType":"{LAYER}","digest":"{layer2}","size":{size2}}}]}}"#
    );
    let (manifest, manifest_size) = blob("manifest", manifest.as_bytes());
    // The unpacker's work: the layers as a chain of committed snapshots (named by chain id
    // in containerd; any name does), the config labelled with the top one.
    snapshot_chain(&daemon, "pull", &["chain1", "chain2"], true);
    // A pull's labels: the manifest refers to its config and layers.
    label(
        &daemon,
        &manifest,
        &[
            format!("containerd.io/gc.ref.content.config={config}"),
            format!("containerd.io/gc.ref.content.l.0={layer1}"),
            format!("containerd.io/gc.ref.content.l.1={layer2}"),
        ],
    );
    label(
        &daemon,
        &config,
        &["containerd.io/gc.ref.snapshot.native=chain2".to_string()],
    );
    create_image(&daemon, "example.com/app:1", &manifest, manifest_size);
    let (root, _) = ingest(&daemon, "root", b"kept by its label alone");
    label(&daemon, &root, &["containerd.io/gc.root=1".to_string()]);
    // The pull is over: the image alone holds what it brought.
    daemon.ctr(&["-n", NS, "leases", "rm", "pull"]).ok();
    let kept = plinthctl_gc(&daemon);
    assert!(kept.contains("removed: nothing"), "{kept}");
    let image_blobs = [&layer1, &layer2, &config, &manifest];
    let mut all = set(&image_blobs.map(String::as_str));
    all.insert(root.clone());
    assert_eq!(listed_blobs(&daemon), all);
    assert_eq!(listed_snapshots(&daemon), set(&["chain1", "chain2"]));
    assert_eq!(native_dirs(&daemon), 2);

    daemon
        .ctr(&["-n", NS, "images", "rm", "--sync", "example.com/app:1"])
        .ok();
    // Answered after the collection: everything of the image is gone already.
    assert_eq!(listed_blobs(&daemon), set(&[&root]));
    for digest in image_blobs {
        assert!(!blob_file(&daemon, digest).exists(), "{digest}'s file");
    }
    assert!(blob_file(&daemon, &root).exists(), "the root's file");
    assert_eq!(listed_snapshots(&daemon), BTreeSet::new());
    assert_eq!(native_dirs(&daemon), 0, "snapshot directories");
}

#[test]
fn a_lease_keeps_its_resources_until_ctr_leases_rm() {
    let daemon = start_gc("");
    for lease in ["keep", "later"] {
        daemon
            .ctr(&["-n", NS, "leases", "create", "--id", lease])
            .ok();
    }
    let (kept, _) = ingest(&daemon, "kept", b"held by the lease keep");
    add_resource(&daemon, "keep", "content", &kept);
    let (later, _) = ingest(&daemon, "later", b"held by the lease later");
    add_resource(&daemon, "later", "content", &later);
    // An active snapshot made under the lease: the lease holds it.
    snapshot_chain(&daemon, "keep", &["work"], false);

    let output = plinthctl_gc(&daemon);
    assert!(output.contains("removed: nothing"), "{output}");
    assert_eq!(listed_blobs(&daemon), set(&[&kept, &later]));
    assert_eq!(listed_snapshots(&daemon), set(&["work"]));

    daemon
        .ctr(&["-n", NS, "leases", "rm", "--sync", "keep"])
        .ok();
    assert_eq!(listed_blobs(&daemon), set(&[&later]));
    assert!(!blob_file(&daemon, &kept).exists());
    assert_eq!(listed_snapshots(&daemon), BTreeSet::new());
    assert_eq!(native_dirs(&daemon), 0, "snapshot directories");

    // Without --sync the delete is answered at once and the scheduler collects soon after.
    daemon.ctr(&["-n", NS, "leases", "rm", "later"]).ok();
    // The record goes in the sweep, the file in the collection's last phase.
    wait_for("the scheduled collection", SCHEDULED, || {
        (listed_blobs(&daemon).is_empty() && !blob_file(&daemon, &later).exists()).then_some(())
    });
}

#[test]
fn an_expired_lease_is_collected_without_any_other_trigger() {
    let daemon = start_gc("");
    // Stored first (nothing collects it here before it is asked), then held at once: ctr
    // writes the expiry to the second, so the lease lives 2 to 3 s, which the hold needs
    // only a call of.
    let (held, _) = ingest(&daemon, "held", b"held until the lease expires");
    daemon
        .ctr(&[
            "-n",
            NS,
            "leases",
            "create",
            "--id",
            "brief",
            "--expires",
            "3s",
        ])
        .ok();
    add_resource(&daemon, "brief", "content", &held);
    assert_eq!(listed_blobs(&daemon), set(&[&held]));
    // No delete, no trigger: the lease's expiry alone plans the collection.
    wait_for("the lease to expire and be collected", SCHEDULED, || {
        listed_blobs(&daemon).is_empty().then_some(())
    });
    let leases = daemon.ctr(&["-n", NS, "leases", "ls", "-q"]);
    assert_eq!(leases.ok(), "");
    // The blob's file goes in the collection's last phase, and then the run is reported.
    let exports = wait_for("the collection's report", SCHEDULED, || {
        let exports = scheduler_exports(&daemon);
        exports.contains("last_run_removed").then_some(exports)
    });
    assert!(!blob_file(&daemon, &held).exists());
    assert!(exports.contains("1 lease records; 1 blobs"), "{exports}");
}

#[test]
fn without_the_gc_scheduler_sync_deletes_are_refused_and_plinthctl_gc_says_what_to_enable() {
    let daemon = start(Start {
        config: "version = 3\ndisabled_plugins = [\"io.containerd.gc.v1.scheduler\"]\n".into(),
        ..Start::default()
    });
    let gc = daemon.plinthctl(&["gc"]);
    assert!(!gc.status.success());
    for needed in [
        "serves no GC service",
        "io.containerd.grpc.v1.gc",
        "gc-service",
        "io.containerd.gc.v1.scheduler",
    ] {
        assert!(gc.stderr.contains(needed), "{needed}: {}", gc.stderr);
    }

    let (digest, size) = ingest(&daemon, "manifest", b"{}");
    create_image(&daemon, "example.com/app:1", &digest, size);
    daemon
        .ctr(&["-n", NS, "leases", "create", "--id", "l"])
        .ok();
    let refused = [
        daemon.ctr(&["-n", NS, "images", "rm", "--sync", "example.com/app:1"]),
        daemon.ctr(&["-n", NS, "leases", "rm", "--sync", "l"]),
    ];
    for output in refused {
        assert!(!output.status.success(), "{}", output.stdout);
        assert!(
            output.stderr.contains("no GC scheduler is loaded")
                && output.stderr.contains("io.containerd.gc.v1.scheduler"),
            "{}",
            output.stderr
        );
    }
    // Refused before anything was deleted.
    let images = daemon.ctr(&["-n", NS, "images", "ls", "-q"]);
    assert_eq!(images.ok(), "example.com/app:1\n");
    let leases = daemon.ctr(&["-n", NS, "leases", "ls", "-q"]);
    assert_eq!(leases.ok(), "l\n");
    // Without --sync both work.
    daemon
        .ctr(&["-n", NS, "images", "rm", "example.com/app:1"])
        .ok();
    daemon.ctr(&["-n", NS, "leases", "rm", "l"]).ok();
}
