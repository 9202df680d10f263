//! The README's first command, as a test: the demo must end with every apply completed, one
//! deploy request per PlanetScale apply, and both kills followed by a reclaim; and its rollout
//! completed deployment by deployment although the process copying one of its operations died.

use applyd::demo::{DemoSummary, ROLLOUT_DEPLOYMENTS};
use applyd::machine::ApplyState;

/// The rollout finished, in deployment order, with its kill behind it.
fn assert_rollout_in_order(summary: &DemoSummary, all: &str) {
    let rollout = summary.rollout.as_ref().expect("the rollout ran");
    assert_eq!(rollout.parent, ApplyState::Completed, "{all}");
    assert_eq!(rollout.completed, ROLLOUT_DEPLOYMENTS, "{all}");
    assert!(rollout.killed, "{all}");
    assert!(all.contains("#3 eu-west-1 completed"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_kills_three_drivers_and_every_apply_and_the_rollout_still_complete() {
    let mut lines = Vec::new();
    let summary = applyd::demo::run(|l| lines.push(l.to_string())).await;
    let all = lines.join("\n") + "\n" + &summary.lines.join("\n");
    assert!(summary.ok, "{all}");
    assert!(all.contains("reclaimed by"), "{all}");
    assert!(all.contains("while apply-1 was in"), "{all}");
    assert_rollout_in_order(&summary, &all);
}

mod store_support;

/// `applyd demo --database-url`: the same story on MariaDB, read back through the MySQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_on_mysql_kills_two_drivers_and_every_apply_still_completes() {
    let Some(url) = store_support::mysql_url() else {
        return;
    };
    let (_, name) = store_support::fresh_database(&url).await;
    let db_url = format!("{}/{name}", url.trim_end_matches('/'));
    let mut lines = Vec::new();
    let summary = applyd::demo::run_on(applyd::demo::DemoStore::MySql { url: db_url }, |l| {
        lines.push(l.to_string())
    })
    .await
    .expect("the demo database is reachable");
    let all = lines.join("\n") + "\n" + &summary.lines.join("\n");
    assert!(summary.ok, "{all}");
    assert!(all.contains("reclaimed by"), "{all}");
    assert!(all.contains("stale writes landed: 0"), "{all}");
    assert_rollout_in_order(&summary, &all);
    store_support::drop_database(&url, &name).await;
}

#[tokio::test]
async fn the_demo_names_an_unreachable_database() {
    let err = applyd::demo::run_on(
        applyd::demo::DemoStore::MySql {
            url: "mysql://nobody@127.0.0.1:1/nothing".into(),
        },
        |_| {},
    )
    .await
    .err()
    .expect("port 1 has no database");
    assert!(err.contains("--database-url"), "{err}");
}
