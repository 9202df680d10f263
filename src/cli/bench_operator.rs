//! `applyd bench operator`: what running `applyd serve` costs and how fast a crash is repaired,
//! measured on real processes against MySQL, with the fake engines served by this process.
//!
//! - Queries per second: the server's `Questions` counter with no operator (the baseline), with
//!   an idle operator, and with applies being driven; the difference per active apply.
//! - Idle RSS and CPU of one `applyd serve` process, read from `/proc`; and the same process
//!   with `--waiting` applies parked at a deferred PlanetScale cutover (waiting costs no driver
//!   and, parked, no query: the target is ≤ 1 query/s above idle in total).
//! - Crash → reclaim latency: N processes each own one running apply; all are SIGKILLed at once
//!   and a peer's claim of each apply is timed. The design's window, [stale-after − heartbeat
//!   interval, stale-after + poll interval], is printed as the baseline.

use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::{Connection, Executor, Row};

use crate::config::OperatorSection;
use crate::engine::fake::FakeTimings;
use crate::machine::apply::ApplyId;
use crate::machine::{ApplyOptions, EngineKind, Rules};
use crate::store::mysql::MySqlStore;
use crate::store::{NewApply, Store, Target};

#[derive(clap::Args)]
pub struct OperatorArgs {
    /// mysql://user:password@host:port (a scratch database is created and dropped there). The
    /// query figures read the server-wide counter: use a server nothing else is busy on.
    #[arg(long)]
    database_url: String,
    /// Stale-after settings to measure reclaim latency with, in milliseconds (the first default
    /// is the operator's default).
    #[arg(long, value_delimiter = ',', default_values_t = [OperatorSection::default().stale_after_ms, 5_000])]
    stale_after_ms: Vec<u64>,
    /// Crashed processes (one apply each) per stale-after setting.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Applies driven at once for the queries-per-apply figure.
    #[arg(long, default_value_t = 4)]
    active: usize,
    /// Seconds per query-rate and CPU figure.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Applies waiting for a person (a deferred PlanetScale cutover) on one idle process.
    #[arg(long, default_value_t = 50)]
    waiting: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

pub fn run(args: OperatorArgs) -> ExitCode {
    match super::runtime().block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("applyd bench operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Children die with the benchmark, whatever happens to it.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Bench {
    store: Arc<MySqlStore>,
    pool: MySqlPool,
    database_url: String,
    engines_url: String,
    next_host: u32,
    next_target: u32,
}

/// The operator's knobs for one measurement; everything else is `applyd serve`'s default.
#[derive(Clone, Copy)]
struct Knobs {
    drivers: usize,
    stale_after_ms: u64,
    presumed_loss_ms: u64,
    heartbeat_interval_ms: u64,
    poll_interval_ms: u64,
}

impl Knobs {
    fn defaults() -> Knobs {
        let d = OperatorSection::default();
        Knobs {
            drivers: d.drivers,
            stale_after_ms: d.stale_after_ms,
            presumed_loss_ms: d.presumed_loss_ms,
            heartbeat_interval_ms: d.heartbeat_interval_ms,
            poll_interval_ms: d.poll_interval_ms,
        }
    }

    /// The defaults scaled to another stale-after, keeping the default proportions.
    fn with_stale_after(stale_after_ms: u64) -> Knobs {
        let d = Knobs::defaults();
        if stale_after_ms == d.stale_after_ms {
            return d;
        }
        let scale = |v: u64| (v as u128 * stale_after_ms as u128 / d.stale_after_ms as u128) as u64;
        Knobs {
            presumed_loss_ms: scale(d.presumed_loss_ms),
            heartbeat_interval_ms: scale(d.heartbeat_interval_ms).max(1),
            poll_interval_ms: scale(d.poll_interval_ms).clamp(1, d.poll_interval_ms),
            stale_after_ms,
            ..d
        }
    }
}

async fn bench(args: OperatorArgs) -> Result<(), Error> {
    if args.samples == 0 || args.active == 0 {
        return Err("--samples and --active must be at least 1".into());
    }
    if let Some(bad) = args.stale_after_ms.iter().find(|s| **s < 500) {
        return Err(
            format!("--stale-after-ms {bad} is too short to measure (at least 500)").into(),
        );
    }
    let url = reqwest::Url::parse(&args.database_url)
        .map_err(|e| format!("--database-url is not a URL: {e}"))?;
    let base = MySqlConnectOptions::from_str(&args.database_url)?;
    let mut scratch = Scratch {
        admin: MySqlConnection::connect_with(&base).await?,
        base,
        url,
        made: Vec::new(),
    };
    let result = measure(&args, &mut scratch).await;
    for db in std::mem::take(&mut scratch.made) {
        scratch
            .admin
            .execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str())
            .await?;
    }
    result
}

/// Scratch databases, one per measurement, so that applies left over by one (released on
/// shutdown, hence claimable) never feed the next.
struct Scratch {
    admin: MySqlConnection,
    base: MySqlConnectOptions,
    url: reqwest::Url,
    made: Vec<String>,
}

impl Scratch {
    async fn bench(&mut self, engines_url: &str) -> Result<Bench, Error> {
        let db = format!(
            "applyd_bench_operator_{}_{}",
            std::process::id(),
            self.made.len()
        );
        self.admin
            .execute(format!("DROP DATABASE IF EXISTS `{db}`").as_str())
            .await?;
        self.admin
            .execute(format!("CREATE DATABASE `{db}`").as_str())
            .await?;
        self.made.push(db.clone());
        let store = Arc::new(
            MySqlStore::connect_with(self.base.clone().database(&db), Rules::default(), 4).await?,
        );
        store.migrate().await?;
        let mut url = self.url.clone();
        url.set_path(&db);
        Ok(Bench {
            pool: store.pool().clone(),
            store,
            database_url: url.to_string(),
            engines_url: engines_url.to_string(),
            next_host: 1,
            next_target: 1,
        })
    }
}

async fn measure(args: &OperatorArgs, scratch: &mut Scratch) -> Result<(), Error> {
    // Engines whose work never ends by itself: the applies stay in flight while measured. The
    // PlanetScale setup is quick, so the waiting applies reach their gate in seconds.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let engines_url = format!("http://{}", listener.local_addr()?);
    let timings = FakeTimings {
        spirit_rows: u64::MAX / 4,
        branch_ready_ms: 100,
        validate_ms: 100,
        deploy_ms: 300,
        ..FakeTimings::default()
    };
    let engines =
        crate::engine::fake_server::router(crate::engine::fake_server::FakeServerOptions {
            timings,
            ..Default::default()
        });
    tokio::spawn(async move {
        let _ = axum::serve(listener, engines).await;
    });

    let mut bench = scratch.bench(&engines_url).await?;
    let version: String = sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)")
        .fetch_one(&bench.pool)
        .await?;
    let window = Duration::from_secs_f64(args.seconds.max(1.0));
    println!(
        "applyd operator benchmark: {version}, {:.0} s per rate figure, fake engines on {engines_url}\n",
        window.as_secs_f64(),
    );

    // ---- queries, RSS and CPU
    let baseline_qps = bench.query_rate(window).await?;
    let defaults = Knobs::defaults();
    let mut procs = Procs(Vec::new());
    procs.0.push(bench.spawn_serve("bench-idle", defaults)?);
    let pid = procs.0[0].id();
    // Let it connect and settle into its poll loop before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = cpu_ticks(pid)?;
    let idle_qps = bench.query_rate(window).await?;
    let idle_cpu = cpu_percent(pid, cpu_before, window)?;
    let idle_rss = rss_kib(pid)?;
    terminate(&mut procs.0[0]).await;

    // The same idle process, with applies parked at a deferred cutover. Spawned after they are
    // submitted, it drives each to its gate and parks it; then nothing is held.
    let mut waiting_bench = scratch.bench(&engines_url).await?;
    for _ in 0..args.waiting {
        waiting_bench.submit_deferred_cutover().await?;
    }
    procs
        .0
        .push(waiting_bench.spawn_serve("bench-waiting", defaults)?);
    let pid = procs.0[1].id();
    waiting_bench
        .wait_for_parked(args.waiting, Duration::from_secs(300))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = cpu_ticks(pid)?;
    let waiting_qps = waiting_bench.query_rate(window).await?;
    let waiting_cpu = cpu_percent(pid, cpu_before, window)?;
    let waiting_rss = rss_kib(pid)?;
    terminate(&mut procs.0[1]).await;
    procs.0.clear();

    // Every driver busy, so no claim polling is mixed into the per-apply figure.
    let busy = Knobs {
        drivers: args.active,
        ..defaults
    };
    let mut ids = Vec::new();
    for _ in 0..args.active {
        ids.push(bench.submit_spirit().await?);
    }
    procs.0.push(bench.spawn_serve("bench-busy", busy)?);
    let pid = procs.0[0].id();
    for id in &ids {
        bench
            .wait_for_claims(*id, 1, Duration::from_secs(60))
            .await?;
    }
    // Past the start-up calls, into the steady state of polling running copies.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = cpu_ticks(pid)?;
    let active_qps = bench.query_rate(window).await?;
    let active_cpu = cpu_percent(pid, cpu_before, window)?;
    let active_rss = rss_kib(pid)?;
    terminate(&mut procs.0[0]).await;
    let per_apply = (active_qps - baseline_qps).max(0.0) / ids.len() as f64;

    println!(
        "`applyd serve` with defaults: poll {} ms, heartbeat {} ms",
        defaults.poll_interval_ms, defaults.heartbeat_interval_ms
    );
    println!(
        "  {:<42} {:>10} {:>9} {:>10}",
        "", "queries/s", "CPU %", "RSS MiB"
    );
    println!(
        "  {:<42} {:>10.1} {:>9} {:>10}",
        "baseline: no operator running", baseline_qps, "—", "—"
    );
    println!(
        "  {:<42} {:>10.1} {:>9.2} {:>10.1}",
        format!("idle, {} drivers, one poller", defaults.drivers),
        idle_qps,
        idle_cpu,
        idle_rss as f64 / 1024.0
    );
    println!(
        "  {:<42} {:>10.1} {:>9.2} {:>10.1}",
        format!("idle, {} applies parked for a cutover", args.waiting),
        waiting_qps,
        waiting_cpu,
        waiting_rss as f64 / 1024.0
    );
    println!(
        "  {:<42} {:>10.1} {:>9.2} {:>10.1}",
        format!("{} drivers each driving a Spirit copy", ids.len()),
        active_qps,
        active_cpu,
        active_rss as f64 / 1024.0
    );
    println!(
        "  {} waiting applies add {:.2} queries/s in total above idle (target ≤ 1)",
        args.waiting,
        waiting_qps - idle_qps
    );
    println!("  queries/s per active apply: {per_apply:.2} (above the baseline)\n");

    // ---- crash → reclaim
    println!(
        "crash → reclaim: {} processes each own one running apply and are SIGKILLed at once; a peer reclaims",
        args.samples
    );
    println!(
        "  {:>14} {:>12} {:>9} {:>8} {:>8} {:>8}   baseline window s",
        "stale-after ms", "heartbeat ms", "poll ms", "median s", "min s", "max s"
    );
    for &stale in &args.stale_after_ms {
        let knobs = Knobs::with_stale_after(stale);
        let mut bench = scratch.bench(&engines_url).await?;
        let mut latencies = bench.reclaim_latencies(knobs, args.samples).await?;
        latencies.sort_by(f64::total_cmp);
        let median = latencies[latencies.len() / 2];
        println!(
            "  {:>14} {:>12} {:>9} {:>8.2} {:>8.2} {:>8.2}   [{:.1}, {:.1}]",
            stale,
            knobs.heartbeat_interval_ms,
            knobs.poll_interval_ms,
            median,
            latencies[0],
            latencies[latencies.len() - 1],
            stale.saturating_sub(knobs.heartbeat_interval_ms) as f64 / 1000.0,
            (stale + knobs.poll_interval_ms) as f64 / 1000.0
        );
    }
    Ok(())
}

impl Bench {
    fn spawn_serve(&mut self, owner: &str, knobs: Knobs) -> Result<Child, Error> {
        let host = self.next_host;
        self.next_host += 1;
        let mut cmd = Command::new(std::env::current_exe()?);
        // Only what is set here configures the children, never the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("APPLYD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .env("APPLYD_DATABASE_URL", &self.database_url)
            .env("APPLYD_ENGINES", "remote-fake")
            .env("APPLYD_REMOTE_FAKE_URL", &self.engines_url)
            .env("APPLYD_REMOTE_FAKE_HOST", host.to_string())
            .env("APPLYD_OWNER", format!("{owner}-h{host}"))
            .env("APPLYD_API_LISTEN", "127.0.0.1:0")
            .env("APPLYD_DRIVERS", knobs.drivers.to_string())
            .env("APPLYD_STALE_AFTER_MS", knobs.stale_after_ms.to_string())
            .env(
                "APPLYD_PRESUMED_LOSS_MS",
                knobs.presumed_loss_ms.to_string(),
            )
            .env(
                "APPLYD_HEARTBEAT_INTERVAL_MS",
                knobs.heartbeat_interval_ms.to_string(),
            )
            .env(
                "APPLYD_POLL_INTERVAL_MS",
                knobs.poll_interval_ms.to_string(),
            )
            .env("APPLYD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(cmd.spawn()?)
    }

    async fn submit_spirit(&mut self) -> Result<ApplyId, Error> {
        self.submit("bench", EngineKind::Spirit, ApplyOptions::default())
            .await
    }

    /// A PlanetScale apply whose cutover waits for a person.
    async fn submit_deferred_cutover(&mut self) -> Result<ApplyId, Error> {
        let options = ApplyOptions {
            defer_cutover: true,
            ..Default::default()
        };
        self.submit("wait", EngineKind::PlanetScale, options).await
    }

    /// One apply on a target of its own (`{prefix}{n}`).
    async fn submit(
        &mut self,
        prefix: &str,
        engine: EngineKind,
        options: ApplyOptions,
    ) -> Result<ApplyId, Error> {
        let n = self.next_target;
        self.next_target += 1;
        Ok(self
            .store
            .submit(NewApply {
                allow_destructive: false,
                rollout: None,
                target: Target {
                    database: format!("{prefix}{n}"),
                    environment: "prod".into(),
                },
                engine,
                ddl: vec![format!("ALTER TABLE t{n} ADD COLUMN c INT")],
                options,
            })
            .await?)
    }

    /// Until `n` applies rest parked at their cutover (no lease held).
    async fn wait_for_parked(&self, n: usize, limit: Duration) -> Result<(), Error> {
        let until = Instant::now() + limit;
        loop {
            let parked: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM applies WHERE state = 'waiting_for_cutover' \
                 AND lease_owner IS NULL AND parked_until IS NOT NULL",
            )
            .fetch_one(&self.pool)
            .await?;
            if parked as usize >= n {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("{parked} of {n} applies parked within {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn claims_of(&self, id: ApplyId) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM apply_logs WHERE apply_id = ? AND cause LIKE 'claim%'",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    async fn wait_for_claims(&self, id: ApplyId, n: u64, limit: Duration) -> Result<(), Error> {
        let until = Instant::now() + limit;
        while self.claims_of(id).await? < n {
            if Instant::now() > until {
                return Err(format!("apply {id} was not claimed within {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Statements per second the server received over `window`, less this benchmark's own two.
    async fn query_rate(&self, window: Duration) -> Result<f64, Error> {
        let before = questions(&self.pool).await?;
        let started = Instant::now();
        tokio::time::sleep(window).await;
        let after = questions(&self.pool).await?;
        let own = 1.0;
        Ok((after.saturating_sub(before) as f64 - own).max(0.0) / started.elapsed().as_secs_f64())
    }

    async fn reclaim_latencies(&mut self, knobs: Knobs, samples: usize) -> Result<Vec<f64>, Error> {
        let mut procs = Procs(Vec::new());
        let mut owned = Vec::new();
        // One apply per process, each claimed before the next process starts.
        for _ in 0..samples {
            let id = self.submit_spirit().await?;
            let host = self.next_host;
            procs.0.push(self.spawn_serve(
                "bench-victim",
                Knobs {
                    drivers: 1,
                    ..knobs
                },
            )?);
            self.wait_for_claims(id, 1, Duration::from_secs(60)).await?;
            owned.push((id, host));
        }
        let peer = self.spawn_serve(
            "bench-peer",
            Knobs {
                drivers: samples,
                ..knobs
            },
        )?;
        // Let the peer reach its poll loop and the victims heartbeat at least once.
        tokio::time::sleep(Duration::from_millis(
            knobs.heartbeat_interval_ms.max(1_000),
        ))
        .await;
        let http = reqwest::Client::new();
        let killed = Instant::now();
        for victim in &mut procs.0 {
            let _ = victim.kill();
        }
        for (_, host) in &owned {
            // A Spirit runner lives in its operator's process: it dies with it.
            let _ = http
                .post(format!("{}/_fake/crash-host/{host}", self.engines_url))
                .send()
                .await;
        }
        let limit = Duration::from_millis(knobs.stale_after_ms * 3 + 30_000);
        let mut latencies = vec![None; owned.len()];
        while latencies.iter().any(Option::is_none) {
            if killed.elapsed() > limit {
                return Err(format!("no reclaim within {limit:?} of the crash").into());
            }
            for (i, (id, _)) in owned.iter().enumerate() {
                if latencies[i].is_none() && self.claims_of(*id).await? >= 2 {
                    latencies[i] = Some(killed.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        procs.0.push(peer);
        if let Some(peer) = procs.0.last_mut() {
            terminate(peer).await;
        }
        Ok(latencies.into_iter().flatten().collect())
    }
}

async fn questions(pool: &MySqlPool) -> Result<u64, Error> {
    let row = sqlx::query("SHOW GLOBAL STATUS LIKE 'Questions'")
        .fetch_one(pool)
        .await?;
    let value: String = row.try_get_unchecked(1)?;
    Ok(value
        .parse()
        .map_err(|e| format!("the server's Questions counter {value:?}: {e}"))?)
}

/// SIGTERM (graceful: leases released), then wait for the exit.
async fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn proc_file(pid: u32, name: &str) -> Result<String, Error> {
    std::fs::read_to_string(format!("/proc/{pid}/{name}"))
        .map_err(|e| format!("cannot read /proc/{pid}/{name}: {e}").into())
}

fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = proc_file(pid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// User plus system clock ticks of a process.
fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    let stat = proc_file(pid, "stat")?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, Error> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("malformed /proc/{pid}/stat").into())
    };
    Ok(field(11)? + field(12)?)
}

fn cpu_percent(pid: u32, before: u64, window: Duration) -> Result<f64, Error> {
    let after = cpu_ticks(pid)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(after.saturating_sub(before) as f64 / hz / window.as_secs_f64() * 100.0)
}
