-- The applyd store. Every time is DATETIME(6) in UTC, written from the database clock (NOW(6));
-- staleness is computed on the database with TIMESTAMPDIFF, never with the application clock.
-- Every string column compared for identity uses a binary collation, so matching is exact.

-- One row per user-visible schema change.
CREATE TABLE applies (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  apply_identifier VARCHAR(64) NULL,
  database_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  environment VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  engine VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  state VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  options JSON NOT NULL,
  ddl JSON NOT NULL,
  error_message TEXT NULL,
  attempt INT UNSIGNED NOT NULL DEFAULT 0,
  -- The lease: owner and epoch. The epoch is bumped on every claim and never reset; every owner
  -- write is fenced with `WHERE id = ? AND lease_epoch = ?`.
  lease_owner VARCHAR(255) NULL,
  lease_epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
  lease_acquired_at DATETIME(6) NULL,
  heartbeat_at DATETIME(6) NULL,
  -- Bumped by every fenced write, so a write always changes the row whatever the client's
  -- rows-matched/rows-changed semantics.
  write_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,
  state_entered_at DATETIME(6) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  -- 1 while the apply holds its target, NULL once it is terminal (stopped counts as terminal).
  -- NULLs never collide in a UNIQUE index, so the index below allows one active apply per
  -- target and any number of finished ones. An unknown state counts as active (fail closed).
  -- The list must equal the terminal states of `machine`; a test checks it.
  active_flag TINYINT GENERATED ALWAYS AS (
    IF(state IN ('completed', 'failed', 'cancelled', 'reverted', 'stopped'), NULL, 1)
  ) STORED,
  -- 1 unless the claim class is terminal (`stopped` stays open: a start may resume it). The
  -- claim query walks this index in id order, so finished history is never scanned. The list
  -- must equal `Rules::states_in(ClaimClass::Terminal)`; a test checks it.
  claim_open TINYINT GENERATED ALWAYS AS (
    IF(state IN ('completed', 'failed', 'cancelled', 'reverted'), NULL, 1)
  ) STORED,
  PRIMARY KEY (id),
  UNIQUE KEY uq_applies_identifier (apply_identifier),
  UNIQUE KEY uq_applies_active_target (database_name, environment, active_flag),
  KEY ix_applies_claim (claim_open, id),
  KEY ix_applies_state (state, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per (apply, deployment, operation key); one per apply for now. Holds the engine's
-- persisted resume state, written in the same transaction as the apply state it accompanies.
CREATE TABLE apply_operations (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  apply_id BIGINT UNSIGNED NOT NULL,
  deployment VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  operation_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  state VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  engine_resume_state JSON NOT NULL,
  attempt INT UNSIGNED NOT NULL DEFAULT 0,
  lease_owner VARCHAR(255) NULL,
  lease_epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
  lease_acquired_at DATETIME(6) NULL,
  heartbeat_at DATETIME(6) NULL,
  created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_apply_operations_key (apply_id, deployment, operation_key),
  CONSTRAINT fk_apply_operations_apply FOREIGN KEY (apply_id) REFERENCES applies (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per DDL statement of an apply.
CREATE TABLE tasks (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  apply_id BIGINT UNSIGNED NOT NULL,
  apply_operation_id BIGINT UNSIGNED NULL,
  seq INT UNSIGNED NOT NULL,
  ddl TEXT NOT NULL,
  state VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  attempt INT UNSIGNED NOT NULL DEFAULT 0,
  error_message TEXT NULL,
  created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_tasks_seq (apply_id, seq),
  CONSTRAINT fk_tasks_apply FOREIGN KEY (apply_id) REFERENCES applies (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Durable user intent: at most one row per (apply, operation); a re-request of a finished row
-- resets it to pending.
CREATE TABLE apply_control_requests (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  apply_id BIGINT UNSIGNED NOT NULL,
  operation VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  status VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  error_message TEXT NULL,
  created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  completed_at DATETIME(6) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_apply_control_requests_op (apply_id, operation),
  CONSTRAINT fk_apply_control_requests_apply FOREIGN KEY (apply_id) REFERENCES applies (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Append-only audit: every claim and every state change, with the epoch and owner that made it.
CREATE TABLE apply_logs (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  apply_id BIGINT UNSIGNED NOT NULL,
  from_state VARCHAR(64) NOT NULL,
  to_state VARCHAR(64) NOT NULL,
  lease_epoch BIGINT UNSIGNED NOT NULL,
  lease_owner VARCHAR(255) NULL,
  cause VARCHAR(255) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  KEY ix_apply_logs_apply (apply_id, id),
  CONSTRAINT fk_apply_logs_apply FOREIGN KEY (apply_id) REFERENCES applies (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
