//! Test support: a small fake of the documented Google REST APIs nothing emulates — IAM
//! Credentials (`generateAccessToken`, `generateIdToken`), Google STS (`/v1/token`, the
//! RFC 8693 token exchange) — and of the Secret Manager features drongo lacks (version
//! aliases, `locations/` routes, `dataCrc32c`). Errors use Google's JSON error shape
//! (`{"error": {"code", "message", "status"}}`). Every request is recorded (method, path,
//! `authorization` header, body) so tests assert exactly what the broker sent.
//!
//! `faithful.py` drives the same fake with Google's official Python clients to show it
//! answers the way they expect.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr, missing_docs)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// One request the fake saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query (the Google clients add system parameters such as `$alt`).
    pub query: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The `metadata-flavor` header (the metadata server requires `Google`).
    pub metadata_flavor: Option<String>,
    pub body: String,
}

/// A stored secret version of the fake Secret Manager.
#[derive(Debug, Clone)]
pub struct Version {
    pub data: Vec<u8>,
    /// The checksum sent with it; `None` sends none.
    pub crc32c: Option<u32>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    /// `projects/P[/locations/L]/secrets/S` → versions (1-based).
    secrets: HashMap<String, Vec<Version>>,
    /// `projects/P[/locations/L]/secrets/S` → alias → version number.
    aliases: HashMap<String, HashMap<String, usize>>,
    /// Service accounts IAM Credentials knows; an email starting with `denied` is refused.
    accounts: Vec<String>,
    /// The next answers to send, whatever the request: `(status, body)`.
    scripted: Vec<(u16, String)>,
    /// Subject tokens the STS accepts.
    subject_tokens: Vec<String>,
    /// The access token the STS issues (and IAM accepts as the caller's bearer token).
    federated_token: String,
}

/// The fake, on 127.0.0.1; stops with the test process.
#[derive(Clone)]
pub struct FakeGoogle {
    pub url: String,
    state: Arc<Mutex<State>>,
}

/// The access tokens the fake mints start with this; the tests use it as a canary.
pub const MINTED_PREFIX: &str = "ya29.fake-minted-";
/// A bearer token the fake Secret Manager refuses (an identity without access).
pub const DENIED_TOKEN: &str = "ya29.fake-identity-without-access";
/// The token the fake metadata server hands out.
pub const METADATA_TOKEN: &str = "ya29.fake-metadata-token-canary";
/// ID tokens the fake mints are JWTs whose signature part is this.
pub const ID_TOKEN_SIGNATURE: &str = "fake-signature-canary";

impl FakeGoogle {
    pub fn start() -> FakeGoogle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            federated_token: "ya29.fake-federated-token-canary".into(),
            ..State::default()
        }));
        let fake = FakeGoogle { url, state };
        let server = fake.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let server = server.clone();
                std::thread::spawn(move || server.serve(stream));
            }
        });
        fake
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    pub fn add_account(&self, email: &str) {
        self.state.lock().unwrap().accounts.push(email.to_string());
    }

    pub fn accept_subject_token(&self, token: &str) {
        self.state
            .lock()
            .unwrap()
            .subject_tokens
            .push(token.to_string());
    }

    pub fn federated_token(&self) -> String {
        self.state.lock().unwrap().federated_token.clone()
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, answers: &[(u16, &str)]) {
        let mut s = self.state.lock().unwrap();
        s.scripted = answers
            .iter()
            .rev()
            .map(|(c, b)| (*c, b.to_string()))
            .collect();
    }

    pub fn add_version(&self, secret: &str, data: &[u8], crc32c: Option<u32>) -> usize {
        let mut s = self.state.lock().unwrap();
        let versions = s.secrets.entry(secret.to_string()).or_default();
        versions.push(Version {
            data: data.to_vec(),
            crc32c,
        });
        versions.len()
    }

    pub fn set_alias(&self, secret: &str, alias: &str, version: usize) {
        self.state
            .lock()
            .unwrap()
            .aliases
            .entry(secret.to_string())
            .or_default()
            .insert(alias.to_string(), version);
    }

    fn serve(&self, mut stream: TcpStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let Some(request) = read_request(&mut stream) else {
            return;
        };
        let (status, body) = self.answer(&request);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Status",
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json; charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    fn answer(&self, request: &Seen) -> (u16, String) {
        let mut state = self.state.lock().unwrap();
        state.seen.push(request.clone());
        if let Some(answer) = state.scripted.pop() {
            return answer;
        }
        let path = request.path.split('?').next().unwrap_or_default();
        if request.method == "GET" && path == "/computeMetadata/v1/universe/universe-domain" {
            return (200, "googleapis.com".into());
        }
        if request.method == "GET"
            && path == "/computeMetadata/v1/instance/service-accounts/default/token"
        {
            if request.metadata_flavor.as_deref() != Some("Google") {
                return (403, "Missing Metadata-Flavor:Google header.".into());
            }
            return (
                200,
                serde_json::json!({"access_token": METADATA_TOKEN, "expires_in": 3599, "token_type": "Bearer"})
                    .to_string(),
            );
        }
        if request.method == "POST" && path == "/v1/token" {
            return sts(&state, request);
        }
        if let Some(rest) = path.strip_prefix("/v1/projects/-/serviceAccounts/") {
            if request.method != "POST" {
                return error(404, "NOT_FOUND", "Not found.");
            }
            return iam(&state, rest, request);
        }
        if let Some(name) = path
            .strip_prefix("/v1/")
            .and_then(|p| p.strip_suffix(":access"))
            && request.method == "GET"
        {
            // Like Google: no token is unauthenticated; a token without access is denied.
            match request.authorization.as_deref() {
                None => {
                    return error(
                        401,
                        "UNAUTHENTICATED",
                        "Request is missing required authentication credential.",
                    );
                }
                Some(a) if a == format!("Bearer {DENIED_TOKEN}") => {
                    return error(
                        403,
                        "PERMISSION_DENIED",
                        &format!(
                            "Permission 'secretmanager.versions.access' denied for resource '{name}' (or it may not exist)."
                        ),
                    );
                }
                Some(_) => {}
            }
            return access(&state, name);
        }
        error(404, "NOT_FOUND", &format!("No route for {path}."))
    }
}

/// `{"error": {...}}` as Google sends it.
pub fn error(code: u16, status: &str, message: &str) -> (u16, String) {
    (
        code,
        serde_json::json!({"error": {"code": code, "message": message, "status": status}})
            .to_string(),
    )
}

fn bearer_ok(state: &State, request: &Seen) -> bool {
    // The fake IAM accepts the STS-issued token, anything self-signed (a service-account JWT)
    // and any other bearer token the tests hand the broker; it refuses requests without one.
    let _ = state;
    request
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7)
}

fn iam(state: &State, rest: &str, request: &Seen) -> (u16, String) {
    let Some((email, method)) = rest.split_once(':') else {
        return error(404, "NOT_FOUND", "Not found.");
    };
    let email = percent_decode(email);
    if !bearer_ok(state, request) {
        return error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    if email.starts_with("denied") {
        return error(
            403,
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        );
    }
    if !state.accounts.contains(&email) {
        return error(
            404,
            "NOT_FOUND",
            &format!("Not found; Gaia id not found for email {email}"),
        );
    }
    let Ok(body) = serde_json::from_str::<serde_json::Value>(&request.body) else {
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    for d in body["delegates"].as_array().into_iter().flatten() {
        let d = d.as_str().unwrap_or_default();
        let known = d
            .strip_prefix("projects/-/serviceAccounts/")
            .is_some_and(|e| state.accounts.iter().any(|a| a == e));
        if !known {
            return error(
                400,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid form of account ID {d}. Should be [Gaia ID |Email |Unique ID |] of the account"
                ),
            );
        }
    }
    let nonce = format!("{:016x}", rand_u64());
    match method {
        "generateAccessToken" => {
            let scopes = body["scope"].as_array().map_or(0, Vec::len);
            if scopes == 0 {
                return error(400, "INVALID_ARGUMENT", "Scope required.");
            }
            let lifetime = match body.get("lifetime").and_then(|l| l.as_str()) {
                None => 3600,
                Some(l) => match l.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()) {
                    Some(n) => n as u64,
                    None => return error(400, "INVALID_ARGUMENT", "Invalid value at 'lifetime'."),
                },
            };
            if lifetime > 3600 {
                return error(
                    400,
                    "INVALID_ARGUMENT",
                    "Lifetime must be between 1 second and 3600 seconds, unless the lifetime extension policy applies.",
                );
            }
            let expire = SystemTime::now() + Duration::from_secs(lifetime);
            (
                200,
                serde_json::json!({
                    "accessToken": format!("{MINTED_PREFIX}{nonce}"),
                    "expireTime": rfc3339(expire),
                })
                .to_string(),
            )
        }
        "generateIdToken" => {
            let Some(audience) = body["audience"].as_str().filter(|a| !a.is_empty()) else {
                return error(400, "INVALID_ARGUMENT", "Audience required.");
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let mut claims = serde_json::json!({
                "aud": audience, "iss": "https://accounts.google.com", "sub": "1234567890",
                "iat": now, "exp": now + 3600, "nonce": nonce,
            });
            if body["includeEmail"].as_bool() == Some(true) {
                claims["email"] = serde_json::Value::String(email.clone());
            }
            let b64 = |v: &serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            let token = format!(
                "{}.{}.{ID_TOKEN_SIGNATURE}",
                b64(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
                b64(&claims)
            );
            (200, serde_json::json!({ "token": token }).to_string())
        }
        _ => error(404, "NOT_FOUND", "Method not found."),
    }
}

/// Google STS `POST /v1/token` (form- or JSON-encoded), the token exchange.
fn sts(state: &State, request: &Seen) -> (u16, String) {
    let fields: HashMap<String, String> = if request
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        serde_json::from_str::<HashMap<String, serde_json::Value>>(&request.body)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect()
    } else {
        request
            .body
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect()
    };
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
    let sts_error = |desc: &str| {
        (
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": desc}).to_string(),
        )
    };
    if get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
        return (
            400,
            serde_json::json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant type."}).to_string(),
        );
    }
    if get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token" {
        return sts_error("Invalid requested_token_type.");
    }
    if !get("audience").starts_with("//iam.googleapis.com/") {
        return sts_error("Invalid audience.");
    }
    if !state
        .subject_tokens
        .iter()
        .any(|t| t == get("subject_token"))
    {
        return sts_error("The subject token could not be verified.");
    }
    (
        200,
        serde_json::json!({
            "access_token": state.federated_token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 3600,
        })
        .to_string(),
    )
}

/// Secret Manager `GET /v1/{name}:access`.
fn access(state: &State, name: &str) -> (u16, String) {
    let Some((secret, version)) = name.split_once("/versions/") else {
        return error(404, "NOT_FOUND", "Not found.");
    };
    let project = secret.split('/').nth(1).unwrap_or_default();
    if project == "missing-project" {
        return error(
            404,
            "NOT_FOUND",
            &format!("Project [projects/{project}] not found or deleted."),
        );
    }
    if project == "forbidden-project" {
        return error(
            403,
            "PERMISSION_DENIED",
            &format!(
                "Permission 'secretmanager.versions.access' denied for resource '{name}' (or it may not exist)."
            ),
        );
    }
    let Some(versions) = state.secrets.get(secret) else {
        return error(
            404,
            "NOT_FOUND",
            &format!("Secret [{secret}] not found or has no versions."),
        );
    };
    let number = if version == "latest" {
        Some(versions.len())
    } else if let Ok(n) = version.parse::<usize>() {
        Some(n)
    } else {
        state
            .aliases
            .get(secret)
            .and_then(|a| a.get(version))
            .copied()
    };
    let Some((n, v)) = number.and_then(|n| Some((n, versions.get(n.checked_sub(1)?)?))) else {
        return error(
            404,
            "NOT_FOUND",
            &format!("Secret Version [{name}] not found."),
        );
    };
    let mut payload = serde_json::json!({
        "data": base64::engine::general_purpose::STANDARD.encode(&v.data),
    });
    if let Some(crc) = v.crc32c {
        // int64 fields are strings in Google's JSON mapping.
        payload["dataCrc32c"] = serde_json::Value::String(crc.to_string());
    }
    (
        200,
        serde_json::json!({"name": format!("{secret}/versions/{n}"), "payload": payload})
            .to_string(),
    )
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + len {
            continue;
        }
        let mut first = head.lines().next()?.split_whitespace();
        let method = first.next()?.to_string();
        let target = first.next()?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        return Some(Seen {
            method,
            path: path.to_string(),
            query: query.to_string(),
            authorization: header("authorization"),
            content_type: header("content-type"),
            metadata_flavor: header("metadata-flavor"),
            body: String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string(),
        });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// `2026-11-30T17:02:36Z` (civil date from the day count, Howard Hinnant's algorithm).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The CRC32C of `data` (Castagnoli), for seeding checksums.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The venv's Python, or `None` (skip) outside CI.
pub fn python() -> Option<std::path::PathBuf> {
    broker_core::testkit::require_peer("python3")
}
