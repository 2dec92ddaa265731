//! The device's local store in SQLite (sqlx): the engine's writes (its state, MLS's key-value
//! pairs, the outbox, one row per message and peer, and the message history), each written in one
//! transaction before the outputs of its turn are acted on, so a crash loses nothing acknowledged.
//! The store applies rows; what they are is the engine's to decide.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row as _, SqlitePool};
use tessera_engine::carry::{CarriedChange, CarriedRow};
use tessera_engine::changes::{self, Change, MessageChange, MessageRef, ShownMessage};
use tessera_engine::delivery::{OutboxChange, Queued};
use tessera_engine::files::{FileChange, FileRow};
use tessera_engine::history::Cursor;
use tessera_engine::search::Query;
use tessera_engine::trust::RootFingerprint;
use tessera_engine::{ChatMessage, Engine, EngineError, HistoryChange, StoreWrite, StoredDevice};
use tessera_wire::Role;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/client");

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("the local store failed: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("the local store could not be migrated: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value is not what it should be.
    #[error("the local store holds a malformed {0}")]
    Malformed(&'static str),
    /// The task writing the engine's turns stopped after a failure it reported.
    #[error("the local store's writer has stopped")]
    Stopped,
}

/// A message in the history, as its changes leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The message, its text the latest edit's, what its changes made of it.
    pub shown: ShownMessage,
    /// Whether this device sent it.
    pub outgoing: bool,
    /// How many peer devices acknowledged it (outgoing messages).
    pub delivered: u32,
}

/// Who this device is and where its server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The server's origin.
    pub origin: String,
    /// The WebAuthn relying party id the member's keys are registered for.
    pub rp_id: String,
    /// This member.
    pub member: Uuid,
    /// This device.
    pub device: Uuid,
    /// The member's circle.
    pub circle: Uuid,
    /// The member's role when last logged in.
    pub role: Role,
    /// The bearer session, while logged in.
    pub session: Option<String>,
    /// The software key file, when the member uses one.
    pub key_file: Option<String>,
    /// The circle's root this device pinned when it joined (none for a device saved before
    /// signed membership).
    pub root: Option<RootFingerprint>,
}

/// One device's local store.
#[derive(Debug, Clone)]
pub struct DeviceStore {
    pool: SqlitePool,
}

impl DeviceStore {
    /// Opens (creating if needed) the store at `path`. Synchronous commits (`FULL`): a write
    /// is on disk before anything it allows goes out.
    ///
    /// # Errors
    /// When SQLite or the migration fails.
    pub async fn open(path: &Path) -> Result<DeviceStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(DeviceStore { pool })
    }

    /// The saved engine, if this device has one.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn load(&self) -> Result<Option<StoredDevice>, StoreError> {
        let Some(state): Option<Vec<u8>> =
            sqlx::query_scalar("SELECT state FROM engine WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let rows = sqlx::query("SELECT key, value FROM mls")
            .fetch_all(&self.pool)
            .await?;
        let mls = rows
            .into_iter()
            .map(|r| (r.get::<Vec<u8>, _>(0), r.get::<Vec<u8>, _>(1)))
            .collect();
        let rows = sqlx::query("SELECT peer, seq, tag, message FROM outbox")
            .fetch_all(&self.pool)
            .await?;
        let mut outbox = BTreeMap::new();
        for r in rows {
            let peer = stored_id(r.get(0))?;
            let seq =
                u64::try_from(r.get::<i64, _>(1)).map_err(|_| StoreError::Malformed("outbox"))?;
            let tag = r.get::<Option<&str>, _>(2).map(stored_id).transpose()?;
            let message = r.get(3);
            outbox.insert(
                (peer, seq),
                Queued {
                    peer,
                    seq,
                    tag,
                    message,
                },
            );
        }
        let rows = sqlx::query("SELECT stream, seq, epoch, sent_at, id, message FROM carried")
            .fetch_all(&self.pool)
            .await?;
        let mut carried = BTreeMap::new();
        for r in rows {
            let malformed = |_: std::num::TryFromIntError| StoreError::Malformed("carried");
            let row = CarriedRow {
                stream: stored_id(r.get(0))?,
                seq: u64::try_from(r.get::<i64, _>(1)).map_err(malformed)?,
                epoch: u64::try_from(r.get::<i64, _>(2)).map_err(malformed)?,
                sent_at: r.get(3),
                id: stored_id(r.get(4))?,
                message: r.get(5),
            };
            carried.insert((row.stream, row.seq), row);
        }
        let files = self
            .files()
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        Ok(Some(StoredDevice {
            state,
            mls,
            outbox,
            carried,
            files,
        }))
    }

    /// Every file this device knows of (sent, received, being received or refused).
    ///
    /// # Errors
    /// When SQLite fails or a row is malformed.
    pub async fn files(&self) -> Result<Vec<FileRow>, StoreError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT row FROM files")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|bytes| FileRow::decode(bytes).map_err(|_| StoreError::Malformed("file row")))
            .collect()
    }

    /// Stores what the engine has to store, for a command that runs it without a connection: the
    /// outputs are dropped (the engine repeats what still matters when the device next runs).
    ///
    /// # Errors
    /// When the engine cannot encode its state, or SQLite fails.
    pub async fn save_offline(&self, engine: &mut Engine) -> Result<(), TurnError> {
        while let Some(turn) = engine.next_turn()? {
            if let Some(write) = &turn.write {
                self.write(write).await?;
            }
        }
        Ok(())
    }

    /// Applies one write of the engine, in one transaction.
    ///
    /// # Errors
    /// When SQLite fails (nothing is written).
    pub async fn write(&self, write: &StoreWrite) -> Result<(), StoreError> {
        self.write_all(std::slice::from_ref(write)).await
    }

    /// Applies writes of the engine in their order, all in one transaction (one sync to disk for
    /// all of them).
    ///
    /// # Errors
    /// When SQLite fails (nothing is written).
    pub async fn write_all(&self, writes: &[StoreWrite]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for write in writes {
            apply(&mut tx, write).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// This device's profile, once `tessera join` wrote it.
    ///
    /// # Errors
    /// When SQLite fails or a row is malformed.
    pub async fn profile(&self) -> Result<Option<Profile>, StoreError> {
        let Some(r) = sqlx::query(
            "SELECT origin, rp_id, member, device, circle, role, session, key_file, root \
             FROM profile WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let role = Role::parse(r.get(5)).ok_or(StoreError::Malformed("role"))?;
        Ok(Some(Profile {
            origin: r.get(0),
            rp_id: r.get(1),
            member: stored_id(r.get(2))?,
            device: stored_id(r.get(3))?,
            circle: stored_id(r.get(4))?,
            role,
            session: r.get(6),
            key_file: r.get(7),
            root: r
                .get::<Option<String>, _>(8)
                .map(|text| {
                    RootFingerprint::parse(&text).map_err(|_| StoreError::Malformed("root"))
                })
                .transpose()?,
        }))
    }

    /// Writes this device's profile.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn save_profile(&self, profile: &Profile) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO profile (id, origin, rp_id, member, device, circle, role, session, \
             key_file, root) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
             origin = excluded.origin, rp_id = excluded.rp_id, member = excluded.member, device = excluded.device, \
             circle = excluded.circle, role = excluded.role, session = excluded.session, \
             key_file = excluded.key_file, root = excluded.root",
        )
        .bind(&profile.origin)
        .bind(&profile.rp_id)
        .bind(profile.member.to_string())
        .bind(profile.device.to_string())
        .bind(profile.circle.to_string())
        .bind(profile.role.as_str())
        .bind(&profile.session)
        .bind(&profile.key_file)
        .bind(profile.root.map(|r| r.to_text()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A page of the history for another device of this member ([`tessera_engine::Output::ReadHistory`]): up to
    /// `limit` messages strictly older than `before` in the order `(sent_at, device, id)`, newest
    /// first, the changes to them, and how many messages are older than `before` in all.
    ///
    /// # Errors
    /// When SQLite fails or a row is malformed.
    pub async fn history_page(
        &self,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let (sent_at, device, id) = before.map_or((None, None, None), |c| {
            (
                Some(c.sent_at),
                Some(c.device.to_string()),
                Some(c.id.to_string()),
            )
        });
        let rows = sqlx::query(
            "SELECT id, member, device, text, sent_at, file, reply_to FROM history \
             WHERE ? IS NULL OR (sent_at, device, id) < (?, ?, ?) \
             ORDER BY sent_at DESC, device DESC, id DESC LIMIT ?",
        )
        .bind(sent_at)
        .bind(sent_at)
        .bind(&device)
        .bind(&id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let older: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM history WHERE ? IS NULL OR (sent_at, device, id) < (?, ?, ?)",
        )
        .bind(sent_at)
        .bind(sent_at)
        .bind(&device)
        .bind(&id)
        .fetch_one(&self.pool)
        .await?;
        let rows = rows
            .into_iter()
            .map(|r| stored_message(&r))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let changes = self.changes_to(&rows).await?;
        Ok(HistoryPage {
            rows,
            changes,
            older: u64::try_from(older).unwrap_or(0),
        })
    }

    /// The changes kept for `messages`.
    async fn changes_to(&self, messages: &[ChatMessage]) -> Result<Vec<MessageChange>, StoreError> {
        let mut changes = Vec::new();
        for rows in messages.chunks(ROWS_PER_STATEMENT) {
            let found = QueryBuilder::new(
                "SELECT id, member, device, target_member, target_device, target_id, change, \
                 sent_at FROM changes WHERE (target_device, target_id) IN (",
            )
            .push_values(rows, |mut b, m| {
                b.push_bind(m.device.to_string())
                    .push_bind(m.id.to_string());
            })
            .push(")")
            .build()
            .fetch_all(&self.pool)
            .await?;
            for r in found {
                changes.push(MessageChange {
                    id: stored_id(r.get(0))?,
                    member: stored_id(r.get(1))?,
                    device: stored_id(r.get(2))?,
                    target: MessageRef {
                        member: stored_id(r.get(3))?,
                        device: stored_id(r.get(4))?,
                        id: stored_id(r.get(5))?,
                    },
                    change: stored_json(Some(r.get(6)), "change")?
                        .ok_or(StoreError::Malformed("change"))?,
                    sent_at: r.get(7),
                });
            }
        }
        Ok(changes)
    }

    /// Keeps the session (and role) a renewal granted in the profile, if there is one.
    ///
    /// # Errors
    /// When SQLite fails.
    pub async fn save_session(&self, session: &str, role: Role) -> Result<(), StoreError> {
        sqlx::query("UPDATE profile SET session = ?, role = ? WHERE id = 1")
            .bind(session)
            .bind(role.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored messages whose id starts with `prefix` (hex digits, hyphens ignored), at most
    /// `limit` of them, newest first: how people name a message on the command line.
    ///
    /// # Errors
    /// When SQLite fails or a row is malformed.
    pub async fn messages_named(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let digits: String = prefix
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, member, device, text, sent_at, file, reply_to FROM history \
             WHERE substr(replace(id, '-', ''), 1, ?) = ? ORDER BY sent_at DESC LIMIT ?",
        )
        .bind(i64::try_from(digits.len()).unwrap_or(i64::MAX))
        .bind(&digits)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| stored_message(&r)).collect()
    }

    /// The last `limit` messages, oldest first.
    ///
    /// # Errors
    /// When SQLite fails or a row is malformed.
    pub async fn history(&self, limit: u32) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut entries = self.newest(limit, 0).await?;
        entries.reverse();
        Ok(entries)
    }

    /// The messages `query` finds ([`Query::finds`]), the newest `limit` of them, oldest first:
    /// the history read newest first, a page at a time, as its changes leave it.
    ///
    /// # Errors
    /// When SQLite fails or a row is malformed.
    pub async fn search(
        &self,
        query: &Query,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        const PAGE: u32 = 500;
        let mut found = Vec::new();
        let mut offset = 0;
        while found.len() < limit {
            let page = self.newest(PAGE, offset).await?;
            if page.is_empty() {
                break;
            }
            offset += page.len();
            found.extend(page.into_iter().filter(|e| query.finds(&e.shown)));
        }
        found.truncate(limit);
        found.reverse();
        Ok(found)
    }

    /// `limit` messages after the newest `offset`, newest first, as their changes leave them.
    async fn newest(&self, limit: u32, offset: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, member, device, text, sent_at, file, reply_to, outgoing, delivered + \
             (SELECT COUNT(*) FROM delivered_to d WHERE d.device = h.device AND d.id = h.id) FROM \
             (SELECT rowid AS seq, * FROM history) AS h \
             ORDER BY sent_at DESC, seq DESC LIMIT ? OFFSET ?",
        )
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut messages = Vec::with_capacity(rows.len());
        let mut kept = Vec::with_capacity(rows.len());
        for r in rows {
            messages.push(stored_message(&r)?);
            let delivered = u32::try_from(r.get::<i64, _>(8))
                .map_err(|_| StoreError::Malformed("delivered"))?;
            kept.push((r.get::<i64, _>(7) != 0, delivered));
        }
        let changes = self.changes_to(&messages).await?;
        Ok(changes::show_all(messages, &changes)
            .into_iter()
            .zip(kept)
            .map(|(shown, (outgoing, delivered))| HistoryEntry {
                shown,
                outgoing,
                delivered,
            })
            .collect())
    }
}

/// Why a turn could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The engine's state could not be encoded.
    #[error("the engine failed: {0}")]
    Engine(#[from] EngineError),
    /// The local store failed: nothing the turn led to is acted on.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A sequence number as SQLite's integer.
fn sql_seq(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| StoreError::Malformed("sequence number"))
}

/// One write of the engine inside `tx`: a statement per table and kind of change, each with many
/// rows (a statement costs a round trip to SQLite's thread, a row little more than its bytes).
async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    write: &StoreWrite,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO engine (id, state) VALUES (1, ?) \
         ON CONFLICT (id) DO UPDATE SET state = excluded.state",
    )
    .bind(&write.state)
    .execute(&mut **tx)
    .await?;
    let mut mls_puts = Vec::new();
    let mut mls_deletes = Vec::new();
    for (key, value) in &write.mls {
        match value {
            Some(value) => mls_puts.push((key, value)),
            None => mls_deletes.push(key),
        }
    }
    put_pairs(tx, ("mls", "key", "value"), &mls_puts).await?;
    delete_keys(tx, ("mls", "key"), &mls_deletes).await?;

    let mut outbox_puts = Vec::new();
    let mut outbox_deletes = Vec::new();
    for change in &write.outbox {
        match change {
            OutboxChange::Put(row) => outbox_puts.push((row, sql_seq(row.seq)?)),
            OutboxChange::Delete { peer, seq } => outbox_deletes.push((*peer, sql_seq(*seq)?)),
        }
    }
    for rows in outbox_puts.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new("INSERT INTO outbox (peer, seq, tag, message) ")
            .push_values(rows, |mut b, (row, seq)| {
                b.push_bind(row.peer.to_string())
                    .push_bind(*seq)
                    .push_bind(row.tag.map(|t| t.to_string()))
                    .push_bind(&row.message);
            })
            .build()
            .execute(&mut **tx)
            .await?;
    }
    delete_keyed(tx, "outbox", "peer, seq", &outbox_deletes).await?;

    let mut carried_puts = Vec::new();
    let mut carried_deletes = Vec::new();
    for change in &write.carried {
        match change {
            CarriedChange::Put(row) => {
                carried_puts.push((row, sql_seq(row.seq)?, sql_seq(row.epoch)?));
            }
            CarriedChange::Delete { stream, seq } => {
                carried_deletes.push((*stream, sql_seq(*seq)?));
            }
        }
    }
    for rows in carried_puts.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new("INSERT INTO carried (stream, seq, epoch, sent_at, id, message) ")
            .push_values(rows, |mut b, (row, seq, epoch)| {
                b.push_bind(row.stream.to_string())
                    .push_bind(*seq)
                    .push_bind(*epoch)
                    .push_bind(row.sent_at)
                    .push_bind(row.id.to_string())
                    .push_bind(&row.message);
            })
            .push(" ON CONFLICT (stream, seq) DO NOTHING")
            .build()
            .execute(&mut **tx)
            .await?;
    }
    delete_keyed(tx, "carried", "stream, seq", &carried_deletes).await?;

    let mut added = Vec::new();
    let mut delivered = Vec::new();
    let mut changed = Vec::new();
    for change in &write.history {
        match change {
            HistoryChange::Add { message, outgoing } => added.push((message, *outgoing)),
            HistoryChange::Delivered { device, id, peer } => {
                delivered.push((*device, *id, *peer));
            }
            HistoryChange::Change { change } => changed.push(change),
        }
    }
    for rows in added.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new(
            "INSERT INTO history (id, member, device, text, sent_at, outgoing, file, reply_to) ",
        )
        .push_values(rows, |mut b, (message, outgoing)| {
            b.push_bind(message.id.to_string())
                .push_bind(message.member.to_string())
                .push_bind(message.device.to_string())
                .push_bind(&message.text)
                .push_bind(message.sent_at)
                .push_bind(i64::from(*outgoing))
                .push_bind(
                    message
                        .file
                        .as_ref()
                        .and_then(|f| serde_json::to_string(f).ok()),
                )
                .push_bind(
                    message
                        .reply_to
                        .as_ref()
                        .and_then(|r| serde_json::to_string(r).ok()),
                );
        })
        .push(" ON CONFLICT (device, id) DO NOTHING")
        .build()
        .execute(&mut **tx)
        .await?;
    }
    for rows in delivered.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new("INSERT INTO delivered_to (device, id, peer) ")
            .push_values(rows, |mut b, (device, id, peer)| {
                b.push_bind(device.to_string())
                    .push_bind(id.to_string())
                    .push_bind(peer.to_string());
            })
            .push(" ON CONFLICT (device, id, peer) DO NOTHING")
            .build()
            .execute(&mut **tx)
            .await?;
    }

    write_changes(tx, &changed).await?;

    let mut file_puts = Vec::new();
    let mut file_deletes = Vec::new();
    for change in &write.files {
        match change {
            FileChange::Put(row) => file_puts.push((row.id.to_string(), row.encode())),
            FileChange::Delete(id) => file_deletes.push(id.to_string()),
        }
    }
    put_pairs(tx, ("files", "id", "row"), &file_puts).await?;
    delete_keys(tx, ("files", "id"), &file_deletes).await?;
    Ok(())
}

/// Puts `(key, value)` rows into `table` (`key` its primary key), replacing a key's value there.
async fn put_pairs<'a, K, V>(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    (table, key, value): (&str, &str, &str),
    rows: &'a [(K, V)],
) -> Result<(), StoreError>
where
    &'a K: sqlx::Encode<'a, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send,
    &'a V: sqlx::Encode<'a, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send,
{
    for rows in rows.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new(format!("INSERT INTO {table} ({key}, {value}) "))
            .push_values(rows, |mut b, (k, v)| {
                b.push_bind(k).push_bind(v);
            })
            .push(format!(
                " ON CONFLICT ({key}) DO UPDATE SET {value} = excluded.{value}"
            ))
            .build()
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Deletes the rows of `table` whose `column` is one of `keys`.
async fn delete_keys<'a, K>(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    (table, column): (&str, &str),
    keys: &'a [K],
) -> Result<(), StoreError>
where
    &'a K: sqlx::Encode<'a, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + Send,
{
    for rows in keys.chunks(ROWS_PER_STATEMENT) {
        let mut query = QueryBuilder::new(format!("DELETE FROM {table} WHERE {column} IN ("));
        let mut separated = query.separated(", ");
        for key in rows {
            separated.push_bind(key);
        }
        query.push(")").build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Keeps changes to messages, once each; a deletion by a message's author empties the message's
/// stored text and file and drops the author's edits to it, where the message is kept.
async fn write_changes(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    changes: &[&MessageChange],
) -> Result<(), StoreError> {
    for rows in changes.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new(
            "INSERT INTO changes (device, id, member, target_member, target_device, target_id, \
             change, sent_at) ",
        )
        .push_values(rows, |mut b, c| {
            b.push_bind(c.device.to_string())
                .push_bind(c.id.to_string())
                .push_bind(c.member.to_string())
                .push_bind(c.target.member.to_string())
                .push_bind(c.target.device.to_string())
                .push_bind(c.target.id.to_string())
                .push_bind(serde_json::to_string(&c.change).unwrap_or_default())
                .push_bind(c.sent_at);
        })
        .push(" ON CONFLICT (device, id) DO NOTHING")
        .build()
        .execute(&mut **tx)
        .await?;
    }
    for c in changes {
        if c.change != Change::Delete || c.member != c.target.member {
            continue;
        }
        let (device, id, member) = (
            c.target.device.to_string(),
            c.target.id.to_string(),
            c.member.to_string(),
        );
        sqlx::query(
            "UPDATE history SET text = '', file = NULL, reply_to = NULL \
             WHERE device = ? AND id = ? AND member = ?",
        )
        .bind(&device)
        .bind(&id)
        .bind(&member)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "DELETE FROM changes WHERE target_device = ? AND target_id = ? AND member = ? \
             AND json_extract(change, '$.kind') = 'edit'",
        )
        .bind(&device)
        .bind(&id)
        .bind(&member)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A page of the history for another device of this member, as [`DeviceStore::history_page`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The rows, newest first.
    pub rows: Vec<ChatMessage>,
    /// The changes kept for them.
    pub changes: Vec<MessageChange>,
    /// How many rows are older than the page's start.
    pub older: u64,
}

/// A history row's message, from its first seven columns: `id, member, device, text, sent_at,
/// file, reply_to`.
fn stored_message(r: &SqliteRow) -> Result<ChatMessage, StoreError> {
    Ok(ChatMessage {
        id: stored_id(r.get(0))?,
        member: stored_id(r.get(1))?,
        device: stored_id(r.get(2))?,
        text: r.get(3),
        sent_at: r.get(4),
        file: stored_json(r.get(5), "file")?,
        reply_to: stored_json(r.get(6), "reply")?,
    })
}

/// A value kept as JSON in a nullable column.
fn stored_json<T: serde::de::DeserializeOwned>(
    json: Option<String>,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    json.map(|text| serde_json::from_str(&text).map_err(|_| StoreError::Malformed(what)))
        .transpose()
}

/// Rows in one statement: far below SQLite's 32,766 bound parameters at six a row.
const ROWS_PER_STATEMENT: usize = 500;

/// Deletes the rows of `table` whose two-column key `columns` (an id kept as text, a number) is
/// one of `keys`.
async fn delete_keyed(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    table: &str,
    columns: &str,
    keys: &[(Uuid, i64)],
) -> Result<(), StoreError> {
    for rows in keys.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::new(format!("DELETE FROM {table} WHERE ({columns}) IN ("))
            .push_values(rows, |mut b, (id, number)| {
                b.push_bind(id.to_string()).push_bind(*number);
            })
            .push(")")
            .build()
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// An id as the store keeps it (text).
fn stored_id(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|_| StoreError::Malformed("id"))
}
