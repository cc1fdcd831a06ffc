//! A bell: how a thread with nothing to do sleeps until another gives it work, instead of
//! waking every few hundred microseconds to look (an idle meshd cost 4–5% of a CPU that way;
//! fifty of them filled this two-core machine). The sleeper arms the bell, looks at its queues
//! once more, and waits in `ppoll` on the bell's eventfd (beside its ports' descriptors); a
//! thread that queued work for it rings the bell, which costs a fence and a load while the
//! sleeper is busy (no system call on a loaded fast path) and one `write` when it sleeps.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};

use crate::port::sys;

#[derive(Debug)]
pub struct Bell {
    armed: AtomicBool,
    /// None when the system refused an eventfd: the sleeper then sleeps its short timeouts.
    fd: Option<OwnedFd>,
}

impl Default for Bell {
    fn default() -> Self {
        Self::new()
    }
}

impl Bell {
    pub fn new() -> Bell {
        Bell {
            armed: AtomicBool::new(false),
            fd: sys::eventfd().ok(),
        }
    }

    /// Whether the bell can wake a sleeper (it has an eventfd).
    pub fn works(&self) -> bool {
        self.fd.is_some()
    }

    /// The descriptor to wait on (readable once rung).
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The sleeper, before its last look at its queues: from here a ring wakes it.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
        // Pairs with the fence in `ring`: either the sleeper's last look sees the work queued,
        // or the ringer sees the bell armed.
        fence(Ordering::SeqCst);
    }

    /// The sleeper, awake again (or not sleeping after all): rings no longer needed, and any
    /// ring taken off the eventfd.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
        if let Some(fd) = &self.fd {
            sys::eventfd_take(fd.as_raw_fd());
        }
    }

    /// Wakes the sleeper if it sleeps (call after queuing its work).
    #[inline]
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.armed.load(Ordering::Relaxed) && self.armed.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        if let Some(fd) = &self.fd {
            sys::eventfd_add(fd.as_raw_fd());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_ring_wakes_an_armed_sleeper_and_only_an_armed_one() {
        let bell = Arc::new(Bell::new());
        assert!(bell.works());
        let fd = bell.fd().unwrap();
        // Not armed: a ring writes nothing (the eventfd stays unreadable).
        bell.ring();
        let t0 = Instant::now();
        crate::port::sys::wait_readable(&[fd], Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(25));
        // Armed: a ring from another thread ends a long wait at once.
        bell.arm();
        let b = Arc::clone(&bell);
        let ringer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.ring();
        });
        let t0 = Instant::now();
        crate::port::sys::wait_readable(&[fd], Duration::from_secs(5));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        ringer.join().unwrap();
        // Disarmed: the ring is taken off, the next wait sleeps its timeout again.
        bell.disarm();
        let t0 = Instant::now();
        crate::port::sys::wait_readable(&[fd], Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(25));
    }
}
