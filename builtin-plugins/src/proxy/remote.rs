//! The connection to a proxy plugin's remote process: one lazily connecting tonic channel per
//! socket address, shared by every proxy plugin that points there. After a failed dial, dials
//! back off exponentially (100 ms doubling to 2 s) and a monitor task probes the remote until
//! it answers again, so a proxy whose remote was down recovers by itself, with or without
//! traffic. [`Health`] keeps whether the remote answers, why not, and the last error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use plinth_api::containerd::services::content::v1::StatusRequest;
use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_core::Category;
use tonic::transport::{Channel, Endpoint, Uri};

use super::Check;
use crate::error::Error;

/// The first wait after a failed dial; it doubles on each failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two dials of a remote that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a probe (at init, and by the monitor) waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest message sent or accepted (containerd's default).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// The ref the probe asks the content service about; any answer will do.
const PROBE_REF: &str = "plinth-proxy-probe";

/// Whether a remote answers, and what went wrong last.
#[derive(Debug)]
pub struct Health {
    address: PathBuf,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Why the remote cannot be used now; `None` when it last answered.
    down: Option<String>,
    /// The last connection error, kept after recovery.
    last_error: Option<String>,
    /// The current wait between dials.
    backoff: Duration,
    /// No dial before this instant.
    retry_at: Option<Instant>,
    /// Whether the last dial reached a listener.
    dialed: bool,
    /// Why the last dial failed, if it did.
    dial_error: Option<String>,
    /// Whether the remote gave a gRPC answer since the last dial.
    answered_since_dial: bool,
    /// Whether a monitor task is running.
    monitoring: bool,
}

impl Health {
    fn new(address: &Path) -> Health {
        Health {
            address: address.to_path_buf(),
            state: Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The socket path of the remote.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// Why the remote cannot be used now, or `None` when it last answered.
    pub fn down(&self) -> Option<String> {
        self.lock().down.clone()
    }

    /// The last connection error seen, even if the remote has recovered since.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// The remote answered (with any gRPC status).
    fn answered(&self) {
        let mut state = self.lock();
        state.down = None;
        state.backoff = Duration::ZERO;
        state.retry_at = None;
        state.answered_since_dial = true;
    }

    /// The remote failed; returns whether a monitor must be started.
    fn failed(&self, reason: String) -> bool {
        let mut state = self.lock();
        state.down = Some(reason.clone());
        state.last_error = Some(reason);
        state.backoff = if state.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (state.backoff * 2).min(MAX_BACKOFF)
        };
        state.retry_at = Some(Instant::now() + state.backoff);
        !std::mem::replace(&mut state.monitoring, true)
    }

    /// Refuses a dial inside the back-off window, with the reason.
    fn gate(&self) -> Result<(), String> {
        let state = self.lock();
        match state.retry_at {
            Some(at) if at > Instant::now() => Err(format!(
                "{}; next attempt in {} ms",
                state.down.as_deref().unwrap_or("remote is down"),
                at.saturating_duration_since(Instant::now()).as_millis()
            )),
            _ => Ok(()),
        }
    }

    /// Records a dial's outcome (the call that sees a failure records the failure).
    fn dialed(&self, outcome: Result<(), String>) {
        let mut state = self.lock();
        state.dialed = outcome.is_ok();
        state.dial_error = outcome.err();
        state.answered_since_dial = false;
    }

    /// How long the monitor waits before its next probe.
    fn until_retry(&self) -> Duration {
        self.lock().retry_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }

    /// Whether the monitor may stop: the remote answers. Clears the monitoring flag if so.
    fn monitor_may_stop(&self) -> bool {
        let mut state = self.lock();
        if state.down.is_none() {
            state.monitoring = false;
            true
        } else {
            false
        }
    }

    /// What a transport failure means, given what the dials saw.
    fn describe_transport_failure(&self, status: &tonic::Status) -> String {
        let state = self.lock();
        if !state.dialed {
            if let Some(reason) = &state.dial_error {
                return reason.clone();
            }
        }
        let chain = error_chain(status);
        if state.answered_since_dial {
            format!("connection to {} lost: {chain}", self.address.display())
        } else {
            format!(
                "the listener at {} does not answer as a gRPC server (is it a containerd API socket?): {chain}",
                self.address.display()
            )
        }
    }
}

/// A status and its sources, as one line without repeats.
fn error_chain(status: &tonic::Status) -> String {
    let mut parts = vec![status.message().to_string()];
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = error.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.join(": ")
}

/// Whether a status was made on this side of the connection (dial, HTTP/2, I/O) rather than
/// sent by the remote's gRPC server.
fn is_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        || status.message().starts_with("h2 protocol error")
        || status.message().starts_with("transport error")
        || (status.code() == tonic::Code::Unknown && status.message().contains("connection"))
}

/// containerd's category of a gRPC code.
fn category_of(code: tonic::Code) -> Category {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Category::InvalidArgument,
        tonic::Code::NotFound => Category::NotFound,
        tonic::Code::AlreadyExists => Category::AlreadyExists,
        tonic::Code::FailedPrecondition | tonic::Code::Aborted => Category::FailedPrecondition,
        tonic::Code::Unavailable => Category::Unavailable,
        tonic::Code::DataLoss => Category::DataLoss,
        tonic::Code::ResourceExhausted => Category::ResourceExhausted,
        tonic::Code::Unimplemented => Category::Unimplemented,
        _ => Category::Internal,
    }
}

/// The description of a failed dial.
fn dial_error(path: &Path, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("no listener at {} ({error})", path.display())
        }
        _ => format!("cannot connect to {}: {error}", path.display()),
    }
}

/// One remote process: its socket, the shared channel, its health.
#[derive(Debug)]
pub struct Remote {
    channel: Channel,
    health: Arc<Health>,
    runtime: tokio::runtime::Handle,
    this: Weak<Remote>,
}

/// Every live remote of the process, by socket path: proxies to the same address share one.
static POOL: Mutex<Vec<(PathBuf, Weak<Remote>)>> = Mutex::new(Vec::new());

impl Remote {
    /// The remote at `address` (a socket path), shared with every other proxy of this
    /// process that points there. Nothing is dialled yet.
    ///
    /// # Errors
    /// Internal when called outside a tokio runtime.
    pub fn shared(address: &Path) -> Result<Arc<Remote>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::internal("proxy plugins need a tokio runtime: create them inside one")
        })?;
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        pool.retain(|(_, remote)| remote.strong_count() > 0);
        if let Some(remote) = pool
            .iter()
            .find(|(path, _)| path == address)
            .and_then(|(_, remote)| remote.upgrade())
        {
            return Ok(remote);
        }
        let health = Arc::new(Health::new(address));
        let connector_health = health.clone();
        let path = address.to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let health = connector_health.clone();
            let path = path.clone();
            async move {
                if let Err(reason) = health.gate() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        reason,
                    ));
                }
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(stream) => {
                        health.dialed(Ok(()));
                        Ok(TokioIo::new(stream))
                    }
                    Err(error) => {
                        let reason = dial_error(&path, &error);
                        // The call that sees this failure records it and starts the monitor.
                        health.dialed(Err(reason.clone()));
                        Err(std::io::Error::new(error.kind(), reason))
                    }
                }
            }
        });
        // The URI is required by the HTTP/2 layer but never used: the connector dials.
        let channel = Endpoint::from_static("http://plinth-proxy")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector_lazy(connector);
        let remote = Arc::new_cyclic(|this| Remote {
            channel,
            health,
            runtime,
            this: this.clone(),
        });
        pool.push((address.to_path_buf(), Arc::downgrade(&remote)));
        Ok(remote)
    }

    /// The shared channel.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The remote's health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The error a failed call becomes: the remote's own errors keep their category and
    /// message; transport failures become Unavailable, saying what happened, and start the
    /// monitor.
    pub fn error(&self, what: &str, status: tonic::Status) -> Error {
        if is_transport(&status) {
            let reason = self.health.describe_transport_failure(&status);
            self.transport_failed(reason.clone());
            Error::unavailable(format!("{what}: {reason}"))
        } else {
            self.health.answered();
            Error::new(category_of(status.code()), status.message())
        }
    }

    /// A call succeeded.
    pub fn ok<T>(&self, value: T) -> T {
        self.health.answered();
        value
    }

    /// Records a transport failure and makes sure a monitor runs.
    pub fn transport_failed(&self, reason: String) {
        if self.health.failed(reason) {
            let this = self.this.clone();
            self.runtime.spawn(monitor(this));
        }
    }

    /// Asks the remote anything (the content service's status of an unknown ref) and
    /// records the outcome: any gRPC answer means it is up.
    ///
    /// # Errors
    /// Why the remote did not answer.
    pub async fn probe(&self) -> Result<(), String> {
        let mut client = ContentClient::new(self.channel());
        let call = client.status(StatusRequest {
            r#ref: PROBE_REF.to_string(),
        });
        match self.check_call("probe", CONTENT_SERVICE, call).await {
            Check::Down(reason) => Err(reason),
            Check::Serves | Check::NotServed(_) => Ok(()),
        }
    }

    /// Awaits one probe call (at most [`PROBE_TIMEOUT`]) and records what its outcome says
    /// about the remote: an answer means it is up; Unimplemented means it speaks gRPC but
    /// not `service` (a wrong address); a transport failure or no answer means it is down.
    /// `what` prefixes the error that a failure becomes.
    pub(crate) async fn check_call<T>(
        &self,
        what: &str,
        service: &str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Check {
        match tokio::time::timeout(PROBE_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                self.health.answered();
                Check::Serves
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                self.health.answered();
                Check::NotServed(format!(
                    "the process at {} answers gRPC but does not serve {service}: {}",
                    self.health.address().display(),
                    status.message()
                ))
            }
            Ok(Err(status)) => {
                let error = self.error(what, status);
                match self.health.down() {
                    Some(_) => Check::Down(error.message),
                    None => Check::Serves,
                }
            }
            Err(_) => {
                let reason = format!(
                    "no answer from {} within {PROBE_TIMEOUT:?}",
                    self.health.address().display()
                );
                self.transport_failed(reason.clone());
                Check::Down(reason)
            }
        }
    }
}

/// The content API's service name, for messages.
pub(crate) const CONTENT_SERVICE: &str = "containerd.services.content.v1.Content";

/// The snapshots API's service name, for messages.
pub(crate) const SNAPSHOTS_SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";

/// Probes a remote that is down, after each back-off period, until it answers or every
/// proxy using it is gone.
async fn monitor(remote: Weak<Remote>) {
    loop {
        let wait = match remote.upgrade() {
            Some(remote) => remote.health.until_retry(),
            None => return,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        match remote.probe().await {
            Ok(()) => {
                tracing::info!(address = %remote.health.address().display(), "proxy remote answers again");
            }
            Err(reason) => {
                tracing::debug!(address = %remote.health.address().display(), %reason, "proxy remote still down");
            }
        }
        if remote.health.monitor_may_stop() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets_when_answered() {
        let health = Health::new(Path::new("/nowhere.sock"));
        // (failures so far, expected back-off)
        let table = [
            (1, FIRST_BACKOFF),
            (2, FIRST_BACKOFF * 2),
            (3, FIRST_BACKOFF * 4),
            (6, MAX_BACKOFF),
            (10, MAX_BACKOFF),
        ];
        let mut failures = 0;
        for (wanted_failures, expected) in table {
            while failures < wanted_failures {
                health.failed(format!("failure {failures}"));
                failures += 1;
            }
            assert_eq!(health.lock().backoff, expected, "after {failures} failures");
            assert!(health.gate().is_err(), "dials wait inside the window");
        }
        assert_eq!(health.down().as_deref(), Some("failure 9"));
        health.answered();
        assert_eq!(health.down(), None);
        assert_eq!(health.last_error().as_deref(), Some("failure 9"), "kept");
        assert!(health.gate().is_ok());
        assert!(health.monitor_may_stop());
    }

    #[test]
    fn categories_follow_grpc_codes() {
        let table = [
            (tonic::Code::InvalidArgument, Category::InvalidArgument),
            (tonic::Code::OutOfRange, Category::InvalidArgument),
            (tonic::Code::NotFound, Category::NotFound),
            (tonic::Code::AlreadyExists, Category::AlreadyExists),
            (
                tonic::Code::FailedPrecondition,
                Category::FailedPrecondition,
            ),
            (tonic::Code::Unavailable, Category::Unavailable),
            (tonic::Code::Unimplemented, Category::Unimplemented),
            (tonic::Code::Internal, Category::Internal),
        ];
        for (code, category) in table {
            assert_eq!(category_of(code), category, "{code:?}");
        }
    }
}
