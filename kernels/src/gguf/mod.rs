//! A reader for GGUF model files (llama.cpp's format): header, metadata, tensor table and
//! tensor data, with dequantization of the element types in [`GgmlType`].
//!
//! Every length and count read from a file is checked against the bytes that remain before
//! anything is allocated for it, so a truncated or hostile file gets a [`GgufError`] that says
//! what was wrong, never a panic or a huge allocation.

mod dtype;
mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dtype::GgmlType;
pub use value::{Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and tensor offsets when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; a bound on nesting keeps a hostile file from exhausting the stack.
const MAX_ARRAY_DEPTH: usize = 3;

/// What was wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: the first bytes are {0:?}, not \"GGUF\"")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (only versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error(
        "the file ends early: {what} needs {needed} bytes at offset {offset}, {available} remain"
    )]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("metadata key {key:?} is a {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("tensor {0:?} is not in the file")]
    MissingTensor(String),
}

impl GgufError {
    fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        GgufError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// One tensor's entry in the table: its name, shape, type and where its bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` varies fastest (the row length of a matrix).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Byte range of the tensor's data within the file, checked to lie inside it.
    range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of its data in the file.
    pub fn bytes(&self) -> usize {
        self.range.len()
    }
}

/// A tensor's data where the file was read: the whole file's buffer and the tensor's range.
#[derive(Debug, Clone)]
pub struct SharedTensor {
    pub data: Arc<Vec<u8>>,
    pub range: std::ops::Range<usize>,
}

/// A parsed GGUF file, holding its bytes.
#[derive(Debug)]
pub struct Gguf {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    /// Shared, so that a model can keep its weights where the file was read (no copy).
    bytes: Arc<Vec<u8>>,
}

impl Gguf {
    /// Reads and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        // Read straight into the shared buffer the weights will live in.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "the file is larger than memory can address",
            ))
        })?;
        let mut bytes = vec![0u8; len];
        std::io::Read::read_exact(&mut file, &mut bytes).map_err(io)?;
        Self::parse_shared(Arc::new(bytes), len as u64)
    }

    /// Reads only the metadata and the tensor table of the file at `path` (what checking a
    /// model before loading it needs), not the tensor data: [`Self::tensor_bytes`] of the
    /// result is an error. Reads a growing prefix until the table fits.
    pub fn open_header(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        use std::io::Read as _;
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut prefix = Vec::new();
        let mut want: u64 = 4 << 20;
        loop {
            let target = want.min(file_len);
            (&mut file)
                .take(target - prefix.len() as u64)
                .read_to_end(&mut prefix)
                .map_err(io)?;
            let complete = prefix.len() as u64 >= file_len;
            match Self::parse_with_len(prefix.clone(), file_len) {
                Err(GgufError::Truncated { .. }) if !complete => want = want.saturating_mul(2),
                other => return other,
            }
        }
    }

    /// Parses a whole GGUF file held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let len = bytes.len() as u64;
        Self::parse_with_len(bytes, len)
    }

    fn parse_with_len(bytes: Vec<u8>, file_len: u64) -> Result<Self, GgufError> {
        Self::parse_shared(Arc::new(bytes), file_len)
    }

    /// Parses `bytes`, the first bytes of a file of `file_len` bytes: tensor data may lie
    /// beyond them.
    fn parse_shared(bytes: Arc<Vec<u8>>, file_len: u64) -> Result<Self, GgufError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
        };
        let magic: [u8; 4] = r.take("the magic number", 4)?.try_into().expect("4 bytes");
        if &magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // A key-value pair takes at least 13 bytes, a tensor entry at least 24.
        r.check_count("metadata entries", kv_count, 13)?;
        r.check_count("tensor entries", tensor_count, 24)?;

        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = r.string(&format!("metadata key #{i}"))?;
            let tag = r.u32(&format!("the type of metadata {key:?}"))?;
            let ty = ValueType::from_tag(tag).ok_or_else(|| {
                GgufError::invalid(
                    format!("metadata {key:?}"),
                    format!("unknown value type {tag}"),
                )
            })?;
            let value = r.value(&key, ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::invalid(
                    format!("metadata {key:?}"),
                    "the key appears twice",
                ));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::invalid(
                        "metadata \"general.alignment\"",
                        format!("{v} is not a power of two up to 1 MiB"),
                    ));
                }
            },
        };

        let mut entries = Vec::new();
        for i in 0..tensor_count {
            let name = r.string(&format!("the name of tensor #{i}"))?;
            let what = format!("tensor {name:?}");
            let n_dims = r.u32(&format!("the dimension count of {what}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::invalid(
                    what,
                    format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&format!("the dimensions of {what}")))
                .collect::<Result<Vec<_>, _>>()?;
            let tag = r.u32(&format!("the type of {what}"))?;
            let dtype = GgmlType::from_tag(tag).map_err(|t| {
                let name = GgmlType::tag_name(t).unwrap_or("unknown");
                GgufError::invalid(
                    &what,
                    format!(
                        "element type {name} ({t}) is not supported \
                         (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K are)"
                    ),
                )
            })?;
            let offset = r.u64(&format!("the offset of {what}"))?;
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::invalid(
                    what,
                    format!("offset {offset} is not a multiple of {alignment}"),
                ));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .ok_or_else(|| GgufError::invalid(&what, format!("shape {dims:?} overflows")))?;
            let size = dtype.bytes_for(elements).ok_or_else(|| {
                GgufError::invalid(
                    &what,
                    format!("shape {dims:?} is not a whole number of {dtype:?} blocks"),
                )
            })?;
            entries.push((name, dims, dtype, offset, size));
        }

        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, dims, dtype, offset, size) in entries {
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(GgufError::invalid(
                    format!("tensor {name:?}"),
                    "its offset overflows",
                ));
            };
            if end > file_len {
                return Err(GgufError::Truncated {
                    what: format!("the data of tensor {name:?}"),
                    offset: usize::try_from(start).unwrap_or(usize::MAX),
                    needed: size,
                    available: usize::try_from(file_len.saturating_sub(start))
                        .unwrap_or(usize::MAX),
                });
            }
            if tensors.iter().any(|t: &TensorInfo| t.name == name) {
                return Err(GgufError::invalid(
                    format!("tensor {name:?}"),
                    "the name appears twice",
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                range: start as usize..end as usize,
            });
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The value of a metadata key, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, GgufError> {
        let v = self.get(key)?;
        f(v).ok_or_else(|| GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found: v.type_name(),
        })
    }

    /// A non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.typed(key, "non-negative integer", Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.typed(key, "float", Value::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.typed(key, "string", Value::as_str)
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        self.typed(key, "array", Value::as_array)
    }

    /// An array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| GgufError::WrongType {
                key: key.to_owned(),
                expected: "array of strings",
                found: "array of something else",
            })
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_owned()))?;
        let bytes = self.bytes.get(info.range.clone()).ok_or_else(|| {
            GgufError::invalid(
                format!("tensor {name:?}"),
                "its data was not read (the file was opened for its header only)",
            )
        })?;
        Ok((info, bytes))
    }

    /// The buffer holding the whole file and the range of a tensor's data in it, for keeping
    /// the data without copying it.
    pub fn tensor_shared(&self, name: &str) -> Result<SharedTensor, GgufError> {
        let (info, _) = self.tensor_bytes(name)?;
        Ok(SharedTensor {
            data: self.bytes.clone(),
            range: info.range.clone(),
        })
    }

    /// A tensor's elements as f32, in ggml order (`dims[0]` fastest).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<u64>, Vec<f32>), GgufError> {
        let (info, bytes) = self.tensor_bytes(name)?;
        let mut out = vec![0f32; info.len()];
        info.dtype.dequantize(bytes, &mut out);
        Ok((info.dims.clone(), out))
    }
}

/// A cursor over the file's bytes that checks every read.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, what: &str, n: u64) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                what: what.to_owned(),
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    /// Rejects a count of items that cannot fit in the bytes left, before allocating for it.
    fn check_count(&self, what: &str, count: u64, min_size: usize) -> Result<(), GgufError> {
        match count.checked_mul(min_size as u64) {
            Some(needed) if needed <= self.remaining() as u64 => Ok(()),
            _ => Err(GgufError::invalid(
                what,
                format!(
                    "the file claims {count} of them, but only {} bytes remain",
                    self.remaining()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(what, N as u64)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(what, len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| GgufError::invalid(what, format!("not UTF-8: {e}")))
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        let what = format!("metadata {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::invalid(
                        what,
                        format!("bool byte {b} is neither 0 nor 1"),
                    ));
                }
            },
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::invalid(
                        what,
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let tag = self.u32(&what)?;
                let elem = ValueType::from_tag(tag).ok_or_else(|| {
                    GgufError::invalid(&what, format!("unknown array element type {tag}"))
                })?;
                let count = self.u64(&what)?;
                self.check_count(&format!("{what} array"), count, elem.min_encoded_size())?;
                let items = (0..count)
                    .map(|_| self.value(key, elem, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Value::Array(elem, items)
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds GGUF files byte by byte for tests.
    #[derive(Default)]
    pub(crate) struct Builder {
        kvs: Vec<u8>,
        kv_count: u64,
        infos: Vec<u8>,
        data: Vec<u8>,
        tensor_count: u64,
    }

    pub(crate) fn string(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend(s.as_bytes());
        out
    }

    impl Builder {
        pub(crate) fn kv(mut self, key: &str, tag: u32, value: &[u8]) -> Self {
            self.kvs.extend(string(key));
            self.kvs.extend(tag.to_le_bytes());
            self.kvs.extend(value);
            self.kv_count += 1;
            self
        }

        pub(crate) fn tensor(mut self, name: &str, dims: &[u64], tag: u32, data: &[u8]) -> Self {
            self.data.resize(self.data.len().next_multiple_of(32), 0);
            self.infos.extend(string(name));
            self.infos.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend(d.to_le_bytes());
            }
            self.infos.extend(tag.to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(data);
            self.tensor_count += 1;
            self
        }

        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend(self.tensor_count.to_le_bytes());
            out.extend(self.kv_count.to_le_bytes());
            out.extend(self.kvs);
            out.extend(self.infos);
            out.resize(out.len().next_multiple_of(32), 0);
            out.extend(self.data);
            out
        }
    }

    fn sample() -> Vec<u8> {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        arr.extend(string("a"));
        arr.extend(string("bc"));
        let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Builder::default()
            .kv("general.architecture", 8, &string("llama"))
            .kv("llama.block_count", 4, &30u32.to_le_bytes())
            .kv("llama.rope.freq_base", 6, &100000f32.to_le_bytes())
            .kv("flag", 7, &[1])
            .kv("signed", 11, &(-5i64).to_le_bytes())
            .kv("tokens", 9, &arr)
            .tensor("w", &[3, 2], 0, &f32s)
            .tensor("v", &[2], 0, &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40])
            .build()
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let g = Gguf::parse(sample()).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
        assert_eq!(g.get("flag").unwrap().as_bool(), Some(true));
        assert_eq!(g.get("signed").unwrap().as_i64(), Some(-5));
        assert_eq!(g.get_strings("tokens").unwrap(), vec!["a", "bc"]);
        let (dims, w) = g.dequantize("w").unwrap();
        assert_eq!(dims, vec![3, 2]);
        assert_eq!(w, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(g.dequantize("v").unwrap().1, vec![1.0, 2.0]);
        assert!(matches!(g.get_u64("missing"), Err(GgufError::MissingKey(k)) if k == "missing"));
        assert!(matches!(
            g.get_u64("general.architecture"),
            Err(GgufError::WrongType {
                found: "string",
                ..
            })
        ));
        assert!(matches!(
            g.dequantize("nope"),
            Err(GgufError::MissingTensor(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            let err = Gguf::parse(bytes[..len].to_vec()).expect_err("a truncated file must fail");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn hostile_lengths_are_rejected_without_allocating() {
        // A string key claiming 2^62 bytes.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        let mut huge_key = bytes.clone();
        huge_key.extend((1u64 << 62).to_le_bytes());
        huge_key.extend([0u8; 16]);
        assert!(matches!(
            Gguf::parse(huge_key),
            Err(GgufError::Truncated { .. })
        ));

        // An array claiming 2^60 u32 elements.
        let mut arr = 4u32.to_le_bytes().to_vec();
        arr.extend((1u64 << 60).to_le_bytes());
        let huge_array = Builder::default().kv("x", 9, &arr).build();
        let err = Gguf::parse(huge_array).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");

        // A header claiming 2^63 metadata entries.
        let mut many = b"GGUF".to_vec();
        many.extend(3u32.to_le_bytes());
        many.extend(0u64.to_le_bytes());
        many.extend((1u64 << 63).to_le_bytes());
        assert!(
            Gguf::parse(many)
                .unwrap_err()
                .to_string()
                .contains("metadata entries")
        );
    }

    #[test]
    fn bad_headers_and_tensors() {
        let mut bad_magic = sample();
        bad_magic[0] = b'X';
        assert!(matches!(
            Gguf::parse(bad_magic),
            Err(GgufError::BadMagic(_))
        ));
        let mut v1 = sample();
        v1[4] = 1;
        assert!(matches!(
            Gguf::parse(v1),
            Err(GgufError::UnsupportedVersion(1))
        ));

        let overflow = Builder::default()
            .tensor("t", &[u64::MAX, 2], 0, &[])
            .build();
        assert!(
            Gguf::parse(overflow)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
        let beyond = Builder::default()
            .tensor("t", &[1 << 20], 0, &[0; 8])
            .build();
        assert!(matches!(
            Gguf::parse(beyond),
            Err(GgufError::Truncated { .. })
        ));
        let partial_block = Builder::default().tensor("t", &[31], 3, &[0; 20]).build();
        assert!(
            Gguf::parse(partial_block)
                .unwrap_err()
                .to_string()
                .contains("blocks")
        );
        let unknown = Builder::default()
            .tensor("t", &[256], 11, &[0; 110])
            .build();
        let err = Gguf::parse(unknown).unwrap_err().to_string();
        assert!(err.contains("element type Q3_K (11)"), "{err}");
        let no_dims = Builder::default().tensor("t", &[], 0, &[]).build();
        assert!(
            Gguf::parse(no_dims)
                .unwrap_err()
                .to_string()
                .contains("dimensions")
        );
        let dup = Builder::default()
            .tensor("t", &[1], 0, &[0; 4])
            .tensor("t", &[1], 0, &[0; 4])
            .build();
        assert!(Gguf::parse(dup).unwrap_err().to_string().contains("twice"));
        let bad_bool = Builder::default().kv("b", 7, &[2]).build();
        assert!(
            Gguf::parse(bad_bool)
                .unwrap_err()
                .to_string()
                .contains("bool")
        );
        let bad_align = Builder::default()
            .kv("general.alignment", 4, &3u32.to_le_bytes())
            .build();
        assert!(
            Gguf::parse(bad_align)
                .unwrap_err()
                .to_string()
                .contains("power of two")
        );
    }

    #[test]
    fn deeply_nested_arrays_are_rejected() {
        let mut value = Vec::new();
        for _ in 0..10 {
            value.extend(9u32.to_le_bytes());
            value.extend(1u64.to_le_bytes());
        }
        value.extend(4u32.to_le_bytes());
        value.extend(0u64.to_le_bytes());
        let nested = Builder::default().kv("deep", 9, &value).build();
        assert!(
            Gguf::parse(nested)
                .unwrap_err()
                .to_string()
                .contains("nested")
        );
    }

    /// Fuzzing the GGUF reader and what reads a parsed file (the Llama config and tokenizer):
    /// arbitrary bytes, a small Llama file with bytes changed or cut, and files built from
    /// random entries of every value type and random tensors of every dtype. Each must end in
    /// a value or an error, never a panic or an allocation the file's size does not back.
    /// `PROPTEST_CASES=N cargo test -p arbor-kernels --lib gguf::tests::fuzz` for a long run.
    mod fuzz {
        use super::*;
        use crate::llama::{LlamaConfig, Tokenizer};
        use proptest::prelude::*;

        fn strings(items: &[&str]) -> Vec<u8> {
            let mut arr = 8u32.to_le_bytes().to_vec();
            arr.extend((items.len() as u64).to_le_bytes());
            for item in items {
                arr.extend(string(item));
            }
            arr
        }

        /// A small but complete Llama file's header: the seed that mutations start from.
        fn llama() -> Vec<u8> {
            let q8: Vec<u8> = [0x00, 0x3c].into_iter().chain(1..=32u8).collect();
            Builder::default()
                .kv("general.architecture", 8, &string("llama"))
                .kv("llama.embedding_length", 4, &8u32.to_le_bytes())
                .kv("llama.attention.head_count", 4, &2u32.to_le_bytes())
                .kv("llama.attention.head_count_kv", 4, &1u32.to_le_bytes())
                .kv("llama.block_count", 4, &1u32.to_le_bytes())
                .kv("llama.context_length", 4, &64u32.to_le_bytes())
                .kv("llama.feed_forward_length", 4, &16u32.to_le_bytes())
                .kv("llama.rope.freq_base", 6, &10000f32.to_le_bytes())
                .kv("tokenizer.ggml.model", 8, &string("gpt2"))
                .kv(
                    "tokenizer.ggml.tokens",
                    9,
                    &strings(&["a", "b", "ab", "<|end|>"]),
                )
                .kv("tokenizer.ggml.merges", 9, &strings(&["a b"]))
                .kv("tokenizer.ggml.eos_token_id", 4, &3u32.to_le_bytes())
                .tensor("token_embd.weight", &[8, 4], 0, &[0u8; 128])
                .tensor("blk.0.attn_q.weight", &[32], 8, &q8)
                .tensor("output_norm.weight", &[8], 1, &[0x00, 0x3c].repeat(8))
                .build()
        }

        /// Everything a loader reads from a parsed file.
        fn read_all(bytes: Vec<u8>) {
            let Ok(g) = Gguf::parse(bytes) else { return };
            for key in g.metadata().keys() {
                let _ = g.get_u64(key);
                let _ = g.get_f64(key);
                let _ = g.get_str(key);
                let _ = g.get_strings(key);
            }
            let names: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
            for name in names {
                let _ = g.dequantize(&name);
            }
            let _ = LlamaConfig::from_gguf(&g);
            let _ = Tokenizer::from_gguf(&g);
        }

        /// A metadata value of a random type (0 to 12, or an unknown tag) and random bytes.
        fn value() -> impl Strategy<Value = (u32, Vec<u8>)> {
            prop_oneof![
                (0u32..13, prop::collection::vec(any::<u8>(), 0..24)),
                (0u32..13).prop_map(|t| (t, 2u64.to_le_bytes().to_vec())),
                ".{0,12}".prop_map(|s| (8u32, string(&s))),
                prop::collection::vec(".{0,6}", 0..5).prop_map(|items| {
                    let items: Vec<&str> = items.iter().map(String::as_str).collect();
                    (9u32, strings(&items))
                }),
                any::<u32>().prop_map(|t| (t, vec![0; 8])),
            ]
        }

        /// A tensor: dims, a dtype tag (known ones and others) and some data.
        fn tensor() -> impl Strategy<Value = (Vec<u64>, u32, Vec<u8>)> {
            (
                prop::collection::vec(prop_oneof![0u64..70, any::<u64>()], 0..4),
                prop_oneof![
                    prop::sample::select(vec![0u32, 1, 2, 3, 8, 30]),
                    any::<u32>()
                ],
                prop::collection::vec(any::<u8>(), 0..160),
            )
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_parse_or_are_refused(
                bytes in prop::collection::vec(any::<u8>(), 0..256),
                header in any::<bool>(),
            ) {
                // With a valid magic and version, parsing goes past the first check.
                let bytes = if header {
                    let mut b = b"GGUF".to_vec();
                    b.extend(3u32.to_le_bytes());
                    b.extend(bytes);
                    b
                } else {
                    bytes
                };
                read_all(bytes);
            }

            #[test]
            fn a_mutated_llama_file_parses_or_is_refused(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = llama();
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                let cut = cut.index(bytes.len() + 1);
                read_all(bytes[..cut].to_vec());
                read_all(bytes);
            }

            #[test]
            fn built_files_parse_or_are_refused(
                kvs in prop::collection::vec((".{0,24}", value()), 0..8),
                tensors in prop::collection::vec((".{0,12}", tensor()), 0..4),
            ) {
                let mut b = Builder::default();
                for (key, (tag, bytes)) in &kvs {
                    b = b.kv(key, *tag, bytes);
                }
                for (name, (dims, tag, data)) in &tensors {
                    b = b.tensor(name, dims, *tag, data);
                }
                read_all(b.build());
            }
        }

        #[test]
        fn the_seed_is_a_llama_file() {
            let g = Gguf::parse(llama()).unwrap();
            let config = LlamaConfig::from_gguf(&g).unwrap();
            assert_eq!((config.d_model, config.n_heads, config.n_layers), (8, 2, 1));
            assert!(Tokenizer::from_gguf(&g).is_ok());
            assert_eq!(g.dequantize("blk.0.attn_q.weight").unwrap().1.len(), 32);
        }
    }
}
