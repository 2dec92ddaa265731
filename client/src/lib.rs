//! The Tessera member's side: a software authenticator for headless use and tests, a typed client of the server's API, and the self-reconnecting signalling client.
//!
//! The MLS engine, the signalling client and the `tessera` CLI follow in later issues.

pub mod api;
pub mod authenticator;
pub mod delivery;
pub mod identity;
pub mod signal;
