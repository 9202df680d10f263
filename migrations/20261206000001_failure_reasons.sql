-- Why a move into a failed state happened, as the engine said it: on the audit entry of the
-- move (the apply, its operation and its task rows carry it in error_message).
ALTER TABLE apply_logs ADD COLUMN detail TEXT NULL;
