//! What the tests driving a running `fabricctl up` share: the process
//! guard, `fabricctl` with only the context variable, and a bounded wait.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_fabricctl");

/// Stops `up` with Ctrl-C (SIGINT) however the test ends.
pub(crate) struct Up(pub(crate) Child);
impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fabricctl ARGS` with only the context variable to find the fleet.
pub(crate) fn ctl(ctx: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FABRIC_CONTEXT", ctx)
        .env_remove("HOME")
        .output()
        .expect("fabricctl runs")
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match ok() {
            Ok(()) => return,
            Err(last) if start.elapsed() > within => {
                panic!("{what}: not after {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}
