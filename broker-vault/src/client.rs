//! A thin Vault HTTP client: TLS setup, the namespace header and retries (failure
//! classification is in `errors`). Never logs or returns a body that could hold a value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::{Error, ErrorKind, SecretValue};
use reqwest::header::{HeaderMap, HeaderValue};
use zeroize::Zeroizing;

use crate::errors::{Failure, safe_messages, transport_failure};
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
    crate::auth::read_local(path, &format!("Vault {what}"))
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
