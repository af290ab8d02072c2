//! Tests of the layer applier: layers built here (hostile ones with raw header bytes), applied
//! to temporary directories, and the whole tree compared as text. Tests that need root (to
//! set owners, create devices, set `trusted.*` attributes) say so and fail without it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use plinth_core::Category;
use sha2::Digest as _;
use tar::EntryType;

use super::*;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MTIME: u64 = 1_600_000_000;

/// Fails (never skips) a test that needs root.
fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (owners, device nodes, trusted.* attributes): run it as root"
    );
}

/// A layer being built: a tar stream written entry by entry, with raw names.
struct Layer {
    bytes: Vec<u8>,
}

/// One entry's header fields beyond name and type.
#[derive(Clone)]
struct Fields<'a> {
    mode: u32,
    owner: (u64, u64),
    link: &'a [u8],
    data: &'a [u8],
    pax: Vec<(&'a str, &'a [u8])>,
    device: (u32, u32),
    mtime: u64,
}

impl Default for Fields<'_> {
    fn default() -> Self {
        Fields {
            mode: 0o644,
            owner: (0, 0),
            link: b"",
            data: b"",
            pax: Vec::new(),
            device: (0, 0),
            mtime: MTIME,
        }
    }
}

/// A PAX extended header's records.
fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let base = key.len() + value.len() + 3;
        let mut len = base + 1;
        while len != base + len.to_string().len() {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

impl Layer {
    fn new() -> Self {
        Layer { bytes: Vec::new() }
    }

    fn header(&mut self, header: &tar::Header, data: &[u8]) {
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0, pad));
    }

    /// An entry with a raw name (no checks: `..`, absolute, anything); names and link names
    /// over 100 bytes go into PAX records.
    fn raw(&mut self, name: &[u8], kind: EntryType, fields: Fields<'_>) -> &mut Self {
        let mut pax = fields.pax.clone();
        let mut header = tar::Header::new_ustar();
        if name.len() <= 100 {
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
        } else {
            header.as_old_mut().name[..9].copy_from_slice(b"long-name");
            pax.push(("path", name));
        }
        if fields.link.len() <= 100 {
            header.as_old_mut().linkname[..fields.link.len()].copy_from_slice(fields.link);
        } else {
            pax.push(("linkpath", fields.link));
        }
        header.set_mode(fields.mode);
        header.set_uid(fields.owner.0);
        header.set_gid(fields.owner.1);
        header.set_mtime(fields.mtime);
        header.set_size(fields.data.len() as u64);
        header.set_entry_type(kind);
        header.set_device_major(fields.device.0).unwrap();
        header.set_device_minor(fields.device.1).unwrap();
        header.set_cksum();
        if !pax.is_empty() {
            self.pax(&pax);
        }
        self.header(&header, fields.data);
        self
    }

    /// A PAX extended header (for the entry that follows) holding `records`.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let records = pax_records(records);
        let mut pax_header = tar::Header::new_ustar();
        pax_header.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        pax_header.set_size(records.len() as u64);
        pax_header.set_entry_type(EntryType::XHeader);
        pax_header.set_mode(0o644);
        pax_header.set_cksum();
        self.header(&pax_header, &records);
        self
    }

    /// An entry whose name goes into a GNU long-name record.
    fn gnu_long(&mut self, name: &[u8], kind: EntryType, fields: Fields<'_>) -> &mut Self {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        let mut data = name.to_vec();
        data.push(0);
        long.set_size(data.len() as u64);
        long.set_entry_type(EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_cksum();
        self.header(&long, &data);
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..100].copy_from_slice(&name[..100]);
        header.set_mode(fields.mode);
        header.set_uid(fields.owner.0);
        header.set_gid(fields.owner.1);
        header.set_mtime(fields.mtime);
        header.set_size(fields.data.len() as u64);
        header.set_entry_type(kind);
        header.set_cksum();
        self.header(&header, fields.data);
        self
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Regular,
            Fields {
                data: data.as_bytes(),
                ..Fields::default()
            },
        )
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Directory,
            Fields {
                mode: 0o755,
                ..Fields::default()
            },
        )
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            Fields {
                mode: 0o777,
                link: target.as_bytes(),
                ..Fields::default()
            },
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            Fields {
                link: target.as_bytes(),
                ..Fields::default()
            },
        )
    }

    /// The stream, with its two end-of-archive blocks and a bit of padding after them.
    fn tar(&self) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        bytes.extend(std::iter::repeat_n(0, 512 * 4));
        bytes
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::from_hasher(sha2::Sha256::new_with_prefix(bytes))
}

/// A temporary directory holding `root` (applied to) and `outside` (sentinels that no layer
/// may touch: a file, a directory with a file, a symlink).
struct Place {
    dir: tempfile::TempDir,
}

impl Place {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        std::fs::write(outside.join("dir/x"), "outside x").unwrap();
        std::os::unix::fs::symlink("secret", outside.join("link")).unwrap();
        Place { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The absolute path of `outside`, as an absolute symlink would name it.
    fn outside(&self) -> String {
        self.dir
            .path()
            .join("outside")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Everything in the temporary directory except `root`, with times.
    fn around(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let meta = std::fs::symlink_metadata(self.dir.path()).unwrap();
        map.insert(
            ".".into(),
            format!("{:o} {}", meta.mode(), meta.mtime_nsec()),
        );
        walk(self.dir.path(), self.dir.path(), &mut |relative, line| {
            if relative != "root" {
                map.insert(relative.to_string(), line);
            }
        });
        map
    }

    /// The tree under `root` as text; the absolute path of `outside` shows as `$OUT`.
    fn render(&self) -> String {
        render(&self.root()).replace(self.outside().trim_start_matches('/'), "$OUT")
    }
}

/// Visits everything under `dir` (not following symlinks, not entering `root` of a place
/// when `base` is its parent), with a line describing it including times and inode.
fn walk(base: &Path, dir: &Path, visit: &mut dyn FnMut(&str, String)) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let relative = path
            .strip_prefix(base)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let content = if meta.file_type().is_file() {
            String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(&path).unwrap().display().to_string()
        } else {
            String::new()
        };
        visit(
            &relative,
            format!(
                "{:o} {}:{} {} links {} m {}.{} c {}.{} {content:?}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.ino(),
                meta.nlink(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec()
            ),
        );
        if meta.is_dir() && relative != "root" {
            walk(base, &path, visit);
        }
    }
}

/// The extended attributes of `path` (not followed), as `{k=v,…}`, or nothing.
fn xattrs(path: &Path) -> String {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut list: Vec<String> = names[..n]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 4096];
            let len = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]).unwrap();
            let value = &value[..len];
            let value = if value.iter().all(|b| b.is_ascii_graphic()) {
                String::from_utf8_lossy(value).into_owned()
            } else {
                value
                    .iter()
                    .fold("0x".to_string(), |hex, b| hex + &format!("{b:02x}"))
            };
            format!("{}={value}", String::from_utf8_lossy(name))
        })
        .filter(|entry| !entry.starts_with("security.selinux"))
        .collect();
    list.sort();
    if list.is_empty() {
        String::new()
    } else {
        format!(" {{{}}}", list.join(","))
    }
}

/// The tree under `root`, one line per entry: type, mode, owner, path, and what the type
/// has (content, link target, device numbers); hard links as `=first path` of the inode.
fn render(root: &Path) -> String {
    let mut lines = Vec::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    render_dir(root, root, &mut lines, &mut inodes);
    lines.join("\n")
}

fn render_dir(
    root: &Path,
    dir: &Path,
    lines: &mut Vec<String>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        let owner = format!("{}:{}", meta.uid(), meta.gid());
        let x = xattrs(&path);
        let line = if kind.is_dir() {
            format!("d {mode:o} {owner} {relative}/{x}")
        } else if kind.is_symlink() {
            format!(
                "l {owner} {relative} -> {}{x}",
                std::fs::read_link(&path).unwrap().display()
            )
        } else if kind.is_file() {
            let content = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            let link = if meta.nlink() > 1 {
                match inodes.get(&meta.ino()) {
                    Some(first) => format!(" ={first}"),
                    None => {
                        inodes.insert(meta.ino(), relative.clone());
                        String::new()
                    }
                }
            } else {
                String::new()
            };
            format!("f {mode:o} {owner} {relative} {content:?}{link}{x}")
        } else if kind.is_char_device() || kind.is_block_device() {
            let rdev = meta.rdev();
            format!(
                "{} {mode:o} {owner} {relative} {},{}{x}",
                if kind.is_char_device() { 'c' } else { 'b' },
                rustix::fs::major(rdev),
                rustix::fs::minor(rdev)
            )
        } else if kind.is_fifo() {
            format!("p {mode:o} {owner} {relative}{x}")
        } else {
            format!("? {relative}")
        };
        lines.push(line);
        if kind.is_dir() {
            render_dir(root, &path, lines, inodes);
        }
    }
}

fn native() -> ApplyOptions {
    ApplyOptions::default()
}

fn overlay() -> ApplyOptions {
    ApplyOptions {
        whiteouts: Whiteouts::Overlay,
        ..ApplyOptions::default()
    }
}

const RESOLVERS: [Resolver; 2] = [Resolver::Auto, Resolver::Walk];

/// Applies plain tar layers in order with one resolver; the first error.
fn apply_layers(
    root: &Path,
    layers: &[Vec<u8>],
    options: &ApplyOptions,
    resolver: Resolver,
) -> Result<(), Error> {
    for layer in layers {
        apply_with(&layer[..], TAR, root, options, resolver)?;
    }
    Ok(())
}

/// Asserts `text` equals `expected`, with each line of `expected` trimmed of indentation.
#[track_caller]
fn assert_tree(text: &str, expected: &str) {
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(text, expected.join("\n"), "\n--- got:\n{text}\n");
}

#[test]
fn media_types_choose_the_decompression_and_unknown_ones_are_refused() {
    let table = [
        (TAR, Some(Compression::Uncompressed)),
        (GZIP, Some(Compression::Gzip)),
        (ZSTD, Some(Compression::Zstd)),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            Some(Compression::Uncompressed),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Some(Compression::Gzip),
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            Some(Compression::Zstd),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(Compression::Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Some(Compression::Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.zstd",
            Some(Compression::Zstd),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar",
            Some(Compression::Detect),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            None,
        ),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
        ("application/vnd.oci.image.manifest.v1+json", None),
        ("", None),
    ];
    for (media_type, expected) in table {
        match (compression_of(media_type), expected) {
            (Ok(got), Some(expected)) => assert_eq!(got, expected, "{media_type}"),
            (Err(error), None) => {
                assert_eq!(error.category, Category::Unimplemented, "{media_type}");
                assert!(
                    error.message.contains(&format!("{media_type:?}")),
                    "{}",
                    error.message
                );
            }
            (got, expected) => panic!("{media_type}: got {got:?}, expected {expected:?}"),
        }
    }
    let place = Place::new();
    let error = apply(&b""[..], "text/plain", &place.root(), &native()).unwrap_err();
    assert_eq!(error.category, Category::Unimplemented);
    assert!(
        error.message.contains("\"text/plain\""),
        "{}",
        error.message
    );
}

/// Every kind of entry, modes, owners and attributes, with both resolvers.
#[test]
fn entries_of_every_kind_are_written_exactly() {
    require_root();
    let mut layer = Layer::new();
    layer
        .dir("etc/")
        .file("etc/hostname", "box\n")
        .raw(
            b"bin/",
            EntryType::Directory,
            Fields {
                mode: 0o750,
                owner: (0, 10),
                ..Fields::default()
            },
        )
        .raw(
            b"bin/su",
            EntryType::Regular,
            Fields {
                mode: 0o4755,
                data: b"su",
                pax: vec![
                    ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
                    ("SCHILY.xattr.user.origin", b"layer"),
                ],
                ..Fields::default()
            },
        )
        .raw(
            b"tmp/",
            EntryType::Directory,
            Fields {
                mode: 0o1777,
                ..Fields::default()
            },
        )
        .raw(
            b"home/user/",
            EntryType::Directory,
            Fields {
                mode: 0o700,
                owner: (1000, 1000),
                pax: vec![("SCHILY.xattr.trusted.note", b"kept")],
                ..Fields::default()
            },
        )
        .raw(
            b"home/user/setgid",
            EntryType::Regular,
            Fields {
                mode: 0o2711,
                owner: (1000, 100),
                data: b"g",
                ..Fields::default()
            },
        )
        .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
        .symlink("bin/sh", "busybox")
        .hardlink("bin/su-again", "bin/su")
        .hardlink("./bin/su-third", "/bin/su")
        .raw(
            b"dev/null",
            EntryType::Char,
            Fields {
                mode: 0o666,
                device: (1, 3),
                ..Fields::default()
            },
        )
        .raw(
            b"dev/sda",
            EntryType::Block,
            Fields {
                mode: 0o660,
                owner: (0, 6),
                device: (8, 0),
                ..Fields::default()
            },
        )
        .raw(
            b"run/fifo",
            EntryType::Fifo,
            Fields {
                mode: 0o620,
                ..Fields::default()
            },
        );
    for resolver in RESOLVERS {
        let place = Place::new();
        let applied =
            apply_with(&layer.tar()[..], TAR, &place.root(), &native(), resolver).unwrap();
        assert_eq!(applied.entries, 14);
        assert_eq!(applied.skipped_devices, 0);
        assert_tree(
            &place.render(),
            r#"
            d 750 0:10 bin/
            l 0:0 bin/sh -> busybox
            f 4755 0:0 bin/su "su" {security.capability=0x0100000200200000000000000000000000000000,user.origin=layer}
            f 4755 0:0 bin/su-again "su" =bin/su {security.capability=0x0100000200200000000000000000000000000000,user.origin=layer}
            f 4755 0:0 bin/su-third "su" =bin/su {security.capability=0x0100000200200000000000000000000000000000,user.origin=layer}
            d 755 0:0 dev/
            c 666 0:0 dev/null 1,3
            b 660 0:6 dev/sda 8,0
            d 755 0:0 etc/
            f 644 0:0 etc/hostname "box\n"
            l 0:0 etc/localtime -> /usr/share/zoneinfo/UTC
            d 755 0:0 home/
            d 700 1000:1000 home/user/ {trusted.note=kept}
            f 2711 1000:100 home/user/setgid "g"
            d 755 0:0 run/
            p 620 0:0 run/fifo
            d 1777 0:0 tmp/
            "#,
        );
    }
}

#[test]
fn times_are_set_and_directories_get_theirs_after_their_contents() {
    let mut layer = Layer::new();
    layer
        .raw(
            b"d/",
            EntryType::Directory,
            Fields {
                mode: 0o755,
                mtime: 1_000,
                ..Fields::default()
            },
        )
        .raw(
            b"d/f",
            EntryType::Regular,
            Fields {
                data: b"x",
                mtime: 2_000,
                // A later atime is kept, with its fraction; mtime from PAX wins over the
                // header's.
                pax: vec![("atime", b"3000.25"), ("mtime", b"2500.5")],
                ..Fields::default()
            },
        )
        .raw(
            b"d/old",
            EntryType::Regular,
            Fields {
                mtime: 4_000,
                // An earlier atime becomes the mtime (containerd's rule).
                pax: vec![("atime", b"10")],
                ..Fields::default()
            },
        )
        .raw(
            b"d/link",
            EntryType::Symlink,
            Fields {
                link: b"f",
                mtime: 5_000,
                ..Fields::default()
            },
        )
        .raw(
            b"d/sub/deep",
            EntryType::Regular,
            Fields {
                mtime: 6_000,
                ..Fields::default()
            },
        );
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_with(&layer.tar()[..], TAR, &place.root(), &native(), resolver).unwrap();
        let times = |path: &str| {
            let meta = std::fs::symlink_metadata(place.root().join(path)).unwrap();
            (
                meta.mtime(),
                meta.mtime_nsec(),
                meta.atime(),
                meta.atime_nsec(),
            )
        };
        assert_eq!(times("d"), (1_000, 0, 1_000, 0));
        assert_eq!(times("d/f"), (2_500, 500_000_000, 3_000, 250_000_000));
        assert_eq!(times("d/old"), (4_000, 0, 4_000, 0));
        assert_eq!(times("d/link"), (5_000, 0, 5_000, 0));
        assert_eq!(times("d/sub/deep").0, 6_000);
    }
}

#[test]
fn pax_times_parse_like_go() {
    let table: [(&str, Option<(i64, i64)>); 11] = [
        ("12", Some((12, 0))),
        // Go's strconv.ParseInt takes one sign, either.
        ("+12", Some((12, 0))),
        ("-+12", None),
        ("+-12", None),
        ("12.5", Some((12, 500_000_000))),
        ("12.123456789999", Some((12, 123_456_789))),
        ("-1.5", Some((-2, 500_000_000))),
        ("-3", Some((-3, 0))),
        ("", None),
        ("1e3", None),
        ("1.-5", None),
    ];
    for (text, expected) in table {
        let got = pax_time(text.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(got, expected, "{text:?}");
    }
}

#[test]
fn long_names_from_gnu_and_pax_records() {
    let deep = format!("{}/file", ["segment-of-a-long-path"; 8].join("/"));
    let gnu = format!("{}/gnu", ["gnu-directory-name"; 7].join("/"));
    let long_target = format!("/{}", "t".repeat(150));
    let mut layer = Layer::new();
    layer
        .file(&deep, "pax")
        .gnu_long(
            gnu.as_bytes(),
            EntryType::Regular,
            Fields {
                data: b"gnu",
                ..Fields::default()
            },
        )
        .symlink("long-link", &long_target)
        .hardlink("hard", &deep);
    let place = Place::new();
    apply(&layer.tar()[..], TAR, &place.root(), &native()).unwrap();
    let root = place.root();
    assert_eq!(std::fs::read_to_string(root.join(&deep)).unwrap(), "pax");
    assert_eq!(std::fs::read_to_string(root.join(&gnu)).unwrap(), "gnu");
    assert_eq!(
        std::fs::read_link(root.join("long-link")).unwrap(),
        Path::new(&long_target)
    );
    assert_eq!(
        std::fs::metadata(root.join("hard")).unwrap().ino(),
        std::fs::metadata(root.join(&deep)).unwrap().ino()
    );
}

/// An entry named by both a PAX `path` record and a GNU long-name record takes the GNU name,
/// as Go's archive/tar (containerd's reader) does.
#[test]
fn a_gnu_long_name_wins_over_a_pax_path() {
    let gnu = format!("{}/gnu", ["gnu-directory-name"; 7].join("/"));
    let mut layer = Layer::new();
    layer.pax(&[("path", b"pax-name")]).gnu_long(
        gnu.as_bytes(),
        EntryType::Regular,
        Fields {
            data: b"gnu",
            ..Fields::default()
        },
    );
    let place = Place::new();
    apply(&layer.tar()[..], TAR, &place.root(), &native()).unwrap();
    assert_eq!(
        std::fs::read_to_string(place.root().join(&gnu)).unwrap(),
        "gnu"
    );
    assert!(!place.root().join("pax-name").exists());
}

/// Likewise for a link: a GNU long-link record wins over a PAX `linkpath`.
#[test]
fn a_gnu_long_link_wins_over_a_pax_linkpath() {
    let target = format!("/{}", "g".repeat(150));
    let mut long = tar::Header::new_gnu();
    long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    let mut data = target.as_bytes().to_vec();
    data.push(0);
    long.set_size(data.len() as u64);
    long.set_entry_type(EntryType::GNULongLink);
    long.set_mode(0o644);
    long.set_cksum();
    let mut layer = Layer::new();
    layer.pax(&[("linkpath", b"pax-target")]);
    layer.header(&long, &data);
    layer.raw(
        b"link",
        EntryType::Symlink,
        Fields {
            mode: 0o777,
            link: &target.as_bytes()[..100],
            ..Fields::default()
        },
    );
    let place = Place::new();
    apply(&layer.tar()[..], TAR, &place.root(), &native()).unwrap();
    assert_eq!(
        std::fs::read_link(place.root().join("link")).unwrap(),
        Path::new(&target)
    );
}

/// containerd's rules: an existing directory merges with a directory entry; anything else
/// is removed first, and nothing is written through an existing link.
#[test]
fn entries_replace_what_the_lower_layers_hold() {
    require_root();
    let mut lower = Layer::new();
    lower
        .dir("dir-to-file/")
        .file("dir-to-file/inner", "lower")
        .file("file-to-dir", "lower")
        .dir("merged/")
        .file("merged/kept", "lower")
        .symlink("link-to-file", "../outside-target")
        .file("outside-target", "target")
        .file("linked", "lower")
        .hardlink("linked-twin", "linked")
        .symlink("dir-link", "merged");
    let mut upper = Layer::new();
    upper
        .file("dir-to-file", "now a file")
        .dir("file-to-dir/")
        .file("file-to-dir/inner", "upper")
        .raw(
            b"merged/",
            EntryType::Directory,
            Fields {
                mode: 0o700,
                owner: (7, 7),
                ..Fields::default()
            },
        )
        .file("merged/new", "upper")
        .file("link-to-file", "replaced the link")
        .file("linked", "upper")
        .dir("dir-link/");
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_layers(
            &place.root(),
            &[lower.tar(), upper.tar()],
            &native(),
            resolver,
        )
        .unwrap();
        assert_tree(
            &place.render(),
            r#"
            d 755 0:0 dir-link/
            f 644 0:0 dir-to-file "now a file"
            d 755 0:0 file-to-dir/
            f 644 0:0 file-to-dir/inner "upper"
            f 644 0:0 link-to-file "replaced the link"
            f 644 0:0 linked "upper"
            f 644 0:0 linked-twin "lower"
            d 700 7:7 merged/
            f 644 0:0 merged/kept "lower"
            f 644 0:0 merged/new "upper"
            f 644 0:0 outside-target "target"
            "#,
        );
    }
}

/// Found by the property test (`differ/roundtrip_tests.rs`): a directory entry over an
/// existing directory set the attributes it carries but kept those it no longer carries, so a
/// layer could not remove an attribute from a directory in the native form.
#[test]
fn a_directory_entry_over_an_existing_directory_drops_the_attributes_it_does_not_carry() {
    require_root();
    let mut lower = Layer::new();
    lower.raw(
        b"dir/",
        EntryType::Directory,
        Fields {
            mode: 0o755,
            pax: vec![
                ("SCHILY.xattr.user.gone", b"1"),
                ("SCHILY.xattr.user.kept", b"old"),
            ],
            ..Fields::default()
        },
    );
    let mut upper = Layer::new();
    upper.raw(
        b"dir/",
        EntryType::Directory,
        Fields {
            mode: 0o755,
            pax: vec![("SCHILY.xattr.user.kept", b"new")],
            ..Fields::default()
        },
    );
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_layers(
            &place.root(),
            &[lower.tar(), upper.tar()],
            &native(),
            resolver,
        )
        .unwrap();
        assert_tree(&place.render(), "d 755 0:0 dir/ {user.kept=new}");
    }
}

/// Found by the property test (`differ/roundtrip_tests.rs`): a PAX value may hold any byte.
/// The tar crate's reader splits records at newlines (tar-rs issue #428), so a value with one
/// (a binary `security.capability` granting capabilities 1 and 3 holds 0x0a) failed the
/// apply, and the records after it (Go writes them sorted: `SCHILY.xattr.*` before `path`
/// and `uid`) were silently lost: a truncated name, owner 0.
#[test]
fn pax_values_may_hold_newlines_and_the_records_after_them_still_count() {
    require_root();
    let capability: &[u8] =
        b"\x01\x00\x00\x02\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let name = format!("dir/{}", "n".repeat(120));
    let mut layer = Layer::new();
    layer.dir("dir/").raw(
        name.as_bytes(),
        EntryType::Regular,
        Fields {
            mode: 0o755,
            data: b"x",
            pax: vec![
                ("SCHILY.xattr.security.capability", capability),
                ("SCHILY.xattr.user.note", b"one\ntwo"),
                ("uid", b"3000000"),
            ],
            ..Fields::default()
        },
    );
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_layers(&place.root(), &[layer.tar()], &native(), resolver).unwrap();
        assert_tree(
            &place.render(),
            &format!(
                "d 755 0:0 dir/\n\
                 f 755 3000000:0 {name} \"x\" \
                 {{security.capability=0x010000020a000000000000000000000000000000,user.note=0x6f6e650a74776f}}"
            ),
        );
    }
}

#[test]
fn native_whiteouts_delete_from_the_lower_layers_only() {
    let mut lower = Layer::new();
    lower
        .file("gone", "lower")
        .dir("gone-dir/")
        .file("gone-dir/inner", "lower")
        .file("kept", "lower")
        .dir("opaque/")
        .file("opaque/lower-file", "lower")
        .dir("opaque/lower-dir/")
        .file("opaque/lower-dir/inner", "lower")
        .dir("opaque/merged/")
        .file("opaque/merged/lower", "lower")
        .symlink("opaque/link", "/kept")
        .file("replaced", "lower");
    let mut upper = Layer::new();
    upper
        .file(".wh.gone", "")
        .file(".wh.gone-dir", "")
        // Written before the opaque marker: survives it.
        .file("opaque/early", "upper")
        .dir("opaque/merged/")
        .file("opaque/merged/upper", "upper")
        .file("opaque/.wh..wh..opq", "")
        // Written after it.
        .file("opaque/late", "upper")
        .file("replaced", "upper")
        // A whiteout of an entry of the same layer hides nothing (OCI spec).
        .file(".wh.replaced", "")
        // aufs metadata: ignored.
        .file(".wh..wh.plnk", "")
        // A whiteout of something that does not exist: nothing to do.
        .file("nowhere/.wh.nothing", "");
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_layers(
            &place.root(),
            &[lower.tar(), upper.tar()],
            &native(),
            resolver,
        )
        .unwrap();
        assert_tree(
            &place.render(),
            r#"
            f 644 0:0 kept "lower"
            d 755 0:0 nowhere/
            d 755 0:0 opaque/
            f 644 0:0 opaque/early "upper"
            f 644 0:0 opaque/late "upper"
            d 755 0:0 opaque/merged/
            f 644 0:0 opaque/merged/upper "upper"
            f 644 0:0 replaced "upper"
            "#,
        );
    }
}

#[test]
fn native_opaque_marker_before_its_entries_and_directories_leading_to_them_survive() {
    let mut lower = Layer::new();
    lower
        .file("o/a", "lower")
        .file("o/deep/er/lower", "lower")
        .file("o/deep/other", "lower");
    let mut upper = Layer::new();
    upper
        .file("o/deep/er/upper", "upper")
        .file("o/.wh..wh..opq", "")
        .file("o/b", "upper");
    let place = Place::new();
    apply_layers(
        &place.root(),
        &[lower.tar(), upper.tar()],
        &native(),
        Resolver::Auto,
    )
    .unwrap();
    assert_tree(
        &place.render(),
        r#"
        d 755 0:0 o/
        f 644 0:0 o/b "upper"
        d 755 0:0 o/deep/
        d 755 0:0 o/deep/er/
        f 644 0:0 o/deep/er/upper "upper"
        "#,
    );
}

/// The overlay form, exactly: devices for deletions, the opaque attribute, no `.wh.` file.
#[test]
fn overlay_whiteouts_become_devices_and_the_opaque_attribute() {
    require_root();
    let mut layer = Layer::new();
    layer
        .raw(
            b".wh.deleted",
            EntryType::Regular,
            Fields {
                owner: (5, 6),
                ..Fields::default()
            },
        )
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", "")
        .file("opaque/new", "upper")
        .file("implicit/.wh..wh..opq", "")
        .file("sub/.wh.gone", "")
        // A whiteout, then a directory of that name: opaque, or the lower one would show.
        .file(".wh.recreated", "")
        .dir("recreated/")
        .file("recreated/inner", "upper")
        // A whiteout, then a file of that name: the file.
        .file(".wh.refiled", "")
        .file("refiled", "upper")
        // A whiteout of an entry of the same layer: the entry stays.
        .file("same-layer", "upper")
        .file(".wh.same-layer", "")
        .file(".wh..wh.aufs", "")
        // overlayfs's own attributes from a layer are dropped.
        .raw(
            b"redirect/",
            EntryType::Directory,
            Fields {
                mode: 0o755,
                pax: vec![
                    ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                    ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ],
                ..Fields::default()
            },
        );
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_with(&layer.tar()[..], TAR, &place.root(), &overlay(), resolver).unwrap();
        assert_tree(
            &place.render(),
            r#"
            c 0 5:6 deleted 0,0
            d 755 0:0 implicit/ {trusted.overlay.opaque=y}
            d 755 0:0 opaque/ {trusted.overlay.opaque=y}
            f 644 0:0 opaque/new "upper"
            d 755 0:0 recreated/ {trusted.overlay.opaque=y}
            f 644 0:0 recreated/inner "upper"
            d 755 0:0 redirect/
            f 644 0:0 refiled "upper"
            f 644 0:0 same-layer "upper"
            d 755 0:0 sub/
            c 0 0:0 sub/gone 0,0
            "#,
        );
    }
}

/// In the overlay form a directory the layer names only as a parent is created over the
/// lower one it hides with that directory's mode, owner and attributes (the merged view keeps
/// them); a whiteout or an opaque directory in a higher lower hides the ones below it; a path
/// no lower has gets 0755; the lowers are never written.
#[test]
fn overlay_parents_take_the_lower_directorys_attributes() {
    require_root();
    use std::os::unix::fs::chown;
    let lowers = tempfile::tempdir().unwrap();
    let (top, bottom) = (lowers.path().join("top"), lowers.path().join("bottom"));
    for dir in [
        "top/etc",
        "bottom/etc",
        "bottom/opt/deep",
        "bottom/gone",
        "top/opq",
        "bottom/opq/inner",
    ] {
        std::fs::create_dir_all(lowers.path().join(dir)).unwrap();
    }
    let set = |path: &Path, mode: u32, owner: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        chown(path, Some(owner), Some(owner + 1)).unwrap();
    };
    set(&top.join("etc"), 0o750, 7);
    rustix::fs::setxattr(
        top.join("etc"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        top.join("etc"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    set(&bottom.join("etc"), 0o700, 9);
    set(&bottom.join("opt"), 0o1775, 3);
    set(&bottom.join("opt/deep"), 0o711, 4);
    set(&bottom.join("gone"), 0o700, 5);
    set(&bottom.join("opq/inner"), 0o700, 6);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        top.join("gone"),
        FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    rustix::fs::setxattr(
        top.join("opq"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let before = render(lowers.path());
    let mut layer = Layer::new();
    layer
        .file("etc/new", "x")
        .file("opt/deep/new", "x")
        .file("gone/new", "x")
        .file("opq/inner/new", "x")
        .file("fresh/new", "x");
    let options = ApplyOptions {
        lower_dirs: vec![top.clone(), bottom.clone()],
        ..overlay()
    };
    for resolver in RESOLVERS {
        let place = Place::new();
        apply_with(&layer.tar()[..], TAR, &place.root(), &options, resolver).unwrap();
        assert_tree(
            &place.render(),
            r#"
            d 750 7:8 etc/ {user.k=v}
            f 644 0:0 etc/new "x"
            d 755 0:0 fresh/
            f 644 0:0 fresh/new "x"
            d 755 0:0 gone/
            f 644 0:0 gone/new "x"
            d 755 0:0 opq/
            d 755 0:0 opq/inner/
            f 644 0:0 opq/inner/new "x"
            d 1775 3:4 opt/
            d 711 4:5 opt/deep/
            f 644 0:0 opt/deep/new "x"
            "#,
        );
    }
    assert_eq!(render(lowers.path()), before, "the lowers are only read");
}

/// Layer after layer on the native form gives what overlayfs shows of the overlay form: the
/// same layers, both ways.
#[test]
fn native_layers_in_sequence_build_the_image_tree() {
    let mut base = Layer::new();
    base.dir("etc/")
        .file("etc/passwd", "root")
        .file("etc/motd", "hello")
        .dir("var/cache/")
        .file("var/cache/a", "a")
        .file("var/cache/b", "b")
        .symlink("bin", "usr/bin")
        .file("usr/bin/tool", "v1");
    let mut second = Layer::new();
    second
        .file("etc/.wh.motd", "")
        .file("var/cache/.wh..wh..opq", "")
        .file("var/cache/c", "c")
        .file("bin/tool", "v2")
        .file("bin/extra", "new");
    let mut third = Layer::new();
    third.file(".wh.var", "").file("etc/passwd", "root,user");
    let place = Place::new();
    apply_layers(
        &place.root(),
        &[base.tar(), second.tar(), third.tar()],
        &native(),
        Resolver::Auto,
    )
    .unwrap();
    assert_tree(
        &place.render(),
        r#"
        l 0:0 bin -> usr/bin
        d 755 0:0 etc/
        f 644 0:0 etc/passwd "root,user"
        d 755 0:0 usr/
        d 755 0:0 usr/bin/
        f 644 0:0 usr/bin/extra "new"
        f 644 0:0 usr/bin/tool "v2"
        "#,
    );
}

#[test]
fn gzip_zstd_and_plain_give_the_same_tree_digest_and_diff_id() {
    let mut layer = Layer::new();
    layer.dir("a/").file("a/b", "content").symlink("c", "a/b");
    let tar = layer.tar();
    let diff_id = sha256(&tar);
    let docker = "application/vnd.docker.image.rootfs.diff.tar";
    let table: Vec<(&str, Vec<u8>)> = vec![
        (TAR, tar.clone()),
        (GZIP, gzip(&tar)),
        (ZSTD, zstd(&tar)),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            gzip(&tar),
        ),
        (docker, tar.clone()),
        (docker, gzip(&tar)),
        (docker, zstd(&tar)),
        // Concatenated gzip members are one stream.
        (GZIP, {
            let (first, second) = tar.split_at(1024);
            [gzip(first), gzip(second)].concat()
        }),
    ];
    for (media_type, blob) in table {
        let place = Place::new();
        let options = ApplyOptions {
            expected_digest: Some(sha256(&blob)),
            expected_diff_id: Some(diff_id.clone()),
            ..native()
        };
        let applied = apply(&blob[..], media_type, &place.root(), &options).unwrap();
        assert_eq!(
            applied,
            Applied {
                digest: sha256(&blob),
                size: blob.len() as u64,
                diff_id: diff_id.clone(),
                uncompressed_size: tar.len() as u64,
                entries: 3,
                skipped_devices: 0,
            },
            "{media_type}"
        );
        assert_tree(
            &place.render(),
            r#"
            d 755 0:0 a/
            f 644 0:0 a/b "content"
            l 0:0 c -> a/b
            "#,
        );
    }
}

#[test]
fn a_digest_or_diff_id_other_than_expected_is_an_error_naming_both() {
    let mut layer = Layer::new();
    layer.file("f", "x");
    let tar = layer.tar();
    let blob = gzip(&tar);
    let wrong = sha256(b"something else");
    let place = Place::new();
    let error = apply(
        &blob[..],
        GZIP,
        &place.root(),
        &ApplyOptions {
            expected_digest: Some(wrong.clone()),
            ..native()
        },
    )
    .unwrap_err();
    assert_eq!(error.category, Category::DataLoss);
    assert!(error.message.contains(wrong.as_str()), "{}", error.message);
    assert!(
        error.message.contains(sha256(&blob).as_str()),
        "{}",
        error.message
    );
    assert!(error.message.contains("discarded"), "{}", error.message);

    let error = apply(
        &blob[..],
        GZIP,
        &place.root(),
        &ApplyOptions {
            expected_digest: Some(sha256(&blob)),
            expected_diff_id: Some(wrong.clone()),
            ..native()
        },
    )
    .unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument);
    assert!(error.message.contains("diff id"), "{}", error.message);
    assert!(
        error.message.contains(sha256(&tar).as_str()),
        "{}",
        error.message
    );
}

#[test]
fn streams_that_are_not_layers_are_refused() {
    let mut layer = Layer::new();
    layer.file("f", "x");
    let tar = layer.tar();
    let blob = gzip(&tar);
    let table: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "garbage as tar",
            TAR,
            b"this is not a tar header at all".repeat(40),
        ),
        ("plain tar declared gzip", GZIP, tar.clone()),
        ("plain tar declared zstd", ZSTD, tar.clone()),
        ("truncated gzip", GZIP, blob[..blob.len() / 2].to_vec()),
        ("truncated tar", TAR, tar[..700].to_vec()),
    ];
    for (case, media_type, bytes) in table {
        let place = Place::new();
        let error = apply(&bytes[..], media_type, &place.root(), &native()).unwrap_err();
        assert_eq!(error.category, Category::InvalidArgument, "{case}: {error}");
        assert!(
            error.message.contains("not a valid tar stream"),
            "{case}: {error}"
        );
    }
}

#[test]
fn decompression_bombs_stop_at_the_configured_limits() {
    // A gzip stream that inflates a thousandfold.
    let zeros = vec![0u8; 4 << 20];
    let mut layer = Layer::new();
    layer.raw(
        b"bomb",
        EntryType::Regular,
        Fields {
            data: &zeros,
            ..Fields::default()
        },
    );
    let blob = gzip(&layer.tar());
    assert!(blob.len() < 64 << 10);
    let limits = Limits {
        max_uncompressed_size: 1 << 20,
        ..Limits::default()
    };
    let place = Place::new();
    let error = apply(
        &blob[..],
        GZIP,
        &place.root(),
        &ApplyOptions { limits, ..native() },
    )
    .unwrap_err();
    assert_eq!(error.category, Category::ResourceExhausted);
    assert!(
        error
            .message
            .contains("max_uncompressed_size (1048576 bytes)"),
        "{error}"
    );
    // The limit is on the whole stream: exactly at it passes.
    let tar = layer.tar();
    let exact = Limits {
        max_uncompressed_size: tar.len() as u64,
        ..Limits::default()
    };
    apply(
        &blob[..],
        GZIP,
        &Place::new().root(),
        &ApplyOptions {
            limits: exact,
            ..native()
        },
    )
    .unwrap();

    // Ten entries fit a limit of ten; the eleventh is one too many.
    let ten_entries = ApplyOptions {
        limits: Limits {
            max_entries: 10,
            ..Limits::default()
        },
        ..native()
    };
    let mut many = Layer::new();
    for i in 0..10 {
        many.file(&format!("f{i}"), "");
    }
    apply(&many.tar()[..], TAR, &Place::new().root(), &ten_entries).unwrap();
    many.file("f10", "");
    let error = apply(&many.tar()[..], TAR, &Place::new().root(), &ten_entries).unwrap_err();
    assert_eq!(error.category, Category::ResourceExhausted);
    assert!(error.message.contains("max_entries"), "{error}");

    // Metadata is held in memory: one entry may not carry more than 16 MiB of it.
    let huge = vec![b'a'; 17 << 20];
    let mut fat = Layer::new();
    fat.raw(
        b"fat",
        EntryType::Regular,
        Fields {
            pax: vec![("SCHILY.xattr.user.big", &huge)],
            ..Fields::default()
        },
    );
    let error = apply(&fat.tar()[..], TAR, &Place::new().root(), &native()).unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument);
    assert!(error.message.contains("metadata"), "{error}");
    // What counts is each entry's own metadata, wherever in the layer it starts: an entry
    // with an extended header after 9 MiB of file data applies.
    let mut late = Layer::new();
    late.file("data", &"d".repeat(9 << 20));
    late.raw(
        b"late",
        EntryType::Regular,
        Fields {
            pax: vec![("SCHILY.xattr.user.small", b"v")],
            ..Fields::default()
        },
    );
    let place = Place::new();
    apply(&late.tar()[..], TAR, &place.root(), &native()).unwrap();
    assert!(place.root().join("late").exists());
}

/// A layer source that gives `good` bytes and then fails (a broken disk or connection).
struct FailingAfter<'a> {
    good: &'a [u8],
}

impl std::io::Read for FailingAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.good.is_empty() {
            return Err(std::io::Error::other("the source broke"));
        }
        let n = buf.len().min(self.good.len());
        buf[..n].copy_from_slice(&self.good[..n]);
        self.good = &self.good[n..];
        Ok(n)
    }
}

#[test]
fn a_source_that_fails_is_an_io_error_not_a_bad_layer() {
    let mut layer = Layer::new();
    layer.file("a", &"a".repeat(4096));
    layer.file("b", "b");
    let tar = layer.tar();
    let error = apply(
        FailingAfter { good: &tar[..2048] },
        TAR,
        &Place::new().root(),
        &native(),
    )
    .unwrap_err();
    assert_eq!(error.category, Category::Internal, "{error}");
    assert!(
        error.message.contains("reading the layer") && error.message.contains("the source broke"),
        "{error}"
    );
    // A layer that is cut short where the source ends cleanly is the layer's fault.
    let error = apply(&tar[..2048], TAR, &Place::new().root(), &native()).unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument, "{error}");
}

/// A source that answers `Interrupted` once at `at` bytes, then goes on (a signal during a
/// read): the applier reads again, and the layer applies whole.
#[test]
fn an_interrupted_read_is_retried() {
    struct Interrupting<'a> {
        data: &'a [u8],
        at: usize,
        interrupted: bool,
    }
    impl std::io::Read for Interrupting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if !self.interrupted && self.at == 0 {
                self.interrupted = true;
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let limit = if self.interrupted { buf.len() } else { self.at };
            let n = buf.len().min(limit).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.at = self.at.saturating_sub(n);
            Ok(n)
        }
    }
    let content = "a".repeat(4096);
    let mut layer = Layer::new();
    layer.file("a", &content).file("b", "b");
    let tar = layer.tar();
    // 1024: inside the first file's data (its header is the first 512 bytes).
    let place = Place::new();
    apply(
        Interrupting {
            data: &tar,
            at: 1024,
            interrupted: false,
        },
        TAR,
        &place.root(),
        &native(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(place.root().join("a")).unwrap(),
        content
    );
    assert_eq!(
        std::fs::read_to_string(place.root().join("b")).unwrap(),
        "b"
    );
}

/// A GNU sparse entry: 512 bytes of data at the end of a file of `real_size` bytes, the rest
/// a hole the reader fills with zeros.
fn sparse(name: &str, real_size: u64) -> Layer {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_device_major(0).unwrap();
    header.set_device_minor(0).unwrap();
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(512);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(real_size - 512);
    gnu.sparse[0].set_length(512);
    gnu.set_real_size(real_size);
    header.set_cksum();
    let mut layer = Layer::new();
    layer.header(&header, &[b'x'; 512]);
    layer
}

/// A sparse file writes more than the stream holds: what the files receive is held to
/// max_uncompressed_size too, up to it exactly.
#[test]
fn sparse_files_are_held_to_the_size_limit() {
    let limit = 1 << 20;
    let options = ApplyOptions {
        limits: Limits {
            max_uncompressed_size: limit,
            ..Limits::default()
        },
        ..native()
    };
    let place = Place::new();
    apply(
        &sparse("fits", limit).tar()[..],
        TAR,
        &place.root(),
        &options,
    )
    .unwrap();
    let written = std::fs::read(place.root().join("fits")).unwrap();
    assert_eq!(written.len() as u64, limit);
    assert!(written[..written.len() - 512].iter().all(|&b| b == 0));
    assert!(written[written.len() - 512..].iter().all(|&b| b == b'x'));

    let error = apply(
        &sparse("bomb", 64 * limit).tar()[..],
        TAR,
        &Place::new().root(),
        &options,
    )
    .unwrap_err();
    assert_eq!(error.category, Category::ResourceExhausted, "{error}");
    assert!(error.message.contains("into files"), "{error}");
}

/// A `user.*` attribute on a symbolic link cannot be set (Linux allows them on files and
/// directories only): it is skipped, as containerd does, not a failed layer.
#[test]
fn a_user_xattr_on_a_symlink_is_skipped() {
    let mut layer = Layer::new();
    layer.raw(
        b"link",
        EntryType::Symlink,
        Fields {
            mode: 0o777,
            link: b"target",
            pax: vec![("SCHILY.xattr.user.note", b"v")],
            ..Fields::default()
        },
    );
    let place = Place::new();
    apply(&layer.tar()[..], TAR, &place.root(), &native()).unwrap();
    assert_eq!(
        std::fs::read_link(place.root().join("link")).unwrap(),
        Path::new("target")
    );
}

/// Errors that are the layer's (a path through a file, a name too long) are InvalidArgument
/// and say what is wrong; they are not reported as the host's I/O failures.
#[test]
fn entries_that_do_not_fit_the_tree_are_invalid_and_say_why() {
    let mut through_file = Layer::new();
    through_file.file("f", "file").hardlink("h", "f/x");
    let error = apply(
        &through_file.tar()[..],
        TAR,
        &Place::new().root(),
        &native(),
    )
    .unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument, "{error}");
    assert!(error.message.contains("not a directory"), "{error}");

    let mut long = Layer::new();
    long.file(&"n".repeat(300), "x");
    let error = apply(&long.tar()[..], TAR, &Place::new().root(), &native()).unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument, "{error}");
    assert!(error.message.contains("does not fit"), "{error}");
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ApplyOptions>();
    check::<Applied>();
    check::<Limits>();
    check::<Whiteouts>();
    check::<Compression>();
}

/// What a hostile layer must come to.
enum Outcome {
    /// Applied, inside the root: each (path in the root, what is there). `$OUT` in a path is
    /// the absolute path of the sentinel directory outside, without its leading `/`; what is
    /// there: file content, `-> target` for a symlink, `<absent>`, `<dir>`.
    Contained(&'static [(&'static str, &'static str)]),
    /// Refused: the error is InvalidArgument and its message holds this and the entry's name.
    Refused(&'static str, &'static str),
}

/// One hostile case: layers built with the absolute path of the directory outside.
struct Hostile {
    case: &'static str,
    whiteouts: Whiteouts,
    layers: fn(&str) -> Vec<Layer>,
    outcome: Outcome,
}

fn one(build: impl FnOnce(&mut Layer) -> &mut Layer) -> Vec<Layer> {
    let mut layer = Layer::new();
    build(&mut layer);
    vec![layer]
}

fn hostile_cases() -> Vec<Hostile> {
    use Outcome::*;
    use Whiteouts::*;
    vec![
        Hostile {
            case: "dot-dot name",
            whiteouts: Native,
            layers: |_| one(|l| l.file("../escape", "pwned")),
            outcome: Contained(&[("escape", "pwned")]),
        },
        Hostile {
            case: "many dot-dots",
            whiteouts: Native,
            layers: |_| one(|l| l.file("../../../../../../../tmp/escape", "pwned")),
            outcome: Contained(&[("tmp/escape", "pwned")]),
        },
        Hostile {
            case: "dot-dot in the middle",
            whiteouts: Native,
            layers: |_| one(|l| l.file("a/../../outside/secret", "pwned")),
            outcome: Contained(&[("outside/secret", "pwned"), ("a", "<absent>")]),
        },
        Hostile {
            case: "absolute name",
            whiteouts: Native,
            layers: |out| {
                let name = format!("{out}/secret");
                one(|l| l.file(&name, "pwned"))
            },
            outcome: Contained(&[("$OUT/secret", "pwned")]),
        },
        Hostile {
            case: "PAX path record with dot-dots over an innocent header name",
            whiteouts: Native,
            layers: |_| {
                one(|l| {
                    l.raw(
                        b"innocent",
                        EntryType::Regular,
                        Fields {
                            data: b"pwned",
                            pax: vec![("path", b"../../outside/secret")],
                            ..Fields::default()
                        },
                    )
                })
            },
            outcome: Contained(&[("outside/secret", "pwned"), ("innocent", "<absent>")]),
        },
        Hostile {
            case: "names that are the root",
            whiteouts: Native,
            layers: |_| one(|l| l.dir("./").dir("/").dir("..").file("../", "")),
            outcome: Contained(&[]),
        },
        Hostile {
            case: "absolute symlink, written through in the same layer",
            whiteouts: Native,
            layers: |out| {
                one(|l| {
                    l.symlink("esc", out)
                        .file("esc/secret", "pwned")
                        .file("esc/dir/x", "pwned")
                })
            },
            outcome: Contained(&[
                ("$OUT/secret", "pwned"),
                ("$OUT/dir/x", "pwned"),
                ("esc", "-> /$OUT"),
            ]),
        },
        Hostile {
            case: "relative symlink climbing out, written through",
            whiteouts: Native,
            layers: |_| {
                one(|l| {
                    l.symlink("up", "../../../..")
                        .file("up/outside/secret", "pwned")
                })
            },
            outcome: Contained(&[("outside/secret", "pwned")]),
        },
        Hostile {
            case: "symlink of an earlier layer, written through",
            whiteouts: Native,
            layers: |out| {
                let mut first = Layer::new();
                first.dir("sub/").symlink("sub/esc", out);
                let mut second = Layer::new();
                second.file("sub/esc/secret", "pwned");
                vec![first, second]
            },
            outcome: Contained(&[("$OUT/secret", "pwned"), ("sub/esc", "-> /$OUT")]),
        },
        Hostile {
            case: "chained symlinks, absolute and relative",
            whiteouts: Native,
            layers: |out| {
                let third = format!("/..//../{out}/dir");
                one(|l| {
                    l.symlink("l1", "l2")
                        .dir("d/")
                        .symlink("l2", "d/../../l3")
                        .symlink("l3", &third)
                        .file("l1/x", "pwned")
                })
            },
            outcome: Contained(&[("$OUT/dir/x", "pwned")]),
        },
        Hostile {
            case: "symlink through /proc/self/root",
            whiteouts: Native,
            layers: |out| {
                let target = format!("/proc/self/root{out}");
                one(|l| l.symlink("p", &target).file("p/secret", "pwned"))
            },
            outcome: Contained(&[("proc/self/root/$OUT/secret", "pwned")]),
        },
        Hostile {
            case: "dangling symlink: its target is created inside",
            whiteouts: Native,
            layers: |_| one(|l| l.symlink("d", "/nonexistent/deeper").file("d/file", "x")),
            outcome: Contained(&[("nonexistent/deeper/file", "x")]),
        },
        Hostile {
            case: "file over a symlink to an outside file replaces the symlink",
            whiteouts: Native,
            layers: |out| {
                let target = format!("{out}/secret");
                one(|l| l.symlink("s", &target).file("s", "pwned"))
            },
            outcome: Contained(&[("s", "pwned")]),
        },
        Hostile {
            case: "directory over a symlink to an outside directory replaces the symlink",
            whiteouts: Native,
            layers: |out| one(|l| l.symlink("d", out).dir("d/").file("d/secret", "pwned")),
            outcome: Contained(&[("d", "<dir>"), ("d/secret", "pwned")]),
        },
        Hostile {
            case: "hard link to a dot-dot name outside",
            whiteouts: Native,
            layers: |_| one(|l| l.hardlink("h", "../outside/secret")),
            outcome: Refused("does not exist in the snapshot", "h"),
        },
        Hostile {
            case: "hard link to an absolute name outside",
            whiteouts: Native,
            layers: |out| {
                let target = format!("{out}/secret");
                one(|l| l.hardlink("h", &target))
            },
            outcome: Refused("does not exist in the snapshot", "h"),
        },
        Hostile {
            case: "hard link through a symlink pointing outside",
            whiteouts: Native,
            layers: |out| one(|l| l.symlink("esc", out).hardlink("h", "esc/secret")),
            outcome: Refused("does not exist in the snapshot", "h"),
        },
        Hostile {
            case: "hard link from a subdirectory climbing out",
            whiteouts: Native,
            layers: |_| one(|l| l.dir("sub/").hardlink("sub/h", "sub/../../outside/secret")),
            outcome: Refused("does not exist in the snapshot", "sub/h"),
        },
        Hostile {
            case: "hard link through a symlink to the root is contained",
            whiteouts: Native,
            layers: |_| {
                one(|l| {
                    l.symlink("esc", "/")
                        .file("inner", "mine")
                        .hardlink("h", "esc/inner")
                })
            },
            outcome: Contained(&[("h", "mine")]),
        },
        Hostile {
            case: "hard link to a symlink pointing outside links the symlink itself",
            whiteouts: Native,
            layers: |out| {
                let target = format!("{out}/secret");
                one(|l| l.symlink("s", &target).hardlink("h", "s"))
            },
            outcome: Contained(&[("h", "-> /$OUT/secret")]),
        },
        Hostile {
            case: "hard link to itself",
            whiteouts: Native,
            layers: |_| one(|l| l.file("f", "x").hardlink("f", "f")),
            outcome: Refused("hard link to itself", "f"),
        },
        Hostile {
            case: "hard link to a directory",
            whiteouts: Native,
            layers: |_| one(|l| l.dir("d/").hardlink("h", "d")),
            outcome: Refused("is a directory", "h"),
        },
        Hostile {
            case: "whiteout with dot-dots",
            whiteouts: Native,
            layers: |_| {
                let mut first = Layer::new();
                first.file("secret", "lower");
                let mut second = Layer::new();
                second
                    .file("../.wh.secret", "")
                    .file("../../outside/.wh.dir", "");
                vec![first, second]
            },
            outcome: Contained(&[("secret", "<absent>"), ("outside", "<dir>")]),
        },
        Hostile {
            case: "absolute whiteout",
            whiteouts: Native,
            layers: |out| {
                let name = format!("{out}/.wh.secret");
                one(|l| l.file(&name, "").file("/.wh.outside", ""))
            },
            outcome: Contained(&[("$OUT", "<dir>")]),
        },
        Hostile {
            case: "whiteouts through a symlinked directory of an earlier layer",
            whiteouts: Native,
            layers: |out| {
                let mut first = Layer::new();
                first.symlink("esc", out);
                let mut second = Layer::new();
                second
                    .file("esc/.wh.secret", "")
                    .file("esc/.wh.dir", "")
                    .file("esc/.wh.link", "");
                vec![first, second]
            },
            outcome: Contained(&[("$OUT", "<dir>"), ("esc", "-> /$OUT")]),
        },
        Hostile {
            case: "opaque marker through a symlinked directory",
            whiteouts: Native,
            layers: |out| {
                let mut first = Layer::new();
                first.symlink("esc", out);
                let mut second = Layer::new();
                second.file("esc/.wh..wh..opq", "");
                vec![first, second]
            },
            outcome: Contained(&[("$OUT", "<dir>"), ("esc", "-> /$OUT")]),
        },
        Hostile {
            case: "overlay whiteout with dot-dots",
            whiteouts: Overlay,
            layers: |_| one(|l| l.file("../../outside/.wh.secret", "")),
            outcome: Contained(&[("outside/secret", "<whiteout>")]),
        },
        Hostile {
            case: "overlay whiteout and opaque marker through a symlink",
            whiteouts: Overlay,
            layers: |out| {
                one(|l| {
                    l.symlink("esc", out)
                        .file("esc/.wh.secret", "")
                        .file("esc/dir/.wh..wh..opq", "")
                })
            },
            outcome: Contained(&[("$OUT/secret", "<whiteout>"), ("$OUT/dir", "<dir>")]),
        },
        Hostile {
            case: "whiteout of nothing",
            whiteouts: Native,
            layers: |_| one(|l| l.file(".wh.", "")),
            outcome: Refused("would delete the directory itself", ".wh."),
        },
        Hostile {
            case: "whiteout of the parent",
            whiteouts: Native,
            layers: |_| one(|l| l.file("sub/.wh..", "")),
            outcome: Refused("would delete the directory itself", "sub/.wh.."),
        },
        Hostile {
            case: "whiteout of the directory itself",
            whiteouts: Overlay,
            layers: |_| one(|l| l.file("sub/.wh...", "")),
            outcome: Refused("would delete the directory itself", "sub/.wh..."),
        },
        Hostile {
            case: "path through a file",
            whiteouts: Native,
            layers: |_| one(|l| l.file("f", "x").file("f/x", "y")),
            outcome: Refused("not a directory", "f/x"),
        },
        Hostile {
            case: "symlink loop",
            whiteouts: Native,
            layers: |_| one(|l| l.symlink("loop", "loop").file("loop/x", "y")),
            outcome: Refused("symbolic links", "loop/x"),
        },
        Hostile {
            case: "symlink ping-pong",
            whiteouts: Native,
            layers: |_| one(|l| l.symlink("a", "b/x").symlink("b", "a/y").file("a/z", "")),
            outcome: Refused("symbolic links", "a/z"),
        },
        Hostile {
            case: "unsupported entry type",
            whiteouts: Native,
            layers: |_| one(|l| l.raw(b"volume", EntryType::new(b'V'), Fields::default())),
            outcome: Refused("unsupported tar entry type", "volume"),
        },
    ]
}

/// Every hostile case, with both resolvers: nothing outside the root changes, and the
/// outcome (contained where, or refused why) is the one documented.
#[test]
fn hostile_layers_never_touch_anything_outside_the_root() {
    require_root();
    for hostile in hostile_cases() {
        for resolver in RESOLVERS {
            let place = Place::new();
            let out = place.outside();
            let before = place.around();
            let layers: Vec<Vec<u8>> = (hostile.layers)(&out).iter().map(Layer::tar).collect();
            let options = ApplyOptions {
                whiteouts: hostile.whiteouts,
                ..ApplyOptions::default()
            };
            let result = apply_layers(&place.root(), &layers, &options, resolver);
            let case = format!("{} ({resolver:?})", hostile.case);
            assert_eq!(
                place.around(),
                before,
                "{case}: something outside the root changed"
            );
            match (&hostile.outcome, result) {
                (Outcome::Contained(expected), Ok(())) => {
                    for (path, what) in *expected {
                        let path = place
                            .root()
                            .join(path.replace("$OUT", out.trim_start_matches('/')));
                        let meta = std::fs::symlink_metadata(&path);
                        match *what {
                            "<absent>" => assert!(meta.is_err(), "{case}: {path:?} exists"),
                            "<dir>" => assert!(meta.unwrap().is_dir(), "{case}: {path:?}"),
                            "<whiteout>" => {
                                let meta = meta.unwrap();
                                assert!(
                                    meta.file_type().is_char_device() && meta.rdev() == 0,
                                    "{case}: {path:?} is no whiteout"
                                );
                            }
                            link if link.starts_with("-> ") => {
                                let expected =
                                    link[3..].replace("$OUT", out.trim_start_matches('/'));
                                assert_eq!(
                                    std::fs::read_link(&path).unwrap(),
                                    Path::new(&expected),
                                    "{case}"
                                );
                            }
                            content => assert_eq!(
                                std::fs::read_to_string(&path).unwrap(),
                                content,
                                "{case}: {path:?}"
                            ),
                        }
                    }
                }
                (Outcome::Refused(why, entry), Err(error)) => {
                    assert_eq!(error.category, Category::InvalidArgument, "{case}: {error}");
                    assert!(error.message.contains(why), "{case}: {error}");
                    assert!(
                        error.message.contains(&format!("{entry:?}")),
                        "{case}: the error does not name {entry:?}: {error}"
                    );
                }
                (Outcome::Contained(_), Err(error)) => {
                    panic!("{case}: expected contained, got {error}")
                }
                (Outcome::Refused(why, _), Ok(())) => {
                    panic!("{case}: expected refused ({why}), got applied")
                }
            }
        }
    }
}

/// The no-escape property over random layers: random names (with `..`, `.`, empty and
/// absolute parts), symlinks to random places outside and inside, hard links, whiteouts and
/// opaque markers, in two layers, in both forms, with both resolvers. Whatever the outcome,
/// nothing outside the root changes, and a refusal is InvalidArgument.
#[test]
fn random_layers_never_touch_anything_outside_the_root() {
    use proptest::prelude::*;
    require_root();
    let component = prop::sample::select(vec!["a", "b", "esc", "..", ".", "", "secret", "dir"]);
    let name = prop::collection::vec(component, 1..5).prop_map(|parts| parts.join("/"));
    let absolute = any::<bool>();
    let target = prop::sample::select(vec![
        "$OUT",
        "$OUT/dir",
        "$OUT/secret",
        "/",
        "..",
        "../..",
        "../../outside",
        "a",
        "esc/..",
        "/proc/self/root$OUT",
    ]);
    let op = (0..7u8, name, absolute, target);
    // Short layers, all applied whatever the one before came to: a refused entry ends its
    // layer, not the case.
    let layers = prop::collection::vec(prop::collection::vec(op, 1..4), 1..8);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 256,
        ..proptest::test_runner::Config::default()
    });
    runner
        .run(&(layers, any::<bool>()), |(layers, overlay_form)| {
            for resolver in RESOLVERS {
                let place = Place::new();
                let out = place.outside();
                let built: Vec<Vec<u8>> = layers
                    .iter()
                    .map(|ops| {
                        let mut layer = Layer::new();
                        for (kind, name, absolute, target) in ops {
                            let name = if *absolute {
                                format!("/{name}")
                            } else {
                                name.clone()
                            };
                            let target = target.replace("$OUT", &out);
                            let (parent, base) = match name.rsplit_once('/') {
                                Some((parent, base)) => (format!("{parent}/"), base.to_string()),
                                None => (String::new(), name.clone()),
                            };
                            match kind {
                                0 => layer.file(&name, "pwned"),
                                1 => layer.dir(&name),
                                2 | 3 => layer.symlink(&name, &target),
                                4 => layer.hardlink(&name, &target),
                                5 => layer.file(&format!("{parent}.wh.{base}"), ""),
                                _ => layer.file(&format!("{name}/.wh..wh..opq"), ""),
                            };
                        }
                        layer.tar()
                    })
                    .collect();
                let before = place.around();
                let options = ApplyOptions {
                    whiteouts: if overlay_form {
                        Whiteouts::Overlay
                    } else {
                        Whiteouts::Native
                    },
                    ..ApplyOptions::default()
                };
                for layer in &built {
                    let result = apply_with(&layer[..], TAR, &place.root(), &options, resolver);
                    prop_assert_eq!(&place.around(), &before, "outside changed ({:?})", resolver);
                    if let Err(error) = result {
                        prop_assert_eq!(error.category, Category::InvalidArgument, "{}", error);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// The resolver follows as many symbolic links as the kernel does (40) and no more, with
/// both resolvers, and a lookup that may not create leaves a missing directory missing.
#[test]
fn resolution_follows_forty_links_and_creates_nothing_unless_asked() {
    for resolver in RESOLVERS {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("d", root.join("l0")).unwrap();
        for i in 1..=40 {
            std::os::unix::fs::symlink(format!("l{}", i - 1), root.join(format!("l{i}"))).unwrap();
        }
        let in_root = in_root::InRoot::open(root, resolver).unwrap();
        let name = |s: &str| vec![std::ffi::OsString::from(s)];
        // l39 → … → l0 → d: 40 links.
        in_root
            .open_dir(&name("l39"), false)
            .unwrap_or_else(|f| panic!("{resolver:?}: 40 links refused: {:?}", f.errno));
        let failure = in_root.open_dir(&name("l40"), false).unwrap_err();
        assert_eq!(
            failure.errno,
            rustix::io::Errno::LOOP,
            "{resolver:?}: 41 links"
        );

        let missing = [
            std::ffi::OsString::from("missing"),
            std::ffi::OsString::from("x"),
        ];
        let failure = in_root.open_dir(&missing, false).unwrap_err();
        assert_eq!(failure.errno, rustix::io::Errno::NOENT, "{resolver:?}");
        assert!(
            !root.join("missing").exists(),
            "{resolver:?}: a lookup without create made a directory"
        );
        in_root.open_dir(&missing, true).unwrap();
        assert!(root.join("missing/x").is_dir(), "{resolver:?}");
    }
}
