//! Model configurations: the presets and their bounds.

use applyd::machine::claim::ClaimPath;
use applyd::machine::rollout::{CutoverPolicy, OnFailure, RolloutPolicy};
use applyd::machine::{ApplyOptions, EngineKind, Params};

use crate::state::{MAX_APPLIES, MAX_WORKERS};

/// One modelled milliseconds-per-tick scale: the rules see ages in milliseconds.
pub const TICK_MS: u64 = 1000;

/// One apply of the configuration: it is submitted by the model's user when its target is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplySpec {
    pub engine: EngineKind,
    pub target: u8,
    pub options: ApplyOptions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Ci,
    Full,
    /// A small world whose stored changes may drift: every start and resume must refuse them.
    Pin,
    /// One driver, and more applies than drivers, one of them waiting for a person who never
    /// comes: the others must still run (waiting costs no driver).
    Waits,
    /// A rolling Spirit rollout of two deployments that continues past a failure.
    Rolling,
    /// A PlanetScale rollout of two deployments behind a cutover barrier, halting on a
    /// failure.
    Barrier,
    /// A PlanetScale rollout of two deployments copying in parallel under a cap of one
    /// driver, holding on a failure until a person releases it.
    Pause,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Ci => "ci",
            Preset::Full => "full",
            Preset::Pin => "pin",
            Preset::Waits => "waits",
            Preset::Rolling => "rolling",
            Preset::Barrier => "barrier",
            Preset::Pause => "pause",
        }
    }

    /// The worlds a preset checks, in order: `ci` is the single-operation world and then the
    /// rollout worlds, so that one run proves both.
    pub fn worlds(self) -> Vec<Preset> {
        match self {
            Preset::Ci => vec![Preset::Ci, Preset::Rolling, Preset::Barrier, Preset::Pause],
            p => vec![p],
        }
    }
}

/// Everything that sizes the explored state space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub preset: &'static str,
    pub workers: usize,
    pub applies: Vec<ApplySpec>,
    /// Crashes and pauses together (a pause is a worker freezing right after a read).
    pub faults: u8,
    /// Injected engine faults: lost replies, transient and permanent failures, runner failures.
    pub engine_faults: u8,
    /// User control requests (stop, start, cancel, cutover, revert, skip-revert).
    pub requests: u8,
    /// Ticks after which a heartbeat is stale.
    pub stale_ticks: u8,
    /// Ticks of failed heartbeats after which a driver presumes its lease lost.
    pub presumed_ticks: u8,
    pub retry_budget: u32,
    /// The claims the workers make: the operation path production uses, or the apply arms only.
    pub claim_path: ClaimPath,
    /// Alterations of a stored change behind the operator's back (the pin preset's fault).
    pub drifts: u8,
    /// The applies are the operations of one rollout with this policy (deployment `i` is
    /// `applies[i]`, each its own target), instead of applies of one operation each.
    pub rollout: Option<RolloutPolicy>,
}

impl Config {
    pub fn preset(p: Preset) -> Config {
        let ps = ApplySpec {
            engine: EngineKind::PlanetScale,
            target: 0,
            options: ApplyOptions::default(),
        };
        let sp = ApplySpec {
            engine: EngineKind::Spirit,
            target: 0,
            options: ApplyOptions::default(),
        };
        match p {
            Preset::Ci => Config {
                preset: "ci",
                workers: 3,
                applies: vec![sp, ps],
                faults: 2,
                engine_faults: 1,
                requests: 1,
                stale_ticks: 2,
                presumed_ticks: 1,
                retry_budget: 1,
                claim_path: ClaimPath::Operation,
                drifts: 0,
                rollout: None,
            },
            Preset::Full => Config {
                preset: "full",
                workers: 4,
                applies: vec![sp, ps],
                faults: 4,
                engine_faults: 1,
                requests: 1,
                stale_ticks: 2,
                presumed_ticks: 1,
                retry_budget: 1,
                claim_path: ClaimPath::Operation,
                drifts: 0,
                rollout: None,
            },
            Preset::Pin => Config {
                preset: "pin",
                workers: 2,
                applies: vec![sp, ps],
                faults: 1,
                engine_faults: 0,
                requests: 1,
                stale_ticks: 2,
                presumed_ticks: 1,
                retry_budget: 1,
                claim_path: ClaimPath::Operation,
                drifts: 1,
                rollout: None,
            },
            // A PlanetScale apply whose cutover waits for a person, and a Spirit apply on
            // another target; one worker, no requests at all (the person never comes), one
            // crash or pause. No wedge means the Spirit apply always completes.
            Preset::Waits => Config {
                preset: "waits",
                workers: 1,
                applies: vec![
                    ApplySpec {
                        options: ApplyOptions {
                            defer_cutover: true,
                            skip_revert: true,
                            ..ApplyOptions::default()
                        },
                        ..ps
                    },
                    ApplySpec { target: 1, ..sp },
                ],
                faults: 1,
                engine_faults: 0,
                requests: 0,
                stale_ticks: 2,
                presumed_ticks: 1,
                retry_budget: 1,
                claim_path: ClaimPath::Operation,
                drifts: 0,
                rollout: None,
            },
            Preset::Rolling => {
                Config::rollout("rolling", sp, CutoverPolicy::Rolling, OnFailure::Continue)
            }
            Preset::Barrier => {
                Config::rollout("barrier", ps, CutoverPolicy::Barrier, OnFailure::Halt)
            }
            Preset::Pause => {
                Config::rollout("pause", ps, CutoverPolicy::Parallel, OnFailure::Pause)
            }
        }
    }

    /// A rollout world: two deployments of one engine, two workers (one crashes or pauses,
    /// the other reclaims), an engine fault, and one request of the whole rollout.
    fn rollout(
        preset: &'static str,
        spec: ApplySpec,
        cutover: CutoverPolicy,
        on_failure: OnFailure,
    ) -> Config {
        Config {
            preset,
            workers: 2,
            applies: vec![spec, ApplySpec { target: 1, ..spec }],
            faults: 1,
            engine_faults: 1,
            requests: 1,
            stale_ticks: 2,
            presumed_ticks: 1,
            retry_budget: 1,
            claim_path: ClaimPath::Operation,
            drifts: 0,
            rollout: Some(RolloutPolicy {
                cutover,
                on_failure,
                max_drivers: 1,
                released: false,
                held: false,
            }),
        }
    }

    /// Resize to `applies` applies on one target, alternating Spirit and PlanetScale.
    pub fn with_applies(mut self, n: usize) -> Config {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(match self.rollout {
                // A rollout's operations share its engine, each on its own deployment.
                Some(_) => ApplySpec {
                    target: i as u8,
                    ..self.applies[0]
                },
                None => self.applies[i % 2],
            });
        }
        self.applies = out;
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(format!("--workers must be 1..={MAX_WORKERS}"));
        }
        if self.applies.is_empty() || self.applies.len() > MAX_APPLIES {
            return Err(format!("--applies must be 1..={MAX_APPLIES}"));
        }
        if self.rollout.is_some() && self.drifts > 0 {
            return Err("the rollout worlds do not alter stored changes".into());
        }
        if self.presumed_ticks == 0 || self.presumed_ticks >= self.stale_ticks {
            return Err("presumed-loss ticks must be in 1..stale ticks".into());
        }
        self.params().validate()
    }

    pub fn params(&self) -> Params {
        Params {
            stale_after_ms: self.stale_ticks as u64 * TICK_MS,
            presumed_loss_ms: self.presumed_ticks as u64 * TICK_MS,
            retry_budget: self.retry_budget,
            // Retry freshness is not modelled: the clock only measures heartbeats.
            retry_freshness_ms: 365 * 24 * 3600 * 1000,
            ..Params::DEFAULT
        }
    }
}
