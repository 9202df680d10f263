//! The timeline of an apply, as people read it: its audit log (claims with their arm, owner and
//! epoch; state changes; failures with their reason; parks and releases) and its requests, oldest
//! first. Both stores build it from their rows; the CLI, the API and the dashboard show it.

use crate::machine::apply::OperationId;
use crate::machine::{ApplyState, ClaimArm, OperationArm};

/// What a timeline entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A driver took the lease by an arm that takes a free row.
    Claim,
    /// A driver took the lease of a row whose owner had stopped heartbeating (arms A2/O2).
    Reclaim,
    /// A move from one state to another by the owner (or a derivation).
    State,
    /// A move into a failed state, with the engine's words.
    Failure,
    /// The owner gave its lease back (a park, a hold, a shutdown).
    Release,
    /// A person's request, and how it ended.
    Request,
}

impl EntryKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Claim => "claim",
            EntryKind::Reclaim => "reclaim",
            EntryKind::State => "state",
            EntryKind::Failure => "failure",
            EntryKind::Release => "release",
            EntryKind::Request => "request",
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TimelineEntry {
    /// How long ago, by the store's clock.
    pub age_ms: u64,
    pub kind: EntryKind,
    pub text: String,
    pub epoch: Option<u64>,
    pub owner: Option<String>,
    /// The rollout operation it concerns, when one.
    pub operation: Option<OperationId>,
    /// The state the entry left the apply (or operation) in, for an audit entry.
    pub state: Option<ApplyState>,
}

/// What an audit row says, classified: the arm of a claim names a reclaim.
#[allow(clippy::too_many_arguments)]
pub fn audit_entry(
    age_ms: u64,
    from: &str,
    to: &str,
    epoch: u64,
    owner: Option<String>,
    cause: &str,
    detail: Option<&str>,
    operation: Option<OperationId>,
) -> TimelineEntry {
    let arm = cause.strip_prefix("claim ");
    let to_state = to.parse::<ApplyState>().ok();
    let kind = match arm {
        Some(code) if is_stale_arm(code) => EntryKind::Reclaim,
        Some(_) => EntryKind::Claim,
        None if to_state.is_some_and(|s| s.is_failure()) => EntryKind::Failure,
        None if from == to => EntryKind::Release,
        None => EntryKind::State,
    };
    let mut text = match (kind, arm) {
        (EntryKind::Claim | EntryKind::Reclaim, Some(code)) if from == to => {
            format!("claimed by {code} in {to}")
        }
        (EntryKind::Claim | EntryKind::Reclaim, Some(code)) => {
            format!("claimed by {code}: {from} → {to}")
        }
        (EntryKind::Release, _) => format!("{cause} ({to})"),
        _ => format!("{from} → {to} ({cause})"),
    };
    if let Some(d) = detail.filter(|d| !d.is_empty()) {
        text.push_str(": ");
        text.push_str(d);
    }
    TimelineEntry {
        age_ms,
        kind,
        text,
        epoch: Some(epoch),
        owner,
        operation,
        state: to_state,
    }
}

/// A claim arm code (`A2`, `O2`, a rollout's `O2+A2`) that takes a row from a stale owner.
fn is_stale_arm(code: &str) -> bool {
    let first = code.split('+').next().unwrap_or(code);
    first == ClaimArm::A2Stale.code() || first == OperationArm::O2Stale.code()
}

/// The entries of one request row: when it was asked, and when it ended when it has.
pub fn request_entries(
    op: &str,
    asked_age_ms: u64,
    by: Option<&str>,
    status: &str,
    message: Option<&str>,
    ended_age_ms: Option<u64>,
) -> Vec<TimelineEntry> {
    let entry = |age_ms, text| TimelineEntry {
        age_ms,
        kind: EntryKind::Request,
        text,
        epoch: None,
        owner: None,
        operation: None,
        state: None,
    };
    let asked = match by.filter(|b| !b.is_empty()) {
        Some(by) => format!("{op} requested by {by}"),
        None => format!("{op} requested"),
    };
    let mut out = vec![entry(asked_age_ms, asked)];
    if let Some(ended) = ended_age_ms.filter(|_| status != "pending") {
        let how = match message {
            Some(m) if !m.is_empty() => format!("{op} {status}: {m}"),
            _ => format!("{op} {status}"),
        };
        out.push(entry(ended, how));
    }
    out
}

/// Oldest first (the largest age first), keeping the last `limit` entries.
pub fn ordered(mut entries: Vec<TimelineEntry>, limit: usize) -> Vec<TimelineEntry> {
    // Stable: entries of the same instant keep the order their rows were written in.
    entries.sort_by_key(|e| std::cmp::Reverse(e.age_ms));
    let skip = entries.len().saturating_sub(limit);
    entries.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_by_the_stale_arm_is_a_reclaim_and_others_are_claims() {
        let e = audit_entry(5, "running", "running", 4, None, "claim A2", None, None);
        assert_eq!(
            (e.kind, e.text.as_str()),
            (EntryKind::Reclaim, "claimed by A2 in running")
        );
        let o = audit_entry(
            5,
            "running",
            "running",
            4,
            None,
            "claim O2+A2",
            None,
            Some(3),
        );
        assert_eq!(o.kind, EntryKind::Reclaim);
        let a = audit_entry(5, "pending", "running", 1, None, "claim A1", None, None);
        assert_eq!(
            (a.kind, a.text.as_str()),
            (EntryKind::Claim, "claimed by A1: pending → running")
        );
    }

    #[test]
    fn failures_carry_their_reason_and_moves_their_cause() {
        let f = audit_entry(
            1,
            "running",
            "failed",
            2,
            None,
            "engine failed",
            Some("disk full"),
            None,
        );
        assert_eq!(f.kind, EntryKind::Failure);
        assert_eq!(f.text, "running → failed (engine failed): disk full");
        let s = audit_entry(
            1,
            "running",
            "waiting_for_cutover",
            2,
            None,
            "engine",
            None,
            None,
        );
        assert_eq!(s.kind, EntryKind::State);
        let r = audit_entry(
            1,
            "waiting_for_cutover",
            "waiting_for_cutover",
            2,
            None,
            "park for 300000 ms",
            None,
            None,
        );
        assert_eq!(r.kind, EntryKind::Release);
    }

    #[test]
    fn a_request_shows_when_it_was_asked_and_how_it_ended() {
        let done = request_entries(
            "cutover",
            30,
            Some("cli:alice@db-7"),
            "completed",
            None,
            Some(10),
        );
        assert_eq!(
            done.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
            ["cutover requested by cli:alice@db-7", "cutover completed"]
        );
        assert_eq!(
            request_entries("stop", 3, None, "pending", None, Some(3)).len(),
            1
        );
        let refused = request_entries(
            "stop",
            3,
            None,
            "failed",
            Some("planetscale applies cannot be stopped"),
            Some(1),
        );
        assert_eq!(
            refused[1].text,
            "stop failed: planetscale applies cannot be stopped"
        );
    }

    #[test]
    fn the_timeline_is_oldest_first_and_keeps_the_last_entries() {
        let at = |age_ms| request_entries("x", age_ms, None, "pending", None, None).remove(0);
        let got = ordered(vec![at(5), at(50), at(1), at(20)], 3);
        assert_eq!(got.iter().map(|e| e.age_ms).collect::<Vec<_>>(), [20, 5, 1]);
    }
}
