//! Every refusal and failure of the HTTP API, mapped once to a status and a `{"error", "message"}` body.

use axum::Json;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tessera_wire::{ErrorBody, ErrorCode};

use crate::store::StoreError;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No valid session (missing, unknown, expired, or its member was revoked).
    #[error("a valid session is required")]
    Unauthorized,
    /// The session's member lacks the role.
    #[error("only an admin of the circle may do this")]
    AdminRequired,
    /// The thing named does not exist in the caller's circle.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The invitation is unknown, used, revoked or expired.
    #[error("this invitation is unknown, already used, revoked or expired")]
    InvitationUnusable,
    /// The ceremony id is unknown, was already used, or expired.
    #[error("this ceremony is unknown, already finished or expired; start again")]
    CeremonyUnknown,
    /// The ceremony was started for another purpose (e.g. a login ceremony sent to enrollment).
    #[error("this ceremony belongs to another operation")]
    CeremonyMismatch,
    /// WebAuthn verification refused the authenticator's response.
    #[error("the authenticator's response was refused ({0})")]
    WebauthnRejected(String),
    /// The key is not registered here.
    #[error("this key is not registered in any circle here")]
    UnknownCredential,
    /// The assertion's user handle does not match the key's member.
    #[error("the key's user handle does not match its member")]
    UserHandleMismatch,
    /// The key's member was revoked.
    #[error("this membership was revoked")]
    MemberRevoked,
    /// A session renewal that does not prove a device certified by one of the member's keys.
    #[error("this device cannot renew its session ({0}); log in with your hardware key")]
    DeviceNotCertified(String),
    /// The key's signature counter went backwards: a possible clone.
    #[error("the key's signature counter went backwards; it may have been cloned")]
    CounterRegression,
    /// The credential is already registered.
    #[error("this key is already registered")]
    CredentialExists,
    /// The key's model is not admitted by the attestation policy.
    #[error("this model of key is not admitted by the circle's policy")]
    AttestationRefused,
    /// The key signs with another algorithm than ES256 (P-256), which devices cannot verify.
    #[error(
        "this key signs with an algorithm the circle's devices cannot verify: use a key that \
         supports ES256 (P-256), as every current security key does"
    )]
    UnsupportedKey,
    /// The member would be left without a key.
    #[error("you cannot remove your last key; add another first")]
    LastPasskey,
    /// The request's signed statement is missing, or not the caller's key's for it, lately.
    #[error("this needs a statement one of your keys signed for it just now (a touch): {0}")]
    ConsentRefused(String),
    /// The member holds the most keys allowed.
    #[error(
        "you hold {} keys, the most allowed; remove one first",
        crate::store::PASSKEYS_PER_MEMBER
    )]
    TooManyKeys,
    /// The circle has the most pending invitations allowed.
    #[error(
        "the circle has {} invitations waiting, the most allowed; revoke unused ones first",
        crate::store::PENDING_INVITATIONS_PER_CIRCLE
    )]
    TooManyInvitations,
    /// An admin tried to revoke themselves.
    #[error("an admin cannot revoke themselves")]
    CannotRevokeSelf,
    /// The request is well-formed JSON but its values are not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The body is not acceptable JSON.
    #[error("{0}")]
    MalformedBody(String),
    /// The body is larger than the limit.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// The body is not declared as JSON.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// Too many requests from this client.
    #[error("too many requests; wait a minute and try again")]
    RateLimited,
    /// A page of another origin tried to open the signalling socket.
    #[error("this origin may not open a signalling connection")]
    OriginRefused,
    /// The member has too many signalling connections.
    #[error("too many signalling connections for this member; close one")]
    TooManyConnections,
    /// The device id belongs to another member of the circle.
    #[error("this device id belongs to another member; let the device choose a new one")]
    DeviceTaken,
    /// No TURN service is configured (`--turn-secret`, `--ice-url`).
    #[error("this server hands out no TURN credentials; peers connect directly")]
    TurnNotConfigured,
    /// The server is at a limit (e.g. too many pending ceremonies).
    #[error("the server is busy; try again in a minute")]
    Busy,
    /// Something failed inside the server; the cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::AdminRequired => (StatusCode::FORBIDDEN, ErrorCode::AdminRequired),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::InvitationUnusable => (StatusCode::GONE, ErrorCode::InvitationUnusable),
            ApiError::CeremonyUnknown => (StatusCode::BAD_REQUEST, ErrorCode::CeremonyUnknown),
            ApiError::CeremonyMismatch => (StatusCode::BAD_REQUEST, ErrorCode::CeremonyMismatch),
            ApiError::WebauthnRejected(_) => (StatusCode::BAD_REQUEST, ErrorCode::WebauthnRejected),
            ApiError::UnknownCredential => (StatusCode::UNAUTHORIZED, ErrorCode::UnknownCredential),
            ApiError::UserHandleMismatch => {
                (StatusCode::UNAUTHORIZED, ErrorCode::UserHandleMismatch)
            }
            ApiError::MemberRevoked => (StatusCode::FORBIDDEN, ErrorCode::MemberRevoked),
            ApiError::DeviceNotCertified(_) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::DeviceNotCertified)
            }
            ApiError::CounterRegression => (StatusCode::UNAUTHORIZED, ErrorCode::CounterRegression),
            ApiError::CredentialExists => (StatusCode::CONFLICT, ErrorCode::CredentialExists),
            ApiError::AttestationRefused => (StatusCode::FORBIDDEN, ErrorCode::AttestationRefused),
            ApiError::UnsupportedKey => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::UnsupportedKey)
            }
            ApiError::LastPasskey => (StatusCode::CONFLICT, ErrorCode::LastPasskey),
            ApiError::CannotRevokeSelf => (StatusCode::CONFLICT, ErrorCode::CannotRevokeSelf),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidRequest),
            ApiError::MalformedBody(_) => (StatusCode::BAD_REQUEST, ErrorCode::MalformedBody),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            ApiError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::OriginRefused => (StatusCode::FORBIDDEN, ErrorCode::OriginRefused),
            ApiError::TooManyConnections => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyConnections)
            }
            ApiError::DeviceTaken => (StatusCode::CONFLICT, ErrorCode::DeviceTaken),
            ApiError::ConsentRefused(_) => (StatusCode::FORBIDDEN, ErrorCode::SignatureRefused),
            ApiError::TooManyKeys => (StatusCode::CONFLICT, ErrorCode::TooManyKeys),
            ApiError::TooManyInvitations => (StatusCode::CONFLICT, ErrorCode::TooManyInvitations),
            ApiError::TurnNotConfigured => (StatusCode::NOT_FOUND, ErrorCode::TurnNotConfigured),
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed"),
            ApiError::WebauthnRejected(cause) => tracing::info!(%cause, "webauthn refused"),
            // Only the code: a message may echo what the client sent.
            _ => tracing::info!(code = code.as_str(), "request refused"),
        }
        let body = ErrorBody {
            error: code,
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvitationUnusable => ApiError::InvitationUnusable,
            StoreError::CredentialExists => ApiError::CredentialExists,
            StoreError::LastPasskey => ApiError::LastPasskey,
            StoreError::Busy => ApiError::Busy,
            StoreError::RangeBusy => ApiError::RateLimited,
            StoreError::TooManyKeys => ApiError::TooManyKeys,
            StoreError::TooManyInvitations => ApiError::TooManyInvitations,
            StoreError::KeyMovedOn => ApiError::CounterRegression,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(
                FailedToBufferBody::LengthLimitError(_),
            )) => ApiError::BodyTooLarge,
            JsonRejection::BytesRejection(_) => ApiError::MalformedBody(
                "the request body did not arrive whole (it stopped, or took longer than the server waits)"
                    .into(),
            ),
            other => ApiError::MalformedBody(other.body_text()),
        }
    }
}

impl From<webauthn_rs::prelude::WebauthnError> for ApiError {
    fn from(error: webauthn_rs::prelude::WebauthnError) -> Self {
        ApiError::WebauthnRejected(format!("{error:?}"))
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose rejections answer in the API's error format.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
