//! `applyd bench store`: throughput and latency of the MySQL store's claim and heartbeat paths,
//! against a raw single-row `UPDATE … LIMIT 1` measured on the same server in the same run.
//! It works in a scratch database of its own, dropped at the end.

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlSslMode};
use sqlx::{Connection, Executor};

use tokio::sync::watch;

use super::bench_relay::RoundTripRelay;
use crate::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use crate::machine::Rules;
use crate::operator::{Runtime, RuntimeConfig};
use crate::store::memory::{Clock, MonotonicClock};
use crate::store::mysql::MySqlStore;
use crate::store::{claim_next, ClaimPath, Lease, Store};

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
    let result = measure(&args, &base, base.clone().database(&db)).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str())
        .await?;
    result
}

async fn measure(
    args: &StoreArgs,
    base: &MySqlConnectOptions,
    options: MySqlConnectOptions,
) -> Result<(), Error> {
    let window = Duration::from_secs_f64(args.seconds.max(0.1));
    let store = Arc::new(MySqlStore::connect_with(options.clone(), Rules::default(), 40).await?);
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
    let mut first_claim_rate = f64::INFINITY;
    for path in [ClaimPath::Apply, ClaimPath::Operation] {
        for (i, &n) in LEVELS.iter().enumerate() {
            let run = claims(&store, path, n, args.rows, window).await?;
            if n == 1 {
                first_claim_rate = first_claim_rate.min(run.rate);
            }
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

    let (host, port) = (base.get_host().to_string(), base.get_port());
    let relay = RoundTripRelay::start((host, port)).await?;
    let counted = Arc::new(
        MySqlStore::connect_with(
            options
                .host("127.0.0.1")
                .port(relay.addr.port())
                .ssl_mode(MySqlSslMode::Disabled),
            Rules::default(),
            4,
        )
        .await?,
    );
    round_trips(&counted, &relay).await?;
    idle_load(&counted, &relay).await?;

    let claim_ratio = first_claim_rate / baseline[0];
    println!("\ntargets");
    println!(
        "  claims/s at 1 claimer ÷ raw commits/s at 1 connection: {claim_ratio:.2} (target ≥ 0.30: {})",
        verdict(claim_ratio >= 0.30)
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

/// What `n` sequential calls of `call` cost in round trips, per call: (statements, pool pings).
async fn per_call<F, Fut>(
    relay: &RoundTripRelay,
    n: usize,
    mut call: F,
) -> Result<(f64, f64), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    // Warm: the pool's connections and their prepared statements exist before counting (a
    // connection goes back to the pool after its ping, so the next call may take another).
    for _ in 0..20 {
        call().await?;
    }
    let (all, pings) = relay.round_trips();
    for _ in 0..n {
        call().await?;
    }
    let (all2, pings2) = relay.round_trips();
    let pings = pings2 - pings;
    let statements = all2 - all - pings;
    Ok((statements as f64 / n as f64, pings as f64 / n as f64))
}

/// Round trips of one claim on each path, of a claim that finds nothing, and of the idle poll,
/// counted by the relay over sequential calls on warm connections. sqlx's pool pings every
/// connection it takes back (after the caller has its answer); those are shown apart.
async fn round_trips(store: &Arc<MySqlStore>, relay: &RoundTripRelay) -> Result<(), Error> {
    const CALLS: usize = 200;
    println!("\nround trips (counted by a relay in front of the server: a request and its answer is one)");
    println!(
        "  {:<44}  {:>10}  {:>10}  {:>8}",
        "", "statements", "pool pings", "target"
    );
    let row = |what: String, (statements, pings): (f64, f64), target: &str| {
        println!("  {what:<44}  {statements:>10.2}  {pings:>10.2}  {target:>8}");
    };
    for path in ClaimPath::ALL {
        fill_pending(store.pool(), CALLS + 21).await?;
        let cost = per_call(relay, CALLS, || async {
            claim_next(store.as_ref(), path, "bench/rt")
                .await?
                .ok_or("a prepared pending apply was not claimed")?;
            Ok(())
        })
        .await?;
        let target = format!("≤ 3 {}", verdict(cost.0 <= 3.0));
        row(format!("a claim ({} path)", path.as_str()), cost, &target);
    }
    store.pool().execute("DELETE FROM applies").await?;
    for path in ClaimPath::ALL {
        let cost = per_call(relay, CALLS, || async {
            claim_next(store.as_ref(), path, "bench/rt").await?;
            Ok(())
        })
        .await?;
        row(
            format!("a claim that finds nothing ({} path)", path.as_str()),
            cost,
            "",
        );
    }
    let cost = per_call(relay, CALLS, || async {
        store.may_have_work().await?;
        Ok(())
    })
    .await?;
    row("the idle poll (`may_have_work`)".into(), cost, "");
    // A busy poll expires retries before it claims; with nothing expirable that is one read.
    fill_pending(store.pool(), 1).await?;
    let cost = per_call(relay, CALLS, || async {
        store.expire_retryable().await?;
        Ok(())
    })
    .await?;
    row("retry expiry with nothing to expire".into(), cost, "");
    Ok(())
}

/// The operator's runtime in this process with no work, at several driver counts: what one
/// idle process costs the database.
async fn idle_load(store: &Arc<MySqlStore>, relay: &RoundTripRelay) -> Result<(), Error> {
    let defaults = crate::config::OperatorSection::default();
    let poll = Duration::from_millis(defaults.poll_interval_ms);
    let window = poll * 5;
    store.pool().execute("DELETE FROM applies").await?;
    println!(
        "\nidle load of one process (the operator runtime, no work, poll every {} ms, {:.0} s each)",
        defaults.poll_interval_ms,
        window.as_secs_f64()
    );
    println!(
        "  {:>7}  {:>12}  {:>12}  {:>6}",
        "drivers", "statements/s", "pool pings/s", "target"
    );
    for &drivers in LEVELS {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let runtime = Arc::new(Runtime::new(
            store.clone(),
            Arc::new(SharedFakeEngines {
                engines: Arc::new(Mutex::new(FakeEngines::new(FakeTimings::fast()))),
                clock,
                host: 1,
            }),
            RuntimeConfig {
                owner_prefix: "bench/idle".into(),
                drivers,
                poll_interval: poll,
                backoff: Duration::from_millis(defaults.backoff_ms),
                heartbeat_interval: Duration::from_millis(defaults.heartbeat_interval_ms),
                shutdown_deadline: Duration::from_millis(defaults.shutdown_deadline_ms),
                max_commands_per_drive: 10_000_000,
                rules: Rules::default(),
                claim_path: defaults.claim_path,
            },
        ));
        let (stop, shutdown) = watch::channel(false);
        let (all, pings) = relay.round_trips();
        let started = Instant::now();
        let pool = tokio::spawn(runtime.run(shutdown));
        tokio::time::sleep(window).await;
        let (all2, pings2) = relay.round_trips();
        let secs = started.elapsed().as_secs_f64();
        let statements = (all2 - all - (pings2 - pings)) as f64 / secs;
        let pings = (pings2 - pings) as f64 / secs;
        let _ = stop.send(true);
        pool.await?;
        println!(
            "  {drivers:>7}  {statements:>12.2}  {pings:>12.2}  {:>6}",
            format!("≤ 1 {}", verdict(statements <= 1.0))
        );
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

/// `rows` pending applies with their operation and task rows, each on its own target, made in
/// bulk (the table is emptied first).
async fn fill_pending(pool: &MySqlPool, rows: usize) -> Result<(), Error> {
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
    Ok(())
}

/// `n` claimers take pending applies through `path` until the window closes or none is left.
async fn claims(
    store: &Arc<MySqlStore>,
    path: ClaimPath,
    n: usize,
    rows: usize,
    window: Duration,
) -> Result<ClaimRun, Error> {
    fill_pending(store.pool(), rows).await?;
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
                    let next = claim_next(store.as_ref(), path, &owner).await?;
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
