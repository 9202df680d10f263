//! Fault injection: crashes, pauses, stalls, lost replies, outages and the rest, as the seed
//! draws them.

use super::*;

impl Sim {
    pub(super) fn inject(&mut self, f: Fault) {
        let now = self.now;
        let mut plan = None;
        let mut worker = None;
        match f {
            Fault::Crash { worker: w, down_ms } => {
                worker = Some(w);
                if !self.crash(w) {
                    return;
                }
                let gen = self.workers[w as usize].gen;
                self.at(now + down_ms, Ev::Restart(w, gen));
            }
            Fault::Pause { worker: w, for_ms } => {
                worker = Some(w);
                if !self.pause(w) {
                    return;
                }
                let gen = self.workers[w as usize].gen;
                self.at(now + for_ms, Ev::Resume(w, gen));
            }
            Fault::HeartbeatStall { worker: w, for_ms } => {
                worker = Some(w);
                let wk = &mut self.workers[w as usize];
                wk.hb_stall_until = wk.hb_stall_until.max(now + for_ms);
            }
            Fault::LoseReply { worker: w } => {
                worker = Some(w);
                self.workers[w as usize].armed = Some(InjectedFault::ReplyLost);
            }
            Fault::EngineError { worker: w } => {
                worker = Some(w);
                self.workers[w as usize].armed = Some(InjectedFault::Unreachable);
            }
            Fault::StoreOutage { for_ms } => {
                self.store.set_available(false);
                self.store_down_until = self.store_down_until.max(now + for_ms);
                self.at(now + for_ms, Ev::StoreUp);
            }
            Fault::DeployRequestError { apply } | Fault::DeployRequestDeleted { apply } => {
                let i = apply as usize;
                plan = Some(i);
                if let Some(id) = self.ids[i] {
                    let ops = self.operations_of(id);
                    let drs: Vec<u64> = self
                        .engines
                        .planetscale
                        .requests
                        .values()
                        // Only live requests fail or vanish; a finished change stays finished.
                        .filter(|r| {
                            ops.contains(&r.operation)
                                && !matches!(
                                    r.state.engine_state(),
                                    None | Some(
                                        EngineState::Completed
                                            | EngineState::Reverted
                                            | EngineState::Cancelled
                                            | EngineState::Failed
                                    )
                                )
                        })
                        .map(|r| r.id)
                        .collect();
                    for dr in drs {
                        self.engine_faulted[i] = true;
                        if matches!(f, Fault::DeployRequestError { .. }) {
                            self.engines.planetscale.fail_request(dr, now);
                        } else {
                            self.engines.planetscale.delete_request(dr);
                        }
                    }
                }
            }
            Fault::RunnerFails { apply, retryable } => {
                let i = apply as usize;
                plan = Some(i);
                if let Some(id) = self.ids[i] {
                    for op in self.operations_of(id) {
                        if self.engines.spirit.fail_runner(now, op, retryable) {
                            self.engine_faulted[i] = true;
                        }
                    }
                }
            }
            Fault::ChangeDrifts { apply } => {
                let i = apply as usize;
                plan = Some(i);
                let Some(id) = self.ids[i] else {
                    return;
                };
                // Still a valid change, so only the fingerprint can tell.
                let altered = vec![format!("ALTER TABLE users ADD COLUMN altered{i} INT")];
                if self.store.alter_stored_ddl(id, altered) {
                    self.drifted[i] = true;
                }
            }
            Fault::Resubmit { apply } => {
                let i = apply as usize;
                plan = Some(i);
                let Some(id) = self.ids[i] else {
                    return;
                };
                let target = &self.targets[self.world.applies[i].target as usize];
                // The apply holding the plan's first place: its target, or for a rollout the
                // target's first deployment.
                let first_place = if self.world.applies[i].rollout.is_some() {
                    "d1"
                } else {
                    ""
                };
                let busy_by = self
                    .store
                    .rows()
                    .into_iter()
                    .find(|r| {
                        r.state.is_active()
                            && r.spec.target == *target
                            && r.operations.iter().any(|o| o.deployment == first_place)
                    })
                    .map(|r| r.id);
                // With the target free the submission would rightly start a new apply; the
                // simulator keeps its one apply per plan and leaves that case to the tests.
                let Some(holder) = busy_by else {
                    return;
                };
                let (answered, named) = match self.send(i) {
                    Ok(done) => (Some((done.id, done.adopted)), None),
                    Err(StoreError::ActiveApplyExists { existing, .. }) => (None, Some(existing)),
                    // An outage refuses everything; nothing to check.
                    Err(_) => return,
                };
                self.violated(resubmission_adopts(id, answered, named, holder == id));
            }
            Fault::Request { apply, op } => {
                let i = apply as usize;
                let Some(id) = self.ids[i] else {
                    return;
                };
                self.request(i, id, op, false);
                self.check();
                return;
            }
        }
        self.record(worker, plan, Action::Fault(f));
        self.check();
    }

    /// The process dies with its drive and the Spirit runners it hosts. False if already down.
    pub(super) fn crash(&mut self, w: u8) -> bool {
        let wk = &mut self.workers[w as usize];
        if !wk.up {
            return false;
        }
        wk.up = false;
        wk.paused = false;
        wk.driver.abandon();
        wk.gen += 1;
        // Its watches die with it (the runners below too).
        wk.watches.clear();
        wk.watch_gen += 1;
        wk.watch_timer = false;
        wk.free_since = None;
        let host = wk.driver.host;
        self.engines.crash_host(self.now, host);
        true
    }

    /// The process freezes; its timers fire only after `resume`. False if not running.
    pub(super) fn pause(&mut self, w: u8) -> bool {
        let wk = &mut self.workers[w as usize];
        if !wk.up || wk.paused {
            return false;
        }
        wk.paused = true;
        wk.gen += 1;
        wk.watch_gen += 1;
        wk.watch_timer = false;
        wk.free_since = None;
        true
    }
}
