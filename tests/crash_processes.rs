//! Crash test on real processes: MariaDB, the fake engines served over loopback, and three
//! `applyd serve` processes with a 2 s lease. A loop SIGKILLs and restarts a random process every
//! few seconds and SIGSTOPs one past its lease once. Every apply and every operation of four
//! rollouts must still complete, with no deploy request created twice, no write with a stale
//! epoch landed, and no apply lost.

mod serve_support;
mod store_support;

use std::time::{Duration, Instant};

use applyd::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use applyd::machine::{ApplyOptions, ApplyState, EngineKind, Rules};
use applyd::store::mysql::MySqlStore;
use applyd::store::status::Inspect;
use applyd::store::{NewApply, Store, Target};
use serve_support::{fake_engines, operator_command, remote_fake, signal, Killed};

/// An operator process, killed on drop, and the host its Spirit runners live on.
struct Proc {
    child: Killed,
    host: u32,
}

fn spawn_operator(db_url: &str, engines_url: &str, host: u32) -> Proc {
    let child = operator_command(db_url, &format!("crash-p{host}"), 2000)
        .envs(remote_fake(engines_url, host))
        .spawn()
        .expect("start applyd serve");
    Proc {
        child: Killed(child),
        host,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_sigstop_lose_nothing_and_duplicate_nothing() {
    let Some(url) = store_support::mysql_url() else {
        return;
    };
    let (options, name) = store_support::fresh_database(&url).await;
    let db_url = format!("{}/{name}", url.trim_end_matches('/'));
    let store = MySqlStore::connect_with(options, Rules::default(), 8)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");

    let (_engines, engines_url) = fake_engines(&["--fast"], &[]);
    let http = reqwest::Client::new();

    let mut ids = Vec::new();
    for i in 0..30u32 {
        let engine = if i % 2 == 0 {
            EngineKind::PlanetScale
        } else {
            EngineKind::Spirit
        };
        let id = store
            .submit(NewApply {
                allow_destructive: false,
                rollout: None,
                target: Target {
                    database: format!("db{i}"),
                    environment: "prod".into(),
                },
                engine,
                ddl: vec![format!("ALTER TABLE t{i} ADD COLUMN c INT")],
                options: ApplyOptions {
                    skip_revert: true,
                    ..Default::default()
                },
            })
            .await
            .expect("submit");
        ids.push(id);
    }
    // Rollouts: each operation holds its own lease, and several may run at once.
    let rollouts = [
        (EngineKind::PlanetScale, CutoverPolicy::Rolling, 3),
        (EngineKind::PlanetScale, CutoverPolicy::Parallel, 3),
        (EngineKind::PlanetScale, CutoverPolicy::Barrier, 2),
        (EngineKind::Spirit, CutoverPolicy::Rolling, 3),
    ];
    for (k, (engine, cutover, n)) in rollouts.iter().enumerate() {
        let id = store
            .submit(NewApply {
                allow_destructive: false,
                rollout: Some(RolloutPlan {
                    deployments: (1..=*n).map(|d| format!("d{d}")).collect(),
                    cutover_policy: *cutover,
                    on_failure: OnFailure::Halt,
                    max_drivers_per_apply: 2,
                    table_steps: false,
                }),
                target: Target {
                    database: format!("rollout{k}"),
                    environment: "prod".into(),
                },
                engine: *engine,
                ddl: vec![format!("ALTER TABLE t_rollout{k} ADD COLUMN c INT")],
                options: ApplyOptions {
                    skip_revert: true,
                    ..Default::default()
                },
            })
            .await
            .expect("submit a rollout");
        ids.push(id);
    }
    let planetscale_operations = 15 + 3 + 3 + 2;

    let mut procs: Vec<Proc> = (1..=3)
        .map(|h| spawn_operator(&db_url, &engines_url, h))
        .collect();
    let mut next_host = 4u32;
    // A fixed pseudo-random sequence keeps the schedule reproducible.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let chaos_until = Instant::now() + Duration::from_secs(20);
    let mut stopped_once = false;
    let mut kills = 0;
    while Instant::now() < chaos_until {
        tokio::time::sleep(Duration::from_millis(1_500 + next() % 2_000)).await;
        let victim = (next() % procs.len() as u64) as usize;
        if !stopped_once && kills == 2 {
            // Frozen past its lease: peers reclaim; when it wakes, its writes must bounce.
            let pid = procs[victim].child.0.id();
            signal(pid, "-STOP");
            tokio::time::sleep(Duration::from_millis(3_500)).await;
            signal(pid, "-CONT");
            stopped_once = true;
            continue;
        }
        let dead = std::mem::replace(
            &mut procs[victim],
            spawn_operator(&db_url, &engines_url, next_host),
        );
        next_host += 1;
        let host = dead.host;
        drop(dead);
        // The runners a killed process hosted die with it.
        let _ = http
            .post(format!("{engines_url}/_fake/crash-host/{host}"))
            .send()
            .await;
        kills += 1;
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let statuses = loop {
        let all = store.list(100).await.expect("list");
        if all.iter().all(|a| a.state.is_terminal()) || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for p in &procs {
        signal(p.child.0.id(), "-TERM");
    }

    assert_eq!(statuses.len(), 34, "no apply lost");
    for s in statuses.iter().filter(|s| s.rollout.is_some()) {
        assert!(
            s.operations
                .iter()
                .all(|o| o.state == ApplyState::Completed),
            "every operation of {} completed: {:?}",
            s.identifier,
            s.operations
        );
    }
    let unfinished: Vec<String> = statuses
        .iter()
        .filter(|a| a.state != ApplyState::Completed)
        .map(|a| {
            format!(
                "{} {} owner {:?} epoch {}",
                a.identifier, a.state, a.lease_owner, a.lease_epoch
            )
        })
        .collect();
    assert!(
        unfinished.is_empty(),
        "every apply completes: {unfinished:#?}"
    );
    assert!(
        kills >= 4 && stopped_once,
        "the chaos loop ran: {kills} kills"
    );

    let facts: applyd::engine::fake_server::Facts = http
        .get(format!("{engines_url}/_fake/facts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (branch, n) in &facts.deploy_requests {
        assert_eq!(*n, 1, "branch {branch} has {n} deploy requests");
    }
    assert_eq!(
        facts.deploy_requests.len(),
        planetscale_operations,
        "every PlanetScale apply and rollout operation created its deploy request"
    );
    assert_eq!(
        facts.branch_ddl.len(),
        planetscale_operations,
        "every PlanetScale apply and rollout operation applied its DDL to its branch"
    );
    for (branch, ddl) in &facts.branch_ddl {
        assert!(
            ddl.len() == 1 && ddl[0].starts_with("ALTER TABLE t"),
            "branch {branch} got {ddl:?}"
        );
    }

    // The audit log: every write carries the epoch of the latest claim before it.
    let logs = store.stored_logs().await.expect("logs");
    let audit =
        applyd::store::audit::summarise(logs.iter().map(|l| applyd::store::audit::AuditFact {
            apply: l.apply,
            operation: l.operation,
            cause: &l.cause,
            epoch: l.epoch,
        }));
    assert!(audit.fencing_held(), "fencing failed: {audit:?}");
    let reclaims = audit.reclaims;
    assert!(reclaims > 0, "the crashes forced reclaims");
    eprintln!(
        "crash test: {kills} kills, 1 stop past the lease, {reclaims} reclaims, {} audit entries",
        logs.len()
    );
    store_support::drop_database(&url, &name).await;
}
