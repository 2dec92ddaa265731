//! Where the CLI's settings come from — a flag, else its environment variable, else the config
//! file, else the default — and the data directory with its one-process lock.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use tessera_engine::EngineConfig;
use tessera_engine::carry::CarryConfig;
use tessera_engine::files::DEFAULT_MAX_BYTES;
use url::Url;

/// The config file (TOML); every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server: Option<Url>,
    data_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
    security_key: Option<bool>,
    key_device: Option<String>,
    bind: Option<IpAddr>,
    relay_only: Option<bool>,
    carry_messages: Option<usize>,
    carry_mib: Option<usize>,
    carry_days: Option<u32>,
    max_file_mib: Option<u64>,
}

/// The settings as resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: Option<Url>,
    pub data_dir: PathBuf,
    pub key_file: Option<PathBuf>,
    /// Use the security key even where a key file is known.
    pub security_key: bool,
    /// The security key's hidraw path, when several are plugged in.
    pub key_device: Option<String>,
    /// A file descriptor to read the security key's PIN from (scripts).
    pub pin_fd: Option<i32>,
    pub bind: Option<IpAddr>,
    pub relay_only: bool,
    /// How much the device keeps of the circle's messages to carry to other devices.
    pub carry: CarryConfig,
    /// The largest file the device sends or takes, in bytes.
    pub max_file_bytes: u64,
}

/// What the flags and the environment gave (clap merges those two).
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub server: Option<Url>,
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub security_key: bool,
    pub key_device: Option<String>,
    pub pin_fd: Option<i32>,
    pub bind: Option<IpAddr>,
    pub relay_only: bool,
    pub carry_messages: Option<usize>,
    pub carry_mib: Option<usize>,
    pub carry_days: Option<u32>,
    pub max_file_mib: Option<u64>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `$XDG_<kind>_HOME/tessera`, else `$HOME/<fallback>/tessera`.
fn xdg(variable: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(variable)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(fallback)))
        .map(|base| base.join("tessera"))
}

impl Settings {
    /// Resolves the settings; an explicitly named config file must exist.
    pub fn resolve(given: Given) -> Result<Settings> {
        let (path, explicit) = match given.config {
            Some(path) => (Some(path), true),
            None => (
                xdg("XDG_CONFIG_HOME", ".config").map(|d| d.join("config.toml")),
                false,
            ),
        };
        let file = match path {
            Some(path) if explicit || path.exists() => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("the config file {} is not valid", path.display()))?
            }
            _ => ConfigFile::default(),
        };
        let data_dir = given
            .data_dir
            .or(file.data_dir)
            .or_else(|| xdg("XDG_DATA_HOME", ".local/share"))
            .context("no data directory: set --data-dir, TESSERA_DATA_DIR or HOME")?;
        let mut carry = CarryConfig::default();
        if let Some(messages) = given.carry_messages.or(file.carry_messages) {
            carry.max_messages = messages;
        }
        if let Some(mib) = given.carry_mib.or(file.carry_mib) {
            carry.max_bytes = mib
                .checked_mul(1024 * 1024)
                .context("carry_mib is too large")?;
        }
        if let Some(days) = given.carry_days.or(file.carry_days) {
            carry.max_age_ms = i64::from(days) * 24 * 3600 * 1000;
        }
        let max_file_bytes = match given.max_file_mib.or(file.max_file_mib) {
            Some(mib) => mib
                .checked_mul(1024 * 1024)
                .context("max_file_mib is too large")?,
            None => DEFAULT_MAX_BYTES,
        };
        Ok(Settings {
            max_file_bytes,
            server: given.server.or(file.server),
            data_dir,
            key_file: given.key_file.or(file.key_file),
            security_key: given.security_key || file.security_key.unwrap_or(false),
            key_device: given.key_device.or(file.key_device),
            pin_fd: given.pin_fd,
            bind: given.bind.or(file.bind),
            relay_only: given.relay_only || file.relay_only.unwrap_or(false),
            carry,
        })
    }

    /// Applies what the member set to the engine's configuration: how much it carries, the
    /// largest file.
    pub fn tune(&self, config: &mut EngineConfig) {
        config.carry = self.carry.clone();
        config.files.max_bytes = self.max_file_bytes;
    }

    /// The local store's path.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("device.db")
    }

    /// Creates the data directory (0700) if needed and takes its lock: one process per device,
    /// since two would fork the device's MLS state.
    pub fn lock(&self) -> Result<DataDirLock> {
        create_private_dir(&self.data_dir)?;
        let path = self.data_dir.join("device.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another tessera process is using this device ({}): stop it first, or use \
                 another --data-dir",
                self.data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// Held while the process uses the device; released when dropped (or the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .with_context(|| format!("cannot create the data directory {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(given: Given, file: &str) -> Result<Settings> {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, file).expect("write the config file");
        Settings::resolve(Given {
            config: Some(config),
            data_dir: Some(dir.path().join("data")),
            ..given
        })
    }

    #[test]
    fn carrying_limits_come_from_the_flag_else_the_config_file_else_the_default() {
        let default = CarryConfig::default();
        let none = resolve(Given::default(), "").expect("settings");
        assert_eq!(
            (none.carry.max_messages, none.carry.max_bytes),
            (default.max_messages, default.max_bytes)
        );
        let file = "carry_messages = 50000\ncarry_mib = 256\ncarry_days = 90\n";
        let from_file = resolve(Given::default(), file).expect("settings");
        assert_eq!(from_file.carry.max_messages, 50_000);
        assert_eq!(from_file.carry.max_bytes, 256 * 1024 * 1024);
        assert_eq!(from_file.carry.max_age_ms, 90 * 24 * 3600 * 1000);
        let flagged = resolve(
            Given {
                carry_messages: Some(10),
                ..Given::default()
            },
            file,
        )
        .expect("settings");
        assert_eq!(flagged.carry.max_messages, 10, "the flag wins");
        assert_eq!(flagged.carry.max_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn carrying_limits_out_of_range_are_refused_with_the_setting_named() {
        let too_large = resolve(
            Given {
                carry_mib: Some(usize::MAX),
                ..Given::default()
            },
            "",
        )
        .expect_err("refused");
        assert!(too_large.to_string().contains("carry_mib"), "{too_large}");
        let negative = resolve(Given::default(), "carry_days = -1\n").expect_err("refused");
        assert!(
            format!("{negative:#}").contains("carry_days"),
            "{negative:#}"
        );
    }
}
