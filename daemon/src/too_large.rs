//! A tower layer in front of every service: a request over the configured message size
//! (`[grpc] max_recv_message_size`) is answered with ResourceExhausted, as grpc-go (and so
//! containerd) answers it, where tonic says OutOfRange — which containerd's clients show as
//! "unknown". Requests refused before their handler (unary calls) get a trailers-only
//! response, whose status this rewrites; streams refuse their messages through the service
//! handlers, which map the same error themselves.

use std::task::{Context, Poll};

use tonic::codegen::http;

/// Wraps a service with the rewrite.
#[derive(Debug, Clone, Copy, Default)]
pub struct TooLargeLayer;

impl<S> tower::Layer<S> for TooLargeLayer {
    type Service = TooLarge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TooLarge { inner }
    }
}

/// The service [`TooLargeLayer`] makes.
#[derive(Debug, Clone)]
pub struct TooLarge<S> {
    inner: S,
}

/// Whether a response says a message was over the size limit (tonic's OutOfRange with its
/// "message length too large" text, percent-encoded in the header).
fn over_limit(headers: &http::HeaderMap) -> bool {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    out_of_range
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            })
}

impl<S, B> tower::Service<http::Request<B>> for TooLarge<S>
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
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if over_limit(response.headers()) {
                response.headers_mut().insert(
                    "grpc-status",
                    http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
                );
            }
            Ok(response)
        })
    }
}
