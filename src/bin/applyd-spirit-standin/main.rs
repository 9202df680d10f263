//! A stand-in for `spirit migrate`, for tests on machines where Spirit cannot be installed. It
//! behaves like Spirit (block/spirit v0.16) on every point applyd relies on, against a real
//! MySQL/MariaDB:
//!
//! - `migrate --host H[:P] --username U [--password P] [--conf FILE] --database D --statement S
//!   [--threads N] [--target-chunk-time T] [--defer-cutover]`; `--conf` is read as Spirit reads
//!   it (go-ini, `conf`); command-line values win over the file. A usage error exits 80.
//! - ALTER TABLE: copies through `_<t>_new` in primary-key chunks. A fresh start creates an
//!   empty checkpoint table; the watermark and statement are written to it periodically
//!   (every 50 s, as Spirit's `CheckpointDumpInterval`), never on exit. A re-run resumes when
//!   `_<t>_new` and a checkpoint row for the same statement exist, and otherwise says "could
//!   not resume from checkpoint" and starts over. Names as Spirit's (`names`); one checkpoint,
//!   `_spirit_checkpoint`, for a statement over several tables. CREATE TABLE and DROP TABLE run
//!   directly.
//! - The lock: `GET_LOCK(<Spirit's name>, 0)` per table (and the schema-wide one for several
//!   tables) for the whole run; a second runner exits 1.
//! - `_spirit_sentinel` is created on a fresh start with `--defer-cutover`; every run waits
//!   before its cutover while it exists (state `waitingOnSentinelTable`), up to 48 h, then
//!   fails with "timed out waiting for sentinel table to be dropped". The cutover is an atomic
//!   RENAME, then `_<t>_old` and the checkpoint are dropped.
//! - No signal handler: SIGTERM/SIGINT end it at once, writing nothing. Exit 0 done, 1 error,
//!   80 usage error, 2 panic.
//! - Logs `migration status` lines with `state=` and `copy-progress=` like Spirit v0.16.
//!
//! Differences from Spirit: no binlog replication (writes to the table during the copy are not
//! carried over — tests do not write concurrently), no checksum, needs a single-column integer
//! primary key, no INSTANT/INPLACE shortcut, one checkpoint row per table in
//! `_spirit_checkpoint`. Test knobs (not Spirit flags): APPLYD_STANDIN_CHUNK_ROWS (default
//! 1000), APPLYD_STANDIN_CHUNK_DELAY_MS (0), APPLYD_STANDIN_POLL_MS (100),
//! APPLYD_STANDIN_CHECKPOINT_MS (50000), APPLYD_STANDIN_SENTINEL_WAIT_LIMIT_MS (48 h),
//! APPLYD_STANDIN_CUTOVER_LOG (a file each cutover RENAME appends `schema.table` lines to, so a
//! test can count how often each table was altered), APPLYD_STANDIN_CUTOVER_ERROR (an error the
//! run ends with just after its RENAME, as when the RENAME's outcome is unseen).
//!
//! Over 700 lines: one run of a migration — its locks, resume decision, copy, checkpoints,
//! sentinel wait and cutover — reads as one story, in Spirit's order; the `--conf` reader and
//! Spirit's names are modules of their own.

mod conf;
mod names;

use std::process::ExitCode;
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
    #[arg(long)]
    database: Option<String>,
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

/// `--statement` split into statements at `;` outside quotes and backticks.
fn split_statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(ch);
                if ch == '\\' && q != '`' {
                    if let Some(next) = chars.next() {
                        cur.push(next);
                    }
                } else if ch == q {
                    quote = None;
                }
            }
            None if ch == ';' => out.push(std::mem::take(&mut cur)),
            None => {
                if matches!(ch, '\'' | '"' | '`') {
                    quote = Some(ch);
                }
                cur.push(ch);
            }
        }
    }
    out.push(cur);
    out
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

struct Failure(String);

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure(describe(&e))
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure(e)
    }
}

struct Table {
    name: String,
    new: String,
    pk: String,
    cols: String,
    watermark: Option<i64>,
    copied: u64,
    total: u64,
}

/// The checkpoint: one table (`_<t>_chkpnt`, or `_spirit_checkpoint` for several), one row per
/// migrated table, written periodically.
struct Checkpoint {
    table: String,
    every: Duration,
    last: std::time::Instant,
}

impl Checkpoint {
    async fn create(&self, c: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        c.execute(format!("DROP TABLE IF EXISTS {}", q(&self.table)).as_str())
            .await?;
        c.execute(
            format!(
                "CREATE TABLE {} (id INT NOT NULL PRIMARY KEY, copier_watermark BIGINT NULL, \
                 statement TEXT NOT NULL, original_table_name VARCHAR(64) NOT NULL, \
                 created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
                q(&self.table)
            )
            .as_str(),
        )
        .await?;
        Ok(())
    }

    /// The watermark saved for `table` under `statement`, or why there is none to resume from
    /// (Spirit's reasons, `pkg/migration/runner.go`).
    async fn read(
        &self,
        c: &mut MySqlConnection,
        id: i64,
        table: &str,
        statement: &str,
    ) -> Result<Result<Option<i64>, String>, sqlx::Error> {
        if !exists(c, &self.table).await? {
            return Ok(Err(format!(
                "checkpoint table '{}' does not exist",
                self.table
            )));
        }
        let row: Option<(Option<i64>, String, String)> = sqlx::query_as(&format!(
            "SELECT copier_watermark, CAST(statement AS CHAR), CAST(original_table_name AS CHAR) FROM {} WHERE id = ?",
            q(&self.table)
        ))
        .bind(id)
        .fetch_optional(&mut *c)
        .await?;
        Ok(match row {
            None => Err(format!(
                "checkpoint table '{}' has no checkpoint, nothing to resume from",
                self.table
            )),
            Some((_, stmt, _)) if stmt != statement => Err(
                "alter statement in checkpoint table does not match the alter statement specified here".into(),
            ),
            Some((_, _, original)) if original != table => {
                Err("checkpoint belongs to a different table (truncation collision)".into())
            }
            Some((w, _, _)) => Ok(w),
        })
    }

    /// Write every table's watermark if the interval has passed since the last write.
    async fn maybe_write(
        &mut self,
        c: &mut MySqlConnection,
        work: &[Table],
        statement: &str,
    ) -> Result<(), sqlx::Error> {
        if self.last.elapsed() < self.every {
            return Ok(());
        }
        for (i, t) in work.iter().enumerate() {
            sqlx::query(&format!(
                "REPLACE INTO {} (id, copier_watermark, statement, original_table_name) VALUES (?, ?, ?, ?)",
                q(&self.table)
            ))
            .bind(i as i64 + 1)
            .bind(t.watermark)
            .bind(statement)
            .bind(&t.name)
            .execute(&mut *c)
            .await?;
        }
        log(
            "INFO",
            "checkpoint",
            &format!(
                "low-watermark=\"{:?}\"",
                work.iter().map(|t| t.watermark).collect::<Vec<_>>()
            ),
        );
        self.last = std::time::Instant::now();
        Ok(())
    }
}

async fn run(m: Migrate) -> Result<(), Failure> {
    let conf = match &m.conf {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read --conf {}: {e}", p.display()))?;
            conf::parse(&text).map_err(|e| format!("--conf {}: {e}", p.display()))?
        }
        None => conf::Conf::default(),
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
    let password = m
        .password
        .clone()
        .or(conf.password)
        .unwrap_or("spirit".into());
    let database = m
        .database
        .clone()
        .or(conf.database)
        .unwrap_or("test".into());
    let mut opts = MySqlConnectOptions::new()
        .host(&host)
        .port(port)
        .username(&user)
        .database(&database);
    if !password.is_empty() {
        opts = opts.password(&password);
    }
    let mut c = opts.connect().await?;
    let stmts: Vec<String> = split_statements(&m.statement)
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if stmts.is_empty() {
        return Err(Failure("--statement is empty".into()));
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
        return Err(Failure(format!(
            "unsupported statement: only ALTER TABLE may be combined: {bad:.80}"
        )));
    }
    if let Some(bad) = stmts.iter().find(|s| {
        let u = s.to_ascii_uppercase();
        u.contains("ALGORITHM=") || u.contains("LOCK=")
    }) {
        return Err(Failure(format!(
            "ALTER contains unsupported clause(s): ALGORITHM=, LOCK=: {bad:.80}"
        )));
    }
    let full = stmts.join("; ");
    let mut tables = Vec::new();
    for s in &stmts {
        tables.push(split_alter(s, &database)?);
    }
    let names_only: Vec<String> = tables.iter().map(|(n, _)| n.clone()).collect();
    // Spirit's advisory locks, held for the whole run on a connection of their own.
    let mut lock = opts.connect().await?;
    let mut lock_names: Vec<String> = names_only
        .iter()
        .map(|t| names::table_lock(&database, t))
        .collect();
    if names_only.len() > 1 {
        lock_names.push(names::multi_table_lock(&database));
    }
    for name in &lock_names {
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
            .bind(name)
            .fetch_one(&mut lock)
            .await?;
        if got != Some(1) {
            return Err(Failure(format!(
                "could not acquire advisory lock for {name}, lock is held by another connection"
            )));
        }
    }
    for (name, _) in &tables {
        if !exists(&mut c, name).await? {
            return Err(Failure(format!(
                "Error 1146 (42S02): Table '{database}.{name}' doesn't exist"
            )));
        }
    }
    log("INFO", "migration status", "state=initial");
    let mut checkpoint = Checkpoint {
        table: names::checkpoint(&names_only),
        every: Duration::from_millis(env_u64("APPLYD_STANDIN_CHECKPOINT_MS", 50_000)),
        last: std::time::Instant::now(),
    };
    // Resume only if every table can (one statement, one checkpoint).
    let mut resume_from = Vec::new();
    let mut why_not = None;
    for (i, (name, _)) in tables.iter().enumerate() {
        let new = names::aux(name, "_new");
        if !exists(&mut c, &new).await? {
            why_not = Some(format!(
                "could not read new table '{new}' to resume from checkpoint: Error 1146 (42S02): Table '{database}.{new}' doesn't exist"
            ));
            break;
        }
        match checkpoint.read(&mut c, i as i64 + 1, name, &full).await? {
            Ok(w) => resume_from.push(w),
            Err(reason) => {
                why_not = Some(reason);
                break;
            }
        }
    }
    let fresh_start = why_not.is_some();
    if let Some(reason) = why_not {
        log(
            "INFO",
            "could not resume from checkpoint",
            &format!("reason=\"{}\"", reason.replace('"', "'")),
        );
        resume_from = vec![None; tables.len()];
        for (name, clause) in &tables {
            let new = names::aux(name, "_new");
            c.execute(format!("DROP TABLE IF EXISTS {}", q(&new)).as_str())
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
                return Err(Failure(describe(&e)));
            }
        }
        checkpoint.create(&mut c).await?;
    } else {
        log(
            "WARN",
            "resuming from checkpoint",
            &format!("copier-watermark=\"{resume_from:?}\""),
        );
    }
    let mut work = Vec::new();
    for ((name, _), watermark) in tables.iter().zip(resume_from) {
        let new = names::aux(name, "_new");
        let pk: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
        )
        .bind(name)
        .fetch_all(&mut c)
        .await?;
        let [pk] = pk.as_slice() else {
            return Err(Failure(format!(
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
    let wait_limit = Duration::from_millis(env_u64(
        "APPLYD_STANDIN_SENTINEL_WAIT_LIMIT_MS",
        48 * 3600 * 1000,
    ));
    for i in 0..work.len() {
        copy(&mut c, &mut work, i, chunk, delay, &mut checkpoint, &full).await?;
    }
    // Every run waits while a sentinel exists, whoever made it (`--respect-sentinel`).
    let waiting_since = std::time::Instant::now();
    let mut said = false;
    while exists(&mut c, "_spirit_sentinel").await? {
        if waiting_since.elapsed() >= wait_limit {
            return Err(Failure(
                "timed out waiting for sentinel table to be dropped".into(),
            ));
        }
        if !said {
            log(
                "WARN",
                "cutover deferred while sentinel table exists; will wait",
                "sentinel-table=_spirit_sentinel",
            );
            said = true;
        }
        log(
            "INFO",
            &format!(
                "migration status: state=waitingOnSentinelTable sentinel-table={database}._spirit_sentinel"
            ),
            "",
        );
        checkpoint.maybe_write(&mut c, &work, &full).await?;
        tokio::time::sleep(poll).await;
    }
    log("INFO", "migration status", "state=cutOver");
    // Rows inserted since the last chunk (the stand-in has no binlog replication).
    for i in 0..work.len() {
        copy(
            &mut c,
            &mut work,
            i,
            chunk,
            Duration::ZERO,
            &mut checkpoint,
            &full,
        )
        .await?;
    }
    let renames: Vec<String> = work
        .iter()
        .flat_map(|t| {
            [
                format!("{} TO {}", q(&t.name), q(&names::aux(&t.name, "_old"))),
                format!("{} TO {}", q(&t.new), q(&t.name)),
            ]
        })
        .collect();
    // As Spirit: a leftover `_<t>_old` is dropped before the RENAME, and a failed drop after
    // it is only logged — the change is in place (`pkg/migration/runner.go`).
    for t in &work {
        c.execute(format!("DROP TABLE IF EXISTS {}", q(&names::aux(&t.name, "_old"))).as_str())
            .await?;
    }
    c.execute(format!("RENAME TABLE {}", renames.join(", ")).as_str())
        .await?;
    note_cutover(&database, &work);
    // Test knob: the RENAME committed but this run cannot tell (as when Spirit's connection
    // drops during it): it ends with the given error, leaving `_old` and its checkpoint.
    if let Ok(error) = std::env::var("APPLYD_STANDIN_CUTOVER_ERROR") {
        return Err(Failure(error));
    }
    for t in &work {
        let old = names::aux(&t.name, "_old");
        if let Err(e) = c
            .execute(format!("DROP TABLE IF EXISTS {}", q(&old)).as_str())
            .await
        {
            log(
                "WARN",
                "migration successful but failed to drop old table",
                &format!("table={old} error=\"{}\"", describe(&e).replace('"', "'")),
            );
        }
    }
    c.execute(format!("DROP TABLE IF EXISTS {}", q(&checkpoint.table)).as_str())
        .await?;
    log("INFO", "migration status", "state=close");
    log("INFO", "apply complete", "");
    Ok(())
}

/// Test knob: one `schema.table` line per table a RENAME just altered. Written after the
/// RENAME, so a kill in between undercounts and never overcounts.
fn note_cutover(database: &str, work: &[Table]) {
    let Some(path) = std::env::var_os("APPLYD_STANDIN_CUTOVER_LOG") else {
        return;
    };
    use std::io::Write;
    let lines: String = work
        .iter()
        .map(|t| format!("{database}.{}\n", t.name))
        .collect();
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(lines.as_bytes()));
    if let Err(e) = written {
        log(
            "WARN",
            "cannot write the cutover log",
            &format!("error=\"{e}\""),
        );
    }
}

async fn copy(
    c: &mut MySqlConnection,
    work: &mut [Table],
    i: usize,
    chunk: u64,
    delay: Duration,
    checkpoint: &mut Checkpoint,
    full: &str,
) -> Result<(), Failure> {
    loop {
        let t = &work[i];
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
        let t = &mut work[i];
        t.watermark = Some(hi);
        t.copied += done.rows_affected();
        let total = t.total.max(t.copied);
        let pct = if total == 0 {
            100.0
        } else {
            t.copied as f64 * 100.0 / total as f64
        };
        // Spirit v0.16's line: the figures inside the message (`pkg/migration/runner.go`).
        log(
            "INFO",
            &format!(
                "migration status: state=copyRows copy-progress={}/{} {pct:.2}% binlog-deltas=0",
                t.copied, total
            ),
            &format!("table={}", t.name),
        );
        checkpoint.maybe_write(c, work, full).await?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Spirit's exit codes (`cmd/spirit/main.go`, kong v1.16): 80 for a usage error.
const EXIT_USAGE: u8 = 80;

fn main() -> ExitCode {
    // A Go panic exits 2.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("panic: {info}");
        std::process::exit(2);
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let Cmd::Migrate(m) = cli.cmd;
    // `--conf` is an `existingfile` flag: a missing file is a usage error.
    if let Some(conf) = m.conf.as_ref().filter(|p| !p.is_file()) {
        eprintln!(
            "spirit: error: --conf: stat {}: no such file or directory",
            conf.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
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
    // No signal handler, as Spirit: SIGTERM and SIGINT end the process where it stands.
    rt.block_on(async move {
        match run(m).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failure(msg)) => {
                log(
                    "ERROR",
                    "migration failed",
                    &format!("error=\"{}\"", msg.replace('"', "'")),
                );
                eprintln!("spirit: error: {msg}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_split_outside_quotes_only() {
        assert_eq!(
            split_statements(
                "ALTER TABLE a ADD c INT; ALTER TABLE b ALTER COLUMN n SET DEFAULT 'x;y'"
            ),
            vec![
                "ALTER TABLE a ADD c INT",
                " ALTER TABLE b ALTER COLUMN n SET DEFAULT 'x;y'"
            ]
        );
        assert_eq!(split_statements("ALTER TABLE `a;b` ADD c INT").len(), 1);
    }
}
