//! Where the proxy's audit records go: the broker's hash-chained log (and `alert.command`), or
//! a test's memory.
//!
//! Records are [`Event`]s, secret-free by construction: `action: proxy`, the credential's
//! name, `decision` granted/denied, `outcome` forwarded/blocked, and in `reason` the host,
//! method, path without query (redacted of every delivered value), status and bytes, or why
//! the request was blocked.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use broker_core::async_trait;
use broker_core::audit::{AuditLog, Event, EventKind, Severity};
use broker_core::retry::AlertCommand;

/// Receives the proxy's audit records.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Records `event`. A failure is logged by the sink.
    async fn record(&self, event: Event);
    /// Records `event` (severity `alert`) and raises the alert (`alert.command`).
    async fn alert(&self, event: Event);
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

    async fn append(&self, event: &Event) {
        match &self.log {
            Some(log) => {
                if let Err(e) = log.append_async(event, SystemTime::now()).await {
                    tracing::error!("proxy: cannot write an audit record: {e}");
                }
            }
            None => {
                tracing::debug!(outcome = ?event.outcome, reason = ?event.reason, "proxy audit (no log configured)")
            }
        }
    }
}

#[async_trait]
impl AuditSink for LogAudit {
    async fn record(&self, event: Event) {
        self.append(&event).await;
    }

    async fn alert(&self, event: Event) {
        self.append(&event).await;
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
}

impl MemoryAudit {
    /// An empty record list.
    pub fn new() -> Self {
        Self::default()
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
    async fn record(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    async fn alert(&self, event: Event) {
        self.record(event).await;
    }
}
