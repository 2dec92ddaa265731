//! placeholder
pub mod authenticator;
