//! A typed client of the rendezvous server's HTTP API (`/api/v1`), with a bearer session once logged in.

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_engine::renewal::SessionRenewal;
use tessera_wire::{
    API_PREFIX, AddPasskeyStartRequest, AuthenticationOptions, Base64Url, CreateInvitationRequest,
    CreateRecoveryRequest, CreatedInvitation, EnrollStartRequest, ErrorBody, ErrorCode,
    InvitationInfo, LoginFinishRequest, Me, MemberDecisionRequest, MemberInfo, PasskeyInfo,
    PublicKeyCredential, RegisterPublicKeyCredential, RegistrationFinishRequest,
    RegistrationOptions, RenewalCeremony, Role, SessionGranted, TurnCredentials,
};
use url::Url;
use uuid::Uuid;

#[cfg(feature = "danger-tamper")]
use crate::authenticator::Tamper;
use crate::authenticator::{Authenticator, AuthenticatorError, SoftKey};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiClientError {
    /// The server refused the request with an error body.
    #[error("the server refused ({status}): {} — {}", body.error, body.message)]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The server's explanation.
        body: ErrorBody,
    },
    /// The server answered something that is not the API's JSON.
    #[error("unexpected answer ({status}): {text}")]
    Unexpected {
        /// The HTTP status.
        status: StatusCode,
        /// The start of the body.
        text: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    /// The authenticator refused to act.
    #[error("the authenticator refused: {0}")]
    Authenticator(#[from] AuthenticatorError),
    /// The URL is not an invitation link.
    #[error("not an invitation link: {0}")]
    NotAnInvitation(String),
}

impl ApiClientError {
    /// The server's error code, when it refused.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiClientError::Refused { body, .. } => Some(body.error),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiClientError::Refused { status, .. } | ApiClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// The result of an API call.
pub type ApiClientResult<T> = Result<T, ApiClientError>;

/// The token of an invitation link `…/join/<token>`.
///
/// # Errors
/// [`ApiClientError::NotAnInvitation`] when the link has no such path.
pub fn invitation_token(link: &str) -> ApiClientResult<String> {
    let url = Url::parse(link).map_err(|_| ApiClientError::NotAnInvitation(link.to_owned()))?;
    let mut segments = url
        .path_segments()
        .ok_or_else(|| ApiClientError::NotAnInvitation(link.to_owned()))?;
    match (segments.next(), segments.next(), segments.next()) {
        (Some("join"), Some(token), None) if !token.is_empty() => Ok(token.to_owned()),
        _ => Err(ApiClientError::NotAnInvitation(link.to_owned())),
    }
}

/// A client of one server, optionally holding a session.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    origin: Url,
    session: Option<String>,
}

impl ApiClient {
    /// A client of the server at `origin` (e.g. `http://localhost:8080`), without a session.
    #[must_use]
    pub fn new(origin: Url) -> ApiClient {
        ApiClient {
            http: reqwest::Client::new(),
            origin,
            session: None,
        }
    }

    /// The server's origin, which the authenticator presents.
    #[must_use]
    pub fn origin(&self) -> &Url {
        &self.origin
    }

    /// Holds the session a successful enrollment or login granted.
    fn keep_session(&mut self, granted: SessionGranted) -> ApiClientResult<SessionGranted> {
        if granted.session.is_none() {
            return Err(ApiClientError::Unexpected {
                status: StatusCode::OK,
                text: "the server granted a session but sent no token".into(),
            });
        }
        self.session.clone_from(&granted.session);
        Ok(granted)
    }

    /// The session token, once enrolled or logged in.
    #[must_use]
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Uses (or drops) a session token for the following calls.
    pub fn set_session(&mut self, session: Option<String>) {
        self.session = session;
    }

    fn origin_str(&self) -> &str {
        self.origin.as_str().trim_end_matches('/')
    }

    /// Sends one request to `/api/v1{path}` and returns the status and raw body.
    ///
    /// # Errors
    /// [`ApiClientError::Transport`] when the server cannot be reached.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> ApiClientResult<(StatusCode, Vec<u8>)> {
        let url = format!("{}{API_PREFIX}{path}", self.origin_str());
        let mut request = self.http.request(method, url);
        if let Some(session) = &self.session {
            request = request.bearer_auth(session);
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.bytes().await?.to_vec()))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> ApiClientResult<T> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(|bytes| ("application/json", bytes)))
            .transpose()
            .map_err(|e| ApiClientError::Unexpected {
                status: StatusCode::BAD_REQUEST,
                text: e.to_string(),
            })?;
        let (status, bytes) = self.send_raw(method, path, body).await?;
        let unexpected = |bytes: &[u8]| ApiClientError::Unexpected {
            status,
            text: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        };
        if !status.is_success() {
            let body: ErrorBody = serde_json::from_slice(&bytes).map_err(|_| unexpected(&bytes))?;
            return Err(ApiClientError::Refused { status, body });
        }
        let bytes = if bytes.is_empty() {
            b"null".to_vec()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|_| unexpected(&bytes))
    }

    /// `POST /enroll/start`.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn enroll_start(
        &self,
        token: &str,
        label: Option<&str>,
    ) -> ApiClientResult<RegistrationOptions> {
        self.enroll_start_as(token, label, None).await
    }

    /// `POST /enroll/start`, asking for the member id `member` (derived from the invitation link,
    /// see [`tessera_engine::trust::member_id_for`]).
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn enroll_start_as(
        &self,
        token: &str,
        label: Option<&str>,
        member: Option<Uuid>,
    ) -> ApiClientResult<RegistrationOptions> {
        let body = EnrollStartRequest {
            token: token.to_owned(),
            label: label.map(str::to_owned),
            member,
        };
        self.call(Method::POST, "/enroll/start", Some(&body)).await
    }

    /// `POST /enroll/finish`; keeps the session on success.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn enroll_finish(
        &mut self,
        ceremony: &str,
        credential: RegisterPublicKeyCredential,
    ) -> ApiClientResult<SessionGranted> {
        self.enroll_finish_with(ceremony, credential, None).await
    }

    /// `POST /enroll/finish` with the new key's admission; keeps the session on success.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn enroll_finish_with(
        &mut self,
        ceremony: &str,
        credential: RegisterPublicKeyCredential,
        proof: Option<Base64Url>,
    ) -> ApiClientResult<SessionGranted> {
        let body = RegistrationFinishRequest {
            ceremony: ceremony.to_owned(),
            credential,
            proof,
        };
        let granted: SessionGranted = self
            .call(Method::POST, "/enroll/finish", Some(&body))
            .await?;
        self.keep_session(granted)
    }

    /// Enrolls a new software key with an invitation token; keeps the session.
    ///
    /// # Errors
    /// When the server or the authenticator refuses.
    pub async fn enroll(
        &mut self,
        token: &str,
        label: Option<&str>,
    ) -> ApiClientResult<(SoftKey, SessionGranted)> {
        let mut key = SoftKey::blank()?;
        let granted = self.enroll_key(token, label, &mut key).await?;
        Ok((key, granted))
    }

    /// Enrolls a blank software key (`tessera soft-key new`) with an invitation token, creating its
    /// credential; keeps the session. Save the key afterwards.
    ///
    /// # Errors
    /// When the server or the authenticator refuses (a key that holds a credential already).
    pub async fn enroll_key(
        &mut self,
        token: &str,
        label: Option<&str>,
        key: &mut dyn Authenticator,
    ) -> ApiClientResult<SessionGranted> {
        let options = self.enroll_start(token, label).await?;
        let credential = key.register(&options.options, self.origin.as_str())?;
        self.enroll_finish(&options.ceremony, credential).await
    }

    /// `POST /login/start`.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn login_start(&self) -> ApiClientResult<AuthenticationOptions> {
        self.call(Method::POST, "/login/start", Some(&serde_json::json!({})))
            .await
    }

    /// `POST /login/finish`; keeps the session on success.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn login_finish(
        &mut self,
        ceremony: &str,
        credential: PublicKeyCredential,
    ) -> ApiClientResult<SessionGranted> {
        let body = LoginFinishRequest {
            ceremony: ceremony.to_owned(),
            credential,
        };
        let granted: SessionGranted = self
            .call(Method::POST, "/login/finish", Some(&body))
            .await?;
        self.keep_session(granted)
    }

    /// Logs in with a key (discoverable: no user name); keeps the session.
    ///
    /// # Errors
    /// When the server or the authenticator refuses.
    pub async fn login(&mut self, key: &mut dyn Authenticator) -> ApiClientResult<SessionGranted> {
        let options = self.login_start().await?;
        let credential = key.sign_in(&options.options, self.origin.as_str())?;
        self.login_finish(&options.ceremony, credential).await
    }

    /// Logs in with a key whose answer is tampered with (tests of refusals; feature
    /// `danger-tamper`).
    ///
    /// # Errors
    /// When the server or the authenticator refuses.
    #[cfg(feature = "danger-tamper")]
    pub async fn login_with(
        &mut self,
        key: &mut SoftKey,
        tamper: &Tamper,
    ) -> ApiClientResult<SessionGranted> {
        let options = self.login_start().await?;
        let credential = key.sign_in_with(&options.options, self.origin.as_str(), tamper)?;
        self.login_finish(&options.ceremony, credential).await
    }

    /// `POST /session/renew/start`: the ceremony id a device key signs to renew its session.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn renewal_start(&self) -> ApiClientResult<String> {
        let started: RenewalCeremony = self
            .call(
                Method::POST,
                "/session/renew/start",
                Some(&serde_json::json!({})),
            )
            .await?;
        Ok(started.ceremony)
    }

    /// `POST /session/renew` with the device's signed renewal; keeps the new session.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn renew_session(
        &mut self,
        renewal: &SessionRenewal,
    ) -> ApiClientResult<SessionGranted> {
        let granted: SessionGranted = self
            .call(Method::POST, "/session/renew", Some(renewal))
            .await?;
        self.keep_session(granted)
    }

    /// `POST /logout`; forgets the session.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn logout(&mut self) -> ApiClientResult<()> {
        self.call::<(), ()>(Method::POST, "/logout", None).await?;
        self.session = None;
        Ok(())
    }

    /// `GET /me`.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn me(&self) -> ApiClientResult<Me> {
        self.call::<(), _>(Method::GET, "/me", None).await
    }

    /// `GET /me/passkeys`.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn passkeys(&self) -> ApiClientResult<Vec<PasskeyInfo>> {
        self.call::<(), _>(Method::GET, "/me/passkeys", None).await
    }

    /// `POST /me/passkeys/start`.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn add_passkey_start(
        &self,
        label: Option<&str>,
    ) -> ApiClientResult<RegistrationOptions> {
        let body = AddPasskeyStartRequest {
            label: label.map(str::to_owned),
        };
        self.call(Method::POST, "/me/passkeys/start", Some(&body))
            .await
    }

    /// `POST /me/passkeys/finish`.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn add_passkey_finish(
        &self,
        ceremony: &str,
        credential: RegisterPublicKeyCredential,
        proof: Option<Base64Url>,
    ) -> ApiClientResult<PasskeyInfo> {
        let body = RegistrationFinishRequest {
            ceremony: ceremony.to_owned(),
            credential,
            proof,
        };
        self.call(Method::POST, "/me/passkeys/finish", Some(&body))
            .await
    }

    /// `DELETE /me/passkeys/{id}`, with the key's revocation one of the member's keys signed
    /// (opaque to the server; `membership::revoke_key` makes it).
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn revoke_passkey(&self, id: &str, statement: Base64Url) -> ApiClientResult<()> {
        self.call::<_, ()>(
            Method::DELETE,
            &format!("/me/passkeys/{id}"),
            Some(&MemberDecisionRequest { statement }),
        )
        .await
    }

    /// `POST /invitations` (admins), with the statement the admin's key signed.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn create_signed_invitation(
        &self,
        role: Role,
        ttl_secs: u64,
        statement: Option<Base64Url>,
    ) -> ApiClientResult<CreatedInvitation> {
        let body = CreateInvitationRequest {
            role,
            ttl_secs,
            statement,
        };
        self.call(Method::POST, "/invitations", Some(&body)).await
    }

    /// `GET /invitations` (admins).
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn invitations(&self) -> ApiClientResult<Vec<InvitationInfo>> {
        self.call::<(), _>(Method::GET, "/invitations", None).await
    }

    /// `DELETE /invitations/{id}` (admins).
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn revoke_invitation(&self, id: Uuid) -> ApiClientResult<()> {
        self.call::<(), ()>(Method::DELETE, &format!("/invitations/{id}"), None)
            .await
    }

    /// `GET /members`: the circle directory.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn members(&self) -> ApiClientResult<Vec<MemberInfo>> {
        self.call::<(), _>(Method::GET, "/members", None).await
    }

    /// `GET /turn`: ICE servers and short-lived TURN credentials, when the server has them.
    ///
    /// # Errors
    /// When the server refuses (`turn_not_configured` when it has none) or cannot be reached.
    pub async fn turn(&self) -> ApiClientResult<TurnCredentials> {
        self.call::<(), _>(Method::GET, "/turn", None).await
    }

    /// `DELETE /members/{id}` (admins), with the revocation the admin's key signed (opaque to the
    /// server; `membership::revoke` makes it).
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn revoke_member(&self, id: Uuid, statement: Base64Url) -> ApiClientResult<()> {
        self.call::<_, ()>(
            Method::DELETE,
            &format!("/members/{id}"),
            Some(&MemberDecisionRequest { statement }),
        )
        .await
    }

    /// `POST /members/{id}/promotion` (admins), with the promotion the admin's key signed (opaque
    /// to the server; `membership::decide` makes it).
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn promote_member(&self, id: Uuid, statement: Base64Url) -> ApiClientResult<()> {
        self.call::<_, ()>(
            Method::POST,
            &format!("/members/{id}/promotion"),
            Some(&MemberDecisionRequest { statement }),
        )
        .await
    }

    /// `POST /members/{id}/recovery` (admins), with the statement the admin's key signed.
    ///
    /// # Errors
    /// When the server refuses or cannot be reached.
    pub async fn signed_recovery_invitation(
        &self,
        id: Uuid,
        ttl_secs: u64,
        statement: Option<Base64Url>,
    ) -> ApiClientResult<CreatedInvitation> {
        let body = CreateRecoveryRequest {
            ttl_secs,
            statement,
        };
        self.call(
            Method::POST,
            &format!("/members/{id}/recovery"),
            Some(&body),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitation_links_yield_their_token() {
        assert_eq!(
            invitation_token("http://localhost:8080/join/abc_DEF-1").expect("token"),
            "abc_DEF-1"
        );
        for bad in [
            "http://localhost:8080/",
            "http://localhost:8080/join/",
            "http://localhost:8080/join/a/b",
            "http://localhost:8080/account/abc",
            "not a url",
        ] {
            assert!(invitation_token(bad).is_err(), "{bad} accepted");
        }
    }
}
