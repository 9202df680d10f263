//! Fault schedules as proptest values: instead of drawing faults from the seed, the simulator
//! takes a generated `Vec` of timed faults, and proptest shrinks a failing one to a minimal
//! schedule. Shown on the #302 mutant: one fault that takes the owner away in the setup phase
//! is enough to wedge a PlanetScale apply.

use applyd::engine::fake::FakeTimings;
use applyd::machine::{ApplyOptions, ControlOp, EngineKind, Mutant};
use applyd_sim::preset::{ApplyPlan, CommandFaults};
use applyd_sim::{Fault, Preset, Sim, TimedFault, World};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const WINDOW_MS: u64 = 120_000;

fn fault() -> impl Strategy<Value = Fault> {
    let worker = 0..2u8;
    prop_oneof![
        (worker.clone(), 1_000..120_000u64)
            .prop_map(|(worker, down_ms)| Fault::Crash { worker, down_ms }),
        (worker.clone(), 1_000..120_000u64)
            .prop_map(|(worker, for_ms)| Fault::Pause { worker, for_ms }),
        worker
            .clone()
            .prop_map(|worker| Fault::LoseReply { worker }),
        worker.prop_map(|worker| Fault::EngineError { worker }),
        (1_000..60_000u64).prop_map(|for_ms| Fault::StoreOutage { for_ms }),
        proptest::sample::select(vec![
            ControlOp::Cancel,
            ControlOp::Cutover,
            ControlOp::Start
        ])
        .prop_map(|op| Fault::Request { apply: 0, op }),
    ]
}

fn schedule() -> impl Strategy<Value = Vec<TimedFault>> {
    proptest::collection::vec(
        (0..WINDOW_MS, fault()).prop_map(|(at_ms, fault)| TimedFault { at_ms, fault }),
        0..12,
    )
}

/// Two workers, one PlanetScale apply submitted at once; only the given faults happen.
fn run(faults: Vec<TimedFault>, mutant: Option<Mutant>) -> Result<(), String> {
    let world = World {
        preset: Preset {
            workers: 2,
            applies: 1,
            targets: 1,
            fault_ms: WINDOW_MS,
            ..Preset::CI
        },
        timings: FakeTimings::default(),
        applies: vec![ApplyPlan {
            engine: EngineKind::PlanetScale,
            target: 0,
            options: ApplyOptions {
                skip_revert: true,
                ..ApplyOptions::default()
            },
            submit_at_ms: 0,
            bad_ddl: false,
            rollout: None,
        }],
        faults,
        command_faults: CommandFaults::default(),
    };
    match Sim::new(world, ChaCha8Rng::seed_from_u64(7), mutant, false)
        .run()
        .failure
    {
        None => Ok(()),
        Some(f) => Err(f.to_string()),
    }
}

fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

#[test]
fn a_failing_fault_schedule_shrinks_to_one_fault() {
    let result = runner().run(&schedule(), |faults| {
        run(faults, Some(Mutant::SetupPhaseUnclaimable)).map_err(TestCaseError::fail)
    });
    match result {
        Err(TestError::Fail(why, minimal)) => {
            println!("minimal schedule: {minimal:?}\n{why}");
            assert_eq!(minimal.len(), 1, "not minimal: {minimal:?}");
            assert!(
                matches!(
                    minimal[0].fault,
                    Fault::Crash { .. } | Fault::Pause { .. } | Fault::StoreOutage { .. }
                ),
                "{minimal:?}"
            );
            assert!(why.to_string().contains("wedged"), "{why}");
        }
        other => panic!("the mutant should fail some schedule: {other:?}"),
    }
}

#[test]
fn generated_fault_schedules_keep_the_shipped_rules_green() {
    let result = runner().run(&schedule(), |faults| {
        run(faults, None).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
