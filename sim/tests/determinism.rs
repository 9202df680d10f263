//! A run is a pure function of (seed, preset, mutant, code): the same seed gives the same trace.

use std::process::Command;

use applyd::machine::Mutant;
use applyd_sim::{run_seed, self_check, Preset};

#[test]
fn every_seed_replays_to_the_same_trace_hash() {
    for seed in 0..40 {
        self_check(seed, Preset::CI, None).unwrap();
    }
    for m in Mutant::ALL {
        self_check(3, Preset::CI, Some(*m)).unwrap();
    }
}

#[test]
fn different_seeds_give_different_traces() {
    let a = run_seed(1, Preset::CI, None, false);
    let b = run_seed(2, Preset::CI, None, false);
    assert_ne!(a.trace_hash, b.trace_hash);
}

fn cli_hash(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_applyd-sim"))
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let last = text.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("trace-hash: "), "{text}");
    last
}

#[test]
fn replay_twice_prints_the_same_trace_hash() {
    let a = cli_hash(&["replay", "17"]);
    let b = cli_hash(&["replay", "17", "--trace"]);
    assert_eq!(a, b, "printing the trace must not change the run");
    let c = cli_hash(&["replay", "17", "--self-check"]);
    assert_eq!(a, c);
}
