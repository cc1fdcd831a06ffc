//! IPv4 fragments: forwarded one by one, not reassembled; and too-big packets without DF
//! fragmented (RFC 791) before they are sent.
//!
//! Only a datagram's first fragment carries its ports, so only it can find (or make) the flow.
//! Each worker keeps a small fragment table keyed by (source, destination, protocol, IP id)
//! that remembers what the first fragment's path did (its [`Route`]), and the datagram's other
//! fragments follow it: rewritten by the same flow (addresses and IP checksum; the transport
//! checksum, which covers the whole datagram, was updated in the first fragment), to the host
//! side, or handed to the same worker. Fragments that come before the first are held (a
//! bounded set of buffers, swapped for spare ones) until it comes, or dropped as
//! `fragment_timeout`. Overlapping fragments (RFC 5722's rule, applied to IPv4 as the kernel
//! does) are dropped, as are fragments past 65,535 bytes or too short to hold the transport
//! header. Memory is fixed: `SETS * WAYS` datagrams, `HOLD` held fragments per worker.
//!
//! With several workers, every fragment of a datagram is first steered by that key to one
//! worker (its collector), which runs the first fragment through its path: if the flow
//! belongs to another worker, the path hands the fragment to it, and the collector hands it
//! the datagram's other fragments too, in order, marked [`PacketBuf::pinned`] so the owner
//! does not steer them back.
//!
//! The pieces of an IPv6 client's datagram to a published port take this path too, still IPv6
//! ([`Way::Nat64`]): keyed by the client's stand-in and identification, the first finds the
//! flow, and each is turned into an IPv4 fragment when it is forwarded (`nat64`). A task's
//! pieces to a twin on a dual-stack network are IPv4 fragments by then (`overlay6`), marked
//! [`PacketBuf::v6`], and are turned back into IPv6 pieces where they go out; a held one on
//! its release ([`Pipeline::held6`]).

use super::*;
use crate::nat::be16;
use crate::wire;

/// Which piece of a datagram a packet is (`L3::frag`). An enum rather than a number: its
/// unused values give `Result<L3, DropReason>` room for its tag, so a parsed header still fits
/// in 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment: the whole datagram.
    Whole,
    /// The first fragment (offset 0, more fragments): it carries the transport header.
    First,
    /// Any later fragment: no transport header.
    Later,
}

/// Datagrams a worker tracks at once: `SETS` sets of `WAYS` entries.
const SETS: usize = 256;
const WAYS: usize = 4;
/// Fragments a worker holds while their first fragment is late.
pub(super) const HOLD: usize = 32;
/// Empty buffers a worker keeps for held fragments and for the pieces it fragments into.
pub(super) const SPARE: usize = 32;
/// Frames made or released by one burst, beside the burst's own (drained by the worker after
/// each burst). Each comes from a spare buffer or a held fragment, so this many always fit.
pub(super) const EXTRA: usize = SPARE + HOLD;
/// How long a datagram's route is remembered after its last fragment, and how long a fragment
/// waits for its first fragment (milliseconds).
const LIFETIME_MS: u32 = 2_000;
const HOLD_MS: u32 = 500;
/// Disjoint byte ranges tracked per datagram (fragments in order make one).
const RANGES: usize = 8;

/// A datagram: what its fragments share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FragKey {
    src: u32,
    dst: u32,
    /// IPv4's 16 bits, or IPv6's 32.
    id: u32,
    proto: u8,
}

impl FragKey {
    fn hash(&self) -> u64 {
        let a = u64::from(self.src) << 32 | u64::from(self.dst);
        let b = u64::from(self.id) << 8 | u64::from(self.proto);
        (a ^ b.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The worker that collects this datagram's fragments.
    // Casts: the result is below `workers`, a u16.
    #[allow(clippy::cast_possible_truncation)]
    fn collector(&self, workers: u16) -> u16 {
        ((self.hash() >> 48) % u64::from(workers.max(1))) as u16
    }
}

/// What a datagram's first fragment did, which its other fragments do too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// The first fragment has not come yet: hold the others.
    Pending,
    /// Handed to the worker that owns the flow.
    Owner(u16),
    /// Forwarded by this flow (its key in the first fragment's direction).
    Flow(FlowKey),
    /// Forwarded by address, with no flow: the path decides each fragment alike.
    Path,
    /// To the host side.
    Host(HostReason),
    /// Dropped.
    Drop(DropReason),
}

/// How a fragment reached the pipeline: on its port, inside VXLAN from a peer, or as a piece
/// of an IPv6 client's datagram (still IPv6 in the buffer; `L3` holds its stand-in, as
/// `published6` makes it).
#[derive(Debug, Clone, Copy)]
pub(super) enum Way {
    Direct,
    /// Inside VXLAN with this outer packet.
    Decap {
        outer: L3,
    },
    /// From this IPv6 client, with its Fragment header and data length.
    Nat64 {
        client: [u8; 16],
        piece: super::ipv6::Frag6,
        len: u16,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: FragKey,
    /// Free once passed.
    expires: u32,
    route: Route,
    /// The byte ranges of the datagram seen, and its length once the last fragment came.
    have: [(u16, u16); RANGES],
    ranges: u8,
    end: Option<u16>,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            key: FragKey::default(),
            expires: 0,
            route: Route::Pending,
            have: [(0, 0); RANGES],
            ranges: 0,
            end: None,
        }
    }
}

/// Whether millisecond `t` has passed at `now` (the clock wraps).
// Casts: a wrapping difference read as signed.
#[allow(clippy::cast_possible_wrap)]
fn passed(now: u32, t: u32) -> bool {
    now.wrapping_sub(t) as i32 >= 0
}

/// A worker's fragment table: fixed size, allocated once.
#[derive(Debug)]
pub struct FragTable {
    e: Box<[Entry]>,
}

impl Default for FragTable {
    fn default() -> Self {
        FragTable {
            e: vec![Entry::default(); SETS * WAYS].into_boxed_slice(),
        }
    }
}

impl FragTable {
    // Casts: the set index is below SETS.
    #[allow(clippy::cast_possible_truncation)]
    fn set(key: &FragKey) -> std::ops::Range<usize> {
        // The product's high bits: its low bits depend on the key's low bits only.
        let s = ((key.hash() >> 40) as usize) % SETS * WAYS;
        s..s + WAYS
    }

    fn find(&self, key: &FragKey, now: u32) -> Option<usize> {
        Self::set(key).find(|&i| self.e[i].key == *key && !passed(now, self.e[i].expires))
    }

    fn insert(&mut self, key: FragKey, now: u32) -> Option<usize> {
        let i = Self::set(&key).find(|&i| passed(now, self.e[i].expires))?;
        self.e[i] = Entry {
            key,
            expires: now.wrapping_add(LIFETIME_MS) | 1,
            ..Entry::default()
        };
        Some(i)
    }

    /// Records bytes `start..end` of entry `i`'s datagram (`last`: the final fragment).
    fn add(&mut self, i: usize, start: u16, end: u16, last: bool) -> Result<(), DropReason> {
        let e = &mut self.e[i];
        let n = usize::from(e.ranges);
        if e.have[..n].iter().any(|&(a, b)| start < b && a < end) {
            return Err(DropReason::FragmentOverlap);
        }
        if last && (e.end.is_some() || e.have[..n].iter().any(|&(_, b)| b > end)) {
            return Err(DropReason::BadFragment);
        }
        if e.end.is_some_and(|total| end > total) {
            return Err(DropReason::BadFragment);
        }
        // Joined to a range it touches, else a new one.
        if let Some(r) = e.have[..n].iter_mut().find(|r| r.1 == start) {
            r.1 = end;
        } else if let Some(r) = e.have[..n].iter_mut().find(|r| r.0 == end) {
            r.0 = start;
        } else if n < RANGES {
            e.have[n] = (start, end);
            e.ranges += 1;
        } else {
            return Err(DropReason::FragmentTableFull);
        }
        // A range that now touches another one merges with it.
        let n = usize::from(e.ranges);
        if let Some((j, k)) = (0..n)
            .flat_map(|j| (0..n).map(move |k| (j, k)))
            .find(|&(j, k)| j != k && e.have[j].1 == e.have[k].0)
        {
            e.have[j].1 = e.have[k].1;
            e.have[k] = e.have[n - 1];
            e.ranges -= 1;
        }
        if last {
            e.end = Some(end);
        }
        Ok(())
    }

    /// Whether entry `i`'s datagram has come whole.
    fn complete(&self, i: usize) -> bool {
        let e = &self.e[i];
        e.ranges == 1 && e.end.is_some_and(|end| e.have[0] == (0, end))
    }

    fn free(&mut self, i: usize) {
        self.e[i].expires = 0;
        self.e[i].key = FragKey::default();
    }

    /// Datagrams tracked at `now`.
    pub fn len(&self, now: u32) -> usize {
        self.e
            .iter()
            .filter(|e| e.key != FragKey::default() && !passed(now, e.expires))
            .count()
    }
}

/// A fragment waiting for its datagram's first fragment.
#[derive(Debug)]
pub(super) struct Held {
    key: FragKey,
    l3: L3,
    way: Way,
    until: u32,
    buf: PacketBuf,
}

impl Pipeline {
    /// A fragment (`l3.frag` is `Frag::First` or `Frag::Later`), checked by `parse_fragment`.
    #[cold]
    #[inline(never)]
    pub(super) fn fragment(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: L3,
        way: Way,
    ) -> Result<Verdict, DropReason> {
        self.stats.fragments_in += 1;
        if buf.port == PortId::Tasks && matches!(way, Way::Direct) {
            // Every fragment, not only the first that `on_task` sees: a later one claiming
            // another task's datagram would be forwarded as that datagram's.
            self.task_source(t, now, buf, l3.src)?;
        }
        let (id, ff, len) = if let Way::Nat64 { piece, len, .. } = way {
            (piece.id, piece.ff, len)
        } else {
            let ip = l3.l4 - IPV4;
            let h = buf.data().get(ip..ip + IPV4).ok_or(DropReason::Truncated)?;
            // A task's IPv6 piece (`overlay6`) carries its identification's low 16 bits: bit
            // 16 keeps its datagrams apart from the same task's IPv4 ones.
            let id = u32::from(be16(h, 4)) | u32::from(buf.v6) << 16;
            (id, be16(h, 6), be16(h, 2) - 20)
        };
        let start = (ff & 0x1fff) * 8;
        // Checked by `parse_fragment`: the fragment ends at or before byte 65,535.
        let (end, last) = (start.saturating_add(len), ff & 0x2000 == 0);
        let key = FragKey {
            src: l3.src,
            // An IPv6 client's datagrams are told apart by more of its address than the
            // stand-in holds, so that a client whose stand-in is another's cannot add to its
            // datagrams.
            dst: match way {
                Way::Nat64 { client, .. } => super::nat64::frag_tag(&client),
                _ => l3.dst,
            },
            id,
            proto: l3.proto,
        };
        if self.cfg.workers > 1 && !buf.pinned {
            let c = key.collector(self.cfg.workers);
            if c != self.cfg.worker {
                return Ok(Verdict::Handoff(c));
            }
        }
        let i = match self.frags.find(&key, now) {
            Some(i) => i,
            None => self
                .frags
                .insert(key, now)
                .ok_or(DropReason::FragmentTableFull)?,
        };
        self.frags.add(i, start, end, last)?;
        let v = if l3.frag == Frag::First {
            // Its path decides the datagram's route.
            let held = self.frags.e[i].route == Route::Pending;
            self.frag_flow = None;
            let v = self.path(t, now, buf, l3, way);
            let route = match v {
                Ok(Verdict::Handoff(o)) => {
                    buf.pinned = true;
                    Route::Owner(o)
                }
                Ok(Verdict::Host(r)) => Route::Host(r),
                Err(r) => Route::Drop(r),
                Ok(_) => self.frag_flow.take().map_or(Route::Path, Route::Flow),
            };
            self.frags.e[i].route = route;
            if held {
                self.release(t, now, key, route);
            }
            v
        } else {
            match self.frags.e[i].route {
                Route::Pending => return self.hold(buf, key, l3, way, now),
                route => self.later(t, now, buf, l3, way, route),
            }
        };
        if self.frags.complete(i) {
            self.frags.free(i);
        }
        v
    }

    /// Runs a fragment through the path of the way it came.
    fn path(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        l3: L3,
        way: Way,
    ) -> Result<Verdict, DropReason> {
        match (way, buf.port) {
            (Way::Direct, PortId::Uplink) => {
                let me = t.node(t.local);
                if l3.proto == UDP && l3.dport == t.vtep_port && addr(l3.dst) == me.vtep {
                    // VTEPs do not fragment VXLAN (RFC 7348 section 4.3), nor reassemble it.
                    return Err(DropReason::Fragment);
                }
                self.on_uplink(t, now, buf, l3)
            }
            (Way::Direct, PortId::Tasks) if buf.v6 => self.on_task::<true>(t, now, buf, l3),
            (Way::Direct, PortId::Tasks) => self.on_task::<false>(t, now, buf, l3),
            // The inner packet is read again from the frame (`l3` is the same).
            (Way::Decap { outer }, _) => self.decap_replay(t, now, buf, outer),
            (Way::Nat64 { client, .. }, _) => self.published6_first(t, now, buf, l3, client),
        }
    }

    /// The decapsulating path again for a fragment the fragment stage let through: out of line,
    /// so the uplink's path keeps `decap` inlined and this cold copy stays apart.
    #[inline(never)]
    #[cold]
    fn decap_replay(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        outer: L3,
    ) -> Result<Verdict, DropReason> {
        self.decap(t, now, buf, outer, true, buf.v6)
    }

    /// A fragment after the first, by its datagram's route.
    fn later(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        mut l3: L3,
        way: Way,
        route: Route,
    ) -> Result<Verdict, DropReason> {
        match route {
            Route::Owner(o) => {
                buf.pinned = true;
                Ok(Verdict::Handoff(o))
            }
            Route::Path => self.path(t, now, buf, l3, way),
            Route::Drop(r) => Err(r),
            Route::Host(r) => {
                decapsulate(buf, way, &mut l3)?;
                Ok(Verdict::Host(r))
            }
            Route::Flow(key) => {
                // Fix (found by the testbed): `l3`'s offsets moved too, which a piece of a
                // task's reply to an IPv6 client needs (`forward6` reads its length by them).
                decapsulate(buf, way, &mut l3)?;
                let Some((id, dir)) = self.lookup_live(t, &key, key.hash()) else {
                    return Err(DropReason::NoRoute);
                };
                if let Way::Nat64 { client, .. } = way {
                    // Another client whose stand-in and identification match: not its flow.
                    if self.flows.get(id).client6() != client {
                        return Err(DropReason::Ipv6ClientCollision);
                    }
                    l3.l4 = super::nat64::piece_to_ipv4(buf, l3.src)?;
                }
                // No TCP state moves: a later fragment has no TCP header.
                let fl = self.flows.get_mut(id);
                match dir {
                    Dir::Fwd => fl.last_seen = now,
                    Dir::Rev => fl.rev_seen = now,
                }
                if self.cfg.flow_accounting {
                    fl.count(dir, buf.len() as u64);
                }
                let a = *fl.action(dir);
                let slot = fl.stats_slot(dir);
                if let Egress::Uplink6 { mac } = a.egress {
                    // A task's reply to an IPv6 client: `forward6` blames what it refuses itself.
                    return match self.forward6(t, buf, &l3, &a, slot, id, mac) {
                        Err(r @ (DropReason::NoIpv6 | DropReason::Ipv6Fragment)) => Err(r),
                        r => r.map_err(|r| self.blame(slot, r)),
                    };
                }
                // A later fragment's ports are not in it, so `process` cannot find its flow:
                // its drop is blamed on the flow's task here.
                self.forward_big(t, now, buf, &l3, &a, slot, dir)
                    .map_err(|r| self.blame(slot, r))
            }
            // `fragment` holds those; never released with this route.
            Route::Pending => Err(DropReason::NoRoute),
        }
    }

    /// Keeps a fragment whose first fragment has not come, swapping a spare buffer in.
    fn hold(
        &mut self,
        buf: &mut PacketBuf,
        key: FragKey,
        l3: L3,
        way: Way,
        now: u32,
    ) -> Result<Verdict, DropReason> {
        if self.held.is_full() {
            return Err(DropReason::FragmentTableFull);
        }
        let Some(spare) = self.spare.pop() else {
            return Err(DropReason::NoBuffer);
        };
        let buf = std::mem::replace(buf, spare);
        self.held.push(Held {
            key,
            l3,
            way,
            until: now.wrapping_add(HOLD_MS),
            buf,
        });
        self.stats.fragments_held += 1;
        Ok(Verdict::Consumed)
    }

    /// Sends on the held fragments of `key`, now that its route is known. Inlined: every first
    /// fragment calls it, and it has nothing to do but when a fragment came early.
    #[inline(always)]
    fn release(&mut self, t: &ServiceTable, now: u32, key: FragKey, route: Route) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].key != key {
                i += 1;
                continue;
            }
            let h = self.held.remove(i);
            let mut b = h.buf;
            let mut v = self
                .later(t, now, &mut b, h.l3, h.way, route)
                .unwrap_or_else(Verdict::Drop);
            if b.v6 {
                // A piece of a task's IPv6 datagram: IPv6 again where it goes.
                v = self.held6(t, &mut b, h.way, v);
            }
            self.push_extra(b, v);
        }
    }

    /// Drops held fragments whose first fragment did not come in time, giving their buffers
    /// back to `pool`.
    pub(super) fn expire_held(&mut self, now: u32, pool: &mut Pool) {
        let mut i = 0;
        while i < self.held.len() {
            if passed(now, self.held[i].until) {
                let h = self.held.remove(i);
                self.stats.drop(DropReason::FragmentTimeout);
                pool.put(h.buf);
            } else {
                i += 1;
            }
        }
    }

    /// A frame made or released outside the burst's own, with its verdict (counted here); it
    /// goes out right after the burst's frame being processed.
    pub(super) fn push_extra(&mut self, b: PacketBuf, v: Verdict) {
        self.count(v);
        if let Err(e) = self.extra.try_push((b, v, self.cur)) {
            // Cannot happen while the worker drains the extra frames after every burst (each
            // came from a spare buffer or a held fragment); counted, and the buffer kept.
            self.stats.drop(DropReason::NoBuffer);
            let _ = self.spare.try_push(e.element().0);
        }
    }

    /// The frames made or released by the last burst (fragments of a too-big packet, held
    /// fragments whose first fragment came), with their verdicts and the index of the burst's
    /// frame each is to follow (so a packet's pieces leave together, in order), in order.
    pub fn take_extra(&mut self) -> ArrayVec<Extra, EXTRA> {
        std::mem::take(&mut self.extra)
    }

    /// Whether the last burst made or released frames (see [`Self::take_extra`]).
    #[inline]
    pub fn has_extra(&self) -> bool {
        !self.extra.is_empty()
    }

    /// Tops up the spare buffers from `pool`.
    pub(super) fn refill_spares(&mut self, pool: &mut Pool) {
        while !self.spare.is_full() {
            let Some(b) = pool.get() else { break };
            self.spare.push(b);
        }
    }

    /// Sends a packet (already rewritten) whole, or when `mtu` is not 0, in fragments of at
    /// most `mtu` bytes of IPv4 (RFC 791 section 3.2: each carries a copy of the header, a
    /// multiple of 8 bytes of data but the last, its offset, and more-fragments but the last;
    /// a fragment fragmented again keeps its offset and its own more-fragments on the last
    /// piece). The first piece stays in `buf`; the others go out as extra frames.
    pub(super) fn send_sized(
        &mut self,
        t: &ServiceTable,
        now: u32,
        buf: &mut PacketBuf,
        dst: u32,
        egress: Egress,
        mtu: u16,
    ) -> Result<Verdict, DropReason> {
        if mtu == 0 {
            return self.send(t, now, buf, dst, egress);
        }
        let chunk = usize::from(mtu.saturating_sub(20) & !7);
        let f = buf.data();
        let total = usize::from(be16(f, ETH + 2));
        let payload = total.saturating_sub(IPV4);
        if chunk == 0 || f.len() < ETH + total {
            return Err(DropReason::TooBig);
        }
        let pieces = payload.div_ceil(chunk);
        if pieces - 1 > self.spare.len() || pieces - 1 > EXTRA - self.extra.len() {
            return Err(DropReason::NoBuffer);
        }
        let ff = be16(f, ETH + 6);
        let (base, mf) = (ff & 0x1fff, ff & 0x2000 != 0);
        let mut head = [0u8; ETH + IPV4];
        head.copy_from_slice(&f[..ETH + IPV4]);
        for k in 1..pieces {
            let Some(mut p) = self.spare.pop() else { break };
            let from = ETH + IPV4 + k * chunk;
            let to = (from + chunk).min(ETH + total);
            let n = ETH + IPV4 + (to - from);
            let room = p.room_mut();
            room[..ETH + IPV4].copy_from_slice(&head);
            room[ETH + IPV4..n].copy_from_slice(&buf.data()[from..to]);
            p.set_len(n);
            p.port = buf.port;
            let more = k + 1 < pieces || mf;
            let h = &mut p.data_mut()[ETH..ETH + IPV4];
            wire::set_fragment(h, to - from, base + piece_units(k * chunk), more);
            let v = self
                .send(t, now, &mut p, dst, egress)
                .unwrap_or_else(Verdict::Drop);
            self.push_extra(p, v);
        }
        buf.truncate(ETH + IPV4 + chunk);
        wire::set_fragment(&mut buf.data_mut()[ETH..ETH + IPV4], chunk, base, true);
        self.stats.fragments_made += pieces as u64;
        self.send(t, now, buf, dst, egress)
    }

    /// Datagrams whose fragments this worker tracks at `now`, and fragments it holds.
    pub fn fragments(&self, now: u32) -> (usize, usize) {
        (self.frags.len(now), self.held.len())
    }
}

/// Strips the VXLAN headers of a fragment that came inside VXLAN (as `decap` does before it
/// delivers), and moves its header's offsets (`l3`) with them.
fn decapsulate(buf: &mut PacketBuf, way: Way, l3: &mut L3) -> Result<(), DropReason> {
    if let Way::Decap { .. } = way {
        if !buf.trim_front(vxlan::ENCAP_LEN) {
            return Err(DropReason::Truncated);
        }
        l3.l4 -= vxlan::ENCAP_LEN;
    }
    Ok(())
}

/// `bytes` (a multiple of 8) in fragment-offset units.
// Casts: an offset within a 65,535-byte datagram, in 8-byte units, fits 13 bits.
#[allow(clippy::cast_possible_truncation)]
fn piece_units(bytes: usize) -> u16 {
    (bytes / 8) as u16
}

/// A frame made or released beside a burst's own: the frame, its verdict, and the index of
/// the burst's frame it follows.
pub type Extra = (PacketBuf, Verdict, u8);

/// What to do with a packet longer than the smallest overlay MTU.
pub(super) enum Size {
    /// It fits where it goes.
    Fits,
    /// Too big with DF set (answered with ICMP "fragmentation needed", or dropped).
    Refused(Result<Verdict, DropReason>),
    /// Too big without DF: fragment to this MTU.
    Split(u16),
}

/// What `parse_fragment` reads of a fragment: which piece it is and, in the first, the ports.
/// Small enough to come back in registers, so `parse_ipv4`'s path for whole datagrams is not
/// made to build its result in memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct FragHead {
    pub frag: Frag,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub ack: u32,
}

/// Checks a fragment (IPv4 header `h`, whose checksum, lengths and TTL `parse_ipv4` checked;
/// `payload` is what follows the header) and reads what the path needs: the first fragment's
/// ports (its transport checksum, over the whole datagram, cannot be checked here: the task
/// checks it), nothing of a later one.
#[cold]
#[inline(never)]
pub(super) fn parse_fragment(h: &[u8; IPV4], payload: &[u8]) -> Result<FragHead, DropReason> {
    let mut out = FragHead {
        frag: Frag::Later,
        sport: 0,
        dport: 0,
        flags: 0,
        ack: 0,
    };
    let proto = h[9];
    let ff = u16::from_be_bytes([h[6], h[7]]);
    let start = usize::from(ff & 0x1fff) * 8;
    let more = ff & 0x2000 != 0;
    //= https://www.rfc-editor.org/rfc/rfc791#section-3.2
    //# the fragmentation must take place at an 8 octet boundary
    if start + payload.len() > 65_535
        || (more && !payload.len().is_multiple_of(8))
        || payload.is_empty()
    {
        return Err(DropReason::BadFragment);
    }
    if start > 0 {
        //= https://www.rfc-editor.org/rfc/rfc1858#section-4
        //# if FO=1 and PROTOCOL=TCP then drop packet
        if proto == TCP && start == 8 {
            return Err(DropReason::BadFragment);
        }
        return Ok(out);
    }
    out.frag = Frag::First;
    match proto {
        TCP => {
            let t = TcpPacket::new_unchecked(payload);
            if payload.len() < 20 || !(20..=payload.len()).contains(&usize::from(t.header_len())) {
                return Err(DropReason::BadFragment);
            }
            out.sport = t.src_port();
            out.dport = t.dst_port();
            out.flags = payload[13];
            out.ack = t.ack_number().0 as u32;
        }
        UDP => {
            if payload.len() < 8 {
                return Err(DropReason::BadFragment);
            }
            let u = UdpPacket::new_unchecked(payload);
            out.sport = u.src_port();
            out.dport = u.dst_port();
        }
        ICMP => {}
        _ => return Err(DropReason::UnknownProtocol),
    }
    Ok(out)
}
