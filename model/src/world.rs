//! The stateright `Model`: the store (MemoryStore's semantics over compact rows), the workers
//! (applyd's own `Drive`), the abstract engines, the user and the clock.
//!
//! Here: the model's configuration-facing methods, the step function over the compact store and
//! epoch relabelling; in `workers` the worker steps, in `checks` the properties, in `actions` the
//! enabled actions and their budgets.

use std::collections::BTreeMap;
use std::sync::Arc;

use applyd::machine::invariants::{
    check_world, cutover_after_gate, justified_completion, legal_step, reviewed_change_only,
    stale_write, stop_dominance, ApplyFacts, Violation,
};
use applyd::machine::moves::ClaimMove;
use applyd::machine::table::is_settled;
use applyd::machine::{
    ApplyState, ClaimView, ClaimedVia, ControlOp, OperationClaimView, Params, Rules,
};
use applyd::worker::{ApplySnapshot, Command, Drive, DriveView, WriteOutcome};
use stateright::{Model, Property};

use crate::config::{ApplySpec, Config, TICK_MS};
use crate::engine;
use crate::state::{
    Action, Controls, DriveId, Drives, Eng, Flaw, Frozen, Outcome, Resume, Row, State, Worker,
    MAX_WORKERS,
};

mod actions;
mod checks;
mod rollout;
mod workers;

pub const WORLD: &str = "world invariants";
pub const STEP: &str = "step invariants";
pub const RECLAIMABLE: &str = "reclaimability";
pub const NO_WEDGE: &str = "no wedge";

/// The control requests the model's user may make.
pub const USER_OPS: [ControlOp; 6] = [
    ControlOp::Stop,
    ControlOp::Start,
    ControlOp::Cancel,
    ControlOp::Cutover,
    ControlOp::Revert,
    ControlOp::SkipRevert,
];

#[derive(Debug, Clone)]
pub struct ApplydModel {
    pub cfg: Config,
    pub rules: Rules,
    /// Keep real epochs instead of relabelling them by rank (replaying a path for export).
    pub raw_epochs: bool,
    /// Retire displaced drivers within the step that displaced them (see `retire_displaced`);
    /// off only to spell their noticing steps out in a counterexample.
    pub retire: bool,
    /// Shared by clones (stateright's threads, the replay): a `DriveId` means one drive.
    pub drives: Arc<Drives>,
}

/// What a worker is about to do, computed from the state without changing it.
pub struct Prepared {
    pub apply: usize,
    pub drive: Drive,
    pub hb_age: u8,
    /// The heartbeat landed (the row's heartbeat is refreshed).
    pub heartbeat: bool,
    /// `None` when the read was refused (lease lost).
    pub view: Option<DriveView>,
    pub cmd: Option<Command>,
}

impl ApplydModel {
    pub fn new(cfg: Config, mutant: Option<applyd::machine::Mutant>) -> ApplydModel {
        let rules = Rules::with_mutant(cfg.params(), mutant);
        ApplydModel {
            cfg,
            rules,
            raw_epochs: false,
            retire: true,
            drives: Arc::default(),
        }
    }

    pub fn params(&self) -> Params {
        self.rules.params
    }

    /// The representative of `s`'s worker-symmetry class and its permutation, with workers
    /// ordered by their drives' content (`State::canonical_by`): the same in every run.
    pub fn canonical(&self, s: &State) -> (State, [u8; MAX_WORKERS]) {
        s.canonical_by(|d| self.drives.key(d))
    }

    pub fn representative(&self, s: &State) -> State {
        self.canonical(s).0
    }

    pub fn spec(&self, a: usize) -> ApplySpec {
        self.cfg.applies[a]
    }

    pub fn initial(&self) -> State {
        let mut workers = [Worker::Unused; MAX_WORKERS];
        for w in workers.iter_mut().take(self.cfg.workers) {
            *w = Worker::Idle;
        }
        State {
            rows: [Row::ABSENT; crate::state::MAX_APPLIES],
            eng: [Eng::NONE; crate::state::MAX_APPLIES],
            workers,
            parent: self.initial_parent(),
            faults_left: self.cfg.faults,
            engine_faults_left: self.cfg.engine_faults,
            requests_left: self.cfg.requests,
            drifts_left: self.cfg.drifts,
            flaw: None,
        }
    }

    fn applies(&self) -> usize {
        self.cfg.applies.len()
    }

    /// Apply (or operation) `a`'s row as the claim arms see it: `row` is `s.rows[a]` or a
    /// variant of it.
    pub fn claim_view(&self, s: &State, a: usize, row: &Row) -> ClaimView {
        let spec = self.spec(a);
        let controls = self.op_controls(s, a);
        ClaimView {
            state: row.state,
            leased: row.leased,
            heartbeat_age_ms: row.hb_age.map(|t| t as u64 * TICK_MS),
            attempt: row.attempt as u32,
            updated_age_ms: 0,
            has_children: true,
            controls,
            resting: row.resting,
            asks_now: self
                .rules
                .acts_now(spec.engine, row.state, &controls, &spec.options),
        }
    }

    /// The full `Drive` of a driving worker.
    pub fn drive(&self, apply: u8, epoch: u8, id: DriveId) -> Drive {
        let mut d = self.drives.get(id);
        d.apply = apply as u64 + 1;
        d.epoch = epoch as u64;
        d
    }

    /// A driving worker holding `drive`.
    pub fn driving(&self, drive: Drive, hb_age: u8, frozen: Option<Frozen>) -> Worker {
        let (apply, epoch) = ((drive.apply - 1) as u8, drive.epoch as u8);
        let mut d = drive;
        d.apply = 0;
        d.epoch = 0;
        Worker::Driving {
            apply,
            epoch,
            hb_age,
            drive: self.drives.intern(d),
            frozen,
        }
    }

    /// The snapshot a paused worker read.
    pub fn frozen_snapshot(&self, a: usize, f: &Frozen) -> ApplySnapshot {
        let spec = self.spec(a);
        ApplySnapshot {
            id: a as u64 + 1,
            operation: a as u64 + 1,
            engine: spec.engine,
            state: f.state,
            epoch: f.epoch as u64,
            attempt: f.attempt as u32,
            options: spec.options,
            resume: f.resume.get(),
        }
    }

    pub fn snapshot(&self, s: &State, a: usize) -> ApplySnapshot {
        let row = &s.rows[a];
        let spec = self.spec(a);
        ApplySnapshot {
            id: a as u64 + 1,
            operation: a as u64 + 1,
            engine: spec.engine,
            state: row.state,
            epoch: row.epoch as u64,
            attempt: row.attempt as u32,
            options: spec.options,
            resume: row.resume.get(),
        }
    }

    fn active_on_target(&self, s: &State, a: usize) -> bool {
        let target = self.spec(a).target;
        (0..self.applies()).any(|b| {
            b != a
                && s.rows[b].present
                && s.rows[b].state.is_active()
                && self.spec(b).target == target
        })
    }

    fn allowed(&self, row: &Row, epoch: u64) -> bool {
        if self.is_rollout() {
            // The stores find a rollout's operation by its lease's exact epoch
            // (`owned_member`), which the unfenced-write switch does not reach.
            return row.epoch as u64 == epoch;
        }
        self.rules.write_allowed(row.epoch as u64, epoch)
    }

    /// The claim a worker on the configured path would make on apply `a`: how it was claimed
    /// and the move. The operation row of a single-operation apply mirrors the apply row (both
    /// stores write them together; `tests/store_conformance.rs` checks the mirror), so the
    /// operation arms read the same compact row as the apply arms. A rollout's operation is
    /// seen as MemoryStore's `member_view` sees it: its own row for both, and its start gate.
    pub fn claim_of(&self, s: &State, a: usize, row: &Row) -> Option<(ClaimedVia, ClaimMove)> {
        let engine = self.spec(a).engine;
        let view = self.claim_view(s, a, row);
        let both = OperationClaimView::single(view, view);
        if self.is_rollout() {
            let member = OperationClaimView {
                start_open: self.start_gate(s, a) == applyd::machine::rollout::StartGate::Open,
                ..both
            };
            return self.rules.member_claim(engine, &member);
        }
        self.rules.path_claim(self.cfg.claim_path, engine, &both)
    }

    /// A copy with epochs relabelled by rank (as `step` leaves them unless `raw_epochs`).
    pub fn relabelled(&self, s: &State) -> State {
        let mut n = *s;
        self.relabel_epochs(&mut n);
        n
    }

    /// Relabel each apply's epochs by rank: only their order matters to the rules, and the
    /// state space stays finite although claims go on forever.
    fn relabel_epochs(&self, s: &mut State) {
        for a in 0..self.applies() {
            // The epochs in use as a bitset: an epoch's rank is the number of smaller ones.
            let mut bits = [0u64; 4];
            let mut mark = |v: u8| bits[(v >> 6) as usize] |= 1 << (v & 63);
            mark(s.rows[a].epoch);
            mark(s.eng[a].seen_epoch);
            if let Some(r) = s.eng[a].runner {
                mark(r.epoch);
            }
            for w in s.workers.iter() {
                if let Worker::Driving {
                    apply,
                    epoch,
                    frozen,
                    ..
                } = w
                {
                    if *apply as usize == a {
                        mark(*epoch);
                        if let Some(f) = frozen {
                            mark(f.epoch);
                        }
                    }
                }
            }
            // 0 (never claimed) stays 0; the others count from 1.
            let base = u32::from(bits[0] & 1 == 0);
            let map = |v: u8| -> u8 {
                let (word, bit) = ((v >> 6) as usize, v & 63);
                let below: u32 = bits[..word].iter().map(|w| w.count_ones()).sum::<u32>()
                    + (bits[word] & ((1u64 << bit) - 1)).count_ones();
                (below + base) as u8
            };
            s.rows[a].epoch = map(s.rows[a].epoch);
            s.eng[a].seen_epoch = map(s.eng[a].seen_epoch);
            if let Some(r) = s.eng[a].runner.as_mut() {
                r.epoch = map(r.epoch);
            }
            for w in s.workers.iter_mut() {
                if let Worker::Driving {
                    apply,
                    epoch,
                    frozen,
                    ..
                } = w
                {
                    if *apply as usize == a {
                        *epoch = map(*epoch);
                        if let Some(f) = frozen.as_mut() {
                            f.epoch = map(f.epoch);
                        }
                    }
                }
            }
        }
    }

    /// The raw successor (no canonicalisation of workers).
    pub fn step(&self, s: &State, action: Action) -> Option<State> {
        let mut n = *s;
        match action {
            Action::Submit(a) => {
                let a = a as usize;
                if s.rows[a].present || self.active_on_target(s, a) {
                    return None;
                }
                // A rollout is submitted whole: every operation at once.
                let submitted = if self.is_rollout() {
                    0..self.applies()
                } else {
                    a..a + 1
                };
                for r in submitted {
                    n.rows[r] = Row {
                        present: true,
                        ..Row::ABSENT
                    };
                }
            }
            Action::Claim(w, a) => {
                let (w, a) = (w as usize, a as usize);
                if s.workers[w] != Worker::Idle || !s.rows[a].present {
                    return None;
                }
                let row = s.rows[a];
                let engine = self.spec(a).engine;
                let (_, mv) = self.claim_of(s, a, &row)?;
                let (pre, to) = (row.state, mv.to);
                if mv.reactivates && self.active_on_target(s, a) {
                    // MemoryStore fails the start and leaves the row alone.
                    if !row.controls.start() {
                        return None;
                    }
                    n.rows[a].controls.set(ControlOp::Start, false);
                    n.rows[a].controls.set_start_newer_than_lease(false);
                } else {
                    self.flag(
                        &mut n,
                        a,
                        legal_step(engine, pre, to),
                        Flaw::LegalStep(engine, pre, to),
                    );
                    let r = &mut n.rows[a];
                    r.epoch += 1;
                    r.leased = true;
                    r.hb_age = Some(0);
                    r.resting = false;
                    if mv.counts_attempt {
                        r.attempt += 1;
                    }
                    r.state = to;
                    r.controls.set_start_newer_than_lease(false);
                    let drive = Drive::new(a as u64 + 1, r.epoch as u64, engine, pre, &self.rules);
                    n.workers[w] = self.driving(drive, 0, None);
                    self.rederive(&mut n);
                }
            }
            Action::Step(w, o) => {
                let p = self.prepare(s, w as usize, false)?;
                self.execute(&mut n, w as usize, p, o);
            }
            Action::Resume(w, o) => {
                let p = self.prepare(s, w as usize, true)?;
                self.execute(&mut n, w as usize, p, o);
            }
            Action::Pause(w) => {
                let w = w as usize;
                let Worker::Driving {
                    apply,
                    epoch,
                    frozen: None,
                    ..
                } = s.workers[w]
                else {
                    return None;
                };
                let a = apply as usize;
                let row = &s.rows[a];
                if s.faults_left == 0 || !self.allowed(row, epoch as u64) {
                    return None;
                }
                let read = Frozen {
                    state: row.state,
                    epoch: row.epoch,
                    attempt: row.attempt,
                    resume: row.resume,
                    controls: Controls::pack(self.op_controls(s, a)),
                    drifted: row.drifted,
                    cutover_open: self.cutover_open(s, a),
                };
                if let Worker::Driving { frozen, .. } = &mut n.workers[w] {
                    *frozen = Some(read);
                }
                n.faults_left -= 1;
            }
            Action::Crash(w) => {
                let w = w as usize;
                if s.faults_left == 0
                    || matches!(s.workers[w], Worker::Unused | Worker::Crashed)
                    || (s.workers[w] == Worker::Idle && s.hosted_by(w) == 0)
                {
                    return None;
                }
                n.faults_left -= 1;
                // The process dies and a fresh one takes its place at once: a worker that stays
                // down is a fresh one that does not act, which the interleavings already cover.
                n.workers[w] = Worker::Idle;
                for e in n.eng.iter_mut() {
                    if e.runner.is_some_and(|r| r.host as usize == w) {
                        e.runner = None;
                    }
                }
            }
            Action::Restart(w) => {
                if s.workers[w as usize] != Worker::Crashed {
                    return None;
                }
                n.workers[w as usize] = Worker::Idle;
            }
            Action::Tick => {
                let stale = self.cfg.stale_ticks;
                let presumed = self.cfg.presumed_ticks;
                let mut changed = false;
                for r in n.rows.iter_mut() {
                    if let Some(age) = r.hb_age.as_mut() {
                        if r.leased && *age < stale {
                            *age += 1;
                            changed = true;
                        }
                    }
                }
                for w in n.workers.iter_mut() {
                    if let Worker::Driving { hb_age, .. } = w {
                        if *hb_age < presumed {
                            *hb_age += 1;
                            changed = true;
                        }
                    }
                }
                if !changed {
                    return None;
                }
            }
            Action::RolloutRequest(op) => {
                self.rollout_request(s, &mut n, op)?;
            }
            Action::Request(a, op) => {
                let a = a as usize;
                let row = s.rows[a];
                if self.is_rollout()
                    || (s.requests_left == 0 && op != ControlOp::Start)
                    || !row.present
                    || row.controls.has(op)
                    || !self.request_matters(&row, a, op)
                {
                    return None;
                }
                self.rules
                    .accepts_request(self.spec(a).engine, row.state, op, &row.controls.get())
                    .ok()?;
                // A start only matters after a stop (or at a deferred deploy), so the stops
                // bound the starts: starts do not spend the request budget.
                if op != ControlOp::Start {
                    n.requests_left -= 1;
                }
                n.rows[a].controls.set(op, true);
                if op == ControlOp::Start {
                    n.rows[a].controls.set_start_newer_than_lease(true);
                }
            }
            Action::Wake(a) => {
                let row = &mut n.rows[a as usize];
                if !row.resting {
                    return None;
                }
                row.resting = false;
            }
            Action::Drift(a) => {
                let row = &mut n.rows[a as usize];
                if s.drifts_left == 0 || !row.present || row.drifted || row.state.is_terminal() {
                    return None;
                }
                row.drifted = true;
                n.drifts_left -= 1;
            }
            Action::Expire => {
                let mut any = false;
                for a in 0..self.applies() {
                    let row = s.rows[a];
                    let engine = self.spec(a).engine;
                    let expiry = self.rules.expiry_move(engine, &self.claim_view(s, a, &row));
                    if let Some((_, to)) = expiry.filter(|_| row.present) {
                        self.flag(
                            &mut n,
                            a,
                            legal_step(engine, row.state, to),
                            Flaw::LegalStep(engine, row.state, to),
                        );
                        n.rows[a].state = to;
                        any = true;
                    }
                }
                if !any {
                    return None;
                }
                self.rederive(&mut n);
            }
        }
        self.check_rollout_step(s, &mut n);
        if self.retire {
            self.retire_displaced(&mut n);
        }
        if !self.raw_epochs {
            self.relabel_epochs(&mut n);
        }
        Some(n)
    }

    /// A driver that is not paused and whose lease is gone (its writes are refused) has exactly
    /// one thing left to do: its next step's heartbeat is refused and it goes idle, touching
    /// nothing else (no row, no engine, no budget). That step is invisible to everyone else and
    /// commutes with every other action, and the lease never comes back (epochs only grow), so
    /// it is taken at once, in the step that displaced the driver. A crash in between is no
    /// different from a crash of the idle worker (runners stay with the process either way).
    /// Paused drivers are kept: acting on a stale read is what displaced workers may still do.
    ///
    /// A paused driver whose lease is gone is retired the same way when the one command it
    /// will resume with touches only the store: that write is refused, so resuming changes
    /// nothing but the worker. Its command is fixed by its frozen read; the only input that
    /// still moves is its heartbeat age, which can only turn the command into a presumed-loss
    /// finish, which touches nothing either. Engine calls and probes are kept: they act.
    pub fn retire_displaced(&self, s: &mut State) {
        for w in 0..MAX_WORKERS {
            let Worker::Driving {
                apply,
                epoch,
                frozen,
                ..
            } = s.workers[w]
            else {
                continue;
            };
            if self.allowed(&s.rows[apply as usize], epoch as u64) {
                continue;
            }
            let retire = frozen.is_none()
                || self
                    .prepare(s, w, true)
                    .is_some_and(|p| !matches!(p.cmd, Some(Command::Call(_) | Command::Probe(_))));
            if retire {
                s.workers[w] = Worker::Idle;
            }
        }
    }
}

impl Model for ApplydModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        self.enabled(s, actions)
    }

    fn next_state(&self, s: &State, action: Action) -> Option<State> {
        self.step(s, action)
    }

    fn format_action(&self, action: &Action) -> String {
        self.format(action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(WORLD, |m: &ApplydModel, s: &State| {
                m.world_or_orphan_violation(s).is_none()
            }),
            Property::always(STEP, |m: &ApplydModel, s: &State| {
                m.step_violation(s).is_none()
            }),
            Property::always(RECLAIMABLE, |m: &ApplydModel, s: &State| {
                m.unreclaimable(s).is_none()
            }),
        ]
    }
}
