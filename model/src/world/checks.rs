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
            facts.push(ApplyFacts {
                id: a as u32 + 1,
                target: spec.target as u32,
                engine: spec.engine,
                state: row.state,
                holds_target: row.state.is_active(),
                attempt: row.attempt as u32,
                controls: row.controls.get(),
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
            let asked = self.claim_view(a, row).is_parked() && self.claim_view(a, row).asks_now;
            if asked && self.claim_of(a, row).is_none() {
                return Some(Violation {
                    invariant: RECLAIMABLE,
                    detail: format!(
                        "apply {} is parked in {} with a request pending, and no claim arm takes it",
                        a + 1,
                        row.state
                    ),
                });
            }
            if is_settled(row.state, &spec.options) {
                continue;
            }
            let woken = Row {
                resting: false,
                ..*row
            };
            let view = self.claim_view(a, &woken);
            if !view.lease_is_free(&self.rules) {
                continue;
            }
            if self.claim_of(a, &woken).is_none() && self.rules.retry_expiry(&view).is_none() {
                return Some(Violation {
                    invariant: RECLAIMABLE,
                    detail: format!(
                        "apply {} is {} with a dead owner and a stale lease, and no claim arm matches it",
                        a + 1,
                        row.state
                    ),
                });
            }
        }
        None
    }

    /// An apply rests: absent (not submitted yet), terminal, or in an explicit human wait.
    pub fn settled(&self, s: &State, a: usize) -> bool {
        !s.rows[a].present || is_settled(s.rows[a].state, &self.spec(a).options)
    }

    pub fn any_violation(&self, s: &State) -> Option<Violation> {
        self.step_violation(s)
            .or_else(|| self.world_violation(s))
            .or_else(|| self.unreclaimable(s))
    }
}
