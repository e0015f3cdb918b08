//! The Llama decoder on burn: token embedding, RMSNorm, rotary position embedding,
//! grouped-query attention with a KV cache, SwiGLU feed-forward, tied or separate output head.
//!
//! One forward pass advances several independent sequences at once: their new tokens (a whole
//! prompt, or one token each while decoding) are stacked into one activation matrix for the
//! dense layers, where the weights are read, and attention runs per sequence against its own
//! cache. That is what lets a replica batch concurrent requests step by step.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::gguf::Gguf;

use super::GenerateError;
use super::config::LlamaConfig;
use super::linear::{HostMatrix, Linear};

/// Reads a tensor as a row-major `[rows, cols]` host matrix, checking its shape.
fn matrix(gguf: &Gguf, name: &str, rows: usize, cols: usize) -> Result<HostMatrix, GenerateError> {
    let (dims, data) = gguf.dequantize(name)?;
    // ggml lists the row length first.
    if dims != [cols as u64, rows as u64] {
        return Err(GenerateError::Model(format!(
            "tensor {name:?} has shape {dims:?}, expected [{cols}, {rows}]"
        )));
    }
    Ok(HostMatrix::new(rows, cols, data))
}

fn vector<B: Backend>(
    gguf: &Gguf,
    name: &str,
    len: usize,
    device: &B::Device,
) -> Result<Tensor<B, 1>, GenerateError> {
    let (dims, data) = gguf.dequantize(name)?;
    if dims != [len as u64] {
        return Err(GenerateError::Model(format!(
            "tensor {name:?} has shape {dims:?}, expected [{len}]"
        )));
    }
    Ok(Tensor::from_data(TensorData::new(data, [len]), device))
}

/// Stacks matrices with the same column count on top of each other, so that one pass over the
/// input computes several layers (q, k and v; gate and up).
fn stack(parts: Vec<HostMatrix>) -> HostMatrix {
    let cols = parts[0].cols();
    let rows = parts.iter().map(HostMatrix::rows).sum();
    let mut data = Vec::with_capacity(rows * cols);
    for p in &parts {
        for r in 0..p.rows() {
            data.extend_from_slice(p.row(r));
        }
    }
    HostMatrix::new(rows, cols, data)
}

struct Layer<B: Backend> {
    attn_norm: Tensor<B, 1>,
    /// q, k and v stacked: `[d_model + 2 * kv_dim, d_model]`.
    qkv: Linear<B>,
    out: Linear<B>,
    ffn_norm: Tensor<B, 1>,
    /// gate and up stacked: `[2 * ffn_dim, d_model]`.
    gate_up: Linear<B>,
    down: Linear<B>,
}

enum Embedding<B: Backend> {
    Host(HostMatrix),
    Device(Tensor<B, 2>),
}

/// The per-sequence attention cache: keys and values of every position so far, per layer.
#[derive(Debug, Clone)]
pub(crate) struct KvCache<B: Backend> {
    /// Per layer: keys and values, `[n_kv_heads, len, head_dim]`.
    layers: Vec<Option<(Tensor<B, 3>, Tensor<B, 3>)>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub(crate) fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
            len: 0,
        }
    }

    /// Positions cached so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

pub(crate) struct Model<B: Backend> {
    config: LlamaConfig,
    device: B::Device,
    embedding: Embedding<B>,
    layers: Vec<Layer<B>>,
    norm: Tensor<B, 1>,
    head: Linear<B>,
    /// cos and sin of position × frequency, `[context_length, head_dim / 2]`.
    rope_cos: Tensor<B, 2>,
    rope_sin: Tensor<B, 2>,
}

impl<B: Backend> Model<B> {
    /// Loads the weights, dequantized to f32 once. `on_host` keeps the dense layers in host
    /// memory for the CPU path (see `linear.rs`).
    pub(crate) fn load(
        gguf: &Gguf,
        config: LlamaConfig,
        device: B::Device,
        on_host: bool,
    ) -> Result<Self, GenerateError> {
        let c = &config;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let name = |n: &str| format!("blk.{i}.{n}.weight");
            let qkv = stack(vec![
                matrix(gguf, &name("attn_q"), c.d_model, c.d_model)?,
                matrix(gguf, &name("attn_k"), kv_dim, c.d_model)?,
                matrix(gguf, &name("attn_v"), kv_dim, c.d_model)?,
            ]);
            let gate_up = stack(vec![
                matrix(gguf, &name("ffn_gate"), c.ffn_dim, c.d_model)?,
                matrix(gguf, &name("ffn_up"), c.ffn_dim, c.d_model)?,
            ]);
            layers.push(Layer {
                attn_norm: vector(gguf, &name("attn_norm"), c.d_model, &device)?,
                qkv: Linear::new(qkv, on_host, &device),
                out: Linear::new(
                    matrix(gguf, &name("attn_output"), c.d_model, c.d_model)?,
                    on_host,
                    &device,
                ),
                ffn_norm: vector(gguf, &name("ffn_norm"), c.d_model, &device)?,
                gate_up: Linear::new(gate_up, on_host, &device),
                down: Linear::new(
                    matrix(gguf, &name("ffn_down"), c.d_model, c.ffn_dim)?,
                    on_host,
                    &device,
                ),
            });
        }
        let embed = matrix(gguf, "token_embd.weight", c.vocab_size, c.d_model)?;
        // Without output.weight the output head is the embedding matrix (tied weights).
        let head = match gguf.tensor("output.weight") {
            Some(_) => matrix(gguf, "output.weight", c.vocab_size, c.d_model)?,
            None => embed.clone(),
        };
        let embedding = if on_host {
            Embedding::Host(embed)
        } else {
            let (rows, cols) = (embed.rows(), embed.cols());
            let data = (0..rows)
                .flat_map(|r| embed.row(r).to_vec())
                .collect::<Vec<_>>();
            Embedding::Device(Tensor::from_data(
                TensorData::new(data, [rows, cols]),
                &device,
            ))
        };
        let (rope_cos, rope_sin) = rope_tables(c, &device);
        Ok(Model {
            norm: vector(gguf, "output_norm.weight", c.d_model, &device)?,
            head: Linear::new(head, on_host, &device),
            embedding,
            layers,
            rope_cos,
            rope_sin,
            device,
            config,
        })
    }

    pub(crate) fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn embed(&self, ids: &[u32]) -> Tensor<B, 2> {
        let d = self.config.d_model;
        match &self.embedding {
            Embedding::Host(m) => {
                let data: Vec<f32> = ids
                    .iter()
                    .flat_map(|&id| m.row(id as usize).iter().copied())
                    .collect();
                Tensor::from_data(TensorData::new(data, [ids.len(), d]), &self.device)
            }
            Embedding::Device(t) => t.clone().select(0, self.int_tensor(ids)),
        }
    }

    fn int_tensor(&self, values: &[u32]) -> Tensor<B, 1, Int> {
        let v: Vec<i64> = values.iter().map(|&x| x as i64).collect();
        Tensor::from_data(TensorData::new(v, [values.len()]), &self.device)
    }

    fn rms_norm(&self, x: Tensor<B, 2>, weight: &Tensor<B, 1>) -> Tensor<B, 2> {
        let var = x.clone().powi_scalar(2).mean_dim(1);
        let x = x * (var + self.config.rms_eps).sqrt().recip();
        x * weight.clone().unsqueeze::<2>()
    }

    /// Rotates pairs `(2i, 2i+1)` of each head by position × frequency i. llama.cpp's GGUF
    /// conversion permutes the rows of the q and k weights of Llama models so that this
    /// adjacent-pair layout is equivalent to Hugging Face's rotate-half layout.
    fn rope(&self, x: Tensor<B, 3>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, heads, hd] = x.dims();
        let x = x.reshape([n, heads, hd / 2, 2]);
        let x0 = x.clone().narrow(3, 0, 1);
        let x1 = x.narrow(3, 1, 1);
        let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let r1 = x0 * sin.clone() + x1 * cos.clone();
        Tensor::cat(vec![r0, r1], 3).reshape([n, heads, hd])
    }

    /// Feeds each sequence's new tokens through the model, extending its cache, and returns
    /// the logits that follow each sequence's last token.
    pub(crate) fn forward(
        &self,
        batch: &mut [(&mut KvCache<B>, &[u32])],
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let group = nh / nkv;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
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
            ids.extend_from_slice(tokens);
            positions.extend((cache.len..cache.len + tokens.len()).map(|p| p as u32));
        }
        let n = ids.len();
        let pos = self.int_tensor(&positions);
        let cos = self
            .rope_cos
            .clone()
            .select(0, pos.clone())
            .reshape([n, 1, hd / 2, 1]);
        let sin = self
            .rope_sin
            .clone()
            .select(0, pos)
            .reshape([n, 1, hd / 2, 1]);
        let scale = (hd as f64).powf(-0.5);

        let mut x = self.embed(&ids);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(x.clone(), &layer.attn_norm);
            let qkv = layer.qkv.forward(h);
            let q = self.rope(
                qkv.clone().narrow(1, 0, nh * hd).reshape([n, nh, hd]),
                &cos,
                &sin,
            );
            let k = self.rope(
                qkv.clone()
                    .narrow(1, nh * hd, nkv * hd)
                    .reshape([n, nkv, hd]),
                &cos,
                &sin,
            );
            let v = qkv
                .narrow(1, (nh + nkv) * hd, nkv * hd)
                .reshape([n, nkv, hd]);

            let mut outputs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for (cache, tokens) in batch.iter_mut() {
                let s = tokens.len();
                let start = cache.len;
                // [s, heads, hd] -> [heads, s, hd]
                let qj = q.clone().narrow(0, offset, s).swap_dims(0, 1);
                let kj = k.clone().narrow(0, offset, s).swap_dims(0, 1);
                let vj = v.clone().narrow(0, offset, s).swap_dims(0, 1);
                let (keys, values) = match cache.layers[li].take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, kj], 1), Tensor::cat(vec![pv, vj], 1)),
                    None => (kj, vj),
                };
                let total = start + s;
                // Query head h reads key/value head h / group: group the query heads per kv head.
                let qg = qj.reshape([nkv, group * s, hd]);
                let mut scores = qg.matmul(keys.clone().swap_dims(1, 2)) * scale;
                if s > 1 {
                    scores = scores + self.causal_mask(group, s, start, total).unsqueeze::<3>();
                }
                let probs = softmax(scores, 2);
                let out = probs
                    .matmul(values.clone())
                    .reshape([nh, s, hd])
                    .swap_dims(0, 1)
                    .reshape([s, nh * hd]);
                outputs.push(out);
                cache.layers[li] = Some((keys, values));
                offset += s;
            }
            let attn = if outputs.len() == 1 {
                outputs.pop().expect("one")
            } else {
                Tensor::cat(outputs, 0)
            };
            x = x + layer.out.forward(attn);

            let h = self.rms_norm(x.clone(), &layer.ffn_norm);
            let gu = layer.gate_up.forward(h);
            let gate = gu.clone().narrow(1, 0, c.ffn_dim);
            let up = gu.narrow(1, c.ffn_dim, c.ffn_dim);
            x = x + layer.down.forward(silu(gate) * up);
        }

        let mut last = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for (cache, tokens) in batch.iter_mut() {
            offset += tokens.len();
            last.push(offset as u32 - 1);
            cache.len += tokens.len();
        }
        let x = x.select(0, self.int_tensor(&last));
        let logits = self.head.forward(self.rms_norm(x, &self.norm));
        let vocab = c.vocab_size;
        let flat = logits
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| GenerateError::Model(format!("reading logits: {e:?}")))?;
        Ok(flat.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Additive mask `[group * s, total]`: query i of the new block (at position `start + i`)
    /// sees keys up to its own position.
    fn causal_mask(&self, group: usize, s: usize, start: usize, total: usize) -> Tensor<B, 2> {
        let mut mask = vec![0f32; group * s * total];
        for g in 0..group {
            for i in 0..s {
                let row = &mut mask[(g * s + i) * total..(g * s + i + 1) * total];
                row[start + i + 1..].fill(f32::NEG_INFINITY);
            }
        }
        Tensor::from_data(TensorData::new(mask, [group * s, total]), &self.device)
    }
}

fn rope_tables<B: Backend>(c: &LlamaConfig, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = c.head_dim / 2;
    // Same arithmetic as Hugging Face: inv_freq in f32, then position × inv_freq in f32.
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / c.head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(c.context_length * half);
    let mut sin = Vec::with_capacity(c.context_length * half);
    for p in 0..c.context_length {
        for f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [c.context_length, half]), device),
        Tensor::from_data(TensorData::new(sin, [c.context_length, half]), device),
    )
}
