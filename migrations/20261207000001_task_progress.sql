-- What the engine last said of a task's work: its phase, rows copied of the estimated total,
-- percent, ETA, whether its runner resumed or started over, and its own words on what the work
-- waits for. Written by the operation's lease holder; advisory (no rule reads it).
ALTER TABLE tasks
  ADD COLUMN progress_phase VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  ADD COLUMN rows_copied BIGINT UNSIGNED NULL,
  ADD COLUMN rows_total BIGINT UNSIGNED NULL,
  ADD COLUMN progress_percent DOUBLE NULL,
  ADD COLUMN progress_eta VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  ADD COLUMN runner_start VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  ADD COLUMN progress_note TEXT NULL,
  ADD COLUMN progress_at DATETIME(6) NULL;
