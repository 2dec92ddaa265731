//! The PIN/UV auth protocols one and two (CTAP 2.1 §6.5.6, §6.5.7), the authenticator's side:
//! the key agreement key, the shared secret, encrypt, decrypt, authenticate and verify.

use aes::Aes256;
use cbc::cipher::{BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _};
use ciborium::Value;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as _, Mac as _};
use p256::elliptic_curve::Generate as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::{PublicKey, SecretKey};
use sha2::{Digest as _, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// COSE algorithm of the key agreement key: ECDH-ES + HKDF-256 (the value CTAP2 asks for, whatever
/// the real derivation).
pub const COSE_ECDH_ES_HKDF_256: i64 = -25;

/// Why a PIN protocol operation failed: the request was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The peer's key is not a P-256 COSE key on the curve.
    #[error("the platform's key agreement key is not a P-256 point")]
    BadKey,
    /// A ciphertext whose length is not whole AES blocks (or too short for the IV).
    #[error("the ciphertext is not whole AES blocks")]
    BadLength,
    /// The system has no randomness.
    #[error("no randomness")]
    Random,
}

/// One of the two PIN/UV auth protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Protocol one: SHA-256(Z), AES-256-CBC with a zero IV, HMAC truncated to 16 bytes.
    One,
    /// Protocol two: HKDF-SHA-256 to an HMAC key and an AES key, random IVs, the whole HMAC.
    Two,
}

impl Protocol {
    /// The protocol of a request's `pinUvAuthProtocol` number.
    #[must_use]
    pub fn from_number(number: i128) -> Option<Self> {
        match number {
            1 => Some(Self::One),
            2 => Some(Self::Two),
            _ => None,
        }
    }

    /// The protocol's number on the wire.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }

    /// The shared secret from the ECDH x-coordinate `z`: 32 bytes (one) or the HMAC key then the
    /// AES key (two, 64 bytes).
    #[must_use]
    pub fn kdf(self, z: &[u8]) -> Vec<u8> {
        match self {
            Self::One => Sha256::digest(z).to_vec(),
            Self::Two => {
                let hkdf = Hkdf::<Sha256>::new(Some(&[0u8; 32]), z);
                let mut out = vec![0u8; 64];
                let (hmac_key, aes_key) = out.split_at_mut(32);
                // 32 bytes is always a valid HKDF-SHA-256 output length.
                let _ = hkdf.expand(b"CTAP2 HMAC key", hmac_key);
                let _ = hkdf.expand(b"CTAP2 AES key", aes_key);
                out
            }
        }
    }

    fn aes_key(self, key: &[u8]) -> &[u8] {
        match self {
            Self::Two if key.len() == 64 => &key[32..],
            _ => &key[..key.len().min(32)],
        }
    }

    fn hmac_key(self, key: &[u8]) -> &[u8] {
        match self {
            Self::Two if key.len() == 64 => &key[..32],
            _ => key,
        }
    }

    /// Encrypts whole blocks: with a zero IV (one) or a random IV put in front (two).
    ///
    /// # Errors
    /// [`PinError::BadLength`] when `plaintext` is not whole blocks, [`PinError::Random`].
    pub fn encrypt(self, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PinError> {
        if !plaintext.len().is_multiple_of(16) {
            return Err(PinError::BadLength);
        }
        let mut iv = [0u8; 16];
        if self == Self::Two {
            getrandom::fill(&mut iv).map_err(|_| PinError::Random)?;
        }
        let mut blocks = plaintext.to_vec();
        cbc_encrypt(self.aes_key(key), &iv, &mut blocks)?;
        Ok(match self {
            Self::One => blocks,
            Self::Two => [iv.as_slice(), &blocks].concat(),
        })
    }

    /// Decrypts what [`Protocol::encrypt`] made.
    ///
    /// # Errors
    /// [`PinError::BadLength`] when `ciphertext` is not whole blocks (after the IV, for two).
    pub fn decrypt(self, key: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, PinError> {
        let (iv, body) = match self {
            Self::One => ([0u8; 16], ciphertext),
            Self::Two => {
                if ciphertext.len() < 16 {
                    return Err(PinError::BadLength);
                }
                let (iv, body) = ciphertext.split_at(16);
                let mut array = [0u8; 16];
                array.copy_from_slice(iv);
                (array, body)
            }
        };
        if !body.len().is_multiple_of(16) {
            return Err(PinError::BadLength);
        }
        let mut blocks = body.to_vec();
        cbc_decrypt(self.aes_key(key), &iv, &mut blocks)?;
        Ok(blocks)
    }

    /// HMAC-SHA-256 of `message`: its first 16 bytes (one) or all 32 (two).
    #[must_use]
    pub fn authenticate(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = hmac(self.hmac_key(key));
        mac.update(message);
        let tag = mac.finalize().into_bytes();
        match self {
            Self::One => tag[..16].to_vec(),
            Self::Two => tag.to_vec(),
        }
    }

    /// Whether `signature` is [`Protocol::authenticate`] of `message`, in constant time.
    #[must_use]
    pub fn verify(self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let mut mac = hmac(self.hmac_key(key));
        mac.update(message);
        match self {
            Self::One => signature.len() == 16 && mac.verify_truncated_left(signature).is_ok(),
            Self::Two => signature.len() == 32 && mac.verify_slice(signature).is_ok(),
        }
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts any key length"),
    }
}

fn cbc_encrypt(key: &[u8], iv: &[u8; 16], blocks: &mut [u8]) -> Result<(), PinError> {
    let mut cipher =
        cbc::Encryptor::<Aes256>::new_from_slices(key, iv).map_err(|_| PinError::BadLength)?;
    for block in blocks.chunks_exact_mut(16) {
        let block: &mut [u8; 16] = block.try_into().map_err(|_| PinError::BadLength)?;
        cipher.encrypt_block(block.into());
    }
    Ok(())
}

fn cbc_decrypt(key: &[u8], iv: &[u8; 16], blocks: &mut [u8]) -> Result<(), PinError> {
    let mut cipher =
        cbc::Decryptor::<Aes256>::new_from_slices(key, iv).map_err(|_| PinError::BadLength)?;
    for block in blocks.chunks_exact_mut(16) {
        let block: &mut [u8; 16] = block.try_into().map_err(|_| PinError::BadLength)?;
        cipher.decrypt_block(block.into());
    }
    Ok(())
}

/// The authenticator's key agreement key pair, new at each power-up and after a wrong PIN.
pub struct KeyAgreement {
    secret: SecretKey,
}

impl KeyAgreement {
    /// A fresh key pair.
    ///
    /// # Errors
    /// [`PinError::Random`] if the system has no randomness.
    pub fn generate() -> Result<Self, PinError> {
        Ok(Self {
            secret: SecretKey::try_generate().map_err(|_| PinError::Random)?,
        })
    }

    /// The public key as the COSE_Key that getKeyAgreement answers.
    #[must_use]
    pub fn cose_public(&self) -> Value {
        cose_p256(&self.secret.public_key(), COSE_ECDH_ES_HKDF_256)
    }

    /// The shared secret with the platform's COSE key, derived as `protocol` says.
    ///
    /// # Errors
    /// [`PinError::BadKey`] if `platform` is not a P-256 COSE key on the curve.
    pub fn shared_secret(&self, protocol: Protocol, platform: &Value) -> Result<Vec<u8>, PinError> {
        let public = public_from_cose(platform)?;
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), public.as_affine());
        Ok(protocol.kdf(shared.raw_secret_bytes()))
    }
}

/// A P-256 public key as a COSE_Key map (kty EC2, crv P-256) with algorithm `alg`, in CTAP2's
/// canonical key order.
#[must_use]
pub fn cose_p256(public: &PublicKey, alg: i64) -> Value {
    let point = public.to_sec1_point(false);
    let bytes = point.as_bytes();
    Value::Map(vec![
        (Value::from(1), Value::from(2)),
        (Value::from(3), Value::from(alg)),
        (Value::from(-1), Value::from(1)),
        (Value::from(-2), Value::Bytes(bytes[1..33].to_vec())),
        (Value::from(-3), Value::Bytes(bytes[33..65].to_vec())),
    ])
}

/// The P-256 public key of a COSE_Key map (kty EC2, crv P-256).
///
/// # Errors
/// [`PinError::BadKey`] for anything else, or a point not on the curve.
pub fn public_from_cose(cose: &Value) -> Result<PublicKey, PinError> {
    let Value::Map(entries) = cose else {
        return Err(PinError::BadKey);
    };
    let field = |key: i64| {
        entries
            .iter()
            .find(|(k, _)| k.as_integer().map(i128::from) == Some(i128::from(key)))
            .map(|(_, v)| v)
    };
    let int = |key: i64| field(key).and_then(Value::as_integer).map(i128::from);
    if int(1) != Some(2) || int(-1) != Some(1) {
        return Err(PinError::BadKey);
    }
    let coordinate = |key: i64| {
        field(key)
            .and_then(Value::as_bytes)
            .filter(|bytes| bytes.len() == 32)
            .ok_or(PinError::BadKey)
    };
    let sec1 = [&[4u8][..], coordinate(-2)?, coordinate(-3)?].concat();
    PublicKey::from_sec1_bytes(&sec1).map_err(|_| PinError::BadKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_one_uses_a_zero_iv_and_sixteen_byte_tags() {
        let key = [7u8; 32];
        let plaintext = [1u8; 32];
        let a = Protocol::One.encrypt(&key, &plaintext).expect("encrypts");
        let b = Protocol::One.encrypt(&key, &plaintext).expect("encrypts");
        assert_eq!(a, b, "a zero IV makes encryption deterministic");
        assert_eq!(a.len(), 32);
        assert_eq!(
            Protocol::One.decrypt(&key, &a).expect("decrypts"),
            plaintext
        );
        let tag = Protocol::One.authenticate(&key, b"message");
        assert_eq!(tag.len(), 16);
        assert!(Protocol::One.verify(&key, b"message", &tag));
        assert!(!Protocol::One.verify(&key, b"massage", &tag));
        assert!(!Protocol::One.verify(&key, b"message", &tag[..15]));
    }

    #[test]
    fn protocol_two_prepends_a_random_iv_and_keeps_the_whole_tag() {
        let secret = Protocol::Two.kdf(&[9u8; 32]);
        assert_eq!(secret.len(), 64);
        assert_ne!(secret[..32], secret[32..]);
        let plaintext = [3u8; 64];
        let a = Protocol::Two
            .encrypt(&secret, &plaintext)
            .expect("encrypts");
        let b = Protocol::Two
            .encrypt(&secret, &plaintext)
            .expect("encrypts");
        assert_eq!(a.len(), 80);
        assert_ne!(a, b, "random IVs");
        assert_eq!(
            Protocol::Two.decrypt(&secret, &b).expect("decrypts"),
            plaintext
        );
        let tag = Protocol::Two.authenticate(&secret, b"message");
        assert_eq!(tag.len(), 32);
        assert!(Protocol::Two.verify(&secret, b"message", &tag));
        assert!(!Protocol::Two.verify(&secret, b"message", &tag[..16]));
        // A 32-byte key (a pinUvAuthToken) is the HMAC key itself.
        let token = [5u8; 32];
        let tag = Protocol::Two.authenticate(&token, b"hash");
        assert!(Protocol::Two.verify(&token, b"hash", &tag));
    }

    #[test]
    fn both_sides_of_the_key_agreement_derive_the_same_secret() {
        let authenticator = KeyAgreement::generate().expect("key");
        let platform = KeyAgreement::generate().expect("key");
        for protocol in [Protocol::One, Protocol::Two] {
            let a = authenticator
                .shared_secret(protocol, &platform.cose_public())
                .expect("secret");
            let b = platform
                .shared_secret(protocol, &authenticator.cose_public())
                .expect("secret");
            assert_eq!(a, b);
        }
        let not_a_key = Value::Map(vec![(Value::from(1), Value::from(2))]);
        assert_eq!(
            authenticator.shared_secret(Protocol::One, &not_a_key).err(),
            Some(PinError::BadKey)
        );
    }
}
