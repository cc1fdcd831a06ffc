//! The cluster's state in a real etcd (Debian's etcd-server, started by each test on free
//! loopback ports and stopped after): changes are single transactions of the keys they change,
//! a refused change leaves etcd untouched, concurrent changes lose nothing, a bad value is
//! skipped by its key's name while the rest applies. Checked with etcdctl, etcd's own client.
//!
//! `cargo test -p ctl --features cluster --test etcd` (scripts/deps.sh --bench installs etcd).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctl::cluster::etcd::{ClusterError, Etcd, Tls};
use ctl::model::{
    Availability, Network, Node, Protocol, PublishMode, PublishedPort, Service, ServiceNetwork,
    State, Task, TaskAddress,
};
use ctl::proto::{Change, ServiceUpdate, TaskUpdate};

/// An etcd server of the test's own, stopped (by its pid) and its data removed when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(tag: &str) -> Server {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok(),
            "etcd is not installed: `apt-get install etcd-server etcd-client` (scripts/deps.sh --bench does)"
        );
        let dir = std::env::temp_dir().join(format!("meshd-etcd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(&dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.etcdctl(&["endpoint", "health"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up at {}",
                s.endpoint
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn client(&self) -> Etcd {
        Etcd::connect(std::slice::from_ref(&self.endpoint), Duration::from_secs(5)).unwrap()
    }

    fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The layout's keys in etcd, as etcdctl lists them.
    fn keys(&self) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", "/meshd/v1/"])
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
        endpoints: Default::default(),
        mtu: None,
        encryption: None,
    }
}

fn node(name: &str, last: u8) -> Node {
    Node {
        name: name.into(),
        addr: Ipv4Addr::new(192, 168, 1, last),
        vtep: None,
        addr6: None,
        vtep_port: 4789,
        availability: Availability::Active,
    }
}

fn task(name: &str, host: u8) -> Task {
    Task {
        name: name.into(),
        node: "n1".into(),
        addresses: vec![TaskAddress {
            network: "appnet".into(),
            addr: Ipv4Addr::new(10, 0, 1, host),
        }],
        state: Default::default(),
        weight: 1,
        vlan: None,
    }
}

/// appnet, n1 and `web` with tasks web.1 and web.2, as three changes.
fn seed(e: &mut Etcd) -> State {
    e.change(&Change::NetworkCreate { network: appnet() })
        .unwrap();
    e.change(&Change::NodeAdd {
        node: node("n1", 11),
        endpoints: Default::default(),
    })
    .unwrap();
    let mut web = Service::new("web");
    web.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
    });
    web.tasks = vec![task("web.1", 100), task("web.2", 101)];
    e.change(&Change::ServiceCreate { service: web })
        .unwrap()
        .state
}

#[test]
fn changes_are_transactions_of_the_keys_they_change() {
    let s = Server::start("keys");
    let mut e = s.client();
    let state = seed(&mut e);
    assert_eq!(
        s.keys(),
        [
            "/meshd/v1/generation",
            "/meshd/v1/networks/appnet",
            "/meshd/v1/nodes/n1",
            "/meshd/v1/services/web",
            "/meshd/v1/tasks/web/web.1",
            "/meshd/v1/tasks/web/web.2",
        ]
    );
    let snap = e.load().unwrap();
    assert_eq!(snap.state, state);
    assert_eq!(snap.generation, 3);
    // Another client (another machine) reads the same state.
    assert_eq!(s.client().load().unwrap().state, state);
    // Adding a task writes that task's key and the generation, nothing else.
    let before = s
        .etcdctl(&["get", "/meshd/v1/services/web", "-w", "json"])
        .unwrap();
    e.change(&Change::ServiceUpdate {
        name: "web".into(),
        update: ServiceUpdate {
            task_add: vec![task("web.3", 102)],
            ..ServiceUpdate::default()
        },
    })
    .unwrap();
    let after = s
        .etcdctl(&["get", "/meshd/v1/services/web", "-w", "json"])
        .unwrap();
    let mod_rev = |j: &str| {
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        v["kvs"][0]["mod_revision"].as_i64().unwrap()
    };
    assert_eq!(
        mod_rev(&before),
        mod_rev(&after),
        "the service's key was rewritten"
    );
    assert!(s.keys().contains(&"/meshd/v1/tasks/web/web.3".to_string()));
}

#[test]
fn a_refused_change_leaves_etcd_untouched() {
    let s = Server::start("refused");
    let mut e = s.client();
    seed(&mut e);
    let before = e.load().unwrap();
    // A task with an address another task has: the whole state's rule, checked before writing.
    let err = e
        .change(&Change::ServiceUpdate {
            name: "web".into(),
            update: ServiceUpdate {
                task_add: vec![task("web.3", 100)],
                ..ServiceUpdate::default()
            },
        })
        .unwrap_err();
    assert!(matches!(err, ClusterError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("10.0.1.100"), "{err}");
    let err = e
        .change(&Change::NetworkRm {
            name: "appnet".into(),
        })
        .unwrap_err();
    assert!(matches!(err, ClusterError::Refused(_)), "{err}");
    let after = e.load().unwrap();
    assert_eq!(
        after, before,
        "etcd changed (revision {} → {})",
        before.revision, after.revision
    );
}

#[test]
fn concurrent_changes_from_two_operators_lose_nothing() {
    let s = Server::start("race");
    seed(&mut s.client());
    let endpoint = s.endpoint.clone();
    let adders: Vec<_> = [10u8, 30]
        .into_iter()
        .map(|first| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let mut e = Etcd::connect(&[endpoint], Duration::from_secs(5)).unwrap();
                for k in 0..10u8 {
                    let slot = first + k;
                    e.change(&Change::ServiceUpdate {
                        name: "web".into(),
                        update: ServiceUpdate {
                            task_add: vec![task(&format!("web.{slot}"), 100 + slot)],
                            ..ServiceUpdate::default()
                        },
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for a in adders {
        a.join().unwrap();
    }
    let snap = s.client().load().unwrap();
    let web = snap.state.service("web").unwrap();
    assert_eq!(
        web.tasks.len(),
        22,
        "lost updates: {:?}",
        web.tasks.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    assert_eq!(snap.generation, 3 + 20);
}

#[test]
fn a_change_to_one_service_reads_that_service_and_still_loses_nothing() {
    // Task updates and published ports read the service they change (and, to publish, every
    // service's key), not the store; the guard is the same generation as a whole read's.
    let s = Server::start("scoped");
    seed(&mut s.client());
    let mut e = s.client();
    let mut api = Service::new("api");
    api.networks.push(ServiceNetwork {
        network: "appnet".into(),
        vip: Some(Ipv4Addr::new(10, 0, 1, 3)),
    });
    api.tasks = vec![task("api.1", 110)];
    api.ports.push(PublishedPort {
        protocol: Protocol::Tcp,
        published: 8080,
        target: 80,
        mode: PublishMode::Host,
    });
    e.change(&Change::ServiceCreate { service: api }).unwrap();
    // Two writers flip weights of web's two tasks at once, while a third publishes ports.
    let endpoint = s.endpoint.clone();
    let writers: Vec<_> = ["web.1", "web.2"]
        .into_iter()
        .map(|t| {
            let endpoint = endpoint.clone();
            std::thread::spawn(move || {
                let mut e = Etcd::connect(&[endpoint], Duration::from_secs(5)).unwrap();
                for w in 1..=10u32 {
                    e.change(&Change::ServiceUpdate {
                        name: "web".into(),
                        update: ServiceUpdate {
                            task_update: vec![TaskUpdate {
                                name: t.into(),
                                weight: Some(w),
                                state: None,
                            }],
                            ..ServiceUpdate::default()
                        },
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    let publish = |e: &mut Etcd, port: u16| {
        e.change(&Change::ServiceUpdate {
            name: "web".into(),
            update: ServiceUpdate {
                publish_add: vec![PublishedPort {
                    protocol: Protocol::Tcp,
                    published: port,
                    target: 80,
                    mode: PublishMode::Host,
                }],
                ..ServiceUpdate::default()
            },
        })
    };
    for port in 9001..=9005 {
        publish(&mut e, port).unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    let snap = s.client().load().unwrap();
    let web = snap.state.service("web").unwrap();
    let weights: Vec<u32> = web.tasks.iter().map(|t| t.weight).collect();
    assert_eq!(weights, [10, 10], "lost updates");
    assert_eq!(web.ports.len(), 5, "{:?}", web.ports);
    assert_eq!(snap.generation, 4 + 20 + 5);
    // api holds 8080: web cannot publish it, and the refusal names api; nothing is written.
    let before = s.client().load().unwrap();
    let err = publish(&mut e, 8080).unwrap_err();
    assert!(
        err.to_string().contains("in use by service \"api\""),
        "{err}"
    );
    assert_eq!(s.client().load().unwrap(), before);
}

#[test]
fn a_bad_value_in_etcd_is_skipped_by_its_key_and_the_rest_still_applies() {
    let s = Server::start("bad");
    let mut e = s.client();
    seed(&mut e);
    // Written by hand with etcdctl: a value that does not parse, a key outside the layout.
    s.etcdctl(&["put", "/meshd/v1/nodes/n2", "{oops"]).unwrap();
    s.etcdctl(&["put", "/meshd/v1/gadgets/x", "{}"]).unwrap();
    let snap = e.load().unwrap();
    let skipped: Vec<String> = snap.skipped.iter().map(|x| x.to_string()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[0].starts_with("/meshd/v1/gadgets/x: not a key of meshd's layout"),
        "{skipped:?}"
    );
    assert!(
        skipped[1].starts_with("/meshd/v1/nodes/n2: the value does not parse"),
        "{skipped:?}"
    );
    // The rest is read, and a change to it applies without touching the bad keys.
    assert!(snap.state.node("n1").is_some() && snap.state.service("web").is_some());
    e.change(&Change::NodeAdd {
        node: node("n3", 13),
        endpoints: Default::default(),
    })
    .unwrap();
    assert_eq!(
        s.etcdctl(&["get", "/meshd/v1/nodes/n2", "--print-value-only"])
            .unwrap()
            .trim(),
        "{oops"
    );
    assert!(e.load().unwrap().state.node("n3").is_some());
    // Nothing listens where no etcd runs: a clear error.
    let err = Etcd::connect(
        &[format!("http://127.0.0.1:{}", free_port())],
        Duration::from_millis(500),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot reach etcd"), "{err}");
}

/// Runs openssl with `args` in `dir`, panicking with its output if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package) makes the test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a certificate for etcd at 127.0.0.1 and one for a client, all signed by the CA.
fn certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=meshd test CA",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext.replace("\\n", "\n")).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

#[test]
fn etcd_over_tls_with_client_certificates_as_deployments_run_it() {
    let dir = std::env::temp_dir().join(format!("meshd-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    certificates(&dir.join("pki"));
    let pki = |f: &str| dir.join("pki").join(f);
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .arg("--cert-file")
        .arg(pki("server.pem"))
        .arg("--key-file")
        .arg(pki("server.key"))
        .arg("--trusted-ca-file")
        .arg(pki("ca.pem"))
        .arg("--client-cert-auth")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tls = Tls {
        cacert: Some(pki("ca.pem")),
        cert: Some(pki("client.pem")),
        key: Some(pki("client.key")),
    };
    let spec = format!("etcd://127.0.0.1:{client}");
    let eps = ctl::cluster::etcd::endpoints(&spec, &tls).unwrap();
    assert_eq!(eps, [endpoint]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut e = loop {
        match Etcd::connect_tls(&eps, &tls, Duration::from_secs(2)) {
            Ok(e) => break e,
            Err(err) => {
                assert!(Instant::now() < deadline, "no TLS etcd: {err}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    e.change(&Change::NetworkCreate { network: appnet() })
        .unwrap();
    assert!(e.load().unwrap().state.network("appnet").is_some());
    // Without a client certificate, or without the CA, etcd is not reached: a clear error.
    let no_cert = Tls {
        cacert: Some(pki("ca.pem")),
        ..Tls::default()
    };
    let err = Etcd::connect_tls(&eps, &no_cert, Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach etcd"), "{err}");
    let plain = ctl::cluster::etcd::endpoints(&spec, &Tls::default()).unwrap();
    let err = Etcd::connect(&plain, Duration::from_secs(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach etcd"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
