//! A claim's transaction, run by hand so that its `START TRANSACTION` rides with the claim's
//! first read and its `COMMIT` with the claim's writes: a claim is three round trips (candidates,
//! the locking read, the writes), not one per statement.
//!
//! Statements sent together are text (no binds); values are `machine`'s own names, integers, the
//! store's time expression, or strings as [`sql_text`] writes them.

use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, MySql, MySqlPool};

use super::Failure;

/// A string as a hexadecimal literal with a character-set introducer: no byte of it is ever read
/// as SQL, whatever it holds.
pub(super) fn sql_text(s: &str) -> String {
    let hex: String = s.bytes().map(|b| format!("{b:02X}")).collect();
    format!("_utf8mb4 X'{hex}'")
}

/// One pooled connection and the claim transaction on it. Dropped while the transaction is open
/// (an error, or the caller's future cancelled) the connection is closed instead of going back
/// to the pool, so the server rolls back whatever the transaction did and a half-made claim can
/// never be committed by the connection's next user.
pub(super) struct ClaimTx {
    conn: Option<PoolConnection<MySql>>,
    open: bool,
}

impl ClaimTx {
    pub(super) async fn acquire(pool: &MySqlPool) -> Result<ClaimTx, Failure> {
        Ok(ClaimTx {
            conn: Some(pool.acquire().await?),
            open: false,
        })
    }

    pub(super) fn conn(&mut self) -> &mut MySqlConnection {
        self.conn.as_mut().expect("held until dropped")
    }

    /// Run `sql` (one statement that neither starts nor ends a transaction) inside the
    /// transaction, starting it in the same round trip if none is open.
    pub(super) async fn read(&mut self, sql: &str) -> Result<Vec<MySqlRow>, Failure> {
        let text = if self.open {
            sql.to_string()
        } else {
            format!("START TRANSACTION; {sql}")
        };
        // Open from here on: if the read fails, the start may still have happened.
        self.open = true;
        Ok(self.conn().fetch_all(sqlx::raw_sql(&text)).await?)
    }

    /// Make sure a transaction is open before a prepared locking read.
    pub(super) async fn begin(&mut self) -> Result<(), Failure> {
        if !self.open {
            self.open = true;
            self.conn().execute("START TRANSACTION").await?;
        }
        Ok(())
    }

    /// Run `statements` and commit, in one round trip; their rows come back. On an error the
    /// statements before it stay in the open transaction and the commit has not happened.
    pub(super) async fn commit_with(
        &mut self,
        statements: &[String],
    ) -> Result<Vec<MySqlRow>, Failure> {
        let text = format!("{}; COMMIT", statements.join("; "));
        let rows = self.conn().fetch_all(sqlx::raw_sql(&text)).await?;
        self.open = false;
        Ok(rows)
    }

    /// Commit what is open and keep the connection for the next transaction.
    pub(super) async fn commit(&mut self) -> Result<(), Failure> {
        if self.open {
            self.conn().execute("COMMIT").await?;
            self.open = false;
        }
        Ok(())
    }

    /// Commit what is open (a claim that found nothing still commits a refused start).
    pub(super) async fn finish(mut self) -> Result<(), Failure> {
        if self.open {
            self.conn().execute("COMMIT").await?;
            self.open = false;
        }
        Ok(())
    }
}

impl Drop for ClaimTx {
    fn drop(&mut self) {
        if self.open {
            if let Some(conn) = self.conn.take() {
                // Detached, then dropped: the socket closes and the server rolls back.
                drop(conn.detach());
            }
        }
    }
}
