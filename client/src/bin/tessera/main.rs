//! `tessera`: a member's command-line device — enroll a key from an invitation, log in, and talk
//! to the circle peer to peer, MLS-encrypted.

mod account;
mod circle;
mod files;
mod keys;
mod messages;
mod settings;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tessera_engine::changes::Change;
use tessera_engine::decision::Decision;
use url::Url;

use crate::messages::Outgoing;
use crate::settings::{Given, Settings};

/// A member's device of a Tessera circle.
///
/// Settings come from a flag, else its environment variable, else the config file
/// (`$XDG_CONFIG_HOME/tessera/config.toml`, keys `server`, `data_dir`, `key_file`, `security_key`,
/// `key_device`, `bind`, `relay_only`).
///
/// The member's key is the USB security key plugged in (a FIDO2 key such as a YubiKey, PIN and
/// touch) unless a software key file is given or the device joined with one.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, propagate_version = true)]
struct Cli {
    /// The server's origin (`https://tessera.example.org`); `join` takes it from the invitation.
    #[arg(long, env = "TESSERA_SERVER", global = true)]
    server: Option<Url>,
    /// Where this device keeps its state [default: $XDG_DATA_HOME/tessera].
    #[arg(long, env = "TESSERA_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The config file [default: $XDG_CONFIG_HOME/tessera/config.toml].
    #[arg(long, env = "TESSERA_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The software key file to use (see `tessera soft-key new`) instead of a security key.
    #[arg(long, env = "TESSERA_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// Use the USB security key even where a key file is set or the device joined with one.
    #[arg(long, env = "TESSERA_SECURITY_KEY", global = true)]
    security_key: bool,
    /// The security key to use when several are plugged in (its /dev/hidrawN path).
    #[arg(long, env = "TESSERA_KEY_DEVICE", global = true)]
    key_device: Option<String>,
    /// Read the security key's PIN from this file descriptor (one line), for scripts; without
    /// it the PIN is asked on the terminal.
    #[arg(long, global = true)]
    pin_fd: Option<i32>,
    /// The local address peer links use [default: the one that routes to the server].
    #[arg(long, env = "TESSERA_BIND", global = true)]
    bind: Option<IpAddr>,
    /// Offer peers only an address relayed by the server's TURN server, never this device's own
    /// (needs a server configured with a TURN server).
    #[arg(long, env = "TESSERA_RELAY_ONLY", global = true)]
    relay_only: bool,
    /// The most of the circle's messages this device keeps to carry to devices that lack them;
    /// the oldest go first [default: 10000].
    #[arg(long, env = "TESSERA_CARRY_MESSAGES", global = true, value_name = "N")]
    carry_messages: Option<usize>,
    /// The most MiB of them kept [default: 64].
    #[arg(long, env = "TESSERA_CARRY_MIB", global = true, value_name = "MIB")]
    carry_mib: Option<usize>,
    /// How many days of them are kept, by their senders' clocks [default: 30].
    #[arg(long, env = "TESSERA_CARRY_DAYS", global = true, value_name = "DAYS")]
    carry_days: Option<u32>,
    /// The largest file this device sends or takes, in MiB [default: 2048].
    #[arg(long, env = "TESSERA_MAX_FILE_MIB", global = true, value_name = "MIB")]
    max_file_mib: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Software key files (for bots and tests; weaker than a hardware key). Not to be confused
    /// with `keys`, the keys enrolled on the server.
    #[command(name = "soft-key", alias = "key")]
    SoftKey {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Enroll the key with an invitation link and log in; this directory becomes a device.
    Join {
        /// The invitation link an admin gave you.
        invitation: String,
        /// Your display name, shared inside the circle's encrypted group only.
        #[arg(long)]
        name: Option<String>,
        /// A label for the key on the server (e.g. "laptop key").
        #[arg(long)]
        label: Option<String>,
    },
    /// Log in again with the key (after `logout`; an expired session is renewed with the device
    /// key by itself). In a data directory with no device yet, with `--server`: log in with your
    /// enrolled key and make the directory a new device of yours (your devices hand it your
    /// history).
    Login,
    /// End this device's session on the server; its keys and history stay.
    Logout,
    /// List the circle's members: display names, online devices, key fingerprints.
    Members,
    /// Chat interactively: type to send; `/quit`, `/members`, `/name NAME`, `/status`, `/help`.
    Chat {
        /// Print one JSON object per line instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Keep this device online without a terminal (an always-on member device, e.g. under
    /// systemd): it links with the circle's devices and adds newcomers to the group when no one
    /// else is online; logs one JSON line per event, without message texts or names; renews an
    /// ended session with its device key (or logs in again with its key file when that is
    /// refused); stops on SIGTERM or Ctrl-C.
    Serve,
    /// Send one message and wait (up to --wait seconds) until the online devices have it.
    Send {
        /// The message.
        text: String,
        /// How long to wait for delivery, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Answer a message (quoted where it is shown) and wait, as `send` does.
    Reply {
        /// The message's id, or the start of it (as `history` shows it).
        id: String,
        /// The answer.
        text: String,
        /// How long to wait for delivery, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// React to a message with an emoji (`--remove` takes the reaction back).
    React {
        /// The message's id, or the start of it.
        id: String,
        /// The emoji.
        emoji: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
        /// How long to wait for delivery, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Edit one of your messages for everyone.
    Edit {
        /// The message's id, or the start of it.
        id: String,
        /// Its new text.
        text: String,
        /// How long to wait for delivery, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Delete one of your messages for everyone (devices that already showed it forget its text;
    /// what someone copied or keeps on a modified client cannot be taken back).
    Delete {
        /// The message's id, or the start of it.
        id: String,
        /// How long to wait for delivery, in seconds.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Share a file with the circle, end-to-end encrypted and peer to peer: a copy is kept in the
    /// data directory, and the devices online get it now (progress is shown); the others get it
    /// from this device or any that holds it when they are online together.
    SendFile {
        /// The file.
        path: PathBuf,
        /// How long to wait for the online devices to have it, in seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// List the files shared with the circle that this device knows of.
    Files,
    /// Save a file shared with the circle (waiting for it to arrive, with progress, if it is on
    /// its way).
    Get {
        /// The file's id (or the start of it, as `files` shows it).
        id: String,
        /// Where to save it [default: its name, in the current directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long to wait for it to arrive, in seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Delete a file from this device (its message stays in the history).
    DeleteFile {
        /// The file's id (or the start of it).
        id: String,
    },
    /// Set your display name (shared inside the circle's group only).
    Name {
        /// The name.
        name: String,
    },
    /// Show the messages stored on this device.
    History {
        /// How many of the latest messages.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Search the messages stored on this device for every word given (in any case and order).
    Search {
        /// The words.
        words: Vec<String>,
        /// How many of the latest messages found.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Your keys on the server: list, add, revoke.
    Keys {
        #[command(subcommand)]
        action: Option<KeysAction>,
    },
    /// Circle administration (admins only): invitations and revoking members.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Issue an invitation link; it is shown once.
    Invite {
        /// Make the newcomer an admin.
        #[arg(long)]
        admin: bool,
        /// How long the link works, in hours.
        #[arg(long, default_value_t = 72)]
        hours: u64,
    },
    /// Issue a recovery link for a member who lost their keys: it enrolls a new key for them.
    Recover {
        /// The member's id, as `tessera members` lists it.
        member: uuid::Uuid,
        /// How long the link works, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// List the pending invitations.
    Invitations,
    /// Revoke a pending invitation.
    Uninvite {
        /// The invitation's id.
        id: uuid::Uuid,
    },
    /// Revoke a member: their sessions end and the circle's devices remove theirs from the group.
    Revoke {
        /// The member's id, as `tessera members` lists it.
        member: uuid::Uuid,
    },
    /// Make a member an admin, with a promotion your key signs.
    Promote {
        /// The member's id, as `tessera members` lists it.
        member: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
enum KeyAction {
    /// Create a software key file (mode 0600). Anyone who copies it can act as you: prefer a
    /// hardware key for people.
    New {
        /// Where to write it.
        #[arg(long)]
        file: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// List your keys (the default).
    List,
    /// Register another key for your membership.
    Add {
        /// The new key's file (made with `tessera soft-key new`); without it, the new key is a
        /// security key.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The new security key's /dev/hidrawN path, when several are plugged in.
        #[arg(long)]
        new_key_device: Option<String>,
        /// A label for it.
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke one of your keys (not the last one).
    Revoke {
        /// The key's id, as `tessera keys` lists it (base64url: it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // The standard-input reader of `chat` blocks in a thread of its own: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(Given {
        server: cli.server,
        data_dir: cli.data_dir,
        config: cli.config,
        key_file: cli.key_file,
        security_key: cli.security_key,
        key_device: cli.key_device,
        pin_fd: cli.pin_fd,
        bind: cli.bind,
        relay_only: cli.relay_only,
        carry_messages: cli.carry_messages,
        carry_mib: cli.carry_mib,
        carry_days: cli.carry_days,
        max_file_mib: cli.max_file_mib,
    })?;
    match cli.command {
        Command::SoftKey {
            action: KeyAction::New { file, force },
        } => account::new_key(&file, force),
        Command::Join {
            invitation,
            name,
            label,
        } => account::join(&settings, &invitation, name.as_deref(), label.as_deref()).await,
        Command::Login => account::login(&settings).await,
        Command::Logout => account::logout(&settings).await,
        Command::Keys { action } => match action.unwrap_or(KeysAction::List) {
            KeysAction::List => account::list_keys(&settings).await,
            KeysAction::Add {
                file,
                new_key_device,
                label,
            } => {
                account::add_key(&settings, file.as_deref(), new_key_device, label.as_deref()).await
            }
            KeysAction::Revoke { id } => account::revoke_key(&settings, &id).await,
        },
        Command::Admin { action } => match action {
            AdminAction::Invite { admin, hours } => {
                account::invite(&settings, admin, None, hours.saturating_mul(3600)).await
            }
            AdminAction::Recover { member, hours } => {
                account::invite(&settings, false, Some(member), hours.saturating_mul(3600)).await
            }
            AdminAction::Invitations => account::list_invitations(&settings).await,
            AdminAction::Uninvite { id } => account::uninvite(&settings, id).await,
            AdminAction::Revoke { member } => {
                account::decide(&settings, Decision::Revoke, member).await
            }
            AdminAction::Promote { member } => {
                account::decide(&settings, Decision::Promote, member).await
            }
        },
        Command::Members => circle::members(&settings).await,
        Command::Chat { json } => circle::chat(&settings, json).await,
        Command::Serve => circle::serve(&settings).await,
        Command::Send { text, wait } => {
            let text = Outgoing::Text {
                text,
                reply_to: None,
            };
            circle::send(&settings, text, Duration::from_secs(wait)).await
        }
        Command::Reply { id, text, wait } => {
            let reply = Outgoing::Text {
                text,
                reply_to: Some(id),
            };
            circle::send(&settings, reply, Duration::from_secs(wait)).await
        }
        Command::React {
            id,
            emoji,
            remove,
            wait,
        } => {
            let change = if remove {
                Change::Unreact { emoji }
            } else {
                Change::React { emoji }
            };
            let react = Outgoing::Change { target: id, change };
            circle::send(&settings, react, Duration::from_secs(wait)).await
        }
        Command::Edit { id, text, wait } => {
            let edit = Outgoing::Change {
                target: id,
                change: Change::Edit { text },
            };
            circle::send(&settings, edit, Duration::from_secs(wait)).await
        }
        Command::Delete { id, wait } => {
            let delete = Outgoing::Change {
                target: id,
                change: Change::Delete,
            };
            circle::send(&settings, delete, Duration::from_secs(wait)).await
        }
        Command::Name { name } => circle::set_name(&settings, &name).await,
        Command::SendFile { path, wait } => {
            files::send_file(&settings, &path, Duration::from_secs(wait)).await
        }
        Command::Files => files::list(&settings).await,
        Command::Get { id, out, wait } => {
            files::get(&settings, &id, out, Duration::from_secs(wait)).await
        }
        Command::DeleteFile { id } => files::delete(&settings, &id).await,
        Command::History { limit } => circle::history(&settings, limit).await,
        Command::Search { words, limit } => {
            circle::search(&settings, &words.join(" "), limit).await
        }
    }
}
