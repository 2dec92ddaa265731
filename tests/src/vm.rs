//! A virtual machine for tests that need a kernel with `uhid` (this machine's has none): the
//! current executable runs again inside `tests/vm/run-in-vm`, a qemu VM booting Debian's kernel
//! over the host's own root file system (read-only, 9p), so the same binaries run there.

use std::process::Command;
use std::time::Instant;

/// Set inside the VM, so that the executable knows to run its body.
const INSIDE: &str = "TESSERA_VM";

/// Runs this executable again with `args` inside a fresh VM and returns whether it succeeded;
/// `None` when this process is already the one inside, which should do the work. Prints how long
/// the VM took.
///
/// # Panics
/// When the VM cannot be started (`run-in-vm` installs qemu and the kernel on first use, which
/// needs root and Debian's package archive).
#[must_use]
pub fn run_inside(args: &[&str]) -> Option<bool> {
    if std::env::var_os(INSIDE).is_some() {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/vm/run-in-vm");
    let exe = std::env::current_exe().expect("this executable");
    let started = Instant::now();
    // The guest's standard error goes to its standard output: one stream comes back in order.
    let status = Command::new(script)
        .args(["-t", "900", "-e", &format!("{INSIDE}=1"), "--"])
        .args(["sh", "-c", "exec \"$0\" \"$@\" 2>&1"])
        .arg(exe)
        .args(args)
        .status()
        .expect("run tests/vm/run-in-vm");
    eprintln!(
        "the VM ran {args:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Some(status.success())
}
