//! A client for the daemon's unix socket.

use std::path::Path;

use broker_core::{Error, ErrorKind, Result};
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
