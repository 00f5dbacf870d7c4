//! `.broker.yml`: which credentials a task gets, from where, and what may leave the machine.
//!
//! ```yaml
//! egress: { enabled: false, allow: [self-hosted, managed-cloud], self_hosted: ["*.corp.example"] }
//! credentials:
//!   api:    { ref: "env:STAGING_API_TOKEN", as: API_TOKEN }
//!   gcp:    { ref: "gcp-sm://my-proj/sa-key", as: GOOGLE_APPLICATION_CREDENTIALS, kind: file }
//!   deploy: { mint: "aws-sts://arn:aws:iam::123456789012:role/agent-deploy", ttl: 15m,
//!             scope: { actions: ["s3:GetObject"], resources: ["arn:aws:s3:::bucket-a/*"] } }
//! backends:
//!   vault: { address: "https://vault.internal:8200" }
//! policy: policy.cedar
//! tenant: team-a
//! audit: { path: .broker/audit.jsonl, fsync: true }
//! alert: { command: "logger -t broker-alert" }
//! ```
//!
//! Every error names the file, line and column. Unknown keys are errors. A reference whose
//! scheme is not compiled in is an error here, not a silent skip.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_saphyr::Spanned;

use crate::egress::Badge;
use crate::grammar::{self, Operation};
use crate::registry::Registry;
use crate::{Error, Reference, Result};

/// The file names searched for, in order, walking up from the working directory.
pub const CONFIG_FILE_NAMES: &[&str] = &[".broker.yml", ".broker.yaml"];

/// The egress section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Whether non-local backends may be used at all. Default: false.
    #[serde(default)]
    pub enabled: bool,
    /// Which badges may be reached when enabled. Default: self-hosted and managed-cloud.
    #[serde(default = "default_allow")]
    pub allow: Vec<Badge>,
    /// Hosts (exact, or `*.suffix`) the user runs: badge `self-hosted`.
    #[serde(default)]
    pub self_hosted: Vec<String>,
    /// `egress.proxy`: the run's egress policy through the proxy (`broker-proxy` parses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
}

fn default_allow() -> Vec<Badge> {
    vec![Badge::SelfHosted, Badge::ManagedCloud]
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            enabled: false,
            allow: default_allow(),
            self_hosted: Vec::new(),
            proxy: None,
        }
    }
}

impl EgressConfig {
    /// Whether a destination with `badge` may be reached.
    pub fn permits(&self, badge: Badge) -> bool {
        badge == Badge::Local || (self.enabled && self.allow.contains(&badge))
    }
}

/// How a value reaches the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryKind {
    /// The variable holds the value.
    #[default]
    Env,
    /// The value is written to a 0600 file in the task's scratch dir; the variable holds its path.
    File,
}

/// Whether a credential is read or minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `ref:` — a stored secret.
    Resolve,
    /// `mint:` — a short-lived credential created per request.
    Mint,
}

/// A capability bound on a minted credential.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Allowed actions (e.g. `s3:GetObject`).
    #[serde(default)]
    pub actions: Vec<String>,
    /// Allowed resources (e.g. `arn:aws:s3:::bucket-a/*`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Backend-specific conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<serde_json::Value>,
}

/// One entry of `credentials:`.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialSpec {
    /// Its name in the config.
    pub name: String,
    /// Where it comes from.
    pub reference: Reference,
    /// Read or minted.
    pub source: Source,
    /// The environment variable it is delivered as (`as:`; default: the name upper-cased).
    pub env_var: String,
    /// Env or file delivery.
    pub kind: DeliveryKind,
    /// Requested lifetime (mint only).
    pub ttl: Option<Duration>,
    /// Capability bound (mint only).
    pub scope: Option<Scope>,
    /// Backend-specific options (`identity:` for age, say). Settings, never values.
    pub options: BTreeMap<String, serde_json::Value>,
    /// The tenant the credential belongs to (`tenant:`; default: the config's `tenant:`).
    pub tenant: Option<String>,
    /// What the MCP server (`broker mcp`) may do with it (`mcp:`).
    pub mcp: McpCredential,
    /// Placeholder mode (`proxy:`): the child gets a placeholder and the proxy substitutes the
    /// value toward the credential's hosts. Kept as given; `broker-proxy` parses it.
    pub proxy: Option<serde_json::Value>,
    /// The line the credential starts on.
    pub line: u64,
}

/// A credential's `mcp:` key: what `broker mcp` may do with it beyond running a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct McpCredential {
    /// `reveal: true`: the MCP server's `reveal_credential` tool may show the value to the
    /// agent (audited). Default false: the value never enters the model's context.
    #[serde(default)]
    pub reveal: bool,
}

impl CredentialSpec {
    /// What this credential asks of its backend (TTL, scope, options, delivery kind), for a
    /// provider [`Request`](crate::Request).
    pub fn terms(&self) -> crate::Terms<'_> {
        crate::Terms::new(Some(self.kind))
            .with_ttl(self.ttl)
            .with_scope(self.scope.as_ref())
            .with_options(&self.options)
    }
}

/// The `audit:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where the JSONL log goes, relative to the config file. Required unless `enabled: false`.
    #[serde(default)]
    pub path: Option<String>,
    /// `false` turns the log off in so many words (`audit: { enabled: false }`); the daemon
    /// refuses to start without a log otherwise. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whether each record is fsynced before the credential is handed out. Default true.
    #[serde(default = "default_true")]
    pub fsync: bool,
}

fn default_true() -> bool {
    true
}

/// The `alert:` section: what runs when a request fails closed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// A shell command (`sh -c`) run with the alert event's JSON on stdin. Never a value.
    pub command: String,
}

/// One `backends.<name>` section, kept as source so the backend parses it into its own type
/// with line numbers intact.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    name: String,
    line: u64,
    file: Arc<Path>,
    source: Arc<str>,
}

impl BackendSettings {
    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The line the section starts on.
    pub fn line(&self) -> u64 {
        self.line
    }
    /// Parses the section into the backend's settings type.
    pub fn parse<T: de::DeserializeOwned>(&self) -> Result<T> {
        let seed = PickBackend::<T> {
            name: &self.name,
            _t: std::marker::PhantomData,
        };
        let parsed =
            serde_saphyr::with_deserializer_from_str_with_options(&self.source, options(), |d| {
                seed.deserialize(d)
            });
        match parsed {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Error::internal(format!(
                "backend section `{}` vanished",
                self.name
            ))),
            Err(e) => {
                Err(yaml_error(&self.file, &e).with_hint(format!("in `backends.{}`", self.name)))
            }
        }
    }
}

/// The top-level `serve:` section (the daemon's settings), kept as source so `broker-serve`
/// parses it into its own type (unknown keys stay errors there) with line numbers intact.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    line: u64,
    file: Arc<Path>,
    source: Arc<str>,
}

impl ServeSettings {
    /// The line the section starts on.
    pub fn line(&self) -> u64 {
        self.line
    }
    /// Parses the section into the daemon's settings type.
    pub fn parse<T: de::DeserializeOwned>(&self) -> Result<T> {
        let parsed =
            serde_saphyr::with_deserializer_from_str_with_options(&self.source, options(), |d| {
                PickServe::<T>(std::marker::PhantomData).deserialize(d)
            });
        match parsed {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Error::internal("the `serve` section vanished")),
            Err(e) => Err(yaml_error(&self.file, &e).with_hint("in `serve`")),
        }
    }
}

/// The top-level `mcp:` section (`broker mcp`'s settings), kept as source so `broker-mcp`
/// parses it into its own type (unknown keys stay errors there) with line numbers intact.
#[derive(Debug, Clone)]
pub struct McpSettings {
    line: u64,
    file: Arc<Path>,
    source: Arc<str>,
}

impl McpSettings {
    /// The line the section starts on.
    pub fn line(&self) -> u64 {
        self.line
    }
    /// Parses the section into the MCP server's settings type.
    pub fn parse<T: de::DeserializeOwned>(&self) -> Result<T> {
        let parsed =
            serde_saphyr::with_deserializer_from_str_with_options(&self.source, options(), |d| {
                PickTop::<T>("mcp", std::marker::PhantomData).deserialize(d)
            });
        match parsed {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Error::internal("the `mcp` section vanished")),
            Err(e) => Err(yaml_error(&self.file, &e).with_hint("in `mcp`")),
        }
    }
}

/// Picks one top-level key of the root map and deserializes only it into `T`.
struct PickTop<T>(&'static str, std::marker::PhantomData<T>);

impl<'de, T: de::DeserializeOwned> DeserializeSeed<'de> for PickTop<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Option<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: de::DeserializeOwned> Visitor<'de> for PickTop<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

struct PickServe<T>(std::marker::PhantomData<T>);

impl<'de, T: de::DeserializeOwned> DeserializeSeed<'de> for PickServe<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Option<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: de::DeserializeOwned> Visitor<'de> for PickServe<T> {
    type Value = Option<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "serve" {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The loaded config.
#[derive(Debug, Clone)]
pub struct Config {
    path: PathBuf,
    base_dir: PathBuf,
    /// The egress gate's settings.
    pub egress: EgressConfig,
    /// Credentials in file order.
    pub credentials: Vec<CredentialSpec>,
    /// Backend sections by name.
    pub backends: BTreeMap<String, BackendSettings>,
    /// The policy file, absolute.
    pub policy: Option<PathBuf>,
    /// The audit log file, absolute.
    pub audit_path: Option<PathBuf>,
    /// Whether audit records are fsynced before a credential is handed out (`audit.fsync`).
    pub audit_fsync: bool,
    /// Whether the config turns the audit log off explicitly (`audit: { enabled: false }`).
    pub audit_disabled: bool,
    /// The tenant this config's agents belong to (`tenant:`).
    pub tenant: Option<String>,
    /// The alert hook (`alert:`).
    pub alert: Option<AlertConfig>,
    /// The daemon's section (`serve:`), parsed by `broker-serve`.
    pub serve: Option<ServeSettings>,
    /// The MCP server's section (`mcp:`), parsed by `broker-mcp`.
    pub mcp: Option<McpSettings>,
}

impl Config {
    /// Finds the config file by walking up from `start`.
    pub fn discover(start: &Path) -> Option<PathBuf> {
        start.ancestors().find_map(|dir| {
            CONFIG_FILE_NAMES
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
        })
    }

    /// Reads and validates `path` against the backends in `registry`.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config> {
        let text = crate::localfile::read_config_text(path, "config")?;
        Self::from_str(&text, path, registry)
    }

    /// Parses and validates config `text` as if read from `path`.
    pub fn from_str(text: &str, path: &Path, registry: &Registry) -> Result<Config> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str_with_options(text, options())
                .map_err(|e| yaml_error(&path, &e))?
        };
        let file: Arc<Path> = Arc::from(path.as_path());
        let source: Arc<str> = Arc::from(text);
        let at = |line: u64, col: u64| format!("{}:{line}:{col}", path.display());

        let mut backends = BTreeMap::new();
        for (name, line, col) in raw.backends.0 {
            if registry.by_name(&name).is_none() {
                let known: Vec<&str> = grammar::KNOWN.iter().map(|k| k.backend).collect();
                let compiled: Vec<&str> = registry.descriptors().map(|d| d.name).collect();
                let msg = if known.contains(&name.as_str()) {
                    format!("backend `{name}` is not compiled into this broker")
                } else {
                    let mut m = format!("unknown backend `{name}`");
                    if let Some(s) = grammar::did_you_mean(&name, known.iter().copied()) {
                        m.push_str(&format!("; did you mean `{s}`?"));
                    }
                    m
                };
                return Err(Error::invalid_config(msg)
                    .with_location(at(line, col))
                    .with_hint(format!("backends compiled in: {}", compiled.join(", "))));
            }
            let settings = BackendSettings {
                name: name.clone(),
                line,
                file: file.clone(),
                source: source.clone(),
            };
            backends.insert(name, settings);
        }

        let mut credentials: Vec<CredentialSpec> = Vec::new();
        for (name, line, col, raw) in raw.credentials.0 {
            let spec = validate_credential(name, line, col, raw, registry, &at)?;
            if let Some(other) = credentials.iter().find(|c| c.env_var == spec.env_var) {
                return Err(Error::invalid_config(format!(
                    "delivered as `{}`, which credential `{}` already uses",
                    spec.env_var, other.name
                ))
                .with_location(at(line, col))
                .with_credential(&spec.name)
                .with_hint("give one of them a different `as:`"));
            }
            credentials.push(spec);
        }

        match &raw.audit {
            Some(a) if a.enabled && a.path.is_none() => {
                return Err(Error::invalid_config("`audit` has no `path`")
                    .with_location(path.display().to_string())
                    .with_hint("give `audit.path`, or say `audit: { enabled: false }`"));
            }
            Some(a) if !a.enabled && a.path.is_some() => {
                return Err(Error::invalid_config(
                    "`audit` has a `path` but says `enabled: false`",
                )
                .with_location(path.display().to_string())
                .with_hint("remove one of them"));
            }
            _ => {}
        }
        Ok(Config {
            audit_disabled: raw.audit.as_ref().is_some_and(|a| !a.enabled),
            policy: raw
                .policy
                .map(|p| crate::provider::resolve_path(&base_dir, &p)),
            audit_fsync: raw.audit.as_ref().is_none_or(|a| a.fsync),
            audit_path: raw
                .audit
                .and_then(|a| a.path)
                .map(|p| crate::provider::resolve_path(&base_dir, &p)),
            tenant: raw.tenant,
            alert: raw.alert,
            serve: raw.serve.map(|s| ServeSettings {
                line: s.referenced.line(),
                file: file.clone(),
                source: source.clone(),
            }),
            mcp: raw.mcp.map(|s| McpSettings {
                line: s.referenced.line(),
                file: file.clone(),
                source: source.clone(),
            }),
            egress: raw.egress,
            credentials,
            backends,
            path,
            base_dir,
        })
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The directory relative paths are resolved against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }
    /// The credential named `name`.
    pub fn credential(&self, name: &str) -> Option<&CredentialSpec> {
        self.credentials.iter().find(|c| c.name == name)
    }
    /// The credential named `name`, or an error with a did-you-mean.
    pub fn require_credential(&self, name: &str) -> Result<&CredentialSpec> {
        self.credential(name).ok_or_else(|| {
            let mut msg = format!("no credential named `{name}` in {}", self.path.display());
            if let Some(s) =
                grammar::did_you_mean(name, self.credentials.iter().map(|c| c.name.as_str()))
            {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            let names: Vec<&str> = self.credentials.iter().map(|c| c.name.as_str()).collect();
            Error::invalid_config(msg)
                .with_hint(format!("declared credentials: {}", names.join(", ")))
        })
    }
}

fn options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.with_snippet = false;
    o
}

/// `path:line:col: message` from a YAML error.
fn yaml_error(path: &Path, e: &serde_saphyr::Error) -> Error {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let message = readable_yaml_message(message);
    let location = match e.location() {
        Some(l) => format!("{}:{}:{}", path.display(), l.line(), l.column()),
        None => path.display().to_string(),
    };
    Error::invalid_config(message).with_location(location)
}

/// Rewrites parser wording for people: `(expected one of a, b)`, `duplicate key `x``.
fn readable_yaml_message(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("duplicate key `{key}`");
    }
    if message == "expected mapping start" {
        return "expected a map (`key: value` lines)".to_string();
    }
    match message.split_once(", expected one of ") {
        Some((head, list)) if list.contains(", ") => format!("{head} (expected one of {list})"),
        Some((head, list)) => format!("{head} (expected `{list}`)"),
        None => message.to_string(),
    }
}

/// `ttl:` values: `90s`, `15m`, `1h30m`, `2d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "`{s}` is not a duration (use e.g. 90s, 15m, 1h30m)"
                ));
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{s}` is not a duration (a number must precede `{c}`)"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{s}` is too long"))?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!(
            "`{s}` is not a duration (missing unit after {number})"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// `15m` style text for a duration.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn default_env_var(name: &str) -> String {
    let mut v: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if v.starts_with(|c: char| c.is_ascii_digit()) {
        v.insert(0, '_');
    }
    v
}

fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_credential(
    name: String,
    line: u64,
    col: u64,
    raw: RawCredential,
    registry: &Registry,
    at: &dyn Fn(u64, u64) -> String,
) -> Result<CredentialSpec> {
    let here = at(line, col);
    let fail = |l: u64, c: u64, msg: String| {
        Error::invalid_config(msg)
            .with_location(at(l, c))
            .with_credential(&name)
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::invalid_config(format!(
            "credential name `{name}` must be letters, digits, `_` or `-`"
        ))
        .with_location(here));
    }
    let (text, source) = match (raw.reference, raw.mint) {
        (Some(r), None) => (r, Source::Resolve),
        (None, Some(m)) => (m, Source::Mint),
        (Some(_), Some(m)) => {
            return Err(fail(
                m.referenced.line(),
                m.referenced.column(),
                "give either `ref:` or `mint:`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(fail(
                line,
                col,
                "missing `ref:` (a stored secret) or `mint:` (a minted credential)".into(),
            ));
        }
    };
    let (rl, rc) = (text.referenced.line(), text.referenced.column());
    let reference: Reference = registry
        .parse(&text.value)
        .map_err(|e: Error| e.with_location(at(rl, rc)).with_credential(&name))?;
    let descriptor = registry.require_scheme(reference.scheme()).map_err(|e| {
        e.with_location(at(rl, rc))
            .with_credential(&name)
            .with_reference(&reference)
    })?;
    if let Some(g) = registry.grammar(reference.scheme()) {
        match (g.operation, source) {
            (Operation::Mint, Source::Resolve) => {
                return Err(fail(
                    rl,
                    rc,
                    format!(
                        "`{}` references mint credentials: write `mint:` instead of `ref:`",
                        g.scheme
                    ),
                ));
            }
            (Operation::Resolve, Source::Mint) => {
                return Err(fail(
                    rl,
                    rc,
                    format!(
                        "`{}` references are read, not minted: write `ref:` instead of `mint:`",
                        g.scheme
                    ),
                ));
            }
            _ => {}
        }
    }
    if source == Source::Mint && !descriptor.capabilities.mint {
        return Err(fail(
            rl,
            rc,
            format!("backend `{}` cannot mint", descriptor.name),
        ));
    }
    let env_var = match raw.env_var {
        Some(v) if !is_env_var_name(&v.value) => {
            return Err(fail(
                v.referenced.line(),
                v.referenced.column(),
                format!("`as: {}` is not a valid environment variable name", v.value),
            ));
        }
        Some(v) => v.value,
        None => default_env_var(&name),
    };
    let ttl = match raw.ttl {
        None => None,
        Some(t) if source == Source::Resolve => {
            return Err(fail(
                t.referenced.line(),
                t.referenced.column(),
                "`ttl:` applies to `mint:` credentials only".into(),
            ));
        }
        Some(t) => Some(
            parse_duration(&t.value)
                .map_err(|m| fail(t.referenced.line(), t.referenced.column(), m))?,
        ),
    };
    let scope = match raw.scope {
        None => None,
        Some(s) if source == Source::Resolve => {
            return Err(fail(
                s.referenced.line(),
                s.referenced.column(),
                "`scope:` applies to `mint:` credentials only".into(),
            ));
        }
        Some(s) => Some(s.value),
    };
    let mut options = BTreeMap::new();
    for (key, (kl, kc), value) in raw.options {
        if !descriptor.credential_options.contains(&key.as_str()) {
            let mut msg = format!("unknown key `{key}`");
            let candidates = CORE_KEYS
                .iter()
                .copied()
                .chain(descriptor.credential_options.iter().copied());
            if let Some(s) = grammar::did_you_mean(&key, candidates) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            let mut accepted: Vec<&str> = CORE_KEYS.to_vec();
            accepted.extend(descriptor.credential_options);
            return Err(
                fail(kl, kc, msg).with_hint(format!("accepted keys: {}", accepted.join(", ")))
            );
        }
        options.insert(key, value);
    }
    Ok(CredentialSpec {
        name,
        reference,
        source,
        env_var,
        kind: raw.kind.unwrap_or_default(),
        ttl,
        scope,
        options,
        tenant: raw.tenant,
        mcp: raw.mcp.unwrap_or_default(),
        proxy: raw.proxy,
        line,
    })
}

const CORE_KEYS: &[&str] = &[
    "ref", "mint", "as", "kind", "ttl", "scope", "tenant", "mcp", "proxy",
];

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    egress: EgressConfig,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    backends: BackendNames,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    audit: Option<AuditConfig>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    alert: Option<AlertConfig>,
    #[serde(default)]
    serve: Option<Spanned<IgnoredAny>>,
    #[serde(default)]
    mcp: Option<Spanned<IgnoredAny>>,
}

#[derive(Default)]
struct RawCredentials(Vec<(String, u64, u64, RawCredential)>);

#[derive(Default)]
struct BackendNames(Vec<(String, u64, u64)>);

#[derive(Default)]
struct RawCredential {
    reference: Option<Spanned<String>>,
    mint: Option<Spanned<String>>,
    env_var: Option<Spanned<String>>,
    kind: Option<DeliveryKind>,
    ttl: Option<Spanned<String>>,
    scope: Option<Spanned<Scope>>,
    tenant: Option<String>,
    mcp: Option<McpCredential>,
    proxy: Option<serde_json::Value>,
    options: Vec<(String, (u64, u64), serde_json::Value)>,
}

/// A map entry with the key's line and column.
type SpannedEntry<V> = (String, u64, u64, V);

/// A map visitor that keeps keys with their positions and rejects duplicate keys.
fn visit_spanned_map<'de, A, V>(
    mut map: A,
    mut value: impl FnMut(&mut A, &str, (u64, u64)) -> std::result::Result<V, A::Error>,
) -> std::result::Result<Vec<SpannedEntry<V>>, A::Error>
where
    A: MapAccess<'de>,
{
    let mut out: Vec<SpannedEntry<V>> = Vec::new();
    while let Some(key) = map.next_key::<Spanned<String>>()? {
        let (l, c) = (key.referenced.line(), key.referenced.column());
        if out.iter().any(|(k, ..)| *k == key.value) {
            return Err(de::Error::custom(format!(
                "duplicate key `{}` at line {l}, column {c}",
                key.value
            )));
        }
        let v = value(&mut map, &key.value, (l, c))?;
        out.push((key.value, l, c, v));
    }
    Ok(out)
}

struct CredentialsVisitor;

impl<'de> Visitor<'de> for CredentialsVisitor {
    type Value = RawCredentials;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of credential names to { ref | mint, as, kind, ttl, scope }")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(RawCredentials::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Self::Value, A::Error> {
        Ok(RawCredentials(visit_spanned_map(map, |m, _, _| {
            m.next_value::<RawCredential>()
        })?))
    }
}

impl<'de> Deserialize<'de> for RawCredentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(CredentialsVisitor)
    }
}

struct BackendNamesVisitor;

impl<'de> Visitor<'de> for BackendNamesVisitor {
    type Value = BackendNames;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of backend names to their settings")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(BackendNames::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Self::Value, A::Error> {
        let entries = visit_spanned_map(map, |m, _, _| m.next_value::<IgnoredAny>())?;
        Ok(BackendNames(
            entries.into_iter().map(|(k, l, c, _)| (k, l, c)).collect(),
        ))
    }
}

impl<'de> Deserialize<'de> for BackendNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(BackendNamesVisitor)
    }
}

impl<'de> Deserialize<'de> for RawCredential {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCredential;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a credential: { ref | mint, as, kind, ttl, scope }")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<RawCredential, A::Error> {
                let mut raw = RawCredential::default();
                visit_spanned_map(map, |m, key, position| {
                    match key {
                        "ref" => raw.reference = Some(m.next_value()?),
                        "mint" => raw.mint = Some(m.next_value()?),
                        "as" => raw.env_var = Some(m.next_value()?),
                        "kind" => raw.kind = Some(m.next_value()?),
                        "ttl" => {
                            let t = m.next_value::<Spanned<TtlText>>()?;
                            raw.ttl = Some(Spanned {
                                value: t.value.0,
                                referenced: t.referenced,
                                defined: t.defined,
                            });
                        }
                        "scope" => raw.scope = Some(m.next_value()?),
                        "tenant" => raw.tenant = Some(m.next_value()?),
                        "mcp" => raw.mcp = Some(m.next_value()?),
                        "proxy" => raw.proxy = Some(m.next_value()?),
                        other => {
                            let v: serde_json::Value = m.next_value()?;
                            raw.options.push((other.to_string(), position, v));
                        }
                    }
                    Ok(())
                })?;
                Ok(raw)
            }
        }
        d.deserialize_map(V)
    }
}

/// A TTL written as a string (`15m`) or a bare number of seconds.
struct TtlText(String);

impl<'de> Deserialize<'de> for TtlText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TtlText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 15m or 900")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<TtlText, E> {
                Ok(TtlText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<TtlText, E> {
                Ok(TtlText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<TtlText, E> {
                Ok(TtlText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Walks the root map to `backends.<name>` and deserializes only that node into `T`.
struct PickBackend<'a, T> {
    name: &'a str,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: de::DeserializeOwned> DeserializeSeed<'de> for PickBackend<'_, T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Option<T>, D::Error> {
        struct Root<'a, T>(&'a str, std::marker::PhantomData<T>);
        impl<'de, T: de::DeserializeOwned> Visitor<'de> for Root<'_, T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Option<T>, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "backends" {
                        found =
                            map.next_value_seed(Backends::<T>(self.0, std::marker::PhantomData))?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        struct Backends<'a, T>(&'a str, std::marker::PhantomData<T>);
        impl<'de, T: de::DeserializeOwned> DeserializeSeed<'de> for Backends<'_, T> {
            type Value = Option<T>;
            fn deserialize<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Option<T>, D::Error> {
                d.deserialize_map(self)
            }
        }
        impl<'de, T: de::DeserializeOwned> Visitor<'de> for Backends<'_, T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of backends")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Option<T>, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == self.0 {
                        found = Some(map.next_value::<T>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        d.deserialize_map(Root::<T>(self.name, std::marker::PhantomData))
    }
}
