//! The virtual key driven as a platform drives a real one: CTAPHID reports in and out, CTAP2
//! requests, the PIN protocols computed on the client's side by `tessera_virtual_key::platform`
//! with the same primitives, and the answers checked (signatures with p256, statuses, state).

use std::time::Duration;

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use sha2::{Digest as _, Sha256};
use tessera_virtual_key::ctap2::status;
use tessera_virtual_key::ctaphid::{self, command, host, keepalive};
use tessera_virtual_key::platform::{
    MakeCredential, PinSession, Platform, RP, Value, byt, bytes_at, descriptors, get,
    get_assertion, int, named, txt,
};
use tessera_virtual_key::state::{self, State};
use tessera_virtual_key::{Authenticator, Config, Touch, VirtualKey};

const MS: Duration = Duration::from_millis(1);

/// What the relying party reads in authenticator data.
struct AuthData {
    rp_id_hash: Vec<u8>,
    flags: u8,
    counter: u32,
    aaguid: Vec<u8>,
    credential_id: Vec<u8>,
    public_key: Option<VerifyingKey>,
}

fn parse_auth_data(data: &[u8]) -> AuthData {
    let flags = data[32];
    let counter = u32::from_be_bytes([data[33], data[34], data[35], data[36]]);
    let mut parsed = AuthData {
        rp_id_hash: data[..32].to_vec(),
        flags,
        counter,
        aaguid: Vec::new(),
        credential_id: Vec::new(),
        public_key: None,
    };
    if flags & 0x40 != 0 {
        parsed.aaguid = data[37..53].to_vec();
        let len = usize::from(u16::from_be_bytes([data[53], data[54]]));
        parsed.credential_id = data[55..55 + len].to_vec();
        let mut rest = &data[55 + len..];
        let cose: Value = ciborium::from_reader(&mut rest).expect("COSE key");
        assert!(rest.is_empty(), "nothing after the COSE key");
        assert_eq!(get(&cose, 1).and_then(Value::as_integer), Some(2.into()));
        assert_eq!(get(&cose, 3).and_then(Value::as_integer), Some((-7).into()));
        assert_eq!(get(&cose, -1).and_then(Value::as_integer), Some(1.into()));
        let sec1 = [&[4u8][..], &bytes_at(&cose, -2), &bytes_at(&cose, -3)].concat();
        parsed.public_key = Some(VerifyingKey::from_sec1_bytes(&sec1).expect("a P-256 point"));
    }
    parsed
}

fn verify(key: &VerifyingKey, auth_data: &[u8], client_data_hash: &[u8], signature: &[u8]) {
    let signature = DerSignature::from_bytes(signature).expect("a DER signature");
    key.verify(&[auth_data, client_data_hash].concat(), &signature)
        .expect("the signature verifies");
}

/// Registers a credential; checks its `packed` self attestation. Returns the id and public key.
fn register(platform: &mut Platform, request: &MakeCredential) -> (Vec<u8>, VerifyingKey, u8) {
    let (status, response) = platform.call(0x01, Some(request.params()));
    assert_eq!(status, status::OK);
    let response = response.expect("attestation");
    assert_eq!(get(&response, 1).and_then(Value::as_text), Some("packed"));
    let auth_data = bytes_at(&response, 2);
    let parsed = parse_auth_data(&auth_data);
    assert_eq!(parsed.rp_id_hash, Sha256::digest(RP.as_bytes()).to_vec());
    assert_eq!(parsed.aaguid, state::DEFAULT_AAGUID);
    let statement = get(&response, 3).expect("attStmt");
    assert_eq!(
        named(statement, "alg").and_then(Value::as_integer),
        Some((-7).into())
    );
    assert!(named(statement, "x5c").is_none(), "self attestation");
    let signature = named(statement, "sig")
        .and_then(Value::as_bytes)
        .expect("sig");
    let public_key = parsed.public_key.expect("attested credential data");
    verify(
        &public_key,
        &auth_data,
        &request.client_data_hash,
        signature,
    );
    (parsed.credential_id, public_key, parsed.flags)
}

// ------------------------------------------------------------------ tests

#[test]
fn get_info_describes_a_fido_2_1_key_with_both_pin_protocols() {
    let mut platform = Platform::new(Touch::Now);
    let info = platform.info();
    let versions: Vec<&str> = get(&info, 1)
        .and_then(Value::as_array)
        .expect("versions")
        .iter()
        .filter_map(Value::as_text)
        .collect();
    assert_eq!(versions, ["FIDO_2_0", "FIDO_2_1"]);
    assert_eq!(bytes_at(&info, 3), state::DEFAULT_AAGUID);
    let options = get(&info, 4).expect("options");
    for (name, value) in [("rk", true), ("up", true), ("clientPin", false)] {
        assert_eq!(
            named(options, name).and_then(Value::as_bool),
            Some(value),
            "{name}"
        );
    }
    let protocols: Vec<i128> = get(&info, 6)
        .and_then(Value::as_array)
        .expect("protocols")
        .iter()
        .filter_map(|v| v.as_integer().map(i128::from))
        .collect();
    assert_eq!(protocols, [2, 1]);
    assert_eq!(
        get(&info, 5).and_then(Value::as_integer),
        Some(1200.into()),
        "maxMsgSize"
    );

    let session = PinSession::open(&mut platform, 2);
    assert_eq!(session.set_pin(&mut platform, "4321"), status::OK);
    let info = platform.info();
    let options = get(&info, 4).expect("options");
    assert_eq!(
        named(options, "clientPin").and_then(Value::as_bool),
        Some(true)
    );
}

#[test]
fn a_credential_made_with_self_attestation_then_asserted_with_a_growing_counter() {
    let mut platform = Platform::new(Touch::Now);
    let request = MakeCredential::new(b"user-1");
    let (id, public_key, flags) = register(&mut platform, &request);
    assert_eq!(flags, 0x41, "UP and AT, no UV without a PIN");
    assert_eq!(id.len(), 32);
    assert_eq!(platform.key.authenticator().state().sign_count, 1);

    let mut last = 1;
    for round in 0..2u8 {
        let client_data_hash = Sha256::digest([round]).to_vec();
        let (status, answer) = platform.call(
            0x02,
            Some(get_assertion(
                &client_data_hash,
                &[vec![9; 32], id.clone()],
                vec![],
                None,
            )),
        );
        assert_eq!(status, status::OK);
        let answer = answer.expect("assertion");
        let credential = get(&answer, 1).expect("credential");
        assert_eq!(named(credential, "id").and_then(Value::as_bytes), Some(&id));
        let auth_data = bytes_at(&answer, 2);
        let parsed = parse_auth_data(&auth_data);
        assert_eq!(parsed.flags, 0x01, "UP only");
        assert!(parsed.counter > last);
        last = parsed.counter;
        verify(
            &public_key,
            &auth_data,
            &client_data_hash,
            &bytes_at(&answer, 3),
        );
        assert!(
            get(&answer, 4).is_none(),
            "no user for a non-discoverable credential"
        );
        assert!(get(&answer, 5).is_none());
    }

    // Silent (up = false): no touch, no UP flag, still signed.
    let (status, answer) = platform.call(
        0x02,
        Some(get_assertion(
            &[1; 32],
            std::slice::from_ref(&id),
            vec![(txt("up"), Value::Bool(false))],
            None,
        )),
    );
    assert_eq!(status, status::OK);
    let auth_data = bytes_at(answer.as_ref().expect("assertion"), 2);
    assert_eq!(parse_auth_data(&auth_data).flags, 0);

    // Another relying party's id, or an unknown credential.
    let (status, _) = platform.call(
        0x02,
        Some(vec![
            (int(1), txt("other.example")),
            (int(2), byt(&[0; 32])),
            (int(3), descriptors(&[id])),
        ]),
    );
    assert_eq!(status, status::NO_CREDENTIALS);
    let (status, _) = platform.call(
        0x02,
        Some(get_assertion(&[0; 32], &[vec![1; 16]], vec![], None)),
    );
    assert_eq!(status, status::NO_CREDENTIALS);
}

#[test]
fn only_es256_is_supported() {
    let mut platform = Platform::new(Touch::Now);
    let mut request = MakeCredential::new(b"u");
    request.algorithms = vec![-8, -257];
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::UNSUPPORTED_ALGORITHM
    );
    request.algorithms = vec![-8, -7];
    assert_eq!(platform.call(0x01, Some(request.params())).0, status::OK);
}

#[test]
fn the_exclude_list_refuses_a_second_credential_on_this_key() {
    let mut platform = Platform::new(Touch::Now);
    let (id, _, _) = register(&mut platform, &MakeCredential::new(b"u"));
    let mut again = MakeCredential::new(b"u");
    again.exclude = vec![vec![1; 32], id];
    assert_eq!(
        platform.call(0x01, Some(again.params())).0,
        status::CREDENTIAL_EXCLUDED
    );
    again.exclude = vec![vec![1; 32]];
    assert_eq!(platform.call(0x01, Some(again.params())).0, status::OK);
    assert_eq!(platform.key.authenticator().state().credentials.len(), 2);
}

#[test]
fn discoverable_credentials_come_back_with_their_user_handles_newest_first() {
    let mut platform = Platform::new(Touch::Now);
    let mut alice = MakeCredential::new(b"alice-handle");
    alice.rk = true;
    let (alice_id, _, _) = register(&mut platform, &alice);
    let mut bob = MakeCredential::new(b"bob-handle");
    bob.rk = true;
    let (bob_id, bob_key, _) = register(&mut platform, &bob);
    // Registering alice again replaces her discoverable credential.
    let (alice_id_2, alice_key_2, _) = register(&mut platform, &alice);
    assert_ne!(alice_id, alice_id_2);
    let stored = &platform.key.authenticator().state().credentials;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|c| c.discoverable && c.user.is_some()));

    let client_data_hash = [7u8; 32];
    let (status, first) = platform.call(
        0x02,
        Some(get_assertion(&client_data_hash, &[], vec![], None)),
    );
    assert_eq!(status, status::OK);
    let first = first.expect("assertion");
    assert_eq!(get(&first, 5).and_then(Value::as_integer), Some(2.into()));
    let user = get(&first, 4).expect("user");
    assert_eq!(
        named(user, "id").and_then(Value::as_bytes),
        Some(&b"alice-handle".to_vec())
    );
    assert!(
        named(user, "name").is_none(),
        "no name without user verification"
    );
    let id = named(get(&first, 1).expect("credential"), "id")
        .and_then(Value::as_bytes)
        .expect("id");
    assert_eq!(id, &alice_id_2);
    verify(
        &alice_key_2,
        &bytes_at(&first, 2),
        &client_data_hash,
        &bytes_at(&first, 3),
    );

    let (status, second) = platform.call(0x08, None);
    assert_eq!(status, status::OK);
    let second = second.expect("next assertion");
    assert_eq!(
        named(get(&second, 4).expect("user"), "id").and_then(Value::as_bytes),
        Some(&b"bob-handle".to_vec())
    );
    assert!(get(&second, 5).is_none());
    assert_eq!(
        named(get(&second, 1).expect("credential"), "id").and_then(Value::as_bytes),
        Some(&bob_id)
    );
    verify(
        &bob_key,
        &bytes_at(&second, 2),
        &client_data_hash,
        &bytes_at(&second, 3),
    );
    assert_eq!(platform.call(0x08, None).0, status::NOT_ALLOWED);

    // A non-discoverable credential is not found without an allow list.
    let mut platform = Platform::new(Touch::Now);
    register(&mut platform, &MakeCredential::new(b"carol"));
    assert_eq!(
        platform
            .call(0x02, Some(get_assertion(&[0; 32], &[], vec![], None)))
            .0,
        status::NO_CREDENTIALS
    );
}

#[test]
fn pin_protocols_one_and_two_set_change_and_authorise() {
    for protocol in [1u8, 2] {
        let mut platform = Platform::new(Touch::Now);
        let session = PinSession::open(&mut platform, protocol);
        assert_eq!(
            session.set_pin(&mut platform, "123"),
            status::PIN_POLICY_VIOLATION
        );
        assert_eq!(session.set_pin(&mut platform, "1234"), status::OK);
        assert_eq!(
            platform.key.authenticator().state().pin_hash,
            Some(state::pin_hash(b"1234"))
        );
        assert_eq!(session.set_pin(&mut platform, "5678"), status::NOT_ALLOWED);

        let (status, token) = session.token(&mut platform, "1234");
        assert_eq!(status, status::OK, "protocol {protocol}");
        let token = token.expect("token");

        // makeCredential with the token: user verified.
        let mut request = MakeCredential::new(b"dave");
        request.rk = true;
        request.pin_auth = Some((
            PinSession::authenticate(protocol, &token, &request.client_data_hash),
            protocol,
        ));
        let (id, key, flags) = register(&mut platform, &request);
        assert_eq!(flags, 0x45, "UP, UV and AT");

        // A wrong pinUvAuthParam.
        request.pin_auth = Some((
            PinSession::authenticate(protocol, &token, b"another hash"),
            protocol,
        ));
        assert_eq!(
            platform.call(0x01, Some(request.params())).0,
            status::PIN_AUTH_INVALID
        );

        // getAssertion with the token: UV flag and the user's names.
        let client_data_hash = [3u8; 32];
        let auth = PinSession::authenticate(protocol, &token, &client_data_hash);
        let (status, answer) = platform.call(
            0x02,
            Some(get_assertion(
                &client_data_hash,
                &[],
                vec![],
                Some((auth, protocol)),
            )),
        );
        assert_eq!(status, status::OK);
        let answer = answer.expect("assertion");
        let auth_data = bytes_at(&answer, 2);
        assert_eq!(parse_auth_data(&auth_data).flags, 0x05);
        verify(&key, &auth_data, &client_data_hash, &bytes_at(&answer, 3));
        let user = get(&answer, 4).expect("user");
        assert_eq!(named(user, "name").and_then(Value::as_text), Some("alice"));
        assert_eq!(
            named(get(&answer, 1).expect("credential"), "id").and_then(Value::as_bytes),
            Some(&id)
        );

        // changePIN: the old PIN stops working, the token too.
        assert_eq!(
            session.change_pin(&mut platform, "1234", "98765"),
            status::OK
        );
        let auth = PinSession::authenticate(protocol, &token, &client_data_hash);
        assert_eq!(
            platform
                .call(
                    0x02,
                    Some(get_assertion(
                        &client_data_hash,
                        &[],
                        vec![],
                        Some((auth, protocol))
                    ))
                )
                .0,
            status::PIN_AUTH_INVALID
        );
        let session = PinSession::open(&mut platform, protocol);
        assert_eq!(session.token(&mut platform, "1234").0, status::PIN_INVALID);
        let session = PinSession::open(&mut platform, protocol);
        assert_eq!(session.token(&mut platform, "98765").0, status::OK);
        assert_eq!(platform.retries(), (8, false));
    }
}

#[test]
fn permissions_beyond_make_credential_and_get_assertion_are_refused() {
    let mut platform = Platform::with_state(pin_state("1234"), Touch::Now);
    let session = PinSession::open(&mut platform, 2);
    let mut params = session.base(9);
    params.push((int(6), byt(&session.pin_hash_enc("1234"))));
    params.push((int(9), int(0x04)));
    assert_eq!(
        platform.call(0x06, Some(params)).0,
        status::UNAUTHORIZED_PERMISSION
    );
    // A token bound to another relying party.
    let mut params = session.base(9);
    params.push((int(6), byt(&session.pin_hash_enc("1234"))));
    params.push((int(9), int(0x02)));
    params.push((int(10), txt("other.example")));
    let (status, answer) = platform.call(0x06, Some(params));
    assert_eq!(status, status::OK);
    let token = session.decrypt(&bytes_at(&answer.expect("token"), 2));
    let mut request = MakeCredential::new(b"u");
    request.pin_auth = Some((
        PinSession::authenticate(2, &token, &request.client_data_hash),
        2,
    ));
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::PIN_AUTH_INVALID,
        "no makeCredential permission, another relying party"
    );
}

fn pin_state(pin: &str) -> State {
    State {
        pin_hash: Some(state::pin_hash(pin.as_bytes())),
        ..State::default()
    }
}

#[test]
fn wrong_pins_cost_retries_block_auth_until_replug_then_block_the_pin() {
    let mut platform = Platform::with_state(pin_state("1234"), Touch::Now);
    assert_eq!(platform.retries(), (8, false));
    for (attempt, expected) in [
        (1, status::PIN_INVALID),
        (2, status::PIN_INVALID),
        (3, status::PIN_AUTH_BLOCKED),
    ] {
        let session = PinSession::open(&mut platform, 1);
        assert_eq!(
            session.token(&mut platform, "0000").0,
            expected,
            "attempt {attempt}"
        );
        assert_eq!(platform.retries().0, 8 - attempt);
    }
    assert_eq!(platform.retries(), (5, true));
    // Even the right PIN is refused, without a retry spent, until the key is plugged again.
    let session = PinSession::open(&mut platform, 2);
    assert_eq!(
        session.token(&mut platform, "1234").0,
        status::PIN_AUTH_BLOCKED
    );
    assert_eq!(platform.retries(), (5, true));
    platform.replug();
    let session = PinSession::open(&mut platform, 2);
    assert_eq!(session.token(&mut platform, "1234").0, status::OK);
    assert_eq!(platform.retries(), (8, false));

    // Eight wrong PINs in all block it for good.
    let mut statuses = Vec::new();
    for attempt in 1..=8 {
        if attempt % 2 == 1 {
            platform.replug();
        }
        let session = PinSession::open(&mut platform, 2);
        statuses.push(session.token(&mut platform, "9999").0);
    }
    assert_eq!(statuses[..7], [status::PIN_INVALID; 7][..], "{statuses:x?}");
    assert_eq!(statuses[7], status::PIN_BLOCKED);
    assert_eq!(platform.retries().0, 0);
    platform.replug();
    let session = PinSession::open(&mut platform, 1);
    assert_eq!(session.token(&mut platform, "1234").0, status::PIN_BLOCKED);
    assert_eq!(
        session.change_pin(&mut platform, "1234", "5555"),
        status::PIN_BLOCKED
    );
    assert_eq!(platform.key.authenticator().state().pin_retries, 0);
}

#[test]
fn a_wrong_current_pin_in_change_pin_costs_a_retry() {
    let mut platform = Platform::with_state(pin_state("1234"), Touch::Now);
    let session = PinSession::open(&mut platform, 1);
    assert_eq!(
        session.change_pin(&mut platform, "4321", "5555"),
        status::PIN_INVALID
    );
    assert_eq!(platform.retries().0, 7);
}

#[test]
fn without_a_pin_the_pin_operations_say_it_is_not_set() {
    let mut platform = Platform::new(Touch::Now);
    for protocol in [1, 2] {
        let session = PinSession::open(&mut platform, protocol);
        assert_eq!(session.token(&mut platform, "1234").0, status::PIN_NOT_SET);
        assert_eq!(
            session.change_pin(&mut platform, "1234", "5678"),
            status::PIN_NOT_SET
        );
    }
    // An empty pinUvAuthParam (a browser picking a key) gets a touch, then the same answer; so
    // does a token computed without a PIN.
    let mut request = MakeCredential::new(b"u");
    request.pin_auth = Some((Vec::new(), 1));
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::PIN_NOT_SET
    );
    request.pin_auth = Some((vec![0; 16], 1));
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::PIN_NOT_SET
    );
}

#[test]
fn with_a_pin_discoverable_credentials_require_it() {
    let mut platform = Platform::with_state(pin_state("1234"), Touch::Now);
    let mut request = MakeCredential::new(b"u");
    request.rk = true;
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::PIN_REQUIRED
    );
    // A non-discoverable credential without the PIN, as a YubiKey allows (makeCredUvNotRqd).
    request.rk = false;
    let (_, _, flags) = register(&mut platform, &request);
    assert_eq!(flags, 0x41);
    request.pin_auth = Some((Vec::new(), 2));
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::PIN_INVALID
    );
}

#[test]
fn the_uv_option_is_refused_as_a_key_without_built_in_verification_refuses_it() {
    for state in [State::default(), pin_state("1234")] {
        let mut platform = Platform::with_state(state, Touch::Now);
        let (id, _, _) = register(&mut platform, &MakeCredential::new(b"u"));
        let mut request = MakeCredential::new(b"u");
        request.uv = Some(true);
        assert_eq!(
            platform.call(0x01, Some(request.params())).0,
            status::INVALID_OPTION
        );
        let (status, _) = platform.call(
            0x02,
            Some(get_assertion(
                &[0; 32],
                &[id],
                vec![(txt("uv"), Value::Bool(true))],
                None,
            )),
        );
        assert_eq!(status, status::INVALID_OPTION);
    }
    // Even beside a valid pinUvAuthParam.
    let mut platform = Platform::with_state(pin_state("1234"), Touch::Now);
    let session = PinSession::open(&mut platform, 2);
    let token = session.token(&mut platform, "1234").1.expect("token");
    let mut request = MakeCredential::new(b"u");
    request.uv = Some(true);
    request.pin_auth = Some((
        PinSession::authenticate(2, &token, &request.client_data_hash),
        2,
    ));
    assert_eq!(
        platform.call(0x01, Some(request.params())).0,
        status::INVALID_OPTION
    );
}

#[test]
fn a_late_touch_sends_keepalives_saying_the_key_waits_for_it() {
    let mut platform = Platform::new(Touch::After(Duration::from_millis(450)));
    let start = platform.now;
    let (status, _) = platform.call(0x01, Some(MakeCredential::new(b"u").params()));
    assert_eq!(status, status::OK);
    assert_eq!(platform.now - start, 450 * MS);
    assert_eq!(platform.keepalives, [keepalive::UPNEEDED; 4]);
    // getInfo needs no touch, so no keepalive.
    platform.info();
    assert!(platform.keepalives.is_empty());
}

#[test]
fn no_touch_times_out_and_a_refusal_is_denied() {
    let mut platform = Platform::new(Touch::Never);
    let start = platform.now;
    let (status, _) = platform.call(0x01, Some(MakeCredential::new(b"u").params()));
    assert_eq!(status, status::USER_ACTION_TIMEOUT);
    assert_eq!(platform.now - start, Duration::from_secs(2));
    assert!(
        platform.keepalives.len() >= 19,
        "{}",
        platform.keepalives.len()
    );
    assert!(platform.key.authenticator().state().credentials.is_empty());

    let mut platform = Platform::new(Touch::Refuse);
    assert_eq!(
        platform
            .call(0x01, Some(MakeCredential::new(b"u").params()))
            .0,
        status::OPERATION_DENIED
    );
    platform.key.authenticator_mut().set_touch(Touch::Now);
    let (id, _, _) = register(&mut platform, &MakeCredential::new(b"u"));
    platform.key.authenticator_mut().set_touch(Touch::Refuse);
    assert_eq!(
        platform
            .call(0x02, Some(get_assertion(&[0; 32], &[id], vec![], None)))
            .0,
        status::OPERATION_DENIED
    );
}

#[test]
fn cancel_ends_the_wait_for_a_touch() {
    let mut platform = Platform::new(Touch::Never);
    let mut payload = vec![0x01];
    ciborium::into_writer(
        &Value::Map(MakeCredential::new(b"u").params()),
        &mut payload,
    )
    .expect("cbor");
    let cid = platform.cid;
    for report in host::frame(cid, command::CBOR, &payload) {
        assert!(platform.key.receive(Duration::ZERO, &report).is_empty());
    }
    let keepalives = host::parse_all(&platform.key.poll(100 * MS));
    assert_eq!(
        keepalives,
        [(cid, command::KEEPALIVE, vec![keepalive::UPNEEDED])]
    );
    let mut answers = Vec::new();
    for report in host::frame(cid, command::CANCEL, &[]) {
        answers.extend(platform.key.receive(150 * MS, &report));
    }
    assert_eq!(
        host::parse_all(&answers),
        [(cid, command::CBOR, vec![status::KEEPALIVE_CANCEL])]
    );
    assert!(platform.key.poll(Duration::from_secs(5)).is_empty());
}

#[test]
fn u2f_messages_are_refused_with_a_status_word() {
    let mut platform = Platform::new(Touch::Now);
    let (command, data) = platform
        .transact(command::MSG, &[0, 3, 0, 0, 0, 0, 0])
        .expect("answer");
    assert_eq!((command, data), (command::MSG, vec![0x6d, 0x00]));
}

#[test]
fn the_key_can_be_pulled_out_when_a_request_arrives() {
    let authenticator =
        Authenticator::new(State::default(), Config::default(), Duration::ZERO).expect("key");
    let mut platform = Platform::on(VirtualKey::new(
        authenticator,
        ctaphid::Config::default(),
        Some(2),
    ));
    platform.info();
    assert_eq!(platform.transact(command::CBOR, &[0x04]), None);
    assert!(platform.key.unplugged());
    assert_eq!(platform.key.cbor_requests(), 2);
}

#[test]
fn reset_wipes_the_key_within_ten_seconds_of_power_up_only() {
    let mut platform = Platform::with_state(pin_state("1234"), Touch::Now);
    register(&mut platform, &MakeCredential::new(b"u"));
    platform.now = Duration::from_secs(11);
    assert_eq!(platform.call(0x07, None).0, status::NOT_ALLOWED);
    platform.replug();
    assert_eq!(platform.call(0x07, None).0, status::OK);
    let state = platform.key.authenticator().state();
    assert!(state.credentials.is_empty() && !state.has_pin());
    assert_eq!(state.aaguid, state::DEFAULT_AAGUID);
}

#[test]
fn a_state_prepared_as_json_is_the_key_a_test_gets() {
    let mut platform = Platform::new(Touch::Now);
    let mut request = MakeCredential::new(b"erin");
    request.rk = true;
    let (_, key, _) = register(&mut platform, &request);
    let json = serde_json::to_string(platform.key.authenticator().state()).expect("json");

    let mut prepared: serde_json::Value = serde_json::from_str(&json).expect("json");
    prepared["pin_retries"] = 3.into();
    prepared["sign_count"] = 100.into();
    let state: State = serde_json::from_value(prepared).expect("a state");
    let mut platform = Platform::with_state(state, Touch::Now);
    assert_eq!(platform.retries().0, 3);
    let (status, answer) = platform.call(0x02, Some(get_assertion(&[1; 32], &[], vec![], None)));
    assert_eq!(status, status::OK);
    let answer = answer.expect("assertion");
    let auth_data = bytes_at(&answer, 2);
    assert_eq!(parse_auth_data(&auth_data).counter, 101);
    verify(&key, &auth_data, &[1; 32], &bytes_at(&answer, 3));
    assert!(platform.key.authenticator_mut().take_dirty());
}
