//! The Llama decoder on burn, for GPUs: token embedding, RMSNorm, rotary position embedding,
//! grouped-query attention with a KV cache, SwiGLU feed-forward, tied or separate output head.
//! The CPU runs the same arithmetic without burn (`cpu.rs`); this module also holds what both
//! read from the file (tensors, shapes, rotary tables).
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
use super::config::{LlamaConfig, RopePairs};
use super::linear::HostMatrix;

/// Reads a tensor as a row-major `[rows, cols]` host matrix in its stored type, checking its
/// shape.
pub(crate) fn host_matrix(
    gguf: &Gguf,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<HostMatrix, GenerateError> {
    let shared = gguf.tensor_shared(name)?;
    let info = gguf.tensor(name).expect("the tensor is there");
    // ggml lists the row length first.
    if info.dims != [cols as u64, rows as u64] {
        return Err(GenerateError::Model(format!(
            "tensor {name:?} has shape {:?}, expected [{cols}, {rows}]",
            info.dims
        )));
    }
    HostMatrix::shared(rows, cols, info.dtype, shared.data, shared.range)
        .map_err(|e| GenerateError::Model(format!("tensor {name:?}: {e}")))
}

pub(crate) fn host_vector(gguf: &Gguf, name: &str, len: usize) -> Result<Vec<f32>, GenerateError> {
    let (dims, data) = gguf.dequantize(name)?;
    if dims != [len as u64] {
        return Err(GenerateError::Model(format!(
            "tensor {name:?} has shape {dims:?}, expected [{len}]"
        )));
    }
    Ok(data)
}

fn vector<B: Backend>(
    gguf: &Gguf,
    name: &str,
    len: usize,
    device: &B::Device,
) -> Result<Tensor<B, 1>, GenerateError> {
    let data = host_vector(gguf, name, len)?;
    Ok(Tensor::from_data(TensorData::new(data, [len]), device))
}

/// Checks that every tensor the decoder reads is in the file with its shape (ggml order),
/// without reading any data: the element types were checked when the table was parsed.
pub(crate) fn check_tensors(gguf: &Gguf, c: &LlamaConfig) -> Result<(), GenerateError> {
    let (d, q_dim, kv_dim) = (
        c.d_model as u64,
        (c.n_heads * c.head_dim) as u64,
        (c.n_kv_heads * c.head_dim) as u64,
    );
    let (ffn, vocab) = (c.ffn_dim as u64, c.vocab_size as u64);
    let mut expected: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![d, vocab]),
        ("output_norm.weight".into(), vec![d]),
    ];
    if gguf.tensor("output.weight").is_some() {
        expected.push(("output.weight".into(), vec![d, vocab]));
    }
    for i in 0..c.n_layers {
        let name = |n: &str| format!("blk.{i}.{n}");
        expected.extend([
            (name("attn_norm.weight"), vec![d]),
            (name("attn_q.weight"), vec![d, q_dim]),
            (name("attn_k.weight"), vec![d, kv_dim]),
            (name("attn_v.weight"), vec![d, kv_dim]),
            (name("attn_output.weight"), vec![q_dim, d]),
            (name("ffn_norm.weight"), vec![d]),
            (name("ffn_gate.weight"), vec![d, ffn]),
            (name("ffn_up.weight"), vec![d, ffn]),
            (name("ffn_down.weight"), vec![ffn, d]),
        ]);
        if c.architecture.qkv_bias() {
            expected.extend([
                (name("attn_q.bias"), vec![q_dim]),
                (name("attn_k.bias"), vec![kv_dim]),
                (name("attn_v.bias"), vec![kv_dim]),
            ]);
        }
    }
    for (name, dims) in expected {
        let info = gguf
            .tensor(&name)
            .ok_or_else(|| GenerateError::Model(format!("tensor {name:?} is not in the file")))?;
        if info.dims != dims {
            return Err(GenerateError::Model(format!(
                "tensor {name:?} has shape {:?}, expected {dims:?}",
                info.dims
            )));
        }
    }
    Ok(())
}

/// A dense layer without bias on the device: weights `[in, out]`.
struct Linear<B: Backend>(Tensor<B, 2>);

impl<B: Backend> Linear<B> {
    /// From `[out_i, in]` host matrices whose outputs are concatenated, dequantized to f32.
    fn new(parts: Vec<HostMatrix>, device: &B::Device) -> Self {
        let cols = parts[0].cols();
        let rows: usize = parts.iter().map(HostMatrix::rows).sum();
        let data: Vec<f32> = parts.iter().flat_map(HostMatrix::to_f32).collect();
        let t = Tensor::<B, 2>::from_data(TensorData::new(data, [rows, cols]), device);
        Linear(t.transpose())
    }

    /// `x` is `[n, in]`; returns `[n, out]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.0.clone())
    }
}

struct Layer<B: Backend> {
    attn_norm: Tensor<B, 1>,
    /// q, k and v: `[q_dim + 2 * kv_dim, d_model]`.
    qkv: Linear<B>,
    /// Their biases (Qwen2), concatenated the same way.
    qkv_bias: Option<Tensor<B, 1>>,
    out: Linear<B>,
    ffn_norm: Tensor<B, 1>,
    /// gate and up: `[2 * ffn_dim, d_model]`.
    gate_up: Linear<B>,
    down: Linear<B>,
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
    embedding: Tensor<B, 2>,
    layers: Vec<Layer<B>>,
    norm: Tensor<B, 1>,
    head: Linear<B>,
    /// cos and sin of position × frequency, `[context_length, head_dim / 2]`.
    rope_cos: Tensor<B, 2>,
    rope_sin: Tensor<B, 2>,
}

impl<B: Backend> Model<B> {
    /// Loads the weights onto the device, dequantized to f32.
    pub(crate) fn load(
        gguf: &Gguf,
        config: LlamaConfig,
        device: B::Device,
    ) -> Result<Self, GenerateError> {
        check_tensors(gguf, &config)?;
        let c = &config;
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let matrix = |name: &str, rows, cols| host_matrix(gguf, name, rows, cols);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let name = |n: &str| format!("blk.{i}.{n}.weight");
            let qkv = vec![
                matrix(&name("attn_q"), q_dim, c.d_model)?,
                matrix(&name("attn_k"), kv_dim, c.d_model)?,
                matrix(&name("attn_v"), kv_dim, c.d_model)?,
            ];
            let qkv_bias = if c.architecture.qkv_bias() {
                let bias = |n: &str, len| host_vector(gguf, &format!("blk.{i}.{n}.bias"), len);
                let mut b = bias("attn_q", q_dim)?;
                b.extend(bias("attn_k", kv_dim)?);
                b.extend(bias("attn_v", kv_dim)?);
                let len = b.len();
                Some(Tensor::from_data(TensorData::new(b, [len]), &device))
            } else {
                None
            };
            let gate_up = vec![
                matrix(&name("ffn_gate"), c.ffn_dim, c.d_model)?,
                matrix(&name("ffn_up"), c.ffn_dim, c.d_model)?,
            ];
            layers.push(Layer {
                attn_norm: vector(gguf, &name("attn_norm"), c.d_model, &device)?,
                qkv: Linear::new(qkv, &device),
                qkv_bias,
                out: Linear::new(
                    vec![matrix(&name("attn_output"), c.d_model, q_dim)?],
                    &device,
                ),
                ffn_norm: vector(gguf, &name("ffn_norm"), c.d_model, &device)?,
                gate_up: Linear::new(gate_up, &device),
                down: Linear::new(
                    vec![matrix(&name("ffn_down"), c.d_model, c.ffn_dim)?],
                    &device,
                ),
            });
        }
        let embed = matrix("token_embd.weight", c.vocab_size, c.d_model)?;
        // Without output.weight the output head is the embedding matrix (tied weights).
        let head = match gguf.tensor("output.weight") {
            Some(_) => matrix("output.weight", c.vocab_size, c.d_model)?,
            None => embed.clone(),
        };
        let head = Linear::new(vec![head], &device);
        let embedding = Tensor::from_data(
            TensorData::new(embed.to_f32(), [embed.rows(), embed.cols()]),
            &device,
        );
        // Llama 3.1's long-context frequency factors: each frequency divided by its factor.
        let factors = match gguf.tensor("rope_freqs.weight") {
            Some(_) => Some(host_vector(gguf, "rope_freqs.weight", c.head_dim / 2)?),
            None => None,
        };
        let freqs = rope_frequencies(c, factors.as_deref());
        let (cos, sin) = rope_values(&freqs, 0..c.context_length);
        let half = c.head_dim / 2;
        let table = |v| Tensor::from_data(TensorData::new(v, [c.context_length, half]), &device);
        let (rope_cos, rope_sin) = (table(cos), table(sin));
        Ok(Model {
            norm: vector(gguf, "output_norm.weight", c.d_model, &device)?,
            head,
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
        self.embedding.clone().select(0, self.int_tensor(ids))
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

    /// Rotates each head's dimension pairs by position × frequency. `cos` and `sin` are
    /// `[n, 1, head_dim / 2]`. llama.cpp's GGUF conversion permutes the rows of the q and k
    /// weights of Llama models so that adjacent pairs are equivalent to Hugging Face's
    /// rotate-half layout; Qwen2 files keep rotate-half ([`RopePairs`]).
    fn rope(&self, x: Tensor<B, 3>, cos: &Tensor<B, 3>, sin: &Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, heads, hd] = x.dims();
        let half = hd / 2;
        match self.config.architecture.rope_pairs() {
            RopePairs::Adjacent => {
                let x = x.reshape([n, heads, half, 2]);
                let (cos, sin) = (cos.clone().unsqueeze_dim(3), sin.clone().unsqueeze_dim(3));
                let x0 = x.clone().narrow(3, 0, 1);
                let x1 = x.narrow(3, 1, 1);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::cat(vec![r0, r1], 3).reshape([n, heads, hd])
            }
            RopePairs::HalfApart => {
                let x0 = x.clone().narrow(2, 0, half);
                let x1 = x.narrow(2, half, half);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin.clone() + x1 * cos.clone();
                Tensor::cat(vec![r0, r1], 2)
            }
        }
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
            .reshape([n, 1, hd / 2]);
        let sin = self.rope_sin.clone().select(0, pos).reshape([n, 1, hd / 2]);
        let scale = (hd as f64).powf(-0.5);

        let mut x = self.embed(&ids);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(x.clone(), &layer.attn_norm);
            let mut qkv = layer.qkv.forward(h);
            if let Some(bias) = &layer.qkv_bias {
                qkv = qkv + bias.clone().unsqueeze::<2>();
            }
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

/// The rotary frequencies, `head_dim / 2` of them, divided by `factors` (Llama 3.1) and by
/// the linear scale. Same arithmetic as Hugging Face: in f32.
pub(crate) fn rope_frequencies(c: &LlamaConfig, factors: Option<&[f32]>) -> Vec<f32> {
    (0..c.head_dim / 2)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf((2 * i) as f32 / c.head_dim as f32);
            f / factors.map_or(1.0, |fs| fs[i]) / c.rope_scale
        })
        .collect()
}

/// cos and sin of position × frequency for `positions`, `[positions.len(), freqs.len()]` each.
pub(crate) fn rope_values(
    freqs: &[f32],
    positions: impl Iterator<Item = usize>,
) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in positions {
        for f in freqs {
            // position × inv_freq in f32, as Hugging Face computes it.
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}
