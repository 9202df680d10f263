//! Worker steps: what a driving worker is about to do (its heartbeat, read and command), the
//! engine's possible answers, and executing the command against the compact store and engines.

use super::*;

impl ApplydModel {
    /// Heartbeat, read and decide, for a step (`resumed == false`) or a resume from a pause.
    pub fn prepare(&self, s: &State, w: usize, resumed: bool) -> Option<Prepared> {
        let Worker::Driving {
            apply,
            epoch,
            hb_age,
            drive,
            frozen,
        } = s.workers[w]
        else {
            return None;
        };
        if frozen.is_some() != resumed {
            return None;
        }
        let a = apply as usize;
        let row = &s.rows[a];
        let mut drive = self.drive(apply, epoch, drive);
        let mut hb_age = hb_age;
        let (heartbeat, view) = if let Some(f) = frozen {
            // The read happened before the pause; the driver acts on it without a heartbeat.
            (
                false,
                Some((
                    self.frozen_snapshot(a, &f),
                    f.controls.get(),
                    f.drifted,
                    f.cutover_open,
                )),
            )
        } else {
            let ok = self.allowed(row, drive.epoch);
            if ok {
                hb_age = 0;
            }
            (
                ok,
                ok.then(|| {
                    (
                        self.snapshot(s, a),
                        self.op_controls(s, a),
                        row.drifted,
                        self.cutover_open(s, a),
                    )
                }),
            )
        };
        // The model's DDL is one bit: the stored change is the reviewed one or it drifted
        // (what `ddl::pinned` tells production drivers from the text).
        let view = view.map(|(snap, controls, drifted, cutover_open)| DriveView {
            row: snap,
            controls,
            revert_window_expired: false,
            heartbeat_ok_age_ms: hb_age as u64 * TICK_MS,
            change_reviewed: !drifted,
            cutover_open,
        });
        // A wait is followed at once by the next decision on the same read: the wait itself
        // changes nothing that anyone else can see.
        let cmd = view.as_ref().map(|v| {
            let mut cmd = drive.next(v, &self.rules);
            for _ in 0..3 {
                if !matches!(cmd, Command::Wait(_)) {
                    break;
                }
                cmd = drive.next(v, &self.rules);
            }
            cmd
        });
        Some(Prepared {
            apply: a,
            drive,
            hb_age,
            heartbeat,
            view,
            cmd,
        })
    }

    pub(crate) fn outcomes(&self, s: &State, p: &Prepared, out: &mut Vec<Outcome>) {
        let engine = self.spec(p.apply).engine;
        let e = &s.eng[p.apply];
        match p.cmd {
            Some(Command::Call(c)) => {
                engine::call_outcomes(engine, e, c, p.drive.epoch as u8, s.engine_faults_left, out)
            }
            Some(Command::Probe(_)) => engine::probe_outcomes(engine, e, out),
            _ => out.push(Outcome::Ok),
        }
    }

    pub(crate) fn flag(&self, s: &mut State, a: usize, r: Result<(), Violation>, flaw: Flaw) {
        if r.is_err() && s.flaw.is_none() {
            s.flaw = Some((a as u8, flaw));
        }
    }

    /// Run the prepared command against the store and the engine.
    pub(crate) fn execute(&self, s: &mut State, w: usize, p: Prepared, outcome: Outcome) {
        let a = p.apply;
        let spec = self.spec(a);
        let mut drive = p.drive;
        if p.heartbeat {
            s.rows[a].hb_age = Some(0);
        }
        let mut idle = false;
        match (p.view, p.cmd) {
            (None, _) | (_, None) => {
                drive.on_store(WriteOutcome::LeaseLost);
            }
            (Some(view), Some(cmd)) => match cmd {
                Command::Write { to, resume } => {
                    let row = s.rows[a];
                    if !self.allowed(&row, drive.epoch) {
                        drive.on_store(WriteOutcome::LeaseLost);
                    } else if self.rules.reactivates(row.state, to) && self.active_on_target(s, a) {
                        drive.on_store(WriteOutcome::TargetBusy);
                    } else if to == ApplyState::CuttingOver
                        && row.state != ApplyState::CuttingOver
                        && !self.cutover_open(s, a)
                    {
                        // MemoryStore checks the rollout's cutover gate under its lock and
                        // refuses the move: the driver sees the store refuse.
                        drive.on_store(WriteOutcome::Unavailable);
                    } else {
                        let writer = drive.epoch as u8;
                        self.flag(
                            s,
                            a,
                            stale_write(row.epoch as u64, drive.epoch),
                            Flaw::StaleWrite {
                                row: row.epoch,
                                writer,
                            },
                        );
                        self.flag(
                            s,
                            a,
                            legal_step(spec.engine, row.state, to),
                            Flaw::LegalStep(spec.engine, row.state, to),
                        );
                        let r = &mut s.rows[a];
                        r.state = to;
                        r.resume = Resume::pack(resume);
                        r.hb_age = Some(0);
                        self.rederive(s);
                        drive.on_store(WriteOutcome::Ok);
                    }
                }
                Command::FailClosed(_) => {
                    let row = s.rows[a];
                    if !self.allowed(&row, drive.epoch) {
                        drive.on_store(WriteOutcome::LeaseLost);
                    } else if let Some(to) = self.rules.fail_closed_move(spec.engine, row.state) {
                        self.flag(
                            s,
                            a,
                            legal_step(spec.engine, row.state, to),
                            Flaw::LegalStep(spec.engine, row.state, to),
                        );
                        let r = &mut s.rows[a];
                        r.state = to;
                        r.hb_age = Some(0);
                        r.failed_closed = self.is_rollout();
                        self.rederive(s);
                        drive.on_store(WriteOutcome::Ok);
                    } else {
                        // The store refuses to rewrite a terminal row.
                        drive.on_store(WriteOutcome::Unavailable);
                    }
                }
                Command::Complete(op) | Command::Fail(op, _) => {
                    let row = s.rows[a];
                    let completed = matches!(cmd, Command::Complete(_));
                    if !self.allowed(&row, drive.epoch) {
                        drive.on_store(WriteOutcome::LeaseLost);
                    } else if self.is_rollout() {
                        if s.parent.controls.has(op) {
                            if completed {
                                self.flag(
                                    s,
                                    a,
                                    justified_completion(op, row.state),
                                    Flaw::Justified(op, row.state),
                                );
                            }
                            self.finish_member_request(s, a, op, completed);
                        }
                        drive.on_store(WriteOutcome::Ok);
                    } else {
                        if row.controls.has(op) {
                            if completed {
                                self.flag(
                                    s,
                                    a,
                                    justified_completion(op, row.state),
                                    Flaw::Justified(op, row.state),
                                );
                            }
                            s.rows[a].controls.set(op, false);
                            if op == ControlOp::Start {
                                s.rows[a].controls.set_start_newer_than_lease(false);
                            }
                        }
                        drive.on_store(WriteOutcome::Ok);
                    }
                }
                Command::Call(c) => {
                    // "Pending" is as of the driver's last read: a request that lands after
                    // it races the call and is seen at the next decision.
                    self.flag(
                        s,
                        a,
                        stop_dominance(&view.controls, spec.engine, c),
                        Flaw::StopDominance(view.controls, spec.engine, c),
                    );
                    self.flag(
                        s,
                        a,
                        reviewed_change_only(c, view.change_reviewed),
                        Flaw::RanDriftedChange(c),
                    );
                    let truth = engine::truth(spec.engine, &s.eng[a]);
                    self.flag(
                        s,
                        a,
                        cutover_after_gate(c, truth),
                        Flaw::CutoverGate(c, truth),
                    );
                    let obs = engine::call(
                        spec.engine,
                        &mut s.eng[a],
                        &view.row,
                        &spec.options,
                        drive.epoch as u8,
                        w as u8,
                        c,
                        outcome,
                    );
                    drive.on_engine(obs);
                }
                Command::Probe(pr) => {
                    let obs = engine::probe(
                        spec.engine,
                        &mut s.eng[a],
                        &view.row,
                        &spec.options,
                        pr,
                        outcome,
                    );
                    drive.on_engine(obs);
                }
                Command::Wait(_) => {}
                Command::Finish(f) => {
                    use applyd::worker::Finish;
                    let gate_open = self.cutover_open(s, a);
                    let row = &mut s.rows[a];
                    let fenced = self.allowed(row, drive.epoch);
                    // As MemoryStore: a release, or a park (`Store::park`) of a wait that parks
                    // (a rollout's operation also at a closed cutover gate).
                    let parks = f == Finish::Parked
                        && applyd::machine::waits::parks_at(
                            spec.engine,
                            row.state,
                            &spec.options,
                            gate_open,
                        );
                    if fenced && (matches!(f, Finish::ReleaseForRetry | Finish::Held) || parks) {
                        row.leased = false;
                        row.hb_age = None;
                        row.resting = parks;
                    }
                    if f == Finish::Watched {
                        // The process keeps the lease and watches; the store sees what it sees
                        // of a drive that polls (`testkit::step` does the same).
                        let state = row.state;
                        drive =
                            Drive::new(drive.apply, drive.epoch, drive.engine, state, &self.rules);
                    } else {
                        idle = true;
                    }
                }
            },
        }
        if outcome.is_fault() {
            s.engine_faults_left -= 1;
        }
        if idle || drive.finished().is_some() {
            s.workers[w] = Worker::Idle;
        } else {
            s.workers[w] = self.driving(drive, p.hb_age, None);
        }
    }
}
