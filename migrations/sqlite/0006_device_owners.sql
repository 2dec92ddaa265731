-- Which member a device id belongs to, in its circle: the member who first connected with it.
-- Another member's claim to the id is refused whether the device is online or not, so the answer
-- tells nothing of its presence. Random ids and times only.
CREATE TABLE device_owners (
    circle_id    TEXT NOT NULL REFERENCES circles (id),
    device_id    TEXT NOT NULL,            -- random UUID chosen by the device
    member_id    TEXT NOT NULL REFERENCES members (id),
    last_seen_at INTEGER NOT NULL,
    PRIMARY KEY (circle_id, device_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX device_owners_by_member ON device_owners (member_id, last_seen_at);
