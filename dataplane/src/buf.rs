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
    /// nothing changed) when the headroom is too small.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        Some(&mut self.block[self.start..self.end])
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

    /// Replaces the frame with `frame`, restoring the headroom; cut to fit.
    pub fn fill(&mut self, frame: &[u8]) {
        self.reset();
        let n = frame.len().min(self.block.len() - self.start);
        self.block[self.start..self.start + n].copy_from_slice(&frame[..n]);
        self.end = self.start + n;
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
