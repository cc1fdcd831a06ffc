//! IPv4 reassembly and fragmentation for what the host side answers itself (a `ping -s 4000`
//! of the node or of a VIP), off the fast path: the host thread may allocate.
//!
//! Bounded as the kernel's `ipfrag_high_thresh` bounds it: at most [`MAX_DATAGRAMS`] datagrams
//! in reassembly, each dropped [`TIMEOUT_MS`] after its first fragment; overlapping fragments
//! drop their datagram (RFC 5722's rule, applied to IPv4 as Linux does).

use std::collections::HashMap;

use crate::wire::set_fragment;

const ETH: usize = 14;
const IPV4: usize = 20;
/// Datagrams in reassembly at once.
pub const MAX_DATAGRAMS: usize = 64;
/// How long a datagram waits for its missing fragments (milliseconds).
pub const TIMEOUT_MS: u64 = 2_000;

/// What [`Reassembly::add`] made of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Not a fragment: use the frame as it is.
    Whole,
    /// Kept; the datagram is not complete yet.
    Pending,
    /// The datagram's last missing fragment: the whole datagram's frame.
    Done(Vec<u8>),
    /// Dropped (malformed, overlapping, or no room): nothing to answer.
    Dropped,
}

#[derive(Debug)]
struct Partial {
    /// The first fragment's Ethernet and IPv4 headers, once it came.
    head: Option<[u8; ETH + IPV4]>,
    data: Vec<u8>,
    have: Vec<(usize, usize)>,
    end: Option<usize>,
    started: u64,
}

/// Datagrams being reassembled, by (source, destination, protocol, id).
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: HashMap<(u32, u32, u8, u16), Partial>,
}

impl Reassembly {
    /// Takes one Ethernet/IPv4 frame (IHL 5; checked by the pipeline).
    pub fn add(&mut self, frame: &[u8], now: u64) -> Added {
        let Some(h) = frame.get(ETH..ETH + IPV4) else {
            return Added::Dropped;
        };
        let ff = u16::from_be_bytes([h[6], h[7]]);
        if ff & 0x3fff == 0 {
            return Added::Whole;
        }
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let Some(payload) = frame.get(ETH + IPV4..ETH + total) else {
            return Added::Dropped;
        };
        let start = usize::from(ff & 0x1fff) * 8;
        let end = start + payload.len();
        let last = ff & 0x2000 == 0;
        if end > 65_535 - IPV4 {
            return Added::Dropped;
        }
        self.partial
            .retain(|_, p| now.saturating_sub(p.started) < TIMEOUT_MS);
        let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let key = (be(12), be(16), h[9], u16::from_be_bytes([h[4], h[5]]));
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_DATAGRAMS {
            return Added::Dropped;
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            head: None,
            data: Vec::new(),
            have: Vec::new(),
            end: None,
            started: now,
        });
        let overlaps = p.have.iter().any(|&(a, b)| start < b && a < end);
        let past_end = p.end.is_some_and(|e| end > e) || (last && p.have.iter().any(|r| r.1 > end));
        if overlaps || past_end || (last && p.end.is_some()) {
            self.partial.remove(&key);
            return Added::Dropped;
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        p.data[start..end].copy_from_slice(payload);
        p.have.push((start, end));
        if last {
            p.end = Some(end);
        }
        if start == 0 {
            let mut head = [0u8; ETH + IPV4];
            head.copy_from_slice(&frame[..ETH + IPV4]);
            p.head = Some(head);
        }
        let Some(total) = p.end else {
            return Added::Pending;
        };
        let got: usize = p.have.iter().map(|(a, b)| b - a).sum();
        let Some(head) = p.head else {
            return Added::Pending;
        };
        if got != total {
            return Added::Pending;
        }
        let mut whole = head.to_vec();
        whole.extend_from_slice(&p.data[..total]);
        self.partial.remove(&key);
        // `total` was checked to be at most 65,515.
        set_fragment(&mut whole[ETH..ETH + IPV4], total, 0, false);
        Added::Done(whole)
    }

    /// Datagrams in reassembly.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// An Ethernet/IPv4 frame (IHL 5) cut into frames of at most `mtu` bytes of IPv4 (RFC 791
/// section 3.2), or the frame alone when it fits.
pub fn split(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    if frame.len() <= ETH + mtu || frame.len() < ETH + IPV4 {
        return vec![frame.to_vec()];
    }
    let chunk = mtu.saturating_sub(IPV4) & !7;
    if chunk == 0 {
        return Vec::new();
    }
    let payload = &frame[ETH + IPV4..];
    let n = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(k, c)| {
            let mut f = frame[..ETH + IPV4].to_vec();
            f.extend_from_slice(c);
            // Casts: an offset within a 65,535-byte datagram, in 8-byte units.
            #[allow(clippy::cast_possible_truncation)]
            let off = (k * chunk / 8) as u16;
            set_fragment(&mut f[ETH..ETH + IPV4], c.len(), off, k + 1 < n);
            f
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test values are small and known
mod tests {
    use super::*;
    use crate::testkit;
    use std::net::Ipv4Addr as A;

    fn echo(len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        testkit::icmp_echo(
            [2; 6],
            [4; 6],
            A::new(10, 9, 0, 9),
            A::new(10, 0, 0, 1),
            7,
            1,
            &data,
        )
    }

    #[test]
    fn fragments_in_any_order_make_the_datagram_and_split_undoes_it() {
        let whole = echo(4000);
        let frags = testkit::fragment(&whole, 1500, 99);
        for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
            let mut r = Reassembly::default();
            let mut done = None;
            for &i in &order {
                match r.add(&frags[i], 10) {
                    Added::Pending => {}
                    Added::Done(f) => done = Some(f),
                    other => panic!("{other:?}"),
                }
            }
            let got = done.expect("complete");
            let seen = testkit::parse_icmp_echo(&got).expect("checksums right");
            assert_eq!(seen.data.len(), 4000);
            assert!(r.is_empty());
            let pieces = split(&got, 1450);
            assert!(pieces.iter().all(|p| p.len() <= ETH + 1450));
            assert_eq!(
                testkit::reassemble(&pieces).map(|f| f[ETH + IPV4..].to_vec()),
                Some(got[ETH + IPV4..].to_vec())
            );
        }
        assert_eq!(Reassembly::default().add(&whole, 0), Added::Whole);
    }

    #[test]
    fn overlaps_drop_the_datagram_and_the_table_is_bounded() {
        let frags = testkit::fragment(&echo(4000), 1500, 1);
        let mut r = Reassembly::default();
        assert_eq!(r.add(&frags[0], 0), Added::Pending);
        assert_eq!(r.add(&frags[0], 0), Added::Dropped);
        assert!(r.is_empty());
        for id in 0..(MAX_DATAGRAMS as u16 + 10) {
            let f = testkit::fragment(&echo(4000), 1500, id);
            let _ = r.add(&f[0], 0);
        }
        assert_eq!(r.len(), MAX_DATAGRAMS);
        // Timed out datagrams make room.
        let f = testkit::fragment(&echo(4000), 1500, 9999);
        assert_eq!(r.add(&f[0], TIMEOUT_MS), Added::Pending);
        assert_eq!(r.len(), 1);
    }
}
