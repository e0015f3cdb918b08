//! `arbor`: one binary for nodes and for the people and scripts that talk to them. This file
//! only dispatches: the flags are in `flags.rs`, the work in `commands/` (one file per group)
//! and, for `arbor node`, in the `arbor-node` daemon.

mod commands;
mod flags;

use std::process::ExitCode;

use anyhow::Context;
use arbor_node::logging;
use arbor_node::{ClusterConfig, Node};
use arbor_proto::gateway::CreateCollectionJob;
use clap::Parser;

use commands::{admin, ask, bulk, cluster, ingest, jobs, snapshot};
use flags::{BenchCommand, Cli, ClusterCommand, CollectionCommand, Command, NodeAction, NodeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let node = matches!(cli.command, Command::Node(NodeArgs { action: None, .. }));
    // `arbor jobs | head` must end quietly when head stops reading, as Unix tools do, instead
    // of panicking in println! on EPIPE (Rust ignores SIGPIPE by default). Never in a node: a
    // write to a peer that went away (a TLS alert to a killed node) would kill it with SIGPIPE.
    #[cfg(unix)]
    if !node {
        // SAFETY: called before the runtime starts, so before any thread of ours exists;
        // SIG_DFL is always valid.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Client commands print what they found; only a node logs its work at info.
    let quiet = !node;
    logging::init(cli.log_format.into(), quiet);
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
            // Listened for before the node starts: a SIGTERM while it starts stops it cleanly
            // once started, instead of killing it half-way.
            let shutdown = shutdown_signals().context("cannot listen for signals")?;
            let node = Node::start(&config, node, &secret, data_dir.as_deref()).await?;
            tokio::select! {
                () = shutdown => {}
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
        Command::Deploy {
            file,
            wait,
            gateway,
        } => admin::deploy(&gateway, &file, wait).await,
        Command::Scale {
            name,
            replicas,
            wait,
            gateway,
        } => admin::scale(&gateway, name, replicas, wait).await,
        Command::Rollback {
            name,
            wait,
            gateway,
        } => admin::rollback(&gateway, name, wait).await,
        Command::Undeploy { name, gateway } => admin::undeploy(&gateway, name).await,
        Command::Deployments { gateway, json } => admin::deployments(&gateway, json).await,
        Command::Call {
            deployment,
            payload,
            gateway,
        } => cluster::call(&gateway, deployment, payload).await,
        Command::Collection { command } => collection(command).await,
        Command::Bench { command } => bench(command).await,
        Command::Collections { gateway, json } => admin::collections(&gateway, json).await,
        Command::Ingest {
            collection,
            paths,
            ids,
            in_flight,
            gateway,
        } => match paths.as_slice() {
            [one] if one.extension().is_some_and(|e| e == "npy") => {
                bulk::load(&gateway, collection, one, ids.as_deref(), in_flight).await
            }
            _ if paths
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "npy")) =>
            {
                anyhow::bail!(
                    "a bulk load takes one .npy file of vectors (and --ids for their ids); \
                     load other files with another `arbor ingest`"
                )
            }
            _ if ids.is_some() => {
                anyhow::bail!("--ids goes with a .npy file of vectors (a bulk load)")
            }
            _ => ingest::ingest(&gateway, collection, paths).await,
        },
        Command::Query {
            collection,
            text,
            k,
            filter,
            ef,
            json,
            gateway,
        } => ask::query(&gateway, collection, text, k, filter, ef, json).await,
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
        Command::Token { command } => commands::token::run(command),
        Command::Cert { command } => commands::cert::run(command),
        Command::Local { command } => {
            tokio::task::spawn_blocking(move || commands::local::run(command)).await?
        }
    }
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
        ClusterCommand::Backup {
            out,
            include_tokens,
            gateway,
        } => snapshot::backup(&gateway, &out, include_tokens).await,
        ClusterCommand::Restore {
            file,
            tokens,
            gateway,
        } => snapshot::restore_cluster(&gateway, &file, tokens).await,
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
            coordinators,
            coordinator_cpu,
            coordinator_memory,
            model,
            index,
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
                coordinators,
                coordinator_cpu: coordinator_cpu.map(|c| c.to_string()),
                coordinator_memory: coordinator_memory.map(|m| m.to_string()),
                model,
                index: Some(index.spec().map_err(anyhow::Error::msg)?),
                quantization: Some(index.quantization().map_err(anyhow::Error::msg)?),
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
        CollectionCommand::Snapshot { name, out, gateway } => {
            snapshot::snapshot(&gateway, &name, &out).await
        }
        CollectionCommand::Restore {
            file,
            name,
            gateway,
        } => snapshot::restore(&gateway, &file, name).await,
    }
}

/// Resolves on ctrl-c or SIGTERM.
/// Resolves at SIGTERM or ctrl-c (SIGINT), which are caught from the call on.
fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    use commands::bench::{self, Vectors, load::Shape};
    let parts = |o: flags::BenchOptions| -> anyhow::Result<(Shape, Vectors, std::path::PathBuf)> {
        if o.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            anyhow::bail!("--rate must be a number of jobs per second above 0");
        }
        let shape = Shape {
            connections: o.connections,
            in_flight: o.in_flight,
            rate: o.rate,
            ramp: o.ramp,
            warmup: o.warmup,
            duration: o.duration,
        };
        let vectors = Vectors {
            rows: o.rows,
            dimension: o.dimension,
            k: o.k,
            filter: o.filter,
            index: o.index.spec().map_err(anyhow::Error::msg)?,
            quantization: o.index.quantization().map_err(anyhow::Error::msg)?,
            ef: o.ef,
            partitions: o.partitions,
            replicas: o.replicas,
            collection: o.collection,
            documents: o.documents,
        };
        Ok((shape, vectors, o.out))
    };
    match command {
        BenchCommand::Run {
            scenarios,
            options,
            gateway,
        } => {
            let (shape, vectors, out) = parts(options)?;
            bench::run(&gateway, &scenarios, shape, vectors, &out, None).await
        }
        BenchCommand::Local {
            scenarios,
            nodes,
            keep,
            deploy,
            options,
        } => {
            let (shape, vectors, out) = parts(options)?;
            let local = bench::LocalArgs {
                nodes,
                keep,
                deploy,
            };
            bench::local(local, &scenarios, shape, vectors, &out).await
        }
        BenchCommand::Compare {
            reports,
            html,
            threshold,
            fail_on_regression,
        } => bench::compare_files(&reports, threshold, fail_on_regression, html.as_deref()),
    }
}
