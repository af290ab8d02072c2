//! `plinthctl snapshots …`: prepare, view, mounts, commit, list, tree, usage, info, remove,
//! label — on the snapshotter named by `--snapshotter`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest,
    ViewSnapshotRequest,
};
use plinth_api::containerd::types::Mount;
use plinthd::client::{Client, status_error};
use plinthd::commands::table;

use crate::content::human;
use crate::{parse_labels, remove_each};

/// `plinthctl snapshots` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SnapshotsCommand {
    /// Prepare an active snapshot KEY on PARENT; prints its mounts
    Prepare {
        /// The key
        key: String,
        /// The parent (a committed snapshot)
        parent: Option<String>,
    },
    /// Create a read-only view KEY of PARENT; prints its mounts
    View {
        /// The key
        key: String,
        /// The parent
        parent: Option<String>,
    },
    /// Print the mount commands of KEY at TARGET
    Mounts {
        /// Where to mount
        target: String,
        /// The key
        key: String,
    },
    /// Commit the active snapshot KEY as NAME
    Commit {
        /// The name of the committed snapshot
        name: String,
        /// The active snapshot
        key: String,
    },
    /// List snapshots: KEY, PARENT, KIND
    #[command(alias = "list")]
    Ls {
        /// Filters, e.g. kind==committed
        filters: Vec<String>,
    },
    /// Show snapshots as a tree of parents and children
    Tree,
    /// Disk usage: KEY, SIZE, INODES (all snapshots when no key is given)
    Usage {
        /// Only this snapshot
        key: Option<String>,
    },
    /// Everything known of a snapshot
    Info {
        /// The key
        key: String,
    },
    /// Remove snapshots
    #[command(aliases = ["remove", "delete", "del"])]
    Rm {
        /// The keys
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Set labels (key=value) or remove them (key=)
    Label {
        /// The key
        key: String,
        /// Labels
        labels: Vec<String>,
    },
}

fn mount_commands(target: &str, mounts: &[Mount]) -> String {
    mounts
        .iter()
        .map(|m| {
            format!(
                "mount -t {} {} {} -o {}\n",
                m.r#type,
                m.source,
                target,
                m.options.join(",")
            )
        })
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::View) => "View",
        Ok(Kind::Active) => "Active",
        Ok(Kind::Committed) => "Committed",
        _ => "Unknown",
    }
}

async fn list(
    api: &mut SnapshotsClient<tonic::transport::Channel>,
    client: &Client,
    snapshotter: &str,
    filters: Vec<String>,
) -> anyhow::Result<Vec<Info>> {
    let mut stream = api
        .list(client.request(ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters,
        })?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(batch) = stream.message().await.map_err(status_error)? {
        infos.extend(batch.info);
    }
    Ok(infos)
}

/// A time as ctr prints it: RFC 3339 in UTC with as many fraction digits as needed (Go's
/// `RFC3339Nano`); Go's zero time when there is none.
pub(crate) fn rfc3339(time: Option<&plinth_api::prost_types::Timestamp>) -> String {
    time.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map_or_else(|| "0001-01-01T00:00:00Z".to_string(), |t| t.to_string())
}

/// A snapshot's info as `ctr snapshots info` prints it: Go's `json.MarshalIndent` of
/// `snapshots.Info`, four spaces, empty parent and labels left out.
fn info_json(info: &Info) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Printed<'a> {
        kind: &'a str,
        name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        parent: &'a str,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<&'a str, &'a str>,
        created: String,
        updated: String,
    }
    let printed = Printed {
        kind: kind_name(info.kind),
        name: &info.name,
        parent: &info.parent,
        labels: info
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        created: rfc3339(info.created_at.as_ref()),
        updated: rfc3339(info.updated_at.as_ref()),
    };
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Strings and maps of strings always serialise.
    let _ = serde::Serialize::serialize(&printed, &mut serializer);
    out.push(b'\n');
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a snapshots command.
pub(crate) async fn run(
    client: &Client,
    snapshotter: &str,
    command: SnapshotsCommand,
) -> anyhow::Result<String> {
    let mut api = SnapshotsClient::new(client.channel());
    let sn = snapshotter.to_string();
    match command {
        SnapshotsCommand::Prepare { key, parent } => {
            let r = PrepareSnapshotRequest {
                snapshotter: sn,
                key: key.clone(),
                parent: parent.unwrap_or_default(),
                ..Default::default()
            };
            let mounts = api
                .prepare(client.request(r)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .mounts;
            Ok(mount_commands("/tmp/mnt", &mounts))
        }
        SnapshotsCommand::View { key, parent } => {
            let r = ViewSnapshotRequest {
                snapshotter: sn,
                key,
                parent: parent.unwrap_or_default(),
                ..Default::default()
            };
            let mounts = api
                .view(client.request(r)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .mounts;
            Ok(mount_commands("/tmp/mnt", &mounts))
        }
        SnapshotsCommand::Mounts { target, key } => {
            let mounts = api
                .mounts(client.request(MountsRequest {
                    snapshotter: sn,
                    key,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .mounts;
            Ok(mount_commands(&target, &mounts))
        }
        SnapshotsCommand::Commit { name, key } => {
            api.commit(client.request(CommitSnapshotRequest {
                snapshotter: sn,
                name,
                key,
                ..Default::default()
            })?)
            .await
            .map_err(status_error)?;
            Ok(String::new())
        }
        SnapshotsCommand::Ls { filters } => {
            let infos = list(&mut api, client, &sn, filters).await?;
            let rows: Vec<[String; 3]> = infos
                .iter()
                .map(|i| {
                    [
                        i.name.clone(),
                        i.parent.clone(),
                        kind_name(i.kind).to_string(),
                    ]
                })
                .collect();
            Ok(table(&["KEY", "PARENT", "KIND"], &rows))
        }
        SnapshotsCommand::Tree => {
            let infos = list(&mut api, client, &sn, Vec::new()).await?;
            let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for info in &infos {
                children
                    .entry(info.parent.as_str())
                    .or_default()
                    .push(info.name.as_str());
            }
            let mut out = String::new();
            fn draw(
                out: &mut String,
                children: &BTreeMap<&str, Vec<&str>>,
                name: &str,
                depth: usize,
            ) {
                let prefix = if depth == 0 {
                    String::new()
                } else {
                    format!("{}\\_ ", "  ".repeat(depth - 1))
                };
                let _ = writeln!(out, "{prefix}{name}");
                for child in children.get(name).into_iter().flatten() {
                    draw(out, children, child, depth + 1);
                }
            }
            for root in children.get("").into_iter().flatten() {
                draw(&mut out, &children, root, 0);
            }
            Ok(out)
        }
        SnapshotsCommand::Usage { key } => {
            let keys = match key {
                Some(key) => vec![key],
                None => list(&mut api, client, &sn, Vec::new())
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect(),
            };
            let mut rows = Vec::new();
            for key in keys {
                let usage = api
                    .usage(client.request(UsageRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    })?)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                rows.push([key, human(usage.size), usage.inodes.to_string()]);
            }
            Ok(table(&["KEY", "SIZE", "INODES"], &rows))
        }
        SnapshotsCommand::Info { key } => {
            let info = api
                .stat(client.request(StatSnapshotRequest {
                    snapshotter: sn,
                    key,
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .info
                .context("server sent no info")?;
            Ok(info_json(&info))
        }
        SnapshotsCommand::Rm { keys } => {
            remove_each(keys, async |key| {
                let request = client.request(RemoveSnapshotRequest {
                    snapshotter: sn.clone(),
                    key: key.to_string(),
                })?;
                api.remove(request).await.map_err(status_error)?;
                Ok(())
            })
            .await
        }
        SnapshotsCommand::Label { key, labels } => {
            let labels = parse_labels(&labels)?;
            let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
            let info = Info {
                name: key,
                labels: labels.into_iter().filter(|(_, v)| !v.is_empty()).collect(),
                ..Default::default()
            };
            api.update(client.request(UpdateSnapshotRequest {
                snapshotter: sn,
                info: Some(info),
                update_mask: Some(plinth_api::prost_types::FieldMask { paths }),
            })?)
            .await
            .map_err(status_error)?;
            Ok(String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use plinth_api::prost_types::Timestamp;

    use super::*;

    /// Regression: `snapshots info` printed `Created: 1795997128.371332055`.
    #[test]
    fn times_print_as_go_rfc3339_nano() {
        let cases: &[(Option<(i64, i32)>, &str)] = &[
            (
                Some((1_795_997_128, 371_332_055)),
                "2026-11-30T00:05:28.371332055Z",
            ),
            (
                Some((1_795_997_128, 370_000_000)),
                "2026-11-30T00:05:28.37Z",
            ),
            (Some((1_795_997_128, 0)), "2026-11-30T00:05:28Z"),
            (Some((0, 1)), "1970-01-01T00:00:00.000000001Z"),
            (None, "0001-01-01T00:00:00Z"),
        ];
        for &(time, expected) in cases {
            let time = time.map(|(seconds, nanos)| Timestamp { seconds, nanos });
            assert_eq!(rfc3339(time.as_ref()), expected, "{time:?}");
        }
    }

    #[test]
    fn info_prints_as_ctr_does() {
        let time = |seconds| Some(Timestamp { seconds, nanos: 5 });
        let cases: Vec<(Info, &str)> = vec![
            (
                Info {
                    name: "k1".to_string(),
                    kind: Kind::Active as i32,
                    labels: [
                        ("b".to_string(), "2".to_string()),
                        ("a".to_string(), "1".to_string()),
                    ]
                    .into(),
                    created_at: time(0),
                    updated_at: time(60),
                    ..Info::default()
                },
                "{
    \"Kind\": \"Active\",
    \"Name\": \"k1\",
    \"Labels\": {
        \"a\": \"1\",
        \"b\": \"2\"
    },
    \"Created\": \"1970-01-01T00:00:00.000000005Z\",
    \"Updated\": \"1970-01-01T00:01:00.000000005Z\"
}
",
            ),
            (
                Info {
                    name: "layer-2".to_string(),
                    parent: "layer-1".to_string(),
                    kind: Kind::Committed as i32,
                    ..Info::default()
                },
                "{
    \"Kind\": \"Committed\",
    \"Name\": \"layer-2\",
    \"Parent\": \"layer-1\",
    \"Created\": \"0001-01-01T00:00:00Z\",
    \"Updated\": \"0001-01-01T00:00:00Z\"
}
",
            ),
        ];
        for (info, expected) in cases {
            assert_eq!(info_json(&info), expected);
        }
    }
}
