//! Asks a collection a question through any node's gateway and prints the hits.
//!
//! ```sh
//! ARBOR_TOKEN=... ARBOR_CA=.arbor/tls/ca.pem cargo run -p arbor-client --example query -- \
//!     127.0.0.1:7301,127.0.0.1:7302 docs "how does raft elect a leader?"
//! ```
//!
//! The addresses are tried in order until one gateway accepts the token; the token needs the
//! `user` role (`arbor token create --role user`). Nodes are verified against the cluster's CA
//! (`ARBOR_CA`, the `ca.pem` of cluster.toml's `[tls] dir`).

use std::net::SocketAddr;
use std::process::ExitCode;

use arbor_client::{DEFAULT_PER_NODE_TIMEOUT, GatewayClient, Trust};
use arbor_proto::gateway::{JobSpec, QueryJob};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addrs, collection, question] = args.as_slice() else {
        return Err(
            "usage: query ADDR[,ADDR...] COLLECTION QUESTION (token in ARBOR_TOKEN)".into(),
        );
    };
    let addrs = addrs
        .split(',')
        .map(|a| a.trim().parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a gateway address in {addrs:?}: {e}"))?;
    let token = std::env::var("ARBOR_TOKEN")
        .map_err(|_| "set ARBOR_TOKEN (create one with `arbor token create --role user`)")?;

    let ca = std::env::var_os("ARBOR_CA").ok_or(
        "set ARBOR_CA to the cluster's CA certificate (ca.pem in cluster.toml's [tls] dir)",
    )?;
    let trust = Trust::ca(std::path::Path::new(&ca))?;
    let mut client =
        GatewayClient::connect(&addrs, &trust, &token, DEFAULT_PER_NODE_TIMEOUT).await?;
    let job = JobSpec::Query(QueryJob {
        collection: collection.clone(),
        text: Some(question.clone()),
        vector: None,
        k: 5,
        filter: None,
        ef: None,
    });
    let answer = client.run(job, |_| {}).await?.into_data()?;
    for hit in answer["results"].as_array().into_iter().flatten() {
        println!(
            "{:.3}  {}  {}",
            hit["score"].as_f64().unwrap_or_default(),
            hit["doc_id"].as_str().unwrap_or_default(),
            hit["text"].as_str().unwrap_or_default().replace('\n', " ")
        );
    }
    if let Some(missing) = answer["missing_partitions"]
        .as_array()
        .filter(|m| !m.is_empty())
    {
        println!("(partitions {missing:?} did not answer: these results may be incomplete)");
    }
    client.close().await;
    Ok(())
}
