//! DPDK port (cargo feature `dpdk`, `meshd --io dpdk`): one RX/TX queue pair of a DPDK Ethernet
//! device per worker — a NIC bound to a poll-mode driver (a PCI address), or one of DPDK's
//! virtual devices (`net_memif` over shared memory, `net_af_packet`/`net_af_xdp` on a Linux
//! interface).
//!
//! - **The binding** is a C file (`shim.c`) compiled against the installed DPDK (pkg-config
//!   `libdpdk`, by build.rs): DPDK's burst and mbuf calls are static inline and its
//!   configuration structures change between releases, so Rust sees only the shim's plain
//!   functions and small structures ([`sys`]), and DPDK's objects as opaque pointers. No crate
//!   binds DPDK 22.11 and is kept up (`capsule` stops at 19.11), so this is the whole binding.
//! - **EAL** starts once per process ([`init`]) with the operator's arguments (`--dpdk-args`),
//!   to which meshd adds what it needs unless given: the first worker's core (`-l`), its own
//!   memory (`--in-memory`, or `--no-shconf` with `--no-huge`: several meshd and DPDK processes side by side) and quieter logs.
//!   The affinity EAL gives the calling thread is undone: only the workers are pinned.
//! - **Queues**: a device opened for N workers gets N queue pairs, with RSS over them (the
//!   symmetric Toeplitz key where the device takes a 40-byte key, so both directions of a flow
//!   reach one queue); what reaches another worker's queue is steered to its owner by the
//!   handoff rings, as with AF_PACKET fanout. Each worker registers its thread with EAL (an
//!   lcore id: mempool caches work).
//! - **Buffers: zero-copy on the way through.** A received mbuf becomes the pipeline's
//!   [`PacketBuf`] as it is (its data room is the buffer's block, the PMD's headroom the
//!   buffer's: 128 bytes, room for VXLAN's 50), is rewritten in place and leaves in the same
//!   mbuf, so a forwarded frame is neither copied nor allocated for by meshd (the memif PMD
//!   copies between its shared ring and the mbuf in any case: its copy mode). A frame made
//!   in a heap buffer (the host stack's, an ICMP error, a fragment's pieces) is copied into a
//!   fresh mbuf to go out; a received frame for the host stack into a heap buffer to stay
//!   ([`Pool::keep`]). Tried first: copying every frame in and out (one memcpy each way, a
//!   fresh mbuf per frame sent), 0.75× testpmd at 64 B in `bench mesh --io memif`.
//! - **Bad input**: a frame in more than one mbuf (larger than the 2 KiB data room) is
//!   dropped and counted (`rx_chained`), one said to lie outside its data room too
//!   (`rx_too_long`); frames the PMD does not take on transmit (ring full, a transmit error)
//!   are freed and counted (`tx_full`), or (`tx_link_down`) when the link was down at the
//!   worker's last look (its counters' refresh, about every 10 ms; the first queue also counts
//!   the link going down, `link_down`); an mbuf pool found empty when a heap buffer's frame
//!   is to go out drops that frame (`tx_no_mbuf`). A dropped frame's mbuf goes back to its
//!   pool where the pipeline drops it (the buffer's `Drop`).
#![allow(unsafe_code)]

pub mod sys;

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use super::sys::sendable;
use super::{Burst, Port, PortCounters, BURST};
use crate::buf::{PacketBuf, Pool, PortId, BUF_SIZE};
use ctl::proto::{DeviceReport, DpdkReport};

/// Mbufs per worker's pool: both ports' RX and TX rings full, bursts in flight and the
/// per-lcore cache (2^n - 1: a mempool's best size).
pub const POOL_MBUFS: u32 = 8191;
/// The per-lcore cache of a pool.
const POOL_CACHE: u32 = 256;
/// RX and TX descriptors per queue (the PMD may adjust them).
const DESCRIPTORS: u16 = 1024;

/// Why DPDK could not be started or a device opened: said so the operator knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("DPDK's EAL did not start ({errno}: {why}) with arguments {args:?}: {hint}")]
    Eal {
        errno: i32,
        why: String,
        args: Vec<String>,
        hint: &'static str,
    },
    #[error("EAL already started with other arguments in this process")]
    EalAgain,
    #[error("DPDK has no device {name:?} ({count} devices probed): {hint}")]
    NoDevice {
        name: String,
        count: u16,
        hint: &'static str,
    },
    #[error("DPDK device {name:?}: {what} failed ({errno}: {why}){hint}")]
    Device {
        name: String,
        what: &'static str,
        errno: i32,
        why: String,
        hint: &'static str,
    },
    #[error("DPDK device {name:?} has {have} queue pairs and meshd needs {want}, one per worker: give --cores fewer cores{hint}")]
    Queues {
        name: String,
        have: u16,
        want: u16,
        hint: &'static str,
    },
    #[error("DPDK could not make a pool of {n} mbufs ({why}): give EAL more memory (-m 512 in --dpdk-args), or reserve hugepages")]
    Pool { n: u32, why: String },
}

fn strerror(e: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sys::meshd_strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

fn errno() -> i32 {
    // SAFETY: reads EAL's thread-local rte_errno.
    unsafe { sys::meshd_errno() }
}

/// What the operator gives EAL, and what meshd adds to it.
pub fn eal_args(user: &[String], first_core: usize, devices: &[&DeviceSpec]) -> Vec<String> {
    let has = |opts: &[&str]| {
        user.iter().any(|a| {
            opts.iter()
                .any(|o| a == o || a.starts_with(&format!("{o}=")))
        })
    };
    let mut args = vec!["meshd".to_string()];
    if !has(&["-l", "-c", "--lcores"]) {
        args.extend(["-l".into(), first_core.to_string()]);
    }
    // No files shared with other DPDK processes (several run side by side): --in-memory, or
    // with --no-huge (which it does not go with) --no-shconf.
    if !has(&["--in-memory", "--file-prefix", "--proc-type", "--no-shconf"]) {
        args.push(
            if has(&["--no-huge"]) {
                "--no-shconf"
            } else {
                "--in-memory"
            }
            .into(),
        );
    }
    if !has(&["--log-level"]) {
        args.push("--log-level=*:warning".into());
    }
    args.extend(user.iter().cloned());
    for d in devices {
        match *d {
            DeviceSpec::Pci(a) => args.extend(["-a".into(), a.clone()]),
            DeviceSpec::Vdev { spec, .. } => args.extend(["--vdev".into(), spec.clone()]),
            DeviceSpec::Named(_) => {}
        }
    }
    args
}

/// How a port names its device (`--uplink`, `--tasks` with `--io dpdk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A PCI address (`0000:03:00.0`): probed with `-a`.
    Pci(String),
    /// A virtual device with its arguments (`net_memif0,role=server,socket=/run/m.sock`):
    /// created with `--vdev`, named by what comes before the first comma.
    Vdev { name: String, spec: String },
    /// A device EAL's own arguments bring (--dpdk-args), by its DPDK name.
    Named(String),
}

impl DeviceSpec {
    /// Reads a `--uplink`/`--tasks` value.
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty DPDK device".into());
        }
        let pci = |x: &str| {
            let p: Vec<&str> = x.split([':', '.']).collect();
            (p.len() == 3 || p.len() == 4)
                && p.iter()
                    .all(|q| !q.is_empty() && q.chars().all(|c| c.is_ascii_hexdigit()))
        };
        if pci(s) {
            return Ok(DeviceSpec::Pci(s.to_string()));
        }
        match s.split_once(',') {
            Some((name, _)) if name.starts_with("net_") => Ok(DeviceSpec::Vdev {
                name: name.to_string(),
                spec: s.to_string(),
            }),
            Some((name, _)) => Err(format!(
                "{s:?}: a virtual device's driver name starts with net_ (net_memif0,..., net_af_packet0,iface=eth1, net_af_xdp0,iface=eth1), not {name:?}"
            )),
            None => Ok(DeviceSpec::Named(s.to_string())),
        }
    }

    /// The name DPDK knows the device by.
    pub fn name(&self) -> &str {
        match self {
            DeviceSpec::Pci(a) => a,
            DeviceSpec::Vdev { name, .. } => name,
            DeviceSpec::Named(n) => n,
        }
    }
}

static EAL: OnceLock<Result<Vec<String>, (i32, String)>> = OnceLock::new();

/// What to do about an EAL start failure, by its errno.
fn eal_hint(errno: i32, args: &[String]) -> &'static str {
    match errno {
        libc::ENOMEM => {
            if args.iter().any(|a| a == "--no-huge") {
                "not enough memory: give EAL more (-m 512 in --dpdk-args)"
            } else {
                "no hugepages to take: reserve some (echo 512 > /proc/sys/vm/nr_hugepages) or add --no-huge to --dpdk-args"
            }
        }
        libc::EACCES => {
            if args.iter().any(|a| a == "--no-huge") {
                "permission denied: run meshd as root (or with the capabilities DPDK needs)"
            } else {
                "no hugepages to use (EAL found none mounted and reserved, or may not read them): reserve some (echo 512 > /proc/sys/vm/nr_hugepages) and run meshd as root, or add --no-huge to --dpdk-args"
            }
        }
        libc::EALREADY => "EAL runs already in this process",
        libc::ENODEV => "a device could not be probed: check the --vdev/-a arguments and that no other process holds the device (the EAL lines above say which)",
        libc::EINVAL => "an argument was refused: check --dpdk-args (the EAL lines above say which; a plugin directory -d must not be world-writable)",
        libc::ENOEXEC => "a driver plugin could not be loaded: -d must name a plugin directory that is not world-writable (EAL refuses those)",
        libc::ENOTSUP => "this machine lacks something EAL needs (the EAL lines above say what)",
        _ => "the EAL lines above say why",
    }
}

/// Starts EAL once for the process with `args` (from [`eal_args`]); again with the same
/// arguments is a no-op, with others an error. The calling thread keeps its CPU affinity.
pub fn init(args: &[String]) -> Result<(), DpdkError> {
    let r = EAL.get_or_init(|| {
        let c: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap_or_default())
            .collect();
        let mut argv: Vec<*mut std::ffi::c_char> =
            c.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        // EAL pins the calling thread to its main lcore: the threads meshd starts after it
        // (host, control, metrics) would inherit that. Keep and restore the affinity.
        let saved = crate::port::sys::allowed_cpus().ok();
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let argc = args.len() as i32;
        // SAFETY: argv holds argc valid NUL-terminated strings and a NULL, alive across the
        // call (EAL may permute the array; it keeps pointers into the strings, which live in
        // `c` until the end of this closure: EAL copies what it keeps).
        let rc = unsafe { sys::meshd_eal_init(argc, argv.as_mut_ptr()) };
        if let Some(cpus) = saved {
            let _ = crate::port::sys::set_allowed_cpus(&cpus);
        }
        if rc < 0 {
            let e = errno();
            Err((e, strerror(e)))
        } else {
            Ok(args.to_vec())
        }
    });
    match r {
        Ok(a) if a == args => Ok(()),
        Ok(_) => Err(DpdkError::EalAgain),
        Err((e, why)) => Err(DpdkError::Eal {
            errno: *e,
            why: why.clone(),
            args: args.to_vec(),
            hint: eal_hint(*e, args),
        }),
    }
}

/// One mbuf pool (a worker's).
#[derive(Debug)]
pub struct MbufPool {
    ptr: *mut sys::RteMempool,
    /// Mbufs it was made with.
    pub size: u32,
}

// SAFETY: a DPDK mempool is safe to use from any thread (its ring is multi-producer and
// multi-consumer; threads without an lcore id bypass the per-lcore cache).
unsafe impl Send for MbufPool {}
// SAFETY: as above.
unsafe impl Sync for MbufPool {}

impl MbufPool {
    /// Makes a pool named `name` (unique in the process) of [`POOL_MBUFS`] mbufs.
    pub fn new(name: &str) -> Result<MbufPool, DpdkError> {
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: EAL runs (the caller started it); the name is NUL-terminated.
        let ptr = unsafe { sys::meshd_pool_create(c.as_ptr(), POOL_MBUFS, POOL_CACHE) };
        if ptr.is_null() {
            return Err(DpdkError::Pool {
                n: POOL_MBUFS,
                why: strerror(errno()),
            });
        }
        Ok(MbufPool {
            ptr,
            size: POOL_MBUFS,
        })
    }

    /// Mbufs taken from the pool and not given back: those the PMD holds in its RX rings, those
    /// in flight (a burst, a handoff ring, fragments waiting for their first), and any leaked.
    /// Between bursts of a quiet worker it returns to what the devices hold.
    pub fn in_use(&self) -> u32 {
        // SAFETY: the pool is live; the count only reads it.
        unsafe { sys::meshd_pool_in_use(self.ptr) }
    }
}

impl Drop for MbufPool {
    fn drop(&mut self) {
        // Buffers still holding its mbufs (in a queue between threads, say, when meshd stops)
        // free them into it later: a pool in use is left to the process's end.
        let in_use = self.in_use();
        if in_use > 0 {
            tracing::debug!(in_use, "DPDK: an mbuf pool still in use is not freed");
            return;
        }
        // SAFETY: the pool's users (devices, ports, buffers) are gone before it.
        unsafe { sys::meshd_pool_free(self.ptr) };
    }
}

/// An Ethernet device, started with one queue pair per worker; stopped and closed when dropped.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub id: u16,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub driver: String,
    pub queues: u16,
    /// Whether the device spreads flows over the queues itself (RSS).
    pub rss: bool,
}

fn device_err(name: &str, what: &'static str, rc: i32, hint: &'static str) -> DpdkError {
    let e = if rc < 0 { -rc } else { errno() };
    DpdkError::Device {
        name: name.to_string(),
        what,
        errno: e,
        why: strerror(e),
        hint,
    }
}

impl Device {
    /// Finds the device `spec` names (EAL must run, with the device's --vdev or -a) and starts
    /// it with a queue pair per pool, RX queue q filled from `pools[q]`, with MTU `mtu` if given.
    pub fn start(
        spec: &DeviceSpec,
        pools: &[&MbufPool],
        mtu: Option<u16>,
    ) -> Result<Device, DpdkError> {
        let name = spec.name();
        let c = CString::new(name).unwrap_or_default();
        let mut id = 0u16;
        // SAFETY: EAL runs; the name is NUL-terminated; id is written on success.
        if unsafe { sys::meshd_port_by_name(c.as_ptr(), &mut id) } != 0 {
            return Err(DpdkError::NoDevice {
                name: name.to_string(),
                // SAFETY: EAL runs.
                count: unsafe { sys::meshd_port_count() },
                hint: match spec {
                    DeviceSpec::Named(_) => "name a device that --dpdk-args creates (--vdev NAME,...) or give its PCI address or net_...,ARGS here",
                    _ => "EAL did not create it: check its arguments (a net_af_packet or net_af_xdp iface= must exist in meshd's network namespace; a memif socket= path must be reachable) and the EAL lines above; a PCI device must be bound to vfio-pci or uio_pci_generic",
                },
            });
        }
        let mut info = sys::PortInfo::default();
        // SAFETY: id is a valid port; info is the shim's structure.
        let rc = unsafe { sys::meshd_port_info(id, &mut info) };
        if rc != 0 {
            return Err(device_err(name, "reading its information", rc, ""));
        }
        #[allow(clippy::cast_possible_truncation)]
        let want = pools.len() as u16;
        let have = info.max_rx_queues.min(info.max_tx_queues);
        if have < want {
            return Err(DpdkError::Queues {
                name: name.to_string(),
                have,
                want,
                hint: if name.starts_with("net_af_packet") {
                    " (or give the vdev qpairs=N)"
                } else {
                    ""
                },
            });
        }
        let mut ptrs: Vec<*mut sys::RteMempool> = pools.iter().map(|p| p.ptr).collect();
        let mut stage = 0;
        // SAFETY: id is valid; ptrs holds `want` live pools; stage is written.
        let rc = unsafe {
            sys::meshd_port_start(
                id,
                want,
                DESCRIPTORS,
                DESCRIPTORS,
                mtu.unwrap_or(0),
                ptrs.as_mut_ptr(),
                &mut stage,
            )
        };
        if rc != 0 {
            let what = [
                "configuring it",
                "setting up an RX queue",
                "setting up a TX queue",
                "starting it",
                "setting its MTU",
            ][stage.clamp(0, 4) as usize];
            let hint = if stage == 4 {
                ": the device does not take this --uplink-mtu (its driver cannot change the MTU, or its largest frame is smaller): leave --uplink-mtu out to keep the device's"
            } else {
                ": is another process using it? (a memif socket, an interface another DPDK process holds)"
            };
            return Err(device_err(name, what, rc, hint));
        }
        let driver = info
            .driver
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        Ok(Device {
            name: name.to_string(),
            id,
            mac: info.mac,
            mtu: mtu.unwrap_or(info.mtu),
            driver,
            queues: want,
            rss: info.rss != 0 && want > 1,
        })
    }

    /// The link as the PMD reports it.
    pub fn link(&self) -> sys::Link {
        link(self.id)
    }

    /// What a thread other than the workers needs to read the device's counters.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle {
            id: self.id,
            name: self.name.clone(),
            driver: self.driver.clone(),
        }
    }
}

/// A started device's id and names, for reading its link and counters ([`report`]).
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    id: u16,
    name: String,
    driver: String,
}

/// The `stats` rows of the devices (named by their meshd port) and the pools. Reads the PMDs'
/// counters (`rte_eth_stats_get`, safe beside the workers' bursts: the drivers' counters are
/// per queue and summed when asked) and the pools' counts; a device closed meanwhile reads as
/// zeros.
pub fn report(devices: &[(&str, DeviceHandle)], pools: &[std::sync::Arc<MbufPool>]) -> DpdkReport {
    DpdkReport {
        devices: devices
            .iter()
            .map(|(port, d)| {
                let l = link(d.id);
                let s = stats(d.id);
                DeviceReport {
                    port: (*port).to_string(),
                    name: d.name.clone(),
                    driver: d.driver.clone(),
                    link_up: l.up != 0,
                    speed_mbps: l.speed_mbps,
                    rx_packets: s.ipackets,
                    tx_packets: s.opackets,
                    rx_bytes: s.ibytes,
                    tx_bytes: s.obytes,
                    rx_missed: s.imissed,
                    rx_errors: s.ierrors,
                    tx_errors: s.oerrors,
                    rx_nombuf: s.rx_nombuf,
                }
            })
            .collect(),
        mbufs_in_use: pools.iter().map(|p| u64::from(p.in_use())).sum(),
        mbufs: pools.iter().map(|p| u64::from(p.size)).sum(),
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the device was started by `start`; no port uses it any more (the workers
        // that held its queues have ended before the devices are dropped).
        unsafe { sys::meshd_port_close(self.id) };
    }
}

fn link(id: u16) -> sys::Link {
    let mut l = sys::Link::default();
    // SAFETY: id is a started port; l is the shim's structure.
    unsafe { sys::meshd_port_link(id, &mut l) };
    l
}

fn stats(id: u16) -> sys::Stats {
    let mut s = sys::Stats::default();
    // SAFETY: id is a started port; s is the shim's structure.
    unsafe { sys::meshd_port_stats(id, &mut s) };
    s
}

/// Drops of a DPDK port, counted by meshd (the PMD's own are in [`sys::Stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DpdkStats {
    pub rx: u64,
    pub tx: u64,
    /// Frames in more than one mbuf: dropped.
    pub rx_chained: u64,
    /// Frames the PMD took an 802.1Q tag off that could not get it back: dropped.
    pub rx_bad: u64,
    /// Frames the PMD said lie outside their mbuf's data room: dropped.
    pub rx_too_long: u64,
    /// Frames the PMD did not take on transmit (ring full or a transmit error): freed.
    pub tx_full: u64,
    /// Frames the PMD did not take while the link was down (as last seen): freed.
    pub tx_link_down: u64,
    /// Frames not sent for their length.
    pub tx_bad_len: u64,
    /// Frames not sent because the mbuf pool was empty.
    pub tx_no_mbuf: u64,
    /// Times the link was seen going down (by the device's first queue only: one count per
    /// transition, not one per worker).
    pub link_down: u64,
}

/// One worker's queue pair on a started [`Device`].
#[derive(Debug)]
pub struct DpdkPort {
    port: PortId,
    id: u16,
    queue: u16,
    pool: std::sync::Arc<MbufPool>,
    mtu: usize,
    pub stats: DpdkStats,
    /// The link as the last counters' refresh saw it (at first, as it was when the port was
    /// made: a link that was never up, such as a memif server's before its peer connects, has
    /// not gone down).
    link_up: bool,
    /// A burst's mbuf pointers and frames, kept from call to call rather than zeroed on the
    /// stack at each (a memset per burst in `perf`); what they hold between calls is stale.
    scratch: Box<Scratch>,
}

/// See [`DpdkPort`]'s `scratch`.
#[derive(Debug)]
struct Scratch {
    mbufs: [*mut sys::RteMbuf; BURST],
    frames: [sys::Frame; BURST],
    other: [*mut sys::RteMbuf; BURST],
    off: [u16; BURST],
    len: [u16; BURST],
}

// SAFETY: the port's queue pair is used by the one thread that owns the DpdkPort (the PMD's
// per-queue calls are safe from any single thread at a time); the pool is Send and Sync.
unsafe impl Send for DpdkPort {}

impl DpdkPort {
    /// Queue `queue` of `dev`, its frames marked `port`, sending with mbufs from `pool` (the
    /// pool that fills the queue's RX ring).
    pub fn new(dev: &Device, queue: u16, port: PortId, pool: std::sync::Arc<MbufPool>) -> DpdkPort {
        DpdkPort {
            port,
            id: dev.id,
            queue,
            pool,
            mtu: usize::from(dev.mtu),
            stats: DpdkStats::default(),
            link_up: dev.link().up != 0,
            scratch: Box::new(Scratch {
                mbufs: [std::ptr::null_mut(); BURST],
                frames: [sys::Frame::default(); BURST],
                other: [std::ptr::null_mut(); BURST],
                off: [0; BURST],
                len: [0; BURST],
            }),
        }
    }
}

/// Gives the calling thread (a worker, before its first burst) an lcore id: its mbuf pool's
/// per-lcore cache works only with one. Once per thread: each call takes another id.
pub fn register_thread() {
    // SAFETY: EAL runs (the devices a worker polls were started after it).
    if unsafe { sys::meshd_thread_register() } != 0 {
        tracing::warn!(
            "DPDK: no lcore id left for this worker thread: its mbuf pool runs without a cache"
        );
    }
}

impl Port for DpdkPort {
    fn rx_burst(&mut self, _pool: &mut Pool, out: &mut Burst) -> usize {
        let want = out.remaining_capacity().min(BURST);
        let Scratch {
            mbufs,
            frames,
            other: bad,
            ..
        } = &mut *self.scratch;
        let mut nbad = 0;
        #[allow(clippy::cast_possible_truncation)]
        // SAFETY: mbufs and frames have room for `want` (≤ BURST) entries; the queue is this
        // port's.
        let got = usize::from(unsafe {
            sys::meshd_rx_frames(
                self.id,
                self.queue,
                mbufs.as_mut_ptr(),
                frames.as_mut_ptr(),
                want as u16,
            )
        });
        let mut n = 0;
        for (&m, f) in mbufs[..got].iter().zip(&frames[..got]) {
            let (cap, off, len) = (usize::from(f.cap), usize::from(f.off), usize::from(f.len));
            let why = match std::ptr::NonNull::new(f.room) {
                None => &mut self.stats.rx_bad,
                Some(_) if f.segs != 1 => &mut self.stats.rx_chained,
                Some(_) if off + len > cap => &mut self.stats.rx_too_long,
                Some(room) => {
                    // SAFETY: a received single-segment mbuf, ours alone from here; `room` is
                    // its data room of `cap` bytes, the frame inside it (checked above).
                    out.push(unsafe {
                        PacketBuf::from_mbuf(m.cast(), room, cap, off, len, self.port)
                    });
                    n += 1;
                    continue;
                }
            };
            *why += 1;
            bad[nbad] = m;
            nbad += 1;
        }
        if nbad > 0 {
            #[allow(clippy::cast_possible_truncation)]
            // SAFETY: the first `nbad` pointers are received mbufs no buffer took.
            unsafe {
                sys::meshd_free_bulk(bad.as_mut_ptr(), nbad as u32)
            };
        }
        self.stats.rx += n as u64;
        n
    }

    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        let want = frames.len();
        if want == 0 {
            return 0;
        }
        // Frames in heap buffers (made by the host stack, ICMP errors, fragments) are copied
        // into fresh mbufs; received ones leave in their own.
        let heap = frames.iter().filter(|b| !b.is_mbuf()).count();
        let Scratch {
            mbufs,
            other: fresh,
            off,
            len,
            ..
        } = &mut *self.scratch;
        #[allow(clippy::cast_possible_truncation)]
        // SAFETY: fresh has room for `heap` (≤ BURST) pointers.
        let have_fresh = heap == 0
            || unsafe { sys::meshd_alloc_bulk(self.pool.ptr, fresh.as_mut_ptr(), heap as u32) }
                == 0;
        let mut used = 0;
        let mut n = 0;
        for buf in frames.drain(..) {
            if !sendable(buf.data(), self.mtu, BUF_SIZE) {
                self.stats.tx_bad_len += 1;
                pool.put(buf);
                continue;
            }
            match buf.take_mbuf() {
                Ok((m, o, l)) => {
                    (mbufs[n], off[n], len[n]) = (m.cast(), o, l);
                    n += 1;
                }
                Err(buf) => {
                    if !have_fresh {
                        self.stats.tx_no_mbuf += 1;
                        pool.put(buf);
                        continue;
                    }
                    let data = buf.data();
                    let mut o = 0u16;
                    #[allow(clippy::cast_possible_truncation)]
                    // SAFETY: fresh[used] is a fresh mbuf of ours (one per heap frame);
                    // `put` checks its room. Sendable frames are shorter than 64 KiB.
                    let dst =
                        unsafe { sys::meshd_mbuf_put(fresh[used], data.len() as u16, &mut o) };
                    if dst.is_null() {
                        self.stats.tx_bad_len += 1;
                    } else {
                        // SAFETY: `put` made room for data.len() bytes at dst in the mbuf.
                        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
                        #[allow(clippy::cast_possible_truncation)]
                        let l = data.len() as u16;
                        (mbufs[n], off[n], len[n]) = (fresh[used], o, l);
                        n += 1;
                        used += 1;
                    }
                    pool.put(buf);
                }
            }
        }
        if have_fresh && used < heap {
            #[allow(clippy::cast_possible_truncation)]
            // SAFETY: fresh mbufs no frame went into (their frames' length refused) are ours.
            unsafe {
                sys::meshd_free_bulk(fresh[used..].as_mut_ptr(), (heap - used) as u32)
            };
        }
        let mut sent = 0;
        if n > 0 {
            #[allow(clippy::cast_possible_truncation)]
            // SAFETY: the first `n` (≤ BURST) mbufs are ours, each holding its frame at
            // off/len; the queue is this port's.
            let took = unsafe {
                sys::meshd_tx_frames(
                    self.id,
                    self.queue,
                    mbufs.as_mut_ptr(),
                    off.as_ptr(),
                    len.as_ptr(),
                    n as u16,
                )
            };
            sent = usize::from(took);
        }
        if sent < n {
            // A link seen down (at the last counters' refresh) takes nothing: those frames
            // are counted for it, not for a full ring.
            if self.link_up {
                self.stats.tx_full += (n - sent) as u64;
            } else {
                self.stats.tx_link_down += (n - sent) as u64;
            }
            #[allow(clippy::cast_possible_truncation)]
            // SAFETY: the PMD took the first `sent`; the rest are still ours.
            unsafe {
                sys::meshd_free_bulk(mbufs[sent..].as_mut_ptr(), (n - sent) as u32)
            };
        }
        self.stats.tx += sent as u64;
        sent
    }

    fn counters(&mut self) -> PortCounters {
        let l = link(self.id);
        if self.link_up && l.up == 0 && self.queue == 0 {
            self.stats.link_down += 1;
        }
        self.link_up = l.up != 0;
        let s = &self.stats;
        // The PMD's counters are the device's, not the queue's: the first queue reports them.
        let pmd = if self.queue == 0 {
            stats(self.id)
        } else {
            sys::Stats::default()
        };
        PortCounters {
            rx_dropped: pmd.imissed + pmd.rx_nombuf + pmd.ierrors,
            rx_too_long: s.rx_too_long + s.rx_chained + s.rx_bad,
            tx_full: s.tx_full + s.tx_no_mbuf,
            tx_bad_len: s.tx_bad_len,
            tx_link_down: s.tx_link_down,
            link_downs: s.link_down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_are_pci_addresses_vdevs_or_names() {
        assert_eq!(
            DeviceSpec::parse("0000:03:00.0"),
            Ok(DeviceSpec::Pci("0000:03:00.0".into()))
        );
        let v = DeviceSpec::parse("net_af_packet0,iface=up0").unwrap();
        assert_eq!(v.name(), "net_af_packet0");
        assert_eq!(
            DeviceSpec::parse("net_memif0"),
            Ok(DeviceSpec::Named("net_memif0".into()))
        );
        assert!(DeviceSpec::parse("").is_err());
        let e = DeviceSpec::parse("memif0,socket=/x").unwrap_err();
        assert!(e.contains("net_"), "{e}");
    }

    #[test]
    fn eal_gets_meshds_defaults_unless_the_operator_gave_them() {
        let v = DeviceSpec::parse("net_af_packet0,iface=up0").unwrap();
        let a = eal_args(
            &["--no-huge".into()],
            1,
            &[&v, &DeviceSpec::Pci("0000:03:00.0".into())],
        );
        assert_eq!(
            a,
            [
                "meshd",
                "-l",
                "1",
                "--no-shconf",
                "--log-level=*:warning",
                "--no-huge",
                "--vdev",
                "net_af_packet0,iface=up0",
                "-a",
                "0000:03:00.0"
            ]
        );
        let a = eal_args(&["-l".into(), "3".into(), "--log-level=8".into()], 1, &[]);
        assert_eq!(a, ["meshd", "--in-memory", "-l", "3", "--log-level=8"]);
    }
}
