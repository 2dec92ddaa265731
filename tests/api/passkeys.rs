//! A member's own keys (add a spare, list, revoke any but the last) and recovery after a lost key.

use reqwest::StatusCode;
use tessera_client::api::ApiClientResult;
use tessera_client::membership::MembershipError;
use tessera_engine::decision::{Decision, SignedDecision};
use tessera_tests::{TestApp, WsClient};
use tessera_wire::signal::ServerFrame;
use tessera_wire::{Base64Url, ErrorCode, InvitationKind, Role};

use crate::support::{assert_deletes_refused, assert_refused};

fn b64(bytes: &[u8]) -> String {
    Base64Url::encode(bytes)
}

/// What the server answered to a key's revocation (the key signed it).
fn answered(result: Result<(), MembershipError>) -> ApiClientResult<()> {
    match result {
        Err(MembershipError::Api(e)) => Err(e),
        Err(other) => panic!("the revocation was not sent: {other}"),
        Ok(()) => Ok(()),
    }
}

#[tokio::test]
async fn a_member_adds_a_spare_key_logs_in_with_it_and_revokes_the_first() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let (mut spare, info) = admin.add_spare(Some("spare")).await.expect("add");
    assert_eq!(info.id.text(), b64(spare.credential_id()));
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 2);

    let mut client = app.client();
    let granted = client.login(&mut spare).await.expect("the spare logs in");
    assert_eq!(granted.member, admin.granted.member);

    // The spare signs the first key's revocation; the directory carries it with the proofs.
    let first = b64(admin.key.credential_id());
    answered(admin.revoke_key(&client, &mut spare, &first).await).expect("revoke the first key");
    let keys = client.passkeys().await.expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, info.id);
    let directory = client.members().await.expect("directory");
    let listed = directory
        .iter()
        .find(|m| m.id == admin.granted.member)
        .expect("listed");
    let revocation = listed
        .proofs
        .iter()
        .find_map(|p| SignedDecision::from_blob(p, Decision::RevokeKey).ok())
        .expect("the revocation is listed");
    let revoked = revocation.statement.key.expect("names its key");
    assert_eq!(revoked.credential_id.text(), first);
    assert_eq!(
        revocation.signature.credential_id.text(),
        info.id.text(),
        "signed by the spare"
    );

    let mut lost = admin.key.clone();
    assert_refused(
        app.client().login(&mut lost).await,
        StatusCode::UNAUTHORIZED,
        "unknown_credential",
    );
}

#[tokio::test]
async fn the_last_key_cannot_be_revoked() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let only = b64(admin.key.credential_id());
    let mut key = admin.key.clone();
    let before = admin.client.members().await.expect("directory");
    assert_refused(
        answered(admin.revoke_key(&admin.client, &mut key, &only).await),
        StatusCode::CONFLICT,
        "last_passkey",
    );
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 1);
    let after = admin.client.members().await.expect("directory");
    assert_eq!(after[0].proofs, before[0].proofs, "no revocation was kept");
    admin.key = key;
}

#[tokio::test]
async fn a_member_cannot_revoke_someone_elses_key() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    admin.add_spare(None).await.expect("a second key");
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let admins_key = b64(admin.key.credential_id());
    let statement = Base64Url::from(b"{}".to_vec());
    assert_refused(
        member
            .client
            .revoke_passkey(&admins_key, statement.clone())
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        member.client.revoke_passkey("%%%", statement).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 2);
}

#[tokio::test]
async fn a_key_revocation_without_its_signed_statement_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let (_, spare) = admin.add_spare(Some("spare")).await.expect("add");
    let url = format!("{}api/v1/me/passkeys/{}", app.origin, spare.id.text());
    let before = admin.client.members().await.expect("directory");
    // No body, an empty statement, one over the bound, an unknown field, a body over the
    // route's limit.
    let bodies = [
        None,
        Some(serde_json::json!({ "statement": "" })),
        Some(serde_json::json!({ "statement": "B".repeat(700_000) })),
        Some(serde_json::json!({ "statement": "AAAA", "member": "x" })),
        Some(serde_json::json!({ "statement": "B".repeat(1_100_000) })),
    ];
    let session = admin.client.session().expect("a session");
    assert_deletes_refused(&url, session, &bodies).await;
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 2);
    let after = admin.client.members().await.expect("directory");
    assert_eq!(after[0].proofs, before[0].proofs);
    assert_eq!(after[0].passkeys, before[0].passkeys);
}

#[tokio::test]
async fn the_same_key_cannot_be_added_twice() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let options = admin.client.add_passkey_start(None).await.expect("start");
    let json = serde_json::to_value(&options).expect("json");
    let excluded = json["publicKey"]["excludeCredentials"][0]["id"]
        .as_str()
        .map(str::to_owned);
    assert_eq!(
        excluded,
        Some(b64(admin.key.credential_id())),
        "the browser is told to exclude it"
    );
    let again = tessera_client::authenticator::Tamper {
        credential_id: Some(admin.key.credential_id().to_vec()),
        ..Default::default()
    };
    let (_key, credential) = tessera_client::authenticator::SoftKey::register_with(
        &options.options,
        app.origin.as_str(),
        &again,
    )
    .expect("register");
    let result = admin
        .client
        .add_passkey_finish(&options.ceremony, credential, None)
        .await;
    let error = result.expect_err("refused");
    assert!(
        matches!(
            error.code(),
            Some(ErrorCode::WebauthnRejected | ErrorCode::CredentialExists)
        ),
        "{error}"
    );
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 1);
}

#[tokio::test]
async fn another_members_ceremony_cannot_add_a_key_to_me() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let options = member.client.add_passkey_start(None).await.expect("start");
    let (_key, credential) =
        tessera_client::authenticator::SoftKey::register(&options.options, app.origin.as_str())
            .expect("register");
    assert_refused(
        admin
            .client
            .add_passkey_finish(&options.ceremony, credential, None)
            .await,
        StatusCode::BAD_REQUEST,
        "ceremony_mismatch",
    );
    assert_eq!(admin.client.passkeys().await.expect("keys").len(), 1);
    assert_eq!(member.client.passkeys().await.expect("keys").len(), 1);
}

#[tokio::test]
async fn a_recovery_invitation_lets_a_member_enroll_a_new_key() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let recovery = admin
        .try_invite(Role::Member, Some(member.granted.member), 3600)
        .await
        .expect("recovery");
    let pending = admin.client.invitations().await.expect("pending");
    assert_eq!(pending[0].kind, InvitationKind::Recovery);
    assert_eq!(pending[0].member, Some(member.granted.member));

    let recovered = app.enroll(&recovery.link, "Grace again").await;
    assert_eq!(
        recovered.granted.member, member.granted.member,
        "the same member"
    );
    assert_eq!(recovered.granted.role, Role::Member);
    assert_eq!(recovered.client.passkeys().await.expect("keys").len(), 2);
    assert_eq!(admin.client.members().await.expect("directory").len(), 2);
}

#[tokio::test]
async fn revoking_a_member_voids_their_recovery_invitation() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let recovery = admin
        .try_invite(Role::Member, Some(member.granted.member), 3600)
        .await
        .expect("recovery");
    admin.revoke(member.granted.member).await.expect("revoke");
    assert_refused(
        app.client()
            .enroll_start(&recovery.created.token, None)
            .await,
        StatusCode::GONE,
        "invitation_unusable",
    );
    assert_refused(
        admin
            .try_invite(Role::Member, Some(member.granted.member), 3600)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn the_directory_carries_each_members_public_keys() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let member = app.invite(&mut admin, Role::Member, "Grace").await;
    let directory = member.client.members().await.expect("directory");
    let entry = directory
        .iter()
        .find(|m| m.id == admin.granted.member)
        .expect("the admin is listed");
    assert_eq!(entry.role, Role::Admin);
    assert_eq!(entry.passkeys.len(), 1);
    assert_eq!(entry.passkeys[0].alg, "ES256");
    assert_eq!(
        entry.passkeys[0].public_key.text(),
        b64(&admin.key.public_key_sec1())
    );
    assert_eq!(
        entry.passkeys[0].credential_id.text(),
        b64(admin.key.credential_id())
    );
}

/// COSE keys of algorithms devices cannot verify: RS256 (a 2048-bit modulus) and ES384 (the P-384
/// base point), CBOR-encoded by hand.
fn foreign_cose_keys() -> [(&'static str, Vec<u8>); 2] {
    let mut rs256 = vec![
        0xa4, 0x01, 0x03, 0x03, 0x39, 0x01, 0x00, 0x20, 0x59, 0x01, 0x00,
    ];
    rs256.extend(std::iter::once(0xc5).chain(std::iter::repeat_n(0x5a, 255)));
    rs256.extend([0x21, 0x43, 0x01, 0x00, 0x01]);
    let hex = |text: &str| -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let mut es384 = vec![
        0xa5, 0x01, 0x02, 0x03, 0x38, 0x22, 0x20, 0x02, 0x21, 0x58, 0x30,
    ];
    es384.extend(hex("aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7"));
    es384.extend([0x22, 0x58, 0x30]);
    es384.extend(hex("3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"));
    [("RS256", rs256), ("ES384", es384)]
}

#[tokio::test]
async fn a_key_devices_cannot_verify_is_refused_and_the_directory_stays_whole() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for (alg, cose_key) in foreign_cose_keys() {
        let options = admin.client.add_passkey_start(None).await.expect("start");
        // Only ES256 is asked for.
        let json = serde_json::to_value(&options).expect("json");
        let params = json["publicKey"]["pubKeyCredParams"]
            .as_array()
            .expect("params");
        assert!(
            !params.is_empty() && params.iter().all(|p| p["alg"] == -7),
            "{params:?}"
        );
        let foreign = tessera_client::authenticator::Tamper {
            cose_key: Some(cose_key),
            ..Default::default()
        };
        let (_key, credential) = tessera_client::authenticator::SoftKey::register_with(
            &options.options,
            app.origin.as_str(),
            &foreign,
        )
        .expect("register");
        let error = admin
            .client
            .add_passkey_finish(&options.ceremony, credential, None)
            .await
            .expect_err("refused");
        assert!(
            matches!(
                error.code(),
                Some(ErrorCode::UnsupportedKey | ErrorCode::WebauthnRejected)
            ),
            "{alg}: {error}"
        );
        assert_eq!(
            admin.client.passkeys().await.expect("keys").len(),
            1,
            "{alg}"
        );
    }
    let directory = admin.client.members().await.expect("the directory answers");
    assert_eq!(directory[0].passkeys.len(), 1);
    assert!(directory[0].passkeys.iter().all(|k| k.alg == "ES256"));
}

#[tokio::test]
async fn revoking_a_key_ends_the_sessions_it_opened_and_only_those() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let (mut spare, _) = admin.add_spare(Some("spare")).await.expect("add");
    let mut on_spare = app.client();
    on_spare.login(&mut spare).await.expect("the spare logs in");
    let mut socket = WsClient::connect_with(&app, on_spare.session(), None, &[])
        .await
        .expect("the spare's session opens a socket");
    assert!(matches!(
        socket.next().await,
        Some(ServerFrame::Hello { .. })
    ));

    // The first key (its session opened at enrollment) revokes the spare.
    let mut first = admin.key.clone();
    let spare_id = b64(spare.credential_id());
    answered(admin.revoke_key(&admin.client, &mut first, &spare_id).await)
        .expect("the first key revokes the spare");
    admin.key = first;
    // The member stays: their session ended, they were not revoked.
    assert!(matches!(
        socket.next().await,
        Some(ServerFrame::SessionEnded)
    ));
    assert!(socket.next().await.is_none(), "then the server closes");
    assert_refused(
        on_spare.me().await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    admin
        .client
        .me()
        .await
        .expect("the first key's session goes on");
}

#[tokio::test]
async fn a_member_holds_a_bounded_number_of_keys() {
    use tessera_server::store::PASSKEYS_PER_MEMBER;
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let most = usize::try_from(PASSKEYS_PER_MEMBER).expect("small");
    for _ in 1..most {
        admin.add_spare(None).await.expect("within the bound");
    }
    assert_refused(
        admin.add_spare(None).await.map(|_| ()),
        StatusCode::CONFLICT,
        "too_many_keys",
    );
    assert_eq!(
        admin.client.passkeys().await.expect("keys").len(),
        most,
        "nothing was added"
    );
}
