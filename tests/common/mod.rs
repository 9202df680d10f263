//! A tiny synchronous harness: workers that claim and drive applies on the memory store and the
//! fake engines, on a manual clock. The simulator is the full version of this.
#![allow(dead_code)]

use std::sync::Arc;

use applyd::engine::fake::{FakeEngines, FakeTimings};
use applyd::machine::{ApplyState, EngineKind, Params, Rules};
use applyd::store::memory::{ManualClock, MemoryStore};
use applyd::store::ClaimPath;
use applyd::store::{Lease, NewApply, Target};
use applyd::testkit::{claim, step, Stepped};
use applyd::worker::{Drive, WaitFor};

pub const STALE_MS: u64 = 10_000;

pub fn rules() -> Rules {
    Rules::new(Params {
        stale_after_ms: STALE_MS,
        presumed_loss_ms: 7_000,
        revert_window_ms: 60_000,
        ..Params::DEFAULT
    })
}

pub struct Worker {
    pub host: u32,
    pub owned: Option<(Drive, Lease)>,
    pub last_heartbeat_ok: u64,
}

pub struct World {
    pub clock: Arc<ManualClock>,
    pub store: MemoryStore,
    pub engines: FakeEngines,
    pub workers: Vec<Worker>,
    pub rules: Rules,
    pub trace: Vec<String>,
}

impl World {
    pub fn new(workers: u32) -> World {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let rules = rules();
        World {
            store: MemoryStore::new(rules, clock.clone()),
            clock,
            engines: FakeEngines::new(FakeTimings {
                spirit_rows: 20_000,
                ..FakeTimings::default()
            }),
            workers: (0..workers)
                .map(|host| Worker {
                    host,
                    owned: None,
                    last_heartbeat_ok: 0,
                })
                .collect(),
            rules,
            trace: Vec::new(),
        }
    }

    pub fn now(&self) -> u64 {
        use applyd::store::memory::Clock;
        self.clock.now_ms()
    }

    pub fn submit(
        &self,
        db: &str,
        engine: EngineKind,
        options: applyd::machine::ApplyOptions,
    ) -> u64 {
        self.store
            .submit(NewApply {
                target: Target {
                    database: db.into(),
                    environment: "prod".into(),
                },
                engine,
                ddl: vec!["ALTER TABLE users ADD COLUMN nickname VARCHAR(64)".into()],
                options,
            })
            .unwrap()
    }

    /// One step of one worker: claim if idle, else heartbeat and run the drive's next command.
    pub fn tick_worker(&mut self, w: usize) -> Option<Stepped> {
        let now = self.now();
        let worker = &mut self.workers[w];
        match worker.owned.as_mut() {
            None => {
                // The production claim path, as the operator's poller claims.
                let (claimed, drive) = claim(
                    &self.store,
                    ClaimPath::Operation,
                    &format!("w{w}"),
                    &self.rules,
                )
                .unwrap()?;
                self.trace.push(format!(
                    "{now} w{w} claims {} via {} epoch {}",
                    claimed.lease.apply,
                    claimed.arm.code(),
                    claimed.lease.epoch
                ));
                worker.owned = Some((drive, claimed.lease));
                worker.last_heartbeat_ok = now;
                None
            }
            Some((drive, lease)) => {
                if self.store.heartbeat(lease).is_ok() {
                    worker.last_heartbeat_ok = now;
                }
                let age = now - worker.last_heartbeat_ok;
                let stepped = step(
                    &self.store,
                    &mut self.engines,
                    worker.host,
                    drive,
                    lease,
                    now,
                    age,
                    &self.rules,
                );
                self.trace
                    .push(format!("{now} w{w} apply {} {stepped:?}", lease.apply));
                if matches!(stepped, Stepped::Finished(_)) {
                    worker.owned = None;
                }
                Some(stepped)
            }
        }
    }

    pub fn crash(&mut self, w: usize) {
        let now = self.now();
        self.workers[w].owned = None;
        self.engines.crash_host(now, self.workers[w].host);
        self.trace.push(format!("{now} w{w} crashes"));
    }

    pub fn state(&self, id: u64) -> ApplyState {
        self.store.row(id).unwrap().state
    }

    /// Round-robin all workers until `done` holds, advancing time on waits. Panics past `max`.
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&World) -> bool) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            let mut waited = true;
            for w in 0..self.workers.len() {
                match self.tick_worker(w) {
                    Some(Stepped::Waited(WaitFor::Poll | WaitFor::Backoff)) | None => {}
                    Some(_) => waited = false,
                }
            }
            if waited {
                self.clock.advance(1_000);
            }
        }
        panic!(
            "not done after {max_steps} steps; trace tail:\n{}",
            self.trace[self.trace.len().saturating_sub(40)..].join("\n")
        );
    }

    pub fn settled(&self, id: u64) -> bool {
        let row = self.store.row(id).unwrap();
        applyd::machine::table::is_settled(row.state, &row.options)
    }
}
