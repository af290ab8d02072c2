//! The client half of `scripts/bench-startup.sh`: waits for a daemon that was just started to
//! serve its first introspection `Plugins` call, as fast as a client can tell, and prints the
//! wall-clock time (nanoseconds since the Unix epoch, like `date +%s%N`) when it did.
//!
//! ```text
//! startup-probe SOCKET PID [TIMEOUT_MS]
//! ```
//!
//! Every 250 µs, once SOCKET exists, it connects and calls
//! `containerd.services.introspection.v1.Introspection/Plugins` (namespace `default`, as `ctr`
//! sends it). The first reply with at least one plugin ends the wait. It gives up, exit status
//! 1, when the daemon PID is gone or TIMEOUT_MS (default 20000) has passed. Measuring with
//! this instead of a `ctr` run takes the client's own process start (~20 ms of Go runtime)
//! out of the figure, the same way for every daemon.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use plinth_api::containerd::services::introspection::v1::PluginsRequest;
use plinth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use plinthd::client::Client;

const POLL: Duration = Duration::from_micros(250);

async fn plugins_served(socket: &str, deadline: Instant) -> anyhow::Result<usize> {
    let call = async {
        let client = Client::connect(socket, "default").await?;
        let reply = IntrospectionClient::new(client.channel())
            .plugins(client.request(PluginsRequest::default())?)
            .await?;
        anyhow::Ok(reply.into_inner().plugins.len())
    };
    // A daemon that accepts but never replies must not hang the benchmark.
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .context("no reply before the time-out")?
}

/// Whether the process is still running: its `/proc` entry exists and it is not a zombie
/// (a daemon that exited stays a zombie until the script that started it waits for it).
fn alive(proc_stat: &str) -> bool {
    std::fs::read_to_string(proc_stat).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, pid, rest @ ..] = args.as_slice() else {
        bail!("usage: startup-probe SOCKET PID [TIMEOUT_MS]");
    };
    let timeout_ms: u64 = match rest {
        [] => 20_000,
        [ms] => ms
            .parse()
            .with_context(|| format!("TIMEOUT_MS {ms:?} is not a number"))?,
        _ => bail!("usage: startup-probe SOCKET PID [TIMEOUT_MS]"),
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let proc_stat = format!("/proc/{pid}/stat");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut last_error = String::from("the socket never appeared");
    loop {
        if Path::new(socket).exists() {
            match runtime.block_on(plugins_served(socket, deadline)) {
                Ok(n) if n > 0 => break,
                Ok(_) => last_error = "the reply listed no plugins".to_string(),
                Err(e) => last_error = format!("{e:#}"),
            }
        }
        if !alive(&proc_stat) {
            bail!("daemon {pid} exited before serving ({last_error})");
        }
        if Instant::now() > deadline {
            bail!("daemon {pid} did not serve Plugins within {timeout_ms} ms ({last_error})");
        }
        std::thread::sleep(POLL);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    // The one line of output, read by the script.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", now.as_nanos()).context("writing the time")?;
    Ok(())
}
