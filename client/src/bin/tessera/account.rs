//! The member's account on the server: software key files, enrolling with an invitation, logging
//! in and out (and sessions renewed by the device key), and the member's own keys.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use tessera_client::api::{ApiClient, ApiClientError};
use tessera_client::authenticator::{Authenticator, AuthenticatorError, SoftKey};

use crate::keys::{MemberKey, member_key, save_key, security_key};
use tessera_client::identity::{certify, key_fingerprint};
use tessera_client::membership::{self, InvitationLink, Joined, MembershipError, Signer};
use tessera_client::store::{DeviceStore, Profile};
use tessera_client::trust::{RootPin, Trust};
use tessera_engine::decision::Decision;
use tessera_engine::{DeviceKey, Engine, EngineConfig};
use tessera_wire::{Base64Url, ErrorCode, Role};
use url::Url;
use uuid::Uuid;

use crate::settings::{DataDirLock, Settings};

/// The server's origin as browsers and hardware keys see it: `scheme://host[:port]`.
pub fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// An API client of `origin`.
pub fn api_client(origin: &str) -> Result<ApiClient> {
    let url = Url::parse(origin).with_context(|| format!("{origin} is not a server URL"))?;
    Ok(ApiClient::new(url))
}

/// Explains an API failure in the member's terms.
pub fn explain(error: ApiClientError, origin: &str) -> anyhow::Error {
    match &error {
        ApiClientError::Transport(_) => anyhow!(
            "cannot reach the server at {origin}: is it running, and is the address right? \
             ({error})"
        ),
        _ if error.code() == Some(ErrorCode::MemberRevoked) => {
            anyhow!("your membership of this circle was revoked")
        }
        _ if error.status().is_some_and(|s| s == 401) => anyhow!(
            "the server does not accept this device's session (logged out, expired or \
             revoked): run `tessera login` ({error})"
        ),
        ApiClientError::Authenticator(AuthenticatorError::NoCredential) => {
            anyhow!("the key holds no credential for this server: is it the key you enrolled with?")
        }
        _ => anyhow::Error::new(error),
    }
}

/// `tessera soft-key new`.
pub fn new_key(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!(
            "{} exists already; pass --force to replace it (the old key is lost)",
            path.display()
        );
    }
    let key = SoftKey::blank().context("cannot make a key")?;
    save_key(&key, path)?;
    println!(
        "Created the software key {} (mode 0600).\nIt is weaker than a hardware key: anyone who \
         copies this file can act as you. Keep it private.",
        path.display()
    );
    Ok(())
}

/// The data directory's lock (when taken), store and profile.
pub struct Opened {
    pub _lock: Option<DataDirLock>,
    pub store: DeviceStore,
    pub profile: Profile,
}

/// Opens this device for its engine (one process at a time); it must have joined.
pub async fn open(settings: &Settings) -> Result<Opened> {
    open_with(settings, Some(settings.lock()?)).await
}

/// Opens this device's profile only, for calls to the server that leave the engine alone (they
/// may run next to `tessera chat`).
pub async fn open_profile(settings: &Settings) -> Result<Opened> {
    open_with(settings, None).await
}

async fn open_with(settings: &Settings, lock: Option<DataDirLock>) -> Result<Opened> {
    if !settings.store_path().exists() {
        bail!(
            "this data directory ({}) holds no device yet: run `tessera join <invitation-link>`",
            settings.data_dir.display()
        );
    }
    let store = DeviceStore::open(&settings.store_path()).await?;
    let Some(profile) = store.profile().await? else {
        bail!(
            "this data directory ({}) holds no device yet: run `tessera join <invitation-link>`",
            settings.data_dir.display()
        );
    };
    if let Some(server) = &settings.server
        && origin_of(server) != profile.origin
    {
        bail!(
            "this device belongs to {}, not {}: use another --data-dir for another server",
            profile.origin,
            origin_of(server)
        );
    }
    Ok(Opened {
        _lock: lock,
        store,
        profile,
    })
}

/// The API client of an opened device, with its session.
pub fn logged_in(profile: &Profile) -> Result<ApiClient> {
    let Some(session) = &profile.session else {
        bail!("this device is logged out: run `tessera login`");
    };
    let mut api = api_client(&profile.origin)?;
    api.set_session(Some(session.clone()));
    Ok(api)
}

/// The API client of an opened device, logged in: a session that ended is renewed with the
/// device key (no touch) and kept in the profile.
pub async fn session(opened: &mut Opened) -> Result<ApiClient> {
    let mut api = logged_in(&opened.profile)?;
    match api.me().await {
        Err(error) if error.status().is_some_and(|s| s == 401) => {}
        _ => return Ok(api),
    }
    let engine = restore(&opened.store, &opened.profile, None).await?;
    let profile = &mut opened.profile;
    api.set_session(None);
    let ceremony = api
        .renewal_start()
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    let granted = api
        .renew_session(&engine.session_renewal(&ceremony)?)
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    let token = granted.session.unwrap_or_default();
    opened.store.save_session(&token, granted.role).await?;
    profile.session = Some(token);
    profile.role = granted.role;
    Ok(api)
}

/// The engine as this device last stored it, keeping for others what `carry` allows.
pub async fn restore(
    store: &DeviceStore,
    profile: &Profile,
    settings: Option<&Settings>,
) -> Result<Engine> {
    let stored = store.load().await?.context(
        "this device's state is missing from its store: join again with a new --data-dir",
    )?;
    let mut config = EngineConfig::new(&profile.origin, &profile.rp_id);
    if let Some(settings) = settings {
        settings.tune(&mut config);
    }
    Ok(Engine::restore(config, stored)?)
}

/// A device made by `tessera login` finds its circle's root from its member's key at its first
/// directory (while `tessera chat` runs); the profile keeps it from then on.
pub async fn remember_root(opened: &mut Opened) -> Result<()> {
    if opened.profile.root.is_some() {
        return Ok(());
    }
    let engine = restore(&opened.store, &opened.profile, None).await?;
    let profile = &mut opened.profile;
    if let Some(root) = engine.root() {
        profile.root = Some(root);
        opened.store.save_profile(profile).await?;
    }
    Ok(())
}

/// This device's profile and its logged-in API client, for calls that leave the engine alone.
async fn on_server(settings: &Settings) -> Result<(Profile, ApiClient)> {
    let mut opened = open_profile(settings).await?;
    remember_root(&mut opened).await?;
    let api = session(&mut opened).await?;
    Ok((opened.profile, api))
}

/// `tessera join`.
pub async fn join(
    settings: &Settings,
    invitation: &str,
    name: Option<&str>,
    label: Option<&str>,
) -> Result<()> {
    let link = InvitationLink::parse(invitation).map_err(|e| anyhow!("{e}"))?;
    let origin = link.origin.clone();
    if let Some(server) = &settings.server
        && origin_of(server) != origin
    {
        bail!(
            "the invitation is for {origin}, but the server is set to {}",
            origin_of(server)
        );
    }
    let mut key = member_key(settings, None, "the key to enroll")?;
    if let MemberKey::File { key: soft, path } = &key
        && !soft.is_blank()
    {
        bail!(
            "{} already holds a credential (for {}): a software key file enrolls once; create \
             another with `tessera soft-key new`",
            path.display(),
            soft.rp_id()
        );
    }
    let lock = settings.lock()?;
    let store = DeviceStore::open(&settings.store_path()).await?;
    if let Some(profile) = store.profile().await? {
        bail!(
            "this data directory ({}) is already a device of {}: use another --data-dir",
            settings.data_dir.display(),
            profile.origin
        );
    }

    let mut api = api_client(&origin)?;
    println!("Enrolling the key at {origin}…");
    let enrolled = membership::join(&mut api, &link, label, key.authenticator(), now_secs()).await;
    // The credential exists on the key once the key answered: keep it even if the server refused.
    key.save()?;
    let Joined { granted, root } = enrolled.map_err(|e| match e {
        MembershipError::Api(e) if e.code() == Some(ErrorCode::InvitationUnusable) => anyhow!(
            "the invitation cannot be used (expired, used or revoked): ask an admin for a new one"
        ),
        MembershipError::Api(e) => explain(e, &origin),
        e => anyhow!("{e}"),
    })?;

    let device = make_device(
        &store,
        &mut key,
        (&origin, &granted),
        RootPin::Pinned(root),
        name,
    )
    .await?;
    drop(lock);
    println!(
        "Joined {origin} as {} (member {}), device {device}.\nRun `tessera chat` to talk to the \
         circle: a member's device online adds this one to the circle's encrypted group.",
        if granted.role == Role::Admin {
            "an admin"
        } else {
            "a member"
        },
        granted.member
    );
    Ok(())
}

/// Makes this data directory a device of the member `granted` names: a new device key certified
/// by `key` (one touch), the engine (named `name`, trusting `root`) and the profile, saved; its id.
async fn make_device(
    store: &DeviceStore,
    key: &mut MemberKey,
    (origin, granted): (&str, &tessera_wire::SessionGranted),
    root: RootPin,
    name: Option<&str>,
) -> Result<Uuid> {
    let device = Uuid::new_v4();
    let device_key = DeviceKey::generate()?;
    let rp_id = key.authenticator().rp_id().to_owned();
    let certificate = certify(&rp_id, granted.member, device, device_key.public(), |r| {
        key.authenticator().sign_in(r, origin)
    })
    .context("the key refused to certify this device")?;
    key.save()?;
    let config = EngineConfig::new(origin, &rp_id);
    let trust = Trust {
        circle: granted.circle,
        root,
    };
    let mut engine = Engine::new(
        config,
        trust,
        granted.member,
        device,
        device_key,
        certificate,
    )?;
    if let Some(name) = name {
        engine.set_display_name(Instant::now(), name)?;
    }
    store.save_offline(&mut engine).await?;
    let key_file = key
        .file()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.to_path_buf()));
    store
        .save_profile(&Profile {
            origin: origin.to_owned(),
            rp_id,
            member: granted.member,
            device,
            circle: granted.circle,
            role: granted.role,
            session: granted.session.clone(),
            key_file: key_file.map(|f| f.display().to_string()),
            root: match root {
                RootPin::Pinned(root) => Some(root),
                RootPin::FromOwnKey => None,
            },
        })
        .await?;
    Ok(device)
}

/// The member's enrolled key for an opened device: the one the settings name, else the one it
/// joined with.
fn enrolled_key(settings: &Settings, profile: &Profile) -> Result<MemberKey> {
    member_key(settings, profile.key_file.as_deref(), "your enrolled key")
}

/// `tessera login`.
pub async fn login(settings: &Settings) -> Result<()> {
    let holds_device = settings.store_path().exists()
        && DeviceStore::open(&settings.store_path())
            .await?
            .profile()
            .await?
            .is_some();
    if !holds_device {
        return login_as_new_device(settings).await;
    }
    let profile = log_in_again(settings).await?;
    println!(
        "Logged in to {} as member {}.",
        profile.origin, profile.member
    );
    Ok(())
}

/// `tessera login` in a data directory that holds no device: logs in with the member's enrolled
/// key at `--server` and makes the directory a new device of theirs (a second touch certifies
/// it). One of their devices online adds it to the group and hands it their history.
async fn login_as_new_device(settings: &Settings) -> Result<()> {
    let Some(server) = &settings.server else {
        bail!(
            "this data directory ({}) holds no device yet: pass --server URL (with your enrolled \
             key) to make it a new device of yours, or run `tessera join <invitation-link>`",
            settings.data_dir.display()
        );
    };
    let origin = origin_of(server);
    let mut key = member_key(settings, None, "your enrolled key")?;
    let lock = settings.lock()?;
    let store = DeviceStore::open(&settings.store_path()).await?;
    let mut api = api_client(&origin)?;
    let granted = api.login(key.authenticator()).await;
    key.save()?;
    let granted = granted.map_err(|e| explain(e, &origin))?;
    // The circle's root is found from the member's own key at the first directory.
    let device = make_device(
        &store,
        &mut key,
        (&origin, &granted),
        RootPin::FromOwnKey,
        None,
    )
    .await?;
    drop(lock);
    println!(
        "Logged in to {origin} as member {}; this directory is now your device {device}.\nRun \
         `tessera chat`: one of your devices online adds it to the circle's encrypted group and \
         hands it your history.",
        granted.member
    );
    Ok(())
}

/// Logs this device in again with its key and keeps the new session; the profile as it is now.
pub async fn log_in_again(settings: &Settings) -> Result<Profile> {
    let Opened {
        _lock,
        store,
        mut profile,
    } = open(settings).await?;
    let mut key = enrolled_key(settings, &profile)?;
    let mut api = api_client(&profile.origin)?;
    let granted = api.login(key.authenticator()).await;
    key.save()?;
    let granted = granted.map_err(|e| explain(e, &profile.origin))?;
    if granted.member != profile.member {
        bail!(
            "this key belongs to another member ({}) than this device's ({})",
            granted.member,
            profile.member
        );
    }
    profile.session = granted.session;
    profile.role = granted.role;
    store.save_profile(&profile).await?;
    Ok(profile)
}

/// `tessera logout`.
pub async fn logout(settings: &Settings) -> Result<()> {
    let Opened {
        _lock,
        store,
        mut profile,
    } = open(settings).await?;
    if profile.session.is_none() {
        println!("This device is already logged out.");
        return Ok(());
    }
    let mut api = logged_in(&profile)?;
    match api.logout().await {
        Ok(()) => {}
        // The session had ended already: forgetting it is all that is left to do.
        Err(e) if e.status().is_some_and(|s| s == 401) => {}
        Err(e) => return Err(explain(e, &profile.origin)),
    }
    profile.session = None;
    store.save_profile(&profile).await?;
    println!("Logged out. `tessera login` signs in again with the key.");
    Ok(())
}

/// `tessera keys list`.
pub async fn list_keys(settings: &Settings) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let keys = api
        .passkeys()
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    println!("{:<44}  {:<39}  ENROLLED", "ID", "FINGERPRINT");
    for key in keys {
        println!(
            "{:<44}  {:<39}  {}",
            key.id,
            fingerprint(&key.public_key.public_key),
            date(key.created_at)
        );
    }
    Ok(())
}

/// The fingerprint of a directory's public key.
pub fn fingerprint(public_key: &Base64Url) -> String {
    key_fingerprint(public_key.as_slice())
}

/// A Unix time in seconds as a local date.
pub fn date(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).map_or_else(
        |_| seconds.to_string(),
        |t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        },
    )
}

/// `tessera keys add`.
pub async fn add_key(
    settings: &Settings,
    file: Option<&Path>,
    new_key_device: Option<String>,
    label: Option<&str>,
) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let mut own = enrolled_key(settings, &profile)?;
    let mut key = match file {
        Some(path) => {
            let key = crate::keys::load_key(path)?;
            if !key.is_blank() {
                bail!(
                    "{} already holds a credential: create a new key with `tessera soft-key new`",
                    path.display()
                );
            }
            MemberKey::File {
                key,
                path: path.to_path_buf(),
            }
        }
        None => {
            let mut new = settings.clone();
            new.key_device = new_key_device;
            security_key(&new, "the new key")?
        }
    };
    if let (MemberKey::Security { path: a, .. }, MemberKey::Security { path: b, .. }) = (&own, &key)
        && a == b
    {
        bail!(
            "the new key and your enrolled key are the same key ({a}): plug in both, and name the \
             new one with --new-key-device"
        );
    }
    let added = membership::add_key(
        &api,
        signer(&profile, own.authenticator())?,
        key.authenticator(),
        label,
    )
    .await;
    own.save()?;
    key.save()?;
    let info = added.map_err(|e| membership_error(e, &profile.origin))?;
    println!(
        "Added key {} (fingerprint {}).",
        info.id,
        fingerprint(&info.public_key.public_key)
    );
    Ok(())
}

/// `tessera keys revoke`: the revocation is signed with this device's key.
pub async fn revoke_key(settings: &Settings, id: &str) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let mut key = enrolled_key(settings, &profile)?;
    let revoked =
        membership::revoke_key(&api, signer(&profile, key.authenticator())?, id, now_secs()).await;
    key.save()?;
    revoked.map_err(|e| membership_error(e, &profile.origin))?;
    println!(
        "Revoked key {id}, signed with your key: it no longer logs in, and your devices (or an \
         admin's) remove the devices it certified from the circle's group."
    );
    Ok(())
}

/// The member as their device signs: the profile's circle, member and root, and `key`.
fn signer<'k>(profile: &Profile, key: &'k mut dyn Authenticator) -> Result<Signer<'k>> {
    let root = profile.root.context(
        "this device knows no circle root yet: run `tessera chat` once, so that it finds it from \
         your key (a device made by `tessera login`), or join again with a new invitation link (a \
         device that joined before invitations were signed)",
    )?;
    Ok(Signer {
        circle: profile.circle,
        member: profile.member,
        root,
        key,
    })
}

/// Explains a failed membership step in the member's terms.
fn membership_error(error: MembershipError, origin: &str) -> anyhow::Error {
    match error {
        MembershipError::Api(e) => explain(e, origin),
        e => anyhow!("{e}"),
    }
}

/// Unix seconds now.
fn now_secs() -> i64 {
    tessera_engine::unix_ms(std::time::SystemTime::now()) / 1000
}

/// `tessera admin invite` and `tessera admin recover`: an invitation signed with this device's
/// key, for a newcomer (`recovers` none) or for a member who lost their keys.
pub async fn invite(
    settings: &Settings,
    admin: bool,
    recovers: Option<Uuid>,
    ttl_secs: u64,
) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let role = if admin { Role::Admin } else { Role::Member };
    let mut key = enrolled_key(settings, &profile)?;
    let issued = membership::invite(
        &api,
        signer(&profile, key.authenticator())?,
        role,
        recovers,
        (ttl_secs, now_secs()),
    )
    .await;
    key.save()?;
    let invitation = issued.map_err(|e| membership_error(e, &profile.origin))?;
    println!("{}", invitation.link);
    let whom = match recovers {
        Some(member) => format!("member {member} to enroll a new key"),
        None => format!("a new {}", role.as_str()),
    };
    eprintln!(
        "Invitation {} for {whom}, valid until {}, signed with your key. The link is shown only \
         now and must be handed over whole (the part after # never reaches the server): \
         privately, `tessera join <link>` or a browser enrolls with it.",
        invitation.created.id,
        date(invitation.created.expires_at)
    );
    Ok(())
}

/// `tessera admin invitations`.
pub async fn list_invitations(settings: &Settings) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let invitations = api
        .invitations()
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    println!("{:<36}  {:<6}  EXPIRES", "ID", "ROLE");
    for invitation in invitations {
        println!(
            "{:<36}  {:<6}  {}",
            invitation.id,
            invitation.role.as_str(),
            date(invitation.expires_at)
        );
    }
    Ok(())
}

/// `tessera admin uninvite`.
pub async fn uninvite(settings: &Settings, id: Uuid) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    api.revoke_invitation(id)
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    println!("Revoked invitation {id}.");
    Ok(())
}

/// `tessera admin revoke` and `tessera admin promote`.
pub async fn decide(settings: &Settings, decision: Decision, member: Uuid) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let mut key = enrolled_key(settings, &profile)?;
    let decided = membership::decide(
        &api,
        signer(&profile, key.authenticator())?,
        (decision, member),
        now_secs(),
    )
    .await;
    key.save()?;
    decided.map_err(|e| membership_error(e, &profile.origin))?;
    match decision {
        Decision::Revoke => println!(
            "Revoked member {member}, signed with your key: their sessions ended; the next admin \
             device online removes their devices from the circle's group."
        ),
        Decision::Promote => println!(
            "Member {member} is now an admin, signed with your key: the circle's devices accept \
             their invitations and decisions from their next look at the directory."
        ),
        // `membership::decide` refuses it: a key's revocation goes through `keys revoke`.
        Decision::RevokeKey => {}
    }
    Ok(())
}
