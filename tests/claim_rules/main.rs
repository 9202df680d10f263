//! The claim SQL proven against the rules, for every state.
//!
//! The MySQL store restates the claim classes as SQL (candidate index ranges, prefilters,
//! `IN (…)` lists) and the memory store walks its rows; `machine` alone decides. For every case
//! generated in `cases` (every state string × lease situation × request set × retry point ×
//! engine, with and without child rows, operation rows that mirror their apply or differ from
//! it) the rows are stored as the case says, a claim runs, and the store must claim the apply if
//! and only if `machine` accepts it — through the same arm, landing in the same state — on the
//! apply path (`Store::claim`, arms A1–A9) and on the operation path (`Store::claim_operation`,
//! O1–O6 with the parent's apply arm). The same holds for retry expiry, the revert-window
//! deadline and request acceptance. A state dropped from any SQL list makes a case fail.
//!
//! The MySQL store's clock is frozen, so a heartbeat placed exactly on the staleness bound is
//! exactly on it when the claim runs.

mod cases;
mod fixture;
#[path = "../store_support/mod.rs"]
mod store_support;

use std::collections::BTreeMap;

use applyd::machine::{
    ApplyState, ClaimedVia, ControlOp, ControlStatus, EngineKind, PendingControls, Rules,
};
use applyd::store::{Lease, RequestOutcome, Store, StoreError};
use applyd::worker::ApplyId;

use cases::{Case, LeaseCase, Side, Text};
use fixture::{memory_store, MySqlCases};

/// Rows stored per round: every claim walks the round's claimable rows again, so rounds stay
/// small.
const ROUND: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Apply,
    Operation,
}

type Outcome = Option<(ClaimedVia, ApplyState)>;

fn expected(path: Path, rules: &Rules, case: &Case) -> Outcome {
    match path {
        Path::Apply => case.expect_apply_claim(rules),
        Path::Operation => case.expect_operation_claim(rules),
    }
}

async fn claim(store: &dyn Store, path: Path) -> Option<applyd::store::Claimed> {
    match path {
        Path::Apply => store.claim("claimer").await,
        Path::Operation => store.claim_operation("claimer").await,
    }
    .expect("a claim on readable and unreadable rows alike succeeds")
}

/// Collects the cases where a store and `machine` disagree, and fails with the first of them.
#[derive(Default)]
struct Verdict {
    checked: usize,
    claimed: usize,
    wrong: Vec<String>,
}

impl Verdict {
    fn compare(&mut self, case: &Case, want: Outcome, got: Outcome) {
        self.checked += 1;
        self.claimed += usize::from(got.is_some());
        if want != got {
            self.wrong.push(format!(
                "{case}:\n    machine says {}, the store {}",
                show(want),
                show(got)
            ));
        }
    }

    fn assert_clean(&self, what: &str) {
        eprintln!(
            "{what}: {} cases, {} claimed, {} disagreements",
            self.checked,
            self.claimed,
            self.wrong.len()
        );
        assert!(
            self.wrong.is_empty(),
            "{what}: {} of {} cases disagree with machine; the first:\n  {}",
            self.wrong.len(),
            self.checked,
            self.wrong
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

fn show(o: Outcome) -> String {
    match o {
        None => "no claim".into(),
        Some((via, to)) => format!("claim via {via} into {to}"),
    }
}

/// Databases a claim test spreads its rounds over, claiming on each concurrently: a claim
/// spends most of its time waiting on round trips.
const SHARDS: usize = 3;

async fn claims_agree_on_mysql(path: Path, cases: Vec<Case>) {
    let rules = Rules::default();
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        let Some(db) = MySqlCases::new(rules).await else {
            return;
        };
        let mine: Vec<Case> = cases
            .chunks(ROUND)
            .skip(shard)
            .step_by(SHARDS)
            .flatten()
            .cloned()
            .collect();
        shards.push(tokio::spawn(claims_agree_on_one(db, path, rules, mine)));
    }
    let mut verdict = Verdict::default();
    for shard in shards {
        let v = shard.await.expect("a shard finishes");
        verdict.checked += v.checked;
        verdict.claimed += v.claimed;
        verdict.wrong.extend(v.wrong);
    }
    verdict.assert_clean(&format!("MySQL store, {path:?} path"));
}

async fn claims_agree_on_one(
    mut db: MySqlCases,
    path: Path,
    rules: Rules,
    cases: Vec<Case>,
) -> Verdict {
    let mut verdict = Verdict::default();
    for round in cases.chunks(ROUND) {
        let refs: Vec<&Case> = round.iter().collect();
        let ids = db.insert(&refs).await;
        let mut got = BTreeMap::new();
        let mut order = Vec::new();
        for _ in 0..=ids.len() {
            let hint = db.store.may_have_work().await.expect("the poll read");
            let Some(c) = claim(&db.store, path).await else {
                break;
            };
            let id = c.lease.apply;
            // The idle poller's one read is no narrower than the claims it stands for.
            assert!(
                hint,
                "may_have_work said nothing to do, then a claim took apply {id}"
            );
            assert!(
                got.insert(id, (c.arm, c.record.row.state)).is_none(),
                "apply {id} was claimed twice"
            );
            order.push(id);
            // A claimed row leaves at once, so the next claim looks at the rest.
            db.delete(&[id]).await;
        }
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "claims must take rows in order: {order:?}"
        );
        for (id, case) in ids.iter().zip(round) {
            verdict.compare(case, expected(path, &rules, case), got.get(id).copied());
        }
        db.delete(&ids).await;
    }
    db.cleanup().await;
    verdict
}

async fn claims_agree_in_memory(path: Path, cases: Vec<Case>) {
    let rules = Rules::default();
    let mut verdict = Verdict::default();
    for case in &cases {
        let Some(store) = memory_store(rules, case) else {
            continue;
        };
        let hint = store.may_have_work().expect("the poll read");
        let got = claim(&store, path)
            .await
            .map(|c| (c.arm, c.record.row.state));
        assert!(
            hint || got.is_none(),
            "{case}: may_have_work said no, a claim took it"
        );
        verdict.compare(case, expected(path, &rules, case), got);
    }
    assert!(verdict.checked > 1_000);
    verdict.assert_clean(&format!("memory store, {path:?} path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_apply_claims_take_exactly_what_the_rules_accept() {
    claims_agree_on_mysql(Path::Apply, cases::mirrored_cases(&Rules::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_operation_claims_take_exactly_what_the_rules_accept_when_the_operation_mirrors_its_apply(
) {
    claims_agree_on_mysql(Path::Operation, cases::mirrored_cases(&Rules::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_operation_claims_take_exactly_what_the_rules_accept_when_the_operation_differs_from_its_apply(
) {
    claims_agree_on_mysql(
        Path::Operation,
        cases::operation_pair_cases(&Rules::default()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rollout_operations_are_claimed_exactly_as_the_rules_accept_on_both_paths() {
    let rules = Rules::default();
    for path in [Path::Apply, Path::Operation] {
        claims_agree_on_mysql(path, cases::rollout_cases(&rules)).await;
    }
}

#[tokio::test]
async fn memory_rollout_operations_are_claimed_exactly_as_the_rules_accept_on_both_paths() {
    let rules = Rules::default();
    for path in [Path::Apply, Path::Operation] {
        claims_agree_in_memory(path, cases::rollout_cases(&rules)).await;
    }
}

#[tokio::test]
async fn memory_claims_take_exactly_what_the_rules_accept_on_both_paths() {
    let rules = Rules::default();
    for path in [Path::Apply, Path::Operation] {
        claims_agree_in_memory(path, cases::mirrored_cases(&rules)).await;
    }
    claims_agree_in_memory(Path::Operation, cases::operation_pair_cases(&rules)).await;
}

/// Every state (and unknown string) × engine × lease × retry point.
fn expiry_cases(rules: &Rules) -> Vec<Case> {
    let mut out = Vec::new();
    for state in cases::state_texts() {
        for engine in cases::engine_texts(false) {
            for lease in cases::lease_cases(rules) {
                for (attempt, updated_age) in cases::retry_points(rules) {
                    let side = Side {
                        attempt,
                        updated_age,
                        ..Side::new(state, lease)
                    };
                    out.push(Case::mirrored(engine, side, vec![]));
                }
            }
        }
    }
    out
}

/// What retry expiry does to a row by `machine`: the state it lands in and the reason shown.
fn expected_expiry(rules: &Rules, case: &Case) -> Option<(String, String)> {
    let (reason, to) = rules.expiry_move(case.engine.value()?, &case.apply_view(rules)?)?;
    Some((to.as_str().to_string(), reason.as_str().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_retry_expiry_takes_exactly_what_the_rules_expire() {
    let rules = Rules::default();
    let Some(mut db) = MySqlCases::new(rules).await else {
        return;
    };
    let cases = expiry_cases(&rules);
    let mut wrong = Vec::new();
    let mut expired_total = 0;
    for round in cases.chunks(4 * ROUND) {
        let refs: Vec<&Case> = round.iter().collect();
        let ids = db.insert(&refs).await;
        let hint = db.store.may_have_work().await.expect("the poll read");
        let expired = db.store.expire_retryable().await.expect("expire");
        assert!(
            hint || expired == 0,
            "may_have_work said no, expiry expired {expired}"
        );
        let rows: BTreeMap<ApplyId, _> = db
            .store
            .stored_applies()
            .await
            .expect("read applies")
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let ops: BTreeMap<ApplyId, String> = db
            .store
            .stored_operations()
            .await
            .expect("read operations")
            .into_iter()
            .map(|o| (o.apply, o.state))
            .collect();
        let mut want_count = 0;
        for (id, case) in ids.iter().zip(round) {
            let row = &rows[id];
            let want = expected_expiry(&rules, case);
            want_count += u32::from(want.is_some());
            let got = (row.state != case.apply.state.stored()).then(|| {
                (
                    row.state.clone(),
                    row.error_message.clone().unwrap_or_default(),
                )
            });
            if want != got || (got.is_some() && ops[id] != row.state) {
                wrong.push(format!(
                    "{case}: machine says {want:?}, the store {got:?} (operation {})",
                    ops[id]
                ));
            }
        }
        if expired != want_count {
            wrong.push(format!(
                "expire_retryable reported {expired}, machine expires {want_count}"
            ));
        }
        expired_total += expired;
        db.delete(&ids).await;
    }
    eprintln!(
        "retry expiry: {} cases, {expired_total} expired",
        cases.len()
    );
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(12)].join("\n")
    );
    assert!(expired_total > 0);
    db.cleanup().await;
}

#[tokio::test]
async fn memory_retry_expiry_takes_exactly_what_the_rules_expire() {
    let rules = Rules::default();
    let mut checked = 0;
    for case in expiry_cases(&rules) {
        let Some(store) = memory_store(rules, &case) else {
            continue;
        };
        store.expire_retryable().expect("expire");
        let row = store.row(1).expect("row");
        let got = (row.state.as_str() != case.apply.state.stored()).then(|| {
            (
                row.state.as_str().to_string(),
                row.error_message.unwrap_or_default(),
            )
        });
        assert_eq!(got, expected_expiry(&rules, &case), "{case}");
        assert_eq!(
            row.operations[0].state, row.state,
            "{case}: the operation follows"
        );
        checked += 1;
    }
    assert!(checked > 1_000);
}

/// Every state × engine, one millisecond inside the revert window and exactly at its end.
fn revert_window_cases(rules: &Rules) -> Vec<(Case, u64)> {
    let owned = cases::lease_cases(rules)[3];
    let w = rules.params.revert_window_ms;
    let mut out = Vec::new();
    for state in cases::state_texts()
        .into_iter()
        .filter(|s| s.value().is_some())
    {
        for engine in cases::engine_texts(false) {
            for age in [w - 1, w, 1] {
                let mut case = Case::mirrored(engine, Side::new(state, owned), vec![]);
                case.state_age = age;
                out.push((case, age));
            }
        }
    }
    out
}

fn lease_of(id: ApplyId, lease: &LeaseCase) -> Lease {
    Lease {
        apply: id,
        owner: "owner".into(),
        epoch: lease.epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_window_deadline_agrees_with_the_rules_in_both_stores() {
    let rules = Rules::default();
    let cases = revert_window_cases(&rules);
    for (case, age) in &cases {
        let state = case.apply.state.value().expect("known");
        let want = rules.revert_window_expired(state, *age);
        if let Some(store) = memory_store(rules, case) {
            let inputs = store.load(&lease_of(1, &case.apply.lease)).expect("load");
            assert_eq!(inputs.revert_window_expired, want, "memory: {case}");
        }
    }
    assert!(cases
        .iter()
        .any(|(c, a)| rules.revert_window_expired(c.apply.state.value().unwrap(), *a)));
    let Some(mut db) = MySqlCases::new(rules).await else {
        return;
    };
    let refs: Vec<&Case> = cases.iter().map(|(c, _)| c).collect();
    let ids = db.insert(&refs).await;
    for (id, (case, age)) in ids.iter().zip(&cases) {
        let want = rules.revert_window_expired(case.apply.state.value().unwrap(), *age);
        let inputs = db
            .store
            .load(&lease_of(*id, &case.apply.lease))
            .await
            .expect("load");
        assert_eq!(inputs.revert_window_expired, want, "MySQL: {case}");
    }
    db.cleanup().await;
}

/// Every state string × engine × request × the requests already pending (none, or one).
fn request_cases(rules: &Rules) -> Vec<(Case, ControlOp)> {
    let never = cases::lease_cases(rules)[0];
    let mut out = Vec::new();
    for state in cases::state_texts() {
        for engine in cases::engine_texts(false) {
            for op in ControlOp::ALL {
                for pending in cases::single_requests(rules) {
                    out.push((
                        Case::mirrored(engine, Side::new(state, never), pending),
                        *op,
                    ));
                }
            }
        }
    }
    out
}

/// `machine`'s answer to a request, as the store must return it.
fn expected_request(rules: &Rules, case: &Case, op: ControlOp) -> Result<RequestOutcome, String> {
    let (Some(engine), Some(state)) = (case.engine.value(), case.apply.state.value()) else {
        return Err("unreadable row".into());
    };
    let pending: PendingControls = case.controls(&case.apply);
    rules
        .accepts_request(engine, state, op, &pending)
        .map_err(|r| StoreError::Refused(r.message()).to_string())?;
    if !case.rollout {
        if let Some(why) = applyd::machine::rollout::requests::refused_without_rollout(op) {
            return Err(StoreError::Refused(format!("not a rollout: {why}")).to_string());
        }
    }
    Ok(match case.requests.iter().find(|r| r.op == op) {
        None => RequestOutcome::Created,
        Some(r) if r.status == ControlStatus::Pending => RequestOutcome::AlreadyPending,
        Some(_) => RequestOutcome::Reset,
    })
}

fn request_result(r: Result<RequestOutcome, StoreError>) -> Result<RequestOutcome, String> {
    r.map_err(|e| match e {
        StoreError::BadRow { .. } => "unreadable row".to_string(),
        other => other.to_string(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_acceptance_agrees_with_the_rules_in_both_stores() {
    let rules = Rules::default();
    let cases = request_cases(&rules);
    let mut memory_checked = 0;
    for (case, op) in &cases {
        if let Some(store) = memory_store(rules, case) {
            let got = request_result(store.request(1, *op));
            assert_eq!(
                got,
                expected_request(&rules, case, *op),
                "memory: {op} on {case}"
            );
            memory_checked += 1;
        }
    }
    assert!(memory_checked > 1_000);
    let Some(mut db) = MySqlCases::new(rules).await else {
        return;
    };
    let mut wrong = Vec::new();
    for round in cases.chunks(8 * ROUND) {
        let refs: Vec<&Case> = round.iter().map(|(c, _)| c).collect();
        let ids = db.insert(&refs).await;
        for (id, (case, op)) in ids.iter().zip(round) {
            let got = request_result(db.store.request(*id, *op).await);
            let want = expected_request(&rules, case, *op);
            if got != want {
                wrong.push(format!(
                    "{op} on {case}: machine says {want:?}, the store {got:?}"
                ));
            }
        }
        db.delete(&ids).await;
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(12)].join("\n")
    );
    db.cleanup().await;
}

#[test]
fn the_cases_cover_every_state_both_paths_and_every_arm() {
    let rules = Rules::default();
    let mirrored = cases::mirrored_cases(&rules);
    let pairs = cases::operation_pair_cases(&rules);
    for state in ApplyState::ALL {
        assert!(
            mirrored
                .iter()
                .any(|c| c.apply.state == Text::Known(*state)),
            "{state}"
        );
    }
    // Every arm's predicate holds in some case (an arm that is never first, like A4 behind A1,
    // is still exercised), and every claim path is taken.
    let mut arms = std::collections::BTreeSet::new();
    for case in mirrored.iter().chain(&pairs) {
        let Some(parent) = case.apply_view(&rules) else {
            continue;
        };
        for arm in applyd::machine::ClaimArm::ALL {
            if rules.arm_matches(*arm, &parent) {
                arms.insert(arm.code());
            }
        }
        if let Some(op) = case.operation_view(&rules) {
            let v = applyd::machine::OperationClaimView::single(op, parent);
            for arm in applyd::machine::OperationArm::ALL {
                if rules.operation_arm_matches(*arm, &v) {
                    arms.insert(arm.code());
                }
            }
        }
    }
    let all: Vec<&str> = applyd::machine::ClaimArm::ALL
        .iter()
        .map(|a| a.code())
        .chain(applyd::machine::OperationArm::ALL.iter().map(|a| a.code()))
        .collect();
    for code in all {
        assert!(arms.contains(code), "no case matches {code}");
    }
    assert!(mirrored
        .iter()
        .any(|c| c.engine == Text::Known(EngineKind::Spirit)));
    let read = cases::ops_the_arms_read(&rules);
    for op in [ControlOp::Start, ControlOp::Stop, ControlOp::Cancel] {
        assert!(read.contains(&op), "the arms read {op}");
    }
}

/// An operator failure (a drive that panicked) moves every non-terminal state by its table row,
/// and refuses a terminal one: no path changes a state outside the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_failure_follows_the_table_in_both_stores() {
    let rules = Rules::default();
    let owned = cases::lease_cases(&rules)[3];
    let mut all = Vec::new();
    for state in cases::state_texts() {
        for engine in cases::engine_texts(false) {
            all.push(Case::mirrored(engine, Side::new(state, owned), vec![]));
        }
    }
    let expect = |case: &Case| -> Result<String, String> {
        let (Some(engine), Some(state)) = (case.engine.value(), case.apply.state.value()) else {
            return Err("unreadable row".into());
        };
        rules
            .fail_closed_move(engine, state)
            .map(|to| to.as_str().to_string())
            .ok_or_else(|| format!("request refused: apply {{id}} is already {state}"))
    };
    let reason = "the drive panicked";
    for case in &all {
        let Some(store) = memory_store(rules, case) else {
            continue;
        };
        let got = store
            .fail_apply(&lease_of(1, &owned), reason)
            .map(|()| store.row(1).unwrap().state.as_str().to_string())
            .map_err(|e| e.to_string().replace("apply 1 ", "apply {id} "));
        assert_eq!(got, expect(case), "memory: {case}");
    }
    let Some(mut db) = MySqlCases::new(rules).await else {
        return;
    };
    let refs: Vec<&Case> = all.iter().collect();
    let ids = db.insert(&refs).await;
    for (id, case) in ids.iter().zip(&all) {
        let got = match db.store.fail_apply(&lease_of(*id, &owned), reason).await {
            Ok(()) => {
                let row = db.store.stored_applies_from(*id).await.unwrap().remove(0);
                assert_eq!(row.error_message.as_deref(), Some(reason), "{case}");
                Ok(row.state)
            }
            Err(StoreError::BadRow { .. }) => Err("unreadable row".into()),
            Err(e) => Err(e
                .to_string()
                .replace(&format!("apply {id} "), "apply {id} ")),
        };
        assert_eq!(got, expect(case), "MySQL: {case}");
    }
    db.cleanup().await;
}
