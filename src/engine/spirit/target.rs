//! The target schema as the adapter reads it: connections, the schema fingerprint recorded
//! before the first start, and what is left of an apply's work when no runner is alive here.

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::{names, Endpoint, Plan, SpiritEngine, SENTINEL, STATE_TABLE};
use crate::engine::Reply;
use crate::machine::apply::{ApplyRecord, ApplySpec};
use crate::machine::observe::{EngineFault, Observation};
use crate::machine::table::RunnerGone;

/// Why the target could not be inspected.
#[derive(Debug, thiserror::Error)]
pub(super) enum InspectError {
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    #[error("a Spirit runner still holds the lock {lock} (connection {connection}); its tables are left alone until it exits")]
    RunnerAlive { lock: String, connection: u64 },
}

pub(super) fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

impl SpiritEngine {
    /// A connection to a server Spirit works on.
    pub(super) fn options(&self, server: &Endpoint) -> MySqlConnectOptions {
        let o = MySqlConnectOptions::new()
            .host(&server.host)
            .port(server.port)
            .username(&self.cfg.username);
        // An empty password must not be sent as one ("using password: YES").
        match self.cfg.password.expose() {
            "" => o,
            p => o.password(p),
        }
    }

    /// A connection to an apply's target schema, on its server.
    pub(super) async fn connect(&self, spec: &ApplySpec) -> Result<MySqlConnection, sqlx::Error> {
        let server = self
            .cfg
            .endpoint(spec)
            .map_err(|m| sqlx::Error::Configuration(m.into()))?;
        self.options(&server)
            .database(&spec.target.database)
            .connect()
            .await
    }

    /// Reachability of one server for `check-config`.
    pub async fn ping(&self, server: &Endpoint, database: Option<&str>) -> Result<(), String> {
        let mut opts = self.options(server);
        if let Some(d) = database {
            opts = opts.database(d);
        }
        let mut c = opts.connect().await.map_err(|e| e.to_string())?;
        c.ping().await.map_err(|e| e.to_string())?;
        c.close().await.ok();
        Ok(())
    }

    pub(super) async fn fingerprint(
        c: &mut MySqlConnection,
        tables: &[String],
    ) -> Result<String, sqlx::Error> {
        let mut out = String::new();
        for t in tables {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            )
            .bind(t)
            .fetch_one(&mut *c)
            .await?;
            out.push_str(t);
            out.push('\n');
            if exists == 0 {
                out.push_str("(absent)\n");
                continue;
            }
            let row = c
                .fetch_one(format!("SHOW CREATE TABLE {}", quote_ident(t)).as_str())
                .await?;
            let ddl: String = row.try_get(1)?;
            // AUTO_INCREMENT=N moves with every insert; it is not schema.
            let cleaned: Vec<&str> = ddl
                .split_whitespace()
                .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                .collect();
            out.push_str(&cleaned.join(" "));
            out.push('\n');
        }
        Ok(out)
    }

    pub(super) async fn table_exists(
        c: &mut MySqlConnection,
        t: &str,
    ) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
        .bind(t)
        .fetch_one(&mut *c)
        .await?;
        Ok(n > 0)
    }

    pub(super) async fn ensure_state_table(c: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        c.execute(
            format!(
                "CREATE TABLE IF NOT EXISTS {STATE_TABLE} (identifier VARCHAR(255) NOT NULL PRIMARY KEY, \
                 fingerprint LONGTEXT NOT NULL, created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
            )
            .as_str(),
        )
        .await
        .map(|_| ())
    }

    /// The connection holding one of Spirit's locks on the plan's tables, if any: a runner
    /// alive elsewhere (another operator's, or one still exiting) whose tables nobody may
    /// touch. Spirit takes them with `GET_LOCK(name, 0)` for the whole run
    /// (`pkg/dbconn/advisorylock.go`); the server frees them when its session ends.
    pub(super) async fn lock_holder(
        c: &mut MySqlConnection,
        database: &str,
        plan: &Plan,
    ) -> Result<Option<(String, u64)>, sqlx::Error> {
        for name in names::locks(database, &plan.tables) {
            // MariaDB types IS_USED_LOCK as signed, MySQL as unsigned: read it as one type.
            let holder: Option<i64> = sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) AS SIGNED)")
                .bind(&name)
                .fetch_one(&mut *c)
                .await?;
            if let Some(connection) = holder {
                return Ok(Some((name, connection.max(0) as u64)));
            }
        }
        Ok(None)
    }

    /// What is left of an apply's work when no runner of it is alive here.
    pub(super) async fn inspect(
        &self,
        apply: &ApplyRecord,
        plan: &Plan,
    ) -> Result<RunnerGone, InspectError> {
        let database = &apply.spec.target.database;
        let mut c = self.connect(&apply.spec).await?;
        if let Some((lock, connection)) = Self::lock_holder(&mut c, database, plan).await? {
            return Err(InspectError::RunnerAlive { lock, connection });
        }
        // The sentinel is schema-wide (`pkg/sentinel/sentinel.go`): only an apply that defers
        // its cutover made one; another's is not a sign of ours.
        if apply.row.options.defer_cutover && Self::table_exists(&mut c, SENTINEL).await? {
            return Ok(RunnerGone::SentinelKept);
        }
        // Without `_<t>_new` there is nothing to resume: a checkpoint alone is either a run
        // that never checkpointed or the tail of a finished one (after the RENAME Spirit drops
        // `_<t>_old`, slowly on a big table, and only then the checkpoint:
        // `pkg/migration/runner.go`). The schema itself tells which.
        for t in &plan.tables {
            if Self::table_exists(&mut c, &names::new_table(t)).await? {
                return Ok(RunnerGone::WorkLeft);
            }
        }
        if !Self::table_exists(&mut c, STATE_TABLE).await? {
            return Ok(RunnerGone::WorkLeft);
        }
        let before: Option<String> = sqlx::query_scalar(&format!(
            "SELECT fingerprint FROM {STATE_TABLE} WHERE identifier = ?"
        ))
        .bind(&apply.spec.identifier)
        .fetch_optional(&mut c)
        .await?;
        let now = Self::fingerprint(&mut c, &plan.tables).await?;
        let gone = match before {
            // The schema moved since our first start, and one active apply per target means
            // nobody else moved it: the change is in place.
            Some(b) if b != now => RunnerGone::NothingLeft,
            _ => RunnerGone::WorkLeft,
        };
        if gone == RunnerGone::NothingLeft {
            // What the dead runner would have dropped next; no runner holds the tables.
            Self::drop_leftovers(&mut c, plan, false).await?;
        }
        c.close().await.ok();
        Ok(gone)
    }

    /// Drop what Spirit leaves of a run: the checkpoint and `_<t>_old`, and with `copy` also
    /// the half-done `_<t>_new`. Only ever called when no runner holds the tables.
    pub(super) async fn drop_leftovers(
        c: &mut MySqlConnection,
        plan: &Plan,
        copy: bool,
    ) -> Result<(), sqlx::Error> {
        let mut tables = vec![names::checkpoint_table(&plan.tables)];
        for t in &plan.tables {
            tables.push(names::old_table(t));
            if copy {
                tables.push(names::new_table(t));
            }
        }
        for t in tables {
            c.execute(format!("DROP TABLE IF EXISTS {}", quote_ident(&t)).as_str())
                .await?;
        }
        Ok(())
    }

    pub(super) async fn drop_sentinel(&self, apply: &ApplyRecord) -> Reply {
        let r: Result<(), sqlx::Error> = async {
            let mut c = self.connect(&apply.spec).await?;
            c.execute(format!("DROP TABLE IF EXISTS {SENTINEL}").as_str())
                .await?;
            c.close().await.ok();
            Ok(())
        }
        .await;
        match r {
            Ok(()) => Observation::Accepted.into(),
            Err(e) => {
                let why = format!("dropping the sentinel on {}: {e}", apply.spec.target);
                tracing::warn!(apply = apply.row.id, "{why}");
                Reply::fault(EngineFault::Transient, why)
            }
        }
    }
}
