//! The `spirit migrate` child process: its `--conf` file, its arguments, its signals and how
//! its exit is read.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::progress::{read_lines, Progress};
use super::{lock, Plan, SpiritEngine};
use crate::machine::apply::{ApplyId, ApplyRecord};
use crate::machine::observe::RunnerStatus;

pub(super) struct Runner {
    pub(super) apply: ApplyId,
    /// The rollout deployment it runs for (`""` for an apply without deployments).
    pub(super) deployment: String,
    pub(super) epoch: u64,
    pub(super) child: tokio::process::Child,
    pub(super) progress: Arc<Mutex<Progress>>,
    pub(super) conf: PathBuf,
}

/// Whether a failed run's output says the change itself is wrong (retrying cannot help).
pub(super) fn is_permanent(tail: &str) -> bool {
    let t = tail.to_ascii_lowercase();
    [
        "error 1064",
        "error 1054",
        "error 1146",
        "error 1091",
        "error 1060",
        "error 1061",
        "error 1068",
        "error 1072",
        "error 1050",
        "error 4161",
        "you have an error in your sql syntax",
        "unknown data type",
        "unsupported statement",
        "could not parse",
        "unknown column",
        "duplicate column",
        // `pkg/statement/statement.go`: ALGORITHM= and LOCK= clauses are refused for good.
        "alter contains unsupported clause",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// Whether a failed run asks for a person before any re-run: `pkg/status/state.go` (main) — a
/// DDL or RENAME may have committed unseen, and Spirit asks that the table's ownership be
/// checked by hand before retrying. Neither retried nor failed: held (`RunnerStatus::NeedsPerson`).
///
/// Also a sentinel wait that timed out (`pkg/sentinel/sentinel.go`, after 48 h): a retry would
/// only wait again, or — if the binlog it needs was purged meanwhile — copy everything again,
/// so a person decides.
pub(super) fn needs_person(code: Option<i32>, tail: &str) -> bool {
    let error = final_error(tail).to_ascii_lowercase();
    code == Some(1) && (error.contains("ownership ambiguous") || error.contains(SENTINEL_TIMED_OUT))
}

/// Spirit's exit codes (`cmd/spirit/main.go`, kong v1.16): 80 is a usage error (a flag this
/// Spirit does not know, a missing `--conf` file) — the same run can never succeed; 1 is a
/// runtime error, judged by the error Spirit exits with; a signal means it was killed.
pub(super) fn exit_is_permanent(code: Option<i32>, tail: &str) -> bool {
    code == Some(USAGE_ERROR) || (code == Some(1) && is_permanent(final_error(tail)))
}

/// The error a run ended with: the last `spirit: error: …` line (kong's `FatalIfErrorf`).
/// Only that line is judged — earlier lines mention errors Spirit got past, such as the
/// missing `_<t>_new` every fresh start logs ("could not resume from checkpoint").
fn final_error(tail: &str) -> &str {
    tail.lines()
        .rev()
        .find_map(|l| l.split_once("spirit: error:").map(|(_, e)| e))
        .unwrap_or("")
}

pub(super) const USAGE_ERROR: i32 = 80;

/// What Spirit exits with when nobody dropped the sentinel within its 48 h wait.
pub(super) const SENTINEL_TIMED_OUT: &str = "timed out waiting for sentinel table to be dropped";

/// A value as Spirit's `--conf` reader takes it back whole. Spirit reads the file with go-ini
/// v1.67 and no load options (`pkg/migration/conf_params.go`): unquoted, a `#` or `;` anywhere
/// starts a comment and a trailing `\` continues the line; surrounding double quotes are only
/// stripped after that, so they protect nothing. A value in backticks is taken verbatim up to
/// the line's last backtick — the one quoting that carries every other character.
pub fn conf_value(key: &str, value: &str) -> Result<String, ConfValueError> {
    if value.contains(['`', '\n', '\r']) {
        return Err(ConfValueError {
            key: key.to_string(),
        });
    }
    Ok(format!("`{value}`"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "engines.spirit.{key} contains a backtick or a line break, which Spirit's --conf file cannot carry"
)]
pub struct ConfValueError {
    key: String,
}

/// The whole `[client]` file: the keys Spirit reads there (`user`, `password`, `host`,
/// `port`; not `username`).
pub fn conf_text(
    cfg: &super::SpiritConfig,
    server: &super::Endpoint,
) -> Result<String, ConfValueError> {
    Ok(format!(
        "[client]\nuser={}\npassword={}\nhost={}\nport={}\n",
        conf_value("username", &cfg.username)?,
        conf_value("password", cfg.password.expose())?,
        conf_value("host", &server.host)?,
        server.port
    ))
}

/// The arguments of `spirit migrate` for one run; `check-config` checks every flag here
/// against the installed Spirit's `--help`.
pub fn migrate_args(
    cfg: &super::SpiritConfig,
    server: &super::Endpoint,
    conf: &std::path::Path,
    database: &str,
    statement: &str,
    defer_cutover: bool,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "migrate".into(),
        "--host".into(),
        server.to_string().into(),
        "--username".into(),
        cfg.username.clone().into(),
        "--conf".into(),
        conf.into(),
        "--database".into(),
        database.into(),
        "--statement".into(),
        statement.into(),
        "--threads".into(),
        cfg.threads.to_string().into(),
    ];
    if let Some(t) = &cfg.target_chunk_time {
        args.push("--target-chunk-time".into());
        args.push(t.into());
    }
    if defer_cutover {
        args.push("--defer-cutover".into());
    }
    args
}

impl SpiritEngine {
    /// The private `[client]` file Spirit reads the credentials from (`--conf`, v0.10.1+).
    pub(super) fn write_conf(&self, server: &super::Endpoint) -> Result<PathBuf, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = conf_text(&self.cfg, server).map_err(|e| e.to_string())?;
        let n = self.conf_seq.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("applyd-spirit-{}-{n}.cnf", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(text.as_bytes())
        };
        write().map_err(|e| format!("cannot write the Spirit --conf file: {e}"))?;
        Ok(path)
    }

    pub(super) fn spawn(
        &self,
        apply: &ApplyRecord,
        epoch: u64,
        plan: &Plan,
    ) -> Result<Runner, String> {
        let server = self.cfg.endpoint(&apply.spec)?;
        let conf = self.write_conf(&server)?;
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.args(migrate_args(
            &self.cfg,
            &server,
            &conf,
            &apply.spec.target.database,
            &plan.statement,
            apply.row.options.defer_cutover,
        ));
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&conf);
                return Err(format!(
                    "cannot start Spirit at {}: {e}",
                    self.cfg.binary.display()
                ));
            }
        };
        let progress = Arc::new(Mutex::new(Progress::default()));
        {
            // The password file is read at start-up; do not leave it behind (an operator killed
            // outright could not remove it later).
            let (conf, progress) = (conf.clone(), progress.clone());
            tokio::spawn(async move {
                for _ in 0..200 {
                    if !lock(&progress).tail.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = std::fs::remove_file(&conf);
            });
        }
        let redact = self.cfg.password.expose().to_string();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let p = progress.clone();
            let redact = redact.clone();
            let apply_id = apply.row.id;
            tokio::spawn(async move { read_lines(out, p, redact, apply_id).await });
        }
        tracing::info!(
            apply = apply.row.id,
            epoch,
            "started Spirit on {}",
            apply.spec.target
        );
        Ok(Runner {
            apply: apply.row.operation,
            deployment: apply.spec.deployment.clone(),
            epoch,
            child,
            progress,
            conf,
        })
    }

    /// Ask a runner to stop (SIGTERM, which ends Spirit at once), kill it past the deadline; its
    /// exit.
    pub(super) async fn terminate(
        &self,
        mut r: Runner,
        signal: i32,
    ) -> Option<std::process::ExitStatus> {
        let status = match r.child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                if let Some(pid) = r.child.id() {
                    // SAFETY: plain kill(2) on our own child's pid.
                    unsafe {
                        libc::kill(pid as i32, signal);
                    }
                }
                match tokio::time::timeout(self.cfg.stop_timeout, r.child.wait()).await {
                    Ok(Ok(s)) => Some(s),
                    _ => {
                        tracing::warn!(apply = r.apply, "Spirit did not exit in time; killing it");
                        let _ = r.child.kill().await;
                        None
                    }
                }
            }
        };
        let _ = std::fs::remove_file(&r.conf);
        status
    }

    /// The outcome of a runner that exited on its own.
    /// How a runner ended, and for a failure Spirit's own words: the error it exited with,
    /// else its last line of output (secrets redacted).
    pub(super) fn finished(
        &self,
        r: &Runner,
        status: std::process::ExitStatus,
    ) -> (RunnerStatus, Option<String>) {
        let _ = std::fs::remove_file(&r.conf);
        if status.success() {
            return (RunnerStatus::Completed, None);
        }
        let tail: Vec<String> = lock(&r.progress).tail.iter().cloned().collect();
        let tail = tail.join("\n");
        // A rollout's operation is never held: no arm takes a held operation, so its rollout
        // could not be stopped or cancelled. It fails for good with the same words.
        let held = needs_person(status.code(), &tail) && r.deployment.is_empty();
        let retryable =
            !needs_person(status.code(), &tail) && !exit_is_permanent(status.code(), &tail);
        tracing::error!(
            apply = r.apply,
            retryable,
            held,
            "Spirit exited with {status}; its last output:\n{tail}"
        );
        let said = match final_error(&tail) {
            "" => tail.lines().last().unwrap_or("no output").trim(),
            e => e.trim(),
        };
        let mut why = format!("Spirit exited with {status}: {said}");
        if !held && needs_person(status.code(), &tail) {
            why.push_str(
                "; a rollout's operation cannot be held for a person, so it fails for good \
                 rather than being retried",
            );
        } else if said.contains(SENTINEL_TIMED_OUT) {
            why.push_str(
                "; nobody asked for the cutover within the 48 h Spirit waits, so the apply is \
                 held rather than retried (a retry could start the copy over). Its copy, its \
                 checkpoint and the schema's _spirit_sentinel are kept, and every Spirit run on \
                 this schema waits on that sentinel meanwhile: a stop and a start resume from \
                 the checkpoint (then ask for the cutover within 48 h), a cancel gives the \
                 change up and drops them",
            );
        } else if held {
            why.push_str(
                "; Spirit cannot tell whether its change was applied, so nothing runs again \
                 until a person has checked the table: then a stop and a start run it again, or \
                 a cancel gives it up",
            );
        }
        let why =
            crate::engine::planetscale::Redactor::new(&[self.cfg.password.expose()]).clean(&why);
        let status = if held {
            RunnerStatus::NeedsPerson
        } else {
            RunnerStatus::Failed { retryable }
        };
        (status, Some(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_are_backtick_quoted_and_the_unquotable_refused() {
        assert_eq!(conf_value("password", "a#b;c\"d").unwrap(), "`a#b;c\"d`");
        assert_eq!(conf_value("password", "").unwrap(), "``");
        let e = conf_value("password", "a`b").unwrap_err();
        assert!(e.to_string().contains("engines.spirit.password"), "{e}");
        assert!(conf_value("username", "a\nb").is_err());
    }

    #[test]
    fn usage_errors_and_final_errors_are_permanent() {
        assert!(exit_is_permanent(
            Some(USAGE_ERROR),
            "unknown flag --target-chunk-time"
        ));
        assert!(!exit_is_permanent(
            Some(1),
            "spirit: error: dial tcp: connection refused"
        ));
        assert!(exit_is_permanent(
            Some(1),
            "spirit: error: ALTER contains unsupported clause(s): ALGORITHM="
        ));
        let ambiguous = "spirit: error: cutover failed: ownership ambiguous; verify table ownership manually before retrying";
        assert!(needs_person(Some(1), ambiguous));
        assert!(!needs_person(
            Some(1),
            "ownership ambiguous once\nspirit: error: dial tcp: connection refused"
        ));
        assert!(needs_person(
            Some(1),
            "spirit: error: timed out waiting for sentinel table to be dropped"
        ));
        assert!(!exit_is_permanent(None, "spirit: error: Error 1064"));
    }

    #[test]
    fn only_the_error_spirit_exits_with_is_judged() {
        // Every fresh start logs the missing new table (Error 1146) and goes on.
        let tail = "level=INFO msg=\"could not resume from checkpoint\" reason=\"could not read new table '_t_new' to resume from checkpoint: Error 1146 (42S02): Table 'd._t_new' doesn't exist\"\nspirit: error: dial tcp 10.0.0.1:3306: i/o timeout";
        assert!(!exit_is_permanent(Some(1), tail));
        assert!(exit_is_permanent(
            Some(1),
            &format!(
                "{tail}\nspirit: error: Error 1064 (42000): You have an error in your SQL syntax"
            )
        ));
    }
}
