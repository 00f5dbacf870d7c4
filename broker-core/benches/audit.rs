//! Audit appends, fsynced, in records/s: one at a time per append (open, `flock`, tail check,
//! write, fsync, checkpoint: as the CLI does), one at a time through a held log, and 64
//! concurrent tokio tasks on two worker threads through a held log (group commit, as the
//! daemon does). Figures go to docs/performance.md ("Audit log").
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stderr)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use broker_core::audit::{AuditLog, AuditOptions, Event, EventKind, Severity};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const APPENDERS: u64 = 64;

fn event() -> Event {
    let mut event = Event::new(EventKind::Issuance, Severity::Info);
    event.agent_id = Some("agent-7".into());
    event.request_id = Some("0123456789abcdef0123456789abcdef".into());
    event.credential = Some("deploy".into());
    event.reference = Some("aws-sts://arn:aws:iam::123456789012:role/agent-deploy".into());
    event.outcome = Some("issued".into());
    event
}

fn appends(c: &mut Criterion) {
    let event = event();
    let mut group = c.benchmark_group("audit append (fsync)");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));

    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::new(dir.path().join("per-append.jsonl"), AuditOptions::default());
    group.bench_function("per append, sequential", |b| {
        b.iter(|| black_box(log.append(&event, SystemTime::now()).unwrap()))
    });

    let log = AuditLog::new(dir.path().join("held-seq.jsonl"), AuditOptions::default());
    log.hold().unwrap();
    group.bench_function("held, sequential", |b| {
        b.iter(|| black_box(log.append(&event, SystemTime::now()).unwrap()))
    });

    let log = Arc::new(AuditLog::new(
        dir.path().join("held-64.jsonl"),
        AuditOptions::default(),
    ));
    log.hold().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let event = Arc::new(event);
    group.bench_function("held, 64 concurrent appenders (2 workers)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                let tasks: Vec<_> = (0..APPENDERS)
                    .map(|t| {
                        let (log, event) = (log.clone(), event.clone());
                        // Spread `iters` records over the appenders.
                        let n = iters / APPENDERS + u64::from(t < iters % APPENDERS);
                        tokio::spawn(async move {
                            for _ in 0..n {
                                log.append_async(&event, SystemTime::now()).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    let records: u64 = std::fs::read_to_string(log.path()).unwrap().lines().count() as u64;
    eprintln!(
        "held, 64 concurrent: {} records in {} flushes ({:.1} records per fsync)",
        records,
        log.flushes(),
        records as f64 / log.flushes().max(1) as f64
    );
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
