//! The `tessera` binary as members meet it before any server answers: help on every command, and
//! clear errors for a missing key, an unreachable server, a data directory with no device, a key
//! file enrolled already, and a device in use by another process.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(dir: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .env_clear()
        .env("HOME", dir)
        .arg("--data-dir")
        .arg(dir.join("device"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tessera runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_command_explains_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let commands: &[&[&str]] = &[
        &[],
        &["soft-key", "new"],
        &["join"],
        &["login"],
        &["logout"],
        &["members"],
        &["chat"],
        &["send"],
        &["name"],
        &["history"],
        &["keys"],
        &["keys", "add"],
        &["keys", "revoke"],
        &["admin", "invite"],
        &["admin", "revoke"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = tessera(dir.path(), &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: tessera"), "{args:?}: {help}");
        assert!(
            help.contains("--data-dir"),
            "{args:?} lists the global options"
        );
    }
    let out = tessera(dir.path(), &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for variable in ["TESSERA_SERVER", "TESSERA_DATA_DIR", "TESSERA_KEY_FILE"] {
        assert!(help.contains(variable), "--help names {variable}");
    }
    let out = tessera(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
}

#[test]
fn a_software_key_file_is_private_and_never_overwritten_by_accident() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("k.key");
    let key_arg = key.display().to_string();
    let out = tessera(dir.path(), &["soft-key", "new", "--file", &key_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("weaker than a hardware key"),
        "says plainly that a software key is weaker"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(&key).expect("key");
    let out = tessera(dir.path(), &["soft-key", "new", "--file", &key_arg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&key).expect("key"),
        before,
        "the key is unchanged"
    );
    let out = tessera(
        dir.path(),
        &["soft-key", "new", "--file", &key_arg, "--force"],
    );
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(&key).expect("key"),
        before,
        "replaced on request"
    );
}

#[test]
fn joining_without_a_key_or_a_reachable_server_fails_clearly_and_leaves_no_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Port 9 on loopback: nothing listens (discard is not run on test machines).
    let link = "http://localhost:9/join/sometoken";

    let out = tessera(dir.path(), &["join", link]);
    assert!(!out.status.success());
    // No key file: the security key, and none is plugged in on a test machine.
    assert!(
        stderr(&out).contains("no security key found") && stderr(&out).contains("--key-file"),
        "{}",
        stderr(&out)
    );

    // A security key named by a path where there is none: said, with the path.
    let out = tessera(
        dir.path(),
        &["--key-device", "/dev/hidraw-none", "join", link],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot open the security key at /dev/hidraw-none"),
        "{}",
        stderr(&out)
    );

    let missing = dir.path().join("missing.key").display().to_string();
    let out = tessera(dir.path(), &["--key-file", &missing, "join", link]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("no key") && message.contains("tessera soft-key new"),
        "{message}"
    );

    let key = dir.path().join("k.key").display().to_string();
    assert!(
        tessera(dir.path(), &["soft-key", "new", "--file", &key])
            .status
            .success()
    );
    let out = tessera(dir.path(), &["--key-file", &key, "join", link]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the server at http://localhost:9"),
        "{}",
        stderr(&out)
    );
    let out = tessera(
        dir.path(),
        &["--key-file", &key, "join", "http://localhost:9/nope"],
    );
    assert!(
        stderr(&out).contains("not an invitation link"),
        "{}",
        stderr(&out)
    );
    let out = tessera(
        dir.path(),
        &[
            "--key-file",
            &key,
            "--server",
            "http://other.example",
            "join",
            link,
        ],
    );
    assert!(
        stderr(&out).contains("the invitation is for"),
        "{}",
        stderr(&out)
    );

    // Nothing was enrolled: the key is still blank and there is no device to use.
    let out = tessera(dir.path(), &["chat"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no device yet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_device_in_use_is_refused_to_a_second_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("device");
    std::fs::create_dir_all(&data).expect("dir");
    let lock = std::fs::File::create(data.join("device.lock")).expect("lock file");
    lock.lock()
        .expect("this test holds the lock, as a running chat would");
    let out = tessera(dir.path(), &["chat"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another tessera process is using this device"),
        "{}",
        stderr(&out)
    );
    lock.unlock().expect("unlock");
    let out = tessera(dir.path(), &["chat"]);
    assert!(
        stderr(&out).contains("holds no device yet"),
        "past the lock once it is free: {}",
        stderr(&out)
    );
}

#[test]
fn a_malformed_config_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let config_arg = config.display().to_string();
    for (content, expected) in [
        ("server = [", "is not valid"),
        ("servre = \"http://localhost:8080\"", "unknown field"),
        ("bind = \"not an address\"", "is not valid"),
    ] {
        std::fs::write(&config, content).expect("write");
        let out = tessera(dir.path(), &["--config", &config_arg, "history"]);
        assert!(!out.status.success(), "{content} accepted");
        let message = stderr(&out);
        assert!(
            message.contains(&config_arg) && message.contains(expected),
            "{content}: {message}"
        );
        assert!(!dir.path().join("device").exists(), "nothing was created");
    }
    let missing = dir.path().join("missing.toml").display().to_string();
    let out = tessera(dir.path(), &["--config", &missing, "history"]);
    assert!(
        stderr(&out).contains("cannot read the config file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn reading_the_history_of_no_device_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tessera(dir.path(), &["history"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no device yet"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("device").join("device.db").exists());
}

#[test]
fn logging_in_where_no_device_is_asks_for_the_server_or_an_invitation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tessera(dir.path(), &["login"]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("holds no device yet"), "{said}");
    assert!(said.contains("--server"), "{said}");
    assert!(said.contains("tessera join"), "{said}");
}

#[test]
fn a_key_id_that_starts_with_a_dash_is_taken_as_the_id() {
    // Key ids are base64url: one in 64 starts with `-`.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tessera(
        dir.path(),
        &["keys", "revoke", "-4B9qx68eTwB9FXMwqRlbskKYpV3ayA1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no device yet"),
        "{}",
        stderr(&out)
    );
}
