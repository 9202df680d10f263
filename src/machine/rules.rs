//! Tunable parameters of the rules, and the historical-bug switches used by the model checker
//! and the simulator to prove that they would catch each bug again.

use std::fmt;
use std::str::FromStr;

/// Time-based parameters. Durations are in milliseconds of the database clock (production) or of
/// the virtual clock (model, simulator); the rules never read a clock themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    /// A lease whose heartbeat is older than this may be reclaimed.
    pub stale_after_ms: u64,
    /// A driver whose heartbeats have failed for this long presumes its lease lost and stops
    /// issuing engine calls and writes. Must be shorter than `stale_after_ms`.
    pub presumed_loss_ms: u64,
    /// `failed_retryable` applies are retried while `attempt < retry_budget`.
    pub retry_budget: u32,
    /// ... and while they were last updated within this window.
    pub retry_freshness_ms: u64,
    /// How long a deployed PlanetScale change stays revertible before the owner skips the
    /// revert on its own (measured from entering `revert_window`).
    pub revert_window_ms: u64,
    /// How long a parked wait (a PlanetScale apply waiting for a person, or in its revert
    /// window) rests before a driver looks at the engine again. A request wakes it at once, and
    /// the revert deadline caps it.
    pub park_poll_ms: u64,
}

/// The longest a parked wait rests between looks at its engine (one day).
pub const MAX_PARK_POLL_MS: u64 = 24 * 60 * 60 * 1000;

impl Params {
    pub const DEFAULT: Params = Params {
        stale_after_ms: 60_000,
        presumed_loss_ms: 45_000,
        retry_budget: 10,
        retry_freshness_ms: 24 * 60 * 60 * 1000,
        revert_window_ms: 30 * 60 * 1000,
        park_poll_ms: 5 * 60 * 1000,
    };

    /// The bound that makes the presumed-loss rule sound: a driver gives up before a peer may
    /// reclaim.
    pub fn validate(&self) -> Result<(), String> {
        if self.presumed_loss_ms >= self.stale_after_ms {
            return Err(format!(
                "presumed_loss_ms ({}) must be smaller than stale_after_ms ({}) so a driver stops before a peer can reclaim",
                self.presumed_loss_ms, self.stale_after_ms
            ));
        }
        if self.retry_budget == 0 {
            return Err("retry_budget must be at least 1".into());
        }
        if self.park_poll_ms == 0 || self.park_poll_ms > MAX_PARK_POLL_MS {
            return Err(format!(
                "park_poll_ms ({}) must be between 1 and {MAX_PARK_POLL_MS} (one day): a parked wait rests, and is looked at again at least daily",
                self.park_poll_ms
            ));
        }
        Ok(())
    }
}

impl Default for Params {
    fn default() -> Self {
        Params::DEFAULT
    }
}

/// A historical upstream bug, re-introduced as a switch on the shared rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// #302: PlanetScale setup-phase states missing from the stale-reclaimable class.
    SetupPhaseUnclaimable,
    /// #770: revert-phase states missing from the stale-reclaimable class.
    RevertPhaseUnclaimable,
    /// #265: resume ignores the persisted engine resume state and starts fresh.
    ResumeWithoutEngineState,
    /// #306 window: deploy-request creation without the look-up by branch.
    DeployRequestCreateNotIdempotent,
    /// #270: claiming `stopped`+start does not re-check the one-active-apply rule.
    StartSkipsTargetCheck,
    /// #230: writes are not fenced by the lease epoch.
    UnfencedWrite,
    /// #753: a driver keeps acting although its heartbeats have failed past the bound.
    NoPresumedLeaseLoss,
    /// #269: stop accepted in the revert window (a deployed change recorded as stopped).
    StopInRevertWindow,
    /// #424: processing a stop also consumes a pending start.
    StopStartRaceDropsStart,
    /// #262: stop ignores that the engine's work already ended and records `completed`.
    StopIgnoresTerminalTasks,
    /// #186: the state is written after the engine call instead of before it.
    StateNotSetBeforeEngineCall,
    /// #613: a resume hands the engine a change that drifted from the reviewed one.
    RunsDriftedChange,
    /// Upstream's design: a drive holds its driver through a wait for a person, so waiting
    /// applies starve new work of drivers.
    WaitsHoldDrivers,
    /// Rollouts, bug 1: a continuable failure terminalizes the rollout while others still run.
    ContinueTerminalizesEarly,
    /// Rollouts, bug 2: a stopped operation counts as terminal, so the rollout records `failed`
    /// while that operation still holds its target.
    SettledCountedAsTerminal,
    /// Rollouts: under `halt` a failure does not stop new operations from starting.
    HaltDoesNotBlockStarts,
    /// Rollouts: under `barrier` the operations cut over in any order.
    BarrierCutoverOutOfOrder,
    /// Rollouts, bug 4 (#750): a never-started operation behind a failure is not settled, so
    /// the rollout never reaches its verdict.
    OrphanedStepHoldsRollout,
    /// Rollouts: `max_drivers_per_apply` also caps stale reclaim, wedging a rollout whose
    /// drivers died.
    CapBlocksRecovery,
    /// Rollouts: a later request re-arms the `pause` hold a person released.
    ReleaseLatchNotOneWay,
}

impl Mutant {
    pub const ALL: &'static [Mutant] = &[
        Mutant::SetupPhaseUnclaimable,
        Mutant::RevertPhaseUnclaimable,
        Mutant::ResumeWithoutEngineState,
        Mutant::DeployRequestCreateNotIdempotent,
        Mutant::StartSkipsTargetCheck,
        Mutant::UnfencedWrite,
        Mutant::NoPresumedLeaseLoss,
        Mutant::StopInRevertWindow,
        Mutant::StopStartRaceDropsStart,
        Mutant::StopIgnoresTerminalTasks,
        Mutant::StateNotSetBeforeEngineCall,
        Mutant::RunsDriftedChange,
        Mutant::WaitsHoldDrivers,
        Mutant::ContinueTerminalizesEarly,
        Mutant::SettledCountedAsTerminal,
        Mutant::HaltDoesNotBlockStarts,
        Mutant::BarrierCutoverOutOfOrder,
        Mutant::OrphanedStepHoldsRollout,
        Mutant::CapBlocksRecovery,
        Mutant::ReleaseLatchNotOneWay,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Mutant::SetupPhaseUnclaimable => "setup-phase-unclaimable",
            Mutant::RevertPhaseUnclaimable => "revert-phase-unclaimable",
            Mutant::ResumeWithoutEngineState => "resume-without-engine-state",
            Mutant::DeployRequestCreateNotIdempotent => "deploy-request-create-not-idempotent",
            Mutant::StartSkipsTargetCheck => "start-skips-target-check",
            Mutant::UnfencedWrite => "unfenced-write",
            Mutant::NoPresumedLeaseLoss => "no-presumed-lease-loss",
            Mutant::StopInRevertWindow => "stop-in-revert-window",
            Mutant::StopStartRaceDropsStart => "stop-start-race-drops-start",
            Mutant::StopIgnoresTerminalTasks => "stop-ignores-terminal-tasks",
            Mutant::StateNotSetBeforeEngineCall => "state-not-set-before-engine-call",
            Mutant::RunsDriftedChange => "runs-drifted-change",
            Mutant::WaitsHoldDrivers => "waits-hold-drivers",
            Mutant::ContinueTerminalizesEarly => "continue-terminalizes-early",
            Mutant::SettledCountedAsTerminal => "settled-counted-as-terminal",
            Mutant::HaltDoesNotBlockStarts => "halt-does-not-block-starts",
            Mutant::BarrierCutoverOutOfOrder => "barrier-cutover-out-of-order",
            Mutant::OrphanedStepHoldsRollout => "orphaned-step-holds-rollout",
            Mutant::CapBlocksRecovery => "cap-blocks-recovery",
            Mutant::ReleaseLatchNotOneWay => "release-latch-not-one-way",
        }
    }

    /// The upstream pull request that fixed the bug.
    pub const fn upstream_fix(self) -> &'static str {
        match self {
            Mutant::SetupPhaseUnclaimable => "#302",
            Mutant::RevertPhaseUnclaimable => "#770",
            Mutant::ResumeWithoutEngineState => "#265",
            Mutant::DeployRequestCreateNotIdempotent => "#306",
            Mutant::StartSkipsTargetCheck => "#270",
            Mutant::UnfencedWrite => "#230",
            Mutant::NoPresumedLeaseLoss => "#753",
            Mutant::StopInRevertWindow => "#269",
            Mutant::StopStartRaceDropsStart => "#424",
            Mutant::StopIgnoresTerminalTasks => "#262",
            Mutant::StateNotSetBeforeEngineCall => "#186",
            Mutant::RunsDriftedChange => "#613",
            Mutant::WaitsHoldDrivers => "design",
            Mutant::ContinueTerminalizesEarly => "derivation: continue verdict early",
            Mutant::SettledCountedAsTerminal => "derivation: settled read terminal",
            Mutant::HaltDoesNotBlockStarts => "halt let new starts through",
            Mutant::BarrierCutoverOutOfOrder => "barrier cutovers out of order",
            Mutant::OrphanedStepHoldsRollout => "#750 orphans held the rollout",
            Mutant::CapBlocksRecovery => "max_drivers capped stale reclaim",
            Mutant::ReleaseLatchNotOneWay => "release latch re-armed",
        }
    }

    /// What catches the bug: the model checker's world and preset, and whether the
    /// simulator's ci seeds find it too (`false`: the model alone, with the reason in
    /// `sim/tests/mutants.rs`).
    pub const fn caught_by(self) -> (&'static str, bool) {
        match self {
            Mutant::RunsDriftedChange => ("pin", true),
            Mutant::WaitsHoldDrivers => ("waits", true),
            Mutant::StopInRevertWindow => ("ci", false),
            Mutant::ContinueTerminalizesEarly => ("rolling", true),
            Mutant::SettledCountedAsTerminal => ("rolling", true),
            Mutant::HaltDoesNotBlockStarts => ("barrier", true),
            Mutant::BarrierCutoverOutOfOrder => ("barrier", true),
            Mutant::OrphanedStepHoldsRollout => ("barrier", true),
            Mutant::CapBlocksRecovery => ("pause", true),
            // The simulator's users never release during the fault phase; its heal phase's
            // person releases a paused rollout and asks nothing of it afterwards.
            Mutant::ReleaseLatchNotOneWay => ("pause", false),
            _ => ("ci", true),
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mutant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mutant::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown mutant {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// The rules in force: parameters plus, in model and simulator builds only, one bug switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rules {
    pub params: Params,
    #[cfg(feature = "mutants")]
    pub mutant: Option<Mutant>,
}

impl Rules {
    pub const fn new(params: Params) -> Rules {
        Rules {
            params,
            #[cfg(feature = "mutants")]
            mutant: None,
        }
    }

    #[cfg(feature = "mutants")]
    pub const fn with_mutant(params: Params, mutant: Option<Mutant>) -> Rules {
        Rules { params, mutant }
    }

    /// Presumed lease loss: a driver whose heartbeats have failed for `presumed_loss_ms` stops
    /// issuing engine calls and writes, before a peer may reclaim (`presumed_loss_ms <
    /// stale_after_ms`).
    pub fn presumed_lost(&self, heartbeat_ok_age_ms: u64) -> bool {
        !self.has(Mutant::NoPresumedLeaseLoss)
            && heartbeat_ok_age_ms >= self.params.presumed_loss_ms
    }

    /// Whether the given historical bug is switched on. Always false in production builds.
    #[inline]
    pub fn has(&self, _mutant: Mutant) -> bool {
        #[cfg(feature = "mutants")]
        {
            self.mutant == Some(_mutant)
        }
        #[cfg(not(feature = "mutants"))]
        {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutant_names_round_trip() {
        for m in Mutant::ALL {
            assert_eq!(m.name().parse::<Mutant>().unwrap(), *m);
        }
        assert!("nope"
            .parse::<Mutant>()
            .unwrap_err()
            .contains("setup-phase-unclaimable"));
    }

    #[test]
    fn default_params_keep_the_presumed_loss_bound_below_stale_after() {
        Params::DEFAULT.validate().unwrap();
        let bad = Params {
            presumed_loss_ms: 60_000,
            ..Params::DEFAULT
        };
        assert!(bad.validate().is_err());
    }
}
