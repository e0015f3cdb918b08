//! Choosing the next token from logits: greedy, or seeded temperature and nucleus (top-p).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id among equals), so runs are reproducible.
    Greedy,
    /// Softmax of logits / `temperature`, cut to the smallest set of most likely tokens whose
    /// probabilities add up to `top_p`, sampled with a generator seeded by `seed`.
    TopP {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

/// Why sampling parameters were rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadSampling {
    #[error("temperature {0} must be a positive finite number")]
    Temperature(f32),
    #[error("top_p {0} must be in (0, 1]")]
    TopP(f32),
}

impl Sampling {
    pub fn validate(&self) -> Result<(), BadSampling> {
        match *self {
            Sampling::Greedy => Ok(()),
            Sampling::TopP {
                temperature, top_p, ..
            } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    Err(BadSampling::Temperature(temperature))
                } else if !(top_p > 0.0 && top_p <= 1.0) {
                    Err(BadSampling::TopP(top_p))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// The state one sequence's sampling carries from token to token.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: Option<StdRng>,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Self {
        let rng = match sampling {
            Sampling::Greedy => None,
            Sampling::TopP { seed, .. } => Some(StdRng::seed_from_u64(seed)),
        };
        Sampler { sampling, rng }
    }

    /// The next token for these logits (one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match (self.sampling, self.rng.as_mut()) {
            (
                Sampling::TopP {
                    temperature, top_p, ..
                },
                Some(rng),
            ) => top_p_sample(logits, temperature, top_p, rng.random::<f32>()),
            _ => argmax(logits),
        }
    }
}

/// Index of the largest logit; the first one among equals. NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Nucleus sampling with a uniform draw `u` in [0, 1): pure, so it is tested directly.
pub fn top_p_sample(logits: &[f32], temperature: f32, top_p: f32, u: f32) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l - max) / temperature).exp()))
        .filter(|(_, p)| *p > 0.0)
        .collect();
    if probs.is_empty() {
        return argmax(logits);
    }
    let total: f32 = probs.iter().map(|(_, p)| p).sum();
    // Most likely first; ties by id, so the result does not depend on the sort's stability.
    probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, (_, p)) in probs.iter().enumerate() {
        kept += p / total;
        if kept >= top_p {
            cut = i + 1;
            break;
        }
    }
    let nucleus = &probs[..cut];
    let mass: f32 = nucleus.iter().map(|(_, p)| p).sum();
    let mut target = u * mass;
    for &(id, p) in nucleus {
        if target < p {
            return id;
        }
        target -= p;
    }
    nucleus[nucleus.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
        assert_eq!(Sampler::new(Sampling::Greedy).sample(&[0.0, 0.5, 0.2]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities about 0.665, 0.245, 0.090: top_p 0.5 keeps only the first token.
        let logits = [2.0, 1.0, 0.0];
        for u in [0.0, 0.3, 0.99] {
            assert_eq!(top_p_sample(&logits, 1.0, 0.5, u), 0);
        }
        // top_p 0.8 keeps two tokens: the draw splits them 0.665 : 0.245.
        assert_eq!(top_p_sample(&logits, 1.0, 0.8, 0.5), 0);
        assert_eq!(top_p_sample(&logits, 1.0, 0.8, 0.9), 1);
        // top_p 1 keeps all.
        assert_eq!(top_p_sample(&logits, 1.0, 1.0, 0.999), 2);
    }

    #[test]
    fn low_temperature_approaches_greedy() {
        let logits = [1.0, 1.1, 0.9];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(top_p_sample(&logits, 1e-3, 1.0, u), 1);
        }
    }

    #[test]
    fn seeded_sampling_repeats() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.95,
            seed: 7,
        };
        let run = || {
            let mut s = Sampler::new(params);
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().any(|&t| t != a[0]), "sampling should vary: {a:?}");
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(
            Sampling::TopP {
                temperature: 0.0,
                top_p: 0.9,
                seed: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Sampling::TopP {
                temperature: 1.0,
                top_p: 1.5,
                seed: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Sampling::TopP {
                temperature: f32::NAN,
                top_p: 0.9,
                seed: 0
            }
            .validate()
            .is_err()
        );
        assert!(
            Sampling::TopP {
                temperature: 0.7,
                top_p: 0.9,
                seed: 0
            }
            .validate()
            .is_ok()
        );
    }
}
