//! What the key keeps across plugs (the PIN's hash, its retries, the credentials, the signature
//! counter), as a JSON file a test can read and prepare between runs.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The PIN retries of a new key and after a right PIN.
pub const MAX_PIN_RETRIES: u8 = 8;

/// The AAGUID this key reports unless its state says otherwise: "tessera-vkey-001" in ASCII, a
/// model no vendor ships.
pub const DEFAULT_AAGUID: [u8; 16] = *b"tessera-vkey-001";

/// The persistent state. Byte strings are lowercase hex in the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The model this key claims (16 bytes).
    #[serde(with = "hex")]
    pub aaguid: Vec<u8>,
    /// LEFT(SHA-256(PIN), 16), or none while no PIN is set.
    #[serde(default, with = "hex_option")]
    pub pin_hash: Option<Vec<u8>>,
    /// Wrong PINs left before the PIN is blocked.
    pub pin_retries: u8,
    /// The global signature counter, increased by every credential made and assertion signed.
    pub sign_count: u32,
    /// Every credential made, discoverable or not, oldest first.
    #[serde(default)]
    pub credentials: Vec<Credential>,
}

/// One credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The credential id.
    #[serde(with = "hex")]
    pub id: Vec<u8>,
    /// The relying party id it is bound to.
    pub rp_id: String,
    /// The user entity (discoverable credentials only).
    #[serde(default)]
    pub user: Option<User>,
    /// Whether it was made with the `rk` option (a discoverable credential).
    pub discoverable: bool,
    /// The P-256 private key scalar (32 bytes).
    #[serde(with = "hex")]
    pub private_key: Vec<u8>,
}

/// A user entity as the relying party gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user handle.
    #[serde(with = "hex")]
    pub id: Vec<u8>,
    /// The account name, if given.
    #[serde(default)]
    pub name: Option<String>,
    /// The display name, if given.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            aaguid: DEFAULT_AAGUID.to_vec(),
            pin_hash: None,
            pin_retries: MAX_PIN_RETRIES,
            sign_count: 0,
            credentials: Vec::new(),
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a state.
    #[error("not a virtual key state: {0}")]
    Json(#[from] serde_json::Error),
}

impl State {
    /// The state in `path`, or a new one (written there) if the file does not exist.
    ///
    /// # Errors
    /// When the file cannot be read, is not a state, or cannot be created.
    pub fn load_or_create(path: &Path) -> Result<Self, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let state = Self::default();
                state.save(path)?;
                Ok(state)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the state to `path` whole: a temporary file beside it, then renamed into place.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Whether a PIN is set.
    #[must_use]
    pub fn has_pin(&self) -> bool {
        self.pin_hash.is_some()
    }
}

/// LEFT(SHA-256(pin), 16): what the key stores of a PIN, and what platforms send encrypted.
#[must_use]
pub fn pin_hash(pin: &[u8]) -> Vec<u8> {
    Sha256::digest(pin)[..16].to_vec()
}

/// Lowercase hex, both ways.
pub mod hex {
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// `bytes` as lowercase hex.
    #[must_use]
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of a hex string, if it is one.
    #[must_use]
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        if !text.len().is_multiple_of(2) {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    }

    /// Serde: bytes as a hex string.
    ///
    /// # Errors
    /// Those of the serializer.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    /// Serde: a hex string as bytes.
    ///
    /// # Errors
    /// When the string is not hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode(&text).ok_or_else(|| serde::de::Error::custom("not a hex string"))
    }
}

mod hex_option {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&super::hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => super::hex::decode(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("not a hex string")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("vk-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key.json");
        let _ = std::fs::remove_file(&path);

        let created = State::load_or_create(&path).expect("created");
        assert_eq!(created, State::default());
        assert!(path.exists());

        let mut state = created;
        state.pin_hash = Some(pin_hash(b"1234"));
        state.pin_retries = 5;
        state.credentials.push(Credential {
            id: vec![1, 2, 255],
            rp_id: "example.com".into(),
            user: Some(User {
                id: vec![9],
                name: Some("alice".into()),
                display_name: None,
            }),
            discoverable: true,
            private_key: vec![7; 32],
        });
        state.save(&path).expect("saved");
        let json = std::fs::read_to_string(&path).expect("read");
        assert!(json.contains("\"0102ff\""), "{json}");
        assert!(json.contains("03ac674216f3e15c761ee1a5e255f067"), "{json}");
        assert_eq!(State::load_or_create(&path).expect("loaded"), state);
        std::fs::remove_dir_all(&dir).expect("cleaned");
    }

    #[test]
    fn hex_decodes_what_it_encodes_and_refuses_the_rest() {
        assert_eq!(
            hex::decode(&hex::encode(&[0, 15, 16, 255])),
            Some(vec![0, 15, 16, 255])
        );
        assert_eq!(hex::decode("abc"), None);
        assert_eq!(hex::decode("zz"), None);
    }
}
