-- Messages of the circle this device keeps for other devices (MLS ciphertext it already opened
-- itself), one row per message: its sender's stream and number, the MLS epoch it was made in,
-- its sender's time and id. Bounded by the engine (docs/engine.md, "Carrying").
CREATE TABLE carried (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    id TEXT NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (stream, seq)
) STRICT;
