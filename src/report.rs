//! Plain-text views of applies, shared by `applyd status` and the demo.

use crate::store::status::ApplyStatus;

/// A heartbeat or state age in seconds, `—` when there is none.
pub fn age(ms: Option<u64>) -> String {
    ms.map_or("—".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

/// A rollout's policy and one line per operation, for `applyd status APPLY` (nothing for an
/// apply without a rollout): `#n deployment [step-N] state owner@epoch hb attempt progress`,
/// then, indented, what holds the operation back and its error. Columns are as wide as their
/// widest value, so long deployment names stay aligned.
pub fn rollout_lines(a: &ApplyStatus) -> Vec<String> {
    let Some(policy) = &a.rollout else {
        return Vec::new();
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut lines = vec![format!(
        "rollout: cutover_policy={} on_failure={} max_drivers_per_apply={} released={} held={}",
        policy.cutover.as_str(),
        policy.on_failure.as_str(),
        policy.max_drivers,
        yes_no(policy.released),
        yes_no(policy.held),
    )];
    let rows: Vec<[String; 8]> = a
        .operations
        .iter()
        .enumerate()
        .map(|(i, o)| {
            [
                format!("#{}", i + 1),
                o.deployment.clone(),
                o.key.clone(),
                o.state.as_str().to_string(),
                o.lease_owner.as_ref().map_or("—".to_string(), |owner| {
                    format!("{owner}@{}", o.lease_epoch)
                }),
                // As on the apply's line: a finished operation's last heartbeat means nothing.
                format!(
                    "hb {}",
                    age(o.heartbeat_age_ms.filter(|_| o.state.is_active()))
                ),
                format!("attempt {}", o.attempt),
                format!("{}/{} tasks", o.tasks_completed, o.tasks_total),
            ]
        })
        .collect();
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for (row, o) in rows.iter().zip(&a.operations) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            // A column empty on every row (no table steps) takes no room.
            .filter(|(_, w)| *w > 0)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        lines.push(format!("  {}", cells.join("  ").trim_end()));
        if let Some(gate) = &o.gate {
            lines.push(format!("      {gate}"));
        } else if let Some(why) = o.explanation.as_ref().filter(|_| !o.state.is_terminal()) {
            lines.push(format!("      {why}"));
        }
        if let Some(e) = &o.error {
            let closed = if o.failed_closed {
                " (failed closed)"
            } else {
                ""
            };
            lines.push(format!("      error{closed}: {e}"));
        }
    }
    lines
}

/// One line per timeline entry, oldest first: `12.5s ago  reclaim  claimed by A2 in running
/// (db-2/driver-0@4)`.
pub fn timeline_lines(entries: &[crate::store::timeline::TimelineEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            let kind = e.kind.as_str();
            let who = match (&e.owner, e.epoch) {
                (Some(owner), Some(epoch)) => format!(" ({owner}@{epoch})"),
                (None, Some(epoch)) if epoch > 0 => format!(" (epoch {epoch})"),
                _ => String::new(),
            };
            format!("{:>9} ago  {kind:<8} {}{who}", age(Some(e.age_ms)), e.text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::rollout::{CutoverPolicy, OnFailure, RolloutPolicy};
    use crate::machine::{ApplyOptions, ApplyState, EngineKind};
    use crate::store::status::OperationStatus;
    use crate::store::Target;

    fn operation(i: u32, deployment: &str, state: ApplyState) -> OperationStatus {
        OperationStatus {
            id: u64::from(i) + 10,
            deployment: deployment.into(),
            key: String::new(),
            deployment_index: i,
            step: 0,
            state,
            attempt: 0,
            lease_owner: None,
            lease_epoch: 0,
            heartbeat_age_ms: None,
            tasks_total: 1,
            tasks_completed: 0,
            failed_closed: false,
            error: None,
            parked_wake_in_ms: None,
            gate: None,
            explanation: None,
        }
    }

    fn rollout(operations: Vec<OperationStatus>, policy: Option<RolloutPolicy>) -> ApplyStatus {
        ApplyStatus {
            id: 7,
            identifier: "apply-7".into(),
            target: Target {
                database: "shop".into(),
                environment: "production".into(),
            },
            engine: EngineKind::Spirit,
            state: ApplyState::Running,
            options: ApplyOptions::default(),
            ddl: vec!["ALTER TABLE users ADD COLUMN c INT".into()],
            attempt: 0,
            lease_owner: None,
            lease_epoch: 4,
            heartbeat_age_ms: None,
            state_age_ms: 0,
            updated_age_ms: 0,
            resume: Default::default(),
            error: None,
            tasks_total: 3,
            tasks_completed: 1,
            tasks: Vec::new(),
            pending_requests: Vec::new(),
            requests: Vec::new(),
            parked_wake_in_ms: None,
            wait: None,
            explanation: None,
            operations,
            rollout: policy,
        }
        // The gates are filled as the stores fill them.
        .explain(&crate::machine::Rules::default())
    }

    #[test]
    fn a_rollout_prints_its_policy_and_one_aligned_line_per_operation() {
        let mut first = operation(0, "us-east-1", ApplyState::Completed);
        first.attempt = 1;
        first.lease_epoch = 2;
        first.tasks_completed = 1;
        first.lease_owner = Some("db-1/17/driver-0".into());
        first.heartbeat_age_ms = Some(9_000);
        let mut second = operation(1, "us-west-2", ApplyState::Running);
        second.attempt = 2;
        second.lease_owner = Some("db-3/9001/driver-1".into());
        second.lease_epoch = 4;
        second.heartbeat_age_ms = Some(400);
        let third = operation(2, "eu-west-1", ApplyState::Pending);
        let policy = RolloutPolicy {
            cutover: CutoverPolicy::Rolling,
            on_failure: OnFailure::Pause,
            max_drivers: 1,
            released: false,
            held: false,
        };
        let status = rollout(vec![first, second, third], Some(policy));
        assert_eq!(
            rollout_lines(&status),
            [
                "rollout: cutover_policy=rolling on_failure=pause max_drivers_per_apply=1 released=no held=no",
                "  #1  us-east-1  completed  db-1/17/driver-0@2    hb —     attempt 1  1/1 tasks",
                "  #2  us-west-2  running    db-3/9001/driver-1@4  hb 0.4s  attempt 2  0/1 tasks",
                "      owner db-3/9001/driver-1 last heartbeat 0 s ago; reclaimable by O2 in 1 min 00 s if its heartbeat stops",
                "  #3  eu-west-1  pending    —                     hb —     attempt 0  0/1 tasks",
                "      start: waits for operation #2 to complete",
            ]
        );
    }

    #[test]
    fn table_steps_and_errors_get_their_own_column_and_line() {
        let mut failed = operation(0, "a", ApplyState::Failed);
        failed.key = "step-1".into();
        failed.error = Some("duplicate column c".into());
        failed.failed_closed = true;
        let mut later = operation(0, "a", ApplyState::Pending);
        later.key = "step-2".into();
        later.step = 1;
        let status = rollout(vec![failed, later], Some(RolloutPolicy::default()));
        let lines = rollout_lines(&status);
        assert_eq!(
            lines[1..],
            [
                "  #1  a  step-1  failed   —  hb —  attempt 0  0/1 tasks",
                "      error (failed closed): duplicate column c",
                "  #2  a  step-2  pending  —  hb —  attempt 0  0/1 tasks",
                "      start: will not run: an earlier failure ended the rollout here",
            ]
        );
        assert!(rollout_lines(&rollout(Vec::new(), None)).is_empty());
    }
}
