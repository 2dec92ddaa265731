//! Being a device of the circle: starting the engine's driver, chatting, sending, the member list,
//! display names and the stored history.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tessera_client::device::{Connection, DeviceHandle, Status, Stopped, Update};
use tessera_client::files::FileDir;
use tessera_client::signal::{Backoff, SignalClient, SignalEvent};
use tessera_client::store::HistoryEntry;
use tessera_client::trust::{TrustError, UsedInvitations, distrust_all, verify_directory};
use tessera_engine::changes::ShownMessage;
use tessera_engine::safety::safety_words;
use tessera_engine::search::{Query, RESULTS as SEARCH_RESULTS};
use tessera_engine::{ChatMessage, Event, StopReason};
use tessera_wire::Base64Url;
use tessera_wire::signal::ServerFrame;
use tokio::io::AsyncBufReadExt as _;
use url::Url;
use uuid::Uuid;

use crate::account::{self, Opened, explain, fingerprint};
use crate::messages::Outgoing;
use crate::settings::Settings;

/// The local address that routes to the server: the host candidate peers are offered.
async fn route_to(origin: &str) -> Result<IpAddr> {
    let url = Url::parse(origin)?;
    let host = url.host_str().context("the server URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    let server = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let unspecified: IpAddr = if server.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let probe = std::net::UdpSocket::bind((unspecified, 0))?;
    probe
        .connect(server)
        .with_context(|| format!("no route to {server}: pass --bind"))?;
    Ok(probe.local_addr()?.ip())
}

/// This device, running.
pub(crate) struct Running {
    pub(crate) opened: Opened,
    pub(crate) device: DeviceHandle,
}

pub(crate) async fn start(settings: &Settings) -> Result<Running> {
    let mut opened = account::open(settings).await?;
    account::remember_root(&mut opened).await?;
    let api = account::session(&mut opened).await?;
    let engine = account::restore(&opened.store, &opened.profile, Some(settings)).await?;
    let bind = match settings.bind {
        Some(bind) => bind,
        None => route_to(&opened.profile.origin).await?,
    };
    let device = DeviceHandle::start(
        engine,
        opened.store.clone(),
        FileDir::in_data_dir(&settings.data_dir),
        Connection {
            api,
            bind,
            backoff: Backoff::default(),
            relay_only: settings.relay_only,
        },
    )
    .await?;
    Ok(Running { opened, device })
}

/// Why the device stopped, as an error for the member when it was not asked to.
pub(crate) async fn stopped(device: DeviceHandle) -> Result<()> {
    why_stopped(device.stop().await?)
}

fn why_stopped(stopped: Stopped) -> Result<()> {
    match stopped {
        Stopped::Requested => Ok(()),
        Stopped::By(StopReason::Revoked) => bail!("your membership of this circle was revoked"),
        Stopped::By(StopReason::SessionEnded) => bail!(
            "this device's session ended and its key could not renew it (the hardware key that \
             certified this device was removed from your account): run `tessera login` to sign in \
             again"
        ),
        Stopped::By(StopReason::Removed) => {
            bail!("this device was removed from the circle's group: it receives nothing more")
        }
        Stopped::By(StopReason::Replaced) => {
            bail!("another process connected as this device; this one stopped")
        }
    }
}

/// A name for a member: the display name it shared in the group, else the start of its id.
pub(crate) fn name_of(names: &BTreeMap<Uuid, String>, member: Uuid) -> String {
    names.get(&member).cloned().unwrap_or_else(|| {
        let id = member.simple().to_string();
        format!("member-{}", &id[..8])
    })
}

/// A time in milliseconds since the Unix epoch, as local `HH:MM` (with the date if not today).
fn clock(ms: i64) -> String {
    let zone = jiff::tz::TimeZone::system();
    let Ok(at) = jiff::Timestamp::from_millisecond(ms) else {
        return "??:??".into();
    };
    let at = at.to_zoned(zone.clone());
    let today = jiff::Timestamp::now().to_zoned(zone).date();
    if at.date() == today {
        at.strftime("%H:%M").to_string()
    } else {
        at.strftime("%Y-%m-%d %H:%M").to_string()
    }
}

fn message_line(message: &ChatMessage, names: &BTreeMap<Uuid, String>) -> String {
    crate::messages::line(message, names, &clock(message.sent_at))
}

fn message_json(message: &ChatMessage, outgoing: bool, names: &BTreeMap<Uuid, String>) -> String {
    json!({
        "event": "message",
        "id": message.id,
        "member": message.member,
        "device": message.device,
        "name": names.get(&message.member),
        "text": message.text,
        "file": message.file,
        "reply_to": message.reply_to,
        "sent_at": message.sent_at,
        "outgoing": outgoing,
    })
    .to_string()
}

fn status_json(status: &Status) -> String {
    json!({
        "event": "status",
        "member": status.view.member,
        "device": status.view.device,
        "epoch": status.view.epoch,
        "connected": status.view.connected,
        "group": status.group(),
        "online": status.online(),
        "names": status.view.names,
        "links": status.links(),
        "waiting": status.waiting(),
        "relayed": status.relayed,
        "safety": status.view.safety,
        "missing": status.view.missing,
        "carrying": status.view.carrying,
        "dropped": status.view.dropped,
    })
    .to_string()
}

/// One update as a JSON line (`--json`).
fn update_json(update: &Update, names: &BTreeMap<Uuid, String>) -> Option<String> {
    let line = match update {
        Update::Engine(Event::Message { message, outgoing }) => {
            return Some(message_json(message, *outgoing, names));
        }
        Update::Engine(event) => serde_json::to_value(event).ok()?,
        Update::Connected => json!({"event": "connected"}),
        Update::Disconnected { reason, retry_in } => json!({
            "event": "disconnected", "reason": reason, "retry_in_ms": retry_in.as_millis()
        }),
        Update::LinkUp(device) => json!({"event": "link_up", "device": device}),
        Update::LinkDown(device) => json!({"event": "link_down", "device": device}),
        _ => return None,
    };
    Some(line.to_string())
}

/// One update as text for people; `None` for what is not worth a line.
fn update_text(
    update: &Update,
    names: &BTreeMap<Uuid, String>,
    group: &BTreeMap<Uuid, Uuid>,
) -> Option<String> {
    let device_name = |device: &Uuid| match group.get(device) {
        Some(member) => format!("{}'s device", name_of(names, *member)),
        None => "a device".to_owned(),
    };
    Some(match update {
        Update::Engine(Event::Message {
            message,
            outgoing: false,
        }) => message_line(message, names),
        Update::Engine(Event::MessageChanged { change }) => {
            crate::messages::change_line(change, names)
        }
        Update::Engine(Event::Renamed { from, to, .. }) => {
            format!("* {from} is now known as {to}.")
        }
        Update::Engine(Event::GroupCreated) => {
            "* You created the circle's encrypted group.".to_owned()
        }
        Update::Engine(Event::Joined) => {
            "* This device joined the circle's encrypted group.".to_owned()
        }
        Update::Engine(Event::Stopped {
            reason: StopReason::Removed,
        }) => "* This device was removed from the circle's group: it receives nothing more."
            .to_owned(),
        Update::Engine(Event::Refused { what, reason }) => {
            format!("! Refused a {what}: {reason}")
        }
        Update::Engine(Event::Distrusted {
            own: true,
            key: Some(key),
            reason,
            ..
        }) => format!(
            "!! WARNING: the server lists a key on YOUR ACCOUNT that you never endorsed ({key}): \
             {reason}. It is ignored; if you did not add it, tell an admin."
        ),
        Update::Engine(Event::Distrusted {
            member,
            key,
            reason,
            ..
        }) => format!(
            "! Ignoring what the server lists for {}{}: {reason}",
            name_of(names, *member),
            key.as_ref()
                .map(|k| format!(" (key {k})"))
                .unwrap_or_default()
        ),
        Update::Engine(Event::KeysChanged {
            added,
            removed,
            own: true,
            ..
        }) => format!(
            "!! WARNING: the keys of YOUR ACCOUNT changed ({}). If it was not you, one of your \
             keys is in someone else's hands: tell an admin.",
            key_changes(added, removed)
        ),
        Update::Engine(Event::KeysChanged {
            member,
            added,
            removed,
            ..
        }) => format!(
            "! The keys of {} changed ({}): compare the safety number with them.",
            name_of(names, *member),
            key_changes(added, removed)
        ),
        Update::Engine(Event::ServerError { code }) => format!("! The server refused: {code}"),
        Update::Engine(Event::HistoryProgress {
            received,
            total,
            done: false,
            ..
        }) => format!("* Receiving your history from your other device: {received} of {total}."),
        Update::Engine(Event::HistoryProgress {
            received,
            done: true,
            ..
        }) => format!(
            "* Your history from your other device is here: {received} messages (`tessera history`)."
        ),
        Update::Engine(Event::FileReceived { id, name, size }) => format!(
            "* {name} ({}) is here: /get {} saves it.",
            crate::files::human(*size),
            crate::files::short(*id)
        ),
        Update::Engine(Event::FileFailed { id, reason }) => {
            format!(
                "! File {} was not taken: {reason}",
                crate::files::short(*id)
            )
        }
        Update::Engine(Event::FileSent {
            id,
            device,
            done: true,
            ..
        }) => format!(
            "* {} holds file {} whole.",
            device_name(device),
            crate::files::short(*id)
        ),
        Update::Engine(Event::SessionRenewed) => {
            "* The session had ended; this device renewed it with its key.".to_owned()
        }
        Update::Disconnected { reason, retry_in } => format!(
            "* Lost the server ({reason}); retrying in {} s. Peer links keep working.",
            retry_in.as_secs().max(1)
        ),
        Update::Connected => "* Connected to the server.".to_owned(),
        Update::LinkUp(device) => format!("* Linked to {} (peer to peer).", device_name(device)),
        Update::LinkDown(device) => format!("* Link to {} closed.", device_name(device)),
        _ => return None,
    })
}

/// "added K1, removed K2", for a change of a member's keys.
fn key_changes(added: &[Base64Url], removed: &[Base64Url]) -> String {
    added
        .iter()
        .map(|k| format!("added {k}"))
        .chain(removed.iter().map(|k| format!("removed {k}")))
        .collect::<Vec<_>>()
        .join(", ")
}

const CHAT_HELP: &str = "Type a message and press Enter to send it to the circle.\n\
    /file PATH  share a file with the circle\n\
    /files      the files shared with the circle\n\
    /get ID [PATH]  save a file that is here\n\
    /members  who is in the group and linked\n\
    /reply ID TEXT  answer a message (ids as the lines show them: [12:03 3f2a9c1b])\n\
    /react ID EMOJI, /unreact ID EMOJI  react to a message, or take it back\n\
    /edit ID TEXT, /delete ID  edit or delete one of your messages for everyone\n\
    /search WORDS  the messages on this device that hold every word\n\
    /name N   set your display name\n\
    /status   this device's state (JSON)\n\
    /quit     leave (Ctrl-D too)";

/// `tessera chat`.
pub async fn chat(settings: &Settings, json_lines: bool) -> Result<()> {
    let Running { opened, mut device } = start(settings).await?;
    let mut status = device.status().await.map_err(anyhow::Error::msg)?;
    if !json_lines {
        for entry in opened.store.history(20).await? {
            println!("{}", message_line(&entry.shown.message, &status.view.names));
        }
        println!(
            "* Chatting as {} on {}. /help lists the commands.",
            name_of(&status.view.names, status.view.member),
            opened.profile.origin
        );
        if status.view.epoch.is_none() {
            println!(
                "* This device is not in the circle's group yet: a member's device online adds it."
            );
        }
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut arriving = crate::files::Arriving::default();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                let line = line.trim();
                let (command, args) = line.split_once(' ').map_or((line, ""), |(c, r)| (c, r.trim()));
                if let Some(outgoing) = Outgoing::of_chat(command, args) {
                    let sent = match outgoing {
                        Ok(outgoing) => outgoing.send(&device, &opened.store).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = sent {
                        eprintln!("! Not sent: {e:#}");
                    }
                    continue;
                }
                match (command, args) {
                    ("", _) => {}
                    ("/quit", _) => break,
                    ("/help", _) => println!("{CHAT_HELP}"),
                    ("/status", _) => {
                        status = device.status().await.map_err(anyhow::Error::msg)?;
                        println!("{}", status_json(&status));
                    }
                    ("/members", _) => {
                        status = device.status().await.map_err(anyhow::Error::msg)?;
                        print_group(&status);
                    }
                    ("/file", path) if !path.is_empty() => {
                        let path = std::path::PathBuf::from(path);
                        match device.send_file(&path, |_| {}).await {
                            Ok(id) if json_lines => println!(
                                "{}",
                                json!({"event": "file_shared", "id": id,
                                    "path": path.display().to_string()})
                            ),
                            Ok(id) => println!(
                                "* Shared {} (id {}).",
                                path.display(),
                                crate::files::short(id)
                            ),
                            Err(e) => eprintln!("! Not sent: {e}"),
                        }
                    }
                    ("/files", _) => {
                        let listed = if json_lines {
                            crate::files::list_json(&opened.store).await.map(|l| println!("{l}"))
                        } else {
                            crate::files::list(settings).await
                        };
                        if let Err(e) = listed {
                            eprintln!("! {e:#}");
                        }
                    }
                    ("/get", args) if !args.is_empty() => {
                        let (id, out) = args
                            .split_once(' ')
                            .map_or((args, None), |(i, o)| (i, Some(o.trim().into())));
                        let saved = crate::files::save_held(
                            settings, &opened.store, (id, out), json_lines,
                        );
                        if let Err(e) = saved.await {
                            eprintln!("! {e:#}");
                        }
                    }
                    ("/search", words) => match Query::new(words) {
                        None => eprintln!("! /search needs words: /search WORDS"),
                        Some(query) => match opened.store.search(&query, SEARCH_RESULTS).await {
                            Ok(found) if json_lines => println!(
                                "{}",
                                json!({"event": "search", "query": words, "results": found
                                    .iter()
                                    .map(|e| &e.shown)
                                    .collect::<Vec<_>>()})
                            ),
                            Ok(found) => {
                                println!("* {} found:", found.len());
                                print_entries(&found, &status.view.names);
                            }
                            Err(e) => eprintln!("! {e}"),
                        },
                    },
                    ("/name", name) if !name.is_empty() => {
                        if let Err(e) = device.set_display_name(name).await {
                            eprintln!("! Cannot set the name: {e}");
                        }
                    }
                    _ if line.starts_with('/') => {
                        eprintln!("! Unknown command {line}; /help lists them");
                    }
                    _ => {
                        if let Err(e) = device.send_text(line).await {
                            eprintln!("! Not sent: {e}");
                        }
                    }
                }
            }
            update = device.next_update() => {
                let Some(update) = update else { break };
                if matches!(
                    update,
                    Update::Engine(
                        Event::MembersChanged | Event::Joined | Event::GroupCreated
                    ) | Update::LinkUp(_)
                ) {
                    status = device.status().await.unwrap_or(status);
                }
                let line = if json_lines {
                    update_json(&update, &status.view.names)
                } else if let Update::Engine(Event::FileProgress { id, received, size }) = &update {
                    arriving.line(*id, *received, *size)
                } else {
                    update_text(&update, &status.view.names, &status.group())
                };
                if let Some(line) = line {
                    println!("{line}");
                }
            }
        }
    }
    // The data directory stays locked until the device has stored its last
    // turn and stopped.
    stopped(device).await
}

fn print_group(status: &Status) {
    for d in &status.view.devices {
        let this = if d.own {
            " (this device)"
        } else if d.linked {
            " linked"
        } else if d.online {
            " online, not linked yet"
        } else {
            " offline"
        };
        println!("  {}{this}", name_of(&status.view.names, d.member));
    }
    let view = &status.view;
    if view.missing > 0 {
        println!(
            "  {} messages that other devices hold have not reached this device yet",
            view.missing
        );
    }
    if view.carrying > 0 {
        println!(
            "  This device keeps {} of the circle's messages for devices that lack them",
            view.carrying
        );
    }
    if view.dropped > 0 {
        println!(
            "  It dropped {} of them (its limit) before every device was known to have them: a \
             device away that long may miss them",
            view.dropped
        );
    }
}

/// `tessera serve`: the device online without a terminal (an always-on member device), its log one
/// JSON object per line on standard output with no message text and no name; logs in again with
/// its key file when its session ends; stops on SIGTERM or Ctrl-C.
pub async fn serve(settings: &Settings) -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let Running { opened, mut device } = start(settings).await?;
        let status = device.status().await.map_err(anyhow::Error::msg)?;
        log_line(&json!({
            "event": "serving",
            "origin": opened.profile.origin,
            "device": status.view.device,
            "epoch": status.view.epoch,
        }));
        let requested = loop {
            tokio::select! {
                _ = terminate.recv() => break true,
                _ = tokio::signal::ctrl_c() => break true,
                update = device.next_update() => {
                    let Some(update) = update else { break false };
                    if let Some(line) = serve_json(&update) {
                        log_line(&line);
                    }
                }
            }
        };
        let stopped = device.stop().await?;
        drop(opened);
        match stopped {
            Stopped::By(StopReason::SessionEnded) if !requested => {
                log_line(&json!({"event": "logging_in_again"}));
                account::log_in_again(settings).await.context(
                    "the session ended and logging in again failed (a security key needs its PIN \
                     and a touch: run `tessera login`, then `tessera serve` again)",
                )?;
            }
            other => return why_stopped(other),
        }
    }
}

/// One line of `serve`'s log.
fn log_line(value: &serde_json::Value) {
    println!("{value}");
}

/// An update as `serve` logs it: as `chat --json` prints it, without message texts or names.
fn serve_json(update: &Update) -> Option<serde_json::Value> {
    if let Update::Engine(Event::Message { message, outgoing }) = update {
        return Some(json!({
            "event": "message",
            "device": message.device,
            "id": message.id,
            "outgoing": outgoing,
        }));
    }
    if let Update::Engine(Event::Renamed { member, .. }) = update {
        return Some(json!({"event": "renamed", "member": member}));
    }
    if let Update::Engine(Event::MessageChanged { change }) = update {
        let kind = serde_json::to_value(&change.change).ok()?["kind"].take();
        return Some(json!({
            "event": "message_changed",
            "device": change.device,
            "id": change.id,
            "kind": kind,
        }));
    }
    let line = update_json(update, &BTreeMap::new())?;
    serde_json::from_str(&line).ok()
}

/// `tessera send`, `reply`, `react`, `edit` and `delete`: sends `outgoing` and waits up to `wait`
/// for the devices online to acknowledge it.
pub async fn send(settings: &Settings, outgoing: Outgoing, wait: Duration) -> Result<()> {
    let Running { opened, device } = start(settings).await?;
    let deadline = Instant::now() + wait;
    let (mut device, _) = ready(device, deadline).await?;
    let id = match outgoing.send(&device, &opened.store).await {
        Ok(id) => id,
        Err(e) => {
            stopped(device).await?;
            return Err(e);
        }
    };
    // What waits now, with this message in the outbox (the status before it counted none).
    let mut status = device.status().await.map_err(anyhow::Error::msg)?;
    let online_waiting = |s: &Status| {
        s.waiting()
            .iter()
            .filter(|(d, n)| **n > 0 && s.online().contains_key(d))
            .count()
    };
    while online_waiting(&status) > 0 && Instant::now() < deadline {
        status = next_status(&mut device).await?;
    }
    let peers = status.waiting().len();
    let missing = status.waiting().values().filter(|n| **n > 0).count();
    println!(
        "Message {id}: delivered to {} of {peers} other devices of the circle.",
        peers - missing
    );
    if missing > 0 {
        println!(
            "{missing} did not acknowledge it yet: it waits in this device's outbox and goes out \
             when this device and they are online together (e.g. while `tessera chat` runs)."
        );
    }
    // The data directory stays locked until the device has stored its last
    // turn and stopped.
    stopped(device).await
}

/// Waits until the device is connected and in the group, or until `deadline` (then it stops
/// and says why it could not send).
pub(crate) async fn ready(
    mut device: DeviceHandle,
    deadline: Instant,
) -> Result<(DeviceHandle, Status)> {
    let mut status = device.status().await.map_err(anyhow::Error::msg)?;
    while !(status.view.connected && status.view.epoch.is_some()) {
        if Instant::now() >= deadline {
            let why = if status.view.connected {
                "this device is not in the circle's encrypted group yet: a member's device \
                 online adds it (keep `tessera chat` running until it says so)"
            } else {
                "the server cannot be reached, so no peer link can be set up"
            };
            stopped(device).await?;
            bail!("not sent: {why}");
        }
        status = next_status(&mut device).await?;
    }
    Ok((device, status))
}

/// The device's status after the next update (or a short pause).
pub(crate) async fn next_status(device: &mut DeviceHandle) -> Result<Status> {
    let update = tokio::time::timeout(Duration::from_millis(250), device.next_update()).await;
    if let Ok(None) = update {
        // The device stopped by itself.
        why_stopped(device.finished().await?)?;
    }
    device.status().await.map_err(anyhow::Error::msg)
}

/// `tessera name`.
pub async fn set_name(settings: &Settings, name: &str) -> Result<()> {
    let opened = account::open(settings).await?;
    let profile = &opened.profile;
    let mut engine = account::restore(&opened.store, profile, Some(settings)).await?;
    engine.set_display_name(Instant::now(), name)?;
    opened.store.save_offline(&mut engine).await?;
    println!(
        "Your display name is now {name:?} on this device; the circle's devices learn it, \
         inside the encrypted group, the next time this device is online with them."
    );
    Ok(())
}

/// `tessera history` (needs no lock: it only reads).
pub async fn history(settings: &Settings, limit: u32) -> Result<()> {
    let Opened { store, profile, .. } = account::open_profile(settings).await?;
    let names = account::restore(&store, &profile, Some(settings))
        .await?
        .display_names();
    print_entries(&store.history(limit).await?, &names);
    Ok(())
}

/// `tessera search QUERY` (needs no lock: it only reads): the stored messages it finds.
pub async fn search(settings: &Settings, query: &str, limit: usize) -> Result<()> {
    let Some(query) = Query::new(query) else {
        bail!("search for at least one word");
    };
    let Opened { store, profile, .. } = account::open_profile(settings).await?;
    let names = account::restore(&store, &profile, Some(settings))
        .await?
        .display_names();
    let found = store.search(&query, limit).await?;
    if found.is_empty() {
        println!("No message on this device holds every word of that.");
    }
    print_entries(&found, &names);
    Ok(())
}

/// History entries as `tessera history` prints them, one line each.
fn print_entries(entries: &[HistoryEntry], names: &BTreeMap<Uuid, String>) {
    let shown: Vec<ShownMessage> = entries.iter().map(|e| e.shown.clone()).collect();
    for HistoryEntry {
        shown: entry,
        outgoing,
        delivered,
    } in entries
    {
        let state = if *outgoing && !entry.deleted {
            format!("  (delivered to {delivered})")
        } else {
            String::new()
        };
        let at = clock(entry.message.sent_at);
        let line = crate::messages::history_line(entry, &shown, names, &at);
        println!("{line}{state}");
    }
}

/// `tessera members`: the directory from the server, names from the group, who is online from a
/// short signalling connection.
pub async fn members(settings: &Settings) -> Result<()> {
    let mut opened = account::open(settings).await?;
    account::remember_root(&mut opened).await?;
    let api = account::session(&mut opened).await?;
    let profile = &opened.profile;
    let directory = api
        .members()
        .await
        .map_err(|e| explain(e, &profile.origin))?;
    let engine = account::restore(&opened.store, profile, Some(settings)).await?;
    let names = engine.display_names();
    let online = online_devices(&api, profile.device).await?;
    let trusted = match &profile.root {
        Some(root) => verify_directory(
            &directory,
            profile.circle,
            root,
            (&profile.origin, &profile.rp_id),
            &UsedInvitations::new(),
        ),
        None => distrust_all(&directory, TrustError::NoRoot),
    };
    println!(
        "{:<24}  {:<6}  {:>6}  {:<39}  {:<36}  INVITED BY",
        "NAME", "ROLE", "ONLINE", "KEY FINGERPRINTS", "MEMBER"
    );
    for member in &directory {
        let mut name = name_of(&names, member.id);
        if member.id == profile.member {
            name.push_str(" (you)");
        }
        let online = online.values().filter(|m| **m == member.id).count();
        let Some(chain) = trusted.members.get(&member.id) else {
            continue;
        };
        let fingerprints: Vec<String> = chain
            .passkeys
            .iter()
            .map(|k| fingerprint(&k.public_key))
            .collect();
        let invited_by = chain.invited_by.map_or_else(
            || "(founder: the circle's root)".to_owned(),
            |admin| name_of(&names, admin),
        );
        println!(
            "{:<24}  {:<6}  {:>6}  {:<39}  {:<36}  {invited_by}",
            name,
            chain.role.as_str(),
            online,
            fingerprints.first().map_or("-", String::as_str),
            member.id
        );
        for more in fingerprints.iter().skip(1) {
            println!("{:<24}  {:<6}  {:>6}  {more:<39}", "", "", "");
        }
    }
    for distrusted in &trusted.distrusted {
        let whose = if distrusted.member == profile.member {
            "YOUR ACCOUNT".to_owned()
        } else {
            format!("member {}", distrusted.member)
        };
        match &distrusted.key {
            Some(key) => eprintln!(
                "warning: the server lists a key for {whose} that nothing signed admits ({key}): \
                 {}; it is ignored",
                distrusted.reason
            ),
            None => eprintln!(
                "warning: what the server lists for {whose} is not backed by signed invitations \
                 ({}); it is ignored",
                distrusted.reason
            ),
        }
    }
    if let Some(root) = &profile.root {
        println!("\nCircle root: {}", root.to_text());
        let words = safety_words(root, &trusted);
        println!(
            "Safety number (compare in person with another member: the same words mean you both \
             see the same circle; they change when anyone joins, leaves or changes keys):\n  \
             {words}"
        );
        if let Ok(code) = qrcode::QrCode::new(words.as_bytes()) {
            println!(
                "{}",
                code.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            );
        }
    }
    Ok(())
}

/// The devices online now (this one included), from the `hello` of a short connection.
async fn online_devices(
    api: &tessera_client::api::ApiClient,
    device: Uuid,
) -> Result<BTreeMap<Uuid, Uuid>> {
    let session = api.session().unwrap_or_default().to_owned();
    let mut signal = SignalClient::start(api.origin().clone(), session, device, Backoff::default());
    let hello = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match signal.next_event().await {
                Some(SignalEvent::Connected(ServerFrame::Hello {
                    peers,
                    member,
                    device,
                    ..
                })) => {
                    let mut online: BTreeMap<Uuid, Uuid> =
                        peers.into_iter().map(|p| (p.device, p.member)).collect();
                    online.insert(device, member);
                    return Ok(online);
                }
                Some(
                    SignalEvent::SessionRefused
                    | SignalEvent::Frame(ServerFrame::Revoked | ServerFrame::SessionEnded),
                )
                | None => {
                    return why_stopped(Stopped::By(StopReason::SessionEnded))
                        .map(|()| BTreeMap::new());
                }
                Some(_) => {}
            }
        }
    })
    .await;
    hello.unwrap_or_else(|_| bail!("the server did not answer on its signalling connection"))
}
