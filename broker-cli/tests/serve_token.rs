//! `--token-file`: the real `broker` binary as daemon (`broker serve` with `serve.jwt`, JWKS in
//! its dir) and as client (`broker request` / `broker run --from SOCKET --token-file FILE`).
//! The client's uid is not mapped to any agent: its token (ES256, signed here with a key made
//! at test time) is who it is. An expired token is refused with an exact message and exit
//! code; neither the value nor the token shows up in the daemon's logs or audit log.
#![cfg(feature = "serve")]
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

const CANARY: &str = "canary-serve-token-6a0f93d2c71e";
const ISSUER: &str = "https://issuer.cli-test.invalid";
const AUDIENCE: &str = "broker-cli-test";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 key made at test time, and its public JWK.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    fn new() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { key, rng }
    }

    fn jwks(&self) -> String {
        let point = self.key.public_key().as_ref();
        assert_eq!(point.len(), 65);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "cli-key", "use": "sig",
                         "x": b64(&point[1..33]), "y": b64(&point[33..])}]})
        .to_string()
    }

    /// A token for agent `Builder-1` of tenant `team-a`, expiring at `exp`.
    fn token(&self, exp: u64) -> String {
        let header = json!({"alg": "ES256", "kid": "cli-key", "typ": "JWT"});
        let claims: Value = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "Builder-1", "tenant": "team-a",
            "iat": exp - 600, "exp": exp,
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

mod serve_daemon;

use serve_daemon::Daemon;

/// The daemon with `serve.jwt` trusting `jwks` (no `serve.agents`: only tokens identify).
fn start(jwks: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
    // An issuer vouches for callers nobody listed: the daemon wants a policy.
    std::fs::write(
        dir.path().join("policy.cedar"),
        "permit (principal, action, resource) when { principal.identity == \"jwt\" };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".broker.yml"),
        format!(
            "credentials:\n  api: {{ ref: \"env:DEMO_TOKEN\", as: API_TOKEN }}\n\
             audit: {{ path: audit.jsonl }}\n\
             policy: policy.cedar\n\
             serve:\n  listen: run/broker.sock\n  jwt:\n    issuer: {ISSUER}\n\
             \x20   audience: {AUDIENCE}\n    jwks_file: jwks.json\n    tenant_claim: tenant\n"
        ),
    )
    .unwrap();
    Daemon::start(dir, &[("DEMO_TOKEN", CANARY), ("BROKER_LOG", "trace")])
}

/// `broker ARGS` in an empty dir (no .broker.yml anywhere up), with a clean environment.
fn broker(runtime: &Path, args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("XDG_RUNTIME_DIR", runtime)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_token_file_identifies_the_client_to_the_daemon() {
    let signer = Signer::new();
    let d = start(&signer.jwks());
    let runtime = tempfile::tempdir().unwrap();
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let token_file = runtime.path().join("token");
    let socket = d.socket.to_str().unwrap();
    let token_path = token_file.to_str().unwrap();
    let mut tokens = Vec::new();

    // Without a token this uid is nobody to the daemon.
    let out = broker(
        runtime.path(),
        &["request", "api", "--from", socket, "--reveal"],
    );
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: the daemon refused (403 unknown_peer): "),
        "{out:?}"
    );

    // A valid token: the value.
    let valid = signer.token(now() + 600);
    std::fs::write(&token_file, &valid).unwrap();
    tokens.push(valid);
    let out = broker(
        runtime.path(),
        &[
            "request",
            "api",
            "--from",
            socket,
            "--token-file",
            token_path,
            "--reveal",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // To a pipe, exactly the value (no newline), as `broker get --reveal`.
    assert_eq!(String::from_utf8_lossy(&out.stdout), CANARY);
    assert!(out.stderr.is_empty(), "{out:?}");

    // The file is re-read per request: an expired token in it now is refused. 401 is an answer
    // refused authentication (AuthenticationFailed: exit 69, EX_UNAVAILABLE, as a backend's).
    let expired = signer.token(now() - 120);
    std::fs::write(&token_file, &expired).unwrap();
    tokens.push(expired);
    let out = broker(
        runtime.path(),
        &[
            "request",
            "api",
            "--from",
            socket,
            "--token-file",
            token_path,
            "--reveal",
        ],
    );
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: the daemon refused (401 token_expired): the token has expired\n"
    );

    // broker run --from with the token file: the child gets the value (redacted in output).
    let fresh = signer.token(now() + 600);
    std::fs::write(&token_file, &fresh).unwrap();
    tokens.push(fresh);
    let out = broker(
        runtime.path(),
        &[
            "run",
            "--from",
            socket,
            "--token-file",
            token_path,
            "--",
            "sh",
            "-c",
            "test -n \"$API_TOKEN\" && echo \"token=$API_TOKEN\"",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "token=[REDACTED:api]\n"
    );

    let (logs, audit) = d.stop();
    // At `trace` the verifier's refusal is logged, by kind only.
    assert!(logs.contains("bearer token refused"), "{logs}");
    for (what, text) in [("logs", &logs), ("audit", &audit)] {
        assert!(
            !text.contains(CANARY),
            "the value is in the daemon's {what}"
        );
        for t in &tokens {
            let sig = t.rsplit_once('.').unwrap().1;
            assert!(
                !text.contains(t.as_str()) && !text.contains(sig),
                "a token is in the daemon's {what}"
            );
        }
    }
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let granted: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "granted")
        .collect();
    assert_eq!(granted.len(), 2, "{audit}");
    for r in granted {
        assert_eq!(r["agent_id"], "builder-1", "{r}");
        assert_eq!(r["tenant"], "team-a", "{r}");
        assert!(
            r["identity"]
                .as_str()
                .unwrap()
                .starts_with(&format!("jwt iss={ISSUER} sub=Builder-1 kid=cli-key via ")),
            "{r}"
        );
    }
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r["decision"] == "denied")
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["unknown_peer", "token_expired"], "{audit}");
}
