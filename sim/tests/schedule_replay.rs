//! A model counterexample replayed against the real worker core: the #302 wedge.

use std::process::Command;

use applyd_sim::schedule::{replay, Schedule};
use applyd_sim::FailureKind;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/setup-phase-unclaimable.json"
);

fn fixture() -> Schedule {
    Schedule::parse(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

#[test]
fn the_setup_phase_unclaimable_schedule_wedges_under_its_mutant() {
    let s = fixture();
    let r = replay(&s, s.mutant().unwrap(), false);
    assert!(r.divergences.is_empty(), "{:?}", r.divergences);
    let f = r.outcome.failure.expect("the mutant must wedge");
    match &f.kind {
        FailureKind::Wedged(what) => {
            assert!(what.contains("stuck in preparing_branch"), "{what}");
            assert!(what.contains("unclaimable"), "{what}");
        }
        other => panic!("expected a wedge, got {other:?}"),
    }
}

#[test]
fn the_same_schedule_heals_with_the_shipped_rules() {
    let s = fixture();
    let r = replay(&s, None, false);
    assert!(r.divergences.is_empty(), "{:?}", r.divergences);
    assert!(
        r.outcome.failure.is_none(),
        "{}",
        r.outcome.failure.unwrap()
    );
}

#[test]
fn the_cli_reproduces_the_wedge_and_prints_a_trace_hash() {
    let out = Command::new(env!("CARGO_BIN_EXE_applyd-sim"))
        .args(["replay", "--schedule", FIXTURE])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED wedged"), "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("trace-hash: "),
        "{text}"
    );
}

#[test]
fn a_bad_schedule_is_an_error_not_a_panic() {
    assert!(Schedule::parse("{}").is_err());
    let mut s = fixture();
    s.format = "applyd-schedule/9".into();
    let text = serde_json::to_string(&s).unwrap();
    assert!(Schedule::parse(&text).unwrap_err().contains("format"));
}

/// A counterexample exactly as `applyd-model check --preset ci --mutant setup-phase-unclaimable
/// --export-counterexample FILE` wrote it: it replays without divergence and wedges.
#[test]
fn a_schedule_exported_by_the_model_replays_step_for_step_and_wedges() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/model-export-setup-phase-unclaimable.json"
    );
    let s = Schedule::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        s.steps.iter().any(|st| st.action == "submit"),
        "a model export submits in steps"
    );
    let r = replay(&s, s.mutant().unwrap(), false);
    assert!(r.divergences.is_empty(), "{:?}", r.divergences);
    match r.outcome.failure.expect("the mutant must wedge").kind {
        FailureKind::Wedged(what) => assert!(what.contains("stuck in preparing_branch"), "{what}"),
        other => panic!("expected a wedge, got {other:?}"),
    }
    let healed = replay(&s, None, false);
    assert!(
        healed.outcome.failure.is_none(),
        "the shipped rules heal the same schedule"
    );
}

/// The drifted-change counterexample as `applyd-model check --preset pin --mutant
/// runs-drifted-change --export-counterexample FILE` wrote it: on the real core the altered
/// change reaches Spirit under the mutant; under the shipped rules the same schedule fails the
/// apply closed instead and nothing is handed over.
#[test]
fn the_drifted_change_schedule_runs_the_change_only_under_its_mutant() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/model-export-runs-drifted-change.json"
    );
    let s = Schedule::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(s.steps.iter().any(|st| st.action == "drift"));
    let r = replay(&s, s.mutant().unwrap(), false);
    assert!(r.divergences.is_empty(), "{:?}", r.divergences);
    match r
        .outcome
        .failure
        .expect("the mutant runs the drifted change")
        .kind
    {
        FailureKind::Violation(v) => assert_eq!(
            v.invariant,
            applyd::machine::invariants::REVIEWED_CHANGE_ONLY
        ),
        other => panic!("expected a violation, got {other:?}"),
    }
    let shipped = replay(&s, None, false);
    assert!(
        shipped.outcome.failure.is_none(),
        "the shipped rules fail the apply closed: {:?}",
        shipped.outcome.failure
    );
}

/// A rollout's counterexample as `applyd-model check --preset pause --mutant
/// cap-blocks-recovery --export-counterexample FILE` wrote it: the schedule names the rollout
/// and, step by step, the operation acted on. On the real core and the memory store, the
/// driver cap also gating stale reclaim leaves the crashed driver's operation to nobody (a
/// wedge); the shipped rules reclaim it and the rollout completes.
#[test]
fn a_rollout_schedule_exported_by_the_model_replays_and_wedges_under_its_mutant() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/model-export-cap-blocks-recovery.json"
    );
    let s = Schedule::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rollout = s.applies[0].rollout.as_ref().expect("a rollout schedule");
    assert_eq!(rollout.deployments, 2);
    assert!(s.steps.iter().any(|st| st.operation == Some(1)));
    let r = replay(&s, s.mutant().unwrap(), false);
    assert!(r.divergences.is_empty(), "{:?}", r.divergences);
    match r.outcome.failure.expect("the mutant must wedge").kind {
        FailureKind::Wedged(what) => {
            assert!(what.contains("d1 running"), "{what}")
        }
        other => panic!("expected a wedge, got {other:?}"),
    }
    let healed = replay(&s, None, false);
    assert!(
        healed.outcome.failure.is_none(),
        "the shipped rules reclaim the operation: {:?}",
        healed.outcome.failure
    );
}
