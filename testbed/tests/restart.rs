//! End-to-end: a node's meshd restarted under load (`kill -9`, then SIGTERM as `systemctl
//! restart` sends) keeps the connections that enter through it: its flows live in its
//! `--flow-state` file and the new meshd adopts them. `wrk` holds keep-alive connections through
//! the node across both restarts, and one connection held open answers before and after.
//!
//! Run as root from the workspace root (needs `wrk`: `scripts/deps.sh` installs it):
//!
//! ```text
//! sudo cargo test -p testbed --test restart -- --nocapture
//! ```
//!
//! Without root the test prints a line and passes (under CI it fails). It builds its own
//! 3-node instance `meshd-r<tag><pid>-*`, removed by a guard even when the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::Mesh;
use ctl::model::PublishMode;
use testbed::probe::KeepAlive;
use testbed::{sys, RunSpec};

fn mesh(tag: &str) -> Option<Mesh> {
    common::mesh("r", "restart", tag, || {
        assert!(
            testbed::preflight::on_path("wrk"),
            "wrk is missing: run scripts/deps.sh (Debian's wrk)"
        );
    })
}

/// What `wrk` said: requests, and its socket errors (connect, read, write, timeout).
#[derive(Debug)]
struct Wrk {
    requests: u64,
    errors: [u64; 4],
    non2xx: u64,
    text: String,
}

impl Wrk {
    fn parse(text: &str) -> Wrk {
        let num = |s: &str| s.trim().trim_end_matches(',').parse::<u64>().unwrap_or(0);
        let mut w = Wrk {
            requests: 0,
            errors: [0; 4],
            non2xx: 0,
            text: text.to_string(),
        };
        for l in text.lines() {
            let l = l.trim();
            if let Some((n, _)) = l.split_once(" requests in ") {
                w.requests = num(n);
            } else if let Some(rest) = l.strip_prefix("Socket errors:") {
                // "connect 0, read 0, write 0, timeout 0"
                let words: Vec<&str> = rest.split_whitespace().collect();
                for (i, name) in ["connect", "read", "write", "timeout"].iter().enumerate() {
                    if let Some(p) = words.iter().position(|x| x == name) {
                        w.errors[i] = num(words.get(p + 1).unwrap_or(&"0"));
                    }
                }
            } else if let Some(n) = l.strip_prefix("Non-2xx or 3xx responses:") {
                w.non2xx = num(n);
            }
        }
        w
    }
}

#[test]
fn connections_through_a_node_survive_a_kill_9_and_a_sigterm_restart_of_its_meshd() {
    let Some(mut m) = mesh("k") else { return };
    let spec = RunSpec::new("web", 2)
        .publish("8080:80", PublishMode::Ingress)
        .unwrap()
        .network("appnet");
    m.run(&spec).unwrap();
    let addr = m.node_sock("n1", 8080).unwrap();
    let client = m.client_ns();

    // One connection held open through n1, answered before anything happens.
    let stream = sys::in_netns(&client, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .unwrap()
    .unwrap();
    let mut held = KeepAlive::new(stream, &addr.to_string(), Duration::from_secs(5)).unwrap();
    let first = held.get().unwrap();

    // Keep-alive load through n1: 4 connections for 14 s, each request given 5 s.
    let url = format!("http://{addr}/");
    let wrk = {
        let client = client.clone();
        std::thread::spawn(move || {
            sys::exec_in_output(
                &client,
                "wrk",
                &["-t1", "-c4", "-d14s", "--timeout", "5s", &url],
            )
            .map(|o| o.stdout)
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    // A crash: kill -9, then a new meshd at once.
    let t0 = Instant::now();
    m.kill_meshd("n1").unwrap();
    m.restart_meshd("n1").unwrap();
    let gap_kill = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let after_kill = held.get().unwrap();

    // A graceful restart: SIGTERM, then a new meshd.
    let t0 = Instant::now();
    m.stop_meshd("n1").unwrap();
    m.restart_meshd("n1").unwrap();
    let gap_term = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after_term = held.get().unwrap();

    let out = wrk.join().unwrap().unwrap();
    let w = Wrk::parse(&out);
    let log = std::fs::read_to_string(m.plan.node_log(m.node("n1").unwrap().index)).unwrap();
    let adopted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("adopted the flows of the meshd before this one"))
        .collect();
    eprintln!(
        "wrk through n1 across a kill -9 (gap {gap_kill:?}) and a SIGTERM restart (gap \
         {gap_term:?}): {} requests, socket errors connect/read/write/timeout {:?}, non-2xx {}\n{}",
        w.requests,
        w.errors,
        w.non2xx,
        adopted.join("\n")
    );

    // Both restarts adopted the flows: the crash's, and the clean stop's.
    assert_eq!(adopted.len(), 2, "{log}");
    assert!(
        adopted[0].contains("did not stop cleanly"),
        "{}",
        adopted[0]
    );
    assert!(adopted[1].contains("it stopped cleanly"), "{}", adopted[1]);
    // The connection held open answered after each restart, from the same task.
    let host = |body: &str| testbed::probe::Whoami::parse(body).map(|w| w.hostname);
    assert!(host(&first).is_some(), "{first}");
    assert_eq!(host(&after_kill), host(&first), "{after_kill}");
    assert_eq!(host(&after_term), host(&first), "{after_term}");
    // wrk's connections went on: none was reset or refused (a reset shows as a read error, a
    // refused reconnect as a connect error). A request under way in a gap may time out (at
    // most one per connection and restart).
    let [connect, read, write, timeout] = w.errors;
    assert_eq!((connect, read, write), (0, 0, 0), "{}", w.text);
    assert!(timeout <= 8, "{} requests timed out: {}", timeout, w.text);
    assert_eq!(w.non2xx, 0, "{}", w.text);
    assert!(w.requests > 100, "{}", w.text);
}
