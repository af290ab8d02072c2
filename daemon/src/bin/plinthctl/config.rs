//! `plinthctl config`: live reloads of the daemon's config (plinthd's own config service;
//! containerd has none).

use std::fmt::Write as _;
use std::time::Duration;

use clap::Subcommand;
use plinth_api::plinth::services::config::v1::config_client::ConfigClient;
use plinth_api::plinth::services::config::v1::{GenerationRequest, ReloadRequest, ReloadResponse};
use plinthd::client::{Client, status_error};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Read the config again and apply what changed, without a restart (as SIGHUP does);
    /// prints the plan and the outcome
    Reload {
        /// Print what would be reconfigured, restarted, started and stopped, and why;
        /// change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// The running config generation (1 from start-up, one more per applied reload) and
    /// when it was applied
    Generation,
}

pub(crate) async fn run(client: &Client, command: ConfigCommand) -> anyhow::Result<String> {
    let mut api = ConfigClient::new(client.channel());
    match command {
        ConfigCommand::Reload { dry_run } => {
            let response = api
                .reload(client.request(ReloadRequest { dry_run })?)
                .await
                .map_err(status_error)?
                .into_inner();
            Ok(describe(&response, dry_run))
        }
        ConfigCommand::Generation => {
            let response = api
                .generation(client.request(GenerationRequest {})?)
                .await
                .map_err(status_error)?
                .into_inner();
            let applied = response
                .applied_at
                .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
                .map_or_else(|| "-".to_string(), |t| t.to_string());
            Ok(format!(
                "generation {} applied at {applied}\n",
                response.generation
            ))
        }
    }
}

/// The plan, one line per step, its notes, and the outcome.
fn describe(response: &ReloadResponse, dry_run: bool) -> String {
    let mut out = String::new();
    if response.steps.is_empty() {
        out.push_str("nothing changes\n");
    }
    for step in &response.steps {
        let _ = writeln!(
            out,
            "{} {}: {}",
            step.action,
            step.uri,
            step.reasons.join("; ")
        );
    }
    for note in &response.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let micros = |us: u64| Duration::from_micros(us);
    if dry_run {
        let _ = writeln!(
            out,
            "dry run: nothing applied; generation {} is running",
            response.generation
        );
    } else if response.applied {
        let _ = writeln!(
            out,
            "applied: generation {} serving after {:?}; replaced instances closed {:?} later",
            response.generation,
            micros(response.serving_after_us),
            micros(response.retired_after_us)
        );
        if !response.still_in_use.is_empty() {
            let _ = writeln!(
                out,
                "warning: closed while calls still held them (drain time-out): {}",
                response.still_in_use.join(", ")
            );
        }
    } else {
        let _ = writeln!(
            out,
            "nothing to apply; generation {} is running",
            response.generation
        );
    }
    out
}
