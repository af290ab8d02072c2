//! A tower layer in front of every service: a request whose `containerd-namespace` header is
//! present but not a valid namespace name is answered with InvalidArgument before any service
//! sees it.

use std::task::{Context, Poll};

use plinth_builtin_plugins::namespaces::{NAMESPACE_HEADER, validate_identifier};
use tonic::codegen::http;

/// Wraps a service with the namespace check.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceCheckLayer;

impl<S> tower::Layer<S> for NamespaceCheckLayer {
    type Service = NamespaceCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NamespaceCheck { inner }
    }
}

/// The service [`NamespaceCheckLayer`] makes.
#[derive(Debug, Clone)]
pub struct NamespaceCheck<S> {
    inner: S,
}

/// Why a header is refused, if it is.
fn refusal(headers: &http::HeaderMap) -> Option<tonic::Status> {
    let value = headers.get(NAMESPACE_HEADER)?;
    let Ok(name) = value.to_str() else {
        return Some(tonic::Status::invalid_argument(format!(
            "{NAMESPACE_HEADER} header is not valid text"
        )));
    };
    validate_identifier("namespace", name)
        .err()
        .map(tonic::Status::from)
}

impl<S, B> tower::Service<http::Request<B>> for NamespaceCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match refusal(request.headers()) {
            None => Box::pin(self.inner.call(request)),
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
