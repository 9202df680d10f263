//! What an engine last said of an operation's work (rows copied, its phase, whether its runner
//! resumed or started over), kept on the operation's task rows so that `status`, the API and
//! the dashboard show it. Advisory: no rule reads it.

use serde::{Deserialize, Serialize};

/// The longest phase or ETA text kept; an engine's longer text is cut.
const MAX_TEXT: usize = 64;
/// The longest note kept.
const MAX_NOTE: usize = 1024;

/// How the engine's runner began its latest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStart {
    /// A first run, with nothing to resume.
    Fresh,
    /// It resumed from a checkpoint.
    Resumed,
    /// It found earlier work it could not resume from and started the copy over.
    Restarted,
}

impl RunnerStart {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerStart::Fresh => "fresh",
            RunnerStart::Resumed => "resumed",
            RunnerStart::Restarted => "restarted",
        }
    }
}

impl std::str::FromStr for RunnerStart {
    type Err = String;
    fn from_str(s: &str) -> Result<RunnerStart, String> {
        Ok(match s {
            "fresh" => RunnerStart::Fresh,
            "resumed" => RunnerStart::Resumed,
            "restarted" => RunnerStart::Restarted,
            other => return Err(format!("unknown runner start {other:?}")),
        })
    }
}

/// The engine's last report of an operation's work.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The engine's phase as it names it (Spirit: `copyRows`, `waitingOnSentinelTable`, …).
    pub phase: Option<String>,
    pub rows_copied: Option<u64>,
    /// The engine's estimate of the rows to copy.
    pub rows_total: Option<u64>,
    /// 0–100.
    pub percent: Option<f64>,
    /// The engine's estimate of the time left, as it prints it.
    pub eta: Option<String>,
    pub start: Option<RunnerStart>,
    /// The engine's own words on where the work stands or what it waits for (PlanetScale:
    /// `deploy request #12`, `deploy request #12 is waiting for approval (…)`).
    pub note: Option<String>,
}

fn cut(text: Option<String>, max: usize) -> Option<String> {
    text.map(|mut t| {
        if t.len() > max {
            let mut end = max;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
        t
    })
}

impl TaskProgress {
    /// What may be stored of an engine's report: texts cut to 64 bytes, a percentage only
    /// when it is a number from 0 to 100.
    pub fn bounded(self) -> TaskProgress {
        TaskProgress {
            phase: cut(self.phase, MAX_TEXT),
            eta: cut(self.eta, MAX_TEXT),
            note: cut(self.note, MAX_NOTE),
            percent: self.percent.filter(|p| (0.0..=100.0).contains(p)),
            ..self
        }
    }

    /// One line for people: `copyRows: 1200/5000 rows, 24.00%, eta 3s; resumed from its
    /// checkpoint`, `in_progress; deploy request #12`.
    pub fn summary(&self) -> String {
        let mut out = self.phase.clone().unwrap_or_else(|| "running".into());
        let mut parts = Vec::new();
        match (self.rows_copied, self.rows_total) {
            (Some(c), Some(t)) => parts.push(format!("{c}/{t} rows")),
            (Some(c), None) => parts.push(format!("{c} rows")),
            _ => {}
        }
        if let Some(p) = self.percent {
            parts.push(format!("{p:.2}%"));
        }
        if let Some(eta) = &self.eta {
            parts.push(format!("eta {eta}"));
        }
        if !parts.is_empty() {
            out.push_str(": ");
            out.push_str(&parts.join(", "));
        }
        match self.start {
            Some(RunnerStart::Resumed) => out.push_str("; resumed from its checkpoint"),
            Some(RunnerStart::Restarted) => {
                out.push_str("; started the copy over (no checkpoint it could resume from)")
            }
            Some(RunnerStart::Fresh) | None => {}
        }
        if let Some(note) = &self.note {
            out.push_str("; ");
            out.push_str(note);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_bounded_and_summarised() {
        let p = TaskProgress {
            phase: Some("copyRows".into()),
            rows_copied: Some(1200),
            rows_total: Some(5000),
            percent: Some(24.0),
            eta: Some("é".repeat(40)),
            start: Some(RunnerStart::Resumed),
            note: None,
        }
        .bounded();
        assert_eq!(p.eta.as_deref().map(str::len), Some(64));
        assert!(p
            .summary()
            .starts_with("copyRows: 1200/5000 rows, 24.00%, eta é"));
        assert!(p.summary().ends_with("; resumed from its checkpoint"));
        let odd = TaskProgress {
            percent: Some(f64::NAN),
            note: Some("n".repeat(5000)),
            ..Default::default()
        }
        .bounded();
        assert_eq!(odd.percent, None);
        assert_eq!(odd.note.as_deref().map(str::len), Some(1024));
        let waiting = TaskProgress {
            phase: Some("ready".into()),
            note: Some("deploy request #12 is waiting for approval".into()),
            ..Default::default()
        };
        assert_eq!(
            waiting.summary(),
            "ready; deploy request #12 is waiting for approval"
        );
        for s in [
            RunnerStart::Fresh,
            RunnerStart::Resumed,
            RunnerStart::Restarted,
        ] {
            assert_eq!(s.as_str().parse::<RunnerStart>(), Ok(s));
        }
        assert!("later".parse::<RunnerStart>().is_err());
    }
}
