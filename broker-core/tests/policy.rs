//! Policy: the allowlist without a policy file; Cedar allow/deny tables for the shipped
//! capability-, time- and tenant-bound examples; malformed and schema-invalid files are config
//! errors at load; default deny; every decision is audited.
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use broker_core::lease::ManualClock;
use broker_core::policy::{Action, Policy, PolicyRequest};
use broker_core::{Broker, ErrorKind, RequestContext};
use runtime_support::*;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies")
        .join(name)
}

fn agent(id: Option<&str>) -> RequestContext {
    RequestContext {
        agent_id: id.map(str::to_string),
        ..RequestContext::new()
    }
}

async fn table(broker: &Broker, rows: &[(Option<&str>, &str, bool)]) {
    for (who, cred, allowed) in rows {
        let got = broker.resolve(cred, &agent(*who)).await;
        match (allowed, &got) {
            (true, Ok(_)) => {}
            (false, Err(e)) => assert_eq!(
                e.kind(),
                ErrorKind::PolicyDenied,
                "{who:?} / {cred}: wrong error {e}"
            ),
            _ => panic!(
                "{who:?} / {cred}: expected {}, got {:?}",
                if *allowed { "allow" } else { "deny" },
                got.map(|_| "a credential")
            ),
        }
    }
}

#[tokio::test]
async fn capability_bound_example() {
    for t in ["cap-narrow", "cap-wide", "cap-other", "cap-local"] {
        script(t, Script::default());
    }
    let f = Fixture::new(&format!(
        r#"
credentials:
  narrow: {{ mint: "scripted:cap-narrow", ttl: 15m, scope: {{ actions: ["s3:GetObject"], resources: ["arn:aws:s3:::bucket-a/*"] }} }}
  wide:   {{ mint: "scripted:cap-wide", ttl: 15m, scope: {{ actions: ["s3:*"], resources: ["arn:aws:s3:::bucket-a/*"] }} }}
  other:  {{ mint: "scripted:cap-other", ttl: 15m, scope: {{ actions: ["s3:GetObject"], resources: ["arn:aws:s3:::bucket-b/*"] }} }}
  local:  {{ ref: "scripted:cap-local" }}
policy: {}
"#,
        example("capability-bound.cedar").display()
    ));
    let broker = f.broker().unwrap();
    table(
        &broker,
        &[
            (Some("deploy-bot"), "narrow", true),
            (Some("deploy-bot"), "wide", false),
            (Some("deploy-bot"), "other", false),
            (Some("intruder"), "narrow", false),
            (Some("intruder"), "local", true),
            (None, "local", true),
            (None, "narrow", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn time_bound_example() {
    for t in ["time-short", "time-long", "time-local"] {
        script(t, Script::default());
    }
    let f = Fixture::new(&format!(
        r#"
credentials:
  short: {{ mint: "scripted:time-short", ttl: 10m }}
  long:  {{ mint: "scripted:time-long", ttl: 1h }}
  local: {{ ref: "scripted:time-local" }}
policy: {}
"#,
        example("time-bound.cedar").display()
    ));
    let clock = Arc::new(ManualClock::new(t0())); // 2027-01-15, inside the window
    let broker = f.broker().unwrap().with_clock(clock.clone());
    table(
        &broker,
        &[
            (Some("a"), "short", true),
            (Some("a"), "long", false),
            (Some("a"), "local", true),
        ],
    )
    .await;
    clock.advance(Duration::from_secs(366 * 86_400)); // 2028: the window is over
    broker.cache().clear();
    table(
        &broker,
        &[(Some("a"), "short", false), (Some("a"), "local", false)],
    )
    .await;
}

#[tokio::test]
async fn tenant_bound_example() {
    for t in ["ten-mine", "ten-theirs"] {
        script(t, Script::default());
    }
    let f = Fixture::new(&format!(
        r#"
tenant: team-a
credentials:
  mine:   {{ ref: "scripted:ten-mine" }}
  theirs: {{ ref: "scripted:ten-theirs", tenant: team-b }}
policy: {}
audit: {{ path: audit.jsonl }}
"#,
        example("tenant-bound.cedar").display()
    ));
    let broker = f.broker().unwrap();
    table(
        &broker,
        &[
            (Some("agent-1"), "mine", true),
            (Some("agent-1"), "theirs", false),
            (None, "mine", false),
        ],
    )
    .await;
    broker
        .revoke_as("lease-1", Some("scripted"), &agent(Some("agent-1")))
        .await
        .unwrap();
    let err = broker
        .revoke_as("lease-1", Some("scripted"), &agent(None))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PolicyDenied);

    let lines = audit_lines(&f.path("audit.jsonl"));
    let decisions: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "decision")
        .map(|l| {
            (
                l["credential"].as_str().unwrap_or("").to_string(),
                l["decision"].as_str().unwrap().to_string(),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions[..3],
        [
            (
                "mine".into(),
                "granted".into(),
                "permitted by same-tenant".into()
            ),
            (
                "theirs".into(),
                "denied".into(),
                "no policy permits it (default deny)".into()
            ),
            (
                "mine".into(),
                "denied".into(),
                "forbidden by no-anonymous-agents".into()
            ),
        ]
    );
    assert_eq!(lines.last().unwrap()["action"], "revoke");
    assert_eq!(lines.last().unwrap()["decision"], "denied");
    assert!(
        lines
            .iter()
            .all(|l| l["tenant"] == "team-a" || l["event"] == "header")
    );
}

#[tokio::test]
async fn without_a_policy_file_the_credential_list_is_the_allowlist() {
    script("allow-api", Script::default());
    let f = Fixture::new(
        "credentials:\n  api: { ref: \"scripted:allow-api\" }\naudit: { path: audit.jsonl }\n",
    );
    let broker = f.broker().unwrap();
    broker.resolve("api", &RequestContext::new()).await.unwrap();
    let err = broker
        .resolve("scripted:allow-api", &RequestContext::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        err.message()
            .starts_with("no credential named `scripted:allow-api`")
    );
    let err = broker
        .deliver(&["api".into(), "apl".into()], &RequestContext::new())
        .await
        .unwrap_err();
    assert!(err.message().contains("did you mean `api`?"), "{err}");
    let lines = audit_lines(&f.path("audit.jsonl"));
    let denied: Vec<_> = lines
        .iter()
        .filter(|l| l["decision"] == "denied")
        .map(|l| l["credential"].as_str().unwrap())
        .collect();
    assert_eq!(denied, ["scripted:allow-api", "apl"]);
    // Nothing was issued for the refused delivery (its decisions came first).
    let issued = lines.iter().filter(|l| l["event"] == "issuance").count();
    assert_eq!(issued, 1);
}

#[test]
fn an_empty_policy_denies_everything() {
    let p = Policy::from_str("", Path::new("empty.cedar")).unwrap();
    let d = p.decide(&request(Action::Resolve)).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, "no policy permits it (default deny)");
}

/// Issue 10, defect 11: Cedar skips a policy whose evaluation errors; a skipped `forbid`
/// must not let the request through. Any evaluation error denies, naming the policy.
#[test]
fn an_evaluation_error_denies_and_names_the_policy() {
    let text = r#"permit (principal, action, resource);

@id("no-long-ttl")
forbid (principal, action, resource)
when { context.ttl_seconds * 9223372036854775807 > 0 };
"#;
    let p = Policy::from_str(text, Path::new("p.cedar")).unwrap();
    // ttl 0: no overflow, the forbid does not apply.
    let d = p.decide(&request(Action::Resolve)).unwrap();
    assert!(d.allowed, "{}", d.reason);
    // ttl 2: the forbid overflows while evaluating.
    let d = p
        .decide(&PolicyRequest {
            ttl_seconds: 2,
            ..request(Action::Resolve)
        })
        .unwrap();
    assert!(!d.allowed, "{}", d.reason);
    assert_eq!(
        d.reason,
        "evaluation error in `no-long-ttl` (integer overflow while attempting to multiply the values `2` and `9223372036854775807`); failing closed"
    );
    assert!(!d.reason.contains("permitted"), "{}", d.reason);
}

fn request(action: Action) -> PolicyRequest<'static> {
    PolicyRequest {
        agent_id: Some("a"),
        agent_tenant: "t",
        agent_identity: "local",
        agent_attributes: &broker_core::policy::NO_ATTRIBUTES,
        action,
        credential: "c",
        declared: true,
        backend: "env",
        badge: "local",
        credential_tenant: "t",
        max_ttl: 0,
        ttl_seconds: 0,
        scope_actions: &[],
        scope_resources: &[],
        task_id: None,
        time: t0(),
    }
}

#[test]
fn a_malformed_policy_is_a_config_error_with_its_location() {
    let text = "permit (principal, action, resource)\nwhen { context.ttl_seconds <= };\n";
    let err = Policy::from_str(text, Path::new("/etc/broker/p.cedar")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        err.location()
            .unwrap()
            .starts_with("/etc/broker/p.cedar:2:"),
        "{:?}",
        err.location()
    );
    assert!(err.message().starts_with("policy: "), "{err}");
}

#[test]
fn a_policy_that_does_not_fit_the_schema_is_rejected_at_load() {
    let cases = [
        // Unknown attribute.
        "permit (principal, action, resource) when { resource.owner == \"me\" };",
        // Wrong type.
        "permit (principal, action, resource) when { context.ttl_seconds == \"900\" };",
        // Unknown action.
        "permit (principal, action == Action::\"delete\", resource);",
        // Unknown entity type.
        "permit (principal == User::\"alice\", action, resource);",
    ];
    for text in cases {
        let err = Policy::from_str(text, Path::new("p.cedar")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{text}: {err}");
        assert!(
            err.location().unwrap().starts_with("p.cedar:1:"),
            "{text}: {err}"
        );
    }
}

#[test]
fn a_bad_policy_file_stops_the_broker_from_loading() {
    let f = Fixture::new("credentials: {}\npolicy: p.cedar\n");
    f.write(
        "p.cedar",
        "permit (principal, action, resource) when { nope };",
    );
    let err = f.broker().err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let missing = Fixture::new("credentials: {}\npolicy: missing.cedar\n");
    assert!(missing.broker().is_err());
}

#[test]
fn every_shipped_example_validates() {
    for name in [
        "capability-bound.cedar",
        "time-bound.cedar",
        "tenant-bound.cedar",
    ] {
        Policy::load(&example(name)).unwrap();
    }
}

#[test]
fn verified_identity_and_its_attributes_reach_cedar() {
    let text = "@id(\"verified-infra\")\npermit (principal, action, resource)\nwhen { principal.identity != \"local\" && principal.hasTag(\"team\") && principal.getTag(\"team\") == \"infra\" };\n";
    let p = Policy::from_str(text, Path::new("p.cedar")).unwrap();
    let infra = std::collections::BTreeMap::from([("team".to_string(), "infra".to_string())]);
    let other = std::collections::BTreeMap::from([("team".to_string(), "web".to_string())]);
    let verified = |attributes| PolicyRequest {
        agent_identity: "jwt",
        agent_attributes: attributes,
        ..request(Action::Resolve)
    };
    assert!(p.decide(&verified(&infra)).unwrap().allowed);
    assert!(!p.decide(&verified(&other)).unwrap().allowed);
    assert!(
        !p.decide(&request(Action::Resolve)).unwrap().allowed,
        "local: denied"
    );
    let local_infra = PolicyRequest {
        agent_attributes: &infra,
        ..request(Action::Resolve)
    };
    assert!(
        !p.decide(&local_infra).unwrap().allowed,
        "a claim is not a verified identity"
    );
}
