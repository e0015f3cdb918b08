//! The encoder's shape, read from the model folder's `config.json` (Hugging Face BERT) and
//! `sentence_bert_config.json` (sentence-transformers' maximum sequence length).

use std::path::Path;

use serde::Deserialize;

use super::EmbedError;

/// What the encoder needs to know about a BERT checkpoint. Only what this implementation
/// supports is accepted: absolute position embeddings, exact (erf) GELU.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    /// Word pieces per text, `[CLS]` and `[SEP]` included; longer texts are truncated.
    pub max_tokens: usize,
    /// How token states become one vector (sentence-transformers' `1_Pooling/config.json`).
    pub pooling: Pooling,
    /// Whether vectors are scaled to unit length (a `Normalize` module in `modules.json`).
    pub normalize: bool,
}

/// How a text's token states are pooled into its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the text's real tokens (all-MiniLM-L6-v2).
    Mean,
    /// The `[CLS]` token's state (bge-small-en-v1.5).
    Cls,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

impl PoolingConfig {
    fn pooling(&self) -> Result<Pooling, String> {
        let others = [
            (self.pooling_mode_max_tokens, "max"),
            (self.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len"),
            (self.pooling_mode_weightedmean_tokens, "weightedmean"),
            (self.pooling_mode_lasttoken, "lasttoken"),
        ];
        if let Some((_, name)) = others.iter().find(|(on, _)| *on) {
            return Err(format!(
                "{name} pooling is not supported (mean and cls are)"
            ));
        }
        match (self.pooling_mode_cls_token, self.pooling_mode_mean_tokens) {
            (true, false) => Ok(Pooling::Cls),
            (false, true) => Ok(Pooling::Mean),
            (true, true) => Err("cls and mean pooling together are not supported".into()),
            (false, false) => Err("no pooling mode is set".into()),
        }
    }
}

/// One entry of sentence-transformers' `modules.json`.
#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "one")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_position")]
    position_embedding_type: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads `config.json` and, when present, `sentence_bert_config.json` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let path = dir.join("config.json");
        let text = read(&path)?;
        let hf: HfConfig =
            serde_json::from_str(&text).map_err(|e| EmbedError::bad_file(&path, e))?;
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_path.is_file() {
            let st: SentenceBertConfig = serde_json::from_str(&read(&st_path)?)
                .map_err(|e| EmbedError::bad_file(&st_path, e))?;
            Some(st.max_seq_length)
        } else {
            None
        };
        let mut config =
            Self::from_parts(hf, max_seq_length).map_err(|e| EmbedError::bad_file(&path, e))?;
        // Without sentence-transformers' files: mean pooling, normalized, as for MiniLM.
        let pooling_path = dir.join("1_Pooling/config.json");
        if pooling_path.is_file() {
            let p: PoolingConfig = serde_json::from_str(&read(&pooling_path)?)
                .map_err(|e| EmbedError::bad_file(&pooling_path, e))?;
            config.pooling = p
                .pooling()
                .map_err(|e| EmbedError::bad_file(&pooling_path, e))?;
        }
        let modules_path = dir.join("modules.json");
        if modules_path.is_file() {
            let modules: Vec<Module> = serde_json::from_str(&read(&modules_path)?)
                .map_err(|e| EmbedError::bad_file(&modules_path, e))?;
            config.normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
            if let Some(m) = modules.iter().find(|m| {
                !m.kind.ends_with(".Transformer")
                    && !m.kind.ends_with(".Pooling")
                    && !m.kind.ends_with(".Normalize")
            }) {
                return Err(EmbedError::bad_file(
                    &modules_path,
                    format!(
                        "module {:?} is not supported (Transformer, Pooling and Normalize are)",
                        m.kind
                    ),
                ));
            }
        }
        Ok(config)
    }

    /// Parses the two JSON documents (the second optional), for tests and in-memory models.
    pub fn from_json(config: &str, sentence_bert_config: Option<&str>) -> Result<Self, String> {
        let hf: HfConfig = serde_json::from_str(config).map_err(|e| e.to_string())?;
        let max = match sentence_bert_config {
            Some(s) => Some(
                serde_json::from_str::<SentenceBertConfig>(s)
                    .map_err(|e| e.to_string())?
                    .max_seq_length,
            ),
            None => None,
        };
        Self::from_parts(hf, max)
    }

    fn from_parts(hf: HfConfig, max_seq_length: Option<usize>) -> Result<Self, String> {
        if hf.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                hf.hidden_act
            ));
        }
        if hf.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                hf.position_embedding_type
            ));
        }
        if hf.num_attention_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                hf.hidden_size, hf.num_attention_heads
            ));
        }
        if hf.vocab_size == 0
            || hf.hidden_size == 0
            || hf.max_position_embeddings < 3
            || hf.type_vocab_size == 0
        {
            return Err("vocab_size, hidden_size, type_vocab_size and max_position_embeddings must be positive".into());
        }
        // sentence-transformers truncates at max_seq_length; without it, the position table
        // is the limit.
        let max_tokens = max_seq_length
            .unwrap_or(hf.max_position_embeddings)
            .min(hf.max_position_embeddings);
        if max_tokens < 3 {
            return Err(format!(
                "max_seq_length {max_tokens} leaves no room for text between [CLS] and [SEP]"
            ));
        }
        Ok(BertConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            max_position_embeddings: hf.max_position_embeddings,
            type_vocab_size: hf.type_vocab_size,
            layer_norm_eps: hf.layer_norm_eps,
            max_tokens,
            pooling: Pooling::Mean,
            normalize: true,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

fn read(path: &Path) -> Result<String, EmbedError> {
    std::fs::read_to_string(path).map_err(|source| EmbedError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
        "num_attention_heads": 12, "num_hidden_layers": 6, "type_vocab_size": 2, "vocab_size": 30522}"#;

    #[test]
    fn reads_minilm() {
        let c = BertConfig::from_json(
            MINILM,
            Some(r#"{"max_seq_length": 256, "do_lower_case": false}"#),
        )
        .unwrap();
        assert_eq!(
            (c.hidden_size, c.num_layers, c.num_heads, c.head_dim()),
            (384, 6, 12, 32)
        );
        assert_eq!(c.max_tokens, 256);
        // Without sentence-transformers' config, the position table is the limit.
        assert_eq!(BertConfig::from_json(MINILM, None).unwrap().max_tokens, 512);
        // A max_seq_length beyond the position table is clamped to it.
        assert_eq!(
            BertConfig::from_json(MINILM, Some(r#"{"max_seq_length": 4096}"#))
                .unwrap()
                .max_tokens,
            512
        );
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let relu = MINILM.replace("\"gelu\"", "\"relu\"");
        assert!(
            BertConfig::from_json(&relu, None)
                .unwrap_err()
                .contains("relu")
        );
        let heads = MINILM.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7");
        assert!(
            BertConfig::from_json(&heads, None)
                .unwrap_err()
                .contains("multiple")
        );
        assert!(BertConfig::from_json("{}", None).is_err());
    }
}
