//! The `ci` preset: 1,000 seeds, 3 workers, 5 applies on 3 targets, one simulated hour of faults
//! each, then the heal phase, all with the shipped rules.

use applyd_sim::{run_seeds, Preset};

#[test]
fn the_ci_preset_passes_with_the_shipped_rules() {
    let s = run_seeds(0, 1_000, Preset::CI, None, 2, false);
    println!("{}", s.line());
    assert!(s.failed.is_empty(), "failing seeds: {:#?}", s.failed);
    // Every seed simulated at least its hour of faults or settled everything before.
    assert!(s.simulated_ms >= 1_000 * 30 * 60 * 1000, "{}", s.line());
}
