//! The tokens file: created, listed and revoked under a lock, written atomically, 0600.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;

/// The file as TOML: `[[token]]` tables.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    token: Vec<RawToken>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    id: String,
    role: Role,
    /// `sha256:<64 lowercase hex>` of the secret's 32 bytes.
    hash: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

/// Written above the tokens so a person who opens the file knows what it is.
pub(super) const HEADER: &str = "\
# arbor gateway tokens: manage them with `arbor token create | list | revoke`.
# Running nodes re-read this file by themselves. It holds only SHA-256 digests of the
# secrets: a lost token cannot be recovered from it; revoke it and create another.
";

/// One token as kept in memory: its digest decoded once, so verifying decodes nothing.
#[derive(Debug, Clone)]
pub(super) struct Entry {
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

/// Labels show up in one-line listings and logs, so they are single-line and short.
pub(super) fn check_label(label: &str) -> Result<(), TokenError> {
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
pub(super) fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new file readable and writable by its owner only (on unix); fails if it exists.
pub(super) fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Writes `bytes` to a new temporary file in `path`'s folder, flushes it to disk, and renames
/// it over `path`, so readers see the old file or the new one, never part of one.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
pub(super) fn lock(path: &Path) -> Result<fs::File, TokenError> {
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
