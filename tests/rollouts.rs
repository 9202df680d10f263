//! Rollouts driven end to end by the real worker core on the memory store and the fake engines:
//! one change across several deployments and table steps, with every policy. After every step
//! the run is checked against the rollout rules: the parent is the derivation of its operations,
//! no operation left `pending` through a closed start gate, at most one operation cuts over at a
//! time and in cutover order, and nothing starts after a halt.

mod common;

use applyd::machine::rollout::{
    cutover_gate, derive_parent, start_gate, CutoverGate, CutoverPolicy, Member, OnFailure,
    RolloutPlan, StartGate,
};
use applyd::machine::{ApplyOptions, ApplyState, ControlOp, ControlStatus, EngineKind};
use applyd::store::memory::MemoryRow;
use applyd::store::{NewApply, StoreError, Target};
use common::World;

fn new_apply(db: &str, engine: EngineKind, ddl: &[&str]) -> NewApply {
    NewApply {
        allow_destructive: false,
        rollout: None,
        target: Target {
            database: db.into(),
            environment: "prod".into(),
        },
        engine,
        ddl: ddl.iter().map(|s| s.to_string()).collect(),
        options: ApplyOptions {
            skip_revert: true,
            ..ApplyOptions::default()
        },
    }
}

fn plan(deployments: &[&str], cutover: CutoverPolicy, on_failure: OnFailure) -> RolloutPlan {
    RolloutPlan {
        deployments: deployments.iter().map(|d| d.to_string()).collect(),
        cutover_policy: cutover,
        on_failure,
        max_drivers_per_apply: 2,
        table_steps: false,
    }
}

const ONE_TABLE: &[&str] = &["ALTER TABLE users ADD COLUMN nickname VARCHAR(64)"];

fn members(row: &MemoryRow) -> Vec<Member> {
    row.members()
}

/// Checks the rollout rules between two snapshots of one rollout.
struct Checker {
    last: Option<MemoryRow>,
    /// Operation indexes in the order they started.
    started: Vec<usize>,
    /// Operation indexes in the order they entered `cutting_over`.
    cut_over: Vec<usize>,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            last: None,
            started: Vec::new(),
            cut_over: Vec::new(),
        }
    }

    fn check(&mut self, row: &MemoryRow) {
        let policy = row.rollout.expect("a rollout");
        let now = members(row);
        assert_eq!(
            row.state,
            derive_parent(&policy, &now),
            "the parent is its operations' derivation: {now:?}"
        );
        let cutting = now
            .iter()
            .filter(|m| m.state == ApplyState::CuttingOver)
            .count();
        assert!(cutting <= 1, "two cutovers at once: {now:?}");
        if let Some(last) = &self.last {
            let before = members(last);
            let last_policy = last.rollout.expect("a rollout");
            for (i, (b, n)) in before.iter().zip(&now).enumerate() {
                if b.state == ApplyState::Pending && n.state != ApplyState::Pending {
                    if n.state != ApplyState::Cancelled {
                        assert_eq!(
                            start_gate(&last_policy, &before, i),
                            StartGate::Open,
                            "operation {i} started through a closed gate: {before:?}"
                        );
                    }
                    self.started.push(i);
                }
                if b.state == ApplyState::WaitingForCutover && n.state == ApplyState::CuttingOver {
                    assert_eq!(
                        cutover_gate(&last_policy, &before, i),
                        CutoverGate::Open,
                        "operation {i} cut over through a closed gate: {before:?}"
                    );
                    self.cut_over.push(i);
                }
            }
        }
        self.last = Some(row.clone());
    }
}

/// One round: every worker steps once, the rules checked after each step.
fn round(world: &mut World, id: u64, checker: &mut Checker) {
    for w in 0..world.workers.len() {
        world.tick_worker(w);
        checker.check(&world.store.row(id).unwrap());
    }
}

/// Run the workers until the rollout is terminal and no driver holds any of it (the last
/// drives settle their requests), checking after every step.
fn run(world: &mut World, id: u64, max_steps: usize) -> Checker {
    let mut checker = Checker::new();
    for _ in 0..max_steps {
        let row = world.store.row(id).unwrap();
        checker.check(&row);
        let driven = world
            .workers
            .iter()
            .any(|w| w.lease().is_some_and(|l| l.apply == id));
        if row.state.is_terminal() && row.state != ApplyState::Stopped && !driven {
            return checker;
        }
        let mut moved = false;
        for w in 0..world.workers.len() {
            if world.tick_worker(w).is_some() {
                moved = true;
            }
            checker.check(&world.store.row(id).unwrap());
        }
        if !moved {
            world.clock.advance(1_000);
        } else {
            world.clock.advance(200);
        }
    }
    panic!(
        "rollout {id} not terminal after {max_steps} steps: {:?}\n{}",
        members(&world.store.row(id).unwrap()),
        world.trace[world.trace.len().saturating_sub(40)..].join("\n")
    );
}

#[test]
fn a_rolling_rollout_completes_each_deployment_before_the_next() {
    let mut world = World::new(3);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::PlanetScale, ONE_TABLE),
            &plan(
                &["us-east-1", "us-west-2", "eu-west-1"],
                CutoverPolicy::Rolling,
                OnFailure::Halt,
            ),
        )
        .unwrap()
        .id;
    let checker = run(&mut world, id, 20_000);
    let row = world.store.row(id).unwrap();
    assert_eq!(row.state, ApplyState::Completed);
    assert_eq!(checker.started, vec![0, 1, 2]);
    assert_eq!(checker.cut_over, vec![0, 1, 2]);
    for op in &row.operations {
        assert_eq!(op.state, ApplyState::Completed);
        assert_eq!(
            world.engines.planetscale.deploy_requests_of(op.id),
            1,
            "one deploy request per operation"
        );
    }
}

#[test]
fn a_parallel_rollout_caps_its_drivers_and_cuts_over_one_at_a_time_in_order() {
    let mut world = World::new(4);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::PlanetScale, ONE_TABLE),
            &plan(
                &["a", "b", "c", "d"],
                CutoverPolicy::Parallel,
                OnFailure::Halt,
            ),
        )
        .unwrap()
        .id;
    let mut peak = 0;
    let mut checker = Checker::new();
    for _ in 0..20_000 {
        let row = world.store.row(id).unwrap();
        checker.check(&row);
        let copying = row
            .operations
            .iter()
            .filter(|o| {
                // Copying: started and not yet at the cutover gate.
                !matches!(
                    o.state,
                    ApplyState::Pending
                        | ApplyState::Completed
                        | ApplyState::WaitingForCutover
                        | ApplyState::CuttingOver
                        | ApplyState::RevertWindow
                        | ApplyState::SkippingRevert
                )
            })
            .count();
        assert!(copying <= 2, "max_drivers_per_apply 2: {:?}", members(&row));
        peak = peak.max(copying);
        if row.state == ApplyState::Completed {
            break;
        }
        round(&mut world, id, &mut checker);
        world.clock.advance(500);
    }
    assert_eq!(world.state(id), ApplyState::Completed);
    assert_eq!(peak, 2, "two operations copied at once");
    assert_eq!(checker.cut_over, vec![0, 1, 2, 3], "cutovers in order");
}

#[test]
fn a_barrier_rollout_cuts_over_only_once_every_deployment_is_at_the_gate() {
    let mut world = World::new(3);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::PlanetScale, ONE_TABLE),
            &plan(&["a", "b", "c"], CutoverPolicy::Barrier, OnFailure::Halt),
        )
        .unwrap()
        .id;
    let mut first_cutover_saw = None;
    let mut checker = Checker::new();
    for _ in 0..20_000 {
        let row = world.store.row(id).unwrap();
        checker.check(&row);
        if first_cutover_saw.is_none() && checker.cut_over.len() == 1 {
            first_cutover_saw = Some(members(checker.last.as_ref().unwrap()));
        }
        if row.state == ApplyState::Completed {
            break;
        }
        round(&mut world, id, &mut checker);
        world.clock.advance(500);
    }
    assert_eq!(world.state(id), ApplyState::Completed);
    assert_eq!(checker.cut_over, vec![0, 1, 2]);
    let at_first = first_cutover_saw.expect("a cutover happened");
    assert!(
        at_first
            .iter()
            .skip(1)
            .all(|m| m.state == ApplyState::WaitingForCutover),
        "the first cutover waited for the barrier: {at_first:?}"
    );
}

#[test]
fn table_steps_run_table_by_table_within_each_deployment() {
    let mut world = World::new(2);
    let mut p = plan(&["a", "b"], CutoverPolicy::Rolling, OnFailure::Halt);
    p.table_steps = true;
    let id = world
        .store
        .submit_rollout(
            new_apply(
                "shop",
                EngineKind::Spirit,
                &[
                    "ALTER TABLE users ADD COLUMN nickname VARCHAR(64)",
                    "ALTER TABLE orders ADD COLUMN note VARCHAR(64)",
                ],
            ),
            &p,
        )
        .unwrap()
        .id;
    let row = world.store.row(id).unwrap();
    let keys: Vec<(String, String, Vec<String>)> = row
        .operations
        .iter()
        .map(|o| (o.deployment.clone(), o.key.clone(), o.spec.ddl.clone()))
        .collect();
    assert_eq!(keys.len(), 4);
    assert_eq!((keys[1].0.as_str(), keys[1].1.as_str()), ("a", "step-2"));
    assert!(keys[1].2[0].contains("orders"));
    let checker = run(&mut world, id, 40_000);
    assert_eq!(world.state(id), ApplyState::Completed);
    assert_eq!(checker.started, vec![0, 1, 2, 3]);
}

/// Fail the Spirit runner of operation `i` once it runs.
fn fail_when_running(world: &mut World, id: u64, i: usize, checker: &mut Checker) {
    for _ in 0..20_000 {
        let row = world.store.row(id).unwrap();
        checker.check(&row);
        let op = &row.operations[i];
        if op.state == ApplyState::Running && world.engines.spirit.runner_alive(op.id) {
            let now = world.now();
            assert!(world.engines.spirit.fail_runner(now, op.id, false));
            return;
        }
        round(world, id, checker);
        world.clock.advance(500);
    }
    panic!("operation {i} never ran");
}

#[test]
fn a_halted_rollout_starts_nothing_after_the_failure_and_fails_once_settled() {
    let mut world = World::new(2);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "b", "c"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap()
        .id;
    let mut checker = Checker::new();
    fail_when_running(&mut world, id, 0, &mut checker);
    let tail = run(&mut world, id, 20_000);
    let row = world.store.row(id).unwrap();
    assert_eq!(row.state, ApplyState::Failed);
    assert_eq!(row.operations[0].state, ApplyState::Failed);
    assert!(tail.started.is_empty(), "nothing started after the halt");
    assert!(row.operations[1..]
        .iter()
        .all(|o| o.state == ApplyState::Pending));
}

#[test]
fn a_continuing_rollout_runs_the_rest_and_still_fails() {
    let mut world = World::new(2);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(
                &["a", "b", "c"],
                CutoverPolicy::Rolling,
                OnFailure::Continue,
            ),
        )
        .unwrap()
        .id;
    let mut checker = Checker::new();
    fail_when_running(&mut world, id, 0, &mut checker);
    run(&mut world, id, 40_000);
    let row = world.store.row(id).unwrap();
    assert_eq!(row.state, ApplyState::Failed);
    let states: Vec<ApplyState> = row.operations.iter().map(|o| o.state).collect();
    assert_eq!(
        states,
        vec![
            ApplyState::Failed,
            ApplyState::Completed,
            ApplyState::Completed
        ]
    );
}

#[test]
fn a_cancel_reaches_the_running_operation_and_withdraws_the_rest() {
    let mut world = World::new(2);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "b", "c"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap()
        .id;
    world.run_until(5_000, |w| {
        w.store.row(id).unwrap().operations[0].state == ApplyState::Running
    });
    world.store.request(id, ControlOp::Cancel).unwrap();
    let row = world.store.row(id).unwrap();
    assert!(row.operations[1..]
        .iter()
        .all(|o| o.state == ApplyState::Cancelled));
    run(&mut world, id, 20_000);
    assert_eq!(world.state(id), ApplyState::Cancelled);
    assert_eq!(
        world
            .store
            .request_status(id, ControlOp::Cancel)
            .unwrap()
            .status,
        ControlStatus::Completed
    );
}

#[test]
fn a_stopped_rollout_starts_nothing_new_until_a_start_resumes_it() {
    let mut world = World::new(2);
    let id = world
        .store
        .submit_rollout(
            NewApply {
                // Spirit orders cutovers across operations only when it waits on its sentinel.
                options: ApplyOptions {
                    defer_cutover: true,
                    ..ApplyOptions::default()
                },
                ..new_apply("shop", EngineKind::Spirit, ONE_TABLE)
            },
            &plan(&["a", "b"], CutoverPolicy::Parallel, OnFailure::Halt),
        )
        .unwrap()
        .id;
    world.run_until(5_000, |w| {
        w.store.row(id).unwrap().operations[0].state == ApplyState::Running
    });
    world.store.request(id, ControlOp::Stop).unwrap();
    world.run_until(5_000, |w| w.state(id) == ApplyState::Stopped);
    // Nothing moves while stopped, however long the workers poll.
    for _ in 0..50 {
        for w in 0..2 {
            world.tick_worker(w);
        }
        world.clock.advance(1_000);
    }
    let row = world.store.row(id).unwrap();
    assert_eq!(row.state, ApplyState::Stopped);
    assert!(row
        .operations
        .iter()
        .all(|o| matches!(o.state, ApplyState::Stopped | ApplyState::Pending)));
    assert_eq!(
        world
            .store
            .request_status(id, ControlOp::Stop)
            .unwrap()
            .status,
        ControlStatus::Completed
    );
    world.store.request(id, ControlOp::Start).unwrap();
    // Both wait for the person's cutover (their sentinels), which then reaches them in turn.
    let at_gate = |w: &World| {
        w.store
            .row(id)
            .unwrap()
            .operations
            .iter()
            .all(|o| o.state == ApplyState::WaitingForCutover)
    };
    for _ in 0..20_000 {
        if at_gate(&world) {
            break;
        }
        for w in 0..2 {
            world.tick_worker(w);
        }
        world.clock.advance(200);
    }
    assert!(
        at_gate(&world),
        "{:?}",
        members(&world.store.row(id).unwrap())
    );
    world.store.request(id, ControlOp::Cutover).unwrap();
    run(&mut world, id, 40_000);
    assert_eq!(world.state(id), ApplyState::Completed);
}

#[test]
fn a_crashed_driver_s_operation_is_reclaimed_and_the_rollout_finishes() {
    let mut world = World::new(2);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "b"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap()
        .id;
    world.run_until(5_000, |w| {
        w.store.row(id).unwrap().operations[0].state == ApplyState::Running
    });
    let owner = (0..2)
        .find(|w| world.workers[*w].lease().is_some_and(|l| l.apply == id))
        .expect("someone drives it");
    world.crash(owner);
    run(&mut world, id, 40_000);
    assert_eq!(world.state(id), ApplyState::Completed);
    assert!(world
        .trace
        .iter()
        .any(|l| l.contains(&format!("claims {id} via O2"))));
}

#[test]
fn a_rollout_that_cannot_be_honoured_is_refused_naming_its_field() {
    let world = World::new(1);
    let e = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "a"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid { field: "deployments", message } if message.contains("twice")),
        "{e}"
    );
    assert!(world.store.rows().is_empty(), "nothing written");
    let first = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "b"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap();
    // The same change again is adopted; another change on a busy deployment is refused.
    let again = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "b"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap();
    assert!(again.adopted && again.id == first.id);
    let e = world
        .store
        .submit_rollout(
            new_apply(
                "shop",
                EngineKind::Spirit,
                &["ALTER TABLE users ADD COLUMN other INT"],
            ),
            &plan(&["b", "c"], CutoverPolicy::Rolling, OnFailure::Halt),
        )
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::ActiveApplyExists { target, existing } if target == "shop/prod@b" && *existing == first.id),
        "{e}"
    );
}

#[test]
fn a_paused_rollout_holds_its_later_work_until_a_release_lets_it_continue() {
    let mut world = World::new(2);
    let id = world
        .store
        .submit_rollout(
            new_apply("shop", EngineKind::Spirit, ONE_TABLE),
            &plan(&["a", "b", "c"], CutoverPolicy::Rolling, OnFailure::Pause),
        )
        .unwrap()
        .id;
    let mut checker = Checker::new();
    fail_when_running(&mut world, id, 0, &mut checker);
    world.run_until(5_000, |w| w.state(id) == ApplyState::Paused);
    for _ in 0..50 {
        for w in 0..2 {
            world.tick_worker(w);
        }
        world.clock.advance(1_000);
    }
    let row = world.store.row(id).unwrap();
    assert_eq!(
        row.state,
        ApplyState::Paused,
        "held while later work remains"
    );
    assert!(row.operations[1..]
        .iter()
        .all(|o| o.state == ApplyState::Pending));
    world.store.request(id, ControlOp::Release).unwrap();
    assert_eq!(
        world
            .store
            .request_status(id, ControlOp::Release)
            .unwrap()
            .status,
        ControlStatus::Completed
    );
    assert!(world.store.row(id).unwrap().rollout.unwrap().released);
    run(&mut world, id, 40_000);
    let row = world.store.row(id).unwrap();
    assert_eq!(
        row.state,
        ApplyState::Failed,
        "the verdict still counts the failure"
    );
    assert!(row.operations[1..]
        .iter()
        .all(|o| o.state == ApplyState::Completed));
}
