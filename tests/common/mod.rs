//! A tiny synchronous harness: workers that claim and drive applies on the memory store and the
//! fake engines, on a manual clock. The simulator is the full version of this.
#![allow(dead_code)]

use std::sync::Arc;

use applyd::engine::fake::{FakeEngines, FakeTimings};
use applyd::machine::{ApplyState, EngineKind, Params, Rules};
use applyd::store::memory::{ManualClock, MemoryStore};
use applyd::store::ClaimPath;
use applyd::store::{NewApply, Target};
use applyd::testkit::{Beat, Driver, Stepped};
use applyd::worker::WaitFor;

pub const STALE_MS: u64 = 10_000;

pub fn rules() -> Rules {
    Rules::new(Params {
        stale_after_ms: STALE_MS,
        presumed_loss_ms: 7_000,
        revert_window_ms: 60_000,
        ..Params::DEFAULT
    })
}

pub struct World {
    pub clock: Arc<ManualClock>,
    pub store: MemoryStore,
    pub engines: FakeEngines,
    pub workers: Vec<Driver>,
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
            workers: (0..workers).map(Driver::new).collect(),
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
                allow_destructive: false,
                rollout: None,
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
        let Some(lease) = worker.lease().cloned() else {
            // The production claim path, as the operator's poller claims.
            let claimed = worker
                .claim(
                    &self.store,
                    ClaimPath::Operation,
                    &format!("w{w}"),
                    &self.rules,
                    now,
                )
                .unwrap()?;
            self.trace.push(format!(
                "{now} w{w} claims {} via {} epoch {}",
                claimed.lease.apply,
                claimed.arm.code(),
                claimed.lease.epoch
            ));
            return None;
        };
        if worker.heartbeat(&self.store, now) == Some(Beat::LeaseGone) {
            self.trace
                .push(format!("{now} w{w} apply {} lease gone", lease.apply));
            return None;
        }
        let done = worker.step(&self.store, &mut self.engines, now, &self.rules)?;
        self.trace.push(format!(
            "{now} w{w} apply {} {:?}",
            done.apply, done.stepped
        ));
        Some(done.stepped)
    }

    pub fn crash(&mut self, w: usize) {
        let now = self.now();
        self.workers[w].abandon();
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
