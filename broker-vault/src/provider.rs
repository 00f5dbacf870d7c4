//! The Vault provider: construction, the shared HTTP client, and the `CredentialProvider`
//! impl, which hands each operation to `kv` (resolve, rotate) or `mint` (mint, revoke).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_core::{
    Badge, Check, Credential, CredentialProvider, Destination, Error, Reference, Request,
    ResolveRef, Result, Rotation, SecretValue, async_trait, egress,
};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::auth::Session;
use crate::client::{Client, ClientOptions, Method};
use crate::kv::Mount;
use crate::settings::{Auth, DEFAULT_ADDRESS, Settings, parse_timeout};

/// Reads, mints, revokes and rotates through one Vault server.
///
/// Built without I/O; it connects, reads TLS files and authenticates on first use.
#[derive(Clone)]
pub struct VaultProvider {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) auth: Auth,
    pub(crate) base_dir: PathBuf,
    pub(crate) options: ClientOptions,
    client: Mutex<Option<Arc<Client>>>,
    pub(crate) session: tokio::sync::Mutex<Option<Session>>,
    pub(crate) mounts: Mutex<Vec<Mount>>,
}

impl std::fmt::Debug for VaultProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultProvider")
            .field("address", &self.inner.options.address)
            .field("namespace", &self.inner.options.namespace)
            .field("auth", &self.inner.auth.method())
            .finish_non_exhaustive()
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(crate) fn parse_ref(text: &str, key: &str) -> Result<Reference> {
    text.parse().map_err(|e: Error| {
        Error::invalid_config(format!("`backends.vault.auth.{key}`: {}", e.message()))
    })
}

pub(crate) fn to_secret(node: &Value) -> Result<SecretValue> {
    broker_core::json::to_secret(node)
}

pub(crate) fn json_body<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>> {
    broker_core::json::to_vec_exact(value)
}

impl VaultProvider {
    /// A provider from `backends.vault` settings; relative paths are resolved against
    /// `base_dir`. `$VAULT_ADDR`, `$VAULT_CACERT`, `$VAULT_CLIENT_CERT`/`$VAULT_CLIENT_KEY` and
    /// `$VAULT_NAMESPACE` are the defaults. No I/O.
    pub fn new(settings: Settings, base_dir: &Path) -> Result<Self> {
        let address = settings
            .address
            .clone()
            .or_else(|| env_nonempty("VAULT_ADDR"))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let address = address.trim_end_matches('/').to_string();
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(Error::invalid_config(format!(
                "`backends.vault.address` must start with http:// or https://, got `{address}`"
            )));
        }
        let path = |p: String| broker_core::provider::resolve_path(base_dir, &p);
        let ca_cert = settings
            .ca_cert
            .clone()
            .or_else(|| env_nonempty("VAULT_CACERT"))
            .map(path);
        let client_cert = match (
            settings
                .client_cert
                .clone()
                .or_else(|| env_nonempty("VAULT_CLIENT_CERT")),
            settings
                .client_key
                .clone()
                .or_else(|| env_nonempty("VAULT_CLIENT_KEY")),
        ) {
            (Some(c), Some(k)) => Some((path(c), path(k))),
            (None, None) => None,
            _ => {
                return Err(Error::invalid_config(
                    "`backends.vault`: give both `client_cert` and `client_key`, or neither",
                ));
            }
        };
        let timeout = parse_timeout(settings.timeout.as_deref())
            .map_err(|m| Error::invalid_config(format!("`backends.vault.timeout`: {m}")))?;
        for (key, text) in settings.auth.references() {
            parse_ref(text, key)?;
        }
        let options = ClientOptions {
            address,
            ca_cert,
            client_cert,
            namespace: settings
                .namespace
                .clone()
                .or_else(|| env_nonempty("VAULT_NAMESPACE")),
            timeout,
            backoff: Duration::from_millis(200),
        };
        Ok(VaultProvider {
            inner: Arc::new(Inner {
                auth: settings.auth,
                base_dir: base_dir.to_path_buf(),
                options,
                client: Mutex::new(None),
                session: tokio::sync::Mutex::new(None),
                mounts: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Sets the first retry delay (default 200 ms; doubles per retry, plus jitter).
    #[must_use]
    pub fn with_backoff(self, backoff: Duration) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => {
                return VaultProvider { inner: shared };
            }
        };
        inner.options.backoff = backoff;
        VaultProvider {
            inner: Arc::new(inner),
        }
    }

    /// The server address.
    pub fn address(&self) -> &str {
        &self.inner.options.address
    }

    pub(crate) fn client(&self) -> Result<Arc<Client>> {
        let mut guard = self
            .inner
            .client
            .lock()
            .map_err(|_| Error::internal("client lock poisoned"))?;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = Arc::new(Client::new(self.inner.options.clone())?);
        *guard = Some(client.clone());
        Ok(client)
    }

    pub(crate) fn auth_label(&self) -> String {
        match self.inner.auth.mount() {
            Some(m) => format!("{} login at auth/{m}", self.inner.auth.method()),
            None => "token auth".to_string(),
        }
    }
}

#[async_trait]
impl CredentialProvider for VaultProvider {
    fn egress(&self, _reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        // Every non-private host is `managed-cloud` unless the user declares it self-hosted
        // (`egress.self_hosted`); the broker lowers loopback/private addresses itself.
        let address = &self.inner.options.address;
        let host = egress::host_of(address).to_ascii_lowercase();
        let badge = if egress::is_private_host(&host) {
            Badge::SelfHosted
        } else {
            Badge::ManagedCloud
        };
        Ok(vec![Destination::host(address.clone(), badge)])
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        self.read_secret(request).await
    }

    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        self.mint_credential(request).await
    }

    async fn revoke(&self, lease_id: &str, nested: &dyn ResolveRef) -> Result<()> {
        self.revoke_lease(lease_id, nested).await
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        self.rotate_field(request).await
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Check::failed(e.to_string()),
        };
        let address = client.address().to_string();
        match client
            .send(Method::Get, "sys/seal-status", None, None)
            .await
        {
            Ok(reply) => {
                if let Ok(v) = reply.json()
                    && v["sealed"].as_bool() == Some(true)
                {
                    return Check::failed(format!("Vault at {address} is sealed"));
                }
            }
            Err(f) => {
                return Check::failed(f.into_error("checking seal status", &address).to_string());
            }
        }
        match self.token(nested).await {
            Ok(_) => {
                let remaining = self
                    .inner
                    .session
                    .lock()
                    .await
                    .as_ref()
                    .and_then(Session::remaining);
                Check::ok(format!(
                    "reachable at {address}, authenticated ({}; token {})",
                    self.auth_label(),
                    match remaining {
                        Some(r) => format!("expires in {}s", r.as_secs()),
                        None => "does not expire".to_string(),
                    }
                ))
            }
            Err(e) => Check::failed(format!("reachable at {address}; {e}")),
        }
    }
}
