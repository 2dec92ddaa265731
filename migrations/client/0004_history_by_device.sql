-- A message is known by its sending device and its id: the id is its sender's to choose, so keyed
-- by the id alone another member could shadow a message by sending one with the same id first.
CREATE TABLE history_by_device (
    id TEXT NOT NULL,
    member TEXT NOT NULL,
    device TEXT NOT NULL,
    text TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, id)
) STRICT;

-- In the order they were stored (the history lists ties by that order).
INSERT INTO history_by_device (id, member, device, text, sent_at, outgoing, delivered)
    SELECT id, member, device, text, sent_at, outgoing, delivered FROM history ORDER BY rowid;

DROP TABLE history;
ALTER TABLE history_by_device RENAME TO history;
CREATE INDEX history_by_time ON history (sent_at);
