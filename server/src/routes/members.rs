//! The circle directory (ids, roles, passkey public keys) for members; revocation and recovery invitations for admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tessera_wire::{CreateRecoveryRequest, CreatedInvitation, MemberInfo};
use uuid::Uuid;

use super::invitations::issue_by;
use crate::auth::{AdminCaller, Caller};
use crate::ceremony;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/members", get(directory))
        .route("/members/{id}", delete(revoke))
        .route("/members/{id}/recovery", post(recovery))
}

async fn directory(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<MemberInfo>>> {
    let circle = caller.member.circle;
    let members = state.store.members_of(circle).await?;
    let keys = state.store.passkeys_of_circle(circle).await?;
    let mut proofs = state.store.proofs_of_circle(circle).await?;
    let directory = members
        .into_iter()
        .map(|member| {
            let passkeys = keys
                .iter()
                .filter(|key| key.member == member.id)
                .map(ceremony::public_key_info)
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(MemberInfo {
                id: member.id,
                role: member.role,
                created_at: member.created_at,
                passkeys,
                proofs: proofs
                    .extract_if(.., |(of, _)| *of == member.id)
                    .map(|(_, proof)| proof.into())
                    .collect(),
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(directory))
}

fn member_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("member"))
}

#[tracing::instrument(skip_all)]
async fn revoke(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let target = member_id(&id)?;
    if target == admin.member.id {
        return Err(ApiError::CannotRevokeSelf);
    }
    if !state
        .store
        .revoke_member(admin.member.circle, target, state.clock.now())
        .await?
    {
        return Err(ApiError::NotFound("member"));
    }
    state.signals.revoke_member(target);
    tracing::info!("member revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all)]
async fn recovery(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateRecoveryRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvitation>)> {
    let target = state
        .store
        .member(member_id(&id)?)
        .await?
        .filter(|m| m.circle == admin.member.circle)
        .ok_or(ApiError::NotFound("member"))?;
    let created = issue_by(
        &state,
        &admin.member,
        target.role,
        Some(target.id),
        (request.ttl_secs, request.statement),
    )
    .await?;
    tracing::info!("recovery invitation issued");
    Ok((StatusCode::CREATED, Json(created)))
}
