//! SmolLM2-135M-Instruct from its GGUF file against reference generations made by Hugging Face
//! transformers (scripts/generation-reference.py, fixture tests/fixtures/generation.json).
//! Needs the model file: run scripts/fetch-models.sh first.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbor_kernels::Device;
use arbor_kernels::llama::{
    Activations, FinishReason, GenerateParams, Llama, Message, Role, Sampling,
};
use arbor_kernels::models::{SMOLLM2_GGUF, models_dir};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    new_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    messages: Vec<FixtureMessage>,
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

#[derive(Deserialize)]
struct FixtureMessage {
    role: String,
    content: String,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/generation.json")).expect("fixture parses")
}

fn messages(case: &Case) -> Vec<Message> {
    case.messages
        .iter()
        .map(|m| Message {
            role: match m.role.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => panic!("unknown role {other}"),
            },
            content: m.content.clone(),
        })
        .collect()
}

fn model_path() -> PathBuf {
    let path = models_dir(None).join(SMOLLM2_GGUF);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh (or set ARBOR_MODELS to the models dir)",
        path.display()
    );
    path
}

fn llama() -> &'static Llama {
    static LLAMA: OnceLock<Llama> = OnceLock::new();
    // The reference computed in f32: so does this model (the default rounds activations to
    // 8 bits, as llama.cpp does; tests/generation_llamacpp.rs compares that with llama.cpp).
    LLAMA.get_or_init(|| {
        Llama::load(model_path(), Device::Cpu)
            .expect("the model loads")
            .with_activations(Activations::F32)
    })
}

#[test]
fn chat_template_and_tokenizer_match_the_reference() {
    let llama = llama();
    for case in fixture().cases {
        let prompt = llama.chat_template().render(&messages(&case)).unwrap();
        assert_eq!(prompt, case.prompt);
        assert_eq!(
            llama.tokenizer().encode(&prompt).unwrap(),
            case.prompt_ids,
            "{prompt:?}"
        );
    }
}

#[test]
fn greedy_tokens_match_the_reference() {
    let llama = llama();
    let fixture = fixture();
    for case in &fixture.cases {
        let mut streamed = String::new();
        let mut events = 0;
        let out = llama
            .chat(
                &messages(case),
                &GenerateParams::greedy(fixture.new_tokens),
                |e| {
                    assert_eq!(e.index, events);
                    events += 1;
                    streamed.push_str(&e.text);
                    ControlFlow::Continue(())
                },
            )
            .unwrap();
        assert_eq!(out.token_ids, case.greedy_ids, "prompt {:?}", case.prompt);
        assert_eq!(out.text, case.greedy_text);
        assert_eq!(
            streamed, out.text,
            "the streamed pieces add up to the answer"
        );
        assert_eq!(events, out.token_ids.len());
        assert_eq!(out.prompt_tokens, case.prompt_ids.len());
        let expected = if out.token_ids.last() == Some(&llama.tokenizer().eos()) {
            FinishReason::Eos
        } else {
            FinishReason::MaxTokens
        };
        assert_eq!(out.finish_reason, expected);
    }
}

#[test]
fn a_batch_generates_what_each_prompt_generates_alone() {
    let llama = llama();
    let fixture = fixture();
    let prompts: Vec<&str> = fixture.cases.iter().map(|c| c.prompt.as_str()).collect();
    let mut per_prompt = vec![Vec::new(); prompts.len()];
    let out = llama
        .generate_batch(
            &prompts,
            &GenerateParams::greedy(fixture.new_tokens),
            |i, e| {
                per_prompt[i].push(e.token_id);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    for ((case, generated), streamed) in fixture.cases.iter().zip(&out).zip(&per_prompt) {
        assert_eq!(
            generated.token_ids, case.greedy_ids,
            "prompt {:?}",
            case.prompt
        );
        assert_eq!(&generated.token_ids, streamed);
    }
}

/// More sequences than the decode kernels take at once (16): each step decodes them in
/// groups, and every sequence still makes its prompt's reference tokens.
#[test]
fn a_batch_larger_than_a_decode_group_generates_the_same() {
    let llama = llama();
    let fixture = fixture();
    let cases: Vec<_> = fixture.cases.iter().cycle().take(18).collect();
    let prompts: Vec<&str> = cases.iter().map(|c| c.prompt.as_str()).collect();
    let out = llama
        .generate_batch(
            &prompts,
            &GenerateParams::greedy(fixture.new_tokens),
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(out.len(), 18);
    for (case, generated) in cases.iter().zip(&out) {
        assert_eq!(
            generated.token_ids, case.greedy_ids,
            "prompt {:?}",
            case.prompt
        );
    }
}

#[test]
fn stop_strings_cancellation_and_limits() {
    let llama = llama();
    let question = [Message::user("What is the capital of France?")];

    let params = GenerateParams {
        stop: vec![" Paris".into()],
        ..GenerateParams::greedy(20)
    };
    let mut streamed = String::new();
    let out = llama
        .chat(&question, &params, |e| {
            streamed.push_str(&e.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(out.text, "The capital of France is");
    assert_eq!(
        streamed, out.text,
        "no part of the stop string was streamed"
    );

    let mut seen = 0;
    let out = llama
        .chat(&question, &GenerateParams::greedy(20), |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert_eq!(out.token_ids.len(), 3);

    let out = llama
        .chat(&question, &GenerateParams::greedy(2), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::MaxTokens);
    assert_eq!(out.token_ids.len(), 2);
    assert_eq!(out.text, "The capital");

    let out = llama
        .chat(&question, &GenerateParams::greedy(0), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(out.token_ids.is_empty());
}

#[test]
fn seeded_sampling_is_reproducible() {
    let llama = llama();
    let question = [Message::user("Tell me a story about a dragon.")];
    let params = |seed| GenerateParams {
        sampling: Sampling::TopP {
            temperature: 0.9,
            top_p: 0.95,
            seed,
        },
        ..GenerateParams::greedy(12)
    };
    let run = |seed| {
        llama
            .chat(&question, &params(seed), |_| ControlFlow::Continue(()))
            .unwrap()
    };
    let a = run(1);
    assert_eq!(a.token_ids.len(), 12);
    assert_eq!(a, run(1), "the same seed gives the same answer");
    let others: Vec<_> = (2..5).map(|s| run(s).token_ids).collect();
    assert!(
        others.iter().any(|o| *o != a.token_ids),
        "different seeds should not all agree"
    );
}

#[test]
fn bad_requests_are_errors() {
    let llama = llama();
    assert!(
        llama
            .generate(
                "",
                &GenerateParams::greedy(4),
                |_| ControlFlow::Continue(())
            )
            .is_err()
    );
    let bad = GenerateParams {
        sampling: Sampling::TopP {
            temperature: -1.0,
            top_p: 0.9,
            seed: 0,
        },
        ..GenerateParams::greedy(4)
    };
    assert!(
        llama
            .generate("Hi", &bad, |_| ControlFlow::Continue(()))
            .is_err()
    );
}

#[test]
fn cuda_generates_the_reference_tokens_or_is_refused_without_a_driver() {
    let device = Device::Cuda(0);
    match arbor_kernels::device::cuda_driver() {
        Err(reason) => {
            eprintln!("skipping the CUDA generation check: {reason}");
            let err = Llama::load(model_path(), device).expect_err("no driver, no CUDA model");
            assert!(err.to_string().contains("cuda:0"), "{err}");
        }
        Ok(()) => {
            let llama = Llama::load(model_path(), device).expect("the model loads on the GPU");
            let fixture = fixture();
            let case = &fixture.cases[0];
            let out = llama
                .chat(
                    &messages(case),
                    &GenerateParams::greedy(fixture.new_tokens),
                    |_| ControlFlow::Continue(()),
                )
                .unwrap();
            assert_eq!(out.token_ids, case.greedy_ids);
        }
    }
}
