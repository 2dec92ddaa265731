//! Signed membership in the page, a thin shell over `tessera_engine::trust` and `invitation`: the
//! whole invitation link's fragment, the newcomer's admission, invitations and endorsements signed
//! and an admin's decisions (revocations, promotions) signed by the member's hardware key, the directory as it holds from the circle's
//! root, and the link's QR code (made here: the server never sees the whole link).

use serde::Serialize;
use tessera_engine::codec::from_json;
use tessera_engine::decision::{Decision, DecisionStatement, SignedDecision};
use tessera_engine::identity::key_fingerprint;
use tessera_engine::invitation::{InvitationSecret, InvitationStatement, SignedInvitation};
use tessera_engine::safety::safety_words;
use tessera_engine::signed::signature_request;
use tessera_engine::trust::{
    Endorsement, KeyProof, LinkSecrets, RootFingerprint, TrustError, UsedInvitations, distrust_all,
    member_id_for, own_key_revocation, revocation, verify_directory,
};
use tessera_wire::{Base64Url, MemberInfo, PublicKeyCredential, PublicKeyInfo, Role};
use uuid::Uuid;
use wasm_bindgen::prelude::wasm_bindgen;
use webauthn_rs_proto::AllowCredentials;

use crate::uuid;

/// The DER header of a P-256 public key's SubjectPublicKeyInfo, before its 65-byte point.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// COSE's ES256.
const ES256: i32 = -7;

fn json(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

fn passkey(text: &str) -> Result<PublicKeyInfo, String> {
    from_json(text).map_err(|_| "not a passkey".to_owned())
}

fn assertion(text: &str) -> Result<PublicKeyCredential, String> {
    from_json(text).map_err(|e| format!("the hardware key's answer is not an assertion: {e}"))
}

/// What a newcomer's device needs of the link's fragment before enrolling: the member id to ask
/// for and the circle's root, as `{"member", "root"}`.
///
/// # Errors
/// The link's problem, in words ("this link is incomplete: …").
#[wasm_bindgen(js_name = joinPlan)]
pub fn join_plan(fragment: &str) -> Result<String, String> {
    let secrets = LinkSecrets::from_fragment(fragment).map_err(|e| e.to_string())?;
    let member = member_id_for(&secrets.root, &secrets.secret.public_key());
    Ok(serde_json::json!({"member": member, "root": secrets.root.to_text()}).to_string())
}

/// The passkey a registration made, as the directory lists it: its credential id and public key
/// (`response.getPublicKey()`, a SubjectPublicKeyInfo), both base64url, for COSE algorithm `alg`.
///
/// # Errors
/// For another algorithm than ES256 or a key that is not a P-256 point.
#[wasm_bindgen(js_name = passkeyOf)]
pub fn passkey_of(credential_id: &str, spki: &str, alg: i32) -> Result<String, String> {
    if alg != ES256 {
        return Err("this key does not sign with ES256 (P-256), which Tessera needs".into());
    }
    let spki = Base64Url::decode(spki).map_err(|_| "the public key is not base64url".to_owned())?;
    let point = spki
        .strip_prefix(&P256_SPKI_HEADER[..])
        .filter(|p| p.len() == 65 && p[0] == 4)
        .ok_or("the public key is not a P-256 key")?;
    json(&PublicKeyInfo {
        credential_id: Base64Url::decode(credential_id)
            .map_err(|_| "the credential id is not base64url".to_owned())?
            .into(),
        alg: "ES256".into(),
        public_key: point.into(),
    })
}

/// The newcomer's admission of `passkey` (JSON, from [`passkey_of`]) under the invitation the
/// server handed over (`statement`, base64url), with the link's `fragment`, made at `now` (Unix
/// seconds): `{"member", "proof"}`. Checks that the statement is the link's and that the key was
/// made for the member the link derives (`user_handle`, base64url, from the creation options).
///
/// # Errors
/// A link or statement that does not fit, in words.
#[wasm_bindgen]
pub fn admission(
    fragment: &str,
    statement: &str,
    user_handle: &str,
    passkey_json: &str,
    now: f64,
) -> Result<String, String> {
    let (secrets, signed, member) = fitting(fragment, statement, user_handle)?;
    #[allow(clippy::cast_possible_truncation)]
    let admission = secrets
        .secret
        .admit(signed, member, passkey(passkey_json)?, now as i64);
    Ok(serde_json::json!({
        "member": member,
        "proof": KeyProof::Admission(admission).to_blob(),
    })
    .to_string())
}

/// Checks, before the key is made, that the server's `statement` (base64url) is the invitation of
/// the link's `fragment` and that the key will be made for the member the link derives
/// (`user_handle`, base64url, from the creation options).
///
/// # Errors
/// What does not fit, in words.
#[wasm_bindgen(js_name = checkStatement)]
pub fn check_statement(fragment: &str, statement: &str, user_handle: &str) -> Result<(), String> {
    fitting(fragment, statement, user_handle).map(|_| ())
}

/// The link's secrets, the server's signed statement and the member, when they fit together.
fn fitting(
    fragment: &str,
    statement: &str,
    user_handle: &str,
) -> Result<(LinkSecrets, SignedInvitation, Uuid), String> {
    let secrets = LinkSecrets::from_fragment(fragment).map_err(|e| e.to_string())?;
    let statement = Base64Url::decode(statement).map_err(|_| "the statement is not base64url")?;
    let signed = SignedInvitation::from_blob(&statement.into()).map_err(|e| e.to_string())?;
    if signed.statement.invitation_key != secrets.secret.public_key() {
        return Err(
            "the server's invitation is not the link's: ask the admin for a new link".into(),
        );
    }
    let member = signed
        .statement
        .recovers
        .unwrap_or_else(|| member_id_for(&secrets.root, &secrets.secret.public_key()));
    let handle = Base64Url::decode(user_handle).map_err(|_| "the user handle is not base64url")?;
    if handle != member.as_bytes() {
        return Err("the server enrolls the key under another member id than the link's".into());
    }
    Ok((secrets, signed, member))
}

/// The circle's root when `member`'s `passkey` (JSON) founded it (the operator's first link).
///
/// # Errors
/// When an argument is malformed.
#[wasm_bindgen(js_name = rootOfKey)]
pub fn root_of_key(member: &str, passkey_json: &str) -> Result<String, String> {
    Ok(RootFingerprint::of(uuid(member, "member")?, &passkey(passkey_json)?).to_text())
}

/// An invitation being issued in the page: a fresh secret and the statement the admin's hardware
/// key signs.
#[wasm_bindgen]
pub struct WebInvitation {
    secret: InvitationSecret,
    statement: InvitationStatement,
}

#[wasm_bindgen]
impl WebInvitation {
    /// An invitation to `circle` by `issuer` for a newcomer with `role` (`admin` or `member`), or
    /// (with `recovers`) for that member's new key, valid `ttl_secs` from `now` (Unix seconds).
    ///
    /// # Errors
    /// When an id or the role is malformed, or the browser gives no randomness.
    #[wasm_bindgen(constructor)]
    pub fn new(
        circle: &str,
        issuer: &str,
        role: &str,
        ttl_secs: f64,
        recovers: Option<String>,
        now: f64,
    ) -> Result<WebInvitation, String> {
        let secret = InvitationSecret::generate().map_err(|e| e.to_string())?;
        #[allow(clippy::cast_possible_truncation)]
        let expires_at = (now + ttl_secs) as i64;
        let statement = InvitationStatement {
            circle: uuid(circle, "circle")?,
            invitation_key: secret.public_key(),
            role: Role::parse(role).ok_or_else(|| format!("not a role: {role:?}"))?,
            expires_at,
            issuer: uuid(issuer, "member")?,
            recovers: recovers.as_deref().map(|m| uuid(m, "member")).transpose()?,
        };
        Ok(WebInvitation { secret, statement })
    }

    /// The request options (JSON of `publicKey`) with which the admin's key signs it.
    ///
    /// # Errors
    /// Never in practice (JSON).
    pub fn request(&self, rp_id: &str) -> Result<String, String> {
        json(&signature_request(rp_id, &self.statement.challenge()).public_key)
    }

    /// The signed statement for the server (base64url), from the key's answer (JSON).
    ///
    /// # Errors
    /// When the answer is not an assertion.
    pub fn sign(&self, credential: &str) -> Result<String, String> {
        let answer = assertion(credential)?;
        let signed =
            SignedInvitation::sign(self.statement.clone(), "", |_| Ok::<_, String>(answer))?;
        Ok(signed.to_blob().to_string())
    }

    /// The whole link: the server's `url` and the fragment with the secret and `root`.
    ///
    /// # Errors
    /// When the root is damaged.
    pub fn link(&self, url: &str, root: &str) -> Result<String, String> {
        let secrets = LinkSecrets {
            secret: InvitationSecret::from_bytes(&self.secret.to_bytes()),
            root: RootFingerprint::parse(root).map_err(|e| e.to_string())?,
        };
        Ok(format!("{url}#{}", secrets.to_fragment()))
    }
}

/// A decision being made in the page (an admin's revocation or promotion, or a member's
/// revocation of one of their keys): the statement the hardware key signs.
/// The directory of its JSON (`GET /members`).
fn listed_members(directory: &str) -> Result<Vec<MemberInfo>, String> {
    serde_json::from_str(directory).map_err(|e| format!("the directory: {e}"))
}

#[wasm_bindgen]
pub struct WebDecision {
    statement: DecisionStatement,
}

#[wasm_bindgen]
impl WebDecision {
    /// `issuer`'s `decision` (`revoke` or `promote`) about `member` of `circle` at `now` (Unix
    /// seconds). A revocation keeps what the member signed in `directory` (JSON of
    /// `GET /members`, needed for it).
    ///
    /// # Errors
    /// When an id, the decision or the directory is malformed.
    #[wasm_bindgen(constructor)]
    pub fn new(
        decision: &str,
        circle: &str,
        issuer: &str,
        member: &str,
        directory: Option<String>,
        now: f64,
    ) -> Result<WebDecision, String> {
        #[allow(clippy::cast_possible_truncation)]
        let issued_at = now as i64;
        let ids = (
            uuid(circle, "circle")?,
            uuid(member, "member")?,
            uuid(issuer, "member")?,
        );
        let statement = match decision {
            "revoke" => {
                let directory = directory.ok_or("a revocation needs the directory")?;
                revocation(&listed_members(&directory)?, ids, None, issued_at)
            }
            "promote" => DecisionStatement {
                decision: Decision::Promote,
                circle: ids.0,
                member: ids.1,
                issuer: ids.2,
                issued_at,
                key: None,
                keeps: None,
            },
            other => return Err(format!("not a decision: {other:?}")),
        };
        Ok(WebDecision { statement })
    }

    /// `member`'s revocation of their own key `credential_id` (base64url) at `now` (Unix
    /// seconds), keeping what that key signed in `directory` (JSON of `GET /members`): any of the
    /// member's other keys signs it, and a lost key's devices leave the group on that signature.
    ///
    /// # Errors
    /// When an argument is malformed, or the key is not one of the member's in the directory.
    #[wasm_bindgen(js_name = revokeKey)]
    pub fn revoke_key(
        circle: &str,
        member: &str,
        directory: &str,
        credential_id: &str,
        now: f64,
    ) -> Result<WebDecision, String> {
        let ids = (uuid(circle, "circle")?, uuid(member, "member")?);
        #[allow(clippy::cast_possible_truncation)]
        let issued_at = now as i64;
        let statement =
            own_key_revocation(&listed_members(directory)?, ids, credential_id, issued_at)
                .ok_or("that key is not one of yours in the circle's directory")?;
        Ok(WebDecision { statement })
    }

    /// The request options (JSON of `publicKey`) with which the admin's key signs it.
    ///
    /// # Errors
    /// Never in practice (JSON).
    pub fn request(&self, rp_id: &str) -> Result<String, String> {
        json(&signature_request(rp_id, &self.statement.challenge()).public_key)
    }

    /// The signed decision for the server (base64url), from the key's answer (JSON).
    ///
    /// # Errors
    /// When the answer is not an assertion.
    pub fn sign(&self, credential: &str) -> Result<String, String> {
        let answer = assertion(credential)?;
        let signed = SignedDecision::sign(self.statement.clone(), "", |_| Ok::<_, String>(answer))?;
        Ok(signed.to_blob().to_string())
    }
}

/// The request options (JSON of `publicKey`) with which one of `member`'s keys (the credential
/// ids of `allowed`, base64url) endorses their new `passkey` (JSON).
///
/// # Errors
/// When an argument is malformed.
#[wasm_bindgen(js_name = endorsementRequest)]
pub fn endorsement_request(
    rp_id: &str,
    member: &str,
    passkey_json: &str,
    allowed: Vec<String>,
) -> Result<String, String> {
    let challenge = Endorsement::challenge(uuid(member, "member")?, &passkey(passkey_json)?);
    let mut request = signature_request(rp_id, &challenge);
    request.public_key.allow_credentials = allowed
        .iter()
        .map(|id| {
            Base64Url::decode(id)
                .map(|id| AllowCredentials {
                    type_: "public-key".into(),
                    id,
                    transports: None,
                })
                .map_err(|_| "a credential id is not base64url".to_owned())
        })
        .collect::<Result<_, _>>()?;
    json(&request.public_key)
}

/// The endorsement of `member`'s new `passkey` (JSON) for the server (base64url), from the key's
/// answer (JSON) to [`endorsement_request`].
///
/// # Errors
/// When an argument is malformed.
#[wasm_bindgen]
pub fn endorsement(member: &str, passkey_json: &str, credential: &str) -> Result<String, String> {
    let answer = assertion(credential)?;
    let endorsement =
        Endorsement::sign(uuid(member, "member")?, passkey(passkey_json)?, "", |_| {
            Ok::<_, String>(answer)
        })?;
    Ok(KeyProof::Endorsement(endorsement).to_blob().to_string())
}

/// A member the chain admits, as the circle page lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CircleMember {
    /// The member.
    pub member: Uuid,
    /// The role an admin signed.
    pub role: Role,
    /// One fingerprint per key the chain admits.
    pub keys: Vec<String>,
    /// The admin who invited them (none for the founder).
    pub invited_by: Option<Uuid>,
}

/// What the directory lists and nothing signed admits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DistrustedEntry {
    /// The member.
    pub member: Uuid,
    /// The key, when the member is admitted and this key is not.
    pub key: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// The directory (`GET /api/v1/members`, as text) as it holds from `root` (none: not pinned yet)
/// in `circle`: `{"members": [CircleMember], "distrusted": [DistrustedEntry], "safety": words}`
/// (the safety number's twelve words; none without a root).
///
/// # Errors
/// When the text is not a directory or an argument is malformed.
#[wasm_bindgen(js_name = circleMembers)]
pub fn circle_members(
    directory: &str,
    circle: &str,
    root: Option<String>,
    origin: &str,
    rp_id: &str,
) -> Result<String, String> {
    let listed: Vec<MemberInfo> =
        from_json(directory).map_err(|_| "not a circle directory".to_owned())?;
    let root = root
        .map(|r| RootFingerprint::parse(&r).map_err(|e| e.to_string()))
        .transpose()?;
    let trusted = match &root {
        Some(root) => verify_directory(
            &listed,
            uuid(circle, "circle")?,
            root,
            (origin, rp_id),
            &UsedInvitations::new(),
        ),
        None => distrust_all(&listed, TrustError::NoRoot),
    };
    let safety = root.map(|root| safety_words(&root, &trusted));
    let members: Vec<CircleMember> = listed
        .iter()
        .filter_map(|m| {
            let chain = trusted.members.get(&m.id)?;
            Some(CircleMember {
                member: m.id,
                role: chain.role,
                keys: chain
                    .passkeys
                    .iter()
                    .map(|k| key_fingerprint(k.public_key.as_slice()))
                    .collect(),
                invited_by: chain.invited_by,
            })
        })
        .collect();
    let distrusted: Vec<DistrustedEntry> = trusted
        .distrusted
        .iter()
        .map(|d| DistrustedEntry {
            member: d.member,
            key: d.key.as_ref().map(ToString::to_string),
            reason: d.reason.to_string(),
        })
        .collect();
    Ok(
        serde_json::json!({"members": members, "distrusted": distrusted, "safety": safety})
            .to_string(),
    )
}

/// `text` (a whole invitation link) as an SVG QR code.
#[wasm_bindgen(js_name = qrSvg)]
#[must_use]
pub fn qr_svg(text: &str) -> String {
    qrcode::QrCode::new(text.as_bytes())
        .map(|code| {
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(240, 240)
                .quiet_zone(true)
                .build()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tessera_softkey::testing::{ORIGIN, member};

    use super::*;

    const NOW: f64 = 1_800_000_000.0;

    /// A passkey's SubjectPublicKeyInfo, as `response.getPublicKey()` gives it.
    fn spki(passkey: &PublicKeyInfo) -> String {
        let mut bytes = P256_SPKI_HEADER.to_vec();
        bytes.extend_from_slice(passkey.public_key.as_slice());
        Base64Url::encode(&bytes)
    }

    #[test]
    fn the_page_invites_admits_and_lists_who_invited_whom_as_the_native_client_does() {
        // The founder's passkey, read from the registration as the page does, is the root.
        let (mut founder_key, mut founder) = member(Role::Admin);
        let key = &founder.passkeys[0];
        let founder_json =
            passkey_of(&key.credential_id.to_string(), &spki(key), ES256).expect("a P-256 key");
        assert_eq!(passkey(&founder_json).expect("json"), *key);
        let root = root_of_key(&founder.id.to_string(), &founder_json).expect("root");
        // The founder's page issues an invitation signed by their key.
        let circle = Uuid::new_v4().to_string();
        let invitation = WebInvitation::new(
            &circle,
            &founder.id.to_string(),
            "member",
            3600.0,
            None,
            NOW,
        )
        .expect("an invitation");
        let request: webauthn_rs_proto::PublicKeyCredentialRequestOptions =
            serde_json::from_str(&invitation.request("localhost").expect("request"))
                .expect("options");
        let answer = founder_key
            .sign_in(
                &tessera_wire::RequestChallengeResponse {
                    public_key: request,
                    mediation: None,
                },
                ORIGIN,
            )
            .expect("the founder's key signs");
        let statement = invitation
            .sign(&serde_json::to_string(&answer).expect("json"))
            .expect("signed");
        let link = invitation
            .link("http://localhost/join/token", &root)
            .expect("link");
        let fragment = link.split_once('#').expect("fragment").1;
        // The newcomer's page plans, enrolls and admits its key.
        let plan: serde_json::Value =
            serde_json::from_str(&join_plan(fragment).expect("plan")).expect("json");
        assert_eq!(plan["root"], root);
        let newcomer_id: Uuid = serde_json::from_value(plan["member"].clone()).expect("id");
        let (_, mut newcomer) = member(Role::Member);
        newcomer.id = newcomer_id;
        let key = &newcomer.passkeys[0];
        let newcomer_json =
            passkey_of(&key.credential_id.to_string(), &spki(key), ES256).expect("key");
        let handle = Base64Url::encode(newcomer_id.as_bytes());
        let admitted: serde_json::Value = serde_json::from_str(
            &admission(fragment, &statement, &handle, &newcomer_json, NOW).expect("admitted"),
        )
        .expect("json");
        newcomer
            .proofs
            .push(serde_json::from_value(admitted["proof"].clone()).expect("proof"));
        // Another id than the link's, or another invitation's statement: refused.
        let stranger = Base64Url::encode(Uuid::new_v4().as_bytes());
        assert!(admission(fragment, &statement, &stranger, &newcomer_json, NOW).is_err());
        let other = WebInvitation::new(&circle, &founder.id.to_string(), "member", 60.0, None, NOW)
            .expect("an invitation");
        let other_link = other.link("http://localhost/join/t", &root).expect("link");
        let other_fragment = other_link.split_once('#').expect("fragment").1;
        assert_eq!(
            admission(other_fragment, &statement, &handle, &newcomer_json, NOW).err(),
            Some("the server's invitation is not the link's: ask the admin for a new link".into())
        );
        // The circle page lists both, the newcomer invited by the founder; a member with no
        // proof is distrusted.
        founder.role = Role::Admin;
        let (_, forged) = member(Role::Member);
        let directory = serde_json::to_string(&[&founder, &newcomer, &forged]).expect("json");
        let listed: serde_json::Value = serde_json::from_str(
            &circle_members(&directory, &circle, Some(root), ORIGIN, "localhost").expect("listed"),
        )
        .expect("json");
        let members = listed["members"].as_array().expect("members");
        assert_eq!(members.len(), 2);
        assert_eq!(members[1]["member"], newcomer_id.to_string());
        assert_eq!(members[1]["invited_by"], founder.id.to_string());
        assert_eq!(listed["distrusted"][0]["member"], forged.id.to_string());
        // No root yet: nobody.
        let unpinned: serde_json::Value = serde_json::from_str(
            &circle_members(&directory, &circle, None, ORIGIN, "localhost").expect("listed"),
        )
        .expect("json");
        assert_eq!(unpinned["members"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn keys_links_and_requests_that_are_not_what_they_claim_are_refused() {
        let (_, info) = member(Role::Member);
        let key = &info.passkeys[0];
        let id = key.credential_id.to_string();
        assert!(passkey_of(&id, &spki(key), -257).is_err(), "RS256");
        assert!(passkey_of(&id, &Base64Url::encode(key.public_key.as_slice()), ES256).is_err());
        assert!(passkey_of("not base64!", &spki(key), ES256).is_err());
        assert_eq!(
            join_plan("").err(),
            Some("this link is incomplete: ask the admin for the whole link".into())
        );
        assert!(join_plan("abc.def").is_err());
        assert!(WebInvitation::new("x", "y", "member", 60.0, None, NOW).is_err());
        assert!(
            WebInvitation::new(
                &Uuid::new_v4().to_string(),
                &Uuid::new_v4().to_string(),
                "owner",
                60.0,
                None,
                NOW
            )
            .is_err()
        );
        let json = passkey_of(&id, &spki(key), ES256).expect("key");
        let request: serde_json::Value = serde_json::from_str(
            &endorsement_request("localhost", &info.id.to_string(), &json, vec![id.clone()])
                .expect("request"),
        )
        .expect("json");
        assert_eq!(request["allowCredentials"][0]["id"], id);
        assert!(qr_svg("http://localhost/join/t#a.b").contains("<svg"));
    }
}
