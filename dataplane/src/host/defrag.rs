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
const IPV6: usize = 40;
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
    /// The first fragment's Ethernet and IP headers (the IPv6 header alone, with no extension
    /// header), once it came.
    head: Option<Vec<u8>>,
    data: Vec<u8>,
    have: Vec<(usize, usize)>,
    end: Option<usize>,
    started: u64,
}

/// A fragment as both families give it: where its bytes go in the datagram, whether it is the
/// last, and (the first fragment's) the headers the whole datagram's frame starts with.
struct Piece<'a> {
    start: usize,
    payload: &'a [u8],
    last: bool,
    head: Option<Vec<u8>>,
}

/// Datagrams being reassembled: IPv4's by (source, destination, protocol, id), IPv6's by
/// (source, destination, id), each table bounded alike.
#[derive(Debug, Default)]
pub struct Reassembly {
    partial: HashMap<(u32, u32, u8, u16), Partial>,
    partial6: HashMap<([u8; 16], [u8; 16], u32), Partial>,
}

/// A complete datagram: its first fragment's headers, and its data.
type Joined = (Vec<u8>, Vec<u8>);

/// Adds `p` to the datagram `key` of `table`: its headers and data once complete (and
/// forgotten); `Err` when the piece drops its datagram (overlapping, past the end) or the
/// table is full.
fn add_piece<K: std::hash::Hash + Eq + Copy>(
    table: &mut HashMap<K, Partial>,
    key: K,
    p: Piece<'_>,
    now: u64,
) -> Result<Option<Joined>, ()> {
    let end = p.start + p.payload.len();
    table.retain(|_, d| now.saturating_sub(d.started) < TIMEOUT_MS);
    if !table.contains_key(&key) && table.len() >= MAX_DATAGRAMS {
        return Err(());
    }
    let d = table.entry(key).or_insert_with(|| Partial {
        head: None,
        data: Vec::new(),
        have: Vec::new(),
        end: None,
        started: now,
    });
    let overlaps = d.have.iter().any(|&(a, b)| p.start < b && a < end);
    let past_end = d.end.is_some_and(|e| end > e) || (p.last && d.have.iter().any(|r| r.1 > end));
    if overlaps || past_end || (p.last && d.end.is_some()) {
        table.remove(&key);
        return Err(());
    }
    if d.data.len() < end {
        d.data.resize(end, 0);
    }
    d.data[p.start..end].copy_from_slice(p.payload);
    d.have.push((p.start, end));
    if p.last {
        d.end = Some(end);
    }
    if p.head.is_some() {
        d.head = p.head;
    }
    let (Some(total), Some(_)) = (d.end, d.head.as_ref()) else {
        return Ok(None);
    };
    if d.have.iter().map(|(a, b)| b - a).sum::<usize>() != total {
        return Ok(None);
    }
    let Some(mut d) = table.remove(&key) else {
        return Ok(None);
    };
    d.data.truncate(total);
    Ok(d.head.map(|h| (h, d.data)))
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
        if start + payload.len() > 65_535 - IPV4 {
            return Added::Dropped;
        }
        let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let key = (be(12), be(16), h[9], u16::from_be_bytes([h[4], h[5]]));
        let piece = Piece {
            start,
            payload,
            last: ff & 0x2000 == 0,
            head: (start == 0).then(|| frame[..ETH + IPV4].to_vec()),
        };
        match add_piece(&mut self.partial, key, piece, now) {
            Err(()) => Added::Dropped,
            Ok(None) => Added::Pending,
            Ok(Some((mut whole, data))) => {
                whole.extend_from_slice(&data);
                // At most 65,515 bytes, checked above.
                set_fragment(&mut whole[ETH..ETH + IPV4], data.len(), 0, false);
                Added::Done(whole)
            }
        }
    }

    /// Takes one Ethernet/IPv6 frame (checked by the pipeline's `parse_ipv6`): a piece of a
    /// datagram (RFC 8200 §4.5) is kept, and the last one missing gives the datagram's frame,
    /// its IPv6 header naming what the Fragment header named, with no extension header.
    pub fn add6(&mut self, frame: &[u8], now: u64) -> Added {
        let Ok(h) = crate::pipeline::parse_ipv6(frame, ETH) else {
            return Added::Dropped;
        };
        let Some(f) = h.frag else {
            return Added::Whole;
        };
        let Some(payload) = frame.get(h.l4..h.end) else {
            return Added::Dropped;
        };
        let start = usize::from(f.ff & 0x1fff) * 8;
        if start + payload.len() > 65_535 {
            return Added::Dropped;
        }
        let key = (h.src.octets(), h.dst.octets(), f.id);
        let head = (start == 0).then(|| {
            let mut head = frame[..ETH + IPV6].to_vec();
            head[ETH + 6] = h.proto;
            head
        });
        let piece = Piece {
            start,
            payload,
            last: f.ff & 0x2000 == 0,
            head,
        };
        match add_piece(&mut self.partial6, key, piece, now) {
            Err(()) => Added::Dropped,
            Ok(None) => Added::Pending,
            Ok(Some((mut whole, data))) => {
                // Casts: at most 65,535 bytes, checked above.
                #[allow(clippy::cast_possible_truncation)]
                let len = data.len() as u16;
                whole[ETH + 4..ETH + 6].copy_from_slice(&len.to_be_bytes());
                whole.extend_from_slice(&data);
                Added::Done(whole)
            }
        }
    }

    /// Datagrams in reassembly.
    pub fn len(&self) -> usize {
        self.partial.len() + self.partial6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// An Ethernet/IPv6 frame with no extension header cut into pieces of at most `mtu` bytes of
/// IPv6 (RFC 8200 §4.5: each the IPv6 header, a Fragment header with identification `id`, a
/// multiple of 8 bytes of data but the last), or the frame alone when it fits.
pub fn split6(frame: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
    if frame.len() <= ETH + mtu || frame.len() < ETH + IPV6 {
        return vec![frame.to_vec()];
    }
    let chunk = mtu.saturating_sub(IPV6 + 8) & !7;
    if chunk == 0 {
        return Vec::new();
    }
    let next = frame[ETH + 6];
    let payload = &frame[ETH + IPV6..];
    let n = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(k, c)| {
            let mut f = frame[..ETH + IPV6].to_vec();
            // Casts: lengths and offsets within a 65,535-byte datagram.
            #[allow(clippy::cast_possible_truncation)]
            let (len, off) = ((8 + c.len()) as u16, (k * chunk) as u16);
            f[ETH + 4..ETH + 6].copy_from_slice(&len.to_be_bytes());
            f[ETH + 6] = 44;
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&(off | u16::from(k + 1 < n)).to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(c);
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

    #[test]
    fn ipv6_pieces_in_any_order_make_the_datagram_and_split6_undoes_it() {
        let data: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
        let whole = testkit::icmpv6_frame(
            [2; 6],
            [4; 6],
            "fd00::c".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            64,
            &smoltcp::wire::Icmpv6Repr::EchoRequest {
                ident: 1,
                seq_no: 2,
                data: &data,
            },
        );
        let pieces = testkit::fragment6(&whole, 1500, 77);
        assert_eq!(pieces.len(), 3);
        for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0]] {
            let mut r = Reassembly::default();
            let mut done = None;
            for &i in &order {
                match r.add6(&pieces[i], 10) {
                    Added::Pending => {}
                    Added::Done(f) => done = Some(f),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(done.as_deref(), Some(&whole[..]), "{order:?}");
            assert!(r.is_empty());
        }
        assert_eq!(split6(&whole, 1500, 77), pieces, "the same pieces again");
        assert_eq!(split6(&pieces[2], 1500, 1), vec![pieces[2].clone()], "fits");
        // Overlap drops the datagram; a whole packet is whole.
        let mut r = Reassembly::default();
        assert_eq!(r.add6(&pieces[0], 0), Added::Pending);
        assert_eq!(r.add6(&pieces[0], 0), Added::Dropped);
        assert!(r.is_empty());
        assert_eq!(r.add6(&whole, 0), Added::Whole);
        // Bounded as IPv4's.
        for id in 0..(MAX_DATAGRAMS as u32 + 10) {
            let _ = r.add6(&testkit::fragment6(&whole, 1500, id)[0], 0);
        }
        assert_eq!(r.len(), MAX_DATAGRAMS);
    }
}
