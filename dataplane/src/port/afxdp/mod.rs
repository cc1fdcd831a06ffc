//! AF_XDP port (cargo feature `afxdp`): one XDP socket on one queue of an interface, a UMEM of
//! fixed 2 KiB frames shared with the kernel, and a 6-instruction XDP program that sends every
//! frame of that queue to the socket.
//!
//! - **Set-up**, all with plain system calls (no libbpf, no libxdp, nothing to build), in the
//!   steps [`AfXdpPort::open`] takes one by one: `check` the configuration; `control_socket`
//!   (an AF_PACKET socket that reads the MTU and holds promiscuous mode); an `AF_XDP` socket;
//!   `umem::register` (anonymous memory, `XDP_UMEM_REG`); `Rings::map` (the four rings — fill,
//!   completion, RX, TX — sized with `setsockopt` and mapped at the offsets `XDP_MMAP_OFFSETS`
//!   gives, in `ring.rs`); `bind_queue` to (interface, queue), letting the kernel pick
//!   zero-copy when the driver has it, copy mode otherwise (veth: copy); `bpf::attach`: an
//!   `XSKMAP` holding the socket at the queue's index, the program
//!   `bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)` loaded with `bpf(BPF_PROG_LOAD)`
//!   and attached with `bpf(BPF_LINK_CREATE)`, in native (driver) mode when the driver has it,
//!   generic (skb) mode otherwise ([`XdpMode`]), in `bpf.rs`.
//! - **Detach**: the attachment is a BPF link, which lives as long as its file descriptor. The
//!   port holds the only one, so dropping the port (or the process ending, even killed) detaches
//!   the program: the interface is left as it was found. Frames of other queues, and all frames
//!   once the socket is gone, go to the kernel stack as before (`XDP_PASS`).
//! - **UMEM frames** are split in two fixed halves. RX frames all start in the fill ring; a
//!   received frame is copied into a [`PacketBuf`] from the pool, stamped with the configured
//!   [`PortId`], and its UMEM frame goes straight back to the fill ring (the fill ring holds every
//!   RX frame, so it always has room). TX frames sit on a free list: a frame to send is copied into
//!   one, described on the TX ring and the kernel kicked with one `sendto(MSG_DONTWAIT)` per burst
//!   (copy mode sends nothing without it, and at most 32 frames per kick: [`Port::flush`] kicks
//!   again while frames wait); finished frames come back through the completion ring.
//! - **What the port sees**: everything the interface receives on the queue, as an AF_PACKET
//!   port does (an XDP program runs before any MAC filtering of the stack), and nothing it
//!   sends. Unlike AF_PACKET, the kernel stack no longer sees those frames (meshd owns its
//!   interfaces and gives the kernel no address on them, so nothing changes for it).
//! - **One socket per queue**: a veth has one queue, so one port (one worker) per interface;
//!   opening a second port on the same interface fails with [`AfXdpError::Busy`].
//!
//! Needs Linux 5.9 or newer (XDP BPF links), root (or CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW).
//! Every unsafe block is here: the system calls and the accesses to the shared rings and UMEM.
//! Ring indices are read with acquire and written with release ordering, as the kernel's
//! `xsk_queue.h` pairs them; ring entries and UMEM frames are touched only while user space
//! owns them.
#![allow(unsafe_code)]

mod bpf;
mod ring;
mod umem;

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

use super::sys::{
    add_promiscuous, bind, getsockopt_level, interface, interface_mtu, kick, raw_socket, sendable,
    IfLookup, Mapping,
};
use super::{Burst, Port, PortCounters};
use crate::buf::{Pool, PortId};
use ring::{Ring, Rings};

/// Bytes per UMEM frame (the kernel's minimum chunk size; a page holds two). The kernel keeps
/// 256 bytes free in front of a received frame (`XDP_PACKET_HEADROOM`), so frames up to 1792
/// bytes are received; longer ones are dropped by the kernel (no multi-buffer `XDP_USE_SG`).
pub const FRAME_SIZE: u32 = 2048;

/// Where the XDP program runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native if the driver has it (veth, most NIC drivers), else generic.
    #[default]
    Auto,
    /// In the driver, before any `sk_buff` is built (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// After the stack built the `sk_buff` (`XDP_FLAGS_SKB_MODE`): any interface, slower.
    Generic,
}

/// How to open an [`AfXdpPort`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// Stamped on every received buffer.
    pub port: PortId,
    /// The interface queue to bind to (a veth has only queue 0).
    pub queue: u32,
    /// UMEM frames of [`FRAME_SIZE`] bytes: half for RX, half for TX; each ring holds its half.
    /// A power of two, 64 to 65536.
    pub frames: u32,
    /// Where the program runs.
    pub mode: XdpMode,
    /// Put the interface in promiscuous mode while the port is open (frames for other MACs
    /// than the interface's, on a NIC that filters them).
    pub promiscuous: bool,
}

impl Default for AfXdpConfig {
    /// Queue 0, 4096 frames (8 MiB of UMEM: 2048 RX, 2048 TX), native mode if available.
    fn default() -> Self {
        AfXdpConfig {
            port: PortId::Uplink,
            queue: 0,
            frames: 4096,
            mode: XdpMode::Auto,
            promiscuous: false,
        }
    }
}

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error(
        "interface name {0:?} is not valid: it must be 1 to 15 bytes, without NUL, '/' or spaces"
    )]
    BadName(String),
    #[error("no such interface {0}: check the name with `ip link` (and that meshd runs in the network namespace that has it)")]
    NoSuchInterface(String),
    #[error("opening an AF_XDP socket and loading its XDP program on {0} needs root (CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW): run meshd as root")]
    PermissionDenied(String),
    #[error("invalid AF_XDP config: {0}")]
    Config(String),
    #[error("{what}: {ifname} already has an XDP program or AF_XDP socket on this queue (another meshd or port?): see `ip link show dev {ifname}`; an AF_XDP port is one per interface queue, so one worker per veth")]
    Busy { ifname: String, what: &'static str },
    #[error("the kernel refused {what} on {ifname} ({source}): meshd's AF_XDP port needs Linux 5.9 or newer with CONFIG_XDP_SOCKETS and CONFIG_BPF_SYSCALL")]
    Unsupported {
        ifname: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op} on {ifname} failed: {source}")]
    Io {
        ifname: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Counters of one port. The kernel's (`rx_dropped`, `rx_ring_full`, `rx_fill_empty`,
/// `rx_invalid`, `tx_invalid`) are brought up to date by [`AfXdpPort::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    /// Frames handed out by `rx_burst`.
    pub rx: u64,
    /// Frames put on the TX ring.
    pub tx: u64,
    /// Frames dropped because no TX frame of the UMEM was free (all in flight).
    pub tx_ring_full: u64,
    /// Frames dropped because they were shorter than an Ethernet header or longer than the MTU
    /// (as read at open) allows, plus 4 for a tagged frame.
    pub tx_bad_len: u64,
    /// Kicks the kernel refused for another reason than "more to do" (device down...). The
    /// frames stay queued and go with the next kick.
    pub tx_kick_failed: u64,
    /// Frames the kernel dropped for want of a UMEM frame in the fill ring (`rx_dropped`).
    pub rx_dropped: u64,
    /// Frames the kernel dropped because the RX ring was full (`rx_ring_full`).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (`rx_fill_ring_empty_descs`).
    pub rx_fill_empty: u64,
    /// Frames dropped because they did not fit a [`crate::buf::PacketBuf`].
    pub rx_too_long: u64,
    /// RX descriptors pointing outside the UMEM (never seen; a guard against an ABI mismatch).
    pub rx_bad_desc: u64,
    /// Descriptors the kernel found invalid (`rx_invalid_descs`, `tx_invalid_descs`).
    pub rx_invalid: u64,
    pub tx_invalid: u64,
}

/// Names a failed set-up step for the user: the interface, what was being done, and the
/// kernel's answer sorted into permission, busy, unsupported or plain I/O.
#[derive(Debug, Clone, Copy)]
struct Step<'a>(&'a str);

impl<'a> Step<'a> {
    /// A failure that says nothing about what the kernel or the interface allows.
    fn io(self, op: &'static str) -> impl Fn(io::Error) -> AfXdpError + 'a {
        move |source| AfXdpError::Io {
            ifname: self.0.to_owned(),
            op,
            source,
        }
    }

    /// A failure that may be the kernel refusing: no permission, the queue or interface taken,
    /// or AF_XDP/XDP not supported.
    fn refused(self, what: &'static str) -> impl Fn(io::Error) -> AfXdpError + 'a {
        move |source: io::Error| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                AfXdpError::PermissionDenied(self.0.to_owned())
            }
            Some(libc::EBUSY) | Some(libc::EEXIST) => AfXdpError::Busy {
                ifname: self.0.to_owned(),
                what,
            },
            Some(libc::EINVAL)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EAFNOSUPPORT)
            | Some(libc::ENOSYS) => AfXdpError::Unsupported {
                ifname: self.0.to_owned(),
                what,
                source,
            },
            _ => self.io(what)(source),
        }
    }
}

/// Step 1: the configuration is one the kernel can take.
fn check(cfg: &AfXdpConfig) -> Result<(), AfXdpError> {
    if !cfg.frames.is_power_of_two() || !(64..=65536).contains(&cfg.frames) {
        return Err(AfXdpError::Config(format!(
            "frames {} must be a power of two from 64 to 65536",
            cfg.frames
        )));
    }
    Ok(())
}

/// Step 2: the interface's MTU and, when asked, promiscuous mode. An AF_PACKET socket of
/// protocol 0 receives nothing: it reads the MTU (an XDP socket has no ioctls) and, kept open,
/// holds the interface promiscuous.
// Casts: an interface index and a constant, far inside the C types.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn control_socket(
    step: Step,
    cname: &CString,
    ifindex: u32,
    promiscuous: bool,
) -> Result<(usize, Option<OwnedFd>), AfXdpError> {
    let ctl = raw_socket(libc::AF_PACKET).map_err(step.refused("socket(AF_PACKET)"))?;
    let mtu =
        interface_mtu(ctl.as_raw_fd(), cname).map_err(step.io("reading the MTU (SIOCGIFMTU)"))?;
    if !promiscuous {
        return Ok((mtu, None));
    }
    add_promiscuous(ctl.as_raw_fd(), ifindex).map_err(step.io("promiscuous mode"))?;
    Ok((mtu, Some(ctl)))
}

/// Step 5: binds the socket to (interface, queue), letting the kernel pick zero-copy when the
/// driver has it. The kernel lets go of a closed socket's queue in a work item, after the
/// close: a socket of a process that just ended (a meshd restarting) can hold it for a moment,
/// so EBUSY is retried for up to 2 s.
// Casts: a constant and a struct size, far inside the C types.
#[allow(clippy::cast_possible_truncation)]
fn bind_queue(step: Step, s: RawFd, ifindex: u32, queue: u32) -> Result<(), AfXdpError> {
    let sxdp = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: 0,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    let t0 = std::time::Instant::now();
    loop {
        let Err(e) = bind(s, &sxdp) else {
            return Ok(());
        };
        if e.raw_os_error() == Some(libc::EBUSY)
            && t0.elapsed() <= std::time::Duration::from_secs(2)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => AfXdpError::Config(format!(
                "{} has no queue {queue} (or refused the socket: {e})",
                step.0
            )),
            Some(libc::ENODEV) => AfXdpError::NoSuchInterface(step.0.to_owned()),
            _ => step.refused("bind")(e),
        });
    }
}

/// An AF_XDP socket on one interface queue, with its UMEM, rings and XDP program. See the
/// module documentation.
///
/// Fields drop in order: the BPF link first (the program is detached before anything else goes),
/// the socket before the UMEM.
#[derive(Debug)]
pub struct AfXdpPort {
    xdp: bpf::Attachment,
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    fd: OwnedFd,
    umem: Mapping,
    /// An AF_PACKET socket holding the interface promiscuous (dropped with it), when asked.
    _promisc: Option<OwnedFd>,
    /// TX frames of the UMEM not in flight (addresses); never grows past its capacity.
    tx_free: Vec<u64>,
    /// Bytes of the RX half of the UMEM (RX frames are below, TX frames above).
    rx_bytes: usize,
    /// Whether the last kick left descriptors on the TX ring.
    tx_unsent: bool,
    ifname: String,
    port: PortId,
    mtu: usize,
    mode: XdpMode,
    zero_copy: bool,
    stats: AfXdpStats,
}

impl AfXdpPort {
    /// Opens an AF_XDP socket on `cfg.queue` of `ifname` and attaches the XDP program that
    /// feeds it, in the steps the module documentation lists. Detached again when the port is
    /// dropped.
    pub fn open(ifname: &str, cfg: &AfXdpConfig) -> Result<AfXdpPort, AfXdpError> {
        check(cfg)?;
        let (cname, ifindex) = interface(ifname).map_err(|e| match e {
            IfLookup::BadName => AfXdpError::BadName(ifname.to_owned()),
            IfLookup::NoSuchInterface => AfXdpError::NoSuchInterface(ifname.to_owned()),
        })?;
        let step = Step(ifname);
        let (mtu, promisc) = control_socket(step, &cname, ifindex, cfg.promiscuous)?;
        let fd = raw_socket(libc::AF_XDP).map_err(step.refused("socket(AF_XDP)"))?;
        let s = fd.as_raw_fd();
        let half = cfg.frames / 2;
        let umem = umem::register(step, s, cfg.frames)?;
        let Rings {
            rx,
            tx,
            mut fill,
            comp,
        } = Rings::map(step, s, half)?;
        // Every RX frame starts in the fill ring.
        fill.fill_all(half, u64::from(FRAME_SIZE));
        bind_queue(step, s, ifindex, cfg.queue)?;
        let zero_copy = {
            let mut o = libc::xdp_options { flags: 0 };
            getsockopt_level(s, libc::SOL_XDP, libc::XDP_OPTIONS, &mut o).is_ok()
                && o.flags & libc::XDP_OPTIONS_ZEROCOPY != 0
        };
        let xdp = bpf::attach(s, cfg.queue, ifindex, cfg.mode)
            .map_err(|(what, e)| step.refused(what)(e))?;
        let mut tx_free = Vec::with_capacity(half as usize);
        tx_free.extend(
            (half..cfg.frames)
                .rev()
                .map(|i| u64::from(i) * u64::from(FRAME_SIZE)),
        );
        Ok(AfXdpPort {
            mode: xdp.mode,
            xdp,
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
            _promisc: promisc,
            tx_free,
            rx_bytes: half as usize * FRAME_SIZE as usize,
            tx_unsent: false,
            ifname: ifname.to_owned(),
            port: cfg.port,
            mtu,
            zero_copy,
            stats: AfXdpStats::default(),
        })
    }

    /// The socket, for `poll(POLLIN)` when a worker is idle: readable once the RX ring holds a
    /// frame.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Where the program was attached: [`XdpMode::Native`] or [`XdpMode::Generic`].
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Whether the kernel bound the socket in zero-copy mode (not on veth: copy mode).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The BPF link holding the program on the interface (closing it detaches the program).
    pub fn link_fd(&self) -> RawFd {
        self.xdp.link.as_raw_fd()
    }

    /// The counters, with the kernel's (`XDP_STATISTICS`, running totals) brought up to date.
    /// Not for every burst: it is a system call.
    pub fn stats(&mut self) -> AfXdpStats {
        // SAFETY: xdp_statistics is plain data; all-zero is a valid value.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let r = getsockopt_level(
            self.fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            &mut st,
        );
        // It cannot fail on a bound socket with a right-sized buffer; if it ever does, the
        // totals are read again next time.
        if let Ok(len) = r {
            self.stats.rx_dropped = st.rx_dropped;
            self.stats.rx_invalid = st.rx_invalid_descs;
            self.stats.tx_invalid = st.tx_invalid_descs;
            if len == size_of::<libc::xdp_statistics>() {
                self.stats.rx_ring_full = st.rx_ring_full;
                self.stats.rx_fill_empty = st.rx_fill_ring_empty_descs;
            }
        }
        self.stats
    }

    /// Takes finished TX frames back from the completion ring.
    #[inline]
    // Casts: u64/u128 to usize or u64: lossless on the 64-bit targets meshd runs on.
    #[allow(clippy::cast_possible_truncation)]
    fn reclaim(&mut self) {
        let n = self.comp.ready();
        for _ in 0..n {
            // SAFETY: the entry lies between user space's consumer index and the kernel's
            // producer index (read with acquire): written by the kernel, not touched by it
            // until the consumer index is published below.
            let addr = unsafe { self.comp.entry::<u64>(self.comp.head).read() };
            self.comp.head = self.comp.head.wrapping_add(1);
            let frame = addr & !u64::from(FRAME_SIZE - 1);
            // Only TX frames are ever sent; the free list cannot outgrow its capacity (every
            // TX frame is either free, on the TX ring or in the kernel's hands).
            if (frame as usize) >= self.rx_bytes
                && (frame as usize) < self.umem.len()
                && self.tx_free.len() < self.tx_free.capacity()
            {
                self.tx_free.push(frame);
            }
        }
        if n > 0 {
            self.comp.publish();
        }
    }

    /// Asks the kernel to send what the TX ring holds. In copy mode it sends at most 32 frames
    /// per call and says EAGAIN when more wait: [`Port::flush`] kicks again.
    fn kick(&mut self) {
        if let Err(e) = kick(self.fd.as_raw_fd()) {
            if !matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS)
            ) {
                self.stats.tx_kick_failed += 1;
            }
        }
        self.tx_unsent = !self.tx.drained();
    }
}

impl AsRawFd for AfXdpPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Port for AfXdpPort {
    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.raw_fd())
    }

    fn unsent(&self) -> bool {
        self.tx_unsent
    }

    // Casts: descriptor addresses and lengths lie within the UMEM (a few MiB); a burst is at most 32.
    #[allow(clippy::cast_possible_truncation)]
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let want = self.rx.ready().min(out.remaining_capacity() as u32);
        if want == 0 {
            return 0;
        }
        // The fill ring holds every RX frame, so it has room for each one taken here.
        let want = want.min(self.fill.free(want));
        let mut n = 0;
        let mut taken = 0;
        while taken < want {
            let Some(mut buf) = pool.get() else {
                // Out of buffers: the frame waits in the ring for the next burst.
                break;
            };
            // SAFETY: the entry lies between user space's consumer index and the kernel's
            // producer index (read with acquire): written by the kernel, not touched by it until
            // the consumer index is published below.
            let d = unsafe { self.rx.entry::<libc::xdp_desc>(self.rx.head).read() };
            self.rx.head = self.rx.head.wrapping_add(1);
            taken += 1;
            let (addr, len) = (d.addr as usize, d.len as usize);
            let frame = addr & !(FRAME_SIZE as usize - 1);
            if frame >= self.rx_bytes || addr - frame + len > FRAME_SIZE as usize {
                // Never seen. A frame outside the RX half cannot go back to the fill ring.
                self.stats.rx_bad_desc += 1;
                pool.put(buf);
                if frame >= self.rx_bytes {
                    continue;
                }
            } else if let Some(room) = buf.room_mut().get_mut(..len) {
                // SAFETY: the frame (checked above to lie inside one RX frame of the UMEM) was
                // written by the kernel before it published the descriptor, and is not written
                // again until the frame goes back to the fill ring below, after the copy.
                let data = unsafe { std::slice::from_raw_parts(self.umem.at(addr), len) };
                room.copy_from_slice(data);
                buf.set_len(len);
                buf.port = self.port;
                out.push(buf);
                n += 1;
            } else {
                self.stats.rx_too_long += 1;
                pool.put(buf);
            }
            // SAFETY: user space produces on the fill ring and it has room for `want` entries
            // (checked above), so this entry is ours.
            unsafe {
                self.fill.entry::<u64>(self.fill.head).write(frame as u64);
            }
            self.fill.head = self.fill.head.wrapping_add(1);
        }
        if taken > 0 {
            self.rx.publish();
            self.fill.publish();
        }
        self.stats.rx += n as u64;
        n
    }

    fn counters(&mut self) -> PortCounters {
        let s = self.stats();
        PortCounters {
            rx_dropped: s.rx_dropped + s.rx_ring_full,
            rx_too_long: s.rx_too_long,
            tx_full: s.tx_ring_full,
            tx_bad_len: s.tx_bad_len,
            ..PortCounters::default()
        }
    }

    // Casts: descriptor addresses and lengths lie within the UMEM (a few MiB).
    #[allow(clippy::cast_possible_truncation)]
    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        self.reclaim();
        let mut sent = 0;
        for buf in frames.drain(..) {
            let data = buf.data();
            if !sendable(data, self.mtu, FRAME_SIZE as usize) {
                self.stats.tx_bad_len += 1;
                pool.put(buf);
                continue;
            }
            if self.tx.free(1) == 0 {
                self.stats.tx_ring_full += 1;
                pool.put(buf);
                continue;
            }
            let Some(addr) = self.tx_free.pop() else {
                self.stats.tx_ring_full += 1;
                pool.put(buf);
                continue;
            };
            // SAFETY: `addr` is a free TX frame (off every ring, so the kernel does not touch
            // it), inside the UMEM, and `data.len() <= FRAME_SIZE` (checked above); the TX ring
            // entry at `head` is ours (free space checked above).
            unsafe {
                ptr::copy_nonoverlapping(data.as_ptr(), self.umem.at(addr as usize), data.len());
                self.tx
                    .entry::<libc::xdp_desc>(self.tx.head)
                    .write(libc::xdp_desc {
                        addr,
                        len: data.len() as u32,
                        options: 0,
                    });
            }
            self.tx.head = self.tx.head.wrapping_add(1);
            sent += 1;
            pool.put(buf);
        }
        if sent > 0 {
            self.tx.publish();
        }
        self.stats.tx += sent as u64;
        if sent > 0 || self.tx_unsent {
            self.kick();
        }
        sent
    }

    /// Kicks the kernel again while the TX ring holds frames, and takes finished ones back.
    fn flush(&mut self) {
        if self.tx_unsent {
            self.kick();
        }
        self.reclaim();
    }
}
