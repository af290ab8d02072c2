//! `plinthctl content …`: ingest, list, get, label, remove, and list active ingests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read, Write as _};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::containerd::services::content::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
    ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use plinthd::client::{Client, error_text, status_error};
use plinthd::commands::table;
use sha2::{Digest as _, Sha256};

use crate::{parse_labels, remove_each};

/// Bytes per write message.
const CHUNK: usize = 1 << 20;

/// `plinthctl content` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContentCommand {
    /// Ingest FILE (or standard input) as a blob under REF; prints its digest
    Ingest {
        /// The ingest ref
        reference: String,
        /// The file to ingest [default: standard input]
        file: Option<std::path::PathBuf>,
        /// The digest the bytes must have
        #[arg(long)]
        expected_digest: Option<String>,
        /// The size the bytes must have
        #[arg(long, default_value_t = 0)]
        expected_size: i64,
        /// Progress on standard error: a bar when the size is known, else the rate
        #[arg(long, value_enum, default_value = "auto")]
        progress: ProgressMode,
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
    /// Check that blobs still hash to their digests: each is read whole (the daemon refuses
    /// one that does not, with DataLoss) and hashed here too; one line per blob, and a
    /// failure when any is bad
    Verify {
        /// The digests to check
        digests: Vec<String>,
        /// Check every blob of the namespace
        #[arg(long, conflicts_with = "digests")]
        all: bool,
    },
    /// List ingests in progress: REF, SIZE, AGE
    Active {
        /// Filters, e.g. ref~=^layer
        filters: Vec<String>,
    },
}

/// When `content ingest` shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProgressMode {
    /// When standard error is a terminal
    Auto,
    /// Always, as plain lines where standard error is not a terminal
    Always,
    /// Never
    Never,
}

/// What `content ingest` shows on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A bar with percentage, rate and time left, for `total` bytes.
    Bar {
        /// The bytes to send.
        total: u64,
    },
    /// The bytes sent so far and the rate: how many will come is not known.
    Rate,
    /// Nothing.
    Hidden,
}

/// The display for an ingest of `size` bytes (when known: a regular file, or
/// `--expected-size`) with standard error a terminal or not.
pub(crate) fn choose_progress(
    mode: ProgressMode,
    stderr_is_terminal: bool,
    size: Option<u64>,
) -> Progress {
    let show = match mode {
        ProgressMode::Auto => stderr_is_terminal,
        ProgressMode::Always => true,
        ProgressMode::Never => false,
    };
    match size {
        _ if !show => Progress::Hidden,
        Some(total) if total > 0 => Progress::Bar { total },
        _ => Progress::Rate,
    }
}

/// The progress bar for `progress` (hidden for [`Progress::Hidden`]), drawn on standard error:
/// in place on a terminal, else (`--progress always`) as plain text.
fn progress_bar(progress: Progress, reference: &str) -> ProgressBar {
    let (bar, template) = match progress {
        Progress::Hidden => return ProgressBar::hidden(),
        Progress::Bar { total } => (
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden()),
            "{prefix} [{bar:30}] {percent:>3}% {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} {eta} left",
        ),
        Progress::Rate => (
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()),
            "{prefix} {binary_bytes} {binary_bytes_per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(reference.to_string());
    bar.set_draw_target(if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::term_like(Box::new(PlainStderr))
    });
    bar
}

/// Standard error that is not a terminal, for indicatif: each frame starts with `\r`, with no
/// escape sequences.
#[derive(Debug)]
struct PlainStderr;

impl indicatif::TermLike for PlainStderr {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        writeln!(std::io::stderr(), "{line}")
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        write!(std::io::stderr(), "{text}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        write!(std::io::stderr(), "\r")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The bytes left to read from standard input when it is a regular file.
fn stdin_size() -> Option<u64> {
    let stdin = std::io::stdin();
    let stat = rustix::fs::fstat(&stdin).ok()?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let position = rustix::fs::seek(&stdin, rustix::fs::SeekFrom::Current(0)).ok()?;
    u64::try_from(stat.st_size).ok()?.checked_sub(position)
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
            file,
            expected_digest,
            expected_size,
            progress,
        } => {
            let (input, size): (Box<dyn Read + Send>, Option<u64>) = match &file {
                Some(path) => {
                    let opened = std::fs::File::open(path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    let size = opened.metadata().ok().map(|m| m.len());
                    (Box::new(opened), size)
                }
                None => (Box::new(std::io::stdin()), stdin_size()),
            };
            let size = u64::try_from(expected_size)
                .ok()
                .filter(|&n| n > 0)
                .or(size);
            let progress = choose_progress(progress, std::io::stderr().is_terminal(), size);
            ingest(
                client,
                &reference,
                input,
                expected_digest.unwrap_or_default(),
                expected_size,
                progress_bar(progress, &reference),
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
            let mut stream = read_whole(client, &mut api, &digest).await?;
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                stdout
                    .write_all(&chunk.data)
                    .context("writing to standard output")?;
            }
            stdout.flush()?;
            Ok(String::new())
        }
        ContentCommand::Verify { digests, all } => {
            let digests = if all {
                let mut stream = api
                    .list(client.request(ListContentRequest { filters: vec![] })?)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let mut all = Vec::new();
                while let Some(batch) = stream.message().await.map_err(status_error)? {
                    all.extend(batch.info.into_iter().map(|i| i.digest));
                }
                all
            } else if digests.is_empty() {
                bail!("name the digests to check, or give --all to check every blob");
            } else {
                digests
            };
            let mut out = String::new();
            let mut bad = 0;
            for digest in &digests {
                match verify_blob(client, &mut api, digest).await {
                    Ok(size) => {
                        let _ = writeln!(out, "ok {digest} ({size} bytes)");
                    }
                    Err(error) => {
                        bad += 1;
                        let _ = writeln!(out, "BAD {digest}: {}", error_text(&error));
                    }
                }
            }
            if bad > 0 {
                bail!(
                    "{out}{bad} of {} blobs are corrupt or unreadable: remove each (plinthctl content rm DIGEST) and fetch it again",
                    digests.len()
                );
            }
            let _ = writeln!(out, "{} blobs verified", digests.len());
            Ok(out)
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
            remove_each(digests, async |digest| {
                let request = client.request(DeleteContentRequest {
                    digest: digest.to_string(),
                })?;
                api.delete(request).await.map_err(status_error)?;
                Ok(())
            })
            .await
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

/// Streams `input` to the Write stream in 1 MiB messages, then commits; prints the digest,
/// with ` already exists` when the store had the blob.
async fn ingest(
    client: &Client,
    reference: &str,
    mut input: Box<dyn Read + Send>,
    expected: String,
    total: i64,
    bar: ProgressBar,
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
    let (chunks_tx, mut chunks_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        loop {
            let mut buffer = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match input.read(&mut buffer[filled..]) {
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
    // The digest of what was read, so that a blob the store already has can be named when no
    // digest was expected (with one, nothing is hashed here: the store checks it).
    let mut hasher = expected.is_empty().then(Sha256::new);
    let exists = async |hasher: Option<Sha256>,
                        pending: Option<Vec<u8>>,
                        chunks: &mut tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>|
           -> anyhow::Result<String> {
        bar.finish_and_clear();
        let Some(mut hasher) = hasher else {
            return Ok(format!("{expected} already exists\n"));
        };
        hasher.update(pending.unwrap_or_default());
        while let Some(chunk) = chunks.recv().await {
            hasher.update(chunk.context("reading the input")?);
        }
        Ok(format!("sha256:{:x} already exists\n", hasher.finalize()))
    };
    let mut replies = match api.write(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            return exists(hasher, None, &mut chunks_rx).await;
        }
        Err(s) => return Err(status_error(s)),
    };
    let stat = match replies.message().await {
        Ok(Some(stat)) => stat,
        Ok(None) => bail!("server closed the write stream"),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            return exists(hasher, None, &mut chunks_rx).await;
        }
        Err(s) => return Err(status_error(s)),
    };
    if stat.offset > 0 {
        bar.suspend(|| eprintln!("restarting ingest {reference} (had {} bytes)", stat.offset));
    }
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
                .context("reading the input")?
                .unwrap_or_default(),
        };
        let next = if chunk.len() == CHUNK {
            chunks_rx
                .recv()
                .await
                .transpose()
                .context("reading the input")?
        } else {
            None
        };
        let last = next.as_ref().is_none_or(Vec::is_empty);
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&chunk);
        }
        let n = chunk.len();
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
                return exists(hasher, next, &mut chunks_rx).await;
            }
            Err(s) => return Err(status_error(s)),
        }
        written += i64::try_from(n).unwrap_or(i64::MAX);
        bar.inc(u64::try_from(n).unwrap_or(u64::MAX));
        if last {
            break;
        }
        pending = next;
    }
    drop(sender);
    if !bar.is_hidden() {
        // The last frame stays, on a line of its own.
        bar.finish();
        eprintln!();
    }
    Ok(format!("{digest}\n"))
}

/// A Read of the whole blob `digest` (the daemon verifies a whole read).
async fn read_whole(
    client: &Client,
    api: &mut ContentClient<tonic::transport::Channel>,
    digest: &str,
) -> anyhow::Result<
    tonic::Streaming<plinth_api::containerd::services::content::v1::ReadContentResponse>,
> {
    Ok(api
        .read(client.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })?)
        .await
        .map_err(status_error)?
        .into_inner())
}

/// Reads the blob `digest` whole and checks its bytes against the digest here too (a daemon
/// that does not verify, such as containerd, is caught as well); its size.
async fn verify_blob(
    client: &Client,
    api: &mut ContentClient<tonic::transport::Channel>,
    digest: &str,
) -> anyhow::Result<u64> {
    let mut stream = read_whole(client, api, digest).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        size += u64::try_from(chunk.data.len()).unwrap_or(u64::MAX);
        hasher.update(&chunk.data);
    }
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != digest {
        bail!("its {size} bytes hash to {actual}");
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bar whenever the size is known, the rate otherwise, nothing on a non-terminal unless
    /// asked for.
    #[test]
    fn progress_display_follows_terminal_and_size() {
        use ProgressMode::{Always, Auto, Never};
        let cases: &[(ProgressMode, bool, Option<u64>, Progress)] = &[
            (Auto, true, Some(5), Progress::Bar { total: 5 }),
            (Auto, true, None, Progress::Rate),
            // An empty file has nothing to show a share of.
            (Auto, true, Some(0), Progress::Rate),
            (Auto, false, Some(5), Progress::Hidden),
            (Auto, false, None, Progress::Hidden),
            (Always, false, Some(5), Progress::Bar { total: 5 }),
            (Always, false, None, Progress::Rate),
            (Never, true, Some(5), Progress::Hidden),
            (Never, true, None, Progress::Hidden),
        ];
        for &(mode, terminal, size, expected) in cases {
            assert_eq!(
                choose_progress(mode, terminal, size),
                expected,
                "{mode:?} terminal={terminal} size={size:?}"
            );
        }
    }
}
