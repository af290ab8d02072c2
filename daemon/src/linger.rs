//! Served connections that close gently (a "lingering close").
//!
//! When the server is done with a connection it has written to — the client left, or a
//! graceful stop finished the connection's last call — the socket is not simply closed. Its
//! writing half is shut and whatever the client still sends is read and dropped until the
//! client closes its end, for at most the linger time. Only then is the socket closed. A
//! connection the server never wrote to has no reply to lose and is closed at once, so a
//! client that connects and says nothing (a liveness probe, say) never holds up a stop.
//!
//! Why: on a unix socket, a write to a peer that has closed fails at once with `EPIPE`, even
//! while the writer's receive buffer still holds everything the peer sent before closing. An
//! HTTP/2 client writes all the time while it reads a reply (flow-control updates, ping
//! acknowledgements), and hyper's client fails every stream of a connection whose write fails
//! — so after a plain close, the end of a reply the client had not read yet is lost ("stream
//! closed because of a broken pipe"). A graceful stop is exactly when the server closes first.
//!
//! [`Connections::closed`] waits for every connection, lingering ones included, so the daemon
//! exits only once its clients have their replies.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt as _};

/// The connections of one server socket, open or lingering.
#[derive(Debug)]
pub struct Connections {
    /// Every connection holds a receiver until its socket is closed.
    open: Arc<watch::Sender<()>>,
    linger: Duration,
}

impl Connections {
    /// Connections that, once the server is done with them, wait at most `linger` for the
    /// client to close its end.
    pub fn new(linger: Duration) -> Connections {
        Connections {
            open: Arc::new(watch::Sender::new(())),
            linger,
        }
    }

    /// The connections accepted on `listener`, for `serve_with_incoming_shutdown`.
    pub fn incoming(
        &self,
        listener: UnixListener,
    ) -> impl Stream<Item = io::Result<Gentle>> + Send + 'static {
        let open = self.open.clone();
        let linger = self.linger;
        UnixListenerStream::new(listener)
            .map(move |accepted| accepted.map(|stream| Gentle::new(stream, &open, linger)))
    }

    /// Completes once every connection accepted so far is closed, lingering included.
    pub async fn closed(&self) {
        self.open.closed().await;
    }
}

/// A served unix-socket connection that lingers when dropped (see the [module](self)).
#[derive(Debug)]
pub struct Gentle {
    /// `None` only once dropped.
    stream: Option<UnixStream>,
    open: Option<watch::Receiver<()>>,
    linger: Duration,
    /// Whether the server wrote anything: only then can a reply be lost by closing.
    wrote: bool,
}

impl Gentle {
    fn new(stream: UnixStream, open: &watch::Sender<()>, linger: Duration) -> Gentle {
        Gentle {
            stream: Some(stream),
            open: Some(open.subscribe()),
            linger,
            wrote: false,
        }
    }

    fn stream(self: Pin<&mut Self>) -> io::Result<Pin<&mut UnixStream>> {
        match self.get_mut().stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Notes a write that put bytes on the socket.
    fn written(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
        }
    }
}

impl Drop for Gentle {
    fn drop(&mut self) {
        if !self.wrote {
            return;
        }
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let open = self.open.take();
        let linger = self.linger;
        runtime.spawn(async move {
            close_gently(stream, linger).await;
            drop(open);
        });
    }
}

/// Shuts the writing half, then reads and drops what the client sends until it closes its
/// end, an error, or `linger` has passed.
async fn close_gently(mut stream: UnixStream, linger: Duration) {
    // Usually done already: hyper shuts the writing half when it finishes a connection.
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(linger, async {
        while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl AsyncRead for Gentle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Gentle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = match self.as_mut().stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.written(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = match self.as_mut().stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.written(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl tonic::transport::server::Connected for Gentle {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.stream {
            Some(stream) => stream.connect_info(),
            None => tonic::transport::server::UdsConnectInfo {
                peer_addr: None,
                peer_cred: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLY: usize = 32 << 10;

    /// A served connection that wrote a reply and was dropped, and its client.
    async fn dropped_after_reply(connections: &Connections) -> UnixStream {
        let (served, client) = UnixStream::pair().unwrap();
        let mut served = Gentle::new(served, &connections.open, connections.linger);
        served.write_all(&[7u8; REPLY]).await.unwrap();
        drop(served);
        client
    }

    /// Whether every connection is closed within `within`.
    async fn closed_within(connections: &Connections, within: Duration) -> bool {
        tokio::time::timeout(within, connections.closed())
            .await
            .is_ok()
    }

    const SOON: Duration = Duration::from_millis(100);
    const EVENTUALLY: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_client_can_still_write_and_reads_the_whole_reply_after_the_close() {
        let connections = Connections::new(Duration::from_secs(10));
        let mut client = dropped_after_reply(&connections).await;
        // What an HTTP/2 client does while it reads: a flow-control update. Against a plain
        // close this fails with EPIPE, and hyper's client then fails the stream.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .write_all(b"window update")
            .await
            .expect("a write after the server is done with the connection");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, vec![7u8; REPLY]);
        assert!(
            !closed_within(&connections, SOON).await,
            "the socket stays open while the client has not closed its end"
        );
        drop(client);
        assert!(
            closed_within(&connections, EVENTUALLY).await,
            "closed once the client closed its end"
        );
    }

    // On the runtime's paused clock, which moves only when every task waits: the 100 ms and
    // the 400 ms are compared as timer deadlines, so no scheduling delay can cross them.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_closes_is_let_go_after_the_linger_time() {
        let connections = Connections::new(Duration::from_millis(400));
        let _client = dropped_after_reply(&connections).await;
        assert!(!closed_within(&connections, SOON).await, "still lingering");
        assert!(
            closed_within(&connections, EVENTUALLY).await,
            "closed after the linger time"
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_never_wrote_to_closes_at_once() {
        let connections = Connections::new(Duration::from_secs(10));
        let (served, mut client) = UnixStream::pair().unwrap();
        drop(Gentle::new(served, &connections.open, connections.linger));
        assert!(
            closed_within(&connections, SOON).await,
            "nothing to linger for"
        );
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn no_connection_means_closed_at_once() {
        let connections = Connections::new(Duration::from_secs(10));
        assert!(
            closed_within(&connections, SOON).await,
            "nothing to wait for"
        );
    }
}
