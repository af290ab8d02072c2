//! `io.containerd.grpc.v1.introspection`: lists the plugins and their outcomes, and the
//! server's identity, as containerd's Introspection service.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use plinth_api::containerd::services::introspection::v1::introspection_server::{
    Introspection, IntrospectionServer,
};
use plinth_api::containerd::services::introspection::v1::{
    Plugin as PluginInfo, PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse,
    ServerResponse,
};
use plinth_api::containerd::types::Platform;
use plinth_api::google::rpc::Status as RpcStatus;
use plinth_core::{
    InitContext, InitError, Instance, Plugin, Registration, Set, Status, register, types,
};

use crate::error::Error;
use crate::filters::FilterSet;
use crate::grpc::{GrpcService, MessageLimits};
use crate::live::LiveStatus;

pub use crate::grpc::SKIP_MARKER;

/// The gRPC code of a failed plugin's `init_err` (Unknown, as containerd sends for plain errors).
const UNKNOWN: i32 = 2;
/// The gRPC code of an ok plugin that cannot serve right now ([`LiveStatus::unavailable`]).
const UNAVAILABLE: i32 = 14;

#[derive(Clone)]
struct Service {
    plugins: Set,
    root: PathBuf,
    uuid: Arc<Mutex<Option<String>>>,
}

/// The wire form of one plugin. An ok plugin with a [`LiveStatus`] view shows its live
/// exports over its fixed ones and, while it cannot serve, the reason as its error.
pub fn plugin_info(plugin: &Plugin) -> PluginInfo {
    let live = plugin.instance::<dyn LiveStatus>().ok();
    let mut exports = plugin.meta().exports.clone();
    if let Some(live) = &live {
        exports.extend(live.exports());
    }
    if !matches!(plugin.status(), Status::Disabled) {
        // When its init ran: at start-up, or at the reload that last restarted it.
        exports.insert("init_started".to_string(), rfc3339(plugin.started_at()));
    }
    let live_error = live.and_then(|l| l.unavailable()).map(|reason| RpcStatus {
        code: UNAVAILABLE,
        message: reason,
        details: Vec::new(),
    });
    let init_err = live_error.or_else(|| match plugin.status() {
        Status::Ok | Status::Disabled => None,
        Status::Skipped(reason) => Some(RpcStatus {
            code: UNKNOWN,
            message: format!("{reason}: {SKIP_MARKER}"),
            details: Vec::new(),
        }),
        Status::Failed(failure) => Some(RpcStatus {
            code: UNKNOWN,
            message: failure.to_string(),
            details: Vec::new(),
        }),
    });
    PluginInfo {
        r#type: plugin.plugin_type().to_string(),
        id: plugin.id().to_string(),
        requires: plugin
            .registration()
            .required_types()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        platforms: plugin
            .meta()
            .platforms
            .iter()
            .map(|p| parse_platform(p))
            .collect(),
        exports: exports.into_iter().collect(),
        capabilities: plugin.meta().capabilities.clone(),
        init_err,
    }
}

/// A time as RFC 3339, in UTC.
fn rfc3339(time: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(time).map_or_else(|_| "unknown".to_string(), |t| t.to_string())
}

/// The URI of this plugin, whose own entry also shows the config generation.
const OWN_URI: &str = "io.containerd.grpc.v1.introspection";

/// `os/arch[/variant]` as a platform message.
fn parse_platform(text: &str) -> Platform {
    let mut parts = text.splitn(3, '/');
    Platform {
        os: parts.next().unwrap_or_default().to_string(),
        architecture: parts.next().unwrap_or_default().to_string(),
        variant: parts.next().unwrap_or_default().to_string(),
        ..Platform::default()
    }
}

impl Service {
    fn listed(&self) -> Vec<Arc<Plugin>> {
        // containerd lists what was initialised; disabled plugins are not in its set.
        self.plugins
            .plugins()
            .into_iter()
            .filter(|p| !matches!(p.status(), Status::Disabled))
            .collect()
    }

    /// [`plugin_info`], with the config generation on this plugin's own entry (plinthd's
    /// live reloads count generations: 1 from start-up, one more with each applied reload).
    fn info(&self, plugin: &Plugin) -> PluginInfo {
        let mut info = plugin_info(plugin);
        if plugin.uri() == OWN_URI {
            info.exports.insert(
                "config_generation".to_string(),
                self.plugins.generation().to_string(),
            );
            info.exports.insert(
                "config_applied".to_string(),
                rfc3339(self.plugins.applied_at()),
            );
        }
        info
    }

    fn uuid(&self) -> Result<String, Error> {
        let mut cached = self.uuid.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(uuid) = cached.as_ref() {
            return Ok(uuid.clone());
        }
        let uuid = load_or_create_uuid(&self.root)?;
        *cached = Some(uuid.clone());
        Ok(uuid)
    }
}

/// Reads `<root>/uuid`, or writes a new random (version 4) one there.
fn load_or_create_uuid(root: &Path) -> Result<String, Error> {
    let path = root.join("uuid");
    match std::fs::read_to_string(&path) {
        Ok(text) if is_uuid(text.trim()) => return Ok(text.trim().to_string()),
        Ok(text) if !text.trim().is_empty() => {
            return Err(Error::internal(format!(
                "{} holds {:?}, not a UUID: delete the file to get a new one",
                path.display(),
                text.trim()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::internal(format!("reading {}: {e}", path.display()))),
    }
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::internal(format!("reading /dev/urandom: {e}")))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    std::fs::create_dir_all(root)
        .and_then(|()| {
            let temporary = root.join("uuid.tmp");
            std::fs::write(&temporary, &uuid)?;
            std::fs::rename(&temporary, &path)
        })
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
    Ok(uuid)
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[tonic::async_trait]
impl Introspection for Service {
    async fn plugins(
        &self,
        request: tonic::Request<PluginsRequest>,
    ) -> Result<tonic::Response<PluginsResponse>, tonic::Status> {
        let filters = FilterSet::parse_all(&request.get_ref().filters)
            .map_err(|e| Error::invalid(e.to_string()))?;
        let plugins = self
            .listed()
            .iter()
            .filter(|p| {
                filters.matches(|path| match path {
                    [field] if field == "type" => Some(p.plugin_type().to_string()),
                    [field] if field == "id" => Some(p.id().to_string()),
                    _ => None,
                })
            })
            .map(|p| self.info(p))
            .collect();
        Ok(tonic::Response::new(PluginsResponse { plugins }))
    }

    async fn server(
        &self,
        _: tonic::Request<()>,
    ) -> Result<tonic::Response<ServerResponse>, tonic::Status> {
        let uuid = self.uuid()?;
        let pidns = std::fs::metadata("/proc/self/ns/pid")
            .map(|m| m.ino())
            .unwrap_or(0);
        Ok(tonic::Response::new(ServerResponse {
            uuid,
            pid: u64::from(std::process::id()),
            pidns,
            deprecations: Vec::new(),
        }))
    }

    async fn plugin_info(
        &self,
        request: tonic::Request<PluginInfoRequest>,
    ) -> Result<tonic::Response<PluginInfoResponse>, tonic::Status> {
        let request = request.get_ref();
        let uri = format!("{}.{}", request.r#type, request.id);
        let plugin = self
            .listed()
            .into_iter()
            .find(|p| p.uri() == uri)
            .ok_or_else(|| Error::not_found(format!("plugin {uri} not found")))?;
        Ok(tonic::Response::new(PluginInfoResponse {
            plugin: Some(self.info(&plugin)),
            extra: None,
        }))
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, IntrospectionServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let service = Service {
        plugins: ctx.plugin_set(),
        root: ctx.root().to_path_buf(),
        uuid: Arc::default(),
    };
    Ok(Instance::new(Arc::new(service) as Arc<dyn GrpcService>))
}

register!(Registration::new(types::GRPC, "introspection", init));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("io.containerd.grpc.v1.introspection");
        let first = load_or_create_uuid(&root).unwrap();
        assert!(is_uuid(&first), "{first}");
        assert_eq!(&first[14..15], "4", "version 4");
        assert_eq!(load_or_create_uuid(&root).unwrap(), first);
        std::fs::write(root.join("uuid"), "garbage").unwrap();
        let error = load_or_create_uuid(&root).unwrap_err();
        assert!(
            error.message.contains("not a UUID: delete the file"),
            "{error}"
        );
    }

    #[test]
    fn platforms_parse() {
        let p = parse_platform("linux/arm64/v8");
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_str()),
            ("linux", "arm64", "v8")
        );
        let p = parse_platform("linux/amd64");
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_str()),
            ("linux", "amd64", "")
        );
    }
}
