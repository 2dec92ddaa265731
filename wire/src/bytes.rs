//! Binary values in JSON: bytes that travel as unpadded base64url text (RFC 4648 §5), the encoding
//! WebAuthn's JSON uses, decoded once where a value is read.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes that travel as unpadded base64url text. Text that is not base64url is refused where the
/// value is read.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Base64Url(pub Vec<u8>);

/// Text that is not unpadded base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not base64url")]
pub struct NotBase64Url;

impl Base64Url {
    /// The bytes' text.
    #[must_use]
    pub fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The bytes of `text`.
    ///
    /// # Errors
    /// [`NotBase64Url`] when `text` is not unpadded base64url.
    pub fn decode(text: &str) -> Result<Vec<u8>, NotBase64Url> {
        URL_SAFE_NO_PAD.decode(text).map_err(|_| NotBase64Url)
    }

    /// The bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, owned.
    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The text these bytes travel as.
    #[must_use]
    pub fn text(&self) -> String {
        Base64Url::encode(&self.0)
    }
}

impl std::str::FromStr for Base64Url {
    type Err = NotBase64Url;

    fn from_str(text: &str) -> Result<Base64Url, NotBase64Url> {
        Base64Url::decode(text).map(Base64Url)
    }
}

impl From<Vec<u8>> for Base64Url {
    fn from(bytes: Vec<u8>) -> Base64Url {
        Base64Url(bytes)
    }
}

impl From<&[u8]> for Base64Url {
    fn from(bytes: &[u8]) -> Base64Url {
        Base64Url(bytes.to_vec())
    }
}

impl AsRef<[u8]> for Base64Url {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Url({self})")
    }
}

impl Serialize for Base64Url {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Base64Url {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Base64Url, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_travel_as_unpadded_base64url_and_other_text_is_refused() {
        let value = Base64Url(vec![0xfb, 0xff, 0x01]);
        assert_eq!(serde_json::to_string(&value).expect("json"), "\"-_8B\"");
        assert_eq!(
            serde_json::from_str::<Base64Url>("\"-_8B\"").expect("reads"),
            value
        );
        for refused in ["\"+/8B\"", "\"-_8B=\"", "\"a\"", "7"] {
            assert!(
                serde_json::from_str::<Base64Url>(refused).is_err(),
                "{refused} was read"
            );
        }
        assert_eq!(Base64Url::decode("").expect("empty"), Vec::<u8>::new());
    }
}
