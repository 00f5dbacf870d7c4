//! The runtime layers as the [`Broker`] applies them to every request.
//!
//! Order, outermost first:
//!
//! 1. **Policy** ([`crate::policy`]): the allowlist or the Cedar policy decides; denied
//!    requests stop here.
//! 2. **Egress gate** ([`Broker::gate`]): a non-local destination the config does not allow
//!    stops here, before any I/O. Steps 1–2 produce one `decision` audit record.
//! 3. **Lease cache** ([`crate::lease`]): a fresh cached credential is served without a call;
//!    otherwise one fetch per key runs for every concurrent caller.
//! 4. **Retry** around **timeout** around the provider ([`crate::retry`]).
//! 5. **Audit** ([`crate::audit`]): an `issuance`, `refresh` or `failure` record is appended
//!    and fsynced *before* the credential is returned; if it cannot be written the credential
//!    is dropped and the request refused. A failure after exhausted retries is an `alert`
//!    record and runs `alert.command`, whether this layer or the backend itself (Vault's
//!    client, the AWS SDK) made the retries ([`Error::exhausted_attempts`]).
//!
//! Policy sits outside the cache so a cached credential is never handed to an agent the policy
//! now refuses; the cache sits outside retry so concurrent callers share one retried fetch.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::audit::{self, AuditLog, AuditOptions, Event, EventKind, Receipt, Severity};
use crate::config::{Config, CredentialSpec, Scope, Source};
use crate::egress::Badge;
use crate::lease::{
    CacheKey, Clock, Fetched, LeaseCache, Lookup, RefreshPolicy, Served, SystemClock,
};
use crate::policy::{Action, Policy, PolicyRequest};
use crate::provider::{Request, RequestContext};
use crate::retry::{self, AlertCommand, RetryPolicy, Sleeper, TokioSleeper};
use crate::{Broker, Credential, Error, ErrorKind, Result, SecretValue};

/// A cache lookup whose audit record is still to be written ([`Broker::record_lookup`]).
pub(crate) struct Unrecorded {
    looked: Result<Lookup>,
    attempts: u32,
    exhausted: bool,
}

/// The runtime state a [`Broker`] keeps: policy, cache, retry settings, audit log, alert hook.
pub(crate) struct Runtime {
    pub(crate) policy: Policy,
    pub(crate) cache: LeaseCache,
    pub(crate) retry: RetryPolicy,
    pub(crate) sleeper: Arc<dyn Sleeper>,
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) alert: Option<AlertCommand>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) refresh: RefreshPolicy,
}

impl Runtime {
    /// The runtime for `config`: loads and validates the policy file (a policy error is a
    /// config error), and sets up the audit log and alert hook.
    pub(crate) fn from_config(config: &Config) -> Result<Runtime> {
        let policy = match &config.policy {
            Some(path) => Policy::load(path)?,
            None => Policy::Allowlist,
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let refresh = RefreshPolicy::default();
        let alert = config
            .alert
            .as_ref()
            .map(|a| AlertCommand::new(a.command.clone()));
        Ok(Runtime {
            policy,
            cache: LeaseCache::new(clock.clone(), refresh),
            retry: RetryPolicy::default(),
            sleeper: Arc::new(TokioSleeper),
            audit: config.audit_path.as_ref().map(|p| {
                Arc::new(
                    AuditLog::new(
                        p.clone(),
                        AuditOptions {
                            fsync: config.audit_fsync,
                        },
                    )
                    .with_alert(alert.clone()),
                )
            }),
            alert,
            clock,
            refresh,
        })
    }
}

/// Values re-minted by [`Broker::refresh_files`].
pub struct Refreshed {
    /// When the next file credential is due for a re-mint, if any is.
    pub next: Option<SystemTime>,
    /// `(credential name, value)` of every value written, so the caller can extend its
    /// redactor.
    pub secrets: Vec<(String, SecretValue)>,
}

impl std::fmt::Debug for Refreshed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshed")
            .field("next", &self.next)
            .field(
                "secrets",
                &self.secrets.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn action_for(spec: &CredentialSpec) -> Action {
    match spec.source {
        Source::Resolve => Action::Resolve,
        Source::Mint => Action::Mint,
    }
}

fn scope_key(spec: &CredentialSpec, context: &RequestContext) -> String {
    scope_for(spec, context)
        .and_then(|s| serde_json::to_string(s).ok())
        .unwrap_or_default()
}

/// The scope to mint with: the request's (narrowed) scope, else the configured one.
fn scope_for<'a>(spec: &'a CredentialSpec, context: &'a RequestContext) -> Option<&'a Scope> {
    match spec.source {
        Source::Mint => context.scope.as_ref().or(spec.scope.as_ref()),
        Source::Resolve => spec.scope.as_ref(),
    }
}

/// The lifetime to mint with: the configured `ttl`, shortened by the request's (never longer).
fn ttl_for(spec: &CredentialSpec, context: &RequestContext) -> Option<std::time::Duration> {
    match (spec.ttl, context.ttl) {
        (Some(configured), Some(asked)) => Some(configured.min(asked)),
        (configured, asked) => configured.or(asked),
    }
}

/// Minted credentials are per agent (and per requested lifetime); stored values are shared.
fn cache_key(spec: &CredentialSpec, context: &RequestContext) -> CacheKey {
    let key = CacheKey::new(&spec.name, scope_key(spec, context));
    match spec.source {
        Source::Resolve => key,
        Source::Mint => key
            .with_agent(context.agent_id.clone())
            .with_ttl(context.ttl.and(ttl_for(spec, context))),
    }
}

impl Broker {
    /// Replaces the clock (tests drive expiry with [`ManualClock`](crate::lease::ManualClock)).
    /// Empties the cache.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.runtime.cache = LeaseCache::new(clock.clone(), self.runtime.refresh);
        self.runtime.clock = clock;
        self
    }

    /// Replaces the cache's refresh policy. Empties the cache.
    #[must_use]
    pub fn with_refresh_policy(mut self, refresh: RefreshPolicy) -> Self {
        self.runtime.refresh = refresh;
        self.runtime.cache = LeaseCache::new(self.runtime.clock.clone(), refresh);
        self
    }

    /// Replaces the retry settings and how the broker waits between attempts.
    #[must_use]
    pub fn with_retry(mut self, policy: RetryPolicy, sleeper: Arc<dyn Sleeper>) -> Self {
        self.runtime.retry = policy;
        self.runtime.sleeper = sleeper;
        self
    }

    /// Replaces the audit log (`None`: no log).
    #[must_use]
    pub fn with_audit_log(mut self, log: Option<AuditLog>) -> Self {
        self.runtime.audit = log.map(Arc::new);
        self
    }

    /// Uses `log`, shared with another broker: a daemon's reload keeps the log it
    /// [holds](AuditLog::hold) (its lock, its writer thread, its chain) for the new config.
    #[must_use]
    pub fn with_shared_audit_log(mut self, log: Option<Arc<AuditLog>>) -> Self {
        self.runtime.audit = log;
        self
    }

    /// Replaces the alert hook.
    #[must_use]
    pub fn with_alert_command(mut self, alert: Option<AlertCommand>) -> Self {
        self.runtime.audit = self.runtime.audit.take().map(|log| {
            // A log shared with another broker keeps the alert hook it was given.
            match Arc::try_unwrap(log) {
                Ok(log) => Arc::new(log.with_alert(alert.clone())),
                Err(shared) => shared,
            }
        });
        self.runtime.alert = alert;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.runtime.policy
    }

    /// The lease cache.
    pub fn cache(&self) -> &LeaseCache {
        &self.runtime.cache
    }

    /// The audit log, shareable with another broker (see [`Broker::with_shared_audit_log`]).
    pub fn shared_audit_log(&self) -> Option<Arc<AuditLog>> {
        self.runtime.audit.clone()
    }

    /// The audit log, if the config has one.
    pub fn audit_log(&self) -> Option<&AuditLog> {
        self.runtime.audit.as_deref()
    }

    fn event(
        &self,
        kind: EventKind,
        severity: Severity,
        action: Action,
        spec: Option<&CredentialSpec>,
        context: &RequestContext,
    ) -> Event {
        let mut e = self.context_event(kind, severity, context);
        e.action = Some(action.as_str().to_string());
        if let Some(spec) = spec {
            e.credential = Some(spec.name.clone());
            e.reference = Some(spec.reference.to_string());
            e.backend = self
                .registry()
                .for_scheme(spec.reference.scheme())
                .map(|d| d.name.to_string());
            e.scope = scope_for(spec, context).and_then(|s| serde_json::to_value(s).ok());
            e.ttl = spec.ttl.map(|t| t.as_secs());
        }
        e
    }

    /// An event of `kind` naming who asks: the agent, its tenant (the verified one, else the
    /// config's), how it was identified, the request and task ids and the stated purpose.
    pub fn context_event(
        &self,
        kind: EventKind,
        severity: Severity,
        context: &RequestContext,
    ) -> Event {
        let mut e = Event::new(kind, severity);
        e.agent_id = context.agent_id.clone();
        e.tenant = context
            .tenant
            .clone()
            .or_else(|| self.config().tenant.clone());
        e.request_id = Some(context.request_id.clone());
        e.task_id = context.task_id.clone();
        e.identity = context.identity.clone();
        e.purpose = context
            .purpose
            .as_deref()
            .map(|p| crate::grammar::elide(p).into_owned());
        e
    }

    /// Appends `event` to the audit log (fsynced). Without a log this only traces it.
    pub fn record(&self, event: &Event) -> Result<()> {
        match &self.runtime.audit {
            Some(log) => log.append(event, self.runtime.clock.now()).map(|_| ()),
            None => {
                tracing::debug!(event = ?event.event, outcome = ?event.outcome, "audit (no log configured)");
                Ok(())
            }
        }
    }

    /// [`Broker::record`] for async code: with a [held](AuditLog::hold) log (a daemon) it
    /// awaits the group-committed flush that covers `event` without blocking the runtime's
    /// thread; otherwise it appends in place as [`Broker::record`] does. The runtime layers
    /// record through it.
    pub async fn record_async(&self, event: &Event) -> Result<()> {
        match &self.runtime.audit {
            Some(log) => log
                .append_async(event, self.runtime.clock.now())
                .await
                .map(|_| ()),
            None => {
                tracing::debug!(event = ?event.event, outcome = ?event.outcome, "audit (no log configured)");
                Ok(())
            }
        }
    }

    /// Queues `event` for the audit log without waiting for its flush ([`AuditLog::submit`]);
    /// wait on the [`Receipt`] before acting on the request. Without a log the receipt is
    /// already answered.
    pub fn submit_record(&self, event: &Event) -> Result<Receipt> {
        match &self.runtime.audit {
            Some(log) => log.submit(event, self.runtime.clock.now()),
            None => {
                tracing::debug!(event = ?event.event, outcome = ?event.outcome, "audit (no log configured)");
                Ok(Receipt::ready(Ok(0)))
            }
        }
    }

    /// Records a notice such as `redaction_disabled` for a run (`broker run --no-redact`).
    /// An error means it could not be recorded; callers should refuse to go on.
    pub fn record_notice(&self, context: &RequestContext, what: &str, detail: &str) -> Result<()> {
        let mut e = self.context_event(EventKind::Notice, Severity::Warning, context);
        e.outcome = Some(what.to_string());
        e.reason = Some(detail.to_string());
        self.record(&e)
    }

    /// Records an alert (the event as given; make it `Severity::Alert`) and runs `alert.command`
    /// with it. Failing to record or run it is logged, not returned: callers have already
    /// failed closed.
    pub async fn alert(&self, event: &Event) {
        if let Err(e) = self.record_async(event).await {
            tracing::error!("cannot record an alert in the audit log: {e}");
        }
        if let Some(cmd) = &self.runtime.alert {
            let mut json = serde_json::to_value(event).unwrap_or_default();
            if let Some(map) = json.as_object_mut() {
                map.insert(
                    "timestamp".into(),
                    audit::rfc3339(self.runtime.clock.now()).into(),
                );
            }
            if let Err(e) = cmd.run(&json).await {
                tracing::warn!("alert.command failed: {e}");
            }
        }
    }

    fn badge_of(&self, spec: &CredentialSpec) -> Badge {
        self.destinations(&spec.reference)
            .ok()
            .and_then(|d| d.iter().map(|d| d.badge).max())
            .unwrap_or(Badge::Local)
    }

    /// Layers 1–2: policy, then the egress gate, with one `decision` record. `name` may be
    /// undeclared (denied and recorded).
    pub(crate) async fn authorize(
        &self,
        name: &str,
        action: Option<Action>,
        context: &RequestContext,
    ) -> Result<&CredentialSpec> {
        let (spec, decision) = self.authorize_deferred(name, action, context).await?;
        decision.wait().await?;
        Ok(spec)
    }

    /// [`Broker::authorize`] that does not wait for a grant's `decision` record: the caller
    /// waits on the [`Receipt`] before handing anything out (by then the flush covering its
    /// own later record has answered it too, so a request waits for one flush, not two). A
    /// refusal waits for its record.
    pub(crate) async fn authorize_deferred(
        &self,
        name: &str,
        action: Option<Action>,
        context: &RequestContext,
    ) -> Result<(&CredentialSpec, Receipt)> {
        let spec = self.config().credential(name);
        let action = action
            .or_else(|| spec.map(action_for))
            .unwrap_or(Action::Resolve);
        let config_tenant = self.config().tenant.clone().unwrap_or_default();
        let tenant = context
            .tenant
            .clone()
            .unwrap_or_else(|| config_tenant.clone());
        let empty: &[String] = &[];
        let backend = spec
            .and_then(|s| self.registry().for_scheme(s.reference.scheme()))
            .map(|d| d.name)
            .unwrap_or("");
        let badge = spec.map(|s| self.badge_of(s)).unwrap_or(Badge::Local);
        let request = PolicyRequest {
            agent_id: context.agent_id.as_deref(),
            agent_tenant: &tenant,
            agent_identity: context.identity_method.as_deref().unwrap_or("local"),
            agent_attributes: &context.attributes,
            action,
            credential: name,
            declared: spec.is_some(),
            backend,
            badge: badge.as_str(),
            credential_tenant: spec
                .and_then(|s| s.tenant.as_deref())
                .unwrap_or(&config_tenant),
            max_ttl: spec.and_then(|s| s.ttl).map_or(0, |t| t.as_secs()),
            ttl_seconds: spec
                .and_then(|s| ttl_for(s, context))
                .map_or(0, |t| t.as_secs()),
            scope_actions: spec
                .and_then(|s| scope_for(s, context))
                .map_or(empty, |s| &s.actions),
            scope_resources: spec
                .and_then(|s| scope_for(s, context))
                .map_or(empty, |s| &s.resources),
            task_id: context.task_id.as_deref(),
            time: self.runtime.clock.now(),
        };
        let decision = self.runtime.policy.decide(&request)?;
        let mut event = self.event(EventKind::Decision, Severity::Info, action, spec, context);
        if let Some(s) = spec {
            event.ttl = ttl_for(s, context).map(|t| t.as_secs());
        }
        if spec.is_none() {
            event.credential = Some(name.to_string());
        }
        let refusal: Option<Error> = if spec.is_none() {
            // Nothing to serve under an undeclared name, whatever the policy says.
            Some(
                self.config()
                    .require_credential(name)
                    .err()
                    .unwrap_or_else(|| Error::internal("credential vanished")),
            )
        } else if !decision.allowed {
            Some(
                Error::new(
                    ErrorKind::PolicyDenied,
                    format!("denied by policy: {}", decision.reason),
                )
                .with_credential(name)
                .with_hint(match &self.config().policy {
                    Some(p) => {
                        format!("the policy in {} does not permit this request", p.display())
                    }
                    None => "declare the credential in the config".to_string(),
                }),
            )
        } else {
            spec.and_then(|s| {
                self.gate(&s.reference)
                    .err()
                    .map(|e| e.with_credential(&s.name))
            })
        };
        event.severity = if refusal.is_some() {
            Severity::Warning
        } else {
            Severity::Info
        };
        event.decision = Some(
            if refusal.is_some() {
                "denied"
            } else {
                "granted"
            }
            .into(),
        );
        event.reason = Some(match (&refusal, decision.allowed) {
            _ if spec.is_none() => format!("not declared in the config; {}", decision.reason),
            (Some(e), true) => format!("egress gate: {}", e.message()),
            _ => decision.reason.clone(),
        });
        let decision = self.submit_record(&event)?;
        if let Some(e) = refusal {
            decision.wait().await?;
            return Err(e);
        }
        Ok((
            spec.ok_or_else(|| Error::internal("credential vanished"))?,
            decision,
        ))
    }

    /// Layers 3–5 for an authorized `spec`: cache, retry(timeout(provider)), audit.
    pub(crate) async fn issue(
        &self,
        spec: &CredentialSpec,
        context: &RequestContext,
    ) -> Result<Credential> {
        self.lookup(spec, context).await.map(|l| l.credential)
    }

    async fn lookup(&self, spec: &CredentialSpec, context: &RequestContext) -> Result<Lookup> {
        let fetched = self.fetch_unrecorded(spec, context).await;
        self.record_lookup(spec, context, fetched).await
    }

    /// Layers 3–4 of [`Broker::issue`] (cache, retry(timeout(provider))) without the audit
    /// record: [`Broker::record_lookup`] must follow before the credential is used. Lets
    /// `deliver` fetch independent credentials concurrently and record them in order.
    pub(crate) async fn fetch_unrecorded(
        &self,
        spec: &CredentialSpec,
        context: &RequestContext,
    ) -> Unrecorded {
        let key = cache_key(spec, context);
        let ttl = match spec.source {
            Source::Mint => ttl_for(spec, context),
            Source::Resolve => spec.ttl,
        };
        let outcome: Mutex<Option<(u32, bool)>> = Mutex::new(None);
        let fetch = || async {
            let (_, provider) = self.provider_for(&spec.reference)?;
            let request = Request::new(&spec.reference, self.config().base_dir(), context)
                .with_credential(&spec.name)
                .with_terms(
                    spec.terms()
                        .with_ttl(ttl)
                        .with_scope(scope_for(spec, context)),
                )
                .with_nested(self);
            let result = retry::retry(&self.runtime.retry, &*self.runtime.sleeper, |_| async {
                match spec.source {
                    Source::Resolve => provider.resolve(&request).await,
                    Source::Mint => provider.mint(&request).await,
                }
            })
            .await;
            match result {
                Ok((credential, attempts)) => {
                    *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some((attempts, false));
                    let expires_at =
                        credential.lease().and_then(|l| l.expires_at).or_else(|| {
                            match (spec.source, ttl) {
                                (Source::Mint, Some(ttl)) => Some(self.runtime.clock.now() + ttl),
                                _ => None,
                            }
                        });
                    Ok(Fetched {
                        cacheable: spec.source == Source::Resolve || expires_at.is_some(),
                        expires_at,
                        credential,
                    })
                }
                Err(f) => {
                    *outcome.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((f.attempts, f.exhausted));
                    Err(f.error)
                }
            }
        };
        let looked = self.runtime.cache.get(&key, fetch).await;
        let (attempts, exhausted) = outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or((0, false));
        Unrecorded {
            looked,
            attempts,
            exhausted,
        }
    }

    /// Layer 5 for a [`Broker::fetch_unrecorded`] result: the `issuance`, `refresh` or
    /// `failure` record; a credential whose record cannot be written is refused.
    pub(crate) async fn record_lookup(
        &self,
        spec: &CredentialSpec,
        context: &RequestContext,
        fetched: Unrecorded,
    ) -> Result<Lookup> {
        let action = action_for(spec);
        let ttl = match spec.source {
            Source::Mint => ttl_for(spec, context),
            Source::Resolve => spec.ttl,
        };
        let Unrecorded {
            looked,
            attempts,
            exhausted,
        } = fetched;
        let attach = |e: Error| {
            e.with_credential(&spec.name)
                .with_reference(&spec.reference)
        };
        match looked {
            Ok(lookup) => {
                let (kind, severity, outcome) = match &lookup.served {
                    Served::Cached => (EventKind::Issuance, Severity::Info, "cached"),
                    Served::Fetched => (EventKind::Issuance, Severity::Info, "issued"),
                    Served::Refreshed => (EventKind::Refresh, Severity::Info, "refreshed"),
                    Served::Stale(_) => (EventKind::Refresh, Severity::Warning, "stale"),
                };
                let mut event = self.event(kind, severity, action, Some(spec), context);
                event.ttl = ttl.map(|t| t.as_secs());
                event.outcome = Some(outcome.into());
                event.expiry = lookup.expires_at.map(audit::rfc3339);
                event.lease_id = lookup.credential.lease().map(|l| l.id.clone());
                if attempts > 0 {
                    event.attempts = Some(attempts);
                }
                if let Served::Stale(e) = &lookup.served {
                    event.reason = Some(format!(
                        "refresh failed; serving the cached credential until it expires: {}",
                        e.message()
                    ));
                    event.error_kind = Some(e.kind().as_str().into());
                }
                // Refuse rather than hand out an unrecorded credential (it is dropped here).
                self.record_async(&event).await.map_err(attach)?;
                Ok(lookup)
            }
            Err(e) => {
                let e = attach(e);
                // Retries spent at any depth (this layer or inside the backend) are exhaustion.
                let (attempts, exhausted) = match e.exhausted_attempts() {
                    Some(n) => (attempts.max(n), true),
                    None => (attempts, exhausted),
                };
                let severity = if exhausted {
                    Severity::Alert
                } else {
                    Severity::Warning
                };
                let mut event =
                    self.event(EventKind::Failure, severity, action, Some(spec), context);
                event.outcome = Some("failed".into());
                event.reason = Some(e.message().to_string());
                event.error_kind = Some(e.kind().as_str().into());
                if attempts > 0 {
                    event.attempts = Some(attempts);
                }
                if exhausted {
                    self.alert(&event).await;
                } else if let Err(audit_error) = self.record_async(&event).await {
                    tracing::error!("cannot record a failure in the audit log: {audit_error}");
                }
                Err(e)
            }
        }
    }

    /// Re-mints the minted `kind: file` credentials of `delivery` that are due (through the
    /// cache, so policy, retry and audit apply) and replaces their files atomically. Call it
    /// again at [`Refreshed::next`]. Env-delivered credentials are fixed for the child's life.
    ///
    /// `before_write` gets each credential's new values *before* its file is replaced, so a
    /// redactor can learn them before the child can read (and print) them.
    pub async fn refresh_files(
        &self,
        delivery: &crate::Delivery,
        context: &RequestContext,
        mut before_write: impl FnMut(&[(String, SecretValue)]) + Send,
    ) -> Result<Refreshed> {
        let mut out = Refreshed {
            next: None,
            secrets: Vec::new(),
        };
        let Some(scratch) = delivery.scratch() else {
            return Ok(out);
        };
        for spec in &self.config().credentials {
            if spec.kind != crate::DeliveryKind::File
                || spec.source != Source::Mint
                || !scratch.holds(&spec.name)
            {
                continue;
            }
            let key = cache_key(spec, context);
            let lookup = match self.runtime.cache.peek(&key) {
                Some(l) => l,
                None => {
                    self.authorize(&spec.name, Some(Action::Mint), context)
                        .await?;
                    let l = self.lookup(spec, context).await?;
                    if l.served != Served::Cached {
                        let fresh: Vec<(String, SecretValue)> = l
                            .credential
                            .values()
                            .map(|v| (spec.name.clone(), v.clone()))
                            .collect();
                        before_write(&fresh);
                        scratch.replace_secret(&spec.name, l.credential.value())?;
                        out.secrets.extend(fresh);
                    }
                    l
                }
            };
            if let Some(at) = lookup.refresh_at {
                out.next = Some(out.next.map_or(at, |n: SystemTime| n.min(at)));
            }
        }
        Ok(out)
    }

    /// Runs `op` (a rotate or revoke) with the per-request timeout and, when `retry` is set,
    /// the retry policy; records the outcome.
    pub(crate) async fn guarded<T, F, Fut>(
        &self,
        retryable: bool,
        mut event: Event,
        op: F,
    ) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut policy = self.runtime.retry;
        if !retryable {
            policy.max_retries = 0;
        }
        match retry::retry(&policy, &*self.runtime.sleeper, op).await {
            Ok((v, attempts)) => {
                event.attempts = Some(attempts);
                self.record_async(&event).await?;
                Ok(v)
            }
            Err(mut f) => {
                // Retries spent at any depth (this layer or inside the backend) are exhaustion.
                if let Some(n) = f.error.exhausted_attempts() {
                    f.exhausted = true;
                    f.attempts = f.attempts.max(n);
                }
                event.event = EventKind::Failure;
                event.severity = if f.exhausted {
                    Severity::Alert
                } else {
                    Severity::Warning
                };
                event.outcome = Some("failed".into());
                event.reason = Some(f.error.message().to_string());
                event.error_kind = Some(f.error.kind().as_str().into());
                event.attempts = Some(f.attempts);
                if f.exhausted {
                    self.alert(&event).await;
                } else if let Err(e) = self.record_async(&event).await {
                    tracing::error!("cannot record a failure in the audit log: {e}");
                }
                Err(f.error)
            }
        }
    }

    pub(crate) fn action_event(
        &self,
        kind: EventKind,
        action: Action,
        spec: Option<&CredentialSpec>,
        context: &RequestContext,
    ) -> Event {
        self.event(kind, Severity::Info, action, spec, context)
    }

    pub(crate) async fn decide_revoke(
        &self,
        lease_id: &str,
        backend: &str,
        context: &RequestContext,
    ) -> Result<()> {
        let config_tenant = self.config().tenant.clone().unwrap_or_default();
        let tenant = context
            .tenant
            .clone()
            .unwrap_or_else(|| config_tenant.clone());
        let badge = self
            .registry()
            .by_name(backend)
            .map_or(Badge::Local, |d| d.default_badge);
        let request = PolicyRequest {
            agent_id: context.agent_id.as_deref(),
            agent_tenant: &tenant,
            agent_identity: context.identity_method.as_deref().unwrap_or("local"),
            agent_attributes: &context.attributes,
            action: Action::Revoke,
            credential: lease_id,
            declared: false,
            backend,
            badge: badge.as_str(),
            credential_tenant: &config_tenant,
            max_ttl: 0,
            ttl_seconds: 0,
            scope_actions: &[],
            scope_resources: &[],
            task_id: context.task_id.as_deref(),
            time: self.runtime.clock.now(),
        };
        let decision = self.runtime.policy.decide(&request)?;
        let mut event = self.event(
            EventKind::Decision,
            Severity::Info,
            Action::Revoke,
            None,
            context,
        );
        event.backend = Some(backend.to_string());
        event.lease_id = Some(lease_id.to_string());
        event.decision = Some(
            if decision.allowed {
                "granted"
            } else {
                "denied"
            }
            .into(),
        );
        if !decision.allowed {
            event.severity = Severity::Warning;
        }
        event.reason = Some(decision.reason.clone());
        self.record_async(&event).await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::PolicyDenied,
                format!(
                    "revoking lease `{lease_id}` denied by policy: {}",
                    decision.reason
                ),
            ))
        }
    }
}
