//! Network-namespace labs for live NAT tests: namespaces, veth pairs,
//! bridges and nftables rulesets, all created by the test and all removed
//! when the [`Lab`] is dropped (also when the test panics).
//!
//! Everything shells out to `ip` (iproute2) and `nft` (nftables); both need
//! root. [`preflight`] says whether this machine can run such a test.
//! Interfaces are created directly inside their namespaces
//! (`ip link add … netns X type veth peer … netns Y`) so nothing ever appears
//! in the host's namespace and concurrent labs cannot collide on names.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Why a lab command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("namespace name {0:?} is not one of this lab's")]
    Foreign(String),
}

/// Whether this machine can run namespace tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    Ready,
    /// Why not: not root, or `ip` / `nft` missing.
    Unavailable(String),
}

fn tool_exists(tool: &str, version_arg: &str) -> bool {
    Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // /proc/self/status "Uid: real effective saved fs": the effective uid decides.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Root, `ip` and `nft` present: the only conditions under which a namespace
/// test may skip. Anything else that goes wrong is a failure.
pub fn preflight() -> Preflight {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("not running as root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)");
    }
    if !tool_exists("ip", "-V") {
        missing.push("`ip` (iproute2) not found");
    }
    if !tool_exists("nft", "--version") {
        missing.push("`nft` (nftables) not found");
    }
    if missing.is_empty() {
        Preflight::Ready
    } else {
        Preflight::Unavailable(missing.join("; "))
    }
}

fn run_with_input(args: &[&str], input: Option<&str>) -> Result<Output, NetnsError> {
    let cmd = args.join(" ");
    let spawn_err = |source| NetnsError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let (program, rest) = args.split_first().ok_or_else(|| NetnsError::Spawn {
        cmd: cmd.clone(),
        source: std::io::Error::other("empty command"),
    })?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn_err)?;
        // Dropping stdin closes it so the tool sees end of input.
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Runs a command and returns its stdout.
pub fn run(args: &[&str]) -> Result<String, NetnsError> {
    Ok(String::from_utf8_lossy(&run_with_input(args, None)?.stdout).into_owned())
}

/// A set of namespaces owned by one test run, named `<prefix>-<short>`.
/// Dropping it deletes them all (their veths and bridges go with them).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

impl Lab {
    /// A lab whose namespaces are named `fnat<pid>-<seq>-…`. Namespaces left by an
    /// earlier run of this kind of lab whose process is gone (killed before
    /// its drop could run) are removed first.
    pub fn new() -> Lab {
        // Several labs may live in one test process (parallel tests).
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        remove_stale_labs();
        Lab {
            prefix: format!("fnat{}-{seq}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// Full namespace name for `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn owned(&self, ns: &str) -> Result<(), NetnsError> {
        if self.namespaces.iter().any(|n| n == ns) {
            Ok(())
        } else {
            Err(NetnsError::Foreign(ns.to_owned()))
        }
    }

    /// Creates namespace `short` with loopback up; returns its full name.
    pub fn add_ns(&mut self, short: &str) -> Result<String, NetnsError> {
        let ns = self.ns(short);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        self.exec(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside one of this lab's namespaces.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, NetnsError> {
        self.owned(ns)?;
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A veth pair `a_if` in `a` ↔ `b_if` in `b`, both up.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<(), NetnsError> {
        self.owned(a)?;
        self.owned(b)?;
        run(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ])?;
        self.exec(a, &["ip", "link", "set", a_if, "up"])?;
        self.exec(b, &["ip", "link", "set", b_if, "up"])?;
        Ok(())
    }

    /// A bridge `name` in `ns`, up.
    pub fn bridge(&self, ns: &str, name: &str) -> Result<(), NetnsError> {
        self.exec(ns, &["ip", "link", "add", name, "type", "bridge"])?;
        self.exec(ns, &["ip", "link", "set", name, "up"])?;
        Ok(())
    }

    /// Enslaves `port` to `bridge`, both in `ns`.
    pub fn attach(&self, ns: &str, port: &str, bridge: &str) -> Result<(), NetnsError> {
        self.exec(ns, &["ip", "link", "set", port, "master", bridge])?;
        Ok(())
    }

    /// Adds `cidr` (e.g. `10.1.0.11/24`) to `dev` in `ns`.
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<(), NetnsError> {
        self.exec(ns, &["ip", "addr", "add", cidr, "dev", dev])?;
        Ok(())
    }

    /// Default route of `ns` via `gateway`.
    pub fn default_route(&self, ns: &str, gateway: &str) -> Result<(), NetnsError> {
        self.exec(ns, &["ip", "route", "add", "default", "via", gateway])?;
        Ok(())
    }

    /// Turns `ns` into a router.
    pub fn forwarding(&self, ns: &str) -> Result<(), NetnsError> {
        self.exec(ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    /// Loads an nftables ruleset (the text of an `nft -f` file) into `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) -> Result<(), NetnsError> {
        self.owned(ns)?;
        run_with_input(
            &["ip", "netns", "exec", ns, "nft", "-f", "-"],
            Some(ruleset),
        )?;
        Ok(())
    }

    /// Packets counted by the nftables rule carrying `comment` in `ns`.
    pub fn nft_counter(&self, ns: &str, comment: &str) -> Result<u64, NetnsError> {
        let listing = self.exec(ns, &["nft", "list", "ruleset"])?;
        let quoted = format!("comment \"{comment}\"");
        for line in listing.lines().filter(|l| l.contains(&quoted)) {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "packets" {
                    if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                        return Ok(n);
                    }
                }
            }
        }
        Err(NetnsError::Failed {
            cmd: format!("nft list ruleset (in {ns})"),
            status: std::process::ExitStatus::default(),
            stderr: format!("no counter rule with {quoted}:\n{listing}"),
        })
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Reverse order; a namespace still holding a process lingers until
        // that process exits, which is why node processes are killed first.
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("netns lab cleanup: {e}");
            }
        }
    }
}

/// Deletes `fnat<pid>-…` namespaces whose creating process no longer exists.
fn remove_stale_labs() {
    let Ok(listing) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("fnat") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns lab: removing stale namespace {name} of dead process {pid}");
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}
