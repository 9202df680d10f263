//! What a runner's output says: Spirit's status lines read into progress, and the last lines
//! kept for error reports (the password redacted before anything is kept or logged).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

use super::lock;
use crate::machine::apply::ApplyId;

/// Output lines kept per runner for error reports.
const TAIL_LINES: usize = 40;
/// Longest output line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 8 * 1024;

/// What the runner's output said last.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Spirit's state name (`copyRows`, `waitingOnSentinelTable`, `cutOver`, …).
    pub state: Option<String>,
    pub copied: Option<(u64, u64)>,
    /// Spirit said it resumed from a checkpoint.
    pub resumed: bool,
    pub tail: VecDeque<String>,
}

impl Progress {
    fn absorb(&mut self, line: &str) {
        if let Some(s) = field(line, "state") {
            if !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.state = Some(s);
            }
        }
        if let Some(p) = field(line, "copy-progress") {
            // "copied/total pct%"
            let frac = p.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = frac.split_once('/') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    self.copied = Some((a, b));
                }
            }
        }
        if line.contains("resuming from checkpoint") || line.contains("resumed from checkpoint") {
            self.resumed = true;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
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
        lock(&progress).absorb(&text);
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
        p.absorb("resuming from checkpoint watermark=10");
        assert!(p.resumed);
        assert!(is_permanent(
            "Error 1064 (42000): You have an error in your SQL syntax"
        ));
        assert!(!is_permanent("dial tcp 127.0.0.1:3306: connection refused"));
    }
}
