//! Where model files live on disk, and how a model named by a deployment or on the command
//! line is found there. `scripts/fetch-models.sh` puts the default models in the models dir.

use std::path::{Component, Path, PathBuf};

/// Environment variable that overrides the models directory.
pub const MODELS_ENV: &str = "ARBOR_MODELS";
/// Folder (under the models dir) holding all-MiniLM-L6-v2: model.safetensors, config.json,
/// tokenizer.json. The `embedder` kind's model unless its config names another.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";
/// Path (under the models dir) of the SmolLM2-135M-Instruct GGUF file. The `model` kind's
/// model unless its config names another.
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

/// Checks a model name a deployment gives: a relative path inside the models dir. A
/// deployment may not make nodes read files elsewhere (`/etc/...`, `../..`).
pub fn check_name(name: &str) -> Result<(), String> {
    let path = Path::new(name);
    if name.is_empty() || name.len() > 512 {
        return Err(format!(
            "model {name:?}: give a name of 1 to 512 bytes under the models dir"
        ));
    }
    if !path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "model {name:?}: name a file or folder inside the models dir \
             (no absolute path, no \"..\")"
        ));
    }
    Ok(())
}

/// Where a GGUF model named `name` is: `name` itself when it is a file (a path, absolute or
/// relative to the models dir), else `name.gguf`. `None` names the default model.
pub fn gguf_path(models_dir: &Path, name: Option<&str>) -> PathBuf {
    let Some(name) = name else {
        return models_dir.join(SMOLLM2_GGUF);
    };
    let path = models_dir.join(name);
    if path.is_file() {
        return path;
    }
    let with_ext = models_dir.join(format!("{name}.gguf"));
    if with_ext.is_file() { with_ext } else { path }
}

/// Where a sentence-embedding model named `name` is: the folder `name` (a path, absolute or
/// relative to the models dir). `None` names the default model.
pub fn embedder_dir(models_dir: &Path, name: Option<&str>) -> PathBuf {
    models_dir.join(name.unwrap_or(MINILM_DIR))
}

/// The name a model is reported by: its file or folder name without `.gguf`.
pub fn display_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    name.strip_suffix(".gguf")
        .map(str::to_owned)
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_name_models_inside_the_models_dir() {
        for good in ["smollm2/x.gguf", "bge-small-en-v1.5", "./a/b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../b"] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains("models dir"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_gguf_name_may_leave_out_its_extension() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.gguf"), b"").unwrap();
        assert_eq!(gguf_path(dir.path(), Some("m")), dir.path().join("m.gguf"));
        assert_eq!(
            gguf_path(dir.path(), Some("m.gguf")),
            dir.path().join("m.gguf")
        );
        assert_eq!(gguf_path(dir.path(), Some("n")), dir.path().join("n"));
        assert_eq!(gguf_path(dir.path(), None), dir.path().join(SMOLLM2_GGUF));
        assert_eq!(display_name(&dir.path().join("m.gguf")), "m");
    }
}
