//! The one HTTP/TLS stack: the workspace's reqwest (rustls with the ring provider), handed to
//! the Azure SDK as its transport, with the broker's retry budget.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport};
use broker_core::{Error, Result};

/// Attempts per operation, the SDK's own retries included (the broker's limit: 3 retries).
pub(crate) const ATTEMPTS: u32 = 4;
/// The largest CA file read.
const MAX_CA_FILE: u64 = 1 << 20;

/// Resolves `localhost` and every `*.localhost` name to 127.0.0.1 without asking DNS
/// (RFC 6761 §6.3, as curl and browsers do), everything else through the system resolver.
/// Lets a private test or development endpoint be named like a vault
/// (`kv1.vault.localhost`) without touching the network.
struct LoopbackNames;

impl reqwest::dns::Resolve for LoopbackNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        Box::pin(async move {
            if host == "localhost" || host.ends_with(".localhost") {
                let addrs: reqwest::dns::Addrs =
                    Box::new(std::iter::once(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
                return Ok(addrs);
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

fn tls_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup failed: {e}")))?;
    let builder = match ca_cert {
        Some(path) => {
            let pem = broker_core::localfile::read(path, MAX_CA_FILE).map_err(|e| {
                e.to_error(
                    format_args!("cannot read the CA file {}", path.display()),
                    broker_core::ErrorKind::InvalidConfig,
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
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
            }
            if roots.is_empty() {
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
    Ok(builder.with_no_client_auth())
}

/// The reqwest client every SDK call of one provider goes through.
pub(crate) fn client(ca_cert: Option<&Path>) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(ca_cert)?)
        .dns_resolver(Arc::new(LoopbackNames))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// SDK client options: the given transport, at most [`ATTEMPTS`] attempts (the SDK's
/// exponential policy honours `Retry-After` on 429 and 503), for the Azure public cloud or the
/// configured authority.
pub(crate) fn client_options(
    http: &reqwest::Client,
    authority_host: Option<&str>,
) -> ClientOptions {
    let mut options = ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: ATTEMPTS - 1,
            max_total_elapsed: azure_core::time::Duration::seconds(30),
            max_delay: azure_core::time::Duration::seconds(8),
        }),
        ..ClientOptions::default()
    };
    if let Some(host) = authority_host {
        let mut custom = azure_core::cloud::CustomConfiguration::default();
        custom.authority_host = host.to_string();
        options.cloud = Some(Arc::new(custom.into()));
    }
    options
}
