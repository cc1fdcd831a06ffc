//! Just enough TCP tracking to pick idle timeouts: opening, established, closing, closed.

/// TCP state of a flow, as seen by a middlebox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
