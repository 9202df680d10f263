//! Submissions to the memory store: an apply checked as every store checks it, adopted when
//! the same change was already submitted, refused while its target is busy.

use super::*;

impl MemoryStore {
    pub fn submit(&self, new: NewApply) -> Result<ApplyId, StoreError> {
        Ok(self.submit_or_adopt(new)?.id)
    }

    pub fn submit_or_adopt(&self, new: NewApply) -> Result<Submitted, StoreError> {
        if let Some(plan) = new.rollout.clone() {
            return self.submit_rollout(new, &plan);
        }
        let change = validate_new_apply(&new)?;
        let now = self.now();
        let mut inner = self.lock()?;
        if let Some(existing) = active_on_target(&inner, &new.target, None) {
            let live = inner
                .rows
                .get(&existing)
                .map(|r| (r.engine, r.spec.fingerprint.as_deref()));
            if live.is_some_and(|live| adopts(live, &new, &change)) {
                return Ok(Submitted {
                    id: existing,
                    adopted: true,
                });
            }
            return Err(StoreError::ActiveApplyExists {
                target: new.target.to_string(),
                existing,
            });
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let operation_id = inner.next_operation_id;
        inner.next_operation_id += 1;
        let tasks = change
            .statements
            .iter()
            .map(|statement| MemoryTask {
                operation: 0,
                state: TaskState::Pending,
                attempt: 0,
                table: Some(statement.table.clone()),
                error_message: None,
                progress: None,
            })
            .collect();
        let spec = Arc::new(ApplySpec {
            identifier: format!("apply-{id}"),
            target: new.target,
            deployment: String::new(),
            ddl: new.ddl,
            fingerprint: Some(change.fingerprint),
        });
        inner.rows.insert(
            id,
            MemoryRow {
                id,
                spec: spec.clone(),
                engine: new.engine,
                state: ApplyState::Pending,
                options: new.options,
                resume: ResumeState::default(),
                attempt: 0,
                lease_owner: None,
                lease_epoch: 0,
                lease_acquired_at: None,
                lease_acquired_seq: 0,
                heartbeat_at: None,
                parked_until: None,
                updated_at: now,
                state_entered_at: now,
                created_at: now,
                error_message: None,
                rollout: None,
                operations: vec![MemoryOperation {
                    id: operation_id,
                    deployment: String::new(),
                    deployment_index: 0,
                    step: 0,
                    key: String::new(),
                    spec: spec.clone(),
                    state: ApplyState::Pending,
                    resume: ResumeState::default(),
                    state_entered_at: now,
                    error_message: None,
                    failed_closed: false,
                    acked: Vec::new(),
                    attempt: 0,
                    lease_owner: None,
                    lease_epoch: 0,
                    lease_acquired_at: None,
                    lease_acquired_seq: 0,
                    heartbeat_at: None,
                    parked_until: None,
                    updated_at: now,
                    created_at: now,
                }],
                tasks,
            },
        );
        Ok(Submitted { id, adopted: false })
    }
}
