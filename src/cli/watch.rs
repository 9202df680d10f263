//! `applyd watch APPLY` and `applyd submit --wait`: follow an apply until it is terminal, with a
//! progress bar per task on a terminal (a line per change otherwise, for logs and CI), then exit
//! with a code that says how it ended.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::machine::ApplyState;
use crate::store::mysql::MySqlStore;
use crate::store::status::{ApplyStatus, Inspect};
use crate::store::StoreError;

/// How long the database may stay unreachable before a follow gives up (exit 1).
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);

/// How an apply ended, as an exit code: scripts and CI jobs branch on it.
pub fn exit_code(state: ApplyState) -> u8 {
    match state {
        ApplyState::Completed => 0,
        ApplyState::Failed => 2,
        ApplyState::Cancelled => 3,
        ApplyState::Reverted => 4,
        ApplyState::Stopped => 5,
        // Not terminal: `watch` never ends on these.
        _ => 1,
    }
}

/// The exit code when `--timeout` passed first: the apply goes on without the watcher.
pub const TIMED_OUT: u8 = 6;

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "exit codes: 0 completed, 2 failed, 3 cancelled, 4 reverted, 5 stopped, 6 still going when --timeout passed, 1 when applyd cannot follow the apply";

#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct WatchArgs {
    #[command(flatten)]
    pub db: super::applies::Db,
    /// The apply: a number or apply-<number>.
    pub id: String,
    /// How often to look, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop following after this many seconds (exit 6; the apply goes on). A paused apply or
    /// a deferred cutover waits for a person, so a job that cannot wait for one sets this.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

/// One line that says where the apply stands: state, tasks, the running task's engine words.
pub fn progress_line(a: &ApplyStatus) -> String {
    let running = a
        .tasks
        .iter()
        .filter(|t| !t.state.is_terminal())
        .find_map(|t| t.progress.as_ref())
        .map(|p| format!(" · {}", p.summary()))
        .unwrap_or_default();
    format!("{} {} {}{running}", a.identifier, a.state, a.progress())
}

/// Follows on a terminal: a bar per task, the apply's state and its explanation as the header.
struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    tasks: Vec<ProgressBar>,
}

impl Bars {
    fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let header = multi.add(ProgressBar::new_spinner());
        Bars {
            multi,
            header,
            tasks: Vec::new(),
        }
    }

    fn show(&mut self, a: &ApplyStatus) {
        let why = a
            .explanation
            .as_ref()
            .map(|e| e.person.clone().unwrap_or_else(|| e.claim.clone()))
            .unwrap_or_default();
        self.header
            .set_message(format!("{} {} — {why}", a.identifier, a.state));
        self.header.tick();
        let style = ProgressStyle::with_template("  {prefix:<28} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        while self.tasks.len() < a.tasks.len() {
            let bar = self.multi.add(ProgressBar::new(100));
            bar.set_style(style.clone());
            self.tasks.push(bar);
        }
        for (bar, t) in self.tasks.iter().zip(&a.tasks) {
            bar.set_prefix(t.table.clone().unwrap_or_default());
            let percent = match t.state {
                crate::machine::TaskState::Completed => 100,
                _ => t
                    .progress
                    .as_ref()
                    .and_then(|p| p.percent)
                    .map_or(0, |p| p.clamp(0.0, 100.0) as u64),
            };
            bar.set_position(percent);
            let words = t.progress.as_ref().map(|p| p.summary()).unwrap_or_default();
            bar.set_message(format!("{} {words}", t.state));
        }
    }

    fn finish(&self) {
        for bar in &self.tasks {
            bar.abandon();
        }
        self.header.abandon();
    }
}

/// Follow `id` until it is terminal, or until `timeout`; print how it ended (or where it
/// stands and what it waits for) and return its exit code.
pub async fn follow(
    store: &MySqlStore,
    id: u64,
    interval: Duration,
    timeout: Option<Duration>,
) -> Result<u8, String> {
    let started = std::time::Instant::now();
    let mut bars = std::io::stderr().is_terminal().then(Bars::new);
    let mut last_line = String::new();
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let a = match store.status(id).await {
            Ok(a) => a,
            // A database that is briefly unreachable does not end the wait: the apply goes on.
            Err(StoreError::Unavailable(e))
                if unreachable_since.is_none_or(|t| t.elapsed() < UNREACHABLE_FOR) =>
            {
                unreachable_since.get_or_insert_with(std::time::Instant::now);
                eprintln!("applyd: cannot read apply-{id} ({e}); trying again");
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        unreachable_since = None;
        let line = progress_line(&a);
        match &mut bars {
            Some(bars) => bars.show(&a),
            // Not a terminal: a line per change, so a log shows the way the apply went.
            None if line != last_line => println!("{line}"),
            None => {}
        }
        last_line = line;
        if a.state.is_terminal() {
            if let Some(bars) = &bars {
                bars.finish();
            }
            let code = exit_code(a.state);
            match &a.error {
                Some(e) if code != 0 => println!("{} ended {}: {e}", a.identifier, a.state),
                _ => println!("{} ended {}", a.identifier, a.state),
            }
            return Ok(code);
        }
        if let Some(limit) = timeout.filter(|t| started.elapsed() >= *t) {
            if let Some(bars) = &bars {
                bars.finish();
            }
            println!(
                "{} still {} after {} s; it goes on without this watch",
                a.identifier,
                a.state,
                limit.as_secs()
            );
            if let Some(why) = &a.explanation {
                for line in why.lines() {
                    println!("  {line}");
                }
            }
            return Ok(TIMED_OUT);
        }
        tokio::time::sleep(interval).await;
    }
}

pub fn watch(args: WatchArgs) -> ExitCode {
    let result = super::runtime().block_on(async {
        let id = super::applies::parse_id(&args.id)?;
        let store = args.db.open().await?;
        let interval = Duration::from_millis(args.interval_ms.max(50));
        follow(&store, id, interval, args.timeout.map(Duration::from_secs)).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("applyd watch: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_completed_apply_exits_zero_and_each_end_has_its_own_code() {
        let ends: Vec<_> = ApplyState::ALL
            .iter()
            .copied()
            .filter(|s| s.is_terminal())
            .collect();
        let codes: std::collections::BTreeSet<u8> = ends.iter().map(|s| exit_code(*s)).collect();
        assert_eq!(codes.len(), ends.len(), "{ends:?}");
        assert!(!codes.contains(&TIMED_OUT), "a timeout is no ending");
        assert!(EXIT_CODES.contains(&format!("{TIMED_OUT} still going")));
        for s in ends {
            assert_eq!(exit_code(s) == 0, s == ApplyState::Completed, "{s}");
            assert_ne!(exit_code(s), 1, "{s}: 1 is for applyd's own errors");
            assert!(EXIT_CODES.contains(&format!("{} {s}", exit_code(s))), "{s}");
        }
    }
}
