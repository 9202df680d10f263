//! How a Spirit run ends badly, against the test MariaDB with the `applyd-spirit-standin`
//! executable in place of `spirit`: a change Spirit cannot make is a clear permanent failure; a
//! sentinel wait that timed out is not retried (a retry could copy everything again) and keeps
//! the copy; a cutover whose outcome Spirit cannot see ("ownership ambiguous") is held for a
//! person — in the adapter, and through the operator to a stop and a start that finish it.
//! Needs APPLYD_TEST_DATABASE_URL (scripts/test sets it); skipped locally without it, fails
//! under CI.

mod spirit_support;
mod store_support;

use applyd::engine::spirit::SpiritEngine;
use applyd::engine::Engine;
use applyd::machine::table::RunnerGone;
use applyd::machine::{ApplyOptions, ApplyState, EngineCall, Probe};
use applyd::worker::{Observation, RunnerStatus};
use spirit_support::*;

/// The stand-in's cutover RENAME commits, and the run ends as Spirit does when it cannot tell
/// whether it did.
fn config_with_unseen_cutover(url: &str) -> applyd::engine::spirit::SpiritConfig {
    let mut cfg = config(url);
    cfg.env.push((
        "APPLYD_STANDIN_CUTOVER_ERROR".into(),
        "cutover failed: ownership ambiguous; verify table ownership manually before retrying"
            .into(),
    ));
    cfg
}

/// What the adapter says of how the run ended.
async fn final_words(
    engine: &SpiritEngine,
    apply: &applyd::store::ApplyRecord,
    what: &str,
) -> String {
    engine
        .probe(apply, 1, Probe::RunnerStatus)
        .await
        .why
        .unwrap_or_else(|| panic!("{what}"))
}

/// Nobody asked for the cutover within Spirit's sentinel wait (48 h; a test knob here): the run
/// is held for a person, not retried — a retry would wait again or, with the binlog purged
/// meanwhile, copy again — saying what they can do, and its copy, checkpoint and sentinel are
/// kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_wait_that_times_out_is_not_retried_and_keeps_the_copy() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let mut cfg = config(&url);
    cfg.env
        .push(("APPLYD_STANDIN_SENTINEL_WAIT_LIMIT_MS".into(), "400".into()));
    let engine = SpiritEngine::new(cfg);
    let options = ApplyOptions {
        defer_cutover: true,
        ..Default::default()
    };
    let apply = record(&db, "ALTER TABLE items ADD COLUMN late INT NULL", options);
    engine.call(&apply, 1, EngineCall::StartRunner).await;
    let (obs, _) = probe_until(&engine, &apply, "the sentinel wait to time out", |o| {
        finished(o) || *o == Observation::Runner(RunnerStatus::NeedsPerson)
    })
    .await;
    assert_eq!(obs, Observation::Runner(RunnerStatus::NeedsPerson));
    let why = final_words(&engine, &apply, "the failure says why").await;
    assert!(
        why.contains("timed out waiting for sentinel table to be dropped")
            && why.contains("held rather than retried")
            && why.contains("a stop and a start resume from the checkpoint"),
        "{why}"
    );
    for t in ["_items_new", "_items_chkpnt", "_spirit_sentinel"] {
        assert!(table_exists(&url, &db, t).await, "{t} is kept");
    }
    assert!(
        watermark(&url, &db).await > 0,
        "the checkpoint holds the copy"
    );
    assert!(!has_column(&url, &db, "late").await, "never cut over");
    // The person gives the change up: the cancel drops the copy, the checkpoint and the
    // sentinel, so no other run on the schema waits on it.
    assert_eq!(
        engine.call(&apply, 1, EngineCall::CancelRunner).await.obs,
        Observation::Runner(RunnerStatus::Cancelled)
    );
    for t in ["_items_new", "_items_chkpnt", "_spirit_sentinel"] {
        assert!(!table_exists(&url, &db, t).await, "{t} is dropped");
    }
    store_support::drop_database(&url, &db).await;
}

/// Spirit cannot tell whether its cutover RENAME committed ("ownership ambiguous"): the run asks
/// for a person — neither a retry nor a failure — saying so; after the person's stop, a start
/// finds the change in place and Spirit's leftovers are cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ownership_ambiguous_cutover_is_held_for_a_person() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let cfg = config_with_unseen_cutover(&url);
    let engine = SpiritEngine::new(cfg);
    let mut apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN owned INT NULL",
        Default::default(),
    );
    engine.call(&apply, 1, EngineCall::StartRunner).await;
    let (obs, _) = probe_until(&engine, &apply, "the run to end", |o| {
        matches!(
            o,
            Observation::Runner(
                RunnerStatus::Completed | RunnerStatus::Failed { .. } | RunnerStatus::NeedsPerson
            )
        )
    })
    .await;
    assert_eq!(obs, Observation::Runner(RunnerStatus::NeedsPerson));
    let why = final_words(&engine, &apply, "the hold says why").await;
    assert!(
        why.contains("ownership ambiguous") && why.contains("until a person has checked"),
        "{why}"
    );
    assert!(
        has_column(&url, &db, "owned").await,
        "the RENAME did commit"
    );
    // The person checked the table and asks for a stop: nothing runs, so it is stopped.
    assert_eq!(
        engine.call(&apply, 1, EngineCall::StopRunner).await.obs,
        Observation::Runner(RunnerStatus::Stopped)
    );
    // Their start: the change is found in place and Spirit's leftovers go.
    apply.row.epoch = 2;
    apply.row.state = ApplyState::Resuming;
    let fresh = SpiritEngine::new(config(&url));
    assert_eq!(
        fresh.probe(&apply, 2, Probe::RunnerStatus).await.obs,
        Observation::Runner(RunnerStatus::Gone(RunnerGone::NothingLeft))
    );
    assert!(!table_exists(&url, &db, "_items_old").await);
    assert!(!table_exists(&url, &db, "_items_chkpnt").await);
    assert_eq!(rows_in(&url, &db, "items").await, ROWS);
    store_support::drop_database(&url, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ddl_is_a_clear_permanent_failure() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let engine = SpiritEngine::new(config(&url));
    let apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN oops NOT_A_TYPE",
        Default::default(),
    );
    engine.call(&apply, 1, EngineCall::StartRunner).await;
    let (obs, _) = probe_until(&engine, &apply, "the failure", |o| {
        matches!(
            o,
            Observation::Runner(RunnerStatus::Completed | RunnerStatus::Failed { .. })
        )
    })
    .await;
    assert_eq!(
        obs,
        Observation::Runner(RunnerStatus::Failed { retryable: false })
    );
    // The failure comes with Spirit's own words, which the failed state is written with.
    let why = final_words(&engine, &apply, "a failure says why").await;
    assert!(
        why.starts_with("Spirit exited with") && why.contains("NOT_A_TYPE"),
        "{why}"
    );
    assert_eq!(
        scalar(&url, &db, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_items_new'").await,
        Some(0),
        "no half-made copy left behind"
    );
    // Statements Spirit cannot take never start a process.
    let other = record(&db, "UPDATE items SET name = 'x'", Default::default());
    let refused = engine.call(&other, 1, EngineCall::StartRunner).await;
    assert_eq!(
        refused.obs,
        Observation::Runner(RunnerStatus::Failed { retryable: false })
    );
    let why = refused.why.expect("a refusal says why");
    assert!(why.contains("Spirit cannot run this change"), "{why}");
    store_support::drop_database(&url, &db).await;
}

/// An operator (one driver, on the memory store) driving a Spirit apply whose cutover RENAME
/// commits unseen, until the apply is held for a person.
struct Held {
    store: std::sync::Arc<applyd::store::memory::MemoryStore>,
    id: applyd::worker::ApplyId,
    stop_pool: tokio::sync::watch::Sender<bool>,
    pool: tokio::task::JoinHandle<()>,
}

impl Held {
    async fn start(url: &str, db: &str) -> Held {
        use applyd::machine::{EngineKind, Rules};
        use applyd::operator::{Runtime, RuntimeConfig};
        use applyd::store::memory::{Clock, MemoryStore, MonotonicClock};
        use applyd::store::{NewApply, Target};
        use std::sync::Arc;
        use std::time::Duration;

        let cfg = config_with_unseen_cutover(url);
        let rules = Rules::default();
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let store = Arc::new(MemoryStore::new(rules, clock));
        let id = store
            .submit(NewApply {
                allow_destructive: false,
                rollout: None,
                target: Target {
                    database: db.to_string(),
                    environment: "test".into(),
                },
                engine: EngineKind::Spirit,
                ddl: vec!["ALTER TABLE items ADD COLUMN owned INT NULL".into()],
                options: ApplyOptions::default(),
            })
            .expect("submit");
        let runtime = Arc::new(Runtime::new(
            store.clone(),
            Arc::new(SpiritEngine::new(cfg)),
            RuntimeConfig {
                owner_prefix: "held".into(),
                drivers: 1,
                poll_interval: Duration::from_millis(50),
                backoff: Duration::from_millis(100),
                heartbeat_interval: Duration::from_millis(200),
                shutdown_deadline: Duration::from_secs(5),
                max_commands_per_drive: 100_000,
                rules,
                claim_path: Default::default(),
            },
        ));
        let (stop_pool, shutdown) = tokio::sync::watch::channel(false);
        let pool = tokio::spawn(runtime.run(shutdown));
        let held = Held {
            store,
            id,
            stop_pool,
            pool,
        };
        held.reaches(ApplyState::Paused).await;
        let row = held.store.row(id).unwrap();
        let why = row.error_message.expect("the hold says why");
        assert!(why.contains("ownership ambiguous"), "{why}");
        assert_eq!(row.lease_owner, None, "a hold gives its lease back");
        held
    }

    async fn reaches(&self, state: ApplyState) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.store.row(self.id).unwrap().state != state {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {state}: {:?}",
                self.store.row(self.id).unwrap().state
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn finish(self, url: &str, db: &str) {
        assert!(has_column(url, db, "owned").await);
        assert_eq!(rows_in(url, db, "items").await, ROWS);
        assert!(!table_exists(url, db, "_items_old").await);
        self.stop_pool.send(true).unwrap();
        self.pool.await.unwrap();
        store_support::drop_database(url, db).await;
    }
}

/// The same hold through the operator: the apply moves to `paused` with Spirit's words and its
/// lease released, and no claim takes it by itself; a person's stop, then start, finds the
/// change in place and the apply completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_holds_an_ownership_ambiguous_apply_until_a_stop_and_a_start() {
    use applyd::machine::ControlOp;
    let Some((url, db)) = setup().await else {
        return;
    };
    let held = Held::start(&url, &db).await;
    // Held: polls pass and nothing takes it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(held.store.row(held.id).unwrap().state, ApplyState::Paused);

    held.store.request(held.id, ControlOp::Stop).expect("stop");
    held.reaches(ApplyState::Stopped).await;
    held.store
        .request(held.id, ControlOp::Start)
        .expect("start");
    held.reaches(ApplyState::Completed).await;
    assert_eq!(
        held.store.row(held.id).unwrap().error_message,
        None,
        "the person's start made the hold's reason history"
    );
    held.finish(&url, &db).await;
}

/// A person's cancel of a held apply whose change is in place after all: the apply is recorded
/// completed and the cancel refused as too late — never a cancel re-issued without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_hold_whose_change_is_in_place_records_it_completed() {
    use applyd::machine::{ControlOp, ControlStatus};
    let Some((url, db)) = setup().await else {
        return;
    };
    let held = Held::start(&url, &db).await;
    held.store
        .request(held.id, ControlOp::Cancel)
        .expect("cancel");
    held.reaches(ApplyState::Completed).await;
    let cancel = held
        .store
        .request_status(held.id, ControlOp::Cancel)
        .expect("the cancel request");
    assert!(
        matches!(cancel.status, ControlStatus::Failed),
        "the cancel is refused: {cancel:?}"
    );
    held.finish(&url, &db).await;
}

/// A rollout's operation is never held — no claim arm takes a held operation, so its rollout
/// could no longer be stopped or cancelled: "ownership ambiguous" fails it for good instead,
/// with the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ownership_ambiguous_rollout_operation_fails_for_good() {
    let Some((url, db)) = setup().await else {
        return;
    };
    let mut cfg = config_with_unseen_cutover(&url);
    // The deployment's own server entry (the same MariaDB here).
    let server = cfg.default_endpoint();
    cfg.hosts.insert("test/us-east-1".into(), server);
    let engine = SpiritEngine::new(cfg);
    let mut apply = record(
        &db,
        "ALTER TABLE items ADD COLUMN owned INT NULL",
        Default::default(),
    );
    std::sync::Arc::make_mut(&mut apply.spec).deployment = "us-east-1".into();
    engine.call(&apply, 1, EngineCall::StartRunner).await;
    let (obs, _) = probe_until(&engine, &apply, "the run to end", |o| {
        finished(o) || *o == Observation::Runner(RunnerStatus::NeedsPerson)
    })
    .await;
    assert_eq!(
        obs,
        Observation::Runner(RunnerStatus::Failed { retryable: false })
    );
    let why = final_words(&engine, &apply, "the failure says why").await;
    assert!(
        why.contains("ownership ambiguous") && why.contains("cannot be held"),
        "{why}"
    );
    store_support::drop_database(&url, &db).await;
}
