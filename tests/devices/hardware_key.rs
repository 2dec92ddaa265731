//! The `tessera` CLI with USB security keys, end to end: inside a VM whose kernel has `uhid`
//! (`tessera_tests::vm`), `tessera-virtual-key` plugs in virtual FIDO2 keys that speak CTAPHID on
//! /dev/hidrawN like a YubiKey (PIN, retries, touch), the real server runs, and the real CLI joins,
//! logs in, certifies its device and adds a key through them; every refusal a key can give is
//! shown to the member in words.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use crate::support::{Server, binary, free_port, run_inside, tessera_in, text};

/// Runs the named test inside the VM; true when the caller is inside and should run the body.
fn inside_vm(test: &str) -> bool {
    run_inside(test, "the VM", tessera_tests::vm::run_inside)
}

/// A virtual security key plugged in for as long as it lives.
struct VirtualKey {
    child: Child,
    path: String,
    state: PathBuf,
}

impl Drop for VirtualKey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VirtualKey {
    /// Plugs in a key keeping its state in `dir/<serial>.json`, with the virtual key's `flags`.
    fn plug(dir: &Path, serial: &str, flags: &[&str]) -> VirtualKey {
        let state = dir.join(format!("{serial}.json"));
        let mut child = Command::new(binary("tessera-virtual-key"))
            .arg("--state")
            .arg(&state)
            .args(["--serial", serial])
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tessera-virtual-key starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines
            .next()
            .and_then(Result::ok)
            .expect("the virtual key says where it is");
        let path = ready
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("not ready: {ready}"))
            .to_owned();
        VirtualKey { child, path, state }
    }

    /// Unplugs it.
    fn unplug(self) {}

    /// Its state, as the virtual key keeps it.
    fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.state).expect("state")).expect("JSON")
    }
}

/// A CLI device in its own data directory.
struct Cli {
    dir: PathBuf,
}

impl Cli {
    /// Runs `tessera` with `args`, the PIN (when given) on standard input read with `--pin-fd 0`.
    fn run(&self, args: &[&str], pin: Option<&str>) -> Output {
        let mut command = tessera_in(&self.dir);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if pin.is_some() {
            command.args(["--pin-fd", "0"]);
        }
        let mut child = command.spawn().expect("tessera runs");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(pin) = pin {
            writeln!(stdin, "{pin}").expect("the PIN is read");
        }
        drop(stdin);
        child.wait_with_output().expect("tessera ends")
    }

    fn ok(&self, args: &[&str], pin: Option<&str>) -> String {
        let out = self.run(args, pin);
        assert!(out.status.success(), "tessera {args:?}: {}", text(&out));
        text(&out)
    }

    /// Runs a command that must fail; what it said.
    fn refused(&self, args: &[&str], pin: Option<&str>) -> String {
        let out = self.run(args, pin);
        assert!(
            !out.status.success(),
            "tessera {args:?} succeeded: {}",
            text(&out)
        );
        text(&out)
    }
}

#[test]
fn members_join_log_in_and_add_keys_with_usb_security_keys_and_each_refusal_is_explained() {
    if !inside_vm(
        "hardware_key::members_join_log_in_and_add_keys_with_usb_security_keys_and_each_refusal_is_explained",
    ) {
        return;
    }
    let started = Instant::now();
    let root = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let origin = format!("http://localhost:{port}");
    let (_server, link) = Server::start(&root.path().join("server"), port, &origin);
    let admin_link = link.expect("the admin link");
    let keys = root.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let admin = Cli {
        dir: root.path().join("admin"),
    };

    // No key plugged in: said so, with the way out.
    let said = admin.refused(&["join", &admin_link, "--name", "Ada"], Some("1234"));
    assert!(said.contains("no security key found"), "{said}");

    // A key without a PIN: the member is told how to set one.
    let no_pin = VirtualKey::plug(&keys, "no-pin", &[]);
    let said = admin.refused(&["join", &admin_link, "--name", "Ada"], Some("1234"));
    assert!(said.contains("has no PIN yet"), "{said}");
    no_pin.unplug();

    // Nobody touches the key: a timeout, said so.
    let untouched = VirtualKey::plug(
        &keys,
        "untouched",
        &[
            "--pin",
            "1234",
            "--touch",
            "never",
            "--touch-timeout-ms",
            "2000",
        ],
    );
    let said = admin.refused(&["join", &admin_link, "--name", "Ada"], Some("1234"));
    assert!(said.contains("not touched in time"), "{said}");
    untouched.unplug();

    // The key pulled out in the middle of the ceremony.
    let pulled = VirtualKey::plug(
        &keys,
        "pulled",
        &["--pin", "1234", "--unplug-after-requests", "1"],
    );
    let said = admin.refused(&["join", &admin_link, "--name", "Ada"], Some("1234"));
    assert!(said.contains("removed during the ceremony"), "{said}");
    drop(pulled);

    // A wrong PIN: refused, with the tries left; nothing enrolled (the link still works below).
    let key = VirtualKey::plug(&keys, "ada-1", &["--pin", "1234", "--touch", "after:300"]);
    let said = admin.refused(&["join", &admin_link, "--name", "Ada"], Some("0000"));
    assert!(said.contains("wrong PIN: 7 tries left"), "{said}");
    assert_eq!(key.state()["pin_retries"], 7);

    // The right PIN: joined, the device certified by the key, touch announced.
    let said = admin.ok(&["join", &admin_link, "--name", "Ada"], Some("1234"));
    assert!(said.contains("Joined"), "{said}");
    assert!(said.contains("Touch your security key now."), "{said}");
    assert_eq!(
        key.state()["pin_retries"],
        8,
        "a right PIN resets the tries"
    );
    let credentials = key.state()["credentials"].as_array().map(Vec::len);
    assert_eq!(credentials, Some(1), "one discoverable credential");
    let said = admin.ok(&["login"], Some("1234"));
    assert!(said.contains("Logged in"), "{said}");

    // A key that is not the one enrolled: it holds no credential for this server.
    let stranger = VirtualKey::plug(&keys, "stranger", &["--pin", "4321"]);
    let said = admin.refused(&["login", "--key-device", &stranger.path], Some("4321"));
    assert!(said.contains("no credential"), "{said}");

    // A second key added, signed by the first; then it logs in by itself.
    let spare = VirtualKey::plug(&keys, "ada-2", &["--pin", "5678"]);
    let said = admin.refused(&["keys", "add", "--label", "spare"], Some("1234"));
    assert!(
        said.contains("--key-device"),
        "several keys and no choice: {said}"
    );
    drop(stranger);
    // The new key is asked first (it registers), then the enrolled key (it signs): one PIN a line.
    let said = admin.ok(
        &[
            "keys",
            "add",
            "--label",
            "spare",
            "--key-device",
            &key.path,
            "--new-key-device",
            &spare.path,
        ],
        Some("5678\n1234"),
    );
    assert!(said.contains("Added key"), "{said}");
    let listed = admin.ok(&["keys"], None);
    let rows = listed.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(rows, 3, "a header and two keys: {listed}");
    key.unplug();
    let said = admin.ok(&["login"], Some("5678"));
    assert!(
        said.contains("Logged in"),
        "the spare key alone logs in: {said}"
    );
    spare.unplug();

    // PIN blocked: the last try used up.
    let blocked = VirtualKey::plug(&keys, "blocked", &["--pin", "1234"]);
    let mut state = blocked.state();
    state["pin_retries"] = 1.into();
    drop(blocked);
    std::fs::write(keys.join("blocked.json"), state.to_string()).expect("state");
    let blocked = VirtualKey::plug(&keys, "blocked", &[]);
    let said = admin.refused(&["login"], Some("0000"));
    assert!(said.contains("PIN is blocked"), "{said}");
    assert_eq!(blocked.state()["pin_retries"], 0);
    eprintln!(
        "hardware keys: the scenario took {:.1} s inside the VM",
        started.elapsed().as_secs_f64()
    );
}
