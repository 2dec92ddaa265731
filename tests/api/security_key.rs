//! The CLI's security key (`tessera_client::security_key::SecurityKey`) in front of a virtual
//! FIDO2 key through its `Ctap2Key` seam, in process and against the real server: the CTAP2 the
//! CLI speaks, the PIN asked for and asked again, and each refusal of the key as the member reads
//! it. (The CTAPHID path through `ctap-hid-fido2` is tests/devices/hardware_key.rs, in a VM.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tessera_client::api::{ApiClientError, ApiClientResult};
use tessera_client::authenticator::client::{Assertion, Attestation, CreateRequest, GetRequest};
use tessera_client::authenticator::{Authenticator as _, AuthenticatorError};
use tessera_client::identity::certify;
use tessera_client::membership::{self, InvitationLink, Joined, MembershipError, Signer};
use tessera_client::security_key::{Ctap2Key, Prompt, SecurityKey, refusal_of};
use tessera_tests::TestApp;
use tessera_virtual_key::ctap2::{self, permission, status};
use tessera_virtual_key::platform::{
    self, MakeCredential, PinSession, Platform, Value, bytes_at, get, named,
};
use tessera_virtual_key::{Config, State, Touch, state};
use tessera_wire::{Role, SessionGranted};
use uuid::Uuid;

/// The member's PIN.
const PIN: &str = "1234";
/// How long the virtual key waits for a touch (on its own clock, which the platform moves).
const TOUCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The PIN protocol the CLI asks `ctap-hid-fido2` for.
const PROTOCOL: u8 = 2;

/// A virtual key plugged in; its clones are the same key (each CLI run's, and the test's view).
#[derive(Clone)]
struct VirtualCtap2Key(Arc<Mutex<Platform>>);

impl VirtualCtap2Key {
    /// A key with `state`, touched at once when it blinks.
    fn new(state: State) -> Self {
        let config = Config {
            touch: Touch::Now,
            touch_timeout: TOUCH_TIMEOUT,
            ..Config::default()
        };
        Self(Arc::new(Mutex::new(Platform::with_config(state, config))))
    }

    /// A new key whose PIN is `pin`.
    fn with_pin(pin: &str) -> Self {
        Self::new(State {
            pin_hash: Some(state::pin_hash(pin.as_bytes())),
            ..State::default()
        })
    }

    fn platform(&self) -> MutexGuard<'_, Platform> {
        self.0.lock().expect("the key")
    }

    fn state(&self) -> State {
        self.platform().key.authenticator().state().clone()
    }

    fn set_touch(&self, touch: Touch) {
        self.platform().key.authenticator_mut().set_touch(touch);
    }
}

/// The key's refusal, named as the CLI names a real key's (`security_key::refusal_of`).
fn refusal(platform: &mut Platform, code: u8) -> AuthenticatorError {
    refusal_of(code, || Some(platform.retries().0))
}

/// getPinUvAuthTokenUsingPinWithPermissions with `pin`, for `permissions` on `rp_id`.
fn token(
    platform: &mut Platform,
    pin: &str,
    permissions: u8,
    rp_id: &str,
) -> Result<Vec<u8>, AuthenticatorError> {
    let session = PinSession::open(platform, PROTOCOL);
    match session.token_for(platform, pin, permissions, rp_id) {
        (status::OK, Some(token)) => Ok(token),
        (code, _) => Err(refusal(platform, code)),
    }
}

/// A CTAP2 request's answer, or the key's refusal.
fn answer(
    platform: &mut Platform,
    command: u8,
    params: Option<Vec<(Value, Value)>>,
) -> Result<Value, AuthenticatorError> {
    match platform.call(command, params) {
        (status::OK, Some(answer)) => Ok(answer),
        (status::OK, None) => Err(AuthenticatorError::Device("an empty answer".into())),
        (code, _) => Err(refusal(platform, code)),
    }
}

/// What the CLI reads of a getAssertion or getNextAssertion answer.
fn assertion(answer: &Value) -> Assertion {
    let credential_id = get(answer, 1)
        .and_then(|c| named(c, "id"))
        .and_then(Value::as_bytes)
        .cloned()
        .expect("the credential's id");
    Assertion {
        credential_id,
        auth_data: bytes_at(answer, 2),
        signature: bytes_at(answer, 3),
        user_handle: get(answer, 4)
            .and_then(|user| named(user, "id"))
            .and_then(Value::as_bytes)
            .filter(|id| !id.is_empty())
            .cloned(),
    }
}

impl Ctap2Key for VirtualCtap2Key {
    fn has_pin(&mut self) -> Result<bool, AuthenticatorError> {
        Ok(self.platform().has_pin())
    }

    fn make_credential(
        &mut self,
        request: &CreateRequest,
        pin: &str,
    ) -> Result<Attestation, AuthenticatorError> {
        let mut platform = self.platform();
        let token = token(
            &mut platform,
            pin,
            permission::MAKE_CREDENTIAL,
            &request.rp_id,
        )?;
        let mut make = MakeCredential::new(&request.user_id);
        make.rp_id.clone_from(&request.rp_id);
        make.rp_name.clone_from(&request.rp_name);
        make.user_name.clone_from(&request.user_name);
        make.user_display_name
            .clone_from(&request.user_display_name);
        make.client_data_hash = platform::client_data_hash(&request.client_data_json);
        make.rk = true;
        make.exclude.clone_from(&request.exclude);
        make.pin_auth = Some((
            PinSession::authenticate(PROTOCOL, &token, &make.client_data_hash),
            PROTOCOL,
        ));
        let made = answer(
            &mut platform,
            ctap2::command::MAKE_CREDENTIAL,
            Some(make.params()),
        )?;
        Ok(Attestation {
            format: get(&made, 1)
                .and_then(Value::as_text)
                .expect("fmt")
                .to_owned(),
            statement: get(&made, 3).cloned().expect("attStmt"),
            auth_data: bytes_at(&made, 2),
        })
    }

    fn get_assertion(
        &mut self,
        request: &GetRequest,
        pin: &str,
    ) -> Result<Vec<Assertion>, AuthenticatorError> {
        let mut platform = self.platform();
        let token = token(
            &mut platform,
            pin,
            permission::GET_ASSERTION,
            &request.rp_id,
        )?;
        let hash = platform::client_data_hash(&request.client_data_json);
        let auth = PinSession::authenticate(PROTOCOL, &token, &hash);
        let params = platform::get_assertion_of(
            &request.rp_id,
            &hash,
            &request.allow,
            Vec::new(),
            Some((auth, PROTOCOL)),
        );
        let first = answer(&mut platform, ctap2::command::GET_ASSERTION, Some(params))?;
        let count = get(&first, 5)
            .and_then(Value::as_integer)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1);
        let mut assertions = vec![assertion(&first)];
        while assertions.len() < count {
            let next = answer(&mut platform, ctap2::command::GET_NEXT_ASSERTION, None)?;
            assertions.push(assertion(&next));
        }
        Ok(assertions)
    }
}

/// The member at the PIN prompt: hands out the PINs of a script, and notes each question.
#[derive(Clone)]
struct ScriptedPrompt(Arc<Mutex<Script>>);

struct Script {
    pins: VecDeque<String>,
    /// The `wrong` of each call.
    asked: Vec<Option<u32>>,
}

impl ScriptedPrompt {
    fn new(pins: &[&str]) -> Self {
        Self(Arc::new(Mutex::new(Script {
            pins: pins.iter().map(|&pin| pin.to_owned()).collect(),
            asked: Vec::new(),
        })))
    }

    /// The `wrong` of each time the PIN was asked for.
    fn asked(&self) -> Vec<Option<u32>> {
        self.0.lock().expect("the script").asked.clone()
    }
}

impl Prompt for ScriptedPrompt {
    fn pin(&mut self, wrong: Option<u32>) -> std::io::Result<String> {
        let mut script = self.0.lock().expect("the script");
        script.asked.push(wrong);
        script.pins.pop_front().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the PIN file ended")
        })
    }
}

type CliKey = SecurityKey<VirtualCtap2Key, ScriptedPrompt>;

/// The CLI's key in one run of `tessera` (which knows no PIN and no credential yet), the member
/// answering `pins`; and the prompt, to see what was asked.
fn cli_key(key: &VirtualCtap2Key, pins: &[&str]) -> (CliKey, ScriptedPrompt) {
    let prompt = ScriptedPrompt::new(pins);
    (SecurityKey::new(key.clone(), prompt.clone(), None), prompt)
}

/// `tessera join` with `security`: the enrollment through `client`.
async fn join(
    client: &mut tessera_client::api::ApiClient,
    link: &str,
    security: &mut CliKey,
) -> Result<Joined, MembershipError> {
    let link = InvitationLink::parse(link).expect("an invitation link");
    let now = tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000;
    membership::join(client, &link, Some("Security key"), security, now).await
}

/// A key with a PIN that enrolled the circle's founding admin.
async fn enrolled(app: &TestApp) -> VirtualCtap2Key {
    let key = VirtualCtap2Key::with_pin(PIN);
    let (mut security, _) = cli_key(&key, &[PIN]);
    join(&mut app.client(), &app.first_invitation, &mut security)
        .await
        .expect("the founder joins with the security key");
    key
}

/// `tessera login` with `key`, the member answering `pins`: the outcome, and the prompt's
/// questions.
async fn login(
    app: &TestApp,
    key: &VirtualCtap2Key,
    pins: &[&str],
) -> (ApiClientResult<SessionGranted>, Vec<Option<u32>>) {
    let (mut security, prompt) = cli_key(key, pins);
    let result = app.client().login(&mut security).await;
    (result, prompt.asked())
}

/// The key's refusal of a login.
fn refused(result: ApiClientResult<SessionGranted>) -> AuthenticatorError {
    match result {
        Err(ApiClientError::Authenticator(error)) => error,
        Err(other) => panic!("not the key's refusal: {other}"),
        Ok(_) => panic!("the login succeeded"),
    }
}

#[tokio::test]
async fn a_member_joins_with_a_security_key_then_logs_in_with_it() {
    let app = TestApp::spawn().await;
    let mut admin = app.admin().await;
    let link = admin.invite(Role::Member, None).await;
    let key = VirtualCtap2Key::with_pin(PIN);
    let (mut security, prompt) = cli_key(&key, &[PIN]);
    let mut client = app.client();
    let Joined { granted, .. } = join(&mut client, &link, &mut security)
        .await
        .expect("the member joins");
    assert_eq!(granted.role, Role::Member);

    // The key keeps a discoverable credential for the server, under the member's id.
    let stored = key.state().credentials;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].discoverable);
    assert_eq!(stored[0].rp_id, "localhost");
    assert_eq!(
        stored[0].user.as_ref().map(|u| u.id.clone()),
        Some(granted.member.as_bytes().to_vec())
    );
    let credential = security.public_key_info();
    assert_eq!(credential.credential_id.as_slice(), stored[0].id.as_slice());

    // The device's certification, as `tessera join` does next: no second PIN.
    let origin = app.origin.origin().ascii_serialization();
    let rp_id = security.rp_id().to_owned();
    let device = Uuid::new_v4();
    let certificate = certify(&rp_id, granted.member, device, b"device key", |r| {
        security.sign_in(r, &origin)
    })
    .expect("the key certifies the device");
    certificate
        .verify(std::slice::from_ref(&credential), &origin, &rp_id)
        .expect("the certificate verifies against the enrolled credential");
    assert_eq!(prompt.asked(), [None], "one PIN for the whole enrollment");

    // `tessera login`, another run: the PIN once more, the key alone says who logs in.
    let (logged_in, asked) = login(&app, &key, &[PIN]).await;
    let logged_in = logged_in.expect("the member logs in");
    assert_eq!(logged_in.member, granted.member);
    assert_eq!(logged_in.role, Role::Member);
    assert_eq!(asked, [None]);
    assert_eq!(key.state().pin_retries, 8);
}

#[tokio::test]
async fn a_wrong_pin_is_asked_again_with_the_tries_left_then_the_right_one_logs_in() {
    let app = TestApp::spawn().await;
    let key = enrolled(&app).await;
    let (result, asked) = login(&app, &key, &["0000", PIN]).await;
    result.expect("the right PIN logs in");
    assert_eq!(asked, [None, Some(7)]);
    assert_eq!(
        key.state().pin_retries,
        8,
        "the right PIN restores the tries"
    );
}

#[tokio::test]
async fn three_wrong_pins_in_a_row_block_the_key_until_it_is_plugged_in_again() {
    let app = TestApp::spawn().await;
    let key = enrolled(&app).await;
    let (result, asked) = login(&app, &key, &["0000", "1111", "2222", PIN]).await;
    let error = refused(result);
    assert!(
        matches!(error, AuthenticatorError::PinAuthBlocked),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("too many wrong PINs in a row: unplug the key, plug it in again and retry"),
        "{error}"
    );
    assert_eq!(asked, [None, Some(7), Some(6)], "no fourth question");
    assert_eq!(key.state().pin_retries, 5);

    // Even the right PIN is refused until the key is plugged in again.
    let (result, _) = login(&app, &key, &[PIN]).await;
    assert!(matches!(
        refused(result),
        AuthenticatorError::PinAuthBlocked
    ));
    key.platform().replug();
    let (result, asked) = login(&app, &key, &[PIN]).await;
    result.expect("the right PIN after a replug");
    assert_eq!(asked, [None]);
}

#[tokio::test]
async fn a_wrong_pin_on_the_last_try_blocks_the_pin() {
    let app = TestApp::spawn().await;
    let mut state = enrolled(&app).await.state();
    state.pin_retries = 1;
    let key = VirtualCtap2Key::new(state);
    let (result, asked) = login(&app, &key, &["0000", PIN]).await;
    let error = refused(result);
    assert!(matches!(error, AuthenticatorError::PinBlocked), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("the key's PIN is blocked after too many wrong tries"),
        "{error}"
    );
    assert_eq!(asked, [None], "no try left to ask for");
    assert_eq!(key.state().pin_retries, 0);

    // The right PIN helps no more.
    let (result, asked) = login(&app, &key, &[PIN]).await;
    assert!(matches!(refused(result), AuthenticatorError::PinBlocked));
    assert_eq!(asked, [None]);
}

#[tokio::test]
async fn a_key_without_a_pin_is_refused_before_the_pin_is_asked() {
    let app = TestApp::spawn().await;
    let key = VirtualCtap2Key::new(State::default());
    let (mut security, prompt) = cli_key(&key, &[PIN]);
    let error = match join(&mut app.client(), &app.first_invitation, &mut security).await {
        Err(MembershipError::Key(error)) => error,
        Err(other) => panic!("not the key's refusal: {other}"),
        Ok(_) => panic!("joined without a PIN"),
    };
    assert!(matches!(error, AuthenticatorError::PinNotSet), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("the key has no PIN yet: set one first"),
        "{error}"
    );
    assert!(prompt.asked().is_empty(), "{:?}", prompt.asked());
    assert!(key.state().credentials.is_empty());
}

#[tokio::test]
async fn a_refused_touch_is_denied_and_a_missing_one_times_out() {
    let app = TestApp::spawn().await;
    let key = enrolled(&app).await;

    key.set_touch(Touch::Refuse);
    let (result, asked) = login(&app, &key, &[PIN]).await;
    let error = refused(result);
    assert!(matches!(error, AuthenticatorError::Denied), "{error:?}");
    assert!(
        error.to_string().contains("the key refused the request"),
        "{error}"
    );
    assert_eq!(asked, [None]);

    key.set_touch(Touch::Never);
    let started = key.platform().now;
    let (result, asked) = login(&app, &key, &[PIN]).await;
    let error = refused(result);
    assert!(
        matches!(error, AuthenticatorError::TouchTimeout),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("the key was not touched in time"),
        "{error}"
    );
    assert_eq!(asked, [None], "a timeout is no wrong PIN");
    assert_eq!(
        key.platform().now - started,
        TOUCH_TIMEOUT,
        "the key gave up after its timeout, on its clock"
    );

    key.set_touch(Touch::Now);
    login(&app, &key, &[PIN]).await.0.expect("a touch logs in");
}

#[tokio::test]
async fn a_key_that_is_not_the_enrolled_one_holds_no_credential() {
    let app = TestApp::spawn().await;
    enrolled(&app).await;
    let stranger = VirtualCtap2Key::with_pin(PIN);
    let (result, asked) = login(&app, &stranger, &[PIN]).await;
    let error = refused(result);
    assert!(
        matches!(error, AuthenticatorError::NoCredential),
        "{error:?}"
    );
    assert!(error.to_string().contains("holds no credential"), "{error}");
    assert_eq!(asked, [None]);
}

#[tokio::test]
async fn a_prompt_without_another_pin_after_a_wrong_one_reports_the_wrong_pin() {
    let app = TestApp::spawn().await;
    let key = enrolled(&app).await;
    let (result, asked) = login(&app, &key, &["0000"]).await;
    let error = refused(result);
    assert!(
        matches!(error, AuthenticatorError::PinInvalid { retries: 7 }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("wrong PIN: 7 tries left before the key blocks its PIN"),
        "{error}"
    );
    assert_eq!(asked, [None, Some(7)]);
    assert_eq!(key.state().pin_retries, 7);
}

#[tokio::test]
async fn the_enrolled_key_cannot_be_added_again_as_a_spare() {
    let app = TestApp::spawn().await;
    let key = VirtualCtap2Key::with_pin(PIN);
    let (mut security, _) = cli_key(&key, &[PIN]);
    let mut client = app.client();
    let Joined { granted, root } = join(&mut client, &app.first_invitation, &mut security)
        .await
        .expect("the founder joins");
    // `tessera keys add` with the same key plugged in as the new one.
    let (mut again, _) = cli_key(&key, &[PIN]);
    let signer = Signer {
        circle: granted.circle,
        member: granted.member,
        root,
        key: &mut security,
    };
    let error = match membership::add_key(&client, signer, &mut again, Some("spare")).await {
        Err(MembershipError::Key(error)) => error,
        Err(other) => panic!("not the key's refusal: {other}"),
        Ok(_) => panic!("the key was added twice"),
    };
    assert!(
        matches!(error, AuthenticatorError::AlreadyEnrolled),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("already enrolled here"),
        "{error}"
    );
    assert_eq!(key.state().credentials.len(), 1);
}
