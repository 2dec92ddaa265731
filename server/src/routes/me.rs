//! The member's own account: who they are, their keys (list, add, revoke any but the last, with
//! the revocation one of the member's keys signed).

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tessera_engine::decision::Decision;
use tessera_wire::{
    AddPasskeyStartRequest, Base64Url, Me, MemberDecisionRequest, PasskeyInfo,
    RegistrationFinishRequest, RegistrationOptions,
};

use crate::auth::Caller;
use crate::ceremony::{self, CeremonyState};
use crate::client_addr::ClientAddr;
use crate::consent;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/me", get(me))
        .route("/me/passkeys", get(passkeys))
        .route("/me/passkeys/start", post(add_start))
        .route("/me/passkeys/finish", post(add_finish))
        .route(
            "/me/passkeys/{id}",
            delete(remove).layer(DefaultBodyLimit::max(MAX_KEY_REVOCATION_BYTES * 2)),
        )
}

async fn me(caller: Caller) -> Json<Me> {
    let member = caller.member;
    Json(Me {
        member: member.id,
        circle: member.circle,
        role: member.role,
        created_at: member.created_at,
    })
}

async fn passkeys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<PasskeyInfo>>> {
    let records = state.store.passkeys_of(caller.member.id).await?;
    let keys = records
        .iter()
        .map(ceremony::passkey_info)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(keys))
}

#[tracing::instrument(skip_all)]
async fn add_start(
    State(state): State<AppState>,
    client: ClientAddr,
    caller: Caller,
    ApiJson(request): ApiJson<AddPasskeyStartRequest>,
) -> ApiResult<Json<RegistrationOptions>> {
    state.limits.ceremony(client)?;
    let label = ceremony::authenticator_label(request.label.as_deref())?;
    let member = caller.member.id;
    let (options, registration) = ceremony::start_registration(&state, member, &label).await?;
    let ceremony = ceremony::begin(
        &state,
        client,
        &CeremonyState::AddKey {
            member,
            registration,
        },
    )
    .await?;
    Ok(Json(RegistrationOptions {
        ceremony,
        statement: None,
        options,
    }))
}

#[tracing::instrument(skip_all)]
async fn add_finish(
    State(state): State<AppState>,
    client: ClientAddr,
    caller: Caller,
    ApiJson(request): ApiJson<RegistrationFinishRequest>,
) -> ApiResult<(StatusCode, Json<PasskeyInfo>)> {
    state.limits.ceremony(client)?;
    let proof = super::invitations::opaque(request.proof, "proof")?;
    let CeremonyState::AddKey {
        member,
        registration,
    } = ceremony::take(&state, &request.ceremony).await?
    else {
        return Err(ApiError::CeremonyMismatch);
    };
    if member != caller.member.id {
        return Err(ApiError::CeremonyMismatch);
    }
    let passkey = ceremony::finish_registration(&state, &request.credential, &registration)?;
    let record = ceremony::passkey_record(&state, member, &passkey, &request.credential)?;
    let proof = proof.ok_or_else(|| {
        ApiError::ConsentRefused("a new key is endorsed by one of your keys".into())
    })?;
    let new_key = ceremony::public_key_info(&record)?;
    consent::endorsement(&state, &caller.member, &proof, &new_key).await?;
    state.store.add_passkey(&record, Some(&proof)).await?;
    tracing::info!("key added");
    Ok((StatusCode::CREATED, Json(ceremony::passkey_info(&record)?)))
}

/// The largest key revocation kept: it lists a digest (32 bytes) of each proof the key signed
/// that still holds, some 16,000 for a founder's key.
pub const MAX_KEY_REVOCATION_BYTES: usize = 512 * 1024;

/// The key revocation in `statement`, opaque, within its bounds.
fn key_revocation(statement: &Base64Url) -> ApiResult<Vec<u8>> {
    let bytes = statement.as_slice();
    if bytes.is_empty() || bytes.len() > MAX_KEY_REVOCATION_BYTES {
        return Err(ApiError::Invalid(format!(
            "statement must hold between 1 and {MAX_KEY_REVOCATION_BYTES} bytes"
        )));
    }
    Ok(bytes.to_vec())
}

#[tracing::instrument(skip_all)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<MemberDecisionRequest>,
) -> ApiResult<StatusCode> {
    let credential_id = Base64Url::decode(&id).map_err(|_| ApiError::NotFound("key"))?;
    let revocation = key_revocation(&request.statement)?;
    // Another member's key, or none, is not found before any signature is looked at.
    let owned = state.store.passkeys_of(caller.member.id).await?;
    if !owned.iter().any(|key| key.credential_id == credential_id) {
        return Err(ApiError::NotFound("key"));
    }
    consent::decision(
        &state,
        &caller.member,
        &revocation,
        (Decision::RevokeKey, caller.member.id),
        Some(&credential_id),
    )
    .await?;
    let ended = state
        .store
        .revoke_passkey(
            caller.member.id,
            &credential_id,
            &revocation,
            state.clock.now(),
        )
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    // The sessions the key opened end, and their sockets close.
    for session in &ended {
        state.signals.revoke_session(session);
    }
    tracing::info!("key revoked");
    Ok(StatusCode::NO_CONTENT)
}
