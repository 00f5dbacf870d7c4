//! The daemon minting OpenBao child tokens: per agent, with a requested shorter ttl, and
//! (leases API, block) revoked so that they stop working.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use broker_core::testkit::{OpenBao, assert_no_canary};
use broker_env as _;
use broker_vault as _;
use common::{Daemon, can_switch_uid, curl_as, json, kind_of};

const ROOT: &str = "canary-root-token-serve-4e1b";
const AGENT_B_UID: u32 = 65533;

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    common::daemon_main();
}

fn start(bao: &OpenBao) -> Daemon {
    start_with(bao, "")
}

/// [`start`] with more `serve:` lines.
fn start_with(bao: &OpenBao, serve_extra: &str) -> Daemon {
    let uid = rustix::process::getuid().as_raw();
    let url = bao.url();
    let config = format!(
        r#"egress: {{ enabled: true }}
backends:
  vault: {{ address: "{url}" }}
credentials:
  ci: {{ mint: "vault:auth/token/create?policies=default", ttl: 10m, as: CHILD_TOKEN }}
audit: {{ path: audit.jsonl }}
serve:
  listen: run/broker.sock
  agents: [{{ id: agent-a, uid: {uid} }}, {{ id: agent-b, uid: {AGENT_B_UID} }}]
  admins: [{{ uid: {uid} }}]
{serve_extra}"#
    );
    let d = Daemon::start(
        &config,
        &[
            ("VAULT_TOKEN", ROOT),
            ("HOME", &bao.home.path().display().to_string()),
        ],
    );
    d.open_to_all();
    d
}

/// `bao token lookup TOKEN` as root: its data, or `None` when the token does not work.
fn lookup(bao: &OpenBao, token: &str) -> Option<serde_json::Value> {
    let out = bao
        .command(&["token", "lookup", "-format=json", token])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["data"].clone())
}

#[test]
fn minted_tokens_are_per_agent_and_a_shorter_ttl_mints_a_shorter_token() {
    let Some(bao) = OpenBao::start(ROOT, "bao-serve-mint") else {
        return;
    };
    if !can_switch_uid() {
        return;
    }
    let d = start(&bao);
    let a1 = json(&d.call("POST", "/v1/credentials/ci", "{}"));
    let a2 = json(&d.call("POST", "/v1/credentials/ci", "{}"));
    let ta = a1["value"].as_str().unwrap().to_string();
    assert_eq!(a2["value"], a1["value"], "agent-a's lease is cached");
    assert!(
        a1["lease_id"]
            .as_str()
            .unwrap()
            .starts_with("token-accessor:")
    );

    let (status, body) = curl_as(AGENT_B_UID, &d.socket, "POST", "/v1/credentials/ci", "{}");
    assert_eq!(status, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tb = b["value"].as_str().unwrap().to_string();
    assert_ne!(ta, tb, "two agents never share a minted token");
    assert_ne!(a1["lease_id"], b["lease_id"]);

    let short = json(&d.call("POST", "/v1/credentials/ci", r#"{"ttl": "2m"}"#));
    let ts = short["value"].as_str().unwrap().to_string();
    assert_ne!(
        ts, ta,
        "a shorter ttl is a new mint, not the cached 10m token"
    );

    let la = lookup(&bao, &ta).unwrap();
    let ls = lookup(&bao, &ts).unwrap();
    assert_eq!(la["creation_ttl"], 600, "{la}");
    assert_eq!(ls["creation_ttl"], 120, "{ls}");
    assert!(lookup(&bao, &tb).is_some());

    // A longer ttl than configured is refused.
    let a = d.call("POST", "/v1/credentials/ci", r#"{"ttl": "1h"}"#);
    assert_eq!(a.status, 400);
    assert_eq!(kind_of(&a), "ttl_too_long");

    let (logs, audit) = d.stop();
    for text in [&logs, &audit] {
        assert_no_canary("daemon output", text, &[ROOT, &ta, &tb, &ts]);
    }
    assert!(audit.contains("\"agent_id\":\"agent-b\""), "{audit}");
    assert!(audit.contains("\"ttl\":120"), "{audit}");
}

#[test]
fn leases_are_listed_revoked_by_owner_or_admin_and_a_block_revokes_them() {
    let Some(bao) = OpenBao::start(ROOT, "bao-serve-revoke") else {
        return;
    };
    if !can_switch_uid() {
        return;
    }
    let d = start(&bao);
    let a = json(&d.call("POST", "/v1/credentials/ci", "{}"));
    let (ta, la) = (
        a["value"].as_str().unwrap().to_string(),
        a["lease_id"].as_str().unwrap().to_string(),
    );
    let s = json(&d.call("POST", "/v1/credentials/ci", r#"{"ttl": 90}"#));
    let ts = s["value"].as_str().unwrap().to_string();
    let (status, body) = curl_as(AGENT_B_UID, &d.socket, "POST", "/v1/credentials/ci", "{}");
    assert_eq!(status, 200, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (tb, lb) = (
        b["value"].as_str().unwrap().to_string(),
        b["lease_id"].as_str().unwrap().to_string(),
    );

    // An agent sees its own leases; our uid is also an admin, so it sees all three.
    let (status, body) = curl_as(AGENT_B_UID, &d.socket, "GET", "/v1/leases", "");
    assert_eq!(status, 200, "{body}");
    let mine: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mine = mine["leases"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "{body}");
    assert_eq!(mine[0]["lease_id"], lb.as_str());
    assert_eq!(mine[0]["agent"], "agent-b");
    assert_eq!(mine[0]["revocable"], true);
    let all = json(&d.call("GET", "/v1/leases", ""));
    assert_eq!(all["leases"].as_array().unwrap().len(), 3, "{all}");

    // Agent B cannot revoke agent A's lease: it looks like no lease at all.
    let path = format!("/v1/leases/{la}/revoke");
    let (status, body) = curl_as(AGENT_B_UID, &d.socket, "POST", &path, "");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"kind\":\"unknown_lease\""), "{body}");
    assert!(lookup(&bao, &ta).is_some());

    // Revoked through the API, the token stops working and is not served again.
    let r = d.call("POST", &path, "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r)["outcome"], "revoked");
    assert!(lookup(&bao, &ta).is_none(), "the revoked token still works");
    let again = json(&d.call("POST", &path, ""));
    assert_eq!(again["outcome"], "already_revoked");
    let fresh = json(&d.call("POST", "/v1/credentials/ci", "{}"));
    assert_ne!(fresh["value"].as_str().unwrap(), ta);
    let tf = fresh["value"].as_str().unwrap().to_string();
    assert!(lookup(&bao, &tf).is_some());
    let r = d.call("POST", "/v1/leases/token-accessor:nope/revoke", "");
    assert_eq!(r.status, 404);
    assert_eq!(kind_of(&r), "unknown_lease");

    // Blocking agent B revokes its live token; agent A's are untouched.
    let r = d.call("POST", "/v1/agents/agent-b/block", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = json(&r);
    assert_eq!(v["revoked"], serde_json::json!([lb]), "{v}");
    assert_eq!(v["marked"], serde_json::json!([]), "{v}");
    assert_eq!(v["failed"], serde_json::json!([]), "{v}");
    assert!(
        lookup(&bao, &tb).is_none(),
        "the blocked agent's token still works"
    );
    assert!(lookup(&bao, &ts).is_some());
    let (status, body) = curl_as(AGENT_B_UID, &d.socket, "POST", "/v1/credentials/ci", "{}");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"kind\":\"agent_blocked\""), "{body}");

    let (logs, audit) = d.stop();
    for text in [&logs, &audit] {
        assert_no_canary("daemon output", text, &[ROOT, &ta, &tb, &ts, &tf]);
    }
    assert!(audit.contains("\"outcome\":\"revoked\""), "{audit}");
    assert!(audit.contains("\"outcome\":\"unknown_lease\""), "{audit}");
}

#[test]
fn revoke_on_shutdown_revokes_the_tokens_the_daemon_minted() {
    let Some(bao) = OpenBao::start(ROOT, "bao-serve-shutdown") else {
        return;
    };
    let d = start_with(&bao, "  revoke_on_shutdown: true\n");
    let a = json(&d.call("POST", "/v1/credentials/ci", "{}"));
    let token = a["value"].as_str().unwrap().to_string();
    assert!(lookup(&bao, &token).is_some());
    let (logs, audit) = d.stop();
    assert!(
        lookup(&bao, &token).is_none(),
        "revoked when the daemon stopped"
    );
    assert!(logs.contains("revoked on shutdown"), "{logs}");
    assert!(audit.contains("\"event\":\"revocation\""), "{audit}");
    for text in [&logs, &audit] {
        assert_no_canary("daemon output", text, &[ROOT, &token]);
    }
}
