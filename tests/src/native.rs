//! Native devices for load generators: the real driver (`DeviceHandle`) over str0m and a SQLite
//! store on disk, certified by a test member's software key and started against a `TestApp`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_client::authenticator::SoftKey;
use tessera_client::device::{Connection, DeviceHandle, Update};
use tessera_client::files::FileDir;
use tessera_client::identity::certify;
use tessera_client::signal::Backoff;
use tessera_client::store::DeviceStore;
use tessera_client::trust::Trust;
use tessera_engine::{DeviceKey, Engine, EngineConfig, Event};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{TestApp, TestMember};

/// The most time any one wait may take.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Where a device's store is: `dir/<device>.db`.
#[must_use]
pub fn store_path(dir: &Path, device: Uuid) -> PathBuf {
    dir.join(format!("{device}.db"))
}

fn config(app: &TestApp) -> EngineConfig {
    EngineConfig::new(app.origin.origin().ascii_serialization(), "localhost")
}

/// A new device of `member` (their id and what their devices trust), its fresh device key
/// certified by `key`, one of the member's keys: the engine, not started.
///
/// # Panics
/// When the key refuses.
pub fn certified_engine(
    app: &TestApp,
    (member, trust): (Uuid, Trust),
    key: &mut SoftKey,
) -> Engine {
    let origin = app.origin.origin().ascii_serialization();
    let device = Uuid::new_v4();
    let device_key = DeviceKey::generate().expect("device key");
    let certificate = certify("localhost", member, device, device_key.public(), |r| {
        key.sign_in(r, &origin)
    })
    .expect("the key certifies the device");
    Engine::new(config(app), trust, member, device, device_key, certificate).expect("engine")
}

/// A device of `member` with a fresh certified key, its store under `dir`.
///
/// # Panics
/// When any step fails: this is for load generators.
pub async fn new_device(app: &TestApp, member: &mut TestMember, dir: &Path) -> DeviceHandle {
    let engine = certified_engine(
        app,
        (member.granted.member, member.trust()),
        &mut member.key,
    );
    let device = engine.device();
    let store = DeviceStore::open(&store_path(dir, device))
        .await
        .expect("store");
    start(engine, store, dir, member).await
}

/// The device `device` of `member` restarted from its store under `dir`, after a login.
///
/// # Panics
/// When any step fails.
pub async fn restart(
    app: &TestApp,
    member: &mut TestMember,
    dir: &Path,
    device: Uuid,
) -> DeviceHandle {
    let store = DeviceStore::open(&store_path(dir, device))
        .await
        .expect("store");
    let stored = store.load().await.expect("load").expect("saved");
    member.client.login(&mut member.key).await.expect("login");
    let engine = Engine::restore(config(app), stored).expect("restore");
    start(engine, store, dir, member).await
}

async fn start(
    engine: Engine,
    store: DeviceStore,
    dir: &Path,
    member: &TestMember,
) -> DeviceHandle {
    let files = FileDir::in_data_dir(&dir.join(engine.device().to_string()));
    DeviceHandle::start(
        engine,
        store,
        files,
        Connection {
            api: member.client.clone(),
            bind: [127, 0, 0, 1].into(),
            backoff: Backoff::default(),
            relay_only: false,
        },
    )
    .await
    .expect("the device starts")
}

/// A device whose received messages (and files) are counted on a task of its own.
#[derive(Debug)]
pub struct Counting {
    /// How many messages from other devices it has shown.
    pub counted: watch::Receiver<usize>,
    /// How many files it received whole.
    pub files: watch::Receiver<usize>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Counting {
    /// Starts counting what `device` receives.
    #[must_use]
    pub fn start(mut device: DeviceHandle) -> Counting {
        let (count, counted) = watch::channel(0);
        let (file_count, files) = watch::channel(0);
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut received = 0;
            loop {
                tokio::select! {
                    update = device.next_update() => match update {
                        Some(Update::Engine(Event::Message { outgoing: false, .. })) => {
                            received += 1;
                            let _ = count.send(received);
                        }
                        Some(Update::Engine(Event::FileReceived { .. })) => {
                            file_count.send_modify(|n| *n += 1);
                        }
                        Some(_) => {}
                        None => return,
                    },
                    _ = &mut stopped => break,
                }
            }
            device.stop().await.expect("the device stops");
        });
        Counting {
            counted,
            files,
            stop,
            task,
        }
    }

    /// Waits until it has shown `at_least` messages.
    ///
    /// # Panics
    /// After [`TIME_LIMIT`].
    pub async fn wait_count(&mut self, at_least: usize) {
        tokio::time::timeout(TIME_LIMIT, self.counted.wait_for(|n| *n >= at_least))
            .await
            .expect("the messages arrive in time")
            .expect("the receiving device runs");
    }

    /// Waits until it has received `at_least` files whole, for at most `limit`.
    ///
    /// # Panics
    /// After `limit`.
    pub async fn wait_files(&mut self, at_least: usize, limit: Duration) {
        tokio::time::timeout(limit, self.files.wait_for(|n| *n >= at_least))
            .await
            .expect("the files arrive in time")
            .expect("the receiving device runs");
    }

    /// Stops the device and waits until it has.
    ///
    /// # Panics
    /// When the device fails to stop.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("the counting task ends");
    }
}

/// Waits until the device is in the group.
///
/// # Panics
/// After [`TIME_LIMIT`].
pub async fn wait_in_group(device: &DeviceHandle) {
    let deadline = Instant::now() + TIME_LIMIT;
    while device.status().await.expect("status").view.epoch.is_none() {
        assert!(Instant::now() < deadline, "the device never joined");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
