//! The Tessera member's native side: the typed client of the server's API, the self-reconnecting
//! signalling client, WebRTC data channels (str0m), and (re-exported) the sans-IO engine shared
//! with the browser.

pub use tessera_engine::{delivery, identity, invitation, trust};
pub use tessera_softkey as authenticator;

pub mod api;
pub mod device;
pub mod files;
pub mod gather;
pub mod membership;
pub mod rtc;
pub mod security_key;
pub mod signal;
pub mod store;
pub mod writer;
