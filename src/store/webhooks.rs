//! Webhook events and their delivery, as the stores see them: what an event says (built here
//! once, so both stores record the same events for the same moves), the outbox rows read back,
//! and the delivery interface a deliverer drives ([`Deliveries`], the MySQL store's).
//!
//! What produces an event, in the transaction that makes the change:
//! - a move of an apply or of a rollout operation to another state (an audit entry whose
//!   `from` and `to` differ): kind `state_change`, or `failure` when the move is into a failed
//!   state (`ApplyState::is_failure`), which carries the reason. A claim that keeps the state
//!   (a resume, a reclaim) and a park record no event: nothing a person acts on changed.
//! - a control request accepted (created, or a finished one reset to pending): kind `request`.
//!   A request already pending is the same request and records nothing.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::StoreError;
use crate::machine::apply::ApplyId;
use crate::machine::{ApplyState, ControlOp};

/// What an event is about; a receiver's endpoint may ask for some kinds only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    StateChange,
    Request,
    Failure,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::StateChange,
        EventKind::Request,
        EventKind::Failure,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::StateChange => "state_change",
            EventKind::Request => "request",
            EventKind::Failure => "failure",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EventKind, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown event kind {s:?} (expected state_change, request or failure)")
            })
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event about to be recorded: everything but its id and time, which the store assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub apply: ApplyId,
    /// The rollout operation that moved (its row id); `None` for the apply's own moves.
    pub operation: Option<u64>,
    pub kind: EventKind,
    /// The body without `id` and `at`.
    pub payload: Value,
}

/// One audit entry's move, as an event sees it.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    pub apply: ApplyId,
    pub operation: Option<u64>,
    /// The rollout deployment that moved (`None` for an apply without deployments).
    pub deployment: Option<&'a str>,
    /// As stored (a legacy alias stays as it is).
    pub from: &'a str,
    pub to: ApplyState,
    pub epoch: u64,
    pub owner: Option<&'a str>,
    /// `claim <arm>`, `write`, or an unfenced cause such as a retry expiry.
    pub cause: &'a str,
    /// Why, for a move into a failed state (or into `paused`, held for a person).
    pub reason: Option<&'a str>,
}

impl NewEvent {
    /// The event of an audited move; `None` when the state stays (no event, see the module doc).
    /// States are compared parsed: a legacy alias left in a row is the state it names.
    pub fn moved(m: Move<'_>) -> Option<NewEvent> {
        if m.from.parse::<ApplyState>().is_ok_and(|from| from == m.to) {
            return None;
        }
        let kind = if m.to.is_failure() {
            EventKind::Failure
        } else {
            EventKind::StateChange
        };
        let mut payload = base(kind, m.apply);
        payload.insert("operation".into(), json!(m.operation));
        payload.insert("deployment".into(), json!(m.deployment));
        payload.insert("from".into(), json!(m.from));
        payload.insert("to".into(), json!(m.to.as_str()));
        payload.insert("epoch".into(), json!(m.epoch));
        payload.insert("owner".into(), json!(m.owner));
        payload.insert("cause".into(), json!(m.cause));
        // A failure always says why (`null` only if the writer gave no reason); another move
        // carries its reason when it has one (an engine holding an apply for a person).
        if kind == EventKind::Failure || m.reason.is_some() {
            payload.insert("reason".into(), json!(m.reason));
        }
        Some(NewEvent {
            apply: m.apply,
            operation: m.operation,
            kind,
            payload: Value::Object(payload),
        })
    }

    /// The event of an accepted control request.
    pub fn requested(apply: ApplyId, op: ControlOp) -> NewEvent {
        let mut payload = base(EventKind::Request, apply);
        payload.insert("request".into(), json!(op.as_str()));
        NewEvent {
            apply,
            operation: None,
            kind: EventKind::Request,
            payload: Value::Object(payload),
        }
    }
}

fn base(kind: EventKind, apply: ApplyId) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kind".into(), json!(kind.as_str()));
    m.insert("apply".into(), json!(format!("apply-{apply}")));
    m.insert("apply_id".into(), json!(apply));
    m
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The outbox row's id: ids grow with insertion (not necessarily with commit order).
    pub id: u64,
    pub apply: ApplyId,
    pub operation: Option<u64>,
    pub kind: EventKind,
    pub payload: Value,
    /// When it was recorded, RFC 3339 in UTC (by the store's clock).
    pub at: String,
}

/// The id a receiver de-duplicates on: stable across retries and unique in the store.
pub fn event_id(id: u64) -> String {
    format!("evt-{id}")
}

impl OutboxEvent {
    pub fn event_id(&self) -> String {
        event_id(self.id)
    }

    /// The exact bytes sent (and signed): the payload with `id` and `at`. Keys are sorted, so
    /// every retry of an event sends the same bytes.
    pub fn body(&self) -> Vec<u8> {
        render_body(self.id, &self.payload, &self.at)
    }
}

/// The body of event `id` from its stored payload and time.
pub fn render_body(id: u64, payload: &Value, at: &str) -> Vec<u8> {
    let mut body = match payload {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = Map::new();
            m.insert("payload".into(), other.clone());
            m
        }
    };
    body.insert("id".into(), json!(event_id(id)));
    body.insert("at".into(), json!(at));
    let sorted: std::collections::BTreeMap<String, Value> = body.into_iter().collect();
    serde_json::to_vec(&sorted).unwrap_or_default()
}

/// One (event, endpoint) delivery a deliverer holds the lease of.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedDelivery {
    pub event: u64,
    pub endpoint: String,
    pub apply: ApplyId,
    /// Attempts started so far, this one included.
    pub attempts: u32,
    /// The delivery lease: every mark is fenced by it.
    pub epoch: u64,
    /// What the event is about (`None` when its row is missing or its kind unknown): a
    /// deliverer passes over the kinds its endpoint does not receive.
    pub kind: Option<EventKind>,
    /// The exact bytes to send, or why the event cannot be sent (its row is gone).
    pub body: Result<Vec<u8>, String>,
}

/// How deliveries to one endpoint stand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointHealth {
    pub endpoint: String,
    /// Delivered and still retained.
    pub delivered: u64,
    /// Not delivered yet and never failed.
    pub pending: u64,
    /// Not delivered yet, last attempt failed.
    pub failing: u64,
    /// Given up after the most attempts allowed (`webhooks.max_attempts`), still retained.
    pub abandoned: u64,
    /// Age of the oldest undelivered event, by the store's clock.
    pub oldest_undelivered_age_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// What a deliverer's pass over the outbox reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub events: u64,
    pub endpoints: u64,
}

/// The delivery side of the outbox. Every mark is fenced by the delivery lease's epoch; 0 rows
/// matched means another deliverer took the delivery over (its lease had expired).
#[async_trait]
pub trait Deliveries: Send + Sync {
    /// Make sure every endpoint has its delivery row for every event since it was first served;
    /// an endpoint seen for the first time starts at the newest event. Rows are made for every
    /// kind: which kinds an endpoint receives is each deliverer's setting, and operators may
    /// differ while a change of it rolls out, so the filter is applied when sending (an event
    /// passed over is marked delivered) and the sweep's position means the same to all.
    /// Returns how many delivery rows were created.
    async fn sweep(&self, endpoints: &[String]) -> Result<u64, StoreError>;
    /// Lease at most `limit` due deliveries to `endpoints` for `lease_ms`, oldest event first,
    /// and only the oldest outstanding one of each (endpoint, apply), so an apply's events are
    /// sent in order; a delivery whose lease expired is due again.
    async fn lease_due(
        &self,
        endpoints: &[String],
        owner: &str,
        lease_ms: u64,
        limit: u32,
    ) -> Result<Vec<LeasedDelivery>, StoreError>;
    /// Fenced: the receiver accepted it.
    async fn mark_delivered(&self, d: &LeasedDelivery) -> Result<(), StoreError>;
    /// Fenced: given up after its last allowed attempt; `error` says why. It no longer holds
    /// back its apply's later events.
    async fn mark_abandoned(&self, d: &LeasedDelivery, error: &str) -> Result<(), StoreError>;
    /// Fenced: the attempt failed; try again after `retry_in_ms`.
    async fn mark_failed(
        &self,
        d: &LeasedDelivery,
        error: &str,
        retry_in_ms: u64,
    ) -> Result<(), StoreError>;
    /// Delete at most `batch` events older than `retention_hours` that no served endpoint still
    /// owes, and forget endpoints unseen that long, except those in `keep` (the caller's own,
    /// which it will serve again: what they are owed stays). Returns what went.
    async fn prune(
        &self,
        retention_hours: u64,
        batch: u32,
        keep: &[String],
    ) -> Result<Pruned, StoreError>;
    /// How every endpoint a deliverer has served stands.
    async fn health(&self) -> Result<Vec<EndpointHealth>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing_move() -> Move<'static> {
        Move {
            apply: 7,
            operation: None,
            deployment: None,
            from: "running",
            to: ApplyState::Failed,
            epoch: 3,
            owner: Some("host/1/driver-0"),
            cause: "write",
            reason: Some("disk full"),
        }
    }

    #[test]
    fn a_failure_carries_its_reason_and_a_state_change_does_not() {
        let e = NewEvent::moved(failing_move()).unwrap();
        assert_eq!(e.kind, EventKind::Failure);
        assert_eq!(e.payload["reason"], "disk full");
        assert_eq!(e.payload["apply"], "apply-7");
        assert_eq!(e.payload["apply_id"], 7);
        assert_eq!(e.payload["from"], "running");
        assert_eq!(e.payload["to"], "failed");
        assert_eq!(e.payload["epoch"], 3);
        let moved = NewEvent::moved(Move {
            to: ApplyState::Completed,
            reason: None,
            ..failing_move()
        })
        .unwrap();
        assert_eq!(moved.kind, EventKind::StateChange);
        assert!(moved.payload.get("reason").is_none());
        let held = NewEvent::moved(Move {
            to: ApplyState::Paused,
            reason: Some("ownership ambiguous"),
            ..failing_move()
        })
        .unwrap();
        assert_eq!(
            (held.kind, &held.payload["reason"]),
            (EventKind::StateChange, &json!("ownership ambiguous"))
        );
    }

    #[test]
    fn a_move_that_keeps_the_state_is_no_event() {
        assert!(NewEvent::moved(Move {
            from: "failed",
            ..failing_move()
        })
        .is_none());
        // A legacy alias stored in the row is the state it names.
        assert!(NewEvent::moved(Move {
            from: "recovering_cutover",
            to: ApplyState::Recovering,
            ..failing_move()
        })
        .is_none());
    }

    #[test]
    fn the_body_has_every_field_once_with_sorted_keys() {
        let e = NewEvent::requested(7, ControlOp::Cancel);
        let event = OutboxEvent {
            id: 12,
            apply: 7,
            operation: None,
            kind: e.kind,
            payload: e.payload,
            at: "2026-12-08T10:00:00.000000Z".into(),
        };
        let body = String::from_utf8(event.body()).unwrap();
        assert_eq!(
            body,
            r#"{"apply":"apply-7","apply_id":7,"at":"2026-12-08T10:00:00.000000Z","id":"evt-12","kind":"request","request":"cancel"}"#
        );
        assert_eq!(event.body(), event.body());
    }

    #[test]
    fn kinds_round_trip_and_unknown_ones_are_named() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
        }
        let err = "deploy".parse::<EventKind>().unwrap_err();
        assert!(err.contains("\"deploy\""), "{err}");
    }
}
