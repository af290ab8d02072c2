//! Harness for end-to-end tests: run `plinthd` as a real process on temporary directories and
//! a temporary socket, wait until it serves, talk to it with the stock `ctr` or `plinthctl`,
//! and stop it with SIGTERM.
//!
//! The binaries are the ones cargo built for this test run (`target/<profile>/plinthd`):
//! `cargo test --workspace` builds them. `ctr` comes from Debian's `containerd` package; tests
//! that need it fail (never skip) when it is missing.

pub mod load;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a daemon may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary built by cargo for this test run, next to the test executable.
///
/// # Panics
/// When the binary is missing: build the workspace first (`cargo test --workspace` does).
pub fn binary(name: &str) -> PathBuf {
    // CI runs the same tests against other builds of the binaries (e.g. statically linked).
    if let Some(dir) = std::env::var_os("PLINTH_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(
            path.exists(),
            "{} is missing (PLINTH_BIN_DIR is set)",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p plinthd` (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

/// The stock `ctr` client.
///
/// # Panics
/// When `ctr` is not installed: the interoperability tests must not pass without it.
pub fn ctr() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let candidate = Path::new(dir).join("ctr");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("ctr is not installed: `apt-get install -y containerd` (the CI script does this)");
}

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Standard output, after asserting success.
    ///
    /// # Panics
    /// When the command failed; the message shows both streams.
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }
}

/// Runs a command to completion.
///
/// # Panics
/// When the command cannot be started.
pub fn run(program: &Path, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .env_remove("CONTAINERD_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a command with standard input read from `stdin` and standard output written to
/// `stdout` (files), for data too large to hold in memory.
///
/// # Panics
/// When the command or the files cannot be opened.
pub fn run_files(
    program: &Path,
    args: &[&str],
    stdin: Option<&Path>,
    stdout: Option<&Path>,
) -> Output {
    let input = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display())),
        ),
        None => Stdio::null(),
    };
    let output = match stdout {
        Some(path) => Stdio::from(
            std::fs::File::create(path)
                .unwrap_or_else(|e| panic!("creating {}: {e}", path.display())),
        ),
        None => Stdio::piped(),
    };
    let child = Command::new(program)
        .args(args)
        .env_remove("CONTAINERD_NAMESPACE")
        .stdin(input)
        .stdout(output)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    let result = child.wait_with_output().expect("waiting for the command");
    Output {
        status: result.status,
        stdout: String::from_utf8_lossy(&result.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&result.stderr).into_owned(),
    }
}

/// The `sha256:<hex>` digest of a file, computed by `sha256sum`.
///
/// # Panics
/// When `sha256sum` fails.
pub fn sha256_file(path: &Path) -> String {
    let output = run(
        Path::new("sha256sum"),
        &[path.to_str().expect("utf-8 path")],
    );
    let hex = output
        .ok()
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string();
    format!("sha256:{hex}")
}

/// A file of `size` pseudo-random bytes (seeded, so reruns use the same data).
///
/// # Panics
/// When the file cannot be written.
pub fn random_file(path: &Path, size: usize, seed: u64) {
    use std::io::Write as _;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("creating the file"));
    let mut block = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let value = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
        let n = left.min(block.len());
        file.write_all(&block[..n]).expect("writing the file");
        left -= n;
    }
    file.flush().expect("flushing the file");
}

/// How long the harness waits, after a daemon exited, for the last lines of its standard
/// error (the pipe closes when the process and anything it started are gone).
pub const LOG_END_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon's standard error as read so far, and whether the pipe is at its end; the reader
/// thread notifies on every line and at the end.
#[derive(Debug, Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct LogState {
    text: String,
    ended: bool,
}

impl Log {
    fn push_line(&self, line: &str) {
        let mut state = self.state.lock().unwrap();
        state.text.push_str(line);
        state.text.push('\n');
        self.changed.notify_all();
    }

    fn end(&self) {
        self.state.lock().unwrap().ended = true;
        self.changed.notify_all();
    }

    fn text(&self) -> String {
        self.state.lock().unwrap().text.clone()
    }

    /// Waits until `done` holds for the state, or `timeout`; whether it held.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&LogState) -> bool) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| !done(state))
            .unwrap();
        done(&state)
    }

    /// Waits for the end of the pipe (at most `timeout`); the whole text.
    fn wait_for_end(&self, timeout: Duration) -> String {
        self.wait_until(timeout, |state| state.ended);
        self.text()
    }
}

/// Reads `stderr` line by line into `log` on its own thread; `ready` gets a message when the
/// daemon says it listens; `log` is marked ended at the end of the pipe.
fn read_log(stderr: impl std::io::Read + Send + 'static, log: Arc<Log>, ready: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("plinthd listening on ") {
                let _ = ready.send(());
            }
            log.push_line(&line);
        }
        log.end();
    });
}

/// A plinthd process on its own temporary directories.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    log: Arc<Log>,
}

impl Daemon {
    /// The directory holding root, state, socket and config.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("daemon directory").path()
    }

    /// Kills the process (if running) and hands back its directory, to start again in it.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.dir.take().expect("daemon directory")
    }

    /// The socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The socket as a string, for command lines.
    pub fn address(&self) -> String {
        self.socket.display().to_string()
    }

    /// Its root directory.
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// Its state directory.
    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Everything it wrote to standard error so far; after [`Daemon::stop`] or
    /// [`Daemon::wait_for_exit`], everything it wrote.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until its log has a line containing `text` (at most `timeout`); that line.
    ///
    /// # Panics
    /// When no such line comes in time, or the log ends without one; the message holds the
    /// log.
    pub fn wait_for_log_line(&self, text: &str, timeout: Duration) -> String {
        let line = |state: &LogState| {
            state
                .text
                .lines()
                .find(|line| line.contains(text))
                .map(str::to_string)
        };
        self.log
            .wait_until(timeout, |state| state.ended || line(state).is_some());
        line(&self.log.state.lock().unwrap()).unwrap_or_else(|| {
            panic!(
                "no log line containing {text:?} within {timeout:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `ctr --address <socket> <args>`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut all = vec!["--address", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&ctr(), &all)
    }

    /// `ctr --address <socket> <args>` with standard input and output as files.
    pub fn ctr_files(&self, args: &[&str], stdin: Option<&Path>, stdout: Option<&Path>) -> Output {
        let mut all = vec!["--address", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        run_files(&ctr(), &all, stdin, stdout)
    }

    /// `plinthctl --address <socket> <args>` with standard input and output as files.
    pub fn plinthctl_files(
        &self,
        args: &[&str],
        stdin: Option<&Path>,
        stdout: Option<&Path>,
    ) -> Output {
        let mut all = vec!["--address", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        run_files(&binary("plinthctl"), &all, stdin, stdout)
    }

    /// `plinthctl --address <socket> <args>`.
    pub fn plinthctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--address", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&binary("plinthctl"), &all)
    }

    /// Sends SIGTERM and waits for the exit (at most `timeout`) and for the end of its log.
    ///
    /// # Panics
    /// When it does not exit in time (it is then killed).
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_for_exit("SIGTERM", timeout)
    }

    /// Waits for the exit (at most `timeout`) without sending anything, then for the end of
    /// its log, so that [`Daemon::log`] holds every line. `after` says what should have made
    /// it exit, for the message.
    ///
    /// # Panics
    /// When it does not exit in time (it is then killed).
    pub fn wait_for_exit(&mut self, after: &str, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waiting for plinthd") {
                self.log.wait_for_end(LOG_END_TIMEOUT);
                return status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "plinthd did not exit within {timeout:?} of {after}; log:\n{}",
                    self.log.wait_for_end(LOG_END_TIMEOUT)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal by name (`TERM`, `INT`, `KILL`) with the `kill` command.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// How to start a daemon.
#[derive(Debug, Default, Clone)]
pub struct Start {
    /// Config file text (written to `<dir>/config.toml` and passed with `-c`); empty: a
    /// minimal `version = 3` file, so no user config is read.
    pub config: String,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Give root, state and socket in the config file (see [`paths_config`]) rather than
    /// as command-line flags, so that a test can change them there (flags would override
    /// whatever the file says).
    pub paths_in_config: bool,
}

/// The GC scheduler's section the harness adds to the config of every daemon it starts whose
/// config does not name the scheduler itself: a collection only when one is asked for (a
/// synchronous delete, `plinthctl gc`) or a lease expires. Most tests store through `ctr`,
/// which gives what it writes no lease and no `containerd.io/gc.root` label: a scheduler with
/// containerd's defaults (in every default build of plinthd) would collect it under the
/// tests' feet, as containerd's would. In containerd's terms: no start-up collection, changes
/// never count, and a deletion waits for an interval tick — and there is none before a
/// collection was asked for, and after one the next is at least 1 000 s away (the interval is
/// the average collection time divided by `pause_threshold`, here 10⁻¹²). Tests of garbage
/// collection configure the scheduler themselves.
pub const MANUAL_GC: &str = "\n[plugins.\"io.containerd.gc.v1.scheduler\"]\nstartup_delay = \"0s\"\nmutation_threshold = 0\ndeletion_threshold = 9223372036854775807\npause_threshold = 1e-12\n";

/// `config` with [`MANUAL_GC`] appended, when it is a version 2 or 3 config that does not
/// name the scheduler (in a section or in `disabled_plugins`); otherwise `config` as it is.
/// What the harness writes at start; a test that rewrites a running daemon's config for a
/// reload writes this too, or the reload would give the scheduler containerd's defaults.
pub fn with_manual_gc(config: &str) -> String {
    let versioned = config
        .lines()
        .any(|line| matches!(line.replace(' ', "").as_str(), "version=2" | "version=3"));
    if versioned && !config.contains("io.containerd.gc.v1.scheduler") {
        format!("{config}{MANUAL_GC}")
    } else {
        config.to_string()
    }
}

/// The top-level config lines that put a daemon in `dir` as [`start`] puts it there with
/// flags: `root`, `state` and `grpc.address`.
pub fn paths_config(dir: &Path) -> String {
    format!(
        "root = {:?}\nstate = {:?}\ngrpc.address = {:?}\n",
        dir.join("root").display().to_string(),
        dir.join("state").display().to_string(),
        dir.join("plinthd.sock").display().to_string()
    )
}

/// Starts plinthd in a fresh temporary directory and waits until it serves.
///
/// # Panics
/// When it exits or does not serve within [`START_TIMEOUT`]; the message holds its log.
pub fn start(options: Start) -> Daemon {
    let dir = tempfile::tempdir().expect("temporary directory");
    start_in(dir, options)
        .unwrap_or_else(|(log, status)| panic!("plinthd did not start ({status:?}):\n{log}"))
}

/// Starts plinthd in `dir`; on failure, its log and exit status.
///
/// # Errors
/// The log and the exit status (if it exited) when it did not come up.
pub fn start_in(
    dir: tempfile::TempDir,
    options: Start,
) -> Result<Daemon, (String, Option<ExitStatus>)> {
    start_program_in(&binary("plinthd"), dir, options)
}

/// Starts `program` — a plinthd built otherwise than this test run's (e.g. with other
/// features, by the test itself) — in `dir`; on failure, its log and exit status.
///
/// # Errors
/// The log and the exit status (if it exited) when it did not come up.
pub fn start_program_in(
    program: &Path,
    dir: tempfile::TempDir,
    options: Start,
) -> Result<Daemon, (String, Option<ExitStatus>)> {
    let socket = dir.path().join("plinthd.sock");
    let config = dir.path().join("config.toml");
    let mut text = with_manual_gc(if options.config.is_empty() {
        "version = 3\n"
    } else {
        &options.config
    });
    let mut command = Command::new(program);
    command.arg("--config").arg(&config);
    if options.paths_in_config {
        text = format!("{}{text}", paths_config(dir.path()));
    } else {
        command
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket);
    }
    std::fs::write(&config, text).expect("writing config");
    command
        .args(&options.args)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("starting plinthd");
    let stderr = child.stderr.take().expect("stderr pipe");
    let log = Arc::new(Log::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    read_log(stderr, log.clone(), ready_tx);
    let started = Instant::now();
    loop {
        match ready_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(()) => {
                return Ok(Daemon {
                    child: Some(child),
                    dir: Some(dir),
                    socket,
                    log,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The pipe ended: the daemon is exiting; poll for its status below.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(status) = child.try_wait().expect("waiting for plinthd") {
            // Every line it wrote, up to the end of the pipe.
            return Err((log.wait_for_end(LOG_END_TIMEOUT), Some(status)));
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err((log.wait_for_end(LOG_END_TIMEOUT), None));
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, at most `timeout`.
///
/// # Panics
/// When `timeout` passes first; the message names `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stock containerd daemon (Debian's `containerd` package).
///
/// # Panics
/// When it is not installed: tests that use it must not pass without it.
pub fn containerd_binary() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        let candidate = Path::new(dir).join("containerd");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "containerd is not installed: `apt-get install -y containerd` (the CI script does this)"
    );
}

/// A real containerd on its own temporary directories, with a minimal config (CRI off, the
/// `opt` plugin's directory redirected, so that it writes nothing outside its directory).
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd with `extra` appended to its config (e.g. `[proxy_plugins]`
    /// sections), and waits until `ctr plugins ls` answers.
    ///
    /// # Panics
    /// When it exits or does not answer within [`START_TIMEOUT`]; the message holds its log.
    pub fn start(disabled_plugins: &[&str], extra: &str) -> Containerd {
        Containerd::start_with_grpc(disabled_plugins, "", extra)
    }

    /// As [`Containerd::start`], with `grpc` (lines of keys) added to its `[grpc]` table, e.g.
    /// `max_recv_message_size = 4096`.
    ///
    /// # Panics
    /// As [`Containerd::start`].
    pub fn start_with_grpc(disabled_plugins: &[&str], grpc: &str, extra: &str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir()
            .expect("temporary directory");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let socket = dir.path().join("containerd.sock");
        let mut disabled = vec!["io.containerd.grpc.v1.cri"];
        disabled.extend_from_slice(disabled_plugins);
        let disabled: Vec<String> = disabled.iter().map(|p| format!("{p:?}")).collect();
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [{}]\n\
             [grpc]\n  address = {:?}\n{grpc}\n[ttrpc]\n  address = {:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {:?}\n\
             [plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1\n  schedule_delay = \"0s\"\n  startup_delay = \"0s\"\n{extra}\n",
            path("root"),
            path("state"),
            disabled.join(", "),
            socket.display().to_string(),
            format!("{}.ttrpc", socket.display()),
            path("opt"),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("writing containerd's config");
        let log = std::fs::File::create(dir.path().join("log")).expect("creating the log");
        let child = Command::new(containerd_binary())
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting containerd");
        let mut containerd = Containerd {
            child: Some(child),
            dir,
            socket,
        };
        let started = Instant::now();
        loop {
            if containerd.socket.exists() && containerd.ctr(&["plugins", "ls"]).status.success() {
                return containerd;
            }
            let exited = containerd
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_TIMEOUT {
                panic!(
                    "containerd did not start ({exited:?}):\n{}",
                    containerd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `ctr --address <socket> <args>`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut all = vec!["--address", self.socket.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run(&ctr(), &all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in daemon (a shell script taking plinthd's arguments) whose last line of
    /// standard error comes from a child that writes it after the script itself exited:
    /// only a harness that waits for the end of the pipe has it.
    fn fake_daemon(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("fake-plinthd");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Writes `late line` 200 ms after the script has gone on (and exited).
    const LATE: &str = "(sleep 0.2; echo late line >&2) &";

    #[test]
    fn the_log_of_a_start_that_failed_has_every_line() {
        let scripts = tempfile::tempdir().unwrap();
        let program = fake_daemon(
            scripts.path(),
            &format!("echo early line >&2\n{LATE}\nexit 3"),
        );
        let dir = tempfile::tempdir().unwrap();
        let (log, status) = start_program_in(&program, dir, Start::default()).unwrap_err();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        assert_eq!(log, "early line\nlate line\n");
    }

    #[test]
    fn the_log_after_stop_has_every_line() {
        let scripts = tempfile::tempdir().unwrap();
        let program = fake_daemon(
            scripts.path(),
            &format!(
                "trap '{LATE} exit 0' TERM\necho plinthd listening on fake >&2\n\
                 while :; do sleep 1 2>/dev/null & wait; done"
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = start_program_in(&program, dir, Start::default()).unwrap();
        assert!(daemon.stop(Duration::from_secs(10)).success());
        assert_eq!(daemon.log(), "plinthd listening on fake\nlate line\n");
    }
}
