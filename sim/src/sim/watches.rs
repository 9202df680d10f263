//! Watched waits, as the operator's watcher holds them (`operator/watched.rs`): a Spirit
//! runner waiting on its sentinel for a person keeps its lease, renewed by the process's
//! heartbeat, but holds no driver. Each tick renews every watched lease, ends the watches whose
//! lease is lost or presumed lost (and their runners with them, `Engine::abandon`), and hands a
//! watch back to the driver when a request arrives or the runner leaves its gate; an idle
//! driver's poll looks at its watches before claiming new work.

use applyd::machine::Probe;
use applyd::worker::{Observation, RunnerStatus};

use super::*;

impl Sim {
    /// A drive confirmed a watched wait and gave its driver back.
    pub(super) fn watch(&mut self, w: u8, wait: WatchedWait) {
        let id = wait.lease.apply;
        self.workers[w as usize].watches.insert(id, wait);
        self.watches_started += 1;
        self.arm_watcher(w, false);
    }

    /// Start the watcher's timer if the process watches anything and it is not running.
    pub(super) fn arm_watcher(&mut self, w: u8, soon: bool) {
        let wk = &mut self.workers[w as usize];
        if wk.watch_timer || wk.watches.is_empty() || !wk.up || wk.paused {
            return;
        }
        wk.watch_timer = true;
        let gen = wk.watch_gen;
        let at = if soon {
            self.jitter(0, 100)
        } else {
            self.now + self.preset.heartbeat_ms
        };
        self.at(at, Ev::Watch(w, gen));
    }

    /// One tick of the watcher: heartbeat, watchdog, then a look if the driver is idle.
    pub(super) fn watch_tick(&mut self, w: u8) {
        let now = self.now;
        self.workers[w as usize].watch_timer = false;
        let ids: Vec<ApplyId> = self.workers[w as usize].watches.keys().copied().collect();
        let stalled = now < self.workers[w as usize].hb_stall_until;
        for id in &ids {
            let lease = self.workers[w as usize].watches[id].lease.clone();
            let beat = if stalled {
                Err(StoreError::Unavailable("heartbeat stalled".into()))
            } else {
                self.store.heartbeat(&lease)
            };
            match beat {
                Ok(()) => {
                    if let Some(x) = self.workers[w as usize].watches.get_mut(id) {
                        x.last_heartbeat_ok = now;
                    }
                }
                Err(StoreError::LeaseLost { .. } | StoreError::RowGone(_)) => {
                    self.record_id(Some(w), Some(*id), Action::HeartbeatLeaseLost);
                    self.end_watch(w, *id);
                }
                Err(_) => self.record_id(Some(w), Some(*id), Action::HeartbeatFailed),
            }
        }
        // The watchdog: past the presumed-loss bound the runner ends before a peer may reclaim.
        let presumed: Vec<ApplyId> = self.workers[w as usize]
            .watches
            .values()
            .filter(|x| {
                self.rules
                    .presumed_lost(now.saturating_sub(x.last_heartbeat_ok))
            })
            .map(|x| x.lease.apply)
            .collect();
        for id in presumed {
            self.end_watch(w, id);
        }
        if self.workers[w as usize].driver.lease().is_none() {
            self.hand_back_watched(w);
        }
        self.arm_watcher(w, false);
        self.check();
    }

    /// End a watch without a word to the store: the local runner is abandoned (epoch-fenced).
    fn end_watch(&mut self, w: u8, id: ApplyId) {
        let Some(x) = self.workers[w as usize].watches.remove(&id) else {
            return;
        };
        let host = self.workers[w as usize].driver.host;
        self.engines
            .spirit
            .abandon(self.now, host, id, x.lease.epoch);
        self.record_id(Some(w), Some(id), Action::WatchEnded);
    }

    /// The look of an idle driver's poll: one read for pending requests and a local look at
    /// each runner. The first watch with a request, or whose runner left its gate, goes back to
    /// the driver; true if one did.
    pub(super) fn hand_back_watched(&mut self, w: u8) -> bool {
        let ids: Vec<ApplyId> = self.workers[w as usize].watches.keys().copied().collect();
        if ids.is_empty() {
            return false;
        }
        // A failed read looks again at the next poll; the runners are still looked at.
        let asked = self.store.pending_requests(&ids).unwrap_or_default();
        let now = self.now;
        let mut back = None;
        for id in ids {
            let epoch = self.workers[w as usize].watches[&id].lease.epoch;
            let record = self
                .store
                .with_row(id, |row| row.operation_at(epoch).map(|k| row.record_of(k)))
                .flatten();
            let at_gate = record.is_some_and(|record| {
                self.engines.spirit.probe(now, &record, Probe::RunnerStatus)
                    == Observation::Runner(RunnerStatus::WaitingOnSentinel)
            });
            if asked.contains(&id) || !at_gate {
                back = Some(id);
                break;
            }
        }
        let Some(id) = back else {
            return false;
        };
        let wk = &mut self.workers[w as usize];
        let wait = wk.watches.remove(&id).expect("listed above");
        wk.driver.resume_watched(wait, &self.rules);
        wk.gen += 1;
        let gen = wk.gen;
        let at = self.jitter(1, 15);
        self.at(at, Ev::Step(w, gen));
        let at = self.now + self.preset.heartbeat_ms;
        self.at(at, Ev::Heartbeat(w, gen));
        self.record_id(Some(w), Some(id), Action::WatchHandedBack);
        true
    }
}
