//! `plinth-load gc`: one garbage collection over a large population, and how long it holds
//! up the writers that run beside it.
//!
//! In a namespace of its own, under one lease, it writes the population over `--clients`
//! connections: `--blobs` small blobs (64 bytes, each unique) and `--snapshots` committed
//! snapshots in chains of `--chain`, then `--images` images. The blobs form twice as many
//! groups as there are images, each shaped like a pulled image: a manifest whose
//! `containerd.io/gc.ref.content.*` labels name a config and layers, and a config whose
//! `containerd.io/gc.ref.snapshot.<snapshotter>` label names the top of a snapshot chain (as
//! containerd's unpacker labels it). Image `i` targets the manifest of group `i`; the other
//! half of the groups, and the chains only they name, are what deleted images leave behind.
//! So half of the blobs and half of the snapshots are reachable from an image, the other half
//! only from the lease.
//!
//! The timed collection: `Leases.Delete` of that lease with `sync` (the default `--trigger
//! lease`), which answers once a collection that includes the delete has finished, in
//! containerd as in plinthd; or, with `--trigger image`, the lease deleted without `sync`
//! and then `Images.Delete` of one extra image with `sync`. Its latency is the collection's
//! total time (backend removal included: both daemons answer after it).
//!
//! Writers: `--writers` clients, each on a connection of its own, write one small thing every
//! `--writer-interval` from `--baseline` before the collection until it has answered. Each
//! writes one kind of thing, the writers taking the kinds in turn: a lease created and
//! deleted, a 64-byte blob written under a lease of theirs, a snapshot prepared under it.
//! Each touches the metadata database, and each waits for what its kind waits for in a
//! collection (the database's write lock; the content store's or the snapshotter's lock
//! during their removal); one kind per writer, so that a writer held up by one lock does not
//! stop probing another. The report has the longest write that overlapped the collection
//! (the longest a writer was held up), the p99 of those, the longest of each kind, and the
//! longest of the writes in as long a time just before it (the baseline).
//!
//! Then every answer is checked: every reachable blob is there with its labels, every
//! unreachable one gone (NotFound), the same for every snapshot (with its parent), every
//! image is still listed, and every blob and snapshot the writers wrote is still there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::containerd::services::content::v1::{
    InfoRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, Image, ListImagesRequest,
};
use plinth_api::containerd::services::introspection::v1::PluginsRequest;
use plinth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use plinth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use plinth_api::containerd::services::leases::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Kind, PrepareSnapshotRequest, StatSnapshotRequest,
};
use plinth_api::containerd::types::Descriptor;
use plinth_builtin_plugins::leases::LEASE_HEADER;
use plinth_builtin_plugins::namespaces::NAMESPACE_HEADER;
use plinthd::commands::table as text_table;
use serde::{Deserialize, Serialize};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::procstat;
use crate::report::{Stats, millis};
use crate::worker::digest;

/// Every blob's size.
const BLOB_SIZE: usize = 64;
/// The label through which a manifest names its config, and the prefix of those naming
/// its layers (`…l.<n>`), as containerd's image handlers write them.
const REF_CONFIG: &str = "containerd.io/gc.ref.content.config";
const REF_LAYER: &str = "containerd.io/gc.ref.content.l.";
/// The prefix of the label through which a config names a snapshot: the snapshotter's name
/// follows (and, for all but the first, `/<n>`).
const REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// The media type of every image's target.
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The lease the population is written under, and the one the writers write under.
const POPULATION_LEASE: &str = "plinth-load-gc-population";
const WRITERS_LEASE: &str = "plinth-load-gc-writers";
/// The image `--trigger image` deletes.
const TRIGGER_IMAGE: &str = "registry.example/plinth-load/gc-trigger:v1";
/// The plugin type of a garbage-collection scheduler (its exports go in the report).
const GC_PLUGIN_TYPE: &str = "io.containerd.gc.v1";

/// What `gc` does.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct GcArgs {
    /// Socket of the daemon (plinthd's or containerd's)
    #[arg(short, long, env = "PLINTH_ADDRESS")]
    pub(crate) address: String,
    /// Images (each reaches its share of the blobs and snapshots; as many image-shaped groups
    /// again are reachable from no image)
    #[arg(long, default_value_t = 10_000)]
    pub(crate) images: usize,
    /// Blobs, at least 4 per image (a manifest and a config for each group)
    #[arg(long, default_value_t = 100_000)]
    pub(crate) blobs: usize,
    /// Committed snapshots
    #[arg(long, default_value_t = 20_000)]
    pub(crate) snapshots: usize,
    /// Snapshots per chain (each one's parent the one before)
    #[arg(long, default_value_t = 4)]
    pub(crate) chain: usize,
    /// The snapshotter of the snapshots
    #[arg(long, default_value = "overlayfs")]
    pub(crate) snapshotter: String,
    /// Clients (each on a connection of its own) that write the population and check it
    #[arg(short, long, default_value_t = 16)]
    pub(crate) clients: usize,
    /// Writers beside the collection, each on a connection of its own, each writing one kind
    /// of thing (lease, blob, snapshot, in turn)
    #[arg(long, default_value_t = 6)]
    pub(crate) writers: usize,
    /// The time between a writer's writes (one held up does not catch up in a burst)
    #[arg(long, default_value = "20ms", value_parser = crate::parse_duration)]
    pub(crate) writer_interval: Duration,
    /// How long the writers write before the collection (the baseline is the last stretch
    /// of it as long as the collection)
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub(crate) baseline: Duration,
    /// What starts the timed collection: `lease` (Leases.Delete of the population's lease
    /// with sync) or `image` (the lease deleted without sync, then Images.Delete of one
    /// extra image with sync)
    #[arg(long, default_value = "lease", value_parser = ["lease", "image"])]
    pub(crate) trigger: String,
    /// The namespace to work in, which must hold no images (default: `plinth-gc-<pid>`)
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// Seed of the blobs' bytes (the same seed writes the same population)
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Write the results as JSON to FILE (for `table`)
    #[arg(long)]
    pub(crate) report: Option<std::path::PathBuf>,
    /// A name for the report's column (default: the socket)
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// containerd's log (at debug level), from which its own figures of the collection are
    /// read (plinthd's come from its gc plugin's exports)
    #[arg(long)]
    pub(crate) containerd_log: Option<std::path::PathBuf>,
}

/// The population's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) images: usize,
    pub(crate) blobs: usize,
    pub(crate) snapshots: usize,
    pub(crate) chain: usize,
    pub(crate) snapshotter: String,
    pub(crate) seed: u64,
}

/// One blob to write.
#[derive(Debug, Clone)]
pub(crate) struct BlobSpec {
    pub(crate) data: Vec<u8>,
    pub(crate) digest: String,
    pub(crate) labels: HashMap<String, String>,
    /// Whether an image reaches it.
    pub(crate) reachable: bool,
}

/// One chain of snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    pub(crate) index: usize,
    pub(crate) len: usize,
    /// Whether an image reaches it (through a config's label on its top).
    pub(crate) reachable: bool,
}

impl Chain {
    /// The committed snapshot at `depth` (0: the root).
    pub(crate) fn name(&self, depth: usize) -> String {
        format!("plinth-gc-{:06}-{depth:02}", self.index)
    }

    /// The active snapshot committed as `name(depth)`.
    fn active(&self, depth: usize) -> String {
        format!("{}-active", self.name(depth))
    }

    /// The parent of the snapshot at `depth` (none for the root).
    fn parent(&self, depth: usize) -> String {
        match depth {
            0 => String::new(),
            _ => self.name(depth - 1),
        }
    }

    /// The top of the chain, which a config names.
    pub(crate) fn top(&self) -> String {
        self.name(self.len.saturating_sub(1))
    }
}

/// What is written: blobs, chains, and images over the manifests of half of the groups.
#[derive(Debug, Clone)]
pub(crate) struct Population {
    pub(crate) blobs: Vec<BlobSpec>,
    pub(crate) chains: Vec<Chain>,
    /// Each image's name and its target (a manifest's digest).
    pub(crate) images: Vec<(String, String)>,
}

impl Population {
    fn reachable_blobs(&self) -> usize {
        self.blobs.iter().filter(|b| b.reachable).count()
    }

    fn reachable_snapshots(&self) -> usize {
        self.chains
            .iter()
            .filter(|c| c.reachable)
            .map(|c| c.len)
            .sum()
    }
}

/// The name of image `i`.
fn image_name(i: usize) -> String {
    format!("registry.example/plinth-load/gc-{i:05}:v1")
}

/// The bytes of blob `k` of group `g`: 64 bytes, unique per seed, group and index.
fn blob_bytes(seed: u64, group: usize, k: usize) -> Vec<u8> {
    let mut data = format!("plinth-load gc {seed:x} group {group} blob {k}").into_bytes();
    data.resize(data.len().max(BLOB_SIZE), b'.');
    data
}

/// The population of `shape`: `2 × images` groups, the first `images` of them each the
/// target of an image. Blobs are shared out evenly between the groups (a manifest, a config,
/// and layers); chains alternate between the two halves, and each config names the chains
/// of its half that are its share (every chain is named by at least one config).
///
/// # Errors
/// No images, fewer than four blobs per image, or chains of length zero.
pub(crate) fn population(shape: &Shape) -> Result<Population, String> {
    let images = shape.images;
    if images == 0 {
        return Err("--images must be at least 1".into());
    }
    let groups = 2 * images;
    if shape.blobs < 2 * groups {
        return Err(format!(
            "--blobs {} is fewer than 4 per image ({}): each of the {groups} groups needs a manifest and a config",
            shape.blobs,
            2 * groups
        ));
    }
    if shape.chain == 0 {
        return Err("--chain must be at least 1".into());
    }
    let n_chains = shape.snapshots.div_ceil(shape.chain);
    let chains: Vec<Chain> = (0..n_chains)
        .map(|c| Chain {
            index: c,
            len: if c + 1 == n_chains {
                shape.snapshots - shape.chain * (n_chains - 1)
            } else {
                shape.chain
            },
            reachable: c % 2 == 0,
        })
        .collect();
    // Chains of half h are the global indices 2j + h, j < in_half[h].
    let in_half = [n_chains.div_ceil(2), n_chains / 2];
    let (base, spare) = (shape.blobs / groups, shape.blobs % groups);
    let mut blobs = Vec::with_capacity(shape.blobs);
    let mut targets = Vec::with_capacity(images);
    for g in 0..groups {
        let (half, rank) = (g / images, g % images);
        // The spare blobs go to the two halves in turn.
        let count = base + usize::from(2 * rank + half < spare);
        let bytes: Vec<Vec<u8>> = (0..count).map(|k| blob_bytes(shape.seed, g, k)).collect();
        let digests: Vec<String> = bytes.iter().map(|b| digest(b)).collect();
        // The chains of this half that this group's config names: its rank's share.
        let mut named = Vec::new();
        if in_half[half] > 0 {
            named.push(rank % in_half[half]);
            named.extend(
                (rank..in_half[half])
                    .step_by(images)
                    .filter(|&j| j != rank % in_half[half]),
            );
        }
        let reachable = half == 0;
        for (k, data) in bytes.into_iter().enumerate() {
            let labels: HashMap<String, String> = match k {
                0 => std::iter::once((REF_CONFIG.to_string(), digests[1].clone()))
                    .chain(
                        digests[2..]
                            .iter()
                            .enumerate()
                            .map(|(l, d)| (format!("{REF_LAYER}{l}"), d.clone())),
                    )
                    .collect(),
                1 => named
                    .iter()
                    .enumerate()
                    .map(|(n, &j)| {
                        let key = if n == 0 {
                            format!("{REF_SNAPSHOT}{}", shape.snapshotter)
                        } else {
                            format!("{REF_SNAPSHOT}{}/{n}", shape.snapshotter)
                        };
                        (key, chains[2 * j + half].top())
                    })
                    .collect(),
                _ => HashMap::new(),
            };
            blobs.push(BlobSpec {
                data,
                digest: digests[k].clone(),
                labels,
                reachable,
            });
        }
        if reachable {
            targets.push((image_name(rank), digests[0].clone()));
        }
    }
    Ok(Population {
        blobs,
        chains,
        images: targets,
    })
}

/// A run's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GcReport {
    /// The daemon's name in tables.
    pub(crate) label: String,
    /// The population: images, blobs, committed snapshots.
    pub(crate) images: usize,
    pub(crate) blobs: usize,
    pub(crate) snapshots: usize,
    /// How many of the blobs and snapshots an image reaches.
    pub(crate) reachable_blobs: usize,
    pub(crate) reachable_snapshots: usize,
    /// Clients that wrote the population; writers beside the collection.
    pub(crate) clients: usize,
    pub(crate) writers: usize,
    /// `lease` or `image` (see `--trigger`).
    pub(crate) trigger: String,
    /// Writing the population, s: each part, and all.
    pub(crate) build_parts: Vec<(String, f64)>,
    pub(crate) build_seconds: f64,
    /// The synchronous delete's latency: the whole collection, s.
    pub(crate) collection_seconds: f64,
    /// The daemon's CPU time (user and system) while the collection ran, s (none when it
    /// could not be read).
    pub(crate) collection_cpu_seconds: Option<f64>,
    /// The writes that overlapped the collection.
    pub(crate) during: Writes,
    /// The writes in as long a time just before it (`baseline_seconds`: shorter when the
    /// writers had not run that long).
    pub(crate) baseline: Writes,
    pub(crate) baseline_seconds: f64,
    /// The exports of the daemon's gc plugin before and after the collection.
    pub(crate) exports_before: BTreeMap<String, String>,
    pub(crate) exports_after: BTreeMap<String, String>,
    /// The daemon's own figures of the collection.
    pub(crate) own: Own,
    /// What the checks found after the collection.
    pub(crate) checked: Checked,
    /// Unexpected errors.
    pub(crate) unexpected: u64,
    /// Wrong answers.
    pub(crate) failure_count: u64,
    /// The first wrong answers.
    pub(crate) failures: Vec<String>,
    /// The first unexpected errors.
    pub(crate) examples: Vec<String>,
}

/// The daemon's own figures of the collection, s: none where it gives none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Own {
    /// Marking outside any lock (plinthd: over a read snapshot).
    pub(crate) mark: Option<f64>,
    /// The time database writers wait for: containerd's "garbage collected" (mark and sweep
    /// under its database's write lock); plinthd's sweep transaction (with its second mark
    /// when writes landed since the first).
    pub(crate) locked: Option<f64>,
    /// Removal from the content store and the snapshotters (containerd: the longer of its
    /// two cleanups, which run side by side).
    pub(crate) backend: Option<f64>,
}

/// A Go duration as Go prints it (`1m13.5s`, `4.52ms`, `250µs`), in seconds.
fn parse_go_duration(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    let mut seconds = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        seconds += value
            * match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "µs" | "us" => 1e-6,
                "ns" => 1e-9,
                _ => return None,
            };
        rest = next;
    }
    Some(seconds)
}

/// plinthd's own figures, from its scheduler's `last_run_phases` export (`mark 4.5ms,
/// sweep 11.8ms, backend 173ms …`).
fn own_from_exports(exports: &BTreeMap<String, String>) -> Own {
    let Some(phases) = exports
        .iter()
        .find(|(k, _)| k.ends_with(".last_run_phases"))
        .map(|(_, v)| v)
    else {
        return Own::default();
    };
    let phase = |name: &str| {
        phases.split(',').find_map(|part| {
            let value = part.trim().strip_prefix(name)?.trim_start();
            parse_go_duration(value.split_whitespace().next()?)
        })
    };
    Own {
        mark: phase("mark "),
        locked: phase("sweep "),
        backend: phase("backend "),
    }
}

/// containerd's own figures, from the first collection its debug log reports.
fn own_from_containerd_log(log: &str) -> Own {
    let first = |message: &str| {
        let pattern = format!("msg=\"{message}\" d=");
        log.lines().find_map(|line| {
            let at = line.find(&pattern)? + pattern.len();
            parse_go_duration(line[at..].split_whitespace().next()?)
        })
    };
    let cleanups: Vec<f64> = ["content garbage collected", "snapshot garbage collected"]
        .into_iter()
        .filter_map(first)
        .collect();
    Own {
        mark: None,
        locked: first("garbage collected"),
        backend: cleanups.into_iter().reduce(f64::max),
    }
}

/// A set of writes' latencies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Writes {
    /// How many.
    pub(crate) count: u64,
    /// The longest and the 99th percentile, µs.
    pub(crate) max_us: u32,
    pub(crate) p99_us: u32,
    /// The longest of each kind of write, µs.
    pub(crate) max_by_kind_us: BTreeMap<String, u32>,
}

/// What the checks after the collection found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checked {
    /// Reachable blobs still there, unreachable ones gone.
    pub(crate) blobs_kept: u64,
    pub(crate) blobs_gone: u64,
    /// The same for snapshots.
    pub(crate) snapshots_kept: u64,
    pub(crate) snapshots_gone: u64,
    /// Images still listed.
    pub(crate) images_kept: u64,
    /// Blobs and snapshots the writers wrote (under a live lease), still there.
    pub(crate) writers_kept: u64,
}

impl GcReport {
    /// Whether every call succeeded and every answer was right.
    pub(crate) fn passed(&self) -> bool {
        self.unexpected == 0 && self.failure_count == 0
    }

    /// The report for people.
    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "{}: {} images, {} blobs ({} reachable), {} snapshots ({} reachable); {} clients, {} writers; trigger: {}\n",
            self.label,
            self.images,
            self.blobs,
            self.reachable_blobs,
            self.snapshots,
            self.reachable_snapshots,
            self.clients,
            self.writers,
            self.trigger
        );
        let mut rows: Vec<[String; 2]> = self
            .build_parts
            .iter()
            .map(|(what, s)| [format!("build: {what}"), seconds_text(*s)])
            .collect();
        rows.push(["build, all".into(), seconds_text(self.build_seconds)]);
        rows.push([
            "collection (the sync delete)".into(),
            seconds_text(self.collection_seconds),
        ]);
        if let Some(cpu) = self.collection_cpu_seconds {
            rows.push(["daemon CPU during it".into(), seconds_text(cpu)]);
        }
        for (what, writes) in [
            ("during the collection", &self.during),
            ("baseline", &self.baseline),
        ] {
            rows.push([
                format!("writes {what}: count, p99, max"),
                format!(
                    "{}, {}, {}",
                    writes.count,
                    millis(writes.p99_us),
                    millis(writes.max_us)
                ),
            ]);
            for (kind, max) in &writes.max_by_kind_us {
                rows.push([format!("  longest {kind}"), millis(*max)]);
            }
        }
        out.push_str(&text_table(&["WHAT", "FIGURE"], &rows));
        let _ = writeln!(
            out,
            "baseline: the {:.2} s before the collection",
            self.baseline_seconds
        );
        for (when, exports) in [
            ("before", &self.exports_before),
            ("after", &self.exports_after),
        ] {
            if !exports.is_empty() {
                let _ = writeln!(
                    out,
                    "gc plugin exports {when}: {}",
                    exports
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        let own = |v: Option<f64>| v.map_or_else(|| "–".to_string(), seconds_text);
        let _ = writeln!(
            out,
            "own figures: mark outside any lock {}, writers locked out {}, backend removal {}",
            own(self.own.mark),
            own(self.own.locked),
            own(self.own.backend)
        );
        let c = &self.checked;
        let _ = writeln!(
            out,
            "checked: {} blobs kept, {} gone; {} snapshots kept, {} gone; {} images kept; {} writer objects kept",
            c.blobs_kept,
            c.blobs_gone,
            c.snapshots_kept,
            c.snapshots_gone,
            c.images_kept,
            c.writers_kept
        );
        let _ = writeln!(
            out,
            "total: {} unexpected errors, {} wrong answers",
            self.unexpected, self.failure_count
        );
        for example in &self.examples {
            let _ = writeln!(out, "  unexpected: {example}");
        }
        for failure in &self.failures {
            let _ = writeln!(out, "  wrong: {failure}");
        }
        out
    }
}

/// A time for a table: seconds from 10 s up, else milliseconds.
fn seconds_text(seconds: f64) -> String {
    if seconds >= 10.0 {
        format!("{seconds:.1} s")
    } else if seconds >= 0.1 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{:.1} ms", seconds * 1000.0)
    }
}

/// A table row: its name and how to read its figure (seconds) from a report.
type RowOf = (String, Box<dyn Fn(&GcReport) -> Option<f64>>);

/// The rows of the Markdown table, for reports of population `first`.
fn table_rows(first: &GcReport) -> Vec<RowOf> {
    let us = |v: u32| Some(f64::from(v) / 1e6);
    // A set of no writes has no longest one.
    let longest = |w: &Writes| (w.count > 0).then(|| f64::from(w.max_us) / 1e6);
    let p99 = |w: &Writes| (w.count > 0).then(|| f64::from(w.p99_us) / 1e6);
    let mut rows: Vec<RowOf> = vec![
        (
            format!(
                "population build ({} blobs, {} snapshots, {} images; {} clients)",
                first.blobs, first.snapshots, first.images, first.clients
            ),
            Box::new(|r: &GcReport| Some(r.build_seconds)),
        ),
        (
            "collection, total (the sync delete's latency)".into(),
            Box::new(|r: &GcReport| Some(r.collection_seconds)),
        ),
        (
            "daemon CPU during the collection".into(),
            Box::new(|r: &GcReport| r.collection_cpu_seconds),
        ),
        (
            "writer hold-up: longest write overlapping the collection".into(),
            Box::new(move |r: &GcReport| longest(&r.during)),
        ),
        (
            "writer p99 during the collection".into(),
            Box::new(move |r: &GcReport| p99(&r.during)),
        ),
        (
            "baseline: longest write in as long a time before it".into(),
            Box::new(move |r: &GcReport| longest(&r.baseline)),
        ),
    ];
    rows.push((
        "own figure: mark outside any lock (plinthd)".into(),
        Box::new(|r: &GcReport| r.own.mark),
    ));
    rows.push((
        "own figure: database writers locked out (containerd: mark + sweep; plinthd: sweep, marking again if writes landed)".into(),
        Box::new(|r: &GcReport| r.own.locked),
    ));
    rows.push((
        "own figure: backend removal (containerd: the longer of its content and snapshot cleanups)"
            .into(),
        Box::new(|r: &GcReport| r.own.backend),
    ));
    for kind in WriteKind::ALL {
        rows.push((
            format!("longest {} overlapping the collection", kind.name()),
            Box::new(move |r: &GcReport| {
                r.during
                    .max_by_kind_us
                    .get(kind.name())
                    .and_then(|v| us(*v))
            }),
        ));
    }
    rows
}

/// The median of `values` (the lower middle one of an even count), the lowest and the
/// highest.
fn median(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.sort_by(f64::total_cmp);
    let low = *values.first()?;
    let high = *values.last()?;
    Some((values[(values.len() - 1) / 2], low, high))
}

/// Reports side by side in Markdown: one row per figure, one column per daemon (in the
/// order of the reports), and with two daemons the second's figure over the first's. Several
/// reports of one label are rounds: each cell is then the median over them, the range after it.
pub(crate) fn table(reports: &[GcReport]) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for r in reports {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let rounds =
        |label: &str| -> Vec<&GcReport> { reports.iter().filter(|r| r.label == label).collect() };
    let most_rounds = labels.iter().map(|l| rounds(l).len()).max().unwrap_or(0);
    let Some(first) = reports.first() else {
        return String::new();
    };
    let mut out = String::new();
    if most_rounds > 1 {
        let _ = writeln!(
            out,
            "Each cell is the median of {most_rounds} rounds; the range over the rounds follows it.\n"
        );
    }
    out.push_str("| figure |");
    for l in &labels {
        let _ = write!(out, " {l} |");
    }
    if let [a, b] = labels[..] {
        let _ = write!(out, " {b} ÷ {a} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(1 + labels.len() + usize::from(labels.len() == 2)));
    out.push_str("|\n");
    for (name, figure) in table_rows(first) {
        let cells: Vec<Option<(f64, f64, f64)>> = labels
            .iter()
            .map(|l| median(rounds(l).into_iter().filter_map(&figure).collect()))
            .collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(out, "| {name} |");
        for cell in &cells {
            match cell {
                Some((m, low, high)) if most_rounds > 1 => {
                    let _ = write!(
                        out,
                        " {} ({}–{}) |",
                        seconds_text(*m),
                        seconds_text(*low),
                        seconds_text(*high)
                    );
                }
                Some((m, ..)) => {
                    let _ = write!(out, " {} |", seconds_text(*m));
                }
                None => out.push_str(" – |"),
            }
        }
        match cells[..] {
            [Some((a, ..)), Some((b, ..))] if a > 0.0 => {
                let _ = write!(out, " {:.2} |", b / a);
            }
            [_, _] => out.push_str(" – |"),
            _ => {}
        }
        out.push('\n');
    }
    out.push('\n');
    for l in &labels {
        let all = rounds(l);
        let (unexpected, wrong) = all
            .iter()
            .fold((0, 0), |(u, w), r| (u + r.unexpected, w + r.failure_count));
        let c = &all[0].checked;
        let _ = writeln!(
            out,
            "{l}: {unexpected} unexpected errors, {wrong} wrong answers over {} rounds; the first round kept {} blobs and {} snapshots, removed {} and {}, kept {} images and {} writer objects; writes overlapping the collection {}.",
            all.len(),
            c.blobs_kept,
            c.snapshots_kept,
            c.blobs_gone,
            c.snapshots_gone,
            c.images_kept,
            c.writers_kept,
            all.iter()
                .map(|r| r.during.count.to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    out
}

/// One connection, the namespace its requests carry, and the clients over it.
#[derive(Clone)]
struct Conn {
    content: ContentClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    images: ImagesClient<Channel>,
    leases: LeasesClient<Channel>,
    introspection: IntrospectionClient<Channel>,
    namespace: AsciiMetadataValue,
}

impl Conn {
    async fn connect(address: &str, namespace: &str) -> anyhow::Result<Conn> {
        let channel = plinthd::client::Client::connect(address, namespace)
            .await?
            .channel();
        Ok(Conn {
            content: ContentClient::new(channel.clone()),
            snapshots: SnapshotsClient::new(channel.clone()),
            images: ImagesClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            leases: LeasesClient::new(channel.clone()),
            introspection: IntrospectionClient::new(channel),
            namespace: namespace
                .parse()
                .with_context(|| format!("namespace {namespace:?} is not valid header text"))?,
        })
    }

    /// A request carrying the namespace and, if given, the lease.
    fn request<T>(&self, message: T, lease: Option<&AsciiMetadataValue>) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace.clone());
        if let Some(lease) = lease {
            request.metadata_mut().insert(LEASE_HEADER, lease.clone());
        }
        request
    }

    /// Writes `data` as one blob with `labels` in one message (a commit carrying its bytes),
    /// under `lease`; the digest the daemon answers.
    async fn write_blob(
        &self,
        reference: String,
        data: Vec<u8>,
        expected: String,
        labels: HashMap<String, String>,
        lease: &AsciiMetadataValue,
    ) -> Result<String, Status> {
        let message = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total: data.len() as i64,
            expected,
            data,
            labels,
            ..WriteContentRequest::default()
        };
        let request = self.request(tokio_stream::iter(vec![message]), Some(lease));
        let mut replies = self.content.clone().write(request).await?.into_inner();
        let mut last: Option<WriteContentResponse> = None;
        while let Some(reply) = replies.message().await? {
            last = Some(reply);
        }
        last.map(|r| r.digest)
            .ok_or_else(|| Status::internal("the write stream closed without an answer"))
    }

    /// The exports of the daemon's gc plugin(s), `<id>.<key>`.
    async fn gc_exports(&self) -> Result<BTreeMap<String, String>, Status> {
        let reply = self
            .introspection
            .clone()
            .plugins(Request::new(PluginsRequest::default()))
            .await?
            .into_inner();
        Ok(reply
            .plugins
            .into_iter()
            .filter(|p| p.r#type == GC_PLUGIN_TYPE)
            .flat_map(|p| {
                let id = p.id;
                p.exports
                    .into_iter()
                    .map(move |(k, v)| (format!("{id}.{k}"), v))
            })
            .collect())
    }
}

/// What one call's answer was: `Err` an unexpected error, `Ok(Err)` a wrong answer.
type CheckedCall = Result<Result<(), String>, Status>;

/// Runs `call` for every index in `0..n`, the indices handed out to the connections as they
/// become free, each call's latency counted as `op`. Returns the counts and the wall time.
async fn over_clients<F, Fut>(
    conns: &[Conn],
    n: usize,
    op: &'static str,
    call: F,
) -> anyhow::Result<(Stats, Duration)>
where
    F: Fn(Conn, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = CheckedCall> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .iter()
        .cloned()
        .map(|conn| {
            let call = call.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let began = Instant::now();
                    match call(conn.clone(), i).await {
                        Ok(answer) => {
                            stats.ok(op, began.elapsed());
                            if let Err(wrong) = answer {
                                stats.failure(wrong);
                            }
                        }
                        Err(status) => stats.unexpected(op, &status),
                    }
                }
                stats
            })
        })
        .collect();
    let mut stats = Stats::default();
    for task in tasks {
        stats.merge(task.await.context("a client panicked")?);
    }
    let elapsed = started.elapsed();
    say!(
        "plinth-load: {op}: {n} in {} ({:.0} per second){}",
        seconds_text(elapsed.as_secs_f64()),
        n as f64 / elapsed.as_secs_f64().max(1e-9),
        if stats.total_unexpected() + stats.failure_count > 0 {
            format!(
                ", {} unexpected, {} wrong",
                stats.total_unexpected(),
                stats.failure_count
            )
        } else {
            String::new()
        }
    );
    Ok((stats, elapsed))
}

/// The kinds of write the writers make, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    /// Leases.Create of a new lease, then Leases.Delete of it (two writes).
    Lease,
    /// A 64-byte blob written under the writers' lease.
    Content,
    /// A snapshot prepared under the writers' lease.
    Snapshot,
}

impl WriteKind {
    const ALL: [WriteKind; 3] = [WriteKind::Lease, WriteKind::Content, WriteKind::Snapshot];

    fn name(self) -> &'static str {
        match self {
            WriteKind::Lease => "lease create / delete",
            WriteKind::Content => "content write",
            WriteKind::Snapshot => "snapshot prepare",
        }
    }
}

/// One write: when it started (since the writers' epoch) and how long it took.
#[derive(Debug, Clone, Copy)]
struct Write {
    kind: WriteKind,
    start: Duration,
    took: Duration,
}

impl Write {
    fn end(&self) -> Duration {
        self.start + self.took
    }
}

/// What one writer did.
#[derive(Default)]
struct WriterLog {
    writes: Vec<Write>,
    blobs: Vec<String>,
    snapshots: Vec<String>,
    stats: Stats,
}

/// Settings every writer shares.
struct WriterSettings {
    epoch: Instant,
    interval: Duration,
    writers: usize,
    lease: AsciiMetadataValue,
    snapshotter: String,
    stop: AtomicBool,
}

/// Writer `index`: one write of its kind every interval until told to stop.
async fn writer(conn: Conn, index: usize, settings: Arc<WriterSettings>) -> WriterLog {
    let mut log = WriterLog::default();
    // The writers' writes spread over the interval.
    let offset = settings
        .interval
        .mul_f64(index as f64 / settings.writers.max(1) as f64);
    let mut next = Instant::now() + offset;
    let kind = WriteKind::ALL[index % WriteKind::ALL.len()];
    let mut turn = 0;
    while !settings.stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next.into()).await;
        let name = format!("plinth-gc-writer-{index}-{turn}");
        turn += 1;
        let timed =
            |log: &mut WriterLog, began: Instant, op: &'static str, r: Result<(), Status>| {
                let took = began.elapsed();
                match r {
                    Ok(()) => {
                        log.stats.ok(op, took);
                        log.writes.push(Write {
                            kind,
                            start: began - settings.epoch,
                            took,
                        });
                        true
                    }
                    Err(status) => {
                        log.stats.unexpected(op, &status);
                        false
                    }
                }
            };
        match kind {
            WriteKind::Lease => {
                let began = Instant::now();
                let request = conn.request(
                    CreateLeaseRequest {
                        id: name.clone(),
                        labels: HashMap::new(),
                    },
                    None,
                );
                let created = conn.leases.clone().create(request).await.map(drop);
                if timed(&mut log, began, "writer-lease-create", created) {
                    let began = Instant::now();
                    let request = conn.request(
                        DeleteLeaseRequest {
                            id: name,
                            sync: false,
                        },
                        None,
                    );
                    let deleted = conn.leases.clone().delete(request).await.map(drop);
                    timed(&mut log, began, "writer-lease-delete", deleted);
                }
            }
            WriteKind::Content => {
                let mut data = name.clone().into_bytes();
                data.resize(data.len().max(BLOB_SIZE), b'.');
                let expected = digest(&data);
                let began = Instant::now();
                let written = conn
                    .write_blob(
                        name,
                        data,
                        expected.clone(),
                        HashMap::new(),
                        &settings.lease,
                    )
                    .await;
                let ok = written.as_ref().is_ok_and(|d| *d == expected);
                if let Ok(got) = &written
                    && !ok
                {
                    log.stats
                        .failure(format!("writer blob {expected}: committed as {got}"));
                }
                if timed(&mut log, began, "writer-content", written.map(drop)) && ok {
                    log.blobs.push(expected);
                }
            }
            WriteKind::Snapshot => {
                let began = Instant::now();
                let request = conn.request(
                    PrepareSnapshotRequest {
                        snapshotter: settings.snapshotter.clone(),
                        key: name.clone(),
                        parent: String::new(),
                        labels: HashMap::new(),
                    },
                    Some(&settings.lease),
                );
                let prepared = conn.snapshots.clone().prepare(request).await.map(drop);
                if timed(&mut log, began, "writer-snapshot", prepared) {
                    log.snapshots.push(name);
                }
            }
        }
        // A writer held up does not catch up in a burst.
        next = (next + settings.interval).max(Instant::now());
    }
    log
}

/// The figures of `writes`.
fn writes_figures<'a>(writes: impl Iterator<Item = &'a Write>) -> Writes {
    let mut all: Vec<u32> = Vec::new();
    let mut by_kind: BTreeMap<String, u32> = BTreeMap::new();
    for w in writes {
        let us = u32::try_from(w.took.as_micros()).unwrap_or(u32::MAX);
        all.push(us);
        let max = by_kind.entry(w.kind.name().to_string()).or_default();
        *max = (*max).max(us);
    }
    all.sort_unstable();
    let p99 = if all.is_empty() {
        0
    } else {
        let rank = (0.99 * all.len() as f64).ceil() as usize;
        all[rank.clamp(1, all.len()) - 1]
    };
    Writes {
        count: all.len() as u64,
        max_us: all.last().copied().unwrap_or(0),
        p99_us: p99,
        max_by_kind_us: by_kind,
    }
}

/// The writes that overlapped `[gc_start, gc_end]`, and those that started and ended in the
/// stretch of as long just before `gc_start` (not before `earliest`) with its length.
fn split_writes(
    writes: &[Write],
    gc_start: Duration,
    gc_end: Duration,
    earliest: Duration,
) -> (Writes, Writes, f64) {
    let during = writes_figures(
        writes
            .iter()
            .filter(|w| w.start < gc_end && w.end() > gc_start),
    );
    let from = gc_start
        .saturating_sub(gc_end.saturating_sub(gc_start))
        .max(earliest);
    let baseline = writes_figures(
        writes
            .iter()
            .filter(|w| w.start >= from && w.end() <= gc_start),
    );
    (
        during,
        baseline,
        gc_start.saturating_sub(from).as_secs_f64(),
    )
}

/// Runs the benchmark; whether every call succeeded and every answer was right.
///
/// # Errors
/// The daemon cannot be reached, the namespace already holds images, the shape is invalid,
/// writing the population failed, or the report cannot be written.
pub(crate) async fn gc(args: GcArgs) -> anyhow::Result<bool> {
    let socket = plinthd::paths::socket_path(&args.address);
    let address = socket.display().to_string();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| format!("plinth-gc-{}", std::process::id()));
    let label = args.label.clone().unwrap_or_else(|| address.clone());
    let shape = Shape {
        images: args.images,
        blobs: args.blobs,
        snapshots: args.snapshots,
        chain: args.chain,
        snapshotter: args.snapshotter.clone(),
        seed: args.seed,
    };
    let population = Arc::new(population(&shape).map_err(anyhow::Error::msg)?);
    let n_clients = args.clients.max(1);
    say!(
        "plinth-load: gc over {} images, {} blobs ({} reachable), {} snapshots ({} reachable) in namespace {namespace} of {address}; {n_clients} clients, {} writers",
        population.images.len(),
        population.blobs.len(),
        population.reachable_blobs(),
        shape.snapshots,
        population.reachable_snapshots(),
        args.writers
    );
    let mut conns = Vec::with_capacity(n_clients);
    for _ in 0..n_clients {
        conns.push(Conn::connect(&address, &namespace).await?);
    }
    let mut writer_conns = Vec::with_capacity(args.writers);
    for _ in 0..args.writers {
        writer_conns.push(Conn::connect(&address, &namespace).await?);
    }
    let pid = procstat::peer_pid(&socket).await.ok();
    let first = conns[0].clone();
    let held = first
        .images
        .clone()
        .list(first.request(ListImagesRequest::default(), None))
        .await
        .map_err(plinthd::client::status_error)
        .context("listing the namespace's images")?
        .into_inner()
        .images
        .len();
    if held > 0 {
        anyhow::bail!(
            "namespace {namespace} already holds {held} images: remove them or pass another --namespace"
        );
    }
    let header = |id: &str| -> anyhow::Result<AsciiMetadataValue> {
        id.parse()
            .with_context(|| format!("lease {id:?} is not valid header text"))
    };
    let population_lease = header(POPULATION_LEASE)?;
    let writers_lease = header(WRITERS_LEASE)?;
    for id in [POPULATION_LEASE, WRITERS_LEASE] {
        create_lease(&first, id).await?;
    }

    let build_started = Instant::now();
    let (mut stats, build_parts) =
        build(&conns, &population, &shape.snapshotter, &population_lease).await?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    if stats.total_unexpected() + stats.failure_count > 0 {
        for example in stats.examples.iter().chain(&stats.failures) {
            say!("plinth-load:   {example}");
        }
        anyhow::bail!(
            "writing the population met {} unexpected errors and {} wrong answers: nothing measured",
            stats.total_unexpected(),
            stats.failure_count
        );
    }
    if args.trigger == "image" {
        // The extra image, then the population's lease goes without a collection.
        let target = &population.images[0].1;
        first
            .images
            .clone()
            .create(first.request(
                CreateImageRequest {
                    image: Some(image(TRIGGER_IMAGE, target)),
                },
                None,
            ))
            .await
            .map_err(plinthd::client::status_error)
            .context("creating the image whose delete starts the collection")?;
        delete_lease(&first, POPULATION_LEASE, false).await?;
    }
    let exports_before = first.gc_exports().await.unwrap_or_default();

    let settings = Arc::new(WriterSettings {
        epoch: Instant::now(),
        interval: args.writer_interval,
        writers: args.writers,
        lease: writers_lease,
        snapshotter: shape.snapshotter.clone(),
        stop: AtomicBool::new(false),
    });
    let collection = collect_beside_writers(
        &first,
        &writer_conns,
        settings,
        args.baseline,
        &args.trigger,
        pid,
    )
    .await?;
    let exports_after = first.gc_exports().await.unwrap_or_default();
    stats.merge(collection.stats);

    let (check_stats, checked) = check(
        &conns,
        &population,
        &shape.snapshotter,
        collection.writer_blobs,
        collection.writer_snapshots,
    )
    .await?;
    stats.merge(check_stats);

    let report = GcReport {
        label,
        images: population.images.len(),
        blobs: population.blobs.len(),
        snapshots: shape.snapshots,
        reachable_blobs: population.reachable_blobs(),
        reachable_snapshots: population.reachable_snapshots(),
        clients: n_clients,
        writers: args.writers,
        trigger: args.trigger.clone(),
        build_parts,
        build_seconds,
        collection_seconds: collection.seconds,
        collection_cpu_seconds: collection.cpu_seconds,
        during: collection.during,
        baseline: collection.baseline,
        baseline_seconds: collection.baseline_seconds,
        exports_before,
        own: match &args.containerd_log {
            Some(path) => {
                let log = std::fs::read_to_string(path)
                    .with_context(|| format!("reading containerd's log {}", path.display()))?;
                own_from_containerd_log(&log)
            }
            None => own_from_exports(&exports_after),
        },
        exports_after,
        checked,
        unexpected: stats.total_unexpected(),
        failure_count: stats.failure_count,
        failures: stats.failures,
        examples: stats.examples,
    };
    crate::out(&report.text());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(report.passed())
}

/// Writes the population over `conns` under `lease`: the blobs, the snapshot chains, the
/// images. The counts, and each part's name and time (s).
async fn build(
    conns: &[Conn],
    population: &Arc<Population>,
    snapshotter: &str,
    lease: &AsciiMetadataValue,
) -> anyhow::Result<(Stats, Vec<(String, f64)>)> {
    let mut stats = Stats::default();
    let mut parts = Vec::new();
    let (part, took) = {
        let population = population.clone();
        let lease = lease.clone();
        over_clients(
            conns,
            population.blobs.len(),
            "blob-write",
            move |conn, i| {
                let population = population.clone();
                let lease = lease.clone();
                async move {
                    let blob = &population.blobs[i];
                    let got = conn
                        .write_blob(
                            format!("plinth-gc-{i}"),
                            blob.data.clone(),
                            blob.digest.clone(),
                            blob.labels.clone(),
                            &lease,
                        )
                        .await?;
                    Ok(if got == blob.digest {
                        Ok(())
                    } else {
                        Err(format!("blob {}: committed as {got}", blob.digest))
                    })
                }
            },
        )
        .await?
    };
    stats.merge(part);
    parts.push((
        format!("{} blobs", population.blobs.len()),
        took.as_secs_f64(),
    ));
    let (part, took) = {
        let population = population.clone();
        let lease = lease.clone();
        let snapshotter = snapshotter.to_string();
        over_clients(
            conns,
            population.chains.len(),
            "snapshot-chain",
            move |conn, c| {
                let population = population.clone();
                let lease = lease.clone();
                let snapshotter = snapshotter.clone();
                async move {
                    let chain = &population.chains[c];
                    for depth in 0..chain.len {
                        let request = conn.request(
                            PrepareSnapshotRequest {
                                snapshotter: snapshotter.clone(),
                                key: chain.active(depth),
                                parent: chain.parent(depth),
                                labels: HashMap::new(),
                            },
                            Some(&lease),
                        );
                        conn.snapshots.clone().prepare(request).await?;
                        let request = conn.request(
                            CommitSnapshotRequest {
                                snapshotter: snapshotter.clone(),
                                name: chain.name(depth),
                                key: chain.active(depth),
                                ..CommitSnapshotRequest::default()
                            },
                            Some(&lease),
                        );
                        conn.snapshots.clone().commit(request).await?;
                    }
                    Ok(Ok(()))
                }
            },
        )
        .await?
    };
    stats.merge(part);
    parts.push((
        format!(
            "{} snapshots ({} chains)",
            population.chains.iter().map(|c| c.len).sum::<usize>(),
            population.chains.len()
        ),
        took.as_secs_f64(),
    ));
    let (part, took) = {
        let population = population.clone();
        over_clients(
            conns,
            population.images.len(),
            "image-create",
            move |conn, i| {
                let population = population.clone();
                async move {
                    let (name, target) = &population.images[i];
                    let request = conn.request(
                        CreateImageRequest {
                            image: Some(image(name, target)),
                        },
                        None,
                    );
                    conn.images.clone().create(request).await?;
                    Ok(Ok(()))
                }
            },
        )
        .await?
    };
    stats.merge(part);
    parts.push((
        format!("{} images", population.images.len()),
        took.as_secs_f64(),
    ));
    Ok((stats, parts))
}

/// The timed collection and what the writers saw of it.
struct Collection {
    /// The synchronous delete's latency, s.
    seconds: f64,
    /// The daemon's CPU time meanwhile, s.
    cpu_seconds: Option<f64>,
    during: Writes,
    baseline: Writes,
    baseline_seconds: f64,
    /// What the writers wrote under their lease, to check.
    writer_blobs: Vec<String>,
    writer_snapshots: Vec<String>,
    /// The writers' counts.
    stats: Stats,
}

/// Starts the writers on `writer_conns`, lets them write for `baseline`, then makes the
/// synchronous delete of `trigger` on `conn` and stops them once it has answered.
///
/// # Errors
/// The delete failed, or a writer panicked.
async fn collect_beside_writers(
    conn: &Conn,
    writer_conns: &[Conn],
    settings: Arc<WriterSettings>,
    baseline: Duration,
    trigger: &str,
    pid: Option<u32>,
) -> anyhow::Result<Collection> {
    let writer_tasks: Vec<_> = writer_conns
        .iter()
        .cloned()
        .enumerate()
        .map(|(k, conn)| tokio::spawn(writer(conn, k, settings.clone())))
        .collect();
    say!(
        "plinth-load: {} writers for {} before the collection",
        writer_conns.len(),
        seconds_text(baseline.as_secs_f64())
    );
    tokio::time::sleep(baseline).await;
    let cpu_before = pid.and_then(|pid| procstat::cpu_time(pid).ok());
    let gc_start = settings.epoch.elapsed();
    let collected = if trigger == "image" {
        let request = conn.request(
            DeleteImageRequest {
                name: TRIGGER_IMAGE.to_string(),
                sync: true,
            },
            None,
        );
        conn.images.clone().delete(request).await.map(drop)
    } else {
        let request = conn.request(
            DeleteLeaseRequest {
                id: POPULATION_LEASE.to_string(),
                sync: true,
            },
            None,
        );
        conn.leases.clone().delete(request).await.map(drop)
    };
    let gc_end = settings.epoch.elapsed();
    let cpu_after = pid.and_then(|pid| procstat::cpu_time(pid).ok());
    settings.stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for task in writer_tasks {
        logs.push(task.await.context("a writer panicked")?);
    }
    collected
        .map_err(plinthd::client::status_error)
        .context("the synchronous delete")?;
    let seconds = (gc_end - gc_start).as_secs_f64();
    say!("plinth-load: the collection took {}", seconds_text(seconds));
    let writes: Vec<Write> = logs.iter().flat_map(|l| l.writes.iter().copied()).collect();
    // A connection's first calls are not the baseline.
    let earliest = settings.interval * 2;
    let (during, baseline, baseline_seconds) = split_writes(&writes, gc_start, gc_end, earliest);
    let mut collection = Collection {
        seconds,
        cpu_seconds: match (cpu_before, cpu_after) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64()),
            _ => None,
        },
        during,
        baseline,
        baseline_seconds,
        writer_blobs: Vec::new(),
        writer_snapshots: Vec::new(),
        stats: Stats::default(),
    };
    for log in logs {
        collection.writer_blobs.extend(log.blobs);
        collection.writer_snapshots.extend(log.snapshots);
        collection.stats.merge(log.stats);
    }
    Ok(collection)
}

/// How many checked objects were there and how many gone.
#[derive(Default)]
struct Tally {
    kept: AtomicU64,
    gone: AtomicU64,
}

impl Tally {
    fn counts(&self) -> (u64, u64) {
        (
            self.kept.load(Ordering::Relaxed),
            self.gone.load(Ordering::Relaxed),
        )
    }
}

/// The verdict on `what` from the `answer` to a request for it: if `reachable` it must be
/// there and `right`, else gone (NotFound). Any other error is unexpected.
fn verdict<T>(
    what: &str,
    answer: Result<T, Status>,
    reachable: bool,
    tally: &Tally,
    right: impl FnOnce(T) -> Result<(), String>,
) -> CheckedCall {
    match answer {
        Ok(found) => {
            tally.kept.fetch_add(1, Ordering::Relaxed);
            Ok(if reachable {
                right(found).map_err(|wrong| format!("{what}: {wrong}"))
            } else {
                Err(format!("{what}, unreachable, survived"))
            })
        }
        Err(status) if status.code() == Code::NotFound => {
            tally.gone.fetch_add(1, Ordering::Relaxed);
            Ok(if reachable {
                Err(format!("{what}, reachable, was collected"))
            } else {
                Ok(())
            })
        }
        Err(status) => Err(status),
    }
}

/// Checks, over `conns`, every blob and snapshot of the population (kept if reachable, gone
/// if not), the images, and what the writers wrote under their lease (kept).
async fn check(
    conns: &[Conn],
    population: &Arc<Population>,
    snapshotter: &str,
    writer_blobs: Vec<String>,
    writer_snapshots: Vec<String>,
) -> anyhow::Result<(Stats, Checked)> {
    let mut stats = Stats::default();
    let mut checked = Checked::default();
    let tally = Arc::new(Tally::default());
    let (part, _) = {
        let population = population.clone();
        let tally = tally.clone();
        over_clients(
            conns,
            population.blobs.len(),
            "check-blob",
            move |conn, i| {
                let population = population.clone();
                let tally = tally.clone();
                async move {
                    let blob = &population.blobs[i];
                    let request = conn.request(
                        InfoRequest {
                            digest: blob.digest.clone(),
                        },
                        None,
                    );
                    let answer = conn.content.clone().info(request).await;
                    verdict(
                        &format!("blob {}", blob.digest),
                        answer,
                        blob.reachable,
                        &tally,
                        |reply| {
                            let info = reply.into_inner().info.unwrap_or_default();
                            if info.size == BLOB_SIZE as i64 && info.labels == blob.labels {
                                Ok(())
                            } else {
                                Err(format!("came back as {info:?}"))
                            }
                        },
                    )
                }
            },
        )
        .await?
    };
    stats.merge(part);
    (checked.blobs_kept, checked.blobs_gone) = tally.counts();

    let snapshots: Arc<Vec<(usize, usize)>> = Arc::new(
        population
            .chains
            .iter()
            .enumerate()
            .flat_map(|(c, chain)| (0..chain.len).map(move |d| (c, d)))
            .collect(),
    );
    let tally = Arc::new(Tally::default());
    let (part, _) = {
        let population = population.clone();
        let tally = tally.clone();
        let snapshotter = snapshotter.to_string();
        over_clients(conns, snapshots.len(), "check-snapshot", move |conn, i| {
            let population = population.clone();
            let tally = tally.clone();
            let (c, depth) = snapshots[i];
            let snapshotter = snapshotter.clone();
            async move {
                let chain = &population.chains[c];
                let name = chain.name(depth);
                let request = conn.request(
                    StatSnapshotRequest {
                        snapshotter,
                        key: name.clone(),
                    },
                    None,
                );
                let answer = conn.snapshots.clone().stat(request).await;
                verdict(
                    &format!("snapshot {name}"),
                    answer,
                    chain.reachable,
                    &tally,
                    |reply| {
                        let info = reply.into_inner().info.unwrap_or_default();
                        if info.name == name
                            && info.parent == chain.parent(depth)
                            && info.kind == Kind::Committed as i32
                        {
                            Ok(())
                        } else {
                            Err(format!("came back as {info:?}"))
                        }
                    },
                )
            }
        })
        .await?
    };
    stats.merge(part);
    (checked.snapshots_kept, checked.snapshots_gone) = tally.counts();

    let conn = &conns[0];
    match conn
        .images
        .clone()
        .list(conn.request(ListImagesRequest::default(), None))
        .await
    {
        Ok(reply) => {
            let names: HashSet<String> = reply
                .into_inner()
                .images
                .into_iter()
                .map(|i| i.name)
                .collect();
            let expected: HashSet<String> =
                population.images.iter().map(|(n, _)| n.clone()).collect();
            checked.images_kept = names.intersection(&expected).count() as u64;
            if names != expected {
                stats.failure(format!(
                    "{} images listed after the collection, {} expected ({} of them missing)",
                    names.len(),
                    expected.len(),
                    expected.difference(&names).count()
                ));
            }
        }
        Err(status) => stats.unexpected("check-images", &status),
    }

    let tally = Arc::new(Tally::default());
    let writer_blobs = Arc::new(writer_blobs);
    let writer_snapshots = Arc::new(writer_snapshots);
    let (part, _) = {
        let writer_blobs = writer_blobs.clone();
        let writer_snapshots = writer_snapshots.clone();
        let tally = tally.clone();
        let snapshotter = snapshotter.to_string();
        over_clients(
            conns,
            writer_blobs.len() + writer_snapshots.len(),
            "check-writer",
            move |conn, i| {
                let writer_blobs = writer_blobs.clone();
                let writer_snapshots = writer_snapshots.clone();
                let tally = tally.clone();
                let snapshotter = snapshotter.clone();
                async move {
                    let (what, answer) = if let Some(blob) = writer_blobs.get(i) {
                        let request = conn.request(
                            InfoRequest {
                                digest: blob.clone(),
                            },
                            None,
                        );
                        (
                            format!("writer blob {blob} (under a live lease)"),
                            conn.content.clone().info(request).await.map(drop),
                        )
                    } else {
                        let key = &writer_snapshots[i - writer_blobs.len()];
                        let request = conn.request(
                            StatSnapshotRequest {
                                snapshotter,
                                key: key.clone(),
                            },
                            None,
                        );
                        (
                            format!("writer snapshot {key} (under a live lease)"),
                            conn.snapshots.clone().stat(request).await.map(drop),
                        )
                    };
                    verdict(&what, answer, true, &tally, Ok)
                }
            },
        )
        .await?
    };
    stats.merge(part);
    checked.writers_kept = tally.counts().0;
    Ok((stats, checked))
}

/// An image `name` whose target is the manifest `target`.
fn image(name: &str, target: &str) -> Image {
    Image {
        name: name.to_string(),
        target: Some(Descriptor {
            media_type: MANIFEST.to_string(),
            digest: target.to_string(),
            size: BLOB_SIZE as i64,
            annotations: HashMap::new(),
        }),
        labels: HashMap::new(),
        created_at: None,
        updated_at: None,
    }
}

/// Creates lease `id` (no labels: it never expires).
async fn create_lease(conn: &Conn, id: &str) -> anyhow::Result<()> {
    conn.leases
        .clone()
        .create(conn.request(
            CreateLeaseRequest {
                id: id.to_string(),
                labels: HashMap::new(),
            },
            None,
        ))
        .await
        .map_err(plinthd::client::status_error)
        .with_context(|| format!("creating lease {id}"))?;
    Ok(())
}

/// Deletes lease `id`, with `sync` or not.
async fn delete_lease(conn: &Conn, id: &str, sync: bool) -> anyhow::Result<()> {
    conn.leases
        .clone()
        .delete(conn.request(
            DeleteLeaseRequest {
                id: id.to_string(),
                sync,
            },
            None,
        ))
        .await
        .map_err(plinthd::client::status_error)
        .with_context(|| format!("deleting lease {id}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(images: usize, blobs: usize, snapshots: usize, chain: usize) -> Shape {
        Shape {
            images,
            blobs,
            snapshots,
            chain,
            snapshotter: "overlayfs".into(),
            seed: 1,
        }
    }

    /// The blobs and snapshots the images reach, by the gc rules: an image keeps its target,
    /// a blob what its content labels name, a config the snapshot its label names, a
    /// snapshot its parent.
    fn mark(p: &Population) -> (HashSet<String>, HashSet<String>) {
        let by_digest: HashMap<&str, &BlobSpec> =
            p.blobs.iter().map(|b| (b.digest.as_str(), b)).collect();
        let mut blobs = HashSet::new();
        let mut snapshots = HashSet::new();
        let mut todo: Vec<String> = p.images.iter().map(|(_, t)| t.clone()).collect();
        while let Some(d) = todo.pop() {
            if !blobs.insert(d.clone()) {
                continue;
            }
            for (k, v) in &by_digest[d.as_str()].labels {
                if k.starts_with("containerd.io/gc.ref.content") {
                    todo.push(v.clone());
                } else if let Some(rest) = k.strip_prefix(REF_SNAPSHOT) {
                    assert_eq!(rest.split('/').next(), Some("overlayfs"));
                    snapshots.insert(v.clone());
                }
            }
        }
        // Parents: a name's chain below it.
        let tops: Vec<String> = snapshots.iter().cloned().collect();
        for top in tops {
            let chain = p.chains.iter().find(|c| c.top() == top).unwrap();
            snapshots.extend((0..chain.len).map(|d| chain.name(d)));
        }
        (blobs, snapshots)
    }

    #[test]
    fn half_of_everything_is_reachable_and_exactly_what_is_marked() {
        // (images, blobs, snapshots, chain) → (reachable blobs, reachable snapshots)
        let cases = [
            ((1_000, 10_000, 2_000, 4), (5_000, 1_000)),
            ((3, 12, 8, 4), (6, 4)),
            ((3, 13, 9, 4), (7, 5)),
            ((2, 11, 30, 3), (6, 15)),
            ((5, 20, 0, 4), (10, 0)),
            ((4, 16, 1, 4), (8, 1)),
        ];
        for ((images, blobs, snapshots, chain), (want_blobs, want_snapshots)) in cases {
            let p = population(&shape(images, blobs, snapshots, chain)).unwrap();
            let what = format!("{images} {blobs} {snapshots} {chain}");
            assert_eq!(p.blobs.len(), blobs, "{what}");
            assert_eq!(p.images.len(), images, "{what}");
            assert_eq!(
                p.chains.iter().map(|c| c.len).sum::<usize>(),
                snapshots,
                "{what}"
            );
            assert_eq!(
                (p.reachable_blobs(), p.reachable_snapshots()),
                (want_blobs, want_snapshots),
                "{what}"
            );
            let unique: HashSet<&str> = p.blobs.iter().map(|b| b.digest.as_str()).collect();
            assert_eq!(unique.len(), blobs, "{what}: blobs not unique");
            assert!(p.blobs.iter().all(|b| b.data.len() == BLOB_SIZE), "{what}");
            let (marked_blobs, marked_snapshots) = mark(&p);
            for b in &p.blobs {
                assert_eq!(
                    marked_blobs.contains(&b.digest),
                    b.reachable,
                    "{what}: {b:?}"
                );
            }
            for c in &p.chains {
                for d in 0..c.len {
                    assert_eq!(
                        marked_snapshots.contains(&c.name(d)),
                        c.reachable,
                        "{what}: {c:?}"
                    );
                }
                // Every chain, reachable or not, is named by some config.
                assert!(
                    p.blobs
                        .iter()
                        .any(|b| b.labels.values().any(|v| *v == c.top())),
                    "{what}: {c:?} named by no config"
                );
            }
        }
    }

    #[test]
    fn shapes_that_cannot_be_built_are_refused() {
        for (s, why) in [
            (shape(0, 10, 0, 1), "--images"),
            (shape(3, 11, 0, 1), "fewer than 4 per image"),
            (shape(3, 12, 4, 0), "--chain"),
        ] {
            let error = population(&s).unwrap_err();
            assert!(error.contains(why), "{s:?}: {error}");
        }
    }

    fn write(kind: WriteKind, start_ms: u64, took_ms: u64) -> Write {
        Write {
            kind,
            start: Duration::from_millis(start_ms),
            took: Duration::from_millis(took_ms),
        }
    }

    #[test]
    fn writes_split_into_overlapping_and_baseline() {
        // The collection runs from 1000 to 1300 ms; the baseline is 700..1000.
        let writes = [
            write(WriteKind::Lease, 100, 50),      // before the baseline
            write(WriteKind::Lease, 700, 5),       // baseline
            write(WriteKind::Content, 990, 5),     // baseline
            write(WriteKind::Content, 995, 10),    // overlaps (ends inside)
            write(WriteKind::Snapshot, 1100, 250), // overlaps (starts inside)
            write(WriteKind::Lease, 1300, 5),      // after
        ];
        let (during, baseline, seconds) = split_writes(
            &writes,
            Duration::from_millis(1000),
            Duration::from_millis(1300),
            Duration::ZERO,
        );
        assert_eq!((during.count, during.max_us), (2, 250_000));
        assert_eq!(
            during.max_by_kind_us,
            BTreeMap::from([
                ("content write".to_string(), 10_000),
                ("snapshot prepare".to_string(), 250_000)
            ])
        );
        assert_eq!((baseline.count, baseline.max_us), (2, 5_000));
        assert!((seconds - 0.3).abs() < 1e-9);
        // A collection longer than the writers ran before it: the baseline is what there is.
        let (_, baseline, seconds) = split_writes(
            &writes,
            Duration::from_millis(1000),
            Duration::from_millis(5000),
            Duration::from_millis(600),
        );
        assert_eq!(baseline.count, 2);
        assert!((seconds - 0.4).abs() < 1e-9);
    }

    fn report(label: &str, collection: f64, max_us: u32) -> GcReport {
        GcReport {
            label: label.into(),
            images: 2,
            blobs: 8,
            snapshots: 4,
            reachable_blobs: 4,
            reachable_snapshots: 2,
            clients: 2,
            writers: 1,
            trigger: "lease".into(),
            build_parts: Vec::new(),
            build_seconds: 20.0,
            collection_seconds: collection,
            collection_cpu_seconds: None,
            during: Writes {
                count: 3,
                max_us,
                p99_us: max_us,
                max_by_kind_us: BTreeMap::from([("content write".to_string(), max_us)]),
            },
            baseline: Writes::default(),
            baseline_seconds: collection,
            exports_before: BTreeMap::new(),
            exports_after: BTreeMap::new(),
            own: Own::default(),
            checked: Checked::default(),
            unexpected: 0,
            failure_count: 0,
            failures: Vec::new(),
            examples: Vec::new(),
        }
    }

    #[test]
    fn markdown_rows_with_the_ratio_and_the_median_of_rounds() {
        let md = table(&[
            report("containerd", 4.0, 2_000_000),
            report("plinthd", 1.0, 50_000),
        ]);
        for line in [
            "| figure | containerd | plinthd | plinthd ÷ containerd |",
            "| collection, total (the sync delete's latency) | 4000 ms | 1000 ms | 0.25 |",
            "| writer hold-up: longest write overlapping the collection | 2000 ms | 50.0 ms | 0.03 |",
            "| longest content write overlapping the collection | 2000 ms | 50.0 ms | 0.03 |",
            "| population build (8 blobs, 4 snapshots, 2 images; 2 clients) | 20.0 s | 20.0 s | 1.00 |",
        ] {
            assert!(md.lines().any(|l| l == line), "no line {line:?} in\n{md}");
        }
        // No daemon has a figure for it: no row.
        assert!(!md.contains("daemon CPU"), "{md}");
        let md = table(&[
            report("containerd", 4.0, 1),
            report("containerd", 6.0, 1),
            report("containerd", 5.0, 1),
        ]);
        assert!(
            md.lines().any(|l| l
                == "| collection, total (the sync delete's latency) | 5000 ms (4000 ms–6000 ms) |"),
            "{md}"
        );
        assert!(
            md.starts_with("Each cell is the median of 3 rounds"),
            "{md}"
        );
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("1m13.53790613s", Some(73.537_906_13)),
            ("4.527071ms", Some(0.004_527_071)),
            ("2m29.999314979s", Some(149.999_314_979)),
            ("250µs", Some(0.000_25)),
            ("1h0m0s", Some(3600.0)),
            ("1.5", None),
            ("", None),
            ("3 parsecs", None),
        ];
        for (text, expected) in cases {
            let got = parse_go_duration(text);
            match (got, expected) {
                (Some(g), Some(e)) => assert!((g - e).abs() < 1e-9, "{text}: {g}"),
                (None, None) => {}
                _ => panic!("{text}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn own_figures_from_plinthd_s_exports_and_containerd_s_log() {
        let exports = BTreeMap::from([(
            "scheduler.last_run_phases".to_string(),
            "mark 4.527071ms, sweep 11.808588ms, backend 1m0.5s (writes raced the mark: the sweep checked what they touched)"
                .to_string(),
        )]);
        let own = own_from_exports(&exports);
        assert_eq!(own.backend, Some(60.5));
        assert!((own.mark.unwrap() - 0.004_527_071).abs() < 1e-12);
        assert!((own.locked.unwrap() - 0.011_808_588).abs() < 1e-12);
        assert_eq!(own_from_exports(&BTreeMap::new()), Own::default());
        let log = r#"time="2026-11-30T16:43:30.949810877Z" level=debug msg="schedule content cleanup"
time="2026-11-30T16:43:31.060592266Z" level=debug msg="content garbage collected" d=107.5ms
time="2026-11-30T16:43:31.061267389Z" level=debug msg="snapshot garbage collected" d=2.5s snapshotter=overlayfs
time="2026-11-30T16:43:31.061337854Z" level=debug msg="garbage collected" d=23.25ms
time="2026-11-30T16:44:31.061337854Z" level=debug msg="garbage collected" d=1ms"#;
        let own = own_from_containerd_log(log);
        assert_eq!((own.mark, own.backend), (None, Some(2.5)));
        assert!((own.locked.unwrap() - 0.023_25).abs() < 1e-12);
    }

    #[test]
    fn times_read_at_their_scale() {
        for (seconds, text) in [
            (65.24, "65.2 s"),
            (10.0, "10.0 s"),
            (2.5, "2500 ms"),
            (0.1, "100 ms"),
            (0.0123, "12.3 ms"),
        ] {
            assert_eq!(seconds_text(seconds), text);
        }
    }
}
