use super::*;
use crate::machine::claim::shipped_class;
use ApplyState::*;

fn snap(engine: EngineKind, state: ApplyState) -> Snapshot<'static> {
    Snapshot {
        identifier: "apply-7",
        engine,
        state,
        options: ApplyOptions::default(),
        attempt: 1,
        lease_owner: None,
        heartbeat_age_ms: None,
        updated_age_ms: 1_000,
        has_children: true,
        pending: PendingControls::default(),
        parked_wake_in_ms: None,
        is_rollout: false,
    }
}

fn owned(mut s: Snapshot<'static>, heartbeat_age_ms: u64) -> Snapshot<'static> {
    s.lease_owner = Some("ui-p1/driver-2");
    s.heartbeat_age_ms = Some(heartbeat_age_ms);
    s
}

fn with(mut s: Snapshot<'static>, op: ControlOp) -> Snapshot<'static> {
    s.pending.set(op, true);
    s
}

#[test]
fn a_live_owner_is_named_with_when_its_apply_becomes_reclaimable() {
    let rules = Rules::default();
    let e = rules.explain(&owned(snap(EngineKind::Spirit, Running), 41_000));
    assert_eq!(e.class, "stale-reclaimable");
    assert_eq!(
        e.claim,
        "owner ui-p1/driver-2 last heartbeat 41 s ago; reclaimable by A2 in 19 s if its heartbeat stops"
    );
    let stale = rules.explain(&owned(snap(EngineKind::Spirit, Running), 75_000));
    assert!(
        stale.claim.starts_with(
            "owner ui-p1/driver-2 last heartbeat 1 min 15 s ago, stale after 1 min 00 s; reclaimable now by A2"
        ),
        "{}",
        stale.claim
    );
}

/// The "in N s" an explanation gives is the rules' own: after that long without a heartbeat,
/// the arm it names matches, and not a second before.
#[test]
fn the_wait_an_explanation_announces_is_when_the_arm_matches() {
    let rules = Rules::default();
    for state in rules.states_in(ClaimClass::StaleReclaimable) {
        for age in [0, 1_000, 41_000, 59_000] {
            let s = owned(snap(EngineKind::PlanetScale, state), age);
            let left = rules.params.stale_after_ms - age;
            let e = rules.explain(&s);
            assert!(
                e.claim.contains(&format!("A2 in {}", duration(left))),
                "{}",
                e.claim
            );
            let later = owned(snap(EngineKind::PlanetScale, state), age + left);
            assert_eq!(
                rules.matching_arm(&rules.view(&later)),
                Some(crate::machine::ClaimArm::A2Stale)
            );
            let before = owned(snap(EngineKind::PlanetScale, state), age + left - 1);
            assert_eq!(rules.matching_arm(&rules.view(&before)), None, "{state}");
        }
    }
}

#[test]
fn every_claim_class_of_a_shipped_state_is_explained() {
    let rules = Rules::default();
    let mut seen = std::collections::BTreeSet::new();
    for engine in [EngineKind::Spirit, EngineKind::PlanetScale] {
        for state in ApplyState::ALL.iter().copied() {
            for s in [snap(engine, state), owned(snap(engine, state), 5_000)] {
                let e = rules.explain(&s);
                let class = shipped_class(state);
                assert_eq!(e.class, class.name());
                seen.insert(class);
                let expect = match (class, s.lease_owner.is_some()) {
                    (ClaimClass::Terminal, _) => "finished: ",
                    (ClaimClass::PendingQueue, false) => "by A1",
                    (ClaimClass::RetryPath, _) => "A3",
                    (ClaimClass::StartHeld, false) => "A5 takes it when a start is requested, A7",
                    (ClaimClass::HumanHeld, false) => "A8 takes it when a stop or a cancel",
                    (ClaimClass::StaleReclaimable, false) => "the next claim takes it by A2",
                    (ClaimClass::StaleReclaimable, true) => "reclaimable by A2 in 55 s",
                    (_, true) => "owner ui-p1/driver-2 last heartbeat 5 s ago",
                    (ClaimClass::Unclaimable, _) => unreachable!("no shipped state"),
                };
                assert!(e.claim.contains(expect), "{engine} {state}: {}", e.claim);
                assert!(!e.lines().is_empty());
            }
        }
    }
    let shipped: Vec<_> = ClaimClass::ALL
        .iter()
        .copied()
        .filter(|c| *c != ClaimClass::Unclaimable)
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), shipped);
}

#[test]
fn a_pending_apply_without_its_rows_waits_for_them() {
    let mut s = snap(EngineKind::Spirit, Pending);
    s.has_children = false;
    assert_eq!(
        Rules::default().explain(&s).claim,
        "being submitted: A1 takes it once its task rows exist"
    );
}

#[test]
fn a_retry_says_its_attempt_the_budget_left_and_when_it_expires() {
    let rules = Rules::default();
    let mut s = snap(EngineKind::PlanetScale, FailedRetryable);
    s.attempt = 3;
    s.updated_age_ms = 3_600_000;
    let e = rules.explain(&s);
    assert!(
        e.claim.contains("the next claim takes it by A3"),
        "{}",
        e.claim
    );
    assert_eq!(
        e.retry.as_deref(),
        Some("attempt 3 of 10: 7 retries left, taken by A3 while it was written within 24 h 00 min (23 h 00 min left)")
    );
    s.attempt = 10;
    let spent = rules.explain(&s);
    assert_eq!(
        spent.claim,
        "no claim arm retries it (retry_budget_exhausted): the next claim pass fails it for good"
    );
    assert_eq!(
        spent.retry.as_deref(),
        Some("attempt 10 of 10: no retry left (retry_budget_exhausted)")
    );
    s.attempt = 2;
    s.updated_age_ms = rules.params.retry_freshness_ms;
    assert!(rules.explain(&s).claim.contains("recovery_window_expired"));
    let running = rules.explain(&owned(
        Snapshot {
            attempt: 4,
            ..snap(EngineKind::Spirit, Running)
        },
        1_000,
    ));
    assert_eq!(running.retry.as_deref(), Some("attempt 4 of 10"));
    assert_eq!(
        rules.explain(&snap(EngineKind::Spirit, Running)).retry,
        None
    );
}

#[test]
fn a_wait_for_a_person_names_the_command_that_moves_it_on() {
    let rules = Rules::default();
    let mut s = snap(EngineKind::PlanetScale, WaitingForCutover);
    s.options.defer_cutover = true;
    s.parked_wake_in_ms = Some(61_500);
    let e = rules.explain(&s);
    assert_eq!(
        e.person.as_deref(),
        Some("waiting for cutover — `applyd cutover apply-7`")
    );
    assert!(
        e.claim
            .starts_with("parked, no driver held: A9 takes it as soon as a request")
            && e.claim.contains("A2 in 1 min 02 s"),
        "{}",
        e.claim
    );
    let asked = rules.explain(&with(s, ControlOp::Cutover));
    assert!(asked.person.unwrap().contains("cutover was requested"));
    assert!(asked.claim.contains("by A9"), "{}", asked.claim);

    let stopped = rules.explain(&snap(EngineKind::Spirit, Stopped));
    assert_eq!(
        stopped.person.as_deref(),
        Some("stopped: `applyd start apply-7` resumes it, `applyd cancel apply-7` ends it")
    );
    let window = rules.explain(&snap(EngineKind::PlanetScale, RevertWindow));
    assert!(window
        .person
        .unwrap()
        .contains("`applyd skip-revert apply-7`"));
    let paused = rules.explain(&snap(EngineKind::Spirit, Paused));
    assert!(paused
        .person
        .unwrap()
        .contains("`applyd cancel apply-7` ends it"));
    assert_eq!(
        rules.explain(&snap(EngineKind::Spirit, Running)).person,
        None
    );
}

#[test]
fn each_pending_request_says_what_it_waits_for() {
    let rules = Rules::default();
    let note = |s: Snapshot<'static>| {
        let e = rules.explain(&s);
        e.requests
            .iter()
            .map(|r| format!("{}: {}", r.request, r.note))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        note(with(
            owned(snap(EngineKind::Spirit, Running), 1_000),
            ControlOp::Cutover
        )),
        ["cutover: taken when the engine reaches the cutover gate"]
    );
    assert_eq!(
        note(with(
            owned(snap(EngineKind::Spirit, WaitingForCutover), 1_000),
            ControlOp::Cutover
        )),
        ["cutover: taken by its owner at its next step (moves it to cutting_over)"]
    );
    assert_eq!(
        note(with(snap(EngineKind::PlanetScale, Running), ControlOp::Stop)),
        ["stop: will be refused: planetscale applies cannot be stopped; cancel the deploy request instead"]
    );
    assert_eq!(
        note(with(
            with(snap(EngineKind::Spirit, Stopped), ControlOp::Stop),
            ControlOp::Start
        )),
        [
            "stop: will be refused: not applicable while the apply is stopped",
            "start: waits for the pending stop"
        ]
    );
    assert_eq!(
        note(with(snap(EngineKind::Spirit, Failed), ControlOp::Start)),
        ["start: refused when settled: the apply is already failed"]
    );
    assert_eq!(
        note(with(
            snap(EngineKind::PlanetScale, Running),
            ControlOp::Revert
        )),
        ["revert: taken once the change is deployed, in its revert window"]
    );
}

#[test]
fn the_requests_accepted_are_the_ones_the_stores_admit() {
    let rules = Rules::default();
    for engine in [EngineKind::Spirit, EngineKind::PlanetScale] {
        for state in ApplyState::ALL.iter().copied() {
            for is_rollout in [false, true] {
                let s = Snapshot {
                    is_rollout,
                    ..snap(engine, state)
                };
                let e = rules.explain(&s);
                for op in PERSON_REQUESTS {
                    let admitted = rules
                        .request_admitted(engine, state, *op, &s.pending, is_rollout)
                        .is_ok();
                    assert_eq!(e.accepts.contains(op), admitted, "{engine} {state} {op}");
                    let refusal = e.refuses.iter().find(|r| r.request == *op);
                    assert_eq!(refusal.is_none(), admitted, "{engine} {state} {op}");
                }
            }
        }
    }
    let running = rules.explain(&snap(EngineKind::Spirit, Running));
    assert!(running.accepts.contains(&ControlOp::Cutover));
    assert!(!running.accepts.contains(&ControlOp::Revert));
    assert!(!running.accepts.contains(&ControlOp::Release));
    let done = rules.explain(&snap(EngineKind::Spirit, Completed));
    assert!(done.accepts.is_empty(), "{:?}", done.accepts);
}

#[test]
fn an_operation_is_explained_by_the_operation_arms_and_its_gate() {
    let rules = Rules::default();
    let parent = owned(snap(EngineKind::Spirit, Running), 2_000);
    let waiting = snap(EngineKind::Spirit, Pending);
    assert_eq!(
        rules.explain_operation(&waiting, &parent, false),
        "not started: its rollout's start gate is closed"
    );
    assert!(rules
        .explain_operation(&waiting, &parent, true)
        .starts_with("the next claim takes it by O1"));
    let live = owned(snap(EngineKind::Spirit, Running), 50_000);
    assert_eq!(
        rules.explain_operation(&live, &parent, true),
        "owner ui-p1/driver-2 last heartbeat 50 s ago; reclaimable by O2 in 10 s if its heartbeat stops"
    );
    let dead = owned(snap(EngineKind::Spirit, Running), 90_000);
    assert!(rules
        .explain_operation(&dead, &parent, true)
        .ends_with("reclaimable now by O2"));
    assert_eq!(
        rules.explain_operation(&snap(EngineKind::Spirit, Completed), &parent, true),
        "finished: completed"
    );
}

#[test]
fn a_rollout_is_explained_by_its_operations_never_by_an_apply_arm() {
    let rules = Rules::default();
    let s = with(
        Snapshot {
            is_rollout: true,
            ..snap(EngineKind::Spirit, Running)
        },
        ControlOp::Cancel,
    );
    let e = rules.explain(&s);
    assert!(
        e.claim
            .starts_with("a rollout: its operations are claimed on their own"),
        "{}",
        e.claim
    );
    assert_eq!(
        e.requests[0].note,
        "taken by each of its operations it applies to"
    );
}

#[test]
fn a_request_taken_without_a_move_says_the_engine_is_asked_first() {
    let rules = Rules::default();
    let e = rules.explain(&with(
        owned(snap(EngineKind::Spirit, Running), 1_000),
        ControlOp::Cancel,
    ));
    assert_eq!(
        e.requests[0].note,
        "taken by its owner at its next step (it asks the engine first)"
    );
}

#[test]
fn durations_read_as_people_read_them() {
    assert_eq!(duration(0), "0 s");
    assert_eq!(duration(18_001), "19 s");
    assert_eq!(duration(245_000), "4 min 05 s");
    assert_eq!(duration(12_000_000), "3 h 20 min");
}
