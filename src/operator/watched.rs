//! Watched waits: a Spirit runner waiting on its sentinel for a person's cutover
//! (`waits::Rest::Watch`) keeps its lease, renewed by the process heartbeat, but holds no driver.
//! Each poll, one round looks at every watched apply: one store read for pending requests, and a
//! local look at each runner. An apply with a request, or whose runner left its gate, goes back
//! to a driver. A lease lost, or presumed lost, ends the watch and the local runner with it
//! (`Engine::abandon`) at once: each watch has a watchdog task of its own, as each drive does,
//! so no store call in a poll can delay it past the bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::heartbeats::{presumed_loss, Heartbeats, Held, Holding};
use super::{AbortOnDrop, RuntimeConfig};
use crate::engine::Engine;
use crate::machine::apply::ApplyId;
use crate::machine::{ApplyState, Probe, Rules};
use crate::store::{Claimed, Store};
use crate::worker::{Observation, RunnerStatus};

/// One watched wait: the claim it was driven under, its place in the heartbeat, and its
/// watchdog (aborted when the watch ends or goes back to a driver, which has its own).
pub struct Watched {
    pub claimed: Claimed,
    pub held: Held,
    pub holding: Holding,
    _watchdog: AbortOnDrop,
}

/// The waits this process watches, by apply and epoch (one lease each: a rollout's operations
/// are watched one by one).
#[derive(Default)]
pub struct Watches {
    watched: Mutex<BTreeMap<(ApplyId, u64), Watched>>,
}

/// What one round found.
#[derive(Default)]
pub struct Round {
    /// To drive again now: a request arrived, or the runner left its gate.
    pub handoffs: Vec<Watched>,
    /// Watches ended because the lease was lost or presumed lost.
    pub ended: usize,
}

impl Watches {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(ApplyId, u64), Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch a wait whose drive just ended with `Finish::Watched`, in `state`.
    pub fn add(
        self: &Arc<Self>,
        mut claimed: Claimed,
        held: Held,
        holding: Holding,
        state: ApplyState,
        engine: Arc<dyn Engine>,
        config: &RuntimeConfig,
    ) {
        claimed.pre_claim = state;
        let lease = claimed.lease.clone();
        info!(
            apply = lease.apply,
            epoch = lease.epoch,
            "watching the runner without a driver"
        );
        let dog = {
            let watches = self.clone();
            let (lost, health) = (held.lost.clone(), held.health.clone());
            let record = claimed.record.clone();
            let (rules, every) = (config.rules, config.heartbeat_interval);
            let lease = lease.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = lost.notified() => warn!(apply = lease.apply, "lease lost while watched; ending the local runner"),
                    _ = presumed_loss(&health, &rules, every) => warn!(
                        apply = lease.apply,
                        presumed_loss_ms = rules.params.presumed_loss_ms,
                        "heartbeats failing past the presumed-loss bound while watched; ending the local runner"
                    ),
                }
                // Only a watch still here: one handed back to a driver aborted this task first.
                if watches.remove(lease.apply, lease.epoch).is_some() {
                    engine.abandon(&record, lease.epoch).await;
                }
            })
        };
        let w = Watched {
            claimed,
            held,
            holding,
            _watchdog: AbortOnDrop(dog.abort_handle()),
        };
        self.lock().insert((lease.apply, lease.epoch), w);
    }

    /// Take the watch of `apply` at `epoch` out, if it is still watched.
    fn remove(&self, apply: ApplyId, epoch: u64) -> Option<Watched> {
        self.lock().remove(&(apply, epoch))
    }

    /// Put back a handoff no driver was free for.
    pub fn put_back(&self, w: Watched) {
        self.lock()
            .insert((w.claimed.lease.apply, w.claimed.lease.epoch), w);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take every watch out (shutdown).
    pub fn drain(&self) -> Vec<Watched> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// One round over every watched wait.
    pub async fn round(
        &self,
        store: &dyn Store,
        engine: &dyn Engine,
        heartbeats: &Heartbeats,
        rules: &Rules,
    ) -> Round {
        let mut round = Round::default();
        let snapshot: Vec<(ApplyId, Claimed, u64)> = self
            .lock()
            .values()
            .map(|w| {
                (
                    w.claimed.lease.apply,
                    w.claimed.clone(),
                    w.held.health.age_ms(),
                )
            })
            .collect();
        if snapshot.is_empty() {
            return round;
        }
        let mut ending = Vec::new();
        let mut handing = Vec::new();
        let mut live = Vec::new();
        for (id, claimed, age) in snapshot {
            if !heartbeats.holds(&claimed.lease) {
                warn!(
                    apply = id,
                    "lease lost while watched; ending the local runner"
                );
                ending.push((id, claimed));
            } else if rules.presumed_lost(age) {
                warn!(
                    apply = id,
                    presumed_loss_ms = rules.params.presumed_loss_ms,
                    "heartbeats failing past the presumed-loss bound while watched; ending the local runner"
                );
                ending.push((id, claimed));
            } else {
                live.push((id, claimed));
            }
        }
        for (id, claimed) in ending {
            if self.remove(id, claimed.lease.epoch).is_some() {
                engine.abandon(&claimed.record, claimed.lease.epoch).await;
                round.ended += 1;
            }
        }
        let ids: Vec<ApplyId> = live.iter().map(|(id, _)| *id).collect();
        let asked = match store.pending_requests(&ids).await {
            Ok(asked) => asked,
            Err(e) => {
                warn!(error = %e, "cannot read requests for watched waits; looking again next poll");
                Vec::new()
            }
        };
        for (id, claimed) in live {
            let at_gate = engine
                .probe(&claimed.record, claimed.lease.epoch, Probe::RunnerStatus)
                .await
                .obs
                == Observation::Runner(RunnerStatus::WaitingOnSentinel);
            if asked.contains(&id) || !at_gate {
                handing.push((id, claimed.lease.epoch));
            }
        }
        let mut map = self.lock();
        for key in handing {
            if let Some(w) = map.remove(&key) {
                round.handoffs.push(w);
            }
        }
        round
    }
}
