//! The provider: settings, the shared HTTP client, one Key Vault client per vault, and the
//! `CredentialProvider` impl, which hands `azurekv://` to `keyvault` and `azure-token://` to
//! `token`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use azure_core::credentials::TokenCredential;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use broker_core::{
    Badge, Check, Credential, CredentialProvider, Destination, Error, ErrorKind, Reference,
    Request, ResolveRef, Result, Rotation, async_trait,
};
use tokio::sync::OnceCell;

use crate::identity::Principal;
use crate::settings::{Method, Settings};
use crate::target::{SecretTarget, TokenTarget};

/// The `azure` backend: `azurekv://` (Key Vault secrets) and `azure-token://` (Entra tokens).
///
/// Build it from [`Settings`] with [`AzureProvider::new`]; nothing touches the network, the
/// token file or the client secret until the first request.
pub struct AzureProvider {
    pub(crate) settings: Settings,
    pub(crate) secret_ref: Option<Reference>,
    pub(crate) base_dir: PathBuf,
    http: Mutex<Option<reqwest::Client>>,
    vault_credential: OnceCell<Arc<dyn TokenCredential>>,
    vaults: Mutex<HashMap<String, Arc<SecretClient>>>,
}

impl std::fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AzureProvider {
    /// A provider with `settings`; relative paths resolve against `base_dir`. No I/O.
    pub fn new(settings: Settings, base_dir: &Path) -> Result<AzureProvider> {
        let secret_ref = settings.validate()?;
        Ok(AzureProvider {
            settings,
            secret_ref,
            base_dir: base_dir.to_path_buf(),
            http: Mutex::new(None),
            vault_credential: OnceCell::new(),
            vaults: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The HTTP client (built on first use: it reads `ca_cert`).
    pub(crate) fn http(&self) -> Result<reqwest::Client> {
        let mut slot = self
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let ca = self
            .settings
            .ca_cert
            .as_deref()
            .map(|p| broker_core::provider::resolve_path(&self.base_dir, p));
        let client = crate::http::client(ca.as_deref())?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The broker's identity for Key Vault: `auth.tenant_id` and `auth.client_id`.
    fn vault_principal(&self) -> Principal {
        let auth = self.settings.auth.as_ref();
        Principal {
            tenant: auth.and_then(|a| a.tenant_id.clone()),
            client: auth.and_then(|a| a.client_id.clone()),
        }
    }

    /// The Key Vault client for `vault` (one per vault; they share the broker's credential,
    /// whose tokens the SDK caches).
    pub(crate) async fn vault(
        &self,
        vault: &str,
        nested: &dyn ResolveRef,
    ) -> Result<Arc<SecretClient>> {
        let principal = self.vault_principal();
        let credential = self
            .vault_credential
            .get_or_try_init(|| self.credential(&principal, nested))
            .await?
            .clone();
        let mut vaults = self
            .vaults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = vaults.get(vault) {
            return Ok(client.clone());
        }
        let http = self.http()?;
        let url = self.settings.vault_url(vault);
        let client = SecretClient::new(
            &url,
            credential,
            Some(SecretClientOptions {
                client_options: crate::http::client_options(&http, None),
                ..SecretClientOptions::default()
            }),
        )
        .map_err(|e| {
            Error::invalid_config(format!(
                "cannot set up a Key Vault client for {url}: {}",
                crate::errors::one_line(&e.to_string())
            ))
        })?;
        let client = Arc::new(client);
        vaults.insert(vault.to_string(), client.clone());
        Ok(client)
    }
}

#[async_trait]
impl CredentialProvider for AzureProvider {
    fn egress(&self, reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        let mut out = match reference.scheme() {
            crate::KV_SCHEME => {
                let target = SecretTarget::parse(reference)?;
                vec![Destination::host(
                    self.settings.vault_url(&target.vault),
                    Badge::ManagedCloud,
                )]
            }
            crate::TOKEN_SCHEME => {
                TokenTarget::parse(reference)?;
                Vec::new()
            }
            other => {
                return Err(Error::internal(format!(
                    "azure backend asked for scheme `{other}`"
                )));
            }
        };
        // Where the broker's own token comes from.
        match self.settings.auth.as_ref().map(|a| a.method) {
            Some(Method::ClientSecret | Method::WorkloadIdentity) | None => {
                out.push(Destination::host(
                    self.settings.authority().to_string(),
                    Badge::ManagedCloud,
                ));
            }
            Some(Method::ManagedIdentity) => {
                let endpoint = std::env::var("IDENTITY_ENDPOINT")
                    .ok()
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "http://169.254.169.254/metadata/identity".into());
                out.push(Destination::host(endpoint, Badge::ManagedCloud));
            }
            Some(Method::AzureCli) => out.push(Destination::host(
                "the Azure CLI (az) and its login endpoint".to_string(),
                Badge::ManagedCloud,
            )),
        }
        if let Some(file) = self.token_file()
            && self.settings.auth.as_ref().map(|a| a.method) == Some(Method::WorkloadIdentity)
        {
            out.push(Destination::file(file));
        }
        Ok(out)
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        self.read_secret(request).await
    }

    async fn mint(&self, request: &Request<'_>) -> Result<Credential> {
        self.mint_token(request).await
    }

    async fn revoke(&self, lease_id: &str, _nested: &dyn ResolveRef) -> Result<()> {
        let _ = lease_id;
        Err(Error::new(
            ErrorKind::Unsupported,
            "Entra access tokens cannot be revoked one by one; they end at their expiry (about an hour)",
        )
        .with_hint(
            "keep minted tokens short-lived; to cut an application off now, disable its service principal or remove its role assignments (tokens already issued stay valid until they expire, unless the resource supports continuous access evaluation)",
        ))
    }

    async fn rotate(&self, request: &Request<'_>) -> Result<Rotation> {
        if request.reference.scheme() != crate::KV_SCHEME {
            return Err(Error::unsupported("rotate")
                .with_reference(request.reference)
                .with_hint("minted Entra tokens expire on their own; rotate azurekv:// secrets"));
        }
        self.rotate_secret(request)
            .await
            .map_err(|e| e.with_reference(request.reference))
    }

    async fn check(&self, nested: &dyn ResolveRef) -> Check {
        let Some(auth) = &self.settings.auth else {
            return Check::failed("`backends.azure.auth` is not set");
        };
        let principal = self.vault_principal();
        let credential = match self.credential(&principal, nested).await {
            Ok(c) => c,
            Err(e) => return Check::failed(e.to_string()),
        };
        let scope = "https://vault.azure.net/.default";
        match credential.get_token(&[scope], None).await {
            Ok(_) => Check::ok(format!(
                "{} identity obtained a Key Vault token{}",
                auth.method.as_str(),
                principal
                    .client
                    .map(|c| format!(" for client {c}"))
                    .unwrap_or_default()
            )),
            Err(e) => Check::failed(
                crate::errors::from_credential(&e, "the broker's identity").to_string(),
            ),
        }
    }
}
