//! The VXLAN overlay (RFC 7348): encapsulation in place, in the buffer's headroom, and the
//! checks on receipt.

use crate::buf::PacketBuf;
use crate::flow::FlowKey;
use crate::nat::{put16, put32, UDP};
use crate::stats::DropReason;
use crate::wire::checksum;
use crate::wire::vxlan;

pub mod seal;

const ETH: usize = 14;
const IPV4: usize = 20;
/// Largest inner frame carried (Ethernet header + a 1500-byte MTU).
pub const MAX_INNER: usize = 1514;
/// Largest VXLAN payload: an inner frame, sealed ([`seal::SEAL_LEN`]) on an encrypted network.
const MAX_PAYLOAD: usize = MAX_INNER + seal::SEAL_LEN;

/// Where an encapsulated frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Local and remote VTEP addresses (host byte order).
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub vni: u32,
}

/// A flow's outer UDP source port: from the inner flow's hash, in the dynamic range, so the
/// underlay's ECMP/RSS spreads flows.
#[inline]
// Casts: a hash folded to a slot index or tag: keeping the low bits is the point.
#[allow(clippy::cast_possible_truncation)]
pub fn entropy_port(key: &FlowKey) -> u16 {
    //= https://www.rfc-editor.org/rfc/rfc7348#section-5
    //# Source Port: It is recommended that the UDP source port number
    //# be calculated using a hash of fields from the inner packet [...]
    //# it is RECOMMENDED that the UDP source port range be the dynamic
    //# range 49152-65535
    49152 | (key.hash() as u16 & 0x3fff)
}

/// The ones-complement checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline]
pub fn ipv4_header_checksum(h: &[u8]) -> u16 {
    !checksum::fold64(checksum::sum(&h[..IPV4]))
}

/// Prepends outer Ethernet, IPv4, UDP and VXLAN headers to the frame in `buf`, in place.
#[inline]
pub fn encap(buf: &mut PacketBuf, t: &Tunnel) -> Result<(), DropReason> {
    Outer::new(t.src_mac, t.dst_mac, t.src, t.dst, t.dport).encap(buf, t.sport, t.vni)
}

/// The outer headers towards one peer, built once: everything but the lengths, the IPv4
/// checksum, the UDP source port and the VNI, which [`Outer::encap`] writes per frame. The IPv4
/// checksum comes from the sum of the fixed fields plus the frame's length (RFC 1071 sums are
/// associative), so no header is summed per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    hdr: [u8; vxlan::ENCAP_LEN],
    /// The ones-complement sum of the IPv4 header with its length and checksum fields zero.
    ip_sum: u64,
}

impl Outer {
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], src: u32, dst: u32, dport: u16) -> Self {
        let mut f = [0u8; vxlan::ENCAP_LEN];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        put16(&mut f, 12, 0x0800);
        // Version 4, IHL 5, no TOS; total length (per frame); id 0; don't fragment; TTL 64; UDP.
        put32(&mut f, ETH, 0x4500_0000);
        put32(&mut f, ETH + 4, 0x0000_4000);
        put32(&mut f, ETH + 8, (64 << 24) | (u32::from(UDP) << 16));
        put32(&mut f, ETH + 12, src);
        put32(&mut f, ETH + 16, dst);
        let ip_sum = checksum::sum(&f[ETH..ETH + IPV4]);
        let u = ETH + IPV4;
        put16(&mut f, u + 2, dport);
        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# UDP Checksum: It SHOULD be transmitted as zero.
        put16(&mut f, u + 6, 0);
        put32(&mut f, u + 8, u32::from(vxlan::FLAG_I) << 24);
        Outer { hdr: f, ip_sum }
    }

    /// Prepends the headers to the frame in `buf`, with outer UDP source port `sport` and `vni`.
    #[inline]
    // Casts: an encapsulated frame is at most a buffer (2 KiB): its lengths fit u16.
    #[allow(clippy::cast_possible_truncation)]
    pub fn encap(&self, buf: &mut PacketBuf, sport: u16, vni: u32) -> Result<(), DropReason> {
        let inner = buf.len();
        if inner > MAX_PAYLOAD {
            return Err(DropReason::TooBig);
        }
        let Some(f) = buf.prepend(vxlan::ENCAP_LEN) else {
            return Err(DropReason::NoHeadroom);
        };
        let Some(h) = f.first_chunk_mut::<{ vxlan::ENCAP_LEN }>() else {
            return Err(DropReason::NoHeadroom);
        };
        *h = self.hdr;
        let total = (IPV4 + 8 + vxlan::HEADER_LEN + inner) as u16;
        put16(h, ETH + 2, total);
        put16(
            h,
            ETH + 10,
            !checksum::fold64(self.ip_sum + u64::from(total)),
        );
        let u = ETH + IPV4;
        put16(h, u, sport);
        put16(h, u + 4, total - IPV4 as u16);
        put32(h, u + 12, vni << 8);
        Ok(())
    }
}

/// The outer headers over an IPv6 underlay: Ethernet, IPv6 (40 bytes), UDP, VXLAN.
pub const ENCAP6_LEN: usize = vxlan::ENCAP_LEN + IPV6 - IPV4;
const IPV6: usize = 40;

/// [`Outer`] towards a peer over an IPv6 underlay: [`ENCAP6_LEN`] bytes, with no header
/// checksum to keep; the payload and UDP lengths, the source port and the VNI are written per
/// frame. The UDP checksum is zero, as RFC 6935 lets a tunnel send (Linux's
/// `udp6zerocsumtx`): the inner packet carries its own checksums, and the receiving meshd
/// takes a frame only from a known VTEP's address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer6 {
    hdr: [u8; ENCAP6_LEN],
}

impl Outer6 {
    /// The headers from VTEP `src` to VTEP `dst` (the unspecified address: a peer gone, which
    /// [`Outer6::encap`] refuses).
    pub fn new(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: [u8; 16],
        dst: [u8; 16],
        dport: u16,
    ) -> Self {
        let mut f = [0u8; ENCAP6_LEN];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        put16(&mut f, 12, 0x86dd);
        // Version 6, no traffic class or flow label; payload length (per frame); UDP; hop
        // limit 64.
        put32(&mut f, ETH, 0x6000_0000);
        put32(&mut f, ETH + 4, (u32::from(UDP) << 8) | 64);
        f[ETH + 8..ETH + 24].copy_from_slice(&src);
        f[ETH + 24..ETH + 40].copy_from_slice(&dst);
        let u = ETH + IPV6;
        put16(&mut f, u + 2, dport);
        //= https://www.rfc-editor.org/rfc/rfc6935#section-5
        //# This document updates the IPv6 specification to allow
        //# a zero UDP checksum in the outer encapsulating datagram of a tunnel protocol.
        put16(&mut f, u + 6, 0);
        put32(&mut f, u + 8, u32::from(vxlan::FLAG_I) << 24);
        Outer6 { hdr: f }
    }

    /// Prepends the headers to the frame in `buf`, with outer UDP source port `sport` and `vni`.
    // Casts: an encapsulated frame is at most a buffer (2 KiB): its lengths fit u16.
    #[allow(clippy::cast_possible_truncation)]
    pub fn encap(&self, buf: &mut PacketBuf, sport: u16, vni: u32) -> Result<(), DropReason> {
        let inner = buf.len();
        if inner > MAX_PAYLOAD {
            return Err(DropReason::TooBig);
        }
        if self.hdr[ETH + 24..ETH + 40] == [0; 16] {
            // Towards a VTEP that is no peer's any more.
            return Err(DropReason::UnknownVtep);
        }
        let Some(f) = buf.prepend(ENCAP6_LEN) else {
            return Err(DropReason::NoHeadroom);
        };
        let Some(h) = f.first_chunk_mut::<ENCAP6_LEN>() else {
            return Err(DropReason::NoHeadroom);
        };
        *h = self.hdr;
        let udp = (8 + vxlan::HEADER_LEN + inner) as u16;
        put16(h, ETH + 4, udp);
        let u = ETH + IPV6;
        put16(h, u, sport);
        put16(h, u + 4, udp);
        put32(h, u + 12, vni << 8);
        Ok(())
    }
}

/// Reads the VNI of the VXLAN header after the outer UDP header at `l4`; fails on a short frame
/// or a clear I flag (reserved bits are ignored, RFC 7348 §5).
#[inline]
pub fn vni(frame: &[u8], l4: usize) -> Result<u32, DropReason> {
    let Some(rest) = frame.get(l4 + 8..) else {
        return Err(DropReason::Truncated);
    };
    let v = vxlan::Packet::new_checked(rest).map_err(|_| DropReason::Truncated)?;
    let r = vxlan::Repr::parse(&v).map_err(|_| DropReason::BadVxlan)?;
    Ok(r.vni)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PortId;
    use smoltcp::wire::{Ipv4Packet, UdpPacket};

    #[test]
    fn encapsulation_writes_valid_outer_headers() {
        let inner = [0xa5u8; 60];
        let mut b = PacketBuf::from_frame(PortId::Tasks, &inner);
        let t = Tunnel {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: 0xc0a8_010b,
            dst: 0xc0a8_010c,
            sport: 50000,
            dport: 4789,
            vni: 4096,
        };
        encap(&mut b, &t).unwrap();
        let f = b.data();
        assert_eq!(f.len(), 110);
        let ip = Ipv4Packet::new_checked(&f[ETH..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.total_len(), 96);
        assert!(ip.dont_frag());
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.len(), u.checksum()),
            (50000, 4789, 76, 0)
        );
        assert_eq!(vni(f, ETH + IPV4).unwrap(), 4096);
        assert_eq!(&f[50..], &inner[..]);
    }

    /// Over IPv6: the headers read back (by the test kit's own reading) as built, lengths
    /// right, the UDP checksum zero; towards a peer gone, refused.
    #[test]
    fn ipv6_outer_headers_read_back_as_built() {
        let src = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
        let mut dst = src;
        dst[15] = 0x12;
        let inner: Vec<u8> = (0..100u8).collect();
        let mut b = PacketBuf::from_frame(PortId::Tasks, &inner);
        let o = Outer6::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, 4789);
        o.encap(&mut b, 50001, 4097).unwrap();
        let f = b.data();
        assert_eq!(f.len(), ENCAP6_LEN + inner.len());
        assert_eq!(&f[..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        let v = crate::testkit::decap6(f).expect("VXLAN over IPv6");
        assert_eq!((v.src.octets(), v.dst.octets()), (src, dst));
        assert_eq!(
            (v.sport, v.checksum, v.vni, v.hop_limit),
            (50001, 0, 4097, 64)
        );
        assert_eq!(v.inner, &inner[..]);
        let gone = Outer6::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, [0; 16], 4789);
        let mut b = PacketBuf::from_frame(PortId::Tasks, &inner);
        assert_eq!(
            gone.encap(&mut b, 50001, 4097),
            Err(DropReason::UnknownVtep)
        );
        assert_eq!(b.data(), &inner[..]);
    }

    proptest::proptest! {
        /// Any peer, port, VNI and inner length: the prebuilt headers read back as built, with
        /// a valid IPv4 checksum.
        #[test]
        fn prebuilt_headers_are_valid_for_any_frame(
            src in proptest::prelude::any::<u32>(),
            dst in proptest::prelude::any::<u32>(),
            sport in proptest::prelude::any::<u16>(),
            dport in proptest::prelude::any::<u16>(),
            net in 0u32..1 << 24,
            inner in 14usize..=MAX_INNER,
        ) {
            let mut b = PacketBuf::from_frame(PortId::Tasks, &vec![0x5a; inner]);
            let o = Outer::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, dport);
            o.encap(&mut b, sport, net).unwrap();
            let f = b.data();
            let ip = Ipv4Packet::new_checked(&f[ETH..]).unwrap();
            proptest::prop_assert!(ip.verify_checksum());
            proptest::prop_assert_eq!(usize::from(ip.total_len()), inner + 50 - ETH);
            proptest::prop_assert_eq!((u32::from(ip.src_addr()), u32::from(ip.dst_addr())), (src, dst));
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            proptest::prop_assert_eq!((u.src_port(), u.dst_port(), usize::from(u.len())), (sport, dport, inner + 16));
            proptest::prop_assert_eq!(vni(f, ETH + IPV4).unwrap(), net);
        }
    }

    #[test]
    fn too_big_or_no_headroom_is_refused_and_leaves_the_frame() {
        // Longer than a sealed largest frame: no VXLAN payload is.
        let mut b = PacketBuf::from_frame(PortId::Tasks, &[0u8; MAX_PAYLOAD + 1]);
        let t = Tunnel {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src: 0,
            dst: 0,
            sport: 0,
            dport: 0,
            vni: 1,
        };
        assert_eq!(encap(&mut b, &t), Err(DropReason::TooBig));
        assert_eq!(b.len(), MAX_PAYLOAD + 1);
        let mut b = PacketBuf::from_frame(PortId::Tasks, &[0u8; 60]);
        let _ = b.prepend(crate::buf::HEADROOM);
        assert_eq!(encap(&mut b, &t), Err(DropReason::NoHeadroom));
    }
}
