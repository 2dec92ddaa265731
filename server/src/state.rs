//! What every handler shares: the store, the WebAuthn relying party, the clock, the limits.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webauthn_rs::prelude::{AttestationCaList, Webauthn};

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::signal::{PresenceGate, SignalRouter};
use crate::store::Store;

/// The application's shared state (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// The relying party: origin and RP id checks, challenge generation.
    pub webauthn: Arc<Webauthn>,
    /// The vendors' roots and the models they vouch for, when only listed models may enroll.
    pub attestation: Option<Arc<AttestationCaList>>,
    /// Now.
    pub clock: Arc<Clock>,
    /// Settings.
    pub config: Arc<Config>,
    /// In-memory rate limiters.
    pub limits: Arc<RateLimits>,
    /// Who is online, and delivery to them.
    pub signals: Arc<dyn SignalRouter>,
    /// Presence announcements, coalesced when a device flaps.
    pub presence: Arc<PresenceGate>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server stops: every signalling connection (its token is a child of
    /// this one) says goodbye and closes.
    pub shutdown: CancellationToken,
    /// The signalling connections' tasks, which the server waits for (briefly) when it stops.
    pub connections: TaskTracker,
}
