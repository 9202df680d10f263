//! Watched waits: a Spirit runner waiting on its sentinel for a person's cutover
//! (`waits::Rest::Watch`) keeps its lease, renewed by the process heartbeat, but holds no driver.
//! Each poll, one round looks at every watched apply: one store read for pending requests, and a
//! local look at each runner. An apply with a request, or whose runner left its gate, goes back
//! to a driver. A lease lost, or presumed lost, ends the watch and the local runner with it
//! (`Engine::abandon`), before a peer may reclaim.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tracing::{info, warn};

use super::heartbeats::{Heartbeats, Held, Holding};
use crate::engine::Engine;
use crate::machine::apply::ApplyId;
use crate::machine::{ApplyState, Probe, Rules};
use crate::store::{Claimed, Store};
use crate::worker::{Observation, RunnerStatus};

/// One watched wait: the claim it was driven under, and its place in the heartbeat.
pub struct Watched {
    pub claimed: Claimed,
    pub held: Held,
    pub holding: Holding,
}

/// The waits this process watches, by apply.
#[derive(Default)]
pub struct Watches {
    watched: Mutex<BTreeMap<ApplyId, Watched>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ApplyId, Watched>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watch a wait whose drive just ended with `Finish::Watched`, in `state`.
    pub fn add(&self, mut w: Watched, state: ApplyState) {
        w.claimed.pre_claim = state;
        info!(
            apply = w.claimed.lease.apply,
            epoch = w.claimed.lease.epoch,
            "watching the runner without a driver"
        );
        self.lock().insert(w.claimed.lease.apply, w);
    }

    /// Put back a handoff no driver was free for.
    pub fn put_back(&self, w: Watched) {
        self.lock().insert(w.claimed.lease.apply, w);
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
            engine.abandon(&claimed.record).await;
            self.lock().remove(&id);
            round.ended += 1;
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
                == Observation::Runner(RunnerStatus::WaitingOnSentinel);
            if asked.contains(&id) || !at_gate {
                handing.push(id);
            }
        }
        let mut map = self.lock();
        for id in handing {
            if let Some(w) = map.remove(&id) {
                round.handoffs.push(w);
            }
        }
        round
    }
}
