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
        let change = validate_new_apply(&new)?;
        let tables: Vec<Option<String>> = change
            .statements
            .iter()
            .map(|s| Some(s.table.clone()).filter(|t| !t.is_empty()))
            .collect();
        let planned = plan.operations(&tables).map_err(|r| StoreError::Invalid {
            field: r.field,
            message: r.message,
        })?;
        let mut specs = Vec::with_capacity(planned.len());
        for p in &planned {
            let ddl: Vec<String> = p.statements.iter().map(|i| new.ddl[*i].clone()).collect();
            let fingerprint = crate::ddl::check_change(
                new.engine,
                &new.target.database,
                &ddl,
                new.allow_destructive,
            )
            .map_err(|e| StoreError::Invalid {
                field: "ddl",
                message: e.to_string(),
            })?
            .fingerprint;
            specs.push((ddl, fingerprint));
        }
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
        for (k, (p, (ddl, fingerprint))) in planned.iter().zip(specs).enumerate() {
            let op_id = inner.next_operation_id;
            inner.next_operation_id += 1;
            // Branch names derive from the identifier: only letters, digits and dashes.
            let identifier = if plan.table_steps {
                format!("apply-{id}-d{}-s{}", p.deployment_index + 1, p.step + 1)
            } else {
                format!("apply-{id}-d{}", p.deployment_index + 1)
            };
            for i in &p.statements {
                tasks.push(MemoryTask {
                    operation: k,
                    state: TaskState::Pending,
                    attempt: 0,
                    table: Some(change.statements[*i].table.clone()),
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
                    ddl,
                    fingerprint: Some(fingerprint),
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
