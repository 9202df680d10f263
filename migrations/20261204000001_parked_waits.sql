-- Parked waits: an owner that confirmed its apply is only waiting (for a person, or for the
-- revert deadline) releases the lease and gives its driver back. `parked_until` is when the
-- row wakes; a request wakes it earlier. A claim clears it.
ALTER TABLE applies
  ADD COLUMN parked_until DATETIME(6) NULL;
ALTER TABLE apply_operations
  ADD COLUMN parked_until DATETIME(6) NULL;

-- When a lease without a live heartbeat may be taken: at once when it was never taken, was
-- released, or is held without any heartbeat; at its wake time when parked. NULL while a lease
-- is held with a heartbeat (`lease_hb` ranges those). Claims find free rows through
-- `lease_free_at <= now`, so a parked row costs a claim nothing until it wakes.
ALTER TABLE applies
  ADD COLUMN lease_free_at DATETIME(6) GENERATED ALWAYS AS (
    IF(lease_owner IS NULL, COALESCE(parked_until, TIMESTAMP'1000-01-01 00:00:00'),
       IF(heartbeat_at IS NULL, TIMESTAMP'1000-01-01 00:00:00', NULL))
  ) STORED,
  ADD KEY ix_applies_free (state, lease_free_at);
ALTER TABLE apply_operations
  ADD COLUMN lease_free_at DATETIME(6) GENERATED ALWAYS AS (
    IF(lease_owner IS NULL, COALESCE(parked_until, TIMESTAMP'1000-01-01 00:00:00'),
       IF(heartbeat_at IS NULL, TIMESTAMP'1000-01-01 00:00:00', NULL))
  ) STORED,
  ADD KEY ix_apply_operations_free (state, lease_free_at);
