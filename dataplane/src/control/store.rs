//! The persisted state file: written to a temporary file, fsynced, renamed over the old one, and
//! the directory fsynced, so a crash at any point leaves either the old or the new state.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use ctl::cluster::Part;
use serde::{Deserialize, Serialize};

use super::Persisted;

/// One line of the journal.
#[derive(Deserialize)]
struct Journaled {
    revision: i64,
    generation: u64,
    part: Part,
}

/// Where the daemon keeps its state.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a meshd state file ({source}); move it away to start empty")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

impl StateStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The journal beside the state file (cluster mode): the changes since it was written.
    pub fn journal_path(&self) -> PathBuf {
        self.path.with_extension("journal")
    }

    /// The persisted state, or `None` when there is none yet, with the changes its journal
    /// holds past the file's revision applied.
    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mut p: Persisted =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: self.path.display().to_string(),
                source,
            })?;
        self.replay(&mut p);
        Ok(Some(p))
    }

    /// Applies the journal's changes past `p`'s revision. A line that does not parse (the
    /// last one, cut by a crash) ends the replay: what came before it stands.
    fn replay(&self, p: &mut Persisted) {
        let Ok(text) = fs::read_to_string(self.journal_path()) else {
            return;
        };
        let mut applied = 0usize;
        for (i, line) in text.lines().enumerate() {
            match serde_json::from_str::<Journaled>(line) {
                Ok(j) if j.revision > p.revision => {
                    j.part.apply_to(&mut p.state);
                    p.revision = j.revision;
                    p.generation = p.generation.max(j.generation);
                    applied += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "{}: line {} does not parse ({e}); the changes before it are applied",
                        self.journal_path().display(),
                        i + 1
                    );
                    break;
                }
            }
        }
        if applied > 0 {
            tracing::info!(
                changes = applied,
                revision = p.revision,
                "replayed the journal of changes since the state file"
            );
        }
    }

    /// Appends one change to the journal (no fsync: etcd holds the change durably; the
    /// journal outlives the process, which is what a restart without etcd needs). Returns
    /// the bytes written.
    pub fn append(&self, revision: i64, generation: u64, part: &Part) -> Result<usize, StoreError> {
        #[derive(Serialize)]
        struct Entry<'a> {
            revision: i64,
            generation: u64,
            part: &'a Part,
        }
        let mut line = serde_json::to_vec(&Entry {
            revision,
            generation,
            part,
        })
        .map_err(|e| self.io(std::io::Error::other(e)))?;
        line.push(b'\n');
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.journal_path())
            .map_err(|e| self.io(e))?;
        f.write_all(&line).map_err(|e| self.io(e))?;
        Ok(line.len())
    }

    /// Writes `p` atomically (and drops the journal, which it includes).
    pub fn save<T: serde::Serialize>(&self, p: &T) -> Result<(), StoreError> {
        self.write(p, true)
    }

    /// [`StateStore::save`] without the indentation (a cache, not a file for people).
    pub fn save_compact<T: serde::Serialize>(&self, p: &T) -> Result<(), StoreError> {
        self.write(p, false)
    }

    fn write<T: serde::Serialize>(&self, p: &T, pretty: bool) -> Result<(), StoreError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = self.path.with_extension("tmp");
        let body = if pretty {
            serde_json::to_vec_pretty(p)
        } else {
            serde_json::to_vec(p)
        }
        .map_err(|e| self.io(std::io::Error::other(e)))?;
        // Readable by root only (it holds encrypted networks' keys), also when an older meshd
        // left the file with another mode; set before anything is written to it.
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| self.io(e))?;
        }
        f.write_all(&body).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        // The file holds everything the journal did.
        match fs::remove_file(self.journal_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(self.io(e)),
            _ => {}
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads() {
        let dir = std::env::temp_dir().join(format!("meshd-store-{}", std::process::id()));
        let s = StateStore::new(dir.join("state.json"));
        assert!(s.load().unwrap().is_none());
        let p = Persisted {
            generation: 7,
            ..Default::default()
        };
        s.save(&p).unwrap();
        assert_eq!(s.load().unwrap(), Some(p));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(s.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the state file holds keys: root only");
        }
        fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt { .. })));
        let _ = fs::remove_dir_all(dir);
    }
}
