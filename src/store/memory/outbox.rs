//! The memory store's webhook outbox: the same events the MySQL store records for the same
//! moves (`store::webhooks`), derived from the audit log and the accepted requests in the order
//! they happened — the memory store changes everything under one lock, so an event exists
//! exactly when its change does.

use super::{Inner, MemoryStore};
use crate::machine::apply::ApplyId;
use crate::machine::ControlOp;
use crate::store::webhooks::{Move, NewEvent, OutboxEvent};
use crate::store::StoreError;

/// An accepted control request, placed after the first `after` audit entries.
#[derive(Debug, Clone)]
pub(super) struct LoggedRequest {
    pub after: usize,
    pub apply: ApplyId,
    pub op: ControlOp,
    pub at_ms: u64,
}

impl MemoryStore {
    /// Every event recorded so far, oldest first, numbered from 1.
    pub fn outbox(&self) -> Vec<OutboxEvent> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        events(&inner)
    }

    pub fn webhook_events(&self, apply: ApplyId) -> Result<Vec<OutboxEvent>, StoreError> {
        let inner = self.lock()?;
        Ok(events(&inner)
            .into_iter()
            .filter(|e| e.apply == apply)
            .collect())
    }
}

fn events(inner: &Inner) -> Vec<OutboxEvent> {
    let mut out: Vec<(NewEvent, u64)> = Vec::new();
    let mut requests = inner.requests_log.iter().peekable();
    for (i, entry) in inner.audit.iter().enumerate() {
        while let Some(r) = requests.next_if(|r| r.after <= i) {
            out.push((NewEvent::requested(r.apply, r.op), r.at_ms));
        }
        let deployment = entry.operation.and_then(|id| {
            inner
                .rows
                .get(&entry.apply)?
                .operations
                .iter()
                .find(|o| o.id == id)
                .map(|o| o.deployment.as_str())
        });
        let event = NewEvent::moved(Move {
            apply: entry.apply,
            operation: entry.operation,
            deployment,
            from: entry.from.as_str(),
            to: entry.to,
            epoch: entry.epoch,
            owner: entry.owner.as_deref(),
            cause: &entry.cause,
            reason: entry.detail.as_deref(),
        });
        if let Some(event) = event {
            out.push((event, entry.at_ms));
        }
    }
    for r in requests {
        out.push((NewEvent::requested(r.apply, r.op), r.at_ms));
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (e, at_ms))| OutboxEvent {
            id: i as u64 + 1,
            apply: e.apply,
            operation: e.operation,
            kind: e.kind,
            payload: e.payload,
            at: rfc3339_ms(at_ms),
        })
        .collect()
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, with microseconds like the MySQL
/// store's times.
fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        (ms % 1000) * 1000
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn times_render_as_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000000Z");
        // 2026-12-08T10:11:12.345Z
        assert_eq!(rfc3339_ms(1_796_724_672_345), "2026-12-08T10:11:12.345000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000000Z");
    }
}
