//! In-memory ports: two lock-free queues per link. Buffers travel by ownership, no copy.

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use super::{Burst, Port, PortCounters};
use crate::buf::{PacketBuf, Pool};

/// One end of an in-memory link.
#[derive(Debug)]
pub struct MemPort {
    rx: Arc<ArrayQueue<PacketBuf>>,
    tx: Arc<ArrayQueue<PacketBuf>>,
    /// Frames dropped because the peer's queue was full.
    pub tx_full: u64,
}

/// Two ports joined back to back, each queue holding up to `depth` frames.
pub fn link(depth: usize) -> (MemPort, MemPort) {
    let a = Arc::new(ArrayQueue::new(depth));
    let b = Arc::new(ArrayQueue::new(depth));
    (
        MemPort {
            rx: a.clone(),
            tx: b.clone(),
            tx_full: 0,
        },
        MemPort {
            rx: b,
            tx: a,
            tx_full: 0,
        },
    )
}

impl MemPort {
    /// Puts a frame on this port's receive queue, as if it came off the wire. `false` if full.
    pub fn inject(&self, frame: PacketBuf) -> bool {
        self.rx.push(frame).is_ok()
    }

    /// Takes one frame this port's peer sent towards it... from the other side: a frame this port
    /// transmitted, when the peer end is not driven by a pipeline.
    pub fn take_sent(&self) -> Option<PacketBuf> {
        self.tx.pop()
    }

    /// Sends one frame to the peer (a frame on the wire towards it). `false` if its queue is
    /// full.
    pub fn send(&self, frame: PacketBuf) -> bool {
        self.tx.push(frame).is_ok()
    }

    /// Receives one frame the peer sent, if any.
    pub fn recv(&self) -> Option<PacketBuf> {
        self.rx.pop()
    }

    /// Frames waiting to be received.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }
}

impl Port for MemPort {
    fn rx_burst(&mut self, _pool: &mut Pool, out: &mut Burst) -> usize {
        let mut n = 0;
        while !out.is_full() {
            match self.rx.pop() {
                Some(b) => {
                    out.push(b);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn tx_burst(&mut self, frames: &mut Burst, pool: &mut Pool) -> usize {
        let mut n = 0;
        for b in frames.drain(..) {
            match self.tx.push(b) {
                Ok(()) => n += 1,
                Err(b) => {
                    self.tx_full += 1;
                    pool.put(b);
                }
            }
        }
        n
    }

    fn counters(&mut self) -> PortCounters {
        PortCounters {
            tx_full: self.tx_full,
            ..PortCounters::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PortId;

    #[test]
    fn frames_cross_a_link() {
        let (mut a, mut b) = link(4);
        let mut pool = Pool::new(0);
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Uplink, &[1, 2, 3]));
        assert_eq!(a.tx_burst(&mut burst, &mut pool), 1);
        let mut got = Burst::new();
        assert_eq!(b.rx_burst(&mut pool, &mut got), 1);
        assert_eq!(got[0].data(), &[1, 2, 3]);
    }
}
