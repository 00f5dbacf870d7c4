//! The proxy: a loopback HTTP/1.1 listener for one run.
//!
//! - Every request to the proxy needs `Proxy-Authorization: Basic` with the run's token as the
//!   password (the token sits in the proxy URL's userinfo); otherwise 407.
//! - `CONNECT host:port`: the egress check runs on the CONNECT authority (403 when refused);
//!   then the tunnel is intercepted with a leaf certificate of the run's CA for that host, and
//!   each request inside is handled as below with the CONNECT authority as its target — never
//!   its `Host` header or the client's SNI. Upstream connections go to the checked addresses
//!   only, with TLS verified against the system roots plus `egress.proxy.upstream_ca`.
//! - `GET http://host/...` (absolute form): the same, over plain HTTP — except that a value is
//!   never put into a plain-HTTP request unless its credential says `allow_http: true`.
//! - A request carrying a credential's placeholder (any header, the path or query, the first
//!   [`BODY_SCAN_LIMIT`] bytes of the body; `Basic` credentials and percent-encoding decoded)
//!   toward a host outside that credential's `hosts`, or over plain HTTP without the
//!   credential's `allow_http`, is answered 403 and raises an alert; nothing is sent upstream.
//!   Toward an allowed host (over verified TLS, or plain HTTP with `allow_http`), the
//!   placeholder is replaced by the value in the credential's configured headers.
//! - Every request toward a host matching any credential's `hosts` (placeholder or not) is
//!   sent with `accept-encoding: identity`, and a compressed answer from such a host is
//!   refused (502), as it could not be redacted.
//! - Responses stream back with every proxied value redacted (headers and body, split across
//!   chunks too); `Content-Length` is dropped when a body is rewritten.
//! - One audit record per request that used a credential, after its response body ends.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use broker_core::audit::{EventKind, Severity};
use broker_core::redact::Redactor;
use broker_core::{Error, Result, SecretValue};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, watch};
use zeroize::{Zeroize, Zeroizing};

use crate::audit::AuditSink;
use crate::ca::RunCa;
use crate::net::{Dialer, Egress, Resolver, Target};
use crate::settings::{EgressPolicy, HostPattern, Rules, any_matches};

/// How long dialling one upstream address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest path kept in an audit record.
const AUDIT_PATH_LIMIT: usize = 200;

/// A response body: streamed, redacted.
pub type ProxyBody = BoxBody<Bytes, io::Error>;

/// A request body on its way upstream.
type UpBody = BoxBody<Bytes, hyper::Error>;

/// Request bodies toward a host some credential does not allow are read up to this size and
/// scanned for placeholders before anything is sent; the rest streams unscanned.
pub const BODY_SCAN_LIMIT: usize = 1 << 20;

/// One credential the proxy holds: its rules, the placeholder the child has, and the value.
pub struct ProxiedCredential {
    /// The credential's name.
    pub name: String,
    /// Its `proxy:` rules.
    pub rules: Rules,
    /// What the child holds instead of the value.
    pub placeholder: String,
    /// The value, put in on the way out.
    pub value: SecretValue,
}

impl std::fmt::Debug for ProxiedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxiedCredential")
            .field("name", &self.name)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// What [`Proxy::start`] needs.
pub struct ProxyOptions {
    /// The credentials in placeholder mode.
    pub credentials: Vec<ProxiedCredential>,
    /// `egress.proxy`.
    pub policy: EgressPolicy,
    /// How names are resolved.
    pub resolver: Arc<dyn Resolver>,
    /// How checked addresses are dialled.
    pub dialer: Arc<dyn Dialer>,
    /// Where audit records go.
    pub audit: Arc<dyn AuditSink>,
    /// Other delivered values, redacted from what the proxy records (paths in audit records).
    pub also_redact: Vec<(String, SecretValue)>,
    /// How long the run's CA certificate is valid.
    pub validity: Duration,
}

/// A running proxy. Dropping it stops the listener and every connection.
pub struct Proxy {
    addr: SocketAddr,
    token: Zeroizing<String>,
    ca_pem: String,
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    credentials: Vec<ProxiedCredential>,
    /// Matches every placeholder; pattern i is credential i's.
    matcher: Option<AhoCorasick>,
    egress: Egress,
    dialer: Arc<dyn Dialer>,
    audit: Arc<dyn AuditSink>,
    ca: RunCa,
    client_tls: Arc<rustls::ClientConfig>,
    /// The proxied values: redacted from responses.
    redactor: Arc<Redactor>,
    /// Every delivered value: redacted from what is recorded.
    record_redactor: Arc<Redactor>,
    /// `Basic base64(broker:token)`.
    expected_auth: Zeroizing<String>,
    shutdown: watch::Receiver<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Proxy {
    /// Starts the proxy on `127.0.0.1` (a free port) with a fresh CA and token.
    pub async fn start(options: ProxyOptions) -> Result<Proxy> {
        let ProxyOptions {
            credentials,
            policy,
            resolver,
            dialer,
            audit,
            also_redact,
            validity,
        } = options;
        let ca = RunCa::generate(validity)?;
        let client_tls = client_tls(&policy)?;
        let matcher = if credentials.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(credentials.iter().map(|c| c.placeholder.as_bytes()))
                    .map_err(|e| Error::internal(format!("proxy: placeholder matcher: {e}")))?,
            )
        };
        let redactor = Arc::new(Redactor::new(
            credentials.iter().map(|c| (c.name.as_str(), &c.value)),
        ));
        let record_redactor = Arc::new(Redactor::new(
            credentials
                .iter()
                .map(|c| (c.name.as_str(), &c.value))
                .chain(also_redact.iter().map(|(n, v)| (n.as_str(), v))),
        ));
        let rule_hosts: Vec<HostPattern> = credentials
            .iter()
            .flat_map(|c| c.rules.hosts.iter().cloned())
            .collect();
        let token: String = hex_token();
        let expected_auth = Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("broker:{token}"))
        ));
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::io("cannot start the proxy's listener", &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the proxy's address", &e))?;
        let (tx, rx) = watch::channel(());
        let ca_pem = ca.pem().to_string();
        let shared = Arc::new(Shared {
            credentials,
            matcher,
            egress: Egress {
                policy,
                rule_hosts,
                resolver,
            },
            dialer,
            audit,
            ca,
            client_tls,
            redactor,
            record_redactor,
            expected_auth,
            shutdown: rx,
        });
        let accept = Arc::clone(&shared);
        spawn_guarded(&shared, async move { accept_loop(accept, listener).await });
        Ok(Proxy {
            addr,
            token: Zeroizing::new(token),
            ca_pem,
            _shutdown: tx,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://broker:TOKEN@127.0.0.1:PORT`, for `HTTPS_PROXY` and `HTTP_PROXY`.
    pub fn url(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("http://broker:{}@{}", &*self.token, self.addr))
    }

    /// The run's CA certificate (PEM), for the child's trust store.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

fn hex_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Upstream TLS: the system's roots plus `egress.proxy.upstream_ca`.
fn client_tls(policy: &EgressPolicy) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &policy.upstream_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect())
            .map_err(|e| {
                Error::invalid_config(format!(
                    "`egress.proxy.upstream_ca`: cannot read certificates from {}: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(Error::invalid_config(format!(
                "`egress.proxy.upstream_ca`: no certificate in {}",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| Error::invalid_config(format!("`egress.proxy.upstream_ca`: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("proxy: upstream TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs `fut` until it ends or the proxy is dropped.
fn spawn_guarded<F>(shared: &Shared, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut stop = shared.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            _ = stop.changed() => {}
        }
    });
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn_shared = Arc::clone(&shared);
        spawn_guarded(&shared, async move {
            let svc_shared = Arc::clone(&conn_shared);
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&svc_shared);
                async move { Ok::<_, Infallible>(front(shared, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(error = %e, "proxy: client connection ended");
            }
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("broker proxy: {body}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// A request to the proxy itself: authenticate, then CONNECT or absolute-form HTTP.
async fn front(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    if !authorized(&shared, req.headers()) {
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy authentication required (use the proxy URL this run was given)",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"broker run\""),
        );
        return r;
    }
    if req.method() == Method::CONNECT {
        return connect(shared, req).await;
    }
    let uri = req.uri();
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "send CONNECT host:port, or an absolute http:// URI",
        );
    };
    let Some(target) = Target::new(authority.host(), authority.port_u16().unwrap_or(80)) else {
        return text(StatusCode::BAD_REQUEST, "the URI's host is not a host");
    };
    // A placeholder bound for the wrong host is caught before the egress check, so the
    // attempt raises an alert even toward a host nothing allows.
    let req = match inspect(&shared, &target, Scheme::Http, req).await {
        Ok(req) => req,
        Err(r) => return r,
    };
    let addrs = match shared.egress.check(&target).await {
        Ok(a) => a,
        Err(refusal) => {
            return blocked(&shared, &target, req.method(), refusal.0).await;
        }
    };
    let upstream = Upstream::default();
    forward(&shared, &target, Scheme::Http, &addrs, &upstream, req).await
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers.get(header::PROXY_AUTHORIZATION) else {
        return false;
    };
    let expected = shared.expected_auth.as_bytes();
    given.as_bytes().len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected))
}

async fn blocked(
    shared: &Shared,
    target: &Target,
    method: &Method,
    reason: String,
) -> Response<ProxyBody> {
    let mut e = shared.audit.event(EventKind::Decision, Severity::Warning);
    e.action = Some("proxy".into());
    e.decision = Some("denied".into());
    e.outcome = Some("blocked".into());
    e.reason = Some(format!(
        "host={} method={method} blocked: {reason}",
        target.authority()
    ));
    shared.audit.record(e).await;
    text(StatusCode::FORBIDDEN, &format!("blocked: {reason}"))
}

async fn connect(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let Some(target) = Target::new(authority.host(), authority.port_u16().unwrap_or(443)) else {
        return text(StatusCode::BAD_REQUEST, "the CONNECT host is not a host");
    };
    let addrs = match shared.egress.check(&target).await {
        Ok(a) => a,
        Err(refusal) => return blocked(&shared, &target, &Method::CONNECT, refusal.0).await,
    };
    let tunnel_shared = Arc::clone(&shared);
    spawn_guarded(&shared, async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => tunnel(tunnel_shared, target, addrs, upgraded).await,
            Err(e) => tracing::debug!(error = %e, "proxy: CONNECT upgrade failed"),
        }
    });
    empty(StatusCode::OK)
}

/// Serves the requests inside an intercepted CONNECT tunnel.
async fn tunnel(
    shared: Arc<Shared>,
    target: Target,
    addrs: Vec<SocketAddr>,
    upgraded: hyper::upgrade::Upgraded,
) {
    let config = match shared.ca.server_config(&target.host) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("proxy: {e}");
            return;
        }
    };
    let tls = match tokio_rustls::TlsAcceptor::from(config)
        .accept(TokioIo::new(upgraded))
        .await
    {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(error = %e, host = %target.host, "proxy: TLS from the client failed");
            return;
        }
    };
    let target = Arc::new(target);
    let addrs = Arc::new(addrs);
    let upstream = Arc::new(Upstream::default());
    let service = hyper::service::service_fn(move |req| {
        let (shared, target, addrs, upstream) = (
            Arc::clone(&shared),
            Arc::clone(&target),
            Arc::clone(&addrs),
            Arc::clone(&upstream),
        );
        async move {
            let response = match inspect(&shared, &target, Scheme::Https, req).await {
                Err(r) => r,
                Ok(req) => forward(&shared, &target, Scheme::Https, &addrs, &upstream, req).await,
            };
            Ok::<_, Infallible>(response)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(error = %e, "proxy: tunnel ended");
    }
}

/// The credentials whose placeholder appears in the request's headers, path or query.
fn placeholders_in<B>(shared: &Shared, req: &Request<B>) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let Some(matcher) = &shared.matcher else {
        return found;
    };
    let mut scan = |bytes: &[u8]| {
        for m in matcher.find_iter(bytes) {
            found.insert(m.pattern().as_usize());
        }
    };
    for value in req.headers().values() {
        scan(value.as_bytes());
        if let Some(mut decoded) = basic_decoded(value.as_bytes()) {
            scan(&decoded);
            decoded.zeroize();
        }
    }
    if let Some(pq) = req.uri().path_and_query() {
        scan(pq.as_str().as_bytes());
        scan(&percent_decoded(pq.as_str().as_bytes()));
    }
    found
}

/// Reads up to [`BODY_SCAN_LIMIT`] bytes of the body when a placeholder in it could be
/// refused (some credential's `hosts` do not match the target, or the request is plain HTTP
/// and some credential lacks `allow_http`), and checks the headers, path, query and that
/// prefix ([`check_placeholders`]). The body goes on unchanged.
async fn inspect(
    shared: &Shared,
    target: &Target,
    scheme: Scheme,
    req: Request<Incoming>,
) -> std::result::Result<Request<UpBody>, Response<ProxyBody>> {
    let (parts, mut body) = req.into_parts();
    let foreign = shared
        .credentials
        .iter()
        .any(|c| !any_matches(&c.rules.hosts, &target.host) || !cleartext_allowed(c, scheme));
    let mut in_body = BTreeSet::new();
    let body: UpBody = if foreign && let Some(matcher) = &shared.matcher {
        let mut head = Zeroizing::new(Vec::new());
        let mut done = false;
        while head.len() < BODY_SCAN_LIMIT {
            match body.frame().await {
                None => {
                    done = true;
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "proxy: reading the request body failed");
                    return Err(text(
                        StatusCode::BAD_REQUEST,
                        "the request body was cut short",
                    ));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => head.extend_from_slice(&data),
                    // Request trailers are dropped.
                    Err(_) => {
                        done = true;
                        break;
                    }
                },
            }
        }
        for m in matcher.find_iter(&*head) {
            in_body.insert(m.pattern().as_usize());
        }
        for m in matcher.find_iter(&percent_decoded(&head)) {
            in_body.insert(m.pattern().as_usize());
        }
        let head = Bytes::copy_from_slice(&head);
        if done {
            Full::new(head).map_err(|never| match never {}).boxed()
        } else {
            ChainBody {
                head: Some(head),
                rest: body,
            }
            .boxed()
        }
    } else {
        body.boxed()
    };
    let req = Request::from_parts(parts, body);
    check_placeholders(shared, target, scheme, &req, &in_body).await?;
    Ok(req)
}

/// A body whose first bytes were read already.
struct ChainBody {
    head: Option<Bytes>,
    rest: Incoming,
}

impl hyper::body::Body for ChainBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// Whether credential `c`'s value may go out in a request of `scheme`: always over verified
/// TLS, over plain HTTP only with `allow_http: true`.
fn cleartext_allowed(c: &ProxiedCredential, scheme: Scheme) -> bool {
    scheme == Scheme::Https || c.rules.allow_http
}

/// 403 and an alert when a placeholder is bound for a host its credential does not allow, or
/// would go out over plain HTTP without the credential's `allow_http`.
async fn check_placeholders(
    shared: &Shared,
    target: &Target,
    scheme: Scheme,
    req: &Request<UpBody>,
    in_body: &BTreeSet<usize>,
) -> std::result::Result<(), Response<ProxyBody>> {
    let mut found = placeholders_in(shared, req);
    found.extend(in_body.iter().copied());
    let credentials = || found.iter().map(|i| &shared.credentials[*i]);
    let wrong: Vec<&ProxiedCredential> = credentials()
        .filter(|c| !any_matches(&c.rules.hosts, &target.host))
        .collect();
    let (refused, why, answer) = if !wrong.is_empty() {
        (
            wrong,
            "placeholder sent toward a host outside the credential's proxy.hosts (possible exfiltration)",
            format!("may not be sent to {}", target.host),
        )
    } else {
        let cleartext: Vec<&ProxiedCredential> = credentials()
            .filter(|c| !cleartext_allowed(c, scheme))
            .collect();
        if cleartext.is_empty() {
            return Ok(());
        }
        (
            cleartext,
            "placeholder sent over plain http (the value would cross the network unencrypted; the credential's proxy.allow_http is not set)",
            format!(
                "may not be sent over plain http to {} (use https, or set `proxy.allow_http: true`)",
                target.host
            ),
        )
    };
    let names: Vec<&str> = refused.iter().map(|c| c.name.as_str()).collect();
    let mut e = shared.audit.event(EventKind::Decision, Severity::Alert);
    e.action = Some("proxy".into());
    e.credential = Some(names.join(","));
    e.decision = Some("denied".into());
    e.outcome = Some("blocked".into());
    e.reason = Some(format!(
        "{why}: host={} method={} path={}",
        target.authority(),
        req.method(),
        record_path(shared, req.uri().path())
    ));
    shared.audit.alert(e).await;
    Err(text(
        StatusCode::FORBIDDEN,
        &format!(
            "blocked: the placeholder of credential `{}` {answer}",
            names.join("`, `"),
        ),
    ))
}

fn basic_decoded(value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let rest = value
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"basic "))
        .map(|_| &value[6..])?;
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()
        .map(Zeroizing::new)
}

fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = bytes.get(i + 1..i + 3)
            && let Ok(s) = std::str::from_utf8(h)
            && let Ok(b) = u8::from_str_radix(s, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    out
}

fn record_path(shared: &Shared, path: &str) -> String {
    let redacted = shared.record_redactor.redact_str(path);
    let elided: String = redacted.chars().take(AUDIT_PATH_LIMIT).collect();
    broker_core::grammar::elide(&elided).into_owned()
}

/// Replaces placeholders of `creds` in one header value (decoding `Basic` credentials).
/// `None` when nothing was replaced.
fn substitute(shared: &Shared, value: &[u8], creds: &[usize]) -> Option<Zeroizing<Vec<u8>>> {
    let matcher = shared.matcher.as_ref()?;
    let replace = |bytes: &[u8]| -> Option<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() + 64));
        let mut last = 0;
        let mut hit = false;
        for m in matcher.find_iter(bytes) {
            let i = m.pattern().as_usize();
            if !creds.contains(&i) {
                continue;
            }
            out.extend_from_slice(&bytes[last..m.start()]);
            out.extend_from_slice(shared.credentials[i].value.expose());
            last = m.end();
            hit = true;
        }
        out.extend_from_slice(&bytes[last..]);
        hit.then_some(out)
    };
    if let Some(decoded) = basic_decoded(value) {
        let inner = replace(&decoded)?;
        let mut out = Zeroizing::new(b"Basic ".to_vec());
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*inner));
        out.extend_from_slice(encoded.as_bytes());
        return Some(out);
    }
    replace(value)
}

/// Puts values in for placeholders in the configured headers; returns the credentials used.
fn substitute_headers(
    shared: &Shared,
    target: &Target,
    scheme: Scheme,
    headers: &mut HeaderMap,
    found: &BTreeSet<usize>,
) -> std::result::Result<Vec<usize>, String> {
    let mut used = BTreeSet::new();
    let names: Vec<HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let creds: Vec<usize> = found
            .iter()
            .copied()
            .filter(|i| {
                let c = &shared.credentials[*i];
                c.rules.headers.contains(&name)
                    && any_matches(&c.rules.hosts, &target.host)
                    && cleartext_allowed(c, scheme)
            })
            .collect();
        if creds.is_empty() {
            continue;
        }
        let old: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let mut new = Vec::with_capacity(old.len());
        let mut changed = false;
        for v in &old {
            match substitute(shared, v.as_bytes(), &creds) {
                Some(bytes) => {
                    let mut hv = HeaderValue::from_bytes(&bytes).map_err(|_| {
                        "a credential's value cannot be carried in an HTTP header".to_string()
                    })?;
                    hv.set_sensitive(true);
                    new.push(hv);
                    changed = true;
                    if let Some(m) = shared.matcher.as_ref() {
                        let decoded = basic_decoded(v.as_bytes());
                        let plain = m.find_iter(v.as_bytes());
                        let inner = decoded.iter().flat_map(|d| m.find_iter(d.as_slice()));
                        used.extend(
                            plain
                                .chain(inner)
                                .map(|mm| mm.pattern().as_usize())
                                .filter(|i| creds.contains(i)),
                        );
                    }
                }
                None => new.push(v.clone()),
            }
        }
        if changed {
            headers.remove(&name);
            for v in new {
                headers.append(name.clone(), v);
            }
        }
    }
    Ok(used.into_iter().filter(|i| found.contains(i)).collect())
}

/// Headers that describe one hop, not the message.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The upstream connection of one tunnel (reused while it stays open).
#[derive(Default)]
struct Upstream {
    sender: Mutex<Option<hyper::client::conn::http1::SendRequest<UpBody>>>,
}

async fn dial(
    shared: &Shared,
    target: &Target,
    scheme: Scheme,
    addrs: &[SocketAddr],
) -> std::result::Result<hyper::client::conn::http1::SendRequest<UpBody>, String> {
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, shared.dialer.connect(*addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out"),
        }
    }
    let Some(stream) = stream else {
        return Err(format!("cannot connect to {}: {last}", target.authority()));
    };
    let handshake_failed = |e: hyper::Error| format!("HTTP to {} failed: {e}", target.authority());
    match scheme {
        Scheme::Http => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(handshake_failed)?;
            spawn_guarded(shared, async move {
                let _ = conn.await;
            });
            Ok(sender)
        }
        Scheme::Https => {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| format!("`{}` is not a TLS server name", target.host))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::clone(&shared.client_tls))
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS to {} failed: {e}", target.authority()))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(handshake_failed)?;
            spawn_guarded(shared, async move {
                let _ = conn.await;
            });
            Ok(sender)
        }
    }
}

/// Forwards one request to `target` (already checked) and streams the response back.
async fn forward(
    shared: &Arc<Shared>,
    target: &Target,
    scheme: Scheme,
    addrs: &[SocketAddr],
    upstream: &Upstream,
    req: Request<UpBody>,
) -> Response<ProxyBody> {
    let found = placeholders_in(shared, &req);
    let (mut parts, body) = req.into_parts();
    if parts.headers.get(header::UPGRADE).is_some() {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "protocol upgrades (websockets) are not supported through the proxy yet",
        );
    }
    strip_hop_by_hop(&mut parts.headers);
    let used = match substitute_headers(shared, target, scheme, &mut parts.headers, &found) {
        Ok(u) => u,
        Err(msg) => return text(StatusCode::BAD_GATEWAY, &msg),
    };
    // A credential's host could reflect a value whatever this request carries: its answers
    // must come uncompressed, so the redactor sees the bytes the client will.
    let credential_host = shared
        .credentials
        .iter()
        .any(|c| any_matches(&c.rules.hosts, &target.host));
    if credential_host {
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let host_header = if target.port == default_port {
        match target.authority().rsplit_once(':') {
            Some((h, _)) => h.to_string(),
            None => target.host.clone(),
        }
    } else {
        target.authority()
    };
    if let Ok(v) = HeaderValue::from_str(&host_header) {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let method = parts.method.clone();
    let audit_path = record_path(shared, parts.uri.path());
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad request path"),
    };
    parts.version = hyper::Version::HTTP_11;
    let request = Request::from_parts(parts, body);

    let mut slot = upstream.sender.lock().await;
    let reusable = match slot.as_mut() {
        Some(s) => s.ready().await.is_ok(),
        None => false,
    };
    if !reusable {
        match dial(shared, target, scheme, addrs).await {
            Ok(s) => *slot = Some(s),
            Err(msg) => {
                *slot = None;
                drop(slot);
                return upstream_failed(shared, target, &method, &audit_path, &used, msg).await;
            }
        }
    }
    let Some(sender) = slot.as_mut() else {
        return text(StatusCode::BAD_GATEWAY, "no upstream connection");
    };
    let response = sender.send_request(request).await;
    drop(slot);
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            *upstream.sender.lock().await = None;
            let msg = format!("upstream {} failed: {e}", target.authority());
            return upstream_failed(shared, target, &method, &audit_path, &used, msg).await;
        }
    };
    let (mut parts, body) = response.into_parts();
    if (credential_host || !used.is_empty()) && compressed(&parts.headers) {
        let msg =
            "upstream sent a compressed response from a credential's host; it cannot be redacted"
                .to_string();
        return upstream_failed(shared, target, &method, &audit_path, &used, msg).await;
    }
    strip_hop_by_hop(&mut parts.headers);
    redact_headers(&shared.redactor, &mut parts.headers);
    let status = parts.status;
    let has_body = method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED;
    let record = (!used.is_empty()).then(|| RequestRecord {
        credentials: used
            .iter()
            .map(|i| shared.credentials[*i].name.clone())
            .collect(),
        host: target.authority(),
        method: method.to_string(),
        path: audit_path,
        status: status.as_u16(),
    });
    let body = if has_body {
        parts.headers.remove(header::CONTENT_LENGTH);
        redacted_body(shared, body, record)
    } else {
        if let Some(r) = record {
            r.write(shared, 0, "forwarded").await;
        }
        Empty::new().map_err(|never| match never {}).boxed()
    };
    Response::from_parts(parts, body)
}

/// Whether `Content-Encoding` names any coding other than `identity`.
fn compressed(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
}

async fn upstream_failed(
    shared: &Shared,
    target: &Target,
    method: &Method,
    path: &str,
    used: &[usize],
    msg: String,
) -> Response<ProxyBody> {
    let mut e = shared.audit.event(EventKind::Decision, Severity::Warning);
    e.action = Some("proxy".into());
    if !used.is_empty() {
        let names: Vec<&str> = used
            .iter()
            .map(|i| shared.credentials[*i].name.as_str())
            .collect();
        e.credential = Some(names.join(","));
    }
    e.outcome = Some("failed".into());
    e.reason = Some(format!(
        "host={} method={method} path={path} failed: {msg}",
        target.authority()
    ));
    shared.audit.record(e).await;
    text(StatusCode::BAD_GATEWAY, &msg)
}

fn redact_headers(redactor: &Redactor, headers: &mut HeaderMap) {
    if redactor.is_empty() {
        return;
    }
    for value in headers.values_mut() {
        let redacted = redactor.redact(value.as_bytes());
        if let std::borrow::Cow::Owned(bytes) = redacted {
            *value = HeaderValue::from_bytes(&bytes)
                .unwrap_or_else(|_| HeaderValue::from_static("[REDACTED]"));
        }
    }
}

/// What the audit record of a request that used a credential says.
struct RequestRecord {
    credentials: Vec<String>,
    host: String,
    method: String,
    path: String,
    status: u16,
}

impl RequestRecord {
    async fn write(self, shared: &Shared, bytes: u64, outcome: &str) {
        let mut e = shared.audit.event(EventKind::Decision, Severity::Info);
        e.action = Some("proxy".into());
        e.credential = Some(self.credentials.join(","));
        e.decision = Some("granted".into());
        e.outcome = Some(outcome.into());
        e.reason = Some(format!(
            "host={} method={} path={} status={} bytes={bytes}",
            self.host, self.method, self.path, self.status
        ));
        shared.audit.record(e).await;
    }
}

/// Streams `body` through the redactor; writes `record` when it ends.
fn redacted_body(
    shared: &Arc<Shared>,
    mut body: Incoming,
    record: Option<RequestRecord>,
) -> ProxyBody {
    let (tx, rx) = mpsc::channel::<io::Result<Frame<Bytes>>>(8);
    let task_shared = Arc::clone(shared);
    spawn_guarded(shared, async move {
        let mut stream = task_shared.redactor.stream();
        let mut out = Vec::with_capacity(16 * 1024);
        let mut bytes: u64 = 0;
        let mut outcome = "forwarded";
        loop {
            match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    outcome = "upstream body failed";
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    break;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        bytes += data.len() as u64;
                        stream.push(&data, &mut out);
                        if !out.is_empty() {
                            let chunk = Bytes::copy_from_slice(&out);
                            out.zeroize();
                            out.clear();
                            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                                outcome = "client went away";
                                break;
                            }
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            redact_headers(&task_shared.redactor, &mut trailers);
                            stream.flush(&mut out);
                            if !out.is_empty() {
                                let _ =
                                    tx.send(Ok(Frame::data(Bytes::copy_from_slice(&out)))).await;
                                out.zeroize();
                                out.clear();
                            }
                            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                        }
                    }
                },
            }
        }
        stream.flush(&mut out);
        if !out.is_empty() {
            let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(&out)))).await;
            out.zeroize();
        }
        // Recorded before the body ends: a client that saw the whole response can count on
        // the record being there.
        if let Some(r) = record {
            r.write(&task_shared, bytes, outcome).await;
        }
        drop(tx);
    });
    ChannelBody { rx }.boxed()
}

struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Frame<Bytes>>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx)
    }
}
