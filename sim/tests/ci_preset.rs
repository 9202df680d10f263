//! The `ci` preset: 1,000 seeds, 3 workers, 5 applies on 3 targets, one simulated hour of faults
//! each, then the heal phase, all with the shipped rules — on the operation claim path production
//! uses (the preset's default) and on the apply path. The `waits` preset: more applies waiting
//! for a person than drivers, and no claimable work left waiting while a driver is free.

use applyd::machine::claim::ClaimPath;
use applyd::machine::Mutant;
use applyd_sim::{run_seeds, Preset};

#[test]
fn the_ci_preset_defaults_to_the_operation_claim_path() {
    assert_eq!(Preset::CI.claim_path, ClaimPath::Operation);
    assert_eq!(Preset::SOAK.claim_path, ClaimPath::Operation);
}

#[test]
fn the_ci_preset_passes_with_the_shipped_rules_on_both_claim_paths() {
    for path in ClaimPath::ALL {
        let s = run_seeds(0, 1_000, Preset::CI.with_claim_path(path), None, 2, false);
        println!("{}: {}", path.as_str(), s.line());
        assert!(
            s.failed.is_empty(),
            "{} path, failing seeds: {:#?}",
            path.as_str(),
            s.failed
        );
        // Every seed simulated at least its hour of faults or settled everything before.
        assert!(s.simulated_ms >= 1_000 * 30 * 60 * 1000, "{}", s.line());
    }
    // The paths claim through different arms (an operation arm with its parent's, or an apply
    // arm alone): the same seeds are different runs.
    let differ = (0..50)
        .filter(|seed| {
            let on = |path| {
                applyd_sim::run_seed(*seed, Preset::CI.with_claim_path(path), None, false)
                    .trace_hash
            };
            on(ClaimPath::Operation) != on(ClaimPath::Apply)
        })
        .count();
    assert!(differ > 0, "the claim path made no difference");
}

#[test]
fn the_waits_preset_passes_with_more_waits_than_drivers() {
    let s = run_seeds(0, 500, Preset::WAITS, None, 2, false);
    println!("{}", s.line());
    assert!(s.failed.is_empty(), "failing seeds: {:#?}", s.failed);
    // Most seeds had more applies resting in a person's wait at once than drivers, and some of
    // those waits were watched Spirit runners rather than parked rows.
    assert!(s.waits_outnumbered_drivers >= 400, "{}", s.line());
    assert!(s.watches >= 500, "{}", s.line());
}

#[test]
fn a_driver_held_by_a_wait_starves_the_waits_preset() {
    let (seed, f) = applyd_sim::first_failure(0, 50, Preset::WAITS, Some(Mutant::WaitsHoldDrivers))
        .expect("waits holding their drivers starve the other applies");
    println!("seed {seed}: {f}");
    assert_eq!(f.label(), applyd::machine::invariants::NO_STARVATION, "{f}");
}
