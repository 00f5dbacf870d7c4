//! A small HTTPS fake of the documented Azure APIs the broker uses, on 127.0.0.1 only, with a
//! test CA generated at start:
//!
//! - Key Vault secrets (REST API 7.x / 2025-07-01): `GET /secrets/{name}[/{version}]`,
//!   `PUT /secrets/{name}`, `GET /secrets/{name}/versions`; the unauthenticated first request
//!   answered with the 401 bearer challenge (`authorization`, `resource`), bearer tokens
//!   checked (issuer, audience `https://vault.localhost:PORT`, expiry, per-application
//!   permissions), attributes (`enabled`, `nbf`, `exp`, `created`, `updated`), a disabled
//!   secret refused as Key Vault does (403 `Forbidden`/`SecretDisabled`), errors in Azure's
//!   `{"error":{"code","message","innererror"}}` shape.
//! - The Entra v2 token endpoint `POST /{tenant}/oauth2/v2.0/token` (client credentials with a
//!   client secret, or a client assertion: an ES256 JWT whose signature, issuer, subject,
//!   audience `api://AzureADTokenExchange` and times are checked against the application's
//!   federated credential), OAuth errors with `AADSTS` codes, and the OpenID metadata MSAL
//!   reads.
//! - The App Service managed identity endpoint `GET /msi/token` (`X-IDENTITY-HEADER` checked).
//!
//! Hosts: `login.localhost` (Entra, managed identity) and `VAULT.vault.localhost` (vaults);
//! clients resolve `*.localhost` to 127.0.0.1 themselves (the broker by RFC 6761, the Python
//! SDK through the cross-check script), so nothing asks DNS.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

pub const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";
/// Reads, writes and lists secrets.
pub const BROKER_APP: &str = "11111111-1111-1111-1111-111111111111";
/// Has no permission on any vault.
pub const DENIED_APP: &str = "22222222-2222-2222-2222-222222222222";
/// Trusts federated tokens from [`ISSUER`] for [`SUBJECT`].
pub const FEDERATED_APP: &str = "33333333-3333-3333-3333-333333333333";
pub const ISSUER: &str = "https://oidc.cluster.localhost/";
pub const SUBJECT: &str = "system:serviceaccount:ci:broker";
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
/// The managed identity's client id and the App Service header value.
pub const MI_CLIENT: &str = "44444444-4444-4444-4444-444444444444";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug)]
pub struct Version {
    pub id: String,
    pub value: String,
    pub content_type: Option<String>,
    pub enabled: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub tags: BTreeMap<String, String>,
    pub created: i64,
}

#[derive(Clone, Debug)]
struct App {
    secret: Option<String>,
    federated: bool,
    can: Vec<&'static str>,
}

struct Issued {
    client: String,
    audience: String,
    expires: i64,
}

/// A scripted answer for the next requests whose path contains `path`.
struct Fault {
    path: String,
    status: u16,
    retry_after: Option<u32>,
    times: usize,
}

#[derive(Default)]
pub struct State {
    vaults: HashMap<String, HashMap<String, Vec<Version>>>,
    apps: HashMap<String, App>,
    tokens: HashMap<String, Issued>,
    faults: VecDeque<Fault>,
    /// `METHOD host path` of every request, in order.
    pub log: Vec<String>,
    issuer_key: Vec<u8>,
    mi_header: String,
}

pub struct FakeAzure {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub ca_path: PathBuf,
    pub state: Arc<Mutex<State>>,
    issuer: EcdsaKeyPair,
}

fn tls_config(names: &[&str]) -> (rustls::ServerConfig, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair as RcKey};
    let ca_key = RcKey::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "broker-azure test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = RcKey::generate().unwrap();
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let chain = vec![leaf.der().clone(), ca.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (config, ca.pem())
}

impl FakeAzure {
    /// Starts the fake; `vaults` are the vault names its certificate covers.
    pub fn start(vaults: &[&str]) -> FakeAzure {
        let mut names = vec![
            "localhost".to_string(),
            "login.localhost".to_string(),
            "*.vault.localhost".to_string(),
        ];
        names.extend(vaults.iter().map(|v| format!("{v}.vault.localhost")));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (config, ca_pem) = tls_config(&names);
        let config = Arc::new(config);
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let issuer = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let mut state = State {
            issuer_key: issuer.public_key().as_ref().to_vec(),
            mi_header: random_hex(16),
            ..State::default()
        };
        for v in vaults {
            state.vaults.insert(v.to_string(), HashMap::new());
        }
        let state = Arc::new(Mutex::new(state));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let config = config.clone();
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, config, state, port));
            }
        });
        FakeAzure {
            port,
            dir,
            ca_path,
            state,
            issuer,
        }
    }

    /// Registers an application: a client secret, or federation; the vault permissions.
    pub fn app(&self, client: &str, secret: Option<&str>, federated: bool, can: &[&'static str]) {
        self.state.lock().unwrap().apps.insert(
            client.to_string(),
            App {
                secret: secret.map(str::to_string),
                federated,
                can: can.to_vec(),
            },
        );
    }

    /// Adds a version (the newest) of `name` in `vault`; returns its id.
    pub fn put(&self, vault: &str, name: &str, value: &str, content_type: Option<&str>) -> String {
        self.put_version(
            vault,
            name,
            Version {
                id: random_hex(16),
                value: value.to_string(),
                content_type: content_type.map(str::to_string),
                enabled: true,
                nbf: None,
                exp: None,
                tags: BTreeMap::new(),
                created: now(),
            },
        )
    }

    pub fn put_version(&self, vault: &str, name: &str, version: Version) -> String {
        let id = version.id.clone();
        self.state
            .lock()
            .unwrap()
            .vaults
            .entry(vault.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default()
            .push(version);
        id
    }

    pub fn versions(&self, vault: &str, name: &str) -> Vec<Version> {
        self.state.lock().unwrap().vaults[vault][name].clone()
    }

    /// The next `times` requests whose path contains `path` get `status`.
    pub fn fail(&self, path: &str, status: u16, retry_after: Option<u32>, times: usize) {
        self.state.lock().unwrap().faults.push_back(Fault {
            path: path.to_string(),
            status,
            retry_after,
            times,
        });
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    pub fn mi_header(&self) -> String {
        self.state.lock().unwrap().mi_header.clone()
    }

    pub fn authority(&self) -> String {
        format!("https://login.localhost:{}", self.port)
    }

    pub fn vault_suffix(&self) -> String {
        format!("vault.localhost:{}", self.port)
    }

    pub fn vault_url(&self, vault: &str) -> String {
        format!("https://{vault}.vault.localhost:{}", self.port)
    }

    /// A federated token (ES256 JWT) signed by the test issuer.
    pub fn federated_token(&self, sub: &str, aud: &str, valid_for: i64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(json!({"alg": "ES256", "typ": "JWT", "kid": "test"}).to_string());
        let claims = b64.encode(
            json!({"iss": ISSUER, "sub": sub, "aud": [aud], "iat": now() - 5,
                   "nbf": now() - 5, "exp": now() + valid_for})
            .to_string(),
        );
        let input = format!("{header}.{claims}");
        let sig = self
            .issuer
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64.encode(sig.as_ref()))
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Reply {
    let mut error = json!({"code": code, "message": message});
    if let Some(i) = inner {
        error["innererror"] = json!({"code": i});
    }
    reply(status, json!({ "error": error }))
}

fn oauth_error(status: u16, error: &str, code: u32, description: &str) -> Reply {
    reply(
        status,
        json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
               "error_codes": [code], "timestamp": "2026-11-30 00:00:00Z",
               "trace_id": random_hex(16), "correlation_id": random_hex(16)}),
    )
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(
    stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    port: u16,
) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    loop {
        let mut reader = BufReader::new(&mut tls);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers: HashMap<String, String> = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        drop(reader);
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query: HashMap<String, String> = form(query);
        let host = headers
            .get("host")
            .map(|h| h.split(':').next().unwrap_or("").to_ascii_lowercase())
            .unwrap_or_default();
        let r = handle(&state, port, &method, &host, path, &query, &headers, &body);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            r.status,
            reason(r.status),
            r.body.len()
        );
        for (k, v) in &r.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&r.body);
        if tls.write_all(out.as_bytes()).is_err() || tls.flush().is_err() {
            return;
        }
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            tls.conn.send_close_notify();
            let _ = tls.flush();
            return;
        }
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
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

fn form(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn handle(
    state: &Mutex<State>,
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {host} {path}"));
    if let Some(f) = st
        .faults
        .iter_mut()
        .find(|f| path.contains(&f.path) && f.times > 0)
    {
        f.times -= 1;
        let mut r = kv_error(
            f.status,
            if f.status == 429 {
                "Throttled"
            } else {
                "ServiceUnavailable"
            },
            "Injected by the test.",
            None,
        );
        if let Some(s) = f.retry_after {
            r.headers.push(("Retry-After".into(), s.to_string()));
        }
        return r;
    }
    if host == "login.localhost" {
        return entra(&mut st, port, method, path, query, headers, body);
    }
    match host.strip_suffix(".vault.localhost") {
        Some(vault) => vault_api(&mut st, port, vault, method, path, query, headers, body),
        None => reply(404, json!({"error": "unknown host"})),
    }
}

fn entra(
    st: &mut State,
    port: u16,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    let base = format!("https://login.localhost:{port}");
    if method == "GET" && path == "/msi/token" {
        if headers.get("x-identity-header") != Some(&st.mi_header) {
            return reply(401, json!({"error": "invalid identity header"}));
        }
        if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
            return reply(400, json!({"error": "unsupported api-version"}));
        }
        let resource = query.get("resource").cloned().unwrap_or_default();
        let client = query
            .get("client_id")
            .cloned()
            .unwrap_or_else(|| MI_CLIENT.to_string());
        if client != MI_CLIENT {
            return reply(
                400,
                json!({"statusCode": 400, "message": "No managed identity found for the specified client id"}),
            );
        }
        let token = issue(st, &client, &resource);
        return reply(
            200,
            json!({"access_token": token, "expires_on": (now() + 3600).to_string(),
                   "resource": resource, "token_type": "Bearer", "client_id": client}),
        );
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", [tenant, "v2.0", ".well-known", "openid-configuration"]) => reply(
            200,
            json!({
                "issuer": format!("{base}/{tenant}/v2.0"),
                "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                "device_authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/devicecode"),
                "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
                "response_types_supported": ["code", "id_token", "token"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "tenant_region_scope": "EU",
            }),
        ),
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
            let params = form(&String::from_utf8_lossy(body));
            token(st, tenant, &params)
        }
        _ => oauth_error(
            404,
            "invalid_request",
            90002,
            "Not an Entra endpoint of this fake.",
        ),
    }
}

fn issue(st: &mut State, client: &str, resource: &str) -> String {
    let token = format!("eyFAKE.{}", random_hex(24));
    st.tokens.insert(
        token.clone(),
        Issued {
            client: client.to_string(),
            audience: resource.trim_end_matches('/').to_string(),
            expires: now() + 3600,
        },
    );
    token
}

fn token(st: &mut State, tenant: &str, p: &HashMap<String, String>) -> Reply {
    if tenant != TENANT {
        return oauth_error(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if p.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let client = p.get("client_id").cloned().unwrap_or_default();
    let Some(app) = st.apps.get(&client).cloned() else {
        return oauth_error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client}' was not found in the directory '{tenant}'."
            ),
        );
    };
    let scope = p.get("scope").cloned().unwrap_or_default();
    let Some(resource) = scope.strip_suffix("/.default") else {
        return oauth_error(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        );
    };
    if let Some(secret) = p.get("client_secret") {
        if app.secret.as_deref() != Some(secret.as_str()) {
            return oauth_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            );
        }
    } else if let Some(assertion) = p.get("client_assertion") {
        if p.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return oauth_error(
                400,
                "invalid_request",
                50027,
                "Invalid client assertion type.",
            );
        }
        if !app.federated {
            return oauth_error(
                400,
                "invalid_client",
                70021,
                "No matching federated identity record found for presented assertion.",
            );
        }
        if let Err(why) = verify_assertion(&st.issuer_key, assertion) {
            return oauth_error(400, "invalid_client", 700211, &why);
        }
    } else {
        return oauth_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let token = issue(st, &client, resource);
    reply(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
    )
}

fn verify_assertion(issuer_key: &[u8], jwt: &str) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err("The client assertion is not a JWT.".into());
    };
    let header: Value = serde_json::from_slice(&b64.decode(h).map_err(|_| "bad header")?)
        .map_err(|_| "bad header")?;
    if header["alg"] != "ES256" {
        return Err("Unsupported assertion signing algorithm.".into());
    }
    let sig = b64.decode(s).map_err(|_| "bad signature")?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, issuer_key)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| {
            "The client assertion signature is invalid (no key of the issuer verifies it)."
                .to_string()
        })?;
    let claims: Value = serde_json::from_slice(&b64.decode(c).map_err(|_| "bad claims")?)
        .map_err(|_| "bad claims")?;
    if claims["iss"] != ISSUER {
        return Err(
            "No matching federated identity record found for presented assertion issuer.".into(),
        );
    }
    if claims["sub"] != SUBJECT {
        return Err(format!(
            "No matching federated identity record found for presented assertion subject '{}'.",
            claims["sub"].as_str().unwrap_or("")
        ));
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => a == AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    if !aud_ok {
        return Err(
            "No matching federated identity record found for presented assertion audience.".into(),
        );
    }
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let nbf = claims["nbf"].as_i64().unwrap_or(0);
    if exp <= now() || nbf > now() + 300 {
        return Err("The client assertion is not within its valid time range.".into());
    }
    Ok(())
}

fn bundle(port: u16, vault: &str, name: &str, v: &Version, with_value: bool) -> Value {
    let mut attributes = json!({"enabled": v.enabled, "created": v.created, "updated": v.created,
        "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90});
    if let Some(nbf) = v.nbf {
        attributes["nbf"] = nbf.into();
    }
    if let Some(exp) = v.exp {
        attributes["exp"] = exp.into();
    }
    let mut out = json!({
        "id": format!("https://{vault}.vault.localhost:{port}/secrets/{name}/{}", v.id),
        "attributes": attributes,
        "tags": v.tags,
    });
    if let Some(ct) = &v.content_type {
        out["contentType"] = ct.clone().into();
    }
    if with_value {
        out["value"] = v.value.clone().into();
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn vault_api(
    st: &mut State,
    port: u16,
    vault: &str,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Reply {
    if !st.vaults.contains_key(vault) {
        return reply(404, json!({"error": "no such vault host"}));
    }
    // The first request comes without a token: the challenge names the authority and the
    // resource (whose host the vault's host must end with).
    let bearer = headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    // Key Vault's resource is its DNS suffix on port 443; this fake's carries its port.
    let audience = format!("https://vault.localhost:{port}");
    let challenge = format!(
        "Bearer authorization=\"https://login.localhost:{port}/{TENANT}\", resource=\"{audience}\""
    );
    let client = match bearer.as_deref().and_then(|t| st.tokens.get(t)) {
        Some(issued) if issued.audience == audience && issued.expires > now() => {
            issued.client.clone()
        }
        Some(_) => {
            let mut r = kv_error(401, "Unauthorized", "AKV10022: Invalid audience.", None);
            r.headers.push(("WWW-Authenticate".into(), challenge));
            return r;
        }
        None => {
            let mut r = kv_error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                None,
            );
            r.headers.push(("WWW-Authenticate".into(), challenge));
            return r;
        }
    };
    if !query.contains_key("api-version") {
        return kv_error(
            400,
            "BadParameter",
            "The request URI contains an invalid parameter: api-version is missing.",
            None,
        );
    }
    let segments: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let operation = match (method, segments.as_slice()) {
        ("GET", ["secrets", _, "versions"]) => "list",
        ("GET", ["secrets", _] | ["secrets", _, _]) => "get",
        ("PUT", ["secrets", _]) => "set",
        _ => {
            return kv_error(
                405,
                "MethodNotAllowed",
                "The operation is not supported.",
                None,
            );
        }
    };
    let can = st
        .apps
        .get(&client)
        .map(|a| a.can.clone())
        .unwrap_or_default();
    if !can.contains(&operation) {
        return kv_error(
            403,
            "Forbidden",
            &format!(
                "The user, group or application 'appid={client};oid=00000000-0000-0000-0000-00000000beef;iss=https://sts.windows.net/{TENANT}/' does not have secrets {operation} permission on key vault '{vault};location=westeurope'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
            ),
            Some("AccessDenied"),
        );
    }
    let name = segments[1].to_string();
    let not_found = |what: &str| {
        kv_error(
            404,
            "SecretNotFound",
            &format!(
                "A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
            None,
        )
    };
    let secrets = st.vaults.get_mut(vault).unwrap();
    match (operation, segments.as_slice()) {
        ("list", _) => match secrets.get(&name) {
            None => not_found(&name),
            Some(versions) => reply(
                200,
                json!({"value": versions.iter().map(|v| bundle(port, vault, &name, v, false)).collect::<Vec<_>>(),
                       "nextLink": null}),
            ),
        },
        ("get", s) => {
            let version = s.get(2).copied();
            let found = secrets.get(&name).and_then(|versions| match version {
                Some(id) => versions.iter().find(|v| v.id == id),
                None => versions.last(),
            });
            match found {
                None => not_found(&match version {
                    Some(v) => format!("{name}/{v}"),
                    None => name.clone(),
                }),
                Some(v) if !v.enabled => kv_error(
                    403,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                    Some("SecretDisabled"),
                ),
                Some(v) => reply(200, bundle(port, vault, &name, v, true)),
            }
        }
        ("set", _) => {
            let Ok(doc) = serde_json::from_slice::<Value>(body) else {
                return kv_error(400, "BadParameter", "The request body is not JSON.", None);
            };
            let Some(value) = doc["value"].as_str() else {
                return kv_error(400, "BadParameter", "Property value is required.", None);
            };
            let tags: BTreeMap<String, String> = doc["tags"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let v = Version {
                id: random_hex(16),
                value: value.to_string(),
                content_type: doc["contentType"].as_str().map(str::to_string),
                enabled: doc["attributes"]["enabled"].as_bool().unwrap_or(true),
                nbf: doc["attributes"]["nbf"].as_i64(),
                exp: doc["attributes"]["exp"].as_i64(),
                tags,
                created: now(),
            };
            let out = bundle(port, vault, &name, &v, true);
            secrets.entry(name).or_default().push(v);
            reply(200, out)
        }
        _ => kv_error(
            405,
            "MethodNotAllowed",
            "The operation is not supported.",
            None,
        ),
    }
}
