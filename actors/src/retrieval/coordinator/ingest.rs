//! Ingest: chunk, embed in batches, route each chunk to its partition's primary, and delete
//! what a re-ingested document no longer has.

use super::*;

impl Coordinator {
    /// Chunks, embeds and writes `docs`; returns once every chunk is durable on every live
    /// replica of its partition. Idempotent: chunk ids derive from document id and position.
    ///
    /// A document ingested again replaces the one stored: before anything is written, the
    /// chunks past its new end are deleted (chunk 0 records how many a document has, in
    /// `_chunks`). Deleting first means that an ingest that fails half way leaves no chunk
    /// that a later ingest of the document could not find. When a batch names a document
    /// more than once, its last occurrence is the one stored.
    pub async fn ingest(
        &self,
        docs: &[Document],
        mut progress: impl FnMut(IngestProgress),
    ) -> Result<IngestReport, RetrievalError> {
        let start = Instant::now();
        let shape = self.shape()?;
        let last: HashMap<&str, usize> = docs
            .iter()
            .enumerate()
            .map(|(n, d)| (d.id.as_str(), n))
            .collect();
        let mut pending: Vec<Pending> = Vec::new();
        let mut counts: Vec<(&str, u32)> = Vec::new();
        for (n, doc) in docs.iter().enumerate() {
            check_document(doc, shape.dimension)?;
            if last.get(doc.id.as_str()) != Some(&n) {
                continue;
            }
            let pieces: Vec<(String, Option<Vec<f32>>)> = match &doc.vector {
                Some(v) => vec![(doc.text.clone(), Some(v.clone()))],
                None => chunks(&doc.text, self.route.chunking)
                    .into_iter()
                    .map(|t| (t, None))
                    .collect(),
            };
            let count = pieces.len() as u32;
            for (i, (text, vector)) in pieces.into_iter().enumerate() {
                let i = i as u32;
                let mut meta = doc.metadata.clone();
                meta.insert("_doc".into(), Value::from(doc.id.clone()));
                meta.insert("_chunk".into(), Value::from(i));
                meta.insert("_text".into(), Value::from(text.clone()));
                if let Some(title) = &doc.title {
                    meta.insert("_title".into(), Value::from(title.clone()));
                }
                if i == 0 {
                    meta.insert("_chunks".into(), Value::from(count));
                }
                pending.push(Pending {
                    id: chunk_id(&doc.id, i),
                    text,
                    metadata: Value::Object(meta).to_string(),
                    vector,
                });
            }
            counts.push((doc.id.as_str(), count));
        }
        self.prune(&counts, shape.partitions).await?;

        let total = pending.len() as u64;
        let mut per_partition = vec![0u64; shape.partitions as usize];
        let mut done = 0u64;
        // Steps of at most EMBED_BATCH texts to embed and UPSERT_BATCH rows; a step's writes
        // run while the next step is embedded.
        let mut writing: Option<tokio::task::JoinHandle<Result<u64, RetrievalError>>> = None;
        let mut rest = pending;
        while !rest.is_empty() {
            let mut to_embed = 0;
            let mut take = 0;
            while take < rest.len() && take < UPSERT_BATCH {
                if rest[take].vector.is_none() {
                    if to_embed == EMBED_BATCH {
                        break;
                    }
                    to_embed += 1;
                }
                take += 1;
            }
            let mut step: Vec<Pending> = rest.drain(..take).collect();
            if to_embed > 0 {
                let texts: Vec<String> = step
                    .iter()
                    .filter(|p| p.vector.is_none())
                    .map(|p| p.text.clone())
                    .collect();
                let mut vectors = self
                    .embed(&shape.embedder, texts, shape.dimension)
                    .await?
                    .into_iter();
                for p in step.iter_mut().filter(|p| p.vector.is_none()) {
                    p.vector = Some(vectors.next().ok_or_else(|| {
                        RetrievalError::Embed("the embedder returned too few vectors".into())
                    })?);
                }
            }
            let mut by_partition: BTreeMap<u32, Rows> = BTreeMap::new();
            for p in step {
                by_partition
                    .entry(partition_of(p.id, shape.partitions))
                    .or_insert_with(|| Rows::empty(shape.dimension))
                    .push(p.id, &p.vector.unwrap_or_default(), p.metadata)
                    .map_err(|e| RetrievalError::Embed(e.to_string()))?;
            }
            for (partition, records) in &by_partition {
                per_partition[*partition as usize] += records.len() as u64;
            }
            if let Some(previous) = writing.take() {
                done += joined(previous.await)?;
                progress(IngestProgress {
                    chunks_done: done,
                    chunks_total: total,
                });
            }
            let this = self.clone();
            writing = Some(tokio::spawn(async move { this.upsert(by_partition).await }));
        }
        if let Some(previous) = writing.take() {
            done += joined(previous.await)?;
            progress(IngestProgress {
                chunks_done: done,
                chunks_total: total,
            });
        }
        Ok(IngestReport {
            documents: docs.len() as u64,
            chunks: total,
            per_partition,
            elapsed_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Writes each partition's rows to its replicas, the partitions at once; the rows written.
    pub(super) async fn upsert(
        &self,
        by_partition: BTreeMap<u32, Rows>,
    ) -> Result<u64, RetrievalError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, rows) in by_partition {
            let this = self.clone();
            tasks.spawn(async move {
                let n = rows.len() as u64;
                if rows.len() <= UPSERT_BATCH {
                    this.write(partition, WriteOp::Upsert(rows)).await?;
                } else {
                    for part in rows.batches(UPSERT_BATCH) {
                        this.write(partition, WriteOp::Upsert(part)).await?;
                    }
                }
                Ok(n)
            });
        }
        let mut written = 0;
        while let Some(done) = tasks.join_next().await {
            written += joined(done)?;
        }
        Ok(written)
    }

    /// Deletes the chunks that documents had past their new count (`counts`: document id and
    /// the number of chunks it is about to have). Chunk 0 of each is read (by id, from one
    /// replica of its partition) for the count stored with it; a document stored before
    /// counts were kept has none and is left as it is.
    pub(super) async fn prune(
        &self,
        counts: &[(&str, u32)],
        partitions: u32,
    ) -> Result<(), RetrievalError> {
        let mut asks: BTreeMap<u32, Vec<(u64, String, u32)>> = BTreeMap::new();
        for (doc, n) in counts {
            let id = chunk_id(doc, 0);
            asks.entry(partition_of(id, partitions))
                .or_default()
                .push((id, (*doc).to_owned(), *n));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, docs) in asks {
            let this = self.clone();
            tasks.spawn(async move { this.stale_chunks(partition, docs).await });
        }
        let mut stale: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        while let Some(found) = tasks.join_next().await {
            for id in joined(found)? {
                stale
                    .entry(partition_of(id, partitions))
                    .or_default()
                    .push(id);
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (partition, ids) in stale {
            let this = self.clone();
            tasks.spawn(async move {
                for part in ids.chunks(DELETE_BATCH) {
                    this.write(partition, WriteOp::Delete(part.to_vec()))
                        .await?;
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            joined(done)?;
        }
        Ok(())
    }

    /// The ids of the chunks past the new end of `docs` (chunk 0's id, document id, new
    /// count), all of whose chunk 0 is in `partition`.
    pub(super) async fn stale_chunks(
        &self,
        partition: u32,
        docs: Vec<(u64, String, u32)>,
    ) -> Result<Vec<u64>, RetrievalError> {
        let mut stale = Vec::new();
        for batch in docs.chunks(GET_BATCH) {
            let ids = batch.iter().map(|(id, _, _)| *id).collect();
            let records = match self.read(partition, PartitionRequest::Get(ids)).await? {
                PartitionAnswer::Records(records) => records,
                other => {
                    return Err(RetrievalError::Read {
                        partition,
                        reason: format!("a get was answered with {}", answer_name(&other)),
                    });
                }
            };
            let stored: HashMap<u64, u64> = records
                .iter()
                .filter_map(|r| {
                    let meta: Map<String, Value> = serde_json::from_str(&r.metadata).ok()?;
                    let count = meta.get("_chunks")?.as_u64()?;
                    let doc = meta.get("_doc")?.as_str()?;
                    // An id of another document (a hash collision) says nothing about this one.
                    batch
                        .iter()
                        .any(|(id, d, _)| *id == r.id && d == doc)
                        .then_some((r.id, count))
                })
                .collect();
            for (id, doc, new) in batch {
                if let Some(&old) = stored.get(id) {
                    let old = u32::try_from(old).unwrap_or(u32::MAX);
                    stale.extend((*new..old).map(|i| chunk_id(doc, i)));
                }
            }
        }
        Ok(stale)
    }
}

/// Refuses a document that could not be stored as it is, naming it and what is wrong.
pub(super) fn check_document(doc: &Document, dimension: u32) -> Result<(), RetrievalError> {
    if doc.id.is_empty() {
        return Err(RetrievalError::Invalid("a document has an empty id".into()));
    }
    if let Some(key) = doc.metadata.keys().find(|k| k.starts_with('_')) {
        return Err(RetrievalError::Invalid(format!(
            "document {:?}: metadata key {key:?} starts with '_', which is reserved",
            doc.id
        )));
    }
    if let Some(vector) = &doc.vector {
        if vector.len() != dimension as usize {
            return Err(RetrievalError::Invalid(format!(
                "document {:?}: its vector has {} values; the collection's dimension is {dimension}",
                doc.id,
                vector.len()
            )));
        }
        if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
            return Err(RetrievalError::Invalid(format!(
                "document {:?}: its vector's value {i} is not a finite number",
                doc.id
            )));
        }
    }
    Ok(())
}
