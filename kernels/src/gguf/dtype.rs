//! Tensor element types of GGUF files and their dequantization to f32.
//!
//! Quantized types store blocks of 32 elements (the "legacy" types) or 256 elements (the
//! K-quants, which add per-32 scales inside each block); layouts follow ggml's `ggml-common.h`
//! and its reference dequantization in `ggml-quants.c`.

use half::f16;

/// A tensor's element type. Only the types this crate can dequantize have variants; a file
/// using another one is rejected when the tensor is read, naming the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    /// 32 elements: an f16 scale `d`, then 16 bytes of 4-bit values `q`; x = (q - 8) * d.
    Q4_0,
    /// 32 elements: f16 scale `d` and minimum `m`, then 16 bytes of 4-bit values; x = q * d + m.
    Q4_1,
    /// 32 elements: f16 scale `d`, 32 high bits, 16 bytes of low nibbles; x = (q - 16) * d.
    Q5_0,
    /// 32 elements: f16 `d` and `m`, 32 high bits, 16 bytes of low nibbles; x = q * d + m.
    Q5_1,
    /// 32 elements: an f16 scale `d`, then 32 signed bytes; x = q * d.
    Q8_0,
    /// 256 elements: f16 `d` and `dmin`, twelve bytes of 6-bit scales and minimums for eight
    /// sub-blocks of 32, then 128 bytes of 4-bit values.
    Q4_K,
    /// [`Self::Q4_K`] with a fifth bit per value (32 bytes of high bits).
    Q5_K,
    /// 256 elements: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed 8-bit
    /// scales (one per 16 values), then an f16 `d`; x = d * scale * (q - 32).
    Q6_K,
    BF16,
}

/// Elements per K-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// The type for a tag read from a file. `Err` carries the tag for the error message.
    pub fn from_tag(tag: u32) -> Result<Self, u32> {
        Ok(match tag {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => return Err(other),
        })
    }

    /// ggml's name of a type tag, for error messages about types this crate does not read.
    pub fn tag_name(tag: u32) -> Option<&'static str> {
        const NAMES: [&str; 40] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
        ];
        NAMES.get(tag as usize).copied()
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
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
    /// Inlined so that the matrix kernels, compiled for AVX2 or AVX-512, vectorize it with
    /// their instruction set.
    ///
    /// # Panics
    /// If the lengths disagree: callers check them against the tensor's shape first.
    #[inline(always)]
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
                for (b, o) in bytes.chunks_exact(4).zip(out.iter_mut()) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::F16 => {
                for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Self::BF16 => {
                for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
                    *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
                }
            }
            Self::Q4_0 => {
                for (b, o) in blocks.zip(outs) {
                    q4_0(b, o);
                }
            }
            Self::Q4_1 => {
                for (b, o) in blocks.zip(outs) {
                    q4_1(b, o);
                }
            }
            Self::Q5_0 => {
                for (b, o) in blocks.zip(outs) {
                    q5_0(b, o);
                }
            }
            Self::Q5_1 => {
                for (b, o) in blocks.zip(outs) {
                    q5_1(b, o);
                }
            }
            Self::Q8_0 => {
                for (b, o) in blocks.zip(outs) {
                    q8_0(b, o);
                }
            }
            Self::Q4_K => {
                for (b, o) in blocks.zip(outs) {
                    q4_k(b, o);
                }
            }
            Self::Q5_K => {
                for (b, o) in blocks.zip(outs) {
                    q5_k(b, o);
                }
            }
            Self::Q6_K => {
                for (b, o) in blocks.zip(outs) {
                    q6_k(b, o);
                }
            }
        }
    }
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline(always)]
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    let (q, (lo, hi)) = (&b[2..18], o.split_at_mut(16));
    for j in 0..16 {
        lo[j] = ((q[j] & 0x0f) as i32 - 8) as f32 * d;
        hi[j] = ((q[j] >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let (q, (lo, hi)) = (&b[4..20], o.split_at_mut(16));
    for j in 0..16 {
        lo[j] = (q[j] & 0x0f) as f32 * d + m;
        hi[j] = (q[j] >> 4) as f32 * d + m;
    }
}

/// Value `j` of 32 of a Q5 block: its low nibble and the high bit `j` of `qh`.
#[inline(always)]
fn q5_values(qh: u32, q: &[u8], out: &mut [i32; 32]) {
    for j in 0..16 {
        out[j] = ((q[j] & 0x0f) as u32 | (((qh >> j) << 4) & 0x10)) as i32;
        out[j + 16] = ((q[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32;
    }
}

#[inline(always)]
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let mut v = [0i32; 32];
    q5_values(qh, &b[6..22], &mut v);
    for (o, v) in o.iter_mut().zip(v) {
        *o = (v - 16) as f32 * d;
    }
}

#[inline(always)]
fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let mut v = [0i32; 32];
    q5_values(qh, &b[8..24], &mut v);
    for (o, v) in o.iter_mut().zip(v) {
        *o = v as f32 * d + m;
    }
}

#[inline(always)]
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..34]) {
        *o = q as i8 as f32 * d;
    }
}

/// Scale and minimum of sub-block `j` (of 8) of a Q4_K or Q5_K block: 6 bits each, packed in
/// 12 bytes (ggml's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

#[inline(always)]
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, o)) in qs.chunks_exact(32).zip(o.chunks_exact_mut(64)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
        let (lo, hi) = o.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0x0f) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

#[inline(always)]
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, (q, o)) in qs.chunks_exact(32).zip(o.chunks_exact_mut(64)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
        let (bit1, bit2) = (2 * chunk as u32, 2 * chunk as u32 + 1);
        let (lo, hi) = o.split_at_mut(32);
        for l in 0..32 {
            let h1 = ((qh[l] as u32 >> bit1) & 1) << 4;
            let h2 = ((qh[l] as u32 >> bit2) & 1) << 4;
            lo[l] = d1 * ((q[l] & 0x0f) as u32 | h1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) as u32 | h2) as f32 - m2;
        }
    }
}

#[inline(always)]
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &ql[64 * half_block..64 * half_block + 64];
        let qh = &qh[32 * half_block..32 * half_block + 32];
        let sc = &sc[8 * half_block..8 * half_block + 8];
        let o = &mut o[128 * half_block..128 * half_block + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * (sc[is] as i8 as f32) * q1 as f32;
            o[l + 32] = d * (sc[is + 2] as i8 as f32) * q2 as f32;
            o[l + 64] = d * (sc[is + 4] as i8 as f32) * q3 as f32;
            o[l + 96] = d * (sc[is + 6] as i8 as f32) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

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
        assert_eq!(GgmlType::from_tag(11), Err(11));
        assert_eq!(GgmlType::tag_name(11), Some("Q3_K"));
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q6_K.bytes_for(255), None);
    }

    #[test]
    fn q5_0_block() {
        let mut block = Vec::new();
        block.extend(f16_bytes(1.0));
        // The high bit of every even element is set.
        block.extend(0x5555_5555u32.to_le_bytes());
        block.extend([0x53u8; 16]);
        let mut out = [0f32; 32];
        GgmlType::Q5_0.dequantize(&block, &mut out);
        for j in 0..16 {
            let even = j % 2 == 0;
            assert_eq!(out[j], if even { 3.0 } else { -13.0 }, "{j}");
            assert_eq!(out[j + 16], if even { 5.0 } else { -11.0 }, "{j}");
        }
        // Q5_1: the same values, unsigned, times d plus m.
        let mut block = Vec::new();
        block.extend(f16_bytes(2.0));
        block.extend(f16_bytes(-1.0));
        block.extend(0x5555_5555u32.to_le_bytes());
        block.extend([0x53u8; 16]);
        GgmlType::Q5_1.dequantize(&block, &mut out);
        assert_eq!((out[0], out[1], out[16], out[17]), (37.0, 5.0, 41.0, 9.0));
    }

    /// Packs eight 6-bit scales and minimums as ggml's K-quants do.
    fn pack_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
        }
        s
    }

    #[test]
    fn q4_k_and_q5_k_blocks() {
        let sc = [1, 2, 3, 4, 5, 40, 7, 8];
        let m = [0, 2, 4, 6, 8, 33, 12, 14];
        let mut block = Vec::new();
        block.extend(f16_bytes(0.5));
        block.extend(f16_bytes(0.25));
        block.extend(pack_scales(sc, m));
        // Each chunk of 32 bytes: low nibbles l % 16, high nibbles 15 - l % 16.
        block.extend((0..128).map(|i| ((i % 32) % 16) as u8 | ((15 - (i % 32) % 16) << 4) as u8));
        let mut out = [0f32; 256];
        GgmlType::Q4_K.dequantize(&block, &mut out);
        for c in 0..4 {
            for l in 0..32 {
                let (lo, hi) = ((l % 16) as f32, (15 - l % 16) as f32);
                let expect_lo = 0.5 * sc[2 * c] as f32 * lo - 0.25 * m[2 * c] as f32;
                let expect_hi = 0.5 * sc[2 * c + 1] as f32 * hi - 0.25 * m[2 * c + 1] as f32;
                assert_eq!(out[64 * c + l], expect_lo, "{c} {l}");
                assert_eq!(out[64 * c + 32 + l], expect_hi, "{c} {l}");
            }
        }
        // Q5_K: the same with every fifth bit set adds 16 to each value.
        let mut q5 = block[..16].to_vec();
        q5.extend([0xffu8; 32]);
        q5.extend(&block[16..]);
        GgmlType::Q5_K.dequantize(&q5, &mut out);
        for c in 0..4 {
            let l = 3;
            let expect = 0.5 * sc[2 * c] as f32 * (3.0 + 16.0) - 0.25 * m[2 * c] as f32;
            assert_eq!(out[64 * c + l], expect, "{c}");
        }
    }

    #[test]
    fn q6_k_block() {
        let mut block = vec![0x21u8; 128]; // low nibbles 1, high nibbles 2
        block.extend([0b1110_0100u8; 64]); // high pairs 0, 1, 2, 3
        block.extend((1..=16).map(|s: i8| (-s) as u8));
        block.extend(f16_bytes(0.5));
        let mut out = [0f32; 256];
        GgmlType::Q6_K.dequantize(&block, &mut out);
        let sc = |i: usize| -((i + 1) as f32);
        assert_eq!(out[0], 0.5 * sc(0) * -31.0);
        assert_eq!(out[16], 0.5 * sc(1) * -31.0);
        assert_eq!(out[32], 0.5 * sc(2) * -15.0);
        assert_eq!(out[64], 0.5 * sc(4) * 2.0);
        assert_eq!(out[96 + 16], 0.5 * sc(7) * 18.0);
        assert_eq!(out[128], 0.5 * sc(8) * -31.0);
        assert_eq!(out[255], 0.5 * sc(15) * 18.0);
    }
}
