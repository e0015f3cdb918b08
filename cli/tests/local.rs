//! `arbor local embed|generate` with the real models (scripts/fetch-models.sh puts them in
//! place; CI runs it first).

mod common;

use std::process::{Command, Output};

fn arbor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .output()
        .expect("cannot run arbor")
}

fn ok_stdout(out: Output) -> String {
    assert!(
        out.status.success(),
        "arbor failed (run scripts/fetch-models.sh if the models are missing): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn embed_prints_normalized_vectors() {
    let out = ok_stdout(arbor(&[
        "local",
        "embed",
        "a cat sat on the mat",
        "Привет, мир!",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert_eq!(v["dim"], 384);
    let embeddings = v["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    for e in embeddings {
        let e: Vec<f64> = e
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(e.len(), 384);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
}

#[test]
fn embed_takes_another_model() {
    let text = "The quick brown fox jumps over the lazy dog.";
    let out = ok_stdout(arbor(&[
        "local",
        "embed",
        "--model",
        "paraphrase-MiniLM-L3-v2",
        text,
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"], "paraphrase-MiniLM-L3-v2");
    assert_eq!(v["dim"], 384);
    let got: Vec<f64> = serde_json::from_value(v["embeddings"][0].clone()).unwrap();
    common::assert_paraphrase_reference(text, &got);
}

#[test]
fn generate_is_greedy_and_deterministic_by_default() {
    let args = [
        "local",
        "generate",
        "--json",
        "--max-tokens",
        "8",
        "What is the capital of France?",
    ];
    let first: serde_json::Value = serde_json::from_str(&ok_stdout(arbor(&args))).unwrap();
    let second: serde_json::Value = serde_json::from_str(&ok_stdout(arbor(&args))).unwrap();
    assert_eq!(first, second);
    let ids = first["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 8, "{first}");
    assert!(first["text"].as_str().unwrap().contains("Paris"), "{first}");

    let streamed = ok_stdout(arbor(&[
        "local",
        "generate",
        "--max-tokens",
        "8",
        "What is the capital of France?",
    ]));
    assert_eq!(
        streamed.trim_end(),
        first["text"].as_str().unwrap().trim_end()
    );
}

#[test]
fn bad_input_is_named() {
    let out = arbor(&["local", "embed", "--models", "/nonexistent", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fetch-models.sh"));
    let out = arbor(&["local", "generate", "--temperature=-1", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("temperature"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = arbor(&["local", "embed", "--device", "tpu", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tpu"));
}
