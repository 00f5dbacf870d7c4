//! `serve.jwt`: the bearer-token verifier against keys made at test time (aws-lc-rs: EC P-256,
//! RSA 2048, Ed25519), tokens signed here by hand, and the JWKS served by a small HTTP server
//! on 127.0.0.1 that counts its fetches (or from a file).
#![allow(clippy::unwrap_used, missing_docs)]

mod support_tokens;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_core::testkit::assert_no_canary;
use broker_serve::jwt::{JwtSettings, JwtVerifier, TokenRefusal, VerifiedToken};
use serde_json::{Value, json};
use support_tokens::{KeyMaterial, Signer, b64, jwks, now};

const ISSUER: &str = "https://issuer.test.invalid";
const AUDIENCE: &str = "broker-test";
/// A value in every token's unmapped `secret` claim: must never show up anywhere.
const CANARY: &str = "CANARY-claim-7f3a9d1e5b2c4068";

/// Claims that pass with the default settings: agent `Repo:Octo-Org/Thing` (normalised to
/// lower case), tenant `team-a`, attribute `env` from `environment`, and the canary.
fn claims() -> Value {
    let t = now();
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "someone-else"],
        "sub": "Repo:Octo-Org/Thing",
        "iat": t,
        "nbf": t - 10,
        "exp": t + 300,
        "tenant": "team-a",
        "environment": "prod",
        "secret": CANARY,
    })
}

fn claims_with(key: &str, value: Value) -> Value {
    let mut c = claims();
    if value.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = value;
    }
    c
}

/// A JWKS server on 127.0.0.1: answers every GET with the current `(status, body)` and counts
/// the requests.
struct JwksServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((200u16, body)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if !buf.starts_with(b"GET ") {
                    continue;
                }
                f.fetch_add(1, Ordering::SeqCst);
                let (status, body) = a.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer {
            url,
            answer,
            fetches,
        }
    }

    fn set(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn settings(source: (&str, &str), extra: Value) -> JwtSettings {
    let mut s = json!({
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "tenant_claim": "tenant",
        "attributes": {"env": "environment", "missing": "not_in_the_token"},
        "algorithms": ["RS256", "ES256", "EdDSA"],
    });
    s[source.0] = source.1.into();
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    serde_json::from_value(s).unwrap()
}

fn verifier_for(server: &JwksServer, extra: Value) -> JwtVerifier {
    JwtVerifier::new(settings(("jwks_url", &server.url), extra), Path::new("/")).unwrap()
}

/// Every refusal seen, to check for leaks at the end of a test.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn refused(&mut self, v: &JwtVerifier, token: &str, kind: &str) -> TokenRefusal {
        let r = v.verify(token).await.expect_err("the token was accepted");
        assert_eq!(r.kind, kind, "{r}");
        self.check(token, &r);
        r
    }

    fn check(&mut self, token: &str, r: &TokenRefusal) {
        let shown = format!("{r} {r:?}");
        assert_no_canary("a refusal", &shown, &[CANARY]);
        // Neither the token nor its signature is quoted.
        if let Some((_, sig)) = token.rsplit_once('.')
            && sig.len() > 16
        {
            assert!(!shown.contains(sig), "the signature leaked: {shown}");
        }
        if token.len() > 16 {
            assert!(!shown.contains(token), "the token leaked: {shown}");
        }
        self.0.push(shown);
    }
}

fn check_verified(t: &VerifiedToken, kid: &str) {
    assert_eq!(t.agent, "repo:octo-org/thing");
    assert_eq!(t.tenant.as_deref(), Some("team-a"));
    assert_eq!(
        t.attributes.iter().collect::<Vec<_>>(),
        vec![(&"env".to_string(), &"prod".to_string())]
    );
    assert_eq!(t.issuer, ISSUER);
    assert_eq!(t.subject.as_deref(), Some("Repo:Octo-Org/Thing"));
    assert_eq!(t.key_id.as_deref(), Some(kid));
    assert_eq!(
        t.describe(),
        format!("jwt iss={ISSUER} sub=Repo:Octo-Org/Thing kid={kid}")
    );
    assert_no_canary("a verified token", &format!("{t:?}"), &[CANARY]);
}

#[tokio::test]
async fn valid_tokens_map_agent_tenant_and_attributes() {
    let (ec, rsa, ed) = (Signer::ec("ec-1"), Signer::rsa("rsa-1"), Signer::ed("ed-1"));
    let server = JwksServer::start(jwks(&[&ec, &rsa, &ed]));
    let v = verifier_for(&server, json!({}));
    assert_eq!(server.fetches(), 0, "a JWKS URL is fetched lazily");
    for signer in [&ec, &rsa, &ed] {
        let t = v.verify(&signer.token(&claims())).await.unwrap();
        check_verified(&t, &signer.kid);
    }
    assert_eq!(server.fetches(), 1, "the key set is cached");
    // A single-string audience and a token without `nbf` pass too.
    let c = claims_with("aud", AUDIENCE.into());
    v.verify(&ec.token(&claims_with("nbf", Value::Null)))
        .await
        .unwrap();
    v.verify(&ec.token(&c)).await.unwrap();
    // Inside the leeway (30 s): just expired, or valid in a moment.
    v.verify(&ec.token(&claims_with("exp", (now() - 5).into())))
        .await
        .unwrap();
    v.verify(&ec.token(&claims_with("nbf", (now() + 5).into())))
        .await
        .unwrap();
    // A JSON pointer reaches nested claims (Kubernetes puts its own under `kubernetes.io`).
    let v2 = verifier_for(
        &server,
        json!({"agent_claim": "/kubernetes.io/serviceaccount/name", "tenant_claim": "/kubernetes.io/namespace"}),
    );
    let c = claims_with(
        "kubernetes.io",
        json!({"namespace": "ns-1", "serviceaccount": {"name": "builder"}}),
    );
    let t = v2.verify(&rsa.token(&c)).await.unwrap();
    assert_eq!(
        (t.agent.as_str(), t.tenant.as_deref()),
        ("builder", Some("ns-1"))
    );
    let debug = format!("{v:?} {v2:?}");
    assert_no_canary("the verifier's Debug", &debug, &[CANARY]);
    // No key material in Debug.
    let x = ec.jwk()["x"].as_str().unwrap().to_string();
    let n = rsa.jwk()["n"].as_str().unwrap()[..40].to_string();
    assert!(!debug.contains(&x) && !debug.contains(&n), "{debug}");
    assert!(debug.contains("ec-1"), "{debug}");
}

#[tokio::test]
async fn time_issuer_and_audience_are_checked() {
    let ec = Signer::ec("ec-1");
    let server = JwksServer::start(jwks(&[&ec]));
    let v = verifier_for(&server, json!({}));
    let mut seen = Seen::default();
    let t = now();
    seen.refused(
        &v,
        &ec.token(&claims_with("exp", (t - 120).into())),
        "token_expired",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("nbf", (t + 600).into())),
        "token_not_yet_valid",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("aud", json!(["other", CANARY]))),
        "token_wrong_audience",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("aud", Value::Null)),
        "token_wrong_audience",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with(
            "iss",
            format!("https://{CANARY}.invalid").into(),
        )),
        "token_wrong_issuer",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("iss", Value::Null)),
        "token_wrong_issuer",
    )
    .await;
    // Exact match: not a list holding it, not a prefix.
    seen.refused(
        &v,
        &ec.token(&claims_with("iss", json!([ISSUER]))),
        "token_wrong_issuer",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("iss", format!("{ISSUER}/").into())),
        "token_wrong_issuer",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("exp", Value::Null)),
        "token_claims",
    )
    .await;
    seen.refused(
        &v,
        &ec.token(&claims_with("exp", "tomorrow".into())),
        "token_claims",
    )
    .await;
    // A leeway of 0 refuses what the default 30 s lets through.
    let strict = verifier_for(&server, json!({"leeway": "0s"}));
    seen.refused(
        &strict,
        &ec.token(&claims_with("exp", (t - 5).into())),
        "token_expired",
    )
    .await;
}

#[tokio::test]
async fn agent_tenant_and_attribute_claims_are_checked() {
    let ec = Signer::ec("ec-1");
    let server = JwksServer::start(jwks(&[&ec]));
    let v = verifier_for(&server, json!({}));
    let mut seen = Seen::default();
    for (claim, value) in [
        ("sub", Value::Null),
        ("sub", json!(42)),
        ("sub", json!("")),
        ("sub", json!(format!("{CANARY} with spaces"))),
        ("sub", json!(format!("{CANARY}\u{202e}"))),
        ("sub", json!("x".repeat(300))),
        ("tenant", Value::Null),
        ("tenant", json!(["team-a"])),
        ("environment", json!({"nested": CANARY})),
    ] {
        seen.refused(
            &v,
            &ec.token(&claims_with(claim, value.clone())),
            "token_claims",
        )
        .await;
    }
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let (ec, rsa) = (Signer::ec("ec-1"), Signer::rsa("rsa-1"));
    let server = JwksServer::start(jwks(&[&ec, &rsa]));
    let v = verifier_for(&server, json!({"algorithms": ["RS256", "ES256"]}));
    let mut seen = Seen::default();
    let body = b64(claims().to_string().as_bytes());
    // `alg: none`, built by hand, with and without a signature part, any case.
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "kid": "ec-1", "typ": "JWT"})
            .to_string()
            .as_bytes());
        seen.refused(&v, &format!("{header}.{body}."), "token_algorithm_refused")
            .await;
        seen.refused(
            &v,
            &format!("{header}.{body}.c2ln"),
            "token_algorithm_refused",
        )
        .await;
    }
    // HS256 with the public key (EC point, RSA DER, and the JWK's JSON) as the HMAC secret.
    for signer in [&ec, &rsa] {
        let token = signer.token_with(json!({"alg": "HS256", "kid": signer.kid}), &claims());
        seen.refused(&v, &token, "token_algorithm_refused").await;
    }
    let hs_jwk = {
        let input = format!(
            "{}.{body}",
            b64(json!({"alg": "HS256", "kid": "rsa-1"})
                .to_string()
                .as_bytes())
        );
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            rsa.jwk().to_string().as_bytes(),
        );
        let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(sig.as_ref()))
    };
    seen.refused(&v, &hs_jwk, "token_algorithm_refused").await;
    // An allowed algorithm the key does not fit: ES256 header with the RSA key's kid, RS256
    // with the EC key's.
    let es_on_rsa = ec.token_with(json!({"alg": "ES256", "kid": "rsa-1"}), &claims());
    seen.refused(&v, &es_on_rsa, "token_algorithm_refused")
        .await;
    let rs_on_ec = rsa.token_with(json!({"alg": "RS256", "kid": "ec-1"}), &claims());
    seen.refused(&v, &rs_on_ec, "token_algorithm_refused").await;
    // An algorithm outside this verifier's allowlist (EdDSA, PS256).
    let ed = Signer::ed("ec-1");
    seen.refused(&v, &ed.token(&claims()), "token_algorithm_refused")
        .await;
    let ps = rsa.token_with(json!({"alg": "PS256", "kid": "rsa-1"}), &claims());
    seen.refused(&v, &ps, "token_algorithm_refused").await;
    // A JWK that names its own `alg` verifies only that one.
    let mut pinned = rsa.jwk();
    pinned["alg"] = "RS256".into();
    server.set(200, json!({"keys": [pinned]}).to_string());
    let v2 = verifier_for(&server, json!({"algorithms": ["RS256", "PS256"]}));
    v2.verify(&rsa.token(&claims())).await.unwrap();
    seen.refused(&v2, &ps, "token_algorithm_refused").await;
    // Without the pin, PS256 with the same key passes.
    server.set(200, jwks(&[&rsa]));
    let v3 = verifier_for(&server, json!({"algorithms": ["PS256"]}));
    v3.verify(&ps).await.unwrap();
}

#[tokio::test]
async fn unknown_kid_refetches_once_per_window() {
    let (a, b, c) = (
        Signer::ec("key-a"),
        Signer::ec("key-b"),
        Signer::rsa("key-c"),
    );
    let server = JwksServer::start(jwks(&[&a]));
    let v = verifier_for(&server, json!({}));
    let mut seen = Seen::default();
    v.verify(&a.token(&claims())).await.unwrap();
    assert_eq!(server.fetches(), 1);
    // The issuer rotates: key-b is published; a token signed with it makes one refetch.
    server.set(200, jwks(&[&a, &b]));
    let t = v.verify(&b.token(&claims())).await.unwrap();
    assert_eq!(t.key_id.as_deref(), Some("key-b"));
    assert_eq!(server.fetches(), 2, "one refetch for the unknown kid");
    // Both keys now verify without fetching.
    v.verify(&a.token(&claims())).await.unwrap();
    v.verify(&b.token(&claims())).await.unwrap();
    assert_eq!(server.fetches(), 2);
    // Another unknown kid inside the window: refused without a fetch, even though the
    // server would now have it.
    server.set(200, jwks(&[&a, &b, &c]));
    seen.refused(&v, &c.token(&claims()), "token_unknown_key")
        .await;
    let invented = a.token_with(json!({"alg": "ES256", "kid": CANARY}), &claims());
    seen.refused(&v, &invented, "token_unknown_key").await;
    assert_eq!(server.fetches(), 2, "no fetch inside the refetch window");
    // A token without `kid` is accepted only against a one-key set.
    let no_kid = a.token_with(json!({"alg": "ES256"}), &claims());
    seen.refused(&v, &no_kid, "token_unknown_key").await;
    let single = JwksServer::start(jwks(&[&a]));
    let v1 = verifier_for(&single, json!({}));
    assert_eq!(
        v1.verify(&no_kid).await.unwrap().key_id.as_deref(),
        Some("key-a")
    );
}

#[tokio::test]
async fn a_jwks_file_is_reread_on_unknown_kid() {
    let (a, b) = (Signer::ec("file-a"), Signer::ed("file-b"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&a])).unwrap();
    let v = JwtVerifier::new(settings(("jwks_file", "jwks.json"), json!({})), dir.path()).unwrap();
    v.verify(&a.token(&claims())).await.unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&a, &b])).unwrap();
    let t = v.verify(&b.token(&claims())).await.unwrap();
    assert_eq!(t.key_id.as_deref(), Some("file-b"));
    // Within the window, a key added later is not seen.
    let c = Signer::ec("file-c");
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&a, &b, &c])).unwrap();
    let r = v.verify(&c.token(&claims())).await.unwrap_err();
    assert_eq!(r.kind, "token_unknown_key");
    // A bad file at load is a config error naming the key.
    std::fs::write(
        dir.path().join("bad.json"),
        format!("{{\"keys\": \"{CANARY}\"}}"),
    )
    .unwrap();
    let e =
        JwtVerifier::new(settings(("jwks_file", "bad.json"), json!({})), dir.path()).unwrap_err();
    assert_eq!(e.kind(), broker_core::ErrorKind::InvalidConfig);
    assert!(e.message().contains("serve.jwt.jwks_file"), "{e}");
    assert_no_canary("a config error", &e.to_string(), &[CANARY]);
}

#[tokio::test]
async fn tampering_and_garbage_are_refused() {
    let (ec, rsa) = (Signer::ec("ec-1"), Signer::rsa("rsa-1"));
    let server = JwksServer::start(jwks(&[&ec, &rsa]));
    let v = verifier_for(&server, json!({}));
    let mut seen = Seen::default();
    for signer in [&ec, &rsa] {
        let token = signer.token(&claims());
        let (input, sig) = token.rsplit_once('.').unwrap();
        // Tampered signature: one byte flipped.
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[10] ^= 0x01;
        let bad_sig = format!("{input}.{}", b64(&raw));
        seen.refused(&v, &bad_sig, "token_bad_signature").await;
        // Tampered payload: another agent, the original signature.
        let (header, _) = input.split_once('.').unwrap();
        let forged = claims_with("sub", "admin".into());
        let bad_body = format!("{header}.{}.{sig}", b64(forged.to_string().as_bytes()));
        seen.refused(&v, &bad_body, "token_bad_signature").await;
        // Another key's signature under this kid.
        let other = Signer::ec(&signer.kid);
        if matches!(signer.key, KeyMaterial::Ec(_)) {
            seen.refused(&v, &other.token(&claims()), "token_bad_signature")
                .await;
        }
        // Signature removed.
        seen.refused(&v, &format!("{input}."), "token_malformed")
            .await;
    }
    let header = b64(json!({"alg": "ES256", "kid": "ec-1"})
        .to_string()
        .as_bytes());
    let oversized = format!("{header}.{}.sig", "A".repeat(20 * 1024));
    for garbage in [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "...",
        "!!!.???.***",
        &format!("{header}..sig"),
        &format!("{}.e30.sig", b64(b"not json")),
        &format!("{}.e30.sig", b64(b"[1,2]")),
        &format!("{}.e30.sig", b64(b"{\"kid\": \"ec-1\"}")),
        &format!(
            "{}.e30.sig",
            b64(json!({"alg": "ES256", "kid": 7}).to_string().as_bytes())
        ),
        &format!("{header}.{}.sig", b64(CANARY.as_bytes())),
        &oversized,
    ] {
        let r = v.verify(garbage).await.unwrap_err();
        assert!(
            r.kind == "token_malformed" || r.kind == "token_bad_signature",
            "{garbage:.40}: {r}"
        );
        seen.check(garbage, &r);
    }
    assert_eq!(
        v.verify(&oversized).await.unwrap_err().kind,
        "token_malformed"
    );
    assert_eq!(v.verify("a.b").await.unwrap_err().kind, "token_malformed");
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_after_retries() {
    let ec = Signer::ec("ec-1");
    let server = JwksServer::start(jwks(&[&ec]));
    server.set(503, "{\"errors\": [\"down\"]}".into());
    let v = verifier_for(&server, json!({}));
    let r = v.verify(&ec.token(&claims())).await.unwrap_err();
    assert_eq!((r.kind, r.status()), ("jwks_unavailable", 503), "{r}");
    assert_eq!(server.fetches(), 4, "one attempt and three retries");
    // A JWKS answer that is not a key set is unavailable too, and not retried.
    let server = JwksServer::start(format!("<html>{CANARY}</html>"));
    let v = verifier_for(&server, json!({}));
    let r = v.verify(&ec.token(&claims())).await.unwrap_err();
    assert_eq!(r.kind, "jwks_unavailable");
    assert_eq!(server.fetches(), 1);
    assert_no_canary("a refusal", &format!("{r:?}"), &[CANARY]);
    // Nothing listens: connection refused, retried, unavailable.
    let port = broker_core::testkit::free_port();
    let s = settings(
        ("jwks_url", &format!("http://127.0.0.1:{port}/jwks")),
        json!({}),
    );
    let v = JwtVerifier::new(s, Path::new("/")).unwrap();
    let r = v.verify(&ec.token(&claims())).await.unwrap_err();
    assert_eq!(r.kind, "jwks_unavailable");
    // Once the issuer answers again (after the short pause), the key set loads.
    let server = JwksServer::start("{}".into());
    let v = verifier_for(&server, json!({}));
    assert_eq!(
        v.verify(&ec.token(&claims())).await.unwrap_err().kind,
        "jwks_unavailable"
    );
    server.set(200, jwks(&[&ec]));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    v.verify(&ec.token(&claims())).await.unwrap();
}
