//! The engine in the page: what the browser's JavaScript may call, a thin shell over
//! `tessera-engine` (no protocol logic lives here).

use tessera_engine::{DeviceKey, engine::CIPHERSUITE};
use wasm_bindgen::prelude::wasm_bindgen;

/// What the page shows of the engine it loaded: its version and the circle's ciphersuite.
#[wasm_bindgen(js_name = engineInfo)]
#[must_use]
pub fn engine_info() -> String {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ciphersuite": format!("{CIPHERSUITE:?}"),
    })
    .to_string()
}

/// A device's MLS signature key, made in the page with the browser's randomness.
#[wasm_bindgen]
pub struct WebDeviceKey(DeviceKey);

#[wasm_bindgen]
impl WebDeviceKey {
    /// A fresh key.
    ///
    /// # Errors
    /// When the browser gives no randomness.
    pub fn generate() -> Result<WebDeviceKey, String> {
        DeviceKey::generate()
            .map(WebDeviceKey)
            .map_err(|e| e.to_string())
    }

    /// The public key (Ed25519, 32 bytes).
    #[wasm_bindgen(js_name = publicKey)]
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_info_names_the_version_and_ciphersuite_and_keys_are_fresh() {
        let info: serde_json::Value = serde_json::from_str(&engine_info()).expect("json");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            info["ciphersuite"]
                .as_str()
                .is_some_and(|c| c.contains("X25519"))
        );
        let (a, b) = (
            WebDeviceKey::generate().expect("key"),
            WebDeviceKey::generate().expect("key"),
        );
        assert_eq!(a.public_key().len(), 32);
        assert_ne!(a.public_key(), b.public_key());
    }
}
