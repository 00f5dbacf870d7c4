//! `azurekv://` and `azure-token://` — Azure Key Vault secrets and Entra ID access tokens, on
//! the official Azure SDK for Rust (`azure_security_keyvault_secrets`, `azure_identity`,
//! `azure_core`) over the workspace's one HTTP/TLS stack (reqwest + rustls).
//!
//! - **Resolve** `azurekv://VAULT/NAME[/VERSION][#field]`: the latest version by default. A
//!   disabled secret, one outside its `nbf`/`exp` window, a missing one and a 403 are distinct
//!   errors naming the reference; 429 (`Retry-After` honoured) and 5xx are retried by the SDK
//!   within the broker's budget (4 attempts in all). A JSON secret allows `#field`; a PEM or
//!   PKCS#12 content type is delivered as a file (`kind: file`).
//! - **Mint** `azure-token://TENANT/CLIENT[?scope=S]`: an Entra access token for one scope
//!   (default `https://management.azure.com/.default`), leased until its `expires_on`, so the
//!   lease cache re-mints it before then.
//! - **Rotate** `azurekv://`: a new version with a generated value (or the `#field` replaced
//!   in the JSON document), content type and tags kept; the result names the new version.
//! - **Revoke**: unsupported (Entra tokens cannot be revoked one by one); a typed error says so.
//!
//! The broker's own identity is explicit in `backends.azure.auth` ([`Settings`]): a client
//! secret given by reference, workload identity federation (a federated token file), managed
//! identity, or the Azure CLI. See `docs/backends/azure.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod errors;
mod http;
mod identity;
mod keyvault;
mod provider;
mod settings;
mod target;
mod token;

use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ProviderDescriptor, Result,
};

pub use identity::FEDERATED_TOKEN_FILE_VAR;
pub use keyvault::{PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE};
pub use provider::AzureProvider;
pub use settings::{Auth, DEFAULT_AUTHORITY_HOST, DEFAULT_VAULT_SUFFIX, Method, Settings};
pub use target::DEFAULT_SCOPE;
pub use token::ACCESS_TOKEN_VAR;

/// Key Vault secrets.
pub const KV_SCHEME: &str = "azurekv";
/// Entra ID access tokens.
pub const TOKEN_SCHEME: &str = "azure-token";

fn build(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let settings: Settings = ctx.parse_settings()?;
    Ok(Arc::new(AzureProvider::new(settings, ctx.base_dir)?))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "azure",
    schemes: &[KV_SCHEME, TOKEN_SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: true,
        revoke: false,
        rotate: true,
    },
    default_badge: Badge::ManagedCloud,
    credential_options: &[],
    grammar: &[
        broker_core::grammar::AZUREKV,
        broker_core::grammar::AZURE_TOKEN,
    ],
    factory: build,
};

broker_core::inventory::submit! { DESCRIPTOR }
broker_core::inventory::submit! {
    broker_core::registry::SettingsSchema {
        backend: DESCRIPTOR.name,
        schema: || {
            broker_core::registry::SettingsSchema::section(
                serde_json::to_value(schemars::schema_for!(settings::Settings)).unwrap_or_default(),
            )
        },
    }
}

/// Adds this backend to `registry` (for embedders that do not use the inventory registry).
pub fn register(registry: &mut broker_core::Registry) -> Result<()> {
    registry.register(&DESCRIPTOR)
}
