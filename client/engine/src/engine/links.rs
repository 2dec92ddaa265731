//! Peer links as the engine sees them: which device opens, when to retry, and the WebRTC
//! negotiation carried MLS-protected through the server.

use std::collections::BTreeMap;

use uuid::Uuid;
use web_time::Instant;

use crate::codec::{self};
use crate::payload::{Bundler, RtcSignal, Sealed, SignalPayload};
use crate::roster::Refusal;

use super::{Engine, EngineError, LinkCommand, Output};

/// A turn's outputs with the packets for each peer bundled into as few data channel messages as
/// hold them ([`Bundler`]). A peer's packets keep their order, and none moves past another
/// command for links or a frame for the server; events may come before packets queued earlier.
pub(super) fn bundled(outputs: impl IntoIterator<Item = Output>) -> Vec<Output> {
    fn flush(out: &mut Vec<Output>, bundlers: &mut BTreeMap<Uuid, Bundler>) {
        for (device, mut bundler) in std::mem::take(bundlers) {
            if let Some(bytes) = bundler.take() {
                out.push(Output::Link(LinkCommand::Data { device, bytes }));
            }
        }
    }
    let mut out = Vec::new();
    let mut bundlers: BTreeMap<Uuid, Bundler> = BTreeMap::new();
    for output in outputs {
        match output {
            Output::Link(LinkCommand::Data { device, bytes }) => {
                if let Some(bytes) = bundlers.entry(device).or_default().push(bytes) {
                    out.push(Output::Link(LinkCommand::Data { device, bytes }));
                }
            }
            Output::Event(_) => out.push(output),
            other => {
                flush(&mut out, &mut bundlers);
                out.push(other);
            }
        }
    }
    flush(&mut out, &mut bundlers);
    out
}

/// The state of a link as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    Down { retry_at: Option<Instant> },
    Connecting { since: Instant },
    Up,
}

impl Engine {
    /// The link to `device` opened.
    pub fn handle_link_up(&mut self, now: Instant, device: Uuid) {
        if !self.roster.contains_key(&device) {
            self.link(LinkCommand::Close { device });
            return;
        }
        self.links.insert(device, Link::Up);
        self.saved.delivery.link_up(now, device);
        self.carry.link_up(device);
        if self.is_own_device(device)
            && let Some(ask) = self.history_import.link_up(device)
        {
            self.send_history(now, device, &ask);
        }
        self.step(now);
    }

    /// The link to `device` closed or failed.
    pub fn handle_link_down(&mut self, now: Instant, device: Uuid) {
        self.saved.delivery.link_down(device);
        self.carry.link_down(device);
        self.history_import.link_down(device);
        self.files.link_down(device);
        if self.links.contains_key(&device) {
            self.links.insert(
                device,
                Link::Down {
                    retry_at: Some(now + self.config.relink_after),
                },
            );
        }
        self.step(now);
    }

    /// A negotiation step of this device's side of the link to `device` (from the WebRTC stack),
    /// sent to it MLS-protected through the server.
    ///
    /// # Errors
    /// [`EngineError::NotInGroup`], or MLS failing.
    pub fn send_rtc(
        &mut self,
        now: Instant,
        device: Uuid,
        signal: RtcSignal,
    ) -> Result<(), EngineError> {
        let sent = self.send_sealed(
            device,
            &Sealed::Rtc {
                to: device,
                rtc: signal,
            },
        );
        self.step(now);
        sent
    }

    /// Sends `sealed` to `device` through the server, MLS-protected.
    pub(super) fn send_sealed(&mut self, device: Uuid, sealed: &Sealed) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(sealed).map_err(|e| EngineError::Mls(e.to_string()))?;
        let msg = self.encrypt(&bytes)?;
        self.send_signal(device, &SignalPayload::Mls { msg: msg.into() });
        Ok(())
    }

    pub(super) fn open_sealed(
        &mut self,
        now: Instant,
        from: Uuid,
        member: Uuid,
        msg: &[u8],
    ) -> Result<(), Refusal> {
        let (sender, content) = self.decrypt(msg)?;
        if sender.device != from || sender.member != member {
            return Err(Refusal::WrongSender);
        }
        let sealed: Sealed =
            codec::from_json(&content).map_err(|_| Refusal::Malformed("sealed payload"))?;
        match sealed {
            Sealed::Rtc { to, rtc } => {
                if to != self.saved.device {
                    return Err(Refusal::WrongRecipient);
                }
                if matches!(rtc, RtcSignal::Offer { .. }) {
                    self.links.insert(from, Link::Connecting { since: now });
                }
                self.link(LinkCommand::Rtc {
                    device: from,
                    signal: rtc,
                });
            }
            Sealed::LinkWanted { to } => {
                if to != self.saved.device {
                    return Err(Refusal::WrongRecipient);
                }
                match self.links.get(&from) {
                    // The peer lost this link (it restarted, or the link died on its side first):
                    // open a new one now rather than when this side notices.
                    Some(Link::Up) => {
                        self.saved.delivery.link_down(from);
                        self.carry.link_down(from);
                        self.links.insert(from, Link::Down { retry_at: None });
                    }
                    Some(Link::Down { .. }) => {
                        self.links.insert(from, Link::Down { retry_at: None });
                    }
                    Some(Link::Connecting { .. }) | None => {}
                }
            }
        }
        Ok(())
    }

    pub(super) fn drive_links(&mut self, now: Instant) {
        let me = self.saved.device;
        let mut opens = Vec::new();
        for link in self.links.values_mut() {
            if let Link::Connecting { since } = *link
                && since + self.config.link_timeout <= now
            {
                *link = Link::Down { retry_at: None };
            }
        }
        let mut asks = Vec::new();
        for (device, link) in &mut self.links {
            let Link::Down { retry_at } = link else {
                continue;
            };
            if !self.online.contains_key(device) {
                continue;
            }
            if me < *device {
                // This side opens.
                if retry_at.is_none_or(|at| at <= now) {
                    *link = Link::Connecting { since: now };
                    opens.push(*device);
                }
            } else if retry_at.is_none_or(|at| at <= now) {
                // The other side opens; ask it to at once: it may hold a link this device lost
                // (this device restarted) and would not notice for many seconds. When it is
                // opening already, the ask is ignored.
                *link = Link::Connecting { since: now };
                asks.push(*device);
            }
        }
        for device in opens {
            self.link(LinkCommand::Open { device });
        }
        for device in asks {
            let _ = self.send_sealed(device, &Sealed::LinkWanted { to: device });
        }
    }
}
