//! Address translation in place: DNAT to a task, masquerade, and the reverse on replies, with
//! checksums updated incrementally (RFC 1624) from deltas precomputed per flow
//! ([`crate::flow::Action`]).

pub mod mss;
pub mod ports;

use crate::flow::Action;
use crate::wire::checksum::{self, update16};

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Decrements the TTL of the IPv4 header at `ip`, fixing its checksum (RFC 1624). The caller
/// has checked that the TTL is above 1.
#[inline]
pub fn dec_ttl(f: &mut [u8], ip: usize) {
    let old = be16(f, ip + 8);
    let new = old.wrapping_sub(0x0100);
    f[ip + 8] = (new >> 8) as u8;
    let c = update16(be16(f, ip + 10), old, new);
    put16(f, ip + 10, c);
}

/// Rewrites the addresses of the IPv4 header at `ip` per `a`, updates its checksum and
/// decrements the TTL: all a datagram's fragment after the first needs (the transport checksum,
/// over the whole datagram, was updated in the first). The caller has validated the header.
#[inline]
pub fn rewrite_ip(f: &mut [u8], ip: usize, a: &Action) {
    put32(f, ip + 12, a.src);
    put32(f, ip + 16, a.dst);
    let c = a.ip_delta.apply(be16(f, ip + 10));
    put16(f, ip + 10, c);
    dec_ttl(f, ip);
}

/// Rewrites the addresses and ports of the IPv4 packet whose header is at `ip` and whose
/// TCP/UDP header (protocol `proto`) is at `l4`, per `a`; updates both checksums and
/// decrements the TTL. The caller has validated the headers.
#[inline]
pub fn rewrite(f: &mut [u8], ip: usize, l4: usize, proto: u8, a: &Action) {
    rewrite_ip(f, ip, a);
    match proto {
        TCP => {
            put16(f, l4, a.sport);
            put16(f, l4 + 2, a.dport);
            let c = a.l4_delta.apply(be16(f, l4 + 16));
            put16(f, l4 + 16, c);
        }
        UDP => {
            put16(f, l4, a.sport);
            put16(f, l4 + 2, a.dport);
            let c = checksum::apply_udp(a.l4_delta, be16(f, l4 + 6));
            put16(f, l4 + 6, c);
        }
        _ => {}
    }
}
