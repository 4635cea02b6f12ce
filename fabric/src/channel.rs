//! Fabric channels: one QUIC bidirectional stream to `(NodeId, service)`.
//!
//! A service sees an `AsyncRead + AsyncWrite` and the peer's verified NodeId,
//! nothing about addresses, paths or relays.
//!
//! Stream header (opener -> acceptor), bounded and validated before anything
//! else is read:
//!
//! ```text
//! u8 version (=1) | u8 name_len (1..=64) | name_len bytes of [a-z0-9._-]
//! ```
//!
//! The acceptor answers with one status byte ([`Status`]) so an opener learns at
//! `open` time whether the service exists, instead of on its first read.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::topology::NodeId;

pub(crate) const HEADER_VERSION: u8 = 1;
/// Longest service name accepted on the wire.
pub const MAX_SERVICE_NAME: usize = 64;
/// Services reserved for the transport itself (relay control).
pub(crate) const RESERVED_PREFIX: &str = "fabric.";

/// Why a service name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {name:?}: {reason}")]
pub struct ServiceNameError {
    /// The rejected name, cut to a little over [`MAX_SERVICE_NAME`] characters so
    /// a hostile name cannot bloat logs; empty if the bytes were not UTF-8.
    pub name: String,
    /// Which rule the name breaks.
    pub reason: &'static str,
}

/// Checks a service name; `allow_reserved` is only for the transport's own services.
pub(crate) fn validate_service(name: &str, allow_reserved: bool) -> Result<(), ServiceNameError> {
    let err = |reason| ServiceNameError {
        name: name.chars().take(MAX_SERVICE_NAME + 8).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(err("must not be empty"));
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(err("longer than 64 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err("only a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    if !allow_reserved && name.starts_with(RESERVED_PREFIX) {
        return Err(err("the 'fabric.' prefix is reserved for the transport"));
    }
    Ok(())
}

/// Encodes the stream header for `service` (already validated).
pub(crate) fn encode_header(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + service.len());
    out.push(HEADER_VERSION);
    out.push(service.len() as u8);
    out.extend_from_slice(service.as_bytes());
    out
}

/// Why an incoming stream header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header's version byte is not the one this build speaks.
    #[error("unsupported stream header version {0}")]
    Version(u8),
    /// The name length byte is 0 or longer than [`MAX_SERVICE_NAME`].
    #[error("service name length {0} outside 1..=64")]
    Length(u8),
    /// The name bytes are not a valid service name.
    #[error(transparent)]
    Name(#[from] ServiceNameError),
    /// The stream ended before the whole header arrived.
    #[error("stream ended inside the header")]
    Truncated,
    /// The opener did not send the whole header in time.
    #[error("header not received in time")]
    Timeout,
}

/// Reads and validates a header; never reads more than 2 + 64 bytes.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, HeaderError> {
    use tokio::io::AsyncReadExt;
    let mut fixed = [0u8; 2];
    r.read_exact(&mut fixed)
        .await
        .map_err(|_| HeaderError::Truncated)?;
    if fixed[0] != HEADER_VERSION {
        return Err(HeaderError::Version(fixed[0]));
    }
    let len = fixed[1];
    if len == 0 || len as usize > MAX_SERVICE_NAME {
        return Err(HeaderError::Length(len));
    }
    let mut name = vec![0u8; len as usize];
    r.read_exact(&mut name)
        .await
        .map_err(|_| HeaderError::Truncated)?;
    let name = String::from_utf8(name).map_err(|_| ServiceNameError {
        name: String::new(),
        reason: "not UTF-8",
    })?;
    // Reserved names are allowed on the wire; the dispatcher decides who serves them.
    validate_service(&name, true)?;
    Ok(name)
}

/// The acceptor's one-byte answer to a stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    Accepted = 0,
    UnknownService = 1,
    Busy = 2,
    BadHeader = 3,
}

impl Status {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Status::Accepted),
            1 => Some(Status::UnknownService),
            2 => Some(Status::Busy),
            3 => Some(Status::BadHeader),
            _ => None,
        }
    }
}

/// Counts open channels on a connection so a replaced path can drain before it
/// is closed.
#[derive(Debug, Default)]
pub(crate) struct ChannelCount(AtomicUsize);

impl ChannelCount {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub(crate) struct ChannelGuard(Arc<ChannelCount>);

impl ChannelGuard {
    pub(crate) fn new(count: Arc<ChannelCount>) -> Self {
        count.0.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bidirectional byte stream to a service on a peer.
#[derive(Debug)]
pub struct Channel {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: NodeId,
    service: String,
    _guard: ChannelGuard,
}

impl Channel {
    pub(crate) fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        peer: NodeId,
        service: String,
        guard: ChannelGuard,
    ) -> Self {
        Self {
            send,
            recv,
            peer,
            service,
            _guard: guard,
        }
    }

    /// The peer's NodeId, proven during the TLS handshake.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The service this channel was opened to.
    pub fn service(&self) -> &str {
        &self.service
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// Incoming channels for one service, each with the peer's verified NodeId.
/// Dropping it stops the service: later opens get "unknown service".
#[derive(Debug)]
pub struct ChannelListener {
    service: String,
    rx: mpsc::Receiver<Channel>,
    _registration: Box<dyn std::any::Any + Send + Sync>,
}

impl ChannelListener {
    pub(crate) fn new(
        service: String,
        rx: mpsc::Receiver<Channel>,
        registration: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Self {
            service,
            rx,
            _registration: registration,
        }
    }

    /// The service whose channels this listener receives.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The next incoming channel; `None` once the transport shut down.
    pub async fn accept(&mut self) -> Option<Channel> {
        self.rx.recv().await
    }
}

impl futures::Stream for ChannelListener {
    type Item = Channel;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Channel>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_validated() {
        assert!(validate_service("echo", false).is_ok());
        assert!(validate_service("gossip.v1", false).is_ok());
        assert!(validate_service("", false).is_err());
        assert!(validate_service("Echo", false).is_err());
        assert!(validate_service(&"a".repeat(65), false).is_err());
        assert!(validate_service("fabric.relay", false).is_err());
        assert!(validate_service("fabric.relay", true).is_ok());
    }

    #[tokio::test]
    async fn header_round_trips_and_rejects_garbage() {
        let mut good: &[u8] = &encode_header("echo");
        assert_eq!(read_header(&mut good).await.expect("ok"), "echo");
        let mut bad_version: &[u8] = &[9, 4, b'e', b'c', b'h', b'o'];
        assert_eq!(
            read_header(&mut bad_version).await,
            Err(HeaderError::Version(9))
        );
        let mut too_long: &[u8] = &[1, 200];
        assert_eq!(
            read_header(&mut too_long).await,
            Err(HeaderError::Length(200))
        );
        let mut truncated: &[u8] = &[1, 4, b'e'];
        assert_eq!(
            read_header(&mut truncated).await,
            Err(HeaderError::Truncated)
        );
        let mut bad_chars: &[u8] = &[1, 2, 0xff, b'/'];
        assert!(matches!(
            read_header(&mut bad_chars).await,
            Err(HeaderError::Name(_))
        ));
    }
}
