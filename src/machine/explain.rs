//! Explanations: why an apply (or one operation of a rollout) is where it is, read off the same
//! rules the drivers and the model run — its claim class, which claim arm takes it and when,
//! what each pending request waits for, what a person must do, and how much retry budget is
//! left. `applyd status`, the API and the dashboard all show these texts; none composes its own.

use super::claim::{ClaimClass, ClaimView, OperationClaimView, PendingControls};
use super::control::{settle_on_terminal, settles_requests, Disposition, PRECEDENCE};
use super::rules::Rules;
use super::states::{ApplyState, ControlOp, EngineKind};
use super::table::{ApplyOptions, TABLE};
use super::waits;

/// What an explanation reads of an apply or an operation. Ages are by the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot<'a> {
    /// `apply-7`: what a person types after `applyd cutover`.
    pub identifier: &'a str,
    pub engine: EngineKind,
    pub state: ApplyState,
    pub options: ApplyOptions,
    pub attempt: u32,
    pub lease_owner: Option<&'a str>,
    pub heartbeat_age_ms: Option<u64>,
    /// Since the row was last written (the retry freshness window counts from it).
    pub updated_age_ms: u64,
    /// The task and operation rows exist (submission finished).
    pub has_children: bool,
    pub pending: PendingControls,
    /// Parked: how long until its wake time (`None` when not parked).
    pub parked_wake_in_ms: Option<u64>,
    /// The apply runs as a rollout (a `release` is only taken there).
    pub is_rollout: bool,
}

/// One pending request and what it waits for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestNote {
    pub request: ControlOp,
    pub note: String,
}

/// Why an apply is where it is, in words; each part is one line for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The claim class of its state (`stale-reclaimable`, `retry path`, …).
    pub class: &'static str,
    /// Who holds it, or which claim arm takes it and when.
    pub claim: String,
    /// Each pending request, in the order the owner looks at them.
    pub requests: Vec<RequestNote>,
    /// What a person must do for it to move on, when only a person can.
    pub person: Option<String>,
    /// The attempt and the retry budget left, once it has been retried or may be.
    pub retry: Option<String>,
    /// The requests the rules accept now (the dashboard's enabled buttons).
    pub accepts: Vec<ControlOp>,
    /// The others, each with the refusal a person would get.
    pub refuses: Vec<RequestNote>,
}

impl Explanation {
    /// Every part, one line each, in reading order.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("{} ({})", self.claim, self.class)];
        out.extend(self.person.iter().cloned());
        out.extend(
            self.requests
                .iter()
                .map(|r| format!("{} requested: {}", r.request, r.note)),
        );
        out.extend(self.retry.iter().cloned());
        out
    }
}

/// The requests a person can make from a command line or a button, in the order shown.
pub const PERSON_REQUESTS: &[ControlOp] = &[
    ControlOp::Cutover,
    ControlOp::Start,
    ControlOp::Stop,
    ControlOp::Cancel,
    ControlOp::Revert,
    ControlOp::SkipRevert,
    ControlOp::Release,
];

/// The command that makes `op`: `applyd skip-revert apply-7`.
pub fn command(op: ControlOp, identifier: &str) -> String {
    format!("`applyd {} {identifier}`", op.as_str().replace('_', "-"))
}

/// Seconds, rounded up, as people read a wait: `19 s`, `4 min 05 s`, `3 h 20 min`.
pub fn duration(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// An age, in whole seconds passed: `41 s`, `1 min 15 s`.
fn ago(ms: u64) -> String {
    duration(ms / 1000 * 1000)
}

impl Rules {
    /// Explain an apply from its snapshot.
    pub fn explain(&self, s: &Snapshot<'_>) -> Explanation {
        let class = self.class_of(s.state);
        let mut accepts = Vec::new();
        let mut refuses = Vec::new();
        for op in PERSON_REQUESTS.iter().copied() {
            match self.request_admitted(s.engine, s.state, op, &s.pending, s.is_rollout) {
                Ok(()) => accepts.push(op),
                Err(note) => refuses.push(RequestNote { request: op, note }),
            }
        }
        Explanation {
            class: class.name(),
            claim: self.explain_claim(s, class),
            requests: self.explain_requests(s),
            person: explain_person(s),
            retry: self.explain_retry(s, class),
            accepts,
            refuses,
        }
    }

    fn view(&self, s: &Snapshot<'_>) -> ClaimView {
        ClaimView {
            state: s.state,
            leased: s.lease_owner.is_some(),
            heartbeat_age_ms: s.heartbeat_age_ms,
            attempt: s.attempt,
            updated_age_ms: s.updated_age_ms,
            has_children: s.has_children,
            controls: s.pending,
            resting: s.lease_owner.is_none() && s.parked_wake_in_ms.is_some_and(|ms| ms > 0),
            asks_now: self.acts_now(s.engine, s.state, &s.pending, &s.options),
        }
    }

    fn explain_claim(&self, s: &Snapshot<'_>, class: ClaimClass) -> String {
        // A rollout's apply row is never claimed itself: its operations are, each by the
        // operation arms (`explain_operation`), and its state is derived from theirs.
        if s.is_rollout && !s.state.is_terminal() {
            return "a rollout: its operations are claimed on their own (see each operation); \
                    its state is derived from theirs"
                .into();
        }
        let view = self.view(s);
        let holder = holder(s);
        if let Some(arm) = self.matching_arm(&view) {
            let by = format!("by {} ({})", arm.code(), arm.describe());
            return match (&holder, s.heartbeat_age_ms) {
                (Some(h), Some(_)) => format!(
                    "{h}, stale after {}; reclaimable now {by}",
                    duration(self.params.stale_after_ms)
                ),
                (Some(h), None) => format!("{h}; reclaimable now {by}"),
                (None, _) => format!("no owner; the next claim takes it {by}"),
            };
        }
        if let Some(expiry) = self.retry_expiry(&view) {
            return format!(
                "no claim arm retries it ({}): the next claim pass fails it for good",
                expiry.as_str()
            );
        }
        match class {
            ClaimClass::Terminal => format!("finished: {}; no claim arm takes it", s.state),
            ClaimClass::Unclaimable => {
                "no claim arm takes this state: it can only wedge (a historical bug)".into()
            }
            ClaimClass::StaleReclaimable if view.is_parked() => {
                let wake = s.parked_wake_in_ms.unwrap_or(0);
                format!(
                    "parked, no driver held: A9 takes it as soon as a request it acts on arrives; \
                     A2 in {} at its wake time, to look at the engine again",
                    duration(wake)
                )
            }
            ClaimClass::StaleReclaimable
            | ClaimClass::RetryPath
            | ClaimClass::PendingQueue
            | ClaimClass::StartHeld
            | ClaimClass::HumanHeld
                if s.lease_owner.is_some() =>
            {
                let h = holder.unwrap_or_default();
                match (class, s.heartbeat_age_ms) {
                    (ClaimClass::StaleReclaimable, Some(age)) => format!(
                        "{h}; reclaimable by A2 in {} if its heartbeat stops",
                        duration(self.params.stale_after_ms.saturating_sub(age))
                    ),
                    _ => format!("{h}; its owner is acting on it"),
                }
            }
            ClaimClass::PendingQueue => {
                "being submitted: A1 takes it once its task rows exist".into()
            }
            ClaimClass::StartHeld => {
                "stopped, no driver held: A5 takes it when a start is requested, A7 when a cancel is"
                    .into()
            }
            ClaimClass::HumanHeld => {
                "held for a person, no driver held: A8 takes it when a stop or a cancel is requested"
                    .into()
            }
            ClaimClass::RetryPath | ClaimClass::StaleReclaimable => {
                "no claim arm takes it now".into()
            }
        }
    }

    fn explain_requests(&self, s: &Snapshot<'_>) -> Vec<RequestNote> {
        let leased = s.lease_owner.is_some();
        PRECEDENCE
            .iter()
            .copied()
            .filter(|op| s.pending.has(*op))
            .map(|op| {
                // As the owner decides (`worker::core`): a terminal apply settles its requests.
                let note = if settles_requests(s.state, &s.pending) {
                    match settle_on_terminal(op, s.state) {
                        Disposition::Refuse(r) => format!("refused when settled: {}", r.message()),
                        _ => "completed when settled: its effect holds".into(),
                    }
                } else {
                    match self.disposition(s.engine, s.state, op, &s.pending, &s.options) {
                        Disposition::Take(_) if s.is_rollout => {
                            "taken by each of its operations it applies to".into()
                        }
                        Disposition::Take(row) => {
                            let to = TABLE.row(row).to;
                            // A row that keeps the state acts on the engine first.
                            let effect = if to == s.state {
                                "it asks the engine first".to_string()
                            } else {
                                format!("moves it to {to}")
                            };
                            if leased {
                                format!("taken by its owner at its next step ({effect})")
                            } else {
                                format!("taken when a driver claims it ({effect})")
                            }
                        }
                        Disposition::Complete => {
                            "its effect already holds: completed at the owner's next step".into()
                        }
                        Disposition::Refuse(r) => format!("will be refused: {}", r.message()),
                        Disposition::Wait => waits_for(op, s),
                    }
                };
                RequestNote { request: op, note }
            })
            .collect()
    }

    fn explain_retry(&self, s: &Snapshot<'_>, class: ClaimClass) -> Option<String> {
        let budget = self.params.retry_budget;
        if class == ClaimClass::RetryPath {
            let left = budget.saturating_sub(s.attempt);
            let fresh = self
                .params
                .retry_freshness_ms
                .saturating_sub(s.updated_age_ms);
            let view = self.view(s);
            if let Some(expiry) = self.retry_expiry(&view) {
                return Some(format!(
                    "attempt {} of {budget}: no retry left ({})",
                    s.attempt,
                    expiry.as_str()
                ));
            }
            if !self.arm_matches(super::claim::ClaimArm::A3Retry, &view) {
                return Some(format!("attempt {} of {budget}", s.attempt));
            }
            return Some(format!(
                "attempt {} of {budget}: {left} retr{} left, taken by A3 while it was written \
                 within {} ({} left)",
                s.attempt,
                if left == 1 { "y" } else { "ies" },
                duration(self.params.retry_freshness_ms),
                duration(fresh)
            ));
        }
        (s.attempt > 1 && !s.state.is_terminal())
            .then(|| format!("attempt {} of {budget}", s.attempt))
    }

    /// Explain one operation of a rollout: its own lease and the operation arms, with the
    /// parent's requests; `start_open` is the rollout's start gate for it.
    pub fn explain_operation(
        &self,
        op: &Snapshot<'_>,
        parent: &Snapshot<'_>,
        start_open: bool,
    ) -> String {
        let v = OperationClaimView {
            op: self.view(op),
            parent: self.view(parent),
            start_open,
        };
        if let Some(arm) = self.matching_operation_arm(&v) {
            return match holder(op) {
                Some(h) => format!("{h}; reclaimable now by {}", arm.code()),
                None => format!(
                    "the next claim takes it by {} ({})",
                    arm.code(),
                    arm.describe()
                ),
            };
        }
        match (self.class_of(op.state), holder(op), op.heartbeat_age_ms) {
            (ClaimClass::Terminal, _, _) => format!("finished: {}", op.state),
            (ClaimClass::StaleReclaimable, Some(h), Some(age)) => format!(
                "{h}; reclaimable by O2 in {} if its heartbeat stops",
                duration(self.params.stale_after_ms.saturating_sub(age))
            ),
            (_, Some(h), _) => h,
            (ClaimClass::PendingQueue, None, _) if !start_open => {
                "not started: its rollout's start gate is closed".into()
            }
            (ClaimClass::StaleReclaimable, None, _) if v.op.is_parked() => format!(
                "parked: O6 takes it when a request it acts on arrives; O2 in {}",
                duration(op.parked_wake_in_ms.unwrap_or(0))
            ),
            _ => "no operation arm takes it now".into(),
        }
    }
}

/// `owner X last heartbeat 41 s ago`.
fn holder(s: &Snapshot<'_>) -> Option<String> {
    let owner = s.lease_owner?;
    Some(match s.heartbeat_age_ms {
        Some(age) => format!("owner {owner} last heartbeat {} ago", ago(age)),
        None => format!("owner {owner}, no heartbeat yet"),
    })
}

/// What a request the owner leaves pending waits for.
fn waits_for(op: ControlOp, s: &Snapshot<'_>) -> String {
    match op {
        ControlOp::Cutover => "taken when the engine reaches the cutover gate".into(),
        ControlOp::Start if s.pending.stop => "waits for the pending stop".into(),
        ControlOp::Start => "taken when the deploy request is ready to deploy".into(),
        ControlOp::Revert | ControlOp::SkipRevert => {
            "taken once the change is deployed, in its revert window".into()
        }
        _ => format!("waits for a later state than {}", s.state),
    }
}

/// What a person must do, when the apply waits for one.
fn explain_person(s: &Snapshot<'_>) -> Option<String> {
    let op = waits::human_release(s.state, &s.options)?;
    let what = s.state.as_str().replace('_', " ");
    if s.pending.has(op) {
        return Some(format!(
            "{what}: {op} was requested; a driver takes it at its next claim or step"
        ));
    }
    Some(match s.state {
        ApplyState::Paused => format!(
            "paused for a person: {} ends it, {} stops it (see the reason above)",
            command(ControlOp::Cancel, s.identifier),
            command(ControlOp::Stop, s.identifier)
        ),
        ApplyState::Stopped => format!(
            "stopped: {} resumes it, {} ends it",
            command(ControlOp::Start, s.identifier),
            command(ControlOp::Cancel, s.identifier)
        ),
        ApplyState::RevertWindow => format!(
            "in its revert window: {} closes it now, {} reverts the change",
            command(ControlOp::SkipRevert, s.identifier),
            command(ControlOp::Revert, s.identifier)
        ),
        _ => format!("{what} — {}", command(op, s.identifier)),
    })
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
