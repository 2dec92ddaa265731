//! The member's account on the server: software key files, enrolling with an invitation, logging
//! in and out, and the member's own keys.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use tessera_client::api::{ApiClient, ApiClientError, invitation_token};
use tessera_client::authenticator::{AuthenticatorError, SoftKey};
use tessera_client::identity::{certify, key_fingerprint};
use tessera_client::store::{DeviceStore, Profile};
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

/// Loads the software key file, with the member's way out when it is missing.
pub fn load_key(path: &Path) -> Result<SoftKey> {
    match SoftKey::load(path) {
        Ok(key) => Ok(key),
        Err(AuthenticatorError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no key: {} does not exist; create a software key with `tessera soft-key new --file {}` \
             (a hardware key is stronger: anyone who copies a key file can act as you)",
            path.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot use the key file {}", path.display())),
    }
}

fn save_key(key: &SoftKey, path: &Path) -> Result<()> {
    key.save(path)
        .with_context(|| format!("cannot write the key file {}", path.display()))
}

/// The key file named by the settings.
fn key_path(settings: &Settings) -> Result<&Path> {
    settings.key_file.as_deref().context(
        "no key given: pass --key-file (or TESSERA_KEY_FILE) naming a software key made with \
         `tessera soft-key new`",
    )
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

/// This device's profile and its logged-in API client, for calls that leave the engine alone.
async fn on_server(settings: &Settings) -> Result<(Profile, ApiClient)> {
    let opened = open_profile(settings).await?;
    let api = logged_in(&opened.profile)?;
    Ok((opened.profile, api))
}

/// `tessera join`.
pub async fn join(
    settings: &Settings,
    invitation: &str,
    name: Option<&str>,
    label: Option<&str>,
) -> Result<()> {
    let link = Url::parse(invitation).context("the invitation is not a link")?;
    let token = invitation_token(invitation).map_err(|e| anyhow!("{e}"))?;
    let origin = origin_of(&link);
    if let Some(server) = &settings.server
        && origin_of(server) != origin
    {
        bail!(
            "the invitation is for {origin}, but the server is set to {}",
            origin_of(server)
        );
    }
    let key_file = key_path(settings)?;
    let mut key = load_key(key_file)?;
    if !key.is_blank() {
        bail!(
            "{} already holds a credential (for {}): a software key file enrolls once; create \
             another with `tessera soft-key new`",
            key_file.display(),
            key.rp_id()
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
    let enrolled = api.enroll_key(&token, label, &mut key).await;
    // The credential exists on the key once the key answered: keep it even if the server refused.
    if !key.is_blank() {
        save_key(&key, key_file)?;
    }
    let granted = enrolled.map_err(|e| match e.code() {
        Some(ErrorCode::InvitationUnusable) => anyhow!(
            "the invitation cannot be used (expired, used or revoked): ask an admin for a new one"
        ),
        _ => explain(e, &origin),
    })?;

    let device = Uuid::new_v4();
    let device_key = DeviceKey::generate()?;
    let rp_id = key.rp_id().to_owned();
    let certificate = certify(&rp_id, granted.member, device, device_key.public(), |r| {
        key.sign_in(r, &origin)
    })
    .context("the key refused to certify this device")?;
    save_key(&key, key_file)?;
    let config = EngineConfig::new(origin.clone(), key.rp_id());
    let mut engine = Engine::new(config, granted.member, device, device_key, certificate)?;
    if let Some(name) = name {
        engine.set_display_name(Instant::now(), name)?;
    }
    store.save_offline(&mut engine).await?;
    let key_file = std::path::absolute(key_file).unwrap_or_else(|_| key_file.to_path_buf());
    store
        .save_profile(&Profile {
            origin: origin.clone(),
            rp_id: key.rp_id().to_owned(),
            member: granted.member,
            device,
            circle: granted.circle,
            role: granted.role,
            session: Some(granted.session),
            key_file: Some(key_file.display().to_string()),
        })
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

/// The key file of an opened device: the one given, else the one it joined with.
fn device_key_file(settings: &Settings, profile: &Profile) -> Result<std::path::PathBuf> {
    settings
        .key_file
        .clone()
        .or_else(|| profile.key_file.as_ref().map(std::path::PathBuf::from))
        .context("no key given: pass --key-file")
}

/// `tessera login`.
pub async fn login(settings: &Settings) -> Result<()> {
    let Opened {
        _lock,
        store,
        mut profile,
    } = open(settings).await?;
    let key_file = device_key_file(settings, &profile)?;
    let mut key = load_key(&key_file)?;
    let mut api = api_client(&profile.origin)?;
    let granted = api.login(&mut key).await;
    save_key(&key, &key_file)?;
    let granted = granted.map_err(|e| explain(e, &profile.origin))?;
    if granted.member != profile.member {
        bail!(
            "this key belongs to another member ({}) than this device's ({})",
            granted.member,
            profile.member
        );
    }
    profile.session = Some(granted.session);
    profile.role = granted.role;
    store.save_profile(&profile).await?;
    println!(
        "Logged in to {} as member {}.",
        profile.origin, profile.member
    );
    Ok(())
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
pub async fn add_key(settings: &Settings, file: &Path, label: Option<&str>) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let mut key = load_key(file)?;
    if !key.is_blank() {
        bail!(
            "{} already holds a credential: create a new key with `tessera soft-key new`",
            file.display()
        );
    }
    let added = api.add_key(label, &mut key).await;
    if !key.is_blank() {
        save_key(&key, file)?;
    }
    let info = added.map_err(|e| explain(e, &profile.origin))?;
    println!(
        "Added key {} (fingerprint {}).",
        info.id,
        fingerprint(&info.public_key.public_key)
    );
    Ok(())
}

/// `tessera keys revoke`.
pub async fn revoke_key(settings: &Settings, id: &str) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    api.delete_passkey(id)
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    println!("Revoked key {id}.");
    Ok(())
}

/// `tessera admin invite`.
pub async fn invite(settings: &Settings, admin: bool, ttl_secs: u64) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    let role = if admin { Role::Admin } else { Role::Member };
    let invitation = api
        .create_invitation(role, ttl_secs)
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    println!("{}", invitation.url);
    eprintln!(
        "Invitation {} for a new {}, valid until {}. The link is shown only now: hand it over \
         privately; `tessera join <link>` or a browser enrolls with it.",
        invitation.id,
        role.as_str(),
        date(invitation.expires_at)
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

/// `tessera admin revoke`.
pub async fn revoke_member(settings: &Settings, member: Uuid) -> Result<()> {
    let (profile, api) = on_server(settings).await?;
    api.revoke_member(member)
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    println!(
        "Revoked member {member}: their sessions ended; the next admin device online removes \
         their devices from the circle's group."
    );
    Ok(())
}
