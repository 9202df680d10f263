-- Rollouts: one change run as several operations, one per deployment and table step
-- (`machine::rollout`). The apply row of a rollout holds no lease; its state is derived from its
-- operations in the transaction of every operation move. `cutover_policy` is NULL for an apply
-- of one operation and marks a rollout otherwise.
ALTER TABLE applies
  ADD COLUMN cutover_policy VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN on_failure VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN max_drivers INT UNSIGNED NOT NULL DEFAULT 1,
  -- The `pause` release latch (one-way) and the stop hold.
  ADD COLUMN released TINYINT NOT NULL DEFAULT 0,
  ADD COLUMN held TINYINT NOT NULL DEFAULT 0;

-- A rollout reserves each of its deployments in `deployment_reservations`, not its target: its
-- row never takes the one-active-apply-per-target slot.
ALTER TABLE applies
  MODIFY COLUMN active_flag TINYINT GENERATED ALWAYS AS (
    IF(cutover_policy IS NOT NULL
       OR state IN ('completed', 'failed', 'cancelled', 'reverted', 'stopped'), NULL, 1)
  ) STORED;

-- The open rollouts, so that the apply claim finds their operations through one small range.
ALTER TABLE applies
  ADD COLUMN rollout_open TINYINT GENERATED ALWAYS AS (
    IF(cutover_policy IS NOT NULL AND claim_open IS NOT NULL, 1, NULL)
  ) STORED,
  ADD KEY ix_applies_rollout (rollout_open, id);

-- An operation's place in its rollout, its own spec (the statements are its task rows), its
-- verdict, and the request issues it has done its part of (`{"stop": 3}`).
ALTER TABLE apply_operations
  ADD COLUMN deployment_index INT UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN step INT UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN identifier VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN ddl_fingerprint VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN state_entered_at DATETIME(6) NULL,
  ADD COLUMN error_message TEXT NULL,
  ADD COLUMN failed_closed TINYINT NOT NULL DEFAULT 0,
  ADD COLUMN acked JSON NULL;

-- Each (re-)issue of a request gets a new number, so an operation's acknowledgement names the
-- issue it acknowledged.
ALTER TABLE apply_control_requests
  ADD COLUMN issue BIGINT UNSIGNED NOT NULL DEFAULT 1;

-- One active rollout per (database, environment, deployment), enforced by the primary key: a
-- rollout holds a row for each deployment while it is active (inserted when it is submitted or
-- becomes active again, deleted in the transaction that makes it inactive).
CREATE TABLE deployment_reservations (
  database_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  environment VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  deployment VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  apply_id BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (database_name, environment, deployment),
  KEY ix_deployment_reservations_apply (apply_id),
  CONSTRAINT fk_deployment_reservations_apply FOREIGN KEY (apply_id) REFERENCES applies (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- The operation an audit entry is about (NULL for the apply itself: a single operation's moves,
-- and a rollout's derived state).
ALTER TABLE apply_logs
  ADD COLUMN apply_operation_id BIGINT UNSIGNED NULL;
