//! The `ci` preset: 1,000 seeds, 3 workers, 5 applies on 3 targets, one simulated hour of faults
//! each, then the heal phase, all with the shipped rules — on the operation claim path production
//! uses (the preset's default) and on the apply path.

use applyd::machine::claim::ClaimPath;
use applyd_sim::{run_seeds, Preset};

#[test]
fn the_ci_preset_defaults_to_the_operation_claim_path() {
    assert_eq!(Preset::CI.claim_path, ClaimPath::Operation);
    assert_eq!(Preset::SOAK.claim_path, ClaimPath::Operation);
}

#[test]
fn the_ci_preset_passes_with_the_shipped_rules_on_both_claim_paths() {
    let mut events = Vec::new();
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
        events.push(s.events);
    }
    // The paths claim rows in different orders: the same seeds are different runs.
    assert_ne!(events[0], events[1], "the claim path made no difference");
}
