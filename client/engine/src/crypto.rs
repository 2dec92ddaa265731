//! The cryptography of the circle's one ciphersuite (X25519, AES-128-GCM, SHA-256, Ed25519) for
//! openmls, from RustCrypto's crates typed to this suite: SHA-256, HKDF and HMAC over it,
//! AES-128-GCM, randomness from the system (the page's `crypto.getRandomValues` in the browser),
//! signatures from ed25519-dalek and HPKE from the `hpke` crate. openmls' RustCrypto provider
//! dispatches on the suite at run time, so it would link P-256, P-384, secp256k1, ML-KEM, SHA-384,
//! SHA-512 and ChaCha20-Poly1305, which no circle uses (a quarter of the browser's engine); so
//! would openmls_basic_credential's key pair, hence the device's own [`DeviceSigner`]. Any other
//! suite, hash, KEM, KDF, AEAD or signature scheme is refused.

use aes_gcm::Aes128Gcm;
use aes_gcm::aead::{Aead as _, KeyInit as _, Nonce, Payload};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable as _};
use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::storage::{self, CURRENT_VERSION, StorageProvider};
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext,
    HpkeConfig, HpkeKdfType, HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroize as _;

use crate::engine::CIPHERSUITE;

/// The suite's KEM.
type Kem = X25519HkdfSha256;

/// The circle's ciphersuite's cryptography, and nothing else.
#[derive(Debug, Default)]
pub struct SuiteCrypto;

/// The system had no randomness to give.
#[derive(Debug, thiserror::Error)]
#[error("the system has no randomness to give: {0}")]
pub struct NoRandomness(getrandom::Error);

/// Refuses any hash but the suite's.
fn sha256(hash_type: HashType) -> Result<(), CryptoError> {
    match hash_type {
        HashType::Sha2_256 => Ok(()),
        _ => Err(CryptoError::UnsupportedHashAlgorithm),
    }
}

/// The suite's AEAD keyed with `key`, and `nonce` as its nonce; any other AEAD is refused.
fn aes128gcm(
    alg: AeadType,
    key: &[u8],
    nonce: &[u8],
) -> Result<(Aes128Gcm, Nonce<Aes128Gcm>), CryptoError> {
    if alg != AeadType::Aes128Gcm {
        return Err(CryptoError::UnsupportedAeadAlgorithm);
    }
    let cipher = Aes128Gcm::new_from_slice(key).map_err(|_| CryptoError::CryptoLibraryError)?;
    let nonce = Nonce::<Aes128Gcm>::try_from(nonce).map_err(|_| CryptoError::InvalidLength)?;
    Ok((cipher, nonce))
}

/// Refuses any HPKE configuration but the suite's.
fn suite_hpke(config: &HpkeConfig) -> Result<(), CryptoError> {
    match config {
        HpkeConfig(HpkeKemType::DhKem25519, HpkeKdfType::HkdfSha256, HpkeAeadType::AesGcm128) => {
            Ok(())
        }
        _ => Err(CryptoError::UnsupportedCiphersuite),
    }
}

/// An X25519 key, public or private, or an encapsulated key, from its 32 bytes.
fn key<K: Deserializable>(bytes: &[u8], error: CryptoError) -> Result<K, CryptoError> {
    K::from_bytes(bytes).map_err(|_| error)
}

fn ed25519(alg: SignatureScheme) -> Result<(), CryptoError> {
    match alg {
        SignatureScheme::ED25519 => Ok(()),
        _ => Err(CryptoError::UnsupportedSignatureScheme),
    }
}

/// Signs `data` with the Ed25519 secret key `key` (32 bytes).
fn sign_ed25519(key: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key = SigningKey::try_from(key).map_err(|_| CryptoError::CryptoLibraryError)?;
    Ok(key.sign(data).to_bytes().to_vec())
}

impl OpenMlsCrypto for SuiteCrypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if ciphersuite == CIPHERSUITE {
            Ok(())
        } else {
            Err(CryptoError::UnsupportedCiphersuite)
        }
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        vec![CIPHERSUITE]
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        sha256(hash_type)?;
        Ok(Hkdf::<Sha256>::extract(Some(salt), ikm).0.as_slice().into())
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        sha256(hash_type)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| CryptoError::CryptoLibraryError)?;
        mac.update(message);
        Ok(mac.finalize().into_bytes().as_slice().into())
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        sha256(hash_type)?;
        let hkdf =
            Hkdf::<Sha256>::from_prk(prk).map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        let mut okm = vec![0; okm_len];
        hkdf.expand(info, &mut okm)
            .map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        Ok(okm.into())
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        sha256(hash_type)?;
        Ok(Sha256::digest(data).to_vec())
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (cipher, nonce) = aes128gcm(alg, key, nonce)?;
        cipher
            .encrypt(&nonce, Payload { msg: data, aad })
            .map_err(|_| CryptoError::CryptoLibraryError)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (cipher, nonce) = aes128gcm(alg, key, nonce)?;
        cipher
            .decrypt(&nonce, Payload { msg: ct_tag, aad })
            .map_err(|_| CryptoError::AeadDecryptionError)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        ed25519(alg)?;
        let seed: [u8; 32] = self
            .random_array()
            .map_err(|_| CryptoError::InsufficientRandomness)?;
        let key = SigningKey::from_bytes(&seed);
        Ok((
            key.to_bytes().to_vec(),
            key.verifying_key().to_bytes().to_vec(),
        ))
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        ed25519(alg)?;
        let key = VerifyingKey::try_from(pk).map_err(|_| CryptoError::CryptoLibraryError)?;
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| CryptoError::CryptoLibraryError)?;
        key.verify_strict(data, &signature)
            .map_err(|_| CryptoError::InvalidSignature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        ed25519(alg)?;
        sign_ed25519(key, data)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        suite_hpke(&config)?;
        let pk_r = key(pk_r, CryptoError::InvalidPublicKey)?;
        let (encapped, ciphertext) = hpke::single_shot_seal::<AesGcm128, HkdfSha256, Kem>(
            &OpModeS::Base,
            &pk_r,
            info,
            ptxt,
            aad,
        )
        .map_err(|_| CryptoError::HpkeEncryptionError)?;
        Ok(HpkeCiphertext {
            kem_output: encapped.to_bytes().to_vec().into(),
            ciphertext: ciphertext.into(),
        })
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        suite_hpke(&config)?;
        let sk_r = key(sk_r, CryptoError::HpkeDecryptionError)?;
        let encapped = key(
            input.kem_output.as_slice(),
            CryptoError::HpkeDecryptionError,
        )?;
        hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk_r,
            &encapped,
            info,
            input.ciphertext.as_slice(),
            aad,
        )
        .map_err(|_| CryptoError::HpkeDecryptionError)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        suite_hpke(&config)?;
        let pk_r = key(pk_r, CryptoError::InvalidPublicKey)?;
        let (encapped, context) =
            hpke::setup_sender::<AesGcm128, HkdfSha256, Kem>(&OpModeS::Base, &pk_r, info)
                .map_err(|_| CryptoError::SenderSetupError)?;
        let mut secret = vec![0; exporter_length];
        context
            .export(exporter_context, &mut secret)
            .map_err(|_| CryptoError::ExporterError)?;
        Ok((encapped.to_bytes().to_vec(), secret.into()))
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        suite_hpke(&config)?;
        let sk_r = key(sk_r, CryptoError::ReceiverSetupError)?;
        let encapped = key(enc, CryptoError::ReceiverSetupError)?;
        let context = hpke::setup_receiver::<AesGcm128, HkdfSha256, Kem>(
            &OpModeR::Base,
            &sk_r,
            &encapped,
            info,
        )
        .map_err(|_| CryptoError::ReceiverSetupError)?;
        let mut secret = vec![0; exporter_length];
        context
            .export(exporter_context, &mut secret)
            .map_err(|_| CryptoError::ExporterError)?;
        Ok(secret.into())
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        suite_hpke(&config)?;
        let (private, public) = Kem::derive_keypair(ikm);
        Ok(HpkeKeyPair {
            private: private.to_bytes().to_vec().into(),
            public: public.to_bytes().to_vec(),
        })
    }
}

/// A device's Ed25519 signature key pair: the signer of everything the device does in MLS. It is
/// kept in MLS's key store the way openmls_basic_credential's `SignatureKeyPair` is (the same
/// fields under the same storage id), so devices saved before read theirs back; that type signs
/// through a dispatch that links P-256 and P-384 too.
#[derive(Serialize, Deserialize)]
pub struct DeviceSigner {
    private: Vec<u8>,
    public: Vec<u8>,
    signature_scheme: SignatureScheme,
}

impl std::fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSigner")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Drop for DeviceSigner {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

/// Where a signer is kept: its public key, a label and the scheme, as `SignatureKeyPair` kept it.
#[derive(Debug, Serialize, Deserialize)]
struct SignerId {
    value: Vec<u8>,
}

impl SignerId {
    fn of(public: &[u8]) -> SignerId {
        let mut value = public.to_vec();
        value.extend_from_slice(b"RustCryptoSignatureKey");
        value.extend_from_slice(&(SignatureScheme::ED25519 as u16).to_be_bytes());
        SignerId { value }
    }
}

impl storage::Key<CURRENT_VERSION> for SignerId {}
impl storage::traits::SignaturePublicKey<CURRENT_VERSION> for SignerId {}
impl storage::Entity<CURRENT_VERSION> for DeviceSigner {}
impl storage::traits::SignatureKeyPair<CURRENT_VERSION> for DeviceSigner {}

impl DeviceSigner {
    /// A fresh key pair.
    ///
    /// # Errors
    /// When there is no randomness.
    pub fn generate() -> Result<DeviceSigner, CryptoError> {
        let (private, public) = SuiteCrypto.signature_key_gen(SignatureScheme::ED25519)?;
        Ok(DeviceSigner {
            private,
            public,
            signature_scheme: SignatureScheme::ED25519,
        })
    }

    /// The public key (32 bytes).
    #[must_use]
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// Keeps the key pair in MLS's key store.
    ///
    /// # Errors
    /// When the store fails.
    pub fn store<S: StorageProvider<CURRENT_VERSION>>(&self, storage: &S) -> Result<(), S::Error> {
        storage.write_signature_key_pair(&SignerId::of(&self.public), self)
    }

    /// The key pair kept in MLS's key store for `public`, if any.
    pub fn read<S: StorageProvider<CURRENT_VERSION>>(
        storage: &S,
        public: &[u8],
    ) -> Option<DeviceSigner> {
        storage
            .signature_key_pair(&SignerId::of(public))
            .ok()
            .flatten()
    }
}

impl Signer for DeviceSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        ed25519(self.signature_scheme)
            .and_then(|()| sign_ed25519(&self.private, payload))
            .map_err(|_| SignerError::SigningError)
    }

    fn signature_scheme(&self) -> SignatureScheme {
        self.signature_scheme
    }
}

impl OpenMlsRand for SuiteCrypto {
    type Error = NoRandomness;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0; N];
        getrandom::fill(&mut out).map_err(NoRandomness)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0; len];
        getrandom::fill(&mut out).map_err(NoRandomness)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! Differential tests against openmls' RustCrypto provider, which implements the same
    //! primitives for every suite: what one side makes, the other reads, byte for byte.

    use super::*;
    use openmls_rust_crypto::RustCrypto;

    /// The suite's HPKE configuration (`HpkeConfig` is not `Clone`).
    #[allow(non_snake_case)]
    fn SUITE_HPKE() -> HpkeConfig {
        HpkeConfig(
            HpkeKemType::DhKem25519,
            HpkeKdfType::HkdfSha256,
            HpkeAeadType::AesGcm128,
        )
    }

    fn ours() -> SuiteCrypto {
        SuiteCrypto
    }

    fn theirs() -> RustCrypto {
        RustCrypto::default()
    }

    #[test]
    fn derived_hpke_key_pairs_are_rustcryptos_up_to_clamping() {
        for ikm in [[0u8; 32], [7; 32], [255; 32]] {
            let a = ours()
                .derive_hpke_keypair(SUITE_HPKE(), &ikm)
                .expect("ours");
            let b = theirs()
                .derive_hpke_keypair(SUITE_HPKE(), &ikm)
                .expect("theirs");
            assert_eq!(a.public, b.public);
            // The same X25519 scalar: the hpke crate keeps it clamped (RFC 7748), RustCrypto
            // as derived; X25519 clamps on use either way.
            let clamp = |k: &[u8]| {
                let mut k = k.to_vec();
                k[0] &= 248;
                k[31] &= 127;
                k[31] |= 64;
                k
            };
            assert_eq!(clamp(&a.private), clamp(&b.private));
        }
    }

    #[test]
    fn hpke_seals_open_across_the_two_providers_and_only_with_their_context() {
        let receiver = theirs()
            .derive_hpke_keypair(SUITE_HPKE(), &[3; 32])
            .expect("keys");
        let (info, aad, text) = (
            b"info".as_slice(),
            b"aad".as_slice(),
            b"a welcome".as_slice(),
        );
        let sealed = ours()
            .hpke_seal(SUITE_HPKE(), &receiver.public, info, aad, text)
            .expect("sealed");
        let opened = theirs()
            .hpke_open(SUITE_HPKE(), &sealed, &receiver.private, info, aad)
            .expect("RustCrypto opens ours");
        assert_eq!(opened, text);
        let sealed = theirs()
            .hpke_seal(SUITE_HPKE(), &receiver.public, info, aad, text)
            .expect("sealed");
        let opened = ours()
            .hpke_open(SUITE_HPKE(), &sealed, &receiver.private, info, aad)
            .expect("we open RustCrypto's");
        assert_eq!(opened, text);
        // Another info, aad or key opens nothing.
        let other = ours()
            .derive_hpke_keypair(SUITE_HPKE(), &[4; 32])
            .expect("keys");
        for (key, info, aad) in [
            (&receiver.private, b"other".as_slice(), aad),
            (&receiver.private, info, b"other".as_slice()),
            (&other.private, info, aad),
        ] {
            assert_eq!(
                ours().hpke_open(SUITE_HPKE(), &sealed, key, info, aad),
                Err(CryptoError::HpkeDecryptionError)
            );
        }
    }

    #[test]
    fn hpke_exports_agree_across_the_two_providers() {
        let receiver = ours()
            .derive_hpke_keypair(SUITE_HPKE(), &[9; 32])
            .expect("keys");
        let (enc, secret) = ours()
            .hpke_setup_sender_and_export(SUITE_HPKE(), &receiver.public, b"i", b"ctx", 32)
            .expect("ours");
        let read = theirs()
            .hpke_setup_receiver_and_export(SUITE_HPKE(), &enc, &receiver.private, b"i", b"ctx", 32)
            .expect("theirs");
        assert_eq!(&*secret, &*read);
        let (enc, secret) = theirs()
            .hpke_setup_sender_and_export(SUITE_HPKE(), &receiver.public, b"i", b"ctx", 16)
            .expect("theirs");
        let read = ours()
            .hpke_setup_receiver_and_export(SUITE_HPKE(), &enc, &receiver.private, b"i", b"ctx", 16)
            .expect("ours");
        assert_eq!(&*secret, &*read);
        assert_eq!(read.len(), 16);
    }

    #[test]
    fn signatures_verify_across_the_two_providers_and_not_when_altered() {
        let (private, public) = ours()
            .signature_key_gen(SignatureScheme::ED25519)
            .expect("keys");
        let signature = ours()
            .sign(SignatureScheme::ED25519, b"commit", &private)
            .expect("signs");
        assert_eq!(
            signature,
            theirs()
                .sign(SignatureScheme::ED25519, b"commit", &private)
                .expect("signs"),
            "Ed25519 is deterministic"
        );
        theirs()
            .verify_signature(SignatureScheme::ED25519, b"commit", &public, &signature)
            .expect("RustCrypto verifies ours");
        ours()
            .verify_signature(SignatureScheme::ED25519, b"commit", &public, &signature)
            .expect("we verify");
        let mut altered = signature.clone();
        altered[5] ^= 1;
        assert_eq!(
            ours().verify_signature(SignatureScheme::ED25519, b"commit", &public, &altered),
            Err(CryptoError::InvalidSignature)
        );
        assert_eq!(
            ours().verify_signature(SignatureScheme::ED25519, b"commix", &public, &signature),
            Err(CryptoError::InvalidSignature)
        );
        assert!(
            ours()
                .verify_signature(
                    SignatureScheme::ED25519,
                    b"commit",
                    &public,
                    &signature[..63]
                )
                .is_err()
        );
    }

    #[test]
    fn a_device_key_saved_by_the_basic_credential_reads_back_and_signs_the_same() {
        use openmls_basic_credential::SignatureKeyPair;
        use openmls_rust_crypto::MemoryStorage;
        let storage = MemoryStorage::default();
        let before = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key");
        before.store(&storage).expect("stored");
        let read = DeviceSigner::read(&storage, before.public()).expect("read back");
        assert_eq!(read.public(), before.public());
        assert_eq!(
            read.sign(b"payload").expect("signs"),
            before.sign(b"payload").expect("signs"),
            "the same key (Ed25519 is deterministic)"
        );
        // And the other way: a signer stored now is what the old type reads.
        let now = DeviceSigner::generate().expect("key");
        now.store(&storage).expect("stored");
        let old = SignatureKeyPair::read(&storage, now.public(), SignatureScheme::ED25519)
            .expect("the old type reads it");
        assert_eq!(
            old.sign(b"x").expect("signs"),
            now.sign(b"x").expect("signs")
        );
        assert!(
            DeviceSigner::read(&storage, &[0; 32]).is_none(),
            "no such key"
        );
    }

    #[test]
    fn hashes_hkdf_and_hmac_are_rustcryptos() {
        let (crypto, theirs) = (ours(), theirs());
        let sha = HashType::Sha2_256;
        for (salt, ikm) in [(&b""[..], &b""[..]), (b"salt", b"input key material")] {
            let data = [salt, ikm].concat();
            assert_eq!(crypto.hash(sha, &data), theirs.hash(sha, &data));
            assert_eq!(
                crypto.hkdf_extract(sha, salt, ikm),
                theirs.hkdf_extract(sha, salt, ikm)
            );
            assert_eq!(crypto.hmac(sha, salt, ikm), theirs.hmac(sha, salt, ikm));
            let prk = crypto.hkdf_extract(sha, salt, ikm).expect("extracts");
            for len in [0, 16, 32, 100, 255 * 32] {
                assert_eq!(
                    crypto.hkdf_expand(sha, prk.as_slice(), b"info", len),
                    theirs.hkdf_expand(sha, prk.as_slice(), b"info", len),
                    "{len} bytes"
                );
            }
        }
        let prk = [7; 32];
        assert_eq!(
            crypto.hkdf_expand(sha, &prk, b"", 255 * 32 + 1).err(),
            Some(CryptoError::HkdfOutputLengthInvalid)
        );
        assert_eq!(
            crypto.hkdf_expand(sha, &prk[..16], b"", 16).err(),
            Some(CryptoError::HkdfOutputLengthInvalid),
            "a pseudorandom key shorter than the hash"
        );
    }

    #[test]
    fn aead_seals_open_across_the_two_providers_and_not_when_altered() {
        let (crypto, theirs) = (ours(), theirs());
        let gcm = AeadType::Aes128Gcm;
        let (key, nonce) = ([3; 16], [5; 12]);
        let sealed = crypto
            .aead_encrypt(gcm, &key, b"message", &nonce, b"aad")
            .expect("seals");
        assert_eq!(
            theirs.aead_encrypt(gcm, &key, b"message", &nonce, b"aad"),
            Ok(sealed.clone())
        );
        assert_eq!(
            theirs.aead_decrypt(gcm, &key, &sealed, &nonce, b"aad"),
            Ok(b"message".to_vec())
        );
        assert_eq!(
            crypto.aead_decrypt(gcm, &key, &sealed, &nonce, b"aad"),
            Ok(b"message".to_vec())
        );
        let mut altered = sealed.clone();
        altered[0] ^= 1;
        for (ct, aad, key) in [
            (&altered[..], &b"aad"[..], key),
            (&sealed[..], b"other aad", key),
            (&sealed[..], b"aad", [4; 16]),
            (&sealed[..3], b"aad", key),
        ] {
            assert_eq!(
                crypto.aead_decrypt(gcm, &key, ct, &nonce, aad),
                Err(CryptoError::AeadDecryptionError)
            );
        }
        assert_eq!(
            crypto.aead_encrypt(gcm, &key, b"m", &[5; 11], b"").err(),
            Some(CryptoError::InvalidLength),
            "a nonce of the wrong size is refused, not a panic"
        );
        assert_eq!(
            crypto.aead_encrypt(gcm, &[3; 32], b"m", &nonce, b"").err(),
            Some(CryptoError::CryptoLibraryError),
            "an AES-256 key for AES-128-GCM"
        );
    }

    #[test]
    fn randomness_comes_in_the_asked_sizes_and_differs() {
        let crypto = ours();
        let a: [u8; 32] = crypto.random_array().expect("random");
        let b: [u8; 32] = crypto.random_array().expect("random");
        assert_ne!(a, b);
        assert_eq!(crypto.random_vec(0).expect("random").len(), 0);
        let long = crypto.random_vec(1000).expect("random");
        assert_eq!(long.len(), 1000);
        assert!(long.iter().any(|&byte| byte != 0));
    }

    #[test]
    fn other_suites_and_algorithms_are_refused() {
        let crypto = ours();
        assert_eq!(crypto.supported_ciphersuites(), vec![CIPHERSUITE]);
        assert!(crypto.supports(CIPHERSUITE).is_ok());
        assert!(
            crypto
                .supports(Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256)
                .is_err()
        );
        assert!(
            crypto
                .supports(Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519)
                .is_err()
        );
        let p256 = HpkeConfig(
            HpkeKemType::DhKemP256,
            HpkeKdfType::HkdfSha256,
            HpkeAeadType::AesGcm128,
        );
        assert_eq!(
            crypto.derive_hpke_keypair(p256, &[1; 32]).err(),
            Some(CryptoError::UnsupportedCiphersuite)
        );
        let chacha = HpkeConfig(
            HpkeKemType::DhKem25519,
            HpkeKdfType::HkdfSha256,
            HpkeAeadType::ChaCha20Poly1305,
        );
        assert!(crypto.hpke_seal(chacha, &[0; 32], b"", b"", b"").is_err());
        assert_eq!(
            crypto
                .signature_key_gen(SignatureScheme::ECDSA_SECP256R1_SHA256)
                .err(),
            Some(CryptoError::UnsupportedSignatureScheme)
        );
        assert_eq!(
            crypto.verify_signature(SignatureScheme::ECDSA_SECP384R1_SHA384, b"", b"", b""),
            Err(CryptoError::UnsupportedSignatureScheme)
        );
        assert_eq!(
            crypto.hash(HashType::Sha2_512, b"").err(),
            Some(CryptoError::UnsupportedHashAlgorithm)
        );
        assert_eq!(
            crypto.hkdf_extract(HashType::Sha2_384, b"", b"").err(),
            Some(CryptoError::UnsupportedHashAlgorithm)
        );
        assert_eq!(
            crypto.hmac(HashType::Sha2_512, b"", b"").err(),
            Some(CryptoError::UnsupportedHashAlgorithm)
        );
        assert_eq!(
            crypto
                .aead_encrypt(AeadType::ChaCha20Poly1305, &[0; 32], b"", &[0; 12], b"")
                .err(),
            Some(CryptoError::UnsupportedAeadAlgorithm)
        );
        assert_eq!(
            crypto
                .aead_decrypt(AeadType::Aes256Gcm, &[0; 32], &[0; 16], &[0; 12], b"")
                .err(),
            Some(CryptoError::UnsupportedAeadAlgorithm)
        );
        // Keys that are not 32 bytes are refused, not truncated.
        assert!(
            crypto
                .hpke_seal(SUITE_HPKE(), &[0; 31], b"", b"", b"")
                .is_err()
        );
    }
}
