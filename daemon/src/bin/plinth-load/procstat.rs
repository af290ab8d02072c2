//! The daemon's resources, read from /proc: resident memory, open file descriptors, threads.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One reading of the daemon's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
    /// Open file descriptors.
    pub(crate) fds: u64,
    /// Threads.
    pub(crate) threads: u64,
}

impl Sample {
    /// The larger of each figure.
    pub(crate) fn max(self, other: Sample) -> Sample {
        Sample {
            rss_kib: self.rss_kib.max(other.rss_kib),
            fds: self.fds.max(other.fds),
            threads: self.threads.max(other.threads),
        }
    }
}

/// Reads the resources of process `pid`.
///
/// # Errors
/// The process is gone or its /proc entries cannot be read (another user's daemon: run as
/// that user or root).
pub(crate) fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("reading {status_path} (is the daemon still running?)"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("{status_path} has no {name} line"))?;
        line.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{status_path}: {name} {line:?} is not a number"))
    };
    let fd_path = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(&fd_path)
        .with_context(|| format!("listing {fd_path} (run as the daemon's user or root)"))?
        .count();
    Ok(Sample {
        rss_kib: field("VmRSS:")?,
        fds: u64::try_from(fds).unwrap_or(u64::MAX),
        threads: field("Threads:")?,
    })
}

/// The CPU time process `pid` has used so far, user and system, all its threads (those that
/// exited included), at the kernel's 10 ms resolution.
///
/// # Errors
/// The process is gone or its stat cannot be read.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat, in USER_HZ ticks (100 a
    // second on every Linux ABI); the command name (field 2) may hold spaces and ends at the
    // last ')'.
    const TICKS_PER_SECOND: u64 = 100;
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (is the daemon still running?)"))?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    // After the name: field 3 (state) is the first, so utime is the 12th and stime the 13th.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut tick_field = || -> anyhow::Result<u64> {
        fields
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: no CPU times"))
    };
    let ticks = tick_field()? + tick_field()?;
    Ok(std::time::Duration::from_millis(
        ticks * 1000 / TICKS_PER_SECOND,
    ))
}

/// The pid of the process listening on the unix socket at `path` (SO_PEERCRED).
///
/// # Errors
/// Nothing listens there.
pub(crate) async fn peer_pid(path: &std::path::Path) -> anyhow::Result<u32> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {} (is the daemon running?)", path.display()))?;
    let credentials = stream
        .peer_cred()
        .with_context(|| format!("reading the peer of {}", path.display()))?;
    let pid = credentials
        .pid()
        .with_context(|| format!("the peer of {} has no pid; pass --pid", path.display()))?;
    u32::try_from(pid).with_context(|| format!("peer pid {pid} of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.fds >= 3 && me.threads >= 1, "{me:?}");
        // Ten more open files are ten more fds (five, allowing for a test running beside
        // this one closing a few).
        let files: Vec<_> = (0..10)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        let more = sample(std::process::id()).unwrap();
        assert!(more.fds >= me.fds + 5, "{me:?} then {more:?}");
        drop(files);
        assert!(sample(u32::MAX).is_err());
    }

    #[test]
    fn counts_this_process_s_cpu_time() {
        let before = cpu_time(std::process::id()).unwrap();
        // Spin for 200 ms of wall time: 50 ms of CPU at least, even on a busy machine.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_time(std::process::id()).unwrap();
        assert!(
            after >= before + std::time::Duration::from_millis(50),
            "{before:?} then {after:?}"
        );
        assert!(cpu_time(u32::MAX).is_err());
    }

    #[tokio::test]
    async fn finds_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert_eq!(peer_pid(&path).await.unwrap(), std::process::id());
        assert!(peer_pid(&dir.path().join("none.sock")).await.is_err());
    }
}
