//! The native driver without a reachable server: every command of a burst far larger than one
//! batch is answered, and the device stops when asked.

mod common;

use std::time::Duration;

use futures_util::future::join_all;
use tessera_client::api::ApiClient;
use tessera_client::device::{Connection, DeviceHandle, Stopped};
use tessera_client::files::FileDir;
use tessera_client::signal::Backoff;
use tessera_client::store::DeviceStore;

#[tokio::test]
async fn every_command_of_a_burst_is_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = common::engine();
    let (member, device) = (engine.member(), engine.device());
    let store = DeviceStore::open(&dir.path().join("device.db"))
        .await
        .expect("store");
    // Nothing listens on port 9 of loopback: the signalling client keeps retrying meanwhile.
    let api = ApiClient::new(url::Url::parse("http://localhost:9").expect("url"));
    let handle = DeviceHandle::start(
        engine,
        store,
        FileDir::in_data_dir(dir.path()),
        Connection {
            api,
            bind: [127, 0, 0, 1].into(),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_millis(200)),
            relay_only: false,
        },
    )
    .await
    .expect("the device starts");

    let statuses = join_all((0..300).map(|_| handle.status())).await;
    assert_eq!(statuses.len(), 300);
    for status in statuses {
        let status = status.expect("answered");
        assert_eq!((status.view.member, status.view.device), (member, device));
        assert!(!status.view.connected && status.view.epoch.is_none());
    }
    let sends =
        join_all((0..300).map(|i| handle.send_text(if i % 2 == 0 { "a" } else { "b" }))).await;
    for sent in sends {
        let refused = sent.expect_err("not in the group yet");
        assert!(refused.contains("not in the circle's group"), "{refused}");
    }
    assert_eq!(handle.stop().await.expect("stops"), Stopped::Requested);
}
