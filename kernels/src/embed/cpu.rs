//! The BERT encoder on the CPU, without burn: dense layers packed for this CPU
//! ([`Dense`]), attention per text and head on all cores, and every element-wise step fused
//! into the pass that produces its input.
//!
//! Texts are not padded: the token rows of a batch are laid end to end, the dense layers
//! run on all of them at once, and attention runs within each text. Nothing is computed for
//! padding, no mask is needed, and a text's vector does not depend on its batch.

use rayon::prelude::*;

use super::EmbedError;
use super::config::{BertConfig, Pooling};
use super::weights::Weights;
use crate::dense::{Dense, Disjoint, Precision, Then};
use crate::math::{LANES, softmax_in_place, sum};

/// LayerNorm's scale and shift.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(w: &Weights, name: &str, dim: usize, eps: f64) -> Result<Self, EmbedError> {
        Ok(Norm {
            gamma: w.get(&format!("{name}.weight"), &[dim])?.data,
            beta: w.get(&format!("{name}.bias"), &[dim])?.data,
            eps: eps as f32,
        })
    }

    /// Normalizes every row of `x` (`[rows, dim]`) in place.
    fn apply(&self, x: &mut [f32]) {
        let dim = self.gamma.len();
        x.par_chunks_mut(64 * dim)
            .for_each(|rows| normalize(rows, &self.gamma, &self.beta, self.eps));
    }
}

crate::isa::multiversion! {
    /// LayerNorm of each row of `gamma.len()` values.
    fn normalize(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let dim = gamma.len();
        for row in rows.chunks_exact_mut(dim) {
            let mean = sum(row) / dim as f32;
            let mut var = [0f32; LANES];
            for chunk in row.chunks(LANES) {
                for (v, x) in var.iter_mut().zip(chunk) {
                    *v += (x - mean) * (x - mean);
                }
            }
            let inv = 1.0 / (var.iter().sum::<f32>() / dim as f32 + eps).sqrt();
            for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *x = (*x - mean) * inv * g + b;
            }
        }
    }
}

struct Layer {
    /// Query, key and value stacked: `[3 · hidden]` outputs.
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

/// A BERT sentence encoder in host memory.
pub(crate) struct Encoder {
    config: BertConfig,
    precision: Precision,
    /// `[vocab, hidden]`, `[positions, hidden]`, and row 0 of the token-type table (every
    /// text is one segment).
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

impl Encoder {
    /// Reads and packs the weights; `precision` is what the dense layers run if this CPU can
    /// (bf16 falls back to f32).
    pub fn load(w: &Weights, config: BertConfig, precision: Precision) -> Result<Self, EmbedError> {
        let precision = match precision {
            Precision::Bf16 if !crate::dense::bf16_supported() => Precision::F32,
            other => other,
        };
        let (h, ff, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let dense = |names: &[String], out: usize, inp: usize| -> Result<Dense, EmbedError> {
            let mut weight = Vec::with_capacity(out * inp * names.len());
            let mut bias = Vec::with_capacity(out * names.len());
            for name in names {
                weight.extend(w.get(&format!("{name}.weight"), &[out, inp])?.data);
                bias.extend(w.get(&format!("{name}.bias"), &[out])?.data);
            }
            Ok(Dense::new(&weight, bias, inp, precision))
        };
        let layers = (0..config.num_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let attn = |s: &str| format!("{p}.attention.self.{s}");
                Ok(Layer {
                    qkv: dense(&[attn("query"), attn("key"), attn("value")], h, h)?,
                    attn_out: dense(&[format!("{p}.attention.output.dense")], h, h)?,
                    attn_norm: Norm::load(w, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    up: dense(&[format!("{p}.intermediate.dense")], ff, h)?,
                    down: dense(&[format!("{p}.output.dense")], h, ff)?,
                    out_norm: Norm::load(w, &format!("{p}.output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        let mut token_type = w
            .get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?
            .data;
        token_type.truncate(h);
        Ok(Encoder {
            word: w
                .get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?
                .data,
            position: w
                .get(
                    "embeddings.position_embeddings.weight",
                    &[config.max_position_embeddings, h],
                )?
                .data,
            token_type,
            embed_norm: Norm::load(w, "embeddings.LayerNorm", h, eps)?,
            layers,
            config,
            precision,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The pooled (and, if the model says so, normalized) vector of each text, given as its
    /// word-piece ids (`[CLS]` … `[SEP]`, at most `max_tokens`).
    ///
    /// Runs on a thread of rayon's pool, so that its many short parallel steps start there
    /// rather than each handing work over from the caller's thread and back.
    pub fn embed(&self, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        rayon::scope(|_| self.embed_in_pool(texts))
    }

    fn embed_in_pool(&self, texts: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.config.hidden_size;
        let starts: Vec<usize> = texts
            .iter()
            .scan(0, |at, t| {
                let start = *at;
                *at += t.len();
                Some(start)
            })
            .collect();
        let rows: usize = texts.iter().map(|t| t.len()).sum();
        if rows == 0 {
            return vec![vec![0.0; h]; texts.len()];
        }

        let mut x = self.embed_tokens(texts, rows);
        self.embed_norm.apply(&mut x);
        let mut qkv = vec![0f32; rows * 3 * h];
        let mut context = vec![0f32; rows * h];
        let mut next = vec![0f32; rows * h];
        let mut inner = vec![0f32; rows * self.config.intermediate_size];
        for layer in &self.layers {
            layer.qkv.forward(&x, &mut qkv, Then::Nothing);
            self.attention(&qkv, texts, &starts, &mut context);
            layer.attn_out.forward(&context, &mut next, Then::Add(&x));
            layer.attn_norm.apply(&mut next);
            std::mem::swap(&mut x, &mut next);
            layer.up.forward(&x, &mut inner, Then::Gelu);
            layer.down.forward(&inner, &mut next, Then::Add(&x));
            layer.out_norm.apply(&mut next);
            std::mem::swap(&mut x, &mut next);
        }

        texts
            .iter()
            .zip(&starts)
            .map(|(t, &start)| {
                let states = &x[start * h..][..t.len() * h];
                let mut v = match self.config.pooling {
                    Pooling::Cls => states[..h].to_vec(),
                    Pooling::Mean => {
                        let mut v = vec![0f32; h];
                        for row in states.chunks_exact(h) {
                            for (v, x) in v.iter_mut().zip(row) {
                                *v += x;
                            }
                        }
                        let n = t.len() as f32;
                        v.iter_mut().for_each(|v| *v /= n);
                        v
                    }
                };
                if self.config.normalize {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                v
            })
            .collect()
    }

    /// Word + position + token-type embeddings of every token, `[rows, hidden]`.
    fn embed_tokens(&self, texts: &[&[u32]], rows: usize) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut out = vec![0f32; rows * h];
        let tokens = texts
            .iter()
            .flat_map(|t| t.iter().enumerate())
            .zip(out.chunks_exact_mut(h));
        for ((pos, &id), dst) in tokens {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[pos * h..][..h];
            for (((d, w), p), ty) in dst.iter_mut().zip(word).zip(position).zip(&self.token_type) {
                *d = w + p + ty;
            }
        }
        out
    }

    /// Scaled dot-product attention within each text, for every head: `context` (`[rows,
    /// hidden]`) from `qkv` (`[rows, 3 · hidden]`).
    fn attention(&self, qkv: &[f32], texts: &[&[u32]], starts: &[usize], context: &mut [f32]) {
        let h = self.config.hidden_size;
        let (heads, hd) = (self.config.num_heads, self.config.head_dim());
        let scale = (hd as f32).powf(-0.5);
        let out = Disjoint(context.as_mut_ptr());
        (0..texts.len() * heads).into_par_iter().for_each(|task| {
            let (text, head) = (task / heads, task % heads);
            let (start, len) = (starts[text], texts[text].len());
            let span = Span {
                h,
                hd,
                head,
                start,
                len,
            };
            attend(qkv, span, scale, blocked(), out);
        });
    }
}

/// Where one text's attention head lies: `len` rows from `start`, columns `head · hd ..` of
/// each third of a `qkv` row (`3 · h` wide) and of a `context` row (`h` wide).
#[derive(Clone, Copy)]
struct Span {
    h: usize,
    hd: usize,
    head: usize,
    start: usize,
    len: usize,
}

/// Query rows that the attention kernel takes at once.
const QR: usize = 8;
/// Keys (for scores) and head dimensions (for the context) per vector of the kernel.
const W: usize = 16;

crate::isa::multiversion! {
    /// Scaled dot-product attention of one head within one text.
    ///
    /// The head's queries, keys (transposed) and values are first copied out of `qkv`,
    /// padded with zeros to whole blocks, so that both products run in blocks of [`QR`]
    /// query rows × [`W`] columns whose sums stay in registers (AVX-512, if `blocked`), or
    /// as plain loops that the compiler vectorizes.
    fn attend(qkv: &[f32], span: Span, scale: f32, blocked: bool, out: Disjoint) {
        let Span { h, hd, head, start, len } = span;
        let row = |i: usize, part: usize| &qkv[(start + i) * 3 * h + part * h + head * hd..][..hd];
        let shape = Blocks {
            len,
            rows: len.next_multiple_of(QR),
            keys: len.next_multiple_of(W),
            dims: hd.next_multiple_of(W),
        };
        let Blocks { rows, keys, dims, .. } = shape;
        let mut q = vec![0f32; rows * dims];
        let mut kt = vec![0f32; dims * keys];
        let mut v = vec![0f32; keys * dims];
        for j in 0..len {
            q[j * dims..][..hd].copy_from_slice(row(j, 0));
            v[j * dims..][..hd].copy_from_slice(row(j, 2));
            for (d, &k) in row(j, 1).iter().enumerate() {
                kt[d * keys + j] = k;
            }
        }
        let mut scores = vec![0f32; rows * keys];
        let mut ctx = vec![0f32; rows * dims];
        if blocked {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `blocked` only where AVX-512 is (see `blocked`); the buffers have the
            // shapes `shape` gives.
            unsafe {
                simd::scores(&q, &kt, shape, &mut scores)
            };
        } else {
            for i in 0..len {
                let s = &mut scores[i * keys..][..keys];
                for (&q, kd) in q[i * dims..][..dims].iter().zip(kt.chunks_exact(keys)) {
                    for (s, k) in s.iter_mut().zip(kd) {
                        *s += q * k;
                    }
                }
            }
        }
        for i in 0..len {
            let s = &mut scores[i * keys..][..keys];
            softmax_in_place(&mut s[..len], scale);
            s[len..].fill(0.0);
        }
        if blocked {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            unsafe {
                simd::context(&scores, &v, shape, &mut ctx)
            };
        } else {
            for i in 0..len {
                let c = &mut ctx[i * dims..][..dims];
                for (&p, v) in scores[i * keys..][..len].iter().zip(v.chunks_exact(dims)) {
                    for (c, v) in c.iter_mut().zip(v) {
                        *c += p * v;
                    }
                }
            }
        }
        for i in 0..len {
            // SAFETY: the task of (text, head) alone writes the head's columns of the text's
            // rows, inside `context`, which outlives the parallel loop.
            let dst = unsafe { out.row_part((start + i) * h + head * hd, hd) };
            dst.copy_from_slice(&ctx[i * dims..][..hd]);
        }
    }
}

/// Whether [`attend`] runs its AVX-512 blocks.
fn blocked() -> bool {
    cfg!(target_arch = "x86_64") && crate::isa::Isa::detect() == crate::isa::Isa::Avx512
}

/// The padded shapes of one head's attention: `len` tokens, `rows` (a multiple of [`QR`])
/// rows of queries, scores and context, `keys` (a multiple of [`W`]) columns of scores,
/// `dims` (a multiple of [`W`]) columns of queries, values and context.
#[derive(Clone, Copy)]
struct Blocks {
    len: usize,
    rows: usize,
    keys: usize,
    dims: usize,
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{Blocks, QR, W};

    /// `scores = q · ktᵀ` (`[rows, dims] · [dims, keys]`), in blocks of QR × W.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `q` is `[rows, dims]`, `kt` `[dims, keys]`, `scores`
    /// `[rows, keys]`.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn scores(q: &[f32], kt: &[f32], shape: Blocks, scores: &mut [f32]) {
        let Blocks {
            rows, keys, dims, ..
        } = shape;
        assert!(q.len() >= rows * dims && kt.len() >= dims * keys && scores.len() >= rows * keys);
        for i0 in (0..rows).step_by(QR) {
            for j0 in (0..keys).step_by(W) {
                let mut acc = [_mm512_setzero_ps(); QR];
                for d in 0..dims {
                    // SAFETY: in bounds by the assert above.
                    unsafe {
                        let k = _mm512_loadu_ps(kt.as_ptr().add(d * keys + j0));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let q = _mm512_set1_ps(*q.get_unchecked((i0 + r) * dims + d));
                            *acc = _mm512_fmadd_ps(q, k, *acc);
                        }
                    }
                }
                for (r, acc) in acc.into_iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add((i0 + r) * keys + j0), acc) };
                }
            }
        }
    }

    /// `ctx = scores · v` over the `len` real keys (`[rows, keys] · [keys, dims]`), in
    /// blocks of QR × W.
    ///
    /// # Safety
    /// As [`scores`]; `v` is `[keys, dims]`, `ctx` `[rows, dims]`.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn context(scores: &[f32], v: &[f32], shape: Blocks, ctx: &mut [f32]) {
        let Blocks {
            len,
            rows,
            keys,
            dims,
        } = shape;
        assert!(scores.len() >= rows * keys && v.len() >= len * dims && ctx.len() >= rows * dims);
        for i0 in (0..rows).step_by(QR) {
            for d0 in (0..dims).step_by(W) {
                let mut acc = [_mm512_setzero_ps(); QR];
                for j in 0..len {
                    // SAFETY: in bounds by the assert above.
                    unsafe {
                        let v = _mm512_loadu_ps(v.as_ptr().add(j * dims + d0));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let p = _mm512_set1_ps(*scores.get_unchecked((i0 + r) * keys + j));
                            *acc = _mm512_fmadd_ps(p, v, *acc);
                        }
                    }
                }
                for (r, acc) in acc.into_iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { _mm512_storeu_ps(ctx.as_mut_ptr().add((i0 + r) * dims + d0), acc) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention of every head, one text of `len` tokens, by `attend`.
    fn attention(qkv: &[f32], len: usize, heads: usize, hd: usize, blocked: bool) -> Vec<f32> {
        let h = heads * hd;
        let mut context = vec![f32::NAN; len * h];
        let out = Disjoint(context.as_mut_ptr());
        for head in 0..heads {
            let span = Span {
                h,
                hd,
                head,
                start: 0,
                len,
            };
            attend(qkv, span, 0.3, blocked, out);
        }
        context
    }

    #[test]
    fn attention_blocks_match_plain_loops_and_the_definition() {
        for (len, heads, hd) in [(1, 1, 16), (7, 2, 32), (33, 3, 20), (130, 2, 32)] {
            let h = heads * hd;
            let qkv: Vec<f32> = (0..len * 3 * h)
                .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let plain = attention(&qkv, len, heads, hd, false);
            // The definition, in f64.
            for head in 0..heads {
                let at = |i: usize, part: usize, d: usize| {
                    qkv[i * 3 * h + part * h + head * hd + d] as f64
                };
                for i in 0..len {
                    let s: Vec<f64> = (0..len)
                        .map(|j| 0.3 * (0..hd).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>())
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for d in 0..hd {
                        let want = (0..len).map(|j| e[j] / total * at(j, 2, d)).sum::<f64>();
                        let got = plain[i * h + head * hd + d] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{len} {head} {i} {d}: {got} vs {want}"
                        );
                    }
                }
            }
            if blocked() {
                let fast = attention(&qkv, len, heads, hd, true);
                for (a, b) in fast.iter().zip(&plain) {
                    assert!((a - b).abs() < 1e-5, "blocked {a} vs plain {b}");
                }
            } else {
                eprintln!("no AVX-512 here: the blocked attention was not run");
            }
        }
    }
}
