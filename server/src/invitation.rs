//! Issuing invitations: a fresh token whose hash alone is stored, and the link shown once.

use tessera_wire::CreatedInvitation;

use crate::secret::{self, Digest};
use crate::store::{InvitationRecord, Store, StoreError};

/// A fresh invitation token and the hash to store.
#[must_use]
pub fn new_token() -> (String, Digest) {
    let token = secret::new_token();
    let hash = secret::digest(&token);
    (token, hash)
}

/// What the issuer sees once: the token and the link `<origin>/join/<token>` (the issuing device
/// adds the fragment the server never sees; the operator's first link has none).
#[must_use]
pub fn shown_once(
    origin_base: &str,
    invitation: &InvitationRecord,
    token: String,
) -> CreatedInvitation {
    let url = format!("{origin_base}/join/{token}");
    CreatedInvitation {
        id: invitation.id,
        token,
        url,
        expires_at: invitation.expires_at,
    }
}

/// Stores a new invitation and returns what its issuer sees once.
///
/// # Errors
/// When the store fails.
pub async fn issue(
    store: &dyn Store,
    origin_base: &str,
    invitation: &InvitationRecord,
) -> Result<CreatedInvitation, StoreError> {
    let (token, hash) = new_token();
    store.insert_invitation(invitation, &hash).await?;
    Ok(shown_once(origin_base, invitation, token))
}
