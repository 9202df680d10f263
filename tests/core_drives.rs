//! End-to-end drives of the real worker core against the memory store and the fake engines,
//! with crashes at chosen points.

mod common;

use applyd::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind};
use applyd::testkit::Stepped;
use common::{World, STALE_MS};

#[test]
fn a_planetscale_apply_runs_to_completed_with_one_deploy_request() {
    let mut w = World::new(1);
    let id = w.submit("shop", EngineKind::PlanetScale, ApplyOptions::default());
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
    assert_eq!(w.engines.planetscale.deploy_requests_of(id), 1);
    let dr = w.engines.planetscale.requests.values().next().unwrap();
    assert_eq!(dr.deploys, 1);
    let path: Vec<ApplyState> = w
        .store
        .audit()
        .iter()
        .filter(|e| e.apply == id)
        .map(|e| e.to)
        .collect();
    for s in applyd::machine::claim::SETUP_PHASE {
        assert!(path.contains(s), "setup state {s} missing from {path:?}");
    }
    assert!(path.contains(&ApplyState::RevertWindow));
}

#[test]
fn a_spirit_apply_runs_to_completed() {
    let mut w = World::new(1);
    let id = w.submit("users", EngineKind::Spirit, ApplyOptions::default());
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
    assert_eq!(w.engines.spirit.runners_started, 1);
}

#[test]
fn a_deferred_spirit_cutover_waits_for_the_request_then_completes() {
    let mut w = World::new(1);
    let id = w.submit(
        "users",
        EngineKind::Spirit,
        ApplyOptions {
            defer_cutover: true,
            ..Default::default()
        },
    );
    w.run_until(2_000, |w| w.state(id) == ApplyState::WaitingForCutover);
    w.store.request(id, ControlOp::Cutover).unwrap();
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
    let req = w.store.request_status(id, ControlOp::Cutover).unwrap();
    assert_eq!(req.status, applyd::machine::ControlStatus::Completed);
}

/// The seed story: a worker dies in each PlanetScale setup-phase state; another reclaims after
/// the lease goes stale and finishes, with exactly one deploy request.
#[test]
fn a_crash_in_every_setup_phase_state_is_reclaimed_and_finishes_with_one_deploy_request() {
    for crash_in in applyd::machine::claim::SETUP_PHASE {
        let mut w = World::new(2);
        let id = w.submit("shop", EngineKind::PlanetScale, ApplyOptions::default());
        // Only worker 0 works until the apply reaches the chosen state.
        for _ in 0..500 {
            if w.state(id) == *crash_in {
                break;
            }
            if matches!(w.tick_worker(0), Some(Stepped::Waited(_))) {
                w.clock.advance(500);
            }
        }
        assert_eq!(w.state(id), *crash_in);
        // Let the crash land right after an engine call if one is due.
        w.tick_worker(0);
        w.crash(0);
        w.clock.advance(STALE_MS);
        w.run_until(3_000, |w| w.state(id) == ApplyState::Completed);
        assert_eq!(
            w.engines.planetscale.deploy_requests_of(id),
            1,
            "crash in {crash_in}"
        );
        let epochs: Vec<u64> = w
            .store
            .audit()
            .iter()
            .filter(|e| e.apply == id)
            .map(|e| e.epoch)
            .collect();
        assert!(
            epochs.windows(2).all(|p| p[0] <= p[1]),
            "epochs went backwards: {epochs:?}"
        );
        assert!(
            epochs.last().copied().unwrap_or(0) >= 2,
            "the apply was never reclaimed after the crash in {crash_in}"
        );
    }
}

#[test]
fn a_crash_between_creating_the_deploy_request_and_persisting_its_id_does_not_duplicate_it() {
    let mut w = World::new(2);
    let id = w.submit("shop", EngineKind::PlanetScale, ApplyOptions::default());
    for _ in 0..500 {
        if w.engines.planetscale.deploy_requests_of(id) == 1 {
            break;
        }
        if matches!(w.tick_worker(0), Some(Stepped::Waited(_))) {
            w.clock.advance(500);
        }
    }
    assert_eq!(
        w.state(id),
        ApplyState::CreatingDeployRequest,
        "the id is not persisted yet"
    );
    w.crash(0);
    w.clock.advance(STALE_MS);
    w.run_until(3_000, |w| w.state(id) == ApplyState::Completed);
    assert_eq!(w.engines.planetscale.deploy_requests_of(id), 1);
}

#[test]
fn a_spirit_crash_mid_copy_resumes_from_the_checkpoint() {
    let mut w = World::new(2);
    let id = w.submit("users", EngineKind::Spirit, ApplyOptions::default());
    w.run_until(200, |w| w.engines.spirit.runner_alive(id));
    w.clock.advance(6_000);
    w.tick_worker(0);
    w.crash(0);
    let checkpoint = w
        .engines
        .spirit
        .targets
        .values()
        .next()
        .unwrap()
        .checkpoint_rows;
    assert!(checkpoint > 0, "a checkpoint was taken before the crash");
    w.clock.advance(STALE_MS);
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
    assert_eq!(w.engines.spirit.runners_started, 2);
}

#[test]
fn spirit_stop_then_start_resumes_and_completes() {
    let mut w = World::new(1);
    let id = w.submit("users", EngineKind::Spirit, ApplyOptions::default());
    w.run_until(200, |w| w.engines.spirit.runner_alive(id));
    w.store.request(id, ControlOp::Stop).unwrap();
    w.run_until(200, |w| {
        w.state(id) == ApplyState::Stopped && w.workers[0].lease().is_none()
    });
    assert!(!w.engines.spirit.runner_alive(id));
    w.store.request(id, ControlOp::Start).unwrap();
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
    for op in [ControlOp::Stop, ControlOp::Start] {
        assert_eq!(
            w.store.request_status(id, op).unwrap().status,
            applyd::machine::ControlStatus::Completed,
            "{op}"
        );
    }
}

#[test]
fn stop_and_start_pending_together_stop_first_then_resume_in_the_same_claim() {
    let mut w = World::new(1);
    let id = w.submit("users", EngineKind::Spirit, ApplyOptions::default());
    w.run_until(200, |w| w.engines.spirit.runner_alive(id));
    w.store.request(id, ControlOp::Stop).unwrap();
    w.store.request(id, ControlOp::Start).unwrap();
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
    let path: Vec<ApplyState> = w
        .store
        .audit()
        .iter()
        .filter(|e| e.apply == id)
        .map(|e| e.to)
        .collect();
    assert!(
        path.contains(&ApplyState::Stopped) && path.contains(&ApplyState::Resuming),
        "{path:?}"
    );
}

#[test]
fn planetscale_stop_is_refused_with_a_reason_and_cancel_works() {
    let mut w = World::new(1);
    let id = w.submit(
        "shop",
        EngineKind::PlanetScale,
        ApplyOptions {
            defer_deploy: true,
            ..Default::default()
        },
    );
    assert!(
        w.store.request(id, ControlOp::Stop).is_err(),
        "the API refuses a PlanetScale stop"
    );
    w.run_until(2_000, |w| w.state(id) == ApplyState::WaitingForDeploy);
    w.store.request(id, ControlOp::Cancel).unwrap();
    w.run_until(500, |w| w.state(id) == ApplyState::Cancelled);
    assert_eq!(
        w.engines.planetscale.truth(id),
        Some(applyd::machine::EngineState::Cancelled)
    );
}

#[test]
fn a_deferred_deploy_waits_for_start() {
    let mut w = World::new(1);
    let id = w.submit(
        "shop",
        EngineKind::PlanetScale,
        ApplyOptions {
            defer_deploy: true,
            skip_revert: true,
            ..Default::default()
        },
    );
    w.run_until(2_000, |w| w.state(id) == ApplyState::WaitingForDeploy);
    w.clock.advance(60_000);
    for _ in 0..20 {
        w.tick_worker(0);
    }
    assert_eq!(w.state(id), ApplyState::WaitingForDeploy);
    w.store.request(id, ControlOp::Start).unwrap();
    w.run_until(2_000, |w| w.state(id) == ApplyState::Completed);
}

#[test]
fn a_second_apply_on_a_busy_target_is_refused_and_a_stopped_one_cannot_restart_over_it() {
    let mut w = World::new(1);
    let first = w.submit("users", EngineKind::Spirit, ApplyOptions::default());
    let err = w
        .store
        .submit(applyd::store::NewApply {
            allow_destructive: false,
            rollout: None,
            target: applyd::store::Target {
                database: "users".into(),
                environment: "prod".into(),
            },
            engine: EngineKind::Spirit,
            ddl: vec!["ALTER TABLE t ADD COLUMN x INT".into()],
            options: ApplyOptions::default(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("another active apply"), "{err}");
    w.run_until(200, |w| w.engines.spirit.runner_alive(first));
    w.store.request(first, ControlOp::Stop).unwrap();
    w.run_until(200, |w| {
        w.state(first) == ApplyState::Stopped && w.workers[0].lease().is_none()
    });
    let second = w.submit("users", EngineKind::Spirit, ApplyOptions::default());
    w.store.request(first, ControlOp::Start).unwrap();
    w.run_until(3_000, |w| w.state(second) == ApplyState::Completed);
    let start = w.store.request_status(first, ControlOp::Start).unwrap();
    assert_eq!(start.status, applyd::machine::ControlStatus::Failed);
    assert!(start.message.unwrap().contains("another active apply"));
    assert_eq!(w.state(first), ApplyState::Stopped);
}

#[test]
fn bad_ddl_fails_the_spirit_apply_permanently() {
    let mut w = World::new(1);
    let id = w
        .store
        .submit(applyd::store::NewApply {
            allow_destructive: false,
            rollout: None,
            target: applyd::store::Target {
                database: "users".into(),
                environment: "prod".into(),
            },
            engine: EngineKind::Spirit,
            // Accepted at submit; the table already has `id`, which only the engine finds out.
            ddl: vec!["ALTER TABLE users ADD COLUMN id INT".into()],
            options: ApplyOptions::default(),
        })
        .unwrap();
    w.run_until(200, |w| w.state(id) == ApplyState::Failed);
}
