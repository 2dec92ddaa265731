//! `GET /api/v1/ws`: the signalling WebSocket of a logged-in device; and `GET /metrics`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{
    CONNECTION, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::signal::io::burst::BurstIo;
use crate::signal::{JoinError, connection};
use crate::state::AppState;

/// The socket read buffer: small, so that an idle connection costs little memory (a longer frame
/// takes several reads).
const READ_BUFFER_BYTES: usize = 256;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

/// The Prometheus metrics route (outside `/api/v1`).
pub(super) fn metrics_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// The counters, for a scraper that reaches the server directly: a request a reverse proxy
/// forwarded (it names a client in `X-Forwarded-For` or `Forwarded`) comes from the internet and
/// is told there is nothing here, whatever the proxy's own configuration.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded") {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Whether `name` lists `token` (comma-separated, any case), as `Connection: keep-alive, Upgrade` does.
fn lists(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` answer to a well-formed WebSocket upgrade request (RFC 6455 4.2.1),
/// or `None`.
fn accept_key(headers: &HeaderMap) -> Option<String> {
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    (lists(headers, CONNECTION, "upgrade")
        && lists(headers, UPGRADE, "websocket")
        && headers
            .get(SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            == Some(b"13"))
    .then(|| derive_accept_key(key.as_bytes()))
}

/// Upgrades the request itself rather than through axum's `WebSocketUpgrade`: the connection needs
/// tungstenite's own messages to send long frames in fragments (see `connection`).
#[tracing::instrument(skip_all)]
async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    mut request: Request,
) -> ApiResult<Response> {
    // A browser page of another site must not open a socket with a member's cookie.
    if let Some(origin) = headers.get(ORIGIN)
        && origin.as_bytes() != state.config.origin_base().as_bytes()
    {
        state.metrics.refused("origin");
        return Err(ApiError::OriginRefused);
    }
    let accept = accept_key(&headers)
        .ok_or_else(|| ApiError::Invalid("this endpoint needs a WebSocket upgrade".into()))?;
    let device = match query.get("device") {
        // A fresh id for this connection, bound like any other: peers see it, and none of them
        // may take it over.
        None => Uuid::new_v4(),
        Some(text) => {
            Uuid::parse_str(text).map_err(|_| ApiError::Invalid("device must be a UUID".into()))?
        }
    };
    // Another member's id is refused whether that device is online or not.
    let (circle, member) = (caller.member.circle, caller.member.id);
    if !state
        .store
        .claim_device((circle, member), device, state.clock.now())
        .await?
    {
        state.metrics.refused("device_taken");
        return Err(ApiError::DeviceTaken);
    }
    let limits = &state.config;
    state
        .signals
        .may_join(
            (caller.member.circle, caller.member.id),
            device,
            limits.ws_connections_per_member,
        )
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
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let on_upgrade = hyper::upgrade::on(&mut request);
    let connections = state.connections.clone();
    connections.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    BurstIo::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                connection::serve(socket, state, caller, device).await;
            }
            Err(error) => tracing::debug!(%error, "the WebSocket upgrade did not complete"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .map_err(|error| ApiError::Internal(error.to_string()))
}
