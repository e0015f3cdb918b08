//! The gateway's tokens file: which clients may talk to the gateway, and with which role.
//!
//! A person gets a token once, from `arbor token create --role ROLE`, as
//! `arbor_<id>_<secret>`: `id` is 8 hex digits that name the token in lists and revocations,
//! `secret` is 32 random bytes in hex. The file (named by `[gateway] tokens_file` in
//! cluster.toml) keeps only the id, the role, the SHA-256 digest of the secret, when it was
//! created and an optional label, so a copy of the file lets nobody in, and a lost token cannot
//! be recovered from it: revoke it and create another.
//!
//! The CLI writes the file atomically (a temporary file in the same folder, then a rename), so
//! a running node never reads half a file; nodes notice the change with [`TokenStore`]'s
//! watcher and take it up without a restart, revocations included, on connections that are
//! already open too ([`TokenStore::still_valid`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every token starts with this, so a token pasted in the wrong place is recognisable (and
/// secret scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "arbor_";

/// How often a node looks at the tokens file for changes unless told otherwise: a revoked
/// token stops working within about this long.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Hex digits of a token's id.
const ID_HEX: usize = 8;
/// Random bytes of a token's secret; 256 bits cannot be guessed, so one SHA-256 (no slow
/// password hash) is enough to keep the file harmless.
const SECRET_BYTES: usize = 32;
/// The prefix of the digest in the file, so another algorithm can be added later.
const HASH_PREFIX: &str = "sha256:";

pub use arbor_proto::{Role, UnknownRole};

/// What may be shown about a token: everything but its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    /// 8 lowercase hex digits; also the middle part of the token text.
    pub id: String,
    pub role: Role,
    /// When it was created, RFC 3339 in UTC (`2026-04-20T12:00:00Z`).
    pub created: String,
    /// Free text to tell tokens apart (who or what holds it).
    pub label: Option<String>,
}

/// Why a presented token is refused. The texts are meant for the client, so they say what to
/// do without telling an attacker whether an id exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Not shaped like `arbor_<8 hex>_<64 hex>`.
    #[error(
        "malformed token: a token looks like arbor_<8 hex digits>_<64 hex digits>, exactly as \
         `arbor token create` printed it"
    )]
    Malformed,
    /// No token has this id, or the secret does not match: the two are not told apart.
    #[error("token refused: it is unknown or revoked, or its secret is wrong")]
    Unknown,
    /// The node has no tokens file, so it accepts no token at all.
    #[error(
        "no tokens file exists at {path}, so no token is accepted: create one with \
         `arbor token create --role admin`"
    )]
    NoTokensFile { path: PathBuf },
}

impl AuthFailure {
    /// A stable machine-readable name for the `code` of an error frame.
    pub fn code(&self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed_token",
            AuthFailure::Unknown => "unknown_token",
            AuthFailure::NoTokensFile { .. } => "no_tokens_file",
        }
    }
}

/// A tokens file that cannot be read, used or written, with the file and what is wrong.
///
/// The I/O error is part of the message rather than a `source`, so `{:#}` chains (anyhow)
/// do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read tokens file {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("tokens file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("tokens file {path}: token[{index}].{field}: {message}")]
    Invalid {
        path: PathBuf,
        /// Which `[[token]]` table, from 0.
        index: usize,
        field: &'static str,
        message: String,
    },
    #[error("cannot write tokens file {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("tokens file {path}: no token has id {id:?}; see the ids with `arbor token list`")]
    NoSuchId { path: PathBuf, id: String },
    #[error("label {label:?}: {message}")]
    BadLabel {
        label: String,
        message: &'static str,
    },
}

/// The file as TOML: `[[token]]` tables.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    token: Vec<RawToken>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    id: String,
    role: Role,
    /// `sha256:<64 lowercase hex>` of the secret's 32 bytes.
    hash: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

/// Written above the tokens so a person who opens the file knows what it is.
const HEADER: &str = "\
# arbor gateway tokens: manage them with `arbor token create | list | revoke`.
# Running nodes re-read this file by themselves. It holds only SHA-256 digests of the
# secrets: a lost token cannot be recovered from it; revoke it and create another.
";

/// One token as kept in memory: its digest decoded once, so verifying decodes nothing.
#[derive(Debug, Clone)]
struct Entry {
    info: TokenInfo,
    digest: [u8; 32],
}

/// A parsed and checked tokens file.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    /// Whether the file was there: a missing file holds no tokens, and says so to clients.
    exists: bool,
    entries: Vec<Entry>,
}

impl TokenFile {
    /// Reads and checks a tokens file. A missing file is an empty one, not an error: a fresh
    /// cluster has no tokens until the first `arbor token create`.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TokenFile {
                path: path.to_owned(),
                exists: false,
                entries: Vec::new(),
            }),
            Err(error) => Err(TokenError::Read {
                path: path.to_owned(),
                error,
            }),
        }
    }

    /// Parses and checks tokens-file text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, TokenError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| TokenError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |index, field, message: String| TokenError::Invalid {
            path: path.to_owned(),
            index,
            field,
            message,
        };
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.token.len());
        for (index, t) in raw.token.into_iter().enumerate() {
            if !is_id(t.id.as_bytes()) {
                return Err(invalid(
                    index,
                    "id",
                    format!(
                        "{:?} is not {ID_HEX} lowercase hex digits, as `arbor token create` writes",
                        t.id
                    ),
                ));
            }
            if let Some(first) = entries.iter().position(|e| e.info.id == t.id) {
                return Err(invalid(
                    index,
                    "id",
                    format!("duplicate id {}: token[{first}] has it too", t.id),
                ));
            }
            let digest = t
                .hash
                .strip_prefix(HASH_PREFIX)
                .and_then(|h| decode_hex32(h.as_bytes()))
                .ok_or_else(|| {
                    invalid(
                        index,
                        "hash",
                        format!("must be {HASH_PREFIX:?} followed by 64 lowercase hex digits"),
                    )
                })?;
            entries.push(Entry {
                info: TokenInfo {
                    id: t.id,
                    role: t.role,
                    created: t.created,
                    label: t.label,
                },
                digest,
            });
        }
        Ok(TokenFile {
            path: path.to_owned(),
            exists: true,
            entries,
        })
    }

    /// Adds a token with this role to the file at `path` (creating the file, and its folder,
    /// when missing). Returns what may be shown about it and the token text, which exists
    /// nowhere else: show it once and drop it.
    ///
    /// Concurrent `create`s and `revoke`s on one file are serialised by a lock file next to it
    /// (`.<name>.lock`), so none of them loses another's change.
    pub fn create(
        path: &Path,
        role: Role,
        label: Option<&str>,
    ) -> Result<(TokenInfo, String), TokenError> {
        if let Some(label) = label {
            check_label(label)?;
        }
        let _lock = lock(path)?;
        let mut file = Self::load(path)?;
        let id = loop {
            let id = hex(&rand::random::<[u8; ID_HEX / 2]>());
            if !file.entries.iter().any(|e| e.info.id == id) {
                break id;
            }
        };
        // rand's thread generator is a CSPRNG seeded from the operating system.
        let secret: [u8; SECRET_BYTES] = rand::random();
        let token = format!("{TOKEN_PREFIX}{id}_{}", hex(&secret));
        let info = TokenInfo {
            id,
            role,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            label: label.map(str::to_owned),
        };
        file.entries.push(Entry {
            info: info.clone(),
            digest: Sha256::digest(secret).into(),
        });
        file.save()?;
        Ok((info, token))
    }

    /// Removes the token with this id from the file at `path`, and returns what it was.
    pub fn revoke(path: &Path, id: &str) -> Result<TokenInfo, TokenError> {
        let _lock = lock(path)?;
        let mut file = Self::load(path)?;
        let at = file
            .entries
            .iter()
            .position(|e| e.info.id == id)
            .ok_or_else(|| TokenError::NoSuchId {
                path: path.to_owned(),
                id: id.to_owned(),
            })?;
        let removed = file.entries.remove(at);
        file.save()?;
        Ok(removed.info)
    }

    /// The tokens, in the order they were created; never their digests.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    /// The token with this id, if there is one.
    pub fn get(&self, id: &str) -> Option<&TokenInfo> {
        self.entries.iter().map(|e| &e.info).find(|i| i.id == id)
    }

    /// The file this came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file existed when it was read.
    pub fn exists(&self) -> bool {
        self.exists
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a token a client presented. Never panics, whatever the input; the digest is
    /// compared in constant time, and a wrong secret and an unknown id get the same answer.
    pub fn verify(&self, presented: &str) -> Result<TokenInfo, AuthFailure> {
        if !self.exists {
            return Err(AuthFailure::NoTokensFile {
                path: self.path.clone(),
            });
        }
        let (id, secret) = parse_token(presented).ok_or(AuthFailure::Malformed)?;
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let entry = self.entries.iter().find(|e| e.info.id == id);
        // Compare against something even when the id is unknown, so both cases cost the same.
        let expected = entry.map_or([0; 32], |e| e.digest);
        match entry {
            Some(e) if digests_equal(&expected, &digest) => Ok(e.info.clone()),
            _ => Err(AuthFailure::Unknown),
        }
    }

    /// Writes the file atomically, readable by its owner only.
    fn save(&self) -> Result<(), TokenError> {
        let raw = RawFile {
            token: self
                .entries
                .iter()
                .map(|e| RawToken {
                    id: e.info.id.clone(),
                    role: e.info.role,
                    hash: format!("{HASH_PREFIX}{}", hex(&e.digest)),
                    created: e.info.created.clone(),
                    label: e.info.label.clone(),
                })
                .collect(),
        };
        let body = toml::to_string(&raw).map_err(|e| TokenError::Write {
            path: self.path.clone(),
            error: io::Error::other(e),
        })?;
        let text = if body.is_empty() {
            HEADER.to_owned()
        } else {
            format!("{HEADER}\n{body}")
        };
        write_atomically(&self.path, text.as_bytes()).map_err(|error| TokenError::Write {
            path: self.path.clone(),
            error,
        })
    }
}

/// Formats tokens for `arbor token list`: one line each under a header.
pub fn to_table(tokens: &[TokenInfo]) -> String {
    let mut out = format!("{:<8}  {:<6}  {:<20}  LABEL\n", "ID", "ROLE", "CREATED");
    for t in tokens {
        let line = format!(
            "{:<8}  {:<6}  {:<20}  {}",
            t.id,
            t.role,
            t.created,
            t.label.as_deref().unwrap_or("")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

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
struct StoreInner {
    path: PathBuf,
    state: RwLock<StoreState>,
    generation: AtomicU64,
    /// Whether the last `stat` of the file failed, so a lasting failure is warned about once.
    stat_failing: AtomicBool,
}

#[derive(Debug)]
struct StoreState {
    file: TokenFile,
    /// The file's stamp when it was last read, good or bad: an unchanged bad file is not
    /// read (and warned about) again.
    seen: Option<Stamp>,
}

/// What tells a changed file from an unchanged one without reading it. The inode catches
/// every CLI write (it renames a new file into place) even where timestamps are coarse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
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
        Ok(TokenStore {
            inner: Arc::new(StoreInner {
                path,
                state: RwLock::new(StoreState { file, seen }),
                generation: AtomicU64::new(0),
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
fn stamp(path: &Path) -> Result<Option<Stamp>, TokenError> {
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
fn inode(m: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &fs::Metadata) -> u64 {
    0
}

/// `arbor_<8 lowercase hex>_<64 lowercase hex>` into the id and the secret's bytes; `None`
/// for anything else. Surrounding whitespace (a pasted newline) is ignored. Works on bytes,
/// so no input can split a character and panic.
fn parse_token(presented: &str) -> Option<(&str, [u8; SECRET_BYTES])> {
    let rest = presented.trim_ascii().strip_prefix(TOKEN_PREFIX)?;
    let b = rest.as_bytes();
    if b.len() != ID_HEX + 1 + 2 * SECRET_BYTES || b[ID_HEX] != b'_' || !is_id(&b[..ID_HEX]) {
        return None;
    }
    let secret = decode_hex32(&b[ID_HEX + 1..])?;
    Some((rest.get(..ID_HEX)?, secret))
}

fn is_id(b: &[u8]) -> bool {
    b.len() == ID_HEX && b.iter().all(|&c| hex_value(c).is_some())
}

/// Lowercase hex digits only: one spelling per token, so ids compare as plain strings.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn decode_hex32(b: &[u8]) -> Option<[u8; 32]> {
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Equality whose time does not depend on where the digests differ, so timing tells an
/// attacker nothing about how close a guess came.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Labels show up in one-line listings and logs, so they are single-line and short.
fn check_label(label: &str) -> Result<(), TokenError> {
    let bad = |message| {
        Err(TokenError::BadLabel {
            label: label.to_owned(),
            message,
        })
    };
    if label.trim().is_empty() {
        return bad("must not be empty");
    }
    if label.chars().count() > 200 {
        return bad("must be at most 200 characters");
    }
    if label.chars().any(char::is_control) {
        return bad("must not contain newlines or other control characters");
    }
    Ok(())
}

/// The folder a file is in ("." for a bare name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new file readable and writable by its owner only (on unix); fails if it exists.
fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes `bytes` to a new temporary file in `path`'s folder, flushes it to disk, and renames
/// it over `path`, so readers see the old file or the new one, never part of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder(path);
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        hex(&rand::random::<[u8; 6]>())
    ));
    let written = create_private(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable; best effort, as not every platform can open a folder.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Takes an exclusive lock on `.<name>.lock` next to the tokens file, held until the returned
/// file is dropped. The lock file is left in place: removing it would race with the next
/// taker.
fn lock(path: &Path) -> Result<fs::File, TokenError> {
    let write_err = |error| TokenError::Write {
        path: path.to_owned(),
        error,
    };
    let dir = folder(path);
    fs::create_dir_all(dir).map_err(write_err)?;
    let name = path
        .file_name()
        .map_or_else(|| "tokens".to_owned(), |n| n.to_string_lossy().into_owned());
    let lock_path = dir.join(format!(".{name}.lock"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&lock_path).map_err(write_err)?;
    file.lock().map_err(write_err)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_created_token_verifies_with_its_role() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let (info, token) = TokenFile::create(&path, Role::User, Some("ci")).unwrap();
        assert!(token.starts_with("arbor_"), "{token}");
        assert_eq!(token.len(), 6 + 8 + 1 + 64);
        assert_eq!(&token[6..14], info.id);
        let file = TokenFile::load(&path).unwrap();
        let got = file.verify(&token).unwrap();
        assert_eq!(got, info);
        assert_eq!(got.role, Role::User);
        assert_eq!(got.label.as_deref(), Some("ci"));
        // A pasted trailing newline is forgiven.
        assert_eq!(file.verify(&format!("{token}\n")).unwrap().id, info.id);

        let (admin, admin_token) = TokenFile::create(&path, Role::Admin, None).unwrap();
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.len(), 2);
        assert_ne!(admin.id, info.id);
        assert_eq!(file.verify(&admin_token).unwrap().role, Role::Admin);
        assert_eq!(file.verify(&token).unwrap().role, Role::User);
    }

    #[test]
    fn a_wrong_secret_or_unknown_id_is_unknown() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let (_, token) = TokenFile::create(&path, Role::Reader, None).unwrap();
        let file = TokenFile::load(&path).unwrap();
        let last = token.chars().last().unwrap();
        let flipped = format!(
            "{}{}",
            &token[..token.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_eq!(file.verify(&flipped), Err(AuthFailure::Unknown));
        let other_id = format!(
            "arbor_{}{}",
            if &token[6..14] == "00000000" {
                "11111111"
            } else {
                "00000000"
            },
            &token[14..]
        );
        assert_eq!(file.verify(&other_id), Err(AuthFailure::Unknown));
        // The client is not told which of the two it was.
        assert!(!AuthFailure::Unknown.to_string().contains("id"));
    }

    #[test]
    fn malformed_tokens_are_malformed() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let (_, token) = TokenFile::create(&path, Role::Reader, None).unwrap();
        let file = TokenFile::load(&path).unwrap();
        let upper = token.to_uppercase().replacen("ARBOR_", "arbor_", 1);
        for bad in [
            "",
            "arbor_",
            "arbor__",
            &token[..token.len() - 1],
            &format!("{token}0"),
            &token.replacen("arbor_", "arbr_", 1),
            &token.replacen('_', "-", 2),
            &upper,
            &format!("arbor_{}_{}", "g".repeat(8), "0".repeat(64)),
            &format!("arbor_{}_{}", "0".repeat(8), "é".repeat(32)),
            "arbor_ééééé_",
        ] {
            assert_eq!(file.verify(bad), Err(AuthFailure::Malformed), "{bad:?}");
        }
        assert!(AuthFailure::Malformed.to_string().contains("arbor_<8 hex"));
    }

    #[test]
    fn a_revoked_token_fails_and_an_absent_id_is_named() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let (keep, keep_token) = TokenFile::create(&path, Role::User, None).unwrap();
        let (gone, gone_token) = TokenFile::create(&path, Role::Admin, None).unwrap();
        assert_eq!(TokenFile::revoke(&path, &gone.id).unwrap(), gone);
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.verify(&gone_token), Err(AuthFailure::Unknown));
        assert_eq!(file.verify(&keep_token).unwrap(), keep);
        assert_eq!(file.list(), vec![keep]);

        let e = TokenFile::revoke(&path, &gone.id).unwrap_err().to_string();
        assert!(e.contains(&gone.id), "{e}");
        assert!(e.contains("arbor token list"), "{e}");
        assert!(e.contains("tokens.toml"), "{e}");
    }

    #[test]
    fn concurrent_creates_lose_no_token() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let made: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| TokenFile::create(&path, Role::User, None).unwrap().1))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.len(), 8);
        for token in &made {
            assert!(file.verify(token).is_ok(), "{token}");
        }
    }

    #[test]
    fn the_file_holds_no_secret_and_is_private() {
        let d = dir();
        let path = d.path().join("sub/tokens.toml");
        let (info, token) = TokenFile::create(&path, Role::Admin, Some("ops")).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let secret = &token[15..];
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains(&token), "{text}");
        assert!(text.contains("[[token]]"), "{text}");
        assert!(text.contains(&format!("id = \"{}\"", info.id)), "{text}");
        assert!(text.contains("role = \"admin\""), "{text}");
        assert!(text.contains("hash = \"sha256:"), "{text}");
        assert!(text.contains("label = \"ops\""), "{text}");
        // The digest is of the secret's bytes.
        let bytes = decode_hex32(secret.as_bytes()).unwrap();
        assert!(text.contains(&hex(&Sha256::digest(bytes))), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_missing_file_is_empty_and_says_how_to_create_one() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let file = TokenFile::load(&path).unwrap();
        assert!(file.is_empty() && !file.exists());
        let e = file.verify("arbor_x").unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("arbor token create --role admin"), "{text}");
        assert_eq!(e.code(), "no_tokens_file");
    }

    #[test]
    fn bad_files_are_refused_with_the_file_and_the_field() {
        let path = Path::new("conf/tokens.toml");
        let good = format!(
            "[[token]]\nid = \"0123abcd\"\nrole = \"user\"\nhash = \"sha256:{}\"\ncreated = \"2026-01-01T00:00:00Z\"\n",
            "ab".repeat(32)
        );
        assert_eq!(TokenFile::parse(path, &good).unwrap().len(), 1);
        let cases = [
            (good.replace("role = ", "rol = "), "unknown field `rol`"),
            (good.replace("\"user\"", "\"root\""), "root"),
            (good.replace("0123abcd", "0123ABCD"), "token[0].id"),
            (good.replace("sha256:", "md5:"), "token[0].hash"),
            (format!("{good}\n{good}"), "duplicate id 0123abcd"),
            ("[[token]\n".to_owned(), "conf/tokens.toml"),
        ];
        for (text, wanted) in cases {
            let e = TokenFile::parse(path, &text).unwrap_err().to_string();
            assert!(e.contains("conf/tokens.toml"), "{e}");
            assert!(e.contains(wanted), "{wanted}: {e}");
        }
    }

    #[test]
    fn bad_labels_are_refused_before_writing() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let e = TokenFile::create(&path, Role::User, Some("a\nb")).unwrap_err();
        assert!(e.to_string().contains("newlines"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn the_table_lists_ids_roles_and_labels() {
        let t = to_table(&[TokenInfo {
            id: "0123abcd".into(),
            role: Role::Reader,
            created: "2026-01-01T00:00:00Z".into(),
            label: Some("grafana".into()),
        }]);
        let lines: Vec<_> = t.lines().collect();
        assert!(lines[0].starts_with("ID"), "{t}");
        assert!(
            lines[1].contains("0123abcd") && lines[1].contains("reader"),
            "{t}"
        );
        assert!(lines[1].ends_with("grafana"), "{t}");
        assert_eq!(lines[0].find("LABEL"), lines[1].find("grafana"), "{t}");
    }

    #[test]
    fn the_store_picks_up_new_tokens_and_revocations() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let store = TokenStore::open(&path).unwrap();
        assert!(matches!(
            store.verify("arbor_x"),
            Err(AuthFailure::NoTokensFile { .. })
        ));
        assert!(!store.reload_if_changed().unwrap());
        assert_eq!(store.generation(), 0);

        let (info, token) = TokenFile::create(&path, Role::User, None).unwrap();
        // Not seen until reloaded: nodes pick changes up on their own schedule.
        assert!(store.verify(&token).is_err());
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(store.generation(), 1);
        assert_eq!(store.verify(&token).unwrap(), info);
        assert!(store.still_valid(&info.id, Role::User));
        assert!(store.still_valid(&info.id, Role::Reader));
        assert!(!store.still_valid(&info.id, Role::Admin));
        assert!(!store.reload_if_changed().unwrap());
        assert_eq!(store.generation(), 1);

        let clone = store.clone();
        TokenFile::revoke(&path, &info.id).unwrap();
        assert!(clone.reload_if_changed().unwrap());
        assert_eq!(store.generation(), 2);
        assert!(!store.still_valid(&info.id, Role::User));
        assert_eq!(store.verify(&token), Err(AuthFailure::Unknown));
        assert!(store.tokens().is_empty());
    }

    #[test]
    fn a_malformed_file_on_reload_keeps_the_old_tokens() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let (info, token) = TokenFile::create(&path, Role::Admin, None).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(store.verify(&token).unwrap(), info);

        fs::write(&path, "[[token]]\nid = \"nope\"\n").unwrap();
        let e = store.reload_if_changed().unwrap_err();
        assert!(e.to_string().contains("tokens.toml"), "{e}");
        assert_eq!(store.generation(), 0);
        assert_eq!(store.verify(&token).unwrap(), info);
        assert!(store.still_valid(&info.id, Role::Admin));
        // The same bad file is not read (nor warned about) again.
        assert!(!store.reload_if_changed().unwrap());

        // The CLI refuses to rewrite a file it cannot read, rather than drop its tokens.
        assert!(TokenFile::create(&path, Role::Reader, None).is_err());

        // Fixed: the new contents are taken (an empty file: no tokens).
        fs::write(&path, "").unwrap();
        assert!(store.reload_if_changed().unwrap());
        assert_eq!(store.generation(), 1);
        assert_eq!(store.verify(&token), Err(AuthFailure::Unknown));
    }

    #[test]
    fn a_malformed_file_at_open_is_an_error() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        fs::write(&path, "token = 3\n").unwrap();
        let e = TokenStore::open(&path).unwrap_err().to_string();
        assert!(e.contains("tokens.toml"), "{e}");
    }

    #[tokio::test]
    async fn the_watcher_reloads_and_ends_with_the_store() {
        let d = dir();
        let path = d.path().join("tokens.toml");
        let store = TokenStore::open(&path).unwrap();
        let watcher = store.clone().spawn_watcher(Duration::from_millis(10));
        let (_, token) = TokenFile::create(&path, Role::User, None).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.verify(&token).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher never reloaded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.generation() >= 1);
        drop(store);
        tokio::time::timeout(Duration::from_secs(10), watcher)
            .await
            .expect("the watcher should end once the store is dropped")
            .unwrap();
    }

    /// A file with one known token, in memory: the property runs many cases, none on disk.
    fn known() -> (TokenFile, String) {
        let secret = [7u8; 32];
        let text = format!(
            "[[token]]\nid = \"0123abcd\"\nrole = \"reader\"\nhash = \"sha256:{}\"\ncreated = \"x\"\n",
            hex(&Sha256::digest(secret))
        );
        let file = TokenFile::parse(Path::new("tokens.toml"), &text).unwrap();
        (file, format!("arbor_0123abcd_{}", hex(&secret)))
    }

    #[test]
    fn the_known_token_verifies() {
        let (file, token) = known();
        assert_eq!(file.verify(&token).unwrap().role, Role::Reader);
    }

    proptest! {
        #[test]
        fn verify_never_panics(s in "\\PC*", tail in "[0-9a-f_\u{e9}]{0,80}") {
            let missing = TokenFile::load(Path::new("/nonexistent/arbor/tokens.toml")).unwrap();
            let is_no_file = matches!(missing.verify(&s), Err(AuthFailure::NoTokensFile { .. }));
            prop_assert!(is_no_file);
            let (file, token) = known();
            for presented in [s.clone(), format!("arbor_{tail}"), format!("{}{s}", &token[..14])] {
                let got = file.verify(&presented);
                prop_assert!(got.is_err() || presented.trim_ascii() == token);
            }
        }
    }
}
