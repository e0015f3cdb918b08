//! Documents to chunks: windows of whole words, `size` words long, each starting
//! `size - overlap` words after the previous one, so a sentence cut at one chunk's end is
//! whole in the next. Pure, so its promises are tested exhaustively.

use serde::{Deserialize, Serialize};

/// How documents are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkPolicy {
    /// Words per chunk. MiniLM reads 256 word pieces; 160 words stay under that for English.
    pub size: usize,
    /// Words shared by consecutive chunks.
    pub overlap: usize,
}

impl Default for ChunkPolicy {
    fn default() -> Self {
        ChunkPolicy {
            size: 160,
            overlap: 32,
        }
    }
}

impl ChunkPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.size == 0 {
            return Err("chunk size must be at least 1 word".into());
        }
        if self.overlap >= self.size {
            return Err(format!(
                "chunk overlap ({}) must be smaller than the chunk size ({})",
                self.overlap, self.size
            ));
        }
        Ok(())
    }
}

/// The chunks of `text`, in order. A blank text has none; a text of at most `size` words is
/// one chunk. Words are separated by whitespace, which is normalized to single spaces.
pub fn chunks(text: &str, policy: ChunkPolicy) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || policy.validate().is_err() {
        return Vec::new();
    }
    let step = policy.size - policy.overlap;
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + policy.size).min(words.len());
        out.push(words[start..end].join(" "));
        if end == words.len() {
            return out;
        }
        start += step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_texts_are_one_chunk_and_blank_ones_none() {
        let p = ChunkPolicy {
            size: 4,
            overlap: 1,
        };
        assert_eq!(chunks("  a  b\nc ", p), vec!["a b c"]);
        assert!(chunks(" \n\t", p).is_empty());
        assert_eq!(chunks("a b c d e f g", p), vec!["a b c d", "d e f g"]);
        assert!(
            ChunkPolicy {
                size: 3,
                overlap: 3
            }
            .validate()
            .is_err()
        );
    }

    proptest! {
        /// Every word is in some chunk, in order; chunks are at most `size` words; consecutive
        /// chunks share exactly `overlap` words (except that the last may share more).
        #[test]
        fn windows_cover_the_text(n in 0usize..300, size in 1usize..40, overlap in 0usize..40) {
            prop_assume!(overlap < size);
            let words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
            let p = ChunkPolicy { size, overlap };
            let cs = chunks(&words.join(" "), p);
            if n == 0 {
                prop_assert!(cs.is_empty());
                return Ok(());
            }
            let split: Vec<Vec<&str>> = cs.iter().map(|c| c.split(' ').collect()).collect();
            prop_assert!(split.iter().all(|c| c.len() <= size && !c.is_empty()));
            prop_assert_eq!(split[0][0], "w0");
            prop_assert_eq!(*split.last().unwrap().last().unwrap(), format!("w{}", n - 1));
            for pair in split.windows(2) {
                let next_first: usize = pair[1][0][1..].parse().unwrap();
                let prev_first: usize = pair[0][0][1..].parse().unwrap();
                prop_assert_eq!(next_first - prev_first, size - overlap);
            }
        }
    }
}
