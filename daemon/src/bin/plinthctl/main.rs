//! `plinthctl`: Plinth's own client for plinthd's (containerd's) API, for systems without `ctr`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use plinth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use plinth_api::containerd::services::introspection::v1::{Plugin, PluginsRequest};
use plinth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use plinth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use plinth_api::containerd::services::version::v1::version_client::VersionClient;
use plinthd::client::{Client, error_text, status_error};
use plinthd::commands::table;
use plinthd::paths::Defaults;

mod config;
mod content;
mod gc;
mod snapshots;

/// Plinth's client for a running plinthd: plugins, version, namespaces, content, snapshots,
/// config reloads, garbage collection.
#[derive(Debug, Parser)]
#[command(
    name = "plinthctl",
    version,
    about = "Plinth's client for a running plinthd (or containerd): plugins, namespaces, content, snapshots, gc"
)]
struct Cli {
    /// Socket of the daemon [default: plinthd's default socket for this user]
    #[arg(short, long, global = true, env = "PLINTH_ADDRESS")]
    address: Option<String>,
    /// Namespace of the requests
    #[arg(
        short,
        long,
        global = true,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The daemon's plugins
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Client and server versions
    Version,
    /// The daemon's config: live reloads
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Namespaces
    #[command(subcommand, alias = "ns")]
    Namespaces(NamespacesCommand),
    /// Content: blobs and ingests
    #[command(subcommand)]
    Content(content::ContentCommand),
    /// Snapshots of one snapshotter
    #[command(alias = "snapshot")]
    Snapshots {
        /// The snapshotter
        #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
        snapshotter: String,
        #[command(subcommand)]
        command: snapshots::SnapshotsCommand,
    },
    /// Run a garbage collection now and print what it removed (plinthd only)
    Gc,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List plugins: TYPE, ID, PLATFORMS, STATUS (as `ctr plugins ls`)
    #[command(alias = "list")]
    Ls {
        /// Print only the ids
        #[arg(short, long)]
        quiet: bool,
        /// Print every detail of each plugin
        #[arg(short, long)]
        detailed: bool,
        /// Filters, e.g. type==io.containerd.grpc.v1 (any may match)
        filters: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum NamespacesCommand {
    /// List namespaces and their labels
    #[command(alias = "list")]
    Ls {
        /// Print only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create a namespace, with labels as key=value
    Create {
        /// The name
        name: String,
        /// Labels, key=value
        labels: Vec<String>,
    },
    /// Remove empty namespaces
    #[command(aliases = ["remove", "delete", "del"])]
    Rm {
        /// The names
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set labels (key=value) or remove them (key=)
    Label {
        /// The name
        name: String,
        /// Labels, key=value; an empty value removes the label
        labels: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(text) => {
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("plinthctl: {}", error_text(&error));
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("label {item:?} is not key=value"))
        })
        .collect()
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let address = cli
        .address
        .unwrap_or_else(|| Defaults::for_current_user().address.display().to_string());
    let client = Client::connect(&address, &cli.namespace).await?;
    match cli.command {
        Command::Plugins(PluginsCommand::Ls {
            quiet,
            detailed,
            filters,
        }) => {
            let mut api = IntrospectionClient::new(client.channel());
            let plugins = api
                .plugins(client.request(PluginsRequest { filters })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .plugins;
            Ok(if quiet {
                plugins.iter().map(|p| format!("{}\n", p.id)).collect()
            } else if detailed {
                detail(&plugins)
            } else {
                let rows: Vec<[String; 4]> = plugins
                    .iter()
                    .map(|p| {
                        [
                            p.r#type.clone(),
                            p.id.clone(),
                            platforms(p),
                            status(p).to_string(),
                        ]
                    })
                    .collect();
                table(&["TYPE", "ID", "PLATFORMS", "STATUS"], &rows)
            })
        }
        Command::Version => {
            let mut api = VersionClient::new(client.channel());
            let version = api
                .version(client.request(())?)
                .await
                .map_err(status_error)?
                .into_inner();
            let mut introspection = IntrospectionClient::new(client.channel());
            let server = introspection
                .server(client.request(())?)
                .await
                .map_err(status_error)?
                .into_inner();
            Ok(format!(
                "Client:\n  Version:  {}\n  Revision: {}\n\nServer:\n  Version:  {}\n  Revision: {}\n  UUID: {}\n",
                env!("CARGO_PKG_VERSION"),
                plinth_builtin_plugins::REVISION,
                version.version,
                version.revision,
                server.uuid
            ))
        }
        Command::Namespaces(command) => namespaces(&client, command).await,
        Command::Config(command) => config::run(&client, command).await,
        Command::Content(command) => content::run(&client, command).await,
        Command::Snapshots {
            snapshotter,
            command,
        } => snapshots::run(&client, &snapshotter, command).await,
        Command::Gc => gc::run(&client).await,
    }
}

/// Removes each of `names` with `remove` and prints the removed ones; when some could not be
/// removed, fails with the removed ones and then each other one with its reason.
pub(crate) async fn remove_each(
    names: Vec<String>,
    mut remove: impl AsyncFnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut failed = Vec::new();
    for name in names {
        match remove(&name).await {
            Ok(()) => {
                let _ = writeln!(out, "{name}");
            }
            Err(error) => failed.push(format!("{name}: {}", error_text(&error))),
        }
    }
    if !failed.is_empty() {
        bail!("{out}{}", failed.join("\n"));
    }
    Ok(out)
}

async fn namespaces(client: &Client, command: NamespacesCommand) -> anyhow::Result<String> {
    let mut api = NamespacesClient::new(client.channel());
    match command {
        NamespacesCommand::Ls { quiet } => {
            let list = api
                .list(client.request(ListNamespacesRequest {
                    filter: String::new(),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .namespaces;
            if quiet {
                return Ok(list.iter().map(|n| format!("{}\n", n.name)).collect());
            }
            let rows: Vec<[String; 2]> = list
                .iter()
                .map(|n| {
                    let labels: BTreeMap<_, _> = n.labels.iter().collect();
                    let text: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    [n.name.clone(), text.join(",")]
                })
                .collect();
            Ok(table(&["NAME", "LABELS"], &rows))
        }
        NamespacesCommand::Create { name, labels } => {
            let labels = parse_labels(&labels)?.into_iter().collect();
            api.create(client.request(CreateNamespaceRequest {
                namespace: Some(Namespace { name, labels }),
            })?)
            .await
            .map_err(status_error)?;
            Ok(String::new())
        }
        NamespacesCommand::Rm { names } => {
            remove_each(names, async |name| {
                let request = client.request(DeleteNamespaceRequest {
                    name: name.to_string(),
                })?;
                api.delete(request).await.map_err(status_error)?;
                Ok(())
            })
            .await
        }
        NamespacesCommand::Label { name, labels } => {
            let labels = parse_labels(&labels)?;
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            api.update(client.request(UpdateNamespaceRequest {
                namespace: Some(Namespace { name, labels }),
                update_mask: Some(prost_types::FieldMask { paths }),
            })?)
            .await
            .map_err(status_error)?;
            Ok(String::new())
        }
    }
}

fn platforms(plugin: &Plugin) -> String {
    if plugin.platforms.is_empty() {
        return "-".to_string();
    }
    let list: Vec<String> = plugin
        .platforms
        .iter()
        .map(|p| {
            let mut text = format!("{}/{}", p.os, p.architecture);
            if !p.variant.is_empty() {
                text = format!("{text}/{}", p.variant);
            }
            text
        })
        .collect();
    list.join(",")
}

fn status(plugin: &Plugin) -> &'static str {
    match &plugin.init_err {
        None => "ok",
        Some(e)
            if e.message
                .contains(plinth_builtin_plugins::grpc::SKIP_MARKER) =>
        {
            "skip"
        }
        Some(_) => "error",
    }
}

/// Every detail of each plugin, laid out as `ctr plugins ls -d` lays it out (Go's tabwriter
/// with padding 4): labels in one column as wide as the widest label, each plugin's export
/// keys in a column as wide as its widest key; a blank line between plugins. Unlike ctr,
/// exports are sorted and no line ends in spaces.
fn detail(plugins: &[Plugin]) -> String {
    let blocks: Vec<Vec<(&str, String)>> = plugins.iter().map(detail_lines).collect();
    let label_width = blocks
        .iter()
        .flatten()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        + 4;
    let blocks: Vec<String> = blocks
        .iter()
        .map(|lines| {
            lines
                .iter()
                .map(|(label, rest)| {
                    let line = format!("{label:<label_width$}{rest}");
                    format!("{}\n", line.trim_end())
                })
                .collect()
        })
        .collect();
    blocks.join("\n")
}

/// One plugin's lines as (label, what follows the label's column).
fn detail_lines(plugin: &Plugin) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("Type:", format!(" {}", plugin.r#type)),
        ("ID:", format!(" {}", plugin.id)),
    ];
    if !plugin.requires.is_empty() {
        lines.push(("Requires:", String::new()));
        for r in &plugin.requires {
            lines.push(("", format!(" {r}")));
        }
    }
    if !plugin.platforms.is_empty() {
        lines.push(("Platforms:", format!(" {}", platforms(plugin))));
    }
    if !plugin.exports.is_empty() {
        lines.push(("Exports:", String::new()));
        let exports: BTreeMap<_, _> = plugin.exports.iter().collect();
        // ctr's cell is " key " padded by 4: the value starts 6 columns after the widest key.
        let key_width = exports.keys().map(|k| k.len()).max().unwrap_or(0) + 5;
        for (k, v) in exports {
            lines.push(("", format!(" {k:<key_width$} {v}")));
        }
    }
    if !plugin.capabilities.is_empty() {
        lines.push((
            "Capabilities:",
            format!(" {}", plugin.capabilities.join(",")),
        ));
    }
    if let Some(error) = &plugin.init_err {
        lines.push(("Error:", String::new()));
        let code = tonic::Code::from_i32(error.code);
        lines.push(("", format!(" {:<12} {code:?}", "Code:")));
        lines.push(("", format!(" {:<12} {}", "Message:", error.message)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use plinth_api::containerd::types::Platform;

    use super::*;

    fn plugin(r#type: &str, id: &str) -> Plugin {
        Plugin {
            r#type: r#type.to_string(),
            id: id.to_string(),
            ..Plugin::default()
        }
    }

    /// Regression: `plugins ls -d` ran a long export key into its value
    /// (`content_sharing_policyshared`); ctr aligns each plugin's keys.
    #[test]
    fn detail_aligns_as_ctr_does() {
        let mut redb = plugin("io.containerd.metadata.v1", "redb");
        redb.requires = vec!["io.containerd.content.v1".to_string()];
        redb.exports = [
            ("path".to_string(), "/r/meta.db".to_string()),
            ("content_sharing_policy".to_string(), "shared".to_string()),
        ]
        .into();
        let mut native = plugin("io.containerd.snapshotter.v1", "native");
        native.platforms = vec![Platform {
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
            ..Platform::default()
        }];
        native.exports = [("root".to_string(), "/r/native".to_string())].into();
        let mut failed = plugin("io.containerd.internal.v1", "proxy-target");
        failed.capabilities = vec!["a".to_string(), "b".to_string()];
        failed.init_err = Some(plinth_api::google::rpc::Status {
            code: tonic::Code::Unknown as i32,
            message: "no address: skip plugin".to_string(),
            details: Vec::new(),
        });
        let cases: Vec<(Vec<Plugin>, &str)> = vec![
            (
                vec![redb.clone(), native.clone()],
                "\
Type:          io.containerd.metadata.v1
ID:            redb
Requires:
               io.containerd.content.v1
Exports:
               content_sharing_policy      shared
               path                        /r/meta.db

Type:          io.containerd.snapshotter.v1
ID:            native
Platforms:     linux/amd64
Exports:
               root      /r/native
",
            ),
            // A wider label widens the label column for every plugin, as in ctr.
            (
                vec![plugin("t", "plain"), failed],
                "\
Type:             t
ID:               plain

Type:             io.containerd.internal.v1
ID:               proxy-target
Capabilities:     a,b
Error:
                  Code:        Unknown
                  Message:     no address: skip plugin
",
            ),
            (Vec::new(), ""),
        ];
        for (plugins, expected) in cases {
            assert_eq!(detail(&plugins), expected);
        }
    }
}
