//! The few system facilities the testbed needs: running helper programs, `ip` in a namespace,
//! starting and stopping daemons, and running code with a thread inside a network namespace.
//!
//! Every unsafe block of the crate is here (`setns`, `kill`, `geteuid`), each with its reason.
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Whether the process runs as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For a test that needs root (namespaces, raw sockets): whether it may go on. When not root,
/// under CI (the `CI` variable set, as CI runs `.ci/run` as root) the test **fails**, since a
/// root test skipped there would pass without having run; elsewhere it says that it skips and
/// the test returns.
#[allow(clippy::panic)] // a test helper: failing the calling test is its job
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test} needs root and CI is set: CI runs as root, so skipping would hide this test"
        );
    }
    eprintln!("skipped {test}: it needs root (run with sudo)");
    false
}

/// The prefix of every network namespace meshd's tests and tools create.
pub const NETNS_PREFIX: &str = "meshd-";

/// A network namespace `meshd-<name>`, deleted on drop (also when a test fails).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

fn run_io(cmd: &mut Command) -> std::io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// Creates `meshd-<name>` (replacing a leftover of the same name), loopback up.
    pub fn new(name: &str) -> std::io::Result<Netns> {
        let name = format!("{NETNS_PREFIX}{name}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_io(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> std::io::Result<String> {
        run_io(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> std::io::Result<String> {
        run_io(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace (for sockets opened afterwards).
    pub fn enter(&self) -> std::io::Result<()> {
        enter(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the namespace named `name` (as `ip netns` names it). See
/// [`in_netns`] to run code there on a thread of its own.
pub fn enter(name: &str) -> std::io::Result<()> {
    let f = File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: `f` is an open namespace file that outlives the call; setns only changes the
    // calling thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `prog args...` as a person would type it (for messages).
pub fn cmdline<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> String {
    let mut s = prog.to_string();
    for a in args {
        let a = a.as_ref().to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn spawn_hint(prog: &str) -> String {
    match prog {
        "ip" => "install iproute2: apt-get install -y iproute2".into(),
        "ethtool" => "install it: apt-get install -y ethtool".into(),
        "curl" => "install it: apt-get install -y curl".into(),
        "ping" => "install it: apt-get install -y iputils-ping".into(),
        _ => format!("is {prog} installed and on PATH?"),
    }
}

/// What a finished helper program printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `prog args...` to completion and returns what it printed, whatever its exit status.
pub fn output<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Result<Output> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            program: prog.to_string(),
            source,
            hint: spawn_hint(prog),
        })?;
    Ok(Output {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `prog args...`; an exit status other than 0 is an error carrying its stderr.
pub fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Result<String> {
    let out = output(prog, args)?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(Error::Command {
            cmdline: cmdline(prog, args),
            status: out.code.map_or_else(
                || "killed by a signal".to_string(),
                |c| format!("exit status {c}"),
            ),
            stderr: if out.stderr.trim().is_empty() {
                out.stdout
            } else {
                out.stderr
            },
        })
    }
}

/// `ip args...` in the current namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip -n NS args...`: an `ip` command applied inside namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// `ip netns exec NS prog args...`.
pub fn exec_in(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns, prog];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// Like [`exec_in`] but returns the output whatever the exit status.
pub fn exec_in_output(ns: &str, prog: &str, args: &[&str]) -> Result<Output> {
    let mut a = vec!["netns", "exec", ns, prog];
    a.extend_from_slice(args);
    output("ip", &a)
}

/// Creates namespace `ns` with loopback up and IPv6 off (no router solicitations or DAD noise
/// on the wires meshd reads).
pub fn netns_add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    exec_in(
        ns,
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// The network namespaces whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let mut v: Vec<String> = match std::fs::read_dir("/run/netns") {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("reading /run/netns", e)),
    };
    v.sort();
    Ok(v)
}

/// Turns off checksum offload, segmentation and receive coalescing on `dev` in `ns`.
///
/// Frames a veth carries from the kernel stack may hold an unfinished checksum
/// (CHECKSUM_PARTIAL) or be GRO/TSO super-frames larger than the MTU; meshd reads raw frames
/// through AF_PACKET and drops both. With these off, the kernel finishes every frame in software.
pub fn offloads_off(ns: &str, dev: &str) -> Result<()> {
    exec_in(
        ns,
        "ethtool",
        &[
            "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    )?;
    Ok(())
}

/// Turns `br_netfilter` off for the bridges of namespace `ns` (`bridge-nf-call-iptables` and
/// its siblings, per namespace), when the module is loaded: else the host's firewall rules see
/// the frames crossing the testbed's bridges, and its IPv4 sanity checks drop malformed frames
/// before they reach meshd, so a test of meshd's own checks would pass without reaching it.
pub fn bridge_nf_off(ns: &str) -> Result<()> {
    exec_in(
        ns,
        "sh",
        &[
            "-c",
            "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ ! -e \"$f\" ] || echo 0 > \"$f\" || exit 1; done",
        ],
    )?;
    Ok(())
}

/// Starts `prog args...` inside namespace `ns` as a daemon of its own process group, with
/// stdin closed and stdout/stderr appended to `log`. The returned child's pid is the daemon's
/// (`ip netns exec` execs the program).
pub fn spawn_in(
    ns: &str,
    prog: &Path,
    args: &[String],
    log: &Path,
    env: &[(&str, &str)],
) -> Result<Child> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let f2 = f
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).stdout(f).stderr(f2).process_group(0);
    c.spawn().map_err(|source| Error::Spawn {
        program: "ip".into(),
        source,
        hint: spawn_hint("ip"),
    })
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "pid (comm) S ...".
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The command line of process `pid`, arguments joined by spaces.
pub fn proc_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_string(),
    )
}

pub fn signal(pid: u32, sig: i32) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return;
    };
    if p <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is a single positive process id
    // (never 0, -1 or 1, which would address groups or init).
    unsafe {
        libc::kill(p, sig);
    }
}

/// Stops process `pid` if its command line contains `expect` (so a recycled pid is left alone):
/// SIGTERM, then SIGKILL after `grace`. Returns whether it was ours and is gone.
pub fn stop_pid(pid: u32, expect: &str, grace: Duration) -> bool {
    match proc_cmdline(pid) {
        Some(c) if c.contains(expect) => {}
        _ => return false,
    }
    if !alive(pid) {
        return true;
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        signal(pid, libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    !alive(pid)
}

/// Kills every process still inside namespace `ns` (found by `ip netns pids`): SIGTERM, then
/// SIGKILL for those that stay.
pub fn kill_netns_pids(ns: &str) {
    let pids = |ns: &str| -> Vec<u32> {
        output("ip", &["netns", "pids", ns])
            .map(|o| {
                o.stdout
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = pids(ns);
    if first.is_empty() {
        return;
    }
    for &p in &first {
        signal(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids(ns).iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids(ns) {
        signal(p, libc::SIGKILL);
    }
}

/// Runs `f` on a new thread that has joined network namespace `ns`, and returns its result.
///
/// Sockets keep the namespace they were created in, so a `TcpStream` or `UdpSocket` made in
/// `f` can be returned and used from any thread afterwards.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path)
        .map_err(|e| Error::io(format!("opening {path} (does namespace {ns} exist?)"), e))?;
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            // SAFETY: `file` is an open namespace file that outlives the call; setns with
            // CLONE_NEWNET moves only the calling thread, which is ours and ends after `f`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(Error::io(
                    format!("entering namespace {ns}"),
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(f())
        });
        h.join().unwrap_or_else(|_| {
            Err(Error::msg(format!(
                "a probe thread in namespace {ns} panicked"
            )))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_needs_it() {
        assert_eq!(
            cmdline("ip", &["-n", "meshd-tb-n1", "link"]),
            "ip -n meshd-tb-n1 link"
        );
        assert_eq!(cmdline("curl", &["-H", "X: y", ""]), "curl -H 'X: y' ''");
    }

    #[test]
    fn this_process_is_alive_and_named() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(proc_cmdline(me).is_some_and(|c| !c.is_empty()));
        assert!(!alive(u32::MAX - 1));
    }
}
