//! What the fuzz targets (`fuzz/`) run, one function per target, so a crash they find replays
//! as a plain test (`dataplane/tests/fuzz_regressions.rs` runs every file kept under
//! `fuzz/regressions/<target>/` and every seed through the same function). Built with the
//! `testkit` feature; built with `--cfg fuzzing` (as cargo-fuzz does), the checksums are not
//! checked ([`crate::wire::checksum::verify`]), as smoltcp's fuzz targets do, so the fuzzer
//! reaches what lies behind them.
//!
//! Each function must return for any input: a panic, an overflow or an endless loop is a bug.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::balance::table::ServiceTable;
use crate::buf::{PacketBuf, Pool, PortId};
use crate::neigh::Neighbors;
use crate::overlay::seal::{NetKeys, Sealer};
use crate::pipeline::{Config, Pipeline, Verdicts};
use crate::port::Burst;
use crate::testkit;

/// The fuzz targets, by name (the `fuzz/fuzz_targets/<name>.rs` files and the regression
/// folders).
pub const TARGETS: &[&str] = &["pipeline", "dns", "gossip", "control", "state"];

/// Runs `target`'s function on `data`. Unknown names do nothing.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "pipeline" => pipeline(data),
        "dns" => dns(data),
        "gossip" => gossip(data),
        "control" => control(data),
        "state" => state(data),
        _ => {}
    }
}

/// The layout every pipeline input runs on: `three_nodes` with web.1 (on n2) on VLAN 101,
/// appnet dual-stack; `sealed`, with appnet encrypted under [`SEAL_KEY`].
fn layout(sealed: bool) -> ctl::State {
    let mut s = testkit::three_nodes();
    s.services[0].tasks[0].vlan = Some(101);
    // Every node has an IPv6 address (fd00::11, ::12, ::13): IPv6 reaches the parser.
    for (n, last) in s.nodes.iter_mut().zip([0x11u16, 0x12, 0x13]) {
        n.addr6 = Some(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last));
    }
    // appnet is dual-stack: tasks' IPv6 reaches the translation both ways.
    s.networks[1].subnet6 = Some(dual_prefix());
    if sealed {
        s.networks[1].encryption = Some(ctl::Encryption::single(1, ctl::Secret(SEAL_KEY)));
    }
    s
}

/// appnet's IPv6 prefix in [`layout`].
fn dual_prefix() -> ctl::model::Ipv6Net {
    ctl::model::Ipv6Net {
        addr: std::net::Ipv6Addr::new(0xfd00, 0x10, 1, 0, 0, 0, 0, 0),
        prefix: 64,
    }
}

const SEAL_KEY: [u8; 32] = [0x5e; 32];

/// Peers' and web.1's MACs, as the pipeline would have learned them.
const PEER_MACS: [(Ipv4Addr, [u8; 6]); 3] = [
    (Ipv4Addr::new(192, 168, 1, 11), [2, 0, 0, 0, 0, 0x11]),
    (Ipv4Addr::new(192, 168, 1, 12), [2, 0, 0, 0, 0, 0x12]),
    (Ipv4Addr::new(192, 168, 1, 13), [2, 0, 0, 0, 0, 0x13]),
];
const WEB1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x21];

/// One record of a pipeline input: `[control][length: 2 bytes, big-endian][frame]`. Control
/// bit 0: the tasks port (else the uplink); bit 1: the frame is an inner frame, sent inside a
/// valid VXLAN envelope from peer n1 (bit 2: on appnet's VNI, else ingress's; when appnet is
/// encrypted, sealed with its key, so the fuzzer gets past the seal); bits 3-7: the VLAN it
/// comes in on (0-31; web.1's is 101 − 96 = 5 → bits `00101`, so 96 is added to a non-zero
/// value).
fn records(data: &[u8], keys: Option<&NetKeys>) -> Vec<(PortId, u16, Vec<u8>)> {
    let mut sealer = Sealer::with_prefix([0x17; 16]);
    let mut out = Vec::new();
    let mut at = 1;
    while out.len() < crate::port::BURST {
        let Some(&[ctl, hi, lo]) = data.get(at..at + 3) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo])).min(1600);
        let Some(frame) = data.get(at + 3..(at + 3 + len).min(data.len())) else {
            break;
        };
        at += 3 + frame.len();
        let port = if ctl & 1 != 0 {
            PortId::Tasks
        } else {
            PortId::Uplink
        };
        let vlan = match u16::from(ctl >> 3) {
            0 => 0,
            v => v + 96,
        };
        let frame = if let (true, true, Some(keys)) = (ctl & 2 != 0, ctl & 4 != 0, keys) {
            let Some(f) = testkit::sealed_vxlan_frame(
                &mut sealer,
                keys,
                PEER_MACS[0].1,
                Config::default().uplink_mac,
                PEER_MACS[0].0,
                PEER_MACS[1].0,
                4097,
                frame,
            ) else {
                continue;
            };
            f
        } else if ctl & 2 != 0 {
            let vni = if ctl & 4 != 0 { 4097 } else { ctl::INGRESS_VNI };
            testkit::vxlan_frame(
                PEER_MACS[0].1,
                Config::default().uplink_mac,
                PEER_MACS[0].0,
                PEER_MACS[1].0,
                50000,
                vni,
                frame,
            )
        } else {
            frame.to_vec()
        };
        out.push((port, vlan, frame));
    }
    out
}

/// Frames through a node's pipeline: byte 0 picks the node (bit 0: n2, which runs web.1,
/// else n1; bit 1: two workers; bit 2: appnet encrypted), then up to a burst of [`records`]. The burst runs, the
/// housekeeping runs, and the same burst runs again 11 s later (past the half-open timeout),
/// so the fuzzer reaches both new and existing flows.
pub fn pipeline(data: &[u8]) {
    let Some(&first) = data.first() else { return };
    let node = if first & 1 != 0 { "n2" } else { "n1" };
    let workers: u16 = if first & 2 != 0 { 2 } else { 1 };
    let Ok(table) = ServiceTable::build(&layout(first & 4 != 0), node, 1) else {
        return;
    };
    let neigh = Arc::new(Neighbors::new(64));
    for (ip, mac) in PEER_MACS {
        neigh.learn(u32::from(ip), mac);
    }
    neigh.learn(u32::from(Ipv4Addr::new(10, 0, 0, 11)), WEB1_MAC);
    neigh.learn(u32::from(Ipv4Addr::new(10, 0, 1, 11)), WEB1_MAC);
    let cfg = Config {
        flow_capacity: 256,
        workers,
        ..Config::default()
    };
    let mut p = Pipeline::new(cfg, neigh);
    let mut pool = Pool::new(64);
    let frames = records(data, table.networks.get(1).and_then(|n| n.keys.as_ref()));
    let mut verdicts = Verdicts::new();
    for now in [1_000u64, 12_000] {
        let mut burst = Burst::new();
        for (port, vlan, f) in &frames {
            let mut b = PacketBuf::from_frame(*port, f);
            b.vlan = *vlan;
            burst.push(b);
        }
        p.process(&table, now, &mut burst, &mut verdicts);
        for b in burst.iter_mut() {
            // What the worker does before sending.
            let _ = b.tag();
        }
        let _ = p.take_extra();
        let mut out = Burst::new();
        p.maintain(&table, now + 500, &mut pool, &mut out);
    }
}

/// A DNS query as the embedded resolver gets it; a parsed one is answered.
pub fn dns(data: &[u8]) {
    use crate::host::dns;
    if let Ok(q) = dns::parse_query(data) {
        let _ = dns::build_error(q.id, 0, q.rd, dns::Rcode::NxDomain);
    }
    let _ = dns::parse_answer(data);
    let _ = dns::id_of(data);
}

/// A health-gossip datagram; a decoded one is encoded again and must decode the same.
pub fn gossip(data: &[u8]) {
    use crate::host::gossip;
    if let Some(m) = gossip::decode(data) {
        for d in gossip::encode(&m.node, &m.entries) {
            assert!(
                gossip::decode(&d).is_some(),
                "an encoded message does not decode"
            );
        }
    }
}

/// A control-socket request line; a parsed one is answered or applied to the example state
/// (validation included), as the daemon's control thread does.
pub fn control(data: &[u8]) {
    let Ok(req) = ctl::proto::parse_request(data) else {
        return;
    };
    let state = layout(false);
    if let Ok(Some(next)) = ctl::apply::apply(&state, &req.command) {
        let _ = ServiceTable::build(&next, "n1", 1);
    }
    let _ = ctl::apply::answer(&state, &req.command);
}

/// A state file as meshd reads it at start; a valid one is compiled into every node's table.
pub fn state(data: &[u8]) {
    let Ok(p) = serde_json::from_slice::<crate::control::Persisted>(data) else {
        return;
    };
    if ctl::validate::validate(&p.state).is_err() {
        return;
    }
    for n in &p.state.nodes {
        let _ = ServiceTable::build(&p.state, &n.name, 1);
    }
}

/// Inputs to start each target from (its seed corpus): valid ones of every kind it takes.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "pipeline" => pipeline_seeds(),
        "dns" => ["web", "tasks.web", "web.1.abc", "nothing.example"]
            .iter()
            .map(|n| crate::host::dns::build_query(7, n, 1, Some(1232)))
            .collect(),
        "gossip" => {
            let e = crate::host::gossip::Entry {
                uid: 42,
                health: ctl::model::Health::Unhealthy,
                streak: 3,
                age_ms: 1500,
                error: "connection refused".into(),
            };
            crate::host::gossip::encode("n2", &[e])
        }
        "control" => [
            r#"{"version":1,"command":"service-ls"}"#.to_string(),
            r#"{"version":1,"command":"service-scale","name":"web","replicas":1}"#.to_string(),
            ctl::proto::Request::new(ctl::proto::Command::Change(
                ctl::proto::Change::ServiceCreate {
                    service: layout(false).services[0].clone(),
                },
            ))
            .to_line()
            .unwrap_or_default(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect(),
        "state" => vec![serde_json::to_vec(&crate::control::Persisted {
            generation: 3,
            state: layout(false),
            revision: 0,
        })
        .unwrap_or_default()],
        _ => Vec::new(),
    }
}

fn record(port_tasks: bool, vxlan: bool, vlan: u16, frame: &[u8]) -> Vec<u8> {
    let v = if vlan == 0 { 0 } else { vlan - 96 };
    // Casts: frames here are short test frames; v < 32.
    #[allow(clippy::cast_possible_truncation)]
    let ctl = u8::from(port_tasks) | (u8::from(vxlan) << 1) | ((v as u8) << 3);
    let mut r = vec![ctl];
    #[allow(clippy::cast_possible_truncation)]
    r.extend_from_slice(&(frame.len() as u16).to_be_bytes());
    r.extend_from_slice(frame);
    r
}

fn pipeline_seeds() -> Vec<Vec<u8>> {
    use testkit::tcp_flags::{ACK, SYN};
    let up = Config::default().uplink_mac;
    let tk = Config::default().tasks_mac;
    let client = Ipv4Addr::new(10, 9, 0, 9);
    let cmac = [2, 0, 0, 0, 0, 0x99];
    let syn =
        |dst: Ipv4Addr| testkit::tcp_frame(cmac, up, client, 40000, dst, 8080, SYN, 1, 0, b"");
    let web1 = Ipv4Addr::new(10, 0, 1, 11);
    let inner = testkit::tcp_frame(
        [2; 6],
        tk,
        Ipv4Addr::new(10, 0, 0, 2),
        1024,
        Ipv4Addr::new(10, 0, 0, 11),
        80,
        SYN,
        1,
        0,
        b"",
    );
    let to_vip = testkit::tcp_frame(
        WEB1_MAC,
        tk,
        web1,
        5000,
        Ipv4Addr::new(10, 0, 1, 2),
        80,
        SYN,
        1,
        0,
        b"",
    );
    let reply = testkit::tcp_frame(
        WEB1_MAC,
        tk,
        Ipv4Addr::new(10, 0, 0, 11),
        80,
        Ipv4Addr::new(10, 0, 0, 2),
        1024,
        SYN | ACK,
        9,
        2,
        b"",
    );
    let big = testkit::udp_frame(
        cmac,
        up,
        client,
        5000,
        Ipv4Addr::new(192, 168, 1, 11),
        8080,
        &[1; 2000],
    );
    let mut frags: Vec<u8> = vec![0];
    for f in testkit::fragment(&big, 1400, 9) {
        frags.extend(record(false, false, 0, &f));
    }
    let arp = testkit::arp_request(WEB1_MAC, web1, Ipv4Addr::new(10, 0, 1, 1));
    // IPv6 to n1 (fd00::11): a solicitation, a SYN, and a SYN behind two extension headers.
    let (c6, n1_6) = (
        std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99),
        std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x11),
    );
    let ns = testkit::neighbor_solicit(cmac, c6, n1_6);
    let syn6 = testkit::tcp6_frame(cmac, up, c6, 40000, n1_6, 8080, SYN, 1);
    let mut chained = syn6.clone();
    chained[14 + 6] = 0;
    let ext = [60u8, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
    chained.splice(14 + 40..14 + 40, ext);
    chained[14 + 5] += 16;
    // A 2,000-byte UDP datagram in IPv6 pieces (they take the fragment path as IPv4's do).
    let big6 = testkit::ipv6_with(
        cmac,
        up,
        c6,
        n1_6,
        64,
        smoltcp::wire::IpProtocol::Udp,
        2008,
        |b| {
            b[..8].copy_from_slice(&[0x13, 0x88, 0x1f, 0x90, 0x07, 0xd8, 0, 1]);
            b[8..].fill(1);
        },
    );
    let pieces6: Vec<Vec<u8>> = testkit::fragment6(&big6, 1400, 9)
        .iter()
        .map(|f| record(false, false, 0, f))
        .collect();
    let on = |node: u8, recs: Vec<Vec<u8>>| {
        let mut v = vec![node];
        for r in recs {
            v.extend(r);
        }
        v
    };
    vec![
        on(0, pieces6),
        on(
            0,
            vec![
                record(false, false, 0, &ns),
                record(false, false, 0, &syn6),
                record(false, false, 0, &chained),
            ],
        ),
        on(
            0,
            vec![record(
                false,
                false,
                0,
                &syn(Ipv4Addr::new(192, 168, 1, 11)),
            )],
        ),
        on(
            1,
            vec![
                record(false, true, 0, &inner),
                record(true, false, 101, &reply),
            ],
        ),
        on(
            1,
            vec![
                record(true, false, 101, &arp),
                record(true, false, 101, &to_vip),
            ],
        ),
        on(
            3,
            vec![record(
                false,
                false,
                0,
                &syn(Ipv4Addr::new(192, 168, 1, 12)),
            )],
        ),
        frags,
        // n2, appnet dual-stack: web.1 asks for the VIP's twin and opens a connection to it
        // over IPv6; a task on n1 reaches web.1's twin inside VXLAN.
        on(1, {
            let p = dual_prefix();
            let (vip6, gw6) = (
                p.embed(Ipv4Addr::new(10, 0, 1, 2)),
                p.embed(Ipv4Addr::new(10, 0, 1, 1)),
            );
            let web1_6 = p.embed(web1);
            let far6 = p.embed(Ipv4Addr::new(10, 0, 1, 50));
            let ns = testkit::neighbor_solicit(WEB1_MAC, web1_6, gw6);
            let syn6 = testkit::tcp6_frame(WEB1_MAC, tk, web1_6, 5002, vip6, 80, SYN, 1);
            let inner6 = testkit::tcp6_frame([2; 6], tk, far6, 5003, web1_6, 80, SYN, 1);
            let mut r = record(false, true, 0, &inner6);
            r[0] |= 4;
            // web.1's port unreachable about a datagram from the task on n1 (ICMPv6 errors
            // are translated with their quote), and the same error from n1's task inside VXLAN.
            let udp6 = testkit::ipv6_with(
                [2; 6],
                tk,
                far6,
                web1_6,
                63,
                smoltcp::wire::IpProtocol::Udp,
                12,
                |b| {
                    b[..2].copy_from_slice(&5004u16.to_be_bytes());
                    b[2..4].copy_from_slice(&9u16.to_be_bytes());
                    b[4..6].copy_from_slice(&12u16.to_be_bytes());
                },
            );
            let unreachable = |mac, from, to| {
                testkit::icmpv6_frame(
                    mac,
                    tk,
                    from,
                    to,
                    64,
                    &smoltcp::wire::Icmpv6Repr::DstUnreachable {
                        reason: smoltcp::wire::Icmpv6DstUnreachable::PortUnreachable,
                        header: smoltcp::wire::Ipv6Repr {
                            src_addr: to,
                            dst_addr: from,
                            next_header: smoltcp::wire::IpProtocol::Udp,
                            payload_len: 12,
                            hop_limit: 63,
                        },
                        data: &udp6[54..],
                    },
                )
            };
            let err6 = unreachable(WEB1_MAC, web1_6, far6);
            let mut e = record(false, true, 0, &unreachable([2; 6], far6, web1_6));
            e[0] |= 4;
            vec![
                record(true, false, 101, &ns),
                record(true, false, 101, &syn6),
                r,
                record(true, false, 101, &err6),
                e,
            ]
        }),
        // n2, appnet dual-stack: web.1's UDP datagram to the VIP's twin in IPv6 pieces (the
        // later ones first, held), and a datagram of n1's task to web.1 in pieces inside VXLAN.
        on(1, {
            let p = dual_prefix();
            let vip6 = p.embed(Ipv4Addr::new(10, 0, 1, 2));
            let (web1_6, far6) = (p.embed(web1), p.embed(Ipv4Addr::new(10, 0, 1, 50)));
            let udp = |mac, src, dst| {
                testkit::ipv6_with(
                    mac,
                    tk,
                    src,
                    dst,
                    64,
                    smoltcp::wire::IpProtocol::Udp,
                    3000,
                    {
                        |b: &mut [u8]| {
                            b[..2].copy_from_slice(&5005u16.to_be_bytes());
                            b[2..4].copy_from_slice(&80u16.to_be_bytes());
                            b[4..6].copy_from_slice(&3000u16.to_be_bytes());
                            b[6] = 0x5a;
                        }
                    },
                )
            };
            let mut out: Vec<_> = testkit::fragment6(&udp(WEB1_MAC, web1_6, vip6), 1450, 9)
                .iter()
                .rev()
                .map(|f| record(true, false, 101, f))
                .collect();
            for f in testkit::fragment6(&udp([2; 6], far6, web1_6), 1450, 10) {
                let mut r = record(false, true, 0, &f);
                r[0] |= 4;
                out.push(r);
            }
            out
        }),
        // n2 with appnet encrypted: a sealed SYN from a task on n1 to web.1's appnet address.
        on(5, {
            let to_web1 = testkit::tcp_frame(
                [2; 6],
                tk,
                Ipv4Addr::new(10, 0, 1, 50),
                5001,
                web1,
                80,
                SYN,
                1,
                0,
                b"",
            );
            let mut r = record(false, true, 0, &to_web1);
            r[0] |= 4;
            vec![r]
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_record_opens_on_the_encrypted_layout() {
        let table = ServiceTable::build(&layout(true), "n2", 1).unwrap();
        let keys = table.networks[1].keys.as_ref();
        assert!(keys.is_some());
        let seed = pipeline_seeds().pop().unwrap();
        let recs = records(&seed, keys);
        assert_eq!(recs.len(), 1);
        let neigh = Arc::new(Neighbors::new(64));
        for (ip, mac) in PEER_MACS {
            neigh.learn(u32::from(ip), mac);
        }
        let mut p = Pipeline::new(Config::default(), neigh);
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(recs[0].0, &recs[0].2));
        let mut v = Verdicts::new();
        p.process(&table, 1, &mut burst, &mut v);
        // Opened and routed to web.1 (whose MAC is not known here: asked by ARP).
        assert_eq!(
            v[0],
            crate::pipeline::Verdict::Drop(crate::stats::DropReason::NoNeighbor),
            "{:?}",
            p.stats
        );
    }
}
