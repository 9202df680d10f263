//! `applyd bench store`: throughput and latency of the MySQL store's claim and heartbeat paths,
//! against a raw single-row `UPDATE … LIMIT 1` measured on the same server in the same run.
//! It works in a scratch database of its own, dropped at the end.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::{Connection, Executor};

use crate::machine::Rules;
use crate::store::mysql::MySqlStore;
use crate::store::{ClaimPath, Lease, Store};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(clap::Subcommand)]
enum BenchWhat {
    /// Claims/s, heartbeats/s and claim latency of the MySQL store vs a raw UPDATE baseline.
    Store(StoreArgs),
    /// Crash → reclaim latency, idle RSS and CPU, and queries per active apply of `applyd serve`.
    Operator(super::bench_operator::OperatorArgs),
}

#[derive(clap::Args)]
struct StoreArgs {
    /// mysql://user:password@host:port (a scratch database is created and dropped there)
    #[arg(long)]
    database_url: String,
    /// Seconds per measured figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Pending applies made ready for each claim run.
    #[arg(long, default_value_t = 4000)]
    rows: usize,
}

const LEVELS: &[usize] = &[1, 4, 16];

pub fn run(args: BenchArgs) -> ExitCode {
    let args = match args.what {
        BenchWhat::Store(args) => args,
        BenchWhat::Operator(args) => return super::bench_operator::run(args),
    };
    match super::runtime().block_on(bench_store(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("applyd bench store: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn bench_store(args: StoreArgs) -> Result<(), Error> {
    let base = MySqlConnectOptions::from_str(&args.database_url)?;
    let db = format!("applyd_bench_{}", std::process::id());
    let mut admin = MySqlConnection::connect_with(&base).await?;
    admin
        .execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str())
        .await?;
    admin
        .execute(format!("CREATE DATABASE `{db}`").as_str())
        .await?;
    let result = measure(&args, base.clone().database(&db)).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str())
        .await?;
    result
}

async fn measure(args: &StoreArgs, options: MySqlConnectOptions) -> Result<(), Error> {
    let window = Duration::from_secs_f64(args.seconds.max(0.1));
    let store = Arc::new(MySqlStore::connect_with(options, Rules::default(), 40).await?);
    store.migrate().await?;
    let pool = store.pool().clone();
    let version: String = sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)")
        .fetch_one(&pool)
        .await?;
    let flush: i64 = sqlx::query_scalar("SELECT CAST(@@innodb_flush_log_at_trx_commit AS SIGNED)")
        .fetch_one(&pool)
        .await?;
    println!("applyd store benchmark: {version}, innodb_flush_log_at_trx_commit={flush}, {:.1} s per figure\n", args.seconds);

    let mut baseline = Vec::new();
    for &n in LEVELS {
        baseline.push(raw_updates(&pool, n, window).await?);
    }
    println!("baseline: raw single-row UPDATE ... LIMIT 1, autocommit, one row per connection");
    println!("  {:>11}  {:>10}", "connections", "commits/s");
    for (n, rate) in LEVELS.iter().zip(&baseline) {
        println!("  {n:>11}  {rate:>10.0}");
    }

    println!("\nclaims: one READ COMMITTED transaction each (candidates from index ranges, SELECT ... FOR UPDATE SKIP LOCKED,");
    println!("guarded UPDATEs of the apply, its operation and its tasks, audit row); the apply path (`claim`) and the");
    println!(
        "operation path (`claim_operation`: the operation row and its parent under one lease)"
    );
    println!(
        "  {:>9}  {:>8}  {:>9}  {:>9}  {:>8}  {:>15}  {:>17}",
        "path", "claimers", "claims/s", "median ms", "p99 ms", "÷ baseline(1)", "÷ baseline(same)"
    );
    let mut leases = Vec::new();
    for path in [ClaimPath::Apply, ClaimPath::Operation] {
        for (i, &n) in LEVELS.iter().enumerate() {
            let run = claims(&store, path, n, args.rows, window).await?;
            println!(
                "  {:>9}  {n:>8}  {:>9.0}  {:>9.2}  {:>8.2}  {:>15.2}  {:>17.2}",
                path.as_str(),
                run.rate,
                run.median_ms,
                run.p99_ms,
                run.rate / baseline[0],
                run.rate / baseline[i]
            );
            leases = run.leases;
        }
    }

    println!("\nheartbeats: one fenced UPDATE of the apply and its operation row, each WHERE lease_epoch = ?");
    println!("  {:>7}  {:>12}", "drivers", "heartbeats/s");
    for &n in LEVELS {
        let rate = heartbeats(&store, &leases, n, window).await?;
        println!("  {n:>7}  {rate:>12.0}");
    }
    Ok(())
}

/// Single-row autocommit UPDATEs from `n` connections, each on its own row.
async fn raw_updates(pool: &MySqlPool, n: usize, window: Duration) -> Result<f64, Error> {
    pool.execute(
        "CREATE TABLE IF NOT EXISTS bench_counter (id INT PRIMARY KEY, hits BIGINT NOT NULL)",
    )
    .await?;
    pool.execute("DELETE FROM bench_counter").await?;
    for id in 0..n {
        sqlx::query("INSERT INTO bench_counter (id, hits) VALUES (?, 0)")
            .bind(id as i32)
            .execute(pool)
            .await?;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|id| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut done = 0u64;
                while start.elapsed() < window {
                    sqlx::query("UPDATE bench_counter SET hits = hits + 1 WHERE id = ? LIMIT 1")
                        .bind(id as i32)
                        .execute(&mut *conn)
                        .await?;
                    done += 1;
                }
                Ok::<u64, sqlx::Error>(done)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

struct ClaimRun {
    rate: f64,
    median_ms: f64,
    p99_ms: f64,
    leases: Vec<Lease>,
}

/// `n` claimers take pending applies through `path` until the window closes or none is left.
async fn claims(
    store: &Arc<MySqlStore>,
    path: ClaimPath,
    n: usize,
    rows: usize,
    window: Duration,
) -> Result<ClaimRun, Error> {
    let pool = store.pool();
    pool.execute("DELETE FROM applies").await?;
    // Pending applies with their operation rows, each on its own target, made in bulk.
    for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!("('bench{i}', 'prod', 'spirit', 'pending', '{{}}', '[\"ALTER TABLE t ENGINE=InnoDB\"]', NOW(6), NOW(6), NOW(6))")
            })
            .collect();
        let sql = format!(
            "INSERT INTO applies (database_name, environment, engine, state, options, ddl, state_entered_at, created_at, updated_at) VALUES {}",
            values.join(", ")
        );
        pool.execute(sql.as_str()).await?;
    }
    pool.execute(
        "INSERT INTO apply_operations (apply_id, state, engine_resume_state, created_at, updated_at) \
         SELECT a.id, 'pending', '{}', NOW(6), NOW(6) FROM applies a",
    )
    .await?;
    pool.execute(
        "INSERT INTO tasks (apply_id, apply_operation_id, seq, ddl, state, created_at, updated_at) \
         SELECT o.apply_id, o.id, 0, 'ALTER TABLE t ENGINE=InnoDB', 'pending', NOW(6), NOW(6) FROM apply_operations o",
    )
    .await?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("bench/driver-{w}");
                let mut latencies = Vec::new();
                let mut leases = Vec::new();
                while start.elapsed() < window {
                    let t = Instant::now();
                    let next = match path {
                        ClaimPath::Apply => store.claim(&owner).await?,
                        ClaimPath::Operation => store.claim_operation(&owner).await?,
                    };
                    let Some(claimed) = next else {
                        break;
                    };
                    latencies.push(t.elapsed());
                    leases.push(claimed.lease);
                }
                Ok::<_, crate::store::StoreError>((latencies, leases))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut leases = Vec::new();
    for t in tasks {
        let (l, c) = t.await??;
        latencies.extend(l);
        leases.extend(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if leases.len() == rows {
        eprintln!("note: all {rows} rows were claimed before the window closed; raise --rows for a steadier figure");
    }
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    Ok(ClaimRun {
        rate: leases.len() as f64 / elapsed,
        median_ms: pick(0.5),
        p99_ms: pick(0.99),
        leases,
    })
}

/// `n` drivers heartbeat their own leases for the window.
async fn heartbeats(
    store: &Arc<MySqlStore>,
    leases: &[Lease],
    n: usize,
    window: Duration,
) -> Result<f64, Error> {
    if leases.is_empty() {
        return Ok(0.0);
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|w| {
            let store = store.clone();
            let lease = leases[w % leases.len()].clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while start.elapsed() < window {
                    store.heartbeat(&lease).await?;
                    done += 1;
                }
                Ok::<u64, crate::store::StoreError>(done)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
