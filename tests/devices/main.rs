//! Devices as members use them: peer links over real UDP, and `tessera` CLI processes with the
//! real server, each test inside a network namespace of its own.

mod chaos;
mod circle;
mod files;
#[cfg(feature = "vm")]
mod hardware_key;
mod hostile;
mod links;
mod relay;
mod support;
mod turn;
