//! The shared conformance suite, plus the backend wired through `Config` and `Broker`
//! (settings parsing, credential options, egress manifest).
#![allow(clippy::unwrap_used)]

mod common;

use age::secrecy::ExposeSecret;
use broker_core::provider::NoNestedRefs;
use broker_core::testkit::{Conformance, assert_no_canary};
use broker_core::{Badge, Broker, Config, ErrorKind, Registry, RequestContext, Target};
use common::*;

fn registry() -> Registry {
    let mut r = Registry::new();
    broker_age::register(&mut r).unwrap();
    broker_env::register(&mut r).unwrap();
    r
}

#[tokio::test]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let identity = age::x25519::Identity::generate();
    let key_text = identity.to_string().expose_secret().to_string();
    std::fs::write(d.join("key.txt"), &key_text).unwrap();
    let other = age::x25519::Identity::generate();
    std::fs::write(d.join("other.txt"), other.to_string().expose_secret()).unwrap();
    let secret = canary("conformance");
    let bytes = age::encrypt(&identity.to_public(), secret.as_bytes()).unwrap();
    std::fs::write(d.join("token.age"), bytes).unwrap();

    let provider = with_identities(&[&d.join("key.txt")]);
    let wrong = with_identities(&[&d.join("other.txt")]);
    Conformance {
        provider: &provider,
        base_dir: d,
        nested: &NoNestedRefs,
        string: ("age:token.age", secret.as_bytes()),
        field: None,
        missing: "age:missing.age",
        wrong_credential: Some((&wrong, "agenix:token.age")),
        malformed: &[
            "age:",
            "agenix:",
            "age:token.age#field",
            "age:token.age?x=1",
            "age://token.age",
        ],
        canaries: &[&secret, &key_text],
    }
    .run()
    .await;
}

#[tokio::test]
async fn through_config_and_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = age::x25519::Identity::generate();
    let b = age::x25519::Identity::generate();
    std::fs::create_dir(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/a.txt"), a.to_string().expose_secret()).unwrap();
    std::fs::write(d.join("keys/b.txt"), b.to_string().expose_secret()).unwrap();
    let sa = canary("a");
    let sb = canary("b");
    std::fs::create_dir(d.join("secrets")).unwrap();
    std::fs::write(
        d.join("secrets/a.age"),
        age::encrypt(&a.to_public(), sa.as_bytes()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        d.join("secrets/b.age"),
        age::encrypt(&b.to_public(), sb.as_bytes()).unwrap(),
    )
    .unwrap();
    let yaml = format!(
        r#"credentials:
  a: {{ ref: "age:secrets/a.age" }}
  b: {{ ref: "agenix:secrets/b.age", identity: keys/b.txt, recipients: ["{}", "{}"] }}
backends:
  age: {{ identity: [keys/a.txt] }}
"#,
        b.to_public(),
        a.to_public()
    );
    let config = Config::from_str(&yaml, &d.join(".broker.yml"), &registry()).unwrap();
    let broker = Broker::new(config, registry()).unwrap();
    let ctx = RequestContext::new();
    assert_eq!(
        broker.resolve("a", &ctx).await.unwrap().value().expose(),
        sa.as_bytes()
    );
    assert_eq!(
        broker.resolve("b", &ctx).await.unwrap().value().expose(),
        sb.as_bytes()
    );

    // The manifest: a local file, allowed with egress off.
    let manifest = broker.manifest().unwrap();
    for entry in &manifest.entries {
        assert_eq!(entry.backend, "age");
        assert_eq!(entry.badge, Badge::Local);
        assert!(entry.allowed);
        assert!(matches!(&entry.destinations[0].target, Target::File(p) if p.starts_with(d)));
    }
    let json = serde_json::to_string(&manifest).unwrap();
    assert_no_canary("manifest", &json, &[&sa, &sb]);

    // Rotate b to its configured recipients: now a's key opens it too.
    let rotation = broker.rotate("b", &ctx).await.unwrap();
    assert!(
        rotation.summary.contains("2 recipients"),
        "{}",
        rotation.summary
    );
    let got = age::decrypt(&a, &std::fs::read(d.join("secrets/b.age")).unwrap()).unwrap();
    assert_eq!(got, sb.as_bytes());

    // `a` is encrypted to a only; the credential option for b does not leak into a.
    let err = Config::from_str(
        "backends:\n  age: { identity: keys/a.txt, recipient: [] }\n",
        &d.join(".broker.yml"),
        &registry(),
    )
    .and_then(|c| Broker::new(c, registry()))
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("recipient"), "{err}");
    assert!(err.to_string().contains(":2:"), "line number: {err}");

    // An unknown credential option is refused with the accepted keys.
    let err = Config::from_str(
        "credentials:\n  a: { ref: \"age:secrets/a.age\", identities: x }\n",
        &d.join(".broker.yml"),
        &registry(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown key `identities`"),
        "{err}"
    );
    assert!(
        err.hint().unwrap().contains("identity, recipients"),
        "{err:?}"
    );

    // An identity given as a reference resolves through the broker (env: here is unset).
    let yaml = "credentials:\n  a: { ref: \"age:secrets/a.age\", identity: { ref: \"env:BROKER_AGE_TEST_UNSET_KEY\" } }\n";
    let config = Config::from_str(yaml, &d.join(".broker.yml"), &registry()).unwrap();
    let broker = Broker::new(config, registry()).unwrap();
    let err = broker.resolve("a", &ctx).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("BROKER_AGE_TEST_UNSET_KEY"),
        "{err}"
    );
    assert!(err.to_string().contains("age identity"), "{err}");
}

#[tokio::test]
async fn doctor_check_reports_identities_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = age::x25519::Identity::generate();
    let key_text = a.to_string().expose_secret().to_string();
    std::fs::write(
        d.join("k.txt"),
        format!(
            "{key_text}\n{}\n",
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
        ),
    )
    .unwrap();
    let p = with_identities(&[&d.join("k.txt")]);
    let check = broker_core::CredentialProvider::check(&p, &NoNestedRefs).await;
    assert!(check.ok, "{}", check.detail);
    assert!(check.detail.contains("2 identities"), "{}", check.detail);
    assert_no_canary("check", &check.detail, &[&key_text]);
    let p = with_identities(&[&d.join("nope.txt")]);
    let check = broker_core::CredentialProvider::check(&p, &NoNestedRefs).await;
    assert!(!check.ok);
}
