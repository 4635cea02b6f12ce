//! Typed request/response messages over a channel: a 4-byte big-endian length,
//! then a JSON payload of at most `max_frame` bytes.
//!
//! The length is checked before anything is allocated, so a peer cannot make us
//! reserve memory by announcing a huge frame. After an oversize, truncated or
//! garbage frame the stream is out of step and the caller should drop it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default hard limit on one frame's payload: 1 MiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame (announced by the peer, or about to be sent) is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// The frame's payload length in bytes.
        len: u64,
        /// The limit in force (`max_frame`).
        max: usize,
    },
    /// The stream ended partway through a length prefix or a payload.
    #[error("stream ended inside a frame: expected {expected} bytes, got {received}")]
    Truncated {
        /// Bytes the prefix or payload needed.
        expected: usize,
        /// Bytes that arrived before the end of stream.
        received: usize,
    },
    /// The payload is not JSON of the expected message type.
    #[error("frame payload is not a valid message: {0}")]
    Garbage(#[source] serde_json::Error),
    /// The message to send could not be serialised to JSON.
    #[error("encoding message: {0}")]
    Encode(#[source] serde_json::Error),
    /// The peer finished its side at a frame boundary: the normal end of a conversation.
    #[error("stream closed cleanly before a new frame")]
    Closed,
    /// The underlying stream failed.
    #[error("channel I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A framed, typed view over any byte stream (normally a [`crate::channel::Channel`]).
#[derive(Debug)]
pub struct Framed<S> {
    io: S,
    max_frame: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Framed<S> {
    /// Frames `io` with the default limit, [`DEFAULT_MAX_FRAME`].
    pub fn new(io: S) -> Self {
        Self::with_max_frame(io, DEFAULT_MAX_FRAME)
    }

    /// Frames `io`, refusing frames over `max_frame` bytes in both directions.
    pub fn with_max_frame(io: S, max_frame: usize) -> Self {
        Self { io, max_frame }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably; writing to it directly puts the framing out of step.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Gives back the underlying stream.
    pub fn into_inner(self) -> S {
        self.io
    }

    /// Encodes and writes one message, refusing to send what the peer would refuse.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let payload = serde_json::to_vec(msg).map_err(FrameError::Encode)?;
        write_frame(&mut self.io, &payload, self.max_frame).await
    }

    /// Reads one message. A clean end of stream before the length is `Closed`.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let payload = read_frame(&mut self.io, self.max_frame).await?;
        serde_json::from_slice(&payload).map_err(FrameError::Garbage)
    }

    /// Sends a request and waits for its response.
    pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        req: &Req,
    ) -> Result<Resp, FrameError> {
        self.send(req).await?;
        self.recv().await
    }

    /// Flushes and finishes the write side.
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.io.shutdown().await?;
        Ok(())
    }
}

/// Writes one length-prefixed frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    max_frame: usize,
) -> Result<(), FrameError> {
    if payload.len() > max_frame {
        return Err(FrameError::Oversize {
            len: payload.len() as u64,
            max: max_frame,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::Oversize {
        len: payload.len() as u64,
        max: max_frame,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(payload).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one length-prefixed frame's payload.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len_buf = [0u8; 4];
    let got = read_full(r, &mut len_buf).await?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < len_buf.len() {
        return Err(FrameError::Truncated {
            expected: len_buf.len(),
            received: got,
        });
    }
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > max_frame {
        return Err(FrameError::Oversize {
            len: len as u64,
            max: max_frame,
        });
    }
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload).await?;
    if got < len {
        return Err(FrameError::Truncated {
            expected: len,
            received: got,
        });
    }
    Ok(payload)
}

/// Like `read_exact`, but reports how much arrived before EOF instead of failing.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        seq: u32,
        note: String,
    }

    #[tokio::test]
    async fn message_round_trips() {
        let (a, b) = tokio::io::duplex(1024);
        let mut a = Framed::new(a);
        let mut b = Framed::new(b);
        let msg = Ping {
            seq: 7,
            note: "hi".into(),
        };
        a.send(&msg).await.expect("send");
        assert_eq!(b.recv::<Ping>().await.expect("recv"), msg);
    }

    #[tokio::test]
    async fn oversize_length_is_refused_before_allocating() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut b = Framed::with_max_frame(b, 1024);
        assert!(matches!(
            b.recv::<Ping>().await,
            Err(FrameError::Oversize { len, max: 1024 }) if len == u32::MAX as u64
        ));
    }

    #[tokio::test]
    async fn oversize_send_is_refused_locally() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut a = Framed::with_max_frame(a, 8);
        let msg = Ping {
            seq: 1,
            note: "far too long for eight bytes".into(),
        };
        assert!(matches!(
            a.send(&msg).await,
            Err(FrameError::Oversize { .. })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_reported() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_be_bytes()).await.expect("write");
        a.write_all(b"abc").await.expect("write");
        drop(a);
        let mut b = Framed::new(b);
        assert!(matches!(
            b.recv::<Ping>().await,
            Err(FrameError::Truncated {
                expected: 10,
                received: 3
            })
        ));
    }

    #[tokio::test]
    async fn truncated_length_and_clean_close_differ() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(&[0, 0]).await.expect("write");
        drop(a);
        let mut b = Framed::new(b);
        assert!(matches!(
            b.recv::<Ping>().await,
            Err(FrameError::Truncated {
                expected: 4,
                received: 2
            })
        ));
        let (a, b) = tokio::io::duplex(1024);
        drop(a);
        let mut b = Framed::new(b);
        assert!(matches!(b.recv::<Ping>().await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn garbage_payload_is_reported() {
        let (mut a, b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"\xff\x00not json", 1024)
            .await
            .expect("write");
        let mut b = Framed::new(b);
        assert!(matches!(
            b.recv::<Ping>().await,
            Err(FrameError::Garbage(_))
        ));
    }
}
