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
//!
//! `file` reads and writes the tokens file (create, list, revoke, under a lock, written
//! atomically); `store` is a running node's view of it, reloaded when the file changes.

mod file;
mod store;

pub use file::TokenFile;
pub use store::TokenStore;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Every token starts with this, so a token pasted in the wrong place is recognisable (and
/// secret scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "arbor_";

/// How often a node looks at the tokens file for changes unless told otherwise: a revoked
/// token stops working within about this long.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Hex digits of a token's id.
pub(super) const ID_HEX: usize = 8;
/// Random bytes of a token's secret; 256 bits cannot be guessed, so one SHA-256 (no slow
/// password hash) is enough to keep the file harmless.
pub(super) const SECRET_BYTES: usize = 32;
/// The prefix of the digest in the file, so another algorithm can be added later.
pub(super) const HASH_PREFIX: &str = "sha256:";

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
    /// The node has no tokens file, so it accepts no token at all. The client is not told
    /// where the node looks for it (the node's own log says).
    #[error(
        "this node has no tokens file, so it accepts no token: its operator creates one with \
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

/// `arbor_<8 lowercase hex>_<64 lowercase hex>` into the id and the secret's bytes; `None`
/// for anything else. Surrounding whitespace (a pasted newline) is ignored. Works on bytes,
/// so no input can split a character and panic.
pub(super) fn parse_token(presented: &str) -> Option<(&str, [u8; SECRET_BYTES])> {
    let rest = presented.trim_ascii().strip_prefix(TOKEN_PREFIX)?;
    let b = rest.as_bytes();
    if b.len() != ID_HEX + 1 + 2 * SECRET_BYTES || b[ID_HEX] != b'_' || !is_id(&b[..ID_HEX]) {
        return None;
    }
    let secret = decode_hex32(&b[ID_HEX + 1..])?;
    Some((rest.get(..ID_HEX)?, secret))
}

pub(super) fn is_id(b: &[u8]) -> bool {
    b.len() == ID_HEX && b.iter().all(|&c| hex_value(c).is_some())
}

/// Lowercase hex digits only: one spelling per token, so ids compare as plain strings.
pub(super) fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

pub(super) fn decode_hex32(b: &[u8]) -> Option<[u8; 32]> {
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

pub(super) fn hex(bytes: &[u8]) -> String {
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
pub(super) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::file::*;
    use super::store::*;
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};
    use std::fs;
    use std::path::Path;
    use std::time::Duration;

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
        // Told to an unauthenticated client: where the node keeps its files is not theirs to
        // know (the review's probe read the path from this answer).
        assert!(!text.contains(&path.display().to_string()), "{text}");
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
