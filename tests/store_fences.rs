//! Every guarded write is fenced by its lease, and by the SQL itself: a displaced owner's write
//! changes nothing, in both stores; and in the MySQL store it still changes nothing when the
//! check under the row lock is bypassed (the historical-bug switch `unfenced-write` turns every
//! in-process epoch check off), because each UPDATE carries its own `lease_epoch = ?`.

mod store_support;

use applyd::machine::{ApplyState, ControlOp, EngineKind, Params, Rules};
use applyd::store::{Lease, StoreError};
use applyd::worker::{ApplyId, ResumeState};
use store_support::Env;

/// One guarded write, made with the given lease.
#[derive(Debug, Clone, Copy)]
enum GuardedWrite {
    State,
    Fail,
    Heartbeat,
    HeartbeatAll,
    Release,
    Park,
    CompleteRequest,
    FailRequest,
}

const ALL: &[GuardedWrite] = &[
    GuardedWrite::State,
    GuardedWrite::Fail,
    GuardedWrite::Heartbeat,
    GuardedWrite::HeartbeatAll,
    GuardedWrite::Release,
    GuardedWrite::Park,
    GuardedWrite::CompleteRequest,
    GuardedWrite::FailRequest,
];

/// The writes that touch the operation row, which its own epoch fences.
const OPERATION_WRITES: &[GuardedWrite] = &[
    GuardedWrite::State,
    GuardedWrite::Fail,
    GuardedWrite::Heartbeat,
    GuardedWrite::HeartbeatAll,
    GuardedWrite::Release,
    GuardedWrite::Park,
];

impl GuardedWrite {
    async fn run(self, env: &Env, lease: &Lease) -> Result<(), StoreError> {
        let s = &env.store;
        match self {
            GuardedWrite::State => {
                s.write(
                    lease,
                    ApplyState::WaitingForCutover,
                    ResumeState::default(),
                    None,
                )
                .await
            }
            GuardedWrite::Fail => s.fail_apply(lease, "the drive panicked").await,
            GuardedWrite::Heartbeat => s.heartbeat(lease).await,
            // The batch reports the lost lease by apply; read as the single heartbeat does.
            GuardedWrite::HeartbeatAll => {
                let lost = s.heartbeat_all(std::slice::from_ref(lease)).await?;
                if lost.contains(lease) {
                    Err(StoreError::LeaseLost {
                        apply: lease.apply,
                        epoch: lease.epoch,
                    })
                } else {
                    Ok(())
                }
            }
            GuardedWrite::Release => s.release(lease).await,
            GuardedWrite::Park => s.park(lease).await,
            GuardedWrite::CompleteRequest => s.complete_request(lease, ControlOp::Cutover).await,
            GuardedWrite::FailRequest => s.fail_request(lease, ControlOp::Cutover, "no").await,
        }
    }
}

/// A PlanetScale apply waiting for its deferred cutover (a wait that parks) with a pending
/// cutover, claimed by `w1`, gone stale and reclaimed by `w2`: returns the apply, the displaced
/// lease and the current one.
async fn displaced(env: &Env) -> (ApplyId, Lease, Lease) {
    let mut new = store_support::new_apply("users", EngineKind::PlanetScale);
    new.options.defer_cutover = true;
    let id = env.store.submit(new).await.expect("submit");
    let old = env.store.claim("w1").await.unwrap().expect("claim").lease;
    env.store
        .write(
            &old,
            ApplyState::WaitingForCutover,
            ResumeState::default(),
            None,
        )
        .await
        .expect("the owner's write");
    env.store
        .request(id, ControlOp::Cutover)
        .await
        .expect("a running apply accepts a cutover");
    env.advance(Params::DEFAULT.stale_after_ms);
    let new = env.store.claim("w2").await.unwrap().expect("reclaim").lease;
    assert_eq!((old.epoch, new.epoch), (1, 2));
    (id, old, new)
}

async fn a_displaced_owner_changes_nothing(env: Env) {
    for write in ALL {
        let (_, old, _) = displaced(&env).await;
        let before = env.snapshot().await;
        let got = write.run(&env, &old).await;
        assert!(
            matches!(got, Err(StoreError::LeaseLost { epoch: 1, .. })),
            "{write:?} by a displaced owner: {got:?}"
        );
        assert_eq!(env.snapshot().await, before, "{write:?} changed something");
        // The next round uses a target of its own.
        finish(&env).await;
    }
    env.cleanup().await;
}

async fn an_operation_held_at_another_epoch_fences_the_writes_that_touch_it(env: Env) {
    for write in OPERATION_WRITES {
        let (id, _, current) = displaced(&env).await;
        env.force_operation_epoch(id, current.epoch + 1).await;
        let before = env.snapshot().await;
        let got = write.run(&env, &current).await;
        assert!(
            matches!(got, Err(StoreError::LeaseLost { .. })),
            "{write:?} with the apply's lease but not the operation's: {got:?}"
        );
        assert_eq!(env.snapshot().await, before, "{write:?} changed something");
        env.force_operation_epoch(id, current.epoch).await;
        finish(&env).await;
    }
    env.cleanup().await;
}

/// End every active apply through its owner, so the next round's submit finds the target free.
async fn finish(env: &Env) {
    for (id, row) in env.rows().await {
        if let (Some(owner), false) = (row.owner.clone(), row.state == "completed") {
            let lease = Lease {
                apply: id,
                owner,
                epoch: row.epoch,
            };
            env.store
                .write(&lease, ApplyState::Completed, ResumeState::default(), None)
                .await
                .expect("the owner finishes");
        }
    }
}

#[tokio::test]
async fn memory_a_displaced_owner_changes_nothing() {
    a_displaced_owner_changes_nothing(Env::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_displaced_owner_changes_nothing() {
    if let Some(env) = Env::mysql().await {
        a_displaced_owner_changes_nothing(env).await;
    }
}

#[tokio::test]
async fn memory_an_operation_held_at_another_epoch_fences_the_writes_that_touch_it() {
    an_operation_held_at_another_epoch_fences_the_writes_that_touch_it(Env::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_an_operation_held_at_another_epoch_fences_the_writes_that_touch_it() {
    if let Some(env) = Env::mysql().await {
        an_operation_held_at_another_epoch_fences_the_writes_that_touch_it(env).await;
    }
}

/// Belt and braces: with every in-process epoch check off, the SQL fences alone hold. The
/// write may fail in any way (it cannot tell a lost lease from a race any more), but it must
/// change nothing.
#[cfg(feature = "mutants")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_the_sql_fences_hold_without_the_checks_under_the_row_lock() {
    use applyd::machine::Mutant;
    let rules = Rules::with_mutant(Params::DEFAULT, Some(Mutant::UnfencedWrite));
    assert!(
        rules.write_allowed(2, 1),
        "the switch bypasses the in-process check"
    );
    let Some(env) = Env::mysql_with(rules).await else {
        return;
    };
    for write in ALL {
        let (_, old, _) = displaced(&env).await;
        let before = env.snapshot().await;
        let _ = write.run(&env, &old).await;
        assert_eq!(
            env.snapshot().await,
            before,
            "{write:?} by a displaced owner landed once the in-process check was bypassed"
        );
        finish(&env).await;
    }
    for write in OPERATION_WRITES {
        let (id, _, current) = displaced(&env).await;
        env.force_operation_epoch(id, current.epoch + 1).await;
        let before = env.snapshot().await;
        let _ = write.run(&env, &current).await;
        assert_eq!(
            env.snapshot().await,
            before,
            "{write:?} landed on an operation held at another epoch"
        );
        env.force_operation_epoch(id, current.epoch).await;
        finish(&env).await;
    }
    env.cleanup().await;
}

/// The bypass test exists in every workspace test run (the model and simulator packages turn
/// the switches on for the whole workspace).
#[test]
fn the_bypass_test_is_compiled_in() {
    assert!(
        cfg!(feature = "mutants") || std::env::var_os("CI").is_none(),
        "run the tests with the workspace (scripts/test) so the SQL-only fence test runs"
    );
    let _ = Rules::default();
}
