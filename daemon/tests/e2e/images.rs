//! The everyday image workflow with the stock `ctr`, on both snapshotters: `images import` of
//! an OCI and of a Docker archive the tests generate (`images/archive.rs`), `images ls` and
//! `check`, `images mount` with the whole tree checked entry by entry, `export` and a
//! re-import giving the same digests, `snapshots diff` of a changed active snapshot applied
//! (through the Diff API) on another parent, `containers create` on the image's chain,
//! `images rm` and a collection leaving nothing behind, a hostile layer that stays inside
//! its snapshot, and the same archive beside the real containerd: same digests, same
//! snapshot chain, same trees. `images/registry.rs`: pull and push against a real registry.
//!
//! Every test runs against any daemon through [`Server`] (plinthd or containerd), so the
//! tests themselves are checked against containerd.

mod archive;
mod registry;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use plinth_api::containerd::services::diff::v1::ApplyRequest;
use plinth_api::containerd::services::diff::v1::diff_client::DiffClient;
use plinth_api::containerd::services::snapshots::v1::MountsRequest;
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::types::Descriptor;
use plinth_tests::{Containerd, Daemon, Output, Start, start};

use self::archive::{Expected, Image, Tree, expected_tree, hostile_image, test_image};

const NS: &str = "images";
const BASE: &str = "plinth.test/e2e";
const OCI_REF: &str = "plinth.test/e2e:oci";
const DOCKER_REF: &str = "plinth.test/e2e:docker";

/// A daemon `ctr` talks to: plinthd or containerd.
struct Server {
    socket: PathBuf,
    /// A scratch directory for archives, mount points and outputs.
    scratch: tempfile::TempDir,
    /// Where its content store keeps blobs, and its snapshotters their snapshots.
    root: PathBuf,
    name: &'static str,
}

impl Server {
    fn plinthd(daemon: &Daemon) -> Server {
        Server::new(daemon.socket(), daemon.root(), "plinthd")
    }

    fn containerd(containerd: &Containerd) -> Server {
        let root = containerd.socket().parent().unwrap().join("root");
        Server::new(containerd.socket(), root, "containerd")
    }

    fn new(socket: &Path, root: PathBuf, name: &'static str) -> Server {
        Server {
            socket: socket.to_path_buf(),
            scratch: tempfile::tempdir().unwrap(),
            root,
            name,
        }
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    fn address(&self) -> String {
        self.socket.display().to_string()
    }

    /// `ctr --address SOCKET -n images ARGS`.
    fn ctr(&self, args: &[&str]) -> Output {
        let address = self.address();
        let mut all = vec!["--address", &address, "-n", NS];
        all.extend_from_slice(args);
        plinth_tests::run(&plinth_tests::ctr(), &all)
    }

    /// As [`Server::ctr`], asserting success; its standard output.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let output = self.ctr(args);
        assert!(
            output.status.success(),
            "{}: ctr {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.name,
            output.status,
            output.stdout,
            output.stderr
        );
        output.stdout
    }

    /// As [`Server::ctr_ok`], standard output into `path` (binary data).
    fn ctr_to_file(&self, args: &[&str], path: &Path) {
        let address = self.address();
        let mut all = vec!["--address", &address, "-n", NS];
        all.extend_from_slice(args);
        let output = plinth_tests::run_files(&plinth_tests::ctr(), &all, None, Some(path));
        assert!(
            output.status.success(),
            "{}: ctr {args:?} failed:\n{}",
            self.name,
            output.stderr
        );
    }

    /// Asserts that `ctr plugins ls` shows the snapshotter `name` ok: a test on a snapshotter
    /// fails, never skips, where it does not work.
    fn require_snapshotter(&self, name: &str) {
        let plugins = self.ctr_ok(&["plugins", "ls"]);
        let ok = plugins.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 4
                && fields[0] == "io.containerd.snapshotter.v1"
                && fields[1] == name
                && fields[3] == "ok"
        });
        assert!(
            ok,
            "{}: the snapshotter {name} must work here (run as root, on a filesystem that \
             supports overlay):\n{plugins}",
            self.name
        );
    }

    /// Settles what the import's lease left: plinthd's harness collects only when asked
    /// (`plinthctl gc`), the harness's containerd after every deletion (the import's lease),
    /// in the background; waits until the blobs no longer change there.
    fn collect(&self) {
        if self.name == "plinthd" {
            let output = plinth_tests::run(
                &plinth_tests::binary("plinthctl"),
                &["--address", &self.address(), "gc"],
            );
            output.ok();
        } else {
            let mut last = self.blobs();
            let mut same = 0;
            plinth_tests::wait_for(
                "containerd's collection",
                std::time::Duration::from_secs(10),
                || {
                    let now = self.blobs();
                    same = if now == last { same + 1 } else { 0 };
                    last = now;
                    (same >= 4).then_some(())
                },
            );
        }
    }

    fn import(&self, archive: &Path, snapshotter: &str) -> String {
        self.ctr_ok(&[
            "images",
            "import",
            "--base-name",
            BASE,
            "--snapshotter",
            snapshotter,
            archive.to_str().unwrap(),
        ])
    }

    /// `images ls`: reference → digest.
    fn images(&self) -> BTreeMap<String, String> {
        self.ctr_ok(&["images", "ls"])
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() >= 3).then(|| (fields[0].to_string(), fields[2].to_string()))
            })
            .collect()
    }

    /// `content ls -q`.
    fn blobs(&self) -> BTreeSet<String> {
        self.ctr_ok(&["content", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `snapshots ls`: key → (parent, kind).
    fn snapshots(&self, snapshotter: &str) -> BTreeMap<String, (String, String)> {
        self.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"])
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields.as_slice() {
                    [key, parent, kind] => {
                        Some((key.to_string(), (parent.to_string(), kind.to_string())))
                    }
                    [key, kind] => Some((key.to_string(), (String::new(), kind.to_string()))),
                    _ => None,
                }
            })
            .collect()
    }

    /// Creates a read-only view `key` of the committed snapshot `parent` and mounts it on a
    /// new directory; that directory.
    fn mount_view(&self, snapshotter: &str, key: &str, parent: &str) -> Mounted {
        let json = self.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "view",
            "--mounts",
            key,
            parent,
        ]);
        self.mount_json(&json, key)
    }

    /// `snapshots prepare --mounts KEY PARENT`, mounted.
    fn mount_prepared(&self, snapshotter: &str, key: &str, parent: &str) -> Mounted {
        let json = self.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "prepare",
            "--mounts",
            key,
            parent,
        ]);
        self.mount_json(&json, key)
    }

    fn mount_json(&self, json: &str, key: &str) -> Mounted {
        let target = self.dir().join(format!("mnt-{key}"));
        std::fs::create_dir_all(&target).unwrap();
        let mounts: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{}: mounts as JSON ({e}):\n{json}", self.name));
        for m in mounts.as_array().expect("a list of mounts") {
            let field = |name: &str| {
                m.get(name)
                    .or_else(|| m.get(name.to_lowercase()))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null)
            };
            let options: Vec<String> = field("Options")
                .as_array()
                .map(|o| o.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let kind = field("Type").as_str().unwrap().to_string();
            let source = field("Source").as_str().unwrap().to_string();
            let mut args = vec!["-t".to_string(), kind, source, target.display().to_string()];
            if !options.is_empty() {
                args.push("-o".into());
                args.push(options.join(","));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            plinth_tests::run(Path::new("mount"), &args).ok();
        }
        Mounted { target }
    }

    /// The mounts of the snapshot `key` (for the Diff API).
    fn snapshot_mounts(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Vec<plinth_api::containerd::types::Mount> {
        runtime().block_on(async {
            let client = plinthd::client::Client::connect(&self.address(), NS)
                .await
                .unwrap();
            let request = client
                .request(MountsRequest {
                    snapshotter: snapshotter.into(),
                    key: key.into(),
                })
                .unwrap();
            SnapshotsClient::new(client.channel())
                .mounts(request)
                .await
                .unwrap()
                .into_inner()
                .mounts
        })
    }

    /// The Diff service's Apply (ctr has no command for it): `diff` onto the mounts of the
    /// active snapshot `key`.
    fn apply(&self, snapshotter: &str, key: &str, diff: Descriptor) -> Descriptor {
        let mounts = self.snapshot_mounts(snapshotter, key);
        runtime().block_on(async {
            let client = plinthd::client::Client::connect(&self.address(), NS)
                .await
                .unwrap();
            let request = client
                .request(ApplyRequest {
                    diff: Some(diff),
                    mounts,
                    ..ApplyRequest::default()
                })
                .unwrap();
            DiffClient::new(client.channel())
                .apply(request)
                .await
                .unwrap_or_else(|status| panic!("{}: Diff.Apply: {status:?}", self.name))
                .into_inner()
                .applied
                .expect("applied descriptor")
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A mounted snapshot, unmounted on drop.
struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = plinth_tests::run(Path::new("umount"), &[self.target.to_str().unwrap()]);
    }
}

/// Every entry under `root` (the root itself left out), as the tests compare them; the
/// second map groups paths by inode (for hard links).
fn read_tree(root: &Path) -> (Tree, BTreeMap<u64, BTreeSet<String>>) {
    let mut tree = Tree::new();
    let mut inodes: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let file_type = meta.file_type();
            let (kind, content, target, mtime) = if file_type.is_dir() {
                stack.push(path.clone());
                ("dir", None, None, None)
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", None, Some(target.display().to_string()), None)
            } else if file_type.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                inodes
                    .entry(meta.ino())
                    .or_default()
                    .insert(relative.clone());
                (
                    "file",
                    Some(archive::sha256(&bytes)),
                    None,
                    Some(meta.mtime()),
                )
            } else {
                panic!("{relative}: unexpected file type {file_type:?}");
            };
            let mode = if kind == "symlink" {
                0o777
            } else {
                meta.mode() & 0o7777
            };
            tree.insert(
                relative,
                Expected {
                    kind,
                    mode,
                    uid: u64::from(meta.uid()),
                    gid: u64::from(meta.gid()),
                    content,
                    mtime,
                    target,
                    xattrs: user_xattrs(&path),
                },
            );
        }
    }
    inodes.retain(|_, paths| paths.len() > 1);
    (tree, inodes)
}

/// The `user.` extended attributes of `path` (not followed).
fn user_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = [0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    names[..n]
        .split(|b| *b == 0)
        .filter(|name| name.starts_with(b"user."))
        .map(|name| {
            let name = std::str::from_utf8(name).unwrap();
            let mut value = [0u8; 4096];
            let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            (name.to_string(), value[..len].to_vec())
        })
        .collect()
}

/// Asserts `found` is `expected`, listing every entry that differs.
fn assert_trees(found: &Tree, expected: &Tree, what: &str) {
    let mut differences = Vec::new();
    for (path, want) in expected {
        match found.get(path) {
            None => differences.push(format!("missing {path}: {want:?}")),
            Some(got) if got != want => {
                differences.push(format!("{path}:\n  expected {want:?}\n  found    {got:?}"));
            }
            Some(_) => {}
        }
    }
    for (path, got) in found {
        if !expected.contains_key(path) {
            differences.push(format!("unexpected {path}: {got:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{what}: {} entries differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
}

/// The hard links the test image holds: `bin/tool` and `bin/tool-link` share an inode.
fn assert_hard_links(inodes: &BTreeMap<u64, BTreeSet<String>>, what: &str) {
    let groups: Vec<&BTreeSet<String>> = inodes.values().collect();
    let want: BTreeSet<String> = ["bin/tool".to_string(), "bin/tool-link".to_string()].into();
    assert_eq!(groups, vec![&want], "{what}: hard links");
}

fn start_plinthd() -> Daemon {
    start(Start::default())
}

/// containerd as the harness configures it: a deletion starts a collection. What the tests
/// make there outside an image is either labelled as a root (`snapshots prepare`, `snapshots
/// diff --keep`) or read before the next deletion (views).
fn start_containerd() -> Containerd {
    Containerd::start(&[], "")
}

/// Writes the test image's OCI and Docker archives into the server's scratch directory.
fn archives(server: &Server, image: &Image) -> (PathBuf, PathBuf) {
    let oci = server.dir().join("image-oci.tar");
    image.write_oci(&oci, OCI_REF);
    let docker = server.dir().join("image-docker.tar");
    image.write_docker(&docker, DOCKER_REF);
    (oci, docker)
}

/// Asserts the unpacked chain: every chain id committed, each on the one below.
fn assert_chain(server: &Server, snapshotter: &str, image: &Image) {
    let snapshots = server.snapshots(snapshotter);
    let chain = image.chain_ids();
    for (i, id) in chain.iter().enumerate() {
        let parent = if i == 0 { "" } else { &chain[i - 1] };
        assert_eq!(
            snapshots.get(id),
            Some(&(parent.to_string(), "Committed".to_string())),
            "{}: chain id {i} in {snapshots:#?}",
            server.name
        );
    }
}

/// Imports the test image's archive of `format` and checks ls, check, the chain and the
/// mounted tree.
fn import_and_check(server: &Server, snapshotter: &str, format: &str) {
    server.require_snapshotter(snapshotter);
    let image = test_image();
    let (oci, docker) = archives(server, &image);
    let (archive, reference) = match format {
        "oci" => (oci, OCI_REF),
        _ => (docker, DOCKER_REF),
    };
    let output = server.import(&archive, snapshotter);
    assert!(output.contains("done"), "{output}");
    let images = server.images();
    let digest = images
        .get(reference)
        .unwrap_or_else(|| panic!("{}: {reference} in {images:?}", server.name));
    // The archive's index.json was stored under the import's lease only.
    server.collect();
    let blobs = server.blobs();
    if format == "oci" {
        assert_eq!(digest, &image.manifest_digest());
        assert_eq!(blobs, image.blob_digests().into_iter().collect());
    } else {
        // ctr writes the manifest of a Docker archive itself; the config and layers are ours.
        assert!(blobs.contains(digest), "{digest} in {blobs:?}");
        for blob in &image.blob_digests()[1..] {
            assert!(blobs.contains(blob), "{blob} in {blobs:?}");
        }
    }
    let check = server.ctr_ok(&["images", "check", "--snapshotter", snapshotter]);
    let line = check
        .lines()
        .find(|line| line.starts_with(reference))
        .unwrap_or_else(|| panic!("{reference} in:\n{check}"));
    // The config and the layers (the manifest is not counted).
    let layers = image.layers.len() + 1;
    assert!(
        line.contains(&format!("complete ({layers}/{layers})"))
            && line.trim_end().ends_with("true"),
        "{}: {line}",
        server.name
    );
    assert_chain(server, snapshotter, &image);
    assert_mounted_tree(server, snapshotter, reference, &image);
}

/// `ctr images mount` (overlayfs: ctr 1.6 takes `--snapshotter` of this command as a global
/// flag, so it always mounts with the default snapshotter) or a view of the top chain id
/// (native), the whole tree checked, then unmounted.
fn assert_mounted_tree(server: &Server, snapshotter: &str, reference: &str, image: &Image) {
    let expected = expected_tree(&image.layers);
    let top = image.chain_ids().last().unwrap().clone();
    if snapshotter == "overlayfs" {
        let target = server
            .dir()
            .join(format!("mount-{}", reference.replace([':', '/'], "-")));
        std::fs::create_dir_all(&target).unwrap();
        let target_text = target.to_str().unwrap();
        let output = server.ctr_ok(&[
            "images",
            "mount",
            "--snapshotter",
            snapshotter,
            reference,
            target_text,
        ]);
        assert!(output.starts_with(&format!("{top}\n")), "{output}");
        let (tree, inodes) = read_tree(&target);
        server.ctr_ok(&["images", "unmount", "--rm", target_text]);
        assert_trees(
            &tree,
            &expected,
            &format!("{}: {reference} mounted", server.name),
        );
        assert_hard_links(&inodes, server.name);
        assert!(
            !server.snapshots(snapshotter).contains_key(target_text),
            "unmount --rm removes the mount's snapshot"
        );
    } else {
        let mounted = server.mount_view(snapshotter, "check-view", &top);
        let (tree, inodes) = read_tree(mounted.path());
        drop(mounted);
        server.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "rm",
            "check-view",
        ]);
        assert_trees(
            &tree,
            &expected,
            &format!("{}: {reference} viewed", server.name),
        );
        assert_hard_links(&inodes, server.name);
    }
}

#[test]
fn ctr_images_import_of_an_oci_archive_on_native() {
    let daemon = start_plinthd();
    import_and_check(&Server::plinthd(&daemon), "native", "oci");
}

#[test]
fn ctr_images_import_of_an_oci_archive_on_overlayfs() {
    let daemon = start_plinthd();
    import_and_check(&Server::plinthd(&daemon), "overlayfs", "oci");
}

#[test]
fn ctr_images_import_of_a_docker_archive_on_native() {
    let daemon = start_plinthd();
    import_and_check(&Server::plinthd(&daemon), "native", "docker");
}

#[test]
fn ctr_images_import_of_a_docker_archive_on_overlayfs() {
    let daemon = start_plinthd();
    import_and_check(&Server::plinthd(&daemon), "overlayfs", "docker");
}

/// The same checks against containerd: the tests' own expectations hold there.
#[test]
fn containerd_passes_the_import_checks() {
    for snapshotter in ["native", "overlayfs"] {
        for format in ["oci", "docker"] {
            let containerd = start_containerd();
            import_and_check(&Server::containerd(&containerd), snapshotter, format);
        }
    }
}

/// `images export`, then an import into a fresh server gives the same image and blobs.
fn export_and_reimport(first: &Server, second: &Server, snapshotter: &str) {
    first.require_snapshotter(snapshotter);
    let image = test_image();
    let (oci, docker) = archives(first, &image);
    first.import(&oci, snapshotter);
    first.import(&docker, snapshotter);
    let exported = first.dir().join("exported.tar");
    first.ctr_ok(&[
        "images",
        "export",
        exported.to_str().unwrap(),
        OCI_REF,
        DOCKER_REF,
    ]);
    second.import(&exported, snapshotter);
    first.collect();
    second.collect();
    assert_eq!(second.images(), first.images(), "images after a re-import");
    assert_eq!(second.blobs(), first.blobs(), "blobs after a re-import");
    assert_chain(second, snapshotter, &image);
    assert_mounted_tree(second, snapshotter, OCI_REF, &image);
}

#[test]
fn ctr_images_export_and_reimport_give_the_same_digests_on_native() {
    let (first, second) = (start_plinthd(), start_plinthd());
    export_and_reimport(
        &Server::plinthd(&first),
        &Server::plinthd(&second),
        "native",
    );
}

#[test]
fn ctr_images_export_and_reimport_give_the_same_digests_on_overlayfs() {
    let (first, second) = (start_plinthd(), start_plinthd());
    export_and_reimport(
        &Server::plinthd(&first),
        &Server::plinthd(&second),
        "overlayfs",
    );
}

#[test]
fn containerd_passes_the_export_checks() {
    let (first, second) = (start_containerd(), start_containerd());
    export_and_reimport(
        &Server::containerd(&first),
        &Server::containerd(&second),
        "overlayfs",
    );
}

/// The changes made in the active snapshot of the diff test: paths changed, added,
/// removed (one that the other parent does not hold) and a mode changed.
fn change_tree(root: &Path) -> Vec<&'static str> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(root.join("etc/hostname"), b"changed in the snapshot\n").unwrap();
    std::fs::write(root.join("etc/added"), b"added\n").unwrap();
    std::fs::set_permissions(
        root.join("etc/added"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::remove_file(root.join("etc/config")).unwrap();
    std::fs::remove_file(root.join("opt/new")).unwrap();
    std::fs::create_dir(root.join("newdir")).unwrap();
    std::fs::set_permissions(root.join("newdir"), std::fs::Permissions::from_mode(0o710)).unwrap();
    std::fs::write(root.join("newdir/f"), b"f\n").unwrap();
    std::os::unix::fs::symlink("hostname", root.join("etc/newlink")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1770)).unwrap();
    vec![
        "etc/hostname",
        "etc/added",
        "etc/config",
        "opt/new",
        "newdir",
        "newdir/f",
        "etc/newlink",
        "tmp",
    ]
}

/// `snapshots diff` of a changed active snapshot, applied (Diff.Apply) on the image's top
/// and on its first layer: the same change on each.
fn snapshot_diff_applied_elsewhere(server: &Server, snapshotter: &str) {
    server.require_snapshotter(snapshotter);
    let image = test_image();
    let (oci, _) = archives(server, &image);
    server.import(&oci, snapshotter);
    let chain = image.chain_ids();
    let top = chain.last().unwrap();
    let work = server.mount_prepared(snapshotter, "work", top);
    let changed = change_tree(work.path());
    let (work_tree, _) = read_tree(work.path());
    drop(work);

    let layer = server.dir().join("diff.tar.gz");
    server.ctr_to_file(
        &[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "diff",
            "--keep",
            "work",
        ],
        &layer,
    );
    let bytes = std::fs::read(&layer).unwrap();
    let digest = archive::sha256(&bytes);
    let diff_id = {
        use std::io::Read as _;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        archive::sha256(&tar)
    };
    assert!(
        server.blobs().contains(&digest),
        "{}: the diff {digest} is in the content store",
        server.name
    );
    let diff = Descriptor {
        media_type: archive::OCI_LAYER_GZIP.into(),
        digest: digest.clone(),
        size: i64::try_from(bytes.len()).unwrap(),
        ..Descriptor::default()
    };

    for (i, parent) in [(0, &chain[0]), (1, top)] {
        let key = format!("applied-{i}");
        let (parent_tree, _) = {
            let view = server.mount_view(snapshotter, &format!("parent-{i}"), parent);
            read_tree(view.path())
        };
        server.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "prepare",
            &key,
            parent,
        ]);
        let applied = server.apply(snapshotter, &key, diff.clone());
        // Apply answers with the layer's uncompressed form: its diff id.
        assert_eq!(
            (applied.media_type.as_str(), applied.digest.as_str()),
            ("application/vnd.oci.image.layer.v1.tar", diff_id.as_str()),
            "{}: Apply's answer",
            server.name
        );
        let applied_tree = {
            let view = server.mount_prepared_again(snapshotter, &key);
            read_tree(view.path()).0
        };
        // The parent's tree with every changed path (and the directories on the way to it)
        // as in the changed snapshot, or gone.
        let mut expected = parent_tree.clone();
        for path in &changed {
            expected.retain(|p, _| p != path && !p.starts_with(&format!("{path}/")));
            if let Some(entry) = work_tree.get(*path) {
                expected.insert((*path).to_string(), entry.clone());
            }
            let mut ancestor = Path::new(path).parent();
            while let Some(dir) = ancestor.filter(|d| !d.as_os_str().is_empty()) {
                let dir = dir.to_str().unwrap();
                expected.insert(dir.to_string(), work_tree[dir].clone());
                ancestor = Path::new(dir).parent();
            }
        }
        if i == 1 {
            assert_trees(&expected, &work_tree, "the model of the change on the top");
        }
        assert_trees(
            &applied_tree,
            &expected,
            &format!("{}: the diff applied on chain {i}", server.name),
        );
    }
}

impl Server {
    /// Mounts the active snapshot `key` as `snapshots mounts` gives it.
    fn mount_prepared_again(&self, snapshotter: &str, key: &str) -> Mounted {
        let mounts = self.snapshot_mounts(snapshotter, key);
        let json: Vec<serde_json::Value> = mounts
            .iter()
            .map(
                |m| serde_json::json!({"Type": m.r#type, "Source": m.source, "Options": m.options}),
            )
            .collect();
        self.mount_json(&serde_json::Value::Array(json).to_string(), key)
    }
}

#[test]
fn ctr_snapshots_diff_applied_on_another_parent_reproduces_the_change_on_native() {
    let daemon = start_plinthd();
    snapshot_diff_applied_elsewhere(&Server::plinthd(&daemon), "native");
}

#[test]
fn ctr_snapshots_diff_applied_on_another_parent_reproduces_the_change_on_overlayfs() {
    let daemon = start_plinthd();
    snapshot_diff_applied_elsewhere(&Server::plinthd(&daemon), "overlayfs");
}

#[test]
fn containerd_passes_the_snapshot_diff_checks() {
    for snapshotter in ["native", "overlayfs"] {
        let containerd = start_containerd();
        snapshot_diff_applied_elsewhere(&Server::containerd(&containerd), snapshotter);
    }
}

/// `containers create IMAGE ID`: its snapshot is an active one on the image's top chain id;
/// `containers rm` takes it.
fn container_on_the_chain(server: &Server, snapshotter: &str) {
    server.require_snapshotter(snapshotter);
    let image = test_image();
    let (oci, _) = archives(server, &image);
    server.import(&oci, snapshotter);
    server.ctr_ok(&[
        "containers",
        "create",
        "--snapshotter",
        snapshotter,
        OCI_REF,
        "box",
    ]);
    let snapshots = server.snapshots(snapshotter);
    let top = image.chain_ids().last().unwrap().clone();
    assert_eq!(
        snapshots.get("box"),
        Some(&(top.clone(), "Active".to_string())),
        "{}: {snapshots:#?}",
        server.name
    );
    let info = server.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "info", "box"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["Parent"], top, "{info}");
    let containers = server.ctr_ok(&["containers", "ls"]);
    assert!(
        containers
            .lines()
            .any(|l| l.starts_with("box ") && l.contains(OCI_REF)),
        "{containers}"
    );
    server.ctr_ok(&["containers", "rm", "box"]);
    assert_eq!(server.ctr_ok(&["containers", "ls", "-q"]), "");
    assert!(
        !server.snapshots(snapshotter).contains_key("box"),
        "{}: containers rm removes the container's snapshot",
        server.name
    );
}

#[test]
fn ctr_containers_create_puts_its_snapshot_on_the_image_chain_on_native() {
    let daemon = start_plinthd();
    container_on_the_chain(&Server::plinthd(&daemon), "native");
}

#[test]
fn ctr_containers_create_puts_its_snapshot_on_the_image_chain_on_overlayfs() {
    let daemon = start_plinthd();
    container_on_the_chain(&Server::plinthd(&daemon), "overlayfs");
}

#[test]
fn containerd_passes_the_container_checks() {
    let containerd = start_containerd();
    let server = Server::containerd(&containerd);
    container_on_the_chain(&server, "native");
    container_on_the_chain(&server, "overlayfs");
}

/// The files under `dir` (recursively), for "nothing left on disk".
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(items) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in items {
            let path = item.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// Imports both archives, removes both images with `--sync`: the collection leaves no blob,
/// no snapshot, no file of either.
fn images_rm_leaves_nothing(server: &Server, snapshotter: &str) {
    server.require_snapshotter(snapshotter);
    let image = test_image();
    let (oci, docker) = archives(server, &image);
    server.import(&oci, snapshotter);
    server.import(&docker, snapshotter);
    assert!(!server.blobs().is_empty());
    assert!(!server.snapshots(snapshotter).is_empty());
    server.ctr_ok(&["images", "rm", "--sync", OCI_REF, DOCKER_REF]);
    assert_eq!(server.ctr_ok(&["images", "ls", "-q"]), "");
    assert_eq!(server.blobs(), BTreeSet::new(), "{}: blobs", server.name);
    assert_eq!(
        server.snapshots(snapshotter),
        BTreeMap::new(),
        "{}: snapshots",
        server.name
    );
    let blobs = server
        .root
        .join("io.containerd.content.v1.content/blobs/sha256");
    assert_eq!(files_under(&blobs), Vec::<PathBuf>::new(), "blob files");
    let snapshots = server.root.join(format!(
        "io.containerd.snapshotter.v1.{snapshotter}/snapshots"
    ));
    assert_eq!(
        files_under(&snapshots),
        Vec::<PathBuf>::new(),
        "snapshot directories"
    );
}

fn start_plinthd_collecting() -> Daemon {
    start(Start {
        config: "version = 3\n[plugins.\"io.containerd.gc.v1.scheduler\"]\nstartup_delay = \"0s\"\nmutation_threshold = 0\n".into(),
        ..Start::default()
    })
}

#[test]
fn ctr_images_rm_sync_leaves_nothing_behind_on_native() {
    let daemon = start_plinthd_collecting();
    images_rm_leaves_nothing(&Server::plinthd(&daemon), "native");
}

#[test]
fn ctr_images_rm_sync_leaves_nothing_behind_on_overlayfs() {
    let daemon = start_plinthd_collecting();
    images_rm_leaves_nothing(&Server::plinthd(&daemon), "overlayfs");
}

#[test]
fn containerd_passes_the_images_rm_checks() {
    for snapshotter in ["native", "overlayfs"] {
        // The harness's containerd collects (a deletion starts a collection).
        let containerd = Containerd::start(&[], "");
        images_rm_leaves_nothing(&Server::containerd(&containerd), snapshotter);
    }
}

/// The same archive imported by plinthd and by containerd: same image digests, same blobs,
/// same snapshot chain, equal trees (entry by entry).
fn same_as_containerd(snapshotter: &str) {
    let daemon = start_plinthd();
    let containerd = start_containerd();
    let plinthd = Server::plinthd(&daemon);
    let containerd = Server::containerd(&containerd);
    plinthd.require_snapshotter(snapshotter);
    containerd.require_snapshotter(snapshotter);
    let image = test_image();
    let (oci, docker) = archives(&plinthd, &image);
    for server in [&plinthd, &containerd] {
        server.import(&oci, snapshotter);
        server.import(&docker, snapshotter);
    }
    plinthd.collect();
    containerd.collect();
    assert_eq!(plinthd.images(), containerd.images(), "images");
    assert_eq!(plinthd.blobs(), containerd.blobs(), "blobs");
    let names = |server: &Server| -> BTreeMap<String, String> {
        server
            .snapshots(snapshotter)
            .into_iter()
            .map(|(key, (parent, _))| (key, parent))
            .collect()
    };
    assert_eq!(names(&plinthd), names(&containerd), "snapshot chain");
    let top = image.chain_ids().last().unwrap().clone();
    let trees: Vec<(Tree, BTreeMap<u64, BTreeSet<String>>)> = [&plinthd, &containerd]
        .iter()
        .map(|server| {
            let view = server.mount_view(snapshotter, "compare", &top);
            read_tree(view.path())
        })
        .collect();
    assert_trees(
        &trees[0].0,
        &trees[1].0,
        "plinthd's tree against containerd's",
    );
    assert_eq!(
        trees[0].1.values().collect::<Vec<_>>(),
        trees[1].1.values().collect::<Vec<_>>(),
        "hard links"
    );
}

#[test]
fn the_same_archive_gives_containerds_digests_chain_and_tree_on_native() {
    same_as_containerd("native");
}

#[test]
fn the_same_archive_gives_containerds_digests_chain_and_tree_on_overlayfs() {
    same_as_containerd("overlayfs");
}

/// A layer with an absolute symlink out and a file written through it, a relative symlink
/// climbing out, `..` names: after the import the outside directory is untouched and every
/// file is inside the snapshot, where the root stands for `/`.
fn hostile_layer_stays_inside(server: &Server, snapshotter: &str) {
    server.require_snapshotter(snapshotter);
    let outside = server.dir().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("sentinel"), b"untouched\n").unwrap();
    let image = hostile_image(&outside);
    let archive = server.dir().join("hostile.tar");
    image.write_oci(&archive, "plinth.test/e2e:hostile");
    let dotdot_on_host = Path::new("/dotdot").exists();
    server.import(&archive, snapshotter);

    let mut outside_files: Vec<PathBuf> = files_under(&outside);
    outside_files.sort();
    assert_eq!(
        outside_files,
        vec![outside.join("sentinel")],
        "{}: the outside directory",
        server.name
    );
    assert_eq!(
        std::fs::read(outside.join("sentinel")).unwrap(),
        b"untouched\n"
    );
    assert_eq!(Path::new("/dotdot").exists(), dotdot_on_host, "/dotdot");
    let top = image.chain_ids().last().unwrap().clone();
    let view = server.mount_view(snapshotter, "hostile", &top);
    // Where inside is each applier's choice: plinthd follows the symlinks with the root as
    // `/` (so `escape/x` lands in `<root>/<outside>/x`); containerd 1.6 was seen to leave
    // `escape/x` and `climb/...` as directories of those names. Either is contained; each file
    // must be in the snapshot, once, with its content.
    let (tree, _) = read_tree(view.path());
    for (name, content) in [
        ("through-absolute", "through an absolute symlink\n"),
        ("through-relative", "through a relative symlink\n"),
        ("dotdot-abs", "a name with .. to the outside\n"),
        ("dotdot", "a name with ..\n"),
    ] {
        let found: Vec<&String> = tree
            .keys()
            .filter(|path| path.rsplit('/').next() == Some(name))
            .collect();
        assert_eq!(found.len(), 1, "{}: {name} in {tree:#?}", server.name);
        let bytes = std::fs::read(view.path().join(found[0])).unwrap();
        assert_eq!(bytes, content.as_bytes(), "{}: {}", server.name, found[0]);
        assert_eq!(tree[found[0]].kind, "file");
    }
    // `..` names are cleaned against the root.
    assert!(tree.contains_key("dotdot"), "{}: {tree:#?}", server.name);
    eprintln!(
        "{}: the hostile layer's files: {:#?}",
        server.name,
        tree.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_hostile_layer_writes_nothing_outside_its_snapshot_on_native() {
    let daemon = start_plinthd();
    hostile_layer_stays_inside(&Server::plinthd(&daemon), "native");
}

#[test]
fn a_hostile_layer_writes_nothing_outside_its_snapshot_on_overlayfs() {
    let daemon = start_plinthd();
    hostile_layer_stays_inside(&Server::plinthd(&daemon), "overlayfs");
}

#[test]
fn containerd_passes_the_hostile_layer_checks() {
    let containerd = start_containerd();
    let server = Server::containerd(&containerd);
    hostile_layer_stays_inside(&server, "native");
    let containerd = start_containerd();
    let server = Server::containerd(&containerd);
    hostile_layer_stays_inside(&server, "overlayfs");
}
