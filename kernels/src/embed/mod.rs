//! Sentence embeddings with BERT-family encoders (all-MiniLM-L6-v2 by default,
//! paraphrase-MiniLM-L3-v2, bge-small and the like from their folders): a BERT encoder of our
//! own on the CPU ([`cpu`], bf16 or f32 dense layers, see [`Precision`]) and on burn's CUDA
//! backend on a GPU, pooled (mean or `[CLS]`) and normalized as the model's
//! sentence-transformers files say.
//!
//! ```no_run
//! use arbor_kernels::{Device, embed::Embedder, models};
//!
//! let embedder = Embedder::load(models::models_dir(None), Device::Cpu)?;
//! let vectors = embedder.embed(&["The quick brown fox.", "A lazy dog."])?;
//! assert_eq!(vectors[0].len(), embedder.dim());
//! # Ok::<(), arbor_kernels::embed::EmbedError>(())
//! ```
//!
//! Texts longer than [`Embedder::max_tokens`] word pieces are truncated (as sentence-transformers
//! does); [`Embedder::count_tokens`] tells a batcher what each text costs. Inside one call,
//! texts are sorted by length and run in batches of [`Embedder::batch_size`]: on the GPU so
//! that short texts are not padded to the longest of the whole call (the CPU encoder pads
//! nothing), on both to bound the memory one pass takes.

mod config;
mod cpu;
mod model;
mod tokenize;
mod weights;

use std::path::{Path, PathBuf};

use burn::backend::Cuda;

use crate::device::Device;
use crate::models::MINILM_DIR;

pub use crate::dense::{Precision, bf16_supported};
pub use config::{BertConfig, Pooling};
use model::Bert;
use tokenize::{Batch, WordPieces};
use weights::Weights;

type CudaBackend = Cuda<f32, i32>;

/// Texts per forward pass unless set with [`Embedder::with_batch_size`]: texts are sorted by
/// length first, so this mostly bounds the attention's memory (`batch × heads × tokens²`).
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// Why loading the model or embedding failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model files not found in {}: run scripts/fetch-models.sh (or pass the models dir)", dir.display())]
    MissingModel { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("text {index} is empty: an empty text has no meaning to embed")]
    EmptyText { index: usize },
    #[error("device {0} is not available: {1}")]
    Device(Device, String),
    #[error("backend: {0}")]
    Backend(String),
}

impl EmbedError {
    fn bad_file(path: &Path, reason: impl ToString) -> Self {
        EmbedError::BadFile {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The model on its device; boxed, as the two differ much in size.
enum Engine {
    Cpu(Box<cpu::Encoder>),
    Cuda(Box<Bert<CudaBackend>>),
}

/// What a sentence-embedding model is, read from its folder without loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderSummary {
    pub config: BertConfig,
    /// Size of `model.safetensors`.
    pub weight_bytes: u64,
}

impl EmbedderSummary {
    /// Length of each embedding.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }
}

/// A loaded sentence encoder. `embed` takes `&self`, so one embedder can serve several
/// threads.
pub struct Embedder {
    engine: Engine,
    pieces: WordPieces,
    device: Device,
    batch_size: usize,
}

impl Embedder {
    /// The model this embedder loads from the models dir.
    pub const MODEL: &'static str = MINILM_DIR;

    /// Loads all-MiniLM-L6-v2 from `models_dir` (the folder `scripts/fetch-models.sh` fills)
    /// onto `device`.
    pub fn load(models_dir: impl AsRef<Path>, device: Device) -> Result<Self, EmbedError> {
        Self::load_dir(models_dir.as_ref().join(MINILM_DIR), device)
    }

    /// Loads a BERT sentence encoder from its own folder: `config.json`, `model.safetensors`,
    /// `tokenizer.json` and optionally `sentence_bert_config.json`. On the CPU, the dense
    /// layers run in [`Precision::best`].
    pub fn load_dir(dir: impl AsRef<Path>, device: Device) -> Result<Self, EmbedError> {
        Self::load_dir_with(dir, device, Precision::best())
    }

    /// [`load_dir`](Self::load_dir) with the CPU's dense layers in `precision` (the GPU
    /// computes in f32 whatever it is): [`Precision::F32`] gives the reference arithmetic.
    /// [`Precision::Bf16`] on a CPU without AVX-512 BF16 runs f32.
    pub fn load_dir_with(
        dir: impl AsRef<Path>,
        device: Device,
        precision: Precision,
    ) -> Result<Self, EmbedError> {
        let dir = dir.as_ref();
        if !["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .all(|f| dir.join(f).is_file())
        {
            return Err(EmbedError::MissingModel {
                dir: dir.to_owned(),
            });
        }
        let config = BertConfig::load(dir)?;
        let pieces = WordPieces::load(
            &dir.join("tokenizer.json"),
            config.max_tokens,
            config.vocab_size,
        )?;
        let weights = Weights::open(&dir.join("model.safetensors"))?;
        let engine = match device {
            Device::Cpu => Engine::Cpu(Box::new(cpu::Encoder::load(&weights, config, precision)?)),
            Device::Cuda(index) => {
                crate::device::cuda_driver()
                    .map_err(|e| EmbedError::Device(device, e.to_string()))?;
                let dev = burn::backend::cuda::CudaDevice::new(index);
                Engine::Cuda(Box::new(Bert::load(&weights, config, dev)?))
            }
        };
        let embedder = Embedder {
            engine,
            pieces,
            device,
            batch_size: DEFAULT_BATCH_SIZE,
        };
        let precision = embedder.precision();
        tracing::info!(dir = %dir.display(), %device, ?precision, "loaded sentence encoder");
        Ok(embedder)
    }

    /// Reads a model folder's configuration and checks that its files are there, without
    /// loading the weights: what a deployment is checked against before a replica loads it.
    pub fn inspect(dir: impl AsRef<Path>) -> Result<EmbedderSummary, EmbedError> {
        let dir = dir.as_ref();
        let missing = || EmbedError::MissingModel {
            dir: dir.to_owned(),
        };
        if !["config.json", "model.safetensors", "tokenizer.json"]
            .iter()
            .all(|f| dir.join(f).is_file())
        {
            return Err(missing());
        }
        let config = BertConfig::load(dir)?;
        let weights = dir.join("model.safetensors");
        let weight_bytes = std::fs::metadata(&weights)
            .map_err(|source| EmbedError::Io {
                path: weights,
                source,
            })?
            .len();
        Ok(EmbedderSummary {
            config,
            weight_bytes,
        })
    }

    /// Sets how many texts go through the encoder together (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn config(&self) -> &BertConfig {
        match &self.engine {
            Engine::Cpu(m) => m.config(),
            Engine::Cuda(m) => m.config(),
        }
    }

    /// The arithmetic of the dense layers: what was asked, where this CPU runs it; f32 on
    /// the GPU.
    pub fn precision(&self) -> Precision {
        match &self.engine {
            Engine::Cpu(m) => m.precision(),
            Engine::Cuda(_) => Precision::F32,
        }
    }

    /// Length of each embedding (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.config().hidden_size
    }

    /// Word pieces per text, `[CLS]` and `[SEP]` included (256 for all-MiniLM-L6-v2); the
    /// rest of a longer text is not seen.
    pub fn max_tokens(&self) -> usize {
        self.config().max_tokens
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The word pieces each text costs, after truncation, `[CLS]` and `[SEP]` included.
    pub fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        Ok(self.pieces.encode(texts)?.iter().map(Vec::len).collect())
    }

    /// One unit-length vector of [`dim`](Self::dim) floats per text, in order.
    ///
    /// No texts give no vectors. A text that is empty or only whitespace is an error
    /// ([`EmbedError::EmptyText`]) rather than a vector that would match everything equally.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::EmptyText { index });
        }
        let ids = self.pieces.encode(texts)?;
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in length_sorted_batches(&ids, self.batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let vectors = match &self.engine {
                Engine::Cpu(m) => m.embed(&rows),
                Engine::Cuda(m) => m.embed(&Batch::pad(&rows))?,
            };
            for (i, v) in chunk.into_iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Indices of `rows` grouped into batches of at most `size`, longest rows first, so that
/// each batch pads its rows to similar lengths.
fn length_sorted_batches(rows: &[Vec<u32>], size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].len()));
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_similar_lengths_and_cover_every_row() {
        let rows: Vec<Vec<u32>> = [3, 9, 1, 7, 5].iter().map(|&n| vec![0; n]).collect();
        let batches = length_sorted_batches(&rows, 2);
        assert_eq!(batches, vec![vec![1, 3], vec![4, 0], vec![2]]);
        assert!(length_sorted_batches(&[], 4).is_empty());
    }

    #[test]
    fn missing_files_say_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = Embedder::load(dir.path(), Device::Cpu)
            .err()
            .expect("no model there")
            .to_string();
        assert!(err.contains("scripts/fetch-models.sh"), "{err}");
    }

    #[test]
    fn embedder_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Embedder>();
    }
}
