//! Behaviour only the MySQL store can show: rows written by something else (unknown states,
//! half-created applies) and the schema's agreement with the rules.

mod store_support;

use applyd::machine::{ApplyOptions, ApplyState, ClaimClass, ControlOp, EngineKind, Rules};
use applyd::store::{Lease, NewApply, StoreError, Target};
use applyd::worker::ResumeState;
use store_support::Env;

fn new_apply(db: &str) -> NewApply {
    NewApply {
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
            .write(&lease, ApplyState::Running, ResumeState::default())
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
