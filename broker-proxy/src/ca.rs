//! The run's certificate authority: generated when the proxy starts, its key only in this
//! process's memory, valid from a minute before the start for [`RunCa::generate`]'s
//! `validity`. Leaf certificates are made per CONNECT host on first use and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use broker_core::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The most leaf certificates kept; past it the cache is emptied.
const MAX_LEAVES: usize = 1024;

/// The per-run CA. Not `Clone`; the key never leaves it.
pub struct RunCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    provider: Arc<rustls::crypto::CryptoProvider>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for RunCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn ca_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("proxy CA: {what}: {e}"))
}

impl RunCa {
    /// A new CA valid for `validity` from now.
    pub fn generate(validity: Duration) -> Result<RunCa> {
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::minutes(1);
        let not_after = now + validity;
        let key = KeyPair::generate().map_err(|e| ca_error("key", e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| ca_error("params", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(
            DnType::CommonName,
            format!("broker run proxy CA {}", std::process::id()),
        );
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key)
            .map_err(|e| ca_error("self-sign", e))?;
        Ok(RunCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            not_before,
            not_after,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// A TLS server config presenting a certificate for `host` (a normalised name or IP),
    /// signed by this CA; cached per host.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>> {
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = leaves.get(host) {
            return Ok(Arc::clone(c));
        }
        let key = KeyPair::generate().map_err(|e| ca_error("leaf key", e))?;
        let mut params =
            CertificateParams::new(vec![host.to_string()]).map_err(|e| ca_error("leaf", e))?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| ca_error("leaf signature", e))?;
        let chain = vec![cert.der().clone(), self.der.clone()];
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error("tls", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| ca_error("tls", e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), Arc::clone(&config));
        Ok(config)
    }
}
