//! `plinthd`: the daemon, and its offline commands for config and plugins.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plinthd::setup::Options;

/// Plinth's daemon: containerd's gRPC API on a unix socket, built from plugins.
#[derive(Debug, Parser)]
#[command(
    name = "plinthd",
    version,
    about = "Plinth's reference daemon: containerd's content, snapshots and metadata services over gRPC"
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration: defaults, effective config, migration, validation
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The plugins of this build, without starting them
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the full default config of the plugins compiled in
    Default,
    /// Print the effective config: files, imports, flags and defaults merged
    Dump,
    /// Print an older config file as the current version, with only the keys it sets
    Migrate {
        /// The file to migrate
        file: PathBuf,
    },
    /// Validate without starting: every check a start makes before it initialises plugins
    Check,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List every plugin: init order, type, id, enabled or disabled, requires
    Ls {
        /// Print only the URIs
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the dependency graph
    Graph {
        /// Output format (only dot)
        #[arg(long, default_value = "dot", value_parser = ["dot"])]
        format: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.options),
        Some(command) => offline(command, &cli.options).map(|text| {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(text.as_bytes());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plinthd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn offline(command: Command, options: &Options) -> anyhow::Result<String> {
    use plinthd::commands;
    match command {
        Command::Config(ConfigCommand::Default) => commands::config_default(),
        Command::Config(ConfigCommand::Dump) => commands::config_dump(options),
        Command::Config(ConfigCommand::Migrate { file }) => commands::config_migrate(&file),
        Command::Config(ConfigCommand::Check) => commands::config_check(options),
        Command::Plugins(PluginsCommand::Ls { quiet }) => commands::plugins_ls(options, quiet),
        Command::Plugins(PluginsCommand::Graph { .. }) => commands::plugins_graph(options),
    }
}

fn run(options: &Options) -> anyhow::Result<()> {
    // Logging starts from the flags and the config's [debug] before plugin libraries are
    // loaded, so that the loader's lines reach the log.
    // A level or format outside its set is left to the config checks that follow, which
    // name the file and line; logging then never starts, as nothing runs.
    let prepared = plinthd::setup::prepare_then(options, |config| {
        let _ = plinthd::logging::init(&config.debug.level, &config.debug.format);
    })?;
    plinthd::server::serve(prepared)
}
