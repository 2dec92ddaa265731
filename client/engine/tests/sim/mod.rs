//! A simulated circle for the sans-IO engine: in-memory devices, a relay with the sequencer's rules
//! (first commit per slot wins), data channels that can lose and reorder packets, simulated time,
//! and each device's time spent in its engine. Shared by the engine's tests and its benchmark.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::value::to_raw_value;
use tessera_engine::changes::{self, MessageChange, MessageRef, ShownMessage};
use tessera_engine::decision::SignedDecision;
use tessera_engine::files::{ContentHash, FileCommand};
use tessera_engine::history::Cursor;
use tessera_engine::identity::certify;
use tessera_engine::invitation::{InvitationSecret, InvitationStatement, SignedInvitation};
use tessera_engine::payload::RtcSignal;
use tessera_engine::renewal::RenewalOutcome;
use tessera_engine::trust::{KeyProof, RootFingerprint, RootPin, Trust, member_id_for, revocation};
use tessera_engine::{
    ChatMessage, DeviceKey, Engine, EngineConfig, Event, HistoryChange, IceOutcome, LinkCommand,
    Output, StopReason, StoredDevice, StoredFile,
};
use tessera_softkey::SoftKey;
use tessera_wire::signal::{ClientFrame, FrameErrorCode, Limits, PeerDevice, ServerFrame};
use tessera_wire::{MemberInfo, Role};
use uuid::Uuid;
use web_time::{Duration, Instant};

pub use tessera_softkey::testing::ORIGIN;

pub fn config() -> EngineConfig {
    let mut config = EngineConfig::new(ORIGIN, "localhost");
    config.delivery.resend_after = Duration::from_millis(300);
    config.link_timeout = Duration::from_millis(500);
    config.files.stall_after = Duration::from_millis(300);
    config.files.sync_every = 16;
    config
}

/// A member registered through real webauthn-rs with a software key, admitted by nobody (an
/// outsider, as far as the circle's chain goes).
pub fn new_member(role: Role) -> (SoftKey, MemberInfo) {
    tessera_softkey::testing::member(role)
}

/// When the sim's invitations expire (Unix seconds); admissions are made at `ADMITTED_AT`.
const ADMITTED_AT: i64 = 1_800_000_000;

pub struct Device {
    pub engine: Engine,
    pub member: Uuid,
    pub connected: bool,
    pub received: Vec<(Uuid, String)>,
    pub delivered: BTreeSet<(Uuid, Uuid)>,
    pub refused: Vec<String>,
    pub removed: bool,
    pub store: StoredDevice,
    /// Time spent in its engine (and applying its writes), on this machine's clock.
    pub busy: std::time::Duration,
    /// Directory fetches it asked for, and when.
    pub fetches: usize,
    pub fetched_at: Vec<Instant>,
    /// When it asked for the ICE servers.
    pub ice_fetches: Vec<Instant>,
    /// The history rows of its writes, in order.
    pub history: Vec<HistoryChange>,
    /// Its events, in order.
    pub events: Vec<Event>,
    /// Its frame allowance at the relay: tokens, and when last counted.
    pub allowance: (f64, Instant),
    /// How many times it asked to renew its session.
    pub renewals: usize,
    /// How many pages of its history it read for another device.
    pub history_reads: usize,
    /// Its files folder: what was written of each file, and how much of it is synced (what a
    /// restart keeps).
    pub disk: BTreeMap<Uuid, (Vec<u8>, usize)>,
    /// Chunks it read from its disk for peers.
    pub reads: u64,
    /// Chunks its driver opened for it (when the driver seals).
    pub opens: u64,
}

impl Device {
    /// The changes to messages its writes kept, each once (as a store keeps them).
    pub fn changes(&self) -> Vec<MessageChange> {
        let mut seen = BTreeSet::new();
        self.history
            .iter()
            .filter_map(|h| match h {
                HistoryChange::Change { change } => Some(change.clone()),
                _ => None,
            })
            .filter(|c| seen.insert((c.device, c.id)))
            .collect()
    }

    /// Its history as a client shows it: each message once, in the order first written, as the
    /// changes kept leave it.
    pub fn shown(&self) -> Vec<ShownMessage> {
        let mut seen = BTreeSet::new();
        let messages: Vec<ChatMessage> = self
            .history
            .iter()
            .filter_map(|h| match h {
                HistoryChange::Add { message, .. } => Some(message.clone()),
                _ => None,
            })
            .filter(|m| seen.insert((m.device, m.id)))
            .collect();
        changes::show_all(messages, &self.changes())
    }

    /// Runs `f` on the device (its engine, its store), counting the time it takes as the
    /// device's.
    pub fn timed<R>(&mut self, f: impl FnOnce(&mut Device) -> R) -> R {
        let started = std::time::Instant::now();
        let result = f(self);
        self.busy += started.elapsed();
        result
    }
}

/// How the simulated relay treats payloads: honestly, or as an attacker in the middle.
pub type Tamper = Box<dyn FnMut(&str) -> Option<String>>;

pub struct Sim {
    pub now: Instant,
    pub devices: BTreeMap<Uuid, Device>,
    pub directory: Vec<MemberInfo>,
    pub slot: u64,
    pub frames: VecDeque<(Uuid, ServerFrame)>,
    pub links: BTreeSet<(Uuid, Uuid)>,
    pub in_flight: Vec<(Uuid, Uuid, Vec<u8>)>,
    pub rng: StdRng,
    pub loss: f64,
    pub tamper: Option<Tamper>,
    pub relayed: Vec<String>,
    /// The limits the relay holds every connection to, as the server does, and tells in `hello`.
    pub limits: Limits,
    /// Frames the relay refused: too large, or beyond the rate.
    pub refused_frames: Vec<(FrameErrorCode, usize)>,
    /// The largest frame relayed, in bytes.
    pub largest_frame: usize,
    /// A relay in the middle delivering what is addressed to the first device to the second.
    pub redirect: Option<(Uuid, Uuid)>,
    /// The directory cannot be fetched.
    pub directory_down: bool,
    /// What fetching the ICE servers brings.
    pub ice: IceOutcome,
    /// What the server answers a session renewal: none checks the device's signed renewal
    /// against the directory as the server does; some forces an outcome.
    pub renewal: Option<RenewalOutcome>,
    /// The circle's id.
    pub circle: Uuid,
    /// The founder's key and the circle's root, once the first member is made.
    pub founder: Option<(SoftKey, RootFingerprint)>,
}

pub fn pair(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    (a.min(b), a.max(b))
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
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
            limits: Limits::default(),
            refused_frames: Vec::new(),
            largest_frame: 0,
            redirect: None,
            directory_down: false,
            ice: IceOutcome::NotConfigured,
            renewal: None,
            circle: Uuid::new_v4(),
            founder: None,
        }
    }

    /// A member the circle's chain admits, not yet listed: the first is the founder (an admin,
    /// the circle's root); each later one enrolls with an invitation the founder's key signed.
    pub fn admit(&mut self, role: Role) -> (SoftKey, MemberInfo) {
        let Some((founder_key, root)) = &mut self.founder else {
            let (key, info) = new_member(Role::Admin);
            let root = RootFingerprint::of(info.id, &info.passkeys[0]);
            self.founder = Some((key.clone(), root));
            return (key, info);
        };
        let secret = InvitationSecret::generate().expect("randomness");
        let statement = InvitationStatement {
            circle: self.circle,
            invitation_key: secret.public_key(),
            role,
            expires_at: ADMITTED_AT + 3600,
            issuer: self.directory[0].id,
            recovers: None,
        };
        let signed =
            SignedInvitation::sign(statement, "localhost", |r| founder_key.sign_in(r, ORIGIN))
                .expect("the founder's key signs");
        let (key, mut info) = new_member(role);
        info.id = member_id_for(root, &secret.public_key());
        let admission = secret.admit(signed, info.id, info.passkeys[0].clone(), ADMITTED_AT);
        info.proofs.push(KeyProof::Admission(admission).to_blob());
        (key, info)
    }

    /// `devices` fetch the directory as the server lists it now.
    pub fn serve_directory(&mut self, devices: &[Uuid]) {
        for device in devices {
            let (now, directory) = (self.now, self.directory.clone());
            let dev = self.devices.get_mut(device).expect("device");
            dev.timed(|d| d.engine.handle_directory(now, directory));
        }
    }

    /// The founder revokes `member` as an admin's device does: the server lists the member, with
    /// their keys and proofs, and the revocation the founder's key signed (which keeps what the
    /// member signed so far).
    pub fn revoke(&mut self, member: Uuid) {
        let issuer = self.directory[0].id;
        let statement = revocation(
            &self.directory,
            (self.circle, member, issuer),
            None,
            ADMITTED_AT,
        );
        let (founder_key, _) = self.founder.as_mut().expect("the circle has a founder");
        let signed =
            SignedDecision::sign(statement, "localhost", |r| founder_key.sign_in(r, ORIGIN))
                .expect("the founder's key signs");
        let listed = self
            .directory
            .iter_mut()
            .find(|m| m.id == member)
            .expect("a listed member");
        listed.revocation = Some(signed.to_blob());
    }

    /// What the sim's devices trust.
    pub fn trust(&self) -> Trust {
        let (_, root) = self.founder.as_ref().expect("the circle has a founder");
        Trust {
            circle: self.circle,
            root: RootPin::Pinned(*root),
        }
    }

    /// A new member with one device, connected.
    pub fn member(&mut self, role: Role, name: &str) -> Uuid {
        let (mut key, info) = self.admit(role);
        let member = info.id;
        self.directory.push(info);
        self.device(&mut key, member, name)
    }

    /// A new device of `member`, certified by its key, connected.
    pub fn device(&mut self, key: &mut SoftKey, member: Uuid, name: &str) -> Uuid {
        let device = Uuid::new_v4();
        let device_key = DeviceKey::generate().expect("device key");
        let certificate = certify("localhost", member, device, device_key.public(), |r| {
            key.sign_in(r, ORIGIN)
        })
        .expect("cert");
        let mut engine = Engine::new(
            config(),
            self.trust(),
            member,
            device,
            device_key,
            certificate,
        )
        .expect("engine");
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
                store: StoredDevice::default(),
                busy: std::time::Duration::ZERO,
                fetches: 0,
                fetched_at: Vec::new(),
                ice_fetches: Vec::new(),
                history: Vec::new(),
                events: Vec::new(),
                allowance: (f64::from(self.limits.burst), self.now),
                renewals: 0,
                history_reads: 0,
                disk: BTreeMap::new(),
                reads: 0,
                opens: 0,
            },
        );
        self.connect(device);
        device
    }

    pub fn connect(&mut self, device: Uuid) {
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
                slot: self.slot,
                limits: self.limits,
            },
        ));
    }

    pub fn disconnect(&mut self, device: Uuid) {
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
    pub fn go_offline(&mut self, device: Uuid) {
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

    /// Whether the relay takes `frame` from `from` as the server would: within the frame size
    /// and the rate (a token bucket of `burst`, refilled at `frames_per_second`).
    fn within_limits(&mut self, from: Uuid, frame: &ClientFrame) -> bool {
        let bytes = serde_json::to_string(frame).expect("json").len();
        let (rate, burst) = (
            f64::from(self.limits.frames_per_second),
            f64::from(self.limits.burst),
        );
        let now = self.now;
        let Some(sender) = self.devices.get_mut(&from) else {
            return false;
        };
        let (tokens, last) = sender.allowance;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(burst);
        let refusal = if bytes > self.limits.frame_bytes {
            Some(FrameErrorCode::FrameTooLarge)
        } else if tokens < 1.0 {
            Some(FrameErrorCode::RateLimited)
        } else {
            None
        };
        sender.allowance = (
            if refusal.is_none() {
                tokens - 1.0
            } else {
                tokens
            },
            now,
        );
        if let Some(code) = refusal {
            self.refused_frames.push((code, bytes));
            self.frames.push_back((
                from,
                ServerFrame::Error {
                    code,
                    message: "refused by the relay".into(),
                },
            ));
            return false;
        }
        self.largest_frame = self.largest_frame.max(bytes);
        true
    }

    pub fn relay(&mut self, from: Uuid, frame: ClientFrame) {
        let Some(sender) = self.devices.get(&from) else {
            return;
        };
        if !sender.connected {
            return;
        }
        let member = sender.member;
        if !self.within_limits(from, &frame) {
            return;
        }
        match frame {
            ClientFrame::Signal { to, payload } => {
                let to = match self.redirect {
                    Some((from, instead)) if from == to => instead,
                    _ => to,
                };
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
            ClientFrame::Commit { slot, payload } => {
                self.relayed.push(payload.get().to_owned());
                if slot != self.slot {
                    self.frames.push_back((
                        from,
                        ServerFrame::CommitResult {
                            slot,
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
                            slot,
                            payload,
                        },
                    ));
                }
                self.frames.push_back((
                    from,
                    ServerFrame::CommitResult {
                        slot,
                        accepted: true,
                    },
                ));
            }
        }
    }

    /// Acts on one device's turns, as its driver would: each write stored, then its outputs.
    pub fn drain(&mut self, device: Uuid) {
        loop {
            let Some(dev) = self.devices.get_mut(&device) else {
                return;
            };
            let Some(turn) = dev.timed(|d| d.engine.next_turn().ok().flatten()) else {
                return;
            };
            if let Some(write) = turn.write {
                dev.history.extend(write.history.iter().cloned());
                dev.timed(|d| d.store.apply(write));
            }
            for output in turn.outputs {
                self.act(device, output);
            }
        }
    }

    /// Acts on one output of a device, as its driver would.
    fn act(&mut self, device: Uuid, output: Output) {
        let now = self.now;
        let Some(dev) = self.devices.get_mut(&device) else {
            return;
        };
        if let Output::Event(event) = &output {
            dev.events.push(event.clone());
        }
        match output {
            Output::Send(frame) => self.relay(device, frame),
            // Simulated links need no ICE servers; what the fetch brings is the test's to say.
            Output::FetchIceServers => {
                dev.ice_fetches.push(now);
                let outcome = self.ice;
                dev.engine.handle_ice_servers(now, outcome);
            }
            Output::FetchDirectory if self.directory_down => {
                dev.fetches += 1;
                dev.fetched_at.push(now);
                dev.engine
                    .handle_directory_unavailable(now, "the server is down".into());
            }
            // Read from the history rows the device wrote, as a store lists them.
            Output::ReadHistory {
                peer,
                before,
                limit,
            } => {
                dev.history_reads += 1;
                let mut rows: Vec<ChatMessage> = dev
                    .history
                    .iter()
                    .filter_map(|h| match h {
                        HistoryChange::Add { message, .. } => Some(message.clone()),
                        _ => None,
                    })
                    .filter(|m| before.is_none_or(|b| Cursor::of(m) < b))
                    .collect();
                rows.sort_by_key(|m| std::cmp::Reverse(Cursor::of(m)));
                rows.dedup_by_key(|m| (m.device, m.id));
                let older = rows.len() as u64;
                rows.truncate(limit);
                let changes = dev.changes();
                dev.timed(|d| {
                    d.engine
                        .handle_history_read(now, peer, rows, &changes, older)
                });
            }
            Output::RenewSession => {
                dev.renewals += 1;
                let outcome = self.renewal.unwrap_or_else(|| {
                    let listed = self.directory.iter().find(|m| m.id == dev.member);
                    match listed {
                        Some(m) if m.revocation.is_some() => RenewalOutcome::Revoked,
                        Some(m) => {
                            let renewal = dev
                                .engine
                                .session_renewal("sim-ceremony")
                                .expect("the device key signs");
                            match renewal.verify(&m.passkeys, ORIGIN, "localhost") {
                                Ok(_) => RenewalOutcome::Renewed,
                                Err(_) => RenewalOutcome::Refused,
                            }
                        }
                        None => RenewalOutcome::Refused,
                    }
                });
                dev.engine.handle_session_renewal(now, outcome);
                // The renewed session connects again, as a driver does.
                if outcome == RenewalOutcome::Renewed {
                    self.disconnect(device);
                    self.connect(device);
                }
            }
            Output::FetchDirectory => {
                dev.fetches += 1;
                dev.fetched_at.push(now);
                // Far more than any test needs: an engine fetching without end fails here.
                assert!(
                    dev.fetches < 1_000,
                    "{device} fetches the directory without end"
                );
                let directory = self.directory.clone();
                dev.timed(|d| d.engine.handle_directory(now, directory));
            }
            Output::Event(event) => match event {
                Event::Message {
                    message,
                    outgoing: false,
                } => dev.received.push((message.device, message.text)),
                Event::Delivered { id, device, .. } => {
                    dev.delivered.insert((id, device));
                }
                Event::Refused { what, reason } => dev.refused.push(format!("{what}: {reason}")),
                Event::Stopped {
                    reason: StopReason::Removed,
                } => dev.removed = true,
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
            Output::File(command) => Self::file_io(now, dev, command),
            Output::Link(LinkCommand::Close { device: peer }) => {
                if self.links.remove(&pair(device, peer))
                    && let Some(other) = self.devices.get_mut(&peer)
                {
                    other.engine.handle_link_down(now, device);
                }
            }
        }
    }

    /// Does a device's file IO on its simulated disk, as its driver would.
    fn file_io(now: Instant, dev: &mut Device, command: FileCommand) {
        match command {
            FileCommand::Read(read) => {
                let content = dev
                    .disk
                    .get(&read.file)
                    .map(|(c, _)| c.clone())
                    .unwrap_or_default();
                for (index, offset, len) in read.chunks() {
                    let start = usize::try_from(offset).expect("offset");
                    let Some(bytes) = content.get(start..start + len) else {
                        dev.engine.handle_file_failed(now, read.file, "short read");
                        return;
                    };
                    dev.reads += 1;
                    let (peer, file) = (read.peer, read.file);
                    let bytes = match &read.seal {
                        Some(seal) => seal.seal(index, bytes).expect("sealed"),
                        None => bytes.to_vec(),
                    };
                    dev.timed(|d| d.engine.handle_file_read(now, peer, file, index, &bytes));
                }
            }
            FileCommand::Open(chunk) => {
                dev.opens += 1;
                let plain = chunk.seal.open(chunk.index, &chunk.sealed).ok();
                let (peer, file, index) = (chunk.peer, chunk.seal.file, chunk.index);
                dev.timed(|d| {
                    d.engine
                        .handle_file_opened(now, peer, file, index, plain.as_deref());
                });
            }
            FileCommand::Write {
                file,
                offset,
                bytes,
            } => {
                let (content, _) = dev.disk.entry(file).or_default();
                let offset = usize::try_from(offset).expect("offset");
                if content.len() < offset + bytes.len() {
                    content.resize(offset + bytes.len(), 0);
                }
                content[offset..offset + bytes.len()].copy_from_slice(&bytes);
            }
            FileCommand::Sync { file, chunks, size } => {
                let (content, synced) = dev.disk.entry(file).or_default();
                if let Some(size) = size {
                    content.truncate(usize::try_from(size).expect("size"));
                }
                *synced = content.len();
                dev.timed(|d| d.engine.handle_file_synced(now, file, chunks));
            }
            FileCommand::Discard { file } => {
                dev.disk.remove(&file);
            }
        }
    }

    /// Shares `content` as a file named `name` from `device`, stored on its disk first.
    pub fn send_file(&mut self, device: Uuid, name: &str, content: &[u8]) -> Uuid {
        let now = self.now;
        let dev = self.devices.get_mut(&device).expect("device");
        let id = Uuid::new_v4();
        dev.disk.insert(id, (content.to_vec(), content.len()));
        let mut hash = ContentHash::default();
        hash.update(content);
        let stored = StoredFile {
            id,
            name: name.to_owned(),
            mime: String::new(),
            size: content.len() as u64,
            sha256: hash.finish(),
        };
        dev.engine
            .send_file(now, 1_700_000_000_000, stored)
            .expect("the file is sent");
        self.drain(device);
        id
    }

    /// Runs the circle for `rounds` steps of 50 ms.
    pub fn run(&mut self, rounds: usize) {
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
                    dev.timed(|d| d.engine.handle_frame(now, frame));
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
                    dev.timed(|d| d.engine.handle_link_data(now, from, &bytes));
                }
                self.drain(to);
            }
            self.now += Duration::from_millis(50);
            for id in &ids {
                let now = self.now;
                if let Some(dev) = self.devices.get_mut(id)
                    && dev.engine.poll_timeout().is_some_and(|t| t <= now)
                {
                    dev.timed(|d| d.engine.handle_timeout(now));
                    // Whatever was due is done: a deadline left in the past would have its
                    // driver wake (and write) without end.
                    assert!(
                        dev.engine.poll_timeout().is_none_or(|t| t > now),
                        "a deadline of {id} stays past after handle_timeout"
                    );
                }
            }
        }
    }

    /// Restarts a device's process: its engine is rebuilt from what its driver last stored and
    /// it connects again. Its links die with the process, but its peers are not told: they learn
    /// it only when their side of the link times out (or when the device asks for a new link).
    pub fn restart(&mut self, device: Uuid) {
        self.restart_with(device, |_, _| {});
    }

    /// Restarts a device as [`Sim::restart`] does, with its configuration and what its store
    /// holds changed by `change` first (another build's settings, or a store someone altered).
    pub fn restart_with(
        &mut self,
        device: Uuid,
        change: impl FnOnce(&mut EngineConfig, &mut StoredDevice),
    ) {
        let dev = self.devices.get_mut(&device).expect("device");
        let mut config = config();
        change(&mut config, &mut dev.store);
        let stored = dev.store.clone();
        // What was written and not synced is lost with the process.
        for (content, synced) in dev.disk.values_mut() {
            content.truncate(*synced);
        }
        dev.engine = Engine::restore(config, stored).expect("restore");
        self.disconnect(device);
        self.links.retain(|(a, b)| *a != device && *b != device);
        self.connect(device);
    }

    /// Lets a device just connected take its hello (and announce itself) now, before the rest
    /// of the circle runs.
    pub fn hello_now(&mut self, device: Uuid) {
        let index = self
            .frames
            .iter()
            .position(|(to, _)| *to == device)
            .expect("its hello is queued");
        let (_, hello) = self.frames.remove(index).expect("hello");
        let now = self.now;
        self.devices
            .get_mut(&device)
            .expect("device")
            .timed(|d| d.engine.handle_frame(now, hello));
        self.drain(device);
    }

    /// Hands `to` a signal frame as a relay in the middle would forge it.
    pub fn inject_signal(
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

    pub fn engine(&self, device: Uuid) -> &Engine {
        &self.devices[&device].engine
    }

    pub fn send(&mut self, device: Uuid, text: &str) -> Uuid {
        self.reply(device, text, None)
    }

    /// Sends `text` from `device`, answering `to` when given.
    pub fn reply(&mut self, device: Uuid, text: &str, to: Option<MessageRef>) -> Uuid {
        let now = self.now;
        let id = self
            .devices
            .get_mut(&device)
            .expect("device")
            .engine
            .send_reply(now, 1_700_000_000_000, text, to)
            .expect("send");
        self.drain(device);
        id
    }

    pub fn received(&self, device: Uuid) -> Vec<(Uuid, String)> {
        self.devices[&device].received.clone()
    }

    /// Asserts that the last message each of `devices` received is `text` from `from`.
    pub fn assert_last_received(&self, devices: &[Uuid], from: Uuid, text: &str) {
        for device in devices {
            assert_eq!(
                self.devices[device].received.last(),
                Some(&(from, text.to_owned())),
                "{device}'s last message"
            );
        }
    }

    pub fn refused(&self, device: Uuid) -> Vec<String> {
        self.devices[&device].refused.clone()
    }

    pub fn assert_one_group(&self, devices: &[Uuid]) {
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
