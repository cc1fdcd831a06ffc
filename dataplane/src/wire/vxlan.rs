//! VXLAN (RFC 7348), in smoltcp's two-layer style: a zero-copy [`Packet`] view over a byte
//! buffer, and a high-level [`Repr`] with `parse` / `emit` / `buffer_len`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The payload is the inner Ethernet frame (parse it with `EthernetFrame`). The outer
//! Ethernet / IP / UDP headers are smoltcp's; [`ENCAP_LEN`] is what encapsulation over an
//! IPv4 underlay prepends.

use core::fmt;

use smoltcp::wire::{Error, Result, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};

/// A read/write wrapper around a VXLAN header and the frame it carries.
///
/// Accessors do not check the buffer length: call [`Packet::check_len`] (or build the view
/// with [`Packet::new_checked`]) first, after which no accessor panics.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

mod field {
    use core::ops::{Range, RangeFrom};

    pub type Field = Range<usize>;
    pub type Rest = RangeFrom<usize>;

    /// `R R R R I R R R`.
    pub const FLAGS: usize = 0;
    /// The 24 reserved bits after the flags.
    pub const RESERVED_1: Field = 1..4;
    /// The 24-bit VXLAN Network Identifier.
    pub const VNI: Field = 4..7;
    /// The 8 reserved bits after the VNI.
    pub const RESERVED_2: usize = 7;
    /// The inner Ethernet frame.
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// Bytes that VXLAN encapsulation over IPv4 puts in front of the inner frame: outer Ethernet
/// (14) + IPv4 without options (20) + UDP (8) + VXLAN (8) = 50.
pub const ENCAP_LEN: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + HEADER_LEN;

/// The I flag in the flags byte: set when the VNI is valid.
pub const FLAG_I: u8 = 0x08;

/// The largest VNI (VNIs are 24 bits wide).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// The IANA-assigned VXLAN destination UDP port (RFC 7348 §5).
pub const UDP_PORT: u16 = 4789;

impl<T: AsRef<[u8]>> Packet<T> {
    /// Imbue a raw octet buffer with VXLAN structure, without checking its length.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Shorthand for a combination of [`Packet::new_unchecked`] and [`Packet::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Ensure that no accessor method will panic if called.
    /// Returns `Err(Error)` if the buffer is shorter than the VXLAN header.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error)
        } else {
            Ok(())
        }
    }

    /// Consume the packet, returning the underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Return the flags byte, reserved bits included.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Return whether the I flag (valid VNI) is set.
    #[inline]
    pub fn i_flag(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// Return the 24-bit VXLAN Network Identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        let data = self.buffer.as_ref();
        let vni = &data[field::VNI];
        u32::from_be_bytes([0, vni[0], vni[1], vni[2]])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Return a pointer to the payload (the inner Ethernet frame).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data = self.buffer.as_ref();
        &data[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Set the flags byte, reserved bits included (normally [`FLAG_I`]).
    #[inline]
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Set the VXLAN Network Identifier. Only the low 24 bits of `value` are written.
    #[inline]
    pub fn set_vni(&mut self, value: u32) {
        let [_, b0, b1, b2] = value.to_be_bytes();
        let data = self.buffer.as_mut();
        data[field::VNI].copy_from_slice(&[b0, b1, b2]);
    }

    /// Zero every reserved bit: the seven R flags (the I flag is kept), the 24 bits after
    /// the flags and the 8 bits after the VNI.
    #[inline]
    pub fn clear_reserved(&mut self) {
        let data = self.buffer.as_mut();
        data[field::FLAGS] &= FLAG_I;
        data[field::RESERVED_1].fill(0);
        data[field::RESERVED_2] = 0;
    }

    /// Return a mutable pointer to the payload (the inner Ethernet frame).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let data = self.buffer.as_mut();
        &mut data[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A high-level representation of a VXLAN header.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Hash)]
pub struct Repr {
    /// The VXLAN Network Identifier; 24 bits, at most [`VNI_MAX`].
    pub vni: u32,
}

impl Repr {
    /// Parse a VXLAN header and return a high-level representation.
    ///
    /// Fails if the buffer is shorter than the header or if the I flag is clear. Reserved
    /// bits are ignored.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;

        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# Flags (8 bits): where the I flag MUST be set to 1 for a valid
        //# VXLAN Network ID (VNI).  The other 7 bits (designated "R") are
        //# reserved fields and MUST be set to zero on transmission and
        //# ignored on receipt.
        if !packet.i_flag() {
            return Err(Error);
        }

        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# Reserved fields (24 bits and 8 bits): MUST be set to zero on
        //# transmission and ignored on receipt.
        Ok(Repr { vni: packet.vni() })
    }

    /// Return the length of the header that will be emitted from this representation.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Emit a high-level representation into a VXLAN header: the I flag set, every reserved
    /// bit zero, the low 24 bits of `vni`. The payload is not touched.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# Flags (8 bits): where the I flag MUST be set to 1 for a valid
        //# VXLAN Network ID (VNI).  The other 7 bits (designated "R") are
        //# reserved fields and MUST be set to zero on transmission and
        //# ignored on receipt.
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "VXLAN vni={}", self.vni)
    }
}

impl<T: AsRef<[u8]> + ?Sized> fmt::Display for Packet<&T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match Repr::parse(self) {
            Ok(repr) => write!(f, "{repr}"),
            Err(_) => write!(f, "VXLAN (invalid)"),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet,
        UdpPacket,
    };

    /// VNI 4096 (the ingress network), inner frame: a broadcast ARP request's Ethernet header
    /// and the first bytes of its ARP body.
    static PACKET_BYTES: [u8; 24] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // VXLAN: I, VNI 0x001000
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // inner dst MAC
        0x02, 0x42, 0x0a, 0x00, 0x00, 0x05, // inner src MAC
        0x08, 0x06, // ARP
        0x00, 0x01, // ARP hardware type: Ethernet
    ];

    static PAYLOAD_BYTES: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x00, 0x00, 0x05, 0x08, 0x06, 0x00,
        0x01,
    ];

    /// The same header as sent by a peer that sets every reserved bit (RFC 7348 §5 says a
    /// receiver ignores them; a future extension may use them).
    static RESERVED_SET_BYTES: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0x00, 0x10, 0x00, 0xff];

    /// A whole encapsulated frame as it crosses the underlay: outer Ethernet, IPv4
    /// 192.168.1.10 -> 192.168.1.20, UDP 49152 -> 4789 with checksum 0 (RFC 7348 §5: should
    /// be zero over IPv4), VXLAN VNI 4096, and the inner frame above.
    static ENCAP_BYTES: [u8; 66] = [
        // Ethernet: dst, src, IPv4
        0x52, 0x54, 0x00, 0x00, 0x00, 0x02, 0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        // IPv4: 0x45, tos 0, len 52, id 0, DF, ttl 64, UDP, checksum, src, dst
        0x45, 0x00, 0x00, 0x34, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb7, 0x4a, 0xc0, 0xa8, 0x01,
        0x0a, 0xc0, 0xa8, 0x01, 0x14, // UDP: 49152 -> 4789, len 32, checksum 0
        0xc0, 0x00, 0x12, 0xb5, 0x00, 0x20, 0x00, 0x00, // VXLAN and the inner frame
        0x08, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        0x42, 0x0a, 0x00, 0x00, 0x05, 0x08, 0x06, 0x00, 0x01,
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x08);
        assert!(packet.i_flag());
        assert_eq!(packet.vni(), 4096);
        assert_eq!(packet.payload(), &PAYLOAD_BYTES[..]);

        let inner = EthernetFrame::new_checked(packet.payload()).unwrap();
        assert_eq!(inner.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(inner.ethertype(), EthernetProtocol::Arp);
    }

    #[test]
    fn test_construct() {
        let mut bytes = vec![0xa5; 24];
        let mut packet = Packet::new_unchecked(&mut bytes);
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(4096);
        packet.payload_mut().copy_from_slice(&PAYLOAD_BYTES[..]);
        assert_eq!(&*packet.into_inner(), &PACKET_BYTES[..]);
    }

    #[test]
    fn test_parse() {
        let packet = Packet::new_unchecked(&PACKET_BYTES[..]);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, Repr { vni: 4096 });
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        assert_eq!(format!("{packet}"), "VXLAN vni=4096");
    }

    #[test]
    fn test_emit() {
        let mut bytes = vec![0xa5; 24];
        bytes[HEADER_LEN..].copy_from_slice(&PAYLOAD_BYTES[..]);
        let mut packet = Packet::new_unchecked(&mut bytes);
        Repr { vni: 4096 }.emit(&mut packet);
        assert_eq!(&*packet.into_inner(), &PACKET_BYTES[..]);
    }

    #[test]
    fn test_emit_masks_vni_to_24_bits() {
        let mut bytes = [0xa5; HEADER_LEN];
        Repr { vni: 0xab00_1000 }.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, PACKET_BYTES[..HEADER_LEN]);
    }

    #[test]
    fn test_truncated() {
        for len in 0..HEADER_LEN {
            let bytes = &PACKET_BYTES[..len];
            assert_eq!(Packet::new_checked(bytes), Err(Error));
            assert_eq!(Repr::parse(&Packet::new_unchecked(bytes)), Err(Error));
            assert_eq!(
                format!("{}", Packet::new_unchecked(bytes)),
                "VXLAN (invalid)"
            );
        }
        // A bare header with no inner frame is a valid (if useless) VXLAN header.
        let packet = Packet::new_checked(&PACKET_BYTES[..HEADER_LEN]).unwrap();
        assert_eq!(packet.payload(), &[] as &[u8]);
    }

    #[test]
    fn test_reserved_bits_ignored_on_receipt() {
        let packet = Packet::new_checked(&RESERVED_SET_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0xff);
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: 4096 }));
    }

    #[test]
    fn test_clear_reserved() {
        let mut bytes = RESERVED_SET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.clear_reserved();
        assert_eq!(bytes, PACKET_BYTES[..HEADER_LEN]);
    }

    #[test]
    fn test_i_flag_clear_rejected() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x00;
        assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Err(Error));
        // Reserved bits do not stand in for the I flag.
        bytes[0] = !FLAG_I;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!packet.i_flag());
        assert_eq!(Repr::parse(&packet), Err(Error));
    }

    #[test]
    fn test_encap_len() {
        assert_eq!(ENCAP_LEN, 50);
    }

    /// Walk a real underlay frame down through smoltcp's layers to the inner frame.
    #[test]
    fn test_encapsulated_frame() {
        let eth = EthernetFrame::new_checked(&ENCAP_BYTES[..]).unwrap();
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), Ipv4Address::new(192, 168, 1, 10));
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.dst_port(), UDP_PORT);
        assert_eq!(udp.checksum(), 0);
        let vxlan = Packet::new_checked(udp.payload()).unwrap();
        assert_eq!(Repr::parse(&vxlan), Ok(Repr { vni: 4096 }));
        assert_eq!(vxlan.payload(), &PAYLOAD_BYTES[..]);
        assert_eq!(ENCAP_BYTES.len() - ENCAP_LEN, PAYLOAD_BYTES.len());
    }

    proptest! {
        #[test]
        fn emit_then_parse(
            vni in 0..=VNI_MAX,
            garbage in any::<[u8; HEADER_LEN]>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = garbage.to_vec();
            bytes.extend_from_slice(&payload);
            let repr = Repr { vni };
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            prop_assert_eq!(packet.flags(), FLAG_I);
            prop_assert_eq!(packet.payload_mut(), &payload[..]);

            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(packet.payload(), &payload[..]);
            prop_assert_eq!(&bytes[1..4], &[0, 0, 0]);
            prop_assert_eq!(bytes[7], 0);
        }

        #[test]
        fn reserved_bits_never_matter(
            vni in 0..=VNI_MAX,
            flags in any::<u8>(),
            reserved_1 in any::<[u8; 3]>(),
            reserved_2 in any::<u8>(),
        ) {
            let [_, v0, v1, v2] = vni.to_be_bytes();
            let [r0, r1, r2] = reserved_1;
            let bytes = [flags | FLAG_I, r0, r1, r2, v0, v1, v2, reserved_2];
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet), Ok(Repr { vni }));
        }

        #[test]
        fn noise_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            // `parse` checks the length itself, even on an unchecked view.
            let _ = Repr::parse(&Packet::new_unchecked(&bytes[..]));
            let _ = format!("{}", Packet::new_unchecked(&bytes[..]));
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.flags(), packet.i_flag(), packet.vni(), packet.payload());
                match Repr::parse(&packet) {
                    Ok(repr) => {
                        prop_assert!(repr.vni <= VNI_MAX);
                        prop_assert!(packet.i_flag());
                    }
                    Err(_) => prop_assert!(!packet.i_flag()),
                }
            } else {
                prop_assert!(bytes.len() < HEADER_LEN);
            }
        }
    }
}
