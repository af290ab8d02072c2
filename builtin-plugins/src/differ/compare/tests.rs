//! Tests of the layer comparer: real trees in temporary directories (as root: owners,
//! devices, trusted xattrs and mounts need it), the tar stream read back entry by entry.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::namespaces::Labels;

/// The fixed modification time every entry gets in a finished tree (whole seconds: so that
/// equal-sized files are compared by content, not trusted for their times).
const FIXED_TIME: i64 = 1_600_000_000;

struct Trees {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
}

impl Trees {
    /// A lower tree made by `build`, and an upper that starts as its copy (`cp -a`, as the
    /// native snapshotter copies a parent: modes, owners, times, xattrs, hard links kept).
    fn new(build: impl FnOnce(&Path)) -> Trees {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        fs::create_dir(&lower).unwrap();
        build(&lower);
        fix_times(&lower);
        copy_tree(&lower, &upper);
        Trees {
            _dir: dir,
            lower,
            upper,
        }
    }

    /// Changes the upper with `change`, then fixes every time in it again.
    fn change(&self, change: impl FnOnce(&Path)) {
        change(&self.upper);
        fix_times(&self.upper);
    }

    fn diff(&self) -> (Vec<u8>, DiffStats) {
        let mut out = Vec::new();
        let stats = write_diff(&self.lower, &self.upper, &mut out).unwrap();
        (out, stats)
    }

    fn entries(&self) -> Vec<Entry> {
        read_tar(&self.diff().0)
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Sets every modification time under `root` (not the root's, not following links) to
/// [`FIXED_TIME`].
fn fix_times(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            set_mtime(&path, FIXED_TIME, 0);
        }
    }
}

fn set_mtime(path: &Path, seconds: i64, nanoseconds: i64) {
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: nanoseconds as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn write(root: &Path, path: &str, data: &str, mode: u32) {
    let full = root.join(path);
    fs::write(&full, data).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, path: &str, mode: u32) {
    let full = root.join(path);
    fs::create_dir(&full).unwrap();
    fs::set_permissions(&full, fs::Permissions::from_mode(mode)).unwrap();
}

fn symlink(root: &Path, target: &str, path: &str) {
    std::os::unix::fs::symlink(target, root.join(path)).unwrap();
}

fn set_xattr(root: &Path, path: &str, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(
        root.join(path),
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn mknod(root: &Path, path: &str, file_type: rustix::fs::FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join(path),
        file_type,
        rustix::fs::Mode::from_raw_mode(0o640),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
}

/// One tar entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// `<type> <name>`, with ` -> <target>` for a symlink and ` => <source>` for a hard link.
    /// Types: `-` file, `d` directory, `l` symlink, `h` hard link, `c`/`b` devices, `p` FIFO.
    line: String,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    device: Option<(u32, u32)>,
    /// Every PAX record of the entry.
    pax: BTreeMap<String, Vec<u8>>,
}

fn read_tar(bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut pax = BTreeMap::new();
        if let Some(extensions) = entry.pax_extensions().unwrap() {
            for extension in extensions {
                let extension = extension.unwrap();
                pax.insert(
                    extension.key().unwrap().to_string(),
                    extension.value_bytes().to_vec(),
                );
            }
        }
        let name = String::from_utf8(entry.path_bytes().to_vec()).unwrap();
        let link = entry
            .link_name_bytes()
            .map(|link| String::from_utf8(link.to_vec()).unwrap());
        let header = entry.header().clone();
        let line = match header.entry_type() {
            tar::EntryType::Regular => format!("- {name}"),
            tar::EntryType::Directory => format!("d {name}"),
            tar::EntryType::Symlink => format!("l {name} -> {}", link.unwrap()),
            tar::EntryType::Link => format!("h {name} => {}", link.unwrap()),
            tar::EntryType::Char => format!("c {name}"),
            tar::EntryType::Block => format!("b {name}"),
            tar::EntryType::Fifo => format!("p {name}"),
            other => panic!("unexpected entry type {other:?} for {name}"),
        };
        let device = match header.entry_type() {
            tar::EntryType::Char | tar::EntryType::Block => Some((
                header.device_major().unwrap().unwrap(),
                header.device_minor().unwrap().unwrap(),
            )),
            _ => None,
        };
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.push(Entry {
            line,
            mode: header.mode().unwrap(),
            uid: header.uid().unwrap(),
            gid: header.gid().unwrap(),
            mtime: header.mtime().unwrap(),
            data,
            device,
            pax,
        });
    }
    entries
}

fn lines(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.line.as_str()).collect()
}

fn entry<'a>(entries: &'a [Entry], line: &str) -> &'a Entry {
    entries
        .iter()
        .find(|entry| entry.line == line)
        .unwrap_or_else(|| panic!("no entry {line:?} in {:?}", lines(entries)))
}

/// The lower tree most cases start from.
fn base(root: &Path) {
    mkdir(root, "etc", 0o755);
    write(root, "etc/passwd", "root:x:0:0", 0o644);
    write(root, "etc/hosts", "127.0.0.1 localhost", 0o644);
    mkdir(root, "var", 0o755);
    mkdir(root, "var/lib", 0o700);
    write(root, "var/lib/state", "state", 0o600);
    mkdir(root, "var/lib/deep", 0o755);
    write(root, "var/lib/deep/file", "deep", 0o644);
    symlink(root, "etc/passwd", "link");
    write(root, "top", "top", 0o644);
}

type Setup = fn(&Path);

/// Each case: a change to the upper (a copy of [`base`]) and the exact entries of the layer.
const CASES: &[(&str, Setup, &[&str])] = &[
    ("no change", |_| {}, &[]),
    (
        "a file added to an existing directory brings its parent",
        |u| write(u, "etc/new", "new", 0o644),
        &["d etc/", "- etc/new"],
    ),
    (
        "a file added at the root has no parent entry",
        |u| write(u, "added", "x", 0o644),
        &["- added"],
    ),
    (
        "a content change of the same size is found by content",
        |u| write(u, "etc/hosts", "127.0.0.1 localhosT", 0o644),
        &["d etc/", "- etc/hosts"],
    ),
    (
        "a size change",
        |u| write(u, "top", "longer", 0o644),
        &["- top"],
    ),
    (
        "a chmod",
        |u| fs::set_permissions(u.join("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap(),
        &["d etc/", "- etc/passwd"],
    ),
    (
        "a chmod of a directory writes only the directory",
        |u| fs::set_permissions(u.join("var"), fs::Permissions::from_mode(0o750)).unwrap(),
        &["d var/"],
    ),
    (
        "a chown",
        |u| std::os::unix::fs::lchown(u.join("top"), Some(1000), Some(1001)).unwrap(),
        &["- top"],
    ),
    (
        "a chown of a symlink itself",
        |u| std::os::unix::fs::lchown(u.join("link"), Some(7), None).unwrap(),
        &["l link -> etc/passwd"],
    ),
    (
        "an added xattr",
        |u| set_xattr(u, "top", "user.note", b"hello"),
        &["- top"],
    ),
    (
        "overlay's own xattrs are no change",
        |u| set_xattr(u, "top", "trusted.overlay.origin", b"x"),
        &[],
    ),
    (
        "a deleted file is a whiteout after its parents",
        |u| fs::remove_file(u.join("var/lib/deep/file")).unwrap(),
        &[
            "d var/",
            "d var/lib/",
            "d var/lib/deep/",
            "- var/lib/deep/.wh.file",
        ],
    ),
    (
        "a deleted directory tree is one whiteout",
        |u| fs::remove_dir_all(u.join("var")).unwrap(),
        &["- .wh.var"],
    ),
    (
        "a file replaced by a directory, then its children",
        |u| {
            fs::remove_file(u.join("top")).unwrap();
            mkdir(u, "top", 0o755);
            write(u, "top/child", "c", 0o644);
        },
        &["d top/", "- top/child"],
    ),
    (
        "a directory replaced by a file: no whiteouts for the old children",
        |u| {
            fs::remove_dir_all(u.join("var/lib")).unwrap();
            write(u, "var/lib", "now a file", 0o644);
        },
        &["d var/", "- var/lib"],
    ),
    (
        "a symlink retargeted",
        |u| {
            fs::remove_file(u.join("link")).unwrap();
            symlink(u, "etc/hosts", "link");
        },
        &["l link -> etc/hosts"],
    ),
    (
        "a symlink to outside the tree is a leaf, never followed",
        |u| {
            symlink(u, "/", "root-link");
            symlink(u, "../../../../etc", "up-link");
        },
        &["l root-link -> /", "l up-link -> ../../../../etc"],
    ),
    (
        "a symlink replaced by a directory",
        |u| {
            fs::remove_file(u.join("link")).unwrap();
            mkdir(u, "link", 0o755);
        },
        &["d link/"],
    ),
    (
        "a new file with two names: one file, one hard link",
        |u| {
            write(u, "etc/b-new", "linked", 0o644);
            fs::hard_link(u.join("etc/b-new"), u.join("a-new")).unwrap();
        },
        &["- a-new", "d etc/", "h etc/b-new => a-new"],
    ),
    (
        "a new name for an unchanged file rewrites every name as links",
        |u| fs::hard_link(u.join("top"), u.join("etc/top-again")).unwrap(),
        &["d etc/", "- etc/top-again", "h top => etc/top-again"],
    ),
    (
        "a new later name for an unchanged file: the earlier name carries the file",
        |u| fs::hard_link(u.join("etc/hosts"), u.join("zz")).unwrap(),
        &["d etc/", "- etc/hosts", "h zz => etc/hosts"],
    ),
    (
        "a fifo and device nodes",
        |u| {
            mknod(u, "fifo", rustix::fs::FileType::Fifo, 0, 0);
            mknod(u, "null", rustix::fs::FileType::CharacterDevice, 1, 3);
            mknod(u, "disk", rustix::fs::FileType::BlockDevice, 8, 1);
        },
        &["b disk", "p fifo", "c null"],
    ),
    (
        "a socket is left out, as containerd leaves it",
        |u| {
            let listener = std::os::unix::net::UnixListener::bind(u.join("sock")).unwrap();
            drop(listener);
        },
        &[],
    ),
    (
        "order is by path component: a, a/b before a.b",
        |u| {
            write(u, "a.b", "1", 0o644);
            mkdir(u, "a", 0o755);
            write(u, "a/b", "2", 0o644);
            write(u, "a-", "3", 0o644);
        },
        &["d a/", "- a/b", "- a-", "- a.b"],
    ),
    (
        "everything at once, in layer order",
        |u| {
            write(u, "etc/hosts", "changed", 0o644);
            fs::remove_file(u.join("etc/passwd")).unwrap();
            fs::remove_dir_all(u.join("var/lib/deep")).unwrap();
            write(u, "var/new", "n", 0o600);
            fs::remove_file(u.join("top")).unwrap();
        },
        &[
            "d etc/",
            "- etc/hosts",
            "- etc/.wh.passwd",
            "- .wh.top",
            "d var/",
            "d var/lib/",
            "- var/lib/.wh.deep",
            "- var/new",
        ],
    ),
];

#[test]
fn each_change_gives_exactly_its_entries() {
    for (name, change, expected) in CASES {
        let trees = Trees::new(base);
        trees.change(change);
        let entries = trees.entries();
        assert_eq!(lines(&entries), *expected, "case: {name}");
    }
}

#[test]
fn changes_lists_added_modified_deleted_in_order() {
    let trees = Trees::new(base);
    trees.change(|u| {
        write(u, "etc/hosts", "changed", 0o644);
        fs::remove_dir_all(u.join("var/lib")).unwrap();
        write(u, "new", "n", 0o644);
        std::os::unix::net::UnixListener::bind(u.join("sock")).unwrap();
    });
    let found: Vec<(ChangeKind, String)> = changes(&trees.lower, &trees.upper)
        .unwrap()
        .into_iter()
        .map(|change| (change.kind, change.path.display().to_string()))
        .collect();
    assert_eq!(
        found,
        [
            (ChangeKind::Modified, "etc/hosts".to_string()),
            (ChangeKind::Added, "new".to_string()),
            (ChangeKind::Added, "sock".to_string()),
            (ChangeKind::Deleted, "var/lib".to_string()),
        ]
    );
}

#[test]
fn no_change_is_two_zero_blocks_with_the_empty_layer_diff_id() {
    let trees = Trees::new(base);
    let (bytes, stats) = trees.diff();
    assert_eq!(bytes, vec![0; 1024]);
    assert_eq!(stats.diff_id.as_str(), EMPTY_LAYER_DIFF_ID);
    assert_eq!(stats.diff_id, Digest::of(&bytes));
    assert_eq!((stats.size, stats.entries), (1024, 0));
    assert!(changes(&trees.lower, &trees.upper).unwrap().is_empty());
}

#[test]
fn an_empty_lower_adds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
    fs::create_dir(&lower).unwrap();
    fs::create_dir(&upper).unwrap();
    base(&upper);
    let mut out = Vec::new();
    let stats = write_diff(&lower, &upper, &mut out).unwrap();
    assert_eq!(
        lines(&read_tar(&out)),
        [
            "d etc/",
            "- etc/hosts",
            "- etc/passwd",
            "l link -> etc/passwd",
            "- top",
            "d var/",
            "d var/lib/",
            "d var/lib/deep/",
            "- var/lib/deep/file",
            "- var/lib/state",
        ]
    );
    assert_eq!((stats.added, stats.modified, stats.deleted), (10, 0, 0));
}

#[test]
fn entries_carry_mode_owner_time_xattrs_and_data() {
    let trees = Trees::new(base);
    trees.change(|u| {
        write(u, "etc/new", "new data", 0o644);
        // chown clears the set-uid bit: chmod after it.
        std::os::unix::fs::lchown(u.join("etc/new"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(u.join("etc/new"), fs::Permissions::from_mode(0o4755)).unwrap();
        set_xattr(u, "etc/new", "user.one", b"1");
        set_xattr(u, "etc/new", "trusted.two", b"\x00\xffbinary");
        set_xattr(u, "etc/new", "trusted.overlay.opaque", b"y");
        std::os::unix::fs::lchown(u.join("etc"), Some(10), Some(20)).unwrap();
        fs::set_permissions(u.join("etc"), fs::Permissions::from_mode(0o1777)).unwrap();
        mknod(u, "null", rustix::fs::FileType::CharacterDevice, 1, 3);
        fs::remove_file(u.join("top")).unwrap();
    });
    let entries = trees.entries();
    let parent = entry(&entries, "d etc/");
    assert_eq!((parent.mode, parent.uid, parent.gid), (0o1777, 10, 20));
    let file = entry(&entries, "- etc/new");
    assert_eq!((file.mode, file.uid, file.gid), (0o4755, 1234, 5678));
    assert_eq!(file.mtime, FIXED_TIME as u64);
    assert_eq!(file.data, b"new data");
    assert_eq!(
        file.pax,
        BTreeMap::from([
            (
                "SCHILY.xattr.trusted.two".to_string(),
                b"\x00\xffbinary".to_vec()
            ),
            ("SCHILY.xattr.user.one".to_string(), b"1".to_vec()),
        ])
    );
    let device = entry(&entries, "c null");
    assert_eq!((device.device, device.mode), (Some((1, 3)), 0o640));
    let whiteout = entry(&entries, "- .wh.top");
    assert_eq!(
        (whiteout.mode, whiteout.uid, whiteout.gid, whiteout.mtime),
        (0, 0, 0, 0)
    );
    assert!(whiteout.data.is_empty() && whiteout.pax.is_empty());
}

#[test]
fn long_names_long_targets_and_large_ids_use_pax() {
    let long_dir = "d".repeat(90);
    let long_file = "f".repeat(120);
    let trees = Trees::new(|l| mkdir(l, &long_dir, 0o755));
    trees.change(|u| {
        write(u, &format!("{long_dir}/{long_file}"), "x", 0o644);
        symlink(u, &"t".repeat(150), "long-link");
        write(u, "big-ids", "y", 0o644);
        std::os::unix::fs::lchown(u.join("big-ids"), Some(3_000_000), Some(4_000_000)).unwrap();
    });
    let entries = trees.entries();
    assert_eq!(
        lines(&entries),
        [
            "- big-ids".to_string(),
            format!("d {long_dir}/"),
            format!("- {long_dir}/{long_file}"),
            format!("l long-link -> {}", "t".repeat(150)),
        ]
    );
    let file = &entries[2];
    assert_eq!(
        file.pax.get("path").map(Vec::as_slice),
        Some(format!("{long_dir}/{long_file}").as_bytes())
    );
    let ids = &entries[0];
    assert_eq!((ids.uid, ids.gid), (3_000_000, 4_000_000));
    assert_eq!(ids.pax.get("uid").map(Vec::as_slice), Some(&b"3000000"[..]));
    assert!(entries[3].pax.contains_key("linkpath"));
    // A long whiteout name too.
    let trees = Trees::new(|l| write(l, &long_file, "x", 0o644));
    trees.change(|u| fs::remove_file(u.join(&long_file)).unwrap());
    assert_eq!(lines(&trees.entries()), [format!("- .wh.{long_file}")]);
}

#[test]
fn times_are_whole_seconds_unless_asked_and_clamped_to_the_source_date_epoch() {
    let trees = Trees::new(base);
    trees.change(|u| write(u, "new", "n", 0o644));
    set_mtime(&trees.upper.join("new"), 1_700_000_000, 123_456_789);
    let read = |options: &WriteDiffOptions| {
        let mut out = Vec::new();
        write_diff_with(&trees.lower, &trees.upper, options, &mut out).unwrap();
        read_tar(&out).remove(0)
    };
    let default = read(&WriteDiffOptions::default());
    assert_eq!(
        (default.mtime, default.pax.get("mtime")),
        (1_700_000_000, None)
    );
    let precise = read(&WriteDiffOptions {
        sub_second_times: true,
        ..WriteDiffOptions::default()
    });
    assert_eq!(precise.mtime, 1_700_000_000);
    assert_eq!(
        precise.pax.get("mtime").map(Vec::as_slice),
        Some(&b"1700000000.123456789"[..])
    );
    let clamped = read(&WriteDiffOptions {
        source_date_epoch: Some(UNIX_EPOCH + Duration::from_secs(1_650_000_000)),
        ..WriteDiffOptions::default()
    });
    assert_eq!(clamped.mtime, 1_650_000_000);
}

#[test]
fn sub_second_times_around_the_epoch_are_decimal_as_pax_writes_them() {
    // -1.5 s is 2 s before the epoch plus half a second; 0.5 s has no sign.
    for (seconds, nanoseconds, expected) in [
        (-2, 500_000_000, &b"-1.5"[..]),
        (-1, 1, b"-0.999999999"),
        (0, 500_000_000, b"0.5"),
        (1, 250_000_000, b"1.25"),
    ] {
        let trees = Trees::new(base);
        trees.change(|u| write(u, "new", "n", 0o644));
        set_mtime(&trees.upper.join("new"), seconds, nanoseconds);
        let mut out = Vec::new();
        let options = WriteDiffOptions {
            sub_second_times: true,
            ..WriteDiffOptions::default()
        };
        write_diff_with(&trees.lower, &trees.upper, &options, &mut out).unwrap();
        let entry = read_tar(&out).remove(0);
        assert_eq!(
            entry.pax.get("mtime").map(Vec::as_slice),
            Some(expected),
            "{seconds} s {nanoseconds} ns"
        );
    }
}

#[test]
fn a_time_change_alone_is_a_modification_but_nanoseconds_equal_are_trusted() {
    // containerd's rule: equal times with nanoseconds mean the file was not rewritten.
    let trees = Trees::new(base);
    set_mtime(&trees.lower.join("top"), FIXED_TIME, 5);
    set_mtime(&trees.upper.join("top"), FIXED_TIME, 5);
    fs::write(trees.upper.join("top"), "TOP").unwrap();
    set_mtime(&trees.upper.join("top"), FIXED_TIME, 5);
    assert_eq!(lines(&trees.entries()), Vec::<&str>::new());
    set_mtime(&trees.upper.join("top"), FIXED_TIME, 6);
    assert_eq!(lines(&trees.entries()), ["- top"]);
    set_mtime(&trees.upper.join("top"), FIXED_TIME + 1, 0);
    assert_eq!(lines(&trees.entries()), ["- top"]);
}

#[test]
fn a_content_change_past_the_first_buffer_of_a_large_file_is_found() {
    // Same size, same whole-second time: only the bytes tell, and they differ after the
    // first 32 KiB read of each side.
    let big = |changed: bool| {
        let mut data = vec![b'a'; 100 * 1024];
        if changed {
            data[70 * 1024] = b'b';
        }
        String::from_utf8(data).unwrap()
    };
    let trees = Trees::new(|root| write(root, "big", &big(false), 0o644));
    assert_eq!(lines(&trees.entries()), Vec::<&str>::new());
    trees.change(|upper| write(upper, "big", &big(true), 0o644));
    assert_eq!(lines(&trees.entries()), ["- big"]);
}

#[test]
fn an_entry_that_vanished_is_none_and_any_other_lstat_failure_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "file", "x", 0o644);
    assert!(lstat_in(dir.path(), Path::new("file")).unwrap().is_some());
    assert!(lstat_in(dir.path(), Path::new("gone")).unwrap().is_none());
    // ENOTDIR: the entry's parent is a file.
    let error = lstat_in(dir.path(), Path::new("file/under")).unwrap_err();
    assert!(
        error
            .message
            .contains(&dir.path().join("file/under").display().to_string()),
        "{error}"
    );
}

#[test]
fn read_full_retries_an_interrupted_read_and_passes_on_any_other_failure() {
    /// Answers from `script` in turn, then the end.
    struct Scripted(Vec<io::Result<&'static [u8]>>);
    impl Read for Scripted {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let bytes = self.0.remove(0)?;
            buffer[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        }
    }
    let interrupted = || io::Error::from(io::ErrorKind::Interrupted);
    let mut buffer = [0; 8];
    let mut reader = Scripted(vec![Ok(b"abc"), Err(interrupted()), Ok(b"de")]);
    assert_eq!(read_full(&mut reader, &mut buffer).unwrap(), 5);
    assert_eq!(&buffer[..5], b"abcde");
    let mut reader = Scripted(vec![Ok(b"abc"), Err(io::Error::other("disk gone"))]);
    let error = read_full(&mut reader, &mut buffer).unwrap_err();
    assert_eq!(error.to_string(), "disk gone");
}

#[test]
fn open_regular_never_follows_a_symlink_even_to_the_inode_it_expects() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "real", "data", 0o644);
    let real = dir.path().join("real");
    let metadata = fs::symlink_metadata(&real).unwrap();
    assert!(open_regular(&real, &metadata).is_ok());
    // The name now a link to the very file the walk saw: still refused.
    symlink(dir.path(), "real", "link");
    assert!(open_regular(&dir.path().join("link"), &metadata).is_err());
    // Another file of the same filesystem in its place (same device, another inode).
    write(dir.path(), "other", "data", 0o644);
    let error = open_regular(&dir.path().join("other"), &metadata).unwrap_err();
    assert!(
        error
            .message
            .contains("changed while it was being compared"),
        "{error}"
    );
}

#[test]
fn a_file_shorter_than_its_header_said_is_an_error_not_a_short_entry() {
    let path = Path::new("/shrunk");
    let mut reader = ExactReader {
        inner: &b"abc"[..],
        remaining: 5,
        path,
    };
    let mut buffer = [0; 8];
    assert_eq!(reader.read(&mut buffer).unwrap(), 3);
    let error = reader.read(&mut buffer).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    assert!(error.to_string().contains("/shrunk shrank"), "{error}");
    // An empty buffer asks for nothing: no error, whatever is left.
    assert_eq!(reader.read(&mut []).unwrap(), 0);
    // Read to its length, the end is the end.
    let mut whole = ExactReader {
        inner: &b"abc"[..],
        remaining: 3,
        path,
    };
    assert_eq!(whole.read(&mut buffer).unwrap(), 3);
    assert_eq!(whole.read(&mut buffer).unwrap(), 0);
}

#[test]
fn pax_headers_are_named_as_go_names_them_and_only_names_past_100_bytes_need_one() {
    let exactly_100 = "n".repeat(100);
    let over_100 = "o".repeat(101);
    let trees = Trees::new(base);
    trees.change(|u| {
        write(u, &exactly_100, "x", 0o644);
        write(u, &format!("etc/{over_100}"), "x", 0o644);
        symlink(u, &"t".repeat(100), "link100");
    });
    let (bytes, _) = trees.diff();
    // Header by header, as written (the tar crate's reader would merge the PAX headers).
    let mut pax_names = Vec::new();
    let mut plain_names = Vec::new();
    let mut offset = 0;
    while offset + 512 <= bytes.len() && bytes[offset..offset + 512].iter().any(|&b| b != 0) {
        let header = tar::Header::from_byte_slice(&bytes[offset..offset + 512]);
        let name = String::from_utf8(header.path_bytes().into_owned()).unwrap();
        if header.entry_type() == tar::EntryType::XHeader {
            pax_names.push(name);
        } else {
            plain_names.push(name);
        }
        offset += 512
            + usize::try_from(header.entry_size().unwrap())
                .unwrap()
                .div_ceil(512)
                * 512;
    }
    // The header's own name is cut to the field's 100 bytes, as Go's writer cuts it.
    assert_eq!(
        pax_names,
        [format!("etc/PaxHeaders.0/{over_100}")[..100].to_string()]
    );
    assert!(plain_names.contains(&exactly_100), "{plain_names:?}");
    assert!(
        plain_names.contains(&"link100".to_string()),
        "{plain_names:?}"
    );
    assert_eq!(pax_header_name(b"top"), b"PaxHeaders.0/top");
    assert_eq!(pax_header_name(b"a/b/dir/"), b"a/b/PaxHeaders.0/dir");
}

#[test]
fn the_layer_goes_to_the_content_writer_in_full_chunks_and_one_last_rest() {
    use std::io::Write as _;
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
    let mut writer = ChannelWriter {
        sender,
        buffer: Vec::new(),
    };
    let data: Vec<u8> = (0..CHUNK_SIZE * 5 / 2).map(|i| (i % 251) as u8).collect();
    for piece in data.chunks(7919) {
        writer.write_all(piece).unwrap();
    }
    writer.send_buffer().unwrap();
    drop(writer);
    let mut chunks = Vec::new();
    while let Some(chunk) = receiver.blocking_recv() {
        chunks.push(chunk);
    }
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, CHUNK_SIZE / 2]);
    assert_eq!(chunks.concat(), data);
}

#[test]
fn a_name_starting_with_the_whiteout_prefix_is_refused() {
    let trees = Trees::new(base);
    trees.change(|u| write(u, "etc/.wh.sneaky", "x", 0o644));
    let error = write_diff(&trees.lower, &trees.upper, Vec::new()).unwrap_err();
    assert_eq!(error.category, Category::FailedPrecondition);
    assert!(error.message.contains("etc/.wh.sneaky"), "{error}");
}

#[test]
fn missing_or_file_roots_are_errors_that_name_them() {
    let trees = Trees::new(base);
    let missing = trees.lower.join("nope");
    let error = write_diff(&missing, &trees.upper, Vec::new()).unwrap_err();
    assert_eq!(error.category, Category::NotFound);
    assert!(error.message.contains("lower tree") && error.message.contains("nope"));
    let error = changes(&trees.lower, &trees.upper.join("top")).unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument);
    assert!(error.message.contains("upper tree"));
}

#[test]
fn the_same_trees_give_the_same_bytes() {
    let trees = Trees::new(base);
    trees.change(|u| {
        write(u, "etc/hosts", "changed", 0o644);
        fs::remove_dir_all(u.join("var")).unwrap();
        for i in 0..50 {
            write(u, &format!("etc/n{}", (i * 37) % 50), "n", 0o644);
        }
        fs::hard_link(u.join("etc/n1"), u.join("n1-again")).unwrap();
    });
    let (first, first_stats) = trees.diff();
    // Reading the files changed their access times; nothing else changed.
    let (second, second_stats) = trees.diff();
    assert_eq!(first, second);
    assert_eq!(first_stats, second_stats);
    // A copy of the trees elsewhere (other inodes, other directory order) gives the same.
    let copies = tempfile::tempdir().unwrap();
    copy_tree(&trees.lower, &copies.path().join("lower"));
    copy_tree(&trees.upper, &copies.path().join("upper"));
    let mut third = Vec::new();
    write_diff(
        &copies.path().join("lower"),
        &copies.path().join("upper"),
        &mut third,
    )
    .unwrap();
    assert_eq!(first, third);
}

#[test]
fn stats_count_what_was_written() {
    let trees = Trees::new(base);
    trees.change(|u| {
        write(u, "etc/hosts", "changed", 0o644);
        write(u, "new", "n", 0o644);
        fs::remove_file(u.join("top")).unwrap();
    });
    let (bytes, stats) = trees.diff();
    assert_eq!((stats.added, stats.modified, stats.deleted), (1, 1, 1));
    // etc/ (a parent), etc/hosts, new, .wh.top
    assert_eq!(stats.entries, 4);
    assert_eq!(stats.size, bytes.len() as u64);
    assert_eq!(stats.diff_id, Digest::of(&bytes));
}

fn changed_trees() -> Trees {
    let trees = Trees::new(base);
    trees.change(|u| {
        write(u, "etc/hosts", &"changed ".repeat(1000), 0o644);
        fs::remove_dir_all(u.join("var")).unwrap();
        write(u, "new", "n", 0o644);
    });
    trees
}

#[test]
fn compressed_layers_decompress_to_the_tar_stream_with_their_digests() {
    let trees = changed_trees();
    let (plain, plain_stats) = trees.diff();
    for media_type in [
        MEDIA_TYPE_LAYER,
        MEDIA_TYPE_DOCKER_LAYER,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_DOCKER_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
    ] {
        let mut out = Vec::new();
        let stats = write_layer(
            &trees.lower,
            &trees.upper,
            media_type,
            &WriteDiffOptions::default(),
            &mut out,
        )
        .unwrap();
        let mut decompressed = Vec::new();
        match Compression::of_media_type(media_type).unwrap() {
            Compression::Uncompressed => decompressed = out.clone(),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(out.as_slice())
                    .read_to_end(&mut decompressed)
                    .unwrap();
            }
            Compression::Zstd => {
                decompressed = zstd::decode_all(out.as_slice()).unwrap();
            }
        }
        assert_eq!(decompressed, plain, "{media_type}");
        assert_eq!(stats.diff, plain_stats, "{media_type}");
        assert_eq!(stats.digest, Digest::of(&out), "{media_type}");
        assert_eq!(stats.size, out.len() as u64, "{media_type}");
        if media_type != MEDIA_TYPE_LAYER && media_type != MEDIA_TYPE_DOCKER_LAYER {
            assert!(out.len() < plain.len(), "{media_type} compresses");
        }
    }
}

#[test]
fn an_unknown_media_type_is_unimplemented_before_anything_is_read() {
    let error = write_layer(
        Path::new("/nonexistent"),
        Path::new("/nonexistent"),
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        &WriteDiffOptions::default(),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(error.category, Category::Unimplemented);
    assert!(error.message.contains("tar+bzip2"));
}

#[test]
fn pax_records_count_their_own_length() {
    for (key, value, expected) in [
        ("path", "a", "9 path=a\n"),
        ("mtime", "1.5", "13 mtime=1.5\n"),
        // 93 bytes without the length: 2 digits would make 95, which is still 2 digits.
        ("k", &"v".repeat(89), &format!("95 k={}\n", "v".repeat(89))),
        // 99 bytes without the length: 2 digits make 101, which needs 3 digits: 102.
        ("k", &"v".repeat(95), &format!("102 k={}\n", "v".repeat(95))),
    ] {
        let body = pax_records(&vec![(key.as_bytes().to_vec(), value.as_bytes().to_vec())]);
        assert_eq!(String::from_utf8(body.clone()).unwrap(), expected);
        let length: usize = expected.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
    }
}

// ---------------------------------------------------------------------------------------
// Into a content store

#[cfg(feature = "content-local")]
mod content_store {
    use super::*;
    use crate::content::local::LocalStore;

    async fn blob(store: &LocalStore, digest: &Digest) -> Vec<u8> {
        let info = store.info(digest).await.unwrap();
        store.read_at(digest, 0, info.size as usize).await.unwrap()
    }

    /// The comparison streams its layer into the store through a channel: the side that
    /// produces it must not hold one of the runtime's bounded blocking threads while it
    /// waits for the writes, which take them. With a single blocking thread and a layer
    /// several times the channel's size, the comparison still finishes.
    #[test]
    fn a_comparison_finishes_with_one_blocking_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let trees = Trees::new(base);
        trees.change(|u| fs::write(u.join("big"), vec![0x5a; 10 * CHUNK_SIZE]).unwrap());
        let (plain, _) = trees.diff();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let request = CompareRequest {
            media_type: MEDIA_TYPE_LAYER.to_string(),
            ..CompareRequest::default()
        };
        let descriptor = runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                compare_into_content(&store, trees.lower.clone(), trees.upper.clone(), &request),
            )
            .await
            .expect("the comparison waited for the blocking thread it held")
            .unwrap()
        });
        assert_eq!(descriptor.digest, Digest::of(&plain));
        assert_eq!(runtime.block_on(blob(&store, &descriptor.digest)), plain);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_comparison_is_committed_with_its_uncompressed_label() {
        let trees = changed_trees();
        let (plain, plain_stats) = trees.diff();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let request = CompareRequest {
            labels: Labels::from([("mine".to_string(), "yes".to_string())]),
            ..CompareRequest::default()
        };
        let descriptor =
            compare_into_content(&store, trees.lower.clone(), trees.upper.clone(), &request)
                .await
                .unwrap();
        assert_eq!(descriptor.media_type, MEDIA_TYPE_LAYER_GZIP);
        let bytes = blob(&store, &descriptor.digest).await;
        assert_eq!(Digest::of(&bytes), descriptor.digest);
        assert_eq!(bytes.len() as i64, descriptor.size);
        let mut decompressed = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut decompressed)
            .unwrap();
        assert_eq!(decompressed, plain);
        let info = store.info(&descriptor.digest).await.unwrap();
        assert_eq!(
            info.labels,
            Labels::from([
                (
                    LABEL_UNCOMPRESSED.to_string(),
                    plain_stats.diff_id.to_string()
                ),
                ("mine".to_string(), "yes".to_string()),
            ])
        );
        // No ingest is left behind.
        assert!(store.list_statuses(&[]).await.unwrap().is_empty());

        // The same again, under a ref of the caller's: the blob exists already, which is
        // fine; a blob without the label gets it.
        let mut info = info;
        info.labels.clear();
        store.update(info, &["labels".to_string()]).await.unwrap();
        let again = compare_into_content(
            &store,
            trees.lower.clone(),
            trees.upper.clone(),
            &CompareRequest {
                reference: "my-diff".to_string(),
                ..CompareRequest::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(again, descriptor);
        let labels = store.info(&descriptor.digest).await.unwrap().labels;
        assert_eq!(
            labels.get(LABEL_UNCOMPRESSED),
            Some(&plain_stats.diff_id.to_string())
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_callers_ref_with_bytes_left_from_an_earlier_attempt_starts_over() {
        let trees = changed_trees();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let mut stale = store.writer("my-diff", 0, None).await.unwrap();
        stale.write(b"bytes of an attempt that died").await.unwrap();
        stale.close().await.unwrap();
        let request = CompareRequest {
            reference: "my-diff".to_string(),
            media_type: MEDIA_TYPE_LAYER.to_string(),
            ..CompareRequest::default()
        };
        let descriptor =
            compare_into_content(&store, trees.lower.clone(), trees.upper.clone(), &request)
                .await
                .unwrap();
        assert_eq!(blob(&store, &descriptor.digest).await, trees.diff().0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn media_types_choose_the_compression_and_the_label() {
        let trees = changed_trees();
        let (plain, plain_stats) = trees.diff();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for media_type in [MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_ZSTD] {
            let request = CompareRequest {
                media_type: media_type.to_string(),
                ..CompareRequest::default()
            };
            let descriptor =
                compare_into_content(&store, trees.lower.clone(), trees.upper.clone(), &request)
                    .await
                    .unwrap();
            assert_eq!(descriptor.media_type, media_type);
            let bytes = blob(&store, &descriptor.digest).await;
            let labels = store.info(&descriptor.digest).await.unwrap().labels;
            if media_type == MEDIA_TYPE_LAYER {
                assert_eq!(bytes, plain);
                assert_eq!(descriptor.digest, plain_stats.diff_id);
                assert!(labels.is_empty(), "{labels:?}");
            } else {
                assert_eq!(zstd::decode_all(bytes.as_slice()).unwrap(), plain);
                assert_eq!(
                    labels.get(LABEL_UNCOMPRESSED),
                    Some(&plain_stats.diff_id.to_string())
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_comparison_leaves_no_ingest_and_no_blob() {
        let trees = Trees::new(base);
        trees.change(|u| write(u, ".wh.bad", "x", 0o644));
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let error = compare_into_content(
            &store,
            trees.lower.clone(),
            trees.upper.clone(),
            &CompareRequest::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(error.category, Category::FailedPrecondition);
        assert!(store.list_statuses(&[]).await.unwrap().is_empty());
        assert!(store.walk(&[]).await.unwrap().is_empty());
        let error = compare_into_content(
            &store,
            trees.lower.clone(),
            trees.upper.clone(),
            &CompareRequest {
                media_type: "text/plain".to_string(),
                ..CompareRequest::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(error.category, Category::Unimplemented);
    }
}

// ---------------------------------------------------------------------------------------
// Mounts (root and overlay needed: these fail, never skip, without them)

/// Whether anything is mounted on `path` (from /proc/self/mountinfo).
fn is_mounted(path: &Path) -> bool {
    let wanted = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

fn bind(path: &Path, access: &str) -> Mount {
    Mount {
        mount_type: "bind".to_string(),
        source: path.display().to_string(),
        target: String::new(),
        options: vec!["rbind".to_string(), access.to_string()],
    }
}

fn mount_dirs(temp: &Path) -> Vec<PathBuf> {
    match fs::read_dir(temp) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn bind_mounts_are_compared_read_only_and_always_unmounted() {
    let trees = changed_trees();
    let (plain, _) = trees.diff();
    let temp = tempfile::tempdir().unwrap();
    let temp_dir = temp.path().join("mounts");
    // As the native snapshotter hands them out: an rw active snapshot, an ro parent.
    let mut out = Vec::new();
    let stats = diff_mounts(
        &[bind(&trees.lower, "ro")],
        &[bind(&trees.upper, "rw")],
        &temp_dir,
        MEDIA_TYPE_LAYER,
        &WriteDiffOptions::default(),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, plain);
    assert_eq!(stats.digest, Digest::of(&plain));
    assert!(mount_dirs(&temp_dir).is_empty(), "mount directories left");

    // While mounted, nothing can be written through it.
    let mounted = TempMount::read_only(&[bind(&trees.upper, "rw")], &temp_dir).unwrap();
    let path = mounted.path().to_path_buf();
    assert!(is_mounted(&path));
    assert_eq!(fs::read(path.join("new")).unwrap(), b"n");
    let error = fs::write(path.join("new"), "x").unwrap_err();
    assert_eq!(
        error.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    drop(mounted);
    assert!(!is_mounted(&path) && !path.exists());

    // A failing comparison unmounts too: the upper holds a name no layer can.
    fs::write(trees.upper.join(".wh.bad"), "x").unwrap();
    let error = diff_mounts(
        &[bind(&trees.lower, "ro")],
        &[bind(&trees.upper, "rw")],
        &temp_dir,
        MEDIA_TYPE_LAYER_GZIP,
        &WriteDiffOptions::default(),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(error.category, Category::FailedPrecondition);
    assert!(mount_dirs(&temp_dir).is_empty(), "mount directories left");
}

/// The options of a snapshotter's mounts, read as a read-only mount for comparing needs
/// them: flags kept (and the mount still read-only), containerd's internal `X-containerd.*`
/// options refused, what only a writable or an id-mapped overlay needs left out.
#[test]
fn mount_options_are_kept_refused_or_left_out_as_a_read_only_mount_needs() {
    let trees = changed_trees();
    let temp = tempfile::tempdir().unwrap();
    let mut flagged = bind(&trees.upper, "rw");
    flagged
        .options
        .extend(["nosuid".to_string(), "nodev".to_string()]);
    let mounted = TempMount::read_only(&[flagged], temp.path()).unwrap();
    let path = mounted.path().to_path_buf();
    let options = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|line| line.split(' ').nth(4) == Some(path.display().to_string().as_str()))
        .and_then(|line| line.split(' ').nth(5).map(str::to_string))
        .unwrap();
    assert!(
        options.split(',').any(|o| o == "ro") && options.contains("nosuid"),
        "{options}"
    );
    assert_eq!(
        fs::write(path.join("new"), "x").unwrap_err().raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    drop(mounted);

    let mut internal = bind(&trees.upper, "ro");
    internal
        .options
        .push("X-containerd.mkdir.path=/somewhere".to_string());
    let error = TempMount::read_only(&[internal], temp.path()).unwrap_err();
    assert_eq!(error.category, Category::InvalidArgument, "{error}");
    assert!(error.message.contains("internal option"), "{error}");

    // An overlay as the overlayfs snapshotter hands out an active snapshot, id-mapped: the
    // kernel knows neither uidmap nor gidmap, and a read-only mount has no upper.
    let work = temp.path().join("work");
    fs::create_dir(&work).unwrap();
    let overlay = Mount {
        mount_type: "overlay".to_string(),
        source: "overlay".to_string(),
        target: String::new(),
        options: vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", trees.upper.display()),
            format!("lowerdir={}", trees.lower.display()),
            "uidmap=0:1000:1".to_string(),
            "gidmap=0:1000:1".to_string(),
        ],
    };
    let mounted = TempMount::read_only(&[overlay], temp.path()).unwrap();
    assert_eq!(fs::read(mounted.path().join("new")).unwrap(), b"n");
    drop(mounted);
    assert!(mount_dirs(temp.path()).iter().all(|d| d == &work));
}

/// Overlay options up to one page less its NUL go to mount(2); one byte more is refused
/// with the reason (too many layers), not passed on for the kernel to cut.
#[test]
fn overlay_options_fill_one_page_and_no_more() {
    let temp = tempfile::tempdir().unwrap();
    let upper = temp.path().join("u");
    fs::create_dir(&upper).unwrap();
    fs::write(upper.join("f"), "f").unwrap();
    // A lower directory whose path makes `lowerdir=<upper>:<lower>` exactly `total` bytes.
    let lower_of = |total: usize, name: &str| -> PathBuf {
        let fixed = "lowerdir=".len() + upper.as_os_str().len() + 1;
        let mut lower = temp.path().join(name);
        // Whole 200-byte components while at least one byte would be left for the last.
        while lower.as_os_str().len() + 1 + 200 + 1 < total - fixed {
            lower.push("d".repeat(200));
        }
        let rest = total - fixed - lower.as_os_str().len() - 1;
        lower.push("e".repeat(rest));
        assert_eq!(fixed + lower.as_os_str().len(), total);
        fs::create_dir_all(&lower).unwrap();
        lower
    };
    let overlay = |lower: &Path| Mount {
        mount_type: "overlay".to_string(),
        source: "overlay".to_string(),
        target: String::new(),
        options: vec![
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}", lower.display()),
        ],
    };
    let mounts = temp.path().join("mounts");
    let fits = lower_of(4095, "fits");
    let mounted = TempMount::read_only(&[overlay(&fits)], &mounts).unwrap();
    assert_eq!(fs::read(mounted.path().join("f")).unwrap(), b"f");
    drop(mounted);
    let over = lower_of(4096, "over");
    let error = TempMount::read_only(&[overlay(&over)], &mounts).unwrap_err();
    assert_eq!(error.category, Category::Unimplemented, "{error}");
    assert!(
        error.message.contains("more than mount(2) takes"),
        "{error}"
    );
}

/// A mount something still uses (a file open in it) is unmounted after the retries
/// (50 × 50 ms, as containerd), then detached: dropping it never hangs, and what holds the
/// file keeps reading it.
#[test]
fn a_busy_mount_is_detached_after_the_retries() {
    let trees = changed_trees();
    let temp = tempfile::tempdir().unwrap();
    let mounted = TempMount::read_only(&[bind(&trees.upper, "rw")], temp.path()).unwrap();
    let path = mounted.path().to_path_buf();
    let mut held = fs::File::open(path.join("new")).unwrap();
    let dropped = std::time::Instant::now();
    drop(mounted);
    // containerd's 50 retries, 50 ms apart, came first: detaching is the last resort.
    assert!(
        dropped.elapsed() >= Duration::from_millis(50 * 49),
        "detached after {:?}, before the retries",
        dropped.elapsed()
    );
    assert!(!is_mounted(&path), "still mounted");
    let mut content = String::new();
    std::io::Read::read_to_string(&mut held, &mut content).unwrap();
    assert_eq!(content, "n");
}

#[test]
fn a_mount_directory_name_left_by_another_process_is_passed_over() {
    // Whatever this process's counter has reached, the next names are taken.
    let trees = changed_trees();
    let temp = tempfile::tempdir().unwrap();
    for n in 0..2000 {
        fs::create_dir(
            temp.path()
                .join(format!("mount-{}-{n}", std::process::id())),
        )
        .unwrap();
    }
    let mounted = TempMount::read_only(&[bind(&trees.upper, "rw")], temp.path()).unwrap();
    assert!(is_mounted(mounted.path()));
    assert!(mounted.path().join("new").is_file());
    mounted.unmount().unwrap();
}

#[test]
fn an_empty_lower_mount_set_is_an_empty_tree_and_mount_errors_name_the_mount() {
    let trees = changed_trees();
    let temp = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    let stats = diff_mounts(
        &[],
        &[bind(&trees.upper, "rw")],
        temp.path(),
        MEDIA_TYPE_LAYER,
        &WriteDiffOptions::default(),
        &mut out,
    )
    .unwrap();
    assert_eq!(stats.diff.deleted, 0);
    assert!(lines(&read_tar(&out)).contains(&"- new"));

    let missing = bind(&trees.upper.join("missing"), "ro");
    let error = diff_mounts(
        &[bind(&trees.lower, "ro")],
        &[missing],
        temp.path(),
        MEDIA_TYPE_LAYER,
        &WriteDiffOptions::default(),
        Vec::new(),
    )
    .unwrap_err();
    assert!(
        error.message.contains("bind mount of") && error.message.contains("missing"),
        "{error}"
    );
    let tmpfs = Mount {
        mount_type: "tmpfs".to_string(),
        source: "tmpfs".to_string(),
        target: String::new(),
        options: vec![],
    };
    let error = TempMount::read_only(&[tmpfs], temp.path()).unwrap_err();
    assert_eq!(error.category, Category::Unimplemented);
    assert!(mount_dirs(temp.path()).is_empty(), "mount directories left");
}

#[test]
fn an_overlay_upper_is_compared_through_the_overlay() {
    // An overlay snapshot as the overlayfs snapshotter lays it out: a parent layer, an
    // upper and a work directory; changes made through a writable mount of it, so that the
    // upper holds overlay's own forms (a 0/0 device for a deletion, an opaque directory).
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    assert_ne!(
        Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(root)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap(),
        "overlayfs",
        "the temporary directory must not be on overlay for this test"
    );
    let parent = root.join("parent");
    let (upper, work, merged) = (root.join("upper"), root.join("work"), root.join("merged"));
    for dir in [&parent, &upper, &work, &merged] {
        fs::create_dir(dir).unwrap();
    }
    base(&parent);
    fix_times(&parent);
    let options = vec![
        format!("lowerdir={}", parent.display()),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    let data = std::ffi::CString::new(options.join(",")).unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        data.as_c_str(),
    )
    .expect("this test needs overlay (run as root on a kernel with overlayfs)");
    let changed = (|| -> std::io::Result<()> {
        fs::write(merged.join("etc/hosts"), "changed")?;
        fs::remove_file(merged.join("etc/passwd"))?;
        fs::remove_dir_all(merged.join("var/lib"))?;
        fs::create_dir(merged.join("var/lib"))?;
        fs::write(merged.join("var/lib/fresh"), "f")?;
        fs::write(merged.join("new"), "n")?;
        Ok(())
    })();
    rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()).unwrap();
    changed.unwrap();
    fix_times(&upper);

    let overlay = Mount {
        mount_type: "overlay".to_string(),
        source: "overlay".to_string(),
        target: String::new(),
        options,
    };
    let mut out = Vec::new();
    diff_mounts(
        &[bind(&parent, "ro")],
        std::slice::from_ref(&overlay),
        &root.join("mounts"),
        MEDIA_TYPE_LAYER,
        &WriteDiffOptions::default(),
        &mut out,
    )
    .unwrap();
    // var/lib was replaced by a new directory: its old children are deleted one by one (the
    // walk compares the merged trees), the new child added.
    assert_eq!(
        lines(&read_tar(&out)),
        [
            "d etc/",
            "- etc/hosts",
            "- etc/.wh.passwd",
            "- new",
            "d var/",
            "d var/lib/",
            "- var/lib/.wh.deep",
            "- var/lib/fresh",
            "- var/lib/.wh.state",
        ]
    );
    assert!(mount_dirs(&root.join("mounts")).is_empty());

    // While mounted read-only, the overlay refuses writes.
    let mounted = TempMount::read_only(&[overlay], &root.join("mounts")).unwrap();
    assert_eq!(fs::read(mounted.path().join("new")).unwrap(), b"n");
    let error = fs::write(mounted.path().join("x"), "x").unwrap_err();
    assert_eq!(
        error.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    mounted.unmount().unwrap();
    assert!(mount_dirs(&root.join("mounts")).is_empty());
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Change>();
    send_sync::<DiffStats>();
    send_sync::<LayerStats>();
    send_sync::<CompareRequest>();
    send_sync::<Descriptor>();
    send_sync::<TempMount>();
    send_sync::<Compression>();
}

#[test]
fn unix_time_splits_times_before_the_epoch() {
    assert_eq!(unix_time(UNIX_EPOCH + Duration::new(5, 7)), (5, 7));
    assert_eq!(
        unix_time(UNIX_EPOCH - Duration::new(1, 500_000_000)),
        (-2, 500_000_000)
    );
    assert_eq!(unix_time(UNIX_EPOCH - Duration::from_secs(3)), (-3, 0));
}

#[test]
fn metadata_helpers_see_what_the_tests_set() {
    // Guards the fixtures: fix_times leaves whole seconds, cp -a keeps them and the xattrs.
    let trees = Trees::new(|l| {
        write(l, "f", "x", 0o644);
        set_xattr(l, "f", "user.k", b"v");
    });
    let metadata = fs::symlink_metadata(trees.upper.join("f")).unwrap();
    assert_eq!((metadata.mtime(), metadata.mtime_nsec()), (FIXED_TIME, 0));
    assert_eq!(
        xattrs(&trees.upper.join("f")).unwrap(),
        BTreeMap::from([(b"user.k".to_vec(), b"v".to_vec())])
    );
}
