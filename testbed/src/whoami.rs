//! The task server: an HTTP/1.1 "whoami" like `containous/whoami` (the image the seed articles
//! run) and a UDP echo, std only, a thread per connection.
//!
//! ```text
//! $ curl 192.168.100.11:8080
//! Hostname: web.1
//! IP: 127.0.0.1
//! IP: 10.0.0.100
//! IP: 10.0.1.100
//! RemoteAddr: 10.0.0.2:1024
//! GET / HTTP/1.1
//! Host: 192.168.100.11:8080
//! User-Agent: curl/7.88.1
//! Accept: */*
//! ```
//!
//! A UDP datagram `hello` is answered with `web.1 hello`.
//!
//! Every socket is IPv6 `[::]` taking IPv4 too (dual-stack, as containous/whoami listens), so a
//! task with an IPv6 address answers on it; an IPv4 peer is shown as IPv4 (`10.0.1.101:40972`,
//! not `[::ffff:10.0.1.101]:40972`). Where the kernel has no IPv6 at all, IPv4 `0.0.0.0`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};

/// What the server answers as, and where.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub http: Vec<u16>,
    pub udp: Vec<u16>,
    /// Written once every socket is bound, so a starter knows the task is ready.
    pub ready: Option<PathBuf>,
}

/// Binds every socket, writes the ready file, and serves until killed.
pub fn serve(cfg: Config) -> Result<()> {
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    let mut threads = Vec::new();
    for &port in &cfg.http {
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| Error::io(format!("whoami {}: binding TCP port {port}", cfg.name), e))?;
        let name = name.clone();
        threads.push(std::thread::spawn(move || accept_loop(l, name)));
    }
    for &port in &cfg.udp {
        let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
            .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| Error::io(format!("whoami {}: binding UDP port {port}", cfg.name), e))?;
        let name = name.clone();
        threads.push(std::thread::spawn(move || echo_loop(s, name)));
    }
    if let Some(p) = &cfg.ready {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    eprintln!(
        "whoami {}: HTTP on {:?}, UDP echo on {:?}",
        cfg.name, cfg.http, cfg.udp
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn accept_loop(l: TcpListener, name: Arc<str>) {
    for conn in l.incoming() {
        match conn {
            Ok(s) => {
                let name = name.clone();
                let _ = std::thread::Builder::new()
                    .name("whoami-conn".into())
                    .spawn(move || {
                        let _ = serve_conn(s, &name);
                    });
            }
            Err(e) => {
                eprintln!("whoami {name}: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

fn echo_loop(s: UdpSocket, name: Arc<str>) {
    // Any UDP datagram, up to IPv4's 65,507 bytes of payload.
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let mut reply = Vec::with_capacity(name.len() + 1 + n);
                reply.extend_from_slice(name.as_bytes());
                reply.push(b' ');
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, from);
            }
            Err(e) => {
                eprintln!("whoami {name}: udp: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after the response (HTTP/1.1 unless `close`).
    pub fn keep_alive(&self) -> bool {
        let v11 = self.request_line.ends_with("HTTP/1.1");
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(c) if c.contains("close") => false,
            Some(c) if c.contains("keep-alive") => true,
            _ => v11,
        }
    }
}

/// Reads a request head; `Ok(None)` at a clean end of the connection.
pub fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    // Skip blank lines between requests (RFC 9112 §2.2 allows one).
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let request_line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if headers.len() < 100 {
            if let Some((k, v)) = line.trim_end().split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    Ok(Some(Head {
        request_line,
        headers,
    }))
}

/// The largest body `/bytes/N` and `/echo` move (16 MiB).
pub const MAX_BYTES: usize = 16 << 20;

/// The body of `GET /bytes/N`: byte i is `(i * 7 + i / 251) % 256`, so a lost, repeated or
/// reordered stretch shows.
// Casts: a remainder of 256.
#[allow(clippy::cast_possible_truncation)]
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + i / 251) % 256) as u8).collect()
}

/// The body whoami answers with.
pub fn body(name: &str, ips: &[IpAddr], remote: SocketAddr, head: &Head) -> String {
    let mut b = format!("Hostname: {name}\n");
    for ip in ips {
        b.push_str(&format!("IP: {ip}\n"));
    }
    b.push_str(&format!("RemoteAddr: {remote}\n{}\n", head.request_line));
    for (k, v) in &head.headers {
        b.push_str(&format!("{k}: {v}\n"));
    }
    b
}

/// `peer` as a person reads it: an IPv4 peer of a dual-stack socket (`[::ffff:a.b.c.d]:p`) as
/// IPv4.
pub fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => peer,
        },
        v4 @ SocketAddr::V4(_) => v4,
    }
}

fn serve_conn(s: TcpStream, name: &str) -> std::io::Result<()> {
    let remote = unmapped(s.peer_addr()?);
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    while let Some(head) = read_head(&mut r)? {
        let len: u64 = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let keep = head.keep_alive();
        let conn = if keep { "keep-alive" } else { "close" };
        let path = head.request_line.split(' ').nth(1).unwrap_or("/");
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            // GET /bytes/N: N bytes of a pattern a client can check (see `pattern`).
            std::io::copy(&mut (&mut r).take(len), &mut std::io::sink())?;
            let n = n.min(MAX_BYTES);
            w.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: {conn}\r\n\r\n").as_bytes(),
            )?;
            w.write_all(&pattern(n))?;
        } else if path == "/echo" {
            // POST /echo: the request body back.
            let mut b = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(MAX_BYTES));
            (&mut r)
                .take(len.min(MAX_BYTES as u64))
                .read_to_end(&mut b)?;
            w.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n", b.len()).as_bytes(),
            )?;
            w.write_all(&b)?;
        } else {
            // Discard a request body.
            std::io::copy(&mut (&mut r).take(len), &mut std::io::sink())?;
            let text = body(name, &local_ips(), remote, &head);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{text}",
                text.len(),
            );
            w.write_all(resp.as_bytes())?;
        }
        w.flush()?;
        if !keep {
            break;
        }
    }
    Ok(())
}

/// This namespace's addresses: IPv4 from /proc/net/fib_trie, loopback first, then IPv6 from
/// /proc/net/if_inet6 (std has no getifaddrs); a namespace without IPv6 has none of those.
pub fn local_ips() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut v = parse_fib_trie(&text);
    v.sort_by_key(|ip| (!ip.is_loopback(), u32::from(*ip)));
    v.dedup();
    let text = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    let mut v6 = parse_if_inet6(&text);
    v6.sort_by_key(|ip| (!ip.is_loopback(), u128::from(*ip)));
    v6.dedup();
    v.into_iter()
        .map(IpAddr::V4)
        .chain(v6.into_iter().map(IpAddr::V6))
        .collect()
}

/// The addresses of /proc/net/if_inet6: each line starts with one as 32 hex digits.
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|hex| {
            u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)
        })
        .map(Ipv6Addr::from)
        .collect()
}

/// The addresses of `/32 host LOCAL` entries: in fib_trie each follows the line naming it.
fn parse_fib_trie(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                out.push(ip);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_keep_alive_follows_the_version() {
        let raw = "GET / HTTP/1.1\r\nHost: 192.168.100.11:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        let mut r = BufReader::new(raw.as_bytes());
        let h = read_head(&mut r).unwrap().unwrap();
        assert_eq!(h.request_line, "GET / HTTP/1.1");
        assert_eq!(h.headers.len(), 3);
        assert!(h.keep_alive());
        assert!(read_head(&mut r).unwrap().is_none());

        let mut r = BufReader::new("GET / HTTP/1.0\r\n\r\n".as_bytes());
        assert!(!read_head(&mut r).unwrap().unwrap().keep_alive());
        let mut r = BufReader::new("GET / HTTP/1.1\r\nConnection: close\r\n\r\n".as_bytes());
        assert!(!read_head(&mut r).unwrap().unwrap().keep_alive());
    }

    #[test]
    fn the_body_looks_like_containous_whoami() {
        let h = Head {
            request_line: "GET / HTTP/1.1".into(),
            headers: vec![("Host".into(), "web".into())],
        };
        let b = body(
            "web.1",
            &[
                Ipv4Addr::LOCALHOST.into(),
                Ipv4Addr::new(10, 0, 1, 100).into(),
            ],
            "10.0.1.101:40972".parse().unwrap(),
            &h,
        );
        assert_eq!(b, "Hostname: web.1\nIP: 127.0.0.1\nIP: 10.0.1.100\nRemoteAddr: 10.0.1.101:40972\nGET / HTTP/1.1\nHost: web\n");
    }

    #[test]
    fn if_inet6_addresses_and_unmapped_peers() {
        let t = "00000000000000000000000000000001 01 80 10 80       lo\nfd00001000010000000000000a000103 02 40 00 80     eth0\nfe80000000000000000000fffe000001 02 40 20 80     eth0\n";
        assert_eq!(
            parse_if_inet6(t),
            vec![
                Ipv6Addr::LOCALHOST,
                "fd00:10:1::a00:103".parse::<Ipv6Addr>().unwrap(),
                "fe80::ff:fe00:1".parse::<Ipv6Addr>().unwrap(),
            ]
        );
        assert!(parse_if_inet6("").is_empty());
        let mapped: SocketAddr = "[::ffff:10.0.1.101]:40972".parse().unwrap();
        assert_eq!(unmapped(mapped).to_string(), "10.0.1.101:40972");
        let v6: SocketAddr = "[fd00:10:1::a00:165]:40972".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
        let v4: SocketAddr = "10.0.1.101:1".parse().unwrap();
        assert_eq!(unmapped(v4), v4);
    }

    #[test]
    fn fib_trie_local_addresses() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 10.0.0.0/24 2 0 2\n        |-- 10.0.0.0\n           /24 link UNICAST\n        |-- 10.0.0.100\n           /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie(t),
            vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::LOCALHOST]
        );
    }
}
