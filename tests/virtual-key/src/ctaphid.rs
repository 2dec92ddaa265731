//! CTAPHID framing (FIDO CTAP 2.1 §11.2), sans-IO: 64-byte reports in, whole messages up, answers
//! framed back into 64-byte reports, channels, busy and timeout errors and keepalives, with the
//! time passed in by the caller.

use std::collections::VecDeque;
use std::time::Duration;

/// The size of every report, both ways.
pub const REPORT_LEN: usize = 64;
/// One HID report.
pub type Report = [u8; REPORT_LEN];

/// Payload bytes in an initialization packet.
const INIT_DATA: usize = REPORT_LEN - 7;
/// Payload bytes in a continuation packet.
const CONT_DATA: usize = REPORT_LEN - 5;
/// The largest message: an initialization packet and 128 continuations.
pub const MAX_MESSAGE: usize = INIT_DATA + 128 * CONT_DATA;

/// The broadcast channel, where INIT allocates channels.
pub const BROADCAST: u32 = 0xffff_ffff;

/// CTAPHID commands, without the initialization bit (0x80).
pub mod command {
    /// Echo.
    pub const PING: u8 = 0x01;
    /// A U2F (CTAP1) message.
    pub const MSG: u8 = 0x03;
    /// Exclusive access (not supported here).
    pub const LOCK: u8 = 0x04;
    /// Channel allocation or resynchronisation.
    pub const INIT: u8 = 0x06;
    /// Blink.
    pub const WINK: u8 = 0x08;
    /// A CTAP2 request.
    pub const CBOR: u8 = 0x10;
    /// Cancel the request in process on this channel.
    pub const CANCEL: u8 = 0x11;
    /// Still working (device to host).
    pub const KEEPALIVE: u8 = 0x3b;
    /// A transport error (device to host).
    pub const ERROR: u8 = 0x3f;
}

/// CTAPHID_ERROR codes.
pub mod error {
    /// The command is not known or not supported.
    pub const INVALID_CMD: u8 = 0x01;
    /// A parameter is invalid.
    pub const INVALID_PAR: u8 = 0x02;
    /// The length is invalid for the command, or over the maximum.
    pub const INVALID_LEN: u8 = 0x03;
    /// A continuation packet out of sequence, or an initialization packet mid-message.
    pub const INVALID_SEQ: u8 = 0x04;
    /// The rest of a message did not come in time.
    pub const MSG_TIMEOUT: u8 = 0x05;
    /// Another channel's transaction is in process.
    pub const CHANNEL_BUSY: u8 = 0x06;
    /// The channel id is reserved or was never allocated.
    pub const INVALID_CHANNEL: u8 = 0x0b;
    /// Anything else.
    pub const OTHER: u8 = 0x7f;
}

/// KEEPALIVE statuses.
pub mod keepalive {
    /// Still processing.
    pub const PROCESSING: u8 = 1;
    /// Waiting for the user to touch the key.
    pub const UPNEEDED: u8 = 2;
}

/// INIT capability flags.
pub mod capability {
    /// WINK is implemented.
    pub const WINK: u8 = 0x01;
    /// CBOR (CTAP2) is implemented.
    pub const CBOR: u8 = 0x04;
    /// MSG (CTAP1/U2F) is NOT implemented.
    pub const NMSG: u8 = 0x08;
}

/// Transport settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a message may wait for its next continuation packet.
    pub message_timeout: Duration,
    /// How often KEEPALIVE goes out while a request is in process.
    pub keepalive_interval: Duration,
    /// Capability flags in the INIT answer.
    pub capabilities: u8,
    /// Device version in the INIT answer (major, minor, build).
    pub version: (u8, u8, u8),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            message_timeout: Duration::from_millis(1000),
            keepalive_interval: Duration::from_millis(100),
            capabilities: capability::WINK | capability::CBOR | capability::NMSG,
            version: (5, 4, 3),
        }
    }
}

/// What the transport hands up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole CTAP2 request: answer it with [`Transport::respond`] (`command::CBOR`).
    Cbor {
        /// Its channel.
        cid: u32,
        /// The command byte and its CBOR parameters.
        data: Vec<u8>,
    },
    /// A whole U2F message: answer it with [`Transport::respond`] (`command::MSG`).
    Msg {
        /// Its channel.
        cid: u32,
        /// The APDU.
        data: Vec<u8>,
    },
    /// The client cancelled the request in process: answer it now (CTAP2_ERR_KEEPALIVE_CANCEL).
    Cancel {
        /// Its channel.
        cid: u32,
    },
    /// The client resynchronised the channel of the request in process: drop it unanswered.
    Abort {
        /// Its channel.
        cid: u32,
    },
    /// The client asked the key to blink.
    Wink,
}

struct Assembly {
    cid: u32,
    command: u8,
    length: usize,
    data: Vec<u8>,
    next_seq: u8,
    deadline: Duration,
}

struct Busy {
    cid: u32,
    status: u8,
    next_keepalive: Duration,
}

/// The CTAPHID state machine of one device.
pub struct Transport {
    config: Config,
    next_cid: u32,
    assembly: Option<Assembly>,
    busy: Option<Busy>,
    out: VecDeque<Report>,
}

impl Transport {
    /// A device with no channels allocated yet.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self {
            config,
            next_cid: 1,
            assembly: None,
            busy: None,
            out: VecDeque::new(),
        }
    }

    /// The reports to send to the host, oldest first.
    pub fn take_reports(&mut self) -> Vec<Report> {
        self.out.drain(..).collect()
    }

    /// The channel of the request in process, if any.
    #[must_use]
    pub fn busy_channel(&self) -> Option<u32> {
        self.busy.as_ref().map(|busy| busy.cid)
    }

    /// Sets the status the next KEEPALIVE reports for the request in process.
    pub fn set_keepalive_status(&mut self, status: u8) {
        if let Some(busy) = &mut self.busy {
            busy.status = status;
        }
    }

    /// When [`Transport::poll`] has something to do next.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Duration> {
        let assembly = self.assembly.as_ref().map(|a| a.deadline);
        let keepalive = self.busy.as_ref().map(|b| b.next_keepalive);
        match (assembly, keepalive) {
            (Some(a), Some(k)) => Some(a.min(k)),
            (a, k) => a.or(k),
        }
    }

    /// Times out a message whose continuation is late and sends the keepalives due.
    pub fn poll(&mut self, now: Duration) {
        if self.assembly.as_ref().is_some_and(|a| now >= a.deadline)
            && let Some(assembly) = self.assembly.take()
        {
            self.error(assembly.cid, error::MSG_TIMEOUT);
        }
        if let Some(busy) = &mut self.busy
            && now >= busy.next_keepalive
        {
            busy.next_keepalive = now + self.config.keepalive_interval;
            let (cid, status) = (busy.cid, busy.status);
            self.frame(cid, command::KEEPALIVE, &[status]);
        }
    }

    /// Takes one report from the host (64 bytes; shorter ones are padded with zeros).
    pub fn receive(&mut self, now: Duration, report: &[u8]) -> Option<Event> {
        let mut packet = [0u8; REPORT_LEN];
        let n = report.len().min(REPORT_LEN);
        packet[..n].copy_from_slice(&report[..n]);
        let cid = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        if packet[4] & 0x80 != 0 {
            let command = packet[4] & 0x7f;
            let length = usize::from(u16::from_be_bytes([packet[5], packet[6]]));
            self.initialization(now, cid, command, length, &packet[7..])
        } else {
            self.continuation(now, cid, packet[4], &packet[5..])
        }
    }

    fn initialization(
        &mut self,
        now: Duration,
        cid: u32,
        command: u8,
        length: usize,
        data: &[u8],
    ) -> Option<Event> {
        if cid == 0 {
            self.error(cid, error::INVALID_CHANNEL);
            return None;
        }
        if let Some(assembly) = &self.assembly {
            if assembly.cid == cid {
                // A new message on the channel mid-message: only INIT resynchronises it.
                self.assembly = None;
                if command != command::INIT {
                    self.error(cid, error::INVALID_SEQ);
                    return None;
                }
            } else if command != command::INIT {
                self.error(cid, error::CHANNEL_BUSY);
                return None;
            }
        }
        let mut event = None;
        if let Some(busy) = &self.busy {
            let busy_cid = busy.cid;
            match command {
                command::INIT if cid == busy_cid => {
                    self.busy = None;
                    event = Some(Event::Abort { cid });
                }
                command::INIT => {}
                command::CANCEL if cid == busy_cid => return Some(Event::Cancel { cid }),
                command::CANCEL => return None,
                _ => {
                    self.error(cid, error::CHANNEL_BUSY);
                    return None;
                }
            }
        }
        if length > MAX_MESSAGE {
            self.error(cid, error::INVALID_LEN);
            return event;
        }
        if length <= INIT_DATA {
            let dispatched = self.dispatch(now, cid, command, data[..length].to_vec());
            return event.or(dispatched);
        }
        self.assembly = Some(Assembly {
            cid,
            command,
            length,
            data: data.to_vec(),
            next_seq: 0,
            deadline: now + self.config.message_timeout,
        });
        event
    }

    fn continuation(&mut self, now: Duration, cid: u32, seq: u8, data: &[u8]) -> Option<Event> {
        let Some(assembly) = &mut self.assembly else {
            return None; // A spurious continuation: ignored.
        };
        if assembly.cid != cid {
            return None;
        }
        if seq != assembly.next_seq {
            self.assembly = None;
            self.error(cid, error::INVALID_SEQ);
            return None;
        }
        let want = (assembly.length - assembly.data.len()).min(CONT_DATA);
        assembly.data.extend_from_slice(&data[..want]);
        assembly.next_seq += 1;
        assembly.deadline = now + self.config.message_timeout;
        if assembly.data.len() < assembly.length {
            return None;
        }
        let assembly = self.assembly.take()?;
        self.dispatch(now, assembly.cid, assembly.command, assembly.data)
    }

    fn dispatch(&mut self, now: Duration, cid: u32, command: u8, data: Vec<u8>) -> Option<Event> {
        if command == command::INIT {
            self.init(cid, &data);
            return None;
        }
        if cid == BROADCAST || cid >= self.next_cid {
            self.error(cid, error::INVALID_CHANNEL);
            return None;
        }
        match command {
            command::PING => {
                self.frame(cid, command::PING, &data);
                None
            }
            command::WINK => {
                if !data.is_empty() {
                    self.error(cid, error::INVALID_LEN);
                    return None;
                }
                self.frame(cid, command::WINK, &[]);
                Some(Event::Wink)
            }
            command::CBOR | command::MSG => {
                if data.is_empty() {
                    self.error(cid, error::INVALID_LEN);
                    return None;
                }
                self.busy = Some(Busy {
                    cid,
                    status: keepalive::PROCESSING,
                    next_keepalive: now + self.config.keepalive_interval,
                });
                Some(if command == command::CBOR {
                    Event::Cbor { cid, data }
                } else {
                    Event::Msg { cid, data }
                })
            }
            command::CANCEL => None, // Nothing in process: nothing to cancel.
            _ => {
                self.error(cid, error::INVALID_CMD);
                None
            }
        }
    }

    fn init(&mut self, cid: u32, nonce: &[u8]) {
        if nonce.len() != 8 {
            self.error(cid, error::INVALID_LEN);
            return;
        }
        let channel = if cid == BROADCAST {
            let channel = self.next_cid;
            self.next_cid = match self.next_cid.wrapping_add(1) {
                BROADCAST => 1,
                next => next,
            };
            channel
        } else {
            cid
        };
        let (major, minor, build) = self.config.version;
        let mut answer = nonce.to_vec();
        answer.extend_from_slice(&channel.to_be_bytes());
        answer.extend_from_slice(&[2, major, minor, build, self.config.capabilities]);
        self.frame(cid, command::INIT, &answer);
    }

    /// Answers the message in process on `cid` (or anything else) with `payload`, framed into
    /// reports; the channel is free again.
    pub fn respond(&mut self, cid: u32, command: u8, payload: &[u8]) {
        if self.busy.as_ref().is_some_and(|busy| busy.cid == cid) {
            self.busy = None;
        }
        self.frame(cid, command, payload);
    }

    fn error(&mut self, cid: u32, code: u8) {
        self.frame(cid, command::ERROR, &[code]);
    }

    fn frame(&mut self, cid: u32, command: u8, payload: &[u8]) {
        self.out.extend(frame(cid, command, payload));
    }
}

/// `payload` (cut at [`MAX_MESSAGE`]) framed on `cid`: an initialization packet, then
/// continuation packets. Both sides frame alike.
#[must_use]
pub fn frame(cid: u32, command: u8, payload: &[u8]) -> Vec<Report> {
    let payload = &payload[..payload.len().min(MAX_MESSAGE)];
    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&cid.to_be_bytes());
    report[4] = 0x80 | command;
    report[5..7].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    let first = payload.len().min(INIT_DATA);
    report[7..7 + first].copy_from_slice(&payload[..first]);
    let mut reports = vec![report];
    for (seq, chunk) in payload[first..].chunks(CONT_DATA).enumerate() {
        let mut report = [0u8; REPORT_LEN];
        report[..4].copy_from_slice(&cid.to_be_bytes());
        report[4] = seq as u8;
        report[5..5 + chunk.len()].copy_from_slice(chunk);
        reports.push(report);
    }
    reports
}

/// The host's side of the framing, for tests: reassembling the device's messages.
pub mod host {
    pub use super::frame;
    use super::{CONT_DATA, INIT_DATA, Report};

    /// A whole message: its channel, command (without the initialization bit) and payload.
    pub type Message = (u32, u8, Vec<u8>);

    /// One message reassembled from the device's reports: (cid, command, payload) and how many
    /// reports it took, or none if `reports` does not start with a whole message.
    #[must_use]
    pub fn parse(reports: &[Report]) -> Option<(Message, usize)> {
        let first = reports.first()?;
        if first[4] & 0x80 == 0 {
            return None;
        }
        let cid = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
        let length = usize::from(u16::from_be_bytes([first[5], first[6]]));
        let mut data = first[7..7 + length.min(INIT_DATA)].to_vec();
        let mut used = 1;
        while data.len() < length {
            let report = reports.get(used)?;
            let want = (length - data.len()).min(CONT_DATA);
            data.extend_from_slice(&report[5..5 + want]);
            used += 1;
        }
        Some(((cid, first[4] & 0x7f, data), used))
    }

    /// Every message in `reports`.
    #[must_use]
    pub fn parse_all(mut reports: &[Report]) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some((message, used)) = parse(reports) {
            messages.push(message);
            reports = &reports[used..];
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::host::{self, frame, parse_all};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn send(t: &mut Transport, now: Duration, reports: &[Report]) -> Vec<Event> {
        reports.iter().filter_map(|r| t.receive(now, r)).collect()
    }

    fn answers(t: &mut Transport) -> Vec<host::Message> {
        parse_all(&t.take_reports())
    }

    fn allocate(t: &mut Transport) -> u32 {
        let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
        send(t, Duration::ZERO, &frame(BROADCAST, command::INIT, &nonce));
        let answers = answers(t);
        let (cid, command, data) = &answers[0];
        assert_eq!((*cid, *command), (BROADCAST, command::INIT));
        assert_eq!(data.len(), 17);
        assert_eq!(&data[..8], &nonce, "the nonce is echoed");
        u32::from_be_bytes([data[8], data[9], data[10], data[11]])
    }

    #[test]
    fn init_allocates_distinct_channels_and_reports_capabilities() {
        let mut t = Transport::new(Config::default());
        let a = allocate(&mut t);
        let b = allocate(&mut t);
        assert_ne!(a, b);
        assert!(a != 0 && a != BROADCAST);

        send(
            &mut t,
            Duration::ZERO,
            &frame(BROADCAST, command::INIT, &[9; 8]),
        );
        let (_, _, data) = &answers(&mut t)[0];
        assert_eq!(data[12], 2, "CTAPHID protocol version");
        assert_eq!(
            data[16],
            capability::WINK | capability::CBOR | capability::NMSG
        );

        // INIT on an allocated channel resynchronises it and keeps its id.
        send(&mut t, Duration::ZERO, &frame(a, command::INIT, &[7; 8]));
        let (cid, _, data) = &answers(&mut t)[0];
        assert_eq!(*cid, a);
        assert_eq!(
            u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
            a
        );

        // A nonce that is not 8 bytes.
        send(
            &mut t,
            Duration::ZERO,
            &frame(BROADCAST, command::INIT, &[1; 4]),
        );
        assert_eq!(
            answers(&mut t),
            vec![(BROADCAST, command::ERROR, vec![error::INVALID_LEN])]
        );
    }

    #[test]
    fn ping_echoes_long_messages_across_continuation_packets() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let reports = frame(cid, command::PING, &payload);
        assert_eq!(reports.len(), 1 + (1000 - 57usize).div_ceil(59));
        assert!(send(&mut t, Duration::ZERO, &reports).is_empty());
        assert_eq!(answers(&mut t), vec![(cid, command::PING, payload)]);
    }

    #[test]
    fn a_cbor_request_comes_up_whole_and_its_answer_is_framed() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        let request: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let events = send(&mut t, Duration::ZERO, &frame(cid, command::CBOR, &request));
        assert_eq!(events, vec![Event::Cbor { cid, data: request }]);
        assert_eq!(t.busy_channel(), Some(cid));
        let answer = vec![0u8; 200];
        t.respond(cid, command::CBOR, &answer);
        assert_eq!(t.busy_channel(), None);
        assert_eq!(answers(&mut t), vec![(cid, command::CBOR, answer)]);
    }

    #[test]
    fn errors_for_bad_channels_commands_and_lengths() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        let cases: [(u32, u8, &[u8], u8); 6] = [
            (0, command::PING, &[1], error::INVALID_CHANNEL),
            (BROADCAST, command::CBOR, &[4], error::INVALID_CHANNEL),
            (cid + 100, command::CBOR, &[4], error::INVALID_CHANNEL),
            (cid, 0x33, &[], error::INVALID_CMD),
            (cid, command::LOCK, &[1], error::INVALID_CMD),
            (cid, command::CBOR, &[], error::INVALID_LEN),
        ];
        for (target, command, payload, code) in cases {
            send(&mut t, Duration::ZERO, &frame(target, command, payload));
            assert_eq!(
                answers(&mut t),
                vec![(target, command::ERROR, vec![code])],
                "command {command:#x} on {target:#x}"
            );
        }
        // A declared length over the maximum.
        let mut report = frame(cid, command::PING, &[])[0];
        report[5..7].copy_from_slice(&((MAX_MESSAGE + 1) as u16).to_be_bytes());
        send(&mut t, Duration::ZERO, &[report]);
        assert_eq!(
            answers(&mut t),
            vec![(cid, command::ERROR, vec![error::INVALID_LEN])]
        );
    }

    #[test]
    fn continuation_packets_out_of_sequence_are_refused() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        let reports = frame(cid, command::PING, &[5; 200]);
        send(&mut t, Duration::ZERO, &reports[..1]);
        send(&mut t, Duration::ZERO, &reports[2..3]); // seq 1 before seq 0
        assert_eq!(
            answers(&mut t),
            vec![(cid, command::ERROR, vec![error::INVALID_SEQ])]
        );
        // A spurious continuation afterwards is ignored.
        send(&mut t, Duration::ZERO, &reports[1..2]);
        assert!(t.take_reports().is_empty());

        // A new message on the same channel mid-message.
        send(&mut t, Duration::ZERO, &reports[..1]);
        send(&mut t, Duration::ZERO, &frame(cid, command::PING, &[1]));
        assert_eq!(
            answers(&mut t),
            vec![(cid, command::ERROR, vec![error::INVALID_SEQ])]
        );
    }

    #[test]
    fn a_message_cut_short_times_out() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        let reports = frame(cid, command::PING, &[5; 200]);
        send(&mut t, Duration::ZERO, &reports[..2]);
        t.poll(999 * MS);
        assert!(t.take_reports().is_empty());
        assert_eq!(t.next_deadline(), Some(1000 * MS));
        t.poll(1000 * MS);
        assert_eq!(
            answers(&mut t),
            vec![(cid, command::ERROR, vec![error::MSG_TIMEOUT])]
        );
        assert_eq!(t.next_deadline(), None);
        // The rest, late, is ignored.
        send(&mut t, 1001 * MS, &reports[2..]);
        assert!(t.take_reports().is_empty());
    }

    #[test]
    fn other_channels_are_busy_while_a_message_is_assembled_or_processed() {
        let mut t = Transport::new(Config::default());
        let a = allocate(&mut t);
        let b = allocate(&mut t);
        let reports = frame(a, command::CBOR, &[4; 100]);
        send(&mut t, Duration::ZERO, &reports[..1]);
        send(&mut t, Duration::ZERO, &frame(b, command::PING, &[1]));
        assert_eq!(
            answers(&mut t),
            vec![(b, command::ERROR, vec![error::CHANNEL_BUSY])]
        );
        let events = send(&mut t, Duration::ZERO, &reports[1..]);
        assert_eq!(events.len(), 1);
        // Processing: others are busy, INIT still works, CANCEL from others is ignored.
        send(&mut t, Duration::ZERO, &frame(b, command::CBOR, &[4]));
        assert_eq!(
            answers(&mut t),
            vec![(b, command::ERROR, vec![error::CHANNEL_BUSY])]
        );
        send(&mut t, Duration::ZERO, &frame(a, command::PING, &[4]));
        assert_eq!(
            answers(&mut t),
            vec![(a, command::ERROR, vec![error::CHANNEL_BUSY])]
        );
        assert_ne!(allocate(&mut t), a);
        assert!(send(&mut t, Duration::ZERO, &frame(b, command::CANCEL, &[])).is_empty());
        assert_eq!(
            send(&mut t, Duration::ZERO, &frame(a, command::CANCEL, &[])),
            vec![Event::Cancel { cid: a }]
        );
        assert!(t.take_reports().is_empty(), "CANCEL itself has no answer");
        // INIT on the busy channel aborts the request.
        assert_eq!(
            send(&mut t, Duration::ZERO, &frame(a, command::INIT, &[1; 8])),
            vec![Event::Abort { cid: a }]
        );
        assert_eq!(t.busy_channel(), None);
    }

    #[test]
    fn keepalives_go_out_every_interval_while_a_request_is_processed() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        send(&mut t, Duration::ZERO, &frame(cid, command::CBOR, &[1]));
        t.set_keepalive_status(keepalive::UPNEEDED);
        assert_eq!(t.next_deadline(), Some(100 * MS));
        t.poll(50 * MS);
        assert!(t.take_reports().is_empty());
        t.poll(100 * MS);
        t.poll(150 * MS);
        t.poll(200 * MS);
        assert_eq!(
            answers(&mut t),
            vec![
                (cid, command::KEEPALIVE, vec![keepalive::UPNEEDED]),
                (cid, command::KEEPALIVE, vec![keepalive::UPNEEDED]),
            ]
        );
        t.respond(cid, command::CBOR, &[0]);
        t.poll(1000 * MS);
        assert_eq!(answers(&mut t), vec![(cid, command::CBOR, vec![0])]);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn wink_answers_empty() {
        let mut t = Transport::new(Config::default());
        let cid = allocate(&mut t);
        assert_eq!(
            send(&mut t, Duration::ZERO, &frame(cid, command::WINK, &[])),
            vec![Event::Wink]
        );
        assert_eq!(answers(&mut t), vec![(cid, command::WINK, vec![])]);
    }
}
