-- Who this device is and where its server is: one row, written by `tessera join`. The session is
-- this device's own bearer token (dropped by `tessera logout`); the key file path points at the
-- software key, when one is used.
CREATE TABLE profile (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    origin TEXT NOT NULL,
    rp_id TEXT NOT NULL,
    member TEXT NOT NULL,
    device TEXT NOT NULL,
    circle TEXT NOT NULL,
    role TEXT NOT NULL,
    session TEXT,
    key_file TEXT
) STRICT;
