//! `arbor ingest NAME PATH...`: reads documents from files, sends them in batches (one
//! `ingest` job each, two in flight) and shows their progress.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::Value;

use super::{GatewayArgs, cancel_all, failed};
use arbor_client::GatewayClient;
use arbor_proto::gateway::{ClientMsg, Document, IngestJob, JobSpec, JobState, ServerMsg};
use arbor_proto::{ErrorCode, JobId};

/// At most this many documents per `ingest` job.
pub const MAX_BATCH_DOCUMENTS: usize = 64;
/// At most about this many bytes of documents (as JSON) per `ingest` job.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Jobs kept in flight: one is sent while the other runs.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Room for a submit's envelope around its documents, in bytes.
const ENVELOPE_BYTES: usize = 1024;

/// A file that cannot be ingested, naming it (and the line) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is a directory; pass the files in it instead (e.g. `arbor ingest NAME {path}/*.md`)"
    )]
    Directory { path: String },
    #[error("{path}: arbor ingest reads .txt, .md and .jsonl files, not {what}")]
    UnknownType { path: String, what: String },
    #[error("{path} is not UTF-8 text")]
    NotUtf8 { path: String },
    #[error(
        "{path}:{line}: {message} (each line is one JSON object: {{\"id\": ..., \"text\": ..., \"title\"?: ..., \"metadata\"?: {{...}}, \"vector\"?: [...]}})"
    )]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "document id {id:?} comes from both {first} and {second}; ids must be unique (rename one of the files, or give the .jsonl lines ids of their own)"
    )]
    Duplicate {
        id: String,
        first: String,
        second: String,
    },
}

/// Reads documents from files: a `.txt` or `.md` file is one document (id: the file name,
/// title: the name without its extension); a `.jsonl` file holds one document a line
/// (`{"id", "text", "title"?, "metadata"?, "vector"?}`; blank lines are skipped; a line with
/// its own `vector` is stored as one chunk with it, not embedded). Directories and other
/// extensions are errors, and so is an id that two documents share. All or nothing: the first
/// problem is the error.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, ReadError> {
    let mut docs = Vec::new();
    // Where each id came from, to name both places of a duplicate.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut add = |doc: Document, from: String, docs: &mut Vec<Document>| {
        if let Some(first) = seen.get(&doc.id) {
            return Err(ReadError::Duplicate {
                id: doc.id,
                first: first.clone(),
                second: from,
            });
        }
        seen.insert(doc.id.clone(), from);
        docs.push(doc);
        Ok(())
    };
    for path in paths {
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| ReadError::Read {
            path: shown.clone(),
            source,
        })?;
        if meta.is_dir() {
            return Err(ReadError::Directory { path: shown });
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("txt" | "md") => {
                let text = read_text(path)?;
                let name = |p: Option<&std::ffi::OsStr>| {
                    p.map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                };
                let doc = Document {
                    id: name(path.file_name()),
                    text,
                    title: Some(name(path.file_stem())),
                    metadata: Default::default(),
                    vector: None,
                };
                add(doc, shown, &mut docs)?;
            }
            Some("jsonl") => {
                let text = read_text(path)?;
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let doc = parse_line(line).map_err(|message| ReadError::Line {
                        path: shown.clone(),
                        line: i + 1,
                        message,
                    })?;
                    add(doc, format!("{shown}:{}", i + 1), &mut docs)?;
                }
            }
            other => {
                return Err(ReadError::UnknownType {
                    path: shown,
                    what: match other {
                        Some(e) => format!(".{e}"),
                        None => "a file without an extension".into(),
                    },
                });
            }
        }
    }
    Ok(docs)
}

fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8 {
        path: path.display().to_string(),
    })?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// One `.jsonl` line as a document, or what is wrong with it.
fn parse_line(line: &str) -> Result<Document, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        let what = match value {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(format!("expected a JSON object, not {what}"));
    }
    let doc: Document =
        serde_json::from_value(value).map_err(|e| e.to_string().replace('`', "\""))?;
    if doc.id.trim().is_empty() {
        return Err("\"id\" is empty".into());
    }
    Ok(doc)
}

/// A document's size in a submit, as JSON with its separating comma.
fn json_len(doc: &Document) -> usize {
    serde_json::to_string(doc).map_or(0, |s| s.len()) + 1
}

/// Splits documents, in order, into batches of at most `max_docs` documents and about
/// `max_bytes` bytes of JSON (a document larger than that is a batch of its own).
pub fn batches(docs: Vec<Document>, max_docs: usize, max_bytes: usize) -> Vec<Vec<Document>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for doc in docs {
        let len = json_len(&doc);
        if !batch.is_empty() && (batch.len() >= max_docs || bytes + len > max_bytes) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += len;
        batch.push(doc);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// What this command reads of an `ingest` job's result data (it also carries
/// `per_partition` and `elapsed_ms`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IngestResult {
    #[serde(default)]
    pub documents: Option<u64>,
    #[serde(default)]
    pub chunks: u64,
}

/// One batch whose job has been submitted and has not ended.
#[derive(Debug)]
struct InFlight {
    index: usize,
    reference: String,
    job: Option<JobId>,
    len: u64,
    done: u64,
    first: String,
    last: String,
    result: Option<IngestResult>,
}

/// Why a batch failed.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchFailure {
    pub index: usize,
    /// The batch's first and last document ids.
    pub first: String,
    pub last: String,
    pub code: ErrorCode,
    pub message: String,
}

/// The batches in flight and what the finished ones did. Pure: the loop in [`ingest`] feeds
/// it the gateway's messages.
#[derive(Debug)]
pub struct Pipeline {
    batches: usize,
    in_flight: Vec<InFlight>,
    /// Documents of the batches that succeeded.
    pub documents: u64,
    /// Chunks of the batches that succeeded.
    pub chunks: u64,
}

impl Pipeline {
    pub fn new(batches: usize) -> Pipeline {
        Pipeline {
            batches,
            in_flight: Vec::new(),
            documents: 0,
            chunks: 0,
        }
    }

    /// Notes that batch `index` was submitted with `reference`.
    pub fn sent(&mut self, index: usize, reference: String, docs: &[Document]) {
        let id = |d: Option<&Document>| d.map(|d| d.id.clone()).unwrap_or_default();
        self.in_flight.push(InFlight {
            index,
            reference,
            job: None,
            len: docs.len() as u64,
            done: 0,
            first: id(docs.first()),
            last: id(docs.last()),
            result: None,
        });
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The jobs in flight that the gateway has accepted.
    pub fn jobs(&self) -> Vec<JobId> {
        self.in_flight
            .iter()
            .filter_map(|b| b.job.clone())
            .collect()
    }

    /// Documents done: those of finished batches and those the running ones reported.
    pub fn position(&self) -> u64 {
        self.documents
            + self
                .in_flight
                .iter()
                .map(|b| b.done.min(b.len))
                .sum::<u64>()
    }

    /// Takes one message; `Ok(true)` when it ended a batch well, `Err` when a batch failed.
    pub fn handle(&mut self, msg: &ServerMsg) -> Result<bool, BatchFailure> {
        let by_job = |job: &str| {
            self.in_flight
                .iter()
                .position(|b| b.job.as_deref() == Some(job))
        };
        match msg {
            ServerMsg::Accepted {
                reference: Some(r),
                job,
                ..
            } => {
                if let Some(b) = self.in_flight.iter_mut().find(|b| &b.reference == r) {
                    b.job = Some(job.clone());
                }
                Ok(false)
            }
            ServerMsg::Progress {
                job, done, unit, ..
            } if unit == "documents" => {
                if let Some(i) = by_job(job) {
                    self.in_flight[i].done = *done;
                }
                Ok(false)
            }
            ServerMsg::Result {
                job,
                data,
                last: true,
            } => {
                if let Some(i) = by_job(job) {
                    let r = serde_json::from_value(data.clone()).unwrap_or_default();
                    self.in_flight[i].result = Some(r);
                }
                Ok(false)
            }
            ServerMsg::Event { job, state, reason } if state.is_finished() => {
                let Some(i) = by_job(job) else {
                    return Ok(false);
                };
                let b = self.in_flight.remove(i);
                match state {
                    JobState::Succeeded => {
                        let r = b.result.unwrap_or_default();
                        self.documents += r.documents.unwrap_or(b.len);
                        self.chunks += r.chunks;
                        Ok(true)
                    }
                    JobState::Cancelled => Err(BatchFailure {
                        index: b.index,
                        first: b.first,
                        last: b.last,
                        code: ErrorCode::JobFailed,
                        message: format!(
                            "its job {job} was cancelled{}",
                            reason
                                .as_ref()
                                .map(|r| format!(": {r}"))
                                .unwrap_or_default()
                        ),
                    }),
                    _ => Err(BatchFailure {
                        index: b.index,
                        first: b.first,
                        last: b.last,
                        code: ErrorCode::JobFailed,
                        message: reason.clone().unwrap_or_else(|| "no reason given".into()),
                    }),
                }
            }
            ServerMsg::Error {
                reference,
                job,
                code,
                message,
                ..
            } => {
                let i = match (reference, job) {
                    (Some(r), _) => self.in_flight.iter().position(|b| &b.reference == r),
                    (None, Some(j)) => by_job(j),
                    // An error about nothing in particular concerns what is in flight.
                    (None, None) => (!self.in_flight.is_empty()).then_some(0),
                };
                let Some(i) = i else {
                    return Ok(false);
                };
                let b = self.in_flight.remove(i);
                Err(BatchFailure {
                    index: b.index,
                    first: b.first,
                    last: b.last,
                    code: *code,
                    message: message.clone(),
                })
            }
            _ => Ok(false),
        }
    }

    /// A failure as the command reports it.
    pub fn describe(&self, f: &BatchFailure) -> String {
        format!(
            "ingest failed ({}): {}\nin batch {} of {} (documents {} .. {}); {} documents of other batches were ingested before it failed",
            f.code,
            f.message,
            f.index + 1,
            self.batches,
            f.first,
            f.last,
            self.documents
        )
    }
}

/// `arbor ingest NAME PATH...`.
pub async fn ingest(
    gw: &GatewayArgs,
    collection: String,
    paths: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let docs = read_documents(&paths)?;
    if docs.is_empty() {
        bail!("no documents to ingest: the files given hold none");
    }
    let mut client = gw.connect().await?;
    let limit = client.limits().max_message_bytes;
    let envelope = ENVELOPE_BYTES + 2 * collection.len();
    let max_bytes = MAX_BATCH_BYTES.min(limit.saturating_sub(envelope)).max(1);
    // A single document over the gateway's limit is said before anything is sent.
    if let Some(doc) = docs.iter().find(|d| json_len(d) + envelope > limit) {
        bail!(
            "document {:?} is {} bytes as JSON, but the gateway takes at most {limit} bytes per message: split it into smaller documents",
            doc.id,
            json_len(doc)
        );
    }
    let total = docs.len() as u64;
    let pending: VecDeque<Vec<Document>> = batches(docs, MAX_BATCH_DOCUMENTS, max_bytes).into();
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} documents  {msg}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let start = Instant::now();
    let mut pipe = Pipeline::new(pending.len());
    let outcome = pump(&mut client, &collection, pending, &mut pipe, &bar).await;
    let elapsed = start.elapsed();
    match outcome {
        Ok(()) => bar.finish_and_clear(),
        Err(e) => {
            bar.abandon();
            return Err(e);
        }
    }
    let secs = elapsed.as_secs_f64();
    println!(
        "ingested {} documents ({} chunks) into {collection} in {:.1}s: {:.1} documents/s",
        pipe.documents,
        pipe.chunks,
        secs,
        pipe.documents as f64 / secs.max(1e-9)
    );
    client.close().await;
    Ok(())
}

/// Keeps [`BATCHES_IN_FLIGHT`] batches in flight until all have ended, or one fails, or
/// ctrl-c (which cancels the jobs in flight).
async fn pump(
    client: &mut GatewayClient,
    collection: &str,
    mut pending: VecDeque<Vec<Document>>,
    pipe: &mut Pipeline,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut next = 0;
    loop {
        while pipe.in_flight() < BATCHES_IN_FLIGHT
            && let Some(documents) = pending.pop_front()
        {
            let reference = client.fresh_ref();
            pipe.sent(next, reference.clone(), &documents);
            next += 1;
            let submit = ClientMsg::Submit {
                reference: Some(reference),
                record: false,
                job: JobSpec::Ingest(IngestJob {
                    collection: collection.to_owned(),
                    documents,
                }),
            };
            client
                .send_raw(&submit)
                .await
                .map_err(|e| failed("ingest", e))?;
        }
        if pipe.in_flight() == 0 {
            return Ok(());
        }
        let msg = tokio::select! {
            msg = client.recv_raw() => msg.map_err(|e| failed("ingest", e))?,
            _ = &mut ctrl_c => {
                bar.abandon();
                cancel_all(client, &pipe.jobs()).await;
                return Err(anyhow!(
                    "interrupted: the batches in flight were cancelled (they may have stored part of their documents); {} documents of finished batches were ingested",
                    pipe.documents
                ));
            }
        };
        match pipe.handle(&msg) {
            Ok(_) => {
                bar.set_position(pipe.position());
                bar.set_message(format!("{} chunks", pipe.chunks));
            }
            Err(failure) => {
                let message = pipe.describe(&failure);
                bar.abandon();
                cancel_all(client, &pipe.jobs()).await;
                return Err(anyhow!(message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn doc(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            text: text.into(),
            title: None,
            metadata: Default::default(),
            vector: None,
        }
    }

    #[test]
    fn text_and_markdown_files_are_one_document_each() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "notes.txt", "plain text");
        let b = write(dir.path(), "Guide.MD", "\u{feff}# Guide\nbody");
        let docs = read_documents(&[a, b]).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (
                docs[0].id.as_str(),
                docs[0].title.as_deref(),
                docs[0].text.as_str()
            ),
            ("notes.txt", Some("notes"), "plain text")
        );
        assert_eq!(
            (
                docs[1].id.as_str(),
                docs[1].title.as_deref(),
                docs[1].text.as_str()
            ),
            ("Guide.MD", Some("Guide"), "# Guide\nbody")
        );
    }

    #[test]
    fn jsonl_files_hold_one_document_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "docs.jsonl",
            "{\"id\":\"a\",\"text\":\"alpha\"}\n\n{\"id\":\"b\",\"text\":\"beta\",\"title\":\"B\",\"metadata\":{\"lang\":\"en\"}}\r\n",
        );
        let docs = read_documents(&[p]).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], doc("a", "alpha"));
        assert_eq!(docs[1].title.as_deref(), Some("B"));
        assert_eq!(docs[1].metadata["lang"], "en");
    }

    #[test]
    fn a_bad_jsonl_line_names_file_line_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("{\"id\":\"a\"}", "missing field \"text\""),
            (
                "{\"id\":\"a\",\"text\":\"t\",\"lang\":\"en\"}",
                "unknown field \"lang\"",
            ),
            ("{\"id\":\"a\",\"text\":7}", "invalid type"),
            ("[1]", "not an array"),
            ("{\"id\":\"a\",", "not JSON"),
            ("{\"id\":\" \",\"text\":\"t\"}", "\"id\" is empty"),
        ];
        for (line, expected) in cases {
            let p = write(
                dir.path(),
                "bad.jsonl",
                &format!("{{\"id\":\"ok\",\"text\":\"fine\"}}\n{line}\n"),
            );
            let e = read_documents(std::slice::from_ref(&p)).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, ReadError::Line { line: 2, .. }), "{text}");
            assert!(text.starts_with(&format!("{}:2: ", p.display())), "{text}");
            assert!(text.contains(expected), "{line}: {text}");
        }
    }

    #[test]
    fn other_files_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pdf = write(dir.path(), "paper.pdf", "%PDF");
        let e = read_documents(&[pdf]).unwrap_err().to_string();
        assert!(
            e.contains("paper.pdf") && e.contains(".pdf") && e.contains(".jsonl"),
            "{e}"
        );
        let bare = write(dir.path(), "README", "x");
        let e = read_documents(&[bare]).unwrap_err().to_string();
        assert!(e.contains("without an extension"), "{e}");
        let e = read_documents(&[dir.path().to_owned()]).unwrap_err();
        assert!(matches!(e, ReadError::Directory { .. }), "{e}");
        let e = read_documents(&[dir.path().join("nope.txt")]).unwrap_err();
        assert!(matches!(e, ReadError::Read { .. }), "{e}");
        let latin1 = dir.path().join("latin1.txt");
        std::fs::write(&latin1, [0x63, 0x61, 0x66, 0xe9]).unwrap();
        let e = read_documents(&[latin1]).unwrap_err();
        assert!(matches!(e, ReadError::NotUtf8 { .. }), "{e}");
    }

    #[test]
    fn duplicate_ids_name_both_sources() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.txt", "x");
        let j = write(
            dir.path(),
            "more.jsonl",
            "{\"id\":\"a.txt\",\"text\":\"y\"}\n",
        );
        let e = read_documents(&[a, j]).unwrap_err().to_string();
        assert!(e.contains("a.txt") && e.contains("more.jsonl:1"), "{e}");
    }

    #[test]
    fn batches_respect_count_and_size() {
        let docs: Vec<Document> = (0..130).map(|i| doc(&format!("d{i}"), "t")).collect();
        let b = batches(docs, 64, 1 << 20);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [64, 64, 2]);
        assert_eq!(b[2][1].id, "d129");

        let big = "x".repeat(400);
        let docs: Vec<Document> = (0..5).map(|i| doc(&format!("d{i}"), &big)).collect();
        let b = batches(docs, 64, 1000);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        // A document over the size is a batch of its own.
        let b = batches(
            vec![doc("a", &big), doc("huge", &"y".repeat(5000))],
            64,
            1000,
        );
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert!(batches(vec![], 64, 1000).is_empty());
    }

    fn accepted(r: &str, job: &str) -> ServerMsg {
        ServerMsg::Accepted {
            reference: Some(r.into()),
            job: job.into(),
            kind: "ingest".into(),
            node: 1,
            recorded: true,
        }
    }

    fn event(job: &str, state: JobState, reason: Option<&str>) -> ServerMsg {
        ServerMsg::Event {
            job: job.into(),
            state,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn the_pipeline_counts_documents_and_chunks() {
        let mut p = Pipeline::new(2);
        p.sent(0, "r1".into(), &[doc("a", "t"), doc("b", "t")]);
        p.sent(1, "r2".into(), &[doc("c", "t")]);
        assert_eq!(p.handle(&accepted("r1", "j1")), Ok(false));
        assert_eq!(p.handle(&accepted("r2", "j2")), Ok(false));
        assert_eq!(p.jobs(), ["j1", "j2"]);
        let progress = ServerMsg::Progress {
            job: "j1".into(),
            done: 1,
            total: 2,
            unit: "documents".into(),
        };
        p.handle(&progress).unwrap();
        assert_eq!(p.position(), 1);
        let result = ServerMsg::Result {
            job: "j1".into(),
            data: json!({"documents": 2, "chunks": 7, "per_partition": [4, 3], "elapsed_ms": 12}),
            last: true,
        };
        p.handle(&result).unwrap();
        // Messages about other jobs are no concern of the pipeline.
        assert_eq!(p.handle(&event("other", JobState::Failed, None)), Ok(false));
        assert_eq!(p.handle(&event("j1", JobState::Succeeded, None)), Ok(true));
        assert_eq!((p.documents, p.chunks, p.in_flight()), (2, 7, 1));
        // A job with no result data counts its batch's documents.
        assert_eq!(p.handle(&event("j2", JobState::Succeeded, None)), Ok(true));
        assert_eq!((p.documents, p.chunks, p.in_flight()), (3, 7, 0));
    }

    #[test]
    fn a_failed_or_refused_batch_is_named() {
        let mut p = Pipeline::new(3);
        p.sent(0, "r1".into(), &[doc("a", "t")]);
        p.sent(1, "r2".into(), &[doc("b", "t"), doc("c", "t")]);
        let refused = ServerMsg::Error {
            reference: Some("r2".into()),
            job: None,
            code: ErrorCode::NotFound,
            message: "no collection docs".into(),
            field: None,
        };
        let f = p.handle(&refused).unwrap_err();
        assert_eq!((f.index, f.code), (1, ErrorCode::NotFound));
        let text = p.describe(&f);
        assert!(
            text.starts_with(
                "ingest failed (not_found): no collection docs\nin batch 2 of 3 (documents b .. c)"
            ),
            "{text}"
        );
        p.handle(&accepted("r1", "j1")).unwrap();
        let f = p
            .handle(&event("j1", JobState::Failed, Some("partition 1 is down")))
            .unwrap_err();
        assert_eq!(
            (f.index, f.code, f.message.as_str()),
            (0, ErrorCode::JobFailed, "partition 1 is down")
        );
    }

    /// Fuzzing the `.jsonl` reader: arbitrary lines, and lines made of a document's own keys
    /// and JSON pieces, must give a document or an error that says what is wrong; what parses
    /// is batched within its limits. `PROPTEST_CASES=N cargo test -p arbor-cli --bin arbor
    /// jsonl_fuzz` for a long run.
    mod jsonl_fuzz {
        use super::super::*;
        use proptest::prelude::*;

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,160}".boxed(),
                prop::collection::vec(
                    prop::sample::select(
                        &[
                            "{",
                            "}",
                            "[",
                            "]",
                            ",",
                            ":",
                            "\"id\"",
                            "\"text\"",
                            "\"title\"",
                            "\"metadata\"",
                            "\"vector\"",
                            "\"a\"",
                            "\"\"",
                            "\" \"",
                            "1",
                            "-0.5",
                            "1e400",
                            "null",
                            "true",
                            "\"\\u0000\"",
                            "\"\\ud800\"",
                            "{\"lang\":\"en\"}",
                            "[0.5,0.25]",
                            "\u{feff}",
                            "\"é\"",
                        ][..],
                    ),
                    0..40,
                )
                .prop_map(|t| t.concat())
                .boxed(),
            ]
        }

        proptest! {
            #[test]
            fn lines_parse_or_say_what_is_wrong(lines in prop::collection::vec(line(), 1..8)) {
                let mut docs = Vec::new();
                for l in &lines {
                    match parse_line(l) {
                        Ok(doc) => {
                            prop_assert!(!doc.id.trim().is_empty());
                            docs.push(doc);
                        }
                        Err(e) => prop_assert!(!e.is_empty()),
                    }
                }
                let n = docs.len();
                let out = batches(docs, 2, 256);
                prop_assert_eq!(out.iter().map(Vec::len).sum::<usize>(), n);
                prop_assert!(out.iter().all(|b| !b.is_empty() && b.len() <= 2));
            }
        }
    }
}
