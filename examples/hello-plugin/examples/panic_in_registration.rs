//! A bad plugin library for the end-to-end tests: its config type's `Default` panics, so
//! handing over its registration (which builds the default config once) panics.

use plinth_core::{InitContext, InitError, Instance, Registration, register};

#[derive(serde::Serialize, serde::Deserialize)]
struct Config {
    value: u32,
}

impl Default for Config {
    fn default() -> Self {
        panic!("the default config of io.plinth.example.v1.panicky cannot be built")
    }
}

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

register!(Registration::new("io.plinth.example.v1", "panicky", init).config::<Config>());

plinth_dynamic_loader::export_plugins!();
