//! A bad plugin library for the end-to-end tests: it registers its own plugin under the URI
//! of plinthd's built-in content store.

use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Config {
    imposter: bool,
}

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

register!(Registration::new(types::CONTENT, "content", init).config::<Config>());

plinth_dynamic_loader::export_plugins!();
