//! AFL++'s harness for Plinth's fuzz targets (`plinth_fuzz::TARGETS`): the target is named
//! by `PLINTH_FUZZ_TARGET`. Run it through `scripts/fuzz.sh TARGET SECONDS`.

fn main() {
    let name = std::env::var("PLINTH_FUZZ_TARGET").unwrap_or_default();
    let Some(target) = plinth_fuzz::target(&name) else {
        let names: Vec<&str> = plinth_fuzz::TARGETS.iter().map(|t| t.name).collect();
        eprintln!(
            "PLINTH_FUZZ_TARGET={name:?} names no target: use one of {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
}
