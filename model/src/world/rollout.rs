//! The rollout worlds: the model's rows are the operations of one apply, whose row
//! (`State::parent`) holds no lease and is only ever written with the derivation. What the
//! memory store does to a rollout, over the compact state: the operations' view of the
//! apply's requests, the gates, a request's acceptance, an operation completing its part of
//! one, and the re-derivation after every move. Every decision is `machine::rollout`'s.

use applyd::machine::invariants::{rollout_no_orphan, rollout_step, OperationFacts};
use applyd::machine::rollout::{requests, CutoverGate, Member, RolloutPolicy, StartGate};
use applyd::machine::{ApplyState, PendingControls};

use super::*;
use crate::state::{Controls, Latches, Op, Parent, MAX_APPLIES};

impl Controls {
    /// Pending requests as an operation saw them, packed (a paused driver's read).
    pub fn pack(p: PendingControls) -> Controls {
        let mut c = Controls::default();
        for op in USER_OPS {
            c.set(op, p.has(op));
        }
        c.set_start_newer_than_lease(p.start_newer_than_lease);
        c
    }
}

impl ApplydModel {
    pub fn is_rollout(&self) -> bool {
        self.cfg.rollout.is_some()
    }

    /// The rollout's policy: the configuration's, with the state's latches.
    pub fn policy(&self, p: &Parent) -> RolloutPolicy {
        p.latches.on(self.cfg.rollout.unwrap_or_default())
    }

    /// The operations as the rollout rules see them (the first `applies()` entries), in
    /// rollout order: operation `i` is deployment `i`'s.
    pub fn members(&self, s: &State) -> [Member; MAX_APPLIES] {
        let mut m = [Member::new(0, 0, ApplyState::Pending); MAX_APPLIES];
        for (a, member) in m.iter_mut().enumerate().take(self.applies()) {
            *member = Member {
                deployment: a as u32,
                step: 0,
                state: s.rows[a].state,
                failed_closed: s.rows[a].failed_closed,
            };
        }
        m
    }

    fn ops(&self, s: &State) -> [Op; MAX_APPLIES] {
        let mut o = [Op {
            state: ApplyState::Pending,
            failed_closed: false,
        }; MAX_APPLIES];
        for (a, op) in o.iter_mut().enumerate().take(self.applies()) {
            *op = Op {
                state: s.rows[a].state,
                failed_closed: s.rows[a].failed_closed,
            };
        }
        o
    }

    /// The members a flaw recorded.
    pub fn members_of(&self, ops: &[Op; MAX_APPLIES]) -> Vec<Member> {
        (0..self.applies())
            .map(|a| Member {
                deployment: a as u32,
                step: 0,
                state: ops[a].state,
                failed_closed: ops[a].failed_closed,
            })
            .collect()
    }

    /// The pending requests as operation (or apply) `a` sees them: an apply's own; a rollout
    /// operation's through `rollout::requests::pending_for`.
    pub fn op_controls(&self, s: &State, a: usize) -> PendingControls {
        let row = &s.rows[a];
        let Some(_) = self.cfg.rollout else {
            return row.controls.get();
        };
        let spec = self.spec(a);
        let mut all = s.parent.controls.get();
        all.start_newer_than_lease = all.start && row.controls.start_newer_than_lease();
        let members = self.members(s);
        requests::pending_for(
            &self.rules,
            spec.engine,
            &spec.options,
            &self.policy(&s.parent),
            &members[..self.applies()],
            a,
            &all,
            |op| row.acked.has(op),
        )
    }

    /// Operation `a`'s cutover gate is open (always for an apply of one operation).
    pub fn cutover_open(&self, s: &State, a: usize) -> bool {
        !self.is_rollout()
            || self.rules.rollout_cutover_gate(
                &self.policy(&s.parent),
                &self.members(s)[..self.applies()],
                a,
            ) == CutoverGate::Open
    }

    /// Operation `a`'s start gate (always open for an apply of one operation).
    pub fn start_gate(&self, s: &State, a: usize) -> StartGate {
        if !self.is_rollout() {
            return StartGate::Open;
        }
        self.rules.rollout_start_gate(
            &self.policy(&s.parent),
            &self.members(s)[..self.applies()],
            a,
        )
    }

    /// Write the rollout's derived state, settle a stop the derivation finished, and wake the
    /// operations parked at the cutover gate whose turn came (MemoryStore's `rederive`).
    pub(crate) fn rederive(&self, n: &mut State) {
        if !self.is_rollout() {
            return;
        }
        let members = self.members(n);
        let members = &members[..self.applies()];
        let policy = self.policy(&n.parent);
        for i in requests::wake_at_gate(&self.rules, &policy, members) {
            n.rows[i].resting = false;
        }
        let stop_pending = n.parent.controls.has(ControlOp::Stop);
        let (mut to, stop_done) =
            requests::derive_settled(&self.rules, &policy, members, stop_pending);
        if stop_done {
            n.parent.controls.set(ControlOp::Stop, false);
            self.lift_hold(&mut n.parent);
            to = self.rules.derive_rollout(&self.policy(&n.parent), members);
        }
        n.parent.state = to;
    }

    /// A pending start lifts a stop's hold (one rollout: no other apply holds its places).
    fn lift_hold(&self, p: &mut Parent) {
        if requests::hold_lifts(&self.policy(p), &p.controls.get()) {
            p.latches.held = false;
        }
    }

    /// The user's request of the whole rollout (MemoryStore's `request` and
    /// `rollout_request`).
    pub(crate) fn rollout_request(&self, s: &State, n: &mut State, op: ControlOp) -> Option<()> {
        let engine = self.spec(0).engine;
        let pending = s.parent.controls.get();
        // Starts and releases are bounded by the stops and holds they lift: they spend no
        // request budget.
        let free = matches!(op, ControlOp::Start | ControlOp::Release);
        if !s.rows[0].present
            || pending.has(op)
            || (s.requests_left == 0 && !free)
            || !self.rollout_request_matters(s, op)
        {
            return None;
        }
        self.rules
            .accepts_request(engine, s.parent.state, op, &pending)
            .ok()?;
        if !free {
            n.requests_left -= 1;
        }
        n.parent.controls.set(op, true);
        for a in 0..self.applies() {
            // A new issue: no operation has done its part of it yet.
            n.rows[a].acked.set(op, false);
            if op == ControlOp::Start {
                n.rows[a].controls.set_start_newer_than_lease(true);
            }
        }
        let accepted = self
            .rules
            .accept_rollout_request(self.policy(&n.parent), op);
        n.parent.latches = Latches::of(&accepted.policy);
        if accepted.withdraw_unstarted {
            for a in 0..self.applies() {
                if let Some(to) = self.rules.withdraw_move(engine, n.rows[a].state) {
                    n.rows[a].state = to;
                }
            }
            self.rederive(n);
        }
        if accepted.complete_now {
            n.parent.controls.set(op, false);
        }
        self.lift_hold(&mut n.parent);
        self.rederive(n);
        if requests::settled_by_state(op, n.parent.state) {
            n.parent.controls.set(op, false);
            self.lift_hold(&mut n.parent);
            self.rederive(n);
        }
        Some(())
    }

    /// Requests worth exploring on a rollout (as `request_matters`): a cutover only where it
    /// is deferred, a start only where a stop holds the rollout, a release only under `pause`.
    pub(crate) fn rollout_request_matters(&self, s: &State, op: ControlOp) -> bool {
        let o = self.spec(0).options;
        match op {
            ControlOp::Cutover => o.defer_cutover,
            ControlOp::Start => s.parent.latches.held || s.parent.controls.has(ControlOp::Stop),
            // Where a `pause` hold stands (a release before any failure sets the same latch).
            ControlOp::Release => {
                s.parent.state == ApplyState::Paused && !s.parent.latches.released
            }
            _ => true,
        }
    }

    /// Operation `a`'s owner completed (or refused) its part of `op`: while another live
    /// operation still acts on it, the operation only acknowledges it; the last one completes
    /// it (MemoryStore's `finish_member_request`).
    pub(crate) fn finish_member_request(
        &self,
        n: &mut State,
        a: usize,
        op: ControlOp,
        completed: bool,
    ) {
        let spec = self.spec(a);
        let pending = n.parent.controls.get();
        let members = self.members(n);
        let others_act = completed
            && requests::acted_on_elsewhere(
                &self.rules,
                spec.engine,
                &spec.options,
                &self.policy(&n.parent),
                &members[..self.applies()],
                a,
                op,
                &pending,
            );
        if others_act {
            n.rows[a].acked.set(op, true);
            return;
        }
        n.parent.controls.set(op, false);
        if op == ControlOp::Stop {
            self.lift_hold(&mut n.parent);
            self.rederive(n);
        }
    }

    /// The rollout rules over one step: the shared `rollout_step`, flagged on the successor.
    pub(crate) fn check_rollout_step(&self, s: &State, n: &mut State) {
        if !self.is_rollout() || n.flaw.is_some() || !n.rows[0].present {
            return;
        }
        let before = self.members(s);
        let after = self.members(n);
        let k = self.applies();
        let r = rollout_step(
            &self.policy(&s.parent),
            &before[..k],
            &self.policy(&n.parent),
            &after[..k],
            n.parent.state,
        );
        if r.is_err() {
            n.flaw = Some((
                0,
                Flaw::Rollout {
                    before: s.parent.latches,
                    members_before: self.ops(s),
                    after: n.parent.latches,
                    members_after: self.ops(n),
                    parent: n.parent.state,
                },
            ));
        }
    }

    /// A finished rollout leaves no operation live (the shared `rollout_no_orphan`).
    pub fn orphan_violation(&self, s: &State) -> Option<applyd::machine::invariants::Violation> {
        if !self.is_rollout() || !s.rows[0].present {
            return None;
        }
        let mut ops = [OperationFacts {
            state: ApplyState::Pending,
            runner_alive: false,
        }; MAX_APPLIES];
        for (a, op) in ops.iter_mut().enumerate().take(self.applies()) {
            *op = OperationFacts {
                state: s.rows[a].state,
                runner_alive: s.eng[a].runner.is_some(),
            };
        }
        rollout_no_orphan(s.parent.state, &ops[..self.applies()]).err()
    }

    /// The policy a rollout world starts with.
    pub(crate) fn initial_parent(&self) -> Parent {
        Parent {
            state: ApplyState::Pending,
            latches: Latches::of(&self.cfg.rollout.unwrap_or_default()),
            controls: Controls::default(),
        }
    }

    /// Operation `a` rests for the no-wedge check: it is settled, or, not started, its start
    /// gate waits for a person (a `pause` hold or a stop) or it will never start.
    pub(crate) fn gate_rests(&self, s: &State, a: usize) -> bool {
        s.rows[a].state == ApplyState::Pending
            && matches!(
                self.start_gate(s, a),
                StartGate::Orphaned | StartGate::Held | StartGate::Stopped { .. }
            )
    }
}
