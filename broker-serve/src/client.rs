//! A client for the daemon: over its unix socket, or over TLS (`https://host:port`) with a
//! client certificate (mTLS) and/or a bearer token read from a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker_core::{Credential, Delivery, DeliveryKind, Error, ErrorKind, Result, SecretValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use crate::api::{CredentialRequest, CredentialResponse};
use crate::proxy::{ProxyGrant, ProxyRequest};

/// The most an answer may hold.
const ANSWER_LIMIT: usize = 1024 * 1024;

/// The largest token file read.
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// How a client proves who it is over TLS, and whom it trusts (`--ca`, `--cert`/`--key`,
/// `--token-file`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// The CA that signed the daemon's certificate (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// A file holding a JWT to send as `Authorization: Bearer` (re-read on every request, as
    /// platforms rotate projected tokens in place).
    pub token_file: Option<PathBuf>,
}

/// Where the daemon is and how to talk to it.
#[derive(Clone)]
pub struct Endpoint {
    target: Target,
    token_file: Option<PathBuf>,
}

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tls {
        /// `host:port`, to connect to.
        authority: String,
        /// The name the certificate must carry.
        server_name: rustls::pki_types::ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl From<&Path> for Endpoint {
    fn from(socket: &Path) -> Endpoint {
        Endpoint::unix(socket)
    }
}

impl From<&PathBuf> for Endpoint {
    fn from(socket: &PathBuf) -> Endpoint {
        Endpoint::unix(socket)
    }
}

impl Endpoint {
    /// The daemon's unix socket at `socket`.
    pub fn unix(socket: &Path) -> Endpoint {
        Endpoint {
            target: Target::Unix(socket.to_path_buf()),
            token_file: None,
        }
    }

    /// `--from`: a socket path, or `https://HOST:PORT` (then `options` say how to prove who
    /// the client is). A token file is sent on either.
    pub fn parse(from: &str, options: &ClientOptions) -> Result<Endpoint> {
        if options.cert.is_some() != options.key.is_some() {
            return Err(Error::invalid_config("--cert and --key go together"));
        }
        let target = match from.strip_prefix("https://") {
            Some(rest) => {
                let authority = rest.trim_end_matches('/');
                let (host, port) = authority
                    .rsplit_once(':')
                    .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                    .ok_or_else(|| {
                        Error::invalid_config(format!(
                            "`{}` is not https://HOST:PORT",
                            broker_core::grammar::elide(from)
                        ))
                    })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|_| {
                        Error::invalid_config(format!(
                            "`{}` is not a host name or address",
                            broker_core::grammar::elide(host)
                        ))
                    })?;
                let identity = options.cert.as_deref().zip(options.key.as_deref());
                Target::Tls {
                    authority: format!(
                        "{}:{port}",
                        if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host.to_string()
                        }
                    ),
                    server_name,
                    tls: crate::tls::client_config(options.ca.as_deref(), identity)?,
                }
            }
            None if from.contains("://") => {
                return Err(Error::invalid_config(format!(
                    "`{}` is neither a socket path nor https://HOST:PORT",
                    broker_core::grammar::elide(from)
                )));
            }
            None => {
                if options.cert.is_some() || options.ca.is_some() {
                    return Err(Error::invalid_config(
                        "--ca, --cert and --key are for https:// daemons; a unix socket \
                         identifies its peer by uid",
                    ));
                }
                Target::Unix(PathBuf::from(from))
            }
        };
        Ok(Endpoint {
            target,
            token_file: options.token_file.clone(),
        })
    }

    /// The socket path or URL, for messages.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Unix(p) => p.display().to_string(),
            Target::Tls { authority, .. } => format!("https://{authority}"),
        }
    }

    fn authorization(&self) -> Result<Option<Zeroizing<String>>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let bytes = broker_core::localfile::read(path, MAX_TOKEN_FILE).map_err(|e| {
            e.to_error(
                format!("the token file {}", path.display()),
                ErrorKind::InvalidConfig,
            )
        })?;
        let token = std::str::from_utf8(&bytes)
            .map(str::trim)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Error::invalid_config(format!(
                    "the token file {} does not hold a token",
                    path.display()
                ))
            })?;
        Ok(Some(Zeroizing::new(format!("Bearer {token}"))))
    }
}

/// An HTTP answer: status and body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (may hold a value: wiped on drop).
    pub body: Zeroizing<Vec<u8>>,
    /// `Retry-After` in seconds, on a 429.
    pub retry_after: Option<u64>,
}

/// Sends one request to the daemon at `to` and reads the whole answer.
pub async fn call(
    to: impl Into<Endpoint>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer> {
    let to = to.into();
    let label = to.describe();
    let connect_error = |e: std::io::Error| {
        Error::io(format!("connecting to {label}"), &e)
            .with_hint("is `broker serve` running there?")
    };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "broker")
        .header("content-type", "application/json");
    if let Some(auth) = to.authorization()? {
        let mut value = hyper::header::HeaderValue::from_str(&auth)
            .map_err(|_| Error::invalid_config("the token is not a valid header value"))?;
        value.set_sensitive(true);
        request = request.header(hyper::header::AUTHORIZATION, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::internal(format!("building a request: {e}")))?;
    let talk = |e: hyper::Error| Error::transient(format!("talking to {label}: {e}"));
    let response = match &to.target {
        Target::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(connect_error)?;
            send(stream, request).await.map_err(talk)?
        }
        Target::Tls {
            authority,
            server_name,
            tls,
        } => {
            let stream = tokio::net::TcpStream::connect(authority.as_str())
                .await
                .map_err(connect_error)?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(server_name.clone(), stream)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::AuthenticationFailed,
                        format!("the TLS handshake with {label} failed: {e}"),
                    )
                })?;
            send(stream, request).await.map_err(talk)?
        }
    };
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
        body: Zeroizing::new(body.to_vec()),
        retry_after,
    })
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<Full<Bytes>>,
) -> std::result::Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await
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
                401 => ErrorKind::AuthenticationFailed,
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

/// Asks the daemon at `to` for credential `name`.
pub async fn request_credential(
    to: &Endpoint,
    name: &str,
    request: &CredentialRequest,
) -> Result<CredentialResponse> {
    let body = serde_json::to_vec(request).map_err(|e| Error::internal(e.to_string()))?;
    let answer = call(to.clone(), "POST", &format!("/v1/credentials/{name}"), body).await?;
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
    /// Placeholder mode: where the daemon's proxy sends the value (`proxy.hosts`). When
    /// there are any, the value stays in the daemon; a run gets a placeholder and the daemon's
    /// proxy (`POST /v1/proxy`).
    #[serde(default)]
    pub proxy_destinations: Vec<serde_json::Value>,
}

impl ManifestRow {
    /// Whether the credential is in placeholder mode.
    pub fn is_placeholder(&self) -> bool {
        !self.proxy_destinations.is_empty()
    }
}

/// The credentials the daemon at `to` lets the caller request (`GET /v1/manifest`).
pub async fn manifest(to: &Endpoint) -> Result<Vec<ManifestRow>> {
    #[derive(serde::Deserialize)]
    struct Body {
        entries: Vec<ManifestRow>,
    }
    let answer = call(to.clone(), "GET", "/v1/manifest", Vec::new()).await?;
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

/// Starts a proxy in the daemon at `to` for `credentials` (`POST /v1/proxy`).
pub async fn start_proxy(to: &Endpoint, request: &ProxyRequest) -> Result<ProxyGrant> {
    let body = serde_json::to_vec(request).map_err(|e| Error::internal(e.to_string()))?;
    let answer = call(to.clone(), "POST", "/v1/proxy", body).await?;
    if answer.status != 201 {
        return Err(api_error(&answer));
    }
    serde_json::from_slice(&answer.body).map_err(|_| {
        Error::new(
            ErrorKind::UnexpectedAnswer,
            "the daemon's answer is not a proxy grant",
        )
    })
}

/// Stops the daemon's proxy `id` (`DELETE /v1/proxy/{id}`).
pub async fn stop_proxy(to: &Endpoint, id: &str) -> Result<()> {
    let answer = call(to.clone(), "DELETE", &format!("/v1/proxy/{id}"), Vec::new()).await?;
    if answer.status != 204 {
        return Err(api_error(&answer));
    }
    Ok(())
}

/// Obtains `only` (every credential the manifest offers the caller when empty) from the daemon
/// at `to` and prepares them for a child process, each under the variable and as the kind
/// the manifest names ([`Delivery::from_credentials`]): what `broker run --from` delivers.
/// Placeholder-mode credentials are delivered as their placeholders, with the daemon's proxy
/// for them in the returned grant (stop it with [`stop_proxy`] when the run ends).
pub async fn deliver(to: &Endpoint, only: &[String]) -> Result<(Delivery, Option<ProxyGrant>)> {
    let offered = manifest(to).await?;
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
    let proxied: Vec<String> = rows
        .iter()
        .filter(|r| r.is_placeholder())
        .map(|r| r.credential.clone())
        .collect();
    let grant = if proxied.is_empty() {
        None
    } else {
        let request = ProxyRequest {
            credentials: proxied,
            ..ProxyRequest::default()
        };
        Some(start_proxy(to, &request).await?)
    };
    let delivered = deliver_rows(to, &rows, grant.as_ref()).await;
    if delivered.is_err()
        && let Some(g) = &grant
    {
        // Best effort: the daemon stops it at the end of its lifetime otherwise.
        let _ = stop_proxy(to, &g.id).await;
    }
    Ok((delivered?, grant))
}

async fn deliver_rows(
    to: &Endpoint,
    rows: &[&ManifestRow],
    grant: Option<&ProxyGrant>,
) -> Result<Delivery> {
    let mut obtained = Vec::with_capacity(rows.len());
    for row in rows {
        let placeholder = grant.and_then(|g| {
            g.placeholders
                .iter()
                .find(|p| p.credential == row.credential)
        });
        let credential = match placeholder {
            Some(p) => Credential::new(SecretValue::from(p.placeholder.clone())),
            None => credential_of(
                request_credential(to, &row.credential, &CredentialRequest::default()).await?,
            ),
        };
        obtained.push(credential);
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
