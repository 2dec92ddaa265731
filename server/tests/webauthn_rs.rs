//! What webauthn-rs checks for the server, and what it leaves to it: every ceremony answer a
//! broken or hostile client can make (the software key playing it, `Tamper`) against the relying
//! party the server runs. The server's own checks on top (single-use ceremonies, the counter kept,
//! user handles bound to keys) are in `tests/api/`.

use tessera_softkey::testing::{ORIGIN, enroll, login, register_tampered, relying_party};
use tessera_softkey::{SoftKey, Tamper};
use webauthn_rs::prelude::{AuthenticationResult, Uuid, WebauthnError};

// Each tampered sign-in on its own is refused by webauthn-rs.

fn assert_login_refused(tamper: Tamper, check: fn(&WebauthnError) -> bool) {
    let rp = relying_party();
    let (_, mut key, passkey) = enroll(&rp);
    match login(&rp, &mut key, &passkey, &tamper) {
        Ok(_) => panic!("webauthn-rs accepted a tampered assertion: {tamper:?}"),
        Err(err) => assert!(check(&err), "unexpected error {err:?} for {tamper:?}"),
    }
    // The untampered key still works afterwards.
    login(&rp, &mut key, &passkey, &Tamper::default()).expect("clean login accepted");
}

#[test]
fn login_with_wrong_client_data_type_is_refused() {
    assert_login_refused(
        Tamper {
            client_data_type: Some("webauthn.create".into()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidClientDataType),
    );
}

#[test]
fn login_with_wrong_origin_is_refused() {
    assert_login_refused(
        Tamper {
            origin: Some("https://evil.example".into()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidRPOrigin),
    );
}

#[test]
fn login_with_wrong_challenge_is_refused() {
    assert_login_refused(
        Tamper {
            challenge: Some(vec![7; 32]),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::MismatchedChallenge),
    );
}

#[test]
fn login_with_wrong_rp_id_hash_is_refused() {
    assert_login_refused(
        Tamper {
            rp_id: Some("evil.example".into()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidRPIDHash),
    );
}

#[test]
fn login_without_user_presence_is_refused() {
    assert_login_refused(
        Tamper {
            clear_user_present: true,
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::UserNotPresent),
    );
}

#[test]
fn login_without_user_verification_is_refused() {
    assert_login_refused(
        Tamper {
            clear_user_verified: true,
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::UserNotVerified),
    );
}

#[test]
fn login_with_bad_signature_is_refused() {
    assert_login_refused(
        Tamper {
            corrupt_signature: true,
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::AuthenticationFailure),
    );
}

#[test]
fn login_with_foreign_credential_id_is_refused() {
    assert_login_refused(
        Tamper {
            credential_id: Some(vec![9; 32]),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::CredentialNotFound),
    );
}

#[test]
fn login_without_user_handle_is_refused() {
    assert_login_refused(
        Tamper {
            user_handle: Some(Vec::new()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidUserUniqueId),
    );
}

/// Signs in twice with the stored passkey kept up to date (`update`) or
/// not, then presents an assertion reporting `reported` as its counter.
fn login_after_two(
    update: bool,
    reported: u32,
) -> Result<(Uuid, AuthenticationResult), WebauthnError> {
    let rp = relying_party();
    let (_, mut key, mut passkey) = enroll(&rp);
    for _ in 0..2 {
        let (_, result) =
            login(&rp, &mut key, &passkey, &Tamper::default()).expect("login accepted");
        if update {
            passkey.update_credential(&result);
        }
    }
    assert_eq!(key.counter(), 2);
    let tamper = Tamper {
        counter: Some(reported),
        ..Tamper::default()
    };
    login(&rp, &mut key, &passkey, &tamper)
}

#[test]
fn counter_regression_is_refused_as_possible_compromise() {
    let verdict = login_after_two(true, 1);
    assert!(
        matches!(verdict, Err(WebauthnError::CredentialPossibleCompromise)),
        "{verdict:?}"
    );
}

#[test]
fn repeated_counter_is_refused_as_possible_compromise() {
    let verdict = login_after_two(true, 2);
    assert!(
        matches!(verdict, Err(WebauthnError::CredentialPossibleCompromise)),
        "{verdict:?}"
    );
}

#[test]
fn counter_dropping_to_zero_is_refused_as_possible_compromise() {
    let verdict = login_after_two(true, 0);
    assert!(
        matches!(verdict, Err(WebauthnError::CredentialPossibleCompromise)),
        "{verdict:?}"
    );
}

/// webauthn-rs compares the counter only with the one in the key the
/// server passes in: a server that does not persist
/// `Passkey::update_credential` never sees a regression.
#[test]
fn counter_check_uses_only_the_stored_counter_it_is_given() {
    let (_, result) = login_after_two(false, 1).expect("accepted against a stale counter");
    assert_eq!(result.counter(), 1);
    assert!(result.needs_update());
}

#[test]
fn counter_regression_is_refused_in_the_passkey_flow_too() {
    let rp = relying_party();
    let (_, mut key, mut passkey) = enroll(&rp);
    for reported in [None, None, Some(1)] {
        let (rcr, state) = rp
            .start_passkey_authentication(std::slice::from_ref(&passkey))
            .expect("starts");
        let tamper = Tamper {
            counter: reported,
            ..Tamper::default()
        };
        let cred = key.sign_in_with(&rcr, ORIGIN, &tamper).expect("signs");
        match (reported, rp.finish_passkey_authentication(&cred, &state)) {
            (None, Ok(result)) => {
                passkey.update_credential(&result);
            }
            (Some(_), Err(WebauthnError::CredentialPossibleCompromise)) => {}
            (_, verdict) => panic!("unexpected verdict {verdict:?}"),
        }
    }
}

/// The user handle is not signed, and a `DiscoverableKey` does not carry
/// the user id: webauthn-rs accepts an assertion whose user handle names
/// another user. The server must check that the credential it looked up
/// belongs to the user that `identify_discoverable_authentication`
/// returned.
#[test]
fn user_handle_is_not_bound_to_the_credential_by_webauthn_rs() {
    let rp = relying_party();
    let (owner, mut key, passkey) = enroll(&rp);
    let victim = Uuid::new_v4();
    let tamper = Tamper {
        user_handle: Some(victim.as_bytes().to_vec()),
        ..Tamper::default()
    };
    let (claimed, _) = login(&rp, &mut key, &passkey, &tamper).expect("webauthn-rs accepts it");
    assert_eq!(claimed, victim);
    assert_ne!(claimed, owner);
}

#[test]
fn login_with_malformed_user_handle_is_refused() {
    assert_login_refused(
        Tamper {
            user_handle: Some(vec![1, 2, 3]),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidUserUniqueId),
    );
}

#[test]
fn login_checked_against_another_users_key_is_refused() {
    let rp = relying_party();
    let (_, mut key, _) = enroll(&rp);
    let (_, _, someone_else) = enroll(&rp);
    let verdict = login(&rp, &mut key, &someone_else, &Tamper::default());
    assert!(
        matches!(verdict, Err(WebauthnError::CredentialNotFound)),
        "{verdict:?}"
    );
}

// Each tampered registration on its own is refused by webauthn-rs.

fn assert_registration_refused(tamper: Tamper, check: fn(&WebauthnError) -> bool) {
    let rp = relying_party();
    match register_tampered(&rp, &tamper) {
        Ok(_) => panic!("webauthn-rs accepted a tampered registration: {tamper:?}"),
        Err(err) => assert!(check(&err), "unexpected error {err:?} for {tamper:?}"),
    }
}

#[test]
fn registration_with_wrong_client_data_type_is_refused() {
    assert_registration_refused(
        Tamper {
            client_data_type: Some("webauthn.get".into()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidClientDataType),
    );
}

#[test]
fn registration_with_wrong_origin_is_refused() {
    assert_registration_refused(
        Tamper {
            origin: Some("https://evil.example".into()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidRPOrigin),
    );
}

#[test]
fn registration_with_wrong_challenge_is_refused() {
    assert_registration_refused(
        Tamper {
            challenge: Some(vec![7; 32]),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::MismatchedChallenge),
    );
}

#[test]
fn registration_with_wrong_rp_id_hash_is_refused() {
    assert_registration_refused(
        Tamper {
            rp_id: Some("evil.example".into()),
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::InvalidRPIDHash),
    );
}

#[test]
fn registration_without_user_presence_is_refused() {
    assert_registration_refused(
        Tamper {
            clear_user_present: true,
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::UserNotPresent),
    );
}

#[test]
fn registration_without_user_verification_is_refused() {
    assert_registration_refused(
        Tamper {
            clear_user_verified: true,
            ..Tamper::default()
        },
        |e| matches!(e, WebauthnError::UserNotVerified),
    );
}

/// An excluded credential id is refused, but webauthn-rs 0.6.2 reports it
/// as `CredentialAlteredAlgFromRequest`, not `CredentialExcludedFromRequest`.
#[test]
fn registration_of_an_excluded_credential_id_is_refused() {
    let rp = relying_party();
    let (_, _, existing) = enroll(&rp);
    let (ccr, state) = rp
        .start_passkey_registration(
            Uuid::new_v4(),
            "dave",
            "Dave",
            Some(vec![existing.cred_id().clone()]),
        )
        .expect("starts");
    let tamper = Tamper {
        credential_id: Some(existing.cred_id().to_vec()),
        ..Tamper::default()
    };
    let (_, reg) = SoftKey::register_with(&ccr, ORIGIN, &tamper).expect("answers");
    let verdict = rp.finish_passkey_registration(&reg, &state);
    assert!(
        matches!(verdict, Err(WebauthnError::CredentialAlteredAlgFromRequest)),
        "{verdict:?}"
    );
}

/// Without an exclude list webauthn-rs accepts a credential id that is
/// already registered elsewhere: uniqueness is the server's job.
#[test]
fn registration_of_a_known_credential_id_is_not_caught_without_exclude_list() {
    let rp = relying_party();
    let (_, _, existing) = enroll(&rp);
    let tamper = Tamper {
        credential_id: Some(existing.cred_id().to_vec()),
        ..Tamper::default()
    };
    let passkey = register_tampered(&rp, &tamper).expect("accepted by webauthn-rs");
    assert_eq!(passkey.cred_id(), existing.cred_id());
}
