//! A software FIDO2 authenticator: a P-256 key that creates and uses WebAuthn credentials, for headless clients and tests.
//!
//! [`SoftKey`] plays both halves of what a member's machine does in a WebAuthn
//! ceremony: the *client* (the browser, or the native CLI acting as a
//! platform client) that checks the relying party id against the page's
//! origin and writes `clientDataJSON`, and the *CTAP2 authenticator* that
//! holds the private key, keeps the signature counter and signs.
//!
//! * [`SoftKey::register`] answers a server's [`CreationChallengeResponse`]
//!   with a new ES256 credential and a `none` attestation.
//! * [`SoftKey::sign_in`] answers a [`RequestChallengeResponse`] with an
//!   assertion; the credential is discoverable, so the assertion carries the
//!   user handle and works with an empty `allowCredentials` list.
//! * [`SoftKey::save`] / [`SoftKey::load`] keep the key in a JSON key file
//!   (mode 0600 on unix). The counter lives in that file: save the key after
//!   every sign-in, or the next run presents an old counter.
//!
//! The authenticator always reports user presence and user verification: it
//! stands for a key whose owner has already unlocked it (the key file is the
//! factor). With the `danger-tamper` feature, `Tamper` lets tests play a
//! hostile or broken client instead; with `testing`, [`testing`] has keys
//! registered through webauthn-rs, the relying party the server runs, and
//! [`SoftKey::register_attested`] answers with a `packed` attestation as a
//! vendor's model would (`Attester`).

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use ciborium::Value;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate as _;
use p256::elliptic_curve::zeroize::Zeroize as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::Base64Url;
use url::{Host, Url};
use webauthn_rs_proto::{
    AuthenticationExtensionsClientOutputs, AuthenticatorAssertionResponseRaw,
    AuthenticatorAttestationResponseRaw, AuthenticatorTransport, CreationChallengeResponse,
    PublicKeyCredential, RegisterPublicKeyCredential, RegistrationExtensionsClientOutputs,
    RequestChallengeResponse,
};

/// COSE algorithm identifier of ES256 (ECDSA with P-256 and SHA-256).
const COSE_ALG_ES256: i64 = -7;
/// The only credential type WebAuthn defines.
const PUBLIC_KEY_TYPE: &str = "public-key";
/// Authenticator data flag: user present.
const FLAG_UP: u8 = 0x01;
/// Authenticator data flag: user verified.
const FLAG_UV: u8 = 0x04;
/// Authenticator data flag: attested credential data included.
const FLAG_AT: u8 = 0x40;
/// Length of the random credential ids this authenticator creates.
const CREDENTIAL_ID_LEN: usize = 32;
/// Version of the key file format written by [`SoftKey::save`].
const KEY_FILE_VERSION: u32 = 1;

/// What can go wrong while creating, using, saving or loading a [`SoftKey`].
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum AuthenticatorError {
    /// The relying party does not accept ES256 (COSE algorithm -7) in
    /// `pubKeyCredParams`, the only algorithm this authenticator has.
    #[error("the relying party does not accept ES256 (COSE -7) credentials")]
    UnsupportedAlgorithm,
    /// The origin is not a URL a browser would run WebAuthn on: it must be
    /// `https`, or `http` on a loopback host (`localhost`, `*.localhost`,
    /// `127.0.0.0/8`, `[::1]`).
    #[error("origin {origin:?} is not a secure WebAuthn origin: {reason}")]
    InvalidOrigin {
        /// The origin as given.
        origin: String,
        /// Why it was refused.
        reason: String,
    },
    /// The relying party id is neither the origin's host nor a registrable
    /// domain suffix of it, so a browser would refuse the ceremony.
    #[error("relying party id {rp_id:?} is not valid for origin {origin:?}")]
    RpIdMismatch {
        /// The relying party id the server asked for.
        rp_id: String,
        /// The origin the client presents.
        origin: String,
    },
    /// This key holds no credential the request can use: the request is for
    /// another relying party, or its `allowCredentials` list does not name
    /// this key's credential id.
    #[error("this key holds no credential usable for this request")]
    NoCredential,
    /// The signature counter has reached `u32::MAX`; the key can sign no more.
    #[error("the signature counter is exhausted")]
    CounterExhausted,
    /// No FIDO2 security key is plugged in.
    #[error(
        "no security key found: plug in your FIDO2 key (a YubiKey, say), or pass --key-file to use \
         a software key"
    )]
    NoSecurityKey,
    /// The PIN was wrong; the key allows `retries` more tries before it blocks itself.
    #[error("wrong PIN: {retries} tries left before the key blocks its PIN")]
    PinInvalid {
        /// Tries left.
        retries: u32,
    },
    /// Too many wrong PINs in a row: the key refuses PINs until it is plugged in again.
    #[error("too many wrong PINs in a row: unplug the key, plug it in again and retry")]
    PinAuthBlocked,
    /// The PIN is blocked for good: only a reset of the key (which erases its credentials) helps.
    #[error(
        "the key's PIN is blocked after too many wrong tries: only a reset of the key helps, and a \
         reset erases its credentials (enroll a new key with `tessera keys add` from another of \
         your devices, or ask an admin for a recovery invitation)"
    )]
    PinBlocked,
    /// The key has no PIN, and Tessera asks for user verification.
    #[error(
        "the key has no PIN yet: set one first (`ykman fido access change-pin` for a YubiKey, or \
         `fido2-token -S` from Debian's fido2-tools), then retry"
    )]
    PinNotSet,
    /// Nobody touched the key in time.
    #[error("the key was not touched in time: retry, and touch the key when it blinks")]
    TouchTimeout,
    /// The key refused (its owner declined on the key).
    #[error("the key refused the request")]
    Denied,
    /// The key went away during the ceremony.
    #[error("the key was removed during the ceremony: plug it in again and retry")]
    Removed,
    /// The key holds a credential for this circle already.
    #[error("this key is already enrolled here: use another key, or `tessera login` with this one")]
    AlreadyEnrolled,
    /// The key answered with something else.
    #[error("the security key failed: {0}")]
    Device(String),
    /// The key file holds a credential already (one per software key file).
    #[error(
        "this key file already holds a credential (for {0}); create another with `tessera soft-key new`"
    )]
    AlreadyRegistered(String),
    /// Reading or writing the key file failed.
    #[error("key file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The key file is not a valid soft key file.
    #[error("invalid key file: {0}")]
    KeyFile(String),
    /// Encoding client data, authenticator data or CBOR failed.
    #[error("encoding failed: {0}")]
    Encoding(String),
    /// The system random number generator or the signer failed.
    #[error("cryptographic failure: {0}")]
    Crypto(String),
}

pub mod client;
#[cfg(feature = "testing")]
pub mod testing;

/// What a ceremony needs of a member's key, whichever kind it is: a [`SoftKey`] in a file, or a
/// security key spoken to over CTAP2 (the CLI's `tessera_client::security_key`).
pub trait Authenticator: Send {
    /// Creates the key's credential for the relying party's registration `options` at `origin`.
    ///
    /// # Errors
    /// When a browser would refuse the request, or the key does.
    fn register(
        &mut self,
        options: &CreationChallengeResponse,
        origin: &str,
    ) -> Result<RegisterPublicKeyCredential, AuthenticatorError>;

    /// Answers the relying party's authentication `options` at `origin` with an assertion.
    ///
    /// # Errors
    /// When a browser would refuse the request, or the key does.
    fn sign_in(
        &mut self,
        options: &RequestChallengeResponse,
        origin: &str,
    ) -> Result<PublicKeyCredential, AuthenticatorError>;

    /// The public key of the credential registered last, as the circle directory lists it.
    fn public_key_info(&self) -> tessera_wire::PublicKeyInfo;

    /// The relying party id of that credential.
    fn rp_id(&self) -> &str;
}

impl Authenticator for SoftKey {
    fn register(
        &mut self,
        options: &CreationChallengeResponse,
        origin: &str,
    ) -> Result<RegisterPublicKeyCredential, AuthenticatorError> {
        self.register_blank(options, origin)
    }

    fn sign_in(
        &mut self,
        options: &RequestChallengeResponse,
        origin: &str,
    ) -> Result<PublicKeyCredential, AuthenticatorError> {
        SoftKey::sign_in(self, options, origin)
    }

    fn public_key_info(&self) -> tessera_wire::PublicKeyInfo {
        SoftKey::public_key_info(self)
    }

    fn rp_id(&self) -> &str {
        SoftKey::rp_id(self)
    }
}

#[cfg(feature = "danger-tamper")]
pub use tamper::Tamper;
#[cfg(not(feature = "danger-tamper"))]
use tamper::Tamper;

mod tamper {
    /// Deviations from correct behaviour, for tests that play a hostile or broken
    /// client or authenticator (feature `danger-tamper`). `Tamper::default()`
    /// tampers with nothing.
    ///
    /// Each field changes one thing in the response; everything else stays
    /// correct, so a relying party that refuses the response refuses it for that
    /// one reason.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Tamper {
        /// Write this `type` into clientDataJSON instead of `webauthn.create` /
        /// `webauthn.get`.
        pub client_data_type: Option<String>,
        /// Write this origin into clientDataJSON instead of the real one. The
        /// real origin passed to the call is still checked against the rp id;
        /// this one is not checked at all.
        pub origin: Option<String>,
        /// Write this challenge (base64url-encoded) into clientDataJSON instead
        /// of the one the relying party sent.
        pub challenge: Option<Vec<u8>>,
        /// Hash this rp id into authenticatorData instead of the real one. It is
        /// not checked against the origin.
        pub rp_id: Option<String>,
        /// Clear the user-present (UP) flag in authenticatorData.
        pub clear_user_present: bool,
        /// Clear the user-verified (UV) flag in authenticatorData.
        pub clear_user_verified: bool,
        /// Sign data with one byte flipped, so the signature does not verify over
        /// what is sent. Sign-in only: a `none` attestation carries no signature.
        pub corrupt_signature: bool,
        /// Report this signature counter in authenticatorData instead of the real
        /// one. The key's own counter still advances as usual.
        pub counter: Option<u32>,
        /// Sign-in only: send this user handle instead of the one stored with the
        /// credential; `Some(vec![])` sends no user handle at all.
        pub user_handle: Option<Vec<u8>>,
        /// Present this credential id. At sign-in it replaces `id` and `rawId`
        /// (the key still signs with its own private key). At registration the
        /// new credential is created under this id: it goes into the attested
        /// credential data as well, and the returned [`SoftKey`] keeps it, e.g.
        /// to try registering an id that already belongs to someone else.
        pub credential_id: Option<Vec<u8>>,
        /// Registration only: report this AAGUID (authenticator model) instead of
        /// all zeros, as a key of that model would.
        pub aaguid: Option<[u8; 16]>,
        /// Say `crossOrigin: true` in clientDataJSON, as a page embedded in another
        /// site's frame would.
        pub cross_origin: bool,
        /// Registration only: put this COSE_Key in the attested credential data
        /// instead of the key's own, as a key of another algorithm (RS256,
        /// ES384) would. The key still signs with its own P-256 key later.
        pub cose_key: Option<Vec<u8>>,
    }
}

/// Who vouches for a new credential's authenticator model in its `packed` attestation statement
/// (feature `testing`): a vendor's attestation key with its certificate chain, or the credential's
/// own key (self attestation, which proves nothing about the model).
#[cfg(feature = "testing")]
#[derive(Clone)]
pub enum Attester {
    /// Signed by an attestation key whose certificate chain (leaf first, as `x5c`) leads to a
    /// vendor's root, for authenticators of model `aaguid`.
    Vendor {
        /// The attestation key.
        key: SigningKey,
        /// The certificates, DER, leaf first.
        chain: Vec<Vec<u8>>,
        /// The model the authenticator reports.
        aaguid: [u8; 16],
    },
    /// Signed by the credential's own key, reporting `aaguid`.
    SelfAttested {
        /// The model the authenticator claims.
        aaguid: [u8; 16],
    },
}

/// Without the `testing` feature there is no attester: a key attests `none`.
#[cfg(not(feature = "testing"))]
#[derive(Clone, Debug)]
enum Attester {}

#[cfg(not(feature = "testing"))]
impl Attester {
    fn aaguid(&self) -> [u8; 16] {
        match *self {}
    }

    fn statement(&self, _: &SigningKey, _: &[u8], _: &[u8]) -> Result<Value, AuthenticatorError> {
        match *self {}
    }
}

#[cfg(feature = "testing")]
impl Attester {
    fn aaguid(&self) -> [u8; 16] {
        match self {
            Attester::Vendor { aaguid, .. } | Attester::SelfAttested { aaguid } => *aaguid,
        }
    }

    /// The `packed` statement over authenticator data ‖ SHA-256(client data): ES256, with the
    /// chain for a vendor's key (WebAuthn §8.2).
    fn statement(
        &self,
        credential_key: &SigningKey,
        auth_data: &[u8],
        client_data_json: &[u8],
    ) -> Result<Value, AuthenticatorError> {
        let mut signed = auth_data.to_vec();
        signed.extend_from_slice(&Sha256::digest(client_data_json));
        let (key, chain) = match self {
            Attester::Vendor { key, chain, .. } => (key, Some(chain)),
            Attester::SelfAttested { .. } => (credential_key, None),
        };
        let signature: DerSignature = key.try_sign(&signed).map_err(crypto)?;
        let mut statement = vec![
            (
                Value::Text("alg".into()),
                Value::Integer(COSE_ALG_ES256.into()),
            ),
            (
                Value::Text("sig".into()),
                Value::Bytes(signature.as_bytes().to_vec()),
            ),
        ];
        if let Some(chain) = chain {
            let chain = chain.iter().cloned().map(Value::Bytes).collect();
            statement.push((Value::Text("x5c".into()), Value::Array(chain)));
        }
        Ok(Value::Map(statement))
    }
}

#[cfg(feature = "testing")]
impl fmt::Debug for Attester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attester")
            .field("aaguid", &Base64Url::encode(&self.aaguid()))
            .finish_non_exhaustive()
    }
}

/// A software WebAuthn authenticator holding one discoverable ES256
/// credential.
///
/// Create one with [`SoftKey::register`], keep it with [`SoftKey::save`] and
/// [`SoftKey::load`], use it with [`SoftKey::sign_in`]. `Debug` never prints
/// the private key.
#[derive(Clone)]
pub struct SoftKey {
    signing_key: SigningKey,
    credential_id: Vec<u8>,
    rp_id: String,
    user_handle: Vec<u8>,
    counter: u32,
    aaguid: [u8; 16],
}

impl fmt::Debug for SoftKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftKey")
            .field("rp_id", &self.rp_id)
            .field("credential_id", &Base64Url::encode(&self.credential_id))
            .field("user_handle", &Base64Url::encode(&self.user_handle))
            .field("counter", &self.counter)
            .field("aaguid", &Base64Url::encode(&self.aaguid))
            .field("public_key", &Base64Url::encode(&self.public_key_sec1()))
            .field("signing_key", &"<redacted>")
            .finish()
    }
}

/// The key file written by [`SoftKey::save`]: JSON, binary fields in
/// unpadded base64url.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    rp_id: String,
    credential_id: String,
    user_handle: String,
    counter: u32,
    aaguid: String,
    /// The P-256 private scalar, 32 bytes big-endian.
    private_key: String,
}

/// The clientDataJSON a browser produces, in the order browsers write it.
#[derive(Serialize)]
struct ClientData<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    challenge: String,
    origin: &'a str,
    #[serde(rename = "crossOrigin")]
    cross_origin: bool,
}

/// The page the ceremony runs on, as the browser sees it.
struct Page {
    url: Url,
    /// The serialized origin (`scheme://host[:port]`), as clientDataJSON
    /// carries it.
    origin: String,
}

impl Page {
    /// Parses an origin (or any URL of the page) and refuses what a browser
    /// would not run WebAuthn on.
    fn parse(origin: &str) -> Result<Self, AuthenticatorError> {
        let refuse = |reason: &str| AuthenticatorError::InvalidOrigin {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        let url = Url::parse(origin).map_err(|e| refuse(&e.to_string()))?;
        let host = url.host().ok_or_else(|| refuse("no host"))?;
        let secure = match url.scheme() {
            "https" => true,
            "http" => is_loopback(&host),
            _ => false,
        };
        if !secure {
            return Err(refuse("WebAuthn needs https, or http on a loopback host"));
        }
        let serialized = url.origin().ascii_serialization();
        Ok(Self {
            url,
            origin: serialized,
        })
    }

    /// Returns the effective rp id for a request: the one asked for, or the
    /// origin's host when none is given, as browsers do. Refuses an rp id
    /// that is neither the host nor a registrable suffix of it.
    ///
    /// Without a public suffix list, "registrable" is approximated: a suffix
    /// must have at least two labels (so `com` is refused while `example.com`
    /// is accepted for `login.example.com`), and IP hosts must match exactly.
    fn resolve_rp_id(&self, rp_id: &str) -> Result<String, AuthenticatorError> {
        let host = match self.url.host() {
            Some(Host::Domain(domain)) => domain.to_ascii_lowercase(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => String::new(),
        };
        if rp_id.is_empty() {
            return Ok(host);
        }
        let wanted = rp_id.to_ascii_lowercase();
        let is_domain = matches!(self.url.host(), Some(Host::Domain(_)));
        let suffix_ok = is_domain
            && wanted.contains('.')
            && !wanted.starts_with('.')
            && !wanted.ends_with('.')
            && host.ends_with(&format!(".{wanted}"));
        if wanted == host || suffix_ok {
            Ok(wanted)
        } else {
            Err(AuthenticatorError::RpIdMismatch {
                rp_id: rp_id.to_owned(),
                origin: self.origin.clone(),
            })
        }
    }
}

/// Whether a host is one browsers treat as a secure context over plain http.
fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(domain) => {
            let domain = domain.to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

fn unb64(field: &str, text: &str) -> Result<Vec<u8>, AuthenticatorError> {
    Base64Url::decode(text).map_err(|e| AuthenticatorError::KeyFile(format!("{field}: {e}")))
}

fn crypto(e: impl fmt::Display) -> AuthenticatorError {
    AuthenticatorError::Crypto(e.to_string())
}

fn encoding(e: impl fmt::Display) -> AuthenticatorError {
    AuthenticatorError::Encoding(e.to_string())
}

/// Builds clientDataJSON for a ceremony, with the tampering asked for.
fn client_data_json(
    tamper: &Tamper,
    type_: &str,
    challenge: &[u8],
    origin: &str,
) -> Result<Vec<u8>, AuthenticatorError> {
    let data = ClientData {
        type_: tamper.client_data_type.as_deref().unwrap_or(type_),
        challenge: Base64Url::encode(tamper.challenge.as_deref().unwrap_or(challenge)),
        origin: tamper.origin.as_deref().unwrap_or(origin),
        cross_origin: tamper.cross_origin,
    };
    serde_json::to_vec(&data).map_err(encoding)
}

/// Builds authenticatorData: rpIdHash ‖ flags ‖ counter (‖ attested
/// credential data), with the tampering asked for.
fn authenticator_data(
    tamper: &Tamper,
    rp_id: &str,
    mut flags: u8,
    counter: u32,
    attested: Option<&[u8]>,
) -> Vec<u8> {
    let rp_id = tamper.rp_id.as_deref().unwrap_or(rp_id);
    if tamper.clear_user_present {
        flags &= !FLAG_UP;
    }
    if tamper.clear_user_verified {
        flags &= !FLAG_UV;
    }
    let counter = tamper.counter.unwrap_or(counter);
    let mut data = Vec::with_capacity(37 + attested.map_or(0, <[u8]>::len));
    data.extend_from_slice(&Sha256::digest(rp_id.as_bytes()));
    data.push(flags);
    data.extend_from_slice(&counter.to_be_bytes());
    if let Some(attested) = attested {
        data.extend_from_slice(attested);
    }
    data
}

/// Serializes a CBOR value.
fn cbor(value: &Value) -> Result<Vec<u8>, AuthenticatorError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(encoding)?;
    Ok(out)
}

impl SoftKey {
    /// Creates a new credential for the relying party's registration options,
    /// as a browser with a CTAP2 security key would, and returns the new key
    /// with the response to send back to the server.
    ///
    /// `origin` is the origin the client presents (the server's origin, e.g.
    /// `https://tessera.example`).
    ///
    /// # Errors
    ///
    /// [`AuthenticatorError::UnsupportedAlgorithm`] if the server does not
    /// accept ES256, [`AuthenticatorError::InvalidOrigin`] or
    /// [`AuthenticatorError::RpIdMismatch`] if a browser would refuse the
    /// origin or rp id, [`AuthenticatorError::Crypto`] or
    /// [`AuthenticatorError::Encoding`] on internal failures.
    pub fn register(
        options: &CreationChallengeResponse,
        origin: &str,
    ) -> Result<(SoftKey, RegisterPublicKeyCredential), AuthenticatorError> {
        Self::register_tampered(options, origin, &Tamper::default())
    }

    /// [`SoftKey::register`] with deliberate deviations, for tests (feature `danger-tamper`).
    ///
    /// # Errors
    ///
    /// As [`SoftKey::register`]; also [`AuthenticatorError::Encoding`] if a
    /// tampered credential id is longer than 65535 bytes.
    #[cfg(feature = "danger-tamper")]
    pub fn register_with(
        options: &CreationChallengeResponse,
        origin: &str,
        tamper: &Tamper,
    ) -> Result<(SoftKey, RegisterPublicKeyCredential), AuthenticatorError> {
        Self::register_tampered(options, origin, tamper)
    }

    fn register_tampered(
        options: &CreationChallengeResponse,
        origin: &str,
        tamper: &Tamper,
    ) -> Result<(SoftKey, RegisterPublicKeyCredential), AuthenticatorError> {
        let signing_key = SigningKey::try_generate().map_err(crypto)?;
        Self::create(signing_key, options, origin, (tamper, None))
    }

    /// [`SoftKey::register`] with a `packed` attestation statement made by `attester`, as a
    /// hardware key of a vendor's model answers a relying party that asks for attestation
    /// (feature `testing`).
    ///
    /// # Errors
    ///
    /// As [`SoftKey::register`].
    #[cfg(feature = "testing")]
    pub fn register_attested(
        options: &CreationChallengeResponse,
        origin: &str,
        attester: &Attester,
    ) -> Result<(SoftKey, RegisterPublicKeyCredential), AuthenticatorError> {
        let signing_key = SigningKey::try_generate().map_err(crypto)?;
        Self::create(
            signing_key,
            options,
            origin,
            (&Tamper::default(), Some(attester)),
        )
    }

    /// A key holding no credential yet, as `tessera soft-key new` writes it: the first registration
    /// ([`SoftKey::register_blank`]) creates its one credential with the key made here.
    ///
    /// # Errors
    ///
    /// [`AuthenticatorError::Crypto`] if the system has no randomness.
    pub fn blank() -> Result<SoftKey, AuthenticatorError> {
        Ok(SoftKey {
            signing_key: SigningKey::try_generate().map_err(crypto)?,
            credential_id: Vec::new(),
            rp_id: String::new(),
            user_handle: Vec::new(),
            counter: 0,
            aaguid: [0; 16],
        })
    }

    /// Whether the key holds no credential yet.
    #[must_use]
    pub fn is_blank(&self) -> bool {
        self.credential_id.is_empty()
    }

    /// Creates this blank key's credential for the relying party's `options`, as
    /// [`SoftKey::register`] does with a fresh key.
    ///
    /// # Errors
    ///
    /// [`AuthenticatorError::AlreadyRegistered`] if the key holds a credential already; otherwise
    /// as [`SoftKey::register`].
    pub fn register_blank(
        &mut self,
        options: &CreationChallengeResponse,
        origin: &str,
    ) -> Result<RegisterPublicKeyCredential, AuthenticatorError> {
        if !self.is_blank() {
            return Err(AuthenticatorError::AlreadyRegistered(self.rp_id.clone()));
        }
        let (key, credential) = Self::create(
            self.signing_key.clone(),
            options,
            origin,
            (&Tamper::default(), None),
        )?;
        *self = key;
        Ok(credential)
    }

    /// A credential for `options` made with `signing_key`, attested by `attester` (`none` without
    /// one).
    fn create(
        signing_key: SigningKey,
        options: &CreationChallengeResponse,
        origin: &str,
        (tamper, attester): (&Tamper, Option<&Attester>),
    ) -> Result<(SoftKey, RegisterPublicKeyCredential), AuthenticatorError> {
        let opts = &options.public_key;
        let (page, rp_id) = client::creation_page(options, origin)?;

        let credential_id = match &tamper.credential_id {
            Some(id) => id.clone(),
            None => <[u8; CREDENTIAL_ID_LEN]>::try_generate()
                .map_err(crypto)?
                .to_vec(),
        };
        let key = SoftKey {
            signing_key,
            credential_id,
            rp_id,
            user_handle: opts.user.id.clone(),
            counter: 0,
            aaguid: tamper
                .aaguid
                .or_else(|| attester.map(Attester::aaguid))
                .unwrap_or([0; 16]),
        };

        let client_data_json =
            client_data_json(tamper, "webauthn.create", &opts.challenge, &page.origin)?;
        let mut attested = key.attested_credential_data()?;
        if let Some(cose_key) = &tamper.cose_key {
            attested.truncate(16 + 2 + key.credential_id.len());
            attested.extend_from_slice(cose_key);
        }
        let auth_data = authenticator_data(
            tamper,
            &key.rp_id,
            FLAG_UP | FLAG_UV | FLAG_AT,
            key.counter,
            Some(&attested),
        );
        let (format, statement) = match attester {
            None => ("none", Value::Map(Vec::new())),
            Some(attester) => (
                "packed",
                attester.statement(&key.signing_key, &auth_data, &client_data_json)?,
            ),
        };
        let attestation_object = cbor(&Value::Map(vec![
            (Value::Text("fmt".into()), Value::Text(format.into())),
            (Value::Text("attStmt".into()), statement),
            (Value::Text("authData".into()), Value::Bytes(auth_data)),
        ]))?;

        let credential = RegisterPublicKeyCredential {
            id: Base64Url::encode(&key.credential_id),
            raw_id: key.credential_id.clone(),
            response: AuthenticatorAttestationResponseRaw {
                attestation_object,
                client_data_json,
                transports: Some(vec![AuthenticatorTransport::Usb]),
            },
            type_: PUBLIC_KEY_TYPE.to_owned(),
            extensions: RegistrationExtensionsClientOutputs::default(),
        };
        Ok((key, credential))
    }

    /// Answers the relying party's authentication options with an assertion,
    /// as a browser with a CTAP2 security key would. Advances the signature
    /// counter: save the key afterwards to keep it.
    ///
    /// # Errors
    ///
    /// [`AuthenticatorError::InvalidOrigin`] or
    /// [`AuthenticatorError::RpIdMismatch`] if a browser would refuse the
    /// origin or rp id, [`AuthenticatorError::NoCredential`] if the request
    /// is for another relying party or its non-empty `allowCredentials` does
    /// not list this credential, [`AuthenticatorError::CounterExhausted`],
    /// [`AuthenticatorError::Crypto`] or [`AuthenticatorError::Encoding`].
    pub fn sign_in(
        &mut self,
        options: &RequestChallengeResponse,
        origin: &str,
    ) -> Result<PublicKeyCredential, AuthenticatorError> {
        self.sign_in_tampered(options, origin, &Tamper::default())
    }

    /// [`SoftKey::sign_in`] with deliberate deviations, for tests (feature `danger-tamper`).
    ///
    /// # Errors
    ///
    /// As [`SoftKey::sign_in`].
    #[cfg(feature = "danger-tamper")]
    pub fn sign_in_with(
        &mut self,
        options: &RequestChallengeResponse,
        origin: &str,
        tamper: &Tamper,
    ) -> Result<PublicKeyCredential, AuthenticatorError> {
        self.sign_in_tampered(options, origin, tamper)
    }

    fn sign_in_tampered(
        &mut self,
        options: &RequestChallengeResponse,
        origin: &str,
        tamper: &Tamper,
    ) -> Result<PublicKeyCredential, AuthenticatorError> {
        let opts = &options.public_key;
        let page = Page::parse(origin)?;
        let rp_id = page.resolve_rp_id(&opts.rp_id)?;
        if !rp_id.eq_ignore_ascii_case(&self.rp_id) {
            return Err(AuthenticatorError::NoCredential);
        }
        let allowed = opts.allow_credentials.is_empty()
            || opts
                .allow_credentials
                .iter()
                .any(|c| c.type_ == PUBLIC_KEY_TYPE && c.id == self.credential_id);
        if !allowed {
            return Err(AuthenticatorError::NoCredential);
        }
        let counter = self
            .counter
            .checked_add(1)
            .ok_or(AuthenticatorError::CounterExhausted)?;

        let client_data_json =
            client_data_json(tamper, "webauthn.get", &opts.challenge, &page.origin)?;
        let auth_data = authenticator_data(tamper, &self.rp_id, FLAG_UP | FLAG_UV, counter, None);

        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data_json));
        if tamper.corrupt_signature
            && let Some(last) = signed.last_mut()
        {
            *last ^= 0x01;
        }
        let signature: DerSignature = self.signing_key.try_sign(&signed).map_err(crypto)?;

        let presented_id = tamper
            .credential_id
            .clone()
            .unwrap_or_else(|| self.credential_id.clone());
        let user_handle = match &tamper.user_handle {
            None => Some(self.user_handle.clone()),
            Some(handle) if handle.is_empty() => None,
            Some(handle) => Some(handle.clone()),
        };
        self.counter = counter;

        Ok(PublicKeyCredential {
            id: Base64Url::encode(&presented_id),
            raw_id: presented_id,
            response: AuthenticatorAssertionResponseRaw {
                authenticator_data: auth_data,
                client_data_json,
                signature: signature.as_bytes().to_vec(),
                user_handle,
            },
            extensions: AuthenticationExtensionsClientOutputs::default(),
            type_: PUBLIC_KEY_TYPE.to_owned(),
        })
    }

    /// The credential's public key as an uncompressed SEC1 point
    /// (`0x04 ‖ x ‖ y`, 65 bytes).
    #[must_use]
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.signing_key
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    }

    /// The key as the circle directory lists it (`GET /api/v1/members`).
    #[must_use]
    pub fn public_key_info(&self) -> tessera_wire::PublicKeyInfo {
        tessera_wire::PublicKeyInfo {
            credential_id: self.credential_id.clone().into(),
            alg: "ES256".into(),
            public_key: self.public_key_sec1().into(),
        }
    }

    /// The credential id.
    #[must_use]
    pub fn credential_id(&self) -> &[u8] {
        &self.credential_id
    }

    /// The user handle (WebAuthn `user.id`) the credential was created for.
    #[must_use]
    pub fn user_handle(&self) -> &[u8] {
        &self.user_handle
    }

    /// The relying party id the credential is bound to.
    #[must_use]
    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    /// The signature counter: the value the last assertion reported.
    #[must_use]
    pub fn counter(&self) -> u32 {
        self.counter
    }

    /// The authenticator's AAGUID (all zero for this software key).
    #[must_use]
    pub fn aaguid(&self) -> [u8; 16] {
        self.aaguid
    }

    /// Writes the key to a JSON key file, replacing any file at `path`.
    ///
    /// The file is written next to `path` under a temporary name, created
    /// with mode 0600 on unix, synced and then renamed into place, so a crash
    /// never leaves a half-written key.
    ///
    /// # Errors
    ///
    /// [`AuthenticatorError::Io`] if the file cannot be written,
    /// [`AuthenticatorError::Encoding`] if the JSON cannot be produced.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), AuthenticatorError> {
        let path = path.as_ref();
        let file_name = path.file_name().ok_or_else(|| {
            AuthenticatorError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} does not name a file", path.display()),
            ))
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            file_name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));

        let mut secret = self.signing_key.to_bytes();
        let mut file = KeyFile {
            version: KEY_FILE_VERSION,
            rp_id: self.rp_id.clone(),
            credential_id: Base64Url::encode(&self.credential_id),
            user_handle: Base64Url::encode(&self.user_handle),
            counter: self.counter,
            aaguid: Base64Url::encode(&self.aaguid),
            private_key: Base64Url::encode(&secret),
        };
        secret.zeroize();
        let json = serde_json::to_vec_pretty(&file).map_err(encoding);
        file.private_key.zeroize();
        let mut json = json?;
        json.push(b'\n');

        let written =
            write_new_private_file(&tmp, &json).and_then(|()| std::fs::rename(&tmp, path));
        json.zeroize();
        if written.is_err() {
            // Best effort: the temporary file may not even exist.
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(written?)
    }

    /// Reads a key written by [`SoftKey::save`].
    ///
    /// # Errors
    ///
    /// [`AuthenticatorError::Io`] if the file cannot be read,
    /// [`AuthenticatorError::KeyFile`] if it is not a valid key file.
    pub fn load(path: impl AsRef<Path>) -> Result<SoftKey, AuthenticatorError> {
        let mut text = std::fs::read_to_string(path)?;
        let parsed = serde_json::from_str::<KeyFile>(&text);
        text.zeroize();
        let mut file =
            parsed.map_err(|e| AuthenticatorError::KeyFile(format!("not a soft key file: {e}")))?;
        let key = Self::from_key_file(&file);
        file.private_key.zeroize();
        key
    }

    fn from_key_file(file: &KeyFile) -> Result<SoftKey, AuthenticatorError> {
        let invalid = |what: &str| AuthenticatorError::KeyFile(what.to_owned());
        if file.version != KEY_FILE_VERSION {
            return Err(AuthenticatorError::KeyFile(format!(
                "unsupported key file version {}",
                file.version
            )));
        }
        let credential_id = unb64("credential_id", &file.credential_id)?;
        // A blank key (`tessera soft-key new`) has neither; a registered one has both.
        let blank = file.rp_id.is_empty() && credential_id.is_empty();
        if file.rp_id.is_empty() && !blank {
            return Err(invalid("rp_id is empty"));
        }
        if (credential_id.is_empty() && !blank) || credential_id.len() > usize::from(u16::MAX) {
            return Err(invalid("credential_id has an invalid length"));
        }
        let user_handle = unb64("user_handle", &file.user_handle)?;
        let aaguid: [u8; 16] = unb64("aaguid", &file.aaguid)?
            .try_into()
            .map_err(|_| invalid("aaguid is not 16 bytes"))?;
        let mut secret = unb64("private_key", &file.private_key)?;
        let signing_key = if secret.len() == 32 {
            SigningKey::from_slice(&secret).map_err(|_| invalid("private_key is not a P-256 key"))
        } else {
            Err(invalid("private_key is not 32 bytes"))
        };
        secret.zeroize();
        Ok(SoftKey {
            signing_key: signing_key?,
            credential_id,
            rp_id: file.rp_id.clone(),
            user_handle,
            counter: file.counter,
            aaguid,
        })
    }

    /// Attested credential data: AAGUID ‖ credential id length (u16 BE) ‖
    /// credential id ‖ COSE_Key.
    fn attested_credential_data(&self) -> Result<Vec<u8>, AuthenticatorError> {
        let id_len = u16::try_from(self.credential_id.len())
            .map_err(|_| encoding("credential id longer than 65535 bytes"))?;
        let mut data = Vec::with_capacity(16 + 2 + self.credential_id.len() + 77);
        data.extend_from_slice(&self.aaguid);
        data.extend_from_slice(&id_len.to_be_bytes());
        data.extend_from_slice(&self.credential_id);
        data.extend_from_slice(&self.cose_key()?);
        Ok(data)
    }

    /// The public key as a COSE_Key: {1: 2 (EC2), 3: -7 (ES256), -1: 1
    /// (P-256), -2: x, -3: y}, in CTAP2 canonical key order.
    fn cose_key(&self) -> Result<Vec<u8>, AuthenticatorError> {
        let point = self.public_key_sec1();
        if point.len() != 65 || point.first() != Some(&0x04) {
            return Err(encoding("public key is not an uncompressed P-256 point"));
        }
        let (x, y) = point[1..].split_at(32);
        cbor(&Value::Map(vec![
            (Value::Integer(1.into()), Value::Integer(2.into())),
            (
                Value::Integer(3.into()),
                Value::Integer(COSE_ALG_ES256.into()),
            ),
            (Value::Integer((-1).into()), Value::Integer(1.into())),
            (Value::Integer((-2).into()), Value::Bytes(x.to_vec())),
            (Value::Integer((-3).into()), Value::Bytes(y.to_vec())),
        ]))
    }
}

/// Creates a file that must not exist yet, readable by its owner only on
/// unix, writes `bytes` and syncs it.
fn write_new_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use webauthn_rs::prelude::Uuid;

    use super::*;
    use crate::testing::{
        ORIGIN, enroll, login, over_the_wire, registration_options, relying_party,
    };

    #[test]
    fn registration_is_accepted_by_webauthn_rs() {
        let rp = relying_party();
        let (user, key, passkey) = enroll(&rp);
        assert_eq!(passkey.cred_id().as_slice(), key.credential_id());
        assert_eq!(key.credential_id().len(), CREDENTIAL_ID_LEN);
        assert_eq!(key.user_handle(), user.as_bytes());
        assert_eq!(key.rp_id(), "localhost");
        assert_eq!(key.counter(), 0);
        assert_eq!(key.aaguid(), [0; 16]);
        let point = key.public_key_sec1();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04);
    }

    #[test]
    fn registration_response_has_the_documented_shape() {
        let rp = relying_party();
        let (_, ccr, _) = registration_options(&rp);
        let (key, reg) = SoftKey::register(&ccr, ORIGIN).expect("registers");
        assert_eq!(reg.id, Base64Url::encode(key.credential_id()));
        assert_eq!(reg.raw_id, key.credential_id());
        assert_eq!(reg.type_, "public-key");
        assert_eq!(
            reg.response.transports,
            Some(vec![AuthenticatorTransport::Usb])
        );

        let client: serde_json::Value =
            serde_json::from_slice(&reg.response.client_data_json).expect("client data is JSON");
        assert_eq!(client["type"], "webauthn.create");
        assert_eq!(client["origin"], ORIGIN);
        assert_eq!(client["crossOrigin"], false);
        assert_eq!(
            client["challenge"],
            Base64Url::encode(&ccr.public_key.challenge).as_str()
        );

        let object: Value = ciborium::from_reader(reg.response.attestation_object.as_slice())
            .expect("attestation object is CBOR");
        let entries = object.as_map().expect("a map");
        let get = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v.clone())
                .expect("field present")
        };
        assert_eq!(get("fmt").as_text(), Some("none"));
        assert_eq!(get("attStmt").as_map().map(Vec::len), Some(0));
        let auth_data = get("authData").into_bytes().expect("bytes");
        assert_eq!(&auth_data[..32], Sha256::digest(b"localhost").as_slice());
        assert_eq!(auth_data[32], FLAG_UP | FLAG_UV | FLAG_AT);
        assert_eq!(&auth_data[33..37], &[0, 0, 0, 0]);
        assert_eq!(&auth_data[37..53], &[0; 16]);
        assert_eq!(&auth_data[53..55], &[0, 32]);
        assert_eq!(&auth_data[55..87], key.credential_id());
        let cose: Value = ciborium::from_reader(&auth_data[87..]).expect("COSE key is CBOR");
        let point = key.public_key_sec1();
        let expected = Value::Map(vec![
            (Value::Integer(1.into()), Value::Integer(2.into())),
            (Value::Integer(3.into()), Value::Integer((-7).into())),
            (Value::Integer((-1).into()), Value::Integer(1.into())),
            (
                Value::Integer((-2).into()),
                Value::Bytes(point[1..33].to_vec()),
            ),
            (
                Value::Integer((-3).into()),
                Value::Bytes(point[33..].to_vec()),
            ),
        ]);
        assert_eq!(cose, expected);
    }

    #[test]
    fn discoverable_login_succeeds_and_counter_advances() {
        let rp = relying_party();
        let (user, mut key, mut passkey) = enroll(&rp);
        for expected in 1..=3 {
            let (who, result) =
                login(&rp, &mut key, &passkey, &Tamper::default()).expect("login accepted");
            assert_eq!(who, user);
            assert_eq!(result.cred_id().as_slice(), key.credential_id());
            assert!(result.user_verified());
            assert_eq!(result.counter(), expected);
            assert_eq!(key.counter(), expected);
            passkey.update_credential(&result);
        }
    }

    #[test]
    fn assertion_is_der_signed_over_auth_data_and_client_data_hash() {
        use p256::ecdsa::signature::Verifier as _;
        let rp = relying_party();
        let (user, mut key, _) = enroll(&rp);
        let (rcr, _) = rp.start_discoverable_authentication().expect("starts");
        let cred = key.sign_in(&rcr, ORIGIN).expect("signs");
        let response = &cred.response;
        assert_eq!(
            response.user_handle.as_deref(),
            Some(user.as_bytes().as_slice())
        );
        assert_eq!(response.authenticator_data.len(), 37);
        assert_eq!(response.authenticator_data[32], FLAG_UP | FLAG_UV);
        assert_eq!(&response.authenticator_data[33..], &1u32.to_be_bytes());
        let client: serde_json::Value =
            serde_json::from_slice(&response.client_data_json).expect("JSON");
        assert_eq!(client["type"], "webauthn.get");
        let mut signed = response.authenticator_data.clone();
        signed.extend_from_slice(&Sha256::digest(&response.client_data_json));
        let verifying =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&key.public_key_sec1()).expect("point");
        let signature = DerSignature::try_from(response.signature.as_slice()).expect("DER");
        verifying
            .verify(&signed, &signature)
            .expect("signature verifies");
    }

    #[test]
    fn login_with_allow_list_naming_the_key() {
        let rp = relying_party();
        let (_, mut key, passkey) = enroll(&rp);
        let (rcr, state) = rp
            .start_passkey_authentication(std::slice::from_ref(&passkey))
            .expect("starts");
        let cred = key.sign_in(&over_the_wire(&rcr), ORIGIN).expect("signs");
        let result = rp
            .finish_passkey_authentication(&cred, &state)
            .expect("accepted");
        assert_eq!(result.counter(), 1);
    }

    #[test]
    fn allow_list_without_the_key_is_refused_by_the_soft_key() {
        let rp = relying_party();
        let (_, mut key, _) = enroll(&rp);
        let (_, _, other) = enroll(&rp);
        let (rcr, _) = rp.start_passkey_authentication(&[other]).expect("starts");
        let err = key.sign_in(&rcr, ORIGIN).expect_err("must refuse");
        assert!(matches!(err, AuthenticatorError::NoCredential), "{err:?}");
        assert_eq!(key.counter(), 0, "a refused request does not count");
    }

    #[test]
    fn key_for_another_rp_is_refused_by_the_soft_key() {
        let rp = relying_party();
        let (_, mut key, _) = enroll(&rp);
        let (mut rcr, _) = rp.start_discoverable_authentication().expect("starts");
        rcr.public_key.rp_id = "other.localhost".into();
        let err = key
            .sign_in(&rcr, "http://other.localhost:8080")
            .expect_err("must refuse");
        assert!(matches!(err, AuthenticatorError::NoCredential), "{err:?}");
    }

    #[test]
    fn registration_under_a_chosen_credential_id_uses_it() {
        let rp = relying_party();
        let chosen = vec![0x5a; 16];
        let tamper = Tamper {
            credential_id: Some(chosen.clone()),
            ..Tamper::default()
        };
        let (_, ccr, state) = registration_options(&rp);
        let (key, reg) = SoftKey::register_with(&ccr, ORIGIN, &tamper).expect("registers");
        assert_eq!(key.credential_id(), chosen.as_slice());
        let passkey = rp
            .finish_passkey_registration(&reg, &state)
            .expect("accepted");
        assert_eq!(passkey.cred_id().as_slice(), chosen.as_slice());
    }

    #[test]
    fn registration_without_es256_is_refused_by_the_soft_key() {
        let rp = relying_party();
        let (_, mut ccr, _) = registration_options(&rp);
        ccr.public_key
            .pub_key_cred_params
            .retain(|p| p.alg != COSE_ALG_ES256);
        let err = SoftKey::register(&ccr, ORIGIN).expect_err("must refuse");
        assert!(
            matches!(err, AuthenticatorError::UnsupportedAlgorithm),
            "{err:?}"
        );
    }

    #[test]
    fn rp_id_not_matching_the_origin_is_refused_by_the_soft_key() {
        let rp = relying_party();
        let (_, ccr, _) = registration_options(&rp);
        let err = SoftKey::register(&ccr, "https://evil.example").expect_err("must refuse");
        assert!(
            matches!(err, AuthenticatorError::RpIdMismatch { .. }),
            "{err:?}"
        );

        let (_, mut key, _) = enroll(&rp);
        let (rcr, _) = rp.start_discoverable_authentication().expect("starts");
        let err = key
            .sign_in(&rcr, "https://evil.example")
            .expect_err("must refuse");
        assert!(
            matches!(err, AuthenticatorError::RpIdMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(key.counter(), 0);
    }

    #[test]
    fn rp_id_rules() {
        let ok = |origin: &str, rp_id: &str| {
            Page::parse(origin)
                .and_then(|page| page.resolve_rp_id(rp_id))
                .is_ok()
        };
        assert!(ok("https://example.com", "example.com"));
        assert!(ok("https://login.example.com", "example.com"));
        assert!(ok("https://a.b.example.com:8443", "b.example.com"));
        assert!(ok("https://EXAMPLE.com", "Example.COM"));
        assert!(ok("http://localhost:8080", "localhost"));
        assert!(ok("http://app.localhost", "app.localhost"));
        assert!(ok("http://127.0.0.1:3000", "127.0.0.1"));
        assert!(ok("https://example.com", ""));

        assert!(!ok("https://example.com", "login.example.com"));
        assert!(!ok("https://notexample.com", "example.com"));
        assert!(!ok("https://example.com", "com"));
        assert!(!ok("https://example.com", ".example.com"));
        assert!(!ok("https://127.0.0.1", "0.0.1"));
        assert!(!ok("http://app.localhost", "localhost"));
        assert!(!ok("http://example.com", "example.com"), "plain http");
        assert!(!ok("ftp://example.com", "example.com"));
        assert!(!ok("not a url", "example.com"));
        assert!(matches!(
            Page::parse("http://example.com"),
            Err(AuthenticatorError::InvalidOrigin { .. })
        ));
    }

    #[test]
    fn client_data_origin_is_the_serialized_origin() {
        let rp = relying_party();
        let (_, ccr, state) = registration_options(&rp);
        let (_, reg) =
            SoftKey::register(&ccr, "http://localhost:8080/join/abc?x=1").expect("registers");
        let client: serde_json::Value =
            serde_json::from_slice(&reg.response.client_data_json).expect("JSON");
        assert_eq!(client["origin"], ORIGIN);
        rp.finish_passkey_registration(&reg, &state)
            .expect("accepted");
    }

    fn temp_key_path() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tessera-softkey-{}.json", Uuid::new_v4()))
    }

    #[test]
    fn save_and_load_round_trip_and_still_sign_in() {
        let rp = relying_party();
        let (user, mut key, mut passkey) = enroll(&rp);
        let (_, result) = login(&rp, &mut key, &passkey, &Tamper::default()).expect("login");
        passkey.update_credential(&result);

        let path = temp_key_path();
        key.save(&path).expect("saves");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Saving again replaces the file.
        key.save(&path).expect("saves again");
        let mut loaded = SoftKey::load(&path).expect("loads");
        std::fs::remove_file(&path).expect("cleanup");

        assert_eq!(loaded.credential_id(), key.credential_id());
        assert_eq!(loaded.user_handle(), user.as_bytes());
        assert_eq!(loaded.rp_id(), key.rp_id());
        assert_eq!(loaded.counter(), 1);
        assert_eq!(loaded.aaguid(), key.aaguid());
        assert_eq!(loaded.public_key_sec1(), key.public_key_sec1());

        let (who, result) =
            login(&rp, &mut loaded, &passkey, &Tamper::default()).expect("loaded key signs in");
        assert_eq!(who, user);
        assert_eq!(result.counter(), 2);
    }

    #[test]
    fn a_blank_key_file_registers_once_with_its_own_key_and_then_signs_in() {
        let path = temp_key_path();
        let blank = SoftKey::blank().expect("blank key");
        blank.save(&path).expect("saves");
        let mut key = SoftKey::load(&path).expect("a blank key file loads");
        assert!(key.is_blank());
        let public = key.public_key_sec1();

        let rp = relying_party();
        let (_, ccr, state) = registration_options(&rp);
        // A blank key holds no credential: nothing to sign in with.
        let (rcr, _) = rp.start_discoverable_authentication().expect("starts");
        assert!(matches!(
            key.sign_in(&over_the_wire(&rcr), ORIGIN),
            Err(AuthenticatorError::NoCredential)
        ));
        let reg = key.register_blank(&ccr, ORIGIN).expect("registers");
        let passkey = rp
            .finish_passkey_registration(&over_the_wire(&reg), &state)
            .expect("relying party accepts it");
        assert!(!key.is_blank());
        assert_eq!(
            key.public_key_sec1(),
            public,
            "the key made by `key new` is kept"
        );
        let (_, again, _) = registration_options(&rp);
        assert!(matches!(
            key.register_blank(&again, ORIGIN),
            Err(AuthenticatorError::AlreadyRegistered(rp_id)) if rp_id == "localhost"
        ));
        key.save(&path).expect("saves");
        let mut loaded = SoftKey::load(&path).expect("loads");
        std::fs::remove_file(&path).expect("cleanup");
        login(&rp, &mut loaded, &passkey, &Tamper::default()).expect("signs in");
    }

    #[test]
    fn key_file_is_base64url_json_and_debug_hides_the_secret() {
        let rp = relying_party();
        let (_, key, _) = enroll(&rp);
        let path = temp_key_path();
        key.save(&path).expect("saves");
        let text = std::fs::read_to_string(&path).expect("reads");
        std::fs::remove_file(&path).expect("cleanup");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["version"], 1);
        assert_eq!(json["rp_id"], "localhost");
        assert_eq!(
            json["credential_id"],
            Base64Url::encode(key.credential_id()).as_str()
        );
        let secret = json["private_key"].as_str().expect("string").to_owned();
        assert_eq!(Base64Url::decode(&secret).expect("b64url").len(), 32);

        let debug = format!("{key:?}");
        assert!(!debug.contains(&secret), "Debug leaks the secret: {debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let rp = relying_party();
        let (_, key, _) = enroll(&rp);
        let path = temp_key_path();
        key.save(&path).expect("saves");
        let good: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("reads")).expect("JSON");
        let variants = [
            ("version", serde_json::json!(2)),
            ("private_key", serde_json::json!("AAAA")),
            (
                "private_key",
                serde_json::json!(Base64Url::encode(&[0; 32])),
            ),
            ("private_key", serde_json::json!("not base64!")),
            ("aaguid", serde_json::json!(Base64Url::encode(&[0; 15]))),
            ("credential_id", serde_json::json!("")),
            ("rp_id", serde_json::json!("")),
            ("unexpected", serde_json::json!(true)),
        ];
        for (field, value) in variants {
            let mut bad = good.clone();
            bad[field] = value;
            std::fs::write(&path, bad.to_string()).expect("writes");
            let err = SoftKey::load(&path).expect_err("must refuse");
            assert!(
                matches!(err, AuthenticatorError::KeyFile(_)),
                "{field}: {err:?}"
            );
        }
        std::fs::write(&path, "{").expect("writes");
        assert!(matches!(
            SoftKey::load(&path),
            Err(AuthenticatorError::KeyFile(_))
        ));
        std::fs::remove_file(&path).expect("cleanup");
        assert!(matches!(
            SoftKey::load(&path),
            Err(AuthenticatorError::Io(_))
        ));
    }
}
