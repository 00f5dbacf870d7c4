//! Per-agent limits: a token bucket (burst, then 429 `rate_limited` with `Retry-After`).
#![allow(clippy::unwrap_used)]

mod common;

use broker_core::testkit::assert_no_canary;
use broker_env as _;
use common::{Daemon, kind_of};

const CANARY: &str = "canary-serve-limits-93d1c0e7";

#[test]
#[ignore = "run by the other tests as the daemon process"]
fn daemon_child() {
    common::daemon_main();
}

#[test]
fn burst_plus_one_is_rate_limited_with_retry_after_and_audited() {
    let uid = rustix::process::getuid().as_raw();
    let d = Daemon::start(
        &format!(
            "credentials:\n  api: {{ ref: \"env:BROKER_SERVE_TEST_CANARY\", as: API_TOKEN }}\n\
             audit: {{ path: audit.jsonl }}\n\
             serve:\n  listen: run/broker.sock\n  agents: [{{ id: agent-a, uid: {uid} }}]\n\
             \x20 limits: {{ rate: \"1/h\", burst: 3, concurrency: 2 }}\n"
        ),
        &[("BROKER_SERVE_TEST_CANARY", CANARY)],
    );
    for _ in 0..3 {
        let a = d.call("POST", "/v1/credentials/api", "{}");
        assert_eq!(a.status, 200);
        assert_eq!(a.retry_after, None);
    }
    let a = d.call("POST", "/v1/credentials/api", "{}");
    assert_eq!(a.status, 429, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(kind_of(&a), "rate_limited");
    // One token an hour: the next one is most of an hour away.
    let wait = a.retry_after.unwrap();
    assert!((3000..=3600).contains(&wait), "{wait}");
    let body = String::from_utf8_lossy(&a.body).to_string();
    let (logs, audit) = d.stop();
    for text in [&body, &logs, &audit] {
        assert_no_canary("daemon output", text, &[CANARY]);
    }
    assert!(audit.contains("\"outcome\":\"rate_limited\""), "{audit}");
}

#[test]
fn limits_config_is_checked() {
    for (bad, want) in [
        ("{ rate: \"5/d\" }", "expected a number"),
        ("{ rate: 5, burst: 0 }", "burst"),
        ("{ rate: 5, nope: 1 }", "nope"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("serve: {{ listen: s.sock, limits: {bad} }}\n");
        let registry = broker_core::Registry::global().clone();
        let config =
            broker_core::Config::from_str(&text, &dir.path().join(".broker.yml"), &registry)
                .unwrap();
        let e = broker_serve::ServeConfig::from_config(&config).unwrap_err();
        assert_eq!(e.kind(), broker_core::ErrorKind::InvalidConfig, "{bad}");
        assert!(e.to_string().contains(want), "{bad}: {e}");
    }
}
