//! The device's local store on a real SQLite file: an engine saved, the file closed and opened
//! again, the engine restored; the history keeps each message once.

mod common;

use common::engine;
use tessera_client::store::DeviceStore;
use tessera_engine::{ChatMessage, Engine, EngineConfig, Event};
use uuid::Uuid;
use web_time::Instant;

fn message(text: &str, sent_at: i64) -> ChatMessage {
    ChatMessage {
        id: Uuid::new_v4(),
        member: Uuid::new_v4(),
        device: Uuid::new_v4(),
        text: text.into(),
        sent_at,
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
    let snapshot = engine.take_snapshot().expect("encode").expect("changed");
    assert!(!snapshot.mls.is_empty(), "the device key is in MLS's store");
    let first = message("first", 1);
    let second = message("second", 2);
    let events = [
        Event::Message {
            message: first.clone(),
            outgoing: true,
        },
        Event::Delivered {
            id: first.id,
            device: Uuid::new_v4(),
        },
        Event::Message {
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
        store.save(&snapshot, &events).await.expect("save");
        // The same message again (a repeated event) is kept once.
        store
            .save(&snapshot, &events[2..])
            .await
            .expect("save again");
    }
    let store = DeviceStore::open(&path).await.expect("reopen");
    let (state, mls) = store.load().await.expect("load").expect("saved");
    let restored = Engine::restore(
        EngineConfig::new("http://localhost:8080", "localhost"),
        &state,
        mls,
    )
    .expect("restore");
    assert_eq!((restored.member(), restored.device()), (member, device));
    assert_eq!(
        restored.display_names().get(&member).map(String::as_str),
        Some("Ada L.")
    );
    let history = store.history(10).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].message, first);
    assert!(history[0].outgoing);
    assert_eq!(history[0].delivered, 1);
    assert_eq!(history[1].message, second);
    assert!(!history[1].outgoing);
    assert_eq!(store.history(1).await.expect("history")[0].message, second);
}

#[tokio::test]
async fn a_corrupt_saved_state_is_refused_not_half_restored() {
    let result = Engine::restore(
        EngineConfig::new("http://localhost:8080", "localhost"),
        b"not cbor",
        std::collections::HashMap::new(),
    );
    assert!(result.is_err());
}
