-- The circle's root this device pinned when it joined (base64url of the founder key's
-- fingerprint): from the invitation link's fragment, or the founder's own key. Invitations this
-- device issues carry it in their links.
ALTER TABLE profile ADD COLUMN root TEXT;
