//! `sops:FILE[#key.path][?format=...]` — sops files decrypted natively, on this machine.
//!
//! The data key is recovered from an `age` master key (X25519 or SSH identities, from the
//! places sops itself looks: `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE`,
//! `SOPS_AGE_SSH_PRIVATE_KEY_FILE`, `~/.config/sops/age/keys.txt`, plus
//! `backends.sops.age_key_file`) or a `pgp` master key (unencrypted OpenPGP secret keys from
//! `backends.sops.pgp_key_file`, decrypted in process: no gpg, no agent); key groups with
//! `shamir_threshold` are recombined. Every value is decrypted with AES-256-GCM using its key
//! path as authenticated data, and the document MAC is verified before anything is returned:
//! a tampered, reordered, dropped or injected value is refused with an `Integrity` error
//! ("MAC mismatch").
//!
//! Formats: YAML, JSON, dotenv, INI and binary, from the extension or `?format=`. Without
//! `#field` the whole decrypted document is the value (in its own format); with one, the
//! selected value (strings as text, numbers and booleans in their shortest form, maps and
//! lists as a document of the file's format).
//!
//! Network master keys (AWS KMS, GCP KMS, Azure Key Vault, Vault transit) are not contacted:
//! `egress` reports them (for key groups without a local key) and decrypting with them is a
//! typed `Unsupported` error naming the backend that will bring them. `rotate` re-encrypts
//! the file with a fresh data key, atomically (age master keys only).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cipher;
mod document;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod metadata;
mod provider;
mod settings;
mod shamir;
mod store;
mod tree;

use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ProviderDescriptor, Result,
};

pub use keys::EnvLookup;
pub use provider::SopsProvider;
pub use settings::Settings;
pub use store::Format;

/// The scheme this backend serves.
pub const SCHEME: &str = "sops";

fn build(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let settings: Settings = ctx.parse_settings()?;
    Ok(Arc::new(SopsProvider::new(settings, ctx.base_dir)))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "sops",
    schemes: &[SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: false,
        revoke: false,
        rotate: true,
    },
    default_badge: Badge::Local,
    credential_options: &[],
    grammar: &[broker_core::grammar::SOPS],
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
