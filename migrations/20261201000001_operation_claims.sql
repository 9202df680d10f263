-- Claims find their candidates through small index ranges instead of walking every open row:
-- a claim's cost then follows the claimable rows, not the rows in flight under live leases.
--
-- `lease_hb` is the heartbeat of a held lease and NULL for a free one (never taken or released),
-- so "lease free or stale" is one range per state: `lease_hb IS NULL OR lease_hb <= cutoff`.
ALTER TABLE applies
  ADD COLUMN lease_hb DATETIME(6) GENERATED ALWAYS AS (IF(lease_owner IS NULL, NULL, heartbeat_at)) STORED,
  ADD KEY ix_applies_lease (state, lease_hb);

-- Operation-level claims (arms O1–O5) take operations in (created_at, id) order.
ALTER TABLE apply_operations
  ADD COLUMN lease_hb DATETIME(6) GENERATED ALWAYS AS (IF(lease_owner IS NULL, NULL, heartbeat_at)) STORED,
  ADD KEY ix_apply_operations_state (state, created_at, id),
  ADD KEY ix_apply_operations_lease (state, lease_hb);

-- Applies with a pending request (start, stop, cancel, ...) are claim candidates whatever their
-- lease.
ALTER TABLE apply_control_requests
  ADD KEY ix_apply_control_requests_status (status, apply_id);

-- A single-operation apply has one lease: the operation row carries its parent's (owner, epoch,
-- times) and mirrors its state and attempt. Rows written before this migration catch up here.
UPDATE apply_operations o JOIN applies a ON a.id = o.apply_id
SET o.state = a.state,
    o.attempt = a.attempt,
    o.lease_owner = a.lease_owner,
    o.lease_epoch = a.lease_epoch,
    o.lease_acquired_at = a.lease_acquired_at,
    o.heartbeat_at = a.heartbeat_at;
