//! Who is online where, and delivery to them: the in-process router. A router over NATS for several
//! server nodes implements the same [`SignalRouter`] trait.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tessera_wire::signal::{FrameErrorCode, PeerDevice};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::connection::error_frame;
use crate::secret::Digest;

/// What a connection's writer sends to its device. One pointer wide: the queue allocates its slots
/// 32 at a time for every connection, so the slot size is memory per idle connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, serialised once (shared among the recipients of a broadcast).
    Text(Arc<Utf8Bytes>),
    /// Send this last frame, then close.
    Close(Arc<Utf8Bytes>),
}

impl Outbound {
    /// A text frame.
    #[must_use]
    pub fn text(frame: Utf8Bytes) -> Outbound {
        Outbound::Text(Arc::new(frame))
    }

    /// A last frame before closing.
    #[must_use]
    pub fn close(frame: Utf8Bytes) -> Outbound {
        Outbound::Close(Arc::new(frame))
    }
}

/// A connected device as the router knows it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// A number unique to this connection (a device may reconnect).
    pub serial: u64,
    /// The device's circle.
    pub circle: Uuid,
    /// The device's member.
    pub member: Uuid,
    /// The device.
    pub device: Uuid,
    /// The digest of the session the connection was opened with.
    pub session: Digest,
    /// The connection's bounded outbound queue.
    pub outbound: mpsc::Sender<Outbound>,
    /// Cancelled to drop the connection at once.
    pub cancel: CancellationToken,
    /// Cancelled when the member is revoked or the session ends: the writer says which ahead of
    /// anything queued (`revoked` when `member_revoked` is set, else `session_ended`), then closes.
    pub revoked: CancellationToken,
    /// Set before `revoked` is cancelled for the member's revocation (not only the session's end).
    pub member_revoked: Arc<AtomicBool>,
}

impl Endpoint {
    /// Queues a frame for this device; a full queue means a slow consumer, which is dropped.
    ///
    /// # Errors
    /// [`DeliveryError::PeerUnavailable`] when the queue was full.
    pub fn push(&self, frame: Outbound) -> Result<(), DeliveryError> {
        self.outbound.try_send(frame).map_err(|_| {
            self.cancel.cancel();
            DeliveryError::PeerUnavailable
        })
    }
}

/// Why a device may not join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The member has too many connections.
    #[error("too many connections for this member")]
    TooManyConnections,
    /// The device id is another member's (the store's binding keeps this from happening; the
    /// router checks it again).
    #[error("this device id belongs to another member")]
    DeviceTaken,
}

/// Why a frame could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// No such device online in the sender's circle.
    #[error("no such device is online in your circle")]
    UnknownDevice,
    /// The device does not keep up; it was disconnected.
    #[error("the device does not keep up and was disconnected")]
    PeerUnavailable,
}

/// Routes frames between the devices of a circle.
pub trait SignalRouter: Send + Sync + 'static {
    /// A new serial for a connection.
    fn next_serial(&self) -> u64;
    /// Registers a device, replacing an earlier connection of the same member's device. Its first
    /// frame, built by `hello` from the circle's other online devices, is queued before any other.
    ///
    /// # Errors
    /// See [`JoinError`].
    fn join(
        &self,
        endpoint: Endpoint,
        max_per_member: usize,
        hello: &dyn Fn(Vec<PeerDevice>) -> Utf8Bytes,
    ) -> Result<(), JoinError>;
    /// Checks, without joining, whether a member's device could join its circle now.
    ///
    /// # Errors
    /// See [`JoinError`].
    fn may_join(
        &self,
        circle_member: (Uuid, Uuid),
        device: Uuid,
        max_per_member: usize,
    ) -> Result<(), JoinError>;
    /// Removes a connection (if it is still the device's current one); true if it was.
    fn leave(&self, circle: Uuid, device: Uuid, serial: u64) -> bool;
    /// Delivers a frame to one device of the circle.
    ///
    /// # Errors
    /// See [`DeliveryError`].
    fn deliver(&self, circle: Uuid, to: Uuid, frame: Utf8Bytes) -> Result<(), DeliveryError>;
    /// Delivers a frame to every online device of the circle but one; returns how many got it.
    fn broadcast(&self, circle: Uuid, except: Uuid, frame: Utf8Bytes) -> usize;
    /// Tells every connection of the member that it was revoked, and closes them.
    fn revoke_member(&self, member: Uuid);
    /// Tells every connection opened with the session that it ended, and closes them.
    fn revoke_session(&self, session: &Digest);
    /// How many devices are online.
    fn online(&self) -> usize;
}

/// A device as the router knows it: (circle, device). A device id means nothing outside its
/// circle, so the same id in two circles is two devices, and neither can see or displace the other.
type DeviceKey = (Uuid, Uuid);

/// The devices connected to this process: by circle and device, the device ids of each circle,
/// and the devices of each member.
#[derive(Debug, Default)]
struct Connected {
    devices: HashMap<DeviceKey, Endpoint>,
    circles: HashMap<Uuid, HashSet<Uuid>>,
    members: HashMap<Uuid, HashSet<DeviceKey>>,
}

/// The router of one server process.
#[derive(Debug, Default)]
pub struct LocalHub {
    connected: RwLock<Connected>,
    serials: AtomicU64,
}

impl LocalHub {
    /// For routing: many at once.
    fn connected(&self) -> RwLockReadGuard<'_, Connected> {
        self.connected
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// For joining and leaving.
    fn connected_mut(&self) -> RwLockWriteGuard<'_, Connected> {
        self.connected
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether a member's device may connect now.
fn check_join(
    connected: &Connected,
    (circle, member): (Uuid, Uuid),
    device: Uuid,
    max_per_member: usize,
) -> Result<(), JoinError> {
    let replacing = match connected.devices.get(&(circle, device)) {
        Some(existing) if existing.member != member => return Err(JoinError::DeviceTaken),
        Some(_) => 1,
        None => 0,
    };
    let open = connected.members.get(&member).map_or(0, HashSet::len);
    if open - replacing >= max_per_member {
        return Err(JoinError::TooManyConnections);
    }
    Ok(())
}

impl SignalRouter for LocalHub {
    fn next_serial(&self) -> u64 {
        self.serials.fetch_add(1, Ordering::Relaxed)
    }

    fn may_join(
        &self,
        circle_member: (Uuid, Uuid),
        device: Uuid,
        max_per_member: usize,
    ) -> Result<(), JoinError> {
        check_join(&self.connected(), circle_member, device, max_per_member)
    }

    fn join(
        &self,
        endpoint: Endpoint,
        max_per_member: usize,
        hello: &dyn Fn(Vec<PeerDevice>) -> Utf8Bytes,
    ) -> Result<(), JoinError> {
        let mut connected = self.connected_mut();
        let key = (endpoint.circle, endpoint.device);
        check_join(
            &connected,
            (endpoint.circle, endpoint.member),
            endpoint.device,
            max_per_member,
        )?;
        if let Some(previous) = connected.devices.remove(&key) {
            let _ = previous.push(Outbound::close(error_frame(
                FrameErrorCode::Replaced,
                "this device connected again elsewhere",
            )));
        }
        let peers = connected
            .circles
            .get(&endpoint.circle)
            .into_iter()
            .flatten()
            .filter(|device| **device != endpoint.device)
            .filter_map(|device| connected.devices.get(&(endpoint.circle, *device)))
            .map(|e| PeerDevice {
                member: e.member,
                device: e.device,
            })
            .collect();
        // Queued under the lock: no presence or relay can overtake it.
        let _ = endpoint.push(Outbound::text(hello(peers)));
        connected
            .circles
            .entry(endpoint.circle)
            .or_default()
            .insert(endpoint.device);
        connected
            .members
            .entry(endpoint.member)
            .or_default()
            .insert(key);
        connected.devices.insert(key, endpoint);
        Ok(())
    }

    fn leave(&self, circle: Uuid, device: Uuid, serial: u64) -> bool {
        let mut connected = self.connected_mut();
        let key = (circle, device);
        let Some(endpoint) = connected.devices.get(&key) else {
            return false;
        };
        if endpoint.serial != serial {
            return false;
        }
        let member = endpoint.member;
        connected.devices.remove(&key);
        if let Some(devices) = connected.circles.get_mut(&circle) {
            devices.remove(&device);
            if devices.is_empty() {
                connected.circles.remove(&circle);
            }
        }
        if let Some(devices) = connected.members.get_mut(&member) {
            devices.remove(&key);
            if devices.is_empty() {
                connected.members.remove(&member);
            }
        }
        true
    }

    fn deliver(&self, circle: Uuid, to: Uuid, frame: Utf8Bytes) -> Result<(), DeliveryError> {
        let connected = self.connected();
        let endpoint = connected
            .devices
            .get(&(circle, to))
            .ok_or(DeliveryError::UnknownDevice)?;
        endpoint.push(Outbound::text(frame))
    }

    fn broadcast(&self, circle: Uuid, except: Uuid, frame: Utf8Bytes) -> usize {
        let frame = Arc::new(frame);
        let connected = self.connected();
        connected
            .circles
            .get(&circle)
            .into_iter()
            .flatten()
            .filter(|device| **device != except)
            .filter_map(|device| connected.devices.get(&(circle, *device)))
            .filter(|endpoint| endpoint.push(Outbound::Text(frame.clone())).is_ok())
            .count()
    }

    fn revoke_member(&self, member: Uuid) {
        let connected = self.connected();
        for device in connected.members.get(&member).into_iter().flatten() {
            if let Some(endpoint) = connected.devices.get(device) {
                endpoint.member_revoked.store(true, Ordering::SeqCst);
                endpoint.revoked.cancel();
            }
        }
    }

    fn revoke_session(&self, session: &Digest) {
        let connected = self.connected();
        for endpoint in connected.devices.values().filter(|e| &e.session == session) {
            endpoint.revoked.cancel();
        }
    }

    fn online(&self) -> usize {
        self.connected().devices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(
        hub: &LocalHub,
        circle: Uuid,
        member: Uuid,
        device: Uuid,
    ) -> (Endpoint, mpsc::Receiver<Outbound>) {
        let (outbound, rx) = mpsc::channel(2);
        let endpoint = Endpoint {
            serial: hub.next_serial(),
            circle,
            member,
            device,
            session: [0; 32],
            outbound,
            cancel: CancellationToken::new(),
            revoked: CancellationToken::new(),
            member_revoked: Arc::default(),
        };
        (endpoint, rx)
    }

    #[test]
    fn delivery_stays_inside_the_circle_and_a_full_queue_drops_the_peer() {
        let hub = LocalHub::default();
        let (circle, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (a, _a_rx) = endpoint(&hub, circle, Uuid::new_v4(), Uuid::new_v4());
        let (b, mut b_rx) = endpoint(&hub, circle, Uuid::new_v4(), Uuid::new_v4());
        let (c, _c_rx) = endpoint(&hub, other, Uuid::new_v4(), Uuid::new_v4());
        let (b_device, b_cancel, c_device) = (b.device, b.cancel.clone(), c.device);
        let hello = |peers: Vec<PeerDevice>| Utf8Bytes::from(peers.len().to_string());
        hub.join(a.clone(), 8, &hello).expect("a joins");
        hub.join(b, 8, &hello).expect("b joins");
        assert!(
            matches!(b_rx.try_recv(), Ok(Outbound::Text(t)) if t.as_str() == "1"),
            "b's hello comes first and names a"
        );
        hub.join(c, 8, &hello).expect("c joins");
        assert_eq!(
            hub.deliver(circle, c_device, Utf8Bytes::from_static("x")),
            Err(DeliveryError::UnknownDevice)
        );
        hub.deliver(circle, b_device, Utf8Bytes::from_static("1"))
            .expect("queued");
        assert!(matches!(b_rx.try_recv(), Ok(Outbound::Text(t)) if t.as_str() == "1"));
        hub.deliver(circle, b_device, Utf8Bytes::from_static("2"))
            .expect("queued");
        hub.deliver(circle, b_device, Utf8Bytes::from_static("3"))
            .expect("queued");
        assert_eq!(
            hub.deliver(circle, b_device, Utf8Bytes::from_static("4")),
            Err(DeliveryError::PeerUnavailable)
        );
        assert!(b_cancel.is_cancelled(), "a slow consumer is dropped");
        assert_eq!(
            hub.broadcast(circle, a.device, Utf8Bytes::from_static("x")),
            0
        );
    }

    #[test]
    fn connections_per_member_are_bounded_and_devices_are_not_shared() {
        let hub = LocalHub::default();
        let (circle, member) = (Uuid::new_v4(), Uuid::new_v4());
        let (first, _rx1) = endpoint(&hub, circle, member, Uuid::new_v4());
        let (second, _rx2) = endpoint(&hub, circle, member, Uuid::new_v4());
        let first_device = first.device;
        let hello = |_: Vec<PeerDevice>| Utf8Bytes::from_static("hello");
        let revoked = first.revoked.clone();
        hub.join(first, 1, &hello).expect("first");
        assert_eq!(
            hub.join(second, 1, &hello),
            Err(JoinError::TooManyConnections)
        );
        let (intruder, _rx3) = endpoint(&hub, circle, Uuid::new_v4(), first_device);
        assert_eq!(hub.join(intruder, 8, &hello), Err(JoinError::DeviceTaken));
        let (elsewhere, _rx5) = endpoint(&hub, Uuid::new_v4(), Uuid::new_v4(), first_device);
        let (elsewhere_circle, elsewhere_serial) = (elsewhere.circle, elsewhere.serial);
        hub.join(elsewhere, 8, &hello)
            .expect("the same id in another circle is another device");
        assert!(hub.leave(elsewhere_circle, first_device, elsewhere_serial));
        hub.revoke_member(member);
        assert!(revoked.is_cancelled(), "revocation reaches the connection");
        let (again, _rx4) = endpoint(&hub, circle, member, first_device);
        let serial = again.serial;
        hub.join(again, 1, &hello)
            .expect("the same device reconnects and replaces");
        assert_eq!(hub.online(), 1);
        assert!(
            !hub.leave(circle, first_device, 0),
            "the replaced connection's leave is ignored"
        );
        assert!(hub.leave(circle, first_device, serial));
        assert_eq!(hub.online(), 0);
    }
}
