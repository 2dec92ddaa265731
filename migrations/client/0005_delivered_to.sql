-- Which peer devices hold each of this device's messages: one row per message and peer, written
-- as the engine reports acknowledgements (a set, as the browser keeps it). Rows stored before
-- kept a count in history.delivered; a message's delivered count is that count plus its rows.
CREATE TABLE delivered_to (
    device TEXT NOT NULL,
    id TEXT NOT NULL,
    peer TEXT NOT NULL,
    PRIMARY KEY (device, id, peer)
) STRICT;
