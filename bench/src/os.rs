//! Small operating-system helpers of the bench (the ring and clock ones are in [`crate::rxring`]).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Takes an exclusive, non-blocking `flock` on `path` (created if missing), held until the
/// returned file is dropped; `Ok(None)` when another process holds it.
pub fn exclusive_lock(path: &Path) -> io::Result<Option<File>> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: `f` is an open file that outlives the call; flock only changes its lock state.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Sends SIGTERM to `pid` (a child this process started and has not reaped yet).
pub fn terminate(pid: i32) -> io::Result<()> {
    // SAFETY: kill(2) only sends a signal; the caller names its own unreaped child.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `cmd`'s process start allowed on every CPU, whatever the calling thread is pinned to
/// (a pinned generator's children would otherwise inherit its one core, and a system under
/// test could not pin its own threads elsewhere).
pub fn unpinned(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only makes two system
    // calls on a stack-local set (no allocation, no lock), which is what pre_exec allows.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for c in 0..libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
            // CPUs that do not exist are ignored by the kernel; a failure leaves the inherited set.
            let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

/// Clock ticks per second (`/proc/stat`'s unit), 100 if the system does not say.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a configuration value; it takes no pointer.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let p = std::env::temp_dir().join(format!("bench-lock-{}", std::process::id()));
        let a = exclusive_lock(&p).unwrap();
        assert!(a.is_some());
        assert!(exclusive_lock(&p).unwrap().is_none());
        drop(a);
        // Another test of this process may be forking a child right now: until that child
        // execs, it shares the lock's open file (O_CLOEXEC closes it only at exec), so allow it
        // a moment to let go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut again = exclusive_lock(&p).unwrap();
        while again.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            again = exclusive_lock(&p).unwrap();
        }
        assert!(again.is_some());
        let _ = std::fs::remove_file(&p);
    }
}
