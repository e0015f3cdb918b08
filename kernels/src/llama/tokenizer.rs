//! The tokenizer of a GGUF model, built from its `tokenizer.ggml.*` metadata.
//!
//! SmolLM2 uses GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`), with digits split
//! one by one before the byte-level split (llama.cpp's `smollm` pre-tokenizer, the `Digits`
//! step of the model's `tokenizer.json`). The `tokenizers` crate does the work.

use tokenizers::models::bpe::{BpeBuilder, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::gguf::{Gguf, GgufError};

use super::GenerateError;

/// `tokenizer.ggml.token_type` of control tokens (`<|im_start|>` and the like).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// `tokenizer.ggml.token_type` of user-defined tokens, matched whole like control tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Text to token ids and back.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: u32,
    /// Tokens that end a generation besides `eos` (`tokenizer.ggml.eot_token_id`).
    eot: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from the file's vocabulary, merges, token types and special ids.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self, GenerateError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GenerateError::Tokenizer(format!(
                "tokenizer.ggml.model is {model:?}; only byte-level BPE (\"gpt2\") is supported"
            )));
        }
        let tokens = gguf.get_strings("tokenizer.ggml.tokens")?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), id as u32))
            .collect();
        let merges = gguf
            .get_strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        GenerateError::Tokenizer(format!("merge #{i} {m:?} has no space"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BpeBuilder::new()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| GenerateError::Tokenizer(format!("bad BPE vocabulary: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = match gguf.get_str("tokenizer.ggml.pre") {
            Ok("smollm") | Err(GgufError::MissingKey(_)) => vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
            ],
            Ok("gpt2" | "default") => vec![PreTokenizerWrapper::ByteLevel(ByteLevel::new(
                false, true, true,
            ))],
            Ok(other) => {
                return Err(GenerateError::Tokenizer(format!(
                    "pre-tokenizer {other:?} is not supported (smollm, gpt2)"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        inner.with_pre_tokenizer(Some(Sequence::new(pre)));
        inner.with_decoder(Some(ByteLevel::default()));

        let types = match gguf.get_array("tokenizer.ggml.token_type") {
            Ok(types) => types.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            Err(GgufError::MissingKey(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let special: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .filter_map(|(id, t)| {
                tokens
                    .get(id)
                    .map(|tok| AddedToken::from(tok.to_string(), *t == TOKEN_TYPE_CONTROL))
            })
            .collect();
        inner
            .add_special_tokens(special)
            .map_err(|e| GenerateError::Tokenizer(format!("bad special tokens: {e}")))?;

        let id = |key: &str| -> Result<Option<u32>, GenerateError> {
            match gguf.get_u64(key) {
                Ok(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                Ok(id) => Err(GenerateError::Tokenizer(format!(
                    "{key} = {id} is outside the vocabulary of {}",
                    tokens.len()
                ))),
                Err(GgufError::MissingKey(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let eos = id("tokenizer.ggml.eos_token_id")?.ok_or_else(|| {
            GenerateError::Tokenizer("tokenizer.ggml.eos_token_id is missing".into())
        })?;
        Ok(Tokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos,
            eot: id("tokenizer.ggml.eot_token_id")?,
        })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenerateError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))
    }

    /// Text of `ids`, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, GenerateError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| GenerateError::Tokenizer(e.to_string()))
    }

    /// The text of one token as the vocabulary spells it.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Whether generating `id` ends the generation.
    pub fn is_end(&self, id: u32) -> bool {
        id == self.eos || Some(id) == self.eot
    }
}
