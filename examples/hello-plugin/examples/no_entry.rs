//! A bad plugin library for the end-to-end tests: it registers a plugin but forgets
//! `export_plugins!()`, so it has no entry symbol.

use plinth_core::{InitContext, InitError, Instance, Registration, register};

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

register!(Registration::new("io.plinth.example.v1", "forgotten", init));
