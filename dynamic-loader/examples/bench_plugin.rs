//! A minimal plugin library (one plugin, no dependencies beyond plinth-core), used by the
//! loading bench: `benches/load.rs` builds it with the bench's own profile and features, so
//! that its fingerprint matches the bench binary's.

use plinth_core::{InitContext, InitError, Instance, Registration, register};

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

register!(Registration::new("io.plinth.bench.v1", "bench", init));

plinth_dynamic_loader::export_plugins!();
