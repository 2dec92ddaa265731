//! The Tessera member's engine, sans-IO and shared by the native CLI and the browser: a device key
//! certified by the member's hardware key, the circle's MLS group ordered by the server's
//! sequencer, peer-link negotiation protected by MLS, and reliable delivery with an outbox.

pub mod carry;
pub mod changes;
pub mod codec;
mod crypto;
pub mod decision;
pub mod delivery;
mod engine;
pub mod files;
pub mod history;
pub mod identity;
pub mod invitation;
mod mls_store;
pub mod names;
mod pacer;
pub mod payload;
pub mod pieces;
pub mod provider;
pub mod renewal;
pub mod roster;
pub mod safety;
pub mod search;
pub mod signed;
pub mod trust;

pub use engine::{
    CIPHERSUITE, ChatMessage, DeviceKey, DeviceView, Engine, EngineConfig, EngineError, Event,
    GroupDeviceView, HistoryChange, IceOutcome, LATEST_SENT_AT, LinkCommand, Output, StopReason,
    StoreWrite, StoredDevice, StoredFile, Turn, unix_ms,
};
