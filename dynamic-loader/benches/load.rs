//! Discovery and loading of 100 plugin libraries: `load_dir` on a directory holding 100
//! copies of `examples/bench_plugin.rs` under 100 names.
//!
//! Each copy is its own file (own inode), so the dynamic linker maps each one separately and
//! each hands over its own copy of the same registration: the first library loads, the 99
//! others fail as duplicates of it. That is the whole path — permission checks, `dlopen`,
//! entry symbol, magic, ABI version, fingerprint, handover, validation, duplicate check —
//! for every library. Libraries are never unloaded and `dlopen` of an already-loaded file
//! returns the same handle, so a repeated pass no longer maps anything: the bench first
//! times 10 cold passes, each on fresh copies (printed on stdout, before criterion's
//! output), then lets criterion measure the warm path (everything but the mapping) on one
//! directory.
//!
//! The plugin library is built first with `cargo build --profile bench --example
//! bench_plugin`, the same profile and features as this bench, so that its fingerprint
//! matches (`cargo bench` does not build examples).

#![allow(missing_docs)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};

const N_LIBRARIES: usize = 100;

fn build_plugin() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(env!("CARGO"))
        .current_dir(manifest)
        .args([
            "build",
            "--quiet",
            "--profile",
            "bench",
            "-p",
            "plinth-dynamic-loader",
            "--example",
            "bench_plugin",
        ])
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the bench plugin failed");
    // target/release/deps/load-<hash> → target/release/examples/
    let exe = std::env::current_exe().expect("bench executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let name = format!(
        "{}bench_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = profile_dir.join("examples").join(name);
    assert!(path.exists(), "{} missing", path.display());
    path
}

fn populate(dir: &Path, library: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for i in 0..N_LIBRARIES {
        let path = dir.join(plinth_dynamic_loader::library_file_name(&format!(
            "bench{i:03}"
        )));
        std::fs::copy(library, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn check(report: &plinth_dynamic_loader::LoadReport) {
    assert_eq!(report.loaded.len(), 1, "{report:#?}");
    assert_eq!(report.failed.len(), N_LIBRARIES - 1);
    for failed in &report.failed {
        assert!(
            matches!(
                failed.error,
                plinth_dynamic_loader::LoadError::Duplicate { .. }
            ),
            "{failed:?}"
        );
    }
}

/// Cold passes: each on a fresh directory of fresh copies (new inodes), so the dynamic
/// linker maps every library anew.
const COLD_PASSES: usize = 10;

fn bench(c: &mut Criterion) {
    let library = build_plugin();
    let tmp = tempfile::tempdir().unwrap();

    let mut cold = Vec::new();
    for pass in 0..COLD_PASSES {
        let dir = tmp.path().join(format!("cold{pass}"));
        populate(&dir, &library);
        let started = Instant::now();
        let report = plinth_dynamic_loader::load_dir(&dir, &[]);
        cold.push(started.elapsed());
        check(&report);
    }
    cold.sort();
    // On stdout, before criterion's report, so that ./scripts/bench.sh's sheet carries it.
    let _ = writeln!(
        std::io::stdout(),
        "cold load_dir of {N_LIBRARIES} libraries, {COLD_PASSES} passes: median {:.2?} \
         (min {:.2?}, max {:.2?}); {:.0?} per library",
        cold[COLD_PASSES / 2],
        cold[0],
        cold[COLD_PASSES - 1],
        cold[COLD_PASSES / 2] / N_LIBRARIES as u32
    );

    let dir = tmp.path().join("cold0");
    c.bench_function("load_dir/100 libraries, already mapped", |b| {
        b.iter(|| {
            let report = plinth_dynamic_loader::load_dir(&dir, &[]);
            assert_eq!(report.failed.len(), N_LIBRARIES - 1);
            report
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
