//! Fake PlanetScale and fake Spirit: pure state machines advanced by a clock that the caller
//! passes in (virtual time in the simulator, wall time in the demo and the fake HTTP server).
//! They behave like the real services where it matters for crash safety — deploy-request
//! creation is NOT idempotent, a Spirit runner dies with the process that hosts it while its
//! checkpoint survives in the target — and they record every effect so invariants can count
//! deploy requests per apply and runners per target.
//!
//! Over 900 lines, with its tests: the two fakes, the effect log they share and the one engine
//! interface over both (probes, calls and the progress a Spirit runner reports); splitting
//! each fake into a file of its own is the seam when it grows again.

use std::collections::BTreeMap;

use super::planetscale_states::DeployState;
use crate::machine::apply::ApplyRecord;
use crate::machine::apply::{ApplyId, OperationId};
use crate::machine::observe::{BranchStatus, EngineFault, Observation, RunnerStatus};
use crate::machine::table::RunnerGone;
use crate::machine::{EngineCall, EngineKind, EngineState, Probe};

/// The deterministic branch name of an apply: a resumed drive finds the same branch.
pub fn branch_name(identifier: &str) -> String {
    format!("applyd-{identifier}")
}

/// Durations of the fakes' phases, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeTimings {
    pub branch_ready_ms: u64,
    pub validate_ms: u64,
    pub deploy_ms: u64,
    pub cutover_ms: u64,
    pub revert_ms: u64,
    /// PlanetScale closes the revert window on its own after this long.
    pub server_revert_window_ms: u64,
    pub spirit_rows: u64,
    pub spirit_rows_per_s: u64,
    pub spirit_checkpoint_every_ms: u64,
}

impl Default for FakeTimings {
    fn default() -> Self {
        FakeTimings {
            branch_ready_ms: 2_000,
            validate_ms: 3_000,
            deploy_ms: 20_000,
            cutover_ms: 3_000,
            revert_ms: 10_000,
            server_revert_window_ms: 60 * 60 * 1000,
            spirit_rows: 100_000,
            spirit_rows_per_s: 2_000,
            spirit_checkpoint_every_ms: 5_000,
        }
    }
}

impl FakeTimings {
    /// Phases of seconds: crash tests and trials.
    pub fn fast() -> FakeTimings {
        FakeTimings {
            branch_ready_ms: 300,
            validate_ms: 300,
            deploy_ms: 1_500,
            cutover_ms: 300,
            revert_ms: 1_000,
            server_revert_window_ms: 60_000,
            spirit_rows: 6_000,
            spirit_rows_per_s: 2_000,
            spirit_checkpoint_every_ms: 1_000,
        }
    }
}

/// One recorded effect on a fake, for invariants and traces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectRecord {
    pub at_ms: u64,
    pub operation: OperationId,
    pub epoch: u64,
    pub call: EngineCall,
    pub accepted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeBranch {
    pub ready_at: u64,
    pub changes_applied: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDeployRequest {
    pub id: u64,
    pub branch: String,
    pub operation: OperationId,
    pub state: DeployState,
    pub since: u64,
    pub deploys: u32,
}

/// A PlanetScale database with a main branch, branches and deploy requests.
#[derive(Debug, Clone, Default)]
pub struct FakePlanetScale {
    pub timings: FakeTimings,
    /// Refuse calls from an epoch older than one already seen for the apply. The real API
    /// cannot do this, so the simulator runs with it off by default.
    pub fence_epochs: bool,
    pub branches: BTreeMap<String, FakeBranch>,
    pub requests: BTreeMap<u64, FakeDeployRequest>,
    next_request: u64,
    epochs: BTreeMap<ApplyId, u64>,
    pub effects: Vec<EffectRecord>,
}

impl FakePlanetScale {
    pub fn new(timings: FakeTimings) -> FakePlanetScale {
        FakePlanetScale {
            timings,
            next_request: 1,
            ..Default::default()
        }
    }

    /// Move every deploy request along by time.
    pub fn advance(&mut self, now: u64) {
        let t = self.timings;
        for dr in self.requests.values_mut() {
            loop {
                let elapsed = now.saturating_sub(dr.since);
                let next = match dr.state {
                    DeployState::Pending if elapsed >= t.validate_ms => DeployState::Ready,
                    DeployState::Queued if elapsed >= 1 => DeployState::InProgress,
                    DeployState::InProgress if elapsed >= t.deploy_ms => {
                        DeployState::PendingCutover
                    }
                    DeployState::InProgressCutover if elapsed >= t.cutover_ms => {
                        DeployState::CompletePendingRevert
                    }
                    DeployState::CompletePendingRevert if elapsed >= t.server_revert_window_ms => {
                        DeployState::Complete
                    }
                    DeployState::InProgressRevert if elapsed >= t.revert_ms => {
                        DeployState::CompleteRevert
                    }
                    DeployState::InProgressCancel if elapsed >= 1 => DeployState::CompleteCancel,
                    _ => break,
                };
                let took = match dr.state {
                    DeployState::Pending => t.validate_ms,
                    DeployState::Queued | DeployState::InProgressCancel => 1,
                    DeployState::InProgress => t.deploy_ms,
                    DeployState::InProgressCutover => t.cutover_ms,
                    DeployState::CompletePendingRevert => t.server_revert_window_ms,
                    DeployState::InProgressRevert => t.revert_ms,
                    _ => 0,
                };
                dr.since += took;
                dr.state = next;
            }
        }
    }

    fn fenced(&mut self, operation: OperationId, epoch: u64) -> bool {
        let seen = self.epochs.entry(operation).or_insert(epoch);
        if epoch < *seen && self.fence_epochs {
            return false;
        }
        *seen = (*seen).max(epoch);
        true
    }

    /// The first deploy request created for a branch (what a look-up by branch returns).
    pub fn find_by_branch(&self, branch: &str) -> Option<&FakeDeployRequest> {
        self.requests.values().find(|r| r.branch == branch)
    }

    pub fn deploy_requests_of(&self, operation: OperationId) -> usize {
        self.requests
            .values()
            .filter(|r| r.operation == operation)
            .count()
    }

    /// A deploy request deleted server-side (fault injection).
    pub fn delete_request(&mut self, id: u64) {
        self.requests.remove(&id);
    }

    /// Put a deploy request into an error state (fault injection).
    pub fn fail_request(&mut self, id: u64, now: u64) {
        if let Some(dr) = self.requests.get_mut(&id) {
            dr.state = DeployState::Error;
            dr.since = now;
        }
    }

    fn observe(dr: &FakeDeployRequest) -> Observation {
        match dr.state.engine_state() {
            Some(state) => Observation::DeployRequest { id: dr.id, state },
            // Transitional, read as the real adapter reads it: no answer yet.
            None => Observation::Fault(EngineFault::Transient),
        }
    }

    pub fn probe(&mut self, now: u64, apply: &ApplyRecord, probe: Probe) -> Observation {
        self.advance(now);
        let branch = branch_name(&apply.spec.identifier);
        match probe {
            Probe::GetBranch => match self.branches.get(&branch) {
                None => Observation::Branch(BranchStatus::Missing),
                Some(b) if now < b.ready_at => Observation::Branch(BranchStatus::Creating),
                Some(_) => Observation::Branch(BranchStatus::Ready),
            },
            Probe::DiffBranch => match self.branches.get(&branch) {
                None => Observation::Fault(EngineFault::NotFound),
                Some(b) => Observation::BranchDiff {
                    pending: !b.changes_applied,
                },
            },
            Probe::ValidateBranch => match self.branches.get(&branch) {
                Some(b) if b.changes_applied => Observation::BranchValid,
                Some(_) => Observation::Fault(EngineFault::Permanent),
                None => Observation::Fault(EngineFault::NotFound),
            },
            Probe::FindDeployRequest => match self.find_by_branch(&branch) {
                None => Observation::NoDeployRequest,
                Some(dr) => Self::observe(dr),
            },
            Probe::GetDeployRequest => match apply
                .row
                .resume
                .deploy_request_id
                .and_then(|id| self.requests.get(&id))
            {
                Some(dr) => Self::observe(dr),
                None => Observation::Fault(EngineFault::NotFound),
            },
            Probe::RunnerStatus => Observation::Fault(EngineFault::Permanent),
        }
    }

    pub fn call(
        &mut self,
        now: u64,
        apply: &ApplyRecord,
        epoch: u64,
        call: EngineCall,
    ) -> Observation {
        self.advance(now);
        let id = apply.row.operation;
        if !self.fenced(id, epoch) {
            self.effects.push(EffectRecord {
                at_ms: now,
                operation: id,
                epoch,
                call,
                accepted: false,
            });
            return Observation::Fault(EngineFault::StaleEpoch);
        }
        let branch = branch_name(&apply.spec.identifier);
        let request = apply
            .row
            .resume
            .deploy_request_id
            .or_else(|| self.find_by_branch(&branch).map(|r| r.id));
        let t = self.timings;
        let (obs, accepted) = match call {
            EngineCall::CreateBranch => {
                // "Name has already been taken" is success for us: the name is deterministic.
                self.branches.entry(branch.clone()).or_insert(FakeBranch {
                    ready_at: now + t.branch_ready_ms,
                    changes_applied: false,
                });
                (Observation::Branch(BranchStatus::Creating), true)
            }
            EngineCall::ApplyBranchChanges => match self.branches.get_mut(&branch) {
                Some(b) => {
                    b.changes_applied = true;
                    (Observation::BranchDiff { pending: false }, true)
                }
                None => (Observation::Fault(EngineFault::NotFound), false),
            },
            EngineCall::CreateDeployRequest => {
                let id = self.next_request;
                self.next_request += 1;
                let dr = FakeDeployRequest {
                    id,
                    branch,
                    operation: apply.row.operation,
                    state: DeployState::Pending,
                    since: now,
                    deploys: 0,
                };
                let obs = Self::observe(&dr);
                self.requests.insert(id, dr);
                (obs, true)
            }
            other => match request.and_then(|rid| self.requests.get_mut(&rid)) {
                None => (Observation::Fault(EngineFault::NotFound), false),
                Some(dr) => {
                    use DeployState as D;
                    let next = match (other, dr.state) {
                        (EngineCall::Deploy, D::Ready) => {
                            dr.deploys += 1;
                            Some(D::Queued)
                        }
                        // The provider refuses a second deploy; for us that is "already done".
                        (
                            EngineCall::Deploy,
                            D::Queued | D::Submitting | D::InProgress | D::PendingCutover,
                        ) => None,
                        (EngineCall::Cutover, D::PendingCutover) => Some(D::InProgressCutover),
                        (
                            EngineCall::Cutover,
                            D::InProgressCutover | D::CompletePendingRevert | D::Complete,
                        ) => None,
                        (EngineCall::SkipRevert, D::CompletePendingRevert) => Some(D::Complete),
                        (EngineCall::SkipRevert, D::Complete) => None,
                        (EngineCall::Revert, D::CompletePendingRevert) => Some(D::InProgressRevert),
                        (EngineCall::Revert, D::InProgressRevert | D::CompleteRevert) => None,
                        // Never deployed: closed at once.
                        (EngineCall::CancelDeployRequest, D::Pending | D::Ready) => {
                            Some(D::Cancelled)
                        }
                        // A deploy under way is cancelled through `in_progress_cancel`, which
                        // is no answer until it settles.
                        (
                            EngineCall::CancelDeployRequest,
                            D::Queued | D::Submitting | D::InProgress | D::PendingCutover,
                        ) => Some(D::InProgressCancel),
                        (
                            EngineCall::CancelDeployRequest,
                            D::Cancelled | D::CompleteCancel | D::InProgressCancel,
                        ) => None,
                        _ => {
                            self.effects.push(EffectRecord {
                                at_ms: now,
                                operation: id,
                                epoch,
                                call,
                                accepted: false,
                            });
                            return Observation::Fault(EngineFault::Permanent);
                        }
                    };
                    if let Some(next) = next {
                        dr.state = next;
                        dr.since = now;
                    }
                    (Self::observe(dr), next.is_some())
                }
            },
        };
        // A cancel with no deploy request yet has nothing to cancel.
        let obs = match (call, obs) {
            (EngineCall::CancelDeployRequest, Observation::Fault(EngineFault::NotFound)) => {
                Observation::DeployRequest {
                    id: 0,
                    state: EngineState::Cancelled,
                }
            }
            (_, o) => o,
        };
        self.effects.push(EffectRecord {
            at_ms: now,
            operation: id,
            epoch,
            call,
            accepted,
        });
        obs
    }

    /// The engine's truth about an apply: its first deploy request's state.
    pub fn truth(&self, operation: OperationId) -> Option<EngineState> {
        self.requests
            .values()
            .find(|r| r.operation == operation)
            .and_then(|r| r.state.engine_state())
    }
}

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

/// A fault the simulator injects into the next engine call or probe; consumed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectedFault {
    /// A 5xx or a timeout before the request reached the engine: nothing happened.
    Unreachable,
    /// The engine applied the call but the reply was lost (waits for the next call).
    ReplyLost,
}

/// Both fakes behind one engine interface.
#[derive(Debug, Clone, Default)]
pub struct FakeEngines {
    pub planetscale: FakePlanetScale,
    pub spirit: FakeSpirit,
    /// Armed by the simulator; the driver sees `EngineFault::Transient` either way.
    pub inject: Option<InjectedFault>,
}

impl FakeEngines {
    pub fn new(timings: FakeTimings) -> FakeEngines {
        FakeEngines {
            planetscale: FakePlanetScale::new(timings),
            spirit: FakeSpirit::new(timings),
            inject: None,
        }
    }

    pub fn probe(&mut self, now: u64, apply: &ApplyRecord, probe: Probe) -> Observation {
        // A lost reply waits for a call: losing a read-only answer changes nothing.
        if self.inject == Some(InjectedFault::Unreachable) {
            self.inject = None;
            return Observation::Fault(EngineFault::Transient);
        }
        match apply.row.engine {
            EngineKind::PlanetScale => self.planetscale.probe(now, apply, probe),
            EngineKind::Spirit => self.spirit.probe(now, apply, probe),
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
        let injected = self.inject.take();
        if injected == Some(InjectedFault::Unreachable) {
            return Observation::Fault(EngineFault::Transient);
        }
        let obs = match apply.row.engine {
            EngineKind::PlanetScale => self.planetscale.call(now, apply, epoch, call),
            EngineKind::Spirit => self.spirit.call(now, host, apply, epoch, call),
        };
        match injected {
            Some(InjectedFault::ReplyLost) => Observation::Fault(EngineFault::Transient),
            _ => obs,
        }
    }

    /// What the engine reports of an apply's work (Spirit's copy), for the operator's task rows.
    pub fn progress(
        &self,
        now: u64,
        apply: &ApplyRecord,
    ) -> Option<crate::store::progress::TaskProgress> {
        match apply.row.engine {
            EngineKind::Spirit => {
                self.spirit
                    .progress(now, apply.row.operation, &apply.spec.place())
            }
            EngineKind::PlanetScale => None,
        }
    }

    /// A probe and the progress it sees, as the engine interface replies.
    pub fn probe_reply(&mut self, now: u64, apply: &ApplyRecord, probe: Probe) -> super::Reply {
        let obs = self.probe(now, apply, probe);
        with_progress(obs.into(), self.progress(now, apply))
    }

    /// A call and the progress after it, as the engine interface replies.
    pub fn call_reply(
        &mut self,
        now: u64,
        host: u32,
        apply: &ApplyRecord,
        epoch: u64,
        call: EngineCall,
    ) -> super::Reply {
        let obs = self.call(now, host, apply, epoch, call);
        with_progress(obs.into(), self.progress(now, apply))
    }

    pub fn advance(&mut self, now: u64) {
        self.planetscale.advance(now);
        self.spirit.advance(now);
    }

    pub fn crash_host(&mut self, now: u64, host: u32) {
        self.spirit.crash_host(now, host);
    }

    pub fn truth(&self, apply: &ApplyRecord) -> Option<EngineState> {
        self.truth_of(apply.row.engine, apply.row.operation, &apply.spec)
    }

    /// The engine's truth about one operation of `engine`, whose spec is `spec`.
    pub fn truth_of(
        &self,
        engine: EngineKind,
        operation: OperationId,
        spec: &crate::machine::apply::ApplySpec,
    ) -> Option<EngineState> {
        match engine {
            EngineKind::PlanetScale => self.planetscale.truth(operation),
            EngineKind::Spirit => self.spirit.truth(operation, &spec.place()),
        }
    }
}

fn with_progress(
    reply: super::Reply,
    progress: Option<crate::store::progress::TaskProgress>,
) -> super::Reply {
    match progress {
        Some(p) => reply.with_progress(p),
        None => reply,
    }
}

/// The fakes shared by the async drivers of one process (demo, tests), on a clock.
pub struct SharedFakeEngines {
    pub engines: std::sync::Arc<std::sync::Mutex<FakeEngines>>,
    pub clock: std::sync::Arc<dyn crate::store::memory::Clock>,
    pub host: u32,
}

#[async_trait::async_trait]
impl super::Engine for SharedFakeEngines {
    async fn probe(&self, apply: &ApplyRecord, _epoch: u64, probe: Probe) -> super::Reply {
        let now = self.clock.now_ms();
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probe_reply(now, apply, probe)
    }
    async fn call(&self, apply: &ApplyRecord, epoch: u64, call: EngineCall) -> super::Reply {
        let now = self.clock.now_ms();
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .call_reply(now, self.host, apply, epoch, call)
    }
    async fn abandon(&self, apply: &ApplyRecord, epoch: u64) {
        let now = self.clock.now_ms();
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spirit
            .abandon(now, self.host, apply.row.operation, epoch);
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
