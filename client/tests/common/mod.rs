//! What the client's tests share: an engine with a certificate for its own key.

use tessera_engine::identity::DeviceCertificate;
use tessera_engine::payload::b64;
use tessera_engine::{DeviceKey, Engine, EngineConfig};
use uuid::Uuid;

/// A fresh engine; it only checks that the certificate is for its key (peers check the rest).
pub fn engine() -> Engine {
    let (member, device) = (Uuid::new_v4(), Uuid::new_v4());
    let key = DeviceKey::generate().expect("key");
    let certificate = DeviceCertificate {
        member,
        device,
        device_key: b64(key.public()),
        credential_id: b64(b"credential"),
        authenticator_data: b64(&[0; 37]),
        client_data_json: b64(b"{}"),
        signature: b64(b"signature"),
    };
    Engine::new(
        EngineConfig::new("http://localhost:8080", "localhost"),
        member,
        device,
        key,
        certificate,
    )
    .expect("engine")
}
