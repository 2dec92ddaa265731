-- The key each session was opened with (at enrollment or login), so that revoking a key ends the
-- sessions it opened. Sessions opened before this migration have none and run until they expire.
ALTER TABLE sessions ADD COLUMN credential_id BLOB;
CREATE INDEX sessions_by_key ON sessions (credential_id);
