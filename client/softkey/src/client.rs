//! The WebAuthn client half for a key spoken to over CTAP2 (a USB security key): the checks a
//! browser makes of the origin and rp id, the clientDataJSON it writes, and the credentials it
//! assembles from the key's answers. [`crate::SoftKey`] is the same client in front of a key in a
//! file.

use ciborium::Value;
use webauthn_rs_proto::{
    AuthenticationExtensionsClientOutputs, AuthenticatorAssertionResponseRaw,
    AuthenticatorAttestationResponseRaw, AuthenticatorTransport, CreationChallengeResponse,
    PublicKeyCredential, RegisterPublicKeyCredential, RegistrationExtensionsClientOutputs,
    RequestChallengeResponse,
};

use crate::tamper::Tamper;
use crate::{
    AuthenticatorError, COSE_ALG_ES256, PUBLIC_KEY_TYPE, Page, cbor, client_data_json, encoding,
};
use tessera_wire::Base64Url;

/// What a key is asked to create (authenticatorMakeCredential), checked as a browser would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// The relying party id the credential is bound to.
    pub rp_id: String,
    /// The relying party's name.
    pub rp_name: String,
    /// The clientDataJSON; the key signs its SHA-256.
    pub client_data_json: Vec<u8>,
    /// The user handle (WebAuthn `user.id`), which a discoverable credential keeps.
    pub user_id: Vec<u8>,
    /// The user's name and display name, as the relying party gave them.
    pub user_name: String,
    /// The user's display name.
    pub user_display_name: String,
    /// Credentials the key must not hold already (the relying party's `excludeCredentials`).
    pub exclude: Vec<Vec<u8>>,
}

/// What a key is asked to sign (authenticatorGetAssertion), checked as a browser would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    /// The relying party id.
    pub rp_id: String,
    /// The clientDataJSON; the key signs its SHA-256 after its authenticator data.
    pub client_data_json: Vec<u8>,
    /// The credentials the relying party accepts; empty: any discoverable one of the rp id.
    pub allow: Vec<Vec<u8>>,
}

/// Prepares a registration at `origin`: refuses what a browser would refuse.
///
/// # Errors
/// [`AuthenticatorError::UnsupportedAlgorithm`] when the relying party does not accept ES256,
/// [`AuthenticatorError::InvalidOrigin`], [`AuthenticatorError::RpIdMismatch`].
pub fn create_request(
    options: &CreationChallengeResponse,
    origin: &str,
) -> Result<CreateRequest, AuthenticatorError> {
    let opts = &options.public_key;
    let (page, rp_id) = creation_page(options, origin)?;
    Ok(CreateRequest {
        rp_id,
        rp_name: opts.rp.name.clone(),
        client_data_json: client_data_json(
            &Tamper::default(),
            "webauthn.create",
            &opts.challenge,
            &page.origin,
        )?,
        user_id: opts.user.id.clone(),
        user_name: opts.user.name.clone(),
        user_display_name: opts.user.display_name.clone(),
        exclude: opts
            .exclude_credentials
            .iter()
            .flatten()
            .map(|c| c.id.clone())
            .collect(),
    })
}

/// The page a registration runs on and its rp id, refusing what a browser would refuse (an
/// origin or rp id it would not use) and what no key of ours can do (anything but ES256).
pub(crate) fn creation_page(
    options: &CreationChallengeResponse,
    origin: &str,
) -> Result<(Page, String), AuthenticatorError> {
    let opts = &options.public_key;
    let es256_offered = opts
        .pub_key_cred_params
        .iter()
        .any(|p| p.alg == COSE_ALG_ES256 && p.type_ == PUBLIC_KEY_TYPE);
    if !es256_offered {
        return Err(AuthenticatorError::UnsupportedAlgorithm);
    }
    let page = Page::parse(origin)?;
    let rp_id = page.resolve_rp_id(&opts.rp.id)?;
    Ok((page, rp_id))
}

/// Prepares an authentication at `origin`: refuses what a browser would refuse.
///
/// # Errors
/// [`AuthenticatorError::InvalidOrigin`], [`AuthenticatorError::RpIdMismatch`].
pub fn get_request(
    options: &RequestChallengeResponse,
    origin: &str,
) -> Result<GetRequest, AuthenticatorError> {
    let opts = &options.public_key;
    let page = Page::parse(origin)?;
    Ok(GetRequest {
        rp_id: page.resolve_rp_id(&opts.rp_id)?,
        client_data_json: client_data_json(
            &Tamper::default(),
            "webauthn.get",
            &opts.challenge,
            &page.origin,
        )?,
        allow: opts
            .allow_credentials
            .iter()
            .filter(|c| c.type_ == PUBLIC_KEY_TYPE)
            .map(|c| c.id.clone())
            .collect(),
    })
}

/// A key's answer to a [`CreateRequest`]: the parts of its attestation object.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// The attestation statement format (`packed`, `none`, …).
    pub format: String,
    /// The attestation statement, as CBOR.
    pub statement: Value,
    /// The authenticator data, with the attested credential data.
    pub auth_data: Vec<u8>,
}

/// The registration response a browser sends for `attestation`, and the new credential's public
/// key as the circle directory lists it.
///
/// # Errors
/// [`AuthenticatorError::Encoding`] when the authenticator data holds no ES256 P-256 credential.
pub fn registration(
    request: &CreateRequest,
    attestation: Attestation,
) -> Result<(RegisterPublicKeyCredential, tessera_wire::PublicKeyInfo), AuthenticatorError> {
    let info = attested_key(&attestation.auth_data)?;
    let attestation_object = cbor(&Value::Map(vec![
        (Value::Text("fmt".into()), Value::Text(attestation.format)),
        (Value::Text("attStmt".into()), attestation.statement),
        (
            Value::Text("authData".into()),
            Value::Bytes(attestation.auth_data),
        ),
    ]))?;
    let id = info.credential_id.as_slice().to_vec();
    let credential = RegisterPublicKeyCredential {
        id: Base64Url::encode(&id),
        raw_id: id,
        response: AuthenticatorAttestationResponseRaw {
            attestation_object,
            client_data_json: request.client_data_json.clone(),
            transports: Some(vec![AuthenticatorTransport::Usb]),
        },
        type_: PUBLIC_KEY_TYPE.to_owned(),
        extensions: RegistrationExtensionsClientOutputs::default(),
    };
    Ok((credential, info))
}

/// A key's answer to a [`GetRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// The credential that signed.
    pub credential_id: Vec<u8>,
    /// The authenticator data.
    pub auth_data: Vec<u8>,
    /// The ECDSA signature (DER) over the authenticator data and the clientDataJSON's hash.
    pub signature: Vec<u8>,
    /// The user handle of a discoverable credential.
    pub user_handle: Option<Vec<u8>>,
}

/// The authentication response a browser sends for `assertion`.
#[must_use]
pub fn authentication(request: &GetRequest, assertion: Assertion) -> PublicKeyCredential {
    PublicKeyCredential {
        id: Base64Url::encode(&assertion.credential_id),
        raw_id: assertion.credential_id,
        response: AuthenticatorAssertionResponseRaw {
            authenticator_data: assertion.auth_data,
            client_data_json: request.client_data_json.clone(),
            signature: assertion.signature,
            user_handle: assertion.user_handle,
        },
        extensions: AuthenticationExtensionsClientOutputs::default(),
        type_: PUBLIC_KEY_TYPE.to_owned(),
    }
}

/// The credential id and ES256 public key in authenticator data's attested credential data
/// (rpIdHash 32 ‖ flags 1 ‖ counter 4 ‖ aaguid 16 ‖ id length 2 ‖ id ‖ COSE key).
///
/// # Errors
/// [`AuthenticatorError::Encoding`] when it holds none, or not an ES256 P-256 key.
pub fn attested_key(auth_data: &[u8]) -> Result<tessera_wire::PublicKeyInfo, AuthenticatorError> {
    let short = || encoding("authenticator data too short for a credential");
    let rest = auth_data.get(37 + 16..).ok_or_else(short)?;
    let (length, rest) = rest.split_at_checked(2).ok_or_else(short)?;
    let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
    let (id, cose) = rest.split_at_checked(length).ok_or_else(short)?;
    let key: Value = ciborium::from_reader(cose).map_err(encoding)?;
    let field = |label: i64| {
        key.as_map()?
            .iter()
            .find(|(k, _)| k.as_integer() == Some(label.into()))
            .map(|(_, v)| v.clone())
    };
    let int = |label| field(label).and_then(|v| v.as_integer()).map(i128::from);
    if int(1) != Some(2) || int(3) != Some(i128::from(COSE_ALG_ES256)) || int(-1) != Some(1) {
        return Err(encoding("the credential is not an ES256 P-256 key"));
    }
    let coordinate = |label| {
        field(label)
            .and_then(|v| v.into_bytes().ok())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| encoding("the credential's key has no P-256 point"))
    };
    let mut point = vec![0x04];
    point.extend(coordinate(-2)?);
    point.extend(coordinate(-3)?);
    Ok(tessera_wire::PublicKeyInfo {
        credential_id: id.to_vec().into(),
        alg: "ES256".into(),
        public_key: point.into(),
    })
}
