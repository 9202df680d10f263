//! Driving a world step by step from a schedule exported by the model (see `schedule`).

use super::*;

impl Sim {
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    pub fn submit_all_now(&mut self) {
        for i in 0..self.world.applies.len() {
            self.submit(i);
        }
    }

    pub(super) fn worker_of(st: &crate::schedule::ScheduleStep) -> Result<u8, String> {
        st.worker
            .ok_or_else(|| "the step names no worker".to_string())
    }

    /// One schedule step; an error means the step could not be taken as written.
    pub fn apply_step(
        &mut self,
        st: &crate::schedule::ScheduleStep,
        plan: Option<usize>,
    ) -> Result<(), String> {
        self.now += st.advance_ms.unwrap_or(0);
        self.clock.set(self.now);
        self.events += 1;
        match st.action.as_str() {
            "claim" | "step" => {
                let w = Self::worker_of(st)?;
                let wk = &self.workers[w as usize];
                if !wk.up || wk.paused {
                    return Err(format!("worker {w} is not running"));
                }
                if wk.driver.lease().is_none() {
                    self.claim(w);
                    if self.workers[w as usize].driver.lease().is_none() {
                        return Err(format!("worker {w} found nothing to claim"));
                    }
                } else if st.action == "step" {
                    self.heartbeat(w);
                    if self.workers[w as usize].driver.lease().is_some() {
                        self.drive_step(w);
                    }
                }
            }
            "submit" => {
                let i = plan.ok_or("the submit names no known apply")?;
                if self.ids[i].is_some() {
                    return Err("the apply was already submitted".into());
                }
                self.submit(i);
                if self.ids[i].is_none() {
                    return Err("the store refused the submission (target busy)".into());
                }
            }
            "crash" => {
                let w = Self::worker_of(st)?;
                if !self.crash(w) {
                    return Err(format!("worker {w} is already down"));
                }
                self.record(
                    Some(w),
                    None,
                    Action::Fault(Fault::Crash {
                        worker: w,
                        down_ms: 0,
                    }),
                );
                // The model restarts a crashed worker at once, with an empty memory; a separate
                // `restart` step (hand-written schedules) is then a no-op.
                self.restart(w);
            }
            "restart" => {
                let w = Self::worker_of(st)?;
                if !self.workers[w as usize].up {
                    self.restart(w);
                }
            }
            "pause" => {
                let w = Self::worker_of(st)?;
                if !self.pause(w) {
                    return Err(format!("worker {w} is not running"));
                }
                self.record(
                    Some(w),
                    None,
                    Action::Fault(Fault::Pause {
                        worker: w,
                        for_ms: 0,
                    }),
                );
            }
            "resume" => {
                let w = Self::worker_of(st)?;
                if !self.workers[w as usize].paused {
                    return Err(format!("worker {w} is not paused"));
                }
                self.resume(w);
            }
            "tick" | "heartbeat" => {
                if let Some(w) = st.worker {
                    let wk = &self.workers[w as usize];
                    if wk.up && !wk.paused {
                        self.heartbeat(w);
                    }
                }
            }
            "request" => {
                let i = plan.ok_or("the request names no known apply")?;
                let op = st.request.ok_or("the request names no operation")?;
                let id = self.ids[i].ok_or("the apply was never submitted")?;
                self.request(i, id, op, false);
            }
            "drift" => {
                let i = plan.ok_or("the drift names no known apply")?;
                if self.ids[i].is_none() {
                    return Err("the apply was never submitted".into());
                }
                self.inject(Fault::ChangeDrifts { apply: i as u8 });
            }
            "wake" => {
                let i = plan.ok_or("the wake names no known apply")?;
                let id = self.ids[i].ok_or("the apply was never submitted")?;
                let woken = match st.operation {
                    Some(k) => self.store.wake_parked_operation(id, k as usize - 1),
                    None => self.store.wake_parked(id),
                };
                if !woken {
                    return Err(format!("apply {id} is not parked"));
                }
            }
            "expire" => {
                let n = self.store.expire_retryable().unwrap_or(0);
                self.record(None, None, Action::Expired(n));
            }
            other => return Err(format!("unknown action {other:?}")),
        }
        self.check();
        Ok(())
    }

    /// Whether the store shows what the schedule says the step led to.
    pub fn compare(
        &self,
        st: &crate::schedule::ScheduleStep,
        plan: Option<usize>,
    ) -> Option<String> {
        let id = plan.and_then(|i| self.ids[i]).or_else(|| {
            st.worker
                .and_then(|w| self.workers[w as usize].driver.lease().map(|l| l.apply))
        })?;
        let row = self.store.row(id)?;
        // A rollout's step names its operation: its state and epoch are the operation's.
        let (what, state, epoch) = match st.operation {
            Some(k) => {
                let op = row.operations.get((k as usize).checked_sub(1)?)?;
                (
                    format!("apply {id} operation {k}"),
                    op.state,
                    op.lease_epoch,
                )
            }
            None => (format!("apply {id}"), row.state, row.lease_epoch),
        };
        let mut out = Vec::new();
        if let Some(want) = st.state_after {
            if want != state {
                out.push(format!("{what} is {state} (schedule: {want})"));
            }
        }
        if let Some(want) = st.epoch_after {
            if want != epoch {
                out.push(format!("{what} epoch {epoch} (schedule: {want})"));
            }
        }
        (!out.is_empty()).then(|| out.join(", "))
    }

    /// After a schedule's steps: drop every pending timer, then run the heal phase.
    pub fn heal_after_steps(mut self) -> Outcome {
        if self.failure.is_none() {
            self.queue.clear();
            for w in 0..self.preset.workers {
                let wk = &mut self.workers[w as usize];
                wk.gen += 1;
                let gen = wk.gen;
                if wk.up && !wk.paused {
                    let owns = wk.driver.lease().is_some();
                    self.at(self.now, Ev::Step(w, gen));
                    if owns {
                        self.at(self.now, Ev::Heartbeat(w, gen));
                    }
                }
            }
            for i in 0..self.ids.len() {
                if self.ids[i].is_none() {
                    self.at(self.now, Ev::Submit(i as u8));
                }
            }
            self.at(self.now + EXPIRE_EVERY_MS, Ev::Expire);
            self.deadline = self.now + self.preset.heal_ms;
            self.heal();
            if !self.all_terminal() {
                self.event_loop();
            }
        }
        self.finish()
    }
}
