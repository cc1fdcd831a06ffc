//! Sealed VXLAN: the frames of an encrypted network (`--opt encrypted`), encrypted and
//! authenticated with XChaCha20-Poly1305 (ChaCha20-Poly1305, RFC 8439, with a 192-bit nonce,
//! draft-irtf-cfrg-xchacha), in place, in the buffer's headroom and tailroom.
//!
//! ```text
//! outer Ethernet | IPv4 | UDP | VXLAN | key id (4) | nonce (24) | inner frame, encrypted | tag (16)
//! ```
//!
//! The tag covers the encrypted inner frame and, as associated data, the VNI, the key id and
//! the outer source and destination addresses: a frame cannot be moved to another network or
//! made to look as if another peer sent it. The nonce is a random 16-byte prefix each worker
//! draws when it starts, then a counter: no two frames sealed under one key share a nonce,
//! whichever node or worker sealed them, without any coordination (128 random bits do not
//! collide; this is why XChaCha and not ChaCha's 96-bit nonce).
//!
//! XChaCha20-Poly1305 is ChaCha20-Poly1305 under the subkey HChaCha20(key, prefix): the subkey
//! depends only on the key and the sender's prefix, so each side derives it once per sender
//! (the `chacha20` crate's HChaCha20) and keeps it; each frame is then one ChaCha20-Poly1305
//! operation in `ring` (BoringSSL's assembly: 3 to 10 times RustCrypto's pure Rust here, whose
//! AVX2 Poly1305 pays a long setup per message). The receiving worker keeps, per sender's
//! prefix, its subkey, the highest counter it opened and a 64-frame window below it (IPsec's
//! anti-replay window, RFC 4303 §3.4.3): a recorded frame sent again is refused.

use arrayvec::ArrayVec;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

use crate::buf::PacketBuf;
use crate::nat::{be16, put16};
use crate::stats::DropReason;
use crate::wire::vxlan;

/// What sealing adds to a frame.
pub const SEAL_LEN: usize = ctl::SEAL_OVERHEAD as usize;
/// The key id and the nonce, in front of the encrypted frame.
const HEAD: usize = 4 + 24;
const TAG: usize = 16;
const PREFIX: usize = 16;
const ETH: usize = 14;
const IPV4: usize = 20;
/// Subkeys a worker's sealer keeps (one per encrypted network it sends on, and the keys of a
/// rotation).
const SEAL_CACHE: usize = 4;

/// An encrypted network's keys.
#[derive(Clone)]
pub struct NetKeys {
    /// The id of the key that seals.
    send: u32,
    keys: ArrayVec<(u32, [u8; 32]), { ctl::MAX_NETWORK_KEYS }>,
}

impl std::fmt::Debug for NetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only, never a key.
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("NetKeys")
            .field("send", &self.send)
            .field("ids", &ids)
            .finish()
    }
}

impl NetKeys {
    /// The keys of a network's [`ctl::Encryption`] (validated: every key has its value, the
    /// primary is one of them); `None` if it has no key to seal with.
    pub fn new(enc: &ctl::Encryption) -> Option<NetKeys> {
        let mut keys = ArrayVec::new();
        for k in &enc.keys {
            let Some(secret) = &k.key else { continue };
            if keys.try_push((k.id, secret.0)).is_err() {
                break;
            }
        }
        keys.iter()
            .any(|(id, _)| *id == enc.primary)
            .then_some(NetKeys {
                send: enc.primary,
                keys,
            })
    }

    #[inline]
    fn get(&self, id: u32) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }
}

/// The ChaCha20-Poly1305 key of a sender's frames under `key`: HChaCha20(key, prefix).
fn subkey(key: &[u8; 32], prefix: &[u8; PREFIX]) -> LessSafeKey {
    let k = chacha20::hchacha::<chacha20::R20>(&(*key).into(), &(*prefix).into());
    match UnboundKey::new(&CHACHA20_POLY1305, k.as_slice()) {
        Ok(k) => LessSafeKey::new(k),
        // 32 bytes is ChaCha20's key length: this cannot fail.
        Err(_) => unreachable!("a 32-byte ChaCha20 key"),
    }
}

/// ChaCha20-Poly1305's nonce of an XChaCha nonce: four zero bytes, then its last 8 (the
/// counter).
#[inline]
fn inner_nonce(counter: [u8; 8]) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter);
    Nonce::assume_unique_for_key(n)
}

/// The associated data of a sealed frame: its VNI, the key id, the outer source and
/// destination addresses.
#[inline]
fn aad(vni: u32, id: u32, src: u32, dst: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&vni.to_be_bytes());
    a[4..8].copy_from_slice(&id.to_be_bytes());
    a[8..12].copy_from_slice(&src.to_be_bytes());
    a[12..16].copy_from_slice(&dst.to_be_bytes());
    a
}

/// A worker's nonces (a random prefix drawn once, and a counter) and its subkeys.
pub struct Sealer {
    /// `None` when the kernel gave no random bytes: nothing is sealed then.
    prefix: Option<[u8; PREFIX]>,
    next: u64,
    /// Subkeys by the key they come from (the oldest replaced first).
    cache: ArrayVec<([u8; 32], LessSafeKey), SEAL_CACHE>,
    evict: usize,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("next", &self.next).finish()
    }
}

impl Default for Sealer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sealer {
    /// A sealer with a prefix from the operating system's random source. If the kernel has
    /// none to give, the sealer seals nothing ([`DropReason::SealNoNonce`]): it must never
    /// guess, as a nonce used twice under one key gives the key's keystream away.
    pub fn new() -> Sealer {
        let mut prefix = [0u8; PREFIX];
        Sealer {
            prefix: getrandom::fill(&mut prefix).ok().map(|()| prefix),
            next: 0,
            cache: ArrayVec::new(),
            evict: 0,
        }
    }

    /// A sealer with a fixed nonce prefix (tests and fuzzing: what it seals is the same every
    /// run).
    #[cfg(any(test, feature = "testkit"))]
    pub fn with_prefix(prefix: [u8; PREFIX]) -> Sealer {
        Sealer {
            prefix: Some(prefix),
            ..Sealer::new()
        }
    }

    /// This worker's subkey under `key`, derived the first time.
    #[inline]
    fn subkey(&mut self, key: &[u8; 32], prefix: &[u8; PREFIX]) -> &LessSafeKey {
        let i = match self.cache.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => self.derive(key, prefix),
        };
        &self.cache[i].1
    }

    #[cold]
    #[inline(never)]
    fn derive(&mut self, key: &[u8; 32], prefix: &[u8; PREFIX]) -> usize {
        let entry = (*key, subkey(key, prefix));
        if self.cache.is_full() {
            let i = self.evict % SEAL_CACHE;
            self.evict += 1;
            self.cache[i] = entry;
            i
        } else {
            self.cache.push(entry);
            self.cache.len() - 1
        }
    }

    /// Seals the frame in `buf` (the inner Ethernet frame, before the outer headers are put in
    /// front of it) for network `vni`, sent from VTEP `src` to VTEP `dst`.
    #[inline]
    pub fn seal(
        &mut self,
        keys: &NetKeys,
        buf: &mut PacketBuf,
        vni: u32,
        src: u32,
        dst: u32,
    ) -> Result<(), DropReason> {
        let id = keys.send;
        let Some(key) = keys.get(id) else {
            return Err(DropReason::SealUnknownKey);
        };
        let Some(prefix) = self.prefix else {
            return Err(DropReason::SealNoNonce);
        };
        let body = buf.len();
        if buf.headroom() < HEAD + crate::overlay::ENCAP6_LEN || !buf.append(TAG) {
            return Err(DropReason::NoHeadroom);
        }
        let counter = self.next.to_be_bytes();
        self.next += 1;
        let cipher = self.subkey(key, &prefix);
        let Some(f) = buf.prepend(HEAD) else {
            return Err(DropReason::NoHeadroom);
        };
        let (head, rest) = f.split_at_mut(HEAD);
        let (plain, tag) = rest.split_at_mut(body);
        head[0..4].copy_from_slice(&id.to_be_bytes());
        head[4..4 + PREFIX].copy_from_slice(&prefix);
        head[4 + PREFIX..HEAD].copy_from_slice(&counter);
        let t = cipher
            .seal_in_place_separate_tag(
                inner_nonce(counter),
                Aad::from(aad(vni, id, src, dst)),
                plain,
            )
            // Only a message longer than 256 GiB fails.
            .map_err(|_| DropReason::TooBig)?;
        tag.copy_from_slice(t.as_ref());
        Ok(())
    }
}

/// Per sender (a worker's nonce prefix): its subkey, and the counters a worker has opened (the
/// highest, and which of the 64 below it).
pub struct Replay {
    slots: Box<[Window]>,
}

/// Senders a worker's replay check tells apart (direct-mapped by prefix): a mesh of 64 nodes
/// of 4 workers fits without eviction. An evicted sender's next frame starts a new window, so
/// its frames older than that could be replayed once; only authentic frames take a slot, so a
/// forger cannot evict.
const REPLAY_SLOTS: usize = 256;

#[derive(Default)]
struct Window {
    prefix: [u8; PREFIX],
    top: u64,
    /// Bit `i`: counter `top - i` was opened.
    seen: u64,
    /// The key the subkey comes from, and the subkey.
    key: [u8; 32],
    subkey: Option<LessSafeKey>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("slots", &REPLAY_SLOTS)
            .finish()
    }
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            slots: (0..REPLAY_SLOTS).map(|_| Window::default()).collect(),
        }
    }
}

impl Replay {
    /// Forgets every nonce opened (benchmarks that replay recorded sealed frames).
    #[cfg(any(test, feature = "testkit"))]
    pub fn clear(&mut self) {
        for w in self.slots.iter_mut() {
            w.top = 0;
            w.seen = 0;
        }
    }

    #[inline]
    fn slot(prefix: &[u8; PREFIX]) -> usize {
        // The prefix is random: its first bytes are as good an index as any hash.
        usize::from(u16::from_le_bytes([prefix[0], prefix[1]])) % REPLAY_SLOTS
    }

    /// Whether counter `n` of the sender of window `w` may be opened (not seen, not too old).
    #[inline]
    fn fresh(w: &Window, prefix: &[u8; PREFIX], n: u64) -> bool {
        if w.prefix != *prefix || n > w.top {
            return true;
        }
        let back = w.top - n;
        back < 64 && w.seen & (1 << back) == 0
    }

    /// Records that counter `n` of sender `prefix` was opened.
    #[inline]
    fn note(w: &mut Window, prefix: &[u8; PREFIX], n: u64) {
        if w.prefix != *prefix {
            w.prefix = *prefix;
            w.top = n;
            w.seen = 1;
        } else if n > w.top {
            let up = n - w.top;
            w.seen = if up < 64 { (w.seen << up) | 1 } else { 1 };
            w.top = n;
        } else {
            w.seen |= 1 << (w.top - n);
        }
    }

    /// Opens the sealed VXLAN frame in `buf` (outer headers included) of network `vni` from
    /// VTEP `src` to `dst`: checks its seal, decrypts the inner frame in place and takes the
    /// seal off, so the frame is plain VXLAN after, its outer lengths and IPv4 checksum
    /// written again (a worker it is handed to parses the outer headers anew).
    #[inline]
    // Casts: SEAL_LEN is 44.
    #[allow(clippy::cast_possible_truncation)]
    pub fn open(
        &mut self,
        keys: &NetKeys,
        buf: &mut PacketBuf,
        vni: u32,
        src: u32,
        dst: u32,
    ) -> Result<(), DropReason> {
        let f = buf.data_mut();
        let Some(s) = f.get_mut(vxlan::ENCAP_LEN..) else {
            return Err(DropReason::Truncated);
        };
        let Some(body) = s.len().checked_sub(SEAL_LEN) else {
            return Err(DropReason::SealUnknownKey);
        };
        let (head, rest) = s.split_at_mut(HEAD);
        let (sealed, tag) = rest.split_at_mut(body);
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let Some(key) = keys.get(id) else {
            return Err(DropReason::SealUnknownKey);
        };
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&head[4..4 + PREFIX]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&head[4 + PREFIX..HEAD]);
        let n = u64::from_be_bytes(counter);
        let w = &mut self.slots[Self::slot(&prefix)];
        if !Self::fresh(w, &prefix, n) {
            return Err(DropReason::SealReplayed);
        }
        let mut t = [0u8; TAG];
        t.copy_from_slice(tag);
        let nonce = inner_nonce(counter);
        let aad = Aad::from(aad(vni, id, src, dst));
        let known = w.prefix == prefix && w.key == *key;
        let opened = match (&w.subkey, known) {
            (Some(k), true) => k
                .open_in_place_separate_tag(nonce, aad, Tag::from(t), sealed, 0..)
                .is_ok(),
            _ => {
                // A new sender, or a new key: the subkey is kept only once a frame opened
                // with it (a forger with made-up prefixes takes no slot).
                let k = subkey(key, &prefix);
                let ok = k
                    .open_in_place_separate_tag(nonce, aad, Tag::from(t), sealed, 0..)
                    .is_ok();
                if ok {
                    w.key = *key;
                    w.subkey = Some(k);
                }
                ok
            }
        };
        if !opened {
            return Err(DropReason::SealForged);
        }
        Self::note(w, &prefix, n);
        let len = buf.len();
        buf.truncate(len - TAG);
        if !buf.remove(vxlan::ENCAP_LEN, HEAD) {
            return Err(DropReason::Truncated);
        }
        let f = buf.data_mut();
        // Outer IPv4 (without options: the uplink refuses them) and UDP, less the seal.
        let ip = ETH;
        let udp = ETH + IPV4;
        let total = be16(f, ip + 2).wrapping_sub(SEAL_LEN as u16);
        put16(f, ip + 2, total);
        put16(f, ip + 10, 0);
        let sum = super::ipv4_header_checksum(&f[ip..ip + IPV4]);
        put16(f, ip + 10, sum);
        let ulen = be16(f, udp + 4).wrapping_sub(SEAL_LEN as u16);
        put16(f, udp + 4, ulen);
        // No UDP checksum (RFC 7348 §5): the seal's tag covered what matters.
        put16(f, udp + 6, 0);
        buf.opened = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PortId;
    use crate::overlay::Outer;

    fn keys(ids: &[(u32, u8)], primary: u32) -> NetKeys {
        NetKeys::new(&ctl::Encryption {
            primary,
            keys: ids
                .iter()
                .map(|&(id, b)| ctl::NetworkKey {
                    id,
                    key: Some(ctl::Secret([b; 32])),
                })
                .collect(),
        })
        .unwrap()
    }

    const SRC: u32 = 0xc0a8_010b;
    const DST: u32 = 0xc0a8_010c;

    /// An inner frame sealed by `s` with `k` and encapsulated for VNI 4097.
    fn sealed(s: &mut Sealer, k: &NetKeys, inner: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::from_frame(PortId::Tasks, inner);
        s.seal(k, &mut b, 4097, SRC, DST).unwrap();
        let o = Outer::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], SRC, DST, 4789);
        o.encap(&mut b, 50000, 4097).unwrap();
        b
    }

    // Casts: a remainder of 256.
    #[allow(clippy::cast_possible_truncation)]
    fn inner() -> Vec<u8> {
        (0..1420u32).map(|i| (i * 7 % 256) as u8).collect()
    }

    #[test]
    fn a_sealed_frame_opens_to_the_frame_and_hides_it_on_the_wire() {
        let k = keys(&[(1, 9)], 1);
        let mut s = Sealer::new();
        let plain = inner();
        let mut b = sealed(&mut s, &k, &plain);
        assert_eq!(b.len(), vxlan::ENCAP_LEN + SEAL_LEN + plain.len());
        // No 16-byte run of the inner frame is on the wire.
        let wire = b.data().to_vec();
        assert!(!plain.chunks(16).any(|c| wire.windows(16).any(|w| w == c)));
        let mut r = Replay::default();
        r.open(&k, &mut b, 4097, SRC, DST).unwrap();
        assert!(b.opened);
        assert_eq!(&b.data()[vxlan::ENCAP_LEN..], &plain[..]);
        // The outer headers say the opened frame's lengths, with a right IPv4 checksum.
        let l3 = crate::pipeline::parse_ipv4(b.data(), ETH, true).unwrap();
        assert_eq!((l3.dport, l3.src, l3.dst), (4789, SRC, DST));
        assert_eq!(crate::testkit::decap(b.data()).unwrap(), (4097, &plain[..]));
        assert_eq!(&b.data()[..ETH], &wire[..ETH]);
    }

    #[test]
    fn the_seal_is_standard_xchacha20_poly1305() {
        // RustCrypto's XChaCha20-Poly1305 opens what the sealer sealed, and the other way.
        use chacha20poly1305::aead::{AeadInOut, KeyInit};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let k = keys(&[(1, 9)], 1);
        let theirs = XChaCha20Poly1305::new(&[9u8; 32].into());
        let mut s = Sealer::new();
        let plain = inner();
        let b = sealed(&mut s, &k, &plain);
        let sealed_part = &b.data()[vxlan::ENCAP_LEN..];
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&sealed_part[4..HEAD]);
        let mut body = sealed_part[HEAD..sealed_part.len() - TAG].to_vec();
        let tag = chacha20poly1305::Tag::try_from(&sealed_part[sealed_part.len() - TAG..]).unwrap();
        theirs
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                &aad(4097, 1, SRC, DST),
                body.as_mut_slice().into(),
                &tag,
            )
            .unwrap();
        assert_eq!(body, plain);
        // Sealed by RustCrypto with another sender's nonce: opens here.
        let mut wire = b.data().to_vec();
        let n2 = [0x77u8; 24];
        wire[vxlan::ENCAP_LEN + 4..vxlan::ENCAP_LEN + HEAD].copy_from_slice(&n2);
        let at = vxlan::ENCAP_LEN + HEAD;
        let end = wire.len() - TAG;
        wire[at..end].copy_from_slice(&plain);
        let t = theirs
            .encrypt_inout_detached(
                &XNonce::from(n2),
                &aad(4097, 1, SRC, DST),
                (&mut wire[at..end]).into(),
            )
            .unwrap();
        wire[end..].copy_from_slice(&t);
        let mut b = PacketBuf::from_frame(PortId::Uplink, &wire);
        Replay::default().open(&k, &mut b, 4097, SRC, DST).unwrap();
        assert_eq!(&b.data()[vxlan::ENCAP_LEN..], &plain[..]);
    }

    #[test]
    fn what_was_changed_forged_or_moved_does_not_open() {
        let k = keys(&[(1, 9)], 1);
        let other = keys(&[(1, 8)], 1);
        let mut s = Sealer::new();
        let plain = inner();
        let mut r = Replay::default();
        // Any byte of the seal or the body flipped.
        for at in [vxlan::ENCAP_LEN + 5, vxlan::ENCAP_LEN + 30, 600, 1300] {
            let mut b = sealed(&mut s, &k, &plain);
            b.data_mut()[at] ^= 1;
            assert_eq!(
                r.open(&k, &mut b, 4097, SRC, DST),
                Err(DropReason::SealForged),
                "byte {at}"
            );
        }
        let mut b = sealed(&mut s, &k, &plain);
        let len = b.len();
        b.data_mut()[len - 1] ^= 0x80;
        assert_eq!(
            r.open(&k, &mut b, 4097, SRC, DST),
            Err(DropReason::SealForged)
        );
        // Another network's key, another VNI, another sender.
        let fresh = |s: &mut Sealer| sealed(s, &k, &plain);
        assert_eq!(
            r.open(&other, &mut fresh(&mut s), 4097, SRC, DST),
            Err(DropReason::SealForged)
        );
        assert_eq!(
            r.open(&k, &mut fresh(&mut s), 4098, SRC, DST),
            Err(DropReason::SealForged)
        );
        assert_eq!(
            r.open(&k, &mut fresh(&mut s), 4097, SRC + 1, DST),
            Err(DropReason::SealForged)
        );
        // Unsealed VXLAN, and a key id the node does not have.
        let mut b = PacketBuf::from_frame(PortId::Tasks, &plain);
        Outer::new([2; 6], [2; 6], SRC, DST, 4789)
            .encap(&mut b, 50000, 4097)
            .unwrap();
        assert!(r.open(&k, &mut b, 4097, SRC, DST).is_err());
        let k2 = keys(&[(2, 9)], 2);
        assert_eq!(
            r.open(&k2, &mut fresh(&mut s), 4097, SRC, DST),
            Err(DropReason::SealUnknownKey)
        );
        // Nothing failed opens anything later: the same sender's next frame opens.
        r.open(&k, &mut fresh(&mut s), 4097, SRC, DST).unwrap();
    }

    #[test]
    fn a_frame_sent_again_is_refused_and_reordering_within_the_window_is_not() {
        let k = keys(&[(1, 9)], 1);
        let mut s = Sealer::new();
        let plain = inner();
        let frames: Vec<PacketBuf> = (0..100).map(|_| sealed(&mut s, &k, &plain)).collect();
        let mut r = Replay::default();
        // 0..100 opened out of order: 50..100, then 40..50 (within 64 of 99), then 0..36 too old.
        for i in (50..100).chain(40..50) {
            r.open(&k, &mut frames[i].clone(), 4097, SRC, DST)
                .unwrap_or_else(|e| panic!("frame {i}: {e:?}"));
        }
        for i in (0..36).chain(40..100) {
            assert_eq!(
                r.open(&k, &mut frames[i].clone(), 4097, SRC, DST),
                Err(DropReason::SealReplayed),
                "frame {i}"
            );
        }
        // Another worker's frames (another prefix) are their own sequence.
        let mut s2 = Sealer::new();
        r.open(&k, &mut sealed(&mut s2, &k, &plain), 4097, SRC, DST)
            .unwrap();
    }

    #[test]
    fn a_rotation_opens_with_either_key_and_seals_with_the_primary() {
        let old = keys(&[(1, 9)], 1);
        let both = keys(&[(1, 9), (2, 7)], 2);
        let accepting = keys(&[(1, 9), (2, 7)], 1);
        let mut s = Sealer::new();
        let plain = inner();
        let mut r = Replay::default();
        // A node that has the new key but seals with the old one is understood by one that
        // does not have it yet; then everyone seals with the new one and the old is accepted.
        r.open(
            &old,
            &mut sealed(&mut s, &accepting, &plain),
            4097,
            SRC,
            DST,
        )
        .unwrap();
        r.open(&both, &mut sealed(&mut s, &old, &plain), 4097, SRC, DST)
            .unwrap();
        r.open(&both, &mut sealed(&mut s, &both, &plain), 4097, SRC, DST)
            .unwrap();
        assert_eq!(
            r.open(&old, &mut sealed(&mut s, &both, &plain), 4097, SRC, DST),
            Err(DropReason::SealUnknownKey)
        );
    }

    #[test]
    fn a_sealer_without_random_bytes_seals_nothing() {
        let mut s = Sealer {
            prefix: None,
            ..Sealer::new()
        };
        let mut b = PacketBuf::from_frame(PortId::Tasks, &inner());
        let k = keys(&[(1, 9)], 1);
        assert_eq!(
            s.seal(&k, &mut b, 4097, SRC, DST),
            Err(DropReason::SealNoNonce)
        );
        assert_eq!(b.data(), &inner()[..]);
    }

    #[test]
    fn keys_without_the_primary_make_no_keyring() {
        assert!(NetKeys::new(&ctl::Encryption {
            primary: 3,
            keys: vec![ctl::NetworkKey {
                id: 1,
                key: Some(ctl::Secret([1; 32]))
            }],
        })
        .is_none());
        assert!(!format!("{:?}", keys(&[(1, 9)], 1)).contains("9, 9"));
    }
}
