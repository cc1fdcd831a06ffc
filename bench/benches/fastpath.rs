//! Criterion micro-benchmarks of the fast path's pieces: parse, flow lookup (hit and miss),
//! scheduling (round-robin and Maglev), DNAT with checksum update, VXLAN encap/decap, and the
//! whole pipeline per packet. `cargo bench -p bench`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use bench::scenarios::{Kind, Scenario, TASKS_MAC, UPLINK_MAC};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::balance::maglev::{Backend, Maglev};
use dataplane::buf::{PacketBuf, PortId};
use dataplane::flow::{Action, Egress, Flow, FlowKey, FlowKind, FlowTable};
use dataplane::nat;
use dataplane::overlay::{self, Tunnel};
use dataplane::pipeline::parse_ipv4;
use dataplane::testkit::{self, tcp_flags};

fn syn() -> Vec<u8> {
    testkit::tcp_frame(
        [2, 0, 0, 0, 9, 9],
        UPLINK_MAC,
        Ipv4Addr::new(172, 16, 0, 1),
        40000,
        Ipv4Addr::new(192, 168, 1, 11),
        8080,
        tcp_flags::ACK,
        1,
        1,
        &[],
    )
}

fn parse(c: &mut Criterion) {
    let f = syn();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ipv4+tcp, checksums verified", |b| {
        b.iter(|| parse_ipv4(black_box(&f), 14, true))
    });
    g.bench_function("ipv4+tcp, no L4 checksum", |b| {
        b.iter(|| parse_ipv4(black_box(&f), 14, false))
    });
    g.finish();
}

fn flow(i: u32) -> Flow {
    let k = FlowKey::new(6, 0xac10_0000 + i, 40000, 0xc0a8_010b, 8080);
    let r = FlowKey::new(
        6,
        0x0a00_000b + i / 60000,
        80,
        0x0a00_0002,
        1024 + (i % 60000) as u16,
    );
    let a = Action::new(&k, 0x0a00_0002, r.dport(), r.src(), 80, Egress::Tasks);
    let b = Action::new(
        &r,
        k.dst(),
        k.dport(),
        k.src(),
        k.sport(),
        Egress::Uplink { mac: [2; 6] },
    );
    Flow::new(
        FlowKind::Ingress,
        [k, r],
        [a, b],
        1,
        u16::MAX,
        [7200, 60, 30],
        0,
    )
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow lookup");
    g.throughput(Throughput::Elements(1));
    for n in [1u32 << 10, 1 << 16, 1 << 20] {
        let mut t = FlowTable::new(n as usize);
        let keys: Vec<FlowKey> = (0..n)
            .map(|i| {
                let f = flow(i);
                t.insert(f, 0).unwrap();
                f.keys()[0]
            })
            .collect();
        let mut i = 0usize;
        g.bench_function(format!("hit, {n} flows"), |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                let k = &keys[i];
                black_box(t.lookup(k, k.hash()))
            })
        });
        let mut j = 0u32;
        g.bench_function(format!("miss, {n} flows"), |b| {
            b.iter(|| {
                j = j.wrapping_add(1);
                let k = FlowKey::new(17, j, 1, 2, 3);
                black_box(t.lookup(&k, k.hash()))
            })
        });
    }
    g.finish();
}

fn schedule(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule");
    g.throughput(Throughput::Elements(1));
    let backends: Vec<Backend> = (0..32u64).map(|id| Backend { id, weight: 1 }).collect();
    let m = Maglev::build(&backends);
    let mut h = 0u64;
    g.bench_function("maglev lookup, 32 tasks", |b| {
        b.iter(|| {
            h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
            black_box(m.lookup(h))
        })
    });
    g.bench_function("maglev build, 32 tasks", |b| {
        b.iter(|| Maglev::build(black_box(&backends)))
    });
    // A large service: the table is rebuilt on every change of its task set (it took < 50 ms
    // when this was a timed unit test).
    let many: Vec<Backend> = (0..1000u64)
        .map(|i| Backend {
            id: 1000 + i * 7919,
            weight: 1,
        })
        .collect();
    g.bench_function("maglev build, 1000 tasks", |b| {
        b.iter(|| Maglev::build(black_box(&many)))
    });
    let mut pos = 0u32;
    g.bench_function("round-robin pick, 32 tasks", |b| {
        b.iter(|| {
            let i = (pos as usize) % backends.len();
            pos = pos.wrapping_add(1);
            black_box(backends[i])
        })
    });
    g.finish();
}

fn dnat(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));
    let f = syn();
    let l3 = parse_ipv4(&f, 14, true).unwrap();
    let a = Action::new(&l3.key(), 0x0a00_0002, 1024, 0x0a00_000b, 80, Egress::Tasks);
    let mut frame = f.clone();
    g.bench_function("DNAT+SNAT with incremental checksums", |b| {
        b.iter(|| {
            frame.copy_from_slice(&f);
            nat::rewrite(black_box(&mut frame), 14, l3.l4, l3.proto, &a);
        })
    });
    g.bench_function("Action::new (per new flow)", |b| {
        b.iter(|| {
            Action::new(
                black_box(&l3.key()),
                0x0a00_0002,
                1024,
                0x0a00_000b,
                80,
                Egress::Tasks,
            )
        })
    });
    g.finish();
}

fn tunnel(c: &mut Criterion) {
    let mut g = c.benchmark_group("vxlan");
    g.throughput(Throughput::Elements(1));
    let inner = syn();
    let t = Tunnel {
        src_mac: UPLINK_MAC,
        dst_mac: TASKS_MAC,
        src: 0xc0a8_010b,
        dst: 0xc0a8_010c,
        sport: 50000,
        dport: 4789,
        vni: 4096,
    };
    let mut buf = PacketBuf::from_frame(PortId::Tasks, &inner);
    // As the fast path does it: outer headers prebuilt for the peer, patched per frame.
    let prebuilt = overlay::Outer::new(t.src_mac, t.dst_mac, t.src, t.dst, t.dport);
    g.bench_function("encap (prebuilt outer headers)", |b| {
        b.iter(|| {
            buf.fill(&inner);
            black_box(&prebuilt)
                .encap(black_box(&mut buf), t.sport, t.vni)
                .unwrap();
        })
    });
    buf.fill(&inner);
    overlay::encap(&mut buf, &t).unwrap();
    let outer = buf.data().to_vec();
    g.bench_function("decap (check outer, read VNI, trim)", |b| {
        b.iter(|| {
            buf.fill(&outer);
            let o = parse_ipv4(buf.data(), 14, true).unwrap();
            let vni = overlay::vni(buf.data(), o.l4).unwrap();
            assert!(buf.trim_front(50));
            black_box(vni)
        })
    });
    g.finish();
}

fn whole(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline per packet");
    for (kind, flows) in [
        (Kind::Ingress, 1 << 16),
        (Kind::Vip, 1 << 14),
        (Kind::Decap, 1 << 16),
        (Kind::Replies, 1 << 16),
    ] {
        let mut s = Scenario::new(kind, flows);
        g.throughput(Throughput::Elements(32));
        g.bench_function(
            format!("{}, {} flows, burst of 32", kind.name(), s.flows),
            |b| b.iter(|| s.run(32)),
        );
    }
    let mut s = Scenario::new(Kind::NewFlows, 1 << 20);
    g.throughput(Throughput::Elements(32));
    g.bench_function("new-flow storm, burst of 32", |b| {
        b.iter(|| {
            if s.pipeline.flows.len() + 64 > s.flows {
                s.reset_flows();
            }
            s.run(32)
        })
    });
    g.finish();
}

criterion_group!(benches, parse, lookup, schedule, dnat, tunnel, whole);
criterion_main!(benches);
