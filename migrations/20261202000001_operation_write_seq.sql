-- Every fenced write changes the row it writes, so that one row means success whether the
-- client is told rows matched or rows changed (a write that sets every column to the value it
-- already has would otherwise count 0 rows under rows-changed and read as a lost lease). The
-- apply row has had `write_seq` from the start; the operation row gets its own.
ALTER TABLE apply_operations
  ADD COLUMN write_seq BIGINT UNSIGNED NOT NULL DEFAULT 0;
