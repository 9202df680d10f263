//! `Inspect` for the MySQL store: read-only listings for the CLI, the API and the status page.
//! Ages are computed by the database clock.

use async_trait::async_trait;
use sqlx::mysql::MySqlRow;
use sqlx::Row;

use super::MySqlStore;
use crate::machine::apply::{ApplyId, ResumeState};
use crate::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind, TaskState};
use crate::store::status::{ApplyStatus, Inspect, OperationStatus, TaskStatus};
use crate::store::{StoreError, Target};

const COLUMNS: &str = "a.id, a.apply_identifier, a.database_name, a.environment, a.engine, a.state, \
     CAST(a.options AS CHAR) AS options, CAST(a.ddl AS CHAR) AS ddl, a.attempt, a.lease_owner, a.lease_epoch, a.error_message, \
     CAST(TIMESTAMPDIFF(MICROSECOND, a.heartbeat_at, NOW(6)) AS SIGNED) AS heartbeat_age_us, \
     CAST(TIMESTAMPDIFF(MICROSECOND, a.state_entered_at, NOW(6)) AS SIGNED) AS state_age_us, \
     CAST(TIMESTAMPDIFF(MICROSECOND, NOW(6), a.parked_until) AS SIGNED) AS wake_in_us, \
     (SELECT CAST(o.engine_resume_state AS CHAR) FROM apply_operations o WHERE o.apply_id = a.id ORDER BY o.id LIMIT 1) AS resume, \
     CAST((SELECT COUNT(*) FROM tasks t WHERE t.apply_id = a.id) AS SIGNED) AS tasks_total, \
     CAST((SELECT COUNT(*) FROM tasks t WHERE t.apply_id = a.id AND t.state = 'completed') AS SIGNED) AS tasks_completed";

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
        operations: Vec::new(),
        rollout: None,
    }
    .explain())
}

impl MySqlStore {
    async fn attach_tasks(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        let rows =
            sqlx::query("SELECT table_name, state FROM tasks WHERE apply_id = ? ORDER BY seq")
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
            status.tasks.push(TaskStatus { table, state });
        }
        Ok(())
    }

    async fn attach_operations(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        let rows = sqlx::query(
            "SELECT id, deployment, operation_key, state FROM apply_operations \
             WHERE apply_id = ? ORDER BY id",
        )
        .bind(status.id)
        .fetch_all(self.pool())
        .await
        .map_err(unavailable)?;
        for r in rows {
            let text = |col: &'static str| -> Result<String, StoreError> {
                r.try_get_unchecked::<String, _>(col)
                    .map_err(|e| bad(status.id, col, e))
            };
            let state = text("state")?
                .parse::<ApplyState>()
                .map_err(|e| bad(status.id, "apply_operations.state", e))?;
            status.operations.push(OperationStatus {
                id: r
                    .try_get("id")
                    .map_err(|e| bad(status.id, "apply_operations.id", e))?,
                deployment: text("deployment")?,
                key: text("operation_key")?,
                deployment_index: 0,
                step: 0,
                state,
                attempt: 0,
                lease_owner: None,
                lease_epoch: 0,
                heartbeat_age_ms: None,
                tasks_total: 0,
                tasks_completed: 0,
                failed_closed: false,
                error: None,
                gate: None,
            });
        }
        Ok(())
    }

    /// Tasks, operations and requests: the parts of a status read beside the apply row.
    async fn attach_all(&self, status: &mut ApplyStatus) -> Result<(), StoreError> {
        self.attach_tasks(status).await?;
        self.attach_operations(status).await?;
        self.attach_requests(status).await
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
    async fn list(&self, limit: usize) -> Result<Vec<ApplyStatus>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM applies a ORDER BY a.id DESC LIMIT ?");
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

    async fn status(&self, id: ApplyId) -> Result<ApplyStatus, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM applies a WHERE a.id = ?");
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
