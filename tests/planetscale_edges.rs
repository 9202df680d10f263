//! PlanetScale's edge cases against the fake server: a cancel in progress, a state this build
//! does not know, a failed revert, and a branch that refuses connections (classified against a
//! real server).

mod planetscale_support;
mod store_support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use applyd::config::Secret;
use applyd::engine::fake_server::Faults;
use applyd::engine::planetscale::{
    BranchCredentials, BranchSql, BranchSqlError, MySqlBranchSql, PlanetScaleEngine,
};
use applyd::engine::Engine;
use applyd::machine::{EngineCall, Probe};
use applyd::worker::Observation;
use async_trait::async_trait;
use planetscale_support::*;

/// `in_progress_cancel` is transitional: it is no answer (a transient fault that says so), and
/// the request's settled state is read once it has moved on.
#[tokio::test]
async fn a_cancel_in_progress_is_no_answer_until_it_settles() {
    let fake = Fake::start(Faults::default(), None).await;
    let number = fake.open_request("apply-cancelling").await;
    let (engine, _) = fake.engine(1);
    let record = record_with_request("apply-cancelling", number);
    fake.report(number, "in_progress_cancel", 1).await;
    let reply = engine.probe(&record, 1, Probe::GetDeployRequest).await;
    assert_eq!(
        reply.obs,
        Observation::Fault(applyd::worker::EngineFault::Transient)
    );
    let why = reply.why.unwrap();
    assert!(why.contains("in_progress_cancel"), "{why}");
    let reply = engine.probe(&record, 1, Probe::GetDeployRequest).await;
    assert!(
        matches!(reply.obs, Observation::DeployRequest { id, .. } if id == number),
        "{reply:?}"
    );
}

/// A state this build does not know is retried with the driver's backoff, named in the
/// reason, and becomes a permanent failure only once it has lasted past the engine's patience.
#[tokio::test]
async fn an_unknown_deploy_state_is_retried_then_fails_naming_it() {
    let fake = Fake::start(Faults::default(), None).await;
    let number = fake.open_request("apply-unknown").await;
    let record = record_with_request("apply-unknown", number);
    fake.report(number, "exploded_gently", 100).await;
    let (patient, _) = fake.engine(1);
    for _ in 0..3 {
        let reply = patient.probe(&record, 1, Probe::GetDeployRequest).await;
        assert_eq!(
            reply.obs,
            Observation::Fault(applyd::worker::EngineFault::Transient)
        );
        assert!(reply.why.unwrap().contains("\"exploded_gently\""));
    }
    let (engine, _) = fake.engine(1);
    let impatient = engine.with_patience(Duration::from_millis(30));
    let first = impatient.probe(&record, 1, Probe::GetDeployRequest).await;
    assert_eq!(
        first.obs,
        Observation::Fault(applyd::worker::EngineFault::Transient)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let why = loop {
        let reply = impatient.probe(&record, 1, Probe::GetDeployRequest).await;
        if reply.obs == Observation::Fault(applyd::worker::EngineFault::Permanent) {
            break reply.why.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "never outlasted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        why.contains("exploded_gently") && why.contains("more than"),
        "{why}"
    );
}

/// A failed revert is reported with what it means: the change is probably still live.
#[tokio::test]
async fn a_failed_revert_says_the_change_is_probably_still_live() {
    let fake = Fake::start(Faults::default(), None).await;
    let number = fake.open_request("apply-revert").await;
    let (engine, _) = fake.engine(1);
    let record = record_with_request("apply-revert", number);
    fake.report(number, "complete_revert_error", 1).await;
    let reply = engine.probe(&record, 1, Probe::GetDeployRequest).await;
    assert_eq!(
        reply.obs,
        Observation::DeployRequest {
            id: number,
            state: applyd::machine::EngineState::Failed
        }
    );
    let why = reply.why.unwrap();
    assert!(why.contains("probably still live"), "{why}");
}

fn credentials(host: String, username: &str, password: &str, database: &str) -> BranchCredentials {
    BranchCredentials {
        password_id: "pw1".into(),
        host,
        username: username.into(),
        password: Secret::new(password),
        database: database.into(),
        branch: "applyd-apply-conn".into(),
    }
}

/// A branch that does not take connections yet may still come up: unreachable, retried. A
/// refused account never will: refused, permanent. Checked against a real server.
#[tokio::test]
async fn branch_connection_errors_are_classified() {
    let Some(url) = store_support::mysql_url() else {
        return;
    };
    let (opts, db) = store_support::fresh_database(&url).await;
    let base = sqlx::mysql::MySqlConnectOptions::from_str(&url).unwrap();
    let host = format!("127.0.0.1:{}", base.get_port());
    let user = base.get_username().to_string();
    let password = std::env::var("APPLYD_TEST_DATABASE_PASSWORD").unwrap_or_default();
    let ddl = vec!["CREATE TABLE t (id INT PRIMARY KEY)".to_string()];
    let sql = MySqlBranchSql;

    // Nothing listens on port 1.
    let e = sql
        .apply(
            &credentials("127.0.0.1:1".into(), &user, &password, &db),
            &ddl,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BranchSqlError::Unreachable(_)), "{e:?}");

    let e = sql
        .apply(
            &credentials(host.clone(), "no_such_user", "wrong", &db),
            &ddl,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BranchSqlError::Refused(_)), "{e:?}");
    assert!(e.to_string().contains("Access denied"), "{e}");

    // The DDL applies once; the repeat after a crash counts as applied.
    let creds = credentials(host, &user, &password, &db);
    sql.apply(&creds, &ddl).await.unwrap();
    sql.apply(&creds, &ddl).await.unwrap();
    let e = sql
        .apply(&creds, &["ALTER TABLE t ADD COLUMN c NOPE".to_string()])
        .await
        .unwrap_err();
    assert!(matches!(e, BranchSqlError::Refused(_)), "{e:?}");
    drop(opts);
    store_support::drop_database(&url, &db).await;
}

/// What the branch says about a connection it refuses; it never answers anything else.
struct Unreachable;

#[async_trait]
impl BranchSql for Unreachable {
    async fn apply(&self, _: &BranchCredentials, _: &[String]) -> Result<(), BranchSqlError> {
        Err(BranchSqlError::Unreachable(
            "cannot connect to branch applyd-apply-9 at 127.0.0.1: Connection refused".into(),
        ))
    }
}

/// Right after its creation a branch may refuse connections: the engine retries (a transient
/// fault with the reason), and only a refusal that outlasts its patience fails the apply.
#[tokio::test]
async fn a_branch_refusing_connections_is_retried_then_fails_with_the_reason() {
    let fake = Fake::start(Faults::default(), None).await;
    let client = fake.client("secret-token", 1);
    client
        .create_branch("shop", "applyd-apply-9", "main")
        .await
        .unwrap();
    let engine = PlanetScaleEngine::new(
        fake.client("secret-token", 1),
        Some("shop".into()),
        "main".into(),
        Arc::new(Unreachable),
    )
    .with_patience(Duration::from_millis(30));
    let mut record = record_with_request("apply-9", 1);
    record.row.resume = Default::default();
    let first = engine
        .call(&record, 1, EngineCall::ApplyBranchChanges)
        .await;
    assert_eq!(
        first.obs,
        Observation::Fault(applyd::worker::EngineFault::Transient)
    );
    assert!(first.why.unwrap().contains("Connection refused"));
    until("the refusal to outlast the patience", || {
        let (engine, record) = (&engine, &record);
        async move {
            engine
                .call(record, 1, EngineCall::ApplyBranchChanges)
                .await
                .obs
                == Observation::Fault(applyd::worker::EngineFault::Permanent)
        }
    })
    .await;
    // Every password made on the way was deleted.
    assert_eq!(fake.admin().await["passwords_alive"], 0);
}

/// A request whose checks found lint errors cannot be deployed by waiting: the apply fails,
/// naming each error.
#[tokio::test]
async fn a_request_blocked_by_lint_fails_naming_the_errors() {
    let fake = Fake::start(Faults::default(), None).await;
    let number = fake.open_request("apply-lint").await;
    let (engine, _) = fake.engine(1);
    let record = record_with_request("apply-lint", number);
    fake.report_fields(
        number,
        serde_json::json!({
            "deployable": false,
            "lint_errors": [{
                "lint_error": "NO_PRIMARY_KEY",
                "table_name": "orders",
                "error_description": "table has no primary key"
            }],
            "reads": 5
        }),
    )
    .await;
    let reply = engine.call(&record, 1, EngineCall::Deploy).await;
    assert_eq!(
        reply.obs,
        Observation::Fault(applyd::worker::EngineFault::Permanent)
    );
    let why = reply.why.unwrap();
    assert!(
        why.contains("blocked by lint") && why.contains("orders: table has no primary key"),
        "{why}"
    );
}

/// A database may require a reviewer's approval: the deploy waits for it (a transient fault
/// that says so, never a failure) and goes once the request is approved.
#[tokio::test]
async fn a_deploy_waits_for_approval_then_goes() {
    let fake = Fake::start(Faults::default(), None).await;
    let number = fake.open_request("apply-approval").await;
    let (engine, _) = fake.engine(1);
    let record = record_with_request("apply-approval", number);
    until("the request to be ready", || {
        let (engine, record) = (&engine, &record);
        async move {
            engine.probe(record, 1, Probe::GetDeployRequest).await.obs
                == Observation::DeployRequest {
                    id: number,
                    state: applyd::machine::EngineState::WaitingForDeploy,
                }
        }
    })
    .await;
    // Unapproved for the deploy's read and its read-back.
    fake.report_fields(number, serde_json::json!({ "approved": false, "reads": 2 }))
        .await;
    let reply = engine.call(&record, 1, EngineCall::Deploy).await;
    assert_eq!(
        reply.obs,
        Observation::Fault(applyd::worker::EngineFault::Transient)
    );
    let why = reply.why.unwrap();
    assert!(why.contains("waiting for approval"), "{why}");
    // The wait is shown where people look: the task rows' progress says what it waits for.
    let shown = reply
        .progress
        .expect("the wait is reported for the task rows");
    assert_eq!(shown.phase.as_deref(), Some("ready"));
    assert!(
        shown.summary().contains("is waiting for approval"),
        "{shown:?}"
    );
    // Approved: the same call deploys.
    let reply = engine.call(&record, 1, EngineCall::Deploy).await;
    let shown = reply
        .progress
        .clone()
        .expect("a deploy request's state is reported");
    assert_eq!(shown.note, Some(format!("deploy request #{number}")));
    assert!(
        matches!(
            reply.obs,
            Observation::DeployRequest {
                state: applyd::machine::EngineState::Running
                    | applyd::machine::EngineState::WaitingForCutover,
                ..
            }
        ),
        "{reply:?}"
    );
}

/// Cancelling a deploy under way goes through `in_progress_cancel`: the cancel is no answer
/// until the request settles, and repeating it then reports the request cancelled.
#[tokio::test]
async fn a_cancelled_deploy_settles_through_in_progress_cancel() {
    let fake = Fake::start(Faults::default(), None).await;
    let number = fake.open_request("apply-cancel").await;
    let (engine, _) = fake.engine(1);
    let record = record_with_request("apply-cancel", number);
    until("the deploy to start", || {
        let (engine, record) = (&engine, &record);
        async move {
            matches!(
                engine.call(record, 1, EngineCall::Deploy).await.obs,
                Observation::DeployRequest {
                    state: applyd::machine::EngineState::Running,
                    ..
                }
            )
        }
    })
    .await;
    let first = engine
        .call(&record, 1, EngineCall::CancelDeployRequest)
        .await;
    assert_eq!(
        first.obs,
        Observation::Fault(applyd::worker::EngineFault::Transient),
        "{first:?}"
    );
    assert!(first.why.unwrap().contains("in_progress_cancel"));
    until("the cancel to settle", || {
        let (engine, record) = (&engine, &record);
        async move {
            engine
                .call(record, 1, EngineCall::CancelDeployRequest)
                .await
                .obs
                == Observation::DeployRequest {
                    id: number,
                    state: applyd::machine::EngineState::Cancelled,
                }
        }
    })
    .await;
}
