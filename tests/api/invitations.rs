//! Invitations as admins issue, list and revoke them.

use reqwest::StatusCode;
use tessera_client::api::invitation_token;
use tessera_client::authenticator::SoftKey;
use tessera_client::invitation::SignedInvitation;
use tessera_client::trust::{KeyProof, LinkSecrets, member_id_for};
use tessera_tests::TestApp;
use tessera_wire::{InvitationKind, Role};

use crate::support::assert_refused;

#[tokio::test]
async fn an_issued_invitation_is_shown_once_and_listed_without_its_token() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let before = app.clock.now();
    let created = admin.issue(Role::Member, 3600).await;
    assert_eq!(created.created.token.len(), 43, "256 bits in base64url");
    assert_eq!(
        created.created.url,
        format!("{}join/{}", app.origin, created.created.token)
    );
    // The clock is the real one and may tick during the request.
    assert!((before + 3600..=app.clock.now() + 3600).contains(&created.created.expires_at));

    let raw = admin
        .client
        .send_raw(reqwest::Method::GET, "/invitations", None)
        .await
        .expect("list");
    let text = String::from_utf8(raw.1).expect("utf-8");
    assert!(
        !text.contains(&created.created.token),
        "the list never shows a token"
    );
    let pending = admin.client.invitations().await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, created.created.id);
    assert_eq!(pending[0].kind, InvitationKind::Newcomer);
    assert_eq!(pending[0].role, Role::Member);
    assert_eq!(pending[0].created_by, Some(admin.granted.member));
}

#[tokio::test]
async fn used_revoked_and_expired_invitations_leave_the_list() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let used = admin.issue(Role::Member, 3600).await;
    let revoked = admin.issue(Role::Member, 3600).await;
    admin.issue(Role::Member, 60).await;
    app.enroll(&used.link, "Grace").await;
    admin
        .client
        .revoke_invitation(revoked.created.id)
        .await
        .expect("revoke");
    app.clock.advance(61);
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
    assert_refused(
        admin.client.revoke_invitation(revoked.created.id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_refused(
        admin.client.revoke_invitation(uuid::Uuid::new_v4()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn lifetimes_outside_a_minute_to_thirty_days_are_refused() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    for ttl in [0, 59, 30 * 24 * 3600 + 1, u64::MAX] {
        assert_refused(
            admin.try_invite(Role::Member, None, ttl).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
}

#[tokio::test]
async fn a_signed_invitation_hands_its_statement_to_the_newcomer_who_enrolls_under_the_links_id() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let link = admin.invite(Role::Member, None).await;
    let (url, fragment) = link.split_once('#').expect("the link has a fragment");
    // The fragment is the device's: the server's record holds the link without it.
    let pending = admin.client.invitations().await.expect("pending");
    assert_eq!(pending.len(), 1);
    let secrets = LinkSecrets::from_fragment(fragment).expect("a whole fragment");
    assert_eq!(secrets.root, admin.root);
    let token = url.rsplit('/').next().expect("token");
    let options = app.client().enroll_start(token, None).await.expect("start");
    let statement = options
        .statement
        .expect("the statement comes with the options");
    let signed = SignedInvitation::from_blob(&statement).expect("a signed statement");
    assert_eq!(signed.statement.invitation_key, secrets.secret.public_key());
    assert_eq!(signed.statement.issuer, admin.granted.member);
    assert_eq!(signed.statement.circle, admin.granted.circle);
    // The newcomer enrolls under the member id the link derives, and the directory carries
    // their admission.
    let grace = app.enroll(&link, "Grace").await;
    assert_eq!(
        grace.granted.member,
        member_id_for(&secrets.root, &secrets.secret.public_key())
    );
    let directory = grace.client.members().await.expect("directory");
    let entry = directory
        .iter()
        .find(|m| m.id == grace.granted.member)
        .expect("listed");
    assert_eq!(entry.proofs.len(), 1);
    assert!(matches!(
        KeyProof::from_blob(&entry.proofs[0]),
        Ok(KeyProof::Admission(_))
    ));
}

#[tokio::test]
async fn oversized_or_empty_statements_and_proofs_and_taken_member_ids_are_refused_and_change_nothing()
 {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    for blob in [vec![], vec![7u8; 8 * 1024 + 1]] {
        assert_refused(
            admin
                .client
                .create_signed_invitation(Role::Member, 3600, Some(blob.clone().into()))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
        assert_refused(
            admin
                .client
                .signed_recovery_invitation(admin.granted.member, 3600, Some(blob.into()))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
    assert!(
        admin
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty()
    );
    // An enrollment whose proof is too large: refused before the ceremony is used.
    let invitation = admin.issue(Role::Member, 3600).await;
    let mut client = app.client();
    let options = client
        .enroll_start(&invitation.created.token, None)
        .await
        .expect("start");
    let (_, credential) =
        tessera_client::authenticator::SoftKey::register(&options.options, app.origin.as_str())
            .expect("register");
    assert_refused(
        client
            .enroll_finish_with(
                &options.ceremony,
                credential.clone(),
                Some(vec![1u8; 8 * 1024 + 1].into()),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    client
        .enroll_finish(&options.ceremony, credential)
        .await
        .expect("the ceremony and the invitation survive");
    // A member id that is taken.
    let second = admin.issue(Role::Member, 3600).await;
    assert_refused(
        app.client()
            .enroll_start_as(&second.created.token, None, Some(admin.granted.member))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    assert_eq!(admin.client.members().await.expect("directory").len(), 2);
}

#[tokio::test]
async fn a_revoked_admins_invitations_admit_no_one_even_mid_ceremony() {
    let app = TestApp::spawn().await;
    let mut founder = app.admin().await;
    let mut bea = app.invite(&mut founder, Role::Admin, "Bea").await;
    let before_revocation = bea.invite(Role::Admin, None).await;
    let started_early = bea.invite(Role::Member, None).await;
    // One newcomer starts enrolling before Bea is revoked, the other after.
    let mut early = app.client();
    let token = invitation_token(&started_early).expect("token");
    let early_options = early.enroll_start(&token, None).await.expect("start");
    founder
        .revoke(bea.granted.member)
        .await
        .expect("the founder revokes Bea");

    let token = invitation_token(&before_revocation).expect("token");
    assert_refused(
        app.client().enroll_start(&token, None).await,
        StatusCode::GONE,
        "invitation_unusable",
    );
    let (_key, credential) =
        SoftKey::register(&early_options.options, app.origin.as_str()).expect("key");
    assert_refused(
        early
            .enroll_finish(&early_options.ceremony, credential)
            .await,
        StatusCode::GONE,
        "invitation_unusable",
    );
    // Even if her invitation were still pending (a revocation racing the enrollment, written
    // back here behind the server's back), it admits no one while she is not an active admin.
    let mut connection = app.database().await;
    sqlx::query("UPDATE invitations SET revoked_at = NULL WHERE created_by = ?")
        .bind(bea.granted.member.to_string())
        .execute(&mut connection)
        .await
        .expect("written back");
    let mut late = app.client();
    let late_options = late.enroll_start(&token, None).await.expect("start");
    let (_key, credential) =
        SoftKey::register(&late_options.options, app.origin.as_str()).expect("key");
    assert_refused(
        late.enroll_finish(&late_options.ceremony, credential).await,
        StatusCode::GONE,
        "invitation_unusable",
    );
    sqlx::query("UPDATE invitations SET revoked_at = 1 WHERE created_by = ?")
        .bind(bea.granted.member.to_string())
        .execute(&mut connection)
        .await
        .expect("revoked again");
    // No one joined: the founder and the revoked Bea are all the directory holds, and Bea's
    // invitations are no longer pending.
    let directory = founder.client.members().await.expect("directory");
    assert_eq!(directory.len(), 2, "{directory:?}");
    assert!(
        founder
            .client
            .invitations()
            .await
            .expect("pending")
            .is_empty(),
        "Bea's invitations are no longer pending"
    );
}

#[tokio::test]
async fn a_circle_holds_a_bounded_number_of_pending_invitations() {
    use tessera_server::store::{InvitationRecord, PENDING_INVITATIONS_PER_CIRCLE};
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let now = app.clock.now();
    let pending = usize::try_from(PENDING_INVITATIONS_PER_CIRCLE).expect("small");
    // Filled through the store: the bound is the server's, whoever issues.
    for n in 0..pending {
        let record = InvitationRecord {
            id: uuid::Uuid::new_v4(),
            circle: admin.granted.circle,
            role: Role::Member,
            member: None,
            created_by: Some(admin.granted.member),
            created_at: now,
            expires_at: now + 3600,
            statement: None,
        };
        let hash = tessera_server::secret::digest(&format!("token {n}"));
        app.store
            .insert_invitation(&record, &hash)
            .await
            .expect("within the bound");
    }
    assert_refused(
        admin.try_invite(Role::Member, None, 3600).await,
        StatusCode::CONFLICT,
        "too_many_invitations",
    );
    assert_eq!(
        admin.client.invitations().await.expect("pending").len(),
        pending,
        "nothing was added"
    );
    // A revoked invitation no longer counts.
    let first = admin.client.invitations().await.expect("pending")[0].id;
    admin
        .client
        .revoke_invitation(first)
        .await
        .expect("revoked");
    admin.issue(Role::Member, 3600).await;
}
