//! The caller's consent, in their hardware key's signature: a sensitive request (a key added or
//! removed, an invitation issued, a member revoked or promoted) carries the statement one of the
//! caller's keys signed with the user verified, for this very request and lately. It is checked
//! here before anything changes, so that a stolen session alone can do none of them.

use tessera_engine::decision::{Decision, SignedDecision};
use tessera_engine::invitation::SignedInvitation;
use tessera_engine::trust::KeyProof;
use tessera_wire::{Base64Url, PublicKeyInfo, Role};
use uuid::Uuid;

use crate::ceremony;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::MemberRecord;

/// How far a statement's time may be from the server's clock (clocks drift; a touch takes time).
pub const FRESHNESS_SECS: i64 = 600;

fn refused(why: impl std::fmt::Display) -> ApiError {
    ApiError::ConsentRefused(why.to_string())
}

/// The caller's keys, as their statements are checked against.
async fn keys_of(state: &AppState, member: Uuid) -> ApiResult<Vec<PublicKeyInfo>> {
    state
        .store
        .passkeys_of(member)
        .await?
        .iter()
        .map(ceremony::public_key_info)
        .collect()
}

fn origin_rp(state: &AppState) -> ApiResult<(String, String)> {
    let rp_id = state.config.rp_id().map_err(ApiError::Internal)?;
    Ok((state.config.origin_base(), rp_id))
}

fn fresh(state: &AppState, at: i64, what: &str) -> ApiResult<()> {
    if (state.clock.now() - at).abs() > FRESHNESS_SECS {
        return Err(refused(format!(
            "the {what} was signed at another time than now (check this device's clock)"
        )));
    }
    Ok(())
}

/// Checks that `blob` is the caller's signed `decision` about `target` in their circle (naming
/// the key `key` for a key's revocation), signed lately by one of their keys with the user
/// verified.
///
/// # Errors
/// [`ApiError::ConsentRefused`] saying which check failed.
pub async fn decision(
    state: &AppState,
    caller: &MemberRecord,
    blob: &[u8],
    (decision, target): (Decision, Uuid),
    key: Option<&[u8]>,
) -> ApiResult<()> {
    let signed = SignedDecision::from_blob(&Base64Url::from(blob), decision)
        .map_err(|_| refused("the statement is not a signed decision of this kind"))?;
    let statement = &signed.statement;
    if statement.issuer != caller.id {
        return Err(refused("the statement names another issuer than you"));
    }
    if let Some(key) = key
        && statement
            .key
            .as_ref()
            .is_none_or(|named| named.credential_id.as_slice() != key)
    {
        return Err(refused("the statement names another key"));
    }
    fresh(state, statement.issued_at, "statement")?;
    let (origin, rp_id) = origin_rp(state)?;
    signed
        .verify(
            (caller.circle, target),
            &keys_of(state, caller.id).await?,
            &origin,
            &rp_id,
        )
        .map_err(refused)
}

/// Checks that `blob` is an invitation the caller signed lately with one of their keys, the user
/// verified, for their circle, granting `role` (or recovering `recovers`) and expiring at
/// `expires_at`.
///
/// # Errors
/// [`ApiError::ConsentRefused`] saying which check failed.
pub async fn invitation(
    state: &AppState,
    caller: &MemberRecord,
    blob: &[u8],
    (role, recovers, expires_at): (Role, Option<Uuid>, i64),
) -> ApiResult<()> {
    let signed = SignedInvitation::from_blob(&Base64Url::from(blob)).map_err(refused)?;
    let statement = &signed.statement;
    if statement.circle != caller.circle || statement.issuer != caller.id {
        return Err(refused(
            "the invitation is for another circle or another issuer",
        ));
    }
    if statement.recovers != recovers || (recovers.is_none() && statement.role != role) {
        return Err(refused("the invitation grants something else than asked"));
    }
    // Signed now for the lifetime asked: its expiry is within reach of now plus that lifetime.
    if (statement.expires_at - expires_at).abs() > FRESHNESS_SECS {
        return Err(refused(
            "the invitation expires at another time than asked (check this device's clock)",
        ));
    }
    let (origin, rp_id) = origin_rp(state)?;
    signed
        .verify(
            &keys_of(state, caller.id).await?,
            &origin,
            &rp_id,
            state.clock.now(),
        )
        .map_err(refused)
}

/// Checks that `blob` is the endorsement of `new_key` by one of the caller's keys, the user
/// verified (it names the key just made, so it is as fresh as the key).
///
/// # Errors
/// [`ApiError::ConsentRefused`] saying which check failed.
pub async fn endorsement(
    state: &AppState,
    caller: &MemberRecord,
    blob: &[u8],
    new_key: &PublicKeyInfo,
) -> ApiResult<()> {
    let Ok(KeyProof::Endorsement(endorsement)) = KeyProof::from_blob(&Base64Url::from(blob)) else {
        return Err(refused(
            "the proof is not an endorsement by one of your keys",
        ));
    };
    if endorsement.member != caller.id || endorsement.passkey != *new_key {
        return Err(refused("the endorsement is for another member or key"));
    }
    let (origin, rp_id) = origin_rp(state)?;
    endorsement
        .verify(&keys_of(state, caller.id).await?, &origin, &rp_id)
        .map(|_| ())
        .map_err(refused)
}
