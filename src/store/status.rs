//! Read-only views of applies for the CLI, the HTTP API and the status page.

use async_trait::async_trait;

use super::memory::MemoryStore;
use super::timeline::{audit_entry, ordered, request_entries, TimelineEntry};
use super::{StoreError, Target};
use crate::machine::apply::{ApplyId, OperationId, ResumeState};
use crate::machine::explain::{Explanation, Snapshot};
use crate::machine::rollout::{member_gate, start_gate, Member, RolloutPolicy, StartGate};
use crate::machine::{
    ApplyOptions, ApplyState, ControlOp, EngineKind, PendingControls, Rules, TaskState,
};

/// One apply as an operator sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ApplyStatus {
    pub id: ApplyId,
    pub identifier: String,
    pub target: Target,
    pub engine: EngineKind,
    pub state: ApplyState,
    pub options: ApplyOptions,
    pub ddl: Vec<String>,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    /// By the store's clock; `None` when no lease is held.
    pub heartbeat_age_ms: Option<u64>,
    /// How long the apply has been in its state, by the store's clock.
    pub state_age_ms: u64,
    /// Since the apply row was last written (the retry freshness window counts from it).
    pub updated_age_ms: u64,
    /// What the owner persisted for a resume (branch, deploy-request intent and id).
    pub resume: ResumeState,
    pub error: Option<String>,
    /// Progress: the apply's task rows (one per DDL statement) and how many have completed.
    pub tasks_total: u32,
    pub tasks_completed: u32,
    /// The task rows in statement order: the table each statement touches and its state.
    pub tasks: Vec<TaskStatus>,
    pub pending_requests: Vec<ControlOp>,
    /// The last request of each kind and how it ended (`pending`, `completed`, `failed: why`).
    pub requests: Vec<(ControlOp, String)>,
    /// Parked: how long until a driver looks at it again, by the store's clock.
    pub parked_wake_in_ms: Option<u64>,
    /// How a wait for a person is held and what moves it on (`waits::explain_rest`).
    pub wait: Option<String>,
    /// Why it is where it is, from the rules (`Rules::explain`); filled by
    /// [`ApplyStatus::explain`].
    pub explanation: Option<Explanation>,
    /// The apply's operation rows, in rollout order (one for an apply without deployments).
    pub operations: Vec<OperationStatus>,
    /// The rollout's policy and latches; `None` for an apply without deployments.
    pub rollout: Option<RolloutPolicy>,
}

/// One operation row: where it runs and its state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperationStatus {
    pub id: OperationId,
    /// The deployment (`""` for an apply without deployments).
    pub deployment: String,
    /// `step-N` for a table step, `""` for a whole deployment.
    pub key: String,
    /// The deployment's position in the rollout and the table step, from 0.
    pub deployment_index: u32,
    pub step: u32,
    pub state: ApplyState,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_epoch: u64,
    /// By the store's clock; `None` when no lease is held.
    pub heartbeat_age_ms: Option<u64>,
    pub tasks_total: u32,
    pub tasks_completed: u32,
    pub failed_closed: bool,
    pub error: Option<String>,
    /// Parked: how long until a driver looks at it again, by the store's clock.
    pub parked_wake_in_ms: Option<u64>,
    /// Why the rollout holds it back (`rollout::member_gate`); filled by [`ApplyStatus::explain`].
    pub gate: Option<String>,
    /// Who holds it or which operation arm takes it and when (`Rules::explain_operation`).
    pub explanation: Option<String>,
}

/// One task row: one statement of the change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskStatus {
    /// `None` for tasks stored before tables were recorded.
    pub table: Option<String>,
    pub state: TaskState,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// What the engine last said of the work (rows copied, whether its runner resumed).
    pub progress: Option<super::progress::TaskProgress>,
}

#[async_trait]
pub trait Inspect: Send + Sync {
    /// Applies, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<ApplyStatus>, StoreError>;
    /// One apply; `RowGone` when it does not exist.
    async fn status(&self, id: ApplyId) -> Result<ApplyStatus, StoreError>;
    /// How many applies are in each state, by the state as stored (one read, whatever the
    /// number of applies: the gauges poll it).
    async fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// The last `limit` entries of an apply's timeline, oldest first; `RowGone` when the apply
    /// does not exist.
    async fn timeline(&self, id: ApplyId, limit: usize) -> Result<Vec<TimelineEntry>, StoreError>;
    /// How deliveries stand for every webhook endpoint a deliverer has served, by name. A
    /// store that does not deliver webhooks has none.
    async fn webhook_health(&self) -> Result<Vec<super::webhooks::EndpointHealth>, StoreError> {
        Ok(Vec::new())
    }
}

impl ApplyStatus {
    /// What the explanations read of the apply.
    fn snapshot(&self) -> Snapshot<'_> {
        let mut pending = PendingControls::default();
        for op in &self.pending_requests {
            pending.set(*op, true);
        }
        Snapshot {
            identifier: &self.identifier,
            engine: self.engine,
            state: self.state,
            options: self.options,
            attempt: self.attempt,
            lease_owner: self.lease_owner.as_deref(),
            heartbeat_age_ms: self.heartbeat_age_ms,
            updated_age_ms: self.updated_age_ms,
            has_children: self.tasks_total > 0,
            pending,
            parked_wake_in_ms: self.parked_wake_in_ms,
            is_rollout: self.rollout.is_some(),
        }
    }

    /// Fill in [`ApplyStatus::wait`], the explanations and the rollout gates from the rest of
    /// the view, under the rules the operators run.
    pub fn explain(mut self, rules: &Rules) -> ApplyStatus {
        let rest = crate::machine::waits::explain_rest(
            self.engine,
            self.state,
            &self.options,
            self.lease_owner.is_some(),
            self.parked_wake_in_ms,
        );
        let deadline = crate::machine::waits::sentinel_deadline(
            self.engine,
            self.state,
            &self.options,
            self.state_age_ms,
        );
        self.wait = match (rest, deadline) {
            (Some(rest), Some(deadline)) => Some(format!("{rest}; {deadline}")),
            (rest, deadline) => rest.or(deadline),
        };
        if let Some(policy) = &self.rollout {
            let members: Vec<Member> = self
                .operations
                .iter()
                .map(|o| Member {
                    deployment: o.deployment_index,
                    step: o.step,
                    state: o.state,
                    failed_closed: o.failed_closed,
                })
                .collect();
            for (i, o) in self.operations.iter_mut().enumerate() {
                o.gate = member_gate(policy, &members, i);
            }
            let parent = self.snapshot();
            let notes: Vec<String> = self
                .operations
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let op = Snapshot {
                        state: o.state,
                        attempt: o.attempt,
                        lease_owner: o.lease_owner.as_deref(),
                        heartbeat_age_ms: o.heartbeat_age_ms,
                        parked_wake_in_ms: o.parked_wake_in_ms,
                        ..parent
                    };
                    let open = start_gate(policy, &members, i) == StartGate::Open;
                    rules.explain_operation(&op, &parent, open)
                })
                .collect();
            for (o, note) in self.operations.iter_mut().zip(notes) {
                o.explanation = Some(note);
            }
        }
        self.explanation = Some(rules.explain(&self.snapshot()));
        self
    }

    /// `completed/total tasks`, as the CLI and the status page show it.
    pub fn progress(&self) -> String {
        format!("{}/{} tasks", self.tasks_completed, self.tasks_total)
    }
}

impl MemoryStore {
    fn status_of(&self, row: &super::memory::MemoryRow, now: u64) -> ApplyStatus {
        let mut pending = Vec::new();
        let mut requests = Vec::new();
        for op in ControlOp::ALL {
            if let Some(req) = self.request_status(row.id, *op) {
                if req.status == crate::machine::ControlStatus::Pending {
                    pending.push(*op);
                }
                let text = match &req.message {
                    Some(m) => format!("{}: {m}", req.status),
                    None => req.status.to_string(),
                };
                requests.push((*op, text));
            }
        }
        ApplyStatus {
            id: row.id,
            identifier: row.spec.identifier.clone(),
            target: row.spec.target.clone(),
            engine: row.engine,
            state: row.state,
            options: row.options,
            ddl: row.spec.ddl.clone(),
            attempt: row.attempt,
            lease_owner: row.lease_owner.clone(),
            lease_epoch: row.lease_epoch,
            heartbeat_age_ms: row
                .lease_owner
                .as_ref()
                .filter(|_| row.state.is_active())
                .and(row.heartbeat_at)
                .map(|h| now.saturating_sub(h)),
            state_age_ms: now.saturating_sub(row.state_entered_at),
            updated_age_ms: now.saturating_sub(row.updated_at),
            resume: row.resume,
            error: row.error_message.clone(),
            tasks_total: row.tasks.len() as u32,
            tasks_completed: row
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::Completed)
                .count() as u32,
            tasks: row
                .tasks
                .iter()
                .map(|t| TaskStatus {
                    table: t.table.clone(),
                    state: t.state,
                    error: t.error_message.clone(),
                    progress: t.progress.clone(),
                })
                .collect(),
            pending_requests: pending,
            requests,
            parked_wake_in_ms: row
                .parked_until
                .filter(|_| row.lease_owner.is_none())
                .map(|w| w.saturating_sub(now)),
            wait: None,
            explanation: None,
            operations: row
                .operations
                .iter()
                .enumerate()
                .map(|(i, o)| OperationStatus {
                    id: o.id,
                    deployment: o.deployment.clone(),
                    key: o.key.clone(),
                    deployment_index: o.deployment_index,
                    step: o.step,
                    state: o.state,
                    attempt: o.attempt,
                    lease_owner: o.lease_owner.clone(),
                    lease_epoch: o.lease_epoch,
                    heartbeat_age_ms: o
                        .lease_owner
                        .as_ref()
                        .and(o.heartbeat_at)
                        .map(|h| now.saturating_sub(h)),
                    tasks_total: row.tasks.iter().filter(|t| t.operation == i).count() as u32,
                    tasks_completed: row
                        .tasks
                        .iter()
                        .filter(|t| t.operation == i && t.state == TaskState::Completed)
                        .count() as u32,
                    failed_closed: o.failed_closed,
                    error: o.error_message.clone(),
                    parked_wake_in_ms: o
                        .parked_until
                        .filter(|_| o.lease_owner.is_none())
                        .map(|w| w.saturating_sub(now)),
                    gate: None,
                    explanation: None,
                })
                .collect(),
            rollout: row.rollout,
        }
        .explain(self.rules())
    }
}

#[async_trait]
impl Inspect for MemoryStore {
    async fn list(&self, limit: usize) -> Result<Vec<ApplyStatus>, StoreError> {
        let now = self.now_ms();
        Ok(self
            .rows()
            .iter()
            .rev()
            .take(limit)
            .map(|r| self.status_of(r, now))
            .collect())
    }

    async fn status(&self, id: ApplyId) -> Result<ApplyStatus, StoreError> {
        let now = self.now_ms();
        let row = self.row(id).ok_or(StoreError::RowGone(id))?;
        Ok(self.status_of(&row, now))
    }

    async fn timeline(&self, id: ApplyId, limit: usize) -> Result<Vec<TimelineEntry>, StoreError> {
        let now = self.now_ms();
        self.row(id).ok_or(StoreError::RowGone(id))?;
        let mut entries: Vec<TimelineEntry> = self
            .audit()
            .into_iter()
            .filter(|e| e.apply == id)
            .map(|e| {
                audit_entry(
                    now.saturating_sub(e.at_ms),
                    e.from.as_str(),
                    e.to.as_str(),
                    e.epoch,
                    e.owner,
                    &e.cause,
                    e.detail.as_deref(),
                    e.operation,
                )
            })
            .collect();
        for op in ControlOp::ALL {
            if let Some(req) = self.request_status(id, *op) {
                let status = req.status.to_string();
                // A request still pending has not ended; one that ended did so at its last
                // change.
                let ended = (req.status != crate::machine::ControlStatus::Pending)
                    .then(|| now.saturating_sub(req.updated_at));
                entries.extend(request_entries(
                    op.as_str(),
                    now.saturating_sub(req.requested_at),
                    req.requested_by.as_deref(),
                    &status,
                    req.message.as_deref(),
                    ended,
                ));
            }
        }
        Ok(ordered(entries, limit))
    }

    async fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        for row in self.rows() {
            *counts.entry(row.state.as_str().to_string()).or_insert(0) += 1;
        }
        Ok(counts.into_iter().collect())
    }
}
