//! One of the four rings an AF_XDP socket shares with the kernel (fill, completion, RX, TX):
//! mapped at the offsets `XDP_MMAP_OFFSETS` gives, indices read with acquire and written with
//! release ordering as the kernel's `xsk_queue.h` pairs them.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{AfXdpError, Step};
use crate::port::sys::{getsockopt_level, setsockopt_level, Mapping};

/// One of the four single-producer single-consumer rings shared with the kernel. User space
/// produces on the fill and TX rings and consumes from the RX and completion rings.
#[derive(Debug)]
pub(super) struct Ring {
    region: Mapping,
    /// Offset of the index user space writes (producer or consumer) and of the kernel's.
    mine: usize,
    theirs: usize,
    desc: usize,
    /// Entries; a power of two.
    size: u32,
    /// User space's index, published with [`Ring::publish`].
    pub(super) head: u32,
    /// The kernel's index as last read.
    seen: u32,
}

impl Ring {
    /// Maps a ring of `size` entries of `entry` bytes at `pgoff` of the socket; `produce`: user
    /// space is its producer.
    // Casts: system-call constants and struct sizes, far inside the target type; ring offsets within a few pages.
    #[allow(clippy::cast_possible_truncation)]
    pub(super) fn open(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        entry: usize,
        pgoff: u64,
        produce: bool,
    ) -> io::Result<Ring> {
        let desc = off.desc as usize;
        let (prod, cons) = (off.producer as usize, off.consumer as usize);
        if prod + 4 > desc || cons + 4 > desc || prod % 4 != 0 || cons % 4 != 0 {
            return Err(io::Error::other(
                "the kernel's ring offsets are not as expected",
            ));
        }
        let region = Mapping::new(Some(fd), desc + size as usize * entry, pgoff)?;
        let (mine, theirs) = if produce { (prod, cons) } else { (cons, prod) };
        // SAFETY: both indices were checked above to lie before the entries, inside the
        // mapping, 4-byte aligned; the kernel set them up before the mmap.
        let (h, t) = unsafe {
            (
                AtomicU32::from_ptr(region.at(mine).cast::<u32>()).load(Ordering::Acquire),
                AtomicU32::from_ptr(region.at(theirs).cast::<u32>()).load(Ordering::Acquire),
            )
        };
        Ok(Ring {
            region,
            mine,
            theirs,
            desc,
            size,
            head: h,
            seen: t,
        })
    }

    #[inline]
    pub(super) fn index(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is `mine` or `theirs`, checked at open to lie before the entries, inside
        // the mapping, 4-byte aligned. The kernel accesses the word concurrently; user space
        // only through this atomic.
        unsafe { AtomicU32::from_ptr(self.region.at(off).cast::<u32>()) }
    }

    /// Entry `i` (any index: taken modulo the size) of `T`, the ring's entry type (the one it
    /// was opened with: `u64` for fill and completion, `xdp_desc` for RX and TX).
    #[inline]
    pub(super) fn entry<T>(&self, i: u32) -> *mut T {
        self.region
            .at(self.desc + (i & (self.size - 1)) as usize * size_of::<T>())
            .cast::<T>()
    }

    /// Producer side: free entries (reads the kernel's consumer index only when the last read
    /// does not show `want` free).
    #[inline]
    pub(super) fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.head.wrapping_sub(self.seen);
        if free >= want {
            return free;
        }
        self.seen = self.index(self.theirs).load(Ordering::Acquire);
        self.size - self.head.wrapping_sub(self.seen)
    }

    /// Consumer side: entries ready to read.
    #[inline]
    pub(super) fn ready(&mut self) -> u32 {
        if self.seen == self.head {
            self.seen = self.index(self.theirs).load(Ordering::Acquire);
        }
        self.seen.wrapping_sub(self.head)
    }

    /// Producer side: whether the kernel has consumed everything published.
    #[inline]
    pub(super) fn drained(&mut self) -> bool {
        self.seen = self.index(self.theirs).load(Ordering::Acquire);
        self.seen == self.head
    }

    /// Hands the entries up to `head` to the kernel (produced ones, or consumed slots).
    #[inline]
    pub(super) fn publish(&self) {
        self.index(self.mine).store(self.head, Ordering::Release);
    }
}

/// The socket's four rings, `half` entries each (half the UMEM's frames: RX frames fill the
/// fill ring, TX frames the TX ring).
#[derive(Debug)]
pub(super) struct Rings {
    pub(super) rx: Ring,
    pub(super) tx: Ring,
    pub(super) fill: Ring,
    pub(super) comp: Ring,
}

impl Rings {
    /// Step 4: sizes the four rings (after the UMEM is registered), reads where the kernel put
    /// their indices and entries (`XDP_MMAP_OFFSETS`) and maps each one.
    // Casts: page offsets of the rings, constants of the kernel's ABI.
    #[allow(clippy::cast_possible_truncation)]
    pub(super) fn map(step: Step, s: RawFd, half: u32) -> Result<Rings, AfXdpError> {
        for (name, what) in [
            (libc::XDP_UMEM_FILL_RING, "the fill ring"),
            (libc::XDP_UMEM_COMPLETION_RING, "the completion ring"),
            (libc::XDP_RX_RING, "the RX ring"),
            (libc::XDP_TX_RING, "the TX ring"),
        ] {
            setsockopt_level(s, libc::SOL_XDP, name, &half).map_err(step.refused(what))?;
        }
        // SAFETY: xdp_mmap_offsets is plain data; all-zero is a valid value.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        match getsockopt_level(s, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS, &mut off) {
            Ok(len) if len == size_of::<libc::xdp_mmap_offsets>() => {}
            Ok(_) => {
                return Err(step.refused("XDP_MMAP_OFFSETS")(
                    io::Error::from_raw_os_error(libc::EINVAL),
                ))
            }
            Err(e) => return Err(step.refused("XDP_MMAP_OFFSETS")(e)),
        }
        let d = size_of::<libc::xdp_desc>();
        let map = |off, entry, pgoff, produce| {
            Ring::open(s, off, half, entry, pgoff, produce).map_err(step.io("mmap of a ring"))
        };
        Ok(Rings {
            rx: map(&off.rx, d, libc::XDP_PGOFF_RX_RING as u64, false)?,
            tx: map(&off.tx, d, libc::XDP_PGOFF_TX_RING as u64, true)?,
            fill: map(&off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING, true)?,
            comp: map(&off.cr, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING, false)?,
        })
    }
}

impl Ring {
    /// Producer side, on a new, empty ring of UMEM addresses (the fill ring): puts the first
    /// `n` frames of `frame` bytes in it and publishes them.
    pub(super) fn fill_all(&mut self, n: u32, frame: u64) {
        for i in 0..n.min(self.size) {
            // SAFETY: the ring is empty and user space is its producer, so all `size` entries
            // from `head` are ours; `entry` stays inside the ring.
            unsafe {
                self.entry::<u64>(self.head.wrapping_add(i))
                    .write(u64::from(i) * frame);
            }
        }
        self.head = self.head.wrapping_add(n.min(self.size));
        self.publish();
    }
}
