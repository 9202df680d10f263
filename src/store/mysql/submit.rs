//! Submissions: an apply checked as every store checks it, adopted when the same change is
//! already live on its target, refused while another apply holds the target (the unique
//! active flag says so), written with its operation and task rows in one transaction.

use std::str::FromStr;

use sqlx::mysql::MySqlConnection;
use sqlx::Row;

use super::super::{adopts, NewApply, StoreError, Submitted, Target};
use crate::ddl::CheckedChange;

use super::rows::identifier;
use super::{is_duplicate_key, Failure, MySqlStore};
use crate::machine::apply::{ApplyId, ResumeState};
use crate::machine::{ApplyState, EngineKind};

impl MySqlStore {
    /// The active apply on a target, other than `except`. A duplicate key says one exists; if it
    /// finished in between, the caller retries.
    pub(super) async fn active_on_target(
        &self,
        conn: &mut MySqlConnection,
        target: &Target,
        except: Option<ApplyId>,
    ) -> Result<ApplyId, Failure> {
        let existing: Option<ApplyId> = sqlx::query_scalar(
            "SELECT id FROM applies WHERE database_name = ? AND environment = ? AND active_flag = 1 \
             AND id <> ? LIMIT 1",
        )
        .bind(&target.database)
        .bind(&target.environment)
        .bind(except.unwrap_or(0))
        .fetch_optional(conn)
        .await?;
        existing.ok_or_else(|| {
            Failure::Retry(format!("the active apply on {target} finished meanwhile"))
        })
    }

    pub(super) async fn submit_once(
        &self,
        new: &NewApply,
        change: &CheckedChange,
    ) -> Result<Submitted, Failure> {
        let now = self.now_sql();
        let options =
            serde_json::to_string(&new.options).map_err(|e| StoreError::Refused(e.to_string()))?;
        let ddl =
            serde_json::to_string(&new.ddl).map_err(|e| StoreError::Refused(e.to_string()))?;
        let resume = serde_json::to_string(&ResumeState::default())
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let pending = ApplyState::Pending.as_str();
        let mut tx = self.pool.begin().await?;
        let insert = format!(
            "INSERT INTO applies (database_name, environment, engine, state, options, ddl, ddl_fingerprint, \
             state_entered_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, {now}, {now}, {now})"
        );
        let inserted = sqlx::query(&insert)
            .bind(&new.target.database)
            .bind(&new.target.environment)
            .bind(new.engine.as_str())
            .bind(pending)
            .bind(&options)
            .bind(&ddl)
            .bind(&change.fingerprint)
            .execute(&mut *tx)
            .await;
        let id = match inserted {
            Ok(done) => done.last_insert_id(),
            Err(e) if is_duplicate_key(&e) => {
                let existing = self.active_on_target(&mut tx, &new.target, None).await?;
                let row = sqlx::query("SELECT engine, ddl_fingerprint FROM applies WHERE id = ?")
                    .bind(existing)
                    .fetch_optional(&mut *tx)
                    .await?;
                // Binary collations carry the BINARY flag, which sqlx's checked decode refuses.
                let live = match row {
                    Some(r) => {
                        let engine: String = r.try_get_unchecked("engine")?;
                        let fp: Option<String> = r.try_get_unchecked("ddl_fingerprint")?;
                        EngineKind::from_str(&engine).ok().map(|e| (e, fp))
                    }
                    None => None,
                };
                if live.is_some_and(|(engine, fp)| adopts((engine, fp.as_deref()), new, change)) {
                    return Ok(Submitted {
                        id: existing,
                        adopted: true,
                    });
                }
                return Err(StoreError::ActiveApplyExists {
                    target: new.target.to_string(),
                    existing,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        sqlx::query("UPDATE applies SET apply_identifier = ? WHERE id = ?")
            .bind(identifier(id))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let op = format!(
            "INSERT INTO apply_operations (apply_id, state, engine_resume_state, created_at, updated_at) \
             VALUES (?, ?, ?, {now}, {now})"
        );
        let op_id = sqlx::query(&op)
            .bind(id)
            .bind(pending)
            .bind(&resume)
            .execute(&mut *tx)
            .await?
            .last_insert_id();
        let values = vec![format!("(?, ?, ?, ?, ?, ?, {now}, {now})"); new.ddl.len()].join(", ");
        let tasks = format!(
            "INSERT INTO tasks (apply_id, apply_operation_id, seq, ddl, table_name, state, created_at, updated_at) VALUES {values}"
        );
        let mut q = sqlx::query(&tasks);
        for (seq, (ddl, checked)) in new.ddl.iter().zip(&change.statements).enumerate() {
            q = q
                .bind(id)
                .bind(op_id)
                .bind(seq as u32)
                .bind(ddl)
                .bind(&checked.table)
                .bind(crate::machine::TaskState::Pending.as_str());
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Submitted { id, adopted: false })
    }
}
