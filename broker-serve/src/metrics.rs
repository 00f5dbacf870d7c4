//! The daemon's metrics (Prometheus text on the admin listener's `/metrics`) and readiness.
//!
//! Labels are routes, statuses and error kinds: never an agent id, a credential name or a
//! value, so the series stay few and the page stays secret-free.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// Counters, gauges and histograms of one daemon, and whether it is ready.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<Route, Histogram, fn() -> Histogram>,
    refusals: Family<Kind, Counter>,
    alerts: Counter,
    connections: Gauge<i64, AtomicI64>,
    connections_refused: Family<Kind, Counter>,
    reloads: Family<Kind, Counter>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric; not ready until [`Metrics::set_ready`].
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("broker_serve");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let latency: Family<Route, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from the request's headers to its answer, by route",
            latency.clone(),
        );
        let refusals = Family::<Kind, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused, by error kind",
            refusals.clone(),
        );
        let alerts = Counter::default();
        registry.register("alerts", "Denial-storm alerts raised", alerts.clone());
        let connections = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "open_connections",
            "Connections open now",
            connections.clone(),
        );
        let connections_refused = Family::<Kind, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at once, by cap",
            connections_refused.clone(),
        );
        let reloads = Family::<Kind, Counter>::default();
        registry.register("reloads", "Config reloads, by outcome", reloads.clone());
        Metrics {
            registry,
            requests,
            latency,
            refusals,
            alerts,
            connections,
            connections_refused,
            reloads,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts an answer on `path` with `status` that took `took`.
    pub fn answered(&self, path: &str, status: u16, took: Duration) {
        let route = route_of(path);
        self.requests
            .get_or_create(&RouteStatus { route, status })
            .inc();
        self.latency
            .get_or_create(&Route { route })
            .observe(took.as_secs_f64());
    }

    /// Counts a refusal of `kind`.
    pub fn refused(&self, kind: &'static str) {
        self.refusals.get_or_create(&Kind { kind }).inc();
    }

    /// Counts a denial-storm alert.
    pub fn alert(&self) {
        self.alerts.inc();
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// A connection closed at once because of `cap` (`overall`, `per_peer`).
    pub fn connection_refused(&self, cap: &'static str) {
        self.connections_refused
            .get_or_create(&Kind { kind: cap })
            .inc();
    }

    /// A reload that `ok` or failed.
    pub fn reloaded(&self, ok: bool) {
        let kind = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&Kind { kind }).inc();
    }

    /// Marks the daemon ready (serving) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the daemon is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A route label for a request path: a handful of fixed strings.
fn route_of(path: &str) -> &'static str {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.nth(1)) {
        (Some("healthz"), None, _) => "healthz",
        (Some("v1"), Some("credentials"), _) => "credentials",
        (Some("v1"), Some("manifest"), _) => "manifest",
        (Some("v1"), Some("leases"), Some("revoke")) => "revoke",
        (Some("v1"), Some("leases"), _) => "leases",
        (Some("v1"), Some("agents"), _) => "agents",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_a_fixed_set() {
        assert_eq!(route_of("/v1/credentials/db"), "credentials");
        assert_eq!(route_of("/v1/leases/x/revoke"), "revoke");
        assert_eq!(route_of("/v1/leases"), "leases");
        assert_eq!(route_of("/v1/agents/a/block"), "agents");
        assert_eq!(route_of("/healthz"), "healthz");
        assert_eq!(route_of("/whatever/secret"), "other");
    }

    #[test]
    fn renders_text() {
        let m = Metrics::new();
        m.answered("/v1/credentials/db", 200, Duration::from_micros(300));
        m.refused("agent_blocked");
        let text = m.render();
        assert!(
            text.contains("broker_serve_requests_total{route=\"credentials\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("broker_serve_refusals_total{kind=\"agent_blocked\"} 1"),
            "{text}"
        );
    }
}
