//! Tensor element types of GGUF files and their dequantization to f32.
//!
//! Quantized types store blocks of 32 elements; layouts follow ggml's `ggml-common.h`.

use half::{bf16, f16};

/// A tensor's element type. Only the types this crate can dequantize have variants; a file
/// using another one is rejected when the tensor is read, naming the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    /// 32 elements: an f16 scale `d`, then 16 bytes of 4-bit values `q`; x = (q - 8) * d.
    Q4_0,
    /// 32 elements: f16 scale `d` and minimum `m`, then 16 bytes of 4-bit values; x = q * d + m.
    Q4_1,
    /// 32 elements: an f16 scale `d`, then 32 signed bytes; x = q * d.
    Q8_0,
    BF16,
}

impl GgmlType {
    /// The type for a tag read from a file. `Err` carries the tag for the error message.
    pub fn from_tag(tag: u32) -> Result<Self, u32> {
        Ok(match tag {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => return Err(other),
        })
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes that `elements` elements take, or `None` if the count is not a whole number of
    /// blocks or overflows.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let block_len = self.block_len() as u64;
        if !elements.is_multiple_of(block_len) {
            return None;
        }
        (elements / block_len).checked_mul(self.block_bytes() as u64)
    }

    /// Dequantizes `bytes` (exactly [`Self::bytes_for`] of `out.len()`) into `out`.
    ///
    /// # Panics
    /// If the lengths disagree: callers check them against the tensor's shape first.
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) {
        assert_eq!(
            Some(bytes.len() as u64),
            self.bytes_for(out.len() as u64),
            "dequantize: {} bytes for {} {self:?} elements",
            bytes.len(),
            out.len()
        );
        let blocks = bytes.chunks_exact(self.block_bytes());
        let outs = out.chunks_exact_mut(self.block_len());
        match self {
            Self::F32 => {
                for (b, o) in blocks.zip(outs) {
                    o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::F16 => {
                for (b, o) in blocks.zip(outs) {
                    o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Self::BF16 => {
                for (b, o) in blocks.zip(outs) {
                    o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Self::Q4_0 => {
                for (b, o) in blocks.zip(outs) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    for (j, &q) in b[2..18].iter().enumerate() {
                        o[j] = ((q & 0x0f) as f32 - 8.0) * d;
                        o[j + 16] = ((q >> 4) as f32 - 8.0) * d;
                    }
                }
            }
            Self::Q4_1 => {
                for (b, o) in blocks.zip(outs) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                    for (j, &q) in b[4..20].iter().enumerate() {
                        o[j] = (q & 0x0f) as f32 * d + m;
                        o[j + 16] = (q >> 4) as f32 * d + m;
                    }
                }
            }
            Self::Q8_0 => {
                for (b, o) in blocks.zip(outs) {
                    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    for (j, &q) in b[2..34].iter().enumerate() {
                        o[j] = q as i8 as f32 * d;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_1_block() {
        let mut block = Vec::new();
        block.extend(f16_bytes(0.5));
        block.extend(f16_bytes(-1.0));
        // Low nibbles 0..16 are elements 0..16, high nibbles 15..0 are elements 16..32.
        block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        GgmlType::Q4_1.dequantize(&block, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q8_0_block() {
        let mut block = Vec::new();
        block.extend(f16_bytes(0.25));
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = [0f32; 32];
        GgmlType::Q8_0.dequantize(&block, &mut out);
        for (j, v) in out.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn q4_0_block() {
        let mut block = Vec::new();
        block.extend(f16_bytes(2.0));
        block.extend([0x8f_u8; 16]);
        let mut out = [0f32; 32];
        GgmlType::Q4_0.dequantize(&block, &mut out);
        assert!(out[..16].iter().all(|&v| v == 14.0));
        assert!(out[16..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn float_types() {
        let mut out = [0f32; 2];
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        GgmlType::F32.dequantize(&bytes, &mut out);
        assert_eq!(out, [1.5, -2.0]);
        let bytes: Vec<u8> = [f16_bytes(3.0), f16_bytes(-0.5)].concat();
        GgmlType::F16.dequantize(&bytes, &mut out);
        assert_eq!(out, [3.0, -0.5]);
        let bytes: Vec<u8> = [
            bf16::from_f32(7.0).to_le_bytes(),
            bf16::from_f32(0.25).to_le_bytes(),
        ]
        .concat();
        GgmlType::BF16.dequantize(&bytes, &mut out);
        assert_eq!(out, [7.0, 0.25]);
    }

    #[test]
    fn sizes() {
        assert_eq!(GgmlType::Q4_1.bytes_for(64), Some(40));
        assert_eq!(GgmlType::Q4_1.bytes_for(33), None);
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
        assert_eq!(GgmlType::from_tag(12), Err(12));
    }
}
