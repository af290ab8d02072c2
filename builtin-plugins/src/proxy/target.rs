//! `io.containerd.internal.v1.proxy-target`: plinthd as the process behind someone else's
//! `[proxy_plugins]`. With an `address` configured, the daemon serves its content store and
//! snapshotters *raw* on that second socket — containerd's Content and Snapshots services
//! straight over the stores, without the metadata layer and without namespaces — so that
//! containerd (or another plinthd) can use them as proxy plugins with nothing special:
//!
//! ```toml
//! [plugins."io.containerd.internal.v1.proxy-target"]
//!   address = "/run/plinth/proxy.sock"
//!   # containerd's proxy names itself ("plinth" below) in every snapshots request; a name
//!   # that is not one of this daemon's snapshotters gets this one.
//!   default_snapshotter = "overlayfs"
//! ```
//!
//! and in containerd's config:
//!
//! ```toml
//! [proxy_plugins.plinth]
//!   type = "snapshot"
//!   address = "/run/plinth/proxy.sock"
//! ```
//!
//! The `containerd-namespace` header containerd sends is ignored: namespaces are the
//! client's metadata layer's business. Without an address the plugin skips itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_core::registration::{ConfigViolation, ValidateConfig};
use plinth_core::{InitContext, InitError, Instance, LookupError, Registration, register, types};

use crate::content::ContentStore;
use crate::error::Error;
use crate::grpc::MessageLimits;
use crate::namespaces::NamespacedStores;
use crate::snapshots::Snapshotter;

/// The plugin's id.
pub const ID: &str = "proxy-target";

/// The plugin's config section, `[plugins."io.containerd.internal.v1.proxy-target"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ProxyTargetConfig {
    /// The socket (path or `unix://` URL) to serve on; empty: not served.
    pub address: String,
    /// The snapshotter a request gets when it names one this daemon does not have (as
    /// containerd's proxy does: it sends its own name). Empty: such requests are refused.
    pub default_snapshotter: String,
}

/// Checked when the config is loaded: the address is a unix socket, as a path or a
/// `unix://` URL (`tcp://` and other schemes are not served).
impl ValidateConfig for ProxyTargetConfig {
    fn validate(&self) -> Result<(), ConfigViolation> {
        if self.address.is_empty() {
            return Ok(());
        }
        let scheme = self.address.split_once("://").map(|(scheme, _)| scheme);
        if scheme.is_some_and(|s| s != "unix") || self.address == "unix://" {
            return Err(ConfigViolation::new(
                "address",
                format!(
                    "{:?} is not a unix socket: use a path or a unix:// URL, e.g. \"/run/plinth/proxy.sock\"",
                    self.address
                ),
            ));
        }
        Ok(())
    }
}

/// What the daemon serves on a proxy target's socket. The daemon finds it as a view of the
/// plugin's instance, binds [`ProxyTarget::address`] as it binds its main socket, and
/// serves [`ProxyTarget::add_routes`] there until it stops.
pub trait ProxyTarget: Send + Sync {
    /// The socket path.
    fn address(&self) -> &Path;

    /// Adds the raw Content and Snapshots services to `routes`.
    fn add_routes(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits);
}

/// The stores served raw: the content store and the snapshotters by name, namespaces
/// ignored.
pub struct RawStores {
    content: Option<Arc<dyn ContentStore>>,
    snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
    default_snapshotter: Option<String>,
}

impl std::fmt::Debug for RawStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStores")
            .field("content", &self.content.is_some())
            .field(
                "snapshotters",
                &self.snapshotters.keys().collect::<Vec<_>>(),
            )
            .field("default_snapshotter", &self.default_snapshotter)
            .finish()
    }
}

impl RawStores {
    /// The stores to serve. `default_snapshotter` answers requests naming a snapshotter
    /// that is not in `snapshotters`.
    ///
    /// # Errors
    /// Invalid argument when `default_snapshotter` is not one of `snapshotters`.
    pub fn new(
        content: Option<Arc<dyn ContentStore>>,
        snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
        default_snapshotter: Option<String>,
    ) -> Result<RawStores, Error> {
        if let Some(name) = &default_snapshotter {
            if !snapshotters.contains_key(name) {
                return Err(Error::invalid(format!(
                    "default_snapshotter = {name:?} is not loaded (loaded: {})",
                    loaded(&snapshotters)
                )));
            }
        }
        Ok(RawStores {
            content,
            snapshotters,
            default_snapshotter,
        })
    }

    /// Adds containerd's Content service (when there is a content store) and Snapshots
    /// service over these stores to `routes`.
    pub fn add_routes(
        self: &Arc<Self>,
        routes: &mut tonic::service::RoutesBuilder,
        limits: MessageLimits,
    ) {
        let stores: Arc<dyn NamespacedStores> = self.clone();
        if self.content.is_some() {
            crate::add_limited!(
                routes,
                crate::content_service::raw_server(stores.clone()),
                limits
            );
        }
        crate::add_limited!(routes, crate::snapshots_service::raw_server(stores), limits);
    }
}

fn loaded(snapshotters: &BTreeMap<String, Arc<dyn Snapshotter>>) -> String {
    if snapshotters.is_empty() {
        "none".to_string()
    } else {
        snapshotters
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl NamespacedStores for RawStores {
    fn content(self: Arc<Self>, _namespace: &str) -> Result<Arc<dyn ContentStore>, Error> {
        self.content
            .clone()
            .ok_or_else(|| Error::unavailable("no content store is served here"))
    }

    fn snapshotter(
        self: Arc<Self>,
        _namespace: &str,
        name: &str,
    ) -> Result<Arc<dyn Snapshotter>, Error> {
        if let Some(snapshotter) = self.snapshotters.get(name) {
            return Ok(snapshotter.clone());
        }
        match &self.default_snapshotter {
            Some(default) => {
                self.snapshotters.get(default).cloned().ok_or_else(|| {
                    Error::internal(format!("default snapshotter {default} vanished"))
                })
            }
            None => Err(Error::invalid(format!(
                "snapshotter {name:?} is not served here (served: {}): name one of those, or set default_snapshotter in [plugins.\"{}.{ID}\"]",
                loaded(&self.snapshotters),
                types::INTERNAL
            ))),
        }
    }
}

struct Target {
    address: PathBuf,
    stores: Arc<RawStores>,
}

impl ProxyTarget for Target {
    fn address(&self) -> &Path {
        &self.address
    }

    fn add_routes(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        self.stores.add_routes(routes, limits);
    }
}

/// The socket a proxy target with this decoded config will serve on, if any: what a host
/// checks before it starts (a path too long for a unix socket, say).
pub fn socket_of(config: &(dyn std::any::Any + Send + Sync)) -> Option<PathBuf> {
    let config = config.downcast_ref::<ProxyTargetConfig>()?;
    (!config.address.is_empty()).then(|| super::socket_path(&config.address))
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<ProxyTargetConfig>()?;
    if config.address.is_empty() {
        return Err(InitError::skip(format!(
            "no address: set address in [plugins.\"{}\"] to serve this daemon's content store and snapshotters to other daemons' proxy_plugins",
            ctx.uri()
        )));
    }
    // Blobs and snapshots here may now belong to another daemon's metadata: this daemon's
    // collector must not remove what it finds without a record of its own.
    crate::gc::set_served_raw();
    let content = match ctx.get_single::<dyn ContentStore>(types::CONTENT) {
        Ok(content) => Some(content),
        Err(LookupError::Required { inner, .. })
            if matches!(*inner, LookupError::NotFound { .. }) =>
        {
            None
        }
        Err(error) => return Err(error.into()),
    };
    let snapshotters: BTreeMap<String, Arc<dyn Snapshotter>> = ctx
        .get_by_type::<dyn Snapshotter>(types::SNAPSHOTTER)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, s)| (id.to_string(), s))
        .collect();
    let default = Some(config.default_snapshotter.clone()).filter(|s| !s.is_empty());
    let names = loaded(&snapshotters);
    let stores = RawStores::new(content, snapshotters, default)
        .map_err(|e| InitError::msg(format!("[plugins.\"{}\"] {}", ctx.uri(), e.message)))?;
    let address = super::socket_path(&config.address);
    let exports = &mut ctx.meta_mut().exports;
    exports.insert("address".to_string(), address.display().to_string());
    exports.insert("snapshotters".to_string(), names);
    if !config.default_snapshotter.is_empty() {
        exports.insert(
            "default_snapshotter".to_string(),
            config.default_snapshotter.clone(),
        );
    }
    let target = Arc::new(Target {
        address,
        stores: Arc::new(stores),
    });
    Ok(Instance::new(target as Arc<dyn ProxyTarget>))
}

register!(
    Registration::new(types::INTERNAL, ID, init)
        .requires(&[types::CONTENT, types::SNAPSHOTTER])
        .validated_config::<ProxyTargetConfig>()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_socket_addresses_pass_the_config_check() {
        // (address, accepted)
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("/run/plinth/proxy.sock", true),
            ("unix:///run/plinth/proxy.sock", true),
            ("relative.sock", true),
            ("tcp://127.0.0.1:9000", false),
            ("http://localhost/proxy", false),
            ("unix://", false),
        ];
        for (address, accepted) in cases {
            let config = ProxyTargetConfig {
                address: address.to_string(),
                ..ProxyTargetConfig::default()
            };
            let result = config.validate();
            assert_eq!(result.is_ok(), *accepted, "{address}: {result:?}");
            if let Err(violation) = result {
                assert_eq!(violation.key, ["address"]);
                assert!(violation.message.contains("unix socket"), "{violation:?}");
            }
        }
    }
}
