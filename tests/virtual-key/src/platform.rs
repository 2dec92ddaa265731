//! A minimal CTAP2 platform for tests: what a browser or CLI sends a key (CTAPHID reports, CTAP2
//! requests), with PIN protocols one and two from the client side, computed independently of
//! the key's own [`crate::pin`].
//!
//! It panics where a real platform would give up on a key that breaks the protocol: it is for
//! tests, whose failures those are.

use std::time::Duration;

use aes::Aes256;
use cbc::cipher::{BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _};
pub use ciborium::Value;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit as _, Mac as _};
use p256::elliptic_curve::Generate as _;
use p256::elliptic_curve::sec1::ToSec1Point as _;
use p256::{PublicKey, SecretKey};
use sha2::{Digest as _, Sha256};

use crate::ctap2::{self, permission, status, subcommand};
use crate::ctaphid::{self, BROADCAST, command, host};
use crate::{Authenticator, Config, State, Touch, VirtualKey};

/// The relying party id of requests that name none.
pub const RP: &str = "tessera.example";

/// How far the platform moves its clock at a time while the key works.
const STEP: Duration = Duration::from_millis(10);

/// How long the platform waits for an answer before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// A CBOR integer.
#[must_use]
pub fn int(n: i64) -> Value {
    Value::from(n)
}

/// A CBOR text string.
#[must_use]
pub fn txt(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// A CBOR byte string.
#[must_use]
pub fn byt(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

/// The value at integer key `key` of a CBOR map.
#[must_use]
pub fn get(value: &Value, key: i64) -> Option<&Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_integer().map(i128::from) == Some(i128::from(key)))
        .map(|(_, v)| v)
}

/// The value at text key `name` of a CBOR map.
#[must_use]
pub fn named<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

/// The byte string at integer key `key` of a CBOR map.
///
/// # Panics
/// When there is none.
#[must_use]
pub fn bytes_at(value: &Value, key: i64) -> Vec<u8> {
    get(value, key)
        .and_then(Value::as_bytes)
        .cloned()
        .unwrap_or_else(|| panic!("bytes at {key} in {value:?}"))
}

/// clientDataHash: the SHA-256 of the clientDataJSON, which the key signs.
#[must_use]
pub fn client_data_hash(client_data_json: &[u8]) -> [u8; 32] {
    Sha256::digest(client_data_json).into()
}

/// The platform: one channel on one virtual key, a clock it moves by hand.
pub struct Platform {
    /// The key.
    pub key: VirtualKey,
    /// The CTAPHID channel the platform was given.
    pub cid: u32,
    /// The platform's clock: moved on while the key works.
    pub now: Duration,
    /// The keepalive statuses of the last request.
    pub keepalives: Vec<u8>,
}

impl Platform {
    /// A new key (no PIN, no credentials) whose user touches it as `touch` says.
    #[must_use]
    pub fn new(touch: Touch) -> Self {
        Self::with_state(State::default(), touch)
    }

    /// A key with `state` whose user touches it as `touch` says, giving up after two seconds.
    #[must_use]
    pub fn with_state(state: State, touch: Touch) -> Self {
        Self::with_config(
            state,
            Config {
                touch,
                touch_timeout: Duration::from_secs(2),
                ..Config::default()
            },
        )
    }

    /// A key with `state` and `config`.
    ///
    /// # Panics
    /// When the system has no randomness.
    #[must_use]
    pub fn with_config(state: State, config: Config) -> Self {
        let authenticator = Authenticator::new(state, config, Duration::ZERO).expect("key");
        Self::on(VirtualKey::new(
            authenticator,
            ctaphid::Config::default(),
            None,
        ))
    }

    /// The platform on `key`: asks it for a channel (CTAPHID_INIT).
    ///
    /// # Panics
    /// When the key does not give one.
    #[must_use]
    pub fn on(mut key: VirtualKey) -> Self {
        let nonce = [0x42; 8];
        let mut answers = Vec::new();
        for report in host::frame(BROADCAST, command::INIT, &nonce) {
            answers.extend(key.receive(Duration::ZERO, &report));
        }
        let (_, _, data) = host::parse_all(&answers).remove(0);
        assert_eq!(&data[..8], &nonce);
        let cid = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        Self {
            key,
            cid,
            now: Duration::ZERO,
            keepalives: Vec::new(),
        }
    }

    /// Sends a raw CTAPHID message; returns the first answer that is not a keepalive, moving
    /// time on by 10 ms steps while the key works (at most a minute), or none when the key
    /// answers nothing (it was unplugged) in that time.
    ///
    /// # Panics
    /// When the key answers on another channel.
    pub fn transact(&mut self, cmd: u8, payload: &[u8]) -> Option<(u8, Vec<u8>)> {
        self.keepalives.clear();
        let mut reports = Vec::new();
        for report in host::frame(self.cid, cmd, payload) {
            reports.extend(self.key.receive(self.now, &report));
        }
        let deadline = self.now + PATIENCE;
        loop {
            for (cid, command, data) in host::parse_all(&reports) {
                assert_eq!(cid, self.cid);
                if command == command::KEEPALIVE {
                    self.keepalives.push(data[0]);
                } else {
                    return Some((command, data));
                }
            }
            if self.now >= deadline || self.key.unplugged() {
                return None;
            }
            self.now += STEP;
            reports = self.key.poll(self.now);
        }
    }

    /// A CTAP2 request: its status and response.
    ///
    /// # Panics
    /// When the key answers nothing, or not CTAP2.
    pub fn call(&mut self, cmd: u8, params: Option<Vec<(Value, Value)>>) -> (u8, Option<Value>) {
        let mut payload = vec![cmd];
        if let Some(params) = params {
            ciborium::into_writer(&Value::Map(params), &mut payload).expect("cbor");
        }
        let (command, data) = self.transact(command::CBOR, &payload).expect("an answer");
        assert_eq!(command, command::CBOR);
        let value = (data.len() > 1)
            .then(|| ciborium::from_reader::<Value, _>(&data[1..]).expect("cbor answer"));
        (data[0], value)
    }

    /// authenticatorGetInfo.
    ///
    /// # Panics
    /// When the key refuses it.
    pub fn info(&mut self) -> Value {
        let (status, info) = self.call(ctap2::command::GET_INFO, None);
        assert_eq!(status, status::OK);
        info.expect("info")
    }

    /// Whether the key has a PIN set: getInfo's `clientPin` option.
    pub fn has_pin(&mut self) -> bool {
        let info = self.info();
        get(&info, 4)
            .and_then(|options| named(options, "clientPin"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// getPINRetries: the PIN tries left, and whether the key must be plugged in again first.
    ///
    /// # Panics
    /// When the key refuses it.
    pub fn retries(&mut self) -> (u32, bool) {
        let (status, answer) = self.call(
            ctap2::command::CLIENT_PIN,
            Some(vec![
                (int(1), int(1)),
                (int(2), int(subcommand::GET_PIN_RETRIES.into())),
            ]),
        );
        assert_eq!(status, status::OK);
        let answer = answer.expect("retries");
        let retries = get(&answer, 3)
            .and_then(Value::as_integer)
            .and_then(|n| u32::try_from(n).ok())
            .expect("pinRetries");
        let power_cycle = get(&answer, 4).and_then(Value::as_bool).unwrap_or(false);
        (retries, power_cycle)
    }

    /// The key unplugged and plugged in again.
    ///
    /// # Panics
    /// When the system has no randomness.
    pub fn replug(&mut self) {
        let now = self.now;
        self.key.authenticator_mut().replug(now).expect("replug");
    }
}

/// An authenticatorMakeCredential request.
pub struct MakeCredential {
    /// The relying party id.
    pub rp_id: String,
    /// The relying party's name.
    pub rp_name: String,
    /// clientDataHash.
    pub client_data_hash: [u8; 32],
    /// The user handle.
    pub user_id: Vec<u8>,
    /// The user's name.
    pub user_name: String,
    /// The user's display name.
    pub user_display_name: String,
    /// The `rk` option: a discoverable credential.
    pub rk: bool,
    /// The COSE algorithms offered, in order.
    pub algorithms: Vec<i64>,
    /// The exclude list.
    pub exclude: Vec<Vec<u8>>,
    /// The `uv` option, if sent.
    pub uv: Option<bool>,
    /// pinUvAuthParam and the PIN protocol.
    pub pin_auth: Option<(Vec<u8>, u8)>,
}

impl MakeCredential {
    /// A request of [`RP`] for user `alice` with the handle `user_id`: ES256, not discoverable.
    #[must_use]
    pub fn new(user_id: &[u8]) -> Self {
        Self {
            rp_id: RP.to_owned(),
            rp_name: "Tessera".to_owned(),
            client_data_hash: client_data_hash(b"client data"),
            user_id: user_id.to_vec(),
            user_name: "alice".to_owned(),
            user_display_name: "Alice".to_owned(),
            rk: false,
            algorithms: vec![ctap2::ES256],
            exclude: Vec::new(),
            uv: None,
            pin_auth: None,
        }
    }

    /// The request's parameters.
    #[must_use]
    pub fn params(&self) -> Vec<(Value, Value)> {
        let mut params = vec![
            (int(1), byt(&self.client_data_hash)),
            (
                int(2),
                Value::Map(vec![
                    (txt("id"), txt(&self.rp_id)),
                    (txt("name"), txt(&self.rp_name)),
                ]),
            ),
            (
                int(3),
                Value::Map(vec![
                    (txt("id"), byt(&self.user_id)),
                    (txt("name"), txt(&self.user_name)),
                    (txt("displayName"), txt(&self.user_display_name)),
                ]),
            ),
            (
                int(4),
                Value::Array(
                    self.algorithms
                        .iter()
                        .map(|&alg| {
                            Value::Map(vec![
                                (txt("alg"), int(alg)),
                                (txt("type"), txt("public-key")),
                            ])
                        })
                        .collect(),
                ),
            ),
        ];
        if !self.exclude.is_empty() {
            params.push((int(5), descriptors(&self.exclude)));
        }
        let mut options = vec![(txt("rk"), Value::Bool(self.rk))];
        if let Some(uv) = self.uv {
            options.push((txt("uv"), Value::Bool(uv)));
        }
        params.push((int(7), Value::Map(options)));
        if let Some((auth, protocol)) = &self.pin_auth {
            params.push((int(8), byt(auth)));
            params.push((int(9), int(i64::from(*protocol))));
        }
        params
    }
}

/// Public key credential descriptors of `ids` (an allow or exclude list).
#[must_use]
pub fn descriptors(ids: &[Vec<u8>]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| Value::Map(vec![(txt("id"), byt(id)), (txt("type"), txt("public-key"))]))
            .collect(),
    )
}

/// The parameters of an authenticatorGetAssertion of [`RP`].
#[must_use]
pub fn get_assertion(
    client_data_hash: &[u8],
    allow: &[Vec<u8>],
    options: Vec<(Value, Value)>,
    pin_auth: Option<(Vec<u8>, u8)>,
) -> Vec<(Value, Value)> {
    get_assertion_of(RP, client_data_hash, allow, options, pin_auth)
}

/// The parameters of an authenticatorGetAssertion of `rp_id`: clientDataHash, the allow list
/// (none when empty), options, pinUvAuthParam and the PIN protocol.
#[must_use]
pub fn get_assertion_of(
    rp_id: &str,
    client_data_hash: &[u8],
    allow: &[Vec<u8>],
    options: Vec<(Value, Value)>,
    pin_auth: Option<(Vec<u8>, u8)>,
) -> Vec<(Value, Value)> {
    let mut params = vec![(int(1), txt(rp_id)), (int(2), byt(client_data_hash))];
    if !allow.is_empty() {
        params.push((int(3), descriptors(allow)));
    }
    if !options.is_empty() {
        params.push((int(5), Value::Map(options)));
    }
    if let Some((auth, protocol)) = pin_auth {
        params.push((int(6), byt(&auth)));
        params.push((int(7), int(i64::from(protocol))));
    }
    params
}

/// The platform's half of a PIN/UV auth protocol session.
pub struct PinSession {
    /// The protocol: 1 or 2.
    pub protocol: u8,
    /// The shared secret (protocol two: the HMAC key, then the AES key).
    pub shared: Vec<u8>,
    /// The platform's key agreement key, as COSE.
    pub platform_key: Value,
}

impl PinSession {
    /// getKeyAgreement with `protocol`, and the shared secret computed.
    ///
    /// # Panics
    /// When the key refuses, or answers no P-256 point.
    pub fn open(platform: &mut Platform, protocol: u8) -> Self {
        let (status, answer) = platform.call(
            ctap2::command::CLIENT_PIN,
            Some(vec![
                (int(1), int(i64::from(protocol))),
                (int(2), int(subcommand::GET_KEY_AGREEMENT.into())),
            ]),
        );
        assert_eq!(status, status::OK);
        let cose = get(answer.as_ref().expect("key agreement"), 1)
            .expect("keyAgreement")
            .clone();
        assert_eq!(
            get(&cose, 3).and_then(Value::as_integer),
            Some((-25).into())
        );
        let sec1 = [&[4u8][..], &bytes_at(&cose, -2), &bytes_at(&cose, -3)].concat();
        let authenticator = PublicKey::from_sec1_bytes(&sec1).expect("point");
        let secret = SecretKey::try_generate().expect("key");
        let z = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), authenticator.as_affine());
        let z = z.raw_secret_bytes().to_vec();
        let shared = if protocol == 1 {
            Sha256::digest(&z).to_vec()
        } else {
            let hkdf = Hkdf::<Sha256>::new(Some(&[0u8; 32]), &z);
            let mut out = vec![0u8; 64];
            hkdf.expand(b"CTAP2 HMAC key", &mut out[..32])
                .expect("hkdf");
            hkdf.expand(b"CTAP2 AES key", &mut out[32..]).expect("hkdf");
            out
        };
        let point = secret.public_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        let platform_key = Value::Map(vec![
            (int(1), int(2)),
            (int(3), int(-25)),
            (int(-1), int(1)),
            (int(-2), byt(&bytes[1..33])),
            (int(-3), byt(&bytes[33..65])),
        ]);
        Self {
            protocol,
            shared,
            platform_key,
        }
    }

    /// AES-256-CBC with the session's key (protocol two: a fixed IV, sent first).
    ///
    /// # Panics
    /// When `plaintext` is not whole blocks.
    #[must_use]
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let (key, iv) = if self.protocol == 1 {
            (&self.shared[..], [0u8; 16])
        } else {
            (&self.shared[32..], [0x5a; 16])
        };
        let mut cipher = cbc::Encryptor::<Aes256>::new_from_slices(key, &iv).expect("aes key");
        let mut out = plaintext.to_vec();
        for block in out.chunks_exact_mut(16) {
            let block: &mut [u8; 16] = block.try_into().expect("block");
            cipher.encrypt_block(block.into());
        }
        if self.protocol == 1 {
            out
        } else {
            [iv.as_slice(), &out].concat()
        }
    }

    /// The inverse of [`PinSession::encrypt`].
    ///
    /// # Panics
    /// When `ciphertext` is too short.
    #[must_use]
    pub fn decrypt(&self, ciphertext: &[u8]) -> Vec<u8> {
        let (key, iv, body) = if self.protocol == 1 {
            (&self.shared[..], [0u8; 16], ciphertext)
        } else {
            let iv: [u8; 16] = ciphertext[..16].try_into().expect("iv");
            (&self.shared[32..], iv, &ciphertext[16..])
        };
        let mut cipher = cbc::Decryptor::<Aes256>::new_from_slices(key, &iv).expect("aes key");
        let mut out = body.to_vec();
        for block in out.chunks_exact_mut(16) {
            let block: &mut [u8; 16] = block.try_into().expect("block");
            cipher.decrypt_block(block.into());
        }
        out
    }

    /// HMAC-SHA-256 with the session's HMAC key (or a token), as the protocol truncates it.
    ///
    /// # Panics
    /// Never: HMAC takes keys of any length.
    #[must_use]
    pub fn authenticate(protocol: u8, key: &[u8], message: &[u8]) -> Vec<u8> {
        let key = if protocol == 2 && key.len() == 64 {
            &key[..32]
        } else {
            key
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac");
        mac.update(message);
        let tag = mac.finalize().into_bytes().to_vec();
        if protocol == 1 {
            tag[..16].to_vec()
        } else {
            tag
        }
    }

    /// `pin` padded to 64 bytes with zeros, as setPIN and changePIN send it.
    #[must_use]
    pub fn padded(pin: &str) -> Vec<u8> {
        let mut padded = pin.as_bytes().to_vec();
        padded.resize(64, 0);
        padded
    }

    /// pinHashEnc: LEFT(SHA-256(pin), 16), encrypted.
    #[must_use]
    pub fn pin_hash_enc(&self, pin: &str) -> Vec<u8> {
        self.encrypt(&Sha256::digest(pin.as_bytes())[..16])
    }

    /// The parameters every authenticatorClientPIN `subcommand` of this session starts with.
    #[must_use]
    pub fn base(&self, subcommand: i64) -> Vec<(Value, Value)> {
        vec![
            (int(1), int(i64::from(self.protocol))),
            (int(2), int(subcommand)),
            (int(3), self.platform_key.clone()),
        ]
    }

    /// setPIN: the status.
    pub fn set_pin(&self, platform: &mut Platform, pin: &str) -> u8 {
        let new_pin_enc = self.encrypt(&Self::padded(pin));
        let mut params = self.base(subcommand::SET_PIN.into());
        params.push((
            int(4),
            byt(&Self::authenticate(
                self.protocol,
                &self.shared,
                &new_pin_enc,
            )),
        ));
        params.push((int(5), byt(&new_pin_enc)));
        platform.call(ctap2::command::CLIENT_PIN, Some(params)).0
    }

    /// changePIN from `old` to `new`: the status.
    pub fn change_pin(&self, platform: &mut Platform, old: &str, new: &str) -> u8 {
        let new_pin_enc = self.encrypt(&Self::padded(new));
        let pin_hash_enc = self.pin_hash_enc(old);
        let mut params = self.base(subcommand::CHANGE_PIN.into());
        let message = [new_pin_enc.as_slice(), &pin_hash_enc].concat();
        params.push((
            int(4),
            byt(&Self::authenticate(self.protocol, &self.shared, &message)),
        ));
        params.push((int(5), byt(&new_pin_enc)));
        params.push((int(6), byt(&pin_hash_enc)));
        platform.call(ctap2::command::CLIENT_PIN, Some(params)).0
    }

    /// getPinToken (protocol one) or getPinUvAuthTokenUsingPinWithPermissions (two, for
    /// makeCredential and getAssertion on [`RP`]): the status and the decrypted token.
    pub fn token(&self, platform: &mut Platform, pin: &str) -> (u8, Option<Vec<u8>>) {
        self.token_for(
            platform,
            pin,
            permission::MAKE_CREDENTIAL | permission::GET_ASSERTION,
            RP,
        )
    }

    /// getPinToken (protocol one) or getPinUvAuthTokenUsingPinWithPermissions (two, with
    /// `permissions` on `rp_id`): the status and the decrypted token.
    ///
    /// # Panics
    /// When the key answers a token that is not 32 bytes.
    pub fn token_for(
        &self,
        platform: &mut Platform,
        pin: &str,
        permissions: u8,
        rp_id: &str,
    ) -> (u8, Option<Vec<u8>>) {
        let mut params = self.base(if self.protocol == 1 {
            subcommand::GET_PIN_TOKEN.into()
        } else {
            subcommand::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS.into()
        });
        params.push((int(6), byt(&self.pin_hash_enc(pin))));
        if self.protocol == 2 {
            params.push((int(9), int(permissions.into())));
            params.push((int(10), txt(rp_id)));
        }
        let (status, answer) = platform.call(ctap2::command::CLIENT_PIN, Some(params));
        let token = answer.map(|answer| self.decrypt(&bytes_at(&answer, 2)));
        if let Some(token) = &token {
            assert_eq!(token.len(), 32);
        }
        (status, token)
    }
}
