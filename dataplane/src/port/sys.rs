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
pub(crate) struct Mapping {
    base: NonNull<u8>,
    pub(crate) len: usize,
}

// SAFETY: the mapping is owned by exactly one `Mapping`, itself owned by one port, and is only
// accessed through that port's `&mut self` methods, so moving it to another thread moves every
// user-space access with it. The kernel side does not care which thread maps it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes, populated: of the socket `fd` at offset `pgoff` (its rings), or
    /// anonymous memory when `fd` is `None`.
    pub(crate) fn new(fd: Option<RawFd>, len: usize, pgoff: u64) -> io::Result<Mapping> {
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
    pub(crate) fn at(&self, off: usize) -> *mut u8 {
        debug_assert!(off <= self.len);
        self.base.as_ptr().wrapping_add(off)
    }

    /// The ownership word at byte `off` (a block's `block_status` or a TX slot's `tp_status`).
    #[inline]
    pub(crate) fn status(&self, off: usize) -> &AtomicU32 {
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
pub(crate) fn setsockopt_level<T>(
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
pub(crate) enum IfLookup {
    /// Not a name an interface can have.
    BadName,
    /// No interface of that name in the calling thread's network namespace.
    NoSuchInterface,
}

/// `ifname` checked (not empty, shorter than `IFNAMSIZ`, no NUL, `/` or white space, as Linux
/// requires of interface names) and looked up in the calling thread's network namespace: its C
/// string and its index.
pub(crate) fn interface(ifname: &str) -> Result<(CString, libc::c_uint), IfLookup> {
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
pub(crate) fn getsockopt_level<T>(
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
pub(crate) fn raw_socket(domain: libc::c_int) -> io::Result<OwnedFd> {
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
pub(crate) fn interface_mtu(fd: RawFd, name: &CString) -> io::Result<usize> {
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
