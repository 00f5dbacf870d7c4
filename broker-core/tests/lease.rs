//! Lease cache: refresh margin, singleflight, failed refresh, static values. Time comes from a
//! test clock; nothing sleeps.
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::sync::Arc;
use std::time::Duration;

use broker_core::lease::{CacheKey, Fetched, LeaseCache, ManualClock, RefreshPolicy, Served};
use broker_core::{Credential, Error, ErrorKind, RequestContext, SecretValue};
use runtime_support::*;

const NO_JITTER: RefreshPolicy = RefreshPolicy {
    fraction: 0.2,
    min_margin: Duration::from_secs(60),
    jitter: 0.0,
};

#[test]
fn margin_is_the_larger_of_a_fifth_and_a_minute() {
    let p = RefreshPolicy::default();
    assert_eq!(
        p.margin(Duration::from_secs(3600)),
        Duration::from_secs(720)
    );
    assert_eq!(p.margin(Duration::from_secs(600)), Duration::from_secs(120));
    assert_eq!(p.margin(Duration::from_secs(240)), Duration::from_secs(60));
    // Never more than half the lifetime, so short credentials are still reused.
    assert_eq!(p.margin(Duration::from_secs(60)), Duration::from_secs(30));
}

#[test]
fn jitter_only_moves_the_refresh_earlier_and_by_at_most_a_tenth_of_the_margin() {
    let p = RefreshPolicy::default();
    let issued = t0();
    let expires = issued + Duration::from_secs(600);
    let latest = p.refresh_at(issued, expires, 0.0);
    assert_eq!(latest, expires - Duration::from_secs(120));
    for unit in [0.1, 0.5, 0.999] {
        let at = p.refresh_at(issued, expires, unit);
        assert!(at <= latest);
        assert!(at >= expires - Duration::from_secs(132));
    }
}

fn mint_fixture(target: &str, ttl: &str) -> Fixture {
    Fixture::new(&format!(
        "credentials:\n  db: {{ mint: \"scripted:{target}\", ttl: {ttl} }}\n"
    ))
}

#[tokio::test]
async fn re_mints_at_the_margin_and_not_before() {
    let clock = Arc::new(ManualClock::new(t0()));
    let s = script(
        "remint",
        Script {
            ttl: Some(Duration::from_secs(600)),
            clock: Some(clock.clone()),
            ..Script::default()
        },
    );
    let f = mint_fixture("remint", "10m");
    let broker = f
        .broker()
        .unwrap()
        .with_clock(clock.clone())
        .with_refresh_policy(NO_JITTER);
    let ctx = RequestContext::new();
    let first = broker.resolve("db", &ctx).await.unwrap();
    assert_eq!(s.calls(), 1);
    clock.advance(Duration::from_secs(479));
    let again = broker.resolve("db", &ctx).await.unwrap();
    assert_eq!(s.calls(), 1, "served from the cache before the margin");
    assert_eq!(first.value(), again.value());
    clock.advance(Duration::from_secs(1)); // 8 min: 2 min (20%) before expiry
    let renewed = broker.resolve("db", &ctx).await.unwrap();
    assert_eq!(s.calls(), 2, "re-minted at the margin");
    assert_ne!(first.value(), renewed.value());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_callers_share_one_mint() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let s = script(
        "flight",
        Script {
            ttl: Some(Duration::from_secs(600)),
            gate: Some(gate.clone()),
            ..Script::default()
        },
    );
    let f = mint_fixture("flight", "10m");
    let broker = Arc::new(f.broker().unwrap());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let b = broker.clone();
        tasks.push(tokio::spawn(async move {
            b.resolve("db", &RequestContext::new())
                .await
                .map(|c| c.value().clone())
        }));
    }
    tokio::task::yield_now().await;
    gate.add_permits(1000);
    let mut values = Vec::new();
    for t in tasks {
        values.push(t.await.unwrap().unwrap());
    }
    assert_eq!(s.calls(), 1);
    assert!(values.iter().all(|v| *v == values[0]));
}

#[tokio::test]
async fn a_failed_refresh_serves_the_old_credential_only_while_it_is_valid() {
    let clock = Arc::new(ManualClock::new(t0()));
    let s = script(
        "stale",
        Script {
            ttl: Some(Duration::from_secs(600)),
            clock: Some(clock.clone()),
            ..Script::default()
        },
    );
    let f = mint_fixture("stale", "10m");
    let broker = f
        .broker()
        .unwrap()
        .with_clock(clock.clone())
        .with_refresh_policy(NO_JITTER);
    let ctx = RequestContext::new();
    let first = broker.resolve("db", &ctx).await.unwrap();
    clock.advance(Duration::from_secs(540)); // inside the margin, still valid
    s.fail_next([Error::permission_denied("role revoked")]);
    let stale = broker.resolve("db", &ctx).await.unwrap();
    assert_eq!(s.calls(), 2, "the refresh was attempted");
    assert_eq!(stale.value(), first.value(), "the old credential is served");
    clock.advance(Duration::from_secs(60)); // expired now
    s.fail_next([Error::permission_denied("role revoked")]);
    let err = broker.resolve("db", &ctx).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(err.credential(), Some("db"));
    assert!(broker.cache().is_empty(), "the expired entry is dropped");
}

#[tokio::test]
async fn static_values_are_cached_for_the_process_and_dropped_on_eviction() {
    let s = script("static", Script::default());
    let f = Fixture::new("credentials:\n  api: { ref: \"scripted:static\" }\n");
    let broker = f.broker().unwrap();
    let ctx = RequestContext::new();
    let a = broker.resolve("api", &ctx).await.unwrap();
    let b = broker.resolve("api", &ctx).await.unwrap();
    assert_eq!(s.calls(), 1);
    assert_eq!(a.value(), b.value());
    assert_eq!(broker.cache().len(), 1);
    broker.cache().evict(&CacheKey::new("api", ""));
    assert!(broker.cache().is_empty());
    broker.resolve("api", &ctx).await.unwrap();
    assert_eq!(s.calls(), 2);
}

#[tokio::test]
async fn minted_values_without_an_expiry_are_not_cached() {
    let s = script("noexpiry", Script::default());
    let f = Fixture::new("credentials:\n  t: { mint: \"scripted:noexpiry\" }\n");
    let broker = f.broker().unwrap();
    let ctx = RequestContext::new();
    broker.resolve("t", &ctx).await.unwrap();
    broker.resolve("t", &ctx).await.unwrap();
    assert_eq!(s.calls(), 2);
}

#[tokio::test]
async fn the_cache_itself_reports_how_it_served() {
    let clock = Arc::new(ManualClock::new(t0()));
    let cache = LeaseCache::new(clock.clone(), NO_JITTER);
    let key = CacheKey::new("k", "{\"actions\":[\"s3:GetObject\"]}");
    let fetch = |n: u8| {
        let expires_at = Some(clock.now_plus(600));
        move || async move {
            Ok(Fetched {
                credential: Credential::new(SecretValue::copy_from(&[n])),
                expires_at,
                cacheable: true,
            })
        }
    };
    assert_eq!(
        cache.get(&key, fetch(1)).await.unwrap().served,
        Served::Fetched
    );
    assert_eq!(
        cache.get(&key, fetch(2)).await.unwrap().served,
        Served::Cached
    );
    clock.advance(Duration::from_secs(500));
    let l = cache.get(&key, fetch(3)).await.unwrap();
    assert_eq!(l.served, Served::Refreshed);
    assert_eq!(l.credential.value().expose(), &[3]);
    // A different scope is a different entry.
    let other = CacheKey::new("k", "");
    assert_eq!(
        cache.get(&other, fetch(4)).await.unwrap().served,
        Served::Fetched
    );
    assert_eq!(cache.len(), 2);
    clock.advance(Duration::from_secs(10_000));
    assert_eq!(cache.evict_expired(), 2);
    cache.clear();
    assert!(cache.is_empty());
}

trait NowPlus {
    fn now_plus(&self, secs: u64) -> std::time::SystemTime;
}

impl NowPlus for ManualClock {
    fn now_plus(&self, secs: u64) -> std::time::SystemTime {
        use broker_core::lease::Clock;
        self.now() + Duration::from_secs(secs)
    }
}
