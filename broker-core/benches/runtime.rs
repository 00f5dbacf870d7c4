//! Runtime layers: a cached resolve (cache alone, and the whole `Broker::resolve` path with
//! the allowlist and no audit log), one Cedar decision, and an audit append with and without
//! fsync. Figures go to docs/performance.md ("Runtime layers").
#![allow(missing_docs, clippy::unwrap_used)]

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use broker_core::audit::{AuditLog, AuditOptions, Event, EventKind, Severity};
use broker_core::lease::{CacheKey, Fetched, LeaseCache, RefreshPolicy, SystemClock};
use broker_core::policy::{Action, Policy, PolicyRequest};
use broker_core::{
    BackendContext, Badge, Broker, Capabilities, Credential, CredentialProvider, Destination,
    ProviderDescriptor, Reference, Request, RequestContext, Result, SecretValue, async_trait,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// Polls a future that must be ready at once (the cached path never waits).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the cached path should not wait"),
    }
}

struct Local;

#[async_trait]
impl CredentialProvider for Local {
    fn egress(&self, _: &Reference, _: &Path) -> Result<Vec<Destination>> {
        Ok(vec![Destination::process_env()])
    }
    async fn resolve(&self, _: &Request<'_>) -> Result<Credential> {
        Ok(Credential::new(SecretValue::copy_from(
            b"bench-value-0123456789abcdef",
        )))
    }
}

fn factory(_: &BackendContext<'_>) -> Result<Arc<dyn CredentialProvider>> {
    Ok(Arc::new(Local))
}

broker_core::inventory::submit! {
    ProviderDescriptor {
        name: "benchlocal",
        schemes: &["benchlocal"],
        capabilities: Capabilities { resolve: true, mint: false, revoke: false, rotate: false },
        default_badge: Badge::Local,
        credential_options: &[],
        grammar: &[],
        factory,
    }
}

fn cached_resolve(c: &mut Criterion) {
    let cache = LeaseCache::new(Arc::new(SystemClock), RefreshPolicy::default());
    let key = CacheKey::new("api", "");
    let fetch = || async {
        Ok(Fetched {
            credential: Credential::new(SecretValue::copy_from(b"bench-value-0123456789abcdef")),
            expires_at: Some(SystemTime::now() + Duration::from_secs(3600)),
            cacheable: true,
        })
    };
    ready(cache.get(&key, fetch)).unwrap();
    c.bench_function("lease cache hit", |b| {
        b.iter(|| black_box(ready(cache.get(black_box(&key), fetch)).unwrap()))
    });

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join(".broker.yml");
    std::fs::write(&cfg, "credentials:\n  api: { ref: \"benchlocal:api\" }\n").unwrap();
    let broker = Broker::load(&cfg).unwrap();
    let ctx = RequestContext::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(broker.resolve("api", &ctx)).unwrap();
    c.bench_function("Broker::resolve cached (allowlist, no audit log)", |b| {
        b.iter(|| black_box(ready(broker.resolve(black_box("api"), &ctx)).unwrap()))
    });
}

fn cedar_decision(c: &mut Criterion) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies/capability-bound.cedar");
    let policy = Policy::load(&path).unwrap();
    let actions = vec!["s3:GetObject".to_string()];
    let resources = vec!["arn:aws:s3:::bucket-a/*".to_string()];
    let request = PolicyRequest {
        agent_id: Some("deploy-bot"),
        agent_tenant: "team-a",
        agent_identity: "local",
        agent_attributes: &broker_core::policy::NO_ATTRIBUTES,
        action: Action::Mint,
        credential: "deploy",
        declared: true,
        backend: "aws",
        badge: "managed-cloud",
        credential_tenant: "team-a",
        max_ttl: 900,
        ttl_seconds: 900,
        scope_actions: &actions,
        scope_resources: &resources,
        task_id: Some("task-1"),
        time: SystemTime::now(),
    };
    assert!(policy.decide(&request).unwrap().allowed);
    c.bench_function("Cedar decision (capability-bound example)", |b| {
        b.iter(|| black_box(policy.decide(black_box(&request)).unwrap()))
    });
}

fn audit_append(c: &mut Criterion) {
    let mut event = Event::new(EventKind::Issuance, Severity::Info);
    event.agent_id = Some("agent-7".into());
    event.request_id = Some("0123456789abcdef0123456789abcdef".into());
    event.credential = Some("deploy".into());
    event.reference = Some("aws-sts://arn:aws:iam::123456789012:role/agent-deploy".into());
    event.outcome = Some("issued".into());
    let mut group = c.benchmark_group("audit append");
    group.sample_size(20);
    for fsync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.jsonl"), AuditOptions { fsync });
        let name = if fsync { "with fsync" } else { "without fsync" };
        group.bench_function(name, |b| {
            b.iter(|| black_box(log.append(&event, SystemTime::now()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, cached_resolve, cedar_decision, audit_append);
criterion_main!(benches);
