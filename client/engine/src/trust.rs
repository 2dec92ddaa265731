//! The circle's chain of trust, checked by every device without the server's word: the root a
//! device pins (the founding admin's passkey), the proofs that travel with the directory as opaque
//! data (admissions and endorsements), and the directory as it holds from that root.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tessera_wire::{
    Base64Url, MemberInfo, PublicKeyCredential, PublicKeyInfo, RequestChallengeResponse, Role,
};
use uuid::Uuid;

use crate::decision::{Decision, DecisionError, DecisionStatement, SignedDecision, proof_digest};
use crate::identity::{CertificateError, DeviceCertificate};
use crate::invitation::{Admission, InvitationError, InvitationSecret};
use crate::signed::{KeySignature, append_passkey};

/// Separates a root fingerprint from every other hash.
const ROOT_DOMAIN: &[u8] = b"tessera root v1";
/// Separates a member id derived from an invitation from every other hash.
const MEMBER_DOMAIN: &[u8] = b"tessera member v1";
/// Separates an endorsement's signature from every other use of a hardware key.
const ENDORSEMENT_DOMAIN: &[u8] = b"tessera key endorsement v1";

/// A circle's root as devices pin it: SHA-256 over the founding admin's member id and passkey.
/// The invitation link's fragment carries it, so a device that joins never takes its root from the
/// server.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RootFingerprint(pub [u8; 32]);

impl RootFingerprint {
    /// The fingerprint of `member`'s `passkey` as the circle's root.
    #[must_use]
    pub fn of(member: Uuid, passkey: &PublicKeyInfo) -> RootFingerprint {
        let mut message = ROOT_DOMAIN.to_vec();
        message.extend_from_slice(member.as_bytes());
        append_passkey(&mut message, passkey);
        RootFingerprint(Sha256::digest(&message).into())
    }

    /// The fingerprint as text (base64url, 43 characters).
    #[must_use]
    pub fn to_text(&self) -> String {
        Base64Url::encode(&self.0)
    }

    /// The fingerprint of its text.
    ///
    /// # Errors
    /// [`LinkError::Damaged`] when `text` is not 32 bytes in base64url.
    pub fn parse(text: &str) -> Result<RootFingerprint, LinkError> {
        let bytes = Base64Url::decode(text).map_err(|_| LinkError::Damaged)?;
        Ok(RootFingerprint(
            bytes.try_into().map_err(|_| LinkError::Damaged)?,
        ))
    }
}

impl std::fmt::Debug for RootFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootFingerprint({})", self.to_text())
    }
}

/// The member id a newcomer enrolls under: derived from the circle's root and the invitation key,
/// so that the user handle the hardware key hands back at every login commits to the root (a
/// UUIDv8 of SHA-256's first bytes). A later device of the member finds its root from it.
#[must_use]
pub fn member_id_for(root: &RootFingerprint, invitation_key: &Base64Url) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(MEMBER_DOMAIN);
    hash.update(root.0);
    hash.update(invitation_key.as_slice());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Why an invitation link cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link lost its fragment (the part after `#`), or never had one.
    #[error("this link is incomplete: ask the admin for the whole link")]
    Incomplete,
    /// The fragment is not an invitation secret and a root fingerprint.
    #[error("this link is damaged: ask the admin for the whole link")]
    Damaged,
}

/// What an invitation link's fragment carries, which browsers never send to a server: the
/// invitation's secret and the circle root's fingerprint.
#[derive(Debug)]
pub struct LinkSecrets {
    /// The invitation's secret key.
    pub secret: InvitationSecret,
    /// The circle's root.
    pub root: RootFingerprint,
}

impl LinkSecrets {
    /// The fragment (without `#`): the secret and the root, base64url, joined by a dot.
    #[must_use]
    pub fn to_fragment(&self) -> String {
        format!(
            "{}.{}",
            Base64Url::encode(&self.secret.to_bytes()),
            self.root.to_text()
        )
    }

    /// The secrets of a fragment (with or without its `#`).
    ///
    /// # Errors
    /// [`LinkError::Incomplete`] for an empty fragment, [`LinkError::Damaged`] for one that is not
    /// a secret and a root.
    pub fn from_fragment(fragment: &str) -> Result<LinkSecrets, LinkError> {
        let fragment = fragment.strip_prefix('#').unwrap_or(fragment);
        if fragment.is_empty() {
            return Err(LinkError::Incomplete);
        }
        let (secret, root) = fragment.split_once('.').ok_or(LinkError::Damaged)?;
        let secret: [u8; 32] = Base64Url::decode(secret)
            .map_err(|_| LinkError::Damaged)?
            .try_into()
            .map_err(|_| LinkError::Damaged)?;
        Ok(LinkSecrets {
            secret: InvitationSecret::from_bytes(&secret),
            root: RootFingerprint::parse(root)?,
        })
    }
}

/// What a device checks its circle's membership from: the circle, and its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    /// The device's circle.
    pub circle: Uuid,
    /// The circle's root.
    pub root: RootPin,
}

/// How a device knows its circle's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootPin {
    /// Pinned: from the invitation link the device joined with, or found before.
    Pinned(RootFingerprint),
    /// To be found at the first directory from the key that certified this device (a member's
    /// later device, or the founder's first): see [`find_root`].
    FromOwnKey,
}

/// A member's extra passkey, endorsed by one of the member's keys already admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    /// The member.
    pub member: Uuid,
    /// The new passkey.
    pub passkey: PublicKeyInfo,
    /// The endorsing key's signature over [`Endorsement::challenge`].
    pub signature: KeySignature,
}

impl Endorsement {
    /// The challenge the endorsing key signs: SHA-256 of a domain tag, the member and the passkey.
    #[must_use]
    pub fn challenge(member: Uuid, passkey: &PublicKeyInfo) -> [u8; 32] {
        let mut message = ENDORSEMENT_DOMAIN.to_vec();
        message.extend_from_slice(member.as_bytes());
        append_passkey(&mut message, passkey);
        Sha256::digest(&message).into()
    }

    /// Has one of `member`'s keys endorse `passkey`: `sign` answers the request.
    ///
    /// # Errors
    /// `sign`'s.
    pub fn sign<E>(
        member: Uuid,
        passkey: PublicKeyInfo,
        rp_id: &str,
        sign: impl FnOnce(&RequestChallengeResponse) -> Result<PublicKeyCredential, E>,
    ) -> Result<Endorsement, E> {
        let signature = KeySignature::sign(&Endorsement::challenge(member, &passkey), rp_id, sign)?;
        Ok(Endorsement {
            member,
            passkey,
            signature,
        })
    }

    /// Checks that one of `member_keys` signed it; returns that key.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn verify<'k>(
        &self,
        member_keys: &'k [PublicKeyInfo],
        origin: &str,
        rp_id: &str,
    ) -> Result<&'k PublicKeyInfo, CertificateError> {
        let challenge = Endorsement::challenge(self.member, &self.passkey);
        self.signature
            .verify(&challenge, member_keys, origin, rp_id)
    }
}

/// A proof that admits one of a member's passkeys, as the directory carries it (opaque to the
/// server: the JSON of this, base64url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyProof {
    /// Admitted by a signed invitation (a newcomer's, or a recovery's).
    Admission(Admission),
    /// Endorsed by another of the member's keys.
    Endorsement(Endorsement),
}

impl KeyProof {
    /// The proof as the server keeps it.
    #[must_use]
    pub fn to_blob(&self) -> Base64Url {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The proof of a blob.
    ///
    /// # Errors
    /// [`TrustError::Malformed`].
    pub fn from_blob(blob: &Base64Url) -> Result<KeyProof, TrustError> {
        crate::codec::from_json(blob.as_slice()).map_err(|_| TrustError::Malformed)
    }

    /// The member the proof admits a key of.
    #[must_use]
    pub fn member(&self) -> Uuid {
        match self {
            KeyProof::Admission(a) => a.member,
            KeyProof::Endorsement(e) => e.member,
        }
    }

    /// The key it admits.
    #[must_use]
    pub fn passkey(&self) -> &PublicKeyInfo {
        match self {
            KeyProof::Admission(a) => &a.passkey,
            KeyProof::Endorsement(e) => &e.passkey,
        }
    }
}

/// Why a member or one of their keys is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// This device has no root to check from.
    #[error("this device has not pinned its circle's root")]
    NoRoot,
    /// The pinned root's key is not in the directory.
    #[error("the circle's root key is not in the directory")]
    RootMissing,
    /// Nothing signed admits the key.
    #[error("no signed invitation or endorsement admits this key")]
    Unproven,
    /// A proof that is not one.
    #[error("a proof in the directory is malformed")]
    Malformed,
    /// A proof listed under another member than the one it names.
    #[error("a proof is listed under another member than the one it admits")]
    Misfiled,
    /// The invitation is for another circle.
    #[error("the invitation is for another circle")]
    WrongCircle,
    /// The invitation's issuer is not an admin the chain admits.
    #[error("the invitation's issuer is not an admin of the circle")]
    IssuerNotAdmin,
    /// The invitation's chain does not hold.
    #[error("{0}")]
    Invitation(InvitationError),
    /// A recovery invitation names another member, or one the chain does not admit.
    #[error("a recovery invitation for a member the chain does not admit")]
    BadRecovery,
    /// The endorsement is not signed by one of the member's admitted keys.
    #[error("the key's endorsement does not hold: {0}")]
    Endorsement(CertificateError),
    /// The invitation admitted another key already.
    #[error("the invitation was used before, for another key")]
    InvitationReused,
    /// The directory gives the member another role than the chain does.
    #[error("the directory gives this member a role no admin signed")]
    ForgedRole,
    /// The directory says the member was revoked, and the revocation does not hold.
    #[error("the directory says this member was revoked, but {0}: they stay")]
    Revocation(DecisionError),
    /// The directory says one of the member's keys was revoked, and the revocation does not
    /// hold.
    #[error("the directory says one of this member's keys was revoked, but {0}: it stays")]
    KeyRevocation(DecisionError),
    /// The directory says the member was made an admin, and the promotion does not hold.
    #[error("the directory makes this member an admin, but {0}")]
    Promotion(DecisionError),
    /// A signed revocation removed the member, and a later directory lists them again without
    /// it (an older directory replayed).
    #[error(
        "a revocation an admin signed removed this member, and the directory lists them again \
         without it: they stay out"
    )]
    Replayed,
    /// The directory no longer lists a member of the group, with no signed revocation.
    #[error("the directory dropped this member without a revocation an admin signed: they stay")]
    Dropped,
}

/// A member the chain admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedMember {
    /// The role an admin signed (the root's member is an admin).
    pub role: Role,
    /// The member's passkeys the chain admits and the directory lists.
    pub passkeys: Vec<PublicKeyInfo>,
    /// Every key the chain admits, listed or not: a key endorsed by one the member lost since
    /// still counts.
    pub admitted: Vec<PublicKeyInfo>,
    /// The admin whose invitation admitted the member (none for the root's member).
    pub invited_by: Option<Uuid>,
}

impl TrustedMember {
    fn admit(&mut self, passkey: &PublicKeyInfo, listed: bool) {
        if !self.admitted.contains(passkey) {
            self.admitted.push(passkey.clone());
        }
        if listed && !self.passkeys.contains(passkey) {
            self.passkeys.push(passkey.clone());
        }
    }
}

/// A member, or one of their keys, that the directory lists and the chain does not admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distrusted {
    /// The member.
    pub member: Uuid,
    /// The key, when the member is admitted but this key is not.
    pub key: Option<Base64Url>,
    /// Why.
    pub reason: TrustError,
}

/// Invitation keys a device has seen admit a key, kept in its saved state: an invitation admits
/// once, whatever a later directory says.
pub type UsedInvitations = std::collections::BTreeMap<Base64Url, (Uuid, Base64Url)>;

/// The directory as it holds from the root.
#[derive(Debug, Clone, Default)]
pub struct TrustedDirectory {
    /// The members the chain admits.
    pub members: HashMap<Uuid, TrustedMember>,
    /// What the directory lists that the chain does not admit.
    pub distrusted: Vec<Distrusted>,
    /// Invitation keys that admitted a key here: invitation key → (member, credential id).
    pub used: UsedInvitations,
    /// The members a revocation signed by an admin the chain admits removes from the circle.
    pub revoked: HashSet<Uuid>,
    /// The keys (member, credential id) a signed key revocation took from their member: the
    /// devices they certified leave the group.
    pub revoked_keys: HashSet<(Uuid, Base64Url)>,
}

/// A directory nothing in which is admitted, for `reason`.
#[must_use]
pub fn distrust_all(listed: &[MemberInfo], reason: TrustError) -> TrustedDirectory {
    TrustedDirectory {
        distrusted: listed
            .iter()
            .map(|m| Distrusted {
                member: m.id,
                key: None,
                reason: reason.clone(),
            })
            .collect(),
        ..TrustedDirectory::default()
    }
}

/// What applying one proof came to.
enum Step {
    Applied,
    Wait(TrustError),
    Failed(TrustError),
}

/// Checks the directory from `root`: the root's member is an admin; an admission admits its
/// member (with the role its admin signed) when its issuer is an admin already admitted and its
/// chain holds; an endorsement admits another key of a member when one of the member's admitted
/// keys signed it. A key counts only while the directory lists it. An invitation key admits one
/// key, here and in `used` (what this device saw before). Whatever is listed and not admitted is
/// reported in [`TrustedDirectory::distrusted`].
#[must_use]
pub fn verify_directory(
    listed: &[MemberInfo],
    circle: Uuid,
    root: &RootFingerprint,
    origin_rp: (&str, &str),
    used: &UsedInvitations,
) -> TrustedDirectory {
    let mut checked = CheckedProofs::default();
    verify_directory_with(listed, circle, root, origin_rp, (used, &mut checked))
}

/// Proofs whose signatures this device checked already, each with the key that signed it, and
/// the proofs it read: a directory fetched again costs no signature checks and no parsing for
/// what it saw before. Only what the latest directory carried is kept.
#[derive(Debug, Default)]
pub struct CheckedProofs {
    checked: HashSet<[u8; 32]>,
    read: HashMap<Base64Url, Arc<ReadBlob>>,
}

/// A proof blob as read, with its [`proof_digest`].
#[derive(Debug)]
struct ReadBlob {
    digest: [u8; 32],
    parsed: Parsed,
}

/// A proof blob as read: a signed decision, a key proof, or why it is neither.
#[derive(Debug)]
enum Parsed {
    Decision(SignedDecision),
    Proof(KeyProof),
    Malformed(TrustError),
}

impl Parsed {
    fn of(blob: &Base64Url) -> Parsed {
        // Key proofs are the many: tried first (a decision has no `kind`, and fails at once).
        match KeyProof::from_blob(blob) {
            Ok(proof) => Parsed::Proof(proof),
            Err(e) => match SignedDecision::any_from_blob(blob) {
                Ok(decision) => Parsed::Decision(decision),
                Err(_) => Parsed::Malformed(e),
            },
        }
    }

    /// Who signed it, with which key: the member and the credential id.
    fn signer(&self) -> Option<(Uuid, &Base64Url)> {
        match self {
            Parsed::Decision(d) => Some((d.statement.issuer, &d.signature.credential_id)),
            Parsed::Proof(KeyProof::Admission(a)) => Some((
                a.invitation.statement.issuer,
                &a.invitation.signature.credential_id,
            )),
            Parsed::Proof(KeyProof::Endorsement(e)) => Some((e.member, &e.signature.credential_id)),
            Parsed::Malformed(_) => None,
        }
    }

    /// The decision, if it is one of `kind`.
    fn decision(&self, kind: Decision) -> Option<&SignedDecision> {
        match self {
            Parsed::Decision(d) if d.statement.decision == kind => Some(d),
            _ => None,
        }
    }
}

/// A listed member with their proofs (and revocation) as read.
struct Read<'a> {
    member: &'a MemberInfo,
    proofs: Vec<(&'a Base64Url, Arc<ReadBlob>)>,
    revocation: Option<(&'a Base64Url, Arc<ReadBlob>)>,
}

impl CheckedProofs {
    /// Every member's proofs and revocation as read, from what was read before where it can;
    /// forgets what `listed` no longer carries.
    fn read<'a>(&mut self, listed: &'a [MemberInfo]) -> Vec<Read<'a>> {
        let mut before = std::mem::take(&mut self.read);
        let mut read = |blob: &'a Base64Url| {
            let parsed = before
                .remove(blob)
                .or_else(|| self.read.get(blob).cloned())
                .unwrap_or_else(|| {
                    Arc::new(ReadBlob {
                        digest: proof_digest(blob.as_slice()),
                        parsed: Parsed::of(blob),
                    })
                });
            self.read.insert(blob.clone(), parsed.clone());
            (blob, parsed)
        };
        listed
            .iter()
            .map(|member| Read {
                member,
                proofs: member.proofs.iter().map(&mut read).collect(),
                revocation: member.revocation.as_ref().map(&mut read),
            })
            .collect()
    }
}

impl CheckedProofs {
    /// What identifies a proof's check: SHA-256 over the proof's digest and the key that
    /// signed it.
    fn key(digest: &[u8; 32], signer: &PublicKeyInfo) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(digest);
        hash.update(signer.public_key.as_slice());
        hash.finalize().into()
    }
}

/// [`verify_directory`], skipping the signature checks of proofs in `checked` and remembering
/// the new ones there.
#[must_use]
pub fn verify_directory_with(
    listed: &[MemberInfo],
    circle: Uuid,
    root: &RootFingerprint,
    origin_rp: (&str, &str),
    (used, checked): (&UsedInvitations, &mut CheckedProofs),
) -> TrustedDirectory {
    // The keys the directory says were revoked sign nothing but what their revocations keep
    // while the chain is checked; a revocation that then fails to hold puts its key back, and the
    // chain is checked again (only a hostile directory makes that happen).
    let read = checked.read(listed);
    let mut withdrawn = revocation_claims(&read);
    let mut rounds_left = withdrawn.len();
    loop {
        let (out, held) = verify_pass(
            (listed, &read),
            circle,
            root,
            origin_rp,
            (used, checked),
            &withdrawn,
        );
        if held == withdrawn || rounds_left == 0 {
            return out;
        }
        rounds_left -= 1;
        withdrawn = held;
    }
}

/// The digests ([`proof_digest`]) of the proofs a revocation keeps.
type Kept = HashSet<[u8; 32]>;

/// What the directory's revocations take: keys, and whole members (a revoked member's keys).
/// Each signs, from then on, only what its revocations keep ([`DecisionStatement::keeps`]).
#[derive(Debug, Default, PartialEq)]
struct Withdrawn {
    /// (member, credential id) → the key, and what it signed that holds.
    keys: HashMap<(Uuid, Base64Url), (PublicKeyInfo, Kept)>,
    /// Member → what their keys signed that holds.
    members: HashMap<Uuid, Kept>,
}

impl Withdrawn {
    /// Adds what `revocation`, listed under `member`, takes.
    fn add(&mut self, member: Uuid, revocation: &DecisionStatement) {
        let kept = revocation.kept();
        match &revocation.key {
            Some(key) => self
                .keys
                .entry((member, key.credential_id.clone()))
                .or_insert_with(|| (key.clone(), Kept::new()))
                .1
                .extend(kept),
            None => self.members.entry(member).or_default().extend(kept),
        }
    }

    fn len(&self) -> usize {
        self.keys.len() + self.members.len()
    }

    /// Whether anything of `member`'s is withdrawn.
    fn touches(&self, member: Uuid) -> bool {
        self.members.contains_key(&member) || self.keys.keys().any(|(m, _)| *m == member)
    }

    /// Whether `member`'s key `key` is revoked by itself.
    fn has_key(&self, member: Uuid, key: &PublicKeyInfo) -> bool {
        self.keys.contains_key(&(member, key.credential_id.clone()))
    }

    /// Whether `member`'s `key` may have signed the proof with `digest`.
    fn signs(&self, member: Uuid, key: &PublicKeyInfo, digest: &[u8; 32]) -> bool {
        self.members
            .get(&member)
            .is_none_or(|kept| kept.contains(digest))
            && self
                .keys
                .get(&(member, key.credential_id.clone()))
                .is_none_or(|(_, kept)| kept.contains(digest))
    }
}

/// What the directory's revocations claim, whether they hold or not.
fn revocation_claims(read: &[Read<'_>]) -> Withdrawn {
    let mut claimed = Withdrawn::default();
    for listed in read {
        for (_, parsed) in &listed.proofs {
            if let Some(revocation) = parsed.parsed.decision(Decision::RevokeKey) {
                claimed.add(listed.member.id, &revocation.statement);
            }
        }
        if let Some((_, parsed)) = &listed.revocation
            && let Some(revocation) = parsed.parsed.decision(Decision::Revoke)
        {
            claimed.add(listed.member.id, &revocation.statement);
        }
    }
    claimed
}

/// The keys of `member` (`trusted`) that may have signed the proof with `digest`: those listed
/// (or, with `unlisted`, every key the chain admitted) and the revoked ones, each unless a
/// revocation withdrew it and does not keep it.
fn signers<'t>(
    (member, trusted): (Uuid, &'t TrustedMember),
    digest: &[u8; 32],
    withdrawn: &Withdrawn,
    unlisted: bool,
) -> Cow<'t, [PublicKeyInfo]> {
    let base = if unlisted {
        &trusted.admitted
    } else {
        &trusted.passkeys
    };
    if !withdrawn.touches(member) {
        return Cow::Borrowed(base);
    }
    let revoked = trusted
        .admitted
        .iter()
        .filter(|k| !unlisted && withdrawn.has_key(member, k));
    Cow::Owned(
        base.iter()
            .chain(revoked)
            .filter(|k| withdrawn.signs(member, k, digest))
            .cloned()
            .collect(),
    )
}

/// One check of the directory, with the `withdrawn` keys signing only what their revocations
/// keep; with the key revocations that held.
fn verify_pass(
    (listed, read): (&[MemberInfo], &[Read<'_>]),
    circle: Uuid,
    root: &RootFingerprint,
    (origin, rp_id): (&str, &str),
    (used, checked): (&UsedInvitations, &mut CheckedProofs),
    withdrawn: &Withdrawn,
) -> (TrustedDirectory, Withdrawn) {
    let mut this_round = CheckedProofs::default();
    let mut out = TrustedDirectory::default();
    let mut held = Withdrawn::default();
    // The root's key, listed or (once revoked) named by its revocation.
    let Some((founder, root_key)) = listed
        .iter()
        .flat_map(|m| m.passkeys.iter().map(move |p| (m.id, p)))
        .chain(withdrawn.keys.iter().map(|((m, _), (k, _))| (*m, k)))
        .find(|(member, passkey)| RootFingerprint::of(*member, passkey) == *root)
    else {
        return (distrust_all(listed, TrustError::RootMissing), held);
    };
    let root_listed = !withdrawn.has_key(founder, root_key)
        && listed
            .iter()
            .any(|m| m.id == founder && m.passkeys.contains(root_key));
    out.members.insert(
        founder,
        TrustedMember {
            role: Role::Admin,
            passkeys: if root_listed {
                vec![root_key.clone()]
            } else {
                Vec::new()
            },
            admitted: vec![root_key.clone()],
            invited_by: None,
        },
    );
    let lists: HashMap<Uuid, &MemberInfo> = listed.iter().map(|m| (m.id, m)).collect();
    let mut pending = Vec::new();
    let mut reasons: HashMap<(Uuid, Option<Base64Url>), TrustError> = HashMap::new();
    // Which (member, key) pairs each invitation key claims to admit in this directory.
    let mut claims: HashMap<Base64Url, HashSet<(Uuid, Base64Url)>> = HashMap::new();
    // Promotions, each with the member it is listed under and its blob.
    let mut promotions: Vec<(Uuid, &SignedDecision, &[u8; 32])> = Vec::new();
    for Read { member, proofs, .. } in read {
        for (_, parsed) in proofs {
            let blob = &parsed.digest;
            match &parsed.parsed {
                Parsed::Decision(decision) => match decision.statement.decision {
                    Decision::Promote => promotions.push((member.id, decision, blob)),
                    // Checked once the chain is (below).
                    Decision::RevokeKey => {}
                    Decision::Revoke => {
                        reasons.insert((member.id, None), TrustError::Malformed);
                    }
                },
                Parsed::Proof(proof) if proof.member() != member.id => {
                    reasons.insert((member.id, None), TrustError::Misfiled);
                }
                Parsed::Proof(proof) => {
                    if let KeyProof::Admission(a) = proof {
                        claims
                            .entry(a.invitation.statement.invitation_key.clone())
                            .or_default()
                            .insert((a.member, a.passkey.credential_id.clone()));
                    }
                    pending.push((proof, blob));
                }
                Parsed::Malformed(e) => {
                    reasons.insert((member.id, None), e.clone());
                }
            }
        }
    }
    let seen = Seen {
        lists,
        claims,
        used,
        withdrawn,
    };
    let mut promotion_failures: HashMap<Uuid, DecisionError> = HashMap::new();
    loop {
        let before = pending.len() + promotions.len();
        // A promotion counts once its member is admitted and an admin the chain admits signed it.
        promotions.retain(|(member, promotion, blob)| {
            let verdict = if out.members.contains_key(member) {
                admin_signed(
                    &out,
                    (promotion, blob),
                    (circle, *member),
                    (origin, rp_id),
                    withdrawn,
                )
            } else {
                Err(DecisionError::IssuerNotAdmin)
            };
            match verdict {
                Ok(()) => {
                    if let Some(promoted) = out.members.get_mut(member) {
                        promoted.role = Role::Admin;
                    }
                    promotion_failures.remove(member);
                    false
                }
                // Perhaps admitted, or its issuer made an admin, later in this round.
                Err(DecisionError::IssuerNotAdmin) => {
                    promotion_failures.insert(*member, DecisionError::IssuerNotAdmin);
                    true
                }
                Err(e) => {
                    promotion_failures.insert(*member, e);
                    false
                }
            }
        });
        pending.retain(|(proof, blob)| {
            let cache = Cache {
                digest: blob,
                before: checked,
                now: &mut this_round,
            };
            let step = apply(proof, &mut out, &seen, cache, circle, (origin, rp_id));
            let key = Some(proof.passkey().credential_id.clone());
            match step {
                Step::Applied => false,
                Step::Wait(reason) => {
                    reasons.insert((proof.member(), key), reason);
                    true
                }
                Step::Failed(reason) => {
                    reasons.insert((proof.member(), key), reason);
                    false
                }
            }
        });
        if pending.len() + promotions.len() == before {
            break;
        }
    }
    // A revocation counts when an admin the chain admits signed it (whatever it admitted then).
    for Read {
        member, revocation, ..
    } in read
    {
        let Some((_, parsed)) = revocation else {
            continue;
        };
        let blob = &parsed.digest;
        let verdict = parsed
            .parsed
            .decision(Decision::Revoke)
            .ok_or(DecisionError::Malformed)
            .and_then(|revocation| {
                admin_signed(
                    &out,
                    (revocation, blob),
                    (circle, member.id),
                    (origin, rp_id),
                    withdrawn,
                )
                .map(|()| revocation)
            });
        match verdict {
            Ok(revocation) => {
                held.add(member.id, &revocation.statement);
                out.revoked.insert(member.id);
            }
            Err(e) => {
                // Said of the member whether or not the chain admits them (a revoked member is
                // listed with their keys).
                let reason = TrustError::Revocation(e);
                if out.members.contains_key(&member.id) {
                    out.distrusted.push(Distrusted {
                        member: member.id,
                        key: None,
                        reason,
                    });
                } else {
                    reasons.insert((member.id, None), reason);
                }
            }
        }
    }
    for member in &out.revoked {
        out.members.remove(member);
    }
    // A key's revocation counts when one of the member's own keys (the revoked one's included)
    // or an admin the chain admits signed it.
    for Read { member, proofs, .. } in read {
        for (_, parsed) in proofs {
            let Some(revocation) = parsed.parsed.decision(Decision::RevokeKey) else {
                continue;
            };
            let blob = &parsed.digest;
            let verdict = key_revoked(
                &out,
                (revocation, blob),
                (circle, member.id),
                (origin, rp_id),
                withdrawn,
            );
            match verdict {
                Ok(key) => {
                    held.add(member.id, &revocation.statement);
                    if let Some(trusted) = out.members.get_mut(&member.id) {
                        trusted.passkeys.retain(|p| p.credential_id != key);
                    }
                    out.revoked_keys.insert((member.id, key));
                }
                Err(e) => out.distrusted.push(Distrusted {
                    member: member.id,
                    key: None,
                    reason: TrustError::KeyRevocation(e),
                }),
            }
        }
    }
    for member in listed {
        if out.revoked.contains(&member.id) {
            continue;
        }
        let reason_for = |key: Option<&Base64Url>| {
            reasons
                .get(&(member.id, key.cloned()))
                .or_else(|| reasons.get(&(member.id, None)))
                .cloned()
                .unwrap_or(TrustError::Unproven)
        };
        match out.members.get(&member.id) {
            None => {
                // The member's own failure, else that of any of its keys.
                let reason = reasons
                    .get(&(member.id, None))
                    .or_else(|| {
                        member
                            .passkeys
                            .iter()
                            .find_map(|p| reasons.get(&(member.id, Some(p.credential_id.clone()))))
                    })
                    .cloned()
                    .unwrap_or(TrustError::Unproven);
                out.distrusted.push(Distrusted {
                    member: member.id,
                    key: None,
                    reason,
                });
            }
            Some(trusted) => {
                if trusted.role != member.role {
                    out.distrusted.push(Distrusted {
                        member: member.id,
                        key: None,
                        reason: promotion_failures
                            .get(&member.id)
                            .map_or(TrustError::ForgedRole, |e| TrustError::Promotion(e.clone())),
                    });
                }
                for passkey in &member.passkeys {
                    // A key a signed revocation took is out, not distrusted.
                    if out
                        .revoked_keys
                        .contains(&(member.id, passkey.credential_id.clone()))
                    {
                        continue;
                    }
                    if !trusted
                        .passkeys
                        .iter()
                        .any(|p| p.credential_id == passkey.credential_id)
                    {
                        out.distrusted.push(Distrusted {
                            member: member.id,
                            key: Some(passkey.credential_id.clone()),
                            reason: reason_for(Some(&passkey.credential_id)),
                        });
                    }
                }
            }
        }
    }
    checked.checked = this_round.checked;
    (out, held)
}

/// Checks that `decision` (its `blob`) about `member` of `circle` was signed by an admin `out`
/// admits so far, other than the member, with one of that admin's listed keys (or a withdrawn
/// one whose revocation keeps it).
fn admin_signed(
    out: &TrustedDirectory,
    (decision, digest): (&SignedDecision, &[u8; 32]),
    (circle, member): (Uuid, Uuid),
    (origin, rp_id): (&str, &str),
    withdrawn: &Withdrawn,
) -> Result<(), DecisionError> {
    let issuer_id = decision.statement.issuer;
    let issuer = out
        .members
        .get(&issuer_id)
        .filter(|i| i.role == Role::Admin && issuer_id != member)
        .ok_or(DecisionError::IssuerNotAdmin)?;
    let keys = signers((issuer_id, issuer), digest, withdrawn, false);
    decision.verify((circle, member), &keys, origin, rp_id)
}

/// The credential id of the key `revocation` (its `blob`) takes from `member` of `circle`, if
/// one of the member's keys signed it (a withdrawn key signs only its own revocation, or what
/// its revocation keeps) or an admin `out` admits did.
fn key_revoked(
    out: &TrustedDirectory,
    (revocation, digest): (&SignedDecision, &[u8; 32]),
    (circle, member): (Uuid, Uuid),
    (origin, rp_id): (&str, &str),
    withdrawn: &Withdrawn,
) -> Result<Base64Url, DecisionError> {
    let revoked = revocation
        .statement
        .key
        .as_ref()
        .ok_or(DecisionError::Malformed)?;
    if revocation.statement.issuer == member {
        let own = out
            .members
            .get(&member)
            .ok_or(DecisionError::IssuerNotAdmin)?;
        let mut keys = signers((member, own), digest, withdrawn, true).into_owned();
        if own.admitted.contains(revoked) && !keys.contains(revoked) {
            keys.push(revoked.clone());
        }
        revocation.verify((circle, member), &keys, origin, rp_id)?;
    } else {
        admin_signed(
            out,
            (revocation, digest),
            (circle, member),
            (origin, rp_id),
            withdrawn,
        )?;
    }
    Ok(revoked.credential_id.clone())
}

/// A proof's digest and the checks made before and in this round.
struct Cache<'a> {
    digest: &'a [u8; 32],
    before: &'a CheckedProofs,
    now: &'a mut CheckedProofs,
}

impl Cache<'_> {
    /// Runs `check` of the proof as signed by the one of `keys` with `credential_id`, unless it
    /// passed before; remembers a pass.
    fn check<E>(
        &mut self,
        keys: &[PublicKeyInfo],
        credential_id: &Base64Url,
        check: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let signer = keys.iter().find(|k| k.credential_id == *credential_id);
        let key = signer.map(|s| CheckedProofs::key(self.digest, s));
        if let Some(key) = key
            && self.before.checked.contains(&key)
        {
            self.now.checked.insert(key);
            return Ok(());
        }
        check()?;
        if let Some(key) = key {
            self.now.checked.insert(key);
        }
        Ok(())
    }
}

/// What a proof is checked against besides the chain: the directory's listing, which keys each
/// invitation claims to admit in it, and the invitations this device saw used before.
struct Seen<'a> {
    lists: HashMap<Uuid, &'a MemberInfo>,
    claims: HashMap<Base64Url, HashSet<(Uuid, Base64Url)>>,
    used: &'a UsedInvitations,
    withdrawn: &'a Withdrawn,
}

/// Applies one proof to what the chain admits so far.
fn apply(
    proof: &KeyProof,
    out: &mut TrustedDirectory,
    Seen {
        lists,
        claims,
        used,
        withdrawn,
    }: &Seen<'_>,
    mut cache: Cache<'_>,
    circle: Uuid,
    (origin, rp_id): (&str, &str),
) -> Step {
    let member = proof.member();
    let passkey = proof.passkey();
    // A key counts only while the directory lists it (a revoked key stays out), though an
    // admission of an unlisted key still admits its member (a member who lost that key).
    let listed = lists
        .get(&member)
        .is_some_and(|m| m.passkeys.iter().any(|p| p == passkey))
        && !withdrawn.has_key(member, passkey);
    match proof {
        KeyProof::Admission(admission) => {
            let statement = &admission.invitation.statement;
            if statement.circle != circle {
                return Step::Failed(TrustError::WrongCircle);
            }
            let Some(issuer) = out
                .members
                .get(&statement.issuer)
                .filter(|i| i.role == Role::Admin)
            else {
                return Step::Wait(TrustError::IssuerNotAdmin);
            };
            let this_use = (member, passkey.credential_id.clone());
            let reused = match used.get(&statement.invitation_key) {
                Some(first) => *first != this_use,
                None => claims
                    .get(&statement.invitation_key)
                    .is_some_and(|c| c.len() > 1),
            };
            if reused {
                return Step::Failed(TrustError::InvitationReused);
            }
            if let Some(recovered) = statement.recovers
                && (recovered != member || !out.members.contains_key(&member))
            {
                return if recovered == member {
                    Step::Wait(TrustError::BadRecovery)
                } else {
                    Step::Failed(TrustError::BadRecovery)
                };
            }
            let signer = &admission.invitation.signature.credential_id;
            let keys = signers((statement.issuer, issuer), cache.digest, withdrawn, false);
            if let Err(e) = cache.check(&keys, signer, || admission.verify(&keys, (origin, rp_id)))
            {
                return Step::Failed(TrustError::Invitation(e));
            }
            let issuer = statement.issuer;
            out.used.insert(statement.invitation_key.clone(), this_use);
            let entry = out.members.entry(member).or_insert(TrustedMember {
                role: statement.role,
                passkeys: Vec::new(),
                admitted: Vec::new(),
                invited_by: Some(issuer),
            });
            entry.admit(passkey, listed);
            Step::Applied
        }
        KeyProof::Endorsement(endorsement) => {
            let Some(trusted) = out.members.get_mut(&member) else {
                return Step::Wait(TrustError::Unproven);
            };
            let signer = &endorsement.signature.credential_id;
            let keys = signers((member, trusted), cache.digest, withdrawn, true);
            match cache.check(&keys, signer, || {
                endorsement.verify(&keys, origin, rp_id).map(|_| ())
            }) {
                Ok(()) => {
                    trusted.admit(passkey, listed);
                    Step::Applied
                }
                // Perhaps the endorsing key is admitted by a proof not applied yet.
                Err(CertificateError::UnknownKey) => {
                    Step::Wait(TrustError::Endorsement(CertificateError::UnknownKey))
                }
                Err(e) => Step::Failed(TrustError::Endorsement(e)),
            }
        }
    }
}

/// The revocation of `member` (with `key`: of that one key of theirs), issued by `issuer` (an
/// admin; for a key, also the member with another of their keys), keeping what the revoked keys
/// signed in the directory as `listed` now: the invitations, endorsements and decisions they
/// signed before keep holding, and nothing they sign afterwards does.
#[must_use]
pub fn revocation(
    listed: &[MemberInfo],
    (circle, member, issuer): (Uuid, Uuid, Uuid),
    key: Option<PublicKeyInfo>,
    issued_at: i64,
) -> DecisionStatement {
    let revoked = |(signer, credential_id): (Uuid, &Base64Url)| {
        signer == member
            && key
                .as_ref()
                .is_none_or(|k| k.credential_id == *credential_id)
    };
    let mut keeps: Vec<[u8; 32]> = listed
        .iter()
        .flat_map(|m| m.proofs.iter().chain(&m.revocation))
        .filter(|blob| Parsed::of(blob).signer().is_some_and(revoked))
        .map(|blob| proof_digest(blob.as_slice()))
        .collect();
    keeps.sort_unstable();
    keeps.dedup();
    DecisionStatement {
        decision: if key.is_some() {
            Decision::RevokeKey
        } else {
            Decision::Revoke
        },
        circle,
        member,
        issuer,
        issued_at,
        key,
        keeps: Some(keeps.concat().into()),
    }
}

/// `member`'s revocation of their own key with credential id `key_id` (base64url, as the
/// server lists it), keeping what it signed in `listed` (see [`revocation`]); `None` when the
/// directory lists no such key of theirs.
#[must_use]
pub fn own_key_revocation(
    listed: &[MemberInfo],
    (circle, member): (Uuid, Uuid),
    key_id: &str,
    issued_at: i64,
) -> Option<DecisionStatement> {
    let key_id = Base64Url::decode(key_id).ok()?;
    let key = listed
        .iter()
        .find(|m| m.id == member)?
        .passkeys
        .iter()
        .find(|k| k.credential_id.as_slice() == key_id.as_slice())?
        .clone();
    Some(revocation(
        listed,
        (circle, member, member),
        Some(key),
        issued_at,
    ))
}

/// The root a later device of `me` finds without taking the server's word, from the key that
/// certified it (checked against the directory's copy of that key, so the copy is the real one):
/// the member id of a member who joined by invitation commits to the root (see
/// [`member_id_for`]); the founder's own founding key, with no proof, is the root. A founder's
/// device certified by a later key follows that key's endorsements back to the founding key, on
/// the directory's word (docs/threat-model.md).
#[must_use]
pub fn find_root(
    listed: &[MemberInfo],
    me: Uuid,
    certificate: &DeviceCertificate,
    (origin, rp_id): (&str, &str),
) -> Option<RootFingerprint> {
    let mine = listed.iter().find(|m| m.id == me)?;
    let mut key = certificate
        .verify(&mine.passkeys, origin, rp_id)
        .ok()?
        .clone();
    let proofs: Vec<KeyProof> = mine
        .proofs
        .iter()
        .filter_map(|b| KeyProof::from_blob(b).ok())
        .filter(|p| p.member() == me)
        .collect();
    for proof in &proofs {
        if let KeyProof::Admission(a) = proof {
            let invitation_key = &a.invitation.statement.invitation_key;
            let found = listed
                .iter()
                .flat_map(|m| m.passkeys.iter().map(move |p| RootFingerprint::of(m.id, p)))
                .find(|root| member_id_for(root, invitation_key) == me);
            if found.is_some() {
                return found;
            }
        }
    }
    // The founder: follow endorsements back to a key nothing admits.
    for _ in 0..=mine.passkeys.len() {
        let admitted_by = proofs.iter().find(|p| p.passkey() == &key);
        match admitted_by {
            None => return Some(RootFingerprint::of(me, &key)),
            Some(KeyProof::Endorsement(e)) => {
                key = mine
                    .passkeys
                    .iter()
                    .find(|p| p.credential_id == e.signature.credential_id)?
                    .clone();
            }
            Some(KeyProof::Admission(_)) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use tessera_softkey::SoftKey;
    use tessera_softkey::testing::{ORIGIN, member};

    use super::*;
    use crate::identity::certify;
    use crate::invitation::{InvitationStatement, SignedInvitation};

    const RP: &str = "localhost";
    const NOW: i64 = 1_800_000_000;

    /// A circle: its founder's key and the directory as an honest server lists it.
    struct Circle {
        id: Uuid,
        founder: SoftKey,
        listed: Vec<MemberInfo>,
        root: RootFingerprint,
    }

    impl Circle {
        fn new() -> Circle {
            let (founder, info) = member(Role::Admin);
            Circle {
                id: Uuid::new_v4(),
                founder,
                root: RootFingerprint::of(info.id, &info.passkeys[0]),
                listed: vec![info],
            }
        }

        fn root(&self) -> RootFingerprint {
            self.root
        }

        fn verify(&self) -> TrustedDirectory {
            verify_directory(
                &self.listed,
                self.id,
                &self.root(),
                (ORIGIN, RP),
                &UsedInvitations::new(),
            )
        }

        /// An invitation signed by the member at `issuer` in the list, with its secret.
        fn invite(
            &mut self,
            issuer: usize,
            key: &mut SoftKey,
            role: Role,
            recovers: Option<Uuid>,
        ) -> (SignedInvitation, InvitationSecret) {
            let secret = InvitationSecret::generate().expect("randomness");
            let statement = InvitationStatement {
                circle: self.id,
                invitation_key: secret.public_key(),
                role,
                expires_at: NOW + 3600,
                issuer: self.listed[issuer].id,
                recovers,
            };
            let signed =
                SignedInvitation::sign(statement, RP, |r| key.sign_in(r, ORIGIN)).expect("signs");
            (signed, secret)
        }

        /// A newcomer admitted by the founder's invitation; returns its index and key.
        fn admit(&mut self, role: Role) -> (usize, SoftKey) {
            let mut founder = std::mem::replace(&mut self.founder, SoftKey::blank().expect("key"));
            let admitted = self.admit_with(&mut founder, role);
            self.founder = founder;
            admitted
        }

        /// A newcomer admitted by an invitation the founder signs with `key`.
        fn admit_with(&mut self, key: &mut SoftKey, role: Role) -> (usize, SoftKey) {
            let (signed, secret) = self.invite(0, key, role, None);
            let (key, mut info) = member(role);
            info.id = member_id_for(&self.root(), &secret.public_key());
            let admission = secret.admit(signed, info.id, info.passkeys[0].clone(), NOW);
            info.proofs.push(KeyProof::Admission(admission).to_blob());
            self.listed.push(info);
            (self.listed.len() - 1, key)
        }
    }

    fn distrusted(directory: &TrustedDirectory) -> Vec<(Uuid, Option<Base64Url>, TrustError)> {
        directory
            .distrusted
            .iter()
            .map(|d| (d.member, d.key.clone(), d.reason.clone()))
            .collect()
    }

    #[test]
    fn an_honest_directory_holds_from_the_root_with_the_roles_admins_signed() {
        let mut circle = Circle::new();
        let (admin, mut admin_key) = circle.admit(Role::Admin);
        // The second admin invites a member in turn.
        let (signed, secret) = circle.invite(admin, &mut admin_key, Role::Member, None);
        let (_, mut info) = member(Role::Member);
        let admission = secret.admit(signed, info.id, info.passkeys[0].clone(), NOW);
        info.proofs.push(KeyProof::Admission(admission).to_blob());
        circle.listed.push(info.clone());
        let trusted = circle.verify();
        assert_eq!(distrusted(&trusted), vec![]);
        assert_eq!(trusted.members.len(), 3);
        assert_eq!(trusted.members[&circle.listed[admin].id].role, Role::Admin);
        assert_eq!(trusted.members[&info.id].role, Role::Member);
        assert_eq!(
            trusted.members[&info.id].invited_by,
            Some(circle.listed[admin].id)
        );
        assert_eq!(trusted.members[&circle.listed[0].id].invited_by, None);
        assert_eq!(trusted.used.len(), 2);
    }

    #[test]
    fn a_directory_seen_again_is_checked_from_memory_and_a_changed_proof_afresh() {
        let mut circle = Circle::new();
        let (index, _) = circle.admit(Role::Member);
        circle.admit(Role::Admin);
        let (root, id) = (circle.root(), circle.id);
        let mut checked = CheckedProofs::default();
        let used = UsedInvitations::new();
        let cold = verify_directory_with(
            &circle.listed,
            id,
            &root,
            (ORIGIN, RP),
            (&used, &mut checked),
        );
        assert_eq!(checked.checked.len(), 2, "one check per admission");
        let first_read = Arc::clone(&checked.read[&circle.listed[index].proofs[0]]);
        let warm = verify_directory_with(
            &circle.listed,
            id,
            &root,
            (ORIGIN, RP),
            (&used, &mut checked),
        );
        assert_eq!(warm.members, cold.members);
        assert!(
            Arc::ptr_eq(&first_read, &checked.read[&circle.listed[index].proofs[0]]),
            "read once, not again when seen again"
        );
        // A proof altered since (here: its admission time) is no check the device made before.
        let mut proof = KeyProof::from_blob(&circle.listed[index].proofs[0]).expect("proof");
        if let KeyProof::Admission(a) = &mut proof {
            a.admitted_at -= 1;
        }
        circle.listed[index].proofs[0] = proof.to_blob();
        let altered = verify_directory_with(
            &circle.listed,
            id,
            &root,
            (ORIGIN, RP),
            (&used, &mut checked),
        );
        assert!(!altered.members.contains_key(&circle.listed[index].id));
        assert_eq!(
            checked.checked.len(),
            1,
            "only what the latest directory carried is kept"
        );
        // The proofs it read, too: the altered one in place of the one it replaced.
        assert_eq!(checked.read.len(), 2);
        assert!(checked.read.contains_key(&circle.listed[index].proofs[0]));
    }

    #[test]
    fn what_the_server_adds_or_alters_is_distrusted_and_admits_nobody() {
        let mut circle = Circle::new();
        let (honest, _) = circle.admit(Role::Member);
        let honest_id = circle.listed[honest].id;
        // A member inserted without any proof; one with a proof made by a key of the server's.
        let (_, forged) = member(Role::Member);
        let (mut server_key, mut server_admin) = member(Role::Admin);
        let (signed, secret) = {
            circle.listed.push(server_admin.clone());
            let made = circle.invite(circle.listed.len() - 1, &mut server_key, Role::Admin, None);
            circle.listed.pop();
            made
        };
        let (_, mut impostor) = member(Role::Admin);
        let admission = secret.admit(signed, impostor.id, impostor.passkeys[0].clone(), NOW);
        impostor
            .proofs
            .push(KeyProof::Admission(admission).to_blob());
        server_admin.proofs.clear();
        // A second key for the honest member; the honest member's role flipped to admin.
        let (_, extra) = member(Role::Member);
        circle.listed[honest]
            .passkeys
            .push(extra.passkeys[0].clone());
        circle.listed[honest].role = Role::Admin;
        circle
            .listed
            .extend([forged.clone(), server_admin.clone(), impostor.clone()]);
        let trusted = circle.verify();
        assert_eq!(
            trusted.members.len(),
            2,
            "the founder and the honest member only"
        );
        assert_eq!(trusted.members[&honest_id].role, Role::Member);
        assert_eq!(trusted.members[&honest_id].passkeys.len(), 1);
        let mut found = distrusted(&trusted);
        found.sort_by_key(|d| d.0);
        let mut expected = vec![
            (honest_id, None, TrustError::ForgedRole),
            (
                honest_id,
                Some(extra.passkeys[0].credential_id.clone()),
                TrustError::Unproven,
            ),
            (forged.id, None, TrustError::Unproven),
            (server_admin.id, None, TrustError::Unproven),
            (impostor.id, None, TrustError::IssuerNotAdmin),
        ];
        expected.sort_by_key(|d| d.0);
        assert_eq!(found, expected);
    }

    #[test]
    fn an_invitation_admits_once_and_a_stranger_root_admits_nobody() {
        let mut circle = Circle::new();
        let mut founder = std::mem::replace(&mut circle.founder, SoftKey::blank().expect("key"));
        let (signed, secret) = circle.invite(0, &mut founder, Role::Member, None);
        let (_, mut first) = member(Role::Member);
        let (_, mut second) = member(Role::Member);
        for info in [&mut first, &mut second] {
            let admission = secret.admit(signed.clone(), info.id, info.passkeys[0].clone(), NOW);
            info.proofs.push(KeyProof::Admission(admission).to_blob());
        }
        circle.listed.push(first.clone());
        // Seen alone first, the first newcomer is admitted and its use remembered.
        let seen = circle.verify();
        assert!(seen.members.contains_key(&first.id));
        // Then the server lists a second newcomer with the same invitation, with or without the
        // first: the device that remembers admits the first only; one that does not, neither.
        circle.listed.push(second.clone());
        let remembered = verify_directory(
            &circle.listed,
            circle.id,
            &circle.root(),
            (ORIGIN, RP),
            &seen.used,
        );
        assert!(remembered.members.contains_key(&first.id));
        assert!(!remembered.members.contains_key(&second.id));
        let cold = circle.verify();
        assert!(!cold.members.contains_key(&first.id));
        assert!(distrusted(&cold).contains(&(second.id, None, TrustError::InvitationReused)));
        circle.listed.remove(1);
        let replaced = verify_directory(
            &circle.listed,
            circle.id,
            &circle.root(),
            (ORIGIN, RP),
            &seen.used,
        );
        assert!(distrusted(&replaced).contains(&(second.id, None, TrustError::InvitationReused)));
        // Another root: nobody, and the device says why.
        let (_, stranger) = member(Role::Admin);
        let elsewhere = RootFingerprint::of(stranger.id, &stranger.passkeys[0]);
        let lost = verify_directory(
            &circle.listed,
            circle.id,
            &elsewhere,
            (ORIGIN, RP),
            &UsedInvitations::new(),
        );
        assert!(lost.members.is_empty());
        assert!(
            lost.distrusted
                .iter()
                .all(|d| d.reason == TrustError::RootMissing)
        );
        // An invitation for another circle.
        let other = verify_directory(
            &circle.listed,
            Uuid::new_v4(),
            &circle.root(),
            (ORIGIN, RP),
            &UsedInvitations::new(),
        );
        assert!(distrusted(&other).contains(&(second.id, None, TrustError::WrongCircle)));
    }

    #[test]
    fn extra_keys_need_the_members_endorsement_and_recovery_an_admins_invitation() {
        let mut circle = Circle::new();
        let (index, mut key) = circle.admit(Role::Member);
        let id = circle.listed[index].id;
        // An extra key endorsed by the member's own key.
        let (_, extra) = member(Role::Member);
        let endorsement = Endorsement::sign(id, extra.passkeys[0].clone(), RP, |r| {
            key.sign_in(r, ORIGIN)
        })
        .expect("signs");
        circle.listed[index]
            .passkeys
            .push(extra.passkeys[0].clone());
        circle.listed[index]
            .proofs
            .push(KeyProof::Endorsement(endorsement.clone()).to_blob());
        // The key lost, recovered with an admin's recovery invitation.
        let mut founder = std::mem::replace(&mut circle.founder, SoftKey::blank().expect("key"));
        let (signed, secret) = circle.invite(0, &mut founder, Role::Admin, Some(id));
        let (_, recovered) = member(Role::Member);
        let admission = secret.admit(signed, id, recovered.passkeys[0].clone(), NOW);
        circle.listed[index].passkeys.remove(0);
        circle.listed[index]
            .passkeys
            .push(recovered.passkeys[0].clone());
        circle.listed[index]
            .proofs
            .push(KeyProof::Admission(admission).to_blob());
        let trusted = circle.verify();
        assert_eq!(distrusted(&trusted), vec![]);
        assert_eq!(
            trusted.members[&id].passkeys.len(),
            2,
            "the extra and the recovered key"
        );
        assert_eq!(
            trusted.members[&id].role,
            Role::Member,
            "a recovery grants no role"
        );
        // An endorsement moved to another member, or signed by a stranger's key.
        let (mut stranger_key, stranger) = member(Role::Member);
        let forged = Endorsement::sign(id, stranger.passkeys[0].clone(), RP, |r| {
            stranger_key.sign_in(r, ORIGIN)
        })
        .expect("signs");
        circle.listed[index]
            .passkeys
            .push(stranger.passkeys[0].clone());
        circle.listed[index]
            .proofs
            .push(KeyProof::Endorsement(forged).to_blob());
        let mut moved = endorsement;
        moved.member = circle.listed[0].id;
        circle.listed[0]
            .proofs
            .push(KeyProof::Endorsement(moved).to_blob());
        circle.listed[0].passkeys.push(extra.passkeys[0].clone());
        let trusted = circle.verify();
        let found = distrusted(&trusted);
        assert!(
            found.contains(&(
                id,
                Some(stranger.passkeys[0].credential_id.clone()),
                TrustError::Endorsement(CertificateError::UnknownKey)
            )),
            "{found:?}"
        );
        assert!(
            found.contains(&(
                circle.listed[0].id,
                Some(extra.passkeys[0].credential_id.clone()),
                TrustError::Endorsement(CertificateError::WrongChallenge)
            )),
            "{found:?}"
        );
    }

    #[test]
    fn a_later_device_finds_its_root_from_its_own_key_not_the_servers_word() {
        let mut circle = Circle::new();
        let (index, mut key) = circle.admit(Role::Member);
        let id = circle.listed[index].id;
        let device = Uuid::new_v4();
        let certificate =
            certify(RP, id, device, b"device key", |r| key.sign_in(r, ORIGIN)).expect("certifies");
        assert_eq!(
            find_root(&circle.listed, id, &certificate, (ORIGIN, RP)),
            Some(circle.root())
        );
        // The founder's device: its own founding key.
        let founder_id = circle.listed[0].id;
        let founder_cert = certify(RP, founder_id, device, b"device key", |r| {
            circle.founder.sign_in(r, ORIGIN)
        })
        .expect("certifies");
        assert_eq!(
            find_root(&circle.listed, founder_id, &founder_cert, (ORIGIN, RP)),
            Some(circle.root())
        );
        // A server that lists another root next to the member's: still the real one (the id
        // commits to it); one that swaps the member's key: none.
        let root = circle.root();
        let (_, fake) = member(Role::Admin);
        circle.listed.insert(0, fake);
        assert_eq!(
            find_root(&circle.listed, id, &certificate, (ORIGIN, RP)),
            Some(root)
        );
        let (_, other) = member(Role::Member);
        circle.listed[index + 1].passkeys = other.passkeys;
        assert_eq!(
            find_root(&circle.listed, id, &certificate, (ORIGIN, RP)),
            None
        );
    }

    #[test]
    fn a_links_fragment_carries_the_secret_and_root_and_an_incomplete_one_is_refused() {
        let circle = Circle::new();
        let secrets = LinkSecrets {
            secret: InvitationSecret::generate().expect("randomness"),
            root: circle.root(),
        };
        let fragment = secrets.to_fragment();
        let back = LinkSecrets::from_fragment(&format!("#{fragment}")).expect("parses");
        assert_eq!(back.root, circle.root());
        assert_eq!(back.secret.public_key(), secrets.secret.public_key());
        assert_eq!(
            LinkSecrets::from_fragment("").err(),
            Some(LinkError::Incomplete)
        );
        assert_eq!(
            LinkSecrets::from_fragment("#").err(),
            Some(LinkError::Incomplete)
        );
        for damaged in [
            &fragment[1..],
            &fragment[..fragment.len() - 1],
            "abc",
            "abc.def",
        ] {
            assert_eq!(
                LinkSecrets::from_fragment(damaged).err(),
                Some(LinkError::Damaged),
                "{damaged}"
            );
        }
        assert_eq!(
            LinkError::Incomplete.to_string(),
            "this link is incomplete: ask the admin for the whole link"
        );
    }

    /// `issuer`'s promotion of `member`, signed with `key`.
    fn promotion(circle: &Circle, issuer: usize, key: &mut SoftKey, member: Uuid) -> Base64Url {
        let statement = crate::decision::DecisionStatement {
            decision: Decision::Promote,
            circle: circle.id,
            member,
            issuer: circle.listed[issuer].id,
            issued_at: NOW,
            key: None,
            keeps: None,
        };
        signed(statement, key)
    }

    /// `statement`, signed with `key`, as the server lists it.
    fn signed(statement: crate::decision::DecisionStatement, key: &mut SoftKey) -> Base64Url {
        SignedDecision::sign(statement, RP, |r| key.sign_in(r, ORIGIN))
            .expect("signs")
            .to_blob()
    }

    #[test]
    fn a_promotion_an_admin_signed_makes_an_admin_and_one_a_member_signed_does_not() {
        let mut circle = Circle::new();
        let (bea, mut bea_key) = circle.admit(Role::Member);
        let (cid, mut cid_key) = circle.admit(Role::Member);
        let bea_id = circle.listed[bea].id;
        let cid_id = circle.listed[cid].id;

        // Cid, a member, "promotes" Bea; the server lists her as an admin: nothing changes.
        let forged = promotion(&circle, cid, &mut cid_key, bea_id);
        circle.listed[bea].proofs.push(forged.clone());
        circle.listed[bea].role = Role::Admin;
        let trusted = circle.verify();
        assert_eq!(trusted.members[&bea_id].role, Role::Member);
        assert_eq!(
            distrusted(&trusted),
            vec![(
                bea_id,
                None,
                TrustError::Promotion(DecisionError::IssuerNotAdmin)
            )]
        );

        // The founder's promotion holds: Bea is an admin, and an invitation she signs admits.
        let mut founder = std::mem::replace(&mut circle.founder, SoftKey::blank().expect("key"));
        let real = promotion(&circle, 0, &mut founder, bea_id);
        circle.founder = founder;
        circle.listed[bea].proofs.retain(|p| *p != forged);
        circle.listed[bea].proofs.push(real.clone());
        let (signed, secret) = circle.invite(bea, &mut bea_key, Role::Member, None);
        let (_, mut dee) = member(Role::Member);
        dee.id = member_id_for(&circle.root(), &secret.public_key());
        let admission = secret.admit(signed, dee.id, dee.passkeys[0].clone(), NOW);
        dee.proofs.push(KeyProof::Admission(admission).to_blob());
        // Listed before Bea, so that her promotion is found only in a later round.
        circle.listed.insert(1, dee.clone());
        let trusted = circle.verify();
        assert_eq!(distrusted(&trusted), vec![]);
        assert_eq!(trusted.members[&bea_id].role, Role::Admin);
        assert_eq!(trusted.members[&dee.id].invited_by, Some(bea_id));

        // Moved to Cid, the same promotion makes no one an admin.
        let bea = circle
            .listed
            .iter()
            .position(|m| m.id == bea_id)
            .expect("Bea");
        circle.listed[bea].proofs.retain(|p| *p != real);
        circle.listed[bea].role = Role::Member;
        let cid = circle
            .listed
            .iter()
            .position(|m| m.id == cid_id)
            .expect("Cid");
        circle.listed[cid].proofs.push(real);
        circle.listed[cid].role = Role::Admin;
        let trusted = circle.verify();
        assert_eq!(trusted.members[&cid_id].role, Role::Member);
        assert!(
            distrusted(&trusted).contains(&(
                cid_id,
                None,
                TrustError::Promotion(DecisionError::Misfiled)
            )),
            "{:?}",
            distrusted(&trusted)
        );
    }

    /// The revocation of the member at `member` (with `key`: of that key of theirs), issued by
    /// the one at `issuer` and signed with `signing`.
    fn revoke(
        circle: &Circle,
        (member, issuer): (usize, usize),
        key: Option<&PublicKeyInfo>,
        signing: &mut SoftKey,
    ) -> Base64Url {
        let ids = (
            circle.id,
            circle.listed[member].id,
            circle.listed[issuer].id,
        );
        signed(revocation(&circle.listed, ids, key.cloned(), NOW), signing)
    }

    #[test]
    fn a_lost_key_is_revoked_by_another_of_its_members_keys_and_what_it_signed_before_holds() {
        let mut circle = Circle::new();
        let founder_id = circle.listed[0].id;
        let root_key = circle.listed[0].passkeys[0].clone();
        // The founder enrolls a spare key, endorsed by the founding one, then invites Bea.
        let (mut spare_key, spare) = member(Role::Admin);
        let spare = spare.passkeys[0].clone();
        let endorsement = Endorsement::sign(founder_id, spare.clone(), RP, |r| {
            circle.founder.sign_in(r, ORIGIN)
        })
        .expect("signs");
        circle.listed[0].passkeys.push(spare.clone());
        circle.listed[0]
            .proofs
            .push(KeyProof::Endorsement(endorsement).to_blob());
        let (bea, mut bea_key) = circle.admit(Role::Member);
        let bea_id = circle.listed[bea].id;

        // The founding key is lost: the spare signs its revocation, and the server drops it.
        let revocation = revoke(&circle, (0, 0), Some(&root_key), &mut spare_key);
        circle.listed[0].proofs.push(revocation);
        circle.listed[0].passkeys.remove(0);
        let trusted = circle.verify();
        assert_eq!(distrusted(&trusted), vec![]);
        assert_eq!(trusted.members[&founder_id].passkeys, vec![spare.clone()]);
        assert_eq!(trusted.members[&founder_id].role, Role::Admin);
        assert!(
            trusted
                .revoked_keys
                .contains(&(founder_id, root_key.credential_id.clone()))
        );
        // What the lost key signed before still holds: Bea's invitation, the spare's endorsement.
        assert_eq!(trusted.members[&bea_id].invited_by, Some(founder_id));
        // A server that keeps listing the key changes nothing.
        circle.listed[0].passkeys.push(root_key.clone());
        let trusted = circle.verify();
        assert_eq!(distrusted(&trusted), vec![]);
        assert_eq!(trusted.members[&founder_id].passkeys, vec![spare.clone()]);
        circle.listed[0].passkeys.pop();

        // Whoever found it invites Mallory with it, and revokes the founder's spare with it:
        // neither holds.
        let (mallory, _) = circle.admit(Role::Admin);
        let mallory_id = circle.listed[mallory].id;
        let mut thief = std::mem::replace(&mut circle.founder, SoftKey::blank().expect("key"));
        let theft = revoke(&circle, (0, 0), Some(&spare), &mut thief);
        circle.listed[0].proofs.push(theft);
        let trusted = circle.verify();
        assert!(!trusted.members.contains_key(&mallory_id));
        assert_eq!(trusted.members[&founder_id].passkeys, vec![spare.clone()]);
        let found = distrusted(&trusted);
        assert!(
            found
                .iter()
                .any(|(m, _, e)| *m == mallory_id && matches!(e, TrustError::Invitation(_))),
            "{found:?}"
        );
        assert!(
            found.contains(&(
                founder_id,
                None,
                TrustError::KeyRevocation(DecisionError::Signature(CertificateError::UnknownKey))
            )),
            "{found:?}"
        );

        // Bea's key revoked by another member, or by a stranger's key in her name: it stays.
        let (cid, mut cid_key) = circle.admit_with(&mut spare_key, Role::Member);
        let bea_passkey = circle.listed[bea].passkeys[0].clone();
        let by_cid = revoke(&circle, (bea, cid), Some(&bea_passkey), &mut cid_key);
        let (mut stranger, _) = member(Role::Member);
        let in_her_name = revoke(&circle, (bea, bea), Some(&bea_passkey), &mut stranger);
        circle.listed[bea].proofs.push(by_cid.clone());
        circle.listed[bea].proofs.push(in_her_name.clone());
        let trusted = circle.verify();
        assert_eq!(trusted.members[&bea_id].passkeys, vec![bea_passkey.clone()]);
        assert!(trusted.revoked_keys.iter().all(|(m, _)| *m != bea_id));
        let found = distrusted(&trusted);
        for reason in [
            TrustError::KeyRevocation(DecisionError::IssuerNotAdmin),
            TrustError::KeyRevocation(DecisionError::Signature(CertificateError::UnknownKey)),
        ] {
            assert!(found.contains(&(bea_id, None, reason)), "{found:?}");
        }

        // Her own key revokes itself; an admin (the founder's spare) revokes it just as well.
        for signed in [
            revoke(&circle, (bea, bea), Some(&bea_passkey), &mut bea_key),
            revoke(&circle, (bea, 0), Some(&bea_passkey), &mut spare_key),
        ] {
            circle.listed[bea]
                .proofs
                .retain(|p| *p != by_cid && *p != in_her_name);
            let before = circle.listed[bea].proofs.clone();
            circle.listed[bea].proofs.push(signed);
            let trusted = circle.verify();
            assert!(
                trusted
                    .revoked_keys
                    .contains(&(bea_id, bea_passkey.credential_id.clone()))
            );
            assert!(trusted.members[&bea_id].passkeys.is_empty());
            circle.listed[bea].proofs = before;
        }
    }

    #[test]
    fn a_revoked_admins_invitations_and_revocations_hold_and_nothing_they_sign_afterwards() {
        let mut circle = Circle::new();
        let (bea, mut bea_key) = circle.admit(Role::Admin);
        let (cid, mut cid_key) = circle.admit(Role::Member);
        let (bea_id, cid_id) = (circle.listed[bea].id, circle.listed[cid].id);
        // Bea, an admin, invites Dee and revokes Cid.
        let (signed, secret) = circle.invite(bea, &mut bea_key, Role::Member, None);
        let (_, mut dee) = member(Role::Member);
        dee.id = member_id_for(&circle.root(), &secret.public_key());
        let admission = secret.admit(signed, dee.id, dee.passkeys[0].clone(), NOW);
        dee.proofs.push(KeyProof::Admission(admission).to_blob());
        circle.listed.push(dee.clone());
        let by_bea = revoke(&circle, (cid, bea), None, &mut bea_key);
        circle.listed[cid].revocation = Some(by_bea);

        // The founder revokes Bea; the server lists her, keys and all, with the revocation.
        let mut founder = std::mem::replace(&mut circle.founder, SoftKey::blank().expect("key"));
        let of_bea = revoke(&circle, (bea, 0), None, &mut founder);
        circle.founder = founder;
        circle.listed[bea].revocation = Some(of_bea);
        let trusted = circle.verify();
        assert_eq!(distrusted(&trusted), vec![]);
        assert!(trusted.revoked.contains(&bea_id) && trusted.revoked.contains(&cid_id));
        assert!(!trusted.members.contains_key(&bea_id));
        assert_eq!(trusted.members[&dee.id].invited_by, Some(bea_id));

        // What Bea signs afterwards: an invitation for Eve, a promotion of Dee. Neither holds.
        let (signed, secret) = circle.invite(bea, &mut bea_key, Role::Admin, None);
        let (_, mut eve) = member(Role::Admin);
        eve.id = member_id_for(&circle.root(), &secret.public_key());
        let admission = secret.admit(signed, eve.id, eve.passkeys[0].clone(), NOW);
        eve.proofs.push(KeyProof::Admission(admission).to_blob());
        circle.listed.push(eve.clone());
        let dee_at = circle.listed.len() - 2;
        let promoted = promotion(&circle, bea, &mut bea_key, dee.id);
        circle.listed[dee_at].proofs.push(promoted);
        circle.listed[dee_at].role = Role::Admin;
        let trusted = circle.verify();
        assert!(!trusted.members.contains_key(&eve.id));
        assert_eq!(trusted.members[&dee.id].role, Role::Member);
        let found = distrusted(&trusted);
        assert!(
            found
                .iter()
                .any(|(m, _, e)| *m == eve.id && matches!(e, TrustError::Invitation(_))),
            "{found:?}"
        );
        assert!(
            found.iter().any(|(m, _, e)| *m == dee.id
                && *e
                    == TrustError::Promotion(DecisionError::Signature(
                        CertificateError::UnknownKey
                    ))),
            "{found:?}"
        );

        // A revocation of Bea forged in the founder's name (signed by Cid's key) does not hold:
        // she is an admin again, and her later invitation admits Eve.
        let forged = revoke(&circle, (bea, 0), None, &mut cid_key);
        circle.listed[bea].revocation = Some(forged);
        let trusted = circle.verify();
        assert!(trusted.members.contains_key(&bea_id));
        assert!(trusted.members.contains_key(&eve.id));
    }
}
