//! Issuing invitations: a fresh token whose hash alone is stored, and the link and QR code shown once.

use qrcode::QrCode;
use qrcode::render::svg;
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

/// What the issuer sees once: the token, the link `<origin>/join/<token>` and its QR code.
#[must_use]
pub fn shown_once(
    origin_base: &str,
    invitation: &InvitationRecord,
    token: String,
) -> CreatedInvitation {
    let url = format!("{origin_base}/join/{token}");
    let qr_svg = QrCode::new(url.as_bytes())
        .map(|code| {
            code.render::<svg::Color<'_>>()
                .min_dimensions(240, 240)
                .quiet_zone(true)
                .build()
        })
        .unwrap_or_default();
    CreatedInvitation {
        id: invitation.id,
        token,
        url,
        expires_at: invitation.expires_at,
        qr_svg,
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
