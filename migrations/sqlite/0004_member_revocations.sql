-- Signed revocations: the revocation a revoking admin's hardware key signed, opaque to the server,
-- kept with the revoked member and handed out with the directory so that devices remove that
-- member's devices on an admin's word, never on the server's (docs/protocol.md).
ALTER TABLE members ADD COLUMN revocation BLOB;
