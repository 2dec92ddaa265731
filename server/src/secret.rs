//! Random secrets (invitation and session tokens, ceremony ids) and their SHA-256 digests, the only form the server stores.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// The SHA-256 of a secret.
pub type Digest = [u8; 32];

/// A fresh secret of 256 random bits, base64url without padding (43 characters).
#[must_use]
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The digest under which a secret is stored and looked up.
#[must_use]
pub fn digest(secret: &str) -> Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether a string has the shape of a token this server issues (43 base64url characters).
/// Anything else is refused before it reaches the database.
#[must_use]
pub fn looks_like_token(candidate: &str) -> bool {
    candidate.len() == 43
        && candidate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_well_formed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(looks_like_token(&a));
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).expect("base64url").len(), 32);
    }

    #[test]
    fn malformed_tokens_are_recognised() {
        assert!(!looks_like_token(""));
        assert!(!looks_like_token(&"a".repeat(44)));
        assert!(!looks_like_token(&format!("{}=", "a".repeat(42))));
        assert!(!looks_like_token(&format!("{}/", "a".repeat(42))));
    }

    #[test]
    fn digest_is_sha256() {
        assert_eq!(
            digest("abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts with ba7816bf"
        );
    }
}
