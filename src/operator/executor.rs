//! A thin async executor: runs one claimed apply's [`Drive`] against a `Store` and an `Engine`
//! until the drive finishes. The operator adds heartbeats, cancellation and metrics around it.

use async_trait::async_trait;

use crate::engine::Engine;
use crate::machine::Rules;
use crate::store::progress::TaskProgress;
use crate::store::store_outcome;
use crate::store::{Claimed, DriveInputs, Lease, Store, StoreError};
use crate::worker::{Command, Drive, FailureAccount, Finish, Read, WaitFor};

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
    /// The apply's state at the drive's last read.
    pub last_state: crate::machine::ApplyState,
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
    let mut drive = Drive::new(
        lease.apply,
        lease.epoch,
        row.engine,
        claimed.pre_claim,
        rules,
    );
    let mut report = DriveReport {
        finish: Finish::Settled,
        commands: 0,
        engine_calls: 0,
        last_state: row.state,
    };
    let mut inputs: DriveInputs = DriveInputs {
        record: claimed.record.clone(),
        controls: Default::default(),
        revert_window_expired: false,
        cutover_open: true,
    };
    let mut stale = true;
    let mut account = FailureAccount::default();
    let mut reported: Option<TaskProgress> = None;
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
                    // The same rule the core applies between steps, here for a read that
                    // failed before the core could be asked.
                    if rules.presumed_lost(pacing.heartbeat_ok_age_ms()) {
                        report.finish = Finish::PresumedLost;
                        return report;
                    }
                    pacing.wait(WaitFor::Backoff).await;
                    continue;
                }
            }
        }
        let read = Read::of(&inputs, pacing.heartbeat_ok_age_ms());
        report.last_state = inputs.record.row.state;
        report.commands += 1;
        if report.commands > max_commands {
            report.finish = Finish::Inconsistent("the drive exceeded its command budget");
            return report;
        }
        stale = true;
        match drive.next(&read.view, rules) {
            Command::Write { to, resume } => {
                let why = account.reason_for(to);
                drive.on_store(store_outcome(store.write(lease, to, resume, why).await))
            }
            Command::Complete(op) => {
                drive.on_store(store_outcome(store.complete_request(lease, op).await))
            }
            Command::Fail(op, why) => drive.on_store(store_outcome(
                store.fail_request(lease, op, &why.message()).await,
            )),
            Command::Call(call) => {
                report.engine_calls += 1;
                let reply = engine.call(&inputs.record, lease.epoch, call).await;
                keep_progress(store, lease, &mut reported, reply.progress).await;
                account.heard(reply.obs, reply.why);
                drive.on_engine(reply.obs);
            }
            Command::Probe(probe) => {
                let reply = engine.probe(&inputs.record, lease.epoch, probe).await;
                keep_progress(store, lease, &mut reported, reply.progress).await;
                account.heard(reply.obs, reply.why);
                drive.on_engine(reply.obs);
            }
            Command::FailClosed(cause) => drive.on_store(store_outcome(
                store.fail_apply(lease, &cause.reason(&read)).await,
            )),
            Command::Wait(why) => pacing.wait(why).await,
            Command::Finish(finish) => {
                report.finish = finish;
                match finish {
                    // Best effort: the retry arm does not need the lease cleared.
                    Finish::ReleaseForRetry | Finish::Held => {
                        let _ = store.release(lease).await;
                    }
                    // A park that did not land leaves the lease held: it goes stale and the
                    // apply is reclaimed then, as after a crash. A bounced fence is reported.
                    Finish::Parked => match store.park(lease).await {
                        Ok(()) => {}
                        Err(StoreError::LeaseLost { .. }) => report.finish = Finish::LeaseLost,
                        Err(StoreError::RowGone(_)) => report.finish = Finish::RowGone,
                        Err(e) => {
                            tracing::warn!(error = %e, "parking failed; the lease is kept until it goes stale")
                        }
                    },
                    _ => {}
                }
                return report;
            }
        }
    }
}

/// What the engine says of its work goes on the task rows when it has changed. Losing a report
/// costs only the report: a lost lease is found by the drive's next store write.
async fn keep_progress(
    store: &dyn Store,
    lease: &Lease,
    reported: &mut Option<TaskProgress>,
    progress: Option<TaskProgress>,
) {
    // Compared as it would be kept: a figure the store drops (a NaN) is no change.
    let Some(p) = progress.map(TaskProgress::bounded) else {
        return;
    };
    if reported.as_ref() == Some(&p) {
        return;
    }
    match store.record_progress(lease, &p).await {
        Ok(()) => *reported = Some(p),
        Err(e) => tracing::debug!(apply = lease.apply, error = %e, "progress not recorded"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::engine::{MockEngine, Reply};
    use crate::machine::{ApplyOptions, ApplyState, ClaimArm, EngineCall, EngineKind, Probe};
    use crate::store::{ApplyRecord, ApplySpec, Lease, MockStore, Target};
    use crate::worker::{ApplySnapshot, EngineFault, Observation, ResumeState, RunnerStatus};

    fn record(state: ApplyState) -> ApplyRecord {
        let ddl = vec!["ALTER TABLE t ADD COLUMN c INT".to_string()];
        ApplyRecord {
            row: ApplySnapshot {
                id: 7,
                operation: 7,
                engine: EngineKind::Spirit,
                state,
                epoch: 3,
                attempt: 0,
                options: ApplyOptions::default(),
                resume: ResumeState::default(),
            },
            spec: Arc::new(ApplySpec {
                identifier: "apply-7".into(),
                target: Target {
                    database: "users".into(),
                    environment: "prod".into(),
                },
                deployment: String::new(),
                ddl: ddl.clone(),
                fingerprint: Some(
                    crate::ddl::check_change(EngineKind::Spirit, "users", &ddl, false)
                        .unwrap()
                        .fingerprint,
                ),
            }),
        }
    }

    fn claimed(state: ApplyState) -> Claimed {
        Claimed {
            lease: Lease {
                apply: 7,
                owner: "w".into(),
                epoch: 3,
            },
            arm: ClaimArm::A2Stale.into(),
            pre_claim: state,
            record: record(state),
        }
    }

    /// A store whose loads read the apply in `state`.
    fn store_loading(state: &Arc<Mutex<ApplyState>>) -> MockStore {
        let mut store = MockStore::new();
        let s = state.clone();
        store.expect_load().returning(move |_| {
            Ok(DriveInputs {
                record: record(*s.lock().unwrap()),
                controls: Default::default(),
                revert_window_expired: false,
                cutover_open: true,
            })
        });
        store
    }

    /// A store whose row follows the writes it accepts.
    fn store_following_writes(
        state: Arc<Mutex<ApplyState>>,
        write_result: Result<(), StoreError>,
    ) -> MockStore {
        let mut store = store_loading(&state);
        store
            .expect_write()
            .times(1)
            .returning(move |lease, to, _, _| {
                assert_eq!(lease.epoch, 3, "every write carries the lease epoch");
                if write_result.is_ok() {
                    *state.lock().unwrap() = to;
                }
                write_result.clone()
            });
        store
    }

    /// One drive of the running apply 7 under the shipped rules, without waits.
    async fn drive_running(store: &MockStore, engine: &MockEngine) -> DriveReport {
        run_drive(
            store,
            engine,
            &claimed(ApplyState::Running),
            &Rules::default(),
            &Immediate,
            100,
        )
        .await
    }

    struct CountingPacing(Mutex<Vec<WaitFor>>);

    #[async_trait]
    impl Pacing for CountingPacing {
        async fn wait(&self, why: WaitFor) {
            self.0.lock().unwrap().push(why);
        }
        fn heartbeat_ok_age_ms(&self) -> u64 {
            0
        }
    }

    #[tokio::test]
    async fn a_lost_lease_on_write_ends_the_drive_with_no_further_engine_call() {
        let state = Arc::new(Mutex::new(ApplyState::Running));
        let store =
            store_following_writes(state, Err(StoreError::LeaseLost { apply: 7, epoch: 3 }));
        let mut engine = MockEngine::new();
        engine.expect_probe().times(1).returning(|_, _, p| {
            assert_eq!(p, Probe::RunnerStatus);
            Observation::Runner(RunnerStatus::WaitingOnSentinel).into()
        });
        engine.expect_call().never();
        let report = drive_running(&store, &engine).await;
        assert_eq!(report.finish, Finish::LeaseLost);
    }

    #[tokio::test]
    async fn the_engines_progress_is_recorded_under_the_lease_when_it_changes() {
        use crate::store::progress::{RunnerStart, TaskProgress};
        let state = Arc::new(Mutex::new(ApplyState::Running));
        let mut store = store_following_writes(state.clone(), Ok(()));
        let at = |copied: u64| TaskProgress {
            phase: Some("copyRows".into()),
            rows_copied: Some(copied),
            rows_total: Some(100),
            start: Some(RunnerStart::Resumed),
            ..Default::default()
        };
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let sink = recorded.clone();
        store.expect_record_progress().returning(move |lease, p| {
            assert_eq!((lease.apply, lease.epoch), (7, 3));
            sink.lock().unwrap().push(p.rows_copied);
            Ok(())
        });
        let mut engine = MockEngine::new();
        let probes = Arc::new(Mutex::new(0));
        engine.expect_probe().returning(move |_, _, _| {
            let mut n = probes.lock().unwrap();
            *n += 1;
            match *n {
                // The same figures twice, then new ones, then the end.
                1 | 2 => {
                    Reply::from(Observation::Runner(RunnerStatus::Copying)).with_progress(at(40))
                }
                3 => Reply::from(Observation::Runner(RunnerStatus::Copying)).with_progress(at(90)),
                _ => {
                    Reply::from(Observation::Runner(RunnerStatus::Completed)).with_progress(at(100))
                }
            }
        });
        engine.expect_call().never();
        let report = drive_running(&store, &engine).await;
        assert_eq!(report.finish, Finish::Settled);
        assert_eq!(*state.lock().unwrap(), ApplyState::Completed);
        assert_eq!(
            *recorded.lock().unwrap(),
            vec![Some(40), Some(90), Some(100)],
            "each change once, none repeated"
        );
    }

    #[tokio::test]
    async fn a_transient_engine_fault_backs_off_and_writes_only_the_confirmed_outcome() {
        let state = Arc::new(Mutex::new(ApplyState::Running));
        let store = store_following_writes(state.clone(), Ok(()));
        let mut engine = MockEngine::new();
        let probes = Arc::new(Mutex::new(0));
        engine.expect_probe().returning(move |_, _, _| {
            let mut n = probes.lock().unwrap();
            *n += 1;
            if *n == 1 {
                Observation::Fault(EngineFault::Transient).into()
            } else {
                Observation::Runner(RunnerStatus::Completed).into()
            }
        });
        engine.expect_call().never();
        let pacing = CountingPacing(Mutex::new(Vec::new()));
        let report = run_drive(
            &store,
            &engine,
            &claimed(ApplyState::Running),
            &Rules::default(),
            &pacing,
            100,
        )
        .await;
        assert_eq!(report.finish, Finish::Settled);
        assert_eq!(*state.lock().unwrap(), ApplyState::Completed);
        assert_eq!(*pacing.0.lock().unwrap(), vec![WaitFor::Backoff]);
    }

    #[tokio::test]
    async fn a_reclaimed_spirit_apply_restarts_its_runner_before_anything_is_written() {
        let mut store = store_loading(&Arc::new(Mutex::new(ApplyState::Running)));
        store.expect_write().never();
        let mut engine = MockEngine::new();
        let mut seq = mockall::Sequence::new();
        engine
            .expect_probe()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _, _| {
                Observation::Runner(RunnerStatus::Gone(
                    crate::machine::table::RunnerGone::WorkLeft,
                ))
                .into()
            });
        engine
            .expect_call()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, epoch, call| {
                assert_eq!((epoch, call), (3, EngineCall::StartRunner));
                Observation::Runner(RunnerStatus::Copying).into()
            });
        // The drive then polls; a presumed-lost heartbeat ends it before any write.
        struct Lost;
        #[async_trait]
        impl Pacing for Lost {
            async fn wait(&self, _why: WaitFor) {}
            fn heartbeat_ok_age_ms(&self) -> u64 {
                u64::MAX
            }
        }
        let report = run_drive(
            &store,
            &engine,
            &claimed(ApplyState::Running),
            &Rules::default(),
            &Immediate,
            3,
        )
        .await;
        assert_eq!(report.engine_calls, 1);
        let report = run_drive(
            &store,
            &MockEngine::new(),
            &claimed(ApplyState::Running),
            &Rules::default(),
            &Lost,
            10,
        )
        .await;
        assert_eq!(report.finish, Finish::PresumedLost);
    }

    #[tokio::test]
    async fn a_failure_is_written_with_the_engines_words() {
        let state = Arc::new(Mutex::new(ApplyState::Running));
        let mut store = store_loading(&state);
        let written = Arc::new(Mutex::new(None));
        let w = written.clone();
        let s = state.clone();
        store
            .expect_write()
            .times(1)
            .returning(move |_, to, _, why| {
                *s.lock().unwrap() = to;
                *w.lock().unwrap() = Some((to, why));
                Ok(())
            });
        store.expect_complete_request().returning(|_, _| Ok(()));
        let mut engine = MockEngine::new();
        engine.expect_probe().returning(|_, _, _| {
            crate::engine::Reply::explained(
                Observation::Runner(RunnerStatus::Failed { retryable: false }),
                "Spirit exited with exit status: 1: ALTER contains unsupported clause(s)",
            )
        });
        engine.expect_call().never();
        drive_running(&store, &engine).await;
        assert_eq!(
            *written.lock().unwrap(),
            Some((
                ApplyState::Failed,
                Some(
                    "Spirit exited with exit status: 1: ALTER contains unsupported clause(s)"
                        .to_string()
                )
            ))
        );
    }

    #[tokio::test]
    async fn a_runner_that_asks_for_a_person_holds_the_apply_with_its_words() {
        let state = Arc::new(Mutex::new(ApplyState::Running));
        let mut store = store_loading(&state);
        let written = Arc::new(Mutex::new(Vec::new()));
        let (w, s) = (written.clone(), state.clone());
        store.expect_write().returning(move |_, to, _, why| {
            *s.lock().unwrap() = to;
            w.lock().unwrap().push((to, why));
            Ok(())
        });
        let mut engine = MockEngine::new();
        engine.expect_probe().returning(|_, _, _| {
            crate::engine::Reply::explained(
                Observation::Runner(RunnerStatus::NeedsPerson),
                "Spirit exited with exit status: 1: cutover failed: ownership ambiguous",
            )
        });
        // Held: nothing runs again, nothing is cancelled, and the lease is given back.
        store.expect_release().times(1).returning(|_| Ok(()));
        engine.expect_call().never();
        let report = drive_running(&store, &engine).await;
        assert_eq!(report.finish, Finish::Held);
        assert_eq!(
            *written.lock().unwrap(),
            vec![(
                ApplyState::Paused,
                Some(
                    "Spirit exited with exit status: 1: cutover failed: ownership ambiguous"
                        .to_string()
                )
            )],
            "one write, into the hold, with the engine's words"
        );
    }

    #[test]
    fn a_retried_failure_write_keeps_the_words_and_long_words_are_cut() {
        let mut account = FailureAccount::default();
        account.heard(
            Observation::Fault(EngineFault::Permanent),
            Some("é".repeat(5000)),
        );
        let first = account.reason_for(ApplyState::Failed).unwrap();
        assert_eq!(account.reason_for(ApplyState::Failed), Some(first.clone()));
        assert!(first.len() <= crate::worker::MAX_REASON_BYTES && first.ends_with("..."));
    }

    #[test]
    fn a_failure_without_words_still_says_why_and_other_writes_say_nothing() {
        let mut account = FailureAccount::default();
        assert_eq!(account.reason_for(ApplyState::Completed), None);
        account.heard(Observation::Fault(EngineFault::Permanent), None);
        assert_eq!(account.reason_for(ApplyState::Running), None);
        let why = account.reason_for(ApplyState::Failed).unwrap();
        assert!(why.contains("refused the change"), "{why}");
        assert!(!account
            .reason_for(ApplyState::FailedRetryable)
            .unwrap()
            .is_empty());
    }
}
