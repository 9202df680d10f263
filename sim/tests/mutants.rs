//! Every historical bug switched back on is found by `run --seeds` within the ci budget, except
//! those `Mutant::caught_by` names as the model's alone: `stop-in-revert-window` (its stop must
//! arrive inside a revert window, which the simulator's request mix has not done within the
//! budget) and `release-latch-not-one-way` (the simulator's users never release a rollout
//! before the heal phase, whose person asks nothing of it afterwards). The model checker
//! catches both (`model/tests/cli.rs`).

use applyd::machine::{ApplyState, ControlOp, EngineKind, Mutant, Params, PendingControls, Rules};
use applyd_sim::{first_failure, Preset};

const CI_SEEDS: u64 = 1_000;

#[test]
fn every_reachable_mutant_is_caught_within_the_ci_budget() {
    let mut missed = Vec::new();
    for m in Mutant::ALL {
        if !m.caught_by().1 {
            continue;
        }
        match first_failure(0, CI_SEEDS, Preset::CI, Some(*m)) {
            Some((seed, f)) => println!("{m}: first failing seed {seed}: {f}"),
            None => missed.push(m.name()),
        }
    }
    assert!(
        missed.is_empty(),
        "not caught in {CI_SEEDS} seeds: {missed:?}"
    );
}

/// The #269 switch re-opens the hole where upstream had it: the request surface (the one
/// `Rules::accepts_request` every store calls) takes a stop of a PlanetScale apply in its revert
/// window, which shipped rules refuse for every state.
#[test]
fn stop_in_revert_window_reopens_the_request_surface_and_nothing_else() {
    let shipped = Rules::default();
    let mutant = Rules::with_mutant(Params::DEFAULT, Some(Mutant::StopInRevertWindow));
    let none = PendingControls::default();
    for s in ApplyState::ALL {
        let stop =
            |r: &Rules| r.accepts_request(EngineKind::PlanetScale, *s, ControlOp::Stop, &none);
        assert!(
            stop(&shipped).is_err(),
            "a stop of a planetscale apply in {s}"
        );
        assert_eq!(
            stop(&mutant).is_ok(),
            *s == ApplyState::RevertWindow,
            "the switch opens exactly the revert window, not {s}"
        );
    }
}
