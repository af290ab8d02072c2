//! Error types of the plugin model, one enum per operation, each with a [`Category`].

use std::path::PathBuf;

use crate::registry::Source;

/// The category of an error, mapping one-to-one onto gRPC status codes at the API edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Category {
    /// The input is malformed (gRPC `InvalidArgument`).
    InvalidArgument,
    /// The thing does not exist (gRPC `NotFound`).
    NotFound,
    /// The thing exists already (gRPC `AlreadyExists`).
    AlreadyExists,
    /// The system is not in the state the operation needs (gRPC `FailedPrecondition`).
    FailedPrecondition,
    /// A dependency is down or busy; retry later (gRPC `Unavailable`).
    Unavailable,
    /// Stored data is lost or corrupt, e.g. a blob whose bytes no longer match its digest
    /// (gRPC `DataLoss`).
    DataLoss,
    /// A resource ran out, e.g. the disk is full (gRPC `ResourceExhausted`).
    ResourceExhausted,
    /// The operation or the kind of thing asked for is not supported here (gRPC
    /// `Unimplemented`).
    Unimplemented,
    /// Anything else (gRPC `Internal`).
    Internal,
}

/// A registration broke one of the rules of [`Registration::validate`](crate::Registration::validate)
/// or clashed with another one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// The type is empty.
    #[error("plugin with id {id:?} has no type: give it one, e.g. \"io.containerd.content.v1\"")]
    NoType {
        /// The id it has.
        id: String,
    },
    /// The id is empty.
    #[error("plugin of type {plugin_type} has no id: give it a short name, e.g. \"local\"")]
    NoId {
        /// The type it has.
        plugin_type: String,
    },
    /// The type or id has a character that cannot be part of a URI or a directory name.
    #[error(
        "plugin {what} {value:?} contains {character:?}: use only ASCII letters, digits, '.', '-' and '_'"
    )]
    InvalidName {
        /// `"type"` or `"id"`.
        what: &'static str,
        /// The offending value.
        value: String,
        /// The first bad character.
        character: char,
    },
    /// `"*"` was listed with other requires.
    #[error(
        "plugin {uri} requires {requires:?}: \"*\" (every other plugin) must be its only entry; remove the other types"
    )]
    WildcardNotAlone {
        /// The plugin.
        uri: String,
        /// What it listed.
        requires: Vec<String>,
    },
    /// A plugin requires its own type.
    #[error("plugin {uri} requires its own type {plugin_type}: remove it from its requires")]
    RequiresOwnType {
        /// The plugin.
        uri: String,
        /// Its type.
        plugin_type: String,
    },
    /// Two registrations have the same URI.
    #[error(
        "plugin {uri} is registered twice: by {first} and by {second}; give one of them another id"
    )]
    Duplicate {
        /// The URI both claim.
        uri: String,
        /// Where the first one came from.
        first: Source,
        /// Where the second one came from.
        second: Source,
    },
}

impl RegistrationError {
    /// The category of this error.
    pub fn category(&self) -> Category {
        match self {
            RegistrationError::Duplicate { .. } => Category::AlreadyExists,
            _ => Category::InvalidArgument,
        }
    }
}

/// A registration together with where it came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_kind}: {error}")]
pub struct SourcedRegistrationError {
    /// Where the bad registration came from.
    pub source_kind: Source,
    /// What is wrong with it.
    pub error: RegistrationError,
}

/// The registrations form a dependency cycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "plugin dependency cycle: {}: remove one of these requires or disable one of these plugins",
    cycle_text(.cycle)
)]
pub struct CycleError {
    /// The URIs on the cycle, in order; the first requires the second, …, the last the first.
    pub cycle: Vec<String>,
}

fn cycle_text(cycle: &[String]) -> String {
    let mut parts: Vec<&str> = cycle.iter().map(String::as_str).collect();
    if let Some(first) = cycle.first() {
        parts.push(first);
    }
    parts.join(" -> ")
}

impl CycleError {
    /// The category of this error.
    pub fn category(&self) -> Category {
        Category::FailedPrecondition
    }
}

/// Start-up could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The plugins require each other in a cycle.
    #[error(transparent)]
    Cycle(#[from] CycleError),
    /// A plugin in `required_plugins` does not exist in this build.
    #[error(
        "required plugin {uri} is not registered{hint}: remove it from required_plugins or build with the plugin"
    )]
    RequiredMissing {
        /// The URI from `required_plugins`.
        uri: String,
        /// A "did you mean" hint, or empty.
        hint: String,
    },
    /// A plugin in `required_plugins` is disabled by config.
    #[error(
        "required plugin {uri} is disabled: remove it from disabled_plugins or from required_plugins"
    )]
    RequiredDisabled {
        /// The URI.
        uri: String,
    },
    /// A plugin in `required_plugins` ended other than ok.
    #[error("required plugin {uri} {outcome}")]
    RequiredNotOk {
        /// The URI.
        uri: String,
        /// "failed: …" or "skipped: …".
        outcome: String,
    },
    /// A plugin's root or state directory could not be created. The I/O error is the
    /// [`source`](std::error::Error::source), not part of this message.
    #[error("creating directory {} for plugin {uri}", path.display())]
    Directory {
        /// The plugin.
        uri: String,
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl StartupError {
    /// The category of this error.
    pub fn category(&self) -> Category {
        match self {
            StartupError::Cycle(_) => Category::FailedPrecondition,
            StartupError::RequiredMissing { .. } => Category::NotFound,
            StartupError::RequiredDisabled { .. } | StartupError::RequiredNotOk { .. } => {
                Category::FailedPrecondition
            }
            StartupError::Directory { .. } => Category::Internal,
        }
    }
}

/// Optimal-string-alignment distance (Levenshtein plus swaps of two neighbours, so that
/// `debgu` is one edit from `debug`), for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between the first i chars of a and the first j of b.
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// The distance from `wanted` to `candidate` when it is small enough to be a typo: at most
/// one edit, one more for every further six characters of `wanted`, and never more than
/// half of it (a one-letter name suggests nothing).
fn typo_distance(wanted: &str, candidate: &str) -> Option<usize> {
    let length = wanted.chars().count();
    let limit = (1 + length / 6).min(length / 2);
    let distance = edit_distance(wanted, candidate);
    (distance <= limit).then_some(distance)
}

/// How far `candidate` is from `wanted`, if it is a likely meaning of it.
///
/// Dotted names (plugin URIs) are compared segment by segment, so that the long shared
/// prefix does not make every URI look close: exactly one segment may differ, by a typo
/// (`io.containerd.grpc.v1.versoin` → `…version` and `io.containerd.snapshoter.v1.native` →
/// `io.containerd.snapshotter.v1.native`, but `io.containerd.grpc.v1.cri` → nothing). A bare
/// name is compared with the last segment (the id), so `overlayfs` suggests
/// `io.containerd.snapshotter.v1.overlayfs`. Anything else is compared whole.
fn closeness(wanted: &str, candidate: &str) -> Option<usize> {
    match (wanted.contains('.'), candidate.rsplit_once('.')) {
        (true, Some(_)) => {
            let wanted: Vec<&str> = wanted.split('.').collect();
            let candidate: Vec<&str> = candidate.split('.').collect();
            if wanted.len() != candidate.len() {
                return None;
            }
            let mut differing = wanted.iter().zip(&candidate).filter(|(w, c)| w != c);
            match (differing.next(), differing.next()) {
                (Some((w, c)), None) => typo_distance(w, c),
                _ => None,
            }
        }
        (false, Some((_, candidate_id))) => typo_distance(wanted, candidate_id),
        _ => typo_distance(wanted, candidate),
    }
}

/// The closest candidate to `wanted`, if it is close enough to be a likely typo (see
/// [`closeness`]); of equally close ones, the first in sorted order.
pub(crate) fn did_you_mean<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|c| *c != wanted)
        .filter_map(|c| closeness(wanted, c).map(|d| (d, c)))
        .min()
        .map(|(_, c)| c)
}

/// `" (did you mean X?)"` or an empty string.
pub(crate) fn hint<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(wanted, candidates)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    const TOP_LEVEL: &[&str] = &[
        "version",
        "root",
        "state",
        "plugin_dir",
        "disabled_plugins",
        "required_plugins",
        "imports",
        "strict",
        "grpc",
        "debug",
        "timeouts",
        "plugins",
        "proxy_plugins",
    ];
    const GRPC: &[&str] = &[
        "address",
        "uid",
        "gid",
        "max_recv_message_size",
        "max_send_message_size",
    ];
    const URIS: &[&str] = &[
        "io.containerd.content.v1.content",
        "io.containerd.grpc.v1.content",
        "io.containerd.grpc.v1.introspection",
        "io.containerd.grpc.v1.namespaces",
        "io.containerd.grpc.v1.snapshots",
        "io.containerd.grpc.v1.version",
        "io.containerd.metadata.v1.redb",
        "io.containerd.snapshotter.v1.native",
        "io.containerd.snapshotter.v1.overlayfs",
    ];

    #[test]
    fn suggestions_are_close_names_only() {
        // (what was written, the names that exist, the suggestion or none)
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            // Keys: a typo or two.
            ("rooot", TOP_LEVEL, Some("root")),
            ("disabled_plugin", TOP_LEVEL, Some("disabled_plugins")),
            ("debgu", TOP_LEVEL, Some("debug")),
            ("proxy_plugin", TOP_LEVEL, Some("proxy_plugins")),
            ("adress", GRPC, Some("address")),
            ("max_recv_msg_size", GRPC, None),
            ("x", &["y"], None),
            ("cri", TOP_LEVEL, None),
            ("oom_score", TOP_LEVEL, None),
            // URIs: ids compared when the types match, types when the ids match.
            (
                "io.containerd.grpc.v1.versoin",
                URIS,
                Some("io.containerd.grpc.v1.version"),
            ),
            (
                "io.containerd.grpc.v1.snapshot",
                URIS,
                Some("io.containerd.grpc.v1.snapshots"),
            ),
            (
                "io.containerd.snapshoter.v1.native",
                URIS,
                Some("io.containerd.snapshotter.v1.native"),
            ),
            (
                "io.containerd.snapshotter.v1.overlay",
                URIS,
                Some("io.containerd.snapshotter.v1.overlayfs"),
            ),
            ("io.containerd.grpc.v1.cri", URIS, None),
            ("io.containerd.snapshotter.v1.aufs", URIS, None),
            ("io.containerd.snapshotter.v1.btrfs", URIS, None),
            ("io.containerd.snapshotter.v1.zfs", URIS, None),
            ("io.containerd.snapshotter.v1.devmapper", URIS, None),
            ("io.containerd.metadata.v1.bolt", URIS, None),
            ("io.containerd.runtime.v2.task", URIS, None),
            ("io.containerd.grpc.v1.tasks", URIS, None),
            ("io.containerd.service.v1.content", URIS, None),
            // A bare id (containerd's version 1 style) names the URI that ends in it.
            (
                "overlayfs",
                URIS,
                Some("io.containerd.snapshotter.v1.overlayfs"),
            ),
            ("redb", URIS, Some("io.containerd.metadata.v1.redb")),
            ("bolt", URIS, None),
        ];
        for (wanted, candidates, expected) in cases {
            assert_eq!(
                did_you_mean(wanted, candidates.iter().copied()),
                *expected,
                "{wanted}"
            );
        }
    }
}
