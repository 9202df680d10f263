//! The checks after every event and command: the shared invariants over the world, the audit
//! log at the end, and what an unsettled run reports.

use super::*;
use applyd::machine::invariants::{rollout_no_orphan, rollout_step, OperationFacts};

/// What the checks read of one apply's row.
pub(super) enum Seen {
    Single {
        from: ApplyState,
        to: ApplyState,
        options: applyd::machine::ApplyOptions,
        fact: ApplyFacts,
    },
    Rollout(SeenRollout),
}

pub(super) struct SeenRollout {
    id: ApplyId,
    engine: EngineKind,
    state: ApplyState,
    policy: applyd::machine::rollout::RolloutPolicy,
    members: Vec<applyd::machine::rollout::Member>,
    facts: Vec<ApplyFacts>,
    ops: Vec<OperationFacts>,
    resting: u32,
}

impl Sim {
    /// Checks on the command a driver just issued (the pieces the world snapshot cannot see).
    pub(super) fn check_command(
        &mut self,
        id: ApplyId,
        epoch: u64,
        stepped: Stepped,
        heartbeat_age: u64,
    ) {
        let acted = matches!(
            stepped,
            Stepped::Called { .. }
                | Stepped::Wrote { .. }
                | Stepped::FailedClosed { .. }
                | Stepped::Requested {
                    outcome: WriteOutcome::Ok,
                    ..
                }
        );
        let r = lease_loss_bound(heartbeat_age, self.rules.params.presumed_loss_ms, acted);
        self.violated(r);
        // The operation the drive holds: its record and state are what the command acted on
        // (read in place: this runs after every command).
        let Some((record, engine)) = self
            .store
            .with_row(id, |row| {
                row.operation_at(epoch)
                    .map(|k| (row.record_of(k), row.engine))
            })
            .flatten()
        else {
            return;
        };
        match stepped {
            Stepped::Called { call } => {
                let controls = self.store.pending_controls(id);
                self.violated(stop_dominance(&controls, engine, call));
                let plan = self.plan_of(id);
                // The step read the row and called the engine at one instant of virtual time:
                // the DDL it handed over is the one stored now.
                let reviewed = plan.is_none_or(|i| !self.drifted[i]);
                self.violated(reviewed_change_only(call, reviewed));
                let excused = plan.is_some_and(|i| self.engine_faulted[i]);
                if matches!(call, EngineCall::Cutover | EngineCall::DropSentinel) && !excused {
                    let truth = self.engines.truth(&record);
                    self.violated(cutover_after_gate(call, truth));
                }
            }
            Stepped::Requested {
                op,
                completed: true,
                outcome: WriteOutcome::Ok,
            } => self.violated(justified_completion(op, record.row.state)),
            _ => {}
        }
    }

    /// The world invariants, after every event that may have changed the world.
    pub(super) fn check(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let stale = self.store.stale_writes_landed();
        if stale > 0 {
            self.fail(FailureKind::Violation(Violation {
                invariant: STALE_EPOCH_WRITE,
                detail: format!("{stale} write(s) landed with an epoch other than the row's"),
            }));
            return;
        }
        self.facts.clear();
        let mut resting = 0;
        for i in 0..self.ids.len() {
            let Some(id) = self.ids[i] else { continue };
            let controls = self.store.pending_controls(id);
            // Read in place, then judged: rows are not cloned for the checks.
            let Some(seen) = self
                .store
                .with_row(id, |row| self.observe(i, row, controls))
            else {
                continue;
            };
            match seen {
                Seen::Single {
                    from,
                    to,
                    options,
                    fact,
                } => {
                    if let Err(mut v) = legal_step(fact.engine, from, to) {
                        v.detail = format!("apply {id}: {}", v.detail);
                        self.fail(FailureKind::Violation(v));
                        return;
                    }
                    self.last_state[i] = to;
                    if applyd::machine::waits::rest(fact.engine, to, &options).is_some() {
                        resting += 1;
                    }
                    self.facts.push(fact);
                }
                Seen::Rollout(r) => {
                    if let Err(v) = self.judge_rollout(i, r, &mut resting) {
                        self.fail(FailureKind::Violation(v));
                        return;
                    }
                }
            }
        }
        self.peak_waits = self.peak_waits.max(resting);
        let mut runners = BTreeMap::new();
        for (t, key) in self.place_keys.iter().enumerate() {
            runners.insert(t as u32, self.engines.spirit.runners_on(key) as u32);
        }
        let r = check_world(&self.facts, &runners, self.rules.params.retry_budget);
        self.violated(r);
        self.stamp_starvation();
    }

    /// What the checks need of apply `i`'s row, read under the store's lock (no store calls).
    fn observe(
        &self,
        i: usize,
        row: &applyd::store::memory::MemoryRow,
        controls: applyd::machine::PendingControls,
    ) -> Seen {
        let target = self.world.applies[i].target;
        let Some(policy) = row.rollout else {
            let operation = row.operations[0].id;
            return Seen::Single {
                from: self.last_state[i],
                to: row.state,
                options: row.options,
                fact: ApplyFacts {
                    id: row.id as u32,
                    target: target as u32,
                    engine: row.engine,
                    state: row.state,
                    holds_target: row.state.is_active(),
                    attempt: row.attempt,
                    controls,
                    deploy_requests_created: self.engines.planetscale.deploy_requests_of(operation)
                        as u32,
                    engine_truth: self.truth(row.engine, operation, target as usize, &row.spec),
                    runner_alive: self.engines.spirit.runner_alive(operation),
                },
            };
        };
        let mut resting = 0;
        let mut facts = Vec::with_capacity(row.operations.len());
        let mut ops = Vec::with_capacity(row.operations.len());
        for (k, op) in row.operations.iter().enumerate() {
            let gate = row.cutover_open(k);
            if applyd::machine::waits::rest_at(row.engine, op.state, &row.options, gate).is_some() {
                resting += 1;
            }
            let runner_alive = self.engines.spirit.runner_alive(op.id);
            let place = self.place_of(target, &op.deployment);
            facts.push(ApplyFacts {
                id: op.id as u32,
                target: place,
                engine: row.engine,
                state: op.state,
                holds_target: row.state.is_active() && op.step == 0,
                attempt: op.attempt,
                controls,
                deploy_requests_created: self.engines.planetscale.deploy_requests_of(op.id) as u32,
                engine_truth: self.truth(row.engine, op.id, place as usize, &op.spec),
                runner_alive,
            });
            ops.push(OperationFacts {
                state: op.state,
                runner_alive,
            });
        }
        Seen::Rollout(SeenRollout {
            id: row.id,
            engine: row.engine,
            state: row.state,
            policy,
            members: row.members(),
            facts,
            ops,
            resting,
        })
    }

    /// The engine's truth about an operation at place index `place` (`place_keys`, the same
    /// text as its spec's place, formatted once per run instead of once per look).
    fn truth(
        &self,
        engine: EngineKind,
        operation: u64,
        place: usize,
        spec: &applyd::machine::apply::ApplySpec,
    ) -> Option<applyd::machine::EngineState> {
        match (engine, self.place_keys.get(place)) {
            (EngineKind::Spirit, Some(key)) => {
                debug_assert_eq!(*key, spec.place());
                self.engines.spirit.truth(operation, key)
            }
            _ => self.engines.truth_of(engine, operation, spec),
        }
    }

    /// One rollout: every operation's step is a row of the table, the step as a whole keeps
    /// the rollout rules (`rollout_step`), a finished rollout leaves nothing live
    /// (`rollout_no_orphan`), and each operation is a unit of the world facts (its first
    /// operation on each deployment holds that deployment while the rollout is active).
    fn judge_rollout(
        &mut self,
        i: usize,
        r: SeenRollout,
        resting: &mut u32,
    ) -> Result<(), Violation> {
        let now = r.members;
        let (before_policy, before) = self.last_rollout[i]
            .clone()
            .unwrap_or_else(|| (r.policy, now.clone()));
        for (k, (b, a)) in before.iter().zip(&now).enumerate() {
            legal_step(r.engine, b.state, a.state).map_err(|mut v| {
                v.detail = format!("apply {} operation {}: {}", r.id, k + 1, v.detail);
                v
            })?;
        }
        rollout_step(&before_policy, &before, &r.policy, &now, r.state).map_err(|mut v| {
            v.detail = format!("apply {}: {} ({now:?})", r.id, v.detail);
            v
        })?;
        rollout_no_orphan(r.state, &r.ops).map_err(|mut v| {
            v.detail = format!("apply {}: {}", r.id, v.detail);
            v
        })?;
        self.last_rollout[i] = Some((r.policy, now));
        self.last_state[i] = r.state;
        *resting += r.resting;
        self.facts.extend(r.facts);
        Ok(())
    }

    /// Since when each apply has been claimable, and each driver free: idle, or held only by
    /// a wait that gives its driver back (`Rules::rests_now`), in a process that runs and can
    /// reach the store.
    pub(super) fn stamp_starvation(&mut self) {
        let now = self.now;
        // While the store is down nothing can be claimed, nor known claimable.
        let store_up = now >= self.store_down_until;
        if let Ok(claimable) = self.store.claimable(self.preset.claim_path) {
            self.claimable_since.retain(|id, _| claimable.contains(id));
            for id in claimable {
                self.claimable_since.entry(id).or_insert(now);
            }
        }
        for w in 0..self.workers.len() {
            let wk = &self.workers[w];
            let free = store_up
                && wk.up
                && !wk.paused
                && wk.driver.lease().is_none_or(|l| {
                    let pending = self.store.pending_controls(l.apply);
                    self.store
                        .with_row(l.apply, |row| {
                            let k = row.operation_at(l.epoch).unwrap_or(0);
                            let state = match row.rollout {
                                Some(_) => row.operations[k].state,
                                None => row.state,
                            };
                            self.rules
                                .rests_now(
                                    row.engine,
                                    state,
                                    &pending,
                                    &row.options,
                                    row.cutover_open(k),
                                )
                                .is_some()
                        })
                        .unwrap_or(false)
                });
            let wk = &mut self.workers[w];
            wk.free_since = if free {
                Some(wk.free_since.unwrap_or(now))
            } else {
                None
            };
        }
    }

    /// Claimable work has not waited past the bound while some driver was free (checked before
    /// each event, on the stamps of the last check: nothing changed in between).
    pub(super) fn check_starvation(&mut self) {
        let now = self.now;
        let Some(free_for) = self
            .workers
            .iter()
            .filter_map(|w| w.free_since)
            .map(|t| now.saturating_sub(t))
            .max()
        else {
            return;
        };
        let waiting: Vec<(ApplyId, u64)> = self
            .claimable_since
            .iter()
            .map(|(id, t)| (*id, now.saturating_sub(*t)))
            .collect();
        for (id, claimable_for) in waiting {
            self.violated(no_starvation(
                id,
                claimable_for,
                free_for,
                STARVATION_BOUND_MS,
            ));
        }
    }

    /// Once per run: every audited state change is a shipped row and epochs never go back.
    pub(super) fn check_audit(&mut self) {
        let mut last_epoch: BTreeMap<(ApplyId, Option<u64>), u64> = BTreeMap::new();
        for e in self.store.audit() {
            // A rollout's derived state moves as its operations do, not by table rows; the
            // derivation is checked after every event instead.
            if e.operation.is_none() && e.cause == "derived" {
                continue;
            }
            let engine = self
                .store
                .row(e.apply)
                .map_or(EngineKind::Spirit, |r| r.engine);
            if let Err(mut v) = legal_step(engine, e.from, e.to) {
                v.detail = format!("apply {} ({}): {}", e.apply, e.cause, v.detail);
                self.fail(FailureKind::Violation(v));
                return;
            }
            let prev = last_epoch
                .insert((e.apply, e.operation), e.epoch)
                .unwrap_or(0);
            if e.epoch < prev {
                self.violated(stale_write(prev, e.epoch));
                return;
            }
        }
    }

    /// What is still not terminal at the heal deadline, for the wedge report.
    pub(super) fn unsettled(&self) -> String {
        let mut out = Vec::new();
        for (i, plan) in self.world.applies.iter().enumerate() {
            let Some(id) = self.ids[i] else {
                out.push(format!(
                    "apply #{i} ({} on db{}) was never submitted: its target stayed busy",
                    plan.engine, plan.target
                ));
                continue;
            };
            let Some(row) = self.store.row(id) else {
                continue;
            };
            if shipped_class(row.state) == ClaimClass::Terminal {
                continue;
            }
            let owner_up = row.lease_owner.as_ref().is_some_and(|o| {
                (0..self.preset.workers).any(|w| {
                    self.owner(w) == *o && self.workers[w as usize].driver.lease().is_some()
                })
            });
            out.push(format!(
                "apply {id} ({} on db{}) stuck in {} (epoch {}, owner {} {}, claim class {}, settled {}, pending {:?})",
                row.engine,
                plan.target,
                row.state,
                row.lease_epoch,
                row.lease_owner.as_deref().unwrap_or("none"),
                if owner_up { "driving" } else { "gone" },
                self.rules.class_of(row.state).name(),
                is_settled(row.state, &row.options),
                self.store.pending_controls(id),
            ));
            if row.rollout.is_some() {
                let ops: Vec<String> = row
                    .operations
                    .iter()
                    .map(|o| {
                        format!(
                            "{}{} {} (epoch {}, owner {})",
                            o.deployment,
                            if o.key.is_empty() {
                                String::new()
                            } else {
                                format!("/{}", o.key)
                            },
                            o.state,
                            o.lease_epoch,
                            o.lease_owner.as_deref().unwrap_or("none")
                        )
                    })
                    .collect();
                out.push(format!("  its operations: {}", ops.join(", ")));
            }
        }
        out.join("; ")
    }
}
