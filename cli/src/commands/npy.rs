//! Reading NumPy `.npy` files (format versions 1 to 3) of the two kinds a bulk load takes: a
//! 2-D array of little-endian f32 (`<f4`, the vectors, one row each) and a 1-D array of
//! little-endian 64-bit integers (`<u8` or `<i8`, the ids). Rows are streamed: a file of a
//! million 384-d vectors (1.5 GB) is never held whole.
//!
//! Written here because the format is a 10-byte preamble and a Python dict literal, and the
//! crates that read it bring an array library with them.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// What is wrong with a `.npy` file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a .npy file (it does not start with \\x93NUMPY)")]
    NotNpy { path: String },
    #[error("{path}: .npy format version {major}.{minor} is not known (1.0 to 3.0 are)")]
    Version { path: String, major: u8, minor: u8 },
    #[error("{path}: its header {detail}")]
    Header { path: String, detail: String },
    #[error("{path} holds {found}; a bulk load takes {want} (in NumPy: `{hint}`)")]
    Kind {
        path: String,
        found: String,
        want: &'static str,
        hint: &'static str,
    },
    #[error("{path} ends after {rows} of its {expected} rows (truncated)")]
    Truncated {
        path: String,
        rows: u64,
        expected: u64,
    },
}

/// The parsed header: element type, C or Fortran order, shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<u64>,
}

/// Reads the preamble and header of the file behind `input`, leaving it at the data.
fn read_header(input: &mut impl Read, path: &str) -> Result<Header, NpyError> {
    let io = |source| NpyError::Io {
        path: path.into(),
        source,
    };
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|_| NpyError::NotNpy { path: path.into() })?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(NpyError::NotNpy { path: path.into() });
    }
    let (major, minor) = (magic[6], magic[7]);
    let len = match major {
        1 => {
            let mut b = [0u8; 2];
            input.read_exact(&mut b).map_err(io)?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            input.read_exact(&mut b).map_err(io)?;
            u32::from_le_bytes(b) as usize
        }
        _ => {
            return Err(NpyError::Version {
                path: path.into(),
                major,
                minor,
            });
        }
    };
    let header_error = |detail: String| NpyError::Header {
        path: path.into(),
        detail,
    };
    if len > 1 << 20 {
        return Err(header_error(format!("claims {len} bytes")));
    }
    let mut text = vec![0u8; len];
    input.read_exact(&mut text).map_err(io)?;
    let text = String::from_utf8(text).map_err(|_| header_error("is not text".into()))?;
    parse_header(&text).map_err(header_error)
}

/// Parses the header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(text: &str) -> Result<Header, String> {
    let field = |key: &str| -> Result<&str, String> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("has no '{key}'"))?;
        let rest = &text[at + key.len() + 2..];
        let colon = rest
            .find(':')
            .ok_or_else(|| format!("'{key}' has no value"))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split_once('\''))
        .map(|(d, _)| d.to_owned())
        .ok_or("'descr' is not a quoted type")?;
    let fortran = match field("fortran_order")? {
        f if f.starts_with("False") => false,
        f if f.starts_with("True") => true,
        _ => return Err("'fortran_order' is neither True nor False".into()),
    };
    let shape = field("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or("'shape' is not a tuple")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| format!("shape value {s:?} is not a size"))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(Header {
        descr,
        fortran,
        shape,
    })
}

fn open(path: &Path) -> Result<(BufReader<File>, Header, String), NpyError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| NpyError::Io {
        path: name.clone(),
        source,
    })?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let header = read_header(&mut input, &name)?;
    Ok((input, header, name))
}

/// The rows of a 2-D `<f4` array, read a batch at a time.
pub struct Vectors {
    input: BufReader<File>,
    path: String,
    rows: u64,
    dim: usize,
    read: u64,
}

impl Vectors {
    pub fn open(path: &Path) -> Result<Vectors, NpyError> {
        let (input, h, path) = open(path)?;
        let kind = |found: String| NpyError::Kind {
            path: path.clone(),
            found,
            want: "a 2-D float32 array in C order, one vector a row",
            hint: "np.save(path, np.ascontiguousarray(vectors, dtype='<f4'))",
        };
        if h.descr != "<f4" || h.fortran || h.shape.len() != 2 || h.shape[1] == 0 {
            return Err(kind(format!(
                "a {}-D array of {} in {} order",
                h.shape.len(),
                h.descr,
                if h.fortran { "Fortran" } else { "C" }
            )));
        }
        Ok(Vectors {
            input,
            path,
            rows: h.shape[0],
            dim: h.shape[1] as usize,
            read: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Up to `max` more rows (row-major, `dim` values each); empty at the end.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<f32>, NpyError> {
        let n = (self.rows - self.read).min(max as u64) as usize;
        let mut bytes = vec![0u8; n * self.dim * 4];
        if let Err(e) = self.input.read_exact(&mut bytes) {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof => NpyError::Truncated {
                    path: self.path.clone(),
                    rows: self.read,
                    expected: self.rows,
                },
                _ => NpyError::Io {
                    path: self.path.clone(),
                    source: e,
                },
            });
        }
        self.read += n as u64;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// Every value of a 1-D `<u8` or `<i8` array (ids; a negative one is an error).
pub fn read_ids(path: &Path) -> Result<Vec<u64>, NpyError> {
    let (input, h, path) = open(path)?;
    let kind = |found: String| NpyError::Kind {
        path: path.clone(),
        found,
        want: "a 1-D array of 64-bit integers, one id a row",
        hint: "np.save(path, ids.astype('<u8'))",
    };
    if !matches!(h.descr.as_str(), "<u8" | "<i8") || h.shape.len() != 1 {
        return Err(kind(format!("a {}-D array of {}", h.shape.len(), h.descr)));
    }
    let rows = h.shape[0];
    let mut bytes = Vec::new();
    input
        .take(rows.saturating_mul(8))
        .read_to_end(&mut bytes)
        .map_err(|source| NpyError::Io {
            path: path.clone(),
            source,
        })?;
    if (bytes.len() as u64) < rows * 8 {
        return Err(NpyError::Truncated {
            path,
            rows: bytes.len() as u64 / 8,
            expected: rows,
        });
    }
    let signed = h.descr == "<i8";
    bytes
        .chunks_exact(8)
        .map(|b| {
            let v = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            if signed && (v as i64) < 0 {
                Err(kind(format!("a negative id ({})", v as i64)))
            } else {
                Ok(v)
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A `.npy` file as NumPy 1.x writes it: version 1.0, header padded to 64 bytes.
    pub(crate) fn npy(descr: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn vectors_and_ids_are_read_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.path().join("v.npy");
        std::fs::write(&path, npy("<f4", &[4, 3], &bytes)).unwrap();
        let mut v = Vectors::open(&path).unwrap();
        assert_eq!((v.rows(), v.dim()), (4, 3));
        assert_eq!(v.next_batch(3).unwrap(), values[..9]);
        assert_eq!(v.next_batch(3).unwrap(), values[9..]);
        assert!(v.next_batch(3).unwrap().is_empty());

        let ids: Vec<u8> = [7u64, 3, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = dir.path().join("ids.npy");
        std::fs::write(&path, npy("<u8", &[3], &ids)).unwrap();
        assert_eq!(read_ids(&path).unwrap(), [7, 3, 9]);

        let err = |bytes: Vec<u8>| {
            let path = dir.path().join("bad.npy");
            std::fs::write(&path, bytes).unwrap();
            let mut v = match Vectors::open(&path) {
                Ok(v) => v,
                Err(e) => return e.to_string(),
            };
            v.next_batch(100).unwrap_err().to_string()
        };
        assert!(err(b"PK\x03\x04 not numpy".to_vec()).contains("not a .npy file"));
        assert!(err(npy("<f8", &[4, 3], &bytes)).contains("2-D array of <f8"));
        assert!(err(npy("<f4", &[12], &bytes)).contains("1-D array"));
        assert!(err(npy("<f4", &[5, 3], &bytes)).contains("ends after 0 of its 5 rows"));
        let negative: Vec<u8> = (-1i64).to_le_bytes().to_vec();
        let path = dir.path().join("neg.npy");
        std::fs::write(&path, npy("<i8", &[1], &negative)).unwrap();
        assert!(
            read_ids(&path)
                .unwrap_err()
                .to_string()
                .contains("negative id (-1)")
        );
    }
}
