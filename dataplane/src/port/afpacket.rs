//! AF_PACKET port: one `SOCK_RAW` packet socket per port with an RX ring and a TX ring, both
//! memory-mapped in one region (RX ring first, then TX ring). A socket has one `PACKET_VERSION`
//! for both rings, chosen by [`RxRing`]:
//!
//! - [`RxRing::PerFrame`] (the default): TPACKET_V2. Every RX slot holds one frame and is user
//!   space's as soon as the kernel has written it (`TP_STATUS_USER` per frame), so a frame waits
//!   for nothing but the worker; `poll` wakes on each frame. Slots are `frame_size` bytes
//!   whatever the frame's size, so the ring holds fewer small frames than a block ring of the
//!   same memory.
//! - [`RxRing::Blocks`]: TPACKET_V3. The kernel packs frames into blocks and hands a block over
//!   only when it is full or its retire timer (`block_timeout_ms`, 1 ms at least) fires: fewer
//!   cache misses and wake-ups at high rates, but at low and moderate rates every frame waits up
//!   to the timer.
//!
//! - **RX** reads frames in place: no system call per frame or per burst. Each frame is copied
//!   into a [`PacketBuf`] from the pool and stamped with the configured [`PortId`]; a V2 slot
//!   goes back to the kernel as soon as its frame is copied, a V3 block as soon as its last frame
//!   is. A burst that ends mid-block (burst full, pool empty) remembers where it stopped. Frames
//!   the kernel took off a VLAN tag from (it always does, before any packet socket sees them) get
//!   the tag put back, so the pipeline sees the bytes that were on the wire.
//! - **TX** copies each frame into the next free slot (same version as the RX ring), marks it
//!   `TP_STATUS_SEND_REQUEST`, and kicks the kernel with one `sendto(fd, NULL, 0, MSG_DONTWAIT)`
//!   per burst. A V3 TX ring uses fixed slots (`tp_next_offset` must be 0) and needs Linux 4.11
//!   or newer. The qdisc is bypassed
//!   (`PACKET_QDISC_BYPASS`) and malformed frames are discarded by the kernel rather than stalling
//!   the ring (`PACKET_LOSS`).
//! - The socket does not see outgoing frames (`PACKET_IGNORE_OUTGOING`, and the matching fanout
//!   flag when in a fanout group, since the socket's own hook is unused then), so a port never
//!   receives what it, or the host, sends.
//! - With a fanout group id, N ports on one interface (one per worker) share its traffic by flow
//!   hash (`PACKET_FANOUT_HASH`); each flow always lands on the same port.
//!
//! Every unsafe block is here: the system calls and the accesses to the shared ring. Ring
//! ownership words (`block_status`, `tp_status`) are read with acquire and written with release
//! ordering; all other ring bytes are touched only while user space owns them.
#![allow(unsafe_code)]

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering;

pub use super::sys::wait_readable;
use super::sys::{
    add_promiscuous, bind_link, getsockopt_level, interface, interface_mtu, kick, page_size,
    raw_socket, sendable, setsockopt_level, IfLookup, Mapping,
};
use super::{Burst, Port, PortCounters};
use crate::buf::{Pool, PortId};

/// Bytes of an Ethernet header (no tag).
const ETH_HLEN: usize = 14;
/// Bytes of one 802.1Q / 802.1ad tag.
const VLAN_HLEN: usize = 4;
/// Where the frame starts in a TX slot: the kernel reads it at `TPACKET_ALIGN(sizeof(struct
/// tpacket3_hdr))` (`tpacket_parse_header` without `PACKET_TX_HAS_OFF`).
const TX_DATA_OFFSET: usize = align16(size_of::<libc::tpacket3_hdr>());
/// `TPACKET3_HDRLEN`: the kernel's lower bound for `tp_frame_size`.
const TPACKET3_HDRLEN: usize = TX_DATA_OFFSET + size_of::<libc::sockaddr_ll>();
/// Offset of `block_status` in a `tpacket_block_desc` (the header union's only member is
/// `tpacket_hdr_v1`, at offset 0 of the union).
const BLOCK_STATUS: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
const BLOCK_NUM_PKTS: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
const BLOCK_FIRST_PKT: usize = offset_of!(libc::tpacket_block_desc, hdr)
    + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);
/// Offset of `tp_status` in a `tpacket3_hdr` (the ownership word of a V3 TX slot).
const FRAME_STATUS: usize = offset_of!(libc::tpacket3_hdr, tp_status);
/// Where the frame starts in a V2 TX slot: `TPACKET_ALIGN(sizeof(struct tpacket2_hdr))`.
const TX2_DATA_OFFSET: usize = align16(size_of::<libc::tpacket2_hdr>());
/// Offset of `tp_status` in a `tpacket2_hdr` (the ownership word of a V2 RX or TX slot).
const FRAME2_STATUS: usize = offset_of!(libc::tpacket2_hdr, tp_status);
/// Where the kernel puts an untagged frame in a V2 RX slot (`tpacket_rcv`: `TPACKET_ALIGN(
/// TPACKET2_HDRLEN + 16) - ETH_HLEN`); a slot holds frames up to `frame_size` minus this.
pub const RX2_FRAME_OFFSET: usize =
    align16(TX2_DATA_OFFSET + size_of::<libc::sockaddr_ll>() + 16) - ETH_HLEN;

const fn align16(x: usize) -> usize {
    (x + 15) & !15
}

/// How the RX ring hands frames to user space (and which TPACKET version both rings use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RxRing {
    /// TPACKET_V2: one frame per `frame_size` slot, each user space's as soon as it is written.
    /// Lowest latency at every rate (no block timer); holds `block_size * block_count /
    /// frame_size` frames, and frames up to `frame_size - RX2_FRAME_OFFSET` bytes.
    #[default]
    PerFrame,
    /// TPACKET_V3: frames packed into blocks, each handed over when full or after
    /// `block_timeout_ms`. Fewer wake-ups at high rates and more small frames per byte of ring,
    /// but up to `block_timeout_ms` of added latency per frame at low and moderate rates.
    Blocks,
}

/// How to open an [`AfPacketPort`]. The RX and the TX ring have the same geometry: each is
/// `block_count` blocks of `block_size` bytes (so the port maps twice that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfPacketConfig {
    /// Stamped on every received buffer.
    pub port: PortId,
    /// Per-frame (TPACKET_V2, default) or block (TPACKET_V3) RX ring; the TX ring uses the same
    /// version.
    pub rx_ring: RxRing,
    /// Bytes per ring block: a multiple of the page size (a power of two wastes no kernel
    /// memory: the kernel allocates blocks in power-of-two pages). A frame larger than a block
    /// cannot be received.
    pub block_size: u32,
    /// Blocks per ring. Prefer many small blocks to a few big ones: at low rates the kernel
    /// hands over a block every `block_timeout_ms` even if it holds a single frame, so a reader
    /// that looks away for longer than `block_count * block_timeout_ms` can find the ring full
    /// of one-frame blocks, and the kernel drops (`rx_dropped`) until blocks come back. An idle
    /// worker should sleep in `poll` on [`AfPacketPort::raw_fd`], which wakes on the first block.
    pub block_count: u32,
    /// Bytes per TX slot (frame plus a 32-byte V2 or 48-byte V3 header), and per RX slot with
    /// [`RxRing::PerFrame`] (frame plus [`RX2_FRAME_OFFSET`]): a multiple of 16, at least 2048
    /// for 1500-byte MTU frames. A [`RxRing::Blocks`] RX ring packs frames by their real size
    /// and only needs `block_size` to be a multiple of it.
    pub frame_size: u32,
    /// [`RxRing::Blocks`] only: how long the kernel holds a partly filled RX block before
    /// handing it over, in ms: the worst-case added latency at low rates. 0 lets the kernel pick
    /// (8 ms or more).
    pub block_timeout_ms: u32,
    /// Join this `PACKET_FANOUT_HASH` group (ids are per network namespace; every member must be
    /// on the same interface).
    pub fanout: Option<u16>,
    /// Put the interface in promiscuous mode while the port is open (needed when frames for
    /// other MACs than the interface's must be received, e.g. on the tasks' L2 segment).
    pub promiscuous: bool,
}

impl Default for AfPacketConfig {
    /// Per-frame RX ring; 2 MiB per ring: 32 blocks of 64 KiB, 1024 slots of 2 KiB (2 ms block
    /// timeout for a block ring).
    fn default() -> Self {
        AfPacketConfig {
            port: PortId::Uplink,
            rx_ring: RxRing::PerFrame,
            block_size: 1 << 16,
            block_count: 32,
            frame_size: 2048,
            block_timeout_ms: 2,
            fanout: None,
            promiscuous: false,
        }
    }
}

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    #[error(
        "interface name {0:?} is not valid: it must be 1 to 15 bytes, without NUL, '/' or spaces"
    )]
    BadName(String),
    #[error("no such interface {0}: check the name with `ip link` (and that meshd runs in the network namespace that has it)")]
    NoSuchInterface(String),
    #[error("opening an AF_PACKET socket on {0} needs root or CAP_NET_RAW: run meshd as root or grant it with `setcap cap_net_raw,cap_net_admin+ep`")]
    PermissionDenied(String),
    #[error("invalid AF_PACKET ring config: {0}")]
    Config(String),
    #[error("the kernel could not allocate the {bytes}-byte rings for {ifname}: lower block_size or block_count")]
    RingAlloc { ifname: String, bytes: usize },
    #[error("the kernel refused {what} on {ifname} ({source}): meshd's AF_PACKET port needs Linux 4.20 or newer")]
    Unsupported {
        ifname: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("fanout group {group} on {ifname} was refused: the id is already used on another interface or with another mode; pick another id")]
    FanoutRefused { ifname: String, group: u16 },
    #[error("{op} on {ifname} failed: {source}")]
    Io {
        ifname: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Counters of one port. `rx_dropped`, `rx_ring_frozen` come from the kernel and are brought up
/// to date by [`AfPacketPort::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    /// Frames handed out by `rx_burst`.
    pub rx: u64,
    /// Frames put on the TX ring.
    pub tx: u64,
    /// Frames dropped because the TX ring had no free slot.
    pub tx_ring_full: u64,
    /// Frames dropped because they were shorter than an Ethernet header, longer than the MTU
    /// (as read at open) allows, plus 4 for a tagged frame, or longer than a TX slot.
    pub tx_bad_len: u64,
    /// Kicks the kernel refused (device down, socket buffer full...). The frames stay queued
    /// and go with the next kick ([`Port::flush`] retries).
    pub tx_kick_failed: u64,
    /// Frames the kernel dropped because the RX ring was full (`tp_drops`).
    pub rx_dropped: u64,
    /// Times the kernel found the whole RX ring owned by user space (`tp_freeze_q_cnt`; block
    /// rings only).
    pub rx_ring_frozen: u64,
    /// Frames dropped because they did not fit a [`crate::buf::PacketBuf`] or an RX block (jumbo
    /// frames, or GRO/TSO super-frames from the host stack: turn those offloads off).
    pub rx_too_long: u64,
    /// Frames dropped because their ring descriptor pointed outside its block (never seen; a
    /// guard against a kernel/ABI mismatch). The rest of that block is dropped with them.
    pub rx_bad_desc: u64,
    /// Frames received with `TP_STATUS_CSUMNOTREADY`: sent by the host stack with checksum
    /// offload, their L4 checksum is not filled in yet (turn `tx` offload off on the peer, e.g.
    /// `ethtool -K veth0 tx off`). They are delivered as they are.
    pub rx_csum_partial: u64,
}

/// A port on a Linux interface through TPACKET_V2 or V3 rings. See the module documentation.
#[derive(Debug)]
pub struct AfPacketPort {
    // Declared before `fd`, so it is unmapped before the socket closes.
    ring: Mapping,
    fd: OwnedFd,
    ifname: String,
    port: PortId,
    rx_ring: RxRing,
    mtu: usize,
    block_size: usize,
    block_count: usize,
    frame_size: usize,
    /// Byte offset of the TX ring in the mapping.
    tx_base: usize,
    /// Fixed-size slots per block: TX slots, and RX slots of a per-frame ring.
    slots_per_block: usize,
    /// Slots per ring.
    slots: usize,
    /// Where a frame starts in a TX slot, and where the slot's `tp_status` is (V2 or V3).
    tx_data_offset: usize,
    tx_status: usize,
    /// Per-frame ring: the next RX slot to read.
    rx_slot: usize,
    /// Block ring: the RX block being read.
    rx_block: usize,
    /// Frames of `rx_block` not read yet; 0: the block is not claimed yet.
    rx_left: u32,
    /// Offset in `rx_block` of the next frame's header.
    rx_next: usize,
    /// The next TX slot to fill.
    tx_head: usize,
    /// Frames marked for sending that the last kick left on the ring.
    tx_unsent: bool,
    stats: AfPacketStats,
}

/// Names a failed set-up step for the user: the interface, what was being done, and the
/// kernel's answer.
#[derive(Debug, Clone, Copy)]
struct Step<'a>(&'a str);

impl<'a> Step<'a> {
    fn io(self, op: &'static str) -> impl Fn(io::Error) -> AfPacketError + 'a {
        move |source| AfPacketError::Io {
            ifname: self.0.to_owned(),
            op,
            source,
        }
    }

    /// A feature this kernel does not have.
    fn unsupported(self, what: &'static str) -> impl Fn(io::Error) -> AfPacketError + 'a {
        move |source| AfPacketError::Unsupported {
            ifname: self.0.to_owned(),
            what,
            source,
        }
    }
}

/// An AF_PACKET socket of the ring version `rx_ring` needs, with the options the port relies
/// on. Protocol 0: the socket receives nothing until it is bound to the interface, so no frame
/// of another interface slips in while the rings are set up.
// Casts: a ring version constant, far inside c_int.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn packet_socket(step: Step, rx_ring: RxRing) -> Result<OwnedFd, AfPacketError> {
    let fd = raw_socket(libc::AF_PACKET).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            AfPacketError::PermissionDenied(step.0.to_owned())
        }
        _ => step.io("socket(AF_PACKET)")(e),
    })?;
    let s = fd.as_raw_fd();
    let (version, version_name) = match rx_ring {
        RxRing::PerFrame => (libc::tpacket_versions::TPACKET_V2, "TPACKET_V2"),
        RxRing::Blocks => (libc::tpacket_versions::TPACKET_V3, "TPACKET_V3"),
    };
    let version = version as libc::c_int;
    setsockopt(s, libc::PACKET_VERSION, &version).map_err(step.unsupported(version_name))?;
    let one: libc::c_int = 1;
    // Without it a frame the kernel rejects is marked TP_STATUS_WRONG_FORMAT and the kernel
    // stops at it for good; with it the frame is discarded and the ring moves on.
    setsockopt(s, libc::PACKET_LOSS, &one).map_err(step.io("PACKET_LOSS"))?;
    setsockopt(s, libc::PACKET_QDISC_BYPASS, &one)
        .map_err(step.unsupported("PACKET_QDISC_BYPASS"))?;
    setsockopt(s, libc::PACKET_IGNORE_OUTGOING, &one)
        .map_err(step.unsupported("PACKET_IGNORE_OUTGOING"))?;
    Ok(fd)
}

/// Asks the kernel for the RX and TX rings of `geo` and maps both: one region, the RX ring
/// first, exactly their total size (the kernel checks it).
fn map_rings(
    step: Step,
    s: RawFd,
    cfg: &AfPacketConfig,
    geo: &Geometry,
) -> Result<Mapping, AfPacketError> {
    let ring_err = |what: &'static str| {
        move |e: io::Error| match e.raw_os_error() {
            Some(libc::ENOMEM) => AfPacketError::RingAlloc {
                ifname: step.0.to_owned(),
                bytes: 2 * geo.ring_len,
            },
            Some(libc::EINVAL) => step.unsupported(what)(e),
            _ => step.io(what)(e),
        }
    };
    match cfg.rx_ring {
        RxRing::PerFrame => {
            let req = libc::tpacket_req {
                tp_block_size: cfg.block_size,
                tp_block_nr: cfg.block_count,
                tp_frame_size: cfg.frame_size,
                tp_frame_nr: geo.frames,
            };
            setsockopt(s, libc::PACKET_RX_RING, &req).map_err(ring_err("a TPACKET_V2 RX ring"))?;
            setsockopt(s, libc::PACKET_TX_RING, &req).map_err(ring_err("a TPACKET_V2 TX ring"))?;
        }
        RxRing::Blocks => {
            let mut req = libc::tpacket_req3 {
                tp_block_size: cfg.block_size,
                tp_block_nr: cfg.block_count,
                tp_frame_size: cfg.frame_size,
                tp_frame_nr: geo.frames,
                tp_retire_blk_tov: cfg.block_timeout_ms,
                tp_sizeof_priv: 0,
                tp_feature_req_word: 0,
            };
            setsockopt(s, libc::PACKET_RX_RING, &req).map_err(ring_err("a TPACKET_V3 RX ring"))?;
            // A TX ring rejects the RX-only fields.
            req.tp_retire_blk_tov = 0;
            setsockopt(s, libc::PACKET_TX_RING, &req).map_err(ring_err("a TPACKET_V3 TX ring"))?;
        }
    }
    Mapping::new(Some(s), 2 * geo.ring_len, 0).map_err(step.io("mmap of the rings"))
}

/// Joins the hash fanout group `group` (several sockets on one interface share its frames by
/// flow hash).
// Casts: the fanout argument packs a 16-bit group id and mode flags into a c_int.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn join_fanout(step: Step, s: RawFd, group: u16) -> Result<(), AfPacketError> {
    // The fanout group's hook replaces the socket's own, so PACKET_IGNORE_OUTGOING must be
    // asked of the group too (Linux 6.2+; older kernels ignore the flag).
    let mode = libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
    let arg = (u32::from(group) | (mode << 16)) as libc::c_int;
    setsockopt(s, libc::PACKET_FANOUT, &arg).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::EALREADY) => AfPacketError::FanoutRefused {
            ifname: step.0.to_owned(),
            group,
        },
        _ => step.io("PACKET_FANOUT")(e),
    })
}

impl AfPacketPort {
    /// Opens a port on `ifname` (which must exist in the calling thread's network namespace),
    /// in named steps: the geometry checked, the interface looked up, `packet_socket` (version
    /// and options), `map_rings` (the RX and TX rings asked for and mapped as one region), the
    /// send buffer, the MTU, `bind_link`, promiscuous mode, `join_fanout`.
    pub fn open(ifname: &str, cfg: &AfPacketConfig) -> Result<AfPacketPort, AfPacketError> {
        let geo = Geometry::check(cfg)?;
        let (cname, ifindex) = interface(ifname).map_err(|e| match e {
            IfLookup::BadName => AfPacketError::BadName(ifname.to_owned()),
            IfLookup::NoSuchInterface => AfPacketError::NoSuchInterface(ifname.to_owned()),
        })?;
        let step = Step(ifname);
        let fd = packet_socket(step, cfg.rx_ring)?;
        let s = fd.as_raw_fd();
        let ring = map_rings(step, s, cfg, &geo)?;
        // Frames in flight on the TX ring count against the socket's send buffer; when it is
        // full the kernel leaves the rest for the next kick. Let a whole ring be in flight. Best
        // effort: SO_SNDBUFFORCE needs CAP_NET_ADMIN and the default still works, only in
        // smaller steps.
        let sndbuf = libc::c_int::try_from(geo.ring_len).unwrap_or(libc::c_int::MAX);
        let _ = setsockopt_level(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &sndbuf);
        let mtu = interface_mtu(s, &cname).map_err(step.io("reading the MTU (SIOCGIFMTU)"))?;
        bind_link(s, ifindex).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) => AfPacketError::NoSuchInterface(ifname.to_owned()),
            _ => step.io("bind")(e),
        })?;
        if cfg.promiscuous {
            // Dropped by the kernel when the socket closes.
            add_promiscuous(s, ifindex).map_err(step.io("promiscuous mode"))?;
        }
        if let Some(group) = cfg.fanout {
            join_fanout(step, s, group)?;
        }
        Ok(AfPacketPort {
            ring,
            fd,
            ifname: ifname.to_owned(),
            port: cfg.port,
            rx_ring: cfg.rx_ring,
            mtu,
            block_size: cfg.block_size as usize,
            block_count: cfg.block_count as usize,
            frame_size: cfg.frame_size as usize,
            tx_base: geo.ring_len,
            slots_per_block: geo.frames_per_block,
            slots: geo.frames as usize,
            tx_data_offset: match cfg.rx_ring {
                RxRing::PerFrame => TX2_DATA_OFFSET,
                RxRing::Blocks => TX_DATA_OFFSET,
            },
            tx_status: match cfg.rx_ring {
                RxRing::PerFrame => FRAME2_STATUS,
                RxRing::Blocks => FRAME_STATUS,
            },
            rx_slot: 0,
            rx_block: 0,
            rx_left: 0,
            rx_next: 0,
            tx_head: 0,
            tx_unsent: false,
            stats: AfPacketStats::default(),
        })
    }

    /// The socket, for `poll(POLLIN)` when a worker is idle: readable once a frame (per-frame
    /// ring) or an RX block (block ring: full, or retired by the block timeout) is ready.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The RX ring mode the port was opened with.
    pub fn rx_ring(&self) -> RxRing {
        self.rx_ring
    }

    /// The counters, with the kernel's (`PACKET_STATISTICS`, which resets them on every read)
    /// added in. Not for every burst: it is a system call.
    pub fn stats(&mut self) -> AfPacketStats {
        // SAFETY: tpacket_stats_v3 is plain data; all-zero is a valid value.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let r = getsockopt_level(
            self.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st,
        );
        // It cannot fail on an open packet socket with a right-sized buffer; if it ever does,
        // the kernel keeps its counts and the next call picks them up.
        if r.is_ok() {
            self.stats.rx_dropped += u64::from(st.tp_drops);
            self.stats.rx_ring_frozen += u64::from(st.tp_freeze_q_cnt);
        }
        self.stats
    }

    /// Hands the current RX block back to the kernel and moves to the next one.
    #[inline]
    fn rx_release_block(&mut self) {
        let off = self.rx_block * self.block_size;
        self.ring
            .status(off + BLOCK_STATUS)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.rx_block = (self.rx_block + 1) % self.block_count;
        self.rx_left = 0;
    }

    /// Byte offset of slot `i` in a ring of fixed-size slots (slots never straddle blocks).
    #[inline]
    fn slot(&self, i: usize) -> usize {
        (i / self.slots_per_block) * self.block_size + (i % self.slots_per_block) * self.frame_size
    }

    /// Byte offset of TX slot `i` in the mapping.
    #[inline]
    fn tx_slot(&self, i: usize) -> usize {
        self.tx_base + self.slot(i)
    }

    /// Asks the kernel to send every slot marked `TP_STATUS_SEND_REQUEST`.
    fn kick(&mut self) {
        if kick(self.fd.as_raw_fd()).is_err() {
            self.stats.tx_kick_failed += 1;
        }
        // The kernel sends in ring order and stops early when the socket's send buffer or the
        // device is full: then the last slot written is still waiting.
        let last = self.tx_slot((self.tx_head + self.slots - 1) % self.slots);
        self.tx_unsent = self
            .ring
            .status(last + self.tx_status)
            .load(Ordering::Acquire)
            == libc::TP_STATUS_SEND_REQUEST;
    }

    /// [`Port::rx_burst`] on a per-frame ring (TPACKET_V2): one frame per slot, each slot
    /// handed back to the kernel as soon as its frame is copied.
    fn rx_burst_frames(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let mut n = 0;
        while !out.is_full() {
            let slot = self.slot(self.rx_slot);
            let status = self
                .ring
                .status(slot + FRAME2_STATUS)
                .load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            let Some(mut buf) = pool.get() else {
                // Out of buffers: the frame waits in the ring for the next burst.
                break;
            };
            // SAFETY: the slot is owned by user space (TP_STATUS_USER seen with acquire
            // ordering, so the kernel's writes to it are visible and it no longer writes it); it
            // lies inside the mapping (`slot` of an index below `slots`) and holds at least a
            // header (`frame_size >= TPACKET3_HDRLEN`, checked at open).
            let h: libc::tpacket2_hdr =
                unsafe { ptr::read_unaligned(self.ring.at(slot).cast::<libc::tpacket2_hdr>()) };
            let mac = usize::from(h.tp_mac);
            let snap = h.tp_snaplen as usize;
            let len = if mac < size_of::<libc::tpacket2_hdr>() || mac + snap > self.frame_size {
                self.stats.rx_bad_desc += 1;
                None
            } else {
                let tag = vlan_tag(status, h.tp_vlan_tpid, h.tp_vlan_tci);
                // SAFETY: the slot is owned by user space and the frame lies inside it (checked
                // just above), so the slice is inside the mapping, initialised, and not written
                // by the kernel until the slot is released below, after the slice's last use.
                let frame = unsafe { std::slice::from_raw_parts(self.ring.at(slot + mac), snap) };
                let len = copy_frame(frame, h.tp_len, tag, buf.room_mut());
                if len.is_none() {
                    self.stats.rx_too_long += 1;
                }
                len
            };
            self.ring
                .status(slot + FRAME2_STATUS)
                .store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.rx_slot = (self.rx_slot + 1) % self.slots;
            let Some(len) = len else {
                pool.put(buf);
                continue;
            };
            if status & libc::TP_STATUS_CSUMNOTREADY != 0 {
                self.stats.rx_csum_partial += 1;
            }
            buf.set_len(len);
            buf.port = self.port;
            out.push(buf);
            n += 1;
        }
        n
    }

    /// [`Port::rx_burst`] on a block ring (TPACKET_V3): walks the kernel's blocks in place.
    // Casts: the kernel's VLAN TCI is 16 bits kept in a u32 field.
    #[allow(clippy::cast_possible_truncation)]
    fn rx_burst_blocks(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let mut n = 0;
        while !out.is_full() {
            let block = self.rx_block * self.block_size;
            if self.rx_left == 0 {
                if self
                    .ring
                    .status(block + BLOCK_STATUS)
                    .load(Ordering::Acquire)
                    & libc::TP_STATUS_USER
                    == 0
                {
                    break;
                }
                // SAFETY: the block is owned by user space (TP_STATUS_USER seen with acquire
                // ordering, so the kernel's writes to it are visible and it no longer writes
                // it); both u32 fields lie in the block descriptor, inside the mapping and
                // 4-byte aligned.
                let (num, first) = unsafe {
                    (
                        ptr::read(self.ring.at(block + BLOCK_NUM_PKTS).cast::<u32>()),
                        ptr::read(self.ring.at(block + BLOCK_FIRST_PKT).cast::<u32>()),
                    )
                };
                if num == 0 {
                    self.rx_release_block();
                    continue;
                }
                self.rx_left = num;
                self.rx_next = first as usize;
            }
            let Some(mut buf) = pool.get() else {
                // Out of buffers: the frame waits in the ring for the next burst.
                break;
            };
            let hdr_off = self.rx_next;
            if hdr_off + size_of::<libc::tpacket3_hdr>() > self.block_size {
                self.stats.rx_bad_desc += u64::from(self.rx_left);
                self.rx_release_block();
                pool.put(buf);
                continue;
            }
            // SAFETY: the block is owned by user space (claimed above) and the header lies
            // inside it (checked just above).
            let h: libc::tpacket3_hdr = unsafe {
                ptr::read_unaligned(self.ring.at(block + hdr_off).cast::<libc::tpacket3_hdr>())
            };
            let mac = hdr_off + usize::from(h.tp_mac);
            let snap = h.tp_snaplen as usize;
            if mac + snap > self.block_size {
                self.stats.rx_bad_desc += u64::from(self.rx_left);
                self.rx_release_block();
                pool.put(buf);
                continue;
            }
            // The kernel takes the 802.1Q tag off before packet sockets see the frame and reports
            // it in the header (the TCI in the low 16 bits): put it back.
            let tag = vlan_tag(h.tp_status, h.hv1.tp_vlan_tpid, h.hv1.tp_vlan_tci as u16);
            // SAFETY: the block is owned by user space and `mac + snap <= block_size` (checked
            // above), so the slice is inside the mapping, initialised, and not written by the
            // kernel until the block is released, after the slice's last use.
            let frame = unsafe { std::slice::from_raw_parts(self.ring.at(block + mac), snap) };
            let len = copy_frame(frame, h.tp_len, tag, buf.room_mut());
            self.rx_left -= 1;
            self.rx_next = hdr_off + h.tp_next_offset as usize;
            if self.rx_left == 0 {
                self.rx_release_block();
            }
            let Some(len) = len else {
                self.stats.rx_too_long += 1;
                pool.put(buf);
                continue;
            };
            if h.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0 {
                self.stats.rx_csum_partial += 1;
            }
            buf.set_len(len);
            buf.port = self.port;
            out.push(buf);
            n += 1;
        }
        n
    }
}

impl AsRawFd for AfPacketPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The VLAN tag the kernel took off a received frame, as (TPID, TCI), from the header's status
/// word and tag fields.
#[inline]
fn vlan_tag(status: u32, tpid: u16, tci: u16) -> Option<(u16, u16)> {
    if status & libc::TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
        tpid
    } else {
        0x8100
    };
    Some((tpid, tci))
}

/// Copies a received frame (`frame`, `wire_len` bytes long on the wire) into `room`, with its
/// VLAN tag put back after the MAC addresses. Returns the length, or `None` when the ring holds
/// only part of the frame or it does not fit `room`.
#[inline]
fn copy_frame(
    frame: &[u8],
    wire_len: u32,
    tag: Option<(u16, u16)>,
    room: &mut [u8],
) -> Option<usize> {
    if frame.len() != wire_len as usize {
        return None;
    }
    match tag {
        Some((tpid, tci)) if frame.len() >= 12 => {
            let len = frame.len() + VLAN_HLEN;
            let room = room.get_mut(..len)?;
            room[..12].copy_from_slice(&frame[..12]);
            room[12..14].copy_from_slice(&tpid.to_be_bytes());
            room[14..16].copy_from_slice(&tci.to_be_bytes());
            room[16..].copy_from_slice(&frame[12..]);
            Some(len)
        }
        _ => {
            room.get_mut(..frame.len())?.copy_from_slice(frame);
            Some(frame.len())
        }
    }
}

impl Port for AfPacketPort {
    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.raw_fd())
    }

    fn unsent(&self) -> bool {
        self.tx_unsent
    }

    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        let n = match self.rx_ring {
            RxRing::PerFrame => self.rx_burst_frames(pool, out),
            RxRing::Blocks => self.rx_burst_blocks(pool, out),
        };
        self.stats.rx += n as u64;
        n
    }

    fn counters(&mut self) -> PortCounters {
        let s = self.stats();
        PortCounters {
            rx_dropped: s.rx_dropped,
            rx_too_long: s.rx_too_long,
            tx_full: s.tx_ring_full,
            tx_bad_len: s.tx_bad_len,
            ..PortCounters::default()
        }
    }

    // Casts: a frame is at most a ring slot (a few KiB).
    #[allow(clippy::cast_possible_truncation)]
    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        let mut sent = 0;
        for buf in frames.drain(..) {
            let data = buf.data();
            if !sendable(data, self.mtu, self.frame_size - self.tx_data_offset) {
                self.stats.tx_bad_len += 1;
                pool.put(buf);
                continue;
            }
            let slot = self.tx_slot(self.tx_head);
            let status = self
                .ring
                .status(slot + self.tx_status)
                .load(Ordering::Acquire);
            // TP_STATUS_WRONG_FORMAT cannot happen with PACKET_LOSS; if it did, the kernel would
            // be stuck on this slot until it is refilled, so it counts as free.
            if status != libc::TP_STATUS_AVAILABLE && status != libc::TP_STATUS_WRONG_FORMAT {
                self.stats.tx_ring_full += 1;
                pool.put(buf);
                continue;
            }
            let len = data.len() as u32;
            let hdr = self.ring.at(slot);
            // SAFETY: the slot is owned by user space (TP_STATUS_AVAILABLE seen with acquire
            // ordering); it lies inside the mapping (`tx_slot` of an index below `slots`) and is
            // 16-byte aligned, so the u32 header fields are aligned; `tx_data_offset + len <=
            // frame_size` (checked above), so the copy stays inside the slot; the header fields
            // written are not the status word.
            unsafe {
                match self.rx_ring {
                    RxRing::PerFrame => {
                        hdr.add(offset_of!(libc::tpacket2_hdr, tp_len))
                            .cast::<u32>()
                            .write(len);
                        hdr.add(offset_of!(libc::tpacket2_hdr, tp_snaplen))
                            .cast::<u32>()
                            .write(len);
                    }
                    RxRing::Blocks => {
                        hdr.add(offset_of!(libc::tpacket3_hdr, tp_next_offset))
                            .cast::<u32>()
                            .write(0);
                        hdr.add(offset_of!(libc::tpacket3_hdr, tp_len))
                            .cast::<u32>()
                            .write(len);
                        hdr.add(offset_of!(libc::tpacket3_hdr, tp_snaplen))
                            .cast::<u32>()
                            .write(len);
                    }
                }
                ptr::copy_nonoverlapping(data.as_ptr(), hdr.add(self.tx_data_offset), data.len());
            }
            self.ring
                .status(slot + self.tx_status)
                .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
            self.tx_head = (self.tx_head + 1) % self.slots;
            sent += 1;
            pool.put(buf);
        }
        self.stats.tx += sent as u64;
        if sent > 0 || self.tx_unsent {
            self.kick();
        }
        sent
    }

    /// Kicks the kernel again when the last kick left frames on the ring.
    fn flush(&mut self) {
        if self.tx_unsent {
            self.kick();
        }
    }
}

/// Ring sizes derived from a config that passed the kernel's rules.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    frames_per_block: usize,
    frames: u32,
    ring_len: usize,
}

impl Geometry {
    fn check(cfg: &AfPacketConfig) -> Result<Geometry, AfPacketError> {
        let bad = |m: String| Err(AfPacketError::Config(m));
        let page = page_size();
        let (bs, fs) = (cfg.block_size as usize, cfg.frame_size as usize);
        if bs == 0 || bs % page != 0 || bs > i32::MAX as usize {
            return bad(format!(
                "block_size {bs} must be a non-zero multiple of the page size ({page})"
            ));
        }
        if fs % 16 != 0 || fs < TPACKET3_HDRLEN.next_multiple_of(16) {
            return bad(format!(
                "frame_size {fs} must be a multiple of 16 and at least {}",
                TPACKET3_HDRLEN.next_multiple_of(16)
            ));
        }
        if fs > bs || bs < size_of::<libc::tpacket_block_desc>() + TPACKET3_HDRLEN {
            return bad(format!(
                "block_size {bs} must hold at least one frame of frame_size {fs}"
            ));
        }
        if cfg.block_count == 0 {
            return bad("block_count must be at least 1".to_owned());
        }
        let frames_per_block = bs / fs;
        let frames = u32::try_from(frames_per_block)
            .ok()
            .and_then(|f| f.checked_mul(cfg.block_count));
        let ring_len = bs
            .checked_mul(cfg.block_count as usize)
            .filter(|l| l.checked_mul(2).is_some());
        match (frames, ring_len) {
            (Some(frames), Some(ring_len)) => Ok(Geometry {
                frames_per_block,
                frames,
                ring_len,
            }),
            _ => bad(format!(
                "{} blocks of {bs} bytes is too large",
                cfg.block_count
            )),
        }
    }
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, val: &T) -> io::Result<()> {
    setsockopt_level(fd, libc::SOL_PACKET, name, val)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::buf::PacketBuf;
    use testbed::sys::{require_root, Netns};

    const MAGIC: &[u8; 4] = b"mshd";
    const EXPERIMENTAL: u16 = 0x88b5;

    /// A network namespace `meshd-t-afp-<pid>-<tag>` with a veth pair `a`/`b`, both up, deleted
    /// on drop (also when a test fails).
    fn with_veth(tag: &str) -> Netns {
        let ns = Netns::new(&format!("t-afp-{}-{tag}", std::process::id())).unwrap();
        // No IPv6 on the veths: the kernel's own frames (router solicitations, MLD reports)
        // would land in the tests' rings at times of their own.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            .unwrap();
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .unwrap();
        // "name" and "dev" are needed: ip reads a bare `a` as an abbreviation of `address`.
        ns.ip(&[
            "link", "add", "name", "a", "type", "veth", "peer", "name", "b",
        ])
        .unwrap();
        ns.ip(&["link", "set", "dev", "a", "up"]).unwrap();
        ns.ip(&["link", "set", "dev", "b", "up"]).unwrap();
        ns
    }

    /// Runs `f` on a new thread that has entered `ns`; a panic in `f` is re-raised here (after
    /// the thread is gone, before `ns` is dropped).
    fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                ns.enter().unwrap();
                f()
            })
            .join()
        });
        match r {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    fn cfg(mode: RxRing, port: PortId) -> AfPacketConfig {
        AfPacketConfig {
            port,
            rx_ring: mode,
            ..AfPacketConfig::default()
        }
    }

    /// A short name of `mode` for namespace names.
    fn tag(mode: RxRing, what: &str) -> String {
        match mode {
            RxRing::PerFrame => format!("{what}-v2"),
            RxRing::Blocks => format!("{what}-v3"),
        }
    }

    /// Runs the root test `f` once in each ring mode, as two #[test]s.
    macro_rules! both_rings {
        ($f:ident: $frames:ident, $blocks:ident) => {
            #[test]
            fn $frames() {
                $f(RxRing::PerFrame);
            }
            #[test]
            fn $blocks() {
                $f(RxRing::Blocks);
            }
        };
    }

    /// Frame `seq`: 60 to 1514 bytes, every 7th one 802.1Q-tagged, an experimental ethertype,
    /// then MAGIC, `seq` and a pattern.
    fn test_frame(seq: u32) -> Vec<u8> {
        let len = 60 + (seq as usize * 151) % (1514 - 60 + 1);
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a];
        if seq % 7 == 3 {
            let tci = (((seq % 8) as u16) << 13) | (1 + (seq % 4000) as u16);
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&EXPERIMENTAL.to_be_bytes());
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&seq.to_be_bytes());
        let mut i = 0u32;
        while f.len() < len {
            f.push((seq.wrapping_mul(7).wrapping_add(i)) as u8);
            i += 1;
        }
        f
    }

    /// Frame `seq` as IPv4/UDP with a source port per frame, so a hash fanout spreads them.
    fn udp_frame(seq: u32) -> Vec<u8> {
        let len = 60 + (seq as usize * 97) % (1514 - 60 + 1);
        let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00];
        let ip_len = (len - 14) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (ip_len >> 8) as u8,
            ip_len as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let sport = 10_000 + (seq % 50_000) as u16;
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&4000u16.to_be_bytes());
        f.extend_from_slice(&(ip_len - 20).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&seq.to_be_bytes());
        while f.len() < len {
            f.push(f.len() as u8 ^ seq as u8);
        }
        f
    }

    /// The sequence number of one of our test frames; `None` for anything else (IPv6 router
    /// solicitations and the like that the kernel sends on a new link).
    fn seq_of(f: &[u8]) -> Option<u32> {
        let find = |at: usize| {
            (f.len() >= at + 8 && &f[at..at + 4] == MAGIC)
                .then(|| u32::from_be_bytes([f[at + 4], f[at + 5], f[at + 6], f[at + 7]]))
        };
        match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
            EXPERIMENTAL => find(14),
            0x8100 if f.len() >= 18 && f[16..18] == EXPERIMENTAL.to_be_bytes() => find(18),
            0x0800 if f.len() >= 42 && f[23] == 17 => find(42),
            _ => None,
        }
    }

    fn send(
        port: &mut AfPacketPort,
        pool: &mut Pool,
        frames: impl Iterator<Item = Vec<u8>>,
    ) -> usize {
        let mut burst = Burst::new();
        let mut sent = 0;
        for f in frames {
            let mut b = pool.get().unwrap();
            b.fill(&f);
            burst.push(b);
            if burst.is_full() {
                sent += port.tx_burst(&mut burst, pool);
            }
        }
        if !burst.is_empty() {
            sent += port.tx_burst(&mut burst, pool);
        }
        sent
    }

    /// Drains `port`, keeping our test frames by sequence number; a repeat is a test failure.
    fn drain(port: &mut AfPacketPort, pool: &mut Pool, got: &mut BTreeMap<u32, Vec<u8>>) {
        let mut burst = Burst::new();
        while port.rx_burst(pool, &mut burst) > 0 {
            for b in burst.drain(..) {
                if let Some(seq) = seq_of(b.data()) {
                    assert_eq!(b.port, port.port);
                    assert!(
                        got.insert(seq, b.data().to_vec()).is_none(),
                        "frame {seq} received twice"
                    );
                }
                pool.put(b);
            }
        }
    }

    /// Sends `frame` on `ifname` through an ordinary packet socket (no ring, through the qdisc),
    /// as the host stack would.
    fn plain_send(ifname: &str, frame: &[u8]) {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain system calls; `name` is NUL-terminated.
        let (fd, ifindex) = unsafe {
            (
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0),
                libc::if_nametoindex(name.as_ptr()),
            )
        };
        assert!(fd >= 0 && ifindex > 0);
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` and `sll` are valid for the lengths passed.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                ptr::from_ref(&sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    fn wait_readable(port: &AfPacketPort, ms: u64) {
        super::wait_readable(&[port.raw_fd()], Duration::from_millis(ms));
    }

    /// Drains `ports` until `want` test frames have arrived in all or 3 s have passed.
    fn receive_all(
        ports: &mut [(&mut AfPacketPort, &mut BTreeMap<u32, Vec<u8>>)],
        pool: &mut Pool,
        want: usize,
    ) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            for (p, got) in ports.iter_mut() {
                drain(p, pool, got);
            }
            if ports.iter().map(|(_, g)| g.len()).sum::<usize>() >= want
                || Instant::now() > deadline
            {
                return;
            }
            wait_readable(ports[0].0, 10);
        }
    }

    both_rings!(frames_cross_a_veth_byte_exact: frames_cross_a_veth_byte_exact_per_frame, frames_cross_a_veth_byte_exact_blocks);

    fn frames_cross_a_veth_byte_exact(mode: RxRing) {
        if !require_root("frames_cross_a_veth_byte_exact") {
            return;
        }
        const N: u32 = 1000;
        let ns = with_veth(&tag(mode, "xfer"));
        run_in(&ns, || {
            let mut a = AfPacketPort::open("a", &cfg(mode, PortId::Uplink)).unwrap();
            assert_eq!(a.rx_ring(), mode);
            // A second socket on the sending interface: it must not see the outgoing frames.
            let mut watch = AfPacketPort::open("a", &cfg(mode, PortId::Uplink)).unwrap();
            let mut b = AfPacketPort::open(
                "b",
                &AfPacketConfig {
                    promiscuous: true,
                    ..cfg(mode, PortId::Tasks)
                },
            )
            .unwrap();
            let mut tx_pool = Pool::new(64);
            // A small pool, so bursts stop mid-block for want of buffers as well as when full.
            let mut rx_pool = Pool::new(7);
            let (mut got, mut seen_by_a) = (BTreeMap::new(), BTreeMap::new());
            for chunk in 0..N.div_ceil(100) {
                let seqs = chunk * 100..((chunk + 1) * 100).min(N);
                assert_eq!(send(&mut a, &mut tx_pool, seqs.map(test_frame)), 100);
                a.flush();
                drain(&mut b, &mut rx_pool, &mut got);
            }
            // Frames sent with PACKET_QDISC_BYPASS skip the taps altogether; frames the host
            // sends through the stack do not, and only PACKET_IGNORE_OUTGOING hides them.
            for seq in N..N + 10 {
                plain_send("a", &test_frame(seq));
                drain(&mut b, &mut rx_pool, &mut got);
            }
            receive_all(
                &mut [(&mut b, &mut got), (&mut watch, &mut seen_by_a)],
                &mut rx_pool,
                N as usize + 10,
            );
            let mut seen_by_sender = BTreeMap::new();
            drain(&mut a, &mut rx_pool, &mut seen_by_sender);
            let missing: Vec<u32> = (0..N + 10).filter(|s| !got.contains_key(s)).collect();
            assert!(
                missing.is_empty(),
                "missing frames {missing:?}, {:?}",
                b.stats()
            );
            for (seq, f) in &got {
                assert_eq!(f, &test_frame(*seq), "frame {seq} differs");
            }
            assert!(
                seen_by_a.is_empty(),
                "a saw {} of its outgoing frames",
                seen_by_a.len()
            );
            assert!(
                seen_by_sender.is_empty(),
                "the sender saw {} of its own frames",
                seen_by_sender.len()
            );
            let (sa, sb) = (a.stats(), b.stats());
            assert_eq!(
                (sa.tx, sa.tx_ring_full, sa.tx_bad_len),
                (u64::from(N), 0, 0)
            );
            assert!(sb.rx >= u64::from(N));
            assert_eq!((sb.rx_dropped, sb.rx_too_long, sb.rx_bad_desc), (0, 0, 0));
            assert_eq!(tx_pool.available(), 64);
            assert_eq!(rx_pool.available(), 7);
        });
    }

    both_rings!(fanout_members_share_the_traffic: fanout_members_share_the_traffic_per_frame, fanout_members_share_the_traffic_blocks);

    fn fanout_members_share_the_traffic(mode: RxRing) {
        if !require_root("fanout_members_share_the_traffic") {
            return;
        }
        const N: u32 = 1000;
        let ns = with_veth(&tag(mode, "fanout"));
        run_in(&ns, || {
            let mut a = AfPacketPort::open("a", &cfg(mode, PortId::Uplink)).unwrap();
            let member = AfPacketConfig {
                fanout: Some(0x6d73),
                ..cfg(mode, PortId::Tasks)
            };
            let mut b1 = AfPacketPort::open("b", &member).unwrap();
            let mut b2 = AfPacketPort::open("b", &member).unwrap();
            // The same group id on another interface is refused, with an error that says so.
            let other = AfPacketPort::open("a", &member).unwrap_err();
            assert!(
                matches!(other, AfPacketError::FanoutRefused { group: 0x6d73, .. }),
                "{other}"
            );
            let mut pool = Pool::new(64);
            assert_eq!(send(&mut a, &mut pool, (0..N).map(udp_frame)), N as usize);
            let (mut g1, mut g2) = (BTreeMap::new(), BTreeMap::new());
            receive_all(
                &mut [(&mut b1, &mut g1), (&mut b2, &mut g2)],
                &mut pool,
                N as usize,
            );
            assert!(
                !g1.is_empty() && !g2.is_empty(),
                "hash fanout gave {} and {}",
                g1.len(),
                g2.len()
            );
            assert!(
                g1.keys().all(|k| !g2.contains_key(k)),
                "a frame went to both members"
            );
            let mut all = g1;
            all.append(&mut g2);
            assert_eq!(all.len(), N as usize);
            for (seq, f) in &all {
                assert_eq!(f, &udp_frame(*seq), "frame {seq} differs");
            }
            // Frames the host sends out of b: the group's hook, not the members', decides
            // whether outgoing frames are seen (PACKET_FANOUT_FLAG_IGNORE_OUTGOING).
            let (mut o1, mut o2) = (BTreeMap::new(), BTreeMap::new());
            for seq in N..N + 5 {
                plain_send("b", &udp_frame(seq));
                drain(&mut b1, &mut pool, &mut o1);
                drain(&mut b2, &mut pool, &mut o2);
            }
            std::thread::sleep(Duration::from_millis(20));
            drain(&mut b1, &mut pool, &mut o1);
            drain(&mut b2, &mut pool, &mut o2);
            assert_eq!(
                (o1.len(), o2.len()),
                (0, 0),
                "fanout members saw b's outgoing frames"
            );
        });
    }

    both_rings!(a_full_tx_ring_counts_its_drops: a_full_tx_ring_counts_its_drops_per_frame, a_full_tx_ring_counts_its_drops_blocks);

    fn a_full_tx_ring_counts_its_drops(mode: RxRing) {
        if !require_root("a_full_tx_ring_counts_its_drops") {
            return;
        }
        let ns = with_veth(&tag(mode, "txfull"));
        run_in(&ns, || {
            // One page per ring: two TX slots. Nothing is kicked before the burst ends, so the
            // third frame of a burst finds the ring full.
            let tiny = AfPacketConfig {
                block_size: 4096,
                block_count: 1,
                ..cfg(mode, PortId::Uplink)
            };
            let mut a = AfPacketPort::open("a", &tiny).unwrap();
            let mut b = AfPacketPort::open("b", &cfg(mode, PortId::Tasks)).unwrap();
            let mut pool = Pool::new(64);
            let mut burst = Burst::new();
            for seq in 0..32 {
                burst.push(PacketBuf::from_frame(PortId::Uplink, &test_frame(seq * 7)));
            }
            assert_eq!(a.tx_burst(&mut burst, &mut pool), 2);
            assert!(burst.is_empty());
            assert_eq!(pool.available(), 64 + 32);
            // Too short and too long for the MTU: dropped before the ring.
            burst.push(PacketBuf::from_frame(PortId::Uplink, &[0; 13]));
            burst.push(PacketBuf::from_frame(PortId::Uplink, &[0; 1515]));
            assert_eq!(a.tx_burst(&mut burst, &mut pool), 0);
            let s = a.stats();
            assert_eq!((s.tx, s.tx_ring_full, s.tx_bad_len), (2, 30, 2));
            assert_eq!(
                a.counters(),
                PortCounters {
                    tx_full: 30,
                    tx_bad_len: 2,
                    ..PortCounters::default()
                }
            );
            let mut got = BTreeMap::new();
            receive_all(&mut [(&mut b, &mut got)], &mut pool, 2);
            assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0, 7]);
        });
    }

    both_rings!(a_full_rx_ring_counts_the_kernels_drops: a_full_rx_ring_counts_the_kernels_drops_per_frame, a_full_rx_ring_counts_the_kernels_drops_blocks);

    fn a_full_rx_ring_counts_the_kernels_drops(mode: RxRing) {
        if !require_root("a_full_rx_ring_counts_the_kernels_drops") {
            return;
        }
        let ns = with_veth(&tag(mode, "rxfull"));
        run_in(&ns, || {
            let mut a = AfPacketPort::open("a", &cfg(mode, PortId::Uplink)).unwrap();
            // One page: two slots of a per-frame ring, one block of a block ring (a few 1514-byte
            // frames). Nobody reads it while 64 frames arrive.
            let tiny = AfPacketConfig {
                block_size: 4096,
                block_count: 1,
                block_timeout_ms: 1,
                ..cfg(mode, PortId::Tasks)
            };
            let mut b = AfPacketPort::open("b", &tiny).unwrap();
            let mut pool = Pool::new(64);
            let big = |seq: u32| {
                let mut f = udp_frame(seq);
                f.resize(1514, 0xa5);
                f
            };
            assert_eq!(send(&mut a, &mut pool, (0..64).map(big)), 64);
            std::thread::sleep(Duration::from_millis(20));
            let first = b.counters();
            assert!(first.rx_dropped > 0 && first.rx_dropped < 64, "{first:?}");
            // PACKET_STATISTICS resets on read: the port keeps the sum.
            let mut burst = Burst::new();
            assert!(b.rx_burst(&mut pool, &mut burst) > 0);
            for buf in burst.drain(..) {
                pool.put(buf);
            }
            assert_eq!(b.counters().rx_dropped, first.rx_dropped);
            assert_eq!(b.stats().rx_dropped, first.rx_dropped);
        });
    }

    both_rings!(a_lone_frame_waits_for_no_block_timer: a_lone_frame_waits_for_no_block_timer_per_frame, a_lone_frame_waits_for_no_block_timer_blocks);

    /// A lone frame is the user's at once on a per-frame ring, and held by its open block on a
    /// block ring until the block timer (here a minute) closes it. Told by the ring's status
    /// words once the kernel has counted the frame in (`PACKET_STATISTICS`), not by a clock:
    /// a slow machine cannot make either side fail.
    fn a_lone_frame_waits_for_no_block_timer(mode: RxRing) {
        if !require_root("a_lone_frame_waits_for_no_block_timer") {
            return;
        }
        let ns = with_veth(&tag(mode, "lone"));
        run_in(&ns, || {
            let slow = |port| AfPacketConfig {
                block_timeout_ms: 60_000,
                ..cfg(mode, port)
            };
            let mut a = AfPacketPort::open("a", &slow(PortId::Uplink)).unwrap();
            let mut b = AfPacketPort::open("b", &slow(PortId::Tasks)).unwrap();
            let mut pool = Pool::new(64);
            let mut got = BTreeMap::new();
            // Frames the kernel has put in b's ring (PACKET_STATISTICS resets on each read).
            let mut counted = 0u64;
            let mut count_in = |b: &AfPacketPort| {
                // SAFETY: tpacket_stats_v3 is plain data; all-zero is a valid value.
                let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
                getsockopt_level(
                    b.raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    &mut st,
                )
                .unwrap();
                counted += u64::from(st.tp_packets);
                counted
            };
            let before = count_in(&b);
            assert_eq!(send(&mut a, &mut pool, std::iter::once(udp_frame(1))), 1);
            // Until the kernel has taken the frame in (a veth delivers it on the sender's
            // kick; the bound only stops a broken kernel from hanging the test).
            let mut now_in = before;
            for _ in 0..10_000 {
                now_in = count_in(&b);
                if now_in > before {
                    break;
                }
                std::thread::yield_now();
            }
            assert!(now_in > before, "the kernel never took the frame in");
            match mode {
                RxRing::PerFrame => {
                    // The slot is the user's as soon as the kernel has filled it: poll says
                    // readable and the frame is there.
                    for _ in 0..100 {
                        drain(&mut b, &mut pool, &mut got);
                        if got.contains_key(&1) {
                            break;
                        }
                        wait_readable(&b, 100);
                    }
                    assert!(got.contains_key(&1), "a per-frame ring held the frame back");
                }
                RxRing::Blocks => {
                    // The block holding the frame is still the kernel's: nothing to read.
                    drain(&mut b, &mut pool, &mut got);
                    assert!(!got.contains_key(&1), "the block was handed over early");
                    assert_eq!(
                        b.ring
                            .status(b.rx_block * b.block_size + BLOCK_STATUS)
                            .load(Ordering::Acquire)
                            & libc::TP_STATUS_USER,
                        0,
                        "an open block is the kernel's"
                    );
                }
            }
        });
    }

    #[test]
    fn unknown_interface_is_a_clear_error() {
        match AfPacketPort::open("meshd-nope0", &AfPacketConfig::default()) {
            Err(e @ AfPacketError::NoSuchInterface(_)) => {
                assert_eq!(
                    e.to_string().split(':').next(),
                    Some("no such interface meshd-nope0")
                );
            }
            other => panic!("expected NoSuchInterface, got {other:?}"),
        }
        assert!(matches!(
            AfPacketPort::open("a-name-too-long-for-linux", &AfPacketConfig::default()),
            Err(AfPacketError::BadName(_))
        ));
        assert!(matches!(
            AfPacketPort::open("", &AfPacketConfig::default()),
            Err(AfPacketError::BadName(_))
        ));
    }

    #[test]
    fn without_cap_net_raw_the_error_says_so() {
        if testbed::sys::is_root() {
            println!("skipping without_cap_net_raw_the_error_says_so: runs only as a normal user");
            return;
        }
        match AfPacketPort::open("lo", &AfPacketConfig::default()) {
            Err(e @ AfPacketError::PermissionDenied(_)) => {
                assert!(e.to_string().contains("needs root or CAP_NET_RAW"), "{e}");
            }
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }

    #[test]
    fn bad_ring_configs_are_refused_before_any_system_call() {
        let bad = [
            AfPacketConfig {
                block_size: 5000,
                ..AfPacketConfig::default()
            },
            AfPacketConfig {
                frame_size: 2040,
                ..AfPacketConfig::default()
            },
            AfPacketConfig {
                frame_size: 64,
                ..AfPacketConfig::default()
            },
            AfPacketConfig {
                block_size: 4096,
                frame_size: 8192,
                ..AfPacketConfig::default()
            },
            AfPacketConfig {
                block_count: 0,
                ..AfPacketConfig::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(AfPacketPort::open("lo", &c), Err(AfPacketError::Config(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn v2_header_layout_matches_the_kernel() {
        // tpacket2_hdr is 32 bytes: TX frames start right after it; TPACKET2_HDRLEN is 52, so an
        // untagged received frame starts at TPACKET_ALIGN(52 + 16) - 14 = 66.
        assert_eq!((TX2_DATA_OFFSET, FRAME2_STATUS), (32, 0));
        assert_eq!(
            TX2_DATA_OFFSET + size_of::<libc::sockaddr_ll>(),
            libc::TPACKET2_HDRLEN
        );
        assert_eq!(RX2_FRAME_OFFSET, 66);
        assert_eq!(
            (
                offset_of!(libc::tpacket2_hdr, tp_len),
                offset_of!(libc::tpacket2_hdr, tp_snaplen),
                offset_of!(libc::tpacket2_hdr, tp_mac),
                offset_of!(libc::tpacket2_hdr, tp_vlan_tci),
            ),
            (4, 8, 12, 24)
        );
    }

    #[test]
    fn default_is_the_per_frame_ring() {
        assert_eq!(AfPacketConfig::default().rx_ring, RxRing::PerFrame);
    }

    #[test]
    fn tx_header_layout_matches_the_kernel() {
        // tpacket3_hdr is 48 bytes: frames start right after it, TPACKET3_HDRLEN is 68.
        assert_eq!(TX_DATA_OFFSET, 48);
        assert_eq!(TPACKET3_HDRLEN, 68);
        assert_eq!(
            (BLOCK_STATUS, BLOCK_NUM_PKTS, BLOCK_FIRST_PKT, FRAME_STATUS),
            (8, 12, 16, 20)
        );
    }

    /// Frames per second across the veth, one sender and one receiver thread. Run with
    /// `cargo test --release -p dataplane --lib afpacket_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn afpacket_throughput() {
        if !require_root("afpacket_throughput") {
            return;
        }
        let ns = with_veth("bench");
        for (mode, size) in [
            (RxRing::PerFrame, 64usize),
            (RxRing::PerFrame, 1514),
            (RxRing::Blocks, 64),
            (RxRing::Blocks, 1514),
        ] {
            let secs = 2.0;
            let (sent, received, stats_a, stats_b) = run_in(&ns, || {
                let mut a = AfPacketPort::open("a", &cfg(mode, PortId::Uplink)).unwrap();
                let big = AfPacketConfig {
                    block_size: 1 << 20,
                    block_count: 16,
                    ..cfg(mode, PortId::Tasks)
                };
                let mut b = AfPacketPort::open("b", &big).unwrap();
                let stop = std::sync::atomic::AtomicBool::new(false);
                std::thread::scope(|s| {
                    let rx = s.spawn(|| {
                        ns.enter().unwrap();
                        let mut pool = Pool::new(64);
                        let mut burst = Burst::new();
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let got = b.rx_burst(&mut pool, &mut burst);
                            n += got as u64;
                            for buf in burst.drain(..) {
                                pool.put(buf);
                            }
                            if got == 0 {
                                wait_readable(&b, 1);
                            }
                        }
                        (n, b.stats())
                    });
                    let mut pool = Pool::new(64);
                    let frame = {
                        let mut f = test_frame(0);
                        f.resize(size, 0xa5);
                        f
                    };
                    let t0 = Instant::now();
                    let mut sent = 0u64;
                    let mut burst = Burst::new();
                    while t0.elapsed().as_secs_f64() < secs {
                        while !burst.is_full() {
                            let mut buf = pool.get().unwrap();
                            buf.fill(&frame);
                            burst.push(buf);
                        }
                        sent += a.tx_burst(&mut burst, &mut pool) as u64;
                    }
                    a.flush();
                    std::thread::sleep(Duration::from_millis(50));
                    stop.store(true, Ordering::Relaxed);
                    let (n, sb) = rx.join().unwrap();
                    (sent, n, a.stats(), sb)
                })
            });
            println!(
                "afpacket {mode:?} {size:4} B: tx {:.2} Mpps, rx {:.2} Mpps ({:.0} Mbit/s), tx_ring_full {}, rx_dropped {}, rx_ring_frozen {}",
                sent as f64 / secs / 1e6,
                received as f64 / secs / 1e6,
                received as f64 * size as f64 * 8.0 / secs / 1e6,
                stats_a.tx_ring_full,
                stats_b.rx_dropped,
                stats_b.rx_ring_frozen,
            );
        }
    }
}
