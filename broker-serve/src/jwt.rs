//! JWT bearer identity (`serve.jwt`): platform-injected tokens verified against a JWKS.
//!
//! A caller that sends `Authorization: Bearer <token>` is who its token says, once
//! [`JwtVerifier::verify`] has checked it: a compact JWS signed with a key from the configured
//! JWKS (a file, or an `https` URL), with an algorithm from the allowlist, issued by the
//! configured `issuer` for one of the configured `audience`s, and within its `exp` / `nbf`
//! (with a small leeway). The agent id, tenant and attributes come from the claims that
//! `serve.jwt` names. Typical issuers: Kubernetes projected service-account tokens, CI OIDC
//! tokens (GitHub Actions), SPIFFE JWT-SVIDs.
//!
//! - **Algorithms.** Only asymmetric ones: RS256/384/512, PS256/384/512, ES256/384, EdDSA
//!   (default RS256 and ES256). `none` and the HMAC family are refused when the config is
//!   loaded and in every token, so a public key can never serve as an HMAC secret. The token's
//!   `alg` must also fit the key: an RSA key verifies only RS*/PS*, a P-256 key only ES256, a
//!   JWK that names its own `alg` only that one.
//! - **Keys.** Looked up by the token's `kid` (a token without `kid` is accepted only when
//!   the set holds a single key). Symmetric (`oct`) keys and keys marked for encryption are
//!   never loaded. A JWKS URL is fetched on first use and refreshed when an hour old; an
//!   unknown `kid` refetches it (a file is re-read), at most once per
//!   [`REFETCH_INTERVAL`]: a key an attacker invents cannot make the daemon hammer the issuer.
//!   A fetch has a [`FETCH_TIMEOUT`], reads at most [`MAX_JWKS_BYTES`] and is retried (at most
//!   three times, with backoff) on 5xx answers and connection failures.
//! - **Refusals** ([`TokenRefusal`]) carry a stable `kind` and a message that never quotes
//!   the token, its signature or a claim value; nothing here logs them either.
//!
//! See `docs/serve.md`, "JWT bearer identity".

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broker_core::{Error, Result};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The largest token [`JwtVerifier::verify`] looks at, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest JWKS document read from a file or a URL, in bytes.
pub const MAX_JWKS_BYTES: u64 = 1 << 20;
/// At most one refetch of the JWKS for an unknown `kid` within this time.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// The time one JWKS fetch attempt may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The leeway on `exp` and `nbf` unless `serve.jwt.leeway` says otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest `serve.jwt.leeway`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// A JWKS fetched from a URL is fetched again on first use after this long.
const URL_MAX_AGE: Duration = Duration::from_secs(3600);
/// After a failed fetch, requests that would fetch again answer `jwks_unavailable` at once
/// for this long, so a dead issuer is not asked once per request.
const FAILURE_PAUSE: Duration = Duration::from_secs(2);
/// The algorithms `serve.jwt.algorithms` may name.
const ALLOWED: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `serve.jwt` in `.broker.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The issuer a token's `iss` must equal exactly.
    pub issuer: String,
    /// The audiences one of which a token's `aud` must hold (a single string is accepted).
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// A JWKS file (relative paths against the config's directory); exactly one of
    /// `jwks_file` and `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// A JWKS URL: `https`, or `http` only to a loopback address.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The algorithms a token may be signed with (default `RS256`, `ES256`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim whose string value is the agent id (default `sub`). A name starting with
    /// `/` is a JSON pointer into the claims (`/kubernetes.io/serviceaccount/name`).
    #[serde(default = "default_agent_claim")]
    pub agent_claim: String,
    /// The claim whose string value is the tenant; the token must have it when set.
    #[serde(default)]
    pub tenant_claim: Option<String>,
    /// Attribute name → claim name (string claims only; a missing claim leaves the
    /// attribute out).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The leeway on `exp` and `nbf` (duration text, default `30s`, at most `5m`).
    #[serde(default)]
    pub leeway: Option<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_agent_claim() -> String {
    "sub".into()
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A verified token: who the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The agent id (`agent_claim`, normalised like every agent id).
    pub agent: String,
    /// The tenant (`tenant_claim`), when configured.
    pub tenant: Option<String>,
    /// The configured attributes the token has.
    pub attributes: BTreeMap<String, String>,
    /// The token's issuer.
    pub issuer: String,
    /// The token's `sub`, when it is a string.
    pub subject: Option<String>,
    /// The `kid` of the key that verified it.
    pub key_id: Option<String>,
}

impl VerifiedToken {
    /// `jwt iss=<iss> sub=<sub> kid=<kid>` for logs and audit records (`-` for an absent
    /// value; long values elided, control characters escaped).
    pub fn describe(&self) -> String {
        let or_dash = |v: &Option<String>| {
            v.as_deref()
                .map(|s| broker_core::grammar::elide(s).into_owned())
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "jwt iss={} sub={} kid={}",
            broker_core::grammar::elide(&self.issuer),
            or_dash(&self.subject),
            or_dash(&self.key_id)
        )
    }
}

/// Why a token was refused. `kind` is one of the stable strings below; `message` never
/// quotes the token, its signature or a claim value.
///
/// `token_malformed`, `token_expired`, `token_not_yet_valid`, `token_wrong_issuer`,
/// `token_wrong_audience`, `token_algorithm_refused`, `token_unknown_key`,
/// `token_bad_signature`, `token_claims` (the caller's fault: HTTP 401) and
/// `jwks_unavailable` (the key set could not be fetched: 503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRefusal {
    /// The stable kind.
    pub kind: &'static str,
    /// What was wrong, without values.
    pub message: String,
}

impl TokenRefusal {
    fn new(kind: &'static str, message: impl Into<String>) -> TokenRefusal {
        TokenRefusal {
            kind,
            message: message.into(),
        }
    }

    /// The HTTP status for this refusal: 503 for `jwks_unavailable`, else 401.
    pub fn status(&self) -> u16 {
        if self.kind == JWKS_UNAVAILABLE {
            503
        } else {
            401
        }
    }
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for TokenRefusal {}

const MALFORMED: &str = "token_malformed";
const EXPIRED: &str = "token_expired";
const NOT_YET_VALID: &str = "token_not_yet_valid";
const WRONG_ISSUER: &str = "token_wrong_issuer";
const WRONG_AUDIENCE: &str = "token_wrong_audience";
const ALGORITHM_REFUSED: &str = "token_algorithm_refused";
const UNKNOWN_KEY: &str = "token_unknown_key";
const BAD_SIGNATURE: &str = "token_bad_signature";
const CLAIMS: &str = "token_claims";
const JWKS_UNAVAILABLE: &str = "jwks_unavailable";

/// What kind of public key a JWK holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable verification key of the set.
struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

/// The keys of one JWKS document.
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    /// When it was read; `None` before a URL is first fetched.
    loaded_at: Option<Instant>,
    /// Bumped on every successful (re)load.
    generation: u64,
}

enum Lookup<'a> {
    Found(&'a Key),
    WrongAlgorithm(&'static str),
    Unknown,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let candidates: Vec<&Key> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None if self.keys.len() == 1 => self.keys.iter().collect(),
            None => return Lookup::Unknown,
        };
        if candidates.is_empty() {
            return Lookup::Unknown;
        }
        let mut why = "the key's type does not fit the token's algorithm";
        for key in candidates {
            if !key.kind.fits(alg) {
                continue;
            }
            if key.alg.is_some_and(|a| a != alg) {
                why = "the key names another algorithm than the token's";
                continue;
            }
            return Lookup::Found(key);
        }
        Lookup::WrongAlgorithm(why)
    }
}

/// Where the key set comes from.
enum Source {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => f.debug_tuple("File").field(p).finish(),
            Source::Url { url, .. } => f.debug_tuple("Url").field(&url.as_str()).finish(),
        }
    }
}

/// Fetch bookkeeping, held while a fetch runs so concurrent requests wait for one fetch.
#[derive(Default)]
struct FetchState {
    last_refetch: Option<Instant>,
    last_failure: Option<Instant>,
}

/// Why the key set is (re)loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// A URL never fetched yet.
    First,
    /// A URL set older than [`URL_MAX_AGE`].
    Stale,
    /// A token named a `kid` the set does not hold.
    UnknownKid,
}

/// Verifies bearer tokens against `serve.jwt` (see the module docs). Its `Debug` shows the
/// settings and the key ids, never key material.
pub struct JwtVerifier {
    issuer: String,
    audience: Vec<String>,
    algorithms: Vec<Algorithm>,
    agent_claim: String,
    tenant_claim: Option<String>,
    attributes: BTreeMap<String, String>,
    leeway: Duration,
    source: Source,
    keys: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.current();
        let kids: Vec<&str> = set
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("agent_claim", &self.agent_claim)
            .field("tenant_claim", &self.tenant_claim)
            .field("attributes", &self.attributes)
            .field("leeway", &self.leeway)
            .field("source", &self.source)
            .field("key_ids", &kids)
            .finish()
    }
}

fn config_error(key: &str, why: impl fmt::Display) -> Error {
    Error::invalid_config(format!("`serve.jwt.{key}`: {why}"))
}

/// Checks a claim name (`agent_claim`, `tenant_claim`, an attribute's claim).
fn check_claim_name(key: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(config_error(key, "is empty"));
    }
    if name.chars().any(broker_core::grammar::is_unsafe_char) {
        return Err(config_error(key, "must not contain control characters"));
    }
    Ok(())
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>> {
    if names.is_empty() {
        return Err(config_error("algorithms", "names no algorithm"));
    }
    let mut out = Vec::new();
    for name in names {
        let shown = broker_core::grammar::elide(name);
        if name.eq_ignore_ascii_case("none") {
            return Err(config_error(
                "algorithms",
                "`none` is refused: an unsigned token proves nothing",
            ));
        }
        if name.to_ascii_uppercase().starts_with("HS") {
            return Err(config_error(
                "algorithms",
                format!(
                    "`{shown}` is refused: HMAC needs a shared secret, and a verifier that \
                     accepts it can be fooled with the issuer's public key as the secret"
                ),
            ));
        }
        if !ALLOWED.contains(&name.as_str()) {
            return Err(config_error(
                "algorithms",
                format!("`{shown}` is not one of {}", ALLOWED.join(", ")),
            ));
        }
        let alg = Algorithm::from_str(name)
            .map_err(|_| config_error("algorithms", format!("`{shown}` is not supported")))?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}

/// Whether `url`'s host may be reached over plain `http`: 127.0.0.0/8, `::1` or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn parse_url(text: &str) -> Result<reqwest::Url> {
    let shown = broker_core::grammar::elide(text);
    let url = reqwest::Url::parse(text.trim())
        .map_err(|e| config_error("jwks_url", format!("`{shown}` is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(
            "jwks_url",
            "must not carry a user name or password",
        ));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(config_error(
            "jwks_url",
            format!(
                "`{shown}` is plain http to a host that is not loopback (127.0.0.0/8, [::1], \
                 localhost); use https"
            ),
        )),
        _ => Err(config_error(
            "jwks_url",
            format!("`{shown}` is not an https URL"),
        )),
    }
}

fn http_client(url: &reqwest::Url) -> Result<reqwest::Client> {
    // Hand reqwest a rustls config with an explicit (ring) provider and the platform's roots,
    // as broker-vault does, so the build works whichever provider features others enable.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| Error::internal(format!("cannot load the system trust store: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // A redirect could lead a loopback URL anywhere.
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls);
    if is_loopback(url) {
        // No proxy can reach this machine's loopback for us.
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))
}

/// Parses a JWKS document into its usable signature keys. Keys that cannot verify a token
/// here (symmetric, for encryption, another curve) are left out; a document with none left is
/// an error. The error never quotes the document.
fn parse_jwks(bytes: &[u8]) -> std::result::Result<Vec<Key>, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|_| "is not a JWKS document (a JSON object with a `keys` list)".to_string())?;
    let mut keys = Vec::new();
    let mut skipped = 0usize;
    for value in doc.keys {
        match usable_key(value) {
            Some(key) => keys.push(key),
            None => skipped += 1,
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "holds no usable signature key ({skipped} left out: symmetric, for encryption, \
             or of an unsupported type)"
        ));
    }
    Ok(keys)
}

fn usable_key(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return None;
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&jsonwebtoken::jwk::KeyOperations::Verify)
    {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512) => return None,
        Some(a) => Some(Algorithm::try_from(a).ok()?),
    };
    let b64_len = |s: &str| URL_SAFE_NO_PAD.decode(s).map(|v| v.len()).ok();
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            // At least 2048 bits; the verifier refuses smaller moduli too.
            let n = URL_SAFE_NO_PAD.decode(&p.n).ok()?;
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < 2048 || b64_len(&p.e)? == 0 {
                return None;
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                _ => return None,
            };
            if b64_len(&p.x)? != len || b64_len(&p.y)? != len {
                return None;
            }
            kind
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 || b64_len(&p.x)? != 32 {
                return None;
            }
            KeyKind::Ed25519
        }
        // Symmetric keys are secrets, not verification keys: never loaded.
        _ => return None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        decoding,
    })
}

fn read_jwks_file(path: &Path) -> std::result::Result<Vec<Key>, String> {
    let bytes = broker_core::localfile::read(path, MAX_JWKS_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_jwks(&bytes).map_err(|e| format!("{} {e}", path.display()))
}

/// One fetch attempt of a JWKS URL; a 5xx answer, a timeout or a connection failure is
/// retryable. Errors name the host, never the body.
async fn fetch_once(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>> {
    let host = url.host_str().unwrap_or("?").to_string();
    let transport = |e: reqwest::Error| {
        let why = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "transport error"
        };
        Error::transient(format!("JWKS fetch from {host}: {why}"))
    };
    let mut resp = client
        .get(url.clone())
        .header("Accept", "application/json, application/jwk-set+json")
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(Error::transient(format!(
            "JWKS fetch from {host}: HTTP {}",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        return Err(Error::new(
            broker_core::ErrorKind::UnexpectedAnswer,
            format!("JWKS fetch from {host}: HTTP {}", status.as_u16()),
        ));
    }
    let too_large = || {
        Error::new(
            broker_core::ErrorKind::UnexpectedAnswer,
            format!(
                "JWKS from {host} is larger than {} KiB",
                MAX_JWKS_BYTES >> 10
            ),
        )
    };
    if resp.content_length().is_some_and(|l| l > MAX_JWKS_BYTES) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() as u64 + chunk.len() as u64 > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The parts of a compact JWS header this module reads before choosing a key.
struct Head {
    alg: Algorithm,
    kid: Option<String>,
}

impl JwtVerifier {
    /// Validates settings; loads a `jwks_file` now (relative paths against `base_dir`; read as
    /// a capped regular file). A JWKS URL is fetched lazily on first use. Errors are
    /// [`broker_core::ErrorKind::InvalidConfig`] naming `serve.jwt.<key>`.
    pub fn new(settings: JwtSettings, base_dir: &Path) -> Result<JwtVerifier> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(Error::internal(
                "jsonwebtoken has no crypto provider (exactly one of its backend features must \
                 be enabled)",
            ));
        }
        let issuer = settings.issuer.trim().to_string();
        if issuer.is_empty() {
            return Err(config_error("issuer", "is empty"));
        }
        if settings.audience.is_empty() {
            return Err(config_error("audience", "names no audience"));
        }
        if settings.audience.iter().any(|a| a.trim().is_empty()) {
            return Err(config_error("audience", "holds an empty audience"));
        }
        let algorithms = parse_algorithms(&settings.algorithms)?;
        check_claim_name("agent_claim", &settings.agent_claim)?;
        if let Some(t) = &settings.tenant_claim {
            check_claim_name("tenant_claim", t)?;
        }
        for (name, claim) in &settings.attributes {
            if name.trim().is_empty() || name.chars().any(broker_core::grammar::is_unsafe_char) {
                return Err(config_error(
                    "attributes",
                    "an attribute name is empty or has control characters",
                ));
            }
            check_claim_name(&format!("attributes.{name}"), claim)?;
        }
        let leeway = match &settings.leeway {
            None => DEFAULT_LEEWAY,
            Some(text) => {
                let d = broker_core::config::parse_duration(text)
                    .map_err(|e| config_error("leeway", e))?;
                if d > MAX_LEEWAY {
                    return Err(config_error("leeway", "must be at most 5m"));
                }
                d
            }
        };
        let (source, keys) = match (&settings.jwks_file, &settings.jwks_url) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    "jwks_file",
                    "and `serve.jwt.jwks_url` are both set; set exactly one",
                ));
            }
            (None, None) => {
                return Err(config_error(
                    "jwks_file",
                    "is not set, nor is `serve.jwt.jwks_url`; set exactly one",
                ));
            }
            (Some(file), None) => {
                if file.trim().is_empty() {
                    return Err(config_error("jwks_file", "is empty"));
                }
                let path = base_dir.join(file);
                let keys = read_jwks_file(&path).map_err(|e| config_error("jwks_file", e))?;
                let set = KeySet {
                    keys,
                    loaded_at: Some(Instant::now()),
                    generation: 1,
                };
                (Source::File(path), set)
            }
            (None, Some(text)) => {
                let url = parse_url(text)?;
                let client = http_client(&url)?;
                (Source::Url { url, client }, KeySet::default())
            }
        };
        Ok(JwtVerifier {
            issuer,
            audience: settings.audience,
            algorithms,
            agent_claim: settings.agent_claim,
            tenant_claim: settings.tenant_claim,
            attributes: settings.attributes,
            leeway,
            source,
            keys: RwLock::new(Arc::new(keys)),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        })
    }

    /// Verifies a compact JWS. Never logs or returns the token or its signature.
    pub async fn verify(&self, token: &str) -> std::result::Result<VerifiedToken, TokenRefusal> {
        let result = self.verify_inner(token).await;
        if let Err(refusal) = &result {
            tracing::debug!(kind = refusal.kind, "bearer token refused");
        }
        result
    }

    async fn verify_inner(&self, token: &str) -> std::result::Result<VerifiedToken, TokenRefusal> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRefusal::new(
                MALFORMED,
                format!("the token is larger than {} KiB", MAX_TOKEN_BYTES >> 10),
            ));
        }
        let head = self.head(token)?;
        let mut set = self.current();
        let first = match &self.source {
            Source::Url { .. } if set.loaded_at.is_none() => Some(Reason::First),
            Source::Url { .. } if set.loaded_at.is_some_and(|t| t.elapsed() > URL_MAX_AGE) => {
                Some(Reason::Stale)
            }
            _ => None,
        };
        if let Some(reason) = first {
            set = self.reload(reason, set.generation).await?;
        }
        if let Lookup::Unknown = set.find(head.kid.as_deref(), head.alg) {
            set = self.reload(Reason::UnknownKid, set.generation).await?;
        }
        let key = match set.find(head.kid.as_deref(), head.alg) {
            Lookup::Found(key) => key,
            Lookup::WrongAlgorithm(why) => return Err(TokenRefusal::new(ALGORITHM_REFUSED, why)),
            Lookup::Unknown => return Err(unknown_key(head.kid.is_some())),
        };
        let claims = self.check(token, key, head.alg)?;
        self.map_claims(&claims, key)
    }

    /// Reads the header: shape, `alg` (against the allowlist) and `kid`.
    fn head(&self, token: &str) -> std::result::Result<Head, TokenRefusal> {
        let malformed = |why: &str| TokenRefusal::new(MALFORMED, why);
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "the token is not a compact JWS (three dot-separated parts)",
            ));
        };
        if header.is_empty() || payload.is_empty() {
            return Err(malformed("the token has an empty header or payload"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed("the token's header is not base64url"))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| malformed("the token's header is not JSON"))?;
        let Some(obj) = value.as_object() else {
            return Err(malformed("the token's header is not a JSON object"));
        };
        let Some(alg) = obj.get("alg").and_then(|a| a.as_str()) else {
            return Err(malformed("the token's header names no algorithm"));
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(TokenRefusal::new(
                ALGORITHM_REFUSED,
                "the token is unsigned (`alg: none`)",
            ));
        }
        let refused = || {
            TokenRefusal::new(
                ALGORITHM_REFUSED,
                format!(
                    "the token's algorithm is not one of {}",
                    self.algorithms
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        // HS* never gets here: the allowlist cannot hold it.
        let alg = Algorithm::from_str(alg).map_err(|_| refused())?;
        if !self.algorithms.contains(&alg) {
            return Err(refused());
        }
        if signature.is_empty() {
            return Err(malformed("the token has no signature"));
        }
        let kid = match obj.get("kid") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed("the token's `kid` is not a string")),
        };
        Ok(Head { alg, kid })
    }

    /// Checks the signature, `exp`, `nbf`, `iss` and `aud`; returns the claims.
    fn check(
        &self,
        token: &str,
        key: &Key,
        alg: Algorithm,
    ) -> std::result::Result<serde_json::Map<String, serde_json::Value>, TokenRefusal> {
        use jsonwebtoken::errors::ErrorKind as J;
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(|e| {
            let (kind, why) = match e.kind() {
                J::InvalidSignature => (BAD_SIGNATURE, "the signature does not verify"),
                J::ExpiredSignature => (EXPIRED, "the token has expired"),
                J::ImmatureSignature => (NOT_YET_VALID, "the token is not valid yet (`nbf`)"),
                J::InvalidIssuer => (WRONG_ISSUER, "the token's issuer is not the configured one"),
                J::InvalidAudience => (
                    WRONG_AUDIENCE,
                    "the token's audience holds none of the configured ones",
                ),
                J::MissingRequiredClaim(c) | J::InvalidClaimFormat(c) => match c.as_str() {
                    "iss" => (WRONG_ISSUER, "the token has no string issuer (`iss`)"),
                    "aud" => (WRONG_AUDIENCE, "the token has no audience (`aud`)"),
                    "exp" => (CLAIMS, "the token has no numeric expiry (`exp`)"),
                    "nbf" => (CLAIMS, "the token's `nbf` is not a number"),
                    _ => (CLAIMS, "the token lacks a required claim"),
                },
                J::InvalidAlgorithm | J::MissingAlgorithm | J::UnsupportedAlgorithm => (
                    ALGORITHM_REFUSED,
                    "the token's algorithm does not fit the key",
                ),
                J::InvalidToken | J::Base64(_) | J::Json(_) | J::Utf8(_) => {
                    (MALFORMED, "the token is not a well-formed JWS")
                }
                // A key the crypto backend refuses cannot verify anything.
                _ => (BAD_SIGNATURE, "the signature does not verify with the key"),
            };
            TokenRefusal::new(kind, why)
        })?;
        let claims = data.claims;
        // `iss` must be the configured string itself, not a list holding it.
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err(TokenRefusal::new(
                WRONG_ISSUER,
                "the token's issuer is not the configured one",
            ));
        }
        Ok(claims)
    }

    fn map_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        key: &Key,
    ) -> std::result::Result<VerifiedToken, TokenRefusal> {
        let refuse = |what: String| TokenRefusal::new(CLAIMS, what);
        let agent_raw = string_claim(claims, &self.agent_claim)
            .map_err(|why| refuse(format!("the agent claim {why}")))?
            .ok_or_else(|| refuse("the token has no agent claim".into()))?;
        let agent = match broker_core::policy::normalize_agent_id(agent_raw) {
            Ok(Some(id)) => id,
            Ok(None) => return Err(refuse("the agent claim is empty".into())),
            Err(_) => {
                return Err(refuse(
                    "the agent claim is not a valid agent id (ASCII letters, digits and \
                     `._@:/+-`, at most 256 bytes)"
                        .into(),
                ));
            }
        };
        let tenant = match &self.tenant_claim {
            None => None,
            Some(name) => {
                let t = string_claim(claims, name)
                    .map_err(|why| refuse(format!("the tenant claim {why}")))?
                    .ok_or_else(|| refuse("the token has no tenant claim".into()))?;
                if t.trim().is_empty() {
                    return Err(refuse("the tenant claim is empty".into()));
                }
                Some(t.to_string())
            }
        };
        let mut attributes = BTreeMap::new();
        for (attr, name) in &self.attributes {
            if let Some(v) = string_claim(claims, name).map_err(|why| {
                refuse(format!(
                    "the claim of attribute `{}` {why}",
                    broker_core::grammar::elide(attr)
                ))
            })? {
                attributes.insert(attr.clone(), v.to_string());
            }
        }
        Ok(VerifiedToken {
            agent,
            tenant,
            attributes,
            issuer: self.issuer.clone(),
            subject: claims
                .get("sub")
                .and_then(|s| s.as_str())
                .map(str::to_string),
            key_id: key.kid.clone(),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn store(&self, set: KeySet) -> Arc<KeySet> {
        let set = Arc::new(set);
        match self.keys.write() {
            Ok(mut g) => *g = set.clone(),
            Err(poisoned) => *poisoned.into_inner() = set.clone(),
        }
        set
    }

    /// (Re)loads the key set for `reason`, unless another request did since the caller saw
    /// generation `seen`, or the rate limit says no.
    async fn reload(
        &self,
        reason: Reason,
        seen: u64,
    ) -> std::result::Result<Arc<KeySet>, TokenRefusal> {
        let mut state = if reason == Reason::Stale {
            // A refresh of a set that still works never makes a request wait for another's.
            match self.fetch.try_lock() {
                Ok(state) => state,
                Err(_) => return Ok(self.current()),
            }
        } else {
            self.fetch.lock().await
        };
        let current = self.current();
        if current.generation != seen {
            // Someone else (re)loaded while this request waited: use theirs.
            return Ok(current);
        }
        let now = Instant::now();
        if reason == Reason::UnknownKid {
            if state
                .last_refetch
                .is_some_and(|t| now.duration_since(t) < REFETCH_INTERVAL)
            {
                return Err(unknown_key(true));
            }
            state.last_refetch = Some(now);
        }
        // After a failure, a stale set is kept for a refetch interval, a missing one is
        // refused for a short pause.
        let pause = if reason == Reason::Stale {
            REFETCH_INTERVAL
        } else {
            FAILURE_PAUSE
        };
        if state
            .last_failure
            .is_some_and(|t| now.duration_since(t) < pause)
        {
            return match reason {
                Reason::Stale => Ok(current),
                _ => Err(TokenRefusal::new(
                    JWKS_UNAVAILABLE,
                    "the JWKS could not be loaded a moment ago",
                )),
            };
        }
        match self.load().await {
            Ok(keys) => {
                state.last_failure = None;
                tracing::debug!(keys = keys.len(), ?reason, "JWKS loaded");
                Ok(self.store(KeySet {
                    keys,
                    loaded_at: Some(Instant::now()),
                    generation: current.generation + 1,
                }))
            }
            Err(why) => {
                state.last_failure = Some(Instant::now());
                tracing::warn!(error = %why, ?reason, "cannot load the JWKS");
                if reason == Reason::Stale {
                    // Keep verifying with the keys we have.
                    return Ok(current);
                }
                Err(TokenRefusal::new(
                    JWKS_UNAVAILABLE,
                    "the JWKS could not be loaded",
                ))
            }
        }
    }

    /// Reads the file or fetches the URL (with retries) and parses it.
    async fn load(&self) -> std::result::Result<Vec<Key>, String> {
        match &self.source {
            Source::File(path) => read_jwks_file(path),
            Source::Url { url, client } => {
                let policy = broker_core::retry::RetryPolicy {
                    max_retries: broker_core::retry::MAX_RETRIES,
                    base_delay: Duration::from_millis(200),
                    max_delay: Duration::from_secs(2),
                    timeout: FETCH_TIMEOUT,
                };
                let (body, _attempts) =
                    broker_core::retry::retry(&policy, &broker_core::retry::TokioSleeper, |_| {
                        fetch_once(client, url)
                    })
                    .await
                    .map_err(|f| f.error.message().to_string())?;
                let host = url.host_str().unwrap_or("?");
                parse_jwks(&body).map_err(|e| format!("JWKS from {host} {e}"))
            }
        }
    }
}

fn unknown_key(named: bool) -> TokenRefusal {
    TokenRefusal::new(
        UNKNOWN_KEY,
        if named {
            "the token's key (`kid`) is not in the JWKS"
        } else {
            "the token names no key (`kid`) and the JWKS holds more than one"
        },
    )
}

/// The string value of claim `name` (a JSON pointer when it starts with `/`): `Ok(None)` when
/// absent or null, `Err` when present but not a string. The error never quotes the value.
fn string_claim<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> std::result::Result<Option<&'a str>, &'static str> {
    let value = if let Some(pointer) = name.strip_prefix('/') {
        let mut segments = pointer
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"));
        let first = segments.next().unwrap_or_default();
        let mut v = claims.get(&first);
        for seg in segments {
            v = match v {
                Some(serde_json::Value::Object(m)) => m.get(&seg),
                _ => None,
            };
        }
        v
    } else {
        claims.get(name)
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("is not a string"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(json: serde_json::Value) -> std::result::Result<JwtSettings, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "issuer": "https://issuer.example",
            "audience": "broker",
            "jwks_url": "https://issuer.example/jwks",
        })
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut b = base();
        b[key] = value;
        b
    }

    fn err(json: serde_json::Value) -> String {
        let s = settings(json).unwrap();
        let e = JwtVerifier::new(s, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.kind(), broker_core::ErrorKind::InvalidConfig, "{e}");
        e.message().to_string()
    }

    #[test]
    fn defaults_and_a_single_audience() {
        let s = settings(base()).unwrap();
        assert_eq!(s.audience, vec!["broker".to_string()]);
        assert_eq!(s.algorithms, vec!["RS256".to_string(), "ES256".to_string()]);
        assert_eq!(s.agent_claim, "sub");
        let v = JwtVerifier::new(s, Path::new("/")).unwrap();
        assert_eq!(v.leeway, DEFAULT_LEEWAY);
        assert_eq!(v.algorithms, vec![Algorithm::RS256, Algorithm::ES256]);
        let s = settings(with("audience", serde_json::json!(["a", "b"]))).unwrap();
        assert_eq!(s.audience, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(settings(with("audiences", serde_json::json!("x"))).is_err());
        let mut no_issuer = base();
        no_issuer.as_object_mut().unwrap().remove("issuer");
        assert!(settings(no_issuer).is_err());
    }

    #[test]
    fn none_and_hmac_are_refused_at_load() {
        let m = err(with("algorithms", serde_json::json!(["RS256", "none"])));
        assert!(
            m.contains("serve.jwt.algorithms") && m.contains("`none`"),
            "{m}"
        );
        for hs in ["HS256", "HS384", "HS512", "hs256"] {
            let m = err(with("algorithms", serde_json::json!([hs])));
            assert!(
                m.contains("serve.jwt.algorithms") && m.contains("HMAC"),
                "{m}"
            );
        }
        let m = err(with("algorithms", serde_json::json!(["ES512"])));
        assert!(m.contains("not one of"), "{m}");
        let m = err(with("algorithms", serde_json::json!([])));
        assert!(m.contains("no algorithm"), "{m}");
        let s = settings(with(
            "algorithms",
            serde_json::json!(["EdDSA", "PS512", "ES384"]),
        ));
        JwtVerifier::new(s.unwrap(), Path::new("/")).unwrap();
    }

    #[test]
    fn exactly_one_key_source() {
        let mut both = base();
        both["jwks_file"] = "jwks.json".into();
        assert!(err(both).contains("exactly one"));
        let mut neither = base();
        neither.as_object_mut().unwrap().remove("jwks_url");
        assert!(err(neither).contains("exactly one"));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:8080/jwks",
            "http://127.3.4.5/jwks",
            "http://[::1]:9/jwks",
            "http://localhost/jwks",
            "https://kubernetes.default.svc/openid/v1/jwks",
        ] {
            let s = settings(with("jwks_url", ok.into())).unwrap();
            JwtVerifier::new(s, Path::new("/")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://10.0.0.1/jwks",
            "http://example.com/jwks",
            "http://169.254.169.254/jwks",
            "ftp://127.0.0.1/jwks",
            "not a url",
            "https://user:pw@issuer.example/jwks",
        ] {
            let m = err(with("jwks_url", bad.into()));
            assert!(m.contains("serve.jwt.jwks_url"), "{bad}: {m}");
            assert!(!m.contains("pw@"), "{m}");
        }
    }

    #[test]
    fn leeway_is_bounded() {
        let s = settings(with("leeway", "2m".into())).unwrap();
        let v = JwtVerifier::new(s, Path::new("/")).unwrap();
        assert_eq!(v.leeway, Duration::from_secs(120));
        assert!(err(with("leeway", "6m".into())).contains("serve.jwt.leeway"));
        assert!(err(with("leeway", "soon".into())).contains("serve.jwt.leeway"));
    }

    #[test]
    fn required_values_are_not_empty() {
        assert!(err(with("issuer", " ".into())).contains("serve.jwt.issuer"));
        assert!(err(with("audience", serde_json::json!([]))).contains("serve.jwt.audience"));
        assert!(err(with("audience", serde_json::json!([""]))).contains("serve.jwt.audience"));
        assert!(err(with("agent_claim", "".into())).contains("serve.jwt.agent_claim"));
        assert!(err(with("tenant_claim", "".into())).contains("serve.jwt.tenant_claim"));
        assert!(
            err(with("attributes", serde_json::json!({"team": ""})))
                .contains("serve.jwt.attributes.team")
        );
    }

    #[test]
    fn a_jwks_file_is_read_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = base();
        s.as_object_mut().unwrap().remove("jwks_url");
        s["jwks_file"] = "jwks.json".into();
        let m = err_in(s.clone(), dir.path());
        assert!(
            m.contains("serve.jwt.jwks_file") && m.contains("cannot read"),
            "{m}"
        );
        std::fs::write(
            dir.path().join("jwks.json"),
            "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
        )
        .unwrap();
        let m = err_in(s.clone(), dir.path());
        assert!(m.contains("no usable signature key"), "{m}");
        assert!(!m.contains("c2VjcmV0"), "{m}");
        std::fs::write(dir.path().join("jwks.json"), "secret-canary-text").unwrap();
        let m = err_in(s.clone(), dir.path());
        assert!(m.contains("not a JWKS") && !m.contains("canary"), "{m}");
    }

    fn err_in(json: serde_json::Value, dir: &Path) -> String {
        let e = JwtVerifier::new(settings(json).unwrap(), dir).unwrap_err();
        e.message().to_string()
    }

    #[test]
    fn json_pointer_claims() {
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!({"kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "sa"}}, "n": 3, "a/b": "slash"}),
        )
        .unwrap();
        assert_eq!(
            string_claim(&claims, "/kubernetes.io/namespace"),
            Ok(Some("ns"))
        );
        assert_eq!(
            string_claim(&claims, "/kubernetes.io/serviceaccount/name"),
            Ok(Some("sa"))
        );
        assert_eq!(string_claim(&claims, "/a~1b"), Ok(Some("slash")));
        assert_eq!(string_claim(&claims, "/missing/x"), Ok(None));
        assert!(string_claim(&claims, "n").is_err());
        assert!(string_claim(&claims, "/kubernetes.io").is_err());
    }

    #[test]
    fn describe_elides_and_escapes() {
        let t = VerifiedToken {
            agent: "a".into(),
            tenant: None,
            attributes: BTreeMap::new(),
            issuer: "https://iss".into(),
            subject: Some("x\u{1b}y".into()),
            key_id: None,
        };
        assert_eq!(t.describe(), "jwt iss=https://iss sub=x\\x1by kid=-");
    }
}
