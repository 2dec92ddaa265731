//! The HTTP routes: one module per resource, each exposing its `router()`.

pub mod assets;
mod enroll;
mod health;
mod invitations;
mod login;
mod me;
mod members;
mod pages;
mod signal;
mod turn;

use axum::Router;

use crate::state::AppState;

/// Every route of the server.
pub fn router() -> Router<AppState> {
    let api = Router::new()
        .merge(enroll::router())
        .merge(login::router())
        .merge(me::router())
        .merge(invitations::router())
        .merge(members::router())
        .merge(signal::router())
        .merge(turn::router());
    Router::new()
        .nest(tessera_wire::API_PREFIX, api)
        .merge(health::router())
        .merge(signal::metrics_router())
        .merge(pages::router())
        .merge(assets::router())
}
