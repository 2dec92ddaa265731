//! `GET /api/v1/ws`: the signalling WebSocket of a logged-in device; and `GET /metrics`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_TYPE, ORIGIN};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::signal::{JoinError, connection};
use crate::state::AppState;

/// The socket read buffer: small, so that an idle connection costs little memory.
const READ_BUFFER_BYTES: usize = 1024;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

/// The Prometheus metrics route (outside `/api/v1`).
pub(super) fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

#[tracing::instrument(skip_all)]
async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // A browser page of another site must not open a socket with a member's cookie.
    if let Some(origin) = headers.get(ORIGIN)
        && origin.as_bytes() != state.config.origin_base().as_bytes()
    {
        state.metrics.refused("origin");
        return Err(ApiError::OriginRefused);
    }
    let device = match query.get("device") {
        None => Uuid::new_v4(),
        Some(text) => {
            Uuid::parse_str(text).map_err(|_| ApiError::Invalid("device must be a UUID".into()))?
        }
    };
    let upgrade =
        upgrade.map_err(|_| ApiError::Invalid("this endpoint needs a WebSocket upgrade".into()))?;
    let limits = &state.config;
    state
        .signals
        .may_join(caller.member.id, device, limits.ws_connections_per_member)
        .map_err(|error| match error {
            JoinError::DeviceTaken => {
                state.metrics.refused("device_taken");
                ApiError::DeviceTaken
            }
            _ => {
                state.metrics.refused("too_many_connections");
                ApiError::TooManyConnections
            }
        })?;
    let hard_limit = limits.ws_max_frame_bytes.saturating_mul(4);
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| connection::serve(socket, state, caller, device)))
}
