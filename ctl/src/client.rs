//! The client side of the control socket: connect, write one request line, read one response
//! line. Errors say what went wrong and what to try.

use std::fmt;
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{self, Command, FrameError, Request, Response};

/// The longest response line a client reads (a whole-state dump of a big mesh fits).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach meshd at {}: {} ({})", .socket.display(), Reason(.source), connect_hint(.source))]
    Connect { socket: PathBuf, source: io::Error },
    #[error(
        "meshd at {} did not answer within {} s (it may be stuck or very busy: see its log, \
         or wait longer with --timeout)",
        .socket.display(), .timeout.as_secs_f64()
    )]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("lost the connection to meshd at {}: {} (see meshd's log)", .socket.display(), Reason(.source))]
    Io { socket: PathBuf, source: io::Error },
    #[error("meshd at {} closed the connection without answering (see meshd's log)", .socket.display())]
    Closed { socket: PathBuf },
    #[error(
        "meshd at {} sent an answer meshctl cannot read: {detail} (are meshctl and meshd of \
         the same release?)",
        .socket.display()
    )]
    BadResponse { socket: PathBuf, detail: String },
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// An `io::Error` without the " (os error N)" tail, which tells a user nothing.
struct Reason<'a>(&'a io::Error);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.to_string();
        let short = match s.rfind(" (os error ") {
            Some(i) if s.ends_with(')') => &s[..i],
            _ => &s,
        };
        f.write_str(short)
    }
}

fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "meshd's socket is mode 0600: run meshctl as the user meshd runs as, for example with sudo"
        }
        io::ErrorKind::ConnectionRefused => {
            "nothing listens there: meshd stopped and left its socket behind? --socket / \
             MESHCTL_SOCKET picks the daemon"
        }
        _ => "is meshd running? --socket / MESHCTL_SOCKET picks the daemon",
    }
}

/// One connection to a daemon, for one or more requests in turn.
#[derive(Debug)]
pub struct Connection {
    socket: PathBuf,
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

impl Connection {
    /// Connects; every later write and read waits at most `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        // A zero timeout means "none" to the socket API; a zero from a user means "at once".
        let t = Some(timeout.max(Duration::from_millis(1)));
        let io_err = |source| ClientError::Io {
            socket: socket.to_path_buf(),
            source,
        };
        stream.set_read_timeout(t).map_err(io_err)?;
        stream.set_write_timeout(t).map_err(io_err)?;
        Ok(Connection {
            socket: socket.to_path_buf(),
            stream: BufReader::new(stream),
            timeout,
        })
    }

    /// Sends one command and waits for its response.
    pub fn send(&mut self, cmd: &Command) -> Result<Response, ClientError> {
        let line = Request::new(cmd.clone())
            .to_line()
            .map_err(|e| ClientError::Encode(e.to_string()))?;
        self.send_line(line.as_bytes())
    }

    /// Sends raw bytes as one request (a newline is added if missing) and waits for the
    /// response: for tests of how a daemon treats bad input.
    pub fn send_line(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        let s = self.stream.get_mut();
        let mut w = || -> io::Result<()> {
            s.write_all(line)?;
            if line.last() != Some(&b'\n') {
                s.write_all(b"\n")?;
            }
            s.flush()
        };
        w().map_err(|e| self.io_error(e))?;
        self.receive()
    }

    /// Reads one more response line: the next of a streamed answer (`capture`).
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let reply = match proto::read_line(&mut self.stream, MAX_RESPONSE_BYTES) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(ClientError::Closed {
                    socket: self.socket.clone(),
                })
            }
            Err(FrameError::Io(e)) => return Err(self.io_error(e)),
            Err(FrameError::TooLarge { limit }) => {
                return Err(ClientError::BadResponse {
                    socket: self.socket.clone(),
                    detail: format!("the response is longer than {limit} bytes"),
                })
            }
        };
        serde_json::from_slice(&reply).map_err(|e| ClientError::BadResponse {
            socket: self.socket.clone(),
            detail: e.to_string(),
        })
    }

    /// Waits at most `timeout` for each later read and write.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let t = Some(timeout.max(Duration::from_millis(1)));
        let s = self.stream.get_ref();
        s.set_read_timeout(t)
            .and_then(|()| s.set_write_timeout(t))
            .map_err(|e| self.io_error(e))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Another handle on the socket, to shut the connection down from another thread (which
    /// ends a streamed answer).
    pub fn handle(&self) -> io::Result<UnixStream> {
        self.stream.get_ref().try_clone()
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                socket: self.socket.clone(),
                timeout: self.timeout,
            },
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ClientError::Closed {
                socket: self.socket.clone(),
            },
            _ => ClientError::Io {
                socket: self.socket.clone(),
                source: e,
            },
        }
    }
}

/// Sends one command to the daemon at `socket` and returns its response. A response with
/// `"ok":false` is a `Response::Err`, not a `ClientError`.
pub fn request(socket: &Path, cmd: &Command, timeout: Duration) -> Result<Response, ClientError> {
    Connection::connect(socket, timeout)?.send(cmd)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, Write};
    use std::os::unix::net::UnixListener;
    use std::thread;

    use super::*;
    use crate::proto::{ErrorCode, Query, PROTOCOL_VERSION};

    fn temp_socket(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("meshctl-client-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_missing_daemon_is_reported_with_a_hint() {
        let p = temp_socket("missing");
        let e = request(
            &p,
            &Command::Query(Query::ServiceLs {}),
            Duration::from_secs(1),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach meshd at {}: No such file or directory (",
                p.display()
            )),
            "{msg}"
        );
        assert!(
            msg.ends_with("(is meshd running? --socket / MESHCTL_SOCKET picks the daemon)"),
            "{msg}"
        );
    }

    #[test]
    fn one_line_out_one_line_back() {
        let p = temp_socket("roundtrip");
        let listener = UnixListener::bind(&p).unwrap();
        let server = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut lines = Vec::new();
            for reply in [
                r#"{"ok":true,"generation":3,"result":[]}"#,
                r#"{"ok":false,"error":{"code":"not-found","message":"service \"x\" not found"}}"#,
                "garbage",
            ] {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                lines.push(l);
                writeln!(r.get_mut(), "{reply}").unwrap();
            }
            lines
        });
        let mut c = Connection::connect(&p, Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.send(&Command::Query(Query::ServiceLs {})).unwrap(),
            Response::ok(3, serde_json::json!([]))
        );
        let e = c
            .send(&Command::Query(Query::ServiceInspect { name: "x".into() }))
            .unwrap()
            .into_result()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        let bad = c.send(&Command::Query(Query::NodeLs {})).unwrap_err();
        assert!(matches!(bad, ClientError::BadResponse { .. }), "{bad}");
        let lines = server.join().unwrap();
        assert_eq!(
            lines[0],
            format!("{{\"version\":{PROTOCOL_VERSION},\"command\":\"service-ls\"}}\n")
        );
        assert_eq!(
            lines[1],
            "{\"version\":1,\"command\":\"service-inspect\",\"name\":\"x\"}\n"
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn silence_and_hangups_are_told_apart() {
        let p = temp_socket("silent");
        let listener = UnixListener::bind(&p).unwrap();
        let server = thread::spawn(move || {
            // First connection: read and say nothing until the client gives up.
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            // Second connection: hang up without answering.
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut l2 = String::new();
            r.read_line(&mut l2).unwrap();
            drop(r);
            // Keep the first one open until the client timed out.
            l
        });
        let e = request(
            &p,
            &Command::Query(Query::Stats {}),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("did not answer within 0.2 s"), "{e}");
        let e = request(&p, &Command::Query(Query::Stats {}), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, ClientError::Closed { .. }), "{e}");
        server.join().unwrap();
        let _ = std::fs::remove_file(&p);
    }
}
