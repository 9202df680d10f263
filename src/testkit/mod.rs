//! The test kit: a synchronous claim and a synchronous executor of one command, against the
//! memory store and the fake engines. The simulator and the core's tests run drives with it on
//! virtual time; it claims and maps store results as the operator does (`store::claim_next`,
//! `store::store_outcome`).

use crate::engine::fake::FakeEngines;
use crate::machine::{EngineCall, Probe, Rules};
use crate::store::memory::MemoryStore;
use crate::store::store_outcome;
use crate::store::{ClaimPath, Claimed, Lease, StoreError};
use crate::worker::{Command, Drive, DriveView, Finish, WaitFor, WriteOutcome};

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
    Waited(WaitFor),
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
            }
            return Stepped::LoadFailed(outcome);
        }
    };
    let view = DriveView {
        row: inputs.record.row,
        controls: inputs.controls,
        revert_window_expired: inputs.revert_window_expired,
        heartbeat_ok_age_ms,
    };
    match drive.next(&view, rules) {
        Command::Write { to, resume } => {
            let outcome = store_outcome(store.write(lease, to, resume));
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
            drive.on_engine(engines.call(now, host, &inputs.record, lease.epoch, call));
            Stepped::Called { call }
        }
        Command::Probe(probe) => {
            drive.on_engine(engines.probe(now, &inputs.record, probe));
            Stepped::Probed { probe }
        }
        Command::Wait(why) => Stepped::Waited(why),
        Command::Finish(f) => {
            if f == Finish::ReleaseForRetry {
                let _ = store.release(lease);
            }
            Stepped::Finished(f)
        }
    }
}
