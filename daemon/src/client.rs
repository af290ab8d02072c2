//! A gRPC client of plinthd (or containerd) over a unix socket, for plinthctl and the tests.

use std::path::PathBuf;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use plinth_builtin_plugins::namespaces::NAMESPACE_HEADER;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connection and the namespace its requests carry.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Client {
    /// Connects to the socket at `address` (a path or `unix://` URL).
    ///
    /// # Errors
    /// Nothing listens there.
    pub async fn connect(address: &str, namespace: &str) -> anyhow::Result<Client> {
        let socket = crate::paths::socket_path(address);
        let path = socket.clone();
        // The URI is required by the HTTP/2 layer but never used: the connector dials the socket.
        let channel = Endpoint::try_from("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| {
                format!(
                    "connecting to {} (is plinthd running there? set --address)",
                    socket.display()
                )
            })?;
        Ok(Client {
            channel,
            namespace: namespace.to_string(),
            socket,
        })
    }

    /// The channel, for building service clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// A request carrying the namespace header.
    ///
    /// # Errors
    /// The namespace is not valid header text.
    pub fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let value = self
            .namespace
            .parse()
            .with_context(|| format!("namespace {:?} is not valid header text", self.namespace))?;
        request.metadata_mut().insert(NAMESPACE_HEADER, value);
        Ok(request)
    }
}

/// Turns a gRPC status into an error that says what the server said, with its code, and —
/// for a status the transport made up (a broken connection, say) — the causes under it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let text = format!("{} ({:?})", status.message(), status.code());
    anyhow::anyhow!(with_causes(text, std::error::Error::source(&status)))
}

/// An error and its causes on one line, `error: cause: cause`, each said once: a cause whose
/// text its error already holds (tonic and hyper fold their source into their own message,
/// so `{:#}` would print an OS error twice) is left out. For plinthctl's last word.
pub fn error_text(error: &anyhow::Error) -> String {
    with_causes(error.to_string(), error.chain().nth(1))
}

/// `text`, then `: <cause>` for each cause from `cause` down that the text so far does not
/// already say.
fn with_causes(mut text: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(error) = cause {
        let said = error.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with one cause under it, as hyper reports a broken connection.
    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error reading a body from connection")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_transport_status_shows_its_causes_once() {
        let mut status =
            tonic::Status::unknown("h2 protocol error: error reading a body from connection");
        status.set_source(std::sync::Arc::new(Outer(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        ))));
        assert_eq!(
            status_error(status).to_string(),
            "h2 protocol error: error reading a body from connection (Unknown): \
             stream closed because of a broken pipe"
        );
    }

    /// An error that, like tonic's transport error, says its source in its own message.
    #[derive(Debug)]
    struct Folding(std::io::Error);

    impl std::fmt::Display for Folding {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transport error: {}", self.0)
        }
    }

    impl std::error::Error for Folding {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Regression: `plinthctl -a /nonexistent.sock plugins ls` said "No such file or directory
    /// (os error 2)" twice.
    #[test]
    fn error_text_says_each_cause_once() {
        let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases: Vec<(anyhow::Error, &str)> = vec![
            (
                anyhow::Error::new(Folding(not_found())).context("connecting to /x.sock"),
                "connecting to /x.sock: transport error: entity not found",
            ),
            (
                anyhow::Error::new(Outer(std::io::Error::other("broken pipe")))
                    .context("sending data"),
                "sending data: error reading a body from connection: broken pipe",
            ),
            (
                anyhow::Error::new(not_found()).context("reading standard input"),
                "reading standard input: entity not found",
            ),
            (
                anyhow::anyhow!("no such blob (NotFound)"),
                "no such blob (NotFound)",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error_text(&error), expected);
        }
    }

    #[test]
    fn a_server_status_is_its_message_and_code() {
        let status = tonic::Status::not_found("content sha256:ab… not found");
        assert_eq!(
            status_error(status).to_string(),
            "content sha256:ab… not found (NotFound)"
        );
    }
}
