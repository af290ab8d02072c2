//! What a plugin's init is handed: [`InitContext`], with its config, directories,
//! lookups of the plugins it requires, and the host's [`Extensions`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::instance::{Meta, Plugin};
use super::set::{LookupError, Set};
use crate::registration::{AnyConfig, Registration};

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
    pub(super) registration: Registration,
    pub(super) uri: String,
    pub(super) config: Option<AnyConfig>,
    pub(super) root: PathBuf,
    pub(super) state: PathBuf,
    pub(super) grpc_address: String,
    pub(super) meta: Meta,
    pub(super) set: Set,
    /// The set the host serves from: `set` at start-up; during a reload, the live set, while
    /// `set` is the next generation being built.
    pub(super) live: Set,
    pub(super) visible: usize,
    pub(super) extensions: Arc<Extensions>,
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
    /// they do, and a reload's next generation replaces its contents when it is applied
    /// (introspection uses this to list every plugin).
    pub fn plugin_set(&self) -> Set {
        self.live.clone()
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
