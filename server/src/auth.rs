//! Who is calling: the session from `Authorization: Bearer` or the session cookie, the admin check, and session issuance.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use tessera_wire::{Role, SESSION_COOKIE, SessionGranted};

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

/// The session token a request carries: the bearer token first, else the cookie.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        return value.to_str().ok()?.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        let token = presented_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
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

/// A new session for a member, opened with the key `credential_id`: the row to store and what
/// the client receives.
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
        session: token,
        expires_at,
    };
    (record, granted)
}

/// The `Set-Cookie` header that hands the browser its session (HttpOnly, SameSite=Strict).
#[must_use]
pub fn session_cookie(
    state: &AppState,
    granted: &SessionGranted,
) -> (axum::http::HeaderName, HeaderValue) {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        granted.session, state.config.session_ttl_secs
    );
    (
        SET_COOKIE,
        HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("")),
    )
}

/// The `Set-Cookie` header that removes the session cookie.
#[must_use]
pub fn clearing_cookie() -> (axum::http::HeaderName, HeaderValue) {
    (
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .unwrap_or(HeaderValue::from_static("")),
    )
}
