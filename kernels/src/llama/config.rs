//! The hyperparameters of a Llama-family model, read from GGUF metadata.

use crate::gguf::{Gguf, GgufError};

use super::GenerateError;

/// The decoder families this crate runs. GGUF files name theirs in `general.architecture`,
/// which also prefixes their hyperparameter keys (`llama.block_count`, `qwen2.block_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1, 2 and 3, Mistral, SmolLM and the other models llama.cpp converts as `llama`:
    /// no biases; q and k rows permuted at conversion so rotary pairs are adjacent.
    Llama,
    /// Qwen2 and Qwen2.5: biases on q, k and v; rotary pairs are half a head apart.
    Qwen2,
}

impl Architecture {
    /// The architectures by their GGUF name.
    pub const ALL: [(&'static str, Architecture); 2] = [
        ("llama", Architecture::Llama),
        ("qwen2", Architecture::Qwen2),
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .expect("every architecture is listed")
    }

    /// Whether q, k and v have biases.
    pub fn qkv_bias(self) -> bool {
        self == Architecture::Qwen2
    }

    /// How rotary embeddings pair a head's dimensions.
    pub fn rope_pairs(self) -> RopePairs {
        match self {
            Architecture::Llama => RopePairs::Adjacent,
            Architecture::Qwen2 => RopePairs::HalfApart,
        }
    }
}

/// Which two dimensions of a head one rotary frequency turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// `(2i, 2i + 1)`: llama.cpp's layout for Llama GGUFs (the converter permuted q and k).
    Adjacent,
    /// `(i, i + head_dim / 2)`: Hugging Face's rotate-half, kept by Qwen2 GGUFs.
    HalfApart,
}

/// Shape and constants of the decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    /// Positions are divided by this before rotation (linear RoPE scaling; 1 without).
    pub rope_scale: f32,
    pub rms_eps: f32,
}

impl LlamaConfig {
    /// Reads the `{architecture}.*` keys. The file must name an architecture of
    /// [`Architecture::ALL`].
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GenerateError> {
        let arch_name = gguf.get_str("general.architecture")?;
        let architecture = Architecture::from_name(arch_name).ok_or_else(|| {
            let known: Vec<&str> = Architecture::ALL.iter().map(|(n, _)| *n).collect();
            GenerateError::Model(format!(
                "general.architecture is {arch_name:?}; this runtime runs {}",
                known.join(" and ")
            ))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let usize_key = |k: &str| -> Result<usize, GenerateError> {
            let k = key(k);
            let v = gguf.get_u64(&k)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 24)
                .ok_or_else(|| GenerateError::Model(format!("{k} = {v} is out of range")))
        };
        let optional = |k: &str| -> Result<Option<usize>, GenerateError> {
            match usize_key(k) {
                Ok(v) => Ok(Some(v)),
                Err(GenerateError::Gguf(GgufError::MissingKey(_))) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let d_model = usize_key("embedding_length")?;
        let n_heads = usize_key("attention.head_count")?;
        let n_kv_heads = usize_key("attention.head_count_kv")?;
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(GenerateError::Model(format!(
                "{n_heads} heads are not a multiple of {n_kv_heads} key/value heads"
            )));
        }
        let head_dim = match optional("attention.key_length")? {
            Some(k) => k,
            None if d_model.is_multiple_of(n_heads) => d_model / n_heads,
            None => {
                return Err(GenerateError::Model(format!(
                    "{n_heads} heads do not divide a width of {d_model}"
                )));
            }
        };
        if let Some(v) = optional("attention.value_length")?
            && v != head_dim
        {
            return Err(GenerateError::Model(format!(
                "value heads of {v} dimensions differ from key heads of {head_dim}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(GenerateError::Model(format!(
                "head dimension {head_dim} is odd"
            )));
        }
        if let Some(rope_dims) = optional("rope.dimension_count")?
            && rope_dims != head_dim
        {
            return Err(GenerateError::Model(format!(
                "partial rotary embeddings ({rope_dims} of {head_dim} dimensions) are not supported"
            )));
        }
        if optional("expert_count")?.is_some_and(|n| n > 1) {
            return Err(GenerateError::Model(
                "mixture-of-experts models are not supported".into(),
            ));
        }
        let tokens = gguf.get_array("tokenizer.ggml.tokens")?.len();
        let vocab_size = optional("vocab_size")?.unwrap_or(tokens);
        let float_key = |k: &str, default: f64| -> Result<f32, GenerateError> {
            let k = key(k);
            match gguf.get_f64(&k) {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(v as f32),
                Ok(v) => Err(GenerateError::Model(format!(
                    "{k} = {v} is not a positive number"
                ))),
                Err(GgufError::MissingKey(_)) => Ok(default as f32),
                Err(e) => Err(e.into()),
            }
        };
        let rope_scale = match gguf.get_str(&key("rope.scaling.type")) {
            Err(GgufError::MissingKey(_)) => 1.0,
            Ok("none") => 1.0,
            Ok("linear") => float_key("rope.scaling.factor", 1.0)?,
            Ok(other) => {
                return Err(GenerateError::Model(format!(
                    "rope scaling {other:?} is not supported (linear is)"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(LlamaConfig {
            architecture,
            n_layers: usize_key("block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: usize_key("feed_forward_length")?,
            vocab_size,
            context_length: usize_key("context_length")?,
            rope_theta: float_key("rope.freq_base", 10_000.0)?,
            rope_scale,
            rms_eps: float_key("attention.layer_norm_rms_epsilon", 1e-5)?,
        })
    }

    /// Bytes the key/value cache of one sequence takes per position (f32 keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * 4
    }
}
