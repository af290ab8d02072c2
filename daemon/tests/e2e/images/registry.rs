//! Pull and push against a real registry on this machine: Debian's `docker-registry` (the
//! reference registry) started on 127.0.0.1 for each test, seeded with Debian's `skopeo`
//! from the test image's OCI archive; `ctr images pull --plain-http` on each snapshotter, the
//! image and its unpacked tree checked as for an import, then `ctr images tag` and
//! `ctr images push --plain-http` of the copy, which `skopeo inspect` finds under the same
//! digest. The same checks run against containerd.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::Output;

use super::archive::test_image;
use super::{Server, assert_chain, assert_mounted_tree, start_containerd, start_plinthd};

/// How long the registry may take to answer `GET /v2/`.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where skopeo seeds the registry, and where the tagged copy is pushed.
const SEEDED: &str = "plinth/test:v1";
const COPY: &str = "plinth/copy:v2";

/// The program `name` from Debian's package `package`.
///
/// # Panics
/// When it is not installed: the registry tests fail, never skip, without it.
fn installed(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} is not installed: `apt-get install -y {package}` (the CI script does this)");
}

fn skopeo(args: &[&str]) -> Output {
    // The tests' own images need no signature policy (none may be installed here).
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    plinth_tests::run(&installed("skopeo", "skopeo"), &all)
}

/// Debian's `docker-registry serve CONFIG` on 127.0.0.1, storing in a temporary directory;
/// killed on drop.
struct Registry {
    child: Child,
    /// Its configuration, storage and log.
    _dir: tempfile::TempDir,
    log: PathBuf,
    /// `127.0.0.1:PORT`.
    host: String,
}

impl Registry {
    /// Starts the registry on a free port and waits until `GET /v2/` answers 200. A port
    /// taken between choosing it and the registry's bind costs one more try.
    ///
    /// # Panics
    /// When `docker-registry` is missing, or does not answer within
    /// [`REGISTRY_START_TIMEOUT`] on any of three ports; the message holds its logs.
    fn start() -> Registry {
        let program = installed("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("registry")
            .tempdir()
            .unwrap();
        let storage = dir.path().join("storage");
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let host = format!("127.0.0.1:{port}");
            let config = dir.path().join(format!("config-{attempt}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                    storage.display()
                ),
            )
            .unwrap();
            let log = dir.path().join(format!("log-{attempt}"));
            let log_file = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(&program)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log_file.try_clone().unwrap()))
                .stderr(Stdio::from(log_file))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
            let started = Instant::now();
            let failure = loop {
                if answers_v2(&host) {
                    return Registry {
                        child,
                        _dir: dir,
                        log,
                        host,
                    };
                }
                if let Some(status) = child.try_wait().unwrap() {
                    break format!("exited ({status})");
                }
                if started.elapsed() > REGISTRY_START_TIMEOUT {
                    break format!("no answer to GET /v2/ in {REGISTRY_START_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            failures.push(format!("{host}: {failure}:\n{text}"));
        }
        panic!(
            "docker-registry did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    /// `127.0.0.1:PORT/<repository:tag>`.
    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// `skopeo copy` of the OCI archive at `archive` (its manifest named `v1` in
    /// `index.json`) to `name` in the registry.
    fn seed(&self, archive: &Path, name: &str) {
        let source = format!("oci-archive:{}:v1", archive.display());
        let destination = format!("docker://{}", self.reference(name));
        let output = skopeo(&["copy", "--dest-tls-verify=false", &source, &destination]);
        assert!(
            output.status.success(),
            "skopeo copy {source} {destination} failed:\n{}\nregistry log:\n{}",
            output.stderr,
            self.log()
        );
    }

    /// The manifest digest `skopeo inspect` finds for `name`.
    fn digest(&self, name: &str) -> String {
        let reference = format!("docker://{}", self.reference(name));
        let output = skopeo(&["inspect", "--tls-verify=false", &reference]);
        assert!(
            output.status.success(),
            "skopeo inspect {reference} failed:\n{}\nregistry log:\n{}",
            output.stderr,
            self.log()
        );
        let inspected: serde_json::Value = serde_json::from_str(&output.stdout)
            .unwrap_or_else(|e| panic!("skopeo inspect's JSON ({e}):\n{}", output.stdout));
        inspected["Digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no Digest in skopeo inspect's answer:\n{inspected:#}"))
            .to_string()
    }

    /// Everything the registry logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `GET /v2/` on `host` answers 200 (the registry's API check).
fn answers_v2(host: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(host) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /v2/ HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    response
        .lines()
        .next()
        .and_then(|status_line| status_line.split_whitespace().nth(1))
        == Some("200")
}

/// Seeds the registry with the test image, pulls it into `server` on `snapshotter` (unpacked
/// there), checks the image, its blobs, the chain and the whole tree as for an import; then
/// tags it, pushes the copy, and asks the registry for the copy's digest.
fn pull_and_push(server: &Server, snapshotter: &str) {
    server.require_snapshotter(snapshotter);
    installed("skopeo", "skopeo");
    let registry = Registry::start();
    let image = test_image();
    let archive = server.dir().join("registry-oci.tar");
    image.write_oci(&archive, "v1");
    registry.seed(&archive, SEEDED);
    let seeded = registry.digest(SEEDED);
    // skopeo keeps the manifest as it is (the registry takes OCI manifests).
    assert_eq!(seeded, image.manifest_digest(), "the seeded manifest");

    let reference = registry.reference(SEEDED);
    let output = server.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        snapshotter,
        &reference,
    ]);
    assert!(
        output.status.success() && output.stdout.contains("done"),
        "{}: ctr images pull {reference} failed ({}):\nstdout:\n{}\nstderr:\n{}\nregistry log:\n{}",
        server.name,
        output.status,
        output.stdout,
        output.stderr,
        registry.log()
    );
    let images = server.images();
    assert_eq!(
        images.get(&reference),
        Some(&seeded),
        "{}: the pulled image in {images:?}",
        server.name
    );
    // The pull's lease is gone; the image holds exactly its manifest, config and layers.
    server.collect();
    assert_eq!(
        server.blobs(),
        image.blob_digests().into_iter().collect(),
        "{}: blobs after the pull",
        server.name
    );
    // Each blob is labelled with where it came from (Content.Update by field path), the
    // registry named by its host without the port (as containerd 1.6 writes it); push offers
    // the registry a cross-repository mount from there.
    let source = "containerd.io/distribution.source.127.0.0.1=plinth/test";
    let listed = server.ctr_ok(&["content", "ls"]);
    for digest in image.blob_digests() {
        assert!(
            listed.lines().any(|line| line.starts_with(&digest)
                && line
                    .split_whitespace()
                    .last()
                    .is_some_and(|labels| labels.split(',').any(|label| label == source))),
            "{}: {digest} labelled {source} in:\n{listed}",
            server.name
        );
    }
    let check = server.ctr_ok(&["images", "check", "--snapshotter", snapshotter]);
    let layers = image.layers.len() + 1;
    assert!(
        check.lines().any(|line| line.starts_with(&reference)
            && line.contains(&format!("complete ({layers}/{layers})"))
            && line.trim_end().ends_with("true")),
        "{}: {reference} complete and unpacked in:\n{check}",
        server.name
    );
    assert_chain(server, snapshotter, &image);
    assert_mounted_tree(server, snapshotter, &reference, &image);

    let copy = registry.reference(COPY);
    server.ctr_ok(&["images", "tag", &reference, &copy]);
    let output = server.ctr(&["images", "push", "--plain-http", &copy]);
    assert!(
        output.status.success(),
        "{}: ctr images push {copy} failed ({}):\nstdout:\n{}\nstderr:\n{}\nregistry log:\n{}",
        server.name,
        output.status,
        output.stdout,
        output.stderr,
        registry.log()
    );
    assert_eq!(
        registry.digest(COPY),
        seeded,
        "{}: the pushed copy's digest in the registry",
        server.name
    );
}

#[test]
fn ctr_images_pull_and_push_against_a_registry_on_native() {
    let daemon = start_plinthd();
    pull_and_push(&Server::plinthd(&daemon), "native");
}

#[test]
fn ctr_images_pull_and_push_against_a_registry_on_overlayfs() {
    let daemon = start_plinthd();
    pull_and_push(&Server::plinthd(&daemon), "overlayfs");
}

/// The same checks against containerd: the tests' own expectations hold there.
#[test]
fn containerd_passes_the_registry_checks() {
    for snapshotter in ["native", "overlayfs"] {
        let containerd = start_containerd();
        pull_and_push(&Server::containerd(&containerd), snapshotter);
    }
}
