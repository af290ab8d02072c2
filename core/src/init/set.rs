//! The plugin [`Set`]: every plugin of one init run, and the lookups by type, id and view.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use super::error::BoxError;
use super::instance::{Instance, Plugin, Status};
use super::worker::panic_text;

/// A lookup from an [`InitContext`](super::InitContext) or a [`Set`] found nothing usable.
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

#[derive(Debug)]
pub(crate) struct SetInner {
    pub(crate) plugins: Vec<Arc<Plugin>>,
    pub(super) by_type: HashMap<&'static str, Vec<usize>>,
    /// 1 at start-up, one more with each applied reload.
    pub(super) generation: u64,
    /// When this generation was applied.
    pub(super) applied_at: SystemTime,
}

impl Default for SetInner {
    fn default() -> Self {
        SetInner {
            plugins: Vec::new(),
            by_type: HashMap::new(),
            generation: 1,
            applied_at: SystemTime::now(),
        }
    }
}

/// The plugins of a process, in init order, with their outcomes. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Set {
    inner: Arc<RwLock<SetInner>>,
}

impl Set {
    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, SetInner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn push(&self, plugin: Plugin) {
        self.push_shared(Arc::new(plugin));
    }

    /// Adds a plugin record that another set holds too (a reload carries a running plugin
    /// over into the next generation).
    pub(crate) fn push_shared(&self, plugin: Arc<Plugin>) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let index = inner.plugins.len();
        inner
            .by_type
            .entry(plugin.plugin_type())
            .or_default()
            .push(index);
        inner.plugins.push(plugin);
    }

    /// An empty set for the generation after this one (a reload builds it beside the live
    /// set, then [`Set::replace`]s the live set's contents with it).
    pub(crate) fn next_generation(&self) -> Set {
        let next = Set::default();
        next.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .generation = self.generation() + 1;
        next
    }

    /// Puts `next`'s plugins and generation in this set (every holder of this set sees them
    /// at once) and returns what it held; `next` is left empty.
    pub(crate) fn replace(&self, next: &Set) -> SetInner {
        let mut taken =
            std::mem::take(&mut *next.inner.write().unwrap_or_else(PoisonError::into_inner));
        taken.applied_at = SystemTime::now();
        std::mem::replace(
            &mut *self.inner.write().unwrap_or_else(PoisonError::into_inner),
            taken,
        )
    }

    /// The config generation the set holds: 1 from start-up, one more with each applied
    /// reload.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// When the set's generation was applied (start-up, or the reload that made it).
    pub fn applied_at(&self) -> SystemTime {
        self.read().applied_at
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
    pub(super) fn single<T: ?Sized + Send + Sync + 'static>(
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

    pub(super) fn all_of_type<T: ?Sized + Send + Sync + 'static>(
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

    pub(super) fn by_id<T: ?Sized + Send + Sync + 'static>(
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
    pub(super) fn of_type(&self, plugin_type: &str, visible: usize) -> Vec<Arc<Plugin>> {
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
            failures.extend(close_plugin(plugin));
        }
        failures
    }

    /// Takes the last plugin out of the set.
    pub(super) fn pop(&self) -> Option<Arc<Plugin>> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let plugin = inner.plugins.pop()?;
        let index = inner.plugins.len();
        if let Some(indices) = inner.by_type.get_mut(plugin.plugin_type()) {
            indices.retain(|&i| i != index);
        }
        Some(plugin)
    }
}

/// Runs a plugin's close hook (if it has one and it has not run) and lets go of the plugin,
/// so that an instance nothing else holds is dropped right there; panics in either become
/// failures.
pub(crate) fn close_plugin(plugin: Arc<Plugin>) -> Vec<(String, BoxError)> {
    let mut failures = Vec::new();
    if let Some(close) = plugin.instance.as_deref().and_then(Instance::take_close) {
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
    failures
}

pub(super) fn none_ok(plugin_type: &str, of_type: &[Arc<Plugin>]) -> LookupError {
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
