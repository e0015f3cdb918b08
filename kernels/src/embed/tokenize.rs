//! Word pieces: BERT's tokenizer from `tokenizer.json`, truncated at the model's limit, and
//! the padded batches the encoder takes.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::EmbedError;

/// The tokenizer, set to truncate at `max_tokens` word pieces (`[CLS]` and `[SEP]` included)
/// and not to pad: batches are padded to their own longest text.
pub(crate) struct WordPieces {
    tokenizer: Tokenizer,
}

impl WordPieces {
    /// Loads `tokenizer.json`. Its own truncation and padding settings (128, fixed, for
    /// all-MiniLM-L6-v2) are replaced: sentence-transformers truncates at `max_seq_length`.
    pub fn load(path: &Path, max_tokens: usize, vocab_size: usize) -> Result<Self, EmbedError> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| EmbedError::bad_file(path, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::bad_file(path, e))?;
        let size = tokenizer.get_vocab_size(true);
        if size > vocab_size {
            return Err(EmbedError::bad_file(
                path,
                format!("the tokenizer has {size} tokens, more than the model's {vocab_size}"),
            ));
        }
        Ok(WordPieces { tokenizer })
    }

    /// The word pieces of each text, `[CLS]` and `[SEP]` included, truncated.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }
}

/// Token ids of several texts, padded with id 0 to the longest; row-major `[len, width]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    ids: Vec<u32>,
    lengths: Vec<usize>,
    width: usize,
}

impl Batch {
    /// Pads `rows` (each non-empty) to the longest of them.
    pub fn pad(rows: &[&[u32]]) -> Self {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; rows.len() * width];
        for (dst, row) in ids.chunks_exact_mut(width.max(1)).zip(rows) {
            dst[..row.len()].copy_from_slice(row);
        }
        Batch {
            ids,
            lengths: rows.iter().map(|r| r.len()).collect(),
            width,
        }
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Each text's padded ids.
    pub fn ids_rows(&self) -> impl Iterator<Item = &[u32]> {
        self.ids.chunks_exact(self.width.max(1)).take(self.len())
    }

    /// The attention mask, `[len, width]`: 1 for a real token, 0 for padding.
    pub fn mask_f32(&self) -> Vec<f32> {
        self.lengths
            .iter()
            .flat_map(|&n| (0..self.width).map(move |i| if i < n { 1.0 } else { 0.0 }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_with_a_mask() {
        let b = Batch::pad(&[&[101, 7, 102], &[101, 102]]);
        assert_eq!((b.len(), b.width()), (2, 3));
        assert_eq!(
            b.ids_rows().collect::<Vec<_>>(),
            vec![&[101, 7, 102][..], &[101, 102, 0][..]]
        );
        assert_eq!(b.mask_f32(), vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(Batch::pad(&[]).len(), 0);
    }
}
