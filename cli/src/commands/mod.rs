//! The `arbor` commands, one file per group. Those that talk to a cluster go through a
//! gateway (see `docs/protocol.md`): each connects to the first node of cluster.toml whose
//! gateway answers, submits one job (ingest: many), and prints what comes back. `local` runs
//! the models on this machine; `token` edits the tokens file on a node's machine.

pub mod admin;
pub mod ask;
pub mod bench;
pub mod bulk;
pub mod cert;
pub mod cluster;
pub mod ingest;
pub mod jobs;
pub mod local;
pub mod npy;
pub mod snapshot;
pub mod status;
pub mod token;

use std::time::Duration;

use anyhow::anyhow;
use serde::de::DeserializeOwned;
use serde_json::Value;

use arbor_node::ClusterConfig;

pub use crate::flags::GatewayArgs;
use arbor_client::{ClientError, DEFAULT_PER_NODE_TIMEOUT, GatewayClient, JobWatch, Trust};
use arbor_proto::JobId;
use arbor_proto::gateway::{JobSpec, ServerMsg};

/// The environment variable that holds the gateway token when `--token` is absent.
pub const TOKEN_ENV: &str = "ARBOR_TOKEN";

const MISSING_TOKEN: &str = "no gateway token: pass --token TOKEN or set ARBOR_TOKEN.\nCreate one with `TOKEN=$(arbor token create --role admin)` (role user suffices for ingest, query, rag, embed and generate; reader for listings and job status). It goes into the tokens file that `[gateway] tokens_file` in cluster.toml names (tokens.toml beside it by default); the nodes must be given that file.";

impl GatewayArgs {
    /// The token, or an error that says how to make one.
    pub fn token(&self) -> anyhow::Result<&str> {
        self.token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!(MISSING_TOKEN))
    }

    /// Connects to the first node whose gateway accepts the token.
    pub async fn connect(&self) -> anyhow::Result<GatewayClient> {
        let token = self.token()?;
        let config = ClusterConfig::load(&self.config)?;
        let addrs: Vec<_> = config.nodes.iter().map(|n| n.gateway).collect();
        Ok(GatewayClient::connect_from(
            &addrs,
            &trust(&config)?,
            token,
            DEFAULT_PER_NODE_TIMEOUT,
            config.path.display().to_string(),
        )
        .await?)
    }
}

/// How the gateways of `config`'s cluster are trusted: its CA (`[tls] dir`/ca.pem), or plain
/// `ws://` for an insecure loopback cluster.
pub fn trust(config: &ClusterConfig) -> anyhow::Result<Trust> {
    Ok(Trust::from_ca(config.gateway_ca().as_deref())?)
}

/// `what failed (code): message` for a refused or failed job; other errors as they are.
pub fn failed(what: &str, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused { code, message, .. }
        | ClientError::JobFailed { code, message, .. } => {
            anyhow!("{what} failed ({code}): {message}")
        }
        ClientError::JobCancelled { job, reason } => match reason {
            Some(why) => anyhow!("{what} cancelled (job {job}): {why}"),
            None => anyhow!("{what} cancelled (job {job})"),
        },
        other => other.into(),
    }
}

/// A bar of rows written (`total` known: with the rate and time left) or counted (a spinner),
/// labelled `what`: what `arbor collection snapshot|restore` and `arbor ingest FILE.npy` show.
pub(crate) fn rows_bar(what: &str, total: Option<u64>) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} rows ({per_sec}, {eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} rows ({per_sec})")
                .expect("a valid template"),
        ),
    };
    bar.set_message(what.to_owned());
    bar
}

/// Runs one job to its end and returns its final result data.
pub async fn run_job(
    client: &mut GatewayClient,
    job: JobSpec,
    what: &str,
) -> anyhow::Result<Value> {
    let outcome = client.run(job, |_| {}).await.map_err(|e| failed(what, e))?;
    outcome.into_data().map_err(|e| failed(what, e))
}

/// Runs one job to its end, handing each of its messages to `on_event`; ctrl-c cancels it
/// and ends the command with an error.
pub async fn run_interruptible(
    client: &mut GatewayClient,
    job: JobSpec,
    what: &str,
    mut on_event: impl FnMut(&ServerMsg),
) -> anyhow::Result<Value> {
    let (id, reference) = client
        .submit_with(job, false)
        .await
        .map_err(|e| failed(what, e))?;
    let mut watch = JobWatch::new(id.clone(), Some(reference));
    let outcome = tokio::select! {
        outcome = client.follow(&mut watch, &mut on_event) => outcome,
        _ = tokio::signal::ctrl_c() => {
            cancel_all(client, std::slice::from_ref(&id)).await;
            return Err(anyhow!("interrupted: {what} job {id} cancelled"));
        }
    };
    let outcome = outcome.map_err(|e| failed(what, e))?;
    outcome.into_data().map_err(|e| failed(what, e))
}

/// Cancels `jobs` (after ctrl-c or a failure), waiting a little for each answer.
pub async fn cancel_all(client: &mut GatewayClient, jobs: &[JobId]) {
    for job in jobs {
        match tokio::time::timeout(Duration::from_secs(2), client.cancel(job)).await {
            Ok(Ok(())) => eprintln!("cancelled job {job}"),
            Ok(Err(e)) => eprintln!("could not cancel job {job}: {e}"),
            Err(_) => eprintln!("sent cancel for job {job}; no answer yet"),
        }
    }
}

/// A job's result data as `T`, or an error that says the gateway and this client disagree.
pub fn parse_data<T: DeserializeOwned>(data: Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(data).map_err(|e| {
        anyhow!(
            "the gateway's {what} result is not what this client expects ({e}); is the node running the same arbor version?"
        )
    })
}

/// `text` cut to at most `max` characters (on a char boundary), with "..." when cut, and on
/// one line.
pub fn excerpt(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        None => one_line,
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_proto::ErrorCode;

    #[test]
    fn a_missing_token_says_how_to_make_one() {
        let args = GatewayArgs {
            config: "cluster.toml".into(),
            token: None,
        };
        let e = args.token().unwrap_err().to_string();
        assert!(e.contains("arbor token create --role admin"), "{e}");
        assert!(
            e.contains("ARBOR_TOKEN") && e.contains("tokens file"),
            "{e}"
        );
        let blank = GatewayArgs {
            token: Some("  ".into()),
            ..args
        };
        assert!(blank.token().is_err());
    }

    #[test]
    fn failures_name_the_command_code_and_message() {
        let e = failed(
            "query",
            ClientError::Refused {
                code: ErrorCode::InvalidJob,
                message: "k = 0 is not in 1..=256".into(),
                field: Some("job.k".into()),
            },
        );
        assert_eq!(
            e.to_string(),
            "query failed (invalid_job): k = 0 is not in 1..=256"
        );
        let e = failed(
            "rag",
            ClientError::JobFailed {
                job: "j1".into(),
                code: ErrorCode::Unavailable,
                message: "no model replica".into(),
            },
        );
        assert_eq!(e.to_string(), "rag failed (unavailable): no model replica");
    }

    #[test]
    fn excerpts_cut_on_char_boundaries() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("a  b\n c", 10), "a b c");
        assert_eq!(excerpt("ééééé", 3), "ééé...");
        assert_eq!(excerpt("abc", 3), "abc");
    }
}
