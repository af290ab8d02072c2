//! A plugin library for the end-to-end tests whose plugin panics in its init: the loader's
//! wrapper catches it in the library, and the plugin ends failed.

use plinth_core::{InitContext, InitError, Instance, Registration, register};

fn init(_: &mut InitContext) -> Result<Instance, InitError> {
    panic!("io.plinth.example.v1.panics-in-init gave up")
}

register!(Registration::new(
    "io.plinth.example.v1",
    "panics-in-init",
    init
));

plinth_dynamic_loader::export_plugins!();
