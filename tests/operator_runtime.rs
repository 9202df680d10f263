//! The tokio runtime on the memory store with the fake engines: a panicking drive fails only its
//! apply and the pool keeps working; failing heartbeats cancel even a hung drive before a peer
//! may reclaim; a graceful shutdown releases leases so a peer claims at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use applyd::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use applyd::engine::{Engine, Reply};
use applyd::machine::{
    ApplyOptions, ApplyState, ControlOp, EngineCall, EngineKind, Params, Probe, Rules,
};
use applyd::operator::{DriveEnd, Runtime, RuntimeConfig};
use applyd::store::memory::{Clock, MemoryStore, MonotonicClock};
use applyd::store::{ApplyRecord, Lease, NewApply, RequestOutcome, Store, StoreError, Target};
use applyd::worker::{Observation, ResumeState};
use tokio::sync::watch;

/// The fake engines, except that any call or probe for an apply on database `boom` panics.
struct PanicsOnBoom(SharedFakeEngines);

#[async_trait::async_trait]
impl Engine for PanicsOnBoom {
    async fn probe(&self, apply: &ApplyRecord, epoch: u64, probe: Probe) -> Reply {
        assert!(apply.spec.target.database != "boom", "engine bug on boom");
        self.0.probe(apply, epoch, probe).await
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> Reply {
        assert!(apply.spec.target.database != "boom", "engine bug on boom");
        self.0.call(apply, epoch, call).await
    }
}

fn rules() -> Rules {
    Rules::new(Params {
        stale_after_ms: 3_000,
        presumed_loss_ms: 2_000,
        ..Params::DEFAULT
    })
}

fn new_apply(db: &str, engine: EngineKind) -> NewApply {
    NewApply {
        allow_destructive: false,
        rollout: None,
        target: Target {
            database: db.into(),
            environment: "prod".into(),
        },
        engine,
        ddl: vec!["ALTER TABLE t ADD COLUMN c INT".into()],
        options: ApplyOptions {
            skip_revert: true,
            ..Default::default()
        },
    }
}

fn runtime(
    name: &str,
    store: Arc<MemoryStore>,
    engine: Arc<dyn Engine>,
    rules: Rules,
    shutdown_deadline: Duration,
) -> Arc<Runtime> {
    Arc::new(Runtime::new(
        store,
        engine,
        RuntimeConfig {
            owner_prefix: name.into(),
            drivers: 2,
            poll_interval: Duration::from_millis(50),
            backoff: Duration::from_millis(100),
            heartbeat_interval: Duration::from_millis(200),
            shutdown_deadline,
            max_commands_per_drive: 100_000,
            rules,
            claim_path: Default::default(),
        },
    ))
}

/// Process `p1` with one driver, polling every 50 ms and heartbeating every 200 ms.
fn one_driver(store: Arc<dyn Store>, engine: Arc<dyn Engine>, rules: Rules) -> Arc<Runtime> {
    Arc::new(Runtime::new(
        store,
        engine,
        RuntimeConfig {
            owner_prefix: "p1".into(),
            drivers: 1,
            poll_interval: Duration::from_millis(50),
            backoff: Duration::from_millis(100),
            heartbeat_interval: Duration::from_millis(200),
            shutdown_deadline: Duration::from_secs(1),
            max_commands_per_drive: 100_000,
            rules,
            claim_path: Default::default(),
        },
    ))
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_drive_fails_only_its_apply_and_the_pool_keeps_working() {
    let rules = rules();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let store = Arc::new(MemoryStore::new(rules, clock.clone()));
    let fakes = Arc::new(Mutex::new(FakeEngines::new(FakeTimings::fast())));
    let engine = Arc::new(PanicsOnBoom(SharedFakeEngines {
        engines: fakes.clone(),
        clock,
        host: 1,
    }));
    let boom = store.submit(new_apply("boom", EngineKind::Spirit)).unwrap();
    let fine = store
        .submit(new_apply("fine", EngineKind::PlanetScale))
        .unwrap();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let rt = runtime("p1", store.clone(), engine, rules, Duration::from_secs(1));
    let pool = tokio::spawn(rt.clone().run(shutdown));

    wait_for(
        "the panicking apply to fail",
        Duration::from_secs(20),
        || store.row(boom).unwrap().state == ApplyState::Failed,
    )
    .await;
    wait_for(
        "the healthy apply to complete",
        Duration::from_secs(30),
        || store.row(fine).unwrap().state == ApplyState::Completed,
    )
    .await;
    // The pool still claims new work after the panic.
    let later = store
        .submit(new_apply("later", EngineKind::Spirit))
        .unwrap();
    rt.wake.notify_waiters();
    wait_for(
        "an apply submitted after the panic",
        Duration::from_secs(30),
        || store.row(later).unwrap().state == ApplyState::Completed,
    )
    .await;
    assert!(!pool.is_finished(), "the pool survived the panic");

    // Failed once, not retried in a loop: exactly one claim of the panicking apply.
    let claims = store
        .audit()
        .iter()
        .filter(|e| e.apply == boom && e.cause.starts_with("claim"))
        .count();
    assert_eq!(claims, 1, "{:#?}", store.audit());
    let row = store.row(boom).unwrap();
    assert!(
        row.error_message
            .as_deref()
            .is_some_and(|m| m.contains("engine bug on boom")),
        "the panic is recorded on the apply: {:?}",
        row.error_message
    );

    shutdown_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), pool)
        .await
        .expect("the pool stops after shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_the_lease_so_a_peer_claims_at_once() {
    let rules = rules();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let store = Arc::new(MemoryStore::new(rules, clock.clone()));
    // A copy long enough to be in flight when the shutdown comes.
    let fakes = Arc::new(Mutex::new(FakeEngines::new(FakeTimings {
        spirit_rows: 10_000_000,
        ..FakeTimings::fast()
    })));
    let engine = Arc::new(SharedFakeEngines {
        engines: fakes,
        clock,
        host: 1,
    });
    let id = store
        .submit(new_apply("copying", EngineKind::Spirit))
        .unwrap();
    let (shutdown_tx, shutdown) = watch::channel(false);
    let rt = runtime(
        "p1",
        store.clone(),
        engine,
        rules,
        Duration::from_millis(300),
    );
    let pool = tokio::spawn(rt.run(shutdown));
    wait_for("the copy to run", Duration::from_secs(20), || {
        store.row(id).unwrap().state == ApplyState::Running
    })
    .await;
    let epoch = store.row(id).unwrap().lease_epoch;

    shutdown_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), pool)
        .await
        .expect("the pool stops within its shutdown deadline")
        .unwrap();
    let row = store.row(id).unwrap();
    assert_eq!(
        row.state,
        ApplyState::Running,
        "shutdown does not change state"
    );
    assert_eq!(row.lease_owner, None, "the lease was released");

    // Well inside stale-after (3 s), a peer claims it.
    let claimed = store
        .claim("p2/driver-0")
        .unwrap()
        .expect("a released apply is claimable at once");
    assert_eq!(claimed.lease.apply, id);
    assert!(claimed.lease.epoch > epoch);
}

/// The memory store, except that every heartbeat fails as if the database were unreachable.
struct HeartbeatsFail(Arc<MemoryStore>);

#[async_trait::async_trait]
impl applyd::store::Store for HeartbeatsFail {
    async fn submit_or_adopt(&self, new: NewApply) -> Result<applyd::store::Submitted, StoreError> {
        self.0.submit_or_adopt(new)
    }
    async fn claim(&self, owner: &str) -> Result<Option<applyd::store::Claimed>, StoreError> {
        self.0.claim(owner)
    }
    async fn claim_operation(
        &self,
        owner: &str,
    ) -> Result<Option<applyd::store::Claimed>, StoreError> {
        self.0.claim_operation(owner)
    }
    async fn load(&self, lease: &Lease) -> Result<applyd::store::DriveInputs, StoreError> {
        self.0.load(lease)
    }
    async fn write(
        &self,
        lease: &Lease,
        to: ApplyState,
        r: ResumeState,
        why: Option<String>,
    ) -> Result<(), StoreError> {
        self.0.write(lease, to, r, why.as_deref())
    }
    async fn complete_request(&self, lease: &Lease, op: ControlOp) -> Result<(), StoreError> {
        Store::complete_request(self.0.as_ref(), lease, op).await
    }
    async fn fail_request(&self, l: &Lease, op: ControlOp, why: &str) -> Result<(), StoreError> {
        Store::fail_request(self.0.as_ref(), l, op, why).await
    }
    async fn heartbeat(&self, _lease: &Lease) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.0.release(lease)
    }
    async fn park(&self, lease: &Lease) -> Result<(), StoreError> {
        self.0.park(lease)
    }
    async fn pending_requests(&self, applies: &[u64]) -> Result<Vec<u64>, StoreError> {
        self.0.pending_requests(applies)
    }
    async fn request(&self, apply: u64, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        self.0.request(apply, op)
    }
    async fn expire_retryable(&self) -> Result<u32, StoreError> {
        self.0.expire_retryable()
    }
    async fn may_have_work(&self) -> Result<bool, StoreError> {
        self.0.may_have_work()
    }
    async fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        self.0.fail_apply(lease, reason)
    }
    async fn record_progress(
        &self,
        lease: &Lease,
        progress: &applyd::store::progress::TaskProgress,
    ) -> Result<(), StoreError> {
        self.0.record_progress(lease, progress)
    }
}

/// An engine whose calls never answer (a hung API or runner), counting them.
struct Hangs(std::sync::atomic::AtomicU32);

#[async_trait::async_trait]
impl Engine for Hangs {
    async fn probe(&self, _: &ApplyRecord, _: u64, _: Probe) -> Reply {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending().await
    }
    async fn call(&self, _: &ApplyRecord, _: u64, _: EngineCall) -> Reply {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_heartbeats_cancel_a_hung_drive_before_a_peer_may_reclaim() {
    let rules = rules();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let memory = Arc::new(MemoryStore::new(rules, clock));
    let id = memory
        .submit(new_apply("hung", EngineKind::Spirit))
        .unwrap();
    let engine = Arc::new(Hangs(Default::default()));
    let rt = one_driver(
        Arc::new(HeartbeatsFail(memory.clone())),
        engine.clone(),
        rules,
    );
    let claimed = memory.claim("p1/driver-0").unwrap().expect("claimable");
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), rt.drive_claimed(claimed, shutdown))
        .await
        .expect("the drive ends by itself");
    let took = started.elapsed();
    assert_eq!(end, DriveEnd::PresumedLost);
    let bound = Duration::from_millis(rules.params.presumed_loss_ms);
    let stale = Duration::from_millis(rules.params.stale_after_ms);
    assert!(took >= bound && took < stale, "ended after {took:?}");
    assert!(
        engine.0.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the call was in flight"
    );
    let row = memory.row(id).unwrap();
    assert_eq!(
        (row.state, row.lease_epoch),
        (ApplyState::Running, 1),
        "nothing was written after the heartbeats began to fail"
    );
}

/// A watched Spirit wait (a runner waiting on its sentinel for a person's cutover) holds no
/// driver but keeps its lease; when the heartbeats fail past the presumed-loss bound, the watch
/// ends and the local runner with it, before a peer may reclaim, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_runner_dies_with_its_presumed_lost_lease() {
    let rules = rules();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let memory = Arc::new(MemoryStore::new(rules, clock.clone()));
    let fakes = Arc::new(Mutex::new(FakeEngines::new(FakeTimings {
        spirit_rows: 200,
        ..FakeTimings::fast()
    })));
    let engine = Arc::new(SharedFakeEngines {
        engines: fakes.clone(),
        clock,
        host: 1,
    });
    let mut new = new_apply("watched", EngineKind::Spirit);
    new.options.defer_cutover = true;
    let id = memory.submit(new).unwrap();
    let rt = one_driver(
        Arc::new(HeartbeatsFail(memory.clone())),
        engine.clone(),
        rules,
    );
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let pool = tokio::spawn(rt.clone().run(shutdown));
    wait_for("the runner to be watched", Duration::from_secs(10), || {
        rt.watched() == 1
    })
    .await;
    let started = Instant::now();
    let record = memory.row(id).unwrap().record();
    assert_eq!(
        engine.probe(&record, 1, Probe::RunnerStatus).await.obs,
        Observation::Runner(applyd::worker::RunnerStatus::WaitingOnSentinel)
    );
    wait_for("the watch to end", Duration::from_secs(10), || {
        rt.watched() == 0
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(rules.params.stale_after_ms),
        "ended after {took:?}, past stale-after"
    );
    assert!(matches!(
        engine.probe(&record, 1, Probe::RunnerStatus).await.obs,
        Observation::Runner(applyd::worker::RunnerStatus::Gone(_))
    ));
    let row = memory.row(id).unwrap();
    assert_eq!(
        (row.state, row.lease_epoch),
        (ApplyState::WaitingForCutover, 1),
        "nothing was written once the lease was presumed lost"
    );
    pool.abort();
}

/// A watched wait whose lease is taken by a peer ends its runner at the next poll even while
/// every driver is busy: looking at watched waits never waits for a free driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_runner_dies_with_its_lost_lease_while_every_driver_is_busy() {
    let rules = rules();
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let memory = Arc::new(MemoryStore::new(rules, clock.clone()));
    // Spirit copies finish at once; a PlanetScale deploy takes ten minutes.
    let fakes = Arc::new(Mutex::new(FakeEngines::new(FakeTimings {
        spirit_rows: 200,
        deploy_ms: 600_000,
        ..FakeTimings::fast()
    })));
    let engine = Arc::new(SharedFakeEngines {
        engines: fakes.clone(),
        clock,
        host: 1,
    });
    let mut new = new_apply("watched", EngineKind::Spirit);
    new.options.defer_cutover = true;
    let watched = memory.submit(new).unwrap();
    let rt = one_driver(memory.clone(), engine.clone(), rules);
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let pool = tokio::spawn(rt.clone().run(shutdown));
    wait_for("the runner to be watched", Duration::from_secs(10), || {
        rt.watched() == 1
    })
    .await;
    let busy = memory
        .submit(new_apply("busy", EngineKind::PlanetScale))
        .unwrap();
    wait_for("the one driver to deploy", Duration::from_secs(10), || {
        memory.row(busy).unwrap().state == ApplyState::Running
            && memory.row(busy).unwrap().resume.deploy_request_id.is_some()
    })
    .await;
    // A peer takes the watched apply's lease (as after a partition).
    let mut row = memory.row(watched).unwrap();
    row.lease_epoch += 1;
    row.operations[0].lease_epoch += 1;
    row.lease_owner = Some("peer".into());
    memory.put_row(row);
    wait_for(
        "the watch to end with its lease",
        Duration::from_secs(10),
        || rt.watched() == 0,
    )
    .await;
    let record = memory.row(watched).unwrap().record();
    assert!(matches!(
        engine.probe(&record, 2, Probe::RunnerStatus).await.obs,
        Observation::Runner(applyd::worker::RunnerStatus::Gone(_))
    ));
    assert_eq!(
        memory.row(busy).unwrap().state,
        ApplyState::Running,
        "the driver was busy all along"
    );
    assert_eq!(rt.leases_held(), 1, "only the busy drive's lease is held");
    pool.abort();
}
