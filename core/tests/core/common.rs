//! Helpers shared by the tests: registrations with leaked `'static` strings.

use plinth_core::{InitContext, InitError, Instance, Registration};

/// Leaks a string: registrations hold `&'static str`, as link-time ones do.
pub(crate) fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// Leaks a list of strings.
pub(crate) fn leak_list(items: &[&str]) -> &'static [&'static str] {
    Box::leak(
        items
            .iter()
            .map(|s| leak(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn init_nothing(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

/// A registration that does nothing at init.
pub(crate) fn reg(plugin_type: &str, id: &str, requires: &[&str]) -> Registration {
    Registration::new(leak(plugin_type), leak(id), init_nothing).requires(leak_list(requires))
}

/// URIs of `registrations` in the order given by `indices`.
pub(crate) fn uris(registrations: &[Registration], indices: &[usize]) -> Vec<String> {
    indices.iter().map(|&i| registrations[i].uri()).collect()
}
