//! The pipeline's unit tests.
#![allow(clippy::cast_possible_truncation)] // test values are small and known

use super::*;
use crate::balance::table::tests::three_nodes;
use crate::nat::be16;
use proptest::prelude::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Ipv4Packet, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, UdpRepr};

fn ip_udp_frame(src: u32, sport: u16, dst: u32, dport: u16, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let udp = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let ipr = Ipv4Repr {
        src_addr: addr(src),
        dst_addr: addr(dst),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH + IPV4 + 8 + payload.len()];
    f[12..14].copy_from_slice(&[8, 0]);
    ipr.emit(
        &mut Ipv4Packet::new_unchecked(&mut f[ETH..ETH + IPV4]),
        &caps,
    );
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut f[ETH + IPV4..]),
        &addr(src).into(),
        &addr(dst).into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    f
}

fn ip_tcp_frame(src: u32, sport: u16, dst: u32, dport: u16, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control: TcpControl::Psh,
        seq_number: TcpSeqNumber(77),
        ack_number: Some(TcpSeqNumber(99)),
        window_len: 512,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ipr = Ipv4Repr {
        src_addr: addr(src),
        dst_addr: addr(dst),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH + IPV4 + tcp.buffer_len()];
    f[12..14].copy_from_slice(&[8, 0]);
    ipr.emit(
        &mut Ipv4Packet::new_unchecked(&mut f[ETH..ETH + IPV4]),
        &caps,
    );
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut f[ETH + IPV4..]),
        &addr(src).into(),
        &addr(dst).into(),
        &caps,
    );
    f
}

proptest! {
    /// DNAT (and SNAT) then the reverse translation restores the packet, with valid
    /// checksums at every step (RFC 1624 incremental updates).
    #[test]
    fn translate_then_reverse_restores_the_packet(
        tcp in any::<bool>(),
        src in any::<u32>(), sport in 1u16.., dst in any::<u32>(), dport in 1u16..,
        nsrc in any::<u32>(), nsport in 1u16.., ndst in any::<u32>(), ndport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let orig = if tcp { ip_tcp_frame(src, sport, dst, dport, &payload) } else { ip_udp_frame(src, sport, dst, dport, &payload) };
        let mut f = orig.clone();
        let l3 = parse_ipv4(&f, ETH, true).unwrap();
        let key = l3.key();
        let a = Action::new(&key, nsrc, nsport, ndst, ndport, Egress::Tasks);
        nat::rewrite(&mut f, ETH, l3.l4, l3.proto, &a);
        let l3b = parse_ipv4(&f, ETH, true).expect("checksums valid after translation");
        prop_assert_eq!(l3b.key(), a.result_key(key.proto()));
        let back = Action::new(&l3b.key(), src, sport, dst, dport, Egress::Tasks);
        nat::rewrite(&mut f, ETH, l3b.l4, l3b.proto, &back);
        // Restored but for the TTL, which each hop decrements (and the header checksum with it).
        let l3c = parse_ipv4(&f, ETH, true).expect("checksums valid after reversal");
        prop_assert_eq!(l3c.key(), key);
        let mut expect = orig.clone();
        dec_ttl(&mut expect, ETH);
        dec_ttl(&mut expect, ETH);
        prop_assert_eq!(&f[..ETH + 8], &expect[..ETH + 8]);
        prop_assert_eq!(&f[ETH + 12..], &expect[ETH + 12..]);
        prop_assert_eq!(be16(&f, ETH + 10), be16(&expect, ETH + 10));
    }

    /// Any bytes on either port: a verdict, never a panic.
    #[test]
    fn arbitrary_frames_never_panic(frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..32)) {
        let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let mut p = Pipeline::new(Config { flow_capacity: 64, ..Config::default() }, Arc::new(Neighbors::new(64)));
        let mut burst = Burst::new();
        for (up, bytes) in &frames {
            burst.push(PacketBuf::from_frame(if *up { PortId::Uplink } else { PortId::Tasks }, bytes));
        }
        let mut v = Verdicts::new();
        p.process(&table, 1, &mut burst, &mut v);
        prop_assert_eq!(v.len(), frames.len());
        let mut pool = Pool::new(8);
        let mut out = Burst::new();
        p.maintain(&table, 2, &mut pool, &mut out);
    }

    /// Valid Ethernet + IPv4 headers with random everything after, aimed at the node: parsed,
    /// never a panic, always a counted verdict.
    #[test]
    fn random_l4_on_valid_ip_never_panics(proto in prop::sample::select(vec![1u8, 6, 17, 47]), tail in proptest::collection::vec(any::<u8>(), 0..80), up in any::<bool>()) {
        let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
        let mut p = Pipeline::new(Config { flow_capacity: 64, verify_l4_checksums: false, ..Config::default() }, Arc::new(Neighbors::new(64)));
        let mut f = ip_udp_frame(0x0a00_0009, 1, 0xc0a8_010b, 8080, &[]);
        f.truncate(ETH + IPV4);
        f.extend_from_slice(&tail);
        f[0..6].copy_from_slice(if up { &p.cfg.uplink_mac } else { &p.cfg.tasks_mac });
        f[ETH + 9] = proto;
        put16(&mut f, ETH + 2, (IPV4 + tail.len()) as u16);
        put16(&mut f, ETH + 10, 0);
        let c = overlay::ipv4_header_checksum(&f[ETH..ETH + IPV4]);
        put16(&mut f, ETH + 10, c);
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(if up { PortId::Uplink } else { PortId::Tasks }, &f));
        let mut v = Verdicts::new();
        p.process(&table, 1, &mut burst, &mut v);
        prop_assert_eq!(v.len(), 1);
        prop_assert_eq!(p.stats.rx, 1);
    }
}

/// Flows adopted from a meshd before this one hold masquerade ports the fresh allocator would
/// hand out first: a pipeline over them checks every port, and re-points their counters and
/// clocks at its own.
#[test]
fn a_pipeline_over_adopted_flows_never_hands_out_a_port_they_hold() {
    let cfg = Config {
        flow_capacity: 64,
        ..Config::default()
    };
    let neigh = Arc::new(Neighbors::new(64));
    let (ep, task) = (0x0a00_0002, 0x0a00_000b);
    let mut fresh = Pipeline::new(cfg.clone(), neigh.clone());
    let first = fresh
        .masq
        .pick(&fresh.flows, (TCP, false), ep, task, 80, 0)
        .unwrap();
    let k = FlowKey::new(TCP, 0xac10_0001, 40000, 0xc0a8_010b, 8080);
    let r = FlowKey::new(TCP, task, 80, ep, first);
    let held = Flow::new(
        FlowKind::Ingress,
        [k, r],
        [
            Action::keep(&k, Egress::Tasks),
            Action::keep(&r, Egress::Tasks),
        ],
        42,
        9,
        [1, 1, 1],
        123_456,
    );
    let mut flows = FlowTable::new(64);
    let id = flows.insert(held, 123_456).unwrap();
    let mut p = Pipeline::with_flows(cfg, neigh, flows);
    let slot = p.task_stats.slot(42);
    let f = p.flows.get(id);
    assert_eq!(
        (f.stats_slot(Dir::Fwd), f.stats_slot(Dir::Rev)),
        (slot, slot)
    );
    assert_eq!((f.last_seen, f.rev_seen), (0, 0), "idle time starts again");
    for _ in 0..1000 {
        let port = p
            .masq
            .pick(&p.flows, (TCP, false), ep, task, 80, slot)
            .unwrap();
        assert_ne!(port, first, "a port an adopted flow holds was handed out");
    }
}

#[test]
fn masquerade_ports_are_unique_per_task_before_and_after_the_counter_wraps() {
    let cfg = Config {
        worker: 1,
        workers: 2,
        flow_capacity: 1024,
        ..Config::default()
    };
    let mut p = Pipeline::new(cfg, Arc::new(Neighbors::new(64)));
    let (ep, task) = (0x0a00_0002, 0x0a00_000b);
    let span = (65536 - 1024) / 2;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..span {
        let port = p
            .masq
            .pick(&p.flows, (TCP, false), ep, task, 80, 5)
            .unwrap();
        assert_eq!((port - 1024) % 2, 1, "worker 1's half of the port space");
        assert!(seen.insert(port), "port {port} given twice");
    }
    // Wrapped: from now on every candidate is checked against the live flows.
    let taken = p
        .masq
        .pick(&p.flows, (TCP, false), ep, task, 80, 5)
        .unwrap();
    let k = FlowKey::new(TCP, 0xac10_0001, 40000, 0xc0a8_010b, 8080);
    let r = FlowKey::new(TCP, task, 80, ep, taken);
    let f = Flow::new(
        FlowKind::Ingress,
        [k, r],
        [
            Action::keep(&k, Egress::Tasks),
            Action::keep(&r, Egress::Tasks),
        ],
        1,
        u16::MAX,
        [1, 1, 1],
        0,
    );
    p.flows.insert(f, 0).unwrap();
    p.masq.rewind();
    let next = p
        .masq
        .pick(&p.flows, (TCP, false), ep, task, 80, 5)
        .unwrap();
    assert_ne!(next, taken, "a port a live flow holds is skipped");
}

#[test]
fn an_arp_reply_from_a_peer_is_learned_and_not_counted_as_a_drop() {
    let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
    let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
    let peer = std::net::Ipv4Addr::new(192, 168, 1, 12);
    let reply = crate::testkit::arp_reply(
        [2, 0, 0, 0, 0, 0x12],
        peer,
        p.cfg.uplink_mac,
        std::net::Ipv4Addr::new(192, 168, 1, 11),
    );
    let mut burst = Burst::new();
    burst.push(PacketBuf::from_frame(PortId::Uplink, &reply));
    let mut v = Verdicts::new();
    p.process(&table, 1, &mut burst, &mut v);
    assert_eq!(v[0], Verdict::Consumed);
    assert_eq!(p.stats.total_drops(), 0);
    assert_eq!(
        p.neighbors().get(u32::from(peer)),
        Some([2, 0, 0, 0, 0, 0x12])
    );
}

/// A peer's MAC is learned from its first VXLAN frame; a frame (or an unasked ARP reply)
/// claiming the peer from another MAC is not believed: meshd asks by ARP, and only first
/// answers to two of its own requests, both with the new MAC, change the entry.
#[test]
fn a_peers_mac_changes_only_by_an_answer_to_meshds_own_arp_request() {
    let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
    let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
    let (n1, n2) = (
        std::net::Ipv4Addr::new(192, 168, 1, 11),
        std::net::Ipv4Addr::new(192, 168, 1, 12),
    );
    let inner = crate::testkit::tcp_frame(
        [0; 6],
        [0; 6],
        std::net::Ipv4Addr::new(10, 0, 0, 3),
        40000,
        std::net::Ipv4Addr::new(10, 0, 0, 250),
        80,
        crate::flow::tcp::ACK,
        1,
        1,
        &[],
    );
    let (real, forged, moved) = (
        [2, 0, 0, 0, 0, 0x12],
        [2, 0, 0, 0, 0, 0x66],
        [2, 0, 0, 0, 0, 0x99],
    );
    let mut v = Verdicts::new();
    let mut input = |p: &mut Pipeline, now: u64, f: Vec<u8>| {
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Uplink, &f));
        p.process(&table, now, &mut burst, &mut v);
    };
    let vx = |mac| {
        crate::testkit::vxlan_frame(
            mac,
            [2, 0, 0, 0, 0, 1],
            n2,
            n1,
            50000,
            ctl::INGRESS_VNI,
            &inner,
        )
    };
    let reply = |mac| crate::testkit::arp_reply(mac, n2, [2, 0, 0, 0, 0, 1], n1);
    input(&mut p, 1, vx(real));
    input(&mut p, 2, vx(real));
    assert_eq!(p.neighbors().get(u32::from(n2)), Some(real), "learned");
    // Unasked: a forged VXLAN frame and a forged ARP reply change nothing.
    input(&mut p, 5000, reply(forged));
    input(&mut p, 5001, vx(forged));
    assert_eq!(p.neighbors().get(u32::from(n2)), Some(real));
    assert_eq!(p.stats.neighbor_conflicts, 2);
    assert_eq!(p.stats.neighbor_changes, 0);
    // The conflict made meshd ask: an ARP request for n2 leaves by the uplink.
    let mut pool = Pool::new(64);
    let mut out = Burst::new();
    p.maintain(&table, 5002, &mut pool, &mut out);
    assert!(
        out.iter().any(|b| b.port == PortId::Uplink
            && b.data()[12..14] == [0x08, 0x06]
            && b.data()[ETH + 24..ETH + 28] == n2.octets()),
        "no ARP request for the peer"
    );
    // The peer's answer (its NIC did change) is a candidate; the peer goes on sending from its
    // new MAC, meshd asks again a second later, and the second answer makes the change,
    // counted and kept for the log.
    input(&mut p, 5003, reply(moved));
    assert_eq!(
        p.neighbors().get(u32::from(n2)),
        Some(real),
        "one answer is not enough"
    );
    input(&mut p, 6100, vx(moved));
    let mut out = Burst::new();
    p.maintain(&table, 6101, &mut pool, &mut out);
    assert!(
        out.iter().any(|b| b.data()[12..14] == [0x08, 0x06]),
        "no second ARP request"
    );
    input(&mut p, 6102, reply(moved));
    assert_eq!(p.neighbors().get(u32::from(n2)), Some(moved));
    assert_eq!(p.stats.neighbor_changes, 1);
    assert_eq!(p.take_mac_change(), Some((u32::from(n2), real, moved)));
    // Seconds later, an unasked reply again changes nothing.
    input(&mut p, 9000, reply(forged));
    assert_eq!(p.neighbors().get(u32::from(n2)), Some(moved));
}

#[test]
fn each_malformation_has_its_reason() {
    let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
    let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
    let mac = p.cfg.uplink_mac;
    let good = {
        let mut f = ip_tcp_frame(0x0a00_0009, 40000, 0xc0a8_010b, 8080, b"x");
        f[0..6].copy_from_slice(&mac);
        f
    };
    let mut cases: Vec<(Vec<u8>, DropReason)> = Vec::new();
    cases.push((good[..10].to_vec(), DropReason::Truncated));
    let mut f = good.clone();
    // IEEE 802's local experimental ethertype (IPv6 has reasons of its own: pipeline::ipv6).
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    cases.push((f, DropReason::UnknownEthertype));
    let mut f = good.clone();
    f[0] = 0x02;
    f[5] = 0x77;
    cases.push((f, DropReason::NotOurMac));
    let mut f = good.clone();
    f[ETH + 10] ^= 0xff;
    cases.push((f, DropReason::BadIpChecksum));
    let fix = |f: &mut Vec<u8>| {
        put16(f, ETH + 10, 0);
        let c = overlay::ipv4_header_checksum(&f[ETH..ETH + IPV4]);
        put16(f, ETH + 10, c);
    };
    let mut f = good.clone();
    f[ETH + 6] = 0x3f; // a fragment past byte 65,535
    f[ETH + 7] = 0xff;
    fix(&mut f);
    cases.push((f, DropReason::BadFragment));
    let mut f = good.clone();
    f[ETH + 8] = 1;
    fix(&mut f);
    cases.push((f, DropReason::TtlExpired));
    let mut f = good.clone();
    f[ETH] = 0x46;
    fix(&mut f);
    cases.push((f, DropReason::Ipv4Options));
    let mut f = good.clone();
    let n = f.len();
    f[n - 1] ^= 0xff;
    cases.push((f, DropReason::BadL4Checksum));
    let mut f = good.clone();
    f[ETH + 9] = 47;
    fix(&mut f);
    cases.push((f, DropReason::UnknownProtocol));
    let mut f = good.clone();
    put16(&mut f, ETH + 2, 2000);
    fix(&mut f);
    cases.push((f, DropReason::BadIpv4Header));
    for (frame, want) in cases {
        let mut burst = Burst::new();
        burst.push(PacketBuf::from_frame(PortId::Uplink, &frame));
        let mut v = Verdicts::new();
        p.process(&table, 1, &mut burst, &mut v);
        assert_eq!(v[0], Verdict::Drop(want), "case {want:?}");
        assert!(p.stats.dropped(want) >= 1);
    }
}

#[test]
fn a_published_port_is_dnated_and_encapsulated_to_the_tasks_node() {
    let table = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
    neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
    let mut p = Pipeline::new(Config::default(), neigh);
    let mut f = ip_tcp_frame(0x0a09_0009, 40000, 0xc0a8_010b, 8080, b"");
    f[0..6].copy_from_slice(&p.cfg.uplink_mac);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x99]);
    f[ETH + IPV4 + 13] = flow::tcp::SYN;
    let n = f.len();
    {
        let mut t = TcpPacket::new_unchecked(&mut f[ETH + IPV4..n]);
        t.fill_checksum(&addr(0x0a09_0009).into(), &addr(0xc0a8_010b).into());
    }
    let mut burst = Burst::new();
    burst.push(PacketBuf::from_frame(PortId::Uplink, &f));
    let mut v = Verdicts::new();
    p.process(&table, 1, &mut burst, &mut v);
    assert_eq!(v[0], Verdict::Tx(PortId::Uplink));
    let out = burst[0].data();
    assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 0x12], "to web.1's node n2");
    let outer = parse_ipv4(out, ETH, true).unwrap();
    assert_eq!((outer.proto, outer.dport), (UDP, 4789));
    assert!(outer.sport >= 49152);
    let vx = vxlan::Packet::new_checked(&out[ETH + IPV4 + 8..]).unwrap();
    assert_eq!(vx.vni(), ctl::INGRESS_VNI);
    let inner = parse_ipv4(out, vxlan::ENCAP_LEN + ETH, true).unwrap();
    // DNAT to web.1's ingress address and target port, masqueraded to n1's endpoint.
    assert_eq!((inner.dst, inner.dport), (0x0a00_000b, 80));
    assert_eq!(inner.src, 0x0a00_0002);
    assert_eq!(p.stats.new_flows, 1);
    assert_eq!(p.flows.len(), 1);
    // Counted for web.1: one packet of the frame's size, one connection.
    let uid = table.tasks[table.task_by_name("web.1").unwrap() as usize].uid;
    let counted: Vec<_> = p.task_stats.iter().collect();
    assert_eq!(counted, vec![(uid, [1, f.len() as u64, 1, 0, 0, 0])]);
    // Held now: an inactive connection (half-open), once the sweep has been round the table.
    let mut pool = Pool::new(8);
    let mut out = Burst::new();
    for ms in 2..400 {
        p.maintain(&table, ms, &mut pool, &mut out);
    }
    let counted: Vec<_> = p.task_stats.iter().collect();
    assert_eq!(counted, vec![(uid, [1, f.len() as u64, 1, 0, 1, 0])]);
}

// ---- big packets: MSS clamping and path MTU discovery ----------------------------------

const CLIENT: u32 = 0x0a09_0009;
const N1: u32 = 0xc0a8_010b;
const N2: u32 = 0xc0a8_010c;
const WEB1: u32 = 0x0a00_000b;

/// A TCP segment with the given control, MSS option and payload, checksums right.
#[allow(clippy::too_many_arguments)]
fn tcp_seg(
    macs: ([u8; 6], [u8; 6]),
    src: u32,
    sport: u16,
    dst: u32,
    dport: u16,
    control: TcpControl,
    ack: bool,
    mss: Option<u16>,
    payload: &[u8],
    df: bool,
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control,
        seq_number: TcpSeqNumber(1000),
        ack_number: ack.then_some(TcpSeqNumber(5000)),
        window_len: 64240,
        window_scale: None,
        max_seg_size: mss,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let ipr = Ipv4Repr {
        src_addr: addr(src),
        dst_addr: addr(dst),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut f = vec![0u8; ETH + IPV4 + tcp.buffer_len()];
    f[0..6].copy_from_slice(&macs.1);
    f[6..12].copy_from_slice(&macs.0);
    f[12..14].copy_from_slice(&[8, 0]);
    let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH..]);
    ipr.emit(&mut ip, &caps);
    ip.set_dont_frag(df);
    ip.fill_checksum();
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut f[ETH + IPV4..]),
        &addr(src).into(),
        &addr(dst).into(),
        &caps,
    );
    f
}

fn mss_at(f: &[u8], ip: usize) -> Option<u16> {
    let l3 = parse_ipv4(f, ip, true).ok()?;
    let p = TcpPacket::new_checked(&f[l3.l4..]).ok()?;
    TcpRepr::parse(
        &p,
        &addr(l3.src).into(),
        &addr(l3.dst).into(),
        &ChecksumCapabilities::default(),
    )
    .ok()?
    .max_seg_size
}

/// Runs one frame through `p` on `port`: its verdict and the frame as the pipeline left it.
pub(super) fn run(
    p: &mut Pipeline,
    t: &ServiceTable,
    port: PortId,
    f: &[u8],
) -> (Verdict, Vec<u8>) {
    let mut burst = Burst::new();
    burst.push(PacketBuf::from_frame(port, f));
    let mut v = Verdicts::new();
    p.process(t, 1, &mut burst, &mut v);
    (v[0], burst[0].data().to_vec())
}

/// Node n2 (web.1 is local): a client's SYN and web.1's SYN-ACK both cross meshd.
fn on_n2(ingress_mtu: Option<u16>) -> (ServiceTable, Pipeline) {
    let mut state = three_nodes();
    state.networks[0].mtu = ingress_mtu;
    let table = ServiceTable::build(&state, "n2", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    neigh.learn(WEB1, [2, 0, 0, 0, 0, 0x11]);
    (table, Pipeline::new(Config::default(), neigh))
}

#[test]
fn mss_is_clamped_on_the_syn_and_the_syn_ack_to_the_overlay_mtu() {
    for (mtu, want) in [(None, 1410), (Some(1400), 1360)] {
        let (t, mut p) = on_n2(mtu);
        let (up, tk) = (p.cfg.uplink_mac, p.cfg.tasks_mac);
        let client_mac = [2, 0, 0, 0, 0, 0x99];
        let syn = tcp_seg(
            (client_mac, up),
            CLIENT,
            40000,
            N2,
            8080,
            TcpControl::Syn,
            false,
            Some(1460),
            b"",
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Uplink, &syn);
        assert_eq!(v, Verdict::Tx(PortId::Tasks));
        // parse_ipv4 verified the TCP checksum after the edit.
        assert_eq!(
            mss_at(&out, ETH),
            Some(want),
            "SYN to the task, network MTU {mtu:?}"
        );
        let to_task = parse_ipv4(&out, ETH, true).unwrap();
        assert_eq!((to_task.dst, to_task.dport), (WEB1, 80));
        // web.1 answers its masqueraded client.
        let synack = tcp_seg(
            ([2, 0, 0, 0, 0, 0x11], tk),
            WEB1,
            80,
            to_task.src,
            to_task.sport,
            TcpControl::Syn,
            true,
            Some(1460),
            b"",
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Tasks, &synack);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        let back = parse_ipv4(&out, ETH, true).unwrap();
        assert_eq!(
            (back.src, back.sport, back.dst, back.dport),
            (N2, 8080, CLIENT, 40000)
        );
        assert_eq!(mss_at(&out, ETH), Some(want), "SYN-ACK to the client");
        assert_eq!(p.stats.mss_clamped, 2);
        // An MSS already small enough is left alone and not counted.
        let syn = tcp_seg(
            (client_mac, up),
            CLIENT,
            40001,
            N2,
            8080,
            TcpControl::Syn,
            false,
            Some(536),
            b"",
            true,
        );
        let (_, out) = run(&mut p, &t, PortId::Uplink, &syn);
        assert_eq!(mss_at(&out, ETH), Some(536));
        assert_eq!(p.stats.mss_clamped, 2);
    }
}

#[test]
fn a_tasks_answer_to_a_new_connection_is_passive_healths_evidence() {
    use super::passive::Seen;
    let (t, mut p) = on_n2(None);
    let (up, tk) = (p.cfg.uplink_mac, p.cfg.tasks_mac);
    let web1 = [2, 0, 0, 0, 0, 0x11];
    let uid = t.tasks[t.task_by_name("web.1").unwrap() as usize].uid;
    // A client's SYNs (each from a new port) until one goes to web.1 here: what meshd sent it.
    let mut sport = 41000;
    let mut syn_to_web1 = |p: &mut Pipeline| loop {
        sport += 1;
        let syn = tcp_seg(
            (CLIENT_MAC, up),
            CLIENT,
            sport,
            N2,
            8080,
            TcpControl::Syn,
            false,
            None,
            b"",
            true,
        );
        let (v, out) = run(p, &t, PortId::Uplink, &syn);
        if v == Verdict::Tx(PortId::Tasks) {
            let to = parse_ipv4(&out, ETH, true).unwrap();
            assert_eq!(to.dst, WEB1);
            return to;
        }
    };
    // web.1 answers a new connection with `control`.
    let mut answer = |p: &mut Pipeline, control: TcpControl| {
        let to = syn_to_web1(p);
        let back = tcp_seg(
            (web1, tk),
            WEB1,
            80,
            to.src,
            to.sport,
            control,
            true,
            None,
            b"",
            true,
        );
        run(p, &t, PortId::Tasks, &back);
    };
    // An answer from a task that never failed is not news.
    answer(&mut p, TcpControl::Syn);
    assert!(p.passive.events.is_empty());
    // Refused twice, then served.
    answer(&mut p, TcpControl::Rst);
    answer(&mut p, TcpControl::Rst);
    answer(&mut p, TcpControl::Syn);
    assert_eq!(
        &p.passive.events[..],
        [
            (uid, Seen::Refused),
            (uid, Seen::Refused),
            (uid, Seen::Answered)
        ]
    );
    assert_eq!(p.stats.syn_refused, 2);
    // A SYN never answered: told when its half-open flow expires.
    p.passive.events.clear();
    syn_to_web1(&mut p);
    let mut pool = Pool::new(64);
    let mut out = Burst::new();
    for k in 0..40u64 {
        p.maintain(
            &t,
            (crate::flow::tcp::HALF_OPEN_S as u64 + 2) * 1000 + k,
            &mut pool,
            &mut out,
        );
    }
    assert!(
        p.passive.events.contains(&(uid, Seen::Unanswered)),
        "{:?}",
        p.passive.events
    );
    assert!(p.stats.syn_unanswered >= 1);
}

/// Node n1 (web.1 is on n2, behind VXLAN) with an established flow from the client.
fn on_n1_established(ingress_mtu: Option<u16>) -> (ServiceTable, Pipeline) {
    let mut state = three_nodes();
    state.networks[0].mtu = ingress_mtu;
    let t = ServiceTable::build(&state, "n1", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    neigh.learn(N2, [2, 0, 0, 0, 0, 0x12]);
    neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
    let mut p = Pipeline::new(Config::default(), neigh);
    let up = p.cfg.uplink_mac;
    let syn = tcp_seg(
        ([2, 0, 0, 0, 0, 0x99], up),
        CLIENT,
        40000,
        N1,
        8080,
        TcpControl::Syn,
        false,
        Some(1460),
        b"",
        true,
    );
    let (v, out) = run(&mut p, &t, PortId::Uplink, &syn);
    assert_eq!(v, Verdict::Tx(PortId::Uplink));
    assert_eq!(
        mss_at(&out, ETH + vxlan::ENCAP_LEN),
        Some(ingress_mtu.unwrap_or(1450) - 40)
    );
    (t, p)
}

#[test]
fn a_too_big_df_packet_gets_frag_needed_quoting_what_its_sender_sent() {
    for mtu in [None, Some(1400)] {
        let (t, mut p) = on_n1_established(mtu);
        let mtu = mtu.unwrap_or(1450);
        let up = p.cfg.uplink_mac;
        let client_mac = [2, 0, 0, 0, 0, 0x99];
        // The largest packet that fits is encapsulated to exactly the uplink's MTU or less.
        let fits = vec![0x61; usize::from(mtu) - 40];
        let seg = tcp_seg(
            (client_mac, up),
            CLIENT,
            40000,
            N1,
            8080,
            TcpControl::Psh,
            true,
            None,
            &fits,
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Uplink, &seg);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        assert!(out.len() - ETH <= 1500);
        // One byte more: ICMP "fragmentation needed" to the client, from the node.
        let big = vec![0x62; usize::from(mtu) - 39];
        let seg = tcp_seg(
            (client_mac, up),
            CLIENT,
            40000,
            N1,
            8080,
            TcpControl::Psh,
            true,
            None,
            &big,
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Uplink, &seg);
        assert_eq!(v, Verdict::Tx(PortId::Uplink));
        assert_eq!(&out[0..6], &client_mac);
        assert_eq!(&out[6..12], &up);
        let ip = Ipv4Packet::new_checked(&out[ETH..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ipkey(ip.src_addr()), ipkey(ip.dst_addr())), (N1, CLIENT));
        let icmp = smoltcp::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 4));
        assert_eq!(be16(ip.payload(), 6), mtu, "the next-hop MTU (RFC 1191)");
        // The quote is the packet as the client sent it: to the node's published port.
        assert_eq!(&ip.payload()[8..], &seg[ETH..ETH + 28]);
        assert_eq!(p.stats.icmp_frag_needed, 1);
        assert_eq!(p.stats.dropped(DropReason::TooBig), 1);
        // Without DF it is fragmented instead (see
        // a_too_big_packet_without_df_is_fragmented_to_the_overlay_mtu).
    }
}

#[test]
fn frag_needed_is_rate_limited_per_source() {
    let (t, mut p) = on_n1_established(None);
    let up = p.cfg.uplink_mac;
    let big = vec![0x62; 1411];
    let seg = tcp_seg(
        ([2, 0, 0, 0, 0, 0x99], up),
        CLIENT,
        40000,
        N1,
        8080,
        TcpControl::Psh,
        true,
        None,
        &big,
        true,
    );
    let answered = (0..50)
        .filter(|_| run(&mut p, &t, PortId::Uplink, &seg).0 == Verdict::Tx(PortId::Uplink))
        .count();
    assert_eq!(answered, 10);
    assert_eq!(p.stats.icmp_frag_needed, 10);
    assert_eq!(p.stats.dropped(DropReason::TooBig), 50);
}

#[test]
fn a_tasks_too_big_reply_gets_frag_needed_from_its_gateway() {
    // On n2, web.1 answers a flow n1 masqueraded: stateless, VXLAN back to n1.
    let (t, mut p) = on_n2(None);
    p.neighbors().learn(N1, [2, 0, 0, 0, 0, 0x01]);
    let tk = p.cfg.tasks_mac;
    let web1_mac = [2, 0, 0, 0, 0, 0x11];
    let big = vec![0x63; 1460];
    let seg = tcp_seg(
        (web1_mac, tk),
        WEB1,
        80,
        0x0a00_0002,
        1024,
        TcpControl::Psh,
        true,
        None,
        &big,
        true,
    );
    let (v, out) = run(&mut p, &t, PortId::Tasks, &seg);
    assert_eq!(v, Verdict::Tx(PortId::Tasks));
    assert_eq!(&out[0..6], &web1_mac);
    let ip = Ipv4Packet::new_checked(&out[ETH..]).unwrap();
    // From the ingress network's gateway, to the task.
    assert_eq!(
        (ipkey(ip.src_addr()), ipkey(ip.dst_addr())),
        (0x0a00_0001, WEB1)
    );
    assert_eq!(be16(ip.payload(), 6), 1450);
    assert_eq!(p.stats.icmp_frag_needed, 1);
}

#[test]
fn every_host_reason_is_produced_and_counted() {
    use crate::testkit;
    let client_mac = [2, 0, 0, 0, 0, 0x99];
    let client = std::net::Ipv4Addr::new(10, 9, 0, 9);
    let n1 = std::net::Ipv4Addr::new(192, 168, 1, 11);
    let syn = |dport: u16| {
        testkit::tcp_frame(
            client_mac,
            Config::default().uplink_mac,
            client,
            40000,
            n1,
            dport,
            testkit::tcp_flags::SYN,
            1,
            0,
            b"",
        )
    };
    let full = three_nodes();
    let mut no_task = three_nodes();
    no_task.services[0].tasks.clear();
    let mut cases: Vec<(HostReason, ctl::State, PortId, Vec<u8>)> = vec![
        (
            HostReason::NodeAddress,
            full.clone(),
            PortId::Uplink,
            testkit::icmp_echo(
                client_mac,
                Config::default().uplink_mac,
                client,
                n1,
                1,
                1,
                b"ping",
            ),
        ),
        (
            HostReason::NotPublished,
            full.clone(),
            PortId::Uplink,
            syn(9999),
        ),
        (
            HostReason::NotSyn,
            full.clone(),
            PortId::Uplink,
            testkit::tcp_frame(
                client_mac,
                Config::default().uplink_mac,
                client,
                40000,
                n1,
                8080,
                testkit::tcp_flags::ACK,
                1,
                1,
                b"",
            ),
        ),
        (HostReason::NoTask, no_task, PortId::Uplink, syn(8080)),
        (
            HostReason::MeshAddress,
            full.clone(),
            PortId::Tasks,
            // web.1 pings its network's gateway (on n2, where it runs).
            testkit::icmp_echo(
                [2, 0, 0, 0, 0, 0x11],
                Config::default().tasks_mac,
                std::net::Ipv4Addr::new(10, 0, 1, 11),
                std::net::Ipv4Addr::new(10, 0, 1, 1),
                1,
                1,
                b"gw",
            ),
        ),
    ];
    // TCP to a port of n1's IPv6 address that is not published.
    let mut v6 = full.clone();
    let n1_6: std::net::Ipv6Addr = "fd00::11".parse().unwrap();
    v6.nodes[0].addr6 = Some(n1_6);
    cases.push((
        HostReason::Ipv6Port,
        v6,
        PortId::Uplink,
        testkit::tcp6_frame(
            client_mac,
            Config::default().uplink_mac,
            "fd00::c".parse().unwrap(),
            40000,
            n1_6,
            9999,
            testkit::tcp_flags::SYN,
            1,
        ),
    ));
    let mut seen = [false; HostReason::COUNT];
    for (want, state, port, frame) in cases {
        let node = if port == PortId::Tasks { "n2" } else { "n1" };
        let t = ServiceTable::build(&state, node, 1).unwrap();
        let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
        let (v, _) = run(&mut p, &t, port, &frame);
        assert_eq!(v, Verdict::Host(want), "{want:?}");
        assert_eq!(p.stats.to_host_by[want as usize], 1, "{want:?}");
        assert_eq!(p.stats.to_host, 1);
        seen[want as usize] = true;
    }
    for r in HostReason::ALL {
        assert!(
            seen[r as usize],
            "no input produces HostReason::{r:?}: add one"
        );
    }
}

/// Drop reasons produced by the worker loop rather than the pipeline (see
/// `worker::tests::full_queues_are_counted_by_their_reason`).
const WORKER_LEVEL: [DropReason; 2] = [DropReason::HandoffFull, DropReason::HostQueueFull];

#[test]
fn every_drop_reason_is_produced_and_counted() {
    use crate::testkit;
    use std::net::Ipv4Addr as A;
    let up = Config::default().uplink_mac;
    let tk = Config::default().tasks_mac;
    let cmac = [2, 0, 0, 0, 0, 0x99];
    let web1_mac = [2, 0, 0, 0, 0, 0x11];
    let client = A::new(10, 9, 0, 9);
    let n1 = A::new(192, 168, 1, 11);
    let n2 = A::new(192, 168, 1, 12);
    let web1 = A::new(10, 0, 1, 11);
    let syn = |dst: A, dport: u16, sport: u16| {
        testkit::tcp_frame(
            cmac,
            up,
            client,
            sport,
            dst,
            dport,
            testkit::tcp_flags::SYN,
            1,
            0,
            b"",
        )
    };
    let from_web1 = |dst: A| testkit::udp_frame(web1_mac, tk, web1, 5000, dst, 53, b"q");
    // What a peer's VXLAN carries: a client's SYN to web.1, masqueraded by n2's endpoint.
    let inner = testkit::tcp_frame(
        cmac,
        tk,
        A::new(10, 0, 0, 3),
        1024,
        A::new(10, 0, 0, 11),
        80,
        testkit::tcp_flags::SYN,
        1,
        0,
        b"",
    );
    let vx = |src: A, vni: u32| {
        testkit::vxlan_frame([2, 0, 0, 0, 0, 0x12], up, src, n1, 50000, vni, &inner)
    };
    let mut bad_vxlan = vx(n2, ctl::INGRESS_VNI);
    bad_vxlan[ETH + IPV4 + 8] = 0; // the I flag
    testkit::refill_l4_checksum(&mut bad_vxlan);
    let mut udp_bad_len = testkit::udp_frame(cmac, up, client, 5000, n1, 8080, b"x");
    put16(&mut udp_bad_len, ETH + IPV4 + 4, 3);
    let mut bad_arp = testkit::arp_request(web1_mac, web1, A::new(10, 0, 1, 1));
    bad_arp.truncate(ETH + 10);
    // Two published ports onto the same target port of the one task, client IP kept: the
    // second SYN from the same client port would translate onto the first one's flow.
    let mut kept = three_nodes();
    kept.services[0].client_ip = ClientIpMode::Keep;
    kept.services[0].tasks.truncate(1);
    let mut second = kept.services[0].ports[0];
    second.published = 8081;
    kept.services[0].ports.push(second);
    let full = three_nodes();
    // (reason, state, node, port, frames: all but the last must not be dropped)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(DropReason, &ctl::State, &str, PortId, Vec<Vec<u8>>)> = vec![
        (
            DropReason::NotForUs,
            &full,
            "n1",
            PortId::Uplink,
            vec![syn(A::new(192, 168, 1, 99), 8080, 40000)],
        ),
        (
            DropReason::UnknownVtep,
            &full,
            "n1",
            PortId::Uplink,
            vec![vx(A::new(192, 168, 1, 99), ctl::INGRESS_VNI)],
        ),
        (
            DropReason::BadVxlan,
            &full,
            "n1",
            PortId::Uplink,
            vec![bad_vxlan],
        ),
        (
            DropReason::UnknownVni,
            &full,
            "n1",
            PortId::Uplink,
            vec![vx(n2, 999)],
        ),
        (
            DropReason::BadL4Header,
            &full,
            "n1",
            PortId::Uplink,
            vec![udp_bad_len],
        ),
        (
            DropReason::UnknownSource,
            &full,
            "n2",
            PortId::Tasks,
            vec![testkit::udp_frame(
                web1_mac,
                tk,
                A::new(10, 0, 1, 99),
                5000,
                web1,
                53,
                b"q",
            )],
        ),
        (
            DropReason::CrossNetwork,
            &full,
            "n2",
            PortId::Tasks,
            vec![from_web1(A::new(10, 0, 0, 12))],
        ),
        (
            DropReason::NoRoute,
            &full,
            "n2",
            PortId::Tasks,
            vec![from_web1(A::new(8, 8, 8, 8))],
        ),
        (
            DropReason::NoNeighbor,
            &full,
            "n2",
            PortId::Uplink,
            vec![syn(n2, 8080, 40000)],
        ),
        (
            DropReason::ArpIgnored,
            &full,
            "n2",
            PortId::Tasks,
            vec![testkit::arp_request(web1_mac, web1, web1)],
        ),
        (
            DropReason::BadArp,
            &full,
            "n2",
            PortId::Tasks,
            vec![bad_arp],
        ),
        (
            DropReason::NoNatPort,
            &kept,
            "n1",
            PortId::Uplink,
            vec![syn(n1, 8080, 40000), syn(n1, 8081, 40000)],
        ),
        (
            DropReason::SpoofedPeer,
            &full,
            "n1",
            PortId::Uplink,
            vec![testkit::vxlan_frame(
                [2, 0, 0, 0, 0, 0x66],
                up,
                n2,
                n1,
                50000,
                ctl::INGRESS_VNI,
                &inner,
            )],
        ),
        (
            DropReason::SpoofedSource,
            &full,
            "n2",
            PortId::Tasks,
            vec![
                from_web1(A::new(10, 0, 1, 12)),
                testkit::udp_frame(
                    [2, 0, 0, 0, 0, 0x66],
                    tk,
                    web1,
                    5000,
                    A::new(10, 0, 1, 12),
                    53,
                    b"q",
                ),
            ],
        ),
        (
            DropReason::BadTcpFlags,
            &full,
            "n1",
            PortId::Uplink,
            vec![testkit::tcp_frame(
                cmac,
                up,
                client,
                40000,
                n1,
                8080,
                testkit::tcp_flags::SYN | testkit::tcp_flags::FIN,
                1,
                0,
                b"",
            )],
        ),
    ];
    let mut seen: Vec<DropReason> = WORKER_LEVEL.to_vec();
    for (want, state, node, port, frames) in cases {
        let t = ServiceTable::build(state, node, 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
        neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
        let mut p = Pipeline::new(Config::default(), neigh);
        let n = frames.len();
        for (i, f) in frames.iter().enumerate() {
            let (v, _) = run(&mut p, &t, port, f);
            if i + 1 < n {
                assert!(
                    !matches!(v, Verdict::Drop(_)),
                    "{want:?}: frame {i} was {v:?}"
                );
            } else {
                assert_eq!(v, Verdict::Drop(want), "{want:?}");
            }
        }
        assert_eq!(p.stats.dropped(want), 1, "{want:?}");
        seen.push(want);
    }
    // A source over its new-flow rate (two a second): its third SYN in the second.
    {
        let t = ServiceTable::build(&full, "n1", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
        neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
        let cfg = Config {
            new_flows_per_source: 2,
            ..Config::default()
        };
        let mut p = Pipeline::new(cfg, neigh);
        for sport in [40000, 40001] {
            let (v, _) = run(&mut p, &t, PortId::Uplink, &syn(n1, 8080, sport));
            assert_eq!(v, Verdict::Tx(PortId::Uplink), "within the rate");
        }
        let (v, _) = run(&mut p, &t, PortId::Uplink, &syn(n1, 8080, 40002));
        assert_eq!(v, Verdict::Drop(DropReason::NewFlowRate));
        // Its flows go on; another source may open one.
        let (v, _) = run(&mut p, &t, PortId::Uplink, &syn(n1, 8080, 40000));
        assert_eq!(v, Verdict::Tx(PortId::Uplink), "an existing flow");
        seen.push(DropReason::NewFlowRate);
    }
    // A flow table full of established connections: a new SYN is refused, none is evicted.
    {
        let t = ServiceTable::build(&full, "n1", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
        let cfg = Config {
            flow_capacity: 16,
            ..Config::default()
        };
        let mut p = Pipeline::new(cfg, neigh);
        for i in 0..16u16 {
            let k = FlowKey::new(TCP, 0x0a09_0100 + u32::from(i), 1000 + i, 0xc0a8_010b, 9);
            let r = FlowKey::new(TCP, 0x0a00_000b, 80, 0x0a00_0002, 2000 + i);
            let mut f = Flow::new(
                FlowKind::Ingress,
                [k, r],
                [
                    Action::keep(&k, Egress::Tasks),
                    Action::keep(&r, Egress::Tasks),
                ],
                1,
                u16::MAX,
                [7200, 60, 30],
                0,
            );
            f.tcp = crate::flow::TcpState::Established;
            p.flows.insert(f, 0).unwrap();
        }
        let (v, _) = run(&mut p, &t, PortId::Uplink, &syn(n1, 8080, 40000));
        assert_eq!(v, Verdict::Drop(DropReason::FlowTableFull));
        assert_eq!((p.flows.len(), p.flows.evicted), (16, 0));
        seen.push(DropReason::FlowTableFull);
    }
    // No headroom left to encapsulate: a buffer whose frame starts 10 bytes in.
    {
        let t = ServiceTable::build(&full, "n1", 1).unwrap();
        let neigh = Arc::new(Neighbors::new(64));
        neigh.learn(0xc0a8_010c, [2, 0, 0, 0, 0, 0x12]);
        neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
        let mut p = Pipeline::new(Config::default(), neigh);
        let f = syn(n1, 8080, 40000);
        let mut b = PacketBuf::from_frame(PortId::Uplink, &f);
        let room = b.headroom() - 10;
        b.prepend(room).unwrap();
        b.data_mut()[..f.len()].copy_from_slice(&f);
        b.truncate(f.len());
        assert_eq!(b.headroom(), 10);
        let mut burst = Burst::new();
        burst.push(b);
        let mut v = Verdicts::new();
        p.process(&t, 1, &mut burst, &mut v);
        assert_eq!(v[0], Verdict::Drop(DropReason::NoHeadroom));
        seen.push(DropReason::NoHeadroom);
    }
    // The malformations (see each_malformation_has_its_reason), too_big (see the big packet
    // tests) and wrong_vlan (tasks_on_their_own_vlans_speak_only_as_themselves) are produced
    // there.
    seen.extend([
        DropReason::WrongVlan,
        DropReason::Truncated,
        DropReason::UnknownEthertype,
        DropReason::NotOurMac,
        DropReason::BadIpChecksum,
        DropReason::BadFragment,
        DropReason::TtlExpired,
        DropReason::Ipv4Options,
        DropReason::BadL4Checksum,
        DropReason::UnknownProtocol,
        DropReason::BadIpv4Header,
        DropReason::TooBig,
    ]);
    // The fragment reasons are produced by the fragment tests below
    // (bad_fragments_are_dropped_by_reason, early_fragments_are_held_within_bounds_and_time_out,
    // the_fragment_table_is_bounded_and_other_flows_go_on).
    seen.extend([
        DropReason::Fragment,
        DropReason::FragmentOverlap,
        DropReason::FragmentTableFull,
        DropReason::FragmentTimeout,
        DropReason::NoBuffer,
    ]);
    // The IPv6 reasons: pipeline::ipv6's
    // ipv6_meshd_does_not_answer_is_dropped_by_reason_and_nothing_is_sent.
    seen.extend([
        DropReason::NoIpv6,
        DropReason::BadIpv6Header,
        DropReason::Ipv6ExtChain,
        DropReason::Ipv6Fragment,
        DropReason::BadNdp,
        DropReason::NdpIgnored,
    ]);
    // pipeline::nat64's two_clients_with_one_stand_in_never_share_a_flow, and
    // a_routers_packet_too_big_about_a_reply_reaches_the_task_as_fragmentation_needed.
    seen.extend([DropReason::Ipv6ClientCollision, DropReason::Icmp6NoFlow]);
    // pipeline::overlay6's what_is_not_carried_is_dropped_by_reason.
    seen.push(DropReason::Ipv6Untranslated);
    // The seal reasons: an_encrypted_network_is_sealed_between_nodes_and_what_does_not_open_is_refused
    // below, and overlay::seal's tests (a sealer the kernel gave no random bytes).
    seen.extend([
        DropReason::SealUnknownKey,
        DropReason::SealForged,
        DropReason::SealReplayed,
        DropReason::SealNoNonce,
    ]);
    for r in DropReason::ALL {
        assert!(
            seen.contains(&r),
            "no input produces DropReason::{r:?}: add one"
        );
    }
}

// ---- fragments: forwarded by their datagram's flow; too-big packets fragmented -------------

/// The seed layout with UDP 5353 published too (to port 53 of web's tasks).
pub(super) fn udp_published() -> ctl::model::State {
    let mut s = three_nodes();
    s.services[0].ports.push(ctl::model::PublishedPort {
        protocol: ctl::model::Protocol::Udp,
        published: 5353,
        target: 53,
        mode: ctl::model::PublishMode::Ingress,
    });
    s
}

/// Node `node` of `udp_published`, with `workers` workers, their spare buffers filled, and
/// the MACs of web.1, web.2 and the peers known.
fn frag_node(node: &str, workers: u16) -> (ServiceTable, Vec<Pipeline>) {
    node_of(&udp_published(), node, workers)
}

/// Node `node` of `state`, as [`frag_node`].
pub(super) fn node_of(
    state: &ctl::State,
    node: &str,
    workers: u16,
) -> (ServiceTable, Vec<Pipeline>) {
    let t = ServiceTable::build(state, node, 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    neigh.learn(WEB1, [2, 0, 0, 0, 0, 0x11]);
    neigh.learn(0x0a00_000c, [2, 0, 0, 0, 0, 0x14]);
    neigh.learn(N2, [2, 0, 0, 0, 0, 0x12]);
    neigh.learn(0xc0a8_010d, [2, 0, 0, 0, 0, 0x13]);
    let mut pool = Pool::new(256);
    let ps = (0..workers)
        .map(|w| {
            let cfg = Config {
                worker: w,
                workers,
                ..Config::default()
            };
            let mut p = Pipeline::new(cfg, neigh.clone());
            let mut out = Burst::new();
            p.maintain(&t, 1, &mut pool, &mut out);
            p
        })
        .collect();
    (t, ps)
}

/// Runs `input` (worker, frame) through the workers as the worker loop does: handed-off
/// frames go to their worker, frames made or released beside a burst follow it. Returns what
/// went out, and every verdict given (the burst's and the extra frames').
pub(super) fn drive(
    ps: &mut [Pipeline],
    t: &ServiceTable,
    now: u64,
    input: Vec<(usize, PacketBuf)>,
) -> (Vec<(PortId, Vec<u8>)>, Vec<Verdict>) {
    let mut queues: Vec<std::collections::VecDeque<PacketBuf>> =
        ps.iter().map(|_| Default::default()).collect();
    for (w, b) in input {
        queues[w].push_back(b);
    }
    let (mut out, mut seen) = (Vec::new(), Vec::new());
    while queues.iter().any(|q| !q.is_empty()) {
        for w in 0..ps.len() {
            // One frame per burst, so frames of different workers interleave.
            let Some(b) = queues[w].pop_front() else {
                continue;
            };
            let mut burst = Burst::new();
            burst.push(b);
            let mut v = Verdicts::new();
            ps[w].process(t, now, &mut burst, &mut v);
            let extra = ps[w].take_extra().into_iter().map(|(b, v, _)| (b, v));
            for (b, v) in burst.drain(..).zip(v.iter().copied()).chain(extra) {
                seen.push(v);
                match v {
                    Verdict::Tx(port) => out.push((port, b.data().to_vec())),
                    Verdict::Handoff(to) => queues[usize::from(to)].push_back(b),
                    _ => {}
                }
            }
        }
    }
    (out, seen)
}

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

/// A client's UDP datagram of `len` bytes to the node's published port 5353, as the fragments
/// a 1500-byte link gives it, numbered by offset.
pub(super) fn client_datagram(
    t: &ServiceTable,
    mac: [u8; 6],
    len: usize,
    id: u16,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let node = std::net::Ipv4Addr::from(t.node_addr.octets());
    let whole = crate::testkit::udp_frame(
        CLIENT_MAC,
        mac,
        std::net::Ipv4Addr::from(CLIENT),
        40000,
        node,
        5353,
        &data,
    );
    let frags = crate::testkit::fragment(&whole, 1500, id);
    (data, frags)
}

/// The datagram the outputs carry: reassembled from the frames on the tasks port, or from
/// the inner frames of the VXLAN ones.
pub(super) fn delivered(out: &[(PortId, Vec<u8>)]) -> crate::testkit::UdpSeen {
    let inner: Vec<Vec<u8>> = out
        .iter()
        .map(|(port, f)| {
            assert!(
                f.len() <= ETH + 1500,
                "a frame longer than the link: {}",
                f.len()
            );
            match port {
                PortId::Tasks => {
                    assert!(f.len() <= ETH + 1450, "longer than the overlay's MTU");
                    f.clone()
                }
                PortId::Uplink => crate::testkit::decap(f).expect("VXLAN").1.to_vec(),
            }
        })
        .collect();
    let whole = crate::testkit::reassemble(&inner).expect("the fragments make one datagram");
    crate::testkit::parse_ipv4_udp(&whole).expect("a UDP datagram with its checksum right")
}

#[test]
fn fragments_reach_the_task_in_any_order_translated_with_checksums_right() {
    // n2: web.1 is local (tasks port); n1: the task is on another node (VXLAN).
    for node in ["n2", "n1"] {
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let (t, mut ps) = frag_node(node, 1);
            let mac = ps[0].cfg.uplink_mac;
            let (data, frags) = client_datagram(&t, mac, 4000, 77);
            assert_eq!(frags.len(), 3);
            let input = order
                .iter()
                .map(|&i| (0, PacketBuf::from_frame(PortId::Uplink, &frags[i])))
                .collect();
            let (out, _) = drive(&mut ps, &t, 5, input);
            let got = delivered(&out);
            assert_eq!(got.payload, data, "{node} {order:?}");
            assert_eq!(got.dport, 53, "DNAT to the target port");
            assert!(
                [0x0a00_000b, 0x0a00_000c].contains(&u32::from(got.dst)),
                "to a task of web: {}",
                got.dst
            );
            let p = &ps[0];
            assert_eq!(p.stats.fragments_in, 3);
            assert_eq!(p.stats.new_flows, 1, "one flow, from the first fragment");
            // Each 1500-byte fragment is fragmented again to the overlay's 1450.
            assert_eq!(p.stats.fragments_made, 4, "{node} {order:?}");
            assert_eq!(
                p.stats.fragments_held,
                order.iter().position(|&i| i == 0).unwrap() as u64
            );
            assert_eq!(p.fragments(5), (0, 0), "the datagram is done and forgotten");
        }
    }
}

#[test]
fn the_fragments_of_a_datagram_meet_the_flow_whichever_worker_they_land_on() {
    for node in ["n2", "n1"] {
        for first_on in 0..2 {
            for later_on in 0..2 {
                let (t, mut ps) = frag_node(node, 2);
                let mac = ps[0].cfg.uplink_mac;
                let (data, frags) = client_datagram(&t, mac, 4000, 1234);
                // Later fragments first, on one worker; the first last, on another.
                let input = vec![
                    (later_on, PacketBuf::from_frame(PortId::Uplink, &frags[2])),
                    (later_on, PacketBuf::from_frame(PortId::Uplink, &frags[1])),
                    (first_on, PacketBuf::from_frame(PortId::Uplink, &frags[0])),
                ];
                let (out, _) = drive(&mut ps, &t, 5, input);
                assert_eq!(delivered(&out).payload, data);
                // The flow is on the worker that owns it, and only there.
                let owner = flow::owner_of(CLIENT, 40000, 2);
                assert_eq!(ps[usize::from(owner)].flows.len(), 1);
                assert_eq!(ps[1 - usize::from(owner)].flows.len(), 0);
                // A whole datagram of the same flow after them goes by that flow.
                let whole = crate::testkit::udp_frame(
                    CLIENT_MAC,
                    mac,
                    std::net::Ipv4Addr::from(CLIENT),
                    40000,
                    std::net::Ipv4Addr::from(t.node_addr.octets()),
                    5353,
                    b"again",
                );
                let (out, _) = drive(
                    &mut ps,
                    &t,
                    6,
                    vec![(first_on, PacketBuf::from_frame(PortId::Uplink, &whole))],
                );
                assert_eq!(delivered(&out).payload, b"again");
                let flows: usize = ps.iter().map(|p| p.stats.new_flows as usize).sum();
                assert_eq!(flows, 1);
            }
        }
    }
}

#[test]
fn a_too_big_packet_without_df_is_fragmented_to_the_overlay_mtu() {
    for mtu in [None, Some(1400)] {
        let (t, mut p) = on_n1_established(mtu);
        let mtu = usize::from(mtu.unwrap_or(1450));
        let up = p.cfg.uplink_mac;
        let body: Vec<u8> = (0..1460).map(|i| (i % 253) as u8).collect();
        let seg = tcp_seg(
            (CLIENT_MAC, up),
            CLIENT,
            40000,
            N1,
            8080,
            TcpControl::Psh,
            true,
            None,
            &body,
            false,
        );
        let mut pool = Pool::new(64);
        p.maintain(&t, 1, &mut pool, &mut Burst::new());
        let (out, verdicts) = drive(
            std::slice::from_mut(&mut p),
            &t,
            2,
            vec![(0, PacketBuf::from_frame(PortId::Uplink, &seg))],
        );
        assert_eq!(verdicts, vec![Verdict::Tx(PortId::Uplink); 2]);
        let inner: Vec<Vec<u8>> = out
            .iter()
            .map(|(_, f)| {
                let inner = crate::testkit::decap(f).unwrap().1.to_vec();
                assert!(inner.len() - ETH <= mtu);
                inner
            })
            .collect();
        let whole = crate::testkit::reassemble(&inner).unwrap();
        let got = crate::testkit::parse_ipv4_tcp(&whole).expect("TCP checksum right");
        assert_eq!((u32::from(got.dst), got.dport), (WEB1, 80));
        assert_eq!(got.payload, body);
        assert_eq!(p.stats.fragments_made, 2);
        assert_eq!(p.stats.dropped(DropReason::TooBig), 0);
    }
}

#[test]
fn early_fragments_are_held_within_bounds_and_time_out() {
    let (t, mut ps) = frag_node("n2", 1);
    let mac = ps[0].cfg.uplink_mac;
    let p = &mut ps[0];
    // More early fragments than the worker holds: the rest are refused, typed.
    let mut verdicts = Vec::new();
    for id in 0..(frag::HOLD as u16 + 3) {
        let (_, frags) = client_datagram(&t, mac, 4000, id);
        verdicts.push(run(p, &t, PortId::Uplink, &frags[1]).0);
    }
    assert!(
        verdicts[..frag::HOLD]
            .iter()
            .all(|v| *v == Verdict::Consumed),
        "{verdicts:?}"
    );
    assert!(verdicts[frag::HOLD..]
        .iter()
        .all(|v| *v == Verdict::Drop(DropReason::FragmentTableFull)));
    assert_eq!(p.fragments(1).1, frag::HOLD);
    // Their first fragments never come: the held ones time out, their buffers go back.
    let mut pool = Pool::new(0);
    p.maintain(&t, 600, &mut pool, &mut Burst::new());
    assert_eq!(p.fragments(600).1, 0);
    assert_eq!(
        p.stats.dropped(DropReason::FragmentTimeout),
        frag::HOLD as u64
    );
    // Their buffers are the spares again: as many early fragments can be held anew.
    for id in 100..100 + frag::HOLD as u16 {
        let (_, frags) = client_datagram(&t, mac, 4000, id);
        assert_eq!(run(p, &t, PortId::Uplink, &frags[1]).0, Verdict::Consumed);
    }
    // Without spare buffers a fragment cannot be held: refused, typed.
    let (t2, _) = frag_node("n2", 1);
    let mut bare = Pipeline::new(Config::default(), Arc::new(Neighbors::new(4)));
    let (_, frags) = client_datagram(&t2, bare.cfg.uplink_mac, 4000, 9);
    assert_eq!(
        run(&mut bare, &t2, PortId::Uplink, &frags[1]).0,
        Verdict::Drop(DropReason::NoBuffer)
    );
}

#[test]
fn the_fragment_table_is_bounded_and_other_flows_go_on() {
    let (t, mut ps) = frag_node("n2", 1);
    let mac = ps[0].cfg.uplink_mac;
    let p = &mut ps[0];
    // A flood of first fragments that never complete.
    let mut full = 0;
    let mut pool = Pool::new(64);
    for id in 0..3000u16 {
        let (_, frags) = client_datagram(&t, mac, 4000, id);
        match run(p, &t, PortId::Uplink, &frags[0]).0 {
            Verdict::Drop(DropReason::FragmentTableFull) => full += 1,
            Verdict::Tx(_) => {}
            v => panic!("{v:?}"),
        }
        // As the worker loop: extra frames sent, spares topped up between bursts.
        for (b, _, _) in p.take_extra() {
            pool.put(b);
        }
        p.maintain(&t, 1, &mut pool, &mut Burst::new());
    }
    assert!(full > 0);
    assert!(p.fragments(2).0 <= 1024);
    // A whole datagram still goes through.
    let whole = crate::testkit::udp_frame(
        CLIENT_MAC,
        mac,
        std::net::Ipv4Addr::from(CLIENT),
        40001,
        std::net::Ipv4Addr::from(N2),
        5353,
        b"hello",
    );
    assert!(matches!(
        run(p, &t, PortId::Uplink, &whole).0,
        Verdict::Tx(_)
    ));
    // Entries are forgotten after their lifetime: new datagrams are tracked again.
    let (_, frags) = client_datagram(&t, mac, 4000, 60000);
    let mut burst = Burst::new();
    burst.push(PacketBuf::from_frame(PortId::Uplink, &frags[0]));
    let mut v = Verdicts::new();
    p.process(&t, 5_000, &mut burst, &mut v);
    assert!(matches!(v[0], Verdict::Tx(_)), "{:?}", v[0]);
}

#[test]
fn bad_fragments_are_dropped_by_reason() {
    let (t, mut ps) = frag_node("n2", 1);
    let mac = ps[0].cfg.uplink_mac;
    let p = &mut ps[0];
    let (_, frags) = client_datagram(&t, mac, 4000, 5);
    assert_eq!(
        run(p, &t, PortId::Uplink, &frags[0]).0,
        Verdict::Tx(PortId::Tasks)
    );
    let _ = p.take_extra();
    // The same bytes again: an overlap.
    assert_eq!(
        run(p, &t, PortId::Uplink, &frags[0]).0,
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    let fix = |f: &mut Vec<u8>| crate::testkit::refill_ipv4_checksum(f);
    // Past byte 65,535.
    let mut f = frags[1].clone();
    put16(&mut f, ETH + 6, 0x2000 | 8180);
    fix(&mut f);
    assert_eq!(
        run(p, &t, PortId::Uplink, &f).0,
        Verdict::Drop(DropReason::BadFragment)
    );
    // More fragments follow, but the data is not a multiple of 8 bytes.
    let mut f = frags[1].clone();
    f.truncate(f.len() - 3);
    let n = (f.len() - ETH) as u16;
    put16(&mut f, ETH + 2, n);
    fix(&mut f);
    assert_eq!(
        run(p, &t, PortId::Uplink, &f).0,
        Verdict::Drop(DropReason::BadFragment)
    );
    // A first fragment too short for its TCP header.
    let seg = tcp_seg(
        (CLIENT_MAC, mac),
        CLIENT,
        1,
        N2,
        8080,
        TcpControl::Syn,
        false,
        None,
        b"",
        false,
    );
    let mut f = seg[..ETH + IPV4 + 8].to_vec();
    put16(&mut f, ETH + 2, (IPV4 + 8) as u16);
    put16(&mut f, ETH + 6, 0x2000);
    fix(&mut f);
    assert_eq!(
        run(p, &t, PortId::Uplink, &f).0,
        Verdict::Drop(DropReason::BadFragment)
    );
    // A TCP fragment at offset 8 (RFC 1858's overlap attack).
    let mut f = seg.clone();
    put16(&mut f, ETH + 6, 1);
    fix(&mut f);
    assert_eq!(
        run(p, &t, PortId::Uplink, &f).0,
        Verdict::Drop(DropReason::BadFragment)
    );
    // A fragment of VXLAN from a peer.
    let mut vx = crate::testkit::vxlan_frame(
        [2, 0, 0, 0, 0, 0x13],
        mac,
        std::net::Ipv4Addr::from(0xc0a8_010d),
        std::net::Ipv4Addr::from(N2),
        50000,
        ctl::INGRESS_VNI,
        // A length whose VXLAN payload is a multiple of 8 bytes, as a non-last fragment's.
        &frags[1][..1512],
    );
    put16(&mut vx, ETH + 6, 0x2000);
    fix(&mut vx);
    let (v, _) = run(p, &t, PortId::Uplink, &vx);
    assert_eq!(v, Verdict::Drop(DropReason::Fragment));
    // Other traffic is unaffected: the datagram's own later fragments still go.
    let (out, _) = drive(
        std::slice::from_mut(p),
        &t,
        2,
        vec![
            (0, PacketBuf::from_frame(PortId::Uplink, &frags[1])),
            (0, PacketBuf::from_frame(PortId::Uplink, &frags[2])),
        ],
    );
    assert!(out.iter().all(|(port, _)| *port == PortId::Tasks));
    // The 1500-byte fragment in two pieces for the overlay's 1450, the last one whole.
    assert_eq!(out.len(), 3);
}

#[test]
fn the_pieces_of_a_fragmented_packet_follow_their_frame_in_the_burst() {
    let (t, mut ps) = frag_node("n1", 1);
    let mac = ps[0].cfg.uplink_mac;
    let (data, frags) = client_datagram(&t, mac, 8000, 3);
    let mut burst: Burst = frags
        .iter()
        .map(|f| PacketBuf::from_frame(PortId::Uplink, f))
        .collect();
    let mut v = Verdicts::new();
    ps[0].process(&t, 1, &mut burst, &mut v);
    let extra = ps[0].take_extra();
    // Each 1500-byte fragment became two pieces: its second piece follows it.
    let after: Vec<u8> = extra.iter().map(|e| e.2).collect();
    assert_eq!(after, (0..frags.len() as u8 - 1).collect::<Vec<_>>());
    // Sent as the worker sends them, the receiver sees the datagram in order.
    let mut out = Vec::new();
    let mut ex = extra.into_iter().peekable();
    for (i, b) in burst.iter().enumerate() {
        out.push((PortId::Uplink, b.data().to_vec()));
        while let Some((b, _, _)) = ex.next_if(|e| usize::from(e.2) == i) {
            out.push((PortId::Uplink, b.data().to_vec()));
        }
    }
    let offsets: Vec<u16> = out
        .iter()
        .map(|(_, f)| be16(crate::testkit::decap(f).unwrap().1, ETH + 6) & 0x1fff)
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert_eq!(delivered(&out).payload, data);
}

// ---- tasks on their own VLANs --------------------------------------------------------------

/// The VLAN layout of the isolation tests: `three_nodes` with web.1 on VLAN 101 of n2, web.3
/// beside it on n2 (VLAN 103), and service `db` on its own network `dbnet` (10.0.2.0/24) with
/// db.1 on n2 (VLAN 201).
fn vlan_state() -> ctl::State {
    use std::net::Ipv4Addr as A;
    let mut s = three_nodes();
    s.services[0].tasks[0].vlan = Some(101);
    let mut web3 = crate::testkit::task(
        "web.3",
        "n2",
        &[
            ("ingress", A::new(10, 0, 0, 13)),
            ("appnet", A::new(10, 0, 1, 13)),
        ],
    );
    web3.vlan = Some(103);
    s.services[0].tasks.push(web3);
    let mut dbnet = s.networks[1].clone();
    dbnet.name = "dbnet".into();
    dbnet.vni = 4098;
    dbnet.subnet = ctl::Ipv4Net::new(A::new(10, 0, 2, 0), 24).unwrap();
    dbnet.gateway = A::new(10, 0, 2, 1);
    s.networks.push(dbnet);
    let mut db = ctl::model::Service::new("db");
    db.networks.push(ctl::model::ServiceNetwork {
        network: "dbnet".into(),
        vip: Some(A::new(10, 0, 2, 2)),
    });
    let mut db1 = crate::testkit::task("db.1", "n2", &[("dbnet", A::new(10, 0, 2, 11))]);
    db1.vlan = Some(201);
    db.tasks.push(db1);
    s.services.push(db);
    ctl::validate::validate(&s).unwrap();
    s
}

/// One frame in on `port` and `vlan`: its verdict and the buffer as it leaves.
fn run_vlan(
    p: &mut Pipeline,
    t: &ServiceTable,
    port: PortId,
    vlan: u16,
    f: &[u8],
) -> (Verdict, PacketBuf) {
    let mut burst = Burst::new();
    let mut b = PacketBuf::from_frame(port, f);
    b.vlan = vlan;
    burst.push(b);
    let mut v = Verdicts::new();
    p.process(t, 1, &mut burst, &mut v);
    (v[0], burst.pop().unwrap())
}

#[test]
fn tasks_on_their_own_vlans_speak_only_as_themselves() {
    use crate::testkit;
    use std::net::Ipv4Addr as A;
    let tk = Config::default().tasks_mac;
    let (web1_mac, web3_mac, db1_mac) = (
        [2, 0, 0, 0, 0, 0x11],
        [2, 0, 0, 0, 0, 0x13],
        [2, 0, 0, 0, 0, 0x21],
    );
    let (web1, web3, db1) = (
        A::new(10, 0, 1, 11),
        A::new(10, 0, 1, 13),
        A::new(10, 0, 2, 11),
    );
    let t = ServiceTable::build(&vlan_state(), "n2", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    let mut p = Pipeline::new(Config::default(), neigh.clone());
    let udp = |smac, src, dst| testkit::udp_frame(smac, tk, src, 5000, dst, 7000, b"hi");

    // Each task is learned from its own VLAN.
    for (mac, ip, vlan, peer) in [
        (web1_mac, web1, 101, web3),
        (web3_mac, web3, 103, web1),
        (db1_mac, db1, 201, A::new(10, 0, 2, 1)),
        (web1_mac, A::new(10, 0, 0, 11), 101, A::new(10, 0, 0, 1)),
        (web3_mac, A::new(10, 0, 0, 13), 103, A::new(10, 0, 0, 1)),
    ] {
        let (v, _) = run_vlan(
            &mut p,
            &t,
            PortId::Tasks,
            vlan,
            &testkit::arp_request(mac, ip, peer),
        );
        assert_eq!(v, Verdict::Tx(PortId::Tasks), "{ip} asks for {peer}");
    }
    // A task on its own VLAN hears no one else: meshd answers for its neighbour on the same
    // network (from meshd's MAC, on the asker's VLAN) and carries the traffic between them.
    let (v, b) = run_vlan(
        &mut p,
        &t,
        PortId::Tasks,
        101,
        &testkit::arp_request(web1_mac, web1, web3),
    );
    assert_eq!((v, b.vlan), (Verdict::Tx(PortId::Tasks), 101));
    assert_eq!(
        &b.data()[ETH + 8..ETH + 14],
        &tk,
        "answered with meshd's MAC"
    );
    let (v, b) = run_vlan(&mut p, &t, PortId::Tasks, 101, &udp(web1_mac, web1, web3));
    assert_eq!(
        (v, b.vlan),
        (Verdict::Tx(PortId::Tasks), 103),
        "web.1 to web.3, on web.3's VLAN"
    );
    assert_eq!(&b.data()[0..6], &web3_mac);

    // db.1 claims web.1's address: from its own VLAN, that is not web.1's. Nothing is
    // forwarded, nothing learned, web.1's traffic still reaches web.1.
    let (v, _) = run_vlan(&mut p, &t, PortId::Tasks, 201, &udp(db1_mac, web1, web3));
    assert_eq!(v, Verdict::Drop(DropReason::WrongVlan));
    let (v, _) = run_vlan(
        &mut p,
        &t,
        PortId::Tasks,
        201,
        &testkit::arp_reply(db1_mac, web1, tk, A::new(10, 0, 1, 1)),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongVlan));
    // ... and untagged, as a task off the VLANs would send it.
    let (v, _) = run_vlan(&mut p, &t, PortId::Tasks, 0, &udp(db1_mac, web1, web3));
    assert_eq!(v, Verdict::Drop(DropReason::WrongVlan));
    // ... and as a later fragment of one of web.1's datagrams.
    let big = testkit::udp_frame(db1_mac, tk, web1, 5000, web3, 7000, &[7u8; 3000]);
    let pieces = testkit::fragment(&big, 1400, 77);
    let (v, _) = run_vlan(&mut p, &t, PortId::Tasks, 201, &pieces[1]);
    assert_eq!(v, Verdict::Drop(DropReason::WrongVlan));
    assert_eq!(p.stats.dropped(DropReason::WrongVlan), 4);
    assert_eq!(neigh.get(0x0a00_010b), Some(web1_mac));
    let (v, b) = run_vlan(&mut p, &t, PortId::Tasks, 103, &udp(web3_mac, web3, web1));
    assert_eq!((v, b.vlan), (Verdict::Tx(PortId::Tasks), 101));
    assert_eq!(&b.data()[0..6], &web1_mac);

    // Across networks only by meshd's rules: none between dbnet and appnet.
    let (v, _) = run_vlan(&mut p, &t, PortId::Tasks, 201, &udp(db1_mac, db1, web1));
    assert_eq!(v, Verdict::Drop(DropReason::CrossNetwork));

    // From the uplink: a client's SYN to the published port reaches web.1 or web.3 on its VLAN.
    let cmac = [2, 0, 0, 0, 0, 0x99];
    let up = Config::default().uplink_mac;
    let mut local = 0;
    for sport in 40000..40012 {
        let syn = testkit::tcp_frame(
            cmac,
            up,
            A::new(10, 9, 0, 9),
            sport,
            A::new(192, 168, 1, 12),
            8080,
            testkit::tcp_flags::SYN,
            1,
            0,
            b"",
        );
        let (v, b) = run_vlan(&mut p, &t, PortId::Uplink, 0, &syn);
        if v == Verdict::Tx(PortId::Tasks) {
            let want = if b.data()[0..6] == web1_mac { 101 } else { 103 };
            assert_eq!(b.vlan, want, "to {:?}", &b.data()[0..6]);
            local += 1;
        }
    }
    assert!(local > 0, "no SYN went to a local task");
}

// ---- encrypted overlays: sealed between nodes, nothing else opens -------------------------

/// `udp_published` with its ingress network encrypted under key `id` (bytes `b`).
fn sealed_state(id: u32, b: u8) -> ctl::State {
    let mut s = udp_published();
    s.networks[0].encryption = Some(ctl::Encryption::single(id, ctl::Secret([b; 32])));
    s
}

/// n2 with two workers, its uplink MAC the one the others know it by and n1's learned.
fn sealed_n2(state: &ctl::State) -> (ServiceTable, Vec<Pipeline>) {
    let (t, mut ps) = node_of(state, "n2", 2);
    for p in &mut ps {
        p.cfg.uplink_mac = [2, 0, 0, 0, 0, 0x12];
    }
    ps[0].neighbors().learn(N1, Config::default().uplink_mac);
    (t, ps)
}

#[test]
fn an_encrypted_network_is_sealed_between_nodes_and_what_does_not_open_is_refused() {
    let state = sealed_state(1, 7);
    let (t1, mut n1) = node_of(&state, "n1", 1);
    let (t2, mut n2) = sealed_n2(&state);
    assert!(t1.sealed && t1.net(0).keys.is_some());
    // A client's 4000-byte datagram to n1's published port: fragmented to the encrypted
    // network's MTU (1406: 1500 less VXLAN's 50 and the seal's 44), each piece sealed.
    let (data, frags) = client_datagram(&t1, n1[0].cfg.uplink_mac, 4000, 91);
    let input = frags
        .iter()
        .map(|f| (0, PacketBuf::from_frame(PortId::Uplink, f)))
        .collect();
    let (wire, _) = drive(&mut n1, &t1, 5, input);
    assert!(wire.len() >= 3);
    let marker: Vec<u8> = data[1000..1016].to_vec();
    for (port, f) in &wire {
        assert_eq!(*port, PortId::Uplink);
        assert!(f.len() <= ETH + 1500, "longer than the link: {}", f.len());
        assert!(
            !f.windows(16).any(|w| w == &marker[..]),
            "the payload is readable on the underlay"
        );
        // To anyone without the key it is no VXLAN payload that parses as a frame.
        let (vni, body) = crate::testkit::decap(f).expect("VXLAN outside");
        assert_eq!(vni, ctl::INGRESS_VNI);
        assert!(crate::testkit::parse_ipv4_udp(body).is_none());
    }
    // n2 opens every piece (on whichever worker it lands) and the task gets the datagram.
    let arrive = || {
        wire.iter()
            .enumerate()
            .map(|(i, (_, f))| (i % 2, PacketBuf::from_frame(PortId::Uplink, f)))
            .collect()
    };
    let (out, seen) = drive(&mut n2, &t2, 5, arrive());
    assert!(
        seen.iter().all(|v| !matches!(v, Verdict::Drop(_))),
        "{seen:?}"
    );
    let got = delivered(&out);
    assert_eq!(got.payload, data);
    assert_eq!(got.dport, 53);
    // The same frames again (recorded and replayed by a host on the underlay): refused.
    let (out, seen) = drive(&mut n2, &t2, 5, arrive());
    assert!(out.is_empty());
    assert!(
        seen.iter()
            .all(|v| *v == Verdict::Drop(DropReason::SealReplayed)),
        "{seen:?}"
    );
    // Plain VXLAN from the peer's address and MAC (what forged the unencrypted overlay: what
    // would be the key id reads as one n2 lacks), a frame sealed with another key under the
    // same id, and one with a key id n2 lacks.
    let make = |state: &ctl::State, id: u16| -> Vec<u8> {
        let (t, mut p) = node_of(state, "n1", 1);
        let (_, fr) = client_datagram(&t, Config::default().uplink_mac, 200, id);
        let input = vec![(0, PacketBuf::from_frame(PortId::Uplink, &fr[0]))];
        let (out, _) = drive(&mut p, &t, 5, input);
        out[0].1.clone()
    };
    for (f, why) in [
        (make(&udp_published(), 92), DropReason::SealUnknownKey),
        (make(&sealed_state(1, 8), 93), DropReason::SealForged),
        (make(&sealed_state(2, 7), 94), DropReason::SealUnknownKey),
    ] {
        let input = vec![(0, PacketBuf::from_frame(PortId::Uplink, &f))];
        let (out, seen) = drive(&mut n2, &t2, 5, input);
        assert!(out.is_empty(), "{why:?}");
        assert_eq!(seen, vec![Verdict::Drop(why)]);
    }
    let count = |r: DropReason| n2.iter().map(|p| p.stats.drops[r as usize]).sum::<u64>();
    assert_eq!(count(DropReason::SealReplayed), wire.len() as u64);
    assert_eq!(count(DropReason::SealForged), 1);
    assert_eq!(count(DropReason::SealUnknownKey), 2);
}

/// A UDP datagram to a task whose port nothing listens on comes back as an ICMP port
/// unreachable from the task: the worker that owns the flow (whichever worker the ICMP
/// arrives on) counts it against the task and ends the flow, so the client's next datagram is
/// balanced again; a datagram back from the task after that is news that it serves. What is
/// not such evidence is not taken: "fragmentation needed", and an ICMP about another task's flow.
#[test]
fn an_icmp_unreachable_from_a_task_is_passive_healths_evidence_for_udp() {
    use super::passive::Seen;
    use crate::testkit::{icmp_unreachable, udp_frame};
    use std::net::Ipv4Addr;
    let (t, mut ps) = frag_node("n2", 2);
    let tk = ps[0].cfg.tasks_mac;
    let up = ps[0].cfg.uplink_mac;
    let web1_mac = [2, 0, 0, 0, 0, 0x11];
    let uid = t.tasks[t.task_by_name("web.1").unwrap() as usize].uid;
    let node = Ipv4Addr::from(t.node_addr.octets());
    // Datagrams from new client ports until one reaches web.1 here: what meshd sent it.
    let mut sport = 30000;
    let mut to_web1 = |ps: &mut [Pipeline]| loop {
        sport += 1;
        let d = udp_frame(
            CLIENT_MAC,
            up,
            Ipv4Addr::from(CLIENT),
            sport,
            node,
            5353,
            b"q",
        );
        let (out, _) = drive(
            ps,
            &t,
            10,
            vec![(0, PacketBuf::from_frame(PortId::Uplink, &d))],
        );
        if let [(PortId::Tasks, f)] = &out[..] {
            let seen = crate::testkit::parse_ipv4_udp(f).unwrap();
            assert_eq!(seen.dst, Ipv4Addr::from(WEB1));
            return (f.clone(), seen, sport);
        }
    };
    let owner_of_flow = |ps: &[Pipeline], sport: u16| {
        ps.iter()
            .position(|p| {
                p.flows
                    .contains(&FlowKey::new(UDP, CLIENT, sport, t.node_addr.into(), 5353))
            })
            .unwrap()
    };
    let events = |ps: &[Pipeline]| -> Vec<(u64, Seen)> {
        ps.iter()
            .flat_map(|p| p.passive.events.iter().copied())
            .collect()
    };
    let icmp = |code: u8, from: u32, to: Ipv4Addr, frame: &[u8]| {
        icmp_unreachable(web1_mac, tk, Ipv4Addr::from(from), to, code, frame)
    };

    let (sent, seen, sport) = to_web1(&mut ps);
    let owner = owner_of_flow(&ps, sport);
    let node_addr = node;
    // "Fragmentation needed" is path MTU discovery, not a failure: not told, the flow stays,
    // but the client hears of it by the flow (from the published address, about what it
    // sent), with the MTU; a task cannot speak of a flow that is not its own.
    let frag_needed = crate::testkit::icmp_error(
        web1_mac,
        tk,
        (Ipv4Addr::from(WEB1), seen.src),
        (3, 4, 1400),
        &sent,
    );
    let (out, _) = drive(
        &mut ps,
        &t,
        20,
        vec![(
            1 - owner,
            PacketBuf::from_frame(PortId::Tasks, &frag_needed),
        )],
    );
    let [(PortId::Uplink, back)] = &out[..] else {
        panic!("the error to the client: {out:?}");
    };
    let e = crate::testkit::parse_icmp4_error(back).expect("ICMP error, checksums right");
    assert_eq!(
        (e.dst_mac, e.src, e.dst, e.kind, e.code, e.rest),
        (CLIENT_MAC, node_addr, Ipv4Addr::from(CLIENT), 3, 4, 1400)
    );
    assert_eq!(
        e.quoted,
        ((Ipv4Addr::from(CLIENT), sport), (node_addr, 5353))
    );
    assert!(ps[owner]
        .flows
        .contains(&FlowKey::new(UDP, CLIENT, sport, t.node_addr.into(), 5353)));
    let f = icmp(3, 0x0a00_000c, seen.src, &sent);
    let (_, _) = drive(
        &mut ps,
        &t,
        20,
        vec![(1 - owner, PacketBuf::from_frame(PortId::Tasks, &f))],
    );
    assert!(events(&ps).is_empty(), "{:?}", events(&ps));
    assert_eq!(ps[owner].stats.task_unreachable, 0);
    // Port unreachable, arriving on the other worker: handed to the flow's owner, told, and
    // the flow ends; the client hears of it from the published address, about what it sent
    // (its own address and port, the published address and port: what its socket knows).
    let f = icmp(3, WEB1, seen.src, &sent);
    let (out, verdicts) = drive(
        &mut ps,
        &t,
        30,
        vec![(1 - owner, PacketBuf::from_frame(PortId::Tasks, &f))],
    );
    assert!(
        verdicts.contains(&Verdict::Handoff(owner as u16)),
        "{verdicts:?}"
    );
    assert_eq!(events(&ps), [(uid, Seen::Unreachable)]);
    assert_eq!(ps[owner].stats.task_unreachable, 1);
    let [(PortId::Uplink, back)] = &out[..] else {
        panic!("the error to the client: {out:?}");
    };
    let e = crate::testkit::parse_icmp4_error(back).expect("ICMP error, checksums right");
    let client = Ipv4Addr::from(CLIENT);
    assert_eq!(
        (e.dst_mac, e.src, e.dst, e.kind, e.code),
        (CLIENT_MAC, node, client, 3, 3)
    );
    assert_eq!(e.quoted, ((client, sport), (node, 5353)));
    // The quoted UDP checksum is the client's own again.
    let d = udp_frame(CLIENT_MAC, up, client, sport, node, 5353, b"q");
    assert_eq!(e.quoted_udp_checksum, be16(&d, 14 + 20 + 6));
    assert!(
        !ps[owner]
            .flows
            .contains(&FlowKey::new(UDP, CLIENT, sport, t.node_addr.into(), 5353)),
        "the UDP flow ended"
    );
    // A new flow to web.1 that it answers: the task serves again.
    let (_, seen, _) = to_web1(&mut ps);
    let reply = udp_frame(web1_mac, tk, seen.dst, 53, seen.src, seen.sport, b"a");
    let (out, _) = drive(
        &mut ps,
        &t,
        40,
        vec![(0, PacketBuf::from_frame(PortId::Tasks, &reply))],
    );
    assert!(matches!(&out[..], [(PortId::Uplink, _)]), "{out:?}");
    assert_eq!(
        events(&ps),
        [(uid, Seen::Unreachable), (uid, Seen::Answered)]
    );
}

/// A task's port unreachable about a datagram of an outside client whose address is kept
/// (`--client-ip keep`), the task on n2, the ingress n1: n2 sends it back into VXLAN to n1 as
/// the task sent it (the return route its replies take), and n1, whose flow it is, judges it
/// (the flow ends, passive health is told) and sends it to the client about what the client
/// sent (its address and port, n1's published address and port). Two workers on each node,
/// the error arriving on the worker that does not own the flow.
#[test]
fn a_tasks_icmp_error_about_a_kept_client_goes_back_to_the_ingress_node_and_on_to_the_client() {
    use crate::testkit::{icmp_unreachable, parse_icmp4_error, parse_ipv4_udp, udp_frame};
    use std::net::Ipv4Addr;
    let mut s = udp_published();
    s.services[0].client_ip = ClientIpMode::Keep;
    let (t1, mut n1) = node_of(&s, "n1", 2);
    let (t2, mut n2) = node_of(&s, "n2", 2);
    // Both nodes' uplinks have the default MAC: n2 knows n1's.
    let (up, tk) = (n1[0].cfg.uplink_mac, n2[0].cfg.tasks_mac);
    n2[0].neigh.learn(N1, up);
    let web1_mac = [2, 0, 0, 0, 0, 0x11];
    let (client, n1_addr) = (
        Ipv4Addr::from(CLIENT),
        Ipv4Addr::from(t1.node_addr.octets()),
    );
    let outer_dst = |f: &[u8]| u32::from_be_bytes(f[ETH + 16..ETH + 20].try_into().unwrap());
    // New client ports until n1 balances one to web.1 on n2: what web.1 received there.
    let (sport, got) = (30001..30200)
        .find_map(|sport| {
            let d = udp_frame(CLIENT_MAC, up, client, sport, n1_addr, 5353, b"q");
            let (out, _) = drive(
                &mut n1,
                &t1,
                10,
                vec![(0, PacketBuf::from_frame(PortId::Uplink, &d))],
            );
            let [(PortId::Uplink, vx)] = &out[..] else {
                return None;
            };
            if outer_dst(vx) != N2 {
                return None;
            }
            // To n2's MAC as n1 knows it (`node_of`): n2's uplink has the default one.
            let mut vx = vx.clone();
            vx[..6].copy_from_slice(&up);
            let (out, v) = drive(
                &mut n2,
                &t2,
                10,
                vec![(0, PacketBuf::from_frame(PortId::Uplink, &vx))],
            );
            let [(PortId::Tasks, got)] = &out[..] else {
                panic!("to web.1: {out:?} {v:?}");
            };
            Some((sport, got.clone()))
        })
        .expect("a datagram balanced to web.1");
    let seen = parse_ipv4_udp(&got).unwrap();
    assert_eq!(
        (seen.src, seen.sport),
        (client, sport),
        "the client's address kept"
    );
    let key = FlowKey::new(UDP, CLIENT, sport, t1.node_addr.into(), 5353);
    let owner = n1.iter().position(|p| p.flows.contains(&key)).unwrap();
    let owner2 = n2
        .iter()
        .position(|p| !p.flows.is_empty())
        .expect("n2's return-route flow");
    // web.1's port unreachable, on n2's other worker: into VXLAN to n1, as web.1 sent it.
    let unreachable = icmp_unreachable(web1_mac, tk, Ipv4Addr::from(WEB1), client, 3, &got);
    let (out, verdicts) = drive(
        &mut n2,
        &t2,
        20,
        vec![(
            1 - owner2,
            PacketBuf::from_frame(PortId::Tasks, &unreachable),
        )],
    );
    assert!(
        verdicts.contains(&Verdict::Handoff(owner2 as u16)),
        "{verdicts:?}"
    );
    let [(PortId::Uplink, vx)] = &out[..] else {
        panic!("back to n1: {out:?} {verdicts:?}");
    };
    assert_eq!(outer_dst(vx), N1);
    let inner = vxlan::ENCAP_LEN + ETH;
    assert_eq!(
        &vx[inner + 12..],
        &unreachable[ETH + 12..],
        "as web.1 sent it"
    );
    assert_eq!(
        vx[inner + 8],
        unreachable[ETH + 8] - 1,
        "routed: its TTL less one"
    );
    // On n1 (from n2's MAC as n1 knows it): to the client by the flow, judged.
    let mut vx = vx.clone();
    vx[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x12]);
    let (out, verdicts) = drive(
        &mut n1,
        &t1,
        20,
        vec![(1 - owner, PacketBuf::from_frame(PortId::Uplink, &vx))],
    );
    assert!(
        verdicts.contains(&Verdict::Handoff(owner as u16)),
        "{verdicts:?}"
    );
    let [(PortId::Uplink, back)] = &out[..] else {
        panic!("the error to the client: {out:?} {verdicts:?}");
    };
    let e = parse_icmp4_error(back).expect("ICMP error, checksums right");
    assert_eq!(
        (e.dst_mac, e.src, e.dst, e.kind, e.code),
        (CLIENT_MAC, n1_addr, client, 3, 3)
    );
    assert_eq!(
        e.quoted,
        ((client, sport), (n1_addr, 5353)),
        "what the client sent"
    );
    assert_eq!(n1[owner].stats.task_unreachable, 1);
    assert!(!n1[owner].flows.contains(&key), "the UDP flow ended");
    assert_eq!(n2.iter().map(|p| p.stats.task_unreachable).sum::<u64>(), 0);
}

/// An ICMP error from a router on the way to a client (a "fragmentation needed" about a
/// reply too big for a link past the node) reaches the flow's task, whichever worker it
/// arrives on, about what the task sent: from the address the task knows the client by,
/// quoting its own reply (its address and port, the client's as it sees them, its checksum),
/// the MTU kept; to a task on another node inside VXLAN. An error about no flow of the node,
/// one quoting a packet this node did not send, and an echo request go to the host as before.
#[test]
fn an_icmp_error_from_the_uplink_about_a_reply_reaches_the_task_about_what_it_sent() {
    use crate::testkit::{icmp_echo, icmp_error, parse_icmp4_error, parse_ipv4_udp, udp_frame};
    use std::net::Ipv4Addr;
    let (t, mut ps) = frag_node("n2", 2);
    let up = ps[0].cfg.uplink_mac;
    let node = Ipv4Addr::from(t.node_addr.octets());
    let client = Ipv4Addr::from(CLIENT);
    let router = Ipv4Addr::new(10, 9, 0, 1);
    let router_mac = [2, 0, 0, 0, 0, 0x98];
    // New client ports until one flow reaches web.1 here and one web.2 over VXLAN: what each
    // task received (behind VXLAN's outer headers for web.2).
    let (mut local, mut remote) = (None, None);
    for sport in 30001..30200 {
        let d = udp_frame(CLIENT_MAC, up, client, sport, node, 5353, b"q");
        let (out, _) = drive(
            &mut ps,
            &t,
            10,
            vec![(0, PacketBuf::from_frame(PortId::Uplink, &d))],
        );
        match &out[..] {
            [(PortId::Tasks, f)] if local.is_none() => local = Some((sport, f.clone(), 0)),
            [(PortId::Uplink, f)] if remote.is_none() => {
                remote = Some((sport, f.clone(), vxlan::ENCAP_LEN));
            }
            _ => {}
        }
        if local.is_some() && remote.is_some() {
            break;
        }
    }
    let owner = |sport: u16| {
        let key = FlowKey::new(UDP, CLIENT, sport, t.node_addr.into(), 5353);
        ps.iter().position(|p| p.flows.contains(&key)).unwrap()
    };
    let (local, remote) = (local.unwrap(), remote.unwrap());
    let local_port = local.0;
    let owners = [local.0, remote.0].map(owner);
    let frag_needed = |sport: u16, from: Ipv4Addr| {
        // The task's reply as it left the node, and the router's error about it.
        let r = udp_frame(up, router_mac, from, 5353, client, sport, b"reply");
        icmp_error(router_mac, up, (router, node), (3, 4, 1280), &r)
    };
    for ((sport, got, encap), owner) in [local, remote].into_iter().zip(owners) {
        let seen = parse_ipv4_udp(&got[encap..]).unwrap();
        let f = frag_needed(sport, node);
        let (out, verdicts) = drive(
            &mut ps,
            &t,
            20,
            vec![(1 - owner, PacketBuf::from_frame(PortId::Uplink, &f))],
        );
        assert!(
            verdicts.contains(&Verdict::Handoff(owner as u16)),
            "{verdicts:?}"
        );
        let [(port, e)] = &out[..] else {
            panic!("the error to the task: {out:?}");
        };
        assert_eq!(
            *port,
            if encap == 0 {
                PortId::Tasks
            } else {
                PortId::Uplink
            }
        );
        if encap > 0 {
            // Into VXLAN for web.2: to the next hop, VTEP and VNI its datagram went to.
            for r in [0..6, 30..34, 46..50] {
                assert_eq!(e[r.clone()], got[r]);
            }
        }
        let e = parse_icmp4_error(&e[encap..]).expect("ICMP error, checksums right");
        assert_eq!(
            (e.dst_mac, e.src, e.dst, e.kind, e.code, e.rest),
            (
                got[encap..encap + 6].try_into().unwrap(),
                seen.src,
                seen.dst,
                3,
                4,
                1280
            )
        );
        assert_eq!(
            e.quoted,
            ((seen.dst, seen.dport), (seen.src, seen.sport)),
            "the task's own reply"
        );
        let sent = udp_frame(up, up, seen.dst, seen.dport, seen.src, seen.sport, b"reply");
        assert_eq!(e.quoted_udp_checksum, be16(&sent, 14 + 20 + 6));
    }
    assert_eq!(ps.iter().map(|p| p.stats.icmp_to_task).sum::<u64>(), 2);
    // Not about a flow here: a port no client used, a packet from another address; not an
    // error: an echo request. The host has them, as it had every ICMP before.
    let sport = local_port;
    let echo = icmp_echo(router_mac, up, router, node, 7, 1, b"ping");
    for f in [
        frag_needed(sport + 500, node),
        frag_needed(sport, Ipv4Addr::new(192, 168, 1, 99)),
        echo,
    ] {
        for w in 0..2 {
            let (out, verdicts) = drive(
                &mut ps,
                &t,
                30,
                vec![(w, PacketBuf::from_frame(PortId::Uplink, &f))],
            );
            assert!(out.is_empty(), "{out:?}");
            // (Handed first to the worker that would own its flow, if it had one.)
            let (last, before) = verdicts.split_last().unwrap();
            assert_eq!(
                *last,
                Verdict::Host(HostReason::NodeAddress),
                "{verdicts:?}"
            );
            assert!(
                before.iter().all(|v| matches!(v, Verdict::Handoff(_))),
                "{verdicts:?}"
            );
        }
    }
    assert_eq!(ps.iter().map(|p| p.stats.icmp_to_task).sum::<u64>(), 2);
}

/// Port 53 over UDP may be published (a DNS service): clients reach it on the node's address,
/// while meshd's own resolver answers on the networks' gateways, which a published port never
/// covers. Both at once, on the same node.
#[test]
fn a_published_udp_53_and_the_gateways_resolver_do_not_meet() {
    use crate::testkit::udp_frame;
    use std::net::Ipv4Addr;
    let mut s = three_nodes();
    s.services[0].ports.push(ctl::model::PublishedPort {
        protocol: ctl::model::Protocol::Udp,
        published: 53,
        target: 53,
        mode: ctl::model::PublishMode::Ingress,
    });
    let (t, mut ps) = node_of(&s, "n2", 1);
    let up = ps[0].cfg.uplink_mac;
    let tk = ps[0].cfg.tasks_mac;
    let node = Ipv4Addr::from(t.node_addr.octets());
    // A client's query to the node's port 53: to a task of web.
    let q = udp_frame(
        CLIENT_MAC,
        up,
        Ipv4Addr::from(CLIENT),
        40053,
        node,
        53,
        b"q",
    );
    let (out, verdicts) = drive(
        &mut ps,
        &t,
        10,
        vec![(0, PacketBuf::from_frame(PortId::Uplink, &q))],
    );
    assert!(
        matches!(verdicts[..], [Verdict::Tx(_)]),
        "the published port: {verdicts:?}"
    );
    assert!(!out.is_empty());
    // web.1's query to its gateway: meshd's resolver (the host side).
    let gw = t.networks[0].gateway;
    let q = udp_frame(
        [2, 0, 0, 0, 0, 0x11],
        tk,
        Ipv4Addr::from(WEB1),
        40054,
        Ipv4Addr::from(gw.octets()),
        53,
        b"q",
    );
    let (_, verdicts) = drive(
        &mut ps,
        &t,
        20,
        vec![(0, PacketBuf::from_frame(PortId::Tasks, &q))],
    );
    assert!(
        matches!(verdicts[..], [Verdict::Host(_)]),
        "the gateway's resolver: {verdicts:?}"
    );
}

// ---- conn ls / conn rm: a worker's walk of its flow table ------------------------------

/// Serves `job` to its end, counting the chunks it took.
pub(super) fn serve_all(p: &mut Pipeline, job: &mut crate::conn::Job, now: u64) -> usize {
    let mut chunks = 1;
    while !p.serve(job, now) {
        chunks += 1;
        assert!(chunks < 100_000, "the walk never ends");
    }
    chunks
}

pub(super) fn conn_job(
    t: &ServiceTable,
    f: ctl::proto::ConnFilter,
    remove: bool,
) -> crate::conn::Job {
    let m = crate::conn::Matcher::new(&f, t).unwrap();
    crate::conn::Job::new(m, remove, 64)
}

#[test]
fn a_walk_lists_the_flows_it_matches_with_their_state_and_counts_and_rm_resets_them() {
    use ctl::proto::{ConnFilter, ConnState};
    let (t, mut p) = on_n2(None);
    p.cfg.flow_accounting = true;
    let (up, tk) = (p.cfg.uplink_mac, p.cfg.tasks_mac);
    let web1 = [2, 0, 0, 0, 0, 0x11];
    let other = 0x0a09_0010;
    // A client's connection to web.1 (local here), handshake and one segment of data.
    let mut sport = 41000;
    let to = loop {
        sport += 1;
        let syn = tcp_seg(
            (CLIENT_MAC, up),
            CLIENT,
            sport,
            N2,
            8080,
            TcpControl::Syn,
            false,
            None,
            b"",
            true,
        );
        let (v, out) = run(&mut p, &t, PortId::Uplink, &syn);
        if v == Verdict::Tx(PortId::Tasks) {
            break parse_ipv4(&out, ETH, true).unwrap();
        }
    };
    let synack = tcp_seg(
        (web1, tk),
        WEB1,
        80,
        to.src,
        to.sport,
        TcpControl::Syn,
        true,
        None,
        b"",
        true,
    );
    assert_eq!(
        run(&mut p, &t, PortId::Tasks, &synack).0,
        Verdict::Tx(PortId::Uplink)
    );
    let mut sent = 0u64;
    for payload in [&b""[..], &b"GET / HTTP/1.0\r\n\r\n"[..]] {
        let seg = tcp_seg(
            (CLIENT_MAC, up),
            CLIENT,
            sport,
            N2,
            8080,
            TcpControl::None,
            true,
            None,
            payload,
            true,
        );
        sent += seg.len() as u64;
        assert_eq!(
            run(&mut p, &t, PortId::Uplink, &seg).0,
            Verdict::Tx(PortId::Tasks)
        );
    }
    // Another client's SYNs, never answered: half-open flows.
    for k in 0..3 {
        let syn = tcp_seg(
            (CLIENT_MAC, up),
            other,
            50000 + k,
            N2,
            8080,
            TcpControl::Syn,
            false,
            None,
            b"",
            true,
        );
        run(&mut p, &t, PortId::Uplink, &syn);
    }
    let total = p.flows.len() as u64;
    assert!(total >= 4, "{total}");

    // Everything: every flow, once; the table is walked in many chunks.
    let mut all = conn_job(&t, ConnFilter::default(), false);
    assert!(serve_all(&mut p, &mut all, 1) > 1, "a walk takes chunks");
    assert_eq!(all.matched(), total);
    assert_eq!(all.rows().len() as u64, total);

    // The established one, with its addresses, state and counts both ways.
    let f = ConnFilter {
        state: vec![ConnState::Established],
        ..ConnFilter::default()
    };
    let mut est = conn_job(&t, f, false);
    serve_all(&mut p, &mut est, 1500);
    assert_eq!(est.rows().len(), 1);
    let c = crate::conn::conn_of(&t, 0, &est.rows()[0], true);
    assert_eq!(c.client.to_string(), format!("10.9.0.9:{sport}"));
    assert_eq!(c.service_addr.to_string(), "192.168.1.12:8080");
    assert_eq!(
        (c.service.as_deref(), c.task.as_deref()),
        (Some("web"), Some("web.1"))
    );
    assert_eq!(c.task_addr.to_string(), "10.0.0.11:80");
    assert_eq!(
        c.source,
        std::net::SocketAddr::from((std::net::Ipv4Addr::from(to.src), to.sport))
    );
    assert_eq!(c.state, ConnState::Established);
    // The SYN, then the ACK and the request (`sent`): the SYN is a frame without payload.
    assert_eq!(c.packets_in, Some(3), "SYN, ACK and the request");
    assert_eq!(c.bytes_in, Some(sent + (ETH + IPV4 + 20) as u64));
    assert_eq!(
        (c.packets_out, c.bytes_out),
        (Some(1), Some(synack.len() as u64))
    );
    // Without --flow-accounting, nothing is counted and nothing is shown.
    assert_eq!(
        crate::conn::conn_of(&t, 0, &est.rows()[0], false).packets_in,
        None
    );
    assert_eq!(c.idle_ms, 1499);

    // By client, by task, by protocol: what matches and no more.
    let by_client = ConnFilter {
        client: Some("10.9.0.16/32".parse().unwrap()),
        ..ConnFilter::default()
    };
    let mut j = conn_job(&t, by_client.clone(), false);
    serve_all(&mut p, &mut j, 1);
    assert_eq!(j.matched(), 3);
    assert!(j
        .rows()
        .iter()
        .all(|r| crate::conn::state_of(&r.flow) == ConnState::SynSent));
    let mut j = conn_job(
        &t,
        ConnFilter {
            protocol: Some(ctl::model::Protocol::Udp),
            ..ConnFilter::default()
        },
        false,
    );
    serve_all(&mut p, &mut j, 1);
    assert_eq!(j.matched(), 0);
    // Rows stop at the room the asker gave; the count goes on.
    let m = crate::conn::Matcher::new(&ConnFilter::default(), &t).unwrap();
    let mut j = crate::conn::Job::new(m, false, 2);
    serve_all(&mut p, &mut j, 1);
    assert_eq!((j.rows().len(), j.matched()), (2, total));
    // A task or service the node does not have is an error, not an empty list.
    let e = crate::conn::Matcher::new(
        &ConnFilter {
            task: Some("web.9".into()),
            ..ConnFilter::default()
        },
        &t,
    )
    .unwrap_err();
    assert_eq!(e.0, ctl::proto::ErrorCode::NotFound);

    // conn rm of the established client: its flow goes and it gets a RST in its window.
    let only = ConnFilter {
        client: Some("10.9.0.9/32".parse().unwrap()),
        ..ConnFilter::default()
    };
    let mut rm = conn_job(&t, only.clone(), true);
    serve_all(&mut p, &mut rm, 2000);
    assert_eq!((rm.removed(), rm.matched()), (1, 1));
    assert_eq!(p.flows.len() as u64, total - 1);
    assert_eq!(p.stats.flows_removed, 1);
    let mut pool = Pool::new(64);
    let mut out = Burst::new();
    p.maintain(&t, 2000, &mut pool, &mut out);
    let rst: Vec<_> = out
        .iter()
        .filter_map(|b| {
            let l3 = parse_ipv4(b.data(), ETH, true).ok()?;
            (l3.proto == TCP && l3.flags & flow::tcp::RST != 0).then_some(l3)
        })
        .collect();
    assert_eq!(rst.len(), 1, "one RST");
    assert_eq!(
        (rst[0].src, rst[0].sport, rst[0].dst, rst[0].dport),
        (N2, 8080, CLIENT, sport),
        "from the published port to the client"
    );
    assert_eq!(p.stats.resets_sent, 1);
    // A second rm of it finds nothing (it just ended): nothing else is touched.
    let mut again = conn_job(&t, only, true);
    serve_all(&mut p, &mut again, 2000);
    assert_eq!(again.removed(), 0);
    assert_eq!(p.flows.len() as u64, total - 1);
    // The next segment of the ended connection is not forwarded as before: no flow holds it.
    let seg = tcp_seg(
        (CLIENT_MAC, up),
        CLIENT,
        sport,
        N2,
        8080,
        TcpControl::None,
        true,
        None,
        b"more",
        true,
    );
    assert_ne!(
        run(&mut p, &t, PortId::Uplink, &seg).0,
        Verdict::Tx(PortId::Tasks)
    );
}

// ---- schedulers: wrr and source-IP affinity, frames through the pipeline ----------------

/// `three_nodes` with web.1 (n2) at weight 3 and web.2 (n3) at weight 1, balanced by
/// `scheduler`, with source-IP affinity when `affinity_s` is given.
fn scheduled(scheduler: ctl::model::SchedulerKind, affinity_s: Option<u32>) -> ctl::model::State {
    let mut s = three_nodes();
    let web = &mut s.services[0];
    web.scheduler = scheduler;
    web.tasks[0].weight = 3;
    web.tasks[1].weight = 1;
    web.affinity = affinity_s.map(|timeout_s| ctl::model::Affinity::ClientIp { timeout_s });
    s
}

/// A client's SYN to `node`'s published port 8080, on the worker that owns it.
fn syn_to(node: u32, client: u32, sport: u16, workers: u16) -> (usize, PacketBuf) {
    let f = tcp_seg(
        (CLIENT_MAC, Config::default().uplink_mac),
        client,
        sport,
        node,
        8080,
        TcpControl::Syn,
        false,
        None,
        b"",
        false,
    );
    (
        usize::from(flow::owner_of(client, sport, workers)),
        PacketBuf::from_frame(PortId::Uplink, &f),
    )
}

/// The task address each frame sent went to (the inner destination of VXLAN, else the
/// frame's own), in order.
fn task_of(out: &[(PortId, Vec<u8>)]) -> Vec<u32> {
    out.iter()
        .map(|(_, f)| {
            let l3 = parse_ipv4(f, ETH, true).unwrap();
            if l3.proto == UDP && l3.dport == 4789 {
                parse_ipv4(f, vxlan::ENCAP_LEN + ETH, true).unwrap().dst
            } else {
                l3.dst
            }
        })
        .collect()
}

#[test]
fn wrr_spreads_new_connections_by_weight_interleaved_through_the_pipeline() {
    use ctl::model::SchedulerKind;
    // One worker: exactly 3 to 1, and within one connection of that after every SYN.
    let (t, mut ps) = node_of(&scheduled(SchedulerKind::Wrr, None), "n1", 1);
    let input: Vec<_> = (0..40u32)
        .map(|i| syn_to(N1, 0x0a09_0100 + i, 40000, 1))
        .collect();
    let (out, seen) = drive(&mut ps, &t, 1, input);
    assert!(
        seen.iter().all(|v| *v == Verdict::Tx(PortId::Uplink)),
        "{seen:?}"
    );
    let to = task_of(&out);
    assert_eq!(to.len(), 40);
    let mut web1 = 0i64;
    for (k, &a) in to.iter().enumerate() {
        web1 += i64::from(a == WEB1);
        let k = k as i64 + 1;
        assert!(
            (web1 * 4 - 3 * k).abs() < 4,
            "after {k}: {web1} to web.1 ({to:x?})"
        );
    }
    assert_eq!(web1, 30);
    // rr on the same weights: one each in turn.
    let (t, mut ps) = node_of(&scheduled(SchedulerKind::Rr, None), "n1", 1);
    let input: Vec<_> = (0..40u32)
        .map(|i| syn_to(N1, 0x0a09_0100 + i, 40000, 1))
        .collect();
    let to = task_of(&drive(&mut ps, &t, 1, input).0);
    assert_eq!(to.iter().filter(|&&a| a == WEB1).count(), 20);
    // Two workers, each its own rotation: the total is within one per worker of 3 to 1.
    let (t, mut ps) = node_of(&scheduled(SchedulerKind::Wrr, None), "n1", 2);
    let input: Vec<_> = (0..200u16)
        .map(|i| syn_to(N1, 0x0a09_0009, 30000 + i, 2))
        .collect();
    let to = task_of(&drive(&mut ps, &t, 1, input).0);
    assert_eq!(to.len(), 200);
    let web1 = to.iter().filter(|&&a| a == WEB1).count() as i64;
    assert!((web1 * 4 - 3 * 200).abs() < 2 * 4, "{web1} of 200");
}

#[test]
fn affinity_sends_a_clients_connections_to_one_task_on_every_node_and_worker() {
    use ctl::model::SchedulerKind;
    let state = scheduled(SchedulerKind::Rr, Some(600));
    let nodes = [("n1", N1), ("n3", 0xc0a8_010d)];
    let clients: Vec<u32> = (0..24).map(|i| 0x0a09_0200 + i * 7).collect();
    // Each client's task, by the node it connected through.
    let mut task: std::collections::HashMap<u32, u32> = Default::default();
    let mut tables = Vec::new();
    for (name, addr) in nodes {
        let (t, mut ps) = node_of(&state, name, 2);
        for &c in &clients {
            let input: Vec<_> = (0..6u16).map(|k| syn_to(addr, c, 40000 + k, 2)).collect();
            let (out, _) = drive(&mut ps, &t, 1, input);
            let to = task_of(&out);
            assert_eq!(to.len(), 6, "{name}");
            assert!(
                to.iter().all(|&a| a == to[0]),
                "{name}: {c:x} went to {to:x?}"
            );
            assert_eq!(*task.entry(c).or_insert(to[0]), to[0], "{c:x} on {name}");
        }
        tables.push((t, ps));
    }
    // Both tasks have clients (weights ignored by rr: about half each).
    let web1 = task.values().filter(|&&a| a == WEB1).count();
    assert!((4..=20).contains(&web1), "{web1} of 24 on web.1");
    // A task added on n1: n1's workers keep each client they saw where it was.
    let mut more = state.clone();
    more.services[0].tasks.push(crate::testkit::task(
        "web.3",
        "n1",
        &[
            ("ingress", std::net::Ipv4Addr::new(10, 0, 0, 13)),
            ("appnet", std::net::Ipv4Addr::new(10, 0, 1, 13)),
        ],
    ));
    let t2 = ServiceTable::build(&more, "n1", 2).unwrap();
    let (_, ps) = &mut tables[0];
    for &c in &clients {
        // New connections on the workers that saw the client.
        let input: Vec<_> = (0..40u16)
            .map(|k| syn_to(N1, c, 41000 + k, 2))
            .filter(|(w, _)| (0..6u16).any(|k| usize::from(flow::owner_of(c, 40000 + k, 2)) == *w))
            .collect();
        let to = task_of(&drive(ps, &t2, 2, input).0);
        assert!(to.iter().all(|&a| a == task[&c]), "{c:x}: {to:x?}");
    }
    assert_eq!(ps.iter().map(|p| p.stats.affinity_full).sum::<u64>(), 0);
}

#[test]
fn lc_counts_a_connection_until_its_flow_ends_through_the_pipeline() {
    use ctl::model::SchedulerKind;
    let (t, mut ps) = node_of(&scheduled(SchedulerKind::Lc, None), "n1", 1);
    let web2 = 0x0a00_000c;
    let syns = |ps: &mut Vec<Pipeline>, now: u64, sports: std::ops::Range<u16>| {
        let input: Vec<_> = sports.map(|sp| syn_to(N1, CLIENT, sp, 1)).collect();
        task_of(&drive(ps, &t, now, input).0)
    };
    // Weights 3 and 1 mean nothing to lc: at 1 ms one connection to web.1, then at 5 s three
    // more fill the least loaded first, a tie going to the next in turn: web.2, web.1, web.2.
    assert_eq!(syns(&mut ps, 1, 40000..40001), [WEB1]);
    assert_eq!(syns(&mut ps, 5000, 40001..40004), [web2, WEB1, web2]);
    let slot = |p: &mut Pipeline, addr: u32| {
        let uid = t
            .balancer(t.published(IpProtocol::Tcp, 8080).unwrap().balancer)
            .backends
            .iter()
            .find(|b| ipkey(b.addr) == addr)
            .unwrap()
            .uid;
        usize::from(p.task_stats.slot(uid))
    };
    let (s1, s2) = (slot(&mut ps[0], WEB1), slot(&mut ps[0], web2));
    assert_eq!((ps[0].flows.active()[s1], ps[0].flows.active()[s2]), (2, 2));
    // At 10.5 s the first SYN, never answered, has expired (half-open: 10 s): web.1 has one
    // connection to web.2's two, and takes the next.
    let mut pool = Pool::new(64);
    let mut out = Burst::new();
    // (Each call sweeps part of the 64 K flow places: a full pass.)
    for k in 0..20 {
        ps[0].maintain(&t, 10_500 + 16 * k, &mut pool, &mut out);
    }
    assert_eq!(ps[0].stats.flows_expired, 1);
    assert_eq!((ps[0].flows.active()[s1], ps[0].flows.active()[s2]), (1, 2));
    assert_eq!(syns(&mut ps, 11_000, 40010..40011), [WEB1]);
}

// ---- drops per service and per task ----------------------------------------------------------

/// The `DROPPED` count of the task or service with `uid` in `p`'s counters (0 if it has none).
fn dropped_of(p: &Pipeline, uid: u64) -> u64 {
    p.task_stats
        .iter()
        .find(|(u, _)| *u == uid)
        .map_or(0, |(_, v)| v[crate::stats::DROPPED])
}

fn task_uid(t: &ServiceTable, name: &str) -> u64 {
    t.tasks[t.task_by_name(name).unwrap() as usize].uid
}

/// A service whose tasks are all gone refuses a client's SYN to its published port (the host
/// side answers as a closed port): a drop of the service, which no task is blamed for, in the
/// counters and in the `stats` answer. A SYN with FIN to a service that has tasks is the
/// service's drop too, not a task's.
#[test]
fn a_refused_new_connection_counts_against_its_service_and_no_task() {
    use crate::testkit;
    let n1 = std::net::Ipv4Addr::new(192, 168, 1, 11);
    let client = std::net::Ipv4Addr::new(10, 9, 0, 9);
    let syn = |flags: u8, sport: u16| {
        testkit::tcp_frame(
            [2, 0, 0, 0, 0, 0x99],
            Config::default().uplink_mac,
            client,
            sport,
            n1,
            8080,
            flags,
            1,
            0,
            b"",
        )
    };
    let mut no_task = three_nodes();
    no_task.services[0].tasks.clear();
    let t = ServiceTable::build(&no_task, "n1", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    let mut p = Pipeline::new(Config::default(), neigh.clone());
    for sport in [40000, 40001] {
        let (v, _) = run(
            &mut p,
            &t,
            PortId::Uplink,
            &syn(testkit::tcp_flags::SYN, sport),
        );
        assert_eq!(v, Verdict::Host(HostReason::NoTask));
    }
    let web = t.services[0].uid;
    assert_eq!(dropped_of(&p, web), 2);
    // Only the service's own entry: nothing else was counted.
    let rows: Vec<_> = p.task_stats.iter().collect();
    assert_eq!(rows, vec![(web, [0, 0, 0, 0, 0, 2])]);
    // As `stats` (and so meshctl and the metrics) report it.
    let shared = crate::shared::Shared::new(t.clone(), 1, neigh);
    shared.task_stats[0].write(&p.task_stats);
    let r = crate::shared::report(&shared, None, &t);
    let s = r.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!((s.dropped, s.tasks.len()), (2, 0));

    // With its tasks: a SYN with FIN is dropped before a task is picked, against the service.
    let t = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
    let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
    let bad = syn(testkit::tcp_flags::SYN | testkit::tcp_flags::FIN, 40002);
    let (v, _) = run(&mut p, &t, PortId::Uplink, &bad);
    assert_eq!(v, Verdict::Drop(DropReason::BadTcpFlags));
    assert_eq!(dropped_of(&p, t.services[0].uid), 1);
    assert_eq!(dropped_of(&p, task_uid(&t, "web.1")), 0);
    assert_eq!(dropped_of(&p, task_uid(&t, "web.2")), 0);
}

/// A task's connection to its service's VIP when no task may take it (every weight 0): the
/// service's drop.
#[test]
fn a_vip_connection_with_no_task_to_take_it_counts_against_the_service() {
    use crate::testkit;
    let mut state = three_nodes();
    for task in &mut state.services[0].tasks {
        task.weight = 0;
    }
    let t = ServiceTable::build(&state, "n2", 1).unwrap();
    let mut p = Pipeline::new(Config::default(), Arc::new(Neighbors::new(64)));
    // web.1 (on n2) to web's VIP.
    let f = testkit::udp_frame(
        [2, 0, 0, 0, 0, 0x11],
        Config::default().tasks_mac,
        std::net::Ipv4Addr::new(10, 0, 1, 11),
        5000,
        std::net::Ipv4Addr::new(10, 0, 1, 2),
        80,
        b"q",
    );
    let (v, _) = run(&mut p, &t, PortId::Tasks, &f);
    assert_eq!(v, Verdict::Host(HostReason::NoTask));
    assert_eq!(dropped_of(&p, t.services[0].uid), 1);
    assert_eq!(dropped_of(&p, task_uid(&t, "web.1")), 0);
}

/// A flow's packets dropped on their way (no neighbour for the task's node yet; time to live
/// run out; a bad checksum) count against the flow's task, and so its service; a packet of no
/// flow with the same faults is blamed on nobody.
#[test]
fn a_flows_dropped_packets_count_against_its_task() {
    use crate::testkit;
    // n1 does not know n2's MAC yet: the SYN makes web.1's flow, and is dropped.
    let t = ServiceTable::build(&three_nodes(), "n1", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    let mut p = Pipeline::new(Config::default(), neigh.clone());
    let up = p.cfg.uplink_mac;
    let seg = |sport: u16, flags: u8, seq: u32| {
        testkit::tcp_frame(
            [2, 0, 0, 0, 0, 0x99],
            up,
            std::net::Ipv4Addr::new(10, 9, 0, 9),
            sport,
            std::net::Ipv4Addr::new(192, 168, 1, 11),
            8080,
            flags,
            seq,
            0,
            b"",
        )
    };
    let (v, _) = run(
        &mut p,
        &t,
        PortId::Uplink,
        &seg(40000, testkit::tcp_flags::SYN, 1),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoNeighbor));
    let web1 = task_uid(&t, "web.1");
    let row = |p: &Pipeline| p.task_stats.iter().find(|(u, _)| *u == web1).unwrap().1;
    let [packets, _, conns, _, _, dropped] = row(&p);
    assert_eq!((packets, conns, dropped), (1, 1, 1));
    // Retransmitted once n2 is known: through, nothing more dropped.
    neigh.learn(N2, [2, 0, 0, 0, 0, 0x12]);
    let (v, _) = run(
        &mut p,
        &t,
        PortId::Uplink,
        &seg(40000, testkit::tcp_flags::SYN, 1),
    );
    assert_eq!(v, Verdict::Tx(PortId::Uplink));
    assert_eq!(row(&p)[crate::stats::DROPPED], 1);
    // The flow's next segment with its time to live run out, then one with a bad checksum:
    // dropped before the pipeline reads where they go, and still the flow's.
    let mut ttl = seg(40000, testkit::tcp_flags::ACK, 2);
    ttl[ETH + 8] = 1;
    testkit::refill_ipv4_checksum(&mut ttl);
    let mut sum = seg(40000, testkit::tcp_flags::ACK, 2);
    sum[ETH + IPV4 + 16] ^= 0xff; // the TCP checksum
    for (f, why) in [
        (&ttl, DropReason::TtlExpired),
        (&sum, DropReason::BadL4Checksum),
    ] {
        let (v, _) = run(&mut p, &t, PortId::Uplink, f);
        assert_eq!(v, Verdict::Drop(why));
    }
    assert_eq!(row(&p)[crate::stats::DROPPED], 3);
    // The same faults on a connection meshd has no flow for: nobody's.
    let mut other = seg(40001, testkit::tcp_flags::ACK, 2);
    other[ETH + 8] = 1;
    testkit::refill_ipv4_checksum(&mut other);
    let (v, _) = run(&mut p, &t, PortId::Uplink, &other);
    assert_eq!(v, Verdict::Drop(DropReason::TtlExpired));
    let total: u64 = p
        .task_stats
        .iter()
        .map(|(_, v)| v[crate::stats::DROPPED])
        .sum();
    assert_eq!(total, 3);
    assert_eq!(dropped_of(&p, t.services[0].uid), 0, "all blamed on web.1");
    // In the `stats` answer: web.1's three, and the service's sum of its tasks'.
    let shared = crate::shared::Shared::new(t.clone(), 1, neigh);
    shared.task_stats[0].write(&p.task_stats);
    let r = crate::shared::report(&shared, None, &t);
    let s = r.services.iter().find(|s| s.name == "web").unwrap();
    let w1 = s.tasks.iter().find(|x| x.name == "web.1").unwrap();
    assert_eq!((w1.dropped, s.dropped), (3, 3));
}

/// Too-big packets with DF of an established flow: each is the flow's task's drop once,
/// whether meshd answered it with ICMP (a `Tx` verdict, blamed in `forward_big`) or, over the
/// answer's rate, dropped it bare (blamed by `process`).
#[test]
fn too_big_packets_of_a_flow_count_once_against_its_task_answered_or_not() {
    let (t, mut p) = on_n1_established(None);
    let up = p.cfg.uplink_mac;
    let big = vec![0x62; 1411];
    let seg = tcp_seg(
        ([2, 0, 0, 0, 0, 0x99], up),
        CLIENT,
        40000,
        N1,
        8080,
        TcpControl::Psh,
        true,
        None,
        &big,
        true,
    );
    let answered = (0..50)
        .filter(|_| run(&mut p, &t, PortId::Uplink, &seg).0 == Verdict::Tx(PortId::Uplink))
        .count();
    assert_eq!((answered, p.stats.dropped(DropReason::TooBig)), (10, 50));
    assert_eq!(dropped_of(&p, task_uid(&t, "web.1")), 50);
    assert_eq!(dropped_of(&p, t.services[0].uid), 0);
}
