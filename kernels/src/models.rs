//! Where model files live on disk. `scripts/fetch-models.sh` puts them there.

use std::path::PathBuf;

/// Environment variable that overrides the models directory.
pub const MODELS_ENV: &str = "ARBOR_MODELS";
/// Folder (under the models dir) holding all-MiniLM-L6-v2: model.safetensors, config.json,
/// tokenizer.json.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";
/// Path (under the models dir) of the SmolLM2-135M-Instruct GGUF file.
pub const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The models directory: `flag` if given, else `$ARBOR_MODELS`, else `~/.cache/arbor/models`.
pub fn models_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(MODELS_ENV).map(PathBuf::from))
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/arbor/models")
        })
}
