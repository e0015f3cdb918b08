//! Every command and flag of `arbor`, as clap parses them. `main.rs` dispatches on them; the
//! work is in `commands/`.

use std::path::PathBuf;

use anyhow::Context;
use arbor_kernels::Device;
use arbor_node::auth::Role;
use arbor_node::{ClusterConfig, NodeId};
use clap::{Parser, Subcommand};

use crate::commands::TOKEN_ENV;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormatArg {
    #[default]
    Text,
    Json,
}

impl From<LogFormatArg> for arbor_node::logging::LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => arbor_node::logging::LogFormat::Text,
            LogFormatArg::Json => arbor_node::logging::LogFormat::Json,
        }
    }
}

/// How to reach the gateway: every command that talks to it takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The cluster's config file; its nodes' gateway addresses are tried in order.
    #[arg(long, default_value = "cluster.toml")]
    pub config: PathBuf,
    /// The gateway token (make one with `arbor token create --role ROLE`). Prefer setting
    /// ARBOR_TOKEN: a flag's value shows in the process list to every local user.
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Parser)]
#[command(
    name = "arbor",
    version,
    about = "Run AI workloads across a cluster of machines."
)]
pub struct Cli {
    /// Log line format (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,
    #[command(subcommand)]
    pub command: Command,
}

/// `--wait` and how long to wait.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Show progress until every replica runs the new revision (exit 0), or one fails or the
    /// timeout passes (exit 1, saying why).
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start one node of the cluster and run until SIGTERM or ctrl-c (`arbor node --node ID`),
    /// or drain a node (`arbor node drain ID`, `arbor node undrain ID`).
    Node(NodeArgs),
    /// Create or update a deployment from a TOML or JSON file (through the gateway).
    Deploy {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Set a deployment's replica count: replicas are added or removed, none of the others
    /// restarts. (An autoscaled deployment's count follows its load instead.)
    Scale {
        name: String,
        replicas: u32,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Return a deployment to its previous revision, with a rolling update (again: back to
    /// the one rolled back from).
    Rollback {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Delete a deployment and stop its replicas.
    Undeploy {
        name: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Show each deployment: desired and running replicas, where each runs, why any waits.
    Deployments {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks against a running cluster: `arbor bench run`, `arbor bench compare`.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Vector collections: create or delete one.
    Collection {
        #[command(subcommand)]
        command: CollectionCommand,
    },
    /// List the collections and how many partition replicas run.
    Collections {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[arg(long)]
        json: bool,
    },
    /// Add documents from .txt, .md and .jsonl files to a collection.
    ///
    /// Each .txt or .md file is one document (id: the file name, title: the name without
    /// its extension); each line of a .jsonl file is one {"id", "text", "title"?,
    /// "metadata"?}. Directories are refused (pass dir/*.md), and so are other extensions
    /// and ids that two documents share; any such problem is reported before anything is
    /// sent. Documents go in batches of at most 64 documents and about 1 MiB, one ingest job
    /// each, two in flight; ctrl-c cancels the batches in flight.
    Ingest {
        /// The collection.
        collection: String,
        /// Files to read (.txt, .md, .jsonl), or one .npy file of vectors (a 2-D float32
        /// array, a row each) for a bulk load.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Bulk load: a .npy file of the rows' ids (1-D, 64-bit integers; default: the rows'
        /// positions in the file).
        #[arg(long)]
        ids: Option<PathBuf>,
        /// Bulk load: import jobs in flight, each on a connection of its own.
        #[arg(long, default_value_t = crate::commands::bulk::DEFAULT_IN_FLIGHT)]
        in_flight: usize,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Search a collection for the chunks nearest to TEXT.
    Query {
        collection: String,
        text: String,
        /// How many results.
        #[arg(long, default_value_t = 5)]
        k: u32,
        /// Only chunks whose metadata matches this filter (JSON): '{"op":"equal","key":"lang",
        /// "value":"en"}'; ops: equal (key, value), in (key, values), range (key, gte, gt,
        /// lte, lt), and (filters).
        #[arg(long)]
        filter: Option<String>,
        /// For a collection with an HNSW index: candidates each partition's walk keeps
        /// (1..=4096), instead of the collection's ef_search; more is slower and closer to
        /// the exact answer.
        #[arg(long)]
        ef: Option<u32>,
        /// Print the result data as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Answer a question from a collection's documents, streamed, then list the sources.
    Rag {
        collection: String,
        question: String,
        /// How many chunks to give the model.
        #[arg(long, default_value_t = 3)]
        k: u32,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Embed texts with the cluster's embedder and print {"model", "dim", "vectors"}.
    Embed {
        #[arg(required = true)]
        texts: Vec<String>,
        /// The embedder deployment (default: the only one there is).
        #[arg(long)]
        deployment: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Generate text from a prompt with the cluster's model, streamed.
    Generate {
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        /// The model deployment (default: the only one there is).
        #[arg(long)]
        deployment: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// List the most recent jobs, newest first.
    Jobs {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Show one job: its state, progress, node and result.
    Job {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Send one request to a deployment and print the reply.
    Call {
        deployment: String,
        /// The request, as text (echo replies with it; spin takes {"ms": N}).
        payload: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print the cluster's membership as a reachable node sees it.
    Status {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Run the models on this machine, without a cluster.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// The control plane: its status and its members.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Gateway tokens: create, list or revoke the tokens clients authenticate with.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Certificates: the cluster CA and one certificate per node, in cluster.toml's [tls] dir.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Make what is missing in [tls] dir: the CA (ca.pem, ca.key), then node-N.pem and
    /// node-N.key for every node of cluster.toml. Replaces nothing; run it again after adding a
    /// node, or after deleting files to rotate them.
    Init {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
    },
    /// Make one node's certificate and key (it must be in cluster.toml), signed by the CA.
    Issue {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        node: NodeId,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: Option<NodeAction>,
    /// The cluster's config file.
    #[arg(long, default_value = "cluster.toml")]
    pub config: PathBuf,
    /// Which node of the config this is.
    #[arg(long, required = true)]
    pub node: Option<NodeId>,
    /// Keep durable state here instead of the node's configured data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// What `arbor bench run` and `arbor bench local` share.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchOptions {
    /// Where report.json and report.html go (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Connections, each a closed loop (or its share of --rate).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Jobs each connection keeps submitted (closed loop).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Jobs per second over all connections, sent on schedule whatever the answers (open
    /// loop; latency counts from when each job was due).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long each scenario is measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// How long each scenario runs before it is measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: std::time::Duration,
    /// How long the load takes to rise to its full level, before the warm-up: connections
    /// start one after another, or the --rate rises from zero. Not measured.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: std::time::Duration,
    /// Rows loaded before query-vector is measured.
    #[arg(long, default_value_t = 10_000)]
    pub rows: u64,
    /// Dimension of the vector scenarios' rows.
    #[arg(long, default_value_t = 128)]
    pub dimension: u32,
    /// Results per query-vector query.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// A metadata filter for query-vector's queries, as `arbor query --filter` takes it. Row
    /// i has `bucket` = i % 10 and `even` = (i is even): '{"op":"equal","key":"bucket",
    /// "value":3}' keeps a tenth of the rows.
    #[arg(long, value_parser = parse_filter)]
    pub filter: Option<serde_json::Value>,
    /// The index of the collections the vector scenarios create (--index hnsw, with --m,
    /// --ef-construction, --ef-search).
    #[command(flatten)]
    pub index: IndexArgs,
    /// query-vector on an HNSW collection: candidates each walk keeps, instead of
    /// --ef-search.
    #[arg(long)]
    pub ef: Option<u32>,
    /// Partitions of the collections ingest-vectors and query-vector create (default: one
    /// per node).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Replicas of each of their partitions.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// query-vector on this existing collection (loaded beforehand, e.g. by `arbor ingest
    /// NAME FILE.npy`) instead of one it creates and loads: the queries are random unit
    /// vectors of its dimension, and nothing is removed afterwards. --rows, --dimension and
    /// the index flags are then the collection's own.
    #[arg(long, value_name = "NAME")]
    pub collection: Option<String>,
    /// Text documents loaded before query-text and rag are measured (each is embedded).
    #[arg(long, default_value_t = 256)]
    pub documents: u64,
}

/// A `--filter`: JSON, an object (the gateway checks the rest).
fn parse_filter(text: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(
            "a filter is a JSON object, e.g. {\"op\":\"equal\",\"key\":\"bucket\",\"value\":3}"
                .into(),
        ),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Run scenarios against the cluster of --config, through its gateway, and write
    /// DIR/report.json.
    Run {
        #[arg(required = true, value_enum)]
        scenarios: Vec<crate::commands::bench::Scenario>,
        #[command(flatten)]
        options: BenchOptions,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Start a local cluster of --nodes `arbor node` processes (TLS, a secret and a token as
    /// a user's would have) in DIR/cluster, run the scenarios against it, stop it.
    Local {
        #[arg(required = true, value_enum)]
        scenarios: Vec<crate::commands::bench::Scenario>,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Keep the cluster's data (its logs are always kept).
        #[arg(long)]
        keep: bool,
        /// Deploy this file (as `arbor deploy -f FILE --wait`) before the scenarios: e.g. an
        /// embedder and a model for embed, generate, ingest-text, query-text and rag. Repeat
        /// for several.
        #[arg(long = "deploy", value_name = "FILE")]
        deploy: Vec<PathBuf>,
        #[command(flatten)]
        options: BenchOptions,
    },
    /// Compare two reports, figure by figure, marking what got worse beyond --threshold; or a
    /// first report with several others (arbor and its peers of benches/peers/), each against
    /// the first.
    Compare {
        /// OLD NEW, or a first report and the others to put beside it.
        #[arg(required = true, num_args = 2..)]
        reports: Vec<PathBuf>,
        /// Also write a page with all the reports side by side (figures, ratios, latency
        /// distributions).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Percent by which a figure may get worse before it is a regression.
        #[arg(long, default_value_t = 10.0)]
        threshold: f64,
        /// Exit with status 1 when there is a regression.
        #[arg(long)]
        fail_on_regression: bool,
    },
}

/// How a collection's partitions search.
#[derive(clap::Args, Debug, Clone)]
pub struct IndexArgs {
    /// exact: every row scored (exact, linear in the rows); hnsw: an HNSW graph per partition
    /// (approximate, sublinear).
    #[arg(long, default_value = "exact", value_parser = ["exact", "hnsw"])]
    pub index: String,
    /// HNSW: links per node, twice this on the bottom layer (default 16).
    #[arg(long)]
    pub m: Option<u32>,
    /// HNSW: candidates kept while inserting; higher builds a better graph, slower (default
    /// 128).
    #[arg(long)]
    pub ef_construction: Option<u32>,
    /// HNSW: candidates kept while searching, at least k; higher is more accurate, slower
    /// (default 64).
    #[arg(long)]
    pub ef_search: Option<u32>,
    /// none: vectors in memory as f32; int8: one byte per component (a quarter of the
    /// memory), the best candidates rescored on the f32 rows read from disk.
    #[arg(long, default_value = "none", value_parser = ["none", "int8"])]
    pub quantization: String,
}

impl IndexArgs {
    /// The index the flags describe; HNSW settings without `--index hnsw` are refused.
    pub fn spec(&self) -> Result<arbor_proto::IndexSpec, String> {
        let given = self.m.is_some() || self.ef_construction.is_some() || self.ef_search.is_some();
        if self.index != "hnsw" {
            if given {
                return Err("--m, --ef-construction and --ef-search are HNSW settings: \
                            add --index hnsw"
                    .into());
            }
            return Ok(arbor_proto::IndexSpec::Exact);
        }
        let d = arbor_proto::HnswSpec::default();
        let spec = arbor_proto::IndexSpec::Hnsw(arbor_proto::HnswSpec {
            m: self.m.unwrap_or(d.m),
            ef_construction: self.ef_construction.unwrap_or(d.ef_construction),
            ef_search: self.ef_search.unwrap_or(d.ef_search),
        });
        spec.validate().map_err(|e| e.0)?;
        Ok(spec)
    }

    /// How the partitions hold vectors, as `--quantization` says.
    pub fn quantization(&self) -> Result<arbor_proto::Quantization, String> {
        self.quantization
            .parse()
            .map_err(|e: arbor_proto::index::BadIndex| e.0)
    }
}

#[derive(Subcommand)]
pub enum CollectionCommand {
    /// Create a collection: PARTITIONS shards, each on REPLICAS distinct nodes, placed all
    /// together or not at all.
    Create {
        name: String,
        #[arg(long)]
        partitions: u32,
        #[arg(long)]
        replicas: u32,
        /// The embedder deployment that embeds this collection's text.
        #[arg(long)]
        embedder: String,
        /// Vector dimension (all-MiniLM-L6-v2: 384).
        #[arg(long, default_value_t = 384)]
        dim: u32,
        #[arg(long, default_value = "cosine", value_parser = ["cosine", "dot", "l2"])]
        metric: String,
        /// CPU per partition replica.
        #[arg(long, default_value = "250m")]
        cpu: arbor_scheduler::resources::Millicores,
        /// Memory per partition replica (1M x 384 vectors take about 1.6GiB).
        #[arg(long, default_value = "512MiB")]
        memory: arbor_scheduler::resources::Bytes,
        /// Replicas of the coordinator the collection deploys for itself (NAME-coordinator,
        /// which ingest, query and rag go through); 0 deploys none, for a coordinator of your
        /// own. Default: 2, or 1 on a one-node cluster.
        #[arg(long)]
        coordinators: Option<u32>,
        /// CPU per coordinator replica (default: the kind's).
        #[arg(long)]
        coordinator_cpu: Option<arbor_scheduler::resources::Millicores>,
        /// Memory per coordinator replica (default: the kind's).
        #[arg(long)]
        coordinator_memory: Option<arbor_scheduler::resources::Bytes>,
        /// The model deployment that answers `arbor rag` for this collection (default: the
        /// only one there is).
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        index: IndexArgs,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Delete a collection, its partition actors and their data.
    Delete {
        name: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Write a consistent snapshot of the collection (its definition, and each partition's
    /// rows as its primary held them at one sequence number) to FILE, sealed with a SHA-256
    /// checksum.
    Snapshot {
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Create a collection from a snapshot (in this cluster or another) and load its rows.
    /// The file's checksum is checked first: a corrupt or truncated file changes nothing.
    Restore {
        file: PathBuf,
        /// The new collection's name (default: the snapshot's).
        #[arg(long = "as")]
        name: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// When every in-sync replica of a partition is gone for good: make another replica its
    /// only in-sync replica and primary, accepting the loss of what only the lost replicas
    /// held (printed). Refused while an in-sync replica's node is up.
    PromoteStale {
        name: String,
        partition: u32,
        /// The replica to promote (see `arbor collections` and `arbor deployments`).
        #[arg(long)]
        replica: u32,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Subcommand)]
pub enum NodeAction {
    /// Move a node's actors elsewhere (at most max_unavailable per deployment at a time) and
    /// keep new ones away.
    Drain {
        id: NodeId,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Let a drained node take actors again.
    Undrain {
        id: NodeId,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Embed texts and print {"model", "dim", "embeddings"} (all-MiniLM-L6-v2 unless --model).
    Embed {
        /// Where scripts/fetch-models.sh put the models (default: $ARBOR_MODELS, else
        /// ~/.cache/arbor/models).
        #[arg(long)]
        models: Option<PathBuf>,
        /// A BERT-family sentence-embedding model: its folder, by name under the models dir
        /// or by path (default: all-MiniLM-L6-v2).
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Texts per forward pass.
        #[arg(long, default_value_t = arbor_kernels::embed::DEFAULT_BATCH_SIZE)]
        batch_size: usize,
        /// Read the texts from this file, one per line, after those given as arguments.
        #[arg(long)]
        texts_file: Option<PathBuf>,
        /// Add {"timings": {"load_ms", "embed_ms"}} to the output.
        #[arg(long)]
        timings: bool,
        #[arg(required_unless_present = "texts_file")]
        texts: Vec<String>,
    },
    /// Answer prompts with a Llama-family GGUF model (SmolLM2-135M-Instruct unless --model),
    /// streamed to stdout; several prompts are generated together, as one batch.
    Generate {
        #[arg(long)]
        models: Option<PathBuf>,
        /// The GGUF file: by name under the models dir (".gguf" may be left out) or by path.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value = "cpu")]
        device: Device,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Always pick the most likely token (the default).
        #[arg(long, conflicts_with_all = ["temperature", "top_p", "seed"])]
        greedy: bool,
        /// Sample with this temperature (with --top-p and --seed).
        #[arg(long)]
        temperature: Option<f32>,
        #[arg(long, default_value_t = 0.9)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Feed the prompt as it is, without the model's chat template.
        #[arg(long)]
        raw: bool,
        /// Print {"text", "token_ids", "finish_reason"} per prompt, one line each, at the
        /// end instead of streaming.
        #[arg(long)]
        json: bool,
        /// With --json: add {"timings": {"load_ms", "prompt_tokens", "first_token_ms",
        /// "total_ms"}} (from the start of generation to the prompt's first and last token).
        #[arg(long, requires = "json")]
        timings: bool,
        #[arg(required = true)]
        prompts: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Print the leader, the term, and each member's commit and applied index.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Add a node of cluster.toml to the control plane: it catches up as a learner, then votes.
    AddNode {
        id: NodeId,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Remove a node from the control plane.
    RemoveNode {
        id: NodeId,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Write the control plane's definitions (deployments and collections, not the
    /// collections' rows: see `arbor collection snapshot`) to FILE, sealed with a checksum.
    Backup {
        #[arg(long)]
        out: PathBuf,
        /// Also save the tokens file (ids, roles and digests; never a secret).
        #[arg(long)]
        include_tokens: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Make a backup's deployments and collections in this cluster; refused whole when one
    /// of their names is taken, or the file is corrupt.
    Restore {
        file: PathBuf,
        /// Also write the backup's tokens file where cluster.toml names it (it must not
        /// exist yet).
        #[arg(long)]
        tokens: bool,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Add a token with ROLE to the tokens file (creating it) and print the token, once, on
    /// stdout: `TOKEN=$(arbor token create --role admin)`.
    Create {
        /// reader (status), user (also ingest, query, rag, embed, generate) or admin (also
        /// deploy, undeploy, collections, cluster changes).
        #[arg(long)]
        role: Role,
        /// Free text to tell tokens apart, e.g. who holds it.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        file: TokensFileArgs,
    },
    /// List the tokens: id, role, when created, label (never secrets or digests).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        file: TokensFileArgs,
    },
    /// Remove a token; running nodes refuse it from then on, on open connections too.
    Revoke {
        /// The token's id, as `arbor token list` shows it.
        id: String,
        #[command(flatten)]
        file: TokensFileArgs,
    },
}

/// Which tokens file a `token` command works on.
#[derive(clap::Args)]
pub struct TokensFileArgs {
    /// The cluster's config file; its `[gateway] tokens_file` is used.
    #[arg(long, default_value = "cluster.toml")]
    pub config: PathBuf,
    /// The tokens file itself, instead of the one cluster.toml names (no cluster.toml needed).
    #[arg(long, conflicts_with = "config")]
    pub tokens_file: Option<PathBuf>,
}

impl TokensFileArgs {
    pub fn path(self) -> anyhow::Result<PathBuf> {
        match self.tokens_file {
            Some(path) => Ok(path),
            None => Ok(ClusterConfig::load(&self.config)
                .context("cannot find the tokens file (name it with --tokens-file instead)")?
                .tokens_file()),
        }
    }
}
