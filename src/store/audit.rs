//! Checks over the audit log (`apply_logs`), shared by the demo, the crash test and anyone
//! auditing a production database: the log alone proves whether fencing held.

use std::collections::BTreeMap;

use crate::machine::apply::ApplyId;

/// One audit entry as the checks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditFact<'a> {
    pub apply: ApplyId,
    /// The rollout operation the entry is about: each holds a lease of its own, so its writes
    /// are checked against its own claims. `None`: the apply's own lease.
    pub operation: Option<u64>,
    /// `claim <arm>`, `write`, or an unfenced cause such as a retry expiry.
    pub cause: &'a str,
    pub epoch: u64,
}

/// What the audit log shows, apply by apply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// Claims of a row that had been claimed before (crash recovery, handoff, resume).
    pub reclaims: usize,
    /// Fenced writes whose epoch was not the latest claim's: each one is a fencing failure.
    pub stale_writes: Vec<(ApplyId, u64)>,
    /// Claims whose epoch did not grow: each one is a fencing failure.
    pub non_increasing_claims: Vec<(ApplyId, u64)>,
}

impl AuditSummary {
    pub fn fencing_held(&self) -> bool {
        self.stale_writes.is_empty() && self.non_increasing_claims.is_empty()
    }
}

/// Walk the log oldest first: every fenced write must carry the epoch of the latest claim of
/// its lease (its apply's, or its rollout operation's), and claim epochs must grow.
pub fn summarise<'a>(entries: impl IntoIterator<Item = AuditFact<'a>>) -> AuditSummary {
    let mut current: BTreeMap<(ApplyId, Option<u64>), u64> = BTreeMap::new();
    let mut summary = AuditSummary::default();
    for e in entries {
        let lease = (e.apply, e.operation);
        if e.cause.starts_with("claim") {
            match current.insert(lease, e.epoch) {
                Some(prev) if e.epoch <= prev => {
                    summary.non_increasing_claims.push((e.apply, e.epoch))
                }
                Some(_) => summary.reclaims += 1,
                None => {}
            }
        } else if e.cause == "write" && current.get(&lease) != Some(&e.epoch) {
            summary.stale_writes.push((e.apply, e.epoch));
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(apply: ApplyId, cause: &'static str, epoch: u64) -> AuditFact<'static> {
        AuditFact {
            apply,
            operation: None,
            cause,
            epoch,
        }
    }

    #[test]
    fn each_rollout_operation_is_fenced_by_its_own_claims() {
        let op = |operation, cause, epoch| AuditFact {
            operation: Some(operation),
            ..fact(1, cause, epoch)
        };
        let s = summarise([
            op(10, "claim O1", 1),
            op(11, "claim O1", 2),
            // Operation 10 still holds epoch 1 although its apply's counter moved on.
            op(10, "write", 1),
            op(11, "write", 2),
            op(10, "claim O2", 3),
            op(10, "write", 1),
        ]);
        assert_eq!(s.stale_writes, vec![(1, 1)]);
        assert_eq!(s.reclaims, 1);
    }

    #[test]
    fn a_write_under_a_superseded_epoch_is_reported() {
        let s = summarise([
            fact(1, "claim A1", 1),
            fact(1, "write", 1),
            fact(1, "claim A2", 2),
            fact(1, "write", 1),
            fact(1, "write", 2),
        ]);
        assert_eq!(s.reclaims, 1);
        assert_eq!(s.stale_writes, vec![(1, 1)]);
        assert!(!s.fencing_held());
    }

    #[test]
    fn unfenced_causes_and_other_applies_do_not_interfere() {
        let s = summarise([
            fact(1, "claim A1", 1),
            fact(2, "claim A1", 1),
            fact(1, "retry_budget_exhausted", 0),
            fact(2, "write", 1),
            fact(1, "write", 1),
        ]);
        assert!(s.fencing_held(), "{s:?}");
        assert_eq!(s.reclaims, 0);
    }

    #[test]
    fn a_claim_that_does_not_raise_the_epoch_is_reported() {
        let s = summarise([fact(1, "claim A1", 2), fact(1, "claim A2", 2)]);
        assert_eq!(s.non_increasing_claims, vec![(1, 2)]);
    }
}
