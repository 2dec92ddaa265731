//! Integration tests of the rendezvous server's HTTP API: the real server on port 0, driven by the
//! real client and software authenticators, through every flow and every abuse case.

mod assets;
mod attestation;
mod authorization;
mod bodies;
mod connections;
mod consent;
mod enrollment;
mod invitations;
mod login;
mod passkeys;
mod privacy;
mod rate_limits;
mod renewal;
mod security_key;
mod signalling;
mod support;
mod turn;
