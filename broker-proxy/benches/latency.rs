//! What the proxy adds to a request: the same HTTPS request on one keep-alive connection,
//! straight to a local upstream and through the proxy (CONNECT, the run's CA, header
//! substitution, response redaction, an audit record per request), timed one request at a
//! time. Loopback only. Prints medians and p99; `BROKER_BENCH_REQUESTS` sets the count.
//!
//! `cargo bench -p broker-proxy --bench latency` (or `cargo xtask bench proxy`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_core::SecretValue;
use broker_proxy::{EgressPolicy, MemoryAudit, ProxiedCredential, Proxy, ProxyOptions, Rules};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::{MapResolver, RecordingDialer, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VALUE: &str = "sk-bench-value-0123456789abcdef";

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

fn tls_config(roots_pem: &[String]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in roots_pem {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn handshake<S>(stream: S, config: Arc<rustls::ClientConfig>) -> Sender
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("api.test").unwrap(), stream)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Times `n` GETs on `sender`, one after another.
async fn time(sender: &mut Sender, n: usize, auth: &str) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let req = hyper::Request::get("/bench")
            .header("host", "api.test")
            .header("authorization", auth)
            .body(Empty::new())
            .unwrap();
        let start = Instant::now();
        sender.ready().await.unwrap();
        let response = sender.send_request(req).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        out.push(start.elapsed());
        assert!(!body.is_empty());
    }
    out
}

fn summary(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    (at(0.5), at(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("BROKER_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let up = upstream(&["api.test"]).await;
    let upstream_ca = std::fs::read_to_string(&up.ca_path).unwrap();
    let policy = EgressPolicy::parse(
        Some(&json!({ "allow_private": true, "upstream_ca": up.ca_path.display().to_string() })),
        up.dir.path(),
    )
    .unwrap();
    let rules = Rules::from_json("api", &json!({ "hosts": ["api.test"] })).unwrap();
    let placeholder = broker_proxy::placeholder::generate(&rules.placeholder);
    let start = |audit: Arc<dyn broker_proxy::AuditSink>| {
        Proxy::start(ProxyOptions {
            credentials: vec![ProxiedCredential {
                name: "api".into(),
                rules: rules.clone(),
                placeholder: placeholder.clone(),
                value: SecretValue::from(VALUE.to_string()),
            }],
            policy: policy.clone(),
            resolver: Arc::new(MapResolver::with(&[("api.test", &["127.0.0.1"][..])])),
            dialer: Arc::new(RecordingDialer::default()),
            audit,
            also_redact: Vec::new(),
            validity: Duration::from_secs(3600),
            admit: None,
        })
    };
    let proxy = start(Arc::new(MemoryAudit::new())).await.unwrap();
    // The same with the broker's hash-chained log, held as `broker run` holds it.
    let log_dir = tempfile::tempdir().unwrap();
    let log = Arc::new(broker_core::audit::AuditLog::new(
        log_dir.path().join("audit.jsonl"),
        broker_core::audit::AuditOptions::default(),
    ));
    log.hold().unwrap();
    let template = broker_core::audit::Event::new(
        broker_core::audit::EventKind::Decision,
        broker_core::audit::Severity::Info,
    );
    let logged = start(Arc::new(broker_proxy::LogAudit::new(
        Some(log),
        None,
        template,
    )))
    .await
    .unwrap();

    // Straight to the upstream.
    let direct_tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    let mut direct = handshake(direct_tcp, tls_config(&[upstream_ca])).await;
    let warm = n / 10 + 1;
    time(&mut direct, warm, &format!("Bearer {VALUE}")).await;
    let direct_times = time(&mut direct, n, &format!("Bearer {VALUE}")).await;

    let proxied_times = through(&proxy, &up, &placeholder, n, warm).await;
    let logged_times = through(&logged, &up, &placeholder, n / 10 + 1, 2).await;

    let (d50, d99) = summary(direct_times);
    let (p50, p99) = summary(proxied_times);
    let (l50, l99) = summary(logged_times);
    println!("broker-proxy latency, {n} sequential GETs on one keep-alive connection (loopback):");
    println!("  direct to the upstream:  p50 {d50:>9.1?}  p99 {d99:>9.1?}");
    println!("  through the proxy:       p50 {p50:>9.1?}  p99 {p99:>9.1?}");
    println!(
        "  added by the proxy:      p50 {:>9.1?}  p99 {:>9.1?}",
        p50.saturating_sub(d50),
        p99.saturating_sub(d99)
    );
    println!(
        "  with the audit log file: p50 {l50:>9.1?}  p99 {l99:>9.1?}  ({} requests; each waits for its fsync)",
        n / 10 + 1
    );
}

/// `n` timed GETs (after `warm` untimed ones) through `proxy`: CONNECT, then TLS with the
/// run's CA.
async fn through(
    proxy: &Proxy,
    up: &support::Upstream,
    placeholder: &str,
    n: usize,
    warm: usize,
) -> Vec<Duration> {
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let userinfo = proxy
        .url()
        .trim_start_matches("http://")
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, userinfo);
    let authority = format!("api.test:{}", up.addr.port());
    tcp.write_all(
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic {auth}\r\n\r\n")
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
    let mut proxied = handshake(tcp, tls_config(&[proxy.ca_pem().to_string()])).await;
    time(&mut proxied, warm, &format!("Bearer {placeholder}")).await;
    time(&mut proxied, n, &format!("Bearer {placeholder}")).await
}
