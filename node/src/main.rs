//! `arbor`: one binary for nodes and for the people and scripts that talk to them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use arbor_kernels::Device;
use arbor_kernels::llama::Sampling;
use arbor_node::commands::{GatewayArgs, admin, ask, cluster, ingest, jobs};
use arbor_node::gateway::tokens::{self, Role, TokenFile};
use arbor_node::logging::{self, LogFormat};
use arbor_node::{ClusterConfig, Node, NodeId};
use arbor_proto::gateway::CreateCollectionJob;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "arbor",
    version,
    about = "Run AI workloads across a cluster of machines."
)]
struct Cli {
    /// Log line format (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start one node of the cluster and run until SIGTERM or ctrl-c (`arbor node --node ID`),
    /// or drain a node (`arbor node drain ID`, `arbor node undrain ID`).
    Node(NodeArgs),
    /// Create or update a deployment from a TOML or JSON file (through the gateway).
    Deploy {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
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
        /// Files to read (.txt, .md, .jsonl).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
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
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct NodeArgs {
    #[command(subcommand)]
    action: Option<NodeAction>,
    /// The cluster's config file.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Which node of the config this is.
    #[arg(long, required = true)]
    node: Option<NodeId>,
    /// Keep durable state here instead of the node's configured data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CollectionCommand {
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
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Delete a collection, its partition actors and their data.
    Delete {
        name: String,
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
enum NodeAction {
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
enum LocalCommand {
    /// Embed texts with all-MiniLM-L6-v2 and print {"model", "dim", "embeddings"}.
    Embed {
        /// Where scripts/fetch-models.sh put the models (default: $ARBOR_MODELS, else
        /// ~/.cache/arbor/models).
        #[arg(long)]
        models: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: Device,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Answer a prompt with SmolLM2-135M-Instruct, streamed to stdout.
    Generate {
        #[arg(long)]
        models: Option<PathBuf>,
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
        /// Print {"text", "token_ids", "finish_reason"} at the end instead of streaming.
        #[arg(long)]
        json: bool,
        prompt: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
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
}

#[derive(Subcommand)]
enum TokenCommand {
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
struct TokensFileArgs {
    /// The cluster's config file; its `[gateway] tokens_file` is used.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// The tokens file itself, instead of the one cluster.toml names (no cluster.toml needed).
    #[arg(long, conflicts_with = "config")]
    tokens_file: Option<PathBuf>,
}

impl TokensFileArgs {
    fn path(self) -> anyhow::Result<PathBuf> {
        match self.tokens_file {
            Some(path) => Ok(path),
            None => Ok(ClusterConfig::load(&self.config)
                .context("cannot find the tokens file (name it with --tokens-file instead)")?
                .tokens_file()),
        }
    }
}

fn main() -> ExitCode {
    // `arbor jobs | head` must end quietly when head stops reading, as Unix tools do, instead
    // of panicking in println! on EPIPE (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Client commands print what they found; only a node logs its work at info.
    let quiet = !matches!(cli.command, Command::Node(NodeArgs { action: None, .. }));
    logging::init(cli.log_format, quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Node(NodeArgs {
            action: Some(action),
            ..
        }) => match action {
            NodeAction::Drain { id, gateway } => cluster::drain(&gateway, id, true).await,
            NodeAction::Undrain { id, gateway } => cluster::drain(&gateway, id, false).await,
        },
        Command::Node(NodeArgs {
            action: None,
            config,
            node,
            data_dir,
        }) => {
            let node = node.context("--node is required")?;
            let config = ClusterConfig::load(&config)?;
            config.node(node)?;
            let secret = config.secret()?;
            let node = Node::start(&config, node, &secret, data_dir.as_deref()).await?;
            tokio::select! {
                signal = shutdown_signal() => signal.context("cannot wait for signals")?,
                halt = node.halted() => {
                    // Its actors are stopped; a supervisor may restart the process once the
                    // cause (a full disk, a newer version's log) is dealt with.
                    tracing::error!(node = node.id(), "stopping: {halt}");
                    anyhow::bail!("node {} stopped: {halt}", node.id());
                }
            }
            tracing::info!(node = node.id(), "shutting down");
            node.shutdown().await;
            Ok(())
        }
        Command::Status { json, gateway } => cluster::status(&gateway, json).await,
        Command::Deploy { file, gateway } => admin::deploy(&gateway, &file).await,
        Command::Undeploy { name, gateway } => admin::undeploy(&gateway, name).await,
        Command::Deployments { gateway, json } => admin::deployments(&gateway, json).await,
        Command::Call {
            deployment,
            payload,
            gateway,
        } => cluster::call(&gateway, deployment, payload).await,
        Command::Collection { command } => collection(command).await,
        Command::Collections { gateway, json } => admin::collections(&gateway, json).await,
        Command::Ingest {
            collection,
            paths,
            gateway,
        } => ingest::ingest(&gateway, collection, paths).await,
        Command::Query {
            collection,
            text,
            k,
            filter,
            json,
            gateway,
        } => ask::query(&gateway, collection, text, k, filter, json).await,
        Command::Rag {
            collection,
            question,
            k,
            max_tokens,
            gateway,
        } => ask::rag(&gateway, collection, question, k, max_tokens).await,
        Command::Embed {
            texts,
            deployment,
            gateway,
        } => ask::embed(&gateway, texts, deployment).await,
        Command::Generate {
            prompt,
            max_tokens,
            deployment,
            gateway,
        } => ask::generate(&gateway, prompt, max_tokens, deployment).await,
        Command::Jobs {
            limit,
            json,
            gateway,
        } => jobs::jobs(&gateway, limit, json).await,
        Command::Job { id, json, gateway } => jobs::job(&gateway, id, json).await,
        Command::Cancel { id, gateway } => jobs::cancel(&gateway, id).await,
        Command::Cluster { command } => cluster(command).await,
        Command::Token { command } => token(command),
        Command::Local { command } => tokio::task::spawn_blocking(move || local(command)).await?,
    }
}

fn local(command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Embed {
            models,
            device,
            texts,
        } => {
            let out = arbor_node::local::embed(models, device, &texts)?;
            println!("{}", serde_json::to_string(&out)?);
        }
        LocalCommand::Generate {
            models,
            device,
            max_tokens,
            greedy: _,
            temperature,
            top_p,
            seed,
            json,
            prompt,
        } => {
            let sampling = match temperature {
                Some(temperature) => Sampling::TopP {
                    temperature,
                    top_p,
                    seed,
                },
                None => Sampling::Greedy,
            };
            arbor_node::local::generate(models, device, &prompt, max_tokens, sampling, json)?;
        }
    }
    Ok(())
}

/// The token commands only touch the tokens file; running nodes notice the change themselves.
fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, label, file } => {
            let path = file.path()?;
            let (info, token) = TokenFile::create(&path, role, label.as_deref())?;
            // The token alone on stdout, so scripts can capture it; the rest on stderr.
            println!("{token}");
            eprintln!(
                "created token {} with role {role}{} in {}; this is the only time the token is \
                 shown (the file keeps only its digest): store it now",
                info.id,
                info.label
                    .as_deref()
                    .map_or_else(String::new, |l| format!(" ({l})")),
                path.display()
            );
        }
        TokenCommand::List { json, file } => {
            let path = file.path()?;
            let list = TokenFile::load(&path)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "file": path, "tokens": list.list() })
                );
            } else if list.is_empty() {
                println!(
                    "{} {}; create one with `arbor token create --role admin`",
                    if list.exists() {
                        "no tokens in"
                    } else {
                        "no tokens file at"
                    },
                    path.display()
                );
            } else {
                print!("{}", tokens::to_table(&list.list()));
            }
        }
        TokenCommand::Revoke { id, file } => {
            let path = file.path()?;
            let info = TokenFile::revoke(&path, &id)?;
            println!(
                "token {} ({}) revoked in {}; running nodes refuse it once they see the change",
                info.id,
                info.role,
                path.display()
            );
        }
    }
    Ok(())
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { json, gateway } => cluster::cluster_status(&gateway, json).await,
        ClusterCommand::AddNode { id, gateway } => {
            cluster::change_members(&gateway, id, true).await
        }
        ClusterCommand::RemoveNode { id, gateway } => {
            cluster::change_members(&gateway, id, false).await
        }
    }
}

async fn collection(command: CollectionCommand) -> anyhow::Result<()> {
    match command {
        CollectionCommand::Create {
            name,
            partitions,
            replicas,
            embedder,
            dim,
            metric,
            cpu,
            memory,
            gateway,
        } => {
            let job = CreateCollectionJob {
                name,
                partitions,
                replicas,
                embedder,
                dimension: dim,
                metric,
                cpu: Some(cpu.to_string()),
                memory: Some(memory.to_string()),
            };
            admin::create_collection(&gateway, job).await
        }
        CollectionCommand::Delete { name, gateway } => {
            admin::delete_collection(&gateway, name).await
        }
        CollectionCommand::PromoteStale {
            name,
            partition,
            replica,
            gateway,
        } => admin::promote_stale(&gateway, name, partition, replica).await,
    }
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
