//! Plinth's fuzz targets: hostile bytes into every place a daemon reads what others wrote.
//!
//! Each target is a function from bytes to nothing that must never panic, whatever the
//! bytes, and that checks a property of what it ran (each module's docs say which):
//!
//! | target | what the bytes become |
//! |---|---|
//! | `config` | a config file (and a second one it may import): plinthd's whole preparation |
//! | `filters` | containerd filter expressions, parsed and matched |
//! | `identifiers` | namespace names, digests, refs, snapshot keys, labels, lease ids, topics |
//! | `elf` | a library file, through the dynamic loader's ELF check |
//! | `services` | gRPC calls, raw protobuf, into an in-process plinthd over its socket |
//! | `layer` | a layer (plain, gzip or zstd) applied into a directory that must be all it changes |
//!
//! Each has a seed corpus under `fuzz/corpus/<target>/`, and what fuzzing found stays there
//! as a regression input: `tests/corpora.rs` runs every file of every corpus as an ordinary
//! test. `scripts/fuzz.sh TARGET SECONDS` fuzzes one with AFL++ (`fuzz/afl`, kept out of the
//! workspace so the build never needs AFL).
//!
//! ```no_run
//! let layer = plinth_fuzz::target("layer").expect("a target of that name");
//! (layer.run)(b"\x00not a tar stream");
//! ```

pub mod config;
pub mod elf;
pub mod filters;
pub mod identifiers;
pub mod layer;
pub mod services;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: the directory of its corpus under `fuzz/corpus/`.
    pub name: &'static str,
    /// Runs one input; panics only when the property is broken.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        run: config::run,
    },
    Target {
        name: "filters",
        run: filters::run,
    },
    Target {
        name: "identifiers",
        run: identifiers::run,
    },
    Target {
        name: "elf",
        run: elf::run,
    },
    Target {
        name: "services",
        run: services::run,
    },
    Target {
        name: "layer",
        run: layer::run,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}
