-- A member device's local store (the `tessera` CLI): the engine's state, MLS's key-value pairs and
-- the message history. Lives under the user's data directory, never on the server.

-- The engine's own state (CBOR, see client/engine/src/engine.rs `Saved`): one row.
CREATE TABLE engine (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state BLOB NOT NULL
) STRICT;

-- openmls's storage: group state, secrets, the device's signature key.
CREATE TABLE mls (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

-- Messages sent and received, each once.
CREATE TABLE history (
    id TEXT PRIMARY KEY,
    member TEXT NOT NULL,
    device TEXT NOT NULL,
    text TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX history_by_time ON history (sent_at);
