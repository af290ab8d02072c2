//! The init driver: runs each plugin's init in graph order with an [`InitContext`], records
//! its outcome in the plugin [`Set`], and closes what was opened in reverse order.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error as StdError;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::error::{StartupError, hint};
use crate::graph::PluginGraph;
use crate::registration::{AnyConfig, Registration};
use crate::registry::{Registry, Source};

/// A boxed error that can cross threads.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a plugin's init returns when it does not produce an instance.
pub enum InitError {
    /// The plugin does not apply here (e.g. overlayfs on a kernel without overlay). Not an
    /// error: the plugin ends as skipped with this reason.
    Skip(String),
    /// The plugin failed.
    Failed(BoxError),
}

impl InitError {
    /// The plugin skips itself, with the reason.
    pub fn skip(reason: impl Into<String>) -> Self {
        InitError::Skip(reason.into())
    }

    /// The plugin failed with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        InitError::Failed(message.into().into())
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for InitError {
    fn from(error: E) -> Self {
        InitError::Failed(Box::new(error))
    }
}

impl fmt::Debug for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Skip(reason) => write!(f, "Skip({reason:?})"),
            InitError::Failed(error) => write!(f, "Failed({error:?})"),
        }
    }
}

type CloseFn = Box<dyn FnOnce() -> Result<(), BoxError> + Send>;

/// What a plugin's init produces: one value, seen through one or more typed views
/// (`Arc<dyn Trait>` or `Arc<Concrete>`), and an optional close hook.
pub struct Instance {
    views: Vec<(Box<dyn Any + Send + Sync>, &'static str)>,
    close: Mutex<Option<CloseFn>>,
}

impl Instance {
    /// An instance seen as `Arc<T>`; `T` is usually `dyn SomeTrait`.
    pub fn new<T: ?Sized + Send + Sync + 'static>(value: Arc<T>) -> Self {
        Instance::none().with(value)
    }

    /// An instance with no value, for plugins that only have side effects.
    pub fn none() -> Self {
        Instance {
            views: Vec::new(),
            close: Mutex::new(None),
        }
    }

    /// Adds another view of the same value, e.g. `Arc<dyn Closer>` beside `Arc<dyn Store>`.
    pub fn with<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.views
            .push((Box::new(value), std::any::type_name::<Arc<T>>()));
        self
    }

    /// Sets the hook run when the plugin set is closed (in reverse init order).
    pub fn on_close(self, close: impl FnOnce() -> Result<(), BoxError> + Send + 'static) -> Self {
        *self.close.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(close));
        self
    }

    /// The view as `Arc<T>`, if the instance has one.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.views
            .iter()
            .find_map(|(view, _)| view.downcast_ref::<Arc<T>>().cloned())
    }

    /// The type names of the views, for error messages.
    pub fn view_names(&self) -> Vec<&'static str> {
        self.views.iter().map(|(_, name)| *name).collect()
    }

    fn take_close(&self) -> Option<CloseFn> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("views", &self.view_names())
            .finish()
    }
}

/// What a plugin tells the world about itself, as containerd's introspection shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Platforms it supports, e.g. `linux/amd64`.
    pub platforms: Vec<String>,
    /// Key/value facts, e.g. `root` → its directory.
    pub exports: BTreeMap<String, String>,
    /// Capabilities, e.g. `remap-ids`.
    pub capabilities: Vec<String>,
}

/// How a plugin ended.
#[derive(Debug, Clone)]
pub enum Status {
    /// Initialised; its instance is available.
    Ok,
    /// It skipped itself; the reason says why.
    Skipped(String),
    /// Its init failed.
    Failed(Failure),
    /// Config switched it off; it was never initialised.
    Disabled,
}

impl Status {
    /// containerd's name of the status: `ok`, `skip`, `error`, `disabled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped(_) => "skip",
            Status::Failed(_) => "error",
            Status::Disabled => "disabled",
        }
    }

    /// Whether the plugin is initialised.
    pub fn is_ok(&self) -> bool {
        matches!(self, Status::Ok)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::Skipped(reason) => write!(f, "skipped: {reason}"),
            Status::Failed(failure) => write!(f, "failed: {failure}"),
            Status::Disabled => f.write_str("disabled"),
        }
    }
}

/// Why a plugin failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error, shared so the status can be cloned.
    pub error: Arc<dyn StdError + Send + Sync + 'static>,
    /// The plugin whose failure or skip made this one fail, when the init failed on a lookup.
    pub caused_by: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        let mut source = self.error.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// One plugin after init: its registration, outcome, instance and meta.
#[derive(Debug)]
pub struct Plugin {
    registration: Registration,
    source: Source,
    uri: String,
    status: Status,
    instance: Option<Instance>,
    meta: Meta,
    config: Option<AnyConfig>,
    init_time: Duration,
}

impl Plugin {
    /// The registration.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// Where the registration came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// `<type>.<id>`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The plugin type.
    pub fn plugin_type(&self) -> &'static str {
        self.registration.plugin_type()
    }

    /// The plugin id.
    pub fn id(&self) -> &'static str {
        self.registration.id()
    }

    /// How it ended.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// What it said about itself.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The decoded config it was given, if it has a config type.
    pub fn config(&self) -> Option<&AnyConfig> {
        self.config.as_ref()
    }

    /// How long its init took.
    pub fn init_time(&self) -> Duration {
        self.init_time
    }

    /// The instance as `Arc<T>`.
    ///
    /// # Errors
    /// When the plugin is not ok, or its instance has no `Arc<T>` view.
    pub fn instance<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, LookupError> {
        match &self.status {
            Status::Ok => {}
            Status::Skipped(reason) => {
                return Err(LookupError::Skipped {
                    uri: self.uri.clone(),
                    reason: reason.clone(),
                });
            }
            Status::Failed(failure) => {
                return Err(LookupError::Failed {
                    uri: self.uri.clone(),
                    cause: failure.to_string(),
                });
            }
            Status::Disabled => {
                return Err(LookupError::Disabled {
                    uri: self.uri.clone(),
                });
            }
        }
        let instance = self.instance.as_ref();
        instance
            .and_then(Instance::get::<T>)
            .ok_or_else(|| LookupError::TypeMismatch {
                uri: self.uri.clone(),
                expected: std::any::type_name::<Arc<T>>(),
                found: instance.map(Instance::view_names).unwrap_or_default(),
            })
    }
}

/// A lookup from an [`InitContext`] or a [`Set`] found nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No plugin of the type (or type and id) is ok.
    #[error("no plugin of type {wanted} is initialised{detail}")]
    NotFound {
        /// The type, or the URI.
        wanted: String,
        /// Plugins of the type that skipped themselves, with reasons (empty when none).
        detail: String,
    },
    /// Several plugins of the type are ok, and one was asked for.
    #[error(
        "several plugins of type {plugin_type} are initialised ({}): ask for one by id or disable the others",
        .uris.join(", ")
    )]
    MultipleInstances {
        /// The type.
        plugin_type: String,
        /// The ok plugins.
        uris: Vec<String>,
    },
    /// The plugin asked for failed.
    #[error("{uri} failed: {cause}")]
    Failed {
        /// The failed plugin.
        uri: String,
        /// Its error.
        cause: String,
    },
    /// The plugin asked for skipped itself.
    #[error("{uri} skipped: {reason}")]
    Skipped {
        /// The skipped plugin.
        uri: String,
        /// Its reason.
        reason: String,
    },
    /// The plugin asked for is disabled.
    #[error("{uri} is disabled by config")]
    Disabled {
        /// The disabled plugin.
        uri: String,
    },
    /// The plugin exists but has no view of the wanted type.
    #[error("{uri} does not provide {expected} (it provides: {})", if .found.is_empty() { "nothing".to_string() } else { .found.join(", ") })]
    TypeMismatch {
        /// The plugin.
        uri: String,
        /// The wanted `Arc<T>`.
        expected: &'static str,
        /// What it has.
        found: Vec<&'static str>,
    },
    /// The plugin asked for is a requirement of type `plugin_type` and is not ok.
    #[error("requires {plugin_type}: {inner}")]
    Required {
        /// The required type.
        plugin_type: String,
        /// What went wrong with it.
        inner: Box<LookupError>,
    },
    /// The plugin has no config type, or its config is of another type.
    #[error("plugin {uri} has no config of type {expected}")]
    Config {
        /// The plugin.
        uri: String,
        /// The wanted type.
        expected: &'static str,
    },
}

impl LookupError {
    /// The URI of the plugin whose failure or skip caused this error, if any.
    pub fn culprit(&self) -> Option<&str> {
        match self {
            LookupError::Failed { uri, .. }
            | LookupError::Skipped { uri, .. }
            | LookupError::Disabled { uri } => Some(uri),
            LookupError::Required { inner, .. } => inner.culprit(),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct SetInner {
    plugins: Vec<Arc<Plugin>>,
    by_type: HashMap<&'static str, Vec<usize>>,
}

/// The plugins of a process, in init order, with their outcomes. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Set {
    inner: Arc<RwLock<SetInner>>,
}

impl Set {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, SetInner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, plugin: Plugin) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let index = inner.plugins.len();
        inner
            .by_type
            .entry(plugin.plugin_type())
            .or_default()
            .push(index);
        inner.plugins.push(Arc::new(plugin));
    }

    /// Every plugin: the disabled ones first, then the others in init order.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.read().plugins.clone()
    }

    /// The plugin with this URI.
    pub fn get(&self, uri: &str) -> Option<Arc<Plugin>> {
        self.read().plugins.iter().find(|p| p.uri() == uri).cloned()
    }

    /// The number of plugins in the set.
    pub fn len(&self) -> usize {
        self.read().plugins.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.read().plugins.is_empty()
    }

    /// The single ok instance of a type, among the first `visible` plugins.
    fn single<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
        visible: usize,
    ) -> Result<Arc<T>, LookupError> {
        let of_type = self.of_type(plugin_type, visible);
        let ok: Vec<&Arc<Plugin>> = of_type.iter().filter(|p| p.status.is_ok()).collect();
        match ok.as_slice() {
            [one] => one.instance::<T>(),
            [] => Err(none_ok(plugin_type, &of_type)),
            many => Err(LookupError::MultipleInstances {
                plugin_type: plugin_type.to_string(),
                uris: many.iter().map(|p| p.uri.clone()).collect(),
            }),
        }
    }

    fn all_of_type<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
        visible: usize,
    ) -> Result<Vec<(&'static str, Arc<T>)>, LookupError> {
        let of_type = self.of_type(plugin_type, visible);
        let ok: Vec<&Arc<Plugin>> = of_type.iter().filter(|p| p.status.is_ok()).collect();
        if ok.is_empty() {
            return Err(none_ok(plugin_type, &of_type));
        }
        ok.into_iter()
            .map(|p| Ok((p.id(), p.instance::<T>()?)))
            .collect()
    }

    fn by_id<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
        id: &str,
        visible: usize,
    ) -> Result<Arc<T>, LookupError> {
        let of_type = self.of_type(plugin_type, visible);
        match of_type.iter().find(|p| p.id() == id) {
            Some(plugin) => plugin.instance::<T>(),
            None => Err(LookupError::NotFound {
                wanted: format!("{plugin_type}.{id}"),
                detail: String::new(),
            }),
        }
    }

    /// The plugins of a type among the first `visible` (disabled ones are added first, so a
    /// lookup can say that a plugin is disabled).
    fn of_type(&self, plugin_type: &str, visible: usize) -> Vec<Arc<Plugin>> {
        let inner = self.read();
        inner
            .by_type
            .get(plugin_type)
            .map(|indices| {
                indices
                    .iter()
                    .filter(|&&i| i < visible)
                    .map(|&i| inner.plugins[i].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single ok instance of a type. Skipped plugins do not count; several ok ones is an
    /// error; a type whose plugins all failed reports the first failure.
    ///
    /// # Errors
    /// See [`LookupError`].
    pub fn get_single<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
    ) -> Result<Arc<T>, LookupError> {
        self.single(plugin_type, usize::MAX)
    }

    /// Every ok instance of a type, in init order, with its id.
    ///
    /// # Errors
    /// When none is ok (naming the failed ones), or one has no `Arc<T>` view.
    pub fn get_by_type<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
    ) -> Result<Vec<(&'static str, Arc<T>)>, LookupError> {
        self.all_of_type(plugin_type, usize::MAX)
    }

    /// The instance of the plugin with this type and id.
    ///
    /// # Errors
    /// When it does not exist, is not ok, or has no `Arc<T>` view.
    pub fn get_by_id<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
        id: &str,
    ) -> Result<Arc<T>, LookupError> {
        self.by_id(plugin_type, id, usize::MAX)
    }

    /// Closes the set, once: in reverse init order, runs each ok plugin's close hook and then
    /// lets go of the plugin, so an instance nothing else holds is dropped right there (a
    /// database flushes and unlocks its file on drop). Returns the close hooks' failures.
    ///
    /// The set is empty afterwards. Letting go matters because an instance may hold the set
    /// itself (introspection lists the plugins): without it, that cycle would keep every
    /// instance alive until the process exits, and nothing would ever be dropped.
    pub fn close(&self) -> Vec<(String, BoxError)> {
        let mut failures = Vec::new();
        // Last first, one at a time: a close hook still finds the plugins before its own.
        while let Some(plugin) = self.pop() {
            if let Some(close) = plugin.instance.as_ref().and_then(Instance::take_close) {
                tracing::debug!(uri = plugin.uri(), "closing plugin");
                match catch_unwind(AssertUnwindSafe(close)) {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => failures.push((plugin.uri.clone(), error)),
                    Err(panic) => failures.push((
                        plugin.uri.clone(),
                        format!("close panicked: {}", panic_text(&panic)).into(),
                    )),
                }
            }
            let uri = plugin.uri.clone();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(plugin))) {
                failures.push((
                    uri,
                    format!("dropping the instance panicked: {}", panic_text(&panic)).into(),
                ));
            }
        }
        failures
    }

    /// Takes the last plugin out of the set.
    fn pop(&self) -> Option<Arc<Plugin>> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let plugin = inner.plugins.pop()?;
        let index = inner.plugins.len();
        if let Some(indices) = inner.by_type.get_mut(plugin.plugin_type()) {
            indices.retain(|&i| i != index);
        }
        Some(plugin)
    }
}

fn none_ok(plugin_type: &str, of_type: &[Arc<Plugin>]) -> LookupError {
    if let Some(failed) = of_type
        .iter()
        .find(|p| matches!(p.status, Status::Failed(_)))
    {
        if let Status::Failed(failure) = &failed.status {
            return LookupError::Failed {
                uri: failed.uri.clone(),
                cause: failure.to_string(),
            };
        }
    }
    let skipped: Vec<String> = of_type
        .iter()
        .filter_map(|p| match &p.status {
            Status::Skipped(reason) => Some(format!("{} skipped: {reason}", p.uri)),
            Status::Disabled => Some(format!("{} is disabled by config", p.uri)),
            _ => None,
        })
        .collect();
    LookupError::NotFound {
        wanted: plugin_type.to_string(),
        detail: if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        },
    }
}

/// Values the host hands to every plugin (e.g. a runtime handle), keyed by type.
#[derive(Default)]
pub struct Extensions {
    values: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Extensions {
    /// An empty set.
    pub fn new() -> Self {
        Extensions::default()
    }

    /// Adds a value; a value of the same type is replaced.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The value of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref())
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("n_values", &self.values.len())
            .finish()
    }
}

/// What a plugin's init function gets.
#[derive(Debug)]
pub struct InitContext {
    registration: Registration,
    uri: String,
    config: Option<AnyConfig>,
    root: PathBuf,
    state: PathBuf,
    grpc_address: String,
    meta: Meta,
    set: Set,
    visible: usize,
    extensions: Arc<Extensions>,
}

impl InitContext {
    /// The plugin's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The plugin's registration.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// The plugin's decoded config.
    ///
    /// # Errors
    /// When the plugin registered no config, or one of another type than `T`.
    pub fn config<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, LookupError> {
        self.config
            .clone()
            .and_then(|c| c.downcast::<T>().ok())
            .ok_or_else(|| LookupError::Config {
                uri: self.uri.clone(),
                expected: std::any::type_name::<T>(),
            })
    }

    /// The plugin's own directory for persistent data: `<root>/<uri>`. Not created for it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The plugin's own directory for run-time state: `<state>/<uri>`. Not created for it.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The address the daemon's gRPC server listens on.
    pub fn grpc_address(&self) -> &str {
        &self.grpc_address
    }

    /// What the plugin says about itself; shown by introspection.
    pub fn meta_mut(&mut self) -> &mut Meta {
        &mut self.meta
    }

    /// What the plugin has said about itself so far.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// A value the host provided, e.g. a runtime handle.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// The single ok instance of a type initialised before this plugin, as `Arc<T>`.
    ///
    /// # Errors
    /// A [`LookupError::Required`] saying which plugin of the type failed or skipped, or that
    /// none or several are ok.
    pub fn get_single<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
    ) -> Result<Arc<T>, LookupError> {
        self.set
            .single(plugin_type, self.visible)
            .map_err(|e| required(plugin_type, e))
    }

    /// The instance of a plugin by type and id.
    ///
    /// # Errors
    /// When it was not initialised before this plugin, is not ok, or has no `Arc<T>` view.
    pub fn get_by_id<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
        id: &str,
    ) -> Result<Arc<T>, LookupError> {
        self.set
            .by_id(plugin_type, id, self.visible)
            .map_err(|e| required(plugin_type, e))
    }

    /// Every ok instance of a type, in init order, with its id.
    ///
    /// # Errors
    /// When none is ok, or one has no `Arc<T>` view.
    pub fn get_by_type<T: ?Sized + Send + Sync + 'static>(
        &self,
        plugin_type: &str,
    ) -> Result<Vec<(&'static str, Arc<T>)>, LookupError> {
        self.set
            .all_of_type(plugin_type, self.visible)
            .map_err(|e| required(plugin_type, e))
    }

    /// The whole plugin set, live: plugins that finish init after this one appear in it as
    /// they do (introspection uses this to list every plugin).
    pub fn plugin_set(&self) -> Set {
        self.set.clone()
    }

    /// Every plugin initialised before this one, whatever its outcome, in init order.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.set
            .read()
            .plugins
            .iter()
            .take(self.visible)
            .cloned()
            .collect()
    }
}

fn required(plugin_type: &str, error: LookupError) -> LookupError {
    match error {
        LookupError::TypeMismatch { .. } | LookupError::Required { .. } => error,
        other => LookupError::Required {
            plugin_type: plugin_type.to_string(),
            inner: Box::new(other),
        },
    }
}

/// Settings of one init run.
#[derive(Debug)]
pub struct InitOptions {
    /// The daemon's root directory; each plugin gets `<root>/<uri>`.
    pub root: PathBuf,
    /// The daemon's state directory; each plugin gets `<state>/<uri>`.
    pub state: PathBuf,
    /// The gRPC address the daemon listens on.
    pub grpc_address: String,
    /// URIs that must end ok, or start-up fails.
    pub required: Vec<String>,
    /// Decoded configs by URI; plugins with a config type that have no entry get defaults.
    pub configs: HashMap<String, AnyConfig>,
    /// How long a plugin may initialise before a warning is logged (and again each period).
    pub watchdog: Duration,
    /// Init time-outs by URI: a plugin still initialising then fails, and start-up goes on.
    pub timeouts: HashMap<String, Duration>,
    /// A time-out for every plugin without its own entry in `timeouts`.
    pub default_timeout: Option<Duration>,
    /// Values handed to every plugin.
    pub extensions: Extensions,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            root: PathBuf::from("/var/lib/plinth"),
            state: PathBuf::from("/run/plinth"),
            grpc_address: String::new(),
            required: Vec::new(),
            configs: HashMap::new(),
            watchdog: Duration::from_secs(5),
            timeouts: HashMap::new(),
            default_timeout: None,
            extensions: Extensions::new(),
        }
    }
}

/// The init timed out.
#[derive(Debug, thiserror::Error)]
#[error("init did not finish within {0:?}; raise or remove its time-out under [timeouts]")]
struct TimedOut(Duration);

/// The init panicked.
#[derive(Debug, thiserror::Error)]
#[error("init panicked: {0}")]
struct Panicked(String);

/// A config type whose defaults could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("decoding default config: {0}")]
struct DefaultConfig(String);

/// Checks `required` (the config's `required_plugins`) against `registry` and `graph` before
/// anything is initialised: every entry must be registered and enabled. [`init_plugins`]
/// runs it first; a host runs it on its own to validate a config without starting (plinthd's
/// `config check`).
///
/// # Errors
/// The first entry that is not registered ([`StartupError::RequiredMissing`], with a "did you
/// mean" hint) or that the config disables ([`StartupError::RequiredDisabled`]).
pub fn check_required(
    registry: &Registry,
    graph: &PluginGraph,
    required: &[String],
) -> Result<(), StartupError> {
    let entries = registry.entries();
    let uris: Vec<String> = entries.iter().map(|e| e.uri()).collect();
    let disabled: BTreeSet<&str> = graph.disabled().iter().map(|&i| uris[i].as_str()).collect();
    let required: BTreeSet<&str> = required.iter().map(String::as_str).collect();
    for uri in required {
        if disabled.contains(uri) {
            return Err(StartupError::RequiredDisabled {
                uri: uri.to_string(),
            });
        }
        if !uris.iter().any(|u| u == uri) {
            return Err(StartupError::RequiredMissing {
                uri: uri.to_string(),
                hint: hint(uri, uris.iter().map(String::as_str)),
            });
        }
    }
    Ok(())
}

/// Initialises every enabled plugin of `registry` in `graph` order.
///
/// Each init runs off the caller's thread (one init thread serves them all, in turn) so that
/// a hang can be reported (after `options.watchdog`) or cut off (after its time-out: the
/// hung thread is left behind and the next init gets a new one), and a panic becomes a
/// failure. Thread-local state set by one init is seen by the next.
/// Disabled plugins are added to the set first, with status disabled.
///
/// # Errors
/// A required plugin that is missing, disabled, or ends other than ok. Plugins initialised
/// before the error are closed (in reverse order) before it is returned.
pub fn init_plugins(
    registry: &Registry,
    graph: &PluginGraph,
    options: InitOptions,
) -> Result<Set, StartupError> {
    check_required(registry, graph, &options.required)?;
    let entries = registry.entries();
    let uris: Vec<String> = entries.iter().map(|e| e.uri()).collect();
    let required: BTreeSet<&str> = options.required.iter().map(String::as_str).collect();

    let set = Set::default();
    for &index in graph.disabled() {
        tracing::info!(uri = %uris[index], "plugin disabled");
        set.push(Plugin {
            registration: entries[index].registration,
            source: entries[index].source.clone(),
            uri: uris[index].clone(),
            status: Status::Disabled,
            instance: None,
            meta: Meta::default(),
            config: None,
            init_time: Duration::ZERO,
        });
    }
    let extensions = Arc::new(options.extensions);
    let mut worker = InitWorker::default();
    for &index in graph.order() {
        let entry = &entries[index];
        let uri = &uris[index];
        let registration = entry.registration;
        let config = match (options.configs.get(uri), registration.config_spec()) {
            (Some(config), _) => Ok(Some(config.clone())),
            (None, Some(spec)) => spec
                .decode(toml::Table::new())
                .map(|d| Some(d.value))
                .map_err(|e| DefaultConfig(e.message)),
            (None, None) => Ok(None),
        };
        let ctx = InitContext {
            registration,
            uri: uri.clone(),
            config: config.as_ref().ok().cloned().flatten(),
            root: options.root.join(uri),
            state: options.state.join(uri),
            grpc_address: options.grpc_address.clone(),
            meta: Meta::default(),
            set: set.clone(),
            visible: set.len(),
            extensions: extensions.clone(),
        };
        let timeout = options
            .timeouts
            .get(uri)
            .copied()
            .or(options.default_timeout);
        let started = Instant::now();
        let (result, meta) = match config {
            Err(error) => (Err(InitError::from(error)), Meta::default()),
            Ok(_) => worker.run(ctx, options.watchdog, timeout),
        };
        let init_time = started.elapsed();
        let (status, instance) = match result {
            Ok(instance) => (Status::Ok, Some(instance)),
            Err(InitError::Skip(reason)) => (Status::Skipped(reason), None),
            Err(InitError::Failed(error)) => {
                let caused_by = culprit_of(error.as_ref());
                (
                    Status::Failed(Failure {
                        error: Arc::from(error),
                        caused_by,
                    }),
                    None,
                )
            }
        };
        match &status {
            Status::Ok => tracing::info!(uri = %uri, ?init_time, "plugin ok"),
            Status::Skipped(reason) => tracing::info!(uri = %uri, %reason, "plugin skipped"),
            Status::Failed(failure) => {
                tracing::warn!(uri = %uri, error = %failure, "plugin failed")
            }
            Status::Disabled => {}
        }
        let outcome = (!status.is_ok()).then(|| status.to_string());
        set.push(Plugin {
            registration,
            source: entry.source.clone(),
            uri: uri.clone(),
            status,
            instance,
            meta,
            config: options.configs.get(uri).cloned(),
            init_time,
        });
        if let Some(outcome) = outcome.filter(|_| required.contains(uri.as_str())) {
            for (uri, error) in set.close() {
                tracing::warn!(uri = %uri, %error, "closing plugin failed");
            }
            return Err(StartupError::RequiredNotOk {
                uri: uri.clone(),
                outcome,
            });
        }
    }
    Ok(set)
}

/// The plugin whose failure made a lookup fail, found anywhere in the error chain.
fn culprit_of(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(lookup) = e.downcast_ref::<LookupError>() {
            return lookup.culprit().map(str::to_string);
        }
        current = e.source();
    }
    None
}

/// The thread that runs init functions, one after another. A thread is started only when
/// none is idle: at first, and after an init that timed out (its thread is left to finish, or
/// hang, on its own; what it returns is dropped). Reusing one thread spares a thread start per
/// plugin, a good part of a small daemon's start-up.
#[derive(Default)]
struct InitWorker {
    idle: Option<std::sync::mpsc::Sender<InitJob>>,
}

type InitJob = Box<dyn FnOnce() + Send>;

impl InitWorker {
    fn jobs(&mut self) -> std::io::Result<std::sync::mpsc::Sender<InitJob>> {
        if let Some(jobs) = self.idle.take() {
            return Ok(jobs);
        }
        let (jobs, queue) = std::sync::mpsc::channel::<InitJob>();
        std::thread::Builder::new()
            .name("plugin init".to_string())
            .spawn(move || {
                // Ends when the sender is dropped: at the end of init, or after a time-out.
                for job in queue {
                    job();
                }
            })?;
        Ok(jobs)
    }

    /// Runs one init, logging while it is slow and giving up at its time-out.
    fn run(
        &mut self,
        mut ctx: InitContext,
        watchdog: Duration,
        timeout: Option<Duration>,
    ) -> (Result<Instance, InitError>, Meta) {
        let uri = ctx.uri.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        let job: InitJob = Box::new(move || {
            // The thread is shared; the span says whose init is running (e.g. in a panic's log).
            let _span = tracing::info_span!("init", uri = %ctx.uri).entered();
            let init = *ctx.registration.init_fn();
            let result = catch_unwind(AssertUnwindSafe(|| init.call(&mut ctx)))
                .unwrap_or_else(|panic| Err(InitError::from(Panicked(panic_text(&panic)))));
            // The receiver is gone only when the init timed out; its result is dropped.
            let _ = sender.send((result, std::mem::take(&mut ctx.meta)));
        });
        let jobs = match self.jobs() {
            Ok(jobs) => jobs,
            Err(error) => return (Err(InitError::from(error)), Meta::default()),
        };
        if jobs.send(job).is_err() {
            return (
                Err(InitError::msg("the init thread is gone")),
                Meta::default(),
            );
        }
        let started = Instant::now();
        loop {
            let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
            let wait = remaining
                .map_or(watchdog, |r| r.min(watchdog))
                .max(Duration::from_millis(1));
            match receiver.recv_timeout(wait) {
                Ok(done) => {
                    self.idle = Some(jobs);
                    return done;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return (
                        Err(InitError::msg("init thread ended without a result")),
                        Meta::default(),
                    );
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let elapsed = started.elapsed();
                    if let Some(limit) = timeout.filter(|t| elapsed >= *t) {
                        tracing::error!(uri = %uri, ?limit, "plugin init timed out");
                        return (Err(InitError::from(TimedOut(limit))), Meta::default());
                    }
                    tracing::warn!(uri = %uri, ?elapsed, "plugin still initialising");
                }
            }
        }
    }
}

fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
}
