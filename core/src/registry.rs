//! The registry: link-time registrations (the `register!` macro and its two backends) merged
//! with dynamic-library and proxy registrations in one deterministic order.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::error::{RegistrationError, SourcedRegistrationError};
use crate::registration::Registration;

/// Where a registration came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Linked into this binary and submitted with `register!`.
    Static,
    /// Handed over by a shared library.
    Dynamic {
        /// The library file.
        library: PathBuf,
    },
    /// Built from a `[proxy_plugins.<name>]` config section.
    Proxy {
        /// The section name.
        name: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Static => f.write_str("this binary (link time)"),
            Source::Dynamic { library } => write!(f, "library {}", library.display()),
            Source::Proxy { name } => write!(f, "[proxy_plugins.{name}]"),
        }
    }
}

/// One registration in the registry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The registration.
    pub registration: Registration,
    /// Where it came from.
    pub source: Source,
}

impl Entry {
    /// The registration's URI.
    pub fn uri(&self) -> String {
        self.registration.uri()
    }
}

/// Every registration of a process, validated, without duplicates, in merge order:
/// static ones sorted by URI, then dynamic ones by library file name, then proxies by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// A builder with nothing in it.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The registry of everything linked into this binary with `register!`.
    ///
    /// # Errors
    /// Every registration that breaks a rule, each with its source.
    pub fn from_link_time() -> Result<Registry, Vec<SourcedRegistrationError>> {
        Registry::builder().link_time().build()
    }

    /// The entries in merge order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The registrations in merge order.
    pub fn registrations(&self) -> impl ExactSizeIterator<Item = &Registration> + '_ {
        self.entries.iter().map(|e| &e.registration)
    }

    /// The entry with this URI.
    pub fn get(&self, uri: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| {
            let r = &e.registration;
            uri.len() == r.plugin_type().len() + 1 + r.id().len()
                && uri.starts_with(r.plugin_type())
                && uri.ends_with(r.id())
                && uri.as_bytes()[r.plugin_type().len()] == b'.'
        })
    }

    /// The number of registrations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Collects registrations from every source, then validates and merges them.
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    statics: Vec<Registration>,
    dynamics: Vec<(PathBuf, Registration)>,
    proxies: Vec<(String, Registration)>,
}

impl RegistryBuilder {
    /// Adds everything submitted at link time with `register!`.
    pub fn link_time(mut self) -> Self {
        self.statics.extend(link_time_registrations().copied());
        self
    }

    /// Adds one registration as if it had been linked in.
    pub fn add_static(mut self, registration: Registration) -> Self {
        self.statics.push(registration);
        self
    }

    /// Adds a registration handed over by a shared library.
    pub fn add_dynamic(mut self, library: impl Into<PathBuf>, registration: Registration) -> Self {
        self.dynamics.push((library.into(), registration));
        self
    }

    /// Adds a registration built from a `[proxy_plugins.<name>]` section.
    pub fn add_proxy(mut self, name: impl Into<String>, registration: Registration) -> Self {
        self.proxies.push((name.into(), registration));
        self
    }

    /// Validates every registration and merges them in the documented order.
    ///
    /// # Errors
    /// Every rule broken, each with the source of the registration: invalid registrations and
    /// URIs claimed twice (naming both sources).
    pub fn build(self) -> Result<Registry, Vec<SourcedRegistrationError>> {
        let mut statics: Vec<Entry> = self
            .statics
            .into_iter()
            .map(|registration| Entry {
                registration,
                source: Source::Static,
            })
            .collect();
        statics.sort_by_cached_key(Entry::uri);
        let mut dynamics = self.dynamics;
        // Stable: registrations of one library keep the order the library gave them.
        dynamics.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()).then(a.0.cmp(&b.0)));
        let mut proxies = self.proxies;
        proxies.sort_by(|a, b| a.0.cmp(&b.0));

        let all = statics
            .into_iter()
            .chain(dynamics.into_iter().map(|(library, registration)| Entry {
                registration,
                source: Source::Dynamic { library },
            }))
            .chain(proxies.into_iter().map(|(name, registration)| Entry {
                registration,
                source: Source::Proxy { name },
            }));

        let mut errors = Vec::new();
        let mut seen: HashMap<String, Source> = HashMap::new();
        let mut entries = Vec::new();
        for entry in all {
            if let Err(error) = entry.registration.validate() {
                errors.push(SourcedRegistrationError {
                    source_kind: entry.source,
                    error,
                });
                continue;
            }
            let uri = entry.uri();
            if let Some(first) = seen.get(&uri) {
                errors.push(SourcedRegistrationError {
                    source_kind: entry.source.clone(),
                    error: RegistrationError::Duplicate {
                        uri,
                        first: first.clone(),
                        second: entry.source,
                    },
                });
                continue;
            }
            seen.insert(uri, entry.source.clone());
            entries.push(entry);
        }
        if errors.is_empty() {
            Ok(Registry { entries })
        } else {
            Err(errors)
        }
    }
}

/// Every registration submitted at link time, in no particular order.
pub fn link_time_registrations() -> impl Iterator<Item = &'static Registration> {
    backend::iter()
}

/// The name of the registration backend this build uses: `"inventory"` or `"linkme"`.
pub const BACKEND: &str = backend::NAME;

#[cfg(not(feature = "linkme"))]
mod backend {
    use crate::registration::Registration;

    pub(crate) const NAME: &str = "inventory";

    /// The item `inventory` collects.
    #[doc(hidden)]
    pub struct Submitted(pub &'static Registration);
    inventory::collect!(Submitted);

    pub(crate) fn iter() -> impl Iterator<Item = &'static Registration> {
        inventory::iter::<Submitted>.into_iter().map(|s| s.0)
    }

    /// Submits a registration at link time (inventory backend).
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __plinth_register {
        ($registration:expr) => {
            $crate::__private::inventory::submit! {
                $crate::__private::Submitted(&{ const R: $crate::Registration = $registration; R })
            }
        };
    }
}

#[cfg(feature = "linkme")]
mod backend {
    use crate::registration::Registration;

    pub(crate) const NAME: &str = "linkme";

    /// The slice `linkme` gathers at link time.
    #[doc(hidden)]
    #[linkme::distributed_slice]
    pub static REGISTRATIONS: [&'static Registration];

    pub(crate) fn iter() -> impl Iterator<Item = &'static Registration> {
        REGISTRATIONS.iter().copied()
    }

    /// Submits a registration at link time (linkme backend).
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __plinth_register {
        ($registration:expr) => {
            const _: () = {
                #[$crate::__private::linkme::distributed_slice($crate::__private::REGISTRATIONS)]
                #[linkme(crate = $crate::__private::linkme)]
                static REGISTRATION: &$crate::Registration = &{
                    const R: $crate::Registration = $registration;
                    R
                };
            };
        };
    }
}

#[doc(hidden)]
pub mod private {
    #[cfg(feature = "linkme")]
    pub use super::backend::REGISTRATIONS;
    #[cfg(not(feature = "linkme"))]
    pub use super::backend::Submitted;
    #[cfg(not(feature = "linkme"))]
    pub use inventory;
    #[cfg(feature = "linkme")]
    pub use linkme;
}

/// Submits a [`Registration`] at link time, like Go's `init()`.
///
/// The argument must be a constant expression. The registration is found by
/// [`Registry::from_link_time`] in every binary that links the crate containing the macro
/// call. A crate that nothing references is not linked: reference plugin crates from the
/// binary: `use my_plugins as _;` is not enough, call a function of theirs (by convention a
/// `pub fn link()` that does nothing).
///
/// ```
/// use plinth_core::{register, Registration, InitContext, InitError, Instance};
/// fn init(_: &mut InitContext) -> Result<Instance, InitError> { Ok(Instance::none()) }
/// register!(Registration::new("io.example.v1", "doc", init));
/// assert!(plinth_core::registry::link_time_registrations().any(|r| r.id() == "doc"));
/// ```
#[macro_export]
macro_rules! register {
    ($registration:expr $(,)?) => {
        $crate::__plinth_register!($registration);
    };
}
