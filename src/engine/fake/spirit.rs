//! The fake Spirit: runners that copy, checkpoint and cut over (or wait on the sentinel),
//! hosted by a worker process and dying with it while the target's checkpoint survives.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Copying,
    WaitingOnSentinel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRunner {
    pub operation: OperationId,
    pub epoch: u64,
    /// The worker process that hosts the runner; it dies with it.
    pub host: u32,
    started_at: u64,
    start_rows: u64,
    defer: bool,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FakeTarget {
    /// Rows copied as of the last checkpoint (survives crashes).
    pub checkpoint_rows: u64,
    /// The apply whose change is now in the live schema.
    pub applied_by: Option<ApplyId>,
    pub sentinel: bool,
    pub runners: Vec<FakeRunner>,
}

/// Spirit against MySQL targets: runners copy rows, checkpoint, and cut over (or wait on the
/// sentinel table when the cutover is deferred). As Spirit (`pkg/status/task.go`,
/// `cmd/spirit/main.go`): a checkpoint is written every `spirit_checkpoint_every_ms` of a run
/// and never at its start, and a stop or a crash writes nothing — the next run starts from the
/// last periodic checkpoint, from zero if the runner died before its first one.
#[derive(Debug, Clone, Default)]
pub struct FakeSpirit {
    pub timings: FakeTimings,
    /// A start from a newer lease epoch supersedes the older runner of the same apply; an older
    /// epoch is refused. (applyd passes the epoch; see the design note on fencing.)
    pub fence_epochs: bool,
    pub targets: BTreeMap<String, FakeTarget>,
    outcomes: BTreeMap<ApplyId, RunnerStatus>,
    epochs: BTreeMap<ApplyId, u64>,
    pub runners_started: u64,
    pub effects: Vec<EffectRecord>,
}

/// Whether the fake target's tables take the change. Submit already refused what is not a
/// schema change; what remains to fail is what only the database knows. Every fake table has a
/// column `id`, so adding one fails as MySQL does (error 1060, duplicate column), permanently.
fn ddl_is_valid(ddl: &[String]) -> bool {
    !ddl.is_empty()
        && ddl.iter().all(|d| {
            let d = d.to_ascii_lowercase();
            let words: Vec<&str> = d.split_whitespace().collect();
            !words.windows(3).any(|w| w == ["add", "column", "id"])
        })
}

impl FakeSpirit {
    pub fn new(timings: FakeTimings) -> FakeSpirit {
        FakeSpirit {
            timings,
            fence_epochs: true,
            ..Default::default()
        }
    }

    pub fn advance(&mut self, now: u64) {
        let t = self.timings;
        for target in self.targets.values_mut() {
            let mut finished = Vec::new();
            for (i, r) in target.runners.iter_mut().enumerate() {
                let elapsed = now.saturating_sub(r.started_at);
                let rows = (r.start_rows + elapsed * t.spirit_rows_per_s / 1000).min(t.spirit_rows);
                let checkpoints = elapsed / t.spirit_checkpoint_every_ms.max(1);
                let checkpointed = (r.start_rows
                    + checkpoints * t.spirit_checkpoint_every_ms * t.spirit_rows_per_s / 1000)
                    .min(t.spirit_rows);
                target.checkpoint_rows = target.checkpoint_rows.max(checkpointed);
                if rows >= t.spirit_rows && r.phase == Phase::Copying {
                    target.checkpoint_rows = t.spirit_rows;
                    if r.defer {
                        r.phase = Phase::WaitingOnSentinel;
                    } else {
                        finished.push(i);
                    }
                }
                if r.phase == Phase::WaitingOnSentinel && !target.sentinel {
                    finished.push(i);
                }
            }
            finished.sort_unstable();
            finished.dedup();
            for i in finished.into_iter().rev() {
                let r = target.runners.remove(i);
                target.applied_by = Some(r.operation);
                target.sentinel = false;
                self.outcomes.insert(r.operation, RunnerStatus::Completed);
            }
        }
    }

    /// A worker process died: every runner it hosted dies; checkpoints and sentinels survive.
    pub fn crash_host(&mut self, now: u64, host: u32) {
        self.advance(now);
        for target in self.targets.values_mut() {
            target.runners.retain(|r| r.host != host);
        }
    }

    /// Process `host` kills its runner of `apply` started under `epoch` or older, as a crash
    /// would (`Engine::abandon`).
    pub fn abandon(&mut self, now: u64, host: u32, operation: OperationId, epoch: u64) {
        self.advance(now);
        for target in self.targets.values_mut() {
            target
                .runners
                .retain(|r| r.host != host || r.operation != operation || r.epoch > epoch);
        }
    }

    fn runner_of(target: &FakeTarget, operation: OperationId) -> Option<&FakeRunner> {
        target.runners.iter().find(|r| r.operation == operation)
    }

    fn status(&self, apply: &ApplyRecord) -> RunnerStatus {
        let id = apply.row.operation;
        let target = self.targets.get(&apply.spec.place());
        if let Some(r) = target.and_then(|t| Self::runner_of(t, id)) {
            return match r.phase {
                Phase::Copying => RunnerStatus::Copying,
                Phase::WaitingOnSentinel => RunnerStatus::WaitingOnSentinel,
            };
        }
        if let Some(outcome) = self.outcomes.get(&id) {
            return *outcome;
        }
        match target {
            Some(t) if t.applied_by == Some(id) => RunnerStatus::Gone(RunnerGone::NothingLeft),
            Some(t) if t.sentinel => RunnerStatus::Gone(RunnerGone::SentinelKept),
            _ => RunnerStatus::Gone(RunnerGone::WorkLeft),
        }
    }

    pub fn probe(&mut self, now: u64, apply: &ApplyRecord, probe: Probe) -> Observation {
        self.advance(now);
        match probe {
            Probe::RunnerStatus => Observation::Runner(self.status(apply)),
            _ => Observation::Fault(EngineFault::Permanent),
        }
    }

    pub fn call(
        &mut self,
        now: u64,
        host: u32,
        apply: &ApplyRecord,
        epoch: u64,
        call: EngineCall,
    ) -> Observation {
        self.advance(now);
        let id = apply.row.operation;
        let seen = *self.epochs.entry(id).or_insert(epoch);
        if self.fence_epochs && epoch < seen {
            self.effects.push(EffectRecord {
                at_ms: now,
                operation: id,
                epoch,
                call,
                accepted: false,
            });
            return Observation::Fault(EngineFault::StaleEpoch);
        }
        self.epochs.insert(id, seen.max(epoch));
        let key = apply.spec.place();
        let t = self.timings;
        let target = self.targets.entry(key).or_default();
        let obs = match call {
            EngineCall::StartRunner => {
                if !ddl_is_valid(&apply.spec.ddl) {
                    self.outcomes
                        .insert(id, RunnerStatus::Failed { retryable: false });
                    Observation::Runner(RunnerStatus::Failed { retryable: false })
                } else if target.applied_by == Some(id) {
                    Observation::Runner(RunnerStatus::Gone(RunnerGone::NothingLeft))
                } else {
                    let existing = target.runners.iter().position(|r| r.operation == id);
                    let supersede = match existing {
                        Some(i) => self.fence_epochs && target.runners[i].epoch < epoch,
                        None => true,
                    };
                    if let (true, Some(i)) = (supersede, existing) {
                        target.runners.remove(i);
                    }
                    if supersede {
                        let defer = apply.row.options.defer_cutover;
                        if defer && target.checkpoint_rows < t.spirit_rows {
                            target.sentinel = true;
                        }
                        target.runners.push(FakeRunner {
                            operation: id,
                            epoch,
                            host,
                            started_at: now,
                            start_rows: target.checkpoint_rows,
                            defer: defer
                                && (target.sentinel || target.checkpoint_rows < t.spirit_rows),
                            phase: Phase::Copying,
                        });
                        self.runners_started += 1;
                        self.outcomes.remove(&id);
                    }
                    Observation::Runner(RunnerStatus::Copying)
                }
            }
            EngineCall::StopRunner => {
                target.runners.retain(|r| r.operation != id);
                let status = match self.outcomes.get(&id) {
                    Some(done @ (RunnerStatus::Completed | RunnerStatus::Failed { .. })) => *done,
                    _ => RunnerStatus::Stopped,
                };
                self.outcomes.insert(id, status);
                Observation::Runner(status)
            }
            EngineCall::CancelRunner => {
                target.runners.retain(|r| r.operation != id);
                if target.applied_by != Some(id) {
                    target.checkpoint_rows = 0;
                    target.sentinel = false;
                    self.outcomes.insert(id, RunnerStatus::Cancelled);
                    Observation::Runner(RunnerStatus::Cancelled)
                } else {
                    Observation::Runner(RunnerStatus::Completed)
                }
            }
            EngineCall::DropSentinel => {
                target.sentinel = false;
                Observation::Accepted
            }
            _ => Observation::Fault(EngineFault::Permanent),
        };
        self.effects.push(EffectRecord {
            at_ms: now,
            operation: id,
            epoch,
            call,
            accepted: !matches!(obs, Observation::Fault(_)),
        });
        obs
    }

    /// The engine's truth about an apply's work.
    pub fn truth(&self, operation: OperationId, target: &str) -> Option<EngineState> {
        let t = self.targets.get(target);
        if let Some(r) = t.and_then(|t| Self::runner_of(t, operation)) {
            return Some(match r.phase {
                Phase::Copying => EngineState::Running,
                Phase::WaitingOnSentinel => EngineState::WaitingForCutover,
            });
        }
        if t.is_some_and(|t| t.applied_by == Some(operation)) {
            return Some(EngineState::Completed);
        }
        self.outcomes.get(&operation).map(|o| match o {
            RunnerStatus::Completed => EngineState::Completed,
            RunnerStatus::Failed { .. } => EngineState::Failed,
            RunnerStatus::Stopped => EngineState::Stopped,
            RunnerStatus::Cancelled => EngineState::Cancelled,
            _ => EngineState::Running,
        })
    }

    /// What the runner of an operation reports of its copy, as Spirit's status line does
    /// (`state=copyRows copy-progress="120/1000 12.00%" eta=…`); `None` with no runner alive.
    pub fn progress(
        &self,
        now: u64,
        operation: OperationId,
        target: &str,
    ) -> Option<crate::store::progress::TaskProgress> {
        use crate::store::progress::{RunnerStart, TaskProgress};
        let r = self
            .targets
            .get(target)
            .and_then(|t| Self::runner_of(t, operation))?;
        let t = self.timings;
        let total = t.spirit_rows.max(1);
        let copied = (r.start_rows + now.saturating_sub(r.started_at) * t.spirit_rows_per_s / 1000)
            .min(total);
        let waiting = r.phase == Phase::WaitingOnSentinel;
        let eta_s = (total - copied) / t.spirit_rows_per_s.max(1);
        Some(TaskProgress {
            phase: Some(
                if waiting {
                    "waitingOnSentinelTable"
                } else {
                    "copyRows"
                }
                .into(),
            ),
            rows_copied: Some(copied),
            rows_total: Some(total),
            percent: Some(copied as f64 * 100.0 / total as f64),
            eta: (!waiting).then(|| format!("{eta_s}s")),
            start: Some(if r.start_rows > 0 {
                RunnerStart::Resumed
            } else {
                RunnerStart::Fresh
            }),
            note: None,
        })
    }

    /// The runner of an operation fails on its own (fault injection): it is gone and reports the
    /// failure; the checkpoint survives. Returns whether a runner was alive.
    pub fn fail_runner(&mut self, now: u64, operation: OperationId, retryable: bool) -> bool {
        self.advance(now);
        let mut found = false;
        for target in self.targets.values_mut() {
            let before = target.runners.len();
            target.runners.retain(|r| r.operation != operation);
            found |= target.runners.len() != before;
        }
        if found {
            self.outcomes
                .insert(operation, RunnerStatus::Failed { retryable });
        }
        found
    }

    pub fn runner_alive(&self, operation: OperationId) -> bool {
        self.targets
            .values()
            .any(|t| t.runners.iter().any(|r| r.operation == operation))
    }

    pub fn runners_on(&self, target: &str) -> usize {
        self.targets.get(target).map_or(0, |t| t.runners.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::machine::apply::{ApplySnapshot, ApplySpec, ResumeState, Target};
    use crate::machine::ApplyState;

    fn spirit_apply() -> ApplyRecord {
        ApplyRecord {
            row: ApplySnapshot {
                id: 1,
                operation: 1,
                engine: EngineKind::Spirit,
                state: ApplyState::Running,
                epoch: 1,
                attempt: 0,
                options: Default::default(),
                resume: ResumeState::default(),
            },
            spec: Arc::new(ApplySpec {
                identifier: "apply-1".into(),
                target: Target {
                    database: "shop".into(),
                    environment: "test".into(),
                },
                deployment: String::new(),
                ddl: vec!["ALTER TABLE t ADD c INT".into()],
                fingerprint: None,
            }),
        }
    }

    /// Rows each run starts from, after a stop at `stop_ms` into the first run.
    fn resumed_from(stop_ms: u64) -> u64 {
        let t = FakeTimings::default();
        let mut spirit = FakeSpirit::new(t);
        let apply = spirit_apply();
        spirit.call(0, 0, &apply, 1, EngineCall::StartRunner);
        spirit.call(stop_ms, 0, &apply, 1, EngineCall::StopRunner);
        spirit.call(stop_ms, 0, &apply, 2, EngineCall::StartRunner);
        spirit.targets.values().next().unwrap().runners[0].start_rows
    }

    #[test]
    fn a_stop_keeps_only_the_last_periodic_checkpoint() {
        let t = FakeTimings::default();
        let every = t.spirit_checkpoint_every_ms;
        assert_eq!(
            resumed_from(every / 2),
            0,
            "no checkpoint in the first interval"
        );
        assert_eq!(
            resumed_from(every + every / 2),
            every * t.spirit_rows_per_s / 1000,
            "the copy since the last checkpoint is lost"
        );
    }
}
