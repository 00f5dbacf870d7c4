//! The HTTP API under `/v1/`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Extension, Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
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
use crate::identity::{Peer, Principal};
use crate::metrics::Metrics;
use crate::state::{LeaseRecord, State};

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

/// What a reload replaces: the broker (config, policy, backends, lease cache) and the
/// `serve:` settings.
pub(crate) struct Live {
    pub(crate) broker: Arc<Broker>,
    pub(crate) config: Arc<ServeConfig>,
}

/// The daemon's request-handling state, shared by every connection.
#[derive(Clone)]
pub(crate) struct App {
    live: Arc<std::sync::RwLock<Arc<Live>>>,
    pub(crate) state: Arc<dyn State>,
    /// Per-agent in-flight caps (`serve.limits.concurrency`).
    inflight: Arc<std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Semaphore>>>>,
    /// Recent refusals per agent (or peer), for the denial-storm alert.
    denials:
        Arc<std::sync::Mutex<BTreeMap<String, std::collections::VecDeque<std::time::Instant>>>>,
    pub(crate) metrics: Arc<Metrics>,
    /// The egress proxies run for agents' `broker run --from` (placeholder mode).
    pub(crate) proxies: Arc<crate::proxy::ProxySessions>,
}

/// An in-flight slot: this process's, and the fleet's when the state is shared (given back
/// on drop).
struct InFlight {
    _local: Option<tokio::sync::OwnedSemaphorePermit>,
    fleet: Option<(Arc<dyn State>, String, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((state, agent, id)) = self.fleet.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move { state.give_slot(&agent, &id).await });
        }
    }
}

/// One request's view: the live broker and settings, the verified caller and its context.
pub(crate) struct Call {
    pub(crate) live: Arc<Live>,
    pub(crate) principal: Principal,
    pub(crate) ctx: RequestContext,
    /// Whom refusals are counted against (denial storms): the agent id, else the peer (a
    /// unix uid, an IP address).
    who: String,
}

pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/credentials/{name}", post(credential))
        .route("/v1/manifest", get(manifest))
        .route("/v1/proxy", post(crate::proxy::start))
        .route("/v1/proxy/{id}", axum::routing::delete(crate::proxy::stop))
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
    pub(crate) fn new(broker: Broker, config: ServeConfig, state: Arc<dyn State>) -> App {
        App {
            live: Arc::new(std::sync::RwLock::new(Arc::new(Live {
                broker: Arc::new(broker),
                config: Arc::new(config),
            }))),
            state,
            inflight: Arc::default(),
            denials: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            proxies: Arc::default(),
        }
    }

    /// The broker and settings in force now (a reload swaps them; a request keeps the ones it
    /// started with).
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What evicts a lease revoked anywhere in the fleet from the cache of the broker in force
    /// (holding the settings weakly: the store that calls it belongs to this app).
    #[cfg(feature = "redis")]
    pub(crate) fn evictor(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let live = Arc::downgrade(&self.live);
        move |lease_id| {
            if let Some(live) = live.upgrade() {
                let live = live.read().unwrap_or_else(|p| p.into_inner()).clone();
                live.broker.cache().evict_lease(lease_id);
            }
        }
    }

    /// Puts a reloaded broker and settings in force.
    pub(crate) fn replace(&self, live: Live) {
        // A reloaded broker's cache is shared with the other replicas as the old one was.
        live.broker.cache().set_shared(self.state.shared_leases());
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        // Proxies were started under the old config: its credentials may be gone.
        self.proxies.clear();
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Records the lease of `credential` (issued to `agent`), if it has one, so that a block
    /// or a revocation through the daemon reaches it; returns the record.
    pub(crate) async fn record_issued(
        &self,
        live: &Live,
        spec: &broker_core::CredentialSpec,
        credential: &broker_core::Credential,
        agent: &str,
    ) -> Result<Option<LeaseRecord>, ApiError> {
        let Some(lease) = credential.lease() else {
            return Ok(None);
        };
        let backend = live.broker.registry().for_scheme(spec.reference.scheme());
        let record = LeaseRecord::new(
            lease.id.clone(),
            spec.name.clone(),
            agent.to_string(),
            backend.map_or("", |d| d.name).to_string(),
            lease.expires_at,
            backend.is_some_and(|d| d.capabilities.revoke),
        );
        self.state.record_lease(record.clone()).await?;
        Ok(Some(record))
    }

    /// After a credential was obtained for `agent`: refused (and its lease revoked, or marked)
    /// when the agent was blocked meanwhile — a request can wait long on a mint, on another
    /// replica's lock — or when that cannot be told.
    pub(crate) async fn still_allowed(
        &self,
        live: &Live,
        agent: &str,
        issued: Option<&LeaseRecord>,
        ctx: &RequestContext,
    ) -> Result<(), ApiError> {
        let refusal = match self.state.is_blocked(agent).await {
            Ok(false) => return Ok(()),
            Ok(true) => ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_blocked",
                format!("agent `{agent}` is blocked"),
            ),
            Err(e) => e.into(),
        };
        if let Some(record) = issued
            && let Err(e) = revoke_lease(self, live, record, ctx).await
        {
            tracing::error!(lease = %record.lease_id, "a lease issued to a blocked agent was not revoked: {}", e.message);
        }
        Err(refusal)
    }

    /// Verifies who is calling; a refusal is recorded (and counted toward a denial storm).
    pub(crate) async fn call(&self, peer: &Peer, headers: &HeaderMap) -> Result<Call, ApiError> {
        let live = self.live();
        let mut ctx = RequestContext::new();
        ctx.identity = Some(peer.describe());
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match crate::identity::verify(&live.config, peer, authorization).await {
            Ok(principal) => {
                ctx.agent_id = principal.agent.clone();
                ctx.tenant = principal.tenant.clone();
                ctx.identity_method = Some(principal.method.as_str().to_string());
                ctx.attributes = principal.attributes.clone();
                ctx.identity = Some(principal.identity.clone());
                Ok(Call {
                    who: principal.agent.clone().unwrap_or_else(|| peer.cap_key()),
                    live,
                    principal,
                    ctx,
                })
            }
            Err(err) => {
                self.refuse(&live, &ctx, &peer.cap_key(), &err, |_| {})
                    .await;
                Err(err)
            }
        }
    }

    /// [`App::call`] for an agent: refused when the caller is not one, is blocked or is over
    /// its rate limit.
    pub(crate) async fn agent_call(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
    ) -> Result<(Call, String), ApiError> {
        let call = self.call(peer, headers).await?;
        self.as_agent(call).await
    }

    /// The agent checks of [`App::agent_call`] on a verified caller.
    async fn as_agent(&self, call: Call) -> Result<(Call, String), ApiError> {
        self.admit(call, 0).await.map(|(call, id, _)| (call, id))
    }

    /// The agent checks, and with `cap` (not 0) one of the agent's fleet-wide in-flight slots
    /// taken in the same store round trip (`None`: the state does not count them).
    async fn admit(
        &self,
        call: Call,
        cap: u32,
    ) -> Result<(Call, String, Option<Option<String>>), ApiError> {
        let Some(id) = call.principal.agent.clone() else {
            let err = ApiError::new(
                StatusCode::FORBIDDEN,
                "unknown_peer",
                "the caller is an admin, not an agent",
            );
            self.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
                .await;
            return Err(err);
        };
        let blocked = match self.state.is_blocked(&id).await {
            Ok(b) => b,
            Err(e) => return Err(self.store_failed(&call, e).await),
        };
        if blocked {
            let err = ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_blocked",
                format!("agent `{id}` is blocked"),
            );
            self.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
                .await;
            return Err(err);
        }
        let (wait, fleet) = match self.state.admit(&id, cap).await {
            Ok(w) => w,
            Err(e) => return Err(self.store_failed(&call, e).await),
        };
        if let Some(wait) = wait {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("agent `{id}` is over its rate limit (`serve.limits`)"),
            )
            .with_retry_after(secs.max(1));
            self.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
                .await;
            return Err(err);
        }
        Ok((call, id, fleet))
    }

    /// A request refused because the state store (a shared store out of reach) could not
    /// answer whether the agent is blocked or within its limits: fail closed with
    /// `store_unavailable` (503), recorded. The alert is raised once per outage by the store's
    /// health watcher.
    async fn store_failed(&self, call: &Call, e: broker_core::Error) -> ApiError {
        tracing::warn!("refusing a request: the state store failed: {e}");
        let err = store_unavailable();
        self.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
            .await;
        err
    }

    /// Records a refusal the runtime layers never saw (`fill` sets the fields of the request
    /// it names: the credential, a ttl, a scope, a lease id) and counts it toward a denial
    /// storm. A failure to record is logged: the request is refused either way.
    pub(crate) async fn refuse(
        &self,
        live: &Live,
        ctx: &RequestContext,
        who: &str,
        err: &ApiError,
        fill: impl FnOnce(&mut Event),
    ) {
        let mut e = live
            .broker
            .context_event(EventKind::Decision, Severity::Warning, ctx);
        fill(&mut e);
        e.decision = Some("denied".into());
        e.outcome = Some(err.kind.to_string());
        e.error_kind = Some(err.kind.to_string());
        e.reason = Some(err.message.clone());
        if let Err(err) = live.broker.record_async(&e).await {
            tracing::error!("cannot record a refusal in the audit log: {err}");
        }
        self.denied(live, ctx, who, err).await;
    }

    /// Counts a refusal of the caller in `ctx`; the `serve.denials.threshold`th within the
    /// window raises an alert (then the count starts over).
    async fn denied(&self, live: &Live, ctx: &RequestContext, who: &str, err: &ApiError) {
        self.metrics.refused(err.kind);
        let threshold = live.config.denial_threshold as usize;
        if threshold == 0 || err.status == StatusCode::TOO_MANY_REQUESTS {
            return;
        }
        let now = std::time::Instant::now();
        let storm = {
            let mut denials = self.denials.lock().unwrap_or_else(|p| p.into_inner());
            let recent = denials.entry(who.to_string()).or_default();
            recent.push_back(now);
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > live.config.denial_window)
            {
                recent.pop_front();
            }
            let storm = recent.len() >= threshold;
            if storm {
                recent.clear();
            }
            // Callers quiet for a whole window are forgotten; the map stays bounded by the
            // callers of the last window.
            if denials.len() > 1_000 {
                let window = live.config.denial_window;
                denials.retain(|_, r| r.back().is_some_and(|t| now.duration_since(*t) <= window));
            }
            storm
        };
        if storm {
            self.metrics.alert();
            let mut e = live
                .broker
                .context_event(EventKind::Failure, Severity::Alert, ctx);
            e.outcome = Some("denial_storm".into());
            e.reason = Some(format!(
                "{threshold} refusals of `{}` within {}s (the last: {})",
                broker_core::grammar::elide(who),
                live.config.denial_window.as_secs(),
                err.kind
            ));
            tracing::warn!(caller = %who, "denial storm: alert raised");
            live.broker.alert(&e).await;
        }
    }

    /// One of `agent`'s in-flight slots in this process, with the fleet-wide one `fleet`
    /// ([`App::admit`] took it, or found them all taken), or a refusal when all are taken.
    async fn slot(
        &self,
        call: &Call,
        agent: &str,
        fleet: Option<Option<String>>,
    ) -> Result<Option<InFlight>, ApiError> {
        let cap = call.live.config.limits.concurrency;
        if cap == 0 {
            return Ok(None);
        }
        let fleet = match fleet {
            None => None,
            Some(Some(id)) => Some((self.state.clone(), agent.to_string(), id)),
            Some(None) => return Err(self.too_many_in_flight(call, agent, cap).await),
        };
        // Given back on drop, also when the local cap refuses below.
        let mut held = InFlight {
            _local: None,
            fleet,
        };
        held._local = Some(self.local_slot(call, agent, cap).await?);
        Ok(Some(held))
    }

    async fn too_many_in_flight(&self, call: &Call, agent: &str, cap: u32) -> ApiError {
        let err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_in_flight",
            format!("agent `{agent}` has {cap} requests in flight (`serve.limits`)"),
        )
        .with_retry_after(1);
        self.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
            .await;
        err
    }

    /// One of `agent`'s in-flight slots in this process.
    async fn local_slot(
        &self,
        call: &Call,
        agent: &str,
        cap: u32,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let semaphore = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(cap as usize)))
            .clone();
        match semaphore.try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => Err(self.too_many_in_flight(call, agent, cap).await),
        }
    }
}

/// The refusal of anything that depends on an unreachable shared store.
pub(crate) fn store_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the shared store (serve.store) is unavailable; refusing what depends on it",
    )
    .with_retry_after(1)
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
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let call = app.call(&peer, &headers).await?;
    let cap = call.live.config.limits.concurrency;
    let (call, agent, fleet) = app.admit(call, cap).await?;
    let _slot = app.slot(&call, &agent, fleet).await?;
    let Call {
        live, mut ctx, who, ..
    } = call;
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
    ctx.purpose = req.reason.clone();
    let spec = live.broker.config().credential(&name).cloned();
    // A placeholder-mode credential's value stays in the daemon (issue 13): never returned.
    if spec.as_ref().is_some_and(|s| s.proxy.is_some()) {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "proxy_only",
            format!("`{name}` is delivered only as a placeholder through the egress proxy"),
        );
        app.refuse(&live, &ctx, &who, &err, |e| {
            e.credential = Some(name.clone())
        })
        .await;
        return Err(err);
    }
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
        app.refuse(&live, &ctx, &who, &err, |e| {
            e.credential = Some(name.clone());
            e.ttl = Some(want.as_secs());
        })
        .await;
        return Err(err);
    }
    if let Some(want) = &req.scope {
        match narrow(&name, spec.as_ref().and_then(|s| s.scope.as_ref()), want) {
            Ok(scope) => ctx.scope = Some(scope),
            Err(err) => {
                app.refuse(&live, &ctx, &who, &err, |e| {
                    e.credential = Some(name.clone());
                    e.scope = serde_json::to_value(want).ok();
                })
                .await;
                return Err(err);
            }
        }
    }
    // Minting gets the shorter lifetime; a stored value's `expires_at` is capped below.
    ctx.ttl = requested_ttl;
    let credential = match live.broker.resolve(&name, &ctx).await {
        Ok(c) => c,
        Err(e) => {
            // Undeclared names are refused (and recorded) by the runtime layers; say so plainly.
            let err = if spec.is_none() {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_credential",
                    format!("no credential named `{name}`"),
                )
            } else {
                e.into()
            };
            if err.status.is_client_error() {
                app.denied(&live, &ctx, &who, &err).await;
            }
            return Err(err);
        }
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
    if let (Some(spec), Some(agent)) = (&spec, &ctx.agent_id) {
        let issued = app.record_issued(&live, spec, &credential, agent).await?;
        if let Err(err) = app.still_allowed(&live, agent, issued.as_ref(), &ctx).await {
            app.refuse(&live, &ctx, &who, &err, |e| {
                e.credential = Some(name.clone())
            })
            .await;
            return Err(err);
        }
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
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let call = app.call(&peer, &headers).await?;
    let agent = match &call.principal.agent {
        Some(id) => {
            let blocked = match app.state.is_blocked(id).await {
                Ok(b) => b,
                Err(e) => return Err(app.store_failed(&call, e).await),
            };
            if blocked {
                let err = ApiError::new(
                    StatusCode::FORBIDDEN,
                    "agent_blocked",
                    format!("agent `{id}` is blocked"),
                );
                app.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
                    .await;
                return Err(err);
            }
            Some(id.clone())
        }
        None => None,
    };
    let broker = &call.live.broker;
    let manifest = broker.manifest()?;
    let config = broker.config();
    let config_tenant = config.tenant.clone().unwrap_or_default();
    let tenant = call
        .principal
        .tenant
        .clone()
        .unwrap_or_else(|| config_tenant.clone());
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
                agent_identity: call.principal.method.as_str(),
                agent_attributes: &call.principal.attributes,
                action: match spec.source {
                    Source::Resolve => Action::Resolve,
                    Source::Mint => Action::Mint,
                },
                credential: &spec.name,
                declared: true,
                backend: entry.backend,
                badge: entry.badge.as_str(),
                credential_tenant: spec.tenant.as_deref().unwrap_or(&config_tenant),
                max_ttl: spec.ttl.map_or(0, |t| t.as_secs()),
                ttl_seconds: spec.ttl.map_or(0, |t| t.as_secs()),
                scope_actions: spec.scope.as_ref().map_or(empty, |s| &s.actions),
                scope_resources: spec.scope.as_ref().map_or(empty, |s| &s.resources),
                task_id: None,
                time: SystemTime::now(),
            };
            if !broker.policy().decide(&request)?.allowed || !entry.allowed {
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_blocked(app, peer, headers, id, true).await
}

async fn unblock(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    set_blocked(app, peer, headers, id, false).await
}

/// [`App::call`] for an admin: refused when the caller is not one.
async fn admin_call(app: &App, peer: &Peer, headers: &HeaderMap) -> Result<Call, ApiError> {
    let call = app.call(peer, headers).await?;
    if !call.principal.admin {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "not_admin",
            "the caller is not in `serve.admins`",
        );
        app.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
            .await;
        return Err(err);
    }
    Ok(call)
}

async fn set_blocked(
    app: App,
    peer: Peer,
    headers: HeaderMap,
    id: String,
    blocked: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let call = admin_call(&app, &peer, &headers).await?;
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
    // A block that cannot be persisted still holds here (and its leases are revoked below);
    // the answer and the audit record say it would not survive a restart.
    let mut persisted = true;
    let changed = if blocked {
        match app.state.block(&agent).await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!(agent = %agent, "the block holds but cannot be persisted: {e}");
                persisted = false;
                true
            }
        }
    } else {
        match app.state.unblock(&agent).await {
            Ok(changed) => changed,
            Err(e) => {
                // The block stays (fail closed); the refusal is recorded.
                let err = ApiError::from(e);
                app.refuse(&call.live, &call.ctx, &call.who, &err, |_| {})
                    .await;
                return Err(err);
            }
        }
    };
    if blocked {
        app.proxies.stop_agent(&agent);
    }
    // A blocked agent loses every live lease: revoked where the backend can, else marked.
    let mut revoked = Vec::new();
    let mut marked = Vec::new();
    let mut failed = Vec::new();
    if blocked {
        // A store out of reach cannot list them: the block still holds (and is refused
        // nowhere), the answer says it was not persisted and nothing was revoked.
        let leases = match app.state.leases(Some(&agent)).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::error!(agent = %agent, "cannot list the blocked agent's leases: {e}");
                persisted = false;
                Vec::new()
            }
        };
        for lease in leases {
            if lease.revoked {
                continue;
            }
            match revoke_lease(&app, &call.live, &lease, &call.ctx).await {
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
    let mut e = call
        .live
        .broker
        .context_event(EventKind::Notice, Severity::Warning, &call.ctx);
    e.outcome = Some(
        if blocked {
            "agent_blocked"
        } else {
            "agent_unblocked"
        }
        .into(),
    );
    e.reason = Some(format!(
        "agent `{agent}` by admin {}{}",
        call.principal.identity,
        if persisted {
            ""
        } else {
            " (not persisted: lost on a restart)"
        }
    ));
    call.live.broker.record_async(&e).await?;
    tracing::info!(agent = %agent, blocked, "agent block state changed");
    let mut body = serde_json::json!({
        "agent": agent, "blocked": blocked, "changed": changed, "persisted": persisted
    });
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
pub(crate) async fn revoke_lease(
    app: &App,
    live: &Live,
    lease: &LeaseRecord,
    ctx: &RequestContext,
) -> Result<bool, ApiError> {
    if lease.revocable {
        live.broker
            .revoke_as(&lease.lease_id, Some(&lease.backend), ctx)
            .await?;
    } else {
        live.broker.cache().evict_lease(&lease.lease_id);
        let mut e = live
            .broker
            .context_event(EventKind::Revocation, Severity::Warning, ctx);
        e.lease_id = Some(lease.lease_id.clone());
        e.backend = Some(lease.backend.clone());
        e.credential = Some(lease.credential.clone());
        e.outcome = Some("marked_revoked".into());
        e.expiry = lease.expires_at.clone();
        e.reason = Some(format!(
            "`{}` cannot revoke a lease singly; it stays valid until it expires",
            lease.backend
        ));
        live.broker.record_async(&e).await?;
    }
    app.state.mark_revoked(&lease.lease_id).await?;
    Ok(lease.revocable)
}

/// Who may see and revoke which leases: an admin all (`None`), an agent its own.
async fn lease_caller(
    app: &App,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<(Call, Option<String>), ApiError> {
    let call = app.call(peer, headers).await?;
    if call.principal.admin {
        return Ok((call, None));
    }
    let (call, agent) = app.as_agent(call).await?;
    Ok((call, Some(agent)))
}

async fn leases(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_call, agent) = lease_caller(&app, &peer, &headers).await?;
    let leases = app.state.leases(agent.as_deref()).await?;
    Ok(Json(serde_json::json!({ "leases": leases })))
}

async fn revoke(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (call, agent) = lease_caller(&app, &peer, &headers).await?;
    let lease = app.state.lease(&id).await?;
    let Some(lease) = lease.filter(|l| agent.as_ref().is_none_or(|a| *a == l.agent)) else {
        // Someone else's lease looks like no lease at all.
        let err = ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_lease",
            "no live lease with this id issued to the caller",
        );
        app.refuse(&call.live, &call.ctx, &call.who, &err, |e| {
            e.action = Some("revoke".into());
            e.lease_id = Some(id.clone());
        })
        .await;
        return Err(err);
    };
    if lease.revoked {
        return Ok(Json(serde_json::json!({
            "lease_id": lease.lease_id,
            "outcome": "already_revoked",
            "expires_at": lease.expires_at,
        })));
    }
    let revoked = revoke_lease(&app, &call.live, &lease, &call.ctx).await?;
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
