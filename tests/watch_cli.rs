//! `applyd watch` and `applyd submit --wait` as scripts use them: they follow an apply on a real
//! operator until it ends, print its progress as it changes, and exit 0 only for `completed`.

mod serve_support;
mod store_support;

use std::process::{Command, Output};

use applyd::machine::{ApplyOptions, ControlOp, EngineKind};
use applyd::store::Store;
use serve_support::{apply, BIN};

/// Runs `applyd ARGS` off the async runtime (it blocks until the apply ends).
async fn applyd(db_url: &str, args: Vec<String>) -> Output {
    let db_url = db_url.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("APPLYD_DATABASE_URL", db_url)
            .env_remove("APPLYD_CONFIG")
            .output()
            .expect("run applyd")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_progress_and_exits_with_how_the_apply_ended() {
    let Some(served) = serve_support::serve(&["--fast"], None).await else {
        return;
    };
    let store = &served.store;

    // A Spirit copy (6,000 rows at 2,000 rows/s): watch prints its progress as it moves.
    let copy = store
        .submit(apply("shop", EngineKind::Spirit, ApplyOptions::default()))
        .await
        .unwrap();
    let out = applyd(
        &served.db_url,
        vec![
            "watch".into(),
            format!("apply-{copy}"),
            "--interval-ms".into(),
            "100".into(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copyRows") && stdout.contains("/6000 rows"),
        "{stdout}"
    );
    let copy_lines = stdout.lines().filter(|l| l.contains("copyRows")).count();
    assert!(copy_lines >= 2, "progress printed as it changed:\n{stdout}");
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("apply-{copy} ended completed")),
        "{stdout}"
    );

    // Cancelled while waiting at its deploy gate: a non-zero code of its own.
    let gated = store
        .submit(apply(
            "orders",
            EngineKind::PlanetScale,
            ApplyOptions {
                defer_deploy: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    store.request(gated, ControlOp::Cancel).await.unwrap();
    let out = applyd(&served.db_url, vec!["watch".into(), gated.to_string()]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ended cancelled"));

    // submit --wait: submits, follows, and exits with the same codes.
    let out = applyd(
        &served.db_url,
        [
            "submit",
            "--database",
            "billing",
            "--environment",
            "production",
            "--engine",
            "planetscale",
            "--ddl",
            "ALTER TABLE invoices ADD COLUMN paid_at DATETIME",
            "--skip-revert",
            "--wait",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("submitted apply-") && stdout.contains("ended completed"),
        "{stdout}"
    );

    // Waiting for a person past --timeout: code 6, where it stands and what it waits for; the
    // apply goes on.
    let waiting = store
        .submit(apply(
            "ledger",
            EngineKind::PlanetScale,
            ApplyOptions {
                defer_cutover: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let out = applyd(
        &served.db_url,
        [
            "watch",
            &format!("apply-{waiting}"),
            "--interval-ms",
            "100",
            "--timeout",
            "4",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    assert!(
        stdout.contains(&format!("apply-{waiting} still "))
            && stdout.contains("after 4 s; it goes on without this watch"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("  ")),
        "the explanation follows:\n{stdout}"
    );
    use applyd::store::status::Inspect;
    assert!(!store.status(waiting).await.unwrap().state.is_terminal());

    // An apply that does not exist: applyd's own error, code 1.
    let out = applyd(&served.db_url, vec!["watch".into(), "apply-999999".into()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("applyd watch:"));
}
