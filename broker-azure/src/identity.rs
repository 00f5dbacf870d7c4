//! The broker's own identity: `azure_identity` token credentials for one tenant and client,
//! built from `backends.azure.auth`.
//!
//! - `client_secret`: `ClientSecretCredential`, the secret resolved through its reference.
//! - `workload_identity`: `ClientAssertionCredential` with the federated token file read on
//!   every token request (the platform rotates it) through `broker_core::localfile`.
//! - `managed_identity`: `ManagedIdentityCredential` (App Service / Functions when
//!   `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, else the VM metadata endpoint).
//! - `azure_cli`: `AzureCliCredential` (`az account get-access-token`).

use std::path::PathBuf;
use std::sync::Arc;

use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::ClientMethodOptions;
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertion, ClientAssertionCredential,
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use broker_core::{Error, ErrorKind, ResolveRef, Result};

use crate::provider::AzureProvider;
use crate::settings::Method;

/// The largest federated token file read.
const MAX_TOKEN_FILE: u64 = 1 << 20;
/// The variable the AKS workload identity webhook sets to the token file.
pub const FEDERATED_TOKEN_FILE_VAR: &str = "AZURE_FEDERATED_TOKEN_FILE";

/// Who a token is for: the tenant and the application (client) id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub tenant: Option<String>,
    pub client: Option<String>,
}

/// A federated token file, read on every token request.
#[derive(Debug)]
struct TokenFile(PathBuf);

#[async_trait::async_trait]
impl ClientAssertion for TokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let bytes = broker_core::localfile::read(&self.0, MAX_TOKEN_FILE).map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                e.to_error(
                    format_args!("cannot read the federated token file {}", self.0.display()),
                    ErrorKind::NotConfigured,
                )
                .to_string(),
            )
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("the federated token file {} is not text", self.0.display()),
            )
        })?;
        Ok(text.trim().to_string())
    }
}

impl AzureProvider {
    /// The federated token file: the setting, else `$AZURE_FEDERATED_TOKEN_FILE`.
    pub(crate) fn token_file(&self) -> Option<PathBuf> {
        let auth = self.settings.auth.as_ref()?;
        match &auth.token_file {
            Some(file) => Some(broker_core::provider::resolve_path(&self.base_dir, file)),
            None => std::env::var_os(FEDERATED_TOKEN_FILE_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }

    /// A new token credential for `principal` (no token cached yet).
    pub(crate) async fn credential(
        &self,
        principal: &Principal,
        nested: &dyn ResolveRef,
    ) -> Result<Arc<dyn TokenCredential>> {
        let auth = self.settings.auth.as_ref().ok_or_else(|| {
            Error::not_configured("the azure backend has no identity: `backends.azure.auth` is not set")
                .with_hint("set `backends.azure.auth.method` (workload_identity, managed_identity, client_secret or azure_cli); see docs/backends/azure.md")
        })?;
        let http = self.http()?;
        let options = crate::http::client_options(&http, Some(self.settings.authority()));
        let sdk = |e: azure_core::Error| {
            Error::invalid_config(format!(
                "cannot set up the {} identity: {}",
                auth.method.as_str(),
                crate::errors::one_line(&e.to_string())
            ))
        };
        let need = |what: &str, v: &Option<String>| {
            v.clone().ok_or_else(|| {
                Error::invalid_config(format!(
                    "the {} identity needs a {what}",
                    auth.method.as_str()
                ))
            })
        };
        Ok(match auth.method {
            Method::ClientSecret => {
                let reference = self.secret_ref.as_ref().ok_or_else(|| {
                    Error::invalid_config("`backends.azure.auth.client_secret_ref` is not set")
                })?;
                let secret = nested
                    .resolve_ref(reference, "the Azure client secret")
                    .await?;
                let text = secret.expose_str().map_err(|_| {
                    Error::invalid_config("the Azure client secret is not UTF-8 text")
                })?;
                ClientSecretCredential::new(
                    &need("tenant", &principal.tenant)?,
                    need("client id", &principal.client)?,
                    Secret::new(text.trim().to_string()),
                    Some(ClientSecretCredentialOptions {
                        client_options: options,
                    }),
                )
                .map_err(sdk)?
            }
            Method::WorkloadIdentity => {
                let file = self.token_file().ok_or_else(|| {
                    Error::not_configured(
                        "workload identity needs a federated token file: `backends.azure.auth.token_file` or $AZURE_FEDERATED_TOKEN_FILE",
                    )
                })?;
                ClientAssertionCredential::new(
                    need("tenant", &principal.tenant)?,
                    need("client id", &principal.client)?,
                    TokenFile(file),
                    Some(ClientAssertionCredentialOptions {
                        client_options: options,
                    }),
                )
                .map_err(sdk)?
            }
            Method::ManagedIdentity => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: principal.client.clone().map(UserAssignedId::ClientId),
                    client_options: options,
                }))
                .map_err(sdk)?
            }
            Method::AzureCli => AzureCliCredential::new(Some(AzureCliCredentialOptions {
                tenant_id: principal.tenant.clone(),
                ..AzureCliCredentialOptions::default()
            }))
            .map_err(sdk)?,
        })
    }
}
