//! The layer applier, on the hostile input it exists for. The first byte of the input picks
//! how the rest is applied (bits 0–1: sent as a plain tar, gzip- or zstd-compressed by this
//! target, or as raw bytes that claim to be gzip; bit 2: the overlay form of whiteouts); the
//! rest is the tar stream. It is applied into `root/`, which an earlier layer has left with
//! a file, a directory and two symlinks out to `outside/` beside it (`abs`, by its absolute
//! path; `rel`, as `../outside`), where one file lies.
//!
//! Properties: no panic; whatever the layer says, nothing but `root/` changes: `outside/`
//! holds exactly its file with its bytes, and the temporary directory holds nothing else.
//! (Run it confined, as `scripts/fuzz.sh` does: a bug here could write anywhere, and the
//! check sees only the temporary directory, which is why both links lead into it.)

use std::io::{Cursor, Write};
use std::path::Path;

use plinth_builtin_plugins::differ::apply::{ApplyOptions, Limits, Whiteouts, apply};

const SENTINEL: &[u8] = b"outside the root";

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, layer)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("etc")).expect("root/etc");
    std::fs::write(root.join("etc/passwd"), b"root:x:0:0").expect("root/etc/passwd");
    std::os::unix::fs::symlink(&outside, root.join("abs")).expect("root/abs");
    std::os::unix::fs::symlink("../outside", root.join("rel")).expect("root/rel");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("file"), SENTINEL).expect("outside/file");

    let (bytes, media_type) = match mode & 3 {
        0 => (layer.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        1 => (gzip(layer), "application/vnd.oci.image.layer.v1.tar+gzip"),
        2 => (
            zstd::encode_all(layer, 1).expect("zstd in memory"),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        _ => (
            layer.to_vec(),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
    };
    let options = ApplyOptions {
        whiteouts: if mode & 4 == 0 {
            Whiteouts::Native
        } else {
            Whiteouts::Overlay
        },
        limits: Limits {
            max_uncompressed_size: 16 << 20,
            max_entries: 10_000,
        },
        ..ApplyOptions::default()
    };
    let _ = apply(Cursor::new(bytes), media_type, &root, &options);

    assert_eq!(names(dir.path()), ["outside", "root"], "beside the root");
    assert_eq!(names(&outside), ["file"], "in outside/");
    let meta = std::fs::symlink_metadata(outside.join("file")).expect("outside/file");
    assert!(meta.is_file(), "outside/file is no longer a file");
    assert_eq!(
        std::fs::read(outside.join("file")).expect("outside/file"),
        SENTINEL
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing")
        .map(|entry| {
            entry
                .expect("listing")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
