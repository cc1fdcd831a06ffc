//! Packet buffers with headroom, so encapsulation prepends in place (githedgehog/dataplane's
//! `Headroom`/`Prepend`/`TrimFromStart`).
//!
//! A [`PacketBuf`] owns a fixed-size heap block allocated once, when its pool is built; the fast
//! path moves buffers between ports, batches and pools but never allocates or frees one.
//!
//! With the `dpdk` feature a buffer can instead be a received mbuf's data room
//! ([`PacketBuf::from_mbuf`]): the DPDK port hands its frames to the pipeline where the PMD put
//! them and sends them from there, no copy either way. Such a buffer is the mbuf's until it
//! leaves: the DPDK port that sends it gives the mbuf to the PMD, and anywhere else it is put
//! back ([`Pool::put`]) or dropped, the mbuf goes back to its own pool. Buffers kept beyond the
//! burst by the host stack are copied to a heap block first ([`Pool::keep`]).
#![allow(unsafe_code)]

/// Size of every buffer block: one Ethernet frame of up to 1500 bytes of payload plus VXLAN
/// encapsulation fits with room to spare.
pub const BUF_SIZE: usize = 2048;
/// Bytes kept free in front of a received frame: room for one VXLAN encapsulation (50 bytes)
/// and more.
pub const HEADROOM: usize = 128;
/// The 802.1Q tag protocol identifier.
const VLAN_TPID: [u8; 2] = [0x81, 0x00];
/// The VLAN id's bits of a tag's control information.
const VLAN_ID: u16 = 0x0fff;
/// An Ethernet header with one 802.1Q tag.
const ETH_VLAN: usize = 18;

/// Which port of a node a frame came in on or goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PortId {
    /// The underlay NIC: clients and peer VTEPs.
    #[default]
    Uplink,
    /// The local tasks' L2 segment.
    Tasks,
}

/// One frame in a fixed block, with headroom before it.
pub struct PacketBuf {
    /// The block: `cap` bytes, a heap allocation of ours (`mbuf` null) or an mbuf's data room.
    block: std::ptr::NonNull<u8>,
    cap: usize,
    /// The DPDK mbuf whose data room `block` is (`struct rte_mbuf *`); null for a heap block.
    mbuf: *mut std::ffi::c_void,
    start: usize,
    end: usize,
    /// The port the frame arrived on.
    pub port: PortId,
    /// A fragment handed to the worker that owns its datagram's flow by the worker that
    /// collects the datagram's fragments: processed where it is, not steered again.
    pub pinned: bool,
    /// On the tasks port, the VLAN the frame came in on or goes out on (0: untagged): the
    /// worker takes the 802.1Q tag off what the port received ([`PacketBuf::untag`]) and puts
    /// it back on what it sends ([`PacketBuf::tag`]); in between, the pipeline sees plain
    /// Ethernet.
    pub vlan: u16,
    /// A VXLAN frame of an encrypted network whose seal this node checked and took off
    /// ([`crate::overlay::seal`]): a worker it is handed to, or the fragment stage that replays
    /// it, does not open it again.
    pub opened: bool,
    /// A task's IPv6 packet on a dual-stack network, turned into IPv4 where it came in (from
    /// the task, or out of VXLAN): turned back into IPv6 where it goes out (to a task, or into
    /// VXLAN). Kept when the frame is handed to another worker.
    pub v6: bool,
}

impl std::fmt::Debug for PacketBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketBuf")
            .field("port", &self.port)
            .field("len", &self.len())
            .field("headroom", &self.headroom())
            .finish()
    }
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: a PacketBuf owns its block (a heap allocation, or an mbuf nobody else holds): moving
// it to another thread moves that ownership; DPDK's mbufs may be freed from any thread.
unsafe impl Send for PacketBuf {}
// SAFETY: shared references only read the block.
unsafe impl Sync for PacketBuf {}

/// A copy on the heap, whatever the original's block (an mbuf's data room is larger than a heap
/// block: a frame reaching past [`BUF_SIZE`] in one is cut there; the pipeline's frames never
/// do, and only tests and the host stack clone).
impl Clone for PacketBuf {
    fn clone(&self) -> Self {
        let mut b = Self::new();
        b.copy_from(self);
        b
    }
}

impl Drop for PacketBuf {
    fn drop(&mut self) {
        if self.mbuf.is_null() {
            // SAFETY: a heap block is the Box<[u8]> of `cap` bytes `new` leaked into `block`,
            // owned by this buffer alone.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.block.as_ptr(),
                    self.cap,
                ))
            });
        } else {
            #[cfg(feature = "dpdk")]
            // SAFETY: the mbuf is this buffer's alone (`from_mbuf`), and not used after this.
            unsafe {
                crate::port::dpdk::sys::meshd_mbuf_free(self.mbuf.cast());
            }
        }
    }
}

impl PacketBuf {
    /// Allocates one block. Not for the fast path: build pools up front.
    pub fn new() -> Self {
        let block: Box<[u8]> = vec![0u8; BUF_SIZE].into_boxed_slice();
        let cap = block.len();
        // The Box's pointer is never null; freed in `drop`.
        let block = std::ptr::NonNull::new(Box::into_raw(block).cast::<u8>())
            .unwrap_or_else(|| unreachable!("a Box is never null"));
        PacketBuf {
            block,
            cap,
            mbuf: std::ptr::null_mut(),
            start: HEADROOM,
            end: HEADROOM,
            port: PortId::Uplink,
            pinned: false,
            vlan: 0,
            opened: false,
            v6: false,
        }
    }

    /// Allocates a buffer holding `frame`.
    pub fn from_frame(port: PortId, frame: &[u8]) -> Self {
        let mut b = Self::new();
        b.port = port;
        // A frame longer than a block is cut; callers only build test frames this way.
        let n = frame.len().min(BUF_SIZE - HEADROOM);
        b.block_mut()[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
        b.end = HEADROOM + n;
        b
    }

    /// The frame a received mbuf holds, in place: `room` is the mbuf's data room (`cap`
    /// bytes), the frame the `len` bytes at `off` in it. The buffer owns the mbuf from here:
    /// [`PacketBuf::take_mbuf`] gives it back (to send it), dropping the buffer frees it.
    ///
    /// # Safety
    /// `mbuf` is a single-segment mbuf nobody else uses or frees, `room` its data room of
    /// `cap` bytes (valid until the mbuf is freed), and `off + len <= cap`.
    #[cfg(feature = "dpdk")]
    #[inline]
    pub unsafe fn from_mbuf(
        mbuf: *mut std::ffi::c_void,
        room: std::ptr::NonNull<u8>,
        cap: usize,
        off: usize,
        len: usize,
        port: PortId,
    ) -> Self {
        PacketBuf {
            block: room,
            cap,
            mbuf,
            start: off,
            end: off + len,
            port,
            pinned: false,
            vlan: 0,
            opened: false,
            v6: false,
        }
    }

    /// Whether the block is an mbuf's ([`PacketBuf::from_mbuf`]).
    #[inline]
    pub fn is_mbuf(&self) -> bool {
        !self.mbuf.is_null()
    }

    /// The mbuf this buffer holds the frame in, handed over with the frame's place in its
    /// data room (offset, length), for sending; `Err(self)` for a heap block.
    #[cfg(feature = "dpdk")]
    #[inline]
    pub fn take_mbuf(self) -> Result<(*mut std::ffi::c_void, u16, u16), PacketBuf> {
        if self.mbuf.is_null() {
            return Err(self);
        }
        let me = std::mem::ManuallyDrop::new(self);
        // Offsets within an mbuf's data room (at most 64 KiB) fit u16.
        #[allow(clippy::cast_possible_truncation)]
        Ok((me.mbuf, me.start as u16, (me.end - me.start) as u16))
    }

    #[inline(always)]
    fn block(&self) -> &[u8] {
        // SAFETY: `block` is `cap` bytes this buffer owns (see the field), live as long as it.
        unsafe { std::slice::from_raw_parts(self.block.as_ptr(), self.cap) }
    }

    #[inline(always)]
    fn block_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `block`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.block.as_ptr(), self.cap) }
    }

    /// Makes this buffer a copy of `other`: its frame at the same offset and its marks (cut at
    /// the end of this buffer's block).
    fn copy_from(&mut self, other: &PacketBuf) {
        let end = other.end.min(self.cap);
        self.block_mut()[..end].copy_from_slice(&other.block()[..end]);
        self.start = other.start.min(end);
        self.end = end;
        self.port = other.port;
        self.pinned = other.pinned;
        self.vlan = other.vlan;
        self.opened = other.opened;
        self.v6 = other.v6;
    }

    /// Empties the buffer and restores the headroom, ready to receive.
    #[inline]
    pub fn reset(&mut self) {
        self.start = HEADROOM;
        self.end = HEADROOM;
        self.pinned = false;
        self.vlan = 0;
        self.opened = false;
        self.v6 = false;
    }

    /// Takes an 802.1Q tag off the frame into [`PacketBuf::vlan`] (the 12 bytes of MAC
    /// addresses move up by 4). A frame without one keeps `vlan` at 0; a tag with VLAN 0 (a
    /// priority tag) leaves it untagged; a frame cut inside its tag is left as it is (and
    /// dropped by the pipeline for its ethertype).
    #[inline]
    pub fn untag(&mut self) {
        let s = self.start;
        let f = &self.block()[s..self.end];
        if f.len() < ETH_VLAN || f[12..14] != VLAN_TPID {
            return;
        }
        self.vlan = u16::from_be_bytes([f[14], f[15]]) & VLAN_ID;
        self.block_mut().copy_within(s..s + 12, s + 4);
        self.start += 4;
    }

    /// Puts [`PacketBuf::vlan`]'s 802.1Q tag on the frame (nothing when it is 0). `false`,
    /// and nothing changed, when the headroom or the frame is too short.
    #[inline]
    pub fn tag(&mut self) -> bool {
        if self.vlan == 0 {
            return true;
        }
        let s = self.start;
        if s < 4 || self.len() < 14 {
            return false;
        }
        self.block_mut().copy_within(s..s + 12, s - 4);
        self.start -= 4;
        let [hi, lo] = (self.vlan & VLAN_ID).to_be_bytes();
        self.block_mut()[s + 8..s + 12].copy_from_slice(&[VLAN_TPID[0], VLAN_TPID[1], hi, lo]);
        true
    }

    /// Sets the frame to the first `len` bytes of [`Self::room_mut`]; `len` is clamped to fit.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.end = (self.start + len).min(self.cap);
    }

    /// The writable space from the frame's start to the end of the block (for ports to receive
    /// into).
    #[inline]
    pub fn room_mut(&mut self) -> &mut [u8] {
        let s = self.start;
        &mut self.block_mut()[s..]
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.block()[self.start..self.end]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let (s, e) = (self.start, self.end);
        &mut self.block_mut()[s..e]
    }

    /// Grows the frame at the front by `n` bytes and returns the whole frame; `None` (and
    /// nothing changed) when the headroom is too small. Always inlined: a few instructions,
    /// which a call of their own doubled on the IPv6 paths (callgrind).
    #[inline(always)]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        Some(self.data_mut())
    }

    /// Grows the frame at the end by `n` bytes (their content is what the block held);
    /// `false`, and nothing changed, when the block has no room for them.
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        if n > self.cap - self.end {
            return false;
        }
        self.end += n;
        true
    }

    /// Takes the `n` bytes at offset `at` out of the frame, moving the `at` bytes before them
    /// up (cheaper than moving what follows when `at` is small); `false`, and nothing changed,
    /// when the frame is shorter than `at + n`.
    #[inline]
    pub fn remove(&mut self, at: usize, n: usize) -> bool {
        if at + n > self.len() {
            return false;
        }
        let s = self.start;
        self.block_mut().copy_within(s..s + at, s + n);
        self.start += n;
        true
    }

    /// Drops `n` bytes from the front; `false` (and nothing changed) when the frame is shorter.
    #[inline]
    pub fn trim_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.start += n;
        true
    }

    /// Cuts the frame to `len` bytes (no-op when already shorter).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Replaces the frame with `frame`, restoring the headroom; cut to fit. The frame stays on
    /// its VLAN (an answer made in place goes back where the frame came from).
    pub fn fill(&mut self, frame: &[u8]) {
        let vlan = self.vlan;
        self.reset();
        self.vlan = vlan;
        let (s, n) = (self.start, frame.len().min(self.cap - self.start));
        self.block_mut()[s..s + n].copy_from_slice(&frame[..n]);
        self.end = self.start + n;
    }

    /// [`PacketBuf::fill`] with another form of the same frame (translated, or as it came):
    /// it keeps [`PacketBuf::opened`] too, whether the frame came sealed, and
    /// [`PacketBuf::pinned`], whether it goes to the worker that owns it (a piece of a
    /// datagram handed over as it came must not be steered back).
    pub fn refill(&mut self, frame: &[u8]) {
        let (opened, pinned) = (self.opened, self.pinned);
        self.fill(frame);
        self.opened = opened;
        self.pinned = pinned;
    }
}

/// A fixed set of buffers allocated up front; `get` and `put` never allocate once warmed up.
#[derive(Debug, Default)]
pub struct Pool {
    free: Vec<PacketBuf>,
}

impl Pool {
    pub fn new(count: usize) -> Self {
        let mut free = Vec::with_capacity(count);
        free.resize_with(count, PacketBuf::new);
        Pool { free }
    }

    #[inline]
    pub fn get(&mut self) -> Option<PacketBuf> {
        let mut b = self.free.pop()?;
        b.reset();
        Some(b)
    }

    /// Returns a buffer. The pool's vector was sized for all its buffers, so this does not
    /// allocate unless foreign buffers are put in. An mbuf's buffer goes back to its mbuf pool
    /// instead (dropped).
    #[inline]
    pub fn put(&mut self, b: PacketBuf) {
        if !b.is_mbuf() {
            self.free.push(b);
        }
    }

    /// `b` in a heap block, for keeping beyond the burst (the host stack's queue): an mbuf's
    /// frame is copied into one of the pool's buffers and the mbuf freed; `None` (and the
    /// mbuf freed) when the pool is empty. A heap buffer is `b` itself.
    pub fn keep(&mut self, b: PacketBuf) -> Option<PacketBuf> {
        if !b.is_mbuf() {
            return Some(b);
        }
        let mut h = self.get()?;
        h.copy_from(&b);
        Some(h)
    }

    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vlan_tag_comes_off_and_goes_back_on() {
        let mut frame = vec![
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x81, 0x00, 0x20, 0x65,
        ];
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0xaa]);
        let mut b = PacketBuf::from_frame(PortId::Tasks, &frame);
        b.untag();
        // Priority bits dropped: VLAN 0x065 = 101.
        assert_eq!(b.vlan, 101);
        assert_eq!(
            b.data(),
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0x00, 0x45, 0xaa]
        );
        assert!(b.tag());
        let mut back = frame.clone();
        back[14] = 0x00;
        assert_eq!(b.data(), &back[..]);
        // Untagged frames and cut tags stay as they are.
        let plain = &back[..12]
            .iter()
            .chain(&[0x08, 0x00, 0x45, 0xaa, 0, 0])
            .copied()
            .collect::<Vec<u8>>();
        let mut p = PacketBuf::from_frame(PortId::Tasks, plain);
        p.untag();
        assert_eq!((p.vlan, p.data()), (0, &plain[..]));
        let mut cut = PacketBuf::from_frame(PortId::Tasks, &frame[..16]);
        cut.untag();
        assert_eq!((cut.vlan, cut.len()), (0, 16));
        // No headroom: refused, unchanged.
        let mut full = PacketBuf::from_frame(PortId::Tasks, plain);
        full.vlan = 7;
        let room = full.headroom();
        assert!(full.prepend(room).is_some());
        assert!(!full.tag());
        // The answer made in place keeps its VLAN; a buffer from the pool has none.
        full.fill(plain);
        assert_eq!(full.vlan, 7);
        full.reset();
        assert_eq!(full.vlan, 0);
    }

    #[test]
    fn a_clone_is_a_heap_copy_and_the_pool_keeps_heap_buffers_as_they_are() {
        let mut b = PacketBuf::from_frame(PortId::Tasks, &[1, 2, 3, 4]);
        assert!(b.trim_front(1));
        (b.vlan, b.pinned, b.opened, b.v6) = (7, true, true, true);
        let c = b.clone();
        assert!(!c.is_mbuf());
        assert_eq!((c.data(), c.headroom()), (b.data(), b.headroom()));
        assert_eq!(
            (c.port, c.vlan, c.pinned, c.opened, c.v6),
            (PortId::Tasks, 7, true, true, true)
        );
        // Apart: writing one leaves the other.
        b.data_mut()[0] = 9;
        assert_eq!(c.data(), &[2, 3, 4]);
        let mut pool = Pool::new(1);
        let kept = pool.keep(c).unwrap();
        assert_eq!((kept.data(), pool.available()), (&[2u8, 3, 4][..], 1));
        pool.put(kept);
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn prepend_and_trim_move_the_start() {
        let mut b = PacketBuf::from_frame(PortId::Tasks, &[1, 2, 3]);
        assert_eq!(b.data(), &[1, 2, 3]);
        let f = b.prepend(2).unwrap();
        f[0] = 9;
        f[1] = 8;
        assert_eq!(b.data(), &[9, 8, 1, 2, 3]);
        assert!(b.trim_front(2));
        assert_eq!(b.data(), &[1, 2, 3]);
        assert!(!b.trim_front(4));
        assert!(b.prepend(HEADROOM + 1).is_none());
        assert_eq!(b.data(), &[1, 2, 3]);
    }
}
