//! Real clients, run inside a namespace: curl, ping, and std sockets for what curl cannot do
//! (a UDP exchange, a TCP connection held open across a change of the mesh).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use crate::error::Result;
use crate::sys;

/// How a client attempt failed, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// TCP RST to a SYN, or ICMP port unreachable to UDP: "connection refused".
    Refused,
    /// No answer in time.
    Timeout,
    /// An open connection was reset.
    Reset,
    /// ICMP host/network unreachable.
    Unreachable,
    /// The peer closed the connection without answering.
    Closed,
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Reset => f.write_str("connection reset by peer"),
            Failure::Unreachable => f.write_str("unreachable"),
            Failure::Closed => f.write_str("closed by peer"),
            Failure::Other(s) => f.write_str(s),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match (e.kind(), e.raw_os_error()) {
            (K::ConnectionRefused, _) => Failure::Refused,
            (K::TimedOut | K::WouldBlock, _) => Failure::Timeout,
            (K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe, _) => Failure::Reset,
            (_, Some(libc::EHOSTUNREACH | libc::ENETUNREACH)) => Failure::Unreachable,
            (K::UnexpectedEof, _) => Failure::Closed,
            _ => Failure::Other(e.to_string()),
        }
    }
}

/// What curl did.
#[derive(Debug, Clone)]
pub struct Curl {
    /// curl's exit status: 0 success, 7 could not connect (refused), 28 timeout, 56 reset.
    pub code: i32,
    pub body: String,
    pub stderr: String,
}

impl Curl {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// The whoami fields of the body, if it is one.
    pub fn whoami(&self) -> Option<Whoami> {
        Whoami::parse(&self.body)
    }
    /// One line for a person: the task that answered, or curl's error.
    pub fn summary(&self) -> String {
        match self.whoami() {
            Some(w) => format!("Hostname: {:<10} RemoteAddr: {}", w.hostname, w.remote),
            None if self.ok() => self.body.lines().next().unwrap_or("").to_string(),
            None => self.stderr.trim().to_string(),
        }
    }
}

/// `ip netns exec NS curl -sS --max-time SECS URL [extra...]`.
pub fn curl(ns: &str, url: &str, max_time: Duration, extra: &[&str]) -> Result<Curl> {
    let secs = format!("{:.1}", max_time.as_secs_f64());
    let mut args = vec!["-sS", "--max-time", secs.as_str()];
    args.extend_from_slice(extra);
    args.push(url);
    let out = sys::exec_in_output(ns, "curl", &args)?;
    Ok(Curl {
        code: out.code.unwrap_or(-1),
        body: out.stdout,
        stderr: out.stderr,
    })
}

/// The fields of a whoami answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whoami {
    pub hostname: String,
    pub ips: Vec<String>,
    /// `ip:port` the task saw the connection come from.
    pub remote: String,
}

impl Whoami {
    pub fn parse(body: &str) -> Option<Whoami> {
        let mut hostname = None;
        let mut remote = None;
        let mut ips = Vec::new();
        for l in body.lines() {
            if let Some(v) = l.strip_prefix("Hostname: ") {
                hostname = Some(v.trim().to_string());
            } else if let Some(v) = l.strip_prefix("IP: ") {
                ips.push(v.trim().to_string());
            } else if let Some(v) = l.strip_prefix("RemoteAddr: ") {
                remote = Some(v.trim().to_string());
            }
        }
        Some(Whoami {
            hostname: hostname?,
            ips,
            remote: remote?,
        })
    }

    /// The address part of `remote`: `10.0.1.101` of `10.0.1.101:40972`, `fd00:10:1::a00:165`
    /// of `[fd00:10:1::a00:165]:40972`.
    pub fn remote_ip(&self) -> &str {
        let ip = self
            .remote
            .rsplit_once(':')
            .map_or(self.remote.as_str(), |(ip, _)| ip);
        ip.strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip)
    }
}

/// `ip netns exec NS ping -c COUNT -W 1 IP`; returns ping's output and whether all answered.
pub fn ping(ns: &str, ip: &str, count: u32) -> Result<(bool, String)> {
    let c = count.to_string();
    let out = sys::exec_in_output(ns, "ping", &["-n", "-c", &c, "-i", "0.2", "-W", "1", ip])?;
    let all = out.ok && out.stdout.contains(&format!("{count} received"));
    Ok((all, out.stdout))
}

/// Sends `payload` over UDP from namespace `ns` to `to` and waits for one answer. A connected
/// socket reports an ICMP port unreachable as `Refused`.
pub fn udp_ask(
    ns: &str,
    to: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> Result<Result<String, Failure>> {
    let sock = match udp_socket_for(ns, to)? {
        Ok(s) => s,
        Err(f) => return Ok(Err(f)),
    };
    Ok(udp_ask_on(&sock, to, payload, timeout))
}

/// Like [`udp_ask`] on a socket the caller keeps (to send several datagrams from one port).
pub fn udp_ask_on(
    sock: &UdpSocket,
    to: SocketAddr,
    payload: &str,
    timeout: Duration,
) -> Result<String, Failure> {
    sock.connect(to)?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    sock.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `payload` (any size up to UDP's 65,507 bytes: the kernel fragments what its route
/// cannot carry) on a socket the caller keeps, and returns the first datagram back, whole.
pub fn udp_echo_on(
    sock: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    sock.connect(to)?;
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    sock.send(payload)?;
    let mut buf = vec![0u8; 65_536];
    let n = sock.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// A UDP socket bound inside namespace `ns`.
pub fn udp_socket(ns: &str) -> Result<Result<UdpSocket, Failure>> {
    Ok(sys::in_netns(ns, || UdpSocket::bind("0.0.0.0:0"))?.map_err(Failure::from))
}

/// A UDP socket in namespace `ns` of `to`'s family (IPv4 or IPv6), on any port.
pub fn udp_socket_for(ns: &str, to: SocketAddr) -> Result<Result<UdpSocket, Failure>> {
    let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    Ok(sys::in_netns(ns, move || UdpSocket::bind(any))?.map_err(Failure::from))
}

/// Opens a TCP connection from namespace `ns`.
pub fn tcp_open(ns: &str, to: SocketAddr, timeout: Duration) -> Result<Result<TcpStream, Failure>> {
    let r = sys::in_netns(ns, move || TcpStream::connect_timeout(&to, timeout))?;
    Ok(r.map_err(Failure::from))
}

/// An HTTP/1.1 client on one connection that stays open between requests.
#[derive(Debug)]
pub struct KeepAlive {
    r: BufReader<TcpStream>,
    w: TcpStream,
    host: String,
}

impl KeepAlive {
    pub fn new(stream: TcpStream, host: &str, timeout: Duration) -> Result<KeepAlive, Failure> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let w = stream.try_clone()?;
        Ok(KeepAlive {
            r: BufReader::new(stream),
            w,
            host: host.to_string(),
        })
    }

    /// Sends `GET /` and reads the whole answer; the connection stays open.
    pub fn get(&mut self) -> Result<String, Failure> {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: testbed\r\nAccept: */*\r\n\r\n",
            self.host
        );
        self.w.write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(Failure::Closed);
        }
        if !line.starts_with("HTTP/1.1 200") {
            return Err(Failure::Other(format!(
                "unexpected status line {:?}",
                line.trim_end()
            )));
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return Err(Failure::Closed);
            }
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Waits until the connection ends: `Reset` for a RST, `Closed` for a FIN, `Timeout` if it
    /// stays open (hangs) for the whole read timeout.
    pub fn wait_end(&mut self) -> Failure {
        let mut b = [0u8; 256];
        match self.r.read(&mut b) {
            Ok(0) => Failure::Closed,
            Ok(_) => Failure::Other("unexpected data".into()),
            Err(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_bodies_parse() {
        let w = Whoami::parse("Hostname: web.2\nIP: 127.0.0.1\nIP: 10.0.0.101\nRemoteAddr: 10.0.0.4:1030\nGET / HTTP/1.1\n").unwrap();
        assert_eq!(w.hostname, "web.2");
        assert_eq!(w.remote_ip(), "10.0.0.4");
        assert_eq!(w.ips, ["127.0.0.1", "10.0.0.101"]);
        assert!(Whoami::parse("<html>").is_none());
        let w = Whoami::parse(
            "Hostname: web.1\nIP: fd00:10:1::a00:164\nRemoteAddr: [fd00:10:1::a00:165]:40972\n",
        )
        .unwrap();
        assert_eq!(w.remote_ip(), "fd00:10:1::a00:165");
    }

    #[test]
    fn io_errors_become_what_a_client_sees() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            Failure::from(Error::from(ErrorKind::ConnectionRefused)),
            Failure::Refused
        );
        assert_eq!(
            Failure::from(Error::from(ErrorKind::WouldBlock)),
            Failure::Timeout
        );
        assert_eq!(
            Failure::from(Error::from(ErrorKind::ConnectionReset)),
            Failure::Reset
        );
        assert_eq!(
            Failure::from(Error::from_raw_os_error(libc::EHOSTUNREACH)),
            Failure::Unreachable
        );
    }
}
