//! The config loader, the whole way a start takes it: the input up to its first NUL byte is
//! `config.toml`, the rest `imported.toml` (which the first may import by that name), and
//! plinthd prepares a start from them: TOML parsing, imports, migration from config
//! versions 1 and 2, resolution of every plugin's section against this build's registry,
//! the plugin graph, and the checks a start makes before it creates anything (with root,
//! state and socket in a temporary directory, as the command-line flags set them).
//!
//! Properties: no panic; a refusal says what is wrong. Inputs that import by an absolute
//! or parent path are skipped: the loader would read the host's files, which is what an
//! import is for, not something a fuzzer should do.

use plinthd::setup::{Options, check_startable, prepare};

/// Runs one input.
pub fn run(data: &[u8]) {
    if reaches_out(data) {
        return;
    }
    let (main, imported) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, main).expect("writing config.toml");
    std::fs::write(dir.path().join("imported.toml"), imported).expect("writing imported.toml");
    let options = Options {
        config: Some(config),
        address: Some(dir.path().join("s").display().to_string()),
        root: Some(dir.path().join("root")),
        state: Some(dir.path().join("state")),
        log_level: None,
        strict: data.len() % 2 == 1,
        blocking_threads: None,
        read_threads: None,
        ingest_threads: None,
        list_inline: None,
        worker_threads: None,
        blocking_nice: None,
    };
    let outcome = prepare(&options).and_then(|prepared| check_startable(&prepared));
    if let Err(error) = outcome {
        assert!(
            !format!("{error:#}").is_empty(),
            "a refusal that says nothing"
        );
    }
}

/// Whether the input could make the loader read outside its directory: an import (or a
/// key that may spell one with escapes) next to an absolute path, a parent path or an
/// escape.
fn reaches_out(data: &[u8]) -> bool {
    let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    (has(b"import") || has(b"\\")) && (has(b"/") || has(b"..") || has(b"\\") || has(b"~"))
}
