-- The commit sequencer's only state: each circle's current MLS epoch. The server never sees a commit's content.
ALTER TABLE circles ADD COLUMN mls_epoch INTEGER NOT NULL DEFAULT 0;
