//! The properties: the shared invariants over facts built from the compact state, reclaimability
//! and what counts as settled.

use super::*;

impl ApplydModel {
    /// The facts the shared state invariants look at.
    pub fn facts(&self, s: &State) -> (Vec<ApplyFacts>, BTreeMap<u32, u32>) {
        let mut facts = Vec::with_capacity(self.applies());
        let mut runners = BTreeMap::new();
        for a in 0..self.applies() {
            let row = &s.rows[a];
            let spec = self.spec(a);
            let e = &s.eng[a];
            if e.runner.is_some() {
                *runners.entry(spec.target as u32).or_insert(0) += 1;
            }
            if !row.present {
                continue;
            }
            // A rollout's operations hold their deployments while the rollout is active.
            let (holds_target, controls) = match self.cfg.rollout {
                Some(_) => (s.parent.state.is_active(), s.parent.controls.get()),
                None => (row.state.is_active(), row.controls.get()),
            };
            facts.push(ApplyFacts {
                id: a as u32 + 1,
                target: spec.target as u32,
                engine: spec.engine,
                state: row.state,
                holds_target,
                attempt: row.attempt as u32,
                controls,
                deploy_requests_created: e.drs as u32,
                engine_truth: engine::truth(spec.engine, e),
                runner_alive: e.runner.is_some(),
            });
        }
        (facts, runners)
    }

    pub fn world_violation(&self, s: &State) -> Option<Violation> {
        let (facts, runners) = self.facts(s);
        check_world(&facts, &runners, self.rules.params.retry_budget).err()
    }

    pub fn step_violation(&self, s: &State) -> Option<Violation> {
        let (_, f) = s.flaw?;
        match f {
            Flaw::LegalStep(e, from, to) => legal_step(e, from, to).err(),
            Flaw::StaleWrite { row, writer } => stale_write(row as u64, writer as u64).err(),
            Flaw::StopDominance(c, e, call) => stop_dominance(&c, e, call).err(),
            Flaw::CutoverGate(c, t) => cutover_after_gate(c, t).err(),
            Flaw::Justified(op, st) => justified_completion(op, st).err(),
            Flaw::RanDriftedChange(call) => reviewed_change_only(call, false).err(),
            Flaw::Rollout {
                before,
                members_before,
                after,
                members_after,
                parent,
            } => applyd::machine::invariants::rollout_step(
                &self.policy(&crate::state::Parent {
                    latches: before,
                    ..s.parent
                }),
                &self.members_of(&members_before),
                &self.policy(&crate::state::Parent {
                    latches: after,
                    ..s.parent
                }),
                &self.members_of(&members_after),
                parent,
            )
            .err(),
        }
    }

    /// Whether a live driver holds apply `a` under its current epoch.
    pub fn owned(&self, s: &State, a: usize) -> bool {
        s.workers.iter().any(|w| {
            matches!(w, Worker::Driving { apply, epoch, .. }
                if *apply as usize == a && *epoch == s.rows[a].epoch)
        })
    }

    /// Every apply whose owner is dead and whose lease is free is matched by a claim arm (or
    /// by retry expiry), unless it rests in a terminal or human-wait state. A parked apply is
    /// judged at its wake time, and, with a request pending, at once: a request to a parked
    /// wait is taken by the next claim.
    pub fn unreclaimable(&self, s: &State) -> Option<Violation> {
        for a in 0..self.applies() {
            let row = &s.rows[a];
            let spec = self.spec(a);
            if !row.present || self.owned(s, a) {
                continue;
            }
            let parked = self.claim_view(s, a, row);
            let asked = parked.is_parked() && parked.asks_now;
            if asked && self.claim_of(s, a, row).is_none() {
                return Some(Violation {
                    invariant: RECLAIMABLE,
                    detail: format!(
                        "{} (parked) with a request pending, and no claim arm takes it",
                        self.unit_text(s, a)
                    ),
                });
            }
            // A rollout's operation not started waits for its start gate; whether the gate
            // ever opens is the no-wedge check's.
            if is_settled(row.state, &spec.options)
                || (row.state == ApplyState::Pending
                    && self.start_gate(s, a) != applyd::machine::rollout::StartGate::Open)
            {
                continue;
            }
            let woken = Row {
                resting: false,
                ..*row
            };
            let view = self.claim_view(s, a, &woken);
            if !view.lease_is_free(&self.rules) {
                continue;
            }
            if self.claim_of(s, a, &woken).is_none() && self.rules.retry_expiry(&view).is_none() {
                return Some(Violation {
                    invariant: RECLAIMABLE,
                    detail: format!(
                        "{} with a dead owner and a stale lease, and no claim arm matches it",
                        self.unit_text(s, a)
                    ),
                });
            }
        }
        None
    }

    /// An apply (or a rollout's operation) rests: absent (not submitted yet), terminal, in an
    /// explicit human wait, or not started behind a gate only a person opens or that never
    /// opens.
    pub fn settled(&self, s: &State, a: usize) -> bool {
        if a == self.cfg.applies.len() {
            return self.parent_settled(s);
        }
        !s.rows[a].present
            || is_settled(s.rows[a].state, &self.spec(a).options)
            || self.gate_rests(s, a)
    }

    /// What the no-wedge check follows: every apply (or operation), and a rollout's apply as
    /// a unit of its own after them (index `applies`).
    pub fn units(&self) -> usize {
        self.cfg.applies.len() + usize::from(self.is_rollout())
    }

    /// A rollout's apply rests: not submitted, terminal, in a human wait, or paused (held for a
    /// person's release).
    fn parent_settled(&self, s: &State) -> bool {
        !s.rows[0].present
            || s.parent.state == ApplyState::Paused
            || is_settled(s.parent.state, &self.spec(0).options)
    }

    /// A unit's name and state, for a wedge's report.
    pub fn unit_text(&self, s: &State, a: usize) -> String {
        if a == self.cfg.applies.len() {
            format!("the rollout is {}", s.parent.state)
        } else if self.is_rollout() {
            format!("operation {} is {}", a + 1, s.rows[a].state)
        } else {
            format!("apply {} is {}", a + 1, s.rows[a].state)
        }
    }

    /// The world invariants, and a finished rollout's (`rollout_no_orphan`).
    pub fn world_or_orphan_violation(&self, s: &State) -> Option<Violation> {
        self.world_violation(s).or_else(|| self.orphan_violation(s))
    }

    pub fn any_violation(&self, s: &State) -> Option<Violation> {
        self.step_violation(s)
            .or_else(|| self.world_or_orphan_violation(s))
            .or_else(|| self.unreclaimable(s))
    }
}
