//! The simulated people: what the user submits and asks for, and the heal phase's person
//! who ends every wait for a person.

use super::*;

impl Sim {
    /// What the simulated user submits for plan `i` (the same every time it is sent).
    pub(super) fn new_apply(&self, i: usize) -> NewApply {
        let plan = self.world.applies[i];
        NewApply {
            allow_destructive: false,
            rollout: plan.rollout.map(|shape| shape.plan()),
            target: self.targets[plan.target as usize].clone(),
            engine: plan.engine,
            ddl: ddl(i, plan.bad_ddl, plan.rollout.is_some_and(|r| r.table_steps)),
            options: plan.options,
        }
    }

    /// Submit plan `i` as the simulated user does.
    pub(super) fn send(&self, i: usize) -> Result<applyd::store::Submitted, StoreError> {
        self.store.submit_or_adopt(self.new_apply(i))
    }

    /// The place index of a rollout's deployment (`d1`.. on target `t`), after the targets:
    /// `place_keys` lists each target's `d1`..`dMAX` in turn (computed, not searched: this runs
    /// for every operation after every event).
    pub(super) fn place_of(&self, t: u8, deployment: &str) -> u32 {
        let max = crate::preset::MAX_DEPLOYMENTS as usize;
        let k = deployment
            .strip_prefix('d')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|k| (1..=max).contains(k));
        match k {
            Some(k) => (self.targets.len() + t as usize * max + k - 1) as u32,
            None => u32::MAX,
        }
    }

    pub(super) fn submit(&mut self, i: usize) {
        match self.send(i).map(|s| s.id) {
            Ok(id) => {
                self.ids[i] = Some(id);
                self.last_state[i] = ApplyState::Pending;
                self.record(None, Some(i), Action::Submitted);
                self.check();
            }
            Err(e) => {
                let retry = match e {
                    StoreError::ActiveApplyExists { .. } => 30_000,
                    _ => 5_000,
                };
                self.record(None, None, Action::SubmitDeferred);
                let at = self.now + retry;
                self.at(at, Ev::Submit(i as u8));
            }
        }
    }

    /// Faults stop: crashed workers restart, paused ones resume, the store comes back, and the
    /// simulator starts acting as the human for applies resting in a human wait.
    pub(super) fn heal(&mut self) {
        self.faults_on = false;
        self.record(None, None, Action::FaultsStop);
        self.store_down_until = 0;
        self.store.set_available(true);
        for w in 0..self.preset.workers {
            let wk = &mut self.workers[w as usize];
            wk.hb_stall_until = 0;
            wk.armed = None;
            if !wk.up {
                self.restart(w);
            } else if wk.paused {
                self.resume(w);
            }
        }
        self.at(self.now, Ev::Human);
    }

    /// A control request through the store's request surface, as a user or the simulated human
    /// makes it, recorded whether or not it was accepted.
    pub(super) fn request(&mut self, i: usize, id: ApplyId, op: ControlOp, human: bool) {
        let accepted = self.store.request(id, op).is_ok();
        self.record(
            None,
            Some(i),
            Action::Request {
                op,
                accepted,
                human,
            },
        );
        self.check();
    }

    /// The heal phase's human: every human wait gets the request that ends it, so every apply
    /// must reach a terminal state (a wait nobody can act on is a wedge too).
    pub(super) fn act_as_human(&mut self) {
        for i in 0..self.ids.len() {
            let Some(id) = self.ids[i] else { continue };
            let Some(row) = self.store.row(id) else {
                continue;
            };
            let Some(mut op) = human_release(row.state, &row.options) else {
                continue;
            };
            // A person whose start was refused (the target is busy) gives up instead.
            let start_failed = self
                .store
                .request_status(id, ControlOp::Start)
                .is_some_and(|r| r.status == ControlStatus::Failed);
            if op == ControlOp::Start && row.state == ApplyState::Stopped && start_failed {
                op = ControlOp::Cancel;
            }
            if self.store.pending_controls(id).has(op) {
                continue;
            }
            self.request(i, id, op, true);
        }
    }
}
