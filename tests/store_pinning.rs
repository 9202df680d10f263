//! The reviewed change is pinned, on both stores and through the operator's own executor: a
//! stored change altered after submit is never handed to an engine, neither at its first start
//! nor at a resume; the drive fails the apply closed with the reason instead. An unaltered
//! change runs, so the engine below is really asked.

#[macro_use]
mod store_support;

use std::sync::Mutex;

use applyd::engine::{Engine, Reply};
use applyd::machine::table::RunnerGone;
use applyd::machine::{ApplyState, EngineCall, EngineKind, Params, Probe, Rules};
use applyd::operator::{run_drive, Immediate};
use applyd::store::{ApplyRecord, Claimed};
use applyd::worker::{BranchStatus, Finish, Observation, RunnerStatus};
use async_trait::async_trait;
use store_support::{new_apply, Env};

const STALE: u64 = Params::DEFAULT.stale_after_ms;
const ALTERED: &str = "ALTER TABLE users ADD COLUMN nickname VARCHAR(255)";

/// An engine that records every call: a Spirit runner that copies until its process dies, and
/// a PlanetScale branch that is ready with changes pending.
#[derive(Default)]
struct Recording {
    calls: Mutex<Vec<EngineCall>>,
    runner_alive: Mutex<bool>,
}

impl Recording {
    fn calls(&self) -> Vec<EngineCall> {
        self.calls.lock().unwrap().clone()
    }

    /// The process hosting the runner died.
    fn kill_runner(&self) {
        *self.runner_alive.lock().unwrap() = false;
    }
}

#[async_trait]
impl Engine for Recording {
    async fn probe(&self, _apply: &ApplyRecord, _epoch: u64, probe: Probe) -> Reply {
        self.probe_obs(probe).into()
    }

    async fn call(&self, _apply: &ApplyRecord, _epoch: u64, call: EngineCall) -> Reply {
        self.calls.lock().unwrap().push(call);
        if call == EngineCall::StartRunner {
            *self.runner_alive.lock().unwrap() = true;
        }
        Observation::Accepted.into()
    }
}

impl Recording {
    fn probe_obs(&self, probe: Probe) -> Observation {
        match probe {
            Probe::RunnerStatus if *self.runner_alive.lock().unwrap() => {
                Observation::Runner(RunnerStatus::Copying)
            }
            Probe::RunnerStatus => Observation::Runner(RunnerStatus::Gone(RunnerGone::WorkLeft)),
            Probe::GetBranch => Observation::Branch(BranchStatus::Ready),
            Probe::DiffBranch => Observation::BranchDiff { pending: true },
            other => panic!("the drives here never get as far as {other:?}"),
        }
    }
}

async fn claim(env: &Env, owner: &str) -> Claimed {
    env.store
        .claim(owner)
        .await
        .expect("claim")
        .expect("something to claim")
}

/// Drive the claimed apply until its drive ends (a live runner is polled until the budget).
async fn drive(env: &Env, engine: &Recording, claimed: &Claimed) -> Finish {
    run_drive(
        env.store.as_ref(),
        engine,
        claimed,
        &Rules::default(),
        &Immediate,
        40,
    )
    .await
    .finish
}

async fn assert_failed_closed(env: &Env, id: u64) {
    let row = env.row(id).await;
    assert_eq!(row.state, "failed", "a drifted change fails closed");
    let why = row.error.expect("the reason is recorded");
    assert!(
        why.starts_with(
            "the stored change no longer matches the change reviewed at submit; it was not run: \
             its statements now fingerprint as sha256:"
        ),
        "{why}"
    );
    assert!(why.contains("not as the reviewed sha256:"), "{why}");
}

async fn a_change_altered_before_its_first_start_is_never_run(env: Env) {
    for engine_kind in [EngineKind::Spirit, EngineKind::PlanetScale] {
        let db = format!("db_{engine_kind}");
        let id = env.store.submit(new_apply(&db, engine_kind)).await.unwrap();
        env.alter_stored_ddl(id, &[ALTERED]).await;
        let engine = Recording::default();
        let claimed = claim(&env, "w1").await;
        assert_eq!(claimed.lease.apply, id);
        assert_eq!(drive(&env, &engine, &claimed).await, Finish::Settled);
        assert!(
            !engine.calls().iter().any(|c| c.hands_over_ddl()),
            "{engine_kind}: {:?}",
            engine.calls()
        );
        assert_failed_closed(&env, id).await;
    }
    env.cleanup().await;
}

async fn a_change_altered_while_it_runs_is_never_resumed(env: Env) {
    let id = env
        .store
        .submit(new_apply("users", EngineKind::Spirit))
        .await
        .unwrap();
    let engine = Recording::default();
    let first = claim(&env, "w1").await;
    assert_eq!(
        drive(&env, &engine, &first).await,
        Finish::Inconsistent("the drive exceeded its command budget"),
        "the reviewed change runs and is polled"
    );
    assert_eq!(engine.calls(), vec![EngineCall::StartRunner]);
    assert_eq!(env.row(id).await.state, "running");

    // The runner goes on with the change it was given; the stored one is altered, then the
    // runner's process dies and a peer reclaims the apply.
    env.alter_stored_ddl(id, &[ALTERED]).await;
    engine.kill_runner();
    env.advance(STALE);
    let second = claim(&env, "w2").await;
    assert_eq!(second.pre_claim, ApplyState::Running);
    assert_eq!(drive(&env, &engine, &second).await, Finish::Settled);
    assert_eq!(
        engine.calls(),
        vec![EngineCall::StartRunner],
        "the resume must not hand the altered change to Spirit"
    );
    assert_failed_closed(&env, id).await;
    env.cleanup().await;
}

async fn the_same_change_written_differently_is_still_the_reviewed_one(env: Env) {
    let id = env
        .store
        .submit(new_apply("users", EngineKind::Spirit))
        .await
        .unwrap();
    // Whitespace, comments and keyword case do not change the fingerprint.
    env.alter_stored_ddl(
        id,
        &["alter   table users /* same */ add column nickname varchar(64)"],
    )
    .await;
    let engine = Recording::default();
    let claimed = claim(&env, "w1").await;
    drive(&env, &engine, &claimed).await;
    assert_eq!(engine.calls(), vec![EngineCall::StartRunner]);
    assert_eq!(env.row(id).await.state, "running");
    env.cleanup().await;
}

conformance!(
    a_change_altered_before_its_first_start_is_never_run,
    a_change_altered_while_it_runs_is_never_resumed,
    the_same_change_written_differently_is_still_the_reviewed_one,
);
