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
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use broker_core::audit::{EventKind, HttpExchange, Severity};
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
use crate::substitute::{BodyType, Placeholders};

/// How long dialling one upstream address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Client connections one proxy serves at once (a tunnel counts once); more are closed.
pub const MAX_CONNECTIONS: usize = 512;
/// Request bodies one proxy holds at once to scan or substitute (each up to
/// [`BODY_SCAN_LIMIT`]); more wait.
pub const MAX_BODY_BUFFERS: usize = 16;
/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest read buffer of a client connection: a request head much larger is refused
/// (431; hyper checks between reads, so the bound is approximate).
pub const MAX_HEAD: usize = 64 * 1024;
/// The longest path kept in an audit record.
const AUDIT_PATH_LIMIT: usize = 200;

/// A response body: streamed, redacted.
pub type ProxyBody = BoxBody<Bytes, io::Error>;

/// A request body on its way upstream.
pub(crate) type UpBody = BoxBody<Bytes, hyper::Error>;

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
    /// Asked before each request that would use a credential (the daemon: is the agent still
    /// allowed?); a refusal is answered 403 with nothing sent. `None`: always admitted.
    pub admit: Option<Arc<dyn Admit>>,
}

/// Whether requests that use a credential may still go out (see [`ProxyOptions::admit`]).
#[broker_core::async_trait]
pub trait Admit: Send + Sync {
    /// `Err(why)` to refuse; must fail closed when it cannot tell.
    async fn admit(&self) -> std::result::Result<(), String>;
}

/// A running proxy. Dropping it stops the listener and every connection.
pub struct Proxy {
    addr: SocketAddr,
    token: Zeroizing<String>,
    ca_pem: String,
    /// For listeners added later ([`Proxy::listen_unix`]).
    shared: Arc<Shared>,
    _shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    /// The credentials and a matcher of their placeholders.
    pub(crate) placeholders: Placeholders,
    egress: Egress,
    dialer: Arc<dyn Dialer>,
    audit: Arc<dyn AuditSink>,
    ca: RunCa,
    client_tls: Arc<rustls::ClientConfig>,
    /// The proxied values: redacted from responses.
    pub(crate) redactor: Arc<Redactor>,
    /// Every delivered value: redacted from what is recorded.
    record_redactor: Arc<Redactor>,
    /// `Basic base64(broker:token)`.
    expected_auth: Zeroizing<String>,
    shutdown: watch::Receiver<()>,
    /// Set when an audit record could not be written: from then on, no request that would
    /// use a credential is forwarded (fail closed).
    audit_failed: AtomicBool,
    /// Client connections left ([`MAX_CONNECTIONS`]).
    connections: Arc<tokio::sync::Semaphore>,
    /// [`ProxyOptions::admit`].
    admit: Option<Arc<dyn Admit>>,
    /// Request bodies that may be held for scanning at once ([`MAX_BODY_BUFFERS`]).
    body_buffers: tokio::sync::Semaphore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
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
            admit,
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
            placeholders: Placeholders {
                credentials,
                matcher,
            },
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
            audit_failed: AtomicBool::new(false),
            admit,
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            body_buffers: tokio::sync::Semaphore::new(MAX_BODY_BUFFERS),
        });
        let accept = Arc::clone(&shared);
        spawn_guarded(&shared, async move { accept_loop(accept, listener).await });
        Ok(Proxy {
            addr,
            token: Zeroizing::new(token),
            ca_pem,
            shared,
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

    /// Also serves the proxy on a new unix socket at `path` (same token, rules and CA), until
    /// the proxy is dropped. For `broker run --isolate`, whose child's network namespace
    /// reaches the proxy only through this socket. The caller picks a private directory:
    /// the socket's own mode does not protect it.
    pub fn listen_unix(&self, path: &std::path::Path) -> Result<()> {
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
            Error::io(
                format!("cannot start the proxy's listener at {}", path.display()),
                &e,
            )
        })?;
        let accept = Arc::clone(&self.shared);
        spawn_guarded(&self.shared, async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => serve_connection(&accept, stream),
                    Err(e) => {
                        tracing::debug!(error = %e, "proxy: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(())
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
pub(crate) fn spawn_guarded<F>(shared: &Shared, fut: F)
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
        serve_connection(&shared, stream);
    }
}

/// Serves one client connection (TCP or unix) until it ends or the proxy is dropped.
fn serve_connection<S>(shared: &Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = Arc::clone(&shared.connections).try_acquire_owned() else {
        tracing::warn!("proxy: {MAX_CONNECTIONS} client connections are open; refusing another");
        return;
    };
    let conn_shared = Arc::clone(shared);
    spawn_guarded(shared, async move {
        let _permit = permit;
        let svc_shared = Arc::clone(&conn_shared);
        let service = hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&svc_shared);
            async move { Ok::<_, Infallible>(front(shared, req).await) }
        });
        if let Err(e) = http_server()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await
        {
            tracing::debug!(error = %e, "proxy: client connection ended");
        }
    });
}

/// The HTTP/1.1 server side of every client connection (the proxy's own and each
/// intercepted tunnel): a request head must arrive within [`HEADER_TIMEOUT`] and fit in
/// [`MAX_HEAD`] bytes.
fn http_server() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    b
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
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
    // A placeholder in the head bound for the wrong host is caught before the egress check,
    // so the attempt raises an alert even toward a host nothing allows; the body is read
    // (and checked) only toward a host the egress check let through.
    let in_head = shared.placeholders.scan_head(&req);
    if let Err(r) = check_placeholders(&shared, &target, Scheme::Http, &req, &in_head).await {
        return r;
    }
    let addrs = match shared.egress.check(&target).await {
        Ok(a) => a,
        Err(refusal) => return blocked(&shared, &target, req.method(), refusal.0).await,
    };
    let inspected = match inspect(&shared, &target, Scheme::Http, req, in_head).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let upstream = Arc::new(Upstream::default());
    forward(&shared, &target, Scheme::Http, &addrs, upstream, inspected).await
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
    e.reason = Some(format!("blocked: {reason}"));
    e.http = Some(exchange(target, method, None));
    shared.note(shared.audit.record(e).await);
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
            let in_head = shared.placeholders.scan_head(&req);
            let response = match inspect(&shared, &target, Scheme::Https, req, in_head).await {
                Err(r) => r,
                Ok(i) => forward(&shared, &target, Scheme::Https, &addrs, upstream, i).await,
            };
            Ok::<_, Infallible>(response)
        }
    });
    if let Err(e) = http_server()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(error = %e, "proxy: tunnel ended");
    }
}

/// A request that passed [`check_placeholders`].
pub(crate) struct Inspected {
    pub(crate) req: Request<UpBody>,
    /// The whole body, when it was read (it fits in [`BODY_SCAN_LIMIT`]).
    whole_body: Option<Bytes>,
    /// The credentials whose placeholder is anywhere in the request (headers, path, query,
    /// the body's first [`BODY_SCAN_LIMIT`] bytes when read).
    found: BTreeSet<usize>,
}

/// Finds the placeholders in a request (`in_head`: those of its head, found already) and
/// refuses it ([`check_placeholders`]) when one is bound where its credential does not allow.
/// The body's first [`BODY_SCAN_LIMIT`] bytes are read when a placeholder in them could be
/// refused (some credential's `hosts` do not match the target, or the request is plain HTTP
/// and some credential lacks `allow_http`) or could take a value (a JSON or form body toward
/// a credential with `body` fields).
async fn inspect(
    shared: &Shared,
    target: &Target,
    scheme: Scheme,
    req: Request<Incoming>,
    in_head: BTreeSet<usize>,
) -> std::result::Result<Inspected, Response<ProxyBody>> {
    let mut found = in_head;
    let (parts, mut body) = req.into_parts();
    let placeholders = &shared.placeholders;
    let creds = &placeholders.credentials;
    let foreign = creds
        .iter()
        .any(|c| !any_matches(&c.rules.hosts, &target.host) || !cleartext_allowed(c, scheme));
    let takes_body = BodyType::of(&parts.headers).is_some()
        && creds.iter().any(|c| {
            !c.rules.body.is_empty()
                && any_matches(&c.rules.hosts, &target.host)
                && cleartext_allowed(c, scheme)
        });
    let mut whole_body = None;
    let body: UpBody = if (foreign || takes_body) && placeholders.matcher.is_some() {
        // At most MAX_BODY_BUFFERS bodies are held at once; the others wait.
        let _buffer = shared.body_buffers.acquire().await;
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
        placeholders.scan(&head, &mut found);
        let head = Bytes::copy_from_slice(&head);
        if done {
            whole_body = Some(head.clone());
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
    check_placeholders(shared, target, scheme, &req, &found).await?;
    Ok(Inspected {
        req,
        whole_body,
        found,
    })
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

/// 403 and an alert when a placeholder is bound for a host its credential does not allow,
/// would go out over plain HTTP without the credential's `allow_http`, or is used with a
/// method or path outside the credential's `methods` and `paths`.
async fn check_placeholders<B>(
    shared: &Shared,
    target: &Target,
    scheme: Scheme,
    req: &Request<B>,
    found: &BTreeSet<usize>,
) -> std::result::Result<(), Response<ProxyBody>> {
    let credentials = || found.iter().map(|i| &shared.placeholders.credentials[*i]);
    let pick = |f: &dyn Fn(&ProxiedCredential) -> bool| -> Vec<&ProxiedCredential> {
        credentials().filter(|c| f(c)).collect()
    };
    let wrong_host = pick(&|c| !any_matches(&c.rules.hosts, &target.host));
    let cleartext = pick(&|c| !cleartext_allowed(c, scheme));
    let target_path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let outside_rules = pick(&|c| {
        !c.rules
            .allows_request(req.method(), target_path, req.headers())
    });
    let (refused, why, answer) = if !wrong_host.is_empty() {
        (
            wrong_host,
            "placeholder sent toward a host outside the credential's proxy.hosts (possible exfiltration)",
            format!("may not be sent to {}", target.host),
        )
    } else if !cleartext.is_empty() {
        (
            cleartext,
            "placeholder sent over plain http (the value would cross the network unencrypted; the credential's proxy.allow_http is not set)",
            format!(
                "may not be sent over plain http to {} (use https, or set `proxy.allow_http: true`)",
                target.host
            ),
        )
    } else if !outside_rules.is_empty() {
        (
            outside_rules,
            "placeholder sent with a method or path outside the credential's proxy.methods and proxy.paths",
            format!(
                "may not be used for {} {}",
                req.method(),
                record_path(shared, req.uri().path())
            ),
        )
    } else {
        return Ok(());
    };
    let names: Vec<&str> = refused.iter().map(|c| c.name.as_str()).collect();
    let mut e = shared.audit.event(EventKind::Decision, Severity::Alert);
    e.action = Some("proxy".into());
    e.credential = Some(names.join(","));
    e.decision = Some("denied".into());
    e.outcome = Some("blocked".into());
    e.reason = Some(why.to_string());
    e.http = Some(exchange(
        target,
        req.method(),
        Some(record_path(shared, req.uri().path())),
    ));
    shared.note(shared.audit.alert(e).await);
    Err(text(
        StatusCode::FORBIDDEN,
        &format!(
            "blocked: the placeholder of credential `{}` {answer}",
            names.join("`, `"),
        ),
    ))
}

/// The `http` part of an audit record.
pub(crate) fn exchange(target: &Target, method: &Method, path: Option<String>) -> HttpExchange {
    HttpExchange {
        host: target.authority(),
        method: method.to_string(),
        path,
        status: None,
        bytes: None,
    }
}

impl Shared {
    /// Notes the outcome of writing an audit record: after a failure, no request that would
    /// use a credential is forwarded again.
    pub(crate) fn note(&self, written: Result<()>) {
        if written.is_err() {
            self.audit_failed.store(true, Ordering::SeqCst);
        }
    }

    fn audit_failed(&self) -> bool {
        self.audit_failed.load(Ordering::SeqCst)
    }
}

pub(crate) fn record_path(shared: &Shared, path: &str) -> String {
    let redacted = shared.record_redactor.redact_str(path);
    let elided: String = redacted.chars().take(AUDIT_PATH_LIMIT).collect();
    broker_core::grammar::elide(&elided).into_owned()
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

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

pub(crate) async fn dial(
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
                let _ = conn.with_upgrades().await;
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
                let _ = conn.with_upgrades().await;
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
    upstream: Arc<Upstream>,
    inspected: Inspected,
) -> Response<ProxyBody> {
    let Inspected {
        req,
        whole_body,
        found,
    } = inspected;
    let (mut parts, body) = req.into_parts();
    let websocket = match parts.headers.get(header::UPGRADE) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"websocket") => true,
        Some(_) => {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "protocol upgrades other than websocket are not supported through the proxy",
            );
        }
    };
    // Every placeholder left is its credential's to take here: check_placeholders refused
    // the request otherwise.
    let eligible: Vec<usize> = found.into_iter().collect();
    if !eligible.is_empty() && shared.audit_failed() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written: requests that use a credential are refused",
        );
    }
    if !eligible.is_empty()
        && let Some(admit) = &shared.admit
        && let Err(why) = admit.admit().await
    {
        return blocked(shared, target, &parts.method, why).await;
    }
    let method = parts.method.clone();
    let audit_path = record_path(shared, parts.uri.path());
    let client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    strip_hop_by_hop(&mut parts.headers);
    let substituted = substitute(shared, &mut parts, whole_body, body, &eligible);
    let (body, used) = match substituted {
        Ok(s) => s,
        Err(msg) => return text(StatusCode::BAD_GATEWAY, &msg),
    };
    // A credential's host could reflect a value whatever this request carries: its answers
    // must come uncompressed, so the redactor sees the bytes the client will.
    let credential_host = shared
        .placeholders
        .credentials
        .iter()
        .any(|c| any_matches(&c.rules.hosts, &target.host));
    if credential_host {
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    if websocket {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // No compression: the relay redacts frames it can read.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
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
    parts.version = hyper::Version::HTTP_11;
    let request = Request::from_parts(parts, body);
    let record = (!used.is_empty()).then(|| RequestRecord {
        credentials: used
            .iter()
            .map(|i| shared.placeholders.credentials[*i].name.clone())
            .collect(),
        http: exchange(target, &method, Some(audit_path.clone())),
    });
    // The exchange runs on its own: a client that goes away mid-request cannot stop the
    // audit record of a request already sent (hyper drops this future then, not the task).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_shared = Arc::clone(shared);
    let target = target.clone();
    let addrs = addrs.to_vec();
    spawn_guarded(shared, async move {
        let shared = &task_shared;
        let response = if websocket {
            let handshake = crate::websocket::Handshake {
                target: &target,
                scheme,
                addrs: &addrs,
                audit_path: &audit_path,
                used: &used,
                credential_host,
                record,
            };
            crate::websocket::relay(shared, handshake, request, client_upgrade).await
        } else {
            let exchange = Exchange {
                target: &target,
                scheme,
                addrs: &addrs,
                method: &method,
                audit_path: &audit_path,
                used: &used,
                credential_host,
            };
            exchange.run(shared, &upstream, request, record).await
        };
        let _ = tx.send(response);
    });
    rx.await
        .unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "the proxy is stopping"))
}

/// One request's way to the upstream and back.
struct Exchange<'a> {
    target: &'a Target,
    scheme: Scheme,
    addrs: &'a [SocketAddr],
    method: &'a Method,
    audit_path: &'a str,
    used: &'a BTreeSet<usize>,
    credential_host: bool,
}

impl Exchange<'_> {
    /// Sends `request` on the tunnel's upstream connection (dialled when there is none or
    /// it closed) and returns the answer as the client gets it.
    async fn run(
        self,
        shared: &Arc<Shared>,
        upstream: &Upstream,
        request: Request<UpBody>,
        record: Option<RequestRecord>,
    ) -> Response<ProxyBody> {
        let Exchange {
            target,
            scheme,
            addrs,
            method,
            audit_path,
            used,
            credential_host,
        } = self;
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
                    return upstream_failed(shared, target, method, audit_path, used, msg).await;
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
                return upstream_failed(shared, target, method, audit_path, used, msg).await;
            }
        };
        respond(
            shared,
            target,
            method,
            audit_path,
            used,
            credential_host,
            response,
            record,
        )
        .await
    }
}

/// Puts the values in (headers, path, query, a whole JSON or form body) for the placeholders
/// of `eligible`, as each credential's rules say; returns the body to send and the
/// credentials used.
fn substitute(
    shared: &Shared,
    parts: &mut hyper::http::request::Parts,
    whole_body: Option<Bytes>,
    body: UpBody,
    eligible: &[usize],
) -> std::result::Result<(UpBody, BTreeSet<usize>), String> {
    let placeholders = &shared.placeholders;
    let creds = |f: &dyn Fn(&Rules) -> bool| -> Vec<usize> {
        eligible
            .iter()
            .copied()
            .filter(|i| f(&placeholders.credentials[*i].rules))
            .collect()
    };
    let mut used = placeholders.substitute_headers(&mut parts.headers, eligible)?;
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (pq.clone(), None),
    };
    let mut path = Zeroizing::new(path.into_bytes());
    if let Some((new, u)) = placeholders.substitute_path(
        std::str::from_utf8(&path).unwrap_or_default(),
        &creds(&|r| r.path),
    ) {
        path = new;
        used.extend(u);
    }
    let mut target = path;
    if let Some(q) = query {
        let fields = |i: usize| placeholders.credentials[i].rules.query.as_slice();
        target.push(b'?');
        match placeholders.substitute_pairs(q.as_bytes(), &creds(&|r| !r.query.is_empty()), fields)
        {
            Some((new, u)) => {
                target.extend_from_slice(&new);
                used.extend(u);
            }
            None => target.extend_from_slice(q.as_bytes()),
        }
    }
    parts.uri = hyper::Uri::try_from(target.as_slice())
        .map_err(|_| "the request path cannot carry the value".to_string())?;
    let body_creds = creds(&|r| !r.body.is_empty());
    let body = match (whole_body, BodyType::of(&parts.headers)) {
        (Some(whole), Some(kind)) if !body_creds.is_empty() => {
            match placeholders.substitute_body(&whole, kind, &body_creds)? {
                Some((new, u)) => {
                    used.extend(u);
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
                    Full::new(Bytes::copy_from_slice(&new))
                        .map_err(|never| match never {})
                        .boxed()
                }
                None => Full::new(whole).map_err(|never| match never {}).boxed(),
            }
        }
        _ => body,
    };
    Ok((body, used))
}

/// The upstream's answer on its way to the client: hop-by-hop headers dropped, every proxied
/// value redacted from headers and body, the audit record written when the body ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn respond(
    shared: &Arc<Shared>,
    target: &Target,
    method: &Method,
    audit_path: &str,
    used: &BTreeSet<usize>,
    credential_host: bool,
    response: Response<Incoming>,
    record: Option<RequestRecord>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    // hyper keeps a non-standard reason phrase here and writes it back out: it could carry
    // a value. The client gets the standard phrase.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    if (credential_host || !used.is_empty()) && compressed(&parts.headers) {
        let msg =
            "upstream sent a compressed response from a credential's host; it cannot be redacted"
                .to_string();
        return upstream_failed(shared, target, method, audit_path, used, msg).await;
    }
    strip_hop_by_hop(&mut parts.headers);
    redact_headers(&shared.redactor, &mut parts.headers);
    let status = parts.status;
    let has_body = *method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED;
    let record = record.map(|mut r| {
        r.http.status = Some(status.as_u16());
        r
    });
    let body = if has_body {
        parts.headers.remove(header::CONTENT_LENGTH);
        redacted_body(shared, body, record)
    } else {
        if let Some(r) = record
            && r.write(shared, 0, "forwarded").await.is_err()
        {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot be written: the answer is withheld",
            );
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

pub(crate) async fn upstream_failed(
    shared: &Shared,
    target: &Target,
    method: &Method,
    path: &str,
    used: &BTreeSet<usize>,
    msg: String,
) -> Response<ProxyBody> {
    let mut e = shared.audit.event(EventKind::Decision, Severity::Warning);
    e.action = Some("proxy".into());
    if !used.is_empty() {
        let names: Vec<&str> = used
            .iter()
            .map(|i| shared.placeholders.credentials[*i].name.as_str())
            .collect();
        e.credential = Some(names.join(","));
    }
    e.outcome = Some("failed".into());
    e.reason = Some(format!("failed: {msg}"));
    e.http = Some(exchange(target, method, Some(path.to_string())));
    shared.note(shared.audit.record(e).await);
    text(StatusCode::BAD_GATEWAY, &msg)
}

pub(crate) fn redact_headers(redactor: &Redactor, headers: &mut HeaderMap) {
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
pub(crate) struct RequestRecord {
    credentials: Vec<String>,
    http: HttpExchange,
}

impl RequestRecord {
    /// Writes the record; a failure also stops every later credentialed request.
    pub(crate) async fn write(mut self, shared: &Shared, bytes: u64, outcome: &str) -> Result<()> {
        let mut e = shared.audit.event(EventKind::Decision, Severity::Info);
        e.action = Some("proxy".into());
        e.credential = Some(self.credentials.join(","));
        e.decision = Some("granted".into());
        e.outcome = Some(outcome.into());
        self.http.bytes = Some(bytes);
        e.http = Some(self.http);
        let written = shared.audit.record(e).await;
        let failed = written.is_err();
        shared.note(written);
        if failed {
            Err(Error::internal(
                "the proxy's audit record could not be written",
            ))
        } else {
            Ok(())
        }
    }

    /// Sets the upstream's status.
    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.http.status = Some(status);
        self
    }
}

/// Streams `body` through the redactor; writes `record` when it ends. When the record cannot
/// be written, the body ends with an error instead of its last bytes (fail closed).
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
        let mut trailers = None;
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
                        if let Ok(mut t) = frame.into_trailers() {
                            redact_headers(&task_shared.redactor, &mut t);
                            trailers = Some(t);
                        }
                    }
                },
            }
        }
        stream.flush(&mut out);
        // Recorded before the body ends: a client that saw the whole response can count on
        // the record being there; one that could not be recorded is cut short.
        if let Some(r) = record
            && r.write(&task_shared, bytes, outcome).await.is_err()
        {
            out.zeroize();
            let _ = tx
                .send(Err(io::Error::other(
                    "the audit log cannot be written: the answer is cut short",
                )))
                .await;
            return;
        }
        if !out.is_empty() {
            let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(&out)))).await;
            out.zeroize();
        }
        if let Some(t) = trailers {
            let _ = tx.send(Ok(Frame::trailers(t))).await;
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
