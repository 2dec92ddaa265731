//! Enrollment with an invitation: `POST /enroll/start` and `/enroll/finish` (a new member, or a recovered one's new key).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use tessera_wire::{EnrollStartRequest, RegistrationFinishRequest, RegistrationOptions};
use uuid::Uuid;

use crate::auth;
use crate::ceremony::{self, CeremonyState};
use crate::client_addr::ClientAddr;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::secret;
use crate::state::AppState;
use crate::store::{Enrollment, MemberRecord};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/enroll/start", post(start))
        .route("/enroll/finish", post(finish))
}

#[tracing::instrument(skip_all)]
async fn start(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(request): ApiJson<EnrollStartRequest>,
) -> ApiResult<Json<RegistrationOptions>> {
    state.limits.ceremony(client)?;
    let label = ceremony::authenticator_label(request.label.as_deref())?;
    if !secret::looks_like_token(&request.token) {
        return Err(ApiError::InvitationUnusable);
    }
    let invitation_hash = secret::digest(&request.token);
    let invitation = state
        .store
        .usable_invitation(&invitation_hash, state.clock.now())
        .await?
        .ok_or(ApiError::InvitationUnusable)?;

    let (member, role, new_member) = match invitation.member {
        Some(existing) => {
            let member = state
                .store
                .member(existing)
                .await?
                .ok_or(ApiError::InvitationUnusable)?;
            // A recovery enrolls a key for its own member, whatever id the device asks for.
            (member.id, member.role, false)
        }
        None => match request.member {
            Some(chosen) if state.store.member(chosen).await?.is_some() => {
                return Err(ApiError::Invalid("that member id is taken".into()));
            }
            Some(chosen) => (chosen, invitation.role, true),
            None => (Uuid::new_v4(), invitation.role, true),
        },
    };
    let (options, registration) = ceremony::start_registration(&state, member, &label).await?;
    let ceremony = ceremony::begin(
        &state,
        client,
        &CeremonyState::Enroll {
            invitation_hash,
            member,
            circle: invitation.circle,
            role,
            new_member,
            registration,
        },
    )
    .await?;
    Ok(Json(RegistrationOptions {
        ceremony,
        statement: invitation.statement.map(Into::into),
        options,
    }))
}

#[tracing::instrument(skip_all)]
async fn finish(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RegistrationFinishRequest>,
) -> ApiResult<impl IntoResponse> {
    state.limits.ceremony(client)?;
    let proof = super::invitations::opaque(request.proof, "proof")?;
    let CeremonyState::Enroll {
        invitation_hash,
        member,
        circle,
        role,
        new_member,
        registration,
    } = ceremony::take(&state, &request.ceremony).await?
    else {
        return Err(ApiError::CeremonyMismatch);
    };
    let passkey = ceremony::finish_registration(&state, &request.credential, &registration)?;
    let passkey = ceremony::passkey_record(&state, member, &passkey, &request.credential)?;
    let now = state.clock.now();
    let member = MemberRecord {
        id: member,
        circle,
        role,
        created_at: now,
    };
    let (session, granted) = auth::new_session(&state, &member, &passkey.credential_id);
    state
        .store
        .enroll(
            &Enrollment {
                invitation_hash,
                member,
                new_member,
                passkey,
                proof,
                session,
            },
            now,
        )
        .await?;
    tracing::info!(new_member, "key enrolled");
    Ok(auth::granted(&state, &headers, granted))
}
