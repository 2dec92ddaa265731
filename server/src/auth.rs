//! Who is calling: the session from `Authorization: Bearer` or the session cookie, the admin check, and session issuance.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use tessera_wire::{Role, SessionGranted};

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::secret::{self, Digest};
use crate::state::AppState;
use crate::store::{MemberRecord, SessionRecord};

/// A caller with a valid session of an unrevoked member.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The session's member.
    pub member: MemberRecord,
    /// The digest of the session token (to end it at logout).
    pub session_hash: Digest,
}

/// A caller who is an admin of their circle.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

/// The session token a request carries: the bearer token first, else the cookie `cookie`.
fn presented_token<'h>(headers: &'h HeaderMap, cookie: &str) -> Option<&'h str> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        return value.to_str().ok()?.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie)
        .map(|(_, value)| value)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        let token = presented_token(&parts.headers, state.config.session_cookie())
            .ok_or(ApiError::Unauthorized)?;
        if !secret::looks_like_token(token) {
            return Err(ApiError::Unauthorized);
        }
        let session_hash = secret::digest(token);
        let member = state
            .store
            .session_member(&session_hash, state.clock.now())
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            member,
            session_hash,
        })
    }
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<AdminCaller> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.member.role != Role::Admin {
            return Err(ApiError::AdminRequired);
        }
        Ok(AdminCaller(caller))
    }
}

/// A new session for a member, opened with the key `credential_id`: the row to store, and what
/// the client receives (see [`granted`]).
#[must_use]
pub fn new_session(
    state: &AppState,
    member: &MemberRecord,
    credential_id: &[u8],
) -> (SessionRecord, SessionGranted) {
    let token = secret::new_token();
    let expires_at = state.clock.now() + state.config.session_ttl_secs;
    let record = SessionRecord {
        token_hash: secret::digest(&token),
        member: member.id,
        expires_at,
        credential_id: credential_id.to_vec(),
    };
    let granted = SessionGranted {
        member: member.id,
        circle: member.circle,
        role: member.role,
        session: Some(token),
        expires_at,
    };
    (record, granted)
}

/// Whether a request comes from a browser: browsers send `Origin` with every POST and
/// `Sec-Fetch-Site` with every request; native clients send neither.
fn from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(ORIGIN) || headers.contains_key("sec-fetch-site")
}

/// The answer that hands a client its new session: the cookie, and the body, which names the
/// token only to native clients (a browser's scripts never see it).
pub fn granted(
    state: &AppState,
    request: &HeaderMap,
    mut granted: SessionGranted,
) -> impl IntoResponse + use<> {
    let cookie = granted
        .session
        .as_deref()
        .map(|token| session_cookie(&state.config, token));
    if from_browser(request) {
        granted.session = None;
    }
    (cookie.map(|cookie| [cookie]), Json(granted))
}

/// The `Set-Cookie` header that hands the browser its session (HttpOnly, SameSite=Strict; on
/// https `Secure` and `__Host-` prefixed).
#[must_use]
fn session_cookie(config: &Config, token: &str) -> (HeaderName, HeaderValue) {
    set_cookie(config, token, config.session_ttl_secs)
}

/// The `Set-Cookie` header that removes the session cookie.
#[must_use]
pub fn clearing_cookie(config: &Config) -> (HeaderName, HeaderValue) {
    set_cookie(config, "", 0)
}

/// The session cookie holding `value` for `max_age` seconds, with the attributes it always has.
fn set_cookie(config: &Config, value: &str, max_age: i64) -> (HeaderName, HeaderValue) {
    let secure = if config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        config.session_cookie()
    );
    (
        SET_COOKIE,
        HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static("")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_https_the_cookie_is_host_prefixed_and_secure_and_read_back_by_that_name() {
        let origin = url::Url::parse("https://chat.example.org").expect("url");
        let config = Config::for_tests(std::path::PathBuf::from("unused"), origin);
        let (_, cookie) = session_cookie(&config, "token");
        let cookie = cookie.to_str().expect("ascii");
        assert!(
            cookie.starts_with("__Host-tessera_session=token;"),
            "{cookie}"
        );
        for attribute in ["; Secure", "; Path=/;", "; HttpOnly", "; SameSite=Strict"] {
            assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
        }
        assert!(!cookie.contains("Domain"), "{cookie}");
        let (_, cleared) = clearing_cookie(&config);
        assert!(
            cleared
                .to_str()
                .expect("ascii")
                .starts_with("__Host-tessera_session=;")
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("tessera_session=plain; __Host-tessera_session=host"),
        );
        assert_eq!(
            presented_token(&headers, config.session_cookie()),
            Some("host")
        );
        let plain = Config::for_tests(
            std::path::PathBuf::from("unused"),
            url::Url::parse("http://localhost:8080").expect("url"),
        );
        assert_eq!(
            presented_token(&headers, plain.session_cookie()),
            Some("plain")
        );
    }
}
