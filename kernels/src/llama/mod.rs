//! Text generation with Llama-family models (Llama, Mistral, SmolLM, Qwen2) from GGUF files.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use arbor_kernels::Device;
//! use arbor_kernels::llama::{GenerateParams, Llama, Message};
//!
//! let mut llama = Llama::load("SmolLM2-135M-Instruct.Q4_1.gguf", Device::Cpu)?;
//! let answer = llama.chat(&[Message::user("What is Rust?")], &GenerateParams::greedy(64), |event| {
//!     print!("{}", event.text);
//!     ControlFlow::Continue(())
//! })?;
//! println!("\n{:?}", answer.finish_reason);
//! # Ok::<(), arbor_kernels::llama::GenerateError>(())
//! ```
//!
//! [`Llama::step`] advances several [`Sequence`]s together by one token each, which is how
//! [`Llama::generate_batch`] and a serving loop batch independent requests.

mod chat;
mod config;
mod cpu;
mod linear;
mod model;
mod sampling;
mod simd;
mod stop;
mod tokenizer;

use std::ops::ControlFlow;
use std::path::Path;

use burn::backend::Cuda;

use crate::device::Device;
use crate::gguf::{Gguf, GgufError};

pub use chat::{ChatTemplate, Message, Role};
pub use config::{Architecture, LlamaConfig, RopePairs};
pub use linear::Activations;
pub use sampling::{BadSampling, Sampler, Sampling, argmax, top_p_sample};
pub use stop::{StopScan, scan as scan_stops};
pub use tokenizer::Tokenizer;

use model::{KvCache, Model};

type CudaBackend = Cuda<f32, i32>;

/// Why loading a model or generating failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Sampling(#[from] BadSampling),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the context of {0} tokens is full")]
    ContextFull(usize),
    #[error("device {0} is not available: {1}")]
    Device(Device, String),
    #[error("a sequence started on one model was stepped with another")]
    ForeignSequence,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// The most tokens to generate.
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends where the text first contains one of these; it is not part of the answer.
    pub stop: Vec<String>,
}

impl GenerateParams {
    /// Greedy decoding of at most `max_tokens` tokens, without stop strings.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerateParams {
            max_tokens,
            sampling: Sampling::Greedy,
            stop: Vec::new(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// The text reached a stop string.
    Stop,
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
    /// The caller asked to stop.
    Cancelled,
}

/// One generated token, as it is made.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token_id: u32,
    /// Position of the token among the generated ones, from 0.
    pub index: usize,
    /// New text that can be shown now. Empty when the token ends inside a UTF-8 character or
    /// could begin a stop string; that text comes with a later token (or never, if it was the
    /// stop string).
    pub text: String,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The answer, without the end-of-sequence token or the stop string.
    pub text: String,
    /// The generated tokens, including an end-of-sequence token if one ended it.
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
}

enum Engine {
    Cpu(Box<cpu::Model>),
    // Boxed: the models are large, and one is held for its whole life.
    Cuda(Box<Model<CudaBackend>>),
}

enum Cache {
    Cpu(cpu::KvCache),
    Cuda(KvCache<CudaBackend>),
}

/// A loaded model with its tokenizer and chat template.
pub struct Llama {
    engine: Engine,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    device: Device,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", self.config())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// One generation in progress: its tokens, cache, sampler and the text streamed so far.
pub struct Sequence {
    cache: Cache,
    params: GenerateParams,
    sampler: Sampler,
    prompt_tokens: usize,
    /// Tokens not yet fed to the model: the prompt, then each sampled token.
    pending: Vec<u32>,
    generated: Vec<u32>,
    /// The decoded text of `generated` (possibly cut at a stop string).
    text: String,
    /// Bytes of `text` already handed out in token events.
    emitted: usize,
    finished: Option<FinishReason>,
}

impl Sequence {
    /// Why it ended, or `None` while it is still running.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }

    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// Ends the sequence before its next token (cancellation between tokens).
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(FinishReason::Cancelled);
    }

    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// The result so far; final once the sequence is finished.
    pub fn result(&self) -> Generation {
        Generation {
            text: self.text.clone(),
            token_ids: self.generated.clone(),
            prompt_tokens: self.prompt_tokens,
            finish_reason: self.finished.unwrap_or(FinishReason::Cancelled),
        }
    }
}

/// What a GGUF model is and needs, read from its header without loading its weights: what a
/// deployment is checked against before any replica tries to load it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub config: LlamaConfig,
    /// Bytes of all tensors as stored (and as the CPU path keeps them in memory).
    pub weight_bytes: u64,
}

impl ModelSummary {
    /// Memory a replica needs: the weights, and the caches of `sequences` sequences of
    /// `tokens` positions each.
    pub fn memory_needed(&self, sequences: usize, tokens: usize) -> u64 {
        let tokens = tokens.min(self.config.context_length) as u64;
        self.weight_bytes + sequences as u64 * tokens * self.config.kv_bytes_per_token() as u64
    }
}

impl Llama {
    /// Loads a GGUF model onto `device`. On the CPU the weights stay in their stored types;
    /// on a GPU they are dequantized to f32 once, here.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self, GenerateError> {
        let path = path.as_ref();
        let gguf = Gguf::open(path)?;
        Self::from_gguf(&gguf, device)
    }

    /// Reads a GGUF file's header and checks that this runtime can run it: a known
    /// architecture, a tokenizer and chat template it reads, every tensor there with its
    /// shape, in types it reads. Does not read the weights.
    pub fn inspect(path: impl AsRef<Path>) -> Result<ModelSummary, GenerateError> {
        let gguf = Gguf::open_header(path)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        if tokenizer.vocab_size() < config.vocab_size {
            return Err(GenerateError::Model(format!(
                "the tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        model::check_tensors(&gguf, &config)?;
        let weight_bytes = gguf.tensors().iter().map(|t| t.bytes() as u64).sum();
        Ok(ModelSummary {
            config,
            weight_bytes,
        })
    }

    /// The logits of the token that would follow `ids` (a whole sequence, fed at once): for
    /// scoring a text, or comparing the model with another implementation token by token.
    pub fn next_logits(&self, ids: &[u32]) -> Result<Vec<f32>, GenerateError> {
        let mut seq = [self.sequence_from_ids(ids.to_vec(), GenerateParams::greedy(1))?];
        let mut active: Vec<(usize, &mut Sequence)> = seq.iter_mut().enumerate().collect();
        let mut logits = self.forward(&mut active)?;
        logits.pop().ok_or(GenerateError::EmptyPrompt)
    }

    /// Sets what the CPU's dense layers multiply with (a GPU model always multiplies f32).
    pub fn with_activations(mut self, activations: Activations) -> Self {
        if let Engine::Cpu(m) = &mut self.engine {
            m.set_activations(activations);
        }
        self
    }

    /// Bytes of weights this model holds in host memory (its CPU-resident size).
    pub fn host_bytes(&self) -> usize {
        match &self.engine {
            Engine::Cpu(m) => m.host_bytes(),
            Engine::Cuda(_) => 0,
        }
    }

    /// Builds the model from a parsed GGUF file.
    pub fn from_gguf(gguf: &Gguf, device: Device) -> Result<Self, GenerateError> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let tokenizer = Tokenizer::from_gguf(gguf)?;
        if tokenizer.vocab_size() < config.vocab_size {
            return Err(GenerateError::Model(format!(
                "the tokenizer has {} tokens, the model {}",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let name = |id: Option<u32>| id.and_then(|id| tokenizer.token(id)).unwrap_or_default();
        let template = ChatTemplate::new(
            gguf.get_str("tokenizer.chat_template")?,
            &name(tokenizer.bos()),
            &name(Some(tokenizer.eos())),
        )?;
        let engine = match device {
            Device::Cpu => Engine::Cpu(Box::new(cpu::Model::load(gguf, config)?)),
            Device::Cuda(index) => {
                crate::device::cuda_driver()
                    .map_err(|e| GenerateError::Device(device, e.to_string()))?;
                let dev = burn::backend::cuda::CudaDevice::new(index);
                Engine::Cuda(Box::new(Model::load(gguf, config, dev)?))
            }
        };
        tracing::info!(%device, "loaded Llama model");
        Ok(Llama {
            engine,
            tokenizer,
            template,
            device,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        match &self.engine {
            Engine::Cpu(m) => m.config(),
            Engine::Cuda(m) => m.config(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Starts a generation from `prompt` (raw text: special tokens written in it count as
    /// such; use [`ChatTemplate::render`] for a conversation).
    pub fn sequence(
        &self,
        prompt: &str,
        params: GenerateParams,
    ) -> Result<Sequence, GenerateError> {
        let ids = self.tokenizer.encode(prompt)?;
        self.sequence_from_ids(ids, params)
    }

    /// Starts a generation from prompt token ids.
    pub fn sequence_from_ids(
        &self,
        ids: Vec<u32>,
        params: GenerateParams,
    ) -> Result<Sequence, GenerateError> {
        params.sampling.validate()?;
        if ids.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let n_layers = self.config().n_layers;
        let cache = match &self.engine {
            Engine::Cpu(m) => Cache::Cpu(cpu::KvCache::new(
                m.config(),
                ids.len().saturating_add(params.max_tokens),
            )),
            Engine::Cuda(_) => Cache::Cuda(KvCache::new(n_layers)),
        };
        let finished = (params.max_tokens == 0).then_some(FinishReason::MaxTokens);
        Ok(Sequence {
            cache,
            sampler: Sampler::new(params.sampling),
            params,
            prompt_tokens: ids.len(),
            pending: ids,
            generated: Vec::new(),
            text: String::new(),
            emitted: 0,
            finished,
        })
    }

    /// Advances every unfinished sequence by one token: one forward pass for all of them (the
    /// first step of a sequence feeds its whole prompt). `on_token` gets the sequence's index
    /// in `seqs` and the token; returning `Break` cancels that sequence.
    pub fn step(
        &self,
        seqs: &mut [Sequence],
        mut on_token: impl FnMut(usize, &TokenEvent) -> ControlFlow<()>,
    ) -> Result<(), GenerateError> {
        let context = self.config().context_length;
        let mut active: Vec<(usize, &mut Sequence)> = seqs
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| !s.is_finished())
            .collect();
        // A sequence whose context would overflow ends here instead of failing the batch.
        active.retain_mut(|(_, s)| {
            let len = match &s.cache {
                Cache::Cpu(c) => c.len(),
                Cache::Cuda(c) => c.len(),
            };
            if len + s.pending.len() > context {
                s.finished = Some(FinishReason::ContextFull);
                false
            } else {
                true
            }
        });
        if active.is_empty() {
            return Ok(());
        }
        let logits = self.forward(&mut active)?;
        for ((i, seq), logits) in active.iter_mut().zip(logits) {
            let token = seq.sampler.sample(&logits);
            let event = self.accept(seq, token)?;
            if on_token(*i, &event).is_break() {
                seq.cancel();
            }
        }
        Ok(())
    }

    fn forward(&self, seqs: &mut [(usize, &mut Sequence)]) -> Result<Vec<Vec<f32>>, GenerateError> {
        match &self.engine {
            Engine::Cpu(model) => {
                let mut batch = Vec::with_capacity(seqs.len());
                for (_, s) in seqs.iter_mut() {
                    let Cache::Cpu(cache) = &mut s.cache else {
                        return Err(GenerateError::ForeignSequence);
                    };
                    batch.push((cache, s.pending.as_slice()));
                }
                let logits = model.forward(&mut batch)?;
                seqs.iter_mut().for_each(|(_, s)| s.pending.clear());
                Ok(logits)
            }
            Engine::Cuda(model) => {
                let mut batch = Vec::with_capacity(seqs.len());
                for (_, s) in seqs.iter_mut() {
                    let Cache::Cuda(cache) = &mut s.cache else {
                        return Err(GenerateError::ForeignSequence);
                    };
                    batch.push((cache, s.pending.as_slice()));
                }
                let logits = model.forward(&mut batch)?;
                seqs.iter_mut().for_each(|(_, s)| s.pending.clear());
                Ok(logits)
            }
        }
    }

    /// Records a sampled token: end-of-sequence, text, stop strings, token limit.
    fn accept(&self, seq: &mut Sequence, token: u32) -> Result<TokenEvent, GenerateError> {
        let index = seq.generated.len();
        seq.generated.push(token);
        if self.tokenizer.is_end(token) {
            seq.finished = Some(FinishReason::Eos);
            // Text held back for a stop string that never came is shown now.
            let text = seq.text[seq.emitted..].to_owned();
            seq.emitted = seq.text.len();
            return Ok(TokenEvent {
                token_id: token,
                index,
                text,
            });
        }
        seq.pending.push(token);
        let full = self.tokenizer.decode(&seq.generated)?;
        // A token can end inside a multi-byte character: byte-level BPE then decodes the
        // partial bytes as U+FFFD. Hold that back until the character is complete.
        let complete = full.trim_end_matches('\u{FFFD}');
        let at_limit = seq.generated.len() >= seq.params.max_tokens;
        let visible = if at_limit { full.as_str() } else { complete };
        let end = match stop::scan(visible, &seq.params.stop) {
            StopScan::Stopped(at) => {
                seq.finished = Some(FinishReason::Stop);
                seq.text = visible[..at].to_owned();
                at
            }
            StopScan::Safe(safe) => {
                seq.text = visible.to_owned();
                if at_limit {
                    seq.finished = Some(FinishReason::MaxTokens);
                    visible.len()
                } else {
                    safe
                }
            }
        };
        let end = end.max(seq.emitted);
        let text = seq
            .text
            .get(seq.emitted..end)
            .unwrap_or_default()
            .to_owned();
        seq.emitted = end;
        Ok(TokenEvent {
            token_id: token,
            index,
            text,
        })
    }

    /// Generates from raw prompt text, streaming tokens to `on_token`; `Break` stops it.
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        mut on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Generation, GenerateError> {
        let mut seqs = [self.sequence(prompt, params.clone())?];
        while !seqs[0].is_finished() {
            self.step(&mut seqs, |_, e| on_token(e))?;
        }
        Ok(seqs[0].result())
    }

    /// Generates the assistant's answer to a conversation, wrapped in the chat template.
    pub fn chat(
        &self,
        messages: &[Message],
        params: &GenerateParams,
        on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Generation, GenerateError> {
        let prompt = self.template.render(messages)?;
        self.generate(&prompt, params, on_token)
    }

    /// Generates from several raw prompts together, stepping them as one batch. `on_token` gets
    /// the prompt's index; `Break` stops that prompt only.
    pub fn generate_batch(
        &self,
        prompts: &[&str],
        params: &GenerateParams,
        mut on_token: impl FnMut(usize, &TokenEvent) -> ControlFlow<()>,
    ) -> Result<Vec<Generation>, GenerateError> {
        let mut seqs = prompts
            .iter()
            .map(|p| self.sequence(p, params.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        while seqs.iter().any(|s| !s.is_finished()) {
            self.step(&mut seqs, &mut on_token)?;
        }
        Ok(seqs.iter().map(Sequence::result).collect())
    }
}
