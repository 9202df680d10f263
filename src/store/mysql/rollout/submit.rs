//! Submitting a rollout: the apply row, one operation row per deployment and table step with
//! its task rows, and a reservation of every deployment, in one transaction. The same change
//! sent again while it is live is adopted.

use std::str::FromStr;

use sqlx::Row;

use super::super::super::{adopts, validate_rollout, NewApply, StoreError, Submitted};
use super::super::rows::identifier;
use super::super::{is_duplicate_key, Failure, MySqlStore};
use crate::machine::apply::{ApplyId, ResumeState};
use crate::machine::rollout::{operation_key, RolloutPlan};
use crate::machine::{ApplyState, EngineKind, TaskState};

impl MySqlStore {
    pub(in super::super) async fn submit_rollout(
        &self,
        new: &NewApply,
        plan: &RolloutPlan,
    ) -> Result<Submitted, StoreError> {
        let (change, planned) = validate_rollout(new, plan)?;
        self.retrying("submit rollout", || async {
            let now = self.now_sql();
            let mut tx = self.pool.begin().await?;
            // Who holds the deployments now (a plain read: the insert below is what decides).
            let sql = format!(
                "SELECT deployment, apply_id FROM deployment_reservations WHERE database_name = ? \
                 AND environment = ? AND deployment IN ({})",
                vec!["?"; plan.deployments.len()].join(", ")
            );
            let mut q = sqlx::query(&sql)
                .bind(&new.target.database)
                .bind(&new.target.environment);
            for d in &plan.deployments {
                q = q.bind(d);
            }
            let mut holders: Vec<(String, ApplyId)> = Vec::new();
            for r in q.fetch_all(&mut *tx).await? {
                holders.push((r.try_get_unchecked("deployment")?, r.try_get("apply_id")?));
            }
            // In plan order, so the message names the first busy deployment.
            holders.sort_by_key(|(d, _)| plan.deployments.iter().position(|p| p == d));
            if let Some((d, existing)) = holders.first().cloned() {
                let same_holder = holders.len() == plan.deployments.len()
                    && holders.iter().all(|(_, h)| *h == existing);
                let live = sqlx::query(
                    "SELECT a.engine, a.ddl_fingerprint, \
                     (SELECT COUNT(*) FROM apply_operations o WHERE o.apply_id = a.id) AS ops \
                     FROM applies a WHERE a.id = ?",
                )
                .bind(existing)
                .fetch_optional(&mut *tx)
                .await?;
                let adopted = match live {
                    Some(r) if same_holder => {
                        let engine: String = r.try_get_unchecked("engine")?;
                        let fp: Option<String> = r.try_get_unchecked("ddl_fingerprint")?;
                        let ops: i64 = r.try_get("ops")?;
                        ops as usize == planned.len()
                            && EngineKind::from_str(&engine)
                                .is_ok_and(|e| adopts((e, fp.as_deref()), new, &change))
                    }
                    _ => false,
                };
                if adopted {
                    return Ok(Submitted {
                        id: existing,
                        adopted: true,
                    });
                }
                return Err(Failure::Store(StoreError::ActiveApplyExists {
                    target: format!("{}@{d}", new.target),
                    existing,
                }));
            }
            let options = serde_json::to_string(&new.options)
                .map_err(|e| StoreError::Refused(e.to_string()))?;
            let ddl =
                serde_json::to_string(&new.ddl).map_err(|e| StoreError::Refused(e.to_string()))?;
            let resume = serde_json::to_string(&ResumeState::default())
                .map_err(|e| StoreError::Refused(e.to_string()))?;
            let pending = ApplyState::Pending.as_str();
            let insert = format!(
                "INSERT INTO applies (database_name, environment, engine, state, options, ddl, ddl_fingerprint, \
                 cutover_policy, on_failure, max_drivers, state_entered_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now}, {now}, {now})"
            );
            let id = sqlx::query(&insert)
                .bind(&new.target.database)
                .bind(&new.target.environment)
                .bind(new.engine.as_str())
                .bind(pending)
                .bind(&options)
                .bind(&ddl)
                .bind(&change.fingerprint)
                .bind(plan.cutover_policy.as_str())
                .bind(plan.on_failure.as_str())
                .bind(plan.max_drivers_per_apply)
                .execute(&mut *tx)
                .await?
                .last_insert_id();
            let apply_identifier = identifier(id);
            sqlx::query("UPDATE applies SET apply_identifier = ? WHERE id = ?")
                .bind(&apply_identifier)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let reserve = format!(
                "INSERT INTO deployment_reservations (database_name, environment, deployment, apply_id) VALUES {}",
                vec!["(?, ?, ?, ?)"; plan.deployments.len()].join(", ")
            );
            let mut q = sqlx::query(&reserve);
            // In key order, as every reservation insert: two submits never lock in turn.
            let sorted: std::collections::BTreeSet<&String> = plan.deployments.iter().collect();
            for d in sorted {
                q = q
                    .bind(&new.target.database)
                    .bind(&new.target.environment)
                    .bind(d)
                    .bind(id);
            }
            match q.execute(&mut *tx).await {
                Ok(_) => {}
                // Taken since the read above: read again from the start.
                Err(e) if is_duplicate_key(&e) => {
                    return Err(Failure::Retry(format!(
                        "a deployment of {} was reserved meanwhile",
                        new.target
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            let mut seq = 0u32;
            for op in &planned {
                let p = &op.planned;
                let sql = format!(
                    "INSERT INTO apply_operations (apply_id, deployment, operation_key, deployment_index, step, \
                     identifier, ddl_fingerprint, state, engine_resume_state, state_entered_at, created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {now}, {now}, {now})"
                );
                let op_id = sqlx::query(&sql)
                    .bind(id)
                    .bind(&p.deployment)
                    .bind(operation_key(plan.table_steps, p.step))
                    .bind(p.deployment_index)
                    .bind(p.step)
                    .bind(p.identifier(&apply_identifier, plan.table_steps))
                    .bind(&op.fingerprint)
                    .bind(pending)
                    .bind(&resume)
                    .execute(&mut *tx)
                    .await?
                    .last_insert_id();
                let values =
                    vec![format!("(?, ?, ?, ?, ?, ?, {now}, {now})"); op.ddl.len()].join(", ");
                let tasks = format!(
                    "INSERT INTO tasks (apply_id, apply_operation_id, seq, ddl, table_name, state, created_at, updated_at) VALUES {values}"
                );
                let mut q = sqlx::query(&tasks);
                for (ddl, table) in op.ddl.iter().zip(&op.tables) {
                    q = q
                        .bind(id)
                        .bind(op_id)
                        .bind(seq)
                        .bind(ddl)
                        .bind(table)
                        .bind(TaskState::Pending.as_str());
                    seq += 1;
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Submitted { id, adopted: false })
        })
        .await
    }
}
