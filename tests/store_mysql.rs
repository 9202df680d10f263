//! Behaviour only the MySQL store can show: rows written by something else (unknown states,
//! half-created applies) and the schema's agreement with the rules.

mod store_support;

use applyd::machine::{ApplyOptions, ApplyState, ClaimClass, ControlOp, EngineKind, Rules};
use applyd::store::{Lease, NewApply, StoreError, Target};
use applyd::worker::ResumeState;
use store_support::Env;

fn new_apply(db: &str) -> NewApply {
    NewApply {
        allow_destructive: false,
        rollout: None,
        target: Target {
            database: db.into(),
            environment: "prod".into(),
        },
        engine: EngineKind::Spirit,
        ddl: vec!["ALTER TABLE t ADD COLUMN c INT".into()],
        options: ApplyOptions::default(),
    }
}

async fn exec(env: &Env, sql: &str) {
    sqlx::query(sql)
        .execute(env.mysql_store().unwrap().pool())
        .await
        .expect(sql);
}

#[tokio::test]
async fn an_unknown_state_is_reported_skipped_and_never_rewritten() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let bad = env.store.submit(new_apply("a")).await.unwrap();
    let good = env.store.submit(new_apply("b")).await.unwrap();
    exec(
        &env,
        &format!("UPDATE applies SET state = 'exploded' WHERE id = {bad}"),
    )
    .await;
    let c = env
        .store
        .claim("w1")
        .await
        .unwrap()
        .expect("the readable row is claimed");
    assert_eq!(c.lease.apply, good);
    assert!(env.store.claim("w1").await.unwrap().is_none());
    let lease = Lease {
        apply: bad,
        owner: "w".into(),
        epoch: 0,
    };
    match env.store.load(&lease).await {
        Err(StoreError::BadRow {
            apply,
            column,
            detail,
        }) => {
            assert_eq!((apply, column), (bad, "state"));
            assert!(detail.contains("exploded"), "{detail}");
        }
        other => panic!("expected BadRow, got {other:?}"),
    }
    assert!(matches!(
        env.store
            .write(&lease, ApplyState::Running, ResumeState::default(), None)
            .await,
        Err(StoreError::BadRow { .. })
    ));
    assert!(matches!(
        env.store.request(bad, ControlOp::Cancel).await,
        Err(StoreError::BadRow { .. })
    ));
    assert_eq!(env.store.expire_retryable().await.unwrap(), 0);
    assert_eq!(env.row(bad).await.state, "exploded", "never rewritten");
    // A bad engine or options column is skipped the same way.
    exec(
        &env,
        &format!("UPDATE applies SET state = 'pending', engine = 'oracle' WHERE id = {bad}"),
    )
    .await;
    assert!(env.store.claim("w1").await.unwrap().is_none());
    // Unknown states hold their target (fail closed).
    assert!(matches!(
        env.store.submit(new_apply("a")).await,
        Err(StoreError::ActiveApplyExists { .. })
    ));
    env.cleanup().await;
}

#[tokio::test]
async fn the_legacy_state_alias_is_claimed_and_kept() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let id = env.store.submit(new_apply("a")).await.unwrap();
    exec(
        &env,
        &format!("UPDATE applies SET state = 'recovering_cutover' WHERE id = {id}"),
    )
    .await;
    let c = env
        .store
        .claim("w1")
        .await
        .unwrap()
        .expect("never leased: claimable as recovering");
    assert_eq!(c.pre_claim, ApplyState::Recovering);
    assert_eq!(
        env.row(id).await.state,
        "recovering_cutover",
        "a same-state claim does not rewrite it"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_pending_apply_without_children_is_never_claimed() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    exec(
        &env,
        "INSERT INTO applies (database_name, environment, engine, state, options, ddl, state_entered_at, \
         created_at, updated_at) VALUES ('a', 'prod', 'spirit', 'pending', '{}', '[]', NOW(6), NOW(6), NOW(6))",
    )
    .await;
    assert!(
        env.store.claim("w1").await.unwrap().is_none(),
        "half-created apply"
    );
    assert!(env.store.claim_operation("w1").await.unwrap().is_none());
    exec(
        &env,
        "INSERT INTO apply_operations (apply_id, state, engine_resume_state, created_at, updated_at) \
         SELECT id, 'pending', '{}', NOW(6), NOW(6) FROM applies",
    )
    .await;
    assert!(
        env.store.claim("w1").await.unwrap().is_some(),
        "complete now"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_generated_columns_agree_with_the_rules() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let rules = Rules::default();
    for (i, state) in ApplyState::ALL.iter().enumerate() {
        exec(
            &env,
            &format!(
                "INSERT INTO applies (database_name, environment, engine, state, options, ddl, state_entered_at, \
                 created_at, updated_at) VALUES ('db{i}', 'prod', 'spirit', '{}', '{{}}', '[]', NOW(6), NOW(6), NOW(6))",
                state.as_str()
            ),
        )
        .await;
    }
    let rows: Vec<(String, Option<i8>, Option<i8>)> = sqlx::query_as(
        "SELECT CAST(state AS CHAR), active_flag, claim_open FROM applies ORDER BY id",
    )
    .fetch_all(env.mysql_store().unwrap().pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), ApplyState::ALL.len());
    for ((text, active, open), state) in rows.iter().zip(ApplyState::ALL) {
        assert_eq!(text, state.as_str());
        assert_eq!(
            active.is_some(),
            state.is_active(),
            "active_flag of {state}"
        );
        assert_eq!(
            open.is_some(),
            rules.class_of(*state) != ClaimClass::Terminal,
            "claim_open of {state}"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn migrations_apply_twice() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    env.mysql_store()
        .unwrap()
        .migrate()
        .await
        .expect("a second run is a no-op");
    env.cleanup().await;
}

#[tokio::test]
async fn an_operation_row_off_its_parents_lease_fences_the_owner() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let id = env.store.submit(new_apply("a")).await.unwrap();
    let c = env.store.claim_operation("w1").await.unwrap().unwrap();
    exec(
        &env,
        &format!("UPDATE apply_operations SET lease_epoch = 99 WHERE apply_id = {id}"),
    )
    .await;
    let lost = |r: Result<(), StoreError>| matches!(r, Err(StoreError::LeaseLost { .. }));
    assert!(lost(
        env.store
            .write(
                &c.lease,
                ApplyState::WaitingForCutover,
                ResumeState::default(),
                None
            )
            .await
    ));
    let row = env.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.epoch),
        ("running", 1),
        "the apply write was rolled back with the operation write"
    );
    assert_eq!(env.task_states(id).await, ["running"]);
    assert!(lost(env.store.heartbeat(&c.lease).await));
    assert!(lost(env.store.release(&c.lease).await));
    // Once the apply's heartbeat is stale, a claim makes the lease whole again.
    env.advance(applyd::machine::Params::DEFAULT.stale_after_ms);
    let again = env.store.claim("w2").await.unwrap().expect("A2");
    assert_eq!(again.lease.epoch, 2);
    assert_eq!(env.operation(id).await.epoch, 2);
    env.store.heartbeat(&again.lease).await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn unknown_operation_and_task_states_are_reported_and_left_alone() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let mut new = new_apply("a");
    new.ddl.push("ALTER TABLE u ADD COLUMN d INT".into());
    let id = env.store.submit(new).await.unwrap();
    exec(
        &env,
        &format!("UPDATE apply_operations SET state = 'exploded' WHERE apply_id = {id}"),
    )
    .await;
    assert!(
        env.store.claim_operation("w1").await.unwrap().is_none(),
        "an unreadable operation is skipped"
    );
    // The apply path claims the readable apply; its operation row mirrors it again.
    let c = env.store.claim("w1").await.unwrap().expect("A1");
    assert_eq!(env.operation(id).await.state, "running");
    exec(
        &env,
        &format!("UPDATE tasks SET state = 'melted' WHERE apply_id = {id} AND seq = 0"),
    )
    .await;
    env.store
        .write(
            &c.lease,
            ApplyState::WaitingForCutover,
            ResumeState::default(),
            None,
        )
        .await
        .expect("a task we cannot read does not block its apply");
    assert_eq!(
        env.task_states(id).await,
        ["melted", "waiting_for_cutover"],
        "the unreadable task is left as it is"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_migration_gives_existing_operations_their_parents_lease() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let id = env.store.submit(new_apply("a")).await.unwrap();
    let c = env.store.claim("w1").await.unwrap().unwrap();
    // As an older operator left it: the operation row never leased.
    exec(
        &env,
        &format!(
            "UPDATE apply_operations SET lease_owner = NULL, lease_epoch = 0, lease_acquired_at = NULL, \
             heartbeat_at = NULL, state = 'pending' WHERE apply_id = {id}"
        ),
    )
    .await;
    let sql = include_str!("../migrations/20261201000001_operation_claims.sql");
    let update = &sql[sql.find("UPDATE").expect("the migration's UPDATE")..];
    exec(&env, update).await;
    let op = env.operation(id).await;
    assert_eq!(
        (op.state.as_str(), op.owner.as_deref(), op.epoch),
        ("running", Some("w1"), 1)
    );
    env.store
        .heartbeat(&c.lease)
        .await
        .expect("the lease is whole");
    env.cleanup().await;
}

#[tokio::test]
async fn operations_are_claimed_in_created_at_order_even_against_id_order() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let first = env.store.submit(new_apply("a")).await.unwrap();
    let second = env.store.submit(new_apply("b")).await.unwrap();
    // A clock step backwards between the two submissions.
    exec(
        &env,
        &format!(
            "UPDATE apply_operations SET created_at = created_at - INTERVAL 1 SECOND WHERE apply_id = {second}"
        ),
    )
    .await;
    let c = env.store.claim_operation("w1").await.unwrap().unwrap();
    assert_eq!(c.lease.apply, second, "earliest created first");
    let c = env.store.claim_operation("w1").await.unwrap().unwrap();
    assert_eq!(c.lease.apply, first);
    assert!(env.store.claim_operation("w1").await.unwrap().is_none());
    env.cleanup().await;
}

/// Every (re-)issue of a request gets a new number: a rollout's operation that acknowledged
/// one issue must see the next (`rollout::requests::sees_request`).
#[tokio::test]
async fn a_request_issued_again_gets_a_new_issue_number() {
    let Some(env) = Env::mysql().await else {
        return;
    };
    let id = env.store.submit(new_apply("a")).await.unwrap();
    let c = env.store.claim("w1").await.unwrap().unwrap();
    let issue = || async {
        sqlx::query_scalar::<_, u64>(
            "SELECT issue FROM apply_control_requests WHERE apply_id = ? AND operation = 'stop'",
        )
        .bind(id)
        .fetch_one(env.mysql_store().unwrap().pool())
        .await
        .unwrap()
    };
    env.store.request(id, ControlOp::Stop).await.unwrap();
    assert_eq!(issue().await, 1);
    env.store
        .write(&c.lease, ApplyState::Stopped, ResumeState::default(), None)
        .await
        .unwrap();
    env.store
        .complete_request(&c.lease, ControlOp::Stop)
        .await
        .unwrap();
    env.store.request(id, ControlOp::Start).await.unwrap();
    let again = env.store.claim("w2").await.unwrap().unwrap();
    env.store.request(id, ControlOp::Stop).await.unwrap();
    assert_eq!(issue().await, 2, "a reset is a new issue");
    assert!(env.store.load(&again.lease).await.unwrap().controls.stop);
    env.cleanup().await;
}
