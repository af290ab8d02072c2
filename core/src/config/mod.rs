//! Configuration: containerd-compatible TOML (versions 1 to 3), imports, per-plugin typed
//! sections, strict mode, and serialising back (defaults, effective, migrated).
//!
//! Loading goes in three steps:
//! 1. [`ConfigLoader::load`] reads a file and its imports, migrates each one to version 3
//!    (short plugin ids become URIs; each plugin's migration hook runs once per version step)
//!    and merges them as containerd does: the main file first, then each import over it;
//!    scalars override, top-level lists append without duplicates, `[plugins]` tables merge
//!    deeply, and lists inside plugin tables are replaced.
//! 2. [`LoadedConfig::resolve`] decodes every `[plugins."<uri>"]` section over its plugin's
//!    defaults into its typed config, and reports unknown keys, sections of unknown plugins and
//!    unknown entries in `disabled_plugins` / `required_plugins` with file, line and column, in
//!    file and line order, each with a "did you mean" hint when a known name is close. In
//!    strict mode each report is an error. Values a plugin does not allow (a closed set
//!    decoded as an enum, or a rule of its [`ValidateConfig`](crate::registration::ValidateConfig)
//!    hook) are errors with file, line, column, plugin and key, whatever the mode.
//! 3. The daemon hands the result to [`init_plugins`](crate::init_plugins).

mod keys;
mod merge;
mod source_map;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use self::keys::fields_of;
pub(crate) use self::merge::deep_merge;
use self::merge::merge_top_level;
pub use self::merge::parse_duration;
pub use self::source_map::Location;
use self::source_map::{LineIndex, SourceMap};
use crate::error::hint;
use crate::graph::DisableFilter;
use crate::registration::{AnyConfig, ignored_path, track_path};
use crate::registry::Registry;

/// The config version this crate writes; older files are migrated to it on load.
pub const CURRENT_VERSION: u32 = 3;

/// The key under `[timeouts]` of the time-out of every plugin's init (`"0s"`: none).
pub const INIT_TIMEOUT_KEY: &str = "plinth.init";
/// The prefix of per-plugin init time-outs under `[timeouts]`: `"plinth.init.<uri>" = "30s"`.
pub const INIT_TIMEOUT_PREFIX: &str = "plinth.init.";
/// The key under `[timeouts]` of the period after which a slow init is logged.
pub const INIT_WATCHDOG_KEY: &str = "plinth.init-watchdog";

/// The daemon's config, version 3 (containerd's layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The version of the file; 3 after loading.
    pub version: u32,
    /// Where plugins keep persistent data (`<root>/<uri>`).
    pub root: PathBuf,
    /// Where plugins keep run-time state (`<state>/<uri>`).
    pub state: PathBuf,
    /// Where shared-library plugins are looked for (default `<root>/plugins`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_dir: Option<PathBuf>,
    /// URIs of plugins not to initialise.
    pub disabled_plugins: Vec<String>,
    /// URIs of plugins that must initialise, or start-up fails.
    pub required_plugins: Vec<String>,
    /// Other config files (globs, relative to this file) merged over this one.
    pub imports: Vec<String>,
    /// Treat every report about the config (unknown keys, unknown plugins) as an error.
    pub strict: bool,
    /// The gRPC server.
    pub grpc: GrpcConfig,
    /// Logging.
    pub debug: DebugConfig,
    /// Named time-outs, as Go-style durations (`"5s"`, `"1m30s"`).
    pub timeouts: BTreeMap<String, String>,
    /// One section per plugin, keyed by URI; decoded by [`LoadedConfig::resolve`].
    pub plugins: toml::Table,
    /// Plugins served by other processes over gRPC.
    pub proxy_plugins: BTreeMap<String, ProxyPlugin>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: CURRENT_VERSION,
            root: PathBuf::from("/var/lib/plinth"),
            state: PathBuf::from("/run/plinth"),
            plugin_dir: None,
            disabled_plugins: Vec::new(),
            required_plugins: Vec::new(),
            imports: Vec::new(),
            strict: false,
            grpc: GrpcConfig::default(),
            debug: DebugConfig::default(),
            timeouts: BTreeMap::new(),
            plugins: toml::Table::new(),
            proxy_plugins: BTreeMap::new(),
        }
    }
}

/// `[grpc]`: the daemon's gRPC server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcConfig {
    /// The unix socket path.
    pub address: String,
    /// Owner uid of the socket.
    pub uid: u32,
    /// Owner gid of the socket.
    pub gid: u32,
    /// Largest message accepted, in bytes.
    pub max_recv_message_size: u64,
    /// Largest message sent, in bytes.
    pub max_send_message_size: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: "/run/plinth/plinthd.sock".to_string(),
            uid: 0,
            gid: 0,
            max_recv_message_size: 16 << 20,
            max_send_message_size: 16 << 20,
        }
    }
}

/// `[debug]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DebugConfig {
    /// One of [`DebugConfig::LEVELS`] (any case).
    pub level: String,
    /// One of [`DebugConfig::FORMATS`].
    pub format: String,
}

impl DebugConfig {
    /// The log levels `level` may name, least severe first.
    pub const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
    /// The log formats `format` may name.
    pub const FORMATS: &[&str] = &["text", "json"];
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            level: "info".to_string(),
            format: "text".to_string(),
        }
    }
}

/// `[proxy_plugins.<name>]`: a plugin served by another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProxyPlugin {
    /// `snapshot` or `content`, or a full plugin type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The socket path (or `unix://` URL) of the process.
    pub address: String,
    /// The platform it serves, e.g. `linux/amd64`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    /// Facts shown by introspection.
    pub exports: BTreeMap<String, String>,
    /// Capabilities shown by introspection.
    pub capabilities: Vec<String>,
}

/// What is wrong with a config, beyond a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read. The I/O error is the [`source`](std::error::Error::source),
    /// not part of this message: print the chain (e.g. anyhow's `{:#}`) to see it once.
    #[error("reading config {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{location}: {message}")]
    Syntax {
        /// Where.
        location: Location,
        /// What the parser said.
        message: String,
    },
    /// A value has the wrong type (in the top level or in a plugin's section).
    #[error("{location}: {}{message}", plugin.as_ref().map(|p| format!("plugin {p}: ")).unwrap_or_default())]
    Type {
        /// Where.
        location: Location,
        /// The plugin whose section it is, if any.
        plugin: Option<String>,
        /// The key path and what serde said.
        message: String,
    },
    /// The version is not 1, 2 or 3.
    #[error("{location}: unsupported config version {found}: use 1, 2 or 3")]
    Version {
        /// Where.
        location: Location,
        /// The version written.
        found: i64,
    },
    /// A plugin's migration hook refused the file.
    #[error("{}: migrating plugin {uri} from version {from_version}: {message}", file.display())]
    Migration {
        /// The file being migrated.
        file: PathBuf,
        /// The plugin whose hook failed.
        uri: String,
        /// The version migrated from.
        from_version: u32,
        /// What the hook said.
        message: String,
    },
    /// An import pattern is not a valid glob.
    #[error("{location}: import {pattern:?} is not a valid glob: {message}")]
    Import {
        /// Where the import is written.
        location: Location,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        message: String,
    },
    /// An import without glob characters names a file that is not there (containerd
    /// refuses it too; a pattern may match nothing).
    #[error(
        "{location}: import {pattern:?} names {}, which is not a file: fix the path, or remove the import (only a pattern with *, ? or [ may match nothing)",
        path.display()
    )]
    ImportMissing {
        /// Where the import is written.
        location: Location,
        /// The import as written.
        pattern: String,
        /// The file it names, resolved against the importing file's directory.
        path: PathBuf,
    },
    /// A time-out is not a duration.
    #[error("{location}: timeouts.{key:?} = {value:?} is not a duration: {message}")]
    Duration {
        /// Where.
        location: Location,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// `required_plugins` names a plugin this build left out.
    #[error("{}: required plugin {uri} is not compiled into this build; {how}", location.as_ref().map(ToString::to_string).unwrap_or_else(|| "config".to_string()))]
    NotCompiled {
        /// Where it is named.
        location: Option<Location>,
        /// The plugin.
        uri: String,
        /// How to get it, e.g. "enable feature `content-local`".
        how: String,
    },
    /// A value has the right type but is not allowed: not one of a closed set, or against
    /// a rule of the plugin's [`ValidateConfig`](crate::registration::ValidateConfig) hook.
    #[error("{}: {}{key}: {message}", location.as_ref().map(ToString::to_string).unwrap_or_else(|| "config".to_string()), plugin.as_ref().map(|p| format!("plugin {p}: ")).unwrap_or_default())]
    Invalid {
        /// Where the value is written, when it is written in a file.
        location: Option<Location>,
        /// The plugin whose section it is, if any.
        plugin: Option<String>,
        /// The dotted key, inside the plugin's section for a plugin.
        key: String,
        /// What is wrong, and what is allowed.
        message: String,
    },
    /// `required_plugins` names a plugin that no build of this program provides (e.g. one
    /// of containerd's, see [`LoadedConfig::with_not_provided`]).
    #[error("{}: required plugin {uri} is {what}: remove it from required_plugins", location.as_ref().map(ToString::to_string).unwrap_or_else(|| "config".to_string()))]
    NotProvided {
        /// Where it is named.
        location: Option<Location>,
        /// The plugin.
        uri: String,
        /// What it is, e.g. "a containerd plugin plinthd does not provide".
        what: String,
    },
    /// Strict mode is on and there are reports.
    #[error("config has {} problem(s) in strict mode:\n{}", .0.len(), .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Strict(Vec<Diagnostic>),
}

/// A report about the config that is not fatal unless strict mode is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where it is written, when known.
    pub location: Option<Location>,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{location}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Reads config files.
#[derive(Debug, Clone)]
pub struct ConfigLoader<'r> {
    registry: &'r Registry,
    base: Config,
}

/// One file, read, parsed and migrated to version 3, before merging.
#[derive(Debug)]
struct FileConfig {
    path: PathBuf,
    table: toml::Table,
    sources: SourceMap,
    imports: Vec<(String, Location)>,
}

impl<'r> ConfigLoader<'r> {
    /// A loader that knows the plugins of `registry` (for short ids and migration hooks).
    pub fn new(registry: &'r Registry) -> Self {
        ConfigLoader {
            registry,
            base: Config::default(),
        }
    }

    /// Uses `base` instead of [`Config::default`] for every key no file sets (a daemon run
    /// by an ordinary user puts its root and socket under the user's own directories).
    pub fn with_base(mut self, base: Config) -> Self {
        self.base = base;
        self
    }

    /// The embedded defaults: no file.
    pub fn defaults(&self) -> LoadedConfig {
        LoadedConfig {
            config: self.base.clone(),
            sources: SourceMap::default(),
            unknown_top_level: Vec::new(),
            files: Vec::new(),
            left_out: Vec::new(),
            not_provided: Vec::new(),
        }
    }

    /// Reads `path` and every file it imports (recursively, each file once), migrates each
    /// to version 3 and merges them.
    ///
    /// # Errors
    /// Unreadable files, syntax errors, bad versions, failed migrations, bad globs and type
    /// errors in the top-level keys, each with file, line and column.
    pub fn load(&self, path: &Path) -> Result<LoadedConfig, ConfigError> {
        let main = self.load_file(path)?;
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        seen.insert(canonical(path));
        let mut files = vec![main.path.clone()];
        let mut merged = main.table.clone();
        let mut sources = main.sources.clone();
        let mut queue: std::collections::VecDeque<(PathBuf, Vec<(String, Location)>)> =
            std::collections::VecDeque::from([(main.path.clone(), main.imports.clone())]);
        while let Some((from, imports)) = queue.pop_front() {
            for (pattern, location) in imports {
                for import in expand_import(&from, &pattern, &location)? {
                    if !seen.insert(canonical(&import)) {
                        continue;
                    }
                    let file = self.load_file(&import)?;
                    merge_top_level(&mut merged, file.table);
                    sources.merge(file.sources);
                    files.push(file.path.clone());
                    queue.push_back((file.path, file.imports));
                }
            }
        }
        let mut with_base = toml::Table::try_from(&self.base).unwrap_or_default();
        merge_top_level(&mut with_base, merged);
        let value = toml::Value::Table(with_base);
        let mut unknown = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
        let config: Config = serde_ignored::deserialize(deserializer, |p| {
            unknown.push(ignored_path(&p));
        })
        .map_err(|e| {
            let path = track_path(track.path());
            ConfigError::Type {
                location: sources
                    .value(&path)
                    .unwrap_or_else(|| file_start(&main.path)),
                plugin: None,
                message: format!("{}: {}", path.join("."), e.message().trim()),
            }
        })?;
        let mut config = config;
        config.version = CURRENT_VERSION;
        // Keep the main file's own imports list, for `config dump`.
        config.imports = main.imports.iter().map(|(p, _)| p.clone()).collect();
        Ok(LoadedConfig {
            config,
            sources,
            unknown_top_level: unknown,
            files,
            left_out: Vec::new(),
            not_provided: Vec::new(),
        })
    }

    fn load_file(&self, path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let index = LineIndex::new(path, &text);
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let location = e
                .span()
                .map(|s| index.location(s.start))
                .unwrap_or_else(|| index.file_location());
            ConfigError::Syntax {
                location,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut sources = SourceMap::default();
        sources.add_file(&index);
        let version_location = || {
            sources
                .value(&["version".to_string()])
                .unwrap_or_else(|| index.file_location())
        };
        // containerd reads a file without `version` as version 1.
        let version = match table.get("version") {
            None => 1,
            Some(toml::Value::Integer(v @ 1..=3)) => *v as u32,
            Some(toml::Value::Integer(v)) => {
                return Err(ConfigError::Version {
                    location: version_location(),
                    found: *v,
                });
            }
            Some(other) => {
                return Err(ConfigError::Type {
                    location: version_location(),
                    plugin: None,
                    message: format!("version: expected an integer, found {}", other.type_str()),
                });
            }
        };
        self.migrate(path, version, &mut table, &mut sources)?;
        let mut imports = Vec::new();
        if let Some(list) = table.get("imports").and_then(toml::Value::as_array) {
            for (i, item) in list.iter().enumerate() {
                let location = sources
                    .value(&["imports".to_string(), i.to_string()])
                    .unwrap_or_else(|| index.file_location());
                match item.as_str() {
                    Some(pattern) => imports.push((pattern.to_string(), location)),
                    None => {
                        return Err(ConfigError::Type {
                            location,
                            plugin: None,
                            message: format!(
                                "imports.{i}: expected a string, found {}",
                                item.type_str()
                            ),
                        });
                    }
                }
            }
        }
        // Imports are followed per file; they are not merged as a list.
        table.remove("imports");
        Ok(FileConfig {
            path: path.to_path_buf(),
            table,
            sources,
            imports,
        })
    }

    /// Migrates one file's table from `version` to [`CURRENT_VERSION`] in place.
    fn migrate(
        &self,
        path: &Path,
        version: u32,
        table: &mut toml::Table,
        sources: &mut SourceMap,
    ) -> Result<(), ConfigError> {
        if version == 1 {
            // Version 1 names plugins by id: `[plugins.cri]`, `disabled_plugins = ["cri"]`.
            if let Some(toml::Value::Table(plugins)) = table.get_mut("plugins") {
                let keys: Vec<String> = plugins.keys().cloned().collect();
                for key in keys {
                    if let Some(uri) = self.uri_of_id(&key) {
                        if let Some(section) = plugins.remove(&key) {
                            plugins.insert(uri.clone(), section);
                            sources.rename_prefix(
                                &["plugins".to_string(), key.clone()],
                                &["plugins".to_string(), uri],
                            );
                        }
                    }
                }
            }
            for list in ["disabled_plugins", "required_plugins"] {
                if let Some(toml::Value::Array(items)) = table.get_mut(list) {
                    for item in items.iter_mut() {
                        if let Some(uri) = item.as_str().and_then(|id| self.uri_of_id(id)) {
                            *item = toml::Value::String(uri);
                        }
                    }
                }
            }
        }
        for from_version in version..CURRENT_VERSION {
            for entry in self.registry.entries() {
                let Some(migrate) = entry.registration.migration() else {
                    continue;
                };
                let plugins = table
                    .entry("plugins")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(plugins) = plugins.as_table_mut() else {
                    continue;
                };
                migrate(from_version, plugins).map_err(|message| ConfigError::Migration {
                    file: path.to_path_buf(),
                    uri: entry.uri(),
                    from_version,
                    message,
                })?;
            }
        }
        if table
            .get("plugins")
            .and_then(toml::Value::as_table)
            .is_some_and(toml::Table::is_empty)
        {
            table.remove("plugins");
        }
        table.insert(
            "version".to_string(),
            toml::Value::Integer(CURRENT_VERSION.into()),
        );
        Ok(())
    }

    /// The URI of the one registration with this id, for version 1 files.
    fn uri_of_id(&self, id: &str) -> Option<String> {
        if id.contains('.') && self.registry.get(id).is_some() {
            return None;
        }
        let mut matches = self.registry.registrations().filter(|r| r.id() == id);
        let first = matches.next()?;
        if matches.next().is_some() {
            // Ambiguous: left as written, reported as unknown later.
            return None;
        }
        Some(first.uri())
    }

    /// One file migrated to the current version, holding only the keys it sets, as TOML.
    ///
    /// # Errors
    /// As [`ConfigLoader::load`], for that one file.
    pub fn migrate_file(&self, path: &Path) -> Result<String, ConfigError> {
        let mut file = self.load_file(path)?;
        if !file.imports.is_empty() {
            let list = file
                .imports
                .iter()
                .map(|(p, _)| toml::Value::String(p.clone()))
                .collect();
            file.table
                .insert("imports".to_string(), toml::Value::Array(list));
        }
        Ok(to_toml(&file.table))
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn file_start(path: &Path) -> Location {
    LineIndex::new(path, "").file_location()
}

/// The files an import names, relative to the importing file, sorted: a pattern with glob
/// characters may match nothing; a plain path must name a file.
fn expand_import(
    from: &Path,
    pattern: &str,
    location: &Location,
) -> Result<Vec<PathBuf>, ConfigError> {
    let base = from.parent().unwrap_or_else(|| Path::new("."));
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    if !pattern.contains(['*', '?', '[']) {
        if !full.is_file() {
            return Err(ConfigError::ImportMissing {
                location: location.clone(),
                pattern: pattern.to_string(),
                path: full,
            });
        }
        return Ok(vec![full]);
    }
    let text = full.to_string_lossy().into_owned();
    let paths = glob::glob(&text).map_err(|e| ConfigError::Import {
        location: location.clone(),
        pattern: pattern.to_string(),
        message: e.to_string(),
    })?;
    let mut out: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// A merged config, not yet checked against the plugins.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    config: Config,
    sources: SourceMap,
    unknown_top_level: Vec<Vec<String>>,
    files: Vec<PathBuf>,
    left_out: Vec<(String, String)>,
    not_provided: Vec<(String, String)>,
}

/// A config checked against the plugins: each plugin's section decoded.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The merged config.
    pub config: Config,
    /// Each plugin's decoded config, by URI (only plugins with a config type).
    pub plugin_configs: HashMap<String, AnyConfig>,
    /// Reports that strict mode would make errors.
    pub diagnostics: Vec<Diagnostic>,
    /// The files read, main file first.
    pub files: Vec<PathBuf>,
}

impl LoadedConfig {
    /// The merged config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The merged config, to change before resolving (e.g. command-line overrides).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Tells the checks which plugins exist but were left out of this build, and how to get
    /// each (e.g. `("io.containerd.content.v1.content", "enable feature `content-local`")`),
    /// so that naming one says so instead of "unknown plugin".
    pub fn with_left_out(mut self, plugins: Vec<(String, String)>) -> Self {
        self.left_out = plugins;
        self
    }

    /// Tells the checks which plugins no build of this program provides, each with what it
    /// is (e.g. `("io.containerd.grpc.v1.cri", "a containerd plugin plinthd does not
    /// provide")`), so that naming one says so instead of "unknown plugin" and a misleading
    /// "did you mean". A registered or left-out plugin of the same URI takes precedence.
    pub fn with_not_provided(mut self, plugins: Vec<(String, String)>) -> Self {
        self.not_provided = plugins;
        self
    }

    /// Decodes each plugin's section over its defaults, checks its values, and checks every
    /// name in the config against `registry`. Reports come in file order (main file first,
    /// then imports as read), then line and column; reports without a place come last.
    ///
    /// # Errors
    /// A type error or a value the plugin does not allow in a plugin's section, or a bad
    /// `[debug]` value (with file, line, column, plugin and key); a required plugin that is
    /// left out of this build or not provided at all; in strict mode (`strict` here or
    /// `strict = true` in the file), every report.
    pub fn resolve(self, registry: &Registry, strict: bool) -> Result<ResolvedConfig, ConfigError> {
        let strict = strict || self.config.strict;
        let uris: Vec<String> = registry.entries().iter().map(|e| e.uri()).collect();
        let candidates = || uris.iter().map(String::as_str);
        let mut diagnostics = Vec::new();
        for path in &self.unknown_top_level {
            let (key, parent) = path
                .split_last()
                .map_or(("", &[][..]), |(k, p)| (k.as_str(), p));
            let known = keys::known_keys(parent).unwrap_or_default();
            diagnostics.push(Diagnostic {
                location: self.sources.key(path),
                message: format!(
                    "unknown key {}{}: it is ignored; remove it",
                    path.join("."),
                    hint(key, known.iter().copied())
                ),
            });
        }
        self.check_top_level_values()?;
        let mut plugin_configs = HashMap::new();
        for entry in registry.entries() {
            let uri = entry.uri();
            let Some(spec) = entry.registration.config_spec() else {
                if self.config.plugins.contains_key(&uri) {
                    diagnostics.push(Diagnostic {
                        location: self.sources.key(&["plugins".to_string(), uri.clone()]),
                        message: format!("plugin {uri} has no config; remove its section"),
                    });
                }
                continue;
            };
            let section = match self.config.plugins.get(&uri) {
                None => toml::Table::new(),
                Some(toml::Value::Table(t)) => t.clone(),
                Some(other) => {
                    return Err(ConfigError::Type {
                        location: self
                            .sources
                            .value(&["plugins".to_string(), uri.clone()])
                            .unwrap_or_else(|| file_start(Path::new("<config>"))),
                        plugin: Some(uri),
                        message: format!("expected a table, found {}", other.type_str()),
                    });
                }
            };
            let prefix = ["plugins".to_string(), uri.clone()];
            let decoded = spec.decode(section).map_err(|failure| {
                let path: Vec<String> =
                    prefix.iter().cloned().chain(failure.path.clone()).collect();
                ConfigError::Type {
                    location: self
                        .sources
                        .value(&path)
                        .unwrap_or_else(|| file_start(Path::new("<defaults>"))),
                    plugin: Some(uri.clone()),
                    message: if failure.path.is_empty() {
                        failure.message.clone()
                    } else {
                        format!("{}: {}", failure.path.join("."), failure.message)
                    },
                }
            })?;
            spec.validate(decoded.value.as_ref()).map_err(|violation| {
                let path: Vec<String> = prefix
                    .iter()
                    .cloned()
                    .chain(violation.key.iter().cloned())
                    .collect();
                ConfigError::Invalid {
                    location: self.sources.value(&path),
                    plugin: Some(uri.clone()),
                    key: violation.key.join("."),
                    message: violation.message,
                }
            })?;
            for unknown in &decoded.unknown_keys {
                let path: Vec<String> = prefix
                    .iter()
                    .cloned()
                    .chain(unknown.iter().cloned())
                    .collect();
                let (key, parent) = unknown
                    .split_last()
                    .map_or(("", &[][..]), |(k, p)| (k.as_str(), p));
                // The keys beside it: the config type's own fields at the top of the section
                // (with those skipped when serialising), the defaults' keys below it.
                let defaults = spec.defaults().unwrap_or_default();
                let mut known: Vec<String> = match parent {
                    [] => spec.field_names().iter().map(|f| f.to_string()).collect(),
                    _ => Vec::new(),
                };
                let mut table = Some(&defaults);
                for segment in parent {
                    table = table
                        .and_then(|t| t.get(segment))
                        .and_then(toml::Value::as_table);
                }
                known.extend(table.into_iter().flat_map(|t| t.keys().cloned()));
                diagnostics.push(Diagnostic {
                    location: self.sources.key(&path),
                    message: format!(
                        "plugin {uri} has no config key {}{}; remove it",
                        unknown.join("."),
                        hint(key, known.iter().map(String::as_str))
                    ),
                });
            }
            plugin_configs.insert(uri, decoded.value);
        }
        let left_out = |uri: &str| {
            self.left_out
                .iter()
                .find(|(u, _)| u == uri)
                .map(|(_, how)| how.clone())
        };
        let not_provided = |uri: &str| {
            self.not_provided
                .iter()
                .find(|(u, _)| u == uri)
                .map(|(_, what)| what.clone())
        };
        for key in self.config.plugins.keys() {
            if !uris.contains(key) {
                let message = match (left_out(key), not_provided(key)) {
                    (Some(how), _) => format!(
                        "section for plugin {key}, which is not compiled into this build; {how}"
                    ),
                    (None, Some(what)) => {
                        format!("section for plugin {key}, {what}; remove it")
                    }
                    (None, None) => format!(
                        "section for unknown plugin {key}{}: this build has no such plugin",
                        hint(key, candidates())
                    ),
                };
                diagnostics.push(Diagnostic {
                    location: self.sources.key(&["plugins".to_string(), key.clone()]),
                    message,
                });
            }
        }
        for list in ["disabled_plugins", "required_plugins"] {
            let items = if list == "disabled_plugins" {
                &self.config.disabled_plugins
            } else {
                &self.config.required_plugins
            };
            let required = list == "required_plugins";
            for (i, item) in items.iter().enumerate() {
                if !uris.contains(item) {
                    let location = self.sources.value(&[list.to_string(), i.to_string()]);
                    let message = match (left_out(item), not_provided(item)) {
                        (Some(how), _) if required => {
                            return Err(ConfigError::NotCompiled {
                                location,
                                uri: item.clone(),
                                how,
                            });
                        }
                        (None, Some(what)) if required => {
                            return Err(ConfigError::NotProvided {
                                location,
                                uri: item.clone(),
                                what,
                            });
                        }
                        (Some(how), _) => format!(
                            "{list} names plugin {item}, which is not compiled into this build; {how}"
                        ),
                        (None, Some(what)) => {
                            format!("{list} names plugin {item}, {what}; remove it")
                        }
                        (None, None) => format!(
                            "{list} names unknown plugin {item}{}",
                            hint(item, candidates())
                        ),
                    };
                    diagnostics.push(Diagnostic { location, message });
                }
            }
        }
        for (key, value) in &self.config.timeouts {
            if let Err(message) = parse_duration(value) {
                return Err(ConfigError::Duration {
                    location: self
                        .sources
                        .value(&["timeouts".to_string(), key.clone()])
                        .unwrap_or_else(|| file_start(Path::new("<config>"))),
                    key: key.clone(),
                    value: value.clone(),
                    message,
                });
            }
        }
        self.sort(&mut diagnostics);
        if strict && !diagnostics.is_empty() {
            return Err(ConfigError::Strict(diagnostics));
        }
        Ok(ResolvedConfig {
            config: self.config,
            plugin_configs,
            diagnostics,
            files: self.files,
        })
    }

    /// Checks the values of the daemon's own keys that form closed sets (`[debug]`).
    fn check_top_level_values(&self) -> Result<(), ConfigError> {
        let debug = &self.config.debug;
        let checks = [
            (
                "level",
                DebugConfig::LEVELS
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(&debug.level)),
                &debug.level,
                DebugConfig::LEVELS,
                "log level",
            ),
            (
                "format",
                DebugConfig::FORMATS.contains(&debug.format.as_str()),
                &debug.format,
                DebugConfig::FORMATS,
                "log format",
            ),
        ];
        for (key, allowed, value, values, what) in checks {
            if !allowed {
                return Err(ConfigError::Invalid {
                    location: self
                        .sources
                        .exact_value(&["debug".to_string(), key.to_string()]),
                    plugin: None,
                    key: format!("debug.{key}"),
                    message: format!("{value:?} is not a {what}: use {}", one_of(values)),
                });
            }
        }
        Ok(())
    }

    /// Sorts reports by file (in the order the files were read), line and column; reports
    /// without a place keep their order, after the others.
    fn sort(&self, diagnostics: &mut [Diagnostic]) {
        let file_rank = |location: &Location| {
            self.files
                .iter()
                .position(|f| f == location.file.as_ref())
                .unwrap_or(self.files.len())
        };
        diagnostics.sort_by_key(|d| match &d.location {
            Some(l) => (0, file_rank(l), l.file.clone(), l.line, l.column),
            None => (1, 0, Default::default(), 0, 0),
        });
    }
}

/// `"a", "b" or "c"`: a closed set of values, for messages.
pub fn one_of(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

impl ResolvedConfig {
    /// The disabled filter of this config (by URI: the config is version 3 after loading).
    pub fn disable_filter(&self) -> DisableFilter {
        DisableFilter::by_uri(self.config.disabled_plugins.iter().cloned())
    }

    /// Per-plugin init time-outs from `[timeouts]` (`"plinth.init.<uri>"`), and the default.
    pub fn init_timeouts(&self) -> (HashMap<String, Duration>, Option<Duration>) {
        let mut per_plugin = HashMap::new();
        let mut default = None;
        for (key, value) in &self.config.timeouts {
            let Ok(duration) = parse_duration(value) else {
                continue;
            };
            let duration = (!duration.is_zero()).then_some(duration);
            if key == INIT_TIMEOUT_KEY {
                default = duration;
            } else if let Some(uri) = key.strip_prefix(INIT_TIMEOUT_PREFIX) {
                if let Some(d) = duration {
                    per_plugin.insert(uri.to_string(), d);
                }
            }
        }
        (per_plugin, default)
    }

    /// The watchdog period from `[timeouts]`, 5 seconds when unset.
    pub fn init_watchdog(&self) -> Duration {
        self.config
            .timeouts
            .get(INIT_WATCHDOG_KEY)
            .and_then(|v| parse_duration(v).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5))
    }

    /// The effective config as TOML: every plugin section as the plugin sees it (defaults
    /// filled in), sections of unknown plugins kept as written.
    pub fn effective_toml(&self, registry: &Registry) -> String {
        let mut config = self.config.clone();
        for entry in registry.entries() {
            let uri = entry.uri();
            let (Some(spec), Some(value)) = (
                entry.registration.config_spec(),
                self.plugin_configs.get(&uri),
            ) else {
                continue;
            };
            if let Ok(table) = spec.encode(value.as_ref()) {
                config.plugins.insert(uri, toml::Value::Table(table));
            }
        }
        config_to_toml(&config)
    }
}

/// The full default config of the plugins in `registry`, as TOML.
pub fn default_toml(registry: &Registry) -> String {
    let mut config = Config::default();
    for entry in registry.entries() {
        if let Some(Ok(table)) = entry.registration.config_spec().map(|s| s.defaults()) {
            config
                .plugins
                .insert(entry.uri(), toml::Value::Table(table));
        }
    }
    config_to_toml(&config)
}

fn config_to_toml(config: &Config) -> String {
    match toml::Table::try_from(config) {
        Ok(table) => to_toml(&table),
        Err(e) => format!("# config could not be serialised: {e}\n"),
    }
}

fn to_toml(table: &toml::Table) -> String {
    toml::to_string_pretty(table)
        .unwrap_or_else(|e| format!("# config could not be serialised: {e}\n"))
}
