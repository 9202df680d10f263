//! One poller per process: an idle process reads the store once per poll interval whatever its
//! driver count, and new work is still claimed at once on a wake-up. Virtual time (tokio's
//! paused clock), so a minute of polling takes no wall time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use applyd::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use applyd::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind, Rules};
use applyd::operator::{Runtime, RuntimeConfig};
use applyd::store::memory::{Clock, MemoryStore, MonotonicClock};
use applyd::store::{
    Claimed, DriveInputs, Lease, NewApply, RequestOutcome, Store, StoreError, Target,
};
use applyd::worker::ResumeState;
use tokio::sync::watch;

/// The memory store, counting every call by method.
struct Counting {
    inner: Arc<MemoryStore>,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counting {
    fn count(&self, method: &'static str) {
        *self.calls.lock().unwrap().entry(method).or_default() += 1;
    }
    fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn submit_or_adopt(&self, new: NewApply) -> Result<applyd::store::Submitted, StoreError> {
        self.count("submit");
        self.inner.submit_or_adopt(new)
    }
    async fn claim(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        self.count("claim");
        self.inner.claim(owner)
    }
    async fn claim_operation(&self, owner: &str) -> Result<Option<Claimed>, StoreError> {
        self.count("claim_operation");
        self.inner.claim_operation(owner)
    }
    async fn load(&self, lease: &Lease) -> Result<DriveInputs, StoreError> {
        self.count("load");
        self.inner.load(lease)
    }
    async fn write(
        &self,
        lease: &Lease,
        to: ApplyState,
        r: ResumeState,
        why: Option<String>,
    ) -> Result<(), StoreError> {
        self.count("write");
        self.inner.write(lease, to, r, why.as_deref())
    }
    async fn complete_request(&self, lease: &Lease, op: ControlOp) -> Result<(), StoreError> {
        self.count("complete_request");
        Store::complete_request(self.inner.as_ref(), lease, op).await
    }
    async fn fail_request(&self, l: &Lease, op: ControlOp, why: &str) -> Result<(), StoreError> {
        self.count("fail_request");
        Store::fail_request(self.inner.as_ref(), l, op, why).await
    }
    async fn heartbeat(&self, lease: &Lease) -> Result<(), StoreError> {
        self.count("heartbeat");
        self.inner.heartbeat(lease)
    }
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.count("release");
        self.inner.release(lease)
    }
    async fn park(&self, lease: &Lease) -> Result<(), StoreError> {
        self.count("park");
        self.inner.park(lease)
    }
    async fn pending_requests(&self, applies: &[u64]) -> Result<Vec<u64>, StoreError> {
        self.count("pending_requests");
        self.inner.pending_requests(applies)
    }
    async fn request(&self, apply: u64, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        self.count("request");
        self.inner.request(apply, op)
    }
    async fn expire_retryable(&self) -> Result<u32, StoreError> {
        self.count("expire_retryable");
        self.inner.expire_retryable()
    }
    async fn may_have_work(&self) -> Result<bool, StoreError> {
        self.count("may_have_work");
        self.inner.may_have_work()
    }
    async fn fail_apply(&self, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        self.count("fail_apply");
        self.inner.fail_apply(lease, reason)
    }
    async fn record_progress(
        &self,
        lease: &Lease,
        progress: &applyd::store::progress::TaskProgress,
    ) -> Result<(), StoreError> {
        self.count("record_progress");
        self.inner.record_progress(lease, progress)
    }
}

/// A process polling every second on the counting store, over the fake engines.
fn polling_runtime(
    store: Arc<Counting>,
    clock: Arc<dyn Clock>,
    owner: &str,
    drivers: usize,
) -> Arc<Runtime> {
    let engine = Arc::new(SharedFakeEngines {
        engines: Arc::new(Mutex::new(FakeEngines::new(FakeTimings::fast()))),
        clock,
        host: 1,
    });
    Arc::new(Runtime::new(
        store,
        engine,
        RuntimeConfig {
            owner_prefix: owner.into(),
            drivers,
            poll_interval: Duration::from_secs(1),
            backoff: Duration::from_millis(100),
            heartbeat_interval: Duration::from_secs(2),
            shutdown_deadline: Duration::from_secs(1),
            max_commands_per_drive: 100_000,
            rules: Rules::default(),
            claim_path: Default::default(),
        },
    ))
}

#[tokio::test(start_paused = true)]
async fn an_idle_process_polls_once_per_interval_whatever_its_driver_count() {
    for drivers in [1, 4, 16] {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let memory = Arc::new(MemoryStore::new(Rules::default(), clock.clone()));
        let store = Arc::new(Counting {
            inner: memory.clone(),
            calls: Mutex::default(),
        });
        let rt = polling_runtime(store.clone(), clock, "idle", drivers);
        let (stop, shutdown) = watch::channel(false);
        let pool = tokio::spawn(rt.clone().run(shutdown));

        tokio::time::sleep(Duration::from_millis(60_500)).await;
        let idle = store.calls();
        // One read at start, then one per second: 61 in 60.5 s, and nothing else.
        assert_eq!(
            idle,
            BTreeMap::from([("may_have_work", 61)]),
            "{drivers} drivers"
        );

        // A submit in this process wakes the poller: the apply is claimed without waiting for
        // the next poll.
        let id = memory
            .submit(NewApply {
                allow_destructive: false,
                rollout: None,
                target: Target {
                    database: "db".into(),
                    environment: "prod".into(),
                },
                engine: EngineKind::Spirit,
                ddl: vec!["ALTER TABLE t ADD COLUMN c INT".into()],
                options: ApplyOptions::default(),
            })
            .unwrap();
        rt.wake.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_ne!(
            memory.row(id).unwrap().state,
            ApplyState::Pending,
            "{drivers} drivers: {:?}",
            store.calls()
        );
        let _ = stop.send(true);
        pool.await.unwrap();
    }
}

/// Twenty applies parked at a deferred cutover cost an idle process nothing but its one read per
/// poll, and with both drivers free two new applies are claimed within one poll interval (no
/// wake-up: the poll finds them).
#[tokio::test(start_paused = true)]
async fn parked_waits_cost_a_poll_nothing_and_new_work_starts_within_one_interval() {
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let memory = Arc::new(MemoryStore::new(Rules::default(), clock.clone()));
    let apply = |db: String, engine, defer_cutover| NewApply {
        allow_destructive: false,
        rollout: None,
        target: Target {
            database: db,
            environment: "prod".into(),
        },
        engine,
        ddl: vec!["ALTER TABLE t ADD COLUMN c INT".into()],
        options: ApplyOptions {
            defer_cutover,
            ..Default::default()
        },
    };
    // Twenty waits for a person, each taken to its gate by an owner that then parked it.
    for i in 0..20 {
        let id = memory
            .submit(apply(format!("wait{i}"), EngineKind::PlanetScale, true))
            .unwrap();
        let c = memory.claim("earlier").unwrap().expect("claimable");
        assert_eq!(c.lease.apply, id);
        memory
            .write(
                &c.lease,
                ApplyState::WaitingForCutover,
                ResumeState::default(),
                None,
            )
            .unwrap();
        memory.park(&c.lease).unwrap();
    }
    let store = Arc::new(Counting {
        inner: memory.clone(),
        calls: Mutex::default(),
    });
    let rt = polling_runtime(store.clone(), clock, "waits", 2);
    let (stop, shutdown) = watch::channel(false);
    let pool = tokio::spawn(rt.clone().run(shutdown));
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(
        store.calls(),
        BTreeMap::from([("may_have_work", 11)]),
        "twenty parked waits add nothing to an idle poll"
    );
    let fresh: Vec<_> = (0..2)
        .map(|i| {
            memory
                .submit(apply(format!("new{i}"), EngineKind::Spirit, false))
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for id in fresh {
        assert_ne!(
            memory.row(id).unwrap().state,
            ApplyState::Pending,
            "apply {id} was not claimed within one poll interval: {:?}",
            store.calls()
        );
    }
    let _ = stop.send(true);
    pool.await.unwrap();
}
