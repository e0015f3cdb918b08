//! The hyperparameters of a Llama-architecture model, read from GGUF metadata.

use crate::gguf::{Gguf, GgufError};

use super::GenerateError;

/// Shape and constants of the decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

impl LlamaConfig {
    /// Reads the `llama.*` keys. The file must say its architecture is `llama`.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GenerateError> {
        let arch = gguf.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(GenerateError::Model(format!(
                "general.architecture is {arch:?}; only \"llama\" is supported"
            )));
        }
        let usize_key = |key: &str| -> Result<usize, GenerateError> {
            let v = gguf.get_u64(key)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 24)
                .ok_or_else(|| GenerateError::Model(format!("{key} = {v} is out of range")))
        };
        let d_model = usize_key("llama.embedding_length")?;
        let n_heads = usize_key("llama.attention.head_count")?;
        let n_kv_heads = usize_key("llama.attention.head_count_kv")?;
        if !d_model.is_multiple_of(n_heads) || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(GenerateError::Model(format!(
                "{n_heads} heads and {n_kv_heads} key/value heads do not divide a width of {d_model}"
            )));
        }
        let head_dim = d_model / n_heads;
        if !head_dim.is_multiple_of(2) {
            return Err(GenerateError::Model(format!(
                "head dimension {head_dim} is odd"
            )));
        }
        if let Ok(rope_dims) = gguf.get_u64("llama.rope.dimension_count")
            && rope_dims as usize != head_dim
        {
            return Err(GenerateError::Model(format!(
                "partial rotary embeddings ({rope_dims} of {head_dim} dimensions) are not supported"
            )));
        }
        let tokens = gguf.get_array("tokenizer.ggml.tokens")?.len();
        let vocab_size = match gguf.get_u64("llama.vocab_size") {
            Ok(v) => v as usize,
            Err(GgufError::MissingKey(_)) => tokens,
            Err(e) => return Err(e.into()),
        };
        let float_key = |key: &str, default: f64| -> Result<f32, GenerateError> {
            match gguf.get_f64(key) {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(v as f32),
                Ok(v) => Err(GenerateError::Model(format!(
                    "{key} = {v} is not a positive number"
                ))),
                Err(GgufError::MissingKey(_)) => Ok(default as f32),
                Err(e) => Err(e.into()),
            }
        };
        Ok(LlamaConfig {
            n_layers: usize_key("llama.block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: usize_key("llama.feed_forward_length")?,
            vocab_size,
            context_length: usize_key("llama.context_length")?,
            rope_theta: float_key("llama.rope.freq_base", 10_000.0)?,
            rms_eps: float_key("llama.attention.layer_norm_rms_epsilon", 1e-5)?,
        })
    }
}
