-- The outbox, one row per message and peer device, written and deleted as messages are queued and
-- acknowledged (before: inside the engine's state, rewritten whole after every step). The message
-- is MLS ciphertext; `tag` names the user's message it carries, for its delivery state.
CREATE TABLE outbox (
    peer TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tag TEXT,
    message BLOB NOT NULL,
    PRIMARY KEY (peer, seq)
) STRICT;
