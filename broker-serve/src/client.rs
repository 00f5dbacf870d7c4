//! A client for the daemon's unix socket.

use std::path::Path;

use broker_core::{Credential, Delivery, DeliveryKind, Error, ErrorKind, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::api::{CredentialRequest, CredentialResponse};

/// The most an answer may hold.
const ANSWER_LIMIT: usize = 1024 * 1024;

/// An HTTP answer: status and body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (may hold a value: wiped on drop).
    pub body: zeroize::Zeroizing<Vec<u8>>,
    /// `Retry-After` in seconds, on a 429.
    pub retry_after: Option<u64>,
}

/// Sends one request to the daemon at `socket` and reads the whole answer.
pub async fn call(socket: &Path, method: &str, path: &str, body: Vec<u8>) -> Result<Answer> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        Error::io(format!("connecting to {}", socket.display()), &e)
            .with_hint("is `broker serve` running there?")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::transient(format!("talking to {}: {e}", socket.display())))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "broker")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::internal(format!("building a request: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Error::transient(format!("talking to {}: {e}", socket.display())))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = Limited::new(response.into_body(), ANSWER_LIMIT)
        .collect()
        .await
        .map_err(|e| Error::transient(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok(Answer {
        status,
        body: zeroize::Zeroizing::new(body.to_vec()),
        retry_after,
    })
}

/// The daemon's error: its status, kind and message.
pub fn api_error(answer: &Answer) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        kind: String,
        message: String,
    }
    match serde_json::from_slice::<Body>(&answer.body) {
        Ok(b) => {
            let kind = match answer.status {
                403 => ErrorKind::PolicyDenied,
                404 => ErrorKind::NotFound,
                503 | 429 => ErrorKind::Transient,
                400 | 413 => ErrorKind::InvalidConfig,
                _ => ErrorKind::UnexpectedAnswer,
            };
            Error::new(
                kind,
                format!(
                    "the daemon refused ({} {}): {}",
                    answer.status, b.error.kind, b.error.message
                ),
            )
        }
        Err(_) => Error::new(
            ErrorKind::UnexpectedAnswer,
            format!(
                "the daemon answered {} without an error body",
                answer.status
            ),
        ),
    }
}

/// Asks the daemon at `socket` for credential `name`.
pub async fn request_credential(
    socket: &Path,
    name: &str,
    request: &CredentialRequest,
) -> Result<CredentialResponse> {
    let body = serde_json::to_vec(request).map_err(|e| Error::internal(e.to_string()))?;
    let answer = call(socket, "POST", &format!("/v1/credentials/{name}"), body).await?;
    if answer.status != 200 {
        return Err(api_error(&answer));
    }
    serde_json::from_slice(&answer.body).map_err(|_| {
        Error::new(
            ErrorKind::UnexpectedAnswer,
            "the daemon's answer is not a credential",
        )
    })
}

/// One row of `GET /v1/manifest`, as much as a client needs to deliver it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ManifestRow {
    /// The credential's name.
    pub credential: String,
    /// The variable the task sees.
    pub delivered_as: String,
    /// Env or file.
    pub kind: DeliveryKind,
}

/// The credentials the daemon at `socket` lets the caller request (`GET /v1/manifest`).
pub async fn manifest(socket: &Path) -> Result<Vec<ManifestRow>> {
    #[derive(serde::Deserialize)]
    struct Body {
        entries: Vec<ManifestRow>,
    }
    let answer = call(socket, "GET", "/v1/manifest", Vec::new()).await?;
    if answer.status != 200 {
        return Err(api_error(&answer));
    }
    serde_json::from_slice::<Body>(&answer.body)
        .map(|b| b.entries)
        .map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "the daemon's answer is not a manifest",
            )
        })
}

/// Obtains `only` (every credential the manifest offers the caller when empty) from the daemon
/// at `socket` and prepares them for a child process, each under the variable and as the kind
/// the manifest names ([`Delivery::from_credentials`]): what `broker run --from` delivers.
pub async fn deliver(socket: &Path, only: &[String]) -> Result<Delivery> {
    let offered = manifest(socket).await?;
    let rows: Vec<&ManifestRow> = if only.is_empty() {
        offered.iter().collect()
    } else {
        only.iter()
            .map(|name| {
                offered
                    .iter()
                    .find(|r| r.credential == *name)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotFound,
                            format!(
                                "the daemon does not offer `{}` to this caller",
                                broker_core::grammar::elide(name)
                            ),
                        )
                        .with_hint("its manifest lists what you may request: GET /v1/manifest")
                    })
            })
            .collect::<Result<_>>()?
    };
    let mut obtained = Vec::with_capacity(rows.len());
    for row in &rows {
        let answer =
            request_credential(socket, &row.credential, &CredentialRequest::default()).await?;
        obtained.push(credential_of(answer));
    }
    Delivery::from_credentials(
        rows.iter()
            .zip(&obtained)
            .map(|(r, c)| (r.credential.as_str(), r.delivered_as.as_str(), r.kind, c)),
    )
}

/// The daemon's answer as a [`Credential`] (its lease is the daemon's business).
fn credential_of(answer: CredentialResponse) -> Credential {
    let mut credential = Credential::new(answer.value);
    for (var, value) in answer.companions {
        credential = credential.with_companion(var, value);
    }
    for var in answer.path_vars {
        credential = credential.with_path_var(var);
    }
    for (var, value) in answer.plain_env {
        credential = credential.with_plain_env(var, value);
    }
    if answer.companions_only {
        credential = credential.companions_only();
    }
    credential
}
