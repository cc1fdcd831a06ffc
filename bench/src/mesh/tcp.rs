//! New TCP connections per second through the published port: real handshakes from the
//! generator's kernel, one short HTTP/1.0 request each (the task server closes after the
//! response, so the TIME_WAIT state stays on the server side), from a few threads at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a connection-rate run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnRate {
    /// Completed connections (handshake, request, full response, close) per second.
    pub per_sec: f64,
    pub completed: u64,
    /// Connections that failed (refused, reset, timed out, short answer).
    pub failed: u64,
    pub secs: f64,
}

/// Runs `threads` clients against `target` for `duration`, each in the network namespace
/// `netns`. Stops early when `stop` is set.
pub fn run(
    netns: &str,
    target: SocketAddr,
    threads: usize,
    duration: Duration,
    stop: &AtomicBool,
) -> std::io::Result<ConnRate> {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let entered = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> std::io::Result<()> {
                    testbed::sys::enter(netns)?;
                    let mut buf = [0u8; 2048];
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        if one(target, &mut buf) {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("client thread panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
    });
    entered?;
    let secs = t0.elapsed().as_secs_f64();
    let completed = done.load(Ordering::Relaxed);
    Ok(ConnRate {
        per_sec: completed as f64 / secs.max(1e-9),
        completed,
        failed: failed.load(Ordering::Relaxed),
        secs,
    })
}

/// One connection: connect, ask, read the whole answer, close. Whether it all worked.
fn one(target: SocketAddr, buf: &mut [u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        // A failed connect returns at once; do not spin on it.
        std::thread::sleep(Duration::from_millis(1));
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_nodelay(true);
    if s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = 0usize;
    let mut http = false;
    loop {
        match s.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                if got == 0 {
                    http = buf[..n].starts_with(b"HTTP/1.");
                }
                got += n;
            }
            Err(_) => return false,
        }
    }
    http
}
