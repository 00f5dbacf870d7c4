//! The HTTP API under `/v1/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Extension, Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker_core::audit::{Event, EventKind, Severity};
use broker_core::config::Scope;
use broker_core::policy::{Action, PolicyRequest};
use broker_core::{Broker, RequestContext, SecretValue, Source};
use serde::{Deserialize, Serialize};

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::state::{LeaseRecord, State};

/// Who is on the other end of a unix socket connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's uid.
    pub uid: u32,
    /// The peer's gid.
    pub gid: u32,
    /// The peer's pid, when the kernel reports it.
    pub pid: Option<i32>,
}

/// `POST /v1/credentials/{name}`'s body. Every field is optional; an empty body is `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// A narrower scope than the credential's configured `scope:` (`scope_too_wide` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeRequest>,
    /// A shorter lifetime than the credential's configured `ttl` (`"5m"` or seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<TtlValue>,
    /// The caller's task id (recorded in the audit log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Why the caller asks (accepted; not recorded yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A requested scope. An omitted list keeps the configured one; every action and resource
/// asked for must be covered by a configured one (equal, or matched by its `*` / `?`
/// wildcards; a wildcard asked for is covered only by a `*` that spans it). The configured
/// `conditions` always apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRequest {
    /// Actions (e.g. `s3:GetObject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// Resources (e.g. `arn:aws:s3:::bucket-a/reports/*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
}

/// A ttl as JSON: a duration string (`"90s"`, `"5m"`) or a number of seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TtlValue {
    /// Seconds.
    Seconds(u64),
    /// `90s`, `15m`, `1h30m`.
    Text(String),
}

/// `POST /v1/credentials/{name}`'s answer. Holds the value: no `Debug`.
#[derive(Deserialize)]
pub struct CredentialResponse {
    /// The value (for `kind: file`, the file's content).
    #[serde(deserialize_with = "secret")]
    pub value: SecretValue,
    /// Extra variables the backend delivers with it (the AWS key triple, say).
    #[serde(default, deserialize_with = "secrets")]
    pub companions: BTreeMap<String, SecretValue>,
    /// When it stops being valid (RFC 3339), if known.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The lease id, for minted credentials.
    #[serde(default)]
    pub lease_id: Option<String>,
    /// The request id (also in the audit log).
    pub request_id: String,
    /// For `kind: env`: only the companions are delivered, not `value` under the credential's
    /// variable (the value is still redacted).
    #[serde(default)]
    pub companions_only: bool,
    /// For `kind: file`: extra variables that also hold the file's path.
    #[serde(default)]
    pub path_vars: Vec<String>,
    /// Non-secret variables delivered alongside (`AWS_REGION`, say).
    #[serde(default)]
    pub plain_env: BTreeMap<String, String>,
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretValue, D::Error> {
    String::deserialize(d).map(SecretValue::from)
}

fn secrets<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SecretValue>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k, SecretValue::from(v)))
        .collect())
}

#[derive(Serialize)]
struct CredentialBody<'a> {
    value: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    companions: BTreeMap<&'a str, &'a str>,
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_id: Option<&'a str>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    companions_only: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    path_vars: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    plain_env: BTreeMap<&'a str, &'a str>,
}

#[derive(Clone)]
pub(crate) struct App {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: Arc<ServeConfig>,
    pub(crate) state: Arc<dyn State>,
    /// Per-agent in-flight caps (`serve.limits.concurrency`); agents come from the config.
    pub(crate) inflight: Arc<std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Semaphore>>>>,
}

/// The caller, verified.
enum Principal {
    Agent(String),
    AdminOnly,
}

pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/credentials/{name}", post(credential))
        .route("/v1/manifest", get(manifest))
        .route("/v1/leases", get(leases))
        .route("/v1/leases/{id}/revoke", post(revoke))
        .route("/v1/agents/{id}/block", post(block))
        .route("/v1/agents/{id}/unblock", post(unblock))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

impl App {
    fn event(&self, kind: EventKind, severity: Severity, ctx: &RequestContext) -> Event {
        let mut e = Event::new(kind, severity);
        e.agent_id = ctx.agent_id.clone();
        e.tenant = self.broker.config().tenant.clone();
        e.request_id = Some(ctx.request_id.clone());
        e.task_id = ctx.task_id.clone();
        e
    }

    /// Records a refusal the runtime layers never saw. A failure to record is logged: the
    /// request is refused either way.
    fn record_refusal(&self, ctx: &RequestContext, err: &ApiError, reason: String) {
        self.record_refusal_with(ctx, err, reason, |_| {});
    }

    /// [`record_refusal`](Self::record_refusal) with fields of the request the record names
    /// (`fill` sets them: the credential, a ttl, a scope, a lease id).
    fn record_refusal_with(
        &self,
        ctx: &RequestContext,
        err: &ApiError,
        reason: String,
        fill: impl FnOnce(&mut Event),
    ) {
        let mut e = self.event(EventKind::Decision, Severity::Warning, ctx);
        fill(&mut e);
        e.decision = Some("denied".into());
        e.outcome = Some(err.kind.to_string());
        e.error_kind = Some(err.kind.to_string());
        e.reason = Some(reason);
        if let Err(err) = self.broker.record(&e) {
            tracing::error!("cannot record a refusal in the audit log: {err}");
        }
    }

    fn principal(&self, peer: &Peer, ctx: &RequestContext) -> Result<Principal, ApiError> {
        if let Some(id) = self.config.agent_for(peer.uid, peer.gid) {
            return Ok(Principal::Agent(id.to_string()));
        }
        if self.config.is_admin(peer.uid) {
            return Ok(Principal::AdminOnly);
        }
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_peer",
            format!(
                "uid {} gid {} is not mapped to an agent in `serve.agents`",
                peer.uid, peer.gid
            ),
        );
        self.record_refusal(ctx, &err, describe(peer));
        Err(err)
    }

    async fn agent(&self, peer: &Peer, ctx: &mut RequestContext) -> Result<String, ApiError> {
        let id = match self.principal(peer, ctx)? {
            Principal::Agent(id) => id,
            Principal::AdminOnly => {
                let err = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "unknown_peer",
                    format!("uid {} is an admin, not an agent", peer.uid),
                );
                self.record_refusal(ctx, &err, describe(peer));
                return Err(err);
            }
        };
        ctx.agent_id = Some(id.clone());
        if self.state.is_blocked(&id).await? {
            let err = ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_blocked",
                format!("agent `{id}` is blocked"),
            );
            self.record_refusal(ctx, &err, describe(peer));
            return Err(err);
        }
        if let Some(wait) = self.state.check_rate(&id).await? {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("agent `{id}` is over its rate limit (`serve.limits`)"),
            )
            .with_retry_after(secs.max(1));
            self.record_refusal(ctx, &err, describe(peer));
            return Err(err);
        }
        Ok(id)
    }

    /// One of `agent`'s in-flight slots, or a refusal when all are taken.
    fn slot(
        &self,
        agent: &str,
        peer: &Peer,
        ctx: &RequestContext,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        let cap = self.config.limits.concurrency;
        if cap == 0 {
            return Ok(None);
        }
        let semaphore = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(cap as usize)))
            .clone();
        match semaphore.try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                let err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_in_flight",
                    format!("agent `{agent}` has {cap} requests in flight (`serve.limits`)"),
                )
                .with_retry_after(1);
                self.record_refusal(ctx, &err, describe(peer));
                Err(err)
            }
        }
    }
}

fn describe(peer: &Peer) -> String {
    match peer.pid {
        Some(pid) => format!("unix peer uid {} gid {} pid {pid}", peer.uid, peer.gid),
        None => format!("unix peer uid {} gid {}", peer.uid, peer.gid),
    }
}

/// The scope `want` asks for, if it only narrows `configured`.
fn narrow(name: &str, configured: Option<&Scope>, want: &ScopeRequest) -> Result<Scope, ApiError> {
    let too_wide = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "scope_too_wide", m);
    let Some(configured) = configured else {
        return Err(too_wide(format!(
            "`{name}` has no configured `scope:` for a request to narrow"
        )));
    };
    let pick = |what: &str, asked: &Option<Vec<String>>, allowed: &[String]| match asked {
        None => Ok(allowed.to_vec()),
        Some(list) if list.is_empty() => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("`scope.{what}` is empty; omit it to keep the configured ones"),
        )),
        Some(list) => match list
            .iter()
            .find(|a| !allowed.iter().any(|p| covers(p.as_bytes(), a.as_bytes())))
        {
            Some(wider) => Err(too_wide(format!(
                "`scope.{what}` asks for `{}`, which `{name}`'s configured scope does not cover",
                broker_core::grammar::elide(wider)
            ))),
            None => Ok(list.clone()),
        },
    };
    Ok(Scope {
        actions: pick("actions", &want.actions, &configured.actions)?,
        resources: pick("resources", &want.resources, &configured.resources)?,
        conditions: configured.conditions.clone(),
    })
}

/// Whether every string `asked` stands for (its `*` and `?` being wildcards) is matched by
/// `pattern`: literals match themselves, `?` one character that is not `*`, `*` anything
/// (wildcards included).
fn covers(pattern: &[u8], asked: &[u8]) -> bool {
    // Glob matching with backtracking to the last `*`.
    let (mut p, mut a) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while a < asked.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, a));
                p += 1;
                continue;
            }
            Some(b'?') if asked[a] != b'*' => {
                p += 1;
                a += 1;
                continue;
            }
            Some(c) if *c != b'?' && *c == asked[a] => {
                p += 1;
                a += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sa)) => {
                p = sp + 1;
                a = sa + 1;
                star = Some((sp, sa + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

fn parse_ttl(ttl: &TtlValue) -> Result<Duration, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", m);
    let d = match ttl {
        TtlValue::Seconds(s) => Duration::from_secs(*s),
        TtlValue::Text(t) => {
            broker_core::config::parse_duration(t).map_err(|e| bad(format!("`ttl`: {e}")))?
        }
    };
    if d.is_zero() {
        return Err(bad("`ttl` must be positive".into()));
    }
    Ok(d)
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, crate::BODY_LIMIT)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {} bytes", crate::BODY_LIMIT),
            )
        })
}

async fn credential(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let mut ctx = RequestContext::new();
    let agent = app.agent(&peer, &mut ctx).await?;
    let _slot = app.slot(&agent, &peer, &ctx)?;
    let bytes = read_body(body).await?;
    let req: CredentialRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        CredentialRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                format!("the body is not a credential request: {e}"),
            )
        })?
    };
    ctx.task_id = req.task_id.clone();
    let spec = app.broker.config().credential(&name).cloned();
    let requested_ttl = req.ttl.as_ref().map(parse_ttl).transpose()?;
    if let (Some(want), Some(spec)) = (requested_ttl, &spec)
        && let Some(max) = spec.ttl
        && want > max
    {
        let err = ApiError::new(
            StatusCode::BAD_REQUEST,
            "ttl_too_long",
            format!(
                "ttl {}s is longer than `{name}`'s configured {}s; a request may only shorten it",
                want.as_secs(),
                max.as_secs()
            ),
        );
        app.record_refusal_with(&ctx, &err, describe(&peer), |e| {
            e.credential = Some(name.clone());
            e.ttl = Some(want.as_secs());
        });
        return Err(err);
    }
    if let Some(want) = &req.scope {
        match narrow(&name, spec.as_ref().and_then(|s| s.scope.as_ref()), want) {
            Ok(scope) => ctx.scope = Some(scope),
            Err(err) => {
                app.record_refusal_with(&ctx, &err, describe(&peer), |e| {
                    e.credential = Some(name.clone());
                    e.scope = serde_json::to_value(want).ok();
                });
                return Err(err);
            }
        }
    }
    // Minting gets the shorter lifetime; a stored value's `expires_at` is capped below.
    ctx.ttl = requested_ttl;
    let credential = match app.broker.resolve(&name, &ctx).await {
        Ok(c) => c,
        // Undeclared names are refused (and recorded) by the runtime layers; say so plainly.
        Err(_) if spec.is_none() => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_credential",
                format!("no credential named `{name}`"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let not_text = |what: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_text",
            format!("{what} of `{name}` is not UTF-8 text"),
        )
    };
    let value = credential
        .value()
        .expose_str()
        .map_err(|_| not_text("the value"))?;
    let mut companions = BTreeMap::new();
    for (var, v) in credential.companions() {
        companions.insert(var.as_str(), v.expose_str().map_err(|_| not_text(var))?);
    }
    let lease = credential.lease();
    if let (Some(lease), Some(spec), Some(agent)) = (lease, &spec, &ctx.agent_id) {
        let backend = app.broker.registry().for_scheme(spec.reference.scheme());
        app.state
            .record_lease(LeaseRecord::new(
                lease.id.clone(),
                name.clone(),
                agent.clone(),
                backend.map_or("", |d| d.name).to_string(),
                lease.expires_at,
                backend.is_some_and(|d| d.capabilities.revoke),
            ))
            .await?;
    }
    let mut expires = lease.and_then(|l| l.expires_at).or_else(|| {
        spec.as_ref()
            .filter(|s| s.source == Source::Mint)
            .and_then(|s| s.ttl)
            .map(|t| SystemTime::now() + t)
    });
    if let Some(want) = requested_ttl {
        let cap = SystemTime::now() + want;
        expires = Some(expires.map_or(cap, |e| e.min(cap)));
    }
    let body = CredentialBody {
        value,
        companions,
        expires_at: expires.map(broker_core::audit::rfc3339),
        lease_id: lease.map(|l| l.id.as_str()),
        request_id: &ctx.request_id,
        companions_only: !credential.delivers_primary_env(),
        path_vars: credential.path_vars(),
        plain_env: credential
            .plain_env()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    };
    let bytes = serde_json::to_vec(&body).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode the answer",
        )
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

async fn manifest(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut ctx = RequestContext::new();
    let agent = match app.principal(&peer, &ctx)? {
        Principal::Agent(id) => {
            ctx.agent_id = Some(id.clone());
            if app.state.is_blocked(&id).await? {
                let err = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "agent_blocked",
                    format!("agent `{id}` is blocked"),
                );
                app.record_refusal(&ctx, &err, describe(&peer));
                return Err(err);
            }
            Some(id)
        }
        Principal::AdminOnly => None,
    };
    let manifest = app.broker.manifest()?;
    let config = app.broker.config();
    let tenant = config.tenant.clone().unwrap_or_default();
    let empty: &[String] = &[];
    let mut entries = Vec::new();
    for entry in manifest.entries {
        if let Some(agent) = &agent {
            let Some(spec) = config.credential(&entry.credential) else {
                continue;
            };
            let request = PolicyRequest {
                agent_id: Some(agent),
                agent_tenant: &tenant,
                action: match spec.source {
                    Source::Resolve => Action::Resolve,
                    Source::Mint => Action::Mint,
                },
                credential: &spec.name,
                declared: true,
                backend: entry.backend,
                badge: entry.badge.as_str(),
                credential_tenant: spec.tenant.as_deref().unwrap_or(&tenant),
                max_ttl: spec.ttl.map_or(0, |t| t.as_secs()),
                ttl_seconds: spec.ttl.map_or(0, |t| t.as_secs()),
                scope_actions: spec.scope.as_ref().map_or(empty, |s| &s.actions),
                scope_resources: spec.scope.as_ref().map_or(empty, |s| &s.resources),
                task_id: None,
                time: SystemTime::now(),
            };
            if !app.broker.policy().decide(&request)?.allowed || !entry.allowed {
                continue;
            }
        }
        entries.push(entry);
    }
    Ok(Json(serde_json::json!({ "entries": entries })))
}

async fn block(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_blocked(app, peer, id, true).await
}

async fn unblock(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_blocked(app, peer, id, false).await
}

async fn set_blocked(
    app: App,
    peer: Peer,
    id: String,
    blocked: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut ctx = RequestContext::new();
    if let Some(agent) = app.config.agent_for(peer.uid, peer.gid) {
        ctx.agent_id = Some(agent.to_string());
    }
    if !app.config.is_admin(peer.uid) {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "not_admin",
            format!("uid {} is not in `serve.admins`", peer.uid),
        );
        app.record_refusal(&ctx, &err, describe(&peer));
        return Err(err);
    }
    let agent = broker_core::policy::normalize_agent_id(&id)
        .ok()
        .flatten()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "not an agent id",
            )
        })?;
    let changed = if blocked {
        app.state.block(&agent).await?
    } else {
        app.state.unblock(&agent).await?
    };
    // A blocked agent loses every live lease: revoked where the backend can, else marked.
    let mut revoked = Vec::new();
    let mut marked = Vec::new();
    let mut failed = Vec::new();
    if blocked {
        for lease in app.state.leases(Some(&agent)).await? {
            if lease.revoked {
                continue;
            }
            match revoke_lease(&app, &lease, &ctx).await {
                Ok(true) => revoked.push(lease.lease_id),
                Ok(false) => marked.push(serde_json::json!({
                    "lease_id": lease.lease_id, "expires_at": lease.expires_at
                })),
                Err(e) => failed.push(serde_json::json!({
                    "lease_id": lease.lease_id, "kind": e.kind
                })),
            }
        }
    }
    let mut e = app.event(EventKind::Notice, Severity::Warning, &ctx);
    e.outcome = Some(
        if blocked {
            "agent_blocked"
        } else {
            "agent_unblocked"
        }
        .into(),
    );
    e.reason = Some(format!("agent `{agent}` by admin {}", describe(&peer)));
    app.broker.record(&e)?;
    tracing::info!(agent = %agent, blocked, "agent block state changed");
    let mut body = serde_json::json!({ "agent": agent, "blocked": blocked, "changed": changed });
    if blocked {
        body["revoked"] = revoked.into();
        body["marked"] = marked.into();
        body["failed"] = failed.into();
    }
    Ok(Json(body))
}

/// Revokes `lease` through the broker's revoke path (policy, retry, audit) where its backend
/// can revoke singly, and marks it revoked either way; `true` if the backend revoked it.
/// A lease that is only marked stays valid at the backend until it expires; it is no longer
/// served from the cache.
async fn revoke_lease(
    app: &App,
    lease: &LeaseRecord,
    ctx: &RequestContext,
) -> Result<bool, ApiError> {
    if lease.revocable {
        app.broker
            .revoke_as(&lease.lease_id, Some(&lease.backend), ctx)
            .await?;
    } else {
        app.broker.cache().evict_lease(&lease.lease_id);
        let mut e = app.event(EventKind::Revocation, Severity::Warning, ctx);
        e.lease_id = Some(lease.lease_id.clone());
        e.backend = Some(lease.backend.clone());
        e.credential = Some(lease.credential.clone());
        e.outcome = Some("marked_revoked".into());
        e.expiry = lease.expires_at.clone();
        e.reason = Some(format!(
            "`{}` cannot revoke a lease singly; it stays valid until it expires",
            lease.backend
        ));
        app.broker.record(&e)?;
    }
    app.state.mark_revoked(&lease.lease_id).await?;
    Ok(lease.revocable)
}

/// Who may see and revoke which leases: an admin all, an agent its own.
async fn lease_caller(
    app: &App,
    peer: &Peer,
    ctx: &mut RequestContext,
) -> Result<Option<String>, ApiError> {
    if app.config.is_admin(peer.uid) {
        ctx.agent_id = app.config.agent_for(peer.uid, peer.gid).map(str::to_string);
        return Ok(None);
    }
    app.agent(peer, ctx).await.map(Some)
}

async fn leases(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut ctx = RequestContext::new();
    let agent = lease_caller(&app, &peer, &mut ctx).await?;
    let leases = app.state.leases(agent.as_deref()).await?;
    Ok(Json(serde_json::json!({ "leases": leases })))
}

async fn revoke(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut ctx = RequestContext::new();
    let agent = lease_caller(&app, &peer, &mut ctx).await?;
    let lease = app.state.lease(&id).await?;
    let Some(lease) = lease.filter(|l| agent.as_ref().is_none_or(|a| *a == l.agent)) else {
        // Someone else's lease looks like no lease at all.
        let err = ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_lease",
            "no live lease with this id issued to the caller",
        );
        app.record_refusal_with(&ctx, &err, describe(&peer), |e| {
            e.action = Some("revoke".into());
            e.lease_id = Some(id.clone());
        });
        return Err(err);
    };
    if lease.revoked {
        return Ok(Json(serde_json::json!({
            "lease_id": lease.lease_id,
            "outcome": "already_revoked",
            "expires_at": lease.expires_at,
        })));
    }
    let revoked = revoke_lease(&app, &lease, &ctx).await?;
    Ok(Json(serde_json::json!({
        "lease_id": lease.lease_id,
        "outcome": if revoked { "revoked" } else { "marked" },
        "expires_at": lease.expires_at,
    })))
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_pattern_covers_only_what_it_matches() {
        let yes = [
            ("s3:GetObject", "s3:GetObject"),
            ("s3:*", "s3:GetObject"),
            ("s3:Get*", "s3:Get*"),
            ("arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-a/reports/*"),
            ("arn:aws:s3:::bucket-?/x", "arn:aws:s3:::bucket-a/x"),
            ("a?c", "a?c"),
            ("*", "*"),
        ];
        for (p, a) in yes {
            assert!(covers(p.as_bytes(), a.as_bytes()), "{p} should cover {a}");
        }
        let no = [
            ("s3:GetObject", "s3:*"),
            ("s3:Get*", "s3:*"),
            ("s3:GetObject", "s3:GetObjectAcl"),
            ("arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-b/x"),
            ("arn:aws:s3:::bucket-a/*", "arn:aws:s3:::bucket-a*"),
            ("a?", "a*"),
            ("a*b", "a*"),
            ("", "x"),
        ];
        for (p, a) in no {
            assert!(
                !covers(p.as_bytes(), a.as_bytes()),
                "{p} should not cover {a}"
            );
        }
    }
}
