//! Proxy plugins, both directions (feature `proxy`).
//!
//! **plinthd as the host of proxies.** Each `[proxy_plugins.<name>]` section becomes a
//! registration `<type>.<name>` ([`registrations`]), merged, ordered and filtered like any
//! other plugin:
//!
//! ```toml
//! [proxy_plugins.stargz]
//!   type = "snapshot"                 # or "content", or the full plugin type
//!   address = "/run/stargz/grpc.sock" # a path or unix:// URL
//!   platform = "linux/amd64"          # optional
//!   exports = { note = "lazy pulls" } # optional; `address` is added
//!   capabilities = []                 # optional
//! ```
//!
//! Its instance is a [`ProxySnapshotter`] or a [`ProxyContentStore`]: gRPC clients over
//! containerd's snapshots or content API that implement the same traits as the local
//! plugins (and pass the same conformance suites), so the metadata plugin sits on them as on
//! local ones. Proxies to the same address share one channel ([`remote::Remote`]).
//!
//! Beyond containerd, which dials lazily and fails only at first use, the init checks that
//! the remote answers. When it does not, the plugin still initialises (status ok, so the
//! metadata plugin keeps it), logs a warning, and reports through
//! [`LiveStatus`] why it cannot serve (`no listener at <path>`);
//! introspection shows that as the plugin's error and its `address`, `connection` and
//! `last_error` as exports, until a monitor sees the remote answer and the plugin is ok again.
//! A remote that answers gRPC but does not serve the API is a failed init: a wrong address
//! does not heal by itself.
//!
//! **plinthd as a proxy target.** [`target`] is the plugin that serves this daemon's content
//! store and snapshotters raw on a second socket, for containerd's (or another plinthd's)
//! `[proxy_plugins]`.

pub mod content;
pub mod remote;
pub mod snapshotter;
pub mod target;
#[cfg(all(test, feature = "content-local", feature = "snapshotter-native"))]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use plinth_core::config::ProxyPlugin;
use plinth_core::registration::SharedInitFn;
use plinth_core::{InitContext, InitError, Instance, Registration, types};

pub use self::content::ProxyContentStore;
pub use self::snapshotter::ProxySnapshotter;
use crate::content::ContentStore;
use crate::live::LiveStatus;
use crate::snapshots::Snapshotter;

/// What a proxy's init check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The remote serves the API.
    Serves,
    /// The remote answers gRPC but does not serve the API: a wrong address.
    NotServed(String),
    /// The remote does not answer (yet); the reason.
    Down(String),
}

/// The kinds of proxy plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// A snapshotter (`snapshot`, `io.containerd.snapshotter.v1`).
    Snapshot,
    /// A content store (`content`, `io.containerd.content.v1`).
    Content,
}

impl ProxyKind {
    /// The kind a `type` value names: the short names containerd takes, or the full types.
    pub fn parse(text: &str) -> Option<ProxyKind> {
        match text {
            "snapshot" | types::SNAPSHOTTER => Some(ProxyKind::Snapshot),
            "content" | types::CONTENT => Some(ProxyKind::Content),
            _ => None,
        }
    }

    /// The plugin type of the registration.
    pub fn plugin_type(self) -> &'static str {
        match self {
            ProxyKind::Snapshot => types::SNAPSHOTTER,
            ProxyKind::Content => types::CONTENT,
        }
    }
}

/// A `[proxy_plugins.<name>]` section that cannot become a plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    /// The type is none of the proxy types.
    #[error(
        "[proxy_plugins.{name}]: type {found:?} is not a proxy plugin type: use \"snapshot\", \"content\", \"{}\" or \"{}\"",
        types::SNAPSHOTTER,
        types::CONTENT
    )]
    UnknownType {
        /// The section's name.
        name: String,
        /// The type it gives.
        found: String,
    },
    /// The address is empty.
    #[error(
        "[proxy_plugins.{name}]: address is empty: give the socket of the process, e.g. address = \"/run/{name}/grpc.sock\""
    )]
    NoAddress {
        /// The section's name.
        name: String,
    },
}

/// A socket path from a config value: a path or a `unix://` URL.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// One proxy plugin, as its init needs it.
#[derive(Debug)]
struct ProxySpec {
    name: String,
    kind: ProxyKind,
    address: PathBuf,
    config: ProxyPlugin,
}

/// Registrations already built in this process, so that loading the same config twice leaks
/// nothing more (a registration's strings and init function must be `'static`).
static BUILT: Mutex<Vec<((String, ProxyPlugin), Registration)>> = Mutex::new(Vec::new());

/// The registrations of `[proxy_plugins]`, as (section name, registration), for
/// [`RegistryBuilder::add_proxy`](plinth_core::registry::RegistryBuilder::add_proxy). A name
/// that clashes with another plugin's URI is reported by the registry builder, naming both.
///
/// # Errors
/// Every section that cannot become a plugin.
pub fn registrations<'a>(
    proxies: impl IntoIterator<Item = (&'a String, &'a ProxyPlugin)>,
) -> Result<Vec<(String, Registration)>, Vec<ProxyConfigError>> {
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let mut registrations = Vec::new();
    let mut errors = Vec::new();
    for (name, config) in proxies {
        let Some(kind) = ProxyKind::parse(&config.plugin_type) else {
            errors.push(ProxyConfigError::UnknownType {
                name: name.clone(),
                found: config.plugin_type.clone(),
            });
            continue;
        };
        if config.address.trim().is_empty() {
            errors.push(ProxyConfigError::NoAddress { name: name.clone() });
            continue;
        }
        let key = (name.clone(), config.clone());
        if let Some((_, registration)) = built.iter().find(|(k, _)| *k == key) {
            registrations.push((name.clone(), *registration));
            continue;
        }
        let spec = Arc::new(ProxySpec {
            name: name.clone(),
            kind,
            address: socket_path(&config.address),
            config: config.clone(),
        });
        let id: &'static str = Box::leak(name.clone().into_boxed_str());
        let init: &'static SharedInitFn =
            Box::leak(Box::new(move |ctx: &mut InitContext| init(ctx, &spec)));
        let registration = Registration::with_shared_init(kind.plugin_type(), id, init);
        built.push((key, registration));
        registrations.push((name.clone(), registration));
    }
    if errors.is_empty() {
        Ok(registrations)
    } else {
        Err(errors)
    }
}

fn init(ctx: &mut InitContext, spec: &ProxySpec) -> Result<Instance, InitError> {
    let runtime = ctx
        .extension::<tokio::runtime::Handle>()
        .cloned()
        .ok_or_else(|| {
            InitError::msg(
                "proxy plugins need the host's tokio runtime handle as an init extension",
            )
        })?;
    let meta = ctx.meta_mut();
    if !spec.config.platform.is_empty() {
        meta.platforms.push(spec.config.platform.clone());
    }
    meta.exports.extend(spec.config.exports.clone());
    meta.exports
        .insert("address".to_string(), spec.address.display().to_string());
    meta.capabilities.extend(spec.config.capabilities.clone());

    let remote = {
        let _entered = runtime.enter();
        remote::Remote::shared(&spec.address)?
    };
    let (instance, check) = match spec.kind {
        ProxyKind::Snapshot => {
            let proxy = Arc::new(ProxySnapshotter::new(remote, &spec.name));
            let check = runtime.block_on(proxy.check());
            (
                Instance::new(proxy.clone() as Arc<dyn Snapshotter>)
                    .with(proxy.clone() as Arc<dyn LiveStatus>)
                    .with(proxy),
                check,
            )
        }
        ProxyKind::Content => {
            let proxy = Arc::new(ProxyContentStore::new(remote));
            let check = runtime.block_on(proxy.check());
            (
                Instance::new(proxy.clone() as Arc<dyn ContentStore>)
                    .with(proxy.clone() as Arc<dyn LiveStatus>)
                    .with(proxy),
                check,
            )
        }
    };
    match check {
        Check::Serves => Ok(instance),
        Check::NotServed(reason) => Err(InitError::msg(reason)),
        Check::Down(reason) => {
            tracing::warn!(
                uri = ctx.uri(),
                %reason,
                "proxy remote does not answer; the plugin starts anyway and recovers when it does"
            );
            Ok(instance)
        }
    }
}
