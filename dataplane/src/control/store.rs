//! The persisted state file: written to a temporary file, fsynced, renamed over the old one, and
//! the directory fsynced, so a crash at any point leaves either the old or the new state.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::Persisted;

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

    /// The persisted state, or `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Persisted>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Writes `p` atomically.
    pub fn save(&self, p: &Persisted) -> Result<(), StoreError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(p).map_err(|e| self.io(std::io::Error::other(e)))?;
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
