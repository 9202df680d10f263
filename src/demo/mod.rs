//! `applyd demo`: the real runtime with the in-process fake PlanetScale and fake Spirit, on the
//! memory store or (with `--database-url`) on MySQL. Three operator "processes" share the work;
//! the demo kills the one driving a PlanetScale apply in its setup phase and the one hosting a
//! Spirit copy, and shows the leases going stale, the reclaim, the resume from persisted engine
//! state, and every apply finishing with exactly one deploy request each. Alongside, a rolling
//! rollout runs one Spirit change across three deployments; the demo kills the process copying
//! one of its operations, and the rollout still finishes deployment by deployment (its engines,
//! fakes and progress lines: `rollout`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use crate::machine::apply::{ApplyId, OperationId};
use crate::machine::claim::SETUP_PHASE;
use crate::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use crate::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind, Params, Rules};
use crate::operator::{Runtime, RuntimeConfig};
use crate::store::audit::{self, AuditFact};
use crate::store::memory::{Clock, MemoryStore, MonotonicClock};
use crate::store::mysql::MySqlStore;
use crate::store::status::{ApplyStatus, Inspect};
use crate::store::{NewApply, Store, StoreError, Target};

mod rollout;

use rollout::{rollout_event, spirit_checkpoints, DemoEngines, ROLLOUT_KILL_AT_ROWS};
pub use rollout::{rollout_timings, RolloutOutcome, ROLLOUT_DEPLOYMENTS};

/// The timings of the demo: leases go stale after 3 s so a run takes well under a minute.
pub fn demo_params() -> Params {
    Params {
        stale_after_ms: 3_000,
        presumed_loss_ms: 2_000,
        revert_window_ms: DEMO_REVERT_WINDOW_MS,
        ..Params::DEFAULT
    }
}

pub fn demo_timings() -> FakeTimings {
    FakeTimings {
        branch_ready_ms: 1_200,
        validate_ms: 1_000,
        deploy_ms: 3_000,
        cutover_ms: 800,
        revert_ms: 2_000,
        server_revert_window_ms: 60_000,
        spirit_rows: 40_000,
        spirit_rows_per_s: 5_000,
        spirit_checkpoint_every_ms: 1_000,
    }
}

/// Where the demo keeps its applies.
pub enum DemoStore {
    Memory,
    /// A MySQL/MariaDB database; the demo migrates it and adds its applies there.
    MySql {
        url: String,
    },
}

/// One audit entry, whichever store wrote it.
struct Log {
    apply: ApplyId,
    /// The rollout operation that moved, when the store's log says (the memory store's does).
    operation: Option<OperationId>,
    from: ApplyState,
    to: ApplyState,
    epoch: u64,
    owner: Option<String>,
    cause: String,
}

enum Backend {
    Memory(Arc<MemoryStore>),
    MySql(Arc<MySqlStore>),
}

fn bad(apply: ApplyId, column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::BadRow {
        apply,
        column,
        detail: detail.to_string(),
    }
}

impl Backend {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Memory(s) => s.clone(),
            Backend::MySql(s) => s.clone(),
        }
    }

    /// The demo's own applies, by id, as the status page reads them.
    async fn rows(&self, ids: &[ApplyId]) -> Result<BTreeMap<ApplyId, ApplyStatus>, StoreError> {
        let inspect: &dyn Inspect = match self {
            Backend::Memory(s) => s.as_ref(),
            Backend::MySql(s) => s.as_ref(),
        };
        let mut rows = BTreeMap::new();
        for id in ids {
            rows.insert(*id, inspect.status(*id).await?);
        }
        Ok(rows)
    }

    /// The audit entries of the demo's applies, oldest first.
    async fn logs(&self, ids: &[ApplyId]) -> Result<Vec<Log>, StoreError> {
        match self {
            Backend::Memory(store) => Ok(store
                .audit()
                .into_iter()
                .filter(|e| ids.contains(&e.apply))
                .map(|e| Log {
                    apply: e.apply,
                    operation: e.operation,
                    from: e.from,
                    to: e.to,
                    epoch: e.epoch,
                    owner: e.owner,
                    cause: e.cause,
                })
                .collect()),
            Backend::MySql(store) => store
                .stored_logs_from(ids.iter().copied().min().unwrap_or(0))
                .await?
                .into_iter()
                .filter(|e| ids.contains(&e.apply))
                .map(|e| {
                    Ok(Log {
                        apply: e.apply,
                        operation: e.operation,
                        from: e.from.parse().map_err(|x| bad(e.apply, "from_state", x))?,
                        to: e.to.parse().map_err(|x| bad(e.apply, "to_state", x))?,
                        epoch: e.epoch,
                        owner: e.owner,
                        cause: e.cause,
                    })
                })
                .collect(),
        }
    }
}

struct Process {
    name: String,
    host: u32,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct DemoSummary {
    pub lines: Vec<String>,
    pub ok: bool,
    /// How the rollout ended; `None` when it did not run (a store without rollouts).
    pub rollout: Option<RolloutOutcome>,
}

fn runtime(
    name: &str,
    host: u32,
    store: Arc<dyn Store>,
    fakes: [&Arc<Mutex<FakeEngines>>; 2],
    clock: Arc<dyn Clock>,
    rules: Rules,
) -> Arc<Runtime> {
    let shared = |engines: &Arc<Mutex<FakeEngines>>| SharedFakeEngines {
        engines: engines.clone(),
        clock: clock.clone(),
        host,
    };
    Arc::new(Runtime::new(
        store,
        Arc::new(DemoEngines {
            main: shared(fakes[0]),
            rollout: shared(fakes[1]),
        }),
        RuntimeConfig {
            owner_prefix: name.to_string(),
            drivers: 2,
            poll_interval: Duration::from_millis(200),
            backoff: Duration::from_millis(400),
            heartbeat_interval: Duration::from_millis(500),
            shutdown_deadline: Duration::from_secs(2),
            max_commands_per_drive: 1_000_000,
            rules,
            claim_path: Default::default(),
        },
    ))
}

/// The revert window of the demo's PlanetScale applies (short, so the demo ends soon).
const DEMO_REVERT_WINDOW_MS: u64 = 1_500;

/// Run the demo on the memory store; `out` receives the progress view line by line.
pub async fn run(out: impl FnMut(&str)) -> DemoSummary {
    match run_on(DemoStore::Memory, out).await {
        Ok(summary) => summary,
        Err(e) => DemoSummary {
            lines: vec![format!("result: FAILED ({e})")],
            ok: false,
            rollout: None,
        },
    }
}

/// Run the demo on the given store. An error is returned only when the store cannot be reached
/// or set up; a failed run is reported in the summary.
pub async fn run_on(where_: DemoStore, mut out: impl FnMut(&str)) -> Result<DemoSummary, String> {
    let started = Instant::now();
    let rules = Rules::new(demo_params());
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let (backend, environment) = match where_ {
        DemoStore::Memory => (
            Backend::Memory(Arc::new(MemoryStore::new(rules, clock.clone()))),
            "production".to_string(),
        ),
        DemoStore::MySql { url } => {
            let store = MySqlStore::connect(&url, rules)
                .await
                .map_err(|e| format!("cannot use the database at --database-url: {e}"))?;
            store
                .migrate()
                .await
                .map_err(|e| format!("cannot migrate the demo database: {e}"))?;
            // A run of its own: earlier runs' applies (even one interrupted half-way) never
            // hold this run's targets.
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (Backend::MySql(Arc::new(store)), format!("demo-{run}"))
        }
    };
    let store = backend.store();
    let fakes = Arc::new(Mutex::new(FakeEngines::new(demo_timings())));
    let rollout_fakes = Arc::new(Mutex::new(FakeEngines::new(rollout_timings())));
    let (shutdown_tx, shutdown) = watch::channel(false);

    let new_apply = |db: &str, engine: EngineKind, options: ApplyOptions| NewApply {
        allow_destructive: false,
        rollout: None,
        target: Target {
            database: db.into(),
            environment: environment.clone(),
        },
        engine,
        ddl: vec![format!(
            "ALTER TABLE {db}_events ADD COLUMN source VARCHAR(32) NOT NULL DEFAULT ''"
        )],
        options,
    };
    let submit = |db: &'static str, engine: EngineKind, options: ApplyOptions| {
        let store = store.clone();
        let new = new_apply(db, engine, options);
        async move {
            store
                .submit(new)
                .await
                .map_err(|e| format!("cannot submit the demo apply on {db}: {e}"))
        }
    };

    let shop = submit("shop", EngineKind::PlanetScale, ApplyOptions::default()).await?;
    let billing = submit("billing", EngineKind::PlanetScale, ApplyOptions::default()).await?;
    let users = submit("users", EngineKind::Spirit, ApplyOptions::default()).await?;
    let orders = submit(
        "orders",
        EngineKind::Spirit,
        ApplyOptions {
            defer_cutover: true,
            ..Default::default()
        },
    )
    .await?;
    let singles = [shop, billing, users, orders];
    let users_target = format!("users/{environment}");
    out(&format!(
        "submitted apply-{shop} (planetscale shop), apply-{billing} (planetscale billing), apply-{users} (spirit users), apply-{orders} (spirit orders, deferred cutover)"
    ));
    let rollout = {
        let mut new = new_apply("catalog", EngineKind::Spirit, ApplyOptions::default());
        new.rollout = Some(RolloutPlan {
            deployments: ROLLOUT_DEPLOYMENTS.map(String::from).to_vec(),
            cutover_policy: CutoverPolicy::Rolling,
            on_failure: OnFailure::Halt,
            max_drivers_per_apply: 1,
            table_steps: false,
        });
        match store.submit(new).await {
            Ok(id) => {
                out(&format!(
                    "submitted apply-{id} (spirit catalog, a rolling rollout: {})",
                    ROLLOUT_DEPLOYMENTS.join(" → ")
                ));
                Some(id)
            }
            Err(e) => return Err(format!("cannot submit the demo rollout on catalog: {e}")),
        }
    };
    let all: Vec<ApplyId> = singles.iter().copied().chain(rollout).collect();
    out(&format!(
        "leases go stale after {} ms without a heartbeat; a driver presumes its lease lost after {} ms",
        rules.params.stale_after_ms, rules.params.presumed_loss_ms
    ));

    let mut processes: Vec<Process> = Vec::new();
    let mut next_host = 1u32;
    let mut spawn = |processes: &mut Vec<Process>| {
        let host = next_host;
        next_host += 1;
        let name = format!("demo-p{host}");
        let rt = runtime(
            &name,
            host,
            store.clone(),
            [&fakes, &rollout_fakes],
            clock.clone(),
            rules,
        );
        let task = tokio::spawn(rt.run(shutdown.clone()));
        processes.push(Process {
            name,
            host,
            task: Some(task),
        });
    };
    spawn(&mut processes);
    tokio::time::sleep(Duration::from_millis(150)).await;
    spawn(&mut processes);
    spawn(&mut processes);

    let mut seen_audit = 0usize;
    let mut prev_rows: BTreeMap<ApplyId, ApplyStatus> = BTreeMap::new();
    let mut prev_checkpoints: BTreeMap<String, u64> = BTreeMap::new();
    let mut killed_setup = false;
    let mut killed_copy = false;
    let mut killed_rollout = false;
    // The rollout's deployments in the order their operations were seen completed.
    let mut completed: Vec<String> = Vec::new();
    let mut prev_rollout_checkpoints: BTreeMap<String, u64> = BTreeMap::new();
    let mut cutover_requested = false;
    let mut restarts: Vec<Instant> = Vec::new();
    let mut last_table = Instant::now() - Duration::from_secs(10);
    let mut store_errors = 0u32;
    let deadline = started + Duration::from_secs(90);
    let t = |at: Instant| format!("{:>5.1}s", at.duration_since(started).as_secs_f64());

    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let (by_id, logs) = match (backend.rows(&all).await, backend.logs(&all).await) {
            (Ok(rows), Ok(logs)) => (rows, logs),
            (Err(e), _) | (_, Err(e)) => {
                // A store hiccup only delays the view; the operators ride it out themselves.
                store_errors += 1;
                if store_errors % 20 == 1 {
                    out(&format!("{}  ! cannot read the store: {e}", t(now)));
                }
                if now >= deadline {
                    break;
                }
                continue;
            }
        };
        let checkpoints = spirit_checkpoints(&fakes);
        let rollout_checkpoints = spirit_checkpoints(&rollout_fakes);
        let rollout_now = rollout.and_then(|id| by_id.get(&id));

        for e in logs.iter().skip(seen_audit) {
            let who = e.owner.clone().unwrap_or_else(|| "expiry".into());
            let woke = prev_rows
                .get(&e.apply)
                .is_some_and(|r| r.lease_owner.is_none() && r.parked_wake_in_ms.is_some());
            let line = if let Some(r) = rollout_now.filter(|r| r.id == e.apply) {
                format!(
                    "{}  {}",
                    t(now),
                    rollout_event(e, r, &prev_rollout_checkpoints)
                )
            } else if e.cause.starts_with("claim") && woke {
                format!(
                    "{}  ⏰ apply-{} woke in {} → taken by {who} ({}), epoch {}",
                    t(now),
                    e.apply,
                    e.from,
                    e.cause,
                    e.epoch
                )
            } else if e.cause.starts_with("claim") && e.from != ApplyState::Pending {
                // What the previous owner had persisted, as seen just before the reclaim.
                let persisted = match prev_rows.get(&e.apply) {
                    Some(r) if r.engine == EngineKind::PlanetScale => {
                        let mut parts = Vec::new();
                        if r.resume.branch {
                            parts.push(format!(
                                "branch {}",
                                crate::engine::fake::branch_name(&r.identifier)
                            ));
                        }
                        if let Some(dr) = r.resume.deploy_request_id {
                            parts.push(format!("deploy request #{dr}"));
                        } else if r.resume.deploy_request_intent {
                            parts.push("deploy-request intent (look up before creating)".into());
                        }
                        if parts.is_empty() {
                            "nothing yet".into()
                        } else {
                            parts.join(", ")
                        }
                    }
                    Some(r) => format!(
                        "the spirit checkpoint in the target ({} rows)",
                        prev_checkpoints
                            .get(&r.target.to_string())
                            .copied()
                            .unwrap_or(0)
                    ),
                    None => "unknown".into(),
                };
                format!(
                    "{}  ↻ apply-{} lease stale → reclaimed by {who} ({}), epoch {}, resumes in {} from {persisted}",
                    t(now), e.apply, e.cause, e.epoch, e.from
                )
            } else if let Some(wake) = e.cause.strip_prefix("park for ") {
                format!(
                    "{}  ⏸ apply-{} parked in {} by {who}: no driver held, wakes in {wake} unless a request comes first",
                    t(now),
                    e.apply,
                    e.to
                )
            } else if e.cause.starts_with("claim") {
                format!(
                    "{}  ▶ apply-{} claimed by {who}, epoch {}",
                    t(now),
                    e.apply,
                    e.epoch
                )
            } else {
                format!(
                    "{}    apply-{}: {} → {} (epoch {}, {who})",
                    t(now),
                    e.apply,
                    e.from,
                    e.to,
                    e.epoch
                )
            };
            out(&line);
        }
        seen_audit = logs.len();
        prev_rows = by_id.clone();
        prev_checkpoints = checkpoints.clone();
        prev_rollout_checkpoints = rollout_checkpoints.clone();
        if let Some(r) = rollout_now {
            for o in &r.operations {
                if o.state == ApplyState::Completed && !completed.contains(&o.deployment) {
                    completed.push(o.deployment.clone());
                }
            }
        }

        let mut kill = |processes: &mut Vec<Process>, owner: &str, why: String| {
            let Some(p) = processes
                .iter_mut()
                .find(|p| owner.starts_with(&format!("{}/", p.name)))
            else {
                return false;
            };
            let Some(task) = p.task.take() else {
                return false;
            };
            task.abort();
            for f in [&fakes, &rollout_fakes] {
                f.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .crash_host(clock.now_ms(), p.host);
            }
            out(&format!(
                "{}  ✖ killed {} (SIGKILL: no release, no more heartbeats) {why}",
                t(now),
                p.name
            ));
            true
        };
        if !killed_setup {
            if let Some(r) = by_id.get(&shop) {
                let dwelled = r.state_age_ms >= 600;
                if SETUP_PHASE.contains(&r.state) && r.resume.branch && dwelled {
                    if let Some(owner) = r.lease_owner.clone() {
                        kill(
                            &mut processes,
                            &owner,
                            format!("while apply-{shop} was in {}", r.state),
                        );
                        killed_setup = true;
                        restarts.push(now + Duration::from_millis(1_000));
                    }
                }
            }
        }
        if !killed_copy {
            let copied = checkpoints.get(&users_target).copied().unwrap_or(0);
            if let Some(r) = by_id.get(&users) {
                if r.state == ApplyState::Running && copied >= 10_000 {
                    if let Some(owner) = r.lease_owner.clone() {
                        kill(
                            &mut processes,
                            &owner,
                            format!("while apply-{users} was copying ({copied} rows checkpointed)"),
                        );
                        killed_copy = true;
                        restarts.push(now + Duration::from_millis(1_000));
                    }
                }
            }
        }
        // A later operation of the rollout, half-way through its copy: its process dies, and the
        // rollout must not move on before a peer has reclaimed and finished it.
        if !killed_rollout {
            let copying = rollout_now.and_then(|r| {
                r.operations.iter().enumerate().skip(1).find_map(|(i, o)| {
                    let rows = rollout_checkpoints
                        .get(&format!("{}@{}", r.target, o.deployment))
                        .copied()
                        .unwrap_or(0);
                    let owner = o.lease_owner.clone()?;
                    (o.state == ApplyState::Running && rows >= ROLLOUT_KILL_AT_ROWS).then(|| {
                        let why = format!(
                            "while apply-{} #{} {} was copying ({rows} rows checkpointed)",
                            r.id,
                            i + 1,
                            o.deployment
                        );
                        (owner, why)
                    })
                })
            });
            if let Some((owner, why)) = copying {
                if kill(&mut processes, &owner, why) {
                    killed_rollout = true;
                    restarts.push(now + Duration::from_millis(1_000));
                }
            }
        }
        while let Some(pos) = restarts.iter().position(|at| *at <= now) {
            restarts.remove(pos);
            spawn(&mut processes);
            out(&format!(
                "{}  + started {} (a restarted process, new lease owner)",
                t(now),
                processes.last().map_or("", |p| p.name.as_str())
            ));
        }
        if !cutover_requested
            && by_id
                .get(&orders)
                .is_some_and(|r| r.state == ApplyState::WaitingForCutover)
            && store.request(orders, ControlOp::Cutover).await.is_ok()
        {
            cutover_requested = true;
            out(&format!(
                "{}  ☞ user requests cutover of apply-{orders}",
                t(now)
            ));
        }

        if now.duration_since(last_table) >= Duration::from_secs(2) {
            last_table = now;
            out(&format!(
                "{}  {:<9} {:<12} {:<24} {:<26} {:<20} {:>5} {:>8}",
                t(now),
                "apply",
                "engine",
                "target",
                "state",
                "owner",
                "epoch",
                "hb age"
            ));
            for r in by_id.values() {
                let hb = r
                    .heartbeat_age_ms
                    .map_or("—".to_string(), |h| format!("{:.1}s", h as f64 / 1000.0));
                out(&format!(
                    "        apply-{:<3} {:<12} {:<24} {:<26} {:<20} {:>5} {:>8}",
                    r.id,
                    r.engine.as_str(),
                    r.target.to_string(),
                    r.state.as_str(),
                    r.lease_owner.clone().unwrap_or_else(|| "—".into()),
                    r.lease_epoch,
                    hb
                ));
                // What `applyd status` prints under a rollout's line.
                for line in crate::report::rollout_lines(r) {
                    out(&format!("          {line}"));
                }
            }
        }

        let done = all
            .iter()
            .all(|id| by_id.get(id).is_some_and(|r| r.state.is_terminal()));
        if done || now >= deadline {
            break;
        }
    }
    let _ = shutdown_tx.send(true);
    for p in &mut processes {
        if let Some(task) = p.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    let rows = backend
        .rows(&all)
        .await
        .map_err(|e| format!("cannot read the final rows: {e}"))?;
    let logs = backend
        .logs(&all)
        .await
        .map_err(|e| format!("cannot read the audit log: {e}"))?;
    // Each operation of a rollout holds its own lease: its writes are checked against its own
    // claims.
    let fencing = audit::summarise(logs.iter().map(|l| AuditFact {
        apply: l.apply,
        operation: l.operation,
        cause: l.cause.as_str(),
        epoch: l.epoch,
    }));
    let stale_writes = fencing.stale_writes.len() + fencing.non_increasing_claims.len();
    let fakes = fakes.lock().unwrap_or_else(|e| e.into_inner());
    let rollout_fakes = rollout_fakes.lock().unwrap_or_else(|e| e.into_inner());
    let mut lines = vec![format!(
        "summary after {:.1}s:",
        started.elapsed().as_secs_f64()
    )];
    let mut ok = true;
    for &id in &all {
        let Some(r) = rows.get(&id) else {
            lines.push(format!("  apply-{id} is gone from the store"));
            ok = false;
            continue;
        };
        let reclaims = logs
            .iter()
            .filter(|e| {
                e.apply == id && e.cause.starts_with("claim") && e.from != ApplyState::Pending
            })
            .count();
        // The engines key each change by its operation row.
        let ops: Vec<u64> = r.operations.iter().map(|o| o.id).collect();
        let fakes = if Some(id) == rollout {
            &rollout_fakes
        } else {
            &fakes
        };
        let mut engine_work = match r.engine {
            EngineKind::PlanetScale => {
                let n: usize = ops
                    .iter()
                    .map(|op| fakes.planetscale.deploy_requests_of(*op))
                    .sum();
                ok &= n == 1;
                format!("{n} deploy request{}", if n == 1 { "" } else { "s" })
            }
            EngineKind::Spirit => {
                let starts = fakes
                    .spirit
                    .effects
                    .iter()
                    .filter(|e| {
                        ops.contains(&e.operation)
                            && e.call == crate::machine::EngineCall::StartRunner
                            && e.accepted
                    })
                    .count();
                format!("{starts} runner start(s), at most one alive at a time")
            }
        };
        ok &= r.state == ApplyState::Completed;
        if Some(id) == rollout {
            let all_completed = r
                .operations
                .iter()
                .all(|o| o.state == ApplyState::Completed);
            ok &= all_completed && completed == ROLLOUT_DEPLOYMENTS;
            engine_work.push_str(&format!("; completed {}", completed.join(" → ")));
        }
        lines.push(format!(
            "  apply-{id:<3} {:<12} {:<24} {:<10} epoch {:<2} reclaims {reclaims}  {engine_work}",
            r.engine.as_str(),
            r.target.to_string(),
            r.state.as_str(),
            r.lease_epoch
        ));
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    lines.push(format!(
        "  killed: setup-phase driver {}, copying driver {}{}; stale writes landed: {stale_writes}",
        yes_no(killed_setup),
        yes_no(killed_copy),
        match rollout {
            Some(_) => format!(", rollout driver {}", yes_no(killed_rollout)),
            None => String::new(),
        },
    ));
    ok &= killed_setup && killed_copy && stale_writes == 0;
    ok &= rollout.is_none() || killed_rollout;
    lines.push(match (ok, rollout) {
        (true, Some(_)) => "result: every apply completed, each PlanetScale apply has exactly one deploy request, the rollout completed deployment by deployment".into(),
        (true, None) => "result: every apply completed, each PlanetScale apply has exactly one deploy request".into(),
        (false, _) => "result: FAILED (see above)".into(),
    });
    let rollout = rollout
        .and_then(|id| rows.get(&id))
        .map(|r| RolloutOutcome {
            parent: r.state,
            completed,
            killed: killed_rollout,
        });
    Ok(DemoSummary { lines, ok, rollout })
}
