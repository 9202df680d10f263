-- When a request was last asked for: `updated_at` also moves when the request completes, and a
-- re-request resets the row, so neither it nor `created_at` says when a person last asked.
ALTER TABLE apply_control_requests ADD COLUMN requested_at DATETIME(6) NULL;
-- Who asked (`cli:alice@db-7`, `api`, `dashboard`), for the timeline.
ALTER TABLE apply_control_requests ADD COLUMN requested_by VARCHAR(255) NULL;
UPDATE apply_control_requests SET requested_at = created_at;
