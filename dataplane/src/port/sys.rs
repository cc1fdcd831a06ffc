//! The Linux system calls every port backend (and the bench's sink) needs, in one place: raw
//! sockets, socket options, interface lookup and MTU, shared memory mappings, and waiting for
//! a descriptor to become readable. Each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;

/// An Ethernet header, and a VLAN tag's bytes.
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;

/// Memory mapped for a port: its rings shared with the kernel, or (AF_XDP) its UMEM. Unmapped
/// on drop.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by exactly one `Mapping`, itself owned by one port, and is only
// accessed through that port's `&mut self` methods, so moving it to another thread moves every
// user-space access with it. The kernel side does not care which thread maps it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes, populated: of the socket `fd` at offset `pgoff` (its rings), or
    /// anonymous memory when `fd` is `None`.
    pub fn new(fd: Option<RawFd>, len: usize, pgoff: u64) -> io::Result<Mapping> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a new mapping at an address the kernel picks; no existing memory is
        // affected. The kernel checks a ring mapping's length and offset against the rings it
        // set up.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                pgoff as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(base.cast::<u8>())
            .map(|base| Mapping { base, len })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))
    }

    /// Pointer to byte `off` of the mapping. Computing it is safe; dereferencing needs
    /// `off + len <= self.len`, which the callers' ring geometry guarantees.
    #[inline]
    pub fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.len);
        self.base.as_ptr().wrapping_add(off)
    }

    /// Bytes mapped.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped (never: a mapping has at least one page).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads a `T` (plain data: a ring or block header) at byte `off`, unaligned.
    ///
    /// # Safety
    /// `off + size_of::<T>() <= self.len()`, and user space owns those bytes by the ring's
    /// protocol (the kernel is not writing them), every bit pattern being a valid `T`.
    #[inline]
    pub unsafe fn read<T: Copy>(&self, off: usize) -> T {
        debug_assert!(off + size_of::<T>() <= self.len);
        // SAFETY: in bounds and not written concurrently, by the caller's contract.
        unsafe { ptr::read_unaligned(self.at(off).cast::<T>()) }
    }

    /// The `len` bytes at byte `off`.
    ///
    /// # Safety
    /// `off + len <= self.len()`, and user space owns those bytes by the ring's protocol for as
    /// long as the slice lives (the kernel does not write them until they are handed back).
    #[inline]
    pub unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds, initialised (mapped memory) and not written while the slice
        // lives, by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.at(off), len) }
    }

    /// The ownership word at byte `off` (a block's `block_status` or a TX slot's `tp_status`).
    #[inline]
    pub fn status(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: callers pass `BLOCK_STATUS` or `FRAME_STATUS` past a block or slot start, all
        // inside the mapping (ring geometry checked at open) and 4-byte aligned (blocks are page
        // aligned, slots 16-byte aligned, both fields at multiples of 4). The kernel accesses the
        // word concurrently; user space only ever accesses it through this atomic.
        unsafe { AtomicU32::from_ptr(self.at(off).cast::<u32>()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are what mmap returned, and no reference into the mapping
        // outlives `self` (every slice made from it is local to a method of the owning port).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Sleeps until one of `fds` is readable or `timeout_ms` passes (for idle workers).
/// A non-blocking eventfd (a counter another thread adds to, to wake a `ppoll` on it).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to eventfd `fd` (it becomes readable). At its maximum count the write fails with
/// EAGAIN, and the eventfd is readable anyway.
pub fn eventfd_add(fd: RawFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    let _ = unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
}

/// Empties eventfd `fd` (not readable any more); nothing happens when it is empty (EAGAIN).
pub fn eventfd_take(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads at most 8 bytes into a live u64.
    let _ = unsafe { libc::read(fd, std::ptr::addr_of_mut!(v).cast(), 8) };
}

pub fn wait_readable(fds: &[RawFd], timeout: std::time::Duration) {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = fds.len().min(pfds.len());
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = *fd;
        p.events = libc::POLLIN;
    }
    // Microsecond precision (ppoll), so short back-off waits still wake on the first frame.
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `pfds` is a valid array of `n` initialised pollfd structs and `ts` a valid timespec,
    // both outliving the call; ppoll only writes the `revents` fields; a null signal mask leaves
    // the thread's mask alone.
    unsafe {
        libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null());
    }
}

// Casts: system-call constants and struct sizes, far inside the target type.
#[allow(clippy::cast_possible_truncation)]
pub fn setsockopt_level<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
) -> io::Result<()> {
    // SAFETY: `val` points to an initialised `T` that lives across the call, and its exact size
    // is passed; the kernel only reads it.
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

/// Why [`interface`] found no interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfLookup {
    /// Not a name an interface can have.
    BadName,
    /// No interface of that name in the calling thread's network namespace.
    NoSuchInterface,
}

/// `ifname` checked (not empty, shorter than `IFNAMSIZ`, no NUL, `/` or white space, as Linux
/// requires of interface names) and looked up in the calling thread's network namespace: its C
/// string and its index.
pub fn interface(ifname: &str) -> Result<(CString, libc::c_uint), IfLookup> {
    if ifname.is_empty()
        || ifname.len() >= libc::IFNAMSIZ
        || ifname
            .bytes()
            .any(|c| c == 0 || c == b'/' || c.is_ascii_whitespace())
    {
        return Err(IfLookup::BadName);
    }
    let cname = CString::new(ifname).map_err(|_| IfLookup::BadName)?;
    // SAFETY: `cname` is a NUL-terminated string that lives across the call.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(IfLookup::NoSuchInterface);
    }
    Ok((cname, ifindex))
}

/// Reads socket option `level`/`name` into `val`, a plain-data struct the caller made (all
/// zero, say); returns how many bytes the kernel wrote (some options write fewer than the
/// struct on older kernels or other socket modes).
// Casts: system-call constants and struct sizes, far inside the target type.
#[allow(clippy::cast_possible_truncation)]
pub fn getsockopt_level<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &mut T,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is writable for `len` bytes (its exact size) and lives across the call;
    // `len` is a valid in/out length.
    let r = unsafe { libc::getsockopt(fd, level, name, ptr::from_mut(val).cast(), &mut len) };
    if r == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A new raw socket of `domain` (`AF_PACKET` with protocol 0 receives nothing until bound).
pub fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with constant arguments.
    let raw = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Whether a port can send `frame`: an Ethernet header at least, at most the interface's `mtu`
/// plus the header (and a VLAN tag when it has one), and at most the `room` of a TX slot.
#[inline]
pub(crate) fn sendable(frame: &[u8], mtu: usize, room: usize) -> bool {
    let Some(h) = frame.first_chunk::<ETH_HLEN>() else {
        return false;
    };
    let tagged = matches!(u16::from_be_bytes([h[12], h[13]]), 0x8100 | 0x88a8);
    frame.len() <= (mtu + ETH_HLEN + if tagged { VLAN_HLEN } else { 0 }).min(room)
}

/// The interface's MTU, read on `fd` (so in the socket's network namespace).
pub fn interface_mtu(fd: RawFd, name: &CString) -> io::Result<usize> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    // The name was checked shorter than IFNAMSIZ, so the last byte stays NUL.
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name from and writes the MTU into `ifr`, a
    // valid, writable ifreq.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, ptr::from_mut(&mut ifr)) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    Ok(usize::try_from(mtu).unwrap_or(0))
}

/// Binds the socket `fd` to the address `addr` (a `sockaddr_ll`, `sockaddr_xdp`, ...).
// Casts: a struct size, far inside socklen_t.
#[allow(clippy::cast_possible_truncation)]
pub fn bind<T>(fd: RawFd, addr: &T) -> io::Result<()> {
    // SAFETY: `addr` is an initialised socket address of the exact size passed, living across
    // the call; the kernel only reads it (and checks its family and length).
    let r = unsafe {
        libc::bind(
            fd,
            ptr::from_ref(addr).cast::<libc::sockaddr>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds the AF_PACKET socket `fd` to interface `ifindex`, every protocol (`ETH_P_ALL`).
// Casts: constants and an interface index, far inside the C types.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub fn bind_link(fd: RawFd, ifindex: libc::c_uint) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as libc::c_int;
    bind(fd, &sll)
}

/// Puts interface `ifindex` in promiscuous mode for as long as the AF_PACKET socket `fd` is
/// open (the kernel counts and drops the membership with the socket).
// Casts: constants and an interface index, far inside the C types.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub fn add_promiscuous(fd: RawFd, ifindex: libc::c_uint) -> io::Result<()> {
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex as libc::c_int,
        mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt_level(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
}

/// Asks the kernel to send what the socket's TX ring holds (AF_PACKET or AF_XDP): a `sendto`
/// with no buffer, never blocking.
pub fn kick(fd: RawFd) -> io::Result<()> {
    // SAFETY: no buffer and no address are passed; a socket with a TX ring sends from it.
    let r = unsafe { libc::sendto(fd, ptr::null(), 0, libc::MSG_DONTWAIT, ptr::null(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(1)
}

/// The CPUs this thread may run on (`sched_getaffinity`), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size given; 0 is this thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within its size (CPU_SETSIZE bits).
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Lets this thread (and the threads it starts afterwards, which inherit it) run on `cpus`
/// only (`sched_setaffinity`).
pub fn set_allowed_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: c is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a cpu_set_t of the size given; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
