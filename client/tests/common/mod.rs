//! What the client's tests share: an engine with a certificate for its own key.

use tessera_engine::identity::DeviceCertificate;
use tessera_engine::trust::{RootPin, Trust};
use tessera_engine::{DeviceKey, Engine, EngineConfig};
use uuid::Uuid;

/// A fresh engine; it only checks that the certificate is for its key (peers check the rest).
pub fn engine() -> Engine {
    let (member, device) = (Uuid::new_v4(), Uuid::new_v4());
    let key = DeviceKey::generate().expect("key");
    let certificate = DeviceCertificate {
        member,
        device,
        device_key: key.public().into(),
        credential_id: b"credential"[..].into(),
        authenticator_data: vec![0; 37].into(),
        client_data_json: b"{}"[..].into(),
        signature: b"signature"[..].into(),
    };
    let trust = Trust {
        circle: Uuid::new_v4(),
        root: RootPin::FromOwnKey,
    };
    Engine::new(
        EngineConfig::new("http://localhost:8080", "localhost"),
        trust,
        member,
        device,
        key,
        certificate,
    )
    .expect("engine")
}
