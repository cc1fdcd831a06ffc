//! Packet views. smoltcp's `wire` module parses and emits Ethernet, ARP, IPv4, UDP, TCP and
//! ICMP; VXLAN (RFC 7348), which smoltcp lacks, is written here in the same two-layer style.
#![forbid(unsafe_code)]

pub use smoltcp::wire::*;

pub mod checksum;
pub mod reply;
pub mod vxlan;
