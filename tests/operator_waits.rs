//! Waiting costs no driver: the operator, on each store, with as many applies waiting for a
//! person's cutover as it has drivers (or more) — PlanetScale ones parked, Spirit ones watched —
//! still starts and completes new applies; a request to a parked apply is taken by the next
//! claim, long before its wake time, and one to a watched apply by the next poll.

mod store_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use applyd::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use applyd::machine::{ApplyOptions, ControlOp, EngineKind, Rules};
use applyd::operator::{Runtime, RuntimeConfig};
use applyd::store::memory::MonotonicClock;
use applyd::store::NewApply;
use applyd::worker::ApplyId;
use store_support::{new_apply, Env};
use tokio::sync::watch;

/// Fake engines fast enough for twenty applies to reach their gate in seconds.
fn quick() -> FakeTimings {
    FakeTimings {
        branch_ready_ms: 50,
        validate_ms: 50,
        deploy_ms: 200,
        cutover_ms: 50,
        spirit_rows: 500,
        spirit_rows_per_s: 2_000,
        spirit_checkpoint_every_ms: 100,
        ..FakeTimings::fast()
    }
}

fn deferred_cutover(db: &str, engine: EngineKind) -> NewApply {
    let mut new = new_apply(db, engine);
    new.options = ApplyOptions {
        defer_cutover: true,
        skip_revert: true,
        ..Default::default()
    };
    new
}

/// Poll the store until `done` holds for every apply, or fail after a generous deadline.
async fn until_all(
    env: &Env,
    ids: &[ApplyId],
    what: &str,
    done: impl Fn(&store_support::RowView) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut all = true;
        for id in ids {
            all &= done(&env.row(*id).await);
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn waiting_applies_hold_no_driver(env: Env, drivers: usize, waiting: usize) {
    let engine = Arc::new(SharedFakeEngines {
        engines: Arc::new(Mutex::new(FakeEngines::new(quick()))),
        clock: Arc::new(MonotonicClock::default()),
        host: 1,
    });
    let rt = Arc::new(Runtime::new(
        env.store.clone(),
        engine,
        RuntimeConfig {
            owner_prefix: "p1".into(),
            drivers,
            poll_interval: Duration::from_millis(100),
            backoff: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(300),
            shutdown_deadline: Duration::from_secs(2),
            max_commands_per_drive: 1_000_000,
            rules: Rules::default(),
            claim_path: Default::default(),
        },
    ));
    let (stop, shutdown) = watch::channel(false);
    let running = tokio::spawn(rt.clone().run(shutdown));

    let (mut parked, mut watched) = (Vec::new(), Vec::new());
    for i in 0..waiting {
        let (engine, into) = if i % 2 == 0 {
            (EngineKind::PlanetScale, &mut parked)
        } else {
            (EngineKind::Spirit, &mut watched)
        };
        let id = env
            .store
            .submit(deferred_cutover(&format!("wait{i}"), engine))
            .await;
        into.push(id.expect("submit"));
    }
    until_all(
        &env,
        &parked,
        "every PlanetScale apply to park at its cutover",
        |r| r.state == "waiting_for_cutover" && r.owner.is_none(),
    )
    .await;
    until_all(
        &env,
        &watched,
        "every Spirit runner to wait on its sentinel",
        |r| r.state == "waiting_for_cutover" && r.owner.is_some(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while rt.watched() < watched.len() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the watches"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rt.leases_held(),
        watched.len(),
        "a parked wait holds no lease; a watched one keeps its own"
    );

    // More waits than drivers: new work still runs.
    let mut fresh = Vec::new();
    for i in 0..2 {
        let id = env
            .store
            .submit(new_apply(&format!("new{i}"), EngineKind::Spirit))
            .await;
        fresh.push(id.expect("submit"));
    }
    until_all(&env, &fresh, "the new applies to complete", |r| {
        r.state == "completed"
    })
    .await;
    until_all(&env, &parked, "the parked applies to stay parked", |r| {
        r.state == "waiting_for_cutover" && r.owner.is_none()
    })
    .await;
    assert_eq!(rt.watched(), watched.len(), "the watched ones stay watched");

    // The wake time is minutes away: only the request arm can finish the parked ones in time.
    let all: Vec<ApplyId> = parked.iter().chain(&watched).copied().collect();
    for id in &all {
        env.store.request(*id, ControlOp::Cutover).await.unwrap();
    }
    until_all(&env, &all, "the cutovers to complete", |r| {
        r.state == "completed"
    })
    .await;
    assert_eq!((rt.watched(), rt.leases_held()), (0, 0));
    let audit = env.audit().await;
    for id in &parked {
        assert!(
            audit
                .iter()
                .any(|e| e.apply == *id && e.cause.starts_with("park for ")),
            "apply {id} was parked: {audit:?}"
        );
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_four_drivers_four_waiting_cutovers_and_two_new_applies() {
    waiting_applies_hold_no_driver(Env::memory(), 4, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_four_drivers_four_waiting_cutovers_and_two_new_applies() {
    if let Some(env) = Env::mysql().await {
        waiting_applies_hold_no_driver(env, 4, 4).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_drivers_twenty_waiting_cutovers_and_two_new_applies() {
    if let Some(env) = Env::mysql().await {
        waiting_applies_hold_no_driver(env, 2, 20).await;
    }
}
