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
        // A node's ejections are its own (gossip carries checks' verdicts only); were one
        // handed here, it would say nothing.
        Health::Starting | Health::Ejected => 0,
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
    // On a character boundary, as error texts are: a name cut inside a character would not
    // decode (a peer's name, escaped by `printable`, can pass 255 bytes).
    let name = truncate(node, 255).as_bytes();
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

/// The keys health gossip is signed and checked with (`meshd --gossip-key-file`), as Serf's and
/// Consul's gossip keyrings: the first key signs, every key is accepted, so a new key is rolled
/// out by adding it on every node, then moving it first, then removing the old one. A sealed
/// datagram is the message, then a trailer:
///
/// ```text
/// message... | sent at (u64, ms since the Unix epoch) | key id (4 bytes) | tag (16 bytes)
/// ```
///
/// The tag is HMAC-SHA256 of everything before it, cut to 16 bytes; the key id is the first 4
/// bytes of SHA-256 of the key, so a receiver knows which key to check with. A receiver takes a
/// datagram only if it is newer than the last it took from that node and within a minute of its
/// own clock: a recorded datagram replayed later is refused.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<([u8; 4], [u8; KEY_LEN])>,
}

/// A gossip key's length: 32 bytes, written as 64 hexadecimal digits in the key file.
pub const KEY_LEN: usize = 32;
/// What sealing adds to a datagram.
pub const TRAILER: usize = 8 + 4 + 16;
/// How far a sealed datagram's time may be from the receiver's clock.
pub const SKEW_MS: u64 = 60_000;

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Why a datagram was refused by the keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too short to hold a trailer, or sealed with a key this node does not have.
    UnknownKey,
    /// The tag does not match: forged or damaged.
    BadTag,
}

fn key_id(key: &[u8; KEY_LEN]) -> [u8; 4] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key);
    [d[0], d[1], d[2], d[3]]
}

fn mac(key: &[u8; KEY_LEN]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    // HMAC takes a key of any length: this cannot fail.
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

impl Keyring {
    /// The keys in a key file's text: one key a line, 64 hexadecimal digits; blank lines and
    /// lines starting with `#` are skipped. At least one key.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Ok(ctl::Secret(k)) = line.parse::<ctl::Secret>() else {
                return Err(format!(
                    "line {}: a key is {} hexadecimal digits (make one with: head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n')",
                    i + 1,
                    2 * KEY_LEN
                ));
            };
            keys.push((key_id(&k), k));
        }
        if keys.is_empty() {
            return Err("no key in it (one key a line, 64 hexadecimal digits)".into());
        }
        Ok(Keyring { keys })
    }

    /// The keys of key file `path` ([`Keyring::parse`]); the error names the file.
    pub fn load(path: &std::path::Path) -> Result<Keyring, String> {
        std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Keyring::parse(&text))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// A keyring of these keys, the first signing (tests).
    pub fn of(keys: &[[u8; KEY_LEN]]) -> Keyring {
        Keyring {
            keys: keys.iter().map(|k| (key_id(k), *k)).collect(),
        }
    }

    /// Whether gossip is sealed and checked at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Appends the trailer to `d`: its time `sent_ms`, the signing key's id, the tag.
    pub fn seal(&self, d: &mut Vec<u8>, sent_ms: u64) {
        use hmac::Mac;
        let Some((id, key)) = self.keys.first() else {
            return;
        };
        d.extend_from_slice(&sent_ms.to_be_bytes());
        d.extend_from_slice(id);
        let mut m = mac(key);
        m.update(d);
        let tag = m.finalize().into_bytes();
        d.extend_from_slice(&tag[..16]);
    }

    /// The message of a sealed datagram and the time it was sent, if its tag checks with one
    /// of the keys (compared in constant time).
    pub fn open<'a>(&self, d: &'a [u8]) -> Result<(&'a [u8], u64), Refused> {
        use hmac::Mac;
        let Some(split) = d.len().checked_sub(TRAILER) else {
            return Err(Refused::UnknownKey);
        };
        let (signed, tag) = d.split_at(d.len() - 16);
        let id = &signed[signed.len() - 4..];
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k == id) else {
            return Err(Refused::UnknownKey);
        };
        let mut m = mac(key);
        m.update(signed);
        m.verify_truncated_left(tag).map_err(|_| Refused::BadTag)?;
        let t = &d[split..split + 8];
        let sent = u64::from_be_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
        Ok((&d[..split], sent))
    }
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

    #[test]
    fn a_sealed_datagram_opens_only_with_its_key_and_unchanged() {
        let (a, b) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
        let ring = Keyring::of(&[a]);
        let msg = encode("n2", &[]).remove(0);
        let mut d = msg.clone();
        ring.seal(&mut d, 1_700_000_000_123);
        assert_eq!(d.len(), msg.len() + TRAILER);
        assert_eq!(ring.open(&d), Ok((&msg[..], 1_700_000_000_123)));
        // Rolled: the old key still opens what the old key sealed.
        let rolled = Keyring::of(&[b, a]);
        assert!(rolled.open(&d).is_ok());
        let mut d2 = msg.clone();
        rolled.seal(&mut d2, 5);
        assert_eq!(ring.open(&d2), Err(Refused::UnknownKey));
        // Any bit changed: refused.
        for i in 0..d.len() {
            let mut x = d.clone();
            x[i] ^= 0x10;
            assert!(ring.open(&x).is_err(), "byte {i} changed and still opened");
        }
        assert_eq!(ring.open(&d[..10]), Err(Refused::UnknownKey));
        assert_eq!(ring.open(&msg), Err(Refused::UnknownKey));
    }

    #[test]
    fn key_files_are_read_or_refused_with_the_line() {
        let k = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let ring = Keyring::parse(&format!("# keys\n\n{k}\n{}\n", k.replace('0', "f"))).unwrap();
        assert_eq!(ring.keys.len(), 2);
        assert_eq!(ring.keys[0].1[1], 0x11);
        assert!(!format!("{ring:?}").contains("11"), "keys printed");
        assert!(Keyring::parse("").unwrap_err().contains("no key"));
        assert!(Keyring::parse("# only\nabc\n")
            .unwrap_err()
            .starts_with("line 2:"));
        assert!(Keyring::parse(&k.replace('0', "g")).is_err());
    }
}
