//! The interface of `io.containerd.grpc.v1` plugins: each adds its tonic service to the
//! daemon's router.

/// What containerd's clients look for in a plugin's `init_err` to show it as skipped.
pub const SKIP_MARKER: &str = "skip plugin";

/// Message size limits from the daemon's `[grpc]` config, applied to every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest request accepted, in bytes.
    pub max_recv: usize,
    /// Largest response sent, in bytes.
    pub max_send: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        MessageLimits {
            max_recv: 16 << 20,
            max_send: 16 << 20,
        }
    }
}

/// A gRPC service plugin's instance. The daemon collects every ok plugin of type
/// [`plinth_core::types::GRPC`] and lets each add its service.
pub trait GrpcService: Send + Sync {
    /// Adds the service to the router, with the given message limits.
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits);
}

/// Applies [`MessageLimits`] to a generated server and adds it: one line per service.
#[macro_export]
#[doc(hidden)]
macro_rules! add_limited {
    ($routes:expr, $server:expr, $limits:expr) => {
        $routes.add_service(
            $server
                .max_decoding_message_size($limits.max_recv)
                .max_encoding_message_size($limits.max_send),
        )
    };
}
