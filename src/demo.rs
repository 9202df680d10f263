//! `applyd demo`: the real runtime on the memory store with the in-process fake PlanetScale and
//! fake Spirit. Three operator "processes" share the work; the demo kills the one driving a
//! PlanetScale apply in its setup phase and the one hosting a Spirit copy, and shows the leases
//! going stale, the reclaim, the resume from persisted engine state, and every apply finishing
//! with exactly one deploy request each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::engine::fake::{FakeEngines, FakeTimings, SharedFakeEngines};
use crate::machine::claim::SETUP_PHASE;
use crate::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind, Params, Rules};
use crate::operator::{Runtime, RuntimeConfig};
use crate::store::memory::{Clock, MemoryStore, MonotonicClock};
use crate::store::{NewApply, Target};

/// The timings of the demo: leases go stale after 3 s so a run takes well under a minute.
pub fn demo_params() -> Params {
    Params {
        stale_after_ms: 3_000,
        presumed_loss_ms: 2_000,
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

struct Process {
    name: String,
    host: u32,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct DemoSummary {
    pub lines: Vec<String>,
    pub ok: bool,
}

fn runtime(
    name: &str,
    host: u32,
    store: Arc<MemoryStore>,
    fakes: &Arc<Mutex<FakeEngines>>,
    clock: Arc<dyn Clock>,
    rules: Rules,
) -> Arc<Runtime> {
    Arc::new(Runtime {
        store,
        engine: Arc::new(SharedFakeEngines {
            engines: fakes.clone(),
            clock,
            host,
        }),
        config: RuntimeConfig {
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
        wake: Arc::new(Notify::new()),
    })
}

/// Run the demo; `out` receives the progress view line by line.
pub async fn run(mut out: impl FnMut(&str)) -> DemoSummary {
    let started = Instant::now();
    let rules = Rules::new(demo_params());
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
    let store = Arc::new(MemoryStore::new(rules, clock.clone()).with_revert_window_ms(1_500));
    let fakes = Arc::new(Mutex::new(FakeEngines::new(demo_timings())));
    let (shutdown_tx, shutdown) = watch::channel(false);

    let submit = |db: &str, engine: EngineKind, options: ApplyOptions| {
        store
            .submit(NewApply {
                target: Target {
                    database: db.into(),
                    environment: "production".into(),
                },
                engine,
                ddl: vec![format!(
                    "ALTER TABLE {db}_events ADD COLUMN source VARCHAR(32) NOT NULL DEFAULT ''"
                )],
                options,
            })
            .expect("demo targets are distinct")
    };
    let shop = submit("shop", EngineKind::PlanetScale, ApplyOptions::default());
    let billing = submit("billing", EngineKind::PlanetScale, ApplyOptions::default());
    let users = submit("users", EngineKind::Spirit, ApplyOptions::default());
    let orders = submit(
        "orders",
        EngineKind::Spirit,
        ApplyOptions {
            defer_cutover: true,
            ..Default::default()
        },
    );
    out(&format!(
        "submitted apply-{shop} (planetscale shop), apply-{billing} (planetscale billing), apply-{users} (spirit users), apply-{orders} (spirit orders, deferred cutover)"
    ));
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
        let rt = runtime(&name, host, store.clone(), &fakes, clock.clone(), rules);
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
    let mut prev_rows: BTreeMap<u64, crate::store::memory::MemoryRow> = BTreeMap::new();
    let mut prev_checkpoints: BTreeMap<String, u64> = BTreeMap::new();
    let mut killed_setup = false;
    let mut killed_copy = false;
    let mut cutover_requested = false;
    let mut restarts: Vec<(Instant, ())> = Vec::new();
    let mut last_table = Instant::now() - Duration::from_secs(10);
    let deadline = started + Duration::from_secs(90);
    let all = [shop, billing, users, orders];
    let t = |at: Instant| format!("{:>5.1}s", at.duration_since(started).as_secs_f64());

    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let rows = store.rows();
        let by_id: BTreeMap<u64, _> = rows.iter().map(|r| (r.id, r.clone())).collect();
        let checkpoints: BTreeMap<String, u64> = fakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spirit
            .targets
            .iter()
            .map(|(k, t)| (k.clone(), t.checkpoint_rows))
            .collect();

        for e in store.audit().iter().skip(seen_audit) {
            let who = e.owner.clone().unwrap_or_else(|| "expiry".into());
            let line = if e.cause.starts_with("claim") && e.from != ApplyState::Pending {
                // What the previous owner had persisted, as seen just before the reclaim.
                let persisted = match prev_rows.get(&e.apply) {
                    Some(r) if r.engine == EngineKind::PlanetScale => {
                        let mut parts = Vec::new();
                        if r.resume.branch {
                            parts.push(format!(
                                "branch {}",
                                crate::engine::fake::branch_name(&r.spec.identifier)
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
                            .get(&r.spec.target.to_string())
                            .copied()
                            .unwrap_or(0)
                    ),
                    None => "unknown".into(),
                };
                format!(
                    "{}  ↻ apply-{} lease stale → reclaimed by {who} ({}), epoch {}, resumes in {} from {persisted}",
                    t(now), e.apply, e.cause, e.epoch, e.from
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
        seen_audit = store.audit().len();
        prev_rows = by_id.clone();
        prev_checkpoints = checkpoints.clone();

        let mut kill = |processes: &mut Vec<Process>, owner: &str, why: String| {
            let Some(p) = processes
                .iter_mut()
                .find(|p| owner.starts_with(&format!("{}/", p.name)))
            else {
                return;
            };
            if let Some(task) = p.task.take() {
                task.abort();
                fakes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .crash_host(clock.now_ms(), p.host);
                out(&format!(
                    "{}  ✖ killed {} (SIGKILL: no release, no more heartbeats) {why}",
                    t(now),
                    p.name
                ));
            }
        };
        if !killed_setup {
            if let Some(r) = by_id.get(&shop) {
                let dwelled = clock.now_ms().saturating_sub(r.state_entered_at) >= 600;
                if SETUP_PHASE.contains(&r.state) && r.resume.branch && dwelled {
                    if let Some(owner) = r.lease_owner.clone() {
                        kill(
                            &mut processes,
                            &owner,
                            format!("while apply-{shop} was in {}", r.state),
                        );
                        killed_setup = true;
                        restarts.push((now + Duration::from_millis(1_000), ()));
                    }
                }
            }
        }
        if !killed_copy {
            let copied = fakes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .spirit
                .targets
                .get("users/production")
                .map_or(0, |t| t.checkpoint_rows);
            if let Some(r) = by_id.get(&users) {
                if r.state == ApplyState::Running && copied >= 10_000 {
                    if let Some(owner) = r.lease_owner.clone() {
                        kill(
                            &mut processes,
                            &owner,
                            format!("while apply-{users} was copying ({copied} rows checkpointed)"),
                        );
                        killed_copy = true;
                        restarts.push((now + Duration::from_millis(1_000), ()));
                    }
                }
            }
        }
        while let Some(pos) = restarts.iter().position(|(at, _)| *at <= now) {
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
        {
            let _ = store.request(orders, ControlOp::Cutover);
            cutover_requested = true;
            out(&format!(
                "{}  ☞ user requests cutover of apply-{orders}",
                t(now)
            ));
        }

        if now.duration_since(last_table) >= Duration::from_secs(2) {
            last_table = now;
            let now_ms = clock.now_ms();
            out(&format!(
                "{}  {:<9} {:<12} {:<20} {:<26} {:<20} {:>5} {:>8}",
                t(now),
                "apply",
                "engine",
                "target",
                "state",
                "owner",
                "epoch",
                "hb age"
            ));
            for r in &rows {
                let hb = r.heartbeat_at.map_or("—".to_string(), |h| {
                    format!("{:.1}s", now_ms.saturating_sub(h) as f64 / 1000.0)
                });
                out(&format!(
                    "        apply-{:<3} {:<12} {:<20} {:<26} {:<20} {:>5} {:>8}",
                    r.id,
                    r.engine.as_str(),
                    r.spec.target.to_string(),
                    r.state.as_str(),
                    r.lease_owner.clone().unwrap_or_else(|| "—".into()),
                    r.lease_epoch,
                    hb
                ));
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

    let fakes = fakes.lock().unwrap_or_else(|e| e.into_inner());
    let mut lines = vec![format!(
        "summary after {:.1}s:",
        started.elapsed().as_secs_f64()
    )];
    let mut ok = true;
    for id in all {
        let r = store.row(id).expect("submitted above");
        let reclaims = store
            .audit()
            .iter()
            .filter(|e| {
                e.apply == id && e.cause.starts_with("claim") && e.from != ApplyState::Pending
            })
            .count();
        let engine_work = match r.engine {
            EngineKind::PlanetScale => {
                let n = fakes.planetscale.deploy_requests_of(id);
                ok &= n == 1;
                format!("{n} deploy request{}", if n == 1 { "" } else { "s" })
            }
            EngineKind::Spirit => {
                let starts = fakes
                    .spirit
                    .effects
                    .iter()
                    .filter(|e| {
                        e.apply == id
                            && e.call == crate::machine::EngineCall::StartRunner
                            && e.accepted
                    })
                    .count();
                format!("{starts} runner start(s), at most one alive at a time")
            }
        };
        ok &= r.state == ApplyState::Completed;
        lines.push(format!(
            "  apply-{id:<3} {:<12} {:<20} {:<10} epoch {:<2} reclaims {reclaims}  {engine_work}",
            r.engine.as_str(),
            r.spec.target.to_string(),
            r.state.as_str(),
            r.lease_epoch
        ));
    }
    lines.push(format!(
        "  killed: setup-phase driver {}, copying driver {}; stale writes landed: {}",
        if killed_setup { "yes" } else { "no" },
        if killed_copy { "yes" } else { "no" },
        store.stale_writes_landed()
    ));
    ok &= killed_setup && killed_copy && store.stale_writes_landed() == 0;
    lines.push(if ok {
        "result: every apply completed, each PlanetScale apply has exactly one deploy request"
            .into()
    } else {
        "result: FAILED (see above)".into()
    });
    DemoSummary { lines, ok }
}
