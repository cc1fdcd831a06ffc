//! What the testbed needs from the machine, checked before it touches anything: root, and the
//! programs it runs (`ip`, `ethtool`, `curl`, `ping`, `tracepath`, `sysctl`). Missing Debian packages are
//! installed with apt-get when running as root; otherwise the message says what to install.

use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

/// Program → the Debian package that has it.
pub const NEEDED: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("bridge", "iproute2"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("tracepath", "iputils-tracepath"),
    ("sysctl", "procps"),
];

/// Whether `prog` is on PATH.
pub fn on_path(prog: &str) -> bool {
    which(prog).is_some()
}

/// Where `prog` is on PATH.
pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The packages of the programs that are missing.
pub fn missing() -> Vec<(&'static str, &'static str)> {
    NEEDED
        .iter()
        .copied()
        .filter(|(prog, _)| !on_path(prog))
        .collect()
}

/// Checks root and the programs; installs missing packages when `install` and root.
pub fn check(install: bool) -> Result<()> {
    let miss = missing();
    let pkgs: Vec<&str> = miss.iter().map(|(_, p)| *p).collect();
    let progs: Vec<&str> = miss.iter().map(|(p, _)| *p).collect();
    if !sys::is_root() {
        let mut m = String::from(
            "the testbed needs root: it creates network namespaces, veths and bridges, and meshd opens AF_PACKET sockets. Run it with sudo.",
        );
        if !miss.is_empty() {
            m.push_str(&format!(
                "\nAlso missing: {} (install with: sudo apt-get install -y {})",
                progs.join(", "),
                pkgs.join(" ")
            ));
        }
        return Err(Error::msg(m));
    }
    if miss.is_empty() {
        return Ok(());
    }
    if !install || !on_path("apt-get") {
        return Err(Error::msg(format!(
            "missing programs: {} (Debian packages: {}); install them, e.g. apt-get install -y {}",
            progs.join(", "),
            pkgs.join(", "),
            pkgs.join(" ")
        )));
    }
    eprintln!(
        "testbed: {} missing; installing: apt-get install -y {}",
        progs.join(", "),
        pkgs.join(" ")
    );
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&pkgs);
    if sys::run("apt-get", &args).is_err() {
        eprintln!("testbed: the install failed; refreshing the package lists (apt-get update) and trying again");
        sys::run("apt-get", &["update"])?;
        sys::run("apt-get", &args)?;
    }
    let still: Vec<&str> = missing().iter().map(|(p, _)| *p).collect();
    if !still.is_empty() {
        return Err(Error::msg(format!(
            "still missing after apt-get install: {}",
            still.join(", ")
        )));
    }
    eprintln!("testbed: installed {}", pkgs.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_on_path_and_nonsense_is_not() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-meshd-testbed"));
    }
}
