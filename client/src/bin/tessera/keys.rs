//! The member's key for one command: a software key file, or the security key plugged in (asked
//! which when there are several), its PIN read from the terminal without echo or from a file
//! descriptor for scripts.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use tessera_client::authenticator::{Authenticator, AuthenticatorError, SoftKey};
use tessera_client::security_key::{HidKey, PluggedKey, Prompt, SecurityKey, plugged_keys};

use crate::settings::Settings;

/// A key the command uses.
pub enum MemberKey {
    /// A software key file, saved after use (its counter moves).
    File { key: SoftKey, path: PathBuf },
    /// The security key plugged in.
    Security {
        key: Box<SecurityKey<HidKey, TerminalPrompt>>,
        /// Its hidraw path.
        path: String,
    },
}

impl MemberKey {
    /// The key for ceremonies.
    pub fn authenticator(&mut self) -> &mut dyn Authenticator {
        match self {
            MemberKey::File { key, .. } => key,
            MemberKey::Security { key, .. } => key.as_mut(),
        }
    }

    /// Keeps what the use changed (a key file's counter and new credential).
    pub fn save(&self) -> Result<()> {
        match self {
            MemberKey::File { key, path } => save_key(key, path),
            MemberKey::Security { .. } => Ok(()),
        }
    }

    /// The key file, for the profile; `None` for a security key.
    pub fn file(&self) -> Option<&Path> {
        match self {
            MemberKey::File { path, .. } => Some(path),
            MemberKey::Security { .. } => None,
        }
    }
}

/// Which key a command uses: the security key when asked for (`--security-key`) or when no key
/// file is given (by the settings, else the one the device joined with).
pub fn member_key(settings: &Settings, joined_with: Option<&str>, role: &str) -> Result<MemberKey> {
    let file = settings
        .key_file
        .clone()
        .or_else(|| joined_with.map(PathBuf::from));
    match file {
        Some(path) if !settings.security_key => Ok(MemberKey::File {
            key: load_key(&path)?,
            path,
        }),
        _ => security_key(settings, role),
    }
}

/// The security key plugged in (the one `--key-device` names, else the only one, else the one the
/// member picks).
pub fn security_key(settings: &Settings, role: &str) -> Result<MemberKey> {
    let keys = plugged_keys()?;
    let path = match (&settings.key_device, keys.as_slice()) {
        (Some(path), _) => path.clone(),
        (None, []) => return Err(AuthenticatorError::NoSecurityKey.into()),
        (None, [only]) => only.path.clone(),
        (None, several) => choose(several, role)?,
    };
    let key = HidKey::open(&path)?;
    let prompt = TerminalPrompt {
        pin_fd: settings.pin_fd,
        read: false,
    };
    Ok(MemberKey::Security {
        key: Box::new(SecurityKey::new(key, prompt, None)),
        path,
    })
}

/// Asks which of several plugged keys to use.
fn choose(keys: &[PluggedKey], role: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "{} security keys are plugged in: name {role} with --key-device ({})",
            keys.len(),
            keys.iter()
                .map(|k| k.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    eprintln!("Several security keys are plugged in. Which one is {role}?");
    for (i, key) in keys.iter().enumerate() {
        eprintln!("  {}) {} ({})", i + 1, key.product, key.path);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let picked: usize = line
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=keys.len()).contains(n))
        .with_context(|| format!("answer with a number from 1 to {}", keys.len()))?;
    Ok(keys[picked - 1].path.clone())
}

/// The PIN from the terminal (no echo), or one line from `--pin-fd`.
pub struct TerminalPrompt {
    pin_fd: Option<i32>,
    /// Whether the file descriptor was read already (a script gives one PIN).
    read: bool,
}

impl Prompt for TerminalPrompt {
    fn pin(&mut self, wrong: Option<u32>) -> std::io::Result<String> {
        if let Some(fd) = self.pin_fd {
            if std::mem::replace(&mut self.read, true) {
                return Err(std::io::Error::other("the PIN given on --pin-fd was wrong"));
            }
            return read_pin_fd(fd);
        }
        if let Some(retries) = wrong {
            eprintln!("Wrong PIN: {retries} tries left before the key blocks its PIN.");
        }
        if !std::io::stdin().is_terminal() {
            return Err(std::io::Error::other(
                "no terminal to ask for the security key's PIN: pass it on --pin-fd",
            ));
        }
        rpassword::prompt_password("PIN of your security key: ")
    }
}

/// One line from an inherited file descriptor (`--pin-fd 3` with `3<pin.txt` or a pipe), read a
/// byte at a time so that the next key's PIN stays for the next line.
fn read_pin_fd(fd: i32) -> std::io::Result<String> {
    use std::io::Read as _;
    let path = format!("/dev/fd/{fd}");
    let mut file = std::fs::File::open(&path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot read the PIN from {path}: {e}"))
    })?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    while file.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let pin = String::from_utf8(line)
        .map_err(|_| std::io::Error::other(format!("{path} gave a PIN that is not UTF-8")))?;
    let pin = pin.trim_end_matches('\r').to_owned();
    if pin.is_empty() {
        return Err(std::io::Error::other(format!("{path} gave no PIN")));
    }
    Ok(pin)
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

/// Writes a software key file.
pub fn save_key(key: &SoftKey, path: &Path) -> Result<()> {
    key.save(path)
        .with_context(|| format!("cannot write the key file {}", path.display()))
}
