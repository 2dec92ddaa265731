//! A software FIDO2 security key that behaves like a YubiKey over USB HID, for tests of the
//! `tessera` CLI's hardware-key support: sans-IO layers (`ctaphid`, `ctap2`, `device`) driven by
//! the Linux uhid driver (`uhid`) in the `tessera-virtual-key` binary; `platform` is the client's
//! side, for tests.

pub mod ctap2;
pub mod ctaphid;
pub mod device;
pub mod pin;
pub mod platform;
pub mod state;
pub mod uhid;

pub use ctap2::{Authenticator, Config, Touch};
pub use device::VirtualKey;
pub use state::State;
