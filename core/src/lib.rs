//! Plinth's plugin model: plugins that register themselves at link time, are ordered by what
//! they require, configured by typed TOML sections, and initialised in order.
//!
//! A plugin in ten lines:
//!
//! ```
//! use plinth_core::{register, InitContext, InitError, Instance, Registration};
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Config { greeting: String }
//!
//! fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
//!     let config = ctx.config::<Config>()?;
//!     Ok(Instance::new(std::sync::Arc::new(format!("{} from {}", config.greeting, ctx.uri()))))
//! }
//!
//! register!(Registration::new("io.example.greeter.v1", "hello", init).config::<Config>());
//! # let registry = plinth_core::Registry::from_link_time().unwrap();
//! # assert!(registry.get("io.example.greeter.v1.hello").is_some());
//! ```
//!
//! A host then builds the registry, loads the config, orders the graph and initialises:
//!
//! ```
//! use plinth_core::{config::ConfigLoader, init_plugins, InitOptions, PluginGraph, Registry};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::from_link_time().map_err(|errors| format!("{errors:?}"))?;
//! let config = ConfigLoader::new(&registry).defaults().resolve(&registry, false)?;
//! let registrations: Vec<_> = registry.registrations().copied().collect();
//! let graph = PluginGraph::build(&registrations, &config.disable_filter())?;
//! let plugins = init_plugins(&registry, &graph, InitOptions {
//!     configs: config.plugin_configs.clone(),
//!     ..InitOptions::default()
//! })?;
//! for plugin in plugins.plugins() {
//!     println!("{} {}", plugin.uri(), plugin.status());
//! }
//! plugins.close();
//! # Ok(()) }
//! ```
//!
//! # Modules
//! - [`registration`]: [`Registration`], built in `const` context.
//! - [`registry`]: the [`register!`] macro and merging of link-time, dynamic and proxy
//!   registrations into one [`Registry`].
//! - [`graph`]: ordering ([`PluginGraph`]) with containerd's semantics, cycles, DOT.
//! - [`config`]: TOML config versions 1–3, imports, typed plugin sections, strict mode.
//! - [`init`]: [`InitContext`], [`Instance`], the plugin [`Set`] and [`init_plugins`].
//! - [`reload`]: live reconfiguration: the plan (what a new config would reconfigure,
//!   restart, start and stop, and why) and applying it all or nothing ([`reload::stage`],
//!   then commit, then the old instances closed once no call holds them).
//! - [`types`]: plugin type constants.
//!
//! # Feature flags
//!
//! | feature | default | what it does |
//! |---|---|---|
//! | `linkme` | no | `register!` uses `linkme` distributed slices (no code before `main`) instead of `inventory` |
//!
//! # Rules this crate keeps
//! - Bad registrations and bad config are errors, never panics.
//! - The init order is deterministic: the same registrations and config give the same order.
//! - It knows nothing of gRPC, async runtimes, storage or shared libraries.

pub mod config;
pub mod error;
pub mod graph;
pub mod init;
pub mod registration;
pub mod registry;
pub mod reload;
pub mod types;

pub use crate::error::{Category, CycleError, RegistrationError, StartupError};
pub use crate::graph::{DisableFilter, PluginGraph};
pub use crate::init::{
    InitContext, InitError, InitOptions, Instance, LookupError, Meta, Plugin, Set, Status,
    check_required, init_plugins,
};
pub use crate::registration::{PluginConfig, Registration};
pub use crate::registry::{Registry, Source};

#[doc(hidden)]
pub mod __private {
    pub use crate::registry::private::*;
}
