//! A running node's tokens: the file's digests, reloaded when the file changes, checked in
//! constant time.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::*;

/// The shared, live view of the tokens file that a running gateway checks clients against.
///
/// Cloning is cheap (one `Arc`); every clone sees the same tokens. Checks take a read lock for
/// a few microseconds; a reload swaps the whole file in under a write lock, so a check sees
/// either the old tokens or the new ones, never a mix.
#[derive(Debug, Clone)]
pub struct TokenStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
pub(super) struct StoreInner {
    path: PathBuf,
    state: RwLock<StoreState>,
    generation: AtomicU64,
    /// Told each new generation, so that connections and jobs of a revoked token end at once
    /// rather than at their next request.
    changes: tokio::sync::watch::Sender<u64>,
    /// Whether the last `stat` of the file failed, so a lasting failure is warned about once.
    stat_failing: AtomicBool,
}

#[derive(Debug)]
pub(super) struct StoreState {
    file: TokenFile,
    /// The file's stamp when it was last read, good or bad: an unchanged bad file is not
    /// read (and warned about) again.
    seen: Option<Stamp>,
}

/// What tells a changed file from an unchanged one without reading it. The inode catches
/// every CLI write (it renames a new file into place) even where timestamps are coarse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl TokenStore {
    /// Loads the tokens file now. A missing file is no tokens (clients are told how to create
    /// one); a malformed one is an error, so a node does not start with tokens it cannot read.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, TokenError> {
        let path = path.into();
        // The stamp before the contents: a write in between is then seen again next time,
        // rather than missed.
        let seen = stamp(&path)?;
        let file = TokenFile::load(&path)?;
        if !file.exists() {
            tracing::warn!(
                path = %path.display(),
                "no tokens file: the gateway accepts no token until one is created there \
                 (`arbor token create --role admin`)"
            );
        }
        Ok(TokenStore {
            inner: Arc::new(StoreInner {
                path,
                state: RwLock::new(StoreState { file, seen }),
                generation: AtomicU64::new(0),
                changes: tokio::sync::watch::Sender::new(0),
                stat_failing: AtomicBool::new(false),
            }),
        })
    }

    /// The tokens file this store follows.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Checks a token a client presented against the current tokens. Never panics.
    pub fn verify(&self, presented: &str) -> Result<TokenInfo, AuthFailure> {
        self.read(|file| file.verify(presented))
    }

    /// Whether a connection authenticated as token `id` with `role` may go on: the token is
    /// still in the file and its role still allows `role`. Cheap enough for every request, so
    /// a revocation (or a role lowered by hand) also ends what open connections may do.
    pub fn still_valid(&self, id: &str, role: Role) -> bool {
        self.read(|file| file.get(id).is_some_and(|t| t.role.allows(role)))
    }

    /// The current tokens, without digests.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        self.read(TokenFile::list)
    }

    /// Counts successful reloads since [`TokenStore::open`] (which is generation 0).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// A receiver that wakes when the tokens in use change (a token created or revoked).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Re-reads the file if its modification time, length or inode changed since it was last
    /// read. `Ok(true)`: new tokens are in use. `Ok(false)`: nothing changed. A file that
    /// cannot be read or parsed keeps the previous tokens in use, is logged with
    /// `tracing::warn!`, and is returned as the error; it is not read again until it changes.
    /// A file that was deleted holds no tokens.
    pub fn reload_if_changed(&self) -> Result<bool, TokenError> {
        let path = &self.inner.path;
        let now = match stamp(path) {
            Ok(now) => {
                self.inner.stat_failing.store(false, Ordering::Relaxed);
                now
            }
            Err(e) => {
                if !self.inner.stat_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot look at the tokens file; keeping the previous tokens");
                }
                return Err(e);
            }
        };
        // Unchanged since it was last read, whether that read worked or not.
        if self.read_state(|s| s.seen == now) {
            return Ok(false);
        }
        match TokenFile::load(path) {
            Ok(file) => {
                let count = file.len();
                let exists = file.exists();
                {
                    let mut state = self.write();
                    state.file = file;
                    state.seen = now;
                }
                let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
                self.inner.changes.send_replace(generation);
                tracing::info!(
                    path = %path.display(),
                    tokens = count,
                    exists,
                    generation,
                    "tokens file reloaded"
                );
                Ok(true)
            }
            Err(e) => {
                self.write().seen = now;
                tracing::warn!(error = %e, "tokens file changed but cannot be used; keeping the previous tokens");
                Err(e)
            }
        }
    }

    /// Calls [`TokenStore::reload_if_changed`] every `every` (at least 10 ms) on the tokio
    /// runtime. The task holds the store weakly and ends by itself once every other handle
    /// is dropped, so pass it a clone: `store.clone().spawn_watcher(every)`. Abort the
    /// handle to stop it sooner.
    ///
    /// Looking at the file is a `stat` and, rarely, a read of a few hundred bytes, so it runs
    /// inline rather than on the blocking pool.
    pub fn spawn_watcher(self, every: Duration) -> tokio::task::JoinHandle<()> {
        let every = every.max(Duration::from_millis(10));
        let weak = Arc::downgrade(&self.inner);
        drop(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the file was just read
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                // Errors are logged (once per change) by reload_if_changed itself.
                let _ = TokenStore { inner }.reload_if_changed();
            }
        })
    }

    fn read<T>(&self, f: impl FnOnce(&TokenFile) -> T) -> T {
        self.read_state(|s| f(&s.file))
    }

    /// A panic elsewhere while holding the lock leaves consistent data (every write is a
    /// whole assignment), so a poisoned lock is used as is rather than panicking here too.
    fn read_state<T>(&self, f: impl FnOnce(&StoreState) -> T) -> T {
        f(&self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StoreState> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The file's stamp, or `None` when it does not exist.
pub(super) fn stamp(path: &Path) -> Result<Option<Stamp>, TokenError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode: inode(&m),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(TokenError::Read {
            path: path.to_owned(),
            error,
        }),
    }
}

#[cfg(unix)]
pub(super) fn inode(m: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
pub(super) fn inode(_: &fs::Metadata) -> u64 {
    0
}
