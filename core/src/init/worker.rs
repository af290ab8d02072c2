//! The thread that runs init functions, reused between plugins.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use super::context::InitContext;
use super::error::InitError;
use super::instance::{Instance, Meta};
use super::{Panicked, TimedOut};

/// The thread that runs init functions, one after another. A thread is started only when
/// none is idle: at first, and after an init that timed out (its thread is left to finish, or
/// hang, on its own; what it returns is dropped). Reusing one thread spares a thread start per
/// plugin, a good part of a small daemon's start-up.
#[derive(Default)]
pub(super) struct InitWorker {
    idle: Option<std::sync::mpsc::Sender<InitJob>>,
}

type InitJob = Box<dyn FnOnce() + Send>;

impl InitWorker {
    fn jobs(&mut self) -> std::io::Result<std::sync::mpsc::Sender<InitJob>> {
        if let Some(jobs) = self.idle.take() {
            return Ok(jobs);
        }
        let (jobs, queue) = std::sync::mpsc::channel::<InitJob>();
        std::thread::Builder::new()
            .name("plugin init".to_string())
            .spawn(move || {
                // Ends when the sender is dropped: at the end of init, or after a time-out.
                for job in queue {
                    job();
                }
            })?;
        Ok(jobs)
    }

    /// Runs one init, logging while it is slow and giving up at its time-out.
    pub(super) fn run(
        &mut self,
        mut ctx: InitContext,
        watchdog: Duration,
        timeout: Option<Duration>,
    ) -> (Result<Instance, InitError>, Meta) {
        let uri = ctx.uri.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        let job: InitJob = Box::new(move || {
            // The thread is shared; the span says whose init is running (e.g. in a panic's log).
            let _span = tracing::info_span!("init", uri = %ctx.uri).entered();
            let init = *ctx.registration.init_fn();
            let result = catch_unwind(AssertUnwindSafe(|| init.call(&mut ctx)))
                .unwrap_or_else(|panic| Err(InitError::from(Panicked(panic_text(&panic)))));
            // The receiver is gone only when the init timed out; its result is dropped.
            let _ = sender.send((result, std::mem::take(&mut ctx.meta)));
        });
        let jobs = match self.jobs() {
            Ok(jobs) => jobs,
            Err(error) => return (Err(InitError::from(error)), Meta::default()),
        };
        if jobs.send(job).is_err() {
            return (
                Err(InitError::msg("the init thread is gone")),
                Meta::default(),
            );
        }
        let started = Instant::now();
        loop {
            let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
            let wait = remaining
                .map_or(watchdog, |r| r.min(watchdog))
                .max(Duration::from_millis(1));
            match receiver.recv_timeout(wait) {
                Ok(done) => {
                    self.idle = Some(jobs);
                    return done;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return (
                        Err(InitError::msg("init thread ended without a result")),
                        Meta::default(),
                    );
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let elapsed = started.elapsed();
                    if let Some(limit) = timeout.filter(|t| elapsed >= *t) {
                        tracing::error!(uri = %uri, ?limit, "plugin init timed out");
                        return (Err(InitError::from(TimedOut(limit))), Meta::default());
                    }
                    tracing::warn!(uri = %uri, ?elapsed, "plugin still initialising");
                }
            }
        }
    }
}

pub(super) fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".to_string())
}
