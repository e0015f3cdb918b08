//! `arbor local ...`: the kernels without a cluster, for people and scripts.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;

use arbor_kernels::Device;
use arbor_kernels::embed::Embedder;
use arbor_kernels::llama::{GenerateParams, Llama, Message, Sampling};
use arbor_kernels::models::{SMOLLM2_GGUF, models_dir};

use crate::flags::LocalCommand;
use serde::Serialize;

/// The name `arbor local embed` reports its model by.
pub const EMBED_MODEL: &str = "all-MiniLM-L6-v2";

/// What `arbor local embed` prints.
#[derive(Debug, Serialize)]
pub struct Embeddings {
    pub model: &'static str,
    pub dim: usize,
    pub embeddings: Vec<Vec<f32>>,
}

/// Embeds texts with MiniLM from the models dir.
pub fn embed(
    models: Option<PathBuf>,
    device: Device,
    texts: &[String],
) -> anyhow::Result<Embeddings> {
    let embedder = Embedder::load(models_dir(models), device)?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    Ok(Embeddings {
        model: EMBED_MODEL,
        dim: embedder.dim(),
        embeddings: embedder.embed(&texts)?,
    })
}

/// What `arbor local generate --json` prints.
#[derive(Debug, Serialize)]
pub struct Generated {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: arbor_kernels::llama::FinishReason,
}

/// Generates SmolLM2's answer to `prompt` (wrapped in its chat template). Streams the text to
/// stdout unless `json`, in which case the whole answer is printed as one object at the end.
pub fn generate(
    models: Option<PathBuf>,
    device: Device,
    prompt: &str,
    max_tokens: usize,
    sampling: Sampling,
    json: bool,
) -> anyhow::Result<()> {
    let model = Llama::load(models_dir(models).join(SMOLLM2_GGUF), device)?;
    let params = GenerateParams {
        max_tokens,
        sampling,
        stop: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    let generation = model.chat(&[Message::user(prompt)], &params, |token| {
        if !json {
            // A closed stdout (e.g. `| head`) ends the generation, not the process.
            if out
                .write_all(token.text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if json {
        let g = Generated {
            text: generation.text,
            token_ids: generation.token_ids,
            finish_reason: generation.finish_reason,
        };
        writeln!(out, "{}", serde_json::to_string(&g)?)?;
    } else {
        writeln!(out)?;
    }
    Ok(())
}

/// `arbor local ...`.
pub fn run(command: LocalCommand) -> anyhow::Result<()> {
    match command {
        LocalCommand::Embed {
            models,
            device,
            texts,
        } => {
            let out = embed(models, device, &texts)?;
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
            generate(models, device, &prompt, max_tokens, sampling, json)?;
        }
    }
    Ok(())
}
