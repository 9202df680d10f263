//! Submitting a rollout: the change checked, the plan turned into operation rows, and every
//! deployment reserved, all under one lock.

use super::*;
use crate::machine::rollout::RolloutPlan;

impl MemoryStore {
    /// Submit a rollout: the change checked as any submission is, the plan turned into its
    /// operations (refused naming the field when it cannot be honoured), every deployment
    /// reserved. The same change sent again while it is live is adopted.
    pub fn submit_rollout(
        &self,
        new: NewApply,
        plan: &RolloutPlan,
    ) -> Result<Submitted, StoreError> {
        let (change, planned) = crate::store::validate_rollout(&new, plan)?;
        let now = self.now();
        let mut inner = self.lock()?;
        let mut holders = Vec::new();
        for d in &plan.deployments {
            if let Some(existing) = active_on_place(&inner, &new.target, d, None) {
                holders.push((d, existing));
            }
        }
        if let Some((d, existing)) = holders.first() {
            let same = holders.len() == plan.deployments.len()
                && holders.iter().all(|(_, h)| h == existing)
                && inner.rows.get(existing).is_some_and(|live| {
                    live.operations.len() == planned.len()
                        && adopts(
                            (live.engine, live.spec.fingerprint.as_deref()),
                            &new,
                            &change,
                        )
                });
            if same {
                return Ok(Submitted {
                    id: *existing,
                    adopted: true,
                });
            }
            return Err(StoreError::ActiveApplyExists {
                target: format!("{}@{d}", new.target),
                existing: *existing,
            });
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let mut operations = Vec::with_capacity(planned.len());
        let mut tasks = Vec::new();
        for (k, op) in planned.into_iter().enumerate() {
            let p = &op.planned;
            let op_id = inner.next_operation_id;
            inner.next_operation_id += 1;
            let identifier = p.identifier(&format!("apply-{id}"), plan.table_steps);
            for table in &op.tables {
                tasks.push(MemoryTask {
                    operation: k,
                    state: TaskState::Pending,
                    attempt: 0,
                    table: Some(table.clone()),
                    error_message: None,
                    progress: None,
                });
            }
            operations.push(MemoryOperation {
                id: op_id,
                deployment: p.deployment.clone(),
                deployment_index: p.deployment_index,
                step: p.step,
                key: crate::machine::rollout::operation_key(plan.table_steps, p.step),
                spec: Arc::new(ApplySpec {
                    identifier,
                    target: new.target.clone(),
                    deployment: p.deployment.clone(),
                    ddl: op.ddl,
                    fingerprint: Some(op.fingerprint),
                }),
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
            });
        }
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
                spec,
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
                rollout: Some(plan.policy()),
                operations,
                tasks,
            },
        );
        Ok(Submitted { id, adopted: false })
    }
}
