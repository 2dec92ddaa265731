//! Sessions: login with a discoverable credential (no user name typed), renewal by a device key
//! its member's hardware key certified (no touch), and logout.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use tessera_engine::renewal::SessionRenewal;
use tessera_wire::{
    AuthenticationOptions, LoginFinishRequest, PublicKeyCredential, RenewalCeremony,
};
use webauthn_rs::prelude::WebauthnError;

use crate::auth::{self, Caller};
use crate::ceremony::{self, CeremonyState};
use crate::client_addr::ClientAddr;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/login/start", post(start))
        .route("/login/finish", post(finish))
        .route("/session/renew/start", post(renew_start))
        .route("/session/renew", post(renew))
        .route("/logout", post(logout))
}

#[tracing::instrument(skip_all)]
async fn start(
    State(state): State<AppState>,
    client: ClientAddr,
) -> ApiResult<Json<AuthenticationOptions>> {
    state.limits.ceremony(client)?;
    let (options, authentication) = state.webauthn.start_discoverable_authentication()?;
    let ceremony =
        ceremony::begin(&state, client, &CeremonyState::Login { authentication }).await?;
    Ok(Json(AuthenticationOptions { ceremony, options }))
}

#[tracing::instrument(skip_all)]
async fn finish(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LoginFinishRequest>,
) -> ApiResult<impl IntoResponse> {
    state.limits.ceremony(client)?;
    let CeremonyState::Login { authentication } = ceremony::take(&state, &request.ceremony).await?
    else {
        return Err(ApiError::CeremonyMismatch);
    };
    refuse_cross_origin(&request.credential)?;
    let (user_handle, credential_id) = state
        .webauthn
        .identify_discoverable_authentication(&request.credential)?;
    let (record, member) = state
        .store
        .login_key(credential_id)
        .await?
        .ok_or(ApiError::UnknownCredential)?;
    if record.member != user_handle {
        return Err(ApiError::UserHandleMismatch);
    }
    let member = member.ok_or(ApiError::MemberRevoked)?;
    let mut passkey = ceremony::stored_passkey(&record)?;
    let result = state
        .webauthn
        .finish_discoverable_authentication_v2(&request.credential, authentication, &passkey)
        .map_err(|error| match error {
            WebauthnError::CredentialPossibleCompromise => ApiError::CounterRegression,
            other => other.into(),
        })?;
    // The new counter must be stored: webauthn-rs judges regressions against what it is given.
    passkey.update_credential(&result);
    let passkey_json =
        serde_json::to_string(&passkey).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (session, granted) = auth::new_session(&state, &member, &record.credential_id);
    state
        .store
        .record_login(
            &record.credential_id,
            (&record.passkey_json, &passkey_json),
            &session,
            state.clock.now(),
        )
        .await?;
    tracing::info!("logged in");
    Ok(auth::granted(&state, &headers, granted))
}

#[tracing::instrument(skip_all)]
async fn renew_start(
    State(state): State<AppState>,
    client: ClientAddr,
) -> ApiResult<Json<RenewalCeremony>> {
    state.limits.ceremony(client)?;
    let ceremony = ceremony::begin(&state, client, &CeremonyState::Renew).await?;
    Ok(Json(RenewalCeremony { ceremony }))
}

/// A new session for a device that proves, with its certified key, that it is still its
/// member's: the key that certified it must still be the member's, and the member unrevoked.
#[tracing::instrument(skip_all)]
async fn renew(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SessionRenewal>,
) -> ApiResult<impl IntoResponse> {
    state.limits.ceremony(client)?;
    let CeremonyState::Renew = ceremony::take(&state, &request.ceremony).await? else {
        return Err(ApiError::CeremonyMismatch);
    };
    let refused = |why: &str| ApiError::DeviceNotCertified(why.to_owned());
    let certificate = &request.certificate;
    let (record, member) = state
        .store
        .login_key(certificate.credential_id.as_slice())
        .await?
        .ok_or_else(|| refused("the key that certified it is not registered here"))?;
    if record.member != certificate.member {
        return Err(refused("the key that certified it is another member's"));
    }
    let member = member.ok_or(ApiError::MemberRevoked)?;
    let rp_id = state.config.rp_id().map_err(ApiError::Internal)?;
    request
        .verify(
            &[ceremony::public_key_info(&record)?],
            &state.config.origin_base(),
            &rp_id,
        )
        .map_err(|e| refused(&e.to_string()))?;
    let (session, granted) = auth::new_session(&state, &member, &record.credential_id);
    if !state.store.renew_session(&session).await? {
        return Err(refused("the key that certified it was revoked meanwhile"));
    }
    tracing::info!("session renewed by a device key");
    Ok(auth::granted(&state, &headers, granted))
}

#[tracing::instrument(skip_all)]
async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<impl IntoResponse> {
    state.store.delete_session(&caller.session_hash).await?;
    state.signals.revoke_session(&caller.session_hash);
    Ok((
        StatusCode::NO_CONTENT,
        [auth::clearing_cookie(&state.config)],
    ))
}

/// Refuses an assertion made in a frame of another site (`crossOrigin: true` in its client
/// data), as registration does: the login page is never framed.
///
/// # Errors
/// [`ApiError::WebauthnRejected`].
fn refuse_cross_origin(credential: &PublicKeyCredential) -> ApiResult<()> {
    let client_data: serde_json::Value =
        serde_json::from_slice(credential.response.client_data_json.as_ref())
            .map_err(|e| ApiError::WebauthnRejected(format!("client data: {e}")))?;
    if client_data["crossOrigin"] == true {
        return Err(ApiError::WebauthnRejected(
            "a cross-origin assertion".into(),
        ));
    }
    Ok(())
}
