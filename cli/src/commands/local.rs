//! `arbor local ...`: the kernels without a cluster, for people and scripts.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use arbor_kernels::Device;
use arbor_kernels::embed::Embedder;
use arbor_kernels::llama::{GenerateParams, Llama, Message, Sampling, Sequence};
use arbor_kernels::models::{self, models_dir};

use crate::flags::LocalCommand;
use serde::Serialize;

/// What `arbor local embed` prints.
#[derive(Debug, Serialize)]
pub struct Embeddings {
    /// The model's folder name (all-MiniLM-L6-v2 by default).
    pub model: String,
    pub dim: usize,
    pub embeddings: Vec<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<EmbedTimings>,
}

/// How long `arbor local embed` took, for benchmarks.
#[derive(Debug, Serialize)]
pub struct EmbedTimings {
    pub load_ms: f64,
    pub embed_ms: f64,
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// A model named on the command line: a path as given when there is something there, else a
/// name under the models dir (`resolve` says how).
fn local_model(
    given: Option<&str>,
    models: &Path,
    resolve: fn(&Path, Option<&str>) -> PathBuf,
) -> PathBuf {
    match given {
        Some(g) if Path::new(g).exists() => PathBuf::from(g),
        other => resolve(models, other),
    }
}

/// Embeds texts with a sentence-embedding model from the models dir (or a path).
pub fn embed(
    models: Option<PathBuf>,
    model: Option<&str>,
    device: Device,
    batch_size: usize,
    texts: &[String],
) -> anyhow::Result<Embeddings> {
    let dir = local_model(model, &models_dir(models), models::embedder_dir);
    let started = Instant::now();
    let embedder = Embedder::load_dir(&dir, device)?.with_batch_size(batch_size);
    let load_ms = millis(started);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let embeddings = embedder.embed(&texts)?;
    let embed_ms = millis(started);
    Ok(Embeddings {
        model: models::display_name(&dir),
        dim: embedder.dim(),
        embeddings,
        timings: Some(EmbedTimings { load_ms, embed_ms }),
    })
}

/// What `arbor local generate --json` prints, per prompt.
#[derive(Debug, Serialize)]
pub struct Generated {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: arbor_kernels::llama::FinishReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<GenerateTimings>,
}

/// How long one prompt of `arbor local generate` took, for benchmarks.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GenerateTimings {
    pub load_ms: f64,
    pub prompt_tokens: usize,
    /// From the start of generation (tokenizing included) to the prompt's first token.
    pub first_token_ms: f64,
    /// From the start of generation to the prompt's last token.
    pub total_ms: f64,
}

/// How `arbor local generate` generates and prints.
pub struct GenerateOptions {
    pub params: GenerateParams,
    /// Without the chat template.
    pub raw: bool,
    pub json: bool,
    pub timings: bool,
}

/// Generates the model's answers to `prompts` (wrapped in its chat template unless `raw`),
/// all together as one batch. One prompt without `json` streams its text to stdout; several
/// print their answers in order at the end; `json` prints an object per prompt per line.
pub fn generate(
    models: Option<PathBuf>,
    model: Option<&str>,
    device: Device,
    prompts: &[String],
    options: &GenerateOptions,
) -> anyhow::Result<()> {
    let path = local_model(model, &models_dir(models), models::gguf_path);
    let started = Instant::now();
    let llama = Llama::load(&path, device)
        .with_context(|| format!("cannot load the model {}", path.display()))?;
    let load_ms = millis(started);

    let started = Instant::now();
    let mut seqs = prompts
        .iter()
        .map(|p| {
            let text = if options.raw {
                p.clone()
            } else {
                llama.chat_template().render(&[Message::user(p)])?
            };
            llama.sequence(&text, options.params.clone())
        })
        .collect::<Result<Vec<Sequence>, _>>()?;
    let mut first = vec![None; seqs.len()];
    let mut last = vec![0.0; seqs.len()];
    let stream = prompts.len() == 1 && !options.json;
    let mut out = std::io::stdout().lock();
    while seqs.iter().any(|s| !s.is_finished()) {
        llama.step(&mut seqs, |i, token| {
            let now = millis(started);
            first[i].get_or_insert(now);
            last[i] = now;
            // A closed stdout (e.g. `| head`) ends the generation, not the process.
            if stream
                && out
                    .write_all(token.text.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
            {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
    }
    for (i, seq) in seqs.iter().enumerate() {
        let g = seq.result();
        if options.json {
            let timings = options.timings.then(|| GenerateTimings {
                load_ms,
                prompt_tokens: g.prompt_tokens,
                first_token_ms: first[i].unwrap_or(last[i]),
                total_ms: last[i],
            });
            let g = Generated {
                text: g.text,
                token_ids: g.token_ids,
                finish_reason: g.finish_reason,
                timings,
            };
            writeln!(out, "{}", serde_json::to_string(&g)?)?;
        } else if stream {
            writeln!(out)?;
        } else {
            writeln!(out, "{}\n", g.text)?;
        }
    }
    Ok(())
}

/// Reads texts, one per line (empty lines skipped), from `path`.
fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the texts file {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// `arbor local ...`.
pub fn run(command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Embed {
            models,
            model,
            device,
            batch_size,
            texts_file,
            timings,
            mut texts,
        } => {
            if let Some(file) = texts_file {
                texts.extend(read_texts(&file)?);
            }
            let mut out = embed(models, model.as_deref(), device, batch_size, &texts)?;
            if !timings {
                out.timings = None;
            }
            println!("{}", serde_json::to_string(&out)?);
        }
        LocalCommand::Generate {
            models,
            model,
            device,
            max_tokens,
            greedy: _,
            temperature,
            top_p,
            seed,
            raw,
            json,
            timings,
            prompts,
        } => {
            let sampling = match temperature {
                Some(temperature) => Sampling::TopP {
                    temperature,
                    top_p,
                    seed,
                },
                None => Sampling::Greedy,
            };
            let options = GenerateOptions {
                params: GenerateParams {
                    max_tokens,
                    sampling,
                    stop: Vec::new(),
                },
                raw,
                json,
                timings,
            };
            generate(models, model.as_deref(), device, &prompts, &options)?;
        }
    }
    Ok(())
}
