//! Failure classification: what a Vault answer (or its absence) means, as a broker error.
//! Never quotes a body that could hold a value.

use broker_core::{Error, ErrorKind};

use zeroize::Zeroizing;

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

pub(crate) fn safe_messages(body: &[u8]) -> (Vec<String>, bool) {
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

/// A transport error as a failure: TLS errors (found as a `rustls::Error` in the source chain,
/// also inside an `io::Error`) are not retried; the rest are connection failures.
pub(crate) fn transport_failure(e: &reqwest::Error, attempt: u32) -> Failure {
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

/// Why an authenticated request failed: obtaining the broker's token, or the request itself.
pub(crate) enum CallError {
    Auth(Error),
    Http(Failure),
}

impl CallError {
    pub(crate) fn into_error(self, what: &str, address: &str) -> Error {
        match self {
            CallError::Auth(e) => e,
            CallError::Http(f) => f.into_error(what, address),
        }
    }
}
