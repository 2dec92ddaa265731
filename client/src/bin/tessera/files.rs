//! Files from the command line: sharing one (`send-file`), listing them (`files`), saving one
//! (`get`), deleting one (`delete-file`), and the progress shown while they move: a bar on a
//! terminal, a plain line now and then otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tessera_client::device::Update;
use tessera_client::files::FileDir;
use tessera_client::store::DeviceStore;
use tessera_engine::Event;
use tessera_engine::files::{FileInfo, FileRow, FileState};
use tokio::sync::watch;
use uuid::Uuid;

use crate::account;
use crate::circle::{self, Running, name_of};
use crate::settings::Settings;

/// How a file message reads in the chat and the history.
pub fn file_line(id: Uuid, file: &FileInfo) -> String {
    let kind = if file.mime.is_empty() {
        String::new()
    } else {
        format!(", {}", file.mime)
    };
    format!(
        "[file] {} ({}{kind}) id {}",
        file.name,
        human(file.size),
        short(id)
    )
}

/// The start of an id, as `files` lists it and `get` takes it.
pub fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// A size for people: `3.1 MB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Progress of one piece of work on standard error: bytes, share, rate and time left.
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    shown_at: Option<Instant>,
    terminal: bool,
}

impl Progress {
    /// Progress of `label`, `total` bytes in all.
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            started: Instant::now(),
            shown_at: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// What `done` bytes of the total read as.
    fn line(&self, done: u64) -> String {
        let share = done
            .saturating_mul(100)
            .checked_div(self.total)
            .unwrap_or(100);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / elapsed;
        let left = if rate > 0.0 && done < self.total {
            format!(", {} s left", ((self.total - done) as f64 / rate).ceil())
        } else {
            String::new()
        };
        format!(
            "{}: {} of {} ({share}%), {}/s{left}",
            self.label,
            human(done),
            human(self.total),
            human(rate as u64)
        )
    }

    /// Shows `done` bytes: redrawn at most ten times a second on a terminal, a line every five
    /// seconds otherwise.
    pub fn show(&mut self, done: u64) {
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.shown_at.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.shown_at = Some(Instant::now());
        self.print(done);
    }

    /// Shows the last figure and ends the line.
    pub fn finish(&mut self, done: u64) {
        self.print(done);
        if self.terminal {
            eprintln!();
        }
    }

    fn print(&self, done: u64) {
        let line = self.line(done);
        if self.terminal {
            let width = 24;
            let filled = (done.min(self.total) * width as u64)
                .checked_div(self.total)
                .map_or(width, |f| usize::try_from(f).unwrap_or(width));
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
            eprint!("\r[{bar}] {line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }
}

/// Files on their way in the chat: a line for each every few seconds, with its rate and the time
/// left.
#[derive(Default)]
pub struct Arriving(BTreeMap<Uuid, (Progress, Instant)>);

impl Arriving {
    /// The line to print for `received` bytes of `size` of file `id`, if one is due.
    pub fn line(&mut self, id: Uuid, received: u64, size: u64) -> Option<String> {
        let now = Instant::now();
        let (progress, shown) = self.0.entry(id).or_insert_with(|| {
            let progress = Progress::new(format!("* File {}", short(id)), size);
            (progress, now)
        });
        let whole = received >= size;
        if !whole && now.duration_since(*shown) < Duration::from_secs(5) {
            return None;
        }
        *shown = now;
        let line = progress.line(received);
        if whole {
            self.0.remove(&id);
        }
        Some(line)
    }
}

/// The file whose id is or starts with `id`, among those this device knows of.
fn find(rows: &[FileRow], id: &str) -> Result<FileRow> {
    let wanted = id.to_ascii_lowercase().replace('-', "");
    if wanted.is_empty() {
        bail!("give a file id (`tessera files` lists them)");
    }
    let found: Vec<&FileRow> = rows
        .iter()
        .filter(|r| r.id.simple().to_string().starts_with(&wanted))
        .collect();
    match found.as_slice() {
        [row] => Ok((*row).clone()),
        [] => bail!("no file {id} on this device (`tessera files` lists them)"),
        _ => bail!("{id} is the start of several files' ids: give more of it"),
    }
}

/// `tessera send-file`.
pub async fn send_file(settings: &Settings, path: &Path, wait: Duration) -> Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > settings.max_file_bytes {
        bail!(
            "{} is {} ({size} bytes): larger than the {} bytes a file may be (--max-file-mib)",
            path.display(),
            human(size),
            settings.max_file_bytes
        );
    }
    let Running {
        opened: _lock,
        device,
    } = circle::start(settings).await?;
    let deadline = Instant::now() + wait;
    let (mut device, status) = circle::ready(device, deadline).await?;
    let names = status.view.names.clone();
    let group = status.group();
    let targets: BTreeSet<Uuid> = status.online().into_keys().collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (copied_tx, mut copied) = watch::channel(0u64);
    let mut storing = Progress::new(format!("Encrypting and storing {name}"), size);
    let sent = {
        let sending = device.send_file(path, move |n| {
            let _ = copied_tx.send(n);
        });
        tokio::pin!(sending);
        loop {
            tokio::select! {
                sent = &mut sending => break sent,
                changed = copied.changed() => {
                    if changed.is_ok() {
                        storing.show(*copied.borrow());
                    }
                }
            }
        }
    };
    storing.finish(size);
    let id = match sent {
        Ok(id) => id,
        Err(why) => {
            circle::stopped(device).await?;
            bail!("{name} was not sent: {why}");
        }
    };
    println!(
        "File {} ({name}, {}) shared with the circle.",
        short(id),
        human(size)
    );
    if targets.is_empty() {
        println!(
            "No other device of the circle is online: they get it from this device, or from any \
             device that holds it, when they are online together (e.g. while `tessera chat` or \
             `tessera serve` runs)."
        );
        return circle::stopped(device).await;
    }
    let mut sent: BTreeMap<Uuid, u64> = targets.iter().map(|d| (*d, 0)).collect();
    let mut done: BTreeSet<Uuid> = BTreeSet::new();
    let total = size.saturating_mul(targets.len() as u64);
    let mut progress = Progress::new(
        format!("Sending {name} to {} devices", targets.len()),
        total,
    );
    while done.len() < targets.len() && Instant::now() < deadline {
        let update = tokio::time::timeout(Duration::from_millis(500), device.next_update()).await;
        match update {
            Ok(None) => break,
            Ok(Some(Update::Engine(Event::FileSent {
                id: file,
                device: to,
                sent: bytes,
                done: whole,
                ..
            }))) if file == id && targets.contains(&to) => {
                sent.insert(to, if whole { size } else { bytes });
                if whole {
                    done.insert(to);
                }
                progress.show(sent.values().sum());
            }
            Ok(Some(Update::Engine(Event::FileFailed { id: file, reason }))) if file == id => {
                bail!("{name} cannot be sent: {reason}");
            }
            _ => {}
        }
    }
    progress.finish(sent.values().sum());
    let device_name = |d: &Uuid| {
        group.get(d).map_or_else(
            || d.to_string(),
            |m| format!("{}'s device", name_of(&names, *m)),
        )
    };
    println!(
        "{} of the {} devices online hold it whole.",
        done.len(),
        targets.len()
    );
    for missing in targets.difference(&done) {
        println!(
            "  {} does not yet: it gets the rest from any device that holds the file when they \
             are online together.",
            device_name(missing)
        );
    }
    circle::stopped(device).await
}

/// `tessera files`: what this device knows of, oldest first (needs no lock: it only reads).
pub async fn list(settings: &Settings) -> Result<()> {
    let opened = account::open_profile(settings).await?;
    let names = account::restore(&opened.store, &opened.profile, Some(settings))
        .await?
        .display_names();
    let mut rows = opened.store.files().await?;
    rows.sort_by_key(|r| (r.sent_at, r.id));
    if rows.is_empty() {
        println!("No file has been shared with the circle on this device yet.");
        return Ok(());
    }
    println!(
        "{:<8}  {:<32}  {:>9}  {:<22}  FROM",
        "ID", "NAME", "SIZE", "STATE"
    );
    for row in &rows {
        let state = match &row.state {
            FileState::Held => state_word(&row.state).to_owned(),
            FileState::Receiving { chunks, .. } => {
                let bytes = (chunks * u64::from(row.offer.chunk)).min(row.offer.size);
                let share = bytes
                    .saturating_mul(100)
                    .checked_div(row.offer.size)
                    .unwrap_or(0);
                format!("on its way ({share}%)")
            }
            FileState::Failed { .. } => "not taken".to_owned(),
        };
        println!(
            "{:<8}  {:<32}  {:>9}  {state:<22}  {}",
            short(row.id),
            row.offer.name,
            human(row.offer.size),
            name_of(&names, row.member)
        );
        if let FileState::Failed { reason } = &row.state {
            println!("{:<8}  ({reason})", "");
        }
    }
    Ok(())
}

/// Copies a file held whole to `out` (its name in the current directory by default); its size
/// and where it went.
fn save(settings: &Settings, row: &FileRow, out: Option<PathBuf>) -> Result<(u64, PathBuf)> {
    let out = out.unwrap_or_else(|| PathBuf::from(&row.offer.name));
    let size = FileDir::in_data_dir(&settings.data_dir)
        .copy_out(row.id, &out)
        .with_context(|| format!("cannot save {}", row.offer.name))?;
    Ok((size, out))
}

fn print_saved(row: &FileRow, (size, out): &(u64, PathBuf)) {
    println!(
        "Saved {} ({}) to {}.",
        row.offer.name,
        human(*size),
        out.display()
    );
}

/// Where a file stands, in a word (the chat's `/files` with `--json`).
fn state_word(state: &FileState) -> &'static str {
    match state {
        FileState::Held => "here",
        FileState::Receiving { .. } => "receiving",
        FileState::Failed { .. } => "failed",
    }
}

/// The files this device knows of as one JSON line (the chat's `/files` with `--json`).
pub async fn list_json(store: &DeviceStore) -> Result<String> {
    let mut rows = store.files().await?;
    rows.sort_by_key(|r| (r.sent_at, r.id));
    let files: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let reason = match &r.state {
                FileState::Failed { reason } => Some(reason),
                _ => None,
            };
            serde_json::json!({
                "id": r.id, "name": r.offer.name, "size": r.offer.size, "mime": r.offer.mime,
                "member": r.member, "device": r.device, "sent_at": r.sent_at,
                "state": state_word(&r.state), "reason": reason,
            })
        })
        .collect();
    Ok(serde_json::json!({"event": "files", "files": files}).to_string())
}

/// Saves a file this device holds whole (`/get` in the chat, while the device runs); prints
/// where, as text or as a JSON line.
pub async fn save_held(
    settings: &Settings,
    store: &DeviceStore,
    (id, out): (&str, Option<PathBuf>),
    json_line: bool,
) -> Result<()> {
    let row = find(&store.files().await?, id)?;
    match &row.state {
        FileState::Held => {
            let saved = save(settings, &row, out)?;
            if json_line {
                let (size, path) = &saved;
                println!(
                    "{}",
                    serde_json::json!({"event": "file_saved", "id": row.id, "size": size,
                        "path": path.display().to_string()})
                );
            } else {
                print_saved(&row, &saved);
            }
            Ok(())
        }
        FileState::Failed { reason } => bail!("{} was not taken: {reason}", row.offer.name),
        FileState::Receiving { .. } => bail!("{} is on its way: not whole yet", row.offer.name),
    }
}

/// `tessera get`.
pub async fn get(
    settings: &Settings,
    id: &str,
    out: Option<PathBuf>,
    wait: Duration,
) -> Result<()> {
    let row = {
        let opened = account::open_profile(settings).await?;
        find(&opened.store.files().await?, id)?
    };
    match &row.state {
        FileState::Held => {
            print_saved(&row, &save(settings, &row, out)?);
            return Ok(());
        }
        FileState::Failed { reason } => bail!("{} was not taken: {reason}", row.offer.name),
        FileState::Receiving { .. } => {}
    }
    let Running { opened, mut device } = circle::start(settings).await?;
    let deadline = Instant::now() + wait;
    let mut progress = Progress::new(format!("Receiving {}", row.offer.name), row.offer.size);
    let mut received = 0;
    let outcome = loop {
        if Instant::now() >= deadline {
            break Err(format!(
                "{} of {} received so far; it goes on the next time this device runs while a \
                 device that holds it is online",
                human(received),
                human(row.offer.size)
            ));
        }
        let update = tokio::time::timeout(Duration::from_millis(500), device.next_update()).await;
        match update {
            Ok(None) => break Err("the device stopped".to_owned()),
            Ok(Some(Update::Engine(Event::FileProgress {
                id: file,
                received: bytes,
                ..
            }))) if file == row.id => {
                received = bytes;
                progress.show(bytes);
            }
            Ok(Some(Update::Engine(Event::FileReceived { id: file, .. }))) if file == row.id => {
                break Ok(());
            }
            Ok(Some(Update::Engine(Event::FileFailed { id: file, reason }))) if file == row.id => {
                break Err(reason);
            }
            _ => {}
        }
    };
    progress.finish(received.max(if outcome.is_ok() { row.offer.size } else { 0 }));
    let store = opened.store.clone();
    circle::stopped(device).await?;
    drop(opened);
    if let Err(why) = outcome {
        bail!("{} is not here yet: {why}", row.offer.name);
    }
    let row = find(&store.files().await?, &row.id.to_string())?;
    print_saved(&row, &save(settings, &row, out)?);
    Ok(())
}

/// `tessera delete-file`.
pub async fn delete(settings: &Settings, id: &str) -> Result<()> {
    let opened = account::open(settings).await?;
    let row = find(&opened.store.files().await?, id)?;
    let mut engine = account::restore(&opened.store, &opened.profile, Some(settings)).await?;
    engine.delete_file(Instant::now(), row.id);
    opened.store.save_offline(&mut engine).await?;
    // The engine asked its driver to delete the content; run offline, this command does it.
    let path = FileDir::in_data_dir(&settings.data_dir).path(row.id);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).context(format!("cannot delete {}", path.display())),
    }
    println!(
        "Deleted {} from this device (its message stays in the history).",
        row.offer.name
    );
    Ok(())
}
