//! The image archives the image tests import: layers built entry by entry (gzip tars), an OCI
//! image layout and a Docker archive holding the same layers, and the tree a correct unpack
//! of them gives (a model of layer application: OCI whiteouts, opaque directories,
//! replacements), so that a mounted image can be checked entry by entry.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(super) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every entry's modification time (and the archives' own): fixed, so that archives are the
/// same bytes on every run.
pub(super) const MTIME: u64 = 1_700_000_000;

/// What one layer entry is.
#[derive(Debug, Clone)]
pub(super) enum Node {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    /// A hard link to the named path (of the same layer).
    HardLink(String),
    /// `.wh.<name>` beside the named path: deletes it.
    Whiteout,
    /// `.wh..wh..opq` in the named directory: hides what lower layers hold in it.
    Opaque,
}

/// One layer entry: a path (relative, no leading `/`), what it is, and its metadata.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) path: String,
    pub(super) node: Node,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

pub(super) fn file(path: &str, content: &[u8], mode: u32) -> Entry {
    entry(path, Node::File(content.to_vec()), mode)
}

pub(super) fn dir(path: &str, mode: u32) -> Entry {
    entry(path, Node::Dir, mode)
}

pub(super) fn symlink(path: &str, target: &str) -> Entry {
    entry(path, Node::Symlink(target.into()), 0o777)
}

/// A hard link whose header repeats its target's mode (0755, root's): containerd applies a
/// link's header to the shared inode again, plinthd leaves the inode as its own entry set it
/// (see `differ/apply.rs`), so the tests keep the two equal.
pub(super) fn hard_link(path: &str, target: &str) -> Entry {
    entry(path, Node::HardLink(target.into()), 0o755)
}

pub(super) fn whiteout(path: &str) -> Entry {
    entry(path, Node::Whiteout, 0o644)
}

pub(super) fn opaque(dir: &str) -> Entry {
    entry(dir, Node::Opaque, 0o644)
}

fn entry(path: &str, node: Node, mode: u32) -> Entry {
    Entry {
        path: path.into(),
        node,
        mode,
        uid: 0,
        gid: 0,
        xattrs: Vec::new(),
    }
}

impl Entry {
    pub(super) fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub(super) fn xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.xattrs.push((name.into(), value.to_vec()));
        self
    }

    /// The name the entry has in the tar.
    fn tar_name(&self) -> String {
        let (parent, name) = match self.path.rsplit_once('/') {
            Some((parent, name)) => (format!("{parent}/"), name),
            None => (String::new(), self.path.as_str()),
        };
        match self.node {
            Node::Whiteout => format!("{parent}.wh.{name}"),
            Node::Opaque => format!("{}/.wh..wh..opq", self.path),
            Node::Dir => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

/// The tar stream of `entries`, in their order. Names are written as given (raw, so that
/// hostile names such as `../x` stay as they are).
pub(super) fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        if !entry.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = entry
                .xattrs
                .iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_mtime(MTIME);
        header.set_uid(entry.uid);
        header.set_gid(entry.gid);
        header.set_mode(entry.mode);
        header.set_size(0);
        let mut data: &[u8] = &[];
        match &entry.node {
            Node::File(content) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(content.len() as u64);
                data = content;
            }
            Node::Dir => header.set_entry_type(tar::EntryType::Directory),
            Node::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                set_raw_link(&mut header, target);
            }
            Node::HardLink(target) => {
                header.set_entry_type(tar::EntryType::Link);
                set_raw_link(&mut header, target);
            }
            Node::Whiteout | Node::Opaque => header.set_entry_type(tar::EntryType::Regular),
        }
        set_raw_name(&mut header, &entry.tar_name());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Writes the name bytes as they are (`Header::set_path` refuses `..`).
fn set_raw_name(header: &mut tar::Header, name: &str) {
    let field = &mut header.as_old_mut().name;
    assert!(
        name.len() < field.len(),
        "name too long for the test: {name}"
    );
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

fn set_raw_link(header: &mut tar::Header, target: &str) {
    let field = &mut header.as_old_mut().linkname;
    assert!(
        target.len() < field.len(),
        "link too long for the test: {target}"
    );
    field.fill(0);
    field[..target.len()].copy_from_slice(target.as_bytes());
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

pub(super) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A layer as it goes into an archive.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) entries: Vec<Entry>,
    /// The gzip blob.
    pub(super) blob: Vec<u8>,
    pub(super) digest: String,
    pub(super) diff_id: String,
}

impl Layer {
    pub(super) fn new(entries: Vec<Entry>) -> Layer {
        let tar = tar(&entries);
        let blob = gzip(&tar);
        Layer {
            digest: sha256(&blob),
            diff_id: sha256(&tar),
            entries,
            blob,
        }
    }
}

/// An image: its layers, config and manifest (OCI media types), and the digests.
#[derive(Debug, Clone)]
pub(super) struct Image {
    pub(super) layers: Vec<Layer>,
    pub(super) config: Vec<u8>,
    pub(super) manifest: Vec<u8>,
}

impl Image {
    pub(super) fn new(layers: Vec<Vec<Entry>>) -> Image {
        let layers: Vec<Layer> = layers.into_iter().map(Layer::new).collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| format!("{:?}", l.diff_id)).collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/tool"],"WorkingDir":"/"}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        )
        .into_bytes();
        let layer_descriptors: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    r#"{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":{}}}"#,
                    l.digest,
                    l.blob.len()
                )
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
            sha256(&config),
            config.len(),
            layer_descriptors.join(",")
        )
        .into_bytes();
        Image {
            layers,
            config,
            manifest,
        }
    }

    pub(super) fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub(super) fn config_digest(&self) -> String {
        sha256(&self.config)
    }

    /// Every blob's digest: manifest, config, layers.
    pub(super) fn blob_digests(&self) -> Vec<String> {
        let mut all = vec![self.manifest_digest(), self.config_digest()];
        all.extend(self.layers.iter().map(|l| l.digest.clone()));
        all
    }

    /// The chain ids of the layers, bottom first: the names of the committed snapshots an
    /// unpack makes.
    pub(super) fn chain_ids(&self) -> Vec<String> {
        let mut chain: Vec<String> = Vec::new();
        for layer in &self.layers {
            let next = match chain.last() {
                None => layer.diff_id.clone(),
                Some(parent) => sha256(format!("{parent} {}", layer.diff_id).as_bytes()),
            };
            chain.push(next);
        }
        chain
    }

    /// Writes an OCI image layout archive, the manifest named `reference` in index.json.
    pub(super) fn write_oci(&self, path: &Path, reference: &str) {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{reference}"}},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            self.manifest_digest(),
            self.manifest.len()
        );
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".into(), index.into_bytes()),
        ];
        let mut blob = |bytes: &[u8]| {
            let hex = sha256(bytes)["sha256:".len()..].to_string();
            files.push((format!("blobs/sha256/{hex}"), bytes.to_vec()));
        };
        blob(&self.manifest);
        blob(&self.config);
        for layer in &self.layers {
            blob(&layer.blob);
        }
        write_archive(path, &files, &["blobs", "blobs/sha256"]);
    }

    /// Writes a Docker archive (`docker save`'s form) tagged `tag`, with the same layers.
    pub(super) fn write_docker(&self, path: &Path, tag: &str) {
        let config_name = format!("{}.json", &self.config_digest()["sha256:".len()..]);
        let mut files: Vec<(String, Vec<u8>)> = vec![(config_name.clone(), self.config.clone())];
        let mut dirs = Vec::new();
        let mut layer_names = Vec::new();
        for layer in &self.layers {
            let dir = layer.digest["sha256:".len()..].to_string();
            let name = format!("{dir}/layer.tar");
            files.push((name.clone(), layer.blob.clone()));
            layer_names.push(format!("{name:?}"));
            dirs.push(dir);
        }
        let manifest = format!(
            r#"[{{"Config":"{config_name}","RepoTags":["{tag}"],"Layers":[{}]}}]"#,
            layer_names.join(",")
        );
        files.push(("manifest.json".into(), manifest.into_bytes()));
        let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
        write_archive(path, &files, &dirs);
    }
}

fn write_archive(path: &Path, files: &[(String, Vec<u8>)], dirs: &[&str]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for dir in dirs {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_mtime(MTIME);
        header.set_size(0);
        builder
            .append_data(&mut header, format!("{dir}/"), &[][..])
            .unwrap();
    }
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_size(bytes.len() as u64);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

/// One entry of a tree as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Expected {
    /// `file`, `dir`, `symlink`.
    pub(super) kind: &'static str,
    /// The twelve permission bits (not checked for symlinks).
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    /// A file's content digest.
    pub(super) content: Option<String>,
    /// A file's modification time.
    pub(super) mtime: Option<i64>,
    /// A symlink's target.
    pub(super) target: Option<String>,
    /// The extended attributes of the `user.` namespace.
    pub(super) xattrs: BTreeMap<String, Vec<u8>>,
}

/// A tree: relative path → entry (the root itself left out).
pub(super) type Tree = BTreeMap<String, Expected>;

/// The tree an unpack of `layers` gives: OCI's rules for changesets.
pub(super) fn expected_tree(layers: &[Layer]) -> Tree {
    let mut tree = Tree::new();
    for layer in layers {
        let lower = tree.clone();
        for entry in &layer.entries {
            apply_entry(&mut tree, &lower, entry);
        }
    }
    tree
}

fn under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

fn remove_all(tree: &mut Tree, path: &str) {
    tree.retain(|p, _| p != path && !under(p, path));
}

fn apply_entry(tree: &mut Tree, lower: &Tree, entry: &Entry) {
    let path = entry.path.clone();
    let xattrs: BTreeMap<String, Vec<u8>> = entry.xattrs.iter().cloned().collect();
    let base = Expected {
        kind: "file",
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        content: None,
        mtime: None,
        target: None,
        xattrs,
    };
    let new = match &entry.node {
        Node::Whiteout => {
            remove_all(tree, &path);
            return;
        }
        Node::Opaque => {
            // Only what the lower layers held under it.
            tree.retain(|p, _| !(under(p, &path) && lower.contains_key(p)));
            return;
        }
        Node::File(content) => Expected {
            content: Some(sha256(content)),
            mtime: Some(MTIME as i64),
            ..base
        },
        Node::Dir => Expected {
            kind: "dir",
            ..base
        },
        Node::Symlink(target) => Expected {
            kind: "symlink",
            mode: 0o777,
            target: Some(target.clone()),
            ..base
        },
        Node::HardLink(target) => tree[target].clone(),
    };
    match tree.get(&path) {
        Some(old) if old.kind == "dir" && new.kind == "dir" => {}
        Some(_) => remove_all(tree, &path),
        None => {}
    }
    tree.insert(path, new);
}

/// The image the tests import: four layers (one of them empty) with changed, deleted and
/// opaque-replaced paths, symlinks, a hard link, modes (setuid and sticky too), owners other
/// than root and `user.` extended attributes.
pub(super) fn test_image() -> Image {
    let base = vec![
        dir("bin", 0o755),
        file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
        hard_link("bin/tool-link", "bin/tool"),
        symlink("bin/sh", "tool"),
        dir("etc", 0o755),
        file("etc/hostname", b"plinth\n", 0o644),
        file("etc/config", b"secret=1\n", 0o600).owner(1000, 1000),
        symlink("etc/abs", "/etc/hostname"),
        file("etc/xattr", b"with attributes\n", 0o644).xattr("user.plinth", b"value"),
        dir("var", 0o755),
        dir("var/cache", 0o700).owner(33, 33),
        file("var/cache/a", b"a\n", 0o644).owner(33, 33),
        dir("var/cache/sub", 0o755),
        file("var/cache/sub/c", b"c\n", 0o644),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        file("usr/bin/setuid", b"setuid\n", 0o4755),
        dir("data", 0o755),
        file("data/old", b"to be deleted\n", 0o644),
        file("data/keep", b"a file, later a directory\n", 0o644),
        dir("opt", 0o755),
        dir("opt/gone", 0o755),
        file("opt/gone/x", b"x\n", 0o644),
    ];
    let changes = vec![
        file("etc/hostname", b"plinth-2\n", 0o640).owner(0, 4),
        whiteout("data/old"),
        dir("var/cache", 0o750).owner(33, 33),
        opaque("var/cache"),
        file("var/cache/new", b"only this\n", 0o600).owner(33, 33),
        symlink("data/link", "../etc/hostname"),
    ];
    let empty = Vec::new();
    let last = vec![
        whiteout("opt/gone"),
        file("opt/new", b"new\n", 0o444)
            .owner(65534, 65534)
            .xattr("user.other", b"2"),
        dir("data/keep", 0o711).owner(7, 8),
        file("data/keep/inside", b"inside\n", 0o644),
    ];
    Image::new(vec![base, changes, empty, last])
}

/// An image whose layers try to write outside the directory they are applied to: an
/// absolute symlink to `outside` and a file written through it, a relative symlink climbing
/// out, `..` names. Every name is contained: it lands inside the snapshot.
pub(super) fn hostile_image(outside: &Path) -> Image {
    let outside = outside.display().to_string();
    let first = vec![
        symlink("escape", &outside),
        symlink("climb", "../../../../../../../../.."),
    ];
    let relative_outside = outside.trim_start_matches('/');
    let second = vec![
        file(
            "escape/through-absolute",
            b"through an absolute symlink\n",
            0o644,
        ),
        file(
            &format!("climb/{relative_outside}/through-relative"),
            b"through a relative symlink\n",
            0o644,
        ),
        file("../../../dotdot", b"a name with ..\n", 0o644),
        file(
            &format!("../../../../../../../../..{outside}/dotdot-abs"),
            b"a name with .. to the outside\n",
            0o644,
        ),
    ];
    Image::new(vec![first, second])
}
