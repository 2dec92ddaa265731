//! What the fuzz targets share: a device already in a group of two, as its store keeps it, built
//! once with the engine's own circle simulation and restored for every input.

use std::sync::OnceLock;

use tessera_engine::{Engine, StoredDevice};
use tessera_wire::Role;
use uuid::Uuid;
use web_time::Instant;

/// The engine tests' simulated circle (server, directory, links), used here to build real state.
#[path = "../../../client/engine/tests/sim/mod.rs"]
pub mod sim;

/// A device of a group of two with a link up to its peer, as stored.
pub struct GroupDevice {
    /// Its store.
    pub store: StoredDevice,
    /// Its member.
    pub member: Uuid,
    /// The other device of the group.
    pub peer: Uuid,
    /// The peer's member.
    pub peer_member: Uuid,
    /// Signal payloads the simulated server relayed while the group formed (seeds).
    pub payloads: Vec<String>,
    /// Link packets the peer sent this device with a message (seeds).
    pub packets: Vec<Vec<u8>>,
}

/// The device every target starts from (made once per process).
pub fn group_device() -> &'static GroupDevice {
    static DEVICE: OnceLock<GroupDevice> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let mut sim = sim::Sim::new(7);
        let a = sim.member(Role::Admin, "Ada");
        sim.run(5);
        let b = sim.member(Role::Member, "Bea");
        sim.run(40);
        assert!(
            sim.engine(a).in_group() && sim.engine(a).link_is_up(b),
            "the group formed"
        );
        sim.send(b, "hello");
        let packets = sim
            .in_flight
            .iter()
            .filter(|(from, to, _)| (*from, *to) == (b, a))
            .map(|(_, _, bytes)| bytes.clone())
            .collect();
        sim.run(10);
        GroupDevice {
            store: sim.devices[&a].store.clone(),
            member: sim.engine(a).member(),
            peer: b,
            peer_member: sim.engine(b).member(),
            payloads: sim.relayed.clone(),
            packets,
        }
    })
}

/// The group device, restored from its store as after a restart.
pub fn restored() -> Engine {
    Engine::restore(sim::config(), group_device().store.clone())
        .expect("the stored device restores")
}

/// Takes the engine's turns until it has none, as a driver does (acting on none of them).
pub fn drain(engine: &mut Engine) {
    for _ in 0..1_000 {
        match engine.next_turn() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// A clock for the engine.
pub fn now() -> Instant {
    Instant::now()
}
