//! Rollouts on both stores: every behaviour below runs against `MemoryStore` (the reference) and
//! `MySqlStore` (a real MariaDB/MySQL) through the `Store` trait, with the same steps — claims of
//! a rollout's operations on both claim paths, their own fenced leases, the gates enforced inside
//! the write, the parent derived in the same write, one active rollout per deployment, requests
//! that reach every operation, and concurrent claimers never sharing an operation.

#[macro_use]
mod store_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use applyd::machine::rollout::{CutoverPolicy, OnFailure, RolloutPlan};
use applyd::machine::{ApplyOptions, ApplyState, ControlOp, EngineKind};
use applyd::store::{Claimed, Lease, NewApply, StoreError};
use applyd::worker::{ApplyId, ResumeState};
use store_support::{new_apply, Env};

fn rollout(
    db: &str,
    deployments: &[&str],
    cutover: CutoverPolicy,
    on_failure: OnFailure,
    max: u32,
) -> NewApply {
    NewApply {
        rollout: Some(RolloutPlan {
            deployments: deployments.iter().map(|d| d.to_string()).collect(),
            cutover_policy: cutover,
            on_failure,
            max_drivers_per_apply: max,
            table_steps: false,
        }),
        // Spirit orders cutovers across operations only when it waits on its sentinel.
        options: ApplyOptions {
            defer_cutover: true,
            ..ApplyOptions::default()
        },
        ..new_apply(db, EngineKind::Spirit)
    }
}

async fn submit(env: &Env, new: NewApply) -> ApplyId {
    env.store.submit(new).await.expect("submit")
}

async fn claim(env: &Env, owner: &str) -> Option<Claimed> {
    env.store.claim(owner).await.expect("claim")
}

async fn write(env: &Env, lease: &Lease, to: ApplyState) -> Result<(), StoreError> {
    env.store
        .write(lease, to, ResumeState::default(), None)
        .await
}

async fn finish(env: &Env, lease: &Lease) {
    write(env, lease, ApplyState::CuttingOver)
        .await
        .expect("cut over");
    write(env, lease, ApplyState::Completed)
        .await
        .expect("complete");
}

/// Two claims by two owners, in rollout order (deployment `a`, then `b`).
async fn claim_two_in_rollout_order(env: &Env) -> [Claimed; 2] {
    let mut two = [
        claim(env, "w1").await.expect("a first operation"),
        claim(env, "w2").await.expect("a second operation"),
    ];
    two.sort_by(|x, y| x.record.spec.deployment.cmp(&y.record.spec.deployment));
    two
}

/// A parallel rollout of two deployments whose two running operations were stopped (each
/// completing its part of the stop), then asked to start again.
async fn stopped_then_started(env: &Env) -> (ApplyId, [Claimed; 2]) {
    let id = submit(
        env,
        rollout(
            "shop",
            &["a", "b"],
            CutoverPolicy::Parallel,
            OnFailure::Halt,
            2,
        ),
    )
    .await;
    let two = claim_two_in_rollout_order(env).await;
    env.store.request(id, ControlOp::Stop).await.unwrap();
    for c in &two {
        write(env, &c.lease, ApplyState::Stopped).await.unwrap();
        env.store
            .complete_request(&c.lease, ControlOp::Stop)
            .await
            .unwrap();
    }
    env.store.request(id, ControlOp::Start).await.unwrap();
    (id, two)
}

async fn states(env: &Env, id: ApplyId) -> (ApplyState, Vec<ApplyState>) {
    let s = env.inspect(id).await;
    (s.state, s.operations.iter().map(|o| o.state).collect())
}

async fn rolling_runs_one_deployment_at_a_time_in_order(env: Env) {
    use ApplyState::*;
    let id = submit(
        &env,
        rollout(
            "shop",
            &["us-east-1", "us-west-2", "eu-west-1"],
            CutoverPolicy::Rolling,
            OnFailure::Halt,
            3,
        ),
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let c = claim(&env, "w1")
            .await
            .expect("the next deployment is claimable");
        assert_eq!(c.lease.apply, id);
        assert!(
            claim(&env, "w2").await.is_none(),
            "rolling: one operation at a time"
        );
        order.push(c.record.spec.deployment.clone());
        let s = env.inspect(id).await;
        let running = s
            .operations
            .iter()
            .position(|o| o.state == Running)
            .unwrap();
        assert_eq!(s.operations[running].lease_owner.as_deref(), Some("w1"));
        assert_eq!(s.operations[running].lease_epoch, c.lease.epoch);
        if let Some(next) = s.operations.get(running + 1) {
            assert_eq!(
                next.gate.as_deref(),
                Some(format!("start: waits for operation #{} to complete", running + 1).as_str())
            );
        }
        assert_eq!(
            s.state, Running,
            "the parent is derived from its operations"
        );
        finish(&env, &c.lease).await;
    }
    assert_eq!(order, ["us-east-1", "us-west-2", "eu-west-1"]);
    assert_eq!(states(&env, id).await, (Completed, vec![Completed; 3]));
    assert!(claim(&env, "w1").await.is_none());
    env.cleanup().await;
}

async fn each_operation_is_fenced_by_its_own_lease_on_both_claim_paths(env: Env) {
    use ApplyState::*;
    let id = submit(
        &env,
        rollout(
            "shop",
            &["a", "b", "c"],
            CutoverPolicy::Parallel,
            OnFailure::Halt,
            2,
        ),
    )
    .await;
    let first = env.store.claim_operation("w1").await.unwrap().expect("O1");
    let second = claim(&env, "w2")
        .await
        .expect("the apply path takes an operation too");
    assert_eq!((first.lease.apply, second.lease.apply), (id, id));
    assert_ne!(first.record.row.operation, second.record.row.operation);
    assert_ne!(first.lease.epoch, second.lease.epoch);
    assert!(
        claim(&env, "w3").await.is_none(),
        "max_drivers_per_apply = 2"
    );
    // Each lease renews and writes its own operation only.
    env.store.heartbeat(&first.lease).await.unwrap();
    env.store
        .heartbeat_all(&[first.lease.clone(), second.lease.clone()])
        .await
        .map(|lost| assert!(lost.is_empty()))
        .unwrap();
    // Released, the first is taken again by another owner: its old lease is fenced everywhere.
    env.store.release(&first.lease).await.unwrap();
    let again = claim(&env, "w3")
        .await
        .expect("a released operation is claimable at once");
    assert_eq!(again.record.row.operation, first.record.row.operation);
    let stale = &first.lease;
    for result in [
        write(&env, stale, WaitingForCutover).await,
        env.store.heartbeat(stale).await,
        env.store.fail_apply(stale, "late").await,
        env.store.load(stale).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(StoreError::LeaseLost { .. })),
            "a displaced owner is fenced: {result:?}"
        );
    }
    assert_eq!(
        env.store
            .heartbeat_all(&[stale.clone(), second.lease.clone()])
            .await
            .unwrap(),
        vec![stale.clone()],
        "the lost lease alone, not its apply's other one"
    );
    // The other operation's owner is untouched.
    write(&env, &second.lease, WaitingForCutover).await.unwrap();
    let inputs = env.store.load(&second.lease).await.unwrap();
    assert_eq!(inputs.record.row.state, WaitingForCutover);
    assert_eq!(inputs.record.spec.deployment, second.record.spec.deployment);
    env.cleanup().await;
}

async fn the_cutover_gate_holds_inside_the_write(env: Env) {
    use ApplyState::*;
    let id = submit(
        &env,
        rollout(
            "shop",
            &["a", "b"],
            CutoverPolicy::Barrier,
            OnFailure::Halt,
            2,
        ),
    )
    .await;
    let [first, second] = claim_two_in_rollout_order(&env).await;
    write(&env, &first.lease, WaitingForCutover).await.unwrap();
    // The barrier: the other operation has not reached the gate.
    let refused = write(&env, &first.lease, CuttingOver).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(ref m)) if m.contains("barrier")),
        "{refused:?}"
    );
    let load = env.store.load(&first.lease).await.unwrap();
    assert!(!load.cutover_open);
    write(&env, &second.lease, WaitingForCutover).await.unwrap();
    // In order: `b` waits for `a`, then one at a time.
    let refused = write(&env, &second.lease, CuttingOver).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(_))),
        "{refused:?}"
    );
    write(&env, &first.lease, CuttingOver).await.unwrap();
    let refused = write(&env, &second.lease, CuttingOver).await;
    assert!(
        matches!(refused, Err(StoreError::Refused(ref m)) if m.contains("cutover")),
        "{refused:?}"
    );
    write(&env, &first.lease, Completed).await.unwrap();
    assert!(env.store.load(&second.lease).await.unwrap().cutover_open);
    finish(&env, &second.lease).await;
    assert_eq!(states(&env, id).await, (Completed, vec![Completed; 2]));
    env.cleanup().await;
}

async fn one_active_rollout_per_deployment(env: Env) {
    let plan = |ds: &[&str]| rollout("shop", ds, CutoverPolicy::Rolling, OnFailure::Halt, 1);
    let first = submit(&env, plan(&["a", "b"])).await;
    let busy = env.store.submit(plan(&["b", "c"])).await;
    assert!(
        matches!(&busy, Err(StoreError::ActiveApplyExists { target, existing })
            if target == "shop/prod@b" && *existing == first),
        "{busy:?}"
    );
    let again = env.store.submit_or_adopt(plan(&["a", "b"])).await.unwrap();
    assert!(
        again.adopted && again.id == first,
        "the same change while live is adopted"
    );
    let other = submit(&env, plan(&["c"])).await;
    assert_ne!(other, first);
    // An apply without deployments holds its target's own place, not a deployment.
    submit(&env, new_apply("shop", EngineKind::Spirit)).await;
    // A plan that cannot be honoured is refused naming its field, and nothing is written.
    let before = env.store.submit(plan(&["d", "d"])).await;
    assert!(
        matches!(
            before,
            Err(StoreError::Invalid {
                field: "deployments",
                ..
            })
        ),
        "{before:?}"
    );
    // Finished, a rollout frees its deployments.
    let c = claim(&env, "w1").await.unwrap();
    assert_eq!(c.lease.apply, first);
    env.store.fail_apply(&c.lease, "broken").await.unwrap();
    assert_eq!(states(&env, first).await.0, ApplyState::Failed);
    submit(&env, plan(&["a", "b"])).await;
    env.cleanup().await;
}

async fn a_cancel_withdraws_the_operations_not_started(env: Env) {
    use ApplyState::*;
    let id = submit(
        &env,
        rollout(
            "shop",
            &["a", "b", "c"],
            CutoverPolicy::Rolling,
            OnFailure::Halt,
            1,
        ),
    )
    .await;
    let c = claim(&env, "w1").await.unwrap();
    env.store.request(id, ControlOp::Cancel).await.unwrap();
    assert_eq!(
        states(&env, id).await.1,
        vec![Running, Cancelled, Cancelled]
    );
    assert!(
        claim(&env, "w2").await.is_none(),
        "the owner acts on the cancel"
    );
    let inputs = env.store.load(&c.lease).await.unwrap();
    assert!(inputs.controls.cancel);
    write(&env, &c.lease, Cancelled).await.unwrap();
    env.store
        .complete_request(&c.lease, ControlOp::Cancel)
        .await
        .unwrap();
    assert_eq!(states(&env, id).await, (Cancelled, vec![Cancelled; 3]));
    let s = env.inspect(id).await;
    assert!(s.pending_requests.is_empty(), "{:?}", s.requests);
    env.cleanup().await;
}

async fn a_pause_holds_until_a_release(env: Env) {
    use ApplyState::*;
    let id = submit(
        &env,
        rollout(
            "shop",
            &["a", "b"],
            CutoverPolicy::Rolling,
            OnFailure::Pause,
            1,
        ),
    )
    .await;
    let c = claim(&env, "w1").await.unwrap();
    // An engine failure (a fail-closed one would halt every policy).
    write(&env, &c.lease, Failed).await.unwrap();
    let s = env.inspect(id).await;
    assert_eq!((s.state, s.operations[1].state), (Paused, Pending));
    assert!(
        s.operations[1]
            .gate
            .as_deref()
            .unwrap()
            .contains("applyd release"),
        "{:?}",
        s.operations[1].gate
    );
    assert!(claim(&env, "w1").await.is_none(), "held by the pause");
    env.store.request(id, ControlOp::Release).await.unwrap();
    let s = env.inspect(id).await;
    assert_eq!(s.rollout.map(|p| p.released), Some(true));
    assert!(
        s.pending_requests.is_empty(),
        "a release is complete at once"
    );
    let next = claim(&env, "w1").await.expect("released: the rest runs");
    assert_eq!(next.record.spec.deployment, "b");
    finish(&env, &next.lease).await;
    assert_eq!(
        states(&env, id).await.0,
        Failed,
        "the verdict once nothing is left"
    );
    env.cleanup().await;
}

async fn a_stop_reaches_every_running_operation(env: Env) {
    use ApplyState::*;
    let id = submit(
        &env,
        rollout(
            "shop",
            &["a", "b", "c"],
            CutoverPolicy::Parallel,
            OnFailure::Halt,
            2,
        ),
    )
    .await;
    let one = claim(&env, "w1").await.unwrap();
    let two = claim(&env, "w2").await.unwrap();
    env.store.request(id, ControlOp::Stop).await.unwrap();
    for c in [&one, &two] {
        assert!(env.store.load(&c.lease).await.unwrap().controls.stop);
        write(&env, &c.lease, Stopped).await.unwrap();
        env.store
            .complete_request(&c.lease, ControlOp::Stop)
            .await
            .unwrap();
        // The first one done does not complete the stop: the other still acts on it.
        let pending = env.inspect(id).await.pending_requests;
        assert_eq!(
            pending.contains(&ControlOp::Stop),
            std::ptr::eq(c, &one),
            "{pending:?}"
        );
    }
    assert_eq!(
        states(&env, id).await,
        (Stopped, vec![Stopped, Stopped, Pending])
    );
    assert!(
        claim(&env, "w3").await.is_none(),
        "a stopped rollout starts nothing"
    );
    env.store.request(id, ControlOp::Start).await.unwrap();
    let resumed: BTreeSet<u64> = [claim(&env, "w3").await, claim(&env, "w4").await]
        .into_iter()
        .map(|c| {
            c.expect("a start resumes each stopped operation")
                .record
                .row
                .operation
        })
        .collect();
    assert_eq!(
        resumed,
        [one.record.row.operation, two.record.row.operation].into()
    );
    assert_eq!(states(&env, id).await.0, Running);
    env.cleanup().await;
}

async fn a_request_issued_again_reaches_the_operations_that_did_their_part(env: Env) {
    use ApplyState::*;
    let (id, [one, _]) = stopped_then_started(&env).await;
    let again = [
        claim(&env, "w3").await.unwrap(),
        claim(&env, "w4").await.unwrap(),
    ];
    let first = again
        .iter()
        .find(|c| c.record.row.operation == one.record.row.operation)
        .unwrap();
    write(&env, &first.lease, WaitingForCutover).await.unwrap();
    write(&env, &first.lease, CuttingOver).await.unwrap();
    // Issued again: the operation that acknowledged the first issue sees this one (and, cutting
    // over, refuses it), however it acknowledged the last.
    env.store.request(id, ControlOp::Stop).await.unwrap();
    assert!(env.store.load(&first.lease).await.unwrap().controls.stop);
    env.cleanup().await;
}

/// A start asked again while it is pending is the same request: it changes nothing. After one
/// of two stopped operations resumed (the rollout runs again), the start stays pending for the
/// other, which a claim still takes.
async fn a_start_asked_again_while_pending_changes_nothing(env: Env) {
    use ApplyState::*;
    let (id, _) = stopped_then_started(&env).await;
    let resumed = claim(&env, "w3")
        .await
        .expect("a start resumes an operation");
    assert_eq!(states(&env, id).await.0, Running);
    env.store.request(id, ControlOp::Start).await.unwrap();
    assert!(
        env.inspect(id)
            .await
            .pending_requests
            .contains(&ControlOp::Start),
        "the start is still pending for the other stopped operation"
    );
    let other = claim(&env, "w4")
        .await
        .expect("the other stopped operation resumes too");
    assert_ne!(other.record.row.operation, resumed.record.row.operation);
    env.cleanup().await;
}

async fn concurrent_claimers_never_share_an_operation(env: Env) {
    let id = submit(
        &env,
        rollout(
            "shop",
            &["a", "b", "c", "d", "e", "f"],
            CutoverPolicy::Parallel,
            OnFailure::Halt,
            6,
        ),
    )
    .await;
    let store = env.store.clone();
    let claims = (0..12).map(|k| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let owner = format!("w{k}");
            let mut mine = Vec::new();
            // Skipped rows (locked by a peer) leave work for the next try.
            for _ in 0..20 {
                match store.claim_operation(&owner).await.expect("claim") {
                    Some(c) => mine.push((c.record.row.operation, c.lease.epoch)),
                    None => tokio::task::yield_now().await,
                }
                if mine.len() >= 2 {
                    break;
                }
            }
            mine
        })
    });
    let mut taken = Vec::new();
    for handle in claims {
        taken.extend(handle.await.unwrap());
    }
    let operations: BTreeSet<u64> = taken.iter().map(|(op, _)| *op).collect();
    let epochs: BTreeSet<u64> = taken.iter().map(|(_, e)| *e).collect();
    assert_eq!(
        operations.len(),
        taken.len(),
        "an operation claimed twice: {taken:?}"
    );
    assert_eq!(
        epochs.len(),
        taken.len(),
        "one epoch names one operation lease"
    );
    assert_eq!(taken.len(), 6, "every operation claimed once");
    let s = env.inspect(id).await;
    assert!(s.operations.iter().all(|o| o.lease_owner.is_some()));
    env.cleanup().await;
}

conformance!(
    rolling_runs_one_deployment_at_a_time_in_order,
    each_operation_is_fenced_by_its_own_lease_on_both_claim_paths,
    the_cutover_gate_holds_inside_the_write,
    one_active_rollout_per_deployment,
    a_cancel_withdraws_the_operations_not_started,
    a_pause_holds_until_a_release,
    a_stop_reaches_every_running_operation,
    a_request_issued_again_reaches_the_operations_that_did_their_part,
    a_start_asked_again_while_pending_changes_nothing,
    concurrent_claimers_never_share_an_operation,
);
