//! A thin Vault HTTP client: TLS setup, the namespace header, retries and failure
//! classification. Never logs or returns a body that could hold a value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::{Error, ErrorKind, SecretValue};
use reqwest::header::{HeaderMap, HeaderValue};
use zeroize::Zeroizing;

/// At most this many retries of a transient failure.
pub const MAX_RETRIES: u32 = 3;

/// TLS and connection options, with file paths already made absolute.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `https://host:port` or `http://host:port`, without a trailing slash.
    pub address: String,
    /// CA bundle replacing the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The first retry delay; doubles per retry, plus jitter.
    pub backoff: Duration,
}

/// An HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
}

/// A successful (2xx) answer.
pub struct Reply {
    /// The body (may hold values).
    pub body: Zeroizing<Vec<u8>>,
}

impl Reply {
    /// The body as JSON (`null` for an empty body). The error never quotes the body.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedAnswer,
                "Vault answered with a body that is not JSON",
            )
            .with_hint("check that `address` (or $VAULT_ADDR) names the Vault server itself, not a proxy or a web page")
        })
    }
}

/// Why a request failed.
pub enum Failure {
    /// The server answered with a non-2xx status.
    Status {
        /// The HTTP status.
        status: u16,
        /// Vault's `errors` messages that are known to be value-free.
        safe_messages: Vec<String>,
        /// Whether the server said it is sealed.
        sealed: bool,
        /// The body, kept for callers that inspect known fields (KV metadata on 404).
        body: Zeroizing<Vec<u8>>,
        /// How many attempts were made.
        attempts: u32,
    },
    /// No answer: connection refused, timeout.
    Connect {
        /// A value-free description.
        detail: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The TLS handshake failed: the server's certificate is not trusted, or the server
    /// refused the client (certificate). Retrying cannot help.
    Tls {
        /// A value-free description (rustls's error).
        detail: String,
        /// Which side's certificate was the problem, if known.
        cause: TlsCause,
    },
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsCause {
    /// The server's certificate was not accepted (untrusted issuer, wrong name, expired).
    ServerCertificate,
    /// The server refused the client's certificate, or its absence (mTLS).
    ClientCertificate,
    /// Anything else (no common protocol version or cipher suite, ...).
    Other,
}

impl TlsCause {
    fn of(e: &rustls::Error) -> TlsCause {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType => TlsCause::ServerCertificate,
            rustls::Error::AlertReceived(
                A::CertificateRequired
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied,
            ) => TlsCause::ClientCertificate,
            _ => TlsCause::Other,
        }
    }
}

impl Failure {
    /// The HTTP status, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } => Some(*status),
            Failure::Connect { .. } | Failure::Tls { .. } => None,
        }
    }

    /// Whether another attempt could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Status { status, sealed, .. } => {
                !sealed && (*status == 429 || (500..600).contains(status))
            }
            Failure::Connect { .. } => true,
            Failure::Tls { .. } => false,
        }
    }

    /// The body of a status failure parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        match self {
            Failure::Status { body, .. } => serde_json::from_slice(body).ok(),
            Failure::Connect { .. } | Failure::Tls { .. } => None,
        }
    }

    /// A broker error: `what` says what was being done ("reading secret/data/app"),
    /// `address` names the server. Never includes a value.
    pub fn into_error(self, what: &str, address: &str) -> Error {
        match self {
            // Connection failures and 429/5xx were already retried by `send`: the final error
            // is marked exhausted (an alert, with the true attempt count) and non-retryable so
            // the broker's retry layer does not multiply attempts (at most 3 retries in all).
            // The kind stays `Transient` (exit code 75).
            Failure::Connect { detail, attempts } => Error::transient(format!(
                "cannot reach Vault at {address} while {what} ({detail}; {attempts} attempts)"
            ))
            .retryable(false)
            .exhausted_after(attempts)
            .with_hint("check `address` (or $VAULT_ADDR), the network, and TLS settings (ca_cert)"),
            Failure::Tls {
                detail,
                cause: TlsCause::ClientCertificate,
            } => Error::authentication_failed(format!(
                "TLS handshake with Vault at {address} failed while {what}: the server refused \
                 the client certificate ({detail}; 1 attempt)"
            ))
            .with_hint(
                "the listener requires a client certificate: set `client_cert` and `client_key` \
                 (or $VAULT_CLIENT_CERT/$VAULT_CLIENT_KEY) to one signed by a CA it trusts",
            ),
            Failure::Tls {
                detail,
                cause: TlsCause::ServerCertificate,
            } => Error::invalid_config(format!(
                "TLS handshake with Vault at {address} failed while {what}: the server's \
                 certificate was not accepted ({detail}; 1 attempt)"
            ))
            .with_hint(
                "set `ca_cert` (or $VAULT_CACERT) to the CA that signed the server's certificate, \
                 and check that `address` names a host the certificate is for",
            ),
            Failure::Tls { detail, .. } => Error::invalid_config(format!(
                "TLS handshake with Vault at {address} failed while {what} ({detail}; 1 attempt)"
            ))
            .with_hint(
                "check the TLS settings (ca_cert, client_cert, client_key) and the listener",
            ),
            Failure::Status { sealed: true, .. } => Error::transient(format!(
                "Vault at {address} is sealed; cannot finish {what}"
            ))
            .retryable(false)
            .with_hint("unseal it (`bao operator unseal` / `vault operator unseal`) and retry"),
            Failure::Status {
                status,
                safe_messages,
                attempts,
                ..
            } => {
                let detail = if safe_messages.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {}", safe_messages.join("; "))
                };
                match status {
                    400 => Error::invalid_config(format!("Vault rejected {what} ({detail})"))
                        .with_hint("check the path and the `?` parameters of the reference"),
                    401 | 403 => Error::permission_denied(format!(
                        "Vault denied {what} ({detail})"
                    ))
                    .with_hint(
                        "the broker's Vault token lacks a policy for this path, or has expired",
                    ),
                    404 => Error::not_found(format!("nothing at the path while {what} ({detail})")),
                    405 => Error::new(
                        ErrorKind::Unsupported,
                        format!("Vault does not support {what} ({detail})"),
                    ),
                    412 => Error::new(
                        ErrorKind::Transient,
                        format!("Vault refused {what} ({detail})"),
                    )
                    .retryable(false)
                    .with_hint("a concurrent write changed the secret; retry the operation"),
                    429 | 500..=599 => Error::transient(format!(
                        "Vault failed while {what} ({detail}; gave up after {attempts} attempts)"
                    ))
                    .retryable(false)
                    .exhausted_after(attempts),
                    // Redirects are never followed (the token would go wherever they point).
                    300..=399 => Error::new(
                        ErrorKind::UnexpectedAnswer,
                        format!(
                            "unexpected answer from Vault at {address} while {what} ({detail}: a redirect, which the broker does not follow)"
                        ),
                    )
                    .with_hint("point `address` (or $VAULT_ADDR) at the server the redirect names, after checking it"),
                    _ => Error::new(
                        ErrorKind::UnexpectedAnswer,
                        format!("unexpected answer from Vault at {address} while {what} ({detail})"),
                    ),
                }
            }
        }
    }
}

/// Vault error messages known not to echo request input.
const SAFE_MESSAGE_PREFIXES: &[&str] = &[
    "permission denied",
    "invalid token",
    "missing client token",
    "no handler for route",
    "unsupported path",
    "Vault is sealed",
    "OpenBao is sealed",
    "invalid role or secret ID",
    "invalid role ID",
    "invalid secret id",
    "invalid request",
    "role not found",
    "role \"",
    "invalid role name",
    "unknown role",
    "namespace not authorized",
    "service account name not authorized",
    "error validating token",
    "error validating claims",
    "invalid audience",
    "invalid subject",
    "invalid lease",
    "lease not found",
    "lease is not renewable",
    "token not found",
    "invalid accessor",
    "upstream error",
    "local node not active",
    "check-and-set parameter",
    "unsupported operation",
    "no value found",
    "token policies",
    "child policies",
    "namespace not found",
];

fn safe_messages(body: &[u8]) -> (Vec<String>, bool) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut sealed = false;
    for m in v
        .get("errors")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
    {
        if m.contains("is sealed") {
            sealed = true;
        }
        // Multi-errors read "N errors occurred:\n\t* first\n\t* second".
        let lines: Vec<&str> = if m.contains(" occurred:") {
            m.lines()
                .filter_map(|l| l.trim().strip_prefix("* "))
                .collect()
        } else {
            m.lines().take(1).collect()
        };
        for line in lines {
            let line = line.trim();
            if line.len() <= 160 && SAFE_MESSAGE_PREFIXES.iter().any(|p| line.starts_with(p)) {
                out.push(line.to_string());
            }
        }
    }
    (out, sealed)
}

/// The HTTP client of one provider.
pub struct Client {
    http: reqwest::Client,
    options: ClientOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.options.address)
            .field("namespace", &self.options.namespace)
            .finish_non_exhaustive()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        Error::io(
            format_args!("cannot read the Vault {what} {}", path.display()),
            &e,
        )
    })
}

fn tls_config(options: &ClientOptions) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup failed: {e}")))?;
    let builder = match &options.ca_cert {
        Some(path) => {
            let pem = read_pem(path, "CA certificate file")?;
            let mut roots = rustls::RootCertStore::empty();
            let mut count = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    Error::invalid_config(format!(
                        "{} is not a PEM certificate file: {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::invalid_config(format!("bad CA certificate in {}: {e}", path.display()))
                })?;
                count += 1;
            }
            if count == 0 {
                return Err(Error::invalid_config(format!(
                    "{} holds no PEM certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| Error::internal(format!("cannot load the system trust store: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    match &options.client_cert {
        Some((cert_path, key_path)) => {
            let pem = read_pem(cert_path, "client certificate")?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    Error::invalid_config(format!(
                        "{} is not a PEM certificate file: {e}",
                        cert_path.display()
                    ))
                })?;
            let key_pem = read_pem(key_path, "client key")?;
            // The parse error of a key file never quotes the key.
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                Error::invalid_config(format!("{} holds no PEM private key", key_path.display()))
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                Error::invalid_config(format!("client certificate and key do not fit: {e}"))
            })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

impl Client {
    /// Builds the client; reads the CA and client certificate files.
    pub fn new(options: ClientOptions) -> Result<Client, Error> {
        let mut headers = HeaderMap::new();
        headers.insert("X-Vault-Request", HeaderValue::from_static("true"));
        if let Some(ns) = &options.namespace {
            let value = HeaderValue::from_str(ns).map_err(|_| {
                Error::invalid_config(format!("namespace `{ns}` is not a valid header value"))
            })?;
            headers.insert("X-Vault-Namespace", value);
        }
        let builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none());
        // Always hand reqwest a rustls config with an explicit (ring) provider, so the build
        // works whichever rustls provider features other crates enable.
        let tls = if options.address.starts_with("https://") {
            tls_config(&options)?
        } else {
            tls_config(&ClientOptions::default())?
        };
        let builder = builder.tls_backend_preconfigured(tls);
        let http = builder
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, options })
    }

    /// The server address.
    pub fn address(&self) -> &str {
        &self.options.address
    }

    /// One request, retried (≤ [`MAX_RETRIES`] times, exponential backoff with jitter) on
    /// transient failures. `path` is relative to `/v1/`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretValue>,
        body: Option<&[u8]>,
    ) -> Result<Reply, Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_once(method, path, token, body, attempt).await {
                Err(f) if f.is_transient() && attempt <= MAX_RETRIES => {
                    let base = self.options.backoff * 2u32.pow(attempt - 1);
                    let jitter = base.mul_f64(rand::random::<f64>());
                    tracing::debug!(path, attempt, "transient Vault failure; retrying");
                    tokio::time::sleep(base + jitter).await;
                }
                other => return other,
            }
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretValue>,
        body: Option<&[u8]>,
        attempt: u32,
    ) -> Result<Reply, Failure> {
        let url = format!("{}/v1/{}", self.options.address, path);
        let mut req = match method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
            Method::Put => self.http.put(&url),
        };
        if let Some(token) = token {
            let mut value =
                HeaderValue::from_bytes(token.expose()).map_err(|_| Failure::Connect {
                    detail: "the Vault token is not a valid header value".into(),
                    attempts: attempt,
                })?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(body) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_vec());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_failure(&e, attempt))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_failure(&e, attempt))?;
        let body = Zeroizing::new(bytes.to_vec());
        if (200..300).contains(&status) {
            return Ok(Reply { body });
        }
        let (safe_messages, sealed) = safe_messages(&body);
        Err(Failure::Status {
            status,
            safe_messages,
            sealed: sealed && status == 503,
            body,
            attempts: attempt,
        })
    }
}

/// A transport error as a failure: TLS errors (found as a `rustls::Error` in the source chain,
/// also inside an `io::Error`) are not retried; the rest are connection failures.
fn transport_failure(e: &reqwest::Error, attempt: u32) -> Failure {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = rustls_error(s) {
            return Failure::Tls {
                detail: tls.to_string(),
                cause: TlsCause::of(tls),
            };
        }
        source = s.source();
    }
    Failure::Connect {
        detail: describe(e),
        attempts: attempt,
    }
}

/// `e` as a `rustls::Error`, looking inside (nested) `io::Error`s, whose `source()` skips
/// the error they wrap.
fn rustls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => e = inner,
            None => return None,
        }
    }
}

/// A value-free description of a transport error (reqwest's Display names the URL, which
/// holds only the address and path).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut root = String::new();
    while let Some(s) = source {
        root = s.to_string();
        source = s.source();
    }
    if root.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {root}")
    }
}
