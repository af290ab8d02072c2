//! What an init produces ([`Instance`]) and what the host keeps of each plugin: its
//! [`Meta`], [`Status`] and the [`Plugin`] record.

use std::any::Any;
use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::error::BoxError;
use super::set::LookupError;
use crate::registration::{AnyConfig, Registration};
use crate::registry::Source;

pub(super) type CloseFn = Box<dyn FnOnce() -> Result<(), BoxError> + Send>;

/// One typed view of an instance: the boxed `Arc<T>`, its type name, and how to read the
/// `Arc`'s strong count and the address of the value it points to (`T` is erased).
pub(super) struct View {
    value: Box<dyn Any + Send + Sync>,
    name: &'static str,
    holders: fn(&(dyn Any + Send + Sync)) -> (usize, usize),
}

/// The strong count of the `Arc<T>` in `view` and the address of its value.
fn holders_of<T: ?Sized + Send + Sync + 'static>(view: &(dyn Any + Send + Sync)) -> (usize, usize) {
    view.downcast_ref::<Arc<T>>().map_or((0, 0), |arc| {
        (
            Arc::strong_count(arc),
            Arc::as_ptr(arc).cast::<()>() as usize,
        )
    })
}

/// What a plugin's init produces: one value, seen through one or more typed views
/// (`Arc<dyn Trait>` or `Arc<Concrete>`), and an optional close hook.
pub struct Instance {
    pub(super) views: Vec<View>,
    pub(super) close: Mutex<Option<CloseFn>>,
    /// How many held the first view's value when init returned (its views, its close hook,
    /// anything the plugin started): more than that later means it is in use.
    pub(super) baseline: std::sync::OnceLock<usize>,
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
            baseline: std::sync::OnceLock::new(),
        }
    }

    /// Adds another view of the same value, e.g. `Arc<dyn Closer>` beside `Arc<dyn Store>`.
    pub fn with<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.views.push(View {
            value: Box::new(value),
            name: std::any::type_name::<Arc<T>>(),
            holders: holders_of::<T>,
        });
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
            .find_map(|view| view.value.downcast_ref::<Arc<T>>().cloned())
    }

    /// The type names of the views, for error messages.
    pub fn view_names(&self) -> Vec<&'static str> {
        self.views.iter().map(|view| view.name).collect()
    }

    /// Whether anything holds the instance's value beyond what held it when its init
    /// returned (its own views, its close hook, tasks it started then): a dependent that
    /// looked it up, or a call in flight. After a reload replaced the plugin, what still
    /// holds it is a call that has not finished (or a retired dependent not yet closed). Only
    /// the value of the first view is counted; an instance with no views is never in use.
    pub fn in_use(&self) -> bool {
        let Some(first) = self.views.first() else {
            return false;
        };
        let (count, _) = (first.holders)(first.value.as_ref());
        count
            > self
                .baseline
                .get()
                .copied()
                .unwrap_or_else(|| self.own_holders())
    }

    /// How many of the instance's own views hold its first view's value.
    fn own_holders(&self) -> usize {
        let Some(first) = self.views.first() else {
            return 0;
        };
        let (_, address) = (first.holders)(first.value.as_ref());
        self.views
            .iter()
            .filter(|view| (view.holders)(view.value.as_ref()).1 == address)
            .count()
    }

    /// Records how many hold the value now, as what the plugin itself holds (once, when its
    /// init returned).
    pub(super) fn mark_baseline(&self) {
        if let Some(first) = self.views.first() {
            let (count, _) = (first.holders)(first.value.as_ref());
            let _ = self.baseline.set(count);
        }
    }

    pub(super) fn take_close(&self) -> Option<CloseFn> {
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
    pub(super) registration: Registration,
    pub(super) source: Source,
    pub(super) uri: String,
    pub(super) status: Status,
    pub(super) instance: Option<Arc<Instance>>,
    pub(super) meta: Meta,
    pub(super) config: Option<AnyConfig>,
    pub(super) init_time: Duration,
    pub(super) started_at: SystemTime,
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

    /// When its init began: at start-up, or at the reload that last restarted or started it.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
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
        let instance = self.instance.as_deref();
        instance
            .and_then(Instance::get::<T>)
            .ok_or_else(|| LookupError::TypeMismatch {
                uri: self.uri.clone(),
                expected: std::any::type_name::<Arc<T>>(),
                found: instance.map(Instance::view_names).unwrap_or_default(),
            })
    }
}
