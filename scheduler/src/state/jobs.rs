//! Job records: what the control plane remembers of each recorded job, within a byte budget.
//!
//! Every record is on every node and in every snapshot, so the table bounds itself rather
//! than trusting its proposers: a record holds a bounded summary of its job (never a whole
//! prompt or payload), each token may hold [`OWNER_RECORDS_MAX`] records and
//! [`OWNER_BYTES_MAX`] bytes, and the table [`TABLE_BYTES_MAX`]. An unfinished job is
//! counted with room for the largest result it may record, so finishing never overdraws.
//! When a new record needs room, the oldest finished records make it: first the submitter's
//! own, then (for the table's budget) those of the token holding the most, so one busy token
//! cannot wipe the others' history. When only unfinished jobs hold the room, the submission
//! is refused with [`Rejection::Quota`]. All of it is deterministic: every replica evicts
//! the same records, and the outcome names them so that indexes kept beside the state can
//! follow.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::JobId;
use crate::command::{CommandOutcome, ObjectKind, Rejection};
use arbor_proto::NodeId;

/// The largest recorded job spec (a summary of the job's arguments).
pub const MAX_RECORDED_SPEC: usize = 16 * 1024;
/// The largest recorded result; a gateway replaces a larger one by a note before recording.
pub const MAX_RECORDED_RESULT: usize = 64 * 1024;
/// A failure's reason is kept to this many bytes (cut at a character boundary).
pub const MAX_RECORDED_REASON: usize = 4 * 1024;
/// The most records one token may hold.
pub const OWNER_RECORDS_MAX: usize = 5_000;
/// The most bytes one token's records may hold.
pub const OWNER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The most records the table holds.
pub const TABLE_RECORDS_MAX: usize = 20_000;
/// The most bytes the table's records hold: about what a snapshot may carry of them.
pub const TABLE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// What a record costs beyond its strings (status, progress, node, time, map entry).
const RECORD_OVERHEAD: usize = 64;

/// Lifecycle of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed { reason: String },
    Cancelled,
}

impl JobStatus {
    /// The status as a record keeps it: a failure's reason cut to [`MAX_RECORDED_REASON`].
    pub fn as_recorded(&self) -> JobStatus {
        match self {
            JobStatus::Failed { reason } => JobStatus::Failed {
                reason: cut(reason, MAX_RECORDED_REASON).to_owned(),
            },
            other => other.clone(),
        }
    }

    /// A finished job's record no longer changes.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed { .. } | JobStatus::Cancelled
        )
    }
}

/// A job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub kind: String,
    pub spec: Vec<u8>,
    pub status: JobStatus,
    /// 0.0 ..= 1.0.
    pub progress: f32,
    pub result: Option<Vec<u8>>,
    /// The node that accepted and runs it.
    pub node: NodeId,
    /// Who submitted it (a token id).
    pub owner: String,
    /// When it was accepted, in ms since the Unix epoch.
    pub submitted_ms: u64,
}

impl Job {
    /// What the record counts against its budgets: an unfinished job keeps room for the
    /// largest result it may still record.
    fn cost(&self, id: &str) -> usize {
        let reason = match &self.status {
            JobStatus::Failed { reason } => reason.len(),
            _ => 0,
        };
        let result = match (&self.result, self.status.is_finished()) {
            (Some(r), true) => r.len(),
            (None, true) => 0,
            (_, false) => MAX_RECORDED_RESULT,
        };
        RECORD_OVERHEAD
            + id.len()
            + self.kind.len()
            + self.owner.len()
            + self.spec.len()
            + reason
            + result
    }
}

/// What one token's records hold.
#[derive(Debug, Clone, Default)]
struct Holding {
    records: usize,
    bytes: usize,
    /// Its finished records, oldest first: the ones that may make room.
    finished: BTreeSet<(u64, JobId)>,
}

/// The job records, with the budgets they are kept within. Reads go through `Deref` to the
/// map; changes only through the methods below, which keep the accounting true.
#[derive(Debug, Clone, Default)]
pub struct JobRecords {
    records: BTreeMap<JobId, Job>,
    /// Derived from `records` (rebuilt when a snapshot is decoded): by owner.
    holdings: BTreeMap<String, Holding>,
    /// Derived: the sum of every record's cost.
    bytes: usize,
    /// Derived: how many records are of jobs not yet finished.
    unfinished: usize,
}

impl PartialEq for JobRecords {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl std::ops::Deref for JobRecords {
    type Target = BTreeMap<JobId, Job>;
    fn deref(&self) -> &Self::Target {
        &self.records
    }
}

impl<'a> IntoIterator for &'a JobRecords {
    type Item = (&'a JobId, &'a Job);
    type IntoIter = std::collections::btree_map::Iter<'a, JobId, Job>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

impl Serialize for JobRecords {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.records.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JobRecords {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<JobId, Job>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

impl FromIterator<(JobId, Job)> for JobRecords {
    fn from_iter<I: IntoIterator<Item = (JobId, Job)>>(iter: I) -> Self {
        let mut table = JobRecords::default();
        for (id, job) in iter {
            table.insert(id, job);
        }
        table
    }
}

impl JobRecords {
    /// The bytes all records count against [`TABLE_BYTES_MAX`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many records are of jobs not yet finished.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// The records and bytes `owner` holds.
    pub fn held_by(&self, owner: &str) -> (usize, usize) {
        self.holdings
            .get(owner)
            .map_or((0, 0), |h| (h.records, h.bytes))
    }

    /// Records a new job, evicting the oldest finished records that must make room; the
    /// outcome names them.
    pub fn submit(&mut self, id: &JobId, job: Job) -> Result<CommandOutcome, Rejection> {
        if self.records.contains_key(id) {
            return Err(Rejection::AlreadyExists {
                kind: ObjectKind::Job,
                name: id.clone(),
            });
        }
        if job.spec.len() > MAX_RECORDED_SPEC {
            return Err(Rejection::Invalid(format!(
                "job {id:?}: its recorded spec is {} bytes, more than {MAX_RECORDED_SPEC}",
                job.spec.len()
            )));
        }
        let owner = job.owner.clone();
        let cost = job.cost(id);
        // What must go, decided before anything changes so a refusal changes nothing.
        let mut evict = Vec::new();
        let (records, bytes) = self.held_by(&owner);
        let mut own = self.holdings.get(&owner).map(|h| h.finished.iter());
        let (mut owner_records, mut owner_bytes) = (records + 1, bytes + cost);
        let mut freed = 0;
        while owner_records > OWNER_RECORDS_MAX || owner_bytes > OWNER_BYTES_MAX {
            let Some((_, old)) = own.as_mut().and_then(Iterator::next) else {
                return Err(Rejection::Quota(format!(
                    "token {owner:?} holds {records} job records ({bytes} bytes) and its \
                     running jobs' records leave no room for another (a token may hold \
                     {OWNER_RECORDS_MAX} records and {OWNER_BYTES_MAX} bytes, a running job \
                     counting {MAX_RECORDED_RESULT} for its result); submit without \
                     `record` or wait for some to finish"
                )));
            };
            let c = self.records[old].cost(old);
            owner_records -= 1;
            owner_bytes -= c;
            freed += c;
            evict.push(old.clone());
        }
        let mut table_records = self.records.len() + 1 - evict.len();
        let mut table_bytes = self.bytes + cost - freed;
        if table_records > TABLE_RECORDS_MAX || table_bytes > TABLE_BYTES_MAX {
            // From the token holding the most, then the next, oldest records first.
            let mut others: Vec<(&String, &Holding)> = self
                .holdings
                .iter()
                .filter(|(o, h)| **o != owner && !h.finished.is_empty())
                .collect();
            others.sort_by_key(|(o, h)| (std::cmp::Reverse(h.bytes), *o));
            let mut candidates = others
                .into_iter()
                .flat_map(|(_, h)| h.finished.iter())
                .chain(
                    self.holdings
                        .get(&owner)
                        .into_iter()
                        .flat_map(|h| h.finished.iter())
                        .skip(evict.len()),
                );
            while table_records > TABLE_RECORDS_MAX || table_bytes > TABLE_BYTES_MAX {
                let Some((_, old)) = candidates.next() else {
                    return Err(Rejection::Quota(format!(
                        "the cluster holds {} job records ({} bytes) and its running jobs' \
                         records leave no room for another (it keeps {TABLE_RECORDS_MAX} \
                         records and {TABLE_BYTES_MAX} bytes); submit without `record` or \
                         wait for some to finish",
                        self.records.len(),
                        self.bytes
                    )));
                };
                table_records -= 1;
                table_bytes -= self.records[old].cost(old);
                evict.push(old.clone());
            }
        }
        for old in &evict {
            self.remove(old);
        }
        self.insert(id.clone(), job);
        Ok(CommandOutcome::JobsEvicted(evict))
    }

    /// Updates an unfinished job. Its reason is cut to [`MAX_RECORDED_REASON`]; a result over
    /// [`MAX_RECORDED_RESULT`] is refused (the gateway records a note in its place).
    pub fn update(
        &mut self,
        id: &JobId,
        status: &JobStatus,
        progress: f32,
        result: &Option<Vec<u8>>,
    ) -> Result<CommandOutcome, Rejection> {
        if !(0.0..=1.0).contains(&progress) {
            return Err(Rejection::Invalid(format!(
                "job progress {progress} is outside 0..=1"
            )));
        }
        if let Some(r) = result.as_ref().filter(|r| r.len() > MAX_RECORDED_RESULT) {
            return Err(Rejection::Invalid(format!(
                "job {id:?}: a result of {} bytes is more than a record holds \
                 ({MAX_RECORDED_RESULT})",
                r.len()
            )));
        }
        let Some(job) = self.records.get(id) else {
            return Err(Rejection::NotFound {
                kind: ObjectKind::Job,
                name: id.clone(),
            });
        };
        if job.status.is_finished() {
            return Err(Rejection::Invalid(format!(
                "job {id:?} already finished ({:?})",
                job.status
            )));
        }
        let mut job = self.remove(id).expect("present");
        job.status = status.as_recorded();
        job.progress = progress;
        job.result = result.clone();
        // A finished job costs at most what it reserved: nothing more to make room for.
        self.insert(id.clone(), job);
        Ok(CommandOutcome::Done)
    }

    /// Forgets finished jobs (unfinished ones and unknown ids are skipped).
    pub fn prune(&mut self, ids: &[JobId]) {
        for id in ids {
            if self.records.get(id).is_some_and(|j| j.status.is_finished()) {
                self.remove(id);
            }
        }
    }

    fn insert(&mut self, id: JobId, job: Job) {
        if let Some(old) = self.remove(&id) {
            debug_assert!(false, "job {id} recorded twice: {old:?}");
        }
        let cost = job.cost(&id);
        let holding = self.holdings.entry(job.owner.clone()).or_default();
        holding.records += 1;
        holding.bytes += cost;
        if job.status.is_finished() {
            holding.finished.insert((job.submitted_ms, id.clone()));
        } else {
            self.unfinished += 1;
        }
        self.bytes += cost;
        self.records.insert(id, job);
    }

    fn remove(&mut self, id: &JobId) -> Option<Job> {
        let job = self.records.remove(id)?;
        let cost = job.cost(id);
        self.bytes -= cost;
        if !job.status.is_finished() {
            self.unfinished -= 1;
        }
        if let Some(holding) = self.holdings.get_mut(&job.owner) {
            holding.records -= 1;
            holding.bytes -= cost;
            holding.finished.remove(&(job.submitted_ms, id.clone()));
            if holding.records == 0 {
                self.holdings.remove(&job.owner);
            }
        }
        Some(job)
    }
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(owner: &str, at: u64, spec: usize) -> Job {
        Job {
            kind: "generate".into(),
            spec: vec![b'x'; spec],
            status: JobStatus::Queued,
            progress: 0.0,
            result: None,
            node: 1,
            owner: owner.into(),
            submitted_ms: at,
        }
    }

    fn finish(t: &mut JobRecords, id: &str, result: usize) {
        t.update(
            &id.to_string(),
            &JobStatus::Succeeded,
            1.0,
            &Some(vec![b'r'; result]),
        )
        .unwrap();
    }

    /// The derived accounting equals a recount from the records.
    fn assert_accounted(t: &JobRecords) {
        let again: JobRecords = t.records.clone().into_iter().collect();
        assert_eq!(t.bytes, again.bytes);
        assert_eq!(t.unfinished, again.unfinished);
        assert_eq!(
            t.unfinished,
            t.values().filter(|j| !j.status.is_finished()).count()
        );
        assert_eq!(
            t.bytes,
            t.records.iter().map(|(id, j)| j.cost(id)).sum::<usize>()
        );
        for (owner, h) in &t.holdings {
            assert_eq!(again.held_by(owner), (h.records, h.bytes));
            assert_eq!(h.finished, again.holdings[owner].finished);
        }
        assert_eq!(t.holdings.len(), again.holdings.len());
    }

    #[test]
    fn a_token_over_its_quota_makes_room_from_its_own_oldest_finished_records() {
        let mut t = JobRecords::default();
        t.submit(&"b0".to_string(), job("b", 0, 10)).unwrap();
        // "a" submits until its quota is full of running jobs: the next is refused, and
        // nothing changes.
        let mut held = 0u64;
        let refusal = loop {
            match t.submit(&format!("a{held:05}"), job("a", held, 10)) {
                Ok(out) => assert_eq!(out, CommandOutcome::JobsEvicted(vec![])),
                Err(e) => break e,
            }
            held += 1;
        };
        assert!(
            matches!(refusal, Rejection::Quota(ref m) if m.contains("\"a\"")),
            "{refusal}"
        );
        assert!(held as usize <= OWNER_RECORDS_MAX);
        assert!(t.held_by("a").1 <= OWNER_BYTES_MAX);
        let before = t.clone();
        assert!(
            t.submit(&"a-next".to_string(), job("a", 99_999, 10))
                .is_err()
        );
        assert_eq!(t, before);
        // Once some finish, the oldest finished make room, and b's record is untouched.
        // (With results as large as a record holds: finishing frees nothing.)
        finish(&mut t, "a00007", MAX_RECORDED_RESULT);
        finish(&mut t, "a00003", MAX_RECORDED_RESULT);
        // The oldest finished record goes first, then the next; then the quota is full of
        // running jobs again.
        let mut evicted = vec![];
        for i in 0.. {
            match t.submit(&format!("a-next{i}"), job("a", 99_999, 10)) {
                Ok(CommandOutcome::JobsEvicted(gone)) => evicted.extend(gone),
                Ok(other) => panic!("{other:?}"),
                Err(_) => break,
            }
        }
        assert_eq!(evicted, vec!["a00003".to_string(), "a00007".to_string()]);
        assert!(t.contains_key("b0"));
        assert_accounted(&t);
    }

    #[test]
    fn the_tables_budget_takes_from_the_token_that_holds_the_most() {
        let mut t = JobRecords::default();
        // Five tokens fill the table with finished records; "o1" holds the most bytes.
        let per = TABLE_RECORDS_MAX / 5;
        for o in 0..5 {
            let owner = format!("o{o}");
            for i in 0..per {
                let id = format!("{owner}-{i:05}");
                t.submit(&id, job(&owner, i as u64, 10)).unwrap();
                finish(&mut t, &id, if o == 1 { 500 } else { 10 });
            }
        }
        assert_eq!(t.len(), TABLE_RECORDS_MAX);
        let out = t.submit(&"o0-last".to_string(), job("o0", 0, 10)).unwrap();
        assert_eq!(out, CommandOutcome::JobsEvicted(vec!["o1-00000".into()]));
        assert_eq!(t.len(), TABLE_RECORDS_MAX);
        assert_accounted(&t);
    }

    #[test]
    fn an_unfinished_job_reserves_room_for_its_result() {
        let mut t = JobRecords::default();
        t.submit(&"j".to_string(), job("a", 1, 100)).unwrap();
        let reserved = t.bytes();
        assert!(reserved >= MAX_RECORDED_RESULT + 100);
        finish(&mut t, "j", 10);
        assert!(t.bytes() < reserved, "finishing never grows the record");
        let too_big = t.submit(&"k".to_string(), job("a", 2, MAX_RECORDED_SPEC + 1));
        assert!(matches!(too_big, Err(Rejection::Invalid(_))));
        t.submit(&"k".to_string(), job("a", 2, 10)).unwrap();
        let result = Some(vec![0u8; MAX_RECORDED_RESULT + 1]);
        let refused = t.update(&"k".to_string(), &JobStatus::Succeeded, 1.0, &result);
        assert!(matches!(refused, Err(Rejection::Invalid(_))));
        let long = JobStatus::Failed {
            reason: "é".repeat(MAX_RECORDED_REASON),
        };
        t.update(&"k".to_string(), &long, 1.0, &None).unwrap();
        let JobStatus::Failed { reason } = &t["k"].status else {
            panic!()
        };
        assert!(reason.len() <= MAX_RECORDED_REASON && reason.starts_with('é'));
        assert_accounted(&t);
    }

    #[test]
    fn a_snapshot_rebuilds_the_accounting() {
        let mut t = JobRecords::default();
        for i in 0..50u64 {
            let id = format!("j{i}");
            t.submit(&id, job(if i % 3 == 0 { "a" } else { "b" }, i, 20))
                .unwrap();
            if i % 2 == 0 {
                finish(&mut t, &id, 30);
            }
        }
        t.prune(&["j0".into(), "j1".into(), "nope".into()]);
        assert!(!t.contains_key("j0") && t.contains_key("j1"));
        let bytes = bincode::serde::encode_to_vec(&t, bincode::config::standard()).unwrap();
        let (back, _): (JobRecords, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.bytes(), t.bytes());
        assert_accounted(&back);
    }
}
