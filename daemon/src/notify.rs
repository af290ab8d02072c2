//! Readiness for systemd: `READY=1` on `$NOTIFY_SOCKET`, when it is set, and `RELOADING=1`
//! around a live reload.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd. Does nothing when `NOTIFY_SOCKET` is unset.
///
/// # Errors
/// The socket exists but cannot be written.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &address)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// Tells systemd that a reload began (`RELOADING=1`, with the `MONOTONIC_USEC` that
/// `Type=notify-reload` requires); `READY=1` ends it.
///
/// # Errors
/// As [`notify`].
pub fn reloading() -> std::io::Result<bool> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let micros = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={micros}"))
}
