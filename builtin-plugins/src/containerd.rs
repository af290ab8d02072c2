//! containerd's plugins that plinthd does not provide, so that a config written for
//! containerd hears "a containerd plugin plinthd does not provide" for them, not "unknown
//! plugin" with a far-fetched "did you mean".

/// What the config checks say of a plugin in [`CONTAINERD_ONLY_PLUGINS`].
pub const NOT_PROVIDED: &str = "a containerd plugin plinthd does not provide";

/// The URIs of the plugins containerd 1.6, 1.7 and 2.x register in the daemon (read from
/// their sources; shim-side plugins left out) that no build of plinthd provides. Sorted.
/// A URI plinthd provides or may be built with ([`FEATURE_PLUGINS`](crate::FEATURE_PLUGINS))
/// does not belong here.
pub const CONTAINERD_ONLY_PLUGINS: &[&str] = &[
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.differ.v1.blockcim",
    "io.containerd.differ.v1.cimfs",
    "io.containerd.differ.v1.erofs",
    "io.containerd.differ.v1.windows",
    "io.containerd.differ.v1.windows-lcow",
    "io.containerd.grpc.v1.cri",
    "io.containerd.grpc.v1.healthcheck",
    "io.containerd.grpc.v1.mounts",
    "io.containerd.grpc.v1.sandbox-controllers",
    "io.containerd.grpc.v1.sandboxes",
    "io.containerd.grpc.v1.streaming",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.grpc.v1.transfer",
    "io.containerd.http.v1.pprof",
    "io.containerd.image-verifier.v1.bindir",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.tracing",
    "io.containerd.metadata.v1.bolt",
    "io.containerd.metrics.v1.grpc-otel",
    "io.containerd.metrics.v1.grpc-prometheus",
    "io.containerd.monitor.container.v1.restart",
    "io.containerd.monitor.task.v1.cgroups",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.mount-handler.v1.erofs",
    "io.containerd.mount-manager.v1.bolt",
    "io.containerd.nri.v1.nri",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.shim",
    "io.containerd.runtime.v2.task",
    "io.containerd.sandbox.controller.v1.local",
    "io.containerd.sandbox.controller.v1.shim",
    "io.containerd.sandbox.store.v1.local",
    "io.containerd.server.v1.debug",
    "io.containerd.server.v1.grpc",
    "io.containerd.server.v1.grpc-tcp",
    "io.containerd.server.v1.metrics",
    "io.containerd.server.v1.ttrpc",
    "io.containerd.service.v1.containers-service",
    "io.containerd.service.v1.content-service",
    "io.containerd.service.v1.diff-service",
    "io.containerd.service.v1.images-service",
    "io.containerd.service.v1.introspection-service",
    "io.containerd.service.v1.leases-service",
    "io.containerd.service.v1.namespaces-service",
    "io.containerd.service.v1.snapshots-service",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.shim.v1.manager",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.blockcim",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.cimfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.snapshotter.v1.windows",
    "io.containerd.snapshotter.v1.windows-lcow",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.streaming.v1.manager",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.transfer.v1.local",
    "io.containerd.ttrpc.v1.otelttrpc",
    "io.containerd.warning.v1.deprecations",
];

/// [`CONTAINERD_ONLY_PLUGINS`], each with [`NOT_PROVIDED`], as
/// [`LoadedConfig::with_not_provided`](plinth_core::config::LoadedConfig::with_not_provided)
/// takes them.
pub fn not_provided() -> Vec<(String, String)> {
    CONTAINERD_ONLY_PLUGINS
        .iter()
        .map(|uri| (uri.to_string(), NOT_PROVIDED.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_unique_and_holds_nothing_plinthd_provides() {
        assert!(
            CONTAINERD_ONLY_PLUGINS.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        for uri in CONTAINERD_ONLY_PLUGINS {
            assert!(uri.starts_with("io.containerd."), "{uri}");
            assert!(
                !crate::FEATURE_PLUGINS.iter().any(|(_, u)| u == uri),
                "{uri} is a plinthd plugin: remove it from CONTAINERD_ONLY_PLUGINS"
            );
        }
        for registration in plinth_core::registry::link_time_registrations() {
            let uri = registration.uri();
            assert!(
                !CONTAINERD_ONLY_PLUGINS.contains(&uri.as_str()),
                "{uri} is registered here: remove it from CONTAINERD_ONLY_PLUGINS"
            );
        }
    }
}
