//! How a node tells the others its own tasks' health verdicts: a UDP datagram from its VTEP
//! address to each peer's, port [`ctl::model::HEALTH_GOSSIP_PORT`], every second and at once on
//! a change. Each node checks only its own tasks (where the probe is cheap and local) and the
//! verdict reaches every node balancing to them within a datagram's flight.
//!
//! ```text
//! 0      4    5    6         8                  N
//! | MSHG | v1 | nl | node... | count (u16) | entries...
//! entry: uid (u64) | health (u8) | streak (u8) | age_ms (u32) | error len (u8) | error...
//! ```
//!
//! A receiver accepts a datagram only from a known peer's VTEP whose node name matches, and
//! only entries about tasks placed on that node (a node speaks for its own tasks only).

use ctl::model::Health;

pub const MAGIC: &[u8; 4] = b"MSHG";
pub const VERSION: u8 = 1;
/// The most a datagram carries (it never fragments in a 1500-byte underlay).
pub const MAX_PAYLOAD: usize = 1200;
/// The longest error text an entry carries.
pub const ERROR_MAX: usize = 64;
/// How often a node repeats its verdicts.
pub const PERIOD_MS: u64 = 1000;
/// How long a peer's verdict holds without being repeated; then its task counts as starting
/// again (no new flows) until its node reports.
pub const STALE_MS: u64 = 3 * PERIOD_MS + 500;

/// One task's verdict as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u64,
    pub health: Health,
    pub streak: u8,
    /// How long ago the verdict last changed.
    pub age_ms: u32,
    pub error: String,
}

/// A datagram's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub node: String,
    pub entries: Vec<Entry>,
}

fn health_code(h: Health) -> u8 {
    match h {
        Health::Starting => 0,
        Health::Healthy => 1,
        Health::Unhealthy => 2,
    }
}

fn health_of(b: u8) -> Option<Health> {
    match b {
        0 => Some(Health::Starting),
        1 => Some(Health::Healthy),
        2 => Some(Health::Unhealthy),
        _ => None,
    }
}

// Casts: the name is cut to 255 bytes just above.
#[allow(clippy::cast_possible_truncation)]
fn header(node: &str) -> Vec<u8> {
    let name = &node.as_bytes()[..node.len().min(255)];
    let mut out = Vec::with_capacity(MAX_PAYLOAD);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&0u16.to_be_bytes());
    out
}

/// The datagrams that carry `entries` for `node` (at least one, so an empty report is sent
/// too), each at most [`MAX_PAYLOAD`] bytes.
// Casts: error texts are cut to 255 bytes before they are encoded.
#[allow(clippy::cast_possible_truncation)]
pub fn encode(node: &str, entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = header(node);
    let count_at = cur.len() - 2;
    let mut count: u16 = 0;
    for e in entries {
        let err = truncate(&e.error, ERROR_MAX);
        let len = 8 + 1 + 1 + 4 + 1 + err.len();
        if cur.len() + len > MAX_PAYLOAD && count > 0 {
            cur[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
            out.push(std::mem::replace(&mut cur, header(node)));
            count = 0;
        }
        cur.extend_from_slice(&e.uid.to_be_bytes());
        cur.push(health_code(e.health));
        cur.push(e.streak);
        cur.extend_from_slice(&e.age_ms.to_be_bytes());
        cur.push(err.len() as u8);
        cur.extend_from_slice(err.as_bytes());
        count += 1;
    }
    cur[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    out.push(cur);
    out
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` with its control characters (C0, DEL, C1: terminal escape sequences among them)
/// written out as escapes (`\u{1b}`): text a peer sent is shown to operators (`service ps`)
/// and logged, never raw.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses a datagram; `None` for anything malformed (wrong magic or version, cut short,
/// trailing bytes, an unknown health code). Text in it comes back [`printable`].
pub fn decode(b: &[u8]) -> Option<Message> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    if take(4)? != MAGIC || take(1)? != [VERSION] {
        return None;
    }
    let nl = usize::from(*take(1)?.first()?);
    let node = printable(std::str::from_utf8(take(nl)?).ok()?);
    let c = take(2)?;
    let count = u16::from_be_bytes([c[0], c[1]]);
    let mut entries = Vec::with_capacity(usize::from(count).min(128));
    for _ in 0..count {
        let u = take(8)?;
        let uid = u64::from_be_bytes([u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7]]);
        let health = health_of(*take(1)?.first()?)?;
        let streak = *take(1)?.first()?;
        let a = take(4)?;
        let age_ms = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        let el = usize::from(*take(1)?.first()?);
        let error = printable(&String::from_utf8_lossy(take(el)?));
        entries.push(Entry {
            uid,
            health,
            streak,
            age_ms,
            error,
        });
    }
    (at == b.len()).then_some(Message { node, entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_peers_escape_codes_come_out_escaped() {
        let entries = [entry(
            7,
            Health::Unhealthy,
            "bad \u{1b}[31mred\u{7}\u{9b}0m",
        )];
        for d in encode("n\u{1b}[2Jx", &entries) {
            let got = decode(&d).unwrap();
            assert_eq!(got.node, "n\\u{1b}[2Jx");
            assert_eq!(got.entries[0].error, "bad \\u{1b}[31mred\\u{7}\\u{9b}0m");
            assert!(!got.entries[0].error.chars().any(char::is_control));
        }
    }

    fn entry(uid: u64, health: Health, error: &str) -> Entry {
        Entry {
            uid,
            health,
            streak: 3,
            age_ms: 1500,
            error: error.into(),
        }
    }

    #[test]
    fn messages_round_trip_and_split() {
        let one = encode("n2", &[entry(7, Health::Unhealthy, "connection refused")]);
        assert_eq!(one.len(), 1);
        assert_eq!(&one[0][..8], b"MSHG\x01\x02n2");
        assert_eq!(
            decode(&one[0]),
            Some(Message {
                node: "n2".into(),
                entries: vec![entry(7, Health::Unhealthy, "connection refused")]
            })
        );
        let empty = encode("n2", &[]);
        assert_eq!(decode(&empty[0]).unwrap().entries, vec![]);
        let long = "x".repeat(200);
        let many: Vec<Entry> = (0..100).map(|i| entry(i, Health::Healthy, &long)).collect();
        let dgrams = encode("node-with-a-long-name", &many);
        assert!(dgrams.len() > 1);
        let mut back = Vec::new();
        for d in &dgrams {
            assert!(d.len() <= MAX_PAYLOAD);
            back.extend(decode(d).unwrap().entries);
        }
        assert_eq!(back.len(), 100);
        assert!(back.iter().all(|e| e.error.len() == ERROR_MAX));
        // Cut on a character boundary.
        let e = entry(1, Health::Healthy, &"é".repeat(40));
        assert_eq!(
            decode(&encode("n", &[e])[0]).unwrap().entries[0].error,
            "é".repeat(32)
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let good = encode("n2", &[entry(7, Health::Healthy, "")]).remove(0);
        assert!(decode(&good).is_some());
        for cut in 0..good.len() {
            assert_eq!(decode(&good[..cut]), None, "cut at {cut}");
        }
        let mut m = good.clone();
        m.push(0);
        assert_eq!(decode(&m), None, "trailing bytes");
        let mut m = good.clone();
        m[4] = 2;
        assert_eq!(decode(&m), None, "another version");
        let mut m = good.clone();
        let n = m.len();
        m[n - 7] = 9;
        assert_eq!(decode(&m), None, "an unknown health code");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
            let mut m = MAGIC.to_vec();
            m.push(VERSION);
            m.extend_from_slice(&b);
            let _ = decode(&m);
        }

        #[test]
        fn entries_round_trip(es in proptest::collection::vec((any::<u64>(), 0u8..3, any::<u8>(), any::<u32>(), "[ -~]{0,80}"), 0..40)) {
            let entries: Vec<Entry> = es.iter().map(|(uid, h, streak, age, err)| Entry {
                uid: *uid, health: health_of(*h).unwrap(), streak: *streak, age_ms: *age, error: truncate(err, ERROR_MAX).to_string(),
            }).collect();
            let mut back = Vec::new();
            for d in encode("n1", &entries) {
                let m = decode(&d).unwrap();
                prop_assert_eq!(m.node.as_str(), "n1");
                back.extend(m.entries);
            }
            prop_assert_eq!(back, entries);
        }
    }
}
