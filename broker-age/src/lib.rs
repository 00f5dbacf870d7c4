//! `age:FILE` and `agenix:FILE` — one value per file, encrypted with [age].
//!
//! The air-gapped path: the file lives in the repo only encrypted and is decrypted on this
//! machine with keys that never leave it (badge `local`, so it works with egress off).
//!
//! - Files: ASCII-armored or binary age files; relative paths resolve against the config file's
//!   directory. `age` and `agenix` are the same backend (agenix files are age files).
//! - Identities: X25519 identity files (`AGE-SECRET-KEY-1...`, several per file, `#` comments)
//!   and unencrypted OpenSSH ed25519 / RSA keys (agenix host and user keys).
//! - Identity sources, first configured level wins: the credential's `identity:`, else
//!   `backends.age.identity`; else [`IDENTITY_ENV`]; else the agenix defaults
//!   [`DEFAULT_IDENTITIES`] under `$HOME`. In config a string is a path and
//!   `{ ref: REFERENCE }` is a reference whose value is the key material.
//! - `rotate` re-encrypts the file to the same recipients (from `recipients:`, or derived from
//!   the identities that open it) with a fresh file key, atomically, keeping its mode.
//!
//! X25519 recipient stanzas (`-> X25519 ...`, [C2SP age spec]) are unwrapped by the crate's own
//! identity, not the `age` crate's: its secret key is imported into aws-lc-rs and its public
//! key computed once when the identity file is parsed, and each stanza costs one aws-lc X25519
//! (the `age` crate derives the public key again for every stanza and runs a portable ladder:
//! a small file took 69 µs with its identity, 31 µs with ours, in `benches/decrypt.rs`). The stanza checks are age 0.12.1's, exactly: one canonical
//! unpadded base64 share of 32 bytes, a 32-byte body, an all-zero shared secret (a small-order
//! share) refused as a malformed header, a body that does not open being "not ours"; tests
//! compare both identities on generated and malformed stanzas. The `age` crate still does
//! everything else: parsing identity files and recipients, the header and its MAC, the STREAM
//! payload, SSH identities, and encryption.
//!
//! Errors are distinct and never contain plaintext or key material: wrong key
//! (`PermissionDenied`, "no identity matches ...; tried: ..."), corrupted or truncated file
//! (`Integrity`), passphrase-protected identity or file (`Unsupported`), missing file
//! (`NotFound`), missing or malformed identity (`NotConfigured` / `InvalidConfig`).
//!
//! [age]: https://age-encryption.org/v1
//! [C2SP age spec]: https://c2sp.org/age#x25519-recipient-stanza
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod crypto;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod provider;
mod settings;
mod x25519;

use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, CredentialProvider, ProviderDescriptor, Result,
};

pub use crypto::is_armored;
pub use provider::{AgeProvider, DEFAULT_IDENTITIES, IDENTITY_ENV};
pub use settings::{IdentityList, IdentitySpec, RecipientList, Settings};

/// The `age:FILE` scheme.
pub const SCHEME: &str = "age";
/// The `agenix:FILE` scheme (same files, named the way agenix users know them).
pub const SCHEME_AGENIX: &str = "agenix";

fn build(ctx: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    let settings: Settings = ctx.parse_settings()?;
    Ok(Arc::new(
        AgeProvider::new(settings)?.with_base_dir(ctx.base_dir),
    ))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "age",
    schemes: &[SCHEME, SCHEME_AGENIX],
    capabilities: Capabilities {
        resolve: true,
        mint: false,
        revoke: false,
        rotate: true,
    },
    default_badge: Badge::Local,
    credential_options: &["identity", "recipients"],
    grammar: &[broker_core::grammar::AGE, broker_core::grammar::AGENIX],
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
