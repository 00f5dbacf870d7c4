//! WebSocket upgrades through the proxy.
//!
//! The handshake is an HTTP request like any other: the egress and placeholder checks run on
//! it and its headers take values as configured. It goes upstream on a connection of its
//! own without `Sec-WebSocket-Extensions` (so no compression is negotiated); an upstream that
//! answers `101` with an extension anyway is refused. After the switch, what the client sends
//! is relayed as it is (placeholders inside messages stay placeholders), and what the
//! upstream sends is read frame by frame, each frame's payload redacted of every proxied value
//! and re-framed with its new length. A value split across two frames of one fragmented
//! message is not found (each frame is redacted alone). The audit record is written when the
//! upstream agrees to switch, before the client hears of it.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use broker_core::redact::Redactor;
use http_body_util::{BodyExt, Empty};
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, Zeroizing};

use crate::net::Target;
use crate::server::{
    ProxyBody, RequestRecord, Scheme, Shared, UpBody, dial, redact_headers, respond, spawn_guarded,
    strip_hop_by_hop, text, upstream_failed,
};

/// The largest frame relayed from the upstream (its payload is held whole to be redacted).
pub const MAX_FRAME: u64 = 4 << 20;

/// What a websocket handshake needs besides the request.
pub(crate) struct Handshake<'a> {
    pub(crate) target: &'a Target,
    pub(crate) scheme: Scheme,
    pub(crate) addrs: &'a [SocketAddr],
    pub(crate) audit_path: &'a str,
    pub(crate) used: &'a BTreeSet<usize>,
    pub(crate) credential_host: bool,
    pub(crate) record: Option<RequestRecord>,
}

/// Sends the handshake upstream and, when it switches, relays the two connections.
pub(crate) async fn relay(
    shared: &Arc<Shared>,
    hs: Handshake<'_>,
    request: Request<UpBody>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ProxyBody> {
    let method = request.method().clone();
    let Some(client_upgrade) = client_upgrade else {
        return text(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded",
        );
    };
    let fail =
        |msg: String| upstream_failed(shared, hs.target, &method, hs.audit_path, hs.used, msg);
    let mut sender = match dial(shared, hs.target, hs.scheme, hs.addrs).await {
        Ok(s) => s,
        Err(msg) => return fail(msg).await,
    };
    let mut response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => {
            return fail(format!("upstream {} failed: {e}", hs.target.authority())).await;
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return respond(
            shared,
            hs.target,
            &method,
            hs.audit_path,
            hs.used,
            hs.credential_host,
            response,
            hs.record,
        )
        .await;
    }
    if response
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        return fail("upstream negotiated a websocket extension (compression) whose frames cannot be redacted".into()).await;
    }
    if let Some(record) = hs.record
        && record
            .with_status(101)
            .write(shared, 0, "upgraded")
            .await
            .is_err()
    {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written: the upgrade is refused",
        );
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    redact_headers(&shared.redactor, &mut parts.headers);
    let redactor = Arc::clone(&shared.redactor);
    spawn_guarded(shared, async move {
        match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(client), Ok(upstream)) => pipe(client, upstream, &redactor).await,
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "proxy: websocket upgrade failed");
            }
        }
    });
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}

/// Client to upstream as it is; upstream to client frame by frame, redacted.
async fn pipe(
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    redactor: &Redactor,
) {
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
    };
    let down = async {
        if let Err(e) = relay_frames(&mut upstream_read, &mut client_write, redactor).await {
            tracing::debug!(error = %e, "proxy: websocket relay ended");
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A frame's header, as far as relaying goes.
#[derive(Debug, PartialEq, Eq)]
struct FrameHead {
    /// FIN, RSV and opcode.
    first: u8,
    header_len: usize,
    payload_len: usize,
}

/// The header at the start of `buf`; `None` when more bytes are needed.
fn parse_head(buf: &[u8]) -> io::Result<Option<FrameHead>> {
    let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());
    let (Some(&first), Some(&second)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(bad(
            "a frame uses an extension (RSV bits) nobody negotiated",
        ));
    }
    if second & 0x80 != 0 {
        return Err(bad("the upstream sent a masked frame"));
    }
    let (len, header_len) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(bad("a frame is larger than the proxy relays"));
    }
    let control = first & 0x08 != 0;
    if control && (len > 125 || first & 0x80 == 0) {
        return Err(bad("a malformed control frame"));
    }
    Ok(Some(FrameHead {
        first,
        header_len,
        payload_len: usize::try_from(len).map_err(|_| bad("a frame is too large"))?,
    }))
}

/// `head`'s frame with `payload` (a control frame's payload cut to 125 bytes).
fn frame(head: &FrameHead, payload: &[u8], out: &mut Vec<u8>) {
    let control = head.first & 0x08 != 0;
    let payload = if control && payload.len() > 125 {
        &payload[..125]
    } else {
        payload
    };
    out.push(head.first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Frames in, frames out: bytes of an upstream's frame stream are pushed in any split, and
/// each complete frame comes out with its payload redacted and its length rewritten.
pub struct FrameRedactor<'r> {
    redactor: &'r Redactor,
    held: Zeroizing<Vec<u8>>,
}

impl<'r> FrameRedactor<'r> {
    /// A relay redacting with `redactor`.
    pub fn new(redactor: &'r Redactor) -> Self {
        FrameRedactor {
            redactor,
            held: Zeroizing::new(Vec::with_capacity(16 * 1024)),
        }
    }

    /// Takes `data` and appends every frame it completes, redacted, to `out`. An error (a
    /// masked or RSV-flagged frame, a malformed control frame, one over [`MAX_FRAME`]) ends
    /// the relay: nothing more may be pushed.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.held.extend_from_slice(data);
        let mut start = 0;
        while let Some(head) = parse_head(&self.held[start..])? {
            let end = start + head.header_len + head.payload_len;
            if self.held.len() < end {
                break;
            }
            let payload = &self.held[start + head.header_len..end];
            match self.redactor.redact(payload) {
                std::borrow::Cow::Borrowed(_) => out.extend_from_slice(&self.held[start..end]),
                std::borrow::Cow::Owned(mut redacted) => {
                    frame(&head, &redacted, out);
                    redacted.zeroize();
                }
            }
            start = end;
        }
        if start > 0 {
            self.held.drain(..start);
        }
        Ok(())
    }
}

/// Reads frames from `from` and writes each, its payload redacted, to `to`.
async fn relay_frames<R, W>(from: &mut R, to: &mut W, redactor: &Redactor) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameRedactor::new(redactor);
    let mut chunk = Zeroizing::new(vec![0u8; 16 * 1024]);
    let mut out = Zeroizing::new(Vec::with_capacity(16 * 1024));
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        out.clear();
        frames.push(&chunk[..n], &mut out)?;
        if !out.is_empty() {
            to.write_all(&out).await?;
            out.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_core::SecretValue;

    fn redactor() -> Redactor {
        Redactor::new([(
            "api",
            &SecretValue::from("sk-CANARY-0123456789".to_string()),
        )])
    }

    fn text_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame(
            &FrameHead {
                first: 0x81,
                header_len: 0,
                payload_len: payload.len(),
            },
            payload,
            &mut out,
        );
        out
    }

    #[tokio::test]
    async fn frames_are_redacted_and_re_framed_whatever_their_size_and_split() {
        let r = redactor();
        let long = format!(
            "{}sk-CANARY-0123456789{}",
            "a".repeat(200),
            "b".repeat(70_000)
        );
        let mut input = text_frame(b"hello");
        input.extend(text_frame(b"key: sk-CANARY-0123456789"));
        input.extend(text_frame(long.as_bytes()));
        input.extend([0x89, 0x00]); // ping
        // Fed a few bytes at a time.
        let (mut w, mut rd) = tokio::io::duplex(64);
        let feed = tokio::spawn(async move {
            for c in input.chunks(7) {
                w.write_all(c).await.unwrap();
            }
        });
        let mut out = Vec::new();
        relay_frames(&mut rd, &mut out, &r).await.unwrap();
        feed.await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("sk-CANARY"), "{text}");
        // Parse the output back: four frames, the right payloads.
        let mut rest = &out[..];
        let mut payloads = Vec::new();
        while let Some(h) = parse_head(rest).unwrap() {
            payloads.push(rest[h.header_len..h.header_len + h.payload_len].to_vec());
            rest = &rest[h.header_len + h.payload_len..];
        }
        assert!(rest.is_empty());
        assert_eq!(payloads.len(), 4);
        assert_eq!(payloads[0], b"hello");
        assert!(String::from_utf8_lossy(&payloads[1]).starts_with("key: [REDACTED"));
        assert!(payloads[2].len() > 70_000);
        assert!(payloads[3].is_empty());
    }

    #[tokio::test]
    async fn masked_compressed_and_oversized_frames_end_the_relay() {
        let r = redactor();
        for bad in [
            vec![0x81, 0x85, 1, 2, 3, 4, 0, 0, 0, 0, 0],
            vec![0xC1, 0x01, b'x'],
            vec![0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0],
            vec![0x89, 126, 0, 200],
        ] {
            let mut out = Vec::new();
            let err = relay_frames(&mut &bad[..], &mut out, &r).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(out.is_empty());
        }
    }
}
