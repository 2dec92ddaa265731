-- The whole state of a Tessera rendezvous server (SQLite).
-- Only random ids, roles, times, public passkeys and SHA-256 hashes of secrets.
-- No names, labels, emails, IP addresses or tokens in clear.

CREATE TABLE circles (
    id         TEXT PRIMARY KEY NOT NULL,  -- random UUID
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE members (
    id         TEXT PRIMARY KEY NOT NULL,  -- random UUID, also the WebAuthn user handle
    circle_id  TEXT NOT NULL REFERENCES circles (id),
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
CREATE INDEX members_by_circle ON members (circle_id);

CREATE TABLE passkeys (
    credential_id BLOB PRIMARY KEY NOT NULL,
    member_id     TEXT NOT NULL REFERENCES members (id),
    passkey       TEXT NOT NULL,           -- webauthn-rs Passkey (public key, counter, backup flags), JSON
    aaguid        TEXT,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
) STRICT;
CREATE INDEX passkeys_by_member ON passkeys (member_id);

CREATE TABLE invitations (
    id         TEXT PRIMARY KEY NOT NULL,  -- random UUID
    token_hash BLOB NOT NULL UNIQUE,       -- SHA-256 of the token; the token is never stored
    circle_id  TEXT NOT NULL REFERENCES circles (id),
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    member_id  TEXT REFERENCES members (id), -- set for a recovery invitation
    created_by TEXT REFERENCES members (id), -- NULL when issued by the operator
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    revoked_at INTEGER
) STRICT;
CREATE INDEX invitations_by_circle ON invitations (circle_id);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY NOT NULL,  -- SHA-256 of the session token
    member_id  TEXT NOT NULL REFERENCES members (id),
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_by_member ON sessions (member_id);

-- WebAuthn ceremony state is not here: a single SQLite node keeps it in memory (single use,
-- minutes). A multi-node backend (PostgreSQL) keeps it in a table of its own.
