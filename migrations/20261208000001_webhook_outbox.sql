-- Webhooks through a transactional outbox. Every state change, control request and failure of
-- an apply inserts one `webhook_outbox` row in the transaction that makes it, so an event
-- exists exactly when its change committed. Events are always recorded, whether or not any
-- endpoint is configured; deliverers prune delivered ones after a retention.
CREATE TABLE webhook_outbox (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  apply_id BIGINT UNSIGNED NOT NULL,
  -- The rollout operation that moved; NULL for an apply without deployments and for requests.
  apply_operation_id BIGINT UNSIGNED NULL,
  kind VARCHAR(32) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  -- The event without its `id` and `at`, which the deliverer adds from `id` and `created_at`.
  payload JSON NOT NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  KEY ix_webhook_outbox_apply (apply_id, id),
  KEY ix_webhook_outbox_created (created_at, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Every endpoint a deliverer has served. `swept_through`: every event with a lower or equal id
-- has its delivery row for this endpoint (or was older than the endpoint). `seen_at`: the last
-- time a deliverer served it; an endpoint unseen for the retention is forgotten.
CREATE TABLE webhook_endpoints (
  name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  swept_through BIGINT UNSIGNED NOT NULL,
  created_at DATETIME(6) NOT NULL,
  seen_at DATETIME(6) NOT NULL,
  PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per (event, endpoint). A deliverer leases a row by bumping `lease_epoch` and moving
-- `next_attempt_at` to the lease's end, so a dead deliverer's row falls due again by itself;
-- every mark is fenced by the epoch.
CREATE TABLE webhook_deliveries (
  event_id BIGINT UNSIGNED NOT NULL,
  endpoint VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  apply_id BIGINT UNSIGNED NOT NULL,
  attempts INT UNSIGNED NOT NULL DEFAULT 0,
  next_attempt_at DATETIME(6) NOT NULL,
  delivered_at DATETIME(6) NULL,
  last_error TEXT NULL,
  last_error_at DATETIME(6) NULL,
  lease_owner VARCHAR(255) NULL,
  lease_epoch BIGINT UNSIGNED NOT NULL DEFAULT 0,
  lease_expires_at DATETIME(6) NULL,
  created_at DATETIME(6) NOT NULL,
  -- 1 until delivered, then NULL: the due index holds only outstanding deliveries.
  outstanding TINYINT GENERATED ALWAYS AS (IF(delivered_at IS NULL, 1, NULL)) STORED,
  PRIMARY KEY (event_id, endpoint),
  KEY ix_webhook_deliveries_due (endpoint, outstanding, next_attempt_at),
  -- An apply's deliveries to an endpoint go one at a time, oldest first: the head is the
  -- lowest outstanding event of (endpoint, apply).
  KEY ix_webhook_deliveries_head (endpoint, apply_id, outstanding, event_id),
  CONSTRAINT fk_webhook_deliveries_event FOREIGN KEY (event_id) REFERENCES webhook_outbox (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
