//! Short-lived TURN credentials for members' devices (`GET /api/v1/turn`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tessera_wire::TurnCredentials;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::turn;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/turn", get(credentials))
}

/// Any member with a session may relay through the circle's TURN server; the credentials carry
/// no member id, so the TURN server's logs cannot name who relayed.
async fn credentials(
    State(state): State<AppState>,
    _caller: Caller,
) -> ApiResult<Json<TurnCredentials>> {
    let config = &state.config;
    let secret = config
        .turn_secret
        .as_ref()
        .ok_or(ApiError::TurnNotConfigured)?;
    Ok(Json(turn::credentials(
        secret,
        &config.ice_urls,
        state.clock.now(),
        config.turn_ttl_secs,
    )))
}
