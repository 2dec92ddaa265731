//! The pages (askama templates), embedded in the binary; their scripts and style are in `assets`.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::secret;
use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(login_page))
        .route("/join/{token}", get(join_page))
        .route("/account", get(account_page))
        .route("/admin", get(admin_page))
        .route("/circle", get(circle_page))
}

/// The landing page: log in with a key.
#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage;

/// The enrollment page of an invitation link.
#[derive(Template)]
#[template(path = "join.html")]
struct JoinPage {
    usable: bool,
}

/// The member's page: their keys.
#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage;

/// The admin page: invitations and members.
#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage;

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => ([(CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "page failed to render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn login_page() -> Response {
    render(&LoginPage)
}

async fn join_page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let usable = secret::looks_like_token(&token)
        && matches!(
            state
                .store
                .usable_invitation(&secret::digest(&token), state.clock.now())
                .await,
            Ok(Some(_))
        );
    let status = if usable {
        StatusCode::OK
    } else {
        StatusCode::GONE
    };
    (status, render(&JoinPage { usable })).into_response()
}

async fn account_page() -> Response {
    render(&AccountPage)
}

async fn admin_page() -> Response {
    render(&AdminPage)
}

/// The circle view: this browser as a member device, the engine running in the page.
#[derive(Template)]
#[template(path = "circle.html")]
struct CirclePage;

async fn circle_page() -> Response {
    render(&CirclePage)
}
