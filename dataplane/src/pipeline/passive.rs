//! What a worker sees of the tasks' answers to new connections: passive health's events
//! ([`ctl::model::Outlier`]), counted and judged on the host side.
//!
//! A SYN the pipeline sent a task is answered by a SYN-ACK (it serves), by a RST (nothing
//! listens: its server died), or by nothing until the half-open flow expires
//! ([`crate::flow::tcp::HALF_OPEN_S`]). Failures are told every time; an answer only when this
//! worker told a failure of that task before (an event per connection would cost the host side
//! as much as the connections). A UDP flow's first datagram is answered by a datagram back (it
//! serves) or by an ICMP destination unreachable from the task, which the pipeline matches to
//! the flow by the datagram it quotes.

use arrayvec::ArrayVec;

/// What became of a new connection's SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// SYN-ACK: the task serves.
    Answered,
    /// RST: nothing listens on the task's port.
    Refused,
    /// Nothing within the half-open time.
    Unanswered,
    /// An ICMP destination unreachable from the task (a UDP port nothing listens on, mostly).
    Unreachable,
}

impl Seen {
    pub fn is_failure(self) -> bool {
        self != Seen::Answered
    }
}

/// Events held for the worker to hand over after a burst (more in one burst are lost, and
/// counted).
pub const HELD: usize = 64;
/// Tasks remembered as failing, direct-mapped by uid: two failing tasks in one slot make the
/// first one's next answer go untold (its failures then count as if in a row).
const FAILING: usize = 256;

/// A worker's passive health events.
#[derive(Debug)]
pub struct Passive {
    /// Not handed over yet: (task uid, what was seen).
    pub events: ArrayVec<(u64, Seen), HELD>,
    /// The uid whose last event from this worker was a failure, per slot.
    failing: [u64; FAILING],
    /// Events that did not fit `events`.
    pub lost: u64,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            events: ArrayVec::new(),
            failing: [0; FAILING],
            lost: 0,
        }
    }
}

impl Passive {
    /// Notes that the task with `uid` answered, out of line: the UDP reply path calls it for
    /// every datagram back, and inlined it cost the TCP paths beside it instructions.
    #[inline(never)]
    pub fn answered(&mut self, uid: u64) {
        self.saw(uid, Seen::Answered);
    }

    /// Notes `seen` for the task with `uid`.
    // Casts: the slot is the uid's low bits.
    #[allow(clippy::cast_possible_truncation)]
    #[inline]
    pub fn saw(&mut self, uid: u64, seen: Seen) {
        let slot = &mut self.failing[(uid as usize) & (FAILING - 1)];
        if seen.is_failure() {
            *slot = uid;
        } else if *slot == uid {
            *slot = 0;
        } else {
            return;
        }
        if self.events.try_push((uid, seen)).is_err() {
            self.lost += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_and_answers_only_after_a_failure() {
        let mut p = Passive::default();
        p.saw(7, Seen::Answered);
        assert!(
            p.events.is_empty(),
            "a task that never failed: nothing to tell"
        );
        p.saw(7, Seen::Refused);
        p.saw(7, Seen::Unanswered);
        p.saw(7, Seen::Answered);
        p.saw(7, Seen::Answered);
        assert_eq!(
            &p.events[..],
            [
                (7, Seen::Refused),
                (7, Seen::Unanswered),
                (7, Seen::Answered)
            ]
        );
        p.events.clear();
        for _ in 0..HELD + 3 {
            p.saw(9, Seen::Refused);
        }
        assert_eq!((p.events.len(), p.lost), (HELD, 3));
    }
}
