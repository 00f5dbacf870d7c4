//! `gcp-sm://` and `gcp-iam://` — Google Cloud Secret Manager secrets and service-account
//! tokens minted through IAM Credentials.
//!
//! - **Resolve** `gcp-sm://PROJECT/SECRET[/VERSION][?location=L][#field]`: the payload as
//!   bytes (binary secrets allowed for file delivery), `#field` into JSON payloads; `latest`
//!   by default, a version number or an alias; regional secrets with `?location=`. The
//!   payload's CRC32C is checked when the server sends one (a mismatch is an `Integrity`
//!   error). Disabled and destroyed versions, missing versions, secrets and projects, and
//!   denied access are distinct errors naming the reference.
//! - **Mint** `gcp-iam://SA_EMAIL`: an OAuth access token of the service account
//!   (`generateAccessToken`) with the credential's scopes (`scopes:` or `scope.actions`,
//!   default `cloud-platform`), lifetime (`ttl`, 1s..1h, or up to 12h with
//!   `backends.gcp.max_token_lifetime`) and delegation chain (`delegates:`); with
//!   `?id-token=true&audience=URL` an ID token (`generateIdToken`) instead. Delivered as
//!   `GOOGLE_OAUTH_ACCESS_TOKEN` (`kind: env`) or as a file whose path is also in
//!   `CLOUDSDK_AUTH_ACCESS_TOKEN_FILE` (`kind: file`); cached and re-minted by the lease cache.
//! - **Rotate** `gcp-sm://`: a new version with a generated value (or one JSON field
//!   replaced), the previous version disabled with `disable_previous: true`.
//! - **Revoke**: Google tokens cannot be revoked: a typed `Unsupported` error.
//!
//! The broker's own identity is [`Auth`] (`backends.gcp.auth`): a service-account key or a
//! workload identity federation document by reference, the metadata server, or an access
//! token by reference. The Google clients make one attempt per call (10 s attempt timeout);
//! the broker's retry layer retries 429, 5xx, `UNAVAILABLE` and connection failures, so a
//! request makes at most 4 attempts. See `docs/backends/gcp.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod errors;
mod iam;
mod identity;
mod provider;
mod secret_manager;
mod settings;
mod target;

use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ProviderDescriptor, Result,
};

pub use iam::{ACCESS_TOKEN_FILE_VAR, ACCESS_TOKEN_VAR};
pub use provider::{GcpProvider, IAM_CREDENTIALS_ENDPOINT, SECRET_MANAGER_ENDPOINT};
pub use settings::{Auth, DEFAULT_MAX_LIFETIME, EXTENDED_MAX_LIFETIME, Settings};
pub use target::DEFAULT_SCOPE;

/// Secret Manager secrets.
pub const SM_SCHEME: &str = "gcp-sm";
/// Service-account tokens from IAM Credentials.
pub const IAM_SCHEME: &str = "gcp-iam";

fn build(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let settings: Settings = ctx.parse_settings()?;
    Ok(Arc::new(GcpProvider::new(settings)?))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "gcp",
    schemes: &[SM_SCHEME, IAM_SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: true,
        revoke: false,
        rotate: true,
    },
    default_badge: Badge::ManagedCloud,
    credential_options: &[
        "scopes",
        "delegates",
        "include_email",
        "token_env",
        "disable_previous",
    ],
    grammar: &[broker_core::grammar::GCP_SM, broker_core::grammar::GCP_IAM],
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
