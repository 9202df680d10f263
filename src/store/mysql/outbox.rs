//! The webhook outbox, recording side: the statement that inserts an event (executed or queued
//! in the transaction of the change it reports, see `store::webhooks`) and the events read back.

use std::str::FromStr;

use sqlx::{MySql, Row, Transaction};

use super::claim_tx::sql_text;
use super::{Failure, MySqlStore};
use crate::machine::apply::ApplyId;
use crate::store::webhooks::{EventKind, NewEvent, OutboxEvent};
use crate::store::StoreError;

/// The time of an outbox row as RFC 3339 in UTC (every stored time is UTC).
pub(super) const AT_SQL: &str = "DATE_FORMAT(o.created_at, '%Y-%m-%dT%H:%i:%s.%fZ')";

/// The statement that records `event` at `now` (an SQL time expression); with `when`, only if
/// that SQL condition holds (a claim records its event only if it took the lease). Every value
/// is a literal, so the statement can be queued with a claim's or a rollout's batch.
pub(super) fn insert_event_sql(event: &NewEvent, now: &str, when: Option<&str>) -> String {
    let operation = event
        .operation
        .map_or_else(|| "NULL".to_string(), |o| o.to_string());
    let condition = when.map_or_else(String::new, |c| format!(" WHERE {c}"));
    format!(
        "INSERT INTO webhook_outbox (apply_id, apply_operation_id, kind, payload, created_at) \
         SELECT {}, {operation}, '{}', {}, {now} FROM DUAL{condition}",
        event.apply,
        event.kind.as_str(),
        sql_text(&event.payload.to_string()),
    )
}

impl MySqlStore {
    /// Record `event` (if any) in `tx`.
    pub(super) async fn record_event(
        &self,
        tx: &mut Transaction<'_, MySql>,
        event: Option<NewEvent>,
        now: &str,
    ) -> Result<(), Failure> {
        if let Some(event) = event {
            sqlx::query(&insert_event_sql(&event, now, None))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn webhook_events_once(
        &self,
        apply: ApplyId,
    ) -> Result<Vec<OutboxEvent>, Failure> {
        let rows = sqlx::query(&format!(
            "SELECT o.id, o.apply_operation_id, o.kind, CAST(o.payload AS CHAR) AS payload, \
             {AT_SQL} AS at FROM webhook_outbox o WHERE o.apply_id = ? ORDER BY o.id"
        ))
        .bind(apply)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| self.outbox_row(apply, row)).collect()
    }

    /// One outbox row; an unreadable one is reported, never guessed.
    fn outbox_row(
        &self,
        apply: ApplyId,
        row: &sqlx::mysql::MySqlRow,
    ) -> Result<OutboxEvent, Failure> {
        let kind_text: String = row.try_get_unchecked("kind")?;
        let kind = EventKind::from_str(&kind_text)
            .map_err(|e| self.bad_row(apply, "webhook_outbox.kind", &kind_text, e))?;
        let payload_text: String = row.try_get_unchecked("payload")?;
        let payload = serde_json::from_str(&payload_text).map_err(|e| {
            Failure::Store(StoreError::BadRow {
                apply,
                column: "webhook_outbox.payload",
                detail: e.to_string(),
            })
        })?;
        Ok(OutboxEvent {
            id: row.try_get("id")?,
            apply,
            operation: row.try_get("apply_operation_id")?,
            kind,
            payload,
            at: row.try_get_unchecked("at")?,
        })
    }
}
