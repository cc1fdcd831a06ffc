//! AF_PACKET TPACKET_V3 port (issue 3).
