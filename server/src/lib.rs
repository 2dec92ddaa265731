//! Tessera's rendezvous server: hardware-key enrollment and login (WebAuthn), invitations, the circle directory.
//!
//! The server holds only random ids, roles, public passkeys and hashes of secrets; see `docs/architecture.md`.

pub mod app;
pub mod attestation;
pub mod auth;
pub mod ceremony;
pub mod circle;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod consent;
pub mod error;
pub mod invitation;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod secret;
pub mod signal;
pub mod state;
pub mod store;
pub mod turn;

pub use app::Application;
pub use config::Config;
