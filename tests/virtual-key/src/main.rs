//! The `tessera-virtual-key` binary: plugs a virtual FIDO2 key in through `/dev/uhid`, says
//! `ready /dev/hidrawN` on stdout, and serves it until SIGTERM, stdin closing, or the unplugging
//! asked for.

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use clap::Parser;
use tessera_virtual_key::ctaphid;
use tessera_virtual_key::uhid::{self, DeviceInfo, Uhid, UhidEvent};
use tessera_virtual_key::{Authenticator, Config, State, Touch, VirtualKey};

/// A software FIDO2 security key on a virtual USB HID device (Linux uhid), for tests.
///
/// Prints `ready /dev/hidrawN` once the device exists, logs each request on stderr, and serves
/// until SIGTERM or stdin closes (stdin is not watched when it is /dev/null). The kernel unplugs
/// the device when the process ends.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The key's state (PIN hash, retries, credentials, counter) as JSON, created if missing and
    /// written after every change. Without it the state lives in memory only.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Set this PIN at start if the key has none.
    #[arg(long, value_name = "PIN")]
    pin: Option<String>,
    /// What the user does when the key blinks: now, after:MS (keepalives meanwhile), never (the
    /// request times out) or refuse (operation denied).
    #[arg(long, value_name = "POLICY", default_value = "now", value_parser = parse_touch)]
    touch: Touch,
    /// How long a request waits for a touch before CTAP2_ERR_USER_ACTION_TIMEOUT.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    touch_timeout_ms: u64,
    /// Answer N CBOR requests, then pull the key out when the next one arrives (unanswered),
    /// print `unplugged` and exit.
    #[arg(long, value_name = "N")]
    unplug_after_requests: Option<u64>,
    /// The HID product name.
    #[arg(long, default_value = "Tessera Virtual Key")]
    name: String,
    /// The HID unique id (serial number), to tell several virtual keys apart [default:
    /// tessera-vk-<pid>].
    #[arg(long, value_name = "UNIQ")]
    serial: Option<String>,
    /// USB vendor and product ids, in hex (1209:0001 is pid.codes' test id).
    #[arg(long, value_name = "VID:PID", default_value = "1209:0001", value_parser = parse_usb_id)]
    usb_id: (u16, u16),
}

fn parse_touch(text: &str) -> Result<Touch, String> {
    match text {
        "now" => Ok(Touch::Now),
        "never" => Ok(Touch::Never),
        "refuse" => Ok(Touch::Refuse),
        _ => text
            .strip_prefix("after:")
            .and_then(|ms| ms.parse().ok())
            .map(|ms| Touch::After(Duration::from_millis(ms)))
            .ok_or_else(|| "expected now, after:MS, never or refuse".to_owned()),
    }
}

fn parse_usb_id(text: &str) -> Result<(u16, u16), String> {
    let (vid, pid) = text.split_once(':').ok_or("expected VID:PID")?;
    let hex = |s: &str| u16::from_str_radix(s, 16).map_err(|e| format!("{s}: {e}"));
    Ok((hex(vid)?, hex(pid)?))
}

enum Message {
    Uhid(io::Result<UhidEvent>),
    StdinClosed,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera-virtual-key: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(line: &str) {
    eprintln!("tessera-virtual-key: {line}");
}

fn run(args: &Args) -> Result<(), String> {
    let mut state = match &args.state {
        Some(path) => {
            State::load_or_create(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => State::default(),
    };
    if let Some(pin) = &args.pin
        && !state.has_pin()
    {
        if pin.chars().count() < 4 || pin.len() > 63 {
            return Err("--pin: a PIN has 4 to 63 bytes".into());
        }
        state.pin_hash = Some(tessera_virtual_key::state::pin_hash(pin.as_bytes()));
        state.pin_retries = tessera_virtual_key::state::MAX_PIN_RETRIES;
        save(args.state.as_deref(), &state)?;
    }

    let start = Instant::now();
    let config = Config {
        touch: args.touch,
        touch_timeout: Duration::from_millis(args.touch_timeout_ms),
        ..Config::default()
    };
    let authenticator =
        Authenticator::new(state, config, start.elapsed()).map_err(|e| e.to_string())?;
    let unplug_at = args.unplug_after_requests.map(|n| n + 1);
    let mut key = VirtualKey::new(authenticator, ctaphid::Config::default(), unplug_at);

    let serial = args
        .serial
        .clone()
        .unwrap_or_else(|| format!("tessera-vk-{}", std::process::id()));
    let info = DeviceInfo {
        name: args.name.clone(),
        phys: format!("tessera-virtual-key/{serial}"),
        uniq: serial.clone(),
        bus: uhid::BUS_USB,
        vendor: u32::from(args.usb_id.0),
        product: u32::from(args.usb_id.1),
        version: 0x0100,
        country: 0,
    };
    let device = Arc::new(
        Uhid::create(&info, &uhid::FIDO_REPORT_DESCRIPTOR)
            .map_err(|e| format!("/dev/uhid: {e} (is the uhid module loaded, are you root?)"))?,
    );

    let (tx, rx) = mpsc::channel();
    {
        let device = Arc::clone(&device);
        let tx = tx.clone();
        std::thread::spawn(move || {
            loop {
                let event = device.read_event();
                let failed = event.is_err();
                if tx.send(Message::Uhid(event)).is_err() || failed {
                    break;
                }
            }
        });
    }
    if !stdin_is_dev_null() {
        std::thread::spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = tx.send(Message::StdinClosed);
        });
    }

    let mut ready = false;
    let announce_by = start + Duration::from_secs(30);
    loop {
        if !ready {
            if let Some(node) =
                uhid::find_hidraw(Path::new("/sys/class/hidraw"), &serial, &info.name)
                    .filter(|node| node.exists())
            {
                println!("ready {}", node.display());
                let _ = io::stdout().flush();
                log(&format!("{} ({serial}) is {}", info.name, node.display()));
                ready = true;
            } else if Instant::now() > announce_by {
                return Err("the hidraw node did not appear within 30 s".into());
            }
        }
        let now = start.elapsed();
        let mut wait = key
            .next_deadline()
            .map_or(Duration::from_secs(3600), |deadline| {
                deadline.saturating_sub(now)
            });
        if !ready {
            wait = wait.min(Duration::from_millis(20));
        }
        let reports = match rx.recv_timeout(wait) {
            Ok(Message::Uhid(Ok(UhidEvent::Output { data, .. }))) => {
                key.receive(start.elapsed(), uhid::ctaphid_report(&data))
            }
            Ok(Message::Uhid(Ok(UhidEvent::GetReport { id }))) => {
                device.refuse_report(true, id).map_err(|e| e.to_string())?;
                Vec::new()
            }
            Ok(Message::Uhid(Ok(UhidEvent::SetReport { id }))) => {
                device.refuse_report(false, id).map_err(|e| e.to_string())?;
                Vec::new()
            }
            Ok(Message::Uhid(Ok(event))) => {
                log(&format!("uhid {event:?}"));
                Vec::new()
            }
            Ok(Message::Uhid(Err(e))) => return Err(format!("reading /dev/uhid: {e}")),
            Ok(Message::StdinClosed) => {
                log("stdin closed: unplugging");
                let _ = device.destroy();
                return Ok(());
            }
            Err(RecvTimeoutError::Timeout) => key.poll(start.elapsed()),
            Err(RecvTimeoutError::Disconnected) => return Err("the uhid reader stopped".into()),
        };
        for line in key.take_log() {
            log(&line);
        }
        if key.authenticator_mut().take_dirty() {
            save(args.state.as_deref(), key.authenticator().state())?;
        }
        if key.unplugged() {
            device.destroy().map_err(|e| e.to_string())?;
            println!("unplugged");
            let _ = io::stdout().flush();
            return Ok(());
        }
        for report in reports {
            device
                .send_input(&report)
                .map_err(|e| format!("sending a report: {e}"))?;
        }
    }
}

fn save(path: Option<&Path>, state: &State) -> Result<(), String> {
    match path {
        Some(path) => state
            .save(path)
            .map_err(|e| format!("{}: {e}", path.display())),
        None => Ok(()),
    }
}

/// Whether stdin is /dev/null (as under a service manager or `run-in-vm`): then it is not watched.
fn stdin_is_dev_null() -> bool {
    std::fs::read_link("/proc/self/fd/0").is_ok_and(|target| target == Path::new("/dev/null"))
}
