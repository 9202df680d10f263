//! Replaying a counterexample exported by `applyd-model` (format `applyd-schedule/1`) against
//! the real worker core, the memory store and the fake engines.
//!
//! Engine replies are not in a schedule: the fakes answer deterministically. After the steps the
//! simulator runs its heal phase and reports whether the world wedges.
//!
//! Step semantics: `advance_ms` moves the clock first; then `claim` (an idle worker claims),
//! `step` (the worker heartbeats, then runs one command of its drive; an idle worker claims),
//! `crash`, `restart`, `pause`, `resume`, `tick` (with a worker: one heartbeat; without: time
//! only), `request` (a user's control request), `expire` (the retry-expiry sweep).

use applyd::engine::fake::FakeTimings;
use applyd::machine::rollout::{CutoverPolicy, OnFailure};
use applyd::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind, Mutant, Params};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::preset::{ApplyPlan, Preset, World};
use crate::sim::{Outcome, Sim};

pub const FORMAT: &str = "applyd-schedule/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleParams {
    pub stale_after_ms: u64,
    pub presumed_loss_ms: u64,
    pub retry_budget: u32,
    pub retry_freshness_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleApply {
    pub id: u64,
    pub engine: EngineKind,
    #[serde(default)]
    pub target: u8,
    #[serde(default)]
    pub options: ApplyOptions,
    /// The apply is a rollout over deployments `d1`..`dN` (the model's rollout worlds).
    #[serde(default)]
    pub rollout: Option<ScheduleRollout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRollout {
    pub deployments: u8,
    pub cutover_policy: CutoverPolicy,
    pub on_failure: OnFailure,
    pub max_drivers: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleStep {
    #[serde(default)]
    pub worker: Option<u8>,
    pub action: String,
    #[serde(default)]
    pub apply: Option<u64>,
    /// The operation of a rollout the step acted on (from 1); `state_after` and
    /// `epoch_after` are then the operation's.
    #[serde(default)]
    pub operation: Option<u64>,
    #[serde(default)]
    pub advance_ms: Option<u64>,
    #[serde(default)]
    pub request: Option<ControlOp>,
    #[serde(default)]
    pub state_after: Option<ApplyState>,
    #[serde(default)]
    pub epoch_after: Option<u64>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub format: String,
    #[serde(default)]
    pub mutant: Option<String>,
    #[serde(default)]
    pub params: Option<ScheduleParams>,
    pub workers: u8,
    pub applies: Vec<ScheduleApply>,
    pub steps: Vec<ScheduleStep>,
    #[serde(default)]
    pub violation: Option<String>,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let s: Schedule = serde_json::from_str(text).map_err(|e| format!("bad schedule: {e}"))?;
        if s.format != FORMAT {
            return Err(format!(
                "unknown schedule format {:?} (expected {FORMAT})",
                s.format
            ));
        }
        if s.workers == 0 {
            return Err("a schedule needs at least one worker".into());
        }
        for a in &s.applies {
            if let Some(r) = &a.rollout {
                if r.deployments == 0 || r.deployments > crate::preset::MAX_DEPLOYMENTS {
                    return Err(format!(
                        "apply {}: a rollout of {} deployments (1..={})",
                        a.id,
                        r.deployments,
                        crate::preset::MAX_DEPLOYMENTS
                    ));
                }
            }
        }
        for (i, st) in s.steps.iter().enumerate() {
            if let Some(w) = st.worker {
                if w >= s.workers {
                    return Err(format!("step {i}: worker {w} out of range"));
                }
            }
        }
        Ok(s)
    }

    pub fn mutant(&self) -> Result<Option<Mutant>, String> {
        self.mutant.as_deref().map(str::parse).transpose()
    }

    fn world(&self) -> World {
        let params = self.params.as_ref().map_or(Preset::CI.params, |p| Params {
            stale_after_ms: p.stale_after_ms,
            presumed_loss_ms: p.presumed_loss_ms,
            retry_budget: p.retry_budget,
            retry_freshness_ms: p.retry_freshness_ms,
            ..Preset::CI.params
        });
        let targets = self.applies.iter().map(|a| a.target + 1).max().unwrap_or(1);
        let preset = Preset {
            name: "schedule",
            workers: self.workers,
            applies: self.applies.len() as u8,
            targets,
            fault_ms: 0,
            params,
            ..Preset::CI
        };
        World {
            preset,
            timings: FakeTimings::default(),
            applies: self
                .applies
                .iter()
                .map(|a| ApplyPlan {
                    engine: a.engine,
                    target: a.target,
                    options: a.options,
                    submit_at_ms: 0,
                    bad_ddl: false,
                    rollout: a.rollout.as_ref().map(|r| crate::preset::RolloutShape {
                        deployments: r.deployments,
                        cutover: r.cutover_policy,
                        on_failure: r.on_failure,
                        max_drivers: r.max_drivers,
                        table_steps: false,
                    }),
                })
                .collect(),
            faults: Vec::new(),
            command_faults: Default::default(),
        }
    }
}

/// What a replayed schedule did.
#[derive(Debug, Clone)]
pub struct ScheduleOutcome {
    pub outcome: Outcome,
    /// Steps whose `state_after`/`epoch_after` the real core did not reproduce.
    pub divergences: Vec<String>,
}

/// Replays the steps, then heals. `mutant` overrides the schedule's own.
pub fn replay(s: &Schedule, mutant: Option<Mutant>, print: bool) -> ScheduleOutcome {
    let world = s.world();
    let mut sim =
        Sim::new(world, ChaCha8Rng::seed_from_u64(0), mutant, print).holding_watched_waits();
    let ids: Vec<u64> = s.applies.iter().map(|a| a.id).collect();
    let mut divergences = Vec::new();
    // Schedules from the model submit each apply in a step; hand-written ones may rely on all
    // applies existing from the start.
    if !s.steps.iter().any(|st| st.action == "submit") {
        sim.submit_all_now();
    }
    for (i, st) in s.steps.iter().enumerate() {
        let plan = st.apply.and_then(|id| ids.iter().position(|x| *x == id));
        if let Err(e) = sim.apply_step(st, plan) {
            divergences.push(format!("step {i} ({}): {e}", st.action));
        }
        if let Some(d) = sim.compare(st, plan) {
            divergences.push(format!("step {i} ({}): {d}", st.action));
        }
        if sim.failed() {
            break;
        }
    }
    ScheduleOutcome {
        outcome: sim.heal_after_steps(),
        divergences,
    }
}
