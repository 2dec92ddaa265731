//! The circle directory (ids, roles, passkey public keys, signed revocations) for members;
//! revocation, promotion and recovery invitations for admins.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use tessera_engine::decision::Decision;
use tessera_wire::{
    CreateRecoveryRequest, CreatedInvitation, MemberDecisionRequest, MemberInfo, Role,
};
use uuid::Uuid;

use super::invitations::{issue_by, opaque};
use crate::auth::{AdminCaller, Caller};
use crate::ceremony;
use crate::consent;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::store::MemberRecord;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/members", get(directory))
        .route("/members/{id}", delete(revoke))
        .route("/members/{id}/recovery", post(recovery))
        .route("/members/{id}/promotion", post(promote))
}

async fn directory(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<MemberInfo>>> {
    let circle = caller.member.circle;
    let members = state.store.members_of(circle).await?;
    let keys = state.store.passkeys_of_circle(circle).await?;
    let mut proofs = state.store.proofs_of_circle(circle).await?;
    // Revoked members follow, with their keys and proofs and what revoked them: devices act on
    // that alone, and check what the member signed before against their keys.
    let revoked = state.store.revoked_members_of(circle).await?;
    let listed = members
        .into_iter()
        .map(|member| (member, None))
        .chain(revoked.into_iter().map(|(m, r)| (m, Some(r.into()))));
    let directory = listed
        .map(|(member, revocation)| {
            // A key devices cannot verify (enrolled before only ES256 was admitted) is left
            // out: one odd entry never fails the directory.
            let passkeys = keys
                .iter()
                .filter(|key| key.member == member.id)
                .filter_map(|key| match ceremony::public_key_info(key) {
                    Ok(info) => Some(info),
                    Err(error) => {
                        tracing::warn!(%error, "a key left out of the directory");
                        None
                    }
                })
                .collect::<Vec<_>>();
            Ok(MemberInfo {
                id: member.id,
                role: member.role,
                created_at: member.created_at,
                passkeys,
                proofs: proofs
                    .extract_if(.., |(of, _)| *of == member.id)
                    .map(|(_, proof)| proof.into())
                    .collect(),
                revocation,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(directory))
}

/// Why an admin's decision wrote nothing: they are no longer an admin (revoked meanwhile, by
/// another admin's decision that won), or there is no such member.
async fn refusal(state: &AppState, admin: Uuid) -> ApiResult<ApiError> {
    let still_admin = state
        .store
        .member(admin)
        .await?
        .is_some_and(|m| m.role == Role::Admin);
    Ok(if still_admin {
        ApiError::NotFound("member")
    } else {
        ApiError::AdminRequired
    })
}

fn member_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("member"))
}

/// The unrevoked member `id` of `circle`; not found for anyone else.
async fn member_of_circle(state: &AppState, circle: Uuid, id: &str) -> ApiResult<MemberRecord> {
    state
        .store
        .member(member_id(id)?)
        .await?
        .filter(|m| m.circle == circle)
        .ok_or(ApiError::NotFound("member"))
}

#[tracing::instrument(skip_all)]
async fn revoke(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<MemberDecisionRequest>,
) -> ApiResult<StatusCode> {
    let target = member_id(&id)?;
    if target == admin.member.id {
        return Err(ApiError::CannotRevokeSelf);
    }
    let revocation = opaque(Some(request.statement), "statement")?.unwrap_or_default();
    consent::decision(
        &state,
        &admin.member,
        &revocation,
        (Decision::Revoke, target),
        None,
    )
    .await?;
    let by = (admin.member.circle, admin.member.id);
    if !state
        .store
        .revoke_member(by, target, state.clock.now(), &revocation)
        .await?
    {
        return Err(refusal(&state, admin.member.id).await?);
    }
    state.signals.revoke_member(target);
    tracing::info!("member revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all)]
async fn promote(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<MemberDecisionRequest>,
) -> ApiResult<StatusCode> {
    let target = member_of_circle(&state, admin.member.circle, &id).await?;
    if target.role == Role::Admin {
        return Err(ApiError::Invalid("that member is an admin already".into()));
    }
    let promotion = opaque(Some(request.statement), "statement")?.unwrap_or_default();
    consent::decision(
        &state,
        &admin.member,
        &promotion,
        (Decision::Promote, target.id),
        None,
    )
    .await?;
    if !state
        .store
        .promote_member(
            (admin.member.circle, admin.member.id),
            target.id,
            state.clock.now(),
            &promotion,
        )
        .await?
    {
        return Err(refusal(&state, admin.member.id).await?);
    }
    tracing::info!("member promoted");
    Ok(StatusCode::NO_CONTENT)
}

#[tracing::instrument(skip_all)]
async fn recovery(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateRecoveryRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvitation>)> {
    let target = member_of_circle(&state, admin.member.circle, &id).await?;
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
