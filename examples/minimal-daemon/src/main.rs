//! A minimal daemon assembled from Plinth in a page: the plugin core, two built-in plugins
//! chosen by Cargo feature (the local content store and introspection, see Cargo.toml), and
//! one plugin of its own. It serves containerd's introspection API on a unix socket, so
//! `ctr --address <socket> plugins ls` lists exactly these three plugins, and
//! `ctr --address <socket> plugins ls -d id==hello` shows the greeter's greeting and blob count.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use plinth_builtin_plugins::content::ContentStore;
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

/// This daemon's own plugin: it needs the content store and says, in its exports, how many
/// blobs the store held when the daemon started.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct GreeterConfig {
    /// Shown in the plugin's exports.
    greeting: String,
}

fn greeter(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<GreeterConfig>()?;
    let store: Arc<dyn ContentStore> = ctx.get_single(types::CONTENT)?;
    // Init runs off the async runtime; the daemon hands plugins its handle to wait on it.
    let runtime = ctx
        .extension::<tokio::runtime::Handle>()
        .cloned()
        .ok_or_else(|| InitError::msg("the greeter needs the daemon's tokio runtime"))?;
    let blobs = runtime.block_on(store.walk(&[]))?.len();
    let exports = &mut ctx.meta_mut().exports;
    exports.insert("greeting".into(), config.greeting.clone());
    exports.insert("blobs".into(), blobs.to_string());
    Ok(Instance::new(store))
}

register!(
    Registration::new("io.example.greeter.v1", "hello", greeter)
        .requires(&[types::CONTENT])
        .config::<GreeterConfig>()
);

/// A minimal Plinth daemon: content store, introspection and a greeter.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    options: plinthd::setup::Options,
}

fn main() -> ExitCode {
    // Keep the built-in plugin crate linked: its registrations live in it.
    plinth_builtin_plugins::link();
    let cli = Cli::parse();
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let prepared = plinthd::setup::prepare(&cli.options)?;
        plinthd::logging::init(
            &prepared.config.config.debug.level,
            &prepared.config.config.debug.format,
        )?;
        plinthd::server::serve(prepared)?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("minimal-daemon: {error}");
            ExitCode::FAILURE
        }
    }
}
