//! Kubernetes auth against a real OpenBao dev server, with a minimal TokenReview stand-in in
//! place of the Kubernetes API server.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use broker_core::ErrorKind;
use broker_core::testkit::assert_no_canary;
use broker_vault::{Auth, VaultProvider};
use common::{Dev, Refs, resolve, value};

const NAMESPACE: &str = "agents";
const ACCOUNT: &str = "broker";
const UID: &str = "6f0e3a52-1c4b-4d8e-9a57-2b1f0c9d7e31";

/// What the stand-in saw: per TokenReview request, the reviewed token.
#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    other_requests: Vec<String>,
}

/// A TokenReview stand-in on 127.0.0.1: `authenticated: true` (as
/// `system:serviceaccount:agents:broker`, uid [`UID`]) only for `valid`; returns its base URL
/// and what it saw.
fn token_review_server(valid: String) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let (status, answer) = if request_line
                .starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews ")
            {
                let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
                let ok = token == valid;
                log.lock().unwrap().tokens.push(token);
                let status = if ok {
                    serde_json::json!({
                        "authenticated": true,
                        "user": {
                            "username": format!("system:serviceaccount:{NAMESPACE}:{ACCOUNT}"),
                            "uid": UID,
                            "groups": ["system:serviceaccounts", "system:serviceaccounts:agents"],
                        },
                    })
                } else {
                    serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                };
                let answer = serde_json::json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "metadata": {"creationTimestamp": null},
                    "spec": review["spec"],
                    "status": status,
                });
                ("201 Created", answer.to_string())
            } else {
                log.lock()
                    .unwrap()
                    .other_requests
                    .push(request_line.trim().to_string());
                (
                    "404 Not Found",
                    r#"{"kind":"Status","code":404}"#.to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A legacy service-account token for `namespace`/`name`, signed with a throwaway ES256 key
/// (OpenBao does not verify it locally without `pem_keys`; the TokenReview decides). `nonce`
/// makes tokens with the same claims differ.
fn service_account_jwt(namespace: &str, name: &str, nonce: &str) -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = b64(br#"{"alg":"ES256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": format!("{name}-token-{nonce}"),
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": UID,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
    });
    let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let sig = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(sig.as_ref()))
}

/// A self-signed CA certificate in PEM.
fn unused_ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes stand-in CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth() {
    let Some(dev) = Dev::start() else { return };
    let good = service_account_jwt(NAMESPACE, ACCOUNT, "canary1");
    let (host, seen) = token_review_server(good.clone());

    dev.bao(&["kv", "put", "secret/app", "token=k8s-ok"]);
    dev.bao_stdin(
        &["policy", "write", "reader", "-"],
        r#"path "secret/data/*" { capabilities = ["read"] }
path "sys/internal/ui/mounts/*" { capabilities = ["read"] }"#,
    );
    dev.bao(&["write", "sys/auth/kubernetes", "type=kubernetes"]);
    // With `disable_local_ca_jwt` (never read this machine's service-account files) OpenBao
    // insists on a CA; the stand-in speaks plain HTTP, so it is never used.
    let ca_file = dev.base().join("k8s-ca.pem");
    std::fs::write(&ca_file, unused_ca_pem()).unwrap();
    dev.bao(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host={host}"),
        &format!("kubernetes_ca_cert=@{}", ca_file.display()),
        "disable_iss_validation=true",
        "disable_local_ca_jwt=true",
    ]);
    dev.bao(&[
        "write",
        "auth/kubernetes/role/agent",
        &format!("bound_service_account_names={ACCOUNT}"),
        &format!("bound_service_account_namespaces={NAMESPACE}"),
        "token_policies=reader",
        "token_ttl=1h",
    ]);
    // A role for another namespace: the token's claims do not match it.
    dev.bao(&[
        "write",
        "auth/kubernetes/role/elsewhere",
        &format!("bound_service_account_names={ACCOUNT}"),
        "bound_service_account_namespaces=other",
        "token_policies=reader",
    ]);

    let token_file = dev.base().join("sa-token");
    std::fs::write(&token_file, format!("{good}\n")).unwrap();
    let provider = |role: &str, file: &str| {
        VaultProvider::new(
            dev.settings(Auth::Kubernetes {
                mount: None,
                role: role.into(),
                token_file: Some(file.into()),
            }),
            dev.base(),
        )
        .unwrap()
        .with_backoff(std::time::Duration::from_millis(5))
    };
    let refs = Refs::default();

    // Success: the stand-in reviewed exactly the token from the file (trailing newline gone).
    let p = provider("agent", "sa-token");
    let got = resolve(&p, &refs, dev.base(), "vault:secret/app#token")
        .await
        .unwrap();
    assert_eq!(value(&got), "k8s-ok");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.tokens, vec![good.clone()], "one review, of the token");
        assert!(s.other_requests.is_empty(), "{:?}", s.other_requests);
    }
    // The session is cached: a second read does not log in again.
    resolve(&p, &refs, dev.base(), "vault:secret/app#token")
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().tokens.len(), 1);

    // A role bound to another namespace, and a role that does not exist: refused by OpenBao
    // before any review, with its (value-free) reason.
    for (role, reason) in [
        ("elsewhere", "HTTP 403: namespace not authorized"),
        ("nope", "HTTP 400: invalid role name \"nope\""),
    ] {
        let e = resolve(
            &provider(role, "sa-token"),
            &refs,
            dev.base(),
            "vault:secret/app#token",
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
        assert!(!e.is_retryable(), "{e}");
        assert!(
            e.to_string().contains(&format!(
                "kubernetes login at auth/kubernetes failed: {reason}"
            )),
            "{e}"
        );
        assert_no_canary("wrong-role error", &format!("{e} {e:?}"), &[&good]);
    }
    assert_eq!(
        seen.lock().unwrap().tokens.len(),
        1,
        "no review for a wrong role"
    );

    // A token with the right claims that the stand-in does not accept: one review, refused,
    // not retried.
    let rejected = service_account_jwt(NAMESPACE, ACCOUNT, "canary2");
    std::fs::write(dev.base().join("stale-token"), &rejected).unwrap();
    let e = resolve(
        &provider("agent", "stale-token"),
        &refs,
        dev.base(),
        "vault:secret/app#token",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthenticationFailed, "{e}");
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string()
            .contains("kubernetes login at auth/kubernetes failed: HTTP 403: permission denied"),
        "{e}"
    );
    assert_no_canary(
        "rejected-token error",
        &format!("{e} {e:?}"),
        &[&rejected, &good],
    );
    assert_eq!(
        seen.lock().unwrap().tokens,
        vec![good.clone(), rejected.clone()],
        "exactly one review of the rejected token"
    );
}
