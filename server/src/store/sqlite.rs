//! The SQLite implementation of the store: one file under the data directory, WAL mode.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row as _, SqlitePool};
use tessera_wire::Role;
use uuid::Uuid;

use super::{
    Enrollment, InvitationRecord, MemberRecord, MemoryCeremonies, PasskeyRecord, SessionRecord,
    Store, StoreError, StoreResult,
};
use crate::secret::Digest;

/// The migrations for this backend, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The file name of the database inside the data directory.
pub const DATABASE_FILE: &str = "tessera.db";

/// A store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    ceremonies: Arc<MemoryCeremonies>,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/tessera.db` and applies the migrations.
    ///
    /// # Errors
    /// When the directory or database cannot be created, opened or migrated.
    pub async fn open(data_dir: &Path) -> StoreResult<SqliteStore> {
        create_private_dir(data_dir)
            .map_err(|e| StoreError::Corrupt(format!("cannot create the data directory: {e}")))?;
        let database = data_dir.join(DATABASE_FILE);
        let fresh = !database.exists();
        let options = SqliteConnectOptions::new()
            .filename(&database)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode, NORMAL syncs at checkpoints: a crash of the process loses nothing, a power
            // loss at most the last commits (sessions, last-used times).
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted rows (ended sessions, used invitations' rows) are overwritten, not left in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        if fresh {
            make_private(&database)
                .map_err(|e| StoreError::Corrupt(format!("cannot restrict the database: {e}")))?;
        }
        Ok(SqliteStore {
            pool,
            ceremonies: Arc::new(MemoryCeremonies::default()),
        })
    }
}

impl SqliteStore {
    /// Holds at most `capacity` pending ceremonies (see [`MemoryCeremonies::new`]).
    #[must_use]
    pub fn ceremony_capacity(mut self, capacity: usize) -> SqliteStore {
        self.ceremonies = Arc::new(MemoryCeremonies::new(capacity));
        self
    }
}

/// Creates the data directory (and any missing parent) readable by the server's user only
/// (0700 on unix), as systemd's `StateDirectory` does; one that exists stays as its operator
/// made it.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes a database this server created, and its WAL files, readable by its user only (0600).
fn make_private(database: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for suffix in ["", "-wal", "-shm"] {
            let mut path = database.as_os_str().to_owned();
            path.push(suffix);
            let path = std::path::PathBuf::from(path);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = database;
    Ok(())
}

fn uuid_of(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column)?;
    Uuid::from_str(&text).map_err(|_| StoreError::Corrupt(format!("{column} is not a uuid")))
}

fn optional_uuid_of(row: &SqliteRow, column: &str) -> StoreResult<Option<Uuid>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| Uuid::from_str(&t))
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("{column} is not a uuid")))
}

fn role_of(row: &SqliteRow) -> StoreResult<Role> {
    let name: String = row.try_get("role")?;
    Role::parse(&name).ok_or_else(|| StoreError::Corrupt(format!("unknown role {name:?}")))
}

fn member_of(row: &SqliteRow) -> StoreResult<MemberRecord> {
    Ok(MemberRecord {
        id: uuid_of(row, "id")?,
        circle: uuid_of(row, "circle_id")?,
        role: role_of(row)?,
        created_at: row.try_get("created_at")?,
    })
}

fn passkey_of(row: &SqliteRow) -> StoreResult<PasskeyRecord> {
    Ok(PasskeyRecord {
        credential_id: row.try_get("credential_id")?,
        member: uuid_of(row, "member_id")?,
        passkey_json: row.try_get("passkey")?,
        aaguid: optional_uuid_of(row, "aaguid")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

fn invitation_of(row: &SqliteRow) -> StoreResult<InvitationRecord> {
    Ok(InvitationRecord {
        id: uuid_of(row, "id")?,
        circle: uuid_of(row, "circle_id")?,
        role: role_of(row)?,
        member: optional_uuid_of(row, "member_id")?,
        created_by: optional_uuid_of(row, "created_by")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        statement: row.try_get("statement")?,
    })
}

/// The columns that [`member_of`] reads, as a literal for `concat!`.
/// The condition, inside a write to `members`, that the member bound next (the one deciding) is
/// still an unrevoked admin of the same circle: checked in the write itself, not before it.
macro_rules! still_admin {
    () => {
        "EXISTS (SELECT 1 FROM members a WHERE a.id = ? AND a.circle_id = members.circle_id \
         AND a.role = 'admin' AND a.revoked_at IS NULL)"
    };
}

macro_rules! member_columns {
    () => {
        "id, circle_id, role, created_at"
    };
}
/// The columns that [`passkey_of`] reads.
macro_rules! passkey_columns {
    () => {
        "credential_id, member_id, passkey, aaguid, created_at, last_used_at"
    };
}
/// The columns that [`invitation_of`] reads.
macro_rules! invitation_columns {
    () => {
        "id, circle_id, role, member_id, created_by, created_at, expires_at, statement"
    };
}

/// Whether an error is the unique-key violation of an already registered credential.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

async fn insert_invitation_in<'e, E>(
    executor: E,
    invitation: &InvitationRecord,
    token_hash: &Digest,
) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    // One statement: the count and the insert cannot be split by another admin's invitation.
    let inserted = sqlx::query(
        "INSERT INTO invitations \
         (id, token_hash, circle_id, role, member_id, created_by, created_at, expires_at, statement) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9 \
         WHERE (SELECT COUNT(*) FROM invitations WHERE circle_id = ?3 AND used_at IS NULL \
                AND revoked_at IS NULL AND expires_at > ?7) < ?10",
    )
    .bind(invitation.id.to_string())
    .bind(&token_hash[..])
    .bind(invitation.circle.to_string())
    .bind(invitation.role.as_str())
    .bind(invitation.member.map(|m| m.to_string()))
    .bind(invitation.created_by.map(|m| m.to_string()))
    .bind(invitation.created_at)
    .bind(invitation.expires_at)
    .bind(invitation.statement.as_deref())
    .bind(super::PENDING_INVITATIONS_PER_CIRCLE)
    .execute(executor)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::TooManyInvitations);
    }
    Ok(())
}

async fn insert_proof_in<'e, E>(
    executor: E,
    member: Uuid,
    proof: Option<&[u8]>,
    now: i64,
) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let Some(proof) = proof else { return Ok(()) };
    sqlx::query("INSERT INTO member_proofs (member_id, proof, created_at) VALUES (?, ?, ?)")
        .bind(member.to_string())
        .bind(proof)
        .bind(now)
        .execute(executor)
        .await?;
    Ok(())
}

async fn insert_passkey_in<'e, E>(executor: E, passkey: &PasskeyRecord) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    // One statement: the count and the insert cannot be split by another enrollment.
    let inserted = sqlx::query(
        "INSERT INTO passkeys (credential_id, member_id, passkey, aaguid, created_at, last_used_at) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6 \
         WHERE (SELECT COUNT(*) FROM passkeys WHERE member_id = ?2) < ?7",
    )
    .bind(&passkey.credential_id)
    .bind(passkey.member.to_string())
    .bind(&passkey.passkey_json)
    .bind(passkey.aaguid.map(|a| a.to_string()))
    .bind(passkey.created_at)
    .bind(passkey.last_used_at)
    .bind(super::PASSKEYS_PER_MEMBER)
    .execute(executor)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::CredentialExists
        } else {
            StoreError::Database(e)
        }
    })?;
    if inserted.rows_affected() == 0 {
        return Err(StoreError::TooManyKeys);
    }
    Ok(())
}

async fn insert_session_in<'e, E>(executor: E, session: &SessionRecord) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(
        "INSERT INTO sessions (token_hash, member_id, expires_at, credential_id) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(&session.token_hash[..])
    .bind(session.member.to_string())
    .bind(session.expires_at)
    .bind(&session.credential_id[..])
    .execute(executor)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn circle_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM circles")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_circle(
        &self,
        circle: Uuid,
        now: i64,
        (invitation, token_hash): (&InvitationRecord, &Digest),
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO circles (id, created_at) VALUES (?, ?)")
            .bind(circle.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_invitation_in(&mut *tx, invitation, token_hash).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn next_slot(&self, circle: Uuid) -> StoreResult<u64> {
        let slot: Option<i64> = sqlx::query_scalar("SELECT mls_epoch FROM circles WHERE id = ?")
            .bind(circle.to_string())
            .fetch_optional(&self.pool)
            .await?;
        u64::try_from(slot.unwrap_or(0)).map_err(|_| StoreError::Corrupt("negative slot".into()))
    }

    async fn claim_slot(&self, circle: Uuid, slot: u64) -> StoreResult<bool> {
        let Ok(slot) = i64::try_from(slot) else {
            return Ok(false);
        };
        let advanced = sqlx::query(
            "UPDATE circles SET mls_epoch = mls_epoch + 1 WHERE id = ? AND mls_epoch = ?",
        )
        .bind(circle.to_string())
        .bind(slot)
        .execute(&self.pool)
        .await?;
        Ok(advanced.rows_affected() == 1)
    }

    async fn insert_invitation(
        &self,
        invitation: &InvitationRecord,
        token_hash: &Digest,
    ) -> StoreResult<()> {
        insert_invitation_in(&self.pool, invitation, token_hash).await
    }

    async fn usable_invitation(
        &self,
        token_hash: &Digest,
        now: i64,
    ) -> StoreResult<Option<InvitationRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            invitation_columns!(),
            " FROM invitations \
             WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?"
        ))
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(invitation_of).transpose()
    }

    async fn pending_invitations(
        &self,
        circle: Uuid,
        now: i64,
    ) -> StoreResult<Vec<InvitationRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            invitation_columns!(),
            " FROM invitations \
             WHERE circle_id = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ? \
             ORDER BY created_at, id"
        ))
        .bind(circle.to_string())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(invitation_of).collect()
    }

    async fn revoke_invitation(&self, circle: Uuid, id: Uuid, now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE invitations SET revoked_at = ? \
             WHERE id = ? AND circle_id = ? AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(circle.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_ceremony(
        &self,
        id_hash: &Digest,
        state: &str,
        expires_at: i64,
        range: IpAddr,
    ) -> StoreResult<()> {
        // One process serves: ceremony state stays in memory and never reaches the disk.
        self.ceremonies.put(id_hash, state, expires_at, range)
    }

    async fn take_ceremony(&self, id_hash: &Digest, now: i64) -> StoreResult<Option<String>> {
        Ok(self.ceremonies.take(id_hash, now))
    }

    async fn enroll(&self, enrollment: &Enrollment, now: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // The write comes first so that SQLite takes its write lock at once. An invitation admits
        // only while its issuer is an admin of the circle (the operator's first link has none).
        let consumed = sqlx::query(
            "UPDATE invitations SET used_at = ? \
             WHERE token_hash = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ? \
             AND (created_by IS NULL OR created_by IN \
                  (SELECT id FROM members WHERE role = 'admin' AND revoked_at IS NULL))",
        )
        .bind(now)
        .bind(&enrollment.invitation_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if consumed.rows_affected() != 1 {
            return Err(StoreError::InvitationUnusable);
        }
        let member = &enrollment.member;
        if enrollment.new_member {
            sqlx::query(
                "INSERT INTO members (id, circle_id, role, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(member.id.to_string())
            .bind(member.circle.to_string())
            .bind(member.role.as_str())
            .bind(member.created_at)
            .execute(&mut *tx)
            .await?;
        } else {
            let active: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM members WHERE id = ? AND circle_id = ? AND revoked_at IS NULL",
            )
            .bind(member.id.to_string())
            .bind(member.circle.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if active.is_none() {
                return Err(StoreError::InvitationUnusable);
            }
        }
        insert_passkey_in(&mut *tx, &enrollment.passkey).await?;
        insert_proof_in(&mut *tx, member.id, enrollment.proof.as_deref(), now).await?;
        insert_session_in(&mut *tx, &enrollment.session).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_passkey(&self, passkey: &PasskeyRecord, proof: Option<&[u8]>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        insert_passkey_in(&mut *tx, passkey).await?;
        insert_proof_in(&mut *tx, passkey.member, proof, passkey.created_at).await?;
        let active: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM members WHERE id = ? AND revoked_at IS NULL")
                .bind(passkey.member.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if active.is_none() {
            return Err(StoreError::Corrupt(
                "member revoked during the ceremony".into(),
            ));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn passkeys_of(&self, member: Uuid) -> StoreResult<Vec<PasskeyRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys WHERE member_id = ? ORDER BY created_at, credential_id"
        ))
        .bind(member.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(passkey_of).collect()
    }

    async fn passkeys_of_circle(&self, circle: Uuid) -> StoreResult<Vec<PasskeyRecord>> {
        let rows = sqlx::query(
            "SELECT p.credential_id, p.member_id, p.passkey, p.aaguid, p.created_at, p.last_used_at \
             FROM passkeys p JOIN members m ON m.id = p.member_id \
             WHERE m.circle_id = ? AND (m.revoked_at IS NULL OR m.revocation IS NOT NULL) \
             ORDER BY p.created_at, p.credential_id",
        )
        .bind(circle.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(passkey_of).collect()
    }

    async fn proofs_of_circle(&self, circle: Uuid) -> StoreResult<Vec<(Uuid, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT f.member_id, f.proof FROM member_proofs f JOIN members m ON m.id = f.member_id \
             WHERE m.circle_id = ? AND (m.revoked_at IS NULL OR m.revocation IS NOT NULL) \
             ORDER BY f.created_at, f.rowid",
        )
        .bind(circle.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((uuid_of(row, "member_id")?, row.try_get("proof")?)))
            .collect()
    }

    async fn login_key(
        &self,
        credential_id: &[u8],
    ) -> StoreResult<Option<(PasskeyRecord, Option<MemberRecord>)>> {
        let row = sqlx::query(
            "SELECT p.credential_id, p.member_id, p.passkey, p.aaguid, p.created_at, p.last_used_at, \
                    m.id, m.circle_id, m.role, m.created_at AS member_created_at, m.revoked_at \
             FROM passkeys p JOIN members m ON m.id = p.member_id WHERE p.credential_id = ?",
        )
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let member = if revoked_at.is_some() {
            None
        } else {
            Some(MemberRecord {
                id: uuid_of(&row, "id")?,
                circle: uuid_of(&row, "circle_id")?,
                role: role_of(&row)?,
                created_at: row.try_get("member_created_at")?,
            })
        };
        Ok(Some((passkey_of(&row)?, member)))
    }

    async fn record_login(
        &self,
        credential_id: &[u8],
        (checked_against, passkey_json): (&str, &str),
        session: &SessionRecord,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Compare and set: the counter a login was checked against must still be the stored one.
        let written = sqlx::query(
            "UPDATE passkeys SET passkey = ?, last_used_at = ? \
             WHERE credential_id = ? AND passkey = ?",
        )
        .bind(passkey_json)
        .bind(now)
        .bind(credential_id)
        .bind(checked_against)
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() != 1 {
            return Err(StoreError::KeyMovedOn);
        }
        insert_session_in(&mut *tx, session).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_passkey(
        &self,
        member: Uuid,
        credential_id: &[u8],
        revocation: &[u8],
        now: i64,
    ) -> StoreResult<Option<Vec<Digest>>> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM passkeys WHERE member_id = ? AND credential_id = ?")
            .bind(member.to_string())
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(None);
        }
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE member_id = ?")
            .bind(member.to_string())
            .fetch_one(&mut *tx)
            .await?;
        if left == 0 {
            // Dropping the transaction rolls the deletion back.
            return Err(StoreError::LastPasskey);
        }
        insert_proof_in(&mut *tx, member, Some(revocation), now).await?;
        let ended: Vec<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM sessions WHERE member_id = ? AND credential_id = ? RETURNING token_hash",
        )
        .bind(member.to_string())
        .bind(credential_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        ended
            .into_iter()
            .map(|hash| {
                Digest::try_from(hash.as_slice())
                    .map_err(|_| StoreError::Corrupt("a session's token hash".into()))
            })
            .collect::<StoreResult<_>>()
            .map(Some)
    }

    async fn member(&self, id: Uuid) -> StoreResult<Option<MemberRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            member_columns!(),
            " FROM members WHERE id = ? AND revoked_at IS NULL"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(member_of).transpose()
    }

    async fn members_of(&self, circle: Uuid) -> StoreResult<Vec<MemberRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_columns!(),
            " FROM members WHERE circle_id = ? AND revoked_at IS NULL \
             ORDER BY created_at, id"
        ))
        .bind(circle.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member_of).collect()
    }

    async fn promote_member(
        &self,
        (circle, by): (Uuid, Uuid),
        id: Uuid,
        now: i64,
        promotion: &[u8],
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let promoted = sqlx::query(concat!(
            "UPDATE members SET role = 'admin' \
             WHERE id = ? AND circle_id = ? AND role = 'member' AND revoked_at IS NULL AND ",
            still_admin!()
        ))
        .bind(id.to_string())
        .bind(circle.to_string())
        .bind(by.to_string())
        .execute(&mut *tx)
        .await?;
        if promoted.rows_affected() != 1 {
            return Ok(false);
        }
        insert_proof_in(&mut *tx, id, Some(promotion), now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revoked_members_of(&self, circle: Uuid) -> StoreResult<Vec<(MemberRecord, Vec<u8>)>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_columns!(),
            ", revocation FROM members \
             WHERE circle_id = ? AND revoked_at IS NOT NULL AND revocation IS NOT NULL \
             ORDER BY created_at, id"
        ))
        .bind(circle.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((member_of(row)?, row.try_get("revocation")?)))
            .collect()
    }

    async fn revoke_member(
        &self,
        (circle, by): (Uuid, Uuid),
        id: Uuid,
        now: i64,
        revocation: &[u8],
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let revoked = sqlx::query(concat!(
            "UPDATE members SET revoked_at = ?, revocation = ? \
             WHERE id = ? AND circle_id = ? AND revoked_at IS NULL AND ",
            still_admin!()
        ))
        .bind(now)
        .bind(revocation)
        .bind(id.to_string())
        .bind(circle.to_string())
        .bind(by.to_string())
        .execute(&mut *tx)
        .await?;
        if revoked.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM sessions WHERE member_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        // Their recovery invitations, and every invitation they issued.
        sqlx::query(
            "UPDATE invitations SET revoked_at = ? \
             WHERE (member_id = ? OR created_by = ?) AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn session_member(
        &self,
        token_hash: &Digest,
        now: i64,
    ) -> StoreResult<Option<MemberRecord>> {
        let row = sqlx::query(
            "SELECT m.id, m.circle_id, m.role, m.created_at \
             FROM sessions s JOIN members m ON m.id = s.member_id \
             WHERE s.token_hash = ? AND s.expires_at > ? AND m.revoked_at IS NULL",
        )
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(member_of).transpose()
    }

    async fn renew_session(&self, session: &SessionRecord) -> StoreResult<bool> {
        let written = sqlx::query(
            "INSERT INTO sessions (token_hash, member_id, expires_at, credential_id) \
             SELECT ?, m.id, ?, p.credential_id \
             FROM members m JOIN passkeys p ON p.member_id = m.id \
             WHERE m.id = ? AND m.revoked_at IS NULL AND p.credential_id = ?",
        )
        .bind(&session.token_hash[..])
        .bind(session.expires_at)
        .bind(session.member.to_string())
        .bind(&session.credential_id[..])
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() == 1)
    }

    async fn claim_device(
        &self,
        (circle, member): (Uuid, Uuid),
        device: Uuid,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let owner: String = sqlx::query_scalar(
            "INSERT INTO device_owners (circle_id, device_id, member_id, last_seen_at) \
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (circle_id, device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at \
             WHERE member_id = excluded.member_id \
             RETURNING member_id",
        )
        .bind(circle.to_string())
        .bind(device.to_string())
        .bind(member.to_string())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_default();
        if owner != member.to_string() {
            return Ok(false);
        }
        sqlx::query(
            "DELETE FROM device_owners WHERE member_id = ?1 AND device_id != ?2 \
             AND device_id NOT IN (SELECT device_id FROM device_owners WHERE member_id = ?1 \
             ORDER BY last_seen_at DESC LIMIT ?3)",
        )
        .bind(member.to_string())
        .bind(device.to_string())
        .bind(super::DEVICES_PER_MEMBER)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_session(&self, token_hash: &Digest) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(&token_hash[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_expired(&self, now: i64) -> StoreResult<u64> {
        let ceremonies = self.ceremonies.purge(now);
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(ceremonies + sessions.rows_affected())
    }
}
