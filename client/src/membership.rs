//! Signed membership for a native device (docs/engine.md, "Signed membership"): joining with a
//! whole invitation link, issuing invitations signed with the admin's key, and endorsing a new key
//! with one the member holds.

use tessera_engine::decision::{Decision, DecisionStatement, SignedDecision};
use tessera_engine::invitation::{InvitationSecret, InvitationStatement, SignedInvitation};
use tessera_engine::trust::{
    Endorsement, KeyProof, LinkError, LinkSecrets, RootFingerprint, UsedInvitations, member_id_for,
    own_key_revocation, revocation, verify_directory,
};
use tessera_softkey::{Authenticator, AuthenticatorError};
use tessera_wire::{CreatedInvitation, PasskeyInfo, Role, SessionGranted};
use url::Url;
use uuid::Uuid;

use crate::api::{ApiClient, ApiClientError, invitation_token};

/// Why a membership step failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// The link is not a whole invitation link.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The key refused.
    #[error("the key refused: {0}")]
    Key(#[from] AuthenticatorError),
    /// The key is enrolled, but the link's circle root does not admit the newcomer.
    #[error(
        "the key is enrolled, but the circle named in the link does not admit you: the link was \
         altered on its way, or the server is not honest; ask the admin for a new link and tell \
         them"
    )]
    NotAdmitted,
    /// The server's answer does not fit the link or what this device asked for.
    #[error("the server's answer does not fit the invitation: {0}")]
    Mismatch(&'static str),
    /// The key to revoke is not one of the member's in the directory.
    #[error("no key of yours has that id: `tessera keys` lists them")]
    UnknownKey,
}

/// An invitation link: the server's origin, the token of its path, and the secrets of its
/// fragment (none in the operator's first link, which makes its holder the circle's founder).
#[derive(Debug)]
pub struct InvitationLink {
    /// The server's origin.
    pub origin: String,
    /// The token.
    pub token: String,
    /// The invitation's secret and the circle's root.
    pub secrets: Option<LinkSecrets>,
}

impl InvitationLink {
    /// Reads a link `<origin>/join/<token>#<secret>.<root>`.
    ///
    /// # Errors
    /// When it is no invitation link, or its fragment is damaged.
    pub fn parse(link: &str) -> Result<InvitationLink, MembershipError> {
        let token = invitation_token(link)?;
        let url = Url::parse(link).map_err(|_| ApiClientError::NotAnInvitation(link.into()))?;
        let secrets = match url.fragment() {
            None | Some("") => None,
            Some(fragment) => Some(LinkSecrets::from_fragment(fragment)?),
        };
        Ok(InvitationLink {
            origin: url.origin().ascii_serialization(),
            token,
            secrets,
        })
    }
}

/// A device's enrollment: the session, and the root it pins.
#[derive(Debug)]
pub struct Joined {
    /// The new session.
    pub granted: SessionGranted,
    /// The circle's root: the link's, or (for the founder) the key just enrolled.
    pub root: RootFingerprint,
}

/// Enrolls the blank `key` with `link` (the key holds its credential afterwards, even when the
/// server refuses: save it). With the link's secrets, the device asks for the member id derived
/// from them, checks the server's signed statement is the link's, and hands over the new key's
/// admission; a link without them works only as the operator's first link (no statement).
///
/// # Errors
/// An incomplete link for a signed invitation ([`LinkError::Incomplete`]), a server answer that
/// does not fit the link, or a refusal.
pub async fn join(
    api: &mut ApiClient,
    link: &InvitationLink,
    label: Option<&str>,
    key: &mut dyn Authenticator,
    now: i64,
) -> Result<Joined, MembershipError> {
    let derived = link
        .secrets
        .as_ref()
        .map(|s| member_id_for(&s.root, &s.secret.public_key()));
    let options = api.enroll_start_as(&link.token, label, derived).await?;
    let signed = match (&options.statement, &link.secrets) {
        (None, None) => None,
        (Some(_), None) => return Err(LinkError::Incomplete.into()),
        (None, Some(_)) => {
            return Err(MembershipError::Mismatch(
                "the server holds no signed statement for this invitation",
            ));
        }
        (Some(blob), Some(secrets)) => {
            let signed = SignedInvitation::from_blob(blob)
                .map_err(|_| MembershipError::Mismatch("the signed statement is malformed"))?;
            if signed.statement.invitation_key != secrets.secret.public_key() {
                return Err(MembershipError::Mismatch(
                    "the server's invitation is not the link's",
                ));
            }
            Some(signed)
        }
    };
    let member = match (&signed, derived) {
        (Some(s), Some(derived)) => Some(s.statement.recovers.unwrap_or(derived)),
        _ => None,
    };
    let handle: &[u8] = &options.options.public_key.user.id;
    if member.is_some_and(|m| handle != m.as_bytes()) {
        return Err(MembershipError::Mismatch(
            "the server enrolls the key under another member id",
        ));
    }
    let credential = key.register(&options.options, &link.origin)?;
    let passkey = key.public_key_info();
    let proof = match (signed, member, &link.secrets) {
        (Some(signed), Some(member), Some(secrets)) => Some(
            KeyProof::Admission(secrets.secret.admit(signed, member, passkey.clone(), now))
                .to_blob(),
        ),
        _ => None,
    };
    let granted = api
        .enroll_finish_with(&options.ceremony, credential, proof)
        .await?;
    if member.is_some_and(|m| m != granted.member) {
        return Err(MembershipError::Mismatch(
            "the server enrolled the key under another member id",
        ));
    }
    let root = match &link.secrets {
        Some(secrets) => secrets.root,
        None => RootFingerprint::of(granted.member, &passkey),
    };
    // The link's root must admit the newcomer: else the link was altered on its way, or the
    // server serves another circle than the link's.
    let origin_rp = (link.origin.as_str(), key.rp_id());
    let listed = api.members().await?;
    let trusted = verify_directory(
        &listed,
        granted.circle,
        &root,
        origin_rp,
        &UsedInvitations::new(),
    );
    if !trusted.members.contains_key(&granted.member) {
        return Err(MembershipError::NotAdmitted);
    }
    Ok(Joined { granted, root })
}

/// A member acting with their own key: who they are and what their device pinned.
pub struct Signer<'k> {
    /// The member's circle.
    pub circle: Uuid,
    /// The member.
    pub member: Uuid,
    /// The circle's root the member's device pinned.
    pub root: RootFingerprint,
    /// The member's key.
    pub key: &'k mut dyn Authenticator,
}

/// An invitation as its issuer hands it over: the server's record and the whole link.
#[derive(Debug)]
pub struct Invitation {
    /// What the server made of it.
    pub created: CreatedInvitation,
    /// The whole link, with its fragment.
    pub link: String,
}

/// Issues an invitation signed by the admin's key: for a newcomer with `role`, or (with
/// `recovers`) for an existing member to enroll a new key.
///
/// # Errors
/// When the key or the server refuses.
pub async fn invite(
    api: &ApiClient,
    admin: Signer<'_>,
    role: Role,
    recovers: Option<Uuid>,
    (ttl_secs, now): (u64, i64),
) -> Result<Invitation, MembershipError> {
    let secret = InvitationSecret::generate()
        .map_err(|e| MembershipError::Key(AuthenticatorError::Crypto(e.to_string())))?;
    let statement = InvitationStatement {
        circle: admin.circle,
        invitation_key: secret.public_key(),
        role,
        expires_at: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
        issuer: admin.member,
        recovers,
    };
    let origin = api.origin().origin().ascii_serialization();
    let rp_id = admin.key.rp_id().to_owned();
    let signed = SignedInvitation::sign(statement, &rp_id, |r| admin.key.sign_in(r, &origin))?;
    let blob = Some(signed.to_blob());
    let created = match recovers {
        None => api.create_signed_invitation(role, ttl_secs, blob).await?,
        Some(member) => {
            api.signed_recovery_invitation(member, ttl_secs, blob)
                .await?
        }
    };
    let secrets = LinkSecrets {
        secret,
        root: admin.root,
    };
    let link = format!("{}#{}", created.url, secrets.to_fragment());
    Ok(Invitation { created, link })
}

/// Carries out the admin's `decision` about `member` with a statement the admin's key signs: a
/// revocation (the server ends the member's sessions at once, and devices remove their devices
/// from the group on the signature, not the server's word) or a promotion to admin.
///
/// # Errors
/// When the key or the server refuses.
pub async fn decide(
    api: &ApiClient,
    admin: Signer<'_>,
    (decision, member): (Decision, Uuid),
    now: i64,
) -> Result<(), MembershipError> {
    let ids = (admin.circle, member, admin.member);
    let statement = match decision {
        // What the member signed so far keeps holding (their invitations, say), nothing later.
        Decision::Revoke => revocation(&api.members().await?, ids, None, now),
        _ => DecisionStatement {
            decision,
            circle: admin.circle,
            member,
            issuer: admin.member,
            issued_at: now,
            key: None,
            keeps: None,
        },
    };
    let origin = api.origin().origin().ascii_serialization();
    let rp_id = admin.key.rp_id().to_owned();
    let signed = SignedDecision::sign(statement, &rp_id, |r| admin.key.sign_in(r, &origin))?;
    match decision {
        Decision::Revoke => api.revoke_member(member, signed.to_blob()).await?,
        Decision::Promote => api.promote_member(member, signed.to_blob()).await?,
        Decision::RevokeKey => {
            return Err(MembershipError::Mismatch(
                "a key's revocation names the key: revoke_key makes it",
            ));
        }
    }
    Ok(())
}

/// Revokes the logged-in member's key `id` (lost, stolen or retired) with a revocation
/// `member.key` signs, keeping what the revoked key signed so far (see
/// [`tessera_engine::trust::revocation`]): the server forgets the key at once, and the member's
/// devices (or an admin's) remove the devices it certified from the group on the signature.
///
/// # Errors
/// When the key is not one of the member's, or the key or the server refuses.
pub async fn revoke_key(
    api: &ApiClient,
    member: Signer<'_>,
    id: &str,
    now: i64,
) -> Result<(), MembershipError> {
    let listed = api.members().await?;
    let statement = own_key_revocation(&listed, (member.circle, member.member), id, now)
        .ok_or(MembershipError::UnknownKey)?;
    let origin = api.origin().origin().ascii_serialization();
    let rp_id = member.key.rp_id().to_owned();
    let signed = SignedDecision::sign(statement, &rp_id, |r| member.key.sign_in(r, &origin))?;
    api.revoke_passkey(id, signed.to_blob()).await?;
    Ok(())
}

/// Registers the blank `new_key` for the logged-in member, endorsed by `member.key`.
///
/// # Errors
/// When either key or the server refuses.
pub async fn add_key(
    api: &ApiClient,
    member: Signer<'_>,
    new_key: &mut dyn Authenticator,
    label: Option<&str>,
) -> Result<PasskeyInfo, MembershipError> {
    let origin = api.origin().origin().ascii_serialization();
    let options = api.add_passkey_start(label).await?;
    let credential = new_key.register(&options.options, &origin)?;
    let rp_id = member.key.rp_id().to_owned();
    let endorsement = Endorsement::sign(member.member, new_key.public_key_info(), &rp_id, |r| {
        member.key.sign_in(r, &origin)
    })?;
    let proof = Some(KeyProof::Endorsement(endorsement).to_blob());
    Ok(api
        .add_passkey_finish(&options.ceremony, credential, proof)
        .await?)
}
