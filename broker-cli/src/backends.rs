//! The backends linked into this binary, one cargo feature each.
//!
//! `inventory` only sees crates that are linked, so each enabled backend is named here.
//! `tests/registry.rs` asserts the registered schemes equal the enabled features.

#[cfg(feature = "age")]
use broker_age as _;
#[cfg(feature = "aws")]
use broker_aws as _;
#[cfg(feature = "env")]
use broker_env as _;
#[cfg(feature = "sops")]
use broker_sops as _;
#[cfg(feature = "vault")]
use broker_vault as _;

/// The cargo features (backend names) this binary was built with, sorted.
pub const ENABLED: &[&str] = &[
    #[cfg(feature = "age")]
    "age",
    #[cfg(feature = "aws")]
    "aws",
    #[cfg(feature = "env")]
    "env",
    #[cfg(feature = "sops")]
    "sops",
    #[cfg(feature = "vault")]
    "vault",
];
