-- Files shared in the circle: one row per file, as the engine encodes it (what was offered, its
-- key, and how far it is received), and the file a history message shares (JSON: name, size, type).
CREATE TABLE files (
    id TEXT PRIMARY KEY NOT NULL,
    row BLOB NOT NULL
) STRICT;

ALTER TABLE history ADD COLUMN file TEXT;
