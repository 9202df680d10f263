//! Readable counterexamples and their export as a schedule (docs/schedule-format.md).

use applyd::machine::{ClaimedVia, ControlOp, EngineKind, Mutant};
use applyd::worker::Command;
use serde_json::{json, Value};

use crate::config::TICK_MS;
use crate::graph::Found;
use crate::state::{Action, Outcome, State, Worker};
use crate::world::ApplydModel;

/// One step of a counterexample, in the words of the schedule format.
pub struct Step {
    pub worker: Option<u8>,
    pub action: &'static str,
    pub apply: Option<u8>,
    pub advance_ms: Option<u64>,
    pub request: Option<ControlOp>,
    pub engine: Option<Outcome>,
    pub state_after: Option<&'static str>,
    pub epoch_after: Option<u8>,
    pub note: String,
}

fn command_text(cmd: &Command) -> String {
    match cmd {
        Command::Write { to, .. } => format!("write {to}"),
        Command::Complete(op) => format!("complete {op} request"),
        Command::Fail(op, why) => format!("fail {op} request ({})", why.message()),
        Command::Call(c) => format!("call {c:?}"),
        Command::Probe(p) => format!("probe {p:?}"),
        Command::FailClosed(c) => format!("fail closed ({})", c.message()),
        Command::Wait(w) => format!("wait ({w:?})"),
        Command::Finish(f) => format!("finish ({f:?})"),
    }
}

fn drive_apply(s: &State, w: u8) -> Option<u8> {
    match s.workers[w as usize] {
        Worker::Driving { apply, .. } => Some(apply),
        _ => None,
    }
}

pub fn steps(model: &ApplydModel, path: &[(State, Option<Action>)]) -> Vec<Step> {
    let mut out = Vec::new();
    for i in 1..path.len() {
        let (before, _) = &path[i - 1];
        let (after, action) = &path[i];
        let action = action.expect("every step but the first has an action");
        let mut st = Step {
            worker: None,
            action: "tick",
            apply: None,
            advance_ms: None,
            request: None,
            engine: None,
            state_after: None,
            epoch_after: None,
            note: String::new(),
        };
        match action {
            Action::Submit(a) => {
                st.action = "submit";
                st.apply = Some(a);
                let what = if model.is_rollout() {
                    "rollout"
                } else {
                    "apply"
                };
                st.note = format!("{} {what} submitted", model.spec(a as usize).engine);
            }
            Action::Claim(w, a) => {
                st.worker = Some(w);
                st.action = "claim";
                st.apply = Some(a);
                let row = &before.rows[a as usize];
                st.note = match model.claim_of(before, a as usize, row) {
                    Some((via, mv)) if after.rows[a as usize].epoch != row.epoch => match via {
                        ClaimedVia::Operation { op, .. } => format!(
                            "claim {via} ({}; parent: {})",
                            op.describe(),
                            mv.arm.describe()
                        ),
                        ClaimedVia::Apply(_) => format!("claim {via} ({})", mv.arm.describe()),
                    },
                    _ => "claim refused: the target is busy, the start request fails".into(),
                };
            }
            Action::Step(w, o) | Action::Resume(w, o) => {
                let resumed = matches!(action, Action::Resume(..));
                st.worker = Some(w);
                st.action = if resumed { "resume" } else { "step" };
                st.apply = drive_apply(before, w);
                st.engine = Some(o);
                let p = model.prepare(before, w as usize, resumed);
                st.note = match p.as_ref().and_then(|p| p.cmd.as_ref()) {
                    Some(cmd) => {
                        let mut t = command_text(cmd);
                        if matches!(cmd, Command::Call(_) | Command::Probe(_)) {
                            t.push_str(&format!(" -> engine {}", o.name()));
                        }
                        t
                    }
                    None => "heartbeat and read refused: lease lost".into(),
                };
                if resumed {
                    st.note.push_str(" (on the read made before the pause)");
                }
            }
            Action::Crash(w) => {
                st.worker = Some(w);
                st.action = "crash";
                st.apply = drive_apply(before, w);
                st.note = "the worker process dies (its Spirit runners die with it) and restarts at once with an empty memory".into();
            }
            Action::Restart(w) => {
                st.worker = Some(w);
                st.action = "restart";
                st.note = "the worker comes back with an empty memory".into();
            }
            Action::Pause(w) => {
                st.worker = Some(w);
                st.action = "pause";
                st.apply = drive_apply(before, w);
                st.note = "the worker reads its row, then freezes (no heartbeats)".into();
            }
            Action::Tick => {
                st.advance_ms = Some(TICK_MS);
                st.note = "time passes: heartbeats age".into();
            }
            Action::Request(a, op) => {
                st.action = "request";
                st.apply = Some(a);
                st.request = Some(op);
                st.note = format!("the user requests {op}");
            }
            Action::RolloutRequest(op) => {
                st.action = "request";
                st.request = Some(op);
                st.note = format!("the user requests {op} of the whole rollout");
            }
            Action::Drift(a) => {
                st.action = "drift";
                st.apply = Some(a);
                st.note =
                    "the stored DDL is altered: it no longer matches its reviewed fingerprint"
                        .into();
            }
            Action::Wake(a) => {
                st.action = "wake";
                st.apply = Some(a);
                st.note = "the parked apply's wake time comes".into();
            }
            Action::Expire => {
                st.action = "expire";
                st.apply = (0..model.cfg.applies.len())
                    .find(|a| before.rows[*a].state != after.rows[*a].state)
                    .map(|a| a as u8);
                st.note = "retry expiry".into();
            }
        }
        if let Some(a) = st.apply {
            let row = &after.rows[a as usize];
            st.state_after = Some(row.state.as_str());
            st.epoch_after = Some(row.epoch);
        }
        if model.is_rollout() && before.parent != after.parent {
            st.note.push_str(&format!(
                "; the rollout is {}{}",
                after.parent.state,
                if after.parent.latches.held {
                    " (held)"
                } else {
                    ""
                }
            ));
        }
        out.push(st);
    }
    out
}

pub fn print(model: &ApplydModel, found: &Found) -> String {
    let what = if found.property == found.violation.invariant {
        found.violation.to_string()
    } else {
        format!("{} — {}", found.property, found.violation)
    };
    let mut text = format!(
        "violation: {what}\ncounterexample ({} steps):\n",
        found.path.len() - 1
    );
    for (i, s) in steps(model, &found.path).iter().enumerate() {
        let who = s.worker.map_or("--".to_string(), |w| format!("w{w}"));
        let unit = if model.is_rollout() {
            "operation"
        } else {
            "apply"
        };
        let apply = match (s.apply, s.state_after, s.epoch_after) {
            (Some(a), Some(st), Some(e)) => format!("{unit} {} {st} epoch {e}", a + 1),
            _ => "-".into(),
        };
        let action = match s.request {
            Some(op) => format!("request {op}"),
            None => s.action.to_string(),
        };
        text.push_str(&format!(
            "{:>4}. {:<3} {:<15} {:<44} {}\n",
            i + 1,
            who,
            action,
            apply,
            s.note
        ));
    }
    text
}

pub fn schedule(model: &ApplydModel, mutant: Option<Mutant>, found: &Found) -> Value {
    let p = model.params();
    let engine_name = |e: EngineKind| match e {
        EngineKind::PlanetScale => "planetscale",
        EngineKind::Spirit => "spirit",
    };
    // A rollout world's rows are the operations of one apply: it is exported as that apply,
    // with its rollout, and each step names the operation it acted on.
    let applies: Vec<Value> = match model.cfg.rollout {
        Some(policy) => {
            let a = model.cfg.applies[0];
            vec![json!({
                "id": 1,
                "engine": engine_name(a.engine),
                "target": 0,
                "options": a.options,
                "rollout": {
                    "deployments": model.cfg.applies.len(),
                    "cutover_policy": policy.cutover,
                    "on_failure": policy.on_failure,
                    "max_drivers": policy.max_drivers,
                },
            })]
        }
        None => model
            .cfg
            .applies
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "id": i + 1,
                    "engine": engine_name(a.engine),
                    "target": a.target,
                    "options": a.options,
                })
            })
            .collect(),
    };
    let rollout = model.is_rollout();
    let steps: Vec<Value> = steps(model, &found.path)
        .into_iter()
        .map(|s| {
            let (apply, operation) = match (rollout, s.apply) {
                (true, Some(_)) if s.action == "submit" => (Some(1), None),
                (true, Some(op)) => (Some(1), Some(op + 1)),
                (true, None) if s.request.is_some() => (Some(1), None),
                (_, a) => (a.map(|a| a + 1), None),
            };
            json!({
                "worker": s.worker,
                "action": s.action,
                "apply": apply,
                "operation": operation,
                "advance_ms": s.advance_ms,
                "request": s.request.map(|op| op.as_str()),
                "engine": s.engine.map(|o| o.name()),
                "state_after": s.state_after,
                // A rollout's operations draw their epochs from the apply's one counter in the
                // stores; the model counts each operation's own.
                "epoch_after": if rollout { None } else { s.epoch_after },
                "note": s.note,
            })
        })
        .collect();
    json!({
        "format": "applyd-schedule/1",
        "mutant": mutant.map(|m| m.name()),
        "params": {
            "stale_after_ms": p.stale_after_ms,
            "presumed_loss_ms": p.presumed_loss_ms,
            "retry_budget": p.retry_budget,
            "retry_freshness_ms": p.retry_freshness_ms,
        },
        "tick_ms": TICK_MS,
        "workers": model.cfg.workers,
        "applies": applies,
        "steps": steps,
        "violation": if found.property == found.violation.invariant {
            found.violation.to_string()
        } else {
            format!("{}: {}", found.property, found.violation)
        },
    })
}
