//! `aws-sm://` and `aws-sts://` — AWS Secrets Manager secrets and STS-minted credentials.
//!
//! - **Resolve** `aws-sm://SECRET_ID[#field][?version-stage=S|version-id=V&region=R]`: a secret
//!   by name or ARN; string, JSON (with `#field`) and binary secrets; version stages and ids.
//! - **Mint** `aws-sts://ROLE_ARN[?external-id=..&source-identity=..&region=..&tag.K=V]`:
//!   `AssumeRole` (or `AssumeRoleWithWebIdentity` with `web_identity_token_file`) for the
//!   credential's `ttl` (15m..12h), with an inline session policy generated from its `scope`
//!   ([`session_policy`]) and a `RoleSessionName` of agent id and request id
//!   ([`session_name`]). Delivered as the `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//!   `AWS_SESSION_TOKEN` / `AWS_REGION` / `AWS_DEFAULT_REGION` variables (`kind: env`, the default; the primary value
//!   is the `credential_process` JSON and is not set as a variable), or as a shared-credentials
//!   file (`kind: file`, with `AWS_SHARED_CREDENTIALS_FILE` pointing at it).
//! - **Rotate** `aws-sm://`: `RotateSecret` when the secret has a rotation function, else a
//!   new random value put as `AWSPENDING` and promoted to `AWSCURRENT`.
//! - **Revoke**: STS sessions cannot be revoked one by one: a typed `Unsupported` error with
//!   the documented alternative.
//!
//! Settings are [`Settings`] (`backends.aws`); the broker's own identity is the AWS SDK's
//! default chain unless the settings name key references. Requests retry only transient
//! failures, at most 3 times, through the SDK's standard retry mode. See
//! `docs/backends/aws.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod errors;
mod policy;
mod provider;
mod secrets_manager;
mod settings;
mod sts;
mod target;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ProviderDescriptor, Result,
};

pub use policy::{
    DEFAULT_TTL, MAX_POLICY_CHARS, MAX_TTL, MIN_TTL, duration_seconds, session_name, session_policy,
};
pub use provider::AwsProvider;
pub use settings::Settings;
pub use sts::SHARED_CREDENTIALS_FILE_VAR;

/// Secrets Manager secrets.
pub const SM_SCHEME: &str = "aws-sm";
/// STS-minted role credentials.
pub const STS_SCHEME: &str = "aws-sts";

fn build(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let settings: Settings = ctx.parse_settings()?;
    Ok(Arc::new(AwsProvider::new(settings, ctx.base_dir)?))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "aws",
    schemes: &[SM_SCHEME, STS_SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: true,
        revoke: false,
        rotate: true,
    },
    default_badge: Badge::ManagedCloud,
    credential_options: &["external_id", "source_identity", "session_tags", "region"],
    grammar: &[broker_core::grammar::AWS_SM, broker_core::grammar::AWS_STS],
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

/// `path` made absolute against `base` (`~/` expands to `$HOME`).
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    broker_core::provider::resolve_path(base, path)
}
