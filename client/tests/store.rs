//! The device's local store on a real SQLite file: an engine saved, the file closed and opened
//! again, the engine restored; the history keeps each message once.

mod common;

use common::engine;
use tessera_client::store::{DeviceStore, HistoryPage, StoreError};
use tessera_client::writer::Writer;
use tessera_engine::carry::{CarriedChange, CarriedRow};
use tessera_engine::delivery::{OutboxChange, Queued};
use tessera_engine::files::{CHUNK_BYTES, FileChange, FileInfo, FileOffer, FileRow, FileState};
use tessera_engine::history::Cursor;
use tessera_engine::{ChatMessage, Engine, EngineConfig, HistoryChange, StoreWrite, StoredDevice};
use uuid::Uuid;
use web_time::Instant;

/// The engine's first write (its key, its state).
fn first_write(engine: &mut Engine) -> StoreWrite {
    engine
        .next_turn()
        .expect("encode")
        .and_then(|turn| turn.write)
        .expect("changed")
}

/// A new store in a temporary directory (kept while the first value lives) and a new engine's
/// first write.
async fn fresh_store() -> (tempfile::TempDir, DeviceStore, StoreWrite) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DeviceStore::open(&dir.path().join("device.sqlite"))
        .await
        .expect("open");
    (dir, store, first_write(&mut engine()))
}

/// `write` with these history rows.
fn with_history(write: &StoreWrite, history: &[HistoryChange]) -> StoreWrite {
    StoreWrite {
        history: history.to_vec(),
        ..write.clone()
    }
}

fn message(text: &str, sent_at: i64) -> ChatMessage {
    ChatMessage {
        id: Uuid::new_v4(),
        member: Uuid::new_v4(),
        device: Uuid::new_v4(),
        text: text.into(),
        sent_at,
        file: None,
        reply_to: None,
    }
}

#[tokio::test]
async fn an_engine_and_its_history_survive_closing_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.sqlite");
    let mut engine = engine();
    let (member, device) = (engine.member(), engine.device());
    engine
        .set_display_name(Instant::now(), "Ada L.")
        .expect("name");
    let snapshot = first_write(&mut engine);
    assert!(!snapshot.mls.is_empty(), "the device key is in MLS's store");
    let first = message("first", 1);
    let second = message("second", 2);
    let history = [
        HistoryChange::Add {
            message: first.clone(),
            outgoing: true,
        },
        HistoryChange::Delivered {
            device: first.device,
            id: first.id,
            peer: Uuid::new_v4(),
        },
        HistoryChange::Add {
            message: second.clone(),
            outgoing: false,
        },
    ];
    {
        let store = DeviceStore::open(&path).await.expect("open");
        assert!(
            store.load().await.expect("load").is_none(),
            "a new store is empty"
        );
        store
            .write(&with_history(&snapshot, &history))
            .await
            .expect("save");
        // The same message again (a repeated event) is kept once.
        store
            .write(&with_history(&snapshot, &history[2..]))
            .await
            .expect("save again");
    }
    let store = DeviceStore::open(&path).await.expect("reopen");
    let stored = store.load().await.expect("load").expect("saved");
    let restored = Engine::restore(
        EngineConfig::new("http://localhost:8080", "localhost"),
        stored,
    )
    .expect("restore");
    assert_eq!((restored.member(), restored.device()), (member, device));
    assert_eq!(
        restored.display_names().get(&member).map(String::as_str),
        Some("Ada L.")
    );
    let history = store.history(10).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].shown.message, first);
    assert!(history[0].outgoing);
    assert_eq!(history[0].delivered, 1);
    assert_eq!(history[1].shown.message, second);
    assert!(!history[1].outgoing);
    assert_eq!(
        store.history(1).await.expect("history")[0].shown.message,
        second
    );
}

#[tokio::test]
async fn a_message_id_reused_by_another_device_shadows_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DeviceStore::open(&dir.path().join("device.sqlite"))
        .await
        .expect("open");
    let snapshot = first_write(&mut engine());
    let own = message("mine", 1);
    // Another member's device sends a message under the same id first, then the genuine one
    // arrives, and acknowledgements of that id count for this device's own message only.
    let mut shadow = message("shadow", 2);
    shadow.id = own.id;
    let mut genuine = message("genuine", 3);
    genuine.id = own.id;
    let history = [
        HistoryChange::Add {
            message: own.clone(),
            outgoing: true,
        },
        HistoryChange::Add {
            message: shadow.clone(),
            outgoing: false,
        },
        HistoryChange::Add {
            message: genuine.clone(),
            outgoing: false,
        },
        HistoryChange::Delivered {
            device: own.device,
            id: own.id,
            peer: Uuid::new_v4(),
        },
    ];
    store
        .write(&with_history(&snapshot, &history))
        .await
        .expect("save");
    let history = store.history(10).await.expect("history");
    let texts: Vec<&str> = history
        .iter()
        .map(|h| h.shown.message.text.as_str())
        .collect();
    assert_eq!(texts, ["mine", "shadow", "genuine"]);
    let delivered: Vec<u32> = history.iter().map(|h| h.delivered).collect();
    assert_eq!(delivered, [1, 0, 0]);
}

#[tokio::test]
async fn a_history_stored_before_it_was_keyed_by_device_is_kept() {
    // A store as the schema before 0004 left it, with two messages in it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.sqlite");
    let earlier = dir.path().join("migrations");
    std::fs::create_dir(&earlier).expect("dir");
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/client");
    for name in ["0001_device.sql", "0002_profile.sql", "0003_outbox.sql"] {
        std::fs::copy(all.join(name), earlier.join(name)).expect("copy");
    }
    let (first, second) = (message("first", 5), message("second", 5));
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.expect("pool");
        sqlx::migrate::Migrator::new(earlier.as_path())
            .await
            .expect("migrations")
            .run(&pool)
            .await
            .expect("migrate");
        for (m, outgoing, delivered) in [(&first, 1, 2), (&second, 0, 0)] {
            sqlx::query(
                "INSERT INTO history (id, member, device, text, sent_at, outgoing, delivered) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(m.id.to_string())
            .bind(m.member.to_string())
            .bind(m.device.to_string())
            .bind(&m.text)
            .bind(m.sent_at)
            .bind(outgoing)
            .bind(delivered)
            .execute(&pool)
            .await
            .expect("insert");
        }
        pool.close().await;
    }
    let store = DeviceStore::open(&path).await.expect("migrated");
    let history = store.history(10).await.expect("history");
    let kept: Vec<(&ChatMessage, bool, u32)> = history
        .iter()
        .map(|h| (&h.shown.message, h.outgoing, h.delivered))
        .collect();
    assert_eq!(
        kept,
        [(&first, true, 2), (&second, false, 0)],
        "same rows, same order"
    );
}

#[tokio::test]
async fn a_corrupt_saved_state_is_refused_not_half_restored() {
    let result = Engine::restore(
        EngineConfig::new("http://localhost:8080", "localhost"),
        StoredDevice {
            state: b"not cbor".to_vec(),
            ..StoredDevice::default()
        },
    );
    assert!(result.is_err());
}

#[tokio::test]
async fn the_outbox_is_kept_row_by_row_across_snapshots() {
    let (_dir, store, state) = fresh_store().await;
    let (peer, tag) = (Uuid::new_v4(), Uuid::new_v4());
    let row = |seq: u64, tag: Option<Uuid>| Queued {
        peer,
        seq,
        tag,
        message: format!("ciphertext {seq}").into_bytes(),
    };
    let snapshot = |outbox: Vec<OutboxChange>| StoreWrite {
        outbox,
        ..state.clone()
    };
    store
        .write(&snapshot(vec![
            OutboxChange::Put(row(0, Some(tag))),
            OutboxChange::Put(row(1, None)),
            OutboxChange::Put(row(2, None)),
        ]))
        .await
        .expect("save");
    store
        .write(&snapshot(vec![OutboxChange::Delete { peer, seq: 1 }]))
        .await
        .expect("save");
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(
        stored.outbox.into_values().collect::<Vec<_>>(),
        vec![row(0, Some(tag)), row(2, None)],
        "the acknowledged row is gone, the others intact"
    );
    // A snapshot that cannot be written as a whole writes nothing: the same row twice.
    let twice = snapshot(vec![
        OutboxChange::Delete { peer, seq: 0 },
        OutboxChange::Put(row(2, None)),
    ]);
    assert!(store.write(&twice).await.is_err());
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.outbox.len(), 2, "the delete was rolled back too");
}

#[tokio::test]
async fn messages_kept_for_others_are_stored_row_by_row_and_read_back_whole() {
    let (_dir, store, state) = fresh_store().await;
    let stream = Uuid::new_v4();
    let row = |seq: u64| CarriedRow {
        stream,
        seq,
        epoch: 3 + seq,
        sent_at: 1_700_000_000_000 + i64::try_from(seq).expect("small"),
        id: Uuid::new_v4(),
        message: format!("ciphertext {seq}").into_bytes(),
    };
    let rows = [row(0), row(1), row(2)];
    let snapshot = |carried: Vec<CarriedChange>| StoreWrite {
        carried,
        ..state.clone()
    };
    store
        .write(&snapshot(
            rows.iter().cloned().map(CarriedChange::Put).collect(),
        ))
        .await
        .expect("save");
    store
        .write(&snapshot(vec![CarriedChange::Delete { stream, seq: 0 }]))
        .await
        .expect("save");
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(
        stored.carried.into_values().collect::<Vec<_>>(),
        rows[1..].to_vec(),
        "the dropped row is gone, the others as written"
    );
}

#[tokio::test]
async fn files_are_stored_row_by_row_and_a_file_message_keeps_what_it_shares() {
    let (_dir, store, state) = fresh_store().await;
    let row = |name: &str, state: FileState| FileRow {
        id: Uuid::new_v4(),
        member: Uuid::new_v4(),
        device: Uuid::new_v4(),
        sent_at: 1_700_000_000_000,
        offer: FileOffer {
            name: name.into(),
            size: 40_000,
            mime: "application/pdf".into(),
            sha256: vec![1; 32].into(),
            key: vec![2; 32].into(),
            chunk: CHUNK_BYTES,
        },
        state,
    };
    let held = row("minutes.pdf", FileState::Held);
    let mut receiving = row(
        "scan.pdf",
        FileState::Receiving {
            chunks: 1,
            hash: vec![9; 40],
        },
    );
    let deleted = row("gone.pdf", FileState::Held);
    let snapshot = |files: Vec<FileChange>| StoreWrite {
        files,
        ..state.clone()
    };
    store
        .write(&snapshot(
            [&held, &receiving, &deleted]
                .into_iter()
                .cloned()
                .map(FileChange::Put)
                .collect(),
        ))
        .await
        .expect("save");
    receiving.state = FileState::Receiving {
        chunks: 2,
        hash: vec![8; 40],
    };
    store
        .write(&snapshot(vec![
            FileChange::Put(receiving.clone()),
            FileChange::Delete(deleted.id),
        ]))
        .await
        .expect("save");
    let stored = store.load().await.expect("load").expect("saved");
    let mut expected = vec![held.clone(), receiving.clone()];
    expected.sort_by_key(|r| r.id);
    assert_eq!(stored.files.into_values().collect::<Vec<_>>(), expected);

    // A file's message: its history row keeps what it shares.
    let mut message = message("", 5);
    message.id = held.id;
    message.file = Some(FileInfo {
        name: held.offer.name.clone(),
        size: held.offer.size,
        mime: held.offer.mime.clone(),
    });
    store
        .write(&with_history(
            &state,
            &[HistoryChange::Add {
                message: message.clone(),
                outgoing: false,
            }],
        ))
        .await
        .expect("save");
    let history = store.history(10).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].shown.message, message);
    let page = store.history_page(None, 10).await.expect("page");
    assert_eq!(page.rows, vec![message]);
}

#[tokio::test]
async fn an_outbox_row_altered_on_disk_is_refused_as_malformed_not_half_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("device.sqlite");
    let store = DeviceStore::open(&path).await.expect("open");
    let mut engine = engine();
    let mut snapshot = first_write(&mut engine);
    let peer = Uuid::new_v4();
    snapshot.outbox = vec![OutboxChange::Put(Queued {
        peer,
        seq: 3,
        tag: None,
        message: b"ciphertext".to_vec(),
    })];
    store.write(&snapshot).await.expect("save");
    let disk = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("the same file");
    for (change, expected) in [
        ("UPDATE outbox SET peer = 'not a device id'", "id"),
        ("UPDATE outbox SET seq = -1", "outbox"),
        ("UPDATE outbox SET tag = 'not a message id'", "id"),
    ] {
        let mut tx = disk.begin().await.expect("begin");
        sqlx::query(change).execute(&mut *tx).await.expect("alter");
        tx.commit().await.expect("commit");
        match store.load().await {
            Err(StoreError::Malformed(what)) => assert_eq!(what, expected, "{change}"),
            other => panic!("{change}: {other:?}"),
        }
        // Put the row back as it was for the next case.
        sqlx::query("UPDATE outbox SET peer = ?, seq = 3, tag = NULL")
            .bind(peer.to_string())
            .execute(&disk)
            .await
            .expect("restore");
        assert_eq!(
            store
                .load()
                .await
                .expect("load")
                .expect("saved")
                .outbox
                .len(),
            1
        );
    }
    disk.close().await;
}

/// The rows of the shared fixture, applied to this store as the native driver applies the engine's
/// writes, leave the history the fixture says; `tests/browser/store.test.mjs` applies the same
/// rows to the page's IndexedDB store and expects the same history.
#[tokio::test]
async fn the_engines_history_rows_leave_the_history_both_stores_hold() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/fixtures/history_writes.json"))
            .expect("the fixture is JSON");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DeviceStore::open(&dir.path().join("device.sqlite"))
        .await
        .expect("open");
    let state = first_write(&mut engine());
    for batch in fixture["writes"].as_array().expect("writes") {
        let rows: Vec<HistoryChange> = serde_json::from_value(batch.clone()).expect("history rows");
        store
            .write(&with_history(&state, &rows))
            .await
            .expect("write");
    }
    let held: Vec<serde_json::Value> = store
        .history(100)
        .await
        .expect("history")
        .into_iter()
        .map(|h| {
            let mut row = serde_json::to_value(&h.shown).expect("json");
            row["outgoing"] = h.outgoing.into();
            row["delivered"] = h.delivered.into();
            row
        })
        .collect();
    assert_eq!(serde_json::Value::from(held), fixture["history"]);
    // The deleted message's text is gone from the store itself, not only from what is shown.
    let page = store.history_page(None, 100).await.expect("page");
    let deleted = page
        .rows
        .iter()
        .find(|m| m.sent_at == 3000)
        .expect("the deleted row stays, empty");
    assert_eq!(deleted.text, "");
}

#[tokio::test]
async fn history_pages_list_newest_first_in_one_order_and_count_what_is_older() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = DeviceStore::open(&dir.path().join("device.sqlite"))
        .await
        .expect("open");
    let snapshot = first_write(&mut engine());
    // Five messages, three written in the same millisecond (their devices and ids break the tie).
    let messages = [
        message("a", 10),
        message("b", 20),
        message("c", 20),
        message("d", 20),
        message("e", 30),
    ];
    let history: Vec<HistoryChange> = messages
        .iter()
        .map(|m| HistoryChange::Add {
            message: m.clone(),
            outgoing: false,
        })
        .collect();
    store
        .write(&with_history(&snapshot, &history))
        .await
        .expect("save");
    let mut expected: Vec<ChatMessage> = messages.to_vec();
    expected.sort_by_key(|m| std::cmp::Reverse(Cursor::of(m)));

    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let HistoryPage { rows, older, .. } = store.history_page(before, 2).await.expect("page");
        let already: usize = pages.iter().map(Vec::len).sum();
        assert_eq!(
            older as usize,
            expected.len() - already,
            "counted from {before:?}"
        );
        if rows.is_empty() {
            break;
        }
        before = rows.last().map(Cursor::of);
        pages.push(rows);
    }
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat(), expected, "each once, newest first");
}

#[tokio::test]
async fn the_writer_applies_writes_in_order_and_releases_only_what_is_durable() {
    let (_dir, store, state) = fresh_store().await;
    let peer = Uuid::new_v4();
    let row = |seq: u64| Queued {
        peer,
        seq,
        tag: None,
        message: vec![7; 100],
    };
    let with_outbox = |outbox: Vec<OutboxChange>| StoreWrite {
        outbox,
        ..state.clone()
    };
    let mut writer: Writer<u32> = Writer::start(store.clone());
    // Nothing waits for a write: released at once.
    writer.submit(None, 0).await.expect("submit");
    assert_eq!(writer.released(), Some(0));
    // A hundred writes, each queuing a row and deleting the one before: in order, the last stays.
    for seq in 0..100u64 {
        let mut changes = vec![OutboxChange::Put(row(seq))];
        if seq > 0 {
            changes.push(OutboxChange::Delete { peer, seq: seq - 1 });
        }
        writer
            .submit(
                Some(with_outbox(changes)),
                u32::try_from(seq).expect("small") + 1,
            )
            .await
            .expect("submit");
    }
    writer.submit(None, 1_000).await.expect("submit");
    let mut released = Vec::new();
    while !writer.idle() {
        while let Some(then) = writer.released() {
            // Whatever is released, its write is in the file (or a later one is).
            let stored = store.load().await.expect("load").expect("saved");
            if (1..=100).contains(&then) {
                let newest = stored.outbox.keys().map(|(_, seq)| *seq).max();
                assert!(newest >= Some(u64::from(then) - 1), "{then} released early");
            }
            released.push(then);
        }
        if !writer.idle() {
            writer.durable().await.expect("durable");
        }
    }
    assert_eq!(released, (1..=100).chain([1_000]).collect::<Vec<_>>());
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(
        stored.outbox.into_values().collect::<Vec<_>>(),
        vec![row(99)]
    );

    // A write that fails (the same row put twice) releases nothing after it, and the writer says so.
    let twice = with_outbox(vec![OutboxChange::Put(row(99))]);
    writer.submit(Some(twice), 2_000).await.expect("submit");
    writer.submit(None, 2_001).await.expect("submit");
    assert!(writer.flush().await.is_err());
    assert_eq!(writer.released(), None);
    // The writing task has stopped: nothing more becomes durable.
    assert!(matches!(writer.flush().await, Err(StoreError::Stopped)));
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.outbox.len(), 1, "the failed write left nothing");
}
