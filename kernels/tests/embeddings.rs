//! Sentence-embedding models on the CPU encoder, in its best precision and in f32, against
//! reference embeddings made by sentence-transformers on PyTorch (scripts/embedding-reference.py,
//! fixtures in tests/fixtures/):
//! - all-MiniLM-L6-v2, the default: 6 layers, mean pooling, normalized (`embeddings.json`);
//! - paraphrase-MiniLM-L3-v2, a model nobody tuned this encoder for: 3 layers, 128 word pieces,
//!   not normalized (`embeddings-paraphrase-MiniLM-L3-v2.json`), and the same weights pooled on
//!   `[CLS]` (`...-cls.json`), so CLS pooling is checked against sentence-transformers too.
//!
//! Needs the model files: run scripts/fetch-models.sh first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbor_kernels::Device;
use arbor_kernels::embed::{EmbedError, Embedder, Precision};
use arbor_kernels::models::{MINILM_DIR, models_dir};
use serde::Deserialize;

/// The second model's folder under the models dir (scripts/fetch-models.sh makes it).
const PARAPHRASE_DIR: &str = "paraphrase-MiniLM-L3-v2";

#[derive(Deserialize)]
struct Fixture {
    dim: usize,
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/embeddings.json")).expect("fixture parses")
}

fn paraphrase_fixture() -> Fixture {
    serde_json::from_str(include_str!(
        "fixtures/embeddings-paraphrase-MiniLM-L3-v2.json"
    ))
    .expect("fixture parses")
}

fn model_dir(name: &str) -> PathBuf {
    let dir = models_dir(None).join(name);
    assert!(
        dir.join("model.safetensors").exists(),
        "{} has no model.safetensors: run scripts/fetch-models.sh (or set ARBOR_MODELS to the models dir)",
        dir.display()
    );
    dir
}

fn load_dir(dir: &Path, precision: Precision) -> Embedder {
    Embedder::load_dir_with(dir, Device::Cpu, precision).expect("the model loads")
}

fn load(precision: Precision) -> Embedder {
    load_dir(&model_dir(MINILM_DIR), precision)
}

/// The embedder as a replica loads it: the best precision this CPU has.
fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(Precision::best()))
}

/// The reference arithmetic.
fn embedder_f32() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(Precision::F32))
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn matches_sentence_transformers() {
    println!("best precision: {:?}", embedder().precision());
    check_against_reference(embedder(), &fixture());
}

#[test]
fn matches_sentence_transformers_in_f32() {
    assert_eq!(embedder_f32().precision(), Precision::F32);
    check_against_reference(embedder_f32(), &fixture());
}

#[test]
fn a_second_model_matches_sentence_transformers() {
    let fixture = paraphrase_fixture();
    let dir = model_dir(PARAPHRASE_DIR);
    let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    let expected: Vec<usize> = fixture.cases.iter().map(|c| c.tokens).collect();
    for precision in [Precision::best(), Precision::F32] {
        let embedder = load_dir(&dir, precision);
        println!("{PARAPHRASE_DIR} in {precision:?}");
        check_against_reference(&embedder, &fixture);
        // Its own limit, not MiniLM's 256, and vectors as long as the model makes them.
        assert_eq!(embedder.max_tokens(), 128);
        let counts = embedder.count_tokens(&texts).unwrap();
        assert_eq!(counts, expected);
        assert_eq!(counts.last(), Some(&128), "the long text is truncated");
        let v = embedder.embed(&["Hello, world!"]).unwrap();
        assert!((norm(&v[0]) - 1.0).abs() > 0.1, "norm {}", norm(&v[0]));
    }
}

#[test]
fn cls_pooling_matches_sentence_transformers() {
    let fixture: Fixture = serde_json::from_str(include_str!(
        "fixtures/embeddings-paraphrase-MiniLM-L3-v2-cls.json"
    ))
    .expect("fixture parses");
    // The second model's files, with a pooling config that takes the [CLS] state.
    let source = model_dir(PARAPHRASE_DIR);
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "sentence_bert_config.json",
        "modules.json",
    ] {
        std::os::unix::fs::symlink(source.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let cls = load_dir(dir.path(), Precision::best());
    check_against_reference(&cls, &fixture);
    // It is another vector than the mean's.
    let mean = load_dir(&source, Precision::best());
    let text = ["The quick brown fox jumps over the lazy dog."];
    let (a, b) = (cls.embed(&text).unwrap(), mean.embed(&text).unwrap());
    assert!(cosine(&a[0], &b[0]) < 0.99);
}

#[test]
fn bf16_vectors_are_within_a_ten_thousandth_of_f32() {
    let fixture = fixture();
    let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    let best = embedder().embed(&texts).expect("embeds");
    let exact = embedder_f32().embed(&texts).expect("embeds");
    let worst = best
        .iter()
        .zip(&exact)
        .map(|(a, b)| cosine(a, b))
        .fold(f32::INFINITY, f32::min);
    println!(
        "{:?} vs f32: lowest cosine {worst:.7}",
        embedder().precision()
    );
    assert!(worst >= 0.9999, "lowest cosine {worst}");
}

fn check_against_reference(embedder: &Embedder, fixture: &Fixture) {
    assert_eq!(embedder.dim(), fixture.dim);
    assert_eq!(embedder.max_tokens(), fixture.max_seq_length);
    assert!(fixture.cases.len() >= 20);

    let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    let vectors = embedder.embed(&texts).expect("embeds");
    assert_eq!(vectors.len(), texts.len());
    let mut worst = (f32::INFINITY, "");
    for (case, v) in fixture.cases.iter().zip(&vectors) {
        assert_eq!(v.len(), fixture.dim);
        // As long as the reference: unit length only where the model normalizes.
        let (got, want) = (norm(v), norm(&case.embedding));
        assert!(
            (got - want).abs() <= 1e-3 * want.max(1.0),
            "{:?}: norm {got}, reference {want}",
            case.text
        );
        let cos = cosine(v, &case.embedding);
        assert!(
            cos >= 0.999,
            "{:?}: cosine {cos} with the reference",
            case.text
        );
        if cos < worst.0 {
            worst = (cos, &case.text);
        }
    }
    println!("lowest cosine {:.6} for {:?}", worst.0, worst.1);
}

#[test]
fn token_counts_match_the_reference_and_truncate() {
    let fixture = fixture();
    let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
    let counts = embedder().count_tokens(&texts).expect("tokenizes");
    let expected: Vec<usize> = fixture.cases.iter().map(|c| c.tokens).collect();
    assert_eq!(counts, expected);
    // The fixture holds a text longer than the model sees.
    assert!(counts.contains(&embedder().max_tokens()));
}

#[test]
fn a_text_embeds_the_same_alone_and_in_a_batch() {
    let texts = [
        "Short.",
        "A much longer sentence, padded to nothing, that sets the batch width.",
        "Another text of middling length.",
    ];
    for embedder in [embedder(), embedder_f32()] {
        let together = embedder.embed(&texts).expect("embeds");
        for (text, v) in texts.iter().zip(&together) {
            let alone = embedder.embed(&[text]).expect("embeds");
            let cos = cosine(&alone[0], v);
            assert!(
                cos > 0.99999,
                "{:?} {text:?}: cosine {cos} between alone and batched",
                embedder.precision()
            );
        }
    }
    // Similar meanings are closer than unrelated ones, for both models.
    let second = load_dir(&model_dir(PARAPHRASE_DIR), Precision::best());
    for embedder in [embedder(), &second] {
        let v = embedder
            .embed(&[
                "A cat sits on the mat.",
                "A kitten rests on a rug.",
                "Stock markets fell.",
            ])
            .unwrap();
        assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
    }
}

#[test]
fn empty_inputs() {
    // No texts: no vectors.
    assert!(embedder().embed(&[]).expect("nothing to do").is_empty());
    assert_eq!(
        embedder().count_tokens(&[]).expect("nothing to do"),
        Vec::<usize>::new()
    );
    // An empty or blank text is an error naming its position.
    match embedder().embed(&["fine", " \t\n"]) {
        Err(EmbedError::EmptyText { index }) => assert_eq!(index, 1),
        other => panic!("expected EmptyText, got {:?}", other.map(|v| v.len())),
    }
    assert!(matches!(
        embedder().embed(&[""]),
        Err(EmbedError::EmptyText { index: 0 })
    ));
}

#[test]
fn cuda_matches_cpu_or_reports_why_not() {
    let dir = models_dir(None);
    match Embedder::load(&dir, Device::Cuda(0)) {
        Ok(gpu) => {
            let fixture = fixture();
            let texts: Vec<&str> = fixture.cases.iter().map(|c| c.text.as_str()).collect();
            let on_gpu = gpu.embed(&texts).expect("embeds on the GPU");
            for (case, v) in fixture.cases.iter().zip(&on_gpu) {
                let cos = cosine(v, &case.embedding);
                assert!(
                    cos >= 0.999,
                    "{:?}: GPU cosine {cos} with the reference",
                    case.text
                );
            }
        }
        Err(EmbedError::Device(device, reason)) => {
            println!("skipping the GPU comparison: {device} is not available: {reason}");
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("loading on the GPU failed: {other}"),
    }
}
