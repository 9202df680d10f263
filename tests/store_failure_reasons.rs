//! Both stores keep the reason of every move into a failed state, or into a hold for a person,
//! where people look for it: on the apply, on its failed task rows, and on the audit entry of
//! the move.

#[macro_use]
mod store_support;

use applyd::machine::{ApplyState, EngineKind};
use applyd::worker::{ApplyId, ResumeState};
use store_support::{new_apply, Env};

async fn claimed(env: &Env, db: &str) -> (ApplyId, applyd::store::Lease) {
    let id = env
        .store
        .submit(new_apply(db, EngineKind::Spirit))
        .await
        .expect("submit");
    let c = env.store.claim("w1").await.unwrap().expect("claimable");
    assert_eq!(c.lease.apply, id);
    (id, c.lease)
}

/// A claimed apply on `users`, moved to running and then into `to` with `why`.
async fn running_then(env: &Env, to: ApplyState, why: &str) -> ApplyId {
    let (id, lease) = claimed(env, "users").await;
    env.store
        .write(&lease, ApplyState::Running, ResumeState::default(), None)
        .await
        .unwrap();
    env.store
        .write(&lease, to, ResumeState::default(), Some(why.to_string()))
        .await
        .unwrap();
    id
}

/// The audit entries of one apply that moved it into `to`.
async fn moves_into(env: &Env, id: ApplyId, to: &str) -> Vec<store_support::AuditView> {
    env.audit()
        .await
        .into_iter()
        .filter(|a| a.apply == id && a.to == to)
        .collect()
}

async fn a_failed_write_keeps_the_engines_words_everywhere(env: Env) {
    let why = "Spirit exited with exit status: 1: Error 1060 (42S21): Duplicate column name 'c'";
    let id = running_then(&env, ApplyState::Failed, why).await;
    assert_eq!(env.row(id).await.error.as_deref(), Some(why));
    let tasks: Vec<_> = env
        .tasks()
        .await
        .into_iter()
        .filter(|t| t.apply == id)
        .collect();
    assert!(!tasks.is_empty());
    for t in &tasks {
        assert_eq!(t.state, "failed");
        assert_eq!(t.error.as_deref(), Some(why), "task {}", t.seq);
    }
    let failed = moves_into(&env, id, "failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].cause.as_str(), failed[0].detail.as_deref()),
        ("write", Some(why))
    );
    // Other moves carry no reason.
    assert!(env
        .audit()
        .await
        .iter()
        .filter(|a| a.apply == id && a.to != "failed")
        .all(|a| a.detail.is_none()));
    env.cleanup().await;
}

async fn a_retryable_failure_and_a_failed_closed_apply_say_why_too(env: Env) {
    // A failed apply is never claimed again, so the retryable one comes second.
    let (other, lease) = claimed(&env, "orders").await;
    env.store
        .fail_apply(&lease, "the drive panicked: boom")
        .await
        .unwrap();
    let failed = moves_into(&env, other, "failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].detail.as_deref(),
        Some("the drive panicked: boom")
    );
    assert!(env
        .tasks()
        .await
        .iter()
        .filter(|t| t.apply == other)
        .all(|t| t.error.as_deref() == Some("the drive panicked: boom")));

    let (id, lease) = claimed(&env, "users").await;
    env.store
        .write(
            &lease,
            ApplyState::FailedRetryable,
            ResumeState::default(),
            Some("cannot connect to the target: connection refused".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        env.row(id).await.error.as_deref(),
        Some("cannot connect to the target: connection refused")
    );
    assert!(env
        .tasks()
        .await
        .iter()
        .filter(|t| t.apply == id)
        .all(|t| t.error.as_deref() == Some("cannot connect to the target: connection refused")));

    env.cleanup().await;
}

async fn a_hold_for_a_person_says_why(env: Env) {
    let why = "Spirit exited with exit status: 1: cutover failed: ownership ambiguous";
    let id = running_then(&env, ApplyState::Paused, why).await;
    assert_eq!(env.row(id).await.error.as_deref(), Some(why));
    let held = moves_into(&env, id, "paused").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].detail.as_deref(), Some(why));
    // The tasks did not fail: they carry no reason.
    assert!(env
        .tasks()
        .await
        .iter()
        .filter(|t| t.apply == id)
        .all(|t| t.error.is_none()));
    env.cleanup().await;
}

conformance!(
    a_failed_write_keeps_the_engines_words_everywhere,
    a_retryable_failure_and_a_failed_closed_apply_say_why_too,
    a_hold_for_a_person_says_why,
);
