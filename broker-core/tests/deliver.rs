//! `Broker::deliver` fetches stored values concurrently but writes their audit records in
//! config order, and a failure leaves the records a one-at-a-time delivery would.
#![allow(clippy::unwrap_used, missing_docs)]

mod runtime_support;

use std::sync::Arc;

use broker_core::{Broker, Error, RequestContext};
use runtime_support::*;
use tokio::sync::Semaphore;

const CONFIG: &str = "credentials:\n  a: { ref: \"scripted:order-TAG-0\" }\n  b: { ref: \"scripted:order-TAG-1\" }\n  c: { ref: \"scripted:order-TAG-2\" }\naudit: { path: audit.jsonl }\n";

/// Three scripted values whose fetches wait for a permit each; returns the gates.
fn gated(tag: &str) -> (Vec<Arc<Semaphore>>, Vec<Arc<Script>>) {
    let gates: Vec<Arc<Semaphore>> = (0..3).map(|_| Arc::new(Semaphore::new(0))).collect();
    let scripts = gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            script(
                &format!("order-{tag}-{i}"),
                Script {
                    gate: Some(g.clone()),
                    ..Script::default()
                },
            )
        })
        .collect();
    (gates, scripts)
}

/// `(event, credential)` of the issuance and failure records, in log order.
fn outcomes(f: &Fixture) -> Vec<(String, String)> {
    audit_lines(&f.path("audit.jsonl"))
        .iter()
        .filter(|r| r["event"] == "issuance" || r["event"] == "failure")
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["credential"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn all_in_flight(scripts: &[Arc<Script>]) {
    while scripts.iter().any(|s| s.calls() == 0) {
        tokio::task::yield_now().await;
    }
}

/// `deliver` of every credential on a task of its own; gives the number of env values.
fn spawn_delivery(broker: &Arc<Broker>) -> tokio::task::JoinHandle<Result<usize, Error>> {
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        broker
            .deliver(&[], &RequestContext::new())
            .await
            .map(|d| d.env().len())
    })
}

#[tokio::test]
async fn stored_values_are_fetched_together_and_recorded_in_config_order() {
    let (gates, scripts) = gated("ok");
    let f = Fixture::new(&CONFIG.replace("TAG", "ok"));
    let broker = Arc::new(f.broker().unwrap());
    let task = spawn_delivery(&broker);
    // Every fetch has started before any has returned; they finish last to first.
    all_in_flight(&scripts).await;
    for gate in gates.iter().rev() {
        gate.add_permits(1);
        tokio::task::yield_now().await;
    }
    assert_eq!(task.await.unwrap().unwrap(), 3);
    let issued = |c: &str| ("issuance".to_string(), c.to_string());
    assert_eq!(outcomes(&f), [issued("a"), issued("b"), issued("c")]);
}

#[tokio::test]
async fn a_failure_stops_the_delivery_with_the_records_of_a_sequential_one() {
    let (gates, scripts) = gated("fail");
    scripts[1].fail_next([Error::not_found("no such secret")]);
    let f = Fixture::new(&CONFIG.replace("TAG", "fail"));
    let broker = Arc::new(f.broker().unwrap());
    let task = tokio::spawn({
        let broker = broker.clone();
        async move { broker.deliver(&[], &RequestContext::new()).await.err() }
    });
    all_in_flight(&scripts).await;
    for gate in gates.iter().rev() {
        gate.add_permits(1);
        tokio::task::yield_now().await;
    }
    let err = task.await.unwrap().unwrap();
    assert!(err.message().contains("no such secret"), "{err}");
    // `c` was fetched alongside but never recorded or handed out.
    assert_eq!(
        outcomes(&f),
        [
            ("issuance".to_string(), "a".to_string()),
            ("failure".to_string(), "b".to_string()),
        ]
    );
}

#[tokio::test]
async fn no_mint_starts_while_a_stored_fetch_is_unfinished() {
    // A stored fetch paused while a mint runs could hold what the mint needs (a backend's
    // login session): every stored fetch ends before the first mint begins.
    let gate = Arc::new(Semaphore::new(0));
    let stored = script(
        "order-mint-stored",
        Script {
            gate: Some(gate.clone()),
            ..Script::default()
        },
    );
    let minted = script(
        "order-mint-minted",
        Script {
            ttl: Some(std::time::Duration::from_secs(600)),
            ..Script::default()
        },
    );
    let f = Fixture::new(
        "credentials:\n  first: { ref: \"scripted:order-mint-first\" }\n  \
         m: { mint: \"scripted:order-mint-minted\", ttl: 10m }\n  \
         later: { ref: \"scripted:order-mint-stored\" }\naudit: { path: audit.jsonl }\n",
    );
    let _first = script("order-mint-first", Script::default());
    let broker = Arc::new(f.broker().unwrap());
    let task = spawn_delivery(&broker);
    all_in_flight(std::slice::from_ref(&stored)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        minted.calls(),
        0,
        "a mint started while a stored fetch was paused"
    );
    gate.add_permits(1);
    assert_eq!(task.await.unwrap().unwrap(), 3);
    assert_eq!(minted.calls(), 1);
    let issued = |c: &str| ("issuance".to_string(), c.to_string());
    assert_eq!(
        outcomes(&f),
        [issued("first"), issued("m"), issued("later")]
    );
}
