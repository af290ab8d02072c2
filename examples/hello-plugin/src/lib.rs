//! An example plugin library: one plugin, `io.plinth.example.v1.hello`, registered with the
//! same `register!` as built-in plugins and exported with
//! `plinth_dynamic_loader::export_plugins!()`.
//!
//! It requires the content store, gets it typed (`Arc<dyn ContentStore>`, and the local
//! store's own type for its root directory), and exports what it found, plus its configured
//! greeting, for `ctr plugins ls -d` to show.
//!
//! Build it with the host and install it under the name for this platform:
//!
//! ```sh
//! cargo build -p plinthd --features dynamic-loader -p hello-plugin
//! install -m 0644 target/debug/libhello_plugin.so /var/lib/plinth/plugins/hello-linux-x86_64.so
//! ```

use std::sync::Arc;

use plinth_builtin_plugins::content::ContentStore;
use plinth_builtin_plugins::content::local::LocalStore;
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

/// `[plugins."io.plinth.example.v1.hello"]`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Config {
    /// What the plugin exports as `greeting`.
    pub greeting: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            greeting: "hello from a plugin library".to_string(),
        }
    }
}

/// What the plugin is: its greeting and the content store root it found.
#[derive(Debug)]
pub struct Hello {
    /// The configured greeting.
    pub greeting: String,
    /// The content store's root directory.
    pub content_root: String,
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<Config>()?;
    // The trait object: the view every content store offers.
    let _store: Arc<dyn ContentStore> = ctx.get_single(types::CONTENT)?;
    // The local store's own type, for a synchronous fact about it. (The store's trait
    // methods are async and run on the host's tokio runtime, which this library's copy of
    // tokio cannot see: a plugin library uses synchronous APIs at init.)
    let local: Arc<LocalStore> = ctx.get_single(types::CONTENT)?;
    let hello = Hello {
        greeting: config.greeting.clone(),
        content_root: local.root().display().to_string(),
    };
    let exports = &mut ctx.meta_mut().exports;
    exports.insert("greeting".to_string(), hello.greeting.clone());
    exports.insert("content_root".to_string(), hello.content_root.clone());
    Ok(Instance::new(Arc::new(hello)))
}

register!(
    Registration::new("io.plinth.example.v1", "hello", init)
        .requires(&[types::CONTENT])
        .config::<Config>()
);

plinth_dynamic_loader::export_plugins!();
