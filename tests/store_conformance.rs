//! One conformance suite for both stores: every behaviour below runs against `MemoryStore` (the
//! reference) and `MySqlStore` (a real MariaDB/MySQL), with the same clock steps.
//!
//! Over 1,600 lines, in one file on purpose: every integration-test file is a binary of its own,
//! linked against the whole crate (each link costs CI's two cores tens of seconds), and these
//! tests share one `conformance!` harness and its fixtures. The file is sectioned by the store
//! seam each part exercises (`// ----` headers: claim arms, fencing and heartbeats, target
//! uniqueness, control requests, concurrency, operation claims, task rows, parked waits), the
//! same seams as `src/store/memory/` and `src/store/mysql/`.

#[macro_use]
mod store_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use applyd::machine::{
    ApplyState, ClaimArm, ClaimedVia, ControlOp, ControlStatus, EngineKind, OperationArm, Params,
    TaskState,
};
use applyd::store::{claim_next, ClaimPath, Claimed, Lease, RequestOutcome, StoreError, Submitted};
use applyd::worker::{ApplyId, ResumeState};
use store_support::{new_apply, Env};

const STALE: u64 = Params::DEFAULT.stale_after_ms;
const DAY: u64 = 24 * 60 * 60 * 1000;

async fn submit(env: &Env, db: &str, engine: EngineKind) -> ApplyId {
    env.store
        .submit(new_apply(db, engine))
        .await
        .expect("submit")
}

async fn claim(env: &Env, owner: &str) -> Option<applyd::store::Claimed> {
    env.store.claim(owner).await.expect("claim")
}

/// Submit and claim an apply, then write it to `state` as its owner.
async fn owned_in(env: &Env, db: &str, engine: EngineKind, state: ApplyState) -> (ApplyId, Lease) {
    let id = submit(env, db, engine).await;
    let claimed = claim(env, "w1").await.expect("a fresh apply is claimable");
    assert_eq!(claimed.lease.apply, id);
    env.store
        .write(&claimed.lease, state, ResumeState::default(), None)
        .await
        .expect("owner write");
    (id, claimed.lease)
}

fn lease_of(apply: ApplyId, epoch: u64) -> Lease {
    Lease {
        apply,
        owner: "nobody".into(),
        epoch,
    }
}

// ---- claim arms

async fn a1_claims_a_pending_apply_once(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    let c = claim(&env, "w1").await.expect("A1");
    assert_eq!(
        (c.arm, c.pre_claim, c.record.row.state),
        (
            ClaimedVia::Apply(ClaimArm::A1Pending),
            ApplyState::Pending,
            ApplyState::Running
        )
    );
    assert_eq!(
        c.lease,
        Lease {
            apply: id,
            owner: "w1".into(),
            epoch: 1
        }
    );
    assert_eq!(c.record.spec.identifier, format!("apply-{id}"));
    assert_eq!(c.record.spec.ddl.len(), 1);
    assert!(
        claim(&env, "w2").await.is_none(),
        "a fresh lease is not claimed again"
    );
    let row = env.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.owner.as_deref(), row.epoch),
        ("running", Some("w1"), 1)
    );
    let audit = env.audit().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].from.as_str(),
            audit[0].to.as_str(),
            audit[0].epoch,
            audit[0].owner.as_deref(),
            audit[0].cause.as_str()
        ),
        ("pending", "running", 1, Some("w1"), "claim A1")
    );
    env.cleanup().await;
}

async fn a2_reclaims_only_a_stale_lease(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    let first = claim(&env, "w1").await.unwrap();
    env.advance(STALE - 10_000);
    assert!(
        claim(&env, "w2").await.is_none(),
        "heartbeat younger than stale_after"
    );
    env.advance(10_000);
    let second = claim(&env, "w2").await.expect("stale lease is reclaimable");
    assert_eq!(
        (second.arm, second.pre_claim, second.lease.epoch),
        (ClaimedVia::Apply(ClaimArm::A2Stale), ApplyState::Running, 2)
    );
    assert_eq!(second.lease.apply, id);
    assert!(matches!(
        env.store.heartbeat(&first.lease).await,
        Err(StoreError::LeaseLost { .. })
    ));
    env.cleanup().await;
}

async fn a2_a_released_lease_is_claimable_at_once(env: Env) {
    submit(&env, "users", EngineKind::Spirit).await;
    let first = claim(&env, "w1").await.unwrap();
    env.store.release(&first.lease).await.expect("release");
    let row = env.row(first.lease.apply).await;
    assert_eq!((row.owner, row.heartbeat_at), (None, None));
    let second = claim(&env, "w2")
        .await
        .expect("released row is claimable without waiting");
    assert_eq!(
        (second.arm, second.lease.epoch),
        (ClaimedVia::Apply(ClaimArm::A2Stale), 2)
    );
    assert!(matches!(
        env.store.release(&first.lease).await,
        Err(StoreError::LeaseLost { .. })
    ));
    env.cleanup().await;
}

async fn a3_retries_with_attempt_accounting_until_the_budget(env: Env) {
    let (id, _) = owned_in(
        &env,
        "users",
        EngineKind::Spirit,
        ApplyState::FailedRetryable,
    )
    .await;
    let mut last = None;
    for attempt in 1..=Params::DEFAULT.retry_budget {
        let c = claim(&env, "w2").await.expect("retry arm");
        assert_eq!(
            (c.arm, c.pre_claim, c.record.row.state),
            (
                ClaimedVia::Apply(ClaimArm::A3Retry),
                ApplyState::FailedRetryable,
                ApplyState::Running
            )
        );
        assert_eq!(c.record.row.attempt, attempt);
        assert_eq!(env.row(id).await.attempt, attempt);
        env.store
            .write(
                &c.lease,
                ApplyState::FailedRetryable,
                ResumeState::default(),
                Some(format!("attempt {attempt} failed")),
            )
            .await
            .unwrap();
        last = Some(c.lease);
    }
    assert!(claim(&env, "w2").await.is_none(), "budget exhausted");
    // Expiry never writes under a live owner: it waits for the release (or a stale lease).
    assert_eq!(env.store.expire_retryable().await.unwrap(), 0);
    env.store.release(&last.unwrap()).await.unwrap();
    assert_eq!(env.store.expire_retryable().await.unwrap(), 1);
    // The expired apply says why, and what the last attempt failed with.
    let why = format!(
        "retry_budget_exhausted: attempt {} failed",
        Params::DEFAULT.retry_budget
    );
    let row = env.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.error.as_deref()),
        ("failed", Some(why.as_str()))
    );
    let expiry = env.audit().await.into_iter().last().unwrap();
    assert_eq!(
        (expiry.cause.as_str(), expiry.detail.as_deref()),
        ("retry_budget_exhausted", Some(why.as_str()))
    );
    assert_eq!(env.store.expire_retryable().await.unwrap(), 0);
    env.cleanup().await;
}

async fn retry_expires_after_the_freshness_window(env: Env) {
    let (id, _) = owned_in(
        &env,
        "users",
        EngineKind::Spirit,
        ApplyState::FailedRetryable,
    )
    .await;
    env.advance(DAY - 60_000);
    assert_eq!(
        env.store.expire_retryable().await.unwrap(),
        0,
        "still fresh"
    );
    env.advance(60_000);
    assert!(claim(&env, "w2").await.is_none(), "past freshness");
    assert_eq!(env.store.expire_retryable().await.unwrap(), 1);
    let row = env.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.error.as_deref()),
        ("failed", Some("recovery_window_expired"))
    );
    let audit = env.audit().await;
    let last = audit.last().unwrap();
    assert_eq!(
        (last.from.as_str(), last.to.as_str(), last.owner.as_deref()),
        ("failed_retryable", "failed", None)
    );
    env.cleanup().await;
}

async fn a5_a_start_resumes_a_stopped_apply(env: Env) {
    let (id, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Stopped).await;
    assert!(
        claim(&env, "w2").await.is_none(),
        "stopped without a request is held"
    );
    assert_eq!(
        env.store.request(id, ControlOp::Start).await.unwrap(),
        RequestOutcome::Created
    );
    let c = claim(&env, "w2").await.expect("A5");
    assert_eq!(
        (c.arm, c.pre_claim, c.record.row.state),
        (
            ClaimedVia::Apply(ClaimArm::A5StoppedStart),
            ApplyState::Stopped,
            ApplyState::Resuming
        )
    );
    assert_eq!(env.row(id).await.state, "resuming");
    env.cleanup().await;
}

async fn a5_refuses_the_start_when_the_target_is_busy(env: Env) {
    let (stopped, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Stopped).await;
    let other = submit(&env, "users", EngineKind::Spirit).await;
    env.store.request(stopped, ControlOp::Start).await.unwrap();
    let c = claim(&env, "w2")
        .await
        .expect("the other apply is claimed instead");
    assert_eq!(
        (c.lease.apply, c.arm),
        (other, ClaimedVia::Apply(ClaimArm::A1Pending))
    );
    let (status, message) = env.request_status(stopped, ControlOp::Start).await.unwrap();
    assert_eq!(status, ControlStatus::Failed);
    let message = message.unwrap();
    assert!(
        message.contains("another active apply") && message.contains(&other.to_string()),
        "{message}"
    );
    let row = env.row(stopped).await;
    assert_eq!((row.state.as_str(), row.epoch), ("stopped", 1));
    assert!(claim(&env, "w3").await.is_none());
    env.cleanup().await;
}

async fn a6_a_newer_start_hands_off_a_deferred_deploy_lease(env: Env) {
    let (id, old) = owned_in(
        &env,
        "users",
        EngineKind::PlanetScale,
        ApplyState::WaitingForDeploy,
    )
    .await;
    assert!(claim(&env, "w2").await.is_none(), "fresh lease, no start");
    env.store.request(id, ControlOp::Start).await.unwrap();
    let c = claim(&env, "w2").await.expect("A6");
    assert_eq!(
        (c.arm, c.record.row.state, c.lease.epoch),
        (
            ClaimedVia::Apply(ClaimArm::A6DeferredDeployStart),
            ApplyState::WaitingForDeploy,
            2
        )
    );
    assert!(
        claim(&env, "w3").await.is_none(),
        "the start is older than the new lease"
    );
    assert!(matches!(
        env.store
            .write(&old, ApplyState::Running, ResumeState::default(), None)
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    env.cleanup().await;
}

async fn a7_a_cancel_claims_a_stopped_apply(env: Env) {
    let (id, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Stopped).await;
    env.store.request(id, ControlOp::Cancel).await.unwrap();
    let c = claim(&env, "w2").await.expect("A7");
    assert_eq!(
        (c.arm, c.record.row.state),
        (
            ClaimedVia::Apply(ClaimArm::A7StoppedCancel),
            ApplyState::Stopped
        )
    );
    env.cleanup().await;
}

async fn a8_a_stop_claims_a_paused_apply(env: Env) {
    let (id, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Paused).await;
    env.advance(STALE);
    assert!(
        claim(&env, "w2").await.is_none(),
        "paused waits for a human even when stale"
    );
    env.store.request(id, ControlOp::Stop).await.unwrap();
    let c = claim(&env, "w2").await.expect("A8");
    assert_eq!(
        (c.arm, c.record.row.state),
        (
            ClaimedVia::Apply(ClaimArm::A8PausedControl),
            ApplyState::Paused
        )
    );
    env.cleanup().await;
}

async fn terminal_applies_are_never_claimed(env: Env) {
    for (db, state) in [
        ("a", ApplyState::Completed),
        ("b", ApplyState::Failed),
        ("c", ApplyState::Cancelled),
    ] {
        let (id, _) = owned_in(&env, db, EngineKind::Spirit, state).await;
        let _ = env.store.request(id, ControlOp::Start).await;
    }
    env.advance(DAY);
    assert!(claim(&env, "w2").await.is_none());
    env.cleanup().await;
}

// ---- fencing and heartbeats

async fn a_displaced_owner_is_fenced_everywhere(env: Env) {
    let (id, old) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Running).await;
    env.store.request(id, ControlOp::Stop).await.unwrap();
    env.advance(STALE);
    let new = claim(&env, "w2").await.expect("reclaim").lease;
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseLost { apply, epoch }) if apply == id && epoch == old.epoch);
    assert!(lost(
        env.store
            .write(&old, ApplyState::Completed, ResumeState::default(), None)
            .await
    ));
    assert!(lost(env.store.heartbeat(&old).await));
    assert!(lost(env.store.release(&old).await));
    assert!(lost(
        env.store.complete_request(&old, ControlOp::Stop).await
    ));
    assert!(lost(
        env.store.fail_request(&old, ControlOp::Stop, "no").await
    ));
    assert!(matches!(
        env.store.load(&old).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        env.request_status(id, ControlOp::Stop).await.unwrap().0,
        ControlStatus::Pending,
        "stale write did not land"
    );
    assert_eq!(env.row(id).await.state, "running");
    env.store
        .write(
            &new,
            ApplyState::WaitingForCutover,
            ResumeState::default(),
            None,
        )
        .await
        .expect("current owner writes");
    env.store
        .complete_request(&new, ControlOp::Stop)
        .await
        .unwrap();
    assert_eq!(
        env.request_status(id, ControlOp::Stop).await.unwrap().0,
        ControlStatus::Completed
    );
    let gone = lease_of(id + 1000, 1);
    assert!(matches!(
        env.store
            .write(&gone, ApplyState::Running, ResumeState::default(), None)
            .await,
        Err(StoreError::RowGone(_))
    ));
    assert!(matches!(
        env.store.heartbeat(&gone).await,
        Err(StoreError::RowGone(_))
    ));
    assert!(matches!(
        env.store.release(&gone).await,
        Err(StoreError::RowGone(_))
    ));
    assert!(matches!(
        env.store.load(&gone).await,
        Err(StoreError::RowGone(_))
    ));
    env.cleanup().await;
}

async fn a_failed_drive_records_why_keeps_the_resume_state_and_is_fenced(env: Env) {
    let id = submit(&env, "users", EngineKind::PlanetScale).await;
    let old = claim(&env, "w1").await.unwrap().lease;
    let resume = ResumeState {
        branch: true,
        deploy_request_intent: true,
        deploy_request_id: Some(7),
    };
    env.store
        .write(&old, ApplyState::ValidatingDeployRequest, resume, None)
        .await
        .unwrap();
    env.advance(STALE);
    let new = claim(&env, "w2").await.expect("reclaim").lease;
    assert!(matches!(
        env.store.fail_apply(&old, "boom").await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(env.row(id).await.state, "validating_deploy_request");
    env.store
        .fail_apply(&new, "the drive panicked: boom")
        .await
        .expect("the owner fails its apply");
    let row = env.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.error.as_deref(), row.resume),
        ("failed", Some("the drive panicked: boom"), resume)
    );
    assert!(
        matches!(
            env.store.fail_apply(&new, "again").await,
            Err(StoreError::Refused(_))
        ),
        "a terminal row is never rewritten"
    );
    assert_eq!(
        env.row(id).await.error.as_deref(),
        Some("the drive panicked: boom")
    );
    let audit = env.audit().await;
    let last = audit.last().unwrap();
    assert_eq!(
        (
            last.from.as_str(),
            last.to.as_str(),
            last.epoch,
            last.cause.as_str()
        ),
        ("validating_deploy_request", "failed", new.epoch, "write")
    );
    assert!(claim(&env, "w3").await.is_none(), "failed is not retried");
    env.cleanup().await;
}

async fn the_status_view_shows_owner_progress_and_why_an_apply_failed(env: Env) {
    let mut two = new_apply("users", EngineKind::Spirit);
    two.ddl
        .push("ALTER TABLE orders ADD COLUMN source VARCHAR(32)".into());
    let id = env.store.submit(two).await.unwrap();
    let before = env.inspect(id).await;
    assert_eq!(
        (before.state, before.progress(), before.lease_owner),
        (ApplyState::Pending, "0/2 tasks".to_string(), None)
    );
    // Progress table by table, in statement order.
    let tables: Vec<_> = before
        .tasks
        .iter()
        .map(|t| (t.table.as_deref(), t.state))
        .collect();
    assert_eq!(
        tables,
        vec![
            (Some("users"), TaskState::Pending),
            (Some("orders"), TaskState::Pending)
        ]
    );
    let lease = claim(&env, "w1").await.unwrap().lease;
    env.store
        .write(&lease, ApplyState::Completed, ResumeState::default(), None)
        .await
        .unwrap();
    let done = env.inspect(id).await;
    assert_eq!(
        (done.state, done.progress(), done.lease_epoch),
        (ApplyState::Completed, "2/2 tasks".to_string(), 1)
    );
    assert!(done.tasks.iter().all(|t| t.state == TaskState::Completed));
    let other = submit(&env, "orders", EngineKind::PlanetScale).await;
    let lease = claim(&env, "w1").await.unwrap().lease;
    env.store.fail_apply(&lease, "it broke").await.unwrap();
    let failed = env.inspect(other).await;
    assert_eq!(
        (failed.state, failed.error.as_deref(), failed.progress()),
        (
            ApplyState::Failed,
            Some("it broke"),
            "0/1 tasks".to_string()
        )
    );
    env.cleanup().await;
}

async fn two_heartbeats_within_one_second_keep_the_lease(env: Env) {
    submit(&env, "users", EngineKind::Spirit).await;
    let c = claim(&env, "w1").await.unwrap();
    for _ in 0..5 {
        env.store
            .heartbeat(&c.lease)
            .await
            .expect("a heartbeat right after another is not a lost lease");
    }
    env.store
        .write(&c.lease, ApplyState::Running, ResumeState::default(), None)
        .await
        .expect("same-state write");
    env.store
        .write(&c.lease, ApplyState::Running, ResumeState::default(), None)
        .await
        .expect("same-state write again");
    env.store.heartbeat(&c.lease).await.unwrap();
    env.cleanup().await;
}

async fn heartbeats_keep_the_row_from_peers(env: Env) {
    submit(&env, "users", EngineKind::Spirit).await;
    let c = claim(&env, "w1").await.unwrap();
    for _ in 0..3 {
        env.advance(STALE - 10_000);
        env.store.heartbeat(&c.lease).await.unwrap();
        assert!(claim(&env, "w2").await.is_none());
    }
    env.advance(STALE);
    assert_eq!(
        claim(&env, "w2").await.unwrap().arm,
        ClaimedVia::Apply(ClaimArm::A2Stale)
    );
    env.cleanup().await;
}

async fn resume_state_is_persisted_with_the_state(env: Env) {
    let id = submit(&env, "users", EngineKind::PlanetScale).await;
    let c = claim(&env, "w1").await.unwrap();
    let resume = ResumeState {
        branch: true,
        deploy_request_intent: true,
        deploy_request_id: Some(42),
    };
    env.store
        .write(&c.lease, ApplyState::ValidatingDeployRequest, resume, None)
        .await
        .unwrap();
    let loaded = env.store.load(&c.lease).await.unwrap();
    assert_eq!(
        (loaded.record.row.state, loaded.record.row.resume),
        (ApplyState::ValidatingDeployRequest, resume)
    );
    env.advance(STALE);
    let again = claim(&env, "w2").await.unwrap();
    assert_eq!(
        (again.lease.apply, again.record.row.resume),
        (id, resume),
        "a reclaim sees the persisted resume state"
    );
    env.cleanup().await;
}

async fn load_reports_controls_and_the_revert_window(env: Env) {
    let (id, lease) = owned_in(
        &env,
        "users",
        EngineKind::PlanetScale,
        ApplyState::RevertWindow,
    )
    .await;
    env.store.request(id, ControlOp::SkipRevert).await.unwrap();
    let first = env.store.load(&lease).await.unwrap();
    assert!(first.controls.skip_revert && !first.controls.revert);
    assert!(!first.revert_window_expired);
    env.advance(30 * 60 * 1000);
    env.store.heartbeat(&lease).await.unwrap();
    assert!(env.store.load(&lease).await.unwrap().revert_window_expired);
    env.cleanup().await;
}

// ---- target uniqueness

async fn one_active_apply_per_target_under_concurrency(env: Env) {
    let store = env.store.clone();
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    // Sixteen different changes race for one target.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut new = new_apply("orders", EngineKind::Spirit);
                new.ddl = vec![format!("ALTER TABLE orders ADD COLUMN c{i} INT")];
                store.submit(new).await
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => won.push(id),
            Err(StoreError::ActiveApplyExists { target, existing }) => {
                refused.push((target, existing))
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one submission wins");
    assert_eq!(refused.len(), 15);
    assert!(
        refused
            .iter()
            .all(|(t, e)| t == "orders/prod" && *e == won[0]),
        "{refused:?}"
    );
    // Sixteen copies of one change: one apply, fifteen adoptions of it.
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .submit_or_adopt(new_apply("items", EngineKind::Spirit))
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().expect("the same change is never refused"));
    }
    assert_eq!(outcomes.iter().filter(|s| !s.adopted).count(), 1);
    assert!(outcomes.iter().all(|s| s.id == outcomes[0].id));
    env.cleanup().await;
}

async fn a_finished_apply_frees_its_target_and_reactivation_is_refused(env: Env) {
    let (first, lease) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Stopped).await;
    let second = submit(&env, "users", EngineKind::Spirit).await;
    let err = env
        .store
        .write(&lease, ApplyState::Running, ResumeState::default(), None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::ActiveApplyExists {
            target: "users/prod".into(),
            existing: second
        }
    );
    assert_eq!(
        env.row(first).await.state,
        "stopped",
        "the refused write left the row alone"
    );
    // Targets compare field by field: names differing only in where the fields split.
    let mut odd = new_apply("a-b", EngineKind::Spirit);
    odd.target.environment = "c".into();
    env.store.submit(odd).await.unwrap();
    let mut other = new_apply("a", EngineKind::Spirit);
    other.target.environment = "b-c".into();
    env.store
        .submit(other)
        .await
        .expect("a different target whose fields join alike");
    env.cleanup().await;
}

async fn submissions_are_validated(env: Env) {
    let mut empty = new_apply("users", EngineKind::Spirit);
    empty.ddl = vec![" ".into()];
    assert!(matches!(
        env.store.submit(empty).await,
        Err(StoreError::Invalid { field: "ddl", .. })
    ));
    let mut dml = new_apply("users", EngineKind::Spirit);
    dml.ddl = vec!["DELETE FROM users".into()];
    assert!(matches!(
        env.store.submit(dml).await,
        Err(StoreError::Invalid { field: "ddl", .. })
    ));
    let mut drop = new_apply("users", EngineKind::Spirit);
    drop.ddl = vec!["DROP TABLE users".into()];
    assert!(
        matches!(env.store.submit(drop.clone()).await, Err(StoreError::Invalid { field: "ddl", message }) if message.contains("allow_destructive")),
        "the destructive gate"
    );
    for bad in [
        "",
        " users",
        "users ",
        "a/b",
        "x'; DROP TABLE applies; --",
        &"x".repeat(65),
    ] {
        assert!(
            matches!(
                env.store.submit(new_apply(bad, EngineKind::Spirit)).await,
                Err(StoreError::Invalid {
                    field: "database",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    let mut env_name = new_apply("users", EngineKind::Spirit);
    env_name.target.environment = "b/c".into();
    assert!(matches!(
        env.store.submit(env_name).await,
        Err(StoreError::Invalid {
            field: "environment",
            ..
        })
    ));
    env.store
        .submit(new_apply(&"x".repeat(64), EngineKind::Spirit))
        .await
        .expect("64 characters fit");
    drop.allow_destructive = true;
    env.store.submit(drop).await.expect("allowed when asked");
    env.cleanup().await;
}

/// A retried submission of the live change returns that apply; a different change, another
/// engine, or the same change once the first finished, does not.
async fn the_same_change_while_live_is_adopted_and_a_different_one_refused(env: Env) {
    let first = env
        .store
        .submit_or_adopt(new_apply("users", EngineKind::Spirit))
        .await
        .unwrap();
    assert!(!first.adopted);
    // Same change, written differently: the fingerprint is of the normalised statements.
    let mut again = new_apply("users", EngineKind::Spirit);
    again.ddl = vec!["alter table users  add column nickname varchar(64) -- retried".into()];
    assert_eq!(
        env.store.submit_or_adopt(again).await.unwrap(),
        Submitted {
            id: first.id,
            adopted: true
        }
    );
    let mut different = new_apply("users", EngineKind::Spirit);
    different.ddl = vec!["ALTER TABLE users ADD COLUMN other INT".into()];
    assert!(matches!(
        env.store.submit_or_adopt(different).await,
        Err(StoreError::ActiveApplyExists { existing, .. }) if existing == first.id
    ));
    assert!(matches!(
        env.store
            .submit_or_adopt(new_apply("users", EngineKind::PlanetScale))
            .await,
        Err(StoreError::ActiveApplyExists { .. })
    ));
    let tables: Vec<Option<String>> = env.tasks().await.into_iter().map(|t| t.table).collect();
    assert_eq!(
        tables,
        vec![Some("users".to_string())],
        "each task names its table"
    );
    let c = claim(&env, "w1").await.unwrap();
    assert_eq!(
        c.record.spec.fingerprint.as_deref().map(|f| f.len()),
        Some(71),
        "the owner reads the reviewed change's fingerprint"
    );
    env.store
        .write(
            &c.lease,
            ApplyState::Completed,
            ResumeState::default(),
            None,
        )
        .await
        .unwrap();
    let next = env
        .store
        .submit_or_adopt(new_apply("users", EngineKind::Spirit))
        .await
        .unwrap();
    assert!(
        !next.adopted && next.id != first.id,
        "a finished apply is not adopted"
    );
    env.cleanup().await;
}

// ---- control requests

async fn control_requests_are_unique_and_reset_when_finished(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    assert_eq!(
        env.store.request(id, ControlOp::Stop).await.unwrap(),
        RequestOutcome::Created
    );
    assert_eq!(
        env.store.request(id, ControlOp::Stop).await.unwrap(),
        RequestOutcome::AlreadyPending
    );
    let c = claim(&env, "w1").await.unwrap();
    assert!(env.store.load(&c.lease).await.unwrap().controls.stop);
    env.store
        .complete_request(&c.lease, ControlOp::Stop)
        .await
        .unwrap();
    assert_eq!(
        env.request_status(id, ControlOp::Stop).await,
        Some((ControlStatus::Completed, None))
    );
    env.store
        .complete_request(&c.lease, ControlOp::Stop)
        .await
        .expect("completing a finished request is a no-op");
    env.store
        .complete_request(&c.lease, ControlOp::Cutover)
        .await
        .expect("completing a missing request is a no-op");
    assert_eq!(
        env.store.request(id, ControlOp::Stop).await.unwrap(),
        RequestOutcome::Reset
    );
    assert_eq!(
        env.request_status(id, ControlOp::Stop).await,
        Some((ControlStatus::Pending, None))
    );
    env.store
        .fail_request(&c.lease, ControlOp::Stop, "not now")
        .await
        .unwrap();
    assert_eq!(
        env.request_status(id, ControlOp::Stop).await,
        Some((ControlStatus::Failed, Some("not now".into())))
    );
    assert!(!env.store.load(&c.lease).await.unwrap().controls.stop);
    env.cleanup().await;
}

async fn control_requests_are_refused_by_the_rules(env: Env) {
    let (done, _) = owned_in(&env, "b", EngineKind::Spirit, ApplyState::Completed).await;
    assert!(matches!(
        env.store.request(done, ControlOp::Cancel).await,
        Err(StoreError::Refused(_))
    ));
    let ps = submit(&env, "a", EngineKind::PlanetScale).await;
    assert!(
        matches!(env.store.request(ps, ControlOp::Stop).await, Err(StoreError::Refused(m)) if m.contains("planetscale"))
    );
    assert_eq!(
        env.store.request(ps + 1000, ControlOp::Stop).await,
        Err(StoreError::RowGone(ps + 1000))
    );
    env.cleanup().await;
}

async fn concurrent_requests_create_one_row(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = env.store.clone();
            tokio::spawn(async move { store.request(id, ControlOp::Cancel).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RequestOutcome::Created)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RequestOutcome::AlreadyPending)
            .count(),
        7
    );
    env.cleanup().await;
}

// ---- concurrency of claims

async fn concurrent_claimers_never_share_a_row(env: Env) {
    for i in 0..24 {
        submit(&env, &format!("db{i}"), EngineKind::Spirit).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = env.store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(c) = store.claim(&format!("w{w}")).await.unwrap() {
                    mine.push(c.lease.apply);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (24, 24),
        "every row claimed exactly once"
    );
    assert!(env.rows().await.iter().all(|(_, r)| r.epoch == 1));
    env.cleanup().await;
}

// ---- operation claims (O1–O6): the operation row and its parent, one lease

async fn claim_op(env: &Env, owner: &str) -> Option<Claimed> {
    env.store
        .claim_operation(owner)
        .await
        .expect("claim operation")
}

fn via(op: OperationArm, parent: ClaimArm) -> ClaimedVia {
    ClaimedVia::Operation { op, parent }
}

/// Two times of one store agree (the database stamps each statement of a transaction anew).
fn near(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.abs_diff(b) <= 500,
        (None, None) => true,
        _ => false,
    }
}

/// The operation row mirrors its apply's state and carries the apply's lease.
async fn assert_one_lease(env: &Env, id: ApplyId) {
    let row = env.row(id).await;
    let op = env.operation(id).await;
    assert_eq!(
        (&op.state, &op.owner, op.epoch, op.attempt),
        (&row.state, &row.owner, row.epoch, row.attempt),
        "operation row of apply {id}"
    );
    assert!(
        near(op.lease_acquired_at, row.lease_acquired_at)
            && near(op.heartbeat_at, row.heartbeat_at),
        "lease times of apply {id}: {op:?} vs {row:?}"
    );
}

async fn o1_claims_a_pending_operation_with_its_parent(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    let c = claim_op(&env, "w1").await.expect("O1");
    assert_eq!(
        (c.arm, c.pre_claim, c.record.row.state, c.lease.epoch),
        (
            via(OperationArm::O1Pending, ClaimArm::A1Pending),
            ApplyState::Pending,
            ApplyState::Running,
            1
        )
    );
    assert_eq!((c.lease.apply, c.lease.owner.as_str()), (id, "w1"));
    assert_eq!(c.arm.code(), "O1");
    assert!(claim_op(&env, "w2").await.is_none(), "a fresh lease");
    assert!(claim(&env, "w2").await.is_none(), "nor by the apply path");
    let op = env.operation(id).await;
    assert_eq!(
        (op.state.as_str(), op.owner.as_deref(), op.epoch),
        ("running", Some("w1"), 1)
    );
    assert_one_lease(&env, id).await;
    assert_eq!(env.task_states(id).await, ["running"]);
    assert_eq!(env.audit().await.last().unwrap().cause, "claim O1");
    env.cleanup().await;
}

async fn o1_a_pending_stop_gates_a_pending_operation(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    env.store.request(id, ControlOp::Stop).await.unwrap();
    assert!(
        claim_op(&env, "w1").await.is_none(),
        "a pending stop holds a pending operation"
    );
    // The operation claim path falls back to the apply arms, which take the stop.
    let c = claim_next(env.store.as_ref(), ClaimPath::Operation, "w1")
        .await
        .unwrap()
        .expect("A1 takes the apply to process the stop");
    assert_eq!(c.arm, ClaimedVia::Apply(ClaimArm::A1Pending));
    assert_one_lease(&env, id).await;
    env.cleanup().await;
}

async fn o2_reclaims_a_stale_or_released_operation(env: Env) {
    let id = submit(&env, "users", EngineKind::Spirit).await;
    let first = claim_op(&env, "w1").await.unwrap();
    env.advance(STALE - 10_000);
    assert!(
        claim_op(&env, "w2").await.is_none(),
        "heartbeat younger than stale_after"
    );
    env.advance(10_000);
    let second = claim_op(&env, "w2").await.expect("O2");
    assert_eq!(
        (second.arm, second.pre_claim, second.lease.epoch),
        (
            via(OperationArm::O2Stale, ClaimArm::A2Stale),
            ApplyState::Running,
            2
        )
    );
    assert_one_lease(&env, id).await;
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseLost { .. }));
    assert!(lost(env.store.heartbeat(&first.lease).await));
    assert!(lost(
        env.store
            .write(
                &first.lease,
                ApplyState::Completed,
                ResumeState::default(),
                None
            )
            .await
    ));
    // A heartbeat renews both rows.
    env.advance(STALE - 10_000);
    env.store.heartbeat(&second.lease).await.unwrap();
    assert_one_lease(&env, id).await;
    env.advance(20_000);
    assert!(
        claim_op(&env, "w3").await.is_none(),
        "renewed by the heartbeat"
    );
    // A release frees both rows at once.
    env.store.release(&second.lease).await.unwrap();
    let op = env.operation(id).await;
    assert_eq!((op.owner, op.heartbeat_at), (None, None));
    let third = claim_op(&env, "w3").await.expect("released");
    assert_eq!(
        (third.arm, third.lease.epoch),
        (via(OperationArm::O2Stale, ClaimArm::A2Stale), 3)
    );
    assert_eq!(env.row(id).await.state, "running");
    env.cleanup().await;
}

async fn o3_a_start_resumes_a_stopped_operation(env: Env) {
    let (id, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Stopped).await;
    assert_eq!(env.operation(id).await.state, "stopped");
    assert!(claim_op(&env, "w2").await.is_none(), "stopped is held");
    env.store.request(id, ControlOp::Start).await.unwrap();
    let c = claim_op(&env, "w2").await.expect("O3");
    assert_eq!(
        (c.arm, c.pre_claim, c.record.row.state, c.lease.epoch),
        (
            via(OperationArm::O3StoppedStart, ClaimArm::A5StoppedStart),
            ApplyState::Stopped,
            ApplyState::Resuming,
            2
        )
    );
    assert_one_lease(&env, id).await;
    assert_eq!(
        env.task_states(id).await,
        ["running"],
        "a start re-queues stopped tasks"
    );
    env.cleanup().await;
}

async fn o3_refuses_the_start_when_the_target_is_busy(env: Env) {
    let (stopped, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Stopped).await;
    let other = submit(&env, "users", EngineKind::Spirit).await;
    env.store.request(stopped, ControlOp::Start).await.unwrap();
    let c = claim_op(&env, "w2")
        .await
        .expect("the other apply's operation is claimed instead");
    assert_eq!(
        (c.lease.apply, c.arm),
        (other, via(OperationArm::O1Pending, ClaimArm::A1Pending))
    );
    let (status, message) = env.request_status(stopped, ControlOp::Start).await.unwrap();
    assert_eq!(status, ControlStatus::Failed);
    let message = message.unwrap();
    assert!(
        message.contains("another active apply") && message.contains(&other.to_string()),
        "{message}"
    );
    let (row, op) = (env.row(stopped).await, env.operation(stopped).await);
    assert_eq!(
        (row.state.as_str(), row.epoch, op.state.as_str(), op.epoch),
        ("stopped", 1, "stopped", 1)
    );
    assert!(claim_op(&env, "w3").await.is_none());
    env.cleanup().await;
}

async fn o4_a_newer_start_hands_off_a_deferred_deploy_operation(env: Env) {
    let (id, old) = owned_in(
        &env,
        "users",
        EngineKind::PlanetScale,
        ApplyState::WaitingForDeploy,
    )
    .await;
    assert!(
        claim_op(&env, "w2").await.is_none(),
        "fresh lease, no start"
    );
    env.store.request(id, ControlOp::Start).await.unwrap();
    let c = claim_op(&env, "w2").await.expect("O4");
    assert_eq!(
        (c.arm, c.record.row.state, c.lease.epoch),
        (
            via(
                OperationArm::O4DeferredDeployStart,
                ClaimArm::A6DeferredDeployStart
            ),
            ApplyState::WaitingForDeploy,
            2
        )
    );
    assert_one_lease(&env, id).await;
    assert!(
        claim_op(&env, "w3").await.is_none() && claim(&env, "w3").await.is_none(),
        "the start is older than the new lease"
    );
    assert!(matches!(
        env.store
            .write(&old, ApplyState::Running, ResumeState::default(), None)
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    env.cleanup().await;
}

async fn o5_retries_within_the_budget_with_attempt_accounting(env: Env) {
    let (id, _) = owned_in(
        &env,
        "users",
        EngineKind::Spirit,
        ApplyState::FailedRetryable,
    )
    .await;
    for attempt in 1..=Params::DEFAULT.retry_budget {
        let c = claim_op(&env, "w2").await.expect("O5");
        assert_eq!(
            (c.arm, c.pre_claim, c.record.row.state, c.record.row.attempt),
            (
                via(OperationArm::O5Retry, ClaimArm::A3Retry),
                ApplyState::FailedRetryable,
                ApplyState::Running,
                attempt
            )
        );
        assert_one_lease(&env, id).await;
        assert_eq!(env.operation(id).await.attempt, attempt);
        let tasks = env.tasks().await;
        assert!(
            tasks
                .iter()
                .all(|t| t.state == "running" && t.attempt == attempt),
            "a retry re-queues retryable tasks: {tasks:?}"
        );
        env.store
            .write(
                &c.lease,
                ApplyState::FailedRetryable,
                ResumeState::default(),
                None,
            )
            .await
            .unwrap();
    }
    assert!(claim_op(&env, "w2").await.is_none(), "budget exhausted");
    assert!(claim(&env, "w2").await.is_none());
    env.cleanup().await;
}

async fn o5_respects_the_freshness_window(env: Env) {
    owned_in(
        &env,
        "users",
        EngineKind::Spirit,
        ApplyState::FailedRetryable,
    )
    .await;
    env.advance(DAY);
    assert!(claim_op(&env, "w2").await.is_none(), "past freshness");
    env.cleanup().await;
}

async fn o5_claims_a_retryable_operation_under_a_stale_parent(env: Env) {
    let (id, _) = owned_in(&env, "users", EngineKind::Spirit, ApplyState::Running).await;
    env.force_operation_state(id, ApplyState::FailedRetryable)
        .await;
    assert!(
        claim_op(&env, "w2").await.is_none(),
        "the parent's owner is alive"
    );
    env.advance(STALE);
    let c = claim_op(&env, "w2").await.expect("O5 under a stale parent");
    assert_eq!(
        (c.arm, c.pre_claim, c.record.row.state, c.record.row.attempt),
        (
            via(OperationArm::O5Retry, ClaimArm::A2Stale),
            ApplyState::Running,
            ApplyState::Running,
            0
        )
    );
    // The parent was not failed_retryable: no attempt is counted, and the operation row takes
    // its parent's state back.
    assert_one_lease(&env, id).await;
    assert_eq!(env.operation(id).await.attempt, 0);
    env.cleanup().await;
}

async fn concurrent_operation_and_apply_claimers_never_share_a_row(env: Env) {
    for i in 0..24 {
        submit(&env, &format!("db{i}"), EngineKind::Spirit).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = env.store.clone();
            tokio::spawn(async move {
                let owner = format!("w{w}");
                let mut mine = Vec::new();
                loop {
                    // Most claimers take the operation path, a few the apply path.
                    let next = if w % 4 == 3 {
                        store.claim(&owner).await
                    } else {
                        store.claim_operation(&owner).await
                    };
                    match next.unwrap() {
                        Some(c) => mine.push(c.lease.apply),
                        None => break,
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (24, 24),
        "every row claimed exactly once"
    );
    assert!(env.rows().await.iter().all(|(_, r)| r.epoch == 1));
    assert!(env
        .operations()
        .await
        .iter()
        .all(|(_, o)| o.epoch == 1 && o.state == "running"));
    env.cleanup().await;
}

// ---- task rows follow their apply

async fn task_rows_follow_every_state_write(env: Env) {
    let mut new = new_apply("users", EngineKind::Spirit);
    new.ddl
        .push("ALTER TABLE orders ADD COLUMN note TEXT".into());
    let id = env.store.submit(new).await.unwrap();
    assert_eq!(env.task_states(id).await, ["pending", "pending"]);
    let c = claim(&env, "w1").await.unwrap();
    assert_eq!(env.task_states(id).await, ["running", "running"]);
    let write = |to: ApplyState, lease: Lease| {
        let store = env.store.clone();
        async move {
            store
                .write(&lease, to, ResumeState::default(), None)
                .await
                .unwrap()
        }
    };
    write(ApplyState::WaitingForCutover, c.lease.clone()).await;
    assert_eq!(env.task_states(id).await, ["waiting_for_cutover"; 2]);
    write(ApplyState::Running, c.lease.clone()).await;
    assert_eq!(
        env.task_states(id).await,
        ["waiting_for_cutover"; 2],
        "no backward progress"
    );
    write(ApplyState::Stopped, c.lease.clone()).await;
    assert_eq!(env.task_states(id).await, ["stopped"; 2]);
    env.store.request(id, ControlOp::Start).await.unwrap();
    let c = claim(&env, "w2").await.expect("A5");
    assert_eq!(
        env.task_states(id).await,
        ["running"; 2],
        "re-queued by the start"
    );
    write(ApplyState::FailedRetryable, c.lease.clone()).await;
    assert_eq!(env.task_states(id).await, ["failed_retryable"; 2]);
    let c = claim(&env, "w3").await.expect("A3");
    let tasks = env.tasks().await;
    assert!(
        tasks.iter().all(|t| t.state == "running" && t.attempt == 1),
        "{tasks:?}"
    );
    write(ApplyState::Completed, c.lease.clone()).await;
    assert_eq!(env.task_states(id).await, ["completed"; 2]);
    for to in [ApplyState::Running, ApplyState::Failed] {
        write(to, c.lease.clone()).await;
        assert_eq!(
            env.task_states(id).await,
            ["completed"; 2],
            "terminal tasks never move ({to})"
        );
    }
    // Retry expiry fails the tasks of the applies it fails.
    let (other, lease) = owned_in(
        &env,
        "orders",
        EngineKind::Spirit,
        ApplyState::FailedRetryable,
    )
    .await;
    env.store.release(&lease).await.unwrap();
    env.advance(DAY);
    assert_eq!(env.store.expire_retryable().await.unwrap(), 1);
    assert_eq!(env.task_states(other).await, ["failed"]);
    assert_eq!(env.operation(other).await.state, "failed");
    env.cleanup().await;
}

// ---- parked waits (A9, O6, and the wake time through A2/O2)

/// A PlanetScale apply with a deferred cutover, owned and written to `waiting_for_cutover`.
async fn waiting_for_cutover(env: &Env, db: &str) -> (ApplyId, Lease) {
    let mut new = new_apply(db, EngineKind::PlanetScale);
    new.options.defer_cutover = true;
    let id = env.store.submit(new).await.expect("submit");
    let claimed = claim(env, "w1").await.expect("a fresh apply is claimable");
    env.store
        .write(
            &claimed.lease,
            ApplyState::WaitingForCutover,
            ResumeState::default(),
            None,
        )
        .await
        .expect("owner write");
    (id, claimed.lease)
}

async fn nothing_claims(env: &Env) -> bool {
    claim_next(env.store.as_ref(), ClaimPath::Operation, "peer")
        .await
        .unwrap()
        .is_none()
        && claim(env, "peer").await.is_none()
}

async fn a9_a_request_takes_a_parked_wait_back_at_once(env: Env) {
    let (id, lease) = waiting_for_cutover(&env, "users").await;
    env.store
        .park(&lease)
        .await
        .expect("a wait for a person parks");
    let row = env.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.owner.as_deref()),
        ("waiting_for_cutover", None)
    );
    assert_eq!(
        env.operation(id).await.owner,
        None,
        "the operation's lease is released too"
    );
    let status = env.inspect(id).await;
    let wait = status.wait.clone().expect("a parked wait explains itself");
    assert!(
        wait.starts_with("parked: waiting for cutover (no driver held); a cutover request is taken by the next claim"),
        "{wait}"
    );
    let poll = Params::DEFAULT.park_poll_ms;
    assert!(
        status
            .parked_wake_in_ms
            .is_some_and(|ms| ms > poll - 10_000 && ms <= poll),
        "{status:?}"
    );
    // Parked and unasked: nobody's, not even a poll's.
    env.advance(STALE * 3);
    assert!(
        nothing_claims(&env).await,
        "a parked wait is not reclaimed before it wakes"
    );
    assert!(
        !env.store.may_have_work().await.unwrap(),
        "an idle poll skips a parked wait"
    );
    env.store.request(id, ControlOp::Cutover).await.unwrap();
    assert!(env.store.may_have_work().await.unwrap());
    let c = claim(&env, "w2").await.expect("A9");
    assert_eq!(
        (c.lease.apply, c.arm),
        (id, ClaimedVia::Apply(ClaimArm::A9ParkedRequest))
    );
    assert_eq!(c.pre_claim, ApplyState::WaitingForCutover);
    assert_eq!(c.lease.epoch, lease.epoch + 1);
    assert_one_lease(&env, id).await;
    // The owner that parked it is displaced: it can neither park nor write any more.
    assert!(matches!(
        env.store.park(&lease).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        env.store
            .write(
                &lease,
                ApplyState::CuttingOver,
                ResumeState::default(),
                None
            )
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    env.cleanup().await;
}

async fn o6_a_request_takes_a_parked_operation_back_with_its_parent(env: Env) {
    let (id, lease) = waiting_for_cutover(&env, "users").await;
    env.store.park(&lease).await.unwrap();
    assert!(claim_op(&env, "peer").await.is_none());
    env.store.request(id, ControlOp::Cancel).await.unwrap();
    let c = claim_op(&env, "w2").await.expect("O6");
    assert_eq!(
        (c.lease.apply, c.arm),
        (
            id,
            via(OperationArm::O6ParkedRequest, ClaimArm::A9ParkedRequest)
        )
    );
    assert_one_lease(&env, id).await;
    env.cleanup().await;
}

async fn a2_takes_a_parked_wait_back_at_its_wake_time(env: Env) {
    let (id, lease) = waiting_for_cutover(&env, "users").await;
    env.store.park(&lease).await.unwrap();
    let poll = Params::DEFAULT.park_poll_ms;
    env.advance(poll - 1_000);
    assert!(nothing_claims(&env).await, "1 s before its wake time");
    env.advance(1_000);
    let c = claim_next(env.store.as_ref(), ClaimPath::Operation, "w2")
        .await
        .unwrap()
        .expect("woken");
    assert_eq!(
        (c.lease.apply, c.arm),
        (id, via(OperationArm::O2Stale, ClaimArm::A2Stale))
    );
    let row = env.row(id).await;
    assert_eq!(row.owner.as_deref(), Some("w2"));
    // Claimed again, the row no longer rests: its new owner keeps it with heartbeats alone.
    env.advance(poll);
    env.store.heartbeat(&c.lease).await.unwrap();
    assert!(nothing_claims(&env).await);
    env.cleanup().await;
}

async fn the_revert_deadline_cuts_a_parked_window_short(env: Env) {
    let (id, lease) = owned_in(
        &env,
        "users",
        EngineKind::PlanetScale,
        ApplyState::RevertWindow,
    )
    .await;
    let window = Params::DEFAULT.revert_window_ms;
    let poll = Params::DEFAULT.park_poll_ms;
    // Parked with less than one poll of the window left: it wakes at the deadline.
    env.advance(window - poll / 2);
    env.store.heartbeat(&lease).await.unwrap();
    env.store.park(&lease).await.unwrap();
    env.advance(poll / 2 - 1_000);
    assert!(nothing_claims(&env).await);
    env.advance(1_000);
    let c = claim(&env, "w2")
        .await
        .expect("woken at the revert deadline");
    assert_eq!(c.lease.apply, id);
    assert!(
        env.store
            .load(&c.lease)
            .await
            .unwrap()
            .revert_window_expired
    );
    env.cleanup().await;
}

async fn only_waits_that_park_are_parked(env: Env) {
    // A Spirit runner waiting on its sentinel is local: its wait never parks.
    let mut new = new_apply("users", EngineKind::Spirit);
    new.options.defer_cutover = true;
    let id = env.store.submit(new).await.unwrap();
    let c = claim(&env, "w1").await.unwrap();
    env.store
        .write(
            &c.lease,
            ApplyState::WaitingForCutover,
            ResumeState::default(),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        env.store.park(&c.lease).await,
        Err(StoreError::Refused(_))
    ));
    // A PlanetScale apply that cuts over by itself does not wait for anyone.
    let (_, running) = owned_in(
        &env,
        "orders",
        EngineKind::PlanetScale,
        ApplyState::WaitingForCutover,
    )
    .await;
    assert!(matches!(
        env.store.park(&running).await,
        Err(StoreError::Refused(_))
    ));
    // Both keep their leases.
    assert_eq!(env.row(id).await.owner.as_deref(), Some("w1"));
    env.store.heartbeat(&c.lease).await.unwrap();
    env.store.heartbeat(&running).await.unwrap();
    env.cleanup().await;
}

async fn one_heartbeat_keeps_every_lease_and_names_the_lost_ones(env: Env) {
    let mut leases = Vec::new();
    for db in ["a", "b", "c"] {
        submit(&env, db, EngineKind::Spirit).await;
        leases.push(claim(&env, "w1").await.unwrap().lease);
    }
    assert_eq!(
        env.store.heartbeat_all(&[]).await.unwrap(),
        Vec::<Lease>::new()
    );
    for _ in 0..3 {
        env.advance(STALE - 10_000);
        assert_eq!(
            env.store.heartbeat_all(&leases).await.unwrap(),
            Vec::<Lease>::new(),
            "every lease renewed"
        );
        assert!(claim(&env, "w2").await.is_none(), "no lease went stale");
    }
    // A peer takes the second apply once its lease goes stale; the next round names it alone
    // and keeps the others.
    let mut stale = leases.clone();
    stale.remove(1);
    env.advance(STALE - 10_000);
    env.store.heartbeat_all(&stale).await.unwrap();
    env.advance(10_000);
    let taken = claim(&env, "w2")
        .await
        .expect("the unrenewed lease went stale");
    assert_eq!(taken.lease.apply, leases[1].apply);
    assert_eq!(
        env.store.heartbeat_all(&leases).await.unwrap(),
        vec![leases[1].clone()]
    );
    for lease in [&leases[0], &leases[2]] {
        let row = env.row(lease.apply).await;
        assert_eq!((row.owner.as_deref(), row.epoch), (Some("w1"), lease.epoch));
    }
    let row = env.row(leases[1].apply).await;
    assert_eq!(
        row.owner.as_deref(),
        Some("w2"),
        "the peer's lease is untouched"
    );
    assert!(near(row.heartbeat_at, row.lease_acquired_at));
    env.cleanup().await;
}

/// A request for a later state (a revert before the cutover) neither wakes a parked wait nor
/// keeps it from parking; one the state acts on does.
async fn a9_a_request_for_a_later_state_leaves_the_wait_parked(env: Env) {
    let (id, lease) = waiting_for_cutover(&env, "users").await;
    env.store.request(id, ControlOp::Revert).await.unwrap();
    env.store.park(&lease).await.unwrap();
    assert!(
        nothing_claims(&env).await,
        "a revert waits for the revert window: it wakes nothing"
    );
    env.store.request(id, ControlOp::Cutover).await.unwrap();
    let c = claim(&env, "w2").await.expect("A9 for the cutover");
    assert_eq!(
        (c.lease.apply, c.arm),
        (id, ClaimedVia::Apply(ClaimArm::A9ParkedRequest))
    );
    env.cleanup().await;
}

conformance!(
    a9_a_request_for_a_later_state_leaves_the_wait_parked,
    one_heartbeat_keeps_every_lease_and_names_the_lost_ones,
    a9_a_request_takes_a_parked_wait_back_at_once,
    o6_a_request_takes_a_parked_operation_back_with_its_parent,
    a2_takes_a_parked_wait_back_at_its_wake_time,
    the_revert_deadline_cuts_a_parked_window_short,
    only_waits_that_park_are_parked,
    a1_claims_a_pending_apply_once,
    a2_reclaims_only_a_stale_lease,
    a2_a_released_lease_is_claimable_at_once,
    a3_retries_with_attempt_accounting_until_the_budget,
    retry_expires_after_the_freshness_window,
    a5_a_start_resumes_a_stopped_apply,
    a5_refuses_the_start_when_the_target_is_busy,
    a6_a_newer_start_hands_off_a_deferred_deploy_lease,
    a7_a_cancel_claims_a_stopped_apply,
    a8_a_stop_claims_a_paused_apply,
    terminal_applies_are_never_claimed,
    a_displaced_owner_is_fenced_everywhere,
    a_failed_drive_records_why_keeps_the_resume_state_and_is_fenced,
    the_status_view_shows_owner_progress_and_why_an_apply_failed,
    two_heartbeats_within_one_second_keep_the_lease,
    heartbeats_keep_the_row_from_peers,
    resume_state_is_persisted_with_the_state,
    load_reports_controls_and_the_revert_window,
    one_active_apply_per_target_under_concurrency,
    a_finished_apply_frees_its_target_and_reactivation_is_refused,
    submissions_are_validated,
    the_same_change_while_live_is_adopted_and_a_different_one_refused,
    control_requests_are_unique_and_reset_when_finished,
    control_requests_are_refused_by_the_rules,
    concurrent_requests_create_one_row,
    concurrent_claimers_never_share_a_row,
    o1_claims_a_pending_operation_with_its_parent,
    o1_a_pending_stop_gates_a_pending_operation,
    o2_reclaims_a_stale_or_released_operation,
    o3_a_start_resumes_a_stopped_operation,
    o3_refuses_the_start_when_the_target_is_busy,
    o4_a_newer_start_hands_off_a_deferred_deploy_operation,
    o5_retries_within_the_budget_with_attempt_accounting,
    o5_respects_the_freshness_window,
    o5_claims_a_retryable_operation_under_a_stale_parent,
    concurrent_operation_and_apply_claimers_never_share_a_row,
    task_rows_follow_every_state_write,
);
