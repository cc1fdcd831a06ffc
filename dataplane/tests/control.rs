//! Control-protocol tests: a real control socket served by a real `Controller`, with a real
//! worker on in-memory ports acknowledging generations. Every command, and bad input of each
//! kind: each answered with a clear error, the persisted state unchanged, the daemon serving on.

// Test code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ctl::client::Connection;
use ctl::proto::{Change, Command, ErrorCode, PortSpec, Query, Response, ServiceUpdate};
use ctl::*;
use dataplane::balance::ServiceTable;
use dataplane::control::{Controller, Limits, Server, StateStore};
use dataplane::neigh::Neighbors;
use dataplane::pipeline::Config;
use dataplane::port::mem;
use dataplane::worker::{Idle, Shared, Worker};
use tempfile::TempDir;

struct Daemon {
    /// Removed when the daemon's last user drops it, a failed test's too.
    dir: TempDir,
    socket: PathBuf,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    _server: Server,
    /// The far ends of the worker's uplink and tasks ports.
    up: mem::MemPort,
    _tasks: mem::MemPort,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        Self::start_in(temp_dir(tag))
    }

    fn start_in(dir: TempDir) -> Daemon {
        Self::start_limited(dir, Limits::default())
    }

    fn start_limited(dir: TempDir, limits: Limits) -> Daemon {
        let socket = dir.path().join("meshd.sock");
        let store = StateStore::new(dir.path().join("state.json"));
        let mut persisted = store.load().unwrap().unwrap_or_default();
        if persisted.state.node("n1").is_none() {
            persisted.state.nodes.push(node("n1", 11));
        }
        let shared = Shared::new(
            ServiceTable::empty("n1", Ipv4Addr::new(192, 168, 1, 11)),
            1,
            Arc::new(Neighbors::new(64)),
        );
        let controller = Controller::new("n1".into(), persisted, store, shared.clone()).unwrap();
        let (up, up_peer) = mem::link(64);
        let (tk, tk_peer) = mem::link(64);
        let mut w = Worker::new(
            0,
            Config {
                flow_accounting: true,
                ..Config::default()
            },
            Box::new(up),
            Box::new(tk),
            shared.clone(),
            Idle::Backoff {
                max: Duration::from_millis(1),
            },
            64,
        );
        let mut threads = vec![std::thread::spawn(move || w.run())];
        let (server, listener) = Server::bind(&socket).unwrap();
        let (ctl, control) = controller.start().unwrap();
        threads.push(control);
        threads.push(std::thread::spawn(move || {
            Server::serve_limited(listener, ctl, limits)
        }));
        Daemon {
            dir,
            socket,
            shared,
            threads,
            _server: server,
            up: up_peer,
            _tasks: tk_peer,
        }
    }

    fn conn(&self) -> Connection {
        Connection::connect(&self.socket, Duration::from_secs(5)).unwrap()
    }

    /// The ingress and appnet networks and the service web, its tasks' MACs known: a
    /// connection to go on with.
    fn with_web(&self) -> Connection {
        let mut c = self.conn();
        for network in [ingress(), appnet()] {
            ok(c.send(&Command::Change(Change::NetworkCreate { network }))
                .unwrap());
        }
        ok(
            c.send(&Command::Change(Change::ServiceCreate { service: web() }))
                .unwrap(),
        );
        for (i, ip) in [(1u8, [10, 0, 0, 11]), (2, [10, 0, 0, 12])] {
            self.shared
                .neigh
                .learn(u32::from_be_bytes(ip), [2, 0, 0, 0, 0x10, i]);
        }
        c
    }

    /// Stops the daemon and gives back its directory (for another to start in).
    fn stop(self) -> TempDir {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.dir
    }
}

fn node(name: &str, last: u8) -> Node {
    Node {
        name: name.into(),
        addr: Ipv4Addr::new(192, 168, 1, last),
        vtep: None,
        addr6: None,
        vtep_port: VXLAN_PORT,
        availability: Availability::Active,
    }
}

fn ok(r: Response) -> ctl::proto::Success {
    match r {
        Response::Ok(s) => s,
        Response::Err(e) => panic!("unexpected error: {e:?}"),
    }
}

fn err(r: Response) -> ctl::proto::ErrorBody {
    match r {
        Response::Err(e) => e,
        Response::Ok(s) => panic!("expected an error, got {s:?}"),
    }
}

/// A fresh directory for one test's state and socket, `meshd-ctl-<tag>-…` in the temporary
/// directory, removed when dropped.
fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("meshd-ctl-{tag}-"))
        .tempdir()
        .unwrap()
}

fn state_file(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("state.json")).unwrap_or_default()
}

fn ingress() -> Network {
    let mut endpoints = BTreeMap::new();
    endpoints.insert("n1".into(), Ipv4Addr::new(10, 0, 0, 2));
    Network {
        subnet6: None,
        name: "ingress".into(),
        vni: INGRESS_VNI,
        subnet: "10.0.0.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        ingress: true,
        endpoints,
        mtu: None,
        encryption: None,
    }
}

fn appnet() -> Network {
    Network {
        subnet6: None,
        name: "appnet".into(),
        vni: 4097,
        subnet: "10.0.1.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 1, 1),
        ingress: false,
        endpoints: BTreeMap::new(),
        mtu: None,
        encryption: None,
    }
}

fn web() -> Service {
    let mut s = Service::new("web");
    s.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
    });
    s.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        mode: PublishMode::Ingress,
    });
    for i in 1..=2u8 {
        s.tasks.push(Task {
            name: format!("web.{i}"),
            node: "n1".into(),
            addresses: vec![
                TaskAddress {
                    network: "ingress".into(),
                    addr: Ipv4Addr::new(10, 0, 0, 10 + i),
                },
                TaskAddress {
                    network: "appnet".into(),
                    addr: Ipv4Addr::new(10, 0, 1, 10 + i),
                },
            ],
            state: TaskState::Running,
            weight: 1,
            vlan: None,
        });
    }
    s
}

#[test]
fn every_command_round_trips_and_changes_bump_the_generation() {
    let d = Daemon::start("all");
    let mut c = d.conn();
    let g0 = ok(c.send(&Command::Query(Query::NodeLs {})).unwrap()).generation;
    let g1 = ok(c
        .send(&Command::Change(Change::NetworkCreate {
            network: ingress(),
        }))
        .unwrap())
    .generation;
    assert_eq!(g1, g0 + 1);
    ok(c.send(&Command::Change(Change::NetworkCreate {
        network: appnet(),
    }))
    .unwrap());
    let mut eps = BTreeMap::new();
    eps.insert("ingress".to_string(), Ipv4Addr::new(10, 0, 0, 3));
    ok(c.send(&Command::Change(Change::NodeAdd {
        node: node("n2", 12),
        endpoints: eps,
    }))
    .unwrap());
    let s = ok(c
        .send(&Command::Change(Change::ServiceCreate { service: web() }))
        .unwrap());
    // The answer comes only once the worker runs the new generation.
    assert_eq!(d.shared.table.load().generation, s.generation);
    assert_eq!(d.shared.acks[0].load(Ordering::Acquire), s.generation);
    assert!(d
        .shared
        .table
        .load()
        .published(smoltcp::wire::IpProtocol::Tcp, 8080)
        .is_some());

    let nets = ok(c.send(&Command::Query(Query::NetworkLs {})).unwrap()).result;
    assert_eq!(nets.as_array().unwrap().len(), 2);
    let n = ok(c
        .send(&Command::Query(Query::NetworkInspect {
            name: "appnet".into(),
        }))
        .unwrap())
    .result;
    assert_eq!(n["vni"], 4097);
    assert_eq!(
        ok(c.send(&Command::Query(Query::NodeLs {})).unwrap())
            .result
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ok(c.send(&Command::Change(Change::NodeUpdate {
        name: "n2".into(),
        availability: Availability::Drain,
    }))
    .unwrap());
    assert_eq!(
        ok(c.send(&Command::Query(Query::ServiceLs {})).unwrap())
            .result
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let svc = ok(c
        .send(&Command::Query(Query::ServiceInspect {
            name: "web".into(),
        }))
        .unwrap())
    .result;
    assert_eq!(svc["ports"][0]["published"], 8080);
    assert_eq!(
        ok(
            c.send(&Command::Query(Query::ServicePs { name: "web".into() }))
                .unwrap()
        )
        .result
        .as_array()
        .unwrap()
        .len(),
        2
    );
    let upd = ServiceUpdate {
        publish_add: vec![PublishedPort {
            protocol: Protocol::Udp,
            published: 5353,
            target: 53,
            mode: PublishMode::Ingress,
        }],
        publish_rm: vec![PortSpec {
            published: 8080,
            protocol: Protocol::Tcp,
        }],
        ..ServiceUpdate::default()
    };
    ok(c.send(&Command::Change(Change::ServiceUpdate {
        name: "web".into(),
        update: upd,
    }))
    .unwrap());
    let t = d.shared.table.load();
    assert!(t.published(smoltcp::wire::IpProtocol::Tcp, 8080).is_none());
    assert!(t.published(smoltcp::wire::IpProtocol::Udp, 5353).is_some());
    ok(c.send(&Command::Change(Change::ServiceScale {
        name: "web".into(),
        replicas: 1,
    }))
    .unwrap());
    assert_eq!(d.shared.table.load().tasks.len(), 1);
    let st = ok(c.send(&Command::Query(Query::Stats {})).unwrap()).result;
    assert!(st["workers"].as_array().is_some() && st["total"]["rx"].is_u64());
    let full = ok(c.send(&Command::Query(Query::State {})).unwrap()).result;
    assert_eq!(full["services"][0]["name"], "web");
    ok(
        c.send(&Command::Change(Change::ServiceRm { name: "web".into() }))
            .unwrap(),
    );
    ok(
        c.send(&Command::Change(Change::NodeRm { name: "n2".into() }))
            .unwrap(),
    );
    ok(c.send(&Command::Change(Change::NetworkRm {
        name: "appnet".into(),
    }))
    .unwrap());
    assert_eq!(
        ok(c.send(&Command::Query(Query::NetworkLs {})).unwrap())
            .result
            .as_array()
            .unwrap()
            .len(),
        1
    );
    d.stop();
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let d = Daemon::start("bad");
    let mut c = d.conn();
    ok(c.send(&Command::Change(Change::NetworkCreate {
        network: ingress(),
    }))
    .unwrap());
    ok(c.send(&Command::Change(Change::NetworkCreate {
        network: appnet(),
    }))
    .unwrap());
    let before_gen = ok(c
        .send(&Command::Change(Change::ServiceCreate { service: web() }))
        .unwrap())
    .generation;
    let before = state_file(&d.dir);
    assert!(before.contains("\"web\""));

    let e = err(c.send_line(b"{this is not json").unwrap());
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err(c
        .send_line(br#"{"version":1,"command":"service-explode"}"#)
        .unwrap());
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("service-explode"), "{}", e.message);
    let e = err(c
        .send_line(br#"{"version":99,"command":"node-ls"}"#)
        .unwrap());
    assert_eq!(e.code, ErrorCode::UnsupportedVersion);

    // A published port already in use.
    let mut api = Service::new("api");
    api.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 9000,
        mode: PublishMode::Ingress,
    });
    let e = err(c
        .send(&Command::Change(Change::ServiceCreate { service: api }))
        .unwrap());
    assert!(
        e.message
            .contains("8080/tcp is already in use by service \"web\""),
        "{}",
        e.message
    );
    // An unknown service.
    let e = err(c
        .send(&Command::Query(Query::ServiceInspect {
            name: "nope".into(),
        }))
        .unwrap());
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = err(c
        .send(&Command::Change(Change::ServiceRm {
            name: "nope".into(),
        }))
        .unwrap());
    assert_eq!(e.code, ErrorCode::NotFound);
    // A VIP outside its subnet.
    let mut bad = web();
    bad.name = "web2".into();
    bad.ports.clear();
    bad.tasks.clear();
    bad.networks[0].vip = Some(Ipv4Addr::new(10, 9, 9, 9));
    let e = err(c
        .send(&Command::Change(Change::ServiceCreate { service: bad }))
        .unwrap());
    assert_eq!(e.code, ErrorCode::Invalid);
    assert!(e.message.contains("outside the subnet"), "{}", e.message);

    // Nothing changed: the file, the generation, the table.
    assert_eq!(state_file(&d.dir), before);
    let g = ok(c.send(&Command::Query(Query::NodeLs {})).unwrap()).generation;
    assert_eq!(g, before_gen);
    assert_eq!(d.shared.table.load().generation, before_gen);

    // An oversized request is refused; the daemon serves the next connection.
    let mut big = br#"{"version":1,"command":"node-ls","x":""#.to_vec();
    big.extend(std::iter::repeat_n(
        b'a',
        ctl::proto::MAX_REQUEST_BYTES + 10,
    ));
    big.extend(br#""}"#);
    let mut c2 = d.conn();
    let e = err(c2.send_line(&big).unwrap());
    assert_eq!(e.code, ErrorCode::TooLarge);
    let mut c3 = d.conn();
    ok(c3.send(&Command::Query(Query::ServiceLs {})).unwrap());
    assert_eq!(state_file(&d.dir), before);
    d.stop();
}

#[test]
fn state_survives_a_restart() {
    let d = Daemon::start("restart");
    let mut c = d.conn();
    ok(c.send(&Command::Change(Change::NetworkCreate {
        network: ingress(),
    }))
    .unwrap());
    ok(c.send(&Command::Change(Change::NetworkCreate {
        network: appnet(),
    }))
    .unwrap());
    let g = ok(c
        .send(&Command::Change(Change::ServiceCreate { service: web() }))
        .unwrap())
    .generation;
    drop(c);
    let dir = d.stop();
    let d = Daemon::start_in(dir);
    let mut c = d.conn();
    let r = ok(c.send(&Command::Query(Query::ServiceLs {})).unwrap());
    assert_eq!(r.generation, g);
    assert_eq!(r.result[0]["name"], "web");
    assert!(d
        .shared
        .table
        .load()
        .published(smoltcp::wire::IpProtocol::Tcp, 8080)
        .is_some());
    d.stop();
}

/// A change waiting for a worker that never acknowledges holds the control thread; `stats` and
/// a Prometheus scrape still answer, while the change is still waiting (a liveness test: the
/// change waits two minutes, the reads get no deadline of their own).
#[test]
fn stats_and_metrics_answer_while_a_change_waits_for_the_workers() {
    use std::io::{Read, Write};
    let dir = temp_dir("stuck");
    let socket = dir.path().join("meshd.sock");
    let mut persisted = dataplane::control::Persisted::default();
    persisted.state.nodes.push(node("n1", 11));
    // One worker that never runs, so never acknowledges a generation.
    let shared = Shared::new(
        ServiceTable::empty("n1", Ipv4Addr::new(192, 168, 1, 11)),
        1,
        Arc::new(Neighbors::new(64)),
    );
    let mut controller = Controller::new(
        "n1".into(),
        persisted,
        StateStore::new(dir.path().join("state.json")),
        shared.clone(),
    )
    .unwrap();
    controller.ack_timeout = Duration::from_secs(120);
    controller.host = Some(Arc::new(dataplane::host::HostShared::default()));
    let host = controller.host.clone();
    let (ctl, control) = controller.start().unwrap();
    let (server, listener) = Server::bind(&socket).unwrap();
    let serve = std::thread::spawn(move || Server::serve(listener, ctl));
    let metrics_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics_l.local_addr().unwrap();
    let (ms, mh) = (shared.clone(), host.clone());
    let metrics = std::thread::spawn(move || dataplane::metrics::serve(metrics_l, ms, mh));

    let sock = socket.clone();
    let change = std::thread::spawn(move || {
        let mut c = Connection::connect(&sock, Duration::from_secs(600)).unwrap();
        c.send(&Command::Change(Change::NodeAdd {
            node: node("n2", 12),
            endpoints: BTreeMap::new(),
        }))
        .unwrap()
    });
    // The change is under way once its table is published (it then waits for the acks).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while shared.table.load().generation != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the change never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut c = Connection::connect(&socket, Duration::from_secs(60)).unwrap();
    let st = ok(c.send(&Command::Query(Query::Stats {})).unwrap());
    let report: ctl::proto::StatsReport = serde_json::from_value(st.result).unwrap();
    assert_eq!((report.node.as_str(), report.generation), ("n1", 1));
    assert_eq!(report.workers.len(), 1);
    assert!(report.host.is_some());

    let mut s = std::net::TcpStream::connect(metrics_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(body.contains("meshd_generation{node=\"n1\"} 1"), "{body}");
    assert!(
        body.contains("meshd_rx_total{node=\"n1\",worker=\"0\"} 0"),
        "{body}"
    );

    assert!(
        !change.is_finished(),
        "the reads answered only after the change gave up"
    );
    // Stopping ends the wait: the change is persisted, published, and says who did not ack.
    shared.stop.store(true, Ordering::Relaxed);
    let e = err(change.join().unwrap());
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("did not pick it up"), "{}", e.message);
    for t in [control, serve, metrics] {
        t.join().unwrap();
    }
    drop(server);
}

/// Clients that would hold the control socket cannot: a connection over the per-client cap
/// gets `busy`, one that dribbles its request gets `timeout` at the deadline and is closed, one
/// that never reads its answers is closed at the write deadline; meanwhile and afterwards a
/// plain client is served.
#[test]
fn dribbling_deaf_and_greedy_clients_cannot_hold_the_control_socket() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    let dir = temp_dir("limits");
    let limits = Limits {
        request: Duration::from_millis(400),
        write: Duration::from_millis(300),
        per_client: 3,
        total: 16,
    };
    let d = Daemon::start_limited(dir, limits);
    let line = |s: &mut UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut l = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut l)
            .unwrap();
        serde_json::from_str::<Response>(&l).unwrap()
    };

    // A dribbler: one byte of its request every 100 ms, never a whole line.
    let mut dribbler = UnixStream::connect(&d.socket).unwrap();
    let start = std::time::Instant::now();
    for b in br#"{"version":1,"#.iter().take(3) {
        dribbler.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(err(line(&mut dribbler)).code, ErrorCode::Timeout);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let mut rest = Vec::new();
    assert_eq!(
        dribbler.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after the timeout"
    );

    // Greedy: three connections are this process's share; the fourth is refused at once.
    let held: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut fourth = UnixStream::connect(&d.socket).unwrap();
    let e = err(line(&mut fourth));
    assert_eq!(e.code, ErrorCode::Busy, "{e:?}");
    drop(held);

    // Deaf: requests sent, answers never read; the daemon gives up on writing and closes.
    let mut deaf = UnixStream::connect(&d.socket).unwrap();
    deaf.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let req = format!(
        "{}\n",
        serde_json::to_string(&ctl::proto::Request::new(Command::Query(Query::Stats {}))).unwrap()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut closed = false;
    while std::time::Instant::now() < deadline {
        match deaf.write_all(req.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the daemon kept a connection that never reads");

    // Everyone else is served, then and now.
    std::thread::sleep(Duration::from_millis(100));
    let mut c = d.conn();
    ok(c.send(&Command::Query(Query::NodeLs {})).unwrap());
    d.stop();
}

/// `conn-ls` lists the worker's flows as a client made them, filtered; `conn-rm` ends the ones
/// it names and their TCP clients get a RST; bad requests change nothing.
#[test]
fn conn_ls_lists_the_workers_flows_and_conn_rm_ends_them_with_a_reset() {
    use ctl::proto::{ConnFilter, ConnList, ConnRemoved, ConnState, Runtime};
    use dataplane::buf::{PacketBuf, PortId};
    use dataplane::testkit::{parse_ipv4_tcp, tcp_flags, tcp_frame};
    let d = Daemon::start("conn");
    let mut c = d.with_web();
    let client = Ipv4Addr::new(192, 168, 7, 1);
    let (client_mac, meshd_mac) = ([2, 0, 0, 0, 0x70, 1], Config::default().uplink_mac);
    for sport in 40000..40005u16 {
        let syn = tcp_frame(
            client_mac,
            meshd_mac,
            client,
            sport,
            Ipv4Addr::new(192, 168, 1, 11),
            8080,
            tcp_flags::SYN,
            7,
            0,
            b"",
        );
        assert!(d.up.send(PacketBuf::from_frame(PortId::Uplink, &syn)));
    }
    let ls = |c: &mut Connection, filter: ConnFilter, limit: u32| -> Response {
        c.send(&Command::Query(Query::ConnLs { filter, limit }))
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let all: ConnList = loop {
        let l: ConnList =
            serde_json::from_value(ok(ls(&mut c, ConnFilter::default(), 100)).result).unwrap();
        if l.matched == 5 || std::time::Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((all.node.as_str(), all.matched), ("n1", 5), "{all:?}");
    assert_eq!(all.connections.len(), 5);
    for k in &all.connections {
        assert_eq!(k.client.ip(), client);
        assert_eq!(k.service_addr.to_string(), "192.168.1.11:8080");
        assert_eq!(k.service.as_deref(), Some("web"));
        assert_eq!(k.state, ConnState::SynSent);
        assert_eq!((k.packets_in, k.packets_out), (Some(1), Some(0)));
        assert_eq!(k.task_addr.port(), 80);
        // Masqueraded: the task sees the node's ingress endpoint.
        assert_eq!(k.source.ip(), Ipv4Addr::new(10, 0, 0, 2));
    }
    // Round-robin: the tasks share them, and a filter by task finds each one's.
    let by_task = |c: &mut Connection, t: &str| -> u64 {
        let f = ConnFilter {
            task: Some(t.into()),
            ..ConnFilter::default()
        };
        let l: ConnList = serde_json::from_value(ok(ls(c, f, 100)).result).unwrap();
        assert!(l.connections.iter().all(|k| k.task.as_deref() == Some(t)));
        l.matched
    };
    let (w1, w2) = (by_task(&mut c, "web.1"), by_task(&mut c, "web.2"));
    assert_eq!(w1 + w2, 5);
    assert!(w1 >= 2 && w2 >= 2, "{w1} {w2}");
    // The limit cuts the list, not the count.
    let l: ConnList =
        serde_json::from_value(ok(ls(&mut c, ConnFilter::default(), 2)).result).unwrap();
    assert_eq!((l.connections.len(), l.matched), (2, 5));

    // Bad requests: clear errors, nothing ended.
    assert_eq!(
        err(ls(&mut c, ConnFilter::default(), 0)).code,
        ErrorCode::BadRequest
    );
    let e = err(ls(
        &mut c,
        ConnFilter {
            service: Some("api".into()),
            ..ConnFilter::default()
        },
        10,
    ));
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("\"api\""), "{}", e.message);
    let rm = |c: &mut Connection, filter: ConnFilter, all: bool| -> Response {
        c.send(&Command::Runtime(Runtime::ConnRm { filter, all }))
            .unwrap()
    };
    let e = err(rm(&mut c, ConnFilter::default(), false));
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("needs a filter"), "{}", e.message);
    let line = c
        .send_line(b"{\"version\":1,\"command\":\"conn-ls\",\"limit\":5,\"filter\":{\"client\":\"10.0.0.0/99\"}}")
        .unwrap();
    assert_eq!(err(line).code, ErrorCode::BadRequest);
    let l: ConnList =
        serde_json::from_value(ok(ls(&mut c, ConnFilter::default(), 100)).result).unwrap();
    assert_eq!(l.matched, 5, "nothing ended by the refused requests");

    // conn rm of one state of another client: none match, none end.
    let other = ConnFilter {
        client: Some("192.168.8.0/24".parse().unwrap()),
        ..ConnFilter::default()
    };
    let r: ConnRemoved = serde_json::from_value(ok(rm(&mut c, other, false)).result).unwrap();
    assert_eq!(r.removed, 0);
    // conn rm of the client: every flow ends, each TCP client gets its RST on the uplink.
    let f = ConnFilter {
        client: Some("192.168.7.1/32".parse().unwrap()),
        state: vec![ConnState::SynSent],
        ..ConnFilter::default()
    };
    let r: ConnRemoved = serde_json::from_value(ok(rm(&mut c, f, false)).result).unwrap();
    assert_eq!((r.node.as_str(), r.removed, r.reset), ("n1", 5, 5));
    let mut resets = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while resets.len() < 5 && std::time::Instant::now() < deadline {
        match d.up.recv() {
            Some(b) => {
                if let Some(t) = parse_ipv4_tcp(b.data()) {
                    if t.has(tcp_flags::RST) {
                        assert_eq!(
                            (t.src, t.sport, t.dst),
                            (Ipv4Addr::new(192, 168, 1, 11), 8080, client)
                        );
                        resets.insert(t.dport);
                    }
                }
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_eq!(
        resets,
        (40000..40005).collect(),
        "a RST for each connection"
    );
    let l: ConnList =
        serde_json::from_value(ok(ls(&mut c, ConnFilter::default(), 100)).result).unwrap();
    assert_eq!(l.matched, 0);
    // Counted, once the worker publishes its counters (every 10 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let removed = loop {
        let st = ok(c.send(&Command::Query(Query::Stats {})).unwrap());
        let report: ctl::proto::StatsReport = serde_json::from_value(st.result).unwrap();
        let n = report.total.counters.flows_removed;
        if n == 5 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(removed, 5);
    d.stop();
}

#[test]
fn capture_streams_frames_before_and_after_translation_and_refuses_bad_requests() {
    use ctl::proto::{
        CaptureChunk, CaptureDirection, CapturePorts, CaptureSpec, CaptureStop, Runtime,
    };
    use dataplane::buf::{PacketBuf, PortId};
    use dataplane::testkit::{parse_ipv4_tcp, tcp_flags, tcp_frame, udp_frame};
    let d = Daemon::start("capture");
    let mut c = d.with_web();
    let capture = |spec: CaptureSpec| Command::Runtime(Runtime::Capture { spec });

    // Refused, each with a clear error, before anything starts.
    let bad = [
        (
            CaptureSpec {
                filter: "tcp port eighty".into(),
                ..CaptureSpec::default()
            },
            ErrorCode::Invalid,
            "does not parse",
        ),
        (
            CaptureSpec {
                node: Some("n7".into()),
                ..CaptureSpec::default()
            },
            ErrorCode::NotFound,
            "this is node n1, not n7",
        ),
        (
            CaptureSpec {
                snaplen: Some(9000),
                ..CaptureSpec::default()
            },
            ErrorCode::Invalid,
            "snaplen 9000 is out of range",
        ),
    ];
    for (spec, code, words) in bad {
        let e = err(d.conn().send(&capture(spec)).unwrap());
        assert_eq!(e.code, code, "{}", e.message);
        assert!(e.message.contains(words), "{}", e.message);
    }
    let mut cap = d.conn();
    let spec = CaptureSpec {
        node: Some("N1".into()),
        filter: "tcp".into(),
        count: Some(4),
        ..CaptureSpec::default()
    };
    let first: CaptureChunk =
        serde_json::from_value(ok(cap.send(&capture(spec)).unwrap()).result).unwrap();
    let start = first.start.expect("the first chunk says how it began");
    assert_eq!((start.node.as_str(), start.workers), ("n1", 1));
    assert_eq!((start.snaplen, start.filter.as_str()), (2048, "tcp"));
    // One capture at a time.
    let e = err(d.conn().send(&capture(CaptureSpec::default())).unwrap());
    assert_eq!(e.code, ErrorCode::Busy);
    assert!(e.message.contains("one at a time"), "{}", e.message);

    let client = Ipv4Addr::new(192, 168, 7, 1);
    let (client_mac, meshd_mac) = ([2, 0, 0, 0, 0x70, 1], Config::default().uplink_mac);
    let node = Ipv4Addr::new(192, 168, 1, 11);
    // UDP the filter does not match, then two SYNs to the published port.
    let dns = udp_frame(client_mac, meshd_mac, client, 5353, node, 53, b"q");
    assert!(d.up.send(PacketBuf::from_frame(PortId::Uplink, &dns)));
    for sport in [41000u16, 41001] {
        let syn = tcp_frame(
            client_mac,
            meshd_mac,
            client,
            sport,
            node,
            8080,
            tcp_flags::SYN,
            7,
            0,
            b"",
        );
        assert!(d.up.send(PacketBuf::from_frame(PortId::Uplink, &syn)));
    }
    let mut frames = Vec::new();
    let end = loop {
        let chunk: CaptureChunk =
            serde_json::from_value(ok(cap.receive().unwrap()).result).unwrap();
        // Other connections are served while the capture streams.
        ok(c.send(&Command::Query(Query::ServiceLs {})).unwrap());
        frames.extend(chunk.frames);
        if let Some(end) = chunk.end {
            assert_eq!((chunk.matched, chunk.missed), (4, 0));
            break end;
        }
    };
    assert_eq!(end, CaptureStop::Count);
    assert_eq!(frames.len(), 4, "{frames:?}");
    let mut seen = Vec::new();
    for f in &frames {
        assert_eq!(f.worker, 0);
        assert_eq!(f.len as usize, f.data.len());
        let t = parse_ipv4_tcp(&f.data).expect("a TCP frame");
        assert!(t.has(tcp_flags::SYN));
        seen.push((f.port, f.direction, t.src, t.dst, t.dport));
    }
    let ingress_ep = Ipv4Addr::new(10, 0, 0, 2);
    // Each SYN as the client sent it, and as the task got it: masqueraded, to port 80.
    for (port, dir, src, _, dport) in &seen {
        match (port, dir) {
            (CapturePorts::Uplink, CaptureDirection::Rx) => {
                assert_eq!((*src, *dport), (client, 8080));
            }
            (CapturePorts::Tasks, CaptureDirection::Tx) => {
                assert_eq!((*src, *dport), (ingress_ep, 80));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen.iter()
            .filter(|s| s.1 == CaptureDirection::Rx && s.3 == node)
            .count(),
        2
    );
    assert!(frames.windows(2).all(|w| w[0].time_us <= w[1].time_us));
    let now_us = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    assert!(frames
        .iter()
        .all(|f| f.time_us <= now_us && f.time_us + 60_000_000 > now_us));
    // The stream ends with the capture: the connection closes.
    assert!(cap.receive().is_err());

    // A client that hangs up ends its capture; the next one may start at once.
    let mut gone = d.conn();
    ok(gone.send(&capture(CaptureSpec::default())).unwrap());
    drop(gone);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let next = loop {
        match d.conn().send(&capture(CaptureSpec {
            duration_ms: Some(50),
            ports: CapturePorts::Tasks,
            ..CaptureSpec::default()
        })) {
            Ok(Response::Err(e)) if e.code == ErrorCode::Busy => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the capture never ended"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(r) => break ok(r),
            Err(e) => panic!("{e}"),
        }
    };
    let first: CaptureChunk = serde_json::from_value(next.result).unwrap();
    assert!(first.start.is_some());
    d.stop();
}
