//! Invitations, for admins: issue (shown once as link and QR code), list pending, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use tessera_wire::{
    Base64Url, CreateInvitationRequest, CreatedInvitation, InvitationInfo, InvitationKind, Role,
};
use uuid::Uuid;

use crate::auth::AdminCaller;
use crate::consent;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::invitation;
use crate::state::AppState;
use crate::store::{InvitationRecord, MemberRecord};

/// Shortest and longest lifetime of an invitation.
const TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=30 * 24 * 3600;

/// The largest signed statement or proof the server keeps for devices (a signed statement is
/// about 1.5 KiB).
pub(super) const MAX_OPAQUE_BYTES: usize = 8 * 1024;

/// Checks an opaque statement or proof a device hands over for others: the server keeps it as is,
/// up to [`MAX_OPAQUE_BYTES`].
///
/// # Errors
/// [`ApiError::Invalid`] when it is empty or larger.
pub(super) fn opaque(blob: Option<Base64Url>, what: &str) -> ApiResult<Option<Vec<u8>>> {
    match blob {
        Some(blob) if blob.as_slice().is_empty() || blob.as_slice().len() > MAX_OPAQUE_BYTES => {
            Err(ApiError::Invalid(format!(
                "{what} must hold between 1 and {MAX_OPAQUE_BYTES} bytes"
            )))
        }
        blob => Ok(blob.map(|b| b.as_slice().to_vec())),
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/invitations", get(list).post(create))
        .route("/invitations/{id}", delete(revoke))
}

/// Checks an invitation lifetime requested by an admin.
///
/// # Errors
/// [`ApiError::Invalid`] outside 60 s – 30 days.
fn checked_ttl(ttl_secs: u64) -> ApiResult<i64> {
    if !TTL_RANGE.contains(&ttl_secs) {
        return Err(ApiError::Invalid(
            "ttl_secs must be between 60 (one minute) and 2592000 (30 days)".into(),
        ));
    }
    i64::try_from(ttl_secs).map_err(|_| ApiError::Invalid("ttl_secs is too large".into()))
}

/// Issues an invitation in the admin's circle, counted against their rate limit: for a newcomer
/// with `role`, or (with `member`) a recovery for an existing member; `statement` is the
/// invitation the admin's key signed for it.
///
/// # Errors
/// An out-of-range lifetime, the rate limit, a statement missing or not the admin's for this
/// invitation, or a store failure.
pub(super) async fn issue_by(
    state: &AppState,
    admin: &MemberRecord,
    role: Role,
    member: Option<Uuid>,
    (ttl_secs, statement): (u64, Option<Base64Url>),
) -> ApiResult<CreatedInvitation> {
    let ttl = checked_ttl(ttl_secs)?;
    let statement = opaque(statement, "statement")?.ok_or_else(|| {
        ApiError::ConsentRefused("an invitation is signed by the issuing admin's key".into())
    })?;
    state.limits.invitation(admin.id)?;
    let now = state.clock.now();
    consent::invitation(state, admin, &statement, (role, member, now + ttl)).await?;
    let record = InvitationRecord {
        id: Uuid::new_v4(),
        circle: admin.circle,
        role,
        member,
        created_by: Some(admin.id),
        created_at: now,
        expires_at: now + ttl,
        statement: Some(statement),
    };
    Ok(invitation::issue(state.store.as_ref(), &state.config.origin_base(), &record).await?)
}

#[tracing::instrument(skip_all)]
async fn create(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    ApiJson(request): ApiJson<CreateInvitationRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvitation>)> {
    let created = issue_by(
        &state,
        &admin.member,
        request.role,
        None,
        (request.ttl_secs, request.statement),
    )
    .await?;
    tracing::info!(role = request.role.as_str(), "invitation issued");
    Ok((StatusCode::CREATED, Json(created)))
}

/// An invitation as admins list it.
fn invitation_info(record: InvitationRecord) -> InvitationInfo {
    InvitationInfo {
        id: record.id,
        kind: if record.member.is_some() {
            InvitationKind::Recovery
        } else {
            InvitationKind::Newcomer
        },
        role: record.role,
        member: record.member,
        created_by: record.created_by,
        created_at: record.created_at,
        expires_at: record.expires_at,
    }
}

async fn list(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
) -> ApiResult<Json<Vec<InvitationInfo>>> {
    let pending = state
        .store
        .pending_invitations(admin.member.circle, state.clock.now())
        .await?;
    Ok(Json(pending.into_iter().map(invitation_info).collect()))
}

#[tracing::instrument(skip_all)]
async fn revoke(
    State(state): State<AppState>,
    AdminCaller(admin): AdminCaller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("invitation"))?;
    if !state
        .store
        .revoke_invitation(admin.member.circle, id, state.clock.now())
        .await?
    {
        return Err(ApiError::NotFound("invitation"));
    }
    tracing::info!("invitation revoked");
    Ok(StatusCode::NO_CONTENT)
}
