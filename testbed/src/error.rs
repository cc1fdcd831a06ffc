//! The testbed's one error type: every message says what failed and what to do about it.

use std::fmt;

/// Why a testbed operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper program (`ip`, `ethtool`, `meshctl`, ...) exited with an error.
    #[error("`{cmdline}` failed ({status}){}", Tail(.stderr))]
    Command {
        cmdline: String,
        status: String,
        stderr: String,
    },
    /// A helper program could not be started at all.
    #[error("cannot run `{program}`: {source} ({hint})")]
    Spawn {
        program: String,
        source: std::io::Error,
        hint: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Msg(String),
}

/// The last lines of a program's stderr, indented under the message.
struct Tail<'a>(&'a str);

impl fmt::Display for Tail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.0.lines().filter(|l| !l.trim().is_empty()).collect();
        let from = lines.len().saturating_sub(12);
        for l in &lines[from..] {
            write!(f, "\n    {l}")?;
        }
        Ok(())
    }
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }

    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
