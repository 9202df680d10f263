-- The change as reviewed at submit: the fingerprint of its normalised statements (NULL for
-- applies submitted before it existed), and the table each task's statement touches.
ALTER TABLE applies
  ADD COLUMN ddl_fingerprint VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NULL;
ALTER TABLE tasks
  ADD COLUMN table_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
