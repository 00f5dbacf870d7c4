//! JWT bearer identity through the daemon (`serve.jwt`): a client on the unix socket presents
//! `Authorization: Bearer` from a token file (re-read on every request) and is who its token
//! says — or is refused with an exact status and kind, and an audit record of that outcome.
//! The JWKS is a file in the daemon's dir; keys are made and tokens signed at test time
//! (`support_tokens`). The Cedar policy sees the tenant claim as `principal.tenant` and a
//! mapped claim (`serve.jwt.attributes`) as a principal tag. Canary values (credentials, an unmapped claim) and the tokens themselves
//! never reach the logs (at `trace`), an error body or the audit log.
#![allow(clippy::unwrap_used)]

mod common;
mod support_tokens;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use broker_core::testkit::assert_no_canary;
use broker_serve::client::{self, Answer, ClientOptions, Endpoint};
use common::{Daemon, json, kind_of};
use serde_json::{Value, json};
use support_tokens::{Signer, jwks, now, tampered, unsigned};

const ISSUER: &str = "https://issuer.daemon-test.invalid";
const AUDIENCE: &str = "broker-daemon-test";
/// Tenant a's credential value.
const CANARY_A: &str = "canary-serve-jwt-tenant-a-4d8e21f0";
/// Tenant b's credential value.
const CANARY_B: &str = "canary-serve-jwt-tenant-b-93c7a5b6";
/// An unmapped claim in every token (and a refused audience): never shown anywhere.
const CLAIM_CANARY: &str = "canary-serve-jwt-claim-0b61e9d7";

const ENV: &[(&str, &str)] = &[
    ("BROKER_SERVE_TEST_TENANT_A", CANARY_A),
    ("BROKER_SERVE_TEST_TENANT_B", CANARY_B),
];

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    use broker_env as _;
    common::daemon_main();
}

/// Agents get their own tenant's credentials only (`examples/policies/tenant-bound.cedar`);
/// `prod-only` (tenant `ops`, nobody's) goes to JWT-verified callers whose `env` attribute
/// (the `environment` claim) is `prod`.
const POLICY: &str = r#"@id("same-tenant")
permit (principal, action in [Action::"resolve", Action::"mint"], resource)
when { principal.tenant != "" && principal.tenant == resource.tenant };

@id("prod-jwt-callers")
permit (principal, action == Action::"resolve", resource == Credential::"prod-only")
when {
  principal.identity == "jwt" && principal.hasTag("env") && principal.getTag("env") == "prod"
};
"#;

/// The daemon's config; `jwt` adds `serve.jwt` and the tenant-bound policy.
fn config(dir: &Path, jwt: bool) -> String {
    let mut c = String::from(
        "credentials:\n\
         \x20 mine: { ref: \"env:BROKER_SERVE_TEST_TENANT_A\", as: MINE, tenant: a }\n\
         \x20 theirs: { ref: \"env:BROKER_SERVE_TEST_TENANT_B\", as: THEIRS, tenant: b }\n\
         \x20 prod-only: { ref: \"env:BROKER_SERVE_TEST_TENANT_A\", as: PROD, tenant: ops }\n\
         audit: { path: audit.jsonl }\n",
    );
    if jwt {
        c.push_str(&format!(
            "policy: '{}'\n",
            dir.join("policy.cedar").display()
        ));
    }
    c.push_str("serve:\n  listen: run/broker.sock\n  denials: { threshold: 0 }\n");
    if jwt {
        c.push_str(&format!(
            "  jwt:\n    issuer: {ISSUER}\n    audience: [{AUDIENCE}, another-audience]\n\
             \x20   jwks_file: jwks.json\n    agent_claim: sub\n    tenant_claim: tenant\n\
             \x20   attributes: {{ env: environment }}\n"
        ));
    }
    c
}

/// Claims that pass: agent `sub` (its case kept: the daemon normalises it), tenant `tenant`,
/// attribute `env`, and the canary in an unmapped claim.
fn claims(sub: &str, tenant: &str) -> Value {
    let t = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": t,
        "nbf": t - 5,
        "exp": t + 600,
        "tenant": tenant,
        "environment": "prod",
        "secret": CLAIM_CANARY,
    })
}

fn claims_with(key: &str, value: Value) -> Value {
    let mut c = claims("Agent-A", "a");
    if value.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = value;
    }
    c
}

/// A client of the daemon's socket that sends whatever its token file holds.
struct Client {
    endpoint: Endpoint,
    token_file: PathBuf,
    /// Every token written, to check none shows up anywhere.
    tokens: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Client {
    fn new(socket: &Path) -> Client {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        let options = ClientOptions {
            token_file: Some(token_file.clone()),
            ..Default::default()
        };
        Client {
            endpoint: Endpoint::parse(socket.to_str().unwrap(), &options).unwrap(),
            token_file,
            tokens: Vec::new(),
            _dir: dir,
        }
    }

    /// Writes `token` to the token file, then asks for credential `name`.
    fn ask(&mut self, token: &str, name: &str) -> Answer {
        std::fs::write(&self.token_file, format!("{token}\n")).unwrap();
        self.tokens.push(token.to_string());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(client::call(
                self.endpoint.clone(),
                "POST",
                &format!("/v1/credentials/{name}"),
                b"{}".to_vec(),
            ))
            .unwrap()
    }

    /// Asserts that none of the tokens sent (nor their signatures) is in `text`.
    fn assert_no_token(&self, what: &str, text: &str) {
        for token in &self.tokens {
            assert!(!text.contains(token.as_str()), "a token is in {what}");
            if let Some((_, sig)) = token.rsplit_once('.')
                && sig.len() > 16
            {
                assert!(!text.contains(sig), "a token's signature is in {what}");
            }
        }
    }
}

/// A request with a raw `Authorization` header value over the socket: (status, body).
fn raw_request(socket: &Path, authorization: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "POST /v1/credentials/mine HTTP/1.1\r\nhost: broker\r\nauthorization: {authorization}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads the audit records appended since the last call.
struct AuditTail {
    seen: usize,
}

impl AuditTail {
    fn new_records(&mut self, d: &Daemon) -> Vec<Value> {
        let text = d.audit();
        let lines: Vec<&str> = text.lines().collect();
        let new = lines[self.seen..]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        self.seen = lines.len();
        new
    }

    /// Asserts that the records since the last call hold exactly one refusal, of `kind`,
    /// without an agent (the token proved no one) and with the unix peer as the identity.
    fn refused(&mut self, d: &Daemon, kind: &str) {
        let new = self.new_records(d);
        let refusals: Vec<&Value> = new.iter().filter(|r| r["decision"] == "denied").collect();
        assert_eq!(refusals.len(), 1, "one refusal record for {kind}: {new:?}");
        let r = refusals[0];
        assert_eq!(r["outcome"], kind, "{r}");
        assert_eq!(r["error_kind"], kind, "{r}");
        assert!(r.get("agent_id").is_none_or(Value::is_null), "{r}");
        assert!(
            r["identity"]
                .as_str()
                .unwrap()
                .starts_with("unix peer uid "),
            "{r}"
        );
    }
}

/// Asserts status and kind of a refusal, and that its body is secret-free.
fn assert_refused(a: &Answer, status: u16, kind: &str) {
    let body = String::from_utf8_lossy(&a.body).to_string();
    assert_eq!((a.status, kind_of(a).as_str()), (status, kind), "{body}");
    assert_no_canary("an error body", &body, &[CANARY_A, CANARY_B, CLAIM_CANARY]);
}

/// A daemon with `serve.jwt` (JWKS file key-a): valid tokens map to agent and tenant; every
/// kind of bad token is refused and audited; a key added to the file is found by a refetch.
#[test]
fn bearer_tokens_identify_agents_and_bad_ones_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b, key_c) = (
        Signer::ec("key-a"),
        Signer::rsa("key-b"),
        Signer::ec("key-c"),
    );
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key_a])).unwrap();
    std::fs::write(dir.path().join("policy.cedar"), POLICY).unwrap();
    let config = config(dir.path(), true);
    let d = Daemon::start_in(dir, &config, ENV);
    let mut client = Client::new(&d.socket);
    let mut tail = AuditTail { seen: 0 };
    tail.new_records(&d);

    // Valid: agent `agent-a` (normalised), tenant `a`, identified by its token.
    let valid = key_a.token(&claims("Agent-A", "a"));
    let a = client.ask(&valid, "mine");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let body = json(&a);
    assert_eq!(body["value"], CANARY_A);
    let request_id = body["request_id"].as_str().unwrap().to_string();
    let new = tail.new_records(&d);
    let ours: Vec<&Value> = new
        .iter()
        .filter(|r| r["request_id"] == request_id.as_str())
        .collect();
    assert!(!ours.is_empty(), "{new:?}");
    for r in &ours {
        assert_eq!(r["agent_id"], "agent-a", "{r}");
        assert_eq!(r["tenant"], "a", "{r}");
        let identity = r["identity"].as_str().unwrap();
        assert!(
            identity.starts_with(&format!(
                "jwt iss={ISSUER} sub=Agent-A kid=key-a via unix peer uid "
            )),
            "{r}"
        );
    }
    assert!(ours.iter().any(|r| r["decision"] == "granted"), "{ours:?}");

    // The token file is re-read per request: each of these is a different token.
    let t = now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            key_a.token(&claims_with("exp", (t - 120).into())),
            "token_expired",
        ),
        (
            "not yet valid",
            key_a.token(&claims_with("nbf", (t + 600).into())),
            "token_not_yet_valid",
        ),
        (
            "wrong audience",
            key_a.token(&claims_with("aud", json!(["someone-else", CLAIM_CANARY]))),
            "token_wrong_audience",
        ),
        (
            "wrong issuer",
            key_a.token(&claims_with("iss", "https://other-issuer.invalid".into())),
            "token_wrong_issuer",
        ),
        (
            "alg none",
            unsigned("key-a", &claims("Agent-A", "a")),
            "token_algorithm_refused",
        ),
        (
            "HS256 with the public key",
            key_a.hs256_with_public_key(&claims("Agent-A", "a")),
            "token_algorithm_refused",
        ),
        (
            "tampered signature",
            tampered(&key_a.token(&claims("Agent-A", "a"))),
            "token_bad_signature",
        ),
        (
            "forged payload",
            {
                let good = key_a.token(&claims("Agent-A", "a"));
                let forged = key_a.token(&claims("Admin", "b"));
                let (head_body, _) = forged.rsplit_once('.').unwrap();
                let (_, sig) = good.rsplit_once('.').unwrap();
                format!("{head_body}.{sig}")
            },
            "token_bad_signature",
        ),
        (
            "no tenant claim",
            key_a.token(&claims_with("tenant", Value::Null)),
            "token_claims",
        ),
        ("not a JWS", "not-a-token".to_string(), "token_malformed"),
    ];
    for (what, token, kind) in &cases {
        let a = client.ask(token, "mine");
        assert_refused(&a, 401, kind);
        let message = json(&a)["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty(), "{what}");
        tail.refused(&d, kind);
    }

    // An `Authorization` header that is not `Bearer <token>`.
    let (status, body) = raw_request(&d.socket, "Basic x");
    assert_eq!(status, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["kind"], "token_malformed", "{body}");
    tail.refused(&d, "token_malformed");

    // Unknown kid: the issuer rotated and the file already holds the new key when the first
    // token naming it arrives, so the one refetch the window allows finds it. (The window
    // opens at this first re-read: the daemon has not re-read the file before.)
    std::fs::write(d.dir.path().join("jwks.json"), jwks(&[&key_a, &key_b])).unwrap();
    let a = client.ask(&key_b.token(&claims("Agent-A", "a")), "mine");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let rid = json(&a)["request_id"].as_str().unwrap().to_string();
    let new = tail.new_records(&d);
    let granted = new
        .iter()
        .find(|r| r["request_id"] == rid.as_str() && r["decision"] == "granted")
        .unwrap_or_else(|| panic!("{new:?}"));
    assert!(
        granted["identity"]
            .as_str()
            .unwrap()
            .starts_with(&format!("jwt iss={ISSUER} sub=Agent-A kid=key-b via ")),
        "{granted}"
    );
    // Inside the same 30 s window, another new key is not looked for again, even though the
    // file has it by now: a token naming an invented kid cannot make the daemon re-read.
    std::fs::write(
        d.dir.path().join("jwks.json"),
        jwks(&[&key_a, &key_b, &key_c]),
    )
    .unwrap();
    let a = client.ask(&key_c.token(&claims("Agent-A", "a")), "mine");
    assert_refused(&a, 401, "token_unknown_key");
    tail.refused(&d, "token_unknown_key");

    // Tenant-bound: agent A (tenant a from its token) is refused tenant b's credential;
    // agent B (tenant b) gets it and is refused tenant a's.
    let a = client.ask(&valid, "theirs");
    assert_refused(&a, 403, "policy_denied");
    let new = tail.new_records(&d);
    let denied = new
        .iter()
        .find(|r| r["decision"] == "denied")
        .unwrap_or_else(|| panic!("{new:?}"));
    assert_eq!(denied["credential"], "theirs", "{denied}");
    assert_eq!(denied["agent_id"], "agent-a", "{denied}");
    assert_eq!(denied["tenant"], "a", "{denied}");
    let agent_b = key_b.token(&claims("agent-b", "b"));
    let a = client.ask(&agent_b, "theirs");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(json(&a)["value"], CANARY_B);
    let a = client.ask(&agent_b, "mine");
    assert_refused(&a, 403, "policy_denied");
    let new = tail.new_records(&d);
    assert!(
        new.iter().any(|r| r["decision"] == "granted"
            && r["credential"] == "theirs"
            && r["agent_id"] == "agent-b"
            && r["tenant"] == "b"),
        "{new:?}"
    );
    assert!(
        new.iter().any(|r| r["decision"] == "denied"
            && r["credential"] == "mine"
            && r["agent_id"] == "agent-b"
            && r["tenant"] == "b"),
        "{new:?}"
    );

    // Attribute-bound: the `environment` claim, mapped to attribute `env`, is a principal tag.
    let a = client.ask(&valid, "prod-only");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let dev = key_a.token(&claims_with("environment", "dev".into()));
    let a = client.ask(&dev, "prod-only");
    assert_refused(&a, 403, "policy_denied");
    let untagged = key_a.token(&claims_with("environment", Value::Null));
    let a = client.ask(&untagged, "prod-only");
    assert_refused(&a, 403, "policy_denied");
    let new = tail.new_records(&d);
    let decisions: Vec<(&str, &str)> = new
        .iter()
        .filter(|r| r["event"] == "decision")
        .map(|r| {
            (
                r["decision"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("granted", "permitted by prod-jwt-callers"),
            ("denied", "no policy permits it (default deny)"),
            ("denied", "no policy permits it (default deny)"),
        ],
        "{new:?}"
    );

    let (logs, audit) = d.stop();
    // The logs are at `trace`: the verifier's refusals are in them, by kind only.
    assert!(logs.contains("bearer token refused"), "{logs}");
    for (what, text) in [("the daemon's logs", &logs), ("the audit log", &audit)] {
        assert_no_canary(what, text, &[CANARY_A, CANARY_B, CLAIM_CANARY]);
        client.assert_no_token(what, text);
    }
    // Every refusal above is in the audit log once, in order.
    let outcomes: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["decision"] == "denied")
        .map(|r| match r["outcome"].as_str() {
            Some(outcome) => outcome.to_string(),
            // The runtime layers record a policy denial as a decision with its reason.
            None => format!("policy: {}", r["reason"].as_str().unwrap()),
        })
        .collect();
    let mut expected: Vec<String> = cases.iter().map(|c| c.2.to_string()).collect();
    expected.extend(
        [
            "token_malformed",
            "token_unknown_key",
            "policy: no policy permits it (default deny)",
            "policy: no policy permits it (default deny)",
            "policy: no policy permits it (default deny)",
            "policy: no policy permits it (default deny)",
        ]
        .map(String::from),
    );
    assert_eq!(outcomes, expected, "{audit}");
}

/// A daemon without `serve.jwt` refuses any `Authorization` header, audited.
#[test]
fn a_daemon_without_serve_jwt_refuses_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), false);
    let d = Daemon::start_in(dir, &config, ENV);
    let mut client = Client::new(&d.socket);
    let mut tail = AuditTail { seen: 0 };
    tail.new_records(&d);
    let key = Signer::ec("key-a");
    let a = client.ask(&key.token(&claims("Agent-A", "a")), "mine");
    assert_refused(&a, 401, "bearer_not_accepted");
    tail.refused(&d, "bearer_not_accepted");
    let (status, body) = raw_request(&d.socket, "Basic x");
    assert_eq!(status, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["kind"], "bearer_not_accepted", "{body}");
    tail.refused(&d, "bearer_not_accepted");
    let (logs, audit) = d.stop();
    for (what, text) in [("the daemon's logs", &logs), ("the audit log", &audit)] {
        assert_no_canary(what, text, &[CANARY_A, CANARY_B, CLAIM_CANARY]);
        client.assert_no_token(what, text);
    }
}

/// A JWKS file that cannot be read when an unknown kid asks for a re-read: 503
/// `jwks_unavailable` (audited); the keys loaded before keep working.
#[test]
fn an_unreadable_jwks_on_refetch_is_unavailable_and_the_loaded_keys_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, key_b) = (Signer::ec("key-a"), Signer::ec("key-b"));
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key_a])).unwrap();
    std::fs::write(dir.path().join("policy.cedar"), POLICY).unwrap();
    let config = config(dir.path(), true);
    let d = Daemon::start_in(dir, &config, ENV);
    let mut client = Client::new(&d.socket);
    let mut tail = AuditTail { seen: 0 };
    tail.new_records(&d);
    std::fs::write(
        d.dir.path().join("jwks.json"),
        format!("{{\"keys\": \"{CLAIM_CANARY}\"}}"),
    )
    .unwrap();
    let a = client.ask(&key_b.token(&claims("Agent-A", "a")), "mine");
    assert_refused(&a, 503, "jwks_unavailable");
    tail.refused(&d, "jwks_unavailable");
    let a = client.ask(&key_a.token(&claims("Agent-A", "a")), "mine");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(json(&a)["value"], CANARY_A);
    let (logs, audit) = d.stop();
    assert!(logs.contains("cannot load the JWKS"), "{logs}");
    for (what, text) in [("the daemon's logs", &logs), ("the audit log", &audit)] {
        assert_no_canary(what, text, &[CANARY_A, CANARY_B, CLAIM_CANARY]);
        client.assert_no_token(what, text);
    }
}
