//! The whole key as one sans-IO machine: HID reports in and out through the CTAPHID transport,
//! the CTAP2 authenticator behind it, keepalives while it waits for a touch, and the unplugging
//! mid-ceremony that a test may ask for.

use std::time::Duration;

use crate::ctap2::{self, Authenticator, Reply};
use crate::ctaphid::{self, Event, Report, Transport, command, keepalive};

/// The U2F status word for an instruction that is not supported: this key speaks CTAP2 only.
const SW_INS_NOT_SUPPORTED: [u8; 2] = [0x6d, 0x00];

/// A virtual security key.
pub struct VirtualKey {
    transport: Transport,
    authenticator: Authenticator,
    cbor_requests: u64,
    unplug_at: Option<u64>,
    unplugged: bool,
    log: Vec<String>,
}

impl VirtualKey {
    /// A key made of `authenticator` behind a CTAPHID transport with `config`; with
    /// `unplug_at = Some(n)` it is pulled out when the n-th CBOR request arrives (never answered).
    #[must_use]
    pub fn new(
        authenticator: Authenticator,
        config: ctaphid::Config,
        unplug_at: Option<u64>,
    ) -> Self {
        Self {
            transport: Transport::new(config),
            authenticator,
            cbor_requests: 0,
            unplug_at,
            unplugged: false,
            log: Vec::new(),
        }
    }

    /// The authenticator.
    #[must_use]
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// The authenticator, to change it.
    pub fn authenticator_mut(&mut self) -> &mut Authenticator {
        &mut self.authenticator
    }

    /// How many CBOR requests arrived so far.
    #[must_use]
    pub fn cbor_requests(&self) -> u64 {
        self.cbor_requests
    }

    /// Whether the key was pulled out (see [`VirtualKey::new`]): it answers nothing more.
    #[must_use]
    pub fn unplugged(&self) -> bool {
        self.unplugged
    }

    /// What happened since the last call, one line each, for a log.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// When [`VirtualKey::poll`] has something to do next.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Duration> {
        match (
            self.transport.next_deadline(),
            self.authenticator.next_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes one report from the host; returns the reports to send back.
    pub fn receive(&mut self, now: Duration, report: &[u8]) -> Vec<Report> {
        if self.unplugged {
            return Vec::new();
        }
        match self.transport.receive(now, report) {
            Some(Event::Cbor { cid, data }) => {
                self.cbor_requests += 1;
                let name = ctap2::command_name(data[0]);
                if self.unplug_at == Some(self.cbor_requests) {
                    self.unplugged = true;
                    self.log.push(format!(
                        "request {}: {name}: unplugged before answering",
                        self.cbor_requests
                    ));
                    self.transport.take_reports();
                    return Vec::new();
                }
                match self.authenticator.handle(now, &data) {
                    Reply::Done(answer) => {
                        self.log.push(format!(
                            "request {}: {name}: status {:#04x}",
                            self.cbor_requests, answer[0]
                        ));
                        self.transport.respond(cid, command::CBOR, &answer);
                    }
                    Reply::WaitingForTouch => {
                        self.log.push(format!(
                            "request {}: {name}: waiting for a touch",
                            self.cbor_requests
                        ));
                        self.transport.set_keepalive_status(keepalive::UPNEEDED);
                    }
                }
            }
            Some(Event::Msg { cid, .. }) => {
                self.log.push("U2F message: not supported".into());
                self.transport
                    .respond(cid, command::MSG, &SW_INS_NOT_SUPPORTED);
            }
            Some(Event::Cancel { cid }) => {
                if let Some(answer) = self.authenticator.cancel() {
                    self.log.push("cancelled by the client".into());
                    self.transport.respond(cid, command::CBOR, &answer);
                }
            }
            Some(Event::Abort { .. }) => self.authenticator.abort(),
            Some(Event::Wink) => self.log.push("wink".into()),
            None => {}
        }
        self.transport.take_reports()
    }

    /// Lets time pass: a touch, a touch timeout, keepalives, a message timeout.
    pub fn poll(&mut self, now: Duration) -> Vec<Report> {
        if self.unplugged {
            return Vec::new();
        }
        if let Some(answer) = self.authenticator.poll(now)
            && let Some(cid) = self.transport.busy_channel()
        {
            self.log
                .push(format!("answered after waiting: status {:#04x}", answer[0]));
            self.transport.respond(cid, command::CBOR, &answer);
        }
        self.transport.poll(now);
        self.transport.take_reports()
    }
}
