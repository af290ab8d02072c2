//! `plinthctl content …`: ingest, list, get, label, remove, and list active ingests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::containerd::services::content::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use plinthd::client::{Client, status_error};
use plinthd::commands::table;

use crate::parse_labels;

/// Bytes per write message.
const CHUNK: usize = 1 << 20;

/// `plinthctl content` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContentCommand {
    /// Ingest standard input as a blob under REF
    Ingest {
        /// The ingest ref
        reference: String,
        /// The digest the bytes must have
        #[arg(long)]
        expected_digest: Option<String>,
        /// The size the bytes must have
        #[arg(long, default_value_t = 0)]
        expected_size: i64,
        /// Progress on standard error: auto (when it is a terminal), always, never
        #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
        progress: String,
    },
    /// List blobs: DIGEST, SIZE, AGE, LABELS
    #[command(alias = "list")]
    Ls {
        /// Print only digests
        #[arg(short, long)]
        quiet: bool,
        /// Filters, e.g. labels.app==web
        filters: Vec<String>,
    },
    /// Write a blob to standard output
    Get {
        /// The digest
        digest: String,
    },
    /// Set labels (key=value) or remove them (key=)
    Label {
        /// The digest
        digest: String,
        /// Labels
        labels: Vec<String>,
    },
    /// Remove blobs
    #[command(aliases = ["remove", "delete", "del"])]
    Rm {
        /// The digests
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// List ingests in progress: REF, SIZE, AGE
    Active {
        /// Filters, e.g. ref~=^layer
        filters: Vec<String>,
    },
}

fn age(time: Option<&plinth_api::prost_types::Timestamp>) -> String {
    let Some(t) = time else {
        return "-".to_string();
    };
    let then = SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(t.seconds).unwrap_or(0), 0);
    let seconds = SystemTime::now()
        .duration_since(then)
        .unwrap_or_default()
        .as_secs();
    match seconds {
        0..60 => format!("{seconds} seconds"),
        60..3600 => format!("{} minutes", seconds / 60),
        3600..86400 => format!("{} hours", seconds / 3600),
        _ => format!("{} days", seconds / 86400),
    }
}

/// Bytes with a binary unit, as ctr prints sizes.
pub(crate) fn human(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    let parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(",")
    }
}

/// Runs a content command.
pub(crate) async fn run(client: &Client, command: ContentCommand) -> anyhow::Result<String> {
    let mut api = ContentClient::new(client.channel()).max_decoding_message_size(64 << 20);
    match command {
        ContentCommand::Ingest {
            reference,
            expected_digest,
            expected_size,
            progress,
        } => {
            let show = match progress.as_str() {
                "always" => true,
                "never" => false,
                _ => std::io::stderr().is_terminal(),
            };
            ingest(
                client,
                &reference,
                expected_digest.unwrap_or_default(),
                expected_size,
                show,
            )
            .await
        }
        ContentCommand::Ls { quiet, filters } => {
            let mut stream = api
                .list(client.request(ListContentRequest { filters })?)
                .await
                .map_err(status_error)?
                .into_inner();
            let mut infos: Vec<Info> = Vec::new();
            while let Some(batch) = stream.message().await.map_err(status_error)? {
                infos.extend(batch.info);
            }
            if quiet {
                return Ok(infos.iter().map(|i| format!("{}\n", i.digest)).collect());
            }
            let rows: Vec<[String; 4]> = infos
                .iter()
                .map(|i| {
                    [
                        i.digest.clone(),
                        human(i.size),
                        age(i.created_at.as_ref()),
                        labels_text(&i.labels),
                    ]
                })
                .collect();
            Ok(table(&["DIGEST", "SIZE", "AGE", "LABELS"], &rows))
        }
        ContentCommand::Get { digest } => {
            let mut stream = api
                .read(client.request(ReadContentRequest {
                    digest,
                    offset: 0,
                    size: 0,
                })?)
                .await
                .map_err(status_error)?
                .into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                stdout
                    .write_all(&chunk.data)
                    .context("writing to standard output")?;
            }
            stdout.flush()?;
            Ok(String::new())
        }
        ContentCommand::Label { digest, labels } => {
            let labels = parse_labels(&labels)?;
            let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
            let info = api
                .info(client.request(InfoRequest { digest })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .info;
            let mut info = info.context("server sent no info")?;
            info.labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let updated = api
                .update(client.request(UpdateRequest {
                    info: Some(info),
                    update_mask: Some(plinth_api::prost_types::FieldMask { paths }),
                })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .info
                .context("server sent no info")?;
            Ok(format!("updated {}\n", updated.digest))
        }
        ContentCommand::Rm { digests } => {
            let mut out = String::new();
            let mut failed = Vec::new();
            for digest in digests {
                match api
                    .delete(client.request(DeleteContentRequest {
                        digest: digest.clone(),
                    })?)
                    .await
                {
                    Ok(_) => {
                        let _ = writeln!(out, "{digest}");
                    }
                    Err(status) => failed.push(format!("{digest}: {}", status_error(status))),
                }
            }
            if !failed.is_empty() {
                bail!("{out}{}", failed.join("\n"));
            }
            Ok(out)
        }
        ContentCommand::Active { filters } => {
            let statuses = api
                .list_statuses(client.request(ListStatusesRequest { filters })?)
                .await
                .map_err(status_error)?
                .into_inner()
                .statuses;
            let rows: Vec<[String; 3]> = statuses
                .iter()
                .map(|s| {
                    let size = if s.total > 0 {
                        format!("{}/{}", human(s.offset), human(s.total))
                    } else {
                        human(s.offset)
                    };
                    [s.r#ref.clone(), size, age(s.started_at.as_ref())]
                })
                .collect();
            Ok(table(&["REF", "SIZE", "AGE"], &rows))
        }
    }
}

/// Streams standard input to the Write stream in 1 MiB messages, then commits.
async fn ingest(
    client: &Client,
    reference: &str,
    expected: String,
    total: i64,
    progress: bool,
) -> anyhow::Result<String> {
    let mut api = ContentClient::new(client.channel());
    let (sender, receiver) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let request = client.request(tokio_stream::wrappers::ReceiverStream::new(receiver))?;
    let first = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total,
        expected: expected.clone(),
        ..WriteContentRequest::default()
    };
    sender.send(first).await.context("starting the write")?;
    let mut replies = match api.write(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            return Ok(format!("{expected} already exists\n"));
        }
        Err(s) => return Err(status_error(s)),
    };
    let stat = match replies.message().await {
        Ok(Some(stat)) => stat,
        Ok(None) => bail!("server closed the write stream"),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            return Ok(format!("{expected} already exists\n"));
        }
        Err(s) => return Err(status_error(s)),
    };
    if stat.offset > 0 {
        eprintln!("restarting ingest {reference} (had {} bytes)", stat.offset);
    }
    let (chunks_tx, mut chunks_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut buffer = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match stdin.read(&mut buffer[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = chunks_tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            buffer.truncate(filled);
            let done = filled < CHUNK;
            if chunks_tx.blocking_send(Ok(buffer)).is_err() || done {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut last_draw = Instant::now();
    let mut written: i64 = 0;
    let mut digest;
    let mut pending: Option<Vec<u8>> = None;
    loop {
        let chunk = match pending.take() {
            Some(c) => c,
            None => chunks_rx
                .recv()
                .await
                .transpose()
                .context("reading standard input")?
                .unwrap_or_default(),
        };
        let next = if chunk.len() == CHUNK {
            chunks_rx
                .recv()
                .await
                .transpose()
                .context("reading standard input")?
        } else {
            None
        };
        let last = next.as_ref().is_none_or(Vec::is_empty);
        let n = i64::try_from(chunk.len()).unwrap_or(0);
        let message = WriteContentRequest {
            action: if last {
                WriteAction::Commit
            } else {
                WriteAction::Write
            } as i32,
            r#ref: reference.to_string(),
            total,
            expected: if last {
                expected.clone()
            } else {
                String::new()
            },
            offset: written,
            data: chunk,
            ..WriteContentRequest::default()
        };
        sender.send(message).await.context("sending data")?;
        match replies.message().await {
            Ok(Some(reply)) => digest = reply.digest,
            Ok(None) => bail!("server closed the write stream"),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                return Ok(format!("{expected} already exists\n"));
            }
            Err(s) => return Err(status_error(s)),
        }
        written += n;
        if progress && (last || last_draw.elapsed() > Duration::from_millis(100)) {
            last_draw = Instant::now();
            let rate = written as f64 / started.elapsed().as_secs_f64().max(1e-6);
            let of = if total > 0 {
                format!(" / {}", human(total))
            } else {
                String::new()
            };
            eprint!(
                "\r{reference}: {}{of}  {}/s   ",
                human(written),
                human(rate as i64)
            );
            if last {
                eprintln!();
            }
        }
        if last {
            break;
        }
        pending = next;
    }
    drop(sender);
    Ok(format!("{digest}\n"))
}
