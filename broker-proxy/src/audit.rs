//! Where the proxy's audit records go: the broker's hash-chained log (and `alert.command`), or
//! a test's memory.
//!
//! Records are [`Event`]s, secret-free by construction: `action: proxy`, the credential's
//! name, `decision` granted/denied, `outcome` forwarded/blocked, `http` (host, method, path
//! without query redacted of every delivered value, status, bytes) and, for a refusal, why in
//! `reason`.
//!
//! A sink that cannot write a record says so ([`AuditSink::record`] fails); the proxy then
//! fails closed: the response in flight is cut and every later request that would use a
//! credential is refused.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use broker_core::Result;
use broker_core::async_trait;
use broker_core::audit::{AuditLog, Event, EventKind, Severity};
use broker_core::retry::AlertCommand;

/// Receives the proxy's audit records.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Records `event`; an error when it could not be written.
    async fn record(&self, event: Event) -> Result<()>;
    /// Records `event` (severity `alert`) and raises the alert (`alert.command`); an error
    /// when the record could not be written (the alert is raised all the same).
    async fn alert(&self, event: Event) -> Result<()>;
    /// An empty event of `kind` and `severity` carrying the run's context (agent, task,
    /// request id).
    fn event(&self, kind: EventKind, severity: Severity) -> Event {
        Event::new(kind, severity)
    }
}

/// The broker's audit log and alert hook.
pub struct LogAudit {
    log: Option<Arc<AuditLog>>,
    alert: Option<AlertCommand>,
    template: Event,
}

impl std::fmt::Debug for LogAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogAudit")
            .field("log", &self.log.as_ref().map(|l| l.path().to_path_buf()))
            .finish_non_exhaustive()
    }
}

impl LogAudit {
    /// Records to `log` (none: traced only), alerts through `alert`, every event filled from
    /// `template` (see [`broker_core::Broker::context_event`]).
    pub fn new(log: Option<Arc<AuditLog>>, alert: Option<AlertCommand>, template: Event) -> Self {
        LogAudit {
            log,
            alert,
            template,
        }
    }

    async fn append(&self, event: &Event) -> Result<()> {
        match &self.log {
            Some(log) => log
                .append_async(event, SystemTime::now())
                .await
                .map(|_| ())
                .inspect_err(|e| tracing::error!("proxy: cannot write an audit record: {e}")),
            None => {
                tracing::debug!(outcome = ?event.outcome, reason = ?event.reason, "proxy audit (no log configured)");
                Ok(())
            }
        }
    }
}

#[async_trait]
impl AuditSink for LogAudit {
    async fn record(&self, event: Event) -> Result<()> {
        self.append(&event).await
    }

    async fn alert(&self, event: Event) -> Result<()> {
        let written = self.append(&event).await;
        tracing::error!(
            credential = ?event.credential,
            "proxy: {}",
            event.reason.as_deref().unwrap_or("alert")
        );
        if let Some(cmd) = &self.alert {
            let mut json = serde_json::to_value(&event).unwrap_or_default();
            if let Some(map) = json.as_object_mut() {
                map.insert(
                    "timestamp".into(),
                    broker_core::audit::rfc3339(SystemTime::now()).into(),
                );
            }
            if let Err(e) = cmd.run(&json).await {
                tracing::warn!("alert.command failed: {e}");
            }
        }
        written
    }

    fn event(&self, kind: EventKind, severity: Severity) -> Event {
        let mut e = self.template.clone();
        e.event = kind;
        e.severity = severity;
        e
    }
}

/// Keeps records in memory (tests, embedders that ship them elsewhere).
#[derive(Debug, Default, Clone)]
pub struct MemoryAudit {
    events: Arc<Mutex<Vec<Event>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl MemoryAudit {
    /// An empty record list.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, refuses every record as a full disk would (tests of failing closed).
    pub fn fail_from_now_on(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The records so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl AuditSink for MemoryAudit {
    async fn record(&self, event: Event) -> Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(broker_core::Error::new(
                broker_core::ErrorKind::Io,
                "the test's audit sink refuses records",
            ));
        }
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        Ok(())
    }

    async fn alert(&self, event: Event) -> Result<()> {
        self.record(event).await
    }
}
