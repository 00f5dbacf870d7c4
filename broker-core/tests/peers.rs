//! The shared peer starters in `testkit` start and reset each real peer.
#![allow(clippy::unwrap_used, missing_docs)]

use broker_core::testkit::{Drongo, Moto, OpenBao};

#[test]
fn openbao_starts_and_answers_as_root() {
    let Some(bao) = OpenBao::start("peers-root", "bao-peers") else {
        return;
    };
    bao.bao(&["kv", "put", "secret/peers", "k=v"]);
    assert!(bao.bao(&["kv", "get", "secret/peers"]).contains('k'));
}

#[test]
fn moto_starts_and_resets() {
    let Some(moto) = Moto::start("moto-peers") else {
        return;
    };
    moto.reset();
    moto.reset();
}

#[test]
fn drongo_starts_and_resets() {
    let Some(drongo) = Drongo::start("drongo-peers") else {
        return;
    };
    drongo.reset();
}
