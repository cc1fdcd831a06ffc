//! Just enough TCP tracking to pick idle timeouts: opening, established, closing, closed.

/// TCP state of a flow, as seen by a middlebox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::CheckedBitPattern)]
#[repr(u8)]
pub enum TcpState {
    /// Not TCP, or nothing seen yet.
    #[default]
    None,
    /// The client's SYN went through.
    SynSent,
    /// The task answered with SYN-ACK.
    SynReceived,
    /// The handshake finished.
    Established,
    /// One side sent FIN.
    Closing,
    /// Both sides sent FIN, or one sent RST.
    Closed,
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// Whether a segment may open a new flow through meshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A plain SYN (no ACK, FIN or RST; ECN and other bits allowed): it opens one.
    Opens,
    /// No SYN, or SYN with ACK: a segment of a connection meshd does not know (the host
    /// answers it with a RST, as a kernel with no such connection).
    NotSyn,
    /// SYN with FIN or RST: no stack sends it; a scan or a flood. Dropped, never a flow.
    Invalid,
}

/// What a segment with `flags` does to a flow table that has no flow for it.
#[inline]
pub fn opening(flags: u8) -> Opening {
    if flags & SYN == 0 || flags & ACK != 0 {
        Opening::NotSyn
    } else if flags & (FIN | RST) != 0 {
        Opening::Invalid
    } else {
        Opening::Opens
    }
}

/// Seconds a half-open flow (a SYN seen, the handshake not finished) lives without traffic,
/// whatever the service's timeouts: short, as IPVS's SYN_RECV under attack, so a SYN flood's
/// flows go soon; a real handshake takes milliseconds, and a retransmitted SYN after the flow
/// expired opens another.
pub const HALF_OPEN_S: u32 = 10;

impl TcpState {
    /// Whether the handshake has not finished (a flood's flows are all like this), so the flow
    /// may be evicted before established ones.
    #[inline]
    pub fn half_open(self) -> bool {
        matches!(
            self,
            TcpState::None | TcpState::SynSent | TcpState::SynReceived
        )
    }
}

/// The flags without which a segment from the task back to the client leaves the state as it
/// is, whatever the state ([`TcpState::next`] with `fwd` false; a test holds it to that).
pub const CHANGES_STATE_BACKWARDS: u8 = SYN | FIN | RST;

impl TcpState {
    /// The state after a segment with `flags` going forward (`fwd`, client to task) or back.
    #[inline]
    pub fn next(self, flags: u8, fwd: bool) -> TcpState {
        use TcpState::*;
        if flags & RST != 0 {
            return Closed;
        }
        match self {
            None | SynSent if fwd && flags & SYN != 0 && flags & ACK == 0 => SynSent,
            SynSent if !fwd && flags & (SYN | ACK) == SYN | ACK => SynReceived,
            SynReceived if fwd && flags & ACK != 0 && flags & SYN == 0 => {
                if flags & FIN != 0 {
                    Closing
                } else {
                    Established
                }
            }
            Established if flags & FIN != 0 => Closing,
            Closing if flags & FIN != 0 => Closed,
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_syn_opens_a_flow() {
        assert_eq!(opening(SYN), Opening::Opens);
        assert_eq!(
            opening(SYN | 0x40 | 0x80),
            Opening::Opens,
            "ECN bits are fine"
        );
        for bad in [
            SYN | FIN,
            SYN | RST,
            SYN | FIN | RST,
            SYN | FIN | 0x08 | 0x20,
        ] {
            assert_eq!(opening(bad), Opening::Invalid, "{bad:#04x}");
        }
        for stray in [0, ACK, FIN, RST, SYN | ACK, FIN | ACK, 0x08 | 0x20 | FIN] {
            assert_eq!(opening(stray), Opening::NotSyn, "{stray:#04x}");
        }
    }

    #[test]
    fn a_whole_connection() {
        let mut s = TcpState::None;
        for (flags, fwd, want) in [
            (SYN, true, TcpState::SynSent),
            (SYN | ACK, false, TcpState::SynReceived),
            (ACK, true, TcpState::Established),
            (ACK, false, TcpState::Established),
            (FIN | ACK, true, TcpState::Closing),
            (FIN | ACK, false, TcpState::Closed),
        ] {
            s = s.next(flags, fwd);
            assert_eq!(s, want);
        }
        assert_eq!(TcpState::Established.next(RST, false), TcpState::Closed);
    }

    #[test]
    fn a_reverse_segment_without_syn_fin_or_rst_never_changes_the_state() {
        use TcpState::*;
        for state in [None, SynSent, SynReceived, Established, Closing, Closed] {
            for flags in 0..=u8::MAX {
                if flags & CHANGES_STATE_BACKWARDS == 0 {
                    assert_eq!(state.next(flags, false), state, "{state:?} {flags:#04x}");
                }
            }
        }
    }
}
