//! `broker-mcp` as a library, without an MCP client: the `mcp:` config keys, the `run` tool's
//! engine (delivery, redaction, timeout, program allowlist, the child's environment) and the
//! second redaction pass over line-wrapped encodings. The protocol itself is tested with the
//! official Python SDK in `broker-cli/tests/mcp.rs`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use broker_core::redact::Redactor;
use broker_core::{Broker, Config, ErrorKind, RequestContext, SecretValue};
use broker_mcp::run::{RunRequest, redact_wrapped, run};
use broker_mcp::{BrokerMcp, McpConfig};

use broker_env as _;

const VALUE: &str = "canary-engine-value-3f9a1c27d4e8b6";

fn broker(dir: &Path, yaml: &str) -> broker_core::Result<Broker> {
    let path = dir.join(".broker.yml");
    std::fs::write(&path, yaml).unwrap();
    let registry = broker_core::Registry::global().clone();
    Broker::new(Config::from_str(yaml, &path, &registry)?, registry)
}

fn request(argv: &[&str], credentials: &[&str]) -> RunRequest {
    serde_json::from_value(serde_json::json!({ "argv": argv, "credentials": credentials })).unwrap()
}

#[test]
fn mcp_keys_parse_and_unknown_ones_are_errors_with_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "credentials:\n  api: { ref: \"env:ENGINE_API\", mcp: { reveal: true } }\n  other: { ref: \"env:ENGINE_OTHER\" }\nmcp:\n  agent: \" Claude \"\n  allow_programs: [git, /usr/bin/env]\n";
    let b = broker(dir.path(), yaml).unwrap();
    assert!(b.config().credential("api").unwrap().mcp.reveal);
    assert!(!b.config().credential("other").unwrap().mcp.reveal);
    let config = McpConfig::from_config(b.config()).unwrap();
    assert_eq!(config.agent.as_deref(), Some("claude"));
    assert!(config.allows("git") && config.allows("/usr/bin/env"));
    assert!(!config.allows("sh") && !config.allows("/usr/bin/git"));
    assert_eq!(config.pass_env, broker_mcp::DEFAULT_PASS_ENV);

    let bad = broker(dir.path(), "mcp:\n  agnet: x\n").unwrap();
    let e = McpConfig::from_config(bad.config()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("agnet"), "{e}");
    assert!(
        e.location().unwrap().ends_with(":2:3"),
        "{:?}",
        e.location()
    );

    let e = broker(
        dir.path(),
        "credentials:\n  api: { ref: \"env:ENGINE_API\", mcp: { reveal: true, show: 1 } }\n",
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("show"), "{e}");
}

#[test]
fn reveal_is_offered_only_when_a_credential_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let plain = broker(
        dir.path(),
        "credentials:\n  api: { ref: \"env:ENGINE_API\" }\n",
    )
    .unwrap();
    let server = BrokerMcp::stdio(Arc::new(plain), None).unwrap();
    assert_eq!(server.tool_names().len(), 2);
    assert!(
        !server
            .tool_names()
            .contains(&"reveal_credential".to_string())
    );
    let revealing = broker(
        dir.path(),
        "credentials:\n  api: { ref: \"env:ENGINE_API\", mcp: { reveal: true } }\n",
    )
    .unwrap();
    let server = BrokerMcp::stdio(Arc::new(revealing), Some("Me".into())).unwrap();
    assert!(
        server
            .tool_names()
            .contains(&"reveal_credential".to_string())
    );
}

#[test]
fn wrapped_base64_and_hex_are_redacted_in_the_second_pass() {
    let value = SecretValue::copy_from(VALUE.as_bytes());
    let redactor = Redactor::new([("api", &value)]);
    let text = format!("HOME=/root\nAPI={VALUE}\nPATH=/usr/bin:/bin:/usr/local/bin:/sbin\n");
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    let wrapped: String = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let out = redact_wrapped(&redactor, format!("before\n{wrapped}after\n").as_bytes());
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("before\n") && out.ends_with("after\n"),
        "{out}"
    );
    assert!(out.contains("[REDACTED:api]"), "{out}");
    let hex: String = VALUE.bytes().map(|b| format!("{b:02x}")).collect();
    let wrapped_hex = format!("{}\n{}\n", &hex[..60], &hex[60..]); // xxd -p
    let out = redact_wrapped(&redactor, wrapped_hex.as_bytes());
    assert_eq!(out, b"[REDACTED:api]\n");
    // Ordinary output passes unchanged.
    let plain = b"abc\ndef\nnot: base64\n";
    assert_eq!(redact_wrapped(&redactor, plain), plain);
}

#[tokio::test]
async fn run_delivers_redacts_and_keeps_the_server_environment_out() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "credentials:\n  api: { ref: \"env:ENGINE_RUN_API\", as: API_TOKEN }\n";
    let b = broker(dir.path(), &yaml.replace("ENGINE_RUN_API", "PATH")).unwrap();
    let config = McpConfig::from_config(b.config()).unwrap();
    // `env:PATH` is a value the server holds: delivered under API_TOKEN and redacted wherever
    // the child prints it, PATH included.
    let out = run(
        &b,
        &config,
        &request(&["printenv"], &["api"]),
        &RequestContext::new(),
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(
        out.stdout.contains("API_TOKEN=[REDACTED:api]\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("PATH=[REDACTED:api]\n"),
        "{}",
        out.stdout
    );
    assert!(!out.truncated && !out.timed_out);
}

#[tokio::test]
async fn run_refuses_programs_off_the_list_and_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), "mcp: { allow_programs: [printenv] }\n").unwrap();
    let config = McpConfig::from_config(b.config()).unwrap();
    let e = run(
        &b,
        &config,
        &request(&["sh", "-c", "true"], &[]),
        &RequestContext::new(),
    )
    .await
    .unwrap_err()
    .0;
    assert_eq!(e.kind(), ErrorKind::PolicyDenied);
    assert!(
        e.to_string()
            .contains("`sh` is not in `mcp.allow_programs`"),
        "{e}"
    );
    let mut r = request(&["printenv"], &[]);
    r.cwd = Some(dir.path().join("nowhere").display().to_string());
    let e = run(&b, &config, &r, &RequestContext::new())
        .await
        .unwrap_err()
        .0;
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = run(&b, &config, &request(&[], &[]), &RequestContext::new())
        .await
        .unwrap_err()
        .0;
    assert!(e.to_string().contains("`argv` is empty"), "{e}");
}

#[tokio::test]
async fn run_times_out_with_the_group_killed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), "").unwrap();
    let config = McpConfig::from_config(b.config()).unwrap();
    let mut r = request(&["sh", "-c", "trap '' TERM; echo started; sleep 300"], &[]);
    r.timeout_seconds = Some(1);
    let out = run(&b, &config, &r, &RequestContext::new()).await.unwrap();
    assert!(out.timed_out);
    assert_eq!(out.signal, Some(9));
    assert_eq!(out.stdout, "started\n");
}

#[tokio::test]
async fn placeholder_mode_credentials_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(
        dir.path(),
        "credentials:\n  api: { ref: \"env:ENGINE_API\", proxy: { hosts: [api.example.com] }, mcp: { reveal: true } }\n  other: { ref: \"env:ENGINE_OTHER\" }\n",
    )
    .unwrap();
    let config = McpConfig::from_config(b.config()).unwrap();
    let e = run(
        &b,
        &config,
        &request(&["printenv"], &["api"]),
        &RequestContext::new(),
    )
    .await
    .unwrap_err()
    .0;
    assert_eq!(e.kind(), ErrorKind::PolicyDenied);
    assert!(e.to_string().contains("only as a placeholder"), "{e}");
}
