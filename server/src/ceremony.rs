//! WebAuthn ceremonies: their server-side state (single use, expiring in minutes), and turning a verified key into what the store keeps.

use serde::{Deserialize, Serialize};
use tessera_wire::{PasskeyInfo, PublicKeyInfo, RegisterPublicKeyCredential, Role};
use uuid::Uuid;
use webauthn_rs::prelude::{
    AttestedPasskeyRegistration, COSEAlgorithm, COSEKeyType, CreationChallengeResponse,
    CredentialID, DiscoverableAuthentication, ECDSACurve, Passkey, PasskeyRegistration,
};

use crate::client_addr::ClientAddr;
use crate::config::AttestationPolicy;
use crate::error::{ApiError, ApiResult};
use crate::secret::{self, Digest};
use crate::state::AppState;
use crate::store::PasskeyRecord;

/// What a ceremony was started for, with the webauthn-rs state that finishes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CeremonyState {
    /// Enrolling a key with an invitation.
    Enroll {
        /// The invitation to consume.
        invitation_hash: Digest,
        /// The member being enrolled (new, or existing for a recovery).
        member: Uuid,
        /// The circle.
        circle: Uuid,
        /// The role.
        role: Role,
        /// Whether the member is new.
        new_member: bool,
        /// The registration state.
        registration: Registration,
    },
    /// A logged-in member adding a key.
    AddKey {
        /// The member.
        member: Uuid,
        /// The registration state.
        registration: Registration,
    },
    /// A discoverable login.
    Login {
        /// The authentication state.
        authentication: DiscoverableAuthentication,
    },
    /// A device renewing its session with its key: the ceremony id is what it signs.
    Renew,
}

/// The webauthn-rs state of a key's registration: any model, or (with an AAGUID list) only a
/// model whose attestation verifies up to a vendor's root.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Registration {
    /// Any authenticator that verifies its user.
    Any {
        /// The state.
        state: PasskeyRegistration,
    },
    /// Only the admitted models, proven by their attestation.
    Attested {
        /// The state (it holds the roots and models admitted).
        state: AttestedPasskeyRegistration,
    },
}

/// Finishes a key's registration: the key, once webauthn-rs has verified the answer (and, for an
/// attested registration, the attestation up to an admitted root).
///
/// # Errors
/// [`ApiError::AttestationRefused`] for an attestation that does not prove an admitted model;
/// [`ApiError::WebauthnRejected`] for any other refusal.
pub fn finish_registration(
    state: &AppState,
    credential: &RegisterPublicKeyCredential,
    registration: &Registration,
) -> ApiResult<Passkey> {
    match registration {
        Registration::Any { state: pending } => Ok(state
            .webauthn
            .finish_passkey_registration(credential, pending)?),
        Registration::Attested { state: pending } => state
            .webauthn
            .finish_attested_passkey_registration(credential, pending)
            .map(Passkey::from)
            .map_err(crate::attestation::refusal),
    }
}

/// Stores a ceremony's state, counted against the share of the client's address range, and
/// returns its fresh id.
///
/// # Errors
/// [`ApiError::RateLimited`] when the client's range holds its share of pending ceremonies;
/// [`ApiError::Busy`] when every range does; when the store fails.
pub async fn begin(
    state: &AppState,
    client: ClientAddr,
    ceremony: &CeremonyState,
) -> ApiResult<String> {
    let id = secret::new_token();
    let json = serde_json::to_string(ceremony).map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires_at = state.clock.now() + state.config.ceremony_ttl_secs;
    state
        .store
        .put_ceremony(&secret::digest(&id), &json, expires_at, client.range())
        .await?;
    Ok(id)
}

/// Takes a ceremony's state: it can be taken once, before it expires.
///
/// # Errors
/// [`ApiError::CeremonyUnknown`] when the id is malformed, unknown, used or expired.
pub async fn take(state: &AppState, id: &str) -> ApiResult<CeremonyState> {
    if !secret::looks_like_token(id) {
        return Err(ApiError::CeremonyUnknown);
    }
    let json = state
        .store
        .take_ceremony(&secret::digest(id), state.clock.now())
        .await?
        .ok_or(ApiError::CeremonyUnknown)?;
    serde_json::from_str(&json).map_err(|e| ApiError::Internal(e.to_string()))
}

/// The label shown by the authenticator: trimmed, at most 64 characters, never stored.
///
/// # Errors
/// [`ApiError::Invalid`] when it is too long or holds control characters.
pub fn authenticator_label(label: Option<&str>) -> ApiResult<String> {
    let label = label.map(str::trim).filter(|l| !l.is_empty());
    match label {
        None => Ok("Tessera member".to_owned()),
        Some(l) if l.chars().count() > 64 => Err(ApiError::Invalid(
            "the label may have at most 64 characters".into(),
        )),
        Some(l) if l.chars().any(char::is_control) => Err(ApiError::Invalid(
            "the label may not contain control characters".into(),
        )),
        Some(l) => Ok(l.to_owned()),
    }
}

/// The user name given to webauthn-rs, so that its ceremony state (which is stored) never holds the label.
const STATE_USER_NAME: &str = "tessera";

/// Shows the member's label in the authenticator's prompts: it travels in the options only, never in the stored state.
fn show_label(options: &mut CreationChallengeResponse, label: &str) {
    options.public_key.user.name = label.to_owned();
    options.public_key.user.display_name = label.to_owned();
}

/// Asks the browser for a discoverable credential on a roaming (cross-platform) key with user verification.
fn require_discoverable_roaming_key(options: &mut CreationChallengeResponse) {
    use webauthn_rs_proto::{
        AuthenticatorAttachment, ResidentKeyRequirement, UserVerificationPolicy,
    };
    let selection = options
        .public_key
        .authenticator_selection
        .get_or_insert_with(Default::default);
    selection.resident_key = Some(ResidentKeyRequirement::Required);
    selection.require_resident_key = true;
    selection.user_verification = UserVerificationPolicy::Required;
    selection.authenticator_attachment = Some(AuthenticatorAttachment::CrossPlatform);
}

/// The AAGUID in a registration's authenticator data, if it reports one (not all zero).
fn reported_aaguid(credential: &RegisterPublicKeyCredential) -> Option<Uuid> {
    let object: ciborium::Value =
        ciborium::from_reader(&credential.response.attestation_object[..]).ok()?;
    let auth_data = object
        .as_map()?
        .iter()
        .find(|(key, _)| key.as_text() == Some("authData"))?
        .1
        .as_bytes()?;
    // rpIdHash (32) ‖ flags (1) ‖ counter (4) ‖ AAGUID (16) when attested credential data is present.
    let has_credential_data = auth_data.get(32).is_some_and(|flags| flags & 0x40 != 0);
    let aaguid: [u8; 16] = auth_data.get(37..53)?.try_into().ok()?;
    (has_credential_data && aaguid != [0; 16]).then(|| Uuid::from_bytes(aaguid))
}

/// Checks the attestation policy and builds the row for a newly verified key.
///
/// # Errors
/// [`ApiError::AttestationRefused`] when the key's model is not admitted.
pub fn passkey_record(
    state: &AppState,
    member: Uuid,
    passkey: &Passkey,
    credential: &RegisterPublicKeyCredential,
) -> ApiResult<PasskeyRecord> {
    if !devices_verify(passkey) {
        return Err(ApiError::UnsupportedKey);
    }
    let aaguid = reported_aaguid(credential);
    if let AttestationPolicy::Aaguids(allowed) = &state.config.attestation
        && !aaguid.is_some_and(|a| allowed.contains(&a))
    {
        return Err(ApiError::AttestationRefused);
    }
    Ok(PasskeyRecord {
        credential_id: passkey.cred_id().to_vec(),
        member,
        passkey_json: serde_json::to_string(passkey)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        aaguid,
        created_at: state.clock.now(),
        last_used_at: None,
    })
}

/// Whether every device can check this key's signatures: ES256 on P-256, the one algorithm of
/// device certificates and signed statements (`client/engine/src/signed.rs`). An RS256 or ES384
/// key would enroll and then certify nothing, and an RSA key has no place in the directory.
fn devices_verify(passkey: &Passkey) -> bool {
    let key = passkey.get_public_key();
    key.type_ == COSEAlgorithm::ES256
        && matches!(&key.key, COSEKeyType::EC_EC2(ec) if ec.curve == ECDSACurve::SECP256R1)
}

/// Starts registering a key for `member` (new or existing): the options for the browser — a
/// discoverable roaming key with user verification, the member's keys excluded, the label shown by
/// the authenticator — and the state that finishes it (which never holds the label).
///
/// # Errors
/// When the store or webauthn-rs fails.
pub async fn start_registration(
    state: &AppState,
    member: Uuid,
    label: &str,
) -> ApiResult<(CreationChallengeResponse, Registration)> {
    let exclude = registered_ids(state, member).await?;
    let (mut options, registration) = match &state.attestation {
        None => {
            let (options, pending) = state.webauthn.start_passkey_registration(
                member,
                STATE_USER_NAME,
                STATE_USER_NAME,
                Some(exclude),
            )?;
            (options, Registration::Any { state: pending })
        }
        Some(admitted) => {
            let (options, pending) = state.webauthn.start_attested_passkey_registration(
                member,
                STATE_USER_NAME,
                STATE_USER_NAME,
                Some(exclude),
                admitted.as_ref().clone(),
                Some(webauthn_rs_proto::AuthenticatorAttachment::CrossPlatform),
            )?;
            (options, Registration::Attested { state: pending })
        }
    };
    show_label(&mut options, label);
    require_discoverable_roaming_key(&mut options);
    // Only what devices verify is asked for (checked again at the end: `devices_verify`).
    options
        .public_key
        .pub_key_cred_params
        .retain(|p| p.alg == COSEAlgorithm::ES256 as i64);
    Ok((options, registration))
}

/// The credential ids a member already has, which a new registration must exclude.
///
/// # Errors
/// When the store fails.
async fn registered_ids(state: &AppState, member: Uuid) -> ApiResult<Vec<CredentialID>> {
    Ok(state
        .store
        .passkeys_of(member)
        .await?
        .into_iter()
        .map(|key| key.credential_id)
        .collect())
}

/// Reads back a stored passkey.
///
/// # Errors
/// [`ApiError::Internal`] when the row does not parse.
pub fn stored_passkey(record: &PasskeyRecord) -> ApiResult<Passkey> {
    serde_json::from_str(&record.passkey_json)
        .map_err(|e| ApiError::Internal(format!("stored passkey does not parse: {e}")))
}

/// The public half of a stored passkey, as peers need it.
///
/// # Errors
/// [`ApiError::Internal`] when the row does not parse or holds an unsupported key type.
pub fn public_key_info(record: &PasskeyRecord) -> ApiResult<PublicKeyInfo> {
    let passkey = stored_passkey(record)?;
    let (alg, bytes) = match &passkey.get_public_key().key {
        COSEKeyType::EC_EC2(ec) if ec.curve == ECDSACurve::SECP256R1 => {
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(ec.x.as_ref());
            point.extend_from_slice(ec.y.as_ref());
            ("ES256", point)
        }
        COSEKeyType::EC_OKP(okp) => ("EdDSA", okp.x.to_vec()),
        COSEKeyType::EC_EC2(_) | COSEKeyType::RSA(_) => {
            return Err(ApiError::Internal("a key devices cannot verify".into()));
        }
    };
    Ok(PublicKeyInfo {
        credential_id: record.credential_id.clone().into(),
        alg: alg.to_owned(),
        public_key: bytes.into(),
    })
}

/// One of a member's keys, as they see it in their account.
///
/// # Errors
/// [`ApiError::Internal`] when the row does not parse.
pub fn passkey_info(record: &PasskeyRecord) -> ApiResult<PasskeyInfo> {
    Ok(PasskeyInfo {
        id: record.credential_id.clone().into(),
        aaguid: record.aaguid,
        created_at: record.created_at,
        last_used_at: record.last_used_at,
        public_key: public_key_info(record)?,
    })
}
