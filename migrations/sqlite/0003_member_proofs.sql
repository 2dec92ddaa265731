-- Signed membership: what admits each member's keys travels through the server as opaque data
-- made by the members' devices (docs/protocol.md, "Signed membership"). The server keeps it and
-- hands it out with the directory; it never reads it.

-- The issuing admin's signed statement, handed to the newcomer at enrollment.
ALTER TABLE invitations ADD COLUMN statement BLOB;

-- Admissions and endorsements of a member's keys. Kept when a key is deleted: a member's role and
-- the keys that key endorsed still rest on them.
CREATE TABLE member_proofs (
    member_id  TEXT NOT NULL REFERENCES members (id),
    proof      BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX member_proofs_by_member ON member_proofs (member_id);
