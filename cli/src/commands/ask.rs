//! `arbor query|rag|embed|generate`.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context;
use arbor_proto::results::{QueryAnswer, QueryHit, RagAnswer};
use serde_json::Value;

use super::{GatewayArgs, excerpt, parse_data, run_interruptible, run_job};
use arbor_proto::gateway::{EmbedJob, GenerateJob, JobSpec, QueryJob, RagJob, ServerMsg};

/// How many characters of a hit's text `arbor query` prints.
const EXCERPT_CHARS: usize = 200;

/// `arbor query NAME TEXT`.
pub async fn query(
    gw: &GatewayArgs,
    collection: String,
    text: String,
    k: u32,
    filter: Option<String>,
    ef: Option<u32>,
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
        text: Some(text),
        vector: None,
        k,
        filter,
        ef,
    });
    let data = run_job(&mut client, job, "query").await?;
    if json {
        println!("{}", serde_json::to_string(&data)?);
        return Ok(());
    }
    let r: QueryAnswer = parse_data(data, "query")?;
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
    let data = run_interruptible(&mut client, job, "rag", |m| streamed |= print_token(m)).await;
    let data = end_line_on_error(data, streamed)?;
    let r: RagAnswer = parse_data(data, "rag")?;
    if !streamed {
        print!("{}", r.answer);
    }
    println!("\n\n{}", sources_text(&r.sources).trim_end());
    if let Some(note) = finish_note(&r.finish_reason, max_tokens) {
        eprintln!("{note}");
    }
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
        run_interruptible(&mut client, job, "generate", |m| streamed |= print_token(m)).await;
    let data = end_line_on_error(data, streamed)?;
    let text = data.get("text").and_then(Value::as_str).unwrap_or_default();
    if !streamed {
        print!("{text}");
    }
    println!();
    if text.is_empty() {
        eprintln!("(the model produced no text)");
    }
    if let Some(note) = data
        .get("finish_reason")
        .and_then(Value::as_str)
        .and_then(|r| finish_note(r, max_tokens))
    {
        eprintln!("{note}");
    }
    Ok(())
}

/// Ends the line of streamed text before an error is printed.
fn end_line_on_error(result: anyhow::Result<Value>, streamed: bool) -> anyhow::Result<Value> {
    if result.is_err() && streamed {
        println!();
    }
    result
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
pub fn hits_text(hits: &[QueryHit]) -> String {
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
            h.chunk_id
        );
        let _ = writeln!(out, "    {}", excerpt(&h.text, EXCERPT_CHARS));
    }
    out
}

/// `Sources:` and one `[n] doc_id (score)` line per source.
pub fn sources_text(sources: &[QueryHit]) -> String {
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
pub fn missing_warning(missing: &[u32]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let list: Vec<String> = missing.iter().map(u32::to_string).collect();
    Some(format!(
        "warning: partitions {} did not answer; the results may miss documents (see `arbor collections`)",
        list.join(", ")
    ))
}

/// A note when generation stopped before the model was done.
pub fn finish_note(reason: &str, max_tokens: u32) -> Option<String> {
    match reason {
        "max_tokens" => Some(format!(
            "(stopped after --max-tokens {max_tokens}; give a larger one for a longer answer)"
        )),
        "context_full" => Some("(stopped: the model's context is full)".into()),
        "cancelled" => Some("(cancelled)".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result() -> QueryAnswer {
        parse_data(
            json!({"results": [
                {"doc_id": "a.md", "chunk_id": 2, "score": 0.91234, "text": "hello\nworld",
                 "title": "a", "metadata": {}},
                {"doc_id": "b.txt", "chunk_id": 0, "score": 0.5, "text": "x".repeat(300),
                 "title": null, "metadata": {}}
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
        let r: RagAnswer = parse_data(
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
            {"doc_id": "a.md", "chunk_id": 2, "score": 0.91234, "text": "t", "title": null,
             "metadata": {}},
            {"doc_id": "b.txt", "chunk_id": 0, "score": 0.5, "text": "t", "title": "b",
             "metadata": {"lang": "en"}}
        ])
    }

    #[test]
    fn early_stops_are_explained() {
        assert!(
            finish_note("max_tokens", 64)
                .unwrap()
                .contains("--max-tokens 64")
        );
        assert_eq!(finish_note("eos", 64), None);
        assert_eq!(finish_note("stop", 64), None);
    }
}
