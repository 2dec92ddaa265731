//! Signalling: one WebSocket per logged-in device; presence, opaque relays within a circle, and the commit sequencer.

pub mod connection;
pub mod hub;
pub mod io;
pub mod presence;

pub use hub::{DeliveryError, JoinError, LocalHub, Outbound, SignalRouter};
pub use presence::PresenceGate;
