//! Every input of every target's corpus (`fuzz/corpus/<target>/`: the seeds, and what
//! fuzzing found, kept as regressions) run once, without fuzzing: what was fixed stays fixed.

use std::path::{Path, PathBuf};

fn corpus(name: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target ships a corpus)", dir.display()))
        .map(|entry| entry.expect("listing the corpus").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: an empty corpus", dir.display());
    inputs
}

fn run_corpus(name: &str) {
    let target = plinth_fuzz::target(name).expect("a target of that name");
    for input in corpus(name) {
        let data = std::fs::read(&input).expect("reading an input");
        let outcome = std::panic::catch_unwind(|| (target.run)(&data));
        assert!(
            outcome.is_ok(),
            "{} failed its property (run it again: cargo test -p plinth-fuzz --test corpora {name})",
            input.display()
        );
    }
}

#[test]
fn config() {
    run_corpus("config");
}

#[test]
fn filters() {
    run_corpus("filters");
}

#[test]
fn identifiers() {
    run_corpus("identifiers");
}

#[test]
fn elf() {
    run_corpus("elf");
}

#[test]
fn services() {
    run_corpus("services");
}

#[test]
fn layer() {
    run_corpus("layer");
}

#[test]
fn every_target_has_a_test_here() {
    let source = include_str!("corpora.rs");
    for target in plinth_fuzz::TARGETS {
        assert!(
            source.contains(&format!(
                "fn {}() {{\n    run_corpus(\"{}\");",
                target.name, target.name
            )),
            "target {} has no corpus test",
            target.name
        );
    }
}
