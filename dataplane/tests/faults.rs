//! A real worker behind a lossy, reordering, corrupting uplink (port::fault::FaultInjector):
//! it never panics, every frame it received is accounted for (sent, handed to the host side,
//! or dropped with a reason), corrupted frames land in typed drop counters, and the frames
//! that arrive intact are still forwarded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use dataplane::balance::ServiceTable;
use dataplane::buf::{PacketBuf, PortId};
use dataplane::neigh::Neighbors;
use dataplane::pipeline::Config;
use dataplane::port::fault::{FaultInjector, Faults};
use dataplane::port::mem;
use dataplane::shared::Shared;
use dataplane::stats::DropReason;
use dataplane::testkit;
use dataplane::worker::{Idle, Worker};

#[test]
fn a_worker_behind_a_faulty_link_accounts_for_every_frame() {
    // Node n2 runs web.1 (10.0.0.11 on the ingress network); web.2 runs on n3.
    let table = ServiceTable::build(&dataplane::testkit::three_nodes(), "n2", 1).unwrap();
    let neigh = Arc::new(Neighbors::new(64));
    neigh.learn(
        u32::from(Ipv4Addr::new(10, 0, 0, 11)),
        [2, 0, 0, 0, 0, 0x11],
    );
    // web.2 is on n3, behind VXLAN.
    neigh.learn(
        u32::from(Ipv4Addr::new(192, 168, 1, 13)),
        [2, 0, 0, 0, 0, 0x13],
    );
    let shared = Shared::new(table, 1, neigh);
    let (up, _up_far) = mem::link(4096);
    let (tasks, _tasks_far) = mem::link(4096);
    let cfg = Config::default();
    let mac = cfg.uplink_mac;
    let n2 = Ipv4Addr::new(192, 168, 1, 12);
    // 2,000 frames from 500 clients: a SYN and three data segments each.
    let mut sent = 0u64;
    for c in 0..500u32 {
        let client = Ipv4Addr::from(0x0a09_0000 + c);
        let sport = 40000 + (c % 1000) as u16;
        for (flags, seq) in [
            (testkit::tcp_flags::SYN, 1),
            (testkit::tcp_flags::ACK | testkit::tcp_flags::PSH, 2),
            (testkit::tcp_flags::ACK | testkit::tcp_flags::PSH, 12),
            (testkit::tcp_flags::ACK | testkit::tcp_flags::PSH, 22),
        ] {
            let f = testkit::tcp_frame(
                [2; 6],
                mac,
                client,
                sport,
                n2,
                8080,
                flags,
                seq,
                1,
                b"0123456789",
            );
            assert!(up.inject(PacketBuf::from_frame(PortId::Uplink, &f)));
            sent += 1;
        }
    }
    let faults = Faults {
        drop_per_mille: 50,
        duplicate_per_mille: 50,
        reorder_per_mille: 50,
        corrupt_per_mille: 100,
        seed: 7,
    };
    let mut w = Worker::new(
        0,
        cfg,
        Box::new(FaultInjector::new(up, faults)),
        Box::new(tasks),
        shared,
        Idle::BusyPoll,
        4096,
    );
    for _ in 0..200 {
        w.poll_once();
    }
    let s = &w.pipeline.stats;
    // Every frame the worker took in went somewhere, with a reason when it was dropped.
    assert!(s.rx > 0 && s.rx <= sent + sent / 10, "rx {}", s.rx);
    assert_eq!(
        s.rx,
        s.tx_uplink + s.tx_tasks + s.to_host + s.handoff_out + s.total_drops(),
        "{s:?}"
    );
    // The corrupted frames are caught by the checks, each under a reason.
    let caught: u64 = [
        DropReason::BadL4Checksum,
        DropReason::BadIpChecksum,
        DropReason::BadIpv4Header,
        DropReason::BadL4Header,
        DropReason::NotOurMac,
        DropReason::UnknownEthertype,
        DropReason::Fragment,
        DropReason::Ipv4Options,
        DropReason::TtlExpired,
        DropReason::UnknownProtocol,
        DropReason::NotForUs,
        DropReason::Truncated,
    ]
    .iter()
    .map(|r| s.dropped(*r))
    .sum();
    assert!(
        caught > 100,
        "corrupted frames are dropped with reasons: {s:?}"
    );
    // Intact frames still reach the tasks, the local one and the one behind VXLAN.
    assert!(s.tx_tasks > 500 && s.tx_uplink > 500, "{s:?}");
    assert_eq!(s.dropped(DropReason::NoNeighbor), 0, "{s:?}");
}
