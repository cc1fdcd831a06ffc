//! Ports move frames in and out; they know nothing of what the frames mean.
//!
//! Backends: [`mem`] (in-process queues, always built: tests, benchmarks, the in-memory mesh
//! simulation), [`afpacket`] (TPACKET_V2 or V3 rings on any Linux interface) and, with the
//! cargo feature `afxdp`, [`afxdp`] (an AF_XDP socket and its XDP program on one interface
//! queue).

use arrayvec::ArrayVec;

use crate::buf::{PacketBuf, Pool};

pub mod afpacket;
#[cfg(feature = "afxdp")]
pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub(crate) mod ebpf;
pub mod fault;
pub mod mem;
pub mod pcap;
pub mod sys;
pub mod taskvlan;

/// Most frames a port moves per call.
pub const BURST: usize = 32;

/// One burst of frames.
pub type Burst = ArrayVec<PacketBuf, BURST>;

/// Frames a port dropped below the pipeline, counted since it was opened. Zero for what a
/// backend cannot lose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Frames the kernel dropped because the RX ring was full.
    pub rx_dropped: u64,
    /// Received frames dropped because they did not fit a buffer or a ring slot.
    pub rx_too_long: u64,
    /// Frames dropped because the TX ring (or queue) had no room.
    pub tx_full: u64,
    /// Frames not sent because of their length (shorter than an Ethernet header, longer than
    /// the MTU allows).
    pub tx_bad_len: u64,
    /// Frames not sent because the port's link was down (DPDK: as last seen, at most about
    /// 10 ms old; other ports count these as `tx_full` or not at all).
    pub tx_link_down: u64,
    /// Times the port's link was seen going down (DPDK; 0 for the other ports).
    pub link_downs: u64,
}

/// A source and sink of Ethernet frames.
pub trait Port {
    /// Appends up to `out.remaining_capacity()` received frames to `out`, taking empty buffers
    /// from `pool` where the backend copies. Returns how many were added.
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize;

    /// Sends every frame of `frames` it can and hands all their buffers back to `pool` (a frame
    /// that could not be sent is dropped and counted by the backend). Returns how many were sent.
    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize;

    /// Pushes out anything the backend batched (for example a TX ring kick).
    fn flush(&mut self) {}

    /// The drop counters (may make a system call: not for every burst).
    fn counters(&mut self) -> PortCounters {
        PortCounters::default()
    }

    /// A file descriptor that polls readable when frames wait, for idle workers to sleep on.
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Whether frames wait in the TX ring for another kick ([`Port::flush`]): a worker with
    /// such a port does not sleep.
    fn unsent(&self) -> bool {
        false
    }
}

/// A boxed port is a port (so wrappers such as [`pcap::PcapWriter`] go around any backend).
impl<P: Port + ?Sized> Port for Box<P> {
    fn rx_burst(&mut self, pool: &mut Pool, out: &mut Burst) -> usize {
        (**self).rx_burst(pool, out)
    }
    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        (**self).tx_burst(frames, pool)
    }
    fn flush(&mut self) {
        (**self).flush();
    }
    fn counters(&mut self) -> PortCounters {
        (**self).counters()
    }
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).wait_fd()
    }
    fn unsent(&self) -> bool {
        (**self).unsent()
    }
}
