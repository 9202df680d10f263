//! The enabled actions of a state (with the exploration budgets) and how they are written.

use applyd::machine::{ClaimArm, ClaimClass};

use super::*;

impl ApplydModel {
    pub fn enabled(&self, s: &State, out: &mut Vec<Action>) {
        if s.flaw.is_some() {
            return;
        }
        let mut outcomes = Vec::new();
        // Applies are submitted in order (the first absent one), which keeps one interleaving
        // of submissions; every order of everything else is explored.
        if let Some(a) = (0..self.applies()).find(|a| !s.rows[*a].present) {
            out.push(Action::Submit(a as u8));
        }
        // Canonical states may put unused slots anywhere: look at every slot.
        for w in 0..MAX_WORKERS {
            let wb = w as u8;
            match s.workers[w] {
                Worker::Unused => {}
                Worker::Crashed => out.push(Action::Restart(wb)),
                Worker::Idle => {
                    for a in 0..self.applies() {
                        if s.rows[a].present {
                            out.push(Action::Claim(wb, a as u8));
                        }
                    }
                    if s.faults_left > 0 && s.hosted_by(w) != 0 {
                        out.push(Action::Crash(wb));
                    }
                }
                Worker::Driving { frozen, .. } => {
                    let resumed = frozen.is_some();
                    if let Some(p) = self.prepare(s, w, resumed) {
                        outcomes.clear();
                        self.outcomes(s, &p, &mut outcomes);
                        for o in outcomes.iter() {
                            out.push(if resumed {
                                Action::Resume(wb, *o)
                            } else {
                                Action::Step(wb, *o)
                            });
                        }
                    }
                    if s.faults_left > 0 {
                        out.push(Action::Crash(wb));
                        if !resumed {
                            out.push(Action::Pause(wb));
                        }
                    }
                }
            }
        }
        out.push(Action::Tick);
        if self.is_rollout() {
            if s.rows[0].present {
                for op in USER_OPS.into_iter().chain([ControlOp::Release]) {
                    if self.rollout_request_matters(s, op) {
                        out.push(Action::RolloutRequest(op));
                    }
                }
            }
        } else {
            for a in 0..self.applies() {
                if s.rows[a].present {
                    for op in USER_OPS {
                        if self.request_matters(&s.rows[a], a, op) {
                            out.push(Action::Request(a as u8, op));
                        }
                    }
                }
            }
        }
        out.push(Action::Expire);
        for a in 0..self.applies() {
            if s.rows[a].resting {
                out.push(Action::Wake(a as u8));
            }
        }
        if s.drifts_left > 0 {
            for a in 0..self.applies() {
                out.push(Action::Drift(a as u8));
            }
        }
    }

    /// Requests the model's user makes: every one the API accepts, except those that can only
    /// be completed or wait at once (a cutover the owner does by itself, a start on an apply that
    /// is neither stopped, nor stopping, nor waiting for its deploy) — they cost budget and
    /// states and exercise nothing the others do not.
    /// An exploration budget, not a claim or request rule: the API's acceptance is still
    /// `Rules::accepts_request` (checked when the request is made).
    pub(crate) fn request_matters(&self, row: &Row, a: usize, op: ControlOp) -> bool {
        let o = self.spec(a).options;
        match op {
            ControlOp::Cutover => o.defer_cutover,
            // Where a claim arm reads a pending start: a start-held apply, or a deferred
            // deploy's hand-off.
            ControlOp::Start => {
                row.controls.has(ControlOp::Stop)
                    || self.rules.class_of(row.state) == ClaimClass::StartHeld
                    || self
                        .rules
                        .claim_move(
                            self.spec(a).engine,
                            row.state,
                            ClaimArm::A6DeferredDeployStart,
                        )
                        .is_some()
            }
            _ => true,
        }
    }

    pub fn format(&self, action: &Action) -> String {
        match action {
            Action::Submit(_) if self.is_rollout() => "submit the rollout".into(),
            Action::Submit(a) => format!("submit apply {}", a + 1),
            Action::Claim(w, a) if self.is_rollout() => format!("w{w} claim operation {}", a + 1),
            Action::Claim(w, a) => format!("w{w} claim apply {}", a + 1),
            Action::Step(w, o) => format!("w{w} step ({})", o.name()),
            Action::Crash(w) => format!("w{w} crash"),
            Action::Restart(w) => format!("w{w} restart"),
            Action::Pause(w) => format!("w{w} pause"),
            Action::Resume(w, o) => format!("w{w} resume ({})", o.name()),
            Action::Tick => "tick".into(),
            Action::Request(a, op) => format!("request {op} on apply {}", a + 1),
            Action::RolloutRequest(op) => format!("request {op} on the rollout"),
            Action::Expire => "expire retryable".into(),
            Action::Drift(a) => format!("alter apply {}'s stored DDL", a + 1),
            Action::Wake(a) if self.is_rollout() => {
                format!("parked operation {}'s wake time comes", a + 1)
            }
            Action::Wake(a) => format!("parked apply {}'s wake time comes", a + 1),
        }
    }
}
