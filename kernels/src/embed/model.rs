//! The BERT encoder's forward pass on a burn backend (CUDA; the CPU runs [`super::cpu`]), then the pooling (mean or `[CLS]`) and
//! the L2 normalization the model's sentence-transformers files ask for.
//!
//! The embedding tables stay in host memory: looking up a batch's rows there and uploading
//! `[tokens, hidden]` is cheaper than keeping a 47 MB table on the device for a gather.

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::EmbedError;
use super::config::{BertConfig, Pooling};
use super::tokenize::Batch;
use super::weights::{HostTensor, Weights};

/// Added to the attention scores of padding keys: far below any real score, yet finite so
/// that no arithmetic on it makes a NaN.
const MASKED: f32 = -1e30;

/// `y = x · W + b` with `W` stored `[in, out]` (transposed from the checkpoint's `[out, in]`).
struct Linear<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Tensor<B, 2>,
}

impl<B: Backend> Linear<B> {
    /// Joins the checkpoint's `[out, in]` matrices `names` (stacked along `out`) into one layer.
    fn load(
        w: &Weights,
        names: &[&str],
        out: usize,
        inp: usize,
        device: &B::Device,
    ) -> Result<Self, EmbedError> {
        let total = out * names.len();
        let mut weight = vec![0f32; inp * total];
        let mut bias = Vec::with_capacity(total);
        for (part, name) in names.iter().enumerate() {
            let m = w.get(&format!("{name}.weight"), &[out, inp])?;
            for (o, row) in m.data.chunks_exact(inp).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    weight[i * total + part * out + o] = *v;
                }
            }
            bias.extend(w.get(&format!("{name}.bias"), &[out])?.data);
        }
        Ok(Linear {
            weight: Tensor::from_data(TensorData::new(weight, [inp, total]), device),
            bias: Tensor::from_data(TensorData::new(bias, [1, total]), device),
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.clone()) + self.bias.clone()
    }
}

struct LayerNorm<B: Backend> {
    gamma: Tensor<B, 2>,
    beta: Tensor<B, 2>,
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    fn load(
        w: &Weights,
        name: &str,
        dim: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self, EmbedError> {
        let row = |t: HostTensor| Tensor::from_data(TensorData::new(t.data, [1, dim]), device);
        Ok(LayerNorm {
            gamma: row(w.get(&format!("{name}.weight"), &[dim])?),
            beta: row(w.get(&format!("{name}.bias"), &[dim])?),
            eps,
        })
    }

    /// Normalizes each row of `[n, dim]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let centered = x.clone() - x.mean_dim(1);
        let var = centered.clone().powi_scalar(2).mean_dim(1);
        centered * (var + self.eps).sqrt().recip() * self.gamma.clone() + self.beta.clone()
    }
}

struct Layer<B: Backend> {
    qkv: Linear<B>,
    attn_out: Linear<B>,
    attn_norm: LayerNorm<B>,
    up: Linear<B>,
    down: Linear<B>,
    out_norm: LayerNorm<B>,
}

/// all-MiniLM-L6-v2 (or any BERT encoder of the supported shape) on backend `B`.
pub(crate) struct Bert<B: Backend> {
    config: BertConfig,
    device: B::Device,
    /// `[vocab, hidden]`, `[positions, hidden]` and row 0 of the token-type table, on the host.
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: LayerNorm<B>,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Bert<B> {
    pub fn load(w: &Weights, config: BertConfig, device: B::Device) -> Result<Self, EmbedError> {
        let (h, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let word = w
            .get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?
            .data;
        let position = w
            .get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?
            .data;
        let mut token_type = w
            .get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?
            .data;
        token_type.truncate(h); // every text is one segment: type 0
        let embed_norm = LayerNorm::load(w, "embeddings.LayerNorm", h, eps, &device)?;
        let layers = (0..config.num_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let attn = |s: &str| format!("{p}.attention.self.{s}");
                Ok(Layer {
                    qkv: Linear::load(
                        w,
                        &[&attn("query"), &attn("key"), &attn("value")],
                        h,
                        h,
                        &device,
                    )?,
                    attn_out: Linear::load(
                        w,
                        &[&format!("{p}.attention.output.dense")],
                        h,
                        h,
                        &device,
                    )?,
                    attn_norm: LayerNorm::load(
                        w,
                        &format!("{p}.attention.output.LayerNorm"),
                        h,
                        eps,
                        &device,
                    )?,
                    up: Linear::load(w, &[&format!("{p}.intermediate.dense")], ff, h, &device)?,
                    down: Linear::load(w, &[&format!("{p}.output.dense")], h, ff, &device)?,
                    out_norm: LayerNorm::load(
                        w,
                        &format!("{p}.output.LayerNorm"),
                        h,
                        eps,
                        &device,
                    )?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        Ok(Bert {
            config,
            device,
            word,
            position,
            token_type,
            embed_norm,
            layers,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The normalized sentence embeddings of a padded batch, one row of `hidden` per text.
    pub fn embed(&self, batch: &Batch) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (b, t, h) = (batch.len(), batch.width(), self.config.hidden_size);
        let (nh, hd) = (self.config.num_heads, self.config.head_dim());
        if b == 0 {
            return Ok(Vec::new());
        }

        let x = self.embed_tokens(batch);
        let mask = batch.mask_f32();
        let key_bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m > 0.0 { 0.0 } else { MASKED })
            .collect();
        let key_bias =
            Tensor::<B, 4>::from_data(TensorData::new(key_bias, [b, 1, 1, t]), &self.device);
        let scale = (hd as f64).powf(-0.5);

        let mut x = self.embed_norm.forward(x);
        for layer in &self.layers {
            let qkv = layer.qkv.forward(x.clone());
            let heads = |i: usize| {
                qkv.clone()
                    .narrow(1, i * h, h)
                    .reshape([b, t, nh, hd])
                    .swap_dims(1, 2)
            };
            let (q, k, v) = (heads(0), heads(1), heads(2));
            let scores = q.matmul(k.swap_dims(2, 3)) * scale + key_bias.clone();
            let context = softmax(scores, 3)
                .matmul(v)
                .swap_dims(1, 2)
                .reshape([b * t, h]);
            x = layer.attn_norm.forward(layer.attn_out.forward(context) + x);
            let ff = layer.down.forward(gelu(layer.up.forward(x.clone())));
            x = layer.out_norm.forward(ff + x);
        }

        let pooled = match self.config.pooling {
            Pooling::Mean => {
                // The mean over the real tokens.
                let mask =
                    Tensor::<B, 3>::from_data(TensorData::new(mask, [b, t, 1]), &self.device);
                let counts = mask.clone().sum_dim(1); // [b, 1, 1], at least 2 ([CLS] and [SEP])
                ((x.reshape([b, t, h]) * mask).sum_dim(1) / counts).reshape([b, h])
            }
            Pooling::Cls => x.reshape([b, t, h]).narrow(1, 0, 1).reshape([b, h]),
        };
        let pooled = if self.config.normalize {
            let norm = pooled
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        };
        let flat = pooled
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| EmbedError::Backend(format!("{e:?}")))?;
        Ok(flat.chunks_exact(h).map(<[f32]>::to_vec).collect())
    }

    /// Word + position + token-type embeddings of every token, `[batch * width, hidden]`.
    fn embed_tokens(&self, batch: &Batch) -> Tensor<B, 2> {
        let (t, h) = (batch.width(), self.config.hidden_size);
        let mut out = vec![0f32; batch.len() * t * h];
        for (row, ids) in out.chunks_exact_mut(t * h).zip(batch.ids_rows()) {
            for (pos, (dst, &id)) in row.chunks_exact_mut(h).zip(ids).enumerate() {
                let word = &self.word[id as usize * h..][..h];
                let position = &self.position[pos * h..][..h];
                for (((d, w), p), ty) in
                    dst.iter_mut().zip(word).zip(position).zip(&self.token_type)
                {
                    *d = w + p + ty;
                }
            }
        }
        Tensor::from_data(TensorData::new(out, [batch.len() * t, h]), &self.device)
    }
}
