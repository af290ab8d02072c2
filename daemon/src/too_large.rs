//! A request over the configured message size (`[grpc] max_recv_message_size`) is answered
//! with ResourceExhausted, as grpc-go (and so containerd) answers it, where tonic says
//! OutOfRange — which containerd's clients show as "unknown". Requests refused before their
//! handler (unary calls) get a trailers-only response, whose status [`layer`] rewrites;
//! streams refuse their messages through the service handlers, which map the same error
//! themselves.

use tonic::codegen::http;

/// The layer, in front of every service.
pub fn layer() -> tower::util::MapResponseLayer<fn(Response) -> Response> {
    tower::util::MapResponseLayer::new(resource_exhausted_when_too_large)
}

type Response = http::Response<tonic::body::Body>;

/// `response` with ResourceExhausted where tonic refused a message over the size limit
/// (OutOfRange with its "message length too large" text, percent-encoded in the header).
fn resource_exhausted_when_too_large(mut response: Response) -> Response {
    let headers = response.headers();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if out_of_range && too_large {
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response
}
