//! End-to-end tests of meshd's host stack: the embedded DNS resolver asked with `dig` from task
//! namespaces, health checks taking a task whose server stopped out of rotation on every
//! node (under load), then back, and passive health doing it without a check.
//!
//! Run as root from the workspace root (needs `dig`: `scripts/deps.sh` installs it):
//!
//! ```text
//! sudo cargo test -p testbed --test dns_health -- --nocapture
//! ```
//!
//! Without root every test prints a line and passes. Each test builds its own 3-node instance
//! `meshd-h<tag><pid>-*`, removed by a guard even when the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Mesh;
use ctl::model::{CurrentState, Health, PsTask, PublishMode};
use ctl::proto::{Command, Query};
use testbed::probe::{self, KeepAlive};
use testbed::{plan, sys, RunSpec};

const T: Duration = Duration::from_secs(3);

/// A fresh 3-node mesh, or `None` (with a printed line) when not root or without dig.
fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("h", "dns_health", tag, || {
        assert!(
            testbed::preflight::on_path("dig"),
            "dig is missing: run scripts/deps.sh (Debian's bind9-dnsutils)"
        );
    })
}

/// The gateway (and resolver) address of a network the testbed made.
fn gateway(m: &Mesh, network: &str) -> Ipv4Addr {
    let k = m
        .rec
        .networks
        .iter()
        .find(|n| n.name == network)
        .map(|n| n.k)
        .unwrap();
    plan::gateway(k)
}

/// What `dig` printed.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (type, address) of the answer section.
    answers: Vec<(String, String)>,
    raw: String,
}

impl Dig {
    fn a(&self) -> BTreeSet<String> {
        self.answers
            .iter()
            .filter(|(t, _)| t == "A")
            .map(|(_, a)| a.clone())
            .collect()
    }
}

/// `dig @server name type [extra...]` in namespace `ns`.
fn dig(ns: &str, server: Ipv4Addr, name: &str, qtype: &str, extra: &[&str]) -> Dig {
    let at = format!("@{server}");
    let mut args = vec![at.as_str(), name, qtype, "+time=2", "+tries=2"];
    args.extend_from_slice(extra);
    let out = sys::exec_in_output(ns, "dig", &args).unwrap();
    let mut d = Dig {
        raw: out.stdout.clone(),
        ..Dig::default()
    };
    let mut in_answer = false;
    for line in out.stdout.lines() {
        if let Some(rest) = line.split_once("status: ").map(|(_, r)| r) {
            d.status = rest.split(',').next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
        }
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() {
                in_answer = false;
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                d.answers.push((f[3].to_string(), f[4].to_string()));
            }
        }
    }
    assert!(
        !d.status.is_empty(),
        "dig {name} {qtype} {extra:?} got no answer:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    d
}

fn set(addrs: &[Ipv4Addr]) -> BTreeSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

#[test]
// Casts: test values are small and known.
#[allow(clippy::cast_possible_truncation)]
fn dig_from_a_task_resolves_the_services_of_its_networks() {
    let Some(mut m) = mesh("dns") else { return };
    m.run(&RunSpec::new("web", 2).network("appnet")).unwrap();
    m.run(
        &RunSpec::new("api", 2)
            .network("appnet")
            .with_args(&["--endpoint-mode", "dnsrr"]),
    )
    .unwrap();
    m.run(&RunSpec::new("db", 1).network("backnet")).unwrap();
    m.run(&RunSpec::new("client", 1).network("appnet")).unwrap();
    let client = m.tasks_of("client")[0].clone();
    let gw = gateway(&m, "appnet");
    let addrs = |m: &Mesh, svc: &str, net: &str| -> Vec<Ipv4Addr> {
        m.tasks_of(svc)
            .iter()
            .map(|t| t.addr_on(net).unwrap())
            .collect()
    };
    let vip = m.vip("web", "appnet").unwrap();

    let d = dig(&client.ns, gw, "web", "A", &[]);
    assert_eq!(
        (d.status.as_str(), d.a()),
        ("NOERROR", set(&[vip])),
        "{}",
        d.raw
    );
    assert!(d.flags.contains(&"aa".to_string()), "{}", d.raw);
    let d = dig(&client.ns, gw, "tasks.web", "A", &[]);
    assert_eq!(d.a(), set(&addrs(&m, "web", "appnet")), "{}", d.raw);
    let d = dig(&client.ns, gw, "api", "A", &[]);
    assert_eq!(
        d.a(),
        set(&addrs(&m, "api", "appnet")),
        "dnsrr: the tasks\n{}",
        d.raw
    );
    let d = dig(&client.ns, gw, "web", "AAAA", &[]);
    assert_eq!(
        (d.status.as_str(), d.answers.len()),
        ("NOERROR", 0),
        "{}",
        d.raw
    );
    for name in ["db", "tasks.db", "nosuch", "nosuch.example.com"] {
        assert_eq!(
            dig(&client.ns, gw, name, "A", &[]).status,
            "NXDOMAIN",
            "{name}"
        );
    }
    // Over TCP too.
    let d = dig(&client.ns, gw, "tasks.web", "A", &["+tcp"]);
    assert_eq!(d.a(), set(&addrs(&m, "web", "appnet")), "{}", d.raw);
    // db.1 is on backnet only: db resolves there, web does not.
    let db = m.tasks_of("db")[0].clone();
    let bgw = gateway(&m, "backnet");
    assert_eq!(
        dig(&db.ns, bgw, "db", "A", &[]).a(),
        set(&[m.vip("db", "backnet").unwrap()])
    );
    assert_eq!(dig(&db.ns, bgw, "web", "A", &[]).status, "NXDOMAIN");

    // A malformed query: FORMERR; a message too short for a header: no answer at all.
    let sock = probe::udp_socket(&client.ns).unwrap().unwrap();
    sock.connect(SocketAddr::from((gw, 53))).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut two_questions = vec![0x12, 0x34, 0x01, 0x00, 0, 2, 0, 0, 0, 0, 0, 0];
    two_questions.extend_from_slice(b"\x03web\x00\x00\x01\x00\x01\x03web\x00\x00\x01\x00\x01");
    sock.send(&two_questions).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(
        (n, &buf[..2], buf[3] & 0xf),
        (12, &[0x12u8, 0x34][..], 1),
        "FORMERR, header only"
    );
    sock.send(&[1, 2, 3]).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "a 3-byte message is dropped");

    // Latency: sequential queries from the task, through the pipeline and the host thread.
    let mut lat = Vec::new();
    let mut lost = 0;
    for i in 0..300u16 {
        let mut q = vec![(i >> 8) as u8, i as u8, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03web\x00\x00\x01\x00\x01");
        let t0 = Instant::now();
        sock.send(&q).unwrap();
        // A busy machine may delay an answer past the read timeout: ask again, as a stub
        // resolver would, and count it.
        let mut n = None;
        for _ in 0..4 {
            match sock.recv(&mut buf) {
                Ok(got) if buf[..2] == q[..2] => {
                    n = Some(got);
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    sock.send(&q).unwrap();
                }
            }
        }
        lat.push(t0.elapsed());
        assert!(n.is_some_and(|n| n > 12), "query {i} unanswered");
    }
    lat.sort();
    eprintln!(
        "300 UDP queries one after another: p50 {:?}, p99 {:?}, max {:?}, {lost} asked again",
        lat[150], lat[296], lat[299]
    );
    assert!(lost <= 3, "{lost} queries had to be asked again");

    // Scaled down: the task leaves the answers at once.
    m.scale("web", 1).unwrap();
    let d = dig(&client.ns, gw, "tasks.web", "A", &[]);
    assert_eq!(d.a(), set(&addrs(&m, "web", "appnet")), "{}", d.raw);
    assert_eq!(d.a().len(), 1);
    // ping the VIP and the resolver.
    for ip in [vip, gw] {
        let (ok, out) = probe::ping(&client.ns, &ip.to_string(), 2).unwrap();
        assert!(ok, "ping {ip}: {out}");
    }
    let sock = m.node(&client.node).unwrap().socket.clone();
    let stats = m.meshctl_on(&[sock], &["stats"]).unwrap();
    eprintln!(
        "{}",
        stats
            .lines()
            .filter(|l| l.starts_with("dns") || l.starts_with("host"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `service ps` from every node's meshd.
fn ps_everywhere(m: &Mesh, service: &str) -> Vec<Vec<PsTask>> {
    m.sockets()
        .iter()
        .map(|s| {
            let r = ctl::client::request(
                s,
                &Command::Query(Query::ServicePs {
                    name: service.into(),
                }),
                T,
            )
            .unwrap();
            serde_json::from_value(r.into_result().unwrap().result).unwrap()
        })
        .collect()
}

fn health_everywhere(m: &Mesh, service: &str, task: &str) -> Vec<Option<Health>> {
    ps_everywhere(m, service)
        .iter()
        .map(|rows| {
            rows.iter()
                .find(|r| r.task.name == task)
                .and_then(|r| r.status.as_ref()?.health)
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// One request of the load: when it started, the node it went to (n1 = 0), and what
/// answered (a task) or the error.
type Sample = (Instant, usize, Result<String, String>);

/// New connections to the published port 8080 through all three nodes in turn, one after
/// another, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(m: &Mesh) -> Load {
        let urls: Vec<String> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| format!("http://{}/", m.node_sock(n, 8080).unwrap()))
            .collect();
        let ns = m.client_ns();
        Load::each(move |i| {
            let node = i % urls.len();
            let r = probe::curl(&ns, &urls[node], Duration::from_secs(2), &[]).unwrap();
            let v = match r.whoami() {
                Some(w) => Ok(w.hostname),
                None => Err(format!("curl exit {}: {}", r.code, r.stderr.trim())),
            };
            (node, v)
        })
    }

    /// Runs `ask(i)` for i = 0, 1, 2 ... one after another until stopped, noting when each
    /// started, the node it went to and what answered.
    fn each(
        mut ask: impl FnMut(usize) -> (usize, Result<String, String>) + Send + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
        let (st, sa) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (node, v) = ask(i);
                sa.lock().unwrap().push((t, node, v));
                i += 1;
            }
        });
        Load {
            stop,
            samples,
            thread,
        }
    }

    /// Stops it; every request it made.
    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let s = self.samples.lock().unwrap().clone();
        s
    }
}

#[test]
fn a_task_whose_server_stops_under_load_gets_no_new_connection_after_interval_times_retries() {
    let Some(mut m) = mesh("hc") else { return };
    let (interval, retries) = (Duration::from_secs(1), 2u32);
    let spec = RunSpec::new("web", 3)
        .publish("8080:80", PublishMode::Ingress)
        .unwrap()
        .network("appnet")
        .with_args(&[
            "--health",
            "http:/healthz=200",
            "--health-interval",
            "1s",
            "--health-timeout",
            "900ms",
            "--health-retries",
            "2",
        ]);
    m.run(&spec).unwrap();
    let took = wait_for(
        "every node holds every task healthy",
        Duration::from_secs(30),
        || {
            ["web.1", "web.2", "web.3"].iter().all(|t| {
                health_everywhere(&m, "web", t)
                    .iter()
                    .all(|h| *h == Some(Health::Healthy))
            })
        },
    );
    eprintln!("healthy on every node {took:?} after service create returned");
    let inspect = m.meshctl(&["service", "inspect", "web"]).unwrap();
    assert!(inspect.contains("\"Healthcheck\""), "{inspect}");

    // A connection held open to a task that stays: it must see no error throughout.
    let n1 = m.node_sock("n1", 8080).unwrap();
    let mut held = None;
    for _ in 0..6 {
        let s = probe::tcp_open(&m.client_ns(), n1, T).unwrap().unwrap();
        let mut k = KeepAlive::new(s, "n1", T).unwrap();
        let who = probe::Whoami::parse(&k.get().unwrap()).unwrap().hostname;
        if who != "web.2" {
            held = Some((k, who));
            break;
        }
    }
    let (mut held, held_by) = held.expect("a connection to web.1 or web.3");

    // Load: new connections through all three nodes, one after another.
    let load = Load::start(&m);
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = Instant::now();
    m.stop_task_server("web.2").unwrap();
    let detected = wait_for(
        "web.2 unhealthy on every node",
        Duration::from_secs(20),
        || {
            health_everywhere(&m, "web", "web.2")
                .iter()
                .all(|h| *h == Some(Health::Unhealthy))
        },
    );
    let ps = m.meshctl(&["service", "ps", "web"]).unwrap();
    eprintln!("{ps}");
    let row = ps.lines().find(|l| l.starts_with("web.2")).unwrap();
    assert!(row.contains("Failed") && row.contains("unhealthy"), "{ps}");
    let rows = &ps_everywhere(&m, "web")[0];
    let st = rows
        .iter()
        .find(|r| r.task.name == "web.2")
        .unwrap()
        .status
        .clone()
        .unwrap();
    assert_eq!(st.state, CurrentState::Failed);
    // DNS leaves it out too (asked from a task of the service, on appnet).
    let w1 = m.tasks_of("web")[0].clone();
    let d = dig(&w1.ns, gateway(&m, "appnet"), "tasks.web", "A", &[]);
    assert!(
        !d.a().contains(
            &m.task("web.2")
                .unwrap()
                .addr_on("appnet")
                .unwrap()
                .to_string()
        ),
        "{}",
        d.raw
    );
    assert_eq!(d.a().len(), 2, "{}", d.raw);
    std::thread::sleep(Duration::from_secs(3));

    // Back: its server starts, it passes, it takes connections again.
    let restarted = Instant::now();
    m.start_task_server("web.2").unwrap();
    let back = wait_for(
        "web.2 healthy on every node again",
        Duration::from_secs(20),
        || {
            health_everywhere(&m, "web", "web.2")
                .iter()
                .all(|h| *h == Some(Health::Healthy))
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    let samples = load.stop();

    // The held connection never saw an error.
    let again = held.get().unwrap();
    assert_eq!(probe::Whoami::parse(&again).unwrap().hostname, held_by);

    let bound = interval * retries;
    // What a client may still see after the bound: the verdict's trip to the other nodes and
    // their next table (milliseconds), and a request already under way.
    let slack = Duration::from_millis(500);
    // A request under way when the server stops may fail with it.
    let around = stopped - Duration::from_millis(200);
    let mut errors_after_stop = Vec::new();
    for (t, _, r) in &samples {
        match r {
            Ok(task) if *t < stopped => assert!(task.starts_with("web."), "{task}"),
            Err(e) if *t < around => panic!("a request before the stop failed: {e}"),
            Err(e) if *t < restarted => {
                errors_after_stop.push((t.saturating_duration_since(stopped), e.clone()))
            }
            Ok(task) if *t > stopped + bound + slack && *t < restarted => {
                assert_ne!(
                    task,
                    "web.2",
                    "web.2 answered {:?} after its stop",
                    t.duration_since(stopped)
                )
            }
            Err(e) => panic!(
                "request at {:?} after the restart failed: {e}",
                t.duration_since(restarted)
            ),
            Ok(_) => {}
        }
    }
    let last_error = errors_after_stop.iter().map(|(d, _)| *d).max();
    eprintln!(
        "{} requests; after web.2's server stopped: {} refused, the last {:?} after the stop; unhealthy everywhere after {detected:?} (bound {bound:?}); healthy again {back:?} after its restart",
        samples.len(),
        errors_after_stop.len(),
        last_error
    );
    for (d, e) in &errors_after_stop {
        assert!(
            *d <= bound + slack,
            "a connection failed {d:?} after the stop ({e}): more than interval x retries"
        );
    }
    assert!(
        detected <= bound + Duration::from_millis(800),
        "detected after {detected:?}"
    );
    let late: BTreeSet<String> = samples
        .iter()
        .filter(|(t, _, _)| *t > restarted + back + slack)
        .filter_map(|(_, _, r)| r.clone().ok())
        .collect();
    assert!(
        late.contains("web.2"),
        "web.2 takes connections again: {late:?}"
    );
}

#[test]
fn without_a_check_a_task_whose_server_dies_under_load_is_ejected_after_n_refusals_per_node() {
    let Some(mut m) = mesh("pe") else { return };
    // The default passive health, with an ejection long enough to restart the server within it.
    let consecutive = 3usize;
    let spec = RunSpec::new("web", 3)
        .publish("8080:80", PublishMode::Ingress)
        .unwrap()
        .network("appnet")
        .with_args(&["--outlier", "consecutive=3,eject=8s"]);
    m.run(&spec).unwrap();
    let inspect = m.meshctl(&["service", "inspect", "web"]).unwrap();
    assert!(
        inspect.contains("\"BaseEjectionTime\": \"8000ms\""),
        "{inspect}"
    );

    // Load: new connections through all three nodes, one after another.
    let load = Load::start(&m);
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = Instant::now();
    // Its server dies; the task stays registered (no check, nothing else says so).
    m.stop_task_server("web.2").unwrap();
    let ejected = wait_for(
        "web.2 ejected on every node",
        Duration::from_secs(8),
        || {
            health_everywhere(&m, "web", "web.2")
                .iter()
                .all(|h| *h == Some(Health::Ejected))
        },
    );
    let ps = m.meshctl(&["service", "ps", "web"]).unwrap();
    eprintln!("{ps}");
    let row = ps.lines().find(|l| l.starts_with("web.2")).unwrap();
    assert!(
        row.contains("ejected by node") && row.contains("refused (RST)"),
        "{ps}"
    );
    // DNS leaves it out on a node that ejected it.
    let w1 = m.tasks_of("web")[0].clone();
    let d = dig(&w1.ns, gateway(&m, "appnet"), "tasks.web", "A", &[]);
    assert_eq!(d.a().len(), 2, "{}", d.raw);
    let stats = m
        .meshctl_local("n1", &["stats", "--format", "json"])
        .unwrap();
    assert!(stats.contains("\"outlier_ejections\":"), "{stats}");
    // Back within the ejection: it takes connections again once the ejection ends.
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    m.start_task_server("web.2").unwrap();
    let back = wait_for("web.2 back on every node", Duration::from_secs(20), || {
        health_everywhere(&m, "web", "web.2")
            .iter()
            .all(Option::is_none)
    });
    std::thread::sleep(Duration::from_secs(2));
    let samples = load.stop();

    // A request under way when the server stops may fail with it.
    let around = stopped - Duration::from_millis(200);
    let mut errors = [0usize; 3];
    for (t, node, r) in &samples {
        match r {
            Err(e) if *t < around => panic!("a request before the stop failed: {e}"),
            Err(_) => errors[*node] += 1,
            Ok(_) => {}
        }
    }
    eprintln!(
        "{} requests; after web.2's server died: refused per node {errors:?} (bound {consecutive}); ejected everywhere after {ejected:?}; back {back:?} after its restart",
        samples.len()
    );
    // Each node ejected it after `consecutive` refused connections of its own, as meshd
    // counted them (the SYNs its task answered with a RST); the client saw those fail, and
    // perhaps the one request under way when the server died (reset, an established
    // connection: not a refusal). The load makes one request at a time, so that is one
    // request, on one node, at most.
    for (node, n) in errors.iter().enumerate() {
        let name = format!("n{}", node + 1);
        let refused = common::counter(&m, &name, "syn_refused");
        assert!(
            refused <= consecutive as u64,
            "{name}: meshd saw {refused} refused connections, more than the {consecutive} in a \
             row that eject"
        );
        assert!(
            *n <= consecutive + 1,
            "{name}: {n} connections failed, more than the {consecutive} in a row that eject \
             and the one under way"
        );
    }
    let extra: usize = errors.iter().map(|n| n.saturating_sub(consecutive)).sum();
    assert!(
        extra <= 1,
        "failures past {consecutive} a node: {errors:?}; only one request was under way when \
         the server died"
    );
    assert!(
        errors.iter().sum::<usize>() >= 1,
        "the dead server was hit at all"
    );
    let late: BTreeSet<String> = samples
        .iter()
        .filter(|(t, _, _)| *t > restarted + back + Duration::from_millis(500))
        .filter_map(|(_, _, r)| r.clone().ok())
        .collect();
    assert!(
        late.contains("web.2"),
        "web.2 takes connections again: {late:?}"
    );
}

/// Passive health for UDP: a task whose server dies answers datagrams with ICMP port
/// unreachable (from its kernel); each node that sent it one takes that as a failure (the
/// nodes where the task is not local get the ICMP over VXLAN) and ejects it after N, with no
/// check configured. Clients asking through all three nodes see unanswered datagrams until then,
/// and none after. More than N per node may go unanswered before: the task's kernel sends at most
/// one ICMP error a second to each destination (`net.ipv4.icmp_ratelimit`, 1000 ms), and a
/// datagram it sent none for is no evidence.
#[test]
fn without_a_check_a_udp_task_whose_server_dies_is_ejected_by_its_icmp_unreachables() {
    let Some(mut m) = mesh("pu") else { return };
    let consecutive = 3usize;
    let spec = RunSpec::new("echo", 3)
        .publish("5353:53/udp", PublishMode::Ingress)
        .unwrap()
        .network("appnet")
        .with_args(&["--outlier", "consecutive=3,eject=8s"]);
    m.run(&spec).unwrap();
    // Load: a datagram from a new port (a new flow) through n1, n2, n3 in turn.
    let to: Vec<SocketAddr> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| m.node_sock(n, 5353).unwrap())
        .collect();
    let ns = m.client_ns();
    let load = Load::each(move |i| {
        let node = i % to.len();
        // A source port of its own each time: a port used before could still have its flow
        // (UDP flows live 30 s idle), to the task it went to then.
        let port = 20_000 + u16::try_from(i % 40_000).unwrap();
        let sock = sys::in_netns(&ns, || std::net::UdpSocket::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap();
        let r = probe::udp_ask_on(&sock, to[node], "ping", Duration::from_secs(1))
            .map_err(|f| f.to_string());
        (node, r)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = Instant::now();
    m.stop_task_server("echo.2").unwrap();
    let ejected = wait_for(
        "echo.2 ejected on every node",
        Duration::from_secs(15),
        || {
            health_everywhere(&m, "echo", "echo.2")
                .iter()
                .all(|h| *h == Some(Health::Ejected))
        },
    );
    let ps = m.meshctl(&["service", "ps", "echo"]).unwrap();
    eprintln!("{ps}");
    let row = ps.lines().find(|l| l.starts_with("echo.2")).unwrap();
    assert!(row.contains("answered by ICMP unreachable"), "{ps}");
    std::thread::sleep(Duration::from_secs(2));
    let samples = load.stop();
    let stats = m
        .meshctl_local("n1", &["stats", "--format", "json"])
        .unwrap();
    assert!(stats.contains("\"task_unreachable\":"), "{stats}");

    // A datagram asked before the stop may meet it; one asked once every node has ejected the
    // task (and published the table without it: well within 300 ms) must be answered.
    let around = stopped - Duration::from_millis(500);
    let settled = stopped + ejected + Duration::from_millis(300);
    let mut errors = [0usize; 3];
    for (t, node, r) in samples.iter() {
        match r {
            Err(e) if *t < around => panic!("a datagram before the stop went unanswered: {e}"),
            Err(e) if *t > settled => panic!(
                "a datagram through n{} asked {:?} after the stop, after echo.2 was ejected \
                 everywhere ({ejected:?}), went unanswered: {e}",
                node + 1,
                t.duration_since(stopped)
            ),
            Err(_) => errors[*node] += 1,
            Ok(_) => {}
        }
    }
    let after = samples.iter().filter(|(t, _, _)| *t > settled).count();
    eprintln!(
        "{} datagrams; after echo.2's server died: unanswered per node {errors:?} (N = \
         {consecutive} ICMP unreachables each; the task's kernel sends one a second per \
         destination), ejected everywhere after {ejected:?}, then {after} asked, all answered",
        samples.len()
    );
    assert!(after > 0, "nothing asked after the ejection");
    for (node, n) in errors.iter().enumerate() {
        assert!(*n >= 1, "node n{}: never met the dead task", node + 1);
    }
}
