//! A stolen session alone changes nothing that matters: adding or removing a key, issuing an
//! invitation, revoking or promoting a member each need a statement one of the caller's keys
//! signed for it lately, with the user verified.

use reqwest::StatusCode;
use tessera_client::authenticator::SoftKey;
use tessera_client::membership::{self, Signer};
use tessera_client::trust::{Endorsement, KeyProof};
use tessera_engine::decision::{Decision, DecisionStatement, SignedDecision};
use tessera_tests::{TestApp, TestMember, refusal};
use tessera_wire::{Base64Url, Role};
use uuid::Uuid;

use crate::support::assert_refused;

fn now() -> i64 {
    tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000
}

/// `statement` signed by `key`, whoever's it is.
fn signed_by(key: &mut SoftKey, origin: &str, statement: DecisionStatement) -> Base64Url {
    let rp_id = key.rp_id().to_owned();
    SignedDecision::sign(statement, &rp_id, |r| key.sign_in(r, origin))
        .expect("the key signs")
        .to_blob()
}

/// A decision in `admin`'s name about `member`.
fn decision(
    admin: &TestMember,
    decision: Decision,
    member: Uuid,
    issued_at: i64,
) -> DecisionStatement {
    DecisionStatement {
        decision,
        circle: admin.granted.circle,
        member,
        issuer: admin.granted.member,
        issued_at,
        key: None,
        keeps: None,
    }
}

const REFUSED: (StatusCode, &str) = (StatusCode::FORBIDDEN, "signature_refused");

#[tokio::test]
async fn a_stolen_session_alone_can_neither_add_nor_remove_keys_nor_invite_nor_decide() {
    let app = TestApp::spawn().await;
    let origin = app.origin.origin().ascii_serialization();
    let mut admin = app.admin().await;
    let (_spare, _) = admin.add_spare(Some("spare")).await.expect("a spare key");
    let mut grace = app.invite(&mut admin, Role::Member, "Grace").await;
    let mut thief = app.client();
    thief.set_session(admin.client.session().map(str::to_owned));
    let (circle, victim) = (admin.granted.circle, admin.granted.member);

    // A key of the thief's own, with no endorsement, or endorsing itself.
    for self_endorsed in [false, true] {
        let options = thief.add_passkey_start(None).await.expect("start");
        let mut key = SoftKey::blank().expect("a blank key");
        let credential = key
            .register_blank(&options.options, app.origin.as_str())
            .expect("register");
        let proof = self_endorsed.then(|| {
            let rp_id = key.rp_id().to_owned();
            let endorsement = Endorsement::sign(victim, key.public_key_info(), &rp_id, |r| {
                key.sign_in(r, &origin)
            })
            .expect("signs");
            KeyProof::Endorsement(endorsement).to_blob()
        });
        let (status, code) = REFUSED;
        assert_refused(
            thief
                .add_passkey_finish(&options.ceremony, credential, proof)
                .await,
            status,
            code,
        );
    }

    // The owner's key removed with a revocation in the owner's name another member's key signed.
    let owners_key = admin.key.public_key_info();
    let mut revocation = decision(&admin, Decision::RevokeKey, victim, now());
    revocation.key = Some(owners_key.clone());
    let forged = signed_by(&mut grace.key, &origin, revocation);
    let (status, code) = REFUSED;
    assert_refused(
        thief
            .revoke_passkey(&owners_key.credential_id.text(), forged)
            .await,
        status,
        code,
    );

    // An invitation in the admin's name, signed by another member's key.
    let forger = Signer {
        circle,
        member: victim,
        root: admin.root,
        key: &mut grace.key,
    };
    let (status, code) = REFUSED;
    assert_refused(
        refusal(membership::invite(&thief, forger, Role::Admin, None, (3600, now())).await),
        status,
        code,
    );

    // Revoking or promoting: another key's signature, or the owner's key's from long ago (a
    // statement the thief found), each refused.
    let target = grace.granted.member;
    let statement = decision(&admin, Decision::Revoke, target, now() - 3600);
    let stale = signed_by(&mut admin.key, &origin, statement);
    let other_key = signed_by(
        &mut grace.key,
        &origin,
        decision(&admin, Decision::Revoke, target, now()),
    );
    for statement in [stale, other_key] {
        let (status, code) = REFUSED;
        assert_refused(thief.revoke_member(target, statement).await, status, code);
    }
    let promotion = signed_by(
        &mut grace.key,
        &origin,
        decision(&admin, Decision::Promote, target, now()),
    );
    let (status, code) = REFUSED;
    assert_refused(thief.promote_member(target, promotion).await, status, code);

    // A decision the owner's key signed for something else is no consent to this.
    let statement = decision(&admin, Decision::Promote, Uuid::new_v4(), now());
    let about_someone_else = signed_by(&mut admin.key, &origin, statement);
    let (status, code) = REFUSED;
    assert_refused(
        thief.promote_member(target, about_someone_else).await,
        status,
        code,
    );

    // Nothing changed.
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 2);
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
    let directory = admin.client.members().await.expect("directory");
    let listed = directory
        .iter()
        .find(|m| m.id == target)
        .expect("Grace is still listed");
    assert_eq!(listed.role, Role::Member);
    assert!(listed.revocation.is_none());

    // The owner's own device, touching their key, does each.
    admin.promote(target).await.expect("the owner promotes");
    admin.issue(Role::Member, 3600).await;
}
