//! A thin async executor: runs one claimed apply's [`Drive`] against a `Store` and an `Engine`
//! until the drive finishes. The operator adds heartbeats, cancellation and metrics around it.

use async_trait::async_trait;

use super::{Command, Drive, DriveView, Finish, WaitFor, WriteOutcome};
use crate::engine::Engine;
use crate::machine::Rules;
use crate::store::{Claimed, DriveInputs, Store, StoreError};

/// How a driver waits and how healthy its heartbeats are; the operator sleeps on tokio time,
/// tests return at once.
#[async_trait]
pub trait Pacing: Send + Sync {
    async fn wait(&self, why: WaitFor);
    /// Milliseconds since the last successful heartbeat of this drive.
    fn heartbeat_ok_age_ms(&self) -> u64;
}

/// Pacing that never waits and always reports a fresh heartbeat.
pub struct Immediate;

#[async_trait]
impl Pacing for Immediate {
    async fn wait(&self, _why: WaitFor) {}
    fn heartbeat_ok_age_ms(&self) -> u64 {
        0
    }
}

/// What a finished drive did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveReport {
    pub finish: Finish,
    pub commands: u64,
    pub engine_calls: u64,
}

fn outcome_of(result: Result<(), StoreError>) -> WriteOutcome {
    match result {
        Ok(()) => WriteOutcome::Ok,
        Err(StoreError::LeaseLost { .. }) => WriteOutcome::LeaseLost,
        Err(StoreError::RowGone(_)) => WriteOutcome::RowGone,
        Err(StoreError::ActiveApplyExists { .. }) => WriteOutcome::TargetBusy,
        Err(_) => WriteOutcome::Unavailable,
    }
}

/// Drive one claimed apply to the end of its drive. `max_commands` bounds a runaway drive.
pub async fn run_drive(
    store: &dyn Store,
    engine: &dyn Engine,
    claimed: &Claimed,
    rules: &Rules,
    pacing: &dyn Pacing,
    max_commands: u64,
) -> DriveReport {
    let lease = &claimed.lease;
    let row = &claimed.record.row;
    let mut drive = Drive::new(lease.apply, lease.epoch, row.engine, claimed.pre_claim, rules);
    let mut report = DriveReport { finish: Finish::Settled, commands: 0, engine_calls: 0 };
    let mut inputs: DriveInputs = DriveInputs {
        record: claimed.record.clone(),
        controls: Default::default(),
        revert_window_expired: false,
    };
    let mut stale = true;
    loop {
        if stale {
            match store.load(lease).await {
                Ok(fresh) => inputs = fresh,
                Err(StoreError::LeaseLost { .. }) => {
                    report.finish = Finish::LeaseLost;
                    return report;
                }
                Err(StoreError::RowGone(_)) => {
                    report.finish = Finish::RowGone;
                    return report;
                }
                Err(_) => {
                    if pacing.heartbeat_ok_age_ms() >= rules.params.presumed_loss_ms {
                        report.finish = Finish::PresumedLost;
                        return report;
                    }
                    pacing.wait(WaitFor::Backoff).await;
                    continue;
                }
            }
        }
        let view = DriveView {
            row: inputs.record.row,
            controls: inputs.controls,
            revert_window_expired: inputs.revert_window_expired,
            heartbeat_ok_age_ms: pacing.heartbeat_ok_age_ms(),
        };
        report.commands += 1;
        if report.commands > max_commands {
            report.finish = Finish::Inconsistent("the drive exceeded its command budget");
            return report;
        }
        stale = true;
        match drive.next(&view, rules) {
            Command::Write { to, resume } => drive.on_store(outcome_of(store.write(lease, to, resume).await)),
            Command::Complete(op) => drive.on_store(outcome_of(store.complete_request(lease, op).await)),
            Command::Fail(op, why) => drive.on_store(outcome_of(store.fail_request(lease, op, &why.message()).await)),
            Command::Call(call) => {
                report.engine_calls += 1;
                drive.on_engine(engine.call(&inputs.record, lease.epoch, call).await);
            }
            Command::Probe(probe) => {
                drive.on_engine(engine.probe(&inputs.record, lease.epoch, probe).await);
            }
            Command::Wait(why) => pacing.wait(why).await,
            Command::Finish(finish) => {
                if finish == Finish::ReleaseForRetry {
                    // Best effort: the retry arm does not need the lease cleared.
                    let _ = store.release(lease).await;
                }
                report.finish = finish;
                return report;
            }
        }
    }
}
