//! A small Control API client (hyper, HTTP/1.1, one connection per request):
//! what `fabricctl apply/get/audit` and the tests use.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode, Uri};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::apply::{ApplyBundle, ApplyOptions, ApplyResult, ManifestFile, BUNDLE_CONTENT_TYPE};
use crate::audit::AuditReport;
use crate::store::StoredObject;
use fabric_proto::heartbeat::{HeartbeatBody, HeartbeatReply};

/// A manifest error as the server reports it: the same type `validate` prints.
pub type RemoteManifestError = fabric_schemas::manifest::ManifestError;

#[derive(Debug, Deserialize)]
struct RemoteError {
    error: String,
    #[serde(default)]
    errors: Vec<RemoteManifestError>,
}

/// Why a Control API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL, or a request built from it, is not valid.
    #[error("bad server URL {url:?}: {reason}")]
    Url {
        /// The URL concerned.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No HTTP exchange with the server completed.
    #[error("cannot reach the Control API at {url}: {reason}")]
    Connect {
        /// The server or request.
        url: String,
        /// The transport's error.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The server's error message.
        message: String,
        /// File/field errors of a refused apply.
        errors: Vec<RemoteManifestError>,
    },
    /// A body could not be encoded, or the reply is not what was expected.
    #[error("unexpected response from {url}: {reason}")]
    Decode {
        /// The request concerned.
        url: String,
        /// The decoder's error.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status, for an error status answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A Control API client.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// `server` is `http://host:port` (a trailing `/` or `/api/v1` is accepted).
    pub fn new(server: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        let base = server
            .trim_end_matches('/')
            .trim_end_matches("/api/v1")
            .to_owned();
        let uri: Uri =
            base.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
                    url: server.into(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ClientError::Url {
                url: server.into(),
                reason: "expected http://HOST:PORT (put TLS in front with a proxy)".into(),
            });
        }
        Ok(ApiClient {
            base,
            token: token.map(|t| t.trim().to_owned()),
        })
    }

    /// Applies manifest files as one bundle (errors keep their file names).
    pub async fn apply(
        &self,
        files: Vec<ManifestFile>,
        opts: ApplyOptions,
    ) -> Result<ApplyResult, ClientError> {
        let path = format!("/api/v1/apply?dryRun={}&prune={}", opts.dry_run, opts.prune);
        let body = serde_json::to_vec(&ApplyBundle { files }).map_err(|e| ClientError::Decode {
            url: path.clone(),
            reason: e.to_string(),
        })?;
        self.call(Method::POST, &path, Some((BUNDLE_CONTENT_TYPE, body)))
            .await
    }

    /// Posts plain manifest text (one file).
    pub async fn apply_text(
        &self,
        text: &str,
        opts: ApplyOptions,
    ) -> Result<ApplyResult, ClientError> {
        let path = format!("/api/v1/apply?dryRun={}&prune={}", opts.dry_run, opts.prune);
        self.call(
            Method::POST,
            &path,
            Some(("application/yaml", text.as_bytes().to_vec())),
        )
        .await
    }

    /// Every stored object of `kind`.
    pub async fn list(&self, kind: &str) -> Result<Vec<StoredObject>, ClientError> {
        self.call(Method::GET, &format!("/api/v1/objects/{kind}"), None)
            .await
    }

    /// One stored object.
    pub async fn get(&self, kind: &str, name: &str) -> Result<StoredObject, ClientError> {
        self.call(Method::GET, &format!("/api/v1/objects/{kind}/{name}"), None)
            .await
    }

    /// Sends a heartbeat as a node would, over HTTP.
    pub async fn heartbeat(&self, body: &HeartbeatBody) -> Result<HeartbeatReply, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: "heartbeat".into(),
            reason: e.to_string(),
        })?;
        self.call(
            Method::POST,
            "/api/v1/heartbeat",
            Some(("application/json", json)),
        )
        .await
    }

    /// The fleet audit; `freshness_ms` overrides how old a heartbeat may be to count as live.
    pub async fn audit(&self, freshness_ms: Option<i64>) -> Result<AuditReport, ClientError> {
        let path = match freshness_ms {
            Some(f) => format!("/api/v1/audit?freshnessMs={f}"),
            None => "/api/v1/audit".to_owned(),
        };
        self.call(Method::GET, &path, None).await
    }

    /// A rollout's status (`rollout status NAME`).
    pub async fn rollout_status(
        &self,
        name: &str,
    ) -> Result<crate::orchestrator::RolloutView, ClientError> {
        self.call(Method::GET, &format!("/api/v1/rollouts/{name}"), None)
            .await
    }

    /// Changes a rollout's control: `pause`, `resume`, `abort` or `override`.
    pub async fn rollout_action(
        &self,
        name: &str,
        action: &str,
        body: &super::RolloutActionBody,
    ) -> Result<crate::orchestrator::RolloutView, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: format!("rollout {action}"),
            reason: e.to_string(),
        })?;
        self.call(
            Method::POST,
            &format!("/api/v1/rollouts/{name}/{action}"),
            Some(("application/json", json)),
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let connect = |reason: String| ClientError::Connect {
            url: self.base.clone(),
            reason,
        };
        let authority = uri
            .authority()
            .ok_or_else(|| connect("no host".into()))?
            .clone();
        let stream =
            tokio::net::TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80)))
                .await
                .map_err(|e| connect(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| connect(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(header::HOST, authority.as_str());
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let (ctype, bytes) = body.unwrap_or(("application/json", Vec::new()));
        let req = req
            .header(header::CONTENT_TYPE, ctype)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let (message, errors) = match serde_json::from_slice::<RemoteError>(&bytes) {
                Ok(e) => (e.error, e.errors),
                Err(_) => (String::from_utf8_lossy(&bytes).into_owned(), Vec::new()),
            };
            return Err(ClientError::Status {
                status,
                message,
                errors,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }
}
