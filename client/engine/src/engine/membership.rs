//! Who is in the circle's group: the directory's word on members, KeyPackages and Welcomes checked
//! against it, the group created or joined, and this device's commits adding and removing devices.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use openmls::prelude::BasicCredential;
use openmls::prelude::{
    CredentialWithKey, KeyPackage, KeyPackageIn, LeafNode, LeafNodeIndex, MlsGroup,
    MlsGroupCreateConfig, MlsMessageBodyIn, MlsMessageOut, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
    ProtocolVersion, SenderRatchetConfiguration, StagedWelcome,
};
use openmls_traits::OpenMlsProvider as _;
use tessera_wire::{Base64Url, MemberInfo};
use uuid::Uuid;
use web_time::Instant;

use crate::carry::{Stream, stream_of};
use crate::payload::{Content, SignalPayload};
use crate::roster::{Directory, Refusal, certificate_of, verify_leaf, verify_leaf_node};
use crate::safety::safety_words;
use crate::trust::{
    Distrusted, RootPin, TrustError, TrustedDirectory, distrust_all, find_root,
    verify_directory_with,
};

use super::{
    CIPHERSUITE, EarlySignal, Engine, EngineError, Event, Link, LinkCommand, Output, Staged,
    commit_frame, mls_error, push_bounded, read_mls, refused,
};

/// How many past epochs' secrets a device keeps, so that messages sent just before a commit
/// (or waiting in an outbox across one) can still be read.
pub(super) const PAST_EPOCHS: usize = 16;

/// A device of the group: its member, its leaf and the hardware key that certified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupDevice {
    pub(super) member: Uuid,
    pub(super) leaf: LeafNodeIndex,
    pub(super) key: Base64Url,
    /// Its message stream ([`crate::carry`]), from its leaf's signature key.
    pub(super) stream: Stream,
}

/// A KeyPackage not checked yet: kept until this device is in the group and knows the directory,
/// or until a fresher directory may know its unknown member.
#[derive(Debug, Clone)]
pub(super) struct UncheckedKeyPackage {
    /// The device that announced it.
    pub(super) from: Uuid,
    /// Its member, as the server relayed it.
    pub(super) member: Uuid,
    pub(super) bytes: Vec<u8>,
    /// The directory version an unknown member was last looked up in.
    pub(super) tried: Option<u64>,
}

/// A Welcome not checked yet, kept until the directory comes (or a fresher one may know a member).
#[derive(Debug, Clone)]
pub(super) struct UncheckedWelcome {
    /// The device that sent it.
    pub(super) from: Uuid,
    pub(super) bytes: Vec<u8>,
    /// The sequencer slot after the commit that added this device.
    pub(super) next_slot: u64,
    /// The directory version an unknown member was last looked up in.
    pub(super) tried: Option<u64>,
}

/// A verified KeyPackage waiting to be added.
#[derive(Debug, Clone)]
pub(super) struct Waiting {
    pub(super) key_package: KeyPackage,
    pub(super) since: Instant,
}

/// The group's settings; a device that joins by Welcome uses the same ones.
pub(super) fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(1_000, 100_000))
        .build()
}

impl Engine {
    /// The directory as it holds from the circle's root: finds the root first when this device
    /// is to (see [`RootPin::FromOwnKey`]), remembers the invitations seen used, and says once
    /// what it distrusts.
    pub(super) fn verify_directory(&mut self, listed: Vec<MemberInfo>) -> TrustedDirectory {
        // The same directory from the same root as last time: the same verdict, with nothing new
        // to say or pin (devices fetch the directory often, and it rarely changes).
        let root = self.trust.trust.as_ref().map(|t| t.root);
        if let Some((last_root, last_listed, verdict)) = &self.last_verdict
            && Some(*last_root) == root
            && *last_listed == listed
        {
            return verdict.clone();
        }
        let trusted = self.verify_directory_afresh(&listed);
        if let Some(root) = self.trust.trust.as_ref().map(|t| t.root) {
            self.last_verdict = Some((root, listed, trusted.clone()));
        }
        trusted
    }

    fn verify_directory_afresh(&mut self, listed: &[MemberInfo]) -> TrustedDirectory {
        let origin_rp = (self.config.origin.as_str(), self.config.rp_id.as_str());
        let trusted = match &mut self.trust.trust {
            Some(trust) => {
                if trust.root == RootPin::FromOwnKey
                    && let Some(root) = find_root(
                        listed,
                        self.saved.member,
                        &self.saved.certificate,
                        origin_rp,
                    )
                {
                    trust.root = RootPin::Pinned(root);
                    self.dirty = true;
                }
                match trust.root {
                    RootPin::Pinned(root) => {
                        let mut trusted = verify_directory_with(
                            listed,
                            trust.circle,
                            &root,
                            origin_rp,
                            (&self.trust.used, &mut self.checked),
                        );
                        // Once revoked, revoked: an older directory replayed brings no one back.
                        for member in &self.remembered.revoked {
                            if trusted.members.remove(member).is_some() {
                                trusted.revoked.insert(*member);
                                trusted.distrusted.push(Distrusted {
                                    member: *member,
                                    key: None,
                                    reason: TrustError::Replayed,
                                });
                            }
                        }
                        self.safety = Some(safety_words(&root, &trusted));
                        trusted
                    }
                    RootPin::FromOwnKey => distrust_all(listed, TrustError::NoRoot),
                }
            }
            None => distrust_all(listed, TrustError::NoRoot),
        };
        if !trusted.members.is_empty() {
            self.compare_pins(&trusted);
        }
        for member in &trusted.revoked {
            if self.remembered.revoked.insert(*member) {
                self.dirty = true;
            }
        }
        for (key, first) in &trusted.used {
            if !self.trust.used.contains_key(key) {
                self.trust.used.insert(key.clone(), first.clone());
                self.dirty = true;
            }
        }
        // Group members the directory no longer lists, with no revocation: they stay, and the
        // device says so (a chain that found no root says enough already).
        let dropped: BTreeSet<Uuid> = if trusted.members.is_empty() {
            BTreeSet::new()
        } else {
            let listed: HashSet<Uuid> = listed.iter().map(|l| l.id).collect();
            self.roster
                .values()
                .map(|d| d.member)
                .filter(|m| {
                    !trusted.members.contains_key(m)
                        && !trusted.revoked.contains(m)
                        && !listed.contains(m)
                })
                .collect()
        };
        let dropped = dropped.into_iter().map(|member| Distrusted {
            member,
            key: None,
            reason: TrustError::Dropped,
        });
        for d in trusted.distrusted.iter().cloned().chain(dropped) {
            let said = (d.member, d.key.clone(), d.reason.to_string());
            if self.distrust_reported.insert(said) {
                self.event(Event::Distrusted {
                    member: d.member,
                    key: d.key,
                    own: d.member == self.saved.member,
                    reason: d.reason,
                });
            }
        }
        trusted
    }

    /// Pins each member's keys as the chain admits them on first sight, and says when they change
    /// afterwards (added or removed), once per change.
    fn compare_pins(&mut self, trusted: &TrustedDirectory) {
        for (member, admitted) in &trusted.members {
            let keys: BTreeSet<Base64Url> = admitted
                .passkeys
                .iter()
                .map(|k| k.credential_id.clone())
                .collect();
            let Some(pinned) = self.remembered.keys.get(member) else {
                self.remembered.keys.insert(*member, keys);
                self.dirty = true;
                continue;
            };
            if *pinned == keys {
                continue;
            }
            let added = keys.difference(pinned).cloned().collect();
            let removed = pinned.difference(&keys).cloned().collect();
            self.event(Event::KeysChanged {
                member: *member,
                added,
                removed,
                own: *member == self.saved.member,
            });
            self.remembered.keys.insert(*member, keys);
            self.dirty = true;
        }
    }

    /// Asks the driver for the circle directory: one fetch at a time, and one more when a need
    /// arises while it runs (its answer may be from before the change); after a failed fetch, the
    /// retry [`Engine::handle_timeout`] makes.
    pub(super) fn fetch_directory(&mut self) {
        if self.directory_requested {
            self.directory_again = true;
        } else if self.directory_retry_at.is_none() {
            self.directory_requested = true;
            self.outputs.push_back(Output::FetchDirectory);
        }
    }

    pub(super) fn credential_with_key(&self) -> CredentialWithKey {
        let identity =
            serde_json::to_vec(&self.saved.certificate).unwrap_or_else(|_| unreachable!());
        CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: self.saved.signature_public.clone().into(),
        }
    }

    pub(super) fn refresh_roster(&mut self) {
        let before: BTreeSet<Uuid> = self.roster.keys().copied().collect();
        self.roster = self
            .group
            .iter()
            .flat_map(MlsGroup::members)
            .filter_map(|m| {
                certificate_of(&m.credential).ok().map(|c| {
                    let device = GroupDevice {
                        member: c.member,
                        leaf: m.index,
                        key: c.credential_id,
                        stream: stream_of(&m.signature_key),
                    };
                    (c.device, device)
                })
            })
            .collect();
        let after: BTreeSet<Uuid> = self.roster.keys().copied().collect();
        let me = self.saved.device;
        self.carry
            .set_devices(after.iter().copied().filter(|d| *d != me));
        if before != after {
            for gone in before.difference(&after) {
                self.saved.delivery.forget(*gone);
                self.carry.forget(*gone);
                if self.links.remove(gone).is_some() {
                    self.link(LinkCommand::Close { device: *gone });
                }
            }
            for new in after.difference(&before).filter(|d| **d != me) {
                self.links
                    .entry(*new)
                    .or_insert(Link::Down { retry_at: None });
            }
            self.event(Event::MembersChanged);
        }
    }

    /// Whether something refused for an unknown member, first tried with directory `tried`,
    /// waits for a fresh directory: it has not been tried with one fetched after that yet. Once
    /// it has, the refusal stands (a newer directory does not make it try again, so a member
    /// nobody knows cannot make this device fetch the directory without end).
    pub(super) fn awaits_directory(&self, tried: Option<u64>) -> bool {
        tried.is_none_or(|version| version == self.directory_version)
    }

    pub(super) fn receive_key_package(
        &mut self,
        now: Instant,
        from: Uuid,
        member: Uuid,
        bytes: &[u8],
        tried: Option<u64>,
    ) {
        let Some(directory) = self.directory.as_ref().filter(|_| self.group.is_some()) else {
            // Kept until this device is in the group and knows the directory: it may be the one
            // designated to add them.
            self.unverified.retain(|u| u.from != from);
            let unchecked = UncheckedKeyPackage {
                from,
                member,
                bytes: bytes.to_vec(),
                tried,
            };
            push_bounded(&mut self.unverified, unchecked);
            return;
        };
        let checked = (|| {
            let MlsMessageBodyIn::KeyPackage(kp) = read_mls(bytes)? else {
                return Err(Refusal::Malformed("KeyPackage"));
            };
            let kp: KeyPackage =
                KeyPackageIn::validate(kp, self.provider.crypto(), ProtocolVersion::Mls10)
                    .map_err(refused)?;
            let certificate = verify_leaf_node(
                directory,
                kp.leaf_node(),
                &self.config.origin,
                &self.config.rp_id,
            )?;
            if certificate.device != from || certificate.member != member {
                return Err(Refusal::WrongSender);
            }
            Ok(kp)
        })();
        match checked {
            Ok(kp) => {
                let already = self.group.as_ref().is_some_and(|g| {
                    g.members()
                        .any(|m| m.signature_key == kp.leaf_node().signature_key().as_slice())
                });
                if !already {
                    self.waiting.entry(from).or_insert(Waiting {
                        key_package: kp,
                        since: now,
                    });
                }
            }
            Err(reason) if reason.awaits_directory() && self.awaits_directory(tried) => {
                // Perhaps a member (or a key) enrolled after the directory was fetched.
                let version = Some(tried.unwrap_or(self.directory_version));
                self.unverified.push(UncheckedKeyPackage {
                    from,
                    member,
                    bytes: bytes.to_vec(),
                    tried: version,
                });
                self.fetch_directory();
            }
            Err(reason) => self.event(Event::Refused {
                what: "KeyPackage",
                reason,
            }),
        }
    }

    pub(super) fn retry_key_packages(&mut self, now: Instant) {
        let unverified = std::mem::take(&mut self.unverified);
        for u in unverified {
            self.receive_key_package(now, u.from, u.member, &u.bytes, u.tried);
        }
    }

    pub(super) fn receive_welcome(
        &mut self,
        now: Instant,
        from: Uuid,
        bytes: &[u8],
        next: u64,
        tried: Option<u64>,
    ) {
        if self.group.is_some() || self.saved.key_package.is_none() {
            return;
        }
        let Some(directory) = &self.directory else {
            self.welcomes.push(UncheckedWelcome {
                from,
                bytes: bytes.to_vec(),
                next_slot: next,
                tried,
            });
            return;
        };
        // openmls deletes the KeyPackage a Welcome is for before the engine checks who sent it:
        // a refused (forged, or not yet verifiable) Welcome must leave it, or the genuine one
        // could never be read.
        let checkpoint = self.provider.checkpoint();
        let joined = (|| {
            let MlsMessageBodyIn::Welcome(welcome) = read_mls(bytes)? else {
                return Err(Refusal::Malformed("Welcome"));
            };
            let staged = StagedWelcome::new_from_welcome(
                &self.provider,
                create_config().join_config(),
                welcome,
                None,
            )
            .map_err(refused)?;
            for member in staged.members() {
                verify_leaf(
                    directory,
                    &member.credential,
                    &member.signature_key,
                    &self.config.origin,
                    &self.config.rp_id,
                )?;
            }
            let sender = staged.welcome_sender().map_err(refused)?;
            if certificate_of(sender.credential())?.device != from {
                return Err(Refusal::WrongSender);
            }
            staged.into_group(&self.provider).map_err(refused)
        })();
        let group = match joined {
            Ok(group) => group,
            Err(reason) => {
                self.provider.roll_back(checkpoint);
                if reason.awaits_directory() && self.awaits_directory(tried) {
                    let version = Some(tried.unwrap_or(self.directory_version));
                    self.welcomes.push(UncheckedWelcome {
                        from,
                        bytes: bytes.to_vec(),
                        next_slot: next,
                        tried: version,
                    });
                    self.fetch_directory();
                } else {
                    self.event(Event::Refused {
                        what: "Welcome",
                        reason,
                    });
                }
                return;
            }
        };
        self.carry.joined_at(group.epoch().as_u64());
        self.group = Some(group);
        self.saved.next_slot = Some(next);
        self.saved.key_package = None;
        self.saved.held.retain(|slot, _| *slot >= next);
        self.waiting.clear();
        self.refresh_roster();
        self.event(Event::Joined);
        self.retry_key_packages(now);
        for EarlySignal { from, member, msg } in std::mem::take(&mut self.early) {
            self.receive_signal(now, from, member, SignalPayload::Mls { msg });
        }
        if let Some(name) = self.saved.display_name.clone() {
            let _ = self.broadcast(now, &Content::Profile { name }, None);
        }
    }

    /// Checks that every leaf a staged commit brings is bound to a hardware key of a current
    /// member and that its sender may make its changes.
    pub(super) fn authorize(&self, staged: &Staged) -> Result<(), Refusal> {
        let no_directory = Directory::default();
        let directory = self.directory.as_ref().unwrap_or(&no_directory);
        let group = self
            .group
            .as_ref()
            .ok_or(Refusal::Mls("not in the group".into()))?;
        let (sender, sender_leaf) = (&staged.sender, staged.sender_leaf);
        let staged = &staged.commit;
        let check = |leaf: &LeafNode| {
            verify_leaf_node(directory, leaf, &self.config.origin, &self.config.rp_id)
        };
        let mut added_devices = BTreeMap::new();
        for add in staged.add_proposals() {
            let c = check(add.add_proposal().key_package().leaf_node())?;
            added_devices.insert(c.device, c.member);
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            let c = check(leaf)?;
            if c.device != sender.device {
                return Err(Refusal::NotBound);
            }
        }
        for remove in staged.remove_proposals() {
            let removed = remove.remove_proposal().removed();
            let Some(target) = group.member(removed).and_then(|c| certificate_of(c).ok()) else {
                return Err(Refusal::Malformed("removal of an unknown leaf"));
            };
            let removable =
                directory.may_remove(sender.member, target.member, &target.credential_id);
            let rejoined = added_devices.get(&target.device) == Some(&target.member);
            let itself = removed == sender_leaf;
            if !(rejoined || itself || removable) {
                if !directory.revoked(target.member) {
                    // Perhaps revoked since the directory was fetched; else not revoked at all.
                    return Err(Refusal::UnknownMember);
                }
                return Err(Refusal::NotAllowed(
                    "only an admin device removes a revoked member",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn join_or_create(&mut self, now: Instant) {
        let admin = self
            .directory
            .as_ref()
            .is_some_and(|d| d.is_admin(self.saved.member));
        if self.server_slot == Some(0) && admin && self.saved.pending.is_none() {
            if let Err(e) = self.create_group() {
                self.event(Event::Refused {
                    what: "group creation",
                    reason: refused(e),
                });
            }
            return;
        }
        if self.saved.pending.is_some() {
            return;
        }
        let kp = match &self.saved.key_package {
            Some(kp) => kp.clone(),
            None => match self.new_key_package() {
                Ok(kp) => kp,
                Err(e) => {
                    self.event(Event::Refused {
                        what: "KeyPackage",
                        reason: refused(e),
                    });
                    return;
                }
            },
        };
        let again = self.announce_at.is_some_and(|at| at <= now);
        if again {
            self.announced.clear();
        }
        let targets: Vec<Uuid> = self
            .online
            .keys()
            .copied()
            .filter(|d| !self.announced.contains(d))
            .collect();
        for device in targets {
            self.announced.insert(device);
            self.send_signal(
                device,
                &SignalPayload::KeyPackage {
                    kp: kp.clone().into(),
                },
            );
        }
        if again || self.announce_at.is_none() {
            self.announce_at = Some(now + self.config.announce_every);
        }
    }

    pub(super) fn new_key_package(&mut self) -> Result<Vec<u8>, EngineError> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential_with_key(),
            )
            .map_err(mls_error)?;
        let bytes = MlsMessageOut::from(bundle.key_package().clone())
            .to_bytes()
            .map_err(mls_error)?;
        self.saved.key_package = Some(bytes.clone());
        Ok(bytes)
    }

    pub(super) fn create_group(&mut self) -> Result<(), EngineError> {
        let mut group = MlsGroup::new(
            &self.provider,
            &self.signer,
            &create_config(),
            self.credential_with_key(),
        )
        .map_err(mls_error)?;
        let bundle = group
            .commit_builder()
            .force_self_update(true)
            .load_psks(self.provider.storage())
            .map_err(mls_error)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(mls_error)?
            .stage_commit(&self.provider)
            .map_err(mls_error)?;
        let commit = bundle.into_commit().to_bytes().map_err(mls_error)?;
        self.carry.joined_at(group.epoch().as_u64());
        self.group = Some(group);
        self.saved.next_slot = Some(0);
        self.propose(0, commit, None, Vec::new(), true);
        self.refresh_roster();
        Ok(())
    }

    /// Adds waiting KeyPackages (this device if it is the designated one, any device after a
    /// while) and, on an admin device, removes the leaves of revoked members; on an admin's
    /// device or one of the same member's, those of devices whose key was revoked.
    pub(super) fn commit_changes(&mut self, now: Instant) {
        if self.saved.pending.is_some() || !self.caught_up() {
            return;
        }
        let Some(next) = self.saved.next_slot else {
            return;
        };
        let me = self.saved.device;
        let designated = self
            .online
            .keys()
            .copied()
            .chain([me])
            .filter(|d| self.roster.contains_key(d))
            .min()
            == Some(me);
        let fallback = self.config.add_fallback_after;
        let adds: Vec<(Uuid, KeyPackage)> = self
            .waiting
            .iter()
            .filter(|(_, w)| designated || w.since + fallback <= now)
            .map(|(d, w)| (*d, w.key_package.clone()))
            .collect();
        let no_directory = Directory::default();
        let directory = self.directory.as_ref().unwrap_or(&no_directory);
        let member = self.saved.member;
        let revoked: Vec<LeafNodeIndex> = self
            .roster
            .values()
            .filter(|d| directory.may_remove(member, d.member, &d.key))
            .map(|d| d.leaf)
            .collect();
        // As many adds as one commit frame holds: a commit carries every KeyPackage it adds.
        let mut take = adds.len();
        loop {
            let chosen = &adds[..take];
            let mut removals: Vec<LeafNodeIndex> = self
                .roster
                .iter()
                // A rejoining device's old leaf goes with its new KeyPackage's add.
                .filter(|(device, _)| chosen.iter().any(|(d, _)| d == *device))
                .map(|(_, d)| d.leaf)
                .chain(revoked.iter().copied())
                .collect();
            removals.sort_unstable();
            removals.dedup();
            if chosen.is_empty() && removals.is_empty() {
                return;
            }
            let Some((commit, welcome)) = self.build_own_commit(chosen, removals) else {
                return;
            };
            let frame_bytes =
                serde_json::to_string(&commit_frame(next, &commit)).map_or(usize::MAX, |f| f.len());
            if take > 1 && frame_bytes > self.limits.frame_bytes {
                // Too large for one frame: half the adds now, the rest next.
                if let Some(group) = self.group.as_mut() {
                    let _ = group.clear_pending_commit(self.provider.storage());
                }
                take /= 2;
                continue;
            }
            let joining = chosen.iter().map(|(d, _)| *d).collect();
            self.propose(next, commit, welcome, joining, false);
            return;
        }
    }

    /// Builds and stages a commit of these adds and removals: the commit and its Welcome. A
    /// failure is told as a refusal of this device's own commit.
    pub(super) fn build_own_commit(
        &mut self,
        adds: &[(Uuid, KeyPackage)],
        removals: Vec<LeafNodeIndex>,
    ) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let group = self.group.as_mut()?;
        let built = group
            .commit_builder()
            .propose_adds(adds.iter().map(|(_, kp)| kp.clone()))
            .propose_removals(removals)
            .load_psks(self.provider.storage())
            .map_err(mls_error)
            .and_then(|b| {
                b.build(
                    self.provider.rand(),
                    self.provider.crypto(),
                    &self.signer,
                    |_| true,
                )
                .map_err(mls_error)
            })
            .and_then(|b| b.stage_commit(&self.provider).map_err(mls_error));
        let bundle = match built {
            Ok(bundle) => bundle,
            Err(e) => {
                // A KeyPackage openmls will not add (e.g. already used): forget them all.
                self.waiting.clear();
                self.event(Event::Refused {
                    what: "own commit",
                    reason: Refusal::Mls(e.to_string()),
                });
                return None;
            }
        };
        let welcome = bundle.to_welcome_msg().and_then(|w| w.to_bytes().ok());
        match bundle.into_commit().to_bytes() {
            Ok(commit) => Some((commit, welcome)),
            Err(e) => {
                self.event(Event::Refused {
                    what: "own commit",
                    reason: refused(e),
                });
                None
            }
        }
    }
}
