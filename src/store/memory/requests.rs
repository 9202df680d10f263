//! Control requests to the memory store: admitted by the rules (`Rules::request_admitted`),
//! recorded once per apply and operation, and read back by the watchers of waits.

use super::*;

impl MemoryStore {
    pub fn request(&self, apply: ApplyId, op: ControlOp) -> Result<RequestOutcome, StoreError> {
        self.request_by(apply, op, None)
    }

    /// [`MemoryStore::request`], recording who asked for the timeline (as the MySQL store
    /// does; a request already pending keeps who first asked).
    pub fn request_by(
        &self,
        apply: ApplyId,
        op: ControlOp,
        by: Option<&str>,
    ) -> Result<RequestOutcome, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let row = inner.rows.get(&apply).ok_or(StoreError::RowGone(apply))?;
        let pending = pending_of(&inner, apply);
        self.rules
            .request_admitted(row.engine, row.state, op, &pending, row.rollout.is_some())
            .map_err(StoreError::Refused)?;

        inner.seq += 1;
        let seq = inner.seq;
        let outcome = match inner.requests.get_mut(&(apply, op)) {
            Some(req) if req.status == ControlStatus::Pending => RequestOutcome::AlreadyPending,
            Some(req) => {
                req.status = ControlStatus::Pending;
                req.updated_at = now;
                req.updated_seq = seq;
                req.message = None;
                req.requested_at = now;
                req.requested_by = by.map(str::to_string);
                RequestOutcome::Reset
            }
            None => {
                inner.requests.insert(
                    (apply, op),
                    MemoryRequest {
                        status: ControlStatus::Pending,
                        updated_at: now,
                        updated_seq: seq,
                        message: None,
                        requested_at: now,
                        requested_by: by.map(str::to_string),
                    },
                );
                RequestOutcome::Created
            }
        };
        // A request already pending is the same request: nothing new to accept (as in MySQL).
        if is_rollout(&inner, apply) && outcome != RequestOutcome::AlreadyPending {
            self.rollout_request(&mut inner, apply, op, now);
        }
        if outcome != RequestOutcome::AlreadyPending {
            let after = inner.audit.len();
            inner.requests_log.push(outbox::LoggedRequest {
                after,
                apply,
                op,
                at_ms: now,
            });
        }
        Ok(outcome)
    }

    pub fn pending_requests(&self, applies: &[ApplyId]) -> Result<Vec<ApplyId>, StoreError> {
        let inner = self.lock()?;
        Ok(applies
            .iter()
            .copied()
            .filter(|id| pending_of(&inner, *id).any())
            .collect())
    }
}
