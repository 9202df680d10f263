-- Operation-level claims (arms O1–O5) walk `apply_operations` in (created_at, id) order.
-- `claim_open` is 1 unless the claim class is terminal, as on `applies`; finished operations
-- are never scanned. The list must equal `Rules::states_in(ClaimClass::Terminal)`; a test checks it.
ALTER TABLE apply_operations
  ADD COLUMN claim_open TINYINT GENERATED ALWAYS AS (
    IF(state IN ('completed', 'failed', 'cancelled', 'reverted'), NULL, 1)
  ) STORED,
  ADD KEY ix_apply_operations_claim (claim_open, created_at, id);

-- A single-operation apply has one lease: the operation row carries its parent's (owner, epoch,
-- times) and mirrors its state and attempt. Rows written before this migration catch up here.
UPDATE apply_operations o JOIN applies a ON a.id = o.apply_id
SET o.state = a.state,
    o.attempt = a.attempt,
    o.lease_owner = a.lease_owner,
    o.lease_epoch = a.lease_epoch,
    o.lease_acquired_at = a.lease_acquired_at,
    o.heartbeat_at = a.heartbeat_at;
