//! The shared conformance suite and canary checks for `env:`.
#![allow(clippy::unwrap_used)]

use broker_core::provider::NoNestedRefs;
use broker_core::testkit::{Conformance, assert_no_canary};
use broker_env::EnvProvider;

const CANARY: &str = "canary-env-4b1d9e7f0a2c";

/// Runs [`conformance_inner`] in a child process with the canary variable set
/// (`std::env::set_var` is `unsafe` in edition 2024 and this workspace forbids `unsafe`).
#[test]
fn conformance() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "conformance_inner",
            "--include-ignored",
            "--nocapture",
        ])
        .env("BROKER_ENV_TEST_TOKEN", CANARY)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    assert_no_canary("test output", &text, &[CANARY]);
}

#[tokio::test]
#[ignore = "run by `conformance` with the canary variable set"]
async fn conformance_inner() {
    let base = std::env::temp_dir();
    Conformance {
        provider: &EnvProvider,
        base_dir: &base,
        nested: &NoNestedRefs,
        string: ("env:BROKER_ENV_TEST_TOKEN", CANARY.as_bytes()),
        field: None,
        missing: "env:BROKER_ENV_TEST_SURELY_UNSET",
        wrong_credential: None,
        malformed: &[
            "env:",
            "env:1X",
            "env:A-B",
            "env://X",
            "env:X#field",
            "env:X?k=v",
            "env:A B",
        ],
        canaries: &[CANARY],
    }
    .run()
    .await;
}

#[tokio::test]
async fn missing_variable_names_it() {
    let base = std::env::temp_dir();
    let reference = "env:BROKER_ENV_TEST_ALSO_UNSET".parse().unwrap();
    let ctx = broker_core::RequestContext::new();
    let req = broker_core::Request::new(&reference, &base, &ctx);
    let err = broker_core::CredentialProvider::resolve(&EnvProvider, &req)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`env:BROKER_ENV_TEST_ALSO_UNSET`: environment variable `BROKER_ENV_TEST_ALSO_UNSET` is not set"
    );
    assert_no_canary("error", &err.to_string(), &[CANARY]);
}
