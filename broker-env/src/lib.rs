//! `env:NAME` — a value from the broker's own environment.
//!
//! The simplest backend and the reference for writing others: badge `local`, resolve only.
//! A missing variable is a `NotFound` error naming it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use broker_core::{
    BackendContext, Badge, Capabilities, Credential, CredentialProvider, Destination, Error,
    ProviderDescriptor, Reference, Request, Result, SecretValue, async_trait,
};

/// The scheme this backend serves.
pub const SCHEME: &str = "env";

/// Reads process environment variables.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvProvider;

#[async_trait]
impl CredentialProvider for EnvProvider {
    fn egress(&self, _reference: &Reference, _base_dir: &Path) -> Result<Vec<Destination>> {
        Ok(vec![Destination::process_env()])
    }

    async fn resolve(&self, request: &Request<'_>) -> Result<Credential> {
        let name = request.reference.target();
        match std::env::var_os(name) {
            Some(value) => Ok(Credential::new(SecretValue::new(
                value.into_encoded_bytes(),
            ))),
            None => Err(
                Error::not_found(format!("environment variable `{name}` is not set"))
                    .with_reference(request.reference),
            ),
        }
    }
}

fn build(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(EnvProvider))
}

/// This backend's registration.
pub const DESCRIPTOR: ProviderDescriptor = ProviderDescriptor {
    name: "env",
    schemes: &[SCHEME],
    capabilities: Capabilities {
        resolve: true,
        mint: false,
        revoke: false,
        rotate: false,
    },
    default_badge: Badge::Local,
    credential_options: &[],
    grammar: &[broker_core::grammar::ENV],
    factory: build,
};

broker_core::inventory::submit! { DESCRIPTOR }

/// Adds this backend to `registry` (for embedders that do not use the inventory registry).
pub fn register(registry: &mut broker_core::Registry) -> Result<()> {
    registry.register(&DESCRIPTOR)
}
