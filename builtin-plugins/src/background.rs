//! Work off the serving threads runs at a lower CPU priority than they do.
//!
//! The async runtime's few worker threads answer every call: they decode requests, run the
//! point reads and write the answers. File and database work (an ingest's writes and hash,
//! a commit, a snapshot's copy, a list) runs on other threads — tokio's blocking pool, a
//! snapshotter's thread per operation — which can be dozens under load, all runnable at once.
//! At the kernel's default the scheduler shares the cores among all of them evenly, so a
//! cheap read waits behind the bulk work for a turn on a core: measured at 64 clients offered
//! 900 calls/s, `Content.Info` took 2–5 ms at the median where containerd answered in 0.9 ms
//! (Go's scheduler runs its goroutines on as many threads as cores, so its readers do not
//! queue behind a crowd of busy threads). Every thread that runs background work therefore
//! lowers its own priority once, by [`NICER_BY`] steps of `nice` below the serving threads;
//! the bulk work still gets every cycle the serving threads leave (BENCHMARKS.md, "Load").
//!
//! Lowering a priority needs no privilege. Where it is refused anyway (a seccomp filter),
//! the work runs at the serving threads' priority, as it would without this module.

use std::cell::Cell;
use std::sync::OnceLock;

/// How many `nice` steps background threads run below the serving threads: at 10, the
/// kernel weighs a serving thread about nine times as heavily as one background thread.
pub(crate) const NICER_BY: i32 = 10;

/// The highest (least favoured) `nice` value Linux has.
const LOWEST: i32 = 19;

/// The `nice` value of the serving threads, recorded by the first [`target`] call.
static SERVING: OnceLock<i32> = OnceLock::new();

thread_local! {
    /// Whether this thread has lowered its priority already.
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// The `nice` value background threads take. Call it on a serving thread (the async side of
/// a hand-off): the first call records that thread's value as the serving threads' own, so a
/// background thread started by another background thread does not go lower still.
pub(crate) fn target() -> i32 {
    let serving = *SERVING.get_or_init(|| rustix::process::getpriority_process(None).unwrap_or(0));
    (serving + NICER_BY).min(LOWEST)
}

/// Lowers the calling thread's priority to `nice` (from [`target`]) the first time it is
/// called on that thread; later calls cost a thread-local read. On Linux a priority belongs
/// to a thread, so this changes the calling thread only.
pub(crate) fn lower(nice: i32) {
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // Refused (a seccomp filter): the work runs at the serving priority, as before.
            let _ = rustix::process::setpriority_process(None, nice);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A background thread runs `NICER_BY` below the thread that handed it work, once, and a
    /// second call on the same thread changes nothing.
    #[test]
    fn a_background_thread_runs_below_the_serving_thread_once() {
        let serving = rustix::process::getpriority_process(None).unwrap();
        let nice = target();
        assert_eq!(nice, (serving + NICER_BY).min(LOWEST));
        let seen = std::thread::spawn(move || {
            lower(nice);
            let first = rustix::process::getpriority_process(None).unwrap();
            lower(nice);
            (first, rustix::process::getpriority_process(None).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(seen, (nice, nice));
        // The calling (serving) thread is untouched.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), serving);
    }
}
