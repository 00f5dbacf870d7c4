//! `vault:MOUNT/PATH[#field][?version=N]` — HashiCorp Vault and OpenBao.
//!
//! - **resolve**: KV v1 and v2. The mount's KV version is discovered through
//!   `sys/internal/ui/mounts` (as the vault CLI does), so `vault:secret/app#token` and
//!   `vault:secret/data/app#token` both work; `?version=N` reads an older KV v2 version. Without
//!   `#field` the whole secret is returned as a JSON object (for `kind: file`); `kind: env`
//!   without a field is an error with a hint.
//! - **mint**: child tokens (`vault:auth/token/create?policies=a,b&num_uses=N`, TTL from the
//!   credential's `ttl`, never wider than the broker's own token) and dynamic secrets
//!   (`vault:pki/issue/ROLE?common_name=...`, `vault:database/creds/ROLE`), with a lease.
//! - **revoke**: `token-accessor:ACCESSOR` (child tokens, revoked by accessor),
//!   `pki-serial:MOUNT/SERIAL` (certificates), or any Vault lease id.
//! - **rotate**: writes a new KV version with a freshly generated value for `#field`.
//! - **auth**: token (`token_ref`, `$VAULT_TOKEN`, `~/.vault-token`), AppRole, JWT, Kubernetes;
//!   the broker's own token is renewed before it expires and re-obtained once after a 403.
//! - **failures**: 5xx, 429 and connection errors are retried (≤ 3 retries, exponential
//!   backoff with jitter), then fail closed; 400/403/404 and TLS failures are not retried; a
//!   sealed server is its own error.
//!
//! See `docs/backends/vault.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// `broker_core::Error` is the shared error type of every backend; its size is core's choice.

mod auth;
mod client;
mod errors;
mod kv;
mod mint;
mod provider;
mod settings;

use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ProviderDescriptor, Result,
};

pub use client::MAX_RETRIES;
pub use provider::VaultProvider;
pub use settings::{Auth, DEFAULT_ADDRESS, Settings};

/// The scheme this backend serves.
pub const SCHEME: &str = "vault";

fn build(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let settings: Settings = ctx.parse_settings()?;
    Ok(Arc::new(VaultProvider::new(settings, ctx.base_dir)?))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "vault",
    schemes: &[SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: true,
        revoke: true,
        rotate: true,
    },
    default_badge: Badge::SelfHosted,
    credential_options: &[],
    grammar: &[broker_core::grammar::VAULT],
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
