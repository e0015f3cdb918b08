//! The checkpoint's tensors, read from `model.safetensors` into host memory as f32.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::EmbedError;

/// A tensor in host memory: row-major f32 with its shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A parsed safetensors file. Names are looked up with and without the `bert.` prefix that
/// checkpoints saved from `BertForXxx` models carry.
pub(crate) struct Weights {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Weights {
    pub fn open(path: &Path) -> Result<Self, EmbedError> {
        let bytes = std::fs::read(path).map_err(|source| EmbedError::Io {
            path: path.to_owned(),
            source,
        })?;
        let weights = Weights {
            path: path.to_owned(),
            bytes,
        };
        weights.parse()?; // fail early on a truncated or garbled file
        Ok(weights)
    }

    fn parse(&self) -> Result<SafeTensors<'_>, EmbedError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| EmbedError::bad_file(&self.path, e))
    }

    /// The tensor `name`, converted to f32, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor, EmbedError> {
        let st = self.parse()?;
        let view = st
            .tensor(name)
            .or_else(|_| st.tensor(&format!("bert.{name}")))
            .map_err(|_| EmbedError::bad_file(&self.path, format!("tensor {name} is missing")))?;
        if view.shape() != shape {
            return Err(EmbedError::bad_file(
                &self.path,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    view.shape()
                ),
            ));
        }
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(EmbedError::bad_file(
                    &self.path,
                    format!(
                        "tensor {name} has dtype {other:?}; only F32, F16 and BF16 are supported"
                    ),
                ));
            }
        };
        Ok(HostTensor {
            shape: shape.to_vec(),
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &path).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_f32_and_f16_with_or_without_prefix() {
        let f32s: Vec<u8> = [1.0f32, -2.5, 3.25, 0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [0.5f32, 2.0]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        let (_dir, path) = write(&[
            ("a", Dtype::F32, vec![2, 2], f32s),
            ("bert.b", Dtype::F16, vec![2], f16s),
        ]);
        let w = Weights::open(&path).unwrap();
        assert_eq!(
            w.get("a", &[2, 2]).unwrap().data,
            vec![1.0, -2.5, 3.25, 0.0]
        );
        assert_eq!(w.get("b", &[2]).unwrap().data, vec![0.5, 2.0]);
        let wrong = w.get("a", &[4]).unwrap_err().to_string();
        assert!(wrong.contains("shape [2, 2]"), "{wrong}");
        assert!(
            w.get("c", &[1])
                .unwrap_err()
                .to_string()
                .contains("tensor c is missing")
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
        let err = Weights::open(&path)
            .err()
            .expect("garbage must not parse")
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}
