//! Raft log storage in redb: entries, HardState, the last snapshot (metadata with its ConfState,
//! and the state-machine image), and the applied index.
//!
//! Everything is mirrored in memory, so raft's reads never touch the disk; every change is
//! written through one redb write transaction per [`WriteBatch`], committed with redb's default
//! `Durability::Immediate` (fsync) before the caller goes on.
//!
//! The durable state-machine image is the snapshot: on restart raft is told `applied =
//! snapshot index` and replays the committed log suffix, which rebuilds the same state because
//! apply is deterministic. The applied index stored with each batch records how far the node
//! had applied (it is reported, and checked to be covered by the replay).

use std::path::Path;

use protobuf::Message as _;
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase, TableDefinition};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const HARD_STATE: &str = "hard_state";
const SNAPSHOT_META: &str = "snapshot_meta";
const SNAPSHOT_DATA: &str = "snapshot_data";
const APPLIED: &str = "applied";

/// A storage failure. Fatal for the node: it stops rather than run on with a log it cannot
/// trust.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("raft storage {path}: {source}")]
    Redb {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("raft storage {path}: corrupt {what}: {source}")]
    Corrupt {
        path: String,
        what: &'static str,
        #[source]
        source: protobuf::ProtobufError,
    },
    #[error("raft storage {path}: {detail}")]
    Inconsistent { path: String, detail: String },
}

/// One atomic, fsynced write: what a Ready (or a snapshot) produced.
#[derive(Default)]
pub struct WriteBatch {
    /// A snapshot received from the leader: replaces the whole log.
    pub received_snapshot: Option<Snapshot>,
    /// New entries; they overwrite any conflicting suffix.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub applied: Option<u64>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.received_snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.applied.is_none()
    }
}

/// redb-backed raft [`raft::Storage`].
pub struct RedbStorage {
    db: Database,
    path: String,
    hard_state: HardState,
    /// Latest configuration, as of the last applied change (in memory only; the durable one
    /// is the snapshot's, which matches the state the replay starts from).
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Entries after the snapshot, contiguous, `entries[0].index == snapshot index + 1`.
    entries: Vec<Entry>,
    applied: u64,
    /// Set when raft asked for a snapshot newer than the stored one.
    wants_snapshot: std::cell::Cell<bool>,
}

fn redb_err(path: &str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb {
        path: path.to_string(),
        source: e.into(),
    }
}

impl RedbStorage {
    /// Opens (or creates) the store at `path` and loads it into memory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let db = Database::create(path).map_err(|e| redb_err(&p, e))?;
        // The log holds job records and prompts: only the node's account may read it (redb
        // creates its file with the process umask, 0644 by default).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StoreError::Inconsistent {
                    path: p.clone(),
                    detail: format!("cannot make it private (0600): {e}"),
                },
            )?;
        }
        let mut store = RedbStorage {
            db,
            path: p,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            applied: 0,
            wants_snapshot: std::cell::Cell::new(false),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let p = self.path.clone();
        // Make sure both tables exist so a read transaction can open them.
        let w = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        w.open_table(ENTRIES).map_err(|e| redb_err(&p, e))?;
        w.open_table(META).map_err(|e| redb_err(&p, e))?;
        w.commit().map_err(|e| redb_err(&p, e))?;

        let r = self.db.begin_read().map_err(|e| redb_err(&p, e))?;
        let meta = r.open_table(META).map_err(|e| redb_err(&p, e))?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(|e| redb_err(&p, e))?
                .map(|g| g.value().to_vec()))
        };
        let corrupt = |what, source| StoreError::Corrupt {
            path: p.clone(),
            what,
            source,
        };
        if let Some(b) = get(HARD_STATE)? {
            self.hard_state =
                HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?;
        }
        if let Some(b) = get(SNAPSHOT_META)? {
            let m = SnapshotMetadata::parse_from_bytes(&b)
                .map_err(|e| corrupt("snapshot metadata", e))?;
            self.snapshot.set_metadata(m);
        }
        if let Some(b) = get(SNAPSHOT_DATA)? {
            self.snapshot.data = b.into();
        }
        if let Some(b) = get(APPLIED)? {
            self.applied = u64::from_le_bytes(b.as_slice().try_into().map_err(|_| {
                StoreError::Inconsistent {
                    path: p.clone(),
                    detail: format!("applied index has {} bytes, not 8", b.len()),
                }
            })?);
        }
        self.conf_state = self.snapshot.get_metadata().get_conf_state().clone();
        let entries = r.open_table(ENTRIES).map_err(|e| redb_err(&p, e))?;
        let snap_index = self.snapshot.get_metadata().index;
        for (expect, row) in (snap_index + 1..).zip(
            entries
                .range(snap_index + 1..)
                .map_err(|e| redb_err(&p, e))?,
        ) {
            let (k, v) = row.map_err(|e| redb_err(&p, e))?;
            let e = Entry::parse_from_bytes(v.value()).map_err(|e| corrupt("log entry", e))?;
            if k.value() != expect || e.index != expect {
                return Err(StoreError::Inconsistent {
                    path: p.clone(),
                    detail: format!(
                        "log gap: expected entry {expect}, found key {} index {}",
                        k.value(),
                        e.index
                    ),
                });
            }
            self.entries.push(e);
        }
        Ok(())
    }

    /// Whether nothing was ever stored (a brand-new node).
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.entries.is_empty()
            && self.snapshot.get_metadata().index == 0
    }

    /// Initializes a new cluster member from the bootstrap voter list: a snapshot at index 1,
    /// term 1 holding `initial_state`, identical on every bootstrap voter.
    pub fn bootstrap(&mut self, voters: &[u64], initial_state: Vec<u8>) -> Result<(), StoreError> {
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = voters.to_vec();
        snap.data = initial_state.into();
        let hs = HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        };
        self.write(WriteBatch {
            received_snapshot: Some(snap),
            entries: vec![],
            hard_state: Some(hs),
            applied: Some(1),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn snapshot_data(&self) -> &[u8] {
        &self.snapshot.data
    }

    /// The applied index recorded by the last write.
    pub fn persisted_applied(&self) -> u64 {
        self.applied
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Records the configuration after an applied membership change.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Records a commit index learned after a Ready (persisted with the next batch).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Whether raft asked for a snapshot newer than the stored one.
    pub fn take_snapshot_request(&self) -> bool {
        self.wants_snapshot.replace(false)
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .unwrap_or_else(|| self.snapshot_index())
    }

    /// Writes one batch in one redb transaction and fsyncs it, then updates memory.
    pub fn write(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let p = self.path.clone();
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| redb_err(&p, e))?;
            let mut meta = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
            if let Some(snap) = &batch.received_snapshot {
                table.retain(|_, _| false).map_err(|e| redb_err(&p, e))?;
                let m = snap
                    .get_metadata()
                    .write_to_bytes()
                    .map_err(|e| StoreError::Corrupt {
                        path: p.clone(),
                        what: "snapshot metadata",
                        source: e,
                    })?;
                meta.insert(SNAPSHOT_META, m.as_slice())
                    .map_err(|e| redb_err(&p, e))?;
                meta.insert(SNAPSHOT_DATA, &snap.data[..])
                    .map_err(|e| redb_err(&p, e))?;
            }
            if let Some(first) = batch.entries.first() {
                table
                    .retain_in(first.index.., |_, _| false)
                    .map_err(|e| redb_err(&p, e))?;
                for e in &batch.entries {
                    let bytes = e.write_to_bytes().map_err(|err| StoreError::Corrupt {
                        path: p.clone(),
                        what: "log entry",
                        source: err,
                    })?;
                    table
                        .insert(e.index, bytes.as_slice())
                        .map_err(|e| redb_err(&p, e))?;
                }
            }
            let hs = match (&batch.hard_state, &batch.received_snapshot) {
                (Some(hs), _) => Some(hs.clone()),
                (None, Some(snap)) => {
                    let mut hs = self.hard_state.clone();
                    let m = snap.get_metadata();
                    hs.commit = hs.commit.max(m.index);
                    hs.term = hs.term.max(m.term);
                    Some(hs)
                }
                // A commit index learned from a LightReady rides along with the next batch.
                (None, None) => Some(self.hard_state.clone()),
            };
            if let Some(hs) = &hs {
                let b = hs.write_to_bytes().map_err(|e| StoreError::Corrupt {
                    path: p.clone(),
                    what: "hard state",
                    source: e,
                })?;
                meta.insert(HARD_STATE, b.as_slice())
                    .map_err(|e| redb_err(&p, e))?;
            }
            if let Some(applied) = batch.applied {
                meta.insert(APPLIED, &applied.to_le_bytes()[..])
                    .map_err(|e| redb_err(&p, e))?;
            }
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;

        // Durable: now mirror in memory.
        if let Some(snap) = batch.received_snapshot {
            self.entries.clear();
            self.conf_state = snap.get_metadata().get_conf_state().clone();
            let m = snap.get_metadata();
            self.hard_state.commit = self.hard_state.commit.max(m.index);
            self.hard_state.term = self.hard_state.term.max(m.term);
            self.snapshot = snap;
        }
        if let Some(first) = batch.entries.first() {
            let first_index = first.index;
            let offset = self.snapshot_index() + 1;
            if first_index < offset {
                return Err(StoreError::Inconsistent {
                    path: p,
                    detail: format!(
                        "append at {first_index} below the snapshot (first index {offset})"
                    ),
                });
            }
            self.entries.truncate((first_index - offset) as usize);
            if first_index != self.last() + 1 {
                return Err(StoreError::Inconsistent {
                    path: p,
                    detail: format!("append at {first_index} leaves a gap after {}", self.last()),
                });
            }
            self.entries.extend(batch.entries);
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = hs;
        }
        if let Some(applied) = batch.applied {
            self.applied = applied;
        }
        Ok(())
    }

    /// Stores a snapshot of the local state machine at `index` (already applied) and drops
    /// the log entries it covers, in one fsynced transaction.
    pub fn install_local_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let p = self.path.clone();
        if index <= self.snapshot_index() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index).map_err(|e| StoreError::Inconsistent {
            path: p.clone(),
            detail: format!("no term for snapshot index {index}: {e}"),
        })?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        let txn = self.db.begin_write().map_err(|e| redb_err(&p, e))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| redb_err(&p, e))?;
            let mut m = txn.open_table(META).map_err(|e| redb_err(&p, e))?;
            let mb = meta.write_to_bytes().map_err(|e| StoreError::Corrupt {
                path: p.clone(),
                what: "snapshot metadata",
                source: e,
            })?;
            m.insert(SNAPSHOT_META, mb.as_slice())
                .map_err(|e| redb_err(&p, e))?;
            m.insert(SNAPSHOT_DATA, data.as_slice())
                .map_err(|e| redb_err(&p, e))?;
            m.insert(APPLIED, &index.max(self.applied).to_le_bytes()[..])
                .map_err(|e| redb_err(&p, e))?;
            table
                .retain_in(..=index, |_, _| false)
                .map_err(|e| redb_err(&p, e))?;
        }
        txn.commit().map_err(|e| redb_err(&p, e))?;
        let offset = self.snapshot_index() + 1;
        let drop = (index + 1).saturating_sub(offset) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot.set_metadata(meta);
        self.snapshot.data = data.into();
        self.applied = self.applied.max(index);
        Ok(())
    }
}

impl raft::Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.snapshot.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - first) as usize;
        let hi = (high - first) as usize;
        let mut out = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - snap.index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // raft refuses a snapshot whose configuration does not list the receiver (a learner
        // added after the stored snapshot): ask the node for a fresh one.
        let cs = self.snapshot.get_metadata().get_conf_state();
        let lists_receiver = [
            &cs.voters,
            &cs.learners,
            &cs.voters_outgoing,
            &cs.learners_next,
        ]
        .iter()
        .any(|ids| ids.contains(&to));
        if self.snapshot_index() < request_index || self.snapshot_index() == 0 || !lists_receiver {
            self.wants_snapshot.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}
