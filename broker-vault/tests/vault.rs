//! KV, auth methods, failures, mint/revoke and rotate against a real OpenBao dev server.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use broker_core::provider::NoNestedRefs;
use broker_core::testkit::assert_no_canary;
use broker_core::{CredentialProvider, ErrorKind, Reference, Request, RequestContext};
use broker_vault::{Auth, VaultProvider};
use common::{Dev, Refs, resolve, value, with_spec};

const READER_HCL: &str = r#"path "secret/data/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/*" { capabilities = ["read"] }"#;

#[tokio::test(flavor = "multi_thread")]
async fn kv_v1_and_v2() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    dev.bao(&["kv", "put", "secret/app", "token=v1-value", "user=alice"]);
    dev.bao(&["kv", "put", "secret/app", "token=v2-value", "user=alice"]);
    dev.bao(&["kv", "put", "secret/app", "token=v3-value", "user=alice"]);
    dev.bao(&["kv", "delete", "-versions=1", "secret/app"]);
    dev.bao(&["kv", "destroy", "-versions=2", "secret/app"]);
    dev.bao(&["kv", "put", "kv1/legacy", "password=old-style"]);
    let p = dev.provider();
    let refs = Refs::root();
    let base = dev.base();
    let get = |t: &'static str| {
        let (p, refs) = (&p, &refs);
        async move { resolve(p, refs, base, t).await }
    };
    assert_eq!(
        value(&get("vault:secret/app#token").await.unwrap()),
        "v3-value"
    );
    assert_eq!(
        value(&get("vault:secret/data/app#token").await.unwrap()),
        "v3-value"
    );
    assert_eq!(
        value(&get("vault:secret/app?version=3#user").await.unwrap()),
        "alice"
    );
    let e = get("vault:secret/app?version=1#token").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("version 1") && e.to_string().contains("deleted"),
        "{e}"
    );
    let e = get("vault:secret/app?version=2#token").await.unwrap_err();
    assert!(e.to_string().contains("destroyed"), "{e}");
    assert_eq!(
        value(&get("vault:kv1/legacy#password").await.unwrap()),
        "old-style"
    );
    let e = get("vault:kv1/legacy?version=1#password")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidReference, "{e}");
    let e = get("vault:secret/app?colour=red#token").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidReference, "{e}");
    // No field, no spec: the whole secret as JSON.
    let whole: serde_json::Value =
        serde_json::from_slice(get("vault:secret/app").await.unwrap().value().expose()).unwrap();
    assert_eq!(
        whole,
        serde_json::json!({"token": "v3-value", "user": "alice"})
    );

    // kind: file gets the whole secret; kind: env is an error with a hint.
    let yaml_file =
        "egress: {enabled: true}\ncredentials:\n  app: { ref: \"vault:secret/app\", kind: file }\n";
    let c = with_spec(&refs, base, yaml_file, async |r: &Request<'_>| {
        p.resolve(r).await
    })
    .await
    .unwrap();
    assert!(value(&c).contains("\"user\":\"alice\""));
    let yaml_env = "egress: {enabled: true}\ncredentials:\n  app: { ref: \"vault:secret/app\" }\n";
    let e = with_spec(&refs, base, yaml_env, async |r: &Request<'_>| {
        p.resolve(r).await
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(
        e.hint().unwrap().contains("#FIELD") && e.hint().unwrap().contains("token, user"),
        "{e:?}"
    );
    assert_no_canary("env error", &format!("{e} {e:?}"), &["v3-value", "alice"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_restricted_token_gets_permission_denied() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&["kv", "put", "secret/other", "k=v-secret-other"]);
    dev.bao(&["kv", "put", "secret/team/app", "k=v"]);
    let token = dev.token_with_policy(
        "narrow",
        r#"path "secret/data/team/*" { capabilities = ["read"] }"#,
        "1h",
    );
    let refs = Refs::with(&[("env:BROKER_VAULT_TEST_TOKEN", &token)]);
    let p = dev.provider();
    // Without access to sys/internal/ui/mounts the explicit data path still works.
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/data/team/app#k")
                .await
                .unwrap()
        ),
        "v"
    );
    let e = resolve(&p, &refs, dev.base(), "vault:secret/data/other#k")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains("permission denied")
            && e.to_string().contains("vault:secret/data/other#k"),
        "{e}"
    );
    assert_no_canary("403", &format!("{e} {e:?}"), &[&token, "v-secret-other"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn approle_login_renewal_and_reauth_after_403() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&["kv", "put", "secret/app", "token=approle-ok"]);
    dev.bao_stdin(&["policy", "write", "reader", "-"], READER_HCL);
    dev.bao(&["auth", "enable", "approle"]);
    dev.bao(&[
        "write",
        "auth/approle/role/agent",
        "token_policies=reader",
        "token_ttl=3s",
        "token_max_ttl=1m",
    ]);
    let role_id = dev.bao_json(&["read", "auth/approle/role/agent/role-id"])["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id =
        dev.bao_json(&["write", "-f", "auth/approle/role/agent/secret-id"])["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
    let refs = Refs::with(&[
        ("env:ROLE", &role_id),
        ("sops:ops.enc.yaml#secret_id", &secret_id),
        ("env:BAD", "canary-bad-secret-id-9911"),
    ]);
    let approle = |sid: &str| {
        VaultProvider::new(
            dev.settings(Auth::Approle {
                mount: None,
                role_id_ref: "env:ROLE".into(),
                secret_id_ref: Some(sid.into()),
            }),
            dev.base(),
        )
        .unwrap()
    };
    let p = approle("sops:ops.enc.yaml#secret_id");
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "approle-ok"
    );
    // Past two thirds of the 3 s TTL the token is renewed; past the TTL it is re-obtained.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "approle-ok"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "approle-ok"
    );
    // Revoke every approle token behind the broker's back: the next request gets a 403,
    // logs in again once, and succeeds.
    dev.bao(&["write", "-f", "sys/leases/revoke-prefix/auth/approle/login"]);
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "approle-ok"
    );
    // A wrong secret id: authentication failed, naming method and mount, never the value.
    let bad = approle("env:BAD");
    let e = resolve(&bad, &refs, dev.base(), "vault:secret/app#token")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    assert!(!e.is_retryable());
    assert!(
        e.to_string().contains("approle login at auth/approle"),
        "{e}"
    );
    assert_no_canary(
        "approle error",
        &format!("{e} {e:?}"),
        &["canary-bad-secret-id-9911", &role_id, &secret_id],
    );
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// An ES256 signing key generated here, and its public key in PEM.
fn make_key() -> (ring::signature::EcdsaKeyPair, String) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = rcgen::KeyPair::try_from(pkcs8.as_ref())
        .unwrap()
        .public_key_pem();
    (key, public)
}

/// A JWT for `aud` signed with `key`.
fn make_jwt(key: &ring::signature::EcdsaKeyPair, aud: &str) -> String {
    let rng = ring::rand::SystemRandom::new();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = b64(br#"{"alg":"ES256","typ":"JWT"}"#);
    let claims = b64(serde_json::json!({"sub": "agent-1", "aud": aud, "iat": now, "nbf": now - 5, "exp": now + 600}).to_string().as_bytes());
    let input = format!("{header}.{claims}");
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_login_with_bound_audience() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&["kv", "put", "secret/app", "token=jwt-ok"]);
    dev.bao_stdin(&["policy", "write", "reader", "-"], READER_HCL);
    dev.bao(&["auth", "enable", "jwt"]);
    let (key, public) = make_key();
    let pub_file = dev.base().join("jwt.pub");
    std::fs::write(&pub_file, &public).unwrap();
    dev.bao(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys=@{}", pub_file.display()),
    ]);
    dev.bao(&[
        "write",
        "auth/jwt/role/agent",
        "role_type=jwt",
        "bound_audiences=broker-test",
        "user_claim=sub",
        "token_policies=reader",
        "token_ttl=1h",
    ]);
    let good = make_jwt(&key, "broker-test");
    std::fs::write(dev.base().join("identity.jwt"), format!("{good}\n")).unwrap();
    let jwt_provider = |file: &str| {
        VaultProvider::new(
            dev.settings(Auth::Jwt {
                mount: None,
                role: "agent".into(),
                jwt_file: Some(file.into()),
                jwt_ref: None,
            }),
            dev.base(),
        )
        .unwrap()
    };
    let refs = Refs::default();
    let p = jwt_provider("identity.jwt");
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "jwt-ok"
    );
    // The same key, another audience: refused.
    let wrong = make_jwt(&key, "someone-else");
    std::fs::write(dev.base().join("wrong.jwt"), &wrong).unwrap();
    let e = resolve(
        &jwt_provider("wrong.jwt"),
        &refs,
        dev.base(),
        "vault:secret/app#token",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    assert!(e.to_string().contains("jwt login at auth/jwt"), "{e}");
    assert_no_canary("jwt error", &format!("{e} {e:?}"), &[&wrong, &good]);
    // A key Vault does not know: refused.
    let (other, _) = make_key();
    std::fs::write(
        dev.base().join("forged.jwt"),
        make_jwt(&other, "broker-test"),
    )
    .unwrap();
    let e = resolve(
        &jwt_provider("forged.jwt"),
        &refs,
        dev.base(),
        "vault:secret/app#token",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
}

async fn mint(
    p: &VaultProvider,
    refs: &Refs,
    base: &std::path::Path,
    yaml: &str,
) -> broker_core::Result<broker_core::Credential> {
    with_spec(refs, base, yaml, async |r: &Request<'_>| p.mint(r).await).await
}

fn token_works(dev: &Dev, token: &str) -> bool {
    dev.command(&["token", "lookup"])
        .env("BAO_TOKEN", token)
        .env("VAULT_TOKEN", token)
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn child_token_mint_use_revoke() {
    let Some(dev) = Dev::start() else { return };
    dev.bao_stdin(&["policy", "write", "reader", "-"], READER_HCL);
    let p = dev.provider();
    let refs = Refs::root();
    let yaml = "egress: {enabled: true}\ncredentials:\n  ci: { mint: \"vault:auth/token/create?policies=reader&num_uses=5\", ttl: 10m, as: VAULT_TOKEN }\n";
    let c = mint(&p, &refs, dev.base(), yaml).await.unwrap();
    let token = value(&c);
    let lease = c.lease().unwrap().clone();
    assert!(lease.id.starts_with("token-accessor:"), "{lease:?}");
    assert!(!lease.id.contains(&token));
    let left = lease
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(600) && left > Duration::from_secs(500),
        "{left:?}"
    );
    assert!(token_works(&dev, &token));
    let info = dev.bao_json(&["token", "lookup", &token]);
    assert_eq!(
        info["data"]["policies"],
        serde_json::json!(["default", "reader"])
    );
    assert!(info["data"]["num_uses"].as_u64().unwrap() <= 5);
    assert_no_canary("credential Debug", &format!("{c:?}"), &[&token]);
    p.revoke(&lease.id, &NoNestedRefs).await.unwrap();
    assert!(!token_works(&dev, &token));
    // Unknown parameters are refused before any request.
    let yaml = "egress: {enabled: true}\ncredentials:\n  ci: { mint: \"vault:auth/token/create?colour=red\", as: VAULT_TOKEN }\n";
    assert_eq!(
        mint(&p, &refs, dev.base(), yaml).await.unwrap_err().kind(),
        ErrorKind::InvalidReference
    );

    // Never wider than the broker's own token: a broker token with 2 minutes left.
    let broker_token = dev.token_with_policy(
        "minter",
        r#"path "auth/token/create" { capabilities = ["create", "update"] }"#,
        "2m",
    );
    let refs = Refs::with(&[("env:BROKER_VAULT_TEST_TOKEN", &broker_token)]);
    let p = dev.provider();
    let yaml = "egress: {enabled: true}\ncredentials:\n  ci: { mint: \"vault:auth/token/create?policies=minter\", ttl: 1h, as: VAULT_TOKEN }\n";
    let c = mint(&p, &refs, dev.base(), yaml).await.unwrap();
    let ttl = dev.bao_json(&["token", "lookup", &value(&c)])["data"]["ttl"]
        .as_u64()
        .unwrap();
    assert!(ttl <= 120, "child ttl {ttl} wider than the parent's");
}

#[tokio::test(flavor = "multi_thread")]
async fn pki_certificate_mint_revoke() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&["secrets", "enable", "pki"]);
    dev.bao(&["secrets", "tune", "-max-lease-ttl=24h", "pki"]);
    dev.bao(&[
        "write",
        "pki/root/generate/internal",
        "common_name=broker-test-root",
        "ttl=24h",
    ]);
    dev.bao(&[
        "write",
        "pki/roles/web",
        "allowed_domains=example",
        "allow_subdomains=true",
        "max_ttl=1h",
    ]);
    let p = dev.provider();
    let refs = Refs::root();
    let yaml = "egress: {enabled: true}\ncredentials:\n  cert: { mint: \"vault:pki/issue/web?common_name=agent.example\", ttl: 5m, as: TLS_BUNDLE, kind: file }\n";
    let c = mint(&p, &refs, dev.base(), yaml).await.unwrap();
    let pem = value(&c);
    assert!(pem.contains("PRIVATE KEY") && pem.contains("BEGIN CERTIFICATE"));
    let lease = c.lease().unwrap().clone();
    let serial = lease
        .id
        .strip_prefix("pki-serial:pki/")
        .unwrap()
        .to_string();
    let left = lease
        .expires_at
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(300) && left > Duration::from_secs(200),
        "{left:?}"
    );
    let cert = dev.bao_json(&["read", &format!("pki/cert/{serial}")]);
    assert_eq!(cert["data"]["revocation_time"].as_i64(), Some(0));
    p.revoke(&lease.id, &NoNestedRefs).await.unwrap();
    let cert = dev.bao_json(&["read", &format!("pki/cert/{serial}")]);
    assert!(
        cert["data"]["revocation_time"].as_i64().unwrap() > 0,
        "{cert}"
    );
    // A field of the minted data.
    let yaml = "egress: {enabled: true}\ncredentials:\n  cert: { mint: \"vault:pki/issue/web?common_name=b.example#certificate\", ttl: 5m, as: CERT }\n";
    let c = mint(&p, &refs, dev.base(), yaml).await.unwrap();
    assert!(value(&c).starts_with("-----BEGIN CERTIFICATE-----"));
    // A common name the role refuses: 400, not retried.
    let yaml = "egress: {enabled: true}\ncredentials:\n  cert: { mint: \"vault:pki/issue/web?common_name=evil.test\", ttl: 5m, as: CERT }\n";
    let e = mint(&p, &refs, dev.base(), yaml).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_writes_a_new_version() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&[
        "kv",
        "put",
        "secret/svc",
        "token=before-rotation",
        "user=bob",
    ]);
    dev.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    dev.bao(&["kv", "put", "kv1/svc", "token=before-rotation"]);
    let p = dev.provider();
    let refs = Refs::root();
    let rotate = |r: &'static str| {
        let (p, refs, base) = (&p, &refs, dev.base());
        async move {
            let reference: Reference = r.parse().unwrap();
            let ctx = RequestContext::new();
            let req = Request::new(&reference, base, &ctx).with_nested(refs);
            p.rotate(&req).await
        }
    };
    let r = rotate("vault:secret/svc#token").await.unwrap();
    assert_eq!(r.version.as_deref(), Some("2"));
    let now = value(
        &resolve(&p, &refs, dev.base(), "vault:secret/svc#token")
            .await
            .unwrap(),
    );
    assert_ne!(now, "before-rotation");
    assert!(now.len() >= 43);
    assert!(!r.summary.contains(&now));
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/svc#user")
                .await
                .unwrap()
        ),
        "bob"
    );
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/svc?version=1#token")
                .await
                .unwrap()
        ),
        "before-rotation"
    );
    let r = rotate("vault:kv1/svc#token").await.unwrap();
    assert!(
        r.summary.contains("KV v1 keeps no history"),
        "{}",
        r.summary
    );
    assert_ne!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:kv1/svc#token")
                .await
                .unwrap()
        ),
        "before-rotation"
    );
    assert_eq!(
        rotate("vault:secret/svc").await.unwrap_err().kind(),
        ErrorKind::InvalidReference
    );
}

/// A server that answers `statuses` in order (then 200 with a KV v1 body), counting requests.
async fn flaky_server(
    statuses: Vec<u16>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await;
            let path = String::from_utf8_lossy(&buf)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let (status, body) = if path.contains("lookup-self") {
                (200, r#"{"data":{"ttl":0,"renewable":false}}"#.to_string())
            } else if path.contains("ui/mounts") {
                (404, r#"{"errors":[]}"#.to_string())
            } else {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match statuses.get(n) {
                    Some(503) => (503, r#"{"errors":["Vault is sealed"]}"#.to_string()),
                    Some(s) => (*s, r#"{"errors":["upstream error"]}"#.to_string()),
                    None => (200, r#"{"data":{"k":"flaky-ok"}}"#.to_string()),
                }
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (addr, count)
}

fn provider_at(address: &str, base: &std::path::Path) -> VaultProvider {
    VaultProvider::new(
        broker_vault::Settings {
            address: Some(address.into()),
            auth: Auth::Token {
                token_ref: Some("env:T".into()),
            },
            ..Default::default()
        },
        base,
    )
    .unwrap()
    .with_backoff(Duration::from_millis(5))
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_transient_failures_only() {
    let dir = tempfile::tempdir().unwrap();
    let refs = Refs::with(&[("env:T", "t")]);
    // Two 5xx/429 then success: retried.
    let (addr, count) = flaky_server(vec![500, 429]).await;
    let p = provider_at(&addr, dir.path());
    assert_eq!(
        value(
            &resolve(&p, &refs, dir.path(), "vault:kv/app#k")
                .await
                .unwrap()
        ),
        "flaky-ok"
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    // Always 502: 1 + 3 retries, then fail closed with a transient error.
    let (addr, count) = flaky_server(vec![502; 10]).await;
    let e = resolve(
        &provider_at(&addr, dir.path()),
        &refs,
        dir.path(),
        "vault:kv/app#k",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    // Retries are spent here; the broker's retry layer must not repeat them, and the
    // failure is exhaustion (an alert) with the true attempt count.
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.exhausted_attempts(), Some(4), "{e}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4);
    // 404 and 400: one attempt.
    for status in [404, 400] {
        let (addr, count) = flaky_server(vec![status; 10]).await;
        let e = resolve(
            &provider_at(&addr, dir.path()),
            &refs,
            dir.path(),
            "vault:kv/app#k",
        )
        .await
        .unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{status}"
        );
    }
    // Sealed: one attempt, a distinct error.
    let (addr, count) = flaky_server(vec![503; 10]).await;
    let e = resolve(
        &provider_at(&addr, dir.path()),
        &refs,
        dir.path(),
        "vault:kv/app#k",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("is sealed"), "{e}");
    assert!(!e.is_retryable());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Nothing listening: connection errors are retried, then a transient error naming the address.
    let port = broker_core::testkit::free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let e = resolve(
        &provider_at(&addr, dir.path()),
        &refs,
        dir.path(),
        "vault:kv/app#k",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.exhausted_attempts(), Some(4), "{e}");
    assert!(
        e.to_string().contains(&addr) && e.to_string().contains("4 attempts"),
        "{e}"
    );
}

#[test]
fn egress_badges() {
    let base = std::env::temp_dir();
    let r: Reference = "vault:secret/app#k".parse().unwrap();
    let badge = |addr: &str| {
        let p = VaultProvider::new(
            broker_vault::Settings {
                address: Some(addr.into()),
                ..Default::default()
            },
            &base,
        )
        .unwrap();
        let d = p.egress(&r, &base).unwrap();
        assert_eq!(d.len(), 1);
        (d[0].badge, d[0].target.to_string())
    };
    assert_eq!(
        badge("http://127.0.0.1:8200"),
        (
            broker_core::Badge::SelfHosted,
            "http://127.0.0.1:8200".into()
        )
    );
    assert_eq!(
        badge("https://10.0.0.5:8200").0,
        broker_core::Badge::SelfHosted
    );
    assert_eq!(
        badge("https://my-cluster.vault.11eb.aws.hashicorp.cloud:8200").0,
        broker_core::Badge::ManagedCloud
    );
    let e = VaultProvider::new(
        broker_vault::Settings {
            address: Some("vault.internal:8200".into()),
            ..Default::default()
        },
        &base,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_header() {
    let Some(dev) = Dev::start() else { return };
    dev.bao(&["namespace", "create", "team-a"]);
    let ns = |args: &[&str]| {
        let out = dev
            .command(args)
            .env("BAO_NAMESPACE", "team-a")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ns(&["secrets", "enable", "-path=secret", "-version=2", "kv"]);
    ns(&["kv", "put", "secret/app", "token=in-team-a"]);
    dev.bao(&["kv", "put", "secret/app", "token=in-root"]);
    let refs = Refs::root();
    let p = VaultProvider::new(
        broker_vault::Settings {
            namespace: Some("team-a".into()),
            ..dev.settings(Auth::Token {
                token_ref: Some("env:BROKER_VAULT_TEST_TOKEN".into()),
            })
        },
        dev.base(),
    )
    .unwrap();
    assert_eq!(
        value(
            &resolve(&p, &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "in-team-a"
    );
    assert_eq!(
        value(
            &resolve(&dev.provider(), &refs, dev.base(), "vault:secret/app#token")
                .await
                .unwrap()
        ),
        "in-root"
    );
}
