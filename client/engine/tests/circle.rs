//! The sans-IO engine with several in-memory devices: a simulated relay with the sequencer's
//! rules (first commit per slot wins), simulated data channels that can lose and reorder packets,
//! simulated time. The real server and real WebRTC are exercised by the cross-component tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage, MlsMessageOut};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::types::SignatureScheme;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::value::to_raw_value;
use tessera_engine::authenticator::SoftKey;
use tessera_engine::identity::certify_with_soft_key;
use tessera_engine::payload::{RtcSignal, SignalPayload};
use tessera_engine::{DeviceKey, Engine, EngineConfig, Event, LinkCommand, Output};
use tessera_wire::signal::{ClientFrame, PeerDevice, ServerFrame};
use tessera_wire::{MemberInfo, PublicKeyInfo, Role};
use uuid::Uuid;
use web_time::{Duration, Instant};

const ORIGIN: &str = "http://localhost:8080";

fn config() -> EngineConfig {
    let mut config = EngineConfig::new(ORIGIN, "localhost");
    config.delivery.resend_after = Duration::from_millis(300);
    config.link_timeout = Duration::from_millis(500);
    config
}

/// A member registered through real webauthn-rs with a software key.
fn new_member(role: Role) -> (SoftKey, MemberInfo) {
    let rp_origin = url::Url::parse(ORIGIN).expect("origin");
    let webauthn = webauthn_rs::prelude::WebauthnBuilder::new("localhost", &rp_origin)
        .and_then(webauthn_rs::prelude::WebauthnBuilder::build)
        .expect("relying party");
    let id = Uuid::new_v4();
    let (options, _state) = webauthn
        .start_passkey_registration(id, "tessera", "tessera", None)
        .expect("start");
    let (key, _credential) = SoftKey::register(&options, ORIGIN).expect("register");
    let info = MemberInfo {
        id,
        role,
        created_at: 0,
        passkeys: vec![PublicKeyInfo {
            credential_id: URL_SAFE_NO_PAD.encode(key.credential_id()),
            alg: "ES256".into(),
            public_key: URL_SAFE_NO_PAD.encode(key.public_key_sec1()),
        }],
    };
    (key, info)
}

struct Device {
    engine: Engine,
    member: Uuid,
    connected: bool,
    received: Vec<(Uuid, String)>,
    delivered: BTreeSet<(Uuid, Uuid)>,
    refused: Vec<String>,
    removed: bool,
    store: (Vec<u8>, HashMap<Vec<u8>, Vec<u8>>),
}

/// How the simulated relay treats payloads: honestly, or as an attacker in the middle.
type Tamper = Box<dyn FnMut(&str) -> Option<String>>;

struct Sim {
    now: Instant,
    devices: BTreeMap<Uuid, Device>,
    directory: Vec<MemberInfo>,
    slot: u64,
    frames: VecDeque<(Uuid, ServerFrame)>,
    links: BTreeSet<(Uuid, Uuid)>,
    in_flight: Vec<(Uuid, Uuid, Vec<u8>)>,
    rng: StdRng,
    loss: f64,
    tamper: Option<Tamper>,
    relayed: Vec<String>,
}

fn pair(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            now: Instant::now(),
            devices: BTreeMap::new(),
            directory: Vec::new(),
            slot: 0,
            frames: VecDeque::new(),
            links: BTreeSet::new(),
            in_flight: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            tamper: None,
            relayed: Vec::new(),
        }
    }

    /// A new member with one device, connected.
    fn member(&mut self, role: Role, name: &str) -> Uuid {
        let (mut key, info) = new_member(role);
        let member = info.id;
        self.directory.push(info);
        self.device(&mut key, member, name)
    }

    /// A new device of `member`, certified by its key, connected.
    fn device(&mut self, key: &mut SoftKey, member: Uuid, name: &str) -> Uuid {
        let device = Uuid::new_v4();
        let device_key = DeviceKey::generate().expect("device key");
        let certificate =
            certify_with_soft_key(key, ORIGIN, member, device, device_key.public()).expect("cert");
        let mut engine =
            Engine::new(config(), member, device, device_key, certificate).expect("engine");
        engine
            .set_display_name(self.now, name)
            .expect("display name");
        self.devices.insert(
            device,
            Device {
                engine,
                member,
                connected: false,
                received: Vec::new(),
                delivered: BTreeSet::new(),
                refused: Vec::new(),
                removed: false,
                store: (Vec::new(), HashMap::new()),
            },
        );
        self.connect(device);
        device
    }

    fn connect(&mut self, device: Uuid) {
        let peers: Vec<PeerDevice> = self
            .devices
            .iter()
            .filter(|(d, dev)| **d != device && dev.connected)
            .map(|(d, dev)| PeerDevice {
                member: dev.member,
                device: *d,
            })
            .collect();
        let member = self.devices[&device].member;
        for peer in &peers {
            self.frames.push_back((
                peer.device,
                ServerFrame::Presence {
                    member,
                    device,
                    online: true,
                },
            ));
        }
        self.devices.get_mut(&device).expect("device").connected = true;
        self.frames.push_back((
            device,
            ServerFrame::Hello {
                member,
                device,
                peers,
                epoch: self.slot,
            },
        ));
    }

    fn disconnect(&mut self, device: Uuid) {
        let dev = self.devices.get_mut(&device).expect("device");
        dev.connected = false;
        let member = dev.member;
        dev.engine.handle_disconnected(self.now);
        let others: Vec<Uuid> = self
            .devices
            .iter()
            .filter(|(d, dev)| **d != device && dev.connected)
            .map(|(d, _)| *d)
            .collect();
        for other in others {
            self.frames.push_back((
                other,
                ServerFrame::Presence {
                    member,
                    device,
                    online: false,
                },
            ));
        }
    }

    /// Takes the device off the network entirely: signalling and every link.
    fn go_offline(&mut self, device: Uuid) {
        self.disconnect(device);
        let gone: Vec<(Uuid, Uuid)> = self
            .links
            .iter()
            .copied()
            .filter(|(a, b)| *a == device || *b == device)
            .collect();
        for (a, b) in gone {
            self.links.remove(&(a, b));
            let now = self.now;
            for (x, y) in [(a, b), (b, a)] {
                if let Some(dev) = self.devices.get_mut(&x) {
                    dev.engine.handle_link_down(now, y);
                }
            }
        }
    }

    fn relay(&mut self, from: Uuid, frame: ClientFrame) {
        let Some(sender) = self.devices.get(&from) else {
            return;
        };
        if !sender.connected {
            return;
        }
        let member = sender.member;
        match frame {
            ClientFrame::Signal { to, payload } => {
                if !self.devices.get(&to).is_some_and(|d| d.connected) {
                    return;
                }
                let mut text = payload.get().to_owned();
                if let Some(tamper) = self.tamper.as_mut()
                    && let Some(changed) = tamper(&text)
                {
                    text = changed;
                }
                self.relayed.push(text.clone());
                let payload = serde_json::value::RawValue::from_string(text).expect("json");
                self.frames.push_back((
                    to,
                    ServerFrame::Signal {
                        from,
                        member,
                        payload,
                    },
                ));
            }
            ClientFrame::Commit { epoch, payload } => {
                self.relayed.push(payload.get().to_owned());
                if epoch != self.slot {
                    self.frames.push_back((
                        from,
                        ServerFrame::CommitResult {
                            epoch,
                            accepted: false,
                        },
                    ));
                    return;
                }
                self.slot += 1;
                let others: Vec<Uuid> = self
                    .devices
                    .iter()
                    .filter(|(d, dev)| **d != from && dev.connected)
                    .map(|(d, _)| *d)
                    .collect();
                for other in others {
                    let payload = to_raw_value(&payload).expect("json");
                    self.frames.push_back((
                        other,
                        ServerFrame::Commit {
                            from,
                            member,
                            epoch,
                            payload,
                        },
                    ));
                }
                self.frames.push_back((
                    from,
                    ServerFrame::CommitResult {
                        epoch,
                        accepted: true,
                    },
                ));
            }
        }
    }

    /// Acts on one device's outputs, as its driver would.
    fn drain(&mut self, device: Uuid) {
        loop {
            let now = self.now;
            let Some(dev) = self.devices.get_mut(&device) else {
                return;
            };
            if let Ok(Some(snapshot)) = dev.engine.take_snapshot() {
                dev.store.0 = snapshot.state;
                for (k, v) in snapshot.mls {
                    match v {
                        Some(v) => dev.store.1.insert(k, v),
                        None => dev.store.1.remove(&k),
                    };
                }
            }
            let Some(output) = dev.engine.poll_output() else {
                return;
            };
            match output {
                Output::Send(frame) => self.relay(device, frame),
                Output::FetchDirectory => {
                    let directory = self.directory.clone();
                    dev.engine.handle_directory(now, directory);
                }
                Output::Event(event) => match event {
                    Event::Message {
                        message,
                        outgoing: false,
                    } => dev.received.push((message.device, message.text)),
                    Event::Delivered { id, device } => {
                        dev.delivered.insert((id, device));
                    }
                    Event::Refused { what, reason } => {
                        dev.refused.push(format!("{what}: {reason}"))
                    }
                    Event::Removed => dev.removed = true,
                    _ => {}
                },
                Output::Link(LinkCommand::Open { device: peer }) => {
                    dev.engine
                        .send_rtc(
                            now,
                            peer,
                            RtcSignal::Offer {
                                sdp: format!("offer {device}"),
                            },
                        )
                        .expect("offer");
                }
                Output::Link(LinkCommand::Rtc {
                    device: peer,
                    signal,
                }) => match signal {
                    RtcSignal::Offer { .. } => {
                        dev.engine
                            .send_rtc(
                                now,
                                peer,
                                RtcSignal::Answer {
                                    sdp: format!("answer {device}"),
                                },
                            )
                            .expect("answer");
                    }
                    RtcSignal::Answer { .. } => {
                        self.links.insert(pair(device, peer));
                        dev.engine.handle_link_up(now, peer);
                        if let Some(other) = self.devices.get_mut(&peer) {
                            other.engine.handle_link_up(now, device);
                        }
                    }
                    RtcSignal::Candidate { .. } => {}
                },
                Output::Link(LinkCommand::Data {
                    device: peer,
                    bytes,
                }) => {
                    if self.links.contains(&pair(device, peer)) {
                        self.in_flight.push((device, peer, bytes));
                    }
                }
                Output::Link(LinkCommand::Close { device: peer }) => {
                    if self.links.remove(&pair(device, peer))
                        && let Some(other) = self.devices.get_mut(&peer)
                    {
                        other.engine.handle_link_down(now, device);
                    }
                }
            }
        }
    }

    /// Runs the circle for `rounds` steps of 50 ms.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let ids: Vec<Uuid> = self.devices.keys().copied().collect();
            for id in &ids {
                self.drain(*id);
            }
            while let Some((to, frame)) = self.frames.pop_front() {
                let now = self.now;
                if let Some(dev) = self.devices.get_mut(&to)
                    && dev.connected
                {
                    dev.engine.handle_frame(now, frame);
                }
                self.drain(to);
            }
            // Link packets arrive in any order; some are lost.
            let mut packets = std::mem::take(&mut self.in_flight);
            for i in (1..packets.len()).rev() {
                let j = self.rng.gen_range(0..=i);
                packets.swap(i, j);
            }
            for (from, to, bytes) in packets {
                if self.rng.gen_bool(self.loss) || !self.links.contains(&pair(from, to)) {
                    continue;
                }
                let now = self.now;
                if let Some(dev) = self.devices.get_mut(&to) {
                    dev.engine.handle_link_data(now, from, &bytes);
                }
                self.drain(to);
            }
            self.now += Duration::from_millis(50);
            for id in &ids {
                let now = self.now;
                if let Some(dev) = self.devices.get_mut(id)
                    && dev.engine.poll_timeout().is_some_and(|t| t <= now)
                {
                    dev.engine.handle_timeout(now);
                }
            }
        }
    }

    /// Hands `to` a signal frame as a relay in the middle would forge it.
    fn inject_signal(
        &mut self,
        to: Uuid,
        from: Uuid,
        member: Uuid,
        payload: Box<serde_json::value::RawValue>,
    ) {
        let now = self.now;
        let frame = ServerFrame::Signal {
            from,
            member,
            payload,
        };
        self.devices
            .get_mut(&to)
            .expect("device")
            .engine
            .handle_frame(now, frame);
        self.drain(to);
    }

    fn engine(&self, device: Uuid) -> &Engine {
        &self.devices[&device].engine
    }

    fn send(&mut self, device: Uuid, text: &str) -> Uuid {
        let now = self.now;
        let id = self
            .devices
            .get_mut(&device)
            .expect("device")
            .engine
            .send_text(now, text)
            .expect("send");
        self.drain(device);
        id
    }

    fn received(&self, device: Uuid) -> Vec<(Uuid, String)> {
        self.devices[&device].received.clone()
    }

    fn refused(&self, device: Uuid) -> Vec<String> {
        self.devices[&device].refused.clone()
    }

    fn assert_one_group(&self, devices: &[Uuid]) {
        let epochs: BTreeSet<Option<u64>> =
            devices.iter().map(|d| self.engine(*d).epoch()).collect();
        if epochs.len() != 1 {
            for d in devices {
                eprintln!(
                    "{d}: epoch {:?} refused {:?}",
                    self.engine(*d).epoch(),
                    self.refused(*d)
                );
            }
        }
        assert_eq!(epochs.len(), 1, "devices disagree on the epoch: {epochs:?}");
        for d in devices {
            let members: BTreeSet<Uuid> = self.engine(*d).group_devices().into_keys().collect();
            assert_eq!(
                members,
                devices.iter().copied().collect(),
                "{d} sees another group"
            );
        }
    }
}

/// An admin, then two members: all three end in one group with links between every pair.
fn circle_of_three(seed: u64) -> (Sim, [Uuid; 3]) {
    let mut sim = Sim::new(seed);
    let a = sim.member(Role::Admin, "Ada L.");
    sim.run(5);
    assert!(
        sim.engine(a).in_group(),
        "the first admin device creates the group"
    );
    let b = sim.member(Role::Member, "Bea K.");
    let c = sim.member(Role::Member, "Cy D.");
    sim.run(40);
    sim.assert_one_group(&[a, b, c]);
    for (x, y) in [(a, b), (a, c), (b, c)] {
        assert!(sim.engine(x).link_is_up(y), "no link between {x} and {y}");
    }
    (sim, [a, b, c])
}

#[test]
fn three_devices_join_one_group_and_every_message_reaches_every_other_device_once() {
    let (mut sim, [a, b, c]) = circle_of_three(1);
    let ma = sim.send(a, "from Ada");
    sim.send(b, "from Bea");
    sim.send(c, "from Cy");
    sim.run(20);
    let sorted = |mut v: Vec<(Uuid, String)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(sim.received(a)),
        sorted(vec![(b, "from Bea".into()), (c, "from Cy".into())])
    );
    assert_eq!(
        sorted(sim.received(b)),
        sorted(vec![(a, "from Ada".into()), (c, "from Cy".into())])
    );
    assert_eq!(
        sorted(sim.received(c)),
        sorted(vec![(a, "from Ada".into()), (b, "from Bea".into())])
    );
    assert!(sim.devices[&a].delivered.contains(&(ma, b)));
    assert!(sim.devices[&a].delivered.contains(&(ma, c)));
    // Display names travel inside the group only.
    let names = sim.engine(c).display_names();
    assert_eq!(
        names.values().cloned().collect::<BTreeSet<_>>(),
        ["Ada L.", "Bea K.", "Cy D."].map(String::from).into()
    );
    // The relay saw neither the text nor the names (with spaces, so never inside base64).
    for payload in &sim.relayed {
        for secret in [
            "from Ada", "from Bea", "from Cy", "Ada L.", "Bea K.", "Cy D.",
        ] {
            assert!(
                !payload.contains(secret),
                "the relay saw {secret:?}: {payload}"
            );
        }
    }
    for d in [a, b, c] {
        assert!(sim.refused(d).is_empty(), "{:?}", sim.refused(d));
    }
}

#[test]
fn messages_survive_lossy_reordering_links_exactly_once_and_in_order() {
    let (mut sim, [a, b, _c]) = circle_of_three(2);
    sim.loss = 0.3;
    let texts: Vec<String> = (0..30).map(|i| format!("message {i}")).collect();
    for text in &texts {
        sim.send(a, text);
    }
    sim.run(200);
    let got: Vec<String> = sim
        .received(b)
        .into_iter()
        .filter(|(from, _)| *from == a)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, texts);
    assert_eq!(sim.engine(a).unacknowledged(b), 0);
}

#[test]
fn a_device_that_was_away_receives_every_message_once_on_its_return() {
    let (mut sim, [a, b, c]) = circle_of_three(3);
    sim.go_offline(c);
    sim.run(5);
    for i in 0..5 {
        sim.send(a, &format!("while away {i}"));
    }
    sim.send(b, "from Bea while away");
    sim.run(10);
    assert!(sim.received(c).is_empty());
    assert_eq!(
        sim.engine(a).unacknowledged(c),
        5,
        "they wait in Ada's outbox"
    );
    sim.connect(c);
    sim.run(40);
    let got = sim.received(c);
    let mut expected: Vec<(Uuid, String)> =
        (0..5).map(|i| (a, format!("while away {i}"))).collect();
    expected.push((b, "from Bea while away".into()));
    let mut sorted = got.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "each once");
    assert_eq!(sim.engine(a).unacknowledged(c), 0);
}

#[test]
fn links_keep_delivering_while_the_server_is_down() {
    let (mut sim, [a, b, c]) = circle_of_three(4);
    for d in [a, b, c] {
        sim.disconnect(d);
    }
    sim.run(2);
    sim.send(a, "server is down");
    sim.run(10);
    assert_eq!(sim.received(b), vec![(a, "server is down".to_string())]);
    assert_eq!(sim.received(c), vec![(a, "server is down".to_string())]);
}

#[test]
fn a_revoked_member_is_removed_by_an_admin_device_and_reads_nothing_afterwards() {
    let (mut sim, [a, b, c]) = circle_of_three(5);
    let bea = sim.devices[&b].member;
    sim.directory.retain(|m| m.id != bea);
    let now = sim.now;
    let directory = sim.directory.clone();
    sim.devices
        .get_mut(&a)
        .expect("a")
        .engine
        .handle_directory(now, directory);
    sim.run(20);
    assert!(
        sim.devices[&b].removed,
        "Bea's device learns it was removed"
    );
    assert!(!sim.engine(b).in_group());
    sim.assert_one_group(&[a, c]);
    sim.send(a, "after the revocation");
    sim.run(20);
    assert_eq!(
        sim.received(c),
        vec![(a, "after the revocation".to_string())]
    );
    assert!(sim.received(b).is_empty(), "Bea read {:?}", sim.received(b));
}

#[test]
fn concurrent_commits_converge_to_one_epoch() {
    let (mut sim, [a, b, c]) = circle_of_three(6);
    // Every member device adds newcomers at once instead of waiting for the designated one.
    for d in [a, b, c] {
        let dev = sim.devices.get_mut(&d).expect("d");
        let state = dev.store.clone();
        let mut config = config();
        config.add_fallback_after = Duration::ZERO;
        dev.engine = Engine::restore(config, &state.0, state.1).expect("restore");
        dev.connected = false;
        sim.connect(d);
    }
    sim.run(20);
    let d = sim.member(Role::Member, "Dee");
    let e = sim.member(Role::Member, "Eve");
    sim.run(80);
    sim.assert_one_group(&[a, b, c, d, e]);
    sim.send(e, "hello from Eve");
    sim.run(20);
    for x in [a, b, c, d] {
        assert_eq!(
            sim.received(x).last(),
            Some(&(e, "hello from Eve".to_string()))
        );
    }
}

#[test]
fn a_restarted_device_keeps_its_group_outbox_and_history_position() {
    let (mut sim, [a, b, _c]) = circle_of_three(7);
    sim.send(a, "before the crash");
    sim.run(10);
    // Crash: the engine is rebuilt from what its driver last stored.
    let dev = sim.devices.get_mut(&b).expect("b");
    let state = dev.store.clone();
    dev.engine = Engine::restore(config(), &state.0, state.1).expect("restore");
    dev.connected = false;
    sim.go_offline(b);
    sim.connect(b);
    sim.send(a, "after the crash");
    sim.run(40);
    assert_eq!(
        sim.received(b),
        vec![
            (a, "before the crash".to_string()),
            (a, "after the crash".to_string())
        ]
    );
}

#[test]
fn a_relay_that_alters_payloads_is_detected_and_nothing_is_accepted() {
    let (mut sim, [a, b, c]) = circle_of_three(8);
    let epoch = sim.engine(a).epoch();
    // Flip one character inside every MLS-protected signal (SDP, ICE).
    sim.tamper = Some(Box::new(|text: &str| {
        let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
        let msg = value.get_mut("msg")?;
        let s = msg.as_str()?.to_owned();
        let mut bytes = URL_SAFE_NO_PAD.decode(&s).ok()?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        *msg = serde_json::Value::String(URL_SAFE_NO_PAD.encode(bytes));
        Some(value.to_string())
    }));
    let now = sim.now;
    sim.devices
        .get_mut(&a)
        .expect("a")
        .engine
        .send_rtc(
            now,
            b,
            RtcSignal::Offer {
                sdp: "v=0 forged".into(),
            },
        )
        .expect("offer");
    sim.drain(a);
    sim.run(3);
    assert!(
        sim.refused(b).iter().any(|r| r.starts_with("MLS signal")),
        "{:?}",
        sim.refused(b)
    );
    assert_eq!(sim.engine(a).epoch(), epoch);
    let _ = c;
}

#[test]
fn substituted_key_packages_and_certificates_are_refused() {
    let (mut sim, [a, b, c]) = circle_of_three(9);
    // A newcomer whose KeyPackage the relay swaps for another device's (Bea's, replayed).
    let (mut key, info) = new_member(Role::Member);
    let member = info.id;
    sim.directory.push(info);
    let d = sim.device(&mut key, member, "Dee");
    sim.run(40);
    sim.assert_one_group(&[a, b, c, d]);
    // Replay Dee's KeyPackage as if it came from Cy's device: the certificate names Dee's device.
    let kp_payload = sim
        .relayed
        .iter()
        .find(|p| p.contains("key_package"))
        .cloned()
        .expect("a KeyPackage was relayed");
    let payload = serde_json::value::RawValue::from_string(kp_payload.clone()).expect("json");
    let cy = sim.devices[&c].member;
    sim.inject_signal(a, c, cy, payload);
    assert!(
        sim.refused(a)
            .iter()
            .any(|r| r.contains("KeyPackage") && r.contains("not the device")),
        "{:?}",
        sim.refused(a)
    );
    // A KeyPackage whose bytes were altered (signature broken).
    let mut value: serde_json::Value = serde_json::from_str(&kp_payload).expect("json");
    let kp = value["kp"].as_str().expect("kp").to_owned();
    let mut bytes = URL_SAFE_NO_PAD.decode(kp).expect("b64");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    value["kp"] = serde_json::Value::String(URL_SAFE_NO_PAD.encode(bytes));
    let payload = serde_json::value::RawValue::from_string(value.to_string()).expect("json");
    let dee = sim.devices[&d].member;
    sim.inject_signal(a, d, dee, payload);
    assert!(
        sim.refused(a)
            .iter()
            .filter(|r| r.starts_with("KeyPackage"))
            .count()
            >= 2,
        "{:?}",
        sim.refused(a)
    );
    // A genuine certificate (of Dee's member, for a key the attacker does not hold) on a
    // KeyPackage signed with the attacker's own key.
    let provider = tessera_engine::provider::Provider::default();
    let attacker = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key");
    attacker.store(provider.storage()).expect("store");
    let stolen = certify_with_soft_key(&mut key, ORIGIN, member, d, b"a key the attacker lacks")
        .expect("cert");
    let forged = KeyPackage::builder()
        .build(
            tessera_engine::engine::CIPHERSUITE,
            &provider,
            &attacker,
            CredentialWithKey {
                credential: BasicCredential::new(serde_json::to_vec(&stolen).expect("json")).into(),
                signature_key: attacker.to_public_vec().into(),
            },
        )
        .expect("key package");
    let kp = MlsMessageOut::from(forged.key_package().clone())
        .to_bytes()
        .expect("bytes");
    let payload = to_raw_value(&SignalPayload::KeyPackage {
        kp: URL_SAFE_NO_PAD.encode(kp),
    })
    .expect("json");
    sim.inject_signal(a, d, dee, payload);
    assert!(
        sim.refused(a).iter().any(|r| r.contains("for another key")),
        "{:?}",
        sim.refused(a)
    );
    let epoch = sim.engine(a).epoch();
    sim.run(10);
    assert_eq!(sim.engine(a).epoch(), epoch, "nothing was added");
}
