//! The test kit: a synchronous claim and a synchronous executor of one command, against the
//! memory store and the fake engines. The simulator and the core's tests run drives with it on
//! virtual time; it claims and maps store results as the operator does (`store::claim_next`,
//! `store::store_outcome`).

use crate::engine::fake::FakeEngines;
use crate::machine::{EngineCall, Probe, Rules};
use crate::store::memory::MemoryStore;
use crate::store::store_outcome;
use crate::store::{ClaimPath, Claimed, Lease, StoreError};
use crate::worker::{
    Command, Drive, FailCause, FailureAccount, Finish, Read, WaitFor, WriteOutcome,
};

/// Claim the next unit of work on `path` as the operator's poller does, and the drive that starts
/// from the claim.
pub fn claim(
    store: &MemoryStore,
    path: ClaimPath,
    owner: &str,
    rules: &Rules,
) -> Result<Option<(Claimed, Drive)>, StoreError> {
    let Some(claimed) = store.claim_next(path, owner)? else {
        return Ok(None);
    };
    let drive = Drive::new(
        claimed.lease.apply,
        claimed.lease.epoch,
        claimed.record.row.engine,
        claimed.pre_claim,
        rules,
    );
    Ok(Some((claimed, drive)))
}

/// What one executed command did, for traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stepped {
    Wrote {
        to: crate::machine::ApplyState,
        outcome: WriteOutcome,
    },
    Requested {
        op: crate::machine::ControlOp,
        completed: bool,
        outcome: WriteOutcome,
    },
    Called {
        call: EngineCall,
    },
    Probed {
        probe: Probe,
    },
    FailedClosed {
        cause: FailCause,
        outcome: WriteOutcome,
    },
    Waited(WaitFor),
    /// The drive confirmed a watched wait in `state` (`Finish::Watched`): the lease stays held.
    Watching {
        state: crate::machine::ApplyState,
    },
    Finished(Finish),
    /// The owner could not even read its row.
    LoadFailed(WriteOutcome),
}

/// Run the drive's next command. `heartbeat_ok_age_ms` is the driver's view of its heartbeats.
#[allow(clippy::too_many_arguments)]
pub fn step(
    store: &MemoryStore,
    engines: &mut FakeEngines,
    host: u32,
    drive: &mut Drive,
    account: &mut FailureAccount,
    lease: &Lease,
    now: u64,
    heartbeat_ok_age_ms: u64,
    rules: &Rules,
) -> Stepped {
    let inputs = match store.load(lease) {
        Ok(inputs) => inputs,
        Err(e) => {
            let outcome = store_outcome(Err(e));
            if outcome != WriteOutcome::Unavailable {
                drive.on_store(outcome);
            } else if rules.presumed_lost(heartbeat_ok_age_ms) {
                // As the operator's executor: a read that keeps failing past the bound ends
                // the drive before a peer may reclaim.
                return Stepped::Finished(Finish::PresumedLost);
            }
            return Stepped::LoadFailed(outcome);
        }
    };
    let read = Read::of(&inputs, heartbeat_ok_age_ms);
    match drive.next(&read.view, rules) {
        Command::Write { to, resume } => {
            let why = account.reason_for(to);
            let outcome = store_outcome(store.write(lease, to, resume, why.as_deref()));
            drive.on_store(outcome);
            Stepped::Wrote { to, outcome }
        }
        Command::Complete(op) => {
            let outcome = store_outcome(store.complete_request(lease, op));
            drive.on_store(outcome);
            Stepped::Requested {
                op,
                completed: true,
                outcome,
            }
        }
        Command::Fail(op, why) => {
            let outcome = store_outcome(store.fail_request(lease, op, &why.message()));
            drive.on_store(outcome);
            Stepped::Requested {
                op,
                completed: false,
                outcome,
            }
        }
        Command::Call(call) => {
            let obs = engines.call(now, host, &inputs.record, lease.epoch, call);
            account.heard(obs, None);
            drive.on_engine(obs);
            Stepped::Called { call }
        }
        Command::Probe(probe) => {
            let obs = engines.probe(now, &inputs.record, probe);
            account.heard(obs, None);
            drive.on_engine(obs);
            Stepped::Probed { probe }
        }
        Command::FailClosed(cause) => {
            let outcome = store_outcome(store.fail_apply(lease, &cause.reason(&read)));
            drive.on_store(outcome);
            Stepped::FailedClosed { cause, outcome }
        }
        Command::Wait(why) => Stepped::Waited(why),
        Command::Finish(f) => {
            match f {
                Finish::ReleaseForRetry | Finish::Held => {
                    let _ = store.release(lease);
                }
                // As the operator's executor: a park that does not land keeps the lease until
                // it goes stale.
                Finish::Parked => {
                    let _ = store.park(lease);
                }
                // The process keeps the lease and watches; what holds it is the caller's choice.
                Finish::Watched => {
                    return Stepped::Watching {
                        state: read.view.row.state,
                    };
                }
                _ => {}
            }
            Stepped::Finished(f)
        }
    }
}

/// One driver of a synchronous harness: the drive it owns and when its heartbeat last renewed
/// the lease — the bookkeeping the operator keeps in a drive task and its heartbeat task. The
/// simulator and the core's tests both drive through it; what differs between them (schedules,
/// injected faults, process crashes) stays theirs.
#[derive(Debug)]
pub struct Driver {
    pub host: u32,
    owned: Option<(Drive, Lease)>,
    /// The engine's last reply to the owned drive, as the operator's executor keeps it.
    account: FailureAccount,
    last_heartbeat_ok: u64,
    /// A watched wait leaves the driver (handed out in [`DriverStep::watched`], as the
    /// operator hands it to its watcher); otherwise the driver keeps it and polls on a fresh
    /// drive, which the store sees exactly as the watcher (lease held and renewed, a request
    /// taken within one poll).
    frees_on_watch: bool,
}

/// A watched wait handed out by a driver: the lease, the state the drive confirmed, and when
/// its heartbeat last renewed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedWait {
    pub lease: Lease,
    pub engine: crate::machine::EngineKind,
    pub state: crate::machine::ApplyState,
    pub last_heartbeat_ok: u64,
}

/// What one heartbeat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Renewed,
    /// The store could not be reached; the drive goes on until its lease is presumed lost.
    Failed,
    /// The lease is gone: the drive ended, as the operator cancels a drive in that case.
    LeaseGone,
}

/// What one step of a driver did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverStep {
    pub apply: crate::machine::apply::ApplyId,
    pub stepped: Stepped,
    /// The heartbeat age the drive saw.
    pub heartbeat_age_ms: u64,
    /// The drive finished; the driver is free.
    pub ended: bool,
    /// The drive ended in a watched wait that left the driver.
    pub watched: Option<WatchedWait>,
}

impl Driver {
    pub fn new(host: u32) -> Driver {
        Driver {
            host,
            owned: None,
            account: FailureAccount::default(),
            last_heartbeat_ok: 0,
            frees_on_watch: false,
        }
    }

    /// A driver that hands watched waits out instead of holding them.
    pub fn freeing_watched_waits(host: u32) -> Driver {
        Driver {
            frees_on_watch: true,
            ..Driver::new(host)
        }
    }

    /// Take a watched wait back to drive it (a request arrived, or the runner left its gate).
    pub fn resume_watched(&mut self, w: WatchedWait, rules: &Rules) {
        let drive = Drive::new(w.lease.apply, w.lease.epoch, w.engine, w.state, rules);
        self.owned = Some((drive, w.lease));
        self.account = FailureAccount::default();
        self.last_heartbeat_ok = w.last_heartbeat_ok;
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.owned.as_ref().map(|(_, lease)| lease)
    }

    /// Claim on `path` as the operator's poller does; the heartbeat clock starts at the claim.
    pub fn claim(
        &mut self,
        store: &MemoryStore,
        path: ClaimPath,
        owner: &str,
        rules: &Rules,
        now: u64,
    ) -> Result<Option<Claimed>, StoreError> {
        let Some((claimed, drive)) = claim(store, path, owner, rules)? else {
            return Ok(None);
        };
        self.owned = Some((drive, claimed.lease.clone()));
        self.account = FailureAccount::default();
        self.last_heartbeat_ok = now;
        Ok(Some(claimed))
    }

    /// The heartbeat task's tick. Idle drivers have nothing to renew.
    pub fn heartbeat(&mut self, store: &MemoryStore, now: u64) -> Option<Beat> {
        let (_, lease) = self.owned.as_ref()?;
        Some(match store.heartbeat(lease) {
            Ok(()) => {
                self.last_heartbeat_ok = now;
                Beat::Renewed
            }
            Err(StoreError::LeaseLost { .. } | StoreError::RowGone(_)) => {
                self.owned = None;
                Beat::LeaseGone
            }
            Err(_) => Beat::Failed,
        })
    }

    /// Run the owned drive's next command; `None` when idle.
    pub fn step(
        &mut self,
        store: &MemoryStore,
        engines: &mut FakeEngines,
        now: u64,
        rules: &Rules,
    ) -> Option<DriverStep> {
        let (drive, lease) = self.owned.as_mut()?;
        let heartbeat_age_ms = now.saturating_sub(self.last_heartbeat_ok);
        let mut stepped = step(
            store,
            engines,
            self.host,
            drive,
            &mut self.account,
            lease,
            now,
            heartbeat_age_ms,
            rules,
        );
        let apply = lease.apply;
        let mut watched = None;
        if let Stepped::Watching { state } = stepped {
            if self.frees_on_watch {
                watched = Some(WatchedWait {
                    lease: lease.clone(),
                    engine: drive.engine,
                    state,
                    last_heartbeat_ok: self.last_heartbeat_ok,
                });
            } else {
                *drive = Drive::new(lease.apply, lease.epoch, drive.engine, state, rules);
                stepped = Stepped::Waited(WaitFor::Poll);
            }
        }
        let ended = watched.is_some()
            || drive.finished().is_some()
            || matches!(stepped, Stepped::Finished(_));
        if ended {
            self.owned = None;
        }
        Some(DriverStep {
            apply,
            stepped,
            heartbeat_age_ms,
            ended,
            watched,
        })
    }

    /// Drop the drive without a word to the store (a crash, or a cancelled drive).
    pub fn abandon(&mut self) {
        self.owned = None;
    }
}
