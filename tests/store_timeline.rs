//! The timeline in both stores: who asked for each request, when, and how it ended.

#[macro_use]
mod store_support;

use applyd::machine::{ControlOp, EngineKind};
use applyd::store::timeline::EntryKind;
use store_support::{new_apply, Env};

/// The request entries of a scripted apply: a cancel asked by a person, taken by a claim and
/// completed by its owner; then a stop asked by the API, refused (the apply is over).
async fn requests_seen(env: &Env) -> Vec<(u64, String)> {
    let id = env
        .store
        .submit(new_apply("db1", EngineKind::Spirit))
        .await
        .unwrap();
    env.store
        .request_by(id, ControlOp::Cancel, "cli:alice@db-7")
        .await
        .unwrap();
    env.advance(2_000);
    let claimed = env
        .store
        .claim("w1")
        .await
        .unwrap()
        .expect("the cancel is taken");
    env.store
        .complete_request(&claimed.lease, ControlOp::Cancel)
        .await
        .unwrap();
    env.advance(1_000);
    env.timeline(id)
        .await
        .into_iter()
        .filter(|e| e.kind == EntryKind::Request)
        .map(|e| (e.age_ms, e.text))
        .collect()
}

async fn a_request_shows_who_asked_when_and_how_it_ended(env: Env) {
    let seen = requests_seen(&env).await;
    let texts: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        vec!["cancel requested by cli:alice@db-7", "cancel completed"]
    );
    // By the store's clock, moved on 2 s then 1 s (the database's also runs on in real time,
    // so the ages may be a little more).
    for ((age, text), expected) in seen.iter().zip([3_000, 1_000]) {
        assert!(
            (expected..expected + 500).contains(age),
            "{text}: {age} ms ago, not {expected}"
        );
    }
    env.cleanup().await;
}

conformance!(a_request_shows_who_asked_when_and_how_it_ended);
