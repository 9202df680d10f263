//! What a runner's output says: Spirit's status lines read into progress, and the last lines
//! kept for error reports (the password redacted before anything is kept or logged).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

use super::lock;
use crate::machine::apply::ApplyId;
use crate::store::progress::{RunnerStart, TaskProgress};

/// Output lines kept per runner for error reports.
const TAIL_LINES: usize = 40;
/// Longest output line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 8 * 1024;

/// What the runner's output said last.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Spirit's state name (`copyRows`, `waitingOnSentinelTable`, `cutOver`, …).
    pub state: Option<String>,
    /// Rows copied and the estimated total.
    pub copied: Option<(u64, u64)>,
    pub percent: Option<f64>,
    /// Spirit's estimate of the copy time left, as it prints it (`eta=`).
    pub eta: Option<String>,
    /// Spirit said it resumed from a checkpoint.
    pub resumed: bool,
    /// Spirit said it could not resume and started the copy over (a stop or crash before its
    /// first checkpoint, a checkpoint too old, a purged binlog: `pkg/migration/runner.go`).
    pub restarted: Option<String>,
    pub tail: VecDeque<String>,
}

impl Progress {
    /// One line of output. Spirit up to v0.16 prints one status line every 30 s
    /// (`migration status: state=copyRows copy-progress="120/1000 12.00%" …`); its main branch
    /// prints a block whose rows follow the header (`copier " 12.00%  120/1000  chunk-size=…
    /// eta=…"`), on lines of their own or escaped inside one record (`pkg/status/`).
    pub(super) fn absorb(&mut self, line: &str) {
        for part in line.split("\\n") {
            self.absorb_part(part);
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    fn absorb_part(&mut self, line: &str) {
        if let Some(s) = field(line, "state") {
            if !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.state = Some(s);
            }
        }
        // v0.16 writes `copy-progress=120/1000 12.00%` inside its message (unquoted, so the
        // percentage is the next word); the stand-in and older lines may quote the pair.
        if let Some((_, rest)) = line.split_once("copy-progress=") {
            let pair: Vec<&str> = rest
                .trim_start_matches('"')
                .split_whitespace()
                .take(2)
                .collect();
            self.copy_figures(&pair.join(" ").replace('"', " "));
        }
        if let Some(row) = line.trim_start().strip_prefix("copier") {
            let row = row.trim().trim_matches('"');
            self.copy_figures(row);
            if let Some(eta) = field(row, "eta") {
                self.eta = Some(eta);
            }
        }
        // "resuming from checkpoint failed …" (v0.16) is not a resume.
        if (line.contains("resuming from checkpoint") || line.contains("resumed from checkpoint"))
            && !line.contains("failed")
        {
            self.resumed = true;
        }
        if line.contains("could not resume from checkpoint") {
            let reason = field(line, "reason").unwrap_or_else(|| "no reason given".into());
            // Spirit tries to resume on every start; without `_<t>_new` there was never a copy
            // to resume (a first start), which is no restart.
            if !reason.contains("new table") {
                self.restarted = Some(reason);
            }
        }
    }

    /// What is kept on the task rows: the figures, and how this run began once that is known.
    /// Spirit decides whether it resumes in its `initial` state, so a run that has left it (or
    /// copied a row) without saying it resumed or started over began fresh.
    pub fn report(&self) -> TaskProgress {
        let decided =
            self.state.as_deref().is_some_and(|s| s != "initial") || self.copied.is_some();
        let start = if self.restarted.is_some() {
            Some(RunnerStart::Restarted)
        } else if self.resumed {
            Some(RunnerStart::Resumed)
        } else if decided {
            Some(RunnerStart::Fresh)
        } else {
            None
        };
        TaskProgress {
            phase: self.state.clone(),
            rows_copied: self.copied.map(|(c, _)| c),
            rows_total: self.copied.map(|(_, t)| t),
            percent: self.percent,
            eta: self.eta.clone(),
            start,
            note: None,
        }
    }

    /// `a/b` and `p%` tokens, in either order; anything else is ignored.
    fn copy_figures(&mut self, text: &str) {
        for token in text.split_whitespace() {
            if let Some(pct) = token.strip_suffix('%') {
                if let Ok(p) = pct.parse::<f64>() {
                    if (0.0..=100.0).contains(&p) {
                        self.percent = Some(p);
                    }
                }
            } else if let Some((a, b)) = token.split_once('/') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    self.copied = Some((a, b));
                }
            }
        }
    }
}

/// The value of `key=value` or `key="value"` in a logfmt-style line.
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let mut from = 0;
    while let Some(i) = line[from..].find(&pat) {
        let at = from + i;
        // A whole key, not the tail of another one.
        let whole = at == 0 || line.as_bytes()[at - 1] == b' ';
        let rest = &line[at + pat.len()..];
        if whole {
            return Some(match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or("").to_string(),
                None => rest
                    .split(char::is_whitespace)
                    .next()
                    .unwrap_or("")
                    .to_string(),
            });
        }
        from = at + pat.len();
    }
    None
}

pub(super) async fn read_lines(
    mut out: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    progress: Arc<Mutex<Progress>>,
    redact: String,
    apply: ApplyId,
) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let flush = |line: &mut Vec<u8>| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if redact.len() >= 4 {
            text = text.replace(&redact, "***");
        }
        tracing::debug!(apply, "spirit: {text}");
        let mut p = lock(&progress);
        let restarted_before = p.restarted.is_some();
        p.absorb(&text);
        if let (false, Some(reason)) = (restarted_before, &p.restarted) {
            // Spirit says so in one INFO line and copies everything again; the operator says
            // it louder (a stop or crash in the first ~50 s, before any checkpoint, does this).
            tracing::warn!(
                apply,
                "Spirit could not resume from its checkpoint and starts the copy over: {reason}"
            );
        }
        line.clear();
    };
    loop {
        let n = match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                flush(&mut line);
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        flush(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spirit::process::is_permanent;

    #[test]
    fn progress_lines_are_parsed_and_garbage_is_ignored() {
        let mut p = Progress::default();
        p.absorb(r#"time=2024 level=INFO msg="migration status" state=copyRows copy-progress="120/1000 12.00%" binlog-deltas=0"#);
        assert_eq!(p.state.as_deref(), Some("copyRows"));
        assert_eq!(p.copied, Some((120, 1000)));
        p.absorb("\u{0}\u{1}garbage state= copy-progress=\"x/y\"");
        assert_eq!(p.state.as_deref(), Some("copyRows"));
        p.absorb(r#"level=INFO msg="migration status" state=waitingOnSentinelTable"#);
        assert_eq!(p.state.as_deref(), Some("waitingOnSentinelTable"));
        p.absorb("resuming from checkpoint failed with a possibly-transient error");
        assert!(!p.resumed);
        p.absorb("resuming from checkpoint watermark=10");
        assert_eq!(p.percent, Some(12.0));
        assert!(p.resumed);
        assert!(is_permanent(
            "Error 1064 (42000): You have an error in your SQL syntax"
        ));
        assert!(!is_permanent("dial tcp 127.0.0.1:3306: connection refused"));
    }

    #[test]
    fn spirit_v0_16_status_lines_are_read() {
        let mut p = Progress::default();
        p.absorb(r#"time=2026-07-31T10:00:00Z level=INFO msg="migration status: state=copyRows copy-progress=120/1000 12.00% binlog-deltas=0 total-time=1m copier-time=50s copier-remaining-time=6m conns-in-use=2""#);
        assert_eq!(p.state.as_deref(), Some("copyRows"));
        assert_eq!(p.copied, Some((120, 1000)));
        assert_eq!(p.percent, Some(12.0));
    }

    #[test]
    fn the_main_branch_status_block_and_a_restart_are_read() {
        let mut p = Progress::default();
        p.absorb("time=2026 level=INFO msg=\"migration status: state=copyRows total-time=1m copier-time=50s\"");
        p.absorb(r#"  copier    " 42.50%  425/1000  chunk-size=1000  eta=1m5s  throttled=false""#);
        assert_eq!(p.state.as_deref(), Some("copyRows"));
        assert_eq!(p.copied, Some((425, 1000)));
        assert_eq!(p.percent, Some(42.5));
        assert_eq!(p.eta.as_deref(), Some("1m5s"));
        // The same block escaped inside one record.
        let mut q = Progress::default();
        q.absorb(r#"level=INFO msg="migration status: state=copyRows total-time=2m\n  copier    \" 10.00%  100/1000  eta=9m\"" "#);
        assert_eq!(q.copied, Some((100, 1000)));
        assert!(p.restarted.is_none());
        p.absorb(r#"level=INFO msg="could not resume from checkpoint" reason="could not read new table '_items_new' to resume from checkpoint: Error 1146""#);
        assert!(p.restarted.is_none(), "a first start is no restart");
        p.absorb(r#"level=INFO msg="could not resume from checkpoint" reason="checkpoint table '_items_chkpnt' has no checkpoint, nothing to resume from""#);
        assert!(p.restarted.as_deref().unwrap().contains("no checkpoint"));
    }
}
