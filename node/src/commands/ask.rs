//! `arbor query|rag|embed|generate`.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{GatewayArgs, excerpt, parse_data, run_interruptible, run_job};
use crate::gateway::protocol::{EmbedJob, GenerateJob, JobSpec, QueryJob, RagJob, ServerMsg};

/// How many characters of a hit's text `arbor query` prints.
const EXCERPT_CHARS: usize = 200;

/// One search hit, as `query` and `rag` results carry them.
#[derive(Debug, Clone, Deserialize)]
pub struct Hit {
    pub doc_id: String,
    /// The chunk's number in its document.
    pub chunk_id: Value,
    pub score: f64,
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// The result data of a `query` job.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryResult {
    pub results: Vec<Hit>,
    #[serde(default)]
    pub missing_partitions: Vec<Value>,
}

/// The result data of a `rag` job.
#[derive(Debug, Clone, Deserialize)]
pub struct RagResult {
    #[serde(default)]
    pub answer: String,
    #[serde(default)]
    pub sources: Vec<Hit>,
    #[serde(default)]
    pub missing_partitions: Vec<Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// `arbor query NAME TEXT`.
pub async fn query(
    gw: &GatewayArgs,
    collection: String,
    text: String,
    k: u32,
    filter: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let filter = filter
        .map(|f| {
            serde_json::from_str::<Value>(&f).with_context(|| format!("--filter is not JSON: {f}"))
        })
        .transpose()?;
    let mut client = gw.connect().await?;
    let job = JobSpec::Query(QueryJob {
        collection,
        text,
        k,
        filter,
    });
    let data = run_job(&mut client, job, "query").await?;
    if json {
        println!("{}", serde_json::to_string(&data)?);
        return Ok(());
    }
    let r: QueryResult = parse_data(data, "query")?;
    print!("{}", hits_text(&r.results));
    if let Some(warning) = missing_warning(&r.missing_partitions) {
        eprintln!("{warning}");
    }
    Ok(())
}

/// `arbor rag NAME QUESTION`: the answer as it is generated, then its sources.
pub async fn rag(
    gw: &GatewayArgs,
    collection: String,
    question: String,
    k: u32,
    max_tokens: u32,
) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let job = JobSpec::Rag(RagJob {
        collection,
        question,
        k,
        max_tokens,
    });
    let mut streamed = false;
    let data = run_interruptible(&mut client, job, "rag", |m| streamed |= print_token(m)).await?;
    let r: RagResult = parse_data(data, "rag")?;
    if !streamed {
        print!("{}", r.answer);
    }
    println!("\n\n{}", sources_text(&r.sources).trim_end());
    if let Some(warning) = missing_warning(&r.missing_partitions) {
        eprintln!("{warning}");
    }
    Ok(())
}

/// `arbor embed TEXT...`: prints the result data as JSON.
pub async fn embed(
    gw: &GatewayArgs,
    texts: Vec<String>,
    deployment: Option<String>,
) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let data = run_job(
        &mut client,
        JobSpec::Embed(EmbedJob { texts, deployment }),
        "embed",
    )
    .await?;
    println!("{}", serde_json::to_string(&data)?);
    Ok(())
}

/// `arbor generate PROMPT`: the text as it is generated.
pub async fn generate(
    gw: &GatewayArgs,
    prompt: String,
    max_tokens: u32,
    deployment: Option<String>,
) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let job = JobSpec::Generate(GenerateJob {
        prompt,
        max_tokens,
        deployment,
    });
    let mut streamed = false;
    let data =
        run_interruptible(&mut client, job, "generate", |m| streamed |= print_token(m)).await?;
    if !streamed && let Some(text) = data.get("text").and_then(Value::as_str) {
        print!("{text}");
    }
    println!();
    Ok(())
}

/// Prints a `token` message's text at once; whether it was one.
fn print_token(msg: &ServerMsg) -> bool {
    let ServerMsg::Token { text, .. } = msg else {
        return false;
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    true
}

/// `arbor query`'s list: score, doc_id#chunk and title, then the start of the text.
pub fn hits_text(hits: &[Hit]) -> String {
    if hits.is_empty() {
        return "no results\n".into();
    }
    let mut out = String::new();
    for (i, h) in hits.iter().enumerate() {
        let title = h
            .title
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| format!("  {t}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>2}. {:.4}  {}#{}{title}",
            i + 1,
            h.score,
            h.doc_id,
            show(&h.chunk_id)
        );
        let _ = writeln!(out, "    {}", excerpt(&h.text, EXCERPT_CHARS));
    }
    out
}

/// `Sources:` and one `[n] doc_id (score)` line per source.
pub fn sources_text(sources: &[Hit]) -> String {
    let mut out = String::from("Sources:\n");
    if sources.is_empty() {
        out.push_str("  (none)\n");
    }
    for (i, h) in sources.iter().enumerate() {
        let _ = writeln!(out, "[{}] {} ({:.4})", i + 1, h.doc_id, h.score);
    }
    out
}

/// A warning when some partitions did not answer.
pub fn missing_warning(missing: &[Value]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let list: Vec<String> = missing.iter().map(show).collect();
    Some(format!(
        "warning: partitions {} did not answer; the results may miss documents (see `arbor collections`)",
        list.join(", ")
    ))
}

/// A JSON scalar without the quotes of a string.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result() -> QueryResult {
        parse_data(
            json!({"results": [
                {"doc_id": "a.md", "chunk_id": 2, "score": 0.91234, "text": "hello\nworld",
                 "title": "a", "metadata": {}},
                {"doc_id": "b.txt", "chunk_id": 0, "score": 0.5, "text": "x".repeat(300),
                 "title": null, "metadata": null}
            ], "missing_partitions": [1]}),
            "query",
        )
        .unwrap()
    }

    #[test]
    fn hits_print_score_id_chunk_and_an_excerpt() {
        let r = result();
        let t = hits_text(&r.results);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], " 1. 0.9123  a.md#2  a");
        assert_eq!(lines[1], "    hello world");
        assert_eq!(lines[2], " 2. 0.5000  b.txt#0");
        assert_eq!(lines[3].len(), 4 + 200 + 3);
        assert_eq!(hits_text(&[]), "no results\n");
        assert!(
            missing_warning(&r.missing_partitions)
                .unwrap()
                .contains("partitions 1 ")
        );
        assert!(missing_warning(&[]).is_none());
    }

    #[test]
    fn rag_sources_are_numbered() {
        let r: RagResult = parse_data(
            json!({"answer": "42", "sources": result_hits(), "missing_partitions": [],
                   "finish_reason": "stop"}),
            "rag",
        )
        .unwrap();
        assert_eq!(
            sources_text(&r.sources),
            "Sources:\n[1] a.md (0.9123)\n[2] b.txt (0.5000)\n"
        );
    }

    fn result_hits() -> Value {
        json!([
            {"doc_id": "a.md", "chunk_id": 2, "score": 0.91234, "text": "t"},
            {"doc_id": "b.txt", "chunk_id": 0, "score": 0.5, "text": "t"}
        ])
    }
}
