use proptest::prelude::*;

use super::*;
use crate::machine::claim::{shipped_class, ClaimClass};
use crate::machine::states::ApplyState::{self, *};
use crate::machine::{ApplyOptions, ControlOp, EngineKind, PendingControls, Rules};

fn policy(cutover: CutoverPolicy, on_failure: OnFailure, max_drivers: u32) -> RolloutPolicy {
    RolloutPolicy {
        cutover,
        on_failure,
        max_drivers,
        released: false,
        held: false,
    }
}

fn deployments(states: &[ApplyState]) -> Vec<Member> {
    states
        .iter()
        .enumerate()
        .map(|(d, s)| Member::new(d as u32, 0, *s))
        .collect()
}

fn steps(states: &[ApplyState]) -> Vec<Member> {
    states
        .iter()
        .enumerate()
        .map(|(k, s)| Member::new(0, k as u32, *s))
        .collect()
}

const ROLLING_HALT: RolloutPolicy = RolloutPolicy {
    cutover: CutoverPolicy::Rolling,
    on_failure: OnFailure::Halt,
    max_drivers: 1,
    released: false,
    held: false,
};

#[test]
fn one_operation_is_its_parent() {
    for s in ApplyState::ALL {
        for p in CutoverPolicy::ALL {
            for f in OnFailure::ALL {
                let m = [Member::new(0, 0, *s)];
                assert_eq!(derive_parent(&policy(p, f, 1), &m), *s, "{s} {p:?} {f:?}");
            }
        }
    }
}

#[test]
fn rolling_starts_each_deployment_after_the_previous_completed() {
    let m = deployments(&[Running, Pending, Pending]);
    assert_eq!(
        start_gate(&ROLLING_HALT, &m, 1),
        StartGate::WaitsFor { member: 0 }
    );
    let m = deployments(&[Completed, Pending, Pending]);
    assert_eq!(start_gate(&ROLLING_HALT, &m, 1), StartGate::Open);
    assert_eq!(
        start_gate(&ROLLING_HALT, &m, 2),
        StartGate::WaitsFor { member: 1 }
    );
    assert_eq!(derive_parent(&ROLLING_HALT, &m), Running);
}

#[test]
fn a_continuable_failure_delays_the_verdict() {
    let p = policy(CutoverPolicy::Rolling, OnFailure::Continue, 1);
    let m = deployments(&[Failed, Pending, Pending]);
    assert_eq!(start_gate(&p, &m, 1), StartGate::Open);
    assert_eq!(derive_parent(&p, &m), RunningDegraded);
    let m = deployments(&[Failed, Completed, Running]);
    assert_eq!(derive_parent(&p, &m), RunningDegraded);
    let m = deployments(&[Failed, Completed, Completed]);
    assert_eq!(derive_parent(&p, &m), Failed);
}

#[test]
fn halt_blocks_new_starts_and_lets_started_siblings_run_on() {
    let p = policy(CutoverPolicy::Parallel, OnFailure::Halt, 3);
    let m = deployments(&[Failed, Running, Pending]);
    assert_eq!(start_gate(&p, &m, 2), StartGate::Orphaned);
    assert!(is_orphaned(&p, &m, 2));
    assert_eq!(derive_parent(&p, &m), RunningDegraded);
    let m = deployments(&[Failed, Completed, Pending]);
    assert_eq!(derive_parent(&p, &m), Failed);
}

#[test]
fn settled_is_not_terminal_a_stopped_sibling_keeps_the_verdict_open() {
    let m = deployments(&[Failed, Stopped]);
    assert_eq!(derive_parent(&ROLLING_HALT, &m), Stopped);
    let m = deployments(&[Failed, Stopped, Running]);
    assert_eq!(derive_parent(&ROLLING_HALT, &m), RunningDegraded);
}

#[test]
fn pause_holds_only_while_later_work_remains_and_release_continues() {
    let mut p = policy(CutoverPolicy::Rolling, OnFailure::Pause, 1);
    let m = deployments(&[Failed, Pending]);
    assert_eq!(start_gate(&p, &m, 1), StartGate::Held);
    assert_eq!(derive_parent(&p, &m), Paused);
    // Nothing left to hold: the verdict.
    let last = deployments(&[Completed, Failed]);
    assert_eq!(derive_parent(&p, &last), Failed);
    p.released = true;
    assert_eq!(start_gate(&p, &m, 1), StartGate::Open);
    assert_eq!(derive_parent(&p, &m), RunningDegraded);
}

#[test]
fn a_fail_closed_operation_dominates_every_policy() {
    for f in OnFailure::ALL {
        let mut p = policy(CutoverPolicy::Parallel, f, 3);
        p.released = true;
        let mut m = deployments(&[Failed, Pending, Running]);
        m[0].failed_closed = true;
        assert_eq!(start_gate(&p, &m, 1), StartGate::Orphaned, "{f:?}");
        assert_eq!(derive_parent(&p, &m), RunningDegraded, "{f:?}");
        m[2].state = Completed;
        assert_eq!(derive_parent(&p, &m), Failed, "{f:?}");
    }
}

#[test]
fn an_ended_table_step_orphans_the_later_steps_under_every_policy() {
    for f in OnFailure::ALL {
        for ended in [Failed, Cancelled, Reverted] {
            let p = policy(CutoverPolicy::Rolling, f, 1);
            let m = steps(&[Completed, ended, Pending, Pending]);
            assert!(
                is_orphaned(&p, &m, 2) && is_orphaned(&p, &m, 3),
                "{f:?} {ended}"
            );
            let parent = derive_parent(&p, &m);
            assert_eq!(shipped_class(parent), ClaimClass::Terminal, "{f:?} {ended}");
        }
    }
}

#[test]
fn a_cancelled_or_reverted_operation_withdraws_every_operation_not_started() {
    for withdrawn in [Cancelled, Reverted] {
        let p = policy(CutoverPolicy::Parallel, OnFailure::Continue, 2);
        let m = deployments(&[Completed, withdrawn, Pending]);
        assert_eq!(start_gate(&p, &m, 2), StartGate::Orphaned);
        assert_eq!(derive_parent(&p, &m), withdrawn);
    }
}

#[test]
fn a_stopped_operation_holds_every_new_start() {
    let p = policy(CutoverPolicy::Parallel, OnFailure::Halt, 3);
    let m = deployments(&[Stopped, Pending, Pending]);
    assert_eq!(start_gate(&p, &m, 1), StartGate::Stopped { member: 0 });
    assert_eq!(derive_parent(&p, &m), Stopped);
}

#[test]
fn a_stop_holds_every_start_even_with_nothing_running() {
    let mut p = policy(CutoverPolicy::Rolling, OnFailure::Continue, 1);
    p.held = true;
    let m = deployments(&[Pending, Pending]);
    assert_eq!(start_gate(&p, &m, 0), StartGate::Stopped { member: 0 });
    assert_eq!(derive_parent(&p, &m), Stopped);
    let m = deployments(&[Failed, Pending]);
    assert_eq!(derive_parent(&p, &m), Stopped);
    let m = deployments(&[Running, Pending]);
    assert_eq!(derive_parent(&p, &m), Running);
    p.held = false;
    assert_eq!(
        start_gate(&p, &deployments(&[Failed, Pending]), 1),
        StartGate::Open
    );
}

#[test]
fn a_later_step_waits_for_the_earlier_step_under_every_cutover_policy() {
    for c in CutoverPolicy::ALL {
        let p = policy(c, OnFailure::Halt, 4);
        let m = steps(&[Running, Pending]);
        assert_eq!(
            start_gate(&p, &m, 1),
            StartGate::WaitsFor { member: 0 },
            "{c:?}"
        );
    }
}

#[test]
fn the_driver_cap_counts_engine_work_only_never_a_gate() {
    let p = policy(CutoverPolicy::Parallel, OnFailure::Halt, 2);
    let m = deployments(&[Running, Running, Pending]);
    assert_eq!(
        start_gate(&p, &m, 2),
        StartGate::Capped {
            in_flight: 2,
            max: 2
        }
    );
    // A barrier with more operations than drivers still fills: resting at the gate frees one.
    let b = policy(CutoverPolicy::Barrier, OnFailure::Halt, 1);
    let m = deployments(&[WaitingForCutover, Pending]);
    assert_eq!(start_gate(&b, &m, 1), StartGate::Open);
    assert_eq!(cutover_gate(&b, &m, 0), CutoverGate::Barrier { member: 1 });
}

#[test]
fn cutovers_go_one_at_a_time_in_order() {
    let p = policy(CutoverPolicy::Parallel, OnFailure::Halt, 3);
    let m = deployments(&[Running, WaitingForCutover, WaitingForCutover]);
    assert_eq!(cutover_gate(&p, &m, 1), CutoverGate::InOrder { member: 0 });
    let m = deployments(&[CuttingOver, WaitingForCutover, Running]);
    assert_eq!(
        cutover_gate(&p, &m, 1),
        CutoverGate::OneAtATime { member: 0 }
    );
    let m = deployments(&[Completed, WaitingForCutover, WaitingForCutover]);
    assert_eq!(cutover_gate(&p, &m, 1), CutoverGate::Open);
    assert_eq!(cutover_gate(&p, &m, 2), CutoverGate::InOrder { member: 1 });
    let b = policy(CutoverPolicy::Barrier, OnFailure::Halt, 3);
    let m = deployments(&[WaitingForCutover, WaitingForCutover, WaitingForCutover]);
    assert_eq!(cutover_gate(&b, &m, 0), CutoverGate::Open);
    assert_eq!(derive_parent(&b, &m), WaitingForCutover);
}

#[test]
fn a_barrier_with_table_steps_moves_step_by_step() {
    let b = policy(CutoverPolicy::Barrier, OnFailure::Halt, 4);
    // Deployments a and b, two steps each, in rollout order a1 a2 b1 b2.
    let at = |a1, a2, b1, b2| {
        vec![
            Member::new(0, 0, a1),
            Member::new(0, 1, a2),
            Member::new(1, 0, b1),
            Member::new(1, 1, b2),
        ]
    };
    let m = at(WaitingForCutover, Pending, Running, Pending);
    assert_eq!(cutover_gate(&b, &m, 0), CutoverGate::Barrier { member: 2 });
    // Step 1 is at the gate everywhere: a1 first, though a2 has not started (it cannot).
    let m = at(WaitingForCutover, Pending, WaitingForCutover, Pending);
    assert_eq!(cutover_gate(&b, &m, 0), CutoverGate::Open);
    assert_eq!(cutover_gate(&b, &m, 2), CutoverGate::InOrder { member: 0 });
    // b1 cuts over before a2, which waits for step 2's barrier (b2 starts after b1).
    let m = at(Completed, WaitingForCutover, WaitingForCutover, Pending);
    assert_eq!(cutover_gate(&b, &m, 2), CutoverGate::Open);
    assert_eq!(cutover_gate(&b, &m, 1), CutoverGate::Barrier { member: 3 });
    let m = at(Completed, WaitingForCutover, Completed, WaitingForCutover);
    assert_eq!(cutover_gate(&b, &m, 1), CutoverGate::Open);
    assert_eq!(cutover_gate(&b, &m, 3), CutoverGate::InOrder { member: 1 });
}

#[test]
fn a_shared_wait_names_the_parent_even_before_later_operations_start() {
    let p = policy(CutoverPolicy::Rolling, OnFailure::Halt, 1);
    let m = deployments(&[WaitingForCutover, Pending, Pending]);
    assert_eq!(derive_parent(&p, &m), WaitingForCutover);
    let m = deployments(&[Completed, Stopped, Pending]);
    assert_eq!(derive_parent(&p, &m), Stopped);
    let m = deployments(&[CuttingOver, Pending]);
    assert_eq!(derive_parent(&p, &m), Running);
    // Different waits: the earliest phase, the one a person must move on first.
    let b = policy(CutoverPolicy::Barrier, OnFailure::Halt, 3);
    let m = deployments(&[WaitingForCutover, WaitingForDeploy, WaitingForCutover]);
    assert_eq!(derive_parent(&b, &m), WaitingForDeploy);
    let m = deployments(&[RevertWindow, WaitingForCutover]);
    assert_eq!(derive_parent(&b, &m), WaitingForCutover);
}

#[test]
fn an_unknown_stored_failure_policy_fails_closed() {
    assert_eq!(OnFailure::read_stored("continue"), OnFailure::Continue);
    assert_eq!(OnFailure::read_stored("keep-going"), OnFailure::Halt);
    assert_eq!(OnFailure::read_stored(""), OnFailure::Halt);
}

#[test]
fn operation_keys_name_table_steps_from_one() {
    assert_eq!(operation_key(false, 0), "");
    assert_eq!(operation_key(true, 0), "step-1");
    assert_eq!(operation_key(true, 2), "step-3");
}

#[test]
fn a_release_is_a_one_way_latch_of_pause_only() {
    let pause = policy(CutoverPolicy::Rolling, OnFailure::Pause, 1);
    let once = requests::accept(pause, ControlOp::Release);
    assert!(once.policy.released && once.complete_now);
    // Nothing takes the latch back: a second release, a stop, a start all keep it.
    for op in [
        ControlOp::Release,
        ControlOp::Stop,
        ControlOp::Start,
        ControlOp::Cancel,
    ] {
        assert!(requests::accept(once.policy, op).policy.released, "{op}");
    }
    let halt = requests::accept(ROLLING_HALT, ControlOp::Release);
    assert!(!halt.policy.released && halt.complete_now);
}

#[test]
fn a_stop_holds_until_a_start_with_no_stop_pending() {
    let held = requests::accept(ROLLING_HALT, ControlOp::Stop).policy;
    assert!(held.held);
    let mut pending = PendingControls {
        start: true,
        stop: true,
        ..PendingControls::default()
    };
    assert!(!requests::hold_lifts(&held, &pending));
    pending.stop = false;
    assert!(requests::hold_lifts(&held, &pending));
    assert!(!requests::hold_lifts(&ROLLING_HALT, &pending));
    assert!(requests::accept(ROLLING_HALT, ControlOp::Cancel).withdraw_unstarted);
}

#[test]
fn an_acknowledged_request_is_hidden_until_the_operation_acts_on_it_again() {
    let rules = Rules::default();
    let m = deployments(&[Running, Running]);
    let all = PendingControls {
        stop: true,
        ..PendingControls::default()
    };
    let p = policy(CutoverPolicy::Parallel, OnFailure::Halt, 2);
    let opts = ApplyOptions::default();
    let seen = |m: &[Member], acked: bool| {
        requests::pending_for(&rules, EngineKind::Spirit, &opts, &p, m, 0, &all, |_| acked)
    };
    // Not yet acknowledged: seen. Acknowledged while it still acts on it: seen.
    assert!(seen(&m, false).stop);
    assert!(seen(&m, true).stop);
    // Acknowledged and stopped: hidden, and the other running operation still acts on it.
    let m = deployments(&[Stopped, Running]);
    assert!(!seen(&m, true).stop);
    assert!(requests::acted_on_elsewhere(
        &rules,
        EngineKind::Spirit,
        &opts,
        &p,
        &m,
        0,
        ControlOp::Stop,
        &all
    ));
    let m = deployments(&[Stopped, Stopped]);
    assert!(!requests::acted_on_elsewhere(
        &rules,
        EngineKind::Spirit,
        &opts,
        &p,
        &m,
        0,
        ControlOp::Stop,
        &all
    ));
}

#[test]
fn a_cutover_is_hidden_behind_a_closed_gate_and_status_says_why() {
    let rules = Rules::default();
    let p = policy(CutoverPolicy::Barrier, OnFailure::Halt, 2);
    let m = deployments(&[WaitingForCutover, Running]);
    let all = PendingControls {
        cutover: true,
        ..PendingControls::default()
    };
    let seen = requests::pending_for(
        &rules,
        EngineKind::PlanetScale,
        &ApplyOptions::default(),
        &p,
        &m,
        0,
        &all,
        |_| false,
    );
    assert!(!seen.cutover);
    assert_eq!(
        member_gate(&p, &m, 0).as_deref(),
        Some("cutover: barrier: waits for operation #2 to reach the cutover gate")
    );
    let m = deployments(&[WaitingForCutover, WaitingForCutover]);
    assert_eq!(requests::wake_at_gate(&Rules::default(), &p, &m), vec![0]);
    assert_eq!(member_gate(&p, &m, 0), None);
    assert_eq!(
        member_gate(&ROLLING_HALT, &deployments(&[Running, Pending]), 1).as_deref(),
        Some("start: waits for operation #1 to complete")
    );
}

fn arb_state() -> impl Strategy<Value = ApplyState> {
    proptest::sample::select(ApplyState::ALL.to_vec())
}

fn arb_policy() -> impl Strategy<Value = RolloutPolicy> {
    (
        0..3usize,
        0..3usize,
        1..4u32,
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(c, f, max_drivers, released, held)| RolloutPolicy {
            cutover: CutoverPolicy::ALL[c],
            on_failure: OnFailure::ALL[f],
            max_drivers,
            released,
            held,
        })
}

/// 1–5 operations over 1–3 deployments, with or without table steps.
fn arb_members() -> impl Strategy<Value = Vec<Member>> {
    (
        1..4u32,
        any::<bool>(),
        proptest::collection::vec((arb_state(), any::<bool>()), 1..6),
    )
        .prop_map(|(deps, table_steps, states)| {
            let per = if table_steps {
                states.len().div_ceil(deps as usize).max(1)
            } else {
                1
            };
            states
                .into_iter()
                .enumerate()
                .map(|(k, (state, fc))| Member {
                    deployment: (k / per) as u32,
                    step: (k % per) as u32,
                    state,
                    failed_closed: fc && state == Failed,
                })
                .collect()
        })
}

fn waits_for_a_person_or_engine(s: ApplyState) -> bool {
    matches!(s, WaitingForDeploy | RevertWindow | Stopped | Paused)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    /// The stores reach the rollout rules through `Rules`; with the shipped rules that is the
    /// free functions exactly (the invariants check against those).
    #[test]
    fn the_shipped_rules_reach_the_rollout_rules_unchanged(p in arb_policy(), m in arb_members(), op in 0..7usize) {
        let rules = Rules::default();
        prop_assert_eq!(rules.derive_rollout(&p, &m), derive_parent(&p, &m));
        for i in 0..m.len() {
            prop_assert_eq!(rules.rollout_start_gate(&p, &m, i), start_gate(&p, &m, i));
            prop_assert_eq!(rules.rollout_cutover_gate(&p, &m, i), cutover_gate(&p, &m, i));
        }
        let op = ControlOp::ALL[op % ControlOp::ALL.len()];
        prop_assert_eq!(rules.accept_rollout_request(p, op), requests::accept(p, op));
    }

    /// The parent is terminal exactly when every operation is terminal or orphaned: an orphan
    /// never holds the rollout open, and nothing live is counted as finished.
    #[test]
    fn the_parent_is_terminal_exactly_when_nothing_live_is_left(p in arb_policy(), m in arb_members()) {
        let parent = derive_parent(&p, &m);
        let settled = (0..m.len()).all(|i| m[i].terminal() || is_orphaned(&p, &m, i));
        prop_assert_eq!(shipped_class(parent) == ClaimClass::Terminal, settled, "{:?} -> {}", m, parent);
        prop_assert_eq!(parent == Completed, m.iter().all(|o| o.state == Completed));
    }

    /// A `failed` verdict never lands while an operation still holds its target or is stopped.
    #[test]
    fn no_failed_verdict_while_an_operation_is_left(p in arb_policy(), m in arb_members()) {
        if derive_parent(&p, &m) == Failed {
            for (i, o) in m.iter().enumerate() {
                prop_assert!(o.terminal() || is_orphaned(&p, &m, i), "{:?}", m);
            }
        }
    }

    /// Once a failure halts the rollout, no operation starts.
    #[test]
    fn after_a_halt_nothing_starts(p in arb_policy(), m in arb_members()) {
        let halts = m.iter().any(|o| o.state == Failed)
            && (p.on_failure == OnFailure::Halt || m.iter().any(|o| o.failed_closed));
        for i in 0..m.len() {
            if halts && m[i].state == Pending {
                prop_assert_eq!(start_gate(&p, &m, i), StartGate::Orphaned);
            }
        }
    }

    /// An open start gate honours the order and the cap.
    #[test]
    fn an_open_start_gate_honours_order_and_cap(p in arb_policy(), m in arb_members()) {
        for i in 0..m.len() {
            if m[i].state != Pending || start_gate(&p, &m, i) != StartGate::Open {
                continue;
            }
            let in_flight = m.iter().filter(|o| o.in_flight()).count() as u32;
            prop_assert!(in_flight < p.max_drivers);
            prop_assert!(m.iter().all(|o| o.state != Stopped));
            prop_assert!(!p.held);
            for (j, o) in m.iter().enumerate() {
                if o.deployment == m[i].deployment && o.step < m[i].step {
                    prop_assert_eq!(o.state, Completed);
                }
                if p.cutover == CutoverPolicy::Rolling && o.before(&m[i]) {
                    prop_assert!(o.terminal() || is_orphaned(&p, &m, j), "{:?}", m);
                }
            }
        }
    }

    /// An open cutover gate means no other cutover in flight and every operation before it in
    /// cutover order past its cutover; under `barrier`, every operation of its step at the gate
    /// or past it.
    #[test]
    fn an_open_cutover_gate_is_alone_and_in_order(p in arb_policy(), m in arb_members()) {
        for i in 0..m.len() {
            if m[i].state != WaitingForCutover || cutover_gate(&p, &m, i) != CutoverGate::Open {
                continue;
            }
            for (j, o) in m.iter().enumerate() {
                if j == i {
                    continue;
                }
                prop_assert!(o.state != CuttingOver);
                let orphan = is_orphaned(&p, &m, j);
                if o.cuts_over_before(&m[i], p.cutover) {
                    prop_assert!(o.past_cutover() || orphan, "{:?}", m);
                }
                if p.cutover == CutoverPolicy::Barrier && o.step == m[i].step {
                    prop_assert!(o.past_cutover() || o.state == WaitingForCutover || orphan, "{:?}", m);
                }
            }
        }
    }

    /// The gates never wedge a rollout: while the parent is neither terminal nor held for a
    /// person, some operation does engine work, may start, may cut over, or rests where a
    /// person or the engine moves it on.
    #[test]
    fn the_gates_never_wedge_a_rollout(p in arb_policy(), m in arb_members()) {
        let parent = derive_parent(&p, &m);
        if shipped_class(parent) == ClaimClass::Terminal || waits_for_a_person_or_engine(parent) {
            return Ok(());
        }
        let moves = (0..m.len()).any(|i| {
            let o = &m[i];
            let engine_work = !o.terminal()
                && !matches!(o.state, Pending | WaitingForCutover)
                && !waits_for_a_person_or_engine(o.state);
            // A held rollout has a stop pending for every started operation not yet stopped.
            let stopping = p.held && o.state != Pending && !o.terminal() && o.state != Stopped;
            engine_work
                || stopping
                || waits_for_a_person_or_engine(o.state)
                || (o.state == Pending && start_gate(&p, &m, i) == StartGate::Open)
                || (o.state == WaitingForCutover && cutover_gate(&p, &m, i) == CutoverGate::Open)
        });
        prop_assert!(moves, "{:?} -> {}", m, parent);
    }
}
