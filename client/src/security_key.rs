//! The member's USB FIDO2 security key (a YubiKey, say) as an [`Authenticator`]: CTAP2 over HID
//! through `ctap-hid-fido2`, the PIN asked for (again while tries are left), touch announced, and
//! every refusal of the key named in [`AuthenticatorError`].
//!
//! [`SecurityKey`] is the WebAuthn client in front of a [`Ctap2Key`]; [`HidKey`] is the real key
//! on hidraw. Tests put a virtual key behind [`Ctap2Key`] (the seam `ctap-hid-fido2` itself lacks).

use std::panic::AssertUnwindSafe;

use tessera_softkey::client::{
    self, Assertion, Attestation, CreateRequest, GetRequest, attested_key,
};
use tessera_softkey::{Authenticator, AuthenticatorError};
use tessera_wire::PublicKeyInfo;
use webauthn_rs_proto::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse,
};

/// What Tessera asks of a key over CTAP2: the seam between the ceremonies and the transport.
pub trait Ctap2Key {
    /// Whether the key has a PIN set (getInfo's `clientPin` option).
    ///
    /// # Errors
    /// When the key does not answer.
    fn has_pin(&mut self) -> Result<bool, AuthenticatorError>;

    /// authenticatorMakeCredential: a discoverable ES256 credential, the PIN verifying the user.
    ///
    /// # Errors
    /// The key's refusal.
    fn make_credential(
        &mut self,
        request: &CreateRequest,
        pin: &str,
    ) -> Result<Attestation, AuthenticatorError>;

    /// authenticatorGetAssertion (and getNextAssertion): one assertion per matching credential.
    ///
    /// # Errors
    /// The key's refusal.
    fn get_assertion(
        &mut self,
        request: &GetRequest,
        pin: &str,
    ) -> Result<Vec<Assertion>, AuthenticatorError>;
}

/// How the key's owner is asked for their PIN (the key's own wait for a touch is announced by
/// its transport when the key signals it).
pub trait Prompt {
    /// The key's PIN; `wrong` says how many tries are left after a wrong one.
    ///
    /// # Errors
    /// When no PIN can be had (no terminal, the PIN file ended): the ceremony stops.
    fn pin(&mut self, wrong: Option<u32>) -> std::io::Result<String>;
}

/// A security key behind [`Ctap2Key`], with the owner's [`Prompt`]: the CLI's [`Authenticator`].
pub struct SecurityKey<K, P> {
    key: K,
    prompt: P,
    /// The PIN that worked, kept for the rest of this process (one ceremony asks once).
    pin: Option<String>,
    /// The credential this key created or must use.
    credential: Option<PublicKeyInfo>,
    rp_id: String,
}

impl<K: Ctap2Key, P: Prompt> SecurityKey<K, P> {
    /// `key` with `prompt`; `credential` is the enrolled credential it must sign with, when known.
    pub fn new(key: K, prompt: P, credential: Option<PublicKeyInfo>) -> Self {
        SecurityKey {
            key,
            prompt,
            pin: None,
            credential,
            rp_id: String::new(),
        }
    }

    /// Runs `request` with the PIN, asking for it (again after a wrong one, while tries are left
    /// and the prompt can ask).
    fn with_pin<T>(
        &mut self,
        mut request: impl FnMut(&mut K, &str) -> Result<T, AuthenticatorError>,
    ) -> Result<T, AuthenticatorError> {
        if !self.key.has_pin()? {
            return Err(AuthenticatorError::PinNotSet);
        }
        let mut wrong = None;
        loop {
            let pin = match self.pin.take() {
                Some(pin) => pin,
                None => self.prompt.pin(wrong).map_err(|e| match wrong {
                    // A wrong PIN and nobody to ask again: say so, not "no input".
                    Some(retries) => {
                        drop(e);
                        AuthenticatorError::PinInvalid { retries }
                    }
                    None => AuthenticatorError::Device(format!("cannot read the PIN: {e}")),
                })?,
            };
            match request(&mut self.key, &pin) {
                Err(AuthenticatorError::PinInvalid { retries }) if retries > 0 => {
                    wrong = Some(retries);
                }
                Ok(answer) => {
                    self.pin = Some(pin);
                    return Ok(answer);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<K: Ctap2Key + Send, P: Prompt + Send> Authenticator for SecurityKey<K, P> {
    fn register(
        &mut self,
        options: &CreationChallengeResponse,
        origin: &str,
    ) -> Result<RegisterPublicKeyCredential, AuthenticatorError> {
        let request = client::create_request(options, origin)?;
        let attestation = self.with_pin(|key, pin| key.make_credential(&request, pin))?;
        let (credential, info) = client::registration(&request, attestation)?;
        self.credential = Some(info);
        self.rp_id.clone_from(&request.rp_id);
        Ok(credential)
    }

    fn sign_in(
        &mut self,
        options: &RequestChallengeResponse,
        origin: &str,
    ) -> Result<PublicKeyCredential, AuthenticatorError> {
        let mut request = client::get_request(options, origin)?;
        // The enrolled credential when this device knows it: a key may hold others for this rp id.
        if request.allow.is_empty()
            && let Some(own) = &self.credential
        {
            request.allow.push(own.credential_id.as_slice().to_vec());
        }
        let assertions = self.with_pin(|key, pin| key.get_assertion(&request, pin))?;
        let chosen = assertions
            .into_iter()
            .find(|a| request.allow.is_empty() || request.allow.contains(&a.credential_id))
            .ok_or(AuthenticatorError::NoCredential)?;
        self.rp_id.clone_from(&request.rp_id);
        Ok(client::authentication(&request, chosen))
    }

    fn public_key_info(&self) -> PublicKeyInfo {
        self.credential.clone().unwrap_or(PublicKeyInfo {
            credential_id: Vec::new().into(),
            alg: "ES256".into(),
            public_key: Vec::new().into(),
        })
    }

    fn rp_id(&self) -> &str {
        &self.rp_id
    }
}

/// A FIDO2 key plugged in, as the system lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluggedKey {
    /// Its hidraw path.
    pub path: String,
    /// What it calls itself.
    pub product: String,
}

/// The FIDO2 keys plugged in now.
///
/// # Errors
/// [`AuthenticatorError::Device`] when the system's HID devices cannot be read.
pub fn plugged_keys() -> Result<Vec<PluggedKey>, AuthenticatorError> {
    // hidapi's set-up panics where the system has no HID support at all.
    let listed = std::panic::catch_unwind(ctap_hid_fido2::get_fidokey_devices)
        .map_err(|_| AuthenticatorError::Device("cannot list the system's HID devices".into()))?;
    Ok(listed
        .into_iter()
        .filter_map(|info| match info.param {
            ctap_hid_fido2::HidParam::Path(path) => Some(PluggedKey {
                path,
                product: info.product_string,
            }),
            ctap_hid_fido2::HidParam::VidPid { .. } => None,
        })
        .collect())
}

/// A USB key on hidraw, through `ctap-hid-fido2` (PIN protocol 2 where the key has it).
pub struct HidKey {
    device: ctap_hid_fido2::FidoKeyHid,
}

impl HidKey {
    /// Opens the key at `path` (from [`plugged_keys`]); when the key waits for a touch
    /// (CTAPHID keepalive "user presence needed") standard error says "Touch your security key
    /// now.".
    ///
    /// # Errors
    /// [`AuthenticatorError::Removed`] when it is gone, [`AuthenticatorError::Device`].
    pub fn open(path: &str) -> Result<HidKey, AuthenticatorError> {
        let mut config = ctap_hid_fido2::LibCfg::init();
        config.enable_keep_alive_msg = true;
        config.keep_alive_msg_to_stderr = true;
        config.keep_alive_msg = "Touch your security key now.".into();
        let params = [ctap_hid_fido2::HidParam::Path(path.to_owned())];
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
            ctap_hid_fido2::FidoKeyHid::new(&params, &config)
        }))
        .map_err(|_| AuthenticatorError::Device("cannot open the HID device".into()))?;
        let mut device = opened.map_err(|e| {
            AuthenticatorError::Device(format!(
                "cannot open the security key at {path} ({e:#}): is it plugged in, and is that its \
                 /dev/hidrawN path?"
            ))
        })?;
        device
            .set_pin_uv_auth_protocol_two()
            .map_err(|e| classify(&format!("{e:#}")))?;
        Ok(HidKey { device })
    }
}

impl HidKey {
    /// The key's refusal, with the tries left after a wrong PIN.
    fn refusal(&self, error: &anyhow::Error) -> AuthenticatorError {
        let text = format!("{error:#}");
        match status_in(&text) {
            Some(status) => refusal_of(status, || {
                let retries = self.device.get_pin_retries().ok()?;
                u32::try_from(retries).ok()
            }),
            None => classify(&text),
        }
    }
}

impl Ctap2Key for HidKey {
    fn has_pin(&mut self) -> Result<bool, AuthenticatorError> {
        let info = self.device.get_info().map_err(|e| self.refusal(&e))?;
        Ok(info
            .options
            .iter()
            .any(|(name, set)| name == "clientPin" && *set))
    }

    fn make_credential(
        &mut self,
        request: &CreateRequest,
        pin: &str,
    ) -> Result<Attestation, AuthenticatorError> {
        use ctap_hid_fido2::fidokey::{CredentialSupportedKeyType, MakeCredentialArgsBuilder};
        use ctap_hid_fido2::public_key_credential_user_entity::PublicKeyCredentialUserEntity;
        let user = PublicKeyCredentialUserEntity::new(
            Some(&request.user_id),
            Some(&request.user_name),
            Some(&request.user_display_name),
        );
        // The crate signs SHA-256 of what it is given as the challenge: given clientDataJSON, the
        // key signs clientDataHash, as WebAuthn has it.
        let mut args = MakeCredentialArgsBuilder::new(&request.rp_id, &request.client_data_json)
            .pin(pin)
            .resident_key()
            .user_entity(&user)
            .key_type(CredentialSupportedKeyType::Ecdsa256);
        for id in &request.exclude {
            args = args.exclude_authenticator(id);
        }
        let made = self
            .device
            .make_credential_with_args(&args.build())
            .map_err(|e| self.refusal(&e))?;
        attested_key(&made.auth_data)?;
        Ok(Attestation {
            statement: statement(&made),
            format: made.fmt,
            auth_data: made.auth_data,
        })
    }

    fn get_assertion(
        &mut self,
        request: &GetRequest,
        pin: &str,
    ) -> Result<Vec<Assertion>, AuthenticatorError> {
        use ctap_hid_fido2::fidokey::GetAssertionArgsBuilder;
        let mut args =
            GetAssertionArgsBuilder::new(&request.rp_id, &request.client_data_json).pin(pin);
        for id in &request.allow {
            args = args.add_credential_id(id);
        }
        let answers = self
            .device
            .get_assertion_with_args(&args.build())
            .map_err(|e| self.refusal(&e))?;
        Ok(answers
            .into_iter()
            .map(|a| Assertion {
                credential_id: a.credential_id,
                auth_data: a.auth_data,
                signature: a.signature,
                user_handle: (!a.user.id.is_empty()).then_some(a.user.id),
            })
            .collect())
    }
}

/// The attestation statement of a key's answer, as CBOR (`packed`: alg, sig and any x5c).
fn statement(
    made: &ctap_hid_fido2::fidokey::make_credential::make_credential_params::Attestation,
) -> ciborium::Value {
    use ciborium::Value;
    if made.fmt != "packed" {
        return Value::Map(Vec::new());
    }
    let mut fields = vec![
        (
            Value::Text("alg".into()),
            Value::Integer(i64::from(made.attstmt_alg).into()),
        ),
        (
            Value::Text("sig".into()),
            Value::Bytes(made.attstmt_sig.clone()),
        ),
    ];
    if !made.attstmt_x5c.is_empty() {
        fields.push((
            Value::Text("x5c".into()),
            Value::Array(made.attstmt_x5c.iter().cloned().map(Value::Bytes).collect()),
        ));
    }
    Value::Map(fields)
}

/// The CTAP2 status code a `ctap-hid-fido2` failure reports: it gives it only in its message
/// (`response_status err = 0x31 CTAP2_ERR_PIN_INVALID …`).
fn status_in(text: &str) -> Option<u8> {
    let (_, code) = text.split_once("response_status err = 0x")?;
    u8::from_str_radix(code.get(..2)?, 16).ok()
}

/// The refusal a CTAP2 status code names; `retries` asks the key for the PIN tries left (after a
/// wrong PIN: none left means the PIN is now blocked).
pub fn refusal_of(status: u8, retries: impl FnOnce() -> Option<u32>) -> AuthenticatorError {
    match status {
        0x31 => match retries() {
            Some(0) => AuthenticatorError::PinBlocked,
            retries => AuthenticatorError::PinInvalid {
                retries: retries.unwrap_or(0),
            },
        },
        0x34 => AuthenticatorError::PinAuthBlocked,
        0x32 => AuthenticatorError::PinBlocked,
        0x35 => AuthenticatorError::PinNotSet,
        0x2F => AuthenticatorError::TouchTimeout,
        0x27 => AuthenticatorError::Denied,
        0x2E => AuthenticatorError::NoCredential,
        0x19 => AuthenticatorError::AlreadyEnrolled,
        other => AuthenticatorError::Device(format!("the key answered CTAP2 status {other:#04x}")),
    }
}

/// Names a `ctap-hid-fido2` failure that carries no CTAP2 status: the key went away, or
/// something else (said as it is).
fn classify(text: &str) -> AuthenticatorError {
    let lower = text.to_ascii_lowercase();
    if lower.contains("read err")
        || lower.contains("write err")
        || lower.contains("no such device")
        || lower.contains("device not found")
    {
        return AuthenticatorError::Removed;
    }
    AuthenticatorError::Device(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crates_failure_messages_are_named_by_their_status() {
        // As ctap-hid-fido2 3.6 words them (`ctaphid.rs`, `ctapdef.rs`).
        let wrong = "response_status err = 0x31 CTAP2_ERR_PIN_INVALID PIN Invalid.";
        assert_eq!(status_in(wrong), Some(0x31));
        assert!(matches!(
            refusal_of(0x31, || Some(7)),
            AuthenticatorError::PinInvalid { retries: 7 }
        ));
        assert!(matches!(
            refusal_of(0x31, || Some(0)),
            AuthenticatorError::PinBlocked
        ));
        let timeout = "response_status err = 0x2F CTAP2_ERR_USER_ACTION_TIMEOUT   Timeout";
        assert!(matches!(
            refusal_of(status_in(timeout).expect("a status"), || None),
            AuthenticatorError::TouchTimeout
        ));
        let pulled = "read err = 0xFE CTAP2_ERR_... the device went away";
        assert_eq!(status_in(pulled), None);
        assert!(matches!(classify(pulled), AuthenticatorError::Removed));
        assert!(matches!(
            classify("something else"),
            AuthenticatorError::Device(_)
        ));
    }
}
