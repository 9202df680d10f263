//! Presets (the size of a world and how long it runs), the per-seed world drawn from the seed
//! (swarm testing: every seed also draws which faults are on and how often), and the faults.

use applyd::engine::fake::FakeTimings;
use applyd::machine::claim::ClaimPath;
use applyd::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use applyd::machine::{ApplyOptions, ControlOp, EngineKind, Params};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The size and pace of a simulated world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub workers: u8,
    pub applies: u8,
    pub targets: u8,
    /// Simulated time with faults on.
    pub fault_ms: u64,
    /// The heal phase's bound: every apply must be terminal within it.
    pub heal_ms: u64,
    pub params: Params,
    pub heartbeat_ms: u64,
    /// Expected faults per simulated hour are scaled by this (percent).
    pub fault_scale_pct: u64,
    /// The claims the workers make (production's default is the operation path).
    pub claim_path: ClaimPath,
    /// How often an apply waits for a person.
    pub waits: WaitOdds,
    /// Percent of applies that are rollouts (2–4 deployments, mixed policies, some table by
    /// table).
    pub rollout_pct: u32,
}

/// The odds, per thousand applies, of each option that makes an apply wait for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOdds {
    /// PlanetScale only.
    pub defer_deploy_permille: u32,
    pub defer_cutover_permille: u32,
    /// The rest hold a PlanetScale revert window.
    pub skip_revert_permille: u32,
}

impl WaitOdds {
    pub const SOME: WaitOdds = WaitOdds {
        defer_deploy_permille: 200,
        defer_cutover_permille: 250,
        skip_revert_permille: 500,
    };
    /// Most applies wait for a person: deferred deploys and cutovers, revert windows.
    pub const MOST: WaitOdds = WaitOdds {
        defer_deploy_permille: 400,
        defer_cutover_permille: 700,
        skip_revert_permille: 200,
    };
}

fn odds(rng: &mut ChaCha8Rng, permille: u32) -> bool {
    rng.random_bool(f64::from(permille) / 1000.0)
}

const MINUTE: u64 = 60_000;

/// Lease timing shared by the presets: short enough that an hour sees many reclaims.
pub const SIM_PARAMS: Params = Params {
    stale_after_ms: 30_000,
    presumed_loss_ms: 20_000,
    retry_budget: 3,
    retry_freshness_ms: 30 * MINUTE,
    revert_window_ms: 10 * MINUTE,
    park_poll_ms: 2 * MINUTE,
};

impl Preset {
    pub const CI: Preset = Preset {
        name: "ci",
        workers: 3,
        applies: 5,
        targets: 3,
        fault_ms: 60 * MINUTE,
        heal_ms: 2 * 60 * MINUTE,
        params: SIM_PARAMS,
        heartbeat_ms: 5_000,
        fault_scale_pct: 100,
        claim_path: ClaimPath::Operation,
        waits: WaitOdds::SOME,
        rollout_pct: 30,
    };

    /// More applies waiting for a person than drivers: two single-driver workers, eight
    /// applies on six targets, most of them deferred. Waits must give their drivers back, or
    /// the rest starve (the `no_starvation` check).
    pub const WAITS: Preset = Preset {
        name: "waits",
        workers: 2,
        applies: 8,
        targets: 6,
        fault_ms: 60 * MINUTE,
        heal_ms: 2 * 60 * MINUTE,
        params: SIM_PARAMS,
        heartbeat_ms: 5_000,
        fault_scale_pct: 100,
        claim_path: ClaimPath::Operation,
        waits: WaitOdds::MOST,
        rollout_pct: 25,
    };

    pub const SOAK: Preset = Preset {
        name: "soak",
        workers: 6,
        applies: 16,
        targets: 5,
        fault_ms: 6 * 60 * MINUTE,
        heal_ms: 4 * 60 * MINUTE,
        params: SIM_PARAMS,
        heartbeat_ms: 5_000,
        fault_scale_pct: 200,
        claim_path: ClaimPath::Operation,
        waits: WaitOdds::SOME,
        rollout_pct: 30,
    };

    pub const fn with_claim_path(self, claim_path: ClaimPath) -> Preset {
        Preset { claim_path, ..self }
    }

    pub fn by_name(name: &str) -> Result<Preset, String> {
        match name {
            "ci" => Ok(Preset::CI),
            "waits" => Ok(Preset::WAITS),
            "soak" => Ok(Preset::SOAK),
            other => Err(format!(
                "unknown preset {other:?} (expected ci, waits or soak)"
            )),
        }
    }
}

/// One injected fault. Fully specified, so a schedule of them replays without the RNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The worker process dies (its Spirit runners die with it) and restarts later.
    Crash {
        worker: u8,
        down_ms: u64,
    },
    /// The worker freezes (GC pause, stopped VM), then resumes where it was.
    Pause {
        worker: u8,
        for_ms: u64,
    },
    /// The worker's heartbeats fail for a while; its other calls still work.
    HeartbeatStall {
        worker: u8,
        for_ms: u64,
    },
    /// The worker's next engine call is applied but its reply is lost.
    LoseReply {
        worker: u8,
    },
    /// The worker's next engine call or probe fails with a 5xx or a timeout.
    EngineError {
        worker: u8,
    },
    StoreOutage {
        for_ms: u64,
    },
    /// The apply's deploy request goes to an error state (index into the world's applies).
    DeployRequestError {
        apply: u8,
    },
    DeployRequestDeleted {
        apply: u8,
    },
    RunnerFails {
        apply: u8,
        retryable: bool,
    },
    /// The apply's stored DDL is altered behind the operator's back (its reviewed fingerprint
    /// stays): no engine may be handed the altered change.
    ChangeDrifts {
        apply: u8,
    },
    /// The apply's submission is sent again (a retried CI job): while it is live it must be
    /// adopted, while another apply holds its target it must be refused naming that apply.
    Resubmit {
        apply: u8,
    },
    /// A user's control request through the API.
    Request {
        apply: u8,
        op: ControlOp,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimedFault {
    pub at_ms: u64,
    pub fault: Fault,
}

/// One apply of a world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyPlan {
    pub engine: EngineKind,
    pub target: u8,
    pub options: ApplyOptions,
    pub submit_at_ms: u64,
    /// A Spirit apply whose DDL the engine refuses.
    pub bad_ddl: bool,
    /// The apply is a rollout of this shape.
    pub rollout: Option<RolloutShape>,
}

/// A rollout's shape: its deployments `d1`..`dN`, its policies, and whether it runs table by
/// table (its change then touches two tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutShape {
    pub deployments: u8,
    pub cutover: CutoverPolicy,
    pub on_failure: OnFailure,
    pub max_drivers: u8,
    pub table_steps: bool,
}

impl RolloutShape {
    pub fn plan(&self) -> RolloutPlan {
        RolloutPlan {
            deployments: (1..=self.deployments).map(|k| format!("d{k}")).collect(),
            cutover_policy: self.cutover,
            on_failure: self.on_failure,
            max_drivers_per_apply: u32::from(self.max_drivers),
            table_steps: self.table_steps,
        }
    }
}

/// The most deployments a simulated rollout has.
pub const MAX_DEPLOYMENTS: u8 = 4;

/// Per-command engine fault rates, in tenths of a percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandFaults {
    /// An engine call is applied but its reply is lost.
    pub reply_lost_permille: u32,
    /// An engine call or probe fails with a 5xx or a timeout.
    pub unreachable_permille: u32,
}

/// Everything a seed decides before the run starts.
#[derive(Debug, Clone)]
pub struct World {
    pub preset: Preset,
    pub timings: FakeTimings,
    pub applies: Vec<ApplyPlan>,
    pub faults: Vec<TimedFault>,
    pub command_faults: CommandFaults,
}

const REQUEST_OPS: &[(ControlOp, u32)] = &[
    (ControlOp::Stop, 3),
    (ControlOp::Start, 3),
    (ControlOp::Cancel, 1),
    (ControlOp::Cutover, 2),
    (ControlOp::Revert, 1),
    (ControlOp::SkipRevert, 2),
];

fn weighted_op(rng: &mut ChaCha8Rng) -> ControlOp {
    let total: u32 = REQUEST_OPS.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (op, w) in REQUEST_OPS {
        if x < *w {
            return *op;
        }
        x -= w;
    }
    unreachable!("weights cover the range")
}

/// The engines' pace for one seed.
pub fn draw_timings(rng: &mut ChaCha8Rng) -> FakeTimings {
    FakeTimings {
        branch_ready_ms: rng.random_range(1_000..10_000),
        validate_ms: rng.random_range(2_000..20_000),
        deploy_ms: rng.random_range(20_000..10 * MINUTE),
        cutover_ms: rng.random_range(2_000..30_000),
        revert_ms: rng.random_range(10_000..60_000),
        server_revert_window_ms: 60 * MINUTE,
        spirit_rows: rng.random_range(100_000..2_000_000),
        spirit_rows_per_s: 2_000,
        spirit_checkpoint_every_ms: 5_000,
    }
}

pub fn draw_applies(rng: &mut ChaCha8Rng, preset: &Preset) -> Vec<ApplyPlan> {
    let submit_window = preset.fault_ms * 2 / 3;
    (0..preset.applies)
        .map(|_| {
            let engine = if rng.random_bool(0.5) {
                EngineKind::PlanetScale
            } else {
                EngineKind::Spirit
            };
            ApplyPlan {
                engine,
                target: rng.random_range(0..preset.targets),
                options: ApplyOptions {
                    defer_deploy: engine == EngineKind::PlanetScale
                        && odds(rng, preset.waits.defer_deploy_permille),
                    defer_cutover: odds(rng, preset.waits.defer_cutover_permille),
                    skip_revert: odds(rng, preset.waits.skip_revert_permille),
                },
                submit_at_ms: if rng.random_bool(0.3) {
                    0
                } else {
                    rng.random_range(0..submit_window)
                },
                bad_ddl: engine == EngineKind::Spirit && rng.random_bool(0.05),
                rollout: None,
            }
        })
        .collect()
}

/// Which applies are rollouts, and their shapes, drawn from a stream of their own so that
/// adding them left every other draw of a seed as it was.
fn draw_rollouts(rng: &ChaCha8Rng, preset: &Preset, applies: &mut [ApplyPlan]) {
    let mut side = rng.clone();
    side.set_stream(ROLLOUTS_STREAM);
    for a in applies.iter_mut() {
        if side.random_range(0..100) >= preset.rollout_pct {
            continue;
        }
        // A Spirit runner cuts over by itself unless a sentinel holds it, so a Spirit rollout
        // takes its turns by rolling; PlanetScale cutovers are the owner's call.
        let cutover = match a.engine {
            EngineKind::Spirit => CutoverPolicy::Rolling,
            EngineKind::PlanetScale => CutoverPolicy::ALL[side.random_range(0..3)],
        };
        a.rollout = Some(RolloutShape {
            deployments: side.random_range(2..=MAX_DEPLOYMENTS),
            cutover,
            on_failure: OnFailure::ALL[side.random_range(0..3)],
            max_drivers: side.random_range(1..=3),
            table_steps: side.random_bool(0.3),
        });
    }
}

const ROLLOUTS_STREAM: u64 = 2;

/// Swarm testing: each fault kind is off for some seeds, and its rate varies between seeds.
fn count(rng: &mut ChaCha8Rng, preset: &Preset, max_per_hour: u64) -> u64 {
    if rng.random_bool(0.25) {
        return 0;
    }
    let hours_milli = preset.fault_ms * 1000 / (60 * MINUTE);
    let mean = rng.random_range(0..=max_per_hour) * hours_milli * preset.fault_scale_pct / 100_000;
    rng.random_range(0..=2 * mean)
}

pub fn draw_faults(rng: &mut ChaCha8Rng, preset: &Preset) -> Vec<TimedFault> {
    let p = preset.params;
    let mut out = Vec::new();
    let w = preset.workers;
    let a = preset.applies;
    let kinds: [(u64, u8); 10] = [
        (6, 0),  // crash
        (3, 1),  // pause
        (3, 2),  // heartbeat stall
        (15, 3), // lost reply
        (20, 4), // 5xx / timeout
        (2, 5),  // store outage
        (1, 6),  // deploy request error
        (1, 7),  // deploy request deleted
        (4, 8),  // runner fails
        (20, 9), // user request
    ];
    for (max, kind) in kinds {
        for _ in 0..count(rng, preset, max) {
            let at_ms = rng.random_range(0..preset.fault_ms);
            let fault = match kind {
                0 => Fault::Crash {
                    worker: rng.random_range(0..w),
                    down_ms: rng.random_range(1_000..5 * MINUTE),
                },
                1 => Fault::Pause {
                    worker: rng.random_range(0..w),
                    for_ms: rng.random_range(p.stale_after_ms / 2..4 * p.stale_after_ms),
                },
                2 => Fault::HeartbeatStall {
                    worker: rng.random_range(0..w),
                    for_ms: rng.random_range(p.presumed_loss_ms / 2..2 * p.stale_after_ms),
                },
                3 => Fault::LoseReply {
                    worker: rng.random_range(0..w),
                },
                4 => Fault::EngineError {
                    worker: rng.random_range(0..w),
                },
                5 => Fault::StoreOutage {
                    for_ms: rng.random_range(5_000..90_000),
                },
                6 => Fault::DeployRequestError {
                    apply: rng.random_range(0..a),
                },
                7 => Fault::DeployRequestDeleted {
                    apply: rng.random_range(0..a),
                },
                8 => Fault::RunnerFails {
                    apply: rng.random_range(0..a),
                    retryable: rng.random_bool(0.7),
                },
                _ => Fault::Request {
                    apply: rng.random_range(0..a),
                    op: weighted_op(rng),
                },
            };
            out.push(TimedFault { at_ms, fault });
            // Users change their minds: a second request on the same apply moments later (stop
            // then start, cancel after stop, ...) exercises the races between requests.
            // A user stops an apply whose runner misbehaves.
            let follow_up = match fault {
                Fault::Request { apply, .. } if rng.random_bool(0.4) => {
                    Some((apply, weighted_op(rng)))
                }
                Fault::RunnerFails { apply, .. } if rng.random_bool(0.5) => {
                    Some((apply, ControlOp::Stop))
                }
                _ => None,
            };
            if let Some((apply, op)) = follow_up {
                out.push(TimedFault {
                    at_ms: at_ms + rng.random_range(0..5_000),
                    fault: Fault::Request { apply, op },
                });
            }
        }
    }
    // Stable sort: equal times keep their drawing order, so the schedule is a function of the seed.
    out.sort_by_key(|f| f.at_ms);
    out
}

/// Stored changes altered behind the operator's back and repeated submissions, drawn from a
/// stream of their own so that adding them left every other draw of a seed as it was.
fn draw_submission_faults(rng: &ChaCha8Rng, preset: &Preset) -> Vec<TimedFault> {
    let mut side = rng.clone();
    side.set_stream(SUBMISSION_FAULTS_STREAM);
    let mut out = Vec::new();
    for (max, resubmit) in [(1, false), (6, true)] {
        for _ in 0..count(&mut side, preset, max) {
            let at_ms = side.random_range(0..preset.fault_ms);
            let apply = side.random_range(0..preset.applies);
            let fault = if resubmit {
                Fault::Resubmit { apply }
            } else {
                Fault::ChangeDrifts { apply }
            };
            out.push(TimedFault { at_ms, fault });
        }
    }
    out
}

const SUBMISSION_FAULTS_STREAM: u64 = 1;

impl World {
    /// The whole world of one seed, drawn from the run's one RNG (which the run then continues
    /// to use for latencies and jitter).
    pub fn draw(rng: &mut ChaCha8Rng, preset: Preset) -> World {
        let timings = draw_timings(rng);
        let mut applies = draw_applies(rng, &preset);
        draw_rollouts(rng, &preset, &mut applies);
        let faults = draw_faults(rng, &preset);
        let mut rate = |max: u32| {
            if rng.random_bool(0.25) {
                0
            } else {
                rng.random_range(0..=max)
            }
        };
        let command_faults = CommandFaults {
            reply_lost_permille: rate(50),
            unreachable_permille: rate(50),
        };
        let mut faults = faults;
        faults.extend(draw_submission_faults(rng, &preset));
        faults.sort_by_key(|f| f.at_ms);
        World {
            preset,
            timings,
            applies,
            faults,
            command_faults,
        }
    }
}
