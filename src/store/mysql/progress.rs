//! The engine's report of an operation's work, on its task rows (`Store::record_progress`).

use sqlx::Row;

use super::{Failure, MySqlStore};
use crate::machine::apply::ApplyId;
use crate::store::progress::{RunnerStart, TaskProgress};
use crate::store::{Lease, StoreError};

impl MySqlStore {
    /// Fenced by the leased operation's epoch, checked under its row lock; the task rows are
    /// written in the same transaction.
    pub(super) async fn record_progress_once(
        &self,
        lease: &Lease,
        p: &TaskProgress,
    ) -> Result<(), Failure> {
        let mut tx = self.pool.begin().await?;
        // The apply row first, as every other write takes its locks.
        let apply: Option<u64> =
            sqlx::query_scalar("SELECT id FROM applies WHERE id = ? FOR UPDATE")
                .bind(lease.apply)
                .fetch_optional(&mut *tx)
                .await?;
        if apply.is_none() {
            return Err(Failure::Store(StoreError::RowGone(lease.apply)));
        }
        let ops = sqlx::query(
            "SELECT id, lease_epoch FROM apply_operations WHERE apply_id = ? ORDER BY id FOR UPDATE",
        )
        .bind(lease.apply)
        .fetch_all(&mut *tx)
        .await?;
        if ops.is_empty() {
            return Err(Failure::Store(StoreError::RowGone(lease.apply)));
        }
        let mut leased = Vec::new();
        for r in ops {
            let epoch: u64 = r.try_get("lease_epoch")?;
            // Epoch 0 is never a lease: no claim hands it out.
            if lease.epoch > 0 && self.rules.write_allowed(epoch, lease.epoch) {
                leased.push(r.try_get::<u64, _>("id")?);
            }
        }
        if leased.is_empty() {
            return Err(Failure::Store(StoreError::LeaseLost {
                apply: lease.apply,
                epoch: lease.epoch,
            }));
        }
        let sql = format!(
            "UPDATE tasks SET progress_phase = ?, rows_copied = ?, rows_total = ?, \
             progress_percent = ?, progress_eta = ?, runner_start = ?, progress_note = ?, \
             progress_at = {} \
             WHERE apply_id = ? AND apply_operation_id IN ({})",
            self.now_sql(),
            vec!["?"; leased.len()].join(", ")
        );
        let mut q = sqlx::query(&sql)
            .bind(p.phase.as_deref())
            .bind(p.rows_copied)
            .bind(p.rows_total)
            .bind(p.percent)
            .bind(p.eta.as_deref())
            .bind(p.start.map(RunnerStart::as_str))
            .bind(p.note.as_deref())
            .bind(lease.apply);
        for id in leased {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The columns [`read_progress`] reads.
pub(super) const PROGRESS_COLUMNS: &str =
    "CAST(progress_at IS NOT NULL AS SIGNED) AS has_progress, \
     progress_phase, rows_copied, rows_total, progress_percent, progress_eta, runner_start, \
     progress_note";

/// The progress columns of a task row read back; `None` when the engine never reported.
pub(super) fn read_progress(
    apply: ApplyId,
    r: &sqlx::mysql::MySqlRow,
) -> Result<Option<TaskProgress>, StoreError> {
    let bad = |column: &'static str, e: String| StoreError::BadRow {
        apply,
        column,
        detail: e,
    };
    let reported: i64 = r
        .try_get("has_progress")
        .map_err(|e| bad("tasks.progress_at", e.to_string()))?;
    if reported == 0 {
        return Ok(None);
    }
    let start: Option<String> = r
        .try_get_unchecked("runner_start")
        .map_err(|e| bad("tasks.runner_start", e.to_string()))?;
    Ok(Some(TaskProgress {
        phase: r
            .try_get_unchecked("progress_phase")
            .map_err(|e| bad("tasks.progress_phase", e.to_string()))?,
        rows_copied: r
            .try_get_unchecked("rows_copied")
            .map_err(|e| bad("tasks.rows_copied", e.to_string()))?,
        rows_total: r
            .try_get_unchecked("rows_total")
            .map_err(|e| bad("tasks.rows_total", e.to_string()))?,
        percent: r
            .try_get_unchecked("progress_percent")
            .map_err(|e| bad("tasks.progress_percent", e.to_string()))?,
        eta: r
            .try_get_unchecked("progress_eta")
            .map_err(|e| bad("tasks.progress_eta", e.to_string()))?,
        start: start
            .map(|s| s.parse::<RunnerStart>())
            .transpose()
            .map_err(|e| bad("tasks.runner_start", e))?,
        note: r
            .try_get_unchecked("progress_note")
            .map_err(|e| bad("tasks.progress_note", e.to_string()))?,
    }))
}
