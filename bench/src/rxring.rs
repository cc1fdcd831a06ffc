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
//! Every unsafe block of the crate is here: the socket set-up, the reads of the shared ring, and
//! two clock helpers ([`realtime_ns`], [`fine_timer_slack`]).
//! Block ownership (`block_status`) is read with acquire and written with release ordering; the
//! rest of a block is read only while user space owns it.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

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
    map: Map,
    fd: OwnedFd,
    block_size: usize,
    block_count: usize,
    block: usize,
}

#[derive(Debug)]
struct Map {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by one `Map`, owned by one `RxRing`, and only touched through that
// ring's `&mut self` methods; moving it to another thread moves every access with it.
unsafe impl Send for Map {}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are what mmap returned; no slice into the mapping outlives the
        // `RxRing` method that made it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Map {
    fn status(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: callers pass a block start plus BLOCK_STATUS: inside the mapping (block index
        // below block_count) and 4-byte aligned (blocks are page aligned). The kernel writes the
        // word concurrently; user space only accesses it through this atomic.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
    }
}

// Casts: system-call constants and struct sizes, far inside the target type.
#[allow(clippy::cast_possible_truncation)]
fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is an initialised T that lives across the call, and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            ptr::from_ref(val).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ctx(what: &str, ifname: &str) -> impl FnOnce(io::Error) -> io::Error {
    let m = format!("{what} on {ifname}");
    move |e| io::Error::new(e.kind(), format!("{m}: {e}"))
}

impl RxRing {
    /// Opens a ring of `block_count` blocks of `block_size` bytes (a multiple of the page size)
    /// on `ifname` in the calling thread's network namespace. `timeout_ms` is the block
    /// retirement timer (at least 1). Frames of any destination MAC are seen (a veth hands the
    /// sockets every frame it carries); frames this host sends are not.
    // Casts: system-call constants and struct sizes, far inside the target type.
    #[allow(clippy::cast_possible_truncation)]
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
        let cname = CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        // SAFETY: `cname` is NUL-terminated and lives across the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {ifname} in this network namespace"),
            ));
        }
        // SAFETY: a plain system call with constant arguments. Protocol 0: nothing is received
        // until the bind below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(ctx("socket(AF_PACKET) (needs root)", ifname)(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(s, libc::SOL_PACKET, libc::PACKET_VERSION, &v3)
            .map_err(ctx("PACKET_VERSION 3", ifname))?;
        let one: libc::c_int = 1;
        setsockopt(s, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)
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
        setsockopt(s, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)
            .map_err(ctx("PACKET_RX_RING", ifname))?;
        let len = block_size as usize * block_count as usize;
        // SAFETY: maps exactly the ring just configured; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                s,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(ctx("mmap of the ring", ifname)(io::Error::last_os_error()));
        }
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        let map = Map { base, len };
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                s,
                ptr::from_ref(&sll).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(ctx("bind", ifname)(io::Error::last_os_error()));
        }
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
            // ordering); both u32 fields are in its descriptor, inside the mapping, 4-aligned.
            let (num, first) = unsafe {
                let b = self.map.base.as_ptr().add(off);
                (
                    ptr::read(b.add(BLOCK_NUM_PKTS).cast::<u32>()),
                    ptr::read(b.add(BLOCK_FIRST_PKT).cast::<u32>()),
                )
            };
            let mut at = first as usize;
            for _ in 0..num {
                if at + size_of::<libc::tpacket3_hdr>() > self.block_size {
                    break;
                }
                // SAFETY: the header lies inside the owned block (checked just above).
                let h: libc::tpacket3_hdr = unsafe {
                    ptr::read_unaligned(
                        self.map
                            .base
                            .as_ptr()
                            .add(off + at)
                            .cast::<libc::tpacket3_hdr>(),
                    )
                };
                let mac = at + usize::from(h.tp_mac);
                let snap = h.tp_snaplen as usize;
                if mac + snap > self.block_size {
                    break;
                }
                // SAFETY: `mac + snap <= block_size`, so the bytes are inside the owned block,
                // initialised by the kernel, and not written again until the block is released
                // below, after the slice's last use.
                let frame = unsafe {
                    std::slice::from_raw_parts(self.map.base.as_ptr().add(off + mac), snap)
                };
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
    pub fn wait(&self, ms: i32) {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that outlives the call.
        unsafe { libc::poll(&mut p, 1, ms) };
    }

    /// The kernel's drop counters since the last call (`PACKET_STATISTICS` resets on read).
    // Casts: system-call constants and struct sizes, far inside the target type.
    #[allow(clippy::cast_possible_truncation)]
    pub fn drops(&mut self) -> RingDrops {
        // SAFETY: tpacket_stats_v3 is plain data; all zeroes is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes and `len` is a valid in/out length.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                ptr::from_mut(&mut st).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return RingDrops::default();
        }
        RingDrops {
            dropped: u64::from(st.tp_drops),
            frozen: u64::from(st.tp_freeze_q_cnt),
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
