//! Wire types spoken by the Tessera server, the native client and the browser client, defined once.
//!
//! Every JSON body of the HTTP API under `/api/v1` is one of these types. Times are Unix seconds.
//! WebAuthn options and credentials are the `webauthn-rs-proto` types, which are the JSON that the
//! browser's `parseCreationOptionsFromJSON` / `toJSON()` helpers read and write.

mod bytes;
mod code;
pub mod signal;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use bytes::{Base64Url, NotBase64Url};

pub use webauthn_rs_proto::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse,
};

/// The path prefix of every JSON endpoint.
pub const API_PREFIX: &str = "/api/v1";

/// The name of the browser's session cookie (HttpOnly, SameSite=Strict) on a plain-http origin
/// (localhost while developing).
pub const SESSION_COOKIE: &str = "tessera_session";
/// Its name on an https origin: the `__Host-` prefix makes browsers keep it only if it is
/// `Secure`, for the whole host (`Path=/`) and no other (no `Domain`), so that a sibling
/// subdomain cannot plant or shadow it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-tessera_session";

/// A member's role in their circle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May issue and revoke invitations and revoke members.
    Admin,
    /// May use the circle.
    Member,
}

impl Role {
    /// The role's name as stored and sent (`admin` or `member`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses a stored role name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

code::codes! {
    /// Why the HTTP API refused a request: the `error` of its [`ErrorBody`] (`docs/api.md`).
    pub enum ErrorCode {
        /// No valid session (missing, unknown, expired, or its member was revoked).
        Unauthorized = "unauthorized",
        /// The session's member is not an admin.
        AdminRequired = "admin_required",
        /// The thing named does not exist in the caller's circle.
        NotFound = "not_found",
        /// The invitation is unknown, used, revoked or expired.
        InvitationUnusable = "invitation_unusable",
        /// The ceremony is unknown, already finished or expired.
        CeremonyUnknown = "ceremony_unknown",
        /// The ceremony was started for another operation.
        CeremonyMismatch = "ceremony_mismatch",
        /// WebAuthn verification refused the authenticator's response.
        WebauthnRejected = "webauthn_rejected",
        /// The key is not registered here.
        UnknownCredential = "unknown_credential",
        /// The assertion's user handle does not match the key's member.
        UserHandleMismatch = "user_handle_mismatch",
        /// The key's member was revoked.
        MemberRevoked = "member_revoked",
        /// A session renewal's device certificate or device-key signature does not hold (the
        /// key that certified the device was revoked, or the request was forged).
        DeviceNotCertified = "device_not_certified",
        /// The key's signature counter went backwards.
        CounterRegression = "counter_regression",
        /// The credential is already registered.
        CredentialExists = "credential_exists",
        /// The key's model is not admitted by the attestation policy.
        AttestationRefused = "attestation_refused",
        /// The key signs with an algorithm devices cannot verify (only ES256 is admitted).
        UnsupportedKey = "unsupported_key",
        /// The member would be left without a key.
        LastPasskey = "last_passkey",
        /// The request needs, and did not carry, a statement one of the caller's keys signed
        /// for it lately with the user verified.
        SignatureRefused = "signature_refused",
        /// The member holds the most keys allowed.
        TooManyKeys = "too_many_keys",
        /// The circle has the most pending invitations allowed.
        TooManyInvitations = "too_many_invitations",
        /// An admin tried to revoke themselves.
        CannotRevokeSelf = "cannot_revoke_self",
        /// Well-formed JSON whose values are not acceptable.
        InvalidRequest = "invalid_request",
        /// The body is not acceptable JSON.
        MalformedBody = "malformed_body",
        /// The body is larger than the limit.
        BodyTooLarge = "body_too_large",
        /// The body is not declared as JSON.
        UnsupportedMediaType = "unsupported_media_type",
        /// Too many requests from this client.
        RateLimited = "rate_limited",
        /// A page of another origin tried to open the signalling socket.
        OriginRefused = "origin_refused",
        /// The member has too many signalling connections.
        TooManyConnections = "too_many_connections",
        /// The device id belongs to another member.
        DeviceTaken = "device_taken",
        /// The server hands out no TURN credentials.
        TurnNotConfigured = "turn_not_configured",
        /// The server is at a limit; try again later.
        Busy = "busy",
        /// Something failed inside the server.
        Internal = "internal",
    }
}

/// Every refused request answers with this body and a 4xx (or, without detail, 5xx) status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code.
    pub error: ErrorCode,
    /// A sentence for people.
    pub message: String,
}

/// `POST /api/v1/enroll/start`: begin enrolling a hardware key with an invitation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollStartRequest {
    /// The invitation token from the link `/join/<token>`.
    pub token: String,
    /// A label for the key's holder, shown by the authenticator; never stored by the server.
    #[serde(default)]
    pub label: Option<String>,
    /// The member id the newcomer's device derived from the circle's root and the invitation key
    /// (docs/protocol.md): the user handle its hardware key will hand back at every login. For a
    /// newcomer invitation only; the server picks a random one without it.
    #[serde(default)]
    pub member: Option<Uuid>,
}

/// `POST /api/v1/me/passkeys/start`: begin adding another key to one's own membership.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddPasskeyStartRequest {
    /// A label shown by the authenticator; never stored by the server.
    #[serde(default)]
    pub label: Option<String>,
}

/// The answer to a registration start: the ceremony id and the options for `navigator.credentials.create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationOptions {
    /// The ceremony id to send back with the credential; single use, expires in minutes.
    pub ceremony: String,
    /// At enrollment: the invitation's statement as its issuer signed it, opaque to the server
    /// (none for the operator's first link). The newcomer's device builds its admission on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Base64Url>,
    /// `{"publicKey": {…}}`: the creation options.
    #[serde(flatten)]
    pub options: CreationChallengeResponse,
}

/// The answer to a login start: the ceremony id and the options for `navigator.credentials.get`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthenticationOptions {
    /// The ceremony id to send back with the assertion; single use, expires in minutes.
    pub ceremony: String,
    /// `{"publicKey": {…}}`: the request options (no allowed credentials: discoverable login).
    #[serde(flatten)]
    pub options: RequestChallengeResponse,
}

/// The answer to `POST /api/v1/session/renew/start`: the single-use ceremony id a device key signs
/// to renew its member's session (the request is `tessera_engine::renewal::SessionRenewal`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewalCeremony {
    /// The ceremony id; single use, expires in minutes.
    pub ceremony: String,
}

/// `POST …/enroll/finish` and `POST …/me/passkeys/finish`: the new credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationFinishRequest {
    /// The ceremony id from the start.
    pub ceremony: String,
    /// The browser's `PublicKeyCredential.toJSON()`.
    pub credential: RegisterPublicKeyCredential,
    /// What admits the new key, opaque to the server and kept with the member: the newcomer's
    /// admission, or the endorsement by one of the member's keys (docs/protocol.md).
    #[serde(default)]
    pub proof: Option<Base64Url>,
}

/// `POST …/login/finish`: the assertion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginFinishRequest {
    /// The ceremony id from the start.
    pub ceremony: String,
    /// The browser's `PublicKeyCredential.toJSON()`.
    pub credential: PublicKeyCredential,
}

/// A new session, after enrollment or login. A browser receives the token as an HttpOnly cookie
/// only, never in this body, so that no script on the page can read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionGranted {
    /// The member id.
    pub member: Uuid,
    /// The member's circle.
    pub circle: Uuid,
    /// The member's role.
    pub role: Role,
    /// The session token, for native clients (`Authorization: Bearer <session>`); absent when
    /// the request came from a browser (it carried `Origin` or `Sec-Fetch-Site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When the session ends.
    pub expires_at: i64,
}

/// `GET /api/v1/me`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Me {
    /// The member id.
    pub member: Uuid,
    /// The member's circle.
    pub circle: Uuid,
    /// The member's role.
    pub role: Role,
    /// When the member enrolled.
    pub created_at: i64,
}

/// A passkey's public half, as peers need it to verify a member's device certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    /// The credential id.
    pub credential_id: Base64Url,
    /// The COSE algorithm name: `ES256` or `EdDSA`.
    pub alg: String,
    /// ES256: the SEC1 uncompressed point; EdDSA: the 32-byte key.
    pub public_key: Base64Url,
}

/// One of the member's own keys: `GET /api/v1/me/passkeys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasskeyInfo {
    /// The credential id, also the id (as text) for `DELETE /api/v1/me/passkeys/{id}`.
    pub id: Base64Url,
    /// The authenticator model's AAGUID, when the authenticator reported one.
    pub aaguid: Option<Uuid>,
    /// When the key was enrolled.
    pub created_at: i64,
    /// When the key last logged in.
    pub last_used_at: Option<i64>,
    /// The public key.
    pub public_key: PublicKeyInfo,
}

/// `POST /api/v1/invitations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateInvitationRequest {
    /// The role the newcomer gets.
    pub role: Role,
    /// The invitation's lifetime in seconds (60 s to 30 days).
    pub ttl_secs: u64,
    /// The statement the admin's hardware key signed for it, opaque to the server, handed to the
    /// newcomer at enrollment (docs/protocol.md).
    #[serde(default)]
    pub statement: Option<Base64Url>,
}

/// `POST /api/v1/members/{id}/recovery`: an invitation for an existing member to enroll a new key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRecoveryRequest {
    /// The invitation's lifetime in seconds (60 s to 30 days).
    pub ttl_secs: u64,
    /// The statement the admin's hardware key signed for it, as for a newcomer's invitation.
    #[serde(default)]
    pub statement: Option<Base64Url>,
}

/// A freshly issued invitation: the only time its token is ever shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedInvitation {
    /// The invitation's id (for listing and revoking).
    pub id: Uuid,
    /// The secret token (256 random bits, base64url).
    pub token: String,
    /// The enrollment link without its fragment, `<origin>/join/<token>`: the issuing device
    /// appends `#<secret>.<root>`, which the server never sees, and shows the whole link and its
    /// QR code.
    pub url: String,
    /// When the invitation stops working.
    pub expires_at: i64,
}

/// What a pending invitation admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvitationKind {
    /// A new member with the invitation's role.
    Newcomer,
    /// A new key for an existing member (after losing theirs).
    Recovery,
}

/// A pending invitation, as admins list it (never with its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationInfo {
    /// The invitation's id.
    pub id: Uuid,
    /// Newcomer or recovery.
    pub kind: InvitationKind,
    /// The role it grants (for recovery: the member's role).
    pub role: Role,
    /// For a recovery invitation: the member it recovers.
    pub member: Option<Uuid>,
    /// The admin who issued it.
    pub created_by: Option<Uuid>,
    /// When it was issued.
    pub created_at: i64,
    /// When it stops working.
    pub expires_at: i64,
}

/// One member of the circle directory: `GET /api/v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member id (also the WebAuthn user handle).
    pub id: Uuid,
    /// The member's role.
    pub role: Role,
    /// When the member enrolled.
    pub created_at: i64,
    /// The public keys of the member's hardware keys.
    pub passkeys: Vec<PublicKeyInfo>,
    /// What admits the member's keys, opaque to the server: signed invitations' admissions and
    /// endorsements by the member's own keys, as devices made them (docs/protocol.md). Kept when a
    /// key goes, so that a member's role and later keys still hold.
    #[serde(default)]
    pub proofs: Vec<Base64Url>,
    /// For a member the circle revoked: the revocation an admin's hardware key signed, opaque to
    /// the server (docs/protocol.md). Such a member is listed after the others, still with their
    /// keys and proofs; devices remove their devices from the group only if the revocation holds,
    /// and take what the member's keys signed only where the revocation keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Base64Url>,
}

/// `DELETE /api/v1/members/{id}` and `POST /api/v1/members/{id}/promotion`: the revocation or
/// promotion, signed by the deciding admin's hardware key, opaque to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDecisionRequest {
    /// The signed decision (docs/protocol.md).
    pub statement: Base64Url,
}

/// `GET /api/v1/turn`: ICE servers and short-lived credentials for them (coturn's REST-secret
/// scheme), for WebRTC peers that cannot reach each other directly. The shape of the browser's
/// `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    /// `stun:`, `turn:` and `turns:` URLs.
    pub urls: Vec<String>,
    /// The TURN username: the expiry (Unix seconds), a colon and an opaque tag.
    pub username: String,
    /// The TURN password for that username.
    pub credential: String,
    /// Seconds the credentials stay valid.
    pub ttl_secs: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok` when the database answers.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::Admin, Role::Member] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            let json = serde_json::to_string(&role).expect("serialize");
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        assert_eq!(Role::parse("owner"), None);
    }

    #[test]
    fn enroll_start_label_is_optional() {
        let request: EnrollStartRequest =
            serde_json::from_str(r#"{"token":"abc"}"#).expect("parse");
        assert_eq!(request.token, "abc");
        assert!(request.label.is_none());
    }
}
