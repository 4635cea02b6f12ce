//! Telling the process's supervisor how it is: the systemd notify protocol
//! (`NOTIFY_SOCKET`), which both systemd and the Fabric host agent listen on.

/// Sends `msg` (newline-separated `KEY=VALUE`, e.g. `READY=1`) to the socket
/// in `NOTIFY_SOCKET`. `Ok(false)` when the process is not supervised.
pub fn notify(msg: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to(msg.as_bytes(), std::path::PathBuf::from(path))?;
    Ok(true)
}
