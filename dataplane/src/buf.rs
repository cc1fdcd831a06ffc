//! Packet buffers with headroom, so encapsulation prepends in place (githedgehog/dataplane's
//! `Headroom`/`Prepend`/`TrimFromStart`).
//!
//! A [`PacketBuf`] owns a fixed-size heap block allocated once, when its pool is built; the fast
//! path moves buffers between ports, batches and pools but never allocates or frees one.

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
#[derive(Clone)]
pub struct PacketBuf {
    block: Box<[u8]>,
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

impl PacketBuf {
    /// Allocates one block. Not for the fast path: build pools up front.
    pub fn new() -> Self {
        PacketBuf {
            block: vec![0u8; BUF_SIZE].into_boxed_slice(),
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
        b.block[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
        b.end = HEADROOM + n;
        b
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
        let f = &self.block[s..self.end];
        if f.len() < ETH_VLAN || f[12..14] != VLAN_TPID {
            return;
        }
        self.vlan = u16::from_be_bytes([f[14], f[15]]) & VLAN_ID;
        self.block.copy_within(s..s + 12, s + 4);
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
        self.block.copy_within(s..s + 12, s - 4);
        self.start -= 4;
        let [hi, lo] = (self.vlan & VLAN_ID).to_be_bytes();
        self.block[s + 8..s + 12].copy_from_slice(&[VLAN_TPID[0], VLAN_TPID[1], hi, lo]);
        true
    }

    /// Sets the frame to the first `len` bytes of [`Self::room_mut`]; `len` is clamped to fit.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.end = (self.start + len).min(self.block.len());
    }

    /// The writable space from the frame's start to the end of the block (for ports to receive
    /// into).
    #[inline]
    pub fn room_mut(&mut self) -> &mut [u8] {
        &mut self.block[self.start..]
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
        &self.block[self.start..self.end]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.block[self.start..self.end]
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
        Some(&mut self.block[self.start..self.end])
    }

    /// Grows the frame at the end by `n` bytes (their content is what the block held);
    /// `false`, and nothing changed, when the block has no room for them.
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        if n > self.block.len() - self.end {
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
        self.block.copy_within(s..s + at, s + n);
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
        let n = frame.len().min(self.block.len() - self.start);
        self.block[self.start..self.start + n].copy_from_slice(&frame[..n]);
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
    /// allocate unless foreign buffers are put in.
    #[inline]
    pub fn put(&mut self, b: PacketBuf) {
        self.free.push(b);
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
