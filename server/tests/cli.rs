//! The `tessera-server` binary as an operator uses it: `--help`, the first start's one-time admin
//! link, later starts that print nothing secret, and `new-circle`.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tessera_server::store::{SqliteStore, Store as _};

const BINARY: &str = env!("CARGO_BIN_EXE_tessera-server");

/// A server process this test started; killed (by its own PID) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server on port 0 and returns it with the lines it printed up to and including the banner block.
fn start(data_dir: &Path) -> (Server, Vec<String>) {
    let mut child = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--origin",
            "http://localhost:8080",
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("TESSERA_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let stdout = child.stdout.take().expect("stdout");
    let server = Server(child);
    let mut lines = Vec::new();
    // Anything secret comes before the "serving" line, which comes last.
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        let serving = line.contains("Tessera is serving");
        lines.push(line);
        if serving {
            break;
        }
    }
    (server, lines)
}

fn join_links(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("/join/"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn help_explains_every_option_and_its_environment_variable() {
    let output = Command::new(BINARY)
        .arg("--help")
        .output()
        .expect("--help runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for needle in [
        "--listen",
        "TESSERA_LISTEN",
        "--data-dir",
        "TESSERA_DATA_DIR",
        "--origin",
        "TESSERA_ORIGIN",
        "--attestation",
        "TESSERA_ATTESTATION",
        "new-circle",
        "127.0.0.1:8080",
        "./tessera-data",
        "http://localhost:8080",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn a_bad_option_is_refused_with_a_clear_message() {
    let output = Command::new(BINARY)
        .args(["--attestation", "fips-please"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AAGUID"), "{stderr}");
}

#[test]
fn the_first_start_prints_one_admin_link_and_later_starts_print_none() {
    let data = tempfile::tempdir().expect("temp dir");
    let (server, first) = start(data.path());
    let links = join_links(&first);
    assert_eq!(links.len(), 1, "{first:?}");
    assert!(links[0].starts_with("http://localhost:8080/join/"));
    assert_eq!(links[0].len(), "http://localhost:8080/join/".len() + 43);
    drop(server);

    let (server, second) = start(data.path());
    assert!(
        second.iter().any(|l| l.contains("Tessera is serving")),
        "{second:?}"
    );
    assert!(
        join_links(&second).is_empty(),
        "a later start printed a link: {second:?}"
    );
    drop(server);
}

#[tokio::test]
async fn new_circle_creates_another_circle_with_its_own_admin_link() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut links = Vec::new();
    for _ in 0..2 {
        let output = Command::new(BINARY)
            .args([
                "new-circle",
                "--origin",
                "https://tessera.example.org",
                "--data-dir",
            ])
            .arg(data.path())
            .output()
            .expect("new-circle runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8");
        let found = join_links(&stdout.lines().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(found.len(), 1, "{stdout}");
        assert!(found[0].starts_with("https://tessera.example.org/join/"));
        links.extend(found);
    }
    assert_ne!(links[0], links[1]);
    let store = SqliteStore::open(data.path()).await.expect("open");
    assert_eq!(store.circle_count().await.expect("count"), 2);
}
