//! Network namespaces for tests and benchmarks that run WebRTC: the current executable runs again
//! inside a fresh namespace with only `lo` up, deleted afterwards, so nothing reaches beyond it.

use std::process::Command;

/// Set inside the namespace, so that the executable knows to run its body.
const INSIDE: &str = "TESSERA_NETNS";

/// Runs this executable again with `args` inside a fresh network namespace and returns whether it
/// succeeded; `None` when this process is already the one inside, which should do the work.
///
/// # Panics
/// When the namespace cannot be made (this needs root and iproute2) or the executable not run.
#[must_use]
pub fn run_inside(args: &[&str]) -> Option<bool> {
    if std::env::var_os(INSIDE).is_some() {
        return None;
    }
    let name = format!(
        "tessera-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let ip = |args: &[&str]| {
        let status = Command::new("ip")
            .args(args)
            .status()
            .expect("run ip (iproute2)");
        assert!(
            status.success(),
            "ip {args:?} failed: network namespaces need root and iproute2"
        );
    };
    ip(&["netns", "add", &name]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(name.clone());
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    let exe = std::env::current_exe().expect("this executable");
    let status = Command::new("ip")
        .args(["netns", "exec", &name])
        .arg(exe)
        .args(args)
        .env(INSIDE, &name)
        .status()
        .expect("run inside the namespace");
    Some(status.success())
}
