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

/// How an owner spends a wait for a person that the engine has confirmed, with no request
/// pending that it acts on now (`Rules::acts_now`): either way the wait holds no driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rest {
    /// Nothing local must stay alive (the deploy request lives in PlanetScale): the owner
    /// releases the lease and the row is parked until a request arrives (arms A9/O6) or its
    /// wake time comes ([`crate::machine::Rules::park_wake_ms`], arms A2/O2).
    Park,
    /// A local runner is alive (Spirit waiting on its sentinel) and must always have a live
    /// lease holder: the process keeps the lease, renewed by its heartbeat, and watches the
    /// runner and the requests without a driver; a request, or the runner leaving its gate,
    /// hands the apply back to a driver.
    Watch,
}

/// How a wait in `state` rests, if it is a wait for a person.
pub fn rest(engine: EngineKind, state: ApplyState, options: &ApplyOptions) -> Option<Rest> {
    match engine {
        EngineKind::PlanetScale => gate(state)
            .filter(|g| (g.waits_for_person)(options))
            .map(|_| Rest::Park),
        EngineKind::Spirit => {
            (state == WaitingForCutover && options.defer_cutover).then_some(Rest::Watch)
        }
    }
}

/// How a wait in `state` rests, counting a rollout operation at the cutover gate whose turn
/// has not come (`cutover_open` false): its siblings move it on, as a person would, so it
/// holds no driver either.
pub fn rest_at(
    engine: EngineKind,
    state: ApplyState,
    options: &ApplyOptions,
    cutover_open: bool,
) -> Option<Rest> {
    rest(engine, state, options).or_else(|| {
        (state == WaitingForCutover && !cutover_open).then_some(match engine {
            EngineKind::PlanetScale => Rest::Park,
            EngineKind::Spirit => Rest::Watch,
        })
    })
}

/// How a wait for a person is held, as people read it (`applyd status`, the API): parked (no
/// lease, no driver) or watched (the lease kept, no driver), and what moves it on. `None` when
/// the apply is not resting in such a wait.
pub fn explain_rest(
    engine: EngineKind,
    state: ApplyState,
    options: &ApplyOptions,
    leased: bool,
    parked_wake_in_ms: Option<u64>,
) -> Option<String> {
    let op = human_release(state, options)?;
    let what = state.as_str().replace('_', " ");
    match (rest(engine, state, options)?, leased, parked_wake_in_ms) {
        (Rest::Park, false, Some(ms)) if ms > 0 => Some(format!(
            "parked: {what} (no driver held); a {op} request is taken by the next claim, and a driver looks at the engine again in {} s",
            ms.div_ceil(1000)
        )),
        (Rest::Park, false, Some(_)) => Some(format!(
            "parked: {what} (no driver held); its wake time has come, the next claim looks at the engine"
        )),
        // Released without a park (a shutdown): the next claim takes it.
        (Rest::Park, false, None) => None,
        (Rest::Park, true, _) => Some(format!(
            "{what}: its driver parks it once the engine confirms the wait"
        )),
        (Rest::Watch, true, _) => Some(format!(
            "watched: {what} (the runner waits on its sentinel; the lease is kept, no driver held); a {op} request is taken by the next poll"
        )),
        (Rest::Watch, false, _) => None,
    }
}

/// How long Spirit waits for its sentinel to be dropped before the run fails ("timed out
/// waiting for sentinel table to be dropped"): 48 h, counted from when the run began waiting
/// (`pkg/sentinel/sentinel.go`, `WaitLimit`).
pub const SPIRIT_SENTINEL_WAIT_LIMIT_MS: u64 = 48 * 3_600_000;
/// From how far into that wait people are warned.
pub const SPIRIT_SENTINEL_WARN_AFTER_MS: u64 = 36 * 3_600_000;

/// When a Spirit apply waiting for its cutover will have waited too long, as people read it
/// (`applyd status`, the API), a warning once 36 h have passed; `None` for any other wait.
/// `waited_ms` is how long the apply has been in `waiting_for_cutover`.
pub fn sentinel_deadline(
    engine: EngineKind,
    state: ApplyState,
    options: &ApplyOptions,
    waited_ms: u64,
) -> Option<String> {
    if engine != EngineKind::Spirit || state != WaitingForCutover || !options.defer_cutover {
        return None;
    }
    let left_min = SPIRIT_SENTINEL_WAIT_LIMIT_MS
        .saturating_sub(waited_ms)
        .div_ceil(60_000);
    let left = format!("{} h {:02} min", left_min / 60, left_min % 60);
    Some(if waited_ms >= SPIRIT_SENTINEL_WARN_AFTER_MS {
        format!(
            "WARNING: Spirit gives up waiting for the cutover in about {left} (48 h after it \
             began waiting); ask for the cutover before then, or the run ends and the apply \
             waits for a person"
        )
    } else {
        format!("Spirit waits for the cutover at most {left} more (48 h in all)")
    })
}

impl super::Rules {
    /// How a confirmed wait in `state` gives its driver back now: it rests (`rest_at`), and no
    /// pending request is one it acts on now (`Rules::acts_now`). The core parks or watches on
    /// it; the simulator counts a driver held by such a wait as free.
    pub fn rests_now(
        &self,
        engine: EngineKind,
        state: ApplyState,
        pending: &super::claim::PendingControls,
        options: &ApplyOptions,
        cutover_open: bool,
    ) -> Option<Rest> {
        rest_at(engine, state, options, cutover_open)
            .filter(|_| !self.acts_now(engine, state, pending, options))
    }
}

/// Whether the wait parks (see [`Rest::Park`]).
pub fn parks(engine: EngineKind, state: ApplyState, options: &ApplyOptions) -> bool {
    rest(engine, state, options) == Some(Rest::Park)
}

/// Whether the wait parks, counting a closed cutover gate (see [`rest_at`]).
pub fn parks_at(
    engine: EngineKind,
    state: ApplyState,
    options: &ApplyOptions,
    cutover_open: bool,
) -> bool {
    rest_at(engine, state, options, cutover_open) == Some(Rest::Park)
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

    #[test]
    fn a_spirit_cutover_wait_says_when_spirit_gives_up_and_warns_near_it() {
        let deferred = ApplyOptions {
            defer_cutover: true,
            ..ApplyOptions::default()
        };
        let hour = 3_600_000;
        let early = sentinel_deadline(EngineKind::Spirit, WaitingForCutover, &deferred, hour);
        assert_eq!(
            early.as_deref(),
            Some("Spirit waits for the cutover at most 47 h 00 min more (48 h in all)")
        );
        let late = sentinel_deadline(
            EngineKind::Spirit,
            WaitingForCutover,
            &deferred,
            40 * hour + 1,
        )
        .unwrap();
        assert!(
            late.starts_with("WARNING") && late.contains("about 8 h 00 min"),
            "{late}"
        );
        let over =
            sentinel_deadline(EngineKind::Spirit, WaitingForCutover, &deferred, 50 * hour).unwrap();
        assert!(over.contains("about 0 h 00 min"), "{over}");
        for (engine, state, options) in [
            (EngineKind::PlanetScale, WaitingForCutover, deferred),
            (EngineKind::Spirit, Running, deferred),
            (
                EngineKind::Spirit,
                WaitingForCutover,
                ApplyOptions::default(),
            ),
        ] {
            assert_eq!(sentinel_deadline(engine, state, &options, hour), None);
        }
    }
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
    fn a_spirit_runner_waiting_for_a_person_is_watched_never_parked() {
        for o in every_options() {
            for s in ApplyState::ALL {
                let expect = (*s == WaitingForCutover && o.defer_cutover).then_some(Rest::Watch);
                assert_eq!(rest(EngineKind::Spirit, *s, &o), expect, "{s} {o:?}");
            }
        }
    }

    #[test]
    fn a_resting_wait_says_how_it_is_held_and_what_moves_it_on() {
        let defer = ApplyOptions {
            defer_cutover: true,
            ..Default::default()
        };
        let ps = EngineKind::PlanetScale;
        assert_eq!(
            explain_rest(ps, WaitingForCutover, &defer, false, Some(61_500)).as_deref(),
            Some("parked: waiting for cutover (no driver held); a cutover request is taken by the next claim, and a driver looks at the engine again in 62 s")
        );
        assert!(explain_rest(ps, WaitingForCutover, &defer, false, Some(0))
            .unwrap()
            .contains("its wake time has come"));
        assert_eq!(
            explain_rest(EngineKind::Spirit, WaitingForCutover, &defer, true, None).as_deref(),
            Some("watched: waiting for cutover (the runner waits on its sentinel; the lease is kept, no driver held); a cutover request is taken by the next poll")
        );
        assert!(
            explain_rest(ps, RevertWindow, &ApplyOptions::default(), false, Some(1))
                .unwrap()
                .contains("a skip_revert request")
        );
        assert_eq!(explain_rest(ps, Running, &defer, false, None), None);
        assert_eq!(
            explain_rest(ps, WaitingForCutover, &ApplyOptions::default(), false, None),
            None
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
