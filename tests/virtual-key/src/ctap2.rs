//! The CTAP2 authenticator (FIDO CTAP 2.1 §6), sans-IO: one request's bytes in, its answer (or a
//! wait for the user's touch) out, with the time passed in; ES256 credentials, `packed` self
//! attestation, and the PIN with protocols one and two.

use std::time::Duration;

use ciborium::Value;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate as _;
use sha2::{Digest as _, Sha256};

use crate::pin::{self, KeyAgreement, Protocol};
use crate::state::{self, Credential, MAX_PIN_RETRIES, State, User};

/// CTAP2 status codes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0x00;
    /// The command is not known.
    pub const INVALID_COMMAND: u8 = 0x01;
    /// A parameter is invalid.
    pub const INVALID_PARAMETER: u8 = 0x02;
    /// A length is invalid.
    pub const INVALID_LENGTH: u8 = 0x03;
    /// A CBOR value of the wrong type.
    pub const CBOR_UNEXPECTED_TYPE: u8 = 0x11;
    /// Not CBOR.
    pub const INVALID_CBOR: u8 = 0x12;
    /// A mandatory parameter is missing.
    pub const MISSING_PARAMETER: u8 = 0x14;
    /// The exclude list names a credential of this key.
    pub const CREDENTIAL_EXCLUDED: u8 = 0x19;
    /// None of the requested algorithms is supported.
    pub const UNSUPPORTED_ALGORITHM: u8 = 0x26;
    /// The user refused.
    pub const OPERATION_DENIED: u8 = 0x27;
    /// An option that is not supported.
    pub const UNSUPPORTED_OPTION: u8 = 0x2b;
    /// An option that is invalid for the request.
    pub const INVALID_OPTION: u8 = 0x2c;
    /// The client cancelled.
    pub const KEEPALIVE_CANCEL: u8 = 0x2d;
    /// No credential for the request.
    pub const NO_CREDENTIALS: u8 = 0x2e;
    /// The user did not touch the key in time.
    pub const USER_ACTION_TIMEOUT: u8 = 0x2f;
    /// Not allowed now.
    pub const NOT_ALLOWED: u8 = 0x30;
    /// A wrong PIN.
    pub const PIN_INVALID: u8 = 0x31;
    /// No PIN retries left.
    pub const PIN_BLOCKED: u8 = 0x32;
    /// The pinUvAuthParam does not verify.
    pub const PIN_AUTH_INVALID: u8 = 0x33;
    /// Three wrong PINs in a row: unplug the key first.
    pub const PIN_AUTH_BLOCKED: u8 = 0x34;
    /// No PIN is set.
    pub const PIN_NOT_SET: u8 = 0x35;
    /// A PIN (pinUvAuthToken) is required (PUAT_REQUIRED, formerly PIN_REQUIRED).
    pub const PIN_REQUIRED: u8 = 0x36;
    /// The new PIN is too short or too long.
    pub const PIN_POLICY_VIOLATION: u8 = 0x37;
    /// The subcommand is not supported.
    pub const INVALID_SUBCOMMAND: u8 = 0x3e;
    /// A permission this key does not grant.
    pub const UNAUTHORIZED_PERMISSION: u8 = 0x40;
    /// Anything else.
    pub const OTHER: u8 = 0x7f;
}

/// CTAP2 command bytes.
pub mod command {
    /// authenticatorMakeCredential.
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    /// authenticatorGetAssertion.
    pub const GET_ASSERTION: u8 = 0x02;
    /// authenticatorGetInfo.
    pub const GET_INFO: u8 = 0x04;
    /// authenticatorClientPIN.
    pub const CLIENT_PIN: u8 = 0x06;
    /// authenticatorReset.
    pub const RESET: u8 = 0x07;
    /// authenticatorGetNextAssertion.
    pub const GET_NEXT_ASSERTION: u8 = 0x08;
    /// authenticatorSelection.
    pub const SELECTION: u8 = 0x0b;
}

/// The name of a CTAP2 command byte, for logs.
#[must_use]
pub fn command_name(byte: u8) -> &'static str {
    match byte {
        command::MAKE_CREDENTIAL => "authenticatorMakeCredential",
        command::GET_ASSERTION => "authenticatorGetAssertion",
        command::GET_INFO => "authenticatorGetInfo",
        command::CLIENT_PIN => "authenticatorClientPIN",
        command::RESET => "authenticatorReset",
        command::GET_NEXT_ASSERTION => "authenticatorGetNextAssertion",
        command::SELECTION => "authenticatorSelection",
        _ => "unknown command",
    }
}

/// authenticatorClientPIN subcommands.
pub mod subcommand {
    /// getPINRetries.
    pub const GET_PIN_RETRIES: u8 = 0x01;
    /// getKeyAgreement.
    pub const GET_KEY_AGREEMENT: u8 = 0x02;
    /// setPIN.
    pub const SET_PIN: u8 = 0x03;
    /// changePIN.
    pub const CHANGE_PIN: u8 = 0x04;
    /// getPinToken (CTAP 2.0).
    pub const GET_PIN_TOKEN: u8 = 0x05;
    /// getPinUvAuthTokenUsingPinWithPermissions (CTAP 2.1).
    pub const GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS: u8 = 0x09;
}

/// pinUvAuthToken permissions.
pub mod permission {
    /// makeCredential.
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    /// getAssertion.
    pub const GET_ASSERTION: u8 = 0x02;
}

/// authenticator data flags.
pub mod flag {
    /// User present.
    pub const UP: u8 = 0x01;
    /// User verified.
    pub const UV: u8 = 0x04;
    /// Attested credential data included.
    pub const AT: u8 = 0x40;
}

/// The COSE algorithm of ES256.
pub const ES256: i64 = -7;
/// The shortest PIN, in code points.
pub const MIN_PIN_LENGTH: usize = 4;
/// How long getNextAssertion may follow getAssertion.
const NEXT_ASSERTION_WINDOW: Duration = Duration::from_secs(30);
/// Wrong PINs in a row before a power cycle is needed.
const MISMATCHES_BEFORE_REPLUG: u8 = 3;
/// Length of the credential ids this key makes.
const CREDENTIAL_ID_LEN: usize = 32;

/// What the user does when the key blinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Touches at once.
    Now,
    /// Touches after this long (keepalives meanwhile).
    After(Duration),
    /// Never touches: the request times out (CTAP2_ERR_USER_ACTION_TIMEOUT).
    Never,
    /// Refuses (CTAP2_ERR_OPERATION_DENIED).
    Refuse,
}

/// How the authenticator behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The user's touch.
    pub touch: Touch,
    /// How long a request waits for a touch before CTAP2_ERR_USER_ACTION_TIMEOUT.
    pub touch_timeout: Duration,
    /// How long after power-up authenticatorReset is allowed (none: always).
    pub reset_window: Option<Duration>,
    /// The largest message the platform may send, as getInfo says.
    pub max_msg_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            touch: Touch::Now,
            touch_timeout: Duration::from_secs(30),
            reset_window: Some(Duration::from_secs(10)),
            max_msg_size: 1200,
        }
    }
}

/// What a request comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The answer: a status byte, then the CBOR response if any.
    Done(Vec<u8>),
    /// The key blinks: the answer comes from [`Authenticator::poll`] (or
    /// [`Authenticator::cancel`]).
    WaitingForTouch,
}

/// What happens once the user touches the key.
enum Action {
    MakeCredential(NewCredential),
    GetAssertion(Assertions),
    Excluded,
    Reset,
    Selection,
    /// A zero-length pinUvAuthParam: the platform only wanted a touch to pick this key.
    Status(u8),
}

struct NewCredential {
    client_data_hash: Vec<u8>,
    rp_id: String,
    user: User,
    discoverable: bool,
    uv: bool,
}

struct Assertions {
    rp_id: String,
    client_data_hash: Vec<u8>,
    /// Indexes in `state.credentials`, the one to sign first.
    credentials: Vec<usize>,
    up: bool,
    uv: bool,
    /// Whether the platform gave no allow list (the credentials are discoverable ones).
    discovered: bool,
}

struct Pending {
    action: Action,
    touch_at: Option<Duration>,
    deadline: Duration,
}

struct NextAssertions {
    assertions: Assertions,
    expires: Duration,
}

struct Token {
    value: [u8; 32],
    protocol: Protocol,
    permissions: u8,
    rp_id: Option<String>,
}

type Outcome = Result<Answer, u8>;

enum Answer {
    Now(Option<Value>),
    AfterTouch(Action),
}

/// The authenticator: persistent [`State`] plus what a power cycle forgets.
pub struct Authenticator {
    state: State,
    config: Config,
    dirty: bool,
    key_agreement: KeyAgreement,
    token: Option<Token>,
    mismatches: u8,
    powered_at: Duration,
    pending: Option<Pending>,
    next: Option<NextAssertions>,
}

/// Why an authenticator could not be made.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for the key agreement key")]
pub struct NoRandomness;

impl Authenticator {
    /// A key with `state`, plugged in at `now`.
    ///
    /// # Errors
    /// [`NoRandomness`] if the system has none.
    pub fn new(state: State, config: Config, now: Duration) -> Result<Self, NoRandomness> {
        Ok(Self {
            state,
            config,
            dirty: false,
            key_agreement: KeyAgreement::generate().map_err(|_| NoRandomness)?,
            token: None,
            mismatches: 0,
            powered_at: now,
            pending: None,
            next: None,
        })
    }

    /// The persistent state.
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the state changed since the last call (save it then).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Changes what the user does from the next request on.
    pub fn set_touch(&mut self, touch: Touch) {
        self.config.touch = touch;
    }

    /// Unplugs and plugs the key back at `now`: forgets the key agreement key, the
    /// pinUvAuthToken, the wrong PINs in a row and any request in process.
    ///
    /// # Errors
    /// [`NoRandomness`] if the system has none.
    pub fn replug(&mut self, now: Duration) -> Result<(), NoRandomness> {
        self.key_agreement = KeyAgreement::generate().map_err(|_| NoRandomness)?;
        self.token = None;
        self.mismatches = 0;
        self.powered_at = now;
        self.pending = None;
        self.next = None;
        Ok(())
    }

    /// When [`Authenticator::poll`] has something to do next.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Duration> {
        let pending = self.pending.as_ref()?;
        Some(match pending.touch_at {
            Some(touch) if touch <= pending.deadline => touch,
            _ => pending.deadline,
        })
    }

    /// Finishes the request waiting for a touch if the user touched the key or it timed out.
    pub fn poll(&mut self, now: Duration) -> Option<Vec<u8>> {
        let pending = self.pending.as_ref()?;
        let touched = pending
            .touch_at
            .is_some_and(|touch| touch <= pending.deadline && now >= touch);
        if touched {
            let pending = self.pending.take()?;
            return Some(self.complete(now, pending.action));
        }
        if now >= pending.deadline {
            self.pending = None;
            return Some(vec![status::USER_ACTION_TIMEOUT]);
        }
        None
    }

    /// Cancels the request waiting for a touch: its answer (CTAP2_ERR_KEEPALIVE_CANCEL), if any.
    pub fn cancel(&mut self) -> Option<Vec<u8>> {
        self.pending.take().map(|_| vec![status::KEEPALIVE_CANCEL])
    }

    /// Drops the request waiting for a touch without an answer.
    pub fn abort(&mut self) {
        self.pending = None;
    }

    /// Handles one request: the command byte, then its CBOR parameters.
    pub fn handle(&mut self, now: Duration, request: &[u8]) -> Reply {
        let Some((&command, body)) = request.split_first() else {
            return Reply::Done(vec![status::INVALID_LENGTH]);
        };
        if command != command::GET_NEXT_ASSERTION {
            self.next = None;
        }
        let params = if body.is_empty() {
            None
        } else {
            match ciborium::from_reader::<Value, _>(body) {
                Ok(Value::Map(entries)) => Some(entries),
                Ok(_) => return Reply::Done(vec![status::CBOR_UNEXPECTED_TYPE]),
                Err(_) => return Reply::Done(vec![status::INVALID_CBOR]),
            }
        };
        let params = params.as_deref();
        let outcome = match command {
            command::GET_INFO => Ok(Answer::Now(Some(self.info()))),
            command::MAKE_CREDENTIAL => self.make_credential(params),
            command::GET_ASSERTION => self.get_assertion(now, params),
            command::GET_NEXT_ASSERTION => self.get_next_assertion(now),
            command::CLIENT_PIN => self.client_pin(params),
            command::RESET => self.reset(now),
            command::SELECTION => Ok(Answer::AfterTouch(Action::Selection)),
            _ => Err(status::INVALID_COMMAND),
        };
        match outcome {
            Err(code) => Reply::Done(vec![code]),
            Ok(Answer::Now(value)) => Reply::Done(success(value)),
            Ok(Answer::AfterTouch(action)) => self.ask_for_touch(now, action),
        }
    }

    fn ask_for_touch(&mut self, now: Duration, action: Action) -> Reply {
        let deadline = now + self.config.touch_timeout;
        let touch_at = match self.config.touch {
            Touch::Now => return Reply::Done(self.complete(now, action)),
            Touch::Refuse => return Reply::Done(vec![status::OPERATION_DENIED]),
            Touch::After(delay) => Some(now + delay),
            Touch::Never => None,
        };
        self.pending = Some(Pending {
            action,
            touch_at,
            deadline,
        });
        Reply::WaitingForTouch
    }

    fn complete(&mut self, now: Duration, action: Action) -> Vec<u8> {
        let outcome = match action {
            Action::MakeCredential(new) => self.create(new),
            Action::GetAssertion(assertions) => self.assert(now, assertions, true),
            Action::Excluded => Err(status::CREDENTIAL_EXCLUDED),
            Action::Reset => {
                self.state = State {
                    aaguid: self.state.aaguid.clone(),
                    ..State::default()
                };
                self.dirty = true;
                self.token = None;
                self.mismatches = 0;
                Ok(None)
            }
            Action::Selection => Ok(None),
            Action::Status(code) => Err(code),
        };
        match outcome {
            Ok(value) => success(value),
            Err(code) => vec![code],
        }
    }

    fn info(&self) -> Value {
        let options = vec![
            (text("rk"), Value::Bool(true)),
            (text("up"), Value::Bool(true)),
            (text("clientPin"), Value::Bool(self.state.has_pin())),
            (text("pinUvAuthToken"), Value::Bool(true)),
            (text("makeCredUvNotRqd"), Value::Bool(true)),
        ];
        Value::Map(vec![
            (
                int(0x01),
                Value::Array(vec![text("FIDO_2_0"), text("FIDO_2_1")]),
            ),
            (int(0x03), Value::Bytes(self.state.aaguid.clone())),
            (int(0x04), Value::Map(options)),
            (int(0x05), int(i64::from(self.config.max_msg_size))),
            (int(0x06), Value::Array(vec![int(2), int(1)])),
            (int(0x07), int(8)),
            (int(0x08), int(128)),
            (int(0x09), Value::Array(vec![text("usb")])),
            (
                int(0x0a),
                Value::Array(vec![Value::Map(vec![
                    (text("alg"), int(ES256)),
                    (text("type"), text("public-key")),
                ])]),
            ),
            (int(0x0d), int(MIN_PIN_LENGTH as i64)),
            (int(0x0e), int(0x05_04_03)),
        ])
    }

    /// Checks a request's pinUvAuthParam against the pinUvAuthToken: whether the user was
    /// verified (none: no pinUvAuthParam), or an immediate answer. `needs_pin`: the request may
    /// not go without one (CTAP2_ERR_PUAT_REQUIRED).
    fn user_verification(
        &mut self,
        params: &[(Value, Value)],
        keys: (i64, i64),
        client_data_hash: &[u8],
        rp_id: &str,
        wanted: u8,
        needs_pin: bool,
    ) -> Result<Option<Answer>, u8> {
        let (param_key, protocol_key) = keys;
        let Some(param) = field(params, param_key) else {
            if needs_pin {
                return Err(status::PIN_REQUIRED);
            }
            return Ok(None);
        };
        let param = bytes(param)?;
        if param.is_empty() {
            let code = if self.state.has_pin() {
                status::PIN_INVALID
            } else {
                status::PIN_NOT_SET
            };
            return Ok(Some(Answer::AfterTouch(Action::Status(code))));
        }
        let protocol = protocol_of(params, protocol_key)?;
        if !self.state.has_pin() {
            return Err(status::PIN_NOT_SET);
        }
        let token = self.token.as_mut().ok_or(status::PIN_AUTH_INVALID)?;
        if token.protocol != protocol
            || !protocol.verify(&token.value, client_data_hash, param)
            || token.permissions & wanted == 0
            || token.rp_id.as_deref().is_some_and(|bound| bound != rp_id)
        {
            return Err(status::PIN_AUTH_INVALID);
        }
        token.rp_id.get_or_insert_with(|| rp_id.to_owned());
        Ok(Some(Answer::Now(None)))
    }

    fn make_credential(&mut self, params: Option<&[(Value, Value)]>) -> Outcome {
        let params = params.ok_or(status::MISSING_PARAMETER)?;
        let client_data_hash = bytes(required(params, 1)?)?.clone();
        let rp = map(required(params, 2)?)?;
        let rp_id = text_of(named(rp, "id").ok_or(status::MISSING_PARAMETER)?)?.to_owned();
        let user = map(required(params, 3)?)?;
        let user_id = bytes(named(user, "id").ok_or(status::MISSING_PARAMETER)?)?.clone();
        if user_id.len() > 64 {
            return Err(status::INVALID_LENGTH);
        }
        let user = User {
            id: user_id,
            name: optional_text(user, "name")?,
            display_name: optional_text(user, "displayName")?,
        };
        let algorithms = array(required(params, 4)?)?;
        let es256 = algorithms.iter().any(|entry| {
            entry.as_map().is_some_and(|entry| {
                named(entry, "type").and_then(Value::as_text) == Some("public-key")
                    && named(entry, "alg")
                        .and_then(Value::as_integer)
                        .map(i128::from)
                        == Some(i128::from(ES256))
            })
        });
        if !es256 {
            return Err(status::UNSUPPORTED_ALGORITHM);
        }
        let options = options(params, 7)?;
        // No built-in user verification: the "uv" option is refused, as a YubiKey refuses it
        // (even beside a pinUvAuthParam).
        if options.up == Some(false) || options.uv == Some(true) {
            return Err(status::INVALID_OPTION);
        }
        let discoverable = options.rk.unwrap_or(false);
        // makeCredUvNotRqd: only discoverable credentials need the PIN once it is set.
        let needs_pin = discoverable && self.state.has_pin();
        let uv = match self.user_verification(
            params,
            (8, 9),
            &client_data_hash,
            &rp_id,
            permission::MAKE_CREDENTIAL,
            needs_pin,
        )? {
            Some(Answer::AfterTouch(action)) => return Ok(Answer::AfterTouch(action)),
            Some(Answer::Now(_)) => true,
            None => false,
        };
        if let Some(excluded) = field(params, 5) {
            let excluded = array(excluded)?;
            let known = excluded.iter().filter_map(descriptor_id).any(|id| {
                self.state
                    .credentials
                    .iter()
                    .any(|c| c.id == id && c.rp_id == rp_id)
            });
            if known {
                return Ok(Answer::AfterTouch(Action::Excluded));
            }
        }
        Ok(Answer::AfterTouch(Action::MakeCredential(NewCredential {
            client_data_hash,
            rp_id,
            user,
            discoverable,
            uv,
        })))
    }

    fn create(&mut self, new: NewCredential) -> Result<Option<Value>, u8> {
        let key = SigningKey::try_generate().map_err(|_| status::OTHER)?;
        let mut id = vec![0u8; CREDENTIAL_ID_LEN];
        getrandom::fill(&mut id).map_err(|_| status::OTHER)?;
        if new.discoverable {
            self.state.credentials.retain(|c| {
                !(c.discoverable
                    && c.rp_id == new.rp_id
                    && c.user.as_ref().is_some_and(|u| u.id == new.user.id))
            });
        }
        self.state.sign_count = self.state.sign_count.wrapping_add(1);
        let mut flags = flag::UP | flag::AT;
        if new.uv {
            flags |= flag::UV;
        }
        let mut auth_data = auth_data_head(&new.rp_id, flags, self.state.sign_count);
        auth_data.extend_from_slice(&self.state.aaguid);
        auth_data.extend_from_slice(&(id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&id);
        let cose = pin::cose_p256(&key.verifying_key().into(), ES256);
        ciborium::into_writer(&cose, &mut auth_data).map_err(|_| status::OTHER)?;
        let signature = sign(&key, &auth_data, &new.client_data_hash);
        self.state.credentials.push(Credential {
            id,
            rp_id: new.rp_id,
            user: new.discoverable.then_some(new.user),
            discoverable: new.discoverable,
            private_key: key.to_bytes().to_vec(),
        });
        self.dirty = true;
        Ok(Some(Value::Map(vec![
            (int(1), text("packed")),
            (int(2), Value::Bytes(auth_data)),
            (
                int(3),
                Value::Map(vec![
                    (text("alg"), int(ES256)),
                    (text("sig"), Value::Bytes(signature)),
                ]),
            ),
        ])))
    }

    fn get_assertion(&mut self, now: Duration, params: Option<&[(Value, Value)]>) -> Outcome {
        let params = params.ok_or(status::MISSING_PARAMETER)?;
        let rp_id = text_of(required(params, 1)?)?.to_owned();
        let client_data_hash = bytes(required(params, 2)?)?.clone();
        let options = options(params, 5)?;
        if options.rk.is_some() {
            return Err(status::UNSUPPORTED_OPTION);
        }
        if options.uv == Some(true) {
            return Err(status::INVALID_OPTION);
        }
        let uv = match self.user_verification(
            params,
            (6, 7),
            &client_data_hash,
            &rp_id,
            permission::GET_ASSERTION,
            false,
        )? {
            Some(Answer::AfterTouch(action)) => return Ok(Answer::AfterTouch(action)),
            Some(Answer::Now(_)) => true,
            None => false,
        };
        let allowed: Vec<Vec<u8>> = match field(params, 3) {
            Some(list) => array(list)?.iter().filter_map(descriptor_id).collect(),
            None => Vec::new(),
        };
        let credentials: Vec<usize> = if allowed.is_empty() {
            let mut found: Vec<usize> = (0..self.state.credentials.len())
                .filter(|&i| {
                    let c = &self.state.credentials[i];
                    c.discoverable && c.rp_id == rp_id
                })
                .collect();
            found.reverse(); // The newest first.
            found
        } else {
            allowed
                .iter()
                .find_map(|id| {
                    self.state
                        .credentials
                        .iter()
                        .position(|c| &c.id == id && c.rp_id == rp_id)
                })
                .into_iter()
                .collect()
        };
        if credentials.is_empty() {
            return Err(status::NO_CREDENTIALS);
        }
        let up = options.up.unwrap_or(true);
        let assertions = Assertions {
            rp_id,
            client_data_hash,
            credentials,
            up,
            uv,
            discovered: allowed.is_empty(),
        };
        if up {
            Ok(Answer::AfterTouch(Action::GetAssertion(assertions)))
        } else {
            self.assert(now, assertions, true).map(Answer::Now)
        }
    }

    fn get_next_assertion(&mut self, now: Duration) -> Outcome {
        let next = self.next.take().ok_or(status::NOT_ALLOWED)?;
        if now > next.expires {
            return Err(status::NOT_ALLOWED);
        }
        self.assert(now, next.assertions, false).map(Answer::Now)
    }

    /// Signs with the first of `assertions`; keeps the rest for getNextAssertion.
    fn assert(
        &mut self,
        now: Duration,
        mut assertions: Assertions,
        first: bool,
    ) -> Result<Option<Value>, u8> {
        if assertions.credentials.is_empty() {
            return Err(status::NOT_ALLOWED);
        }
        let index = assertions.credentials.remove(0);
        let credential = self
            .state
            .credentials
            .get(index)
            .ok_or(status::NOT_ALLOWED)?
            .clone();
        let key = SigningKey::from_slice(&credential.private_key).map_err(|_| status::OTHER)?;
        self.state.sign_count = self.state.sign_count.wrapping_add(1);
        self.dirty = true;
        let mut flags = 0;
        if assertions.up {
            flags |= flag::UP;
        }
        if assertions.uv {
            flags |= flag::UV;
        }
        let auth_data = auth_data_head(&assertions.rp_id, flags, self.state.sign_count);
        let signature = sign(&key, &auth_data, &assertions.client_data_hash);
        let mut response = vec![
            (
                int(1),
                Value::Map(vec![
                    (text("id"), Value::Bytes(credential.id.clone())),
                    (text("type"), text("public-key")),
                ]),
            ),
            (int(2), Value::Bytes(auth_data)),
            (int(3), Value::Bytes(signature)),
        ];
        if let Some(user) = credential.user.as_ref().filter(|_| credential.discoverable) {
            let mut entity = vec![(text("id"), Value::Bytes(user.id.clone()))];
            if assertions.uv {
                if let Some(name) = &user.name {
                    entity.push((text("name"), text(name)));
                }
                if let Some(display_name) = &user.display_name {
                    entity.push((text("displayName"), text(display_name)));
                }
            }
            response.push((int(4), Value::Map(entity)));
        }
        let remaining = assertions.credentials.len();
        if first && assertions.discovered && remaining > 0 {
            response.push((int(5), int(remaining as i64 + 1)));
        }
        if remaining > 0 {
            self.next = Some(NextAssertions {
                assertions,
                expires: now + NEXT_ASSERTION_WINDOW,
            });
        }
        Ok(Some(Value::Map(response)))
    }

    fn reset(&mut self, now: Duration) -> Outcome {
        if self
            .config
            .reset_window
            .is_some_and(|window| now.saturating_sub(self.powered_at) > window)
        {
            return Err(status::NOT_ALLOWED);
        }
        Ok(Answer::AfterTouch(Action::Reset))
    }

    fn client_pin(&mut self, params: Option<&[(Value, Value)]>) -> Outcome {
        let params = params.ok_or(status::MISSING_PARAMETER)?;
        let sub = integer(required(params, 2)?)?;
        let sub = u8::try_from(sub).map_err(|_| status::INVALID_SUBCOMMAND)?;
        if sub == subcommand::GET_PIN_RETRIES {
            return Ok(Answer::Now(Some(Value::Map(vec![
                (int(3), int(i64::from(self.state.pin_retries))),
                (
                    int(4),
                    Value::Bool(self.mismatches >= MISMATCHES_BEFORE_REPLUG),
                ),
            ]))));
        }
        let protocol = protocol_of(params, 1)?;
        match sub {
            subcommand::GET_KEY_AGREEMENT => Ok(Answer::Now(Some(Value::Map(vec![(
                int(1),
                self.key_agreement.cose_public(),
            )])))),
            subcommand::SET_PIN => self.set_pin(params, protocol),
            subcommand::CHANGE_PIN => self.change_pin(params, protocol),
            subcommand::GET_PIN_TOKEN => {
                if field(params, 9).is_some() || field(params, 0x0a).is_some() {
                    return Err(status::INVALID_PARAMETER);
                }
                let mc_ga = permission::MAKE_CREDENTIAL | permission::GET_ASSERTION;
                self.pin_token(params, protocol, mc_ga, None)
            }
            subcommand::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS => {
                let permissions = integer(required(params, 9)?)?;
                if permissions == 0 {
                    return Err(status::INVALID_PARAMETER);
                }
                let granted = i128::from(permission::MAKE_CREDENTIAL | permission::GET_ASSERTION);
                if permissions & !granted != 0 {
                    return Err(status::UNAUTHORIZED_PERMISSION);
                }
                let rp_id = match field(params, 0x0a) {
                    Some(rp_id) => Some(text_of(rp_id)?.to_owned()),
                    None => None,
                };
                let permissions = u8::try_from(permissions).map_err(|_| status::OTHER)?;
                self.pin_token(params, protocol, permissions, rp_id)
            }
            _ => Err(status::INVALID_SUBCOMMAND),
        }
    }

    fn shared_secret(&self, params: &[(Value, Value)], protocol: Protocol) -> Result<Vec<u8>, u8> {
        self.key_agreement
            .shared_secret(protocol, required(params, 3)?)
            .map_err(|_| status::INVALID_PARAMETER)
    }

    fn set_pin(&mut self, params: &[(Value, Value)], protocol: Protocol) -> Outcome {
        let auth = bytes(required(params, 4)?)?;
        let new_pin_enc = bytes(required(params, 5)?)?;
        required(params, 3)?;
        if self.state.has_pin() {
            return Err(status::NOT_ALLOWED);
        }
        let shared = self.shared_secret(params, protocol)?;
        if !protocol.verify(&shared, new_pin_enc, auth) {
            return Err(status::PIN_AUTH_INVALID);
        }
        let new_pin = self.new_pin(protocol, &shared, new_pin_enc)?;
        self.store_pin(&new_pin);
        Ok(Answer::Now(None))
    }

    fn change_pin(&mut self, params: &[(Value, Value)], protocol: Protocol) -> Outcome {
        let auth = bytes(required(params, 4)?)?;
        let new_pin_enc = bytes(required(params, 5)?)?;
        let pin_hash_enc = bytes(required(params, 6)?)?;
        required(params, 3)?;
        if !self.state.has_pin() {
            return Err(status::PIN_NOT_SET);
        }
        self.pin_attempt_allowed()?;
        let shared = self.shared_secret(params, protocol)?;
        let message = [new_pin_enc.as_slice(), pin_hash_enc].concat();
        if !protocol.verify(&shared, &message, auth) {
            return Err(status::PIN_AUTH_INVALID);
        }
        self.check_pin(protocol, &shared, pin_hash_enc)?;
        let new_pin = self.new_pin(protocol, &shared, new_pin_enc)?;
        self.store_pin(&new_pin);
        Ok(Answer::Now(None))
    }

    fn pin_token(
        &mut self,
        params: &[(Value, Value)],
        protocol: Protocol,
        permissions: u8,
        rp_id: Option<String>,
    ) -> Outcome {
        let pin_hash_enc = bytes(required(params, 6)?)?;
        required(params, 3)?;
        if !self.state.has_pin() {
            return Err(status::PIN_NOT_SET);
        }
        self.pin_attempt_allowed()?;
        let shared = self.shared_secret(params, protocol)?;
        self.check_pin(protocol, &shared, pin_hash_enc)?;
        let mut value = [0u8; 32];
        getrandom::fill(&mut value).map_err(|_| status::OTHER)?;
        let encrypted = protocol
            .encrypt(&shared, &value)
            .map_err(|_| status::OTHER)?;
        self.token = Some(Token {
            value,
            protocol,
            permissions,
            rp_id,
        });
        Ok(Answer::Now(Some(Value::Map(vec![(
            int(2),
            Value::Bytes(encrypted),
        )]))))
    }

    fn pin_attempt_allowed(&self) -> Result<(), u8> {
        if self.state.pin_retries == 0 {
            return Err(status::PIN_BLOCKED);
        }
        if self.mismatches >= MISMATCHES_BEFORE_REPLUG {
            return Err(status::PIN_AUTH_BLOCKED);
        }
        Ok(())
    }

    /// Compares the platform's encrypted PIN hash with the PIN's: a wrong one costs a retry.
    fn check_pin(
        &mut self,
        protocol: Protocol,
        shared: &[u8],
        pin_hash_enc: &[u8],
    ) -> Result<(), u8> {
        let expected_len = match protocol {
            Protocol::One => 16,
            Protocol::Two => 32,
        };
        if pin_hash_enc.len() != expected_len {
            return Err(status::INVALID_PARAMETER);
        }
        self.state.pin_retries = self.state.pin_retries.saturating_sub(1);
        self.dirty = true;
        let given = protocol
            .decrypt(shared, pin_hash_enc)
            .map_err(|_| status::INVALID_PARAMETER)?;
        if Some(given) != self.state.pin_hash {
            self.key_agreement = KeyAgreement::generate().map_err(|_| status::OTHER)?;
            self.mismatches = self.mismatches.saturating_add(1);
            if self.state.pin_retries == 0 {
                return Err(status::PIN_BLOCKED);
            }
            if self.mismatches >= MISMATCHES_BEFORE_REPLUG {
                return Err(status::PIN_AUTH_BLOCKED);
            }
            return Err(status::PIN_INVALID);
        }
        self.state.pin_retries = MAX_PIN_RETRIES;
        self.mismatches = 0;
        Ok(())
    }

    /// The new PIN in `new_pin_enc`: 64 bytes padded with zeros, at least four code points.
    fn new_pin(
        &self,
        protocol: Protocol,
        shared: &[u8],
        new_pin_enc: &[u8],
    ) -> Result<Vec<u8>, u8> {
        let expected_len = match protocol {
            Protocol::One => 64,
            Protocol::Two => 80,
        };
        if new_pin_enc.len() != expected_len {
            return Err(status::INVALID_PARAMETER);
        }
        let mut padded = protocol
            .decrypt(shared, new_pin_enc)
            .map_err(|_| status::INVALID_PARAMETER)?;
        while padded.last() == Some(&0) {
            padded.pop();
        }
        if padded.len() > 63 {
            return Err(status::PIN_POLICY_VIOLATION);
        }
        let code_points = String::from_utf8_lossy(&padded).chars().count();
        if code_points < MIN_PIN_LENGTH {
            return Err(status::PIN_POLICY_VIOLATION);
        }
        Ok(padded)
    }

    fn store_pin(&mut self, pin: &[u8]) {
        self.state.pin_hash = Some(state::pin_hash(pin));
        self.state.pin_retries = MAX_PIN_RETRIES;
        self.mismatches = 0;
        self.token = None;
        self.dirty = true;
    }
}

/// rpIdHash ‖ flags ‖ signCount.
fn auth_data_head(rp_id: &str, flags: u8, counter: u32) -> Vec<u8> {
    let mut data = Sha256::digest(rp_id.as_bytes()).to_vec();
    data.push(flags);
    data.extend_from_slice(&counter.to_be_bytes());
    data
}

/// An ES256 signature (DER) over authenticator data ‖ client data hash.
fn sign(key: &SigningKey, auth_data: &[u8], client_data_hash: &[u8]) -> Vec<u8> {
    let message = [auth_data, client_data_hash].concat();
    let signature: DerSignature = key.sign(&message);
    signature.as_bytes().to_vec()
}

/// A success answer: status 0, then the CBOR response in CTAP2 canonical form.
fn success(value: Option<Value>) -> Vec<u8> {
    let mut answer = vec![status::OK];
    if let Some(value) = value
        && ciborium::into_writer(&canonical(value), &mut answer).is_err()
    {
        return vec![status::OTHER];
    }
    answer
}

/// `value` with every map's keys in CTAP2 canonical order: shorter encodings first, then
/// bytewise.
#[must_use]
pub fn canonical(value: Value) -> Value {
    match value {
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, (Value, Value))> = entries
                .into_iter()
                .map(|(k, v)| {
                    let mut encoded = Vec::new();
                    let _ = ciborium::into_writer(&k, &mut encoded);
                    (encoded, (k, canonical(v)))
                })
                .collect();
            keyed.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            Value::Map(keyed.into_iter().map(|(_, entry)| entry).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn int(value: i64) -> Value {
    Value::from(value)
}

fn text(value: &str) -> Value {
    Value::Text(value.to_owned())
}

fn field(params: &[(Value, Value)], key: i64) -> Option<&Value> {
    params
        .iter()
        .find(|(k, _)| k.as_integer().map(i128::from) == Some(i128::from(key)))
        .map(|(_, v)| v)
}

fn required(params: &[(Value, Value)], key: i64) -> Result<&Value, u8> {
    field(params, key).ok_or(status::MISSING_PARAMETER)
}

fn named<'a>(entries: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

fn bytes(value: &Value) -> Result<&Vec<u8>, u8> {
    value.as_bytes().ok_or(status::CBOR_UNEXPECTED_TYPE)
}

fn text_of(value: &Value) -> Result<&str, u8> {
    value.as_text().ok_or(status::CBOR_UNEXPECTED_TYPE)
}

fn integer(value: &Value) -> Result<i128, u8> {
    value
        .as_integer()
        .map(i128::from)
        .ok_or(status::CBOR_UNEXPECTED_TYPE)
}

fn map(value: &Value) -> Result<&[(Value, Value)], u8> {
    value
        .as_map()
        .map(Vec::as_slice)
        .ok_or(status::CBOR_UNEXPECTED_TYPE)
}

fn array(value: &Value) -> Result<&[Value], u8> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or(status::CBOR_UNEXPECTED_TYPE)
}

fn optional_text(entries: &[(Value, Value)], name: &str) -> Result<Option<String>, u8> {
    named(entries, name)
        .map(|value| text_of(value).map(str::to_owned))
        .transpose()
}

fn protocol_of(params: &[(Value, Value)], key: i64) -> Result<Protocol, u8> {
    let number = integer(required(params, key)?)?;
    Protocol::from_number(number).ok_or(status::INVALID_PARAMETER)
}

/// The id of a PublicKeyCredentialDescriptor of type "public-key".
fn descriptor_id(descriptor: &Value) -> Option<Vec<u8>> {
    let entries = descriptor.as_map()?;
    if named(entries, "type").and_then(Value::as_text) != Some("public-key") {
        return None;
    }
    named(entries, "id").and_then(Value::as_bytes).cloned()
}

#[derive(Default)]
struct Options {
    rk: Option<bool>,
    up: Option<bool>,
    uv: Option<bool>,
}

fn options(params: &[(Value, Value)], key: i64) -> Result<Options, u8> {
    let mut options = Options::default();
    if let Some(value) = field(params, key) {
        for (name, value) in map(value)? {
            let slot = match name.as_text() {
                Some("rk") => &mut options.rk,
                Some("up") => &mut options.up,
                Some("uv") => &mut options.uv,
                _ => continue,
            };
            *slot = Some(value.as_bool().ok_or(status::CBOR_UNEXPECTED_TYPE)?);
        }
    }
    Ok(options)
}
