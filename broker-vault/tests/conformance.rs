//! The shared conformance suite and canary checks against a real OpenBao dev server.
#![allow(clippy::unwrap_used)]

mod common;

use broker_core::testkit::{Conformance, assert_no_canary};
use broker_vault::{Auth, VaultProvider};
use common::{Dev, Refs};

const CANARY: &str = "canary-vault-5e2c81f94d7a";
const NESTED_CANARY: &str = "canary-vault-nested-0b9d3a";
const WRONG_TOKEN: &str = "canary-wrong-token-77aa01";

#[tokio::test(flavor = "multi_thread")]
async fn conformance() {
    let Some(dev) = Dev::start() else { return };
    dev.bao_stdin(
        &["kv", "put", "secret/conf", "-"],
        &format!(r#"{{"token":"{CANARY}","nested":{{"inner":"{NESTED_CANARY}"}}}}"#),
    );
    let reader = dev.token_with_policy(
        "conf-read",
        r#"path "secret/data/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/*" { capabilities = ["read"] }"#,
        "1h",
    );
    let refs = Refs::with(&[
        ("env:BROKER_VAULT_TEST_TOKEN", &reader),
        ("env:BROKER_VAULT_WRONG", WRONG_TOKEN),
    ]);
    let provider = dev.provider();
    let wrong = VaultProvider::new(
        dev.settings(Auth::Token {
            token_ref: Some("env:BROKER_VAULT_WRONG".into()),
        }),
        dev.base(),
    )
    .unwrap();
    let canaries = [CANARY, NESTED_CANARY, WRONG_TOKEN, reader.as_str()];
    Conformance {
        provider: &provider,
        base_dir: dev.base(),
        nested: &refs,
        string: ("vault:secret/conf#token", CANARY.as_bytes()),
        field: Some((
            "vault:secret/data/conf#nested.inner",
            NESTED_CANARY.as_bytes(),
        )),
        missing: "vault:secret/absent#token",
        wrong_credential: Some((&wrong, "vault:secret/conf#token")),
        malformed: &[
            "vault:",
            "vault:secret",
            "vault:/secret/x",
            "vault:secret//x",
            "vault:secret/../x",
            "vault://secret/x",
        ],
        canaries: &canaries,
    }
    .run()
    .await;

    // Debug of the providers never shows the token.
    assert_no_canary(
        "provider Debug",
        &format!("{provider:?} {wrong:?}"),
        &canaries,
    );
    // A missing field lists field names, never values.
    let err = common::resolve(&provider, &refs, dev.base(), "vault:secret/conf#nope")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), broker_core::ErrorKind::NotFound);
    assert!(
        err.to_string().contains("nested, token") || err.hint().unwrap().contains("nested, token"),
        "{err:?}"
    );
    assert_no_canary("missing field", &format!("{err} {err:?}"), &canaries);
}
