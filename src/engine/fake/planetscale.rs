//! The fake PlanetScale: branches and deploy requests advanced by the caller's clock. As the
//! real API, creating a deploy request is not idempotent: a retried create makes a second one.

use super::*;

/// The deterministic branch name of an apply: a resumed drive finds the same branch.
pub fn branch_name(identifier: &str) -> String {
    format!("applyd-{identifier}")
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
