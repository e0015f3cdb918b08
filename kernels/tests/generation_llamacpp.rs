//! SmolLM2-135M-Instruct in other quantizations (K-quants made from the shipped Q4_1 file by
//! llama.cpp's own quantizer: scripts/make-kquants.sh) against llama.cpp's greedy tokens for
//! the same prompt ids (scripts/generation-reference-llamacpp.py, fixture
//! tests/fixtures/generation-kquants.json). Needs the files: run scripts/fetch-models.sh.

use std::collections::BTreeMap;

use arbor_kernels::Device;
use arbor_kernels::llama::{Activations, Llama};
use arbor_kernels::models::models_dir;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    new_tokens: usize,
    models: BTreeMap<String, Vec<Case>>,
}

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/generation-kquants.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture")).expect("json")
}

/// Follows llama.cpp's greedy tokens (each position gets llama.cpp's prefix) and counts the
/// positions where this model's most likely next token is llama.cpp's; where it is not,
/// llama.cpp's token must still be among this model's three most likely.
///
/// Exact equality of 20 greedy tokens is not what is asserted: SmolLM2-135M quantized to 4 bits
/// has near-ties early in these answers, and llama.cpp's own Q4_1 tokens part from an f32
/// implementation's in 4 of these 5 prompts (the first token already, in two). A wrong
/// dequantization or rotation would miss far more than these bounds allow.
fn check(file: &str, activations: Activations) {
    let fixture = fixture();
    let cases = &fixture.models[file];
    let path = models_dir(None).join("smollm2").join(file);
    let llama = Llama::load(&path, Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-models.sh)"))
        .with_activations(activations);
    let (mut agree, mut total) = (0, 0);
    for case in cases {
        let mut ids = case.prompt_ids.clone();
        for &theirs in &case.ids[..fixture.new_tokens.min(case.ids.len())] {
            let logits = llama.next_logits(&ids).expect("logits");
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let rank = order.iter().position(|&t| t == theirs as usize);
            assert!(
                rank.is_some_and(|r| r < 3),
                "{file}: after {} ids llama.cpp chose {theirs}, ranked {rank:?} here",
                ids.len()
            );
            agree += usize::from(rank == Some(0));
            total += 1;
            ids.push(theirs);
        }
    }
    assert!(
        agree * 100 >= total * 90,
        "{file}: the most likely token is llama.cpp's at {agree} of {total} positions"
    );
    eprintln!("{file}: {agree} of {total} positions agree with llama.cpp");
}
#[test]
fn q4_1_matches_llama_cpp() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf", Activations::default());
}

#[test]
fn q4_k_m_matches_llama_cpp() {
    check("SmolLM2-135M-Instruct.Q4_K_M.gguf", Activations::default());
}

#[test]
fn q6_k_matches_llama_cpp() {
    check("SmolLM2-135M-Instruct.Q6_K.gguf", Activations::default());
}
