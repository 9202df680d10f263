//! The webhook outbox in both stores (the same events for the same moves, each written in the
//! transaction of its change) and, against MySQL, the deliveries: leased by one deliverer at a
//! time, reclaimed when a lease ends, marks fenced, health and pruning.

#[macro_use]
mod store_support;

use std::collections::BTreeSet;

use applyd::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use applyd::machine::{ApplyState, ControlOp, EngineKind, Params};
use applyd::store::mysql::MySqlStore;
use applyd::store::webhooks::{Deliveries, EventKind, LeasedDelivery};
use applyd::store::{NewApply, RequestOutcome, StoreError};
use applyd::worker::{ApplyId, ResumeState};
use std::sync::Arc;

use serde_json::{json, Value};
use store_support::{new_apply, Env};

const STALE: u64 = Params::DEFAULT.stale_after_ms;

/// The events of `apply` as (kind, payload), the operation row id left out (the stores number
/// operation rows differently).
async fn events(env: &Env, apply: ApplyId) -> Vec<(EventKind, Value)> {
    env.store
        .webhook_events(apply)
        .await
        .expect("read events")
        .into_iter()
        .map(|e| {
            let mut payload = e.payload;
            if let Some(m) = payload.as_object_mut() {
                m.remove("operation");
            }
            (e.kind, payload)
        })
        .collect()
}

async fn a_state_change_a_request_and_a_failure_each_record_one_event(env: Env) {
    let id = env
        .store
        .submit(new_apply("users", EngineKind::Spirit))
        .await
        .unwrap();
    assert!(events(&env, id).await.is_empty(), "a submission is no move");
    let lease = env.store.claim("w1").await.unwrap().unwrap().lease;
    assert_eq!(
        env.store.request(id, ControlOp::Stop).await.unwrap(),
        RequestOutcome::Created
    );
    assert_eq!(
        env.store.request(id, ControlOp::Stop).await.unwrap(),
        RequestOutcome::AlreadyPending
    );
    env.store.fail_apply(&lease, "disk full").await.unwrap();
    let apply = format!("apply-{id}");
    assert_eq!(
        events(&env, id).await,
        vec![
            (
                EventKind::StateChange,
                json!({"kind": "state_change", "apply": apply, "apply_id": id, "deployment": null,
                       "from": "pending", "to": "running", "epoch": 1, "owner": "w1", "cause": "claim A1"})
            ),
            (
                EventKind::Request,
                json!({"kind": "request", "apply": apply, "apply_id": id, "request": "stop"})
            ),
            (
                EventKind::Failure,
                json!({"kind": "failure", "apply": apply, "apply_id": id, "deployment": null,
                       "from": "running", "to": "failed", "epoch": 1, "owner": "w1", "cause": "write",
                       "reason": "disk full"})
            ),
        ]
    );
    let recorded = env.store.webhook_events(id).await.unwrap();
    let ids: BTreeSet<u64> = recorded.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3, "ids are unique");
    assert!(recorded.windows(2).all(|w| w[0].id < w[1].id));
    assert!(recorded
        .iter()
        .all(|e| e.at.ends_with('Z') && e.at.contains('T')));
    every_move_has_its_event(&env, id).await;
    env.cleanup().await;
}

/// Each audited move to another state has one event, in the same order.
async fn every_move_has_its_event(env: &Env, id: ApplyId) {
    let moves: Vec<(String, String)> = env
        .audit()
        .await
        .into_iter()
        .filter(|a| a.apply == id && a.from != a.to)
        .map(|a| (a.from, a.to))
        .collect();
    let evented: Vec<(String, String)> = events(env, id)
        .await
        .into_iter()
        .filter(|(k, _)| *k != EventKind::Request)
        .map(|(_, p)| {
            (
                p["from"].as_str().unwrap().into(),
                p["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(moves, evented);
}

async fn a_write_that_lost_its_lease_records_no_event(env: Env) {
    let id = env
        .store
        .submit(new_apply("users", EngineKind::PlanetScale))
        .await
        .unwrap();
    let old = env.store.claim("w1").await.unwrap().unwrap().lease;
    env.advance(STALE);
    let new = env.store.claim("w2").await.unwrap().expect("reclaim").lease;
    let before = events(&env, id).await;
    assert_eq!(
        before.len(),
        1,
        "a reclaim that keeps the state is no event"
    );
    assert!(matches!(
        env.store
            .write(
                &old,
                ApplyState::ValidatingDeployRequest,
                ResumeState::default(),
                None
            )
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        env.store.fail_apply(&old, "late").await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        events(&env, id).await,
        before,
        "nothing of a refused write stays"
    );
    env.store
        .write(
            &new,
            ApplyState::ValidatingDeployRequest,
            ResumeState::default(),
            None,
        )
        .await
        .unwrap();
    let after = events(&env, id).await;
    assert_eq!(after.len(), 2);
    assert_eq!(
        (after[1].1["to"].clone(), after[1].1["owner"].clone()),
        (json!("validating_deploy_request"), json!("w2"))
    );
    every_move_has_its_event(&env, id).await;
    env.cleanup().await;
}

/// The same moves on either store: an apply claimed, stopped by request and failed, and a
/// rolling rollout whose first deployment completes and second fails.
async fn scripted_events(env: &Env) -> Vec<(EventKind, Value)> {
    let single = env
        .store
        .submit(new_apply("users", EngineKind::Spirit))
        .await
        .unwrap();
    let lease = env.store.claim("w1").await.unwrap().unwrap().lease;
    env.store.request(single, ControlOp::Stop).await.unwrap();
    env.store.fail_apply(&lease, "boom").await.unwrap();
    let rollout = env
        .store
        .submit(NewApply {
            rollout: Some(RolloutPlan {
                deployments: vec!["d1".into(), "d2".into()],
                cutover_policy: CutoverPolicy::Rolling,
                on_failure: OnFailure::Halt,
                max_drivers_per_apply: 1,
                table_steps: false,
            }),
            ..new_apply("shop", EngineKind::Spirit)
        })
        .await
        .unwrap();
    let first = env.store.claim_operation("w1").await.unwrap().expect("d1");
    env.store
        .write(
            &first.lease,
            ApplyState::Completed,
            ResumeState::default(),
            None,
        )
        .await
        .unwrap();
    let second = env.store.claim_operation("w2").await.unwrap().expect("d2");
    env.store
        .fail_apply(&second.lease, "disk full")
        .await
        .unwrap();
    every_move_has_its_event(env, single).await;
    every_move_has_its_event(env, rollout).await;
    let mut all = events(env, single).await;
    all.extend(events(env, rollout).await);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_stores_record_the_same_events_for_the_same_moves() {
    let memory = Env::memory();
    let expected = scripted_events(&memory).await;
    let deployments: Vec<&Value> = expected.iter().map(|(_, p)| &p["deployment"]).collect();
    assert!(deployments.contains(&&json!("d1")) && deployments.contains(&&json!("d2")));
    assert!(expected
        .iter()
        .any(|(k, p)| *k == EventKind::Failure && p["reason"] == "disk full"));
    let Some(mysql) = Env::mysql().await else {
        return;
    };
    assert_eq!(scripted_events(&mysql).await, expected);
    mysql.cleanup().await;
}

conformance!(
    a_state_change_a_request_and_a_failure_each_record_one_event,
    a_write_that_lost_its_lease_records_no_event,
);

// ---- deliveries (the MySQL store's)

fn endpoint(name: &str) -> String {
    name.to_string()
}

/// Register `names` (an endpoint receives events from its first sweep on), then make `applies`
/// applies and claim each: one event apiece.
async fn with_events(env: &Env, names: &[&str], applies: usize) -> Vec<ApplyId> {
    let store = env.mysql_store().unwrap();
    let filters: Vec<String> = names.iter().map(|n| endpoint(n)).collect();
    store.sweep(&filters).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..applies {
        let id = env
            .store
            .submit(new_apply(&format!("db{i}"), EngineKind::Spirit))
            .await
            .unwrap();
        env.store.claim("w1").await.unwrap().unwrap();
        ids.push(id);
    }
    assert_eq!(
        store.sweep(&filters).await.unwrap(),
        (applies * names.len()) as u64
    );
    assert_eq!(
        store.sweep(&filters).await.unwrap(),
        0,
        "a sweep creates each row once"
    );
    ids
}

async fn lease(store: &MySqlStore, owner: &str, lease_ms: u64, limit: u32) -> Vec<LeasedDelivery> {
    store
        .lease_due(&["a".into(), "b".into()], owner, lease_ms, limit)
        .await
        .unwrap()
}

/// One apply's two events for endpoint `a` (its claim, then a stop request): what `d1` leases
/// of them, which is only the first, the head of the apply.
async fn head_of_two(env: &Env) -> Vec<LeasedDelivery> {
    let ids = with_events(env, &["a"], 1).await;
    let store = env.mysql_store().unwrap();
    env.store.request(ids[0], ControlOp::Stop).await.unwrap();
    store.sweep(&[endpoint("a")]).await.unwrap();
    lease(store, "d1", 30_000, 10).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_live_deliverers_never_hold_the_same_delivery() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    with_events(&env, &["a", "b"], 12).await;
    let store = env.mysql_store().unwrap();
    // Each deliverer's leases, batch by batch.
    let drain = |owner: &'static str| async move {
        let mut batches = Vec::new();
        loop {
            let got = lease(store, owner, 60_000, 3).await;
            if got.is_empty() {
                return batches;
            }
            batches.push(got);
        }
    };
    let (b1, b2) = tokio::join!(drain("d1"), drain("d2"));
    // Oldest first within each batch.
    for batch in b1.iter().chain(&b2) {
        let events: Vec<u64> = batch.iter().map(|d| d.event).collect();
        assert!(events.windows(2).all(|w| w[0] <= w[1]), "{events:?}");
    }
    let all = [b1.concat(), b2.concat()];
    let keys = |v: &Vec<LeasedDelivery>| -> BTreeSet<(u64, String)> {
        v.iter().map(|d| (d.event, d.endpoint.clone())).collect()
    };
    let (first, second) = (keys(&all[0]), keys(&all[1]));
    assert!(
        first.is_disjoint(&second),
        "a delivery held twice: {first:?} / {second:?}"
    );
    assert_eq!(first.len() + second.len(), 24, "every delivery leased once");
    assert_eq!(all[0].len() + all[1].len(), 24);
    let body: Value = serde_json::from_slice(all[0][0].body.as_ref().unwrap()).unwrap();
    assert_eq!(all[0][0].kind, Some(EventKind::StateChange));
    assert_eq!(body["id"], format!("evt-{}", all[0][0].event));
    assert_eq!(body["kind"], "state_change");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_delivery_lease_is_reclaimed_and_the_late_mark_fenced() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    with_events(&env, &["a"], 1).await;
    let store = env.mysql_store().unwrap();
    let first = lease(store, "d1", 30_000, 10).await;
    assert_eq!(first.len(), 1);
    assert!(
        lease(store, "d2", 30_000, 10).await.is_empty(),
        "held while the lease lasts"
    );
    env.advance(30_001);
    let second = lease(store, "d2", 30_000, 10).await;
    assert_eq!(
        second.len(),
        1,
        "a dead deliverer's delivery falls due again"
    );
    assert_eq!((second[0].event, second[0].attempts), (first[0].event, 2));
    assert_eq!(second[0].body, first[0].body, "the same bytes every time");
    assert!(matches!(
        store.mark_delivered(&first[0]).await,
        Err(StoreError::Refused(_))
    ));
    store.mark_delivered(&second[0]).await.unwrap();
    let health = store.health().await.unwrap();
    assert_eq!(
        (
            health[0].endpoint.as_str(),
            health[0].delivered,
            health[0].pending,
            health[0].failing
        ),
        ("a", 1, 0, 0)
    );
    assert!(
        lease(store, "d3", 30_000, 10).await.is_empty(),
        "delivered is done"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_attempt_waits_its_backoff_shows_in_health_and_delivered_events_are_pruned() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    with_events(&env, &["a"], 2).await;
    let store = env.mysql_store().unwrap();
    let held = lease(store, "d1", 30_000, 10).await;
    assert_eq!(held.len(), 2);
    store.mark_delivered(&held[0]).await.unwrap();
    store
        .mark_failed(&held[1], "HTTP 500: down", 4_000)
        .await
        .unwrap();
    assert!(
        matches!(
            store.mark_failed(&held[1], "again", 1).await,
            Err(StoreError::Refused(_))
        ),
        "a mark needs the lease"
    );
    let h = &store.health().await.unwrap()[0];
    assert_eq!((h.delivered, h.pending, h.failing), (1, 0, 1));
    assert_eq!(h.last_error.as_deref(), Some("HTTP 500: down"));
    assert!(h.oldest_undelivered_age_ms.is_some());
    assert!(
        lease(store, "d1", 30_000, 10).await.is_empty(),
        "not before its backoff"
    );
    env.advance(4_001);
    let retry = lease(store, "d1", 30_000, 10).await;
    assert_eq!((retry.len(), retry[0].attempts), (1, 2));
    // Past the retention: the delivered event goes, the owed one stays.
    env.advance(169 * 3_600_000);
    // A deliverer still serves `a`: it is seen, and every old event is swept.
    store.sweep(&[endpoint("a")]).await.unwrap();
    let pruned = store.prune(168, 100, &[endpoint("a")]).await.unwrap();
    assert_eq!(pruned.events, 1);
    let h = &store.health().await.unwrap()[0];
    assert_eq!((h.delivered, h.failing), (0, 1));
    store.mark_delivered(&retry[0]).await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apply_s_later_event_waits_until_the_earlier_one_is_delivered() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let first = head_of_two(&env).await;
    let store = env.mysql_store().unwrap();
    assert_eq!(first.len(), 1, "only the head of the apply: {first:?}");
    assert!(
        lease(store, "d2", 30_000, 10).await.is_empty(),
        "the next waits for it"
    );
    store
        .mark_failed(&first[0], "HTTP 503", 1_000)
        .await
        .unwrap();
    env.advance(1_001);
    let again = lease(store, "d2", 30_000, 10).await;
    assert_eq!(
        again.iter().map(|d| d.event).collect::<Vec<_>>(),
        vec![first[0].event]
    );
    store.mark_delivered(&again[0]).await.unwrap();
    let next = lease(store, "d1", 30_000, 10).await;
    assert_eq!(next.len(), 1);
    assert!(next[0].event > first[0].event);
    let body: Value = serde_json::from_slice(next[0].body.as_ref().unwrap()).unwrap();
    assert_eq!(next[0].kind, Some(EventKind::Request));
    assert_eq!(
        (body["kind"].as_str(), body["request"].as_str()),
        (Some("request"), Some("stop"))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_delivery_shows_in_health_and_no_longer_holds_back_its_apply() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let first = head_of_two(&env).await;
    let store = env.mysql_store().unwrap();
    assert_eq!(first.len(), 1);
    store
        .mark_abandoned(&first[0], "abandoned after 300 attempts: HTTP 400: no")
        .await
        .unwrap();
    assert!(
        matches!(
            store.mark_delivered(&first[0]).await,
            Err(StoreError::Refused(_))
        ),
        "an abandoned delivery's lease is over"
    );
    let h = &store.health().await.unwrap()[0];
    assert_eq!(
        (h.delivered, h.pending, h.failing, h.abandoned),
        (0, 1, 0, 1)
    );
    assert_eq!(
        h.last_error.as_deref(),
        Some("abandoned after 300 attempts: HTTP 400: no")
    );
    let next = lease(store, "d1", 30_000, 10).await;
    assert_eq!(next.len(), 1, "the apply's next event goes out");
    assert!(next[0].event > first[0].event);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_is_swept_whatever_an_endpoint_receives_and_own_endpoints_are_never_forgotten() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let ids = with_events(&env, &["a", "b"], 1).await;
    let store = env.mysql_store().unwrap();
    env.store.request(ids[0], ControlOp::Stop).await.unwrap();
    // Two state changes and a request: a row each for either endpoint, with the kind that
    // lets a deliverer pass over what its endpoint does not receive.
    assert_eq!(
        store.sweep(&[endpoint("a"), endpoint("b")]).await.unwrap(),
        2
    );
    // All deliverers down for longer than the retention: `a` is still in the caller's
    // config and keeps what it is owed; `b` is in no config any more and is forgotten.
    env.advance(169 * 3_600_000);
    store.prune(168, 100, &[endpoint("a")]).await.unwrap();
    let names: Vec<String> = store
        .health()
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.endpoint)
        .collect();
    assert_eq!(names, vec!["a".to_string()], "b forgotten, a kept");
    let mut kinds = Vec::new();
    loop {
        let got = store
            .lease_due(&[endpoint("a")], "d1", 30_000, 10)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            kinds.push(d.kind);
            store.mark_delivered(&d).await.unwrap();
        }
    }
    assert_eq!(
        kinds,
        vec![Some(EventKind::StateChange), Some(EventKind::Request)],
        "a's events, in order, after the retention"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_reports_delivery_health_behind_the_token() {
    use applyd::api::{router, ApiState};
    let Some(env) = Env::mysql().await else {
        return;
    };
    with_events(&env, &["a", "b"], 2).await;
    let store = env.mysql_store().unwrap();
    for d in lease(store, "d1", 30_000, 10).await {
        match d.endpoint.as_str() {
            "a" => store.mark_delivered(&d).await.unwrap(),
            _ => store
                .mark_failed(&d, "HTTP 502: bad gateway", 60_000)
                .await
                .unwrap(),
        }
    }
    let inspect: Arc<dyn applyd::store::status::Inspect> = match &env.backend {
        store_support::Backend::MySql { store, .. } => store.clone(),
        store_support::Backend::Memory { .. } => unreachable!("a MySQL env"),
    };
    let state = ApiState {
        store: env.store.clone(),
        inspect,
        token: Some(applyd::config::Secret::new("t0ken")),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/webhooks");
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let health: Value = http
        .get(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health[0]["endpoint"], "a");
    assert_eq!(
        (
            health[0]["delivered"].as_u64(),
            health[0]["failing"].as_u64()
        ),
        (Some(2), Some(0))
    );
    assert_eq!(health[1]["endpoint"], "b");
    assert_eq!(
        (
            health[1]["delivered"].as_u64(),
            health[1]["failing"].as_u64()
        ),
        (Some(0), Some(2))
    );
    assert_eq!(health[1]["last_error"], "HTTP 502: bad gateway");
    assert!(health[1]["oldest_undelivered_age_ms"].is_u64());
    // The dashboard's list shows the same, a failing endpoint marked.
    let page = http
        .get(format!("http://{addr}/"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"webhooks\""), "{page}");
    assert!(
        page.contains("<tr class=\"failing\"><td>b</td><td>0</td><td>0</td><td>2</td>"),
        "{page}"
    );
    assert!(page.contains("HTTP 502: bad gateway"));
    env.cleanup().await;
}
