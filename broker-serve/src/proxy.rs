//! Placeholder mode in the daemon (`broker run --from`, docs/proxy.md): a `proxy:`
//! credential's value never leaves the daemon. `POST /v1/proxy` starts an egress proxy in
//! the daemon for one run of the calling agent, with the values resolved here (through
//! policy, the egress gate and the audit log, as `/v1/credentials` does) and the daemon's
//! `egress.proxy` policy; the agent gets the proxy's URL (with the run's token), the run's CA
//! and one placeholder per credential. `DELETE /v1/proxy/{id}` ends it; so do its lifetime,
//! a block of the agent, a reload and the daemon's shutdown.
//!
//! The proxy listens on the daemon's loopback, so it serves agents on the daemon's host
//! (the unix-socket listener); an agent elsewhere would need a proxy on its own network.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Extension, Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use broker_core::audit::{EventKind, Severity};
use broker_core::retry::AlertCommand;
use broker_proxy::{EgressPolicy, LogAudit, ProxiedCredential, Proxy, ProxyOptions, Rules};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::api::App;
use crate::error::ApiError;
use crate::identity::Peer;
use crate::state::State;

/// How long a proxy lives when the request names no `ttl`, and the longest it may.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a request may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(12 * 3600);
/// Proxies one agent may have at once.
pub const MAX_PER_AGENT: usize = 8;

/// `POST /v1/proxy`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRequest {
    /// The `proxy:` credentials the run uses.
    pub credentials: Vec<String>,
    /// The task, for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Why, for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the proxy lives (`30m`, `2h`; default 1 h, at most 12 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// One credential's placeholder.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PlaceholderGrant {
    /// The credential.
    pub credential: String,
    /// What the run gets instead of its value.
    pub placeholder: String,
}

/// The answer to `POST /v1/proxy`. The URL carries the run's proxy token: treat it like a
/// session cookie (it is worthless away from this daemon's host and after the run).
#[derive(Deserialize, Serialize)]
pub struct ProxyGrant {
    /// The proxy's id, for `DELETE /v1/proxy/{id}`.
    pub id: String,
    /// `http://broker:TOKEN@127.0.0.1:PORT` (wiped on drop).
    pub url: String,
    /// The run's CA certificate (PEM).
    pub ca_pem: String,
    /// One per credential, in the order asked.
    pub placeholders: Vec<PlaceholderGrant>,
    /// When the proxy stops (RFC 3339).
    pub expires_at: String,
}

impl Drop for ProxyGrant {
    fn drop(&mut self) {
        self.url.zeroize();
    }
}

impl std::fmt::Debug for ProxyGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyGrant")
            .field("id", &self.id)
            .field("placeholders", &self.placeholders)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

struct Running {
    agent: String,
    expires: Instant,
    _proxy: Proxy,
}

/// The proxies the daemon runs for agents.
#[derive(Default)]
pub(crate) struct ProxySessions {
    running: Mutex<HashMap<String, Running>>,
}

impl ProxySessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the proxies past their lifetime, and those of agents blocked (on any replica:
    /// `state` knows) or whose block status cannot be read (fail closed).
    pub(crate) async fn sweep(&self, state: &dyn State) {
        let now = Instant::now();
        let agents: BTreeSet<String> = {
            let mut running = self.lock();
            running.retain(|_, r| r.expires > now);
            running.values().map(|r| r.agent.clone()).collect()
        };
        for agent in agents {
            if !matches!(state.is_blocked(&agent).await, Ok(false)) {
                self.stop_agent(&agent);
            }
        }
    }

    /// Stops every proxy of `agent` (blocked).
    pub(crate) fn stop_agent(&self, agent: &str) {
        self.lock().retain(|_, r| r.agent != agent);
    }

    /// Stops every proxy (reload, shutdown).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    fn count(&self, agent: &str) -> usize {
        self.lock().values().filter(|r| r.agent == agent).count()
    }
}

/// The daemon's answer to "may this agent's proxy still use its credentials?": not while the
/// agent is blocked (on any replica: a shared store's mirror knows within its notification
/// delay), nor while that cannot be told (fail closed).
struct StillAllowed {
    state: Arc<dyn State>,
    agent: String,
}

#[broker_core::async_trait]
impl broker_proxy::Admit for StillAllowed {
    async fn admit(&self) -> std::result::Result<(), String> {
        match self.state.is_blocked(&self.agent).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("agent `{}` is blocked", self.agent)),
            Err(_) => Err("the daemon cannot tell whether the agent is blocked".to_string()),
        }
    }
}

fn too_many(agent: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_proxies",
        format!("agent `{agent}` already has {MAX_PER_AGENT} proxies running"),
    )
}

fn bad(kind: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, kind, message)
}

/// `POST /v1/proxy`: starts a proxy for the calling agent's run.
pub(crate) async fn start(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (call, agent) = app.agent_call(&peer, &headers).await?;
    let bytes = axum::body::to_bytes(body, crate::BODY_LIMIT)
        .await
        .map_err(|_| bad("body_too_large", "the request body is too large".into()))?;
    let req: ProxyRequest = serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            "malformed_request",
            format!("the body is not a proxy request: {e}"),
        )
    })?;
    if req.credentials.is_empty() {
        return Err(bad(
            "malformed_request",
            "`credentials` is empty: name the `proxy:` credentials the run uses".into(),
        ));
    }
    let mut ttl = match &req.ttl {
        None => DEFAULT_TTL,
        Some(t) => broker_core::config::parse_duration(t)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_TTL)
            .ok_or_else(|| {
                bad(
                    "bad_ttl",
                    format!("`ttl` is a duration up to {}h", MAX_TTL.as_secs() / 3600),
                )
            })?,
    };
    if app.proxies.count(&agent) >= MAX_PER_AGENT {
        return Err(too_many(&agent));
    }
    let live = call.live.clone();
    let mut ctx = call.ctx.clone();
    ctx.task_id = req.task_id.clone();
    ctx.purpose = req.reason.clone();
    let broker = &live.broker;
    let config = broker.config();
    let mut credentials = Vec::new();
    for name in &req.credentials {
        let Some(spec) = config.credential(name) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_credential",
                format!(
                    "no credential named `{}`",
                    broker_core::grammar::elide(name)
                ),
            ));
        };
        let Some(rules) = Rules::of(spec)? else {
            return Err(bad(
                "not_placeholder",
                format!("`{name}` has no `proxy:` section: request it from /v1/credentials"),
            ));
        };
        for dest in
            broker_core::egress::proxy_destinations(spec.proxy.as_ref(), &config.egress.self_hosted)
        {
            broker.gate_destination(&dest)?;
        }
        // Policy, egress gate, cache and audit: as for `/v1/credentials`; a lease is
        // recorded for the agent (a block revokes it) and bounds the proxy's life.
        let credential = broker.resolve(name, &ctx).await?;
        let issued = app.record_issued(&live, spec, &credential, &agent).await?;
        app.still_allowed(&live, &agent, issued.as_ref(), &ctx)
            .await?;
        if let Some(expires) = credential.lease().and_then(|l| l.expires_at) {
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            ttl = ttl.min(left);
        }
        if !credential.companions().is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_placeholder",
                format!("`{name}` brings companion values, which placeholder mode cannot hide yet"),
            ));
        }
        credentials.push(ProxiedCredential {
            name: name.clone(),
            placeholder: broker_proxy::placeholder::generate(&rules.placeholder),
            rules,
            value: credential.value().clone(),
        });
    }
    let placeholders: Vec<PlaceholderGrant> = credentials
        .iter()
        .map(|c| PlaceholderGrant {
            credential: c.name.clone(),
            placeholder: c.placeholder.clone(),
        })
        .collect();
    let policy = EgressPolicy::parse(config.egress.proxy.as_ref(), config.base_dir())?;
    let alert = config
        .alert
        .as_ref()
        .map(|a| AlertCommand::new(a.command.clone()));
    let template = broker.context_event(EventKind::Decision, Severity::Info, &ctx);
    let proxy = Proxy::start(ProxyOptions {
        credentials,
        policy,
        resolver: Arc::new(broker_proxy::SystemResolver),
        dialer: Arc::new(broker_proxy::TcpDialer),
        audit: Arc::new(LogAudit::new(broker.shared_audit_log(), alert, template)),
        also_redact: Vec::new(),
        validity: ttl,
        admit: Some(Arc::new(StillAllowed {
            state: app.state.clone(),
            agent: agent.clone(),
        })),
    })
    .await?;
    if ttl.is_zero() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "expired",
            "a credential of the run expired while the proxy was starting; try again",
        ));
    }
    let id = broker_core::provider::random_id();
    let grant = ProxyGrant {
        id: id.clone(),
        url: proxy.url().to_string(),
        ca_pem: proxy.ca_pem().to_string(),
        placeholders,
        expires_at: broker_core::audit::rfc3339(SystemTime::now() + ttl),
    };
    // Re-checked now that the values are here: a block, a reload or another start may have
    // happened while they were resolved.
    if !matches!(app.state.is_blocked(&agent).await, Ok(false)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "agent_blocked",
            format!("agent `{agent}` is blocked"),
        ));
    }
    {
        let mut running = app.proxies.lock();
        if !Arc::ptr_eq(&app.live(), &live) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reloaded",
                "the daemon's config was reloaded while the proxy was starting; try again",
            ));
        }
        if running.values().filter(|r| r.agent == agent).count() >= MAX_PER_AGENT {
            return Err(too_many(&agent));
        }
        running.insert(
            id,
            Running {
                agent,
                expires: Instant::now() + ttl,
                _proxy: proxy,
            },
        );
    }
    let body = Zeroizing::new(serde_json::to_vec(&grant).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode the answer",
        )
    })?);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_vec(),
    )
        .into_response())
}

/// `DELETE /v1/proxy/{id}`: stops one of the calling agent's proxies. Not rate-limited and
/// allowed to a blocked agent: stopping must always work.
pub(crate) async fn stop(
    AxState(app): AxState<App>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let call = app.call(&peer, &headers).await?;
    let Some(agent) = call.principal.agent.clone() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "unknown_peer",
            "the caller is an admin, not an agent",
        ));
    };
    let mut running = app.proxies.lock();
    match running.get(&id) {
        Some(r) if r.agent == agent => {
            running.remove(&id);
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_proxy",
            "no such proxy of this agent",
        )),
    }
}
