//! Both stores keep what an engine last said of an operation's work on its task rows, under
//! that operation's lease: a displaced owner's report changes nothing, and a rollout member's
//! report lands on its own tasks only.

#[macro_use]
mod store_support;

use applyd::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use applyd::machine::EngineKind;
use applyd::store::progress::{RunnerStart, TaskProgress};
use applyd::store::StoreError;
use store_support::{new_apply, Env};

fn report(copied: u64, start: RunnerStart) -> TaskProgress {
    TaskProgress {
        phase: Some("copyRows".into()),
        rows_copied: Some(copied),
        rows_total: Some(5000),
        percent: Some(copied as f64 / 50.0),
        eta: Some("4s".into()),
        start: Some(start),
        note: Some(format!("{copied} rows so far")),
    }
}

async fn progress_is_kept_under_the_lease(env: Env) {
    let id = env
        .store
        .submit(new_apply("users", EngineKind::Spirit))
        .await
        .expect("submit");
    assert!(env
        .inspect(id)
        .await
        .tasks
        .iter()
        .all(|t| t.progress.is_none()));
    let first = env
        .store
        .claim("w1")
        .await
        .unwrap()
        .expect("claimable")
        .lease;
    env.store
        .record_progress(&first, &report(1200, RunnerStart::Fresh))
        .await
        .unwrap();
    let tasks = env.inspect(id).await.tasks;
    assert!(!tasks.is_empty());
    for t in &tasks {
        assert_eq!(t.progress, Some(report(1200, RunnerStart::Fresh)));
    }

    // A peer takes the apply over after the lease went stale; the old owner's report bounces.
    env.advance(3_600_000);
    let second = env
        .store
        .claim("w2")
        .await
        .unwrap()
        .expect("reclaimable")
        .lease;
    assert!(second.epoch > first.epoch);
    let stale = env
        .store
        .record_progress(&first, &report(4000, RunnerStart::Fresh))
        .await;
    assert!(
        matches!(stale, Err(StoreError::LeaseLost { .. })),
        "a displaced owner's report: {stale:?}"
    );
    assert_eq!(
        env.inspect(id).await.tasks[0].progress,
        Some(report(1200, RunnerStart::Fresh))
    );
    env.store
        .record_progress(&second, &report(2500, RunnerStart::Resumed))
        .await
        .unwrap();
    let status = env.inspect(id).await;
    assert_eq!(
        status.tasks[0].progress,
        Some(report(2500, RunnerStart::Resumed))
    );

    // What an engine says is bounded before it is kept.
    let wild = TaskProgress {
        phase: Some("x".repeat(300)),
        percent: Some(f64::INFINITY),
        ..report(1, RunnerStart::Restarted)
    };
    env.store.record_progress(&second, &wild).await.unwrap();
    let kept = env.inspect(id).await.tasks[0].progress.clone().unwrap();
    assert_eq!(kept.phase.as_deref().map(str::len), Some(64));
    assert_eq!(kept.percent, None);
    assert_eq!(kept.start, Some(RunnerStart::Restarted));
    env.cleanup().await;
}

async fn a_rollout_members_progress_lands_on_its_own_tasks(env: Env) {
    let id = env
        .store
        .submit(applyd::store::NewApply {
            rollout: Some(RolloutPlan {
                deployments: vec!["us-east-1".into(), "eu-west-1".into()],
                cutover_policy: CutoverPolicy::Parallel,
                on_failure: OnFailure::Halt,
                max_drivers_per_apply: 2,
                table_steps: false,
            }),
            ..new_apply("users", EngineKind::PlanetScale)
        })
        .await
        .expect("submit");
    let first = env.store.claim_operation("w1").await.unwrap().expect("O1");
    let second = env.store.claim_operation("w2").await.unwrap().expect("O1");
    assert_ne!(first.lease.epoch, second.lease.epoch);
    env.store
        .record_progress(&first.lease, &report(10, RunnerStart::Fresh))
        .await
        .unwrap();
    let tasks = env.inspect(id).await.tasks;
    assert_eq!(tasks.len(), 2);
    let with: Vec<bool> = tasks.iter().map(|t| t.progress.is_some()).collect();
    assert_eq!(
        with.iter().filter(|w| **w).count(),
        1,
        "one member's report reaches its task only: {with:?}"
    );
    env.store
        .record_progress(&second.lease, &report(20, RunnerStart::Fresh))
        .await
        .unwrap();
    let mut copied: Vec<Option<u64>> = env
        .inspect(id)
        .await
        .tasks
        .iter()
        .map(|t| t.progress.as_ref().and_then(|p| p.rows_copied))
        .collect();
    copied.sort();
    assert_eq!(copied, vec![Some(10), Some(20)]);
    env.cleanup().await;
}

conformance!(
    progress_is_kept_under_the_lease,
    a_rollout_members_progress_lands_on_its_own_tasks,
);
