//! The readiness channel: the systemd notify protocol over a datagram
//! socket the host agent owns. The child finds it in `NOTIFY_SOCKET` and
//! sends newline-separated `KEY=VALUE` assignments: `READY=1` (with
//! `DIGEST=<sha256 of its own binary>` and `VERSION=`), then `WATCHDOG=1`
//! while it lives, `STOPPING=1` on the way out.

use std::path::{Path, PathBuf};

/// One thing the child said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// It is up; `digest` is what it says it runs.
    Ready {
        /// `DIGEST=`: the sha256 of the binary it runs.
        digest: Option<String>,
        /// `VERSION=`: its version.
        version: Option<String>,
    },
    /// It is alive.
    Watchdog,
    /// It is shutting down on purpose.
    Stopping,
}

/// Parses one datagram; unknown assignments are ignored, as systemd does.
pub fn parse(msg: &str) -> Vec<Notice> {
    let mut ready = false;
    let (mut digest, mut version) = (None, None);
    let mut out = Vec::new();
    for line in msg.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => ready = true,
            Some(("DIGEST", d)) => digest = Some(d.trim().to_owned()),
            Some(("VERSION", v)) => version = Some(v.trim().to_owned()),
            Some(("WATCHDOG", "1")) => out.push(Notice::Watchdog),
            Some(("STOPPING", "1")) => out.push(Notice::Stopping),
            _ => {}
        }
    }
    if ready {
        out.insert(0, Notice::Ready { digest, version });
    }
    out
}

/// The host agent's end.
#[derive(Debug)]
pub struct NotifySocket {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a fresh socket at `path` (an old one is removed first).
    pub fn bind(path: &Path) -> std::io::Result<NotifySocket> {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(NotifySocket {
            sock: tokio::net::UnixDatagram::bind(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Where children send (their `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Discards every datagram already queued (from a child that is gone).
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        while self.sock.try_recv(&mut buf).is_ok() {}
    }

    /// The next datagram's notices.
    pub async fn recv(&self) -> std::io::Result<Vec<Notice>> {
        let mut buf = vec![0u8; 4096];
        let n = self.sock.recv(&mut buf).await?;
        Ok(parse(&String::from_utf8_lossy(&buf[..n])))
    }
}

/// The child's end: sends `msg` to `NOTIFY_SOCKET`, if set. `Ok(false)`
/// when there is no socket to tell (not supervised).
pub fn send(msg: &str) -> std::io::Result<bool> {
    fabric_runtime::supervisor::notify(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_with_digest_and_watchdog_parse_and_noise_is_ignored() {
        let n = parse("READY=1\nDIGEST=ab\nVERSION=0.9.0\nSTATUS=fine\nWATCHDOG=1");
        assert_eq!(
            n,
            vec![
                Notice::Ready {
                    digest: Some("ab".into()),
                    version: Some("0.9.0".into())
                },
                Notice::Watchdog
            ]
        );
        assert!(parse("READY=0\ngarbage").is_empty());
        assert_eq!(parse("STOPPING=1"), vec![Notice::Stopping]);
    }
}
