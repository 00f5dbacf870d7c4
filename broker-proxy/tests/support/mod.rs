//! Test support: an HTTPS upstream with its own CA on 127.0.0.1 that records what it
//! receives, a resolver that maps names as a test likes, and a dialer that records every
//! address it is asked for and refuses anything but loopback (so no test can send a packet
//! elsewhere).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use broker_core::async_trait;
use broker_proxy::{Dialer, Resolver};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted (a request that never arrives still counts here).
    pub connections: Arc<Mutex<usize>>,
    pub ca_path: PathBuf,
    pub dir: tempfile::TempDir,
    /// Releases the second event of `/sse`.
    pub sse_gate: Arc<tokio::sync::Notify>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// Frames handed out one at a time (no length: the response is chunked).
struct Frames(VecDeque<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

/// A body fed from a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// `/ws`: a websocket that sends the `Authorization` it was given in a text frame, then
/// echoes the client's first text frame back (`echo: ...`) and closes.
fn websocket(req: &mut Request<hyper::body::Incoming>, auth: String) -> Response<Body> {
    use base64::Engine as _;
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let mut sha = sha1_smol::Sha1::new();
    sha.update(&key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(upgraded) = on.await else { return };
        let mut io = TokioIo::new(upgraded);
        let _ = io
            .write_all(&ws_frame(0x81, format!("auth: {auth}").as_bytes()))
            .await;
        // One masked client frame with a short payload.
        let mut head = [0u8; 2];
        if io.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[1] & 0x7f);
        let mut mask = [0u8; 4];
        let mut payload = vec![0u8; len];
        if io.read_exact(&mut mask).await.is_err() || io.read_exact(&mut payload).await.is_err() {
            return;
        }
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut echo = b"echo: ".to_vec();
        echo.extend_from_slice(&payload);
        let _ = io.write_all(&ws_frame(0x81, &echo)).await;
        let _ = io.write_all(&ws_frame(0x88, &[0x03, 0xe8])).await;
        let _ = io.shutdown().await;
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap()
}

/// An unmasked frame (server to client) with `first` (FIN + opcode) and `payload`.
pub fn ws_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    if payload.len() < 126 {
        out.push(payload.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

async fn handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<tokio::sync::Notify>,
    mut req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/ws" {
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            path: "/ws".into(),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: Vec::new(),
        });
        return Ok(websocket(&mut req, auth));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let auth = parts
        .headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        headers,
        body: body.to_vec(),
    });
    let path = parts.uri.path();
    let response = match path {
        // Echoes the key back in the body and in a header.
        "/reflect" => Response::builder()
            .header("x-echo", auth.clone())
            .header("content-type", "text/plain")
            .body(full(format!("you sent: {auth}\n")))
            .unwrap(),
        // The key split across chunks.
        "/chunked" => {
            let text = format!("start {auth} middle {auth} end\n");
            let bytes = text.into_bytes();
            let frames: VecDeque<Bytes> = bytes.chunks(7).map(Bytes::copy_from_slice).collect();
            Response::builder()
                .header("content-type", "text/plain")
                .body(Frames(frames).boxed())
                .unwrap()
        }
        // Server-sent events: the second waits for the test's go-ahead.
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
                gate.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        "/gzip" => Response::builder()
            .header("content-encoding", "gzip")
            .body(full(Bytes::from_static(b"\x1f\x8b not really gzip")))
            .unwrap(),
        _ => {
            let json = serde_json::json!({
                "method": parts.method.to_string(),
                "path": path,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .body(full(json.to_string()))
                .unwrap()
        }
    };
    Ok(response)
}

/// An HTTPS upstream on 127.0.0.1 with a certificate for `names` from its own CA (written to
/// `ca_path`).
pub async fn upstream(names: &[&str]) -> Upstream {
    upstream_with(names, true).await
}

/// [`upstream`], speaking TLS or plain HTTP.
pub async fn upstream_with(names: &[&str], tls: bool) -> Upstream {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "broker-proxy test upstream CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (s, c) = (Arc::clone(&seen), Arc::clone(&connections));
    let sse_gate = Arc::new(tokio::sync::Notify::new());
    let g = Arc::clone(&sse_gate);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            *c.lock().unwrap() += 1;
            let (acceptor, seen, gate) = (acceptor.clone(), Arc::clone(&s), Arc::clone(&g));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    handle(Arc::clone(&seen), Arc::clone(&gate), req)
                });
                let http = hyper::server::conn::http1::Builder::new();
                if !tls {
                    let _ = http
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                    return;
                }
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = http
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        connections,
        ca_path,
        dir,
        sse_gate,
    }
}

/// Maps names to addresses; records every lookup.
#[derive(Default)]
pub struct MapResolver {
    pub names: HashMap<String, Vec<IpAddr>>,
    pub lookups: Mutex<Vec<String>>,
}

impl MapResolver {
    pub fn with(pairs: &[(&str, &[&str])]) -> MapResolver {
        MapResolver {
            names: pairs
                .iter()
                .map(|(n, ips)| {
                    (
                        n.to_string(),
                        ips.iter().map(|i| i.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            lookups: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl Resolver for MapResolver {
    async fn lookup(&self, host: &str, _port: u16) -> io::Result<Vec<IpAddr>> {
        self.lookups.lock().unwrap().push(host.to_string());
        self.names
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such test name"))
    }
}

/// Records every address it is asked to dial; connects to loopback only.
#[derive(Default)]
pub struct RecordingDialer {
    pub asked: Mutex<Vec<SocketAddr>>,
}

impl RecordingDialer {
    pub fn asked(&self) -> Vec<SocketAddr> {
        self.asked.lock().unwrap().clone()
    }
}

#[async_trait]
impl Dialer for RecordingDialer {
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.asked.lock().unwrap().push(addr);
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "test dialer: only loopback",
            ));
        }
        TcpStream::connect(addr).await
    }
}

/// [`curl`] that must succeed with status 200 (curl's `-w %{http_code}` ends its stdout);
/// returns stdout.
pub async fn curl_ok(args: Vec<String>) -> String {
    let (code, out, err) = curl(args).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("200"), "{out}");
    out
}

/// Runs curl (blocking, in a thread) with `args`; returns (exit code, stdout, stderr).
pub async fn curl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(&args)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .output()
            .expect("curl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Sends `head` (a request head, CRLF line ends, ending in a blank line) to the proxy and
/// returns the response's status line.
pub async fn raw(proxy: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}
