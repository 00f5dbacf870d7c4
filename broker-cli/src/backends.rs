//! The backends linked into this binary, one cargo feature each.
//!
//! `inventory` only sees crates that are linked, so each enabled backend is named here. What the
//! CLI reports as compiled in comes from the registry ([`enabled`]); the unit test below and
//! `tests/cli.rs` (`registered_schemes_equal_enabled_features`) check it against the features.

#[cfg(feature = "age")]
use broker_age as _;
#[cfg(feature = "aws")]
use broker_aws as _;
#[cfg(feature = "azure")]
use broker_azure as _;
#[cfg(feature = "env")]
use broker_env as _;
#[cfg(feature = "gcp")]
use broker_gcp as _;
#[cfg(feature = "sops")]
use broker_sops as _;
#[cfg(feature = "vault")]
use broker_vault as _;

/// The backends registered in this binary, sorted by name (each is also its cargo feature).
pub fn enabled() -> Vec<&'static str> {
    broker_core::Registry::global()
        .descriptors()
        .map(|d| d.name)
        .collect()
}

/// The cargo features (backend names) this binary was built with, sorted.
#[cfg(test)]
const FEATURES: &[&str] = &[
    #[cfg(feature = "age")]
    "age",
    #[cfg(feature = "aws")]
    "aws",
    #[cfg(feature = "azure")]
    "azure",
    #[cfg(feature = "env")]
    "env",
    #[cfg(feature = "gcp")]
    "gcp",
    #[cfg(feature = "sops")]
    "sops",
    #[cfg(feature = "vault")]
    "vault",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_backends_equal_enabled_features() {
        assert_eq!(enabled(), FEATURES);
    }

    /// A "not compiled in" hint may only name a feature this crate has.
    #[test]
    fn every_feature_a_hint_names_exists() {
        let manifest = include_str!("../Cargo.toml");
        let features = manifest
            .split("[features]")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .unwrap_or_default();
        for known in broker_core::grammar::KNOWN {
            if let Some(feature) = known.feature {
                assert!(
                    features
                        .lines()
                        .any(|l| l.starts_with(&format!("{feature} ="))),
                    "`{}` names feature `{feature}`, which broker-cli does not have",
                    known.grammar.scheme
                );
            }
        }
    }
}
