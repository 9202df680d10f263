//! Waits: the states an apply rests in until a person acts, the request a person moves each on
//! with, the action the owner takes by itself when no person is asked, and which waits give
//! their driver back (parking). The worker core, the stores, the simulator's people and the
//! settle checks all read these; none restates them.

use super::states::ApplyState::{self, *};
use super::states::{ControlOp, EngineKind};
use super::table::{ApplyOptions, AutoAction};

/// A gate of the PlanetScale flow: the option that makes it wait for a person, the request that
/// opens it, and what the owner does there by itself when the option is off.
struct Gate {
    state: ApplyState,
    waits_for_person: fn(&ApplyOptions) -> bool,
    opened_by: ControlOp,
    auto: AutoAction,
}

const GATES: &[Gate] = &[
    Gate {
        state: WaitingForDeploy,
        waits_for_person: |o| o.defer_deploy,
        opened_by: ControlOp::Start,
        auto: AutoAction::Deploy,
    },
    Gate {
        state: WaitingForCutover,
        waits_for_person: |o| o.defer_cutover,
        opened_by: ControlOp::Cutover,
        auto: AutoAction::Cutover,
    },
    Gate {
        state: RevertWindow,
        waits_for_person: |o| !o.skip_revert,
        opened_by: ControlOp::SkipRevert,
        auto: AutoAction::SkipRevert,
    },
];

/// Holds only a person lifts, with the request that moves each on.
const HOLDS: &[(ApplyState, ControlOp)] =
    &[(Paused, ControlOp::Cancel), (Stopped, ControlOp::Start)];

fn gate(state: ApplyState) -> Option<&'static Gate> {
    GATES.iter().find(|g| g.state == state)
}

/// The request a person makes to move an apply on from a wait that only a person (or a known
/// deadline) ends; `None` when the apply is not waiting for a person.
pub fn human_release(state: ApplyState, options: &ApplyOptions) -> Option<ControlOp> {
    if let Some((_, op)) = HOLDS.iter().find(|(s, _)| *s == state) {
        return Some(*op);
    }
    gate(state)
        .filter(|g| (g.waits_for_person)(options))
        .map(|g| g.opened_by)
}

/// Whether the apply rests, legitimately, until a person acts (or a known deadline passes).
pub fn is_human_wait(state: ApplyState, options: &ApplyOptions) -> bool {
    human_release(state, options).is_some()
}

/// Whether an owner that has seen its apply resting in `state` gives its driver back: it
/// releases the lease and the row is parked until a request arrives or its wake time comes
/// ([`crate::machine::Rules::park_wake_ms`]), when a claim arm takes it back.
///
/// Only waits where nothing local must stay alive park: every PlanetScale wait for a person
/// (the deploy request lives in PlanetScale) and its revert window. A Spirit runner waiting on
/// its sentinel is a local process that must always have a live lease holder, so a Spirit wait
/// never parks.
pub fn parks(engine: EngineKind, state: ApplyState, options: &ApplyOptions) -> bool {
    engine == EngineKind::PlanetScale && gate(state).is_some_and(|g| (g.waits_for_person)(options))
}

/// The action a PlanetScale owner takes by itself at a gate no person was asked to open, or at
/// the revert window once its deadline has passed.
pub fn auto_action(
    engine: EngineKind,
    state: ApplyState,
    options: &ApplyOptions,
    revert_window_expired: bool,
) -> Option<AutoAction> {
    if engine != EngineKind::PlanetScale {
        return None;
    }
    let g = gate(state)?;
    let deadline_passed = state == RevertWindow && revert_window_expired;
    (!(g.waits_for_person)(options) || deadline_passed).then_some(g.auto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_options() -> Vec<ApplyOptions> {
        let mut all = Vec::new();
        for bits in 0..8u8 {
            all.push(ApplyOptions {
                defer_deploy: bits & 1 != 0,
                defer_cutover: bits & 2 != 0,
                skip_revert: bits & 4 != 0,
            });
        }
        all
    }

    /// At a PlanetScale gate exactly one of the two moves it on: a person, or the owner.
    #[test]
    fn a_planetscale_gate_waits_for_a_person_or_acts_never_both_never_neither() {
        for o in every_options() {
            for g in GATES {
                let person = human_release(g.state, &o).is_some();
                let auto = auto_action(EngineKind::PlanetScale, g.state, &o, false).is_some();
                assert!(person != auto, "{} with {o:?}", g.state);
            }
        }
    }

    #[test]
    fn the_revert_deadline_lets_the_owner_skip_the_revert_itself() {
        let o = ApplyOptions::default();
        assert_eq!(human_release(RevertWindow, &o), Some(ControlOp::SkipRevert));
        assert_eq!(
            auto_action(EngineKind::PlanetScale, RevertWindow, &o, true),
            Some(AutoAction::SkipRevert)
        );
    }

    #[test]
    fn only_planetscale_waits_for_a_person_park() {
        for o in every_options() {
            for s in ApplyState::ALL {
                assert!(!parks(EngineKind::Spirit, *s, &o), "spirit {s}");
                let person = human_release(*s, &o).is_some() && gate(*s).is_some();
                assert_eq!(parks(EngineKind::PlanetScale, *s, &o), person, "{s} {o:?}");
            }
        }
        let defer = ApplyOptions {
            defer_cutover: true,
            ..Default::default()
        };
        assert!(parks(EngineKind::PlanetScale, WaitingForCutover, &defer));
        assert!(!parks(
            EngineKind::PlanetScale,
            WaitingForCutover,
            &ApplyOptions::default()
        ));
        assert!(parks(
            EngineKind::PlanetScale,
            RevertWindow,
            &ApplyOptions::default()
        ));
    }

    #[test]
    fn spirit_takes_no_automatic_action_and_holds_wait_for_people() {
        for o in every_options() {
            for s in ApplyState::ALL {
                assert_eq!(auto_action(EngineKind::Spirit, *s, &o, true), None, "{s}");
            }
            assert!(is_human_wait(Paused, &o) && is_human_wait(Stopped, &o));
            assert!(!is_human_wait(Running, &o));
        }
    }
}
