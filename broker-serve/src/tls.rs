//! TLS for the TCP listener (rustls, ring provider) and for the client: PEM files read as
//! capped regular files, client certificates verified against `serve.tls.client_ca` with
//! webpki (expiry, chain, key usage).

use std::path::Path;
use std::sync::Arc;

use broker_core::{Error, ErrorKind, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::config::{ClientAuth, TlsSettings};

/// The largest PEM file read.
const MAX_PEM: u64 = 1 << 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    broker_core::localfile::read(path, MAX_PEM).map_err(|e| {
        e.to_error(
            format!("the {what} {}", path.display()),
            ErrorKind::InvalidConfig,
        )
    })
}

/// The certificates in the PEM file at `path` (at least one).
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_pem(path, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::invalid_config(format!(
                "the {what} {} is not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::invalid_config(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`. The error never quotes the file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read_pem(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| Error::invalid_config(format!("{} holds no PEM private key", path.display())))
}

fn roots(path: &Path, what: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, what)? {
        roots.add(cert).map_err(|e| {
            Error::invalid_config(format!("a bad certificate in {}: {e}", path.display()))
        })?;
    }
    Ok(roots)
}

/// The server side of `serve.tls`: its certificate and key, and client certificate
/// verification per `client_auth`. HTTP/1.1 only.
pub(crate) fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup failed: {e}")))?;
    let builder = match (&settings.client_ca, settings.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "client CA file")?),
                provider,
            );
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| {
                Error::invalid_config(format!("cannot verify clients with {}: {e}", ca.display()))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            certificates(&settings.cert, "server certificate")?,
            private_key(&settings.key)?,
        )
        .map_err(|e| {
            Error::invalid_config(format!(
                "the server certificate {} and key {} do not fit: {e}",
                settings.cert.display(),
                settings.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS settings: the CA that signs the daemon's certificate (the system's roots
/// without one) and an optional client certificate and key (mTLS).
pub(crate) fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup failed: {e}")))?;
    let builder = match ca {
        Some(ca) => builder.with_root_certificates(roots(ca, "CA file")?),
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| Error::internal(format!("cannot load the system trust store: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert, "client certificate")?, private_key(key)?)
            .map_err(|e| {
                Error::invalid_config(format!(
                    "the client certificate {} and key {} do not fit: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
