//! Packet views. smoltcp's `wire` module parses and emits Ethernet, ARP, IPv4, UDP, TCP and
//! ICMP; VXLAN (RFC 7348), which smoltcp lacks, is written here in the same two-layer style.
#![forbid(unsafe_code)]

pub use smoltcp::wire::*;

pub mod checksum;
pub mod reply;
pub mod vxlan;

/// Makes the IPv4 header `h` (20 bytes, no options) that of a piece of `len` bytes of data at
/// `offset` (8-byte units), with more-fragments `more`, DF clear, and its checksum (RFC 791
/// section 3.2). A piece at offset 0 without more-fragments is a whole datagram: the host side's
/// reassembly ends with this too.
// Casts: a piece's length is at most 65,515 (its IPv4 total length is checked to fit u16).
#[allow(clippy::cast_possible_truncation)]
pub fn set_fragment(h: &mut [u8], len: usize, offset: u16, more: bool) {
    h[2..4].copy_from_slice(&((20 + len) as u16).to_be_bytes());
    let ff = offset | if more { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&ff.to_be_bytes());
    h[10..12].copy_from_slice(&[0, 0]);
    let c = !checksum::fold64(checksum::sum(&h[..20]));
    h[10..12].copy_from_slice(&c.to_be_bytes());
}
