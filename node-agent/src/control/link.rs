//! How a heartbeat reaches the Control API: one session implementation over
//! three links.
//!
//! - **fabric**: a framed channel to `(provider, "control")`; the peer's key
//!   is checked by the transport, so its replies may steer the session.
//! - **compat**: `POST {url}/heartbeat` on the legacy HTTP contract; anyone
//!   on the path could forge a reply, so it never steers the session.
//! - **in-process** ([`LocalControl`]): the node co-located with the control
//!   plane cannot dial its own id (transports refuse), so the composition
//!   root hands it the Control API's intake through a [`LocalControlSlot`].
//!   The session, its decisions and the `update-trigger.json` writer stay the
//!   node's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use fabric::channel::Channel;
use fabric::frame::Framed;
use fabric_proto::heartbeat::{
    ControlRequest, HeartbeatBody, HeartbeatReply, MAX_COMPAT_REPLY_BYTES,
};

/// A boxed future of a heartbeat round trip.
pub type ReplyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HeartbeatReply, String>> + Send + 'a>>;

/// The Control API's intake, reachable in process.
pub trait LocalControl: Send + Sync + 'static {
    /// Delivers one heartbeat of the co-located node and returns the reply.
    fn heartbeat(&self, body: HeartbeatBody) -> ReplyFuture<'_>;
}

/// Where the composition root puts the in-process link once the Control API
/// is up (it starts after the node, on the node's transport). Until then a
/// session to the node's own id fails and is retried with backoff.
#[derive(Clone, Default)]
pub struct LocalControlSlot(Arc<OnceLock<Arc<dyn LocalControl>>>);

impl LocalControlSlot {
    /// An empty slot.
    pub fn new() -> LocalControlSlot {
        LocalControlSlot::default()
    }

    /// Installs the link; `false` if one was installed already.
    pub fn install(&self, link: Arc<dyn LocalControl>) -> bool {
        self.0.set(link).is_ok()
    }

    /// The link, once installed.
    pub fn get(&self) -> Option<Arc<dyn LocalControl>> {
        self.0.get().cloned()
    }
}

impl std::fmt::Debug for LocalControlSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalControlSlot")
            .field("installed", &self.0.get().is_some())
            .finish()
    }
}

/// One open link of a control session.
pub(crate) enum Link {
    Fabric(Box<Framed<Channel>>),
    Compat { url: String },
    Local(Arc<dyn LocalControl>),
}

impl Link {
    /// Whether a reply on this link is authenticated, and so may say where
    /// the session goes next.
    pub(crate) fn authenticated(&self) -> bool {
        !matches!(self, Link::Compat { .. })
    }

    /// Whether a failed round trip means the link itself broke (reopen it on
    /// the next pass) rather than the far end refusing.
    pub(crate) fn reopen_on_error(&self) -> bool {
        matches!(self, Link::Fabric(_))
    }

    pub(crate) async fn heartbeat(
        &mut self,
        body: &HeartbeatBody,
        token: Option<&str>,
    ) -> Result<HeartbeatReply, String> {
        match self {
            Link::Fabric(framed) => framed
                .request::<ControlRequest, HeartbeatReply>(&ControlRequest::Heartbeat(Box::new(
                    body.clone(),
                )))
                .await
                .map_err(|e| e.to_string()),
            Link::Compat { url } => compat_post(url, body, token).await,
            Link::Local(l) => l.heartbeat(body.clone()).await,
        }
    }
}

/// `POST {url}/heartbeat` on the legacy HTTP contract.
async fn compat_post(
    base: &str,
    body: &HeartbeatBody,
    token: Option<&str>,
) -> Result<HeartbeatReply, String> {
    use http_body_util::{BodyExt, Full};
    let url = format!("{}/heartbeat", base.trim_end_matches('/'));
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// is supported on the compat contract"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url}: no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut req = hyper::Request::post(uri.path())
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(hyper::body::Bytes::from(json)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    // A compat server is plain HTTP over TCP: never buffer more than a reply can be.
    let bytes = http_body_util::Limited::new(resp.into_body(), MAX_COMPAT_REPLY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{url}: reply refused: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: bad reply: {e}"))
}
