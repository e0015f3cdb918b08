//! Queries: embed the question, ask one in-sync replica of every partition (hedged), and
//! merge their answers with the kernels' merge; RAG on top.

use super::*;
use crate::retrieval::QueryInput;

impl Coordinator {
    /// The `k` chunks closest to `text`.
    pub async fn query(
        &self,
        text: &str,
        k: u32,
        filter: Option<&MetadataFilter>,
    ) -> Result<QueryAnswer, RetrievalError> {
        self.query_ef(QueryInput::Text(text.to_owned()), k, filter, None)
            .await
    }

    /// A query by text or by vector, with `ef` candidates for the partitions' HNSW walks
    /// instead of the collection's `ef_search` (an exact collection ignores it).
    pub async fn query_ef(
        &self,
        input: QueryInput,
        k: u32,
        filter: Option<&MetadataFilter>,
        ef: Option<u32>,
    ) -> Result<QueryAnswer, RetrievalError> {
        let vector = match input {
            QueryInput::Vector(vector) => {
                check_k(k)?;
                vector
            }
            QueryInput::Text(text) => {
                if text.trim().is_empty() {
                    return Err(RetrievalError::Invalid("the query text is empty".into()));
                }
                // Before the embedding it would waste.
                check_k(k)?;
                let shape = self.shape()?;
                let mut vectors = self
                    .embed(&shape.embedder, vec![text], shape.dimension)
                    .await?;
                vectors.pop().ok_or_else(|| {
                    RetrievalError::Embed("the embedder returned no vector".into())
                })?
            }
        };
        let shape = self.shape()?;
        self.search_all(&shape, vector, k, filter, ef).await
    }

    /// Retrieves the `k` chunks closest to `question`, asks a replica of the model deployment
    /// to answer from them, and streams the answer's text to `on_text` as it is generated.
    pub async fn rag(
        &self,
        question: &str,
        k: u32,
        max_tokens: u32,
        on_text: impl FnMut(&str),
    ) -> Result<RagAnswer, RetrievalError> {
        let model = self.route.model.as_deref().ok_or_else(|| {
            RetrievalError::Invalid(format!(
                "the coordinator of {:?} has no model deployment configured (config: model)",
                self.route.collection
            ))
        })?;
        let found = self.query(question, k, None).await?;
        let spec = GenerateSpec::chat(rag_prompt(question, &found.results), max_tokens);
        let (answer, finished) = crate::stream::generate_failover(
            &self.scope,
            model,
            spec,
            on_text,
            || false,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| RetrievalError::Generate(e.to_string()))?;
        Ok(RagAnswer {
            answer,
            sources: found.results,
            missing_partitions: found.missing_partitions,
            finish_reason: finished.reason,
        })
    }

    /// The `k` chunks closest to `vector`: one replica of every partition is asked (a second
    /// one too if the first is slow), and the answers are merged.
    pub async fn query_vector(
        &self,
        vector: Vec<f32>,
        k: u32,
        filter: Option<&MetadataFilter>,
    ) -> Result<QueryAnswer, RetrievalError> {
        self.query_ef(QueryInput::Vector(vector), k, filter, None)
            .await
    }

    /// Searches every partition of `shape` for the `k` rows closest to `vector`.
    async fn search_all(
        &self,
        shape: &Shape,
        vector: Vec<f32>,
        k: u32,
        filter: Option<&MetadataFilter>,
        ef: Option<u32>,
    ) -> Result<QueryAnswer, RetrievalError> {
        let dimension = shape.dimension;
        if vector.len() != dimension as usize {
            return Err(RetrievalError::Invalid(format!(
                "the query vector has {} values; collection {:?} has dimension {dimension}",
                vector.len(),
                self.route.collection
            )));
        }
        if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
            return Err(RetrievalError::Invalid(format!(
                "the query vector's value {i} is not a finite number"
            )));
        }
        let request = PartitionRequest::search(vec![vector], k, filter, ef);
        let mut tasks = tokio::task::JoinSet::new();
        for partition in 0..shape.partitions {
            let (this, request) = (self.clone(), request.clone());
            tasks.spawn(async move { (partition, this.search(partition, request).await) });
        }
        let mut lists: Vec<Vec<Hit>> = Vec::new();
        let mut found: HashMap<u64, SearchHit> = HashMap::new();
        let mut missing = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, Some(hits))) => {
                    lists.push(
                        hits.iter()
                            .map(|h| Hit {
                                id: h.id,
                                score: h.score,
                            })
                            .collect(),
                    );
                    found.extend(hits.into_iter().map(|h| (h.id, h)));
                }
                Ok((partition, None)) => missing.push(partition),
                Err(e) => tracing::warn!("a partition search task failed: {e}"),
            }
        }
        missing.sort_unstable();
        // The kernels' merge: best first in the metric's direction, ties by id, so the answer
        // is the one a single scan over every partition would give.
        let best = merge(shape.metric, k as usize, lists.iter().map(Vec::as_slice));
        Ok(QueryAnswer {
            results: best
                .into_iter()
                .filter_map(|h| found.remove(&h.id))
                .map(hit)
                .collect(),
            missing_partitions: missing,
        })
    }

    /// Embeds `texts`, trying another embedder replica when one is overloaded or gone. The
    /// vectors must have the collection's `dimension`: an embedder deployed with another model
    /// is an error that says so, not vectors the partitions would refuse one by one.
    pub(super) async fn embed(
        &self,
        embedder: &str,
        texts: Vec<String>,
        dimension: u32,
    ) -> Result<Vec<Vec<f32>>, RetrievalError> {
        let vectors = self.embed_any(embedder, texts).await?;
        if let Some(v) = vectors.iter().find(|v| v.len() != dimension as usize) {
            return Err(RetrievalError::Embed(format!(
                "embedder deployment {embedder:?} makes vectors of {} values; the collection's \
                 dimension is {dimension}: deploy the embedder with a model of that dimension, \
                 or create the collection with dimension {}",
                v.len(),
                v.len()
            )));
        }
        Ok(vectors)
    }

    async fn embed_any(
        &self,
        embedder: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, RetrievalError> {
        let router = self.embedder(embedder);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let request = EmbedRequest {
                texts: texts.clone(),
            };
            let reply = router
                .ask(
                    |reply| ReplicaMsg::Embed(Wire::new(request.clone()), reply),
                    Duration::from_secs(30),
                )
                .await;
            let answer = match reply {
                Ok(wire) => wire
                    .into_inner()
                    .map_err(|e| RetrievalError::Embed(e.to_string()))?,
                Err(CallError::NoReplicas { deployment }) => {
                    return Err(RetrievalError::EmbedderUnavailable(format!(
                        "no replica of embedder deployment {deployment:?} is reachable"
                    )));
                }
                Err(e) => return Err(RetrievalError::EmbedderUnavailable(e.to_string())),
            };
            match answer {
                Ok(result) => return Ok(result.vectors),
                Err(EmbedFailure::Overloaded { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e @ EmbedFailure::Overloaded { .. }) => {
                    return Err(RetrievalError::EmbedderUnavailable(e.to_string()));
                }
                Err(EmbedFailure::Invalid(why)) => {
                    return Err(RetrievalError::Invalid(format!(
                        "the embedder refused the texts: {why}"
                    )));
                }
                Err(e) => return Err(RetrievalError::Embed(e.to_string())),
            }
        }
    }
}

pub(super) fn hit(h: SearchHit) -> QueryHit {
    let mut meta: Map<String, Value> = serde_json::from_str(&h.metadata).unwrap_or_default();
    let take_str = |m: &mut Map<String, Value>, k: &str| match m.remove(k) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let doc_id = take_str(&mut meta, "_doc").unwrap_or_default();
    let text = take_str(&mut meta, "_text").unwrap_or_default();
    let title = take_str(&mut meta, "_title");
    let chunk_id = meta.remove("_chunk").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    meta.remove("_chunks");
    QueryHit {
        doc_id,
        chunk_id,
        score: h.score,
        text,
        title,
        metadata: meta,
    }
}

/// A query's `k` is in `1..=MAX_K`.
fn check_k(k: u32) -> Result<(), RetrievalError> {
    if k == 0 || k > arbor_proto::MAX_K {
        return Err(RetrievalError::Invalid(format!(
            "k = {k} is not in 1..={}",
            arbor_proto::MAX_K
        )));
    }
    Ok(())
}
