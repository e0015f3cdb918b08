//! Models named by deployments, on a real 3-process cluster with the real files (after
//! scripts/fetch-models.sh): a model replica runs a K-quant GGUF that llama.cpp's quantizer
//! made and answers `arbor generate`; an embedder names another model's folder
//! (paraphrase-MiniLM-L3-v2) and answers `arbor embed` as sentence-transformers does;
//! deployments whose model is missing, outside the models dir or larger than their memory
//! are refused by `arbor deploy` with the reason, and nothing is recorded.

mod common;

use common::cluster::Cluster;
use serde_json::Value;

/// `arbor deploy -f FILE` that must fail; returns its stderr.
fn refused(c: &Cluster, file: &str, text: &str) -> String {
    let path = c.path.with_file_name(file);
    std::fs::write(&path, text).unwrap();
    let out = common::arbor_as(
        &[
            "deploy",
            "-f",
            path.to_str().unwrap(),
            "--config",
            c.path.to_str().unwrap(),
        ],
        None,
        Some(&c.token),
    );
    assert!(!out.status.success(), "{file} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_name_their_models_and_bad_ones_are_refused_at_submit() {
    let c = Cluster::start_with("models", "models-secret-padded-to-32-bytes-at-least", |t| {
        common::http::with_ports(t.replace(
            "cpu = \"1\"\nmemory = \"1GiB\"",
            "cpu = \"8\"\nmemory = \"16GiB\"",
        ))
    })
    .await;

    let out = c.deploy(
        "kq.toml",
        "name = \"kq\"\nkind = \"model\"\nreplicas = 1\n[resources]\ncpu = \"1\"\nmemory = \"1GiB\"\n\
         [config]\nmodel = \"smollm2/SmolLM2-135M-Instruct.Q4_K_M\"\n",
    );
    assert!(out.contains("deployment kq created"), "{out}");
    let out = c.deploy(
        "emb.toml",
        "name = \"emb\"\nkind = \"embedder\"\nreplicas = 1\n[config]\nmodel = \"paraphrase-MiniLM-L3-v2\"\n",
    );
    assert!(out.contains("deployment emb created"), "{out}");
    for name in ["kq", "emb"] {
        c.wait_for(name, "a running replica", |_| {}, |d| d.running == 1)
            .await;
    }
    let answer = c.arbor(&[
        "generate",
        "--deployment",
        "kq",
        "--max-tokens",
        "12",
        "What is the capital of France?",
    ]);
    assert!(answer.trim().len() > 3, "no answer: {answer:?}");
    let text = "Hello, world!";
    let embedded: Value = serde_json::from_str(&c.arbor(&["embed", text])).unwrap();
    assert_eq!(embedded["dim"], 384, "{embedded}");
    let got: Vec<f64> = serde_json::from_value(embedded["vectors"][0].clone()).unwrap();
    common::assert_paraphrase_reference(text, &got);
    // The replicas' own series, on the nodes that run them.
    let pages = common::http::all_metrics(&c.config).await;
    for (prefix, least) in [
        ("arbor_model_tokens_total{deployment=\"kq\"}", 1.0),
        (
            "arbor_model_time_to_first_token_seconds_count{deployment=\"kq\"}",
            1.0,
        ),
        ("arbor_model_active_generations{deployment=\"kq\"}", 0.0),
        ("arbor_deployment_queue_depth{deployment=\"kq\"}", 0.0),
        ("arbor_embedder_texts_total{deployment=\"emb\"}", 1.0),
        ("arbor_embedder_batch_size_count{deployment=\"emb\"}", 1.0),
        ("arbor_deployment_queue_depth{deployment=\"emb\"}", 0.0),
    ] {
        let value = common::http::sample(&pages, prefix);
        assert!(
            value.is_some_and(|v| v >= least),
            "{prefix} is {value:?}, not at least {least}, in\n{pages}"
        );
    }

    let model = |name: &str, config: &str, memory: &str| {
        format!(
            "name = \"{name}\"\nkind = \"model\"\nreplicas = 1\n[resources]\ncpu = \"1\"\n\
             memory = \"{memory}\"\n[config]\n{config}\n"
        )
    };
    let err = refused(
        &c,
        "missing.toml",
        &model("m1", "model = \"no-such-model\"", "1GiB"),
    );
    assert!(err.contains("no-such-model"), "{err}");
    let err = refused(
        &c,
        "escape.toml",
        &model("m2", "model = \"../../etc/passwd\"", "1GiB"),
    );
    assert!(err.contains("models dir"), "{err}");
    // The weights (94 MiB) and 8 caches of 2048 positions (360 MiB) need more than 128 MiB.
    let err = refused(&c, "small.toml", &model("m3", "", "128MiB"));
    assert!(err.contains("raise memory"), "{err}");
    // Not a GGUF file at all: the tokenizer of the embedder's folder.
    let err = refused(
        &c,
        "notgguf.toml",
        &model("m4", "model = \"all-MiniLM-L6-v2/tokenizer.json\"", "1GiB"),
    );
    assert!(err.contains("not a GGUF file"), "{err}");
    let err = refused(
        &c,
        "emb2.toml",
        "name = \"e2\"\nkind = \"embedder\"\nreplicas = 1\n[config]\nmodel = \"smollm2\"\n",
    );
    assert!(err.contains("smollm2"), "{err}");
    let names: Vec<String> = c.deployments().await.unwrap().into_keys().collect();
    assert_eq!(names, ["emb", "kq"], "a refused deployment was recorded");

    // `arbor bench` against the cluster's own embedder and model.
    let out = c.path.with_file_name("bench-models");
    c.arbor(&[
        "bench",
        "run",
        "embed",
        "generate",
        "ingest-text",
        "query-text",
        "rag",
        "--documents",
        "16",
        // Long enough for a rag job (a ~600-token prompt) to end inside it on a busy machine.
        "--duration",
        "4s",
        "--warmup",
        "300ms",
        "--connections",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let names = ["embed", "generate", "ingest-text", "query-text", "rag"];
    for (i, name) in names.into_iter().enumerate() {
        let s = &report["scenarios"][i];
        assert_eq!(s["name"], name);
        assert!(s["completed"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    }
    let left: Vec<String> = c.deployments().await.unwrap().into_keys().collect();
    assert_eq!(left, ["emb", "kq"], "the bench left deployments behind");
}
