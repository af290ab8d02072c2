//! Default locations: system paths as root, the user's XDG directories otherwise.

use std::path::PathBuf;

use plinth_core::config::Config;

/// Where plinthd keeps things when no config says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Persistent data.
    pub root: PathBuf,
    /// Run-time state.
    pub state: PathBuf,
    /// The gRPC socket.
    pub address: PathBuf,
    /// The config file read when `--config` is not given (used only if it exists).
    pub config_file: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // The owner of /proc/self is the effective user; no unsafe geteuid() needed.
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The effective uid of this process.
pub fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

impl Defaults {
    /// The defaults for this user.
    pub fn for_current_user() -> Defaults {
        if is_root() {
            return Defaults {
                root: PathBuf::from("/var/lib/plinth"),
                state: PathBuf::from("/run/plinth"),
                address: PathBuf::from("/run/plinth/plinthd.sock"),
                config_file: PathBuf::from("/etc/plinth/config.toml"),
            };
        }
        let home = env_path("HOME").unwrap_or_else(|| PathBuf::from("/"));
        let data = env_path("XDG_DATA_HOME").unwrap_or_else(|| home.join(".local/share"));
        let config = env_path("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
        let runtime = env_path("XDG_RUNTIME_DIR")
            .unwrap_or_else(|| std::env::temp_dir().join(format!("plinth-{}", uid())));
        let state = runtime.join("plinth");
        Defaults {
            root: data.join("plinth"),
            address: state.join("plinthd.sock"),
            state,
            config_file: config.join("plinth/config.toml"),
        }
    }

    /// The embedded default config for these paths.
    pub fn config(&self) -> Config {
        let mut config = Config {
            root: self.root.clone(),
            state: self.state.clone(),
            ..Config::default()
        };
        config.grpc.address = self.address.display().to_string();
        config
    }
}

/// `unix:///path` or `/path` → `/path`.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}
