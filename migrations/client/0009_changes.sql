-- Replies and changes to messages (docs/engine.md, "Replies, reactions, edits and deletions").
-- The message a history row answers (JSON: member, device, id), and every change (a reaction, an
-- edit or a deletion) kept apart from the message it points at, since carrying may bring a change
-- before its target: the engine folds them when the history is read.
ALTER TABLE history ADD COLUMN reply_to TEXT;

CREATE TABLE changes (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    member TEXT NOT NULL,
    target_member TEXT NOT NULL,
    target_device TEXT NOT NULL,
    target_id TEXT NOT NULL,
    change TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (device, id)
) STRICT;

CREATE INDEX changes_by_target ON changes (target_device, target_id);
