//! The daemon refuses to start without an audit log unless the config says
//! `audit: { enabled: false }` in so many words.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use broker_core::{Broker, Config, ErrorKind, Registry};
use broker_env as _;

fn daemon(dir: &Path, audit: &str) -> broker_core::Result<broker_serve::Daemon> {
    let text = format!(
        "credentials:\n  api: {{ ref: \"env:HOME\", as: API }}\n{audit}\
         serve: {{ listen: s.sock }}\n"
    );
    let registry = Registry::global().clone();
    let config = Config::from_str(&text, &dir.join(".broker.yml"), &registry)?;
    let broker = Broker::new(config, registry)?;
    let serve = broker_serve::ServeConfig::from_config(broker.config())?;
    broker_serve::Daemon::new(broker, serve)
}

fn run(d: broker_serve::Daemon) -> broker_core::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(d.run(async {}))
}

#[test]
fn no_audit_section_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let e = run(daemon(dir.path(), "").unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.message().contains("needs an audit log"), "{e}");
    assert!(e.hint().unwrap().contains("enabled: false"), "{e:?}");
    assert!(!dir.path().join("s.sock").exists(), "no socket was bound");
}

#[test]
fn explicit_opt_out_starts_and_a_log_starts() {
    let dir = tempfile::tempdir().unwrap();
    run(daemon(dir.path(), "audit: { enabled: false }\n").unwrap()).unwrap();
    run(daemon(dir.path(), "audit: { path: a.jsonl }\n").unwrap()).unwrap();
    run(daemon(dir.path(), "audit: { path: a.jsonl, enabled: true }\n").unwrap()).unwrap();
}

#[test]
fn audit_section_needs_a_path_or_an_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let e = daemon(dir.path(), "audit: { fsync: false }\n").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.message().contains("no `path`"), "{e}");
    let e = daemon(dir.path(), "audit: { path: a.jsonl, enabled: false }\n").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.message().contains("enabled: false"), "{e}");
    let e = daemon(dir.path(), "audit: { enabled: nope }\n").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
}
