//! A TPACKET_V3 receive ring that hands out each frame with the time the kernel put it in the
//! ring, for the sink side of `pktgen`.
//!
//! meshd's own [`dataplane::port::afpacket::AfPacketPort`] copies frames into buffers and drops
//! the ring header, which holds the timestamp. A latency sink needs that timestamp: a V3 block is
//! handed to user space only when it is full or its timer (1 ms at least) retires it, so the time
//! user space sees a frame says more about the block timer than about the path. The kernel
//! stamps every frame with `CLOCK_REALTIME` as it copies it into the ring (`tpacket_rcv`: the
//! skb's receive stamp if it has one, else the current time; a frame that crossed a veth into
//! another namespace has had its stamp cleared, so it is the current time); the generator stamps
//! its send time with the same clock, so the difference is the one-way latency of the path up to
//! the sink's ring, whatever the sink's own wake-ups.
//!
//! Every unsafe block of the crate is here: the reads of the shared ring (through meshd's
//! `dataplane::port::sys`, which holds the system calls), and two clock helpers ([`realtime_ns`], [`fine_timer_slack`]).
//! Block ownership (`block_status`) is read with acquire and written with release ordering; the
//! rest of a block is read only while user space owns it.
#![allow(unsafe_code)]

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use dataplane::port::sys::{self, IfLookup, Mapping};

const BLOCK_STATUS: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PKTS: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST_PKT: usize = offset_of!(libc::tpacket_block_desc, hdr)
    + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);

/// Kernel counters of a ring, since the last read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingDrops {
    /// Frames the kernel dropped because the ring was full.
    pub dropped: u64,
    /// Times the whole ring was owned by user space.
    pub frozen: u64,
}

/// A receive-only TPACKET_V3 ring on one interface. Unmapped and closed on drop.
#[derive(Debug)]
pub struct RxRing {
    // Declared before `fd`, so the mapping goes before the socket closes.
    map: Mapping,
    fd: OwnedFd,
    block_size: usize,
    block_count: usize,
    block: usize,
}

fn ctx(what: &str, ifname: &str) -> impl FnOnce(io::Error) -> io::Error {
    let m = format!("{what} on {ifname}");
    move |e| io::Error::new(e.kind(), format!("{m}: {e}"))
}

impl RxRing {
    /// Opens a ring of `block_count` blocks of `block_size` bytes (a multiple of the page size)
    /// on `ifname` in the calling thread's network namespace. `timeout_ms` is the block
    /// retirement timer (at least 1). Frames of any destination MAC are seen (a veth hands the
    /// sockets every frame it carries); frames this host sends are not. The system calls are
    /// meshd's own (`dataplane::port::sys`).
    // Casts: a ring version constant, far inside c_int.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    pub fn open(
        ifname: &str,
        block_size: u32,
        block_count: u32,
        timeout_ms: u32,
    ) -> io::Result<RxRing> {
        if block_size < 4096 || !block_size.is_multiple_of(4096) || block_count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring blocks must be a non-zero multiple of 4096 bytes, and at least one",
            ));
        }
        let (_, ifindex) = sys::interface(ifname).map_err(|e| match e {
            IfLookup::BadName => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname:?} is not an interface name"),
            ),
            IfLookup::NoSuchInterface => io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {ifname} in this network namespace"),
            ),
        })?;
        // Protocol 0: nothing is received until the bind below.
        let fd = sys::raw_socket(libc::AF_PACKET)
            .map_err(ctx("socket(AF_PACKET) (needs root)", ifname))?;
        let s = fd.as_raw_fd();
        let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        sys::setsockopt_level(s, libc::SOL_PACKET, libc::PACKET_VERSION, &v3)
            .map_err(ctx("PACKET_VERSION 3", ifname))?;
        let one: libc::c_int = 1;
        sys::setsockopt_level(s, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
            .map_err(ctx("PACKET_IGNORE_OUTGOING", ifname))?;
        let frame_size = 2048u32;
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: block_count,
            tp_frame_size: frame_size,
            tp_frame_nr: block_size / frame_size * block_count,
            tp_retire_blk_tov: timeout_ms.max(1),
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        sys::setsockopt_level(s, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
            .map_err(ctx("PACKET_RX_RING", ifname))?;
        let len = block_size as usize * block_count as usize;
        let map = Mapping::new(Some(s), len, 0).map_err(ctx("mmap of the ring", ifname))?;
        sys::bind_link(s, ifindex).map_err(ctx("bind", ifname))?;
        Ok(RxRing {
            map,
            fd,
            block_size: block_size as usize,
            block_count: block_count as usize,
            block: 0,
        })
    }

    /// Calls `f(frame, kernel_time_ns)` for every frame of every block the kernel has handed
    /// over, gives the blocks back, and returns how many frames it saw.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8], u64)) -> usize {
        let mut n = 0;
        loop {
            let off = self.block * self.block_size;
            if self.map.status(off + BLOCK_STATUS).load(Ordering::Acquire) & libc::TP_STATUS_USER
                == 0
            {
                return n;
            }
            // SAFETY: the block is owned by user space (TP_STATUS_USER seen with acquire
            // ordering); both u32 fields are in its descriptor, inside the mapping.
            let (num, first): (u32, u32) = unsafe {
                (
                    self.map.read(off + BLOCK_NUM_PKTS),
                    self.map.read(off + BLOCK_FIRST_PKT),
                )
            };
            let mut at = first as usize;
            for _ in 0..num {
                if at + size_of::<libc::tpacket3_hdr>() > self.block_size {
                    break;
                }
                // SAFETY: the header lies inside the owned block (checked just above).
                let h: libc::tpacket3_hdr = unsafe { self.map.read(off + at) };
                let mac = at + usize::from(h.tp_mac);
                let snap = h.tp_snaplen as usize;
                if mac + snap > self.block_size {
                    break;
                }
                // SAFETY: `mac + snap <= block_size`, so the bytes are inside the owned block,
                // initialised by the kernel, and not written again until the block is released
                // below, after the slice's last use.
                let frame = unsafe { self.map.bytes(off + mac, snap) };
                let ns = u64::from(h.tp_sec) * 1_000_000_000 + u64::from(h.tp_nsec);
                f(frame, ns);
                n += 1;
                if h.tp_next_offset == 0 {
                    break;
                }
                at += h.tp_next_offset as usize;
            }
            self.map
                .status(off + BLOCK_STATUS)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.block = (self.block + 1) % self.block_count;
        }
    }

    /// Sleeps until a block is ready or `ms` pass.
    pub fn wait(&self, ms: u32) {
        sys::wait_readable(
            &[self.fd.as_raw_fd()],
            std::time::Duration::from_millis(u64::from(ms)),
        );
    }

    /// The kernel's drop counters since the last call (`PACKET_STATISTICS` resets on read).
    pub fn drops(&mut self) -> RingDrops {
        // SAFETY: tpacket_stats_v3 is plain data; all zeroes is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        match sys::getsockopt_level(
            self.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st,
        ) {
            Ok(_) => RingDrops {
                dropped: u64::from(st.tp_drops),
                frozen: u64::from(st.tp_freeze_q_cnt),
            },
            Err(_) => RingDrops::default(),
        }
    }
}

/// `CLOCK_REALTIME` in nanoseconds: the clock the kernel stamps ring frames with.
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Makes the calling thread's sleeps end within about a microsecond of their deadline instead
/// of the default 50 µs timer slack, so a paced generator can sleep between batches rather than
/// spin (and leave the CPU to the system under test).
pub fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only the calling thread's timer
    // slack; it cannot fail with a non-zero value.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}
