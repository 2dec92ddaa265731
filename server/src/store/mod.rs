//! The server's whole state behind one trait, so that SQLite (the default) and PostgreSQL can each implement it.

mod ceremonies;
mod sqlite;

pub use ceremonies::MemoryCeremonies;
pub use sqlite::{DATABASE_FILE, SqliteStore};

use std::net::IpAddr;

use async_trait::async_trait;
use tessera_wire::Role;
use uuid::Uuid;

use crate::secret::Digest;

/// How many device ids a member keeps bound to them (browsers and CLI data directories; a
/// browser whose site data is cleared starts a new one).
pub const DEVICES_PER_MEMBER: i64 = 64;

/// How many keys one member may hold (a spare or two is usual; this only stops abuse).
pub const PASSKEYS_PER_MEMBER: i64 = 16;

/// How many invitations may wait in one circle at once.
pub const PENDING_INVITATIONS_PER_CIRCLE: i64 = 1_000;

/// A member row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// Random id, also the WebAuthn user handle.
    pub id: Uuid,
    /// The member's circle.
    pub circle: Uuid,
    /// Admin or member.
    pub role: Role,
    /// Enrollment time.
    pub created_at: i64,
}

/// A passkey row: the webauthn-rs `Passkey` is kept as JSON so that the store does not depend on it.
#[derive(Debug, Clone)]
pub struct PasskeyRecord {
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// Its member.
    pub member: Uuid,
    /// The serialised webauthn-rs `Passkey` (public key, counter, backup flags).
    pub passkey_json: String,
    /// The authenticator model, when reported.
    pub aaguid: Option<Uuid>,
    /// Enrollment time.
    pub created_at: i64,
    /// Last login with this key.
    pub last_used_at: Option<i64>,
}

/// An invitation row (without its token, which is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRecord {
    /// Random id.
    pub id: Uuid,
    /// The circle it admits to.
    pub circle: Uuid,
    /// The role it grants.
    pub role: Role,
    /// For a recovery invitation: the existing member it lets enroll a new key.
    pub member: Option<Uuid>,
    /// The admin who issued it; `None` when the operator did.
    pub created_by: Option<Uuid>,
    /// Issue time.
    pub created_at: i64,
    /// End of validity.
    pub expires_at: i64,
    /// The issuing admin's signed statement, opaque (none for the operator's bootstrap link).
    pub statement: Option<Vec<u8>>,
}

/// What a successful enrollment writes, all at once.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The invitation being consumed.
    pub invitation_hash: Digest,
    /// The member: new (inserted) or existing (recovery).
    pub member: MemberRecord,
    /// Whether `member` is a newcomer to insert.
    pub new_member: bool,
    /// The first (or recovered) key.
    pub passkey: PasskeyRecord,
    /// The key's admission, made by the newcomer's device, opaque.
    pub proof: Option<Vec<u8>>,
    /// The session the enrollment opens.
    pub session: SessionRecord,
}

/// A session row.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// SHA-256 of the session token.
    pub token_hash: Digest,
    /// Its member.
    pub member: Uuid,
    /// End of validity.
    pub expires_at: i64,
    /// The key it was opened with: revoking that key ends it.
    pub credential_id: Vec<u8>,
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The invitation is unknown, already used, revoked or expired, or its member was revoked.
    #[error("the invitation is unknown, used, revoked or expired")]
    InvitationUnusable,
    /// The credential id is already registered.
    #[error("this credential is already registered")]
    CredentialExists,
    /// The member would be left without a key.
    #[error("the last key of a member cannot be removed")]
    LastPasskey,
    /// A row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Another login with the same key wrote its state (its counter) between this login's
    /// check and its write: this one, checked against an old counter, does not count.
    #[error("another login with this key came in between")]
    KeyMovedOn,
    /// Too many ceremonies are pending; try again shortly.
    #[error("too many ceremonies are pending")]
    Busy,
    /// The member holds [`PASSKEYS_PER_MEMBER`] keys already.
    #[error("the member holds the most keys allowed")]
    TooManyKeys,
    /// The circle has [`PENDING_INVITATIONS_PER_CIRCLE`] invitations waiting already.
    #[error("the circle has the most pending invitations allowed")]
    TooManyInvitations,
    /// The caller's address range has its share of pending ceremonies already.
    #[error("too many ceremonies are pending from this address range")]
    RangeBusy,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The migrations failed.
    #[error(transparent)]
    Migration(#[from] sqlx::migrate::MigrateError),
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The server's persistent state. Every method is one atomic step.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// How many circles exist.
    async fn circle_count(&self) -> StoreResult<i64>;
    /// Creates a circle together with its first (operator-issued admin) invitation.
    async fn create_circle(
        &self,
        circle: Uuid,
        now: i64,
        first_invitation: (&InvitationRecord, &Digest),
    ) -> StoreResult<()>;
    /// The circle's next sequencer slot: how many commits it accepted (0 before the first; the
    /// column is `mls_epoch`, after what it was first taken for).
    async fn next_slot(&self, circle: Uuid) -> StoreResult<u64>;
    /// Accepts the first commit for `slot`: moves the circle from `slot` to `slot + 1` and returns
    /// true; returns false (and changes nothing) when the circle's next slot is not `slot`.
    async fn claim_slot(&self, circle: Uuid, slot: u64) -> StoreResult<bool>;

    /// Stores a new invitation under the hash of its token.
    async fn insert_invitation(
        &self,
        invitation: &InvitationRecord,
        token_hash: &Digest,
    ) -> StoreResult<()>;
    /// The invitation with this token hash, if it is unused, unrevoked and unexpired.
    async fn usable_invitation(
        &self,
        token_hash: &Digest,
        now: i64,
    ) -> StoreResult<Option<InvitationRecord>>;
    /// The circle's usable invitations.
    async fn pending_invitations(
        &self,
        circle: Uuid,
        now: i64,
    ) -> StoreResult<Vec<InvitationRecord>>;
    /// Revokes a pending invitation of the circle; false if there is none with that id.
    async fn revoke_invitation(&self, circle: Uuid, id: Uuid, now: i64) -> StoreResult<bool>;

    /// Stores a ceremony's state under the hash of its id, counted against the share of the
    /// address range (`crate::client::ClientAddr::range`) it was begun from.
    async fn put_ceremony(
        &self,
        id_hash: &Digest,
        state: &str,
        expires_at: i64,
        range: IpAddr,
    ) -> StoreResult<()>;
    /// Takes (deletes and returns) a ceremony's state; `None` if unknown, already taken or expired.
    async fn take_ceremony(&self, id_hash: &Digest, now: i64) -> StoreResult<Option<String>>;

    /// Consumes the invitation (only while its issuer is an unrevoked admin) and writes the
    /// member, key and session, atomically.
    async fn enroll(&self, enrollment: &Enrollment, now: i64) -> StoreResult<()>;
    /// Adds a key to an existing member (who must not be revoked).
    async fn add_passkey(&self, passkey: &PasskeyRecord, proof: Option<&[u8]>) -> StoreResult<()>;
    /// A member's keys.
    async fn passkeys_of(&self, member: Uuid) -> StoreResult<Vec<PasskeyRecord>>;
    /// Every key of the circle's members, those revoked with a signed revocation included
    /// (devices check what they signed before against it).
    async fn passkeys_of_circle(&self, circle: Uuid) -> StoreResult<Vec<PasskeyRecord>>;
    /// The proofs of the keys of the same members: (member, opaque proof), oldest first.
    async fn proofs_of_circle(&self, circle: Uuid) -> StoreResult<Vec<(Uuid, Vec<u8>)>>;
    /// The key with this credential id, and its member unless revoked.
    async fn login_key(
        &self,
        credential_id: &[u8],
    ) -> StoreResult<Option<(PasskeyRecord, Option<MemberRecord>)>>;
    /// After a login: saves the key's updated state (counter, backup flags) and opens the
    /// session, atomically, if the key's state is still `checked_against` (the state the login
    /// was checked against); [`StoreError::KeyMovedOn`] when another login wrote it meanwhile.
    async fn record_login(
        &self,
        credential_id: &[u8],
        (checked_against, passkey_json): (&str, &str),
        session: &SessionRecord,
        now: i64,
    ) -> StoreResult<()>;
    /// Deletes one of a member's keys, never the last, keeps its signed `revocation` (opaque)
    /// with the member's proofs and ends the sessions the key opened: their digests (for their
    /// sockets to close), or `None` if the member has no such key.
    async fn revoke_passkey(
        &self,
        member: Uuid,
        credential_id: &[u8],
        revocation: &[u8],
        now: i64,
    ) -> StoreResult<Option<Vec<Digest>>>;

    /// An unrevoked member.
    async fn member(&self, id: Uuid) -> StoreResult<Option<MemberRecord>>;
    /// The circle's unrevoked members.
    async fn members_of(&self, circle: Uuid) -> StoreResult<Vec<MemberRecord>>;
    /// Makes an unrevoked member of the circle an admin, keeping the signed `promotion` (opaque)
    /// among their proofs; false when there is no such member, they are an admin already, or
    /// `by` is no longer an admin of the circle when the write happens.
    async fn promote_member(
        &self,
        (circle, by): (Uuid, Uuid),
        id: Uuid,
        now: i64,
        promotion: &[u8],
    ) -> StoreResult<bool>;
    /// The circle's revoked members, each with the revocation an admin signed (opaque), oldest
    /// first.
    async fn revoked_members_of(&self, circle: Uuid) -> StoreResult<Vec<(MemberRecord, Vec<u8>)>>;
    /// Revokes a member of the circle, keeping the signed `revocation` (opaque), ending their
    /// sessions, their pending recovery invitations and every pending invitation they issued;
    /// false when there is no such member or `by` is no longer an admin of the circle when the
    /// write happens (two admins revoking each other at once: one of them wins).
    async fn revoke_member(
        &self,
        (circle, by): (Uuid, Uuid),
        id: Uuid,
        now: i64,
        revocation: &[u8],
    ) -> StoreResult<bool>;

    /// The unrevoked member of an unexpired session.
    async fn session_member(
        &self,
        token_hash: &Digest,
        now: i64,
    ) -> StoreResult<Option<MemberRecord>>;
    /// Binds `device` to the member who first connects with it, in their circle, and notes that it
    /// was seen: true when the id is the member's, false when it is another member's. A member
    /// keeps the [`DEVICES_PER_MEMBER`] ids they used last; older ones are forgotten.
    async fn claim_device(
        &self,
        (circle, member): (Uuid, Uuid),
        device: Uuid,
        now: i64,
    ) -> StoreResult<bool>;
    /// Opens a session renewed by a device key: only while the key that certified the device
    /// (`session.credential_id`) is still one of the member's and the member is unrevoked, checked
    /// in the same write; false otherwise.
    async fn renew_session(&self, session: &SessionRecord) -> StoreResult<bool>;
    /// Ends a session.
    async fn delete_session(&self, token_hash: &Digest) -> StoreResult<()>;

    /// Deletes expired ceremonies and sessions; returns how many rows went.
    async fn purge_expired(&self, now: i64) -> StoreResult<u64>;
}
