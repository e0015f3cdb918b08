//! The scenarios that go through the cluster's embedder (and model): `ingest-text`,
//! `query-text` and `rag`, in a collection of a partition per node that the run creates with
//! the cluster's embedder deployment (and its model, for `rag`) and deletes afterwards.

use std::sync::Arc;

use anyhow::{Context, bail};
use arbor_client::GatewayClient;
use arbor_proto::gateway::{
    CreateCollectionJob, Document, EmbedJob, IngestJob, JobSpec, QueryJob, RagJob,
};
use arbor_proto::results::DeploymentsResult;

use super::{Created, Prepared, Scenario, parse_data, run_job};

/// Documents per `ingest` job.
const DOCUMENTS_PER_JOB: u64 = 8;

/// Words the documents are made of: enough variety for the embedder to tell them apart.
const WORDS: &[&str] = &[
    "raft",
    "leader",
    "replica",
    "partition",
    "vector",
    "query",
    "embedding",
    "cluster",
    "node",
    "failover",
    "snapshot",
    "log",
    "commit",
    "quorum",
    "shard",
    "index",
    "model",
    "token",
    "latency",
    "throughput",
];

/// Document `i`: a few sentences of the words above, the same for the same `i`.
pub fn document(i: u64) -> Document {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut words = Vec::with_capacity(40);
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words.push(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    Document {
        id: format!("t{i}"),
        text: format!("Document {i}. {}.", words.join(" ")),
        title: None,
        metadata: serde_json::Map::new(),
        vector: None,
    }
}

/// The only deployment of `kind` with a replica running, or why there is none.
async fn only(client: &mut GatewayClient, kind: &str, scenario: &str) -> anyhow::Result<String> {
    let data = run_job(client, JobSpec::Deployments, "deployments").await?;
    let r: DeploymentsResult = parse_data(data, "deployments")?;
    let found: Vec<&str> = r
        .deployments
        .iter()
        .filter(|d| d.kind == kind && d.running > 0)
        .map(|d| d.name.as_str())
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => {
            bail!("{scenario} needs a running {kind} deployment; deploy one (examples/{kind}.toml)")
        }
        many => bail!("{scenario} needs one {kind} deployment, and there are {many:?}"),
    }
}

/// Creates the collection and loads `documents` documents (for `ingest-text`, none: its jobs
/// are the load), then says what each job of the scenario is.
pub async fn prepare(
    client: &mut GatewayClient,
    scenario: Scenario,
    name: String,
    nodes: usize,
    documents: u64,
) -> anyhow::Result<Prepared> {
    let embedder = only(client, "embedder", scenario.name()).await?;
    let model = match scenario {
        Scenario::Rag => Some(only(client, "model", "rag").await?),
        _ => None,
    };
    // The collection takes the embedder's dimension, whatever its model.
    let probe = JobSpec::Embed(EmbedJob {
        texts: vec!["dimension".into()],
        deployment: Some(embedder.clone()),
    });
    let data = run_job(client, probe, "embed").await?;
    let dimension = data["dim"]
        .as_u64()
        .and_then(|d| u32::try_from(d).ok())
        .context("the embedder's answer has no dimension")?;
    let create = CreateCollectionJob {
        name: name.clone(),
        partitions: nodes.max(1) as u32,
        replicas: 1,
        embedder,
        dimension,
        metric: "cosine".into(),
        cpu: Some("100m".into()),
        memory: Some("256MiB".into()),
        coordinators: None,
        coordinator_cpu: None,
        coordinator_memory: None,
        model,
        index: None,
        quantization: None,
    };
    run_job(
        client,
        JobSpec::CreateCollection(create),
        "create_collection",
    )
    .await?;
    let created = Created::default().collection(&name);
    let ingest = {
        let name = name.clone();
        move |n: u64| {
            JobSpec::Ingest(IngestJob {
                collection: name.clone(),
                documents: (0..DOCUMENTS_PER_JOB)
                    .map(|i| document(n * DOCUMENTS_PER_JOB + i))
                    .collect(),
            })
        }
    };
    let first = documents.div_ceil(DOCUMENTS_PER_JOB).max(1);
    super::first_write(client, ingest(0)).await?;
    for n in 1..first {
        run_job(client, ingest(n), "ingest").await?;
    }
    let job: Arc<super::load::Jobs> = match scenario {
        // Its own jobs after the first ones, so that every job writes new documents.
        Scenario::IngestText => Arc::new(move |n| ingest(n + first)),
        Scenario::QueryText => Arc::new(move |n| {
            JobSpec::Query(QueryJob {
                collection: name.clone(),
                text: Some(question(n)),
                vector: None,
                k: 10,
                filter: None,
                ef: None,
            })
        }),
        _ => Arc::new(move |n| {
            JobSpec::Rag(RagJob {
                collection: name.clone(),
                question: question(n),
                k: 3,
                max_tokens: 16,
            })
        }),
    };
    Ok(Prepared {
        job,
        record: false,
        created,
        parameters: None,
    })
}

/// Question `n`.
fn question(n: u64) -> String {
    let w = |i: u64| WORDS[((n + i) % WORDS.len() as u64) as usize];
    format!("How does the {} handle a {} during {}?", w(0), w(7), w(13))
}
