//! The files of `arbor collection snapshot` and `arbor cluster backup`.
//!
//! Both are *sealed*: a magic line naming the kind and format, the payload, then the SHA-256
//! of everything before it (32 bytes). A reader checks the seal over the whole file before it
//! reads anything else, so a truncated, corrupt or foreign file is refused before a restore
//! changes anything.
//!
//! A collection snapshot's payload is one line of JSON ([`SnapshotHeader`]: the collection's
//! definition as the control plane stores it), then one section per partition: partition
//! (u32), the sequence number it was read at (u64), its row count (u64), then each row: id
//! (u64), metadata length (u32) and its JSON text, and `dimension` f32 values; integers and
//! floats little-endian. A backup's payload is one JSON document ([`BackupFile`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first line of a collection snapshot.
pub const SNAPSHOT_MAGIC: &[u8] = b"ARBOR-SNAPSHOT 1\n";
/// The first line of a cluster backup.
pub const BACKUP_MAGIC: &[u8] = b"ARBOR-BACKUP 1\n";
const SEAL_BYTES: u64 = 32;
/// The longest header line a reader accepts (a collection definition is well under it).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// The longest metadata a row may have: the partition's own limit.
pub const MAX_METADATA_BYTES: u32 = 64 * 1024;
/// The largest dimension a partition accepts.
const MAX_DIMENSION: u32 = 65_536;

/// Why a file cannot be read. Nothing was restored.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not {what} (it does not start with {magic:?}); nothing was restored")]
    NotOurs {
        path: String,
        what: &'static str,
        magic: String,
    },
    #[error(
        "{path} is truncated or corrupt: its SHA-256 checksum does not match its content \
         (stored {stored}, computed {computed}); nothing was restored"
    )]
    Checksum {
        path: String,
        stored: String,
        computed: String,
    },
    #[error("{path} is malformed at byte {offset}: {reason}; nothing was restored")]
    Malformed {
        path: String,
        offset: u64,
        reason: String,
    },
}

/// What a collection snapshot says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The collection's definition, as the control plane stores it (`backup`'s form).
    pub collection: serde_json::Value,
    pub dimension: u32,
    pub partitions: u32,
    /// Seconds since the Unix epoch when the snapshot was taken.
    pub taken_at: u64,
    /// The arbor version that wrote it.
    pub arbor: String,
}

/// A cluster backup's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupFile {
    pub backup: arbor_proto::snapshot::ClusterBackup,
    /// The tokens file (ids, roles and digests; never a secret), with `--include-tokens`.
    pub tokens: Option<String>,
    pub taken_at: u64,
    pub arbor: String,
}

/// One stored row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: u64,
    pub vector: Vec<f32>,
    pub metadata: String,
}

/// Writes a file to `PATH.partial` and puts it in place only once sealed, so that an
/// interrupted snapshot never leaves a file that looks whole.
pub struct SealedWriter {
    path: PathBuf,
    partial: PathBuf,
    out: BufWriter<File>,
}

impl SealedWriter {
    pub fn create(path: &Path, magic: &[u8]) -> std::io::Result<SealedWriter> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        // Read as well: the seal is the checksum of what was written, read back.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        let mut out = BufWriter::new(file);
        out.write_all(magic)?;
        Ok(SealedWriter {
            path: path.to_path_buf(),
            partial,
            out,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Where the next byte goes.
    pub fn position(&mut self) -> std::io::Result<u64> {
        self.out.stream_position()
    }

    /// Overwrites 8 bytes already written at `at` (a count known only after its section).
    pub fn patch_u64(&mut self, at: u64, value: u64) -> std::io::Result<()> {
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(at))?;
        self.out.write_all(&value.to_le_bytes())?;
        self.out.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    /// Appends the checksum of everything written, syncs, and renames the file into place.
    pub fn seal(self) -> std::io::Result<u64> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut BufReader::new(&mut file), &mut hasher)?;
        let digest = hasher.finalize();
        file.seek(SeekFrom::End(0))?;
        file.write_all(&digest)?;
        file.sync_all()?;
        let len = file.stream_position()?;
        std::fs::rename(&self.partial, &self.path)?;
        Ok(len)
    }

    /// Removes what was written (the snapshot failed).
    pub fn abandon(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// Checks `path`'s magic line and seal; returns the length of its payload (after the magic
/// line, before the seal).
pub fn verify(path: &Path, magic: &[u8], what: &'static str) -> Result<u64, FileError> {
    let name = path.display().to_string();
    let io = |source| FileError::Io {
        path: name.clone(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let not_ours = || FileError::NotOurs {
        path: name.clone(),
        what,
        magic: String::from_utf8_lossy(magic).trim().to_owned(),
    };
    if len < magic.len() as u64 + SEAL_BYTES {
        let mut start = vec![0; len.min(magic.len() as u64) as usize];
        file.read_exact(&mut start).map_err(io)?;
        if !magic.starts_with(&start) || start.is_empty() {
            return Err(not_ours());
        }
        return Err(FileError::Checksum {
            path: name.clone(),
            stored: "none (the file ends before its checksum)".into(),
            computed: "-".into(),
        });
    }
    let mut start = vec![0; magic.len()];
    file.read_exact(&mut start).map_err(io)?;
    if start != magic {
        return Err(not_ours());
    }
    let mut stored = [0u8; SEAL_BYTES as usize];
    file.seek(SeekFrom::Start(len - SEAL_BYTES)).map_err(io)?;
    file.read_exact(&mut stored).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut hasher = Sha256::new();
    std::io::copy(
        &mut BufReader::with_capacity(1 << 20, (&mut file).take(len - SEAL_BYTES)),
        &mut hasher,
    )
    .map_err(io)?;
    let computed = hasher.finalize();
    if stored[..] != computed[..] {
        return Err(FileError::Checksum {
            path: name,
            stored: hex(&stored),
            computed: hex(&computed),
        });
    }
    Ok(len - SEAL_BYTES - magic.len() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a verified file's payload, with the offsets its errors name.
pub struct PayloadReader {
    path: String,
    input: std::io::Take<BufReader<File>>,
    offset: u64,
}

impl PayloadReader {
    /// Opens the payload of a file [`verify`] accepted.
    pub fn open(path: &Path, magic: &[u8], payload: u64) -> Result<PayloadReader, FileError> {
        let name = path.display().to_string();
        let mut file = File::open(path).map_err(|source| FileError::Io {
            path: name.clone(),
            source,
        })?;
        file.seek(SeekFrom::Start(magic.len() as u64))
            .map_err(|source| FileError::Io {
                path: name.clone(),
                source,
            })?;
        Ok(PayloadReader {
            path: name,
            input: BufReader::with_capacity(1 << 20, file).take(payload),
            offset: magic.len() as u64,
        })
    }

    fn malformed(&self, reason: impl Into<String>) -> FileError {
        FileError::Malformed {
            path: self.path.clone(),
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), FileError> {
        self.input
            .read_exact(buf)
            .map_err(|_| self.malformed(format!("the payload ends inside {what}")))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, FileError> {
        let mut b = [0; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FileError> {
        let mut b = [0; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The rest of the payload, at most `max` bytes.
    pub fn rest(&mut self, max: usize) -> Result<Vec<u8>, FileError> {
        let mut out = Vec::new();
        (&mut self.input)
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.malformed(e.to_string()))?;
        if out.len() > max {
            return Err(self.malformed(format!("the payload is over {max} bytes")));
        }
        self.offset += out.len() as u64;
        Ok(out)
    }

    /// The snapshot's header line.
    pub fn header(&mut self) -> Result<SnapshotHeader, FileError> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            self.exact(&mut byte, "the header line")?;
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
            if line.len() > MAX_HEADER_BYTES {
                return Err(self.malformed("the header line is over 1 MiB"));
            }
        }
        let header: SnapshotHeader = serde_json::from_slice(&line)
            .map_err(|e| self.malformed(format!("the header is not a snapshot header: {e}")))?;
        if header.dimension == 0 || header.dimension > MAX_DIMENSION {
            return Err(self.malformed(format!("dimension {} is out of range", header.dimension)));
        }
        Ok(header)
    }

    /// The next partition section's start: partition, sequence number, row count; `None` at
    /// the end of the payload.
    pub fn section(&mut self) -> Result<Option<(u32, u64, u64)>, FileError> {
        if self.input.limit() == 0 {
            return Ok(None);
        }
        let partition = self.u32("a section's partition")?;
        let seq = self.u64("a section's sequence number")?;
        let rows = self.u64("a section's row count")?;
        Ok(Some((partition, seq, rows)))
    }

    /// The next row of a section whose vectors have `dimension` values.
    pub fn row(&mut self, dimension: u32) -> Result<Row, FileError> {
        let id = self.u64("a row's id")?;
        let len = self.u32("a row's metadata length")?;
        if len > MAX_METADATA_BYTES {
            return Err(self.malformed(format!(
                "row {id}'s metadata is {len} bytes; at most {MAX_METADATA_BYTES} are allowed"
            )));
        }
        let mut text = vec![0; len as usize];
        self.exact(&mut text, "a row's metadata")?;
        let metadata = String::from_utf8(text)
            .map_err(|_| self.malformed(format!("row {id}'s metadata is not UTF-8")))?;
        let mut raw = vec![0; dimension as usize * 4];
        self.exact(&mut raw, "a row's vector")?;
        let vector: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
            return Err(self.malformed(format!("row {id}'s value {i} is not finite")));
        }
        Ok(Row {
            id,
            vector,
            metadata,
        })
    }
}

/// One row as a snapshot section holds it.
pub fn encode_row(out: &mut Vec<u8>, id: u64, vector: &[f32], metadata: &str) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(metadata.as_bytes());
    for x in vector {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// A section's start; the row count at `position + 12` is patched once known.
pub fn encode_section(out: &mut Vec<u8>, partition: u32, seq: u64, rows: u64) {
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            collection: serde_json::json!({"name": "docs"}),
            dimension: 3,
            partitions: 2,
            taken_at: 1,
            arbor: "test".into(),
        }
    }

    /// A snapshot of two partitions, its rows, and its path.
    fn write(dir: &Path) -> (PathBuf, Sections) {
        let path = dir.join("s.arbor");
        let sections = vec![
            (
                0,
                vec![
                    Row {
                        id: 7,
                        vector: vec![1.0, -0.5, 0.25],
                        metadata: r#"{"a":1}"#.into(),
                    },
                    Row {
                        id: 9,
                        vector: vec![0.0, 1.0, f32::MIN_POSITIVE],
                        metadata: String::new(),
                    },
                ],
            ),
            (1, Vec::new()),
        ];
        let mut w = SealedWriter::create(&path, SNAPSHOT_MAGIC).unwrap();
        let mut line = serde_json::to_vec(&header()).unwrap();
        line.push(b'\n');
        w.write(&line).unwrap();
        for (p, rows) in &sections {
            let at = w.position().unwrap();
            let mut buf = Vec::new();
            encode_section(&mut buf, *p, 42, 0);
            for r in rows {
                encode_row(&mut buf, r.id, &r.vector, &r.metadata);
            }
            w.write(&buf).unwrap();
            w.patch_u64(at + 12, rows.len() as u64).unwrap();
        }
        w.seal().unwrap();
        (path, sections)
    }

    type Sections = Vec<(u32, Vec<Row>)>;

    fn read(path: &Path) -> Result<(SnapshotHeader, Sections), FileError> {
        let payload = verify(path, SNAPSHOT_MAGIC, "a collection snapshot")?;
        let mut r = PayloadReader::open(path, SNAPSHOT_MAGIC, payload)?;
        let h = r.header()?;
        let mut sections = Vec::new();
        while let Some((p, seq, n)) = r.section()? {
            assert_eq!(seq, 42);
            let rows = (0..n)
                .map(|_| r.row(h.dimension))
                .collect::<Result<_, _>>()?;
            sections.push((p, rows));
        }
        Ok((h, sections))
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, sections) = write(dir.path());
        assert!(!dir.path().join("s.arbor.partial").exists());
        let (h, read) = read(&path).unwrap();
        assert_eq!(h, header());
        assert_eq!(read, sections);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path());
        let whole = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        for cut in 0..whole.len() {
            std::fs::write(&bad, &whole[..cut]).unwrap();
            let e = read(&bad).unwrap_err().to_string();
            assert!(
                e.contains("nothing was restored") || e.contains("not a collection snapshot"),
                "{cut}: {e}"
            );
        }
        for at in 0..whole.len() {
            let mut flipped = whole.clone();
            flipped[at] ^= 0x10;
            std::fs::write(&bad, &flipped).unwrap();
            let e = read(&bad).unwrap_err();
            assert!(
                matches!(e, FileError::Checksum { .. } | FileError::NotOurs { .. }),
                "{at}: {e}"
            );
        }
    }

    #[test]
    fn a_backup_is_not_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut w = SealedWriter::create(&path, BACKUP_MAGIC).unwrap();
        w.write(b"{}").unwrap();
        w.seal().unwrap();
        let e = verify(&path, SNAPSHOT_MAGIC, "a collection snapshot").unwrap_err();
        assert!(
            e.to_string().contains("is not a collection snapshot"),
            "{e}"
        );
        assert_eq!(verify(&path, BACKUP_MAGIC, "a cluster backup").unwrap(), 2);
    }

    #[test]
    fn a_sealed_file_with_a_lying_payload_is_refused_by_name() {
        // Sealed correctly, but a row says its metadata is longer than the limit.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut w = SealedWriter::create(&path, SNAPSHOT_MAGIC).unwrap();
        let mut line = serde_json::to_vec(&header()).unwrap();
        line.push(b'\n');
        w.write(&line).unwrap();
        let mut buf = Vec::new();
        encode_section(&mut buf, 0, 42, 1);
        buf.extend_from_slice(&5u64.to_le_bytes());
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        w.write(&buf).unwrap();
        w.seal().unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("row 5's metadata is 4294967295 bytes"), "{e}");
    }
}
