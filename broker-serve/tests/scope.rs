//! Scope narrowing through the daemon: an `aws-sts://` credential minted against a local
//! recording STS stand-in, so the exact `AssumeRole` parameters (session policy, session name)
//! can be asserted. A narrower scope is minted with that scope as the session policy and cached
//! apart; a wider one is refused (`scope_too_wide`, audited) before any call.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use broker_core::testkit::{assert_no_canary, capture_server};
use common::{Daemon, json, kind_of};

const SECRET: &str = "canary-serve-scope-secret-8c1f04";

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    use broker_aws as _;
    use broker_env as _;
    common::daemon_main();
}

const ASSUME_ROLE_XML: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>ASIAFAKEFORTESTS0001</AccessKeyId><SecretAccessKey>fake-secret-for-scope-test</SecretAccessKey><SessionToken>fake-token-for-scope-test</SessionToken><Expiration>2030-01-01T00:15:00Z</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROAFAKE:s</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/agent-deploy/s</Arn></AssumedRoleUser></AssumeRoleResult></AssumeRoleResponse>"#;

/// A local STS stand-in that records each request body and answers AssumeRole.
fn recording_sts() -> (String, Arc<Mutex<Vec<String>>>) {
    capture_server(|_| (200, ASSUME_ROLE_XML.to_string()))
}

/// A form-encoded body's parameter `key`, decoded.
fn param(body: &str, key: &str) -> String {
    let raw = body
        .split('&')
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key))
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        .1;
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(&raw[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn a_narrower_scope_is_the_session_policy_and_a_wider_one_is_refused() {
    let (sts, seen) = recording_sts();
    let uid = rustix::process::getuid().as_raw();
    let d = Daemon::start(
        &format!(
            "backends:\n  aws: {{ region: us-east-1, endpoint_url: \"{sts}\", \
             access_key_id_ref: \"env:TEST_AWS_KEY_ID\", secret_access_key_ref: \"env:TEST_AWS_SECRET\" }}\n\
             egress: {{ enabled: true, allow: [self-hosted] }}\n\
             credentials:\n  deploy:\n    mint: \"aws-sts://arn:aws:iam::123456789012:role/agent-deploy\"\n    as: AWS\n    ttl: 15m\n    \
             scope: {{ actions: [\"s3:GetObject\", \"s3:ListBucket\"], resources: [\"arn:aws:s3:::bucket-a/*\", \"arn:aws:s3:::bucket-a\"] }}\n\
             audit: {{ path: audit.jsonl }}\n\
             serve:\n  listen: run/broker.sock\n  agents: [{{ id: Agent-A, uid: {uid} }}]\n"
        ),
        &[
            ("TEST_AWS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE"),
            ("TEST_AWS_SECRET", SECRET),
        ],
    );
    let narrow = r#"{"scope": {"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::bucket-a/reports/*"]}}"#;

    // Narrower: minted with exactly that scope as the session policy, named after the agent.
    let a = d.call("POST", "/v1/credentials/deploy", narrow);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let body = json(&a);
    let request_id = body["request_id"].as_str().unwrap().to_string();
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(param(&calls[0], "Action"), "AssumeRole");
    assert_eq!(
        param(&calls[0], "Policy"),
        r#"{"Statement":[{"Action":["s3:GetObject"],"Effect":"Allow","Resource":["arn:aws:s3:::bucket-a/reports/*"]}],"Version":"2012-10-17"}"#
    );
    assert_eq!(
        param(&calls[0], "RoleSessionName"),
        format!("agent-a@{request_id}")
    );
    assert_eq!(param(&calls[0], "DurationSeconds"), "900");

    // The same scope again: the cached lease. Without a scope: the configured one, minted apart.
    assert_eq!(d.call("POST", "/v1/credentials/deploy", narrow).status, 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
    let a = d.call("POST", "/v1/credentials/deploy", "{}");
    assert_eq!(a.status, 200);
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        param(&calls[1], "Policy"),
        r#"{"Statement":[{"Action":["s3:GetObject","s3:ListBucket"],"Effect":"Allow","Resource":["arn:aws:s3:::bucket-a/*","arn:aws:s3:::bucket-a"]}],"Version":"2012-10-17"}"#
    );
    // Only actions narrowed: the configured resources stay.
    let a = d.call(
        "POST",
        "/v1/credentials/deploy",
        r#"{"scope": {"actions": ["s3:ListBucket"]}}"#,
    );
    assert_eq!(a.status, 200);
    let calls = seen.lock().unwrap().clone();
    assert_eq!(
        param(&calls[2], "Policy"),
        r#"{"Statement":[{"Action":["s3:ListBucket"],"Effect":"Allow","Resource":["arn:aws:s3:::bucket-a/*","arn:aws:s3:::bucket-a"]}],"Version":"2012-10-17"}"#
    );

    // Wider: refused before any call, with the exact kind, and audited.
    for (body, kind, message) in [
        (
            r#"{"scope": {"actions": ["s3:*"]}}"#,
            "scope_too_wide",
            "`scope.actions` asks for `s3:*`, which `deploy`'s configured scope does not cover",
        ),
        (
            r#"{"scope": {"resources": ["arn:aws:s3:::bucket-b/*"]}}"#,
            "scope_too_wide",
            "`scope.resources` asks for `arn:aws:s3:::bucket-b/*`, which `deploy`'s configured scope does not cover",
        ),
        (
            r#"{"scope": {"resources": ["arn:aws:s3:::bucket-a*"]}}"#,
            "scope_too_wide",
            "`scope.resources` asks for `arn:aws:s3:::bucket-a*`, which `deploy`'s configured scope does not cover",
        ),
        (
            r#"{"scope": {"actions": []}}"#,
            "malformed_request",
            "`scope.actions` is empty; omit it to keep the configured ones",
        ),
    ] {
        let a = d.call("POST", "/v1/credentials/deploy", body);
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(kind_of(&a), kind, "{body}");
        assert_eq!(json(&a)["error"]["message"], message);
    }
    let a = d.call(
        "POST",
        "/v1/credentials/deploy",
        r#"{"scope": {"actions": ["s3:GetObject"], "conditions": {}}}"#,
    );
    assert_eq!((a.status, kind_of(&a).as_str()), (400, "malformed_request"));
    assert_eq!(seen.lock().unwrap().len(), 3);

    let (logs, audit) = d.stop();
    assert_no_canary("daemon logs", &logs, &[SECRET]);
    assert_no_canary("audit log", &audit, &[SECRET]);
    let refusals: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["error_kind"] == "scope_too_wide")
        .collect();
    assert_eq!(refusals.len(), 3, "{audit}");
    assert_eq!(refusals[0]["agent_id"], "agent-a");
    assert_eq!(refusals[0]["decision"], "denied");
    assert_eq!(
        refusals[0]["scope"],
        serde_json::json!({"actions": ["s3:*"]})
    );
    // The narrowed mint is recorded with its narrowed scope.
    assert!(audit.lines().any(|l| {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        r["scope"] == serde_json::json!({"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::bucket-a/reports/*"]})
            && r["decision"] == "granted"
    }), "{audit}");
}
