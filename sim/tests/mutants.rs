//! Every historical bug switched back on is found by `run --seeds` within the ci budget, except
//! `stop-in-revert-window`, which no store request can reach (see below).

use applyd::machine::control::accepts_request;
use applyd::machine::{ApplyState, ControlOp, EngineKind, Mutant, PendingControls};
use applyd_sim::{first_failure, Preset};

const CI_SEEDS: u64 = 1_000;

#[test]
fn every_reachable_mutant_is_caught_within_the_ci_budget() {
    let mut missed = Vec::new();
    for m in Mutant::ALL {
        if *m == Mutant::StopInRevertWindow {
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

/// The #269 mutant adds a row for a stop request on a PlanetScale apply in its revert window.
/// The request surface refuses every stop of a PlanetScale apply before it becomes durable, so
/// a store never holds one and the row cannot fire; only the model, which puts requests in
/// place directly, reaches it.
#[test]
fn stop_in_revert_window_is_unreachable_through_the_request_surface() {
    for s in ApplyState::ALL {
        assert!(
            accepts_request(
                EngineKind::PlanetScale,
                *s,
                ControlOp::Stop,
                &PendingControls::default()
            )
            .is_err(),
            "a stop of a planetscale apply in {s} would be accepted"
        );
    }
    assert_eq!(
        first_failure(0, 200, Preset::CI, Some(Mutant::StopInRevertWindow)).map(|(s, _)| s),
        None
    );
}
