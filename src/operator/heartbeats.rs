//! One heartbeat per process: every lease the process holds (a drive's, or a watched wait's) is
//! renewed by a single fenced statement per interval (`Store::heartbeat_all`), each lease still
//! fenced by its own epoch. A lease found lost is reported to its holder alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use crate::machine::apply::ApplyId;
use crate::store::{Lease, Store};

/// Tracks the last successful heartbeat of one held lease.
pub struct HeartbeatHealth {
    started: Instant,
    last_ok_ms: AtomicU64,
}

impl HeartbeatHealth {
    pub fn new() -> HeartbeatHealth {
        let h = HeartbeatHealth {
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
        };
        h.mark_ok();
        h
    }
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
    pub fn mark_ok(&self) {
        self.last_ok_ms.store(self.now_ms(), Ordering::SeqCst);
    }
    pub fn age_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.last_ok_ms.load(Ordering::SeqCst))
    }
}

impl Default for HeartbeatHealth {
    fn default() -> Self {
        HeartbeatHealth::new()
    }
}

/// Resolves once the last good heartbeat is older than the presumed-loss bound (the rule is
/// `Rules::presumed_lost`, which the core applies between steps): the watchdog of a drive
/// stuck in an engine call, and of a watched wait.
pub async fn presumed_loss(
    health: &HeartbeatHealth,
    rules: &crate::machine::Rules,
    heartbeat_interval: Duration,
) {
    let bound = rules.params.presumed_loss_ms;
    let every = heartbeat_interval
        .min(Duration::from_millis(bound / 4))
        .max(Duration::from_millis(10));
    while !rules.presumed_lost(health.age_ms()) {
        tokio::time::sleep(every).await;
    }
}

/// One held lease: how its heartbeats fare, and how its holder hears that it was lost.
#[derive(Clone)]
pub struct Held {
    pub lease: Lease,
    pub health: Arc<HeartbeatHealth>,
    pub lost: Arc<Notify>,
}

/// The leases this process holds, by apply and epoch (one lease each: a process may hold
/// several operations of one rollout).
#[derive(Default)]
pub struct Heartbeats {
    held: Mutex<BTreeMap<(ApplyId, u64), Held>>,
}

impl Heartbeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(ApplyId, u64), Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start renewing `lease`; the returned guard stops it when dropped (the drive or watch
    /// ended, or was aborted with its process).
    pub fn hold(self: &Arc<Self>, lease: Lease) -> (Held, Holding) {
        let held = Held {
            lease: lease.clone(),
            health: Arc::new(HeartbeatHealth::new()),
            lost: Arc::new(Notify::new()),
        };
        self.lock().insert((lease.apply, lease.epoch), held.clone());
        (
            held,
            Holding {
                heartbeats: self.clone(),
                lease,
            },
        )
    }

    /// Whether `lease` is still held (not found lost by a heartbeat).
    pub fn holds(&self, lease: &Lease) -> bool {
        self.lock().contains_key(&(lease.apply, lease.epoch))
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One round: renew every held lease in one call. Leases found lost are dropped from the
    /// set and their holders told; on a store error nothing is marked, so the presumed-loss
    /// bound keeps counting.
    pub async fn beat(&self, store: &dyn Store) {
        let held: Vec<Held> = self.lock().values().cloned().collect();
        if held.is_empty() {
            return;
        }
        let leases: Vec<Lease> = held.iter().map(|h| h.lease.clone()).collect();
        let started = Instant::now();
        match store.heartbeat_all(&leases).await {
            Ok(lost) => {
                ::metrics::histogram!("applyd_heartbeat_seconds")
                    .record(started.elapsed().as_secs_f64());
                for h in &held {
                    if lost.contains(&h.lease) {
                        ::metrics::counter!("applyd_lease_losses_total").increment(1);
                        self.lock().remove(&(h.lease.apply, h.lease.epoch));
                        h.lost.notify_one();
                    } else {
                        h.health.mark_ok();
                    }
                }
            }
            Err(e) => warn!(error = %e, leases = leases.len(), "heartbeat failed"),
        }
    }

    /// Renew every held lease each `every`, forever.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.beat(store.as_ref()).await;
        }
    }
}

/// Keeps a lease in the process heartbeat while alive.
pub struct Holding {
    heartbeats: Arc<Heartbeats>,
    lease: Lease,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.heartbeats
            .lock()
            .remove(&(self.lease.apply, self.lease.epoch));
    }
}
