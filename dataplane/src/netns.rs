//! Network namespaces for tests and tools: create one with a guard that deletes it, run `ip`
//! inside it, and move the calling thread into it. Names always carry meshd's prefix.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;

/// The prefix every namespace meshd's tests and tools create starts with.
pub const PREFIX: &str = "meshd-";

/// A network namespace deleted on drop (also when a test fails).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

/// Whether this process can create namespaces (is root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    /// Creates `meshd-<name>` (replacing a leftover of the same name).
    pub fn new(name: &str) -> io::Result<Netns> {
        let name = format!("{PREFIX}{name}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> io::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into the namespace (for sockets opened afterwards).
    pub fn enter(&self) -> io::Result<()> {
        enter(&self.name)
    }
}

/// Moves the calling thread into the namespace named `name` (as `ip netns` names it).
pub fn enter(name: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: `f` is an open namespace file that outlives the call; setns only changes the
    // calling thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
