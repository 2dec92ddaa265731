//! The order of commits: relayed commits held by slot and processed in turn, this device's
//! proposal and the sequencer's verdict, and catching up from peers.

use openmls::prelude::Sender;
use openmls::prelude::{LeafNodeIndex, ProcessedMessageContent, StagedCommit};
use openmls_traits::OpenMlsProvider as _;
use serde_bytes::ByteBuf;
use serde_json::value::to_raw_value;
use std::collections::BTreeSet;
use tessera_wire::Base64Url;
use tessera_wire::signal::ClientFrame;

use uuid::Uuid;
use web_time::Instant;

use crate::identity::DeviceCertificate;
use crate::payload::{CommitPayload, Content, SignalPayload};
use crate::roster::{Refusal, certificate_of};

use super::{Engine, Event, Held, LinkCommand, Pending, StopReason, protocol_message, refused};

/// A relayed commit, decrypted and staged, with its sender.
#[derive(Debug)]
pub(super) struct Staged {
    /// The sequencer slot the commit was relayed for.
    pub(super) slot: u64,
    pub(super) commit: Box<StagedCommit>,
    pub(super) sender: DeviceCertificate,
    pub(super) sender_leaf: LeafNodeIndex,
}

/// A catch-up request: the peer asked for the missing commits, until when it may answer, and the
/// peers asked so far.
#[derive(Debug)]
pub(super) struct CatchUp {
    pub(super) asked: Uuid,
    pub(super) answer_by: Instant,
    pub(super) tried: BTreeSet<Uuid>,
}

pub(super) fn commit_frame(slot: u64, commit: &[u8]) -> ClientFrame {
    let payload = to_raw_value(&CommitPayload { mls: commit.into() })
        .unwrap_or_else(|_| unreachable!("a commit payload is JSON"));
    ClientFrame::Commit { slot, payload }
}

impl Engine {
    pub(super) fn hold(&mut self, slot: u64, commit: Vec<u8>) {
        if self.saved.next_slot.is_none_or(|next| slot >= next) {
            self.saved.held.entry(slot).or_insert(Held {
                commit,
                tried_with_directory: None,
            });
            // A device outside the group keeps only what a Welcome may need.
            while self.saved.held.len() > self.config.recent_commits {
                self.saved.held.pop_first();
            }
        }
    }

    pub(super) fn answer_catch_up(&mut self, to: Uuid, first: u64) {
        let Some(next) = self.saved.next_slot else {
            return;
        };
        let commits: Option<Vec<Base64Url>> = (first..next)
            .map(|slot| {
                self.saved
                    .recent
                    .get(&slot)
                    .map(|c| Base64Url::from(c.as_slice()))
            })
            .collect();
        let commits = commits.unwrap_or_default();
        self.send_signal(
            to,
            &SignalPayload::Commits {
                from: first,
                commits,
            },
        );
    }

    pub(super) fn receive_commits(
        &mut self,
        now: Instant,
        from: Uuid,
        first: u64,
        commits: Vec<Base64Url>,
    ) {
        let Some(catch_up) = self.catch_up.as_mut() else {
            return;
        };
        if catch_up.asked != from {
            return;
        }
        if commits.is_empty() {
            // That peer cannot help: ask the next one at once.
            catch_up.answer_by = now;
            return;
        }
        for (slot, commit) in (first..).zip(commits) {
            self.hold(slot, commit.into_vec());
        }
        self.catch_up = None;
    }

    pub(super) fn receive_commit_result(&mut self, now: Instant, slot: u64, accepted: bool) {
        let Some(pending) = self.saved.pending.clone() else {
            return;
        };
        if pending.slot != slot {
            return;
        }
        if accepted {
            self.merge_own(now, pending);
        } else if pending.claim {
            // Another device created the circle's group first: drop this one and ask to join.
            self.saved.pending = None;
            self.drop_group();
        }
        // A refused change waits for the slot's winner (section 7, step 3).
    }

    pub(super) fn merge_own(&mut self, now: Instant, pending: Pending) {
        let Some(group) = self.group.as_mut() else {
            return;
        };
        if let Err(e) = group.merge_pending_commit(&self.provider) {
            self.event(Event::Refused {
                what: "own commit",
                reason: refused(e),
            });
            return;
        }
        self.saved.pending = None;
        self.saved.next_slot = Some(pending.slot + 1);
        self.saved.held.remove(&pending.slot);
        self.remember(pending.slot, pending.commit.clone());
        if pending.claim {
            self.event(Event::GroupCreated);
            self.retry_key_packages(now);
        }
        if let Some(welcome) = &pending.welcome {
            for device in &pending.joining {
                self.send_signal(
                    *device,
                    &SignalPayload::Welcome {
                        welcome: welcome.as_slice().into(),
                        next: pending.slot + 1,
                    },
                );
            }
        }
        for device in &pending.joining {
            self.waiting.remove(device);
        }
        self.after_epoch_change(now, &pending.joining);
    }

    pub(super) fn remember(&mut self, slot: u64, commit: Vec<u8>) {
        self.saved.recent.insert(slot, ByteBuf::from(commit));
        while self.saved.recent.len() > self.config.recent_commits {
            self.saved.recent.pop_first();
        }
    }

    pub(super) fn after_epoch_change(&mut self, now: Instant, joined: &[Uuid]) {
        self.refresh_roster();
        // Tell newcomers this member's name.
        if let Some(name) = self.saved.display_name.clone() {
            let content = serde_json::to_vec(&Content::Profile { name }).unwrap_or_default();
            if !joined.is_empty()
                && let Ok(msg) = self.encrypt(&content)
            {
                for device in joined {
                    let _ = self.send_to(now, *device, &msg, None);
                }
            }
        }
        // Messages that were ahead of this device may be readable now.
        let future = std::mem::take(&mut self.saved.future);
        for (device, msg) in future {
            self.receive_link_message(now, device, msg);
        }
    }

    pub(super) fn drop_group(&mut self) {
        if let Some(mut group) = self.group.take() {
            let _ = group.delete(self.provider.storage());
        }
        self.saved.next_slot = None;
        self.saved.future.clear();
        self.waiting.clear();
        self.refresh_roster();
    }

    /// Processes slot `slot`'s commit. Returns false when it must wait (for the directory).
    pub(super) fn process_slot(&mut self, now: Instant, slot: u64, held: Held) -> bool {
        if let Some(pending) = self.saved.pending.clone()
            && pending.slot == slot
        {
            if pending.commit == held.commit {
                self.merge_own(now, pending);
                return true;
            }
            if let Some(group) = self.group.as_mut() {
                let _ = group.clear_pending_commit(self.provider.storage());
            }
            self.saved.pending = None;
        }
        let staged = match self.staged.take() {
            Some(staged) if staged.slot == slot => Ok(staged),
            _ => self.stage_commit(slot, &held.commit),
        };
        let retry = self.awaits_directory(held.tried_with_directory);
        let outcome = staged.and_then(|staged| match self.authorize(&staged) {
            Ok(()) => Ok(staged.commit),
            Err(reason) if retry && reason.awaits_directory() => {
                self.staged = Some(staged);
                Err(reason)
            }
            Err(reason) => Err(reason),
        });
        match outcome {
            Ok(staged) => {
                let removed_me = staged.self_removed();
                let joined: Vec<Uuid> = staged
                    .add_proposals()
                    .filter_map(|a| {
                        certificate_of(a.add_proposal().key_package().leaf_node().credential())
                            .ok()
                            .map(|c| c.device)
                    })
                    .collect();
                let merged = self
                    .group
                    .as_mut()
                    .map(|g| g.merge_staged_commit(&self.provider, *staged));
                self.saved.next_slot = Some(slot + 1);
                self.remember(slot, held.commit);
                if removed_me {
                    self.drop_group();
                    for link in std::mem::take(&mut self.links).into_keys() {
                        self.link(LinkCommand::Close { device: link });
                    }
                    self.stop(StopReason::Removed);
                    return true;
                }
                match merged {
                    Some(Ok(())) => {
                        for device in &joined {
                            self.waiting.remove(device);
                        }
                        self.after_epoch_change(now, &joined);
                    }
                    Some(Err(e)) => self.event(Event::Refused {
                        what: "commit",
                        reason: refused(e),
                    }),
                    None => {}
                }
                true
            }
            Err(reason) if retry && reason.awaits_directory() => {
                self.saved.held.insert(
                    slot,
                    Held {
                        commit: held.commit,
                        tried_with_directory: Some(
                            held.tried_with_directory.unwrap_or(self.directory_version),
                        ),
                    },
                );
                self.fetch_directory();
                false
            }
            Err(reason) => {
                // Every honest device reaches the same verdict on the same bytes: skip the slot.
                self.saved.next_slot = Some(slot + 1);
                self.event(Event::Refused {
                    what: "commit",
                    reason,
                });
                true
            }
        }
    }

    /// Decrypts and stages a relayed commit (once: MLS consumes the secrets it is read with).
    pub(super) fn stage_commit(&mut self, slot: u64, commit: &[u8]) -> Result<Staged, Refusal> {
        let group = self
            .group
            .as_mut()
            .ok_or(Refusal::Mls("not in the group".into()))?;
        let message = protocol_message(commit)?;
        if message.epoch() != group.epoch() {
            return Err(Refusal::Mls(format!(
                "made in epoch {}, the group is in {}",
                message.epoch().as_u64(),
                group.epoch().as_u64()
            )));
        }
        let processed = group
            .process_message(&self.provider, message)
            .map_err(refused)?;
        let Sender::Member(sender_leaf) = *processed.sender() else {
            return Err(Refusal::NotAllowed("commits come from members"));
        };
        let sender = certificate_of(processed.credential())?;
        let ProcessedMessageContent::StagedCommitMessage(commit) = processed.into_content() else {
            return Err(Refusal::Malformed("commit"));
        };
        Ok(Staged {
            slot,
            commit,
            sender,
            sender_leaf,
        })
    }

    pub(super) fn process_held(&mut self, now: Instant) {
        loop {
            let Some(next) = self.saved.next_slot else {
                return;
            };
            if self.group.is_none() {
                return;
            }
            self.saved.held.retain(|slot, _| *slot >= next);
            let Some(held) = self.saved.held.remove(&next) else {
                return;
            };
            if !self.process_slot(now, next, held) {
                return;
            }
        }
    }

    pub(super) fn caught_up(&self) -> bool {
        match (self.saved.next_slot, self.server_slot) {
            (Some(next), Some(server)) => next >= server && self.saved.held.is_empty(),
            _ => false,
        }
    }

    pub(super) fn catch_up_if_behind(&mut self, now: Instant) {
        let (Some(next), Some(server)) = (self.saved.next_slot, self.server_slot) else {
            return;
        };
        if next >= server || self.saved.held.contains_key(&next) {
            return;
        }
        let timed_out = self.catch_up.as_ref().is_some_and(|c| c.answer_by <= now);
        if self.catch_up.is_some() && !timed_out {
            return;
        }
        let mut tried = self.catch_up.take().map(|c| c.tried).unwrap_or_default();
        let candidate = self
            .online
            .keys()
            .copied()
            .find(|d| self.roster.contains_key(d) && !tried.contains(d));
        match candidate {
            Some(peer) => {
                tried.insert(peer);
                self.send_signal(peer, &SignalPayload::NeedCommits { from: next });
                self.catch_up = Some(CatchUp {
                    asked: peer,
                    answer_by: now + self.config.catch_up_timeout,
                    tried,
                });
            }
            None if !tried.is_empty() => {
                // Nobody online holds the missing commits: leave the stale group and be
                // welcomed again.
                self.drop_group();
            }
            None => {}
        }
    }

    pub(super) fn propose(
        &mut self,
        slot: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        joining: Vec<Uuid>,
        claim: bool,
    ) {
        let frame = commit_frame(slot, &commit);
        self.saved.pending = Some(Pending {
            slot,
            commit,
            welcome,
            joining,
            claim,
        });
        self.send(frame);
    }
}
