//! DNS messages as the embedded resolver needs them: a query parsed (RFC 1035 §4, EDNS per RFC
//! 6891) and an answer built. No I/O.
//!
//! smoltcp's `wire::dns` is a client's: it emits queries and parses answers, but cannot parse the
//! additional section of a query (EDNS) nor emit answer records, so this is a small parser of
//! our own in the same spirit. Every read is bounds-checked: any bytes give a [`Query`] or a
//! [`Malformed`] saying whether and how to answer, never a panic (see the property tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Record types and classes the resolver knows.
pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// The header's length.
pub const HEADER_LEN: usize = 12;
/// The largest answer over UDP without EDNS (RFC 1035 §4.2.1).
pub const UDP_PLAIN_MAX: usize = 512;
/// The largest UDP answer we send with EDNS: the DNS flag day 2020 size, which never fragments
/// on an Ethernet path (or inside a VXLAN overlay with a 1500-byte underlay).
pub const UDP_EDNS_MAX: usize = 1232;
/// Longest name on the wire, root label included (RFC 1035 §2.3.4).
pub const NAME_MAX: usize = 255;

/// Response codes (RFC 1035 §4.1.1, RFC 6891 §9 for BADVERS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    /// The query's EDNS version is not 0 (an extended code: 16).
    BadVers,
}

impl Rcode {
    /// The 12-bit code: the low four bits go in the header, the rest in the OPT record.
    pub fn code(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rcode::NoError => "noerror",
            Rcode::FormErr => "formerr",
            Rcode::ServFail => "servfail",
            Rcode::NxDomain => "nxdomain",
            Rcode::NotImp => "notimp",
            Rcode::Refused => "refused",
            Rcode::BadVers => "badvers",
        }
    }
}

mod flags {
    //= https://www.rfc-editor.org/rfc/rfc1035#section-4.1.1
    //# |QR|   Opcode  |AA|TC|RD|RA|   Z    |   RCODE   |
    pub const QR: u16 = 0x8000;
    pub const OPCODE_SHIFT: u16 = 11;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    /// The DO bit in an OPT record's TTL (RFC 3225).
    pub const DO: u32 = 0x8000;
}

/// A query's EDNS(0) pseudo-record (RFC 6891 §6.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requestor's UDP payload size; values under 512 count as 512 (§6.2.3).
    pub udp_size: u16,
    pub version: u8,
    /// DNSSEC OK (RFC 3225): copied into the answer.
    pub dnssec_ok: bool,
}

/// A well-formed query: one question, maybe EDNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub id: u16,
    /// Recursion desired.
    pub rd: bool,
    /// The name in lower case, labels joined with dots, no trailing dot ("" for the root).
    pub name: String,
    /// Whether every label is made of letters, digits, '-' and '_' only (a name meshd could
    /// hold: anything else is no service's or task's).
    pub plain: bool,
    pub qtype: u16,
    pub qclass: u16,
    /// The question as it came (name, type, class): echoed in the answer byte for byte, so a
    /// client's mixed-case name (0x20 randomisation) comes back as sent.
    pub question: &'a [u8],
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The largest UDP answer this query allows.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_size).clamp(UDP_PLAIN_MAX, UDP_EDNS_MAX),
            None => UDP_PLAIN_MAX,
        }
    }
}

/// Why a message is not a query the resolver can answer, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not even a header, or a response (QR set; answering it could loop): dropped, counted.
    Drop(DropWhy),
    /// Answered with this code and no answer records (RFC 1035 §4.1.1: FORMERR for a query the
    /// server could not interpret, NOTIMP for an opcode it does not implement).
    Answer {
        id: u16,
        opcode: u8,
        rd: bool,
        rcode: Rcode,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropWhy {
    TooShort,
    NotAQuery,
}

/// A bounds-checked cursor over a message.
struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.msg.get(self.at)?;
        self.at += 1;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.msg.get(self.at..self.at.checked_add(2)?)?;
        self.at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.msg.get(self.at..self.at.checked_add(4)?)?;
        self.at += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        let end = self.at.checked_add(n)?;
        if end > self.msg.len() {
            return None;
        }
        self.at = end;
        Some(())
    }

    /// The question's name: uncompressed labels only (a pointer there could only point into the
    /// header). Returns the lower-case dotted name and whether it is plain.
    fn question_name(&mut self) -> Option<(String, bool)> {
        let start = self.at;
        let mut name = String::new();
        let mut plain = true;
        loop {
            let len = self.u8()?;
            //= https://www.rfc-editor.org/rfc/rfc1035#section-4.1.4
            //# The first two bits are ones.  This allows a pointer to be distinguished from a
            //# label, since the label must begin with two zero bits
            if len & 0xc0 != 0 {
                return None;
            }
            if self.at - start > NAME_MAX {
                return None;
            }
            if len == 0 {
                break;
            }
            let label = self.msg.get(self.at..self.at + usize::from(len))?;
            self.at += usize::from(len);
            if self.at - start > NAME_MAX {
                return None;
            }
            if !name.is_empty() {
                name.push('.');
            }
            for &b in label {
                if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    plain = false;
                }
                // Non-ASCII bytes stay in the name as escapes, so no two names collide.
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    name.push(char::from(b.to_ascii_lowercase()));
                } else {
                    name.push_str(&format!("\\{b:03}"));
                }
            }
        }
        Some((name, plain))
    }

    /// Skips a name anywhere else: labels ending in the root label or in a pointer.
    fn skip_name(&mut self) -> Option<()> {
        let start = self.at;
        loop {
            let len = self.u8()?;
            match len & 0xc0 {
                0xc0 => return self.skip(1),
                0x00 if len == 0 => return Some(()),
                0x00 => self.skip(usize::from(len))?,
                _ => return None,
            }
            if self.at - start > NAME_MAX {
                return None;
            }
        }
    }
}

/// Parses a query. Anything that is not a well-formed standard query of one question is
/// [`Malformed`], with what to answer when an answer is due.
// Casts: constants below u16::MAX, and the 8-bit EDNS version taken from its field.
#[allow(clippy::cast_possible_truncation)]
pub fn parse_query(msg: &[u8]) -> Result<Query<'_>, Malformed> {
    let mut r = Reader { msg, at: 0 };
    let (Some(id), Some(fl)) = (r.u16(), r.u16()) else {
        return Err(Malformed::Drop(DropWhy::TooShort));
    };
    let (Some(qd), Some(an), Some(ns), Some(ar)) = (r.u16(), r.u16(), r.u16(), r.u16()) else {
        return Err(Malformed::Drop(DropWhy::TooShort));
    };
    if fl & flags::QR != 0 {
        return Err(Malformed::Drop(DropWhy::NotAQuery));
    }
    let opcode = ((fl >> flags::OPCODE_SHIFT) & 0xf) as u8;
    let rd = fl & flags::RD != 0;
    let answer = |rcode| Malformed::Answer {
        id,
        opcode,
        rd,
        rcode,
    };
    if opcode != 0 {
        return Err(answer(Rcode::NotImp));
    }
    //= https://www.rfc-editor.org/rfc/rfc9619#section-4
    //# a DNS message with OPCODE = 0 (QUERY) MUST NOT include a QDCOUNT parameter whose value
    //# is greater than 1.
    if qd != 1 || an != 0 || ns != 0 {
        return Err(answer(Rcode::FormErr));
    }
    let qstart = r.at;
    let Some((name, plain)) = r.question_name() else {
        return Err(answer(Rcode::FormErr));
    };
    let (Some(qtype), Some(qclass)) = (r.u16(), r.u16()) else {
        return Err(answer(Rcode::FormErr));
    };
    let question = &msg[qstart..r.at];
    let mut edns = None;
    for _ in 0..ar {
        let at = r.at;
        if r.skip_name().is_none() {
            return Err(answer(Rcode::FormErr));
        }
        let root_name = r.at == at + 1;
        let (Some(rtype), Some(class), Some(ttl), Some(rdlen)) =
            (r.u16(), r.u16(), r.u32(), r.u16())
        else {
            return Err(answer(Rcode::FormErr));
        };
        if r.skip(usize::from(rdlen)).is_none() {
            return Err(answer(Rcode::FormErr));
        }
        if rtype == TYPE_OPT {
            //= https://www.rfc-editor.org/rfc/rfc6891#section-6.1.1
            //# When an OPT RR is included within any DNS message, it MUST be the only OPT RR in
            //# that message.  [...] the responder MUST respond with RCODE=FORMERR.
            if edns.is_some() || !root_name {
                return Err(answer(Rcode::FormErr));
            }
            edns = Some(Edns {
                udp_size: class.max(UDP_PLAIN_MAX as u16),
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & flags::DO != 0,
            });
        }
    }
    if r.at != msg.len() {
        return Err(answer(Rcode::FormErr));
    }
    Ok(Query {
        id,
        rd,
        name,
        plain,
        qtype,
        qclass,
        question,
        edns,
    })
}

/// One answer record: an A record for an IPv4 address, AAAA for an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub addr: IpAddr,
    pub ttl: u32,
}

/// What every answer record has besides its address: the owner name (a pointer), type, class,
/// TTL and data length (RFC 1035 §4.1.3).
const RR_FIXED: usize = 2 + 2 + 2 + 4 + 2;

impl Answer {
    /// The record's type: A (RFC 1035 §3.4.1) or AAAA (RFC 3596 §2.1).
    pub fn rtype(&self) -> u16 {
        match self.addr {
            IpAddr::V4(_) => TYPE_A,
            IpAddr::V6(_) => TYPE_AAAA,
        }
    }

    /// The record's length in an answer: 16 bytes for A, 28 for AAAA.
    pub fn wire_len(&self) -> usize {
        RR_FIXED
            + match self.addr {
                IpAddr::V4(_) => 4,
                IpAddr::V6(_) => 16,
            }
    }
}

/// How an answer is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSpec {
    pub rcode: Rcode,
    /// Authoritative (the mesh's own names).
    pub aa: bool,
    /// Recursion available (an upstream is configured).
    pub ra: bool,
    /// The largest message allowed; answers that do not fit are left out and TC is set.
    pub limit: usize,
}

/// Builds the answer to `q`: the question echoed, `answers` as A or AAAA records by their
/// address's family (their owner name a pointer to the question's), and an OPT record when the
/// query had one. When the answers do not fit in `spec.limit` (an AAAA record takes 28 bytes,
/// an A record 16), none is sent and TC is set (RFC 2181 §9: the client asks again over TCP).
// Casts: answers are bounded by the message size (a few hundred), the header length is 12.
#[allow(clippy::cast_possible_truncation)]
pub fn build_answer(q: &Query<'_>, answers: &[Answer], spec: AnswerSpec) -> Vec<u8> {
    const OPT: usize = 1 + 2 + 2 + 4 + 2;
    let opt_len = if q.edns.is_some() { OPT } else { 0 };
    let base = HEADER_LEN + q.question.len() + opt_len;
    let records: usize = answers.iter().map(Answer::wire_len).sum();
    let fits = base + records <= spec.limit;
    let (answers, records) = if fits {
        (answers, records)
    } else {
        (&[][..], 0)
    };
    let mut out = Vec::with_capacity(base + records);
    let mut fl = flags::QR | (spec.rcode.code() & 0xf);
    if spec.aa {
        fl |= flags::AA;
    }
    if !fits {
        fl |= flags::TC;
    }
    if q.rd {
        fl |= flags::RD;
    }
    if spec.ra {
        fl |= flags::RA;
    }
    header(
        &mut out,
        q.id,
        fl,
        1,
        answers.len() as u16,
        u16::from(q.edns.is_some()),
    );
    out.extend_from_slice(q.question);
    for a in answers {
        // A pointer to the question's name at offset 12 (RFC 1035 §4.1.4).
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&a.rtype().to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&a.ttl.to_be_bytes());
        //= https://www.rfc-editor.org/rfc/rfc3596#section-2.2
        //# A 128 bit IPv6 address is encoded in the data portion of an AAAA
        //# resource record in network byte order (high-order byte first).
        match a.addr {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    if let Some(e) = q.edns {
        opt(&mut out, spec.rcode, e.dnssec_ok);
    }
    out
}

/// The answer to a [`Malformed::Answer`]: the header alone (the question could not be trusted),
/// with `rcode`.
pub fn build_error(id: u16, opcode: u8, rd: bool, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    let mut fl =
        flags::QR | (u16::from(opcode & 0xf) << flags::OPCODE_SHIFT) | (rcode.code() & 0xf);
    if rd {
        fl |= flags::RD;
    }
    header(&mut out, id, fl, 0, 0, 0);
    out
}

fn header(out: &mut Vec<u8>, id: u16, fl: u16, qd: u16, an: u16, ar: u16) {
    for v in [id, fl, qd, an, 0, ar] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Our OPT record: our UDP size, the extended rcode bits, version 0, DO copied (RFC 3225 §3).
// Casts: UDP_EDNS_MAX is a u16-sized constant.
#[allow(clippy::cast_possible_truncation)]
fn opt(out: &mut Vec<u8>, rcode: Rcode, dnssec_ok: bool) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&(UDP_EDNS_MAX as u16).to_be_bytes());
    let ext = u32::from(rcode.code() >> 4) << 24;
    let ttl = ext | if dnssec_ok { flags::DO } else { 0 };
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Rewrites a message's ID in place (forwarding to an upstream resolver and back).
pub fn set_id(msg: &mut [u8], id: u16) -> bool {
    match msg.get_mut(0..2) {
        Some(b) => {
            b.copy_from_slice(&id.to_be_bytes());
            true
        }
        None => false,
    }
}

/// A message's ID and whether it is a response.
pub fn id_of(msg: &[u8]) -> Option<(u16, bool)> {
    let b = msg.get(0..4)?;
    Some((u16::from_be_bytes([b[0], b[1]]), b[2] & 0x80 != 0))
}

// ---- the client side, for tests and the simulation's tasks -----------------------------------

/// A query for `name` of type `qtype` (RD set), with an EDNS record of `edns` bytes if given.
// Casts: a label length capped at 63 there.
#[allow(clippy::cast_possible_truncation)]
pub fn build_query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, id, flags::RD, 1, 0, u16::from(edns.is_some()));
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    out
}

/// What a client reads from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub id: u16,
    pub rcode: u16,
    pub aa: bool,
    pub tc: bool,
    pub ra: bool,
    /// The A records' addresses and TTLs, in order.
    pub a: Vec<(Ipv4Addr, u32)>,
    /// The AAAA records' addresses and TTLs, in order.
    pub aaaa: Vec<(Ipv6Addr, u32)>,
    /// Answer records of other types.
    pub other: usize,
    pub edns: bool,
}

/// Parses an answer (the resolver's or an upstream's); `None` when malformed.
pub fn parse_answer(msg: &[u8]) -> Option<Parsed> {
    let mut r = Reader { msg, at: 0 };
    let id = r.u16()?;
    let fl = r.u16()?;
    let (qd, an, ns, ar) = (r.u16()?, r.u16()?, r.u16()?, r.u16()?);
    if fl & flags::QR == 0 {
        return None;
    }
    for _ in 0..qd {
        r.skip_name()?;
        r.skip(4)?;
    }
    let mut out = Parsed {
        id,
        rcode: fl & 0xf,
        aa: fl & flags::AA != 0,
        tc: fl & flags::TC != 0,
        ra: fl & flags::RA != 0,
        a: Vec::new(),
        aaaa: Vec::new(),
        other: 0,
        edns: false,
    };
    for i in 0..u32::from(an) + u32::from(ns) + u32::from(ar) {
        r.skip_name()?;
        let (rtype, _class, ttl, rdlen) = (r.u16()?, r.u16()?, r.u32()?, r.u16()?);
        let data = msg.get(r.at..r.at + usize::from(rdlen))?;
        r.skip(usize::from(rdlen))?;
        if i < u32::from(an) {
            match (rtype, data) {
                (TYPE_A, [a, b, c, d]) => out.a.push((Ipv4Addr::new(*a, *b, *c, *d), ttl)),
                (TYPE_AAAA, data) => match <[u8; 16]>::try_from(data) {
                    Ok(b) => out.aaaa.push((Ipv6Addr::from(b), ttl)),
                    Err(_) => out.other += 1,
                },
                _ => out.other += 1,
            }
        } else if rtype == TYPE_OPT {
            out.edns = true;
            out.rcode |= ((ttl >> 24) as u16) << 4;
        }
    }
    (r.at == msg.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(rcode: Rcode, limit: usize) -> AnswerSpec {
        AnswerSpec {
            rcode,
            aa: true,
            ra: false,
            limit,
        }
    }

    #[test]
    fn a_query_from_dig_parses() {
        // `dig @10.0.1.1 tasks.web` (BIND 9.18): RD, AD, EDNS 1232 with a cookie option.
        let msg: &[u8] = &[
            0x3b, 0x1a, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // header
            0x05, b't', b'a', b's', b'k', b's', 0x03, b'w', b'e', b'b', 0x00, 0x00, 0x01, 0x00,
            0x01, // question
            0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, // OPT, rdlen 12
            0x00, 0x0a, 0x00, 0x08, 0x11, 0x22, // COOKIE option (cut short below)
        ];
        // The option is 12 bytes long; the sample above only carries 6 of them.
        assert_eq!(
            parse_query(msg),
            Err(Malformed::Answer {
                id: 0x3b1a,
                opcode: 0,
                rd: true,
                rcode: Rcode::FormErr
            })
        );
        let mut full = msg.to_vec();
        full.extend_from_slice(&[0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        let q = parse_query(&full).unwrap();
        assert_eq!(
            (q.id, q.rd, q.name.as_str(), q.plain, q.qtype, q.qclass),
            (0x3b1a, true, "tasks.web", true, TYPE_A, CLASS_IN)
        );
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 1232,
                version: 0,
                dnssec_ok: false
            })
        );
        assert_eq!(q.udp_limit(), 1232);
        assert_eq!(q.question, &full[12..27]);
    }

    #[test]
    fn answers_have_the_documented_bytes() {
        let msg = build_query(0x1234, "Web", TYPE_A, None);
        let q = parse_query(&msg).unwrap();
        assert_eq!(q.name, "web");
        let a = build_answer(
            &q,
            &[Answer {
                addr: Ipv4Addr::new(10, 0, 1, 2).into(),
                ttl: 600,
            }],
            spec(Rcode::NoError, 512),
        );
        assert_eq!(
            a,
            [
                0x12, 0x34, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0,
                0, // id, QR AA RD, 1 question, 1 answer
                3, b'W', b'e', b'b', 0, 0, 1, 0, 1, // the question as sent, case kept
                0xc0, 12, 0, 1, 0, 1, 0, 0, 0x02, 0x58, 0, 4, 10, 0, 1,
                2, // web A 600 10.0.1.2
            ]
        );
        let p = parse_answer(&a).unwrap();
        assert_eq!(p.a, vec![(Ipv4Addr::new(10, 0, 1, 2), 600)]);
        assert!(p.aaaa.is_empty());
        assert!(p.aa && !p.tc && !p.edns);
    }

    #[test]
    fn aaaa_answers_have_the_documented_bytes() {
        let msg = build_query(0x1234, "web", TYPE_AAAA, None);
        let q = parse_query(&msg).unwrap();
        let twin: Ipv6Addr = "fd00:5::a00:502".parse().unwrap();
        let a = build_answer(
            &q,
            &[Answer {
                addr: twin.into(),
                ttl: 600,
            }],
            spec(Rcode::NoError, 512),
        );
        assert_eq!(
            a,
            [
                0x12, 0x34, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0,
                0, // id, QR AA RD, 1 question, 1 answer
                3, b'w', b'e', b'b', 0, 0, 28, 0, 1, // web AAAA IN
                0xc0, 12, 0, 28, 0, 1, 0, 0, 0x02, 0x58, 0, 16, // web AAAA IN 600, 16 bytes:
                0xfd, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 5,
                2, // fd00:5::a00:502
            ]
        );
        let p = parse_answer(&a).unwrap();
        assert_eq!(p.aaaa, vec![(twin, 600)]);
        assert!(p.a.is_empty() && p.other == 0);
        // Both families in one answer (ANY), each record by its address: A then AAAA.
        let msg = build_query(1, "web", TYPE_ANY, None);
        let q = parse_query(&msg).unwrap();
        let both = [
            Answer {
                addr: Ipv4Addr::new(10, 0, 5, 2).into(),
                ttl: 600,
            },
            Answer {
                addr: twin.into(),
                ttl: 600,
            },
        ];
        let a = build_answer(&q, &both, spec(Rcode::NoError, 512));
        assert_eq!(a.len(), 12 + 9 + 16 + 28);
        let p = parse_answer(&a).unwrap();
        assert_eq!(
            (p.a, p.aaaa),
            (vec![(Ipv4Addr::new(10, 0, 5, 2), 600)], vec![(twin, 600)])
        );
        // An AAAA record whose data is not 16 bytes is not an address.
        let mut bad = build_answer(&q, &both[1..], spec(Rcode::NoError, 512));
        let n = bad.len();
        bad[n - 17] = 15;
        bad.pop();
        let p = parse_answer(&bad).unwrap();
        assert_eq!((p.aaaa.len(), p.other), (0, 1));
    }

    #[test]
    fn answers_that_do_not_fit_are_truncated() {
        let msg = build_query(7, "tasks.web", TYPE_A, None);
        let q = parse_query(&msg).unwrap();
        let many: Vec<Answer> = (0..40)
            .map(|i| Answer {
                addr: Ipv4Addr::new(10, 0, 1, i).into(),
                ttl: 0,
            })
            .collect();
        let a = build_answer(&q, &many, spec(Rcode::NoError, q.udp_limit()));
        let p = parse_answer(&a).unwrap();
        assert!(p.tc && p.a.is_empty(), "{p:?}");
        assert!(a.len() <= 512);
        // Over TCP (64 KiB) they all fit; with EDNS 1232 bytes 40 fit in UDP too.
        let p = parse_answer(&build_answer(&q, &many, spec(Rcode::NoError, 65535))).unwrap();
        assert_eq!(p.a.len(), 40);
        let msg = build_query(7, "tasks.web", TYPE_A, Some(4096));
        let q = parse_query(&msg).unwrap();
        assert_eq!(q.udp_limit(), UDP_EDNS_MAX);
        let p = parse_answer(&build_answer(
            &q,
            &many,
            spec(Rcode::NoError, q.udp_limit()),
        ))
        .unwrap();
        assert_eq!((p.a.len(), p.tc, p.edns), (40, false, true));
    }

    /// AAAA records take 28 bytes, not 16: in 512 bytes, after the header and the question of
    /// `tasks.web` (27 bytes), 30 A records fit but only 17 AAAA ones.
    #[test]
    fn aaaa_answers_that_do_not_fit_are_truncated_by_their_own_size() {
        let msg = build_query(7, "tasks.web", TYPE_AAAA, None);
        let q = parse_query(&msg).unwrap();
        let v4 = |n: u8| -> Vec<Answer> {
            (0..n)
                .map(|i| Answer {
                    addr: Ipv4Addr::new(10, 0, 1, i).into(),
                    ttl: 0,
                })
                .collect()
        };
        let v6 = |n: u16| -> Vec<Answer> {
            (0..n)
                .map(|i| Answer {
                    addr: Ipv6Addr::new(0xfd00, 5, 0, 0, 0, 0, 0x0a00, 0x0100 + i).into(),
                    ttl: 0,
                })
                .collect()
        };
        let udp = |answers: &[Answer]| {
            let a = build_answer(&q, answers, spec(Rcode::NoError, q.udp_limit()));
            assert!(a.len() <= UDP_PLAIN_MAX, "{}", a.len());
            parse_answer(&a).unwrap()
        };
        assert_eq!((udp(&v4(30)).a.len(), udp(&v4(30)).tc), (30, false));
        assert!(udp(&v4(31)).tc);
        let p = udp(&v6(17));
        assert_eq!((p.aaaa.len(), p.tc), (17, false));
        let p = udp(&v6(18));
        assert!(p.tc && p.aaaa.is_empty() && p.a.is_empty(), "{p:?}");
        // Mixed (ANY): 10 A and 11 AAAA are 160 + 308 bytes, fitting; one AAAA more does not.
        let mixed = |n6| -> Vec<Answer> { v4(10).into_iter().chain(v6(n6)).collect() };
        let p = udp(&mixed(11));
        assert_eq!((p.a.len(), p.aaaa.len(), p.tc), (10, 11, false));
        assert!(udp(&mixed(12)).tc);
        // Over TCP all fit.
        let a = build_answer(&q, &v6(40), spec(Rcode::NoError, 65535));
        assert_eq!(parse_answer(&a).unwrap().aaaa.len(), 40);
    }

    #[test]
    fn every_malformation_is_dropped_or_answered() {
        let good = build_query(9, "web", TYPE_A, Some(1232));
        assert!(parse_query(&good).is_ok());
        assert_eq!(
            parse_query(&good[..11]),
            Err(Malformed::Drop(DropWhy::TooShort))
        );
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(Malformed::Drop(DropWhy::NotAQuery)));
        let formerr = Err(Malformed::Answer {
            id: 9,
            opcode: 0,
            rd: true,
            rcode: Rcode::FormErr,
        });
        let mut m = good.clone();
        m[2] |= 2 << 3; // opcode STATUS
        assert_eq!(
            parse_query(&m),
            Err(Malformed::Answer {
                id: 9,
                opcode: 2,
                rd: true,
                rcode: Rcode::NotImp
            })
        );
        let mut m = good.clone();
        m[5] = 2; // two questions
        assert_eq!(parse_query(&m), formerr);
        let mut m = good.clone();
        m[7] = 1; // an answer in a query
        assert_eq!(parse_query(&m), formerr);
        let mut m = good.clone();
        m[12] = 0xc0; // a pointer in the question
        assert_eq!(parse_query(&m), formerr);
        let mut m = good.clone();
        m[12] = 0x40; // an extended label type
        assert_eq!(parse_query(&m), formerr);
        let mut m = good.clone();
        m[12] = 60; // a label running past the end
        assert_eq!(parse_query(&m), formerr);
        assert_eq!(
            parse_query(&good[..good.len() - 1]),
            formerr,
            "a cut OPT record"
        );
        let mut m = good.clone();
        m.push(0);
        assert_eq!(parse_query(&m), formerr, "trailing bytes");
        let mut m = good.clone();
        m[11] = 2;
        m.extend_from_slice(&good[good.len() - 11..]);
        assert_eq!(parse_query(&m), formerr, "two OPT records");
        // A name longer than 255 bytes.
        let long = (0..5).map(|_| "a".repeat(63)).collect::<Vec<_>>().join(".");
        assert_eq!(
            parse_query(&build_query(9, &long, TYPE_A, None)).map(|_| ()),
            Err(Malformed::Answer {
                id: 9,
                opcode: 0,
                rd: true,
                rcode: Rcode::FormErr
            })
        );
        let e = build_error(9, 0, true, Rcode::FormErr);
        let p = parse_answer(&e).unwrap();
        assert_eq!((p.id, p.rcode), (9, 1));
    }

    #[test]
    fn odd_names_never_match_plain_ones() {
        let mut m = build_query(1, "web", TYPE_A, None);
        m[13] = b'.';
        let q = parse_query(&m).unwrap();
        assert!(!q.plain);
        assert_eq!(q.name, "\\046eb");
        let msg = build_query(1, ".", TYPE_A, None);
        let root = parse_query(&msg).unwrap();
        assert_eq!((root.name.as_str(), root.plain), ("", true));
    }

    #[test]
    fn edns_versions_and_the_do_bit() {
        let mut m = build_query(3, "web", TYPE_A, Some(100));
        let q = parse_query(&m).unwrap();
        assert_eq!(q.udp_limit(), 512, "sizes under 512 count as 512");
        let n = m.len();
        m[n - 5] = 1; // version 1
        m[n - 4] = 0x80; // DO
        let q = parse_query(&m).unwrap();
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 512,
                version: 1,
                dnssec_ok: true
            })
        );
        let a = build_answer(&q, &[], spec(Rcode::BadVers, 512));
        let p = parse_answer(&a).unwrap();
        assert_eq!(p.rcode, 16);
        // DO copied into the OPT TTL.
        assert_eq!(a[a.len() - 4] & 0x80, 0x80);
    }

    #[test]
    fn ids_are_read_and_rewritten() {
        let mut m = build_query(0xabcd, "web", TYPE_A, None);
        assert_eq!(id_of(&m), Some((0xabcd, false)));
        assert!(set_id(&mut m, 7));
        assert_eq!(id_of(&m), Some((7, false)));
        assert!(!set_id(&mut [0u8], 1));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_query(&bytes);
            let _ = parse_answer(&bytes);
            let _ = id_of(&bytes);
        }

        /// A valid header and question followed by noise: parsed or refused, never a panic, and
        /// whatever parsed can be answered and the answer parses back.
        #[test]
        fn noise_after_a_valid_start_is_handled(name in "[a-z0-9-]{1,20}(\\.[a-z0-9_]{1,10}){0,3}", tail in proptest::collection::vec(any::<u8>(), 0..64), ar in 0u8..3) {
            let mut m = build_query(5, &name, TYPE_A, None);
            m[11] = ar;
            m.extend_from_slice(&tail);
            if let Ok(q) = parse_query(&m) {
                let answers = [
                    Answer { addr: Ipv4Addr::new(10, 0, 0, 1).into(), ttl: 1 },
                    Answer { addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x0a00, 1).into(), ttl: 1 },
                ];
                let a = build_answer(&q, &answers, AnswerSpec { rcode: Rcode::NoError, aa: true, ra: true, limit: 512 });
                prop_assert!(parse_answer(&a).is_some());
            }
        }

        /// Build a query, parse it: the same name, type and EDNS size; answer it: the same
        /// addresses come back.
        #[test]
        fn queries_and_answers_round_trip(
            id in any::<u16>(),
            name in "[A-Za-z0-9_-]{1,30}(\\.[A-Za-z0-9_-]{1,30}){0,4}",
            qtype in prop::sample::select(vec![TYPE_A, TYPE_AAAA, TYPE_ANY, 16u16]),
            edns in proptest::option::of(512u16..9000),
            addrs in proptest::collection::vec(any::<u32>(), 0..20),
            addrs6 in proptest::collection::vec(any::<u128>(), 0..20),
        ) {
            let m = build_query(id, &name, qtype, edns);
            let q = parse_query(&m).unwrap();
            prop_assert_eq!(&q.name, &name.to_ascii_lowercase());
            prop_assert!(q.plain);
            prop_assert_eq!(q.qtype, qtype);
            prop_assert_eq!(q.edns.map(|e| e.udp_size), edns);
            let answers: Vec<Answer> = addrs
                .iter()
                .map(|a| Answer { addr: Ipv4Addr::from(*a).into(), ttl: 5 })
                .chain(addrs6.iter().map(|a| Answer { addr: Ipv6Addr::from(*a).into(), ttl: 6 }))
                .collect();
            let a = build_answer(&q, &answers, AnswerSpec { rcode: Rcode::NoError, aa: true, ra: false, limit: 65535 });
            let p = parse_answer(&a).unwrap();
            prop_assert_eq!(p.id, id);
            prop_assert_eq!(p.a, addrs.iter().map(|a| (Ipv4Addr::from(*a), 5)).collect::<Vec<_>>());
            prop_assert_eq!(p.aaaa, addrs6.iter().map(|a| (Ipv6Addr::from(*a), 6)).collect::<Vec<_>>());
            prop_assert_eq!(p.other, 0);
            prop_assert_eq!(p.edns, edns.is_some());
        }
    }
}
