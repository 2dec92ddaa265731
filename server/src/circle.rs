//! Creating a circle: the circle row and its one-time admin invitation, issued by the operator.

use tessera_wire::{CreatedInvitation, Role};
use uuid::Uuid;

use crate::invitation;
use crate::store::{InvitationRecord, Store, StoreError};

/// How long the operator's admin invitation of a new circle stays valid.
pub const FIRST_INVITATION_TTL_SECS: i64 = 24 * 3600;

/// Creates a circle and its first admin invitation (valid 24 h); returns the invitation, token included.
///
/// # Errors
/// When the store fails.
pub async fn create_circle(
    store: &dyn Store,
    origin_base: &str,
    now: i64,
) -> Result<CreatedInvitation, StoreError> {
    let circle = Uuid::new_v4();
    let invitation = InvitationRecord {
        id: Uuid::new_v4(),
        circle,
        role: Role::Admin,
        member: None,
        created_by: None,
        created_at: now,
        expires_at: now + FIRST_INVITATION_TTL_SECS,
        // The founder's own key becomes the circle's root: nobody signs their invitation.
        statement: None,
    };
    // The circle and its invitation are written together: a circle never exists without a way in.
    let (token, hash) = invitation::new_token();
    store
        .create_circle(circle, now, (&invitation, &hash))
        .await?;
    Ok(invitation::shown_once(origin_base, &invitation, token))
}
