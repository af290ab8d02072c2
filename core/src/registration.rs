//! `Registration`: what a plugin declares about itself, buildable in a `const` context.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RegistrationError;
use crate::init::{InitContext, InitError, Instance};

/// The requires entry that means "every other plugin". It must stand alone.
pub const REQUIRES_ALL: &str = "*";

/// The signature of a plugin's init function.
pub type InitFn = fn(&mut InitContext) -> Result<Instance, InitError>;

/// An init function that captures state (used by proxy plugins, built at run time).
pub type SharedInitFn = dyn Fn(&mut InitContext) -> Result<Instance, InitError> + Send + Sync;

/// A per-plugin config migration, run once for each version step.
///
/// It is called with the version the file is being migrated *from* (1, then 2, …) and the
/// whole `[plugins]` table, keyed by URI, so that a plugin can move keys between sections as
/// containerd's CRI plugin does. Return a message saying what is wrong when the input cannot
/// be migrated.
pub type MigrateFn = fn(from_version: u32, plugins: &mut toml::Table) -> Result<(), String>;

/// How a registration's init function is stored.
#[derive(Clone, Copy)]
pub enum Init {
    /// A plain function: what `register!` uses.
    Fn(InitFn),
    /// A function with captured state, leaked once per process (proxy plugins).
    Shared(&'static SharedInitFn),
}

impl Init {
    pub(crate) fn call(&self, ctx: &mut InitContext) -> Result<Instance, InitError> {
        match self {
            Init::Fn(f) => f(ctx),
            Init::Shared(f) => f(ctx),
        }
    }
}

impl fmt::Debug for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Fn(_) => f.write_str("Init::Fn"),
            Init::Shared(_) => f.write_str("Init::Shared"),
        }
    }
}

/// A decoded plugin config, type-erased. [`InitContext::config`] turns it back into `T`.
pub type AnyConfig = Arc<dyn Any + Send + Sync>;

/// A plugin's hook for taking a new config in place, without a restart (a log level, a
/// threshold): called on a live reload with the running instance and the newly decoded
/// config (the plugin's config type, as `ctx.config()` gives it to init). An error refuses
/// the whole reload, which then changes nothing.
pub type ReconfigureFn = fn(&Instance, &AnyConfig) -> Result<(), crate::init::BoxError>;

/// Why a plugin's config section could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    /// Dotted path of the offending key inside the plugin's section (empty for the section).
    pub path: Vec<String>,
    /// What serde said.
    pub message: String,
}

/// The result of decoding a plugin's config section over its defaults.
pub struct Decoded {
    /// The typed value.
    pub value: AnyConfig,
    /// Keys the plugin's config type does not know, as paths inside the section.
    pub unknown_keys: Vec<Vec<String>>,
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded")
            .field("unknown_keys", &self.unknown_keys)
            .finish()
    }
}

/// The config type of a plugin: what `Registration::config::<T>()` needs.
///
/// Missing keys take their value from `T::default()`, so mark the struct
/// `#[serde(default)]`.
pub trait PluginConfig: Serialize + DeserializeOwned + Default + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> PluginConfig for T {}

/// The rules a plugin's decoded config must keep beyond its types, checked when the config
/// is loaded (`plinthd config check`, start-up, reload) rather than at the plugin's init.
/// Register it with [`Registration::validated_config`].
///
/// Prefer types that cannot hold a bad value (an enum for a closed set of strings, with
/// `#[serde(rename_all = "lowercase")]`); this hook is for the rules types cannot say.
///
/// ```
/// use plinth_core::registration::{ConfigViolation, ValidateConfig};
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Config { workers: u32 }
///
/// impl ValidateConfig for Config {
///     fn validate(&self) -> Result<(), ConfigViolation> {
///         if self.workers == 0 {
///             return Err(ConfigViolation::new("workers", "must be at least 1"));
///         }
///         Ok(())
///     }
/// }
/// assert_eq!(Config { workers: 0 }.validate().unwrap_err().key, ["workers"]);
/// ```
pub trait ValidateConfig {
    /// Checks the decoded config.
    ///
    /// # Errors
    /// The first rule broken, naming the key and what is allowed.
    fn validate(&self) -> Result<(), ConfigViolation>;
}

/// A value in a plugin's config that breaks one of the plugin's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigViolation {
    /// The key path inside the plugin's section, e.g. `["address"]`.
    pub key: Vec<String>,
    /// What is wrong and what is allowed, e.g. `"ftp://x" is not a socket: use …`.
    pub message: String,
}

impl ConfigViolation {
    /// A violation at the dotted `key` (inside the plugin's section).
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigViolation {
            key: key.split('.').map(str::to_string).collect(),
            message: message.into(),
        }
    }
}

/// The type-erased operations on a plugin's config type.
#[derive(Clone, Copy)]
pub struct ConfigSpec {
    type_name: fn() -> &'static str,
    field_names: fn() -> &'static [&'static str],
    defaults: fn() -> Result<toml::Table, String>,
    decode: fn(toml::Table) -> Result<Decoded, DecodeFailure>,
    encode: fn(&(dyn Any + Send + Sync)) -> Result<toml::Table, String>,
    validate: Option<ValidateFn>,
}

/// The type-erased [`ValidateConfig::validate`] of a config type.
type ValidateFn = fn(&(dyn Any + Send + Sync)) -> Result<(), ConfigViolation>;

impl fmt::Debug for ConfigSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpec")
            .field("type_name", &self.type_name())
            .finish()
    }
}

impl ConfigSpec {
    /// The operations for config type `T`.
    pub const fn of<T: PluginConfig>() -> Self {
        ConfigSpec {
            type_name: std::any::type_name::<T>,
            field_names: crate::config::fields_of::<T>,
            defaults: defaults_of::<T>,
            decode: decode_as::<T>,
            encode: encode_as::<T>,
            validate: None,
        }
    }

    /// The operations for config type `T`, whose values are checked by its
    /// [`ValidateConfig`] implementation after decoding.
    pub const fn validated<T: PluginConfig + ValidateConfig>() -> Self {
        ConfigSpec {
            validate: Some(validate_as::<T>),
            ..ConfigSpec::of::<T>()
        }
    }

    /// The Rust name of the config type, for messages.
    pub fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    /// The top-level keys of the config type, as serde names them (including fields skipped
    /// when serialising, such as an `Option` that is `None`); empty when `T` is not a struct.
    pub fn field_names(&self) -> &'static [&'static str] {
        (self.field_names)()
    }

    /// `T::default()` as a TOML table.
    ///
    /// # Errors
    /// When `T` does not serialise to a TOML table (e.g. it is not a struct or map).
    pub fn defaults(&self) -> Result<toml::Table, String> {
        (self.defaults)()
    }

    /// Decodes a section over the defaults: keys the user set override, the rest stay.
    ///
    /// # Errors
    /// A [`DecodeFailure`] with the path of the offending key.
    pub fn decode(&self, section: toml::Table) -> Result<Decoded, DecodeFailure> {
        (self.decode)(section)
    }

    /// Checks a decoded value against the config type's [`ValidateConfig`] rules, if it has
    /// them.
    ///
    /// # Errors
    /// The rule broken; a value of another type breaks none.
    pub fn validate(&self, value: &(dyn Any + Send + Sync)) -> Result<(), ConfigViolation> {
        match self.validate {
            Some(validate) => validate(value),
            None => Ok(()),
        }
    }

    /// Serialises a decoded value back into a table.
    ///
    /// # Errors
    /// When the value is not of this spec's type or does not serialise to a table.
    pub fn encode(&self, value: &(dyn Any + Send + Sync)) -> Result<toml::Table, String> {
        (self.encode)(value)
    }
}

fn defaults_of<T: PluginConfig>() -> Result<toml::Table, String> {
    toml::Table::try_from(T::default()).map_err(|e| e.to_string())
}

fn decode_as<T: PluginConfig>(section: toml::Table) -> Result<Decoded, DecodeFailure> {
    let mut unknown_keys = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let mut merged = defaults_of::<T>().map_err(|message| DecodeFailure {
        path: Vec::new(),
        message,
    })?;
    crate::config::deep_merge(&mut merged, section);
    let value = toml::Value::Table(merged);
    let inner = serde_path_to_error::Deserializer::new(value, &mut track);
    let result: Result<T, _> = serde_ignored::deserialize(inner, |path| {
        unknown_keys.push(ignored_path(&path));
    });
    match result {
        Ok(v) => Ok(Decoded {
            value: Arc::new(v),
            unknown_keys,
        }),
        Err(e) => Err(DecodeFailure {
            path: track_path(track.path()),
            message: e.message().trim().to_string(),
        }),
    }
}

fn validate_as<T: PluginConfig + ValidateConfig>(
    value: &(dyn Any + Send + Sync),
) -> Result<(), ConfigViolation> {
    value.downcast_ref::<T>().map_or(Ok(()), T::validate)
}

fn encode_as<T: PluginConfig>(value: &(dyn Any + Send + Sync)) -> Result<toml::Table, String> {
    let v = value
        .downcast_ref::<T>()
        .ok_or_else(|| format!("config value is not of type {}", std::any::type_name::<T>()))?;
    toml::Table::try_from(v).map_err(|e| e.to_string())
}

/// Turns a `serde_ignored` path into segments.
pub(crate) fn ignored_path(path: &serde_ignored::Path<'_>) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
        use serde_ignored::Path;
        match p {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(index.to_string());
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                out.push(key.clone());
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    walk(path, &mut out);
    out
}

/// Turns a `serde_path_to_error` path into segments.
pub(crate) fn track_path(path: serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

/// What a plugin declares: its type, id, what it requires, its config and its init function.
///
/// Every field is `Copy` and every builder method is a `const fn`, so a registration can be a
/// `static` and be submitted at link time with [`register!`](crate::register).
///
/// ```
/// use plinth_core::{Registration, Instance, InitContext, InitError};
/// fn init(_: &mut InitContext) -> Result<Instance, InitError> { Ok(Instance::none()) }
/// const REG: Registration = Registration::new("io.example.v1", "hello", init)
///     .requires(&["io.containerd.content.v1"]);
/// assert_eq!(REG.uri(), "io.example.v1.hello");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    plugin_type: &'static str,
    id: &'static str,
    requires: &'static [&'static str],
    config: Option<ConfigSpec>,
    init: Init,
    migrate: Option<MigrateFn>,
    reconfigure: Option<ReconfigureFn>,
}

impl Registration {
    /// A registration with no requires and no config.
    pub const fn new(plugin_type: &'static str, id: &'static str, init: InitFn) -> Self {
        Registration {
            plugin_type,
            id,
            requires: &[],
            config: None,
            init: Init::Fn(init),
            migrate: None,
            reconfigure: None,
        }
    }

    /// A registration whose init function captures state (built at run time, e.g. proxies).
    pub const fn with_shared_init(
        plugin_type: &'static str,
        id: &'static str,
        init: &'static SharedInitFn,
    ) -> Self {
        Registration {
            plugin_type,
            id,
            requires: &[],
            config: None,
            init: Init::Shared(init),
            migrate: None,
            reconfigure: None,
        }
    }

    /// The plugin types this plugin needs initialised before it. `["*"]` means every other
    /// plugin; it must stand alone.
    pub const fn requires(mut self, requires: &'static [&'static str]) -> Self {
        self.requires = requires;
        self
    }

    /// Gives the plugin a typed config section `[plugins."<uri>"]`, decoded over
    /// `T::default()`.
    pub const fn config<T: PluginConfig>(mut self) -> Self {
        self.config = Some(ConfigSpec::of::<T>());
        self
    }

    /// As [`Registration::config`], and the decoded config is checked by `T`'s
    /// [`ValidateConfig`] rules when the config is loaded: a bad value is a config error with
    /// file, line, column, plugin and key, before any plugin starts.
    pub const fn validated_config<T: PluginConfig + ValidateConfig>(mut self) -> Self {
        self.config = Some(ConfigSpec::validated::<T>());
        self
    }

    /// The same registration with another init function, e.g. one that wraps the original
    /// (the dynamic loader wraps a library's inits so that their panics stay in the library).
    pub const fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Adds a config migration hook, run once for each version step of an older file.
    pub const fn migrate(mut self, migrate: MigrateFn) -> Self {
        self.migrate = Some(migrate);
        self
    }

    /// Lets a live reload hand this plugin a changed config section in place instead of
    /// restarting it (and every plugin that requires it).
    pub const fn reconfigure(mut self, hook: ReconfigureFn) -> Self {
        self.reconfigure = Some(hook);
        self
    }

    /// The in-place reconfigure hook, if any.
    pub const fn reconfigure_hook(&self) -> Option<ReconfigureFn> {
        self.reconfigure
    }

    /// The plugin type, e.g. `io.containerd.content.v1`.
    pub const fn plugin_type(&self) -> &'static str {
        self.plugin_type
    }

    /// The plugin id, e.g. `content`.
    pub const fn id(&self) -> &'static str {
        self.id
    }

    /// The required plugin types.
    pub const fn required_types(&self) -> &'static [&'static str] {
        self.requires
    }

    /// The config spec, when the plugin has a config.
    pub const fn config_spec(&self) -> Option<&ConfigSpec> {
        self.config.as_ref()
    }

    /// The config migration hook, if any.
    pub const fn migration(&self) -> Option<MigrateFn> {
        self.migrate
    }

    /// The init function.
    pub const fn init_fn(&self) -> &Init {
        &self.init
    }

    /// `<type>.<id>`: the key of config sections, `disabled_plugins` and directories.
    pub fn uri(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }

    /// Whether this plugin requires every other plugin.
    pub fn requires_all(&self) -> bool {
        self.requires.contains(&REQUIRES_ALL)
    }

    /// Checks the rules every registration must follow, whatever its source.
    ///
    /// # Errors
    /// No type, no id, a type or id with characters that cannot be part of a URI or a path,
    /// `"*"` mixed with other requires, or a plugin requiring its own type.
    pub fn validate(&self) -> Result<(), RegistrationError> {
        if self.plugin_type.is_empty() {
            return Err(RegistrationError::NoType {
                id: self.id.to_string(),
            });
        }
        if self.id.is_empty() {
            return Err(RegistrationError::NoId {
                plugin_type: self.plugin_type.to_string(),
            });
        }
        for (what, value) in [("type", self.plugin_type), ("id", self.id)] {
            if let Some(bad) = value.chars().find(|c| !valid_name_char(*c)) {
                return Err(RegistrationError::InvalidName {
                    what,
                    value: value.to_string(),
                    character: bad,
                });
            }
        }
        if self.requires_all() && self.requires.len() > 1 {
            return Err(RegistrationError::WildcardNotAlone {
                uri: self.uri(),
                requires: self.requires.iter().map(|s| s.to_string()).collect(),
            });
        }
        if self.requires.contains(&self.plugin_type) {
            return Err(RegistrationError::RequiresOwnType {
                uri: self.uri(),
                plugin_type: self.plugin_type.to_string(),
            });
        }
        Ok(())
    }
}

/// Characters allowed in a plugin type or id: they end up in URIs and directory names.
fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}
