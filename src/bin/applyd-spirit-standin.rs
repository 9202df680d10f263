//! A stand-in for `spirit migrate`, for tests on machines where Spirit cannot be installed. It
//! honours the flags and behaviour applyd relies on, against a real MySQL/MariaDB:
//!
//! - `migrate --host H[:P] --username U [--password P] [--conf FILE] --database D --statement S
//!   [--threads N] [--target-chunk-time T] [--defer-cutover]`; `--conf` is Spirit's `[client]`
//!   INI file (user, password, host, port); command-line values win over the file.
//! - ALTER TABLE: copies through `_<table>_new` in primary-key chunks, checkpointing the
//!   watermark and the statement to `_<table>_chkpnt` after every chunk; a re-run with the same
//!   statement resumes from the checkpoint. CREATE TABLE and DROP TABLE run directly.
//! - `--defer-cutover` creates `_spirit_sentinel` on a fresh start and waits before the cutover
//!   while it exists (state `waitingOnSentinelTable`); the cutover is an atomic RENAME.
//! - Logs `migration status` lines with `state=` and `copy-progress=` like Spirit.
//! - SIGTERM/SIGINT: stops between chunks with the checkpoint kept, exits 1.
//! - Errors (bad DDL, lock held by another migration) exit 1 with a message.
//!
//! Differences from Spirit: no binlog replication (writes to the table during the copy are not
//! carried over — tests do not write concurrently), no checksum, a checkpoint per chunk instead
//! of every 50 s, needs a single-column integer primary key, no INSTANT/INPLACE shortcut.
//! Test knobs (not Spirit flags): APPLYD_STANDIN_CHUNK_ROWS (default 1000),
//! APPLYD_STANDIN_CHUNK_DELAY_MS (default 0), APPLYD_STANDIN_POLL_MS (default 100).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Executor};

#[derive(Parser)]
#[command(
    name = "applyd-spirit-standin",
    version,
    about = "A test stand-in for `spirit migrate`"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Apply an online schema change.
    Migrate(Migrate),
}

#[derive(clap::Args)]
struct Migrate {
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    #[arg(long)]
    conf: Option<std::path::PathBuf>,
    #[arg(long, default_value = "test")]
    database: String,
    #[arg(long)]
    statement: String,
    #[arg(long, default_value_t = 4)]
    threads: u32,
    #[arg(long)]
    target_chunk_time: Option<String>,
    #[arg(long)]
    defer_cutover: bool,
}

fn log(level: &str, msg: &str, fields: &str) {
    let line = format!("level={level} msg=\"{msg}\" {fields}");
    if level == "ERROR" {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `Error N (STATE): message`, as Spirit (Go's MySQL driver) prints database errors.
fn describe(e: &sqlx::Error) -> String {
    if let Some(d) = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
    {
        return format!(
            "Error {} ({}): {}",
            d.number(),
            d.code().unwrap_or("HY000"),
            d.message()
        );
    }
    e.to_string()
}

struct Conf {
    user: Option<String>,
    password: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

fn read_conf(path: &std::path::Path) -> Result<Conf, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --conf {}: {e}", path.display()))?;
    let mut conf = Conf {
        user: None,
        password: None,
        host: None,
        port: None,
    };
    let mut in_client = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_client = line == "[client]";
            continue;
        }
        if !in_client || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "user" => conf.user = Some(v),
                "password" => conf.password = Some(v),
                "host" => conf.host = Some(v),
                "port" => conf.port = v.parse().ok(),
                _ => {}
            }
        }
    }
    Ok(conf)
}

fn q(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// The table named right after `ALTER TABLE`, and the alter clause after it.
fn split_alter(stmt: &str, database: &str) -> Result<(String, String), String> {
    let rest = stmt.trim()["ALTER TABLE".len()..].trim_start();
    let (name, tail) = if let Some(r) = rest.strip_prefix('`') {
        let end = r.find('`').ok_or("unterminated identifier")?;
        (r[..end].to_string(), &r[end + 1..])
    } else {
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.'))
            .unwrap_or(rest.len());
        (rest[..end].to_string(), &rest[end..])
    };
    let (name, tail) = if let Some(t) = tail.strip_prefix(".`") {
        let end = t.find('`').ok_or("unterminated identifier")?;
        (format!("{name}.{}", &t[..end]), &t[end + 1..])
    } else {
        (name, tail)
    };
    let table = match name.split_once('.') {
        Some((schema, t)) if schema == database => t.to_string(),
        Some((schema, _)) => {
            return Err(format!("statement names schema {schema}, not {database}"))
        }
        None => name,
    };
    if table.is_empty() {
        return Err(format!("no table name in {stmt:?}"));
    }
    Ok((table, tail.trim().to_string()))
}

async fn exists(c: &mut MySqlConnection, t: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(t)
    .fetch_one(&mut *c)
    .await?;
    Ok(n > 0)
}

async fn columns(c: &mut MySqlConnection, t: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = ? AND EXTRA NOT LIKE '%GENERATED%' ORDER BY ORDINAL_POSITION",
    )
    .bind(t)
    .fetch_all(&mut *c)
    .await
}

enum Failure {
    Stopped(String),
    Error(String),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Error(describe(&e))
    }
}

struct Table {
    name: String,
    new: String,
    chkpnt: String,
    pk: String,
    cols: String,
    watermark: Option<i64>,
    copied: u64,
    total: u64,
}

async fn run(m: Migrate, stop: Arc<AtomicBool>) -> Result<(), Failure> {
    let conf = match &m.conf {
        Some(p) => read_conf(p).map_err(Failure::Error)?,
        None => Conf {
            user: None,
            password: None,
            host: None,
            port: None,
        },
    };
    let host_arg = m
        .host
        .clone()
        .or(conf.host.clone())
        .unwrap_or("127.0.0.1".into());
    let (host, port) = match host_arg.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(3306)),
        None => (host_arg.clone(), conf.port.unwrap_or(3306)),
    };
    let user = m.username.clone().or(conf.user).unwrap_or("spirit".into());
    let password = m.password.clone().or(conf.password).unwrap_or_default();
    let mut opts = MySqlConnectOptions::new()
        .host(&host)
        .port(port)
        .username(&user)
        .database(&m.database);
    if !password.is_empty() {
        opts = opts.password(&password);
    }
    let mut c = opts.connect().await?;
    let stmts: Vec<String> = m
        .statement
        .split(';')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if stmts.is_empty() {
        return Err(Failure::Error("--statement is empty".into()));
    }
    let upper0 = stmts[0].to_ascii_uppercase();
    if stmts.len() == 1 && (upper0.starts_with("CREATE TABLE") || upper0.starts_with("DROP TABLE"))
    {
        log("INFO", "migration status", "state=initial");
        c.execute(stmts[0].as_str()).await?;
        log("INFO", "migration status", "state=close");
        return Ok(());
    }
    if let Some(bad) = stmts
        .iter()
        .find(|s| !s.to_ascii_uppercase().starts_with("ALTER TABLE"))
    {
        return Err(Failure::Error(format!(
            "unsupported statement: only ALTER TABLE may be combined: {bad:.80}"
        )));
    }
    let full = stmts.join("; ");
    // Spirit's per-table lock: a second migration of the same table refuses to start.
    let mut lock = opts.connect().await?;
    let mut tables = Vec::new();
    for s in &stmts {
        let (name, clause) = split_alter(s, &m.database).map_err(Failure::Error)?;
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
            .bind(format!("spirit_{}.{}", m.database, name))
            .fetch_one(&mut lock)
            .await?;
        if got != Some(1) {
            return Err(Failure::Error(format!(
                "could not acquire the table lock on {name}: another migration is running"
            )));
        }
        if !exists(&mut c, &name).await? {
            return Err(Failure::Error(format!(
                "Error 1146 (42S02): Table '{}.{name}' doesn't exist",
                m.database
            )));
        }
        tables.push((name, clause));
    }
    log("INFO", "migration status", "state=initial");
    let mut work = Vec::new();
    let mut fresh_start = false;
    for (name, clause) in &tables {
        let new = format!("_{name}_new");
        let chkpnt = format!("_{name}_chkpnt");
        let mut watermark = None;
        let mut resumed = false;
        if exists(&mut c, &new).await? && exists(&mut c, &chkpnt).await? {
            let row: Option<(Option<i64>, String)> = sqlx::query_as(&format!(
                "SELECT copier_watermark, CAST(statement AS CHAR) FROM {} WHERE id = 1",
                q(&chkpnt)
            ))
            .fetch_optional(&mut c)
            .await?;
            if let Some((w, stmt)) = row {
                if stmt == full {
                    watermark = w;
                    resumed = true;
                    log(
                        "INFO",
                        "resuming from checkpoint",
                        &format!(
                            "table={name} watermark={}",
                            w.map(|w| w.to_string()).unwrap_or("none".into())
                        ),
                    );
                } else {
                    log(
                        "WARN",
                        "checkpoint is for another statement; starting fresh",
                        &format!("table={name}"),
                    );
                }
            }
        }
        if !resumed {
            fresh_start = true;
            c.execute(format!("DROP TABLE IF EXISTS {}", q(&new)).as_str())
                .await?;
            c.execute(format!("DROP TABLE IF EXISTS {}", q(&chkpnt)).as_str())
                .await?;
            c.execute(format!("CREATE TABLE {} LIKE {}", q(&new), q(name)).as_str())
                .await?;
            if let Err(e) = c
                .execute(format!("ALTER TABLE {} {clause}", q(&new)).as_str())
                .await
            {
                let _ = c
                    .execute(format!("DROP TABLE IF EXISTS {}", q(&new)).as_str())
                    .await;
                return Err(Failure::Error(describe(&e)));
            }
            c.execute(
                format!(
                    "CREATE TABLE {} (id INT NOT NULL PRIMARY KEY, copier_watermark BIGINT NULL, \
                     statement TEXT NOT NULL, updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
                    q(&chkpnt)
                )
                .as_str(),
            )
            .await?;
            sqlx::query(&format!(
                "INSERT INTO {} (id, copier_watermark, statement) VALUES (1, NULL, ?)",
                q(&chkpnt)
            ))
            .bind(&full)
            .execute(&mut c)
            .await?;
        }
        let pk: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
        )
        .bind(name)
        .fetch_all(&mut c)
        .await?;
        let [pk] = pk.as_slice() else {
            return Err(Failure::Error(format!(
                "the stand-in needs a single-column primary key on {name}"
            )));
        };
        let old_cols = columns(&mut c, name).await?;
        let new_cols = columns(&mut c, &new).await?;
        let common: Vec<String> = old_cols
            .into_iter()
            .filter(|c| new_cols.contains(c))
            .map(|c| q(&c))
            .collect();
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", q(name)))
            .fetch_one(&mut c)
            .await?;
        let copied: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", q(&new)))
            .fetch_one(&mut c)
            .await?;
        work.push(Table {
            name: name.clone(),
            new,
            chkpnt,
            pk: pk.clone(),
            cols: common.join(", "),
            watermark,
            copied: copied as u64,
            total: total as u64,
        });
    }
    if m.defer_cutover && fresh_start {
        c.execute("CREATE TABLE IF NOT EXISTS _spirit_sentinel (id INT NOT NULL PRIMARY KEY)")
            .await?;
    }
    let chunk = env_u64("APPLYD_STANDIN_CHUNK_ROWS", 1000).max(1);
    let delay = Duration::from_millis(env_u64("APPLYD_STANDIN_CHUNK_DELAY_MS", 0));
    let poll = Duration::from_millis(env_u64("APPLYD_STANDIN_POLL_MS", 100).max(10));
    for t in &mut work {
        copy(&mut c, t, chunk, delay, &stop, &full).await?;
    }
    let mut said = false;
    while exists(&mut c, "_spirit_sentinel").await? {
        if stop.load(Ordering::SeqCst) {
            return Err(Failure::Stopped(
                "stopped while waiting on the sentinel; checkpoint kept".into(),
            ));
        }
        if !said {
            log(
                "INFO",
                "waiting for the sentinel table to be dropped",
                "table=_spirit_sentinel",
            );
            said = true;
        }
        log("INFO", "migration status", "state=waitingOnSentinelTable");
        tokio::time::sleep(poll).await;
    }
    log("INFO", "migration status", "state=cutOver");
    // Rows inserted since the last chunk (the stand-in has no binlog replication).
    for t in &mut work {
        copy(
            &mut c,
            t,
            chunk,
            Duration::ZERO,
            &Arc::new(AtomicBool::new(false)),
            &full,
        )
        .await?;
    }
    let renames: Vec<String> = work
        .iter()
        .flat_map(|t| {
            [
                format!("{} TO {}", q(&t.name), q(&format!("_{}_old", t.name))),
                format!("{} TO {}", q(&t.new), q(&t.name)),
            ]
        })
        .collect();
    c.execute(format!("RENAME TABLE {}", renames.join(", ")).as_str())
        .await?;
    for t in &work {
        c.execute(format!("DROP TABLE IF EXISTS {}", q(&format!("_{}_old", t.name))).as_str())
            .await?;
        c.execute(format!("DROP TABLE IF EXISTS {}", q(&t.chkpnt)).as_str())
            .await?;
    }
    log("INFO", "migration status", "state=close");
    log("INFO", "migration complete", "");
    Ok(())
}

async fn copy(
    c: &mut MySqlConnection,
    t: &mut Table,
    chunk: u64,
    delay: Duration,
    stop: &AtomicBool,
    full: &str,
) -> Result<(), Failure> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(Failure::Stopped(format!(
                "stopped; checkpoint kept at watermark {:?}",
                t.watermark
            )));
        }
        let lo = t.watermark.unwrap_or(i64::MIN);
        let hi: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT CAST(MAX(x.k) AS SIGNED) FROM (SELECT {pk} AS k FROM {tbl} WHERE {pk} > ? ORDER BY {pk} LIMIT {chunk}) x",
            pk = q(&t.pk),
            tbl = q(&t.name)
        ))
        .bind(lo)
        .fetch_one(&mut *c)
        .await?;
        let Some(hi) = hi else {
            return Ok(());
        };
        let done = c
            .execute(
                sqlx::query(&format!(
                    "INSERT IGNORE INTO {new} ({cols}) SELECT {cols} FROM {tbl} WHERE {pk} > ? AND {pk} <= ?",
                    new = q(&t.new),
                    cols = t.cols,
                    tbl = q(&t.name),
                    pk = q(&t.pk)
                ))
                .bind(lo)
                .bind(hi),
            )
            .await?;
        sqlx::query(&format!(
            "UPDATE {} SET copier_watermark = ?, statement = ?, updated_at = NOW(6) WHERE id = 1",
            q(&t.chkpnt)
        ))
        .bind(hi)
        .bind(full)
        .execute(&mut *c)
        .await?;
        t.watermark = Some(hi);
        t.copied += done.rows_affected();
        let total = t.total.max(t.copied);
        let pct = if total == 0 {
            100.0
        } else {
            t.copied as f64 * 100.0 / total as f64
        };
        log(
            "INFO",
            "migration status",
            &format!(
                "state=copyRows table={} copy-progress=\"{}/{} {pct:.2}%\"",
                t.name, t.copied, total
            ),
        );
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cmd::Migrate(m) = cli.cmd;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        for kind in [
            tokio::signal::unix::SignalKind::terminate(),
            tokio::signal::unix::SignalKind::interrupt(),
        ] {
            if let Ok(mut s) = tokio::signal::unix::signal(kind) {
                let stop = stop.clone();
                tokio::spawn(async move {
                    s.recv().await;
                    stop.store(true, Ordering::SeqCst);
                });
            }
        }
        match run(m, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure::Stopped(msg)) => {
                log("WARN", "migration stopped", &format!("reason=\"{msg}\""));
                ExitCode::FAILURE
            }
            Err(Failure::Error(msg)) => {
                log(
                    "ERROR",
                    "migration failed",
                    &format!("error=\"{}\"", msg.replace('"', "'")),
                );
                ExitCode::FAILURE
            }
        }
    })
}
