//! The Tessera member's side: a software authenticator for headless use and tests, and a typed client of the server's API.
//!
//! The MLS engine, the signalling client and the `tessera` CLI follow in later issues.

pub mod api;
pub mod authenticator;
