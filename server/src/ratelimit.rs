//! In-memory rate limits: WebAuthn ceremonies per client (an IPv4 address, an IPv6 /64), invitations per admin. Nothing is persisted or logged.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use crate::client_addr::ClientAddr;
use crate::error::ApiError;

/// The server's rate limiters.
#[derive(Debug)]
pub struct RateLimits {
    ceremonies: DefaultKeyedRateLimiter<IpAddr>,
    invitations: DefaultKeyedRateLimiter<Uuid>,
}

fn per_minute(count: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(count.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    /// Limits of `ceremonies` per client address and `invitations` per admin, each per minute.
    #[must_use]
    pub fn new(ceremonies: u32, invitations: u32) -> RateLimits {
        RateLimits {
            ceremonies: DefaultKeyedRateLimiter::keyed(per_minute(ceremonies)),
            invitations: DefaultKeyedRateLimiter::keyed(per_minute(invitations)),
        }
    }

    /// Counts one ceremony step from this client (its IPv4 address or IPv6 /64).
    ///
    /// # Errors
    /// [`ApiError::RateLimited`] past the limit.
    pub fn ceremony(&self, client: ClientAddr) -> Result<(), ApiError> {
        self.ceremonies
            .check_key(&client.subscriber())
            .map_err(|_| ApiError::RateLimited)
    }

    /// Counts one invitation issued by this admin.
    ///
    /// # Errors
    /// [`ApiError::RateLimited`] past the limit.
    pub fn invitation(&self, admin: Uuid) -> Result<(), ApiError> {
        self.invitations
            .check_key(&admin)
            .map_err(|_| ApiError::RateLimited)
    }

    /// Forgets idle keys so that memory stays bounded.
    pub fn shrink(&self) {
        self.ceremonies.retain_recent();
        self.ceremonies.shrink_to_fit();
        self.invitations.retain_recent();
        self.invitations.shrink_to_fit();
    }
}
