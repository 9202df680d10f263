//! `Inspect` for the MySQL store: read-only listings for the CLI, the API and the status page.
//! Ages are computed by the database clock.

use async_trait::async_trait;
use sqlx::mysql::MySqlRow;
use sqlx::Row;

use super::MySqlStore;
use crate::machine::apply::{ApplyId, ResumeState};
use crate::machine::rollout::{CutoverPolicy, OnFailure, RolloutPolicy};
use crate::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind, TaskState};
use crate::store::status::{ApplyStatus, Inspect, OperationStatus, TaskStatus};
use crate::store::timeline::{audit_entry, ordered, request_entries, TimelineEntry};
use crate::store::{StoreError, Target};

/// The columns of the status read; ages are by the store's clock (`now`, `now_sql`).
fn columns(now: &str) -> String {
    format!(
        "a.id, a.apply_identifier, a.database_name, a.environment, a.engine, a.state, \
     CAST(a.options AS CHAR) AS options, CAST(a.ddl AS CHAR) AS ddl, a.attempt, a.lease_owner, a.lease_epoch, a.error_message, \
     CAST(TIMESTAMPDIFF(MICROSECOND, a.heartbeat_at, {now}) AS SIGNED) AS heartbeat_age_us, \
     CAST(TIMESTAMPDIFF(MICROSECOND, a.state_entered_at, {now}) AS SIGNED) AS state_age_us, \
     CAST(TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) AS SIGNED) AS updated_age_us, \
     CAST(TIMESTAMPDIFF(MICROSECOND, {now}, a.parked_until) AS SIGNED) AS wake_in_us, \
     (SELECT CAST(o.engine_resume_state AS CHAR) FROM apply_operations o WHERE o.apply_id = a.id ORDER BY o.id LIMIT 1) AS resume, \
     CAST((SELECT COUNT(*) FROM tasks t WHERE t.apply_id = a.id) AS SIGNED) AS tasks_total, \
     CAST((SELECT COUNT(*) FROM tasks t WHERE t.apply_id = a.id AND t.state = 'completed') AS SIGNED) AS tasks_completed, \
     a.cutover_policy, a.on_failure, a.max_drivers, a.released, a.held"
    )
}

fn bad(id: ApplyId, column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::BadRow {
        apply: id,
        column,
        detail: detail.to_string(),
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The rollout policy of an apply row (`None` for an apply of one operation); an unknown
/// failure policy reads as `halt`, as the rules read it.
fn rollout_policy(row: &MySqlRow, id: ApplyId) -> Result<Option<RolloutPolicy>, StoreError> {
    let cutover: Option<String> = row
        .try_get_unchecked("cutover_policy")
        .map_err(|e| bad(id, "cutover_policy", e))?;
    let Some(cutover) = cutover else {
        return Ok(None);
    };
    let cutover = CutoverPolicy::ALL
        .iter()
        .copied()
        .find(|p| p.as_str() == cutover)
        .ok_or_else(|| bad(id, "cutover_policy", format!("unknown policy {cutover:?}")))?;
    let on_failure: Option<String> = row
        .try_get_unchecked("on_failure")
        .map_err(|e| bad(id, "on_failure", e))?;
    let flag = |col: &'static str| -> Result<bool, StoreError> {
        Ok(row.try_get::<i8, _>(col).map_err(|e| bad(id, col, e))? != 0)
    };
    Ok(Some(RolloutPolicy {
        cutover,
        on_failure: OnFailure::read_stored(on_failure.as_deref().unwrap_or("")),
        max_drivers: row
            .try_get("max_drivers")
            .map_err(|e| bad(id, "max_drivers", e))?,
        released: flag("released")?,
        held: flag("held")?,
    }))
}

fn decode(row: &MySqlRow) -> Result<ApplyStatus, StoreError> {
    let id: u64 = row.try_get("id").map_err(unavailable)?;
    let text = |col: &'static str| -> Result<String, StoreError> {
        row.try_get_unchecked::<String, _>(col)
            .map_err(|e| bad(id, col, e))
    };
    let count = |col: &'static str| -> Result<u32, StoreError> {
        let n: i64 = row.try_get(col).map_err(|e| bad(id, col, e))?;
        u32::try_from(n).map_err(|e| bad(id, col, e))
    };
    let state: ApplyState = text("state")?.parse().map_err(|e| bad(id, "state", e))?;
    let engine: EngineKind = text("engine")?.parse().map_err(|e| bad(id, "engine", e))?;
    let options: ApplyOptions =
        serde_json::from_str(&text("options")?).map_err(|e| bad(id, "options", e))?;
    let ddl: Vec<String> = serde_json::from_str(&text("ddl")?).map_err(|e| bad(id, "ddl", e))?;
    let lease_owner: Option<String> = row
        .try_get_unchecked("lease_owner")
        .map_err(|e| bad(id, "lease_owner", e))?;
    let age_us: Option<i64> = row
        .try_get("heartbeat_age_us")
        .map_err(|e| bad(id, "heartbeat_at", e))?;
    let state_age_us: Option<i64> = row
        .try_get("state_age_us")
        .map_err(|e| bad(id, "state_entered_at", e))?;
    let updated_age_us: Option<i64> = row
        .try_get("updated_age_us")
        .map_err(|e| bad(id, "updated_at", e))?;
    let wake_in_us: Option<i64> = row
        .try_get("wake_in_us")
        .map_err(|e| bad(id, "parked_until", e))?;
    let resume: Option<String> = row
        .try_get_unchecked("resume")
        .map_err(|e| bad(id, "engine_resume_state", e))?;
    let lease_owner_is_none = lease_owner.is_none();
    let resume: ResumeState = match resume {
        Some(json) => serde_json::from_str(&json).map_err(|e| bad(id, "engine_resume_state", e))?,
        None => ResumeState::default(),
    };
    Ok(ApplyStatus {
        id,
        identifier: row
            .try_get_unchecked::<Option<String>, _>("apply_identifier")
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("apply-{id}")),
        target: Target {
            database: text("database_name")?,
            environment: text("environment")?,
        },
        engine,
        state,
        options,
        ddl,
        attempt: row.try_get("attempt").map_err(|e| bad(id, "attempt", e))?,
        heartbeat_age_ms: lease_owner
            .as_ref()
            .filter(|_| state.is_active())
            .and(age_us)
            .map(|us| (us.max(0) / 1000) as u64),
        state_age_ms: (state_age_us.unwrap_or(0).max(0) / 1000) as u64,
        updated_age_ms: (updated_age_us.unwrap_or(0).max(0) / 1000) as u64,
        resume,
        lease_owner,
        lease_epoch: row
            .try_get("lease_epoch")
            .map_err(|e| bad(id, "lease_epoch", e))?,
        error: row
            .try_get_unchecked("error_message")
            .map_err(|e| bad(id, "error_message", e))?,
        tasks_total: count("tasks_total")?,
        tasks_completed: count("tasks_completed")?,
        tasks: Vec::new(),
        pending_requests: Vec::new(),
        requests: Vec::new(),
        parked_wake_in_ms: wake_in_us
            .filter(|_| lease_owner_is_none)
            .map(|us| (us.max(0) / 1000) as u64),
        wait: None,
        explanation: None,
        operations: Vec::new(),
        rollout: rollout_policy(row, id)?,
    })
}

use super::progress::{read_progress, PROGRESS_COLUMNS};

impl MySqlStore {
    async fn attach_tasks(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT table_name, state, error_message, {PROGRESS_COLUMNS} FROM tasks \
             WHERE apply_id = ? ORDER BY seq"
        ))
        .bind(status.id)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable)?;
        for r in rows {
            let table: Option<String> = r
                .try_get_unchecked("table_name")
                .map_err(|e| bad(status.id, "table_name", e))?;
            let state: String = r
                .try_get_unchecked("state")
                .map_err(|e| bad(status.id, "state", e))?;
            let state = state
                .parse::<TaskState>()
                .map_err(|e| bad(status.id, "tasks.state", e))?;
            let error: Option<String> = r
                .try_get_unchecked("error_message")
                .map_err(|e| bad(status.id, "tasks.error_message", e))?;
            let progress = read_progress(status.id, &r)?;
            status.tasks.push(TaskStatus {
                table,
                state,
                error,
                progress,
            });
        }
        Ok(())
    }

    async fn attach_operations(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        let now = self.now_sql();
        let rows = sqlx::query(&format!(
            "SELECT o.id, o.deployment, o.operation_key, o.deployment_index, o.step, o.state, o.attempt, \
             o.lease_owner, o.lease_epoch, o.failed_closed, o.error_message, \
             CAST(TIMESTAMPDIFF(MICROSECOND, o.heartbeat_at, {now}) AS SIGNED) AS heartbeat_age_us, \
             CAST(TIMESTAMPDIFF(MICROSECOND, {now}, o.parked_until) AS SIGNED) AS wake_in_us, \
             CAST((SELECT COUNT(*) FROM tasks t WHERE t.apply_operation_id = o.id) AS SIGNED) AS tasks_total, \
             CAST((SELECT COUNT(*) FROM tasks t WHERE t.apply_operation_id = o.id AND t.state = 'completed') AS SIGNED) AS tasks_completed \
             FROM apply_operations o WHERE o.apply_id = ? ORDER BY o.deployment_index, o.step, o.id",
        ))
        .bind(status.id)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable)?;
        for r in rows {
            let id = status.id;
            let text = |col: &'static str| -> Result<String, StoreError> {
                r.try_get_unchecked::<String, _>(col)
                    .map_err(|e| bad(id, col, e))
            };
            let count = |col: &'static str| -> Result<u32, StoreError> {
                let n: i64 = r.try_get(col).map_err(|e| bad(id, col, e))?;
                u32::try_from(n).map_err(|e| bad(id, col, e))
            };
            let state = text("state")?
                .parse::<ApplyState>()
                .map_err(|e| bad(id, "apply_operations.state", e))?;
            let lease_owner: Option<String> = r
                .try_get_unchecked("lease_owner")
                .map_err(|e| bad(id, "apply_operations.lease_owner", e))?;
            let wake_in_us: Option<i64> = r
                .try_get("wake_in_us")
                .map_err(|e| bad(id, "apply_operations.parked_until", e))?;
            let parked = lease_owner.is_none();
            let hb_us: Option<i64> = r
                .try_get("heartbeat_age_us")
                .map_err(|e| bad(id, "apply_operations.heartbeat_at", e))?;
            status.operations.push(OperationStatus {
                id: r
                    .try_get("id")
                    .map_err(|e| bad(id, "apply_operations.id", e))?,
                deployment: text("deployment")?,
                key: text("operation_key")?,
                deployment_index: r
                    .try_get("deployment_index")
                    .map_err(|e| bad(id, "deployment_index", e))?,
                step: r.try_get("step").map_err(|e| bad(id, "step", e))?,
                state,
                attempt: r
                    .try_get("attempt")
                    .map_err(|e| bad(id, "apply_operations.attempt", e))?,
                heartbeat_age_ms: lease_owner
                    .as_ref()
                    .and(hb_us)
                    .map(|us| (us.max(0) / 1000) as u64),
                lease_owner,
                lease_epoch: r
                    .try_get("lease_epoch")
                    .map_err(|e| bad(id, "apply_operations.lease_epoch", e))?,
                tasks_total: count("tasks_total")?,
                tasks_completed: count("tasks_completed")?,
                failed_closed: r
                    .try_get::<i8, _>("failed_closed")
                    .map_err(|e| bad(id, "failed_closed", e))?
                    != 0,
                error: r
                    .try_get_unchecked("error_message")
                    .map_err(|e| bad(id, "apply_operations.error_message", e))?,
                parked_wake_in_ms: wake_in_us
                    .filter(|_| parked)
                    .map(|us| (us.max(0) / 1000) as u64),
                gate: None,
                explanation: None,
            });
        }
        Ok(())
    }

    /// Tasks, operations and requests: the parts of a status read beside the apply row.
    async fn attach_all(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        self.attach_tasks(status).await?;
        self.attach_operations(status).await?;
        self.attach_requests(status).await?;
        // Again, now that the operations are read: their gates come from them.
        *status = status.clone().explain(&self.rules);
        Ok(())
    }

    async fn attach_requests(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT operation, status, error_message FROM apply_control_requests WHERE apply_id = ? ORDER BY id")
            .bind(status.id)
            .fetch_all(self.pool())
            .await
            .map_err(unavailable)?;
        for r in rows {
            let op: String = r
                .try_get_unchecked("operation")
                .map_err(|e| bad(status.id, "operation", e))?;
            let Ok(op) = op.parse::<ControlOp>() else {
                tracing::warn!(apply = status.id, operation = %op, "unknown control operation in apply_control_requests; skipped");
                continue;
            };
            let st: String = r
                .try_get_unchecked("status")
                .map_err(|e| bad(status.id, "status", e))?;
            let msg: Option<String> = r
                .try_get_unchecked("error_message")
                .map_err(|e| bad(status.id, "error_message", e))?;
            if st == "pending" {
                status.pending_requests.push(op);
            }
            status
                .requests
                .push((op, msg.map_or(st.clone(), |m| format!("{st}: {m}"))));
        }
        Ok(())
    }
}

#[async_trait]
impl Inspect for MySqlStore {
    async fn webhook_health(
        &self,
    ) -> Result<Vec<crate::store::webhooks::EndpointHealth>, StoreError> {
        crate::store::webhooks::Deliveries::health(self).await
    }

    async fn list(&self, limit: usize) -> Result<Vec<ApplyStatus>, StoreError> {
        let sql = format!(
            "SELECT {} FROM applies a ORDER BY a.id DESC LIMIT ?",
            columns(&self.now_sql())
        );
        let rows = sqlx::query(&sql)
            .bind(limit as u64)
            .fetch_all(self.pool())
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            match decode(r) {
                Ok(mut s) => {
                    self.attach_all(&mut s).await?;
                    out.push(s);
                }
                // One unreadable row must not hide the others.
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable apply row in the listing")
                }
            }
        }
        Ok(out)
    }

    async fn count_by_state(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(state AS CHAR) AS state, CAST(COUNT(*) AS SIGNED) AS n FROM applies GROUP BY state",
        )
        .fetch_all(self.pool())
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get_unchecked("state").map_err(unavailable)?;
                let n: i64 = r.try_get("n").map_err(unavailable)?;
                Ok((state, n.max(0) as u64))
            })
            .collect()
    }

    async fn timeline(&self, id: ApplyId, limit: usize) -> Result<Vec<TimelineEntry>, StoreError> {
        let exists = sqlx::query("SELECT id FROM applies WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(unavailable)?;
        if exists.is_none() {
            return Err(StoreError::RowGone(id));
        }
        let now = self.now_sql();
        let age = |col: &str| format!("CAST(TIMESTAMPDIFF(MICROSECOND, {col}, {now}) AS SIGNED)");
        let logs = sqlx::query(&format!(
            "SELECT from_state, to_state, lease_epoch, lease_owner, cause, detail, apply_operation_id, \
             {} AS age_us FROM apply_logs WHERE apply_id = ? ORDER BY id DESC LIMIT ?",
            age("created_at")
        ))
        .bind(id)
        .bind(limit as u64)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable)?;
        let ms = |us: Option<i64>| (us.unwrap_or(0).max(0) / 1000) as u64;
        let mut entries = Vec::with_capacity(logs.len() + 8);
        // Newest first from the query: read back in write order, which `ordered` keeps for
        // the entries of one instant (one transaction).
        for r in logs.iter().rev() {
            let text = |col: &'static str| -> Result<String, StoreError> {
                r.try_get_unchecked::<String, _>(col)
                    .map_err(|e| bad(id, col, e))
            };
            let detail: Option<String> = r
                .try_get_unchecked("detail")
                .map_err(|e| bad(id, "apply_logs.detail", e))?;
            entries.push(audit_entry(
                ms(r.try_get("age_us")
                    .map_err(|e| bad(id, "apply_logs.created_at", e))?),
                &text("from_state")?,
                &text("to_state")?,
                r.try_get("lease_epoch")
                    .map_err(|e| bad(id, "apply_logs.lease_epoch", e))?,
                r.try_get_unchecked("lease_owner")
                    .map_err(|e| bad(id, "apply_logs.lease_owner", e))?,
                &text("cause")?,
                detail.as_deref(),
                r.try_get("apply_operation_id")
                    .map_err(|e| bad(id, "apply_logs.apply_operation_id", e))?,
            ));
        }
        let requests = sqlx::query(&format!(
            "SELECT operation, status, error_message, requested_by, {} AS asked_us, {} AS ended_us \
             FROM apply_control_requests WHERE apply_id = ?",
            age("COALESCE(requested_at, created_at)"),
            age("completed_at")
        ))
        .bind(id)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable)?;
        for r in &requests {
            let text = |col: &'static str| -> Result<String, StoreError> {
                r.try_get_unchecked::<String, _>(col)
                    .map_err(|e| bad(id, col, e))
            };
            let message: Option<String> = r
                .try_get_unchecked("error_message")
                .map_err(|e| bad(id, "apply_control_requests.error_message", e))?;
            let by: Option<String> = r
                .try_get_unchecked("requested_by")
                .map_err(|e| bad(id, "apply_control_requests.requested_by", e))?;
            let ended: Option<i64> = r
                .try_get("ended_us")
                .map_err(|e| bad(id, "apply_control_requests.completed_at", e))?;
            entries.extend(request_entries(
                &text("operation")?,
                ms(r.try_get("asked_us")
                    .map_err(|e| bad(id, "apply_control_requests.requested_at", e))?),
                by.as_deref(),
                &text("status")?,
                message.as_deref(),
                ended.map(|us| ms(Some(us))),
            ));
        }
        Ok(ordered(entries, limit))
    }

    async fn status(&self, id: ApplyId) -> Result<ApplyStatus, StoreError> {
        let sql = format!(
            "SELECT {} FROM applies a WHERE a.id = ?",
            columns(&self.now_sql())
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .map_err(unavailable)?;
        let mut s = decode(&row.ok_or(StoreError::RowGone(id))?)?;
        self.attach_all(&mut s).await?;
        Ok(s)
    }
}
