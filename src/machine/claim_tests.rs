//! Every claim arm probed over every state, lease and set of requests; `never_claimed` states
//! match none.

use super::*;
use crate::machine::rules::Params;

/// One set of pending requests per bit pattern (bit 0 start, 1 start newer than the lease,
/// 2 stop, 3 cancel, 4 cutover, 5 revert, 6 skip-revert).
fn controls_from_bits(bits: u8) -> PendingControls {
    PendingControls {
        start: bits & 1 != 0,
        start_newer_than_lease: bits & 2 != 0,
        stop: bits & 4 != 0,
        cancel: bits & 8 != 0,
        cutover: bits & 16 != 0,
        revert: bits & 32 != 0,
        skip_revert: bits & 64 != 0,
    }
}

fn dead_owner(state: ApplyState) -> ClaimView {
    ClaimView {
        state,
        leased: true,
        heartbeat_age_ms: Some(Params::DEFAULT.stale_after_ms + 1),
        attempt: 0,
        updated_age_ms: Params::DEFAULT.stale_after_ms + 1,
        has_children: true,
        controls: PendingControls::default(),
        resting: false,
        asks_now: false,
    }
}

#[test]
fn every_state_has_exactly_one_class_and_none_is_unclaimable() {
    for s in ApplyState::ALL {
        let n = CLASS_OF.iter().filter(|(st, _)| st == s).count();
        assert_eq!(n, 1, "{s} must appear exactly once in CLASS_OF");
        assert_ne!(
            shipped_class(*s),
            ClaimClass::Unclaimable,
            "{s} matches no claim arm"
        );
    }
}

/// The static form of the seed bug (#302): a non-terminal state that no arm can claim after
/// its owner dies is a wedge.
#[test]
fn every_non_terminal_state_but_paused_is_claimable_when_its_owner_is_dead() {
    let rules = Rules::default();
    for s in ApplyState::ALL {
        if s.is_terminal() || *s == Paused {
            continue;
        }
        let row = dead_owner(*s);
        assert!(
            rules.matching_arm(&row).is_some(),
            "{s}: no claim arm matches a dead owner's stale row"
        );
    }
}

#[test]
fn terminal_states_match_no_arm_except_stopped_with_start_or_cancel() {
    let rules = Rules::default();
    for s in ApplyState::ALL.iter().filter(|s| s.is_terminal()) {
        let mut row = dead_owner(*s);
        assert_eq!(rules.matching_arm(&row), None, "{s} must not be claimed");
        row.controls = PendingControls {
            stop: true,
            cutover: true,
            revert: true,
            ..Default::default()
        };
        assert_eq!(
            rules.matching_arm(&row),
            None,
            "{s} must not be claimed for stop/cutover/revert"
        );
        row.controls = PendingControls {
            start: true,
            ..Default::default()
        };
        let expect = (*s == Stopped).then_some(ClaimArm::A5StoppedStart);
        assert_eq!(rules.matching_arm(&row), expect, "{s} with a pending start");
        row.controls = PendingControls {
            cancel: true,
            ..Default::default()
        };
        let expect = (*s == Stopped).then_some(ClaimArm::A7StoppedCancel);
        assert_eq!(
            rules.matching_arm(&row),
            expect,
            "{s} with a pending cancel"
        );
    }
}

/// `never_claimed` is exact where it says so: for every such state, every lease situation
/// and every set of pending requests, no apply arm and no operation arm (with any parent
/// state) matches.
#[test]
fn a_never_claimed_state_matches_no_arm_whatever_else_holds() {
    let rules = Rules::default();
    let leases = [
        (false, None),
        (true, Some(0)),
        (true, Some(Params::DEFAULT.stale_after_ms + 1)),
    ];
    for s in ApplyState::ALL.iter().filter(|s| rules.never_claimed(**s)) {
        for bits in 0u8..128 {
            let controls = controls_from_bits(bits);
            for (leased, age) in leases {
                for resting in [false, true] {
                    let row = ClaimView {
                        leased,
                        heartbeat_age_ms: age,
                        controls,
                        resting,
                        asks_now: true,
                        ..dead_owner(*s)
                    };
                    assert_eq!(rules.matching_arm(&row), None, "{s} {row:?}");
                    for parent in ApplyState::ALL {
                        let v = OperationClaimView::single(
                            row,
                            ClaimView {
                                state: *parent,
                                ..row
                            },
                        );
                        assert_eq!(rules.matching_operation_arm(&v), None, "{s} {v:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn setup_and_revert_phase_states_are_stale_reclaimable() {
    let rules = Rules::default();
    for s in SETUP_PHASE.iter().chain(REVERT_PHASE) {
        assert_eq!(rules.class_of(*s), ClaimClass::StaleReclaimable, "{s}");
        assert_eq!(
            rules.matching_arm(&dead_owner(*s)),
            Some(ClaimArm::A2Stale),
            "{s}"
        );
    }
}

#[test]
fn a_fresh_heartbeat_is_never_claimed_from_under_its_owner() {
    let rules = Rules::default();
    for s in rules.states_in(ClaimClass::StaleReclaimable) {
        let mut row = dead_owner(s);
        row.heartbeat_age_ms = Some(rules.params.stale_after_ms - 1);
        assert_eq!(rules.matching_arm(&row), None, "{s}");
        row.leased = false;
        assert_eq!(
            rules.matching_arm(&row),
            Some(ClaimArm::A2Stale),
            "{s} released"
        );
    }
}

#[test]
fn pending_without_children_is_never_claimed() {
    let rules = Rules::default();
    let mut row = dead_owner(Pending);
    row.leased = false;
    row.has_children = false;
    row.controls.start = true;
    assert_eq!(rules.matching_arm(&row), None);
    row.has_children = true;
    assert_eq!(rules.matching_arm(&row), Some(ClaimArm::A1Pending));
}

#[test]
fn retry_arm_respects_budget_and_freshness_and_expiry_takes_the_rest() {
    let rules = Rules::default();
    let mut row = dead_owner(FailedRetryable);
    row.attempt = 9;
    assert_eq!(rules.matching_arm(&row), Some(ClaimArm::A3Retry));
    assert_eq!(rules.retry_expiry(&row), None);
    row.attempt = 10;
    assert_eq!(rules.matching_arm(&row), None);
    assert_eq!(
        rules.retry_expiry(&row),
        Some(ExpiryReason::RetryBudgetExhausted)
    );
    row.attempt = 0;
    row.updated_age_ms = rules.params.retry_freshness_ms;
    assert_eq!(rules.matching_arm(&row), None);
    assert_eq!(
        rules.retry_expiry(&row),
        Some(ExpiryReason::RecoveryWindowExpired)
    );
}

#[test]
fn deferred_deploy_start_hands_off_a_fresh_lease_only_for_a_newer_start() {
    let rules = Rules::default();
    let mut row = dead_owner(WaitingForDeploy);
    row.heartbeat_age_ms = Some(1);
    row.controls.start = true;
    assert_eq!(rules.matching_arm(&row), None);
    row.controls.start_newer_than_lease = true;
    assert_eq!(
        rules.matching_arm(&row),
        Some(ClaimArm::A6DeferredDeployStart)
    );
}

#[test]
fn operation_arms_cover_every_non_terminal_single_operation_state() {
    let rules = Rules::default();
    for s in ApplyState::ALL {
        if s.is_terminal() || *s == Paused || *s == Pending {
            continue;
        }
        let v = OperationClaimView::single(dead_owner(*s), dead_owner(*s));
        assert!(
            rules.matching_operation_arm(&v).is_some(),
            "operation in {s}"
        );
    }
    let pending = OperationClaimView::single(dead_owner(Pending), dead_owner(Pending));
    assert_eq!(
        rules.matching_operation_arm(&pending),
        Some(OperationArm::O1Pending)
    );
    let mut stopping = pending;
    stopping.parent.controls.stop = true;
    assert_eq!(
        rules.matching_operation_arm(&stopping),
        None,
        "a pending stop gates a pending operation"
    );
}

/// The model checker explores the apply-level arms. For a single-operation apply (the
/// operation row mirrors its parent), the operation path must never take a row the apply
/// path would not, so that what the model proved covers both claim paths.
#[test]
fn for_a_single_operation_apply_the_operation_arms_take_nothing_the_apply_arms_refuse() {
    let rules = Rules::default();
    let stale = rules.params.stale_after_ms;
    let budget = rules.params.retry_budget;
    let fresh = rules.params.retry_freshness_ms;
    let mut checked = 0u32;
    for state in ApplyState::ALL {
        for (leased, resting) in [(false, false), (false, true), (true, false), (true, true)] {
            for hb in [None, Some(1), Some(stale - 1), Some(stale), Some(stale + 1)] {
                for attempt in [0, budget - 1, budget] {
                    for updated in [1, stale + 1, fresh - 1, fresh] {
                        for controls in 0u8..64 {
                            let row = ClaimView {
                                resting,
                                asks_now: controls & 60 != 0,
                                state: *state,
                                leased,
                                heartbeat_age_ms: hb,
                                attempt,
                                updated_age_ms: updated,
                                has_children: true,
                                controls: controls_from_bits(controls & 63),
                            };
                            let v = OperationClaimView::single(row, row);
                            if let Some(op_arm) = rules.matching_operation_arm(&v) {
                                assert!(
                                    rules.matching_arm(&row).is_some(),
                                    "{} takes {row:?}, which no apply arm takes",
                                    op_arm.code()
                                );
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 200_000);
}

fn parked(state: ApplyState) -> ClaimView {
    ClaimView {
        leased: false,
        resting: true,
        ..dead_owner(state)
    }
}

/// A parked wait is nobody's until a request arrives (A9/O6) or its wake time comes (A2/O2);
/// then it is anyone's, whatever its old heartbeat says.
#[test]
fn a_parked_wait_is_taken_back_by_a_request_or_at_its_wake_time_and_not_before() {
    let rules = Rules::default();
    for s in rules.states_in(ClaimClass::StaleReclaimable) {
        let row = parked(s);
        let v = |row: ClaimView| OperationClaimView::single(row, row);
        assert_eq!(rules.matching_arm(&row), None, "{s} parked");
        assert_eq!(rules.matching_operation_arm(&v(row)), None, "{s} parked");
        assert_eq!(rules.retry_expiry(&row), None);
        // A request for a later state leaves it parked.
        let mut early = row;
        early.controls.cutover = true;
        assert_eq!(
            rules.matching_arm(&early),
            None,
            "{s} parked, request for later"
        );
        for op in crate::machine::ControlOp::ALL {
            let mut asked = row;
            asked.controls.set(*op, true);
            if !asked.controls.any() {
                continue;
            }
            asked.asks_now = true;
            let arm = rules.matching_arm(&asked);
            assert!(
                matches!(
                    arm,
                    Some(ClaimArm::A9ParkedRequest | ClaimArm::A6DeferredDeployStart)
                ),
                "{s} parked with {op}: {arm:?}"
            );
            assert!(
                rules.matching_operation_arm(&v(asked)).is_some(),
                "{s} {op}"
            );
        }
        let woken = ClaimView {
            resting: false,
            ..row
        };
        assert_eq!(
            rules.matching_arm(&woken),
            Some(ClaimArm::A2Stale),
            "{s} woken"
        );
        assert_eq!(
            rules.matching_operation_arm(&v(woken)),
            Some(OperationArm::O2Stale),
            "{s} woken"
        );
    }
    // A held lease is judged by its heartbeat alone: a row that says it rests but is owned
    // (an owner claimed it since) is never taken from under a fresh heartbeat.
    let mut owned = parked(WaitingForCutover);
    owned.leased = true;
    owned.heartbeat_age_ms = Some(1);
    owned.controls.cutover = true;
    assert_eq!(rules.matching_arm(&owned), None);
}

#[cfg(feature = "mutants")]
#[test]
fn the_seed_bug_switch_makes_setup_states_unclaimable() {
    let rules = Rules::with_mutant(Params::DEFAULT, Some(Mutant::SetupPhaseUnclaimable));
    for s in SETUP_PHASE {
        assert_eq!(rules.matching_arm(&dead_owner(*s)), None);
    }
}
