//! The decoder on the CPU, in plain Rust over host memory.
//!
//! Decoding a small model is a few hundred small operations per token (norms, rotations,
//! attention over a short cache); through a tensor library each one allocates and dispatches,
//! and appending to a cache held as a tensor copies the whole cache every step. Here the
//! activations are plain `Vec<f32>`, the cache grows in place, the dense layers are the
//! quantized kernels of [`super::linear`], and the rest is loops: the same arithmetic as the
//! burn model (`model.rs`) that runs on GPUs. Measured in `benches/generate.rs` and
//! `benches/peers/`.

use rayon::prelude::*;

use crate::math::{dot, softmax_in_place};

use crate::gguf::Gguf;

use super::GenerateError;
use super::config::{LlamaConfig, RopePairs};
use super::linear::{Activations, HostMatrix, SMALL_BATCH, host_linear};
use super::model::{check_tensors, host_matrix, host_vector, rope_frequencies, rope_values};

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v, whose outputs are concatenated: `[q_dim + 2 * kv_dim, d_model]`. Kept
    /// apart, where the file holds them: stacking them would copy the weights and double the
    /// memory a load peaks at.
    qkv: Vec<HostMatrix>,
    /// Their biases (Qwen2), concatenated the same way.
    qkv_bias: Option<Vec<f32>>,
    out: Vec<HostMatrix>,
    ffn_norm: Vec<f32>,
    /// gate and up: `[2 * ffn_dim, d_model]`.
    gate_up: Vec<HostMatrix>,
    down: Vec<HostMatrix>,
}

/// One sequence's keys and values: per layer and key/value head, `[position, head_dim]`,
/// grown in place.
#[derive(Debug, Clone)]
pub(crate) struct KvCache {
    /// `[layer * n_kv_heads + head]`: keys, then values.
    heads: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

impl KvCache {
    /// A cache with room for `positions` positions (at most the model's context), allocated
    /// once: grown by doubling, each head's keys and values would hold up to twice what they
    /// use, with the blocks they left behind on top.
    pub(crate) fn new(config: &LlamaConfig, positions: usize) -> Self {
        let room = positions.min(config.context_length) * config.head_dim;
        let head = || (Vec::with_capacity(room), Vec::with_capacity(room));
        KvCache {
            heads: (0..config.n_layers * config.n_kv_heads)
                .map(|_| head())
                .collect(),
            len: 0,
        }
    }

    /// Positions cached so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

pub(crate) struct Model {
    config: LlamaConfig,
    embedding: HostMatrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    head: Vec<HostMatrix>,
    /// The rotary frequencies, `[head_dim / 2]`.
    rope_freqs: Vec<f32>,
    host_bytes: usize,
    activations: Activations,
}

fn bytes(parts: &[HostMatrix]) -> usize {
    parts.iter().map(HostMatrix::bytes).sum()
}

impl Model {
    /// Loads the weights in their stored types.
    pub(crate) fn load(gguf: &Gguf, config: LlamaConfig) -> Result<Self, GenerateError> {
        check_tensors(gguf, &config)?;
        let c = &config;
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut host_bytes = 0;
        for i in 0..c.n_layers {
            let name = |n: &str| format!("blk.{i}.{n}.weight");
            let qkv_bias = if c.architecture.qkv_bias() {
                let bias = |n: &str, len| host_vector(gguf, &format!("blk.{i}.{n}.bias"), len);
                let mut b = bias("attn_q", q_dim)?;
                b.extend(bias("attn_k", kv_dim)?);
                b.extend(bias("attn_v", kv_dim)?);
                Some(b)
            } else {
                None
            };
            let layer = Layer {
                attn_norm: host_vector(gguf, &name("attn_norm"), c.d_model)?,
                qkv: vec![
                    host_matrix(gguf, &name("attn_q"), q_dim, c.d_model)?,
                    host_matrix(gguf, &name("attn_k"), kv_dim, c.d_model)?,
                    host_matrix(gguf, &name("attn_v"), kv_dim, c.d_model)?,
                ],
                qkv_bias,
                out: vec![host_matrix(gguf, &name("attn_output"), c.d_model, q_dim)?],
                ffn_norm: host_vector(gguf, &name("ffn_norm"), c.d_model)?,
                gate_up: vec![
                    host_matrix(gguf, &name("ffn_gate"), c.ffn_dim, c.d_model)?,
                    host_matrix(gguf, &name("ffn_up"), c.ffn_dim, c.d_model)?,
                ],
                down: vec![host_matrix(gguf, &name("ffn_down"), c.d_model, c.ffn_dim)?],
            };
            host_bytes +=
                bytes(&layer.qkv) + bytes(&layer.out) + bytes(&layer.gate_up) + bytes(&layer.down);
            layers.push(layer);
        }
        let embedding = host_matrix(gguf, "token_embd.weight", c.vocab_size, c.d_model)?;
        host_bytes += embedding.bytes();
        // Without output.weight the output head is the embedding matrix (tied weights).
        let head = match gguf.tensor("output.weight") {
            Some(_) => {
                let head = host_matrix(gguf, "output.weight", c.vocab_size, c.d_model)?;
                host_bytes += head.bytes();
                head
            }
            None => embedding.clone(),
        };
        let factors = match gguf.tensor("rope_freqs.weight") {
            Some(_) => Some(host_vector(gguf, "rope_freqs.weight", c.head_dim / 2)?),
            None => None,
        };
        let rope_freqs = rope_frequencies(c, factors.as_deref());
        Ok(Model {
            norm: host_vector(gguf, "output_norm.weight", c.d_model)?,
            head: vec![head.exact()],
            embedding,
            layers,
            rope_freqs,
            host_bytes,
            activations: Activations::default(),
            config,
        })
    }

    pub(crate) fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub(crate) fn host_bytes(&self) -> usize {
        self.host_bytes
    }

    pub(crate) fn set_activations(&mut self, activations: Activations) {
        self.activations = activations;
    }

    /// Feeds each sequence's new tokens through the model, extending its cache, and returns
    /// the logits that follow each sequence's last token.
    ///
    /// Runs on a thread of rayon's pool, so that the step's many short parallel parts (a few
    /// per layer) start there rather than each handing work over from the caller's thread
    /// and back.
    ///
    /// A decoding step of more than [`SMALL_BATCH`] sequences (one token each) runs in groups
    /// of that many: each group keeps the quantized row kernels, where all the rows at once
    /// would take the prompt path, which dequantizes and packs every matrix for this one step
    /// (on a 2-core Zen 5 VM, 32 sequences at once made 151 tokens/s in all, against 306 for
    /// 8; in groups, 314). A row's result depends only on that row, so a sequence's logits do
    /// not depend on the others in the step: it decodes the same in a batch of any size.
    pub(crate) fn forward(
        &self,
        batch: &mut [(&mut KvCache, &[u32])],
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        // Checked as a whole first, so that a bad sequence changes no cache.
        self.check(batch)?;
        Ok(rayon::scope(|_| {
            if batch.len() > SMALL_BATCH && batch.iter().all(|(_, tokens)| tokens.len() == 1) {
                let mut logits = Vec::with_capacity(batch.len());
                for group in batch.chunks_mut(SMALL_BATCH) {
                    logits.extend(self.forward_in_pool(group));
                }
                logits
            } else {
                self.forward_in_pool(batch)
            }
        }))
    }

    /// Whether every sequence of the step has tokens of the vocabulary and room for them.
    fn check(&self, batch: &[(&mut KvCache, &[u32])]) -> Result<(), GenerateError> {
        let c = &self.config;
        for (cache, tokens) in batch.iter() {
            if tokens.is_empty() {
                return Err(GenerateError::Model(
                    "a sequence was stepped with no tokens".into(),
                ));
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(GenerateError::Model(format!(
                    "token id {bad} is outside the vocabulary"
                )));
            }
            if cache.len + tokens.len() > c.context_length {
                return Err(GenerateError::ContextFull(c.context_length));
            }
        }
        Ok(())
    }

    /// [`forward`](Self::forward) of a step that [`check`](Self::check) accepted.
    fn forward_in_pool(&self, batch: &mut [(&mut KvCache, &[u32])]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let (d, hd) = (c.d_model, c.head_dim);
        let (q_dim, kv_dim) = (c.n_heads * hd, c.n_kv_heads * hd);
        let mut positions = Vec::new();
        for (cache, tokens) in batch.iter() {
            positions.extend(cache.len..cache.len + tokens.len());
        }
        let n = positions.len();
        let half = hd / 2;
        let (cos, sin) = rope_values(&self.rope_freqs, positions.iter().copied());
        let mut x = vec![0f32; n * d];
        let ids = batch.iter().flat_map(|(_, t)| t.iter());
        for (&id, row) in ids.zip(x.chunks_exact_mut(d)) {
            self.embedding.row_into(id as usize, row);
        }

        for (li, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, c.rms_eps);
            let mut qkv = host_linear(&layer.qkv, &h, n, self.activations);
            let width = q_dim + 2 * kv_dim;
            if let Some(bias) = &layer.qkv_bias {
                for row in qkv.chunks_exact_mut(width) {
                    row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
            for (i, row) in qkv.chunks_exact_mut(width).enumerate() {
                let (q, rest) = row.split_at_mut(q_dim);
                let (cos, sin) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                self.rope(q, cos, sin);
                self.rope(&mut rest[..kv_dim], cos, sin);
            }
            let attn = self.attention(li, &qkv, batch);
            let o = host_linear(&layer.out, &attn, n, self.activations);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

            let h = rms_norm(&x, &layer.ffn_norm, c.rms_eps);
            let gu = host_linear(&layer.gate_up, &h, n, self.activations);
            let f = c.ffn_dim;
            let mut act = vec![0f32; n * f];
            for (a, g) in act.chunks_exact_mut(f).zip(gu.chunks_exact(2 * f)) {
                let (gate, up) = g.split_at(f);
                for ((a, &g), &u) in a.iter_mut().zip(gate).zip(up) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            let down = host_linear(&layer.down, &act, n, self.activations);
            x.iter_mut().zip(&down).for_each(|(x, o)| *x += o);
        }

        // The last new token of each sequence.
        let mut last = Vec::with_capacity(batch.len() * d);
        let mut offset = 0;
        for (cache, tokens) in batch.iter_mut() {
            offset += tokens.len();
            last.extend_from_slice(&x[(offset - 1) * d..offset * d]);
            cache.len += tokens.len();
        }
        let h = rms_norm(&last, &self.norm, c.rms_eps);
        let logits = host_linear(&self.head, &h, batch.len(), self.activations);
        logits
            .chunks_exact(c.vocab_size)
            .map(<[f32]>::to_vec)
            .collect()
    }

    /// Rotates every head of `x` (`[heads * head_dim]`) by its position's angles.
    fn rope(&self, x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.config.head_dim / 2;
        for head in x.chunks_exact_mut(self.config.head_dim) {
            match self.config.architecture.rope_pairs() {
                RopePairs::Adjacent => {
                    for (pair, (c, s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
                RopePairs::HalfApart => {
                    let (a, b) = head.split_at_mut(half);
                    for ((x0, x1), (c, s)) in a.iter_mut().zip(b).zip(cos.iter().zip(sin)) {
                        let (v0, v1) = (*x0, *x1);
                        *x0 = v0 * c - v1 * s;
                        *x1 = v0 * s + v1 * c;
                    }
                }
            }
        }
    }

    /// Appends each sequence's new keys and values to its cache, then attends: returns
    /// `[n, q_dim]`. Each new token sees the cache up to its own position.
    fn attention(&self, li: usize, qkv: &[f32], batch: &mut [(&mut KvCache, &[u32])]) -> Vec<f32> {
        let c = &self.config;
        let hd = c.head_dim;
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let width = q_dim + 2 * kv_dim;
        let group = nh / nkv;
        let scale = (hd as f32).powf(-0.5);

        // Append, and note where each sequence's tokens start.
        let mut starts = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for (cache, tokens) in batch.iter_mut() {
            let s = tokens.len();
            for g in 0..nkv {
                let (keys, values) = &mut cache.heads[li * nkv + g];
                for row in qkv[offset * width..(offset + s) * width].chunks_exact(width) {
                    keys.extend_from_slice(&row[q_dim + g * hd..q_dim + (g + 1) * hd]);
                    let v = q_dim + kv_dim + g * hd;
                    values.extend_from_slice(&row[v..v + hd]);
                }
            }
            starts.push((offset, cache.len, s));
            offset += s;
        }
        let n = offset;

        // One task per (sequence, query head): its rows of the output, [s, hd].
        let tasks: Vec<(usize, usize)> = (0..batch.len())
            .flat_map(|b| (0..nh).map(move |h| (b, h)))
            .collect();
        let caches: Vec<&KvCache> = batch.iter().map(|(c, _)| &**c).collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(b, h)| {
                let (offset, start, s) = starts[b];
                let (keys, values) = &caches[b].heads[li * nkv + h / group];
                let mut out = vec![0f32; s * hd];
                let head = Head {
                    queries: &qkv[offset * width..(offset + s) * width],
                    width,
                    column: h * hd,
                    hd,
                    start,
                    keys,
                    values,
                    scale,
                };
                attend(head, &mut out);
                out
            })
            .collect();
        let mut attn = vec![0f32; n * q_dim];
        for (&(b, h), out) in tasks.iter().zip(results) {
            let (offset, _, s) = starts[b];
            for i in 0..s {
                attn[(offset + i) * q_dim + h * hd..][..hd]
                    .copy_from_slice(&out[i * hd..(i + 1) * hd]);
            }
        }
        attn
    }
}

/// One query head of one sequence: its new rows' queries, and the cache it attends to.
#[derive(Clone, Copy)]
struct Head<'a> {
    /// The new rows of `qkv`, `width` apart; this head's query at `column`.
    queries: &'a [f32],
    width: usize,
    column: usize,
    /// Values per head.
    hd: usize,
    /// Cached positions before the first new row.
    start: usize,
    /// The cache of this head's key-value group, `[positions, hd]`, new rows included.
    keys: &'a [f32],
    values: &'a [f32],
    scale: f32,
}

crate::isa::multiversion! {
    /// Causal attention of one head: row `i` of `out` (`[rows, hd]`) from the query of new
    /// row `i` over positions `..= start + i`.
    fn attend(head: Head<'_>, out: &mut [f32]) {
        let hd = head.hd;
        let mut scores = Vec::with_capacity(head.keys.len() / hd);
        for (i, o) in out.chunks_exact_mut(hd).enumerate() {
            let q = &head.queries[i * head.width + head.column..][..hd];
            let visible = head.start + i + 1;
            scores.clear();
            scores.extend(head.keys[..visible * hd].chunks_exact(hd).map(|k| dot(q, k)));
            softmax_in_place(&mut scores, head.scale);
            for (p, v) in scores.iter().zip(head.values.chunks_exact(hd)) {
                o.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
            }
        }
    }
}

/// Each row of `x` (rows of `weight.len()`) scaled to unit root mean square, times `weight`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = vec![0f32; x.len()];
    for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
    out
}
