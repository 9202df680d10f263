//! Claims: candidate discovery through index ranges, the prefilters built from the claim
//! classes, the locking read, and taking the lease (apply arms A1–A9, operation arms O1–O7).

use std::str::FromStr;

use sqlx::Row;

use super::super::{Claimed, Lease, Target};

use super::claim_tx::{sql_text, ClaimTx};
use super::outbox::insert_event_sql;
use super::rollout::MemberClaim;
use super::rows::{apply_columns, operation_columns, Parsed, RawApply, RawOperation};
use super::writes::task_sync_sql;
use super::{in_list, is_duplicate_key, Failure, MySqlStore, CANDIDATES};
use crate::machine::apply::ApplyId;
use crate::machine::{
    ApplyState, ClaimClass, ClaimedVia, ControlOp, ControlStatus, OperationArm, OperationClaimView,
};
use crate::store::webhooks::{Move, NewEvent};

impl MySqlStore {
    /// The prefilter of the claim query: a superset of the rows some arm matches, built from the
    /// claim classes. The exact decision is `Rules::matching_arm` on the row.
    pub(super) fn claim_prefilter(&self, now: &str) -> String {
        let rules = &self.rules;
        let p = &rules.params;
        let pending = ControlStatus::Pending.as_str();
        // Correlated `(SELECT 1 … LIMIT 1) IS NOT NULL` rather than `EXISTS`: MariaDB turns an
        // EXISTS in WHERE into a semi-join that materialises the whole child table per claim.
        let request = |ops: &str| {
            format!(
                "(SELECT 1 FROM apply_control_requests r WHERE r.apply_id = a.id \
                 AND r.status = '{pending}'{ops} LIMIT 1) IS NOT NULL"
            )
        };
        let children =
            "((SELECT 1 FROM apply_operations o WHERE o.apply_id = a.id LIMIT 1) IS NOT NULL \
                        OR (SELECT 1 FROM tasks t WHERE t.apply_id = a.id LIMIT 1) IS NOT NULL)";
        let mut arms = Vec::new();
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            arms.push(format!("(a.state IN ({states}) AND {children})"));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            // Stale or released lease (A2), or a pending start that may hand the lease off (A6).
            let start = request(&format!(
                " AND r.operation = '{}'",
                ControlOp::Start.as_str()
            ));
            arms.push(format!(
                "(a.state IN ({states}) AND (a.lease_owner IS NULL OR a.heartbeat_at IS NULL \
                 OR TIMESTAMPDIFF(MICROSECOND, a.heartbeat_at, {now}) >= {stale} OR {start}))",
                stale = p.stale_after_ms.saturating_mul(1000),
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            arms.push(format!(
                "(a.state IN ({states}) AND a.attempt < {budget} \
                 AND TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) < {fresh})",
                budget = p.retry_budget,
                fresh = p.retry_freshness_ms.saturating_mul(1000),
            ));
        }
        let mut held = rules.states_in(ClaimClass::StartHeld);
        held.extend(rules.states_in(ClaimClass::HumanHeld));
        if let Some(states) = in_list(&held) {
            arms.push(format!("(a.state IN ({states}) AND {})", request("")));
        }
        // A rollout's operations are claimed by the operation arms on their own views (its
        // apply holds no lease): every open rollout comes through, and the rules decide.
        arms.push("a.cutover_policy IS NOT NULL".to_string());
        // Unknown strings come through so that they are reported; they are never claimed.
        if let Some(known) = in_list(ApplyState::ALL) {
            arms.push(format!("a.state NOT IN ({known})"));
        }
        arms.join(" OR ")
    }

    /// The prefilter of the operation claim over `o` (operation) and `a` (its parent), built
    /// from the claim classes like [`Self::claim_prefilter`]: a superset of the pairs some
    /// operation arm matches; `Rules::matching_operation_arm` decides.
    pub(super) fn operation_prefilter(&self, now: &str) -> String {
        let rules = &self.rules;
        let p = &rules.params;
        let pending = ControlStatus::Pending.as_str();
        let request = |op: ControlOp| {
            format!(
                "(SELECT 1 FROM apply_control_requests r WHERE r.apply_id = o.apply_id \
                 AND r.status = '{pending}' AND r.operation = '{}' LIMIT 1)",
                op.as_str()
            )
        };
        let stale = p.stale_after_ms.saturating_mul(1000);
        let lease_free = |t: &str| {
            format!(
                "({t}.lease_owner IS NULL OR {t}.heartbeat_at IS NULL \
                 OR TIMESTAMPDIFF(MICROSECOND, {t}.heartbeat_at, {now}) >= {stale})"
            )
        };
        let start = request(ControlOp::Start);
        let mut arms = Vec::new();
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            // O1: no pending stop.
            arms.push(format!(
                "(o.state IN ({states}) AND {} IS NULL)",
                request(ControlOp::Stop)
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            // O2 (stale or released), O4 (a pending start may hand the lease off).
            arms.push(format!(
                "(o.state IN ({states}) AND ({} OR {start} IS NOT NULL))",
                lease_free("o")
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StartHeld)) {
            // O3 (a pending start), O7 (a pending cancel).
            arms.push(format!(
                "(o.state IN ({states}) AND ({start} IS NOT NULL OR {} IS NOT NULL))",
                request(ControlOp::Cancel)
            ));
        }
        if let Some(retry) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            // O5: the parent retries within budget and freshness, or the parent is stale.
            let mut parent = vec![format!(
                "(a.state IN ({retry}) AND a.attempt < {budget} \
                 AND TIMESTAMPDIFF(MICROSECOND, a.updated_at, {now}) < {fresh})",
                budget = p.retry_budget,
                fresh = p.retry_freshness_ms.saturating_mul(1000),
            )];
            if let Some(inflight) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
                parent.push(format!("(a.state IN ({inflight}) AND {})", lease_free("a")));
            }
            arms.push(format!(
                "(o.state IN ({retry}) AND ({}))",
                parent.join(" OR ")
            ));
        }
        // A rollout's operation is its own parent, and sees the requests through its
        // acknowledgements and gates (`rollout::requests::pending_for`): it comes through
        // whatever its apply's state, and the rules decide on its own view.
        arms.push("a.cutover_policy IS NOT NULL".to_string());
        // Unknown strings come through so that they are reported; they are never claimed.
        if let Some(known) = in_list(ApplyState::ALL) {
            arms.push(format!(
                "o.state NOT IN ({known}) OR a.state NOT IN ({known})"
            ));
        }
        arms.join(" OR ")
    }

    /// Candidate applies after `after`, in id order: a superset of the rows some apply arm
    /// matches, found through small index ranges built from the claim classes (the pending
    /// queue, free or stale leases of in-flight states, the retry path, applies with a pending
    /// request, unknown states). Rows under a live lease are never read, so the cost of a claim
    /// follows the claimable rows, not the work in flight. A plain (non-locking) read: the
    /// locking read that follows re-checks every candidate.
    pub(super) fn apply_candidates_sql(&self, now: &str, after: ApplyId) -> String {
        let rules = &self.rules;
        let cutoff = self.stale_cutoff(now);
        let mut parts = Vec::new();
        let by_state = |states: &str, extra: &str| {
            format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_state) WHERE state IN ({states}){extra} \
                 AND id > {after} ORDER BY id LIMIT {CANDIDATES})"
            )
        };
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            parts.push(by_state(&states, ""));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            // Free leases (parked ones from their wake time), then stale heartbeats.
            parts.push(format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_free) WHERE state IN ({states}) \
                 AND lease_free_at <= {now} AND id > {after} ORDER BY id LIMIT {CANDIDATES})"
            ));
            parts.push(format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_lease) WHERE state IN ({states}) \
                 AND lease_hb <= {cutoff} AND id > {after} ORDER BY id LIMIT {CANDIDATES})"
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            parts.push(by_state(&states, ""));
        }
        // Open rollouts with an operation in one of the operation candidate ranges (the pending
        // queue, free or stale leases, the retry path, unknown states); a rollout with a
        // pending request comes through the request part below.
        let mut op_ranges = Vec::new();
        for class in [ClaimClass::PendingQueue, ClaimClass::RetryPath] {
            if let Some(states) = in_list(&rules.states_in(class)) {
                op_ranges.push(format!("o.state IN ({states})"));
            }
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            op_ranges.push(format!(
                "(o.state IN ({states}) AND (o.lease_free_at <= {now} OR o.lease_hb <= {cutoff}))"
            ));
        }
        if let Some(known) = in_list(ApplyState::ALL) {
            op_ranges.push(format!("o.state NOT IN ({known})"));
        }
        parts.push(format!(
            "(SELECT a.id FROM applies a FORCE INDEX (ix_applies_rollout) WHERE a.rollout_open = 1 \
             AND a.id > {after} AND (SELECT 1 FROM apply_operations o WHERE o.apply_id = a.id \
             AND ({}) LIMIT 1) IS NOT NULL ORDER BY a.id LIMIT {CANDIDATES})",
            op_ranges.join(" OR ")
        ));
        // DISTINCT: each part yields up to CANDIDATES distinct applies, so the smallest
        // CANDIDATES ids of the union are exactly the next ones in id order. An apply with two
        // pending requests would otherwise take two of its part's places and cut it short, and
        // the applies past that cut would be skipped by this round.
        parts.push(format!(
            "(SELECT DISTINCT apply_id AS id FROM apply_control_requests FORCE INDEX (ix_apply_control_requests_status) \
             WHERE status = '{}' AND apply_id > {after} ORDER BY apply_id LIMIT {CANDIDATES})",
            ControlStatus::Pending.as_str()
        ));
        if let Some(known) = in_list(ApplyState::ALL) {
            parts.push(format!(
                "(SELECT id FROM applies FORCE INDEX (ix_applies_state) WHERE state NOT IN ({known}) \
                 AND id > {after} ORDER BY id LIMIT {CANDIDATES})"
            ));
        }
        format!(
            "SELECT DISTINCT id FROM ({}) c ORDER BY id LIMIT {CANDIDATES}",
            parts.join(" UNION ALL ")
        )
    }

    /// One autocommit read of the apply candidates. Every operation claim also moves its parent
    /// by an apply arm, and expiry reads only retry-path rows (one of the candidate ranges), so
    /// no candidates means neither claim nor expiry finds anything.
    pub(super) async fn may_have_work_once(&self) -> Result<bool, Failure> {
        let sql = self.apply_candidates_sql(&self.now_sql(), 0);
        let found: Option<ApplyId> = sqlx::query_scalar(&sql).fetch_optional(&self.pool).await?;
        Ok(found.is_some())
    }

    /// `now - stale_after` as an SQL expression (a lease whose heartbeat is at or before it is
    /// stale, exactly as `TIMESTAMPDIFF(…) >= stale_after`).
    pub(super) fn stale_cutoff(&self, now: &str) -> String {
        format!(
            "({now} - INTERVAL {} MICROSECOND)",
            self.rules.params.stale_after_ms.saturating_mul(1000)
        )
    }

    pub(super) async fn claim_once(&self, owner: &str) -> Result<Option<Claimed>, Failure> {
        let now = self.now_sql();
        // The first lockable candidate in id order that the prefilter still admits: `FOR UPDATE
        // SKIP LOCKED` makes concurrent claimers take different rows, and the PK order means
        // only that one row stays locked.
        let marks = vec!["?"; CANDIDATES].join(", ");
        let select = format!(
            "SELECT {cols} FROM applies a WHERE a.id IN ({marks}) AND a.id > ? AND ({filter}) \
             ORDER BY a.id LIMIT 1 FOR UPDATE SKIP LOCKED",
            cols = apply_columns(&now),
            filter = self.claim_prefilter(&now),
        );
        let mut tx = ClaimTx::acquire(&self.pool).await?;
        let mut after: ApplyId = 0;
        loop {
            // Round trip 1: the transaction starts with the candidate read.
            let ids: Vec<ApplyId> = tx
                .read(&self.apply_candidates_sql(&now, after))
                .await?
                .iter()
                .map(|row| row.try_get::<ApplyId, _>(0))
                .collect::<Result<_, _>>()?;
            let Some(last) = ids.last().copied() else {
                // Commit, not roll back: a refused start (below) must stay refused.
                tx.finish().await?;
                return Ok(None);
            };
            let mut cursor = after;
            loop {
                // Round trip 2: lock the first candidate the prefilter still admits.
                tx.begin().await?;
                let mut q = sqlx::query(&select);
                for i in 0..CANDIDATES {
                    // Id 0 never exists: it pads the list.
                    q = q.bind(ids.get(i).copied().unwrap_or(0));
                }
                let Some(row) = q.bind(cursor).fetch_optional(tx.conn()).await? else {
                    break;
                };
                let raw = RawApply::read(&row)?;
                cursor = raw.id;
                if raw.is_rollout {
                    match self
                        .claim_member(&mut tx, raw.id, None, owner, &now)
                        .await?
                    {
                        MemberClaim::Taken(claimed) => return Ok(Some(*claimed)),
                        MemberClaim::Skipped => continue,
                    }
                }
                let Ok(parsed) = self.parse(&raw) else {
                    continue;
                };
                let Some(arm) = self.rules.matching_arm(&parsed.view(&raw, &self.rules)) else {
                    continue;
                };
                let via = ClaimedVia::Apply(arm);
                // Round trip 3: take the lease and commit.
                if let Some(claimed) = self.take(&mut tx, &raw, &parsed, via, owner, &now).await? {
                    return Ok(Some(claimed));
                }
            }
            after = last;
        }
    }

    /// Candidate operations after `(after_us, after_id)`, in `(created_at, id)` order: a superset
    /// of the operations some operation arm matches, found as [`Self::apply_candidates`] finds
    /// applies (pending, free or stale leases, retry path, a pending request on the parent,
    /// unknown states). Each entry is `(created_at in µs, id)`.
    pub(super) fn operation_candidates_sql(&self, now: &str, after: (i64, u64)) -> String {
        let rules = &self.rules;
        let cutoff = self.stale_cutoff(now);
        let created = "CAST(TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', o.created_at) AS SIGNED)";
        let (after_us, after_id) = after;
        let after_sql = format!(
            "(o.created_at > (TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {after_us} MICROSECOND) \
             OR (o.created_at = (TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {after_us} MICROSECOND) AND o.id > {after_id}))"
        );
        let part = |index: &str, cond: &str| {
            format!(
                "(SELECT {created} AS c_us, o.id FROM apply_operations o FORCE INDEX ({index}) \
                 WHERE {cond} AND {after_sql} ORDER BY o.created_at, o.id LIMIT {CANDIDATES})"
            )
        };
        let mut parts = Vec::new();
        if let Some(states) = in_list(&rules.states_in(ClaimClass::PendingQueue)) {
            // Not under a finished apply: a rollout that ended leaves the operations it never
            // started pending for good (orphans), and no arm takes them.
            parts.push(part(
                "ix_apply_operations_state",
                &format!(
                    "o.state IN ({states}) AND (SELECT a.claim_open FROM applies a \
                     WHERE a.id = o.apply_id) IS NOT NULL"
                ),
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::StaleReclaimable)) {
            parts.push(part(
                "ix_apply_operations_free",
                &format!("o.state IN ({states}) AND o.lease_free_at <= {now}"),
            ));
            parts.push(part(
                "ix_apply_operations_lease",
                &format!("o.state IN ({states}) AND o.lease_hb <= {cutoff}"),
            ));
        }
        if let Some(states) = in_list(&rules.states_in(ClaimClass::RetryPath)) {
            parts.push(part(
                "ix_apply_operations_state",
                &format!("o.state IN ({states})"),
            ));
        }
        // DISTINCT, as for apply candidates: one operation per place, however many requests.
        parts.push(format!(
            "(SELECT DISTINCT {created} AS c_us, o.id FROM apply_control_requests r \
             FORCE INDEX (ix_apply_control_requests_status) \
             STRAIGHT_JOIN apply_operations o ON o.apply_id = r.apply_id \
             WHERE r.status = '{}' AND {after_sql} ORDER BY c_us, o.id LIMIT {CANDIDATES})",
            ControlStatus::Pending.as_str()
        ));
        if let Some(known) = in_list(ApplyState::ALL) {
            parts.push(part(
                "ix_apply_operations_state",
                &format!("o.state NOT IN ({known})"),
            ));
        }
        format!(
            "SELECT DISTINCT c_us, id FROM ({}) c ORDER BY c_us, id LIMIT {CANDIDATES}",
            parts.join(" UNION ALL ")
        )
    }

    /// The operation claim: take candidates in `(created_at, id)` order, locking each with its
    /// parent in one `FOR UPDATE SKIP LOCKED` read (the operation is read first, so a parent
    /// held by its owner or by another claimer skips the pair, never waits); confirm an
    /// operation arm and an apply arm for the parent, and take both leases. Reads walk the
    /// primary key, so a claimer never holds a row it does not claim.
    pub(super) async fn claim_operation_once(
        &self,
        owner: &str,
    ) -> Result<Option<Claimed>, Failure> {
        let now = self.now_sql();
        let head = format!(
            "SELECT {cols}, {op_cols} FROM apply_operations o STRAIGHT_JOIN applies a ON a.id = o.apply_id WHERE",
            cols = apply_columns(&now),
            op_cols = operation_columns(&now),
        );
        let filter = self.operation_prefilter(&now);
        // When the candidates' ids ascend with their (created_at, id) order (operations are
        // created with the database clock, so this is the rule), one statement locks the first
        // lockable candidate in primary-key order, as the apply claim does; otherwise each is
        // tried in turn.
        let marks = vec!["?"; CANDIDATES].join(", ");
        let first_of = format!(
            "{head} o.id IN ({marks}) AND o.id > ? AND ({filter}) ORDER BY o.id LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        let one = format!("{head} o.id = ? AND ({filter}) FOR UPDATE SKIP LOCKED");
        let mut tx = ClaimTx::acquire(&self.pool).await?;
        // Before the epoch, so the first read starts at the beginning.
        let mut after: (i64, u64) = (-1, 0);
        loop {
            // Round trip 1: the transaction starts with the candidate read.
            let candidates: Vec<(i64, u64)> = tx
                .read(&self.operation_candidates_sql(&now, after))
                .await?
                .iter()
                .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<u64, _>(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            let Some(last) = candidates.last().copied() else {
                tx.finish().await?;
                return Ok(None);
            };
            let ids: Vec<u64> = candidates.iter().map(|(_, id)| *id).collect();
            let ascending = ids.windows(2).all(|w| w[0] < w[1]);
            let mut next = 0;
            let mut cursor = 0;
            loop {
                // Round trip 2: lock the first candidate pair the prefilter still admits.
                tx.begin().await?;
                let row = if ascending {
                    let mut q = sqlx::query(&first_of);
                    for i in 0..CANDIDATES {
                        // Id 0 never exists: it pads the list.
                        q = q.bind(ids.get(i).copied().unwrap_or(0));
                    }
                    match q.bind(cursor).fetch_optional(tx.conn()).await? {
                        Some(row) => row,
                        None => break,
                    }
                } else {
                    let Some(id) = ids.get(next).copied() else {
                        break;
                    };
                    next += 1;
                    match sqlx::query(&one).bind(id).fetch_optional(tx.conn()).await? {
                        Some(row) => row,
                        None => continue,
                    }
                };
                let raw = RawApply::read(&row)?;
                let op = RawOperation::read(&row)?;
                cursor = op.id;
                if raw.is_rollout {
                    match self
                        .claim_member(&mut tx, raw.id, Some(op.id), owner, &now)
                        .await?
                    {
                        MemberClaim::Taken(claimed) => return Ok(Some(*claimed)),
                        MemberClaim::Skipped => continue,
                    }
                }
                let Ok(parsed) = self.parse(&raw) else {
                    continue;
                };
                let op_state = match ApplyState::from_str(&op.state) {
                    Ok(s) => s,
                    Err(e) => {
                        self.bad_row(raw.id, "apply_operations.state", &op.state, e.to_string());
                        continue;
                    }
                };
                let parent = parsed.view(&raw, &self.rules);
                let view = OperationClaimView {
                    op: op.view(
                        op_state,
                        parsed.controls,
                        self.rules.acts_now(
                            parsed.engine,
                            op_state,
                            &parsed.controls,
                            &parsed.options,
                        ),
                    ),
                    parent,
                    // The MySQL store holds applies of one operation only.
                    start_open: true,
                };
                let Some(op_arm) = self.rules.matching_operation_arm(&view) else {
                    continue;
                };
                // The parent is claimed as upstream's `ClaimApplyByID` does: by an apply arm.
                let Some(parent_arm) = self.rules.matching_arm(&parent) else {
                    continue;
                };
                let via = ClaimedVia::Operation {
                    op: op_arm,
                    parent: parent_arm,
                };
                // Round trip 3: take the lease and commit.
                if let Some(claimed) = self.take(&mut tx, &raw, &parsed, via, owner, &now).await? {
                    return Ok(Some(claimed));
                }
            }
            after = last;
        }
    }

    /// Take the lease of a locked apply and its operation row at one new epoch, moving the apply
    /// by the transition of the apply arm (its operation and tasks follow), and commit — all in
    /// one round trip. `None`: skip this row (no transition, a re-activation the target refused,
    /// or an O1 claim a stop overtook); the transaction is then still usable.
    pub(super) async fn take(
        &self,
        tx: &mut ClaimTx,
        raw: &RawApply,
        parsed: &Parsed,
        via: ClaimedVia,
        owner: &str,
        now: &str,
    ) -> Result<Option<Claimed>, Failure> {
        let Some(mv) = self
            .rules
            .claim_move(parsed.engine, parsed.state, via.apply_arm())
        else {
            return Ok(None);
        };
        let to = mv.to;
        let pre_claim = parsed.state;
        let id = raw.id;
        let epoch = raw.lease_epoch + 1;
        let owner_sql = sql_text(owner);
        // `machine`'s own name, never user input.
        let to_sql = format!("'{}'", to.as_str());
        let mut sets = format!(
            "lease_epoch = {epoch}, lease_owner = {owner_sql}, lease_acquired_at = {now}, \
             heartbeat_at = {now}, parked_until = NULL, updated_at = {now}, write_seq = write_seq + 1"
        );
        if to != pre_claim {
            sets.push_str(&format!(", state = {to_sql}, state_entered_at = {now}"));
        }
        let retry = mv.counts_attempt;
        if retry {
            sets.push_str(", attempt = attempt + 1");
        }
        if mv.clears_reason {
            sets.push_str(", error_message = NULL");
        }
        // A stop that committed after the locking read's snapshot but before the parent was
        // locked is seen by this statement's fresh read (a request locks the parent first): it
        // wins over an O1 claim, which then changes nothing.
        let stop_gate = if via.operation_arm() == Some(OperationArm::O1Pending) {
            format!(
                " AND (SELECT 1 FROM apply_control_requests r WHERE r.apply_id = {id} \
                 AND r.operation = '{}' AND r.status = '{}' LIMIT 1) IS NULL",
                ControlOp::Stop.as_str(),
                ControlStatus::Pending.as_str()
            )
        } else {
            String::new()
        };
        // Everything after the apply's UPDATE happens only if it took the lease (a session
        // variable, set in this round trip before anything reads it).
        let taken = "@applyd_claim_taken = 1";
        let mut statements = vec![
            format!(
                "UPDATE applies SET {sets} WHERE id = {id} AND lease_epoch = {} AND state = {}{stop_gate}",
                raw.lease_epoch,
                // As stored (a legacy alias stays as it is), so as text.
                sql_text(&raw.state)
            ),
            "SET @applyd_claim_taken = ROW_COUNT()".to_string(),
            "SELECT @applyd_claim_taken AS taken".to_string(),
        ];
        // The operation row takes the same lease (one epoch for both rows) and mirrors the state;
        // a retry re-dispatches it, so its own attempt counts too.
        let op_attempt = if retry { ", attempt = attempt + 1" } else { "" };
        statements.push(format!(
            "UPDATE apply_operations SET lease_owner = {owner_sql}, lease_epoch = {epoch}, \
             lease_acquired_at = {now}, heartbeat_at = {now}, parked_until = NULL, updated_at = {now}, state = {to_sql}{op_attempt} \
             WHERE apply_id = {id} AND {taken}"
        ));
        if let Some(tasks) = task_sync_sql(&format!("apply_id = {id}"), pre_claim, to, now) {
            statements.push(format!("{tasks} AND {taken}"));
        }
        statements.push(format!(
            "INSERT INTO apply_logs (apply_id, from_state, to_state, lease_epoch, lease_owner, cause, created_at) \
             SELECT {id}, {}, {to_sql}, {epoch}, {owner_sql}, {}, {now} FROM DUAL WHERE {taken}",
            sql_text(&raw.state),
            sql_text(&format!("claim {}", via.code())),
        ));
        let event = NewEvent::moved(Move {
            apply: id,
            operation: None,
            deployment: None,
            from: &raw.state,
            to,
            epoch,
            owner: Some(owner),
            cause: &format!("claim {}", via.code()),
            reason: None,
        });
        if let Some(event) = event {
            statements.push(insert_event_sql(&event, now, Some(taken)));
        }
        let rows = match tx.commit_with(&statements).await {
            Ok(rows) => rows,
            Err(Failure::Sql(e)) if is_duplicate_key(&e) && mv.reactivates => {
                // Re-activating would give the target a second active apply: refuse the
                // start that asked for it, with the reason. Nothing of the claim was written.
                self.refuse_start(tx, raw, now).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let taken: i64 = match rows.first() {
            Some(row) => row.try_get("taken")?,
            None => 0,
        };
        if taken != 1 {
            // Only an O1 claim a stop overtook (the row lock is ours): look at the next row.
            return Ok(None);
        }
        let attempt = if retry { raw.attempt + 1 } else { raw.attempt };
        Ok(Some(Claimed {
            lease: Lease {
                apply: raw.id,
                owner: owner.to_string(),
                epoch,
            },
            arm: via,
            pre_claim,
            record: parsed.record(raw, to, epoch, attempt),
        }))
    }

    /// Fail the pending start of an apply whose re-activation the target refused.
    async fn refuse_start(
        &self,
        tx: &mut ClaimTx,
        raw: &RawApply,
        now: &str,
    ) -> Result<(), Failure> {
        let target = Target {
            database: raw.database.clone(),
            environment: raw.environment.clone(),
        };
        let existing = self
            .active_on_target(tx.conn(), &target, Some(raw.id))
            .await?;
        let message =
            format!("start refused: another active apply ({existing}) exists on {target}");
        let sql = format!(
            "UPDATE apply_control_requests SET status = ?, error_message = ?, updated_at = {now}, \
             completed_at = {now} WHERE apply_id = ? AND operation = ? AND status = ?"
        );
        sqlx::query(&sql)
            .bind(ControlStatus::Failed.as_str())
            .bind(&message)
            .bind(raw.id)
            .bind(ControlOp::Start.as_str())
            .bind(ControlStatus::Pending.as_str())
            .execute(tx.conn())
            .await?;
        Ok(())
    }
}
