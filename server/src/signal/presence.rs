//! Presence announcements, coalesced: a device that connects and disconnects in a burst is
//! announced to its circle at most a few times, and its latest state always last.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tessera_wire::signal::ServerFrame;
use uuid::Uuid;

use super::SignalRouter;
use super::connection::text;

/// The announcements a device may cause at once before the rest are coalesced.
const BURST: u32 = 4;

/// (circle, device).
type DeviceKey = (Uuid, Uuid);

/// Who announces a device's presence, and which announcements wait to be coalesced.
#[derive(Debug)]
pub struct PresenceGate {
    limiter: DefaultKeyedRateLimiter<DeviceKey>,
    /// The latest state of each device whose announcement waits: (member, online).
    waiting: Mutex<HashMap<DeviceKey, (Uuid, bool)>>,
}

impl PresenceGate {
    /// A gate letting each device cause `per_minute` announcements a minute (bursts of four).
    #[must_use]
    pub fn new(per_minute: u32) -> PresenceGate {
        let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN);
        PresenceGate {
            limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_minute(per_minute).allow_burst(burst),
            ),
            waiting: Mutex::default(),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceKey, (Uuid, bool)>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells the device's circle that it came online or went offline: at once while the device is
    /// within its rate; past it, one announcement of its latest state when the rate allows again.
    pub fn announce(
        self: &Arc<Self>,
        signals: &Arc<dyn SignalRouter>,
        (circle, member): (Uuid, Uuid),
        device: Uuid,
        online: bool,
    ) {
        let key = (circle, device);
        let mut waiting = self.waiting();
        if let Some(latest) = waiting.get_mut(&key) {
            // An announcement is already due: it will carry this state.
            *latest = (member, online);
            return;
        }
        let Err(not_until) = self.limiter.check_key(&key) else {
            drop(waiting);
            signals.broadcast(circle, device, frame(member, device, online));
            return;
        };
        waiting.insert(key, (member, online));
        drop(waiting);
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let (gate, signals) = (Arc::clone(self), Arc::clone(signals));
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let latest = gate.waiting().remove(&key);
            if let Some((member, online)) = latest {
                signals.broadcast(circle, device, frame(member, device, online));
            }
        });
    }

    /// Forgets the rates of devices not heard from lately, so that memory stays bounded.
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

fn frame(member: Uuid, device: Uuid, online: bool) -> tokio_tungstenite::tungstenite::Utf8Bytes {
    text(&ServerFrame::Presence {
        member,
        device,
        online,
    })
}
