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
    /// A plugin's root or state directory could not be created.
    #[error("creating directory {path} for plugin {uri}: {source}")]
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

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest candidate to `wanted`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (wanted.len() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(wanted, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// `" (did you mean X?)"` or an empty string.
pub(crate) fn hint<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(wanted, candidates)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}
